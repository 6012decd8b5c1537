//! Backward rules: for one node, the gradients of its inputs from the
//! gradients of its outputs, given the values the forward pass computed.
//! The forward values come from the same op implementations the executor
//! runs; BatchNormalization and Dropout have training-mode forwards of
//! their own (in [`super`]). Ops that only move values around (Slice,
//! Pad, Resize in nearest mode) are differentiated by running their own
//! forward on element indices, so the backward cannot disagree with the
//! forward about which element went where.

use crate::error::{Error, Result};
use crate::ir::{DType, Node, Tensor};
use crate::ops::matmul::{sgemm, MatRef};
use crate::ops::Op;

/// Op types with a backward rule here (BatchNormalization and Dropout are
/// handled by the trainer's training-mode forward).
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Conv",
    "ConvTranspose",
    "Div",
    "Dropout",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "PRelu",
    "Pad",
    "Pow",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
];

fn err(node: &Node, detail: impl Into<String>) -> Error {
    Error::op(&node.label(), &node.op_type, detail.into())
}

/// The node a backward rule differentiates.
pub(crate) struct Site<'a> {
    /// The graph node (attributes).
    pub node: &'a Node,
    /// Its built forward op (for the index-tracing rules).
    pub op: &'a dyn Op,
    /// The model's default opset (Softmax's axis semantics changed at 13).
    pub opset: i64,
    /// Which inputs need a gradient; rules skip the work for the others.
    pub need: &'a [bool],
}

/// Gradients of a node's inputs (`None`: not a float, not needed, or no
/// path). `ins`: forward inputs; `outs`: forward outputs; `gout`:
/// gradients of the outputs (`None`: the output does not reach the loss).
pub(crate) fn backward(
    site: &Site,
    ins: &[Option<&Tensor>],
    outs: &[&Tensor],
    gout: &[Option<&Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    let node = site.node;
    let need = |i: usize| site.need.get(i).copied().unwrap_or(false);
    let x = |i: usize| -> Result<&Tensor> {
        ins.get(i)
            .copied()
            .flatten()
            .ok_or_else(|| err(node, format!("input {i} is missing")))
    };
    if node.op_type == "Split" {
        // Several outputs: the input's gradient is their gradients side by
        // side (zeros for outputs that do not reach the loss).
        let a = x(0)?;
        let axis = crate::ops::common::axis(node.attr_int("axis", 0)?, a.rank())?;
        let sh = a.shape();
        let outer: usize = sh[..axis].iter().product();
        let inner: usize = sh[axis + 1..].iter().product();
        let mut dx = vec![0.0f32; a.len()];
        let mut start = 0;
        for (o, g) in outs.iter().zip(gout) {
            let n = o.shape()[axis];
            if let Some(g) = g {
                let gv = g.f32s()?;
                for r in 0..outer {
                    dx[(r * sh[axis] + start) * inner..][..n * inner]
                        .copy_from_slice(&gv[r * n * inner..][..n * inner]);
                }
            }
            start += n;
        }
        let mut g = vec![None; ins.len()];
        g[0] = Some(Tensor::from_f32(sh.to_vec(), dx));
        return Ok(g);
    }
    let Some(dy) = gout.first().copied().flatten() else {
        return Ok(vec![None; ins.len()]);
    };
    let like = |t: &Tensor, v: Vec<f32>| Tensor::from_f32(t.shape().to_vec(), v);
    let dyv = dy.f32s()?;
    let mut g: Vec<Option<Tensor>> = vec![None; ins.len()];
    match node.op_type.as_str() {
        "Identity" | "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" | "Dropout" => {
            let a = x(0)?;
            g[0] = Some(like(a, dyv.to_vec()));
        }
        "Relu" => {
            let a = x(0)?.f32s()?;
            g[0] = Some(like(
                x(0)?,
                zip_map(a, dyv, |v, d| if v > 0.0 { d } else { 0.0 }),
            ));
        }
        "LeakyRelu" => {
            let alpha = node.attr_float("alpha", 0.01)?;
            let a = x(0)?.f32s()?;
            g[0] = Some(like(
                x(0)?,
                zip_map(a, dyv, |v, d| if v > 0.0 { d } else { alpha * d }),
            ));
        }
        "Clip" => {
            let (lo, hi) = clip_bounds(node, ins)?;
            let a = x(0)?.f32s()?;
            g[0] = Some(like(
                x(0)?,
                // `&`, not `&&`: branch-free, so it vectorises.
                zip_map(a, dyv, |v, d| if (v > lo) & (v < hi) { d } else { 0.0 }),
            ));
        }
        "Sigmoid" => {
            let y = outs[0].f32s()?;
            g[0] = Some(like(x(0)?, zip_map(y, dyv, |y, d| d * y * (1.0 - y))));
        }
        "Tanh" => {
            let y = outs[0].f32s()?;
            g[0] = Some(like(x(0)?, zip_map(y, dyv, |y, d| d * (1.0 - y * y))));
        }
        "Softmax" | "LogSoftmax" => {
            let y = outs[0];
            let (outer, n, inner) = softmax_geometry(site, y.shape())?;
            let yv = y.f32s()?;
            let log = node.op_type == "LogSoftmax";
            let mut dx = vec![0.0f32; yv.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| (o * n + k) * inner + i;
                    if log {
                        // y = x − logsumexp(x): dx = dy − softmax · Σ dy.
                        let sum: f32 = (0..n).map(|k| dyv[at(k)]).sum();
                        for k in 0..n {
                            dx[at(k)] = dyv[at(k)] - yv[at(k)].exp() * sum;
                        }
                    } else {
                        let dot: f32 = (0..n).map(|k| yv[at(k)] * dyv[at(k)]).sum();
                        for k in 0..n {
                            dx[at(k)] = yv[at(k)] * (dyv[at(k)] - dot);
                        }
                    }
                }
            }
            g[0] = Some(like(x(0)?, dx));
        }
        "Add" | "Sub" => {
            let sign = if node.op_type == "Sub" { -1.0 } else { 1.0 };
            for (i, slot) in g.iter_mut().enumerate().take(2) {
                let a = x(i)?;
                if a.dtype() != DType::F32 {
                    continue;
                }
                let mut r = reduce_to(dyv, dy.shape(), a.shape());
                if i == 1 && sign < 0.0 {
                    r.iter_mut().for_each(|v| *v = -*v);
                }
                *slot = Some(like(a, r));
            }
        }
        "Mul" => {
            let (a, b) = (x(0)?, x(1)?);
            let (ab, bb) = (
                broadcast(a.f32s()?, a.shape(), dy.shape()),
                broadcast(b.f32s()?, b.shape(), dy.shape()),
            );
            let da: Vec<f32> = dyv.iter().zip(&bb).map(|(d, b)| d * b).collect();
            let db: Vec<f32> = dyv.iter().zip(&ab).map(|(d, a)| d * a).collect();
            g[0] = Some(like(a, reduce_to(&da, dy.shape(), a.shape())));
            g[1] = Some(like(b, reduce_to(&db, dy.shape(), b.shape())));
        }
        "Div" => {
            let (a, b) = (x(0)?, x(1)?);
            let (ab, bb) = (
                broadcast(a.f32s()?, a.shape(), dy.shape()),
                broadcast(b.f32s()?, b.shape(), dy.shape()),
            );
            let da: Vec<f32> = dyv.iter().zip(&bb).map(|(d, b)| d / b).collect();
            let db: Vec<f32> = dyv
                .iter()
                .zip(&ab)
                .zip(&bb)
                .map(|((d, a), b)| -d * a / (b * b))
                .collect();
            g[0] = Some(like(a, reduce_to(&da, dy.shape(), a.shape())));
            g[1] = Some(like(b, reduce_to(&db, dy.shape(), b.shape())));
        }
        "Concat" => {
            let rank = dy.rank() as i64;
            let mut axis = node.attr_int("axis", 0)?;
            if axis < 0 {
                axis += rank;
            }
            let axis = axis as usize;
            let sh = dy.shape();
            let outer: usize = sh[..axis].iter().product();
            let inner: usize = sh[axis + 1..].iter().product();
            let mut start = 0;
            for (i, slot) in g.iter_mut().enumerate() {
                let a = x(i)?;
                let n = a.shape()[axis];
                if a.dtype() == DType::F32 {
                    let mut v = Vec::with_capacity(a.len());
                    for o in 0..outer {
                        v.extend_from_slice(&dyv[(o * sh[axis] + start) * inner..][..n * inner]);
                    }
                    *slot = Some(like(a, v));
                }
                start += n;
            }
        }
        "Transpose" => {
            let a = x(0)?;
            let rank = a.rank();
            let perm: Vec<usize> = match node.attr_ints("perm")? {
                Some(p) => p.iter().map(|&v| v as usize).collect(),
                None => (0..rank).rev().collect(),
            };
            // dx[perm-inverse] : dx.transpose(inv) where out = x.transpose(perm).
            let mut inv = vec![0; rank];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            g[0] = Some(transpose(dyv, dy.shape(), &inv));
        }
        "GlobalAveragePool" => {
            let a = x(0)?;
            let sh = a.shape();
            let sp: usize = sh[2..].iter().product();
            let mut v = vec![0.0f32; a.len()];
            for (c, chunk) in v.chunks_mut(sp.max(1)).enumerate() {
                chunk.fill(dyv[c] / sp as f32);
            }
            g[0] = Some(like(a, v));
        }
        "MaxPool" | "AveragePool" => {
            g[0] = Some(pool_backward(node, x(0)?, outs[0], dy)?);
        }
        "Conv" => {
            let (a, w) = (x(0)?, x(1)?);
            let conv = crate::ops::conv::Conv {
                attrs: crate::ops::conv::ConvAttrs::from_node(node)?,
            };
            let geom = conv.geometry(a.shape(), w.shape())?;
            if need(0) {
                g[0] = Some(like(
                    a,
                    crate::ops::conv::conv_input_grad(dyv, w.f32s()?, &geom),
                ));
            }
            if need(1) {
                g[1] = Some(like(
                    w,
                    crate::ops::conv::conv_weight_grad(a.f32s()?, dyv, &geom),
                ));
            }
            if let Some(b) = ins.get(2).copied().flatten() {
                g[2] = Some(like(b, channel_sums(dyv, geom.c_out, geom.out_len())));
            }
        }
        "ConvTranspose" => {
            // The transpose of the conv `c` that maps this op's output
            // space to its input space: dX = conv_c(dY), dW = the weight
            // gradient of conv_c with dY as its input and X as its output
            // gradient.
            let (a, w) = (x(0)?, x(1)?);
            let ct = crate::ops::conv::ConvTranspose::from_node(node)?;
            let c = ct
                .forward_conv_geometry(a.shape(), w.shape())
                .map_err(|e| err(node, e.to_string()))?;
            if need(0) {
                g[0] = Some(like(
                    a,
                    crate::ops::conv::conv_forward(dyv, w.f32s()?, None, &c),
                ));
            }
            if need(1) {
                g[1] = Some(like(
                    w,
                    crate::ops::conv::conv_weight_grad(dyv, a.f32s()?, &c),
                ));
            }
            if let Some(b) = ins.get(2).copied().flatten() {
                g[2] = Some(like(b, channel_sums(dyv, c.c_in, c.in_len())));
            }
        }
        "Gemm" => {
            let (a, b) = (x(0)?, x(1)?);
            let alpha = node.attr_float("alpha", 1.0)?;
            let beta = node.attr_float("beta", 1.0)?;
            let ta = node.attr_int("transA", 0)? != 0;
            let tb = node.attr_int("transB", 0)? != 0;
            let (av, bv) = (a.f32s()?, b.f32s()?);
            let (m, n) = (dy.shape()[0], dy.shape()[1]);
            let k = if ta { a.shape()[0] } else { a.shape()[1] };
            // d op(A) [m x k] = α dY [m x n] · op(B)ᵀ [n x k]
            let opbt = if tb {
                MatRef::row_major(bv, k)
            } else {
                MatRef::transposed(bv, n)
            };
            if need(0) {
                let mut da = vec![0.0f32; m * k];
                sgemm(
                    m,
                    k,
                    n,
                    alpha,
                    MatRef::row_major(dyv, n),
                    opbt,
                    false,
                    &mut da,
                    k,
                    true,
                );
                g[0] = Some(like(a, if ta { transpose2(&da, m, k) } else { da }));
            }
            // d op(B) [k x n] = α op(A)ᵀ [k x m] · dY [m x n]
            let opat = if ta {
                MatRef::row_major(av, m)
            } else {
                MatRef::transposed(av, k)
            };
            if need(1) {
                let mut db = vec![0.0f32; k * n];
                sgemm(
                    k,
                    n,
                    m,
                    alpha,
                    opat,
                    MatRef::row_major(dyv, n),
                    false,
                    &mut db,
                    n,
                    true,
                );
                g[1] = Some(like(b, if tb { transpose2(&db, k, n) } else { db }));
            }
            if let Some(c) = ins.get(2).copied().flatten() {
                let mut r = reduce_to(dyv, dy.shape(), c.shape());
                r.iter_mut().for_each(|v| *v *= beta);
                g[2] = Some(like(c, r));
            }
        }
        "MatMul" => {
            let (a, b) = (x(0)?, x(1)?);
            let (ash, bsh) = (a.shape(), b.shape());
            if ash.len() < 2 || bsh.len() < 2 {
                return Err(err(node, "MatMul gradients need inputs of rank 2 or more"));
            }
            let k = ash[ash.len() - 1];
            let n = bsh[bsh.len() - 1];
            let (av, bv) = (a.f32s()?, b.f32s()?);
            if bsh.len() == 2 {
                // [R, K] x [K, N]: one product over all leading rows.
                let r = a.len() / k.max(1);
                if need(0) {
                    let mut da = vec![0.0f32; r * k];
                    sgemm(
                        r,
                        k,
                        n,
                        1.0,
                        MatRef::row_major(dyv, n),
                        MatRef::transposed(bv, n),
                        false,
                        &mut da,
                        k,
                        true,
                    );
                    g[0] = Some(like(a, da));
                }
                if need(1) {
                    let mut db = vec![0.0f32; k * n];
                    sgemm(
                        k,
                        n,
                        r,
                        1.0,
                        MatRef::transposed(av, k),
                        MatRef::row_major(dyv, n),
                        false,
                        &mut db,
                        n,
                        true,
                    );
                    g[1] = Some(like(b, db));
                }
            } else {
                // Batched, with numpy broadcasting of the batch axes: every
                // output matrix adds its share to the A and B matrices it
                // was made from.
                let m = ash[ash.len() - 2];
                let (abat, bbat) = (&ash[..ash.len() - 2], &bsh[..bsh.len() - 2]);
                let obat = crate::ops::common::broadcast_shapes(&[abat, bbat])
                    .map_err(|e| err(node, e.to_string()))?;
                let mut asrc = vec![0usize; obat.iter().product()];
                let mut bsrc = asrc.clone();
                for_broadcast(abat, &obat, |i, s| asrc[i] = s);
                for_broadcast(bbat, &obat, |i, s| bsrc[i] = s);
                let mut da = vec![0.0f32; if need(0) { a.len() } else { 0 }];
                let mut db = vec![0.0f32; if need(1) { b.len() } else { 0 }];
                for (i, (&ia, &ib)) in asrc.iter().zip(&bsrc).enumerate() {
                    let (ai, bi, di) = (
                        &av[ia * m * k..][..m * k],
                        &bv[ib * k * n..][..k * n],
                        &dyv[i * m * n..][..m * n],
                    );
                    if need(0) {
                        sgemm(
                            m,
                            k,
                            n,
                            1.0,
                            MatRef::row_major(di, n),
                            MatRef::transposed(bi, n),
                            true,
                            &mut da[ia * m * k..][..m * k],
                            k,
                            false,
                        );
                    }
                    if need(1) {
                        sgemm(
                            k,
                            n,
                            m,
                            1.0,
                            MatRef::transposed(ai, k),
                            MatRef::row_major(di, n),
                            true,
                            &mut db[ib * k * n..][..k * n],
                            n,
                            false,
                        );
                    }
                }
                if need(0) {
                    g[0] = Some(like(a, da));
                }
                if need(1) {
                    g[1] = Some(like(b, db));
                }
            }
        }
        "BatchNormalization" => {
            // Inference mode (frozen statistics): a per-channel affine map.
            let (a, scale, bias, mean, var) = (x(0)?, x(1)?, x(2)?, x(3)?, x(4)?);
            let eps = node.attr_float("epsilon", 1e-5)?;
            let c = scale.len();
            let sp = a.len() / (a.shape()[0] * c).max(1);
            let (sv, mv, vv, av) = (scale.f32s()?, mean.f32s()?, var.f32s()?, a.f32s()?);
            let inv: Vec<f32> = vv.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
            let mut dx = vec![0.0f32; a.len()];
            let (mut ds, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
            for (p, ((d, xs), o)) in dyv
                .chunks(sp.max(1))
                .zip(av.chunks(sp.max(1)))
                .zip(dx.chunks_mut(sp.max(1)))
                .enumerate()
            {
                let ch = p % c;
                for ((o, &d), &xv) in o.iter_mut().zip(d).zip(xs) {
                    *o = d * sv[ch] * inv[ch];
                    ds[ch] += d * (xv - mv[ch]) * inv[ch];
                    db[ch] += d;
                }
            }
            g[0] = Some(like(a, dx));
            g[1] = Some(like(scale, ds));
            g[2] = Some(like(bias, db));
        }
        "Erf" => {
            g[0] = Some(unary(x(0)?, outs[0], dyv, |x, _, d| {
                d * std::f32::consts::FRAC_2_SQRT_PI * (-x * x).exp()
            })?)
        }
        "Gelu" => {
            let tanh = node.attr_string("approximate", "none")? == "tanh";
            g[0] = Some(unary(x(0)?, outs[0], dyv, |x, _, d| {
                d * if tanh {
                    let c = (2.0 / std::f32::consts::PI).sqrt();
                    let t = (c * (x + 0.044715 * x * x * x)).tanh();
                    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
                } else {
                    let cdf =
                        0.5 * (1.0 + crate::ops::activation::erf_f32(x / std::f32::consts::SQRT_2));
                    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
                    cdf + x * pdf
                }
            })?);
        }
        "Sqrt" => g[0] = Some(unary(x(0)?, outs[0], dyv, |_, y, d| 0.5 * d / y)?),
        "Exp" => g[0] = Some(unary(x(0)?, outs[0], dyv, |_, y, d| d * y)?),
        "Log" => g[0] = Some(unary(x(0)?, outs[0], dyv, |x, _, d| d / x)?),
        "Neg" => g[0] = Some(unary(x(0)?, outs[0], dyv, |_, _, d| -d)?),
        "Abs" => {
            g[0] = Some(unary(x(0)?, outs[0], dyv, |x, _, d| {
                if x > 0.0 {
                    d
                } else if x < 0.0 {
                    -d
                } else {
                    0.0
                }
            })?)
        }
        "HardSigmoid" => {
            let alpha = node.attr_float("alpha", 0.2)?;
            let beta = node.attr_float("beta", 0.5)?;
            g[0] = Some(unary(x(0)?, outs[0], dyv, |x, _, d| {
                let v = alpha * x + beta;
                if v > 0.0 && v < 1.0 {
                    alpha * d
                } else {
                    0.0
                }
            })?);
        }
        "HardSwish" => {
            g[0] = Some(unary(x(0)?, outs[0], dyv, |x, _, d| {
                if x <= -3.0 {
                    0.0
                } else if x >= 3.0 {
                    d
                } else {
                    d * (2.0 * x + 3.0) / 6.0
                }
            })?)
        }
        "Cast" | "Expand" => {
            let a = x(0)?;
            if a.dtype() == DType::F32 {
                g[0] = Some(like(a, reduce_to(dyv, dy.shape(), a.shape())));
            }
        }
        "Pow" => {
            let (a, b) = (x(0)?, x(1)?);
            let (ab, bb) = (
                broadcast(a.f32s()?, a.shape(), dy.shape()),
                broadcast(b.f32s()?, b.shape(), dy.shape()),
            );
            let y = outs[0].f32s()?;
            if need(0) {
                let da: Vec<f32> = dyv
                    .iter()
                    .zip(ab.iter().zip(&bb))
                    .map(|(d, (a, b))| {
                        if *b == 0.0 {
                            0.0
                        } else {
                            d * b * a.powf(b - 1.0)
                        }
                    })
                    .collect();
                g[0] = Some(like(a, reduce_to(&da, dy.shape(), a.shape())));
            }
            if need(1) {
                let db: Vec<f32> = dyv
                    .iter()
                    .zip(ab.iter().zip(y))
                    .map(|(d, (a, y))| if *a > 0.0 { d * y * a.ln() } else { 0.0 })
                    .collect();
                g[1] = Some(like(b, reduce_to(&db, dy.shape(), b.shape())));
            }
        }
        "PRelu" => {
            let (a, sl) = (x(0)?, x(1)?);
            let av = a.f32s()?;
            let sb = broadcast(sl.f32s()?, sl.shape(), a.shape());
            let da: Vec<f32> = dyv
                .iter()
                .zip(av.iter().zip(&sb))
                .map(|(d, (x, s))| if *x > 0.0 { *d } else { d * s })
                .collect();
            let ds: Vec<f32> = dyv
                .iter()
                .zip(av)
                .map(|(d, x)| if *x > 0.0 { 0.0 } else { d * x })
                .collect();
            g[0] = Some(like(a, da));
            g[1] = Some(like(sl, reduce_to(&ds, a.shape(), sl.shape())));
        }
        "Max" | "Min" => {
            // Every input equal to the output shares its gradient (ties
            // split evenly, as PyTorch's maximum does for two).
            let y = outs[0].f32s()?;
            let mut hits = vec![0.0f32; y.len()];
            let bs: Vec<Vec<f32>> = (0..ins.len())
                .map(|i| Ok(broadcast(x(i)?.f32s()?, x(i)?.shape(), dy.shape())))
                .collect::<Result<_>>()?;
            for b in &bs {
                for ((h, v), y) in hits.iter_mut().zip(b).zip(y) {
                    *h += (v == y) as u8 as f32;
                }
            }
            for (i, b) in bs.iter().enumerate() {
                let gi: Vec<f32> = b
                    .iter()
                    .zip(y)
                    .zip(dyv.iter().zip(&hits))
                    .map(|((v, y), (d, h))| if v == y { d / h } else { 0.0 })
                    .collect();
                g[i] = Some(like(x(i)?, reduce_to(&gi, dy.shape(), x(i)?.shape())));
            }
        }
        "Where" => {
            let c = x(0)?;
            let cb = broadcast(c.bools()?, c.shape(), dy.shape());
            for (i, pick) in [(1, true), (2, false)] {
                let t = x(i)?;
                if need(i) && t.dtype() == DType::F32 {
                    let gi: Vec<f32> = dyv
                        .iter()
                        .zip(&cb)
                        .map(|(d, &c)| if c == pick { *d } else { 0.0 })
                        .collect();
                    g[i] = Some(like(t, reduce_to(&gi, dy.shape(), t.shape())));
                }
            }
        }
        "Gather" => {
            // Scatter-add into the gathered rows (embedding tables).
            let (data, idx) = (x(0)?, x(1)?);
            let axis = crate::ops::common::axis(node.attr_int("axis", 0)?, data.rank())?;
            let sh = data.shape();
            let outer: usize = sh[..axis].iter().product();
            let inner: usize = sh[axis + 1..].iter().product();
            let dim = sh[axis] as i64;
            let idx = idx.to_i64_vec();
            let mut dx = vec![0.0f32; data.len()];
            for o in 0..outer {
                for (j, &r) in idx.iter().enumerate() {
                    let r = if r < 0 { r + dim } else { r };
                    if !(0..dim).contains(&r) {
                        return Err(err(node, format!("index {r} is out of range")));
                    }
                    let src = &dyv[(o * idx.len() + j) * inner..][..inner];
                    let dst = &mut dx[(o * sh[axis] + r as usize) * inner..][..inner];
                    dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
                }
            }
            g[0] = Some(like(data, dx));
        }
        "Resize" if node.attr_string("mode", "nearest")? != "nearest" => {
            let r = crate::ops::resize::Resize::from_node(node, site.opset)
                .map_err(|e| err(node, e.to_string()))?;
            let dx = r
                .linear_backward(ins, dyv)
                .map_err(|e| err(node, e.to_string()))?;
            g[0] = Some(like(x(0)?, dx));
        }
        "Slice" | "Pad" | "Resize" => {
            g[0] = Some(like(x(0)?, traced_backward(site, ins, dy)?));
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" => {
            let a = x(0)?;
            let kept = reduced_shape(site, ins, a.shape())?;
            let db = broadcast(dyv, &kept, a.shape());
            let dx: Vec<f32> = match node.op_type.as_str() {
                "ReduceSum" => db,
                "ReduceMean" => {
                    let n = (a.len() / kept.iter().product::<usize>().max(1)).max(1) as f32;
                    db.into_iter().map(|d| d / n).collect()
                }
                _ => {
                    // Shared evenly by the elements equal to the maximum.
                    let yb = broadcast(outs[0].f32s()?, &kept, a.shape());
                    let hit: Vec<f32> = a
                        .f32s()?
                        .iter()
                        .zip(&yb)
                        .map(|(v, y)| (v == y) as u8 as f32)
                        .collect();
                    let cnt = broadcast(&reduce_to(&hit, a.shape(), &kept), &kept, a.shape());
                    db.iter()
                        .zip(hit.iter().zip(&cnt))
                        .map(|(d, (h, c))| d * h / c.max(1.0))
                        .collect()
                }
            };
            g[0] = Some(like(a, dx));
        }
        "GlobalMaxPool" => {
            let a = x(0)?;
            let sp: usize = a.shape()[2..].iter().product();
            let mut dx = vec![0.0f32; a.len()];
            for (c, (plane, d)) in a
                .f32s()?
                .chunks(sp.max(1))
                .zip(dx.chunks_mut(sp.max(1)))
                .enumerate()
            {
                // The first maximum, as the forward's comparison.
                if let Some(best) =
                    (0..plane.len()).reduce(|b, t| if plane[t] > plane[b] { t } else { b })
                {
                    d[best] = dyv[c];
                }
            }
            g[0] = Some(like(a, dx));
        }
        "LayerNormalization" => {
            let a = x(0)?;
            let first = crate::ops::common::axis(node.attr_int("axis", -1)?, a.rank())?;
            let eps = node.attr_float("epsilon", 1e-5)?;
            let sh = a.shape();
            let n: usize = sh[first..].iter().product();
            let scale = x(1)?;
            let sc = broadcast(scale.f32s()?, scale.shape(), &sh[first..]);
            let av = a.f32s()?;
            let mut xhat = vec![0.0f32; av.len()];
            let mut dx = vec![0.0f32; av.len()];
            for ((row, dr), (xr, dxr)) in av
                .chunks(n.max(1))
                .zip(dyv.chunks(n.max(1)))
                .zip(xhat.chunks_mut(n.max(1)).zip(dx.chunks_mut(n.max(1))))
            {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                let inv = 1.0 / (var + eps as f64).sqrt();
                for (h, &v) in xr.iter_mut().zip(row) {
                    *h = ((v as f64 - mean) * inv) as f32;
                }
                // dx = inv · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)), ĝ = dy · scale.
                let (mut s1, mut s2) = (0.0f64, 0.0f64);
                for ((&d, &s), &h) in dr.iter().zip(&sc).zip(xr.iter()) {
                    let gh = (d * s) as f64;
                    s1 += gh;
                    s2 += gh * h as f64;
                }
                let (m1, m2) = (s1 / n as f64, s2 / n as f64);
                for (((o, &d), &s), &h) in dxr.iter_mut().zip(dr).zip(&sc).zip(xr.iter()) {
                    *o = (inv * ((d * s) as f64 - m1 - h as f64 * m2)) as f32;
                }
            }
            g[0] = Some(like(a, dx));
            let dxs: Vec<f32> = dyv.iter().zip(&xhat).map(|(d, h)| d * h).collect();
            g[1] = Some(like(scale, reduce_to(&dxs, sh, scale.shape())));
            if let Some(b) = ins.get(2).copied().flatten() {
                g[2] = Some(like(b, reduce_to(dyv, sh, b.shape())));
            }
        }
        other => {
            return Err(err(
                node,
                format!(
                    "no gradient for {other} yet; training supports {}",
                    SUPPORTED.join(", ")
                ),
            ))
        }
    }
    // Only float inputs that need one carry gradients.
    for (i, (slot, t)) in g.iter_mut().zip(ins).enumerate() {
        if !need(i) || t.is_none_or(|t| t.dtype() != DType::F32) {
            *slot = None;
        }
    }
    Ok(g)
}

/// `[r x c]` row-major to `[c x r]`.
fn transpose2(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut o = vec![0.0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            o[j * r + i] = v[i * c + j];
        }
    }
    o
}

/// `v` of `shape` transposed by `perm` (output axis i = input axis perm[i]).
fn transpose(v: &[f32], shape: &[usize], perm: &[usize]) -> Tensor {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let st = crate::ir::strides(shape);
    let src_strides: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let mut out = Vec::with_capacity(v.len());
    let mut idx = vec![0usize; out_shape.len()];
    for _ in 0..v.len() {
        let off: usize = idx.iter().zip(&src_strides).map(|(i, s)| i * s).sum();
        out.push(v[off]);
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Tensor::from_f32(out_shape, out)
}

/// Strides of `shape` read as broadcast to `out` (numpy rules): 0 on
/// broadcast axes.
fn bstrides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = crate::ir::strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|a| {
            if a < lead || shape[a - lead] == 1 {
                0
            } else {
                st[a - lead]
            }
        })
        .collect()
}

/// Calls `f(out index, source index)` for every element of `out`.
fn for_broadcast(shape: &[usize], out: &[usize], mut f: impl FnMut(usize, usize)) {
    let bs = bstrides(shape, out);
    let total: usize = out.iter().product();
    let mut idx = vec![0usize; out.len()];
    let mut src = 0usize;
    for i in 0..total {
        f(i, src);
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            src += bs[a];
            if idx[a] < out[a] {
                break;
            }
            src -= bs[a] * out[a];
            idx[a] = 0;
        }
    }
}

/// `v` of `shape` broadcast to `out`.
pub(crate) fn broadcast<T: Copy + Default>(v: &[T], shape: &[usize], out: &[usize]) -> Vec<T> {
    if shape == out {
        return v.to_vec();
    }
    let mut o = vec![T::default(); out.iter().product()];
    for_broadcast(shape, out, |i, s| o[i] = v[s]);
    o
}

/// Sums `g` of shape `out` down to `shape` (the inverse of broadcasting).
pub(crate) fn reduce_to(g: &[f32], out: &[usize], shape: &[usize]) -> Vec<f32> {
    if shape == out {
        return g.to_vec();
    }
    let mut o = vec![0.0f32; shape.iter().product()];
    for_broadcast(shape, out, |i, s| o[s] += g[i]);
    o
}

/// MaxPool / AveragePool backward over 1-3 spatial axes: the window of
/// every output element is found again from the attributes and the
/// forward shapes.
fn pool_backward(node: &Node, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let sh = x.shape().to_vec();
    let ysh = y.shape();
    let nsp = sh.len() - 2;
    if !(1..=3).contains(&nsp) {
        return Err(err(node, "pool gradients need 1 to 3 spatial axes"));
    }
    let list = |name: &str| -> Result<Vec<usize>> {
        Ok(match node.attr_ints(name)? {
            Some(v) => v.iter().map(|&v| v as usize).collect(),
            None => vec![1; nsp],
        })
    };
    let kernel = list("kernel_shape")?;
    let strides = list("strides")?;
    let dil = list("dilations")?;
    let auto = node.attr_string("auto_pad", "NOTSET")?;
    let pads_attr: Vec<usize> = match node.attr_ints("pads")? {
        Some(p) => p.iter().map(|&v| v as usize).collect(),
        None => vec![0; 2 * nsp],
    };
    let begin: Vec<usize> = (0..nsp)
        .map(|a| match auto.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let (i, o) = (sh[2 + a], ysh[2 + a]);
                let total = ((o - 1) * strides[a] + (kernel[a] - 1) * dil[a] + 1).saturating_sub(i);
                if auto == "SAME_UPPER" {
                    total / 2
                } else {
                    total - total / 2
                }
            }
            _ => pads_attr[a],
        })
        .collect();
    let include_pad = node.attr_int("count_include_pad", 0)? != 0;
    let max = node.op_type == "MaxPool";
    // Pad to 3 axes.
    let pad3 = |v: &[usize], fill: usize| {
        let mut o = [fill; 3];
        o[3 - v.len()..].copy_from_slice(v);
        o
    };
    let (i3, o3) = (pad3(&sh[2..], 1), pad3(&ysh[2..], 1));
    let (k3, s3, d3, p3) = (
        pad3(&kernel, 1),
        pad3(&strides, 1),
        pad3(&dil, 1),
        pad3(&begin, 0),
    );
    let (xv, dyv) = (x.f32s()?, dy.f32s()?);
    let (pin, pout) = (i3.iter().product::<usize>(), o3.iter().product::<usize>());
    // The common case (2-D max pooling without padding or dilation) has
    // direct loops.
    let plain_2d_max =
        max && i3[0] == 1 && o3[0] == 1 && k3[0] == 1 && p3 == [0; 3] && d3 == [1; 3];
    // One plane per task; windows walked in place (no allocation).
    let pin = pin.max(1);
    let dx = crate::ops::common::zeroed_chunks(xv.len(), pin, true, |start, dxp| {
        let c = start / pin;
        let xp = &xv[c * pin..][..pin];
        let dyp = &dyv[c * pout..][..pout];
        if plain_2d_max {
            max_pool_2d_backward(xp, dyp, [i3[1], i3[2]], [o3[1], o3[2]], k3, s3, dxp);
            return;
        }
        // Calls `f` with the input index of every tap of output `oi`
        // (`None` for a tap in the padding).
        let window =
            |oi: usize, f: &mut dyn FnMut(Option<usize>)| {
                let (oz, oy, ox) = (oi / (o3[1] * o3[2]), (oi / o3[2]) % o3[1], oi % o3[2]);
                for kz in 0..k3[0] {
                    let z = (oz * s3[0] + kz * d3[0]) as isize - p3[0] as isize;
                    for ky in 0..k3[1] {
                        let yy = (oy * s3[1] + ky * d3[1]) as isize - p3[1] as isize;
                        for kx in 0..k3[2] {
                            let xx = (ox * s3[2] + kx * d3[2]) as isize - p3[2] as isize;
                            let inside = z >= 0
                                && yy >= 0
                                && xx >= 0
                                && (z as usize) < i3[0]
                                && (yy as usize) < i3[1]
                                && (xx as usize) < i3[2];
                            f(inside
                                .then(|| (z as usize * i3[1] + yy as usize) * i3[2] + xx as usize));
                        }
                    }
                }
            };
        for (oi, &d) in dyp.iter().enumerate() {
            let mut best: Option<usize> = None;
            let mut count = 0usize;
            window(oi, &mut |t| match t {
                Some(t) => {
                    count += 1;
                    // The first maximum takes the gradient (as the
                    // forward's first-wins comparison).
                    if best.is_none_or(|b| xp[t] > xp[b]) {
                        best = Some(t);
                    }
                }
                None => count += include_pad as usize,
            });
            if max {
                if let Some(b) = best {
                    dxp[b] += d;
                }
            } else if count > 0 {
                let share = d / count as f32;
                window(oi, &mut |t| {
                    if let Some(t) = t {
                        dxp[t] += share;
                    }
                });
            }
        }
    });
    Ok(Tensor::from_f32(sh, dx))
}

/// [`pool_backward`] of one plane for 2-D max pooling without padding or
/// dilation: each output's gradient goes to the first maximum of its
/// window (as the forward's first-wins comparison).
fn max_pool_2d_backward(
    xp: &[f32],
    dyp: &[f32],
    [ih, iw]: [usize; 2],
    [oh, ow]: [usize; 2],
    k3: [usize; 3],
    s3: [usize; 3],
    dxp: &mut [f32],
) {
    for oy in 0..oh {
        let y0 = oy * s3[1];
        let ky = k3[1].min(ih.saturating_sub(y0));
        for ox in 0..ow {
            let x0 = ox * s3[2];
            let kx = k3[2].min(iw.saturating_sub(x0));
            if ky == 0 || kx == 0 {
                continue;
            }
            let mut best = y0 * iw + x0;
            let mut top = xp[best];
            for r in y0..y0 + ky {
                let at = r * iw + x0;
                for (t, &v) in (at..).zip(&xp[at..at + kx]) {
                    // Which tap wins is data: a branch here mispredicts
                    // about half the time.
                    let take = v > top;
                    best = std::hint::select_unpredictable(take, t, best);
                    top = std::hint::select_unpredictable(take, v, top);
                }
            }
            dxp[best] += dyp[oy * ow + ox];
        }
    }
}

/// A Clip's `(min, max)`: its inputs 1 and 2 (opset 11 on) or attributes,
/// unbounded when absent.
pub(crate) fn clip_bounds(node: &Node, ins: &[Option<&Tensor>]) -> Result<(f32, f32)> {
    let bound = |i: usize, attr: &str, def: f32| -> Result<f32> {
        match ins.get(i).copied().flatten() {
            Some(t) => Ok(t.scalar_f64().unwrap_or(def as f64) as f32),
            None => node.attr_float(attr, def),
        }
    };
    Ok((
        bound(1, "min", f32::NEG_INFINITY)?,
        bound(2, "max", f32::INFINITY)?,
    ))
}

/// An element-wise rule `dx = f(x, y, dy)`.
fn unary(
    x: &Tensor,
    y: &Tensor,
    dy: &[f32],
    f: impl Fn(f32, f32, f32) -> f32 + Sync + Send,
) -> Result<Tensor> {
    use rayon::prelude::*;
    let (xv, yv) = (x.f32s()?, y.f32s()?);
    let v = xv
        .par_iter()
        .zip(yv)
        .zip(dy)
        .with_min_len(1 << 14)
        .map(|((&x, &y), &d)| f(x, y, d))
        .collect();
    Ok(Tensor::from_f32(x.shape().to_vec(), v))
}

/// `(outer, n, inner)` of a Softmax / LogSoftmax: one axis from opset 13;
/// before that, everything from `axis` on is one flattened axis (and the
/// default axis is 1).
fn softmax_geometry(site: &Site, shape: &[usize]) -> Result<(usize, usize, usize)> {
    let old = site.opset < 13;
    let a = site.node.attr_int("axis", if old { 1 } else { -1 })?;
    let a = crate::ops::common::axis(a, shape.len()).map_err(|e| err(site.node, e.to_string()))?;
    let outer = shape[..a].iter().product();
    Ok(if old {
        (outer, shape[a..].iter().product(), 1)
    } else {
        (outer, shape[a], shape[a + 1..].iter().product())
    })
}

/// The input shape with the reduced axes of a ReduceMean/Sum/Max set to 1
/// (the output shape as if `keepdims` were set).
fn reduced_shape(site: &Site, ins: &[Option<&Tensor>], shape: &[usize]) -> Result<Vec<usize>> {
    let node = site.node;
    // The axes became an input at opset 13 for ReduceSum, 18 for the others.
    let since = if node.op_type == "ReduceSum" { 13 } else { 18 };
    let axes: Vec<i64> = if site.opset >= since {
        ins.get(1)
            .copied()
            .flatten()
            .map(Tensor::to_i64_vec)
            .unwrap_or_default()
    } else {
        node.attr_ints("axes")?.unwrap_or_default()
    };
    if axes.is_empty() {
        return Ok(if node.attr_int("noop_with_empty_axes", 0)? != 0 {
            shape.to_vec()
        } else {
            vec![1; shape.len()]
        });
    }
    let mut kept = shape.to_vec();
    for a in axes {
        kept[crate::ops::common::axis(a, shape.len()).map_err(|e| err(node, e.to_string()))?] = 1;
    }
    Ok(kept)
}

/// Backward of an op that only moves elements (Slice, Pad, Resize in
/// nearest mode): its own forward runs on the element numbers 1..=n of
/// input 0 (0 marks padding), and each output gradient is added to the
/// element it came from.
fn traced_backward(site: &Site, ins: &[Option<&Tensor>], dy: &Tensor) -> Result<Vec<f32>> {
    let x = ins[0].ok_or_else(|| err(site.node, "input 0 is missing"))?;
    let iota = Tensor::from_i64(x.shape().to_vec(), (1..=x.len() as i64).collect());
    let zero = Tensor::from_i64(vec![], vec![0]);
    let mut args: Vec<Option<&Tensor>> = ins.to_vec();
    args[0] = Some(&iota);
    if site.node.op_type == "Pad" {
        if site.node.attr_float("value", 0.0)? != 0.0 {
            return Err(err(
                site.node,
                "no gradient for Pad with a non-zero value attribute yet",
            ));
        }
        if let Some(slot) = args.get_mut(2).filter(|a| a.is_some()) {
            *slot = Some(&zero);
        }
    }
    let out = site
        .op
        .eval(&args)
        .map_err(|e| err(site.node, e.to_string()))?;
    let src = out[0].i64s()?;
    let dyv = dy.f32s()?;
    if src.len() != dyv.len() {
        return Err(err(
            site.node,
            "traced output does not match the gradient's shape",
        ));
    }
    let mut dx = vec![0.0f32; x.len()];
    for (&s, &d) in src.iter().zip(dyv) {
        if s > 0 {
            dx[s as usize - 1] += d;
        }
    }
    Ok(dx)
}

/// `f(a[i], b[i])` for every element, in parallel for large tensors.
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    let n = a.len().min(b.len());
    crate::ops::pool::collect_chunks(n, 1 << 14, |at, len| {
        a[at..at + len]
            .iter()
            .zip(&b[at..at + len])
            .map(|(&x, &y)| f(x, y))
    })
}

/// Sum of `dy` (`[n, channels, plane]`) per channel: a bias gradient.
fn channel_sums(dy: &[f32], channels: usize, plane: usize) -> Vec<f32> {
    let images = dy.len() / (plane * channels).max(1);
    super::channel_sums(images, channels, plane, |at, len| {
        let p = &dy[at..at + len];
        super::lane_sums(p, p, p, |v, _, _| v, |_, _, _| 0.0)
    })
    .into_iter()
    .map(|(s, _)| s as f32)
    .collect()
}
