//! The intermediate representation: a lossless graph of ONNX nodes, typed
//! values and constant tensors, plus the runtime [`Tensor`]. Knows nothing
//! about protobuf (see `onnx/`) nor about pruning.

mod dtype;
mod graph;
mod shapes;
mod tensor;

pub use dtype::{DType, Storage};
pub(crate) use graph::{decode_le, encode_le, Encoding};
pub use graph::{AttrValue, Attribute, ConstTensor, Dim, Graph, Model, Node, Opaque, ValueInfo};
pub use shapes::{resolve_input_shapes, InputShape};
pub use tensor::{numel, strides, Data, Tensor};
