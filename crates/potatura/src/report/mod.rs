//! Measurements of a model: parameters and MACs per node and in total
//! (here), measured latency ([`latency`]).

pub mod latency;

use serde::Serialize;

use crate::error::Result;
use crate::exec::infer_shapes;
use crate::ir::{InputShape, Model};

/// One row of the per-node table.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    /// Node name (or a label when unnamed).
    pub name: String,
    /// Op type.
    pub op: String,
    /// Shapes of the outputs.
    pub output_shapes: Vec<Vec<usize>>,
    /// Parameters read by this node (elements of float constant inputs that
    /// are initializers or `Constant` outputs; each counted once, at its
    /// first reader).
    pub params: u64,
    /// Multiply-accumulates.
    pub macs: u64,
}

/// Totals and the per-node table.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Total parameters (elements of float initializers and float `Constant` values).
    pub params: u64,
    /// Total multiply-accumulates.
    pub macs: u64,
    /// Concrete input shapes used.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Per node, in graph order.
    pub nodes: Vec<NodeRow>,
}

/// Float constants (initializers and `Constant` values of more than one
/// element) by name, with their element counts: the model's parameters.
fn param_sizes(model: &Model) -> std::collections::HashMap<&str, u64> {
    let g = &model.graph;
    let mut param_sizes: std::collections::HashMap<&str, u64> = g
        .initializers
        .iter()
        .filter(|t| t.dtype().is_float())
        .map(|t| (t.name.as_str(), t.numel() as u64))
        .collect();
    for n in &g.nodes {
        if n.op_type == "Constant" {
            if let (Some(out), Ok(Some(t))) = (n.outputs.first(), n.attr_tensor("value")) {
                if t.dtype().is_float() && t.numel() > 1 {
                    param_sizes.insert(out.as_str(), t.numel() as u64);
                }
            }
        }
    }
    param_sizes
}

/// Length of `bytes` gzip-compressed (fast level): how much smaller a
/// sparse model ships. Large files are compressed in 8 MiB pieces on all
/// cores (as a parallel gzip does; each piece restarts the dictionary,
/// which costs well under 0.1% of the size).
pub fn gzip_len(bytes: &[u8]) -> u64 {
    use rayon::prelude::*;
    use std::io::Write;
    bytes
        .par_chunks(8 << 20)
        .map(|piece| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = e.write_all(piece);
            e.finish().map(|v| v.len() as u64).unwrap_or(0)
        })
        .sum()
}

/// Total parameters: elements of float initializers and `Constant` values.
pub fn count_params(model: &Model) -> u64 {
    param_sizes(model).values().sum()
}

/// Counts parameters and MACs at the given input shapes.
pub fn summarize(model: &Model, inputs: &[InputShape]) -> Result<Summary> {
    let info = infer_shapes(model, inputs)?;
    let g = &model.graph;
    let param_sizes = param_sizes(model);
    let total_params: u64 = param_sizes.values().sum();
    let mut seen = std::collections::HashSet::new();
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for (n, ni) in g.nodes.iter().zip(&info.nodes) {
        let mut params = 0;
        for i in &n.inputs {
            if let Some(&p) = param_sizes.get(i.as_str()) {
                if seen.insert(i.as_str()) {
                    params += p;
                }
            }
        }
        nodes.push(NodeRow {
            name: n.label(),
            op: n.op_type.clone(),
            output_shapes: ni.outputs.iter().map(|f| f.shape.clone()).collect(),
            params,
            macs: ni.macs,
        });
    }
    Ok(Summary {
        params: total_params,
        macs: nodes.iter().map(|r| r.macs).sum(),
        inputs: inputs
            .iter()
            .map(|i| (i.name.clone(), i.shape.clone()))
            .collect(),
        nodes,
    })
}
