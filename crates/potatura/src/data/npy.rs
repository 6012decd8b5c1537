//! NumPy `.npy` files (format versions 1-3, C order, little-endian or
//! byte-order-free types).

use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{DType, Tensor};

fn err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Reads a `.npy` file into a tensor (f16/f64 become f32 storage with their
/// dtype kept; every integer type is held as i64).
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        error: e,
    })?;
    parse(&bytes, path)
}

/// Parses `.npy` bytes; `path` is used in messages.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Tensor> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err(
            path,
            "not a .npy file (missing the \\x93NUMPY magic); save arrays with numpy.save",
        ));
    }
    let major = bytes[6];
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err(path, "truncated .npy header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(err(path, format!("unsupported .npy format version {v}"))),
    };
    let header = bytes
        .get(hstart..hstart.saturating_add(hlen))
        .ok_or_else(|| err(path, "truncated .npy header"))?;
    let header =
        std::str::from_utf8(header).map_err(|_| err(path, "the .npy header is not text"))?;
    let descr = dict_value(header, "descr")
        .ok_or_else(|| err(path, format!("no 'descr' in .npy header {header:?}")))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order")
        .map(|v| v.starts_with("True"))
        .unwrap_or(false);
    if fortran {
        return Err(err(
            path,
            "Fortran-order arrays are not supported; save with numpy.ascontiguousarray",
        ));
    }
    let shape_s =
        dict_value(header, "shape").ok_or_else(|| err(path, "no 'shape' in .npy header"))?;
    let shape: Vec<usize> = shape_s
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| err(path, format!("bad shape {shape_s} in .npy header")))
        })
        .collect::<Result<_>>()?;
    let (dtype, size, big) = parse_descr(descr).ok_or_else(|| {
        err(path, format!("unsupported .npy dtype '{descr}' (supported: float16/32/64, int8/16/32/64, uint8/16/32/64, bool)"))
    })?;
    if big {
        return Err(err(path, format!("big-endian dtype '{descr}' is not supported; convert with arr.astype(arr.dtype.newbyteorder('<'))")));
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(path, "shape overflows"))?;
    let body = &bytes[hstart + hlen..];
    if n.checked_mul(size).map(|b| b != body.len()).unwrap_or(true) {
        return Err(err(
            path,
            format!(
                "shape {shape:?} of {descr} needs {} bytes, the file holds {}",
                n.saturating_mul(size),
                body.len()
            ),
        ));
    }
    crate::ir::decode_le(&path.display().to_string(), dtype, &shape, body)
        .map_err(|e| err(path, e.to_string()))
}

fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let k1 = format!("'{key}'");
    let i = header.find(&k1)?;
    let rest = header[i + k1.len()..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        Some(&rest[..=end])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

fn parse_descr(d: &str) -> Option<(DType, usize, bool)> {
    let (order, t) = match d.chars().next()? {
        '<' | '|' | '=' => (false, &d[1..]),
        '>' => (true, &d[1..]),
        _ => (false, d),
    };
    let dt = match t {
        "f2" => DType::F16,
        "f4" => DType::F32,
        "f8" => DType::F64,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        _ => return None,
    };
    let size = dt.size_of()?;
    Some((dt, size, order && size > 1))
}

fn descr_of(dt: DType) -> Option<&'static str> {
    Some(match dt {
        DType::F16 => "<f2",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        _ => return None,
    })
}

/// Encodes a tensor as `.npy` bytes (version 1.0), in its logical dtype.
pub fn to_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let descr = descr_of(t.dtype())
        .ok_or_else(|| Error::Usage(format!("cannot write dtype {} to .npy", t.dtype())))?;
    let shape = match t.shape() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts at a multiple of 64 bytes, newline-terminated.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&crate::ir::encode_le(t.dtype(), t.data())?);
    Ok(out)
}

/// Writes a tensor to a `.npy` file atomically.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    crate::onnx::write_atomic(path, &to_bytes(t)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_f32_and_i64() {
        let t = Tensor::from_f32(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]);
        let b = to_bytes(&t).unwrap();
        assert_eq!((b.len() - 24) % 64, 0, "data starts 64-byte aligned");
        assert_eq!(parse(&b, Path::new("x.npy")).unwrap(), t);
        let i = Tensor::from_i64(vec![4], vec![1, -2, 3, i64::MAX]);
        assert_eq!(
            parse(&to_bytes(&i).unwrap(), Path::new("y.npy")).unwrap(),
            i
        );
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        let t = Tensor::from_f32(vec![2, 2], vec![1.0; 4]);
        let b = to_bytes(&t).unwrap();
        let e = parse(&b[..b.len() - 3], Path::new("t.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.npy") && e.contains("bytes"), "{e}");
        let e = parse(b"hello world, not numpy", Path::new("g.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a .npy"), "{e}");
    }
}
