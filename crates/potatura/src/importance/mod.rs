//! Channel importance: one score per class of coupled channels (see
//! [`crate::deps`]); low scores are removed first.
//!
//! A class touches several weights (a conv's filter, the BN entries, the
//! consumers' input columns): each such weight is a *member*, scored on its
//! own, and the member scores are reduced ([`Reduce`]) to the class score,
//! as Torch-Pruning's group importance does.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::data::Feeds;
use crate::deps::DepGraph;
use crate::error::{Error, Result};
use crate::exec::Executor;
use crate::ir::{Model, Tensor};
use crate::ops::channels::Port;

/// A criterion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// Sum of |w| over each channel's weights.
    L1,
    /// Sum of w² over each channel's weights.
    L2,
    /// |gamma| of the BatchNormalization entries (network slimming);
    /// classes without BatchNorm fall back to L2.
    BnScale,
    /// Distance to the other filters of the layer (filters near the
    /// geometric median are redundant; He et al. 2019).
    Fpgm,
    /// Layer-adaptive magnitude (Lee et al. 2021): w² of a channel over the
    /// sum of w² of the channels at least as large, within each weight.
    Lamp,
    /// Uniform random scores (seeded): the baseline.
    Random,
    /// Mean |activation| of the class's channels on calibration data.
    Activation,
    /// Wanda-style: |W| of each consumer's input column times the L2 norm
    /// of that input channel's activations on calibration data, summed.
    Wanda,
    /// First-order Taylor |g·w|: needs gradients (training, recovery issue).
    Taylor,
}

impl Criterion {
    /// True when the criterion needs calibration data.
    pub fn needs_data(self) -> bool {
        matches!(self, Criterion::Activation | Criterion::Wanda)
    }
}

/// How member scores combine into a class score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduce {
    /// Mean over members.
    Mean,
    /// Sum over members.
    Sum,
    /// Largest member.
    Max,
}

/// Per-channel activation statistics of every value that carries channels.
#[derive(Clone, Debug, Default)]
pub struct ActStats {
    /// Per value name: (sum |x|, sum x²) per channel, and the number of
    /// elements per channel seen.
    pub values: HashMap<String, (Vec<f64>, Vec<f64>, u64)>,
}

impl ActStats {
    /// Runs `model` on `data` (in batches of `batch`) and accumulates the statistics of every value
    /// that carries channels in `dg`.
    pub fn collect(model: &Model, dg: &DepGraph, data: &Feeds, batch: usize) -> Result<ActStats> {
        let exec = Executor::new(model)?;
        let axes: HashMap<&str, usize> = dg
            .values
            .iter()
            .map(|v| (v.name.as_str(), v.axis))
            .collect();
        let mut stats = ActStats::default();
        for b in data.batches(exec.batch_size(batch))? {
            exec.run_observed(b, &mut |name, t| {
                let Some(&ax) = axes.get(name) else { return };
                let Ok(x) = t.f32s() else { return };
                let sh = t.shape();
                if ax >= sh.len() {
                    return;
                }
                let (c, inner) = (sh[ax], sh[ax + 1..].iter().product::<usize>());
                let e = stats
                    .values
                    .entry(name.to_string())
                    .or_insert_with(|| (vec![0.0; c], vec![0.0; c], 0));
                if e.0.len() != c {
                    return;
                }
                for (j, row) in x.chunks(inner.max(1)).enumerate() {
                    let ch = j % c;
                    let (mut a, mut q) = (0.0f64, 0.0f64);
                    for &v in row {
                        a += v.abs() as f64;
                        q += (v as f64) * (v as f64);
                    }
                    e.0[ch] += a;
                    e.1[ch] += q;
                }
                e.2 += (x.len() / c.max(1)) as u64;
            })?;
        }
        Ok(stats)
    }
}

/// Per-index statistics of a weight along one axis.
fn slices(t: &Tensor, axis: usize) -> Option<Vec<Vec<f32>>> {
    let x = t.f32s().ok()?;
    let sh = t.shape();
    let (outer, n, inner) = (
        sh[..axis].iter().product::<usize>(),
        *sh.get(axis)?,
        sh[axis + 1..].iter().product::<usize>(),
    );
    let mut out = vec![Vec::with_capacity(outer * inner); n];
    for o in 0..outer {
        for (k, s) in out.iter_mut().enumerate() {
            s.extend_from_slice(&x[(o * n + k) * inner..][..inner]);
        }
    }
    Some(out)
}

fn member_scores(criterion: Criterion, sl: &[Vec<f32>]) -> Vec<f64> {
    let sq = |s: &[f32]| s.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
    match criterion {
        Criterion::L1 | Criterion::Wanda => sl
            .iter()
            .map(|s| s.iter().map(|&v| v.abs() as f64).sum())
            .collect(),
        Criterion::Fpgm => {
            let n = sl.len();
            let mut d = vec![0.0f64; n];
            for i in 0..n {
                for j in i + 1..n {
                    let dist = sl[i]
                        .iter()
                        .zip(&sl[j])
                        .map(|(&a, &b)| ((a - b) as f64).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    d[i] += dist;
                    d[j] += dist;
                }
            }
            d
        }
        Criterion::Lamp => {
            let s: Vec<f64> = sl.iter().map(|x| sq(x)).collect();
            let mut order: Vec<usize> = (0..s.len()).collect();
            order.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
            let mut out = vec![0.0; s.len()];
            let mut tail: f64 = s.iter().sum();
            for &i in &order {
                out[i] = if tail > 0.0 { s[i] / tail } else { 0.0 };
                tail -= s[i];
            }
            out
        }
        _ => sl.iter().map(|x| sq(x)).collect(),
    }
}

/// Scores of every class of `dg` (frozen classes get a score too; the
/// selection ignores them). `stats` is required by the data-driven
/// criteria; `seed` drives [`Criterion::Random`].
pub fn class_scores(
    dg: &DepGraph,
    criterion: Criterion,
    reduce: Reduce,
    stats: Option<&ActStats>,
    seed: u64,
) -> Result<Vec<f64>> {
    let n_cls = dg.classes.len();
    match criterion {
        Criterion::Random => {
            let mut rng = crate::rng::Rng::new(seed);
            return Ok((0..n_cls).map(|_| rng.next_f64()).collect());
        }
        Criterion::Taylor => {
            return Err(Error::Usage(
                "importance 'taylor' needs gradients, which arrive with training (potatura recover); use l1, l2, bn-scale, fpgm, lamp, random, activation or wanda".into(),
            ))
        }
        c if c.needs_data() && stats.is_none() => {
            return Err(Error::Usage(format!(
                "importance '{}' needs calibration data: give --calib FILE (.npy or MNIST IDX)",
                serde_json::to_string(&c).unwrap_or_default().trim_matches('"')
            )))
        }
        _ => {}
    }
    let mut members: Vec<Vec<f64>> = vec![Vec::new(); n_cls];
    let push = |members: &mut Vec<Vec<f64>>, v: usize, stat: &[f64]| {
        let val = &dg.values[v];
        let mut acc: std::collections::BTreeMap<usize, f64> = Default::default();
        for (k, s) in stat.iter().enumerate().take(val.n) {
            *acc.entry(dg.slot_class[val.base + k]).or_default() += s;
        }
        for (c, s) in acc {
            members[c].push(s);
        }
    };
    if criterion == Criterion::Activation {
        let stats = stats.expect("checked above");
        for (vi, v) in dg.values.iter().enumerate() {
            if let Some((abs, _, cnt)) = stats.values.get(&v.name) {
                let per: Vec<f64> = abs.iter().map(|a| a / (*cnt).max(1) as f64).collect();
                push(&mut members, vi, &per);
            }
        }
    } else {
        for nc in &dg.nodes {
            let Some(map) = &nc.map else { continue };
            for w in &map.weights {
                let Some(v) = nc.value(w.port) else { continue };
                if criterion == Criterion::Wanda && !matches!(w.port, Port::In(_)) {
                    continue;
                }
                let Some(t) = nc.const_value(&dg.shapes, w.input) else {
                    continue;
                };
                let is_bn_scale = nc.op_type == "BatchNormalization" && w.input == 1;
                if criterion == Criterion::BnScale && !is_bn_scale {
                    continue;
                }
                if criterion != Criterion::BnScale && nc.op_type == "BatchNormalization" {
                    // Running statistics are not importance.
                    continue;
                }
                let Some(sl) = slices(&t, w.axis) else {
                    continue;
                };
                if sl.len() != dg.values[v].n {
                    continue;
                }
                let mut stat = if criterion == Criterion::BnScale {
                    sl.iter().map(|s| s[0].abs() as f64).collect()
                } else {
                    member_scores(criterion, &sl)
                };
                if criterion == Criterion::Wanda {
                    let stats = stats.expect("checked above");
                    let Some((_, sq, _)) = stats.values.get(&dg.values[v].name) else {
                        continue;
                    };
                    for (s, q) in stat.iter_mut().zip(sq) {
                        *s *= q.sqrt();
                    }
                }
                push(&mut members, v, &stat);
            }
        }
    }
    let fallback = if matches!(criterion, Criterion::BnScale) {
        // Classes without BatchNorm: L2 magnitude.
        Some(class_scores(dg, Criterion::L2, reduce, None, seed)?)
    } else {
        None
    };
    Ok(members
        .iter()
        .enumerate()
        .map(|(c, m)| {
            if m.is_empty() {
                return fallback.as_ref().map(|f| f[c]).unwrap_or(0.0);
            }
            match reduce {
                Reduce::Mean => m.iter().sum::<f64>() / m.len() as f64,
                Reduce::Sum => m.iter().sum(),
                Reduce::Max => m.iter().copied().fold(f64::MIN, f64::max),
            }
        })
        .collect())
}
