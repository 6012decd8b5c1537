//! Resize (opset 10 to 19): nearest and (multi-)linear interpolation.
//!
//! Nearest gathers rows through per-axis index tables (integer upsampling
//! factors, as `nn.Upsample(scale_factor=2)` exports, repeat values and
//! copy rows). Linear interpolation is separable: one pass per resized axis
//! over a `[outer, length, inner]` view.

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap, Port, PruneCx};
use super::common::{axis, fact, input, opt, PAR_THRESHOLD};
use super::pool::{build_vec, with_simd, MAX_OUTPUT_ELEMENTS};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{numel, strides, Data, Node, Storage, Tensor};
use std::mem::MaybeUninit;

/// Interpolation mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Nearest neighbour.
    Nearest,
    /// Linear along every resized axis (bilinear, trilinear...).
    Linear,
}

/// How an output coordinate maps back to an input coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordMode {
    /// `(x + 0.5) / scale - 0.5`
    HalfPixel,
    /// Half pixel, centred for non-integer output sizes (opset 19).
    HalfPixelSymmetric,
    /// Half pixel, but 0 when the output length is 1.
    PytorchHalfPixel,
    /// `x * (in - 1) / (out - 1)`
    AlignCorners,
    /// `x / scale`
    Asymmetric,
    /// `(x + 0.5) / scale` (opset 11-12).
    TfHalfPixelForNn,
}

/// Rounding of the source coordinate in nearest mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestMode {
    /// Round, halves down.
    RoundPreferFloor,
    /// Round, halves up.
    RoundPreferCeil,
    /// Floor.
    Floor,
    /// Ceil.
    Ceil,
    /// Opset 10: ceil when downsampling, truncate when upsampling.
    Simple,
}

/// `keep_aspect_ratio_policy` (opset 18, with `sizes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AspectPolicy {
    /// Each axis gets its size.
    Stretch,
    /// One scale for all resized axes: the smallest ratio.
    NotLarger,
    /// One scale for all resized axes: the largest ratio.
    NotSmaller,
}

/// The Resize op.
#[derive(Debug)]
pub struct Resize {
    /// Interpolation.
    pub mode: Mode,
    /// Coordinate transformation.
    pub coord: CoordMode,
    /// Rounding in nearest mode.
    pub nearest: NearestMode,
    /// Aspect ratio policy with `sizes`.
    pub policy: AspectPolicy,
    /// Axes that `scales`/`sizes` refer to (opset 18), all when `None`.
    pub axes: Option<Vec<i64>>,
    /// Antialiasing filter when downscaling (only accepted when it has no
    /// effect).
    pub antialias: bool,
    /// Opset 10 inputs: (X, scales).
    pub opset10: bool,
}

/// Builds Resize.
pub fn build(node: &Node, opset: i64) -> Result<Box<dyn Op>> {
    Ok(Box::new(Resize::from_node(node, opset)?))
}

impl Resize {
    /// Reads the attributes of a Resize node.
    pub fn from_node(node: &Node, opset: i64) -> Result<Resize> {
        if node.op_type != "Resize" {
            return Err(op_error(format!(
                "resize::build called for {}",
                node.op_type
            )));
        }
        let mode = match node.attr_string("mode", "nearest")?.as_str() {
            "nearest" => Mode::Nearest,
            "linear" | "bilinear" => Mode::Linear,
            o => {
                return Err(op_error(format!(
                    "Resize mode '{o}' is not supported (only nearest and linear)"
                )))
            }
        };
        let opset10 = opset < 11;
        let coord = if opset10 {
            CoordMode::Asymmetric
        } else {
            match node
                .attr_string("coordinate_transformation_mode", "half_pixel")?
                .as_str()
            {
                "half_pixel" => CoordMode::HalfPixel,
                "half_pixel_symmetric" => CoordMode::HalfPixelSymmetric,
                "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
                "align_corners" => CoordMode::AlignCorners,
                "asymmetric" => CoordMode::Asymmetric,
                "tf_half_pixel_for_nn" => CoordMode::TfHalfPixelForNn,
                o => {
                    return Err(op_error(format!(
                        "coordinate_transformation_mode '{o}' is not supported"
                    )))
                }
            }
        };
        let nearest = if opset10 {
            NearestMode::Simple
        } else {
            match node
                .attr_string("nearest_mode", "round_prefer_floor")?
                .as_str()
            {
                "round_prefer_floor" => NearestMode::RoundPreferFloor,
                "round_prefer_ceil" => NearestMode::RoundPreferCeil,
                "floor" => NearestMode::Floor,
                "ceil" => NearestMode::Ceil,
                o => return Err(op_error(format!("unknown nearest_mode '{o}'"))),
            }
        };
        let policy = match node
            .attr_string("keep_aspect_ratio_policy", "stretch")?
            .as_str()
        {
            "stretch" => AspectPolicy::Stretch,
            "not_larger" => AspectPolicy::NotLarger,
            "not_smaller" => AspectPolicy::NotSmaller,
            o => return Err(op_error(format!("unknown keep_aspect_ratio_policy '{o}'"))),
        };
        Ok(Resize {
            mode,
            coord,
            nearest,
            policy,
            axes: node.attr_ints("axes")?,
            antialias: node.attr_int("antialias", 0)? != 0,
            opset10,
        })
    }

    /// Gradient of linear Resize's input `x` (`inputs` as for `eval`) for
    /// the output gradient `dy`: the transpose of the forward's per-axis
    /// passes, in reverse order (each output's gradient goes back to its
    /// two source positions with their weights).
    pub fn linear_backward(&self, inputs: &[Option<&Tensor>], dy: &[f32]) -> Result<Vec<f32>> {
        let x = input(inputs, 0)?;
        let (s, z) = self.input_args(inputs);
        let g = self.geometry(x.shape(), Arg::from_tensor(s), Arg::from_tensor(z))?;
        let mut shape: Vec<usize> = g.iter().map(|a| a.out_len).collect();
        if dy.len() != numel(&shape) {
            return Err(op_error("the gradient does not match the output shape"));
        }
        if shape == x.shape() {
            return Ok(dy.to_vec());
        }
        let passes: Vec<(usize, Vec<Tap>)> = g
            .iter()
            .enumerate()
            .filter_map(|(a, geom)| self.linear_taps(geom).map(|t| (a, t)))
            .collect();
        let mut cur = dy.to_vec();
        for (a, taps) in passes.iter().rev() {
            let outer: usize = shape[..*a].iter().product();
            let inner: usize = shape[a + 1..].iter().product();
            cur = linear_pass_backward(&cur, outer, x.shape()[*a], inner, taps);
            shape[*a] = x.shape()[*a];
        }
        Ok(cur)
    }
}

/// A scales / sizes argument as known at a given time.
enum Arg<'a> {
    Absent,
    Empty,
    Value(&'a Tensor),
    Unknown,
}

impl<'a> Arg<'a> {
    fn from_fact(f: Option<&'a Fact>) -> Arg<'a> {
        match f {
            None => Arg::Absent,
            Some(f) if numel(&f.shape) == 0 => Arg::Empty,
            Some(f) => f.value.as_deref().map(Arg::Value).unwrap_or(Arg::Unknown),
        }
    }
    fn from_tensor(t: Option<&'a Tensor>) -> Arg<'a> {
        match t {
            None => Arg::Absent,
            Some(t) if t.is_empty() => Arg::Empty,
            Some(t) => Arg::Value(t),
        }
    }
}

/// Resolved geometry of one axis.
#[derive(Clone, Copy, Debug, PartialEq)]
struct AxisGeom {
    in_len: usize,
    out_len: usize,
    scale: f32,
}

impl Resize {
    fn input_args<'a, T>(&self, inputs: &[Option<&'a T>]) -> (Option<&'a T>, Option<&'a T>) {
        if self.opset10 {
            (opt(inputs, 1), None)
        } else {
            (opt(inputs, 2), opt(inputs, 3))
        }
    }

    /// Output length and effective scale of every axis.
    fn geometry(&self, shape: &[usize], scales: Arg, sizes: Arg) -> Result<Vec<AxisGeom>> {
        let rank = shape.len();
        let axes: Vec<usize> = match &self.axes {
            Some(a) => {
                let v: Vec<usize> = a.iter().map(|&x| axis(x, rank)).collect::<Result<_>>()?;
                let mut seen = vec![false; rank];
                for &x in &v {
                    if std::mem::replace(&mut seen[x], true) {
                        return Err(op_error(format!("axes {a:?} repeat an axis")));
                    }
                }
                v
            }
            None => (0..rank).collect(),
        };
        let mut g: Vec<AxisGeom> = shape
            .iter()
            .map(|&d| AxisGeom {
                in_len: d,
                out_len: d,
                scale: 1.0,
            })
            .collect();
        let unknown =
            || op_error("Resize needs constant scales or sizes to infer its output shape");
        match (scales, sizes) {
            (Arg::Unknown, _) | (_, Arg::Unknown) => return Err(unknown()),
            (Arg::Value(_), Arg::Value(_)) => {
                return Err(op_error("only one of scales and sizes may be given"))
            }
            (Arg::Value(s), _) => {
                if s.dtype().storage() != Storage::Float {
                    return Err(op_error(format!(
                        "scales must be a float tensor, got {}",
                        s.dtype()
                    )));
                }
                let v = s.f32s()?;
                if v.len() != axes.len() {
                    return Err(op_error(format!(
                        "scales has {} values for {} axes",
                        v.len(),
                        axes.len()
                    )));
                }
                for (&a, &sc) in axes.iter().zip(v) {
                    if !(sc > 0.0 && sc.is_finite()) {
                        return Err(op_error(format!("scales {v:?} must be positive")));
                    }
                    let out = (sc * shape[a] as f32).floor();
                    if out > MAX_OUTPUT_ELEMENTS as f32 {
                        return Err(op_error(format!(
                            "scales {v:?} give an output that is too large"
                        )));
                    }
                    g[a] = AxisGeom {
                        in_len: shape[a],
                        out_len: out as usize,
                        scale: sc,
                    };
                }
            }
            (_, Arg::Value(s)) => {
                if s.dtype().storage() != Storage::Int {
                    return Err(op_error(format!(
                        "sizes must be an integer tensor, got {}",
                        s.dtype()
                    )));
                }
                let v = s.i64s()?;
                if v.len() != axes.len() {
                    return Err(op_error(format!(
                        "sizes has {} values for {} axes",
                        v.len(),
                        axes.len()
                    )));
                }
                if v.iter()
                    .any(|&d| d < 0 || d as u64 > MAX_OUTPUT_ELEMENTS as u64)
                {
                    return Err(op_error(format!(
                        "sizes {v:?} must be non-negative and not huge"
                    )));
                }
                let ratio = |i: usize| v[i] as f32 / shape[axes[i]] as f32;
                match self.policy {
                    AspectPolicy::Stretch => {
                        for (i, &a) in axes.iter().enumerate() {
                            g[a] = AxisGeom {
                                in_len: shape[a],
                                out_len: v[i] as usize,
                                scale: ratio(i),
                            };
                        }
                    }
                    AspectPolicy::NotLarger | AspectPolicy::NotSmaller => {
                        let rs = (0..axes.len()).map(ratio);
                        let s = if self.policy == AspectPolicy::NotLarger {
                            rs.fold(f32::INFINITY, f32::min)
                        } else {
                            rs.fold(0.0, f32::max)
                        };
                        for &a in &axes {
                            let out = (s * shape[a] as f32).round();
                            if out.is_nan() || out > MAX_OUTPUT_ELEMENTS as f32 {
                                return Err(op_error(format!(
                                    "sizes {v:?} give an output that is too large"
                                )));
                            }
                            g[a] = AxisGeom {
                                in_len: shape[a],
                                out_len: out as usize,
                                scale: s,
                            };
                        }
                    }
                }
            }
            _ => {
                return Err(op_error(
                    "Resize needs scales or sizes (both are missing or empty)",
                ))
            }
        }
        for (a, x) in g.iter().enumerate() {
            if x.in_len == 0 && x.out_len > 0 {
                return Err(op_error(format!(
                    "cannot resize axis {a} of length 0 to {}",
                    x.out_len
                )));
            }
            if self.antialias && self.mode == Mode::Linear && x.scale < 1.0 {
                return Err(op_error("antialiased linear downscaling is not supported"));
            }
        }
        let total = g
            .iter()
            .try_fold(1usize, |acc, x| acc.checked_mul(x.out_len))
            .unwrap_or(usize::MAX);
        if total > MAX_OUTPUT_ELEMENTS {
            return Err(op_error("the output would be too large"));
        }
        Ok(g)
    }

    /// Source coordinate of output position `x` (ONNX Runtime's f32 maths).
    fn source_coord(&self, x: usize, g: &AxisGeom) -> f32 {
        let (xr, s, lr, lo) = (x as f32, g.scale, g.out_len as f32, g.in_len as f32);
        match self.coord {
            CoordMode::HalfPixel => (xr + 0.5) / s - 0.5,
            CoordMode::HalfPixelSymmetric => {
                let adjustment = lr / (s * lo);
                let center = lo / 2.0;
                let offset = center * (1.0 - adjustment);
                offset + (xr + 0.5) / s - 0.5
            }
            CoordMode::PytorchHalfPixel => {
                if g.out_len > 1 {
                    (xr + 0.5) / s - 0.5
                } else {
                    0.0
                }
            }
            CoordMode::AlignCorners => {
                if g.out_len == 1 {
                    0.0
                } else {
                    xr * (lo - 1.0) / (lr - 1.0)
                }
            }
            CoordMode::Asymmetric => xr / s,
            CoordMode::TfHalfPixelForNn => (xr + 0.5) / s,
        }
    }

    /// Nearest source index per output position.
    fn nearest_table(&self, g: &AxisGeom) -> Vec<usize> {
        let down = g.scale < 1.0;
        (0..g.out_len)
            .map(|p| {
                let c = self.source_coord(p, g);
                let i = match self.nearest {
                    NearestMode::RoundPreferFloor => {
                        if c == (c as i64) as f32 + 0.5 {
                            c.floor()
                        } else {
                            c.round()
                        }
                    }
                    NearestMode::RoundPreferCeil => {
                        if c == (c as i64) as f32 + 0.5 {
                            c.ceil()
                        } else {
                            c.round()
                        }
                    }
                    NearestMode::Floor => c.floor(),
                    NearestMode::Ceil => c.ceil(),
                    NearestMode::Simple => {
                        if down {
                            c.ceil()
                        } else {
                            c.trunc()
                        }
                    }
                };
                (i.max(0.0) as usize).min(g.in_len.saturating_sub(1))
            })
            .collect()
    }

    /// Linear taps `(i0, i1, w0, w1)` per output position; `None` when the
    /// pass is the identity.
    fn linear_taps(&self, g: &AxisGeom) -> Option<Vec<(usize, usize, f32, f32)>> {
        let last = g.in_len.saturating_sub(1);
        let taps: Vec<(usize, usize, f32, f32)> = (0..g.out_len)
            .map(|p| {
                let c = self.source_coord(p, g).clamp(0.0, last as f32);
                let i0 = (c as usize).min(last);
                let i1 = (i0 + 1).min(last);
                if i0 == i1 {
                    (i0, i1, 1.0, 0.0)
                } else {
                    let w1 = c - i0 as f32;
                    (i0, i1, 1.0 - w1, w1)
                }
            })
            .collect();
        let identity =
            g.out_len == g.in_len && taps.iter().enumerate().all(|(p, t)| t.0 == p && t.3 == 0.0);
        (!identity).then_some(taps)
    }
}

/// Nearest resize through per-axis index tables.
fn nearest<T: Copy + Send + Sync>(
    x: &[T],
    in_shape: &[usize],
    out_shape: &[usize],
    tables: &[Vec<usize>],
) -> Vec<T> {
    let rank = in_shape.len();
    let total: usize = out_shape.iter().product();
    if rank == 0 || total == 0 {
        return x[..total.min(x.len())].to_vec();
    }
    let last = rank - 1;
    let row_len = out_shape[last];
    let in_row = in_shape[last];
    let table = &tables[last];
    // Integer upsampling factor along the last axis: table[p] == p / f.
    let factor = (in_row > 0).then(|| row_len / in_row).filter(|&f| {
        f > 0 && f * in_row == row_len && table.iter().enumerate().all(|(p, &i)| i == p / f)
    });
    let in_str = strides(in_shape);
    let row_strides = strides(&out_shape[..last]);
    // Source offset of output row `r`, from the tables of the outer axes.
    let src_off = |r: usize| -> usize {
        (0..last)
            .map(|a| tables[a][(r / row_strides[a]) % out_shape[a]] * in_str[a])
            .sum()
    };
    let gather = |src: &[T], row: &mut [MaybeUninit<T>]| match factor {
        Some(1) => {
            for (o, &v) in row.iter_mut().zip(src) {
                o.write(v);
            }
        }
        Some(2) => {
            for (o, &v) in row.chunks_exact_mut(2).zip(src) {
                o[0].write(v);
                o[1].write(v);
            }
        }
        Some(f) => {
            for (o, &v) in row.chunks_exact_mut(f).zip(src) {
                for e in o {
                    e.write(v);
                }
            }
        }
        None => {
            for (o, &i) in row.iter_mut().zip(table) {
                o.write(src[i]);
            }
        }
    };
    let par = total >= PAR_THRESHOLD;
    let rows_per_task = if par {
        (PAR_THRESHOLD / 4 / row_len).max(1)
    } else {
        total / row_len
    };
    let fill = |start: usize, chunk: &mut [MaybeUninit<T>]| {
        with_simd(
            #[inline(always)]
            || {
                let r0 = start / row_len;
                // Rows are consecutive along the innermost outer axis: only
                // its table changes until it wraps.
                let (inner_axis, inner_len) = if last > 0 {
                    (last - 1, out_shape[last - 1])
                } else {
                    (0, 1)
                };
                let mut base = 0usize;
                let mut prev: Option<usize> = None;
                for k in 0..chunk.len() / row_len {
                    let r = r0 + k;
                    let i = r % inner_len;
                    if k == 0 || i == 0 {
                        base = if last > 0 {
                            src_off(r) - tables[inner_axis][i] * in_str[inner_axis]
                        } else {
                            0
                        };
                    }
                    let off = if last > 0 {
                        base + tables[inner_axis][i] * in_str[inner_axis]
                    } else {
                        0
                    };
                    if prev == Some(off) {
                        chunk.copy_within((k - 1) * row_len..k * row_len, k * row_len);
                    } else {
                        gather(
                            &x[off..off + in_row],
                            &mut chunk[k * row_len..(k + 1) * row_len],
                        );
                    }
                    prev = Some(off);
                }
            },
        )
    };
    // SAFETY: each chunk holds whole rows and every row is written, by
    // `gather` (every element of the row) or by copying the previous one.
    unsafe { build_vec(total, rows_per_task * row_len, par, fill) }
}

/// One linear pass over `[outer, in_len, inner]` into `[outer, out_len, inner]`.
fn linear_pass(
    src: &[f32],
    outer: usize,
    in_len: usize,
    inner: usize,
    taps: &[(usize, usize, f32, f32)],
) -> Vec<f32> {
    let ob = taps.len() * inner;
    let ib = in_len * inner;
    let mut dst = vec![0.0f32; outer * ob];
    if dst.is_empty() {
        return dst;
    }
    let block = |(d, s): (&mut [f32], &[f32])| {
        if inner == 1 {
            for (o, &(i0, i1, w0, w1)) in d.iter_mut().zip(taps) {
                *o = s[i0] * w0 + s[i1] * w1;
            }
        } else {
            for (drow, &(i0, i1, w0, w1)) in d.chunks_exact_mut(inner).zip(taps) {
                let r0 = &s[i0 * inner..(i0 + 1) * inner];
                if w1 == 0.0 {
                    drow.copy_from_slice(r0);
                    continue;
                }
                let r1 = &s[i1 * inner..(i1 + 1) * inner];
                for ((o, &a), &b) in drow.iter_mut().zip(r0).zip(r1) {
                    *o = a * w0 + b * w1;
                }
            }
        }
    };
    if dst.len() >= PAR_THRESHOLD && outer > 1 {
        let min = (PAR_THRESHOLD / 4 / ob).max(1);
        dst.par_chunks_mut(ob)
            .zip(src.par_chunks(ib.max(1)))
            .with_min_len(min)
            .for_each(block);
    } else {
        dst.chunks_mut(ob)
            .zip(src.chunks(ib.max(1)))
            .for_each(block);
    }
    dst
}

/// One output position of a linear pass: `(i0, i1, w0, w1)`.
type Tap = (usize, usize, f32, f32);

/// The transpose of [`linear_pass`]: `[outer, out_len, inner]` gradients
/// into `[outer, in_len, inner]`, blocks of `outer` in parallel.
fn linear_pass_backward(
    d: &[f32],
    outer: usize,
    in_len: usize,
    inner: usize,
    taps: &[Tap],
) -> Vec<f32> {
    let (ob, ib) = (taps.len() * inner, in_len * inner);
    let mut dst = vec![0.0f32; outer * ib];
    if dst.is_empty() || ob == 0 {
        return dst;
    }
    let block = |(s, d): (&mut [f32], &[f32])| {
        for (drow, &(i0, i1, w0, w1)) in d.chunks_exact(inner).zip(taps) {
            for (o, &g) in s[i0 * inner..(i0 + 1) * inner].iter_mut().zip(drow) {
                *o += w0 * g;
            }
            if w1 != 0.0 {
                for (o, &g) in s[i1 * inner..(i1 + 1) * inner].iter_mut().zip(drow) {
                    *o += w1 * g;
                }
            }
        }
    };
    if dst.len() >= PAR_THRESHOLD && outer > 1 {
        dst.par_chunks_mut(ib).zip(d.par_chunks(ob)).for_each(block);
    } else {
        dst.chunks_mut(ib).zip(d.chunks(ob)).for_each(block);
    }
    dst
}

impl Op for Resize {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        match cx.axis(0) {
            // Scaling the channel axis itself would mix channels.
            Some(a) => {
                if cx.fact(3).is_some() && !cx.is_fixed(3) {
                    return None;
                }
                cx.keep_channels(a)
            }
            None => cx.keep_channels(0),
        }
    }

    fn prune(&self, cx: &mut dyn PruneCx) -> Result<()> {
        // Explicit output sizes name the channel count.
        let (Some(a), Some(n)) = (cx.axis(Port::In(0)), cx.kept(Port::In(0)).map(|k| k.len()))
        else {
            return Ok(());
        };
        let Some(t) = cx.input_fact(3).and_then(|f| f.value.clone()) else {
            return Ok(());
        };
        let mut sizes = t.to_i64_vec();
        let full = cx.input_fact(0).map(|f| f.shape.len()).unwrap_or(0);
        // With `axes`, sizes list only those axes.
        let j = match &self.axes {
            Some(ax) => ax
                .iter()
                .position(|&x| (if x < 0 { x + full as i64 } else { x }) == a as i64),
            None => Some(a),
        };
        if let Some(j) = j.filter(|&j| j < sizes.len()) {
            sizes[j] = n as i64;
            cx.set_input(3, Tensor::from_i64(t.shape().to_vec(), sizes))?;
        }
        Ok(())
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        if self.mode == Mode::Linear && x.dtype.storage() != Storage::Float {
            return Err(op_error(format!(
                "linear Resize needs a float tensor, got {}",
                x.dtype
            )));
        }
        let (s, z) = self.input_args(inputs);
        let g = self.geometry(&x.shape, Arg::from_fact(s), Arg::from_fact(z))?;
        Ok(vec![Fact::new(
            x.dtype,
            g.iter().map(|a| a.out_len).collect(),
        )])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let (s, z) = self.input_args(inputs);
        let g = self.geometry(x.shape(), Arg::from_tensor(s), Arg::from_tensor(z))?;
        let out_shape: Vec<usize> = g.iter().map(|a| a.out_len).collect();
        if out_shape == x.shape() {
            // As ONNX Runtime: an unchanged shape is a copy, whatever the scales.
            return Ok(vec![x.clone()]);
        }
        let data = match self.mode {
            Mode::Nearest => {
                let tables: Vec<Vec<usize>> = g.iter().map(|a| self.nearest_table(a)).collect();
                match x.data() {
                    Data::F32(v) => Data::F32(nearest(v, x.shape(), &out_shape, &tables)),
                    Data::I64(v) => Data::I64(nearest(v, x.shape(), &out_shape, &tables)),
                    Data::Bool(v) => Data::Bool(nearest(v, x.shape(), &out_shape, &tables)),
                }
            }
            Mode::Linear => {
                let v = x.f32s()?;
                let mut shape = x.shape().to_vec();
                let mut cur: Option<Vec<f32>> = None;
                for (a, geom) in g.iter().enumerate() {
                    let Some(taps) = self.linear_taps(geom) else {
                        continue;
                    };
                    let outer: usize = shape[..a].iter().product();
                    let inner: usize = shape[a + 1..].iter().product();
                    let next =
                        linear_pass(cur.as_deref().unwrap_or(v), outer, shape[a], inner, &taps);
                    shape[a] = geom.out_len;
                    cur = Some(next);
                }
                Data::F32(cur.unwrap_or_else(|| v.to_vec()))
            }
        };
        Ok(vec![Tensor::new(x.dtype(), out_shape, data)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute, DType};

    fn op(opset: i64, attrs: &[(&str, &str)]) -> Box<dyn Op> {
        let a: Vec<Attribute> = attrs
            .iter()
            .map(|(k, v)| Attribute::new(k, AttrValue::String(v.as_bytes().to_vec())))
            .collect();
        build(
            &Node::new("r", "Resize", &["x", "roi", "scales", "sizes"], &["y"], a),
            opset,
        )
        .unwrap()
    }

    /// Runs with `scales` or `sizes` (the other given as an empty tensor),
    /// checking that inference agrees.
    fn run(
        o: &dyn Op,
        x: &Tensor,
        scales: Option<&[f32]>,
        sizes: Option<&[i64]>,
    ) -> Result<Tensor> {
        let roi = Tensor::from_f32(vec![0], vec![]);
        let sc = match scales {
            Some(s) => Tensor::from_f32(vec![s.len()], s.to_vec()),
            None => Tensor::from_f32(vec![0], vec![]),
        };
        let sz = sizes.map(|s| Tensor::from_i64(vec![s.len()], s.to_vec()));
        let y = o
            .eval(&[Some(x), Some(&roi), Some(&sc), sz.as_ref()])?
            .remove(0);
        let fx = Fact::new(x.dtype(), x.shape().to_vec());
        let (fr, fs, fz) = (Fact::known(roi), Fact::known(sc), sz.map(Fact::known));
        let f = o.infer(&[Some(&fx), Some(&fr), Some(&fs), fz.as_ref()])?;
        assert_eq!(f[0].shape, y.shape());
        Ok(y)
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    fn ramp(shape: Vec<usize>) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape, (1..=n).map(|v| v as f32).collect())
    }

    #[test]
    fn nearest_upsample_2x_torch_export() {
        // nn.Upsample(scale_factor=2): asymmetric + floor
        let o = op(
            13,
            &[
                ("coordinate_transformation_mode", "asymmetric"),
                ("nearest_mode", "floor"),
            ],
        );
        let x = ramp(vec![1, 1, 2, 2]);
        let y = run(o.as_ref(), &x, Some(&[1., 1., 2., 2.]), None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 4, 4]);
        assert_eq!(
            y.f32s().unwrap(),
            &[1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
        );
        // large, parallel, factor 2 and 3, compared with the direct formula
        let x = ramp(vec![2, 8, 20, 20]);
        for f in [2usize, 3] {
            let y = run(o.as_ref(), &x, Some(&[1., 1., f as f32, f as f32]), None).unwrap();
            let (ys, xs) = (y.f32s().unwrap(), x.f32s().unwrap());
            let (oh, ow) = (20 * f, 20 * f);
            for i in (0..ys.len()).step_by(97) {
                let (p, h, w) = (i / (oh * ow), i / ow % oh, i % ow);
                assert_eq!(ys[i], xs[p * 400 + (h / f) * 20 + w / f]);
            }
        }
    }

    #[test]
    fn nearest_modes_ort() {
        // onnxruntime 1.31, x = 1..=4 as [1,1,1,4]
        let x = ramp(vec![1, 1, 1, 4]);
        let cases: &[(&str, &str, &[f32], &[f32])] = &[
            (
                "half_pixel",
                "round_prefer_floor",
                &[1., 1., 1., 2.5],
                &[1., 1., 1., 2., 2., 3., 3., 3., 4., 4.],
            ),
            (
                "half_pixel",
                "round_prefer_ceil",
                &[1., 1., 1., 2.5],
                &[1., 1., 2., 2., 2., 3., 3., 4., 4., 4.],
            ),
            (
                "half_pixel",
                "floor",
                &[1., 1., 1., 2.5],
                &[1., 1., 1., 1., 2., 2., 3., 3., 3., 4.],
            ),
            (
                "half_pixel",
                "ceil",
                &[1., 1., 1., 2.5],
                &[1., 2., 2., 2., 3., 3., 4., 4., 4., 4.],
            ),
            (
                "asymmetric",
                "round_prefer_floor",
                &[1., 1., 1., 2.5],
                &[1., 1., 2., 2., 3., 3., 3., 4., 4., 4.],
            ),
            (
                "align_corners",
                "round_prefer_floor",
                &[1., 1., 1., 2.5],
                &[1., 1., 2., 2., 2., 3., 3., 3., 4., 4.],
            ),
            (
                "pytorch_half_pixel",
                "round_prefer_floor",
                &[1., 1., 1., 0.25],
                &[1.],
            ),
            (
                "half_pixel",
                "round_prefer_floor",
                &[1., 1., 1., 0.6],
                &[1., 3.],
            ),
            (
                "tf_half_pixel_for_nn",
                "round_prefer_floor",
                &[1., 1., 1., 0.6],
                &[2., 3.],
            ),
            (
                "half_pixel_symmetric",
                "round_prefer_floor",
                &[1., 1., 1., 1.7],
                &[1., 2., 2., 3., 3., 4.],
            ),
        ];
        for &(cm, nm, scales, want) in cases {
            let o = op(
                19,
                &[("coordinate_transformation_mode", cm), ("nearest_mode", nm)],
            );
            let y = run(o.as_ref(), &x, Some(scales), None).unwrap();
            assert_eq!(y.f32s().unwrap(), want, "{cm} {nm}");
        }
    }

    #[test]
    fn linear_modes_ort() {
        // onnxruntime 1.31, x = 1..=12 as [1,1,3,4], scales [1,1,2,1.5]
        let x = ramp(vec![1, 1, 3, 4]);
        let cases: &[(&str, &[f32])] = &[
            (
                "half_pixel",
                &[
                    1.0, 1.5, 2.1666665, 2.8333333, 3.5, 4.0, 2.0, 2.5, 3.1666665, 3.8333333, 4.5,
                    5.0, 4.0, 4.5, 5.166666, 5.833333, 6.5, 7.0, 6.0, 6.5, 7.1666665, 7.8333335,
                    8.5, 9.0, 8.0, 8.5, 9.166666, 9.833334, 10.5, 11.0, 9.0, 9.5, 10.166666,
                    10.833334, 11.5, 12.0,
                ],
            ),
            (
                "asymmetric",
                &[
                    1.0, 1.6666666, 2.3333333, 3.0, 3.6666667, 4.0, 3.0, 3.6666665, 4.333333, 5.0,
                    5.6666665, 6.0, 5.0, 5.6666665, 6.3333335, 7.0, 7.666667, 8.0, 7.0, 7.666667,
                    8.333334, 9.0, 9.666667, 10.0, 9.0, 9.666667, 10.333334, 11.0, 11.666667, 12.0,
                    9.0, 9.666667, 10.333334, 11.0, 11.666667, 12.0,
                ],
            ),
            (
                "align_corners",
                &[
                    1.0, 1.6, 2.2, 2.8, 3.4, 4.0, 2.6, 3.2, 3.8, 4.4, 5.0, 5.6, 4.2, 4.8, 5.4, 6.0,
                    6.6, 7.2, 5.8, 6.4, 7.0, 7.6, 8.2, 8.8, 7.4, 8.0, 8.6, 9.2, 9.8, 10.4, 9.0,
                    9.6, 10.2, 10.8, 11.4, 12.0,
                ],
            ),
            (
                "pytorch_half_pixel",
                &[
                    1.0, 1.5, 2.1666665, 2.8333333, 3.5, 4.0, 2.0, 2.5, 3.1666665, 3.8333333, 4.5,
                    5.0, 4.0, 4.5, 5.166666, 5.833333, 6.5, 7.0, 6.0, 6.5, 7.1666665, 7.8333335,
                    8.5, 9.0, 8.0, 8.5, 9.166666, 9.833334, 10.5, 11.0, 9.0, 9.5, 10.166666,
                    10.833334, 11.5, 12.0,
                ],
            ),
        ];
        for &(cm, want) in cases {
            let o = op(
                13,
                &[("mode", "linear"), ("coordinate_transformation_mode", cm)],
            );
            let y = run(o.as_ref(), &x, Some(&[1., 1., 2., 1.5]), None).unwrap();
            assert_eq!(y.shape(), &[1, 1, 6, 6]);
            close(y.f32s().unwrap(), want);
        }
    }

    #[test]
    fn linear_sizes_and_downsample_ort() {
        // onnxruntime 1.31: x = 1..=16 as [1,1,4,4]
        let x = ramp(vec![1, 1, 4, 4]);
        let o = op(13, &[("mode", "linear")]);
        let y = run(o.as_ref(), &x, None, Some(&[1, 1, 3, 2])).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 2]);
        close(
            y.f32s().unwrap(),
            &[2.1666667, 4.166667, 7.5, 9.5, 12.833333, 14.833333],
        );
        let y = run(o.as_ref(), &x, Some(&[1., 1., 0.5, 0.5]), None).unwrap();
        close(y.f32s().unwrap(), &[3.5, 5.5, 11.5, 13.5]);
        let o = op(
            13,
            &[
                ("mode", "linear"),
                ("coordinate_transformation_mode", "align_corners"),
            ],
        );
        let y = run(o.as_ref(), &x, None, Some(&[1, 1, 1, 3])).unwrap();
        close(y.f32s().unwrap(), &[1., 2.5, 4.]);
        // pytorch_half_pixel with an output length of 1
        let o = op(
            13,
            &[
                ("mode", "linear"),
                ("coordinate_transformation_mode", "pytorch_half_pixel"),
            ],
        );
        let y = run(o.as_ref(), &x, None, Some(&[1, 1, 1, 2])).unwrap();
        close(y.f32s().unwrap(), &[1.5, 3.5]);
    }

    #[test]
    fn linear_3d_and_non_spatial_axes() {
        // trilinear on [1,1,2,2,2] -> [1,1,3,3,3] with align_corners: midpoints average
        let x = ramp(vec![1, 1, 2, 2, 2]);
        let o = op(
            13,
            &[
                ("mode", "linear"),
                ("coordinate_transformation_mode", "align_corners"),
            ],
        );
        let y = run(o.as_ref(), &x, None, Some(&[1, 1, 3, 3, 3])).unwrap();
        let ys = y.f32s().unwrap();
        assert_eq!(ys[0], 1.0);
        assert_eq!(ys[26], 8.0);
        assert!((ys[13] - 4.5).abs() < 1e-6);
        // resizing the channel axis of a 2-D tensor
        let x = Tensor::from_f32(vec![2, 2], vec![0., 10., 20., 30.]);
        let y = run(o.as_ref(), &x, Some(&[1.5, 1.0]), None).unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        close(y.f32s().unwrap(), &[0., 10., 10., 20., 20., 30.]);
    }

    #[test]
    fn linear_large_matches_bilinear_formula() {
        let (c, h, w) = (16, 20, 20);
        let x = ramp(vec![1, c, h, w]);
        let o = op(13, &[("mode", "linear")]);
        let y = run(o.as_ref(), &x, Some(&[1., 1., 2., 2.]), None).unwrap();
        let (ys, xs) = (y.f32s().unwrap(), x.f32s().unwrap());
        let coord = |p: usize, n: usize| {
            let s = ((p as f32 + 0.5) / 2.0 - 0.5).clamp(0.0, (n - 1) as f32);
            let i0 = s as usize;
            (i0, (i0 + 1).min(n - 1), s - i0 as f32)
        };
        for i in (0..ys.len()).step_by(61) {
            let (ch, oh, ow) = (i / 1600, i / 40 % 40, i % 40);
            let ((y0, y1, fy), (x0, x1, fx)) = (coord(oh, h), coord(ow, w));
            let at = |a: usize, b: usize| xs[ch * 400 + a * w + b];
            let want = at(y0, x0) * (1. - fy) * (1. - fx)
                + at(y0, x1) * (1. - fy) * fx
                + at(y1, x0) * fy * (1. - fx)
                + at(y1, x1) * fy * fx;
            assert!((ys[i] - want).abs() < 1e-4, "{i}: {} vs {want}", ys[i]);
        }
    }

    #[test]
    fn opset10_and_axes_and_policy() {
        // opset 10: (X, scales), asymmetric, truncation when upsampling
        let o = build(
            &Node::new("r", "Resize", &["x", "scales"], &["y"], vec![]),
            10,
        )
        .unwrap();
        let x = ramp(vec![1, 1, 1, 3]);
        let s = Tensor::from_f32(vec![4], vec![1., 1., 1., 1.7]);
        let y = o.eval(&[Some(&x), Some(&s)]).unwrap().remove(0);
        // onnxruntime 1.31 (opset 10)
        assert_eq!(y.f32s().unwrap(), &[1., 1., 2., 2., 3.]);
        let f = o
            .infer(&[
                Some(&Fact::new(DType::F32, vec![1, 1, 1, 3])),
                Some(&Fact::known(s)),
            ])
            .unwrap();
        assert_eq!(f[0].shape, vec![1, 1, 1, 5]);
        // opset 18 axes attribute: scales for the last two axes only
        let mut n = Node::new("r", "Resize", &["x", "", "scales"], &["y"], vec![]);
        n.attrs
            .push(Attribute::new("axes", AttrValue::Ints(vec![2, -1])));
        let o = build(&n, 18).unwrap();
        let x = ramp(vec![1, 1, 2, 2]);
        let s = Tensor::from_f32(vec![2], vec![2., 1.]);
        let y = o.eval(&[Some(&x), None, Some(&s)]).unwrap().remove(0);
        assert_eq!(y.shape(), &[1, 1, 4, 2]);
        assert_eq!(y.f32s().unwrap(), &[1., 2., 1., 2., 3., 4., 3., 4.]);
        // keep_aspect_ratio_policy with sizes (onnxruntime 1.31)
        let x = ramp(vec![1, 1, 2, 4]);
        let policy = |p: &str| {
            let mut n = Node::new(
                "r",
                "Resize",
                &["x", "roi", "scales", "sizes"],
                &["y"],
                vec![],
            );
            n.attrs
                .push(Attribute::new("axes", AttrValue::Ints(vec![2, 3])));
            n.attrs.push(Attribute::new(
                "keep_aspect_ratio_policy",
                AttrValue::String(p.as_bytes().to_vec()),
            ));
            build(&n, 18).unwrap()
        };
        let o = policy("not_larger");
        let y = run(o.as_ref(), &x, None, Some(&[3, 3])).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 3]);
        assert_eq!(y.f32s().unwrap(), &[1., 2., 4., 5., 6., 8.]);
        let o = policy("not_smaller");
        let y = run(o.as_ref(), &x, None, Some(&[3, 3])).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 6]);
        // without axes, every axis takes the common scale
        let o = op(18, &[("keep_aspect_ratio_policy", "not_smaller")]);
        let y = run(o.as_ref(), &x, None, Some(&[1, 1, 3, 3])).unwrap();
        assert_eq!(y.shape(), &[2, 2, 3, 6]);
        let o = policy("not_smaller");
        let y = run(o.as_ref(), &x, None, Some(&[3, 3])).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 6]);
        assert_eq!(&y.f32s().unwrap()[..6], &[1., 1., 2., 3., 3., 4.]);
        assert_eq!(&y.f32s().unwrap()[12..], &[5., 5., 6., 7., 7., 8.]);
    }

    #[test]
    fn int_data_nearest_and_shape_floor() {
        let x = Tensor::from_int(DType::U8, vec![1, 1, 1, 3], vec![10, 20, 30]);
        let o = op(13, &[]);
        // floor(3 * 0.67) = 2
        let y = run(o.as_ref(), &x, Some(&[1., 1., 1., 0.67]), None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 1, 2]);
        assert_eq!(y.dtype(), DType::U8);
        assert_eq!(y.i64s().unwrap(), &[10, 30]);
        // identity
        let y = run(o.as_ref(), &x, Some(&[1., 1., 1., 1.]), None).unwrap();
        assert_eq!(y, x);
        // ONNX Runtime copies when the shape is unchanged: floor(3 * 1.3) = 3
        let o = op(
            13,
            &[
                ("coordinate_transformation_mode", "asymmetric"),
                ("nearest_mode", "floor"),
            ],
        );
        let y = run(o.as_ref(), &x, Some(&[1., 1., 1., 1.3]), None).unwrap();
        assert_eq!(y, x);
    }

    #[test]
    fn errors() {
        let x = ramp(vec![1, 1, 2, 2]);
        let o = op(13, &[]);
        assert!(run(o.as_ref(), &x, None, None).is_err());
        assert!(run(o.as_ref(), &x, Some(&[1., 1., 2., 2.]), Some(&[1, 1, 4, 4])).is_err());
        assert!(run(o.as_ref(), &x, Some(&[1., 2., 2.]), None).is_err());
        assert!(run(o.as_ref(), &x, Some(&[1., 1., -2., 2.]), None).is_err());
        assert!(run(o.as_ref(), &x, Some(&[1., 1., f32::NAN, 2.]), None).is_err());
        assert!(run(o.as_ref(), &x, Some(&[1., 1., 1e30, 1e30]), None).is_err());
        assert!(run(o.as_ref(), &x, None, Some(&[1, 1, -1, 2])).is_err());
        assert!(run(o.as_ref(), &x, None, Some(&[1, 1, 1 << 40, 2])).is_err());
        assert!(run(o.as_ref(), &x, None, Some(&[1 << 20, 1 << 20, 4, 4])).is_err());
        let bad = |k: &str, v: &str| {
            build(
                &Node::new(
                    "r",
                    "Resize",
                    &["x"],
                    &["y"],
                    vec![Attribute::new(k, AttrValue::String(v.as_bytes().to_vec()))],
                ),
                13,
            )
        };
        assert!(bad("mode", "cubic").is_err());
        assert!(bad("coordinate_transformation_mode", "tf_crop_and_resize").is_err());
        assert!(bad("nearest_mode", "nearest").is_err());
        assert!(bad("keep_aspect_ratio_policy", "fit").is_err());
        // unknown scales at inference time
        let fx = Fact::new(DType::F32, vec![1, 1, 2, 2]);
        let fs = Fact::new(DType::F32, vec![4]);
        assert!(o.infer(&[Some(&fx), None, Some(&fs)]).is_err());
        // antialiased linear downscale
        let mut n = Node::new("r", "Resize", &["x", "", "scales"], &["y"], vec![]);
        n.attrs.push(Attribute::new(
            "mode",
            AttrValue::String(b"linear".to_vec()),
        ));
        n.attrs.push(Attribute::new("antialias", AttrValue::Int(1)));
        let o = build(&n, 18).unwrap();
        assert!(run(o.as_ref(), &x, Some(&[1., 1., 0.5, 0.5]), None).is_err());
        assert!(run(o.as_ref(), &x, Some(&[1., 1., 2., 2.]), None).is_ok());
        // linear on integers
        let o = op(13, &[("mode", "linear")]);
        let xi = Tensor::from_i64(vec![1, 2], vec![1, 2]);
        assert!(run(o.as_ref(), &xi, Some(&[1., 2.]), None).is_err());
    }
}
