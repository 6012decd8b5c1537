//! Measured latency: the whole model and every node, on this machine, with
//! the executor, on deterministic synthetic inputs of the resolved shapes.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::exec::Executor;
use crate::ir::{InputShape, Storage, Tensor};

/// Deterministic synthetic inputs: floats uniform in [-1, 1), integers 1
/// (a valid token id and a full attention mask), booleans true.
/// Inputs of a type that cannot be computed (strings) are an error.
pub fn synthetic_inputs(shapes: &[InputShape]) -> Result<Vec<(String, Tensor)>> {
    shapes
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let t = match s.dtype.storage() {
                Storage::Float => {
                    let mut state: u32 = 0x9e37_79b9;
                    let v = (0..n)
                        .map(|_| {
                            state ^= state << 13;
                            state ^= state >> 17;
                            state ^= state << 5;
                            (state as f32 / u32::MAX as f32) * 2.0 - 1.0
                        })
                        .collect();
                    Tensor::from_float(s.dtype, s.shape.clone(), v)
                }
                Storage::Bool => Tensor::from_bool(s.shape.clone(), vec![true; n]),
                Storage::Int => Tensor::from_int(s.dtype, s.shape.clone(), vec![1; n]),
                Storage::None => {
                    return Err(Error::Input {
                        name: s.name.clone(),
                        detail: format!("cannot make synthetic data of type {}", s.dtype),
                    })
                }
            };
            Ok((s.name.clone(), t))
        })
        .collect()
}

/// One node's share of the run time.
#[derive(Clone, Debug, Serialize)]
pub struct NodeLatency {
    /// Node label.
    pub node: String,
    /// Operator type.
    pub op: String,
    /// Median time in microseconds.
    pub micros: f64,
}

/// Latency of one model at fixed input shapes.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Median wall time of a whole run, in milliseconds.
    pub median_ms: f64,
    /// Fastest run, in milliseconds.
    pub min_ms: f64,
    /// Timed runs.
    pub runs: usize,
    /// Threads the executor used.
    pub threads: usize,
    /// Median time per executed node (constant-folded nodes cost nothing
    /// and are absent).
    pub nodes: Vec<NodeLatency>,
}

/// Times `exec` on synthetic inputs: warm-up runs, then timed runs until
/// both `min_runs` runs and `budget` have passed (at most 10 000 runs).
pub fn measure(
    exec: &Executor,
    shapes: &[InputShape],
    min_runs: usize,
    budget: Duration,
) -> Result<Latency> {
    let feeds = synthetic_inputs(shapes)?;
    for _ in 0..2 {
        exec.run(feeds.clone())?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_runs.max(1) || (start.elapsed() < budget && times.len() < 10_000) {
        let f = feeds.clone();
        let t0 = Instant::now();
        exec.run(f)?;
        times.push(t0.elapsed());
    }
    times.sort();
    let node_runs = times.len().clamp(5, 200);
    let nodes = exec
        .profile(feeds, node_runs)?
        .into_iter()
        .map(|s| NodeLatency {
            node: s.node,
            op: s.op_type,
            micros: s.median.as_secs_f64() * 1e6,
        })
        .collect();
    Ok(Latency {
        median_ms: times[times.len() / 2].as_secs_f64() * 1e3,
        min_ms: times[0].as_secs_f64() * 1e3,
        runs: times.len(),
        threads: rayon::current_num_threads(),
        nodes,
    })
}

/// Median time of every graph node in microseconds (0 for nodes folded
/// into constants), indexed like `model.graph.nodes`: the per-layer table
/// latency-aware pruning spends its cuts by.
pub fn node_table(
    exec: &Executor,
    n_nodes: usize,
    shapes: &[InputShape],
    runs: usize,
) -> Result<Vec<f64>> {
    let feeds = synthetic_inputs(shapes)?;
    let mut t = vec![0.0; n_nodes];
    for s in exec.profile(feeds, runs)? {
        if let Some(x) = t.get_mut(s.index) {
            *x = s.median.as_secs_f64() * 1e6;
        }
    }
    Ok(t)
}

/// A stable 64-bit FNV-1a hash (cache keys).
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The CPU this runs on, for cache keys ("model name" of /proc/cpuinfo,
/// else the architecture).
pub fn cpu_id() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// [`node_table`] cached in `dir` per model bytes, input shapes, CPU and
/// thread count (measuring takes seconds on large models; the table of a
/// given model on a given machine does not change). A missing or unreadable
/// cache is measured again; failing to write it is not an error.
pub fn cached_node_table(
    exec: &Executor,
    model_bytes: &[u8],
    n_nodes: usize,
    shapes: &[InputShape],
    dir: Option<&std::path::Path>,
) -> Result<Vec<f64>> {
    let mut h = fnv1a(model_bytes, 0xcbf2_9ce4_8422_2325);
    let key = format!(
        "{shapes:?}|{}|{}|v1",
        cpu_id(),
        rayon::current_num_threads()
    );
    h = fnv1a(key.as_bytes(), h);
    let file = dir.map(|d| d.join(format!("latency-{h:016x}.json")));
    if let Some(f) = &file {
        if let Ok(text) = std::fs::read_to_string(f) {
            if let Ok(t) = serde_json::from_str::<Vec<f64>>(&text) {
                if t.len() == n_nodes {
                    return Ok(t);
                }
            }
        }
    }
    let t = node_table(exec, n_nodes, shapes, 20)?;
    if let (Some(f), Some(d)) = (&file, dir) {
        if std::fs::create_dir_all(d).is_ok() {
            if let Ok(text) = serde_json::to_string(&t) {
                let _ = crate::onnx::write_atomic(f, text.as_bytes());
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DType;

    #[test]
    fn synthetic_inputs_follow_dtype_and_shape() {
        let shapes = vec![
            InputShape {
                name: "x".into(),
                dtype: DType::F32,
                shape: vec![2, 3],
            },
            InputShape {
                name: "ids".into(),
                dtype: DType::I64,
                shape: vec![1, 4],
            },
        ];
        let f = synthetic_inputs(&shapes).unwrap();
        assert_eq!(f[0].1.shape(), &[2, 3]);
        let x = f[0].1.f32s().unwrap();
        assert!(x.iter().all(|v| (-1.0..1.0).contains(v)));
        assert!(x.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(f[1].1.to_i64_vec(), vec![1; 4]);
        assert_eq!(synthetic_inputs(&shapes).unwrap()[0].1.f32s().unwrap(), x);
    }
}
