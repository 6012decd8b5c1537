//! (being written)

use super::{op_error, Op};
use crate::error::Result;
use crate::ir::Node;

/// Builds the ops of this file.
pub fn build(node: &Node, _opset: i64) -> Result<Box<dyn Op>> {
    Err(op_error(format!("pad::build: {} is not written yet", node.op_type)))
}
