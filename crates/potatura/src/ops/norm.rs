//! Normalisation: BatchNormalization (inference mode) and
//! LayerNormalization (opset 17).

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap, Link, Port, Use, WeightAxis};
use super::common::{axis, broadcast_index_map, fact, input, opt, PAR_THRESHOLD};
use super::pool::{build_vec, with_simd};
use super::reduce::sum_f32;
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{DType, Node, Storage, Tensor};
use std::mem::MaybeUninit;

/// BatchNormalization in inference mode: per channel
/// `y = (x - mean) / sqrt(var + epsilon) * scale + bias`, computed as one
/// affine map per channel.
#[derive(Debug)]
pub struct BatchNorm {
    /// Added to the variance.
    pub epsilon: f32,
}

/// LayerNormalization: normalises over the axes from `axis` to the last.
#[derive(Debug)]
pub struct LayerNorm {
    /// First normalised axis (may be negative).
    pub axis: i64,
    /// Added to the variance.
    pub epsilon: f32,
    /// Type of the optional Mean and InvStdDev outputs (`stash_type`).
    pub stash_dtype: DType,
    /// How many outputs the node declares (1 to 3).
    pub n_outputs: usize,
}

/// Builds BatchNormalization and LayerNormalization.
pub fn build(node: &Node, opset: i64) -> Result<Box<dyn Op>> {
    let epsilon = node.attr_float("epsilon", 1e-5)?;
    match node.op_type.as_str() {
        "BatchNormalization" => {
            if node.attr_int("training_mode", 0)? != 0 {
                return Err(op_error(
                    "BatchNormalization with training_mode=1 is not supported",
                ));
            }
            if opset < 9 && node.attr_int("spatial", 1)? == 0 {
                return Err(op_error(
                    "BatchNormalization with spatial=0 is not supported",
                ));
            }
            if node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
                return Err(op_error(
                    "BatchNormalization's training outputs (running mean/var, saved mean/var) are not supported",
                ));
            }
            Ok(Box::new(BatchNorm { epsilon }))
        }
        "LayerNormalization" => {
            let stash = node.attr_int("stash_type", 1)?;
            let stash_dtype = DType::from_onnx(stash as i32);
            if stash_dtype.storage() != Storage::Float {
                return Err(op_error(format!("stash_type {stash} is not a float type")));
            }
            let n_outputs = node.outputs.len();
            if !(1..=3).contains(&n_outputs) {
                return Err(op_error(format!(
                    "LayerNormalization has 1 to 3 outputs, the node declares {n_outputs}"
                )));
            }
            Ok(Box::new(LayerNorm {
                axis: node.attr_int("axis", -1)?,
                epsilon,
                stash_dtype,
                n_outputs,
            }))
        }
        o => Err(op_error(format!("norm::build called for {o}"))),
    }
}

fn check_float(what: &str, dtype: DType) -> Result<()> {
    if dtype.storage() != Storage::Float {
        return Err(op_error(format!(
            "{what} must be a float tensor, got {dtype}"
        )));
    }
    Ok(())
}

impl BatchNorm {
    fn check(shapes: [&[usize]; 5]) -> Result<usize> {
        let x = shapes[0];
        if x.len() < 2 {
            return Err(op_error(format!(
                "X must have rank >= 2 (N, C, ...), got shape {x:?}"
            )));
        }
        let c = x[1];
        for (name, s) in ["scale", "B", "input_mean", "input_var"]
            .iter()
            .zip(&shapes[1..])
        {
            if s.iter().product::<usize>() != c
                || s.len() > 1 && s.iter().filter(|&&d| d != 1).count() > 1
            {
                return Err(op_error(format!("{name} must have shape [{c}], got {s:?}")));
            }
        }
        Ok(c)
    }

    /// Per-channel (multiplier, offset).
    fn affine(
        &self,
        scale: &[f32],
        bias: &[f32],
        mean: &[f32],
        var: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let a: Vec<f32> = scale
            .iter()
            .zip(var)
            .map(|(&s, &v)| s / (v + self.epsilon).sqrt())
            .collect();
        let b: Vec<f32> = bias
            .iter()
            .zip(mean)
            .zip(&a)
            .map(|((&b, &m), &a)| b - m * a)
            .collect();
        (a, b)
    }
}

impl Op for BatchNorm {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        if (1..5).any(|i| !cx.is_const(i)) || cx.outputs.len() > 1 {
            return None;
        }
        let mut m = cx.passthrough();
        if cx.axis(0) == Some(1) {
            m.weights = (1..5)
                .map(|input| WeightAxis {
                    port: Port::In(0),
                    input,
                    axis: 0,
                })
                .collect();
        } else if cx.axis(0).is_some() {
            // Channels on another axis than BatchNorm's: per-element there.
            return Some(m);
        }
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let f: Vec<&Fact> = (0..5).map(|i| fact(inputs, i)).collect::<Result<_>>()?;
        for (i, x) in f.iter().enumerate() {
            check_float(["X", "scale", "B", "input_mean", "input_var"][i], x.dtype)?;
        }
        Self::check([
            &f[0].shape,
            &f[1].shape,
            &f[2].shape,
            &f[3].shape,
            &f[4].shape,
        ])?;
        Ok(vec![Fact::new(f[0].dtype, f[0].shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let t: Vec<&Tensor> = (0..5).map(|i| input(inputs, i)).collect::<Result<_>>()?;
        let c = Self::check([
            t[0].shape(),
            t[1].shape(),
            t[2].shape(),
            t[3].shape(),
            t[4].shape(),
        ])?;
        let x = t[0].f32s()?;
        let (a, b) = self.affine(t[1].f32s()?, t[2].f32s()?, t[3].f32s()?, t[4].f32s()?);
        let plane: usize = t[0].shape()[2..].iter().product();
        // Chunks of whole planes (or of whole [C, plane] rows for small planes).
        let unit = if plane >= 16 { plane } else { c * plane };
        let par = x.len() >= PAR_THRESHOLD;
        let per_task = if par {
            (PAR_THRESHOLD / 4 / unit.max(1)).max(1)
        } else {
            x.len() / unit.max(1)
        };
        let fill = |start: usize, chunk: &mut [MaybeUninit<f32>]| {
            with_simd(
                #[inline(always)]
                || {
                    if plane >= 16 {
                        for (k, y) in chunk.chunks_mut(plane).enumerate() {
                            let ch = (start / plane + k) % c;
                            let (m, s) = (a[ch], b[ch]);
                            let xs = &x[start + k * plane..start + (k + 1) * plane];
                            for (o, &v) in y.iter_mut().zip(xs) {
                                o.write(v * m + s);
                            }
                        }
                    } else {
                        let xs = &x[start..start + chunk.len()];
                        for (i, (o, &v)) in chunk.iter_mut().zip(xs).enumerate() {
                            let ch = (i / plane) % c;
                            o.write(v * a[ch] + b[ch]);
                        }
                    }
                },
            )
        };
        let out = if x.is_empty() {
            Vec::new()
        } else {
            // SAFETY: chunks are whole units and every element is written.
            unsafe { build_vec(x.len(), per_task * unit, par, fill) }
        };
        Ok(vec![Tensor::from_float(
            t[0].dtype(),
            t[0].shape().to_vec(),
            out,
        )])
    }
}

impl LayerNorm {
    /// Normalised axis, rows and row length for an input shape.
    fn split(&self, shape: &[usize]) -> Result<(usize, usize, usize)> {
        let a = axis(self.axis, shape.len())?;
        if shape.is_empty() {
            return Err(op_error("X must have rank >= 1"));
        }
        Ok((a, shape[..a].iter().product(), shape[a..].iter().product()))
    }

    /// Shape of Mean / InvStdDev.
    fn stat_shape(shape: &[usize], a: usize) -> Vec<usize> {
        shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if i < a { d } else { 1 })
            .collect()
    }

    /// Checks that a Scale/B shape broadcasts to the normalised shape.
    fn check_param(name: &str, p: &[usize], norm_shape: &[usize]) -> Result<()> {
        let ok = p.len() <= norm_shape.len() && {
            let off = norm_shape.len() - p.len();
            p.iter()
                .enumerate()
                .all(|(i, &d)| d == 1 || d == norm_shape[off + i])
        } || {
            // Leading size-1 axes beyond the normalised rank are harmless.
            let extra = p.len().saturating_sub(norm_shape.len());
            p.len() > norm_shape.len()
                && p[..extra].iter().all(|&d| d == 1)
                && p[extra..]
                    .iter()
                    .zip(norm_shape)
                    .all(|(&d, &n)| d == 1 || d == n)
        };
        if !ok {
            return Err(op_error(format!(
                "{name} of shape {p:?} does not broadcast to the normalised shape {norm_shape:?}"
            )));
        }
        Ok(())
    }

    /// Scale/B values expanded to one value per normalised element.
    fn expand(t: &Tensor, norm_shape: &[usize], n: usize) -> Result<Vec<f32>> {
        let v = t.f32s()?;
        if v.len() == n
            && t.shape()
                .iter()
                .rev()
                .zip(norm_shape.iter().rev())
                .all(|(a, b)| a == b)
        {
            return Ok(v.to_vec());
        }
        let extra = t.rank().saturating_sub(norm_shape.len());
        let map = broadcast_index_map(&t.shape()[extra..], norm_shape);
        Ok(map.iter().map(|&i| v[i]).collect())
    }
}

/// Normalises one row; returns its (mean, 1 / standard deviation).
#[inline(always)]
fn layer_norm_row(
    xr: &[f32],
    yr: &mut [f32],
    scale: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
) -> (f32, f32) {
    let n = xr.len() as f32;
    let mu = sum_f32(xr) / n;
    let mut var = [0.0f32; 8];
    let chunks = xr.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for (acc, &v) in var.iter_mut().zip(c) {
            let d = v - mu;
            *acc += d * d;
        }
    }
    let var = var.iter().sum::<f32>() + rem.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>();
    let r = 1.0 / (var / n + eps).sqrt();
    match bias {
        Some(b) => {
            for (((o, &v), &s), &bb) in yr.iter_mut().zip(xr).zip(scale).zip(b) {
                *o = (v - mu) * r * s + bb;
            }
        }
        None => {
            for ((o, &v), &s) in yr.iter_mut().zip(xr).zip(scale) {
                *o = (v - mu) * r * s;
            }
        }
    }
    (mu, r)
}

impl Op for LayerNorm {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let r = cx.shape(0).len();
        let first = axis(self.axis, r).ok()?;
        let mut m = ChanMap::new(cx.inputs.len(), cx.outputs.len());
        let Some(a) = cx.axis(0) else {
            m.uses[0] = Some(Use::Shape);
            return Some(m);
        };
        if (1..cx.inputs.len()).any(|i| cx.fact(i).is_some() && !cx.is_const(i)) {
            return None;
        }
        if a >= first && first + 1 != r {
            // Normalised together with other axes: frozen.
            return None;
        }
        m.uses[0] = Some(Use::Axis(a));
        m.out_axes[0] = Some(a);
        m.links.push(Link::same(Port::In(0), Port::Out(0)));
        if a >= first {
            for i in 1..cx.inputs.len() {
                if let Some(f) = cx.fact(i) {
                    // Scale and bias have the normalised shape.
                    if let Some(ax) = (a + f.shape.len()).checked_sub(r) {
                        if f.shape[ax] == cx.shape(0)[a] {
                            m.weights.push(WeightAxis {
                                port: Port::In(0),
                                input: i,
                                axis: ax,
                            });
                        }
                    }
                }
            }
        }
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        check_float("X", x.dtype)?;
        let (a, _, _) = self.split(&x.shape)?;
        let s = fact(inputs, 1)?;
        check_float("Scale", s.dtype)?;
        Self::check_param("Scale", &s.shape, &x.shape[a..])?;
        if let Some(b) = opt(inputs, 2) {
            check_float("B", b.dtype)?;
            Self::check_param("B", &b.shape, &x.shape[a..])?;
        }
        let mut out = vec![Fact::new(x.dtype, x.shape.clone())];
        for _ in 1..self.n_outputs {
            out.push(Fact::new(self.stash_dtype, Self::stat_shape(&x.shape, a)));
        }
        Ok(out)
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let xt = input(inputs, 0)?;
        let shape = xt.shape();
        let (a, rows, n) = self.split(shape)?;
        let norm_shape = &shape[a..];
        let st = input(inputs, 1)?;
        Self::check_param("Scale", st.shape(), norm_shape)?;
        let scale = Self::expand(st, norm_shape, n)?;
        let bias = match opt(inputs, 2) {
            Some(b) => {
                Self::check_param("B", b.shape(), norm_shape)?;
                Some(Self::expand(b, norm_shape, n)?)
            }
            None => None,
        };
        let x = xt.f32s()?;
        let mut y = vec![0.0f32; x.len()];
        let eps = self.epsilon;
        let b = bias.as_deref();
        let f = |(yr, xr): (&mut [f32], &[f32])| {
            with_simd(
                #[inline(always)]
                || layer_norm_row(xr, yr, &scale, b, eps),
            )
        };
        let stats: Vec<(f32, f32)> = if n == 0 || rows == 0 {
            vec![(f32::NAN, f32::NAN); rows]
        } else if x.len() >= PAR_THRESHOLD && rows > 1 {
            let min = (PAR_THRESHOLD / 4 / n).max(1);
            y.par_chunks_mut(n)
                .zip(x.par_chunks(n))
                .with_min_len(min)
                .map(f)
                .collect()
        } else {
            y.chunks_mut(n).zip(x.chunks(n)).map(f).collect()
        };
        let (mean, inv): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
        let stat = Self::stat_shape(shape, a);
        let mut out = vec![Tensor::from_float(xt.dtype(), shape.to_vec(), y)];
        if self.n_outputs > 1 {
            out.push(Tensor::from_float(self.stash_dtype, stat.clone(), mean));
        }
        if self.n_outputs > 2 {
            out.push(Tensor::from_float(self.stash_dtype, stat, inv));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute};

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 2e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    fn node(op: &str, ins: &[&str], outs: &[&str], attrs: Vec<(&str, AttrValue)>) -> Node {
        Node::new(
            "n",
            op,
            ins,
            outs,
            attrs
                .into_iter()
                .map(|(k, v)| Attribute::new(k, v))
                .collect(),
        )
    }

    fn facts(ts: &[Option<&Tensor>]) -> Vec<Option<Fact>> {
        ts.iter()
            .map(|t| t.map(|t| Fact::new(t.dtype(), t.shape().to_vec())))
            .collect()
    }

    fn run(o: &dyn Op, ins: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let out = o.eval(ins)?;
        let f = facts(ins);
        let fr: Vec<Option<&Fact>> = f.iter().map(|f| f.as_ref()).collect();
        let inf = o.infer(&fr)?;
        assert_eq!(inf.len(), out.len());
        for (i, t) in inf.iter().zip(&out) {
            assert_eq!(i.shape, t.shape());
            assert_eq!(i.dtype, t.dtype());
        }
        Ok(out)
    }

    #[test]
    fn batchnorm_numpy() {
        // x: [2, 3, 2], numpy: (x - m) / sqrt(v + eps) * s + b
        let x = Tensor::from_f32(vec![2, 3, 2], (0..12).map(|i| i as f32 - 5.0).collect());
        let s = Tensor::from_f32(vec![3], vec![1.0, 2.0, -0.5]);
        let b = Tensor::from_f32(vec![3], vec![0.0, 1.0, 3.0]);
        let m = Tensor::from_f32(vec![3], vec![0.5, -1.0, 2.0]);
        let v = Tensor::from_f32(vec![3], vec![1.0, 4.0, 0.25]);
        let o = build(
            &node(
                "BatchNormalization",
                &["x", "s", "b", "m", "v"],
                &["y"],
                vec![("epsilon", AttrValue::Float(0.0))],
            ),
            15,
        )
        .unwrap();
        let y = run(
            o.as_ref(),
            &[Some(&x), Some(&s), Some(&b), Some(&m), Some(&v)],
        )
        .unwrap()
        .remove(0);
        let xs = x.f32s().unwrap();
        let want: Vec<f32> = (0..12)
            .map(|i| {
                let c = (i / 2) % 3;
                let (sv, bv, mv, vv) = (
                    s.f32s().unwrap()[c],
                    b.f32s().unwrap()[c],
                    m.f32s().unwrap()[c],
                    v.f32s().unwrap()[c],
                );
                (xs[i] - mv) / vv.sqrt() * sv + bv
            })
            .collect();
        close(y.f32s().unwrap(), &want);
        // default epsilon 1e-5 changes the result slightly
        let o = build(
            &node(
                "BatchNormalization",
                &["x", "s", "b", "m", "v"],
                &["y"],
                vec![],
            ),
            9,
        )
        .unwrap();
        let y = run(
            o.as_ref(),
            &[Some(&x), Some(&s), Some(&b), Some(&m), Some(&v)],
        )
        .unwrap()
        .remove(0);
        let w0 = (xs[0] - 0.5) / (1.0f32 + 1e-5).sqrt();
        close(&y.f32s().unwrap()[..1], &[w0]);
    }

    #[test]
    fn batchnorm_2d_and_large() {
        // [N, C] input (plane 1)
        let x = Tensor::from_f32(vec![2, 2], vec![1., 2., 3., 4.]);
        let s = Tensor::from_f32(vec![2], vec![2., 3.]);
        let b = Tensor::from_f32(vec![2], vec![1., -1.]);
        let m = Tensor::from_f32(vec![2], vec![1., 1.]);
        let v = Tensor::from_f32(vec![2], vec![1., 1.]);
        let o = build(
            &node(
                "BatchNormalization",
                &["x", "s", "b", "m", "v"],
                &["y"],
                vec![("epsilon", AttrValue::Float(0.0))],
            ),
            15,
        )
        .unwrap();
        let y = run(
            o.as_ref(),
            &[Some(&x), Some(&s), Some(&b), Some(&m), Some(&v)],
        )
        .unwrap()
        .remove(0);
        close(y.f32s().unwrap(), &[1., 2., 5., 8.]);
        // large parallel [2, 16, 32, 32]
        let n = 2 * 16 * 1024;
        let x = Tensor::from_f32(
            vec![2, 16, 32, 32],
            (0..n).map(|i| (i % 97) as f32 * 0.1).collect(),
        );
        let p = |f: fn(usize) -> f32| Tensor::from_f32(vec![16], (0..16).map(f).collect());
        let (s, b, m, v) = (
            p(|c| 1.0 + c as f32),
            p(|c| c as f32 * 0.5),
            p(|c| c as f32 * 0.1),
            p(|c| 0.5 + c as f32),
        );
        let y = run(
            o.as_ref(),
            &[Some(&x), Some(&s), Some(&b), Some(&m), Some(&v)],
        )
        .unwrap()
        .remove(0);
        let (xs, ys) = (x.f32s().unwrap(), y.f32s().unwrap());
        for i in (0..n).step_by(1237) {
            let c = (i / 1024) % 16;
            let want = (xs[i] - c as f32 * 0.1) / (0.5 + c as f32).sqrt() * (1.0 + c as f32)
                + c as f32 * 0.5;
            assert!((ys[i] - want).abs() < 1e-4 * (1.0 + want.abs()));
        }
    }

    #[test]
    fn batchnorm_errors() {
        let mk = |attrs, outs: &[&str], opset| {
            build(
                &node(
                    "BatchNormalization",
                    &["x", "s", "b", "m", "v"],
                    outs,
                    attrs,
                ),
                opset,
            )
        };
        assert!(mk(vec![("training_mode", AttrValue::Int(1))], &["y"], 15).is_err());
        assert!(mk(vec![("spatial", AttrValue::Int(0))], &["y"], 7).is_err());
        assert!(mk(vec![], &["y", "rm", "rv"], 15).is_err());
        assert!(mk(vec![], &["y", "", ""], 15).is_ok());
        let o = mk(vec![], &["y"], 15).unwrap();
        let x = Tensor::from_f32(vec![1, 3, 2], vec![0.0; 6]);
        let p2 = Tensor::from_f32(vec![2], vec![1.0; 2]);
        let p3 = Tensor::from_f32(vec![3], vec![1.0; 3]);
        assert!(o
            .eval(&[Some(&x), Some(&p2), Some(&p3), Some(&p3), Some(&p3)])
            .is_err());
        assert!(o
            .eval(&[Some(&x), Some(&p3), Some(&p3), Some(&p3), None])
            .is_err());
        assert!(o
            .eval(&[Some(&p3), Some(&p3), Some(&p3), Some(&p3), Some(&p3)])
            .is_err());
        let xi = Tensor::from_i64(vec![1, 3], vec![1, 2, 3]);
        assert!(o
            .eval(&[Some(&xi), Some(&p3), Some(&p3), Some(&p3), Some(&p3)])
            .is_err());
    }

    #[test]
    fn layernorm_numpy() {
        // x [2, 4]; numpy: mu = x.mean(-1); var = x.var(-1); (x-mu)/sqrt(var+eps)*s + b
        let x = Tensor::from_f32(vec![2, 4], vec![1., 2., 3., 4., -1., 0., 5., 10.]);
        let s = Tensor::from_f32(vec![4], vec![1., 0.5, 2., -1.]);
        let b = Tensor::from_f32(vec![4], vec![0., 1., 0., 1.]);
        let o = build(
            &node(
                "LayerNormalization",
                &["x", "s", "b"],
                &["y", "m", "i"],
                vec![],
            ),
            17,
        )
        .unwrap();
        let out = run(o.as_ref(), &[Some(&x), Some(&s), Some(&b)]).unwrap();
        assert_eq!(out.len(), 3);
        // onnxruntime 1.31 reference values
        close(
            out[0].f32s().unwrap(),
            &[
                -1.3416355,
                0.77639407,
                0.89442366,
                -0.34163547,
                -1.025645,
                0.60113806,
                0.6837633,
                -0.48148715,
            ],
        );
        assert_eq!(out[1].shape(), &[2, 1]);
        close(out[1].f32s().unwrap(), &[2.5, 3.5]);
        close(out[2].f32s().unwrap(), &[0.89442366, 0.2279211]);
        assert_eq!(out[1].dtype(), DType::F32);
    }

    #[test]
    fn layernorm_axis_and_no_bias() {
        // x [2, 2, 3], axis=1 normalises the last 6 values of each batch row
        let v: Vec<f32> = (0..12).map(|i| (i * i % 7) as f32).collect();
        let x = Tensor::from_f32(vec![2, 2, 3], v.clone());
        let s = Tensor::from_f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let o = build(
            &node(
                "LayerNormalization",
                &["x", "s"],
                &["y"],
                vec![
                    ("axis", AttrValue::Int(-2)),
                    ("epsilon", AttrValue::Float(1e-3)),
                ],
            ),
            17,
        )
        .unwrap();
        let out = run(o.as_ref(), &[Some(&x), Some(&s)]).unwrap();
        assert_eq!(out.len(), 1);
        let mut want = Vec::new();
        for r in 0..2 {
            let row = &v[r * 6..(r + 1) * 6];
            let mu = row.iter().sum::<f32>() / 6.0;
            let var = row.iter().map(|&a| (a - mu) * (a - mu)).sum::<f32>() / 6.0;
            for (j, &a) in row.iter().enumerate() {
                want.push((a - mu) / (var + 1e-3).sqrt() * (j + 1) as f32);
            }
        }
        close(out[0].f32s().unwrap(), &want);
        // scale broadcast: [3] over a [2, 3] normalised shape, and a [1, 3] bias
        let s3 = Tensor::from_f32(vec![3], vec![1., 2., 3.]);
        let b = Tensor::from_f32(vec![1, 1, 3], vec![0.5, 0.5, 0.5]);
        let o = build(
            &node(
                "LayerNormalization",
                &["x", "s", "b"],
                &["y", "m"],
                vec![("axis", AttrValue::Int(1))],
            ),
            17,
        )
        .unwrap();
        let out = run(o.as_ref(), &[Some(&x), Some(&s3), Some(&b)]).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].shape(), &[2, 1, 1]);
        let y = out[0].f32s().unwrap();
        let r = 1.0
            / ((v[..6]
                .iter()
                .map(|&a| (a - out[1].f32s().unwrap()[0]).powi(2))
                .sum::<f32>()
                / 6.0)
                + 1e-5)
                .sqrt();
        let want4 = (v[4] - out[1].f32s().unwrap()[0]) * r * 2.0 + 0.5;
        assert!((y[4] - want4).abs() < 1e-5);
    }

    #[test]
    fn layernorm_large_rows() {
        let (rows, n) = (64, 768);
        let v: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 31 % 211) as f32 - 100.0) * 0.01)
            .collect();
        let x = Tensor::from_f32(vec![1, rows, n], v.clone());
        let s = Tensor::from_f32(vec![n], vec![1.0; n]);
        let o = build(
            &node("LayerNormalization", &["x", "s"], &["y", "", "inv"], vec![]),
            17,
        )
        .unwrap();
        let out = run(o.as_ref(), &[Some(&x), Some(&s)]).unwrap();
        assert_eq!(out.len(), 3);
        let y = out[0].f32s().unwrap();
        for r in [0, 17, 63] {
            let row = &v[r * n..(r + 1) * n];
            let mu = row.iter().map(|&a| a as f64).sum::<f64>() / n as f64;
            let var = row.iter().map(|&a| (a as f64 - mu).powi(2)).sum::<f64>() / n as f64;
            let inv = 1.0 / (var + 1e-5).sqrt();
            assert!((out[2].f32s().unwrap()[r] as f64 - inv).abs() < 1e-5 * inv);
            for j in [0, 100, 767] {
                let want = (row[j] as f64 - mu) * inv;
                assert!((y[r * n + j] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
            }
        }
    }

    #[test]
    fn layernorm_errors() {
        assert!(build(
            &node(
                "LayerNormalization",
                &["x", "s"],
                &["y", "m", "i", "z"],
                vec![]
            ),
            17
        )
        .is_err());
        assert!(build(
            &node(
                "LayerNormalization",
                &["x", "s"],
                &["y"],
                vec![("stash_type", AttrValue::Int(7))]
            ),
            17
        )
        .is_err());
        let o = build(
            &node(
                "LayerNormalization",
                &["x", "s"],
                &["y"],
                vec![("axis", AttrValue::Int(2))],
            ),
            17,
        )
        .unwrap();
        let x = Tensor::from_f32(vec![2, 3], vec![0.0; 6]);
        let s = Tensor::from_f32(vec![3], vec![1.0; 3]);
        assert!(o.eval(&[Some(&x), Some(&s)]).is_err());
        let o = build(&node("LayerNormalization", &["x", "s"], &["y"], vec![]), 17).unwrap();
        let s2 = Tensor::from_f32(vec![2], vec![1.0; 2]);
        assert!(o.eval(&[Some(&x), Some(&s2)]).is_err());
        let s23 = Tensor::from_f32(vec![2, 3], vec![1.0; 6]);
        assert!(o.eval(&[Some(&x), Some(&s23)]).is_err());
        assert!(o.eval(&[Some(&x), None]).is_err());
        let xi = Tensor::from_i64(vec![3], vec![1, 2, 3]);
        assert!(o
            .infer(&[
                Some(&Fact::new(DType::I64, vec![3])),
                Some(&Fact::new(DType::F32, vec![3]))
            ])
            .is_err());
        assert!(o.eval(&[Some(&xi), Some(&s)]).is_err());
        assert!(build(&node("GroupNormalization", &["x"], &["y"], vec![]), 18).is_err());
    }
}
