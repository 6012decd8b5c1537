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
