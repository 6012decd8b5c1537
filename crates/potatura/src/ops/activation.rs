//! Element-wise activations on float tensors.

use rayon::prelude::*;

use super::common::{fact, input, PAR_THRESHOLD};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{Node, Tensor};

/// Which activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// max(x, 0)
    Relu,
}

/// An element-wise activation.
#[derive(Debug)]
pub struct Activation {
    /// Which one, with its parameters.
    pub kind: Kind,
}

/// Builds the activation ops.
pub fn build(node: &Node, _opset: i64) -> Result<Box<dyn Op>> {
    let kind = match node.op_type.as_str() {
        "Relu" => Kind::Relu,
        o => return Err(op_error(format!("activation::build called for {o}"))),
    };
    Ok(Box::new(Activation { kind }))
}

impl Activation {
    #[inline]
    fn apply(&self, x: f32) -> f32 {
        match self.kind {
            Kind::Relu => x.max(0.0),
        }
    }
}

/// Maps a float tensor element-wise (in parallel for large tensors).
pub fn map_f32(t: &Tensor, f: impl Fn(f32) -> f32 + Sync + Send) -> Result<Tensor> {
    let x = t.f32s()?;
    let v: Vec<f32> = if x.len() >= PAR_THRESHOLD { x.par_iter().map(|&a| f(a)).collect() } else { x.iter().map(|&a| f(a)).collect() };
    Ok(Tensor::from_float(t.dtype(), t.shape().to_vec(), v))
}

impl Op for Activation {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let a = fact(inputs, 0)?;
        Ok(vec![Fact::new(a.dtype, a.shape.clone())])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![map_f32(input(inputs, 0)?, |x| self.apply(x))?])
    }
}
