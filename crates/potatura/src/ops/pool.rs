//! Pooling: MaxPool, AveragePool (any number of spatial axes) and the global
//! variants.
//!
//! Max and average pooling over a box window are separable: pooling an N-D
//! window equals pooling along each spatial axis in turn (with the average's
//! divisor factoring into a per-axis divisor, for both `count_include_pad`
//! settings). Each pass works on a `[outer, length, inner]` view, so the
//! inner loops run over contiguous rows.

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap};
use super::common::{fact, input, PAR_THRESHOLD};
use super::reduce::{max_f32, sum_f32};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{DType, Node, Storage, Tensor};

/// Largest number of elements an op of this family will allocate for an
/// output (a guard against malformed models; 2^31 values, 8 GiB of f32).
pub const MAX_OUTPUT_ELEMENTS: usize = 1 << 31;

/// Runs `f` compiled with AVX2 and FMA enabled when the CPU has them (the
/// build targets baseline x86-64). Loops only benefit when `f` and what it
/// calls are inlined into it: pass an `#[inline(always)]` closure calling
/// `#[inline(always)]` functions.
#[inline(always)]
pub fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features `avx2` is compiled with.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// A vector of `n` values built without zero-initialising it: `fill` gets
/// consecutive chunks of `chunk` values (the last may be shorter) with the
/// index of their first element, in parallel when `par`.
///
/// # Safety
/// `fill` must write every element of every chunk it is given.
pub unsafe fn build_vec<T: Send>(
    n: usize,
    chunk: usize,
    par: bool,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let spare = &mut v.spare_capacity_mut()[..n];
    let chunk = chunk.max(1);
    if par {
        spare
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| fill(i * chunk, c));
    } else {
        spare
            .chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| fill(i * chunk, c));
    }
    // SAFETY: the chunks cover `spare[..n]` and the caller guarantees
    // `fill` initialised each of them.
    unsafe { v.set_len(n) };
    v
}

/// `n` f32 values made chunk by chunk without zero-initialising them
/// first: `values(start, len)` yields the `len` values from element
/// `start` on. Chunks run in parallel when `n` is large, each loop
/// compiled with AVX2/FMA where the CPU has them (see [`with_simd`]), so
/// pass `#[inline(always)]`-friendly iterators (slice iterators, `map`,
/// `zip`).
///
/// # Panics
/// If an iterator yields fewer than `len` values (a caller bug).
pub fn collect_chunks<I: Iterator<Item = f32>>(
    n: usize,
    chunk: usize,
    values: impl Fn(usize, usize) -> I + Sync,
) -> Vec<f32> {
    let fill = |start: usize, out: &mut [std::mem::MaybeUninit<f32>]| {
        let it = values(start, out.len());
        let written = with_simd(
            #[inline(always)]
            || {
                let mut k = 0;
                for (o, v) in out.iter_mut().zip(it) {
                    o.write(v);
                    k += 1;
                }
                k
            },
        );
        assert_eq!(written, out.len(), "collect_chunks: short chunk at {start}");
    };
    // SAFETY: `fill` writes every element of its chunk or panics (and a
    // panic drops the vector before its length is set).
    unsafe { build_vec(n, chunk, n >= super::common::PAR_THRESHOLD, fill) }
}

/// Max or average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum over the window.
    Max,
    /// Mean over the window.
    Avg,
}

/// How padding is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPad {
    /// Explicit `pads`.
    NotSet,
    /// No padding.
    Valid,
    /// Output = ceil(input / stride); extra padding at the end.
    SameUpper,
    /// Output = ceil(input / stride); extra padding at the start.
    SameLower,
}

impl AutoPad {
    /// Parses the `auto_pad` attribute.
    pub fn parse(s: &str) -> Result<AutoPad> {
        Ok(match s {
            "NOTSET" | "" => AutoPad::NotSet,
            "VALID" => AutoPad::Valid,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            o => return Err(op_error(format!("unknown auto_pad '{o}'"))),
        })
    }
}

/// MaxPool or AveragePool with its window attributes.
#[derive(Debug)]
pub struct Pool {
    /// Max or average.
    pub kind: PoolKind,
    /// Window size per spatial axis.
    pub kernel: Vec<usize>,
    /// Step per spatial axis.
    pub strides: Vec<usize>,
    /// Window dilation per spatial axis.
    pub dilations: Vec<usize>,
    /// Explicit padding: all begins, then all ends (used with `NotSet`).
    pub pads: Vec<usize>,
    /// Automatic padding.
    pub auto_pad: AutoPad,
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
    /// AveragePool: divide by the window size including padding.
    pub count_include_pad: bool,
}

/// GlobalMaxPool or GlobalAveragePool.
#[derive(Debug)]
pub struct GlobalPool {
    /// Max or average.
    pub kind: PoolKind,
}

/// Reads a per-axis list attribute of `n` positive values (default 1).
fn per_axis(node: &Node, name: &str, n: usize) -> Result<Vec<usize>> {
    match node.attr_ints(name)? {
        None => Ok(vec![1; n]),
        Some(v) if v.len() == n && v.iter().all(|&x| x >= 1 && x <= i32::MAX as i64) => {
            Ok(v.iter().map(|&x| x as usize).collect())
        }
        Some(v) => Err(op_error(format!(
            "{name} {v:?} must hold {n} positive values (one per spatial axis)"
        ))),
    }
}

/// Builds the pooling ops.
pub fn build(node: &Node, _opset: i64) -> Result<Box<dyn Op>> {
    let kind = match node.op_type.as_str() {
        "MaxPool" | "GlobalMaxPool" => PoolKind::Max,
        "AveragePool" | "GlobalAveragePool" => PoolKind::Avg,
        o => return Err(op_error(format!("pool::build called for {o}"))),
    };
    if node.op_type.starts_with("Global") {
        return Ok(Box::new(GlobalPool { kind }));
    }
    if node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(op_error("MaxPool's Indices output is not supported"));
    }
    let kernel = node
        .attr_ints("kernel_shape")?
        .ok_or_else(|| op_error("the kernel_shape attribute is required"))?;
    if kernel.is_empty() || kernel.iter().any(|&k| k < 1 || k > i32::MAX as i64) {
        return Err(op_error(format!(
            "kernel_shape {kernel:?} must hold positive values"
        )));
    }
    let n = kernel.len();
    let kernel: Vec<usize> = kernel.iter().map(|&k| k as usize).collect();
    let strides = per_axis(node, "strides", n)?;
    let dilations = per_axis(node, "dilations", n)?;
    let pads = match node.attr_ints("pads")? {
        None => vec![0; 2 * n],
        Some(p) if p.len() == 2 * n && p.iter().all(|&x| x >= 0) => {
            p.iter().map(|&x| x as usize).collect()
        }
        Some(p) => {
            return Err(op_error(format!(
                "pads {p:?} must hold {} non-negative values",
                2 * n
            )))
        }
    };
    for i in 0..n {
        if pads[i] >= kernel[i] || pads[i + n] >= kernel[i] {
            return Err(op_error(format!(
                "pads {pads:?} must be smaller than kernel_shape {kernel:?}"
            )));
        }
    }
    Ok(Box::new(Pool {
        kind,
        kernel,
        strides,
        dilations,
        pads,
        auto_pad: AutoPad::parse(&node.attr_string("auto_pad", "NOTSET")?)?,
        ceil_mode: node.attr_int("ceil_mode", 0)? != 0,
        count_include_pad: node.attr_int("count_include_pad", 0)? != 0,
    }))
}

/// Output length and begin/end padding of one spatial axis, following ONNX
/// Runtime: the division rounds toward zero (so a window up to one stride
/// larger than the padded input still gives one output, over the values it
/// covers), and with `ceil_mode` the last window must start inside the input
/// or the begin padding. `SAME_*` follows the spec (dilated kernel, output
/// `ceil(in / stride)`, padding clamped at 0 as TensorFlow does), where
/// ONNX Runtime pads for the undilated kernel and rejects negative padding.
#[allow(clippy::too_many_arguments)]
pub fn pool_axis(
    in_len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
    auto_pad: AutoPad,
    ceil_mode: bool,
) -> Result<AxisGeometry> {
    let (inl, k, s, d) = (in_len as i64, kernel as i64, stride as i64, dilation as i64);
    let eff = (k - 1) * d + 1;
    let from_pads = |pb: i64, pe: i64| -> Result<i64> {
        let num = inl + pb + pe - eff;
        let mut out = num / s + 1;
        if ceil_mode {
            // ceil(num / s) with num possibly negative
            out = if num >= 0 {
                (num + s - 1) / s
            } else {
                -(-num / s)
            } + 1;
            if out > 0 && (out - 1) * s >= inl + pb {
                out -= 1;
            }
        }
        if out < 0 {
            return Err(op_error(format!(
                "the window ({eff} with dilation) is larger than the padded input ({})",
                inl + pb + pe
            )));
        }
        Ok(out)
    };
    let (out, pb, pe) = match auto_pad {
        AutoPad::NotSet => (
            from_pads(pad_begin as i64, pad_end as i64)?,
            pad_begin as i64,
            pad_end as i64,
        ),
        AutoPad::Valid => (from_pads(0, 0)?, 0, 0),
        AutoPad::SameUpper | AutoPad::SameLower => {
            let out = (inl + s - 1) / s;
            let need = ((out - 1) * s + eff - inl).max(0);
            let pb = if auto_pad == AutoPad::SameLower {
                (need + 1) / 2
            } else {
                need / 2
            };
            (out, pb, need - pb)
        }
    };
    Ok((out as usize, pb as usize, pe as usize))
}

/// Output length, begin padding and end padding of one spatial axis.
pub type AxisGeometry = (usize, usize, usize);

/// One pooling pass along one axis, resolved for a concrete input length.
#[derive(Debug)]
struct AxisPlan {
    in_len: usize,
    out_len: usize,
    dilation: usize,
    kernel: usize,
    stride: usize,
    /// Per output position: first in-bounds input index and number of
    /// in-bounds taps.
    first: Vec<usize>,
    taps: Vec<usize>,
    /// Per output position: 1 / divisor (average only).
    scale: Vec<f32>,
    /// Output positions whose window is entirely inside the input.
    interior: std::ops::Range<usize>,
}

impl AxisPlan {
    #[allow(clippy::too_many_arguments)]
    fn new(
        in_len: usize,
        out_len: usize,
        k: usize,
        s: usize,
        d: usize,
        pb: usize,
        pe: usize,
        include_pad: bool,
    ) -> AxisPlan {
        let (inl, k_i, d_i) = (in_len as i64, k as i64, d as i64);
        let eff = (k_i - 1) * d_i + 1;
        let mut first = Vec::with_capacity(out_len);
        let mut taps = Vec::with_capacity(out_len);
        let mut scale = Vec::with_capacity(out_len);
        let (mut lo, mut hi) = (out_len, 0);
        for p in 0..out_len {
            let start = (p * s) as i64 - pb as i64;
            let k_lo = if start < 0 {
                (-start + d_i - 1) / d_i
            } else {
                0
            };
            let k_hi = if inl > start {
                ((inl - start + d_i - 1) / d_i).min(k_i)
            } else {
                0
            };
            let n = (k_hi - k_lo).max(0);
            first.push(if n > 0 {
                (start + k_lo * d_i) as usize
            } else {
                0
            });
            taps.push(n as usize);
            if n == k_i {
                lo = lo.min(p);
                hi = hi.max(p + 1);
            }
            let div = if include_pad {
                let end = (start + eff).min(inl + pe as i64);
                1 + (end - start - 1) / d_i
            } else {
                n
            };
            scale.push(if div > 0 { 1.0 / div as f32 } else { 0.0 });
        }
        AxisPlan {
            in_len,
            out_len,
            dilation: d,
            kernel: k,
            stride: s,
            first,
            taps,
            scale,
            interior: lo..hi.max(lo),
        }
    }

    fn is_identity(&self) -> bool {
        self.kernel == 1
            && self.stride == 1
            && self.out_len == self.in_len
            && self.first.iter().enumerate().all(|(p, &f)| f == p)
    }
}

#[inline(always)]
fn comb<const MAX: bool>(a: f32, b: f32) -> f32 {
    // `f32::max` (not a compare and select, which LLVM may turn into slow
    // masked stores when the result goes back to where `a` came from).
    if MAX {
        a.max(b)
    } else {
        a + b
    }
}

/// [`comb`] for a value kept in a register: compare and select is one
/// instruction where `f32::max` needs three.
#[inline(always)]
fn comb_reg<const MAX: bool>(a: f32, b: f32) -> f32 {
    if MAX {
        if b > a {
            b
        } else {
            a
        }
    } else {
        a + b
    }
}

/// Value of a window with no input in it: ONNX Runtime's lowest float for
/// max, 0 for average.
#[inline(always)]
fn empty_value<const MAX: bool>() -> f32 {
    if MAX {
        f32::MIN
    } else {
        0.0
    }
}

/// `dst[q] = reduce_{t < k} src[base + t * step + q]` for every `q`: one
/// vectorised pass for up to 5 taps.
#[inline(always)]
fn taps<const MAX: bool>(src: &[f32], dst: &mut [f32], base: usize, step: usize, k: usize) {
    let n = dst.len();
    let r = |t: usize| &src[base + t * step..base + t * step + n];
    let c = comb::<MAX>;
    match k {
        1 => dst.copy_from_slice(r(0)),
        2 => {
            for ((o, &a), &b) in dst.iter_mut().zip(r(0)).zip(r(1)) {
                *o = c(a, b);
            }
        }
        3 => {
            for (((o, &a), &b), &d) in dst.iter_mut().zip(r(0)).zip(r(1)).zip(r(2)) {
                *o = c(c(a, b), d);
            }
        }
        4 => {
            let it = dst.iter_mut().zip(r(0)).zip(r(1)).zip(r(2)).zip(r(3));
            for ((((o, &a), &b), &d), &e) in it {
                *o = c(c(a, b), c(d, e));
            }
        }
        5 => {
            let it = dst
                .iter_mut()
                .zip(r(0))
                .zip(r(1))
                .zip(r(2))
                .zip(r(3))
                .zip(r(4));
            for (((((o, &a), &b), &d), &e), &f) in it {
                *o = c(c(c(a, b), c(d, e)), f);
            }
        }
        _ => {
            dst.copy_from_slice(r(0));
            for t in 1..k {
                for (o, &v) in dst.iter_mut().zip(r(t)) {
                    *o = c(*o, v);
                }
            }
        }
    }
}

/// Full windows with stride 2 and no dilation:
/// `dst[p] = reduce_{t < k} src[base + 2p + t]`.
#[inline(always)]
fn taps_stride2<const MAX: bool>(src: &[f32], dst: &mut [f32], base: usize, k: usize) {
    let m = dst.len();
    let c = comb::<MAX>;
    // Pairs (2p, 2p + 1) and the next pair's first value for k = 3.
    let pairs = |off: usize, cnt: usize| src[base + off..base + off + 2 * cnt].chunks_exact(2);
    match k {
        2 => {
            for (o, q) in dst.iter_mut().zip(pairs(0, m)) {
                *o = c(q[0], q[1]);
            }
        }
        3 => {
            // all but the last position use the next pair's first value
            let (head, last) = dst.split_at_mut(m - 1);
            for ((o, q), nq) in head.iter_mut().zip(pairs(0, m - 1)).zip(pairs(2, m - 1)) {
                *o = c(c(q[0], q[1]), nq[0]);
            }
            let b = base + 2 * (m - 1);
            last[0] = c(c(src[b], src[b + 1]), src[b + 2]);
        }
        _ => {
            for t in 0..k {
                for (i, o) in dst.iter_mut().enumerate() {
                    let v = src[base + 2 * i + t];
                    *o = if t == 0 { v } else { c(*o, v) };
                }
            }
        }
    }
}

/// Reduces the window of output position `p` from its per-position taps.
#[inline(always)]
fn partial<const MAX: bool>(src: &[f32], ax: &AxisPlan, p: usize) -> f32 {
    let (f, n) = (ax.first[p], ax.taps[p]);
    if n == 0 {
        return empty_value::<MAX>();
    }
    let mut acc = src[f];
    for t in 1..n {
        acc = comb_reg::<MAX>(acc, src[f + t * ax.dilation]);
    }
    if MAX {
        acc
    } else {
        acc * ax.scale[p]
    }
}

/// Pools the full windows of one contiguous line into `dst` (the interior
/// positions of the output line).
#[inline(always)]
fn line_interior<const MAX: bool>(src: &[f32], dst: &mut [f32], ax: &AxisPlan) {
    let f0 = ax.first[ax.interior.start];
    match (ax.stride, ax.dilation) {
        (1, d) => taps::<MAX>(src, dst, f0, d, ax.kernel),
        (2, 1) => taps_stride2::<MAX>(src, dst, f0, ax.kernel),
        (s, d) => {
            for (i, o) in dst.iter_mut().enumerate() {
                let f = f0 + i * s;
                let mut acc = src[f];
                for t in 1..ax.kernel {
                    acc = comb_reg::<MAX>(acc, src[f + t * d]);
                }
                *o = acc;
            }
        }
    }
    if !MAX {
        // Full windows all have the same divisor.
        let sc = ax.scale[ax.interior.start];
        dst.iter_mut().for_each(|v| *v *= sc);
    }
}

/// Pools `lines` contiguous lines of `in_len` values into lines of
/// `out_len` values (`inner == 1`). Short stride-1 lines are pooled as one
/// flat run through `scratch` (windows that straddle two lines are computed
/// and discarded), then copied.
#[inline(always)]
fn pass_lines<const MAX: bool>(
    src: &[f32],
    dst: &mut [f32],
    ax: &AxisPlan,
    scratch: &mut Vec<f32>,
) {
    let r = ax.interior.clone();
    let lines = dst.len() / ax.out_len;
    let flat = ax.stride == 1 && !r.is_empty() && ax.in_len < 64 && lines > 1;
    if flat {
        let span = (ax.kernel - 1) * ax.dilation;
        let n = lines * ax.in_len - span;
        scratch.clear();
        scratch.resize(n, 0.0);
        taps::<MAX>(src, scratch, 0, ax.dilation, ax.kernel);
        if !MAX {
            let sc = ax.scale[r.start];
            scratch.iter_mut().for_each(|v| *v *= sc);
        }
    }
    let f0 = if r.is_empty() { 0 } else { ax.first[r.start] };
    for (l, (d, sl)) in dst
        .chunks_exact_mut(ax.out_len)
        .zip(src.chunks_exact(ax.in_len))
        .enumerate()
    {
        for p in (0..r.start).chain(r.end..ax.out_len) {
            d[p] = partial::<MAX>(sl, ax, p);
        }
        if r.is_empty() {
            continue;
        }
        if flat {
            let o = l * ax.in_len + f0;
            d[r.clone()].copy_from_slice(&scratch[o..o + r.len()]);
        } else {
            line_interior::<MAX>(sl, &mut d[r.clone()], ax);
        }
    }
}

/// Pools one `[in_len, inner]` block into `[out_len, inner]` (`inner > 1`),
/// vectorised along `inner`; with stride 1 the full windows form one run.
#[inline(always)]
fn pass_rows<const MAX: bool>(src: &[f32], dst: &mut [f32], inner: usize, ax: &AxisPlan) {
    let r = ax.interior.clone();
    let step = ax.dilation * inner;
    let border = (0..ax.out_len).filter(|p| !r.contains(p) || ax.stride != 1);
    for p in border {
        let d = &mut dst[p * inner..(p + 1) * inner];
        let n = ax.taps[p];
        if n == 0 {
            d.fill(empty_value::<MAX>());
            continue;
        }
        taps::<MAX>(src, d, ax.first[p] * inner, step, n);
        if !MAX {
            let s = ax.scale[p];
            if s != 1.0 {
                d.iter_mut().for_each(|a| *a *= s);
            }
        }
    }
    if ax.stride == 1 && !r.is_empty() {
        let d = &mut dst[r.start * inner..r.end * inner];
        taps::<MAX>(src, d, ax.first[r.start] * inner, step, ax.kernel);
        if !MAX {
            let s = ax.scale[r.start];
            d.iter_mut().for_each(|a| *a *= s);
        }
    }
}

/// Pools `src` viewed as `[outer, in_len, inner]` along the middle axis into
/// `dst` (`[outer, out_len, inner]`), in parallel over `outer` when `par`.
#[inline(always)]
fn pass<const MAX: bool>(
    src: &[f32],
    dst: &mut [f32],
    inner: usize,
    ax: &AxisPlan,
    par: bool,
    scratch: &mut Vec<f32>,
) {
    let ib = ax.in_len * inner;
    let ob = ax.out_len * inner;
    if dst.is_empty() {
        return;
    }
    if ib == 0 {
        dst.fill(empty_value::<MAX>());
        return;
    }
    if par {
        let min = (PAR_THRESHOLD / 4 / (ob * ax.kernel).max(1)).max(1);
        dst.par_chunks_mut(ob)
            .zip(src.par_chunks(ib))
            .with_min_len(min)
            .for_each(|(d, s)| {
                with_simd(
                    #[inline(always)]
                    || {
                        if inner == 1 {
                            pass_lines::<MAX>(s, d, ax, &mut Vec::new())
                        } else {
                            pass_rows::<MAX>(s, d, inner, ax)
                        }
                    },
                )
            });
    } else if inner == 1 {
        pass_lines::<MAX>(src, dst, ax, scratch);
    } else {
        for (d, s) in dst.chunks_exact_mut(ob).zip(src.chunks_exact(ib)) {
            pass_rows::<MAX>(s, d, inner, ax);
        }
    }
}

/// Per-task scratch buffers: two for intermediate passes, one for flat
/// line pooling.
type Scratch = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Runs the non-identity passes (`axes[k]` is the spatial axis of
/// `plans[k]`) over one `[outer, spatial...]` block, `src` into `dst`,
/// through the two scratch buffers.
#[inline(always)]
fn run_passes<const MAX: bool>(
    src: &[f32],
    dst: &mut [f32],
    outer: usize,
    spatial: &[(usize, usize)],
    plans: &[(usize, AxisPlan)],
    bufs: &mut Scratch,
    par: bool,
) {
    let (mut a, mut b) = (std::mem::take(&mut bufs.0), std::mem::take(&mut bufs.1));
    let scratch = &mut bufs.2;
    for (k, (i, ax)) in plans.iter().enumerate() {
        // Axes before `i` are already pooled, the ones after not yet.
        let inner: usize = spatial[i + 1..].iter().map(|s| s.0).product();
        let before: usize = spatial[..*i].iter().map(|s| s.1).product();
        let cur: &[f32] = if k == 0 { src } else { &a };
        if k + 1 == plans.len() {
            pass::<MAX>(cur, dst, inner, ax, par, scratch);
        } else {
            b.clear();
            b.resize(outer * before * ax.out_len * inner, 0.0);
            pass::<MAX>(cur, &mut b, inner, ax, par, scratch);
            std::mem::swap(&mut a, &mut b);
        }
    }
    bufs.0 = a;
    bufs.1 = b;
}

fn check_float(dtype: DType) -> Result<()> {
    if dtype.storage() != Storage::Float {
        return Err(op_error(format!(
            "pooling needs a float tensor, got {dtype}"
        )));
    }
    Ok(())
}

impl Pool {
    /// Output shape and per-axis (out length, pad begin, pad end).
    fn geometry(&self, shape: &[usize]) -> Result<(Vec<usize>, Vec<AxisGeometry>)> {
        let n = self.kernel.len();
        if shape.len() != n + 2 {
            return Err(op_error(format!(
                "input of rank {} does not match kernel_shape {:?} (expected rank {})",
                shape.len(),
                self.kernel,
                n + 2
            )));
        }
        let mut out = shape[..2].to_vec();
        let mut axes = Vec::with_capacity(n);
        for i in 0..n {
            let g = pool_axis(
                shape[i + 2],
                self.kernel[i],
                self.strides[i],
                self.dilations[i],
                self.pads[i],
                self.pads[i + n],
                self.auto_pad,
                self.ceil_mode,
            )?;
            out.push(g.0);
            axes.push(g);
        }
        let total = out
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        if total > MAX_OUTPUT_ELEMENTS {
            return Err(op_error(format!("output shape {out:?} is too large")));
        }
        Ok((out, axes))
    }
}

impl Op for Pool {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        // Pooling runs over the spatial axes (2..): channels are axis 1.
        match cx.axis(0) {
            Some(1) | None => cx.keep_channels(1),
            Some(_) => None,
        }
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        check_float(x.dtype)?;
        Ok(vec![Fact::new(x.dtype, self.geometry(&x.shape)?.0)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        check_float(x.dtype())?;
        let (out_shape, axes) = self.geometry(x.shape())?;
        let src = x.f32s()?;
        // (in, out) length per spatial axis, and the passes that do something.
        let spatial: Vec<(usize, usize)> = x.shape()[2..]
            .iter()
            .zip(&out_shape[2..])
            .map(|(&i, &o)| (i, o))
            .collect();
        let plans: Vec<(usize, AxisPlan)> = axes
            .iter()
            .enumerate()
            .map(|(i, &(out_len, pb, pe))| {
                let ax = AxisPlan::new(
                    spatial[i].0,
                    out_len,
                    self.kernel[i],
                    self.strides[i],
                    self.dilations[i],
                    pb,
                    pe,
                    self.count_include_pad,
                );
                (i, ax)
            })
            .filter(|(_, ax)| !ax.is_identity())
            .collect();
        if plans.is_empty() {
            return Ok(vec![Tensor::from_float(x.dtype(), out_shape, src.to_vec())]);
        }
        let planes = out_shape[0] * out_shape[1];
        let plane_in: usize = spatial.iter().map(|s| s.0).product();
        let plane_out: usize = spatial.iter().map(|s| s.1).product();
        let mut out = vec![0.0f32; planes * plane_out];
        if out.is_empty() {
            return Ok(vec![Tensor::from_float(x.dtype(), out_shape, out)]);
        }
        let taps: usize = plans.iter().map(|(_, ax)| ax.kernel).sum();
        let work = out.len() * taps;
        let max = self.kind == PoolKind::Max;
        let run = |s: &[f32], d: &mut [f32], outer: usize, bufs: &mut Scratch, par: bool| {
            with_simd(
                #[inline(always)]
                || {
                    if max {
                        run_passes::<true>(s, d, outer, &spatial, &plans, bufs, par)
                    } else {
                        run_passes::<false>(s, d, outer, &spatial, &plans, bufs, par)
                    }
                },
            )
        };
        let threads = rayon::current_num_threads();
        if work < PAR_THRESHOLD || plane_in == 0 {
            run(src, &mut out, planes, &mut Default::default(), false);
        } else if planes >= 2 * threads {
            // One task per group of planes; scratch buffers stay in cache.
            let min = (PAR_THRESHOLD / 4 / (plane_out * taps).max(1)).max(1);
            out.par_chunks_mut(plane_out)
                .zip(src.par_chunks(plane_in))
                .with_min_len(min)
                .for_each_init(Default::default, |bufs, (d, s)| run(s, d, 1, bufs, false));
        } else {
            // Few large planes: each pass in parallel over its rows.
            run(src, &mut out, planes, &mut Default::default(), true);
        }
        Ok(vec![Tensor::from_float(x.dtype(), out_shape, out)])
    }
}

impl GlobalPool {
    fn out_shape(shape: &[usize]) -> Result<Vec<usize>> {
        if shape.len() < 2 {
            return Err(op_error(format!(
                "global pooling needs an input of rank >= 2 (N, C, ...), got rank {}",
                shape.len()
            )));
        }
        let mut s = shape.to_vec();
        s[2..].iter_mut().for_each(|d| *d = 1);
        Ok(s)
    }
}

impl Op for GlobalPool {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        match cx.axis(0) {
            Some(1) | None => cx.keep_channels(1),
            Some(_) => None,
        }
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        check_float(x.dtype)?;
        Ok(vec![Fact::new(x.dtype, Self::out_shape(&x.shape)?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        check_float(x.dtype())?;
        let shape = Self::out_shape(x.shape())?;
        let planes = shape[0] * shape[1];
        let plane: usize = x.shape()[2..].iter().product();
        let v = x.f32s()?;
        let kind = self.kind;
        let f = |p: usize| -> f32 {
            let s = &v[p * plane..(p + 1) * plane];
            match kind {
                PoolKind::Max => {
                    if plane == 0 {
                        f32::MIN
                    } else {
                        max_f32(s)
                    }
                }
                PoolKind::Avg => sum_f32(s) / plane as f32,
            }
        };
        let mut out = vec![0.0f32; planes];
        let per = (PAR_THRESHOLD / 4 / plane.max(1)).max(1);
        let task = |(t, ys): (usize, &mut [f32])| {
            with_simd(
                #[inline(always)]
                || {
                    for (k, y) in ys.iter_mut().enumerate() {
                        *y = f(t * per + k);
                    }
                },
            )
        };
        if v.len() >= PAR_THRESHOLD && planes > per {
            out.par_chunks_mut(per).enumerate().for_each(task);
        } else if !out.is_empty() {
            out.chunks_mut(planes).enumerate().for_each(task);
        }
        Ok(vec![Tensor::from_float(x.dtype(), shape, out)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute};

    fn mk(op: &str, attrs: Vec<(&str, AttrValue)>) -> Result<Box<dyn Op>> {
        let n = Node::new(
            "p",
            op,
            &["x"],
            &["y"],
            attrs
                .into_iter()
                .map(|(k, v)| Attribute::new(k, v))
                .collect(),
        );
        build(&n, 19)
    }

    fn ints(v: &[i64]) -> AttrValue {
        AttrValue::Ints(v.to_vec())
    }

    fn run(op: &str, attrs: Vec<(&str, AttrValue)>, x: &Tensor) -> Result<Tensor> {
        let o = mk(op, attrs)?;
        let y = o.eval(&[Some(x)])?.remove(0);
        let f = o.infer(&[Some(&Fact::new(x.dtype(), x.shape().to_vec()))])?;
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

    /// Direct (non-separable) reference for 2-D pooling, ORT semantics.
    #[allow(clippy::too_many_arguments)]
    fn naive2d(
        x: &[f32],
        h: usize,
        w: usize,
        k: [usize; 2],
        s: [usize; 2],
        d: [usize; 2],
        p: [usize; 4],
        out: [usize; 2],
        max: bool,
        incl: bool,
    ) -> Vec<f32> {
        let mut y = Vec::new();
        for oh in 0..out[0] {
            for ow in 0..out[1] {
                let hs = (oh * s[0]) as i64 - p[0] as i64;
                let ws = (ow * s[1]) as i64 - p[1] as i64;
                let (mut m, mut sum, mut cnt) = (f32::MIN, 0.0f32, 0);
                for i in 0..k[0] {
                    for j in 0..k[1] {
                        let (hh, ww) = (hs + (i * d[0]) as i64, ws + (j * d[1]) as i64);
                        if hh >= 0 && ww >= 0 && (hh as usize) < h && (ww as usize) < w {
                            let v = x[hh as usize * w + ww as usize];
                            m = m.max(v);
                            sum += v;
                            cnt += 1;
                        }
                    }
                }
                let he = (hs + ((k[0] - 1) * d[0] + 1) as i64).min((h + p[2]) as i64);
                let we = (ws + ((k[1] - 1) * d[1] + 1) as i64).min((w + p[3]) as i64);
                let div = if incl {
                    (1 + (he - hs - 1) / d[0] as i64) * (1 + (we - ws - 1) / d[1] as i64)
                } else {
                    cnt
                };
                y.push(if max {
                    m
                } else if div > 0 {
                    sum / div as f32
                } else {
                    0.0
                });
            }
        }
        y
    }

    #[test]
    fn maxpool_2x2_stride2() {
        let x = ramp(vec![1, 1, 4, 4]);
        let y = run(
            "MaxPool",
            vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))],
            &x,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert_eq!(y.f32s().unwrap(), &[6., 8., 14., 16.]);
        // defaults: stride 1
        let y = run("MaxPool", vec![("kernel_shape", ints(&[2, 2]))], &x).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 3]);
        assert_eq!(
            y.f32s().unwrap(),
            &[6., 7., 8., 10., 11., 12., 14., 15., 16.]
        );
    }

    #[test]
    fn maxpool_ceil_mode_ort() {
        // onnxruntime: 5x5 ramp, k2 s2 ceil -> [[7,9,10],[17,19,20],[22,24,25]]
        let x = ramp(vec![1, 1, 5, 5]);
        let y = run(
            "MaxPool",
            vec![
                ("kernel_shape", ints(&[2, 2])),
                ("strides", ints(&[2, 2])),
                ("ceil_mode", AttrValue::Int(1)),
            ],
            &x,
        )
        .unwrap();
        assert_eq!(
            y.f32s().unwrap(),
            &[7., 9., 10., 17., 19., 20., 22., 24., 25.]
        );
        // k3 s3 p1 ceil: the last window would start in the padding -> 2x2
        let y = run(
            "MaxPool",
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[3, 3])),
                ("pads", ints(&[1, 1, 1, 1])),
                ("ceil_mode", AttrValue::Int(1)),
            ],
            &x,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert_eq!(y.f32s().unwrap(), &[7., 10., 22., 25.]);
    }

    #[test]
    fn maxpool_sppf_matches_naive() {
        // YOLO SPPF: k5 s1 p2 on 2x3x20x20, values with sign changes
        let n = 2 * 3 * 400;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.5)
            .collect();
        let x = Tensor::from_f32(vec![2, 3, 20, 20], v.clone());
        let attrs = vec![
            ("kernel_shape", ints(&[5, 5])),
            ("strides", ints(&[1, 1])),
            ("pads", ints(&[2, 2, 2, 2])),
        ];
        let y = run("MaxPool", attrs, &x).unwrap();
        assert_eq!(y.shape(), &[2, 3, 20, 20]);
        for p in 0..6 {
            let want = naive2d(
                &v[p * 400..(p + 1) * 400],
                20,
                20,
                [5, 5],
                [1, 1],
                [1, 1],
                [2, 2, 2, 2],
                [20, 20],
                true,
                false,
            );
            assert_eq!(&y.f32s().unwrap()[p * 400..(p + 1) * 400], want.as_slice());
        }
        // bigger tensor, parallel path, against the same reference
        let v: Vec<f32> = (0..64 * 400).map(|i| ((i * 7919) % 1009) as f32).collect();
        let x = Tensor::from_f32(vec![1, 64, 20, 20], v.clone());
        let attrs = vec![
            ("kernel_shape", ints(&[5, 5])),
            ("pads", ints(&[2, 2, 2, 2])),
        ];
        let y = run("MaxPool", attrs, &x).unwrap();
        for p in [0, 31, 63] {
            let want = naive2d(
                &v[p * 400..(p + 1) * 400],
                20,
                20,
                [5, 5],
                [1, 1],
                [1, 1],
                [2, 2, 2, 2],
                [20, 20],
                true,
                false,
            );
            assert_eq!(&y.f32s().unwrap()[p * 400..(p + 1) * 400], want.as_slice());
        }
    }

    #[test]
    fn large_planes_parallel_passes() {
        // One or two big planes: each pass runs in parallel over its rows.
        let (h, w) = (150, 131);
        let v: Vec<f32> = (0..2 * h * w)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        let x = Tensor::from_f32(vec![1, 2, h, w], v.clone());
        for (op, max) in [("MaxPool", true), ("AveragePool", false)] {
            let attrs = vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("pads", ints(&[1, 1, 1, 1])),
            ];
            let y = run(op, attrs, &x).unwrap();
            let (oh, ow) = (y.shape()[2], y.shape()[3]);
            for p in 0..2 {
                let want = naive2d(
                    &v[p * h * w..(p + 1) * h * w],
                    h,
                    w,
                    [3, 3],
                    [2, 2],
                    [1, 1],
                    [1, 1, 1, 1],
                    [oh, ow],
                    max,
                    false,
                );
                close(&y.f32s().unwrap()[p * oh * ow..(p + 1) * oh * ow], &want);
            }
        }
    }

    #[test]
    fn pools_match_naive_many_configs() {
        let (h, w) = (9, 11);
        let v: Vec<f32> = (0..h * w).map(|i| ((i * 13 % 17) as f32) - 8.0).collect();
        let x = Tensor::from_f32(vec![1, 1, h, w], v.clone());
        type Config = ([usize; 2], [usize; 2], [usize; 2], [usize; 4], bool);
        let configs: &[Config] = &[
            ([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], false),
            ([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], true),
            ([2, 3], [1, 2], [2, 1], [1, 0, 1, 2], false),
            ([3, 2], [3, 1], [1, 3], [0, 1, 2, 1], true),
            ([4, 4], [2, 3], [1, 1], [3, 2, 0, 1], false),
        ];
        for &(k, s, d, p, ceil) in configs {
            for (op, max) in [("MaxPool", true), ("AveragePool", false)] {
                for incl in [false, true] {
                    let attrs = vec![
                        ("kernel_shape", ints(&[k[0] as i64, k[1] as i64])),
                        ("strides", ints(&[s[0] as i64, s[1] as i64])),
                        ("dilations", ints(&[d[0] as i64, d[1] as i64])),
                        (
                            "pads",
                            ints(&p.iter().map(|&v| v as i64).collect::<Vec<_>>()),
                        ),
                        ("ceil_mode", AttrValue::Int(ceil as i64)),
                        ("count_include_pad", AttrValue::Int(incl as i64)),
                    ];
                    let y = run(op, attrs, &x).unwrap();
                    let out = [y.shape()[2], y.shape()[3]];
                    let want = naive2d(&v, h, w, k, s, d, [p[0], p[1], p[2], p[3]], out, max, incl);
                    close(y.f32s().unwrap(), &want);
                }
            }
        }
    }

    #[test]
    fn avgpool_ort_values() {
        // All expected values from onnxruntime 1.31.
        let x = ramp(vec![1, 1, 5, 5]);
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[2, 2])),
                ("strides", ints(&[2, 2])),
                ("ceil_mode", AttrValue::Int(1)),
                ("count_include_pad", AttrValue::Int(1)),
            ],
            &x,
        )
        .unwrap();
        close(
            y.f32s().unwrap(),
            &[4., 6., 7.5, 14., 16., 17.5, 21.5, 23.5, 25.],
        );
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("pads", ints(&[1, 1, 1, 1])),
                ("count_include_pad", AttrValue::Int(1)),
            ],
            &x,
        )
        .unwrap();
        close(
            y.f32s().unwrap(),
            &[
                1.7777778, 3.6666667, 3.1111112, 7.6666665, 13., 9.666667, 8.444445, 13.666667,
                9.777778,
            ],
        );
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("pads", ints(&[1, 1, 1, 1])),
            ],
            &x,
        )
        .unwrap();
        close(
            y.f32s().unwrap(),
            &[4., 5.5, 7., 11.5, 13., 14.5, 19., 20.5, 22.],
        );
        // 6x6, k3 s2 p1 ceil, include pad: overhang past the end padding is not counted
        let x = ramp(vec![1, 1, 6, 6]);
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("pads", ints(&[1, 1, 1, 1])),
                ("ceil_mode", AttrValue::Int(1)),
                ("count_include_pad", AttrValue::Int(1)),
            ],
            &x,
        )
        .unwrap();
        close(
            y.f32s().unwrap(),
            &[
                2., 4., 5.3333335, 3., 9., 15., 17., 9., 17., 27., 29., 15., 10.5, 16.5, 17.5, 9.,
            ],
        );
    }

    #[test]
    fn avgpool_1d_dilation_ort() {
        let x = ramp(vec![1, 1, 6]);
        let base = |incl: i64, ceil: i64, s: i64| {
            vec![
                ("kernel_shape", ints(&[2])),
                ("strides", ints(&[s])),
                ("pads", ints(&[1, 1])),
                ("dilations", ints(&[2])),
                ("count_include_pad", AttrValue::Int(incl)),
                ("ceil_mode", AttrValue::Int(ceil)),
            ]
        };
        close(
            run("AveragePool", base(1, 0, 1), &x)
                .unwrap()
                .f32s()
                .unwrap(),
            &[1., 2., 3., 4., 5., 2.5],
        );
        close(
            run("AveragePool", base(0, 0, 1), &x)
                .unwrap()
                .f32s()
                .unwrap(),
            &[2., 2., 3., 4., 5., 5.],
        );
        close(
            run("AveragePool", base(1, 1, 2), &x)
                .unwrap()
                .f32s()
                .unwrap(),
            &[1., 3., 5., 6.],
        );
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[3])),
                ("strides", ints(&[2])),
                ("pads", ints(&[1, 1])),
                ("ceil_mode", AttrValue::Int(1)),
            ],
            &x,
        )
        .unwrap();
        close(y.f32s().unwrap(), &[1.5, 3., 5., 6.]);
    }

    #[test]
    fn auto_pad_modes_ort() {
        let x = ramp(vec![1, 1, 6, 6]);
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("auto_pad", AttrValue::String(b"SAME_UPPER".to_vec())),
                ("count_include_pad", AttrValue::Int(1)),
            ],
            &x,
        )
        .unwrap();
        close(
            y.f32s().unwrap(),
            &[
                8., 10., 7.6666665, 20., 22., 15.666667, 19.333334, 20.666666, 14.444445,
            ],
        );
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("auto_pad", AttrValue::String(b"SAME_UPPER".to_vec())),
            ],
            &x,
        )
        .unwrap();
        close(
            y.f32s().unwrap(),
            &[8., 10., 11.5, 20., 22., 23.5, 29., 31., 32.5],
        );
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[2, 2])),
                ("auto_pad", AttrValue::String(b"SAME_LOWER".to_vec())),
                ("count_include_pad", AttrValue::Int(1)),
            ],
            &x,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 1, 6, 6]);
        close(
            &y.f32s().unwrap()[..8],
            &[0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 2., 4.5],
        );
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[2, 3])),
                ("strides", ints(&[2, 2])),
                ("auto_pad", AttrValue::String(b"VALID".to_vec())),
            ],
            &x,
        )
        .unwrap();
        close(y.f32s().unwrap(), &[5., 7., 17., 19., 29., 31.]);
        let y = run(
            "MaxPool",
            vec![
                ("kernel_shape", ints(&[2, 2])),
                ("strides", ints(&[2, 2])),
                ("auto_pad", AttrValue::String(b"SAME_UPPER".to_vec())),
            ],
            &ramp(vec![1, 1, 3, 3]),
        )
        .unwrap();
        assert_eq!(y.f32s().unwrap(), &[5., 6., 8., 9.]);
    }

    #[test]
    fn avgpool_3d_ort() {
        let x = ramp(vec![1, 1, 3, 3, 3]);
        let y = run(
            "AveragePool",
            vec![
                ("kernel_shape", ints(&[2, 2, 2])),
                ("strides", ints(&[2, 2, 2])),
                ("pads", ints(&[1, 1, 1, 1, 1, 1])),
                ("count_include_pad", AttrValue::Int(1)),
                ("ceil_mode", AttrValue::Int(1)),
            ],
            &x,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2, 2]);
        close(
            y.f32s().unwrap(),
            &[0.125, 0.625, 1.375, 3.5, 3.625, 8., 9.5, 20.5],
        );
    }

    #[test]
    fn all_padding_window() {
        // ORT: MaxPool gives the lowest float, AveragePool 0.
        let x = Tensor::from_f32(vec![1, 1, 2], vec![3., 4.]);
        let a = vec![
            ("kernel_shape", ints(&[2])),
            ("pads", ints(&[1, 1])),
            ("dilations", ints(&[3])),
        ];
        assert_eq!(
            run("MaxPool", a.clone(), &x).unwrap().f32s().unwrap(),
            &[f32::MIN]
        );
        assert_eq!(run("AveragePool", a, &x).unwrap().f32s().unwrap(), &[0.0]);
    }

    #[test]
    fn window_larger_than_input_ort() {
        // onnxruntime 1.31: the output size division rounds toward zero.
        let y = run(
            "MaxPool",
            vec![("kernel_shape", ints(&[2, 2]))],
            &ramp(vec![1, 1, 1, 4]),
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 1, 0, 3]);
        // ... but a negative size is an error
        let a = vec![("kernel_shape", ints(&[3])), ("dilations", ints(&[2]))];
        assert!(run("AveragePool", a, &ramp(vec![1, 2, 3])).is_err());
        let x = ramp(vec![1, 1, 7, 3]);
        for incl in [0, 1] {
            let a = vec![
                ("kernel_shape", ints(&[3, 4])),
                ("strides", ints(&[2, 2])),
                ("auto_pad", AttrValue::String(b"VALID".to_vec())),
                ("count_include_pad", AttrValue::Int(incl)),
            ];
            close(
                run("AveragePool", a, &x).unwrap().f32s().unwrap(),
                &[5., 11., 17.],
            );
        }
        let a = vec![
            ("kernel_shape", ints(&[3, 4])),
            ("strides", ints(&[2, 2])),
            ("pads", ints(&[0, 0, 0, 1])),
            ("count_include_pad", AttrValue::Int(1)),
        ];
        close(
            run("AveragePool", a, &x).unwrap().f32s().unwrap(),
            &[3.75, 8.25, 12.75],
        );
    }

    #[test]
    fn global_pools() {
        let x = ramp(vec![2, 3, 2, 2]);
        let y = run("GlobalAveragePool", vec![], &x).unwrap();
        assert_eq!(y.shape(), &[2, 3, 1, 1]);
        close(y.f32s().unwrap(), &[2.5, 6.5, 10.5, 14.5, 18.5, 22.5]);
        let y = run("GlobalMaxPool", vec![], &x).unwrap();
        assert_eq!(y.f32s().unwrap(), &[4., 8., 12., 16., 20., 24.]);
        let big = Tensor::from_f32(
            vec![1, 64, 32, 32],
            (0..65536).map(|i| (i % 1024) as f32).collect(),
        );
        let y = run("GlobalAveragePool", vec![], &big).unwrap();
        close(y.f32s().unwrap(), &[511.5; 64]);
        let y = run("GlobalMaxPool", vec![], &big).unwrap();
        assert_eq!(y.f32s().unwrap(), &[1023.0; 64]);
        // 1-D spatial
        let y = run(
            "GlobalMaxPool",
            vec![],
            &Tensor::from_f32(vec![1, 2, 3], vec![1., -5., 2., -1., -2., -3.]),
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 2, 1]);
        assert_eq!(y.f32s().unwrap(), &[2., -1.]);
    }

    #[test]
    fn errors() {
        assert!(mk("MaxPool", vec![]).is_err());
        assert!(mk("MaxPool", vec![("kernel_shape", ints(&[0, 2]))]).is_err());
        assert!(mk(
            "MaxPool",
            vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2]))]
        )
        .is_err());
        assert!(mk(
            "MaxPool",
            vec![
                ("kernel_shape", ints(&[2, 2])),
                ("pads", ints(&[2, 0, 0, 0]))
            ]
        )
        .is_err());
        assert!(mk(
            "MaxPool",
            vec![
                ("kernel_shape", ints(&[2, 2])),
                ("pads", ints(&[-1, 0, 0, 0]))
            ]
        )
        .is_err());
        assert!(mk(
            "MaxPool",
            vec![
                ("kernel_shape", ints(&[2, 2])),
                ("auto_pad", AttrValue::String(b"SAME".to_vec()))
            ]
        )
        .is_err());
        // Indices output
        let n = Node::new(
            "p",
            "MaxPool",
            &["x"],
            &["y", "idx"],
            vec![Attribute::new("kernel_shape", ints(&[2, 2]))],
        );
        assert!(build(&n, 12).is_err());
        // rank mismatch, window larger than input, int input
        let o = mk("MaxPool", vec![("kernel_shape", ints(&[2, 2]))]).unwrap();
        assert!(o.eval(&[Some(&ramp(vec![1, 4, 4]))]).is_err());
        assert!(o
            .infer(&[Some(&Fact::new(DType::I64, vec![1, 1, 4, 4]))])
            .is_err());
        assert!(o.eval(&[None]).is_err());
        let g = mk("GlobalAveragePool", vec![]).unwrap();
        assert!(g.eval(&[Some(&ramp(vec![4]))]).is_err());
        // huge output from a huge kernel with huge pads
        let o = mk(
            "MaxPool",
            vec![
                ("kernel_shape", ints(&[1 << 30])),
                ("pads", ints(&[(1 << 30) - 1, (1 << 30) - 1])),
            ],
        )
        .unwrap();
        assert!(o
            .infer(&[Some(&Fact::new(DType::F32, vec![4, 4, 4]))])
            .is_err());
    }
}
