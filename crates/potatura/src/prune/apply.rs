//! Removing channels from a graph: slice every declared weight, let each op
//! rewrite its attributes and shape constants, drop what became unused,
//! refresh declared shapes, and validate.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::deps::DepGraph;
use crate::error::{Error, Result};
use crate::exec::infer_shapes_lenient;
use crate::ir::{Attribute, ConstTensor, Dim, InputShape, Model, Tensor};
use crate::ops::channels::{Port, PruneCx};
use crate::ops::layout::take;
use crate::ops::{self, Fact};

/// Replaces constant inputs of nodes without corrupting anything shared:
/// a tensor read by one node is rewritten where it is (through a private
/// Cast/Identity chain, in its stored type); a shared one gets a copy.
pub(crate) struct Rewriter<'a> {
    /// The model being edited.
    pub model: &'a mut Model,
    /// How many node inputs read each tensor in the original model.
    readers: HashMap<String, usize>,
    graph_outputs: HashSet<String>,
}

impl<'a> Rewriter<'a> {
    pub(crate) fn new(model: &'a mut Model) -> Rewriter<'a> {
        let mut readers: HashMap<String, usize> = HashMap::new();
        for n in &model.graph.nodes {
            for i in n.inputs.iter().filter(|s| !s.is_empty()) {
                *readers.entry(i.clone()).or_default() += 1;
            }
        }
        let graph_outputs = model.graph.outputs.iter().map(|o| o.name.clone()).collect();
        Rewriter {
            model,
            readers,
            graph_outputs,
        }
    }

    /// The initializer behind `name` when `name` is that initializer or the
    /// end of a chain of Cast/Identity nodes, each read by one node only.
    fn private_source(&self, name: &str) -> Option<String> {
        let g = &self.model.graph;
        let mut cur = name.to_string();
        let mut hops = 0;
        loop {
            if self.readers.get(&cur).copied() != Some(1)
                || self.graph_outputs.contains(&cur)
                || g.inputs.iter().any(|v| v.name == cur)
            {
                return None;
            }
            if g.initializers.iter().any(|t| t.name == cur) {
                return (hops > 0).then_some(cur);
            }
            let n = g.nodes.iter().find(|n| n.outputs.first() == Some(&cur))?;
            if !matches!(n.op_type.as_str(), "Cast" | "Identity") || n.inputs.len() != 1 {
                return None;
            }
            cur = n.inputs[0].clone();
            hops += 1;
        }
    }

    fn unique_name(&self, base: &str) -> String {
        let taken = |n: &str| {
            self.model.graph.initializers.iter().any(|t| t.name == n)
                || self
                    .model
                    .graph
                    .nodes
                    .iter()
                    .any(|x| x.outputs.iter().any(|o| o == n))
                || self.model.graph.inputs.iter().any(|v| v.name == n)
        };
        let mut name = format!("{base}.pruned");
        let mut i = 1;
        while taken(&name) {
            name = format!("{base}.pruned{i}");
            i += 1;
        }
        name
    }

    /// Gives input `i` of node `node` the constant value `t`.
    pub(crate) fn set_input(&mut self, node: usize, i: usize, t: Tensor) -> Result<()> {
        let name = self.model.graph.nodes[node]
            .inputs
            .get(i)
            .cloned()
            .unwrap_or_default();
        // A weight stored in another type (fp16, int8) and converted by a
        // private chain of Cast/Identity nodes: slice the stored tensor and
        // keep the chain, so the file keeps its storage type.
        if let Some(src) = self.private_source(&name) {
            let init = self
                .model
                .graph
                .initializers
                .iter_mut()
                .find(|x| x.name == src)
                .expect("private_source returns initializers");
            let dt = init.dtype();
            let converted = match (dt.storage(), t.data()) {
                (crate::ir::Storage::Float, crate::ir::Data::F32(v)) => {
                    Some(Tensor::from_float(dt, t.shape().to_vec(), v.clone()))
                }
                (crate::ir::Storage::Int, crate::ir::Data::F32(v))
                    if v.iter().all(|x| x.fract() == 0.0) =>
                {
                    Some(Tensor::from_int(
                        dt,
                        t.shape().to_vec(),
                        v.iter().map(|&x| x as i64).collect(),
                    ))
                }
                (crate::ir::Storage::Int, crate::ir::Data::I64(v)) => {
                    Some(Tensor::from_int(dt, t.shape().to_vec(), v.clone()))
                }
                _ => None,
            };
            if let Some(c) = converted {
                return init.set(&c);
            }
        }
        let g = &self.model.graph;
        let label = g.nodes[node].label();
        let own_initializer = !name.is_empty()
            && self.readers.get(&name).copied() == Some(1)
            && !self.graph_outputs.contains(&name)
            && !g.inputs.iter().any(|v| v.name == name);
        if own_initializer {
            if let Some(init) = self
                .model
                .graph
                .initializers
                .iter_mut()
                .find(|x| x.name == name)
            {
                return init.set(&t);
            }
        }
        let base = if name.is_empty() {
            format!("{label}.input{i}")
        } else {
            name
        };
        let new = self.unique_name(&base);
        self.model
            .graph
            .initializers
            .push(ConstTensor::from_tensor(&new, &t)?);
        let inputs = &mut self.model.graph.nodes[node].inputs;
        if inputs.len() <= i {
            inputs.resize(i + 1, String::new());
        }
        inputs[i] = new;
        Ok(())
    }
}

/// The view of one node that its op's `prune` gets.
struct NodeCx<'a, 'm> {
    rw: &'a mut Rewriter<'m>,
    node: usize,
    dg: &'a DepGraph,
    kept: &'a [Option<Vec<usize>>],
}

impl NodeCx<'_, '_> {
    fn value(&self, p: Port) -> Option<usize> {
        self.dg.nodes[self.node].value(p)
    }
}

impl PruneCx for NodeCx<'_, '_> {
    fn kept(&self, port: Port) -> Option<&[usize]> {
        self.value(port).and_then(|v| self.kept[v].as_deref())
    }
    fn axis(&self, port: Port) -> Option<usize> {
        self.value(port).map(|v| self.dg.values[v].axis)
    }
    fn channels(&self, port: Port) -> Option<usize> {
        self.value(port).map(|v| self.dg.values[v].n)
    }
    fn input_fact(&self, i: usize) -> Option<&Fact> {
        let name = self.rw.model.graph.nodes[self.node].inputs.get(i)?;
        self.dg.shapes.facts.get(name)
    }
    fn is_weight(&self, i: usize) -> bool {
        self.input_fact(i).is_some_and(|f| f.value.is_some())
    }
    fn set_input(&mut self, i: usize, t: Tensor) -> Result<()> {
        self.rw.set_input(self.node, i, t)
    }
    fn set_attr(&mut self, a: Attribute) {
        let attrs = &mut self.rw.model.graph.nodes[self.node].attrs;
        match attrs.iter_mut().find(|x| x.name == a.name) {
            Some(x) => *x = a,
            None => attrs.push(a),
        }
    }
    fn remove_attr(&mut self, name: &str) {
        self.rw.model.graph.nodes[self.node]
            .attrs
            .retain(|a| a.name != name);
    }
}

/// Removes the classes `removed` of `dg` (built from `model` at `inputs`)
/// and returns the pruned model, validated and with its declared shapes
/// refreshed. Removing nothing returns the model unchanged.
pub fn apply(
    model: &Model,
    dg: &DepGraph,
    removed: &[usize],
    inputs: &[InputShape],
) -> Result<Model> {
    let mut out = model.clone();
    if removed.is_empty() {
        return Ok(out);
    }
    // Kept channel indices of each value that changes.
    let mut gone: Vec<Vec<bool>> = dg.values.iter().map(|v| vec![false; v.n]).collect();
    for &c in removed {
        if dg.is_frozen(c) {
            return Err(Error::Usage(format!(
                "internal: asked to remove a frozen channel of group '{}'",
                dg.groups[dg.classes[c].group].name
            )));
        }
        for &(v, k) in &dg.classes[c].slots {
            gone[v][k] = true;
        }
    }
    let kept: Vec<Option<Vec<usize>>> = gone
        .iter()
        .map(|g| {
            g.iter()
                .any(|&x| x)
                .then(|| (0..g.len()).filter(|&k| !g[k]).collect())
        })
        .collect();
    for (v, k) in kept.iter().enumerate() {
        if k.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(Error::Usage(format!(
                "pruning would remove every channel of '{}'",
                dg.values[v].name
            )));
        }
    }
    let opset = model.opset();
    let mut rw = Rewriter::new(&mut out);
    for (i, nc) in dg.nodes.iter().enumerate() {
        let Some(map) = &nc.map else { continue };
        let touched = nc
            .ins
            .iter()
            .chain(&nc.outs)
            .flatten()
            .any(|&v| kept[v].is_some());
        if !touched {
            continue;
        }
        // Slice the declared weights, all axes of one input at once.
        let mut per_input: BTreeMap<usize, Vec<(usize, Port)>> = BTreeMap::new();
        for w in &map.weights {
            per_input.entry(w.input).or_default().push((w.axis, w.port));
        }
        let mut cx = NodeCx {
            rw: &mut rw,
            node: i,
            dg,
            kept: &kept,
        };
        for (input, axes) in per_input {
            let Some(t) = nc.const_value(&dg.shapes, input) else {
                continue;
            };
            let mut t: Tensor = (*t).clone();
            let mut changed = false;
            for (axis, port) in axes {
                if let Some(k) = cx.kept(port) {
                    t = take(&t, axis, k)?;
                    changed = true;
                }
            }
            if changed {
                cx.set_input(input, t)?;
            }
        }
        let node = &model.graph.nodes[i];
        let op = ops::build(node, opset)?
            .ok_or_else(|| Error::op(&node.label(), &node.op_type, "not supported"))?;
        op.prune(&mut cx)?;
    }
    remove_dead(&mut out);
    refresh_shapes(&mut out, inputs)?;
    out.graph.validate()?;
    Ok(out)
}

/// Drops nodes whose outputs nobody reads (the shape arithmetic and
/// `Identity` aliases a rewrite left behind) and unused initializers.
pub(super) fn remove_dead(m: &mut Model) {
    let g = &mut m.graph;
    loop {
        let mut used: HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
        for n in &g.nodes {
            used.extend(n.inputs.iter().map(String::as_str));
        }
        let dead: Vec<usize> = (0..g.nodes.len())
            .filter(|&i| {
                let n = &g.nodes[i];
                n.is_onnx_domain()
                    && !n.outputs.is_empty()
                    && n.outputs
                        .iter()
                        .all(|o| o.is_empty() || !used.contains(o.as_str()))
            })
            .collect();
        if dead.is_empty() {
            break;
        }
        let dead: HashSet<usize> = dead.into_iter().collect();
        let mut i = 0;
        g.nodes.retain(|_| {
            i += 1;
            !dead.contains(&(i - 1))
        });
    }
    let mut used: HashSet<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    for n in &g.nodes {
        used.extend(n.inputs.iter().cloned());
    }
    let inputs: HashSet<String> = g.inputs.iter().map(|v| v.name.clone()).collect();
    g.initializers
        .retain(|t| used.contains(&t.name) || inputs.contains(&t.name));
    g.value_info
        .retain(|v| used.contains(&v.name) || g.nodes.iter().any(|n| n.outputs.contains(&v.name)));
}

/// Rewrites the fixed dims of `value_info` (and graph outputs) to the
/// shapes the pruned graph now has.
fn refresh_shapes(m: &mut Model, inputs: &[InputShape]) -> Result<()> {
    let info = infer_shapes_lenient(m, inputs)?;
    let g = &mut m.graph;
    for v in g.value_info.iter_mut().chain(g.outputs.iter_mut()) {
        let (Some(f), Some(dims)) = (info.facts.get(&v.name), v.shape.as_mut()) else {
            continue;
        };
        if dims.len() != f.shape.len() {
            continue;
        }
        for (d, &n) in dims.iter_mut().zip(&f.shape) {
            if let Dim::Known(k) = d {
                if *k != n {
                    *d = Dim::Known(n);
                }
            }
        }
    }
    Ok(())
}
