//! Ops that rearrange data: Transpose, Concat, Split, Slice, Gather.
//!
//! Transpose, Slice (and Expand in `shape_ops`) are all *strided views*:
//! output element `i` (multi-index `k`) reads input element
//! `base + Σ k[a]·stride[a]`. They share one copy kernel,
//! [`strided_copy`], which merges contiguous axes, copies whole contiguous
//! rows, transposes in cache-sized tiles when the output's last axis is
//! strided, and splits large outputs across threads.

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap, Link, Pairs, Port, PruneCx, Use, WeightAxis};
use super::common::{axis as norm_axis, fact, input, opt, PAR_THRESHOLD};
use super::shape_ops::{ints_input, known_ints, unique_axes};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{numel, strides, DType, Data, Node, Storage, Tensor};

/// Applies a generic expression to the values of a [`Data`], whatever
/// their storage, and wraps the result back into the same variant.
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => Data::F32($body),
            Data::I64($v) => Data::I64($body),
            Data::Bool($v) => Data::Bool($body),
        }
    };
}

/// Builds Transpose, Concat, Split, Slice and Gather.
pub fn build(node: &Node, opset: i64) -> Result<Box<dyn Op>> {
    match node.op_type.as_str() {
        "Transpose" => Ok(Box::new(Transpose {
            perm: node.attr_ints("perm")?,
        })),
        "Concat" => {
            let axis = match node.attr("axis") {
                Some(_) => node.attr_int("axis", 0)?,
                None if opset < 4 => 1,
                None => return Err(op_error("Concat needs the 'axis' attribute")),
            };
            Ok(Box::new(Concat { axis }))
        }
        "Split" => {
            let n_out = node.outputs.len();
            if n_out == 0 {
                return Err(op_error("Split has no outputs"));
            }
            let num_outputs = node
                .attr("num_outputs")
                .map(|_| node.attr_int("num_outputs", 0))
                .transpose()?;
            if let Some(k) = num_outputs {
                if k as usize != n_out || k < 1 {
                    return Err(op_error(format!(
                        "attribute num_outputs is {k} but the node has {n_out} outputs"
                    )));
                }
            }
            Ok(Box::new(Split {
                axis: node.attr_int("axis", 0)?,
                split: node.attr_ints("split")?,
                n_out,
                uneven: opset >= 18,
                sizes_input: opset >= 13,
            }))
        }
        "Slice" => Ok(Box::new(Slice {
            starts: node.attr_ints("starts")?,
            ends: node.attr_ints("ends")?,
            axes: node.attr_ints("axes")?,
        })),
        "Gather" => Ok(Box::new(Gather {
            axis: node.attr_int("axis", 0)?,
        })),
        o => Err(op_error(format!("layout::build called for {o}"))),
    }
}

// ---------------------------------------------------------------------------
// The strided copy kernel.
// ---------------------------------------------------------------------------

/// Side of the square tiles used when transposing (elements).
const TILE: usize = 32;

/// Drops size-1 axes and merges adjacent axes that are contiguous with each
/// other (`stride[a] == shape[a+1]·stride[a+1]`), so the copy loops run over
/// as few and as long axes as possible. The shape must have no zero.
fn collapse(shape: &[usize], st: &[isize]) -> (Vec<usize>, Vec<isize>) {
    let mut sh: Vec<usize> = Vec::with_capacity(shape.len());
    let mut ss: Vec<isize> = Vec::with_capacity(shape.len());
    for (&d, &s) in shape.iter().zip(st) {
        if d == 1 {
            continue;
        }
        if let (Some(&pd), Some(&ps)) = (sh.last(), ss.last()) {
            if ps == s * d as isize {
                *sh.last_mut().unwrap() = pd * d;
                *ss.last_mut().unwrap() = s;
                continue;
            }
        }
        sh.push(d);
        ss.push(s);
    }
    (sh, ss)
}

/// Copies the strided view (`base`, `shape`, `strides`, in elements) of
/// `src` into a new contiguous row-major vector. Every addressed element
/// must lie inside `src` (out-of-range views panic on the slice index, they
/// never read out of bounds). Runs in parallel for large outputs.
pub fn strided_copy<T: Copy + Default + Send + Sync>(
    src: &[T],
    base: usize,
    shape: &[usize],
    st: &[isize],
) -> Vec<T> {
    let n = numel(shape);
    if n == 0 {
        return Vec::new();
    }
    let (shape, st) = collapse(shape, st);
    if shape.is_empty() {
        return vec![src[base]];
    }
    if shape.len() == 1 && st[0] == 1 {
        return src[base..base + n].to_vec();
    }
    let mut out = vec![T::default(); n];
    if n >= PAR_THRESHOLD && shape[0] >= 2 {
        let row: usize = shape[1..].iter().product();
        let pieces = rayon::current_num_threads() * 4;
        let rows_per = shape[0].div_ceil(pieces).max(1);
        out.par_chunks_mut(rows_per * row)
            .enumerate()
            .for_each(|(ci, chunk)| {
                let r0 = ci * rows_per;
                let mut sub = shape.clone();
                sub[0] = chunk.len() / row;
                let b = (base as isize + r0 as isize * st[0]) as usize;
                copy_view(src, b, &sub, &st, chunk);
            });
    } else {
        copy_view(src, base, &shape, &st, &mut out);
    }
    out
}

/// Advances a multi-index over `shape[axes]` (last listed axis fastest),
/// keeping `off` equal to `Σ idx·stride`.
#[inline]
fn advance(idx: &mut [usize], off: &mut isize, shape: &[usize], st: &[isize], axes: &[usize]) {
    for (k, &ax) in axes.iter().enumerate().rev() {
        idx[k] += 1;
        *off += st[ax];
        if idx[k] < shape[ax] {
            return;
        }
        *off -= st[ax] * shape[ax] as isize;
        idx[k] = 0;
    }
}

/// Sequential body of [`strided_copy`] on a collapsed view (rank ≥ 1, no
/// zero-size axis) into `out`, which has exactly `numel(shape)` elements.
fn copy_view<T: Copy>(src: &[T], base: usize, shape: &[usize], st: &[isize], out: &mut [T]) {
    let last = shape.len() - 1;
    let (len, ls) = (shape[last], st[last]);
    let outer: Vec<usize> = (0..last).collect();
    // A stride-1 axis other than the last one: transpose tile by tile.
    let unit = (0..last).rev().find(|&a| st[a] == 1);
    match (ls, unit) {
        (1, _) => {
            let mut idx = vec![0usize; last];
            let mut off = base as isize;
            for row in out.chunks_exact_mut(len) {
                let o = off as usize;
                row.copy_from_slice(&src[o..o + len]);
                advance(&mut idx, &mut off, shape, st, &outer);
            }
        }
        (l, Some(j)) if len >= 2 && l != 0 => {
            let ostr = strides(shape);
            let others: Vec<usize> = (0..last).filter(|&a| a != j).collect();
            let (an, osj) = (shape[j], ostr[j]);
            let count: usize = others.iter().map(|&a| shape[a]).product();
            let mut idx = vec![0usize; others.len()];
            let mut off_in = base as isize;
            for _ in 0..count {
                let mut bo = 0usize;
                for (k, &a) in others.iter().enumerate() {
                    bo += idx[k] * ostr[a];
                }
                for a0 in (0..an).step_by(TILE) {
                    let a1 = (a0 + TILE).min(an);
                    for b0 in (0..len).step_by(TILE) {
                        let b1 = (b0 + TILE).min(len);
                        for a in a0..a1 {
                            let o0 = bo + a * osj;
                            let start = off_in + a as isize + b0 as isize * ls;
                            for (k, o) in out[o0 + b0..o0 + b1].iter_mut().enumerate() {
                                *o = src[(start + k as isize * ls) as usize];
                            }
                        }
                    }
                }
                advance(&mut idx, &mut off_in, shape, st, &others);
            }
        }
        _ => {
            let mut idx = vec![0usize; last];
            let mut off = base as isize;
            for row in out.chunks_exact_mut(len) {
                if ls == 0 {
                    row.fill(src[off as usize]);
                } else {
                    for (k, o) in row.iter_mut().enumerate() {
                        *o = src[(off + k as isize * ls) as usize];
                    }
                }
                advance(&mut idx, &mut off, shape, st, &outer);
            }
        }
    }
}

/// A tensor holding the strided view (`base`, `shape`, `strides`) of `t`,
/// with `t`'s dtype. See [`strided_copy`].
pub fn view_tensor(t: &Tensor, base: usize, shape: &[usize], st: &[isize]) -> Result<Tensor> {
    let data = map_data!(t.data(), v => strided_copy(v, base, shape, st));
    Tensor::new(t.dtype(), shape.to_vec(), data)
}

/// Rejects tensors whose dtype cannot be computed with.
fn computable(dt: DType) -> Result<()> {
    if dt.storage() == Storage::None {
        return Err(op_error(format!("tensors of type {dt} are not supported")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Transpose
// ---------------------------------------------------------------------------

/// Transpose: permutes axes (`perm`, default: reverse them).
#[derive(Debug)]
pub struct Transpose {
    /// The permutation; `None` reverses the axes.
    pub perm: Option<Vec<i64>>,
}

impl Transpose {
    /// The checked permutation for an input of `rank`.
    pub fn perm_for(&self, rank: usize) -> Result<Vec<usize>> {
        match &self.perm {
            None => Ok((0..rank).rev().collect()),
            Some(p) => {
                if p.len() != rank {
                    return Err(op_error(format!(
                        "perm {p:?} has {} entries but the input has rank {rank}",
                        p.len()
                    )));
                }
                let mut seen = vec![false; rank];
                let mut out = Vec::with_capacity(rank);
                for &a in p {
                    let ok = a >= 0 && (a as usize) < rank && !seen[a as usize];
                    if !ok {
                        return Err(op_error(format!(
                            "perm {p:?} is not a permutation of 0..{rank}"
                        )));
                    }
                    seen[a as usize] = true;
                    out.push(a as usize);
                }
                Ok(out)
            }
        }
    }
}

impl Op for Transpose {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let mut m = cx.passthrough();
        if let Some(a) = cx.axis(0) {
            let perm = self.perm_for(cx.shape(0).len()).ok()?;
            m.out_axes[0] = Some(perm.iter().position(|&p| p == a)?);
        }
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        let perm = self.perm_for(x.shape.len())?;
        Ok(vec![Fact::new(
            x.dtype,
            perm.iter().map(|&a| x.shape[a]).collect(),
        )])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        computable(x.dtype())?;
        let perm = self.perm_for(x.rank())?;
        let ist = strides(x.shape());
        let shape: Vec<usize> = perm.iter().map(|&a| x.shape()[a]).collect();
        let st: Vec<isize> = perm.iter().map(|&a| ist[a] as isize).collect();
        Ok(vec![view_tensor(x, 0, &shape, &st)?])
    }
}

// ---------------------------------------------------------------------------
// Concat
// ---------------------------------------------------------------------------

/// Concat: joins tensors along `axis`.
#[derive(Debug)]
pub struct Concat {
    /// Axis (may be negative).
    pub axis: i64,
}

impl Concat {
    /// Output shape and normalised axis for the given input shapes and dtypes.
    fn plan(&self, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, usize)> {
        let first = *shapes
            .first()
            .ok_or_else(|| op_error("Concat needs at least one input"))?;
        if let Some(d) = dtypes.iter().find(|&&d| d != dtypes[0]) {
            return Err(op_error(format!(
                "input types differ: {} and {d}",
                dtypes[0]
            )));
        }
        let rank = first.len();
        if rank == 0 {
            return Err(op_error("Concat cannot join scalars (rank 0)"));
        }
        let ax = norm_axis(self.axis, rank)?;
        let mut out = first.to_vec();
        out[ax] = 0;
        for s in shapes {
            let same = s.len() == rank
                && s.iter()
                    .zip(first)
                    .enumerate()
                    .all(|(i, (a, b))| i == ax || a == b);
            if !same {
                return Err(op_error(format!(
                    "input shapes {shapes:?} differ outside the concatenation axis {ax}"
                )));
            }
            out[ax] += s[ax];
        }
        Ok((out, ax))
    }
}

/// Concatenation of `parts` (each `outer` rows of its own length) row by row.
fn concat_rows<T: Copy + Default + Send + Sync>(parts: &[(&[T], usize)], outer: usize) -> Vec<T> {
    let row: usize = parts.iter().map(|p| p.1).sum();
    let n = outer * row;
    if n >= PAR_THRESHOLD && outer >= 2 {
        let mut out = vec![T::default(); n];
        let rows_per = (4096 / row.max(1)).max(1);
        out.par_chunks_mut(rows_per * row)
            .enumerate()
            .for_each(|(ci, chunk)| {
                for (k, dst) in chunk.chunks_exact_mut(row).enumerate() {
                    let o = ci * rows_per + k;
                    let mut at = 0;
                    for (src, len) in parts {
                        dst[at..at + len].copy_from_slice(&src[o * len..(o + 1) * len]);
                        at += len;
                    }
                }
            });
        out
    } else {
        let mut out = Vec::with_capacity(n);
        for o in 0..outer {
            for (src, len) in parts {
                out.extend_from_slice(&src[o * len..(o + 1) * len]);
            }
        }
        out
    }
}

impl Op for Concat {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let n = cx.inputs.len();
        let r = cx.out_shape(0).len();
        let ax = norm_axis(self.axis, r).ok()?;
        let mut m = ChanMap::new(n, 1);
        let axes: Vec<Option<usize>> = (0..n).map(|i| cx.axis(i)).collect();
        if axes.iter().flatten().any(|&a| a == ax) {
            // Along the channels: input i's channels sit at an offset.
            let mut off = 0;
            for (i, axis) in axes.iter().enumerate() {
                if cx.is_const(i) || axis.is_some_and(|a| a != ax) {
                    return None;
                }
                m.uses[i] = Some(Use::Axis(ax));
                m.links.push(Link {
                    a: Port::In(i),
                    b: Port::Out(0),
                    pairs: Pairs::Offset(off),
                });
                off += cx.shape(i)[ax];
            }
            m.out_axes[0] = Some(ax);
            return Some(m);
        }
        // Along another axis: every input shares the output's channels.
        let Some(&a) = axes.iter().flatten().next() else {
            for (i, u) in m.uses.iter_mut().enumerate() {
                *u = cx.fact(i).map(|_| Use::Shape);
            }
            return Some(m);
        };
        for (i, axis) in axes.iter().enumerate() {
            if cx.is_const(i) {
                if cx.shape(i)[a] > 1 {
                    m.weights.push(WeightAxis {
                        port: Port::Out(0),
                        input: i,
                        axis: a,
                    });
                }
                continue;
            }
            if axis.is_some_and(|x| x != a) {
                return None;
            }
            m.uses[i] = Some(Use::Axis(a));
            m.links.push(Link::same(Port::In(i), Port::Out(0)));
        }
        m.out_axes[0] = Some(a);
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let facts: Vec<&Fact> = (0..inputs.len())
            .map(|i| fact(inputs, i))
            .collect::<Result<_>>()?;
        let shapes: Vec<&[usize]> = facts.iter().map(|f| f.shape.as_slice()).collect();
        let dtypes: Vec<DType> = facts.iter().map(|f| f.dtype).collect();
        let (shape, _) = self.plan(&shapes, &dtypes)?;
        Ok(vec![Fact::new(dtypes[0], shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let ts: Vec<&Tensor> = (0..inputs.len())
            .map(|i| input(inputs, i))
            .collect::<Result<_>>()?;
        let shapes: Vec<&[usize]> = ts.iter().map(|t| t.shape()).collect();
        let dtypes: Vec<DType> = ts.iter().map(|t| t.dtype()).collect();
        let (shape, ax) = self.plan(&shapes, &dtypes)?;
        computable(dtypes[0])?;
        let outer: usize = shape[..ax].iter().product();
        let inner = |t: &Tensor| -> usize { t.shape()[ax..].iter().product() };
        let data = match ts[0].data() {
            Data::F32(_) => {
                let parts: Vec<(&[f32], usize)> = ts
                    .iter()
                    .map(|t| Ok((t.f32s()?, inner(t))))
                    .collect::<Result<_>>()?;
                Data::F32(concat_rows(&parts, outer))
            }
            Data::I64(_) => {
                let parts: Vec<(&[i64], usize)> = ts
                    .iter()
                    .map(|t| Ok((t.i64s()?, inner(t))))
                    .collect::<Result<_>>()?;
                Data::I64(concat_rows(&parts, outer))
            }
            Data::Bool(_) => {
                let parts: Vec<(&[bool], usize)> = ts
                    .iter()
                    .map(|t| Ok((t.bools()?, inner(t))))
                    .collect::<Result<_>>()?;
                Data::Bool(concat_rows(&parts, outer))
            }
        };
        Ok(vec![Tensor::new(dtypes[0], shape, data)?])
    }
}

// ---------------------------------------------------------------------------
// Split
// ---------------------------------------------------------------------------

/// Split: cuts a tensor into pieces along `axis`.
#[derive(Debug)]
pub struct Split {
    /// Axis (may be negative).
    pub axis: i64,
    /// Piece sizes from the attribute (opset < 13); from opset 13 they come
    /// from the optional second input.
    pub split: Option<Vec<i64>>,
    /// Number of outputs of the node.
    pub n_out: usize,
    /// Opset 18 rule: without sizes, pieces are `ceil(dim / n)` long and
    /// the last one is shorter; before, the dimension must divide evenly.
    pub uneven: bool,
    /// Sizes are given as input 1 (opset 13 and later), not an attribute.
    pub sizes_input: bool,
}

impl Split {
    /// Piece sizes along an axis of size `dim`, given the sizes input if any.
    pub fn sizes(&self, dim: usize, split_input: Option<Vec<i64>>) -> Result<Vec<usize>> {
        let n = self.n_out;
        if let Some(s) = split_input.or_else(|| self.split.clone()) {
            if s.len() != n {
                return Err(op_error(format!(
                    "split sizes {s:?} give {} pieces but the node has {n} outputs",
                    s.len()
                )));
            }
            if s.iter().any(|&v| v < 0) || s.iter().map(|&v| v as i128).sum::<i128>() != dim as i128
            {
                return Err(op_error(format!(
                    "split sizes {s:?} do not add up to the axis size {dim}"
                )));
            }
            return Ok(s.iter().map(|&v| v as usize).collect());
        }
        if self.uneven {
            let chunk = dim.div_ceil(n);
            let rest = dim as i128 - (chunk as i128) * (n as i128 - 1);
            if rest < 1 {
                return Err(op_error(format!(
                    "an axis of size {dim} cannot be split into {n} pieces"
                )));
            }
            let mut v = vec![chunk; n];
            v[n - 1] = rest as usize;
            Ok(v)
        } else {
            if !dim.is_multiple_of(n) {
                return Err(op_error(format!(
                    "an axis of size {dim} cannot be split evenly into {n} pieces (give split sizes)"
                )));
            }
            Ok(vec![dim / n; n])
        }
    }
}

/// The pieces of `src` (shaped `[outer, dim, inner]`) along the middle axis.
fn split_rows<T: Copy>(
    src: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    sizes: &[usize],
) -> Vec<Vec<T>> {
    let mut at = 0;
    sizes
        .iter()
        .map(|&s| {
            let mut out = Vec::with_capacity(outer * s * inner);
            for o in 0..outer {
                let b = (o * dim + at) * inner;
                out.extend_from_slice(&src[b..b + s * inner]);
            }
            at += s;
            out
        })
        .collect()
}

impl Op for Split {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let n_out = cx.outputs.len();
        let mut m = ChanMap::new(cx.inputs.len(), n_out);
        if cx.fact(1).is_some() {
            m.uses[1] = Some(Use::Shape);
        }
        let Some(a) = cx.axis(0) else {
            m.uses[0] = Some(Use::Shape);
            return Some(m);
        };
        m.uses[0] = Some(Use::Axis(a));
        let ax = norm_axis(self.axis, cx.shape(0).len()).ok()?;
        if ax == a {
            // The sizes change with the channels: they must be rewritable.
            if cx.fact(1).is_some() && !cx.is_fixed(1) {
                return None;
            }
        }
        let mut off = 0;
        for o in 0..n_out {
            m.out_axes[o] = Some(a);
            m.links.push(Link {
                a: Port::Out(o),
                b: Port::In(0),
                pairs: if ax == a {
                    Pairs::Offset(off)
                } else {
                    Pairs::Same
                },
            });
            off += cx.out_shape(o)[a];
        }
        Some(m)
    }

    fn prune(&self, cx: &mut dyn PruneCx) -> Result<()> {
        let Some(a) = cx.axis(Port::In(0)) else {
            return Ok(());
        };
        let Some(f) = cx.input_fact(0) else {
            return Ok(());
        };
        if norm_axis(self.axis, f.shape.len())? != a || cx.kept(Port::In(0)).is_none() {
            return Ok(());
        }
        let sizes: Vec<i64> = (0..self.n_out)
            .map(|o| super::channels::kept_len(cx, Port::Out(o)).unwrap_or(0) as i64)
            .collect();
        if self.sizes_input {
            // Equal pieces by `num_outputs` become explicit sizes.
            cx.remove_attr("num_outputs");
            cx.set_input(1, Tensor::from_i64(vec![sizes.len()], sizes))
        } else {
            cx.set_attr(crate::ir::Attribute::new(
                "split",
                crate::ir::AttrValue::Ints(sizes),
            ));
            Ok(())
        }
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        let ax = norm_axis(self.axis, x.shape.len())?;
        if x.shape.is_empty() {
            return Err(op_error("Split cannot split a scalar"));
        }
        let sizes = self.sizes(
            x.shape[ax],
            known_ints(inputs, 1, "the split sizes of Split")?,
        )?;
        Ok(sizes
            .iter()
            .map(|&s| {
                let mut sh = x.shape.clone();
                sh[ax] = s;
                Fact::new(x.dtype, sh)
            })
            .collect())
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        computable(x.dtype())?;
        if x.rank() == 0 {
            return Err(op_error("Split cannot split a scalar"));
        }
        let ax = norm_axis(self.axis, x.rank())?;
        let split = opt(inputs, 1).map(|t| ints_input(t, "split")).transpose()?;
        let dim = x.shape()[ax];
        let sizes = self.sizes(dim, split)?;
        let outer: usize = x.shape()[..ax].iter().product();
        let inner: usize = x.shape()[ax + 1..].iter().product();
        let pieces: Vec<Data> = match x.data() {
            Data::F32(v) => split_rows(v, outer, dim, inner, &sizes)
                .into_iter()
                .map(Data::F32)
                .collect(),
            Data::I64(v) => split_rows(v, outer, dim, inner, &sizes)
                .into_iter()
                .map(Data::I64)
                .collect(),
            Data::Bool(v) => split_rows(v, outer, dim, inner, &sizes)
                .into_iter()
                .map(Data::Bool)
                .collect(),
        };
        sizes
            .iter()
            .zip(pieces)
            .map(|(&s, d)| {
                let mut sh = x.shape().to_vec();
                sh[ax] = s;
                Tensor::new(x.dtype(), sh, d)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Slice
// ---------------------------------------------------------------------------

/// Slice: numpy-style `x[start:end:step]` on some axes.
#[derive(Debug)]
pub struct Slice {
    /// Starts from the attribute (opset < 10); later they are input 1.
    pub starts: Option<Vec<i64>>,
    /// Ends from the attribute (opset < 10); later they are input 2.
    pub ends: Option<Vec<i64>>,
    /// Axes from the attribute (opset < 10); later the optional input 3.
    pub axes: Option<Vec<i64>>,
}

/// One sliced axis after clamping: first index, element count, step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceAxis {
    /// Index of the first element taken.
    pub start: usize,
    /// Number of elements taken.
    pub len: usize,
    /// Step between taken elements (negative walks backwards).
    pub step: i64,
}

/// Clamps `start:end:step` on an axis of size `dim` exactly as ONNX (and
/// numpy) do, including out-of-range values such as `INT64_MAX`.
pub fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> Result<SliceAxis> {
    if step == 0 {
        return Err(op_error("Slice step cannot be 0"));
    }
    let d = dim as i128;
    let (mut s, mut e, st) = (start as i128, end as i128, step as i128);
    if d == 0 {
        return Ok(SliceAxis {
            start: 0,
            len: 0,
            step,
        });
    }
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    let len = if st > 0 {
        s = s.clamp(0, d);
        e = e.clamp(0, d);
        if e > s {
            (e - s + st - 1) / st
        } else {
            0
        }
    } else {
        s = s.clamp(0, d - 1);
        e = e.clamp(-1, d - 1);
        if s > e {
            (s - e - st - 1) / -st
        } else {
            0
        }
    };
    let len = len as usize;
    Ok(SliceAxis {
        start: if len == 0 { 0 } else { s as usize },
        len,
        step: if len <= 1 { 1 } else { step },
    })
}

impl Slice {
    /// Per-axis slicing for an input of `shape`, given the values of inputs
    /// 1..=4 (starts, ends, axes, steps) when they are inputs.
    pub fn plan(
        &self,
        shape: &[usize],
        starts: Option<Vec<i64>>,
        ends: Option<Vec<i64>>,
        axes: Option<Vec<i64>>,
        steps: Option<Vec<i64>>,
    ) -> Result<Vec<SliceAxis>> {
        let starts = starts.or_else(|| self.starts.clone()).ok_or_else(|| {
            op_error("Slice needs starts (input 1, or the attribute before opset 10)")
        })?;
        let ends = ends.or_else(|| self.ends.clone()).ok_or_else(|| {
            op_error("Slice needs ends (input 2, or the attribute before opset 10)")
        })?;
        let rank = shape.len();
        if starts.len() != ends.len() {
            return Err(op_error(format!(
                "Slice has {} starts but {} ends",
                starts.len(),
                ends.len()
            )));
        }
        let axes = axes
            .or_else(|| self.axes.clone())
            .unwrap_or_else(|| (0..starts.len() as i64).collect());
        if axes.len() != starts.len() {
            return Err(op_error(format!(
                "Slice has {} starts but {} axes",
                starts.len(),
                axes.len()
            )));
        }
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if steps.len() != starts.len() {
            return Err(op_error(format!(
                "Slice has {} starts but {} steps",
                starts.len(),
                steps.len()
            )));
        }
        let axes = unique_axes(&axes, rank)?;
        let mut out: Vec<SliceAxis> = shape
            .iter()
            .map(|&d| SliceAxis {
                start: 0,
                len: d,
                step: 1,
            })
            .collect();
        for (k, &a) in axes.iter().enumerate() {
            out[a] = slice_axis(shape[a], starts[k], ends[k], steps[k])?;
        }
        Ok(out)
    }
}

impl Op for Slice {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let mut m = ChanMap::new(cx.inputs.len(), 1);
        for i in 1..cx.inputs.len() {
            if cx.fact(i).is_some() {
                m.uses[i] = Some(Use::Shape);
            }
        }
        let Some(a) = cx.axis(0) else {
            m.uses[0] = Some(Use::Shape);
            return Some(m);
        };
        m.uses[0] = Some(Use::Axis(a));
        m.out_axes[0] = Some(a);
        let plan = self
            .plan(cx.shape(0), cx.ints(1), cx.ints(2), cx.ints(3), cx.ints(4))
            .ok()?;
        let p = plan[a];
        if p.len == cx.shape(0)[a] && p.step == 1 {
            m.links.push(Link::same(Port::In(0), Port::Out(0)));
        } else {
            // Slicing the channels: bounds must be rewritable, step 1.
            if p.step != 1 || self.starts.is_some() || !(cx.is_fixed(1) && cx.is_fixed(2)) {
                return None;
            }
            m.links.push(Link {
                a: Port::Out(0),
                b: Port::In(0),
                pairs: Pairs::Offset(p.start),
            });
        }
        Some(m)
    }

    fn prune(&self, cx: &mut dyn PruneCx) -> Result<()> {
        let Some(a) = cx.axis(Port::In(0)) else {
            return Ok(());
        };
        let (Some(f), Some(n_in)) = (cx.input_fact(0), cx.channels(Port::In(0))) else {
            return Ok(());
        };
        let get = |i: usize| {
            cx.input_fact(i)
                .and_then(|f| f.value.as_ref().map(|v| v.to_i64_vec()))
        };
        let (starts, ends, axes) = (get(1), get(2), get(3));
        let plan = self.plan(&f.shape, starts.clone(), ends.clone(), axes.clone(), get(4))?;
        let p = plan[a];
        if p.len == n_in && p.step == 1 {
            return Ok(());
        }
        let (Some(mut starts), Some(mut ends)) = (starts, ends) else {
            return Ok(());
        };
        let rank = f.shape.len();
        let axes: Vec<usize> = match axes {
            Some(ax) => ax
                .iter()
                .map(|&x| norm_axis(x, rank))
                .collect::<Result<_>>()?,
            None => (0..starts.len()).collect(),
        };
        let Some(j) = axes.iter().position(|&x| x == a) else {
            return Ok(());
        };
        let new_start = match cx.kept(Port::In(0)) {
            Some(k) => k.iter().filter(|&&i| i < p.start).count(),
            None => p.start,
        };
        let new_len = super::channels::kept_len(cx, Port::Out(0)).unwrap_or(p.len);
        starts[j] = new_start as i64;
        ends[j] = (new_start + new_len) as i64;
        cx.set_input(1, Tensor::from_i64(vec![starts.len()], starts))?;
        cx.set_input(2, Tensor::from_i64(vec![ends.len()], ends))
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        let plan = self.plan(
            &x.shape,
            known_ints(inputs, 1, "the starts of Slice")?,
            known_ints(inputs, 2, "the ends of Slice")?,
            known_ints(inputs, 3, "the axes of Slice")?,
            known_ints(inputs, 4, "the steps of Slice")?,
        )?;
        Ok(vec![Fact::new(
            x.dtype,
            plan.iter().map(|a| a.len).collect(),
        )])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        computable(x.dtype())?;
        let get = |i: usize, what: &str| opt(inputs, i).map(|t| ints_input(t, what)).transpose();
        let plan = self.plan(
            x.shape(),
            get(1, "starts")?,
            get(2, "ends")?,
            get(3, "axes")?,
            get(4, "steps")?,
        )?;
        let ist = strides(x.shape());
        let shape: Vec<usize> = plan.iter().map(|a| a.len).collect();
        if numel(&shape) == 0 {
            return Ok(vec![Tensor::new(
                x.dtype(),
                shape,
                map_data!(x.data(), _v => Vec::new()),
            )?]);
        }
        let base: usize = plan.iter().zip(&ist).map(|(a, &s)| a.start * s).sum();
        let st: Vec<isize> = plan
            .iter()
            .zip(&ist)
            .map(|(a, &s)| a.step as isize * s as isize)
            .collect();
        Ok(vec![view_tensor(x, base, &shape, &st)?])
    }
}

// ---------------------------------------------------------------------------
// Gather
// ---------------------------------------------------------------------------

/// Gather: picks slices along `axis` by index (`x.take(indices, axis)`).
#[derive(Debug)]
pub struct Gather {
    /// Axis (may be negative).
    pub axis: i64,
}

impl Gather {
    /// Output shape and normalised axis.
    fn plan(&self, data: &[usize], indices: &[usize]) -> Result<(Vec<usize>, usize)> {
        if data.is_empty() {
            return Err(op_error("Gather needs data of rank 1 or more"));
        }
        let ax = norm_axis(self.axis, data.len())?;
        let mut out = data[..ax].to_vec();
        out.extend_from_slice(indices);
        out.extend_from_slice(&data[ax + 1..]);
        Ok((out, ax))
    }
}

/// The entries `idx` of `t` along `axis`, in that order (a Gather with
/// constant indices; pruning uses it to slice weights).
pub fn take(t: &Tensor, axis: usize, idx: &[usize]) -> Result<Tensor> {
    let sh = t.shape();
    if axis >= sh.len() || idx.iter().any(|&i| i >= sh[axis]) {
        return Err(op_error(format!(
            "cannot take indices along axis {axis} of shape {sh:?}"
        )));
    }
    let (outer, dim, inner) = (numel(&sh[..axis]), sh[axis], numel(&sh[axis + 1..]));
    let mut shape = sh.to_vec();
    shape[axis] = idx.len();
    Tensor::new(
        t.dtype(),
        shape,
        map_data!(t.data(), v => gather_rows(v, outer, dim, inner, idx)),
    )
}

/// Rows `idx` of `src` seen as `[outer, dim, inner]`, for every outer index.
fn gather_rows<T: Copy + Default + Send + Sync>(
    src: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    idx: &[usize],
) -> Vec<T> {
    let nidx = idx.len();
    let n = outer * nidx * inner;
    if n == 0 {
        return Vec::new();
    }
    if inner == 1 {
        let mut out = Vec::with_capacity(n);
        for o in 0..outer {
            let row = &src[o * dim..(o + 1) * dim];
            out.extend(idx.iter().map(|&i| row[i]));
        }
        return out;
    }
    let copy_row = |r: usize, dst: &mut [T]| {
        let (o, i) = (r / nidx, idx[r % nidx]);
        let b = (o * dim + i) * inner;
        dst.copy_from_slice(&src[b..b + inner]);
    };
    let mut out = vec![T::default(); n];
    if n >= PAR_THRESHOLD && outer * nidx >= 2 {
        let rows_per = (4096 / inner).max(1);
        out.par_chunks_mut(rows_per * inner)
            .enumerate()
            .for_each(|(ci, chunk)| {
                for (k, dst) in chunk.chunks_exact_mut(inner).enumerate() {
                    copy_row(ci * rows_per + k, dst);
                }
            });
    } else {
        for (r, dst) in out.chunks_exact_mut(inner).enumerate() {
            copy_row(r, dst);
        }
    }
    out
}

impl Op for Gather {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let mut m = ChanMap::new(2, 1);
        m.uses[1] = cx.fact(1).map(|_| Use::Shape);
        let (data, idx) = (cx.shape(0), cx.shape(1));
        let ax = norm_axis(self.axis, data.len()).ok()?;
        if cx.is_const(0) {
            // An embedding table [rows, features]: the features are new
            // channels on the output's last axis.
            if ax != 0 || data.len() != 2 || cx.is_const(1) {
                return None;
            }
            m.out_axes[0] = Some(idx.len());
            m.weights.push(WeightAxis {
                port: Port::Out(0),
                input: 0,
                axis: 1,
            });
            return Some(m);
        }
        let Some(a) = cx.axis(0) else {
            m.uses[0] = Some(Use::Shape);
            return Some(m);
        };
        if a == ax {
            return None;
        }
        m.uses[0] = Some(Use::Axis(a));
        m.out_axes[0] = Some(if a < ax { a } else { a - 1 + idx.len() });
        m.links.push(Link::same(Port::In(0), Port::Out(0)));
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, i) = (fact(inputs, 0)?, fact(inputs, 1)?);
        if i.dtype.storage() != Storage::Int {
            return Err(op_error(format!(
                "Gather indices must be integers, got {}",
                i.dtype
            )));
        }
        let (shape, _) = self.plan(&x.shape, &i.shape)?;
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, it) = (input(inputs, 0)?, input(inputs, 1)?);
        computable(x.dtype())?;
        let raw = it.i64s().map_err(|_| {
            op_error(format!(
                "Gather indices must be integers, got {}",
                it.dtype()
            ))
        })?;
        let (shape, ax) = self.plan(x.shape(), it.shape())?;
        let dim = x.shape()[ax];
        let idx: Vec<usize> = raw
            .iter()
            .map(|&i| {
                let j = if i < 0 { i + dim as i64 } else { i };
                if j < 0 || j >= dim as i64 {
                    Err(op_error(format!(
                        "index {i} is out of range for axis {ax} of size {dim}"
                    )))
                } else {
                    Ok(j as usize)
                }
            })
            .collect::<Result<_>>()?;
        let outer: usize = x.shape()[..ax].iter().product();
        let inner: usize = x.shape()[ax + 1..].iter().product();
        let data = map_data!(x.data(), v => gather_rows(v, outer, dim, inner, &idx));
        Ok(vec![Tensor::new(x.dtype(), shape, data)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::AttrValue;
    use crate::ops::test_util::node;

    fn op(op: &str, n_out: usize, attrs: Vec<(&str, AttrValue)>, opset: i64) -> Box<dyn Op> {
        build(&node(op, 1, n_out, attrs), opset).unwrap()
    }
    fn ints(v: &[i64]) -> AttrValue {
        AttrValue::Ints(v.to_vec())
    }
    fn iota(shape: &[usize]) -> Tensor {
        let n = numel(shape);
        Tensor::from_f32(shape.to_vec(), (0..n).map(|i| i as f32).collect())
    }
    fn i64t(v: &[i64]) -> Tensor {
        Tensor::from_i64(vec![v.len()], v.to_vec())
    }
    fn run(o: &dyn Op, ins: &[Option<&Tensor>]) -> Vec<Tensor> {
        let out = o.eval(ins).unwrap();
        // Shape inference must agree with evaluation, with values known.
        let facts: Vec<Option<Fact>> = ins
            .iter()
            .map(|t| t.map(|t| Fact::known(t.clone())))
            .collect();
        let frefs: Vec<Option<&Fact>> = facts.iter().map(|f| f.as_ref()).collect();
        let inferred = o.infer(&frefs).unwrap();
        assert_eq!(inferred.len(), out.len());
        for (f, t) in inferred.iter().zip(&out) {
            assert_eq!(f.shape, t.shape());
            assert_eq!(f.dtype, t.dtype());
        }
        out
    }
    fn f(t: &Tensor) -> Vec<f32> {
        t.f32s().unwrap().to_vec()
    }

    /// Reference transpose by explicit index arithmetic.
    fn naive_transpose(x: &Tensor, perm: &[usize]) -> Vec<f32> {
        let sh = x.shape();
        let ist = strides(sh);
        let osh: Vec<usize> = perm.iter().map(|&a| sh[a]).collect();
        let n = numel(&osh);
        let ost = strides(&osh);
        let v = x.f32s().unwrap();
        (0..n)
            .map(|i| {
                let mut off = 0;
                for (k, &a) in perm.iter().enumerate() {
                    off += (i / ost[k]) % osh[k] * ist[a];
                }
                v[off]
            })
            .collect()
    }

    #[test]
    fn transpose_default_reverses() {
        let x = iota(&[2, 3]);
        let o = op("Transpose", 1, vec![], 13);
        let y = &run(&*o, &[Some(&x)])[0];
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(f(y), vec![0., 3., 1., 4., 2., 5.]);
        let x3 = iota(&[2, 3, 4]);
        let y3 = &run(&*o, &[Some(&x3)])[0];
        assert_eq!(y3.shape(), &[4, 3, 2]);
        assert_eq!(f(y3), naive_transpose(&x3, &[2, 1, 0]));
    }

    #[test]
    fn transpose_common_perms_match_reference() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4, 5], &[0, 2, 3, 1]),
            (&[2, 3, 4, 5], &[0, 3, 1, 2]),
            (&[2, 3, 4, 5], &[0, 2, 1, 3]),
            (&[2, 3, 4, 5], &[3, 2, 1, 0]),
            (&[2, 3, 4, 5], &[1, 0, 3, 2]),
            (&[2, 3, 4, 5], &[0, 1, 2, 3]),
            (&[1, 3, 1, 5], &[2, 3, 0, 1]),
            (&[37, 45], &[1, 0]),
            (&[3, 70, 33], &[0, 2, 1]),
            (&[2, 3, 4, 5, 6], &[4, 0, 3, 1, 2]),
            // Large enough to run in parallel.
            (&[1, 64, 48, 40], &[0, 2, 3, 1]),
            (&[4, 8, 64, 40], &[0, 2, 1, 3]),
            (&[300, 257], &[1, 0]),
        ];
        for (shape, perm) in cases {
            let x = iota(shape);
            let p: Vec<i64> = perm.iter().map(|&a| a as i64).collect();
            let o = op("Transpose", 1, vec![("perm", ints(&p))], 13);
            let y = &run(&*o, &[Some(&x)])[0];
            let want: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
            assert_eq!(y.shape(), want.as_slice(), "{shape:?} {perm:?}");
            assert_eq!(f(y), naive_transpose(&x, perm), "{shape:?} {perm:?}");
        }
    }

    #[test]
    fn transpose_ints_bools_and_empty() {
        let o = op("Transpose", 1, vec![("perm", ints(&[1, 0]))], 13);
        let x = Tensor::from_i64(vec![2, 2], vec![1, 2, 3, 4]);
        assert_eq!(run(&*o, &[Some(&x)])[0].i64s().unwrap(), &[1, 3, 2, 4]);
        let b = Tensor::from_bool(vec![1, 2], vec![true, false]);
        let yb = &run(&*o, &[Some(&b)])[0];
        assert_eq!(yb.shape(), &[2, 1]);
        assert_eq!(yb.bools().unwrap(), &[true, false]);
        let e = Tensor::from_f32(vec![0, 3], vec![]);
        assert_eq!(run(&*o, &[Some(&e)])[0].shape(), &[3, 0]);
        let s = Tensor::from_f32(vec![], vec![7.0]);
        let o0 = op("Transpose", 1, vec![], 13);
        assert_eq!(f(&run(&*o0, &[Some(&s)])[0]), vec![7.0]);
    }

    #[test]
    fn transpose_bad_perm_errors() {
        let x = iota(&[2, 3]);
        for p in [&[0, 0][..], &[0, 2], &[0], &[-1, 0]] {
            let o = op("Transpose", 1, vec![("perm", ints(p))], 13);
            assert!(o.eval(&[Some(&x)]).is_err(), "{p:?}");
            assert!(o
                .infer(&[Some(&Fact::new(DType::F32, vec![2, 3]))])
                .is_err());
        }
    }

    #[test]
    fn concat_axes() {
        let a = iota(&[2, 2]);
        let b = Tensor::from_f32(vec![2, 1], vec![10., 11.]);
        let o = op("Concat", 1, vec![("axis", AttrValue::Int(1))], 13);
        let y = &run(&*o, &[Some(&a), Some(&b)])[0];
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(f(y), vec![0., 1., 10., 2., 3., 11.]);
        // Negative axis, axis 0.
        let o = op("Concat", 1, vec![("axis", AttrValue::Int(-2))], 13);
        let c = Tensor::from_f32(vec![1, 2], vec![8., 9.]);
        let y = &run(&*o, &[Some(&a), Some(&c)])[0];
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(f(y), vec![0., 1., 2., 3., 8., 9.]);
        // Three inputs with an empty one; opset 1 default axis 1.
        let e = Tensor::from_f32(vec![2, 0], vec![]);
        let o = op("Concat", 1, vec![], 1);
        let y = &run(&*o, &[Some(&b), Some(&e), Some(&a)])[0];
        assert_eq!(f(y), vec![10., 0., 1., 11., 2., 3.]);
    }

    #[test]
    fn concat_ints_bools_and_large() {
        let o = op("Concat", 1, vec![("axis", AttrValue::Int(0))], 13);
        let y = &run(
            &*o,
            &[Some(&i64t(&[1, 2])), Some(&i64t(&[3])), Some(&i64t(&[-1]))],
        )[0];
        assert_eq!(y.i64s().unwrap(), &[1, 2, 3, -1]);
        let b1 = Tensor::from_bool(vec![1], vec![true]);
        let b2 = Tensor::from_bool(vec![2], vec![false, true]);
        assert_eq!(
            run(&*o, &[Some(&b1), Some(&b2)])[0].bools().unwrap(),
            &[true, false, true]
        );
        // Large: parallel path against a simple reference.
        let a = iota(&[64, 300, 3]);
        let b = iota(&[64, 200, 3]);
        let o = op("Concat", 1, vec![("axis", AttrValue::Int(1))], 13);
        let y = &run(&*o, &[Some(&a), Some(&b)])[0];
        assert_eq!(y.shape(), &[64, 500, 3]);
        let (av, bv, yv) = (a.f32s().unwrap(), b.f32s().unwrap(), y.f32s().unwrap());
        for r in 0..64 {
            assert_eq!(&yv[r * 1500..r * 1500 + 900], &av[r * 900..(r + 1) * 900]);
            assert_eq!(
                &yv[r * 1500 + 900..(r + 1) * 1500],
                &bv[r * 600..(r + 1) * 600]
            );
        }
    }

    #[test]
    fn concat_errors() {
        let o = op("Concat", 1, vec![("axis", AttrValue::Int(1))], 13);
        let a = iota(&[2, 2]);
        let b = iota(&[3, 2]);
        assert!(o.eval(&[Some(&a), Some(&b)]).is_err());
        assert!(o.eval(&[Some(&a), Some(&i64t(&[1, 2]))]).is_err());
        assert!(o.eval(&[Some(&a), None]).is_err());
        let o3 = op("Concat", 1, vec![("axis", AttrValue::Int(2))], 13);
        assert!(o3.eval(&[Some(&a), Some(&a)]).is_err());
        assert!(build(&node("Concat", 2, 1, vec![]), 13).is_err());
        let s = Tensor::from_f32(vec![], vec![1.0]);
        let o0 = op("Concat", 1, vec![("axis", AttrValue::Int(0))], 13);
        assert!(o0.eval(&[Some(&s), Some(&s)]).is_err());
    }

    #[test]
    fn split_variants() {
        let x = iota(&[2, 6]);
        // Equal split by number of outputs, axis 1.
        let o = op("Split", 3, vec![("axis", AttrValue::Int(1))], 13);
        let y = run(&*o, &[Some(&x)]);
        assert_eq!(y.len(), 3);
        assert_eq!(y[0].shape(), &[2, 2]);
        assert_eq!(f(&y[1]), vec![2., 3., 8., 9.]);
        // Sizes as attribute (opset 11), negative axis.
        let o = op(
            "Split",
            2,
            vec![("axis", AttrValue::Int(-1)), ("split", ints(&[1, 5]))],
            11,
        );
        let y = run(&*o, &[Some(&x)]);
        assert_eq!(f(&y[0]), vec![0., 6.]);
        assert_eq!(f(&y[1]), vec![1., 2., 3., 4., 5., 7., 8., 9., 10., 11.]);
        // Sizes as input (opset 13), with a zero-size piece.
        let o = op("Split", 3, vec![("axis", AttrValue::Int(1))], 13);
        let s = i64t(&[4, 0, 2]);
        let y = run(&*o, &[Some(&x), Some(&s)]);
        assert_eq!(y[1].shape(), &[2, 0]);
        assert_eq!(f(&y[2]), vec![4., 5., 10., 11.]);
        // Axis 0 default.
        let o = op("Split", 2, vec![], 13);
        let y = run(&*o, &[Some(&x)]);
        assert_eq!(f(&y[1]), vec![6., 7., 8., 9., 10., 11.]);
        // Opset 18 num_outputs with an uneven last chunk: 7 -> 3,3,1.
        let x7 = iota(&[7]);
        let o = op("Split", 3, vec![("num_outputs", AttrValue::Int(3))], 18);
        let y = run(&*o, &[Some(&x7)]);
        assert_eq!(f(&y[0]), vec![0., 1., 2.]);
        assert_eq!(f(&y[1]), vec![3., 4., 5.]);
        assert_eq!(f(&y[2]), vec![6.]);
        // Ints.
        let o = op("Split", 2, vec![], 13);
        let y = run(&*o, &[Some(&i64t(&[1, 2, 3, 4]))]);
        assert_eq!(y[1].i64s().unwrap(), &[3, 4]);
    }

    #[test]
    fn split_errors() {
        let x7 = iota(&[7]);
        // Uneven before opset 18.
        assert!(op("Split", 3, vec![], 13).eval(&[Some(&x7)]).is_err());
        // Opset 18 when the last chunk would be empty (4 into 3: 2,2,0), like ORT.
        let x4 = iota(&[4]);
        assert!(op("Split", 3, vec![("num_outputs", AttrValue::Int(3))], 18)
            .eval(&[Some(&x4)])
            .is_err());
        // Sizes that do not add up, negative, wrong count.
        let o = op("Split", 2, vec![], 13);
        assert!(o.eval(&[Some(&x7), Some(&i64t(&[3, 3]))]).is_err());
        assert!(o.eval(&[Some(&x7), Some(&i64t(&[8, -1]))]).is_err());
        assert!(o.eval(&[Some(&x7), Some(&i64t(&[7]))]).is_err());
        // num_outputs disagreeing with the node.
        assert!(build(
            &node("Split", 1, 2, vec![("num_outputs", AttrValue::Int(3))]),
            18
        )
        .is_err());
        // Unknown sizes in inference.
        let fx = Fact::new(DType::F32, vec![7]);
        let fs = Fact::new(DType::I64, vec![2]);
        let e = o.infer(&[Some(&fx), Some(&fs)]).unwrap_err().to_string();
        assert!(e.contains("computed at run time"), "{e}");
        // Bad axis, scalar.
        assert!(op("Split", 2, vec![("axis", AttrValue::Int(1))], 13)
            .eval(&[Some(&x7)])
            .is_err());
        assert!(o
            .eval(&[Some(&Tensor::from_f32(vec![], vec![1.0]))])
            .is_err());
    }

    #[test]
    fn slice_axis_clamping_matches_numpy() {
        // (dim, start, end, step) -> numpy len(range(dim)[start:end:step]) and first.
        let cases: &[(usize, i64, i64, i64, usize, usize)] = &[
            (10, 0, i64::MAX, 1, 10, 0),
            (10, 2, -2, 1, 6, 2),
            (10, -3, i64::MAX, 1, 3, 7),
            (10, i64::MIN, 3, 1, 3, 0),
            (10, 20, 30, 1, 0, 0),
            (10, 1, 8, 3, 3, 1),
            (10, -1, i64::MIN, -1, 10, 9),
            (10, i64::MAX, i64::MIN, -1, 10, 9),
            (10, 8, 2, -2, 3, 8),
            (10, 5, 5, -1, 0, 0),
            (10, 3, 8, -1, 0, 0),
            (10, -100, 100, 4, 3, 0),
            (10, 100, -100, -3, 4, 9),
            (0, 0, 5, 1, 0, 0),
            (0, -1, i64::MIN, -1, 0, 0),
            (5, 0, 5, i64::MAX, 1, 0),
            (5, 4, -10, i64::MIN, 1, 4),
        ];
        for &(d, s, e, st, len, first) in cases {
            let a = slice_axis(d, s, e, st).unwrap();
            assert_eq!((a.len, a.start), (len, first), "{d} {s}:{e}:{st}");
        }
        assert!(slice_axis(5, 0, 5, 0).is_err());
    }

    #[test]
    fn slice_opset10_inputs() {
        let x = iota(&[3, 4]);
        let o = op("Slice", 1, vec![], 13);
        // x[0:2, 1:3]
        let y = &run(&*o, &[Some(&x), Some(&i64t(&[0, 1])), Some(&i64t(&[2, 3]))])[0];
        assert_eq!(y.shape(), &[2, 2]);
        assert_eq!(f(y), vec![1., 2., 5., 6.]);
        // x[:, ::-1] with axes=[-1], steps=[-1], end = INT64_MIN.
        let y = &run(
            &*o,
            &[
                Some(&x),
                Some(&i64t(&[-1])),
                Some(&i64t(&[i64::MIN])),
                Some(&i64t(&[-1])),
                Some(&i64t(&[-1])),
            ],
        )[0];
        assert_eq!(f(y), vec![3., 2., 1., 0., 7., 6., 5., 4., 11., 10., 9., 8.]);
        // x[::-2, 1::2]: axes [0, 1], steps [-2, 2]
        let y = &run(
            &*o,
            &[
                Some(&x),
                Some(&i64t(&[i64::MAX, 1])),
                Some(&i64t(&[i64::MIN, i64::MAX])),
                Some(&i64t(&[0, 1])),
                Some(&i64t(&[-2, 2])),
            ],
        )[0];
        assert_eq!(y.shape(), &[2, 2]);
        assert_eq!(f(y), vec![9., 11., 1., 3.]);
        // x[1:] via huge end, axes omitted but steps given as None.
        let y = &run(
            &*o,
            &[
                Some(&x),
                Some(&i64t(&[1])),
                Some(&i64t(&[i64::MAX])),
                None,
                None,
            ],
        )[0];
        assert_eq!(f(y), vec![4., 5., 6., 7., 8., 9., 10., 11.]);
        // Empty result.
        let y = &run(
            &*o,
            &[
                Some(&x),
                Some(&i64t(&[2])),
                Some(&i64t(&[1])),
                Some(&i64t(&[1])),
            ],
        )[0];
        assert_eq!(y.shape(), &[3, 0]);
        // Int data (shape arithmetic): shape[-2:].
        let s = i64t(&[1, 3, 224, 224]);
        let y = &run(
            &*o,
            &[Some(&s), Some(&i64t(&[-2])), Some(&i64t(&[i64::MAX]))],
        )[0];
        assert_eq!(y.i64s().unwrap(), &[224, 224]);
    }

    #[test]
    fn slice_4d_and_large_match_numpy_reference() {
        // x = arange(2*3*4*5).reshape(2,3,4,5); y = x[:, 1:3, ::-1, 1:5:2]
        let x = iota(&[2, 3, 4, 5]);
        let o = op("Slice", 1, vec![], 13);
        let y = &run(
            &*o,
            &[
                Some(&x),
                Some(&i64t(&[1, -1, 1])),
                Some(&i64t(&[3, i64::MIN, 5])),
                Some(&i64t(&[1, 2, 3])),
                Some(&i64t(&[1, -1, 2])),
            ],
        )[0];
        assert_eq!(y.shape(), &[2, 2, 4, 2]);
        let want = [
            36., 38., 31., 33., 26., 28., 21., 23., 56., 58., 51., 53., 46., 48., 41., 43., 96.,
            98., 91., 93., 86., 88., 81., 83., 116., 118., 111., 113., 106., 108., 101., 103.,
        ];
        assert_eq!(f(y), want);
        // Large slice of the channel axis (contiguous blocks, parallel).
        let x = iota(&[2, 64, 32, 32]);
        let y = &run(
            &*o,
            &[
                Some(&x),
                Some(&i64t(&[16])),
                Some(&i64t(&[48])),
                Some(&i64t(&[1])),
            ],
        )[0];
        assert_eq!(y.shape(), &[2, 32, 32, 32]);
        let (xv, yv) = (x.f32s().unwrap(), y.f32s().unwrap());
        for n in 0..2 {
            assert_eq!(
                &yv[n * 32768..(n + 1) * 32768],
                &xv[n * 65536 + 16384..n * 65536 + 49152]
            );
        }
    }

    #[test]
    fn slice_attributes_before_opset10() {
        let x = iota(&[3, 4]);
        let o = op(
            "Slice",
            1,
            vec![
                ("starts", ints(&[1])),
                ("ends", ints(&[1000])),
                ("axes", ints(&[1])),
            ],
            9,
        );
        let y = &run(&*o, &[Some(&x)])[0];
        assert_eq!(f(y), vec![1., 2., 3., 5., 6., 7., 9., 10., 11.]);
    }

    #[test]
    fn slice_errors() {
        let x = iota(&[3, 4]);
        let o = op("Slice", 1, vec![], 13);
        let s = |v: &[i64]| i64t(v);
        assert!(o
            .eval(&[Some(&x), Some(&s(&[0])), Some(&s(&[1, 2]))])
            .is_err());
        assert!(o
            .eval(&[Some(&x), Some(&s(&[0])), Some(&s(&[1])), Some(&s(&[2]))])
            .is_err());
        assert!(o
            .eval(&[
                Some(&x),
                Some(&s(&[0, 0])),
                Some(&s(&[1, 1])),
                Some(&s(&[1, -1]))
            ])
            .is_err());
        assert!(o
            .eval(&[
                Some(&x),
                Some(&s(&[0])),
                Some(&s(&[1])),
                Some(&s(&[0])),
                Some(&s(&[0]))
            ])
            .is_err());
        assert!(o
            .eval(&[
                Some(&x),
                Some(&s(&[0])),
                Some(&s(&[1])),
                Some(&s(&[0])),
                Some(&s(&[1, 1]))
            ])
            .is_err());
        assert!(o.eval(&[Some(&x), Some(&s(&[0]))]).is_err());
        let fl = Tensor::from_f32(vec![1], vec![0.0]);
        assert!(o.eval(&[Some(&x), Some(&fl), Some(&s(&[1]))]).is_err());
        let fx = Fact::new(DType::F32, vec![3, 4]);
        let fs = Fact::new(DType::I64, vec![1]);
        let known = Fact::known(s(&[1]));
        let e = o
            .infer(&[Some(&fx), Some(&known), Some(&fs)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ends of Slice") && e.contains("computed at run time"),
            "{e}"
        );
        let y = o
            .infer(&[Some(&fx), Some(&known), Some(&Fact::known(s(&[3])))])
            .unwrap();
        assert_eq!(y[0].shape, vec![2, 4]);
    }

    #[test]
    fn gather_axes_and_negative_indices() {
        let x = iota(&[3, 4]);
        let o = op("Gather", 1, vec![], 13);
        let idx = Tensor::from_i64(vec![2, 2], vec![0, 2, -1, 1]);
        let y = &run(&*o, &[Some(&x), Some(&idx)])[0];
        assert_eq!(y.shape(), &[2, 2, 4]);
        assert_eq!(
            f(y),
            vec![0., 1., 2., 3., 8., 9., 10., 11., 8., 9., 10., 11., 4., 5., 6., 7.]
        );
        let o = op("Gather", 1, vec![("axis", AttrValue::Int(-1))], 13);
        let idx = Tensor::from_i64(vec![2], vec![3, -4]);
        let y = &run(&*o, &[Some(&x), Some(&idx)])[0];
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(f(y), vec![3., 0., 7., 4., 11., 8.]);
        // Scalar index removes the axis: shape[1] of a shape vector.
        let s = i64t(&[1, 3, 224, 224]);
        let o = op("Gather", 1, vec![], 13);
        let y = &run(&*o, &[Some(&s), Some(&Tensor::from_i64(vec![], vec![1]))])[0];
        assert_eq!(y.shape(), &[] as &[usize]);
        assert_eq!(y.i64s().unwrap(), &[3]);
        // Middle axis of a 3-D tensor, int32-typed indices.
        let x3 = iota(&[2, 3, 2]);
        let o = op("Gather", 1, vec![("axis", AttrValue::Int(1))], 13);
        let idx = Tensor::from_int(DType::I32, vec![1], vec![2]);
        let y = &run(&*o, &[Some(&x3), Some(&idx)])[0];
        assert_eq!(y.shape(), &[2, 1, 2]);
        assert_eq!(f(y), vec![4., 5., 10., 11.]);
    }

    #[test]
    fn gather_embedding_lookup() {
        let (v, h) = (1000, 64);
        let table = iota(&[v, h]);
        let ids: Vec<i64> = (0..2 * 128).map(|i| (i * 37 % v) as i64).collect();
        let idx = Tensor::from_i64(vec![2, 128], ids.clone());
        let o = op("Gather", 1, vec![], 13);
        let y = &run(&*o, &[Some(&table), Some(&idx)])[0];
        assert_eq!(y.shape(), &[2, 128, h]);
        let (tv, yv) = (table.f32s().unwrap(), y.f32s().unwrap());
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            assert_eq!(&yv[r * h..(r + 1) * h], &tv[id * h..(id + 1) * h]);
        }
    }

    #[test]
    fn gather_errors() {
        let x = iota(&[3, 4]);
        let o = op("Gather", 1, vec![], 13);
        assert!(o.eval(&[Some(&x), Some(&i64t(&[3]))]).is_err());
        assert!(o.eval(&[Some(&x), Some(&i64t(&[-4]))]).is_err());
        assert!(o
            .eval(&[Some(&x), Some(&Tensor::from_f32(vec![1], vec![0.0]))])
            .is_err());
        assert!(o
            .eval(&[
                Some(&Tensor::from_f32(vec![], vec![1.0])),
                Some(&i64t(&[0]))
            ])
            .is_err());
        let o2 = op("Gather", 1, vec![("axis", AttrValue::Int(2))], 13);
        assert!(o2.eval(&[Some(&x), Some(&i64t(&[0]))]).is_err());
        let fx = Fact::new(DType::F32, vec![3, 4]);
        let fi = Fact::new(DType::F32, vec![1]);
        assert!(o.infer(&[Some(&fx), Some(&fi)]).is_err());
        let fi = Fact::new(DType::I64, vec![5, 6]);
        assert_eq!(
            o.infer(&[Some(&fx), Some(&fi)]).unwrap()[0].shape,
            vec![5, 6, 4]
        );
    }

    #[test]
    fn strided_copy_broadcast_strides() {
        // A stride-0 axis repeats (used by Expand).
        let src = [1.0f32, 2.0, 3.0];
        assert_eq!(
            strided_copy(&src, 0, &[3, 2], &[1, 0]),
            vec![1., 1., 2., 2., 3., 3.]
        );
        assert_eq!(
            strided_copy(&src, 0, &[2, 3], &[0, 1]),
            vec![1., 2., 3., 1., 2., 3.]
        );
        assert_eq!(strided_copy(&src, 2, &[3], &[-1]), vec![3., 2., 1.]);
        assert_eq!(strided_copy(&src, 1, &[], &[]), vec![2.]);
    }
}
