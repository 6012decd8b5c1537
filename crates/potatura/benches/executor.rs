//! The executor against tract on the same fixtures and inputs, in the same
//! run: ResNet-, MobileNetV2- and YOLOv8-style models at batch 1 and 8.
//! Read the ratio potatura/tract from the two timings of each group.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use potatura::exec::Executor;
use potatura::ir::Tensor;
use tract_onnx::prelude::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(name)
}

/// Deterministic pseudo-random input in [-1, 1).
fn input(shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut s: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Makes the batch dimension of the model's input dynamic so batch 8 runs.
fn with_batch(name: &str, batch: usize) -> (potatura::ir::Model, PathBuf) {
    let mut m = potatura::onnx::load(&fixture(name)).unwrap();
    let dir = std::env::temp_dir().join(format!("potatura-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for v in m.graph.inputs.iter_mut().chain(m.graph.outputs.iter_mut()) {
        if let Some(s) = v.shape.as_mut() {
            if !s.is_empty() {
                s[0] = potatura::ir::Dim::Sym("batch".into());
            }
        }
    }
    m.graph.value_info.clear();
    let path = dir.join(format!("b{batch}-{name}"));
    potatura::onnx::save(&m, &path).unwrap();
    (m, path)
}

fn bench(c: &mut Criterion) {
    for (name, chw) in [
        ("resnet_mini.onnx", [3usize, 32, 32]),
        ("mobilenetv2_mini.onnx", [3, 64, 64]),
        ("yolov8_mini.onnx", [3, 64, 64]),
    ] {
        let mut g = c.benchmark_group(name.trim_end_matches(".onnx"));
        for batch in [1usize, 8] {
            let shape = vec![batch, chw[0], chw[1], chw[2]];
            let data = input(&shape);
            let (model, path) = with_batch(name, batch);
            let exec = Executor::new(&model).unwrap();
            let in_name = exec.inputs()[0].name.clone();
            let x = Tensor::from_f32(shape.clone(), data.clone());
            // Some exports bake the batch size into Reshape targets.
            if let Err(e) = exec.run(vec![(in_name.clone(), x.clone())]) {
                eprintln!("skipping {name} at batch {batch}: {e}");
                continue;
            }
            g.bench_with_input(BenchmarkId::new("potatura", batch), &batch, |b, _| {
                b.iter(|| exec.run(vec![(in_name.clone(), x.clone())]).unwrap())
            });
            let plan = tract_onnx::onnx()
                .model_for_path(&path)
                .unwrap()
                .with_input_fact(0, f32::fact(&shape).into())
                .unwrap()
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap();
            let tx = tract_onnx::prelude::Tensor::from_shape(&shape, &data).unwrap();
            g.bench_with_input(BenchmarkId::new("tract", batch), &batch, |b, _| {
                b.iter(|| plan.run(tvec!(tx.clone().into())).unwrap())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
