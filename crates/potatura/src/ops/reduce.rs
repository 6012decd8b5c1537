//! Reductions over axes: ReduceMean, ReduceSum, ReduceMax (float and
//! integer), plus the fast contiguous `sum_f32` / `max_f32` kernels other
//! ops (pooling, normalisation, softmax) share.

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap};
use super::common::{axis, fact, fact_value, input, opt, PAR_THRESHOLD};
use super::pool::with_simd;
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{Data, Node, Tensor};

/// Sum of a contiguous slice: 16 independent lanes (vectorisable) per block
/// of 4096 values, blocks summed in turn, which keeps the rounding error
/// small for long slices.
#[inline(always)]
pub fn sum_f32(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut total = 0.0f32;
    for block in x.chunks(1 << 12) {
        let mut acc = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let rem = chunks.remainder();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        let mut s = 0.0f32;
        for pair in acc.chunks_exact(2) {
            s += pair[0] + pair[1];
        }
        total += s + rem.iter().sum::<f32>();
    }
    total
}

/// Maximum of a contiguous slice (NaNs are skipped; `-inf` when empty).
#[inline(always)]
pub fn max_f32(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rem) {
        m = if v > m { v } else { m };
    }
    m
}

/// Which reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Arithmetic mean.
    Mean,
    /// Sum.
    Sum,
    /// Maximum.
    Max,
}

/// A reduction over a set of axes.
#[derive(Debug)]
pub struct Reduce {
    /// Which reduction.
    pub kind: Kind,
    /// Axes from the `axes` attribute (older opsets), if given.
    pub axes_attr: Option<Vec<i64>>,
    /// Whether the axes come from the second input (ReduceSum >= 13, the
    /// others >= 18).
    pub axes_from_input: bool,
    /// Keep reduced axes as size 1.
    pub keepdims: bool,
    /// With no axes: identity instead of reducing everything.
    pub noop_with_empty_axes: bool,
}

/// Builds ReduceMean, ReduceSum and ReduceMax.
pub fn build(node: &Node, opset: i64) -> Result<Box<dyn Op>> {
    let (kind, input_since) = match node.op_type.as_str() {
        "ReduceMean" => (Kind::Mean, 18),
        "ReduceSum" => (Kind::Sum, 13),
        "ReduceMax" => (Kind::Max, 18),
        o => return Err(op_error(format!("reduce::build called for {o}"))),
    };
    let keepdims = node.attr_int("keepdims", 1)? != 0;
    let noop_with_empty_axes = node.attr_int("noop_with_empty_axes", 0)? != 0;
    Ok(Box::new(Reduce {
        kind,
        axes_attr: node.attr_ints("axes")?,
        axes_from_input: opset >= input_since,
        keepdims,
        noop_with_empty_axes,
    }))
}

/// What a reduction does for a given input rank.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Return the input unchanged.
    Identity,
    /// Reduce the flagged axes.
    Axes(Vec<bool>),
}

impl Reduce {
    /// Raw axes: the input's value (when the axes come from an input), else
    /// the attribute. `Ok(None)` means "no axes given".
    fn raw_axes(&self, axes_input: Option<Option<&Tensor>>) -> Result<Option<Vec<i64>>> {
        if self.axes_from_input {
            match axes_input {
                Some(Some(t)) => {
                    if t.dtype().storage() != crate::ir::Storage::Int {
                        return Err(op_error(format!(
                            "axes must be an integer tensor, got {}",
                            t.dtype()
                        )));
                    }
                    return Ok(Some(t.to_i64_vec()));
                }
                Some(None) => {
                    return Err(op_error(
                        "the axes input must be a constant to infer the output shape",
                    ))
                }
                None => {}
            }
        }
        Ok(self.axes_attr.clone())
    }

    fn plan(&self, rank: usize, raw: Option<Vec<i64>>) -> Result<Plan> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            return Ok(if self.noop_with_empty_axes {
                Plan::Identity
            } else {
                Plan::Axes(vec![true; rank])
            });
        }
        let mut mask = vec![false; rank];
        for &a in &raw {
            let b = axis(a, rank)?;
            if rank == 0 || mask[b] {
                return Err(op_error(format!(
                    "axes {raw:?} are invalid for rank {rank} (repeated or out of range)"
                )));
            }
            mask[b] = true;
        }
        Ok(Plan::Axes(mask))
    }

    fn out_shape(&self, shape: &[usize], mask: &[bool]) -> Vec<usize> {
        if self.keepdims {
            shape
                .iter()
                .zip(mask)
                .map(|(&d, &m)| if m { 1 } else { d })
                .collect()
        } else {
            shape
                .iter()
                .zip(mask)
                .filter(|(_, &m)| !m)
                .map(|(&d, _)| d)
                .collect()
        }
    }
}

/// Reduces `x` of shape `[outer, r, inner]` over `r` into `[outer, inner]`.
/// `row` reduces a contiguous slice (used when `inner == 1`); `op` combines
/// two values, starting from `init`.
fn reduce_group<T: Copy + Send + Sync>(
    x: &[T],
    outer: usize,
    r: usize,
    inner: usize,
    init: T,
    op: impl Fn(T, T) -> T + Sync + Send + Copy,
    row: impl Fn(&[T]) -> T + Sync + Send,
) -> Vec<T> {
    let mut out = vec![init; outer * inner];
    if out.is_empty() {
        return out;
    }
    let par = x.len() >= PAR_THRESHOLD;
    if inner == 1 {
        // Groups of whole rows per task, compiled for AVX2 when available.
        let per = if par {
            (PAR_THRESHOLD / 4 / r.max(1)).max(1)
        } else {
            outer
        };
        let f = |(t, ys): (usize, &mut [T])| {
            with_simd(
                #[inline(always)]
                || {
                    for (k, y) in ys.iter_mut().enumerate() {
                        let o = t * per + k;
                        *y = row(&x[o * r..(o + 1) * r]);
                    }
                },
            )
        };
        if par && outer > per {
            out.par_chunks_mut(per).enumerate().for_each(f);
        } else {
            f((0, &mut out));
        }
        return out;
    }
    // Element-wise over rows of length `inner`.
    const CH: usize = 1024;
    let kernel = |o: usize, j0: usize, acc: &mut [T]| {
        with_simd(
            #[inline(always)]
            || {
                let base = o * r * inner + j0;
                for rr in 0..r {
                    let src = &x[base + rr * inner..base + rr * inner + acc.len()];
                    for (a, &v) in acc.iter_mut().zip(src) {
                        *a = op(*a, v);
                    }
                }
            },
        )
    };
    if par {
        out.par_chunks_mut(inner).enumerate().for_each(|(o, orow)| {
            if inner >= 2 * CH {
                orow.par_chunks_mut(CH)
                    .enumerate()
                    .for_each(|(c, ch)| kernel(o, c * CH, ch));
            } else {
                kernel(o, 0, orow);
            }
        });
    } else {
        out.chunks_mut(inner)
            .enumerate()
            .for_each(|(o, orow)| kernel(o, 0, orow));
    }
    out
}

/// Splits `shape` into maximal runs of reduced / kept axes (size-1 axes
/// dropped), as `(length, reduced)`.
fn segments(shape: &[usize], mask: &[bool]) -> Vec<(usize, bool)> {
    let mut segs: Vec<(usize, bool)> = Vec::new();
    for (&d, &m) in shape.iter().zip(mask) {
        if d == 1 {
            continue;
        }
        match segs.last_mut() {
            Some((len, red)) if *red == m => *len *= d,
            _ => segs.push((d, m)),
        }
    }
    segs
}

/// Reduces every flagged axis of `x`, one run of axes at a time.
fn reduce_all<T: Copy + Send + Sync>(
    x: &[T],
    shape: &[usize],
    mask: &[bool],
    init: T,
    op: impl Fn(T, T) -> T + Sync + Send + Copy,
    row: impl Fn(&[T]) -> T + Sync + Send + Copy,
) -> Vec<T> {
    let mut segs = segments(shape, mask);
    let mut cur: Option<Vec<T>> = None;
    // Reduced size-0 axes are dropped by `segments` only when size 1; a
    // size-0 reduced axis stays and yields `init`.
    while let Some(i) = segs.iter().rposition(|s| s.1) {
        let outer: usize = segs[..i].iter().map(|s| s.0).product();
        let inner: usize = segs[i + 1..].iter().map(|s| s.0).product();
        let src = cur.as_deref().unwrap_or(x);
        cur = Some(reduce_group(src, outer, segs[i].0, inner, init, op, row));
        segs.remove(i);
    }
    cur.unwrap_or_else(|| x.to_vec())
}

impl Op for Reduce {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let Some(a) = cx.axis(0) else {
            return cx.keep_channels(0);
        };
        let axes_in = cx.fact(1).map(|f| f.value.as_deref());
        let plan = self
            .plan(cx.shape(0).len(), self.raw_axes(axes_in).ok()?)
            .ok()?;
        match plan {
            Plan::Identity => cx.keep_channels(a),
            // Reducing across channels mixes them: frozen.
            Plan::Axes(mask) if mask[a] => None,
            Plan::Axes(mask) => {
                let before = mask[..a].iter().filter(|&&m| m).count();
                cx.keep_channels(if self.keepdims { a } else { a - before })
            }
        }
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        let axes_in = opt(inputs, 1).map(|_| fact_value(inputs, 1));
        match self.plan(x.shape.len(), self.raw_axes(axes_in)?)? {
            Plan::Identity => Ok(vec![Fact::new(x.dtype, x.shape.clone())]),
            Plan::Axes(mask) => Ok(vec![Fact::new(x.dtype, self.out_shape(&x.shape, &mask))]),
        }
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let axes_in = opt(inputs, 1).map(Some);
        let mask = match self.plan(x.rank(), self.raw_axes(axes_in)?)? {
            Plan::Identity => return Ok(vec![x.clone()]),
            Plan::Axes(m) => m,
        };
        let shape = self.out_shape(x.shape(), &mask);
        let count: usize = x
            .shape()
            .iter()
            .zip(&mask)
            .filter(|(_, &m)| m)
            .map(|(&d, _)| d)
            .product();
        let out = match x.data() {
            Data::F32(v) => {
                let r = match self.kind {
                    Kind::Sum | Kind::Mean => {
                        reduce_all(v, x.shape(), &mask, 0.0, |a, b| a + b, sum_f32)
                    }
                    Kind::Max => {
                        reduce_all(v, x.shape(), &mask, f32::NEG_INFINITY, f32::max, max_f32)
                    }
                };
                let r = if self.kind == Kind::Mean {
                    let n = count as f32;
                    r.into_iter().map(|s| s / n).collect()
                } else {
                    r
                };
                Tensor::from_float(x.dtype(), shape, r)
            }
            Data::I64(v) => {
                let r = match self.kind {
                    Kind::Sum | Kind::Mean => reduce_all(
                        v,
                        x.shape(),
                        &mask,
                        0i64,
                        i64::wrapping_add,
                        |s: &[i64]| s.iter().fold(0i64, |a, &b| a.wrapping_add(b)),
                    ),
                    Kind::Max => {
                        reduce_all(v, x.shape(), &mask, i64::MIN, i64::max, |s: &[i64]| {
                            s.iter().copied().max().unwrap_or(i64::MIN)
                        })
                    }
                };
                let r = if self.kind == Kind::Mean {
                    let n = count as i64;
                    r.into_iter()
                        .map(|s| if n == 0 { 0 } else { s / n })
                        .collect()
                } else {
                    r
                };
                Tensor::from_int(x.dtype(), shape, r)
            }
            Data::Bool(_) => return Err(op_error(format!("unsupported input type {}", x.dtype()))),
        };
        Ok(vec![out])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute, DType};

    fn node(op: &str, n_in: usize, attrs: Vec<(&str, AttrValue)>) -> Node {
        let ins: Vec<&str> = ["x", "axes"][..n_in].to_vec();
        Node::new(
            "n",
            op,
            &ins,
            &["y"],
            attrs
                .into_iter()
                .map(|(k, v)| Attribute::new(k, v))
                .collect(),
        )
    }

    fn run(
        op: &str,
        opset: i64,
        attrs: Vec<(&str, AttrValue)>,
        x: &Tensor,
        axes: Option<&[i64]>,
    ) -> Result<Tensor> {
        let n = node(op, if axes.is_some() { 2 } else { 1 }, attrs);
        let o = build(&n, opset)?;
        let a = axes.map(|a| Tensor::from_i64(vec![a.len()], a.to_vec()));
        let ins = [Some(x), a.as_ref()];
        let out = o.eval(&ins)?.remove(0);
        // infer must agree with eval
        let fx = Fact::new(x.dtype(), x.shape().to_vec());
        let fa = a.clone().map(Fact::known);
        let f = o.infer(&[Some(&fx), fa.as_ref()])?;
        assert_eq!(f[0].shape, out.shape());
        Ok(out)
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    fn x234() -> Tensor {
        Tensor::from_f32(vec![2, 3, 4], (0..24).map(|v| v as f32).collect())
    }

    #[test]
    fn sum_and_max_helpers() {
        let v: Vec<f32> = (0..10_001).map(|i| (i % 7) as f32 - 3.0).collect();
        let exact: f64 = v.iter().map(|&x| x as f64).sum();
        assert_eq!(sum_f32(&v) as f64, exact);
        assert_eq!(max_f32(&v), 3.0);
        assert_eq!(max_f32(&[]), f32::NEG_INFINITY);
        assert_eq!(sum_f32(&[]), 0.0);
        let big: Vec<f32> = (0..1_000_000).map(|_| 0.1).collect();
        assert!((sum_f32(&big) - 100_000.0).abs() < 1.0);
    }

    #[test]
    fn reduce_mean_attr_axes_keepdims() {
        let x = x234();
        let y = run(
            "ReduceMean",
            13,
            vec![("axes", AttrValue::Ints(vec![1]))],
            &x,
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[2, 1, 4]);
        close(y.f32s().unwrap(), &[4., 5., 6., 7., 16., 17., 18., 19.]);
        let y = run(
            "ReduceMean",
            13,
            vec![
                ("axes", AttrValue::Ints(vec![-1])),
                ("keepdims", AttrValue::Int(0)),
            ],
            &x,
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        close(y.f32s().unwrap(), &[1.5, 5.5, 9.5, 13.5, 17.5, 21.5]);
        // all axes by default
        let y = run("ReduceMean", 13, vec![], &x, None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 1]);
        close(y.f32s().unwrap(), &[11.5]);
    }

    #[test]
    fn reduce_disjoint_axes() {
        let x = x234();
        // numpy: x.sum(axis=(0,2)) = [60, 92, 124]
        let y = run(
            "ReduceSum",
            11,
            vec![
                ("axes", AttrValue::Ints(vec![0, 2])),
                ("keepdims", AttrValue::Int(0)),
            ],
            &x,
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[3]);
        close(y.f32s().unwrap(), &[60., 92., 124.]);
        // x.max(axis=(0,2), keepdims) = [15,19,23]
        let y = run(
            "ReduceMax",
            13,
            vec![("axes", AttrValue::Ints(vec![2, 0]))],
            &x,
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 3, 1]);
        close(y.f32s().unwrap(), &[15., 19., 23.]);
        // x.mean(axis=(0,1)) = [10,11,12,13]
        let y = run(
            "ReduceMean",
            18,
            vec![("keepdims", AttrValue::Int(0))],
            &x,
            Some(&[0, -2]),
        )
        .unwrap();
        close(y.f32s().unwrap(), &[10., 11., 12., 13.]);
    }

    #[test]
    fn reduce_sum_axes_input_opset13() {
        let x = x234();
        let y = run("ReduceSum", 13, vec![], &x, Some(&[1])).unwrap();
        assert_eq!(y.shape(), &[2, 1, 4]);
        close(y.f32s().unwrap(), &[12., 15., 18., 21., 48., 51., 54., 57.]);
        // no axes input: everything
        let y = run(
            "ReduceSum",
            13,
            vec![("keepdims", AttrValue::Int(0))],
            &x,
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[] as &[usize]);
        close(y.f32s().unwrap(), &[276.]);
        // empty axes input: everything, unless noop_with_empty_axes
        let y = run("ReduceSum", 13, vec![], &x, Some(&[])).unwrap();
        close(y.f32s().unwrap(), &[276.]);
        let y = run(
            "ReduceSum",
            13,
            vec![("noop_with_empty_axes", AttrValue::Int(1))],
            &x,
            Some(&[]),
        )
        .unwrap();
        assert_eq!(y, x);
        let y = run(
            "ReduceMax",
            18,
            vec![("noop_with_empty_axes", AttrValue::Int(1))],
            &x,
            None,
        )
        .unwrap();
        assert_eq!(y, x);
    }

    #[test]
    fn reduce_max_negative_values_and_ints() {
        let x = Tensor::from_f32(vec![2, 2], vec![-5., -3., -7., -9.]);
        let y = run(
            "ReduceMax",
            13,
            vec![("axes", AttrValue::Ints(vec![1]))],
            &x,
            None,
        )
        .unwrap();
        close(y.f32s().unwrap(), &[-3., -7.]);
        let xi = Tensor::from_i64(vec![2, 3], vec![1, 5, 3, -4, -2, -8]);
        let y = run(
            "ReduceMax",
            13,
            vec![
                ("axes", AttrValue::Ints(vec![0])),
                ("keepdims", AttrValue::Int(0)),
            ],
            &xi,
            None,
        )
        .unwrap();
        assert_eq!(y.i64s().unwrap(), &[1, 5, 3]);
        let y = run(
            "ReduceSum",
            13,
            vec![("keepdims", AttrValue::Int(0))],
            &xi,
            Some(&[1]),
        )
        .unwrap();
        assert_eq!(y.i64s().unwrap(), &[9, -14]);
        let y = run(
            "ReduceMean",
            13,
            vec![("axes", AttrValue::Ints(vec![1]))],
            &xi,
            None,
        )
        .unwrap();
        assert_eq!(y.i64s().unwrap(), &[3, -4]);
        assert_eq!(y.dtype(), DType::I64);
    }

    #[test]
    fn reduce_large_parallel_paths() {
        // [4, 300, 100]: reduce middle (strided) and last (contiguous)
        let shape = vec![4usize, 300, 100];
        let v: Vec<f32> = (0..120_000)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0)
            .collect();
        let x = Tensor::from_f32(shape.clone(), v.clone());
        let y = run(
            "ReduceMean",
            13,
            vec![("axes", AttrValue::Ints(vec![1]))],
            &x,
            None,
        )
        .unwrap();
        let yv = y.f32s().unwrap();
        for o in 0..4 {
            for j in 0..100 {
                let s: f64 = (0..300).map(|r| v[o * 30000 + r * 100 + j] as f64).sum();
                assert!((yv[o * 100 + j] as f64 - s / 300.0).abs() < 1e-4);
            }
        }
        let y = run(
            "ReduceMax",
            13,
            vec![("axes", AttrValue::Ints(vec![2]))],
            &x,
            None,
        )
        .unwrap();
        let yv = y.f32s().unwrap();
        for (o, &m) in yv.iter().enumerate() {
            let want = v[o * 100..(o + 1) * 100]
                .iter()
                .cloned()
                .fold(f32::MIN, f32::max);
            assert_eq!(m, want);
        }
        // outer = 1, wide inner: reduce axis 0 of [2, 70000]
        let v: Vec<f32> = (0..140_000).map(|i| (i % 13) as f32).collect();
        let x = Tensor::from_f32(vec![2, 70_000], v.clone());
        let y = run(
            "ReduceSum",
            11,
            vec![("axes", AttrValue::Ints(vec![0]))],
            &x,
            None,
        )
        .unwrap();
        let yv = y.f32s().unwrap();
        for j in [0, 1, 5000, 69_999] {
            assert_eq!(yv[j], v[j] + v[70_000 + j]);
        }
    }

    #[test]
    fn reduce_empty_and_size_one() {
        let x = Tensor::from_f32(vec![2, 0], vec![]);
        let y = run(
            "ReduceSum",
            13,
            vec![("axes", AttrValue::Ints(vec![1]))],
            &x,
            None,
        )
        .unwrap();
        assert_eq!(y.f32s().unwrap(), &[0.0, 0.0]);
        let y = run(
            "ReduceMax",
            13,
            vec![("axes", AttrValue::Ints(vec![1]))],
            &x,
            None,
        )
        .unwrap();
        assert_eq!(y.f32s().unwrap(), &[f32::NEG_INFINITY; 2]);
        let x = Tensor::from_f32(vec![3, 1], vec![1., 2., 3.]);
        let y = run(
            "ReduceSum",
            11,
            vec![
                ("axes", AttrValue::Ints(vec![1])),
                ("keepdims", AttrValue::Int(0)),
            ],
            &x,
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[3]);
        assert_eq!(y.f32s().unwrap(), &[1., 2., 3.]);
    }

    #[test]
    fn reduce_errors() {
        let x = x234();
        assert!(run(
            "ReduceSum",
            11,
            vec![("axes", AttrValue::Ints(vec![3]))],
            &x,
            None
        )
        .is_err());
        assert!(run(
            "ReduceSum",
            11,
            vec![("axes", AttrValue::Ints(vec![-4]))],
            &x,
            None
        )
        .is_err());
        assert!(run(
            "ReduceSum",
            11,
            vec![("axes", AttrValue::Ints(vec![1, -2]))],
            &x,
            None
        )
        .is_err());
        assert!(run("ReduceMean", 18, vec![], &x, Some(&[5])).is_err());
        // axes input of unknown value at inference time
        let o = build(&node("ReduceSum", 2, vec![]), 13).unwrap();
        let fx = Fact::new(DType::F32, vec![2, 3]);
        let fa = Fact::new(DType::I64, vec![1]);
        assert!(o.infer(&[Some(&fx), Some(&fa)]).is_err());
        // float axes
        let o = build(&node("ReduceSum", 2, vec![]), 13).unwrap();
        let a = Tensor::from_f32(vec![1], vec![0.0]);
        assert!(o.eval(&[Some(&x), Some(&a)]).is_err());
        // bool data
        let b = Tensor::from_bool(vec![2], vec![true, false]);
        assert!(run("ReduceSum", 11, vec![], &b, None).is_err());
        assert!(build(&node("ReduceMin", 1, vec![]), 13).is_err());
        assert!(build(
            &node("ReduceSum", 1, vec![("keepdims", AttrValue::Float(1.0))]),
            13
        )
        .is_err());
    }
}
