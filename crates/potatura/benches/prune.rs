//! Structured pruning at `--target-macs 0.5`: the latency of the dense and
//! the pruned model in potatura's executor and in tract, in the same run
//! (read the speed-up from each pair), and the time pruning itself takes
//! (analysis + selection + apply). Fixtures always; ../shared/models
//! mobilenet_v2 and /tmp/bigmodels/yolov8n.onnx when present.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use potatura::exec::Executor;
use potatura::importance::{Criterion as Imp, Reduce};
use potatura::ir::{resolve_input_shapes, Tensor};
use potatura::prune::{Options, Select, Target};
use tract_onnx::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn opts() -> Options {
    Options {
        select: Select {
            target: Target::Macs(0.5),
            round_to: 8,
            max_layer_ratio: 0.9,
            ignore: Vec::new(),
            latency: None,
        },
        criterion: Imp::L2,
        reduce: Reduce::Mean,
        steps: 1,
        seed: 0,
        calib_batch: 16,
    }
}

fn input(shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut models: Vec<PathBuf> = ["resnet_mini", "mobilenetv2_mini", "yolov8_mini"]
        .iter()
        .map(|n| root().join(format!("tests/fixtures/{n}.onnx")))
        .collect();
    for extra in [
        root().join("../shared/models/mobilenet_v2/model.onnx"),
        PathBuf::from("/tmp/bigmodels/yolov8n.onnx"),
    ] {
        if extra.exists() {
            models.push(extra);
        }
    }
    let dir = std::env::temp_dir().join(format!("potatura-bench-prune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for path in models {
        let name = path
            .parent()
            .filter(|_| path.file_name().unwrap() == "model.onnx")
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .unwrap_or_else(|| path.file_stem().unwrap().to_string_lossy().to_string());
        let m = potatura::onnx::load(&path).unwrap();
        let inputs = resolve_input_shapes(&m, &[]).unwrap();
        let mut g = c.benchmark_group(format!("prune/{name}"));
        g.sample_size(10);
        g.bench_function("analyse+select+apply", |b| {
            b.iter(|| potatura::prune::structured(&m, &inputs, &opts(), None).unwrap())
        });
        let pruned = potatura::prune::structured(&m, &inputs, &opts(), None)
            .unwrap()
            .model;
        let pruned_path = dir.join(format!("{name}.pruned.onnx"));
        potatura::onnx::save(&pruned, &pruned_path).unwrap();
        let shape = inputs[0].shape.clone();
        let data = input(&shape);
        for (label, model, file) in [
            ("dense", &m, path.as_path()),
            ("pruned", &pruned, pruned_path.as_path()),
        ] {
            let exec = Executor::new(model).unwrap();
            let x = Tensor::from_f32(shape.clone(), data.clone());
            let in_name = inputs[0].name.clone();
            g.bench_function(format!("potatura/{label}"), |b| {
                b.iter(|| exec.run(vec![(in_name.clone(), x.clone())]).unwrap())
            });
            let plan = tract_plan(file, &shape);
            let tx = tract_onnx::prelude::Tensor::from_shape(&shape, &data).unwrap();
            g.bench_function(format!("tract/{label}"), |b| {
                b.iter(|| plan.run(tvec!(tx.clone().into())).unwrap())
            });
        }
        g.finish();
    }
}

fn tract_plan(path: &Path, shape: &[usize]) -> Arc<TypedRunnableModel> {
    tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
}

criterion_group!(benches, bench);
criterion_main!(benches);
