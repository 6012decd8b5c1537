//! Helpers shared by the op unit tests.

use crate::ir::{numel, AttrValue, Attribute, Node, Tensor};

/// Deterministic pseudo-random values in [-1, 1) (xorshift).
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// An f32 tensor of `shape` filled with the next values.
    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        Tensor::from_f32(
            shape.to_vec(),
            (0..numel(shape)).map(|_| self.next()).collect(),
        )
    }
}

/// A node `n` of `op` with inputs `i0..` and outputs `o0..`.
pub fn node(op: &str, n_in: usize, n_out: usize, attrs: Vec<(&str, AttrValue)>) -> Node {
    let ins: Vec<String> = (0..n_in).map(|i| format!("i{i}")).collect();
    let outs: Vec<String> = (0..n_out).map(|i| format!("o{i}")).collect();
    let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
    let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
    Node::new(
        "n",
        op,
        &ins,
        &outs,
        attrs
            .into_iter()
            .map(|(k, v)| Attribute::new(k, v))
            .collect(),
    )
}
