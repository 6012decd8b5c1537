//! Micro-benchmarks of the compute-heavy kernels (Conv, MatMul).
//!
//! Run with `cargo bench -p potatura --bench kernels -- --quick`.
//!
//! On a busy machine wall time says little: with `KERNELS_CPU_TIME=1` each
//! sample is the process CPU time instead (Linux), which with
//! `RAYON_NUM_THREADS=1` is the single-thread cost of a kernel.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use potatura::ir::{AttrValue, Attribute, Node, Tensor};
use potatura::ops::{self, Op};

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed | 1;
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    Tensor::from_f32(shape.to_vec(), v)
}

/// CPU time of the whole process (Linux), or `None`.
#[cfg(target_os = "linux")]
fn cpu_time() -> Option<Duration> {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    (rc == 0).then(|| Duration::new(t.sec as u64, t.nsec as u32))
}
#[cfg(not(target_os = "linux"))]
fn cpu_time() -> Option<Duration> {
    None
}

/// Times `f` over `iters` runs, in CPU time when asked for and available.
fn measure(iters: u64, f: &mut dyn FnMut()) -> Duration {
    let cpu = std::env::var_os("KERNELS_CPU_TIME").is_some();
    match (cpu, cpu_time()) {
        (true, Some(start)) => {
            for _ in 0..iters {
                f();
            }
            cpu_time().unwrap_or(start) - start
        }
        _ => {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed()
        }
    }
}

fn op(kind: &str, attrs: Vec<(&str, AttrValue)>) -> Box<dyn Op> {
    let n = Node::new(
        "n",
        kind,
        &["x", "w", "b"],
        &["y"],
        attrs
            .into_iter()
            .map(|(k, v)| Attribute::new(k, v))
            .collect(),
    );
    ops::build(&n, 17).expect("build").expect("supported")
}

fn bench_conv(
    c: &mut Criterion,
    name: &str,
    x: &[usize],
    w: &[usize],
    attrs: Vec<(&str, AttrValue)>,
) {
    let o = op("Conv", attrs);
    let (x, w, b) = (tensor(x, 1), tensor(w, 2), tensor(&[w[0]], 3));
    c.bench_function(name, |bn| {
        bn.iter_custom(|n| {
            measure(n, &mut || {
                std::hint::black_box(o.eval(&[Some(&x), Some(&w), Some(&b)]).unwrap());
            })
        })
    });
}

fn kernels(c: &mut Criterion) {
    let pad1 = || ("pads", AttrValue::Ints(vec![1, 1, 1, 1]));
    bench_conv(
        c,
        "conv3x3_64to64_56x56",
        &[1, 64, 56, 56],
        &[64, 64, 3, 3],
        vec![pad1()],
    );
    bench_conv(
        c,
        "depthwise3x3_64_56x56",
        &[1, 64, 56, 56],
        &[64, 1, 3, 3],
        vec![pad1(), ("group", AttrValue::Int(64))],
    );
    bench_conv(
        c,
        "conv1x1_64to256_56x56",
        &[1, 64, 56, 56],
        &[256, 64, 1, 1],
        vec![],
    );
    let mm = op("MatMul", vec![]);
    let (a, b) = (tensor(&[1, 128, 384], 4), tensor(&[384, 1536], 5));
    c.bench_function("matmul_1x128x384_384x1536", |bn| {
        bn.iter_custom(|n| {
            measure(n, &mut || {
                std::hint::black_box(mm.eval(&[Some(&a), Some(&b)]).unwrap());
            })
        })
    });
}

criterion_group!(benches, kernels);
criterion_main!(benches);
