//! Depth pruning: whole residual blocks `y = x + f(x)` become `y = x`.
//!
//! A block is an `Add` of two computed tensors of the same shape where one
//! input `x` is the only thing the other branch `f(x)` reads (besides
//! constants), and every value inside `f` is read only inside `f` or by the
//! `Add`. Removing it rewires the readers of `y` to `x` and drops `f`.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::exec::{infer_shapes, Executor};
use crate::ir::{InputShape, Model, Node, Tensor};

/// One removable residual block.
#[derive(Clone, Debug, Serialize)]
pub struct Block {
    /// Name (label) of the `Add` node.
    pub add: String,
    /// The skip input `x`.
    pub skip: String,
    /// Labels of the nodes of `f`.
    pub branch: Vec<String>,
    /// MACs of `f`.
    pub macs: u64,
    /// Parameters read only by `f`.
    pub params: u64,
}

/// Finds every removable residual block of `model`.
pub fn find(model: &Model, inputs: &[InputShape]) -> Result<Vec<Block>> {
    let g = &model.graph;
    let info = infer_shapes(model, inputs)?;
    let producers = g.producers();
    let consumers = g.consumers();
    let outputs: HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    let is_const = |v: &str| info.facts.get(v).is_some_and(|f| f.value.is_some());
    let mut blocks = Vec::new();
    for (ai, add) in g.nodes.iter().enumerate() {
        if add.op_type != "Add" || add.inputs.len() != 2 || !add.is_onnx_domain() {
            continue;
        }
        let (a, b) = (&add.inputs[0], &add.inputs[1]);
        if is_const(a) || is_const(b) {
            continue;
        }
        let (Some(fa), Some(fb), Some(fy)) = (
            info.facts.get(a),
            info.facts.get(b),
            info.facts.get(&add.outputs[0]),
        ) else {
            continue;
        };
        if fa.shape != fb.shape || fa.shape != fy.shape {
            continue;
        }
        for (skip, branch_out) in [(a, b), (b, a)] {
            let Some(cone) = branch_cone(
                model, &producers, &consumers, &outputs, skip, branch_out, ai, &is_const,
            ) else {
                continue;
            };
            let macs = cone.iter().map(|&i| info.nodes[i].macs).sum();
            let params = private_params(model, &cone, &consumers, &info);
            let mut branch: Vec<usize> = cone.into_iter().collect();
            branch.sort_unstable();
            blocks.push(Block {
                add: add.label(),
                skip: skip.clone(),
                branch: branch.iter().map(|&i| g.nodes[i].label()).collect(),
                macs,
                params,
            });
            break;
        }
    }
    Ok(blocks)
}

/// The nodes computing `out` from `skip` alone (and constants), when they
/// form a private branch ending at node `add`.
#[allow(clippy::too_many_arguments)]
fn branch_cone(
    model: &Model,
    producers: &HashMap<&str, usize>,
    consumers: &HashMap<&str, Vec<usize>>,
    outputs: &HashSet<&str>,
    skip: &str,
    out: &str,
    add: usize,
    is_const: &dyn Fn(&str) -> bool,
) -> Option<HashSet<usize>> {
    let g = &model.graph;
    let mut cone: HashSet<usize> = HashSet::new();
    let mut stack = vec![*producers.get(out)?];
    while let Some(i) = stack.pop() {
        if !cone.insert(i) {
            continue;
        }
        if cone.len() > 500 {
            return None;
        }
        let n = &g.nodes[i];
        if !n.is_onnx_domain() {
            return None;
        }
        for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
            if inp == skip || is_const(inp) {
                continue;
            }
            // Anything else must be computed inside the branch.
            stack.push(*producers.get(inp.as_str())?);
        }
    }
    // The branch must read the skip tensor, and keep its values private.
    let reads_skip = cone
        .iter()
        .any(|&i| g.nodes[i].inputs.iter().any(|s| s == skip));
    if !reads_skip {
        return None;
    }
    for &i in &cone {
        for o in g.nodes[i].outputs.iter().filter(|s| !s.is_empty()) {
            if outputs.contains(o.as_str()) {
                return None;
            }
            for &c in consumers.get(o.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                if c != add && !cone.contains(&c) {
                    return None;
                }
            }
        }
    }
    Some(cone)
}

/// Float constant elements read only by nodes of the branch.
fn private_params(
    model: &Model,
    cone: &HashSet<usize>,
    consumers: &HashMap<&str, Vec<usize>>,
    info: &crate::exec::ShapeInfo,
) -> u64 {
    let g = &model.graph;
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for &i in cone {
        for inp in &g.nodes[i].inputs {
            let Some(f) = info.facts.get(inp) else {
                continue;
            };
            if f.value.is_none() || !f.dtype.is_float() || !seen.insert(inp.as_str()) {
                continue;
            }
            let only_here = consumers
                .get(inp.as_str())
                .is_some_and(|cs| cs.iter().all(|c| cone.contains(c)));
            if only_here {
                total += f.shape.iter().product::<usize>() as u64;
            }
        }
    }
    total
}

/// Removes the blocks whose `Add` nodes are named in `adds`.
pub fn remove(model: &Model, blocks: &[Block], adds: &[String]) -> Result<Model> {
    let mut m = model.clone();
    // Outputs of removed blocks and what replaced them (a block's skip
    // input may be the output of a block removed before it).
    let mut renamed: HashMap<String, String> = HashMap::new();
    for name in adds {
        let b = blocks.iter().find(|b| &b.add == name).ok_or_else(|| {
            Error::Usage(format!(
                "'{name}' is not a removable residual block of this model"
            ))
        })?;
        let g = &mut m.graph;
        let Some(ai) = g.nodes.iter().position(|n| n.label() == b.add) else {
            // Inside a block removed before.
            continue;
        };
        let y = g.nodes[ai].outputs[0].clone();
        let mut skip = b.skip.clone();
        while let Some(s) = renamed.get(&skip) {
            skip = s.clone();
        }
        if g.outputs.iter().any(|o| o.name == y) {
            // Keep the output's name: y = Identity(x).
            let n = &g.nodes[ai];
            g.nodes[ai] = Node::new(&n.name, "Identity", &[&skip], &[&y], vec![]);
        } else {
            for n in g.nodes.iter_mut() {
                for i in n.inputs.iter_mut() {
                    if *i == y {
                        *i = skip.clone();
                    }
                }
            }
            g.nodes.remove(ai);
            renamed.insert(y, skip);
        }
    }
    super::apply::remove_dead(&mut m);
    m.graph
        .value_info
        .retain(|v| m.graph.nodes.iter().any(|n| n.outputs.contains(&v.name)));
    m.graph.validate()?;
    Ok(m)
}

/// Scores blocks: with calibration data, the relative change of the
/// model's outputs when the block alone is removed; without, the mean
/// squared weight of the branch relative to its parameter count (a weak
/// data-free proxy). Lower scores go first.
pub fn scores(
    model: &Model,
    inputs: &[InputShape],
    blocks: &[Block],
    calib: Option<&crate::data::Feeds>,
) -> Result<Vec<f64>> {
    let Some(x) = calib else {
        let info = infer_shapes(model, inputs)?;
        let g = &model.graph;
        return Ok(blocks
            .iter()
            .map(|b| {
                let (mut sq, mut n) = (0.0f64, 0usize);
                for node in g.nodes.iter().filter(|n| b.branch.contains(&n.label())) {
                    for inp in &node.inputs {
                        if let Some(v) = info.facts.get(inp).and_then(|f| f.value.as_ref()) {
                            if let Ok(w) = v.f32s() {
                                if w.len() > 1 {
                                    sq += w.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
                                    n += w.len();
                                }
                            }
                        }
                    }
                }
                if n == 0 {
                    0.0
                } else {
                    sq / n as f64
                }
            })
            .collect());
    };
    let base = Executor::new(model)?;
    let batches = x.batches(base.batch_size(x.samples()))?;
    let reference: Vec<Vec<(String, Tensor)>> = batches
        .iter()
        .map(|b| base.run(b.clone()))
        .collect::<Result<_>>()?;
    blocks
        .iter()
        .map(|b| {
            let m = remove(model, blocks, std::slice::from_ref(&b.add))?;
            let exec = Executor::new(&m)?;
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (feeds, refs) in batches.iter().zip(&reference) {
                let out = exec.run(feeds.clone())?;
                for ((_, o), (_, r)) in out.iter().zip(refs) {
                    if let (Ok(o), Ok(r)) = (o.f32s(), r.f32s()) {
                        for (a, c) in o.iter().zip(r) {
                            num += ((a - c) as f64).powi(2);
                            den += (*c as f64).powi(2);
                        }
                    }
                }
            }
            Ok((num / den.max(1e-30)).sqrt())
        })
        .collect()
}

/// Removes the lowest-scored blocks until `target` is met (MACs or
/// parameters fraction, or a fraction of the blocks for ratio targets).
pub fn depth(
    model: &Model,
    inputs: &[InputShape],
    target: super::Target,
    calib: Option<&crate::data::Feeds>,
) -> Result<super::Outcome> {
    use super::Target;
    let blocks = find(model, inputs)?;
    let sc = scores(model, inputs, &blocks, calib)?;
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| sc[a].total_cmp(&sc[b]).then(a.cmp(&b)));
    let s0 = crate::report::summarize(model, inputs)?;
    let mut chosen: Vec<String> = Vec::new();
    let mut current = model.clone();
    let mut short = false;
    match target {
        Target::LayerRatio(f) | Target::GlobalRatio(f) => {
            if !(0.0..1.0).contains(&f) {
                return Err(Error::Usage(format!(
                    "pruning ratio {f}: expected a fraction between 0 and 1"
                )));
            }
            let k = (f * blocks.len() as f64).floor() as usize;
            chosen = order
                .iter()
                .take(k)
                .map(|&i| blocks[i].add.clone())
                .collect();
            current = remove(model, &blocks, &chosen)?;
        }
        Target::Macs(f) | Target::Params(f) => {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::Usage(format!(
                    "target {f}: expected a fraction between 0 and 1"
                )));
            }
            let total = |s: &crate::report::Summary| match target {
                Target::Macs(_) => s.macs as f64,
                _ => s.params as f64,
            };
            let goal = f * total(&s0);
            let mut now = total(&s0);
            for &i in &order {
                if now <= goal + 0.5 {
                    break;
                }
                let mut next = chosen.clone();
                next.push(blocks[i].add.clone());
                let m = remove(model, &blocks, &next)?;
                now = total(&crate::report::summarize(&m, inputs)?);
                chosen = next;
                current = m;
            }
            short = now > goal + 0.5;
        }
        Target::Latency(_) => {
            return Err(Error::Usage(
                "--method block takes --target-macs, --target-params or --ratio".into(),
            ))
        }
    }
    Ok(super::Outcome {
        model: current,
        plan: super::Plan {
            blocks: chosen,
            ..super::Plan::new(inputs)
        },
        short,
    })
}
