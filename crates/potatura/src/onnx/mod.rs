//! ONNX protobuf I/O. The only module that sees protobuf types.
//!
//! Loading turns a `ModelProto` into the IR; every field the IR does not
//! interpret is kept as encoded bytes ([`Opaque`]) so that saving an
//! unmodified model reproduces the input byte for byte. Sizes read from the
//! file are checked against the bytes actually present before anything is
//! allocated from them.

#[allow(clippy::all, missing_docs)]
mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use std::collections::HashMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use prost::Message;
use proto::attribute_proto::AttributeType as AT;

use crate::error::{Error, Result};
use crate::ir::{
    AttrValue, Attribute, ConstTensor, DType, Dim, Encoding, Graph, Model, Node, Opaque, ValueInfo,
};

/// Largest model file we read (protobuf's own limit is 2 GiB).
const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Loads an ONNX model from a file. External data is read relative to the
/// model's folder.
pub fn load(path: &Path) -> Result<Model> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        error: e,
    })?;
    if meta.len() > MAX_MODEL_BYTES {
        return Err(Error::NotOnnx {
            path: path.to_path_buf(),
            detail: format!("file is {} bytes, over protobuf's 2 GiB limit", meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        error: e,
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_bytes(&bytes, Some(&base), path)
}

/// Loads a model from bytes. `base_dir` is where external data lives
/// (`None` refuses external data); `path` is used in messages.
pub fn load_bytes(bytes: &[u8], base_dir: Option<&Path>, path: &Path) -> Result<Model> {
    let not_onnx = |detail: String| Error::NotOnnx {
        path: path.to_path_buf(),
        detail,
    };
    let mut mp = proto::ModelProto::decode(bytes).map_err(|e| not_onnx(e.to_string()))?;
    let graph = mp
        .graph
        .take()
        .ok_or_else(|| not_onnx("the model has no graph".into()))?;
    if mp.ir_version.is_none() && mp.opset_import.is_empty() && graph.node.is_empty() {
        return Err(not_onnx("no ir_version, opset or nodes found".into()));
    }
    let opsets = parse_opsets(&mp.opset_import);
    let mut ctx = LoadCtx {
        base_dir: base_dir.map(Path::to_path_buf),
        path: path.to_path_buf(),
        files: HashMap::new(),
    };
    let graph = graph_from_proto(graph, &mut ctx)?;
    Ok(Model {
        graph,
        opsets,
        rest: Opaque(mp.encode_to_vec()),
        base_dir: base_dir.map(Path::to_path_buf),
    })
}

/// An empty model (IR version 8, the given default-domain opset, a graph
/// named `name`) to fill in: for building models in code and tests.
pub fn new_model(name: &str, opset: i64) -> Model {
    let mp = proto::ModelProto {
        ir_version: Some(8),
        producer_name: Some("potatura".into()),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(proto::GraphProto {
            name: Some(name.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    load_bytes(&mp.encode_to_vec(), None, Path::new(name)).expect("a minimal model loads")
}

/// Serialises a model. Tensors stored externally keep their references;
/// use [`save`] to write them too.
pub fn to_bytes(model: &Model) -> Result<Vec<u8>> {
    Ok(model_to_proto(model, &HashMap::new())?.encode_to_vec())
}

/// Writes a model atomically (temporary file, then rename). Externally
/// stored tensors are written to data files beside the output; a data
/// file the model was loaded from is never overwritten.
pub fn save(model: &Model, path: &Path) -> Result<()> {
    let out_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let out_dir_abs = std::fs::canonicalize(if out_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &out_dir
    })
    .ok();
    let base_abs = model.base_dir.as_ref().and_then(|b| {
        std::fs::canonicalize(if b.as_os_str().is_empty() {
            Path::new(".")
        } else {
            b
        })
        .ok()
    });
    let same_dir = out_dir_abs.is_some() && out_dir_abs == base_abs;
    // Gather external tensors by location.
    let mut by_loc: HashMap<String, Vec<&ConstTensor>> = HashMap::new();
    for t in all_const_tensors(&model.graph) {
        if let Encoding::External { location } = &t.encoding {
            by_loc.entry(location.clone()).or_default().push(t);
        }
    }
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.onnx".into());
    let mut remap = HashMap::new();
    for (i, loc) in by_loc.keys().enumerate() {
        let new_loc = if same_dir {
            if by_loc.len() == 1 {
                format!("{file_name}.data")
            } else {
                format!("{file_name}.{i}.data")
            }
        } else {
            loc.clone()
        };
        remap.insert(loc.clone(), new_loc);
    }
    let mp = model_to_proto(model, &remap)?;
    // Data files first, then the model.
    for (loc, tensors) in &by_loc {
        let target = out_dir.join(&remap[loc]);
        let mut extents: Vec<(u64, &[u8])> = Vec::new();
        for t in tensors {
            let (off, _) = external_extent(t).unwrap_or((0, 0));
            extents.push((off, t.raw()));
        }
        extents.sort_by_key(|e| e.0);
        let mut buf: Vec<u8> = Vec::new();
        for (off, data) in extents {
            let off = off as usize;
            if buf.len() < off {
                buf.resize(off, 0);
            }
            let end = off + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[off..end].copy_from_slice(data);
        }
        write_atomic(&target, &buf)?;
    }
    write_atomic(path, &mp.encode_to_vec())
}

/// Writes bytes to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        error: e,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io)
}

fn all_const_tensors(g: &Graph) -> impl Iterator<Item = &ConstTensor> {
    g.initializers.iter().chain(g.nodes.iter().flat_map(|n| {
        n.attrs.iter().filter_map(|a| match &a.value {
            AttrValue::Tensor(t) => Some(t),
            _ => None,
        })
    }))
}

fn external_extent(t: &ConstTensor) -> Option<(u64, u64)> {
    let tp = proto::TensorProto::decode(&t.rest.0[..]).ok()?;
    let mut off = 0;
    let mut len = t.raw().len() as u64;
    for e in &tp.external_data {
        match e.key.as_deref() {
            Some("offset") => off = e.value.as_deref()?.parse().ok()?,
            Some("length") => len = e.value.as_deref()?.parse().ok()?,
            _ => {}
        }
    }
    Some((off, len))
}

// ---------------------------------------------------------------- loading

struct LoadCtx {
    base_dir: Option<PathBuf>,
    path: PathBuf,
    files: HashMap<PathBuf, Vec<u8>>,
}

fn parse_opsets(v: &[proto::OperatorSetIdProto]) -> Vec<(String, i64)> {
    v.iter()
        .map(|o| (o.domain.clone().unwrap_or_default(), o.version.unwrap_or(0)))
        .collect()
}

fn graph_from_proto(mut g: proto::GraphProto, ctx: &mut LoadCtx) -> Result<Graph> {
    let nodes = std::mem::take(&mut g.node)
        .into_iter()
        .map(|n| node_from_proto(n, ctx))
        .collect::<Result<_>>()?;
    let initializers = std::mem::take(&mut g.initializer)
        .into_iter()
        .map(|t| tensor_from_proto(t, ctx))
        .collect::<Result<_>>()?;
    let inputs = std::mem::take(&mut g.input)
        .into_iter()
        .map(value_info_from_proto)
        .collect();
    let outputs = std::mem::take(&mut g.output)
        .into_iter()
        .map(value_info_from_proto)
        .collect();
    let value_info = std::mem::take(&mut g.value_info)
        .into_iter()
        .map(value_info_from_proto)
        .collect();
    Ok(Graph {
        nodes,
        initializers,
        inputs,
        outputs,
        value_info,
        rest: Opaque(g.encode_to_vec()),
    })
}

fn node_from_proto(mut n: proto::NodeProto, ctx: &mut LoadCtx) -> Result<Node> {
    let name = n.name.clone().unwrap_or_default();
    let attrs = std::mem::take(&mut n.attribute)
        .into_iter()
        .map(|a| attr_from_proto(a, ctx))
        .collect::<Result<_>>()?;
    Ok(Node {
        op_type: n.op_type.clone().unwrap_or_default(),
        domain: n.domain.clone().unwrap_or_default(),
        inputs: std::mem::take(&mut n.input),
        outputs: std::mem::take(&mut n.output),
        attrs,
        rest: Opaque(n.encode_to_vec()),
        name,
    })
}

fn attr_from_proto(mut a: proto::AttributeProto, ctx: &mut LoadCtx) -> Result<Attribute> {
    let name = a.name.clone().unwrap_or_default();
    let ty = a.r#type.and_then(|t| AT::try_from(t).ok());
    // Attributes without a type field (very old exports): infer from the field set.
    let ty = ty.filter(|t| *t != AT::Undefined).or_else(|| {
        if a.f.is_some() {
            Some(AT::Float)
        } else if a.i.is_some() {
            Some(AT::Int)
        } else if a.s.is_some() {
            Some(AT::String)
        } else if a.t.is_some() {
            Some(AT::Tensor)
        } else if !a.floats.is_empty() {
            Some(AT::Floats)
        } else if !a.ints.is_empty() {
            Some(AT::Ints)
        } else if !a.strings.is_empty() {
            Some(AT::Strings)
        } else {
            None
        }
    });
    let value = match ty {
        _ if a.ref_attr_name.is_some() => AttrValue::Other,
        Some(AT::Float) if a.f.is_some() => AttrValue::Float(a.f.take().unwrap()),
        Some(AT::Int) if a.i.is_some() => AttrValue::Int(a.i.take().unwrap()),
        Some(AT::String) if a.s.is_some() => AttrValue::String(a.s.take().unwrap()),
        Some(AT::Tensor) if a.t.is_some() => {
            AttrValue::Tensor(tensor_from_proto(a.t.take().unwrap(), ctx)?)
        }
        Some(AT::Floats) => AttrValue::Floats(std::mem::take(&mut a.floats)),
        Some(AT::Ints) => AttrValue::Ints(std::mem::take(&mut a.ints)),
        Some(AT::Strings) => AttrValue::Strings(std::mem::take(&mut a.strings)),
        _ => AttrValue::Other,
    };
    Ok(Attribute {
        name,
        value,
        rest: Opaque(a.encode_to_vec()),
    })
}

fn value_info_from_proto(v: proto::ValueInfoProto) -> ValueInfo {
    let (dtype, shape) = parse_type(v.r#type.as_ref());
    ValueInfo {
        name: v.name.clone().unwrap_or_default(),
        dtype,
        shape,
        rest: Opaque(v.encode_to_vec()),
    }
}

fn parse_type(t: Option<&proto::TypeProto>) -> (Option<DType>, Option<Vec<Dim>>) {
    use proto::tensor_shape_proto::dimension::Value as DV;
    use proto::type_proto::Value as TV;
    match t.and_then(|t| t.value.as_ref()) {
        Some(TV::TensorType(tt)) => {
            let dtype = tt.elem_type.map(DType::from_onnx);
            let shape = tt.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(DV::DimValue(v)) if *v >= 0 => Dim::Known(*v as usize),
                        Some(DV::DimParam(p)) => Dim::Sym(p.clone()),
                        _ => Dim::Unknown,
                    })
                    .collect()
            });
            (dtype, shape)
        }
        _ => (None, None),
    }
}

fn checked_dims(name: &str, dims: &[i64]) -> Result<Vec<usize>> {
    let bad = |d: String| Error::BadTensor {
        tensor: name.to_string(),
        detail: d,
    };
    let mut n: usize = 1;
    let mut out = Vec::with_capacity(dims.len());
    for &d in dims {
        if d < 0 {
            return Err(bad(format!("negative dimension in {dims:?}")));
        }
        n = n
            .checked_mul(d as usize)
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        out.push(d as usize);
    }
    Ok(out)
}

fn tensor_from_proto(mut t: proto::TensorProto, ctx: &mut LoadCtx) -> Result<ConstTensor> {
    let name = t.name.clone().unwrap_or_default();
    let bad = |d: String| Error::BadTensor {
        tensor: name.clone(),
        detail: d,
    };
    let dtype = DType::from_onnx(t.data_type.unwrap_or(0));
    let dims = checked_dims(&name, &t.dims)?;
    let numel: usize = dims.iter().product();
    let external = t.data_location == Some(proto::tensor_proto::DataLocation::External as i32);
    let (raw, encoding) = if external {
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for e in &t.external_data {
            let val = e.value.clone().unwrap_or_default();
            match e.key.as_deref() {
                Some("location") => location = Some(val),
                Some("offset") => {
                    offset = val
                        .parse()
                        .map_err(|_| bad(format!("external data offset '{val}' is not a number")))?
                }
                Some("length") => {
                    length = Some(val.parse::<u64>().map_err(|_| {
                        bad(format!("external data length '{val}' is not a number"))
                    })?)
                }
                _ => {}
            }
        }
        let location = location.ok_or_else(|| bad("external data without a location".into()))?;
        let raw = read_external(ctx, &name, &location, offset, length)?;
        (raw, Encoding::External { location })
    } else if let Some(raw) = t.raw_data.take() {
        (raw, Encoding::Raw)
    } else {
        match typed_to_raw(dtype, &mut t) {
            Some(raw) => (raw, Encoding::Typed),
            None => (Vec::new(), Encoding::Typed),
        }
    };
    if let Some(size) = dtype.size_of() {
        let has_data = !raw.is_empty() || numel == 0 || !matches!(encoding, Encoding::Typed);
        if has_data && raw.len() != numel.saturating_mul(size) {
            return Err(bad(format!(
                "holds {} bytes of data but its shape {dims:?} of {dtype} needs {}; the file is corrupt or truncated",
                raw.len(),
                numel.saturating_mul(size)
            )));
        }
        if !has_data {
            return Err(bad(format!("shape {dims:?} of {dtype} but no data")));
        }
    }
    Ok(ConstTensor::from_parts(
        name,
        dtype,
        dims,
        raw,
        encoding,
        Opaque(t.encode_to_vec()),
    ))
}

/// Moves the typed repeated field for `dtype` into little-endian bytes.
/// Returns None (leaving the proto untouched) for strings and unknown types.
fn typed_to_raw(dtype: DType, t: &mut proto::TensorProto) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match dtype {
        DType::F32 => std::mem::take(&mut t.float_data)
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::F64 => std::mem::take(&mut t.double_data)
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::I64 => std::mem::take(&mut t.int64_data)
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::U64 => std::mem::take(&mut t.uint64_data)
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::U32 => std::mem::take(&mut t.uint64_data)
            .iter()
            .for_each(|x| out.extend_from_slice(&(*x as u32).to_le_bytes())),
        DType::I32 => std::mem::take(&mut t.int32_data)
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::I16 | DType::U16 | DType::F16 | DType::BF16 => std::mem::take(&mut t.int32_data)
            .iter()
            .for_each(|x| out.extend_from_slice(&(*x as u16).to_le_bytes())),
        DType::I8 | DType::U8 | DType::Bool => std::mem::take(&mut t.int32_data)
            .iter()
            .for_each(|x| out.push(*x as u8)),
        DType::String | DType::Other(_) => return None,
    }
    Some(out)
}

/// Puts little-endian bytes back into the typed repeated field for `dtype`.
fn raw_to_typed(dtype: DType, raw: &[u8], t: &mut proto::TensorProto) {
    match dtype {
        DType::F32 => {
            t.float_data = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        DType::F64 => {
            t.double_data = raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        DType::I64 => {
            t.int64_data = raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        DType::U64 => {
            t.uint64_data = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        DType::U32 => {
            t.uint64_data = raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64)
                .collect()
        }
        DType::I32 => {
            t.int32_data = raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        DType::I16 => {
            t.int32_data = raw
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i32)
                .collect()
        }
        DType::U16 | DType::F16 | DType::BF16 => {
            t.int32_data = raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i32)
                .collect()
        }
        DType::I8 => t.int32_data = raw.iter().map(|&b| b as i8 as i32).collect(),
        DType::U8 | DType::Bool => t.int32_data = raw.iter().map(|&b| b as i32).collect(),
        DType::String | DType::Other(_) => {}
    }
}

fn read_external(
    ctx: &mut LoadCtx,
    name: &str,
    location: &str,
    offset: u64,
    length: Option<u64>,
) -> Result<Vec<u8>> {
    let bad = |d: String| Error::BadTensor {
        tensor: name.to_string(),
        detail: d,
    };
    let base = ctx.base_dir.clone().ok_or_else(|| {
        bad(format!(
            "stored in external file '{location}', but the model was not loaded from a file"
        ))
    })?;
    let rel = Path::new(location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(format!(
            "external data location '{location}' escapes the model's folder; refusing to read it (locations must be relative paths inside {})",
            base.display()
        )));
    }
    let file = base.join(rel);
    if !ctx.files.contains_key(&file) {
        let bytes = std::fs::read(&file).map_err(|e| {
            bad(format!(
                "external data file '{}' (referenced by {}) cannot be read: {e}; keep the data file beside the model",
                file.display(),
                ctx.path.display()
            ))
        })?;
        ctx.files.insert(file.clone(), bytes);
    }
    let data = &ctx.files[&file];
    let len = length.unwrap_or((data.len() as u64).saturating_sub(offset));
    let end = offset
        .checked_add(len)
        .ok_or_else(|| bad("external data offset + length overflows".into()))?;
    if end > data.len() as u64 {
        return Err(bad(format!(
            "external data range {offset}..{end} is past the end of '{}' ({} bytes); the data file is truncated or does not belong to this model",
            file.display(),
            data.len()
        )));
    }
    Ok(data[offset as usize..end as usize].to_vec())
}

// ----------------------------------------------------------------- saving

fn decode_rest<M: Message + Default>(o: &Opaque) -> Result<M> {
    M::decode(&o.0[..])
        .map_err(|e| Error::Usage(format!("internal: kept protobuf fields do not decode: {e}")))
}

fn set_if_changed(field: &mut Option<String>, value: &str) {
    if field.as_deref().unwrap_or("") != value {
        *field = Some(value.to_string());
    }
}

fn model_to_proto(m: &Model, remap: &HashMap<String, String>) -> Result<proto::ModelProto> {
    let mut mp: proto::ModelProto = decode_rest(&m.rest)?;
    if parse_opsets(&mp.opset_import) != m.opsets {
        mp.opset_import = m
            .opsets
            .iter()
            .map(|(d, v)| proto::OperatorSetIdProto {
                domain: Some(d.clone()),
                version: Some(*v),
            })
            .collect();
    }
    mp.graph = Some(graph_to_proto(&m.graph, remap)?);
    Ok(mp)
}

fn graph_to_proto(g: &Graph, remap: &HashMap<String, String>) -> Result<proto::GraphProto> {
    let mut gp: proto::GraphProto = decode_rest(&g.rest)?;
    gp.node = g
        .nodes
        .iter()
        .map(|n| node_to_proto(n, remap))
        .collect::<Result<_>>()?;
    gp.initializer = g
        .initializers
        .iter()
        .map(|t| tensor_to_proto(t, remap))
        .collect::<Result<_>>()?;
    gp.input = g
        .inputs
        .iter()
        .map(value_info_to_proto)
        .collect::<Result<_>>()?;
    gp.output = g
        .outputs
        .iter()
        .map(value_info_to_proto)
        .collect::<Result<_>>()?;
    gp.value_info = g
        .value_info
        .iter()
        .map(value_info_to_proto)
        .collect::<Result<_>>()?;
    Ok(gp)
}

fn node_to_proto(n: &Node, remap: &HashMap<String, String>) -> Result<proto::NodeProto> {
    let mut np: proto::NodeProto = decode_rest(&n.rest)?;
    set_if_changed(&mut np.name, &n.name);
    set_if_changed(&mut np.op_type, &n.op_type);
    set_if_changed(&mut np.domain, &n.domain);
    np.input = n.inputs.clone();
    np.output = n.outputs.clone();
    np.attribute = n
        .attrs
        .iter()
        .map(|a| attr_to_proto(a, remap))
        .collect::<Result<_>>()?;
    Ok(np)
}

fn attr_to_proto(a: &Attribute, remap: &HashMap<String, String>) -> Result<proto::AttributeProto> {
    let mut ap: proto::AttributeProto = decode_rest(&a.rest)?;
    set_if_changed(&mut ap.name, &a.name);
    let ty = match &a.value {
        AttrValue::Float(f) => {
            ap.f = Some(*f);
            Some(AT::Float)
        }
        AttrValue::Int(i) => {
            ap.i = Some(*i);
            Some(AT::Int)
        }
        AttrValue::String(s) => {
            ap.s = Some(s.clone());
            Some(AT::String)
        }
        AttrValue::Tensor(t) => {
            ap.t = Some(tensor_to_proto(t, remap)?);
            Some(AT::Tensor)
        }
        AttrValue::Floats(v) => {
            ap.floats = v.clone();
            Some(AT::Floats)
        }
        AttrValue::Ints(v) => {
            ap.ints = v.clone();
            Some(AT::Ints)
        }
        AttrValue::Strings(v) => {
            ap.strings = v.clone();
            Some(AT::Strings)
        }
        AttrValue::Other => None,
    };
    // New attributes get their type; loaded ones keep whatever the file had.
    if a.rest.0.is_empty() {
        ap.r#type = ty.map(|t| t as i32);
    }
    Ok(ap)
}

fn tensor_to_proto(t: &ConstTensor, remap: &HashMap<String, String>) -> Result<proto::TensorProto> {
    let mut tp: proto::TensorProto = decode_rest(&t.rest)?;
    set_if_changed(&mut tp.name, &t.name);
    let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
    if tp.dims != dims {
        tp.dims = dims;
    }
    if tp.data_type != Some(t.dtype().onnx_code()) {
        tp.data_type = Some(t.dtype().onnx_code());
    }
    match &t.encoding {
        Encoding::Raw => {
            tp.raw_data = Some(t.raw().to_vec());
            tp.external_data.clear();
            tp.data_location = None;
        }
        Encoding::Typed => raw_to_typed(t.dtype(), t.raw(), &mut tp),
        Encoding::External { location } => {
            if let Some(new) = remap.get(location) {
                for e in &mut tp.external_data {
                    if e.key.as_deref() == Some("location") {
                        e.value = Some(new.clone());
                    }
                }
            }
        }
    }
    Ok(tp)
}

fn value_info_to_proto(v: &ValueInfo) -> Result<proto::ValueInfoProto> {
    use proto::tensor_shape_proto::{dimension::Value as DV, Dimension};
    use proto::type_proto::{Tensor as TT, Value as TV};
    let mut vp: proto::ValueInfoProto = decode_rest(&v.rest)?;
    set_if_changed(&mut vp.name, &v.name);
    if parse_type(vp.r#type.as_ref()) != (v.dtype, v.shape.clone()) {
        let shape = v.shape.as_ref().map(|dims| proto::TensorShapeProto {
            dim: dims
                .iter()
                .map(|d| Dimension {
                    denotation: None,
                    value: match d {
                        Dim::Known(k) => Some(DV::DimValue(*k as i64)),
                        Dim::Sym(s) => Some(DV::DimParam(s.clone())),
                        Dim::Unknown => None,
                    },
                })
                .collect(),
        });
        vp.r#type = Some(proto::TypeProto {
            denotation: None,
            value: Some(TV::TensorType(TT {
                elem_type: v.dtype.map(DType::onnx_code),
                shape,
            })),
        });
    }
    Ok(vp)
}
