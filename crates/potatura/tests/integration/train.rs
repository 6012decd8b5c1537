//! Recovery by training through the graph: masks hold exactly, distillation
//! brings a pruned model back toward its teacher (classifiers, encoders and
//! detectors), batch-1 exports train in batches, BatchNormalization
//! recalibration.

use potatura::data::Feeds;
use potatura::exec::Executor;
use potatura::importance::{Criterion, Reduce};
use potatura::ir::{resolve_input_shapes, Model, Tensor};
use potatura::prune::unstructured::{sparsify, Allocation, Method, Pattern, SparseOptions};
use potatura::prune::{Options, Select, Target};
use potatura::train::{recalibrate_bn, recover, RecoverOptions};

use super::common::{examples, fixtures};

fn mnist() -> (Model, Feeds, Tensor, Vec<i64>) {
    let m = potatura::onnx::load(&examples().join("mnist/mnist_cnn.onnx")).unwrap();
    let load = |f: &str| potatura::data::load_tensor(&examples().join("mnist").join(f)).unwrap();
    let train = Feeds::new(vec![(
        "input".into(),
        load("train-images-2k-idx3-ubyte.gz"),
    )])
    .unwrap();
    let test = potatura::eval::batches(&load("t10k-images-5k-idx3-ubyte.gz"), 1000)
        .unwrap()
        .remove(0);
    let labels = load("t10k-labels-5k-idx1-ubyte.gz").to_i64_vec()[..1000].to_vec();
    (m, train, test, labels)
}

/// Magnitude pruning options (layers with fewer than 32 inputs per output
/// stay dense).
fn magnitude(pattern: Pattern, sparsity: f64) -> SparseOptions {
    SparseOptions {
        method: Method::Magnitude,
        pattern,
        sparsity,
        allocation: Allocation::Uniform,
        per_row: false,
        overrides: Vec::new(),
        skip_first: false,
        skip_last: false,
        min_inputs: 32,
        seed: 0,
        calib_batch: 32,
        damp: 0.2,
        block: 128,
        token_mask: None,
        dense_target: true,
    }
}

fn accuracy(m: &Model, x: &Tensor, labels: &[i64]) -> f64 {
    let p = potatura::eval::predict(&Executor::new(m).unwrap(), x, 250).unwrap();
    potatura::eval::score(&p, Some(labels), None)
        .unwrap()
        .accuracy
        .unwrap()
}

fn zeros(m: &Model) -> Vec<(String, Vec<usize>)> {
    m.graph
        .initializers
        .iter()
        .map(|t| {
            let v = t.to_tensor().unwrap();
            let z = v
                .f32s()
                .map(|v| (0..v.len()).filter(|&i| v[i] == 0.0).collect())
                .unwrap_or_default();
            (t.name.clone(), z)
        })
        .collect()
}

#[test]
fn unstructured_masks_hold_exactly_through_training() {
    let (m, train, test, labels) = mnist();
    let inputs = resolve_input_shapes(&m, &[]).unwrap();
    let so = magnitude(Pattern::Unstructured, 0.7);
    let sparse = sparsify(&m, &inputs, &so, None).unwrap().model;
    let before = accuracy(&sparse, &test, &labels);
    let opts = RecoverOptions {
        steps: 24,
        ..RecoverOptions::default()
    };
    let mut losses = Vec::new();
    let out = recover(&sparse, Some(&m), &train, None, &opts, &mut |r| {
        losses.push(r.loss);
        true
    })
    .unwrap();
    // Exactly the same zeros, tensor by tensor.
    assert_eq!(zeros(&out), zeros(&sparse));
    let after = accuracy(&out, &test, &labels);
    assert!(after > before + 0.05, "{before} -> {after}");
    assert!(after > 0.95, "{after}");
    let head: f32 = losses[..4].iter().sum();
    let tail: f32 = losses[losses.len() - 4..].iter().sum();
    assert!(tail < head, "{losses:?}");
    // The same seed gives the same bytes; stopping early keeps the steps done.
    let again = recover(&sparse, Some(&m), &train, None, &opts, &mut |_| true).unwrap();
    assert_eq!(
        potatura::onnx::to_bytes(&again).unwrap(),
        potatura::onnx::to_bytes(&out).unwrap()
    );
    let mut n = 0;
    recover(&sparse, Some(&m), &train, None, &opts, &mut |_| {
        n += 1;
        n < 3
    })
    .unwrap();
    assert_eq!(n, 3);
    // A time budget far below 24 steps' cost ends the run early, with the
    // schedule fitted to the shorter run.
    let quick = RecoverOptions {
        max_seconds: Some(0.0),
        ..opts.clone()
    };
    let mut last = None;
    recover(&sparse, Some(&m), &train, None, &quick, &mut |r| {
        last = Some((r.step, r.total));
        true
    })
    .unwrap();
    let (step, total) = last.unwrap();
    assert_eq!(step, total);
    assert!((4..24).contains(&total), "{total}");
}

#[test]
fn labels_alone_train_and_structured_models_recover() {
    let (m, train, test, labels) = mnist();
    let inputs = resolve_input_shapes(&m, &[]).unwrap();
    let popts = Options {
        select: Select {
            target: Target::Macs(0.5),
            round_to: 8,
            max_layer_ratio: 0.9,
            ignore: Vec::new(),
            latency: None,
        },
        criterion: Criterion::L2,
        reduce: Reduce::Mean,
        steps: 1,
        seed: 0,
        calib_batch: 16,
    };
    let pruned = potatura::prune::structured(&m, &inputs, &popts, None)
        .unwrap()
        .model;
    let before = accuracy(&pruned, &test, &labels);
    let train_labels =
        potatura::data::load_tensor(&examples().join("mnist/train-labels-2k-idx1-ubyte.gz"))
            .unwrap()
            .to_i64_vec();
    let opts = RecoverOptions {
        steps: 24,
        ..RecoverOptions::default()
    };
    let mut accs = Vec::new();
    let out = recover(
        &pruned,
        None,
        &train,
        Some(&train_labels),
        &opts,
        &mut |r| {
            accs.push(r.accuracy.unwrap());
            true
        },
    )
    .unwrap();
    let after = accuracy(&out, &test, &labels);
    assert!(after > before.max(0.9), "{before} -> {after}");
    assert!(accs.last().unwrap() > accs.first().unwrap());
    // Nothing to learn from.
    let e = recover(&pruned, None, &train, None, &opts, &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("teacher") && e.contains("labels"), "{e}");
}

#[test]
fn batch_one_exports_train_in_batches_and_bn_recalibrates() {
    // mobilenetv2_mini: batch fixed at 1, BatchNormalization, Clip, depthwise.
    let m = potatura::onnx::load(&fixtures().join("mobilenetv2_mini.onnx")).unwrap();
    let mut rng = potatura::rng::Rng::new(3);
    let x = Tensor::from_f32(
        vec![32, 3, 64, 64],
        (0..32 * 3 * 64 * 64).map(|_| rng.normal() as f32).collect(),
    );
    let data = Feeds::new(vec![("input".into(), x.clone())]).unwrap();
    // The fixture's BN statistics are not those of this data: make the
    // teacher's match it first, as a trained model's match its data.
    let m = recalibrate_bn(&m, &data, 8).unwrap();
    let mut t = m.clone();
    // A perturbed student: noise on the classifier (BatchNormalization
    // would normalise a conv perturbation away in training mode).
    for init in t.graph.initializers.iter_mut() {
        let mut v = init.to_tensor().unwrap();
        if v.rank() == 2 {
            v.f32s_mut()
                .unwrap()
                .iter_mut()
                .for_each(|w| *w += 0.5 * rng.normal() as f32);
            init.set(&v).unwrap();
        }
    }
    // The distance distillation shrinks: KL from the teacher (KL does not
    // see a shift of all logits, so their relative error need not fall).
    let err = |s: &Model| {
        let a = potatura::eval::predict(&Executor::new(s).unwrap(), &x, 1).unwrap();
        let b = potatura::eval::predict(&Executor::new(&m).unwrap(), &x, 1).unwrap();
        potatura::eval::score(&a, None, Some(&b))
            .unwrap()
            .mean_kl
            .unwrap()
    };
    let opts = RecoverOptions {
        steps: 12,
        batch: 8,
        lr: 0.02,
        ..RecoverOptions::default()
    };
    let mut losses = Vec::new();
    let out = recover(&t, Some(&m), &data, None, &opts, &mut |r| {
        losses.push(r.loss);
        true
    })
    .unwrap();
    assert!(losses[11] < 0.5 * losses[0], "{losses:?}");
    assert_eq!(
        out.graph.inputs, m.graph.inputs,
        "the batch-1 interface is kept"
    );
    assert!(err(&out) < err(&t), "{} -> {}", err(&t), err(&out));
    // BN recalibration: the first BN's running mean becomes the mean of
    // its input over the data (equal batches average exactly).
    let bn = recalibrate_bn(&m, &data, 8).unwrap();
    let node = m
        .graph
        .nodes
        .iter()
        .find(|n| n.op_type == "BatchNormalization")
        .unwrap();
    let mut seen: Vec<f64> = Vec::new();
    let exec = Executor::new(&relaxed(&m, &data)).unwrap();
    exec.run_observed(data.0.clone(), &mut |name, t| {
        if name == node.inputs[0] {
            let (c, sp) = (t.shape()[1], t.shape()[2] * t.shape()[3]);
            let v = t.f32s().unwrap();
            seen = (0..c)
                .map(|ch| {
                    (0..t.shape()[0])
                        .flat_map(|b| &v[(b * c + ch) * sp..][..sp])
                        .map(|&x| x as f64)
                        .sum::<f64>()
                        / (t.shape()[0] * sp) as f64
                })
                .collect();
        }
    })
    .unwrap();
    let mean = bn
        .graph
        .initializer(&node.inputs[3])
        .unwrap()
        .to_tensor()
        .unwrap();
    for (a, b) in mean.f32s().unwrap().iter().zip(&seen) {
        assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// The model with its batch-1 input relaxed (for a whole-set reference run).
fn relaxed(m: &Model, data: &Feeds) -> Model {
    potatura::exec::relax_batch(m, data).unwrap()
}

/// Mean squared difference of the first outputs of two models.
fn output_mse(a: &Model, b: &Model, feeds: &[(String, Tensor)]) -> f64 {
    let run = |m: &Model| {
        let e = Executor::new(m).unwrap();
        let mut v = Vec::new();
        let n = feeds[0].1.shape()[0];
        for i in 0..n {
            let one: Vec<(String, Tensor)> = feeds
                .iter()
                .map(|(k, t)| (k.clone(), potatura::ops::layout::take(t, 0, &[i]).unwrap()))
                .collect();
            v.extend_from_slice(e.run(one).unwrap()[0].1.f32s().unwrap());
        }
        v
    };
    let (x, y) = (run(a), run(b));
    x.iter()
        .zip(&y)
        .map(|(p, q)| ((p - q) as f64).powi(2))
        .sum::<f64>()
        / x.len() as f64
}

#[test]
fn transformers_and_detectors_distill_with_masks_held() {
    // Batch-1 exports of a BERT-style encoder (embeddings, LayerNorm, GELU,
    // attention) and a YOLOv8-style detector (C2f, SPPF, DFL head): 50%
    // magnitude pruning, then label-free distillation (MSE on the outputs)
    // brings the outputs back toward the dense model's on held-out inputs.
    let mut rng = potatura::rng::Rng::new(3);
    let ids = |n: usize, rng: &mut potatura::rng::Rng| {
        Tensor::from_i64(
            vec![n, 16],
            (0..n * 16).map(|_| rng.below(50) as i64).collect(),
        )
    };
    let images = |n: usize, rng: &mut potatura::rng::Rng| {
        Tensor::from_f32(
            vec![n, 3, 64, 64],
            (0..n * 3 * 64 * 64)
                .map(|_| rng.next_f64() as f32)
                .collect(),
        )
    };
    // The detector trains with frozen BatchNormalization (its fixture's
    // running statistics do not describe these random images).
    for (name, input, train, held, steps, freeze_bn) in [
        (
            "transformer_mini",
            "input_ids",
            ids(64, &mut rng),
            ids(16, &mut rng),
            40,
            false,
        ),
        (
            "yolov8_mini",
            "images",
            images(32, &mut rng),
            images(4, &mut rng),
            12,
            true,
        ),
    ] {
        let m = potatura::onnx::load(&fixtures().join(format!("{name}.onnx"))).unwrap();
        let inputs = resolve_input_shapes(&m, &[]).unwrap();
        let sparse = sparsify(&m, &inputs, &magnitude(Pattern::Unstructured, 0.5), None)
            .unwrap()
            .model;
        let data = Feeds::new(vec![(input.into(), train)]).unwrap();
        let opts = RecoverOptions {
            steps,
            batch: 8,
            lr: 1e-3,
            optimizer: potatura::train::optim::OptimKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            freeze_bn,
            ..RecoverOptions::default()
        };
        let out = recover(&sparse, Some(&m), &data, None, &opts, &mut |_| true).unwrap();
        assert_eq!(zeros(&out), zeros(&sparse), "{name}");
        let held = vec![(input.to_string(), held)];
        let (before, after) = (output_mse(&sparse, &m, &held), output_mse(&out, &m, &held));
        assert!(
            after < 0.7 * before,
            "{name}: output MSE {before} -> {after}"
        );
    }
}

/// Zeros / elements of each Conv/Gemm weight with at least 32 inputs per row.
fn layer_sparsity(m: &Model) -> Vec<(String, usize, usize)> {
    m.graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "Conv" | "Gemm"))
        .filter_map(|n| {
            let t = m.graph.initializer(&n.inputs[1])?.to_tensor().ok()?;
            let per_row = t.len() / t.shape()[0];
            (per_row >= 32).then(|| {
                let v = t.f32s().unwrap();
                (
                    n.inputs[1].clone(),
                    v.iter().filter(|&&x| x == 0.0).count(),
                    v.len(),
                )
            })
        })
        .collect()
}

#[test]
fn gradual_pruning_reaches_its_sparsity_while_training() {
    use potatura::prune::unstructured::Pattern;
    use potatura::train::Gradual;
    let (m, train, test, labels) = mnist();
    let opts = RecoverOptions {
        steps: 30,
        gradual: Some(Gradual {
            sparsity: 0.8,
            initial: 0.0,
            pattern: Pattern::Unstructured,
            start: 0,
            end: 20,
            every: 4,
        }),
        ..RecoverOptions::default()
    };
    let out = recover(&m, Some(&m), &train, None, &opts, &mut |_| true).unwrap();
    let layers = layer_sparsity(&out);
    assert!(layers.len() >= 3);
    for (name, z, n) in &layers {
        assert_eq!(*z, (0.8 * *n as f64).floor() as usize, "{name}");
    }
    assert!(accuracy(&out, &test, &labels) > 0.9);
    // N:M: the kept count per group of 4 steps down to 2.
    let opts = RecoverOptions {
        steps: 8,
        gradual: Some(Gradual {
            sparsity: 0.5,
            initial: 0.0,
            pattern: Pattern::NM { n: 2, m: 4 },
            start: 0,
            end: 6,
            every: 2,
        }),
        ..RecoverOptions::default()
    };
    let out = recover(&m, Some(&m), &train, None, &opts, &mut |_| true).unwrap();
    for n in out.graph.nodes.iter().filter(|n| n.op_type == "Conv") {
        let w = out
            .graph
            .initializer(&n.inputs[1])
            .unwrap()
            .to_tensor()
            .unwrap();
        let sh = w.shape().to_vec();
        if sh[1] * sh[2] * sh[3] < 32 {
            continue;
        }
        let v = w.f32s().unwrap();
        let kpos = sh[2] * sh[3];
        for r in 0..sh[0] {
            for p in 0..kpos {
                for c0 in (0..sh[1]).step_by(4) {
                    let nz = (c0..c0 + 4)
                        .filter(|&c| v[(r * sh[1] + c) * kpos + p] != 0.0)
                        .count();
                    assert!(nz <= 2, "{}: row {r} pos {p} group {c0}", n.inputs[1]);
                }
            }
        }
    }
}

#[test]
fn snip_prunes_at_initialization_then_trains_from_scratch() {
    let (m, train, test, labels) = mnist();
    // The same architecture with fresh (Kaiming-normal) weights.
    let mut init = m.clone();
    let mut rng = potatura::rng::Rng::new(7);
    for t in init.graph.initializers.iter_mut() {
        let mut v = t.to_tensor().unwrap();
        if v.rank() >= 2 {
            let fan_in = (v.len() / v.shape()[0]) as f64;
            let std = (2.0 / fan_in).sqrt();
            v.f32s_mut()
                .unwrap()
                .iter_mut()
                .for_each(|w| *w = (rng.normal() * std) as f32);
            t.set(&v).unwrap();
        }
    }
    let train_labels =
        potatura::data::load_tensor(&examples().join("mnist/train-labels-2k-idx1-ubyte.gz"))
            .unwrap()
            .to_i64_vec();
    let opts = RecoverOptions {
        steps: 40,
        lr: 0.05,
        snip: Some(0.9),
        ..RecoverOptions::default()
    };
    let out = recover(&init, None, &train, Some(&train_labels), &opts, &mut |_| {
        true
    })
    .unwrap();
    let layers = layer_sparsity(&out);
    let (z, n) = layers
        .iter()
        .fold((0, 0), |(a, b), (_, z, n)| (a + z, b + n));
    // One global threshold: 90% of the prunable weights, whatever the layer.
    assert!((z as f64 / n as f64 - 0.9).abs() < 0.001, "{z}/{n}");
    // 40 steps from scratch (chance is 10%; measured 64% here, 79% dense).
    assert!(accuracy(&out, &test, &labels) > 0.5);
}

#[test]
fn an_interrupted_run_resumes_to_the_same_bytes() {
    use potatura::train::{recover_with, Checkpoint, Hooks};
    let (m, train, _, _) = mnist();
    let inputs = resolve_input_shapes(&m, &[]).unwrap();
    let so = magnitude(Pattern::NM { n: 2, m: 4 }, 0.0);
    let student = sparsify(&m, &inputs, &so, None).unwrap().model;
    let opts = RecoverOptions {
        steps: 10,
        batch: 32,
        optimizer: potatura::train::optim::OptimKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        lr: 1e-3,
        ..RecoverOptions::default()
    };
    let whole = recover(&student, Some(&m), &train, None, &opts, &mut |_| true).unwrap();
    // Stop after 4 steps ("Ctrl-C"): a checkpoint is written, through a file.
    let path = std::env::temp_dir().join(format!("potatura-ckpt-{}.ckpt", std::process::id()));
    let mut saved = 0;
    let mut save = |c: &Checkpoint| {
        saved += 1;
        c.save(&path)
    };
    let mut stop = |r: &potatura::train::StepReport| r.step < 4;
    recover_with(
        &student,
        Some(&m),
        &train,
        None,
        &opts,
        Hooks {
            on_step: &mut stop,
            checkpoint_every: 3,
            on_checkpoint: &mut save,
            resume: None,
        },
    )
    .unwrap();
    assert_eq!(saved, 2, "one at step 3, one on the stop at step 4");
    let ckpt = Checkpoint::load(&path).unwrap();
    assert_eq!(ckpt.step, 4);
    let mut none = |_: &Checkpoint| Ok(());
    let resumed = recover_with(
        &student,
        Some(&m),
        &train,
        None,
        &opts,
        Hooks {
            on_step: &mut |_| true,
            checkpoint_every: 0,
            on_checkpoint: &mut none,
            resume: Some(ckpt),
        },
    )
    .unwrap();
    assert_eq!(
        potatura::onnx::to_bytes(&resumed).unwrap(),
        potatura::onnx::to_bytes(&whole).unwrap()
    );
    // Not a checkpoint.
    std::fs::write(&path, b"nope").unwrap();
    assert!(Checkpoint::load(&path)
        .unwrap_err()
        .to_string()
        .contains("not a potatura checkpoint"));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn intermediate_features_are_distilled() {
    let (m, train, _, _) = mnist();
    // The last ReLU's output: the features before pooling.
    let feat = m
        .graph
        .nodes
        .iter()
        .rev()
        .find(|n| n.op_type == "Relu")
        .unwrap()
        .outputs[0]
        .clone();
    let mut student = m.clone();
    let mut rng = potatura::rng::Rng::new(9);
    for t in student.graph.initializers.iter_mut() {
        let mut v = t.to_tensor().unwrap();
        if v.rank() == 4 {
            v.f32s_mut()
                .unwrap()
                .iter_mut()
                .for_each(|w| *w *= 1.0 + 0.3 * rng.normal() as f32);
            t.set(&v).unwrap();
        }
    }
    let batch = train.take(64).unwrap();
    let feature_err = |s: &Model| {
        let grab = |model: &Model| {
            let mut out = None;
            Executor::new(model)
                .unwrap()
                .run_observed(batch.0.clone(), &mut |n, t| {
                    if n == feat {
                        out = Some(t.f32s().unwrap().to_vec());
                    }
                })
                .unwrap();
            out.unwrap()
        };
        let (a, b) = (grab(s), grab(&m));
        a.iter()
            .zip(&b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
    };
    let opts = RecoverOptions {
        steps: 12,
        features: vec![feat.clone()],
        ..RecoverOptions::default()
    };
    let out = recover(&student, Some(&m), &train, None, &opts, &mut |_| true).unwrap();
    assert!(feature_err(&out) < 0.7 * feature_err(&student));
    // A tensor the student does not compute; features without a teacher.
    let bad = RecoverOptions {
        features: vec!["nope".into()],
        ..opts.clone()
    };
    let e = recover(&student, Some(&m), &train, None, &bad, &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'nope'"), "{e}");
}
