//! Which compute device runs the model. `auto` takes the best backend compiled into this build that
//! is present on the machine.

use crate::error::{Error, Result};
use crate::unified_memory::UnifiedMemory;
use candle_core::{DType, Device};
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

/// The backends this build can run on (Metal on every macOS build, CUDA with the `cuda` feature).
pub fn compiled_backends() -> &'static [&'static str] {
    match (cfg!(target_os = "macos"), cfg!(feature = "cuda")) {
        (true, true) => &["cpu", "metal", "cuda"],
        (true, false) => &["cpu", "metal"],
        (false, true) => &["cpu", "cuda"],
        (false, false) => &["cpu"],
    }
}

/// The device `choice` runs on, in words, for startup lines.
pub fn describe(choice: DeviceChoice) -> &'static str {
    match choice {
        DeviceChoice::Auto if cfg!(target_os = "macos") => "metal",
        DeviceChoice::Auto if cfg!(feature = "cuda") => "cuda",
        DeviceChoice::Auto | DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda(_) => "cuda",
        DeviceChoice::Metal => "metal",
    }
}

/// The dtype of the paged KV cache on `device`: f32 on the CPU (its kernels compute in f32), f16 on
/// GPUs (half the bytes each decode step reads; every Apple GPU has f16, while bf16 needs an M2 or
/// later). The one place this choice is made.
pub fn kv_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    }
}

/// The unified-memory budget of `device`: on a Mac's GPU, what Metal recommends it use at most
/// (`recommendedMaxWorkingSetSize`); `None` on devices with memory of their own or none to budget.
pub fn unified_memory(device: &Device) -> Option<UnifiedMemory> {
    #[cfg(target_os = "macos")]
    if let Device::Metal(metal) = device {
        return Some(UnifiedMemory::new(metal.metal_device().recommended_max_working_set_size() as u64));
    }
    #[cfg(not(target_os = "macos"))]
    let _ = device; // no Metal device exists off macOS
    None
}

/// The GPU's name (`Apple M2 Pro`), for reports; `None` on the CPU.
pub fn gpu_name(device: &Device) -> Option<String> {
    #[cfg(target_os = "macos")]
    if let Device::Metal(metal) = device {
        use objc2_metal::MTLDevice;
        return Some(metal.metal_device().as_ref().name().to_string());
    }
    #[cfg(not(target_os = "macos"))]
    let _ = device; // no Metal device exists off macOS
    None
}

/// Opens the chosen device. `auto` takes Metal on a Mac and GPU 0 in a CUDA build (the CPU if that
/// GPU cannot start).
pub fn select(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        #[cfg(target_os = "macos")]
        DeviceChoice::Metal => {
            Device::new_metal(0).map_err(|e| Error::InvalidRequest(format!("cannot open the Metal device: {e}")))
        }
        #[cfg(target_os = "macos")]
        DeviceChoice::Auto => Ok(Device::new_metal(0).unwrap_or_else(|e| {
            tracing::warn!("Metal is unavailable ({e}); running on the CPU");
            Device::Cpu
        })),
        #[cfg(all(not(target_os = "macos"), feature = "cuda"))]
        DeviceChoice::Auto => Ok(open_cuda(0).unwrap_or_else(|e| {
            tracing::warn!("CUDA is unavailable ({e}); running on the CPU");
            Device::Cpu
        })),
        #[cfg(all(not(target_os = "macos"), not(feature = "cuda")))]
        DeviceChoice::Auto => Ok(Device::Cpu),
        #[cfg(not(target_os = "macos"))]
        DeviceChoice::Metal => Err(not_compiled_in("Metal")),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(n) => open_cuda(n),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(not_compiled_in("CUDA")),
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
