//! Training throughput (batch 64, SGD with Nesterov momentum,
//! cross-entropy) on the bundled MNIST CNN and the MobileNetV2-style
//! fixture, against an inference pass of the same model measured in the
//! same run. `scripts/crosscheck/train_throughput.py` measures PyTorch on
//! the same architectures for comparison.
//!
//! Run with `cargo bench -p potatura --bench train`. The allocator is the
//! CLI's (mimalloc), so the numbers are what `potatura recover` gets.

use std::path::PathBuf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn keep_freed_memory() {
    // SAFETY: before any other thread runs; 15 is mimalloc's purge_delay
    // (see the CLI's main.rs).
    unsafe { libmimalloc_sys::mi_option_set(15, -1) }
}

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use potatura::data::Feeds;
use potatura::exec::Executor;
use potatura::ir::Tensor;
use potatura::train::{recover, RecoverOptions};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

const BATCH: usize = 64;
/// Steps per timed run: enough that building the trainer and the first
/// step's allocations weigh little, as the PyTorch script leaves out its
/// warm-up steps.
const STEPS: usize = 16;

fn bench(c: &mut Criterion) {
    keep_freed_memory();
    let cases = [
        (
            "mnist_cnn",
            root().join("examples/mnist/mnist_cnn.onnx"),
            vec![BATCH, 1, 28, 28],
        ),
        (
            "mobilenetv2_mini",
            root().join("tests/fixtures/mobilenetv2_mini.onnx"),
            vec![BATCH, 3, 64, 64],
        ),
    ];
    let mut g = c.benchmark_group("train");
    g.sample_size(10);
    for (name, path, shape) in cases {
        let m = potatura::onnx::load(&path).unwrap();
        let mut rng = potatura::rng::Rng::new(1);
        let n: usize = shape.iter().product();
        let x = Tensor::from_f32(shape.clone(), (0..n).map(|_| rng.normal() as f32).collect());
        let labels: Vec<i64> = (0..BATCH as i64).map(|i| i % 10).collect();
        let data = Feeds::new(vec![("input".into(), x.clone())]).unwrap();
        let opts = RecoverOptions {
            steps: STEPS,
            batch: BATCH,
            ..RecoverOptions::default()
        };
        g.throughput(Throughput::Elements((STEPS * BATCH) as u64));
        g.bench_function(format!("{name}/train_{STEPS}_steps"), |b| {
            b.iter(|| recover(&m, None, &data, Some(&labels), &opts, &mut |_| true).unwrap())
        });
        // Baseline: inference on the same batch, STEPS times.
        let relaxed = potatura::exec::relax_batch(&m, &data).unwrap_or_else(|| m.clone());
        let exec = Executor::new(&relaxed).unwrap();
        g.bench_function(format!("{name}/infer_{STEPS}_batches"), |b| {
            b.iter(|| {
                for _ in 0..STEPS {
                    exec.run(data.0.clone()).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
