//! Forward execution of a graph on the CPU, and shape inference.
//!
//! [`Executor::new`] builds every op once (collecting *all* unsupported
//! ops into one error), folds the nodes that depend only on constants, and
//! plans when each intermediate value can be freed. Parallelism lives
//! inside the ops (rayon, gemm).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, InputShape, Model, Node, Tensor};
use crate::ops::{self, Fact, Op};

/// One planned node.
#[derive(Debug)]
pub(crate) struct Step {
    /// Index of the node in the graph.
    pub(crate) node: usize,
    pub(crate) label: String,
    pub(crate) op_type: String,
    pub(crate) op: Box<dyn Op>,
    pub(crate) inputs: Vec<Option<usize>>,
    pub(crate) outputs: Vec<usize>,
    out_names: Vec<String>,
    /// Slots whose last reader is this step.
    frees: Vec<usize>,
}

/// A hook called before each executed node with its graph index and
/// inputs; it returns input replacements `(position, tensor)` for that node.
pub type BeforeNode<'a> = dyn FnMut(usize, &[Option<&Tensor>]) -> Result<Vec<(usize, Tensor)>> + 'a;

/// A hook of [`Executor::run_paired`]: node index, the reference stream's
/// inputs, the current stream's inputs; returns replacements for the
/// current stream.
pub type PairedHook<'a> =
    dyn FnMut(usize, &[Option<&Tensor>], &[Option<&Tensor>]) -> Result<Vec<(usize, Tensor)>> + 'a;

/// The measured time of one executed node.
#[derive(Clone, Debug)]
pub struct StepTime {
    /// Index of the node in the graph.
    pub index: usize,
    /// Node label (its name, or its first output).
    pub node: String,
    /// Operator type.
    pub op_type: String,
    /// Median wall time over the profiled runs.
    pub median: Duration,
}

/// A graph input the executor expects.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Declared shape, when declared.
    pub shape: Option<Vec<Dim>>,
    slot: usize,
}

/// A compiled, reusable plan to run one model.
#[derive(Debug)]
pub struct Executor {
    steps: Vec<Step>,
    consts: Vec<Option<Arc<Tensor>>>,
    inputs: Vec<InputSpec>,
    outputs: Vec<(String, usize)>,
    n_slots: usize,
}

/// Builds the ops of every node, or one error listing every unsupported node.
pub(crate) fn build_ops(model: &Model) -> Result<Vec<Box<dyn Op>>> {
    let opset = model.opset();
    let unsupported: Vec<(String, String, String)> = model
        .graph
        .nodes
        .iter()
        .filter(|n| !ops::is_supported(n))
        .map(|n| (n.label(), n.domain.clone(), n.op_type.clone()))
        .collect();
    if !unsupported.is_empty() {
        return Err(Error::UnsupportedOps { nodes: unsupported });
    }
    model
        .graph
        .nodes
        .iter()
        .map(|n| {
            ops::build(n, opset)
                .and_then(|o| o.ok_or_else(|| node_error(n, "not supported".into())))
                .map_err(|e| wrap(n, e, &[]))
        })
        .collect()
}

fn node_error(n: &Node, detail: String) -> Error {
    Error::op(&n.label(), &n.op_type, detail)
}

/// Adds the node name (and input shapes) to an error raised inside an op.
fn wrap(n: &Node, e: Error, shapes: &[String]) -> Error {
    match e {
        Error::Usage(msg) => {
            let detail = if shapes.is_empty() {
                msg
            } else {
                format!("{msg} (inputs: {})", shapes.join(", "))
            };
            node_error(n, detail)
        }
        other => other,
    }
}

fn describe(t: Option<&Tensor>) -> String {
    match t {
        Some(t) => format!("{}{:?}", t.dtype(), t.shape()),
        None => "-".into(),
    }
}

impl Executor {
    /// Plans `model` for execution.
    pub fn new(model: &Model) -> Result<Executor> {
        let g = &model.graph;
        let ops = build_ops(model)?;
        let order = g.topo_order()?;
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut consts: Vec<Option<Arc<Tensor>>> = Vec::new();
        let mut slot = |name: &str, consts: &mut Vec<Option<Arc<Tensor>>>| -> usize {
            if let Some(&s) = slot_of.get(name) {
                return s;
            }
            consts.push(None);
            slot_of.insert(name.to_string(), consts.len() - 1);
            consts.len() - 1
        };
        for t in &g.initializers {
            let s = slot(&t.name, &mut consts);
            consts[s] = Some(Arc::new(t.to_tensor()?));
        }
        let inputs: Vec<InputSpec> = g
            .real_inputs()
            .into_iter()
            .map(|v| {
                Ok(InputSpec {
                    name: v.name.clone(),
                    dtype: v.dtype.ok_or_else(|| Error::Input {
                        name: v.name.clone(),
                        detail: "the model declares no element type for this input".into(),
                    })?,
                    shape: v.shape.clone(),
                    slot: slot(&v.name, &mut consts),
                })
            })
            .collect::<Result<_>>()?;
        let mut ops: Vec<Option<Box<dyn Op>>> = ops.into_iter().map(Some).collect();
        let mut steps = Vec::new();
        for &i in &order {
            let n = &g.nodes[i];
            let op = ops[i].take().expect("each node planned once");
            let ins: Vec<Option<usize>> = n
                .inputs
                .iter()
                .map(|s| {
                    if s.is_empty() {
                        None
                    } else {
                        Some(slot(s, &mut consts))
                    }
                })
                .collect();
            let outs: Vec<usize> = n.outputs.iter().map(|s| slot(s, &mut consts)).collect();
            // Fold nodes whose inputs are all constants.
            let foldable = ins.iter().flatten().all(|&s| consts[s].is_some());
            if foldable {
                let args: Vec<Option<&Tensor>> = ins
                    .iter()
                    .map(|s| s.map(|s| consts[s].as_deref().unwrap()))
                    .collect();
                let shapes: Vec<String> = args.iter().map(|t| describe(*t)).collect();
                let res = op.eval(&args).map_err(|e| wrap(n, e, &shapes))?;
                for (o, t) in outs.iter().zip(res) {
                    consts[*o] = Some(Arc::new(t));
                }
                continue;
            }
            steps.push(Step {
                node: i,
                label: n.label(),
                op_type: n.op_type.clone(),
                op,
                inputs: ins,
                outputs: outs,
                out_names: n.outputs.clone(),
                frees: Vec::new(),
            });
        }
        let outputs: Vec<(String, usize)> = g
            .outputs
            .iter()
            .map(|o| {
                slot_of
                    .get(&o.name)
                    .map(|&s| (o.name.clone(), s))
                    .ok_or_else(|| Error::InvalidModel {
                        path: Default::default(),
                        detail: format!("graph output '{}' is not produced by any node", o.name),
                    })
            })
            .collect::<Result<_>>()?;
        // Free each computed slot after its last reader, unless it is an output.
        let n_slots = consts.len();
        let mut last_use = vec![None; n_slots];
        for (si, st) in steps.iter().enumerate() {
            for s in st.inputs.iter().flatten() {
                last_use[*s] = Some(si);
            }
        }
        for (_, s) in &outputs {
            last_use[*s] = None;
        }
        for (s, lu) in last_use.iter().enumerate() {
            if let (Some(si), None) = (lu, &consts[s]) {
                steps[*si].frees.push(s);
            }
        }
        Ok(Executor {
            steps,
            consts,
            inputs,
            outputs,
            n_slots,
        })
    }

    /// The planned steps, in execution order (for training).
    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Constant values by slot (initializers and folded nodes).
    pub(crate) fn consts(&self) -> &[Option<Arc<Tensor>>] {
        &self.consts
    }

    /// Number of value slots.
    pub(crate) fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Slot of a graph input.
    pub(crate) fn input_slot(&self, name: &str) -> Option<usize> {
        self.inputs.iter().find(|s| s.name == name).map(|s| s.slot)
    }

    /// Slot of a computed value (a node output), by name.
    pub(crate) fn value_slot(&self, name: &str) -> Option<usize> {
        self.steps.iter().find_map(|st| {
            st.out_names
                .iter()
                .position(|n| n == name)
                .map(|i| st.outputs[i])
        })
    }

    /// Slots of the graph outputs, in order.
    pub(crate) fn output_slots(&self) -> Vec<usize> {
        self.outputs.iter().map(|(_, s)| *s).collect()
    }

    /// Evaluates step `st` on `args`, naming the node in errors.
    pub(crate) fn eval_one(&self, st: &Step, args: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        self.eval_step(st, args)
    }

    /// The inputs to feed.
    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    /// The batch size to feed: the model's own when its first input has a
    /// fixed batch dimension (many exports bake in 1), else `wanted`.
    pub fn batch_size(&self, wanted: usize) -> usize {
        match self
            .inputs
            .first()
            .and_then(|s| s.shape.as_ref())
            .and_then(|d| d.first())
        {
            Some(Dim::Known(k)) if *k > 0 => *k,
            _ => wanted.max(1),
        }
    }

    /// Names of the graph outputs, in order.
    pub fn output_names(&self) -> Vec<&str> {
        self.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Checks that a fed tensor fits the declared input.
    fn check_input(spec: &InputSpec, t: &Tensor) -> Result<()> {
        if t.dtype() != spec.dtype {
            return Err(Error::Input {
                name: spec.name.clone(),
                detail: format!(
                    "the model expects {} but the data is {}",
                    spec.dtype,
                    t.dtype()
                ),
            });
        }
        if let Some(dims) = &spec.shape {
            let fits = dims.len() == t.rank()
                && dims
                    .iter()
                    .zip(t.shape())
                    .all(|(d, &g)| !matches!(d, Dim::Known(k) if *k != g));
            if !fits {
                let want: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                return Err(Error::Input {
                    name: spec.name.clone(),
                    detail: format!(
                        "the model expects shape [{}] but the data has shape {:?}",
                        want.join(","),
                        t.shape()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Runs the model. Every input must be given by name; outputs come back
    /// in graph order.
    pub fn run(&self, feeds: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
        self.run_observed(feeds, &mut |_, _| {})
    }

    /// Runs the model and calls `observe(tensor name, value)` for every
    /// computed value (for calibration and debugging).
    pub fn run_observed(
        &self,
        feeds: Vec<(String, Tensor)>,
        observe: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Vec<(String, Tensor)>> {
        self.run_inner(feeds, observe, None, None)
    }

    /// Runs the model, letting `before(node, inputs)` see the inputs of
    /// every executed node (`node` indexes `model.graph.nodes`) and return
    /// replacements `(input position, tensor)` used for that node only.
    /// One-shot pruning uses it to calibrate and prune each layer on the
    /// outputs of the layers already pruned before it, in a single pass.
    pub fn run_hooked(
        &self,
        feeds: Vec<(String, Tensor)>,
        before: &mut BeforeNode<'_>,
    ) -> Result<Vec<(String, Tensor)>> {
        self.run_inner(feeds, &mut |_, _| {}, None, Some(before))
    }

    /// Runs the model `reps` times (after one warm-up run) and returns the
    /// median wall time of every step, in execution order. Constant-folded
    /// nodes cost nothing at run time and are not listed.
    pub fn profile(&self, feeds: Vec<(String, Tensor)>, reps: usize) -> Result<Vec<StepTime>> {
        let reps = reps.max(1);
        let mut times = vec![Vec::with_capacity(reps); self.steps.len()];
        let mut one = vec![Duration::ZERO; self.steps.len()];
        self.run_inner(feeds.clone(), &mut |_, _| {}, Some(&mut one), None)?;
        for _ in 0..reps {
            self.run_inner(feeds.clone(), &mut |_, _| {}, Some(&mut one), None)?;
            for (t, d) in times.iter_mut().zip(&one) {
                t.push(*d);
            }
        }
        Ok(self
            .steps
            .iter()
            .zip(times)
            .map(|(st, mut t)| {
                t.sort();
                StepTime {
                    index: st.node,
                    node: st.label.clone(),
                    op_type: st.op_type.clone(),
                    median: t[t.len() / 2],
                }
            })
            .collect())
    }

    /// Runs two streams through the graph in lockstep: the model as it is
    /// (`reference`) and a copy whose node inputs the hook may replace
    /// (`current`). `before(node, reference inputs, current inputs)` returns
    /// replacements for the current stream only. One-shot pruning uses it to
    /// see, at every layer, both the dense input and the input produced by
    /// the layers already pruned. Returns the current stream's outputs.
    pub fn run_paired(
        &self,
        feeds: Vec<(String, Tensor)>,
        before: &mut PairedHook<'_>,
    ) -> Result<Vec<(String, Tensor)>> {
        let mut reference = self.feed(feeds)?;
        let mut current = reference.clone();
        for st in &self.steps {
            let r_args = self.args(st, &reference);
            let c_args = self.args(st, &current);
            let replaced = before(st.node, &r_args, &c_args)?;
            let c_args = with_replaced(c_args, &replaced);
            let r_out = self.eval_step(st, &r_args)?;
            let c_out = self.eval_step(st, &c_args)?;
            for ((o, r), c) in st.outputs.iter().zip(r_out).zip(c_out) {
                reference[*o] = Some(Arc::new(r));
                current[*o] = Some(Arc::new(c));
            }
            for s in &st.frees {
                reference[*s] = None;
                current[*s] = None;
            }
        }
        self.collect(current)
    }

    /// The value slots filled with the feeds, checked against the inputs.
    fn feed(&self, feeds: Vec<(String, Tensor)>) -> Result<Vec<Option<Arc<Tensor>>>> {
        let mut vals: Vec<Option<Arc<Tensor>>> = vec![None; self.n_slots];
        for (name, t) in feeds {
            let spec = self
                .inputs
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| Error::Input {
                    name: name.clone(),
                    detail: format!(
                        "the model has no input of that name; its inputs are {:?}",
                        self.inputs
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                    ),
                })?;
            Self::check_input(spec, &t)?;
            vals[spec.slot] = Some(Arc::new(t));
        }
        if let Some(missing) = self.inputs.iter().find(|s| vals[s.slot].is_none()) {
            return Err(Error::Input {
                name: missing.name.clone(),
                detail: "no data given for this input".into(),
            });
        }
        Ok(vals)
    }

    /// The inputs of step `st` from `vals` (or the constants).
    fn args<'v>(&'v self, st: &Step, vals: &'v [Option<Arc<Tensor>>]) -> Vec<Option<&'v Tensor>> {
        st.inputs
            .iter()
            .map(|s| s.map(|s| vals[s].as_deref().or(self.consts[s].as_deref())))
            .map(|o| o.flatten())
            .collect()
    }

    /// Evaluates one step, naming the node in errors.
    fn eval_step(&self, st: &Step, args: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let res = st.op.eval(args).map_err(|e| match e {
            Error::Usage(msg) => {
                let shapes: Vec<String> = args.iter().map(|t| describe(*t)).collect();
                Error::op(
                    &st.label,
                    &st.op_type,
                    format!("{msg} (inputs: {})", shapes.join(", ")),
                )
            }
            other => other,
        })?;
        if res.len() < st.outputs.len() {
            return Err(Error::op(
                &st.label,
                &st.op_type,
                format!(
                    "produced {} outputs, expected {}",
                    res.len(),
                    st.outputs.len()
                ),
            ));
        }
        Ok(res)
    }

    /// The graph outputs from the final value slots.
    fn collect(&self, vals: Vec<Option<Arc<Tensor>>>) -> Result<Vec<(String, Tensor)>> {
        self.outputs
            .iter()
            .map(|(name, s)| {
                let t = vals[*s]
                    .clone()
                    .or_else(|| self.consts[*s].clone())
                    .ok_or_else(|| Error::InvalidModel {
                        path: Default::default(),
                        detail: format!("graph output '{name}' was not computed"),
                    })?;
                Ok((
                    name.clone(),
                    Arc::try_unwrap(t).unwrap_or_else(|a| (*a).clone()),
                ))
            })
            .collect()
    }

    fn run_inner(
        &self,
        feeds: Vec<(String, Tensor)>,
        observe: &mut dyn FnMut(&str, &Tensor),
        mut timing: Option<&mut Vec<Duration>>,
        mut before: Option<&mut BeforeNode<'_>>,
    ) -> Result<Vec<(String, Tensor)>> {
        let mut vals = self.feed(feeds)?;
        for (si, st) in self.steps.iter().enumerate() {
            let start = timing.as_ref().map(|_| Instant::now());
            let args = self.args(st, &vals);
            let replaced = match before.as_deref_mut() {
                Some(hook) => hook(st.node, &args)?,
                None => Vec::new(),
            };
            let res = self.eval_step(st, &with_replaced(args, &replaced))?;
            for ((o, name), t) in st.outputs.iter().zip(&st.out_names).zip(res) {
                observe(name, &t);
                vals[*o] = Some(Arc::new(t));
            }
            for s in &st.frees {
                vals[*s] = None;
            }
            if let (Some(t), Some(start)) = (timing.as_deref_mut(), start) {
                t[si] = start.elapsed();
            }
        }
        self.collect(vals)
    }
}

/// `args` with the hook's replacements `(position, tensor)` put in.
fn with_replaced<'a>(
    mut args: Vec<Option<&'a Tensor>>,
    replaced: &'a [(usize, Tensor)],
) -> Vec<Option<&'a Tensor>> {
    for (i, t) in replaced {
        if let Some(slot) = args.get_mut(*i) {
            *slot = Some(t);
        }
    }
    args
}

/// A copy of `model` whose inputs fixed at batch 1 (as many exports are)
/// take any batch, when the graph really is batch-agnostic. Checked on
/// `probe` (the first two samples): the relaxed model run on both at once
/// must give, sample by sample, what the model gives on each alone
/// (within 1e-4 relative). `None` when nothing is fixed at 1, when a
/// reshape bakes the batch in, or when the outputs differ. Calibration and
/// training use it to batch a batch-1 model.
pub fn relax_batch(model: &Model, probe: &crate::data::Feeds) -> Option<Model> {
    let one = |d: &Option<Vec<Dim>>| matches!(d.as_deref(), Some([Dim::Known(1), ..]));
    let g = &model.graph;
    let inits = g.initializer_names();
    let real: Vec<usize> = (0..g.inputs.len())
        .filter(|&i| !inits.contains(g.inputs[i].name.as_str()))
        .collect();
    if probe.samples() < 2 || !real.iter().all(|&i| one(&g.inputs[i].shape)) {
        return None;
    }
    let mut relaxed = model.clone();
    for &i in &real {
        if let Some(d) = relaxed.graph.inputs[i].shape.as_mut() {
            d[0] = Dim::Sym("batch".into());
        }
    }
    for o in relaxed.graph.outputs.iter_mut() {
        if let Some(d) = o
            .shape
            .as_mut()
            .filter(|d| matches!(d.first(), Some(Dim::Known(1))))
        {
            d[0] = Dim::Sym("batch".into());
        }
    }
    relaxed.graph.value_info.clear();
    let two = probe.take(2).ok()?;
    let both = Executor::new(&relaxed).ok()?.run(two.0.clone()).ok()?;
    let exec = Executor::new(model).ok()?;
    for (s, batch) in two.batches(1).ok()?.into_iter().enumerate() {
        let alone = exec.run(batch).ok()?;
        for ((_, a), (_, b)) in alone.iter().zip(&both) {
            let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
            if b.shape().first() != Some(&2) || bv.len() != 2 * av.len() {
                return None;
            }
            if !close(&av, &bv[s * av.len()..(s + 1) * av.len()]) {
                return None;
            }
        }
    }
    Some(relaxed)
}

/// Whether `b` equals `a` within 1e-4 of `a`'s largest magnitude (the
/// check of [`relax_batch`] and [`trim_padding`]).
fn close(a: &[f64], b: &[f64]) -> bool {
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    a.len() == b.len() && !a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-4 * scale)
}

/// Calibration data with trailing padding cut off: when `mask` (an
/// input of shape `[samples, seq]`, non-zero on real tokens) ends every
/// sample's tokens before `seq`, every input of shape `[samples, seq, ...]`
/// is cut to the longest sample. Exact for models whose padded positions
/// are masked out (BERT-style attention masks), and checked: on the first
/// two samples, the outputs of the cut inputs must equal the first
/// positions of the outputs of the full ones (within 1e-4 relative).
/// `None` when nothing can be cut or the check fails. A 32-token MiniLM
/// calibration set whose longest sentence has 16 tokens runs in half the
/// time.
pub fn trim_padding(
    model: &Model,
    data: &crate::data::Feeds,
    mask: &str,
) -> Option<crate::data::Feeds> {
    let m = data.get(mask)?;
    let [n, seq] = *m.shape() else {
        return None;
    };
    let mv = m.to_f64_vec();
    let len = (0..n)
        .map(|s| {
            (0..seq)
                .rev()
                .find(|&t| mv[s * seq + t] != 0.0)
                .map_or(0, |t| t + 1)
        })
        .max()?;
    if len == 0 || len >= seq {
        return None;
    }
    let cut = |t: &Tensor| -> Option<Tensor> {
        let sh = t.shape();
        if sh.len() < 2 || sh[1] != seq {
            return Some(t.clone());
        }
        let mut to = sh.to_vec();
        to[1] = len;
        let st: Vec<isize> = crate::ir::strides(sh).iter().map(|&v| v as isize).collect();
        crate::ops::layout::view_tensor(t, 0, &to, &st).ok()
    };
    let trimmed = crate::data::Feeds::new(
        data.0
            .iter()
            .map(|(k, t)| Some((k.clone(), cut(t)?)))
            .collect::<Option<Vec<_>>>()?,
    )
    .ok()?;
    let exec = Executor::new(model).ok()?;
    let k = n.min(2);
    let full = exec.run(data.take(k).ok()?.0).ok()?;
    let short = exec.run(trimmed.take(k).ok()?.0).ok()?;
    for ((_, f), (_, s)) in full.iter().zip(&short) {
        let f = if f.shape() == s.shape() {
            f.clone()
        } else {
            cut(f)?
        };
        if f.shape() != s.shape() {
            return None;
        }
        if !close(&f.to_f64_vec(), &s.to_f64_vec()) {
            return None;
        }
    }
    Some(trimmed)
}

/// Shape inference result for one node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Output facts (empty for a node that could not be inferred, see
    /// [`ShapeInfo::unknown`]).
    pub outputs: Vec<Fact>,
    /// Multiply-accumulates.
    pub macs: u64,
}

/// Facts for every value of a graph at concrete input shapes.
#[derive(Clone, Debug)]
pub struct ShapeInfo {
    /// Per node (graph order).
    pub nodes: Vec<NodeInfo>,
    /// Per tensor name.
    pub facts: HashMap<String, Fact>,
    /// Nodes that could not be inferred ([`infer_shapes_lenient`] only):
    /// unsupported ops, and nodes reading a value of unknown shape. Their
    /// outputs have facts only where the model declares a complete shape.
    pub unknown: Vec<usize>,
}

/// Infers the dtype and concrete shape of every value, and the MACs of each
/// node, for the given input shapes. Fails on unsupported ops (all listed).
pub fn infer_shapes(model: &Model, inputs: &[InputShape]) -> Result<ShapeInfo> {
    build_ops(model)?;
    infer(model, inputs, false)
}

/// Like [`infer_shapes`], but an unsupported op does not fail: its outputs
/// take the shapes the model declares for them (`value_info`, graph
/// outputs) when complete, and nodes that cannot be inferred are listed in
/// [`ShapeInfo::unknown`]. For analyses that must see the rest of a graph
/// around ops potatura cannot run.
pub fn infer_shapes_lenient(model: &Model, inputs: &[InputShape]) -> Result<ShapeInfo> {
    infer(model, inputs, true)
}

fn declared_fact(model: &Model, name: &str) -> Option<Fact> {
    let g = &model.graph;
    let v = g
        .value_info
        .iter()
        .chain(&g.outputs)
        .find(|v| v.name == name)?;
    let dims = v
        .shape
        .as_ref()?
        .iter()
        .map(|d| match d {
            Dim::Known(k) => Some(*k),
            _ => None,
        })
        .collect::<Option<Vec<usize>>>()?;
    Some(Fact::new(v.dtype?, dims))
}

fn infer(model: &Model, inputs: &[InputShape], lenient: bool) -> Result<ShapeInfo> {
    let g = &model.graph;
    let opset = model.opset();
    let order = g.topo_order()?;
    let mut facts: HashMap<String, Fact> = HashMap::new();
    for t in &g.initializers {
        facts.insert(t.name.clone(), Fact::known(t.to_tensor()?));
    }
    for i in inputs {
        facts.insert(i.name.clone(), Fact::new(i.dtype, i.shape.clone()));
    }
    let mut nodes: Vec<Option<NodeInfo>> = vec![None; g.nodes.len()];
    let mut unknown = Vec::new();
    for &i in &order {
        let n = &g.nodes[i];
        let op = if ops::is_supported(n) {
            Some(ops::build(n, opset).map_err(|e| wrap(n, e, &[]))?)
        } else {
            None
        }
        .flatten();
        let ins: Option<Vec<Option<&Fact>>> = n
            .inputs
            .iter()
            .map(|s| {
                if s.is_empty() {
                    Some(None)
                } else {
                    facts.get(s).map(Some)
                }
            })
            .collect();
        let (Some(op), Some(ins)) = (op, ins) else {
            if !lenient {
                let missing = n
                    .inputs
                    .iter()
                    .find(|s| !s.is_empty() && !facts.contains_key(*s))
                    .cloned()
                    .unwrap_or_default();
                return Err(node_error(
                    n,
                    format!("input '{missing}' has no known shape"),
                ));
            }
            unknown.push(i);
            for o in &n.outputs {
                if let Some(f) = declared_fact(model, o) {
                    facts.insert(o.clone(), f);
                }
            }
            nodes[i] = Some(NodeInfo {
                outputs: Vec::new(),
                macs: 0,
            });
            continue;
        };
        let shapes: Vec<String> = ins
            .iter()
            .map(|f| {
                f.map(|f| format!("{}{:?}", f.dtype, f.shape))
                    .unwrap_or("-".into())
            })
            .collect();
        let all_const = ins.iter().flatten().all(|f| f.value.is_some());
        let outs: Vec<Fact> = if all_const {
            let args: Vec<Option<&Tensor>> = ins
                .iter()
                .map(|f| f.map(|f| f.value.as_deref().unwrap()))
                .collect();
            op.eval(&args)
                .map_err(|e| wrap(n, e, &shapes))?
                .into_iter()
                .map(Fact::known)
                .collect()
        } else {
            op.infer(&ins).map_err(|e| wrap(n, e, &shapes))?
        };
        let macs = if all_const { 0 } else { op.macs(&ins, &outs) };
        for (name, f) in n.outputs.iter().zip(&outs) {
            if !name.is_empty() {
                facts.insert(name.clone(), f.clone());
            }
        }
        nodes[i] = Some(NodeInfo {
            outputs: outs,
            macs,
        });
    }
    Ok(ShapeInfo {
        nodes: nodes
            .into_iter()
            .map(|n| n.expect("every node inferred"))
            .collect(),
        facts,
        unknown,
    })
}

#[cfg(test)]
mod trim_tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute, ConstTensor, DType, Graph, Node, ValueInfo};

    /// `[b, s, 4]` features and a `[b, s]` mask; `mix` makes every token
    /// see the mean over the sequence (padding then matters).
    fn model(mix: bool) -> Model {
        let sym = |n: &str| Dim::Sym(n.into());
        let w = Tensor::from_f32(vec![4, 3], (0..12).map(|i| i as f32 * 0.1 - 0.5).collect());
        let mut nodes = vec![
            Node::new(
                "cast",
                "Cast",
                &["mask"],
                &["mf"],
                vec![Attribute::new("to", AttrValue::Int(1))],
            ),
            Node::new("unsq", "Unsqueeze", &["mf", "axes"], &["m3"], vec![]),
            Node::new("mm", "MatMul", &["x", "w"], &["h"], vec![]),
            Node::new("mul", "Mul", &["h", "m3"], &["y"], vec![]),
        ];
        if mix {
            nodes.push(Node::new(
                "mean",
                "ReduceMean",
                &["y"],
                &["ym"],
                vec![
                    Attribute::new("axes", AttrValue::Ints(vec![1])),
                    Attribute::new("keepdims", AttrValue::Int(1)),
                ],
            ));
            nodes.push(Node::new("add", "Add", &["y", "ym"], &["out"], vec![]));
        } else {
            nodes.push(Node::new("id", "Identity", &["y"], &["out"], vec![]));
        }
        Model {
            graph: Graph {
                nodes,
                initializers: vec![
                    ConstTensor::from_tensor("w", &w).unwrap(),
                    ConstTensor::from_tensor("axes", &Tensor::from_i64(vec![1], vec![2])).unwrap(),
                ],
                inputs: vec![
                    ValueInfo::new("x", DType::F32, vec![sym("b"), sym("s"), Dim::Known(4)]),
                    ValueInfo::new("mask", DType::I64, vec![sym("b"), sym("s")]),
                ],
                outputs: vec![ValueInfo::new(
                    "out",
                    DType::F32,
                    vec![sym("b"), sym("s"), Dim::Known(3)],
                )],
                value_info: Vec::new(),
                rest: Default::default(),
            },
            opsets: vec![(String::new(), 17)],
            rest: Default::default(),
            base_dir: None,
        }
    }

    fn data() -> crate::data::Feeds {
        // 3 samples of 6 tokens; the longest has 4 real tokens.
        let mask: Vec<i64> = [4, 2, 3]
            .iter()
            .flat_map(|&n| (0..6).map(move |t| (t < n) as i64))
            .collect();
        let x = Tensor::from_f32(
            vec![3, 6, 4],
            (0..72).map(|i| (i % 7) as f32 - 3.0).collect(),
        );
        crate::data::Feeds::new(vec![
            ("x".into(), x),
            ("mask".into(), Tensor::from_i64(vec![3, 6], mask)),
        ])
        .unwrap()
    }

    #[test]
    fn padding_is_cut_only_when_it_changes_nothing() {
        let t = trim_padding(&model(false), &data(), "mask").expect("per-token model");
        assert_eq!(t.get("x").unwrap().shape(), &[3, 4, 4]);
        assert_eq!(t.get("mask").unwrap().shape(), &[3, 4]);
        // The first 4 tokens of every sample are kept as they were.
        let full = data();
        let (a, b) = (
            full.get("x").unwrap().f32s().unwrap(),
            t.get("x").unwrap().f32s().unwrap(),
        );
        for s in 0..3 {
            assert_eq!(&a[s * 24..s * 24 + 16], &b[s * 16..s * 16 + 16]);
        }
        // A model that mixes tokens: padding changes the outputs; refused.
        assert!(trim_padding(&model(true), &data(), "mask").is_none());
        // Nothing to cut when a sample fills the sequence; no such input.
        assert!(trim_padding(&model(false), &data(), "nope").is_none());
    }
}
