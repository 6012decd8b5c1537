//! Broadcasting element-wise ops of two or more inputs: Add, Sub, Mul, Div,
//! Pow, PRelu, Equal, Greater, Less, Max, Min; and the broadcasting engine
//! shared by element-wise ops ([`broadcast_zip`], [`broadcast_map2`],
//! [`broadcast_zip3`]).
//!
//! The engine never builds index maps: it collapses the broadcast into a few
//! dimensions, then walks the output in contiguous inner blocks in which
//! every input either advances by one or stays on one value, so the inner
//! loops are tight and vectorisable (`[N,C,H,W] op [1,C,1,1]` becomes blocks
//! of `H*W` against one value, `[B,S,H] op [H]` blocks of `H` against the
//! same run, `[B,H,S,S] op [B,1,1,S]` blocks of `S`).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap};
use super::common::{broadcast_shapes, fact, input, PAR_THRESHOLD};
use super::logic::wrap_int;
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{numel, strides, DType, Data, Node, Tensor};

// ---------------------------------------------------------------------------
// Broadcasting engine
// ---------------------------------------------------------------------------

/// A broadcast of `K` inputs, collapsed: outer dimensions walked with an
/// odometer and one innermost block in which each input has stride 0 or 1.
struct Plan<const K: usize> {
    out_shape: Vec<usize>,
    n: usize,
    /// Collapsed outer dimensions, outermost first.
    outer: Vec<usize>,
    /// Stride of each input along each outer dimension.
    outer_strides: Vec<[usize; K]>,
    /// Length of the innermost block.
    inner: usize,
    /// Stride (0 or 1) of each input along the innermost block.
    inner_strides: [usize; K],
}

fn plan<const K: usize>(shapes: [&[usize]; K], lens: [usize; K]) -> Result<Plan<K>> {
    for k in 0..K {
        if numel(shapes[k]) != lens[k] {
            return Err(op_error(format!(
                "internal: input {k} has shape {:?} but {} values",
                shapes[k], lens[k]
            )));
        }
    }
    let out_shape = broadcast_shapes(&shapes)?;
    let n = out_shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| op_error(format!("output shape {out_shape:?} is too large")))?;
    let rank = out_shape.len();
    let in_strides: Vec<Vec<usize>> = shapes.iter().map(|s| strides(s)).collect();
    let mut dims: Vec<usize> = Vec::with_capacity(rank);
    let mut strs: Vec<[usize; K]> = Vec::with_capacity(rank);
    for (ax, &d) in out_shape.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let mut st = [0usize; K];
        for k in 0..K {
            let off = rank - shapes[k].len();
            if ax >= off && shapes[k][ax - off] != 1 {
                st[k] = in_strides[k][ax - off];
            }
        }
        // Merge with the previous dimension when every input walks both as
        // one (contiguous, or broadcast along both).
        if let (Some(pd), Some(ps)) = (dims.last_mut(), strs.last_mut()) {
            if (0..K).all(|k| ps[k] == st[k] * d) {
                *pd *= d;
                *ps = st;
                continue;
            }
        }
        dims.push(d);
        strs.push(st);
    }
    let inner = dims.pop().unwrap_or(1);
    let inner_strides = strs.pop().unwrap_or([0; K]);
    debug_assert!(inner_strides.iter().all(|&s| s <= 1));
    Ok(Plan {
        out_shape,
        n,
        outer: dims,
        outer_strides: strs,
        inner,
        inner_strides,
    })
}

/// Fills `out` (the output elements `start..start + out.len()`) block by
/// block: `kernel(block, offsets, strides)` gets each input's offset at the
/// block start and its stride (0 or 1) inside the block. Blocks along the
/// last outer dimension are walked in a tight loop; an odometer carries
/// over the other outer dimensions.
fn run_range<const K: usize, U>(
    p: &Plan<K>,
    start: usize,
    out: &mut [MaybeUninit<U>],
    kernel: &(impl Fn(&mut [MaybeUninit<U>], [usize; K], [usize; K]) + Sync),
) {
    // Split the outer dimensions into the odometer ones and the last.
    let (odo_dims, odo_strides, last_dim, last_strides) = match p.outer.split_last() {
        Some((&d, dims)) => (
            dims,
            &p.outer_strides[..dims.len()],
            d,
            p.outer_strides[dims.len()],
        ),
        None => (&[][..], &[][..], 1, [0; K]),
    };
    let r = odo_dims.len();
    let mut idx = vec![0usize; r];
    let mut base = [0usize; K];
    let mut rem = start / p.inner;
    let mut j = start % p.inner;
    let mut row = rem % last_dim;
    rem /= last_dim;
    for ax in (0..r).rev() {
        idx[ax] = rem % odo_dims[ax];
        rem /= odo_dims[ax];
        for (b, s) in base.iter_mut().zip(&odo_strides[ax]) {
            *b += idx[ax] * s;
        }
    }
    let mut pos = 0;
    loop {
        while row < last_dim && pos < out.len() {
            let len = (p.inner - j).min(out.len() - pos);
            let offs: [usize; K] =
                std::array::from_fn(|k| base[k] + row * last_strides[k] + j * p.inner_strides[k]);
            kernel(&mut out[pos..pos + len], offs, p.inner_strides);
            pos += len;
            j = 0;
            row += 1;
        }
        if pos >= out.len() {
            break;
        }
        row = 0;
        for ax in (0..r).rev() {
            idx[ax] += 1;
            for (b, s) in base.iter_mut().zip(&odo_strides[ax]) {
                *b += s;
            }
            if idx[ax] < odo_dims[ax] {
                break;
            }
            for (b, s) in base.iter_mut().zip(&odo_strides[ax]) {
                *b -= s * odo_dims[ax];
            }
            idx[ax] = 0;
        }
    }
}

/// Runs a plan into a new vector, in parallel chunks for large outputs.
///
/// # Safety
/// `kernel` must initialise every element of the block it is given.
unsafe fn run_plan<const K: usize, U: Send>(
    p: &Plan<K>,
    kernel: impl Fn(&mut [MaybeUninit<U>], [usize; K], [usize; K]) + Sync,
) -> Result<Vec<U>> {
    let n = p.n;
    let mut out: Vec<U> = Vec::new();
    out.try_reserve_exact(n).map_err(|_| {
        op_error(format!(
            "cannot allocate the output of shape {:?}",
            p.out_shape
        ))
    })?;
    {
        let spare = &mut out.spare_capacity_mut()[..n];
        if n >= PAR_THRESHOLD {
            let chunk = (n / (rayon::current_num_threads() * 4)).max(PAR_THRESHOLD / 4);
            spare
                .par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| run_range(p, i * chunk, c, &kernel));
        } else if n > 0 {
            run_range(p, 0, spare, &kernel);
        }
    }
    // SAFETY: run_range hands every element of `spare[..n]` to exactly one
    // kernel call, and the caller guarantees the kernel initialises it.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// One input's values over a block: a run of consecutive values, or one
/// value repeated.
#[derive(Clone, Copy)]
enum Src<'a, T> {
    Run(&'a [T]),
    Same(T),
}

#[inline]
fn src<T: Copy>(data: &[T], off: usize, stride: usize, len: usize) -> Src<'_, T> {
    if stride == 0 {
        Src::Same(data[off])
    } else {
        Src::Run(&data[off..off + len])
    }
}

/// Writes `f(a, b)` over a block; initialises every element of `o` (runs
/// have exactly `o.len()` values).
#[inline]
fn block2<A: Copy, B: Copy, U>(
    o: &mut [MaybeUninit<U>],
    a: Src<'_, A>,
    b: Src<'_, B>,
    f: &impl Fn(A, B) -> U,
) {
    match (a, b) {
        (Src::Run(x), Src::Run(y)) => {
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                o.write(f(x, y));
            }
        }
        (Src::Run(x), Src::Same(y)) => {
            for (o, &x) in o.iter_mut().zip(x) {
                o.write(f(x, y));
            }
        }
        (Src::Same(x), Src::Run(y)) => {
            for (o, &y) in o.iter_mut().zip(y) {
                o.write(f(x, y));
            }
        }
        (Src::Same(x), Src::Same(y)) => {
            for o in o.iter_mut() {
                o.write(f(x, y));
            }
        }
    }
}

/// Applies `f` element-wise with numpy broadcasting to two inputs of
/// possibly different element types. Returns the output shape and values.
pub fn broadcast_map2<A: Copy + Send + Sync, B: Copy + Send + Sync, U: Send>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    f: impl Fn(A, B) -> U + Sync + Send,
) -> Result<(Vec<usize>, Vec<U>)> {
    let p = plan([ash, bsh], [a.len(), b.len()])?;
    let kernel = |o: &mut [MaybeUninit<U>], off: [usize; 2], st: [usize; 2]| {
        let len = o.len();
        block2(
            o,
            src(a, off[0], st[0], len),
            src(b, off[1], st[1], len),
            &f,
        );
    };
    // SAFETY: block2 writes every element of the block.
    let v = unsafe { run_plan(&p, kernel)? };
    Ok((p.out_shape, v))
}

/// Applies `f` element-wise with numpy broadcasting. Returns the output
/// shape and values; errors when the shapes do not broadcast.
pub fn broadcast_zip<T: Copy + Send + Sync, U: Send>(
    a: &[T],
    ash: &[usize],
    b: &[T],
    bsh: &[usize],
    f: impl Fn(T, T) -> U + Sync + Send,
) -> Result<(Vec<usize>, Vec<U>)> {
    broadcast_map2(a, ash, b, bsh, f)
}

#[inline]
fn write3<U, A, B, C>(
    o: &mut [MaybeUninit<U>],
    a: impl Iterator<Item = A>,
    b: impl Iterator<Item = B>,
    c: impl Iterator<Item = C>,
    f: &impl Fn(A, B, C) -> U,
) {
    for (o, ((x, y), z)) in o.iter_mut().zip(a.zip(b).zip(c)) {
        o.write(f(x, y, z));
    }
}

#[inline]
fn block3c<U, A, B, C: Copy>(
    o: &mut [MaybeUninit<U>],
    a: impl Iterator<Item = A>,
    b: impl Iterator<Item = B>,
    c: Src<'_, C>,
    f: &impl Fn(A, B, C) -> U,
) {
    match c {
        Src::Run(s) => write3(o, a, b, s.iter().copied(), f),
        Src::Same(v) => write3(o, a, b, std::iter::repeat(v), f),
    }
}

#[inline]
fn block3b<U, A, B: Copy, C: Copy>(
    o: &mut [MaybeUninit<U>],
    a: impl Iterator<Item = A>,
    b: Src<'_, B>,
    c: Src<'_, C>,
    f: &impl Fn(A, B, C) -> U,
) {
    match b {
        Src::Run(s) => block3c(o, a, s.iter().copied(), c, f),
        Src::Same(v) => block3c(o, a, std::iter::repeat(v), c, f),
    }
}

/// Writes `f(a, b, c)` over a block; initialises every element of `o`
/// (runs have exactly `o.len()` values, repeats are endless).
#[inline]
fn block3<U, A: Copy, B: Copy, C: Copy>(
    o: &mut [MaybeUninit<U>],
    a: Src<'_, A>,
    b: Src<'_, B>,
    c: Src<'_, C>,
    f: &impl Fn(A, B, C) -> U,
) {
    match a {
        Src::Run(s) => block3b(o, s.iter().copied(), b, c, f),
        Src::Same(v) => block3b(o, std::iter::repeat(v), b, c, f),
    }
}

/// Applies `f` element-wise with numpy broadcasting to three inputs (used
/// by `Where`). Returns the output shape and values.
pub fn broadcast_zip3<
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    C: Copy + Send + Sync,
    U: Send,
>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    c: &[C],
    csh: &[usize],
    f: impl Fn(A, B, C) -> U + Sync + Send,
) -> Result<(Vec<usize>, Vec<U>)> {
    let p = plan([ash, bsh, csh], [a.len(), b.len(), c.len()])?;
    let kernel = |o: &mut [MaybeUninit<U>], off: [usize; 3], st: [usize; 3]| {
        let len = o.len();
        block3(
            o,
            src(a, off[0], st[0], len),
            src(b, off[1], st[1], len),
            src(c, off[2], st[2], len),
            &f,
        );
    };
    // SAFETY: block3 writes every element of the block.
    let v = unsafe { run_plan(&p, kernel)? };
    Ok((p.out_shape, v))
}

// ---------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------

/// The element-wise operation performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b (integers truncate toward zero; division by zero gives 0)
    Div,
    /// a ^ b (float or integer base, float or integer exponent)
    Pow,
    /// x if x >= 0 else slope * x (slope broadcast to x)
    PRelu,
    /// a == b (Bool output)
    Equal,
    /// a > b (Bool output)
    Greater,
    /// a < b (Bool output)
    Less,
    /// a >= b (Bool output)
    GreaterOrEqual,
    /// a <= b (Bool output)
    LessOrEqual,
    /// a && b (Bool inputs and output)
    And,
    /// a || b (Bool inputs and output)
    Or,
    /// a ^ b (Bool inputs and output)
    Xor,
    /// Element-wise maximum of any number of inputs (NaN propagates)
    Max,
    /// Element-wise minimum of any number of inputs (NaN propagates)
    Min,
}

/// A broadcasting element-wise op of two (Max/Min: one or more) inputs.
#[derive(Debug)]
pub struct Binary {
    /// Which one.
    pub kind: Kind,
    /// Opset < 7 legacy broadcasting (`broadcast=1` with `axis`): the
    /// second input's dimensions line up with the first's from this axis.
    pub legacy_axis: Option<i64>,
}

/// Builds Add, Sub, Mul, Div, Pow, PRelu, Equal, Greater, Less, Max, Min.
pub fn build(node: &Node, opset: i64) -> Result<Box<dyn Op>> {
    let kind = match node.op_type.as_str() {
        "Add" => Kind::Add,
        "Sub" => Kind::Sub,
        "Mul" => Kind::Mul,
        "Div" => Kind::Div,
        "Pow" => Kind::Pow,
        "PRelu" => Kind::PRelu,
        "Equal" => Kind::Equal,
        "Greater" => Kind::Greater,
        "Less" => Kind::Less,
        "GreaterOrEqual" => Kind::GreaterOrEqual,
        "LessOrEqual" => Kind::LessOrEqual,
        "And" => Kind::And,
        "Or" => Kind::Or,
        "Xor" => Kind::Xor,
        "Max" => Kind::Max,
        "Min" => Kind::Min,
        o => return Err(op_error(format!("binary::build called for {o}"))),
    };
    let legacy = opset < 7
        && !matches!(kind, Kind::PRelu | Kind::Max | Kind::Min)
        && node.attr_int("broadcast", 0)? != 0;
    let legacy_axis = match (legacy, node.attr("axis")) {
        (true, Some(_)) => Some(node.attr_int("axis", 0)?),
        _ => None,
    };
    Ok(Box::new(Binary { kind, legacy_axis }))
}

/// NaN-propagating maximum (numpy `maximum`).
#[inline]
pub fn fmax_nan(a: f32, b: f32) -> f32 {
    if a >= b || a.is_nan() {
        a
    } else {
        b
    }
}

/// NaN-propagating minimum (numpy `minimum`).
#[inline]
pub fn fmin_nan(a: f32, b: f32) -> f32 {
    if a <= b || a.is_nan() {
        a
    } else {
        b
    }
}

/// Integer power as ONNX Runtime computes it (`pow` in double, truncated),
/// but exact: wrapping square-and-multiply; negative exponents give
/// `1/x^-e` truncated (0 unless x is 1 or -1; 0 for x = 0).
pub fn ipow(x: i64, e: i64) -> i64 {
    if e < 0 {
        return match x {
            1 => 1,
            -1 => {
                if e % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ => 0,
        };
    }
    let (mut base, mut e, mut acc) = (x, e as u64, 1i64);
    while e > 0 {
        if e & 1 == 1 {
            acc = acc.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        e >>= 1;
    }
    acc
}

/// `x ^ 0.5` with `pow`'s results at -0 (+0) and -inf (+inf).
#[inline]
fn pow_half(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        f32::INFINITY
    } else {
        x.sqrt() + 0.0
    }
}

/// Wraps integer results to the width of `dtype` (C semantics), in place.
fn wrap_ints(dtype: DType, v: &mut [i64]) {
    if !matches!(dtype, DType::I64 | DType::U64) {
        v.iter_mut().for_each(|x| *x = wrap_int(dtype, *x));
    }
}

fn float_tensor(dtype: DType, (s, v): (Vec<usize>, Vec<f32>)) -> Tensor {
    Tensor::from_float(dtype, s, v)
}

fn int_tensor(dtype: DType, (s, mut v): (Vec<usize>, Vec<i64>)) -> Tensor {
    wrap_ints(dtype, &mut v);
    Tensor::from_int(dtype, s, v)
}

fn bool_tensor((s, v): (Vec<usize>, Vec<bool>)) -> Tensor {
    Tensor::from_bool(s, v)
}

/// Maps `x` (shape `sh` broadcast to `out`) with `f`, for scalar second
/// operands.
fn map_to<T: Copy + Send + Sync, U: Send>(
    x: &[T],
    sh: &[usize],
    out: &[usize],
    f: impl Fn(T) -> U + Sync + Send,
) -> Result<(Vec<usize>, Vec<U>)> {
    let (_, v) = broadcast_map2(x, sh, &[()], &[], |a, _| f(a))?;
    Ok((out.to_vec(), v))
}

impl Binary {
    /// The shape the second input takes under legacy (opset < 7)
    /// broadcasting with an axis: its dimensions placed at `axis` of the
    /// first input's, padded with trailing ones.
    fn legacy_shape(&self, ash: &[usize], bsh: &[usize]) -> Result<Option<Vec<usize>>> {
        let Some(ax) = self.legacy_axis else {
            return Ok(None);
        };
        let r = ash.len() as i64;
        let a0 = if ax < 0 { ax + r } else { ax };
        if a0 < 0 || a0 + bsh.len() as i64 > r {
            return Err(op_error(format!(
                "legacy broadcast axis {ax} does not fit shapes {ash:?} and {bsh:?}"
            )));
        }
        let mut s = bsh.to_vec();
        s.resize((r - a0) as usize, 1);
        Ok(Some(s))
    }

    /// Reshapes a PRelu slope so that it broadcasts unidirectionally to `x`:
    /// numpy-style when possible, else a 1-D slope of length `C` is taken
    /// per channel (axis 1), as older exporters meant it.
    fn prelu_slope_shape(xsh: &[usize], ssh: &[usize]) -> Result<Vec<usize>> {
        if let Ok(s) = broadcast_shapes(&[xsh, ssh]) {
            if s == xsh {
                return Ok(ssh.to_vec());
            }
        }
        if ssh.len() == 1 && xsh.len() >= 2 && ssh[0] == xsh[1] {
            let mut s = vec![1; xsh.len() - 1];
            s[0] = ssh[0];
            return Ok(s);
        }
        Err(op_error(format!(
            "slope of shape {ssh:?} does not broadcast to the input shape {xsh:?}"
        )))
    }

    fn arith(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let dt = a.dtype();
        let (ash, bsh) = (a.shape(), b.shape());
        Ok(match (a.data(), b.data()) {
            (Data::F32(x), Data::F32(y)) => float_tensor(
                dt,
                match self.kind {
                    Kind::Add => broadcast_zip(x, ash, y, bsh, |p, q| p + q)?,
                    Kind::Sub => broadcast_zip(x, ash, y, bsh, |p, q| p - q)?,
                    Kind::Mul => broadcast_zip(x, ash, y, bsh, |p, q| p * q)?,
                    Kind::Div => broadcast_zip(x, ash, y, bsh, |p, q| p / q)?,
                    Kind::Max => broadcast_zip(x, ash, y, bsh, fmax_nan)?,
                    Kind::Min => broadcast_zip(x, ash, y, bsh, fmin_nan)?,
                    k => return Err(op_error(format!("internal: {k:?} is not arithmetic"))),
                },
            ),
            (Data::I64(x), Data::I64(y)) => {
                int_tensor(
                    dt,
                    match self.kind {
                        Kind::Add => broadcast_zip(x, ash, y, bsh, |p, q| p.wrapping_add(q))?,
                        Kind::Sub => broadcast_zip(x, ash, y, bsh, |p, q| p.wrapping_sub(q))?,
                        Kind::Mul => broadcast_zip(x, ash, y, bsh, |p, q| p.wrapping_mul(q))?,
                        Kind::Div => broadcast_zip(x, ash, y, bsh, |p, q| {
                            if q == 0 {
                                0
                            } else {
                                p.wrapping_div(q)
                            }
                        })?,
                        Kind::Max => broadcast_zip(x, ash, y, bsh, |p: i64, q| p.max(q))?,
                        Kind::Min => broadcast_zip(x, ash, y, bsh, |p: i64, q| p.min(q))?,
                        k => return Err(op_error(format!("internal: {k:?} is not arithmetic"))),
                    },
                )
            }
            _ => {
                return Err(op_error(format!(
                    "{:?} does not support input types {} and {}",
                    self.kind,
                    a.dtype(),
                    b.dtype()
                )))
            }
        })
    }

    fn pow(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let dt = a.dtype();
        let (ash, bsh) = (a.shape(), b.shape());
        let scalar_exp = if b.len() == 1 { b.scalar_f64() } else { None };
        Ok(match (a.data(), b.data()) {
            (Data::F32(x), Data::F32(_) | Data::I64(_)) if scalar_exp.is_some() => {
                let e = scalar_exp.unwrap_or(1.0);
                let out = broadcast_shapes(&[ash, bsh])?;
                let int_exp = matches!(b.data(), Data::I64(_));
                let r = if e == 2.0 {
                    map_to(x, ash, &out, |p| p * p)?
                } else if e == 1.0 {
                    map_to(x, ash, &out, |p| p)?
                } else if e == 0.5 {
                    map_to(x, ash, &out, pow_half)?
                } else if e == 3.0 && !int_exp {
                    map_to(x, ash, &out, |p| p * p * p)?
                } else if int_exp {
                    map_to(x, ash, &out, |p| (p as f64).powf(e) as f32)?
                } else {
                    let e = e as f32;
                    map_to(x, ash, &out, |p| p.powf(e))?
                };
                float_tensor(dt, r)
            }
            (Data::F32(x), Data::F32(y)) => {
                float_tensor(dt, broadcast_zip(x, ash, y, bsh, |p, q| p.powf(q))?)
            }
            (Data::F32(x), Data::I64(y)) => float_tensor(
                dt,
                broadcast_map2(x, ash, y, bsh, |p, q| (p as f64).powf(q as f64) as f32)?,
            ),
            (Data::I64(x), Data::I64(y)) => int_tensor(dt, broadcast_zip(x, ash, y, bsh, ipow)?),
            (Data::I64(x), Data::F32(y)) => int_tensor(
                dt,
                broadcast_map2(x, ash, y, bsh, |p, q| (p as f64).powf(q as f64) as i64)?,
            ),
            _ => {
                return Err(op_error(format!(
                    "Pow does not support input types {} and {}",
                    a.dtype(),
                    b.dtype()
                )))
            }
        })
    }

    fn prelu(&self, x: &Tensor, s: &Tensor) -> Result<Tensor> {
        let ssh = Self::prelu_slope_shape(x.shape(), s.shape())?;
        let dt = x.dtype();
        Ok(match (x.data(), s.data()) {
            (Data::F32(x_), Data::F32(s_)) => float_tensor(
                dt,
                broadcast_zip(
                    x_,
                    x.shape(),
                    s_,
                    &ssh,
                    |p, q| if p < 0.0 { p * q } else { p },
                )?,
            ),
            (Data::I64(x_), Data::I64(s_)) => int_tensor(
                dt,
                broadcast_zip(x_, x.shape(), s_, &ssh, |p, q| {
                    if p < 0 {
                        p.wrapping_mul(q)
                    } else {
                        p
                    }
                })?,
            ),
            _ => {
                return Err(op_error(format!(
                    "PRelu does not support input types {} and {}",
                    x.dtype(),
                    s.dtype()
                )))
            }
        })
    }

    fn compare(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (ash, bsh) = (a.shape(), b.shape());
        Ok(bool_tensor(match (self.kind, a.data(), b.data()) {
            (Kind::Equal, Data::F32(x), Data::F32(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p == q)?
            }
            (Kind::Equal, Data::I64(x), Data::I64(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p == q)?
            }
            (Kind::Equal, Data::Bool(x), Data::Bool(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p == q)?
            }
            (Kind::Greater, Data::F32(x), Data::F32(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p > q)?
            }
            (Kind::Greater, Data::I64(x), Data::I64(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p > q)?
            }
            (Kind::Less, Data::F32(x), Data::F32(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p < q)?
            }
            (Kind::Less, Data::I64(x), Data::I64(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p < q)?
            }
            (Kind::GreaterOrEqual, Data::F32(x), Data::F32(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p >= q)?
            }
            (Kind::GreaterOrEqual, Data::I64(x), Data::I64(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p >= q)?
            }
            (Kind::LessOrEqual, Data::F32(x), Data::F32(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p <= q)?
            }
            (Kind::LessOrEqual, Data::I64(x), Data::I64(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p <= q)?
            }
            (Kind::And, Data::Bool(x), Data::Bool(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p && q)?
            }
            (Kind::Or, Data::Bool(x), Data::Bool(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p || q)?
            }
            (Kind::Xor, Data::Bool(x), Data::Bool(y)) => {
                broadcast_zip(x, ash, y, bsh, |p, q| p ^ q)?
            }
            _ => {
                return Err(op_error(format!(
                    "{:?} does not support input types {} and {}",
                    self.kind,
                    a.dtype(),
                    b.dtype()
                )))
            }
        }))
    }

    fn is_variadic(&self) -> bool {
        matches!(self.kind, Kind::Max | Kind::Min)
    }

    /// Checks the input count and that the inputs' types agree; returns the
    /// present inputs' dtypes.
    fn check_types(&self, dtypes: &[Option<DType>]) -> Result<()> {
        if self.is_variadic() {
            if dtypes.is_empty() {
                return Err(op_error(format!(
                    "{:?} needs at least one input",
                    self.kind
                )));
            }
        } else if dtypes.len() != 2 {
            return Err(op_error(format!(
                "{:?} takes 2 inputs, got {}",
                self.kind,
                dtypes.len()
            )));
        }
        let dts: Vec<DType> = dtypes
            .iter()
            .enumerate()
            .map(|(i, d)| d.ok_or_else(|| op_error(format!("required input {i} is missing"))))
            .collect::<Result<_>>()?;
        let first = dts[0];
        let ok_type = match self.kind {
            Kind::Equal => first.storage() != crate::ir::Storage::None,
            Kind::And | Kind::Or | Kind::Xor => first == DType::Bool,
            _ => first.is_float() || first.storage() == crate::ir::Storage::Int,
        };
        if !ok_type {
            return Err(op_error(format!(
                "{:?} does not support input type {first}",
                self.kind
            )));
        }
        if self.kind == Kind::Pow {
            let e = dts[1];
            if !(e.is_float() || e.storage() == crate::ir::Storage::Int) {
                return Err(op_error(format!("Pow does not support exponent type {e}")));
            }
        } else if let Some(d) = dts.iter().find(|&&d| d != first) {
            return Err(op_error(format!("input types differ: {first} and {d}")));
        }
        Ok(())
    }
}

impl Op for Binary {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        if self.legacy_axis.is_some() {
            return None;
        }
        cx.elementwise(1)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        self.check_types(
            &inputs
                .iter()
                .map(|f| f.map(|f| f.dtype))
                .collect::<Vec<_>>(),
        )?;
        let a = fact(inputs, 0)?;
        if self.kind == Kind::PRelu {
            let b = fact(inputs, 1)?;
            Self::prelu_slope_shape(&a.shape, &b.shape)?;
            return Ok(vec![Fact::new(a.dtype, a.shape.clone())]);
        }
        let mut shapes: Vec<Vec<usize>> =
            inputs.iter().flatten().map(|f| f.shape.clone()).collect();
        if shapes.len() == 2 {
            if let Some(s) = self.legacy_shape(&shapes[0], &shapes[1])? {
                shapes[1] = s;
            }
        }
        let shape = broadcast_shapes(&shapes.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
        let dtype = match self.kind {
            Kind::Equal
            | Kind::Greater
            | Kind::Less
            | Kind::GreaterOrEqual
            | Kind::LessOrEqual
            | Kind::And
            | Kind::Or
            | Kind::Xor => DType::Bool,
            _ => a.dtype,
        };
        Ok(vec![Fact::new(dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        self.check_types(
            &inputs
                .iter()
                .map(|t| t.map(|t| t.dtype()))
                .collect::<Vec<_>>(),
        )?;
        let a = input(inputs, 0)?;
        let reshaped;
        let b = match self.legacy_axis {
            Some(_) if !self.is_variadic() => {
                let b = input(inputs, 1)?;
                match self.legacy_shape(a.shape(), b.shape())? {
                    Some(s) => {
                        reshaped = b.clone().reshaped(s)?;
                        Some(&reshaped)
                    }
                    None => Some(b),
                }
            }
            _ => inputs.get(1).copied().flatten(),
        };
        let b = || b.ok_or_else(|| op_error("required input 1 is missing"));
        let out = match self.kind {
            Kind::Add | Kind::Sub | Kind::Mul | Kind::Div => self.arith(a, b()?)?,
            Kind::Pow => self.pow(a, b()?)?,
            Kind::PRelu => self.prelu(a, b()?)?,
            Kind::Equal
            | Kind::Greater
            | Kind::Less
            | Kind::GreaterOrEqual
            | Kind::LessOrEqual
            | Kind::And
            | Kind::Or
            | Kind::Xor => self.compare(a, b()?)?,
            Kind::Max | Kind::Min => {
                if inputs.len() == 1 {
                    a.clone()
                } else {
                    let mut acc = self.arith(a, input(inputs, 1)?)?;
                    for i in 2..inputs.len() {
                        acc = self.arith(&acc, input(inputs, i)?)?;
                    }
                    acc
                }
            }
        };
        Ok(vec![out])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute};
    use crate::ops::common::broadcast_index_map;

    fn op(name: &str) -> Box<dyn Op> {
        build(&Node::new("n", name, &["a", "b"], &["y"], vec![]), 17).unwrap()
    }

    fn run(name: &str, ins: &[&Tensor]) -> Result<Tensor> {
        let args: Vec<Option<&Tensor>> = ins.iter().map(|t| Some(*t)).collect();
        op(name).eval(&args).map(|mut v| v.remove(0))
    }

    fn f(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec())
    }

    #[test]
    fn or_equal_comparisons_and_boolean_logic() {
        let x = f(&[3], &[1.0, 2.0, 3.0]);
        let y = f(&[1], &[2.0]);
        assert_eq!(
            run("GreaterOrEqual", &[&x, &y]).unwrap().bools().unwrap(),
            &[false, true, true]
        );
        assert_eq!(
            run("LessOrEqual", &[&x, &y]).unwrap().bools().unwrap(),
            &[true, true, false]
        );
        let i = Tensor::from_i64(vec![2], vec![5, -1]);
        let j = Tensor::from_i64(vec![2], vec![5, 0]);
        assert_eq!(
            run("GreaterOrEqual", &[&i, &j]).unwrap().bools().unwrap(),
            &[true, false]
        );
        let a = Tensor::from_bool(vec![2, 2], vec![true, true, false, false]);
        let b = Tensor::from_bool(vec![2], vec![true, false]);
        assert_eq!(
            run("And", &[&a, &b]).unwrap().bools().unwrap(),
            &[true, false, false, false]
        );
        assert_eq!(
            run("Or", &[&a, &b]).unwrap().bools().unwrap(),
            &[true, true, true, false]
        );
        assert_eq!(
            run("Xor", &[&a, &b]).unwrap().bools().unwrap(),
            &[false, true, true, false]
        );
        assert!(run("And", &[&x, &y]).is_err());
    }

    fn i(shape: &[usize], v: &[i64]) -> Tensor {
        Tensor::from_i64(shape.to_vec(), v.to_vec())
    }

    fn b(shape: &[usize], v: &[bool]) -> Tensor {
        Tensor::from_bool(shape.to_vec(), v.to_vec())
    }

    /// Deterministic xorshift generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A shape that broadcasts to `out`: leading dims maybe dropped, others
    /// maybe set to 1.
    fn sub_shape(r: &mut Rng, out: &[usize]) -> Vec<usize> {
        let drop = r.below(out.len() + 1);
        out[drop..]
            .iter()
            .map(|&d| if r.below(3) == 0 { 1 } else { d })
            .collect()
    }

    fn iota(n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|k| k as f32 * scale + 0.25).collect()
    }

    /// The slow reference: index maps.
    fn slow2(a: &[f32], ash: &[usize], b: &[f32], bsh: &[usize]) -> (Vec<usize>, Vec<f32>) {
        let out = broadcast_shapes(&[ash, bsh]).unwrap();
        let (ia, ib) = (
            broadcast_index_map(ash, &out),
            broadcast_index_map(bsh, &out),
        );
        (
            out,
            ia.iter()
                .zip(&ib)
                .map(|(&p, &q)| a[p] * 1000.0 + b[q])
                .collect(),
        )
    }

    fn check2(ash: &[usize], bsh: &[usize]) {
        let a = iota(numel(ash), 1.0);
        let b = iota(numel(bsh), -0.5);
        let (s, v) = broadcast_zip(&a, ash, &b, bsh, |x, y| x * 1000.0 + y).unwrap();
        let (rs, rv) = slow2(&a, ash, &b, bsh);
        assert_eq!(s, rs, "{ash:?} {bsh:?}");
        assert_eq!(v, rv, "{ash:?} {bsh:?}");
    }

    #[test]
    fn broadcast_random_shapes_match_index_maps() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..400 {
            let rank = r.below(6);
            let out: Vec<usize> = (0..rank).map(|_| [1, 2, 3, 5, 7][r.below(5)]).collect();
            let (x, y) = (sub_shape(&mut r, &out), sub_shape(&mut r, &out));
            check2(&x, &y);
            check2(&y, &x);
            check2(&x, &out);
            check2(&out, &y);
        }
    }

    #[test]
    fn broadcast_common_patterns_large_parallel() {
        // Per-channel, row, attention-mask, column and scalar broadcasts,
        // large enough for the parallel path (chunks split inner blocks).
        check2(&[2, 64, 17, 19], &[1, 64, 1, 1]);
        check2(&[2, 64, 17, 19], &[64, 1, 1]);
        check2(&[4, 33, 257], &[257]);
        check2(&[257], &[4, 33, 257]);
        check2(&[3, 1, 1, 61], &[3, 8, 61, 61]);
        check2(&[3, 8, 61, 61], &[3, 1, 61, 1]);
        check2(&[300, 130], &[300, 1]);
        check2(&[300, 1], &[1, 130]);
        check2(&[40000], &[1]);
        check2(&[1, 1], &[200, 201]);
        check2(&[200, 201], &[200, 201]);
        check2(&[5, 1, 7000], &[1, 6, 1]);
    }

    #[test]
    fn broadcast_zip3_matches_index_maps() {
        let mut r = Rng(12345);
        let mut shapes: Vec<[Vec<usize>; 3]> = Vec::new();
        for _ in 0..300 {
            let rank = r.below(5);
            let out: Vec<usize> = (0..rank).map(|_| [1, 2, 3, 4][r.below(4)]).collect();
            shapes.push([
                sub_shape(&mut r, &out),
                sub_shape(&mut r, &out),
                sub_shape(&mut r, &out),
            ]);
        }
        shapes.push([vec![2, 1, 100, 100], vec![2, 4, 100, 100], vec![]]);
        shapes.push([vec![1, 1, 100, 100], vec![], vec![2, 4, 100, 100]]);
        for [sa, sb, sc] in &shapes {
            let c: Vec<bool> = (0..numel(sa)).map(|k| k % 3 == 0).collect();
            let x = iota(numel(sb), 1.0);
            let y = iota(numel(sc), -1.0);
            let (s, v) =
                broadcast_zip3(&c, sa, &x, sb, &y, sc, |k, p, q| if k { p } else { q }).unwrap();
            let out = broadcast_shapes(&[sa, sb, sc]).unwrap();
            let (ia, ib, ic) = (
                broadcast_index_map(sa, &out),
                broadcast_index_map(sb, &out),
                broadcast_index_map(sc, &out),
            );
            let want: Vec<f32> = (0..ia.len())
                .map(|k| if c[ia[k]] { x[ib[k]] } else { y[ic[k]] })
                .collect();
            assert_eq!(s, out);
            assert_eq!(v, want, "{sa:?} {sb:?} {sc:?}");
        }
    }

    #[test]
    fn broadcast_errors_and_empty() {
        assert!(broadcast_zip(&[1.0f32; 6], &[2, 3], &[1.0; 4], &[4], |x, y| x + y).is_err());
        // Data length not matching the shape: error, not panic.
        assert!(broadcast_zip(&[1.0f32; 5], &[2, 3], &[1.0; 3], &[3], |x, y| x + y).is_err());
        let (s, v) =
            broadcast_zip(&[] as &[f32], &[0, 3], &[1.0, 2.0, 3.0], &[3], |x, y| x + y).unwrap();
        assert_eq!(s, vec![0, 3]);
        assert!(v.is_empty());
        let (s, v) = broadcast_zip(&[2.0f32], &[], &[3.0], &[1, 1], |x, y| x * y).unwrap();
        assert_eq!((s, v), (vec![1, 1], vec![6.0]));
        assert!(run("Add", &[&f(&[2, 3], &[0.0; 6]), &f(&[2], &[0.0; 2])]).is_err());
        assert!(run("Add", &[&f(&[2], &[0.0; 2]), &i(&[2], &[0; 2])]).is_err());
        assert!(op("Add").eval(&[Some(&f(&[1], &[0.0])), None]).is_err());
        assert!(op("Add").eval(&[Some(&f(&[1], &[0.0]))]).is_err());
        let a = Fact::new(DType::F32, vec![2, 3]);
        let c = Fact::new(DType::F32, vec![4, 1]);
        assert!(op("Mul").infer(&[Some(&a), Some(&c)]).is_err());
        // Absurd outputs give errors, not aborts (zero-sized inputs cost
        // nothing to hold).
        let big = vec![(); 1 << 40];
        let r = broadcast_zip(&big, &[1 << 40, 1], &big, &[1, 1 << 40], |_, _| 0.0f32);
        assert!(r.is_err());
        let (x, y) = (vec![(); 1 << 20], vec![(); 1 << 30]);
        let r = broadcast_zip(&x, &[1 << 20, 1], &y, &[1, 1 << 30], |_, _| 0.0f32);
        assert!(r.is_err());
    }

    #[test]
    fn arithmetic_float_and_int() {
        let a = f(&[2, 2], &[1.0, -2.0, 3.5, 8.0]);
        let c = f(&[2], &[2.0, -4.0]);
        assert_eq!(
            run("Add", &[&a, &c]).unwrap(),
            f(&[2, 2], &[3.0, -6.0, 5.5, 4.0])
        );
        assert_eq!(
            run("Sub", &[&a, &c]).unwrap(),
            f(&[2, 2], &[-1.0, 2.0, 1.5, 12.0])
        );
        assert_eq!(
            run("Mul", &[&a, &c]).unwrap(),
            f(&[2, 2], &[2.0, 8.0, 7.0, -32.0])
        );
        assert_eq!(
            run("Div", &[&a, &c]).unwrap(),
            f(&[2, 2], &[0.5, 0.5, 1.75, -2.0])
        );
        let x = i(&[4], &[7, -7, 7, 5]);
        let y = i(&[4], &[2, 2, -2, 0]);
        assert_eq!(run("Div", &[&x, &y]).unwrap(), i(&[4], &[3, -3, -3, 0]));
        assert_eq!(
            run("Mul", &[&x, &i(&[], &[3])]).unwrap(),
            i(&[4], &[21, -21, 21, 15])
        );
        assert_eq!(
            run("Sub", &[&i(&[1], &[10]), &x]).unwrap(),
            i(&[4], &[3, 17, 3, 5])
        );
        // i32 results wrap like C.
        let big = Tensor::from_int(DType::I32, vec![2], vec![i32::MAX as i64, 5]);
        let one = Tensor::from_int(DType::I32, vec![1], vec![1]);
        let r = run("Add", &[&big, &one]).unwrap();
        assert_eq!(r.dtype(), DType::I32);
        assert_eq!(r.i64s().unwrap(), &[i32::MIN as i64, 6]);
        // f16 dtype is kept.
        let h = Tensor::from_float(DType::F16, vec![1], vec![1.5]);
        assert_eq!(run("Add", &[&h, &h]).unwrap().dtype(), DType::F16);
        let fa = Fact::new(DType::I64, vec![3, 1]);
        let fb = Fact::new(DType::I64, vec![4]);
        let o = op("Add").infer(&[Some(&fa), Some(&fb)]).unwrap();
        assert_eq!((o[0].dtype, o[0].shape.clone()), (DType::I64, vec![3, 4]));
    }

    #[test]
    fn legacy_axis_broadcast() {
        let node = Node::new(
            "n",
            "Add",
            &["a", "b"],
            &["y"],
            vec![
                Attribute::new("broadcast", AttrValue::Int(1)),
                Attribute::new("axis", AttrValue::Int(1)),
            ],
        );
        let o = build(&node, 6).unwrap();
        let a = f(&[2, 3, 2], &[0.0; 12]);
        let c = f(&[3], &[1.0, 2.0, 3.0]);
        let r = o.eval(&[Some(&a), Some(&c)]).unwrap().remove(0);
        assert_eq!(
            r,
            f(
                &[2, 3, 2],
                &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
            )
        );
        let fa = Fact::new(DType::F32, vec![2, 3, 2]);
        let fc = Fact::new(DType::F32, vec![3]);
        assert_eq!(
            o.infer(&[Some(&fa), Some(&fc)]).unwrap()[0].shape,
            vec![2, 3, 2]
        );
        let bad = f(&[3, 2, 2], &[0.0; 12]);
        assert!(o.eval(&[Some(&a), Some(&bad)]).is_err());
        // From opset 7 the attributes are ignored: numpy broadcasting.
        let o7 = build(&node, 7).unwrap();
        assert!(o7.eval(&[Some(&a), Some(&c)]).is_err());
    }

    #[test]
    fn pow_paths() {
        let x = f(&[5], &[2.0, -3.0, 0.5, 4.0, -0.0]);
        let sq = run("Pow", &[&x, &f(&[], &[2.0])]).unwrap();
        assert_eq!(sq, f(&[5], &[4.0, 9.0, 0.25, 16.0, 0.0]));
        let sq = run("Pow", &[&x, &i(&[1, 1], &[2])]).unwrap();
        assert_eq!(sq, f(&[1, 5], &[4.0, 9.0, 0.25, 16.0, 0.0]));
        let r = run("Pow", &[&x, &f(&[1], &[0.5])]).unwrap();
        let r = r.f32s().unwrap();
        assert_eq!(r[0], 2f32.sqrt());
        assert!(r[1].is_nan());
        assert_eq!((r[2], r[3]), (0.5f32.sqrt(), 2.0));
        assert!(r[4] == 0.0 && r[4].is_sign_positive());
        assert_eq!(
            run("Pow", &[&f(&[1], &[f32::NEG_INFINITY]), &f(&[1], &[0.5])]).unwrap(),
            f(&[1], &[f32::INFINITY])
        );
        assert_eq!(
            run("Pow", &[&x, &f(&[], &[3.0])]).unwrap(),
            f(&[5], &[8.0, -27.0, 0.125, 64.0, -0.0])
        );
        assert_eq!(run("Pow", &[&x, &f(&[], &[1.0])]).unwrap(), x);
        let r = run("Pow", &[&f(&[2], &[2.0, 9.0]), &f(&[2], &[-1.5, 1.5])]).unwrap();
        let r = r.f32s().unwrap();
        assert!((r[0] - 0.353_553_4).abs() < 1e-6 && (r[1] - 27.0).abs() < 1e-5);
        let r = run("Pow", &[&f(&[2], &[2.0, 8.0]), &f(&[], &[1.0 / 3.0])]).unwrap();
        assert!((r.f32s().unwrap()[1] - 2.0).abs() < 1e-6);
        let r = run(
            "Pow",
            &[&f(&[3], &[2.0, -2.0, 10.0]), &i(&[3], &[-2, 3, 0])],
        )
        .unwrap();
        assert_eq!(r, f(&[3], &[0.25, -8.0, 1.0]));
        let r = run(
            "Pow",
            &[
                &i(&[6], &[2, -3, 5, 1, -1, 2]),
                &i(&[6], &[10, 3, 0, -4, -3, -1]),
            ],
        )
        .unwrap();
        assert_eq!(r, i(&[6], &[1024, -27, 1, 1, -1, 0]));
        let r = run("Pow", &[&i(&[2], &[4, 9]), &f(&[1], &[0.5])]).unwrap();
        assert_eq!(r, i(&[2], &[2, 3]));
        assert!(run("Pow", &[&b(&[1], &[true]), &f(&[1], &[0.5])]).is_err());
        assert!(run("Pow", &[&f(&[2], &[1.0, 2.0]), &f(&[3], &[1.0, 2.0, 3.0])]).is_err());
        assert_eq!(ipow(3, 40), 3i64.wrapping_pow(40));
    }

    #[test]
    fn prelu_slopes() {
        let x = f(&[1, 2, 1, 2], &[-1.0, 2.0, -3.0, 4.0]);
        let per_c = f(&[2, 1, 1], &[0.1, 0.5]);
        let want = f(&[1, 2, 1, 2], &[-0.1, 2.0, -1.5, 4.0]);
        assert_eq!(run("PRelu", &[&x, &per_c]).unwrap(), want);
        // 1-D slope of length C taken per channel when it does not
        // broadcast numpy-style (W = 3 here).
        let x3 = f(&[1, 2, 1, 3], &[-1.0, -1.0, 1.0, -2.0, 2.0, -2.0]);
        let r = run("PRelu", &[&x3, &f(&[2], &[0.1, 0.5])]).unwrap();
        assert_eq!(r, f(&[1, 2, 1, 3], &[-0.1, -0.1, 1.0, -1.0, 2.0, -1.0]));
        // ... but numpy-style when it does (last axis).
        let r = run("PRelu", &[&x, &f(&[2], &[0.1, 0.5])]).unwrap();
        assert_eq!(r, f(&[1, 2, 1, 2], &[-0.1, 2.0, -0.3, 4.0]));
        let r = run("PRelu", &[&x, &f(&[1], &[0.25])]).unwrap();
        assert_eq!(r, f(&[1, 2, 1, 2], &[-0.25, 2.0, -0.75, 4.0]));
        let r = run("PRelu", &[&i(&[3], &[-4, 0, 5]), &i(&[1], &[3])]).unwrap();
        assert_eq!(r, i(&[3], &[-12, 0, 5]));
        // Slope must not enlarge X.
        assert!(run("PRelu", &[&f(&[2], &[1.0, -1.0]), &f(&[3, 1], &[1.0; 3])]).is_err());
        assert!(run("PRelu", &[&x, &f(&[3], &[1.0; 3])]).is_err());
        let fx = Fact::new(DType::F32, vec![1, 2, 1, 2]);
        let fs = Fact::new(DType::F32, vec![2, 1, 1]);
        assert_eq!(
            op("PRelu").infer(&[Some(&fx), Some(&fs)]).unwrap()[0].shape,
            vec![1, 2, 1, 2]
        );
        let fs = Fact::new(DType::F32, vec![5, 1, 1]);
        assert!(op("PRelu").infer(&[Some(&fx), Some(&fs)]).is_err());
    }

    #[test]
    fn comparisons() {
        let x = f(&[2, 2], &[1.0, 2.0, f32::NAN, 4.0]);
        let y = f(&[2], &[1.0, 3.0]);
        assert_eq!(
            run("Equal", &[&x, &y]).unwrap(),
            b(&[2, 2], &[true, false, false, false])
        );
        assert_eq!(
            run("Greater", &[&x, &y]).unwrap(),
            b(&[2, 2], &[false, false, false, true])
        );
        assert_eq!(
            run("Less", &[&x, &y]).unwrap(),
            b(&[2, 2], &[false, true, false, false])
        );
        let p = i(&[3], &[1, 5, -2]);
        let q = i(&[], &[1]);
        assert_eq!(
            run("Equal", &[&p, &q]).unwrap(),
            b(&[3], &[true, false, false])
        );
        assert_eq!(
            run("Greater", &[&p, &q]).unwrap(),
            b(&[3], &[false, true, false])
        );
        assert_eq!(
            run("Less", &[&q, &p]).unwrap(),
            b(&[3], &[false, true, false])
        );
        let u = b(&[2], &[true, false]);
        let v = b(&[2, 1], &[true, false]);
        assert_eq!(
            run("Equal", &[&u, &v]).unwrap(),
            b(&[2, 2], &[true, false, false, true])
        );
        assert!(run("Greater", &[&u, &v]).is_err());
        assert!(run("Equal", &[&p, &x]).is_err());
        let fa = Fact::new(DType::I64, vec![3]);
        assert_eq!(
            op("Less").infer(&[Some(&fa), Some(&fa)]).unwrap()[0].dtype,
            DType::Bool
        );
    }

    #[test]
    fn variadic_max_min() {
        let mk = |k: usize| {
            Node::new(
                "n",
                if k == 0 { "Max" } else { "Min" },
                &["a", "b", "c"],
                &["y"],
                vec![],
            )
        };
        let (mx, mn) = (build(&mk(0), 13).unwrap(), build(&mk(1), 13).unwrap());
        let a = f(&[2, 1], &[1.0, 5.0]);
        let c = f(&[3], &[0.0, 3.0, f32::NAN]);
        let d = f(&[], &[2.0]);
        let r = mx.eval(&[Some(&a), Some(&c), Some(&d)]).unwrap().remove(0);
        let r = r.f32s().unwrap().to_vec();
        assert_eq!(&r[..2], &[2.0, 3.0]);
        assert!(r[2].is_nan());
        assert_eq!(&r[3..5], &[5.0, 5.0]);
        assert!(r[5].is_nan());
        let r = mn.eval(&[Some(&a), Some(&c), Some(&d)]).unwrap().remove(0);
        let r = r.f32s().unwrap().to_vec();
        assert_eq!(&r[..2], &[0.0, 1.0]);
        assert_eq!(&r[3..5], &[0.0, 2.0]);
        assert!(r[5].is_nan());
        // NaN in the first operand too.
        assert!(fmax_nan(f32::NAN, 1.0).is_nan() && fmin_nan(f32::NAN, 1.0).is_nan());
        // One input: a copy.
        assert_eq!(mx.eval(&[Some(&a)]).unwrap().remove(0), a);
        let r = mn
            .eval(&[Some(&i(&[3], &[4, -1, 7])), Some(&i(&[1], &[3]))])
            .unwrap()
            .remove(0);
        assert_eq!(r, i(&[3], &[3, -1, 3]));
        assert!(mx.eval(&[]).is_err());
        assert!(mx.eval(&[Some(&a), None]).is_err());
        assert!(mx.eval(&[Some(&a), Some(&i(&[1], &[1]))]).is_err());
        assert!(mx.eval(&[Some(&a), Some(&f(&[3, 4], &[0.0; 12]))]).is_err());
        assert!(mx.eval(&[Some(&b(&[1], &[true]))]).is_err());
        let fa = Fact::new(DType::F32, vec![2, 1]);
        let fc = Fact::new(DType::F32, vec![3]);
        let fd = Fact::new(DType::F32, vec![]);
        assert_eq!(
            mx.infer(&[Some(&fa), Some(&fc), Some(&fd)]).unwrap()[0].shape,
            vec![2, 3]
        );
        assert_eq!(mx.infer(&[Some(&fa)]).unwrap()[0].shape, vec![2, 1]);
    }
}
