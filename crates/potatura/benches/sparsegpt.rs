//! SparseGPT on one 768 x 3072 layer (a BERT-base FFN output projection:
//! 768 rows of 3072 inputs) with 16k calibration tokens: accumulating
//! H = X Xᵀ, and pruning to 50% (Cholesky of H⁻¹ + blocked updates).

use criterion::{criterion_group, criterion_main, Criterion};
use potatura::prune::sparsegpt::{accumulate, prune};
use potatura::prune::unstructured::Pattern;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (rows, n, tokens) = (768usize, 3072usize, 16384usize);
    let x = values(n * tokens, 1);
    let w = values(rows * n, 2);
    let mut g = c.benchmark_group("sparsegpt_768x3072");
    g.sample_size(10);
    let mut h = vec![0.0f64; n * n];
    g.bench_function("accumulate H (16k tokens)", |b| {
        b.iter(|| {
            h.iter_mut().for_each(|v| *v = 0.0);
            accumulate(&mut h, &x, n, tokens)
        })
    });
    g.bench_function("prune 50%", |b| {
        b.iter(|| {
            let mut wc = w.clone();
            prune(
                &mut wc,
                rows,
                n,
                h.clone(),
                Pattern::Unstructured,
                0.5,
                false,
                0.01,
                128,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
