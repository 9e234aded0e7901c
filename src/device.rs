//! Choosing the backend a command runs on (`--device auto|cpu|cuda|emu`) and
//! running generic code on whichever was chosen.
//!
//! `auto` takes a GPU when one is usable (the driver loads, a device is present, a
//! context can be created and the kernels can be loaded: embedded in the binary for
//! this GPU, or NVRTC found), otherwise the CPU, and says which and why. `cuda`
//! without a usable GPU is one clear error, never a panic.
//!
//! The model is generic over [`Backend`], so a command is written once as generic
//! code and dispatched with [`on_backend!`](crate::on_backend):
//! ```ignore
//! let (opened, note) = device::open(Device::Auto)?;
//! lesionseg::on_backend!(&opened, be => lesionseg::demo::run(be))
//! ```

use crate::backend::cpu::Cpu;
use crate::backend::cuda::driver::{Cuda, KernelSources};
use crate::backend::cuda::{Kernels, Precision};
use crate::backend::emu::Emu;
use crate::error::{Error, Result};

/// The `--device` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// A usable GPU if there is one, else the CPU (and say which).
    Auto,
    /// The CPU backend.
    Cpu,
    /// The CUDA backend (hand-written kernels, embedded or compiled by NVRTC).
    Cuda,
    /// The host emulator running the CUDA kernels on the CPU.
    Emu,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "emu" => Ok(Device::Emu),
            _ => Err(Error::argument("--device", format!("`{s}` is not a device: use auto, cpu, cuda or emu"))),
        }
    }
}

/// An opened backend, ready to run generic code through [`on_backend!`](crate::on_backend).
// One per process, made once and borrowed: boxing the GPU variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Opened {
    /// The CPU reference backend.
    Cpu(Cpu),
    /// The kernels on GPU 0.
    Cuda(Kernels<Cuda>),
    /// The kernels in the host emulator.
    Emu(Kernels<Emu>),
}

impl Opened {
    /// Sets the convolution arithmetic of the kernel backends; the cpu backend
    /// computes in f32 only, and bf16 needs tensor cores (sm_80 or newer), so those
    /// are errors.
    pub fn set_precision(&mut self, p: Precision) -> Result<()> {
        match self {
            Opened::Cuda(k) => {
                if p == Precision::Bf16 {
                    k.exec.check_tensor_cores().map_err(|e| {
                        Error::Device(format!("--precision bf16: {}; use --precision f32 on this GPU", reason(&e)))
                    })?;
                }
                k.precision = p
            }
            Opened::Emu(k) => k.precision = p,
            Opened::Cpu(_) if p == Precision::F32 => {}
            Opened::Cpu(_) => {
                return Err(Error::argument(
                    format!("--precision {p}"),
                    "the cpu backend computes in f32 only; use --device cuda (or emu to check the kernels)",
                ))
            }
        }
        Ok(())
    }

    /// `cpu`, `cuda`, `emu`.
    pub fn name(&self) -> &'static str {
        match self {
            Opened::Cpu(_) => "cpu",
            Opened::Cuda(_) => "cuda",
            Opened::Emu(_) => "emu",
        }
    }
}

/// Runs `$body` with `$be` bound to `&B` for the backend `B` inside an
/// [`Opened`]; every arm instantiates the generic code for its backend.
#[macro_export]
macro_rules! on_backend {
    ($opened:expr, $be:ident => $body:expr) => {
        match $opened {
            $crate::device::Opened::Cpu($be) => $body,
            $crate::device::Opened::Cuda($be) => $body,
            $crate::device::Opened::Emu($be) => $body,
        }
    };
}

/// The reason GPU 0 cannot be used, as one line (without the `CUDA:` prefix).
fn reason(e: &Error) -> String {
    match e {
        Error::Cuda(m) => m.clone(),
        other => other.to_string(),
    }
}

/// GPU 0 as a kernel backend, or why not.
pub fn open_cuda() -> Result<Kernels<Cuda>> {
    Cuda::new(0).map(Kernels::new)
}

/// Opens the backend for `device`. The second value is a line for the user
/// saying what `auto` chose and why.
pub fn open(device: Device) -> Result<(Opened, Option<String>)> {
    match device {
        Device::Cpu => Ok((Opened::Cpu(Cpu), None)),
        Device::Cuda => match open_cuda() {
            Ok(k) => Ok((Opened::Cuda(k), None)),
            Err(e) => Err(Error::Device(format!("--device cuda: no usable GPU: {}", reason(&e)))),
        },
        Device::Auto => match open_cuda() {
            Ok(k) => {
                let (major, minor) = k.exec.compute_capability();
                let note = format!("device auto: using cuda on {} (compute {major}.{minor})", k.exec.name());
                Ok((Opened::Cuda(k), Some(note)))
            }
            Err(e) => Ok((Opened::Cpu(Cpu), Some(format!("device auto: no usable GPU ({}); using cpu", reason(&e))))),
        },
        Device::Emu => Ok((Opened::Emu(Kernels::new(Emu::new())), None)),
    }
}

/// GPU 0 for a test, synchronising after every launch so that a fault names its
/// kernel; `None` after printing `SKIPPED: no usable GPU (<reason>)` when there is
/// none. Every kernel test's cuda variant starts with it:
/// ```ignore
/// let Some(gpu) = lesionseg::device::test_gpu("conv2d_forward") else { return };
/// ```
///
/// # Panics
/// When `LESIONSEG_REQUIRE_GPU=1` (set by `scripts/gpu-check.sh`) and no GPU is
/// usable, so that a broken GPU machine fails the run instead of skipping it.
pub fn test_gpu(test: &str) -> Option<Kernels<Cuda>> {
    test_gpu_with(test, KernelSources::builtin())
}

/// [`test_gpu`] with the test's own kernel files.
pub fn test_gpu_with(test: &str, sources: KernelSources) -> Option<Kernels<Cuda>> {
    let mut exec = gpu_or_skip(test, Cuda::with_sources(0, sources))?;
    exec.set_sync(true);
    Some(Kernels::new(exec))
}

/// GPU 0 for a benchmark (launches not synchronised, so that they queue as in
/// real use), with [`test_gpu`]'s policy: `None` after printing `<what>: SKIPPED: no
/// usable GPU (<reason>)`, a panic instead when `LESIONSEG_REQUIRE_GPU=1`.
pub fn bench_gpu(what: &str) -> Option<Kernels<Cuda>> {
    gpu_or_skip(what, Cuda::new(0)).map(Kernels::new)
}

/// `opened`, or the skip (or, with `LESIONSEG_REQUIRE_GPU=1`, the panic) of a GPU
/// test or benchmark named `what`.
fn gpu_or_skip(what: &str, opened: Result<Cuda>) -> Option<Cuda> {
    match opened {
        Ok(exec) => Some(exec),
        Err(e) => {
            let why = reason(&e);
            let required = std::env::var("LESIONSEG_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(!required, "{what}: LESIONSEG_REQUIRE_GPU=1 but no usable GPU: {why}");
            println!("{what}: SKIPPED: no usable GPU ({why})");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda);
        assert!("gpu".parse::<Device>().is_err());
    }

    #[test]
    fn auto_always_opens_something() {
        let (opened, note) = open(Device::Auto).unwrap();
        let note = note.unwrap();
        assert!(note.starts_with("device auto: "), "{note}");
        assert!(opened.name() == "cpu" || opened.name() == "cuda");
    }
}
