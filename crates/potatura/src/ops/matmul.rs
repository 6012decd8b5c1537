//! Matrix products: Gemm and MatMul (numpy semantics), on top of the
//! `gemm` crate. [`sgemm`] is the shared strided f32 GEMM kernel, also used
//! by the convolutions.

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap, Link, Port, Use, WeightAxis};
use super::common::{broadcast_shapes, fact, input, opt};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{strides, DType, Data, Node, Storage, Tensor};

/// Most values an output of these ops (and the convolutions) may have: a
/// guard against malformed models (2^31 values, 8 GiB of f32).
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Multiply-accumulates above which one GEMM is split over threads.
pub const GEMM_PAR_MACS: usize = 1 << 20;

/// A read-only strided matrix view: element `(i, j)` is at
/// `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// Backing values.
    pub data: &'a [f32],
    /// Row stride (elements).
    pub rs: usize,
    /// Column stride (elements).
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn row_major(data: &'a [f32], cols: usize) -> MatRef<'a> {
        MatRef {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with `cols` columns (a
    /// column-major view of it).
    pub fn transposed(data: &'a [f32], cols: usize) -> MatRef<'a> {
        MatRef {
            data,
            rs: 1,
            cs: cols,
        }
    }
    /// True when every element of a `rows x cols` view is inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1).checked_mul(self.rs).and_then(|a| {
            (cols - 1)
                .checked_mul(self.cs)
                .and_then(|b| a.checked_add(b))
        });
        matches!(last, Some(l) if l < self.data.len())
    }
}

/// `dst[m x n] = alpha * a[m x k] * b[k x n]` (or `+=` when `accumulate`),
/// with `dst` row-major with row stride `dst_rs`. Splits the work over
/// threads when `parallel` is set and the product is large enough.
///
/// Panics when a view does not fit its slice (a caller bug, not bad input).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accumulate: bool,
    dst: &mut [f32],
    dst_rs: usize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let d = MatRef {
        data: dst,
        rs: dst_rs,
        cs: 1,
    };
    assert!(d.fits(m, n), "sgemm: dst view out of bounds");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        a.fits(m, k) && b.fits(k, n),
        "sgemm: operand view out of bounds"
    );
    let par = if parallel && m.saturating_mul(n).saturating_mul(k) >= GEMM_PAR_MACS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was checked to lie inside its slice above; `dst`
    // is borrowed mutably and cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// Integer `dst[m x n] += a[m x k] * b[k x n]` (wrapping), row-major
/// contiguous operands given with their strides.
#[allow(clippy::too_many_arguments)]
fn igemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[i64],
    a_rs: usize,
    a_cs: usize,
    b: &[i64],
    b_rs: usize,
    b_cs: usize,
    dst: &mut [i64],
) {
    for i in 0..m {
        let row = &mut dst[i * n..(i + 1) * n];
        for p in 0..k {
            let av = a[i * a_rs + p * a_cs];
            if av == 0 {
                continue;
            }
            for (j, o) in row.iter_mut().enumerate() {
                *o = o.wrapping_add(av.wrapping_mul(b[p * b_rs + j * b_cs]));
            }
        }
    }
}

/// `Gemm`: `Y = alpha * A' * B' + beta * C`.
#[derive(Debug, Clone)]
pub struct Gemm {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of `C`.
    pub beta: f32,
    /// `A` is stored transposed (`[K, M]`).
    pub trans_a: bool,
    /// `B` is stored transposed (`[N, K]`).
    pub trans_b: bool,
}

/// `MatMul` with numpy semantics.
#[derive(Debug, Clone)]
pub struct MatMul;

/// Builds Gemm and MatMul.
pub fn build(node: &Node, _opset: i64) -> Result<Box<dyn Op>> {
    match node.op_type.as_str() {
        "Gemm" => Ok(Box::new(Gemm {
            alpha: node.attr_float("alpha", 1.0)?,
            beta: node.attr_float("beta", 1.0)?,
            trans_a: node.attr_int("transA", 0)? != 0,
            trans_b: node.attr_int("transB", 0)? != 0,
        })),
        "MatMul" => Ok(Box::new(MatMul)),
        o => Err(op_error(format!("matmul::build called for {o}"))),
    }
}

/// Element count of an output shape, refusing more than [`MAX_ELEMENTS`].
fn checked_numel(shape: &[usize]) -> Result<usize> {
    match shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= MAX_ELEMENTS => Ok(n),
        _ => Err(op_error(format!(
            "output shape {shape:?} has more than {MAX_ELEMENTS} values"
        ))),
    }
}

fn check_computable(dt: DType) -> Result<()> {
    match dt.storage() {
        Storage::Float | Storage::Int => Ok(()),
        _ => Err(op_error(format!("unsupported element type {dt}"))),
    }
}

/// Dimensions of a Gemm: (M, N, K) from the shapes of A and B.
impl Gemm {
    /// `(M, N, K)` for operand shapes, checking ranks and the inner size.
    pub fn dims(&self, a: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
        if a.len() != 2 || b.len() != 2 {
            return Err(op_error(format!(
                "A and B must be 2-D, got shapes {a:?} and {b:?}"
            )));
        }
        let (m, ka) = if self.trans_a {
            (a[1], a[0])
        } else {
            (a[0], a[1])
        };
        let (kb, n) = if self.trans_b {
            (b[1], b[0])
        } else {
            (b[0], b[1])
        };
        if ka != kb {
            return Err(op_error(format!(
                "inner dimensions differ: A{} {a:?} gives K={ka}, B{} {b:?} gives K={kb}",
                if self.trans_a { "ᵀ" } else { "" },
                if self.trans_b { "ᵀ" } else { "" }
            )));
        }
        Ok((m, n, ka))
    }

    /// Checks that `C` broadcasts (unidirectionally) to `[M, N]`.
    fn check_c(c: &[usize], m: usize, n: usize) -> Result<()> {
        let ok = match c {
            [] => true,
            [x] => *x == 1 || *x == n,
            [x, y] => (*x == 1 || *x == m) && (*y == 1 || *y == n),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(op_error(format!(
                "C of shape {c:?} does not broadcast to [{m}, {n}]"
            )))
        }
    }
}

/// Expands `c` (broadcastable to `[m, n]`) into a full row-major `[m, n]`
/// buffer, scaled by `beta`.
fn broadcast_c<T: Copy + Default>(
    c: &[T],
    cs: &[usize],
    m: usize,
    n: usize,
    scale: impl Fn(T) -> T,
) -> Vec<T> {
    let (cm, cn) = match cs {
        [] => (1, 1),
        [x] => (1, *x),
        [x, y] => (*x, *y),
        _ => (1, 1),
    };
    let mut out = vec![T::default(); m * n];
    for i in 0..m {
        let ci = if cm == 1 { 0 } else { i };
        let row = &mut out[i * n..(i + 1) * n];
        if cn == 1 {
            row.fill(scale(c[ci * cn]));
        } else {
            for (o, &v) in row.iter_mut().zip(&c[ci * cn..ci * cn + n]) {
                *o = scale(v);
            }
        }
    }
    out
}

impl Op for Gemm {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        if self.trans_a || !cx.is_const(1) || cx.fact(2).is_some_and(|_| !cx.is_const(2)) {
            return None;
        }
        let mut m = ChanMap::new(cx.inputs.len(), 1);
        m.uses[0] = Some(Use::Axis(1));
        m.out_axes[0] = Some(1);
        let (k_ax, n_ax) = if self.trans_b { (1, 0) } else { (0, 1) };
        m.weights.push(WeightAxis {
            port: Port::In(0),
            input: 1,
            axis: k_ax,
        });
        m.weights.push(WeightAxis {
            port: Port::Out(0),
            input: 1,
            axis: n_ax,
        });
        if let Some(c) = cx.fact(2) {
            let n = cx.out_shape(0)[1];
            if c.shape.last() == Some(&n) && n > 1 {
                m.weights.push(WeightAxis {
                    port: Port::Out(0),
                    input: 2,
                    axis: c.shape.len() - 1,
                });
            } else if c.shape.len() == 2 && c.shape[0] > 1 {
                return None;
            }
        }
        m.macs = vec![Port::In(0), Port::Out(0)];
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (a, b) = (fact(inputs, 0)?, fact(inputs, 1)?);
        check_computable(a.dtype)?;
        if a.dtype != b.dtype {
            return Err(op_error(format!(
                "A and B types differ: {} and {}",
                a.dtype, b.dtype
            )));
        }
        let (m, n, _) = self.dims(&a.shape, &b.shape)?;
        if let Some(c) = opt(inputs, 2) {
            if c.dtype != a.dtype {
                return Err(op_error(format!(
                    "C type {} differs from A type {}",
                    c.dtype, a.dtype
                )));
            }
            Self::check_c(&c.shape, m, n)?;
        }
        checked_numel(&[m, n])?;
        Ok(vec![Fact::new(a.dtype, vec![m, n])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
        if a.dtype() != b.dtype() {
            return Err(op_error(format!(
                "A and B types differ: {} and {}",
                a.dtype(),
                b.dtype()
            )));
        }
        let (m, n, k) = self.dims(a.shape(), b.shape())?;
        checked_numel(&[m, n])?;
        let c = opt(inputs, 2);
        if let Some(c) = c {
            if c.dtype() != a.dtype() {
                return Err(op_error(format!(
                    "C type {} differs from A type {}",
                    c.dtype(),
                    a.dtype()
                )));
            }
            Self::check_c(c.shape(), m, n)?;
        }
        let a_rs_cs = if self.trans_a { (1, m) } else { (k, 1) };
        let b_rs_cs = if self.trans_b { (1, k) } else { (n, 1) };
        let use_c = c.is_some() && self.beta != 0.0;
        let out = match (a.data(), b.data()) {
            (Data::F32(x), Data::F32(y)) => {
                let mut dst = match c.filter(|_| use_c) {
                    Some(c) => broadcast_c(c.f32s()?, c.shape(), m, n, |v| v * self.beta),
                    None => vec![0.0f32; m * n],
                };
                sgemm(
                    m,
                    n,
                    k,
                    self.alpha,
                    MatRef {
                        data: x,
                        rs: a_rs_cs.0,
                        cs: a_rs_cs.1,
                    },
                    MatRef {
                        data: y,
                        rs: b_rs_cs.0,
                        cs: b_rs_cs.1,
                    },
                    use_c,
                    &mut dst,
                    n,
                    true,
                );
                Tensor::from_float(a.dtype(), vec![m, n], dst)
            }
            (Data::I64(x), Data::I64(y)) => {
                let mut prod = vec![0i64; m * n];
                igemm(
                    m, n, k, x, a_rs_cs.0, a_rs_cs.1, y, b_rs_cs.0, b_rs_cs.1, &mut prod,
                );
                // ONNX integer Gemm: alpha and beta are floats; scale in f64
                // and truncate, as ONNX Runtime does for integer types.
                let (alpha, beta) = (self.alpha as f64, self.beta as f64);
                let cfull = match c.filter(|_| use_c) {
                    Some(c) => broadcast_c(c.i64s()?, c.shape(), m, n, |v| v),
                    None => vec![0; m * n],
                };
                let out: Vec<i64> = prod
                    .iter()
                    .zip(&cfull)
                    .map(|(&p, &cv)| {
                        if alpha == 1.0 && (beta == 1.0 || !use_c) {
                            p.wrapping_add(cv)
                        } else {
                            (alpha * p as f64 + beta * cv as f64) as i64
                        }
                    })
                    .collect();
                Tensor::from_int(a.dtype(), vec![m, n], out)
            }
            _ => {
                return Err(op_error(format!(
                    "unsupported input types {} and {}",
                    a.dtype(),
                    b.dtype()
                )))
            }
        };
        Ok(vec![out])
    }

    fn macs(&self, inputs: &[Option<&Fact>], _outputs: &[Fact]) -> u64 {
        match (opt(inputs, 0), opt(inputs, 1)) {
            (Some(a), Some(b)) => match self.dims(&a.shape, &b.shape) {
                Ok((m, n, k)) => (m as u64).saturating_mul(n as u64).saturating_mul(k as u64),
                Err(_) => 0,
            },
            _ => 0,
        }
    }
}

/// The resolved geometry of a numpy matmul.
#[derive(Debug, Clone, PartialEq)]
pub struct MatMulPlan {
    /// Rows of each product.
    pub m: usize,
    /// Columns of each product.
    pub n: usize,
    /// Inner size.
    pub k: usize,
    /// Broadcast batch shape.
    pub batch: Vec<usize>,
    /// Output shape (after removing the dims of promoted 1-D operands).
    pub out_shape: Vec<usize>,
    /// Batch strides of A (0 on broadcast dims), in elements.
    a_bstrides: Vec<usize>,
    /// Batch strides of B (0 on broadcast dims), in elements.
    b_bstrides: Vec<usize>,
}

impl MatMulPlan {
    /// Plans `A @ B` for the given shapes.
    pub fn new(a: &[usize], b: &[usize]) -> Result<MatMulPlan> {
        if a.is_empty() || b.is_empty() {
            return Err(op_error(format!(
                "MatMul operands must have rank >= 1, got shapes {a:?} and {b:?}"
            )));
        }
        let a2: Vec<usize> = if a.len() == 1 {
            vec![1, a[0]]
        } else {
            a.to_vec()
        };
        let b2: Vec<usize> = if b.len() == 1 {
            vec![b[0], 1]
        } else {
            b.to_vec()
        };
        let (ra, rb) = (a2.len(), b2.len());
        let (m, k) = (a2[ra - 2], a2[ra - 1]);
        let (kb, n) = (b2[rb - 2], b2[rb - 1]);
        if k != kb {
            return Err(op_error(format!(
                "inner dimensions differ: A {a:?} has K={k}, B {b:?} has K={kb}"
            )));
        }
        let (ab, bb) = (&a2[..ra - 2], &b2[..rb - 2]);
        let batch = broadcast_shapes(&[ab, bb])?;
        let bstrides = |s: &[usize], full: &[usize]| -> Vec<usize> {
            let st = strides(full);
            let off = batch.len() - s.len();
            (0..batch.len())
                .map(|i| {
                    if i < off || s[i - off] == 1 {
                        0
                    } else {
                        st[i - off]
                    }
                })
                .collect()
        };
        let a_bstrides = bstrides(ab, &a2);
        let b_bstrides = bstrides(bb, &b2);
        let mut out_shape = batch.clone();
        if a.len() > 1 {
            out_shape.push(m);
        }
        if b.len() > 1 {
            out_shape.push(n);
        }
        checked_numel(&out_shape)?;
        Ok(MatMulPlan {
            m,
            n,
            k,
            batch,
            out_shape,
            a_bstrides,
            b_bstrides,
        })
    }

    /// Number of products.
    pub fn batch_count(&self) -> usize {
        self.batch.iter().product()
    }

    /// Element offsets of A and B for each batch index.
    fn offsets(&self) -> Vec<(usize, usize)> {
        let count = self.batch_count();
        let rank = self.batch.len();
        let mut idx = vec![0usize; rank];
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let oa = idx.iter().zip(&self.a_bstrides).map(|(i, s)| i * s).sum();
            let ob = idx.iter().zip(&self.b_bstrides).map(|(i, s)| i * s).sum();
            out.push((oa, ob));
            for ax in (0..rank).rev() {
                idx[ax] += 1;
                if idx[ax] < self.batch[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        out
    }

    /// True when B is the same matrix for every batch index.
    fn b_shared(&self) -> bool {
        self.b_bstrides.iter().all(|&s| s == 0)
    }
    /// True when A's batches are laid out contiguously in output order.
    fn a_dense(&self) -> bool {
        let st = strides(&self.batch);
        self.a_bstrides
            .iter()
            .zip(&st)
            .zip(&self.batch)
            .all(|((&a, &s), &d)| d == 1 || a == s * self.m * self.k)
    }

    /// Computes the f32 product.
    pub fn run_f32(&self, a: &[f32], b: &[f32]) -> Vec<f32> {
        let (m, n, k) = (self.m, self.n, self.k);
        let count = self.batch_count();
        let mut out = vec![0.0f32; count * m * n];
        if out.is_empty() {
            return out;
        }
        if self.b_shared() && self.a_dense() {
            // One tall GEMM: [count*M, K] x [K, N].
            sgemm(
                count * m,
                n,
                k,
                1.0,
                MatRef::row_major(a, k),
                MatRef::row_major(b, n),
                false,
                &mut out,
                n,
                true,
            );
            return out;
        }
        let offs = self.offsets();
        let per = m * n * k;
        let threads = rayon::current_num_threads();
        let one = |(o, &(oa, ob)): (&mut [f32], &(usize, usize)), par: bool| {
            sgemm(
                m,
                n,
                k,
                1.0,
                MatRef::row_major(&a[oa..], k),
                MatRef::row_major(&b[ob..], n),
                false,
                o,
                n,
                par,
            );
        };
        if count >= threads && count > 1 && count.saturating_mul(per) >= GEMM_PAR_MACS {
            out.par_chunks_mut(m * n)
                .zip(offs.par_iter())
                .for_each(|x| one(x, false));
        } else {
            out.chunks_mut(m * n)
                .zip(offs.iter())
                .for_each(|x| one(x, true));
        }
        out
    }

    /// Computes the integer product (wrapping).
    pub fn run_i64(&self, a: &[i64], b: &[i64]) -> Vec<i64> {
        let (m, n, k) = (self.m, self.n, self.k);
        let mut out = vec![0i64; self.batch_count() * m * n];
        if out.is_empty() {
            return out;
        }
        for (o, (oa, ob)) in out.chunks_mut(m * n).zip(self.offsets()) {
            igemm(m, n, k, &a[oa..], k, 1, &b[ob..], n, 1, o);
        }
        out
    }
}

impl Op for MatMul {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let (ra, rb, ro) = (cx.shape(0).len(), cx.shape(1).len(), cx.out_shape(0).len());
        let mut m = ChanMap::new(2, 1);
        match (cx.is_const(0), cx.is_const(1)) {
            (false, true) if rb == 2 && ra >= 2 => {
                // x @ W: features of x (last axis) in, columns of W out.
                m.uses[0] = Some(Use::Axis(ra - 1));
                m.out_axes[0] = Some(ro - 1);
                m.weights.push(WeightAxis {
                    port: Port::In(0),
                    input: 1,
                    axis: 0,
                });
                m.weights.push(WeightAxis {
                    port: Port::Out(0),
                    input: 1,
                    axis: 1,
                });
                m.macs = vec![Port::In(0), Port::Out(0)];
                Some(m)
            }
            (false, false) if ra >= 3 && rb >= 3 => {
                // Two computed operands (attention): channels on a batch
                // axis (heads) of both pass to the same axis of the output.
                let (a, b) = (cx.axis(0)?, cx.axis(1)?);
                let (oa, ob) = (a + ro - ra, b + ro - rb);
                if a >= ra - 2 || b >= rb - 2 || oa != ob {
                    return None;
                }
                if cx.shape(0)[a] != cx.shape(1)[b] {
                    return None;
                }
                m.uses = vec![Some(Use::Axis(a)), Some(Use::Axis(b))];
                m.out_axes[0] = Some(oa);
                m.links.push(Link::same(Port::In(0), Port::Out(0)));
                m.links.push(Link::same(Port::In(1), Port::Out(0)));
                m.macs = vec![Port::Out(0)];
                Some(m)
            }
            _ => None,
        }
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (a, b) = (fact(inputs, 0)?, fact(inputs, 1)?);
        check_computable(a.dtype)?;
        if a.dtype != b.dtype {
            return Err(op_error(format!(
                "input types differ: {} and {}",
                a.dtype, b.dtype
            )));
        }
        let plan = MatMulPlan::new(&a.shape, &b.shape)?;
        Ok(vec![Fact::new(a.dtype, plan.out_shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
        if a.dtype() != b.dtype() {
            return Err(op_error(format!(
                "input types differ: {} and {}",
                a.dtype(),
                b.dtype()
            )));
        }
        let plan = MatMulPlan::new(a.shape(), b.shape())?;
        let out = match (a.data(), b.data()) {
            (Data::F32(x), Data::F32(y)) => {
                Tensor::from_float(a.dtype(), plan.out_shape.clone(), plan.run_f32(x, y))
            }
            (Data::I64(x), Data::I64(y)) => {
                Tensor::from_int(a.dtype(), plan.out_shape.clone(), plan.run_i64(x, y))
            }
            _ => {
                return Err(op_error(format!(
                    "unsupported input types {} and {}",
                    a.dtype(),
                    b.dtype()
                )))
            }
        };
        Ok(vec![out])
    }

    fn macs(&self, inputs: &[Option<&Fact>], _outputs: &[Fact]) -> u64 {
        match (opt(inputs, 0), opt(inputs, 1)) {
            (Some(a), Some(b)) => match MatMulPlan::new(&a.shape, &b.shape) {
                Ok(p) => [p.batch_count(), p.m, p.n, p.k]
                    .iter()
                    .fold(1u64, |acc, &x| acc.saturating_mul(x as u64)),
                Err(_) => 0,
            },
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute};
    use crate::ops::test_util::Rng;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec())
    }

    fn op(kind: &str, attrs: Vec<(&str, AttrValue)>) -> Box<dyn Op> {
        let n = Node::new(
            "n",
            kind,
            &["a", "b", "c"],
            &["y"],
            attrs
                .into_iter()
                .map(|(k, v)| Attribute::new(k, v))
                .collect(),
        );
        build(&n, 17).unwrap()
    }

    /// Evaluates and checks that shape inference agrees.
    fn run(o: &dyn Op, ins: &[Option<&Tensor>]) -> Result<Tensor> {
        let out = o.eval(ins)?.remove(0);
        let facts: Vec<Option<Fact>> = ins
            .iter()
            .map(|t| t.map(|t| Fact::new(t.dtype(), t.shape().to_vec())))
            .collect();
        let refs: Vec<Option<&Fact>> = facts.iter().map(|f| f.as_ref()).collect();
        let f = o.infer(&refs)?;
        assert_eq!(f[0].shape, out.shape());
        assert_eq!(f[0].dtype, out.dtype());
        Ok(out)
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "at {i}: {x} vs {y}"
            );
        }
    }

    /// Naive numpy matmul reference.
    fn ref_matmul(a: &Tensor, b: &Tensor) -> (Vec<usize>, Vec<f32>) {
        let (ash, bsh) = (a.shape(), b.shape());
        let a2: Vec<usize> = if ash.len() == 1 {
            vec![1, ash[0]]
        } else {
            ash.to_vec()
        };
        let b2: Vec<usize> = if bsh.len() == 1 {
            vec![bsh[0], 1]
        } else {
            bsh.to_vec()
        };
        let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
        let rank = a2.len().max(b2.len());
        let pad = |s: &[usize]| -> Vec<usize> {
            let mut v = vec![1; rank - s.len()];
            v.extend_from_slice(s);
            v
        };
        let (ap, bp) = (pad(&a2), pad(&b2));
        let batch: Vec<usize> = (0..rank - 2).map(|i| ap[i].max(bp[i])).collect();
        let count: usize = batch.iter().product();
        let (av, bv) = (a.f32s().unwrap(), b.f32s().unwrap());
        let mut out = Vec::new();
        for bi in 0..count {
            let mut rem = bi;
            let mut idx = vec![0; batch.len()];
            for ax in (0..batch.len()).rev() {
                idx[ax] = rem % batch[ax];
                rem /= batch[ax];
            }
            let off = |p: &[usize]| -> usize {
                let mut o = 0;
                for ax in 0..batch.len() {
                    o = o * p[ax] + if p[ax] == 1 { 0 } else { idx[ax] };
                }
                o
            };
            let (oa, ob) = (off(&ap) * m * k, off(&bp) * k * n);
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0.0f64;
                    for p in 0..k {
                        s += av[oa + i * k + p] as f64 * bv[ob + p * n + j] as f64;
                    }
                    out.push(s as f32);
                }
            }
        }
        let mut shape = batch;
        if ash.len() > 1 {
            shape.push(m);
        }
        if bsh.len() > 1 {
            shape.push(n);
        }
        (shape, out)
    }

    #[test]
    fn matmul_hand() {
        let o = op("MatMul", vec![]);
        let a = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = t(&[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
        let y = run(o.as_ref(), &[Some(&a), Some(&b)]).unwrap();
        assert_eq!(y.shape(), &[2, 2]);
        assert_eq!(y.f32s().unwrap(), &[58.0, 64.0, 139.0, 154.0]);
        // vector . vector -> scalar
        let v = t(&[3], &[1.0, 2.0, 3.0]);
        let y = run(o.as_ref(), &[Some(&v), Some(&v)]).unwrap();
        assert_eq!(y.shape(), &[] as &[usize]);
        assert_eq!(y.f32s().unwrap(), &[14.0]);
        // vector @ matrix and matrix @ vector
        let y = run(o.as_ref(), &[Some(&v), Some(&b)]).unwrap();
        assert_eq!(y.shape(), &[2]);
        assert_eq!(y.f32s().unwrap(), &[58.0, 64.0]);
        let y = run(o.as_ref(), &[Some(&a), Some(&v)]).unwrap();
        assert_eq!(y.shape(), &[2]);
        assert_eq!(y.f32s().unwrap(), &[14.0, 32.0]);
    }

    #[test]
    fn matmul_broadcasting_against_reference() {
        let shapes: &[(&[usize], &[usize])] = &[
            (&[4, 5], &[5, 3]),
            (&[2, 4, 5], &[5, 3]),
            (&[1, 128, 64], &[64, 96]),
            (&[4, 5], &[2, 5, 3]),
            (&[2, 1, 4, 5], &[3, 5, 6]),
            (&[3, 4, 5], &[3, 5, 2]),
            (&[2, 3, 4, 5], &[1, 3, 5, 2]),
            (&[1, 2, 3, 4], &[2, 1, 4, 3]),
            (&[5], &[2, 5, 3]),
            (&[2, 3, 5], &[5]),
            (&[7], &[7, 1]),
            (&[8, 16, 32, 16], &[8, 16, 16, 32]),
            (&[64, 8, 8], &[1, 8, 8]),
            (&[3, 0, 4], &[4, 5]),
            (&[3, 2, 0], &[0, 5]),
        ];
        let o = op("MatMul", vec![]);
        let mut rng = Rng(42);
        for (sa, sb) in shapes {
            let a = rng.tensor(sa);
            let b = rng.tensor(sb);
            let y = run(o.as_ref(), &[Some(&a), Some(&b)]).unwrap();
            let (shape, want) = ref_matmul(&a, &b);
            assert_eq!(y.shape(), shape.as_slice(), "{sa:?} x {sb:?}");
            close(y.f32s().unwrap(), &want);
        }
    }

    #[test]
    fn matmul_i64_and_macs() {
        let o = op("MatMul", vec![]);
        let a = Tensor::from_i64(vec![2, 1, 2], vec![1, 2, 3, 4]);
        let b = Tensor::from_i64(vec![2, 2], vec![5, 6, 7, 8]);
        let y = run(o.as_ref(), &[Some(&a), Some(&b)]).unwrap();
        assert_eq!(y.shape(), &[2, 1, 2]);
        assert_eq!(y.i64s().unwrap(), &[19, 22, 43, 50]);
        let fa = Fact::new(DType::F32, vec![2, 1, 128, 384]);
        let fb = Fact::new(DType::F32, vec![3, 384, 1536]);
        let out = o.infer(&[Some(&fa), Some(&fb)]).unwrap();
        assert_eq!(out[0].shape, vec![2, 3, 128, 1536]);
        assert_eq!(o.macs(&[Some(&fa), Some(&fb)], &out), 6 * 128 * 1536 * 384);
    }

    #[test]
    fn matmul_errors() {
        let o = op("MatMul", vec![]);
        let mut rng = Rng(1);
        let bad = |a: &[usize], b: &[usize]| {
            o.eval(&[Some(&Rng(3).tensor(a)), Some(&Rng(4).tensor(b))])
                .is_err()
        };
        assert!(bad(&[2, 3], &[4, 2]));
        assert!(bad(&[2, 2, 3], &[3, 3, 2]));
        assert!(bad(&[3], &[4]));
        let s = Tensor::from_f32(vec![], vec![1.0]);
        assert!(o.eval(&[Some(&s), Some(&rng.tensor(&[1, 1]))]).is_err());
        let i = Tensor::from_i64(vec![1, 1], vec![1]);
        assert!(o.eval(&[Some(&rng.tensor(&[1, 1])), Some(&i)]).is_err());
        assert!(o.eval(&[Some(&i), None]).is_err());
        let fb = Fact::new(DType::Bool, vec![2, 2]);
        assert!(o.infer(&[Some(&fb), Some(&fb)]).is_err());
        // Output shape that overflows is refused at inference.
        let fa = Fact::new(DType::F32, vec![usize::MAX / 2, 1, 1]);
        let fc = Fact::new(DType::F32, vec![4, 1, 1, 1]);
        assert!(o.infer(&[Some(&fa), Some(&fc)]).is_err());
    }

    fn ref_gemm(
        a: &Tensor,
        b: &Tensor,
        c: Option<&Tensor>,
        alpha: f32,
        beta: f32,
        ta: bool,
        tb: bool,
    ) -> Vec<f32> {
        let (av, bv) = (a.f32s().unwrap(), b.f32s().unwrap());
        let (m, k) = if ta {
            (a.shape()[1], a.shape()[0])
        } else {
            (a.shape()[0], a.shape()[1])
        };
        let n = if tb { b.shape()[0] } else { b.shape()[1] };
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let x = if ta { av[p * m + i] } else { av[i * k + p] };
                    let y = if tb { bv[j * k + p] } else { bv[p * n + j] };
                    s += x as f64 * y as f64;
                }
                let cv = c.map(|c| {
                    let cs = c.shape();
                    let (cm, cn) = match cs.len() {
                        0 => (1, 1),
                        1 => (1, cs[0]),
                        _ => (cs[0], cs[1]),
                    };
                    c.f32s().unwrap()
                        [(if cm == 1 { 0 } else { i }) * cn + if cn == 1 { 0 } else { j }]
                });
                out[i * n + j] = (alpha as f64 * s + beta as f64 * cv.unwrap_or(0.0) as f64) as f32;
            }
        }
        out
    }

    #[test]
    fn gemm_hand() {
        let o = op(
            "Gemm",
            vec![
                ("alpha", AttrValue::Float(2.0)),
                ("beta", AttrValue::Float(0.5)),
                ("transB", AttrValue::Int(1)),
            ],
        );
        let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = t(&[2, 2], &[1.0, 0.0, 1.0, 1.0]); // Bᵀ = [[1, 1], [0, 1]]
        let c = t(&[2], &[10.0, 20.0]);
        let y = run(o.as_ref(), &[Some(&a), Some(&b), Some(&c)]).unwrap();
        // A·Bᵀ = [[1, 3], [3, 7]]
        assert_eq!(y.f32s().unwrap(), &[7.0, 16.0, 11.0, 24.0]);
    }

    #[test]
    fn gemm_against_reference() {
        let mut rng = Rng(777);
        let (m, n, k) = (7, 5, 6);
        let c_shapes: &[Option<&[usize]>] = &[
            None,
            Some(&[]),
            Some(&[1]),
            Some(&[5]),
            Some(&[1, 5]),
            Some(&[7, 1]),
            Some(&[7, 5]),
            Some(&[1, 1]),
        ];
        for &ta in &[false, true] {
            for &tb in &[false, true] {
                for cs in c_shapes {
                    for &(alpha, beta) in &[(1.0, 1.0), (0.5, -2.0), (1.5, 0.0)] {
                        let a = rng.tensor(&if ta { [k, m] } else { [m, k] });
                        let b = rng.tensor(&if tb { [n, k] } else { [k, n] });
                        let c = cs.map(|s| rng.tensor(s));
                        let o = op(
                            "Gemm",
                            vec![
                                ("alpha", AttrValue::Float(alpha)),
                                ("beta", AttrValue::Float(beta)),
                                ("transA", AttrValue::Int(ta as i64)),
                                ("transB", AttrValue::Int(tb as i64)),
                            ],
                        );
                        let y = run(o.as_ref(), &[Some(&a), Some(&b), c.as_ref()]).unwrap();
                        assert_eq!(y.shape(), &[m, n]);
                        close(
                            y.f32s().unwrap(),
                            &ref_gemm(&a, &b, c.as_ref(), alpha, beta, ta, tb),
                        );
                    }
                }
            }
        }
        // A large one (threaded GEMM).
        let a = rng.tensor(&[96, 200]);
        let b = rng.tensor(&[300, 200]);
        let c = rng.tensor(&[300]);
        let o = op("Gemm", vec![("transB", AttrValue::Int(1))]);
        let y = run(o.as_ref(), &[Some(&a), Some(&b), Some(&c)]).unwrap();
        close(
            y.f32s().unwrap(),
            &ref_gemm(&a, &b, Some(&c), 1.0, 1.0, false, true),
        );
    }

    #[test]
    fn gemm_i64_macs_errors() {
        let o = op("Gemm", vec![]);
        let a = Tensor::from_i64(vec![1, 2], vec![1, 2]);
        let b = Tensor::from_i64(vec![2, 1], vec![3, 4]);
        let c = Tensor::from_i64(vec![1], vec![5]);
        let y = run(o.as_ref(), &[Some(&a), Some(&b), Some(&c)]).unwrap();
        assert_eq!(y.i64s().unwrap(), &[16]);

        let fa = Fact::new(DType::F32, vec![8, 16]);
        let fb = Fact::new(DType::F32, vec![16, 4]);
        let out = o.infer(&[Some(&fa), Some(&fb), None]).unwrap();
        assert_eq!(o.macs(&[Some(&fa), Some(&fb), None], &out), 8 * 16 * 4);

        let mut rng = Rng(5);
        let (a, b) = (rng.tensor(&[3, 4]), rng.tensor(&[4, 2]));
        assert!(o
            .eval(&[Some(&a), Some(&rng.tensor(&[3, 2])), None])
            .is_err());
        assert!(o
            .eval(&[Some(&rng.tensor(&[3, 4, 1])), Some(&b), None])
            .is_err());
        assert!(o
            .eval(&[Some(&a), Some(&b), Some(&rng.tensor(&[3]))])
            .is_err());
        assert!(o
            .eval(&[Some(&a), Some(&b), Some(&rng.tensor(&[2, 2]))])
            .is_err());
        assert!(o
            .eval(&[Some(&a), Some(&b), Some(&rng.tensor(&[1, 3, 2]))])
            .is_err());
        assert!(o.eval(&[Some(&a), None, None]).is_err());
        let ta = op("Gemm", vec![("transA", AttrValue::Int(1))]);
        assert!(ta.eval(&[Some(&a), Some(&b), None]).is_err());
        // Empty inner dimension with a huge output: refused, not allocated.
        let (ea, eb) = (
            Tensor::from_f32(vec![1 << 20, 0], vec![]),
            Tensor::from_f32(vec![0, 1 << 20], vec![]),
        );
        assert!(o.eval(&[Some(&ea), Some(&eb), None]).is_err());
        assert!(op("MatMul", vec![]).eval(&[Some(&ea), Some(&eb)]).is_err());
    }

    #[test]
    fn sgemm_strided_and_empty() {
        // dst with a row stride larger than n, accumulate, k = 0.
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [1.0, 1.0, 1.0, 1.0];
        let mut dst = [1.0f32; 6];
        sgemm(
            2,
            2,
            2,
            1.0,
            MatRef::row_major(&a, 2),
            MatRef::row_major(&b, 2),
            true,
            &mut dst,
            3,
            false,
        );
        assert_eq!(dst, [4.0, 4.0, 1.0, 8.0, 8.0, 1.0]);
        sgemm(
            2,
            2,
            0,
            1.0,
            MatRef::row_major(&a, 0),
            MatRef::row_major(&b, 2),
            false,
            &mut dst,
            3,
            false,
        );
        assert_eq!(dst, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
    }
}
