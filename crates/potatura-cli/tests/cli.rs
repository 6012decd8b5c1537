//! The `potatura` binary as a user meets it: commands, and bad input that
//! must give a clear error and exit code 2, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
fn fx(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}
fn example(name: &str) -> PathBuf {
    root().join("examples/mnist").join(name)
}

fn potatura(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_potatura"))
        .args(args)
        .output()
        .expect("run potatura")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("potatura-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts a failure with exit code 2, no panic, and a message containing every needle.
fn assert_fails(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.starts_with("potatura: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
    err
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn inspect_prints_a_table_and_json() {
    let m = example("mnist_cnn.onnx");
    let text = stdout(&potatura(&["inspect", p(&m)]));
    assert!(text.contains("Conv") && text.contains("total:"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&potatura(&["inspect", p(&m), "--json"]))).unwrap();
    assert!(json["params"].as_u64().unwrap() > 200_000);
    assert!(json["macs"].as_u64().unwrap() > 10_000_000);
    assert!(json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["op"] == "BatchNormalization"));
    // --input-shape on the dynamic batch dim scales the MACs.
    let j8: serde_json::Value = serde_json::from_str(&stdout(&potatura(&[
        "inspect",
        p(&m),
        "--json",
        "--input-shape",
        "input=8,1,28,28",
    ])))
    .unwrap();
    assert_eq!(
        j8["macs"].as_u64().unwrap(),
        8 * json["macs"].as_u64().unwrap()
    );
}

#[test]
fn run_writes_every_output_as_npy() {
    let dir = tmp("run");
    let out = potatura(&[
        "run",
        p(&fx("mnist_cnn.onnx")),
        "--input",
        &format!("input={}", p(&fx("mnist_cnn.input.npy"))),
        "--output-dir",
        p(&dir),
    ]);
    stdout(&out);
    let y = potatura::data::npy::read(&dir.join("logits.npy")).unwrap();
    assert_eq!(y.shape(), &[8, 10]);
    let want = potatura::data::npy::read(&fx("mnist_cnn.output.npy")).unwrap();
    let (a, b) = (y.f32s().unwrap(), want.f32s().unwrap());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * scale));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn eval_reports_accuracy_and_agreement() {
    let out = potatura(&[
        "eval",
        p(&example("mnist_cnn.onnx")),
        "--data",
        p(&example("t10k-images-5k-idx3-ubyte.gz")),
        "--labels",
        p(&example("t10k-labels-5k-idx1-ubyte.gz")),
        "--reference",
        p(&example("mnist_cnn.onnx")),
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(j["samples"], 5000);
    assert!(j["accuracy"].as_f64().unwrap() > 0.98);
    assert_eq!(j["agreement"].as_f64().unwrap(), 1.0);
    assert!(j["relative_error"].as_f64().unwrap() < 1e-6);
}

#[test]
fn not_onnx_and_truncated_files_are_refused() {
    let dir = tmp("bad");
    let junk = dir.join("junk.onnx");
    std::fs::write(
        &junk,
        b"this is certainly not a protobuf model \xff\xff\xff\xff",
    )
    .unwrap();
    assert_fails(
        &potatura(&["inspect", p(&junk)]),
        &["junk.onnx", "not a valid ONNX model"],
    );
    let bytes = std::fs::read(fx("resnet_mini.onnx")).unwrap();
    let cut = dir.join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(&potatura(&["inspect", p(&cut)]), &["cut.onnx"]);
    let missing = dir.join("nope.onnx");
    assert_fails(&potatura(&["inspect", p(&missing)]), &["nope.onnx"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_external_data_names_the_file() {
    let dir = tmp("ext");
    std::fs::copy(fx("external_data.onnx"), dir.join("external_data.onnx")).unwrap();
    assert_fails(
        &potatura(&["inspect", p(&dir.join("external_data.onnx"))]),
        &["external_data.onnx.data", "beside the model"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn external_data_outside_the_model_folder_is_refused() {
    let dir = tmp("escape");
    // Same-length substitution keeps every protobuf length valid.
    let bytes = std::fs::read(fx("external_data.onnx")).unwrap();
    let (from, to) = (
        b"external_data.onnx.data".as_slice(),
        b"../../../../etc/passwd0".as_slice(),
    );
    assert_eq!(from.len(), to.len());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut replaced = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
            replaced += 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    assert!(replaced > 0);
    let f = dir.join("escape.onnx");
    std::fs::write(&f, &out).unwrap();
    assert_fails(
        &potatura(&["inspect", p(&f)]),
        &["escapes the model's folder", "../../../../etc/passwd0"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A hand-encoded model whose only initializer claims 2^40 x 2^40 floats
/// but carries 4 bytes: must be refused without allocating.
#[test]
fn hostile_sizes_do_not_allocate() {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(tag: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    let mut tensor = Vec::new();
    for _ in 0..2 {
        tensor.push(0x08);
        varint(1 << 40, &mut tensor);
    }
    tensor.extend_from_slice(&[0x10, 0x01]);
    field(0x42, b"huge", &mut tensor);
    field(0x4a, &[0, 0, 0, 0], &mut tensor);
    let mut graph = Vec::new();
    field(0x2a, &tensor, &mut graph);
    let mut model = vec![0x08, 0x08];
    field(0x3a, &graph, &mut model);
    field(0x42, &[0x10, 17], &mut model);
    let dir = tmp("hostile");
    let f = dir.join("hostile.onnx");
    std::fs::write(&f, &model).unwrap();
    assert_fails(&potatura(&["inspect", p(&f)]), &["huge"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wrong_input_data_is_explained() {
    let dir = tmp("inputs");
    let model = fx("resnet_mini.onnx");
    // Wrong shape.
    let bad_shape = dir.join("shape.npy");
    potatura::data::npy::write(
        &bad_shape,
        &potatura::ir::Tensor::from_f32(vec![1, 3, 16, 16], vec![0.0; 768]),
    )
    .unwrap();
    let args = |spec: String| {
        vec![
            "run".to_string(),
            p(&model).to_string(),
            "--input".into(),
            spec,
            "--output-dir".into(),
            p(&dir).to_string(),
        ]
    };
    let run = |a: Vec<String>| potatura(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_fails(
        &run(args(format!("input={}", p(&bad_shape)))),
        &["input 'input'", "[1,3,32,32]", "[1, 3, 16, 16]"],
    );
    // Wrong dtype.
    let bad_dtype = dir.join("dtype.npy");
    potatura::data::npy::write(
        &bad_dtype,
        &potatura::ir::Tensor::from_i64(vec![1, 3, 32, 32], vec![0; 3072]),
    )
    .unwrap();
    assert_fails(
        &run(args(format!("input={}", p(&bad_dtype)))),
        &["input 'input'", "f32", "i64"],
    );
    // Unknown input name.
    let good = fx("resnet_mini.input.npy");
    assert_fails(
        &run(args(format!("images={}", p(&good)))),
        &["input 'images'", "no input of that name", "\"input\""],
    );
    // Not an npy file.
    assert_fails(
        &run(args(format!("input={}", p(&model)))),
        &["resnet_mini.onnx", ".npy"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unsupported_ops_are_all_listed() {
    let err = assert_fails(
        &potatura(&["inspect", p(&fx("unknown_op.onnx"))]),
        &[
            "unsupported ops (2 node(s))",
            "mystery_1",
            "mystery_2",
            "MysteryOp",
        ],
    );
    assert!(err.contains("com.example"), "{err}");
}

#[test]
fn dynamic_dims_need_the_input_shape_flag() {
    let dir = tmp("dyn");
    let mut m = potatura::onnx::load(&fx("mnist_cnn.onnx")).unwrap();
    let inp = m
        .graph
        .inputs
        .iter_mut()
        .find(|v| v.name == "input")
        .unwrap();
    use potatura::ir::Dim;
    inp.shape = Some(vec![
        Dim::Sym("batch".into()),
        Dim::Known(1),
        Dim::Sym("height".into()),
        Dim::Sym("width".into()),
    ]);
    let f = dir.join("dyn.onnx");
    potatura::onnx::save(&m, &f).unwrap();
    assert_fails(
        &potatura(&["inspect", p(&f)]),
        &["input 'input'", "height", "--input-shape input=1,1,N,N"],
    );
    let ok = stdout(&potatura(&[
        "inspect",
        p(&f),
        "--input-shape",
        "input=2,1,28,28",
    ]));
    assert!(ok.contains("total:"));
    // A value that contradicts a fixed dim is refused.
    assert_fails(
        &potatura(&["inspect", p(&f), "--input-shape", "input=1,3,28,28"]),
        &["fixes it at 1"],
    );
    // An unknown input name is refused.
    assert_fails(
        &potatura(&["inspect", p(&f), "--input-shape", "x=1,1,28,28"]),
        &["input 'x'"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_times_the_model_and_every_node() {
    let m = fx("resnet_mini.onnx");
    let args = ["bench", p(&m), "--runs", "3", "--seconds", "0", "--json"];
    let json: serde_json::Value = serde_json::from_str(&stdout(&potatura(&args))).unwrap();
    assert!(json["runs"].as_u64().unwrap() >= 3);
    let median = json["median_ms"].as_f64().unwrap();
    assert!(median > 0.0 && json["min_ms"].as_f64().unwrap() <= median);
    let nodes = json["nodes"].as_array().unwrap();
    // Every node of this model computes something at run time.
    let summary = potatura::onnx::load(&m).unwrap();
    assert_eq!(nodes.len(), summary.graph.nodes.len());
    assert!(nodes.iter().any(|n| n["op"] == "Conv"));
    let text = stdout(&potatura(&[
        "bench",
        p(&m),
        "--runs",
        "2",
        "--seconds",
        "0",
        "--nodes",
    ]));
    assert!(
        text.contains("median") && text.contains("/fc/Gemm"),
        "{text}"
    );
    assert_fails(&potatura(&["bench", p(&m), "--seconds=-1"]), &["--seconds"]);
}

#[test]
fn groups_lists_prunable_and_frozen_groups() {
    let m = fx("resnet_mini.onnx");
    let text = stdout(&potatura(&["groups", p(&m)]));
    assert!(text.contains("8 prunable groups"), "{text}");
    assert!(text.contains("graph output"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&potatura(&["groups", p(&m), "--json"]))).unwrap();
    let groups = json["groups"].as_array().unwrap();
    assert!(groups
        .iter()
        .any(|g| g["frozen"].is_null() && g["channels"] == 64));
    let text = stdout(&potatura(&["groups", p(&fx("unknown_op.onnx")), "--all"]));
    assert!(text.contains("mystery_1"), "{text}");
}

#[test]
fn prune_reports_before_and_after_and_plans_round_trip() {
    let dir = tmp("prune");
    let m = example("mnist_cnn.onnx");
    let out = dir.join("half.onnx");
    let json: serde_json::Value = serde_json::from_str(&stdout(&potatura(&[
        "prune",
        p(&m),
        "-o",
        p(&out),
        "--target-macs",
        "0.5",
        "--eval-data",
        p(&example("t10k-images-5k-idx3-ubyte.gz")),
        "--eval-labels",
        p(&example("t10k-labels-5k-idx1-ubyte.gz")),
        "--latency-seconds",
        "0.2",
        "--json",
    ])))
    .unwrap();
    let (b, a) = (&json["before"], &json["after"]);
    assert!(a["macs"].as_f64().unwrap() <= 0.5 * b["macs"].as_f64().unwrap());
    assert!(a["file_bytes"].as_u64().unwrap() < b["file_bytes"].as_u64().unwrap());
    assert!(b["accuracy"].as_f64().unwrap() > 0.98);
    assert!(a["accuracy"].as_f64().is_some() && a["agreement"].as_f64().is_some());
    assert!(a["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["channels_after"].as_u64() < l["channels_before"].as_u64()));
    // The dry run writes a plan; applying it gives the same file.
    let plan = dir.join("plan.json");
    stdout(&potatura(&[
        "prune",
        p(&m),
        "--target-macs",
        "0.5",
        "--dry-run",
        "-o",
        p(&plan),
    ]));
    let again = dir.join("again.onnx");
    let text = stdout(&potatura(&[
        "prune",
        p(&m),
        "--plan",
        p(&plan),
        "-o",
        p(&again),
        "--latency-seconds",
        "0",
    ]));
    assert!(text.contains("MACs"), "{text}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    // A plan for another model is refused.
    let other = dir.join("other.onnx");
    assert_fails(
        &potatura(&[
            "prune",
            p(&fx("resnet_mini.onnx")),
            "--plan",
            p(&plan),
            "-o",
            p(&other),
        ]),
        &["plan", "another model"],
    );
}

#[test]
fn prune_refuses_bad_requests() {
    let dir = tmp("prune-bad");
    let m = example("mnist_cnn.onnx");
    let out = dir.join("x.onnx");
    assert_fails(
        &potatura(&["prune", p(&m), "-o", p(&out)]),
        &["--target-macs"],
    );
    assert_fails(
        &potatura(&["prune", p(&m), "-o", p(&out), "--target-macs", "1.5"]),
        &["1.5", "fraction"],
    );
    assert_fails(
        &potatura(&[
            "prune",
            p(&m),
            "-o",
            p(&out),
            "--ratio",
            "0.3",
            "--importance",
            "activation",
        ]),
        &["--calib"],
    );
    assert_fails(
        &potatura(&["prune", p(&m), "-o", p(&m), "--ratio", "0.3"]),
        &["overwrite the input"],
    );
    assert!(!out.exists());
}

#[test]
fn prune_removes_residual_blocks() {
    let dir = tmp("prune-block");
    let out = dir.join("t.onnx");
    let text = stdout(&potatura(&[
        "prune",
        p(&fx("transformer_mini.onnx")),
        "-o",
        p(&out),
        "--method",
        "block",
        "--target-macs",
        "0.8",
        "--latency-seconds",
        "0",
    ]));
    assert!(text.contains("residual blocks removed: /layers."), "{text}");
    let text = stdout(&potatura(&["groups", p(&fx("resnet_mini.onnx"))]));
    assert!(text.contains("/layers/layers.0/Add"), "{text}");
    assert_fails(
        &potatura(&[
            "prune",
            p(&fx("transformer_mini.onnx")),
            "-o",
            p(&out),
            "--method",
            "block",
            "--target-latency",
            "0.5",
        ]),
        &["--method block"],
    );
}

#[test]
fn prune_zeroes_weights_with_unstructured_methods() {
    let dir = tmp("sparse");
    let m = example("mnist_cnn.onnx");
    let out = dir.join("s.onnx");
    let json: serde_json::Value = serde_json::from_str(&stdout(&potatura(&[
        "prune",
        p(&m),
        "-o",
        p(&out),
        "--method",
        "wanda",
        "--pattern",
        "2:4",
        "--calib",
        p(&example("train-images-2k-idx3-ubyte.gz")),
        "--eval-data",
        p(&example("t10k-images-5k-idx3-ubyte.gz")),
        "--latency-seconds",
        "0",
        "--json",
    ])))
    .unwrap();
    let (b, a) = (&json["before"], &json["after"]);
    assert_eq!(a["params"], b["params"]);
    assert!(a["gzip_bytes"].as_u64().unwrap() < b["gzip_bytes"].as_u64().unwrap());
    assert!(json["sparsity"].as_f64().unwrap() > 0.45);
    let layers = json["sparse_layers"].as_array().unwrap();
    assert!(layers[0]["dense_reason"]
        .as_str()
        .unwrap()
        .contains("inputs per output"));
    assert!(a["agreement"].as_f64().unwrap() > 0.3);
    let text = stdout(&potatura(&[
        "prune",
        p(&m),
        "-o",
        p(&out),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--block",
        "1x4",
        "--latency-seconds",
        "0",
    ]));
    assert!(text.contains("sparsity of the weight layers"), "{text}");
    for (args, needle) in [
        (vec!["--method", "wanda", "--sparsity", "0.5"], "--calib"),
        (vec!["--method", "magnitude"], "--sparsity"),
        (
            vec!["--method", "magnitude", "--target-macs", "0.5"],
            "--sparsity",
        ),
        (vec!["--method", "magnitude", "--pattern", "4:2"], "N < M"),
        (
            vec!["--method", "magnitude", "--pattern", "two:four"],
            "--pattern",
        ),
        (vec!["--sparsity", "0.5"], "--method magnitude"),
        (
            vec!["--method", "magnitude", "--sparsity", "0.5", "--dry-run"],
            "structured",
        ),
    ] {
        let mut full = vec!["prune", p(&m), "-o", p(&out)];
        full.extend(args);
        assert_fails(&potatura(&full), &[needle]);
    }
}

#[test]
fn image_folders_calibrate_and_evaluate_a_batch_one_model() {
    let dir = tmp("images");
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for k in 0..4u32 {
        let img = image::RgbImage::from_fn(80 + 10 * k, 60, |x, y| {
            image::Rgb([
                (x * 3 + k * 40) as u8,
                (y * 4) as u8,
                ((x ^ y) * 2 + k) as u8,
            ])
        });
        img.save(photos.join(format!("p{k}.png"))).unwrap();
    }
    let out = dir.join("s.onnx");
    let json: serde_json::Value = serde_json::from_str(&stdout(&potatura(&[
        "prune",
        p(&fx("mobilenetv2_mini.onnx")),
        "-o",
        p(&out),
        "--method",
        "sparsegpt",
        "--pattern",
        "2:4",
        "--calib",
        p(&photos),
        "--calib-samples",
        "12",
        "--preprocess",
        "imagenet",
        "--eval-data",
        p(&photos),
        "--eval-samples",
        "16",
        "--latency-seconds",
        "0",
        "--json",
    ])))
    .unwrap();
    // Every layer wide enough is 2:4; narrow and depthwise ones stay dense.
    assert!(json["sparsity"].as_f64().unwrap() > 0.2, "{json}");
    let layers = json["sparse_layers"].as_array().unwrap();
    assert!(layers
        .iter()
        .all(|l| l["sparsity"] == 0.5 || l["dense_reason"].is_string()));
    assert!(json["after"]["agreement"].as_f64().is_some(), "{json}");
    let text = stdout(&potatura(&[
        "eval",
        p(&out),
        "--data",
        p(&photos),
        "--preprocess",
        "imagenet",
        "--samples",
        "8",
        "--reference",
        p(&fx("mobilenetv2_mini.onnx")),
    ]));
    assert!(text.contains("8 samples"), "{text}");
    assert!(text.contains("top-1 agreement"), "{text}");
    // A folder without images, and a model input that is not an image.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_fails(
        &potatura(&["eval", p(&out), "--data", p(&empty)]),
        &["empty", "no .png"],
    );
    assert_fails(
        &potatura(&[
            "eval",
            p(&fx("transformer_mini.onnx")),
            "--data",
            p(&photos),
        ]),
        &["photos", "4-D input"],
    );
}

#[test]
fn recover_distils_a_pruned_model_and_keeps_its_zeros() {
    let dir = tmp("recover");
    let m = example("mnist_cnn.onnx");
    let sparse = dir.join("sparse.onnx");
    stdout(&potatura(&[
        "prune",
        p(&m),
        "-o",
        p(&sparse),
        "--method",
        "magnitude",
        "--sparsity",
        "0.7",
        "--latency-seconds",
        "0",
    ]));
    let out = dir.join("rec.onnx");
    let json: serde_json::Value = serde_json::from_str(&stdout(&potatura(&[
        "recover",
        p(&sparse),
        "-o",
        p(&out),
        "--teacher",
        p(&m),
        "--data",
        p(&example("train-images-2k-idx3-ubyte.gz")),
        "--steps",
        "16",
        "--eval-data",
        p(&example("t10k-images-5k-idx3-ubyte.gz")),
        "--eval-labels",
        p(&example("t10k-labels-5k-idx1-ubyte.gz")),
        "--json",
    ])))
    .unwrap();
    assert_eq!(json["zeros_before"], json["zeros_after"], "{json}");
    assert!(json["zeros_before"].as_u64().unwrap() > 100_000);
    let (b, a) = (
        json["before"]["accuracy"].as_f64().unwrap(),
        json["after"]["accuracy"].as_f64().unwrap(),
    );
    assert!(a > b && a > 0.95, "{b} -> {a}");
    assert_eq!(json["training"]["steps"], 16);
    // BN recalibration alone, as text.
    let text = stdout(&potatura(&[
        "recover",
        p(&sparse),
        "-o",
        p(&dir.join("bn.onnx")),
        "--bn-only",
        "--data",
        p(&example("train-images-2k-idx3-ubyte.gz")),
    ]));
    assert!(text.contains("BatchNormalization statistics"), "{text}");
    // Nothing to learn from; labels that do not fit.
    assert_fails(
        &potatura(&[
            "recover",
            p(&sparse),
            "-o",
            p(&out),
            "--data",
            p(&example("train-images-2k-idx3-ubyte.gz")),
        ]),
        &["--teacher", "--labels"],
    );
    assert_fails(
        &potatura(&[
            "recover",
            p(&sparse),
            "-o",
            p(&out),
            "--labels",
            p(&example("t10k-labels-5k-idx1-ubyte.gz")),
            "--data",
            p(&example("train-images-2k-idx3-ubyte.gz")),
            "--steps",
            "1",
        ]),
        &["5000 labels for 2048 samples"],
    );
}

#[test]
fn prune_recovers_in_rounds() {
    let dir = tmp("rounds");
    let out = dir.join("r.onnx");
    let json: serde_json::Value = serde_json::from_str(&stdout(&potatura(&[
        "prune",
        p(&example("mnist_cnn.onnx")),
        "-o",
        p(&out),
        "--target-macs",
        "0.5",
        "--recover",
        "--rounds",
        "2",
        "--recover-data",
        p(&example("train-images-2k-idx3-ubyte.gz")),
        "--recover-epochs",
        "0.5",
        "--eval-data",
        p(&example("t10k-images-5k-idx3-ubyte.gz")),
        "--eval-labels",
        p(&example("t10k-labels-5k-idx1-ubyte.gz")),
        "--latency-seconds",
        "0",
        "--json",
    ])))
    .unwrap();
    let (b, a) = (&json["before"], &json["after"]);
    assert!(a["macs"].as_f64().unwrap() <= 0.5 * b["macs"].as_f64().unwrap());
    let rec = &json["recovery"];
    assert_eq!(rec["training"]["steps"], 16, "{rec}");
    let right_after = rec["right_after_pruning"]["accuracy"].as_f64().unwrap();
    assert!(
        a["accuracy"].as_f64().unwrap() > right_after.max(0.9),
        "{json}"
    );
    assert_fails(
        &potatura(&[
            "prune",
            p(&example("mnist_cnn.onnx")),
            "-o",
            p(&out),
            "--target-macs",
            "0.5",
            "--rounds",
            "2",
        ]),
        &["--rounds", "--recover"],
    );
}
