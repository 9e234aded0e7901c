//! The `lesionseg` command line. Thin: parses arguments into plain data, calls the
//! library, prints one clear line on error and exits non-zero (130 after Ctrl-C).
//!
//! Every numeric flag is parsed with its range from [`lesionseg::limits`] (shown in
//! `--help`), so a bad value is refused before any work; defaults come from the
//! library's constants, written once there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lesionseg::backend::cuda::Precision;
use lesionseg::device::{self, Device, Opened};
use lesionseg::limits::{self, Count, Real};
use lesionseg::profile::defaults as pd;
use lesionseg::{predict, train};

#[derive(Parser)]
#[command(
    name = "lesionseg",
    version,
    about = "Multi-task U-Net for ISIC 2018 Task 2 lesion attributes, on hand-written kernels"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// A parser of `flag`'s values within its range.
fn count<T: TryFrom<u64> + Clone + Send + Sync + 'static>(
    c: Count,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |s| c.parse(s)
}

fn real(r: Real) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s| r.parse(s)
}

/// A parser through `FromStr` whose message leaves the flag to clap, which names it.
fn named<T: std::str::FromStr<Err = lesionseg::Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e| match e {
        lesionseg::Error::Argument { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// Where a command runs: the same two flags on every command that runs the model.
#[derive(Args, Clone, Copy)]
struct DeviceArgs {
    /// auto (a usable GPU, else the CPU, saying which), cpu, cuda or emu (the CUDA
    /// kernels in the host emulator).
    #[arg(long, default_value = "auto", value_parser = named::<Device>, allow_negative_numbers = true)]
    device: Device,
    /// Convolution arithmetic on the GPU kernels: f32, or bf16 products on tensor
    /// cores for every convolution and deconvolution, forward and backward (f32
    /// accumulation, f32 weights, biases and Adam; within 1e-2 of f32). The cpu
    /// backend is f32 only.
    #[arg(long, default_value = "f32", value_parser = named::<Precision>, allow_negative_numbers = true)]
    precision: Precision,
}

impl DeviceArgs {
    /// Opens the backend, telling the user what `auto` chose.
    fn open(self) -> lesionseg::Result<Opened> {
        let (mut opened, note) = device::open(self.device)?;
        if let Some(note) = note {
            eprintln!("{note}");
        }
        opened.set_precision(self.precision)?;
        Ok(opened)
    }
}

#[derive(Subcommand)]
enum Command {
    /// One forward pass (and, with targets, the backward pass) of a weight file on a
    /// tensor file, written as tensors for comparison with PyTorch.
    ///
    /// INPUT: safetensors with `input` [N,3,H,W] f32 (normalised; H, W multiples of
    /// 32) and optionally `target_mask` [N,5,H,W] f32 in {0,1}. OUTPUT receives
    /// `mask_logits` [N,5,H,W], `cls_mid_logits` [N,5], `cls_last_logits` [N,5]; with
    /// targets also `loss`, `loss1`, `loss2`, `loss3`, `grad.<parameter>` (PyTorch
    /// layout) for every parameter and `grad.input`.
    ///
    /// `--precision bf16` (with `--device cuda` or `emu`; the cpu backend is f32 only)
    /// computes all of it on the bf16 tensor-core kernels, to compare with PyTorch's
    /// bf16 autocast on the same model: outputs agree with fp32 to ~1e-3 of their
    /// scale, gradients move as much as PyTorch's own bf16 ones (README, "Checking
    /// the engine against your PyTorch model").
    Forward {
        /// Model weights (safetensors; PyTorch names, `module.` prefix and conv1.0… aliases accepted; f32/f16/bf16).
        #[arg(long)]
        weights: PathBuf,
        /// Input tensors (safetensors).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the output tensors (safetensors; a regular file is replaced
        /// atomically, a device or FIFO written in place; not one of the inputs).
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        backend: DeviceArgs,
    },
    /// The whole job end to end with no data and no network (the default command):
    /// synthesise data, train a narrow model for about two minutes, predict held-back
    /// images, score them, write overlays and curves.
    Demo {
        #[command(flatten)]
        backend: DeviceArgs,
        /// Where everything goes (a new or empty folder, or an earlier demo's).
        #[arg(long, default_value = lesionseg::demo::DEFAULT_OUT)]
        out: PathBuf,
        #[arg(long, default_value_t = lesionseg::demo::DEFAULT_SECONDS, value_parser = count::<u64>(limits::DEMO_SECONDS),
              allow_negative_numbers = true, help = limits::DEMO_SECONDS.help("Training time in seconds"))]
        seconds: u64,
    },
    /// Synthetic dermoscopy images with the five attribute masks, in the ISIC 2018
    /// folder layout (so `train` reads them exactly as it reads the real download).
    Synth {
        /// Output folder (created; one that holds images or masks is refused without --force).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_parser = count::<usize>(limits::SYNTH_COUNT), allow_negative_numbers = true,
              help = limits::SYNTH_COUNT.help("Number of images"))]
        count: usize,
        #[arg(long, default_value_t = 256, value_parser = count::<usize>(limits::SYNTH_SIZE),
              allow_negative_numbers = true, help = limits::SYNTH_SIZE.help("Image side in pixels"))]
        size: usize,
        #[arg(long, default_value_t = 0, value_parser = count::<u64>(limits::SEED), allow_negative_numbers = true,
              help = limits::SEED.help("Seed (the same seed gives the same files)"))]
        seed: u64,
        /// Write into folders that already hold images or masks, replacing files of the
        /// same names (synthetic ids start at ISIC_0000000, as the real download's do).
        #[arg(long)]
        force: bool,
    },
    /// Train the multi-task U-Net on ISIC 2018 Task 2 data (the paper's recipe:
    /// Adam 1e-3, batch 8, ReduceLROnPlateau 0.8/5, flips, rotation, scale, shift,
    /// brightness and saturation). Checkpoints, metrics.csv and curves.png go to OUT.
    /// Ctrl-C saves the state and exits with status 130; continue with --resume.
    Train(TrainArgs),
    /// Predict the five attribute masks of every JPEG/PNG in a folder, at each
    /// image's original size, as ISIC_<id>_attribute_<attribute>.png (0/255).
    Predict {
        /// Folder of images.
        #[arg(long)]
        images: PathBuf,
        /// Weights or a training checkpoint (safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Output folder for the masks.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = predict::DEFAULT_THRESHOLD, value_parser = real(limits::THRESHOLD),
              allow_negative_numbers = true, help = limits::THRESHOLD.help("Probability threshold (the paper: 0.3)"))]
        threshold: f64,
        #[arg(long, value_parser = count::<usize>(limits::NET_SIZE), allow_negative_numbers = true,
              help = limits::NET_SIZE.help(&format!(
                  "Network input size [default: the checkpoint's training size, else {}]", predict::DEFAULT_SIZE)))]
        size: Option<usize>,
        #[arg(long, default_value_t = predict::DEFAULT_BATCH_SIZE, value_parser = count::<usize>(limits::BATCH_SIZE),
              allow_negative_numbers = true,
              help = limits::BATCH_SIZE.help("Images per forward pass (images of equal size are batched)"))]
        batch_size: usize,
        #[arg(long, default_value_t = 1, value_parser = count::<usize>(limits::REPLICAS), allow_negative_numbers = true,
              help = limits::REPLICAS.help(
                  "Replicas sharing the batches: threads with their own backend on cpu and emu, GPUs 0..N-1 on \
                   cuda; the same files as one"))]
        replicas: usize,
        /// Also write each image with the attributes drawn in colour, with a legend.
        #[arg(long)]
        overlays: Option<PathBuf>,
        #[command(flatten)]
        backend: DeviceArgs,
    },
    /// Score predicted masks with the ISIC 2018 Task 2 scorer (per-attribute
    /// Jaccard and Dice, the micro-averaged Jaccard of the leaderboard), equal to
    /// the official isic-challenge-scoring package to the last bit.
    Eval {
        /// Folder of predicted masks.
        #[arg(long)]
        pred: PathBuf,
        /// Folder of ground-truth masks (searched recursively; not --pred).
        #[arg(long)]
        truth: PathBuf,
        /// Also write the scores as JSON (not one of the masks read).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Time a few training steps and inference passes and break them down per layer.
    Profile {
        #[command(flatten)]
        backend: DeviceArgs,
        #[arg(long, default_value_t = pd::BATCH, value_parser = count::<usize>(limits::BATCH_SIZE),
              allow_negative_numbers = true, help = limits::BATCH_SIZE.help("Images per batch"))]
        batch_size: usize,
        #[arg(long, default_value_t = pd::SIZE, value_parser = count::<usize>(limits::NET_SIZE),
              allow_negative_numbers = true, help = limits::NET_SIZE.help("Input size (square)"))]
        size: usize,
        #[arg(long, default_value_t = pd::WIDTH, value_parser = real(limits::WIDTH), allow_negative_numbers = true,
              help = limits::WIDTH.help("Channel width factor (1 = the paper's model)"))]
        width: f64,
        #[arg(long, default_value_t = pd::WARMUP, value_parser = count::<usize>(limits::WARMUP), allow_negative_numbers = true,
              help = limits::WARMUP.help("Untimed training steps first (caches, page faults, kernel compilation)"))]
        warmup: usize,
        #[arg(long, default_value_t = pd::STEPS, value_parser = count::<usize>(limits::STEPS), allow_negative_numbers = true,
              help = limits::STEPS.help("Timed steps (and inference passes, and hooked steps for the layer table)"))]
        steps: usize,
        /// Skip the per-layer breakdown (and the peak measurement it needs).
        #[arg(long)]
        no_layers: bool,
        #[arg(long, value_parser = real(limits::PEAK_GFLOPS), allow_negative_numbers = true,
              help = limits::PEAK_GFLOPS.help(
                  "Peak GFLOP/s for the percentage column [default: measured with a large GEMM on the CPU, the \
                   datasheet peak on a known GPU]"))]
        peak_gflops: Option<f64>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Name each layer's forward and backward (`enc3_2 forward`) and each timed
        /// step in NVTX ranges, for Nsight Systems / Nsight Compute: run under
        /// `nsys profile` or `ncu --nvtx` (they set NVTX_INJECTION64_PATH).
        #[arg(long)]
        nvtx: bool,
        /// Predict the step on a GPU instead of timing it. With --device emu: one
        /// training step on the access-tracing emulator (large launches sampled), every
        /// launch predicted from its memory counters, its SASS and the GPU's
        /// specification (README: "Predicting a GPU without one").
        #[arg(long, value_name = "GPU", allow_negative_numbers = true,
              value_parser = clap::builder::PossibleValuesParser::new(lesionseg::perfmodel::GPUS.iter().map(|g| g.key)))]
        predict: Option<String>,
        /// With --device emu: check every launch but run none, and report only the
        /// memory figures (exact: they depend on the shapes alone), for sizes the
        /// emulator could not run in reasonable time (512x512, batch 16).
        #[arg(long)]
        memory_only: bool,
    },

    /// What this machine offers the CUDA backend: driver, GPUs, the kernels embedded
    /// in this binary, NVRTC, ptxas, the kernel cache; how each kernel file reaches
    /// the GPU and why, and registers / shared memory of every kernel. Exits non-zero
    /// when a kernel file fails to load on a present GPU.
    Info,
}

/// `lesionseg train`'s flags. Size, width, batch size and seed, when not given,
/// are the defaults for a new run and the checkpoint's with --resume.
#[derive(Args)]
struct TrainArgs {
    /// Folder with ISIC2018_Task1-2_*_Input and ISIC2018_Task2_*_GroundTruth* inside.
    #[arg(long)]
    data: PathBuf,
    /// Run folder: last/best_loss/best_jaccard.safetensors, metrics.csv, curves.png,
    /// split.csv. One that holds a run is refused without --resume or --force.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = train::DEFAULT_EPOCHS, value_parser = count::<u32>(limits::EPOCHS),
          allow_negative_numbers = true, help = limits::EPOCHS.help("Epochs in total (a resumed run continues up to this number)"))]
    epochs: u32,
    #[arg(long, value_parser = count::<usize>(limits::BATCH_SIZE), allow_negative_numbers = true,
          help = limits::BATCH_SIZE.help(&format!("Images per step [default: {}]", train::DEFAULT_BATCH_SIZE)))]
    batch_size: Option<usize>,
    #[arg(long, value_parser = count::<usize>(limits::NET_SIZE), allow_negative_numbers = true,
          help = limits::NET_SIZE.help(&format!("Training size, square (the paper: 512) [default: {}]", train::DEFAULT_SIZE)))]
    size: Option<usize>,
    #[arg(long, value_parser = real(limits::LR), allow_negative_numbers = true,
          help = limits::LR.help(&format!("Learning rate; with --resume, replaces the checkpoint's [default: {:e}]", train::DEFAULT_LR)))]
    lr: Option<f64>,
    #[arg(long, value_parser = real(limits::WIDTH), allow_negative_numbers = true,
          help = limits::WIDTH.help(&format!(
              "Channel width factor of a new model (1 = the paper's, 32.2 M parameters) [default: {}]",
              train::DEFAULT_WIDTH)))]
    width: Option<f64>,
    /// torchvision VGG16 weights (safetensors) for the encoder; see weights/README.md.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Continue from OUT/last.safetensors (same step, learning rate, optimizer state,
    /// batches and augmentations).
    #[arg(long)]
    resume: bool,
    /// Start over in an OUT that holds a run, replacing its checkpoints and logs.
    #[arg(long)]
    force: bool,
    /// `ID,Split` CSV (train/val); otherwise a seeded 80/20 split.
    #[arg(long)]
    split: Option<PathBuf>,
    /// Leave out samples with a corrupt image or a missing or mis-sized mask (counted in the summary).
    #[arg(long)]
    skip_bad: bool,
    #[arg(long, value_parser = real(limits::TIME_LIMIT), allow_negative_numbers = true,
          help = limits::TIME_LIMIT.help("Stop starting epochs after this many minutes"))]
    time_limit: Option<f64>,
    #[arg(long, value_parser = count::<u64>(limits::SEED), allow_negative_numbers = true,
          help = limits::SEED.help(&format!(
              "Seed of initialisation, split, shuffling and augmentation [default: {}]", train::DEFAULT_SEED)))]
    seed: Option<u64>,
    #[command(flatten)]
    backend: DeviceArgs,
    /// Name each training step and each layer's forward and backward in NVTX
    /// ranges (run under `nsys profile`, which sets NVTX_INJECTION64_PATH).
    #[arg(long)]
    nvtx: bool,
    #[arg(long, default_value_t = 1, value_parser = count::<usize>(limits::REPLICAS), allow_negative_numbers = true,
          help = limits::REPLICAS.help(
              "Data-parallel replicas, each a shard of every global batch (--batch-size, a multiple of it): \
               threads with their own backend on cpu and emu, one GPU each over NCCL on cuda; the loss and \
               gradients are the global batch's"))]
    replicas: usize,
    #[arg(long, value_delimiter = ',', value_parser = count::<usize>(limits::GPU), allow_negative_numbers = true,
          help = limits::GPU.help("With --device cuda --replicas N: the GPUs, one per replica, as 0,1,... \
              [default: the first N]"))]
    gpus: Option<Vec<usize>>,
    #[arg(long, default_value_t = lesionseg::collective::DEFAULT_TIMEOUT.as_secs_f64(),
          value_parser = real(limits::REPLICA_TIMEOUT), allow_negative_numbers = true,
          help = limits::REPLICA_TIMEOUT.help(
              "Seconds a replica waits for the others (rank 0 validates and writes checkpoints meanwhile) before \
               it reports them lost and stops"))]
    replica_timeout: f64,
}

impl TrainArgs {
    fn options(self) -> train::TrainOptions {
        let mut o = train::TrainOptions::new(self.data, self.out);
        o.epochs = self.epochs;
        o.batch_size = self.batch_size;
        o.size = self.size;
        o.lr = self.lr;
        o.width = self.width;
        o.init = self.init;
        o.resume = self.resume;
        o.force = self.force;
        o.split_csv = self.split;
        o.skip_bad = self.skip_bad;
        o.time_limit = self.time_limit.map(|m| std::time::Duration::from_secs_f64(m * 60.0));
        o.seed = self.seed;
        o.nvtx = self.nvtx;
        o.replicas = self.replicas;
        o.replica_timeout = std::time::Duration::from_secs_f64(self.replica_timeout);
        o
    }
}

/// Exit status after Ctrl-C (128 + SIGINT), so `train && predict` stops.
const INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => {
            let o = lesionseg::demo::DemoOptions::default();
            demo(DeviceArgs { device: Device::Auto, precision: Precision::F32 }, o.out, o.train_time.as_secs())
        }
        Some(Command::Forward { weights, input, output, backend }) => forward(backend, &weights, &input, &output),
        Some(Command::Demo { backend, out, seconds }) => demo(backend, out, seconds),
        Some(Command::Synth { out, count, size, seed, force }) => synth(&out, count, size, seed, force),
        Some(Command::Train(args)) => {
            let (backend, gpus) = (args.backend, args.gpus.clone());
            train(backend, &args.options(), gpus)
        }
        Some(Command::Predict { images, weights, out, threshold, size, batch_size, replicas, overlays, backend }) => {
            let mut o = predict::PredictOptions::new(images, weights, out);
            o.threshold = threshold;
            o.size = size;
            o.batch_size = batch_size;
            o.overlays = overlays;
            o.replicas = replicas;
            predict(backend, &o)
        }
        Some(Command::Eval { pred, truth, json }) => eval(&pred, &truth, json.as_deref()),
        Some(Command::Profile { backend, batch_size, size, width, json, predict: Some(gpu), .. }) => {
            predict_profile(backend, &gpu, batch_size, size, width, json)
        }
        Some(Command::Profile {
            backend,
            batch_size,
            size,
            width,
            warmup,
            steps,
            no_layers,
            peak_gflops,
            json,
            nvtx,
            predict: None,
            memory_only,
        }) => {
            let o = lesionseg::profile::ProfileOptions {
                batch: batch_size,
                size,
                width,
                warmup,
                steps,
                layers: !no_layers && !memory_only,
                peak_gflops,
                nvtx,
                memory_only,
                ..Default::default()
            };
            profile(backend, &o, json)
        }
        Some(Command::Info) => info(),
    };
    match result {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::Interrupted) => ExitCode::from(INTERRUPTED),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How a command that did not fail ended.
enum Done {
    /// Its work is done.
    Ok,
    /// Stopped by Ctrl-C (its state saved).
    Interrupted,
}

type Outcome = lesionseg::Result<Done>;

fn forward(backend: DeviceArgs, weights: &Path, input: &Path, output: &Path) -> Outcome {
    let opened = backend.open()?;
    let s = lesionseg::on_backend!(&opened, be => lesionseg::forward::run(be, weights, input, output))?;
    let (n, h, w) = s.batch;
    print!("forward on {}: {} parameters, batch {n}x3x{h}x{w}, {:.3} s", s.backend, s.parameters, s.seconds);
    if let Some(l) = s.loss {
        print!(", loss {:.6} (loss1 {:.6}, loss2 {:.6}, loss3 {:.6})", l.loss, l.loss1, l.loss2, l.loss3);
    }
    println!("\nwrote {}", output.display());
    Ok(Done::Ok)
}

fn demo(backend: DeviceArgs, out: PathBuf, seconds: u64) -> Outcome {
    let opened = backend.open()?;
    let o =
        lesionseg::demo::DemoOptions { out, train_time: std::time::Duration::from_secs(seconds), ..Default::default() };
    lesionseg::on_backend!(&opened, be => lesionseg::demo::run(be, &o))?;
    Ok(Done::Ok)
}

fn synth(out: &Path, count: usize, size: usize, seed: u64, force: bool) -> Outcome {
    let opts =
        lesionseg::data::synth::SynthOptions { force, ..lesionseg::data::synth::SynthOptions::new(count, size, seed) };
    let summary = lesionseg::data::synth::synthesize_with(out, &opts)?;
    print!("{summary}");
    Ok(Done::Ok)
}

fn train(backend: DeviceArgs, o: &train::TrainOptions, gpus: Option<Vec<usize>>) -> Outcome {
    if o.nvtx {
        note_nvtx()?;
    }
    let launched = lesionseg::collective::tcp::LaunchEnv::from_env()?.is_some();
    let s = if o.replicas > 1 || gpus.is_some() || launched {
        train::run_parallel(backend.device, backend.precision, gpus.as_deref(), o)?
    } else {
        let opened = backend.open()?;
        lesionseg::on_backend!(&opened, be => train::run(be, o))?
    };
    if s.rank != 0 {
        println!("train: rank {} done ({} steps); rank 0 wrote the run to {}", s.rank, s.state.step, s.out.display());
        return Ok(if s.stop == train::Stop::Interrupted { Done::Interrupted } else { Done::Ok });
    }
    let why = match s.stop {
        train::Stop::Finished => "finished",
        train::Stop::Interrupted => "interrupted",
        train::Stop::Budget => "time limit reached (resume with --resume and more --epochs)",
    };
    println!(
        "train {why}: {} epochs, {} steps, lr {:.3e}; {} training / {} validation images{}",
        s.state.epoch,
        s.state.step,
        s.state.lr,
        s.samples.0,
        s.samples.1,
        if s.skipped > 0 { format!(", {} skipped", s.skipped) } else { String::new() }
    );
    if let Some(v) = &s.last_val {
        println!("{}", v.scores.table());
    }
    println!("checkpoints, metrics.csv and curves.png in {}", s.out.display());
    if s.stop == train::Stop::Interrupted {
        eprintln!(
            "interrupted: the state is saved in {}; continue with `lesionseg train --resume --data {} --out {}`",
            s.out.join(train::LAST).display(),
            o.data.display(),
            o.out.display()
        );
        return Ok(Done::Interrupted);
    }
    Ok(Done::Ok)
}

fn predict(backend: DeviceArgs, o: &predict::PredictOptions) -> Outcome {
    use lesionseg::backend::cuda::{driver::Cuda, Kernels};
    let opened = backend.open()?;
    let s = match opened {
        _ if o.replicas == 1 => lesionseg::on_backend!(&opened, be => predict::run(be, o))?,
        Opened::Cpu(_) => predict::run_replicas(|_| Ok(lesionseg::backend::cpu::Cpu), o)?,
        Opened::Emu(k) => {
            let precision = k.precision;
            let open = |_| {
                let mut k = Kernels::new(lesionseg::backend::emu::Emu::new());
                k.precision = precision;
                Ok(k)
            };
            predict::run_replicas(open, o)?
        }
        Opened::Cuda(k) => {
            let precision = k.precision;
            drop(k);
            let open = |r| {
                let mut k = Kernels::new(Cuda::new(r)?);
                k.precision = precision;
                Ok(k)
            };
            predict::run_replicas(open, o)?
        }
    };
    println!("predict: {} images → {} masks in {} ({:.1} s)", s.images, s.masks, o.out.display(), s.seconds);
    if let Some(dir) = &o.overlays {
        println!("overlays in {}", dir.display());
    }
    Ok(Done::Ok)
}

/// Says on stderr whether `--nvtx` will reach a tool.
fn note_nvtx() -> lesionseg::Result<()> {
    if lesionseg::nvtx::Nvtx::attached()?.is_none() {
        eprintln!(
            "note: --nvtx: no NVTX tool attached ({} is unset), so no ranges are recorded; run under \
             `nsys profile` or `ncu --nvtx`",
            lesionseg::nvtx::INJECTION_ENV
        );
    }
    Ok(())
}

/// Prints the report; a kernel file that fails on a present GPU is an error.
fn info() -> Outcome {
    let r = lesionseg::info::report();
    print!("{}", r.text);
    match r.problems.len() {
        0 => Ok(Done::Ok),
        n => Err(lesionseg::Error::Cuda(format!("{n} problem(s) on the GPU: {}", r.problems.join("; ")))),
    }
}

fn eval(pred: &Path, truth: &Path, json: Option<&Path>) -> Outcome {
    let report = lesionseg::eval::run(pred, truth, json)?;
    println!("{}", lesionseg::eval::format_table(&report));
    Ok(Done::Ok)
}

fn profile(backend: DeviceArgs, o: &lesionseg::profile::ProfileOptions, json: bool) -> Outcome {
    if o.nvtx {
        note_nvtx()?;
    }
    let opened = match (o.memory_only, backend.device) {
        (false, _) => backend.open()?,
        (true, Device::Emu) => {
            use lesionseg::backend::{cuda::Kernels, emu::Emu};
            let mut opened = Opened::Emu(Kernels::new(Emu::memory_only()));
            opened.set_precision(backend.precision)?;
            opened
        }
        (true, _) => {
            return Err(lesionseg::Error::Argument {
                arg: "--memory-only".into(),
                reason: "needs --device emu (the emulator can skip the kernels; other devices cannot)".into(),
            })
        }
    };
    let r = lesionseg::on_backend!(&opened, be => lesionseg::profile::run(be, o))?;
    if json {
        println!("{}", lesionseg::profile::to_json(&r));
    } else {
        println!("{}", lesionseg::profile::format_table(&r));
    }
    Ok(Done::Ok)
}

/// `profile --predict GPU`: the emulator's counters through the performance model.
fn predict_profile(backend: DeviceArgs, gpu: &str, batch: usize, size: usize, width: f64, json: bool) -> Outcome {
    let keys = || lesionseg::perfmodel::GPUS.iter().map(|g| g.key).collect::<Vec<_>>().join(", ");
    let Some(spec) = lesionseg::perfmodel::gpu(gpu) else {
        return Err(lesionseg::Error::Argument {
            arg: "--predict".into(),
            reason: format!("unknown GPU `{gpu}`; expected one of {}", keys()),
        });
    };
    if backend.device != Device::Emu {
        return Err(lesionseg::Error::Argument {
            arg: "--predict".into(),
            reason: format!("runs on the emulator: add --device emu (got --device {:?})", backend.device),
        });
    }
    let o = lesionseg::profile::predict::PredictOptions {
        gpu: spec,
        batch,
        size,
        width,
        precision: backend.precision,
        max_blocks: 16,
        seed: 2018,
    };
    eprintln!("tracing one training step on the emulator (large launches sampled)…");
    let r = lesionseg::profile::predict::run(&o)?;
    if json {
        print!("{}", lesionseg::profile::prediction_json(&r));
    } else {
        print!("{}", lesionseg::profile::format_prediction(&r));
    }
    Ok(Done::Ok)
}
