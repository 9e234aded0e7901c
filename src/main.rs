//! The `lesionseg` command line. Thin: parses arguments into plain data, calls the
//! library, prints one clear line on error and exits non-zero.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    /// A short demonstration that needs no data and no network (the default command).
    Demo {
        /// auto, cpu, cuda or emu.
        #[arg(long, default_value = "auto")]
        device: Device,
    },
    /// What this machine offers the CUDA backend: driver, GPUs, NVRTC, ptxas, the
    /// kernel cache, and registers / shared memory of every kernel.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo { device: Device::Auto }) {
        Command::Forward { weights, input, output, device } => forward(device, &weights, &input, &output),
        Command::Demo { device } => demo(device),
        Command::Info => {
            print!("{}", lesionseg::info::report());
            Ok(())
        }
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

fn demo(device: Device) -> lesionseg::Result<()> {
    let opened = backend(device)?;
    lesionseg::on_backend!(&opened, be => lesionseg::demo::run(be))
}
