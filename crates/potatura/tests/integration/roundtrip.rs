//! Loading and saving an unmodified model reproduces it byte for byte.

use super::common::all_onnx;

#[test]
fn every_fixture_roundtrips_byte_identically() {
    for p in all_onnx() {
        let orig = std::fs::read(&p).unwrap();
        let m = potatura::onnx::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let bytes = potatura::onnx::to_bytes(&m).unwrap();
        assert!(
            bytes == orig,
            "{}: re-encoded bytes differ ({} vs {} bytes)",
            p.display(),
            bytes.len(),
            orig.len()
        );
    }
}

#[test]
fn save_writes_identical_files_including_external_data() {
    let dir = std::env::temp_dir().join(format!("potatura-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for p in all_onnx() {
        let m = potatura::onnx::load(&p).unwrap();
        let out = dir.join(p.file_name().unwrap());
        potatura::onnx::save(&m, &out).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&p).unwrap(),
            "{}",
            p.display()
        );
    }
    // The external-data fixture's data file is rewritten next to the copy.
    let src = super::common::fixtures().join("external_data.onnx.data");
    let copy = dir.join("external_data.onnx.data");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&src).unwrap());
    // And the copy loads on its own.
    let m = potatura::onnx::load(&dir.join("external_data.onnx")).unwrap();
    assert!(m.graph.initializers.iter().any(|t| t.byte_len() > 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn saving_beside_the_source_never_overwrites_its_data_file() {
    let dir = std::env::temp_dir().join(format!("potatura-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fx = super::common::fixtures();
    for f in ["external_data.onnx", "external_data.onnx.data"] {
        std::fs::copy(fx.join(f), dir.join(f)).unwrap();
    }
    let before = std::fs::read(dir.join("external_data.onnx.data")).unwrap();
    let mut m = potatura::onnx::load(&dir.join("external_data.onnx")).unwrap();
    // Modify one tensor so the model is really new.
    let t = m.graph.initializers[0].to_tensor().unwrap();
    m.graph.initializers[0].set(&t).unwrap();
    potatura::onnx::save(&m, &dir.join("pruned.onnx")).unwrap();
    assert_eq!(
        std::fs::read(dir.join("external_data.onnx.data")).unwrap(),
        before
    );
    assert!(dir.join("pruned.onnx.data").exists());
    let a = potatura::onnx::load(&dir.join("external_data.onnx")).unwrap();
    let b = potatura::onnx::load(&dir.join("pruned.onnx")).unwrap();
    for (x, y) in a.graph.initializers.iter().zip(&b.graph.initializers) {
        assert_eq!(x.raw(), y.raw(), "{}", x.name);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn constant_node_weights_are_readable_as_constants() {
    let m = potatura::onnx::load(&super::common::fixtures().join("const_weights.onnx")).unwrap();
    assert!(
        m.graph.initializers.is_empty(),
        "fixture stores weights in Constant nodes"
    );
    let conv = m.graph.nodes.iter().find(|n| n.op_type == "Conv").unwrap();
    let w = m
        .graph
        .const_tensor(&conv.inputs[1])
        .expect("conv weight found through its Constant node");
    assert_eq!(w.dims().len(), 4);
}

#[test]
fn fp16_and_typed_field_tensors_decode() {
    let fx = super::common::fixtures();
    let m = potatura::onnx::load(&fx.join("fp16_weights.onnx")).unwrap();
    assert!(m
        .graph
        .initializers
        .iter()
        .any(|t| t.dtype() == potatura::ir::DType::F16));
    for t in &m.graph.initializers {
        t.to_tensor().unwrap();
    }
    let m = potatura::onnx::load(&fx.join("typed_fields.onnx")).unwrap();
    for t in &m.graph.initializers {
        let v = t.to_tensor().unwrap();
        assert_eq!(v.len(), t.numel());
    }
}
