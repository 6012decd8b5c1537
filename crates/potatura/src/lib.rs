//! potatura: prune trained neural networks given as ONNX files.
//!
//! Pipeline: [`onnx`] loads a model into the [`ir`]; [`ops`] define each
//! operator (shape inference, evaluation, MACs); [`exec`] runs a graph on
//! the CPU; [`report`] measures parameters and MACs.

#![warn(missing_docs)]

pub mod data;
pub mod deps;
pub mod error;
pub mod eval;
pub mod exec;
pub mod importance;
pub mod ir;
pub mod onnx;
pub mod ops;
pub mod prune;
pub mod report;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
