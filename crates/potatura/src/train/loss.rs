//! Losses and their gradients: cross-entropy with labels, distillation
//! (KL divergence at a temperature) and mean squared error.

use crate::error::{Error, Result};

/// Row-wise softmax of `[rows, classes]` logits divided by `t`.
fn softmax_rows(x: &[f32], classes: usize, t: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for (row, o) in x.chunks(classes).zip(out.chunks_mut(classes)) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b / t));
        let mut s = 0.0f32;
        for (oi, &v) in o.iter_mut().zip(row) {
            *oi = (v / t - m).exp();
            s += *oi;
        }
        o.iter_mut().for_each(|v| *v /= s);
    }
    out
}

/// Mean cross-entropy of `[rows, classes]` logits against class labels,
/// and its gradient. Also returns how many rows were classified right.
pub fn cross_entropy(
    logits: &[f32],
    classes: usize,
    labels: &[i64],
) -> Result<(f32, Vec<f32>, usize)> {
    let rows = logits.len() / classes.max(1);
    if labels.len() != rows {
        return Err(Error::Usage(format!(
            "{} labels for {rows} samples",
            labels.len()
        )));
    }
    let p = softmax_rows(logits, classes, 1.0);
    let mut grad = p.clone();
    let (mut loss, mut right) = (0.0f64, 0usize);
    for (r, &l) in labels.iter().enumerate() {
        if l < 0 || l as usize >= classes {
            return Err(Error::Usage(format!(
                "label {l} is outside the model's {classes} classes"
            )));
        }
        let l = l as usize;
        loss -= (p[r * classes + l].max(1e-30) as f64).ln();
        grad[r * classes + l] -= 1.0;
        let row = &logits[r * classes..][..classes];
        let best = (0..classes)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        right += usize::from(best == l);
    }
    grad.iter_mut().for_each(|g| *g /= rows as f32);
    Ok(((loss / rows as f64) as f32, grad, right))
}

/// Distillation loss `T² · KL(softmax(teacher / T) ‖ softmax(student / T))`,
/// averaged over rows (Hinton et al.), and its gradient in the student
/// logits.
pub fn distill_kl(student: &[f32], teacher: &[f32], classes: usize, t: f32) -> (f32, Vec<f32>) {
    let rows = student.len() / classes.max(1);
    let (ps, pt) = (
        softmax_rows(student, classes, t),
        softmax_rows(teacher, classes, t),
    );
    let mut loss = 0.0f64;
    for (&a, &b) in pt.iter().zip(&ps) {
        if a > 0.0 {
            loss += a as f64 * ((a.max(1e-30) as f64).ln() - (b.max(1e-30) as f64).ln());
        }
    }
    let scale = t / rows as f32;
    let grad = ps.iter().zip(&pt).map(|(s, t)| (s - t) * scale).collect();
    ((loss * (t * t) as f64 / rows as f64) as f32, grad)
}

/// Mean squared error and its gradient.
pub fn mse(student: &[f32], target: &[f32]) -> (f32, Vec<f32>) {
    let n = student.len().max(1) as f32;
    let mut loss = 0.0f64;
    let grad = student
        .iter()
        .zip(target)
        .map(|(s, t)| {
            let d = s - t;
            loss += (d * d) as f64;
            2.0 * d / n
        })
        .collect();
    ((loss / n as f64) as f32, grad)
}

/// [`mse`] over the positions a mask keeps: `student` and `target` hold
/// `mask.len()` rows of equal length (e.g. a `[batch, seq, hidden]`
/// encoder output under a `[batch, seq]` attention mask); a row whose
/// mask is 0 (padding) adds nothing and gets no gradient. The mean is over
/// the kept values.
pub fn masked_mse(student: &[f32], target: &[f32], mask: &[f32]) -> (f32, Vec<f32>) {
    let row = student.len() / mask.len().max(1);
    let kept: f64 = mask.iter().map(|&m| m as f64).sum::<f64>() * row as f64;
    if kept <= 0.0 || row == 0 {
        return (0.0, vec![0.0; student.len()]);
    }
    let n = kept as f32;
    let mut loss = 0.0f64;
    let mut grad = vec![0.0f32; student.len()];
    for (((g, s), t), &m) in grad
        .chunks_mut(row)
        .zip(student.chunks(row))
        .zip(target.chunks(row))
        .zip(mask)
    {
        if m == 0.0 {
            continue;
        }
        for ((g, &s), &t) in g.iter_mut().zip(s).zip(t) {
            let d = s - t;
            loss += (m * d * d) as f64;
            *g = 2.0 * m * d / n;
        }
    }
    ((loss / kept) as f32, grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of `f` at `x`, in f64.
    fn numeric(f: impl Fn(&[f32]) -> f32, x: &[f32]) -> Vec<f32> {
        (0..x.len())
            .map(|i| {
                let h = 1e-2f32;
                let mut a = x.to_vec();
                let mut b = x.to_vec();
                a[i] += h;
                b[i] -= h;
                ((f(&a) as f64 - f(&b) as f64) / (2.0 * h as f64)) as f32
            })
            .collect()
    }

    #[test]
    fn gradients_match_finite_differences() {
        let x = [0.3f32, -1.2, 2.0, 0.1, 0.5, -0.4];
        let t = [1.0f32, 0.2, -0.3, 0.0, 2.0, 0.7];
        let (_, g, right) = cross_entropy(&x, 3, &[2, 1]).unwrap();
        assert_eq!(right, 2);
        let n = numeric(|v| cross_entropy(v, 3, &[2, 1]).unwrap().0, &x);
        for (a, b) in g.iter().zip(&n) {
            assert!((a - b).abs() < 1e-3, "{g:?} vs {n:?}");
        }
        let (l0, _) = distill_kl(&t, &t, 3, 4.0);
        assert!(l0.abs() < 1e-6);
        let (_, g) = distill_kl(&x, &t, 3, 4.0);
        let n = numeric(|v| distill_kl(v, &t, 3, 4.0).0, &x);
        for (a, b) in g.iter().zip(&n) {
            assert!((a - b).abs() < 1e-3, "{g:?} vs {n:?}");
        }
        let (_, g) = mse(&x, &t);
        let n = numeric(|v| mse(v, &t).0, &x);
        for (a, b) in g.iter().zip(&n) {
            assert!((a - b).abs() < 1e-3, "{g:?} vs {n:?}");
        }
        // Masked: 3 rows of 2; the middle row is padding.
        let m = [1.0f32, 0.0, 1.0];
        let (l, g) = masked_mse(&x, &t, &m);
        let n = numeric(|v| masked_mse(v, &t, &m).0, &x);
        for (a, b) in g.iter().zip(&n) {
            assert!((a - b).abs() < 1e-3, "{g:?} vs {n:?}");
        }
        assert_eq!(&g[2..4], &[0.0, 0.0]);
        // The mean is over the kept rows only: equal to the plain MSE of
        // those rows.
        let kept: Vec<f32> = [&x[..2], &x[4..]].concat();
        let kept_t: Vec<f32> = [&t[..2], &t[4..]].concat();
        assert!((l - mse(&kept, &kept_t).0).abs() < 1e-6);
        assert_eq!(masked_mse(&x, &t, &[0.0; 3]).0, 0.0);
        assert!(cross_entropy(&x, 3, &[5, 0]).is_err());
    }
}
