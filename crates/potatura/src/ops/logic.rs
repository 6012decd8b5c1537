//! Selection and type conversion: Where, Cast.

use rayon::prelude::*;

use super::binary::broadcast_zip3;
use super::common::{broadcast_shapes, fact, input, PAR_THRESHOLD};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{DType, Data, Node, Storage, Tensor};

/// Which op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Where(condition, X, Y)`: X where the condition holds, else Y, with
    /// numpy broadcasting of all three.
    Where,
    /// `Cast`: converts to another element type.
    Cast {
        /// Target type.
        to: DType,
    },
}

/// A Where or Cast op.
#[derive(Debug)]
pub struct Logic {
    /// Which one, with its parameters.
    pub kind: Kind,
}

/// Builds Where and Cast.
pub fn build(node: &Node, _opset: i64) -> Result<Box<dyn Op>> {
    let kind = match node.op_type.as_str() {
        "Where" => Kind::Where,
        "Cast" => {
            if node.attr("to").is_none() {
                return Err(op_error("Cast needs the attribute 'to'"));
            }
            let code = node.attr_int("to", 0)?;
            let code = i32::try_from(code).map_err(|_| op_error(format!("Cast: invalid type code {code}")))?;
            let to = DType::from_onnx(code);
            if to.storage() == Storage::None {
                return Err(op_error(format!("Cast to {to} is not supported")));
            }
            Kind::Cast { to }
        }
        o => return Err(op_error(format!("logic::build called for {o}"))),
    };
    Ok(Box::new(Logic { kind }))
}

/// Wraps an integer to the width of an integer `dtype`, as a C cast does
/// (`300` to `u8` is `44`, `128` to `i8` is `-128`). `i64`, `u64` (held as
/// its bit pattern) and non-integer types are returned unchanged.
#[inline]
pub fn wrap_int(dtype: DType, v: i64) -> i64 {
    match dtype {
        DType::I8 => v as i8 as i64,
        DType::U8 => v as u8 as i64,
        DType::I16 => v as i16 as i64,
        DType::U16 => v as u16 as i64,
        DType::I32 => v as i32 as i64,
        DType::U32 => v as u32 as i64,
        _ => v,
    }
}

/// Converts a float to an integer `dtype`: truncates toward zero and
/// saturates to the type's range (NaN gives 0). `u64` is returned as its
/// bit pattern.
#[inline]
pub fn float_to_int(dtype: DType, x: f32) -> i64 {
    match dtype {
        DType::I8 => x as i8 as i64,
        DType::U8 => x as u8 as i64,
        DType::I16 => x as i16 as i64,
        DType::U16 => x as u16 as i64,
        DType::I32 => x as i32 as i64,
        DType::U32 => x as u32 as i64,
        DType::U64 => x as u64 as i64,
        _ => x as i64,
    }
}

/// Rounds an f32 to the precision of a float `dtype` (f16, bf16: nearest
/// even, overflow to infinity); f32 and f64 values are unchanged.
#[inline]
pub fn round_to_float(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Maps a slice, in parallel when large.
fn pmap<T: Copy + Sync, U: Send>(x: &[T], f: impl Fn(T) -> U + Sync + Send) -> Vec<U> {
    if x.len() >= PAR_THRESHOLD {
        x.par_iter().map(|&a| f(a)).collect()
    } else {
        x.iter().map(|&a| f(a)).collect()
    }
}

/// Converts `x` to `to` (see [`Kind::Cast`]): float to int truncates and
/// saturates, int to narrower int wraps, anything to bool is "nonzero",
/// bool is 0/1, f16/bf16 targets round to their precision.
pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    let from = x.dtype();
    if from.storage() == Storage::None || to.storage() == Storage::None {
        return Err(op_error(format!("Cast from {from} to {to} is not supported")));
    }
    if from == to {
        return Ok(x.clone());
    }
    let shape = x.shape().to_vec();
    let data = match (x.data(), to.storage()) {
        (Data::F32(v), Storage::Float) => {
            if matches!(to, DType::F16 | DType::BF16) {
                Data::F32(pmap(v, |a| round_to_float(to, a)))
            } else {
                Data::F32(v.clone())
            }
        }
        (Data::F32(v), Storage::Int) => Data::I64(pmap(v, |a| float_to_int(to, a))),
        (Data::F32(v), _) => Data::Bool(pmap(v, |a| a != 0.0)),
        (Data::I64(v), Storage::Float) => {
            let unsigned = from == DType::U64;
            Data::F32(pmap(v, |a| round_to_float(to, if unsigned { a as u64 as f32 } else { a as f32 })))
        }
        (Data::I64(v), Storage::Int) => Data::I64(pmap(v, |a| wrap_int(to, a))),
        (Data::I64(v), _) => Data::Bool(pmap(v, |a| a != 0)),
        (Data::Bool(v), Storage::Float) => Data::F32(pmap(v, |a| a as u8 as f32)),
        (Data::Bool(v), Storage::Int) => Data::I64(pmap(v, |a| a as i64)),
        (Data::Bool(v), _) => Data::Bool(v.clone()),
    };
    Tensor::new(to, shape, data)
}

impl Logic {
    fn where_types(c: DType, x: DType, y: DType) -> Result<()> {
        if c != DType::Bool {
            return Err(op_error(format!("Where condition must be bool, got {c}")));
        }
        if x != y {
            return Err(op_error(format!("Where branches have different types: {x} and {y}")));
        }
        if x.storage() == Storage::None {
            return Err(op_error(format!("Where does not support type {x}")));
        }
        Ok(())
    }

    fn eval_where(c: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        Self::where_types(c.dtype(), x.dtype(), y.dtype())?;
        let cv = c.bools()?;
        let (cs, xs, ys) = (c.shape(), x.shape(), y.shape());
        let pick = |k: bool, a, b| if k { a } else { b };
        let (shape, data) = match (x.data(), y.data()) {
            (Data::F32(a), Data::F32(b)) => {
                let (s, v) = broadcast_zip3(cv, cs, a, xs, b, ys, pick)?;
                (s, Data::F32(v))
            }
            (Data::I64(a), Data::I64(b)) => {
                let (s, v) = broadcast_zip3(cv, cs, a, xs, b, ys, pick)?;
                (s, Data::I64(v))
            }
            (Data::Bool(a), Data::Bool(b)) => {
                let (s, v) = broadcast_zip3(cv, cs, a, xs, b, ys, pick)?;
                (s, Data::Bool(v))
            }
            _ => return Err(op_error(format!("Where branches have different types: {} and {}", x.dtype(), y.dtype()))),
        };
        Tensor::new(x.dtype(), shape, data)
    }
}

impl Op for Logic {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        match self.kind {
            Kind::Where => {
                let (c, x, y) = (fact(inputs, 0)?, fact(inputs, 1)?, fact(inputs, 2)?);
                Self::where_types(c.dtype, x.dtype, y.dtype)?;
                Ok(vec![Fact::new(x.dtype, broadcast_shapes(&[&c.shape, &x.shape, &y.shape])?)])
            }
            Kind::Cast { to } => {
                let x = fact(inputs, 0)?;
                if x.dtype.storage() == Storage::None {
                    return Err(op_error(format!("Cast from {} to {to} is not supported", x.dtype)));
                }
                Ok(vec![Fact::new(to, x.shape.clone())])
            }
        }
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let out = match self.kind {
            Kind::Where => Self::eval_where(input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?)?,
            Kind::Cast { to } => cast(input(inputs, 0)?, to)?,
        };
        Ok(vec![out])
    }
}
