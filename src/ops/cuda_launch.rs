//! Launches bodega's CUDA kernels as programmatic dependents of the kernel before them in the stream
//! (`cuLaunchKernelEx` with `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`, sm_90 and newer):
//! a kernel's blocks may then be scheduled while its predecessor finishes, and each kernel waits for
//! it in `follow_previous_kernel` (`kernels/cuda/dependent_launch.cuh`) before touching memory. That
//! hides ~1 µs of launch and ramp-up at each boundary between bodega's kernels (docs/perf.md), which
//! a decode step of a small model has hundreds of. cudarc's launch builder only submits plain
//! launches, so this one collects the arguments itself. Inside a captured graph each launch first
//! sets its own dependencies (`cuda_capture`), or candle's memory nodes would cut the overlap.
//! `BODEGA_CUDA_PDL=0` launches plainly.

use super::cuda::KernelParams;
use candle_core::cuda_backend::cudarc::driver::sys::{
    self, CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue, CUlaunchConfig, CUresult,
};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, LaunchConfig,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::Result;
use std::ffi::c_void;
use std::sync::OnceLock;

/// A kernel argument: the bytes the kernel receives for it (a device pointer or a plain value).
pub(super) trait KernelArg {
    /// What the driver copies into the kernel's parameter (`stream`: the launch's, for pointers).
    fn bytes(&self, stream: &CudaStream) -> Vec<u8>;
}

impl<T> KernelArg for CudaSlice<T> {
    fn bytes(&self, stream: &CudaStream) -> Vec<u8> {
        self.device_ptr(stream).0.to_ne_bytes().to_vec()
    }
}

impl<T> KernelArg for CudaView<'_, T> {
    fn bytes(&self, stream: &CudaStream) -> Vec<u8> {
        self.device_ptr(stream).0.to_ne_bytes().to_vec()
    }
}

impl<T> KernelArg for CudaViewMut<'_, T> {
    fn bytes(&self, stream: &CudaStream) -> Vec<u8> {
        self.device_ptr(stream).0.to_ne_bytes().to_vec()
    }
}

/// Plain values, passed by their bytes (`KernelParams` has the C layout its kernels declare).
macro_rules! value_args {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn bytes(&self, _: &CudaStream) -> Vec<u8> {
                // SAFETY: a plain-old-data value read as its own bytes.
                unsafe { std::slice::from_raw_parts((self as *const $t).cast::<u8>(), size_of::<$t>()) }.to_vec()
            }
        }
    )*};
}
value_args!(u32, u64, f32, KernelParams);

/// One launch of `func` on `stream`: arguments in the kernel's order, then [`KernelLaunch::launch`].
pub(super) struct KernelLaunch<'a> {
    stream: &'a CudaStream,
    func: &'a CudaFunction,
    /// Each argument's bytes, alive until the launch (the driver copies them at submission).
    args: Vec<Vec<u8>>,
}

impl<'a> KernelLaunch<'a> {
    /// A launch of `func` on `stream` with no arguments yet.
    pub(super) fn new(stream: &'a CudaStream, func: &'a CudaFunction) -> Self {
        Self { stream, func, args: Vec::new() }
    }

    /// Appends the next argument.
    pub(super) fn arg(&mut self, arg: &impl KernelArg) -> &mut Self {
        self.args.push(arg.bytes(self.stream));
        self
    }

    /// Submits the launch, as a programmatic dependent where the GPU supports it.
    ///
    /// # Safety
    /// The arguments must be the kernel's, in its order, and every memory access the kernel makes
    /// with them must stay inside the buffers; the kernel must call `follow_previous_kernel` before
    /// it touches memory that an earlier kernel writes (`kernels/cuda/dependent_launch.cuh`).
    pub(super) unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        let context = self.stream.context();
        context.bind_to_thread().w()?;
        let mut attribute: CUlaunchAttribute = std::mem::zeroed();
        attribute.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        let mut value: CUlaunchAttributeValue = std::mem::zeroed();
        value.programmaticStreamSerializationAllowed = 1;
        attribute.value = value;
        let dependent = dependent_launches(self.stream)?;
        if dependent {
            super::cuda_capture::link_next_kernel(self.stream)?;
        }
        let config = CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: dependent as u32,
        };
        let mut pointers: Vec<*mut c_void> = self.args.iter_mut().map(|a| a.as_mut_ptr().cast()).collect();
        let status =
            sys::cuLaunchKernelEx(&config, self.func.cu_function(), pointers.as_mut_ptr(), std::ptr::null_mut());
        match status {
            CUresult::CUDA_SUCCESS => Ok(()),
            e => candle_core::bail!("launching a bodega CUDA kernel failed: {e:?}"),
        }
    }
}

/// Whether launches on `stream`'s GPU are programmatic dependents: compute capability 9.0 or newer
/// (where `griddepcontrol` exists) unless `BODEGA_CUDA_PDL=0`.
pub(super) fn dependent_launches(stream: &CudaStream) -> Result<bool> {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    let allowed = *ALLOWED.get_or_init(|| std::env::var("BODEGA_CUDA_PDL").map_or(true, |v| v != "0"));
    let (major, _) = stream.context().compute_capability().w()?;
    Ok(allowed && major >= 9)
}
