//! Channel-dependency analysis: which channels of which tensors must be
//! removed together.
//!
//! Every computed value may carry one channel axis (declared by the op that
//! produces it, see [`crate::ops::channels`]). A *slot* is one channel of
//! one value. The ops' links join slots into *classes* (union-find): a class
//! is the smallest set of channels that can be removed while the graph
//! stays valid — one filter of a conv with its BN entries and the matching
//! input channel of every consumer, one channel of a residual stream in
//! every block, one attention head. Classes touching the same values in the
//! same way form a *group* (one "layer" to a user). A slot of a value that
//! an op cannot map, a graph input or output, or a value of unknown origin
//! is *frozen*, and so is its whole class: nothing is guessed.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::error::Result;
use crate::exec::{infer_shapes_lenient, ShapeInfo};
use crate::ir::{Dim, InputShape, Model};
use crate::ops::channels::{ChanCx, ChanMap, Pairs, Port, Use};
use crate::ops::{self, Fact};

/// A value that carries channels.
#[derive(Clone, Debug, Serialize)]
pub struct ChanValue {
    /// Tensor name.
    pub name: String,
    /// Channel axis.
    pub axis: usize,
    /// Channel count.
    pub n: usize,
    /// First slot id of this value.
    #[serde(skip)]
    pub base: usize,
    /// Why its channels cannot be removed, if they cannot.
    pub frozen: Option<String>,
}

/// The channel declaration of one node, with its ports resolved to values.
#[derive(Clone, Debug)]
pub struct NodeChan {
    /// The op's declaration (`None`: no mapping, or folded, or unknown op).
    pub map: Option<ChanMap>,
    /// Value id of each input port that carries channels the op reads.
    pub ins: Vec<Option<usize>>,
    /// Value id of each output port that carries channels.
    pub outs: Vec<Option<usize>>,
    /// MACs of the node at the analysed shapes.
    pub macs: u64,
    /// Elements of each float constant input (0 for the others).
    pub const_numel: Vec<usize>,
    /// Op type.
    pub op_type: String,
    /// Input tensor names.
    pub inputs: Vec<String>,
}

impl NodeChan {
    /// The value of constant input `i` at the analysed shapes.
    pub fn const_value(
        &self,
        shapes: &ShapeInfo,
        i: usize,
    ) -> Option<std::sync::Arc<crate::ir::Tensor>> {
        shapes.facts.get(self.inputs.get(i)?)?.value.clone()
    }

    /// The value behind a port.
    pub fn value(&self, p: Port) -> Option<usize> {
        match p {
            Port::In(i) => self.ins.get(i).copied().flatten(),
            Port::Out(o) => self.outs.get(o).copied().flatten(),
        }
    }
}

/// Channels removed together.
#[derive(Clone, Debug)]
pub struct Class {
    /// Its slots as (value id, channel index), sorted.
    pub slots: Vec<(usize, usize)>,
    /// Group it belongs to.
    pub group: usize,
}

/// Classes that touch the same values the same way: one prunable unit to
/// a user (a conv's filters with everything coupled to them).
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// A readable name: the first node producing one of its values.
    pub name: String,
    /// Its classes (channels), in order.
    #[serde(skip)]
    pub classes: Vec<usize>,
    /// Number of channels (classes).
    pub channels: usize,
    /// Values touched, with the number of slots each class has in each.
    pub values: Vec<(String, usize)>,
    /// Nodes whose weights or attributes change when a channel goes.
    pub nodes: Vec<String>,
    /// MACs saved by removing one channel (at full width).
    pub macs_per_channel: u64,
    /// Parameters saved by removing one channel.
    pub params_per_channel: u64,
    /// Why the group cannot be pruned, if it cannot.
    pub frozen: Option<String>,
}

/// What `potatura groups --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct DepSummary<'a> {
    /// Total MACs of the model.
    pub macs: u64,
    /// Total parameters.
    pub params: u64,
    /// Channels in groups that can be pruned.
    pub prunable_channels: usize,
    /// Every group, frozen ones with their reason.
    pub groups: &'a [Group],
}

/// The dependency graph of a model at given input shapes.
#[derive(Clone, Debug)]
pub struct DepGraph {
    /// Values carrying channels.
    pub values: Vec<ChanValue>,
    /// Per graph node.
    pub nodes: Vec<NodeChan>,
    /// Classes of coupled channels.
    pub classes: Vec<Class>,
    /// Groups of classes.
    pub groups: Vec<Group>,
    /// Class of each slot.
    pub slot_class: Vec<usize>,
    /// Facts at the analysed shapes.
    pub shapes: ShapeInfo,
    /// Total MACs and parameters of the model.
    pub total_macs: u64,
    /// Total parameters (float constants, each counted once).
    pub total_params: u64,
    /// Value id by name.
    pub value_ids: HashMap<String, usize>,
}

/// A class's footprint: values touched with slot counts, and why frozen.
type Signature = (Vec<(usize, usize)>, Option<String>);

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.0[hi] = lo;
        }
    }
}

/// Names of values that are constants independent of the input shapes,
/// which pruning may therefore rewrite: initializers, `Constant` outputs,
/// what is computed from those only, and values computed from shapes that
/// do not change when the model's dynamic input dims do (checked by
/// inferring again with every dynamic dim doubled; a model without dynamic
/// dims has only static shapes).
fn fixed_values(model: &Model, info: &ShapeInfo, inputs: &[InputShape]) -> HashSet<String> {
    let g = &model.graph;
    let mut fixed: HashSet<String> = g.initializers.iter().map(|t| t.name.clone()).collect();
    for v in &g.inputs {
        fixed.remove(&v.name);
    }
    if let Ok(order) = g.topo_order() {
        for i in order {
            let n = &g.nodes[i];
            if n.op_type == "Shape" || n.op_type == "Size" || info.unknown.contains(&i) {
                continue;
            }
            if n.inputs.iter().all(|s| s.is_empty() || fixed.contains(s)) {
                fixed.extend(n.outputs.iter().filter(|o| !o.is_empty()).cloned());
            }
        }
    }
    let declared: Vec<(&str, Vec<bool>)> = g
        .real_inputs()
        .iter()
        .map(|v| {
            let dyn_dims = v
                .shape
                .as_ref()
                .map(|s| s.iter().map(|d| !matches!(d, Dim::Known(_))).collect())
                .unwrap_or_default();
            (v.name.as_str(), dyn_dims)
        })
        .collect();
    let has_dynamic = declared.iter().any(|(_, d)| d.iter().any(|&x| x));
    let other = if has_dynamic {
        let perturbed: Vec<InputShape> = inputs
            .iter()
            .map(|i| {
                let dyn_dims = declared
                    .iter()
                    .find(|(n, _)| *n == i.name)
                    .map(|(_, d)| d.clone())
                    .unwrap_or_default();
                let mut j = i.clone();
                for (k, d) in j.shape.iter_mut().enumerate() {
                    if dyn_dims.get(k).copied().unwrap_or(false) {
                        *d *= 2;
                    }
                }
                j
            })
            .collect();
        match infer_shapes_lenient(model, &perturbed) {
            Ok(o) => Some(o),
            Err(_) => return fixed,
        }
    } else {
        None
    };
    let graph_inputs: HashSet<&str> = declared.iter().map(|(n, _)| *n).collect();
    for (name, f) in &info.facts {
        let Some(v) = &f.value else { continue };
        if graph_inputs.contains(name.as_str()) {
            continue;
        }
        let same = match &other {
            None => true,
            Some(o) => o
                .facts
                .get(name)
                .and_then(|g| g.value.as_ref())
                .is_some_and(|w| w == v),
        };
        if same {
            fixed.insert(name.clone());
        }
    }
    fixed
}

impl DepGraph {
    /// Analyses `model` at the given input shapes.
    pub fn build(model: &Model, inputs: &[InputShape]) -> Result<DepGraph> {
        let g = &model.graph;
        let shapes = infer_shapes_lenient(model, inputs)?;
        let fixed = fixed_values(model, &shapes, inputs);
        let graph_inputs: HashSet<&str> = g.real_inputs().iter().map(|v| v.name.as_str()).collect();
        let opset = model.opset();
        let mut values: Vec<ChanValue> = Vec::new();
        let mut value_ids: HashMap<String, usize> = HashMap::new();
        // Why a value has no channel information (its producer).
        let mut no_info: HashMap<String, String> = HashMap::new();
        let mut nodes: Vec<NodeChan> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeChan {
                map: None,
                ins: vec![None; n.inputs.len()],
                outs: vec![None; n.outputs.len()],
                macs: shapes.nodes[i].macs,
                const_numel: n
                    .inputs
                    .iter()
                    .map(|s| match shapes.facts.get(s) {
                        Some(f) if f.value.is_some() && f.dtype.is_float() => {
                            f.shape.iter().product()
                        }
                        _ => 0,
                    })
                    .collect(),
                op_type: n.op_type.clone(),
                inputs: n.inputs.clone(),
            })
            .collect();
        let mut n_slots = 0usize;
        let mut new_value = |name: &str,
                             axis: usize,
                             n: usize,
                             frozen: Option<String>,
                             values: &mut Vec<ChanValue>,
                             ids: &mut HashMap<String, usize>|
         -> usize {
            values.push(ChanValue {
                name: name.to_string(),
                axis,
                n,
                base: n_slots,
                frozen,
            });
            n_slots += n;
            ids.insert(name.to_string(), values.len() - 1);
            values.len() - 1
        };
        fn freeze(v: &mut ChanValue, why: String) {
            if v.frozen.is_none() {
                v.frozen = Some(why);
            }
        }
        let order = g.topo_order()?;
        for &i in &order {
            let n = &g.nodes[i];
            let label = format!("'{}' ({})", n.label(), n.op_type);
            let facts: Vec<Option<&Fact>> = n
                .inputs
                .iter()
                .map(|s| {
                    if s.is_empty() {
                        None
                    } else {
                        shapes.facts.get(s)
                    }
                })
                .collect();
            let computed = |k: usize| facts[k].is_some_and(|f| f.value.is_none());
            // Folded: every input known before running.
            if !n.inputs.is_empty()
                && n.inputs
                    .iter()
                    .zip(&facts)
                    .all(|(s, f)| s.is_empty() || f.is_some_and(|f| f.value.is_some()))
            {
                continue;
            }
            let unknown = shapes.unknown.contains(&i);
            let map = if unknown
                || facts
                    .iter()
                    .zip(&n.inputs)
                    .any(|(f, s)| !s.is_empty() && f.is_none())
            {
                None
            } else {
                let op = ops::build(n, opset)?;
                let axes: Vec<Option<usize>> = n
                    .inputs
                    .iter()
                    .map(|s| value_ids.get(s).map(|&v| values[v].axis))
                    .collect();
                let fixed_in: Vec<bool> = n.inputs.iter().map(|s| fixed.contains(s)).collect();
                let outs = &shapes.nodes[i].outputs;
                op.and_then(|op| {
                    op.channels(&ChanCx {
                        inputs: &facts,
                        axes: &axes,
                        fixed: &fixed_in,
                        outputs: outs,
                    })
                })
            };
            let Some(map) = map else {
                let why = if unknown {
                    format!("node {label} is an op potatura cannot analyse")
                } else {
                    format!("node {label} has no channel mapping for these inputs")
                };
                for (k, s) in n.inputs.iter().enumerate() {
                    if computed(k) {
                        if let Some(&v) = value_ids.get(s) {
                            freeze(&mut values[v], why.clone());
                        }
                    }
                }
                for o in &n.outputs {
                    no_info.insert(
                        o.clone(),
                        format!("produced by {label}, whose channels are not mapped"),
                    );
                }
                continue;
            };
            for (k, s) in n.inputs.iter().enumerate() {
                if !computed(k) {
                    continue;
                }
                let existing = value_ids.get(s).copied();
                match map.uses.get(k).copied().flatten() {
                    Some(Use::Axis(ax)) => match existing {
                        Some(v) if values[v].axis == ax => nodes[i].ins[k] = Some(v),
                        Some(v) => {
                            let why = format!(
                                "node {label} reads channels on axis {ax} but they are on axis {}",
                                values[v].axis
                            );
                            freeze(&mut values[v], why);
                        }
                        None => {
                            let shape = &facts[k].map(|f| f.shape.clone()).unwrap_or_default();
                            let Some(&c) = shape.get(ax) else { continue };
                            let why = if graph_inputs.contains(s.as_str()) {
                                "graph input".to_string()
                            } else {
                                no_info.get(s).cloned().unwrap_or_else(|| {
                                    format!("its producer declares no channels (read by {label})")
                                })
                            };
                            let v = new_value(s, ax, c, Some(why), &mut values, &mut value_ids);
                            nodes[i].ins[k] = Some(v);
                        }
                    },
                    Some(Use::Shape) => {}
                    None => {
                        if let Some(v) = existing {
                            freeze(
                                &mut values[v],
                                format!("node {label} does not map these channels"),
                            );
                        }
                    }
                }
            }
            for (o, name) in n.outputs.iter().enumerate() {
                let (Some(ax), Some(f)) = (
                    map.out_axes.get(o).copied().flatten(),
                    shapes.nodes[i].outputs.get(o),
                ) else {
                    if !name.is_empty() {
                        no_info.insert(
                            name.clone(),
                            format!("produced by {label} without channels"),
                        );
                    }
                    continue;
                };
                if name.is_empty() || f.value.is_some() {
                    continue;
                }
                let Some(&c) = f.shape.get(ax) else { continue };
                let v = new_value(name, ax, c, None, &mut values, &mut value_ids);
                nodes[i].outs[o] = Some(v);
            }
            nodes[i].map = Some(map);
        }
        for o in &g.outputs {
            if let Some(&v) = value_ids.get(&o.name) {
                freeze(&mut values[v], "graph output".into());
            }
        }
        // Union the linked slots.
        let mut uf = UnionFind((0..n_slots).collect());
        for (i, nc) in nodes.iter().enumerate() {
            let Some(map) = &nc.map else { continue };
            for l in &map.links {
                let (Some(va), Some(vb)) = (nc.value(l.a), nc.value(l.b)) else {
                    continue;
                };
                let (a, b) = (&values[va], &values[vb]);
                let ok = match l.pairs {
                    Pairs::Same => a.n == b.n,
                    Pairs::Offset(off) => off + a.n <= b.n,
                    Pairs::Blocks { a_per, b_per } => {
                        a_per > 0
                            && b_per > 0
                            && a.n % a_per == 0
                            && b.n % b_per == 0
                            && a.n / a_per == b.n / b_per
                    }
                };
                if !ok {
                    let why = format!(
                        "node '{}' links {} channels to {} inconsistently",
                        g.nodes[i].label(),
                        a.n,
                        b.n
                    );
                    freeze(&mut values[va], why.clone());
                    freeze(&mut values[vb], why);
                    continue;
                }
                let (ab, bb) = (a.base, b.base);
                match l.pairs {
                    Pairs::Same => (0..a.n).for_each(|k| uf.union(ab + k, bb + k)),
                    Pairs::Offset(off) => (0..a.n).for_each(|k| uf.union(ab + k, bb + off + k)),
                    Pairs::Blocks { a_per, b_per } => {
                        for j in 0..a.n / a_per {
                            let head = bb + j * b_per;
                            for k in 0..a_per {
                                uf.union(ab + j * a_per + k, head);
                            }
                            for k in 1..b_per {
                                uf.union(head + k, head);
                            }
                        }
                    }
                }
            }
        }
        // Classes.
        let mut root_class: HashMap<usize, usize> = HashMap::new();
        let mut slot_class = vec![0usize; n_slots];
        let mut classes: Vec<Class> = Vec::new();
        for (vi, v) in values.iter().enumerate() {
            for k in 0..v.n {
                let r = uf.find(v.base + k);
                let c = *root_class.entry(r).or_insert_with(|| {
                    classes.push(Class {
                        slots: Vec::new(),
                        group: 0,
                    });
                    classes.len() - 1
                });
                classes[c].slots.push((vi, k));
                slot_class[v.base + k] = c;
            }
        }
        let total_macs: u64 = shapes.nodes.iter().map(|n| n.macs).sum();
        let total_params = crate::report::count_params(model);
        let mut dg = DepGraph {
            values,
            nodes,
            classes,
            groups: Vec::new(),
            slot_class,
            shapes,
            total_macs,
            total_params,
            value_ids,
        };
        dg.make_groups(model);
        Ok(dg)
    }

    fn make_groups(&mut self, model: &Model) {
        // Signature: values touched with slot counts, and the frozen reason.
        let mut by_sig: BTreeMap<Signature, Vec<usize>> = BTreeMap::new();
        for (ci, c) in self.classes.iter().enumerate() {
            let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
            for &(v, _) in &c.slots {
                *counts.entry(v).or_default() += 1;
            }
            let frozen = c
                .slots
                .iter()
                .find_map(|&(v, _)| self.values[v].frozen.clone());
            by_sig
                .entry((counts.into_iter().collect(), frozen))
                .or_default()
                .push(ci);
        }
        let producer: HashMap<&str, usize> = model.graph.producers();
        let mut groups: Vec<(usize, Group)> = Vec::new();
        let full: Vec<usize> = self.values.iter().map(|v| v.n).collect();
        let (m0, p0) = self.cost(&full);
        for ((sig, frozen), cls) in by_sig {
            let first_node = sig
                .iter()
                .filter_map(|&(v, _)| producer.get(self.values[v].name.as_str()).copied())
                .min()
                .unwrap_or(usize::MAX);
            let name = model
                .graph
                .nodes
                .get(first_node)
                .map(|n| n.label())
                .unwrap_or_else(|| self.values[sig[0].0].name.clone());
            let touched: HashSet<usize> = sig.iter().map(|&(v, _)| v).collect();
            let mut nodes: Vec<String> = Vec::new();
            for (i, nc) in self.nodes.iter().enumerate() {
                let Some(map) = &nc.map else { continue };
                let hit = map
                    .weights
                    .iter()
                    .any(|w| nc.value(w.port).is_some_and(|v| touched.contains(&v)))
                    || nc.outs.iter().flatten().any(|v| touched.contains(v))
                        && !map.weights.is_empty();
                if hit {
                    nodes.push(model.graph.nodes[i].label());
                }
            }
            let mut kept = full.clone();
            for &(v, c) in &sig {
                kept[v] -= c;
            }
            let (m1, p1) = self.cost(&kept);
            groups.push((
                first_node,
                Group {
                    name,
                    channels: cls.len(),
                    classes: cls,
                    values: sig
                        .iter()
                        .map(|&(v, c)| (self.values[v].name.clone(), c))
                        .collect(),
                    nodes,
                    macs_per_channel: (m0 - m1).max(0.0).round() as u64,
                    params_per_channel: (p0 - p1).max(0.0).round() as u64,
                    frozen,
                },
            ));
        }
        groups.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
        self.groups = groups.into_iter().map(|(_, g)| g).collect();
        for (gi, g) in self.groups.iter().enumerate() {
            for &c in &g.classes {
                self.classes[c].group = gi;
            }
        }
    }

    /// MACs and parameters of the model if each value kept `kept[v]` of its
    /// channels (exact for the ops' declared scaling).
    pub fn cost(&self, kept: &[usize]) -> (f64, f64) {
        let ratio = |nc: &NodeChan, p: Port| -> f64 {
            nc.value(p)
                .map(|v| kept[v] as f64 / self.values[v].n.max(1) as f64)
                .unwrap_or(1.0)
        };
        let mut macs = 0.0;
        let mut params_saved = 0.0;
        for nc in &self.nodes {
            let Some(map) = &nc.map else {
                macs += nc.macs as f64;
                continue;
            };
            macs += nc.macs as f64 * map.macs.iter().map(|&p| ratio(nc, p)).product::<f64>();
            let mut per_input: BTreeMap<usize, f64> = BTreeMap::new();
            for w in &map.weights {
                *per_input.entry(w.input).or_insert(1.0) *= ratio(nc, w.port);
            }
            for (input, r) in per_input {
                let numel = nc.const_numel.get(input).copied().unwrap_or(0);
                params_saved += numel as f64 * (1.0 - r);
            }
        }
        (macs, (self.total_params as f64 - params_saved).max(0.0))
    }

    /// Estimated latency (same unit as `table`, one entry per graph node,
    /// measured at full width) if each value kept `kept[v]` channels: a
    /// node's time scales with the kept fraction of the ports that scale
    /// its MACs, or else of its output channels (element-wise work).
    pub fn latency(&self, kept: &[usize], table: &[f64]) -> f64 {
        let ratio = |v: usize| kept[v] as f64 / self.values[v].n.max(1) as f64;
        self.nodes
            .iter()
            .zip(table)
            .map(|(nc, &t)| {
                let scale = match &nc.map {
                    Some(map) if !map.macs.is_empty() => map
                        .macs
                        .iter()
                        .map(|&p| nc.value(p).map(ratio).unwrap_or(1.0))
                        .product(),
                    Some(_) => nc
                        .outs
                        .iter()
                        .chain(&nc.ins)
                        .flatten()
                        .next()
                        .map(|&v| ratio(v))
                        .unwrap_or(1.0),
                    None => 1.0,
                };
                t * scale
            })
            .sum()
    }

    /// Kept channel counts per value after removing `removed` classes.
    pub fn kept_counts(&self, removed: &[usize]) -> Vec<usize> {
        let mut kept: Vec<usize> = self.values.iter().map(|v| v.n).collect();
        for &c in removed {
            for &(v, _) in &self.classes[c].slots {
                kept[v] -= 1;
            }
        }
        kept
    }

    /// Class of channel `k` of the value named `name`.
    pub fn class_of(&self, name: &str, k: usize) -> Option<usize> {
        let v = &self.values[*self.value_ids.get(name)?];
        (k < v.n).then(|| self.slot_class[v.base + k])
    }

    /// The groups and totals, for reports.
    pub fn summary(&self) -> DepSummary<'_> {
        DepSummary {
            macs: self.total_macs,
            params: self.total_params,
            prunable_channels: self
                .groups
                .iter()
                .filter(|g| g.frozen.is_none())
                .map(|g| g.channels)
                .sum(),
            groups: &self.groups,
        }
    }

    /// True when class `c` may be removed.
    pub fn is_frozen(&self, c: usize) -> bool {
        self.groups[self.classes[c].group].frozen.is_some()
    }
}
