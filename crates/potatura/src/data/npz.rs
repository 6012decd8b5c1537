//! NumPy `.npz` archives (`numpy.savez` and `numpy.savez_compressed`):
//! several named arrays, one `.npy` member each.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::Tensor;

/// Reads every array of an `.npz` file, in archive order, named as numpy
/// names them (the member name without `.npy`).
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let err = |detail: String| Error::Data {
        path: path.to_path_buf(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        error: e,
    })?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        err(format!(
            "not a readable .npz (zip) archive: {e}; save arrays with numpy.savez"
        ))
    })?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| err(format!("member {i} of the archive: {e}")))?;
        let name = member
            .name()
            .map_err(|e| err(format!("member {i} of the archive has a bad name: {e}")))?
            .to_string();
        let Some(key) = name.strip_suffix(".npy") else {
            continue;
        };
        let mut bytes = Vec::with_capacity(member.size() as usize);
        member
            .read_to_end(&mut bytes)
            .map_err(|e| err(format!("member '{name}': {e}")))?;
        let t = super::npy::parse(&bytes, &path.join(&name))?;
        out.push((key.to_string(), t));
    }
    if out.is_empty() {
        return Err(err("the archive holds no .npy arrays".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_stored_and_deflated_members() {
        let dir = std::env::temp_dir().join(format!("potatura-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Tensor::from_f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let b = Tensor::from_i64(vec![2], vec![7, -8]);
        for (file, method) in [
            ("stored.npz", zip::CompressionMethod::Stored),
            ("deflated.npz", zip::CompressionMethod::Deflated),
        ] {
            let path = dir.join(file);
            let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
            let o = zip::write::SimpleFileOptions::default().compression_method(method);
            for (name, t) in [("images", &a), ("labels", &b)] {
                w.start_file(format!("{name}.npy"), o).unwrap();
                w.write_all(&crate::data::npy::to_bytes(t).unwrap())
                    .unwrap();
            }
            w.finish().unwrap();
            let got = read(&path).unwrap();
            assert_eq!(got[0], ("images".to_string(), a.clone()));
            assert_eq!(got[1], ("labels".to_string(), b.clone()));
        }
        // Not an archive: a clear error naming the file.
        let bad = dir.join("bad.npz");
        std::fs::write(&bad, b"nope").unwrap();
        let e = read(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.npz") && e.contains("numpy.savez"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
