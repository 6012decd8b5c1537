//! Training through the ONNX graph: a forward pass on the executor's own
//! op implementations that keeps every value (a tape), backward rules per
//! op ([`grad`]), losses ([`loss`]) and optimizers ([`optim`]).
//!
//! Trainable parameters are the float initializers that feed weights,
//! biases and norm scales (Conv, Gemm, MatMul, BatchNormalization,
//! LayerNormalization, PRelu slopes, Gather tables (embeddings), and
//! non-scalar operands of Add/Sub/Mul/Div). For
//! training they become graph inputs of a copy of the model, so the
//! executor does not fold what depends on them. BatchNormalization runs in
//! training mode (batch statistics; running statistics updated) and
//! Dropout is active. Weights with exact zeros (pruned) are masked: the
//! zeros are put back after every step and their optimizer state cleared.

pub mod grad;
pub mod loss;
pub mod optim;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::Feeds;
use crate::error::{Error, Result};
use crate::exec::Executor;
use crate::ir::{DType, Dim, Model, Tensor, ValueInfo};
use crate::rng::Rng;

use optim::{OptimKind, Optimizer, Schedule};

/// One trainable tensor.
#[derive(Clone, Debug)]
pub struct Param {
    /// Initializer name.
    pub name: String,
    /// Current value.
    pub value: Tensor,
    /// Entries that may be non-zero (`None`: all); pruned weights stay 0.
    pub mask: Option<Vec<bool>>,
    /// Weight decay applies (rank 2 or more: weights, not biases or norms).
    pub decay: bool,
    /// The Conv/Gemm/MatMul node reading it as its weight (input 1), for
    /// pruning during training.
    pub layer: Option<usize>,
    slot: usize,
}

/// Running statistics of one BatchNormalization node.
#[derive(Clone, Debug)]
struct BnState {
    eps: f32,
    momentum: f32,
    mean_name: String,
    var_name: String,
    mean: Vec<f32>,
    var: Vec<f32>,
    /// Batches averaged so far in recalibration mode.
    seen: usize,
}

/// A model prepared for training.
#[derive(Debug)]
pub struct Trainable {
    base: Model,
    graph: Model,
    exec: Executor,
    /// The trainable parameters.
    pub params: Vec<Param>,
    /// BatchNormalization state by step index.
    bn: HashMap<usize, BnState>,
    /// Per value slot: whether it depends on a parameter (only those
    /// values need gradients).
    need: Vec<bool>,
    opset: i64,
    /// Seconds per op type, forward and backward, when debug logging is
    /// on for this module (see [`OpTimes`]).
    times: Option<std::sync::Mutex<OpTimes>>,
    /// Per step: its part in a BatchNormalization + activation pair that
    /// runs as one pass forward and one backward with batch statistics
    /// (see [`fusable_activations`]).
    fused: Vec<Option<Fusion>>,
}

/// A step's part in a BatchNormalization + Relu / Clip pair run as one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fusion {
    /// The BatchNormalization: the activation's step and its `(min, max)`.
    Bn { act: usize, bounds: (f32, f32) },
    /// The activation: its BatchNormalization's step.
    Act { bn: usize },
}

/// Per step, its [`Fusion`]: BatchNormalization steps whose only output is
/// read by nothing but one Relu, or one Clip with constant bounds (the
/// value's only use), pair with that step. Training runs them as one: the
/// normalised values are clamped as they are written, and the backward
/// pass masks the gradient as it reads it, which saves a pass over the
/// activation each way (conv-BN-ReLU blocks).
fn fusable_activations(exec: &Executor, graph: &Model) -> Vec<Option<Fusion>> {
    let mut uses = vec![0usize; exec.n_slots()];
    for st in exec.steps() {
        for &s in st.inputs.iter().flatten() {
            uses[s] += 1;
        }
    }
    for s in exec.output_slots() {
        uses[s] += 1;
    }
    let mut reader = HashMap::new();
    for (sj, st) in exec.steps().iter().enumerate() {
        if matches!(st.op_type.as_str(), "Relu" | "Clip") && st.outputs.len() == 1 {
            if let Some(Some(x)) = st.inputs.first() {
                reader.insert(*x, sj);
            }
        }
    }
    let consts = exec.consts();
    let bounds = |sj: usize| -> Option<(f32, f32)> {
        let a = &exec.steps()[sj];
        if a.op_type == "Relu" {
            return Some((0.0, f32::INFINITY));
        }
        // Clip: bounds absent, or constant inputs (input 0 is the data).
        let ins = std::iter::once(Some(None))
            .chain(a.inputs.iter().skip(1).map(|s| match s {
                Some(s) => consts[*s].as_deref().map(Some),
                None => Some(None),
            }))
            .collect::<Option<Vec<_>>>()?;
        grad::clip_bounds(&graph.graph.nodes[a.node], &ins).ok()
    };
    let mut fused = vec![None; exec.steps().len()];
    for (si, st) in exec.steps().iter().enumerate() {
        if st.op_type != "BatchNormalization" || st.outputs.len() != 1 {
            continue;
        }
        let o = st.outputs[0];
        let Some(&sj) = reader.get(&o) else { continue };
        if uses[o] != 1 || sj <= si {
            continue;
        }
        if let Some(bounds) = bounds(sj) {
            fused[si] = Some(Fusion::Bn { act: sj, bounds });
            fused[sj] = Some(Fusion::Act { bn: si });
        }
    }
    fused
}

/// Where training time goes: seconds per op type, forward and backward.
/// Collected only when `RUST_LOG=potatura::train=debug` and logged when
/// training ends.
#[derive(Debug, Default)]
struct OpTimes(std::collections::BTreeMap<String, [f64; 2]>);

impl OpTimes {
    fn add(&mut self, op: &str, backward: bool, t: std::time::Instant) {
        self.0.entry(op.to_string()).or_default()[backward as usize] += t.elapsed().as_secs_f64();
    }
    fn log(&self, steps: usize) {
        let mut rows: Vec<_> = self.0.iter().collect();
        rows.sort_by(|a, b| (b.1[0] + b.1[1]).total_cmp(&(a.1[0] + a.1[1])));
        let per = 1e3 / steps.max(1) as f64;
        let table: Vec<String> = rows
            .iter()
            .map(|(op, [f, b])| format!("{op}: {:.1} + {:.1} ms", f * per, b * per))
            .collect();
        tracing::debug!(
            "training time per step by op (forward + backward): {}",
            table.join(", ")
        );
    }
}

/// What the forward pass kept for the backward pass.
struct Tape {
    vals: Vec<Option<Arc<Tensor>>>,
    /// BatchNormalization: batch mean and 1/std per channel.
    bn: HashMap<usize, (Vec<f32>, Vec<f32>)>,
    /// Dropout: scaled keep mask.
    dropout: HashMap<usize, Vec<f32>>,
    /// Whether the [`Trainable::fused`] pairs ran as one (batch
    /// statistics): their activations' steps were skipped.
    fused: bool,
}

/// How BatchNormalization behaves in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BnMode {
    /// Batch statistics; running statistics move by the momentum.
    Train,
    /// Batch statistics; running statistics become the average over all
    /// batches seen (recalibration).
    Average,
    /// Running statistics (frozen), with Dropout active: training with
    /// frozen BatchNormalization.
    Frozen,
}

/// Input positions of a node that may hold trainable parameters.
fn trainable_positions(op: &str) -> &'static [usize] {
    match op {
        "Conv" | "Gemm" => &[0, 1, 2],
        "MatMul" | "Add" | "Sub" | "Mul" | "Div" => &[0, 1],
        "BatchNormalization" | "LayerNormalization" => &[1, 2],
        "Gather" => &[0],
        "PRelu" => &[1],
        _ => &[],
    }
}

impl Trainable {
    /// Prepares `model` for training. A model exported with its batch fixed
    /// at 1 should be passed through [`crate::exec::relax_batch`] first;
    /// [`Trainable::to_model`] writes into `base` in any case.
    pub fn new(model: &Model, base: &Model) -> Result<Trainable> {
        let g = &model.graph;
        let mut names: Vec<String> = Vec::new();
        for n in &g.nodes {
            for &i in trainable_positions(&n.op_type) {
                let Some(name) = n.input(i).filter(|s| !s.is_empty()) else {
                    continue;
                };
                let Some(t) = g.initializer(name) else {
                    continue;
                };
                if t.dtype() == DType::F32 && t.numel() > 1 && !names.iter().any(|x| x == name) {
                    names.push(name.to_string());
                }
            }
        }
        // Parameters become graph inputs of a copy.
        let mut graph = model.clone();
        let mut values = Vec::new();
        for name in &names {
            let ct = graph
                .graph
                .initializer(name)
                .expect("found above")
                .to_tensor()?;
            graph.graph.inputs.push(ValueInfo::new(
                name,
                DType::F32,
                ct.shape().iter().map(|&d| Dim::Known(d)).collect(),
            ));
            values.push(ct);
        }
        graph
            .graph
            .initializers
            .retain(|t| !names.contains(&t.name));
        let exec = Executor::new(&graph)?;
        // Weights (input 1 of Conv/Gemm/MatMul) with exact zeros are masked.
        let weight_names: Vec<&str> = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op_type.as_str(), "Conv" | "Gemm" | "MatMul"))
            .filter_map(|n| n.input(1))
            .collect();
        let params = names
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let slot = exec.input_slot(name).expect("declared above");
                let layer = g.nodes.iter().position(|n| {
                    matches!(n.op_type.as_str(), "Conv" | "Gemm" | "MatMul")
                        && n.input(1) == Some(name.as_str())
                });
                let v = value.f32s()?;
                let mask = (weight_names.contains(&name.as_str()) && v.contains(&0.0))
                    .then(|| v.iter().map(|&x| x != 0.0).collect());
                Ok(Param {
                    name: name.clone(),
                    decay: value.rank() >= 2,
                    layer,
                    value,
                    mask,
                    slot,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut bn = HashMap::new();
        for (si, st) in exec.steps().iter().enumerate() {
            if st.op_type != "BatchNormalization" {
                continue;
            }
            let node = &graph.graph.nodes[st.node];
            let get = |i: usize| -> Result<(String, Vec<f32>)> {
                let name = node.input(i).unwrap_or_default().to_string();
                let t = graph
                    .graph
                    .const_tensor(&name)
                    .ok_or_else(|| {
                        Error::op(
                            &node.label(),
                            "BatchNormalization",
                            format!("running statistic '{name}' is not a constant"),
                        )
                    })?
                    .to_tensor()?;
                Ok((name, t.f32s()?.to_vec()))
            };
            let (mean_name, mean) = get(3)?;
            let (var_name, var) = get(4)?;
            bn.insert(
                si,
                BnState {
                    eps: node.attr_float("epsilon", 1e-5)?,
                    momentum: node.attr_float("momentum", 0.9)?,
                    mean_name,
                    var_name,
                    mean,
                    var,
                    seen: 0,
                },
            );
        }
        let mut need = vec![false; exec.n_slots()];
        for p in &params {
            need[p.slot] = true;
        }
        for st in exec.steps() {
            if st.inputs.iter().flatten().any(|&s| need[s]) {
                for &o in &st.outputs {
                    need[o] = true;
                }
            }
        }
        let fused = fusable_activations(&exec, &graph);
        Ok(Trainable {
            base: base.clone(),
            opset: graph.opset(),
            graph,
            exec,
            params,
            bn,
            need,
            times: tracing::enabled!(tracing::Level::DEBUG)
                .then(|| std::sync::Mutex::new(OpTimes::default())),
            fused,
        })
    }

    /// Keeps the value in `slot` on the tape: a BatchNormalization writing
    /// it is no longer fused with its activation (a distilled feature).
    fn keep_value(&mut self, slot: usize) {
        for (si, st) in self.exec.steps().iter().enumerate() {
            if let Some(Fusion::Bn { act, .. }) = self.fused[si] {
                if st.outputs[0] == slot {
                    self.fused[si] = None;
                    self.fused[act] = None;
                }
            }
        }
    }

    /// Starts timing a step when [`OpTimes`] are collected.
    fn clock(&self) -> Option<std::time::Instant> {
        self.times.as_ref().map(|_| std::time::Instant::now())
    }

    /// Adds the time since `t` (from [`Trainable::clock`]) to `op`.
    fn clocked(&self, op: &str, backward: bool, t: Option<std::time::Instant>) {
        if let (Some(m), Some(t)) = (&self.times, t) {
            if let Ok(mut m) = m.lock() {
                m.add(op, backward, t);
            }
        }
    }

    /// Sparsity of the masked weights: (zeros, elements) over all params.
    pub fn zeros(&self) -> (usize, usize) {
        self.params.iter().fold((0, 0), |(z, n), p| {
            let v = p.value.f32s().unwrap_or(&[]);
            (z + v.iter().filter(|&&x| x == 0.0).count(), n + v.len())
        })
    }

    /// Forward pass; returns the graph outputs and the tape.
    fn forward(
        &mut self,
        feeds: &[(String, Tensor)],
        mode: BnMode,
        rng: &mut Rng,
    ) -> Result<(Vec<Tensor>, Tape)> {
        let mut vals: Vec<Option<Arc<Tensor>>> = vec![None; self.exec.n_slots()];
        for (name, t) in feeds {
            let slot = self.exec.input_slot(name).ok_or_else(|| Error::Input {
                name: name.clone(),
                detail: "the model has no input of that name".into(),
            })?;
            vals[slot] = Some(Arc::new(t.clone()));
        }
        for p in &self.params {
            vals[p.slot] = Some(Arc::new(p.value.clone()));
        }
        let mut tape_bn = HashMap::new();
        let mut tape_drop = HashMap::new();
        // With batch statistics, fused activations run inside their
        // BatchNormalization.
        let fuse = matches!(mode, BnMode::Train | BnMode::Average);
        let consts = self.exec.consts();
        for (si, st) in self.exec.steps().iter().enumerate() {
            if fuse && matches!(self.fused[si], Some(Fusion::Act { .. })) {
                continue;
            }
            let args: Vec<Option<&Tensor>> = st
                .inputs
                .iter()
                .map(|s| s.and_then(|s| vals[s].as_deref().or(consts[s].as_deref())))
                .collect();
            let t = self.clock();
            let res = match st.op_type.as_str() {
                "BatchNormalization" if fuse => {
                    // A fused activation writes its output here.
                    let act = match self.fused[si] {
                        Some(Fusion::Bn { act, bounds }) => Some((act, bounds)),
                        _ => None,
                    };
                    let state = self.bn.get_mut(&si).expect("every BN has state");
                    let (y, mean, invstd) = bn_train(&args, state, mode, act.map(|a| a.1))
                        .map_err(|e| match e {
                            Error::Usage(m) => Error::op(&st.label, &st.op_type, m),
                            o => o,
                        })?;
                    tape_bn.insert(si, (mean, invstd));
                    if let Some((sj, _)) = act {
                        self.clocked(&st.op_type, false, t);
                        vals[self.exec.steps()[sj].outputs[0]] = Some(Arc::new(y));
                        continue;
                    }
                    vec![y]
                }
                "Dropout" if matches!(mode, BnMode::Train | BnMode::Frozen) => {
                    let x = args[0].ok_or_else(|| Error::op(&st.label, "Dropout", "no input"))?;
                    let node = &self.graph.graph.nodes[st.node];
                    let ratio = match args.get(1).copied().flatten() {
                        Some(r) => r.scalar_f64().unwrap_or(0.5) as f32,
                        None => node.attr_float("ratio", 0.5)?,
                    };
                    let keep = 1.0 - ratio;
                    let mask: Vec<f32> = (0..x.len())
                        .map(|_| {
                            if rng.next_f64() < keep as f64 {
                                1.0 / keep
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let y: Vec<f32> = x.f32s()?.iter().zip(&mask).map(|(a, m)| a * m).collect();
                    tape_drop.insert(si, mask);
                    vec![Tensor::from_f32(x.shape().to_vec(), y)]
                }
                _ => self.exec.eval_one(st, &args)?,
            };
            self.clocked(&st.op_type, false, t);
            for (o, t) in st.outputs.iter().zip(res) {
                vals[*o] = Some(Arc::new(t));
            }
        }
        let outs = self
            .exec
            .output_slots()
            .iter()
            .map(|&s| {
                vals[s]
                    .as_deref()
                    .or(consts[s].as_deref())
                    .cloned()
                    .ok_or_else(|| Error::Usage("a graph output was not computed".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((
            outs,
            Tape {
                vals,
                bn: tape_bn,
                dropout: tape_drop,
                fused: fuse,
            },
        ))
    }

    /// Backward pass from the gradients of the graph outputs; returns one
    /// gradient per parameter. Fails, naming the tensor, when a parameter
    /// received none (a path the rules do not cover).
    fn backward(
        &self,
        tape: &Tape,
        out_grads: Vec<Option<Tensor>>,
        extra: Vec<(usize, Tensor)>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.exec.n_slots()];
        for (s, g) in self.exec.output_slots().into_iter().zip(out_grads) {
            grads[s] = g;
        }
        for (s, g) in extra {
            match &mut grads[s] {
                Some(acc) => acc
                    .f32s_mut()?
                    .iter_mut()
                    .zip(g.f32s()?)
                    .for_each(|(a, b)| *a += b),
                slot => *slot = Some(g),
            }
        }
        let consts = self.exec.consts();
        for (si, st) in self.exec.steps().iter().enumerate().rev() {
            let gout: Vec<Option<&Tensor>> =
                st.outputs.iter().map(|&o| grads[o].as_ref()).collect();
            let need: Vec<bool> = st
                .inputs
                .iter()
                .map(|s| s.is_some_and(|s| self.need[s]))
                .collect();
            if gout.iter().all(Option::is_none) || !need.contains(&true) {
                continue;
            }
            if let (true, Some(Fusion::Act { bn })) = (tape.fused, self.fused[si]) {
                // The activation's gradient is masked by its
                // BatchNormalization's backward: hand it on as it is.
                let g = grads[st.outputs[0]].take();
                grads[self.exec.steps()[bn].outputs[0]] = g;
                continue;
            }
            let node = &self.graph.graph.nodes[st.node];
            let ins: Vec<Option<&Tensor>> = st
                .inputs
                .iter()
                .map(|s| s.and_then(|s| tape.vals[s].as_deref().or(consts[s].as_deref())))
                .collect();
            let t = self.clock();
            let gin = if let Some((mean, invstd)) = tape.bn.get(&si) {
                // A fused activation: its output and bounds mask `dy`.
                let act = match self.fused[si] {
                    Some(Fusion::Bn { act: sj, bounds }) => {
                        let y = tape.vals[self.exec.steps()[sj].outputs[0]]
                            .as_deref()
                            .ok_or_else(|| {
                                Error::Usage("a fused activation was not kept".into())
                            })?;
                        Some((y.f32s()?, bounds))
                    }
                    _ => None,
                };
                bn_backward(&ins, gout[0], mean, invstd, act)?
            } else if let Some(mask) = tape.dropout.get(&si) {
                let dy = gout[0].expect("checked above");
                let v: Vec<f32> = dy.f32s()?.iter().zip(mask).map(|(d, m)| d * m).collect();
                vec![Some(Tensor::from_f32(dy.shape().to_vec(), v))]
            } else {
                let outs: Vec<&Tensor> = st
                    .outputs
                    .iter()
                    .filter_map(|&o| tape.vals[o].as_deref())
                    .collect();
                let site = grad::Site {
                    node,
                    op: st.op.as_ref(),
                    opset: self.opset,
                    need: &need,
                };
                grad::backward(&site, &ins, &outs, &gout)?
            };
            self.clocked(&st.op_type, true, t);
            // This step is each output's last reader: free their gradients
            // now, so the allocator hands the same (cache-warm) memory to
            // the next step.
            for &o in &st.outputs {
                grads[o] = None;
            }
            for (slot, g) in st.inputs.iter().zip(gin) {
                let (Some(slot), Some(g)) = (slot, g) else {
                    continue;
                };
                if consts[*slot].is_some() {
                    continue;
                }
                match &mut grads[*slot] {
                    Some(acc) => {
                        for (a, b) in acc.f32s_mut()?.iter_mut().zip(g.f32s()?) {
                            *a += b;
                        }
                    }
                    empty => *empty = Some(g),
                }
            }
        }
        self.params
            .iter()
            .map(|p| match grads[p.slot].take() {
                Some(g) => Ok(g.f32s()?.to_vec()),
                None => Err(Error::Usage(format!(
                    "trainable tensor '{}' received no gradient: no path from it to the loss has backward rules; training supports {}",
                    p.name,
                    grad::SUPPORTED.join(", ")
                ))),
            })
            .collect()
    }

    /// The model with the current parameters and BatchNormalization
    /// running statistics written into the original (`base`) graph.
    pub fn to_model(&self) -> Result<Model> {
        let mut m = self.base.clone();
        let mut put = |name: &str, t: &Tensor| -> Result<()> {
            if let Some(ct) = m.graph.initializers.iter_mut().find(|c| c.name == name) {
                ct.set(t)?;
            }
            Ok(())
        };
        for p in &self.params {
            put(&p.name, &p.value)?;
        }
        for b in self.bn.values() {
            let n = b.mean.len();
            put(&b.mean_name, &Tensor::from_f32(vec![n], b.mean.clone()))?;
            put(&b.var_name, &Tensor::from_f32(vec![n], b.var.clone()))?;
        }
        Ok(m)
    }

    /// Parameters that may be pruned during training: weights of
    /// Conv/Gemm/MatMul whose rows have at least `min_inputs` inputs.
    fn prunable(&self, min_inputs: usize) -> Vec<usize> {
        use crate::prune::unstructured::inputs_per_row;
        (0..self.params.len())
            .filter(|&i| {
                let p = &self.params[i];
                p.layer.is_some_and(|l| {
                    inputs_per_row(&self.graph.graph.nodes[l], p.value.shape())
                        .is_some_and(|k| k >= min_inputs)
                })
            })
            .collect()
    }

    /// Prunes parameter `i` to `keep` (AND-ed with its current mask).
    fn restrict(&mut self, i: usize, keep: Vec<bool>) {
        let p = &mut self.params[i];
        let mask = match p.mask.take() {
            Some(old) => old.iter().zip(&keep).map(|(a, b)| *a && *b).collect(),
            None => keep,
        };
        p.mask = Some(mask);
    }

    /// Magnitude pruning of every prunable layer to `sparsity` under
    /// `pattern` (gradual pruning's step).
    fn prune_magnitude(
        &mut self,
        sparsity: f64,
        pattern: crate::prune::unstructured::Pattern,
        min_inputs: usize,
    ) -> Result<()> {
        use crate::prune::unstructured::{layer_mask, Pattern};
        let pattern = match pattern {
            Pattern::NM { n, m } => Pattern::NM {
                n: (m - ((sparsity * m as f64) + 1e-9).floor() as usize).max(n),
                m,
            },
            p => p,
        };
        for i in self.prunable(min_inputs) {
            let p = &self.params[i];
            let node = &self.graph.graph.nodes[p.layer.expect("prunable")];
            let scores: Vec<f64> = p.value.f32s()?.iter().map(|v| v.abs() as f64).collect();
            if let Some(keep) = layer_mask(node, p.value.shape(), &scores, pattern, sparsity) {
                self.restrict(i, keep);
            }
        }
        self.apply_masks()
    }

    /// Puts the masked zeros back.
    fn apply_masks(&mut self) -> Result<()> {
        for p in &mut self.params {
            if let Some(mask) = &p.mask {
                for (v, &k) in p.value.f32s_mut()?.iter_mut().zip(mask) {
                    if !k {
                        *v = 0.0;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `(Σ f(a[i], b[i], c[i]), Σ g(a[i], b[i], c[i]))`: sixteen f32 lanes
/// each over blocks of [`LANE_BLOCK`] values, the blocks' sums added in
/// f64. Vectorised (AVX2 where the CPU has it), and in a fixed order (the
/// same bytes on every run). A lane adds at most `LANE_BLOCK / 16` values
/// in f32, so its rounding stays near f32's own (callers shift values by
/// a typical one first where squares are summed).
#[inline(always)]
pub(crate) fn lane_sums(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> f32,
    g: impl Fn(f32, f32, f32) -> f32,
) -> (f64, f64) {
    let n = a.len().min(b.len()).min(c.len());
    crate::ops::pool::with_simd(
        #[inline(always)]
        || {
            let (mut tf, mut tg) = (0.0f64, 0.0f64);
            for ((ab, bb), cb) in a[..n]
                .chunks(LANE_BLOCK)
                .zip(b[..n].chunks(LANE_BLOCK))
                .zip(c[..n].chunks(LANE_BLOCK))
            {
                let (mut af, mut ag) = ([0.0f32; 16], [0.0f32; 16]);
                let full = ab.len() / 16 * 16;
                for ((ac, bc), cc) in ab[..full]
                    .chunks_exact(16)
                    .zip(bb[..full].chunks_exact(16))
                    .zip(cb[..full].chunks_exact(16))
                {
                    for l in 0..16 {
                        af[l] += f(ac[l], bc[l], cc[l]);
                        ag[l] += g(ac[l], bc[l], cc[l]);
                    }
                }
                for (l, ((&x, &y), &z)) in ab[full..]
                    .iter()
                    .zip(&bb[full..])
                    .zip(&cb[full..])
                    .enumerate()
                {
                    af[l] += f(x, y, z);
                    ag[l] += g(x, y, z);
                }
                tf += af.iter().map(|&v| v as f64).sum::<f64>();
                tg += ag.iter().map(|&v| v as f64).sum::<f64>();
            }
            (tf, tg)
        },
    )
}

/// Values per f32 block of [`lane_sums`].
const LANE_BLOCK: usize = 1024;

/// Two sums per channel over `[n, c, sp]` data, channels in parallel:
/// `f(offset, len)` gives a plane's pair, added in image order.
pub(crate) fn channel_sums(
    n: usize,
    c: usize,
    sp: usize,
    f: impl Fn(usize, usize) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    use rayon::prelude::*;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n).fold((0.0, 0.0), |(a, b), img| {
                let (x, y) = f((img * c + ch) * sp, sp);
                (a + x, b + y)
            })
        })
        .collect()
}

/// Training-mode BatchNormalization: normalises by the batch statistics
/// and moves the running ones. Returns (y, batch mean, 1/std per channel).
fn bn_train(
    args: &[Option<&Tensor>],
    st: &mut BnState,
    mode: BnMode,
    clamp: Option<(f32, f32)>,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let get = |i: usize| {
        args.get(i)
            .copied()
            .flatten()
            .ok_or_else(|| Error::Usage(format!("input {i} is missing")))
    };
    let x = get(0)?;
    let (scale, bias) = (get(1)?.f32s()?, get(2)?.f32s()?);
    let sh = x.shape();
    let (n, c) = (sh[0], sh[1]);
    let sp: usize = sh[2..].iter().product();
    let xv = x.f32s()?;
    let m = (n * sp) as f64;
    // One pass: sums of x - k and (x - k)² with k a value of the channel,
    // which keeps E[x²] - E[x]² free of cancellation ([`lane_sums`]: f32
    // within blocks, f64 across).
    let shift: Vec<f32> = (0..c)
        .map(|ch| xv.get(ch * sp).copied().unwrap_or(0.0))
        .collect();
    let sums = channel_sums(n, c, sp, |at, len| {
        let (xs, k) = (&xv[at..at + len], shift[(at / len.max(1)) % c]);
        lane_sums(xs, xs, xs, |v, _, _| v - k, |v, _, _| (v - k) * (v - k))
    });
    let mean: Vec<f64> = sums
        .iter()
        .zip(&shift)
        .map(|(s, &k)| k as f64 + s.0 / m)
        .collect();
    let var: Vec<f64> = sums
        .iter()
        .map(|&(s1, s2)| (s2 / m - (s1 / m).powi(2)).max(0.0))
        .collect();
    let invstd: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (v + st.eps as f64).sqrt()) as f32)
        .collect();
    let mean32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let (lo, hi) = clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let y = crate::ops::pool::collect_chunks(xv.len(), sp, |at, len| {
        let ch = (at / sp) % c;
        let (mu, k, b0) = (mean32[ch], invstd[ch] * scale[ch], bias[ch]);
        xv[at..at + len]
            .iter()
            .map(move |&v| ((v - mu) * k + b0).max(lo).min(hi))
    });
    // Running statistics use the unbiased variance (as PyTorch does).
    let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    match mode {
        BnMode::Train => {
            let mo = st.momentum;
            for ch in 0..c {
                st.mean[ch] = mo * st.mean[ch] + (1.0 - mo) * mean[ch] as f32;
                st.var[ch] = mo * st.var[ch] + (1.0 - mo) * (var[ch] * unbias) as f32;
            }
        }
        BnMode::Average => {
            let k = st.seen as f32;
            for ch in 0..c {
                st.mean[ch] = (st.mean[ch] * k + mean[ch] as f32) / (k + 1.0);
                st.var[ch] = (st.var[ch] * k + (var[ch] * unbias) as f32) / (k + 1.0);
            }
            st.seen += 1;
        }
        BnMode::Frozen => {}
    }
    Ok((Tensor::from_f32(sh.to_vec(), y), mean32, invstd))
}

/// Gradients of training-mode BatchNormalization's x, scale and bias,
/// given the batch mean and 1/std of the forward pass. With `act` (the
/// output `y` of a fused Relu or Clip and its bounds), `dy` is the
/// activation's output gradient and passes only where `lo < y < hi`.
fn bn_backward(
    ins: &[Option<&Tensor>],
    dy: Option<&Tensor>,
    mean: &[f32],
    invstd: &[f32],
    act: Option<(&[f32], (f32, f32))>,
) -> Result<Vec<Option<Tensor>>> {
    let (Some(x), Some(scale), Some(dy)) = (ins[0], ins[1], dy) else {
        return Ok(vec![None; ins.len()]);
    };
    let sh = x.shape();
    let (n, c) = (sh[0], sh[1]);
    let sp: usize = sh[2..].iter().product();
    let (xv, dyv, gamma) = (x.f32s()?, dy.f32s()?, scale.f32s()?);
    // Without an activation nothing is masked (`yv` is then unread).
    let masked = act.is_some();
    let (yv, (lo, hi)) = act.unwrap_or((dyv, (0.0, 0.0)));
    if yv.len() != dyv.len() {
        return Err(Error::Usage(
            "a fused activation's output does not match its gradient".into(),
        ));
    }
    // `&`, not `&&`: branch-free, so it vectorises.
    let pass = move |d: f32, y: f32| {
        if !masked | ((y > lo) & (y < hi)) {
            d
        } else {
            0.0
        }
    };
    let sums = channel_sums(n, c, sp, |at, len| {
        let mu = mean[(at / len.max(1)) % c];
        lane_sums(
            &dyv[at..at + len],
            &xv[at..at + len],
            &yv[at..at + len],
            |d, _, y| pass(d, y),
            |d, v, y| pass(d, y) * (v - mu),
        )
    });
    let dbeta: Vec<f64> = sums.iter().map(|s| s.0).collect();
    let dgamma: Vec<f64> = sums
        .iter()
        .zip(invstd)
        .map(|(s, &is)| s.1 * is as f64)
        .collect();
    let m = (n * sp) as f32;
    let dx = crate::ops::pool::collect_chunks(dyv.len(), sp, |at, len| {
        let ch = (at / sp) % c;
        let (mu, is) = (mean[ch], invstd[ch]);
        let k = gamma[ch] * is / m;
        let (db, dg) = (dbeta[ch] as f32, dgamma[ch] as f32);
        xv[at..at + len]
            .iter()
            .zip(&dyv[at..at + len])
            .zip(&yv[at..at + len])
            .map(move |((&v, &d), &y)| k * (m * pass(d, y) - db - (v - mu) * is * dg))
    });
    let mut g = vec![None; ins.len()];
    g[0] = Some(Tensor::from_f32(sh.to_vec(), dx));
    g[1] = Some(Tensor::from_f32(
        vec![c],
        dgamma.iter().map(|&v| v as f32).collect(),
    ));
    g[2] = Some(Tensor::from_f32(
        vec![c],
        dbeta.iter().map(|&v| v as f32).collect(),
    ));
    Ok(g)
}

/// Light augmentation of image batches `[N, C, H, W]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Random horizontal flips.
    pub flip: bool,
    /// Random crops after zero padding by this many pixels (0: none).
    pub crop_pad: usize,
}

impl Augment {
    fn apply(&self, t: &mut Tensor, rng: &mut Rng) -> Result<()> {
        if (!self.flip && self.crop_pad == 0) || t.rank() != 4 || t.dtype() != DType::F32 {
            return Ok(());
        }
        let sh = t.shape().to_vec();
        let (c, h, w) = (sh[1], sh[2], sh[3]);
        let pad = self.crop_pad as isize;
        let v = t.f32s_mut()?;
        for img in v.chunks_mut(c * h * w) {
            let flip = self.flip && rng.next_f64() < 0.5;
            let (dy, dx) = if pad > 0 {
                (
                    rng.below(2 * pad as usize + 1) as isize - pad,
                    rng.below(2 * pad as usize + 1) as isize - pad,
                )
            } else {
                (0, 0)
            };
            if !flip && dy == 0 && dx == 0 {
                continue;
            }
            let src = img.to_vec();
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let sx = if flip { w - 1 - x } else { x } as isize + dx;
                        let sy = y as isize + dy;
                        img[(ch * h + y) * w + x] =
                            if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                                src[(ch * h + sy as usize) * w + sx as usize]
                            } else {
                                0.0
                            };
                    }
                }
            }
        }
        Ok(())
    }
}

/// Options of [`recover`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoverOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Samples per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Optimizer.
    pub optimizer: OptimKind,
    /// Weight decay.
    pub weight_decay: f32,
    /// Schedule.
    pub schedule: Schedule,
    /// Warm-up steps.
    pub warmup: usize,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub clip: Option<f32>,
    /// Distillation temperature.
    pub temperature: f32,
    /// With labels and a teacher: loss = alpha · KD + (1 − alpha) · CE.
    pub alpha: f32,
    /// Augmentation of image inputs.
    pub augment: Augment,
    /// Seed of shuffling, augmentation and dropout.
    pub seed: u64,
    /// Gradual magnitude pruning during training.
    pub gradual: Option<Gradual>,
    /// Pruning at initialization: SNIP to this sparsity before training.
    pub snip: Option<f64>,
    /// Layers whose rows have fewer inputs stay dense under `gradual` and
    /// `snip` (a 1-channel first conv has 9).
    pub min_inputs: usize,
    /// Intermediate tensors (by name) distilled by MSE against the
    /// teacher's (detector necks, encoder layers); shapes must agree.
    pub features: Vec<String>,
    /// Weight of the feature losses.
    pub feature_weight: f32,
    /// Wall-clock budget in seconds: after timing the first steps, the run
    /// (and its schedule) is shortened to fit. The step count then depends
    /// on the machine.
    pub max_seconds: Option<f64>,
    /// BatchNormalization keeps its running statistics and uses them
    /// (frozen), as detectors are usually fine-tuned with small batches;
    /// its scale and bias still train.
    pub freeze_bn: bool,
    /// A model input holding a `[batch, seq]` token mask (an encoder's
    /// `attention_mask`): MSE on outputs and features shaped `[batch, seq,
    /// ...]` then counts only the positions it keeps, not padding. When
    /// `None`, an input named `attention_mask` holding only 0s and 1s
    /// serves.
    pub loss_mask: Option<String>,
}

impl RecoverOptions {
    fn bn_mode(&self) -> BnMode {
        if self.freeze_bn {
            BnMode::Frozen
        } else {
            BnMode::Train
        }
    }
}

/// Gradual pruning during training (Zhu & Gupta 2017): at steps `start`,
/// `start + every`, ... up to `end`, each weight layer is pruned by
/// magnitude to `s_t = s_f + (s_i − s_f)(1 − (t − start)/(end − start))³`.
/// Under an N:M pattern the kept count per group steps down (4:4, 3:4,
/// 2:4). Pruned weights never come back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Gradual {
    /// Final sparsity `s_f` (for N:M, `1 − N/M`).
    pub sparsity: f64,
    /// Initial sparsity `s_i`.
    pub initial: f64,
    /// Pattern.
    pub pattern: crate::prune::unstructured::Pattern,
    /// First pruning step.
    pub start: usize,
    /// Last pruning step (the sparsity is final from here).
    pub end: usize,
    /// Steps between prunings.
    pub every: usize,
}

impl Gradual {
    /// The sparsity to prune to at `step`, if it is a pruning step.
    pub fn sparsity_at(&self, step: usize) -> Option<f64> {
        let every = self.every.max(1);
        if step < self.start || step > self.end || !(step - self.start).is_multiple_of(every) {
            // The last step always lands on the final sparsity.
            if step != self.end {
                return None;
            }
        }
        let span = (self.end - self.start).max(1) as f64;
        let frac = ((step - self.start) as f64 / span).min(1.0);
        Some(self.sparsity + (self.initial - self.sparsity) * (1.0 - frac).powi(3))
    }
}

impl Default for RecoverOptions {
    fn default() -> Self {
        RecoverOptions {
            steps: 100,
            batch: 64,
            lr: 0.005,
            optimizer: OptimKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            weight_decay: 5e-4,
            schedule: Schedule::Cosine,
            warmup: 0,
            clip: None,
            temperature: 2.0,
            alpha: 1.0,
            augment: Augment::default(),
            seed: 0,
            gradual: None,
            snip: None,
            min_inputs: 32,
            features: Vec::new(),
            feature_weight: 1.0,
            max_seconds: None,
            freeze_bn: false,
            loss_mask: None,
        }
    }
}

/// Progress of one step.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: usize,
    /// Of this many.
    pub total: usize,
    /// Loss of this step.
    pub loss: f32,
    /// Training accuracy of this batch, with labels.
    pub accuracy: Option<f32>,
    /// Learning rate used.
    pub lr: f32,
    /// Samples in this step.
    pub samples: usize,
}

/// The loss and the output gradients for one batch.
fn loss_and_grads(
    outs: &[Tensor],
    teacher: Option<&[Tensor]>,
    labels: Option<&[i64]>,
    mask: Option<&Tensor>,
    opts: &RecoverOptions,
) -> Result<(f32, Vec<Option<Tensor>>, Option<usize>)> {
    let mut total = 0.0f32;
    let mut grads: Vec<Option<Tensor>> = vec![None; outs.len()];
    let mut right = None;
    let kd_weight = if labels.is_some() { opts.alpha } else { 1.0 };
    if let Some(t) = teacher {
        for (i, (s, tt)) in outs.iter().zip(t).enumerate() {
            if s.dtype() != DType::F32 || s.shape() != tt.shape() {
                continue;
            }
            let (sv, tv) = (s.f32s()?, tt.f32s()?);
            let (l, g) = if s.rank() == 2 {
                loss::distill_kl(sv, tv, s.shape()[1], opts.temperature)
            } else {
                mse_under(s, sv, tv, mask)?
            };
            total += kd_weight * l;
            grads[i] = Some(Tensor::from_f32(
                s.shape().to_vec(),
                g.into_iter().map(|v| v * kd_weight).collect(),
            ));
        }
    }
    if let Some(lab) = labels {
        let s = &outs[0];
        if s.rank() != 2 {
            return Err(Error::Usage(format!(
                "labels need a [batch, classes] first output; it is {:?}",
                s.shape()
            )));
        }
        let w = if teacher.is_some() {
            1.0 - opts.alpha
        } else {
            1.0
        };
        let (l, g, r) = loss::cross_entropy(s.f32s()?, s.shape()[1], lab)?;
        right = Some(r);
        if w > 0.0 {
            total += w * l;
            let add: Vec<f32> = g.into_iter().map(|v| v * w).collect();
            match &mut grads[0] {
                Some(acc) => acc
                    .f32s_mut()?
                    .iter_mut()
                    .zip(&add)
                    .for_each(|(a, b)| *a += b),
                slot => *slot = Some(Tensor::from_f32(s.shape().to_vec(), add)),
            }
        }
    }
    if grads.iter().all(Option::is_none) {
        return Err(Error::Usage(
            "nothing to learn from: give a teacher model or labels".into(),
        ));
    }
    Ok((total, grads, right))
}

/// MSE of `s` (values `sv`) against `tv`, counting only the positions
/// `mask` keeps when `s` is shaped `[mask shape..., ...]`.
fn mse_under(s: &Tensor, sv: &[f32], tv: &[f32], mask: Option<&Tensor>) -> Result<(f32, Vec<f32>)> {
    Ok(match mask {
        Some(m) if s.rank() > m.rank() && s.shape().starts_with(m.shape()) => {
            loss::masked_mse(sv, tv, m.f32s()?)
        }
        _ => loss::mse(sv, tv),
    })
}

/// The input named `attention_mask` (the usual name of an encoder's
/// token mask), used as the loss mask when none is named.
const AUTO_LOSS_MASK: &str = "attention_mask";

/// The `[batch, seq]` loss mask of one batch, as f32 (see
/// [`RecoverOptions::loss_mask`]).
fn loss_mask_of(feeds: &[(String, Tensor)], name: Option<&str>) -> Result<Option<Tensor>> {
    let find = |n: &str| feeds.iter().find(|(k, _)| k == n).map(|(_, t)| t);
    let (t, values) = match name {
        Some(name) => {
            let t = find(name).ok_or_else(|| Error::Input {
                name: name.to_string(),
                detail: "the loss mask names no input of the training data".into(),
            })?;
            (t, t.to_f64_vec())
        }
        None => match find(AUTO_LOSS_MASK).map(|t| (t, t.to_f64_vec())) {
            // Only a 0/1 mask: an additive one (0 keeps, -1e4 masks)
            // would read inverted.
            Some((t, v)) if v.iter().all(|&x| x == 0.0 || x == 1.0) => (t, v),
            _ => return Ok(None),
        },
    };
    let m: Vec<f32> = values
        .into_iter()
        .map(|x| (x != 0.0) as u8 as f32)
        .collect();
    Ok(Some(Tensor::from_f32(t.shape().to_vec(), m)))
}

/// Rows `idx` of every input.
fn gather(data: &Feeds, idx: &[usize]) -> Result<Vec<(String, Tensor)>> {
    data.0
        .iter()
        .map(|(k, t)| Ok((k.clone(), crate::ops::layout::take(t, 0, idx)?)))
        .collect()
}

/// Where a training run stands, to continue it exactly: the model so far
/// (parameters and BatchNormalization statistics), the step, the random
/// generator, the data order and the optimizer's moments.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The model after `step` steps.
    pub model: Model,
    /// Steps done.
    pub step: usize,
    /// Steps planned.
    pub total: usize,
    rng: u64,
    order: Vec<usize>,
    pos: usize,
    moments: (Vec<Vec<f32>>, Vec<Vec<f32>>, u64),
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    format: u32,
    step: usize,
    total: usize,
    rng: u64,
    order: Vec<usize>,
    pos: usize,
    adam_steps: u64,
    m_sizes: Vec<usize>,
    v_sizes: Vec<usize>,
}

impl Checkpoint {
    /// Writes the checkpoint as one zip file (`model.onnx`, `state.json`,
    /// `m.npy`, `v.npy`), atomically.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        use std::io::Write;
        let (m, v, t) = &self.moments;
        let state = CheckpointState {
            format: 1,
            step: self.step,
            total: self.total,
            rng: self.rng,
            order: self.order.clone(),
            pos: self.pos,
            adam_steps: *t,
            m_sizes: m.iter().map(Vec::len).collect(),
            v_sizes: v.iter().map(Vec::len).collect(),
        };
        let flat = |x: &[Vec<f32>]| {
            let all: Vec<f32> = x.iter().flatten().copied().collect();
            crate::data::npy::to_bytes(&Tensor::from_f32(vec![all.len()], all))
        };
        let io = |e: std::io::Error| Error::Io {
            path: path.to_path_buf(),
            error: e,
        };
        let zerr = |e: zip::result::ZipError| Error::Data {
            path: path.to_path_buf(),
            detail: format!("writing the checkpoint: {e}"),
        };
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default();
        for (name, bytes) in [
            ("model.onnx", crate::onnx::to_bytes(&self.model)?),
            (
                "state.json",
                serde_json::to_vec(&state).map_err(|e| Error::Usage(e.to_string()))?,
            ),
            ("m.npy", flat(m)?),
            ("v.npy", flat(v)?),
        ] {
            w.start_file(name, o).map_err(zerr)?;
            w.write_all(&bytes).map_err(io)?;
        }
        let bytes = w.finish().map_err(zerr)?.into_inner();
        crate::onnx::write_atomic(path, &bytes)
    }

    /// Reads a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &std::path::Path) -> Result<Checkpoint> {
        use std::io::Read;
        let bad = |detail: String| Error::Data {
            path: path.to_path_buf(),
            detail,
        };
        let file = std::fs::File::open(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            error: e,
        })?;
        let mut z = zip::ZipArchive::new(file)
            .map_err(|e| bad(format!("not a potatura checkpoint: {e}")))?;
        let mut read = |name: &str| -> Result<Vec<u8>> {
            let mut f = z
                .by_name(name)
                .map_err(|e| bad(format!("not a potatura checkpoint (no {name}: {e})")))?;
            let mut b = Vec::new();
            f.read_to_end(&mut b)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            Ok(b)
        };
        let state: CheckpointState = serde_json::from_slice(&read("state.json")?)
            .map_err(|e| bad(format!("state.json: {e}")))?;
        let model = crate::onnx::load_bytes(&read("model.onnx")?, None, path)?;
        let split = |bytes: Vec<u8>, sizes: &[usize]| -> Result<Vec<Vec<f32>>> {
            let t = crate::data::npy::parse(&bytes, path)?;
            let all = t.f32s()?;
            if all.len() != sizes.iter().sum::<usize>() {
                return Err(bad("optimizer moments do not match their sizes".into()));
            }
            let mut at = 0;
            Ok(sizes
                .iter()
                .map(|&n| {
                    at += n;
                    all[at - n..at].to_vec()
                })
                .collect())
        };
        let m = split(read("m.npy")?, &state.m_sizes)?;
        let v = split(read("v.npy")?, &state.v_sizes)?;
        Ok(Checkpoint {
            model,
            step: state.step,
            total: state.total,
            rng: state.rng,
            order: state.order,
            pos: state.pos,
            moments: (m, v, state.adam_steps),
        })
    }
}

/// Checkpointing and resumption for [`recover_with`].
pub struct Hooks<'a> {
    /// Sees each step; returning false stops (Ctrl-C) after a checkpoint.
    pub on_step: &'a mut dyn FnMut(&StepReport) -> bool,
    /// Checkpoint every this many steps (0: only when stopped early).
    pub checkpoint_every: usize,
    /// Receives the checkpoints.
    pub on_checkpoint: &'a mut dyn FnMut(&Checkpoint) -> Result<()>,
    /// Continue from this checkpoint (its model replaces the student).
    pub resume: Option<Checkpoint>,
}

/// Recovers a pruned `student` by training on `data`: distillation from
/// `teacher` (the unpruned model) without labels, cross-entropy with
/// `labels`, or both (`alpha`). Masks hold: every zero weight of the
/// student is still zero after training. `on_step` sees each step and
/// returns false to stop early (Ctrl-C); the model so far is returned.
pub fn recover(
    student: &Model,
    teacher: Option<&Model>,
    data: &Feeds,
    labels: Option<&[i64]>,
    opts: &RecoverOptions,
    on_step: &mut dyn FnMut(&StepReport) -> bool,
) -> Result<Model> {
    let mut none = |_: &Checkpoint| Ok(());
    recover_with(
        student,
        teacher,
        data,
        labels,
        opts,
        Hooks {
            on_step,
            checkpoint_every: 0,
            on_checkpoint: &mut none,
            resume: None,
        },
    )
}

/// [`recover`] with checkpoints and resumption.
pub fn recover_with(
    student: &Model,
    teacher: Option<&Model>,
    data: &Feeds,
    labels: Option<&[i64]>,
    opts: &RecoverOptions,
    hooks: Hooks<'_>,
) -> Result<Model> {
    let Hooks {
        on_step,
        checkpoint_every,
        on_checkpoint,
        resume,
    } = hooks;
    let student = match &resume {
        Some(c) => &c.model,
        None => student,
    };
    let n = data.samples();
    if n == 0 {
        return Err(Error::Usage("no training samples".into()));
    }
    if let Some(l) = labels {
        if l.len() != n {
            return Err(Error::Usage(format!("{} labels for {n} samples", l.len())));
        }
    }
    let relaxed = crate::exec::relax_batch(student, data);
    let mut tr = Trainable::new(relaxed.as_ref().unwrap_or(student), student)?;
    let teacher_exec = match teacher {
        Some(t) => Some(Executor::new(
            crate::exec::relax_batch(t, data).as_ref().unwrap_or(t),
        )?),
        None => None,
    };
    let batch = if relaxed.is_none() {
        tr.exec.batch_size(opts.batch)
    } else {
        opts.batch
    }
    .clamp(1, n);
    let sizes: Vec<usize> = tr.params.iter().map(|p| p.value.len()).collect();
    let mut opt = Optimizer::new(opts.optimizer, opts.weight_decay, &sizes);
    let mut rng = Rng::new(opts.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut pos = n;
    let mut first = 0;
    if let Some(c) = &resume {
        if c.order.len() != n {
            return Err(Error::Usage(format!(
                "the checkpoint was made on {} samples, this data has {n}; resume with the same data",
                c.order.len()
            )));
        }
        let (m, v, t) = c.moments.clone();
        if !opt.set_state(m, v, t) {
            return Err(Error::Usage(
                "the checkpoint's optimizer state does not fit this model or --optimizer".into(),
            ));
        }
        rng = Rng::from_state(c.rng);
        order = c.order.clone();
        pos = c.pos;
        first = c.step;
    }
    let snapshot = |tr: &Trainable,
                    step: usize,
                    rng: &Rng,
                    order: &[usize],
                    pos: usize,
                    opt: &Optimizer|
     -> Result<Checkpoint> {
        let (m, v, t) = opt.state();
        Ok(Checkpoint {
            model: tr.to_model()?,
            step,
            total: opts.steps,
            rng: rng.state(),
            order: order.to_vec(),
            pos,
            moments: (m.to_vec(), v.to_vec(), t),
        })
    };
    if let (Some(sp), None) = (opts.snip, &resume) {
        // SNIP (Lee et al. 2019): connection sensitivity |g · w| on one
        // batch at initialization, one global threshold.
        let idx: Vec<usize> = (0..batch).collect();
        let feeds = gather(data, &idx)?;
        let t_out = match &teacher_exec {
            Some(e) => Some(
                e.run(feeds.clone())?
                    .into_iter()
                    .map(|(_, t)| t)
                    .collect::<Vec<_>>(),
            ),
            None => None,
        };
        let lab: Option<Vec<i64>> = labels.map(|l| idx.iter().map(|&i| l[i]).collect());
        let mask = loss_mask_of(&feeds, opts.loss_mask.as_deref())?;
        let (outs, tape) = tr.forward(&feeds, opts.bn_mode(), &mut rng)?;
        let (_, out_grads, _) =
            loss_and_grads(&outs, t_out.as_deref(), lab.as_deref(), mask.as_ref(), opts)?;
        let grads = tr.backward(&tape, out_grads, Vec::new())?;
        drop(tape);
        let prunable = tr.prunable(opts.min_inputs);
        let mut all: Vec<f64> = Vec::new();
        let mut per: Vec<Vec<f64>> = Vec::new();
        for &i in &prunable {
            let w = tr.params[i].value.f32s()?;
            let sc: Vec<f64> = w
                .iter()
                .zip(&grads[i])
                .map(|(w, g)| (w * g).abs() as f64)
                .collect();
            all.extend(&sc);
            per.push(sc);
        }
        let k = ((sp.clamp(0.0, 1.0) * all.len() as f64) as usize).min(all.len());
        if k > 0 {
            all.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
            let thr = all[k - 1];
            for (&i, sc) in prunable.iter().zip(per) {
                tr.restrict(i, sc.iter().map(|&v| v > thr).collect());
            }
            tr.apply_masks()?;
        }
    }
    if !opts.features.is_empty() && teacher_exec.is_none() {
        return Err(Error::Usage(
            "feature distillation needs a teacher model".into(),
        ));
    }
    let feature_slots: Vec<(usize, String)> = opts
        .features
        .iter()
        .map(|f| {
            tr.exec
                .value_slot(f)
                .map(|s| (s, f.clone()))
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "feature '{f}': the student computes no tensor of that name"
                    ))
                })
        })
        .collect::<Result<_>>()?;
    for (slot, _) in &feature_slots {
        tr.keep_value(*slot);
    }
    // A time budget shortens the run (and its schedule) once the first
    // steps have been timed.
    let mut total = opts.steps;
    let started = std::time::Instant::now();
    let mut step = first;
    while step < total {
        // The time budget: after 3 steps, and again every 16 steps (the
        // machine may slow down), the run is shortened to the steps that
        // still fit at the mean step time so far.
        let done = step - first;
        if let (Some(budget), true) = (opts.max_seconds, done >= 3 && (done == 3 || done % 16 == 0))
        {
            let elapsed = started.elapsed().as_secs_f64();
            let per = elapsed / done as f64;
            total = total.min(step + ((budget - elapsed) / per.max(1e-9)).max(1.0) as usize);
        }
        if let Some(g) = &opts.gradual {
            if let Some(s_t) = g.sparsity_at(step) {
                tr.prune_magnitude(s_t, g.pattern, opts.min_inputs)?;
                for (i, p) in tr.params.iter().enumerate() {
                    if let Some(mask) = &p.mask {
                        opt.mask_state(i, mask);
                    }
                }
            }
        }
        if pos + batch > n {
            rng.shuffle(&mut order);
            pos = 0;
        }
        let idx = &order[pos..pos + batch];
        pos += batch;
        let mut feeds = gather(data, idx)?;
        for (_, t) in feeds.iter_mut() {
            opts.augment.apply(t, &mut rng)?;
        }
        let mut t_feats: Vec<Tensor> = Vec::new();
        let t_out = match &teacher_exec {
            Some(e) => {
                let mut found: HashMap<String, Tensor> = HashMap::new();
                let outs = e.run_observed(feeds.clone(), &mut |n, t| {
                    if opts.features.iter().any(|f| f == n) {
                        found.insert(n.to_string(), t.clone());
                    }
                })?;
                for f in &opts.features {
                    t_feats.push(found.remove(f).ok_or_else(|| {
                        Error::Usage(format!("the teacher has no computed tensor '{f}'"))
                    })?);
                }
                Some(outs.into_iter().map(|(_, t)| t).collect::<Vec<_>>())
            }
            None => None,
        };
        let lab: Option<Vec<i64>> = labels.map(|l| idx.iter().map(|&i| l[i]).collect());
        let mask = loss_mask_of(&feeds, opts.loss_mask.as_deref())?;
        let (outs, tape) = tr.forward(&feeds, opts.bn_mode(), &mut rng)?;
        let (mut loss, out_grads, right) =
            loss_and_grads(&outs, t_out.as_deref(), lab.as_deref(), mask.as_ref(), opts)?;
        // MSE on named intermediate features against the teacher's.
        let mut extra = Vec::new();
        for (k, (slot, name)) in feature_slots.iter().enumerate() {
            let s = tape.vals[*slot]
                .as_deref()
                .ok_or_else(|| Error::Usage(format!("feature '{name}' was not computed")))?;
            let t = &t_feats[k];
            if s.shape() != t.shape() {
                return Err(Error::Usage(format!(
                    "feature '{name}' has shape {:?} in the student but {:?} in the teacher; distil features whose channels were not pruned",
                    s.shape(),
                    t.shape()
                )));
            }
            let (l, g) = mse_under(s, s.f32s()?, t.f32s()?, mask.as_ref())?;
            loss += opts.feature_weight * l;
            extra.push((
                *slot,
                Tensor::from_f32(
                    s.shape().to_vec(),
                    g.into_iter().map(|v| v * opts.feature_weight).collect(),
                ),
            ));
        }
        if !loss.is_finite() {
            return Err(Error::Usage(format!(
                "the loss became {loss} at step {}; lower --lr",
                step + 1
            )));
        }
        let mut grads = tr.backward(&tape, out_grads, extra)?;
        drop(tape);
        if let Some(c) = opts.clip {
            optim::clip_global_norm(&mut grads, c);
        }
        let lr = optim::lr_at(opts.schedule, opts.lr, step, total, opts.warmup);
        {
            let decay: Vec<bool> = tr.params.iter().map(|p| p.decay).collect();
            let mut views: Vec<&mut [f32]> = tr
                .params
                .iter_mut()
                .map(|p| p.value.f32s_mut())
                .collect::<Result<_>>()?;
            opt.step(&mut views, &grads, &decay, lr);
        }
        for (i, p) in tr.params.iter().enumerate() {
            if let Some(mask) = &p.mask {
                opt.mask_state(i, mask);
            }
        }
        tr.apply_masks()?;
        let report = StepReport {
            step: step + 1,
            total,
            loss,
            accuracy: right.map(|r| r as f32 / batch as f32),
            lr,
            samples: batch,
        };
        let go_on = on_step(&report);
        let due = checkpoint_every > 0 && (step + 1) % checkpoint_every == 0 && step + 1 < total;
        if !go_on || due {
            on_checkpoint(&snapshot(&tr, step + 1, &rng, &order, pos, &opt)?)?;
        }
        if !go_on {
            break;
        }
        step += 1;
    }
    if let Some(Ok(t)) = tr.times.as_ref().map(|m| m.lock()) {
        t.log(step - first);
    }
    tr.to_model()
}

/// Iterative structured pruning (prune a little, recover, repeat): in each
/// of `rounds` rounds the current model is pruned to `f^(1/rounds)` of its
/// own MACs or parameters (so the last round reaches `f` of the
/// original's), then recovered by [`recover`] with `ropts` (its steps are
/// per round) against the original model as teacher. `on_round(r,
/// pruned)` sees each round's pruned model before it is recovered.
#[allow(clippy::too_many_arguments)]
pub fn prune_iteratively(
    model: &Model,
    inputs: &[crate::ir::InputShape],
    popts: &crate::prune::Options,
    calib: Option<&Feeds>,
    rounds: usize,
    data: &Feeds,
    labels: Option<&[i64]>,
    ropts: &RecoverOptions,
    on_round: &mut dyn FnMut(usize, &Model),
    on_step: &mut dyn FnMut(&StepReport) -> bool,
) -> Result<Model> {
    use crate::prune::Target;
    let rounds = rounds.max(1);
    let step_target = match popts.select.target {
        Target::Macs(f) => Target::Macs(f.powf(1.0 / rounds as f64)),
        Target::Params(f) => Target::Params(f.powf(1.0 / rounds as f64)),
        other => {
            return Err(Error::Usage(format!(
                "iterative pruning needs a MACs or parameter target, not {other:?}"
            )))
        }
    };
    let mut current = model.clone();
    let mut stop = false;
    for r in 0..rounds {
        let mut o = popts.clone();
        o.select.target = step_target;
        let pruned = crate::prune::structured(&current, inputs, &o, calib)?.model;
        on_round(r, &pruned);
        current = recover(&pruned, Some(model), data, labels, ropts, &mut |rep| {
            let go = on_step(rep);
            stop |= !go;
            go
        })?;
        if stop {
            break;
        }
    }
    Ok(current)
}

/// Re-estimates BatchNormalization running statistics of `model` on
/// `data` (forward passes only, in batches of `batch`): each becomes the
/// average of the batch statistics. Pruning shifts activations; this
/// repairs the mismatch at the cost of a few forward passes.
pub fn recalibrate_bn(model: &Model, data: &Feeds, batch: usize) -> Result<Model> {
    let relaxed = crate::exec::relax_batch(model, data);
    let mut tr = Trainable::new(relaxed.as_ref().unwrap_or(model), model)?;
    let size = if relaxed.is_none() {
        tr.exec.batch_size(batch)
    } else {
        batch
    };
    let mut rng = Rng::new(0);
    for b in data.batches(size.max(1))? {
        tr.forward(&b, BnMode::Average, &mut rng)?;
    }
    tr.to_model()
}

#[cfg(test)]
mod tests;
