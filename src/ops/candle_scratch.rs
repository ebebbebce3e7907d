//! Tells CUDA graph owners when candle's quantized matmuls have moved their scratch buffers.
//!
//! candle 0.11's CUDA `QMatMul` quantizes its activations into a per-device workspace that only ever
//! grows: a product that needs more than the current one allocates a larger buffer and frees the old
//! one (`quantized/fast_mmvq.rs` for up to 8 rows, `quantized/fast_mmq.rs` beyond). A CUDA graph
//! captured before keeps the old address, so replaying it would write into memory that other tensors
//! may own by then. bodega notes every product it sends to candle here, before candle runs it; a
//! product bigger than any before bumps the device's generation, and graphs captured under an older
//! generation are dropped and captured again (`runner::graphs`).

use candle_core::cuda_backend::DeviceId;
use candle_core::{CudaDevice, Device};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// candle pads a row's columns to this many before quantizing (its `MATRIX_ROW_PADDING`).
const ROW_PADDING: usize = 512;
/// The most rows candle's MMVQ path (its smaller workspace) takes; larger products go to MMQ.
const MMVQ_MAX_ROWS: usize = 8;

/// The largest products noted on one device, in padded elements per workspace, and how often either
/// grew.
#[derive(Default, Clone, Copy)]
struct Marks {
    mmvq: usize,
    mmq: usize,
    generation: u64,
}

/// Every device's marks (plain counters: still right after a panic elsewhere poisoned the lock).
fn marks() -> MutexGuard<'static, HashMap<DeviceId, Marks>> {
    static MARKS: OnceLock<Mutex<HashMap<DeviceId, Marks>>> = OnceLock::new();
    MARKS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner)
}

/// Notes a product of `rows` rows of `cols` columns about to run through candle's `QMatMul` on
/// `device` (nothing for other devices): candle's workspace for it is proportional to
/// `rows × cols padded to 512`, in either of its two workspaces.
pub fn note_product(device: &Device, rows: usize, cols: usize) {
    let Device::Cuda(cuda) = device else { return };
    let need = rows * cols.div_ceil(ROW_PADDING) * ROW_PADDING;
    let mut all = marks();
    let marks = all.entry(cuda.id()).or_default();
    let mark = if rows <= MMVQ_MAX_ROWS { &mut marks.mmvq } else { &mut marks.mmq };
    if need > *mark {
        *mark = need;
        marks.generation += 1;
    }
}

/// How many times candle's quantized-matmul workspaces on `device` may have moved: a graph captured
/// when this was `g` may replay only while it still is `g`.
pub fn generation(device: &CudaDevice) -> u64 {
    marks().get(&device.id()).map_or(0, |m| m.generation)
}
