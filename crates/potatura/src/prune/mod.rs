//! Structured pruning: choose which classes of coupled channels go
//! ([`select`]), write that down as a [`Plan`] (serializable, for
//! `--dry-run` and `--plan`), and remove them from the graph ([`apply`]).

mod apply;
pub mod blocks;
pub mod sparsegpt;
pub mod unstructured;

use serde::{Deserialize, Serialize};

pub use apply::apply;

use crate::deps::DepGraph;
use crate::error::{Error, Result};

/// How much to remove.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Every group loses this fraction of its channels.
    LayerRatio(f64),
    /// This fraction of all prunable channels goes, ranked globally.
    GlobalRatio(f64),
    /// The pruned model has at most this fraction of the MACs.
    Macs(f64),
    /// The pruned model has at most this fraction of the parameters.
    Params(f64),
    /// The pruned model's estimated latency is at most this fraction of
    /// the dense model's, by the per-node table in [`Select::latency`].
    Latency(f64),
}

/// Constraints on the selection.
#[derive(Clone, Debug)]
pub struct Select {
    /// The goal.
    pub target: Target,
    /// Kept channel counts are multiples of this (when a group has more).
    pub round_to: usize,
    /// No group loses more than this fraction of its channels.
    pub max_layer_ratio: f64,
    /// Node-name globs: groups touching a matching node are left alone.
    pub ignore: Vec<String>,
    /// Measured time of every graph node at full width
    /// ([`crate::report::latency::node_table`]); required by
    /// [`Target::Latency`], which then also ranks channels by importance
    /// per unit of time they cost.
    pub latency: Option<Vec<f64>>,
}

impl Select {
    /// Checks the numbers; returns the target fraction.
    pub fn check(&self) -> Result<f64> {
        let bad = |what: &str, v: f64| {
            Error::Usage(format!("{what} {v}: expected a fraction between 0 and 1"))
        };
        let frac = match self.target {
            Target::LayerRatio(f) | Target::GlobalRatio(f) if !(0.0..1.0).contains(&f) => {
                return Err(bad("pruning ratio", f))
            }
            Target::Macs(f) | Target::Params(f) | Target::Latency(f) if !(f > 0.0 && f <= 1.0) => {
                return Err(bad("target", f))
            }
            Target::Latency(_) if self.latency.is_none() => {
                return Err(Error::Usage(
                    "a latency target needs the per-node latency table".into(),
                ))
            }
            Target::LayerRatio(f)
            | Target::GlobalRatio(f)
            | Target::Macs(f)
            | Target::Params(f)
            | Target::Latency(f) => f,
        };
        if !(0.0..=1.0).contains(&self.max_layer_ratio) {
            return Err(bad("--max-layer-ratio", self.max_layer_ratio));
        }
        Ok(frac)
    }
}

/// What one selection removes.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Removed classes.
    pub removed: Vec<usize>,
    /// MACs after removal.
    pub macs: f64,
    /// Parameters after removal.
    pub params: f64,
    /// True when the target could not be reached within the constraints.
    pub short: bool,
}

/// Matches `name` against a glob with `*` (any run) and `?` (one char).
pub fn glob_match(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Per prunable group: its classes sorted by ascending score, with the
/// scores normalised by the group mean so groups compare.
struct Ranked {
    classes: Vec<usize>,
    norm: Vec<f64>,
    max_remove: usize,
    /// Kept class counts are multiples of this.
    round: usize,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The multiple of classes a group keeps so that every weight dimension it
/// touches is a multiple of `round` channels: 8 for a conv's filters, 1 for
/// attention heads of 32 features each.
fn class_multiple(dg: &DepGraph, g: &crate::deps::Group, round: usize) -> usize {
    let weight_values: std::collections::HashSet<usize> = dg
        .nodes
        .iter()
        .filter_map(|nc| nc.map.as_ref().map(|m| (nc, m)))
        .flat_map(|(nc, m)| m.weights.iter().filter_map(|w| nc.value(w.port)))
        .collect();
    let mut multiple = 1;
    let mut any = false;
    for (name, per_class) in &g.values {
        let Some(&v) = dg.value_ids.get(name) else {
            continue;
        };
        if !weight_values.contains(&v) {
            continue;
        }
        any = true;
        let need = round / gcd(round, *per_class);
        multiple = multiple / gcd(multiple, need) * need;
    }
    if any {
        multiple
    } else {
        round
    }
}

/// Chooses the classes to remove from `scores` (one per class).
pub fn select(dg: &DepGraph, scores: &[f64], opts: &Select) -> Result<Selection> {
    if scores.len() != dg.classes.len() {
        return Err(Error::Usage("one score per class is needed".into()));
    }
    let frac = opts.check()?;
    let round = opts.round_to.max(1);
    let full: Vec<usize> = dg.values.iter().map(|v| v.n).collect();
    let table = opts
        .latency
        .as_deref()
        .filter(|t| t.len() == dg.nodes.len());
    let lat0 = table.map(|t| dg.latency(&full, t)).unwrap_or(0.0);
    // Time saved by one channel of each group (latency targets only).
    let time_per_channel = |g: &crate::deps::Group| -> f64 {
        let (Some(t), Some(&c0)) = (table, g.classes.first()) else {
            return 1.0;
        };
        let mut kept = full.clone();
        for &(v, _) in &dg.classes[c0].slots {
            kept[v] -= 1;
        }
        (lat0 - dg.latency(&kept, t)).max(0.0)
    };
    let latency_ranked = matches!(opts.target, Target::Latency(_));
    let mut ranked = Vec::new();
    let mut costs = Vec::new();
    for g in &dg.groups {
        if g.frozen.is_some() || g.channels < 2 {
            continue;
        }
        if opts
            .ignore
            .iter()
            .any(|p| g.nodes.iter().chain([&g.name]).any(|n| glob_match(p, n)))
        {
            continue;
        }
        let mut classes = g.classes.clone();
        classes.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        let mean = classes.iter().map(|&c| scores[c]).sum::<f64>() / classes.len() as f64;
        let norm = classes
            .iter()
            .map(|&c| if mean > 0.0 { scores[c] / mean } else { 0.0 })
            .collect();
        let n = g.channels;
        let max_remove = ((n as f64 * opts.max_layer_ratio).floor() as usize).min(n - 1);
        costs.push(if latency_ranked {
            time_per_channel(g)
        } else {
            1.0
        });
        ranked.push(Ranked {
            classes,
            norm,
            max_remove,
            round: class_multiple(dg, g, round),
        });
    }
    // Latency targets: importance per unit of time saved, so the cuts go
    // where the time goes.
    if latency_ranked && !costs.is_empty() {
        let mean = costs.iter().sum::<f64>() / costs.len() as f64;
        for (r, &c) in ranked.iter_mut().zip(&costs) {
            let rel = if mean > 0.0 {
                (c / mean).max(1e-3)
            } else {
                1.0
            };
            r.norm.iter_mut().for_each(|s| *s /= rel);
        }
    }
    // How many of a group's channels go when `want` are asked for.
    let limit = |r: &Ranked, want: usize| -> usize {
        let n = r.classes.len();
        let k = want.min(r.max_remove);
        let kept = n - k;
        let kept = if n > r.round {
            kept.div_ceil(r.round) * r.round
        } else {
            kept
        };
        n - kept.min(n)
    };
    let removal = |counts: &[usize]| -> Vec<usize> {
        ranked
            .iter()
            .zip(counts)
            .flat_map(|(r, &k)| r.classes[..k].iter().copied())
            .collect()
    };
    let evaluate = |counts: &[usize]| -> (f64, f64) {
        let mut kept: Vec<usize> = dg.values.iter().map(|v| v.n).collect();
        for (r, &k) in ranked.iter().zip(counts) {
            for &c in &r.classes[..k] {
                for &(v, _) in &dg.classes[c].slots {
                    kept[v] -= 1;
                }
            }
        }
        dg.cost(&kept)
    };
    let latency_of = |counts: &[usize]| -> f64 {
        let Some(t) = table else { return 0.0 };
        let mut kept = full.clone();
        for (r, &k) in ranked.iter().zip(counts) {
            for &c in &r.classes[..k] {
                for &(v, _) in &dg.classes[c].slots {
                    kept[v] -= 1;
                }
            }
        }
        dg.latency(&kept, t)
    };
    let at = |tau: f64| -> Vec<usize> {
        ranked
            .iter()
            .map(|r| limit(r, r.norm.iter().take_while(|&&s| s < tau).count()))
            .collect()
    };
    let counts: Vec<usize> = match opts.target {
        Target::LayerRatio(f) => ranked
            .iter()
            .map(|r| limit(r, (r.classes.len() as f64 * f).floor() as usize))
            .collect(),
        Target::GlobalRatio(_) | Target::Macs(_) | Target::Params(_) | Target::Latency(_) => {
            let total_ch: usize = ranked.iter().map(|r| r.classes.len()).sum();
            let (m0, p0) = (dg.total_macs as f64, dg.total_params as f64);
            let reached = |c: &[usize]| -> bool {
                match opts.target {
                    Target::GlobalRatio(f) => c.iter().sum::<usize>() as f64 >= f * total_ch as f64,
                    Target::Macs(f) => evaluate(c).0 <= f * m0 + 0.5,
                    Target::Params(f) => evaluate(c).1 <= f * p0 + 0.5,
                    Target::Latency(f) => latency_of(c) <= f * lat0,
                    Target::LayerRatio(_) => unreachable!(),
                }
            };
            if frac == 1.0
                && matches!(
                    opts.target,
                    Target::Macs(_) | Target::Params(_) | Target::Latency(_)
                )
            {
                vec![0; ranked.len()]
            } else {
                // Smallest threshold whose removal reaches the target.
                let hi0 = ranked
                    .iter()
                    .flat_map(|r| r.norm.iter().copied())
                    .fold(0.0f64, f64::max)
                    + 1.0;
                let (mut lo, mut hi) = (0.0f64, hi0);
                if !reached(&at(hi)) {
                    lo = hi;
                }
                for _ in 0..60 {
                    if hi - lo <= 1e-12 * hi0 {
                        break;
                    }
                    let mid = 0.5 * (lo + hi);
                    if reached(&at(mid)) {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                at(hi)
            }
        }
    };
    let (macs, params) = evaluate(&counts);
    let short = match opts.target {
        Target::Latency(f) => latency_of(&counts) > f * lat0,
        Target::Macs(f) => macs > f * dg.total_macs as f64 + 0.5,
        Target::Params(f) => params > f * dg.total_params as f64 + 0.5,
        _ => false,
    };
    let mut removed = removal(&counts);
    removed.sort_unstable();
    Ok(Selection {
        removed,
        macs,
        params,
        short,
    })
}

/// Channels removed from one group, named by one of its values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// The group's name (for people; not used to apply).
    pub group: String,
    /// A value of the group.
    pub value: String,
    /// Channel indices of that value that go (every channel of the removed
    /// classes on that value).
    pub channels: Vec<usize>,
}

/// A saved pruning plan: what `--dry-run` writes and `--plan` applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Format version.
    pub version: u32,
    /// Input shapes the analysis used.
    pub input_shapes: Vec<(String, Vec<usize>)>,
    /// Residual blocks removed first (their `Add` node names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<String>,
    /// Steps, applied in order, each to the result of the previous one.
    pub steps: Vec<Vec<Removal>>,
}

impl Plan {
    /// An empty plan for a model analysed at `inputs`.
    pub fn new(inputs: &[crate::ir::InputShape]) -> Plan {
        Plan {
            version: 1,
            input_shapes: inputs
                .iter()
                .map(|i| (i.name.clone(), i.shape.clone()))
                .collect(),
            blocks: Vec::new(),
            steps: Vec::new(),
        }
    }
}

/// The removals of one step, by value name and channel index.
pub fn removals(dg: &DepGraph, removed: &[usize]) -> Vec<Removal> {
    let mut by_group: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &c in removed {
        by_group.entry(dg.classes[c].group).or_default().push(c);
    }
    by_group
        .into_iter()
        .map(|(g, cls)| {
            let group = &dg.groups[g];
            // The value with the fewest slots per class names it best.
            let (value, _) = group
                .values
                .iter()
                .min_by_key(|(_, c)| *c)
                .cloned()
                .unwrap_or_default();
            let vid = dg.value_ids[&value];
            let mut channels: Vec<usize> = cls
                .iter()
                .flat_map(|&c| dg.classes[c].slots.iter())
                .filter(|&&(v, _)| v == vid)
                .map(|&(_, k)| k)
                .collect();
            channels.sort_unstable();
            Removal {
                group: group.name.clone(),
                value,
                channels,
            }
        })
        .collect()
}

/// The classes a step's removals name, checked against `dg`.
pub fn resolve(dg: &DepGraph, step: &[Removal]) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for r in step {
        let v = dg.value_ids.get(&r.value).ok_or_else(|| {
            Error::Usage(format!(
                "plan: the model has no prunable tensor '{}' (group '{}'); was the plan made for another model?",
                r.value, r.group
            ))
        })?;
        for &k in &r.channels {
            let c = dg.class_of(&r.value, k).ok_or_else(|| {
                Error::Usage(format!(
                    "plan: tensor '{}' has {} channels, the plan removes channel {k}",
                    r.value, dg.values[*v].n
                ))
            })?;
            if dg.is_frozen(c) {
                return Err(Error::Usage(format!(
                    "plan: channel {k} of '{}' cannot be removed: {}",
                    r.value,
                    dg.groups[dg.classes[c].group]
                        .frozen
                        .as_deref()
                        .unwrap_or("frozen")
                )));
            }
            out.push(c);
        }
    }
    out.sort_unstable();
    out.dedup();
    // Every group keeps at least one channel.
    for (gi, g) in dg.groups.iter().enumerate() {
        let gone = out.iter().filter(|&&c| dg.classes[c].group == gi).count();
        if gone >= g.channels && g.channels > 0 {
            return Err(Error::Usage(format!(
                "plan: removes all {} channels of group '{}'; every layer keeps at least one",
                g.channels, g.name
            )));
        }
    }
    Ok(out)
}

/// Everything a structured pruning run needs besides the model.
#[derive(Clone, Debug)]
pub struct Options {
    /// Target and constraints.
    pub select: Select,
    /// Importance criterion.
    pub criterion: crate::importance::Criterion,
    /// How member scores combine.
    pub reduce: crate::importance::Reduce,
    /// Prune in this many steps, re-scoring in between (at least 1).
    pub steps: usize,
    /// Seed for the random criterion.
    pub seed: u64,
    /// Batch size for calibration runs.
    pub calib_batch: usize,
}

/// The result of [`structured`].
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The pruned model.
    pub model: crate::ir::Model,
    /// The plan that reproduces it.
    pub plan: Plan,
    /// True when the target could not be reached within the constraints.
    pub short: bool,
}

/// Scores, selects and removes channels (in `opts.steps` steps).
pub fn structured(
    model: &crate::ir::Model,
    inputs: &[crate::ir::InputShape],
    opts: &Options,
    calib: Option<&crate::data::Feeds>,
) -> Result<Outcome> {
    use crate::importance::{class_scores, ActStats};
    opts.select.check()?;
    let steps = opts.steps.max(1);
    let mut current = model.clone();
    let mut plan = Plan::new(inputs);
    let first = DepGraph::build(model, inputs)?;
    let (m0, p0) = (first.total_macs as f64, first.total_params as f64);
    let mut short = false;
    for step in 1..=steps {
        let dg = if step == 1 {
            first.clone()
        } else {
            DepGraph::build(&current, inputs)?
        };
        let stats = match (opts.criterion.needs_data(), calib) {
            (true, Some(data)) => Some(ActStats::collect(&current, &dg, data, opts.calib_batch)?),
            _ => None,
        };
        let scores = class_scores(&dg, opts.criterion, opts.reduce, stats.as_ref(), opts.seed)?;
        // This step's share of the target, relative to the current model.
        let t = step as f64 / steps as f64;
        let target = match opts.select.target {
            Target::Macs(f) => Target::Macs(
                ((1.0 - (1.0 - f) * t) * m0 / (dg.total_macs as f64).max(1.0)).min(1.0),
            ),
            Target::Params(f) => Target::Params(
                ((1.0 - (1.0 - f) * t) * p0 / (dg.total_params as f64).max(1.0)).min(1.0),
            ),
            Target::LayerRatio(f) => Target::LayerRatio(1.0 - (1.0 - f).powf(1.0 / steps as f64)),
            Target::GlobalRatio(f) => Target::GlobalRatio(1.0 - (1.0 - f).powf(1.0 / steps as f64)),
            Target::Latency(f) => {
                if steps > 1 {
                    return Err(Error::Usage(
                        "a latency target is reached in one step (the table is measured on the dense model); drop --steps".into(),
                    ));
                }
                Target::Latency(f)
            }
        };
        let sel = select(
            &dg,
            &scores,
            &Select {
                target,
                ..opts.select.clone()
            },
        )?;
        short |= sel.short;
        plan.steps.push(removals(&dg, &sel.removed));
        current = apply(&current, &dg, &sel.removed, inputs)?;
    }
    Ok(Outcome {
        model: current,
        plan,
        short,
    })
}

/// Applies a saved plan to `model`.
pub fn apply_plan(
    model: &crate::ir::Model,
    inputs: &[crate::ir::InputShape],
    plan: &Plan,
) -> Result<crate::ir::Model> {
    if plan.version != 1 {
        return Err(Error::Usage(format!(
            "plan version {} is not supported (this potatura reads version 1)",
            plan.version
        )));
    }
    let mut current = model.clone();
    if !plan.blocks.is_empty() {
        let found = blocks::find(model, inputs)?;
        current = blocks::remove(model, &found, &plan.blocks)?;
    }
    for step in &plan.steps {
        let dg = DepGraph::build(&current, inputs)?;
        let removed = resolve(&dg, step)?;
        current = apply(&current, &dg, &removed, inputs)?;
    }
    Ok(current)
}

/// Latency as measured by the caller: the whole model's time and the
/// per-node table ([`crate::report::latency::node_table`]).
pub type MeasureLatency<'a> = dyn FnMut(&crate::ir::Model) -> Result<(f64, Vec<f64>)> + 'a;

/// Prunes until the *measured* latency is at most `fraction` of the dense
/// model's: each round estimates with the per-node table of the current
/// model, prunes, measures, and aims again at what is left, for at most
/// `rounds` rounds. The plan holds one step per round.
pub fn to_latency(
    model: &crate::ir::Model,
    inputs: &[crate::ir::InputShape],
    opts: &Options,
    calib: Option<&crate::data::Feeds>,
    fraction: f64,
    rounds: usize,
    measure: &mut MeasureLatency<'_>,
) -> Result<Outcome> {
    let (dense, mut table) = measure(model)?;
    let mut current = model.clone();
    let mut plan = Plan::new(inputs);
    let mut now = dense;
    let mut short = false;
    for _ in 0..rounds.max(1) {
        let want = (fraction * dense / now).min(1.0);
        if want >= 0.99 {
            break;
        }
        let mut o = opts.clone();
        o.steps = 1;
        o.select.target = Target::Latency(want);
        o.select.latency = Some(table.clone());
        let out = structured(&current, inputs, &o, calib)?;
        if out.plan.steps.iter().all(|s| s.is_empty()) {
            short = true;
            break;
        }
        plan.steps.extend(out.plan.steps);
        current = out.model;
        (now, table) = measure(&current)?;
        short = out.short;
    }
    Ok(Outcome {
        model: current,
        plan,
        short: short || now > fraction * dense * 1.02,
    })
}
