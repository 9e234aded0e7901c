//! `lesionseg profile` on the CPU backend without the CLI: the same library entry
//! point ([`lesionseg::profile::run`]) and the same flags, so
//! `scripts/cpu-vs-pytorch.sh` can run before (and independently of) `main.rs`.
//!
//! ```text
//! cargo run --release --example profile -- --size 256 --batch-size 1 [--width 1] [--steps 3] [--warmup 1] [--no-layers] [--json]
//! ```

use std::process::ExitCode;

use clap::Parser;
use lesionseg::backend::cpu::Cpu;
use lesionseg::profile::{self, ProfileOptions};

#[derive(Parser)]
#[command(about = "Profile UNet16 training and inference on the CPU backend (random weights and data)")]
struct Args {
    /// Only `cpu` here; the `lesionseg profile` command takes the other devices.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images per batch.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Input height and width (a multiple of 32).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Channel width factor (1 = the paper's model).
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps (and inference passes, and hooked steps for the layer table).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Skip the per-layer breakdown.
    #[arg(long)]
    no_layers: bool,
    /// Peak GFLOP/s for the percentage column (default: measured with a large GEMM).
    #[arg(long)]
    peak_gflops: Option<f64>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if a.device != "cpu" {
        eprintln!("error: this example runs on the cpu only; use `lesionseg profile --device {}`", a.device);
        return ExitCode::from(2);
    }
    let o = ProfileOptions {
        batch: a.batch_size,
        size: a.size,
        width: a.width,
        warmup: a.warmup,
        steps: a.steps,
        layers: !a.no_layers,
        peak_gflops: a.peak_gflops,
        ..ProfileOptions::default()
    };
    match profile::run(&Cpu, &o) {
        Ok(r) => {
            print!("{}", if a.json { profile::to_json(&r) } else { profile::format_table(&r) });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
