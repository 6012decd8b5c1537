//! Structured pruning on every fixture family: the identity at ratio 0,
//! exactness when removing channels that are already zero, half the MACs
//! with a model that still runs in tract with its original output shapes,
//! frozen channels around ops without a channel mapping, plans that round
//! trip.

use potatura::deps::DepGraph;
use potatura::exec::Executor;
use potatura::importance::{Criterion, Reduce};
use potatura::ir::{
    resolve_input_shapes, AttrValue, Attribute, ConstTensor, DType, Dim, InputShape, Model, Node,
    Tensor, ValueInfo,
};
use potatura::prune::{self, Options, Select, Target};

use super::common::{examples, fixtures, manifest};
use super::oracle::{feeds_for, rel_max_err, run_tract};

fn opts(target: Target) -> Options {
    Options {
        select: Select {
            target,
            round_to: 1,
            max_layer_ratio: 0.9,
            ignore: Vec::new(),
            latency: None,
        },
        criterion: Criterion::L2,
        reduce: Reduce::Mean,
        steps: 1,
        seed: 0,
        calib_batch: 16,
    }
}

fn shapes(m: &Model) -> Vec<InputShape> {
    resolve_input_shapes(m, &[]).unwrap()
}

fn run(m: &Model, feeds: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    Executor::new(m).unwrap().run(feeds.to_vec()).unwrap()
}

const FAMILIES: [&str; 9] = [
    "mnist_cnn",
    "resnet_mini",
    "resnet_mini_dynamo",
    "mobilenetv2_mini",
    "mobilenetv2_mini_dynamo",
    "yolov8_mini",
    "yolov8_mini_dynamo",
    "transformer_mini",
    "transformer_mini_dynamo",
];

fn load_family(name: &str) -> (Model, Vec<(String, Tensor)>) {
    let man = manifest();
    let m = potatura::onnx::load(&fixtures().join(format!("{name}.onnx"))).unwrap();
    (m, feeds_for(&man[format!("{name}.onnx")]))
}

#[test]
fn ratio_zero_is_the_identity() {
    for name in FAMILIES {
        let (m, feeds) = load_family(name);
        let out = prune::structured(&m, &shapes(&m), &opts(Target::LayerRatio(0.0)), None).unwrap();
        assert_eq!(out.model, m, "{name}: the model changed");
        assert!(out.plan.steps.iter().all(|s| s.is_empty()));
        let (a, b) = (run(&m, &feeds), run(&out.model, &feeds));
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(x, y, "{name}: outputs differ");
        }
    }
}

#[test]
fn every_family_prunes_to_half_the_macs_and_runs_in_tract() {
    let dir = std::env::temp_dir().join(format!("potatura-prune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Plus weights stored as Constant nodes and as fp16 behind Cast.
    for name in FAMILIES.iter().chain(&["const_weights", "fp16_weights"]) {
        let (m, feeds) = load_family(name);
        let inputs = shapes(&m);
        let before = potatura::report::summarize(&m, &inputs).unwrap();
        let out = prune::structured(&m, &inputs, &opts(Target::Macs(0.5)), None).unwrap();
        assert!(!out.short, "{name}: 50% MACs not reached");
        let after = potatura::report::summarize(&out.model, &inputs).unwrap();
        let ratio = after.macs as f64 / before.macs as f64;
        assert!((0.4..=0.5).contains(&ratio), "{name}: MAC ratio {ratio}");
        assert!(
            after.params < before.params,
            "{name}: params did not shrink"
        );
        let path = dir.join(format!("{name}.pruned.onnx"));
        potatura::onnx::save(&out.model, &path).unwrap();
        let reloaded = potatura::onnx::load(&path).unwrap();
        let ours = run(&reloaded, &feeds);
        let dense = run(&m, &feeds);
        let theirs = run_tract(&path, &feeds);
        for (((n, o), (_, d)), t) in ours.iter().zip(&dense).zip(&theirs) {
            assert_eq!(o.shape(), d.shape(), "{name}: output {n} changed shape");
            let err = rel_max_err(o.f32s().unwrap(), t);
            assert!(
                err <= 1e-4,
                "{name}: output {n} differs from tract by {err}"
            );
        }
    }
}

/// Zeroes channels `ks` of a Conv (filters and bias) and of the BatchNorm
/// after it (scale and shift), so they output exact zeros.
fn zero_conv_channels(m: &mut Model, conv: &str, ks: &[usize]) -> String {
    let conv = m.graph.nodes.iter().position(|n| n.name == conv).unwrap();
    let conv_out = m.graph.nodes[conv].outputs[0].clone();
    let bn = m
        .graph
        .nodes
        .iter()
        .find(|n| n.op_type == "BatchNormalization" && n.inputs[0] == conv_out)
        .expect("Conv followed by BatchNorm")
        .clone();
    let mut names: Vec<(String, usize)> = vec![(m.graph.nodes[conv].inputs[1].clone(), 0)];
    if let Some(b) = m.graph.nodes[conv].inputs.get(2) {
        names.push((b.clone(), 0));
    }
    names.push((bn.inputs[1].clone(), 0));
    names.push((bn.inputs[2].clone(), 0));
    for (name, _) in names {
        let init = m
            .graph
            .initializers
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap();
        let mut t = init.to_tensor().unwrap();
        let per = t.len() / t.shape()[0];
        let v = t.f32s_mut().unwrap();
        for &k in ks {
            v[k * per..(k + 1) * per].iter_mut().for_each(|x| *x = 0.0);
        }
        init.set(&t).unwrap();
    }
    conv_out
}

#[test]
fn removing_channels_that_are_already_zero_changes_no_output() {
    // Channels not in a residual stream: zeroing one conv's filters and
    // its BatchNorm zeroes every producer of the class.
    for (name, conv) in [
        ("mnist_cnn", "/block1/block1.0/Conv"),
        ("resnet_mini", "/layers/layers.0/conv1/Conv"),
    ] {
        let (mut m, feeds) = load_family(name);
        let ks = [1, 4, 6];
        let value = zero_conv_channels(&mut m, conv, &ks);
        let inputs = shapes(&m);
        let dg = DepGraph::build(&m, &inputs).unwrap();
        let removed = prune::resolve(
            &dg,
            &[prune::Removal {
                group: String::new(),
                value,
                channels: ks.to_vec(),
            }],
        )
        .unwrap();
        // Residual streams couple more values, but one class per channel.
        assert_eq!(removed.len(), ks.len(), "{name}");
        let pruned = prune::apply(&m, &dg, &removed, &inputs).unwrap();
        let (a, b) = (run(&m, &feeds), run(&pruned, &feeds));
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            let err = rel_max_err(y.f32s().unwrap(), x.f32s().unwrap());
            assert!(err <= 1e-5, "{name}: output {n} changed by {err}");
        }
        let s = potatura::report::summarize(&pruned, &inputs).unwrap();
        let s0 = potatura::report::summarize(&m, &inputs).unwrap();
        assert!(s.macs < s0.macs, "{name}");
    }
}

#[test]
fn plans_round_trip_through_json() {
    let (m, _) = load_family("yolov8_mini");
    let inputs = shapes(&m);
    let mut o = opts(Target::Macs(0.6));
    o.steps = 2;
    let out = prune::structured(&m, &inputs, &o, None).unwrap();
    assert_eq!(out.plan.steps.len(), 2);
    let text = serde_json::to_string(&out.plan).unwrap();
    let plan: prune::Plan = serde_json::from_str(&text).unwrap();
    assert_eq!(plan, out.plan);
    let again = prune::apply_plan(&m, &inputs, &plan).unwrap();
    assert_eq!(
        potatura::onnx::to_bytes(&again).unwrap(),
        potatura::onnx::to_bytes(&out.model).unwrap()
    );
}

#[test]
fn unknown_ops_freeze_the_channels_they_touch() {
    let m = potatura::onnx::load(&fixtures().join("unknown_op.onnx")).unwrap();
    let dg = DepGraph::build(&m, &shapes(&m)).unwrap();
    let reasons: Vec<&str> = dg
        .groups
        .iter()
        .filter_map(|g| g.frozen.as_deref())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("mystery_1")),
        "{reasons:?}"
    );
    assert!(dg.groups.iter().all(|g| g.frozen.is_some()));
    let out = prune::structured(&m, &shapes(&m), &opts(Target::Macs(0.5)), None).unwrap();
    assert!(
        out.short,
        "nothing can be pruned, so the target is not reached"
    );
    assert_eq!(out.model, m);
}

fn conv(name: &str, x: &str, w: &str, b: &str, y: &str) -> Node {
    Node::new(
        name,
        "Conv",
        &[x, w, b],
        &[y],
        vec![
            Attribute::new("kernel_shape", AttrValue::Ints(vec![3, 3])),
            Attribute::new("pads", AttrValue::Ints(vec![1, 1, 1, 1])),
        ],
    )
}

fn weight(name: &str, shape: &[usize], seed: u32) -> ConstTensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(2654435761) | 1;
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect();
    ConstTensor::from_tensor(name, &Tensor::from_f32(shape.to_vec(), v)).unwrap()
}

/// x -> conv a -> relu -> conv b -> softmax over channels -> conv c -> y:
/// the softmax couples every channel of b, so b's group freezes while a's
/// stays prunable.
fn softmax_model() -> Model {
    let mut m = potatura::onnx::new_model("softmax_in_the_middle", 17);
    let g = &mut m.graph;
    g.inputs.push(ValueInfo::new(
        "x",
        DType::F32,
        vec![Dim::Known(1), Dim::Known(3), Dim::Known(8), Dim::Known(8)],
    ));
    g.outputs.push(ValueInfo::new(
        "y",
        DType::F32,
        vec![Dim::Known(1), Dim::Known(4), Dim::Known(8), Dim::Known(8)],
    ));
    for (i, (name, shape)) in [
        ("wa", vec![8, 3, 3, 3]),
        ("ba", vec![8]),
        ("wb", vec![6, 8, 3, 3]),
        ("bb", vec![6]),
        ("wc", vec![4, 6, 3, 3]),
        ("bc", vec![4]),
    ]
    .into_iter()
    .enumerate()
    {
        g.initializers.push(weight(name, &shape, i as u32 + 1));
    }
    g.nodes = vec![
        conv("conv_a", "x", "wa", "ba", "a"),
        Node::new("relu_a", "Relu", &["a"], &["ra"], vec![]),
        conv("conv_b", "ra", "wb", "bb", "b"),
        Node::new(
            "softmax_b",
            "Softmax",
            &["b"],
            &["sb"],
            vec![Attribute::new("axis", AttrValue::Int(1))],
        ),
        conv("conv_c", "sb", "wc", "bc", "y"),
    ];
    m
}

#[test]
fn an_op_without_a_channel_mapping_freezes_only_what_it_touches() {
    let m = softmax_model();
    let inputs = shapes(&m);
    let dg = DepGraph::build(&m, &inputs).unwrap();
    let group = |n: &str| dg.groups.iter().find(|g| g.name == n).unwrap();
    assert!(group("conv_a").frozen.is_none());
    let why = group("conv_b").frozen.as_deref().unwrap();
    assert!(why.contains("softmax_b"), "{why}");
    let out = prune::structured(&m, &inputs, &opts(Target::LayerRatio(0.5)), None).unwrap();
    let ch = |m: &Model, w: &str| {
        m.graph
            .initializers
            .iter()
            .find(|t| t.name == w)
            .unwrap()
            .dims()[0]
    };
    assert_eq!(ch(&out.model, "wa"), 4);
    assert_eq!(ch(&out.model, "wb"), 6);
    let x = Tensor::from_f32(
        vec![1, 3, 8, 8],
        (0..192).map(|i| (i as f32 * 0.37).sin()).collect(),
    );
    let y = run(&out.model, &[("x".into(), x)]);
    assert_eq!(y[0].1.shape(), &[1, 4, 8, 8]);
}

#[test]
fn the_bundled_example_prunes_and_keeps_its_shapes() {
    let m = potatura::onnx::load(&examples().join("mnist/mnist_cnn.onnx")).unwrap();
    let inputs = shapes(&m);
    for c in [
        Criterion::L1,
        Criterion::BnScale,
        Criterion::Fpgm,
        Criterion::Lamp,
        Criterion::Random,
    ] {
        let mut o = opts(Target::Macs(0.5));
        o.criterion = c;
        o.select.round_to = 8;
        let out = prune::structured(&m, &inputs, &o, None).unwrap();
        let dg = DepGraph::build(&out.model, &inputs).unwrap();
        for g in dg.groups.iter().filter(|g| g.frozen.is_none()) {
            assert_eq!(
                g.channels % 8,
                0,
                "{c:?}: {} has {} channels",
                g.name,
                g.channels
            );
        }
        let s = potatura::report::summarize(&out.model, &inputs).unwrap();
        assert!(s.macs as f64 <= 0.5 * 36353792.0, "{c:?}: {} MACs", s.macs);
    }
}

#[test]
fn latency_targets_spend_cuts_where_time_goes_and_close_the_loop() {
    let (m, _) = load_family("resnet_mini");
    let inputs = shapes(&m);
    // A deterministic stand-in for the measured table: time = MACs + 1000
    // per node, so the estimate is exact and the loop can be checked.
    let mut measure = |m: &Model| -> potatura::Result<(f64, Vec<f64>)> {
        let info = potatura::exec::infer_shapes(m, &inputs)?;
        let table: Vec<f64> = info.nodes.iter().map(|n| n.macs as f64 + 1000.0).collect();
        Ok((table.iter().sum(), table))
    };
    let mut o = opts(Target::Latency(0.5));
    o.select.latency = None;
    let out = prune::to_latency(&m, &inputs, &o, None, 0.5, 4, &mut measure).unwrap();
    let (dense, _) = measure(&m).unwrap();
    let (pruned, _) = measure(&out.model).unwrap();
    assert!(pruned <= 0.5 * dense * 1.02, "{pruned} vs {dense}");
    assert!(!out.plan.steps.is_empty());
    // Without a table a latency target is refused.
    let err = prune::structured(&m, &inputs, &opts(Target::Latency(0.5)), None).unwrap_err();
    assert!(err.to_string().contains("latency"), "{err}");
    // Time-weighted ranking: a table that makes one group's time dominate
    // sends more of the cuts there than MAC ranking does.
    let dg = DepGraph::build(&m, &inputs).unwrap();
    let scores =
        potatura::importance::class_scores(&dg, Criterion::L2, Reduce::Mean, None, 0).unwrap();
    let hot = dg
        .groups
        .iter()
        .position(|g| g.name == "/layers/layers.0/conv1/Conv")
        .unwrap();
    let mut table = vec![1.0; dg.nodes.len()];
    let conv = m
        .graph
        .nodes
        .iter()
        .position(|n| n.name == "/layers/layers.0/conv1/Conv")
        .unwrap();
    table[conv] = 1000.0;
    let mut sel = opts(Target::Latency(0.8)).select;
    sel.latency = Some(table);
    let s = prune::select(&dg, &scores, &sel).unwrap();
    // Every cut lands in a group that shrinks the slow conv (its own
    // filters, or the residual stream it reads), none elsewhere.
    assert!(!s.removed.is_empty());
    for &c in &s.removed {
        let g = &dg.groups[dg.classes[c].group];
        assert!(
            g.nodes.iter().any(|n| n == "/layers/layers.0/conv1/Conv"),
            "cut in {}",
            g.name
        );
    }
    assert!(s.removed.iter().any(|&c| dg.classes[c].group == hot));
}

#[test]
fn residual_blocks_are_found_and_removed() {
    let dir = std::env::temp_dir().join(format!("potatura-blocks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, n_blocks) in [
        ("resnet_mini", 1),
        ("mobilenetv2_mini", 4),
        ("yolov8_mini", 6),
        ("transformer_mini", 4),
        ("transformer_mini_dynamo", 4),
    ] {
        let (m, feeds) = load_family(name);
        let inputs = shapes(&m);
        let blocks = prune::blocks::find(&m, &inputs).unwrap();
        assert_eq!(blocks.len(), n_blocks, "{name}: {blocks:?}");
        let out = prune::blocks::depth(&m, &inputs, Target::LayerRatio(0.5), None).unwrap();
        assert_eq!(out.plan.blocks.len(), n_blocks / 2, "{name}");
        let before = potatura::report::summarize(&m, &inputs).unwrap();
        let after = potatura::report::summarize(&out.model, &inputs).unwrap();
        assert!(after.macs < before.macs || n_blocks < 2, "{name}");
        let path = dir.join(format!("{name}.blocks.onnx"));
        potatura::onnx::save(&out.model, &path).unwrap();
        let theirs = run_tract(&path, &feeds);
        let ours = run(&out.model, &feeds);
        for ((n, o), t) in ours.iter().zip(&theirs) {
            assert!(rel_max_err(o.f32s().unwrap(), t) <= 1e-4, "{name}: {n}");
        }
        let again = prune::apply_plan(&m, &inputs, &out.plan).unwrap();
        assert_eq!(
            again, out.model,
            "{name}: plan does not reproduce the model"
        );
    }
}

#[test]
fn a_block_whose_branch_is_zero_goes_first_and_changes_nothing() {
    let (mut m, feeds) = load_family("mobilenetv2_mini");
    let inputs = shapes(&m);
    let blocks = prune::blocks::find(&m, &inputs).unwrap();
    let target = &blocks[1];
    // The branch's last node before the Add is a BatchNorm: zero its
    // scale and shift, so f(x) = 0 and y = x exactly.
    let add = m
        .graph
        .nodes
        .iter()
        .find(|n| n.label() == target.add)
        .unwrap()
        .clone();
    let branch_out = add
        .inputs
        .iter()
        .find(|i| **i != target.skip)
        .unwrap()
        .clone();
    let bn = m
        .graph
        .nodes
        .iter()
        .find(|n| n.outputs[0] == branch_out)
        .unwrap()
        .clone();
    assert_eq!(bn.op_type, "BatchNormalization");
    for w in [&bn.inputs[1], &bn.inputs[2]] {
        let t = m
            .graph
            .initializers
            .iter_mut()
            .find(|t| &t.name == w)
            .unwrap();
        let z = Tensor::from_f32(t.dims().to_vec(), vec![0.0; t.numel()]);
        t.set(&z).unwrap();
    }
    let x = &potatura::data::Feeds::new(feeds.clone()).unwrap();
    let scores = prune::blocks::scores(&m, &inputs, &blocks, Some(x)).unwrap();
    assert!(scores[1] < 1e-7, "{scores:?}");
    assert!(
        scores.iter().enumerate().all(|(i, &s)| i == 1 || s > 1e-4),
        "{scores:?}"
    );
    let out = prune::blocks::depth(&m, &inputs, Target::LayerRatio(0.25), Some(x)).unwrap();
    assert_eq!(out.plan.blocks, vec![target.add.clone()]);
    let (a, b) = (run(&m, &feeds), run(&out.model, &feeds));
    for ((n, p), (_, q)) in a.iter().zip(&b) {
        assert!(
            rel_max_err(q.f32s().unwrap(), p.f32s().unwrap()) <= 1e-6,
            "{n}"
        );
    }
}

#[test]
fn rounding_counts_features_not_heads() {
    // Heads of 8 features each: with --round-to 8 every head count is fine
    // (the projections keep multiples of 8 features); FFN units round to 8.
    let (m, _) = load_family("transformer_mini");
    let inputs = shapes(&m);
    let mut o = opts(Target::Macs(0.6));
    o.select.round_to = 8;
    let out = prune::structured(&m, &inputs, &o, None).unwrap();
    assert!(!out.short);
    let dg = DepGraph::build(&out.model, &inputs).unwrap();
    let live: Vec<(String, usize)> = dg
        .groups
        .iter()
        .filter(|g| g.frozen.is_none())
        .map(|g| (g.name.clone(), g.channels))
        .collect();
    for (name, ch) in &live {
        if name.contains("fc1") {
            assert_eq!(ch % 8, 0, "{live:?}");
        }
    }
    assert!(
        live.iter().any(|(n, ch)| n.contains("attn") && *ch < 4),
        "no head was pruned: {live:?}"
    );
}

#[test]
fn pruned_weights_keep_their_storage_type() {
    let (m, _) = load_family("fp16_weights");
    let count = |m: &Model| {
        m.graph
            .initializers
            .iter()
            .filter(|t| t.dtype() == DType::F16)
            .count()
    };
    let out = prune::structured(&m, &shapes(&m), &opts(Target::Macs(0.5)), None).unwrap();
    assert!(count(&m) > 0);
    assert_eq!(count(&out.model), count(&m));
    assert!(out
        .model
        .graph
        .initializers
        .iter()
        .all(|t| t.dtype() != DType::F32 || t.numel() < 100));
}
