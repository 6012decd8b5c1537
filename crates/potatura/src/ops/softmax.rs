//! Softmax and LogSoftmax, numerically stable (the maximum is subtracted
//! before exponentiating), with a vectorisable `exp`.

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap};
use super::common::{axis, fact, input, PAR_THRESHOLD};
use super::pool::with_simd;
use super::reduce::{max_f32, sum_f32};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{DType, Node, Storage, Tensor};

/// `e^x` for f32, branch-free so loops over slices vectorise (Cephes
/// polynomial after range reduction; relative error about 1 ulp over the
/// whole range, 0 below about -104, +inf above about 88.72, NaN stays NaN).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: rounds to an integer
    let xc = x.clamp(-105.0, 89.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_6e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n as two normal halves, so n in [-150, 129] never leaves the range
    // of normal exponents.
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) << 23) as u32);
    let s2 = f32::from_bits(((n2 + 127) << 23) as u32);
    y * s1 * s2
}

/// `a * b + c`, fused when `FMA` (only in code compiled with the `fma`
/// feature; elsewhere `mul_add` is a slow library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for `x <= 0` (or NaN), as needed after subtracting a maximum: one
/// scaling step instead of two; 0 below about -87.3 (where `e^x` is
/// subnormal).
#[inline(always)]
fn exp_neg<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0;
    const LO: f32 = -87.336_54; // 2^-126
    let xc = if x < LO { LO } else { x };
    let t = madd::<FMA>(xc, LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, xc));
    let mut p = 1.987_569_1e-4f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_6e-1);
    p = madd::<FMA>(p, r, 0.5);
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let v = y * f32::from_bits(((ni + 127) << 23) as u32);
    if x < LO {
        0.0
    } else {
        v
    }
}

/// Softmax or LogSoftmax.
#[derive(Debug)]
pub struct Softmax {
    /// LogSoftmax instead of Softmax.
    pub log: bool,
    /// The `axis` attribute (may be negative).
    pub axis: i64,
    /// Opset < 13: flatten to 2-D at `axis` and normalise each row;
    /// otherwise normalise along `axis` alone.
    pub flatten: bool,
}

/// Builds Softmax and LogSoftmax.
pub fn build(node: &Node, opset: i64) -> Result<Box<dyn Op>> {
    let log = match node.op_type.as_str() {
        "Softmax" => false,
        "LogSoftmax" => true,
        o => return Err(op_error(format!("softmax::build called for {o}"))),
    };
    let flatten = opset < 13;
    let axis = node.attr_int("axis", if flatten { 1 } else { -1 })?;
    Ok(Box::new(Softmax { log, axis, flatten }))
}

fn check_float(dtype: DType) -> Result<()> {
    if dtype.storage() != Storage::Float {
        return Err(op_error(format!(
            "softmax needs a float tensor, got {dtype}"
        )));
    }
    Ok(())
}

impl Softmax {
    /// The input as `[outer, len, inner]`, normalising over `len`.
    fn split(&self, shape: &[usize]) -> Result<(usize, usize, usize)> {
        if shape.is_empty() {
            axis(self.axis, 1)?;
            return Ok((1, 1, 1));
        }
        let a = axis(self.axis, shape.len())?;
        let outer = shape[..a].iter().product();
        if self.flatten {
            Ok((outer, shape[a..].iter().product(), 1))
        } else {
            Ok((outer, shape[a], shape[a + 1..].iter().product()))
        }
    }
}

/// Softmax / LogSoftmax of one contiguous row.
#[inline(always)]
fn row<const LOG: bool, const FMA: bool>(x: &[f32], y: &mut [f32]) {
    let m = max_f32(x);
    for (o, &v) in y.iter_mut().zip(x) {
        *o = exp_neg::<FMA>(v - m);
    }
    let s = sum_f32(y);
    if LOG {
        let ls = s.ln();
        for (o, &v) in y.iter_mut().zip(x) {
            *o = (v - m) - ls;
        }
    } else {
        let inv = 1.0 / s;
        for o in y.iter_mut() {
            *o *= inv;
        }
    }
}

/// Softmax / LogSoftmax of a `[len, inner]` block along `len`, vectorised
/// over `inner`.
#[inline(always)]
fn block<const LOG: bool, const FMA: bool>(x: &[f32], y: &mut [f32], inner: usize) {
    let mut mx = x[..inner].to_vec();
    for r in x.chunks_exact(inner).skip(1) {
        for (m, &v) in mx.iter_mut().zip(r) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut sum = vec![0.0f32; inner];
    for (yr, xr) in y.chunks_exact_mut(inner).zip(x.chunks_exact(inner)) {
        for (((o, &v), &m), s) in yr.iter_mut().zip(xr).zip(&mx).zip(sum.iter_mut()) {
            *o = exp_neg::<FMA>(v - m);
            *s += *o;
        }
    }
    if LOG {
        sum.iter_mut().for_each(|s| *s = s.ln());
        for (yr, xr) in y.chunks_exact_mut(inner).zip(x.chunks_exact(inner)) {
            for (((o, &v), &m), &l) in yr.iter_mut().zip(xr).zip(&mx).zip(&sum) {
                *o = (v - m) - l;
            }
        }
    } else {
        sum.iter_mut().for_each(|s| *s = 1.0 / *s);
        for yr in y.chunks_exact_mut(inner) {
            for (o, &s) in yr.iter_mut().zip(&sum) {
                *o *= s;
            }
        }
    }
}

/// True when [`with_simd`] compiles for AVX2 and FMA on this CPU.
fn simd_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn compute<const LOG: bool>(x: &[f32], len: usize, inner: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    let bs = len * inner;
    if y.is_empty() {
        return y;
    }
    // Tasks of several rows, each compiled for AVX2 (and FMA) when available.
    let fma = simd_fma();
    let rows_per_task = (PAR_THRESHOLD / 4 / bs).max(1);
    let task = |(yc, xc): (&mut [f32], &[f32])| {
        with_simd(
            #[inline(always)]
            || {
                for (yb, xb) in yc.chunks_mut(bs).zip(xc.chunks(bs)) {
                    match (inner, fma) {
                        (1, true) => row::<LOG, true>(xb, yb),
                        (1, false) => row::<LOG, false>(xb, yb),
                        (_, true) => block::<LOG, true>(xb, yb, inner),
                        (_, false) => block::<LOG, false>(xb, yb, inner),
                    }
                }
            },
        )
    };
    let tb = bs * rows_per_task;
    if x.len() >= PAR_THRESHOLD && x.len() > tb {
        y.par_chunks_mut(tb).zip(x.par_chunks(tb)).for_each(task);
    } else {
        task((&mut y, x));
    }
    y
}

impl Op for Softmax {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        // A softmax across channels couples all of them: frozen.
        let r = cx.shape(0).len() as i64;
        let ax = if self.axis < 0 {
            self.axis + r
        } else {
            self.axis
        };
        match cx.axis(0) {
            Some(a) if a as i64 == ax || (self.flatten && a as i64 >= ax) => None,
            _ => Some(cx.passthrough()),
        }
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        check_float(x.dtype)?;
        self.split(&x.shape)?;
        Ok(vec![Fact::new(x.dtype, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        check_float(x.dtype())?;
        let (_, len, inner) = self.split(x.shape())?;
        let v = x.f32s()?;
        let y = if self.log {
            compute::<true>(v, len, inner)
        } else {
            compute::<false>(v, len, inner)
        };
        Ok(vec![Tensor::from_float(x.dtype(), x.shape().to_vec(), y)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute};

    fn run(op: &str, opset: i64, axis: Option<i64>, x: &Tensor) -> Result<Tensor> {
        let attrs = axis
            .map(|a| vec![Attribute::new("axis", AttrValue::Int(a))])
            .unwrap_or_default();
        let o = build(&Node::new("s", op, &["x"], &["y"], attrs), opset)?;
        let f = o.infer(&[Some(&Fact::new(x.dtype(), x.shape().to_vec()))])?;
        let y = o.eval(&[Some(x)])?.remove(0);
        assert_eq!(f[0].shape, y.shape());
        Ok(y)
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 + 1e-5 * y.abs(), "{a:?} vs {b:?}");
        }
    }

    /// Reference softmax in f64 along `axis` of a 3-D shape.
    fn reference(v: &[f32], shape: [usize; 3], ax: usize, log: bool) -> Vec<f32> {
        let st = [shape[1] * shape[2], shape[2], 1];
        let mut out = vec![0.0f32; v.len()];
        for i in 0..v.len() {
            let idx = [i / st[0], i / st[1] % shape[1], i % shape[2]];
            let mut vals = Vec::new();
            for k in 0..shape[ax] {
                let mut j = idx;
                j[ax] = k;
                vals.push(v[j[0] * st[0] + j[1] * st[1] + j[2]] as f64);
            }
            let m = vals.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = vals.iter().map(|&a| (a - m).exp()).sum();
            let x = v[i] as f64;
            out[i] = if log {
                (x - m - s.ln()) as f32
            } else {
                ((x - m).exp() / s) as f32
            };
        }
        out
    }

    #[test]
    fn exp_accuracy() {
        let mut worst = 0.0f64;
        let mut x = -103.0f32;
        while x < 88.7 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            if want > 1.2e-38 {
                worst = worst.max(((got - want) / want).abs());
            }
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.72).is_finite());
    }

    #[test]
    fn softmax_last_axis() {
        // numpy: softmax([1,2,3]) = [0.09003057, 0.24472847, 0.66524096]
        let x = Tensor::from_f32(vec![2, 3], vec![1., 2., 3., 1000., 1000., 1000.]);
        let y = run("Softmax", 13, None, &x).unwrap();
        close(
            y.f32s().unwrap(),
            &[
                0.09003057,
                0.24472847,
                0.66524096,
                1. / 3.,
                1. / 3.,
                1. / 3.,
            ],
        );
        let y = run("LogSoftmax", 13, None, &x).unwrap();
        close(
            y.f32s().unwrap(),
            &[
                -2.407606,
                -1.4076059,
                -0.40760595,
                -1.0986123,
                -1.0986123,
                -1.0986123,
            ],
        );
    }

    #[test]
    fn softmax_middle_axis_opset13_vs_flatten_opset11() {
        let v: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.0).collect();
        let x = Tensor::from_f32(vec![2, 3, 4], v.clone());
        for log in [false, true] {
            let op = if log { "LogSoftmax" } else { "Softmax" };
            // opset 13: along axis 1 only
            let y = run(op, 13, Some(1), &x).unwrap();
            close(y.f32s().unwrap(), &reference(&v, [2, 3, 4], 1, log));
            let y = run(op, 13, Some(-3), &x).unwrap();
            close(y.f32s().unwrap(), &reference(&v, [2, 3, 4], 0, log));
            // opset 11, default axis 1: rows of 12 values
            let y = run(op, 11, None, &x).unwrap();
            close(y.f32s().unwrap(), &reference(&v, [1, 2, 12], 2, log));
            // opset 11, axis 2 == opset 13 axis -1
            let y = run(op, 11, Some(2), &x).unwrap();
            close(y.f32s().unwrap(), &reference(&v, [2, 3, 4], 2, log));
            // opset 11, axis 0: one row of everything
            let y = run(op, 11, Some(0), &x).unwrap();
            close(y.f32s().unwrap(), &reference(&v, [1, 1, 24], 2, log));
        }
    }

    #[test]
    fn softmax_large_parallel() {
        // attention-like [8, 64, 197] along -1 and [4, 100, 300] along 1
        let v: Vec<f32> = (0..8 * 64 * 197)
            .map(|i| ((i * 31) % 97) as f32 * 0.1 - 4.0)
            .collect();
        let x = Tensor::from_f32(vec![8, 64, 197], v.clone());
        let y = run("Softmax", 13, None, &x).unwrap();
        close(y.f32s().unwrap(), &reference(&v, [8, 64, 197], 2, false));
        let v: Vec<f32> = (0..4 * 100 * 300)
            .map(|i| ((i * 17) % 89) as f32 * 0.2 - 8.0)
            .collect();
        let x = Tensor::from_f32(vec![4, 100, 300], v.clone());
        let y = run("LogSoftmax", 13, Some(1), &x).unwrap();
        close(y.f32s().unwrap(), &reference(&v, [4, 100, 300], 1, true));
    }

    #[test]
    fn softmax_edge_shapes() {
        let y = run("Softmax", 13, None, &Tensor::from_f32(vec![], vec![3.0])).unwrap();
        assert_eq!(y.f32s().unwrap(), &[1.0]);
        let y = run(
            "Softmax",
            13,
            Some(0),
            &Tensor::from_f32(vec![0, 3], vec![]),
        )
        .unwrap();
        assert_eq!(y.shape(), &[0, 3]);
        let y = run(
            "LogSoftmax",
            13,
            None,
            &Tensor::from_f32(vec![2, 1], vec![5.0, -7.0]),
        )
        .unwrap();
        assert_eq!(y.f32s().unwrap(), &[0.0, 0.0]);
        // -inf entries get probability 0
        let y = run(
            "Softmax",
            13,
            None,
            &Tensor::from_f32(vec![3], vec![f32::NEG_INFINITY, 0.0, 0.0]),
        )
        .unwrap();
        assert_eq!(y.f32s().unwrap(), &[0.0, 0.5, 0.5]);
    }

    #[test]
    fn softmax_errors() {
        let x = Tensor::from_f32(vec![2, 3], vec![0.0; 6]);
        assert!(run("Softmax", 13, Some(2), &x).is_err());
        assert!(run("Softmax", 13, Some(-3), &x).is_err());
        assert!(run("LogSoftmax", 11, Some(5), &x).is_err());
        assert!(run("Softmax", 13, None, &Tensor::from_i64(vec![2], vec![1, 2])).is_err());
        assert!(build(&Node::new("s", "Hardmax", &["x"], &["y"], vec![]), 13).is_err());
        let o = build(&Node::new("s", "Softmax", &["x"], &["y"], vec![]), 13).unwrap();
        assert!(o.eval(&[None]).is_err());
    }
}
