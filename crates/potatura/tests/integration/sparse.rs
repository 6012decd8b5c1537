//! Unstructured and N:M sparsity: exact per-layer sparsity, N:M groups
//! checked one by one, allocation rules, and sparse models that still run
//! in tract.

use potatura::data::Feeds;
use potatura::ir::{resolve_input_shapes, Model, Tensor};
use potatura::prune::unstructured::{sparsify, Allocation, Method, Pattern, SparseOptions};

use super::common::{examples, fixtures, manifest};
use super::oracle::{feeds_for, rel_max_err, run_tract};

fn opts(method: Method, pattern: Pattern, sparsity: f64) -> SparseOptions {
    SparseOptions {
        method,
        pattern,
        sparsity,
        allocation: Allocation::Uniform,
        per_row: false,
        overrides: Vec::new(),
        skip_first: false,
        skip_last: false,
        min_inputs: 0,
        seed: 1,
        calib_batch: 8,
        damp: 0.01,
        block: 128,
        token_mask: None,
        dense_target: true,
    }
}

fn mnist() -> (Model, Feeds) {
    let m = potatura::onnx::load(&examples().join("mnist/mnist_cnn.onnx")).unwrap();
    let x = potatura::data::load_tensor(&examples().join("mnist/train-images-2k-idx3-ubyte.gz"))
        .unwrap();
    let x = Feeds::new(vec![("input".into(), x)])
        .unwrap()
        .take(64)
        .unwrap();
    (m, x)
}

/// The weight tensor of node `name` in `m`.
fn weight(m: &Model, name: &str) -> Tensor {
    let n = m.graph.nodes.iter().find(|n| n.label() == name).unwrap();
    m.graph
        .const_tensor(&n.inputs[1])
        .unwrap()
        .to_tensor()
        .unwrap()
}

#[test]
fn every_layer_gets_exactly_its_sparsity() {
    let (m, x) = mnist();
    let inputs = resolve_input_shapes(&m, &[]).unwrap();
    for (method, per_row) in [
        (Method::Magnitude, false),
        (Method::Magnitude, true),
        (Method::Wanda, true),
        (Method::Random, false),
    ] {
        let mut o = opts(method, Pattern::Unstructured, 0.6);
        o.per_row = per_row;
        let out = sparsify(&m, &inputs, &o, Some(&x)).unwrap();
        assert_eq!(out.layers.len(), 5);
        for l in &out.layers {
            let w = weight(&out.model, &l.node);
            let z = w.f32s().unwrap().iter().filter(|&&v| v == 0.0).count();
            let want = if per_row {
                let rows = w.shape()[0].min(if l.op == "Gemm" { 10 } else { usize::MAX });
                let per = w.len() / rows;
                rows * (0.6 * per as f64).floor() as usize
            } else {
                (0.6 * w.len() as f64).floor() as usize
            };
            assert_eq!(z, want, "{method:?} {}: {z} zeros", l.node);
            assert!((l.sparsity - z as f64 / w.len() as f64).abs() < 1e-12);
        }
    }
}

#[test]
fn n_m_masks_hold_in_every_group() {
    let (m, x) = mnist();
    let inputs = resolve_input_shapes(&m, &[]).unwrap();
    for method in [Method::Magnitude, Method::Wanda] {
        let out = sparsify(
            &m,
            &inputs,
            &opts(method, Pattern::NM { n: 2, m: 4 }, 0.0),
            Some(&x),
        )
        .unwrap();
        for l in &out.layers {
            let w = weight(&out.model, &l.node);
            let v = w.f32s().unwrap();
            let sh = w.shape().to_vec();
            if let Some(why) = &l.dense_reason {
                // The first conv has one input channel.
                assert!(why.contains("multiple of 4"), "{why}");
                continue;
            }
            // Conv [M, C, kh, kw]: 4 consecutive channels at one position.
            let (rows, cin, kpos) = if sh.len() == 4 {
                (sh[0], sh[1], sh[2] * sh[3])
            } else {
                (sh[0], sh[1], 1)
            };
            for r in 0..rows {
                for p in 0..kpos {
                    for c0 in (0..cin).step_by(4) {
                        let nz = (c0..c0 + 4)
                            .filter(|&c| v[(r * cin + c) * kpos + p] != 0.0)
                            .count();
                        assert!(
                            nz <= 2,
                            "{}: row {r} pos {p} channels {c0}..: {nz} non-zeros",
                            l.node
                        );
                    }
                }
            }
            assert!(
                (l.sparsity - 0.5).abs() < 1e-3,
                "{}: {}",
                l.node,
                l.sparsity
            );
        }
    }
}

#[test]
fn allocation_rules_and_protection() {
    let (m, x) = mnist();
    let inputs = resolve_input_shapes(&m, &[]).unwrap();
    let total = |o: &potatura::prune::unstructured::SparseOutcome| {
        let (z, n) = o.layers.iter().fold((0.0, 0.0), |(z, n), l| {
            (z + l.sparsity * l.weights as f64, n + l.weights as f64)
        });
        z / n
    };
    // Protection: rows with fewer inputs than --min-inputs stay dense.
    let mut o = opts(Method::Magnitude, Pattern::Unstructured, 0.5);
    o.min_inputs = 32;
    let out = sparsify(&m, &inputs, &o, None).unwrap();
    assert_eq!(out.layers[0].sparsity, 0.0);
    assert!(out.layers[0]
        .dense_reason
        .as_deref()
        .unwrap()
        .contains("9 inputs"));
    // Skip first and last, overrides.
    let mut o = opts(Method::Magnitude, Pattern::Unstructured, 0.5);
    o.skip_first = true;
    o.skip_last = true;
    o.overrides = vec![("/block4/*".into(), 0.8)];
    let out = sparsify(&m, &inputs, &o, None).unwrap();
    assert_eq!(out.layers[0].sparsity, 0.0);
    assert_eq!(out.layers[4].sparsity, 0.0);
    assert!((out.layers[3].sparsity - 0.8).abs() < 1e-3);
    assert!((out.layers[2].sparsity - 0.5).abs() < 1e-3);
    // Global, ERK and OWL keep the overall sparsity.
    for alloc in [Allocation::Global, Allocation::Erk, Allocation::Owl] {
        let mut o = opts(Method::Wanda, Pattern::Unstructured, 0.6);
        o.allocation = alloc;
        let out = sparsify(&m, &inputs, &o, Some(&x)).unwrap();
        let t = total(&out);
        assert!((t - 0.6).abs() < 0.01, "{alloc:?}: {t}");
        let spread: Vec<f64> = out.layers.iter().map(|l| l.sparsity).collect();
        assert!(
            spread.iter().any(|&s| (s - 0.6).abs() > 0.01),
            "{alloc:?} is uniform: {spread:?}"
        );
    }
    // Data-driven methods refuse to run without data.
    let err = sparsify(
        &m,
        &inputs,
        &opts(Method::Wanda, Pattern::Unstructured, 0.5),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("--calib"), "{err}");
}

#[test]
fn sparse_models_run_in_tract_and_keep_what_they_must() {
    let man = manifest();
    let dir = std::env::temp_dir().join(format!("potatura-sparse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        "resnet_mini",
        "mobilenetv2_mini",
        "yolov8_mini",
        "transformer_mini",
        "fp16_weights",
    ] {
        let m = potatura::onnx::load(&fixtures().join(format!("{name}.onnx"))).unwrap();
        let feeds = feeds_for(&man[format!("{name}.onnx")]);
        let inputs = resolve_input_shapes(&m, &[]).unwrap();
        for pattern in [
            Pattern::Unstructured,
            Pattern::NM { n: 2, m: 4 },
            Pattern::Block { rows: 4, cols: 1 },
        ] {
            let out = sparsify(&m, &inputs, &opts(Method::Magnitude, pattern, 0.5), None).unwrap();
            assert!(
                out.total_sparsity > 0.2,
                "{name} {pattern:?}: {}",
                out.total_sparsity
            );
            let path = dir.join(format!("{name}.sparse.onnx"));
            potatura::onnx::save(&out.model, &path).unwrap();
            let ours = potatura::exec::Executor::new(&out.model)
                .unwrap()
                .run(feeds.clone())
                .unwrap();
            let theirs = run_tract(&path, &feeds);
            for ((n, o), t) in ours.iter().zip(&theirs) {
                assert!(rel_max_err(o.f32s().unwrap(), t) <= 1e-4, "{name}: {n}");
            }
        }
        // Sparsity 0 changes nothing.
        let out = sparsify(
            &m,
            &inputs,
            &opts(Method::Magnitude, Pattern::Unstructured, 0.0),
            None,
        )
        .unwrap();
        assert_eq!(out.model, m, "{name}");
    }
}

#[test]
fn sparsegpt_prunes_layer_after_layer_and_keeps_accuracy() {
    let (m, x) = mnist();
    let inputs = resolve_input_shapes(&m, &[]).unwrap();
    let mut o = opts(Method::SparseGpt, Pattern::Unstructured, 0.6);
    o.min_inputs = 32;
    let out = sparsify(&m, &inputs, &o, Some(&x)).unwrap();
    for l in &out.layers[1..] {
        // Blocks of 128 columns each lose 60% (rounded down per block).
        assert!(
            (l.sparsity - 0.6).abs() < 0.01,
            "{}: {}",
            l.node,
            l.sparsity
        );
    }
    assert_eq!(out.layers[0].sparsity, 0.0);
    // Reconstruction keeps the outputs closer to the dense model than
    // magnitude pruning at the same sparsity.
    let eval = potatura::data::load_tensor(&examples().join("mnist/t10k-images-5k-idx3-ubyte.gz"))
        .unwrap();
    let eval = potatura::eval::batches(&eval, 512).unwrap().remove(0);
    let dense =
        potatura::eval::predict(&potatura::exec::Executor::new(&m).unwrap(), &eval, 128).unwrap();
    let err = |model: &Model| {
        let p = potatura::eval::predict(&potatura::exec::Executor::new(model).unwrap(), &eval, 128)
            .unwrap();
        potatura::eval::score(&p, None, Some(&dense))
            .unwrap()
            .relative_error
            .unwrap()
    };
    let mut mo = opts(Method::Magnitude, Pattern::Unstructured, 0.6);
    mo.min_inputs = 32;
    let mag = sparsify(&m, &inputs, &mo, None).unwrap();
    let (eg, em) = (err(&out.model), err(&mag.model));
    assert!(eg < 0.5 * em, "sparsegpt {eg} vs magnitude {em}");
    // Fitting each layer to the dense output beats fitting it to its own
    // output on the already-pruned inputs (the original SparseGPT).
    let mut own = o.clone();
    own.dense_target = false;
    let eo = err(&sparsify(&m, &inputs, &own, Some(&x)).unwrap().model);
    assert!(eg < eo, "dense target {eg} vs own target {eo}");
    // No data, no SparseGPT.
    assert!(sparsify(&m, &inputs, &o, None).is_err());
}

#[test]
fn token_masks_leave_padding_out_of_the_statistics() {
    // transformer_mini: input_ids [1, 16]; token id 0 plays padding here.
    let m = potatura::onnx::load(&fixtures().join("transformer_mini.onnx")).unwrap();
    let inputs = resolve_input_shapes(&m, &[]).unwrap();
    let ids: Vec<i64> = (0..8 * 16)
        .map(|i| {
            if i % 16 >= 12 {
                0
            } else {
                (i * 7 % 90 + 1) as i64
            }
        })
        .collect();
    let feeds = Feeds::new(vec![(
        "input_ids".into(),
        Tensor::from_i64(vec![8, 16], ids),
    )])
    .unwrap();
    for method in [Method::SparseGpt, Method::Wanda] {
        let mut o = opts(method, Pattern::NM { n: 2, m: 4 }, 0.0);
        o.token_mask = Some("input_ids".into());
        let out = sparsify(&m, &inputs, &o, Some(&feeds)).unwrap();
        assert!(
            out.total_sparsity > 0.45,
            "{method:?}: {}",
            out.total_sparsity
        );
        o.token_mask = Some("no_such_input".into());
        let err = sparsify(&m, &inputs, &o, Some(&feeds)).unwrap_err();
        assert!(err.to_string().contains("no_such_input"), "{err}");
    }
}

#[test]
fn batch_one_exports_are_calibrated_in_one_batched_pass() {
    // mobilenetv2_mini is exported with its batch fixed at 1.
    let m = potatura::onnx::load(&fixtures().join("mobilenetv2_mini.onnx")).unwrap();
    let inputs = resolve_input_shapes(&m, &[]).unwrap();
    let mut rng = potatura::rng::Rng::new(4);
    let x = Tensor::from_f32(
        vec![6, 3, 64, 64],
        (0..6 * 3 * 64 * 64).map(|_| rng.normal() as f32).collect(),
    );
    let data = Feeds::new(vec![("input".into(), x)]).unwrap();
    let relaxed = potatura::exec::relax_batch(&m, &data).expect("batch-agnostic graph");
    let out = potatura::exec::Executor::new(&relaxed)
        .unwrap()
        .run(data.0.clone())
        .unwrap();
    assert_eq!(out[0].1.shape()[0], 6);
    // One sample is not enough to check; a dynamic batch needs nothing.
    assert!(potatura::exec::relax_batch(&m, &data.take(1).unwrap()).is_none());
    let (mn, mx) = mnist();
    assert!(potatura::exec::relax_batch(&mn, &mx).is_none());
    // SparseGPT through the relaxed graph prunes 2:4 and stays close.
    let o = opts(Method::SparseGpt, Pattern::NM { n: 2, m: 4 }, 0.0);
    let sp = sparsify(&m, &inputs, &o, Some(&data)).unwrap();
    assert!(sp.total_sparsity > 0.3, "{}", sp.total_sparsity);
    let ex = potatura::exec::Executor::new(&sp.model).unwrap();
    let dense = potatura::exec::Executor::new(&m).unwrap();
    let one = data.take(1).unwrap();
    let (a, b) = (
        ex.run(one.0.clone()).unwrap(),
        dense.run(one.0.clone()).unwrap(),
    );
    let err = rel_max_err(a[0].1.f32s().unwrap(), b[0].1.f32s().unwrap());
    assert!(err < 0.5, "relative error {err}");
}
