//! Which compute device runs the model. `auto` takes the best backend compiled into this build that
//! is present on the machine.

use crate::error::{Error, Result};
use candle_core::Device;
use std::str::FromStr;

/// The user's `--device` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The best available.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// NVIDIA GPU number N.
    Cuda(usize),
    /// The Apple GPU.
    Metal,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "metal" => Ok(Self::Metal),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("'{other}' is not a device (auto, cpu, cuda, cuda:N, metal)")),
        }
    }
}

/// The backends this build can run on.
pub fn compiled_backends() -> &'static [&'static str] {
    if cfg!(feature = "cuda") {
        &["cpu", "cuda"]
    } else {
        &["cpu"]
    }
}

/// The device `choice` runs on, in words, for startup lines.
pub fn describe(choice: DeviceChoice) -> &'static str {
    match choice {
        DeviceChoice::Auto | DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda(_) => "cuda",
        DeviceChoice::Metal => "metal",
    }
}

/// Opens the chosen device.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceChoice::Auto => Ok(open_cuda(0).unwrap_or(Device::Cpu)),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Auto => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(n) => open_cuda(n),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(not_compiled_in("CUDA")),
        DeviceChoice::Metal => Err(not_compiled_in("Metal")),
    }
}

/// The error for a backend this build lacks.
fn not_compiled_in(backend: &str) -> Error {
    Error::InvalidRequest(format!(
        "this build of bodega has no {backend} backend (compiled in: {})",
        compiled_backends().join(", ")
    ))
}

/// Opens CUDA device `n` for bodega's single-stream use.
#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    let device = Device::new_cuda(n).map_err(|e| {
        let message = e.to_string();
        // candle's CUDA errors carry a backtrace-like tail: the first line says it.
        Error::InvalidRequest(format!("cannot open CUDA device {n}: {}", message.lines().next().unwrap_or("")))
    })?;
    if let Device::Cuda(cuda) = &device {
        // SAFETY: every tensor bodega creates on this device is used on its one stream (candle's),
        // so the cross-stream events cudarc records around each launch only cost time.
        unsafe { cuda.disable_event_tracking() };
    }
    Ok(device)
}
