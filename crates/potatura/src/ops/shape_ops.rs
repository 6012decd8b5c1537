//! Ops that move or reinterpret data without arithmetic.

use super::common::{fact, input};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{Node, Tensor};

/// Identity (and Dropout in inference mode).
#[derive(Debug)]
pub struct Identity;

/// Builds the shape ops.
pub fn build(node: &Node, _opset: i64) -> Result<Box<dyn Op>> {
    match node.op_type.as_str() {
        "Identity" => Ok(Box::new(Identity)),
        o => Err(op_error(format!("shape_ops::build called for {o}"))),
    }
}

impl Op for Identity {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        Ok(vec![fact(inputs, 0)?.clone()])
    }
    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        Ok(vec![input(inputs, 0)?.clone()])
    }
}
