//! Finite-difference checks of every backward rule, and training checks.

use super::*;
use crate::ir::{AttrValue, Attribute, Node};

/// Random values in [-1, 1), kept away from kinks (|x| > 0.05) so that
/// finite differences of ReLU, Clip and MaxPool are well defined.
fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            let x = rng.next_f64() * 2.0 - 1.0;
            (if x.abs() < 0.05 {
                x.signum() * 0.05 + x
            } else {
                x
            }) as f32
        })
        .collect();
    Tensor::from_f32(shape.to_vec(), v)
}

/// Distinct values 0.05 apart, shuffled: no two inputs of a max are
/// within the finite-difference step of each other.
fn spaced(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - 1.0).collect();
    rng.shuffle(&mut v);
    Tensor::from_f32(shape.to_vec(), v)
}

fn ints(name: &str, v: &[i64]) -> Attribute {
    Attribute::new(name, AttrValue::Ints(v.to_vec()))
}

/// Checks the backward rule of `node` at `inputs` against central
/// differences of `L = Σ r · y` (r random), evaluated in f64 from the
/// f32 forward. `wrt` lists the inputs to check.
fn check(node: Node, inputs: Vec<Tensor>, wrt: &[usize]) {
    let op = crate::ops::build(&node, 17).unwrap().unwrap();
    let run = |ins: &[Tensor]| {
        let args: Vec<Option<&Tensor>> = ins.iter().map(Some).collect();
        op.eval(&args).unwrap()
    };
    let out = run(&inputs);
    let mut rng = Rng::new(99);
    let r: Vec<f64> = (0..out[0].len())
        .map(|_| rng.next_f64() * 2.0 - 1.0)
        .collect();
    let loss = |ins: &[Tensor]| -> f64 {
        run(ins)[0]
            .f32s()
            .unwrap()
            .iter()
            .zip(&r)
            .map(|(&y, &r)| y as f64 * r)
            .sum()
    };
    let dy = Tensor::from_f32(
        out[0].shape().to_vec(),
        r.iter().map(|&v| v as f32).collect(),
    );
    let args: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
    let outs: Vec<&Tensor> = out.iter().collect();
    let g = grad::backward(&node, &args, &outs, &[Some(&dy)]).unwrap();
    for &i in wrt {
        let gi = g[i]
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no gradient for input {i}", node.op_type));
        assert_eq!(gi.shape(), inputs[i].shape());
        let an = gi.f32s().unwrap();
        let n = inputs[i].len();
        // Check up to 40 entries spread over the tensor.
        let step = (n / 40).max(1);
        for k in (0..n).step_by(step) {
            let h = 1e-2f32;
            let mut a = inputs.clone();
            let mut b = inputs.clone();
            a[i].f32s_mut().unwrap()[k] += h;
            b[i].f32s_mut().unwrap()[k] -= h;
            let num = (loss(&a) - loss(&b)) / (2.0 * h as f64);
            let tol = 2e-2 * (1.0 + num.abs());
            assert!(
                (an[k] as f64 - num).abs() < tol,
                "{} input {i}[{k}]: analytic {} vs numeric {num}",
                node.op_type,
                an[k]
            );
        }
    }
}

fn node(op: &str, n_in: usize, attrs: Vec<Attribute>) -> Node {
    let names: Vec<String> = (0..n_in).map(|i| format!("x{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    Node::new("n", op, &refs, &["y"], attrs)
}

#[test]
fn elementwise_and_shape_ops() {
    let mut rng = Rng::new(1);
    for op in ["Relu", "Sigmoid", "Tanh", "Identity"] {
        check(node(op, 1, vec![]), vec![rand(&mut rng, &[2, 3, 4])], &[0]);
    }
    check(
        node(
            "LeakyRelu",
            1,
            vec![Attribute::new("alpha", AttrValue::Float(0.1))],
        ),
        vec![rand(&mut rng, &[2, 5])],
        &[0],
    );
    let lo = Tensor::from_f32(vec![], vec![-0.5]);
    let hi = Tensor::from_f32(vec![], vec![0.5]);
    check(
        node("Clip", 3, vec![]),
        vec![rand(&mut rng, &[3, 4]), lo, hi],
        &[0],
    );
    check(
        node(
            "Softmax",
            1,
            vec![Attribute::new("axis", AttrValue::Int(1))],
        ),
        vec![rand(&mut rng, &[2, 5, 3])],
        &[0],
    );
    check(
        node(
            "Flatten",
            1,
            vec![Attribute::new("axis", AttrValue::Int(1))],
        ),
        vec![rand(&mut rng, &[2, 3, 2, 2])],
        &[0],
    );
    check(
        node("Reshape", 2, vec![]),
        vec![
            rand(&mut rng, &[2, 6]),
            Tensor::from_i64(vec![3], vec![2, 3, 2]),
        ],
        &[0],
    );
    check(
        node("Transpose", 1, vec![ints("perm", &[0, 2, 1, 3])]),
        vec![rand(&mut rng, &[2, 3, 4, 2])],
        &[0],
    );
    check(
        node("Concat", 2, vec![Attribute::new("axis", AttrValue::Int(1))]),
        vec![rand(&mut rng, &[2, 3, 2]), rand(&mut rng, &[2, 1, 2])],
        &[0, 1],
    );
    check(
        node("Squeeze", 2, vec![]),
        vec![
            rand(&mut rng, &[2, 1, 3]),
            Tensor::from_i64(vec![1], vec![1]),
        ],
        &[0],
    );
    check(
        node("Unsqueeze", 2, vec![]),
        vec![rand(&mut rng, &[2, 3]), Tensor::from_i64(vec![1], vec![0])],
        &[0],
    );
}

#[test]
fn broadcasting_binary_ops() {
    let mut rng = Rng::new(2);
    for op in ["Add", "Sub", "Mul"] {
        check(
            node(op, 2, vec![]),
            vec![rand(&mut rng, &[2, 3, 4]), rand(&mut rng, &[3, 1])],
            &[0, 1],
        );
    }
    let mut b = rand(&mut rng, &[4]);
    b.f32s_mut()
        .unwrap()
        .iter_mut()
        .for_each(|v| *v = v.abs() + 0.5);
    check(
        node("Div", 2, vec![]),
        vec![rand(&mut rng, &[2, 4]), b],
        &[0, 1],
    );
}

#[test]
fn products() {
    let mut rng = Rng::new(3);
    check(
        node("MatMul", 2, vec![]),
        vec![rand(&mut rng, &[2, 3, 4]), rand(&mut rng, &[4, 5])],
        &[0, 1],
    );
    check(
        node("MatMul", 2, vec![]),
        vec![rand(&mut rng, &[2, 3, 4]), rand(&mut rng, &[2, 4, 2])],
        &[0, 1],
    );
    for (ta, tb) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let a = if ta == 1 { [4, 3] } else { [3, 4] };
        let b = if tb == 1 { [5, 4] } else { [4, 5] };
        check(
            node(
                "Gemm",
                3,
                vec![
                    Attribute::new("transA", AttrValue::Int(ta)),
                    Attribute::new("transB", AttrValue::Int(tb)),
                    Attribute::new("alpha", AttrValue::Float(0.7)),
                    Attribute::new("beta", AttrValue::Float(1.3)),
                ],
            ),
            vec![rand(&mut rng, &a), rand(&mut rng, &b), rand(&mut rng, &[5])],
            &[0, 1, 2],
        );
    }
}

#[test]
fn convolutions_and_pools() {
    let mut rng = Rng::new(4);
    // Plain, strided + padded, grouped, depthwise, pointwise.
    for (group, cin, cout, k, s, p) in [
        (1, 3, 4, 3, 1, 1),
        (1, 2, 3, 3, 2, 1),
        (2, 4, 6, 3, 1, 0),
        (4, 4, 4, 3, 2, 1),
        (1, 5, 3, 1, 1, 0),
    ] {
        check(
            node(
                "Conv",
                3,
                vec![
                    Attribute::new("group", AttrValue::Int(group)),
                    ints("kernel_shape", &[k, k]),
                    ints("strides", &[s, s]),
                    ints("pads", &[p, p, p, p]),
                ],
            ),
            vec![
                rand(&mut rng, &[2, cin, 6, 5]),
                rand(
                    &mut rng,
                    &[cout, cin / group as usize, k as usize, k as usize],
                ),
                rand(&mut rng, &[cout]),
            ],
            &[0, 1, 2],
        );
    }
    check(
        node(
            "MaxPool",
            1,
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        ),
        vec![spaced(&mut rng, &[2, 3, 4, 6])],
        &[0],
    );
    check(
        node(
            "MaxPool",
            1,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        vec![spaced(&mut rng, &[1, 2, 5, 5])],
        &[0],
    );
    check(
        node(
            "AveragePool",
            1,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[1, 1]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        vec![rand(&mut rng, &[1, 2, 4, 4])],
        &[0],
    );
    check(
        node("GlobalAveragePool", 1, vec![]),
        vec![rand(&mut rng, &[2, 3, 4, 4])],
        &[0],
    );
}

#[test]
fn batch_norm_in_training_mode() {
    // Finite differences of training-mode BN through bn_train/bn_backward.
    let mut rng = Rng::new(5);
    let x = rand(&mut rng, &[3, 2, 2, 2]);
    let scale = rand(&mut rng, &[2]);
    let bias = rand(&mut rng, &[2]);
    let r: Vec<f64> = (0..x.len()).map(|_| rng.next_f64() - 0.5).collect();
    let state = || BnState {
        eps: 1e-5,
        momentum: 0.9,
        mean_name: String::new(),
        var_name: String::new(),
        mean: vec![0.0; 2],
        var: vec![1.0; 2],
        seen: 0,
    };
    let loss = |x: &Tensor, s: &Tensor, b: &Tensor| -> f64 {
        let (y, _, _) =
            bn_train(&[Some(x), Some(s), Some(b)], &mut state(), BnMode::Train).unwrap();
        y.f32s()
            .unwrap()
            .iter()
            .zip(&r)
            .map(|(&y, r)| y as f64 * r)
            .sum()
    };
    let mut st = state();
    let (_, mean, invstd) = bn_train(
        &[Some(&x), Some(&scale), Some(&bias)],
        &mut st,
        BnMode::Train,
    )
    .unwrap();
    // Running statistics moved from (0, 1) toward the batch's.
    assert!(st.mean.iter().all(|&m| m != 0.0));
    let dy = Tensor::from_f32(x.shape().to_vec(), r.iter().map(|&v| v as f32).collect());
    let g = bn_backward(
        &[Some(&x), Some(&scale), Some(&bias), None, None],
        Some(&dy),
        &mean,
        &invstd,
    )
    .unwrap();
    let ins = [x, scale, bias];
    for i in 0..3 {
        let an = g[i].as_ref().unwrap().f32s().unwrap().to_vec();
        for (k, &ak) in an.iter().enumerate() {
            let h = 1e-2f32;
            let (mut a, mut b) = (ins.clone(), ins.clone());
            a[i].f32s_mut().unwrap()[k] += h;
            b[i].f32s_mut().unwrap()[k] -= h;
            let num = (loss(&a[0], &a[1], &a[2]) - loss(&b[0], &b[1], &b[2])) / (2.0 * h as f64);
            assert!(
                (ak as f64 - num).abs() < 2e-2 * (1.0 + num.abs()),
                "BN input {i}[{k}]: {ak} vs {num}"
            );
        }
    }
}

#[test]
fn cubic_schedule() {
    let g = Gradual {
        sparsity: 0.9,
        initial: 0.0,
        pattern: crate::prune::unstructured::Pattern::Unstructured,
        start: 10,
        end: 50,
        every: 10,
    };
    assert_eq!(g.sparsity_at(5), None);
    assert_eq!(g.sparsity_at(10), Some(0.0));
    assert_eq!(g.sparsity_at(15), None);
    // s_t = 0.9 (1 − (1 − 1/4)³) at a quarter of the way.
    assert!((g.sparsity_at(20).unwrap() - 0.9 * (1.0 - 0.75f64.powi(3))).abs() < 1e-12);
    assert_eq!(g.sparsity_at(50), Some(0.9));
    assert_eq!(g.sparsity_at(60), None);
}
