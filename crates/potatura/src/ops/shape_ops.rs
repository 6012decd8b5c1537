//! Ops that move or reinterpret data without arithmetic, and the ops of
//! shape subgraphs: Identity, Dropout (inference), Flatten, Reshape,
//! Squeeze, Unsqueeze, Shape, Constant, ConstantOfShape, Range, Expand.
//!
//! Ops whose output *shape* depends on an input's *value* (Reshape's target,
//! Squeeze/Unsqueeze axes, ConstantOfShape, Range, Expand) read that value
//! from [`Fact::value`] during inference, and say clearly when it is only
//! known at run time. `Shape` always infers its value, which lets whole
//! shape subgraphs fold into constants.

use super::channels::{regroup_map, ChanCx, ChanMap, Link, Port, PruneCx, Use};
use super::common::{broadcast_shapes, fact, fact_value, input, opt};
use super::layout::view_tensor;
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{numel, strides, AttrValue, DType, Data, Node, Storage, Tensor};

/// Largest number of elements an op may create from values found in the
/// model (ConstantOfShape, Range, Expand targets), so a malformed model
/// gives an error instead of an enormous allocation.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Number of elements of `shape`, or an error when it overflows or exceeds
/// [`MAX_ELEMENTS`].
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| op_error(format!("shape {shape:?} has too many elements")))?;
    if n > MAX_ELEMENTS {
        return Err(op_error(format!(
            "shape {shape:?} has {n} elements, more than the limit of {MAX_ELEMENTS}"
        )));
    }
    Ok(n)
}

/// Dimensions from i64 values, rejecting negative ones (`what` names them
/// in the error).
pub fn dims_from_i64(v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| op_error(format!("{what} {v:?} has a negative dimension")))
        })
        .collect()
}

/// The values of an integer input tensor (`what` names it in the error).
pub fn ints_input(t: &Tensor, what: &str) -> Result<Vec<i64>> {
    match t.data() {
        Data::I64(v) => Ok(v.clone()),
        _ => Err(op_error(format!(
            "{what} must be an integer tensor, got {}",
            t.dtype()
        ))),
    }
}

/// The integer values of optional input `i` during shape inference:
/// `None` when the input is omitted, an error naming `what` when it is
/// present but its value is only known at run time.
pub fn known_ints(inputs: &[Option<&Fact>], i: usize, what: &str) -> Result<Option<Vec<i64>>> {
    if opt(inputs, i).is_none() {
        return Ok(None);
    }
    match fact_value(inputs, i) {
        Some(t) => ints_input(t, what).map(Some),
        None => Err(op_error(format!(
            "{what} is computed at run time; shape inference needs it to be a constant or computable from \
             the input shapes"
        ))),
    }
}

/// Normalises possibly negative axes for `rank`, rejecting out-of-range and
/// repeated axes.
pub fn unique_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut seen = vec![false; rank];
    axes.iter()
        .map(|&a| {
            let b = if a < 0 { a + rank as i64 } else { a };
            if b < 0 || b >= rank as i64 {
                return Err(op_error(format!(
                    "axis {a} is out of range for rank {rank}"
                )));
            }
            if std::mem::replace(&mut seen[b as usize], true) {
                return Err(op_error(format!("axis {a} is repeated in {axes:?}")));
            }
            Ok(b as usize)
        })
        .collect()
}

/// Builds the shape ops.
pub fn build(node: &Node, opset: i64) -> Result<Box<dyn Op>> {
    match node.op_type.as_str() {
        "Identity" => Ok(Box::new(Identity)),
        "Dropout" => Ok(Box::new(Dropout {
            mask: node.outputs.len() >= 2,
            bool_mask: opset >= 10,
            ratio: node.attr_float("ratio", 0.5)?,
        })),
        "Flatten" => Ok(Box::new(Flatten {
            axis: node.attr_int("axis", 1)?,
        })),
        "Reshape" => Ok(Box::new(Reshape {
            shape: if opset < 5 {
                node.attr_ints("shape")?
            } else {
                None
            },
            allowzero: node.attr_int("allowzero", 0)? != 0,
        })),
        "Squeeze" => Ok(Box::new(Squeeze {
            axes: node.attr_ints("axes")?,
        })),
        "Unsqueeze" => Ok(Box::new(Unsqueeze {
            axes: node.attr_ints("axes")?,
        })),
        "Shape" => Ok(Box::new(Shape {
            start: node.attr_int("start", 0)?,
            end: node
                .attr("end")
                .map(|_| node.attr_int("end", 0))
                .transpose()?,
        })),
        "Constant" => Ok(Box::new(Constant {
            value: constant_value(node)?,
        })),
        "ConstantOfShape" => {
            let value = match node.attr_tensor("value")? {
                None => Tensor::from_f32(vec![1], vec![0.0]),
                Some(c) => {
                    if c.numel() != 1 {
                        return Err(op_error(format!(
                            "the value of ConstantOfShape must have one element, it has shape {:?}",
                            c.dims()
                        )));
                    }
                    if c.dtype().storage() == Storage::None {
                        return Err(op_error(format!(
                            "ConstantOfShape of type {} is not supported",
                            c.dtype()
                        )));
                    }
                    c.to_tensor()?
                }
            };
            Ok(Box::new(ConstantOfShape { value }))
        }
        "Range" => Ok(Box::new(Range)),
        "Expand" => Ok(Box::new(Expand)),
        o => Err(op_error(format!("shape_ops::build called for {o}"))),
    }
}

/// A copy of `t` with another shape of the same element count (one memcpy).
fn reshaped(t: &Tensor, shape: Vec<usize>) -> Result<Tensor> {
    t.clone()
        .reshaped(shape)
        .map_err(|e| op_error(e.to_string()))
}

// ---------------------------------------------------------------------------
// Identity, Dropout
// ---------------------------------------------------------------------------

/// Identity: passes its input through.
#[derive(Debug)]
pub struct Identity;

impl Op for Identity {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        Some(cx.passthrough())
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        Ok(vec![fact(inputs, 0)?.clone()])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![input(inputs, 0)?.clone()])
    }
}

/// Dropout in inference mode: the identity, and an all-true mask when the
/// node asks for one. Training mode (a true `training_mode` input with a
/// non-zero ratio) is refused.
#[derive(Debug)]
pub struct Dropout {
    /// The node has a second (mask) output.
    pub mask: bool,
    /// The mask is bool (opset 10+); before, it has the input's type.
    pub bool_mask: bool,
    /// Drop ratio from the attribute (before opset 12; later input 1).
    pub ratio: f32,
}

impl Dropout {
    fn mask_fact(&self, x: &Fact) -> Fact {
        Fact::new(
            if self.bool_mask { DType::Bool } else { x.dtype },
            x.shape.clone(),
        )
    }
}

impl Op for Dropout {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let mut m = cx.passthrough();
        // The mask output carries the same channels.
        if let (Some(a), Some(o)) = (cx.axis(0), m.out_axes.get_mut(1)) {
            *o = Some(a);
            m.links.push(Link::same(Port::In(0), Port::Out(1)));
        }
        for u in m.uses.iter_mut().skip(1) {
            *u = Some(Use::Shape);
        }
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        let mut out = vec![Fact::new(x.dtype, x.shape.clone())];
        if self.mask {
            out.push(self.mask_fact(x));
        }
        Ok(out)
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let training = opt(inputs, 2)
            .and_then(|t| t.scalar_f64())
            .is_some_and(|v| v != 0.0);
        let ratio = opt(inputs, 1)
            .and_then(|t| t.scalar_f64())
            .unwrap_or(self.ratio as f64);
        if training && ratio != 0.0 {
            return Err(op_error(
                "Dropout in training mode (training_mode = true) is not supported; export the model in eval mode",
            ));
        }
        let mut out = vec![x.clone()];
        if self.mask {
            let n = x.len();
            let shape = x.shape().to_vec();
            out.push(if self.bool_mask {
                Tensor::from_bool(shape, vec![true; n])
            } else {
                let data = match x.data() {
                    Data::F32(_) => Data::F32(vec![1.0; n]),
                    Data::I64(_) => Data::I64(vec![1; n]),
                    Data::Bool(_) => Data::Bool(vec![true; n]),
                };
                Tensor::new(x.dtype(), shape, data)?
            });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Flatten
// ---------------------------------------------------------------------------

/// Flatten: reshapes to 2-D `[prod(dims[..axis]), prod(dims[axis..])]`.
#[derive(Debug)]
pub struct Flatten {
    /// Split point, in `[-rank, rank]`.
    pub axis: i64,
}

impl Flatten {
    /// The output shape for an input of `shape`.
    pub fn out_shape(&self, shape: &[usize]) -> Result<Vec<usize>> {
        let r = shape.len() as i64;
        let a = if self.axis < 0 {
            self.axis + r
        } else {
            self.axis
        };
        if a < 0 || a > r {
            return Err(op_error(format!(
                "Flatten axis {} is out of range for rank {r}",
                self.axis
            )));
        }
        let a = a as usize;
        Ok(vec![
            shape[..a].iter().product(),
            shape[a..].iter().product(),
        ])
    }
}

impl Op for Flatten {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        regroup_map(cx, cx.inputs.len())
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        Ok(vec![Fact::new(x.dtype, self.out_shape(&x.shape)?)])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        Ok(vec![reshaped(x, self.out_shape(x.shape())?)?])
    }
}

// ---------------------------------------------------------------------------
// Reshape
// ---------------------------------------------------------------------------

/// Reshape: same values, new shape (input 1; the attribute before opset 5).
#[derive(Debug)]
pub struct Reshape {
    /// Target shape from the attribute (opset < 5).
    pub shape: Option<Vec<i64>>,
    /// A 0 in the target means a zero-size dimension instead of "copy the
    /// input's dimension" (opset 14).
    pub allowzero: bool,
}

/// Resolves a Reshape target (`0` copies the input dimension unless
/// `allowzero`, one `-1` is inferred) for an input of shape `input`.
pub fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let n_in = numel(input);
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 => {
                if infer_at.replace(i).is_some() {
                    return Err(op_error(format!("target shape {spec:?} has more than one -1")));
                }
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| {
                op_error(format!(
                    "target shape {spec:?} has 0 at position {i}, which copies input dimension {i}, but the \
                     input {input:?} has rank {}",
                    input.len()
                ))
            })?),
            d if d < 0 => return Err(op_error(format!("target shape {spec:?} has the invalid dimension {d}"))),
            d => out.push(usize::try_from(d).map_err(|_| op_error(format!("dimension {d} is too large")))?),
        }
    }
    if allowzero && infer_at.is_some() && spec.contains(&0) {
        return Err(op_error(format!(
            "target shape {spec:?} has both 0 and -1, which allowzero=1 forbids"
        )));
    }
    let known = out
        .iter()
        .enumerate()
        .filter(|&(i, _)| Some(i) != infer_at)
        .try_fold(1usize, |acc, (_, &d)| acc.checked_mul(d))
        .ok_or_else(|| op_error(format!("target shape {spec:?} has too many elements")))?;
    if let Some(k) = infer_at {
        // Like ONNX Runtime (and numpy), -1 next to a zero dimension is
        // ambiguous and refused.
        if known == 0 || !n_in.is_multiple_of(known) {
            return Err(op_error(format!(
                "cannot reshape {input:?} ({n_in} values) to {spec:?}"
            )));
        }
        out[k] = n_in / known;
    } else if known != n_in {
        return Err(op_error(format!(
            "cannot reshape {input:?} ({n_in} values) to {spec:?} ({known} values)"
        )));
    }
    Ok(out)
}

impl Reshape {
    fn spec(&self, from_input: Option<Vec<i64>>) -> Result<Vec<i64>> {
        from_input
            .or_else(|| self.shape.clone())
            .ok_or_else(|| op_error("Reshape needs its shape input (input 1)"))
    }
}

impl Op for Reshape {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let m = regroup_map(cx, 2)?;
        if let Some(b) = m.out_axes[0] {
            // The target's entry for the channel axis changes with the
            // channel count: it must be rewritable, or inferred (-1).
            let target = self.shape.clone().or_else(|| cx.ints(1))?;
            let rewritable = self.shape.is_none() && cx.is_fixed(1);
            if !(rewritable || target.get(b) == Some(&-1)) {
                return None;
            }
            // 0 copies the input dim: only valid while the axis stays put.
            if target.get(b) == Some(&0) && cx.axis(0) != Some(b) {
                return None;
            }
        }
        Some(m)
    }

    fn prune(&self, cx: &mut dyn PruneCx) -> Result<()> {
        let (Some(b), Some(n)) = (
            cx.axis(Port::Out(0)),
            cx.kept(Port::Out(0)).map(|k| k.len()),
        ) else {
            return Ok(());
        };
        let Some(t) = cx.input_fact(1).and_then(|f| f.value.clone()) else {
            return Ok(());
        };
        let mut target = t.to_i64_vec();
        if target[b] > 0 {
            target[b] = n as i64;
            cx.set_input(1, Tensor::from_i64(t.shape().to_vec(), target))?;
        }
        Ok(())
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        let spec = self.spec(known_ints(inputs, 1, "the target shape of Reshape")?)?;
        Ok(vec![Fact::new(
            x.dtype,
            reshape_target(&x.shape, &spec, self.allowzero)?,
        )])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let spec = self.spec(
            opt(inputs, 1)
                .map(|t| ints_input(t, "the shape of Reshape"))
                .transpose()?,
        )?;
        Ok(vec![reshaped(
            x,
            reshape_target(x.shape(), &spec, self.allowzero)?,
        )?])
    }
}

// ---------------------------------------------------------------------------
// Squeeze, Unsqueeze
// ---------------------------------------------------------------------------

/// Squeeze: removes size-1 axes (the given ones, or all of them).
#[derive(Debug)]
pub struct Squeeze {
    /// Axes from the attribute (opset < 13); later the optional input 1.
    pub axes: Option<Vec<i64>>,
}

/// Shape after removing `axes` (all size-1 axes when `None`) from `shape`.
pub fn squeeze_shape(shape: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>> {
    match axes {
        None => Ok(shape.iter().copied().filter(|&d| d != 1).collect()),
        Some(a) => {
            let axes = unique_axes(a, shape.len())?;
            if let Some(&bad) = axes.iter().find(|&&ax| shape[ax] != 1) {
                return Err(op_error(format!(
                    "cannot squeeze axis {bad} of shape {shape:?}: its size is not 1"
                )));
            }
            Ok(shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect())
        }
    }
}

impl Op for Squeeze {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        regroup_map(cx, cx.inputs.len())
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        let axes = known_ints(inputs, 1, "the axes of Squeeze")?.or_else(|| self.axes.clone());
        Ok(vec![Fact::new(
            x.dtype,
            squeeze_shape(&x.shape, axes.as_deref())?,
        )])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let axes = opt(inputs, 1)
            .map(|t| ints_input(t, "axes"))
            .transpose()?
            .or_else(|| self.axes.clone());
        Ok(vec![reshaped(
            x,
            squeeze_shape(x.shape(), axes.as_deref())?,
        )?])
    }
}

/// Unsqueeze: inserts size-1 axes at the given output positions.
#[derive(Debug)]
pub struct Unsqueeze {
    /// Axes from the attribute (opset < 13); later the required input 1.
    pub axes: Option<Vec<i64>>,
}

/// Shape after inserting size-1 axes at `axes` (positions in the output).
pub fn unsqueeze_shape(shape: &[usize], axes: &[i64]) -> Result<Vec<usize>> {
    let rank = shape.len() + axes.len();
    let axes = unique_axes(axes, rank)?;
    let mut dims = shape.iter();
    Ok((0..rank)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                *dims.next().unwrap_or(&1)
            }
        })
        .collect())
}

impl Unsqueeze {
    fn axes(&self, from_input: Option<Vec<i64>>) -> Result<Vec<i64>> {
        from_input.or_else(|| self.axes.clone()).ok_or_else(|| {
            op_error("Unsqueeze needs axes (input 1, or the attribute before opset 13)")
        })
    }
}

impl Op for Unsqueeze {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        regroup_map(cx, cx.inputs.len())
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        let axes = self.axes(known_ints(inputs, 1, "the axes of Unsqueeze")?)?;
        Ok(vec![Fact::new(x.dtype, unsqueeze_shape(&x.shape, &axes)?)])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let axes = self.axes(opt(inputs, 1).map(|t| ints_input(t, "axes")).transpose()?)?;
        Ok(vec![reshaped(x, unsqueeze_shape(x.shape(), &axes)?)?])
    }
}

// ---------------------------------------------------------------------------
// Shape
// ---------------------------------------------------------------------------

/// Shape: the input's shape as a 1-D i64 tensor, optionally a `start..end`
/// part of it (opset 15).
#[derive(Debug)]
pub struct Shape {
    /// First dimension (may be negative).
    pub start: i64,
    /// One past the last dimension (may be negative); `None` is the rank.
    pub end: Option<i64>,
}

impl Shape {
    /// The output value for an input of `shape`.
    pub fn value(&self, shape: &[usize]) -> Tensor {
        let r = shape.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (s, e) = (clamp(self.start), clamp(self.end.unwrap_or(r)));
        let dims: Vec<i64> = if s < e {
            shape[s..e].iter().map(|&d| d as i64).collect()
        } else {
            Vec::new()
        };
        Tensor::from_i64(vec![dims.len()], dims)
    }
}

impl Op for Shape {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        let mut m = ChanMap::new(1, 1);
        m.uses[0] = cx.fact(0).map(|_| Use::Shape);
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        Ok(vec![Fact::known(self.value(&fact(inputs, 0)?.shape))])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![self.value(input(inputs, 0)?.shape())])
    }
}

// ---------------------------------------------------------------------------
// Constant, ConstantOfShape
// ---------------------------------------------------------------------------

/// Constant: a value stored in the node.
#[derive(Debug)]
pub struct Constant {
    /// The value.
    pub value: Tensor,
}

/// The value of a Constant node, from whichever `value*` attribute it has.
fn constant_value(node: &Node) -> Result<Tensor> {
    const NAMES: [&str; 8] = [
        "value",
        "value_float",
        "value_floats",
        "value_int",
        "value_ints",
        "value_string",
        "value_strings",
        "sparse_value",
    ];
    let given: Vec<&str> = NAMES
        .iter()
        .copied()
        .filter(|n| node.attr(n).is_some())
        .collect();
    let name = match given.as_slice() {
        [one] => *one,
        [] => return Err(op_error("Constant has no value attribute")),
        many => {
            return Err(op_error(format!(
                "Constant has several value attributes: {many:?}"
            )))
        }
    };
    match (name, node.attr(name)) {
        ("value", Some(AttrValue::Tensor(c))) => {
            if c.dtype().storage() == Storage::None {
                return Err(op_error(format!("Constant of type {} is not supported", c.dtype())));
            }
            c.to_tensor()
        }
        ("value_float", _) => Ok(Tensor::from_f32(vec![], vec![node.attr_float("value_float", 0.0)?])),
        ("value_floats", _) => {
            let v = node.attr_floats("value_floats")?.unwrap_or_default();
            Ok(Tensor::from_f32(vec![v.len()], v))
        }
        ("value_int", _) => Ok(Tensor::from_i64(vec![], vec![node.attr_int("value_int", 0)?])),
        ("value_ints", _) => {
            let v = node.attr_ints("value_ints")?.unwrap_or_default();
            Ok(Tensor::from_i64(vec![v.len()], v))
        }
        ("value", _) => Err(op_error("Constant attribute 'value' should be a tensor")),
        (other, _) => Err(op_error(format!("Constant with attribute '{other}' is not supported (strings and sparse tensors cannot be computed with)"))),
    }
}

impl Op for Constant {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        // Reads shapes and scalars only.
        let mut m = ChanMap::new(cx.inputs.len(), 1);
        for (i, u) in m.uses.iter_mut().enumerate() {
            *u = cx.fact(i).map(|_| Use::Shape);
        }
        Some(m)
    }

    fn infer(&self, _inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        Ok(vec![Fact::known(self.value.clone())])
    }
    fn eval(&self, _inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![self.value.clone()])
    }
}

/// ConstantOfShape: a tensor of the shape given by input 0, filled with
/// `value`.
#[derive(Debug)]
pub struct ConstantOfShape {
    /// One-element tensor giving the fill value and the output dtype.
    pub value: Tensor,
}

impl ConstantOfShape {
    fn shape_of(t: &Tensor) -> Result<Vec<usize>> {
        if t.rank() > 1 {
            return Err(op_error(format!(
                "the shape input must be 1-D, it has shape {:?}",
                t.shape()
            )));
        }
        let dims = dims_from_i64(
            &ints_input(t, "the shape input of ConstantOfShape")?,
            "shape",
        )?;
        checked_numel(&dims)?;
        Ok(dims)
    }
}

impl Op for ConstantOfShape {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        // Reads shapes and scalars only.
        let mut m = ChanMap::new(cx.inputs.len(), 1);
        for (i, u) in m.uses.iter_mut().enumerate() {
            *u = cx.fact(i).map(|_| Use::Shape);
        }
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        fact(inputs, 0)?;
        let t = fact_value(inputs, 0).ok_or_else(|| {
            op_error(
                "the output shape of ConstantOfShape is computed at run time; shape inference needs it to be a \
                 constant or computable from the input shapes",
            )
        })?;
        Ok(vec![Fact::new(self.value.dtype(), Self::shape_of(t)?)])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let shape = Self::shape_of(input(inputs, 0)?)?;
        let n = numel(&shape);
        let data = match self.value.data() {
            Data::F32(v) => Data::F32(vec![v[0]; n]),
            Data::I64(v) => Data::I64(vec![v[0]; n]),
            Data::Bool(v) => Data::Bool(vec![v[0]; n]),
        };
        Ok(vec![Tensor::new(self.value.dtype(), shape, data)?])
    }
}

// ---------------------------------------------------------------------------
// Range
// ---------------------------------------------------------------------------

/// Range: `start, start+delta, ...` up to (excluding) `limit`.
#[derive(Debug)]
pub struct Range;

/// The scalar of a Range input.
fn range_scalar(t: &Tensor, what: &str) -> Result<()> {
    if t.len() != 1 || t.rank() > 1 {
        return Err(op_error(format!(
            "{what} of Range must be a scalar, it has shape {:?}",
            t.shape()
        )));
    }
    Ok(())
}

impl Range {
    /// Computes the output; values accumulate (`x += delta`) like ONNX
    /// Runtime, so floats match it bit for bit.
    pub fn compute(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<Tensor> {
        range_scalar(start, "start")?;
        range_scalar(limit, "limit")?;
        range_scalar(delta, "delta")?;
        if start.dtype() != limit.dtype() || start.dtype() != delta.dtype() {
            return Err(op_error(format!(
                "Range inputs have different types: {}, {}, {}",
                start.dtype(),
                limit.dtype(),
                delta.dtype()
            )));
        }
        let count = |n: f64| -> Result<usize> {
            if n.is_nan() {
                return Err(op_error("Range has a NaN element count"));
            }
            let n = n.ceil().max(0.0);
            if n > MAX_ELEMENTS as f64 {
                return Err(op_error(format!(
                    "Range would have {n} elements, more than the limit of {MAX_ELEMENTS}"
                )));
            }
            Ok(n as usize)
        };
        match (start.data(), limit.data(), delta.data()) {
            (Data::F32(s), Data::F32(l), Data::F32(d)) => {
                let (s, l, d) = (s[0], l[0], d[0]);
                if d == 0.0 {
                    return Err(op_error("Range delta cannot be 0"));
                }
                let n = count((l - s) as f64 / d as f64)?;
                let mut v = Vec::with_capacity(n);
                let mut x = s;
                for _ in 0..n {
                    v.push(x);
                    x += d;
                }
                Ok(Tensor::from_float(start.dtype(), vec![n], v))
            }
            (Data::I64(s), Data::I64(l), Data::I64(d)) => {
                let (s, l, d) = (s[0], l[0], d[0]);
                if d == 0 {
                    return Err(op_error("Range delta cannot be 0"));
                }
                let n = count((l as i128 - s as i128) as f64 / d as f64)?;
                let v: Vec<i64> = (0..n as i64)
                    .map(|i| s.wrapping_add(i.wrapping_mul(d)))
                    .collect();
                Ok(Tensor::from_int(start.dtype(), vec![n], v))
            }
            _ => Err(op_error(format!(
                "Range of type {} is not supported",
                start.dtype()
            ))),
        }
    }
}

impl Op for Range {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        // Reads shapes and scalars only.
        let mut m = ChanMap::new(cx.inputs.len(), 1);
        for (i, u) in m.uses.iter_mut().enumerate() {
            *u = cx.fact(i).map(|_| Use::Shape);
        }
        Some(m)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        for i in 0..3 {
            fact(inputs, i)?;
        }
        match (fact_value(inputs, 0), fact_value(inputs, 1), fact_value(inputs, 2)) {
            (Some(s), Some(l), Some(d)) => Ok(vec![Fact::known(Range::compute(s, l, d)?)]),
            _ => Err(op_error(
                "the length of Range is computed at run time; shape inference needs start, limit and delta to \
                 be constants or computable from the input shapes",
            )),
        }
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![Range::compute(
            input(inputs, 0)?,
            input(inputs, 1)?,
            input(inputs, 2)?,
        )?])
    }
}

// ---------------------------------------------------------------------------
// Expand
// ---------------------------------------------------------------------------

/// Expand: broadcasts the input to a shape (bidirectionally: a 1 in the
/// target keeps the input's dimension).
#[derive(Debug)]
pub struct Expand;

impl Expand {
    /// Output shape for an input of `shape` and the target `spec`.
    pub fn out_shape(shape: &[usize], spec: &[i64]) -> Result<Vec<usize>> {
        let target = dims_from_i64(spec, "the shape of Expand")?;
        let out = broadcast_shapes(&[shape, &target])?;
        checked_numel(&out)?;
        Ok(out)
    }
}

impl Op for Expand {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        fact(inputs, 1)?;
        let spec = known_ints(inputs, 1, "the target shape of Expand")?.unwrap_or_default();
        Ok(vec![Fact::new(
            x.dtype,
            Expand::out_shape(&x.shape, &spec)?,
        )])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (x, s) = (input(inputs, 0)?, input(inputs, 1)?);
        if x.dtype().storage() == Storage::None {
            return Err(op_error(format!(
                "tensors of type {} are not supported",
                x.dtype()
            )));
        }
        let out = Expand::out_shape(x.shape(), &ints_input(s, "the shape of Expand")?)?;
        if out == x.shape() {
            return Ok(vec![x.clone()]);
        }
        let off = out.len() - x.rank();
        let ist = strides(x.shape());
        let st: Vec<isize> = (0..out.len())
            .map(|k| {
                if k < off || x.shape()[k - off] == 1 {
                    0
                } else {
                    ist[k - off] as isize
                }
            })
            .collect();
        Ok(vec![view_tensor(x, 0, &out, &st)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ConstTensor;
    use crate::ops::test_util::node;

    fn op(op: &str, attrs: Vec<(&str, AttrValue)>, opset: i64) -> Box<dyn Op> {
        build(&node(op, 1, 1, attrs), opset).unwrap()
    }
    fn iota(shape: &[usize]) -> Tensor {
        Tensor::from_f32(
            shape.to_vec(),
            (0..numel(shape)).map(|i| i as f32).collect(),
        )
    }
    fn i64t(v: &[i64]) -> Tensor {
        Tensor::from_i64(vec![v.len()], v.to_vec())
    }
    fn facts(ins: &[Option<&Tensor>]) -> Vec<Option<Fact>> {
        ins.iter()
            .map(|t| t.map(|t| Fact::known(t.clone())))
            .collect()
    }
    /// Evaluates, and checks that inference (with every value known) agrees.
    fn run(o: &dyn Op, ins: &[Option<&Tensor>]) -> Vec<Tensor> {
        let out = o.eval(ins).unwrap();
        let fs = facts(ins);
        let frefs: Vec<Option<&Fact>> = fs.iter().map(|f| f.as_ref()).collect();
        let inferred = o.infer(&frefs).unwrap();
        assert_eq!(inferred.len(), out.len());
        for (f, t) in inferred.iter().zip(&out) {
            assert_eq!((f.shape.as_slice(), f.dtype), (t.shape(), t.dtype()));
        }
        out
    }
    /// Inference with input 0 known only by shape, the others by value.
    fn infer_shape(o: &dyn Op, x: &[usize], rest: &[Option<&Tensor>]) -> Result<Vec<usize>> {
        let fx = Fact::new(DType::F32, x.to_vec());
        let fs = facts(rest);
        let mut frefs: Vec<Option<&Fact>> = vec![Some(&fx)];
        frefs.extend(fs.iter().map(|f| f.as_ref()));
        Ok(o.infer(&frefs)?.remove(0).shape)
    }

    #[test]
    fn identity_and_dropout() {
        let x = iota(&[2, 3]);
        assert_eq!(run(&*op("Identity", vec![], 13), &[Some(&x)])[0], x);
        // Dropout without a mask output, with ratio and training_mode false.
        let d = op("Dropout", vec![], 13);
        let ratio = Tensor::from_f32(vec![], vec![0.3]);
        let tm = Tensor::from_bool(vec![], vec![false]);
        let y = run(&*d, &[Some(&x), Some(&ratio), Some(&tm)]);
        assert_eq!(y.len(), 1);
        assert_eq!(y[0], x);
        // With a mask output: all true.
        let d = build(&node("Dropout", 1, 2, vec![]), 13).unwrap();
        let y = run(&*d, &[Some(&x)]);
        assert_eq!(y[1].dtype(), DType::Bool);
        assert_eq!(y[1].bools().unwrap(), &[true; 6]);
        // Opset 7: the mask has the input's type.
        let d = build(
            &node("Dropout", 1, 2, vec![("ratio", AttrValue::Float(0.2))]),
            7,
        )
        .unwrap();
        let y = run(&*d, &[Some(&x)]);
        assert_eq!(y[1].f32s().unwrap(), &[1.0; 6]);
        // Training mode with a ratio of 0 is still the identity.
        let d = op("Dropout", vec![], 13);
        let zero = Tensor::from_f32(vec![], vec![0.0]);
        let on = Tensor::from_bool(vec![], vec![true]);
        assert_eq!(d.eval(&[Some(&x), Some(&zero), Some(&on)]).unwrap()[0], x);
        // Training mode with a drop ratio is refused.
        assert!(d.eval(&[Some(&x), None, Some(&on)]).is_err());
    }

    #[test]
    fn flatten_axes() {
        let x = iota(&[2, 3, 4]);
        let cases: &[(Option<i64>, [usize; 2])] = &[
            (None, [2, 12]),
            (Some(0), [1, 24]),
            (Some(2), [6, 4]),
            (Some(3), [24, 1]),
            (Some(-1), [6, 4]),
            (Some(-3), [1, 24]),
        ];
        for (a, want) in cases {
            let attrs = a
                .map(|a| vec![("axis", AttrValue::Int(a))])
                .unwrap_or_default();
            let y = &run(&*op("Flatten", attrs, 13), &[Some(&x)])[0];
            assert_eq!(y.shape(), want, "{a:?}");
            assert_eq!(y.f32s().unwrap(), x.f32s().unwrap());
        }
        for a in [4, -4] {
            assert!(op("Flatten", vec![("axis", AttrValue::Int(a))], 13)
                .eval(&[Some(&x)])
                .is_err());
        }
        let s = Tensor::from_f32(vec![], vec![5.0]);
        assert_eq!(
            run(
                &*op("Flatten", vec![("axis", AttrValue::Int(0))], 13),
                &[Some(&s)]
            )[0]
            .shape(),
            &[1, 1]
        );
    }

    #[test]
    fn reshape_target_rules() {
        // numpy: np.zeros((2,3,4)).reshape(...)
        assert_eq!(reshape_target(&[2, 3, 4], &[-1], false).unwrap(), vec![24]);
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, 0, 2, 2], false).unwrap(),
            vec![2, 3, 2, 2]
        );
        assert_eq!(
            reshape_target(&[2, 3, 4], &[3, -1, 0], false).unwrap(),
            vec![3, 2, 4]
        );
        assert!(reshape_target(&[2, 3, 4], &[4, -1, 0], false).is_err());
        assert_eq!(
            reshape_target(&[2, 3, 4], &[1, 1, 24], false).unwrap(),
            vec![1, 1, 24]
        );
        assert_eq!(
            reshape_target(&[1], &[], false).unwrap(),
            Vec::<usize>::new()
        );
        // allowzero: 0 is a real zero.
        assert_eq!(reshape_target(&[0, 3], &[3, 0], true).unwrap(), vec![3, 0]);
        assert!(reshape_target(&[0, 3], &[3, 0], false)
            .unwrap_err()
            .to_string()
            .contains("cannot reshape"));
        // Zero-size input (checked with ONNX Runtime): -1 with a 0 elsewhere is ambiguous.
        assert_eq!(
            reshape_target(&[0, 4], &[-1, 0], false).unwrap(),
            vec![0, 4]
        );
        assert!(reshape_target(&[0, 4], &[0, -1], false).is_err());
        // Errors.
        assert!(reshape_target(&[2, 3, 4], &[-1, -1], false).is_err());
        assert!(reshape_target(&[2, 3, 4], &[5, -1], false).is_err());
        assert!(reshape_target(&[2, 3, 4], &[2, 3, 5], false).is_err());
        assert!(reshape_target(&[2, 3, 4], &[-2, 12], false).is_err());
        assert!(reshape_target(&[2, 3], &[0, 0, 0], false).is_err());
        assert!(reshape_target(&[2, 3], &[0, -1], true).is_err());
        assert!(reshape_target(&[2, 3], &[i64::MAX, i64::MAX, -1], false).is_err());
        assert!(reshape_target(&[2, 3], &[i64::MAX, 4], false).is_err());
    }

    #[test]
    fn reshape_op() {
        let x = iota(&[2, 3, 4]);
        let o = op("Reshape", vec![], 14);
        let y = &run(&*o, &[Some(&x), Some(&i64t(&[0, -1]))])[0];
        assert_eq!(y.shape(), &[2, 12]);
        assert_eq!(y.f32s().unwrap(), x.f32s().unwrap());
        // int data (shape arithmetic).
        let s = i64t(&[1, 2, 3, 4]);
        assert_eq!(
            run(&*o, &[Some(&s), Some(&i64t(&[2, 2]))])[0].shape(),
            &[2, 2]
        );
        // allowzero.
        let o = op("Reshape", vec![("allowzero", AttrValue::Int(1))], 14);
        let e = Tensor::from_f32(vec![0, 3], vec![]);
        assert_eq!(
            run(&*o, &[Some(&e), Some(&i64t(&[3, 0]))])[0].shape(),
            &[3, 0]
        );
        // Opset 1..4: shape attribute.
        let o = op("Reshape", vec![("shape", AttrValue::Ints(vec![4, -1]))], 4);
        assert_eq!(run(&*o, &[Some(&x)])[0].shape(), &[4, 6]);
        // Inference with the data unknown but the target known.
        let o = op("Reshape", vec![], 14);
        assert_eq!(
            infer_shape(&*o, &[2, 3, 4], &[Some(&i64t(&[-1, 4]))]).unwrap(),
            vec![6, 4]
        );
        // Target unknown at inference: a clear error.
        let fx = Fact::new(DType::F32, vec![2, 3, 4]);
        let fs = Fact::new(DType::I64, vec![2]);
        let err = o.infer(&[Some(&fx), Some(&fs)]).unwrap_err().to_string();
        assert!(
            err.contains("the target shape of Reshape is computed at run time"),
            "{err}"
        );
        // Errors.
        assert!(o.eval(&[Some(&x), Some(&i64t(&[5, 5]))]).is_err());
        assert!(o.eval(&[Some(&x)]).is_err());
        assert!(o
            .eval(&[Some(&x), Some(&Tensor::from_f32(vec![1], vec![24.0]))])
            .is_err());
    }

    #[test]
    fn squeeze_variants() {
        let x = iota(&[1, 3, 1, 2]);
        // All size-1 axes.
        let o = op("Squeeze", vec![], 13);
        assert_eq!(run(&*o, &[Some(&x)])[0].shape(), &[3, 2]);
        // Axes input (opset 13), negative.
        assert_eq!(
            run(&*o, &[Some(&x), Some(&i64t(&[-2]))])[0].shape(),
            &[1, 3, 2]
        );
        // Axes attribute (opset 11).
        let o11 = op("Squeeze", vec![("axes", AttrValue::Ints(vec![0, 2]))], 11);
        let y = &run(&*o11, &[Some(&x)])[0];
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(y.f32s().unwrap(), x.f32s().unwrap());
        // Squeezing to a scalar.
        let one = Tensor::from_i64(vec![1], vec![7]);
        let y = &run(&*o, &[Some(&one)])[0];
        assert_eq!(
            (y.shape(), y.i64s().unwrap()),
            (&[] as &[usize], &[7i64][..])
        );
        // Errors: non-1 axis, out of range, repeated, unknown axes.
        assert!(o.eval(&[Some(&x), Some(&i64t(&[1]))]).is_err());
        assert!(o.eval(&[Some(&x), Some(&i64t(&[4]))]).is_err());
        assert!(o.eval(&[Some(&x), Some(&i64t(&[0, -4]))]).is_err());
        let fx = Fact::new(DType::F32, vec![1, 3]);
        let fa = Fact::new(DType::I64, vec![1]);
        assert!(o
            .infer(&[Some(&fx), Some(&fa)])
            .unwrap_err()
            .to_string()
            .contains("computed at run time"));
    }

    #[test]
    fn unsqueeze_variants() {
        let x = iota(&[3, 2]);
        let o = op("Unsqueeze", vec![], 13);
        assert_eq!(
            run(&*o, &[Some(&x), Some(&i64t(&[0]))])[0].shape(),
            &[1, 3, 2]
        );
        assert_eq!(
            run(&*o, &[Some(&x), Some(&i64t(&[-1]))])[0].shape(),
            &[3, 2, 1]
        );
        assert_eq!(
            run(&*o, &[Some(&x), Some(&i64t(&[3, 0]))])[0].shape(),
            &[1, 3, 2, 1]
        );
        assert_eq!(
            run(&*o, &[Some(&x), Some(&i64t(&[1, -2]))])[0].shape(),
            &[3, 1, 1, 2]
        );
        // Scalar to 1-D (common in shape subgraphs).
        let s = Tensor::from_i64(vec![], vec![5]);
        assert_eq!(run(&*o, &[Some(&s), Some(&i64t(&[0]))])[0].shape(), &[1]);
        // Attribute before opset 13.
        let o11 = op("Unsqueeze", vec![("axes", AttrValue::Ints(vec![0, 4]))], 11);
        assert_eq!(
            run(&*o11, &[Some(&iota(&[2, 3, 4]))])[0].shape(),
            &[1, 2, 3, 4, 1]
        );
        // Errors.
        assert!(o.eval(&[Some(&x)]).is_err());
        assert!(o.eval(&[Some(&x), Some(&i64t(&[3]))]).is_err());
        assert!(o.eval(&[Some(&x), Some(&i64t(&[0, 0]))]).is_err());
        assert!(o.eval(&[Some(&x), Some(&i64t(&[-4]))]).is_err());
        let fx = Fact::new(DType::F32, vec![3]);
        let fa = Fact::new(DType::I64, vec![1]);
        assert!(o
            .infer(&[Some(&fx), Some(&fa)])
            .unwrap_err()
            .to_string()
            .contains("axes of Unsqueeze"));
    }

    #[test]
    fn shape_infers_its_value() {
        let o = op("Shape", vec![], 13);
        let fx = Fact::new(DType::F32, vec![1, 3, 224, 224]);
        let f = &o.infer(&[Some(&fx)]).unwrap()[0];
        assert_eq!(f.dtype, DType::I64);
        assert_eq!(
            f.value.as_deref().unwrap().i64s().unwrap(),
            &[1, 3, 224, 224]
        );
        assert_eq!(
            run(&*o, &[Some(&iota(&[2, 5]))])[0].i64s().unwrap(),
            &[2, 5]
        );
        // Scalar input: empty shape.
        assert_eq!(
            run(&*o, &[Some(&Tensor::from_f32(vec![], vec![1.0]))])[0].shape(),
            &[0]
        );
        // Opset 15 start/end, like x.shape[start:end].
        let cases: &[(Option<i64>, Option<i64>, &[i64])] = &[
            (Some(1), None, &[3, 224, 224]),
            (Some(-2), None, &[224, 224]),
            (None, Some(-1), &[1, 3, 224]),
            (Some(1), Some(3), &[3, 224]),
            (Some(-10), Some(10), &[1, 3, 224, 224]),
            (Some(3), Some(1), &[]),
            (Some(4), None, &[]),
        ];
        for (s, e, want) in cases {
            let mut attrs = vec![];
            if let Some(s) = s {
                attrs.push(("start", AttrValue::Int(*s)));
            }
            if let Some(e) = e {
                attrs.push(("end", AttrValue::Int(*e)));
            }
            let o = op("Shape", attrs, 15);
            let f = &o.infer(&[Some(&fx)]).unwrap()[0];
            assert_eq!(
                f.value.as_deref().unwrap().i64s().unwrap(),
                *want,
                "{s:?} {e:?}"
            );
            assert_eq!(f.shape, vec![want.len()]);
        }
    }

    #[test]
    fn constant_attributes() {
        let t = iota(&[2, 2]);
        let c = ConstTensor::from_tensor("c", &t).unwrap();
        let o = op("Constant", vec![("value", AttrValue::Tensor(c))], 13);
        assert_eq!(run(&*o, &[])[0], t);
        assert_eq!(o.infer(&[]).unwrap()[0].value.as_deref(), Some(&t));
        let o = op("Constant", vec![("value_float", AttrValue::Float(2.5))], 13);
        let y = &run(&*o, &[])[0];
        assert_eq!(
            (y.shape(), y.f32s().unwrap()),
            (&[] as &[usize], &[2.5f32][..])
        );
        let o = op(
            "Constant",
            vec![("value_floats", AttrValue::Floats(vec![1.0, 2.0]))],
            13,
        );
        assert_eq!(run(&*o, &[])[0].f32s().unwrap(), &[1.0, 2.0]);
        let o = op("Constant", vec![("value_int", AttrValue::Int(-3))], 13);
        let y = &run(&*o, &[])[0];
        assert_eq!(
            (y.shape(), y.i64s().unwrap(), y.dtype()),
            (&[] as &[usize], &[-3i64][..], DType::I64)
        );
        let o = op(
            "Constant",
            vec![("value_ints", AttrValue::Ints(vec![]))],
            13,
        );
        assert_eq!(run(&*o, &[])[0].shape(), &[0]);
        // Int32 tensor keeps its dtype.
        let c = ConstTensor::from_tensor("c", &Tensor::from_int(DType::I32, vec![2], vec![1, -1]))
            .unwrap();
        let y = &run(
            &*op("Constant", vec![("value", AttrValue::Tensor(c))], 13),
            &[],
        )[0];
        assert_eq!(
            (y.dtype(), y.i64s().unwrap()),
            (DType::I32, &[1i64, -1][..])
        );
    }

    #[test]
    fn constant_errors() {
        let b = |attrs| build(&node("Constant", 0, 1, attrs), 13);
        assert!(b(vec![]).is_err());
        assert!(b(vec![("sparse_value", AttrValue::Other)]).is_err());
        assert!(b(vec![("value_string", AttrValue::String(b"x".to_vec()))]).is_err());
        assert!(b(vec![("value_strings", AttrValue::Strings(vec![]))]).is_err());
        assert!(b(vec![
            ("value_int", AttrValue::Int(1)),
            ("value_float", AttrValue::Float(1.0))
        ])
        .is_err());
        assert!(b(vec![("value", AttrValue::Int(1))]).is_err());
    }

    #[test]
    fn constant_of_shape() {
        let o = op("ConstantOfShape", vec![], 13);
        let y = &run(&*o, &[Some(&i64t(&[2, 3]))])[0];
        assert_eq!((y.dtype(), y.shape()), (DType::F32, &[2usize, 3][..]));
        assert_eq!(y.f32s().unwrap(), &[0.0; 6]);
        // Int value, and an empty shape gives a scalar.
        let v = ConstTensor::from_tensor("v", &Tensor::from_i64(vec![1], vec![7])).unwrap();
        let o = op("ConstantOfShape", vec![("value", AttrValue::Tensor(v))], 13);
        let y = &run(&*o, &[Some(&i64t(&[]))])[0];
        assert_eq!(
            (y.shape(), y.i64s().unwrap()),
            (&[] as &[usize], &[7i64][..])
        );
        assert_eq!(run(&*o, &[Some(&i64t(&[2, 0]))])[0].shape(), &[2, 0]);
        let v = ConstTensor::from_tensor("v", &Tensor::from_bool(vec![1], vec![true])).unwrap();
        let o = op("ConstantOfShape", vec![("value", AttrValue::Tensor(v))], 13);
        assert_eq!(
            run(&*o, &[Some(&i64t(&[2]))])[0].bools().unwrap(),
            &[true, true]
        );
        // Errors: negative, huge, non-int shape, multi-element value, unknown shape.
        assert!(o.eval(&[Some(&i64t(&[-1]))]).is_err());
        assert!(o.eval(&[Some(&i64t(&[1 << 40, 1 << 40]))]).is_err());
        assert!(o.eval(&[Some(&i64t(&[i64::MAX, i64::MAX, 2]))]).is_err());
        assert!(o
            .eval(&[Some(&Tensor::from_f32(vec![1], vec![2.0]))])
            .is_err());
        let v2 = ConstTensor::from_tensor("v", &iota(&[2])).unwrap();
        assert!(build(
            &node(
                "ConstantOfShape",
                1,
                1,
                vec![("value", AttrValue::Tensor(v2))]
            ),
            13
        )
        .is_err());
        let fs = Fact::new(DType::I64, vec![2]);
        assert!(o
            .infer(&[Some(&fs)])
            .unwrap_err()
            .to_string()
            .contains("computed at run time"));
    }

    #[test]
    fn range_float_and_int() {
        let o = op("Range", vec![], 13);
        let f = |v: f32| Tensor::from_f32(vec![], vec![v]);
        let i = |v: i64| Tensor::from_i64(vec![], vec![v]);
        // np.arange(3, 10, 3) = [3, 6, 9]
        assert_eq!(
            run(&*o, &[Some(&i(3)), Some(&i(10)), Some(&i(3))])[0]
                .i64s()
                .unwrap(),
            &[3, 6, 9]
        );
        // np.arange(10, 4, -2) = [10, 8, 6]
        assert_eq!(
            run(&*o, &[Some(&i(10)), Some(&i(4)), Some(&i(-2))])[0]
                .i64s()
                .unwrap(),
            &[10, 8, 6]
        );
        // Empty.
        assert_eq!(
            run(&*o, &[Some(&i(5)), Some(&i(1)), Some(&i(1))])[0].shape(),
            &[0]
        );
        // Floats: np.arange(1.0, 2.0, 0.25)
        let y = &run(&*o, &[Some(&f(1.0)), Some(&f(2.0)), Some(&f(0.25))])[0];
        assert_eq!(y.f32s().unwrap(), &[1.0, 1.25, 1.5, 1.75]);
        // ONNX Runtime accumulates: Range(0.1, 30, 0.1) has 299 elements, the
        // last 29.900078 (float32 accumulation).
        let y = &run(&*o, &[Some(&f(0.1)), Some(&f(30.0)), Some(&f(0.1))])[0];
        assert_eq!(y.shape(), &[299]);
        assert!((y.f32s().unwrap()[298] - 29.900_078).abs() < 1e-5);
        // Int32 type kept; 1-element 1-D inputs accepted.
        let i32t = |v: i64| Tensor::from_int(DType::I32, vec![1], vec![v]);
        let y = &run(&*o, &[Some(&i32t(0)), Some(&i32t(3)), Some(&i32t(1))])[0];
        assert_eq!(
            (y.dtype(), y.i64s().unwrap()),
            (DType::I32, &[0i64, 1, 2][..])
        );
        // Errors.
        assert!(o.eval(&[Some(&i(0)), Some(&i(3)), Some(&i(0))]).is_err());
        assert!(o
            .eval(&[Some(&f(0.0)), Some(&f(3.0)), Some(&f(0.0))])
            .is_err());
        assert!(o
            .eval(&[Some(&i(0)), Some(&i(i64::MAX)), Some(&i(1))])
            .is_err());
        assert!(o
            .eval(&[Some(&f(0.0)), Some(&f(f32::NAN)), Some(&f(1.0))])
            .is_err());
        assert!(o.eval(&[Some(&i(0)), Some(&f(3.0)), Some(&i(1))]).is_err());
        assert!(o
            .eval(&[Some(&i64t(&[0, 1])), Some(&i(3)), Some(&i(1))])
            .is_err());
        let fs = Fact::new(DType::I64, vec![]);
        let fk = Fact::known(i(1));
        assert!(o
            .infer(&[Some(&fk), Some(&fs), Some(&fk)])
            .unwrap_err()
            .to_string()
            .contains("computed at run time"));
    }

    #[test]
    fn expand_bidirectional() {
        let o = op("Expand", vec![], 13);
        // np.broadcast_to(x[3,1], (2,3,4))
        let x = iota(&[3, 1]);
        let y = &run(&*o, &[Some(&x), Some(&i64t(&[2, 3, 4]))])[0];
        assert_eq!(y.shape(), &[2, 3, 4]);
        let want: Vec<f32> = (0..24).map(|i| ((i / 4) % 3) as f32).collect();
        assert_eq!(y.f32s().unwrap(), want.as_slice());
        // Target smaller than the input: the input's dims win where target is 1.
        let x = iota(&[2, 3]);
        let y = &run(&*o, &[Some(&x), Some(&i64t(&[1, 1]))])[0];
        assert_eq!(y, &x);
        let y = &run(&*o, &[Some(&x), Some(&i64t(&[3]))])[0];
        assert_eq!(y, &x);
        let y = &run(&*o, &[Some(&x), Some(&i64t(&[2, 1, 1]))])[0];
        assert_eq!(y.shape(), &[2, 2, 3]);
        assert_eq!(
            y.f32s().unwrap(),
            &[0., 1., 2., 3., 4., 5., 0., 1., 2., 3., 4., 5.]
        );
        // Row broadcast and scalar.
        let r = iota(&[1, 3]);
        assert_eq!(
            run(&*o, &[Some(&r), Some(&i64t(&[2, 3]))])[0]
                .f32s()
                .unwrap(),
            &[0., 1., 2., 0., 1., 2.]
        );
        let s = Tensor::from_i64(vec![], vec![4]);
        assert_eq!(
            run(&*o, &[Some(&s), Some(&i64t(&[2, 2]))])[0]
                .i64s()
                .unwrap(),
            &[4; 4]
        );
        // Large (parallel path): [64,1,128] -> [64,32,128].
        let x = iota(&[64, 1, 128]);
        let y = &run(&*o, &[Some(&x), Some(&i64t(&[64, 32, 128]))])[0];
        let (xv, yv) = (x.f32s().unwrap(), y.f32s().unwrap());
        for a in 0..64 {
            for b in 0..32 {
                assert_eq!(
                    &yv[(a * 32 + b) * 128..(a * 32 + b + 1) * 128],
                    &xv[a * 128..(a + 1) * 128]
                );
            }
        }
        // Errors.
        assert!(o.eval(&[Some(&x), Some(&i64t(&[64, 32, 127]))]).is_err());
        assert!(o.eval(&[Some(&x), Some(&i64t(&[-1]))]).is_err());
        assert!(o
            .eval(&[Some(&x), Some(&i64t(&[1 << 40, 1 << 40, 128]))])
            .is_err());
        let fs = Fact::new(DType::I64, vec![3]);
        let fx = Fact::new(DType::F32, vec![3]);
        assert!(o
            .infer(&[Some(&fx), Some(&fs)])
            .unwrap_err()
            .to_string()
            .contains("target shape of Expand"));
        assert_eq!(
            infer_shape(&*o, &[3, 1], &[Some(&i64t(&[2, 1, 5]))]).unwrap(),
            vec![2, 3, 5]
        );
    }
}
