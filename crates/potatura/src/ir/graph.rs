//! The graph IR: a lossless, editable mirror of an ONNX model.
//!
//! Wires are tensor names, as in ONNX. Every field the IR does not interpret
//! is carried in an [`Opaque`] blob that only the `onnx` module reads, so an
//! unmodified model saves byte-identically.

use std::collections::{HashMap, HashSet};

use super::dtype::DType;
use super::tensor::{numel, Data, Tensor};
use crate::error::{Error, Result};

/// Encoded protobuf bytes of the parts of a message the IR does not
/// interpret. Only the `onnx` module reads or writes them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Opaque(pub(crate) Vec<u8>);

/// One dimension of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Known(usize),
    /// A named symbolic size (`batch`, `seq`, ...).
    Sym(String),
    /// Unknown size.
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A declared graph input, output or intermediate value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Tensor name.
    pub name: String,
    /// Element type, when declared as a tensor.
    pub dtype: Option<DType>,
    /// Declared shape, when given.
    pub shape: Option<Vec<Dim>>,
    pub(crate) rest: Opaque,
}

impl ValueInfo {
    /// A new tensor value declaration.
    pub fn new(name: &str, dtype: DType, shape: Vec<Dim>) -> ValueInfo {
        ValueInfo {
            name: name.to_string(),
            dtype: Some(dtype),
            shape: Some(shape),
            rest: Opaque::default(),
        }
    }
}

/// How a constant tensor's data was stored in the file; kept so an
/// unmodified tensor is written back the same way.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Encoding {
    /// In `raw_data`.
    Raw,
    /// In the typed repeated field for its dtype (`float_data`, `int64_data`...).
    Typed,
    /// In an external file, relative to the model.
    External {
        /// Location as written in the model.
        location: String,
    },
}

/// A constant tensor as stored in the model: an initializer or the value of
/// a `Constant` node. Data is kept as little-endian bytes of its dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstTensor {
    /// Tensor name.
    pub name: String,
    dtype: DType,
    dims: Vec<usize>,
    raw: Vec<u8>,
    pub(crate) encoding: Encoding,
    pub(crate) rest: Opaque,
}

impl ConstTensor {
    pub(crate) fn from_parts(
        name: String,
        dtype: DType,
        dims: Vec<usize>,
        raw: Vec<u8>,
        encoding: Encoding,
        rest: Opaque,
    ) -> ConstTensor {
        ConstTensor {
            name,
            dtype,
            dims,
            raw,
            encoding,
            rest,
        }
    }

    /// A new constant from a runtime tensor (stored as `raw_data`).
    pub fn from_tensor(name: &str, t: &Tensor) -> Result<ConstTensor> {
        let raw = encode_le(t.dtype(), t.data())?;
        Ok(ConstTensor {
            name: name.to_string(),
            dtype: t.dtype(),
            dims: t.shape().to_vec(),
            raw,
            encoding: Encoding::Raw,
            rest: Opaque::default(),
        })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Shape.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.dims)
    }
    /// Little-endian element bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
    /// Size of the data in bytes.
    pub fn byte_len(&self) -> usize {
        self.raw.len()
    }

    /// Replaces the data (and possibly shape and dtype); the tensor is then
    /// written as `raw_data` inside the model.
    pub fn set(&mut self, t: &Tensor) -> Result<()> {
        self.raw = encode_le(t.dtype(), t.data())?;
        self.dtype = t.dtype();
        self.dims = t.shape().to_vec();
        self.encoding = Encoding::Raw;
        Ok(())
    }

    /// The values as a runtime tensor (f16/bf16/f64 become f32 storage, ints i64).
    pub fn to_tensor(&self) -> Result<Tensor> {
        decode_le(&self.name, self.dtype, &self.dims, &self.raw)
    }
}

/// Decodes little-endian element bytes into a runtime tensor.
pub(crate) fn decode_le(name: &str, dtype: DType, dims: &[usize], raw: &[u8]) -> Result<Tensor> {
    let bad = |d: String| Error::BadTensor {
        tensor: name.to_string(),
        detail: d,
    };
    let size = dtype
        .size_of()
        .ok_or_else(|| bad(format!("dtype {dtype} cannot be computed with")))?;
    let n = numel(dims);
    if raw.len() != n * size {
        return Err(bad(format!(
            "holds {} bytes but shape {dims:?} of {dtype} needs {}",
            raw.len(),
            n * size
        )));
    }
    let shape = dims.to_vec();
    macro_rules! ints {
        ($t:ty) => {
            Tensor::from_int(
                dtype,
                shape,
                raw.chunks_exact(size)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            )
        };
    }
    Ok(match dtype {
        DType::F32 => Tensor::from_f32(
            shape,
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        DType::F16 => Tensor::from_float(
            dtype,
            shape,
            raw.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        DType::BF16 => Tensor::from_float(
            dtype,
            shape,
            raw.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        DType::F64 => Tensor::from_float(
            dtype,
            shape,
            raw.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
        ),
        DType::Bool => Tensor::from_bool(shape, raw.iter().map(|&b| b != 0).collect()),
        DType::U8 => ints!(u8),
        DType::I8 => ints!(i8),
        DType::U16 => ints!(u16),
        DType::I16 => ints!(i16),
        DType::I32 => ints!(i32),
        DType::U32 => ints!(u32),
        DType::I64 => ints!(i64),
        DType::U64 => ints!(u64),
        DType::String | DType::Other(_) => {
            return Err(bad(format!("dtype {dtype} cannot be computed with")))
        }
    })
}

/// Encodes runtime values as little-endian bytes of `dtype`.
pub(crate) fn encode_le(dtype: DType, data: &Data) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * dtype.size_of().unwrap_or(0));
    match (dtype, data) {
        (DType::F32, Data::F32(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        (DType::F16, Data::F32(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
        (DType::BF16, Data::F32(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
        (DType::F64, Data::F32(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&(*x as f64).to_le_bytes())),
        (DType::Bool, Data::Bool(v)) => v.iter().for_each(|x| out.push(*x as u8)),
        (DType::U8, Data::I64(v)) => v.iter().for_each(|x| out.push(*x as u8)),
        (DType::I8, Data::I64(v)) => v.iter().for_each(|x| out.push(*x as i8 as u8)),
        (DType::U16, Data::I64(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&(*x as u16).to_le_bytes())),
        (DType::I16, Data::I64(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&(*x as i16).to_le_bytes())),
        (DType::I32, Data::I64(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&(*x as i32).to_le_bytes())),
        (DType::U32, Data::I64(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&(*x as u32).to_le_bytes())),
        (DType::I64, Data::I64(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        (DType::U64, Data::I64(v)) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&(*x as u64).to_le_bytes())),
        _ => {
            return Err(Error::Usage(format!(
                "internal: cannot encode {dtype} from its storage"
            )))
        }
    }
    Ok(out)
}

/// A node attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// FLOAT.
    Float(f32),
    /// INT.
    Int(i64),
    /// STRING (bytes).
    String(Vec<u8>),
    /// TENSOR.
    Tensor(ConstTensor),
    /// FLOATS.
    Floats(Vec<f32>),
    /// INTS.
    Ints(Vec<i64>),
    /// STRINGS.
    Strings(Vec<Vec<u8>>),
    /// Anything else (subgraphs, sparse tensors, type protos, attribute
    /// references): kept as it is in the file, not interpreted.
    Other,
}

/// A named attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// Attribute name.
    pub name: String,
    /// Its value.
    pub value: AttrValue,
    pub(crate) rest: Opaque,
}

impl Attribute {
    /// A new attribute.
    pub fn new(name: &str, value: AttrValue) -> Attribute {
        Attribute {
            name: name.to_string(),
            value,
            rest: Opaque::default(),
        }
    }
}

/// One operator application.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Node name (may be empty in the file; see [`Node::label`]).
    pub name: String,
    /// ONNX op type (`Conv`, `Relu`, ...).
    pub op_type: String,
    /// Operator domain (`""` is the default ONNX domain).
    pub domain: String,
    /// Input tensor names (`""` marks an omitted optional input).
    pub inputs: Vec<String>,
    /// Output tensor names.
    pub outputs: Vec<String>,
    /// Attributes in file order.
    pub attrs: Vec<Attribute>,
    pub(crate) rest: Opaque,
}

impl Node {
    /// A new node in the default domain.
    pub fn new(
        name: &str,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<Attribute>,
    ) -> Node {
        Node {
            name: name.to_string(),
            op_type: op_type.to_string(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attrs,
            rest: Opaque::default(),
        }
    }

    /// A name for messages: the node name, or `op_type(first output)` when unnamed.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!(
                "{}({})",
                self.op_type,
                self.outputs.first().map(String::as_str).unwrap_or("")
            )
        } else {
            self.name.clone()
        }
    }

    /// True for ops of the default ONNX domain.
    pub fn is_onnx_domain(&self) -> bool {
        self.domain.is_empty() || self.domain == "ai.onnx"
    }

    /// The attribute called `name`.
    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attrs.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    fn attr_err(&self, name: &str, want: &str) -> Error {
        Error::op(
            &self.label(),
            &self.op_type,
            format!("attribute '{name}' should be {want}"),
        )
    }

    /// INT attribute, or `default` when absent.
    pub fn attr_int(&self, name: &str, default: i64) -> Result<i64> {
        match self.attr(name) {
            None => Ok(default),
            Some(AttrValue::Int(i)) => Ok(*i),
            Some(_) => Err(self.attr_err(name, "an int")),
        }
    }
    /// FLOAT attribute, or `default` when absent.
    pub fn attr_float(&self, name: &str, default: f32) -> Result<f32> {
        match self.attr(name) {
            None => Ok(default),
            Some(AttrValue::Float(f)) => Ok(*f),
            Some(AttrValue::Int(i)) => Ok(*i as f32),
            Some(_) => Err(self.attr_err(name, "a float")),
        }
    }
    /// INTS attribute, if present.
    pub fn attr_ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Ints(v)) => Ok(Some(v.clone())),
            Some(AttrValue::Int(i)) => Ok(Some(vec![*i])),
            Some(_) => Err(self.attr_err(name, "a list of ints")),
        }
    }
    /// FLOATS attribute, if present.
    pub fn attr_floats(&self, name: &str) -> Result<Option<Vec<f32>>> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Floats(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.attr_err(name, "a list of floats")),
        }
    }
    /// STRING attribute (UTF-8), or `default` when absent.
    pub fn attr_string(&self, name: &str, default: &str) -> Result<String> {
        match self.attr(name) {
            None => Ok(default.to_string()),
            Some(AttrValue::String(s)) => Ok(String::from_utf8_lossy(s).into_owned()),
            Some(_) => Err(self.attr_err(name, "a string")),
        }
    }
    /// TENSOR attribute, if present.
    pub fn attr_tensor(&self, name: &str) -> Result<Option<&ConstTensor>> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Tensor(t)) => Ok(Some(t)),
            Some(_) => Err(self.attr_err(name, "a tensor")),
        }
    }

    /// Input `i` if present and not omitted.
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// A computation graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// Nodes in file order (topologically sorted in valid models).
    pub nodes: Vec<Node>,
    /// Constant tensors.
    pub initializers: Vec<ConstTensor>,
    /// Declared inputs (may include initializers in old models).
    pub inputs: Vec<ValueInfo>,
    /// Declared outputs.
    pub outputs: Vec<ValueInfo>,
    /// Declared intermediate value types.
    pub value_info: Vec<ValueInfo>,
    pub(crate) rest: Opaque,
}

/// A model: one graph plus opset imports and everything else in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The main graph.
    pub graph: Graph,
    /// Opset imports as (domain, version); `""` is the default ONNX domain.
    pub opsets: Vec<(String, i64)>,
    pub(crate) rest: Opaque,
    /// Folder the model was loaded from (external data is relative to it).
    pub base_dir: Option<std::path::PathBuf>,
}

impl Model {
    /// Version of the default ONNX opset.
    pub fn opset(&self) -> i64 {
        self.opsets
            .iter()
            .find(|(d, _)| d.is_empty() || d == "ai.onnx")
            .map(|(_, v)| *v)
            .unwrap_or(1)
    }
}

impl Graph {
    /// Names of initializers.
    pub fn initializer_names(&self) -> HashSet<&str> {
        self.initializers.iter().map(|t| t.name.as_str()).collect()
    }

    /// Inputs that must be fed (declared inputs that are not initializers).
    pub fn real_inputs(&self) -> Vec<&ValueInfo> {
        let inits = self.initializer_names();
        self.inputs
            .iter()
            .filter(|v| !inits.contains(v.name.as_str()))
            .collect()
    }

    /// The initializer called `name`.
    pub fn initializer(&self, name: &str) -> Option<&ConstTensor> {
        self.initializers.iter().find(|t| t.name == name)
    }

    /// Map from tensor name to the index of the node producing it.
    pub fn producers(&self) -> HashMap<&str, usize> {
        let mut m = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                if !o.is_empty() {
                    m.insert(o.as_str(), i);
                }
            }
        }
        m
    }

    /// Map from tensor name to the indices of the nodes reading it.
    pub fn consumers(&self) -> HashMap<&str, Vec<usize>> {
        let mut m: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for inp in &n.inputs {
                if !inp.is_empty() {
                    m.entry(inp.as_str()).or_default().push(i);
                }
            }
        }
        m
    }

    /// The constant value of `name`: an initializer, or the output of a
    /// `Constant` node with a `value` tensor.
    pub fn const_tensor(&self, name: &str) -> Option<&ConstTensor> {
        if let Some(t) = self.initializer(name) {
            return Some(t);
        }
        self.nodes
            .iter()
            .find(|n| {
                n.op_type == "Constant" && n.outputs.first().map(String::as_str) == Some(name)
            })
            .and_then(|n| n.attr_tensor("value").ok().flatten())
    }

    /// Node indices in an order where every node comes after its producers.
    /// Errors on cycles and on inputs nothing produces.
    pub fn topo_order(&self) -> Result<Vec<usize>> {
        let producers = self.producers();
        let mut available: HashSet<&str> = self.inputs.iter().map(|v| v.name.as_str()).collect();
        available.extend(self.initializers.iter().map(|t| t.name.as_str()));
        // Kahn's algorithm over node dependencies.
        let mut indeg = vec![0usize; self.nodes.len()];
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
                if available.contains(inp.as_str()) {
                    continue;
                }
                match producers.get(inp.as_str()) {
                    Some(&p) => {
                        indeg[i] += 1;
                        dependents[p].push(i);
                    }
                    None => {
                        return Err(Error::InvalidModel {
                            path: Default::default(),
                            detail: format!(
                                "node '{}' ({}) reads tensor '{inp}', which no node, initializer or graph input provides",
                                n.label(),
                                n.op_type
                            ),
                        })
                    }
                }
            }
        }
        let mut ready: std::collections::VecDeque<usize> =
            (0..self.nodes.len()).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(i) = ready.pop_front() {
            order.push(i);
            for &d in &dependents[i] {
                indeg[d] -= 1;
                if indeg[d] == 0 {
                    ready.push_back(d);
                }
            }
        }
        if order.len() != self.nodes.len() {
            let stuck: Vec<String> = (0..self.nodes.len())
                .filter(|&i| indeg[i] > 0)
                .take(5)
                .map(|i| self.nodes[i].label())
                .collect();
            return Err(Error::InvalidModel {
                path: Default::default(),
                detail: format!("the graph has a cycle through nodes {stuck:?}"),
            });
        }
        Ok(order)
    }

    /// Structural checks: unique producers, every input provided, every
    /// graph output produced, no cycle.
    pub fn validate(&self) -> Result<()> {
        let invalid = |detail: String| Error::InvalidModel {
            path: Default::default(),
            detail,
        };
        let mut defined: HashSet<&str> = HashSet::new();
        for v in &self.inputs {
            defined.insert(v.name.as_str());
        }
        for t in &self.initializers {
            defined.insert(t.name.as_str());
        }
        for n in &self.nodes {
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                if !defined.insert(o.as_str()) && self.initializer(o).is_none() {
                    return Err(invalid(format!(
                        "tensor '{o}' is produced twice (again by node '{}')",
                        n.label()
                    )));
                }
            }
        }
        for o in &self.outputs {
            if !defined.contains(o.name.as_str()) {
                return Err(invalid(format!(
                    "graph output '{}' is not produced by any node",
                    o.name
                )));
            }
        }
        for t in &self.initializers {
            if t.dtype().size_of().is_some()
                && t.raw().len() != t.numel() * t.dtype().size_of().unwrap()
            {
                return Err(invalid(format!(
                    "initializer '{}' has {} bytes for shape {:?} of {}",
                    t.name,
                    t.raw().len(),
                    t.dims(),
                    t.dtype()
                )));
            }
        }
        self.topo_order()?;
        Ok(())
    }
}
