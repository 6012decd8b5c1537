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
    check_at(node, inputs, wrt, 17)
}

/// [`check`] at a given opset; every float output enters the loss.
fn check_at(node: Node, inputs: Vec<Tensor>, wrt: &[usize], opset: i64) {
    let op = crate::ops::build(&node, opset).unwrap().unwrap();
    let run = |ins: &[Tensor]| {
        let args: Vec<Option<&Tensor>> = ins.iter().map(Some).collect();
        op.eval(&args).unwrap()
    };
    let out = run(&inputs);
    let mut rng = Rng::new(99);
    let r: Vec<Vec<f64>> = out
        .iter()
        .map(|o| (0..o.len()).map(|_| rng.next_f64() * 2.0 - 1.0).collect())
        .collect();
    let loss = |ins: &[Tensor]| -> f64 {
        run(ins)
            .iter()
            .zip(&r)
            .filter(|(y, _)| y.dtype() == DType::F32)
            .map(|(y, r)| {
                y.f32s()
                    .unwrap()
                    .iter()
                    .zip(r)
                    .map(|(&y, &r)| y as f64 * r)
                    .sum::<f64>()
            })
            .sum()
    };
    let dys: Vec<Tensor> = out
        .iter()
        .zip(&r)
        .map(|(o, r)| Tensor::from_f32(o.shape().to_vec(), r.iter().map(|&v| v as f32).collect()))
        .collect();
    let args: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
    let outs: Vec<&Tensor> = out.iter().collect();
    let gout: Vec<Option<&Tensor>> = dys
        .iter()
        .zip(&out)
        .map(|(d, o)| (o.dtype() == DType::F32).then_some(d))
        .collect();
    let need = vec![true; inputs.len()];
    let site = grad::Site {
        node: &node,
        op: op.as_ref(),
        opset,
        need: &need,
    };
    let g = grad::backward(&site, &args, &outs, &gout).unwrap();
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
    // Plain, strided + padded, grouped, depthwise (strided, padded,
    // unpadded), pointwise.
    for (group, cin, cout, k, s, p) in [
        (1, 3, 4, 3, 1, 1),
        (1, 2, 3, 3, 2, 1),
        (2, 4, 6, 3, 1, 0),
        (4, 4, 4, 3, 2, 1),
        (4, 4, 4, 3, 1, 1),
        (3, 3, 3, 3, 1, 0),
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
    // ConvTranspose: plain, strided with padding and output padding, grouped.
    for (group, cin, cout, k, s, p, op) in [
        (1, 3, 2, 3, 1, 1, 0),
        (1, 2, 3, 3, 2, 1, 1),
        (2, 4, 2, 2, 2, 0, 0),
    ] {
        check(
            node(
                "ConvTranspose",
                3,
                vec![
                    Attribute::new("group", AttrValue::Int(group)),
                    ints("kernel_shape", &[k, k]),
                    ints("strides", &[s, s]),
                    ints("pads", &[p, p, p, p]),
                    ints("output_padding", &[op, op]),
                ],
            ),
            vec![
                rand(&mut rng, &[2, cin, 4, 3]),
                rand(
                    &mut rng,
                    &[cin, cout / group as usize, k as usize, k as usize],
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
    // Odd sizes: the last row and column belong to no window.
    check(
        node(
            "MaxPool",
            1,
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        ),
        vec![spaced(&mut rng, &[1, 2, 5, 7])],
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

fn attr_i(name: &str, v: i64) -> Attribute {
    Attribute::new(name, AttrValue::Int(v))
}

fn attr_f(name: &str, v: f32) -> Attribute {
    Attribute::new(name, AttrValue::Float(v))
}

fn shifted(mut t: Tensor, by: f32) -> Tensor {
    t.f32s_mut().unwrap().iter_mut().for_each(|v| *v += by);
    t
}

fn positive(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let mut t = rand(rng, shape);
    t.f32s_mut()
        .unwrap()
        .iter_mut()
        .for_each(|v| *v = v.abs() + 0.5);
    t
}

#[test]
fn transformer_ops() {
    let mut rng = Rng::new(6);
    for op in ["Erf", "Exp", "Neg", "Abs"] {
        check(node(op, 1, vec![]), vec![rand(&mut rng, &[2, 3, 4])], &[0]);
    }
    for op in ["Sqrt", "Log"] {
        check(node(op, 1, vec![]), vec![positive(&mut rng, &[3, 4])], &[0]);
    }
    for approx in ["none", "tanh"] {
        check(
            node(
                "Gelu",
                1,
                vec![Attribute::new(
                    "approximate",
                    AttrValue::String(approx.into()),
                )],
            ),
            vec![rand(&mut rng, &[2, 7])],
            &[0],
        );
    }
    check(
        node("HardSigmoid", 1, vec![attr_f("alpha", 0.3)]),
        vec![rand(&mut rng, &[3, 5])],
        &[0],
    );
    let mut hs = rand(&mut rng, &[4, 6]);
    hs.f32s_mut().unwrap().iter_mut().for_each(|v| *v *= 5.0);
    check(node("HardSwish", 1, vec![]), vec![hs], &[0]);
    // LayerNormalization over the last axis, and over the last two.
    for (axis, shape, sshape) in [
        (-1i64, vec![2, 3, 5], vec![5]),
        (1, vec![2, 3, 4], vec![3, 4]),
    ] {
        check(
            node("LayerNormalization", 3, vec![attr_i("axis", axis)]),
            vec![
                rand(&mut rng, &shape),
                rand(&mut rng, &sshape),
                rand(&mut rng, &sshape),
            ],
            &[0, 1, 2],
        );
    }
    // Batched MatMul with broadcast batch axes (heads shared).
    check(
        node("MatMul", 2, vec![]),
        vec![rand(&mut rng, &[2, 3, 4, 5]), rand(&mut rng, &[1, 3, 5, 2])],
        &[0, 1],
    );
    check(
        node("MatMul", 2, vec![]),
        vec![rand(&mut rng, &[3, 4]), rand(&mut rng, &[2, 4, 3])],
        &[0, 1],
    );
    // Embedding lookup with a repeated and a negative index.
    check(
        node("Gather", 2, vec![]),
        vec![
            rand(&mut rng, &[6, 4]),
            Tensor::from_i64(vec![2, 3], vec![0, 2, 2, -1, 3, 0]),
        ],
        &[0],
    );
    check(
        node("Gather", 2, vec![attr_i("axis", 1)]),
        vec![
            rand(&mut rng, &[2, 5, 3]),
            Tensor::from_i64(vec![2], vec![4, 1]),
        ],
        &[0],
    );
    check(
        node("LogSoftmax", 1, vec![attr_i("axis", 1)]),
        vec![rand(&mut rng, &[2, 5, 3])],
        &[0],
    );
    // Opset 11 Softmax flattens everything from the axis on.
    check_at(
        node("Softmax", 1, vec![attr_i("axis", 1)]),
        vec![rand(&mut rng, &[2, 3, 4])],
        &[0],
        11,
    );
    check(
        node("Pow", 2, vec![]),
        vec![positive(&mut rng, &[2, 3]), rand(&mut rng, &[3])],
        &[0, 1],
    );
    check(
        node("PRelu", 2, vec![]),
        vec![rand(&mut rng, &[2, 3, 4]), rand(&mut rng, &[3, 1])],
        &[0, 1],
    );
    for op in ["Max", "Min"] {
        check(
            node(op, 3, vec![]),
            // Offsets keep the three grids apart (no ties within a step).
            vec![
                spaced(&mut rng, &[2, 3]),
                shifted(spaced(&mut rng, &[3]), 0.017),
                shifted(spaced(&mut rng, &[2, 1]), 0.033),
            ],
            &[0, 1, 2],
        );
    }
    let cond = Tensor::from_bool(vec![2, 1, 3], vec![true, false, true, false, false, true]);
    check(
        node("Where", 3, vec![]),
        vec![cond, rand(&mut rng, &[2, 4, 3]), rand(&mut rng, &[4, 1])],
        &[1, 2],
    );
    let cast_to_float = Attribute::new("to", AttrValue::Int(1));
    check(
        node("Cast", 1, vec![cast_to_float]),
        vec![rand(&mut rng, &[3, 2])],
        &[0],
    );
}

#[test]
fn detector_and_layout_ops() {
    let mut rng = Rng::new(7);
    // Split into unequal parts; all outputs enter the loss.
    let split = |n_out: usize, attrs: Vec<Attribute>| {
        let outs: Vec<String> = (0..n_out).map(|i| format!("y{i}")).collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        Node::new("n", "Split", &["x0", "x1"], &refs, attrs)
    };
    check(
        split(3, vec![attr_i("axis", 1)]),
        vec![
            rand(&mut rng, &[2, 6, 2]),
            Tensor::from_i64(vec![3], vec![1, 3, 2]),
        ],
        &[0],
    );
    // Slice with a negative step and a clamped end.
    check(
        node("Slice", 5, vec![]),
        vec![
            rand(&mut rng, &[3, 8]),
            Tensor::from_i64(vec![2], vec![1, 6]),
            Tensor::from_i64(vec![2], vec![100, 0]),
            Tensor::from_i64(vec![2], vec![0, 1]),
            Tensor::from_i64(vec![2], vec![1, -2]),
        ],
        &[0],
    );
    check(
        node("Expand", 2, vec![]),
        vec![
            rand(&mut rng, &[3, 1]),
            Tensor::from_i64(vec![3], vec![2, 3, 4]),
        ],
        &[0],
    );
    // Nearest upsampling by 2 (YOLO necks), sizes and scales forms.
    let nearest = Attribute::new("mode", AttrValue::String("nearest".into()));
    let empty = Tensor::from_f32(vec![0], vec![]);
    check(
        node("Resize", 3, vec![nearest.clone()]),
        vec![
            rand(&mut rng, &[1, 2, 3, 3]),
            empty,
            Tensor::from_f32(vec![4], vec![1.0, 1.0, 2.0, 2.0]),
        ],
        &[0],
    );
    check(
        node("Resize", 4, vec![nearest]),
        vec![
            rand(&mut rng, &[1, 2, 4, 4]),
            Tensor::from_f32(vec![0], vec![]),
            Tensor::from_f32(vec![0], vec![]),
            Tensor::from_i64(vec![4], vec![1, 2, 6, 3]),
        ],
        &[0],
    );
    // Linear Resize: up and down, in several coordinate modes, with
    // scales and with sizes.
    let linear = Attribute::new("mode", AttrValue::String("linear".into()));
    for (coord, scales) in [
        ("half_pixel", [1.0, 1.0, 2.0, 2.0]),
        ("align_corners", [1.0, 1.0, 2.0, 1.5]),
        ("asymmetric", [1.0, 1.0, 0.5, 2.0]),
        ("pytorch_half_pixel", [1.0, 1.0, 1.5, 0.75]),
    ] {
        check(
            node(
                "Resize",
                3,
                vec![
                    linear.clone(),
                    Attribute::new(
                        "coordinate_transformation_mode",
                        AttrValue::String(coord.into()),
                    ),
                ],
            ),
            vec![
                rand(&mut rng, &[1, 2, 4, 4]),
                Tensor::from_f32(vec![0], vec![]),
                Tensor::from_f32(vec![4], scales.to_vec()),
            ],
            &[0],
        );
    }
    check(
        node("Resize", 4, vec![linear]),
        vec![
            rand(&mut rng, &[2, 1, 3, 5]),
            Tensor::from_f32(vec![0], vec![]),
            Tensor::from_f32(vec![0], vec![]),
            Tensor::from_i64(vec![4], vec![2, 1, 7, 2]),
        ],
        &[0],
    );
    for mode in ["constant", "reflect", "edge"] {
        check(
            node(
                "Pad",
                2,
                vec![Attribute::new("mode", AttrValue::String(mode.into()))],
            ),
            vec![
                rand(&mut rng, &[1, 2, 4, 5]),
                Tensor::from_i64(vec![8], vec![0, 0, 1, 2, 0, 0, 2, 1]),
            ],
            &[0],
        );
    }
    for (op, keep) in [("ReduceMean", 1), ("ReduceSum", 0), ("ReduceMax", 0)] {
        check_at(
            node(op, 2, vec![attr_i("keepdims", keep)]),
            vec![
                spaced(&mut rng, &[2, 3, 4]),
                Tensor::from_i64(vec![2], vec![1, -1]),
            ],
            &[0],
            18,
        );
    }
    // Opset 13 ReduceMean: axes as an attribute.
    check_at(
        node(
            "ReduceMean",
            1,
            vec![ints("axes", &[2, 3]), attr_i("keepdims", 0)],
        ),
        vec![rand(&mut rng, &[2, 3, 2, 2])],
        &[0],
        13,
    );
    check(
        node("GlobalMaxPool", 1, vec![]),
        vec![spaced(&mut rng, &[2, 3, 3, 3])],
        &[0],
    );
}

#[test]
fn batch_norm_in_training_mode() {
    // Finite differences of training-mode BN through bn_train/bn_backward,
    // alone and with a fused Relu and Clip.
    for clamp in [None, Some((0.0, f32::INFINITY)), Some((-0.5, 0.7))] {
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
            let (y, _, _) = bn_train(
                &[Some(x), Some(s), Some(b)],
                &mut state(),
                BnMode::Train,
                clamp,
            )
            .unwrap();
            y.f32s()
                .unwrap()
                .iter()
                .zip(&r)
                .map(|(&y, r)| y as f64 * r)
                .sum()
        };
        let mut st = state();
        let (y, mean, invstd) = bn_train(
            &[Some(&x), Some(&scale), Some(&bias)],
            &mut st,
            BnMode::Train,
            clamp,
        )
        .unwrap();
        // Running statistics moved from (0, 1) toward the batch's.
        assert!(st.mean.iter().all(|&m| m != 0.0));
        let yv = y.f32s().unwrap();
        if let Some((lo, hi)) = clamp {
            assert!(yv.iter().all(|&v| v >= lo && v <= hi));
            // Some values are clamped and some pass: both sides are tested.
            assert!(yv.contains(&lo) && yv.iter().any(|&v| v > lo && v < hi));
        }
        let dy = Tensor::from_f32(x.shape().to_vec(), r.iter().map(|&v| v as f32).collect());
        let g = bn_backward(
            &[Some(&x), Some(&scale), Some(&bias), None, None],
            Some(&dy),
            &mean,
            &invstd,
            clamp.map(|b| (yv, b)),
        )
        .unwrap();
        let ins = [x, scale, bias];
        for i in 0..3 {
            let an = g[i].as_ref().unwrap().f32s().unwrap().to_vec();
            for (k, &ak) in an.iter().enumerate() {
                let h = 1e-3f32;
                let (mut a, mut b) = (ins.clone(), ins.clone());
                a[i].f32s_mut().unwrap()[k] += h;
                b[i].f32s_mut().unwrap()[k] -= h;
                let num =
                    (loss(&a[0], &a[1], &a[2]) - loss(&b[0], &b[1], &b[2])) / (2.0 * h as f64);
                assert!(
                    (ak as f64 - num).abs() < 2e-2 * (1.0 + num.abs()),
                    "BN ({clamp:?}) input {i}[{k}]: {ak} vs {num}"
                );
            }
        }
    }
}

/// An input's declared shape, symbolic dimensions set to 2.
fn shape_of(spec: &crate::exec::InputSpec) -> Vec<usize> {
    spec.shape
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| match d {
            Dim::Known(n) => *n,
            _ => 2,
        })
        .collect()
}

/// Training-mode BatchNormalization fused with the Relu / Clip after it
/// gives the same outputs and gradients as the two ops run apart.
#[test]
fn fused_bn_activation_matches_separate_ops() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/");
    for (name, fused_at_least) in [("mnist_cnn", 4), ("mobilenetv2_mini", 10)] {
        let m = crate::onnx::load(std::path::Path::new(&format!("{dir}{name}.onnx"))).unwrap();
        let run = |fuse: bool| {
            let mut t = Trainable::new(&m, &m).unwrap();
            if !fuse {
                t.fused.fill(None);
            }
            let n_fused = t
                .fused
                .iter()
                .filter(|f| matches!(f, Some(Fusion::Bn { .. })))
                .count();
            let spec = &t.exec.inputs()[0];
            let feeds = vec![(spec.name.clone(), rand(&mut Rng::new(4), &shape_of(spec)))];
            let (outs, tape) = t.forward(&feeds, BnMode::Train, &mut Rng::new(0)).unwrap();
            let ran_fused = tape.fused;
            let gouts = vec![Some(outs[0].clone())];
            let grads = t.backward(&tape, gouts, vec![]).unwrap();
            (n_fused, ran_fused, outs[0].f32s().unwrap().to_vec(), grads)
        };
        let (n, ran_fused, out_f, grads_f) = run(true);
        assert!(
            n >= fused_at_least && ran_fused,
            "{name}: {n} fused pairs, run fused: {ran_fused}"
        );
        let (n0, _, out_s, grads_s) = run(false);
        assert_eq!(n0, 0);
        assert_eq!(out_f, out_s, "{name}: outputs");
        for (a, b) in grads_f.iter().zip(&grads_s) {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                    "{name}: {x} vs {y}"
                );
            }
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

/// Whole-graph finite differences: the gradient of `Σ r · output` with
/// respect to the largest-gradient entries of several parameters, through
/// every rule each real exported graph uses (embeddings, LayerNorm, GELU,
/// attention; C2f / SPPF / DFL detector heads; ReduceMean pooling).
#[test]
fn whole_graph_gradients_of_exported_models() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/");
    for name in [
        "transformer_mini",
        "transformer_mini_dynamo",
        "yolov8_mini",
        "yolov8_mini_dynamo",
        "resnet_mini_dynamo",
        "mobilenetv2_mini_dynamo",
    ] {
        let m = crate::onnx::load(std::path::Path::new(&format!("{dir}{name}.onnx"))).unwrap();
        let mut t = Trainable::new(&m, &m).unwrap();
        let mut rng = Rng::new(11);
        let feeds: Vec<(String, Tensor)> = t
            .exec
            .inputs()
            .iter()
            .filter(|s| !t.params.iter().any(|p| p.name == s.name))
            .map(|s| {
                let shape = shape_of(s);
                let n: usize = shape.iter().product();
                let v = if s.dtype == DType::I64 {
                    Tensor::from_i64(shape, (0..n).map(|i| (i * 7 % 50) as i64).collect())
                } else {
                    rand(&mut rng, &shape)
                };
                (s.name.clone(), v)
            })
            .collect();
        let run = |t: &mut Trainable| t.forward(&feeds, BnMode::Frozen, &mut Rng::new(0)).unwrap();
        let (outs, tape) = run(&mut t);
        let r: Vec<f32> = (0..outs[0].len())
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        let loss = |o: &[Tensor]| -> f64 {
            o[0].f32s()
                .unwrap()
                .iter()
                .zip(&r)
                .map(|(&y, &r)| y as f64 * r as f64)
                .sum()
        };
        let mut gouts = vec![None; outs.len()];
        gouts[0] = Some(Tensor::from_f32(outs[0].shape().to_vec(), r.clone()));
        let grads = t.backward(&tape, gouts, vec![]).unwrap();
        drop(tape);
        let n_params = t.params.len();
        for pi in (0..n_params).step_by((n_params / 8).max(1)) {
            let g = &grads[pi];
            let mut order: Vec<usize> = (0..g.len()).collect();
            order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
            let gmax = g[order[0]].abs() as f64;
            for &k in order.iter().take(2) {
                // Small enough not to cross ReLU / Clip kinks near the point.
                let h = 3e-4f32;
                let v0 = t.params[pi].value.f32s().unwrap()[k];
                t.params[pi].value.f32s_mut().unwrap()[k] = v0 + h;
                let lp = loss(&run(&mut t).0);
                t.params[pi].value.f32s_mut().unwrap()[k] = v0 - h;
                let lm = loss(&run(&mut t).0);
                t.params[pi].value.f32s_mut().unwrap()[k] = v0;
                let num = (lp - lm) / (2.0 * h as f64);
                assert!(
                    (g[k] as f64 - num).abs() < 0.05 * num.abs() + 1e-3 * (1.0 + gmax),
                    "{name} {}[{k}]: analytic {} vs numeric {num}",
                    t.params[pi].name,
                    g[k]
                );
            }
        }
    }
}

#[test]
fn ops_without_a_rule_are_named() {
    // Every float op the executor runs has a rule; a path through any
    // other op (here a comparison, asked for a gradient anyway) fails
    // with the op named.
    let mut rng = Rng::new(8);
    let n = node("Greater", 2, vec![]);
    let ins = [rand(&mut rng, &[2, 2]), rand(&mut rng, &[2, 2])];
    let op = crate::ops::build(&n, 17).unwrap().unwrap();
    let args: Vec<Option<&Tensor>> = ins.iter().map(Some).collect();
    let out = op.eval(&args).unwrap();
    let need = vec![true; ins.len()];
    let site = grad::Site {
        node: &n,
        op: op.as_ref(),
        opset: 17,
        need: &need,
    };
    let dy = rand(&mut rng, &[2, 2]);
    let e = grad::backward(&site, &args, &[&out[0]], &[Some(&dy)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Greater") && e.contains("no gradient for"),
        "{e}"
    );
}

#[test]
fn loss_masks_come_from_the_named_or_usual_input() {
    let mask = Tensor::from_i64(vec![2, 3], vec![1, 1, 0, 1, 0, 0]);
    let ids = Tensor::from_i64(vec![2, 3], vec![5, 6, 0, 7, 0, 0]);
    let feeds = vec![
        ("input_ids".to_string(), ids),
        ("attention_mask".to_string(), mask),
    ];
    // Named, or found under its usual name.
    for name in [Some("attention_mask"), None] {
        let m = loss_mask_of(&feeds, name).unwrap().unwrap();
        assert_eq!(m.shape(), &[2, 3]);
        assert_eq!(m.f32s().unwrap(), &[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    }
    // Any non-zero keeps a position under an explicit name.
    let m = loss_mask_of(&feeds, Some("input_ids")).unwrap().unwrap();
    assert_eq!(m.f32s().unwrap(), &[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    // A missing name is an error that names it.
    let e = loss_mask_of(&feeds, Some("token_mask"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("token_mask"), "{e}");
    // An additive mask (0 keeps, -10000 masks) is not taken by default.
    let additive = vec![(
        "attention_mask".to_string(),
        Tensor::from_f32(vec![1, 3], vec![0.0, 0.0, -10000.0]),
    )];
    assert!(loss_mask_of(&additive, None).unwrap().is_none());
    // Masked MSE applies to [batch, seq, ...] outputs only.
    let m = Tensor::from_f32(vec![1, 2], vec![1.0, 0.0]);
    let s = Tensor::from_f32(vec![1, 2, 2], vec![1.0, 1.0, 5.0, 5.0]);
    let t = [0.0f32; 4];
    let (l, g) = mse_under(&s, s.f32s().unwrap(), &t, Some(&m)).unwrap();
    assert_eq!((l, &g[2..]), (1.0, &[0.0, 0.0][..]));
    let pooled = Tensor::from_f32(vec![1, 4], vec![1.0, 1.0, 5.0, 5.0]);
    let (l, _) = mse_under(&pooled, pooled.f32s().unwrap(), &t, Some(&m)).unwrap();
    assert_eq!(l, 13.0);
}
