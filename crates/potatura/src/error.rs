//! The library's one error type. Variants name the file, node or tensor
//! involved and say what to do, so the CLI can print them as they are.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in potatura.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error (shown in the message, not chained).
        error: std::io::Error,
    },
    /// The bytes are not a valid ONNX model (or are truncated).
    #[error(
        "{path}: not a valid ONNX model ({detail}); check that the file is a complete .onnx export"
    )]
    NotOnnx {
        /// The file involved.
        path: PathBuf,
        /// What the decoder said.
        detail: String,
    },
    /// A model is structurally wrong or uses something we refuse.
    #[error("{path}: {detail}")]
    InvalidModel {
        /// The file involved (may be empty for in-memory models).
        path: PathBuf,
        /// What is wrong and where.
        detail: String,
    },
    /// A tensor in the model is malformed (size mismatch, hostile dims, bad external data).
    #[error("tensor '{tensor}': {detail}")]
    BadTensor {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        detail: String,
    },
    /// The model uses ops we cannot execute; all of them are listed.
    #[error("unsupported ops ({} node(s)): {}; potatura cannot run these ops yet — please file an issue with the model's exporter and opset", .nodes.len(), format_unsupported(.nodes))]
    UnsupportedOps {
        /// (node name, domain, op type) for every unsupported node.
        nodes: Vec<(String, String, String)>,
    },
    /// An op failed while computing or inferring shapes.
    #[error("node '{node}' ({op}): {detail}")]
    Op {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// What went wrong, with shapes.
        detail: String,
    },
    /// A graph input is missing, unknown, or has the wrong shape or dtype.
    #[error("input '{name}': {detail}")]
    Input {
        /// Input name.
        name: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// A data file (.npy, IDX, ...) could not be read.
    #[error("{path}: {detail}")]
    Data {
        /// The file involved.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Bad command-line style arguments given to the library.
    #[error("{0}")]
    Usage(String),
}

fn format_unsupported(nodes: &[(String, String, String)]) -> String {
    nodes
        .iter()
        .map(|(name, domain, op)| {
            if domain.is_empty() || domain == "ai.onnx" {
                format!("'{name}' ({op})")
            } else {
                format!("'{name}' ({domain}::{op})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// Shorthand for an op error.
    pub fn op(node: &str, op: &str, detail: impl Into<String>) -> Self {
        Error::Op {
            node: node.to_string(),
            op: op.to_string(),
            detail: detail.into(),
        }
    }
}
