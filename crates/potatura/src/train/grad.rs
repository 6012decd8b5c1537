//! Backward rules: for one node, the gradients of its inputs from the
//! gradients of its outputs, given the values the forward pass computed.
//! The forward values come from the same op implementations the executor
//! runs; BatchNormalization and Dropout have training-mode forwards of
//! their own (in [`super`]).

use crate::error::{Error, Result};
use crate::ir::{DType, Node, Tensor};
use crate::ops::matmul::{sgemm, MatRef};

/// Op types with a backward rule here (BatchNormalization and Dropout are
/// handled by the trainer's training-mode forward).
pub const SUPPORTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

fn err(node: &Node, detail: impl Into<String>) -> Error {
    Error::op(&node.label(), &node.op_type, detail.into())
}

/// Gradients of a node's inputs (`None`: not a float, or no path).
/// `ins`: forward inputs; `outs`: forward outputs; `gout`: gradients of
/// the outputs (`None`: the output does not reach the loss).
pub(crate) fn backward(
    node: &Node,
    ins: &[Option<&Tensor>],
    outs: &[&Tensor],
    gout: &[Option<&Tensor>],
) -> Result<Vec<Option<Tensor>>> {
    let Some(dy) = gout.first().copied().flatten() else {
        return Ok(vec![None; ins.len()]);
    };
    let x = |i: usize| -> Result<&Tensor> {
        ins.get(i)
            .copied()
            .flatten()
            .ok_or_else(|| err(node, format!("input {i} is missing")))
    };
    let f = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.f32s()?.to_vec()) };
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
                a.iter()
                    .zip(dyv)
                    .map(|(&v, &d)| if v > 0.0 { d } else { 0.0 })
                    .collect(),
            ));
        }
        "LeakyRelu" => {
            let alpha = node.attr_float("alpha", 0.01)?;
            let a = x(0)?.f32s()?;
            g[0] = Some(like(
                x(0)?,
                a.iter()
                    .zip(dyv)
                    .map(|(&v, &d)| if v > 0.0 { d } else { alpha * d })
                    .collect(),
            ));
        }
        "Clip" => {
            let bound = |i: usize, attr: &str, def: f32| -> Result<f32> {
                match ins.get(i).copied().flatten() {
                    Some(t) => Ok(t.scalar_f64().unwrap_or(def as f64) as f32),
                    None => node.attr_float(attr, def),
                }
            };
            let lo = bound(1, "min", f32::NEG_INFINITY)?;
            let hi = bound(2, "max", f32::INFINITY)?;
            let a = x(0)?.f32s()?;
            g[0] = Some(like(
                x(0)?,
                a.iter()
                    .zip(dyv)
                    .map(|(&v, &d)| if v > lo && v < hi { d } else { 0.0 })
                    .collect(),
            ));
        }
        "Sigmoid" => {
            let y = outs[0].f32s()?;
            g[0] = Some(like(
                x(0)?,
                y.iter()
                    .zip(dyv)
                    .map(|(&y, &d)| d * y * (1.0 - y))
                    .collect(),
            ));
        }
        "Tanh" => {
            let y = outs[0].f32s()?;
            g[0] = Some(like(
                x(0)?,
                y.iter()
                    .zip(dyv)
                    .map(|(&y, &d)| d * (1.0 - y * y))
                    .collect(),
            ));
        }
        "Softmax" => {
            let y = outs[0];
            let rank = y.rank() as i64;
            let mut axis = node.attr_int("axis", -1)?;
            if axis < 0 {
                axis += rank;
            }
            let axis = axis as usize;
            let sh = y.shape();
            let (outer, n, inner) = (
                sh[..axis].iter().product::<usize>(),
                sh[axis],
                sh[axis + 1..].iter().product::<usize>(),
            );
            let yv = y.f32s()?;
            let mut dx = vec![0.0f32; yv.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| (o * n + k) * inner + i;
                    let dot: f32 = (0..n).map(|k| yv[at(k)] * dyv[at(k)]).sum();
                    for k in 0..n {
                        dx[at(k)] = yv[at(k)] * (dyv[at(k)] - dot);
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
            g[0] = Some(like(
                a,
                crate::ops::conv::conv_input_grad(dyv, w.f32s()?, &geom),
            ));
            g[1] = Some(like(
                w,
                crate::ops::conv::conv_weight_grad(a.f32s()?, dyv, &geom),
            ));
            if let Some(b) = ins.get(2).copied().flatten() {
                let p = geom.out_len();
                let mut db = vec![0.0f32; geom.c_out];
                for (i, plane) in dyv.chunks(p.max(1)).enumerate() {
                    db[i % geom.c_out] += plane.iter().sum::<f32>();
                }
                g[2] = Some(like(b, db));
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
            // d op(B) [k x n] = α op(A)ᵀ [k x m] · dY [m x n]
            let opat = if ta {
                MatRef::row_major(av, m)
            } else {
                MatRef::transposed(av, k)
            };
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
            let (av, bv) = (f(a)?, f(b)?);
            if bsh.len() == 2 {
                // [R, K] x [K, N]: one product over all leading rows.
                let r = a.len() / k.max(1);
                let mut da = vec![0.0f32; r * k];
                sgemm(
                    r,
                    k,
                    n,
                    1.0,
                    MatRef::row_major(dyv, n),
                    MatRef::transposed(&bv, n),
                    false,
                    &mut da,
                    k,
                    true,
                );
                let mut db = vec![0.0f32; k * n];
                sgemm(
                    k,
                    n,
                    r,
                    1.0,
                    MatRef::transposed(&av, k),
                    MatRef::row_major(dyv, n),
                    false,
                    &mut db,
                    n,
                    true,
                );
                g[0] = Some(like(a, da));
                g[1] = Some(like(b, db));
            } else if ash[..ash.len() - 2] == bsh[..bsh.len() - 2] {
                let m = ash[ash.len() - 2];
                let batches: usize = ash[..ash.len() - 2].iter().product();
                let mut da = vec![0.0f32; a.len()];
                let mut db = vec![0.0f32; b.len()];
                for i in 0..batches {
                    let (ai, bi, di) = (
                        &av[i * m * k..][..m * k],
                        &bv[i * k * n..][..k * n],
                        &dyv[i * m * n..][..m * n],
                    );
                    sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        MatRef::row_major(di, n),
                        MatRef::transposed(bi, n),
                        false,
                        &mut da[i * m * k..][..m * k],
                        k,
                        false,
                    );
                    sgemm(
                        k,
                        n,
                        m,
                        1.0,
                        MatRef::transposed(ai, k),
                        MatRef::row_major(di, n),
                        false,
                        &mut db[i * k * n..][..k * n],
                        n,
                        false,
                    );
                }
                g[0] = Some(like(a, da));
                g[1] = Some(like(b, db));
            } else {
                return Err(err(
                    node,
                    format!(
                        "MatMul of {ash:?} by {bsh:?} (broadcast batch dims) has no gradient yet"
                    ),
                ));
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
    // Only float inputs carry gradients.
    for (slot, t) in g.iter_mut().zip(ins) {
        if t.is_none_or(|t| t.dtype() != DType::F32) {
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
pub(crate) fn broadcast(v: &[f32], shape: &[usize], out: &[usize]) -> Vec<f32> {
    if shape == out {
        return v.to_vec();
    }
    let mut o = vec![0.0f32; out.iter().product()];
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
    let planes = sh[0] * sh[1];
    let mut dx = vec![0.0f32; xv.len()];
    for c in 0..planes {
        let xp = &xv[c * pin..][..pin];
        let dxp = &mut dx[c * pin..][..pin];
        for oi in 0..pout {
            let (oz, oy, ox) = (oi / (o3[1] * o3[2]), (oi / o3[2]) % o3[1], oi % o3[2]);
            let mut taps: Vec<usize> = Vec::with_capacity(k3.iter().product());
            let mut window = 0usize;
            for kz in 0..k3[0] {
                for ky in 0..k3[1] {
                    for kx in 0..k3[2] {
                        let z = (oz * s3[0] + kz * d3[0]) as isize - p3[0] as isize;
                        let yy = (oy * s3[1] + ky * d3[1]) as isize - p3[1] as isize;
                        let xx = (ox * s3[2] + kx * d3[2]) as isize - p3[2] as isize;
                        let inside = z >= 0
                            && yy >= 0
                            && xx >= 0
                            && (z as usize) < i3[0]
                            && (yy as usize) < i3[1]
                            && (xx as usize) < i3[2];
                        if inside {
                            taps.push((z as usize * i3[1] + yy as usize) * i3[2] + xx as usize);
                            window += 1;
                        } else if include_pad {
                            window += 1;
                        }
                    }
                }
            }
            let d = dyv[c * pout + oi];
            if max {
                // The first maximum takes the gradient (as the forward's
                // first-wins comparison).
                if let Some(&best) = taps
                    .iter()
                    .reduce(|b, t| if xp[*t] > xp[*b] { t } else { b })
                {
                    dxp[best] += d;
                }
            } else if window > 0 {
                for t in taps {
                    dxp[t] += d / window as f32;
                }
            }
        }
    }
    Ok(Tensor::from_f32(sh, dx))
}
