//! Operators. One file per op family; each op defines, side by side, how it
//! is built from a node, its shape inference, its evaluation and its MACs
//! (later also its gradient and its channel mapping). Adding an op is one
//! file plus one line in [`REGISTRY`].

use std::fmt::Debug;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ir::{DType, Node, Tensor};

pub mod channels;
pub mod common;

pub mod activation;
pub mod binary;
pub mod conv;
pub mod layout;
pub mod logic;
pub mod matmul;
pub mod norm;
pub mod pad;
pub mod pool;
pub mod reduce;
pub mod resize;
pub mod shape_ops;
pub mod softmax;
#[cfg(test)]
pub(crate) mod test_util;

/// Static knowledge about a value during shape inference: its dtype and
/// concrete shape, and its value when it is a constant (or computable from
/// shapes alone, like the output of `Shape`).
#[derive(Clone, Debug)]
pub struct Fact {
    /// Element type.
    pub dtype: DType,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// The value, when known before running.
    pub value: Option<Arc<Tensor>>,
}

impl Fact {
    /// A fact without a known value.
    pub fn new(dtype: DType, shape: Vec<usize>) -> Fact {
        Fact {
            dtype,
            shape,
            value: None,
        }
    }
    /// A fact for a known value.
    pub fn known(t: Tensor) -> Fact {
        Fact {
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            value: Some(Arc::new(t)),
        }
    }
}

/// An operator instance, built from one node's attributes.
pub trait Op: Debug + Send + Sync {
    /// Output facts from input facts (`None` marks an omitted optional
    /// input). Ops whose output shape depends on an input's *value* (the
    /// `shape` of Reshape, Slice bounds...) read it from `Fact::value`.
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>>;

    /// Computes the outputs.
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>>;

    /// Multiply-accumulates of one evaluation with these facts (Conv,
    /// ConvTranspose, Gemm, MatMul; 0 for everything else).
    fn macs(&self, _inputs: &[Option<&Fact>], _outputs: &[Fact]) -> u64 {
        0
    }

    /// How channels flow through this op at these facts (see
    /// [`channels`]). `None`, the default, freezes every channel the op
    /// touches.
    fn channels(&self, _cx: &channels::ChanCx) -> Option<channels::ChanMap> {
        None
    }

    /// Rewrites what pruning changes beyond the constants declared in
    /// [`channels::ChanMap::weights`] (which are already sliced): group
    /// counts, split sizes, reshape targets, slice bounds.
    fn prune(&self, _cx: &mut dyn channels::PruneCx) -> Result<()> {
        Ok(())
    }
}

/// Builds an op from a node; `opset` is the model's default-domain opset.
pub type Builder = fn(node: &Node, opset: i64) -> Result<Box<dyn Op>>;

/// Every supported op of the default ONNX domain.
pub static REGISTRY: &[(&str, Builder)] = &[
    // activation.rs
    ("Relu", activation::build),
    ("LeakyRelu", activation::build),
    ("Sigmoid", activation::build),
    ("HardSigmoid", activation::build),
    ("HardSwish", activation::build),
    ("Tanh", activation::build),
    ("Erf", activation::build),
    ("Gelu", activation::build),
    ("Clip", activation::build),
    ("Sqrt", activation::build),
    ("Exp", activation::build),
    ("Log", activation::build),
    ("Neg", activation::build),
    ("Abs", activation::build),
    // binary.rs
    ("Add", binary::build),
    ("Sub", binary::build),
    ("Mul", binary::build),
    ("Div", binary::build),
    ("Pow", binary::build),
    ("PRelu", binary::build),
    ("Equal", binary::build),
    ("Greater", binary::build),
    ("Less", binary::build),
    ("Max", binary::build),
    ("Min", binary::build),
    ("GreaterOrEqual", binary::build),
    ("LessOrEqual", binary::build),
    ("And", binary::build),
    ("Or", binary::build),
    ("Xor", binary::build),
    // conv.rs
    ("Conv", conv::build),
    ("ConvTranspose", conv::build),
    // layout.rs
    ("Transpose", layout::build),
    ("Concat", layout::build),
    ("Split", layout::build),
    ("Slice", layout::build),
    ("Gather", layout::build),
    // logic.rs
    ("Where", logic::build),
    ("Cast", logic::build),
    ("Not", logic::build),
    // matmul.rs
    ("Gemm", matmul::build),
    ("MatMul", matmul::build),
    // norm.rs
    ("BatchNormalization", norm::build),
    ("LayerNormalization", norm::build),
    // pad.rs
    ("Pad", pad::build),
    // pool.rs
    ("MaxPool", pool::build),
    ("AveragePool", pool::build),
    ("GlobalAveragePool", pool::build),
    ("GlobalMaxPool", pool::build),
    // reduce.rs
    ("ReduceMean", reduce::build),
    ("ReduceSum", reduce::build),
    ("ReduceMax", reduce::build),
    // resize.rs
    ("Resize", resize::build),
    // shape_ops.rs
    ("Identity", shape_ops::build),
    ("Dropout", shape_ops::build),
    ("Flatten", shape_ops::build),
    ("Reshape", shape_ops::build),
    ("Squeeze", shape_ops::build),
    ("Unsqueeze", shape_ops::build),
    ("Shape", shape_ops::build),
    ("Constant", shape_ops::build),
    ("ConstantOfShape", shape_ops::build),
    ("Range", shape_ops::build),
    ("Expand", shape_ops::build),
    // softmax.rs
    ("Softmax", softmax::build),
    ("LogSoftmax", softmax::build),
];

/// Builds the op for `node`; `Ok(None)` when the op is not supported.
pub fn build(node: &Node, opset: i64) -> Result<Option<Box<dyn Op>>> {
    if !node.is_onnx_domain() {
        return Ok(None);
    }
    match REGISTRY.iter().find(|(name, _)| *name == node.op_type) {
        Some((_, b)) => b(node, opset).map(Some),
        None => Ok(None),
    }
}

/// True when `node` can be built.
pub fn is_supported(node: &Node) -> bool {
    node.is_onnx_domain() && REGISTRY.iter().any(|(name, _)| *name == node.op_type)
}

/// An error from inside an op; the executor adds the node name and the
/// input shapes.
pub fn op_error(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}
