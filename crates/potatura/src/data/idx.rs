//! MNIST-style IDX files (optionally gzip-compressed).

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::Tensor;

fn err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        error: e,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(1 << 31)
            .read_to_end(&mut out)
            .map_err(|e| err(path, format!("gzip data is corrupt: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads an unsigned-byte IDX file: returns its dims and bytes.
pub fn read_u8(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let b = read_bytes(path)?;
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        return Err(err(path, "not an IDX file (bad magic)"));
    }
    if b[2] != 0x08 {
        return Err(err(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
                b[2]
            ),
        ));
    }
    let ndim = b[3] as usize;
    let hdr = 4 + 4 * ndim;
    if b.len() < hdr {
        return Err(err(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(b[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(path, "dims overflow"))?;
    if b.len() - hdr != n {
        return Err(err(
            path,
            format!(
                "IDX dims {dims:?} need {n} bytes, the file holds {}",
                b.len() - hdr
            ),
        ));
    }
    Ok((dims, b[hdr..].to_vec()))
}

/// Reads IDX images ([N, rows, cols]) as f32 [N, 1, rows, cols] = pixel / 255.
pub fn read_images(path: &Path) -> Result<Tensor> {
    let (dims, bytes) = read_u8(path)?;
    if dims.len() != 3 {
        return Err(err(
            path,
            format!("expected images with 3 dims [N, rows, cols], got {dims:?}"),
        ));
    }
    Ok(Tensor::from_f32(
        vec![dims[0], 1, dims[1], dims[2]],
        bytes.iter().map(|&p| p as f32 / 255.0).collect(),
    ))
}

/// Reads IDX labels ([N]) as i64.
pub fn read_labels(path: &Path) -> Result<Tensor> {
    let (dims, bytes) = read_u8(path)?;
    if dims.len() != 1 {
        return Err(err(
            path,
            format!("expected labels with 1 dim [N], got {dims:?}"),
        ));
    }
    Ok(Tensor::from_i64(
        vec![dims[0]],
        bytes.iter().map(|&p| p as i64).collect(),
    ))
}
