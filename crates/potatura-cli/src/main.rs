//! The `potatura` command line: argument parsing and glue only; the logic
//! lives in the `potatura` library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use potatura::exec::Executor;
use potatura::ir::{resolve_input_shapes, InputShape, Model};

/// Prune trained neural networks (ONNX) so they run smaller and faster.
#[derive(Parser)]
#[command(name = "potatura", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-node table of output shapes, parameters and MACs, with totals.
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shapes: ShapeArgs,
    },
    /// Run a model on .npy inputs and write every output as DIR/<output>.npy.
    Run {
        /// The ONNX model.
        model: PathBuf,
        /// An input as NAME=FILE.npy (repeat for several inputs).
        #[arg(long = "input", value_name = "NAME=FILE.npy", required = true)]
        inputs: Vec<String>,
        /// Folder for the outputs (created if missing).
        #[arg(long, value_name = "DIR")]
        output_dir: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
    },
    /// Top-1 accuracy on labelled data, and agreement with a reference model.
    Eval {
        /// The ONNX model.
        model: PathBuf,
        /// Inputs: .npy [N, ...] or MNIST IDX images (.gz or raw).
        #[arg(long)]
        data: PathBuf,
        /// Labels: .npy of ints [N] or MNIST IDX labels.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// A reference (e.g. dense) model to compare outputs with.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Samples per batch (the model's batch dim, if fixed, wins).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shapes: ShapeArgs,
    },
    /// Measure latency on this machine (synthetic inputs), in total and per node.
    Bench {
        /// The ONNX model.
        model: PathBuf,
        /// Least number of timed runs.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Keep timing until this many seconds have passed.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Also print the time of every node, slowest first.
        #[arg(long)]
        nodes: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shapes: ShapeArgs,
    },
}

#[derive(Args)]
struct ShapeArgs {
    /// Fix dynamic input dims: NAME=1,3,320,320 (repeatable). A symbolic
    /// batch dim defaults to 1.
    #[arg(long = "input-shape", value_name = "NAME=D1,D2,...")]
    input_shape: Vec<String>,
}

impl ShapeArgs {
    fn resolve(&self, model: &Model, path: &Path) -> Result<Vec<InputShape>> {
        let overrides = self
            .input_shape
            .iter()
            .map(|s| InputShape::parse_override(s))
            .collect::<potatura::Result<Vec<_>>>()?;
        resolve_input_shapes(model, &overrides).with_context(|| format!("{}", path.display()))
    }

    /// For commands whose data decides the shapes (`run`, `eval`): checks the
    /// flag when given and returns the shapes it fixes, else nothing.
    fn resolve_if_given(&self, model: &Model, path: &Path) -> Result<Vec<InputShape>> {
        if self.input_shape.is_empty() {
            Ok(Vec::new())
        } else {
            self.resolve(model, path)
        }
    }
}

/// Checks fed tensors against shapes fixed with --input-shape.
fn check_fixed(fixed: &[InputShape], name: &str, shape: &[usize]) -> Result<()> {
    if let Some(f) = fixed.iter().find(|f| f.name == name) {
        if f.shape != shape {
            bail!(
                "input '{name}': --input-shape fixes it at {:?} but the data has shape {shape:?}",
                f.shape
            );
        }
    }
    Ok(())
}

fn load(path: &Path) -> Result<Model> {
    Ok(potatura::onnx::load(path)?)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(ioe) = err.downcast_ref::<std::io::Error>() {
                if ioe.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("potatura: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Inspect {
            model,
            json,
            shapes,
        } => inspect(&model, json, &shapes),
        Cmd::Run {
            model,
            inputs,
            output_dir,
            shapes,
        } => run_model(&model, &inputs, &output_dir, &shapes),
        Cmd::Eval {
            model,
            data,
            labels,
            reference,
            batch,
            json,
            shapes,
        } => eval(
            &model,
            &data,
            labels.as_deref(),
            reference.as_deref(),
            batch,
            json,
            &shapes,
        ),
        Cmd::Bench {
            model,
            runs,
            seconds,
            nodes,
            json,
            shapes,
        } => bench(&model, runs, seconds, nodes, json, &shapes),
    }
}

fn bench(
    path: &Path,
    runs: usize,
    seconds: f64,
    nodes: bool,
    json: bool,
    shapes: &ShapeArgs,
) -> Result<ExitCode> {
    if !(seconds.is_finite() && seconds >= 0.0) {
        bail!("--seconds {seconds}: expected a non-negative number of seconds");
    }
    let model = load(path)?;
    let inputs = shapes.resolve(&model, path)?;
    let exec = Executor::new(&model).with_context(|| format!("{}", path.display()))?;
    let lat = potatura::report::latency::measure(
        &exec,
        &inputs,
        runs,
        std::time::Duration::from_secs_f64(seconds),
    )
    .with_context(|| format!("running {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &lat)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let shapes: Vec<String> = inputs
        .iter()
        .map(|i| format!("{}={:?}", i.name, i.shape))
        .collect();
    writeln!(
        out,
        "{}: median {:.3} ms, min {:.3} ms over {} runs ({} threads; {})",
        path.display(),
        lat.median_ms,
        lat.min_ms,
        lat.runs,
        lat.threads,
        shapes.join(" ")
    )?;
    if nodes {
        let total: f64 = lat.nodes.iter().map(|n| n.micros).sum();
        let mut rows = lat.nodes.clone();
        rows.sort_by(|a, b| b.micros.total_cmp(&a.micros));
        writeln!(out, "{:>10}  {:>6}  {:<20}  node", "us", "share", "op")?;
        for r in rows {
            writeln!(
                out,
                "{:>10.1}  {:>5.1}%  {:<20}  {}",
                r.micros,
                100.0 * r.micros / total.max(1e-9),
                r.op,
                r.node
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn inspect(path: &Path, json: bool, shapes: &ShapeArgs) -> Result<ExitCode> {
    let model = load(path)?;
    let inputs = shapes.resolve(&model, path)?;
    let s = potatura::report::summarize(&model, &inputs)
        .with_context(|| format!("{}", path.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let file_size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    writeln!(
        out,
        "model: {}  (opset {}, {} nodes, {} bytes)",
        path.display(),
        model.opset(),
        model.graph.nodes.len(),
        file_size
    )?;
    for (name, shape) in &s.inputs {
        writeln!(out, "input: {name} {shape:?}")?;
    }
    let w = s
        .nodes
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 48);
    writeln!(
        out,
        "{:<w$}  {:<20}  {:<22}  {:>10}  {:>12}",
        "node", "op", "output shape", "params", "MACs"
    )?;
    for r in &s.nodes {
        let shape = r
            .output_shapes
            .first()
            .map(|s| format!("{s:?}"))
            .unwrap_or_default();
        let name: String = if r.name.len() > w {
            format!("…{}", &r.name[r.name.len() - (w - 1)..])
        } else {
            r.name.clone()
        };
        writeln!(
            out,
            "{name:<w$}  {:<20}  {shape:<22}  {:>10}  {:>12}",
            r.op, r.params, r.macs
        )?;
    }
    writeln!(
        out,
        "total: {} params ({}), {} MACs ({}MACs)",
        s.params,
        human(s.params),
        s.macs,
        human(s.macs)
    )?;
    Ok(ExitCode::SUCCESS)
}

fn run_model(
    path: &Path,
    inputs: &[String],
    out_dir: &Path,
    shapes: &ShapeArgs,
) -> Result<ExitCode> {
    let model = load(path)?;
    let fixed = shapes.resolve_if_given(&model, path)?;
    let exec = Executor::new(&model).with_context(|| format!("{}", path.display()))?;
    let mut feeds = Vec::new();
    for spec in inputs {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--input '{spec}': expected NAME=FILE.npy");
        };
        let t = potatura::data::npy::read(Path::new(file))?;
        check_fixed(&fixed, name, t.shape())?;
        feeds.push((name.to_string(), t));
    }
    let outs = exec
        .run(feeds)
        .with_context(|| format!("running {}", path.display()))?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for (name, t) in outs {
        let file = out_dir.join(format!("{}.npy", name.replace([':', '/'], "_")));
        potatura::data::npy::write(&file, &t)?;
        println!(
            "{} {:?} {} -> {}",
            name,
            t.shape(),
            t.dtype(),
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn fixed_batch(exec: &Executor) -> Option<usize> {
    use potatura::ir::Dim;
    match exec.inputs().first()?.shape.as_ref()?.first()? {
        Dim::Known(k) => Some(*k),
        _ => None,
    }
}

fn eval(
    path: &Path,
    data: &Path,
    labels: Option<&Path>,
    reference: Option<&Path>,
    batch: usize,
    json: bool,
    shapes: &ShapeArgs,
) -> Result<ExitCode> {
    let model = load(path)?;
    let fixed = shapes.resolve_if_given(&model, path)?;
    let exec = Executor::new(&model).with_context(|| format!("{}", path.display()))?;
    let x = potatura::data::load_tensor(data)?;
    if let (Some(f), Some(spec)) = (fixed.first(), exec.inputs().first()) {
        check_fixed(
            &fixed,
            &spec.name,
            &[&[f.shape[0]], &x.shape()[1..]].concat(),
        )?;
    }
    let batch = fixed_batch(&exec).unwrap_or(batch);
    let t0 = std::time::Instant::now();
    let pred = potatura::eval::predict(&exec, &x, batch)
        .with_context(|| format!("running {}", path.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    let labels = labels.map(potatura::data::load_tensor).transpose()?;
    let label_vals = labels.as_ref().map(|l| l.to_i64_vec());
    let refp = match reference {
        Some(r) => {
            let rm = load(r)?;
            let re = Executor::new(&rm).with_context(|| format!("{}", r.display()))?;
            Some(potatura::eval::predict(
                &re,
                &x,
                fixed_batch(&re).unwrap_or(batch),
            )?)
        }
        None => None,
    };
    let rep = potatura::eval::score(&pred, label_vals.as_deref(), refp.as_deref())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: {} samples in {:.2} s ({:.0} samples/s)",
        path.display(),
        rep.samples,
        secs,
        rep.samples as f64 / secs
    );
    if let Some(a) = rep.accuracy {
        println!("top-1 accuracy: {:.2}%", a * 100.0);
    }
    if let (Some(a), Some(kl), Some(re)) = (rep.agreement, rep.mean_kl, rep.relative_error) {
        println!(
            "top-1 agreement with reference: {:.2}%  mean KL: {kl:.3e}  relative error: {re:.3e}",
            a * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}
