//! Paths to the committed fixtures and their manifest.

use std::path::PathBuf;

/// `tests/fixtures/` at the repository root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

/// `examples/` at the repository root.
pub fn examples() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"))
}

/// Every `.onnx` file under tests/fixtures and examples.
pub fn all_onnx() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in [fixtures(), examples().join("mnist")] {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.extension().and_then(|s| s.to_str()) == Some("onnx") {
                v.push(p);
            }
        }
    }
    v.sort();
    assert!(v.len() >= 8, "expected the committed fixtures, found {v:?}");
    v
}

/// tests/fixtures/manifest.json.
pub fn manifest() -> serde_json::Value {
    let p = fixtures().join("manifest.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}
