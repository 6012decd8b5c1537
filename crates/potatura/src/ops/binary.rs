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
    let n = numel(&out_shape);
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
    Ok(Plan { out_shape, n, outer: dims, outer_strides: strs, inner, inner_strides })
}

/// Fills `out` (the output elements `start..start + out.len()`) block by
/// block: `kernel(block, offsets, strides)` gets each input's offset at the
/// block start and its stride (0 or 1) inside the block.
fn run_range<const K: usize, U>(
    p: &Plan<K>,
    start: usize,
    out: &mut [MaybeUninit<U>],
    kernel: &(impl Fn(&mut [MaybeUninit<U>], [usize; K], [usize; K]) + Sync),
) {
    let r = p.outer.len();
    let mut idx = vec![0usize; r];
    let mut base = [0usize; K];
    let mut rem = start / p.inner;
    let mut j = start % p.inner;
    for ax in (0..r).rev() {
        idx[ax] = rem % p.outer[ax];
        rem /= p.outer[ax];
        for k in 0..K {
            base[k] += idx[ax] * p.outer_strides[ax][k];
        }
    }
    let mut pos = 0;
    while pos < out.len() {
        let len = (p.inner - j).min(out.len() - pos);
        let offs: [usize; K] = std::array::from_fn(|k| base[k] + j * p.inner_strides[k]);
        kernel(&mut out[pos..pos + len], offs, p.inner_strides);
        pos += len;
        j = 0;
        for ax in (0..r).rev() {
            idx[ax] += 1;
            for k in 0..K {
                base[k] += p.outer_strides[ax][k];
            }
            if idx[ax] < p.outer[ax] {
                break;
            }
            for k in 0..K {
                base[k] -= p.outer_strides[ax][k] * p.outer[ax];
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
) -> Vec<U> {
    let n = p.n;
    let mut out: Vec<U> = Vec::with_capacity(n);
    {
        let spare = &mut out.spare_capacity_mut()[..n];
        if n >= PAR_THRESHOLD {
            let chunk = (n / (rayon::current_num_threads() * 4)).max(PAR_THRESHOLD / 4);
            spare.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| run_range(p, i * chunk, c, &kernel));
        } else if n > 0 {
            run_range(p, 0, spare, &kernel);
        }
    }
    // SAFETY: run_range hands every element of `spare[..n]` to exactly one
    // kernel call, and the caller guarantees the kernel initialises it.
    unsafe { out.set_len(n) };
    out
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
fn block2<A: Copy, B: Copy, U>(o: &mut [MaybeUninit<U>], a: Src<'_, A>, b: Src<'_, B>, f: &impl Fn(A, B) -> U) {
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
        block2(o, src(a, off[0], st[0], len), src(b, off[1], st[1], len), &f);
    };
    // SAFETY: block2 writes every element of the block.
    let v = unsafe { run_plan(&p, kernel) };
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
pub fn broadcast_zip3<A: Copy + Send + Sync, B: Copy + Send + Sync, C: Copy + Send + Sync, U: Send>(
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
        block3(o, src(a, off[0], st[0], len), src(b, off[1], st[1], len), src(c, off[2], st[2], len), &f);
    };
    // SAFETY: block3 writes every element of the block.
    let v = unsafe { run_plan(&p, kernel) };
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
        "Max" => Kind::Max,
        "Min" => Kind::Min,
        o => return Err(op_error(format!("binary::build called for {o}"))),
    };
    let legacy = opset < 7 && !matches!(kind, Kind::PRelu | Kind::Max | Kind::Min) && node.attr_int("broadcast", 0)? != 0;
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
fn map_to<T: Copy + Send + Sync, U: Send>(x: &[T], sh: &[usize], out: &[usize], f: impl Fn(T) -> U + Sync + Send) -> Result<(Vec<usize>, Vec<U>)> {
    let (_, v) = broadcast_map2(x, sh, &[()], &[], |a, _| f(a))?;
    Ok((out.to_vec(), v))
}

impl Binary {
    /// The shape the second input takes under legacy (opset < 7)
    /// broadcasting with an axis: its dimensions placed at `axis` of the
    /// first input's, padded with trailing ones.
    fn legacy_shape(&self, ash: &[usize], bsh: &[usize]) -> Result<Option<Vec<usize>>> {
        let Some(ax) = self.legacy_axis else { return Ok(None) };
        let r = ash.len() as i64;
        let a0 = if ax < 0 { ax + r } else { ax };
        if a0 < 0 || a0 + bsh.len() as i64 > r {
            return Err(op_error(format!("legacy broadcast axis {ax} does not fit shapes {ash:?} and {bsh:?}")));
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
        Err(op_error(format!("slope of shape {ssh:?} does not broadcast to the input shape {xsh:?}")))
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
            (Data::I64(x), Data::I64(y)) => int_tensor(
                dt,
                match self.kind {
                    Kind::Add => broadcast_zip(x, ash, y, bsh, |p, q| p.wrapping_add(q))?,
                    Kind::Sub => broadcast_zip(x, ash, y, bsh, |p, q| p.wrapping_sub(q))?,
                    Kind::Mul => broadcast_zip(x, ash, y, bsh, |p, q| p.wrapping_mul(q))?,
                    Kind::Div => broadcast_zip(x, ash, y, bsh, |p, q| if q == 0 { 0 } else { p.wrapping_div(q) })?,
                    Kind::Max => broadcast_zip(x, ash, y, bsh, |p: i64, q| p.max(q))?,
                    Kind::Min => broadcast_zip(x, ash, y, bsh, |p: i64, q| p.min(q))?,
                    k => return Err(op_error(format!("internal: {k:?} is not arithmetic"))),
                },
            ),
            _ => return Err(op_error(format!("{:?} does not support input types {} and {}", self.kind, a.dtype(), b.dtype()))),
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
            (Data::F32(x), Data::F32(y)) => float_tensor(dt, broadcast_zip(x, ash, y, bsh, |p, q| p.powf(q))?),
            (Data::F32(x), Data::I64(y)) => {
                float_tensor(dt, broadcast_map2(x, ash, y, bsh, |p, q| (p as f64).powf(q as f64) as f32)?)
            }
            (Data::I64(x), Data::I64(y)) => int_tensor(dt, broadcast_zip(x, ash, y, bsh, ipow)?),
            (Data::I64(x), Data::F32(y)) => {
                int_tensor(dt, broadcast_map2(x, ash, y, bsh, |p, q| (p as f64).powf(q as f64) as i64)?)
            }
            _ => return Err(op_error(format!("Pow does not support input types {} and {}", a.dtype(), b.dtype()))),
        })
    }

    fn prelu(&self, x: &Tensor, s: &Tensor) -> Result<Tensor> {
        let ssh = Self::prelu_slope_shape(x.shape(), s.shape())?;
        let dt = x.dtype();
        Ok(match (x.data(), s.data()) {
            (Data::F32(x_), Data::F32(s_)) => {
                float_tensor(dt, broadcast_zip(x_, x.shape(), s_, &ssh, |p, q| if p < 0.0 { p * q } else { p })?)
            }
            (Data::I64(x_), Data::I64(s_)) => {
                int_tensor(dt, broadcast_zip(x_, x.shape(), s_, &ssh, |p, q| if p < 0 { p.wrapping_mul(q) } else { p })?)
            }
            _ => return Err(op_error(format!("PRelu does not support input types {} and {}", x.dtype(), s.dtype()))),
        })
    }

    fn compare(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (ash, bsh) = (a.shape(), b.shape());
        Ok(bool_tensor(match (self.kind, a.data(), b.data()) {
            (Kind::Equal, Data::F32(x), Data::F32(y)) => broadcast_zip(x, ash, y, bsh, |p, q| p == q)?,
            (Kind::Equal, Data::I64(x), Data::I64(y)) => broadcast_zip(x, ash, y, bsh, |p, q| p == q)?,
            (Kind::Equal, Data::Bool(x), Data::Bool(y)) => broadcast_zip(x, ash, y, bsh, |p, q| p == q)?,
            (Kind::Greater, Data::F32(x), Data::F32(y)) => broadcast_zip(x, ash, y, bsh, |p, q| p > q)?,
            (Kind::Greater, Data::I64(x), Data::I64(y)) => broadcast_zip(x, ash, y, bsh, |p, q| p > q)?,
            (Kind::Less, Data::F32(x), Data::F32(y)) => broadcast_zip(x, ash, y, bsh, |p, q| p < q)?,
            (Kind::Less, Data::I64(x), Data::I64(y)) => broadcast_zip(x, ash, y, bsh, |p, q| p < q)?,
            _ => return Err(op_error(format!("{:?} does not support input types {} and {}", self.kind, a.dtype(), b.dtype()))),
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
                return Err(op_error(format!("{:?} needs at least one input", self.kind)));
            }
        } else if dtypes.len() != 2 {
            return Err(op_error(format!("{:?} takes 2 inputs, got {}", self.kind, dtypes.len())));
        }
        let dts: Vec<DType> = dtypes
            .iter()
            .enumerate()
            .map(|(i, d)| d.ok_or_else(|| op_error(format!("required input {i} is missing"))))
            .collect::<Result<_>>()?;
        let first = dts[0];
        let ok_type = match self.kind {
            Kind::Equal => first.storage() != crate::ir::Storage::None,
            _ => first.is_float() || first.storage() == crate::ir::Storage::Int,
        };
        if !ok_type {
            return Err(op_error(format!("{:?} does not support input type {first}", self.kind)));
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
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        self.check_types(&inputs.iter().map(|f| f.map(|f| f.dtype)).collect::<Vec<_>>())?;
        let a = fact(inputs, 0)?;
        if self.kind == Kind::PRelu {
            let b = fact(inputs, 1)?;
            Self::prelu_slope_shape(&a.shape, &b.shape)?;
            return Ok(vec![Fact::new(a.dtype, a.shape.clone())]);
        }
        let mut shapes: Vec<Vec<usize>> = inputs.iter().flatten().map(|f| f.shape.clone()).collect();
        if shapes.len() == 2 {
            if let Some(s) = self.legacy_shape(&shapes[0], &shapes[1])? {
                shapes[1] = s;
            }
        }
        let shape = broadcast_shapes(&shapes.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
        let dtype = match self.kind {
            Kind::Equal | Kind::Greater | Kind::Less => DType::Bool,
            _ => a.dtype,
        };
        Ok(vec![Fact::new(dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        self.check_types(&inputs.iter().map(|t| t.map(|t| t.dtype())).collect::<Vec<_>>())?;
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
            Kind::Equal | Kind::Greater | Kind::Less => self.compare(a, b()?)?,
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
