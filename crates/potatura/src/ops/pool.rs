//! Pooling: MaxPool, AveragePool (any number of spatial axes) and the global
//! variants.
//!
//! Max and average pooling over a box window are separable: pooling an N-D
//! window equals pooling along each spatial axis in turn (with the average's
//! divisor factoring into a per-axis divisor, for both `count_include_pad`
//! settings). Each pass works on a `[outer, length, inner]` view, so the
//! inner loops run over contiguous rows.

use rayon::prelude::*;

use super::common::{fact, input, PAR_THRESHOLD};
use super::reduce::{max_f32, sum_f32};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{DType, Node, Storage, Tensor};

/// Largest number of elements an op of this family will allocate for an
/// output (a guard against malformed models; 2^31 values, 8 GiB of f32).
pub const MAX_OUTPUT_ELEMENTS: usize = 1 << 31;

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
        Some(v) if v.len() == n && v.iter().all(|&x| x >= 1 && x <= i32::MAX as i64) => Ok(v.iter().map(|&x| x as usize).collect()),
        Some(v) => Err(op_error(format!("{name} {v:?} must hold {n} positive values (one per spatial axis)"))),
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
        return Err(op_error(format!("kernel_shape {kernel:?} must hold positive values")));
    }
    let n = kernel.len();
    let kernel: Vec<usize> = kernel.iter().map(|&k| k as usize).collect();
    let strides = per_axis(node, "strides", n)?;
    let dilations = per_axis(node, "dilations", n)?;
    let pads = match node.attr_ints("pads")? {
        None => vec![0; 2 * n],
        Some(p) if p.len() == 2 * n && p.iter().all(|&x| x >= 0) => p.iter().map(|&x| x as usize).collect(),
        Some(p) => return Err(op_error(format!("pads {p:?} must hold {} non-negative values", 2 * n))),
    };
    for i in 0..n {
        if pads[i] >= kernel[i] || pads[i + n] >= kernel[i] {
            return Err(op_error(format!("pads {pads:?} must be smaller than kernel_shape {kernel:?}")));
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
/// Runtime (including its rule that with `ceil_mode` the last window must
/// start inside the input or the begin padding).
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
) -> Result<(usize, usize, usize)> {
    let (inl, k, s, d) = (in_len as i64, kernel as i64, stride as i64, dilation as i64);
    let eff = (k - 1) * d + 1;
    let from_pads = |pb: i64, pe: i64| -> Result<i64> {
        let num = inl + pb + pe - eff;
        if num < 0 {
            return Err(op_error(format!(
                "the window ({eff} with dilation) is larger than the padded input ({})",
                inl + pb + pe
            )));
        }
        let mut out = num / s + 1;
        if ceil_mode {
            out = (num + s - 1) / s + 1;
            if (out - 1) * s >= inl + pb {
                out -= 1;
            }
        }
        Ok(out)
    };
    let (out, pb, pe) = match auto_pad {
        AutoPad::NotSet => (from_pads(pad_begin as i64, pad_end as i64)?, pad_begin as i64, pad_end as i64),
        AutoPad::Valid => (from_pads(0, 0)?, 0, 0),
        AutoPad::SameUpper | AutoPad::SameLower => {
            let out = (inl + s - 1) / s;
            let need = ((out - 1) * s + eff - inl).max(0);
            let pb = if auto_pad == AutoPad::SameLower { (need + 1) / 2 } else { need / 2 };
            (out, pb, need - pb)
        }
    };
    Ok((out as usize, pb as usize, pe as usize))
}

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
    fn new(in_len: usize, out_len: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize, include_pad: bool) -> AxisPlan {
        let (inl, k_i, d_i) = (in_len as i64, k as i64, d as i64);
        let eff = (k_i - 1) * d_i + 1;
        let mut first = Vec::with_capacity(out_len);
        let mut taps = Vec::with_capacity(out_len);
        let mut scale = Vec::with_capacity(out_len);
        let (mut lo, mut hi) = (out_len, 0);
        for p in 0..out_len {
            let start = (p * s) as i64 - pb as i64;
            let k_lo = if start < 0 { (-start + d_i - 1) / d_i } else { 0 };
            let k_hi = if inl > start { ((inl - start + d_i - 1) / d_i).min(k_i) } else { 0 };
            let n = (k_hi - k_lo).max(0);
            first.push(if n > 0 { (start + k_lo * d_i) as usize } else { 0 });
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
        AxisPlan { in_len, out_len, dilation: d, kernel: k, stride: s, first, taps, scale, interior: lo..hi.max(lo) }
    }

    fn is_identity(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.out_len == self.in_len && self.first.iter().enumerate().all(|(p, &f)| f == p)
    }
}

#[inline(always)]
fn comb<const MAX: bool>(a: f32, b: f32) -> f32 {
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

/// Pools one `[in_len, inner]` block into `[out_len, inner]`.
fn pass_block<const MAX: bool>(src: &[f32], dst: &mut [f32], inner: usize, ax: &AxisPlan) {
    let empty = if MAX { f32::MIN } else { 0.0 };
    let dil = ax.dilation;
    if inner == 1 {
        // Interior with stride 1: vectorised over output positions.
        let fast = ax.stride == 1 && ax.interior.len() >= 8;
        for p in 0..ax.out_len {
            if fast && ax.interior.contains(&p) {
                continue;
            }
            let n = ax.taps[p];
            let v = if n == 0 {
                empty
            } else {
                let f = ax.first[p];
                let mut acc = src[f];
                for t in 1..n {
                    acc = comb::<MAX>(acc, src[f + t * dil]);
                }
                acc
            };
            dst[p] = if MAX { v } else { v * ax.scale[p] };
        }
        if fast {
            let r = ax.interior.clone();
            let m = r.len();
            let f0 = ax.first[r.start];
            let d = &mut dst[r.clone()];
            d.copy_from_slice(&src[f0..f0 + m]);
            for t in 1..ax.kernel {
                let o = f0 + t * dil;
                for (a, &b) in d.iter_mut().zip(&src[o..o + m]) {
                    *a = comb::<MAX>(*a, b);
                }
            }
            if !MAX {
                for (a, &s) in d.iter_mut().zip(&ax.scale[r]) {
                    *a *= s;
                }
            }
        }
        return;
    }
    for p in 0..ax.out_len {
        let d = &mut dst[p * inner..(p + 1) * inner];
        let n = ax.taps[p];
        if n == 0 {
            d.fill(empty);
            continue;
        }
        let f = ax.first[p];
        d.copy_from_slice(&src[f * inner..(f + 1) * inner]);
        for t in 1..n {
            let r = (f + t * dil) * inner;
            for (a, &b) in d.iter_mut().zip(&src[r..r + inner]) {
                *a = comb::<MAX>(*a, b);
            }
        }
        if !MAX {
            let s = ax.scale[p];
            if s != 1.0 {
                d.iter_mut().for_each(|a| *a *= s);
            }
        }
    }
}

/// Pools `src` viewed as `[outer, in_len, inner]` along the middle axis.
fn run_pass<const MAX: bool>(src: &[f32], outer: usize, inner: usize, ax: &AxisPlan) -> Vec<f32> {
    let ib = ax.in_len * inner;
    let ob = ax.out_len * inner;
    let mut dst = vec![0.0f32; outer * ob];
    if dst.is_empty() {
        return dst;
    }
    let work = outer * ob * ax.kernel;
    if work >= PAR_THRESHOLD && outer > 1 {
        let min = (PAR_THRESHOLD / 4 / (ob * ax.kernel).max(1)).max(1);
        dst.par_chunks_mut(ob)
            .zip(src.par_chunks(ib.max(1)))
            .with_min_len(min)
            .for_each(|(d, s)| pass_block::<MAX>(s, d, inner, ax));
    } else {
        for (d, s) in dst.chunks_mut(ob).zip(src.chunks(ib.max(1))) {
            pass_block::<MAX>(s, d, inner, ax);
        }
    }
    dst
}

fn check_float(dtype: DType) -> Result<()> {
    if dtype.storage() != Storage::Float {
        return Err(op_error(format!("pooling needs a float tensor, got {dtype}")));
    }
    Ok(())
}

impl Pool {
    /// Output shape and per-axis (out length, pad begin, pad end).
    fn geometry(&self, shape: &[usize]) -> Result<(Vec<usize>, Vec<(usize, usize, usize)>)> {
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
        let total = out.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
        if total > MAX_OUTPUT_ELEMENTS {
            return Err(op_error(format!("output shape {out:?} is too large")));
        }
        Ok((out, axes))
    }
}

impl Op for Pool {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        check_float(x.dtype)?;
        Ok(vec![Fact::new(x.dtype, self.geometry(&x.shape)?.0)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        check_float(x.dtype())?;
        let (out_shape, axes) = self.geometry(x.shape())?;
        let mut cur_shape = x.shape().to_vec();
        let mut cur: Option<Vec<f32>> = None;
        for (i, &(out_len, pb, pe)) in axes.iter().enumerate() {
            let a = i + 2;
            let plan = AxisPlan::new(
                cur_shape[a],
                out_len,
                self.kernel[i],
                self.strides[i],
                self.dilations[i],
                pb,
                pe,
                self.count_include_pad,
            );
            if plan.is_identity() {
                continue;
            }
            let outer: usize = cur_shape[..a].iter().product();
            let inner: usize = cur_shape[a + 1..].iter().product();
            let src = match &cur {
                Some(v) => v.as_slice(),
                None => x.f32s()?,
            };
            let next = match self.kind {
                PoolKind::Max => run_pass::<true>(src, outer, inner, &plan),
                PoolKind::Avg => run_pass::<false>(src, outer, inner, &plan),
            };
            cur = Some(next);
            cur_shape[a] = out_len;
        }
        let data = match cur {
            Some(v) => v,
            None => x.f32s()?.to_vec(),
        };
        Ok(vec![Tensor::from_float(x.dtype(), out_shape, data)])
    }
}

impl GlobalPool {
    fn out_shape(shape: &[usize]) -> Result<Vec<usize>> {
        if shape.len() < 2 {
            return Err(op_error(format!("global pooling needs an input of rank >= 2 (N, C, ...), got rank {}", shape.len())));
        }
        let mut s = shape.to_vec();
        s[2..].iter_mut().for_each(|d| *d = 1);
        Ok(s)
    }
}

impl Op for GlobalPool {
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
        let out: Vec<f32> = if v.len() >= PAR_THRESHOLD && planes > 1 {
            let min = (PAR_THRESHOLD / 4 / plane.max(1)).max(1);
            (0..planes).into_par_iter().with_min_len(min).map(f).collect()
        } else {
            (0..planes).map(f).collect()
        };
        Ok(vec![Tensor::from_float(x.dtype(), shape, out)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute};

    fn mk(op: &str, attrs: Vec<(&str, AttrValue)>) -> Result<Box<dyn Op>> {
        let n = Node::new("p", op, &["x"], &["y"], attrs.into_iter().map(|(k, v)| Attribute::new(k, v)).collect());
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
                let div = if incl { (1 + (he - hs - 1) / d[0] as i64) * (1 + (we - ws - 1) / d[1] as i64) } else { cnt };
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
        let y = run("MaxPool", vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))], &x).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert_eq!(y.f32s().unwrap(), &[6., 8., 14., 16.]);
        // defaults: stride 1
        let y = run("MaxPool", vec![("kernel_shape", ints(&[2, 2]))], &x).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 3]);
        assert_eq!(y.f32s().unwrap(), &[6., 7., 8., 10., 11., 12., 14., 15., 16.]);
    }

    #[test]
    fn maxpool_ceil_mode_ort() {
        // onnxruntime: 5x5 ramp, k2 s2 ceil -> [[7,9,10],[17,19,20],[22,24,25]]
        let x = ramp(vec![1, 1, 5, 5]);
        let y = run("MaxPool", vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2])), ("ceil_mode", AttrValue::Int(1))], &x)
            .unwrap();
        assert_eq!(y.f32s().unwrap(), &[7., 9., 10., 17., 19., 20., 22., 24., 25.]);
        // k3 s3 p1 ceil: the last window would start in the padding -> 2x2
        let y = run(
            "MaxPool",
            vec![("kernel_shape", ints(&[3, 3])), ("strides", ints(&[3, 3])), ("pads", ints(&[1, 1, 1, 1])), ("ceil_mode", AttrValue::Int(1))],
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
        let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.5).collect();
        let x = Tensor::from_f32(vec![2, 3, 20, 20], v.clone());
        let attrs = vec![("kernel_shape", ints(&[5, 5])), ("strides", ints(&[1, 1])), ("pads", ints(&[2, 2, 2, 2]))];
        let y = run("MaxPool", attrs, &x).unwrap();
        assert_eq!(y.shape(), &[2, 3, 20, 20]);
        for p in 0..6 {
            let want = naive2d(&v[p * 400..(p + 1) * 400], 20, 20, [5, 5], [1, 1], [1, 1], [2, 2, 2, 2], [20, 20], true, false);
            assert_eq!(&y.f32s().unwrap()[p * 400..(p + 1) * 400], want.as_slice());
        }
        // bigger tensor, parallel path, against the same reference
        let v: Vec<f32> = (0..64 * 400).map(|i| ((i * 7919) % 1009) as f32).collect();
        let x = Tensor::from_f32(vec![1, 64, 20, 20], v.clone());
        let attrs = vec![("kernel_shape", ints(&[5, 5])), ("pads", ints(&[2, 2, 2, 2]))];
        let y = run("MaxPool", attrs, &x).unwrap();
        for p in [0, 31, 63] {
            let want = naive2d(&v[p * 400..(p + 1) * 400], 20, 20, [5, 5], [1, 1], [1, 1], [2, 2, 2, 2], [20, 20], true, false);
            assert_eq!(&y.f32s().unwrap()[p * 400..(p + 1) * 400], want.as_slice());
        }
    }

    #[test]
    fn pools_match_naive_many_configs() {
        let (h, w) = (9, 11);
        let v: Vec<f32> = (0..h * w).map(|i| ((i * 13 % 17) as f32) - 8.0).collect();
        let x = Tensor::from_f32(vec![1, 1, h, w], v.clone());
        let configs: &[([usize; 2], [usize; 2], [usize; 2], [usize; 4], bool)] = &[
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
                        ("pads", ints(&p.iter().map(|&v| v as i64).collect::<Vec<_>>())),
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
            vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2])), ("ceil_mode", AttrValue::Int(1)), ("count_include_pad", AttrValue::Int(1))],
            &x,
        )
        .unwrap();
        close(y.f32s().unwrap(), &[4., 6., 7.5, 14., 16., 17.5, 21.5, 23.5, 25.]);
        let y = run(
            "AveragePool",
            vec![("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1])), ("count_include_pad", AttrValue::Int(1))],
            &x,
        )
        .unwrap();
        close(y.f32s().unwrap(), &[1.7777778, 3.6666667, 3.1111112, 7.6666665, 13., 9.666667, 8.444445, 13.666667, 9.777778]);
        let y = run("AveragePool", vec![("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))], &x)
            .unwrap();
        close(y.f32s().unwrap(), &[4., 5.5, 7., 11.5, 13., 14.5, 19., 20.5, 22.]);
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
            &[2., 4., 5.3333335, 3., 9., 15., 17., 9., 17., 27., 29., 15., 10.5, 16.5, 17.5, 9.],
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
        close(run("AveragePool", base(1, 0, 1), &x).unwrap().f32s().unwrap(), &[1., 2., 3., 4., 5., 2.5]);
        close(run("AveragePool", base(0, 0, 1), &x).unwrap().f32s().unwrap(), &[2., 2., 3., 4., 5., 5.]);
        close(run("AveragePool", base(1, 1, 2), &x).unwrap().f32s().unwrap(), &[1., 3., 5., 6.]);
        let y = run(
            "AveragePool",
            vec![("kernel_shape", ints(&[3])), ("strides", ints(&[2])), ("pads", ints(&[1, 1])), ("ceil_mode", AttrValue::Int(1))],
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
            vec![("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("auto_pad", AttrValue::String(b"SAME_UPPER".to_vec())), ("count_include_pad", AttrValue::Int(1))],
            &x,
        )
        .unwrap();
        close(y.f32s().unwrap(), &[8., 10., 7.6666665, 20., 22., 15.666667, 19.333334, 20.666666, 14.444445]);
        let y = run(
            "AveragePool",
            vec![("kernel_shape", ints(&[3, 3])), ("strides", ints(&[2, 2])), ("auto_pad", AttrValue::String(b"SAME_UPPER".to_vec()))],
            &x,
        )
        .unwrap();
        close(y.f32s().unwrap(), &[8., 10., 11.5, 20., 22., 23.5, 29., 31., 32.5]);
        let y = run(
            "AveragePool",
            vec![("kernel_shape", ints(&[2, 2])), ("auto_pad", AttrValue::String(b"SAME_LOWER".to_vec())), ("count_include_pad", AttrValue::Int(1))],
            &x,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 1, 6, 6]);
        close(&y.f32s().unwrap()[..8], &[0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 2., 4.5]);
        let y = run(
            "AveragePool",
            vec![("kernel_shape", ints(&[2, 3])), ("strides", ints(&[2, 2])), ("auto_pad", AttrValue::String(b"VALID".to_vec()))],
            &x,
        )
        .unwrap();
        close(y.f32s().unwrap(), &[5., 7., 17., 19., 29., 31.]);
        let y = run(
            "MaxPool",
            vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2])), ("auto_pad", AttrValue::String(b"SAME_UPPER".to_vec()))],
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
        close(y.f32s().unwrap(), &[0.125, 0.625, 1.375, 3.5, 3.625, 8., 9.5, 20.5]);
    }

    #[test]
    fn all_padding_window() {
        // ORT: MaxPool gives the lowest float, AveragePool 0.
        let x = Tensor::from_f32(vec![1, 1, 2], vec![3., 4.]);
        let a = vec![("kernel_shape", ints(&[2])), ("pads", ints(&[1, 1])), ("dilations", ints(&[3]))];
        assert_eq!(run("MaxPool", a.clone(), &x).unwrap().f32s().unwrap(), &[f32::MIN]);
        assert_eq!(run("AveragePool", a, &x).unwrap().f32s().unwrap(), &[0.0]);
    }

    #[test]
    fn global_pools() {
        let x = ramp(vec![2, 3, 2, 2]);
        let y = run("GlobalAveragePool", vec![], &x).unwrap();
        assert_eq!(y.shape(), &[2, 3, 1, 1]);
        close(y.f32s().unwrap(), &[2.5, 6.5, 10.5, 14.5, 18.5, 22.5]);
        let y = run("GlobalMaxPool", vec![], &x).unwrap();
        assert_eq!(y.f32s().unwrap(), &[4., 8., 12., 16., 20., 24.]);
        let big = Tensor::from_f32(vec![1, 64, 32, 32], (0..65536).map(|i| (i % 1024) as f32).collect());
        let y = run("GlobalAveragePool", vec![], &big).unwrap();
        close(y.f32s().unwrap(), &[511.5; 64]);
        let y = run("GlobalMaxPool", vec![], &big).unwrap();
        assert_eq!(y.f32s().unwrap(), &[1023.0; 64]);
        // 1-D spatial
        let y = run("GlobalMaxPool", vec![], &Tensor::from_f32(vec![1, 2, 3], vec![1., -5., 2., -1., -2., -3.])).unwrap();
        assert_eq!(y.shape(), &[1, 2, 1]);
        assert_eq!(y.f32s().unwrap(), &[2., -1.]);
    }

    #[test]
    fn errors() {
        assert!(mk("MaxPool", vec![]).is_err());
        assert!(mk("MaxPool", vec![("kernel_shape", ints(&[0, 2]))]).is_err());
        assert!(mk("MaxPool", vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2]))]).is_err());
        assert!(mk("MaxPool", vec![("kernel_shape", ints(&[2, 2])), ("pads", ints(&[2, 0, 0, 0]))]).is_err());
        assert!(mk("MaxPool", vec![("kernel_shape", ints(&[2, 2])), ("pads", ints(&[-1, 0, 0, 0]))]).is_err());
        assert!(mk("MaxPool", vec![("kernel_shape", ints(&[2, 2])), ("auto_pad", AttrValue::String(b"SAME".to_vec()))]).is_err());
        // Indices output
        let n = Node::new("p", "MaxPool", &["x"], &["y", "idx"], vec![Attribute::new("kernel_shape", ints(&[2, 2]))]);
        assert!(build(&n, 12).is_err());
        // rank mismatch, window larger than input, int input
        let o = mk("MaxPool", vec![("kernel_shape", ints(&[2, 2]))]).unwrap();
        assert!(o.eval(&[Some(&ramp(vec![1, 4, 4]))]).is_err());
        assert!(o.eval(&[Some(&ramp(vec![1, 1, 1, 4]))]).is_err());
        assert!(o.infer(&[Some(&Fact::new(DType::I64, vec![1, 1, 4, 4]))]).is_err());
        assert!(o.eval(&[None]).is_err());
        let g = mk("GlobalAveragePool", vec![]).unwrap();
        assert!(g.eval(&[Some(&ramp(vec![4]))]).is_err());
        // huge output from a huge kernel with huge pads
        let o = mk("MaxPool", vec![("kernel_shape", ints(&[1 << 30])), ("pads", ints(&[(1 << 30) - 1, (1 << 30) - 1]))]).unwrap();
        assert!(o.infer(&[Some(&Fact::new(DType::F32, vec![4, 4, 4]))]).is_err());
    }
}
