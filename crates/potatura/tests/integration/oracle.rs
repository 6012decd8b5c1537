//! `Executor` outputs agree with tract (an independent runtime) and with
//! the ONNX Runtime outputs the fixture generator saved.

use std::path::Path;

use potatura::exec::Executor;
use potatura::ir::{Data, Tensor};
use tract_onnx::prelude::*;

use super::common::{fixtures, manifest};

/// max |a - b| / max |b|.
pub fn rel_max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn to_tract(t: &Tensor) -> tract_onnx::prelude::Tensor {
    match t.data() {
        Data::F32(v) => tract_onnx::prelude::Tensor::from_shape(t.shape(), v).unwrap(),
        Data::I64(v) => tract_onnx::prelude::Tensor::from_shape(t.shape(), v).unwrap(),
        Data::Bool(v) => tract_onnx::prelude::Tensor::from_shape(t.shape(), v).unwrap(),
    }
}

pub fn run_tract(path: &Path, feeds: &[(String, Tensor)]) -> Vec<Vec<f32>> {
    let mut model = tract_onnx::onnx().model_for_path(path).unwrap();
    for (i, (_, t)) in feeds.iter().enumerate() {
        let dt = match t.data() {
            Data::F32(_) => f32::datum_type(),
            Data::I64(_) => i64::datum_type(),
            Data::Bool(_) => bool::datum_type(),
        };
        model
            .set_input_fact(i, InferenceFact::dt_shape(dt, t.shape()))
            .unwrap();
    }
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let inputs: TVec<TValue> = feeds.iter().map(|(_, t)| to_tract(t).into()).collect();
    let out = plan.run(inputs).unwrap();
    out.iter()
        .map(|o| {
            o.cast_to::<f32>()
                .unwrap()
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

pub fn feeds_for(entry: &serde_json::Value) -> Vec<(String, Tensor)> {
    let m = entry["input_npy"]
        .as_object()
        .expect("input_npy in manifest");
    m.iter()
        .map(|(name, file)| {
            (
                name.clone(),
                potatura::data::npy::read(&fixtures().join(file.as_str().unwrap())).unwrap(),
            )
        })
        .collect()
}

/// Fixtures our executor must run (everything but the deliberately
/// non-computable ones).
fn computable() -> Vec<(String, serde_json::Value)> {
    let man = manifest();
    man.as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| {
            !k.starts_with("unknown_op")
                && !k.starts_with("meta_subgraph")
                && v.get("input_npy").is_some()
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn executor_matches_tract_on_every_fixture() {
    let list = computable();
    assert!(
        list.len() >= 10,
        "manifest lists {} computable fixtures",
        list.len()
    );
    for (file, entry) in list {
        let path = fixtures().join(&file);
        let model = potatura::onnx::load(&path).unwrap();
        let exec = Executor::new(&model).unwrap_or_else(|e| panic!("{file}: {e}"));
        let feeds = feeds_for(&entry);
        let ours = exec
            .run(feeds.clone())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let theirs = run_tract(&path, &feeds);
        assert_eq!(ours.len(), theirs.len(), "{file}: output count");
        for ((name, a), b) in ours.iter().zip(&theirs) {
            let a: Vec<f32> = a.to_f64_vec().into_iter().map(|x| x as f32).collect();
            let err = rel_max_err(&a, b);
            assert!(
                err <= 1e-4,
                "{file}: output {name}: relative max error {err:e} vs tract"
            );
        }
    }
}

#[test]
fn executor_matches_saved_onnxruntime_outputs() {
    for (file, entry) in computable() {
        let Some(out) = entry.get("output_npy") else {
            continue;
        };
        let outs: Vec<(String, String)> = match out {
            serde_json::Value::String(s) => vec![(String::new(), s.clone())],
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            other => panic!("{file}: output_npy {other}"),
        };
        let model = potatura::onnx::load(&fixtures().join(&file)).unwrap();
        let ours = Executor::new(&model)
            .unwrap()
            .run(feeds_for(&entry))
            .unwrap();
        for (i, (name, npy)) in outs.iter().enumerate() {
            let want = potatura::data::npy::read(&fixtures().join(npy)).unwrap();
            let got = if name.is_empty() {
                &ours[i].1
            } else {
                &ours.iter().find(|(n, _)| n == name).unwrap().1
            };
            assert_eq!(got.shape(), want.shape(), "{file}: {npy}");
            let a: Vec<f32> = got.to_f64_vec().into_iter().map(|x| x as f32).collect();
            let b: Vec<f32> = want.to_f64_vec().into_iter().map(|x| x as f32).collect();
            let err = rel_max_err(&a, &b);
            assert!(
                err <= 1e-4,
                "{file}: {npy}: relative max error {err:e} vs onnxruntime"
            );
        }
    }
}

#[test]
fn mnist_example_classifies_its_bundled_test_images() {
    let ex = super::common::examples().join("mnist");
    let model = potatura::onnx::load(&ex.join("mnist_cnn.onnx")).unwrap();
    let exec = Executor::new(&model).unwrap();
    let x = potatura::data::load_tensor(&ex.join("t10k-images-5k-idx3-ubyte.gz")).unwrap();
    let y = potatura::data::load_tensor(&ex.join("t10k-labels-5k-idx1-ubyte.gz")).unwrap();
    assert_eq!(x.shape(), &[5000, 1, 28, 28]);
    let pred = potatura::eval::predict(&exec, &x, 250).unwrap();
    let rep = potatura::eval::score(&pred, Some(y.i64s().unwrap()), None).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ex.join("expected.json")).unwrap()).unwrap();
    let want = expected["accuracy_first_5000"].as_f64().unwrap();
    let got = rep.accuracy.unwrap();
    // Same images, same weights: the same predictions as onnxruntime, up to
    // a sample whose top two logits tie within float error.
    assert!(
        (got - want).abs() <= 1.0 / 5000.0 + 1e-9,
        "accuracy {got} vs onnxruntime's {want}"
    );
    assert!(got > 0.98);
}
