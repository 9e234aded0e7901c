//! The `lesionseg` command line. Thin: parses arguments into plain data, calls the
//! library, prints one clear line on error and exits non-zero.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lesionseg::backend::cuda::Precision;
use lesionseg::device::{self, Device, Opened};

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
    Forward {
        /// Model weights (safetensors; PyTorch names, `module.` prefix and conv1.0… aliases accepted; f32/f16/bf16).
        #[arg(long)]
        weights: PathBuf,
        /// Input tensors (safetensors).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the output tensors (safetensors; written atomically).
        #[arg(long)]
        output: PathBuf,
        /// auto, cpu, cuda or emu.
        #[arg(long, default_value = "auto")]
        device: Device,
    },
    /// The whole job end to end with no data and no network (the default command):
    /// synthesise data, train a narrow model for about two minutes, predict held-back
    /// images, score them, write overlays and curves.
    Demo {
        /// auto, cpu, cuda or emu.
        #[arg(long, default_value = "auto")]
        device: Device,
        /// Where everything goes.
        #[arg(long, default_value = "lesionseg-demo")]
        out: PathBuf,
        /// Training time in seconds.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    /// Synthetic dermoscopy images with the five attribute masks, in the ISIC 2018
    /// folder layout (so `train` reads them exactly as it reads the real download).
    Synth {
        /// Output folder (created).
        #[arg(long)]
        out: PathBuf,
        /// Number of images.
        #[arg(long)]
        count: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Seed (the same seed gives the same files).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train the multi-task U-Net on ISIC 2018 Task 2 data (the paper's recipe:
    /// Adam 1e-3, batch 8, ReduceLROnPlateau 0.8/5, flips, rotation, scale, shift,
    /// brightness and saturation). Checkpoints, metrics.csv and curves.png go to OUT.
    Train {
        /// Folder with ISIC2018_Task1-2_*_Input and ISIC2018_Task2_*_GroundTruth* inside.
        #[arg(long)]
        data: PathBuf,
        /// Run folder: last/best_loss/best_jaccard.safetensors, metrics.csv, curves.png, split.csv.
        #[arg(long)]
        out: PathBuf,
        /// Epochs in total (a resumed run continues up to this number).
        #[arg(long, default_value_t = 100)]
        epochs: u32,
        /// Images per step.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Training size (square, a multiple of 32; the paper: 512).
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Learning rate (default 1e-3; with --resume, replaces the checkpoint's).
        #[arg(long)]
        lr: Option<f64>,
        /// Channel width factor of a model trained from scratch (1 = the paper's, 32.2 M parameters).
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// torchvision VGG16 weights (safetensors) for the encoder; see weights/README.md.
        #[arg(long)]
        init: Option<PathBuf>,
        /// Continue from OUT/last.safetensors (same step, learning rate and optimizer state).
        #[arg(long)]
        resume: bool,
        /// `ID,Split` CSV (train/val); otherwise a seeded 80/20 split.
        #[arg(long)]
        split: Option<PathBuf>,
        /// Leave out samples with a corrupt image or a missing or mis-sized mask (counted in the summary).
        #[arg(long)]
        skip_bad: bool,
        /// Stop starting epochs after this many minutes.
        #[arg(long)]
        time_limit: Option<f64>,
        /// Seed of initialisation, split, shuffling and augmentation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// auto, cpu, cuda or emu.
        #[arg(long, default_value = "auto")]
        device: Device,
        /// Name each training step and each layer's forward and backward in NVTX
        /// ranges (run under `nsys profile`, which sets NVTX_INJECTION64_PATH).
        #[arg(long)]
        nvtx: bool,
        /// Convolution arithmetic on the GPU kernels: f32, or bf16 products on tensor
        /// cores for every convolution and deconvolution, forward and backward (f32
        /// accumulation, f32 weights, biases and Adam). The cpu backend is f32 only.
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
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
        /// Probability threshold (the paper: 0.3).
        #[arg(long, default_value_t = 0.3)]
        threshold: f64,
        /// Network input size (default: the checkpoint's training size, else 512).
        #[arg(long)]
        size: Option<usize>,
        /// Images per forward pass (images of equal size are batched).
        #[arg(long, default_value_t = 4)]
        batch_size: usize,
        /// Also write each image with the attributes drawn in colour, with a legend.
        #[arg(long)]
        overlays: Option<PathBuf>,
        /// Convolution arithmetic on the GPU kernels: f32, or bf16 products on tensor
        /// cores (within 1e-2 of f32). The cpu backend is f32 only.
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// auto, cpu, cuda or emu.
        #[arg(long, default_value = "auto")]
        device: Device,
    },
    /// Score predicted masks with the ISIC 2018 Task 2 scorer (per-attribute
    /// Jaccard and Dice, the micro-averaged Jaccard of the leaderboard).
    Eval {
        /// Folder of predicted masks.
        #[arg(long)]
        pred: PathBuf,
        /// Folder of ground-truth masks.
        #[arg(long)]
        truth: PathBuf,
        /// Also write the scores as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Time a few training steps and inference passes and break them down per layer.
    Profile {
        /// auto, cpu, cuda or emu.
        #[arg(long, default_value = "auto")]
        device: Device,
        /// Images per batch.
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        /// Input size (square, a multiple of 32).
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Channel width factor (1 = the paper's model).
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// Untimed training steps first (caches, page faults, kernel compilation).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed steps (and inference passes, and hooked steps for the layer table).
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Skip the per-layer breakdown (and the peak measurement it needs).
        #[arg(long)]
        no_layers: bool,
        /// Peak GFLOP/s for the percentage column (default: measured with a large
        /// GEMM on the CPU, the datasheet fp32 peak on a known GPU).
        #[arg(long)]
        peak_gflops: Option<f64>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Convolution arithmetic on the GPU kernels: f32, or bf16 products on tensor
        /// cores for every convolution and deconvolution, forward and backward. The
        /// cpu backend is f32 only.
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Name each layer's forward and backward (`enc3_2 forward`) and each timed
        /// step in NVTX ranges, for Nsight Systems / Nsight Compute: run under
        /// `nsys profile` or `ncu --nvtx` (they set NVTX_INJECTION64_PATH).
        #[arg(long)]
        nvtx: bool,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_demo = Command::Demo { device: Device::Auto, out: PathBuf::from("lesionseg-demo"), seconds: 120 };
    let result = match cli.command.unwrap_or(default_demo) {
        Command::Forward { weights, input, output, device } => forward(device, &weights, &input, &output),
        Command::Demo { device, out, seconds } => demo(device, out, seconds),
        Command::Synth { out, count, size, seed } => synth(&out, count, size, seed),
        Command::Train {
            data,
            out,
            epochs,
            batch_size,
            size,
            lr,
            width,
            init,
            resume,
            split,
            skip_bad,
            time_limit,
            seed,
            device,
            nvtx,
            precision,
        } => {
            let mut o = lesionseg::train::TrainOptions::new(data, out);
            o.nvtx = nvtx;
            o.epochs = epochs;
            o.batch_size = batch_size;
            o.size = size;
            o.lr = lr;
            o.width = width;
            o.init = init;
            o.resume = resume;
            o.split_csv = split;
            o.skip_bad = skip_bad;
            o.time_limit = time_limit.map(|m| std::time::Duration::from_secs_f64(m * 60.0));
            o.seed = seed;
            train(device, precision, &o)
        }
        Command::Predict { images, weights, out, threshold, size, batch_size, overlays, precision, device } => {
            let mut o = lesionseg::predict::PredictOptions::new(images, weights, out);
            o.threshold = threshold;
            o.size = size;
            o.batch_size = batch_size;
            o.overlays = overlays;
            predict(device, precision, &o)
        }
        Command::Eval { pred, truth, json } => eval(&pred, &truth, json.as_deref()),
        Command::Profile {
            device,
            batch_size,
            size,
            width,
            warmup,
            steps,
            no_layers,
            peak_gflops,
            json,
            precision,
            nvtx,
            memory_only,
        } => {
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
            profile(device, precision, &o, json)
        }
        Command::Info => info(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the backend for `device`, telling the user what `auto` chose.
fn backend(device: Device) -> lesionseg::Result<Opened> {
    let (opened, note) = device::open(device)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    Ok(opened)
}

fn forward(device: Device, weights: &Path, input: &Path, output: &Path) -> lesionseg::Result<()> {
    let opened = backend(device)?;
    let s = lesionseg::on_backend!(&opened, be => lesionseg::forward::run(be, weights, input, output))?;
    let (n, h, w) = s.batch;
    print!("forward: {} parameters, batch {n}x3x{h}x{w}, {:.3} s", s.parameters, s.seconds);
    if let Some(l) = s.loss {
        print!(", loss {:.6} (loss1 {:.6}, loss2 {:.6}, loss3 {:.6})", l.loss, l.loss1, l.loss2, l.loss3);
    }
    println!("\nwrote {}", output.display());
    Ok(())
}

fn demo(device: Device, out: PathBuf, seconds: u64) -> lesionseg::Result<()> {
    let opened = backend(device)?;
    let o =
        lesionseg::demo::DemoOptions { out, train_time: std::time::Duration::from_secs(seconds), ..Default::default() };
    lesionseg::on_backend!(&opened, be => lesionseg::demo::run(be, &o))
}

fn synth(out: &Path, count: usize, size: usize, seed: u64) -> lesionseg::Result<()> {
    let summary = lesionseg::data::synth::synthesize(out, count, size, seed)?;
    print!("{summary}");
    Ok(())
}

fn train(device: Device, precision: Precision, o: &lesionseg::train::TrainOptions) -> lesionseg::Result<()> {
    if o.nvtx {
        note_nvtx()?;
    }
    let mut opened = backend(device)?;
    opened.set_precision(precision)?;
    let s = lesionseg::on_backend!(&opened, be => lesionseg::train::run(be, o))?;
    use lesionseg::train::Stop;
    let why = match s.stop {
        Stop::Finished => "finished",
        Stop::Interrupted => "interrupted (resume with --resume)",
        Stop::Budget => "time limit reached (resume with --resume and more --epochs)",
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
    Ok(())
}

fn predict(device: Device, precision: Precision, o: &lesionseg::predict::PredictOptions) -> lesionseg::Result<()> {
    let mut opened = backend(device)?;
    opened.set_precision(precision)?;
    let s = lesionseg::on_backend!(&opened, be => lesionseg::predict::run(be, o))?;
    println!("predict: {} images → {} masks in {} ({:.1} s)", s.images, s.masks, o.out.display(), s.seconds);
    if let Some(dir) = &o.overlays {
        println!("overlays in {}", dir.display());
    }
    Ok(())
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
fn info() -> lesionseg::Result<()> {
    let r = lesionseg::info::report();
    print!("{}", r.text);
    match r.problems.len() {
        0 => Ok(()),
        n => Err(lesionseg::Error::Cuda(format!("{n} problem(s) on the GPU: {}", r.problems.join("; ")))),
    }
}

fn eval(pred: &Path, truth: &Path, json: Option<&Path>) -> lesionseg::Result<()> {
    let report = lesionseg::eval::run(pred, truth, json)?;
    println!("{}", lesionseg::eval::format_table(&report));
    Ok(())
}

fn profile(
    device: Device,
    precision: Precision,
    o: &lesionseg::profile::ProfileOptions,
    json: bool,
) -> lesionseg::Result<()> {
    if o.nvtx {
        note_nvtx()?;
    }
    let mut opened = match (o.memory_only, device) {
        (false, _) => backend(device)?,
        (true, Device::Emu) => {
            use lesionseg::backend::{cuda::Kernels, emu::Emu};
            Opened::Emu(Kernels::new(Emu::memory_only()))
        }
        (true, _) => {
            return Err(lesionseg::Error::Config(
                "--memory-only needs --device emu (the emulator can skip the kernels; other devices cannot)".into(),
            ))
        }
    };
    opened.set_precision(precision)?;
    let r = lesionseg::on_backend!(&opened, be => lesionseg::profile::run(be, o))?;
    if json {
        println!("{}", lesionseg::profile::to_json(&r));
    } else {
        println!("{}", lesionseg::profile::format_table(&r));
    }
    Ok(())
}
