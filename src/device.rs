//! Choosing the backend a command runs on (`--device auto|cpu|cuda|emu`).

use crate::error::{Error, Result};

/// The `--device` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// A usable GPU if there is one, else the CPU (and say which).
    Auto,
    /// The CPU backend.
    Cpu,
    /// The CUDA backend (hand-written kernels via NVRTC).
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
            _ => Err(Error::Config(format!("unknown device `{s}`: use auto, cpu, cuda or emu"))),
        }
    }
}

/// The backend a command will use, with a line for the user when `auto` chose.
pub fn resolve(device: Device) -> Result<(Device, Option<String>)> {
    match device {
        Device::Cpu => Ok((Device::Cpu, None)),
        Device::Auto => Ok((Device::Cpu, Some("device auto: no CUDA backend in this build; using cpu".into()))),
        Device::Cuda | Device::Emu => Err(Error::Config(format!(
            "device {device:?} is not available in this build yet (the CUDA backend and its emulator are \
             tracked separately); use --device cpu"
        ))),
    }
}
