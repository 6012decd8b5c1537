//! Optimizers (SGD with momentum or Nesterov, AdamW), learning-rate
//! schedules with warm-up, and gradient clipping.

use serde::{Deserialize, Serialize};

/// Which optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    /// SGD with momentum (0: plain), optionally Nesterov.
    Sgd {
        /// Momentum.
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    AdamW {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Denominator guard.
        eps: f32,
    },
}

/// Learning-rate schedule after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Cosine decay to 0.
    Cosine,
    /// Linear up to the peak over the first 30%, cosine down to 0 (the
    /// warm-up setting is ignored).
    OneCycle,
    /// Times 0.1 at 50% and 75% of the steps.
    Step,
}

/// The learning rate at `step` of `total` for peak `lr`.
pub fn lr_at(schedule: Schedule, lr: f32, step: usize, total: usize, warmup: usize) -> f32 {
    let total = total.max(1);
    let frac = step as f32 / total as f32;
    let cos = |p: f32| 0.5 * (1.0 + (std::f32::consts::PI * p.clamp(0.0, 1.0)).cos());
    if schedule == Schedule::OneCycle {
        let up = 0.3;
        return if frac < up {
            lr * (0.04 + 0.96 * frac / up)
        } else {
            lr * cos((frac - up) / (1.0 - up))
        };
    }
    if step < warmup {
        return lr * (step + 1) as f32 / warmup as f32;
    }
    let after = (step - warmup) as f32 / (total - warmup).max(1) as f32;
    match schedule {
        Schedule::Constant => lr,
        Schedule::Cosine => lr * cos(after),
        Schedule::Step => {
            lr * if after >= 0.75 {
                0.01
            } else if after >= 0.5 {
                0.1
            } else {
                1.0
            }
        }
        Schedule::OneCycle => unreachable!(),
    }
}

/// Scales `grads` so their global L2 norm is at most `max`; returns the
/// norm before clipping.
pub fn clip_global_norm(grads: &mut [Vec<f32>], max: f32) -> f32 {
    let norm = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt() as f32;
    if norm > max && norm > 0.0 {
        let s = max / norm;
        grads
            .iter_mut()
            .for_each(|g| g.iter_mut().for_each(|v| *v *= s));
    }
    norm
}

/// An optimizer's state for a list of parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Optimizer {
    /// Which optimizer.
    pub kind: OptimKind,
    /// Weight decay (SGD: L2 added to the gradient; AdamW: decoupled).
    /// Applied to weights of rank 2 or more, not to biases or norms.
    pub weight_decay: f32,
    /// First moment (momentum buffer) per parameter.
    m: Vec<Vec<f32>>,
    /// Second moment per parameter (AdamW).
    v: Vec<Vec<f32>>,
    /// Steps taken.
    t: u64,
}

impl Optimizer {
    /// A fresh optimizer for parameters of these sizes.
    pub fn new(kind: OptimKind, weight_decay: f32, sizes: &[usize]) -> Optimizer {
        let adam = matches!(kind, OptimKind::AdamW { .. });
        Optimizer {
            kind,
            weight_decay,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: if adam {
                sizes.iter().map(|&n| vec![0.0; n]).collect()
            } else {
                Vec::new()
            },
            t: 0,
        }
    }

    /// One update of `params[i]` by `grads[i]` at learning rate `lr`;
    /// `decay[i]` says whether weight decay applies.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[Vec<f32>], decay: &[bool], lr: f32) {
        self.t += 1;
        let wd = self.weight_decay;
        match self.kind {
            OptimKind::Sgd { momentum, nesterov } => {
                for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
                    let d = if decay[i] { wd } else { 0.0 };
                    let m = &mut self.m[i];
                    for ((w, &gi), mi) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                        let gi = gi + d * *w;
                        let upd = if momentum > 0.0 {
                            *mi = momentum * *mi + gi;
                            if nesterov {
                                gi + momentum * *mi
                            } else {
                                *mi
                            }
                        } else {
                            gi
                        };
                        *w -= lr * upd;
                    }
                }
            }
            OptimKind::AdamW { beta1, beta2, eps } => {
                let (b1t, b2t) = (
                    1.0 - beta1.powi(self.t as i32),
                    1.0 - beta2.powi(self.t as i32),
                );
                for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
                    let d = if decay[i] { wd } else { 0.0 };
                    let (m, v) = (&mut self.m[i], &mut self.v[i]);
                    for (((w, &gi), mi), vi) in
                        p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        *mi = beta1 * *mi + (1.0 - beta1) * gi;
                        *vi = beta2 * *vi + (1.0 - beta2) * gi * gi;
                        let mh = *mi / b1t;
                        let vh = *vi / b2t;
                        *w -= lr * (mh / (vh.sqrt() + eps) + d * *w);
                    }
                }
            }
        }
    }

    /// The moments (per parameter) and the step count, for checkpoints.
    pub fn state(&self) -> (&[Vec<f32>], &[Vec<f32>], u64) {
        (&self.m, &self.v, self.t)
    }

    /// Restores [`Optimizer::state`]; the sizes must match the parameters.
    pub fn set_state(&mut self, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>, t: u64) -> bool {
        let fits = |a: &[Vec<f32>], b: &[Vec<f32>]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.len() == y.len())
        };
        if !fits(&m, &self.m) || !fits(&v, &self.v) {
            return false;
        }
        self.m = m;
        self.v = v;
        self.t = t;
        true
    }

    /// Zeroes the optimizer state of parameter `i` where `keep` is false
    /// (pruned weights carry no momentum back to life).
    pub fn mask_state(&mut self, i: usize, keep: &[bool]) {
        for buf in [self.m.get_mut(i), self.v.get_mut(i)].into_iter().flatten() {
            for (s, &k) in buf.iter_mut().zip(keep) {
                if !k {
                    *s = 0.0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_clipping() {
        assert_eq!(lr_at(Schedule::Constant, 1.0, 5, 10, 0), 1.0);
        assert!((lr_at(Schedule::Cosine, 1.0, 0, 10, 0) - 1.0).abs() < 1e-6);
        assert!(lr_at(Schedule::Cosine, 1.0, 9, 10, 0) < 0.05);
        assert!((lr_at(Schedule::Cosine, 1.0, 0, 10, 4) - 0.25).abs() < 1e-6);
        assert!((lr_at(Schedule::Step, 1.0, 6, 10, 0) - 0.1).abs() < 1e-6);
        assert!(lr_at(Schedule::OneCycle, 1.0, 0, 100, 0) < 0.1);
        assert!((lr_at(Schedule::OneCycle, 1.0, 30, 100, 0) - 1.0).abs() < 1e-3);
        let mut g = vec![vec![3.0, 0.0], vec![4.0]];
        assert_eq!(clip_global_norm(&mut g, 1.0), 5.0);
        assert!((g[0][0] - 0.6).abs() < 1e-6 && (g[1][0] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn optimizers_descend_a_quadratic() {
        // f(w) = |w - 3|², gradient 2(w - 3).
        for kind in [
            OptimKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            OptimKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        ] {
            let mut w = vec![0.0f32; 2];
            let mut o = Optimizer::new(kind, 0.0, &[2]);
            for _ in 0..300 {
                let g = vec![w.iter().map(|&x| 2.0 * (x - 3.0)).collect::<Vec<_>>()];
                o.step(&mut [&mut w[..]], &g, &[true], 0.05);
            }
            assert!(w.iter().all(|&x| (x - 3.0).abs() < 0.05), "{kind:?}: {w:?}");
        }
    }
}
