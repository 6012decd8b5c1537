//! Evaluating a model on a data set: top-1 accuracy against labels, and
//! fidelity against a reference model (top-1 agreement, KL, relative error).

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::exec::Executor;
use crate::ir::{Data, Tensor};

/// Splits a batch tensor `[N, ...]` into batches of at most `size` along dim 0.
pub fn batches(t: &Tensor, size: usize) -> Result<Vec<Tensor>> {
    let n = *t
        .shape()
        .first()
        .ok_or_else(|| Error::Usage("data must have a batch dimension".into()))?;
    let size = size.max(1);
    let row: usize = t.shape()[1..].iter().product();
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + size).min(n);
        let mut shape = t.shape().to_vec();
        shape[0] = end - start;
        let data = match t.data() {
            Data::F32(v) => Data::F32(v[start * row..end * row].to_vec()),
            Data::I64(v) => Data::I64(v[start * row..end * row].to_vec()),
            Data::Bool(v) => Data::Bool(v[start * row..end * row].to_vec()),
        };
        out.push(Tensor::new(t.dtype(), shape, data)?);
        start = end;
    }
    Ok(out)
}

/// Runs `exec` over `data` (one input, batched along dim 0) and returns the
/// first output of each sample, as rows of f32 (batches run in parallel).
pub fn predict(exec: &Executor, data: &Tensor, batch: usize) -> Result<Vec<Vec<f32>>> {
    let spec = exec
        .inputs()
        .first()
        .ok_or_else(|| Error::Usage("the model has no inputs".into()))?;
    if exec.inputs().len() != 1 {
        return Err(Error::Usage(format!(
            "eval feeds one input, but the model has {} ({:?})",
            exec.inputs().len(),
            exec.inputs().iter().map(|s| &s.name).collect::<Vec<_>>()
        )));
    }
    let name = spec.name.clone();
    let parts = batches(data, batch)?;
    let outs: Vec<Vec<Vec<f32>>> = parts
        .into_par_iter()
        .map(|b| {
            let n = b.shape()[0];
            let res = exec.run(vec![(name.clone(), b)])?;
            let (_, y) = res
                .into_iter()
                .next()
                .ok_or_else(|| Error::Usage("the model has no outputs".into()))?;
            let v = y.f32s()?.to_vec();
            let row = v.len() / n.max(1);
            Ok(v.chunks(row.max(1)).map(|c| c.to_vec()).collect())
        })
        .collect::<Result<_>>()?;
    Ok(outs.into_iter().flatten().collect())
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Results of an evaluation.
#[derive(Clone, Debug, Serialize, Default)]
pub struct EvalReport {
    /// Samples evaluated.
    pub samples: usize,
    /// Top-1 accuracy against labels, when labels were given.
    pub accuracy: Option<f64>,
    /// Top-1 agreement with the reference model, when given.
    pub agreement: Option<f64>,
    /// Mean KL(reference || model) of the softmaxed outputs, when a reference was given.
    pub mean_kl: Option<f64>,
    /// ||model - reference|| / ||reference|| over all outputs, when a reference was given.
    pub relative_error: Option<f64>,
}

fn softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = v.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// Compares predictions with labels and/or reference predictions.
pub fn score(
    pred: &[Vec<f32>],
    labels: Option<&[i64]>,
    reference: Option<&[Vec<f32>]>,
) -> Result<EvalReport> {
    let mut r = EvalReport {
        samples: pred.len(),
        ..Default::default()
    };
    if let Some(l) = labels {
        if l.len() != pred.len() {
            return Err(Error::Usage(format!(
                "{} labels for {} samples",
                l.len(),
                pred.len()
            )));
        }
        let ok = pred
            .iter()
            .zip(l)
            .filter(|(p, &y)| argmax(p) as i64 == y)
            .count();
        r.accuracy = Some(ok as f64 / pred.len().max(1) as f64);
    }
    if let Some(refp) = reference {
        if refp.len() != pred.len() {
            return Err(Error::Usage(format!(
                "reference gave {} samples, model {}",
                refp.len(),
                pred.len()
            )));
        }
        let agree = pred
            .iter()
            .zip(refp)
            .filter(|(p, q)| argmax(p) == argmax(q))
            .count();
        r.agreement = Some(agree as f64 / pred.len().max(1) as f64);
        let mut kl = 0.0;
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (p, q) in pred.iter().zip(refp) {
            let (sp, sq) = (softmax(p), softmax(q));
            kl += sq
                .iter()
                .zip(&sp)
                .map(|(a, b)| {
                    if *a > 0.0 {
                        a * (a / b.max(1e-30)).ln()
                    } else {
                        0.0
                    }
                })
                .sum::<f64>();
            num += p
                .iter()
                .zip(q)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            den += q.iter().map(|b| (*b as f64).powi(2)).sum::<f64>();
        }
        r.mean_kl = Some(kl / pred.len().max(1) as f64);
        r.relative_error = Some((num / den.max(1e-30)).sqrt());
    }
    Ok(r)
}
