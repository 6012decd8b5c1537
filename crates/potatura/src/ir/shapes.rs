//! Fixing dynamic input dimensions (`--input-shape NAME=1,3,320,320`).

use super::dtype::DType;
use super::graph::{Dim, Model};
use crate::error::{Error, Result};

/// A graph input with a concrete shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputShape {
    /// Input name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Concrete dims.
    pub shape: Vec<usize>,
}

impl InputShape {
    /// Parses `NAME=1,3,320,320` (dtype is filled in by [`resolve_input_shapes`]).
    pub fn parse_override(s: &str) -> Result<(String, Vec<usize>)> {
        let err = || {
            Error::Usage(format!(
                "--input-shape '{s}': expected NAME=D1,D2,... with positive integers, e.g. --input-shape images=1,3,640,640"
            ))
        };
        let (name, dims) = s.rsplit_once('=').ok_or_else(err)?;
        if name.is_empty() {
            return Err(err());
        }
        let dims: Vec<usize> = dims
            .split(',')
            .map(|d| d.trim().parse::<usize>().ok().filter(|&d| d > 0))
            .collect::<Option<_>>()
            .ok_or_else(err)?;
        Ok((name.to_string(), dims))
    }
}

/// Concrete shapes for every real graph input. A symbolic first dim
/// defaults to 1 (the batch); any other unresolved dim needs an override.
/// Overrides must name real inputs and agree with fixed dims.
pub fn resolve_input_shapes(
    model: &Model,
    overrides: &[(String, Vec<usize>)],
) -> Result<Vec<InputShape>> {
    let inputs = model.graph.real_inputs();
    for (name, _) in overrides {
        if !inputs.iter().any(|v| &v.name == name) {
            let names: Vec<&str> = inputs.iter().map(|v| v.name.as_str()).collect();
            return Err(Error::Input {
                name: name.clone(),
                detail: format!("--input-shape names an input the model does not have; its inputs are {names:?}"),
            });
        }
    }
    let mut out = Vec::new();
    for v in inputs {
        let dtype = v.dtype.ok_or_else(|| Error::Input {
            name: v.name.clone(),
            detail: "the model does not declare this input as a tensor with an element type".into(),
        })?;
        let declared = v.shape.clone().unwrap_or_default();
        let given = overrides.iter().find(|(n, _)| n == &v.name).map(|(_, d)| d);
        let shape = match given {
            Some(dims) => {
                if v.shape.is_some() && dims.len() != declared.len() {
                    return Err(Error::Input {
                        name: v.name.clone(),
                        detail: format!(
                            "--input-shape gives {} dims {:?} but the model declares rank {} [{}]",
                            dims.len(),
                            dims,
                            declared.len(),
                            fmt_dims(&declared)
                        ),
                    });
                }
                for (i, (g, d)) in dims.iter().zip(&declared).enumerate() {
                    if let Dim::Known(k) = d {
                        if k != g {
                            return Err(Error::Input {
                                name: v.name.clone(),
                                detail: format!(
                                    "--input-shape sets dim {i} to {g} but the model fixes it at {k} (declared [{}])",
                                    fmt_dims(&declared)
                                ),
                            });
                        }
                    }
                }
                dims.clone()
            }
            None => {
                if v.shape.is_none() {
                    return Err(Error::Input {
                        name: v.name.clone(),
                        detail: format!(
                            "the model declares no shape for this input; give one with --input-shape {}=D1,D2,...",
                            v.name
                        ),
                    });
                }
                let mut dims = Vec::with_capacity(declared.len());
                for (i, d) in declared.iter().enumerate() {
                    match d {
                        Dim::Known(k) => dims.push(*k),
                        _ if i == 0 => dims.push(1),
                        other => {
                            let example: Vec<String> = declared
                                .iter()
                                .enumerate()
                                .map(|(j, d)| match d {
                                    Dim::Known(k) => k.to_string(),
                                    _ if j == 0 => "1".into(),
                                    _ => "N".into(),
                                })
                                .collect();
                            return Err(Error::Input {
                                name: v.name.clone(),
                                detail: format!(
                                    "dim {i} is dynamic ('{other}') in the declared shape [{}]; fix it with --input-shape {}={}",
                                    fmt_dims(&declared),
                                    v.name,
                                    example.join(",")
                                ),
                            });
                        }
                    }
                }
                dims
            }
        };
        out.push(InputShape {
            name: v.name.clone(),
            dtype,
            shape,
        });
    }
    Ok(out)
}

fn fmt_dims(d: &[Dim]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
