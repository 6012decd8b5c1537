//! Convolutions: Conv and ConvTranspose (1-D, 2-D and 3-D, f32 compute).
//!
//! Conv runs one of four kernels:
//! - one input channel per group (depthwise, with any channel multiplier,
//!   or a single-channel input): direct loops, parallel over output planes
//!   (a fused nine-tap loop for 3x3 stride 1);
//! - 2-D 3x3, stride 1, dilation 1 with at least 8 channels per group in
//!   and out: Winograd F(2x2, 3x3) (16 GEMMs over tile blocks);
//! - 1x1, stride 1, unpadded: one GEMM per (image, group) on the input as is;
//! - otherwise im2col per (image, group, block of output rows) + GEMM.
//!
//! ConvTranspose is a GEMM (`Wᵀ · X`) per block of input rows followed by
//! col2im. Work is split over images and groups when there are enough of
//! them, otherwise inside each GEMM and im2col/col2im. Large scratch buffers
//! are kept per thread between calls (see `with_scratch`).

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap, Link, Pairs, Port, PruneCx, Use, WeightAxis};
use super::common::{fact, fill_uninit, input, opt, par_zeros};
use super::matmul::{sgemm, MatRef, MAX_ELEMENTS};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{DType, Node, Storage, Tensor};

/// Multiply-accumulates above which a convolution uses several threads.
const CONV_PAR_MACS: usize = 1 << 20;

/// How padding is chosen (`auto_pad`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPad {
    /// Explicit `pads` (default 0).
    NotSet,
    /// Output size `ceil(in / stride)`, extra padding at the end.
    SameUpper,
    /// Output size `ceil(in / stride)`, extra padding at the start.
    SameLower,
    /// No padding.
    Valid,
}

/// Attributes shared by Conv and ConvTranspose, as read from the node.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvAttrs {
    /// Padding mode.
    pub auto_pad: AutoPad,
    /// Dilations per spatial axis (default all 1).
    pub dilations: Option<Vec<usize>>,
    /// Number of groups.
    pub group: usize,
    /// Kernel shape; must agree with the weight when given.
    pub kernel_shape: Option<Vec<usize>>,
    /// Pads, all begins then all ends (default 0).
    pub pads: Option<Vec<usize>>,
    /// Strides per spatial axis (default all 1).
    pub strides: Option<Vec<usize>>,
}

fn positive_list(node: &Node, name: &str) -> Result<Option<Vec<usize>>> {
    match node.attr_ints(name)? {
        None => Ok(None),
        Some(v) => {
            if let Some(bad) = v.iter().find(|&&x| x < 1) {
                return Err(op_error(format!(
                    "attribute '{name}' must be positive, got {bad} in {v:?}"
                )));
            }
            Ok(Some(v.iter().map(|&x| x as usize).collect()))
        }
    }
}

impl ConvAttrs {
    /// Reads and validates the shared attributes.
    pub fn from_node(node: &Node) -> Result<ConvAttrs> {
        let auto_pad = match node.attr_string("auto_pad", "NOTSET")?.as_str() {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            o => return Err(op_error(format!("unknown auto_pad '{o}'"))),
        };
        let group = node.attr_int("group", 1)?;
        if group < 1 {
            return Err(op_error(format!(
                "attribute 'group' must be >= 1, got {group}"
            )));
        }
        let pads = match node.attr_ints("pads")? {
            None => None,
            Some(v) => {
                if let Some(bad) = v.iter().find(|&&x| x < 0) {
                    return Err(op_error(format!(
                        "negative pads are not supported, got {bad} in {v:?}"
                    )));
                }
                Some(v.iter().map(|&x| x as usize).collect())
            }
        };
        if pads.is_some() && auto_pad != AutoPad::NotSet {
            return Err(op_error(
                "attribute 'pads' cannot be used together with auto_pad",
            ));
        }
        Ok(ConvAttrs {
            auto_pad,
            dilations: positive_list(node, "dilations")?,
            group: group as usize,
            kernel_shape: positive_list(node, "kernel_shape")?,
            pads,
            strides: positive_list(node, "strides")?,
        })
    }

    /// A per-axis attribute of length `rank`, or all ones.
    fn per_axis(v: &Option<Vec<usize>>, name: &str, rank: usize) -> Result<Vec<usize>> {
        match v {
            None => Ok(vec![1; rank]),
            Some(v) if v.len() == rank => Ok(v.clone()),
            Some(v) => Err(op_error(format!(
                "attribute '{name}' has {} values, expected {rank}",
                v.len()
            ))),
        }
    }

    /// Explicit pads (begins, ends) of length `rank` each.
    fn explicit_pads(&self, rank: usize) -> Result<(Vec<usize>, Vec<usize>)> {
        match &self.pads {
            None => Ok((vec![0; rank], vec![0; rank])),
            Some(p) if p.len() == 2 * rank => Ok((p[..rank].to_vec(), p[rank..].to_vec())),
            Some(p) => Err(op_error(format!(
                "attribute 'pads' has {} values, expected {}",
                p.len(),
                2 * rank
            ))),
        }
    }

    /// Common checks: ranks, kernel agreement. Returns (spatial rank, kernel,
    /// strides, dilations).
    #[allow(clippy::type_complexity)]
    fn resolve_common(
        &self,
        x: &[usize],
        w: &[usize],
    ) -> Result<(usize, Vec<usize>, Vec<usize>, Vec<usize>)> {
        if x.len() < 3 || x.len() > 5 {
            return Err(op_error(format!(
                "input must have rank 3, 4 or 5 ([N, C, spatial...], 1-D to 3-D), got shape {x:?}"
            )));
        }
        if w.len() != x.len() {
            return Err(op_error(format!(
                "weight rank {} differs from input rank {}",
                w.len(),
                x.len()
            )));
        }
        let rank = x.len() - 2;
        let kernel = w[2..].to_vec();
        if kernel.contains(&0) {
            return Err(op_error(format!("weight has an empty kernel: shape {w:?}")));
        }
        if let Some(ks) = &self.kernel_shape {
            if ks != &kernel {
                return Err(op_error(format!(
                    "kernel_shape {ks:?} disagrees with the weight's kernel {kernel:?}"
                )));
            }
        }
        let strides = Self::per_axis(&self.strides, "strides", rank)?;
        let dilations = Self::per_axis(&self.dilations, "dilations", rank)?;
        Ok((rank, kernel, strides, dilations))
    }
}

/// A convolution's geometry, resolved for concrete input and weight shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvGeom {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Groups.
    pub group: usize,
    /// Input spatial size.
    pub in_sp: Vec<usize>,
    /// Output spatial size.
    pub out_sp: Vec<usize>,
    /// Kernel spatial size.
    pub kernel: Vec<usize>,
    /// Strides.
    pub strides: Vec<usize>,
    /// Dilations.
    pub dilations: Vec<usize>,
    /// Padding before each spatial axis.
    pub pads_begin: Vec<usize>,
    /// Padding after each spatial axis.
    pub pads_end: Vec<usize>,
}

/// Pads `v` on the left with `fill` up to 3 axes.
fn to3(v: &[usize], fill: usize) -> [usize; 3] {
    let mut o = [fill; 3];
    o[3 - v.len()..].copy_from_slice(v);
    o
}

/// The geometry in three spatial axes (missing leading axes of size 1).
#[derive(Clone, Copy, Debug)]
struct G3 {
    i: [usize; 3],
    o: [usize; 3],
    k: [usize; 3],
    s: [usize; 3],
    d: [usize; 3],
    p: [usize; 3],
}

impl G3 {
    fn in_len(&self) -> usize {
        self.i.iter().product()
    }
    fn out_len(&self) -> usize {
        self.o.iter().product()
    }
    fn k_len(&self) -> usize {
        self.k.iter().product()
    }
    /// Offset into the input of output index 0 for kernel tap `k` on axis `a`.
    fn off(&self, a: usize, k: usize) -> isize {
        (k * self.d[a]) as isize - self.p[a] as isize
    }
    /// The range of output indices `o` on axis `a` whose input index
    /// `o * s + off` falls inside `[0, i)`.
    fn valid(&self, a: usize, off: isize) -> (usize, usize) {
        valid_range(self.o[a], self.i[a], self.s[a], off)
    }
    /// 2-D, stride 1, output as wide as the input (a "same" conv): the
    /// positions of a tap then map to the input plane by one offset, so
    /// im2col and col2im can use [`G3::shifted_run`].
    fn shifts_whole_rows(&self) -> bool {
        self.i[0] == 1
            && self.o[0] == 1
            && self.k[0] == 1
            && self.s[1] == 1
            && self.s[2] == 1
            && self.i[2] == self.o[2]
    }
    /// For [`G3::shifts_whole_rows`] geometries: tap `(kh, kw)` (`kw`'s
    /// `(offset, lo, hi)` from `valid` on axis 2) over the output rows
    /// `rows`, as one run `first..last` of positions counted from the
    /// block's start, position `q` reading input position `q + shift`
    /// (block start included). Positions of the rows `ys` (block-relative)
    /// left of `lo` or from `hi` on wrap onto the neighbouring rows and
    /// must not count. `None` when the tap reads no input.
    fn shifted_run(
        &self,
        kh: usize,
        (offw, lo, hi): (isize, usize, usize),
        rows: &std::ops::Range<usize>,
    ) -> Option<ShiftedRun> {
        let w = self.o[2];
        let offh = self.off(1, kh);
        let (ylo, yhi) = self.valid(1, offh);
        let (ylo, yhi) = (
            ylo.clamp(rows.start, rows.end),
            yhi.clamp(rows.start, rows.end),
        );
        if ylo >= yhi || lo >= hi {
            return None;
        }
        let base = rows.start * w;
        Some(ShiftedRun {
            first: ylo * w + lo - base,
            last: (yhi - 1) * w + hi - base,
            shift: base as isize + offh * self.i[2] as isize + offw,
            ys: ylo - rows.start..yhi - rows.start,
            lo,
            hi,
        })
    }
}

/// One tap of a "same" conv as a single run (see [`G3::shifted_run`]).
struct ShiftedRun {
    first: usize,
    last: usize,
    shift: isize,
    ys: std::ops::Range<usize>,
    lo: usize,
    hi: usize,
}

impl ShiftedRun {
    /// Zeroes the positions of `row` (rows of `w` values) that wrap.
    /// Column by column, down the rows: the wrapped positions are a pad's
    /// width (one or two values) per row, too short for a `fill` (a
    /// `memset` call each) to pay.
    fn zero_wrapped(&self, row: &mut [f32], w: usize) {
        let rows = &mut row[self.ys.start * w..self.ys.end * w];
        for col in (0..self.lo).chain(self.hi..w) {
            for v in rows.iter_mut().skip(col).step_by(w) {
                *v = 0.0;
            }
        }
    }
    /// The input positions the run reads or writes.
    fn input(&self) -> std::ops::Range<usize> {
        let start = (self.first as isize + self.shift) as usize;
        start..start + (self.last - self.first)
    }
}

/// Output indices `o < n_out` with `0 <= o * s + off < n_in`, as a range.
fn valid_range(n_out: usize, n_in: usize, s: usize, off: isize) -> (usize, usize) {
    let s = s as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let last = n_in as isize - 1 - off;
    let hi = if last < 0 {
        0
    } else {
        (last / s + 1).min(n_out as isize)
    };
    let lo = lo.min(hi).max(0);
    (lo as usize, hi as usize)
}

impl ConvGeom {
    /// The same geometry seen from the other side: input and output
    /// channels and spatial sizes exchanged (a Conv's and the
    /// ConvTranspose that undoes its shapes share a weight and this map).
    pub fn swapped(&self) -> ConvGeom {
        ConvGeom {
            n: self.n,
            c_in: self.c_out,
            c_out: self.c_in,
            group: self.group,
            in_sp: self.out_sp.clone(),
            out_sp: self.in_sp.clone(),
            kernel: self.kernel.clone(),
            strides: self.strides.clone(),
            dilations: self.dilations.clone(),
            pads_begin: self.pads_begin.clone(),
            pads_end: self.pads_end.clone(),
        }
    }

    fn g3(&self) -> G3 {
        G3 {
            i: to3(&self.in_sp, 1),
            o: to3(&self.out_sp, 1),
            k: to3(&self.kernel, 1),
            s: to3(&self.strides, 1),
            d: to3(&self.dilations, 1),
            p: to3(&self.pads_begin, 0),
        }
    }
    /// Input spatial elements per channel.
    pub fn in_len(&self) -> usize {
        self.in_sp.iter().product()
    }
    /// Output spatial elements per channel.
    pub fn out_len(&self) -> usize {
        self.out_sp.iter().product()
    }
    /// Kernel taps.
    pub fn k_len(&self) -> usize {
        self.kernel.iter().product()
    }
    /// True for a 1x1, stride-1, unpadded convolution.
    pub fn is_pointwise(&self) -> bool {
        self.k_len() == 1
            && self.strides.iter().all(|&s| s == 1)
            && self
                .pads_begin
                .iter()
                .chain(&self.pads_end)
                .all(|&p| p == 0)
    }
}

/// Element count of an output shape, refusing more than [`MAX_ELEMENTS`].
fn checked_prod(v: &[usize]) -> Result<usize> {
    match v.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= MAX_ELEMENTS => Ok(n),
        _ => Err(op_error(format!(
            "output shape {v:?} has more than {MAX_ELEMENTS} values"
        ))),
    }
}

/// Effective kernel extent `(k - 1) * d + 1`.
fn extent(k: usize, d: usize) -> Result<usize> {
    (k - 1)
        .checked_mul(d)
        .and_then(|e| e.checked_add(1))
        .ok_or_else(|| op_error("dilated kernel is too large"))
}

/// Checks the element type of the data inputs (float only).
fn check_float(what: &str, dt: DType) -> Result<()> {
    if dt.storage() != Storage::Float {
        return Err(op_error(format!("{what} must be a float tensor, got {dt}")));
    }
    Ok(())
}

fn check_bias(b: Option<&[usize]>, c_out: usize) -> Result<()> {
    match b {
        Some(s) if s != [c_out] => Err(op_error(format!(
            "bias must have shape [{c_out}], got {s:?}"
        ))),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Conv

/// `Conv`.
#[derive(Clone, Debug)]
pub struct Conv {
    /// Attributes.
    pub attrs: ConvAttrs,
}

impl Conv {
    /// Resolves the geometry for an input of shape `x` and a weight of
    /// shape `w` (`[C_out, C_in / group, k...]`).
    pub fn geometry(&self, x: &[usize], w: &[usize]) -> Result<ConvGeom> {
        let a = &self.attrs;
        let (rank, kernel, strides, dilations) = a.resolve_common(x, w)?;
        let (n, c_in, c_out, group) = (x[0], x[1], w[0], a.group);
        if w[1].checked_mul(group) != Some(c_in) {
            return Err(op_error(format!(
                "input has {c_in} channels but the weight expects {} x group {group}",
                w[1]
            )));
        }
        if c_out % group != 0 {
            return Err(op_error(format!(
                "{c_out} output channels are not divisible by group {group}"
            )));
        }
        let (mut pb, mut pe) = a.explicit_pads(rank)?;
        let mut out = vec![0; rank];
        for i in 0..rank {
            let (inp, s) = (x[2 + i], strides[i]);
            let ek = extent(kernel[i], dilations[i])?;
            match a.auto_pad {
                AutoPad::SameUpper | AutoPad::SameLower => {
                    out[i] = inp.div_ceil(s);
                    let total = if out[i] == 0 {
                        0
                    } else {
                        ((out[i] - 1) * s + ek).saturating_sub(inp)
                    };
                    pb[i] = if a.auto_pad == AutoPad::SameUpper {
                        total / 2
                    } else {
                        total - total / 2
                    };
                    pe[i] = total - pb[i];
                }
                AutoPad::Valid | AutoPad::NotSet => {
                    let padded = inp
                        .checked_add(pb[i])
                        .and_then(|v| v.checked_add(pe[i]))
                        .ok_or_else(|| op_error("padded size is too large"))?;
                    if padded < ek {
                        return Err(op_error(format!(
                            "spatial axis {i}: padded input size {padded} is smaller than the dilated kernel {ek}"
                        )));
                    }
                    out[i] = (padded - ek) / s + 1;
                }
            }
        }
        let mut full = vec![n, c_out];
        full.extend(&out);
        checked_prod(&full)?;
        Ok(ConvGeom {
            n,
            c_in,
            c_out,
            group,
            in_sp: x[2..].to_vec(),
            out_sp: out,
            kernel,
            strides,
            dilations,
            pads_begin: pb,
            pads_end: pe,
        })
    }
}

/// Builds an output of `len` values in `items` equal chunks: each chunk's
/// planes of `plane` values are filled with `init(item, plane_index)` (a
/// bias, or 0), then `f(item, chunk, scratch, parallel_inside)` adds to it.
/// Items run in parallel (each with its own scratch buffer) or one after
/// another with parallelism inside. Filling a chunk right before its work
/// keeps it in cache: no separate zeroing pass over the whole output.
fn build_items(
    len: usize,
    items: usize,
    plane: usize,
    init: impl Fn(usize, usize) -> f32 + Sync,
    per_item_macs: usize,
    scratch_len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32], bool) + Sync,
) -> Vec<f32> {
    if items == 0 || len == 0 || plane == 0 {
        return vec![0.0; len];
    }
    let chunk = len / items;
    assert!(
        chunk * items == len && chunk.is_multiple_of(plane),
        "build_items: {len} values do not split into {items} items of {plane}-value planes"
    );
    let total = items.saturating_mul(per_item_macs);
    let threads = rayon::current_num_threads();
    let big = total >= CONV_PAR_MACS && threads > 1;
    let over_items = big && items >= threads && (per_item_macs < (1 << 22) || items >= 4 * threads);
    let fill = |start: usize, o: &mut [MaybeUninit<f32>]| {
        let i = start / chunk;
        for (j, pl) in o.chunks_mut(plane).enumerate() {
            fill_uninit(pl, init(i, j));
        }
        // SAFETY: every value of `o` was just initialised, and
        // `MaybeUninit<f32>` has the layout of `f32`.
        let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
        // Over items: one item per task; otherwise parallel inside.
        with_scratch(0, scratch_len, |s| f(i, o, s, big && !over_items))
    };
    // SAFETY: `fill` initialises every value of its chunk.
    unsafe { super::pool::build_vec(len, chunk, over_items, fill) }
}

/// Images (times groups) from which 3x3 convs use im2col + GEMM rather
/// than Winograd (see `conv_forward`).
const WINOGRAD_MAX_IMAGES: usize = 8;

/// Fills each channel plane of `out` (`[N, C, len]`) with its bias.
fn fill_bias(out: &mut [f32], bias: Option<&[f32]>, c: usize, len: usize) {
    if let Some(b) = bias {
        if len == 0 {
            return;
        }
        for (i, plane) in out.chunks_mut(len).enumerate() {
            plane.fill(b[i % c]);
        }
    }
}

/// im2col of one group for the output rows `rows` (flattened depth x
/// height rows of `g.o[2]` values each): `x` holds `cg` channels of
/// `g.in_len()` values; `col` receives `cg * k_len` rows of
/// `rows.len() * g.o[2]` values.
fn im2col(x: &[f32], cg: usize, g: &G3, rows: std::ops::Range<usize>, col: &mut [f32], par: bool) {
    let (pin, ks) = (g.in_len(), g.k_len());
    let [_, ih, iw] = g.i;
    let [_, oh, ow] = g.o;
    let pb = rows.len() * ow;
    let ranges: Vec<(isize, usize, usize)> = (0..g.k[2])
        .map(|kw| {
            let off = g.off(2, kw);
            let (lo, hi) = g.valid(2, off);
            (off, lo, hi)
        })
        .collect();
    // A "same" conv: a tap's row is the input plane shifted by one
    // offset, so it is one copy, then zeros where it wraps and outside;
    // else a copy per output row (many short copies on small planes).
    let shifted = g.shifts_whole_rows();
    let shifted_tap = |xc: &[f32], kh: usize, &range: &(isize, usize, usize), row: &mut [f32]| {
        let Some(run) = g.shifted_run(kh, range, &rows) else {
            row.fill(0.0);
            return;
        };
        row[..run.first].fill(0.0);
        row[run.first..run.last].copy_from_slice(&xc[run.input()]);
        row[run.last..].fill(0.0);
        run.zero_wrapped(row, ow);
    };
    let one = |(c, cc): (usize, &mut [f32])| {
        let xc = &x[c * pin..(c + 1) * pin];
        if shifted {
            for kh in 0..g.k[1] {
                for (kw, range) in ranges.iter().enumerate() {
                    shifted_tap(xc, kh, range, &mut cc[(kh * g.k[2] + kw) * pb..][..pb]);
                }
            }
            return;
        }
        for kd in 0..g.k[0] {
            let offd = g.off(0, kd);
            for kh in 0..g.k[1] {
                let offh = g.off(1, kh);
                for (kw, &(offw, lo, hi)) in ranges.iter().enumerate() {
                    let row = &mut cc[((kd * g.k[1] + kh) * g.k[2] + kw) * pb..][..pb];
                    for r in rows.clone() {
                        let (z, y) = (r / oh, r % oh);
                        let dst = &mut row[(r - rows.start) * ow..][..ow];
                        let zi = (z * g.s[0]) as isize + offd;
                        let yi = (y * g.s[1]) as isize + offh;
                        if zi < 0 || zi >= g.i[0] as isize || yi < 0 || yi >= ih as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &xc[(zi as usize * ih + yi as usize) * iw..][..iw];
                        dst[..lo].fill(0.0);
                        dst[hi..].fill(0.0);
                        if lo < hi {
                            let start = (lo as isize * g.s[2] as isize + offw) as usize;
                            if g.s[2] == 1 {
                                dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                            } else {
                                for (j, d) in dst[lo..hi].iter_mut().enumerate() {
                                    *d = src[start + j * g.s[2]];
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let col = &mut col[..cg * ks * pb];
    if par && cg > 1 {
        col.par_chunks_mut(ks * pb).enumerate().for_each(one);
    } else {
        col.chunks_mut(ks * pb).enumerate().for_each(one);
    }
}

/// Largest im2col / col2im buffer (values) built at once; bigger ones are
/// built and multiplied a block of rows at a time (tiny in unit tests, so
/// they cover the blocking).
const COL_LIMIT: usize = if cfg!(test) { 1 << 10 } else { 1 << 22 };

/// Rows per block so that `row_len`-value rows fill at most [`COL_LIMIT`].
fn rows_per_block(row_len: usize, rows: usize) -> usize {
    (COL_LIMIT / row_len.max(1)).clamp(1, rows.max(1))
}

/// Runs `f` compiled with AVX2 and FMA when the CPU has them (the build
/// targets baseline x86-64). Only code inlined into `f` benefits: pass an
/// `#[inline(always)]` closure calling `#[inline(always)]` functions.
/// `f` receives `true` when compiled with FMA (so `f32::mul_add` is one
/// instruction there).
#[inline(always)]
fn simd<R>(f: impl FnOnce(bool) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce(bool) -> R) -> R {
            f(true)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features `avx2` is compiled with.
            return unsafe { avx2(f) };
        }
    }
    f(false)
}

thread_local! {
    /// Per-thread reusable scratch buffers (two levels, so an outer buffer
    /// can stay borrowed while inner work on the same thread uses another),
    /// so large scratch space is not mapped and unmapped on every call.
    static SCRATCH: [RefCell<Vec<f32>>; 2] = const { [RefCell::new(Vec::new()), RefCell::new(Vec::new())] };
}

/// Scratch buffers larger than this (in values) are not kept between calls.
const SCRATCH_KEEP: usize = 1 << 24;

/// Runs `f` on a scratch slice of `len` values with unspecified contents:
/// this thread's buffer `slot` when it is free, else a fresh allocation.
fn with_scratch<R>(slot: usize, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    if len > SCRATCH_KEEP {
        return f(&mut vec![0.0; len]);
    }
    SCRATCH.with(|s| match s[slot].try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Copies one input plane (volume) into `dst`, laid out with the padding
/// of `g` around it (zeros), `dims` being the padded size.
#[inline(always)]
fn pad_plane(x: &[f32], g: &G3, dims: [usize; 3], dst: &mut [f32]) {
    let [_, ih, iw] = g.i;
    let [_, ph, pw] = dims;
    let no_pad = g.p.iter().all(|&p| p == 0) && dims == g.i;
    if no_pad {
        dst.copy_from_slice(x);
        return;
    }
    dst.fill(0.0);
    for z in 0..g.i[0] {
        for y in 0..ih {
            let d = ((z + g.p[0]) * ph + y + g.p[1]) * pw + g.p[2];
            dst[d..d + iw].copy_from_slice(&x[(z * ih + y) * iw..][..iw]);
        }
    }
}

/// Direct convolution of one padded input plane (see [`pad_plane`]) with
/// one filter, accumulated into one output plane.
#[inline(always)]
fn direct_plane(xp: &[f32], dims: [usize; 3], w: &[f32], g: &G3, out: &mut [f32]) {
    let [_, ph, pw] = dims;
    let [od, oh, ow] = g.o;
    let [kd_n, kh_n, kw_n] = g.k;
    let (s2, d2) = (g.s[2], g.d[2]);
    if s2 == 1 && kd_n == 1 && kh_n == 3 && kw_n == 3 {
        // The common 3x3 case: all nine taps in one pass over each row.
        let (d1, w) = (g.d[1] * pw, &w[..9]);
        for z in 0..od {
            for y in 0..oh {
                let orow = &mut out[(z * oh + y) * ow..][..ow];
                let r = (z * g.s[0] * ph + y * g.s[1]) * pw;
                let row = |kh: usize, kw: usize| &xp[r + kh * d1 + kw * d2..][..ow];
                let (a0, a1, a2) = (row(0, 0), row(0, 1), row(0, 2));
                let (b0, b1, b2) = (row(1, 0), row(1, 1), row(1, 2));
                let (c0, c1, c2) = (row(2, 0), row(2, 1), row(2, 2));
                for j in 0..ow {
                    orow[j] += w[0] * a0[j]
                        + w[1] * a1[j]
                        + w[2] * a2[j]
                        + w[3] * b0[j]
                        + w[4] * b1[j]
                        + w[5] * b2[j]
                        + w[6] * c0[j]
                        + w[7] * c1[j]
                        + w[8] * c2[j];
                }
            }
        }
        return;
    }
    for z in 0..od {
        for y in 0..oh {
            let orow = &mut out[(z * oh + y) * ow..][..ow];
            for kd in 0..kd_n {
                for kh in 0..kh_n {
                    let r = ((z * g.s[0] + kd * g.d[0]) * ph + y * g.s[1] + kh * g.d[1]) * pw;
                    let wrow = &w[(kd * kh_n + kh) * kw_n..][..kw_n];
                    if s2 == 1 && kw_n == 3 {
                        let (a, b, c) = (
                            &xp[r..r + ow],
                            &xp[r + d2..r + d2 + ow],
                            &xp[r + 2 * d2..r + 2 * d2 + ow],
                        );
                        let (w0, w1, w2) = (wrow[0], wrow[1], wrow[2]);
                        for (((o, &p0), &p1), &p2) in orow.iter_mut().zip(a).zip(b).zip(c) {
                            *o += w0 * p0 + w1 * p1 + w2 * p2;
                        }
                    } else if s2 == 1 {
                        for (kw, &wv) in wrow.iter().enumerate() {
                            let src = &xp[r + kw * d2..r + kw * d2 + ow];
                            for (o, &p) in orow.iter_mut().zip(src) {
                                *o += wv * p;
                            }
                        }
                    } else {
                        for (kw, &wv) in wrow.iter().enumerate() {
                            let src = &xp[r + kw * d2..];
                            for (j, o) in orow.iter_mut().enumerate() {
                                *o += wv * src[j * s2];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `a * b + c`, fused when `fma` (then the CPU must have FMA; see [`simd`]).
#[inline(always)]
fn madd(fma: bool, a: f32, b: f32, c: f32) -> f32 {
    if fma {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// 3x3, stride-1, 2-D convolution of one input plane: writes `bias + x * w`
/// into one output plane. `buf` receives the rows of `x` padded left and
/// right (vertical padding reads a zero row).
#[inline(always)]
fn dw3x3_plane(
    fma: bool,
    x: &[f32],
    w: &[f32],
    bias: f32,
    g: &G3,
    buf: &mut Vec<f32>,
    out: &mut [MaybeUninit<f32>],
) {
    let (ih, iw, oh, ow) = (g.i[1], g.i[2], g.o[1], g.o[2]);
    let (pt, pl, dh, dw) = (g.p[1], g.p[2], g.d[1], g.d[2]);
    let w = &w[..9];
    // Padded columns read: j + kw * dw for j < ow.
    let wp = ow + 2 * dw;
    let keep = iw.min(wp.saturating_sub(pl));
    buf.resize((ih + 1) * wp, 0.0);
    let (rows_buf, zero) = buf.split_at_mut(ih * wp);
    zero.fill(0.0);
    for (r, dst) in rows_buf.chunks_mut(wp).enumerate() {
        let head = pl.min(wp);
        dst[..head].fill(0.0);
        dst[head..head + keep].copy_from_slice(&x[r * iw..][..keep]);
        dst[head + keep..].fill(0.0);
    }
    let (rows_buf, zero) = (&*rows_buf, &*zero);
    for y in 0..oh {
        let orow = &mut out[y * ow..][..ow];
        let row = |kh: usize| {
            let yi = (y + kh * dh) as isize - pt as isize;
            if yi >= 0 && (yi as usize) < ih {
                &rows_buf[yi as usize * wp..][..wp]
            } else {
                zero
            }
        };
        let (r0, r1, r2) = (row(0), row(1), row(2));
        let (a0, a1, a2) = (&r0[..ow], &r0[dw..dw + ow], &r0[2 * dw..2 * dw + ow]);
        let (b0, b1, b2) = (&r1[..ow], &r1[dw..dw + ow], &r1[2 * dw..2 * dw + ow]);
        let (c0, c1, c2) = (&r2[..ow], &r2[dw..dw + ow], &r2[2 * dw..2 * dw + ow]);
        for j in 0..ow {
            let mut acc = madd(fma, w[0], a0[j], bias);
            acc = madd(fma, w[1], a1[j], acc);
            acc = madd(fma, w[2], a2[j], acc);
            acc = madd(fma, w[3], b0[j], acc);
            acc = madd(fma, w[4], b1[j], acc);
            acc = madd(fma, w[5], b2[j], acc);
            acc = madd(fma, w[6], c0[j], acc);
            acc = madd(fma, w[7], c1[j], acc);
            orow[j] = MaybeUninit::new(madd(fma, w[8], c2[j], acc));
        }
    }
}

/// Convolution with one input channel per group (depthwise, with any
/// channel multiplier): direct loops, parallel over output planes. Writes
/// every value of `out` (bias included).
fn conv_direct_cg1(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    geom: &ConvGeom,
    g: &G3,
    out: &mut [MaybeUninit<f32>],
) {
    let (pin, p, ks) = (g.in_len(), g.out_len(), g.k_len());
    let mg = geom.c_out / geom.group;
    let pe = to3(&geom.pads_end, 0);
    let dims = [
        g.i[0] + g.p[0] + pe[0],
        g.i[1] + g.p[1] + pe[1],
        g.i[2] + g.p[2] + pe[2],
    ];
    let fast3x3 = geom.kernel == [3, 3] && geom.strides == [1, 1];
    let padded: usize = if fast3x3 {
        (g.i[1] + 1) * (g.o[2] + 2 * g.d[2])
    } else {
        dims.iter().product()
    };
    let plane = |xp: &mut Vec<f32>, (q, o): (usize, &mut [MaybeUninit<f32>])| {
        let (img, oc) = (q / geom.c_out, q % geom.c_out);
        let ic = oc / mg;
        let xs = &x[(img * geom.c_in + ic) * pin..][..pin];
        let wk = &w[oc * ks..(oc + 1) * ks];
        let b = bias.map_or(0.0, |b| b[oc]);
        simd(
            #[inline(always)]
            |fma| {
                if fast3x3 {
                    dw3x3_plane(fma, xs, wk, b, g, xp, o);
                } else {
                    for v in o.iter_mut() {
                        v.write(b);
                    }
                    // SAFETY: every element was just initialised, and
                    // MaybeUninit<f32> has the layout of f32.
                    let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
                    pad_plane(xs, g, dims, xp);
                    direct_plane(xp, dims, wk, g, o);
                }
            },
        );
    };
    if out.len().saturating_mul(ks) >= CONV_PAR_MACS {
        out.par_chunks_mut(p)
            .enumerate()
            .for_each_init(|| vec![0.0f32; padded], plane);
    } else {
        let mut xp = vec![0.0f32; padded];
        out.chunks_mut(p)
            .enumerate()
            .for_each(|q| plane(&mut xp, q));
    }
}

/// Forward convolution (f32). `x` is `[N, C_in, in_sp...]`, `w` is
/// `[C_out, C_in / group, kernel...]`, `bias` is `[C_out]`; returns
/// `[N, C_out, out_sp...]` values. Shapes must agree with `geom` (from
/// [`Conv::geometry`]).
pub fn conv_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, geom: &ConvGeom) -> Vec<f32> {
    let g = geom.g3();
    let (pin, p, ks) = (g.in_len(), g.out_len(), g.k_len());
    let cg = geom.c_in / geom.group;
    let mg = geom.c_out / geom.group;
    let kk = cg * ks;
    assert_eq!(
        x.len(),
        geom.n * geom.c_in * pin,
        "conv_forward: input size"
    );
    assert_eq!(w.len(), geom.c_out * kk, "conv_forward: weight size");
    let total = geom.n * geom.c_out * p;
    if total == 0 {
        return Vec::new();
    }
    if cg == 1 {
        // Every value is written once: skip zeroing the output.
        let mut out: Vec<f32> = Vec::with_capacity(total);
        conv_direct_cg1(x, w, bias, geom, &g, &mut out.spare_capacity_mut()[..total]);
        // SAFETY: conv_direct_cg1 initialised all `total` values.
        unsafe { out.set_len(total) };
        return out;
    }
    if cg == 0 {
        let mut out = vec![0.0; total];
        fill_bias(&mut out, bias, geom.c_out, p);
        return out;
    }
    // Winograd's 2.25x fewer multiplications win on a few images (batch 1
    // inference: the GEMMs are split inside); on many (training batches)
    // im2col + GEMM per image is faster, the transforms costing more than
    // they save (MNIST CNN at batch 64: 33 against 37 ms over its 3x3
    // convs; 2 cores, where 8 images is the crossover). A fixed count, not
    // one per thread: the path, and so the bytes, must not depend on the
    // machine's thread count.
    let many_images = geom.n * geom.group >= WINOGRAD_MAX_IMAGES;
    if !many_images && winograd::applies(geom) {
        let mut out = par_zeros(total);
        fill_bias(&mut out, bias, geom.c_out, p);
        winograd::conv(x, w, geom, &mut out);
        return out;
    }
    let pointwise = geom.is_pointwise();
    let ow = g.o[2];
    let nrows = g.o[0] * g.o[1];
    let block = rows_per_block(kk * ow, nrows);
    let scratch = if pointwise { 0 } else { kk * ow * block };
    let items = geom.n * geom.group;
    let accumulate = bias.is_some();
    build_items(
        total,
        items,
        p,
        |item, ch| bias.map_or(0.0, |b| b[(item % geom.group) * mg + ch]),
        mg * kk * p,
        scratch,
        |item, o, col, par| {
            let (img, grp) = (item / geom.group, item % geom.group);
            let xg = &x[(img * geom.c_in + grp * cg) * pin..][..cg * pin];
            let wg = &w[grp * mg * kk..][..mg * kk];
            if pointwise {
                let rhs = MatRef::row_major(xg, p);
                sgemm(
                    mg,
                    p,
                    kk,
                    1.0,
                    MatRef::row_major(wg, kk),
                    rhs,
                    accumulate,
                    o,
                    p,
                    par,
                );
                return;
            }
            for r0 in (0..nrows).step_by(block) {
                let rows = r0..(r0 + block).min(nrows);
                let pb = rows.len() * ow;
                im2col(xg, cg, &g, rows, col, par);
                let rhs = MatRef::row_major(&col[..kk * pb], pb);
                sgemm(
                    mg,
                    pb,
                    kk,
                    1.0,
                    MatRef::row_major(wg, kk),
                    rhs,
                    accumulate,
                    &mut o[r0 * ow..],
                    p,
                    par,
                );
            }
        },
    )
}

/// Winograd F(2x2, 3x3): 2-D 3x3 convolutions with stride 1 and dilation
/// 1 (any padding), computed as 16 GEMMs on 4x4 input tiles that each give
/// 2x2 outputs: 2.25x fewer multiplications than the direct form, with
/// transforms whose coefficients are 0, ±1 and ±1/2, so the rounding error
/// stays close to the direct form's (the 4x4 variant saves more but loses
/// about two more digits).
mod winograd {
    use super::*;

    /// Lanes processed together by the tile transforms.
    const L: usize = 8;
    type V = [f32; L];
    /// Output tile side.
    const MO: usize = 2;
    /// Input tile side.
    const MI: usize = MO + 2;
    /// Positions in the transformed domain.
    const NP: usize = MI * MI;
    /// Largest number of tiles transformed and multiplied at once.
    const MAX_BLOCK: usize = 128;

    /// Tiles per axis `(rows, cols)`.
    fn tiles(g: &ConvGeom) -> (usize, usize) {
        (g.out_sp[0].div_ceil(MO), g.out_sp[1].div_ceil(MO))
    }

    /// True when the Winograd path should be used.
    pub(super) fn applies(g: &ConvGeom) -> bool {
        if g.kernel != [3, 3] || g.strides != [1, 1] || g.dilations != [1, 1] {
            return false;
        }
        let (th, tw) = tiles(g);
        g.c_in / g.group >= 8 && g.c_out / g.group >= 8 && th * tw >= 16
    }

    /// `Bᵀ x` (input transform along one axis).
    #[inline(always)]
    fn bt(x: &[V; MI]) -> [V; MI] {
        let mut r = [[0.0; L]; MI];
        for l in 0..L {
            r[0][l] = x[0][l] - x[2][l];
            r[1][l] = x[1][l] + x[2][l];
            r[2][l] = x[2][l] - x[1][l];
            r[3][l] = x[1][l] - x[3][l];
        }
        r
    }

    /// `Aᵀ x` (output transform along one axis).
    #[inline(always)]
    fn at(x: &[V; MI]) -> [V; MO] {
        let mut r = [[0.0; L]; MO];
        for l in 0..L {
            r[0][l] = x[0][l] + x[1][l] + x[2][l];
            r[1][l] = x[1][l] - x[2][l] - x[3][l];
        }
        r
    }

    /// `G x` (kernel transform along one axis).
    #[inline(always)]
    fn gt(x: &[V; 3]) -> [V; MI] {
        let mut r = [[0.0; L]; MI];
        for l in 0..L {
            r[0][l] = x[0][l];
            r[1][l] = (x[0][l] + x[1][l] + x[2][l]) * 0.5;
            r[2][l] = (x[0][l] - x[1][l] + x[2][l]) * 0.5;
            r[3][l] = x[2][l];
        }
        r
    }

    /// Transformed kernels `U[group][NP][C_in/g][C_out/g]`.
    fn transform_weights(w: &[f32], geom: &ConvGeom) -> Vec<f32> {
        let (cg, mg) = (geom.c_in / geom.group, geom.c_out / geom.group);
        let mut u = vec![0.0f32; geom.group * NP * cg * mg];
        let per_group = |(gr, ug): (usize, &mut [f32])| {
            simd(
                #[inline(always)]
                |_| {
                    for c in 0..cg {
                        for o0 in (0..mg).step_by(L) {
                            let lanes = L.min(mg - o0);
                            let mut k = [[[0.0f32; L]; 3]; 3];
                            for l in 0..lanes {
                                let wk = &w[((gr * mg + o0 + l) * cg + c) * 9..][..9];
                                for a in 0..3 {
                                    for b in 0..3 {
                                        k[a][b][l] = wk[a * 3 + b];
                                    }
                                }
                            }
                            // Columns, then rows: G k Gᵀ.
                            let mut tmp = [[[0.0f32; L]; 3]; MI];
                            for b in 0..3 {
                                let col = gt(&[k[0][b], k[1][b], k[2][b]]);
                                for i in 0..MI {
                                    tmp[i][b] = col[i];
                                }
                            }
                            for (i, row) in tmp.iter().enumerate() {
                                for (j, v) in gt(row).iter().enumerate() {
                                    let dst = &mut ug[((i * MI + j) * cg + c) * mg + o0..][..lanes];
                                    dst.copy_from_slice(&v[..lanes]);
                                }
                            }
                        }
                    }
                },
            )
        };
        if u.len() >= 1 << 16 {
            u.par_chunks_mut(NP * cg * mg)
                .enumerate()
                .for_each(per_group);
        } else {
            u.chunks_mut(NP * cg * mg).enumerate().for_each(per_group);
        }
        u
    }

    /// Output pointer shared by the tile blocks, which write disjoint tiles.
    #[derive(Clone, Copy)]
    struct OutPtr(*mut f32);
    // SAFETY: used only to write disjoint output elements from different
    // threads while no other reference to the output is in use.
    unsafe impl Send for OutPtr {}
    unsafe impl Sync for OutPtr {}
    impl OutPtr {
        /// The pointer (a method, so closures capture the whole wrapper).
        fn get(self) -> *mut f32 {
            self.0
        }
    }

    /// Writes input row `yy` of the padded, channels-innermost image: `row`
    /// holds `wp` pixels of `cgp` channels.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn fill_row(
        xg: &[f32],
        cg: usize,
        cgp: usize,
        ih: usize,
        iw: usize,
        pt: usize,
        pl: usize,
        yy: usize,
        row: &mut [f32],
    ) {
        row.fill(0.0);
        if yy < pt || yy - pt >= ih {
            return;
        }
        let (y, pin) = (yy - pt, ih * iw);
        // 8x8 blocks: read 8 channels' rows, write 8 pixels' channel vectors.
        for x0 in (0..iw).step_by(L) {
            let nx = L.min(iw - x0);
            for c0 in (0..cg).step_by(L) {
                let nc = L.min(cg - c0);
                let mut blk = [[0.0f32; L]; L];
                for (c, b) in blk.iter_mut().enumerate().take(nc) {
                    b[..nx].copy_from_slice(&xg[(c0 + c) * pin + y * iw + x0..][..nx]);
                }
                for xx in 0..nx {
                    let dst = &mut row[(x0 + xx + pl) * cgp + c0..][..L];
                    for (c, d) in dst.iter_mut().enumerate() {
                        *d = blk[c][xx];
                    }
                }
            }
        }
    }

    /// Adds the convolution of `x` with `w` to `out` (which holds the bias).
    pub(super) fn conv(x: &[f32], w: &[f32], geom: &ConvGeom, out: &mut [f32]) {
        let (cg, mg) = (geom.c_in / geom.group, geom.c_out / geom.group);
        let (cgp, mgp) = (cg.next_multiple_of(L), mg.next_multiple_of(L));
        let (ih, iw) = (geom.in_sp[0], geom.in_sp[1]);
        let (oh, ow) = (geom.out_sp[0], geom.out_sp[1]);
        let (pt, pl) = (geom.pads_begin[0], geom.pads_begin[1]);
        let (th, tw) = tiles(geom);
        let nt = th * tw;
        // Padded image: holds the input and every tile's 4x4 window.
        let (hp, wp) = (MO * th + 2, MO * tw + 2);
        let u = transform_weights(w, geom);
        let threads = rayon::current_num_threads();
        let par = threads > 1 && geom.n * geom.group * nt * cg * mg >= CONV_PAR_MACS / 4;
        let mut nblk = nt.div_ceil(MAX_BLOCK);
        if par {
            // A multiple of the thread count, for balance.
            nblk = nblk
                .max(2 * threads)
                .next_multiple_of(threads)
                .min(nt.div_ceil(16))
                .max(1);
        }
        let tb_max = nt.div_ceil(nblk);
        let nblk = nt.div_ceil(tb_max);
        let (pin, p) = (ih * iw, oh * ow);
        let (v_len, m_len) = (NP * tb_max * cgp, NP * tb_max * mgp);
        with_scratch(0, hp * wp * cgp, |xp| {
            for img in 0..geom.n {
                for gr in 0..geom.group {
                    let xg = &x[(img * geom.c_in + gr * cg) * pin..][..cg * pin];
                    let rows = |(yy, row): (usize, &mut [f32])| {
                        simd(
                            #[inline(always)]
                            |_| fill_row(xg, cg, cgp, ih, iw, pt, pl, yy, row),
                        )
                    };
                    if par {
                        xp.par_chunks_mut(wp * cgp).enumerate().for_each(rows);
                    } else {
                        xp.chunks_mut(wp * cgp).enumerate().for_each(rows);
                    }
                    let ug = &u[gr * NP * cg * mg..][..NP * cg * mg];
                    let obase = (img * geom.c_out + gr * mg) * p;
                    let optr = OutPtr(out[obase..obase + mg * p].as_mut_ptr());
                    let xp = &*xp;
                    let block = |b: usize| {
                        with_scratch(1, v_len + m_len, |scratch| {
                            let (vb, mb) = scratch.split_at_mut(v_len);
                            block_conv(
                                xp, ug, optr, vb, mb, b, tb_max, nt, tw, wp, cg, cgp, mg, mgp, oh,
                                ow,
                            )
                        })
                    };
                    if par && nblk > 1 {
                        (0..nblk).into_par_iter().for_each(block);
                    } else {
                        (0..nblk).for_each(block);
                    }
                }
            }
        })
    }

    /// One block of tiles: input transforms, the NP products, output
    /// transforms added into the output (through `optr`).
    #[allow(clippy::too_many_arguments)]
    fn block_conv(
        xp: &[f32],
        ug: &[f32],
        optr: OutPtr,
        vb: &mut [f32],
        mb: &mut [f32],
        b: usize,
        tb_max: usize,
        nt: usize,
        tw: usize,
        wp: usize,
        cg: usize,
        cgp: usize,
        mg: usize,
        mgp: usize,
        oh: usize,
        ow: usize,
    ) {
        let t0 = b * tb_max;
        let tb = tb_max.min(nt - t0);
        simd(
            #[inline(always)]
            |_| {
                // Input transforms: V[ξ][t][c].
                for t in 0..tb {
                    let (ty, tx) = ((t0 + t) / tw, (t0 + t) % tw);
                    for c0 in (0..cgp).step_by(L) {
                        let mut d = [[[0.0f32; L]; MI]; MI];
                        for (i, drow) in d.iter_mut().enumerate() {
                            let base = ((MO * ty + i) * wp + MO * tx) * cgp + c0;
                            for (j, dv) in drow.iter_mut().enumerate() {
                                dv.copy_from_slice(&xp[base + j * cgp..][..L]);
                            }
                        }
                        let mut tmp = [[[0.0f32; L]; MI]; MI];
                        for j in 0..MI {
                            let col = bt(&std::array::from_fn(|i| d[i][j]));
                            for i in 0..MI {
                                tmp[i][j] = col[i];
                            }
                        }
                        for (i, row) in tmp.iter().enumerate() {
                            for (j, v) in bt(row).iter().enumerate() {
                                vb[((i * MI + j) * tb_max + t) * cgp + c0..][..L]
                                    .copy_from_slice(v);
                            }
                        }
                    }
                }
            },
        );
        // NP products M[ξ] (tb x mg) = V[ξ] (tb x cg) · U[ξ] (cg x mg).
        for xi in 0..NP {
            sgemm(
                tb,
                mg,
                cg,
                1.0,
                MatRef {
                    data: &vb[xi * tb_max * cgp..][..tb * cgp],
                    rs: cgp,
                    cs: 1,
                },
                MatRef::row_major(&ug[xi * cg * mg..][..cg * mg], mg),
                false,
                &mut mb[xi * tb_max * mgp..][..tb * mgp],
                mgp,
                false,
            );
        }
        let base = optr.get();
        simd(
            #[inline(always)]
            move |_| output_transforms(mb, base, t0, tb, tb_max, tw, mg, mgp, oh, ow),
        );
    }

    /// Output transforms of the tiles `t0..t0 + tb` (products in `mb`),
    /// added into the output planes at `out`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn output_transforms(
        mb: &[f32],
        out: *mut f32,
        t0: usize,
        tb: usize,
        tb_max: usize,
        tw: usize,
        mg: usize,
        mgp: usize,
        oh: usize,
        ow: usize,
    ) {
        let p = oh * ow;
        for t in 0..tb {
            let (ty, tx) = ((t0 + t) / tw, (t0 + t) % tw);
            let rows = MO.min(oh - MO * ty);
            let cols = MO.min(ow - MO * tx);
            for o0 in (0..mg).step_by(L) {
                let mut tmp = [[[0.0f32; L]; MI]; MO];
                for j in 0..MI {
                    let col = at(&std::array::from_fn(|i| {
                        let mut v = [0.0f32; L];
                        v.copy_from_slice(&mb[((i * MI + j) * tb_max + t) * mgp + o0..][..L]);
                        v
                    }));
                    for i in 0..MO {
                        tmp[i][j] = col[i];
                    }
                }
                for (r, trow) in tmp.iter().enumerate().take(rows) {
                    let y = at(trow);
                    for l in 0..L.min(mg - o0) {
                        let at_row = (o0 + l) * p + (MO * ty + r) * ow + MO * tx;
                        for (s, yv) in y.iter().enumerate().take(cols) {
                            // SAFETY: (o0 + l, MO·ty + r, MO·tx + s) is an output
                            // element of this group (o0 + l < mg, rows and cols
                            // are cropped to the output), and only this tile
                            // writes it.
                            unsafe { *out.add(at_row + s) += yv[l] };
                        }
                    }
                }
            }
        }
    }
}

fn conv_macs(geom: &ConvGeom) -> u64 {
    let cg = geom.c_in / geom.group.max(1);
    [geom.n, geom.c_out, geom.out_len(), cg, geom.k_len()]
        .iter()
        .fold(1u64, |a, &x| a.saturating_mul(x as u64))
}

impl Op for Conv {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        conv_channels(cx, self.attrs.group, false)
    }

    fn prune(&self, cx: &mut dyn PruneCx) -> Result<()> {
        prune_group(cx, self.attrs.group, Port::Out(0))
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, w) = (fact(inputs, 0)?, fact(inputs, 1)?);
        check_float("input X", x.dtype)?;
        if w.dtype != x.dtype {
            return Err(op_error(format!(
                "weight type {} differs from input type {}",
                w.dtype, x.dtype
            )));
        }
        let geom = self.geometry(&x.shape, &w.shape)?;
        check_bias(opt(inputs, 2).map(|b| b.shape.as_slice()), geom.c_out)?;
        let mut shape = vec![geom.n, geom.c_out];
        shape.extend(&geom.out_sp);
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, w) = (input(inputs, 0)?, input(inputs, 1)?);
        check_float("input X", x.dtype())?;
        let geom = self.geometry(x.shape(), w.shape())?;
        let b = opt(inputs, 2);
        check_bias(b.map(|b| b.shape()), geom.c_out)?;
        let bias = b.map(|b| b.f32s()).transpose()?;
        let out = conv_forward(x.f32s()?, w.f32s()?, bias, &geom);
        let mut shape = vec![geom.n, geom.c_out];
        shape.extend(&geom.out_sp);
        Ok(vec![Tensor::from_float(x.dtype(), shape, out)])
    }

    fn macs(&self, inputs: &[Option<&Fact>], _outputs: &[Fact]) -> u64 {
        match (opt(inputs, 0), opt(inputs, 1)) {
            (Some(x), Some(w)) => self
                .geometry(&x.shape, &w.shape)
                .map(|g| conv_macs(&g))
                .unwrap_or(0),
            _ => 0,
        }
    }
}

// ---------------------------------------------------------------------------
// ConvTranspose

/// `ConvTranspose`.
#[derive(Clone, Debug)]
pub struct ConvTranspose {
    /// Attributes shared with Conv.
    pub attrs: ConvAttrs,
    /// Extra size added at the end of each output axis.
    pub output_padding: Option<Vec<usize>>,
    /// Explicit output spatial shape (pads are then derived).
    pub output_shape: Option<Vec<usize>>,
}

impl ConvTranspose {
    /// From a ConvTranspose node's attributes.
    pub fn from_node(node: &Node) -> Result<ConvTranspose> {
        let output_padding = match node.attr_ints("output_padding")? {
            None => None,
            Some(v) => {
                if let Some(bad) = v.iter().find(|&&x| x < 0) {
                    return Err(op_error(format!(
                        "output_padding must be >= 0, got {bad} in {v:?}"
                    )));
                }
                Some(v.iter().map(|&x| x as usize).collect())
            }
        };
        let output_shape = match node.attr_ints("output_shape")? {
            None => None,
            Some(v) => {
                if let Some(bad) = v.iter().find(|&&x| x < 1) {
                    return Err(op_error(format!(
                        "output_shape must be positive, got {bad} in {v:?}"
                    )));
                }
                Some(v.iter().map(|&x| x as usize).collect())
            }
        };
        Ok(ConvTranspose {
            attrs: ConvAttrs::from_node(node)?,
            output_padding,
            output_shape,
        })
    }

    /// The convolution this one transposes: its input is this op's output
    /// and its output this op's input, with the same weight.
    pub fn forward_conv_geometry(&self, x: &[usize], w: &[usize]) -> Result<ConvGeom> {
        Ok(self.geometry(x, w)?.swapped())
    }

    /// Resolves the geometry for an input of shape `x` and a weight of
    /// shape `w` (`[C_in, C_out / group, k...]`). In the result, `in_sp` is
    /// the input's spatial size and `out_sp` the output's, as for Conv.
    pub fn geometry(&self, x: &[usize], w: &[usize]) -> Result<ConvGeom> {
        let a = &self.attrs;
        let (rank, kernel, strides, dilations) = a.resolve_common(x, w)?;
        let (n, c_in, group) = (x[0], x[1], a.group);
        if w[0] != c_in {
            return Err(op_error(format!(
                "input has {c_in} channels but the weight has {}",
                w[0]
            )));
        }
        if c_in % group != 0 {
            return Err(op_error(format!(
                "{c_in} input channels are not divisible by group {group}"
            )));
        }
        let c_out = w[1]
            .checked_mul(group)
            .ok_or_else(|| op_error("too many output channels"))?;
        let op = match &self.output_padding {
            None => vec![0; rank],
            Some(v) if v.len() == rank => v.clone(),
            Some(v) => {
                return Err(op_error(format!(
                    "attribute 'output_padding' has {} values, expected {rank}",
                    v.len()
                )))
            }
        };
        if let Some(os) = &self.output_shape {
            if os.len() != rank {
                return Err(op_error(format!(
                    "attribute 'output_shape' has {} values, expected {rank}",
                    os.len()
                )));
            }
        }
        let (mut pb, mut pe) = a.explicit_pads(rank)?;
        let mut out = vec![0; rank];
        for i in 0..rank {
            let (inp, s) = (x[2 + i], strides[i]);
            if inp == 0 {
                return Err(op_error(format!("spatial axis {i} of the input is empty")));
            }
            if op[i] >= s {
                return Err(op_error(format!(
                    "output_padding {} must be smaller than the stride {s} on spatial axis {i}",
                    op[i]
                )));
            }
            let ek = extent(kernel[i], dilations[i])?;
            let full = (inp - 1)
                .checked_mul(s)
                .and_then(|v| v.checked_add(op[i]))
                .and_then(|v| v.checked_add(ek))
                .ok_or_else(|| op_error("output size is too large"))?;
            if let Some(os) = &self.output_shape {
                let target = os[i];
                if target > full {
                    return Err(op_error(format!(
                        "output_shape {target} on spatial axis {i} exceeds the largest possible size {full}"
                    )));
                }
                let total = full - target;
                pb[i] = if a.auto_pad == AutoPad::SameUpper {
                    total / 2
                } else {
                    total - total / 2
                };
                pe[i] = total - pb[i];
                out[i] = target;
            } else {
                match a.auto_pad {
                    AutoPad::SameUpper | AutoPad::SameLower => {
                        let total = full.saturating_sub(inp.saturating_mul(s));
                        pb[i] = if a.auto_pad == AutoPad::SameUpper {
                            total / 2
                        } else {
                            total - total / 2
                        };
                        pe[i] = total - pb[i];
                    }
                    AutoPad::Valid => {
                        pb[i] = 0;
                        pe[i] = 0;
                    }
                    AutoPad::NotSet => {}
                }
                let pads = pb[i].saturating_add(pe[i]);
                if pads >= full {
                    return Err(op_error(format!(
                        "spatial axis {i}: pads {} + {} leave no output (full size {full})",
                        pb[i], pe[i]
                    )));
                }
                out[i] = full - pads;
            }
        }
        let mut shape = vec![n, c_out];
        shape.extend(&out);
        checked_prod(&shape)?;
        Ok(ConvGeom {
            n,
            c_in,
            c_out,
            group,
            in_sp: x[2..].to_vec(),
            out_sp: out,
            kernel,
            strides,
            dilations,
            pads_begin: pb,
            pads_end: pe,
        })
    }
}

/// col2im of one output channel for the input rows `rows` (flattened
/// depth x height rows of the transposed conv's input): adds `col`
/// (`k_len` rows of `rows.len() * width` values) into the output plane
/// `out`. `g` is the geometry of the equivalent forward convolution (output
/// → input).
fn col2im_plane(
    col: &mut [f32],
    g: &G3,
    ranges: &[(isize, usize, usize)],
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    // Here `g.o` is the transposed conv's input size (the forward conv's
    // output) and `g.i` its output size.
    let [_, oh, ow] = g.i;
    let [_, ih, iw] = g.o;
    let pb = rows.len() * iw;
    // A "same" conv: each tap's row adds to the output plane at one
    // offset, so it is one long loop once the values that would wrap onto
    // the neighbouring rows are zeroed (adding 0 changes nothing).
    if g.shifts_whole_rows() {
        for kh in 0..g.k[1] {
            for (kw, &range) in ranges.iter().enumerate() {
                let Some(run) = g.shifted_run(kh, range, &rows) else {
                    continue;
                };
                let row = &mut col[(kh * g.k[2] + kw) * pb..][..pb];
                run.zero_wrapped(row, iw);
                for (d, &v) in out[run.input()].iter_mut().zip(&row[run.first..run.last]) {
                    *d += v;
                }
            }
        }
        return;
    }
    for kd in 0..g.k[0] {
        for kh in 0..g.k[1] {
            for (kw, &(off, lo, hi)) in ranges.iter().enumerate() {
                if lo >= hi {
                    continue;
                }
                let row = &col[((kd * g.k[1] + kh) * g.k[2] + kw) * pb..][..pb];
                for r in rows.clone() {
                    let (z, y) = (r / ih, r % ih);
                    let zo = (z * g.s[0]) as isize + g.off(0, kd);
                    let yo = (y * g.s[1]) as isize + g.off(1, kh);
                    if zo < 0 || zo >= g.i[0] as isize || yo < 0 || yo >= oh as isize {
                        continue;
                    }
                    let src = &row[(r - rows.start) * iw..][..iw];
                    let dst = &mut out[(zo as usize * oh + yo as usize) * ow..][..ow];
                    let start = (lo as isize * g.s[2] as isize + off) as usize;
                    if g.s[2] == 1 {
                        for (d, &s) in dst[start..start + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += s;
                        }
                    } else {
                        for (j, &s) in src[lo..hi].iter().enumerate() {
                            dst[start + j * g.s[2]] += s;
                        }
                    }
                }
            }
        }
    }
}

/// Transposed convolution (f32). `x` is `[N, C_in, in_sp...]`, `w` is
/// `[C_in, C_out / group, kernel...]`, `bias` is `[C_out]`; returns
/// `[N, C_out, out_sp...]` values. Shapes must agree with `geom` (from
/// [`ConvTranspose::geometry`]).
pub fn conv_transpose_forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    geom: &ConvGeom,
) -> Vec<f32> {
    // The forward conv that this transposes maps the output to the input:
    // swap the spatial sizes so `G3::valid` gives input ranges.
    let g = G3 {
        i: to3(&geom.out_sp, 1),
        o: to3(&geom.in_sp, 1),
        k: to3(&geom.kernel, 1),
        s: to3(&geom.strides, 1),
        d: to3(&geom.dilations, 1),
        p: to3(&geom.pads_begin, 0),
    };
    let (pin, p, ks) = (geom.in_len(), geom.out_len(), geom.k_len());
    let cig = geom.c_in / geom.group;
    let cog = geom.c_out / geom.group;
    let rows = cog * ks;
    assert_eq!(
        x.len(),
        geom.n * geom.c_in * pin,
        "conv_transpose_forward: input size"
    );
    assert_eq!(
        w.len(),
        geom.c_in * rows,
        "conv_transpose_forward: weight size"
    );
    let total = geom.n * geom.c_out * p;
    if total == 0 || cig == 0 {
        let mut out = vec![0.0; total];
        fill_bias(&mut out, bias, geom.c_out, p);
        return out;
    }
    let ranges: Vec<(isize, usize, usize)> = (0..g.k[2])
        .map(|kw| {
            let off = g.off(2, kw);
            let (lo, hi) = g.valid(2, off);
            (off, lo, hi)
        })
        .collect();
    let iw = g.o[2];
    let nrows = g.o[0] * g.o[1];
    let block = rows_per_block(rows * iw, nrows);
    let items = geom.n * geom.group;
    build_items(
        total,
        items,
        p,
        |item, ch| bias.map_or(0.0, |b| b[(item % geom.group) * cog + ch]),
        rows * cig * pin,
        rows * iw * block,
        |item, o, col, par| {
            let (img, grp) = (item / geom.group, item % geom.group);
            let xg = &x[(img * geom.c_in + grp * cig) * pin..][..cig * pin];
            let wg = &w[grp * cig * rows..][..cig * rows];
            for r0 in (0..nrows).step_by(block) {
                let rws = r0..(r0 + block).min(nrows);
                let pb = rws.len() * iw;
                let col = &mut col[..rows * pb];
                // col[rows x pb] = W_gᵀ [rows x cig] · X_g[:, block] [cig x pb]
                let xb = MatRef {
                    data: &xg[r0 * iw..],
                    rs: pin,
                    cs: 1,
                };
                sgemm(
                    rows,
                    pb,
                    cig,
                    1.0,
                    MatRef::transposed(wg, rows),
                    xb,
                    false,
                    col,
                    pb,
                    par,
                );
                let one = |(plane, c): (&mut [f32], &mut [f32])| {
                    col2im_plane(c, &g, &ranges, rws.clone(), plane)
                };
                if par {
                    o.par_chunks_mut(p)
                        .zip(col.par_chunks_mut(ks * pb))
                        .for_each(one);
                } else {
                    o.chunks_mut(p).zip(col.chunks_mut(ks * pb)).for_each(one);
                }
            }
        },
    )
}

/// Gradient of a convolution's input: the transposed convolution of the
/// output gradient `dy` (`[N, C_out, out_sp...]`) with the same weight
/// `w` (`[C_out, C_in / group, k...]`, which is the transposed conv's
/// weight layout). Returns `[N, C_in, in_sp...]`.
pub fn conv_input_grad(dy: &[f32], w: &[f32], geom: &ConvGeom) -> Vec<f32> {
    let (cg, cog) = (geom.c_in / geom.group, geom.c_out / geom.group);
    if geom.is_pointwise() {
        // dX_g [cg x p] = W_gᵀ [cg x cog] · dY_g [cog x p], per image.
        let p = geom.out_len();
        let mut dx = par_zeros(geom.n * geom.c_in * p);
        dx.par_chunks_mut(geom.c_in * p)
            .enumerate()
            .for_each(|(img, dxi)| {
                for grp in 0..geom.group {
                    sgemm(
                        cg,
                        p,
                        cog,
                        1.0,
                        MatRef::transposed(&w[grp * cog * cg..][..cog * cg], cg),
                        MatRef::row_major(&dy[(img * geom.c_out + grp * cog) * p..][..cog * p], p),
                        false,
                        &mut dxi[grp * cg * p..][..cg * p],
                        p,
                        false,
                    );
                }
            });
        return dx;
    }
    if cg == 1 && cog == 1 {
        return depthwise_input_grad(dy, w, geom);
    }
    conv_transpose_forward(dy, w, None, &geom.swapped())
}

/// Gradient of a convolution's weight: for every image and group,
/// `dW_g += dY_g · im2col(X_g)ᵀ`, images in parallel. Returns
/// `[C_out, C_in / group, k...]`.
pub fn conv_weight_grad(x: &[f32], dy: &[f32], geom: &ConvGeom) -> Vec<f32> {
    if geom.c_in == geom.group && geom.c_out == geom.group {
        return depthwise_weight_grad(x, dy, geom);
    }
    let g = geom.g3();
    let (pin, p, ks) = (geom.in_len(), geom.out_len(), geom.k_len());
    let cg = geom.c_in / geom.group;
    let cog = geom.c_out / geom.group;
    let wlen = geom.c_out * cg * ks;
    let rows = g.o[0] * g.o[1];
    let pointwise = geom.is_pointwise();
    // dW += the products of the images `imgs`, in order; im2col goes to
    // this thread's scratch (every value written, so never zeroed).
    let images = |imgs: std::ops::Range<usize>, dw: &mut [f32]| {
        with_scratch(0, if pointwise { 0 } else { cg * ks * p }, |col| {
            for img in imgs {
                for grp in 0..geom.group {
                    let xg = &x[(img * geom.c_in + grp * cg) * pin..][..cg * pin];
                    let dyg = &dy[(img * geom.c_out + grp * cog) * p..][..cog * p];
                    let cols: &[f32] = if pointwise {
                        xg
                    } else {
                        im2col(xg, cg, &g, 0..rows, col, false);
                        col
                    };
                    // dW_g [cog x cg*ks] += dY_g [cog x p] · colᵀ [p x cg*ks]
                    sgemm(
                        cog,
                        cg * ks,
                        p,
                        1.0,
                        MatRef::row_major(dyg, p),
                        MatRef::transposed(cols, p),
                        true,
                        &mut dw[grp * cog * cg * ks..][..cog * cg * ks],
                        cg * ks,
                        false,
                    );
                }
            }
        })
    };
    // Fixed chunks of images, summed in order: the same bytes whatever
    // the thread count (training must be reproducible).
    const CHUNK: usize = 4;
    let parts: Vec<Vec<f32>> = (0..geom.n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut dw = vec![0.0f32; wlen];
            images(c * CHUNK..((c + 1) * CHUNK).min(geom.n), &mut dw);
            dw
        })
        .collect();
    let mut total = vec![0.0f32; wlen];
    for p in parts {
        total.iter_mut().zip(p).for_each(|(x, y)| *x += y);
    }
    total
}

/// Visits the taps of a depthwise conv as runs along the last axis:
/// `f(tap, o, i, len)` covers output positions `o..o + len` and input
/// positions `i, i + s, ...` (`s` the last axis's stride) for one output
/// row, so the kernels below are plain (vectorisable) loops.
fn depthwise_runs(g: &G3, mut f: impl FnMut(usize, usize, usize, usize)) {
    for kd in 0..g.k[0] {
        for kh in 0..g.k[1] {
            for kw in 0..g.k[2] {
                let tap = (kd * g.k[1] + kh) * g.k[2] + kw;
                let (offd, offh, offw) = (g.off(0, kd), g.off(1, kh), g.off(2, kw));
                let (zl, zh) = g.valid(0, offd);
                let (yl, yh) = g.valid(1, offh);
                let (xl, xh) = g.valid(2, offw);
                if xl >= xh {
                    continue;
                }
                for z in zl..zh {
                    let zi = (z * g.s[0]) as isize + offd;
                    for y in yl..yh {
                        let yi = (y * g.s[1]) as isize + offh;
                        let orow = (z * g.o[1] + y) * g.o[2];
                        let irow = (zi as usize * g.i[1] + yi as usize) * g.i[2];
                        let xi = (xl * g.s[2]) as isize + offw;
                        f(tap, orow + xl, irow + xi as usize, xh - xl);
                    }
                }
            }
        }
    }
}

/// `Σ x[k s] y[k]` over `y`, in 8 independent partial sums.
#[inline(always)]
fn dot_strided(x: &[f32], s: usize, y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let full = y.len() / 8 * 8;
    if s == 1 {
        for (xc, yc) in x[..full].chunks_exact(8).zip(y[..full].chunks_exact(8)) {
            for l in 0..8 {
                acc[l] += xc[l] * yc[l];
            }
        }
    } else {
        for (c, yc) in y[..full].chunks_exact(8).enumerate() {
            for l in 0..8 {
                acc[l] += x[(c * 8 + l) * s] * yc[l];
            }
        }
    }
    let mut tail = 0.0f32;
    for k in full..y.len() {
        tail += x[k * s] * y[k];
    }
    acc.iter().sum::<f32>() + tail
}

/// A 2-D (or 1-D) depthwise geometry laid out flat, so that each kernel
/// tap is one long contiguous loop however small the planes (MobileNet's
/// 4x4 and 8x8 ones included).
///
/// The padded input plane is split into its `sh x sw` stride phases
/// (`P[rp][cp][r][c] = padded[r sh + rp][c sw + cp]`), each stored as `ph`
/// rows of `we` values. An output plane is stored as `oh` rows of `we`
/// (the last `we - ow` columns unused and zero). Output `q` of tap `t`
/// then reads input `q + offs[t]`: its phase, plus its row and column
/// offset within the phase. With stride 1 there is one phase, the padded
/// plane itself.
struct FlatDw {
    g: G3,
    /// Row length of phases and flat outputs.
    we: usize,
    /// Rows per phase.
    ph: usize,
    /// Values per phase, with slack for the unused columns' reads.
    plen: usize,
    offs: Vec<usize>,
}

impl FlatDw {
    fn new(geom: &ConvGeom) -> Option<FlatDw> {
        let g = geom.g3();
        if g.i[0] != 1 || g.k[0] != 1 || g.o[1] == 0 || g.o[2] == 0 {
            return None;
        }
        let (kh, kw, dh, dw, sh, sw) = (g.k[1], g.k[2], g.d[1], g.d[2], g.s[1], g.s[2]);
        let (rmax, cmax) = ((kh - 1) * dh / sh, (kw - 1) * dw / sw);
        let (we, ph) = (g.o[2] + cmax, g.o[1] + rmax);
        let plen = ph * we + cmax;
        let offs = (0..kh)
            .flat_map(|h| {
                (0..kw).map(move |w| {
                    let (r, c) = (h * dh, w * dw);
                    let phase = (r % sh) * sw + c % sw;
                    phase * plen + (r / sh) * we + c / sw
                })
            })
            .collect();
        Some(FlatDw {
            g,
            we,
            ph,
            plen,
            offs,
        })
    }
    /// Output positions in flat form (`oh` rows of `we`).
    fn out_flat(&self) -> usize {
        self.g.o[1] * self.we
    }
    /// Length of the phased input buffer.
    fn in_flat(&self) -> usize {
        self.g.s[1] * self.g.s[2] * self.plen
    }
    /// Visits the input row `y` in phased form: `f(at, x0, count)` says
    /// that inputs `x0, x0 + sw, ...` (`count` of them) live at `at, at +
    /// 1, ...`, one call per column phase; inputs no tap reads are left
    /// out.
    #[inline(always)]
    fn row_runs(&self, y: usize, mut f: impl FnMut(usize, usize, usize)) {
        let (sh, sw, pl) = (self.g.s[1], self.g.s[2], self.g.p[2]);
        let r = y + self.g.p[1];
        if r / sh >= self.ph {
            return;
        }
        let row_at = (r / sh) * self.we;
        for cp in 0..sw {
            // First input column of this phase: (x0 + pl) % sw == cp.
            let x0 = (cp + sw - pl % sw) % sw;
            if x0 >= self.g.i[2] {
                continue;
            }
            let cc = (x0 + pl) / sw;
            let count = (self.g.i[2] - x0)
                .div_ceil(sw)
                .min(self.we.saturating_sub(cc));
            let phase = (r % sh) * sw + cp;
            f(phase * self.plen + row_at + cc, x0, count);
        }
    }
    /// Copies an input plane into phased form in `dst` (`in_flat` values).
    fn pad_input(&self, x: &[f32], dst: &mut [f32]) {
        dst.fill(0.0);
        let (iw, sw) = (self.g.i[2], self.g.s[2]);
        for (y, row) in x.chunks_exact(iw).enumerate() {
            self.row_runs(y, |at, x0, count| {
                for (d, &v) in dst[at..at + count]
                    .iter_mut()
                    .zip(row[x0..].iter().step_by(sw))
                {
                    *d = v;
                }
            });
        }
    }
    /// Reads an input plane back out of phased form (the inverse of
    /// [`FlatDw::pad_input`]); positions no tap reads are left as they
    /// are (the caller's zeros).
    fn unpad_input(&self, src: &[f32], x: &mut [f32]) {
        let (iw, sw) = (self.g.i[2], self.g.s[2]);
        for (y, row) in x.chunks_exact_mut(iw).enumerate() {
            self.row_runs(y, |at, x0, count| {
                for (d, &v) in row[x0..].iter_mut().step_by(sw).zip(&src[at..at + count]) {
                    *d = v;
                }
            });
        }
    }
    /// Copies an output plane into flat form in `dst` (unused columns 0).
    fn pad_output(&self, y: &[f32], dst: &mut [f32]) {
        let (ow, we) = (self.g.o[2], self.we);
        for (src, d) in y.chunks_exact(ow).zip(dst.chunks_exact_mut(we)) {
            d[..ow].copy_from_slice(src);
            d[ow..].fill(0.0);
        }
    }
}

/// [`depthwise_input_grad`] on [`FlatDw`]: per plane, one `axpy` per tap
/// into the phased input gradient, then read back.
fn flat_dw_input_grad(f: &FlatDw, dy: &[f32], w: &[f32], planes: usize, c: usize) -> Vec<f32> {
    let (pin, p, ks) = (f.g.in_len(), f.g.out_len(), f.g.k_len());
    let n = f.out_flat();
    let mut dx = par_zeros(planes * pin);
    let plane = |buf: &mut Vec<f32>, (q, dxp): (usize, &mut [f32])| {
        let (dyf, acc) = buf.split_at_mut(n);
        f.pad_output(&dy[q * p..][..p], dyf);
        acc.fill(0.0);
        let wk = &w[(q % c) * ks..][..ks];
        simd(
            #[inline(always)]
            |_| {
                for (&off, &wv) in f.offs.iter().zip(wk) {
                    for (a, &d) in acc[off..off + n].iter_mut().zip(&*dyf) {
                        *a += wv * d;
                    }
                }
            },
        );
        f.unpad_input(acc, dxp);
    };
    dx.par_chunks_mut(pin)
        .enumerate()
        .for_each_init(|| vec![0.0f32; n + f.in_flat()], plane);
    dx
}

/// [`depthwise_weight_grad`] on [`FlatDw`]: per channel and image, one
/// contiguous dot product per tap.
fn flat_dw_weight_grad(f: &FlatDw, x: &[f32], dy: &[f32], n_img: usize, c: usize) -> Vec<f32> {
    let (pin, p, ks) = (f.g.in_len(), f.g.out_len(), f.g.k_len());
    let n = f.out_flat();
    let mut dw = vec![0.0f32; c * ks];
    let channel = |buf: &mut Vec<f32>, (ch, dwc): (usize, &mut [f32])| {
        let (dyf, xf) = buf.split_at_mut(n);
        for img in 0..n_img {
            let plane = img * c + ch;
            f.pad_output(&dy[plane * p..][..p], dyf);
            f.pad_input(&x[plane * pin..][..pin], xf);
            simd(
                #[inline(always)]
                |_| {
                    for (d, &off) in dwc.iter_mut().zip(&f.offs) {
                        *d += dot_strided(&xf[off..off + n], 1, dyf);
                    }
                },
            );
        }
    };
    dw.par_chunks_mut(ks)
        .enumerate()
        .for_each_init(|| vec![0.0f32; n + f.in_flat()], channel);
    dw
}

/// Input gradient of a depthwise conv (one input and one output channel
/// per group): direct loops, parallel over planes.
fn depthwise_input_grad(dy: &[f32], w: &[f32], geom: &ConvGeom) -> Vec<f32> {
    if let Some(f) = FlatDw::new(geom) {
        return flat_dw_input_grad(&f, dy, w, geom.n * geom.c_in, geom.c_in);
    }
    depthwise_input_grad_runs(dy, w, geom)
}

/// [`depthwise_input_grad`] for any geometry, tap by tap along rows.
fn depthwise_input_grad_runs(dy: &[f32], w: &[f32], geom: &ConvGeom) -> Vec<f32> {
    let g = geom.g3();
    let (pin, p, ks) = (g.in_len(), g.out_len(), g.k_len());
    let c = geom.c_in;
    let s = g.s[2];
    let mut dx = par_zeros(geom.n * c * pin);
    dx.par_chunks_mut(pin).enumerate().for_each(|(plane, dxp)| {
        let ch = plane % c;
        let wk = &w[ch * ks..][..ks];
        let dyp = &dy[plane * p..][..p];
        depthwise_runs(&g, |tap, o, i, len| {
            let (wv, d) = (wk[tap], &dyp[o..o + len]);
            if s == 1 {
                for (x, &d) in dxp[i..i + len].iter_mut().zip(d) {
                    *x += wv * d;
                }
            } else {
                for (k, &d) in d.iter().enumerate() {
                    dxp[i + k * s] += wv * d;
                }
            }
        });
    });
    dx
}

/// Weight gradient of a depthwise conv: per channel, sums over images in
/// order (reproducible), channels in parallel.
fn depthwise_weight_grad(x: &[f32], dy: &[f32], geom: &ConvGeom) -> Vec<f32> {
    if let Some(f) = FlatDw::new(geom) {
        return flat_dw_weight_grad(&f, x, dy, geom.n, geom.c_in);
    }
    depthwise_weight_grad_runs(x, dy, geom)
}

/// [`depthwise_weight_grad`] for any geometry, tap by tap along rows.
fn depthwise_weight_grad_runs(x: &[f32], dy: &[f32], geom: &ConvGeom) -> Vec<f32> {
    let g = geom.g3();
    let (pin, p, ks) = (g.in_len(), g.out_len(), g.k_len());
    let c = geom.c_in;
    let s = g.s[2];
    let mut dw = vec![0.0f32; c * ks];
    dw.par_chunks_mut(ks).enumerate().for_each(|(ch, dwc)| {
        for img in 0..geom.n {
            let plane = img * c + ch;
            let (xp, dyp) = (&x[plane * pin..][..pin], &dy[plane * p..][..p]);
            depthwise_runs(&g, |tap, o, i, len| {
                dwc[tap] += dot_strided(&xp[i..], s, &dyp[o..o + len]);
            });
        }
    });
    dw
}

fn conv_transpose_macs(geom: &ConvGeom) -> u64 {
    let cog = geom.c_out / geom.group.max(1);
    [geom.n, geom.c_in, geom.in_len(), cog, geom.k_len()]
        .iter()
        .fold(1u64, |a, &x| a.saturating_mul(x as u64))
}

impl Op for ConvTranspose {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        conv_channels(cx, self.attrs.group, true)
    }

    fn prune(&self, cx: &mut dyn PruneCx) -> Result<()> {
        prune_group(cx, self.attrs.group, Port::In(0))
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, w) = (fact(inputs, 0)?, fact(inputs, 1)?);
        check_float("input X", x.dtype)?;
        if w.dtype != x.dtype {
            return Err(op_error(format!(
                "weight type {} differs from input type {}",
                w.dtype, x.dtype
            )));
        }
        let geom = self.geometry(&x.shape, &w.shape)?;
        check_bias(opt(inputs, 2).map(|b| b.shape.as_slice()), geom.c_out)?;
        let mut shape = vec![geom.n, geom.c_out];
        shape.extend(&geom.out_sp);
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, w) = (input(inputs, 0)?, input(inputs, 1)?);
        check_float("input X", x.dtype())?;
        let geom = self.geometry(x.shape(), w.shape())?;
        let b = opt(inputs, 2);
        check_bias(b.map(|b| b.shape()), geom.c_out)?;
        let bias = b.map(|b| b.f32s()).transpose()?;
        let out = conv_transpose_forward(x.f32s()?, w.f32s()?, bias, &geom);
        let mut shape = vec![geom.n, geom.c_out];
        shape.extend(&geom.out_sp);
        Ok(vec![Tensor::from_float(x.dtype(), shape, out)])
    }

    fn macs(&self, inputs: &[Option<&Fact>], _outputs: &[Fact]) -> u64 {
        match (opt(inputs, 0), opt(inputs, 1)) {
            (Some(x), Some(w)) => self
                .geometry(&x.shape, &w.shape)
                .map(|g| conv_transpose_macs(&g))
                .unwrap_or(0),
            _ => 0,
        }
    }
}

/// Channels of Conv (`transpose` false: weight `[M, C/g, k...]`) and
/// ConvTranspose (`[C, M/g, k...]`): input channels are axis 1 of X,
/// output channels axis 1 of Y. With groups, whole groups go together
/// (a depthwise conv couples input channel `k` with output channel `k`).
fn conv_channels(cx: &ChanCx, group: usize, transpose: bool) -> Option<ChanMap> {
    if !cx.is_const(1) || cx.fact(2).is_some_and(|_| !cx.is_const(2)) {
        return None;
    }
    let mut m = ChanMap::new(cx.inputs.len(), 1);
    m.uses[0] = Some(Use::Axis(1));
    m.out_axes[0] = Some(1);
    let (w_in, w_out) = if transpose { (0, 1) } else { (1, 0) };
    if cx.fact(2).is_some() {
        m.weights.push(WeightAxis {
            port: Port::Out(0),
            input: 2,
            axis: 0,
        });
    }
    if group == 1 {
        m.weights.push(WeightAxis {
            port: Port::Out(0),
            input: 1,
            axis: w_out,
        });
        m.weights.push(WeightAxis {
            port: Port::In(0),
            input: 1,
            axis: w_in,
        });
        m.macs = vec![Port::In(0), Port::Out(0)];
    } else {
        let (c, mo) = (*cx.shape(0).get(1)?, *cx.out_shape(0).get(1)?);
        if c % group != 0 || mo % group != 0 {
            return None;
        }
        // Whole groups: the weight's group-major axis indexes the channels
        // of the side it is laid out by.
        m.weights.push(WeightAxis {
            port: if transpose { Port::In(0) } else { Port::Out(0) },
            input: 1,
            axis: 0,
        });
        m.links.push(Link {
            a: Port::In(0),
            b: Port::Out(0),
            pairs: Pairs::Blocks {
                a_per: c / group,
                b_per: mo / group,
            },
        });
        m.macs = vec![Port::Out(0)];
    }
    Some(m)
}

/// A grouped conv that lost whole groups gets the new group count.
fn prune_group(cx: &mut dyn PruneCx, group: usize, port: Port) -> Result<()> {
    if group == 1 {
        return Ok(());
    }
    if let (Some(kept), Some(n)) = (cx.kept(port).map(|k| k.len()), cx.channels(port)) {
        let per = n / group;
        cx.set_attr(crate::ir::Attribute::new(
            "group",
            crate::ir::AttrValue::Int((kept / per) as i64),
        ));
    }
    Ok(())
}

/// Builds Conv and ConvTranspose.
pub fn build(node: &Node, _opset: i64) -> Result<Box<dyn Op>> {
    let attrs = ConvAttrs::from_node(node)?;
    match node.op_type.as_str() {
        "Conv" => Ok(Box::new(Conv { attrs })),
        "ConvTranspose" => Ok(Box::new(ConvTranspose::from_node(node)?)),
        o => Err(op_error(format!("conv::build called for {o}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{numel, AttrValue, Attribute};
    use crate::ops::test_util::Rng;

    fn ints(v: &[i64]) -> AttrValue {
        AttrValue::Ints(v.to_vec())
    }
    fn string(s: &str) -> AttrValue {
        AttrValue::String(s.as_bytes().to_vec())
    }
    fn node(op: &str, attrs: Vec<(&str, AttrValue)>) -> Node {
        Node::new(
            "n",
            op,
            &["x", "w", "b"],
            &["y"],
            attrs
                .into_iter()
                .map(|(k, v)| Attribute::new(k, v))
                .collect(),
        )
    }
    fn build_op(op: &str, attrs: Vec<(&str, AttrValue)>) -> Box<dyn Op> {
        build(&node(op, attrs), 17).unwrap()
    }

    /// Evaluates and checks that shape inference agrees.
    fn run(o: &dyn Op, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let out = o.eval(&[Some(x), Some(w), b])?.remove(0);
        let fx = Fact::new(x.dtype(), x.shape().to_vec());
        let fw = Fact::known(w.clone());
        let fb = b.map(|b| Fact::known(b.clone()));
        let f = o.infer(&[Some(&fx), Some(&fw), fb.as_ref()])?;
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

    fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for a in (0..shape.len()).rev() {
            idx[a] = i % shape[a];
            i /= shape[a];
        }
        idx
    }
    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |a, (&i, &d)| a * d + i)
    }

    /// Direct N-D convolution, straight from the definition.
    fn ref_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: &ConvGeom) -> Vec<f32> {
        let (xv, wv) = (x.f32s().unwrap(), w.f32s().unwrap());
        let (cg, mg) = (g.c_in / g.group, g.c_out / g.group);
        let mut out = vec![0.0f32; g.n * g.c_out * g.out_len()];
        for n in 0..g.n {
            for oc in 0..g.c_out {
                let grp = oc / mg;
                for op in 0..g.out_len() {
                    let o = unravel(op, &g.out_sp);
                    let mut acc = b.map(|b| b.f32s().unwrap()[oc] as f64).unwrap_or(0.0);
                    for ci in 0..cg {
                        for kp in 0..g.k_len() {
                            let k = unravel(kp, &g.kernel);
                            let mut inside = true;
                            let mut ii = vec![0; k.len()];
                            for a in 0..k.len() {
                                let v = (o[a] * g.strides[a] + k[a] * g.dilations[a]) as isize
                                    - g.pads_begin[a] as isize;
                                if v < 0 || v >= g.in_sp[a] as isize {
                                    inside = false;
                                }
                                ii[a] = v.max(0) as usize;
                            }
                            if inside {
                                let xi = ((n * g.c_in + grp * cg + ci) * g.in_len())
                                    + ravel(&ii, &g.in_sp);
                                let wi = (oc * cg + ci) * g.k_len() + kp;
                                acc += xv[xi] as f64 * wv[wi] as f64;
                            }
                        }
                    }
                    out[(n * g.c_out + oc) * g.out_len() + op] = acc as f32;
                }
            }
        }
        out
    }

    /// Direct N-D transposed convolution (scatter form).
    fn ref_conv_t(x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: &ConvGeom) -> Vec<f32> {
        let (xv, wv) = (x.f32s().unwrap(), w.f32s().unwrap());
        let (cig, cog) = (g.c_in / g.group, g.c_out / g.group);
        let mut out = vec![0.0f64; g.n * g.c_out * g.out_len()];
        for n in 0..g.n {
            for oc in 0..g.c_out {
                let bv = b.map(|b| b.f32s().unwrap()[oc] as f64).unwrap_or(0.0);
                for p in 0..g.out_len() {
                    out[(n * g.c_out + oc) * g.out_len() + p] = bv;
                }
            }
            for ci in 0..g.c_in {
                let grp = ci / cig;
                for ip in 0..g.in_len() {
                    let i = unravel(ip, &g.in_sp);
                    let xval = xv[(n * g.c_in + ci) * g.in_len() + ip] as f64;
                    for j in 0..cog {
                        let oc = grp * cog + j;
                        for kp in 0..g.k_len() {
                            let k = unravel(kp, &g.kernel);
                            let mut inside = true;
                            let mut oi = vec![0; k.len()];
                            for a in 0..k.len() {
                                let v = (i[a] * g.strides[a] + k[a] * g.dilations[a]) as isize
                                    - g.pads_begin[a] as isize;
                                if v < 0 || v >= g.out_sp[a] as isize {
                                    inside = false;
                                }
                                oi[a] = v.max(0) as usize;
                            }
                            if inside {
                                let wi = (ci * cog + j) * g.k_len() + kp;
                                out[(n * g.c_out + oc) * g.out_len() + ravel(&oi, &g.out_sp)] +=
                                    xval * wv[wi] as f64;
                            }
                        }
                    }
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }

    struct Case {
        x: Vec<usize>,
        w: Vec<usize>,
        attrs: Vec<(&'static str, AttrValue)>,
        bias: bool,
    }

    fn case(x: &[usize], w: &[usize], attrs: Vec<(&'static str, AttrValue)>, bias: bool) -> Case {
        Case {
            x: x.to_vec(),
            w: w.to_vec(),
            attrs,
            bias,
        }
    }

    fn check_conv_cases(cases: Vec<Case>) {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for (ci, c) in cases.into_iter().enumerate() {
            let o = build_op("Conv", c.attrs.clone());
            let x = rng.tensor(&c.x);
            let w = rng.tensor(&c.w);
            let b = c.bias.then(|| rng.tensor(&[c.w[0]]));
            let y =
                run(o.as_ref(), &x, &w, b.as_ref()).unwrap_or_else(|e| panic!("case {ci}: {e}"));
            let conv = Conv {
                attrs: ConvAttrs::from_node(&node("Conv", c.attrs.clone())).unwrap(),
            };
            let g = conv.geometry(&c.x, &c.w).unwrap();
            let want = ref_conv(&x, &w, b.as_ref(), &g);
            close(y.f32s().unwrap(), &want);
        }
    }

    #[test]
    fn conv_hand_2x2() {
        let o = build_op("Conv", vec![]);
        let x = Tensor::from_f32(vec![1, 1, 3, 3], (0..9).map(|v| v as f32).collect());
        let w = Tensor::from_f32(vec![1, 1, 2, 2], vec![1.0; 4]);
        let y = run(o.as_ref(), &x, &w, None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert_eq!(y.f32s().unwrap(), &[8.0, 12.0, 20.0, 24.0]);
    }

    #[test]
    fn conv_hand_auto_pad_matches_ort() {
        let x = Tensor::from_f32(vec![1, 1, 5], (0..5).map(|v| v as f32).collect());
        let w = Tensor::from_f32(vec![1, 1, 2], vec![1.0, 2.0]);
        let up = build_op(
            "Conv",
            vec![("auto_pad", string("SAME_UPPER")), ("strides", ints(&[2]))],
        );
        assert_eq!(
            run(up.as_ref(), &x, &w, None).unwrap().f32s().unwrap(),
            &[2.0, 8.0, 4.0]
        );
        let lo = build_op(
            "Conv",
            vec![("auto_pad", string("SAME_LOWER")), ("strides", ints(&[2]))],
        );
        assert_eq!(
            run(lo.as_ref(), &x, &w, None).unwrap().f32s().unwrap(),
            &[0.0, 5.0, 11.0]
        );
        let va = build_op(
            "Conv",
            vec![("auto_pad", string("VALID")), ("strides", ints(&[2]))],
        );
        assert_eq!(
            run(va.as_ref(), &x, &w, None).unwrap().f32s().unwrap(),
            &[2.0, 8.0]
        );
    }

    #[test]
    fn conv_hand_dilation_asymmetric_pads_bias() {
        // Values from ONNX Runtime.
        let o = build_op(
            "Conv",
            vec![("dilations", ints(&[2, 1])), ("pads", ints(&[1, 0, 0, 1]))],
        );
        let x = Tensor::from_f32(vec![1, 1, 4, 4], (0..16).map(|v| v as f32).collect());
        let w = Tensor::from_f32(vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let b = Tensor::from_f32(vec![1], vec![0.5]);
        let y = run(o.as_ref(), &x, &w, Some(&b)).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 4]);
        assert_eq!(
            y.f32s().unwrap(),
            &[32.5, 39.5, 46.5, 21.5, 62.5, 72.5, 82.5, 36.5, 102.5, 112.5, 122.5, 52.5]
        );
    }

    #[test]
    fn conv_hand_pointwise_1d() {
        let o = build_op("Conv", vec![]);
        let x = Tensor::from_f32(vec![1, 2, 4], (0..8).map(|v| v as f32).collect());
        let w = Tensor::from_f32(vec![3, 2, 1], vec![1.0, -1.0, 2.0, 3.0, 1.0, 1.0]);
        let y = run(o.as_ref(), &x, &w, None).unwrap();
        assert_eq!(
            y.f32s().unwrap(),
            &[-4.0, -4.0, -4.0, -4.0, 12.0, 17.0, 22.0, 27.0, 4.0, 6.0, 8.0, 10.0]
        );
    }

    #[test]
    fn conv_2d_many_configs() {
        check_conv_cases(vec![
            case(&[1, 3, 7, 7], &[4, 3, 3, 3], vec![], false),
            case(
                &[2, 3, 7, 6],
                &[4, 3, 3, 3],
                vec![("pads", ints(&[1, 1, 1, 1]))],
                true,
            ),
            case(
                &[2, 4, 9, 8],
                &[6, 4, 3, 2],
                vec![("strides", ints(&[2, 3])), ("pads", ints(&[0, 1, 2, 1]))],
                true,
            ),
            case(
                &[1, 4, 10, 9],
                &[4, 4, 3, 3],
                vec![("dilations", ints(&[2, 3])), ("pads", ints(&[2, 1, 0, 3]))],
                false,
            ),
            case(
                &[2, 6, 8, 8],
                &[9, 2, 3, 3],
                vec![("group", AttrValue::Int(3)), ("pads", ints(&[1, 1, 1, 1]))],
                true,
            ),
            case(
                &[1, 8, 6, 6],
                &[4, 4, 1, 1],
                vec![("group", AttrValue::Int(2))],
                true,
            ),
            case(&[3, 5, 6, 7], &[7, 5, 1, 1], vec![], true),
            case(
                &[1, 5, 6, 7],
                &[7, 5, 1, 1],
                vec![("strides", ints(&[2, 2]))],
                false,
            ),
            case(
                &[1, 5, 6, 7],
                &[7, 5, 1, 1],
                vec![("pads", ints(&[1, 0, 0, 1]))],
                false,
            ),
            case(
                &[1, 3, 11, 10],
                &[5, 3, 3, 3],
                vec![
                    ("auto_pad", string("SAME_UPPER")),
                    ("strides", ints(&[2, 2])),
                ],
                true,
            ),
            case(
                &[1, 3, 11, 10],
                &[5, 3, 4, 4],
                vec![
                    ("auto_pad", string("SAME_LOWER")),
                    ("strides", ints(&[2, 3])),
                ],
                true,
            ),
            case(
                &[1, 3, 11, 10],
                &[5, 3, 3, 2],
                vec![
                    ("auto_pad", string("SAME_UPPER")),
                    ("dilations", ints(&[2, 2])),
                ],
                false,
            ),
            case(
                &[1, 3, 11, 10],
                &[5, 3, 3, 3],
                vec![("auto_pad", string("VALID")), ("strides", ints(&[2, 1]))],
                false,
            ),
            case(
                &[1, 3, 5, 5],
                &[2, 3, 3, 3],
                vec![
                    ("kernel_shape", ints(&[3, 3])),
                    ("pads", ints(&[3, 3, 3, 3])),
                ],
                true,
            ),
            // Big enough to take the parallel paths.
            case(
                &[1, 16, 20, 20],
                &[32, 16, 3, 3],
                vec![("pads", ints(&[1, 1, 1, 1]))],
                true,
            ),
            case(
                &[4, 16, 12, 12],
                &[16, 16, 3, 3],
                vec![("pads", ints(&[1, 1, 1, 1])), ("strides", ints(&[2, 2]))],
                false,
            ),
            case(
                &[2, 32, 12, 12],
                &[64, 4, 3, 3],
                vec![("group", AttrValue::Int(8)), ("pads", ints(&[1, 1, 1, 1]))],
                true,
            ),
            case(&[2, 64, 14, 14], &[128, 64, 1, 1], vec![], true),
        ]);
    }

    #[test]
    fn winograd_accuracy_close_to_direct() {
        // The error relative to the largest output stays near f32 rounding
        // (the 4x4-tile variant would be about 1e-5 here).
        let mut rng = Rng(31337);
        for &(c, h) in &[(64usize, 30usize), (256, 14)] {
            let conv = Conv {
                attrs: ConvAttrs::from_node(&node("Conv", vec![("pads", ints(&[1, 1, 1, 1]))]))
                    .unwrap(),
            };
            let x = rng.tensor(&[1, c, h, h]);
            let w = rng.tensor(&[8, c, 3, 3]);
            let g = conv.geometry(x.shape(), w.shape()).unwrap();
            assert!(winograd::applies(&g));
            let y = conv_forward(x.f32s().unwrap(), w.f32s().unwrap(), None, &g);
            let want = ref_conv(&x, &w, None, &g);
            let maxy = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let maxe = y
                .iter()
                .zip(&want)
                .fold(0.0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(
                maxe / maxy < 3e-6,
                "c={c}: relative max error {}",
                maxe / maxy
            );
        }
    }

    #[test]
    fn conv_winograd_configs() {
        let p1 = || ("pads", ints(&[1, 1, 1, 1]));
        check_conv_cases(vec![
            case(&[1, 16, 20, 20], &[16, 16, 3, 3], vec![p1()], true),
            // odd output sizes (cropped edge tiles), channels not multiples of 8
            case(&[1, 9, 19, 23], &[13, 9, 3, 3], vec![p1()], false),
            case(
                &[2, 12, 17, 18],
                &[10, 12, 3, 3],
                vec![("pads", ints(&[0, 2, 1, 0]))],
                true,
            ),
            case(&[1, 8, 21, 16], &[8, 8, 3, 3], vec![], true),
            case(
                &[1, 8, 16, 16],
                &[8, 8, 3, 3],
                vec![("pads", ints(&[3, 3, 3, 3]))],
                true,
            ),
            case(
                &[1, 16, 15, 15],
                &[24, 16, 3, 3],
                vec![("auto_pad", string("SAME_LOWER"))],
                true,
            ),
            case(
                &[1, 16, 15, 15],
                &[24, 16, 3, 3],
                vec![("auto_pad", string("SAME_UPPER"))],
                false,
            ),
            // groups, batch
            case(
                &[3, 32, 16, 16],
                &[32, 16, 3, 3],
                vec![p1(), ("group", AttrValue::Int(2))],
                true,
            ),
            // large enough for the parallel tile blocks
            case(&[1, 32, 40, 44], &[40, 32, 3, 3], vec![p1()], true),
            // im2col over a batch, parallel over images (>= CONV_PAR_MACS)
            case(
                &[4, 16, 24, 24],
                &[32, 16, 3, 3],
                vec![p1(), ("strides", ints(&[2, 2]))],
                true,
            ),
        ]);
    }

    #[test]
    fn conv_depthwise_and_single_channel() {
        check_conv_cases(vec![
            // depthwise
            case(
                &[1, 8, 9, 9],
                &[8, 1, 3, 3],
                vec![("group", AttrValue::Int(8)), ("pads", ints(&[1, 1, 1, 1]))],
                true,
            ),
            // depthwise, stride 2, asymmetric pads
            case(
                &[2, 6, 10, 9],
                &[6, 1, 3, 3],
                vec![
                    ("group", AttrValue::Int(6)),
                    ("strides", ints(&[2, 2])),
                    ("pads", ints(&[0, 1, 1, 0])),
                ],
                false,
            ),
            // channel multiplier 3, dilation
            case(
                &[1, 4, 9, 9],
                &[12, 1, 3, 3],
                vec![
                    ("group", AttrValue::Int(4)),
                    ("dilations", ints(&[2, 2])),
                    ("pads", ints(&[2, 2, 2, 2])),
                ],
                true,
            ),
            // single input channel, ordinary conv
            case(
                &[2, 1, 12, 12],
                &[5, 1, 5, 5],
                vec![("pads", ints(&[2, 2, 2, 2]))],
                true,
            ),
            // depthwise SAME_UPPER with stride
            case(
                &[1, 5, 7, 8],
                &[5, 1, 5, 5],
                vec![
                    ("group", AttrValue::Int(5)),
                    ("auto_pad", string("SAME_UPPER")),
                    ("strides", ints(&[2, 2])),
                ],
                false,
            ),
            // big depthwise (parallel path: >= CONV_PAR_MACS)
            case(
                &[1, 32, 64, 64],
                &[32, 1, 3, 3],
                vec![("group", AttrValue::Int(32)), ("pads", ints(&[1, 1, 1, 1]))],
                true,
            ),
            // 1-D and 3-D depthwise
            case(
                &[1, 3, 20],
                &[6, 1, 4],
                vec![
                    ("group", AttrValue::Int(3)),
                    ("strides", ints(&[3])),
                    ("pads", ints(&[1, 2])),
                ],
                true,
            ),
            case(
                &[1, 2, 5, 6, 7],
                &[2, 1, 3, 2, 3],
                vec![
                    ("group", AttrValue::Int(2)),
                    ("pads", ints(&[1, 0, 1, 1, 1, 0])),
                ],
                true,
            ),
        ]);
    }

    #[test]
    fn conv_1d_and_3d() {
        check_conv_cases(vec![
            case(
                &[2, 3, 17],
                &[4, 3, 3],
                vec![
                    ("pads", ints(&[1, 2])),
                    ("strides", ints(&[2])),
                    ("dilations", ints(&[2])),
                ],
                true,
            ),
            case(
                &[1, 4, 10],
                &[6, 2, 5],
                vec![
                    ("group", AttrValue::Int(2)),
                    ("auto_pad", string("SAME_LOWER")),
                ],
                false,
            ),
            case(
                &[1, 3, 6, 7, 5],
                &[4, 3, 3, 3, 2],
                vec![
                    ("pads", ints(&[1, 1, 0, 1, 0, 1])),
                    ("strides", ints(&[2, 1, 2])),
                ],
                true,
            ),
            case(
                &[2, 4, 5, 5, 5],
                &[4, 2, 2, 3, 3],
                vec![
                    ("group", AttrValue::Int(2)),
                    ("dilations", ints(&[2, 1, 1])),
                ],
                false,
            ),
            case(&[1, 4, 4, 5, 6], &[8, 4, 1, 1, 1], vec![], true),
        ]);
    }

    #[test]
    fn conv_macs_and_geometry() {
        let o = build_op(
            "Conv",
            vec![("pads", ints(&[1, 1, 1, 1])), ("group", AttrValue::Int(2))],
        );
        let fx = Fact::new(DType::F32, vec![2, 8, 10, 12]);
        let fw = Fact::new(DType::F32, vec![6, 4, 3, 3]);
        let out = o.infer(&[Some(&fx), Some(&fw), None]).unwrap();
        assert_eq!(out[0].shape, vec![2, 6, 10, 12]);
        // N * C_out * out spatial * C_in/group * kernel
        assert_eq!(
            o.macs(&[Some(&fx), Some(&fw), None], &out),
            2 * 6 * 120 * 4 * 9
        );
    }

    #[test]
    fn conv_errors() {
        let mut rng = Rng(7);
        let x = rng.tensor(&[1, 4, 5, 5]);
        let o = build_op("Conv", vec![]);
        // channel mismatch
        assert!(o
            .eval(&[Some(&x), Some(&rng.tensor(&[2, 3, 3, 3])), None])
            .is_err());
        // rank mismatch
        assert!(o
            .eval(&[Some(&x), Some(&rng.tensor(&[2, 4, 3])), None])
            .is_err());
        // kernel bigger than input
        assert!(o
            .eval(&[Some(&x), Some(&rng.tensor(&[2, 4, 6, 6])), None])
            .is_err());
        // bad bias
        assert!(o
            .eval(&[
                Some(&x),
                Some(&rng.tensor(&[2, 4, 3, 3])),
                Some(&rng.tensor(&[3]))
            ])
            .is_err());
        // missing weight
        assert!(o.eval(&[Some(&x), None, None]).is_err());
        // rank 2 input, rank 6 input
        assert!(o
            .eval(&[Some(&rng.tensor(&[4, 5])), Some(&rng.tensor(&[2, 5])), None])
            .is_err());
        assert!(o
            .eval(&[
                Some(&rng.tensor(&[1, 1, 2, 2, 2, 2])),
                Some(&rng.tensor(&[1, 1, 1, 1, 1, 1])),
                None
            ])
            .is_err());
        // integer input
        let xi = Tensor::from_i64(vec![1, 1, 2, 2], vec![1, 2, 3, 4]);
        let wi = Tensor::from_i64(vec![1, 1, 1, 1], vec![1]);
        assert!(o.eval(&[Some(&xi), Some(&wi), None]).is_err());
        // group does not divide
        let g3 = build_op("Conv", vec![("group", AttrValue::Int(3))]);
        assert!(g3
            .eval(&[Some(&x), Some(&rng.tensor(&[3, 1, 3, 3])), None])
            .is_err());
        let g2 = build_op("Conv", vec![("group", AttrValue::Int(2))]);
        assert!(g2
            .eval(&[Some(&x), Some(&rng.tensor(&[3, 2, 3, 3])), None])
            .is_err());
        // kernel_shape disagreeing with the weight, wrong attribute lengths
        let ks = build_op("Conv", vec![("kernel_shape", ints(&[2, 2]))]);
        assert!(ks
            .eval(&[Some(&x), Some(&rng.tensor(&[2, 4, 3, 3])), None])
            .is_err());
        let st = build_op("Conv", vec![("strides", ints(&[2]))]);
        assert!(st
            .eval(&[Some(&x), Some(&rng.tensor(&[2, 4, 3, 3])), None])
            .is_err());
        let pd = build_op("Conv", vec![("pads", ints(&[1, 1]))]);
        assert!(pd
            .eval(&[Some(&x), Some(&rng.tensor(&[2, 4, 3, 3])), None])
            .is_err());
        // bad attributes at build time
        assert!(build(&node("Conv", vec![("strides", ints(&[0, 1]))]), 17).is_err());
        assert!(build(&node("Conv", vec![("dilations", ints(&[-1, 1]))]), 17).is_err());
        assert!(build(&node("Conv", vec![("group", AttrValue::Int(0))]), 17).is_err());
        assert!(build(&node("Conv", vec![("pads", ints(&[-1, 0, 0, 0]))]), 17).is_err());
        assert!(build(&node("Conv", vec![("auto_pad", string("SAME"))]), 17).is_err());
        assert!(build(
            &node(
                "Conv",
                vec![("auto_pad", string("VALID")), ("pads", ints(&[0, 0, 0, 0]))]
            ),
            17
        )
        .is_err());
        // empty kernel
        assert!(o
            .eval(&[
                Some(&x),
                Some(&Tensor::from_f32(vec![2, 4, 0, 3], vec![])),
                None
            ])
            .is_err());
        // hostile pads: refused, not allocated
        let hp = build_op(
            "Conv",
            vec![("pads", ints(&[1 << 30, 1 << 30, 1 << 30, 1 << 30]))],
        );
        assert!(hp
            .eval(&[Some(&x), Some(&rng.tensor(&[2, 4, 3, 3])), None])
            .is_err());
        let ht = build_op(
            "ConvTranspose",
            vec![("strides", ints(&[1 << 30, 1 << 30]))],
        );
        assert!(ht
            .eval(&[Some(&x), Some(&rng.tensor(&[4, 2, 3, 3])), None])
            .is_err());
        // hostile strides do not overflow
        let big = build_op("Conv", vec![("dilations", ints(&[i64::MAX / 2, 1]))]);
        assert!(big
            .eval(&[Some(&x), Some(&rng.tensor(&[2, 4, 3, 3])), None])
            .is_err());
    }

    #[test]
    fn conv_empty_batch_and_f16_dtype() {
        let o = build_op("Conv", vec![]);
        let x = Tensor::from_f32(vec![0, 2, 4, 4], vec![]);
        let w = Tensor::from_f32(vec![3, 2, 3, 3], vec![0.5; 54]);
        let y = run(o.as_ref(), &x, &w, None).unwrap();
        assert_eq!(y.shape(), &[0, 3, 2, 2]);
        // f16 tensors are held as f32 and keep their dtype.
        let x = Tensor::from_float(DType::F16, vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let w = Tensor::from_float(DType::F16, vec![1, 1, 1, 1], vec![2.0]);
        let y = run(o.as_ref(), &x, &w, None).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        assert_eq!(y.f32s().unwrap(), &[2.0, 4.0, 6.0, 8.0]);
    }

    // ----- ConvTranspose

    fn iota(shape: &[usize]) -> Tensor {
        Tensor::from_f32(
            shape.to_vec(),
            (0..numel(shape)).map(|v| v as f32).collect(),
        )
    }

    #[test]
    fn conv_transpose_hand_matches_ort() {
        let x = iota(&[1, 1, 3]);
        let w3 = Tensor::from_f32(vec![1, 1, 3], vec![1.0; 3]);
        let w2 = Tensor::from_f32(vec![1, 1, 2], vec![1.0; 2]);
        let w5 = Tensor::from_f32(vec![1, 1, 5], vec![1.0; 5]);
        let w1 = Tensor::from_f32(vec![1, 1, 1], vec![1.0]);
        let s2 = ("strides", ints(&[2]));
        let ev = |attrs: Vec<(&'static str, AttrValue)>, w: &Tensor| -> Vec<f32> {
            run(build_op("ConvTranspose", attrs).as_ref(), &x, w, None)
                .unwrap()
                .f32s()
                .unwrap()
                .to_vec()
        };
        assert_eq!(ev(vec![], &w3), vec![0.0, 1.0, 3.0, 3.0, 2.0]);
        assert_eq!(
            ev(vec![s2.clone()], &w2),
            vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
        );
        assert_eq!(
            ev(vec![s2.clone()], &w3),
            vec![0.0, 0.0, 1.0, 1.0, 3.0, 2.0, 2.0]
        );
        assert_eq!(
            ev(vec![s2.clone(), ("auto_pad", string("SAME_UPPER"))], &w3),
            vec![0.0, 0.0, 1.0, 1.0, 3.0, 2.0]
        );
        assert_eq!(
            ev(vec![s2.clone(), ("auto_pad", string("SAME_LOWER"))], &w3),
            vec![0.0, 1.0, 1.0, 3.0, 2.0, 2.0]
        );
        assert_eq!(
            ev(vec![s2.clone(), ("auto_pad", string("SAME_UPPER"))], &w5),
            vec![0.0, 1.0, 1.0, 3.0, 3.0, 3.0]
        );
        assert_eq!(
            ev(vec![s2.clone(), ("auto_pad", string("SAME_LOWER"))], &w5),
            vec![1.0, 1.0, 3.0, 3.0, 3.0, 2.0]
        );
        assert_eq!(
            ev(
                vec![("strides", ints(&[3])), ("auto_pad", string("SAME_UPPER"))],
                &w1
            ),
            vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0]
        );
        for (os, want) in [
            (2, vec![1.0, 3.0]),
            (3, vec![1.0, 1.0, 3.0]),
            (4, vec![1.0, 1.0, 3.0, 2.0]),
            (5, vec![0.0, 1.0, 1.0, 3.0, 2.0]),
            (6, vec![0.0, 1.0, 1.0, 3.0, 2.0, 2.0]),
            (7, vec![0.0, 0.0, 1.0, 1.0, 3.0, 2.0, 2.0]),
        ] {
            assert_eq!(
                ev(vec![s2.clone(), ("output_shape", ints(&[os]))], &w3),
                want,
                "output_shape {os}"
            );
        }
        // pads are ignored when output_shape is given
        assert_eq!(
            ev(
                vec![
                    s2.clone(),
                    ("output_shape", ints(&[6])),
                    ("pads", ints(&[1, 1]))
                ],
                &w3
            ),
            vec![0.0, 1.0, 1.0, 3.0, 2.0, 2.0]
        );
        assert_eq!(
            ev(
                vec![
                    s2.clone(),
                    ("output_shape", ints(&[6])),
                    ("output_padding", ints(&[1]))
                ],
                &w3
            ),
            vec![0.0, 1.0, 1.0, 3.0, 2.0, 2.0]
        );
        assert_eq!(
            ev(
                vec![
                    s2.clone(),
                    ("output_shape", ints(&[5])),
                    ("auto_pad", string("SAME_UPPER"))
                ],
                &w2
            ),
            vec![0.0, 0.0, 1.0, 1.0, 2.0]
        );
        assert_eq!(
            ev(vec![s2.clone(), ("output_padding", ints(&[1]))], &w3),
            vec![0.0, 0.0, 1.0, 1.0, 3.0, 2.0, 2.0, 0.0]
        );
        assert_eq!(
            ev(vec![s2.clone(), ("pads", ints(&[1, 2]))], &w3),
            vec![0.0, 1.0, 1.0, 3.0]
        );
        assert_eq!(
            ev(vec![s2.clone(), ("dilations", ints(&[2]))], &w3),
            vec![0.0, 0.0, 1.0, 0.0, 3.0, 0.0, 3.0, 0.0, 2.0]
        );
    }

    #[test]
    fn conv_transpose_hand_group_bias() {
        // Values from ONNX Runtime.
        let o = build_op(
            "ConvTranspose",
            vec![
                ("group", AttrValue::Int(2)),
                ("strides", ints(&[2])),
                ("output_padding", ints(&[1])),
            ],
        );
        let x = iota(&[1, 2, 3]);
        let w = Tensor::from_f32(vec![2, 1, 2], vec![1.0, 2.0, -1.0, 1.0]);
        let b = Tensor::from_f32(vec![2], vec![1.0, -1.0]);
        let y = run(o.as_ref(), &x, &w, Some(&b)).unwrap();
        assert_eq!(y.shape(), &[1, 2, 7]);
        assert_eq!(
            y.f32s().unwrap(),
            &[1.0, 1.0, 2.0, 3.0, 3.0, 5.0, 1.0, -4.0, 2.0, -5.0, 3.0, -6.0, 4.0, -1.0]
        );
    }

    #[test]
    fn conv_transpose_many_configs() {
        let cases = vec![
            case(&[1, 3, 5, 5], &[3, 4, 3, 3], vec![], true),
            case(
                &[2, 4, 5, 6],
                &[4, 3, 3, 3],
                vec![
                    ("strides", ints(&[2, 2])),
                    ("pads", ints(&[1, 1, 1, 1])),
                    ("output_padding", ints(&[1, 0])),
                ],
                true,
            ),
            case(
                &[1, 4, 5, 4],
                &[4, 2, 3, 2],
                vec![
                    ("strides", ints(&[3, 2])),
                    ("dilations", ints(&[2, 1])),
                    ("pads", ints(&[0, 1, 2, 0])),
                ],
                false,
            ),
            case(
                &[2, 6, 4, 4],
                &[6, 3, 3, 3],
                vec![("group", AttrValue::Int(3)), ("strides", ints(&[2, 2]))],
                true,
            ),
            case(
                &[1, 4, 4, 4],
                &[4, 1, 4, 4],
                vec![
                    ("group", AttrValue::Int(4)),
                    ("strides", ints(&[2, 2])),
                    ("pads", ints(&[1, 1, 1, 1])),
                ],
                true,
            ),
            case(
                &[1, 3, 5, 5],
                &[3, 2, 3, 3],
                vec![
                    ("strides", ints(&[2, 2])),
                    ("auto_pad", string("SAME_UPPER")),
                ],
                false,
            ),
            case(
                &[1, 3, 5, 5],
                &[3, 2, 4, 3],
                vec![
                    ("strides", ints(&[2, 3])),
                    ("auto_pad", string("SAME_LOWER")),
                ],
                true,
            ),
            case(
                &[1, 3, 5, 5],
                &[3, 2, 3, 3],
                vec![("strides", ints(&[2, 2])), ("output_shape", ints(&[9, 10]))],
                true,
            ),
            case(
                &[1, 3, 5, 5],
                &[3, 2, 3, 3],
                vec![("auto_pad", string("VALID"))],
                false,
            ),
            case(&[1, 8, 6, 6], &[8, 4, 1, 1], vec![], true),
            case(
                &[2, 3, 7],
                &[3, 2, 3],
                vec![("strides", ints(&[2])), ("pads", ints(&[2, 1]))],
                true,
            ),
            case(
                &[1, 2, 3, 4, 3],
                &[2, 3, 2, 3, 2],
                vec![
                    ("strides", ints(&[2, 1, 2])),
                    ("pads", ints(&[0, 1, 0, 1, 0, 1])),
                ],
                true,
            ),
            // parallel paths
            case(
                &[1, 32, 16, 16],
                &[32, 16, 4, 4],
                vec![("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))],
                true,
            ),
            case(
                &[4, 16, 10, 10],
                &[16, 8, 3, 3],
                vec![
                    ("strides", ints(&[2, 2])),
                    ("output_padding", ints(&[1, 1])),
                ],
                false,
            ),
        ];
        let mut rng = Rng(12345);
        for (ci, c) in cases.into_iter().enumerate() {
            let o = build_op("ConvTranspose", c.attrs.clone());
            let x = rng.tensor(&c.x);
            let w = rng.tensor(&c.w);
            let cout = c.w[1]
                * c.attrs
                    .iter()
                    .find(|(k, _)| *k == "group")
                    .map(|(_, v)| {
                        if let AttrValue::Int(g) = v {
                            *g as usize
                        } else {
                            1
                        }
                    })
                    .unwrap_or(1);
            let b = c.bias.then(|| rng.tensor(&[cout]));
            let y =
                run(o.as_ref(), &x, &w, b.as_ref()).unwrap_or_else(|e| panic!("case {ci}: {e}"));
            let n = node("ConvTranspose", c.attrs.clone());
            let ct = ConvTranspose {
                attrs: ConvAttrs::from_node(&n).unwrap(),
                output_padding: n
                    .attr_ints("output_padding")
                    .unwrap()
                    .map(|v| v.iter().map(|&x| x as usize).collect()),
                output_shape: n
                    .attr_ints("output_shape")
                    .unwrap()
                    .map(|v| v.iter().map(|&x| x as usize).collect()),
            };
            let g = ct.geometry(&c.x, &c.w).unwrap();
            let want = ref_conv_t(&x, &w, b.as_ref(), &g);
            close(y.f32s().unwrap(), &want);
        }
    }

    #[test]
    fn conv_transpose_macs_and_errors() {
        let o = build_op(
            "ConvTranspose",
            vec![("strides", ints(&[2, 2])), ("group", AttrValue::Int(2))],
        );
        let fx = Fact::new(DType::F32, vec![2, 4, 5, 6]);
        let fw = Fact::new(DType::F32, vec![4, 3, 3, 3]);
        let out = o.infer(&[Some(&fx), Some(&fw), None]).unwrap();
        assert_eq!(out[0].shape, vec![2, 6, 11, 13]);
        assert_eq!(
            o.macs(&[Some(&fx), Some(&fw), None], &out),
            2 * 4 * 30 * 3 * 9
        );

        let mut rng = Rng(99);
        let x = rng.tensor(&[1, 2, 3]);
        let w = rng.tensor(&[2, 1, 3]);
        let ev = |attrs: Vec<(&'static str, AttrValue)>, w: &Tensor| {
            build_op("ConvTranspose", attrs).eval(&[Some(&x), Some(w), None])
        };
        // output_padding >= stride
        assert!(ev(
            vec![("strides", ints(&[2])), ("output_padding", ints(&[2]))],
            &w
        )
        .is_err());
        // output_shape too large, wrong length
        assert!(ev(
            vec![("strides", ints(&[2])), ("output_shape", ints(&[8]))],
            &w
        )
        .is_err());
        assert!(ev(vec![("output_shape", ints(&[1, 1, 5]))], &w).is_err());
        // pads consume everything
        assert!(ev(vec![("pads", ints(&[3, 3]))], &w).is_err());
        // channel mismatch
        assert!(ev(vec![], &rng.tensor(&[3, 1, 3])).is_err());
        // group does not divide the input channels
        assert!(ev(vec![("group", AttrValue::Int(3))], &rng.tensor(&[2, 1, 3])).is_err());
        // bias of the wrong size
        let b = rng.tensor(&[2]);
        assert!(build_op("ConvTranspose", vec![])
            .eval(&[Some(&x), Some(&w), Some(&b)])
            .is_err());
        // negative output_padding at build time
        assert!(build(
            &node("ConvTranspose", vec![("output_padding", ints(&[-1]))]),
            17
        )
        .is_err());
        assert!(build(
            &node("ConvTranspose", vec![("output_shape", ints(&[0]))]),
            17
        )
        .is_err());
        // empty spatial input
        let e = Tensor::from_f32(vec![1, 2, 0], vec![]);
        assert!(build_op("ConvTranspose", vec![])
            .eval(&[Some(&e), Some(&w), None])
            .is_err());
    }

    #[test]
    fn valid_range_edges() {
        // o * s + off in [0, n_in)
        assert_eq!(valid_range(5, 5, 1, 0), (0, 5));
        assert_eq!(valid_range(5, 5, 1, -1), (1, 5));
        assert_eq!(valid_range(5, 5, 1, 1), (0, 4));
        assert_eq!(valid_range(3, 5, 2, -1), (1, 3));
        assert_eq!(valid_range(3, 2, 1, 5), (0, 0));
        let (lo, hi) = valid_range(3, 2, 1, -5);
        assert_eq!(lo, hi);
        assert_eq!(valid_range(4, 7, 3, -2), (1, 3));
    }

    /// The flat (phased) depthwise gradients agree with the tap-by-tap
    /// ones on square, asymmetric, dilated, strided, 1-D-like and tiny
    /// planes.
    #[test]
    fn flat_depthwise_grads_match_runs() {
        let mut rng = Rng(11);
        for (hw, k, dil, st, pb, pe) in [
            ([8, 8], [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            ([4, 4], [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            ([7, 5], [5, 3], [1, 2], [1, 1], [2, 0], [1, 2]),
            ([1, 9], [1, 3], [1, 1], [1, 1], [0, 1], [0, 1]),
            ([6, 6], [3, 3], [1, 1], [1, 1], [0, 0], [0, 0]),
            ([8, 8], [3, 3], [1, 1], [2, 2], [1, 1], [1, 1]),
            ([7, 9], [3, 3], [1, 1], [2, 2], [1, 1], [1, 1]),
            ([9, 8], [5, 3], [2, 1], [3, 2], [0, 2], [1, 0]),
            ([5, 5], [3, 3], [1, 1], [2, 1], [0, 0], [0, 0]),
        ] {
            let geom = ConvGeom {
                n: 2,
                c_in: 3,
                c_out: 3,
                group: 3,
                in_sp: hw.to_vec(),
                out_sp: (0..2)
                    .map(|a| (hw[a] + pb[a] + pe[a] - (k[a] - 1) * dil[a] - 1) / st[a] + 1)
                    .collect(),
                kernel: k.to_vec(),
                strides: st.to_vec(),
                dilations: dil.to_vec(),
                pads_begin: pb.to_vec(),
                pads_end: pe.to_vec(),
            };
            assert!(FlatDw::new(&geom).is_some(), "{geom:?}");
            let x = rng.tensor(&[2, 3, hw[0], hw[1]]);
            let w = rng.tensor(&[3, 1, k[0], k[1]]);
            let dy = rng.tensor(&[2, 3, geom.out_sp[0], geom.out_sp[1]]);
            let (x, w, dy) = (x.f32s().unwrap(), w.f32s().unwrap(), dy.f32s().unwrap());
            let close = |a: &[f32], b: &[f32]| {
                assert_eq!(a.len(), b.len());
                for (p, q) in a.iter().zip(b) {
                    assert!(
                        (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                        "{p} vs {q}, {geom:?}"
                    );
                }
            };
            close(
                &depthwise_input_grad(dy, w, &geom),
                &depthwise_input_grad_runs(dy, w, &geom),
            );
            close(
                &depthwise_weight_grad(x, dy, &geom),
                &depthwise_weight_grad_runs(x, dy, &geom),
            );
        }
    }

    /// Input and weight gradients against plain sums (f64), on 2-D
    /// geometries that take the one-shift im2col / col2im paths (stride
    /// 1, output as wide as the input: dilated, asymmetric pads, 1xK,
    /// 5x5 split into one-row blocks by the test-size column limit) and
    /// on some that do not (strided, narrower output, grouped).
    #[test]
    fn conv_grads_match_plain_sums() {
        let mut rng = Rng(5);
        for (ci, co, grp, hw, k, dil, st, pb, pe) in [
            (3, 4, 1, [9, 7], [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            (3, 4, 1, [8, 9], [3, 3], [2, 2], [1, 1], [2, 2], [2, 2]),
            (2, 3, 1, [9, 7], [3, 3], [1, 1], [1, 1], [0, 1], [2, 1]),
            (2, 3, 1, [5, 8], [1, 3], [1, 1], [1, 1], [0, 1], [0, 1]),
            (3, 3, 1, [12, 11], [5, 5], [1, 1], [1, 1], [2, 2], [2, 2]),
            (4, 6, 2, [6, 6], [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            (3, 4, 1, [9, 7], [3, 3], [1, 1], [2, 2], [1, 1], [1, 1]),
            (3, 4, 1, [9, 7], [3, 3], [1, 1], [1, 1], [0, 0], [0, 0]),
        ] {
            let out: Vec<usize> = (0..2)
                .map(|a| (hw[a] + pb[a] + pe[a] - (k[a] - 1) * dil[a] - 1) / st[a] + 1)
                .collect();
            let geom = ConvGeom {
                n: 2,
                c_in: ci,
                c_out: co,
                group: grp,
                in_sp: hw.to_vec(),
                out_sp: out.clone(),
                kernel: k.to_vec(),
                strides: st.to_vec(),
                dilations: dil.to_vec(),
                pads_begin: pb.to_vec(),
                pads_end: pe.to_vec(),
            };
            let (cg, cog) = (ci / grp, co / grp);
            let mut r = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next()).collect() };
            let x = r(2 * ci * hw[0] * hw[1]);
            let w = r(co * cg * k[0] * k[1]);
            let dy = r(2 * co * out[0] * out[1]);
            let mut dx = vec![0f64; x.len()];
            let mut dw = vec![0f64; w.len()];
            for n in 0..2 {
                for o in 0..co {
                    let g = o / cog;
                    for c in 0..cg {
                        let xc = n * ci + g * cg + c;
                        for (kh, kw) in (0..k[0]).flat_map(|a| (0..k[1]).map(move |b| (a, b))) {
                            let wi = ((o * cg + c) * k[0] + kh) * k[1] + kw;
                            for (y, xo) in
                                (0..out[0]).flat_map(|a| (0..out[1]).map(move |b| (a, b)))
                            {
                                let iy = (y * st[0] + kh * dil[0]) as isize - pb[0] as isize;
                                let ix = (xo * st[1] + kw * dil[1]) as isize - pb[1] as isize;
                                if iy < 0 || ix < 0 || iy >= hw[0] as isize || ix >= hw[1] as isize
                                {
                                    continue;
                                }
                                let xi = (xc * hw[0] + iy as usize) * hw[1] + ix as usize;
                                let d = dy[((n * co + o) * out[0] + y) * out[1] + xo] as f64;
                                dw[wi] += d * x[xi] as f64;
                                dx[xi] += d * w[wi] as f64;
                            }
                        }
                    }
                }
            }
            let as32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
            close(&conv_input_grad(&dy, &w, &geom), &as32(dx));
            close(&conv_weight_grad(&x, &dy, &geom), &as32(dw));
        }
    }
}
