//! The `potatura` command line: argument parsing and glue only; the logic
//! lives in the `potatura` library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
/// mimalloc keeps freed memory for reuse: training allocates and frees the
/// same large activation buffers every step, and the system allocator
/// returned them to the OS each time (page faults, TLB shootdowns: MNIST
/// CNN training 216 samples/s with glibc, about 390 with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (v2 option enum): -1 never returns
/// freed memory to the OS, which suits a short-lived CLI process
/// (MobileNetV2-style training: 245 -> 312 samples/s).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn keep_freed_memory() {
    // SAFETY: called first thing in `main`, before any other thread runs
    // (mi_option_set is not thread safe); 15 is purge_delay in the v2 enum
    // this crate builds.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

use clap::{Args, FromArgMatches, Parser, Subcommand};
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
    Eval(EvalArgs),
    /// Structured pruning: remove whole channels, heads and filters; the
    /// result is a smaller dense model. Prints params, MACs, size, latency
    /// (and accuracy with --eval-data) before and after.
    Prune(Box<PruneArgs>),
    /// Recover a pruned model's accuracy by training: label-free
    /// distillation from the unpruned model (--teacher), cross-entropy with
    /// --labels, or both. Pruned (zero) weights stay zero.
    Recover(Box<RecoverArgs>),
    /// Channel groups: channels that must be removed together, and the
    /// frozen ones with the reason.
    Groups {
        /// The ONNX model.
        model: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Also list frozen groups one by one (default: summarised).
        #[arg(long)]
        all: bool,
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
struct PruneArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Where to write the pruned model.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "OUT.onnx",
        required_unless_present = "dry_run"
    )]
    output: Option<PathBuf>,
    /// What to remove. Structured (a smaller dense model): `channel`
    /// (filters, channels, heads, FFN units) or `block` (whole residual
    /// blocks y = x + f(x) become y = x, ranked by the output change each
    /// removal causes on --calib data, else a weight-magnitude proxy).
    /// Unstructured (exact zeros, same shapes; with --sparsity or
    /// --pattern N:M): `magnitude`, `wanda` (needs --calib), `sparsegpt`
    /// (second-order, reconstructs the kept weights; needs --calib),
    /// `random`.
    #[arg(long, default_value = "channel", value_parser = ["channel", "block", "magnitude", "wanda", "sparsegpt", "random"])]
    method: String,
    /// Unstructured methods: the fraction of weights to zero.
    #[arg(long, value_name = "F", group = "target")]
    sparsity: Option<f64>,
    /// Unstructured methods: `unstructured` or `N:M` (at most N non-zeros in
    /// every M consecutive input channels, e.g. 2:4).
    #[arg(long, default_value = "unstructured", value_name = "PATTERN")]
    pattern: String,
    /// Unstructured methods: zero whole blocks of RxC (rows x input
    /// channels), e.g. 1x4 or 4x1.
    #[arg(long, value_name = "RxC")]
    block: Option<String>,
    /// Unstructured methods: how the sparsity is spread over layers.
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "global", "erk", "owl"])]
    allocation: String,
    /// Unstructured methods: compare scores within each output `row` or
    /// the whole `layer` (default: row for wanda, layer otherwise).
    #[arg(long, value_parser = ["row", "layer"])]
    granularity: Option<String>,
    /// Unstructured methods: per-layer sparsity 'GLOB=F' (repeatable).
    #[arg(long, value_name = "GLOB=F")]
    layer_sparsity: Vec<String>,
    /// Unstructured methods: keep the first weight layer dense.
    #[arg(long)]
    skip_first: bool,
    /// Unstructured methods: keep the last weight layer dense.
    #[arg(long)]
    skip_last: bool,
    /// Unstructured methods: rows with fewer inputs stay dense (protects
    /// tiny, sensitive layers such as a 1-channel first conv).
    #[arg(long, default_value_t = 32, value_name = "N")]
    min_inputs: usize,
    /// SparseGPT: dampening added to the Hessian diagonal, as a fraction
    /// of its mean (0.2 measured best with the dense-output fit: MiniLM
    /// with 64 sentences, 0.93 / 0.88 cosine at 50% / 2:4 against 0.89 /
    /// 0.83 at 0.01; the MNIST CNN does not care).
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    damp: f64,
    /// SparseGPT: columns handled per block.
    #[arg(long, default_value_t = 128, value_name = "N")]
    gpt_block: usize,
    /// SparseGPT: fit each layer to its own output on the already-pruned
    /// inputs (the original algorithm) instead of to the dense model's
    /// output (the default, which measured better).
    #[arg(long)]
    gpt_own_target: bool,
    /// SparseGPT: a calibration input that masks padding tokens (e.g.
    /// attention_mask); masked tokens do not count in the statistics.
    #[arg(long, value_name = "INPUT")]
    calib_mask: Option<String>,
    /// Keep at most this fraction of the MACs (e.g. 0.5).
    #[arg(long, value_name = "F", group = "target")]
    target_macs: Option<f64>,
    /// Run in at most this fraction of the dense model's latency measured
    /// on this machine with potatura's executor: a per-node latency table
    /// ranks channels by importance per unit of time they cost; the model
    /// is then measured and pruned again until it meets the target (at most
    /// 4 rounds).
    #[arg(long, value_name = "F", group = "target")]
    target_latency: Option<f64>,
    /// Keep at most this fraction of the parameters.
    #[arg(long, value_name = "F", group = "target")]
    target_params: Option<f64>,
    /// Remove this fraction of every layer's channels.
    #[arg(long, value_name = "F", group = "target")]
    ratio: Option<f64>,
    /// Remove this fraction of all prunable channels, ranked globally.
    #[arg(long, value_name = "F", group = "target")]
    global_ratio: Option<f64>,
    /// Apply a saved plan (from --dry-run) instead of choosing.
    #[arg(long, value_name = "PLAN.json", group = "target")]
    plan: Option<PathBuf>,
    /// Importance criterion.
    #[arg(long, default_value = "l2", value_parser = ["l1", "l2", "bn-scale", "fpgm", "lamp", "random", "activation", "wanda", "taylor"])]
    importance: String,
    /// How a channel's scores over its coupled layers combine.
    #[arg(long, default_value = "mean", value_parser = ["mean", "sum", "max"])]
    reduce: String,
    /// Calibration data for the data-driven methods: a .npy, an MNIST IDX
    /// file, a folder of images (see --preprocess; more samples than photos
    /// become random crops and flips), or an .npz with one array per input.
    /// A model with several inputs takes one file per input: --calib
    /// NAME=FILE (repeatable).
    #[arg(long, value_name = "[NAME=]PATH")]
    calib: Vec<String>,
    /// Use at most this many calibration samples (views of an image folder).
    #[arg(long, default_value_t = 256)]
    calib_samples: usize,
    #[command(flatten)]
    images: ImageArgs,
    /// Kept channel counts are multiples of N. The default 8 is what SIMD
    /// CPUs and tensor cores like: at half the MACs MobileNetV2 runs 1.73x
    /// faster in ONNX Runtime with it, and slower than dense without it.
    #[arg(long, default_value_t = 8, value_name = "N")]
    round_to: usize,
    /// No layer loses more than this fraction of its channels.
    #[arg(long, default_value_t = 0.9, value_name = "F")]
    max_layer_ratio: f64,
    /// Leave layers whose node name matches this glob alone (repeatable).
    #[arg(long, value_name = "GLOB")]
    ignore: Vec<String>,
    /// Prune in N steps, re-scoring after each.
    #[arg(long, default_value_t = 1, value_name = "N")]
    steps: usize,
    /// Seed for --importance random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the plan as JSON (to -o, or stdout) and no model.
    #[arg(long)]
    dry_run: bool,
    /// Data to measure accuracy (with --eval-labels) or agreement with the
    /// unpruned model before and after (a file or an image folder).
    #[arg(long, value_name = "PATH")]
    eval_data: Option<PathBuf>,
    /// An image folder as --eval-data: this many random crops, none shared
    /// with the calibration views (default: one center crop per photo).
    #[arg(long, value_name = "N")]
    eval_samples: Option<usize>,
    /// Labels for --eval-data.
    #[arg(long, value_name = "FILE")]
    eval_labels: Option<PathBuf>,
    /// Seconds spent measuring latency of each model (0: skip).
    #[arg(long, default_value_t = 1.0)]
    latency_seconds: f64,
    /// After pruning, recover by label-free distillation from the unpruned
    /// model on --recover-data (default: the --calib data).
    #[arg(long)]
    recover: bool,
    /// Training data for --recover ([NAME=]PATH, repeatable).
    #[arg(long, value_name = "[NAME=]PATH")]
    recover_data: Vec<String>,
    /// Passes over the --recover data.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    recover_epochs: f64,
    /// Peak learning rate of --recover.
    #[arg(long, default_value_t = 0.005, value_name = "F")]
    recover_lr: f32,
    /// With --recover and a MACs or parameter target: prune in K rounds,
    /// each to the K-th root of the target, recovering after each (the
    /// --recover-epochs are shared out).
    #[arg(long, default_value_t = 1, value_name = "K")]
    rounds: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    shapes: ShapeArgs,
}

/// Arguments of `potatura recover`.
#[derive(Args, Debug)]
struct RecoverArgs {
    /// The pruned ONNX model.
    model: PathBuf,
    /// Output ONNX file.
    #[arg(short, long)]
    output: PathBuf,
    /// The unpruned model to distil from (no labels needed).
    #[arg(long, value_name = "DENSE.onnx")]
    teacher: Option<PathBuf>,
    /// Training data: a .npy, .npz, MNIST IDX file or image folder;
    /// NAME=PATH per input for several inputs (repeatable).
    #[arg(long, value_name = "[NAME=]PATH", required = true)]
    data: Vec<String>,
    /// Labels for --data (.npy of ints or MNIST IDX labels).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// An image folder as --data: this many views (random crops and flips
    /// beyond one center crop per photo).
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    #[command(flatten)]
    train: TrainArgs,
    /// Continue an interrupted run from its checkpoint (give the same data
    /// and options).
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    /// Only re-estimate BatchNormalization statistics on --data (forward
    /// passes, no training).
    #[arg(long)]
    bn_only: bool,
    /// Data to measure accuracy (with --eval-labels) or agreement with the
    /// teacher before and after.
    #[arg(long, value_name = "PATH")]
    eval_data: Option<PathBuf>,
    /// Labels for --eval-data.
    #[arg(long, value_name = "FILE")]
    eval_labels: Option<PathBuf>,
    /// An image folder as --eval-data: this many random crops.
    #[arg(long, value_name = "N")]
    eval_samples: Option<usize>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    shapes: ShapeArgs,
}

/// Training settings shared by `recover` and `prune --recover`.
#[derive(Args, Debug, Clone)]
struct TrainArgs {
    /// Passes over the training data (fractions allowed).
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "F",
        conflicts_with = "steps"
    )]
    epochs: f64,
    /// Optimizer steps instead of --epochs.
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Samples per step.
    #[arg(long, default_value_t = 64, value_name = "N")]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.005, value_name = "F")]
    lr: f32,
    /// Optimizer.
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adamw"])]
    optimizer: String,
    /// SGD momentum (Nesterov).
    #[arg(long, default_value_t = 0.9, value_name = "F")]
    momentum: f32,
    /// Weight decay (weights only, not biases or norms).
    #[arg(long, default_value_t = 5e-4, value_name = "F")]
    weight_decay: f32,
    /// Learning-rate schedule.
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "constant", "one-cycle", "step"])]
    schedule: String,
    /// Warm-up steps (linear).
    #[arg(long, default_value_t = 0, value_name = "N")]
    warmup: usize,
    /// Clip the global gradient norm.
    #[arg(long, value_name = "F")]
    clip: Option<f32>,
    /// Distillation temperature.
    #[arg(long, default_value_t = 2.0, value_name = "T")]
    temperature: f32,
    /// With both a teacher and labels: loss = alpha KD + (1 - alpha) CE.
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    alpha: f32,
    /// Augment image batches with random horizontal flips.
    #[arg(long)]
    flip: bool,
    /// Augment image batches with random crops after zero padding by N.
    #[arg(long, default_value_t = 0, value_name = "N")]
    crop_pad: usize,
    /// Seed of shuffling, augmentation and dropout (same seed, same bytes).
    #[arg(long = "train-seed", default_value_t = 0, value_name = "N")]
    train_seed: u64,
    /// Gradual pruning while training: magnitude-prune every weight layer
    /// to this final sparsity on the cubic schedule of Zhu and Gupta.
    #[arg(long, value_name = "F")]
    gradual: Option<f64>,
    /// Pattern of --gradual: `unstructured` or N:M (e.g. 2:4; the kept
    /// count per group steps down to N).
    #[arg(long, default_value = "unstructured", value_name = "PATTERN")]
    gradual_pattern: String,
    /// --gradual starts at this fraction of the steps.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    gradual_start: f64,
    /// --gradual reaches its final sparsity at this fraction of the steps.
    #[arg(long, default_value_t = 0.7, value_name = "F")]
    gradual_end: f64,
    /// Prunings of --gradual (evenly spaced).
    #[arg(long, default_value_t = 20, value_name = "N")]
    gradual_prunings: usize,
    /// Prune at initialization with SNIP (|gradient x weight| on one batch,
    /// one global threshold) to this sparsity, then train.
    #[arg(long, value_name = "F")]
    snip: Option<f64>,
    /// --gradual and --snip leave layers with fewer inputs per output dense.
    #[arg(long = "train-min-inputs", default_value_t = 32, value_name = "N")]
    train_min_inputs: usize,
    /// Write a checkpoint (OUT.ckpt) every N steps (0: only on Ctrl-C);
    /// `recover --resume OUT.ckpt` continues from it with the same bytes as
    /// an uninterrupted run.
    #[arg(long, default_value_t = 500, value_name = "N")]
    checkpoint_every: usize,
    /// Also distil this intermediate tensor (by name) by MSE against the
    /// teacher's, e.g. a detector's neck outputs (repeatable; its shape
    /// must be the same in both models).
    #[arg(long = "feature", value_name = "TENSOR")]
    features: Vec<String>,
    /// Weight of each --feature loss.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    feature_weight: f32,
    /// Time budget: after timing the first steps, shorten the run (and its
    /// learning-rate schedule) to end within this many seconds.
    #[arg(long, value_name = "S")]
    max_seconds: Option<f64>,
    /// Keep BatchNormalization's running statistics frozen and use them
    /// while training (small batches, detectors); its scale and bias still
    /// train.
    #[arg(long)]
    freeze_bn: bool,
    /// A model input holding a [batch, seq] token mask: MSE on [batch,
    /// seq, ...] outputs and features then leaves padding positions out
    /// (default: the input named attention_mask, when it holds 0s and 1s).
    #[arg(long, value_name = "INPUT")]
    loss_mask: Option<String>,
}

impl TrainArgs {
    fn options(&self, samples: usize) -> Result<potatura::train::RecoverOptions> {
        use potatura::train::optim::{OptimKind, Schedule};
        let batch = self.batch.max(1);
        let steps = match self.steps {
            Some(s) => s,
            None => ((self.epochs * samples as f64) / batch as f64)
                .ceil()
                .max(1.0) as usize,
        };
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be a positive number");
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            bail!("--alpha must be between 0 and 1");
        }
        Ok(potatura::train::RecoverOptions {
            steps,
            batch,
            lr: self.lr,
            optimizer: if self.optimizer == "adamw" {
                OptimKind::AdamW {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                }
            } else {
                OptimKind::Sgd {
                    momentum: self.momentum,
                    nesterov: self.momentum > 0.0,
                }
            },
            weight_decay: self.weight_decay,
            schedule: serde_json::from_str::<Schedule>(&format!("\"{}\"", self.schedule))?,
            warmup: self.warmup,
            clip: self.clip,
            temperature: self.temperature,
            alpha: self.alpha,
            augment: potatura::train::Augment {
                flip: self.flip,
                crop_pad: self.crop_pad,
            },
            seed: self.train_seed,
            gradual: match self.gradual {
                Some(f) => Some(self.gradual_schedule(f, steps)?),
                None => None,
            },
            snip: self.snip,
            min_inputs: self.train_min_inputs,
            features: self.features.clone(),
            feature_weight: self.feature_weight,
            max_seconds: self.max_seconds,
            freeze_bn: self.freeze_bn,
            loss_mask: self.loss_mask.clone(),
        })
    }

    fn gradual_schedule(&self, sparsity: f64, steps: usize) -> Result<potatura::train::Gradual> {
        use potatura::prune::unstructured::Pattern;
        let pattern = if self.gradual_pattern == "unstructured" {
            Pattern::Unstructured
        } else {
            let bad = || {
                anyhow::anyhow!(
                    "--gradual-pattern '{}': expected unstructured or N:M like 2:4",
                    self.gradual_pattern
                )
            };
            let (n, m) = self.gradual_pattern.split_once(':').ok_or_else(bad)?;
            let (n, m): (usize, usize) = (
                n.trim().parse().map_err(|_| bad())?,
                m.trim().parse().map_err(|_| bad())?,
            );
            if n == 0 || n >= m {
                return Err(bad());
            }
            Pattern::NM { n, m }
        };
        let sparsity = match pattern {
            Pattern::NM { n, m } => 1.0 - n as f64 / m as f64,
            _ => sparsity,
        };
        if !(0.0..1.0).contains(&sparsity) {
            bail!("--gradual must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.gradual_start)
            || !(self.gradual_start..=1.0).contains(&self.gradual_end)
        {
            bail!("--gradual-start and --gradual-end are fractions of the steps, start <= end");
        }
        let start = (self.gradual_start * steps as f64) as usize;
        let end = ((self.gradual_end * steps as f64) as usize)
            .max(start)
            .min(steps.saturating_sub(1));
        Ok(potatura::train::Gradual {
            sparsity,
            initial: 0.0,
            pattern,
            start,
            end,
            every: ((end - start) / self.gradual_prunings.max(1)).max(1),
        })
    }
}

/// Trains with a progress bar (loss, accuracy with labels, samples/s,
/// ETA); Ctrl-C stops after the current step and keeps what was learnt.
fn train_with_progress(
    student: &Model,
    teacher: Option<&Model>,
    data: &potatura::data::Feeds,
    labels: Option<&[i64]>,
    opts: &potatura::train::RecoverOptions,
    ckpt: (&Path, usize, Option<potatura::train::Checkpoint>),
) -> Result<(Model, TrainStats)> {
    let (ckpt_path, every, resume) = ckpt;
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    let pb = indicatif::ProgressBar::new(opts.steps as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} training [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let t0 = std::time::Instant::now();
    let (mut seen, mut last_loss, mut steps) = (0usize, f32::NAN, 0usize);
    let mut acc_avg: Option<f32> = None;
    if let Some(c) = &resume {
        pb.set_position(c.step as u64);
    }
    let mut save = |c: &potatura::train::Checkpoint| c.save(ckpt_path);
    let mut warm = None;
    let mut on_step = |r: &potatura::train::StepReport| {
        seen += r.samples;
        steps = r.step;
        if r.step == WARM_UP_STEPS {
            warm = Some((std::time::Instant::now(), seen));
        }
        last_loss = r.loss;
        if let Some(a) = r.accuracy {
            acc_avg = Some(acc_avg.map_or(a, |m| 0.95 * m + 0.05 * a));
        }
        let rate = seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        pb.set_position(r.step as u64);
        pb.set_message(match acc_avg {
            Some(a) => format!(
                "loss {:.4}  acc {:.2}%  {rate:.0} samples/s",
                r.loss,
                a * 100.0
            ),
            None => format!("loss {:.4}  {rate:.0} samples/s", r.loss),
        });
        !STOP.load(Ordering::SeqCst)
    };
    let model = potatura::train::recover_with(
        student,
        teacher,
        data,
        labels,
        opts,
        potatura::train::Hooks {
            on_step: &mut on_step,
            checkpoint_every: every,
            on_checkpoint: &mut save,
            resume,
        },
    )?;
    pb.finish_and_clear();
    let interrupted = STOP.load(Ordering::SeqCst);
    if interrupted {
        eprintln!(
            "interrupted: checkpoint written to {}; continue with --resume {}",
            ckpt_path.display(),
            ckpt_path.display()
        );
    } else if ckpt_path.exists() {
        // The run finished: its checkpoint is stale.
        let _ = std::fs::remove_file(ckpt_path);
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((
        model,
        TrainStats {
            steps,
            planned_steps: opts.steps,
            seconds: secs,
            samples_per_second: seen as f64 / secs.max(1e-9),
            steady_samples_per_second: steady_rate(warm, seen),
            final_loss: last_loss,
            interrupted,
        },
    ))
}

/// Where a run writing OUT keeps its checkpoint: OUT.ckpt.
fn checkpoint_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".ckpt");
    PathBuf::from(s)
}

/// What a training run did.
#[derive(serde::Serialize, Debug, Clone)]
struct TrainStats {
    steps: usize,
    planned_steps: usize,
    seconds: f64,
    samples_per_second: f64,
    /// Samples/s over the steps after the first [`WARM_UP_STEPS`] (which
    /// pay for first-touch page faults and set-up): the rate a longer run
    /// settles at, and the one benchmarks compare. `None` for shorter runs.
    steady_samples_per_second: Option<f64>,
    final_loss: f32,
    interrupted: bool,
}

/// Steps left out of [`TrainStats::steady_samples_per_second`].
const WARM_UP_STEPS: usize = 3;

impl TrainStats {
    /// "12.3 s (456 samples/s; 470 after 3 warm-up steps)"
    fn timing(&self) -> String {
        let steady = self
            .steady_samples_per_second
            .map(|r| format!("; {r:.0} after {WARM_UP_STEPS} warm-up steps"))
            .unwrap_or_default();
        format!(
            "{:.1} s ({:.0} samples/s{steady})",
            self.seconds, self.samples_per_second
        )
    }
}

/// Samples/s after the warm-up steps: `warm` holds the time and the samples
/// seen when step [`WARM_UP_STEPS`] ended.
fn steady_rate(warm: Option<(std::time::Instant, usize)>, seen: usize) -> Option<f64> {
    let (t, at) = warm?;
    let secs = t.elapsed().as_secs_f64();
    (seen > at && secs > 0.0).then(|| (seen - at) as f64 / secs)
}

/// Accuracy (with labels) and agreement (with reference predictions).
fn score_model(
    model: &Model,
    x: &potatura::ir::Tensor,
    labels: Option<&[i64]>,
    reference: Option<&[Vec<f32>]>,
) -> Result<(potatura::eval::EvalReport, Vec<Vec<f32>>)> {
    let exec = Executor::new(model)?;
    let p = potatura::eval::predict(&exec, x, fixed_batch(&exec).unwrap_or(64))?;
    Ok((potatura::eval::score(&p, labels, reference)?, p))
}

#[derive(serde::Serialize)]
struct RecoverReport {
    model: String,
    output: String,
    teacher: Option<String>,
    training: Option<TrainStats>,
    zeros_before: usize,
    zeros_after: usize,
    teacher_eval: Option<potatura::eval::EvalReport>,
    before: Option<potatura::eval::EvalReport>,
    after: Option<potatura::eval::EvalReport>,
}

/// Zero weights over all float initializers.
fn count_zeros(m: &Model) -> usize {
    m.graph
        .initializers
        .iter()
        .filter_map(|t| t.to_tensor().ok())
        .filter_map(|t| {
            t.f32s()
                .ok()
                .map(|v| v.iter().filter(|&&x| x == 0.0).count())
        })
        .sum()
}

fn recover_cmd(a: &RecoverArgs) -> Result<ExitCode> {
    let path = a.model.as_path();
    let model = load(path)?;
    let inputs = a.shapes.resolve(&model, path)?;
    let teacher = a.teacher.as_deref().map(load).transpose()?;
    if teacher.is_none() && a.labels.is_none() && !a.bn_only {
        bail!("nothing to learn from: give --teacher DENSE.onnx (label-free distillation) or --labels FILE");
    }
    let opts_load = potatura::data::LoadOptions {
        samples: a.samples,
        images: a.images.spec()?,
        views: potatura::data::images::Views {
            count: a.samples,
            seed: a.train.train_seed,
            center_first: true,
        },
    };
    let sp = stage("loading data");
    let data = potatura::data::load_feeds(&inputs, &a.data, &opts_load).context("--data")?;
    let labels = a
        .labels
        .as_deref()
        .map(potatura::data::load_tensor)
        .transpose()
        .context("--labels")?
        .map(|l| l.to_i64_vec());
    let eval = eval_set(
        &inputs,
        a.eval_data.as_deref(),
        a.eval_labels.as_deref(),
        &a.images,
        a.eval_samples,
    )?;
    sp.finish_and_clear();
    let (recovered, training) = if a.bn_only {
        let sp = stage("re-estimating BatchNormalization statistics");
        let m = potatura::train::recalibrate_bn(&model, &data, a.train.batch)?;
        sp.finish_and_clear();
        (m, None)
    } else {
        let opts = a.train.options(data.samples())?;
        let ckpt = checkpoint_path(&a.output);
        let (m, st) =
            train_with_progress(&model, teacher.as_ref(), &data, labels.as_deref(), &opts, {
                let resume = a
                    .resume
                    .as_deref()
                    .map(potatura::train::Checkpoint::load)
                    .transpose()
                    .context("--resume")?;
                (&ckpt, a.train.checkpoint_every, resume)
            })?;
        (m, Some(st))
    };
    potatura::onnx::save(&recovered, &a.output)?;
    let mut report = RecoverReport {
        model: path.display().to_string(),
        output: a.output.display().to_string(),
        teacher: a.teacher.as_ref().map(|t| t.display().to_string()),
        training,
        zeros_before: count_zeros(&model),
        zeros_after: count_zeros(&recovered),
        teacher_eval: None,
        before: None,
        after: None,
    };
    if let Some((x, l)) = &eval {
        let sp = stage("evaluating");
        let reference = match &teacher {
            Some(t) => {
                let (r, p) = score_model(t, x, l.as_deref(), None)?;
                report.teacher_eval = Some(r);
                Some(p)
            }
            None => None,
        };
        report.before = Some(score_model(&model, x, l.as_deref(), reference.as_deref())?.0);
        report.after = Some(score_model(&recovered, x, l.as_deref(), reference.as_deref())?.0);
        sp.finish_and_clear();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} -> {}", report.model, report.output);
    if let Some(t) = &report.training {
        println!(
            "trained {} of {} steps in {}, final loss {:.4}{}",
            t.steps,
            t.planned_steps,
            t.timing(),
            t.final_loss,
            if t.interrupted {
                " (interrupted: the model so far was saved)"
            } else {
                ""
            }
        );
    } else {
        println!(
            "BatchNormalization statistics re-estimated on {} samples",
            data.samples()
        );
    }
    println!(
        "zero weights: {} before, {} after (masks hold)",
        report.zeros_before, report.zeros_after
    );
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", v * 100.0));
    if let (Some(b), Some(af)) = (&report.before, &report.after) {
        println!(
            "{:<12} {:>10} {:>10} {:>10}",
            "", "teacher", "pruned", "recovered"
        );
        if b.accuracy.is_some() {
            println!(
                "{:<12} {:>10} {:>10} {:>10}",
                "accuracy",
                pct(report.teacher_eval.as_ref().and_then(|t| t.accuracy)),
                pct(b.accuracy),
                pct(af.accuracy)
            );
        }
        if b.agreement.is_some() {
            println!(
                "{:<12} {:>10} {:>10} {:>10}",
                "agreement",
                "",
                pct(b.agreement),
                pct(af.agreement)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `potatura eval`.
#[derive(Args, Debug)]
struct EvalArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Inputs: .npy [N, ...], .npz with one array, MNIST IDX images
    /// (.gz or raw), or a folder of images (see --preprocess).
    #[arg(long)]
    data: PathBuf,
    /// An image folder as --data: this many random crops (default: one
    /// center crop per photo).
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    #[command(flatten)]
    images: ImageArgs,
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
}

#[derive(Args, Debug, Clone)]
struct ImageArgs {
    /// Image folders: preprocessing preset, `unit` (pixels / 255) or
    /// `imagenet` (short side to 256/224 of the crop, center crop to the
    /// model's input size, ImageNet mean and std, RGB).
    #[arg(long, default_value = "unit", value_parser = ["unit", "imagenet"], value_name = "PRESET")]
    preprocess: String,
    /// Image folders: short side before the center crop, in pixels.
    #[arg(long, value_name = "PX")]
    resize: Option<usize>,
    /// Image folders: per-channel mean subtracted after scaling.
    #[arg(long, value_delimiter = ',', value_name = "R,G,B")]
    mean: Option<Vec<f32>>,
    /// Image folders: per-channel std divided after the mean.
    #[arg(long, value_delimiter = ',', value_name = "R,G,B")]
    std: Option<Vec<f32>>,
    /// Image folders: pixel scale (default 1/255; 1 keeps 0-255).
    #[arg(long, value_name = "F")]
    pixel_scale: Option<f32>,
    /// Image folders: feed channels as BGR.
    #[arg(long)]
    bgr: bool,
    /// Image folders: tensor layout (default: read from the model input).
    #[arg(long, value_parser = ["nchw", "nhwc"])]
    layout: Option<String>,
}

impl ImageArgs {
    fn spec(&self) -> Result<potatura::data::images::ImageSpec> {
        use potatura::data::images::{ImageSpec, Layout};
        let mut s = match self.preprocess.as_str() {
            "imagenet" => ImageSpec::imagenet(),
            _ => ImageSpec::default(),
        };
        let three = |v: &Option<Vec<f32>>, what: &str| -> Result<Option<[f32; 3]>> {
            match v.as_deref() {
                None => Ok(None),
                Some([x]) => Ok(Some([*x; 3])),
                Some([a, b, c]) => Ok(Some([*a, *b, *c])),
                Some(o) => bail!("--{what}: give 1 or 3 values, not {}", o.len()),
            }
        };
        if let Some(m) = three(&self.mean, "mean")? {
            s.mean = m;
        }
        if let Some(d) = three(&self.std, "std")? {
            if d.contains(&0.0) {
                bail!("--std: values must be non-zero");
            }
            s.std = d;
        }
        s.resize = self.resize;
        if let Some(k) = self.pixel_scale {
            s.scale = k;
        }
        s.bgr = self.bgr;
        s.layout = match self.layout.as_deref() {
            Some("nhwc") => Some(Layout::Nhwc),
            Some(_) => Some(Layout::Nchw),
            None => None,
        };
        Ok(s)
    }
}

/// Loads one data PATH (file or image folder) for a single-input model.
fn load_one(
    inputs: &[potatura::ir::InputShape],
    path: &Path,
    images: &ImageArgs,
    views: potatura::data::images::Views,
) -> Result<potatura::ir::Tensor> {
    if inputs.len() != 1 {
        bail!(
            "{}: this command feeds one input, but the model has {}",
            path.display(),
            inputs.len()
        );
    }
    let opts = potatura::data::LoadOptions {
        samples: if path.is_dir() { views.count } else { None },
        images: images.spec()?,
        views,
    };
    let spec = [path.display().to_string()];
    let mut f = potatura::data::load_feeds(inputs, &spec, &opts)?;
    Ok(f.0.remove(0).1)
}

/// The `--eval-data` set (file or image folder) and its `--eval-labels`.
fn eval_set(
    inputs: &[potatura::ir::InputShape],
    data: Option<&Path>,
    labels: Option<&Path>,
    images: &ImageArgs,
    samples: Option<usize>,
) -> Result<Option<(potatura::ir::Tensor, Option<Vec<i64>>)>> {
    let Some(d) = data else {
        return Ok(None);
    };
    let x = load_one(inputs, d, images, eval_views(samples)).context("--eval-data")?;
    let labels = labels
        .map(potatura::data::load_tensor)
        .transpose()
        .context("--eval-labels")?
        .map(|l| l.to_i64_vec());
    Ok(Some((x, labels)))
}

/// Views for held-out image crops (none shared with calibration's).
fn eval_views(samples: Option<usize>) -> potatura::data::images::Views {
    potatura::data::images::Views {
        count: samples,
        seed: 0xE7A1,
        center_first: samples.is_none(),
    }
}

#[derive(clap::Args, Debug, Clone)]
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
    keep_freed_memory();
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
        Cmd::Eval(a) => eval(&a),
        Cmd::Prune(a) => prune_cmd(&a),
        Cmd::Recover(a) => recover_cmd(&a),
        Cmd::Groups {
            model,
            json,
            all,
            shapes,
        } => groups(&model, json, all, &shapes),
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

/// Measurements of one model for the prune report.
#[derive(serde::Serialize)]
struct Measured {
    params: u64,
    macs: u64,
    file_bytes: Option<u64>,
    /// Size of the file gzip-compressed (zeros compress).
    gzip_bytes: Option<u64>,
    latency_ms: Option<f64>,
    accuracy: Option<f64>,
    agreement: Option<f64>,
}

#[derive(serde::Serialize)]
struct LayerRow {
    node: String,
    op: String,
    channels_before: usize,
    channels_after: usize,
}

#[derive(serde::Serialize)]
struct PruneReport {
    model: String,
    output: String,
    importance: String,
    before: Measured,
    after: Measured,
    /// Every Conv/Gemm/MatMul with weights: output channels before and after.
    layers: Vec<LayerRow>,
    frozen_groups: Vec<(String, usize, String)>,
    /// Residual blocks removed (their Add nodes), with --method block.
    blocks_removed: Vec<String>,
    /// Unstructured methods: zeros over all weight-layer weights.
    sparsity: Option<f64>,
    /// Unstructured methods: per layer.
    sparse_layers: Vec<potatura::prune::unstructured::LayerSparsity>,
    target_reached: bool,
    /// With --recover: accuracy right after pruning, and the training run.
    recovery: Option<Recovery>,
}

/// What `prune --recover` did between pruning and the final model.
#[derive(serde::Serialize)]
struct Recovery {
    right_after_pruning: Option<potatura::eval::EvalReport>,
    training: TrainStats,
}

/// Output channels of weight layers by node name.
fn layer_channels(
    model: &Model,
    inputs: &[potatura::ir::InputShape],
) -> Result<Vec<(String, String, usize)>> {
    let info = potatura::exec::infer_shapes_lenient(model, inputs)?;
    let mut out = Vec::new();
    for (n, ni) in model.graph.nodes.iter().zip(&info.nodes) {
        if !matches!(
            n.op_type.as_str(),
            "Conv" | "ConvTranspose" | "Gemm" | "MatMul"
        ) {
            continue;
        }
        let w = n.inputs.get(1).and_then(|w| info.facts.get(w));
        if w.is_none_or(|f| f.value.is_none()) {
            continue;
        }
        if let Some(f) = ni.outputs.first() {
            let axis = if n.op_type.starts_with("Conv") {
                1
            } else {
                f.shape.len().saturating_sub(1)
            };
            if let Some(&c) = f.shape.get(axis) {
                out.push((n.label(), n.op_type.clone(), c));
            }
        }
    }
    Ok(out)
}

/// Gzip-compressed size of a file (`None` when it cannot be read).
fn gzip_file(path: &Path) -> Option<u64> {
    std::fs::read(path)
        .ok()
        .map(|b| potatura::report::gzip_len(&b))
}

/// [`gzip_file`] on a thread, to overlap with other work.
fn gzip_in_background(path: &Path) -> std::thread::JoinHandle<Option<u64>> {
    let p = path.to_path_buf();
    std::thread::spawn(move || gzip_file(&p))
}

#[allow(clippy::too_many_arguments)]
fn measure(
    model: &Model,
    file: Option<&Path>,
    gzip: Option<std::thread::JoinHandle<Option<u64>>>,
    inputs: &[potatura::ir::InputShape],
    a: &PruneArgs,
    eval: Option<&(potatura::ir::Tensor, Option<Vec<i64>>)>,
    reference: Option<&[Vec<f32>]>,
    known_preds: Option<Vec<Vec<f32>>>,
) -> Result<(Measured, Option<Vec<Vec<f32>>>)> {
    let s = potatura::report::summarize(model, inputs)?;
    // The executor (constant folding included) only when something runs.
    let exec = if a.latency_seconds > 0.0 || (eval.is_some() && known_preds.is_none()) {
        Some(Executor::new(model)?)
    } else {
        None
    };
    let latency_ms = if let Some(exec) = exec.as_ref().filter(|_| a.latency_seconds > 0.0) {
        Some(
            potatura::report::latency::measure(
                exec,
                inputs,
                5,
                std::time::Duration::from_secs_f64(a.latency_seconds),
            )?
            .median_ms,
        )
    } else {
        None
    };
    let (mut accuracy, mut agreement, mut preds) = (None, None, None);
    if let Some((x, labels)) = eval {
        let p = match (known_preds, &exec) {
            (Some(p), _) => p,
            (None, Some(exec)) => {
                potatura::eval::predict(exec, x, fixed_batch(exec).unwrap_or(64))?
            }
            (None, None) => bail!("internal: no executor for the eval set"),
        };
        let r = potatura::eval::score(&p, labels.as_deref(), reference)?;
        accuracy = r.accuracy;
        agreement = r.agreement;
        preds = Some(p);
    }
    Ok((
        Measured {
            params: s.params,
            macs: s.macs,
            file_bytes: file
                .and_then(|f| std::fs::metadata(f).ok())
                .map(|m| m.len()),
            gzip_bytes: match gzip {
                Some(g) => g.join().ok().flatten(),
                None => file.and_then(gzip_file),
            },
            latency_ms,
            accuracy,
            agreement,
        },
        preds,
    ))
}

/// A spinner on stderr for a stage that may take more than a second
/// (hidden when stderr is not a terminal).
fn stage(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Calibration data from `--calib [NAME=]PATH` flags: one tensor per
/// model input, at most `samples` samples.
fn calib_feeds(
    inputs: &[potatura::ir::InputShape],
    specs: &[String],
    samples: usize,
    images: &ImageArgs,
    seed: u64,
) -> Result<Option<potatura::data::Feeds>> {
    if specs.is_empty() {
        return Ok(None);
    }
    let opts = potatura::data::LoadOptions {
        samples: Some(samples.max(1)),
        images: images.spec()?,
        views: potatura::data::images::Views {
            count: None,
            seed,
            center_first: true,
        },
    };
    Ok(Some(
        potatura::data::load_feeds(inputs, specs, &opts).context("--calib")?,
    ))
}

/// Options of the unstructured methods from the flags.
fn sparse_options(a: &PruneArgs) -> Result<potatura::prune::unstructured::SparseOptions> {
    use potatura::prune::unstructured::{Allocation, Method, Pattern, SparseOptions};
    let method: Method = serde_json::from_str(&format!("\"{}\"", a.method))?;
    let allocation: Allocation = serde_json::from_str(&format!("\"{}\"", a.allocation))?;
    let pair = |s: &str, sep: char, what: &str| -> Result<(usize, usize)> {
        let bad = || anyhow::anyhow!("{what} '{s}': expected two positive integers like 2{sep}4");
        let (x, y) = s.split_once(sep).ok_or_else(bad)?;
        let (x, y): (usize, usize) = (
            x.trim().parse().map_err(|_| bad())?,
            y.trim().parse().map_err(|_| bad())?,
        );
        if x == 0 || y == 0 {
            return Err(bad());
        }
        Ok((x, y))
    };
    let pattern = match (a.pattern.as_str(), &a.block) {
        ("unstructured", None) => Pattern::Unstructured,
        ("unstructured", Some(b)) => {
            let (rows, cols) = pair(&b.to_lowercase(), 'x', "--block")?;
            Pattern::Block { rows, cols }
        }
        (p, None) => {
            let (n, m) = pair(p, ':', "--pattern")?;
            Pattern::NM { n, m }
        }
        (_, Some(_)) => bail!("--pattern N:M and --block are alternatives; give one"),
    };
    let overrides = a
        .layer_sparsity
        .iter()
        .map(|s| {
            let (g, f) = s
                .rsplit_once('=')
                .ok_or_else(|| anyhow::anyhow!("--layer-sparsity '{s}': expected GLOB=F"))?;
            let f: f64 = f.parse().map_err(|_| {
                anyhow::anyhow!("--layer-sparsity '{s}': expected GLOB=F with F a fraction")
            })?;
            Ok((g.to_string(), f))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SparseOptions {
        method,
        pattern,
        sparsity: a.sparsity.unwrap_or(0.0),
        allocation,
        per_row: match a.granularity.as_deref() {
            Some(g) => g == "row",
            None => method == Method::Wanda,
        },
        overrides,
        skip_first: a.skip_first,
        skip_last: a.skip_last,
        min_inputs: a.min_inputs,
        seed: a.seed,
        calib_batch: 32,
        damp: a.damp,
        block: a.gpt_block,
        token_mask: a.calib_mask.clone(),
        dense_target: !a.gpt_own_target,
    })
}

fn prune_cmd(a: &PruneArgs) -> Result<ExitCode> {
    use potatura::importance::{Criterion, Reduce};
    use potatura::prune::{Select, Target};
    let path = a.model.as_path();
    let model = load(path)?;
    let inputs = a.shapes.resolve(&model, path)?;
    let parse = |s: &str| -> Result<Criterion> { Ok(serde_json::from_str(&format!("\"{s}\""))?) };
    let criterion = parse(&a.importance)?;
    let reduce: Reduce = serde_json::from_str(&format!("\"{}\"", a.reduce))?;
    let unstructured = matches!(
        a.method.as_str(),
        "magnitude" | "wanda" | "sparsegpt" | "random"
    );
    let nm = a.pattern != "unstructured";
    if unstructured {
        if a.plan.is_some() || a.dry_run {
            bail!("--plan and --dry-run apply to structured methods (channel, block); unstructured pruning writes the model");
        }
        if a.target_macs.is_some()
            || a.target_latency.is_some()
            || a.target_params.is_some()
            || a.ratio.is_some()
            || a.global_ratio.is_some()
        {
            bail!("--method {} zeroes weights without changing shapes: give --sparsity F or --pattern N:M", a.method);
        }
        if a.sparsity.is_none() && !nm {
            bail!("say how sparse: --sparsity F (e.g. 0.5) or --pattern N:M (e.g. 2:4)");
        }
    } else if a.sparsity.is_some() || nm || a.block.is_some() {
        bail!("--sparsity, --pattern and --block go with --method magnitude, wanda, sparsegpt or random");
    }
    let target = match (a.target_macs, a.target_params, a.ratio, a.global_ratio) {
        _ if unstructured => Target::Macs(1.0),
        _ if a.target_latency.is_some() => Target::Latency(a.target_latency.unwrap_or(1.0)),
        (Some(f), ..) => Target::Macs(f),
        (_, Some(f), ..) => Target::Params(f),
        (_, _, Some(f), _) => Target::LayerRatio(f),
        (.., Some(f)) => Target::GlobalRatio(f),
        _ if a.plan.is_some() => Target::Macs(1.0),
        _ => bail!("say how much to prune: --target-macs F, --target-latency F, --target-params F, --ratio F, --global-ratio F or --plan PLAN.json"),
    };
    if a.eval_labels.is_some() && a.eval_data.is_none() {
        bail!("--eval-labels needs --eval-data");
    }
    if a.rounds > 1 && (!a.recover || unstructured || a.plan.is_some()) {
        bail!("--rounds K prunes structurally in K rounds with recovery in between: it needs --recover and a MACs or parameter target (for unstructured sparsity while training, use recover --gradual F)");
    }
    tracing::info!("model loaded");
    // The dense file's compressed size, computed while pruning runs.
    let dense_gzip = gzip_in_background(path);
    let calib = calib_feeds(&inputs, &a.calib, a.calib_samples, &a.images, a.seed)?;
    tracing::info!("calibration data loaded");
    let opts = potatura::prune::Options {
        select: Select {
            target,
            round_to: a.round_to,
            max_layer_ratio: a.max_layer_ratio,
            ignore: a.ignore.clone(),
            latency: None,
        },
        criterion,
        reduce,
        steps: a.steps,
        seed: a.seed,
        calib_batch: 32,
    };
    let ctx = || format!("{}", path.display());
    let pb = stage("analysing channel dependencies and pruning");
    let mut sparse = None;
    let (pruned, plan, short) = match &a.plan {
        _ if unstructured => {
            pb.set_message("scoring and zeroing weights");
            let o = potatura::prune::unstructured::sparsify(
                &model,
                &inputs,
                &sparse_options(a)?,
                calib.as_ref(),
            )
            .with_context(ctx)?;
            let m = o.model.clone();
            sparse = Some(o);
            let plan = potatura::prune::Plan::new(&inputs);
            (m, plan, false)
        }
        Some(pp) => {
            let text =
                std::fs::read_to_string(pp).with_context(|| format!("reading {}", pp.display()))?;
            let plan: potatura::prune::Plan = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a potatura plan", pp.display()))?;
            let m = potatura::prune::apply_plan(&model, &inputs, &plan).with_context(ctx)?;
            (m, plan, false)
        }
        None => {
            let o = match target {
                _ if a.method == "block" => {
                    potatura::prune::blocks::depth(&model, &inputs, target, calib.as_ref())
                }
                Target::Latency(f) => {
                    pb.set_message("pruning to a measured latency (measure, prune, measure again)");
                    // The dense model's table is cached per machine.
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let cache = std::env::var_os("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .or_else(|| {
                            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"))
                        })
                        .map(|d| d.join("potatura"));
                    let mut first = true;
                    let mut measure = |m: &Model| -> potatura::Result<(f64, Vec<f64>)> {
                        use potatura::report::latency::{cached_node_table, measure, node_table};
                        let exec = Executor::new(m)?;
                        let budget = std::time::Duration::from_secs_f64(a.latency_seconds.max(0.5));
                        let lat = measure(&exec, &inputs, 10, budget)?;
                        let n = m.graph.nodes.len();
                        let table = if std::mem::take(&mut first) {
                            cached_node_table(&exec, &bytes, n, &inputs, cache.as_deref())?
                        } else {
                            node_table(&exec, n, &inputs, 10)?
                        };
                        Ok((lat.min_ms, table))
                    };
                    potatura::prune::to_latency(
                        &model,
                        &inputs,
                        &opts,
                        calib.as_ref(),
                        f,
                        4,
                        &mut measure,
                    )
                }
                _ => potatura::prune::structured(&model, &inputs, &opts, calib.as_ref()),
            }
            .with_context(ctx)?;
            (o.model, o.plan, o.short)
        }
    };
    pb.finish_and_clear();
    tracing::info!("pruned");
    if a.dry_run {
        let text = serde_json::to_string_pretty(&plan)?;
        match &a.output {
            Some(o) => potatura::onnx::write_atomic(o, text.as_bytes())?,
            None => println!("{text}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = a
        .output
        .as_deref()
        .expect("clap requires -o without --dry-run");
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(path).ok() {
        bail!(
            "{}: the output would overwrite the input model; choose another -o",
            out.display()
        );
    }
    let eval = eval_set(
        &inputs,
        a.eval_data.as_deref(),
        a.eval_labels.as_deref(),
        &a.images,
        a.eval_samples,
    )?;
    // The dense model's predictions on the eval set, once (recovery needs
    // them before the report does).
    let mut dense_preds: Option<Vec<Vec<f32>>> = None;
    let (pruned, recovery) = if a.recover {
        let specs = if a.recover_data.is_empty() {
            &a.calib
        } else {
            &a.recover_data
        };
        if specs.is_empty() {
            bail!("--recover needs training data: --recover-data PATH (or --calib PATH)");
        }
        let lo = potatura::data::LoadOptions {
            samples: None,
            images: a.images.spec()?,
            views: potatura::data::images::Views {
                count: Some(a.calib_samples),
                seed: a.seed,
                center_first: true,
            },
        };
        let data = potatura::data::load_feeds(&inputs, specs, &lo).context("--recover-data")?;
        let right_after = match &eval {
            Some((x, l)) => {
                let (_, p) = score_model(&model, x, l.as_deref(), None)?;
                let r = score_model(&pruned, x, l.as_deref(), Some(&p))?.0;
                dense_preds = Some(p);
                Some(r)
            }
            None => None,
        };
        // The defaults of `recover`, from its own argument definitions.
        let mut train = TrainArgs::from_arg_matches(
            &TrainArgs::augment_args(clap::Command::new("recover")).get_matches_from(["recover"]),
        )?;
        train.epochs = a.recover_epochs;
        train.lr = a.recover_lr;
        train.train_seed = a.seed;
        // The calibration's token mask also keeps padding out of the loss.
        if a.calib_mask.is_some() {
            train.loss_mask = a.calib_mask.clone();
        }
        let topts = train.options(data.samples())?;
        let ckpt = checkpoint_path(out);
        let (m, stats) = if a.rounds > 1 {
            // Prune a little, recover, repeat; the epochs are shared out.
            let mut per = topts.clone();
            per.steps = (topts.steps / a.rounds).max(1);
            let pb = indicatif::ProgressBar::new((per.steps * a.rounds) as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} prune + recover [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let t0 = std::time::Instant::now();
            let mut warm = None;
            let (mut done, mut last) = (0usize, f32::NAN);
            let m = potatura::train::prune_iteratively(
                &model,
                &inputs,
                &opts,
                calib.as_ref(),
                a.rounds,
                &data,
                None,
                &per,
                &mut |r, _| pb.set_message(format!("round {}/{}", r + 1, a.rounds)),
                &mut |rep| {
                    done += 1;
                    last = rep.loss;
                    if done == WARM_UP_STEPS {
                        warm = Some((std::time::Instant::now(), done * per.batch));
                    }
                    pb.inc(1);
                    true
                },
            )
            .with_context(ctx)?;
            pb.finish_and_clear();
            let secs = t0.elapsed().as_secs_f64();
            (
                m,
                TrainStats {
                    steps: done,
                    planned_steps: per.steps * a.rounds,
                    seconds: secs,
                    samples_per_second: (done * per.batch) as f64 / secs.max(1e-9),
                    steady_samples_per_second: steady_rate(warm, done * per.batch),
                    final_loss: last,
                    interrupted: false,
                },
            )
        } else {
            train_with_progress(
                &pruned,
                Some(&model),
                &data,
                None,
                &topts,
                (&ckpt, train.checkpoint_every, None),
            )?
        };
        (
            m,
            Some(Recovery {
                right_after_pruning: right_after,
                training: stats,
            }),
        )
    } else {
        (pruned, None)
    };
    potatura::onnx::save(&pruned, out)?;
    tracing::info!("saved");
    let pruned_gzip = gzip_in_background(out);
    // Success only after the written file loads and runs.
    let reloaded = load(out)?;
    tracing::info!("reloaded");
    let exec = Executor::new(&reloaded).with_context(|| format!("re-loading {}", out.display()))?;
    let outs = exec
        .run(potatura::report::latency::synthetic_inputs(&inputs)?)
        .with_context(|| format!("running the pruned model {}", out.display()))?;
    let dense_outs =
        Executor::new(&model)?.run(potatura::report::latency::synthetic_inputs(&inputs)?)?;
    for ((n, t), (_, d)) in outs.iter().zip(&dense_outs) {
        if t.shape() != d.shape() {
            bail!(
                "internal: output '{n}' changed shape from {:?} to {:?}",
                d.shape(),
                t.shape()
            );
        }
    }
    tracing::info!("outputs checked");
    let (before, dense_preds) = measure(
        &model,
        Some(path),
        Some(dense_gzip),
        &inputs,
        a,
        eval.as_ref(),
        None,
        dense_preds,
    )?;
    tracing::info!("dense model measured");
    let (after, _) = measure(
        &reloaded,
        Some(out),
        Some(pruned_gzip),
        &inputs,
        a,
        eval.as_ref(),
        dense_preds.as_deref(),
        None,
    )?;
    tracing::info!("pruned model measured");
    let lb = layer_channels(&model, &inputs)?;
    // Unstructured methods change no channel: no second table, and the
    // frozen channel groups only matter to structured pruning.
    let la: std::collections::HashMap<String, usize> = if unstructured {
        Default::default()
    } else {
        layer_channels(&reloaded, &inputs)?
            .into_iter()
            .map(|(n, _, c)| (n, c))
            .collect()
    };
    let dg = if unstructured {
        None
    } else {
        Some(potatura::deps::DepGraph::build(&model, &inputs)?)
    };
    tracing::info!("channel tables built");
    let report = PruneReport {
        model: path.display().to_string(),
        output: out.display().to_string(),
        importance: if unstructured {
            format!("{} (unstructured)", a.method)
        } else if a.method == "block" {
            if !a.calib.is_empty() {
                "block: output change on --calib data".into()
            } else {
                "block: weight magnitude".into()
            }
        } else {
            a.importance.clone()
        },
        before,
        after,
        layers: lb
            .into_iter()
            .map(|(n, op, c)| LayerRow {
                channels_after: la.get(&n).copied().unwrap_or(c),
                node: n,
                op,
                channels_before: c,
            })
            .collect(),
        frozen_groups: dg
            .iter()
            .flat_map(|d| &d.groups)
            .filter_map(|g| {
                g.frozen
                    .as_ref()
                    .map(|f| (g.name.clone(), g.channels, f.clone()))
            })
            .collect(),
        blocks_removed: plan.blocks.clone(),
        sparsity: sparse.as_ref().map(|o| o.total_sparsity),
        sparse_layers: sparse.map(|o| o.layers).unwrap_or_default(),
        target_reached: !short,
        recovery,
    };
    print_prune_report(&report, a.json)?;
    Ok(ExitCode::SUCCESS)
}

fn print_prune_report(r: &PruneReport, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    let (b, a) = (&r.before, &r.after);
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
    writeln!(
        out,
        "{} -> {} (importance {})",
        r.model, r.output, r.importance
    )?;
    writeln!(
        out,
        "{:<14} {:>14} {:>14} {:>9}",
        "", "before", "after", "after/before"
    )?;
    writeln!(
        out,
        "{:<14} {:>14} {:>14} {:>9.3}",
        "params",
        b.params,
        a.params,
        ratio(a.params as f64, b.params as f64)
    )?;
    writeln!(
        out,
        "{:<14} {:>14} {:>14} {:>9.3}",
        "MACs",
        b.macs,
        a.macs,
        ratio(a.macs as f64, b.macs as f64)
    )?;
    if let (Some(x), Some(y)) = (b.gzip_bytes, a.gzip_bytes) {
        writeln!(
            out,
            "{:<14} {:>14} {:>14} {:>9.3}",
            "gzip bytes",
            x,
            y,
            ratio(y as f64, x as f64)
        )?;
    }
    if let (Some(x), Some(y)) = (b.file_bytes, a.file_bytes) {
        writeln!(
            out,
            "{:<14} {:>14} {:>14} {:>9.3}",
            "file bytes",
            x,
            y,
            ratio(y as f64, x as f64)
        )?;
    }
    if let (Some(x), Some(y)) = (b.latency_ms, a.latency_ms) {
        writeln!(
            out,
            "{:<14} {:>11.3} ms {:>11.3} ms {:>9.3}   (speed-up {:.2}x)",
            "latency",
            x,
            y,
            ratio(y, x),
            ratio(x, y)
        )?;
    }
    if let (Some(x), Some(y)) = (b.accuracy, a.accuracy) {
        writeln!(
            out,
            "{:<14} {:>13.2}% {:>13.2}%",
            "accuracy",
            x * 100.0,
            y * 100.0
        )?;
    }
    if let Some(y) = a.agreement {
        writeln!(out, "{:<14} {:>14} {:>13.2}%", "agreement", "", y * 100.0)?;
    }
    if let Some(rc) = &r.recovery {
        let t = &rc.training;
        writeln!(
            out,
            "recovered by distillation from the unpruned model: {} steps in {}{}",
            t.steps,
            t.timing(),
            if t.interrupted { ", interrupted" } else { "" }
        )?;
        if let Some(e) = &rc.right_after_pruning {
            if let Some(acc) = e.accuracy {
                writeln!(
                    out,
                    "accuracy: {:.2}% before pruning, {:.2}% right after pruning, {:.2}% after recovery",
                    b.accuracy.unwrap_or(f64::NAN) * 100.0,
                    acc * 100.0,
                    a.accuracy.unwrap_or(f64::NAN) * 100.0
                )?;
            } else if let Some(ag) = e.agreement {
                writeln!(
                    out,
                    "agreement with the unpruned model: {:.2}% right after pruning, {:.2}% after recovery",
                    ag * 100.0,
                    a.agreement.unwrap_or(f64::NAN) * 100.0
                )?;
            }
        }
    }
    if !r.target_reached {
        writeln!(out, "note: the target was not reached within the constraints (--max-layer-ratio, --round-to, frozen groups)")?;
    }
    if let Some(sp) = r.sparsity {
        writeln!(out, "sparsity of the weight layers: {:.2}%", sp * 100.0)?;
        for l in &r.sparse_layers {
            match &l.dense_reason {
                Some(why) => writeln!(
                    out,
                    "  {:<48} {:>9} weights   dense: {why}",
                    l.node, l.weights
                )?,
                None => writeln!(
                    out,
                    "  {:<48} {:>9} weights {:>6.2}%",
                    l.node,
                    l.weights,
                    l.sparsity * 100.0
                )?,
            }
        }
    }
    if !r.blocks_removed.is_empty() {
        writeln!(
            out,
            "residual blocks removed: {}",
            r.blocks_removed.join(", ")
        )?;
    }
    writeln!(out, "channels per layer (changed only):")?;
    for l in r
        .layers
        .iter()
        .filter(|l| l.channels_after != l.channels_before)
    {
        writeln!(
            out,
            "  {:<48} {:>5} -> {:<5}",
            l.node, l.channels_before, l.channels_after
        )?;
    }
    if !r.frozen_groups.is_empty() && r.sparsity.is_none() {
        writeln!(
            out,
            "frozen (not pruned): {} group(s); `potatura groups` lists them",
            r.frozen_groups.len()
        )?;
    }
    Ok(())
}

fn groups(path: &Path, json: bool, all: bool, shapes: &ShapeArgs) -> Result<ExitCode> {
    let model = load(path)?;
    let inputs = shapes.resolve(&model, path)?;
    let dg = potatura::deps::DepGraph::build(&model, &inputs)
        .with_context(|| format!("{}", path.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &dg.summary())?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (prunable, frozen): (Vec<_>, Vec<_>) = dg.groups.iter().partition(|g| g.frozen.is_none());
    writeln!(
        out,
        "{}: {} prunable groups ({} channels), {} frozen groups ({} channels)",
        path.display(),
        prunable.len(),
        prunable.iter().map(|g| g.channels).sum::<usize>(),
        frozen.len(),
        frozen.iter().map(|g| g.channels).sum::<usize>()
    )?;
    writeln!(
        out,
        "{:<44}  {:>8}  {:>12}  {:>10}  members",
        "group", "channels", "MACs/chan", "params/ch"
    )?;
    for g in &prunable {
        writeln!(
            out,
            "{:<44}  {:>8}  {:>12}  {:>10}  {}",
            g.name,
            g.channels,
            g.macs_per_channel,
            g.params_per_channel,
            g.nodes.join(", ")
        )?;
    }
    if let Ok(blocks) = potatura::prune::blocks::find(&model, &inputs) {
        if !blocks.is_empty() {
            writeln!(out, "residual blocks removable with --method block:")?;
            for b in &blocks {
                writeln!(
                    out,
                    "  {:<42}  {:>3} nodes  {:>12} MACs  {:>10} params",
                    b.add,
                    b.branch.len(),
                    b.macs,
                    b.params
                )?;
            }
        }
    }
    let mut reasons: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for g in &frozen {
        let e = reasons
            .entry(g.frozen.as_deref().unwrap_or(""))
            .or_default();
        e.0 += 1;
        e.1 += g.channels;
    }
    writeln!(out, "frozen:")?;
    if all {
        for g in &frozen {
            writeln!(
                out,
                "  {:<42}  {:>8}  {}",
                g.name,
                g.channels,
                g.frozen.as_deref().unwrap_or("")
            )?;
        }
    } else {
        for (why, (n, c)) in reasons {
            writeln!(out, "  {n} group(s), {c} channel(s): {why}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
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

fn eval(a: &EvalArgs) -> Result<ExitCode> {
    let EvalArgs {
        model: path,
        data,
        samples,
        images,
        labels,
        reference,
        batch,
        json,
        shapes,
    } = a;
    let (path, data, samples, batch, json) =
        (path.as_path(), data.as_path(), *samples, *batch, *json);
    let (labels, reference) = (labels.as_deref(), reference.as_deref());
    let model = load(path)?;
    let fixed = shapes.resolve_if_given(&model, path)?;
    let exec = Executor::new(&model).with_context(|| format!("{}", path.display()))?;
    let x = if data.is_dir() {
        let inputs = shapes.resolve(&model, path)?;
        load_one(&inputs, data, images, eval_views(samples))?
    } else {
        potatura::data::load_tensor(data)?
    };
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
