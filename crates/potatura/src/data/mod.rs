//! Data files: `.npy` arrays and MNIST IDX.

pub mod idx;
pub mod npy;

use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::Tensor;

/// Loads a data file by its content: `.npy`, or IDX (optionally gzipped).
/// IDX images become f32 `[N, 1, rows, cols]` = pixel/255; IDX label files
/// (1-D) become i64 `[N]`.
pub fn load_tensor(path: &Path) -> Result<Tensor> {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".npy") {
        return npy::read(path);
    }
    if name.contains("idx") || name.ends_with(".gz") || name.contains("ubyte") {
        let (dims, _) = idx::read_u8(path)?;
        return if dims.len() == 1 {
            idx::read_labels(path)
        } else {
            idx::read_images(path)
        };
    }
    Err(Error::Data {
        path: path.to_path_buf(),
        detail: "unknown data format: use a .npy file or an MNIST IDX file (e.g. t10k-images-idx3-ubyte.gz)".into(),
    })
}

/// Data for a model with one tensor per input, all holding the same number
/// of samples along axis 0 (calibration sets, evaluation sets).
#[derive(Clone, Debug, PartialEq)]
pub struct Feeds(pub Vec<(String, Tensor)>);

impl Feeds {
    /// Checks that every tensor has the same number of samples.
    pub fn new(inputs: Vec<(String, Tensor)>) -> Result<Feeds> {
        let n = inputs.first().and_then(|(_, t)| t.shape().first().copied());
        for (name, t) in &inputs {
            if t.shape().first().copied() != n {
                return Err(Error::Input {
                    name: name.clone(),
                    detail: format!(
                        "has {:?} samples but the other inputs have {:?}; every input needs the same number of samples",
                        t.shape().first(),
                        n
                    ),
                });
            }
        }
        Ok(Feeds(inputs))
    }

    /// Number of samples.
    pub fn samples(&self) -> usize {
        self.0
            .first()
            .and_then(|(_, t)| t.shape().first().copied())
            .unwrap_or(0)
    }

    /// The first `n` samples.
    pub fn take(&self, n: usize) -> Result<Feeds> {
        let n = n.clamp(1, self.samples().max(1));
        Ok(Feeds(
            self.0
                .iter()
                .map(|(k, t)| {
                    Ok((
                        k.clone(),
                        crate::eval::batches(t, n)?
                            .into_iter()
                            .next()
                            .unwrap_or_else(|| t.clone()),
                    ))
                })
                .collect::<Result<_>>()?,
        ))
    }

    /// Batches of at most `size` samples, each with every input.
    pub fn batches(&self, size: usize) -> Result<Vec<Vec<(String, Tensor)>>> {
        let per: Vec<Vec<Tensor>> = self
            .0
            .iter()
            .map(|(_, t)| crate::eval::batches(t, size))
            .collect::<Result<_>>()?;
        let nb = per.first().map(Vec::len).unwrap_or(0);
        Ok((0..nb)
            .map(|b| {
                self.0
                    .iter()
                    .zip(&per)
                    .map(|((k, _), v)| (k.clone(), v[b].clone()))
                    .collect()
            })
            .collect())
    }

    /// The tensor fed to input `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, t)| t)
    }
}
