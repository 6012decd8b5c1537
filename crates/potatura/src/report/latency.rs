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
