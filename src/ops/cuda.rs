//! Launches bodega's CUDA kernels (`kernels/cuda`, compiled to PTX by `build.rs`) on candle's CUDA
//! device: `kv_write` in place, paged attention (a decode kernel for sequences with one query, a tiled
//! one for the others, both on tensor cores for f16/bf16 caches, all split over the context and reduced),
//! the gated activation of a feed-forward block, the residual add fused with the next RMS norm, the
//! row argmax of greedy sampling and the row top-k of sampling with top-k. The PTX of the newest
//! compiled architecture the GPU supports is loaded once per device (candle caches modules).

use super::cpu::AttentionParams;
use super::cuda_capture;
use super::cuda_launch::KernelLaunch;
use super::AttentionMetadata;
use candle_core::cuda_backend::cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig,
};
use candle_core::cuda_backend::{CudaStorageSlice, DeviceId, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));
}

/// Threads per attention block (`NT` in `paged_attention.cu`).
const ATTENTION_THREADS: u32 = 128;
/// Threads per block of `paged_attention_reduce` (`RED_THREADS` in `paged_attention.cu`).
const REDUCE_THREADS: u32 = 256;
/// Rows (token, head) up to which the partition reduce loads 8 partitions a thread at a time
/// (`paged_attention_reduce_c8`: one round trip to memory for a 32k context, 3 blocks per SM) rather
/// than 2 (`_c2`: 8 blocks per SM, for the many rows of a prefill or a large batch). Up to 256 rows
/// the wide kernel's blocks fit in one wave on an H100's 132 SMs. The kernels sum in the same order.
const REDUCE_FEW_ROWS: usize = 256;
/// Rows up to which the reduce takes `_c8_s4` over at most [`REDUCE_SLICED_PARTITIONS`] partitions
/// (each row's columns split over [`REDUCE_SLICES`] blocks, so that the few rows of one or two
/// sequences of 32 query heads read on more SMs), and `_c32` over more partitions than `_c8` loads in
/// one round trip (32 at a time: one round trip for a 128k context's 512 partitions at head size 64,
/// where `_c8` takes four). docs/perf.md has the measurements behind both limits.
const REDUCE_FEWEST_ROWS: usize = 64;
/// The most partitions a row may have for the sliced reduce (`_s4` measured 0.2–0.5 µs faster up
/// to 64, slower over 128 and more).
const REDUCE_SLICED_PARTITIONS: usize = 64;
/// Blocks a row's columns are split over by the sliced reduce (`SLICES` in `paged_attention.cu`).
const REDUCE_SLICES: u32 = 4;
/// Key of the slot mapping's upload in [`AttentionMetadata::uploads`].
const SLOTS_UPLOAD: u32 = 0;
/// Key of the attention kernel's packed metadata for `tokens_per_item` (1 + that number).
const ATTENTION_UPLOAD: u32 = 1;
/// Threads per row of `add_rms_norm` (`NORM_THREADS` in `add_norm.cu`).
const NORM_THREADS: u32 = 256;
/// Threads per block of the gated activation (`GATED_THREADS` in `gated.cu`).
const GATED_THREADS: u32 = 256;
/// Threads per row of `argmax_rows` (`ARGMAX_THREADS` in `argmax.cu`).
const ARGMAX_THREADS: u32 = 1024;
/// Query heads of a GQA group per decode block on CUDA cores (`G` in `paged_attention.cu`): 4 when
/// the group is that small (no block computes padding heads), else 8.
fn decode_heads(group: usize) -> usize {
    if group <= 4 {
        4
    } else {
        8
    }
}
/// Query heads per decode block on tensor cores (`DecMma::G`: the mma's n).
const DECODE_MMA_HEADS: usize = 8;
/// Rounds of cache loads each decode lane keeps in flight (`DEC_DEPTH` in `paged_attention.cu`).
const DECODE_DEPTH: usize = 2;
/// Keys each decode lane takes per round (`UK`).
const DECODE_KEYS_PER_LANE: usize = 2;

/// Dynamic shared memory of a decode block of `g` query heads (`paged_decode` in
/// `paged_attention.cu`): each lane's staging slots (`Dec::SLOTS`, 16 bytes each), which the warps'
/// sums (`WARPS × g × head_dim` f32) reuse at the end.
fn decode_shared_bytes(head_dim: usize, elem_bytes: usize, g: usize) -> u32 {
    let per_load = 16 / elem_bytes;
    let lanes_per_key = (head_dim / per_load).min(32);
    let pieces = head_dim / (per_load * lanes_per_key);
    let staging = DECODE_DEPTH * DECODE_KEYS_PER_LANE * pieces * ATTENTION_THREADS as usize * 16;
    let sums = ATTENTION_THREADS as usize / 32 * g * head_dim * 4;
    staging.max(sums) as u32
}

/// Dynamic shared memory of a tensor-core decode block (`DecMma::SMEM` in `paged_attention_mma.cu`):
/// each warp's staging slots (2 at head size 64, else 1) of 16 keys and their values (rows swizzled
/// at head size 64, else padded by 8 two-byte elements), which the warps' outputs
/// (`WARPS × 8 × head_dim` f32) reuse at the end.
fn decode_mma_shared_bytes(head_dim: usize) -> u32 {
    let warps = ATTENTION_THREADS as usize / 32;
    let (depth, row) = if head_dim == 64 { (2, head_dim) } else { (1, head_dim + 8) };
    let staging = warps * depth * 2 * 16 * row * 2;
    let sums = warps * DECODE_MMA_HEADS * head_dim * 4;
    staging.max(sums) as u32
}

/// Words per decoding sequence in the decode kernels' list (`DECODE_ENTRY` in `attention.cuh`).
const DECODE_ENTRY: usize = 3;

/// Keys per context partition (`PART` in `attention.cuh`).
const PARTITION_KEYS: usize = 256;
/// Keys per decode partition of a sequence of more than [`PARTITION_KEYS`] and at most
/// [`SHORT_CONTEXT`] keys (`SHORT_PART`).
const SHORT_PARTITION_KEYS: usize = 64;
/// The longest context that takes [`SHORT_PARTITION_KEYS`] (`SHORT_CTX`).
const SHORT_CONTEXT: usize = 1024;

/// Context partitions of a step whose block tables hold `keys` keys: enough for the chunk kernel's
/// [`PARTITION_KEYS`] and, when sequences decode past one partition, for short contexts cut into
/// [`SHORT_PARTITION_KEYS`]. A function of the table width alone, so that a replayed graph's grid
/// stays fixed while its sequences grow.
fn partitions(keys: usize, decodes: bool) -> usize {
    let long = keys.div_ceil(PARTITION_KEYS);
    let short = match decodes && keys > PARTITION_KEYS {
        true => keys.min(SHORT_CONTEXT).div_ceil(SHORT_PARTITION_KEYS),
        false => 0,
    };
    long.max(short).max(1)
}

/// The kernel `name` of kernel family `family`, from the PTX of the newest compiled architecture
/// that the device runs.
fn function(dev: &CudaDevice, family: &str, name: &str) -> Result<CudaFunction> {
    let (major, minor) = dev.cuda_stream().context().compute_capability().w()?;
    let cc = (major * 10 + minor) as u32;
    let Some(&(_, arch, source)) =
        ptx::PTX.iter().filter(|(f, a, _)| *f == family && *a <= cc).max_by_key(|(_, a, _)| *a)
    else {
        candle_core::bail!(
            "this GPU (compute capability {major}.{minor}) is older than every architecture bodega's kernels \
             were compiled for ({:?}; set BODEGA_CUDA_ARCHS when building)",
            ptx::ARCHS
        );
    };
    Ok(dev.get_or_load_custom_func(name, &format!("bodega_{family}_sm{arch}"), source)?.into_cuda_function())
}

/// Lets kernel `name` on `dev` launch with `bytes` of dynamic shared memory: above 48 KiB a kernel
/// must opt in. The limit belongs to the loaded function, so it is raised once per device and
/// kernel, not at every launch (and so never while a decode graph is being captured).
fn allow_shared_bytes(dev: &CudaDevice, name: &str, func: &CudaFunction, bytes: u32) -> Result<()> {
    static RAISED: OnceLock<Mutex<HashMap<(DeviceId, String), u32>>> = OnceLock::new();
    if bytes <= 48 * 1024 {
        return Ok(());
    }
    let mut raised = RAISED.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    let limit = raised.entry((dev.id(), name.to_string())).or_insert(0);
    if *limit < bytes {
        let attribute = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        func.set_attribute(attribute, bytes as i32).w()?;
        *limit = bytes;
    }
    Ok(())
}

/// Kernel-name suffix and element size of a cache storage type.
fn cache_type(slice: &CudaStorageSlice) -> Result<(&'static str, usize)> {
    Ok(match slice {
        CudaStorageSlice::F32(_) => ("f32", 4),
        CudaStorageSlice::F16(_) => ("f16", 2),
        CudaStorageSlice::BF16(_) => ("bf16", 2),
        _ => candle_core::bail!("the KV cache holds f32, f16 or bf16"),
    })
}

/// The f32 elements `[start, end)` of a contiguous storage.
fn f32_view<'a>(storage: &'a CudaStorage, layout: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    let CudaStorageSlice::F32(slice) = &storage.slice else {
        candle_core::bail!("{what} must be f32 on CUDA");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what} must be contiguous");
    };
    Ok(slice.slice(start..end))
}

/// The argmax of each of the `rows` rows of `vocab` f32 in `logits` (contiguous), as `[rows]` u32.
pub fn argmax_rows(logits: &CudaStorage, layout: &Layout, rows: usize, vocab: usize) -> Result<CudaStorage> {
    let dev = logits.device.clone();
    let logits = f32_view(logits, layout, "argmax-rows logits")?;
    // SAFETY: the kernel writes one id per row, every row.
    let out = unsafe { cuda_capture::alloc::<u32>(&dev, rows)? };
    let func = function(&dev, "argmax", "argmax_rows_f32")?;
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (ARGMAX_THREADS, 1, 1), shared_mem_bytes: 0 };
    let stream = dev.cuda_stream();
    let mut builder = KernelLaunch::new(&stream, &func);
    let vocab = vocab as u32;
    builder.arg(&logits).arg(&vocab).arg(&out);
    // SAFETY: reads `rows * vocab` f32 of a contiguous view of that size, writes `rows` u32.
    unsafe { builder.launch(cfg) }?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Threads per block of the top-k kernels (`TOPK_THREADS` in `topk.cu`).
const TOPK_THREADS: u32 = 1024;
/// The shortest slice a row is cut into for `top_k_slices_f32`: shorter rows take one block.
const TOPK_SLICE_MIN: usize = 8192;
/// The most slices per row (a 128,256-entry vocabulary takes 15).
const TOPK_SLICES_MAX: usize = 16;

/// Slices of `vocab` for `top_k_slices_f32` (and their length), or `None` for one block a row: as
/// many as rows of at least [`TOPK_SLICE_MIN`] give, when every slice holds at least `k`.
fn top_k_slices(vocab: usize, k: usize) -> Option<(usize, usize)> {
    let slices = (vocab / TOPK_SLICE_MIN).min(TOPK_SLICES_MAX);
    let len = vocab.div_ceil(slices.max(1));
    (slices >= 2 && vocab - (slices - 1) * len >= k).then_some((slices, len))
}

/// The `k` largest of each of the `rows` rows of `vocab` f32 in `logits` (contiguous) with their
/// indices, as `[rows, 2, k]` u32: the indices, then the values' bits (`ops::top_k_rows`). A long
/// row is cut into slices whose k largest are selected first, so that a row is not one SM's work.
pub fn top_k_rows(logits: &CudaStorage, layout: &Layout, rows: usize, vocab: usize, k: usize) -> Result<CudaStorage> {
    if k == 0 || k > vocab {
        candle_core::bail!("top-k rows: k = {k} must lie in 1..={vocab}");
    }
    let dev = logits.device.clone();
    let logits = f32_view(logits, layout, "top-k logits")?;
    // SAFETY: the last kernel writes all 2k words of every row (k ≤ vocab: the k-th largest exists).
    let out = unsafe { cuda_capture::alloc::<u32>(&dev, rows * 2 * k)? };
    let stream = dev.cuda_stream();
    let block =
        |x: u32, y: u32| LaunchConfig { grid_dim: (x, y, 1), block_dim: (TOPK_THREADS, 1, 1), shared_mem_bytes: 0 };
    let (vocab_u, k_u) = (vocab as u32, k as u32);
    let slices = match top_k_slices(vocab, k) {
        Some((slices, len)) => {
            // SAFETY: every slice block writes its 2k words (each slice holds at least k).
            let scratch = unsafe { cuda_capture::alloc::<u32>(&dev, rows * slices * 2 * k)? };
            let func = function(&dev, "topk", "top_k_slices_f32")?;
            let mut builder = KernelLaunch::new(&stream, &func);
            let len = len as u32;
            builder.arg(&logits).arg(&vocab_u).arg(&k_u).arg(&len).arg(&scratch);
            // SAFETY: reads `rows * vocab` f32 of a contiguous view of that size, writes `rows * slices * 2k` u32.
            unsafe { builder.launch(block(rows as u32, slices as u32)) }?;
            Some((scratch, slices as u32))
        }
        None => None,
    };
    let func = function(&dev, "topk", "top_k_rows_f32")?;
    let mut builder = KernelLaunch::new(&stream, &func);
    let num_slices = slices.as_ref().map_or(0, |s| s.1);
    builder.arg(&logits);
    // Without slices the kernel never reads its candidates argument: any valid pointer will do.
    match &slices {
        Some((scratch, _)) => builder.arg(scratch),
        None => builder.arg(&out),
    };
    builder.arg(&vocab_u).arg(&num_slices).arg(&k_u).arg(&out);
    // SAFETY: reads the logits (or the slices' candidates written above), writes `rows * 2k` u32.
    unsafe { builder.launch(block(rows as u32, 1)) }?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Threads per block of `gemv` (`GEMV_THREADS` in `gemv.cu`).
const GEMV_THREADS: u32 = 128;

/// Rows of W per `gemv` block for `m` rows of x: its 4 warps × `GemvShape<M>::ROWS` in `common.cuh`.
fn gemv_rows_per_block(m: usize) -> usize {
    4 * if m <= 2 { 2 } else { 4 }
}

/// `x · Wᵀ`, `[M, N]` f32, for contiguous f32 `x` `[M, K]` (1 ≤ M ≤ 8) and f16/bf16 `w` `[N, K]`
/// (K a multiple of 8), with `dims` = (M, N, K) checked by the caller.
pub fn gemv(
    (x, x_l): (&CudaStorage, &Layout),
    (w, w_l): (&CudaStorage, &Layout),
    (m, n, k): (usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = x.device.clone();
    let x = f32_view(x, x_l, "gemv x")?;
    // SAFETY: the kernel writes every (row of x, row of W) sum.
    let out = unsafe { cuda_capture::alloc::<f32>(&dev, m * n)? };
    let start = w_l.start_offset();
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(gemv_rows_per_block(m)) as u32, 1, 1),
        block_dim: (GEMV_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let stream = dev.cuda_stream();
    let kernel = |suffix: &str| function(&dev, "gemv", &format!("gemv_{suffix}_m{m}"));
    let args = (&x, &out, n as u32, k as u32, cfg);
    match &w.slice {
        CudaStorageSlice::F16(w) => launch_gemv(&stream, &kernel("f16")?, &w.slice(start..start + n * k), args)?,
        CudaStorageSlice::BF16(w) => launch_gemv(&stream, &kernel("bf16")?, &w.slice(start..start + n * k), args)?,
        _ => candle_core::bail!("gemv takes f16 or bf16 weights"),
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// The activations, the output, N, K and the grid of a `gemv` launch.
type GemvArgs<'a> = (&'a CudaView<'a, f32>, &'a CudaSlice<f32>, u32, u32, LaunchConfig);

fn launch_gemv<T: DeviceRepr>(
    stream: &CudaStream,
    func: &CudaFunction,
    weights: &CudaView<'_, T>,
    (x, out, n, k, cfg): GemvArgs<'_>,
) -> Result<()> {
    let mut builder = KernelLaunch::new(stream, func);
    builder.arg(weights).arg(x).arg(out).arg(&n).arg(&k);
    // SAFETY: reads the `n * k` weights of the view and `m * k` activations, writes `m * n` sums.
    unsafe { builder.launch(cfg) }?;
    Ok(())
}

/// Rows of W per `qgemv` group (`QG_ROWS` in `qgemv.cu`: the mma's m).
const QGEMV_WEIGHT_ROWS: usize = 16;
/// Weights of a row per staged `qgemv` chunk (`QG_CHUNK` Q8_0 blocks of 32).
const QGEMV_CHUNK_WEIGHTS: usize = 256;
/// Rows of x one `qgemv` tile takes (`QG_COLS`: the mma's n); the `_n16` kernels take two tiles.
const QGEMV_TILE_ROWS: usize = 8;

/// A `qgemv` launch shape: warps per block (a group of 16 rows of W is split between them, a chunk
/// of 256 columns at a time) and chunks each warp keeps in flight (the kernel's `WARPS`, `DEPTH`).
#[derive(Clone, Copy)]
struct QgemvShape {
    warps: usize,
    depth: usize,
}

impl QgemvShape {
    /// The compiled kernel of this shape for `m` rows of x: `_m1`, the variant for exactly one (a
    /// single sequence's step: x held in registers, only its column of the products computed; the
    /// same arithmetic for that row as in a batch), `_n16` the one for two tiles (9 to 16 rows).
    fn name(self, m: usize) -> String {
        let variant = match m {
            1 => "_m1",
            ..=QGEMV_TILE_ROWS => "",
            _ => "_n16",
        };
        format!("qgemv_q8_0_w{}_d{}{variant}", self.warps, self.depth)
    }

    /// Threads per block.
    fn threads(self) -> u32 {
        32 * self.warps as u32
    }

    /// Dynamic shared memory for `m` rows of x, rows of `k` weights and the warps' sums of
    /// `sum_buffers` groups (`qgemv_q8_0`): each warp's staged chunks of 16 rows of W (272 bytes a
    /// row), its quantized chunks of x (`m` rows of 288 bytes and 8 f32 scales a computed row of x),
    /// and the sums (16 f32 a computed row of x, warp and group). A tile computes 8 rows of x.
    fn shared_bytes(self, m: usize, k: usize, sum_buffers: usize) -> u32 {
        let cols = m.div_ceil(QGEMV_TILE_ROWS) * QGEMV_TILE_ROWS;
        let chunks_per_group = (k / QGEMV_CHUNK_WEIGHTS).div_ceil(self.warps);
        let per_warp = self.depth * QGEMV_WEIGHT_ROWS * 272 + chunks_per_group * (m * 288 + 32 * cols);
        (self.warps * (per_warp + sum_buffers * QGEMV_WEIGHT_ROWS * cols * 4)) as u32
    }
}

/// A `qgemv` launch: its shape, sum buffers and dynamic shared memory.
type QgemvLaunch = (QgemvShape, usize, u32);

/// The `qgemv` launch for `m` rows of x and rows of `k` weights, or `None` for 9 to 16 rows where
/// two tiles do not fit (long rows: candle's `QMatMul` then runs, faster there than two launches of
/// 8 rows, docs/perf.md). As measured on an H200 (docs/perf.md): 8 warps with 2 chunks in flight
/// each, or 16 for rows of 8,192 weights and more (a down projection's: 10–17% faster there, slower
/// on the shorter rows); the first smaller shape that fits 8 rows where the device cannot give a
/// block that much shared memory. The warps depend on K and the device only, never on M, because
/// the warps' sums are added in warp order: a sequence's products stay bitwise the same in any batch
/// (the two-tile kernel sums each row as the one-tile kernel does, at any depth). Two tiles take
/// one chunk in flight a warp instead of two where that lets more blocks share a multiprocessor
/// (1.18–1.28× on Llama-3.2-1B's gate/up and output matrices, whose two-tile blocks otherwise run
/// one a multiprocessor). Two sum buffers where they fit, else one (the sums are the same).
fn qgemv_launch(dev: &CudaDevice, m: usize, k: usize) -> Result<Option<QgemvLaunch>> {
    let limit = shared_bytes_limit(dev)?;
    let shapes = [16, 8, 4].map(|warps| QgemvShape { warps, depth: 2 });
    let shape = shapes
        .into_iter()
        .skip(usize::from(k < 8192))
        .find(|shape| shape.shared_bytes(QGEMV_TILE_ROWS, k, 1) <= limit)
        .ok_or_else(|| {
            candle_core::Error::Msg(format!("q8-gemv: {limit} bytes of shared memory a block are too few"))
        })?;
    let depths: &[usize] = if m > QGEMV_TILE_ROWS { &[2, 1] } else { &[2] };
    // The fitting depth with the most blocks resident at once (the deeper on a tie).
    let mut best: Option<(QgemvLaunch, u32)> = None;
    for &depth in depths {
        let shape = QgemvShape { depth, ..shape };
        if shape.shared_bytes(m, k, 1) > limit {
            continue;
        }
        let sum_buffers = if shape.shared_bytes(m, k, 2) <= limit { 2 } else { 1 };
        let bytes = shape.shared_bytes(m, k, sum_buffers);
        let name = shape.name(m);
        let func = function(dev, "qgemv", &name)?;
        // Raised once to all the device allows, so that no later launch (maybe inside a graph
        // capture) has to; before the occupancy query, which counts on it.
        allow_shared_bytes(dev, &name, &func, limit)?;
        let resident = resident_blocks(dev, &name, &func, shape.threads(), bytes)?;
        if best.is_none_or(|(_, most)| resident > most) {
            best = Some(((shape, sum_buffers, bytes), resident));
        }
    }
    Ok(best.map(|(launch, _)| launch))
}

/// Whether `qgemv` has a launch for `m` rows of x and rows of `k` weights on `dev` (it keeps each
/// warp's chunks of x in shared memory: very long rows, or a device with little shared memory, leave
/// them to candle).
pub fn qgemv_fits(dev: &CudaDevice, m: usize, k: usize) -> bool {
    matches!(qgemv_launch(dev, m, k), Ok(Some(_)))
}

/// Blocks of kernel `name` (`func`) that `dev` holds at once with `threads` a block and `bytes` of
/// dynamic shared memory (at least one a multiprocessor): asked of the driver once per device, kernel
/// and size, not at every eager launch.
fn resident_blocks(dev: &CudaDevice, name: &str, func: &CudaFunction, threads: u32, bytes: u32) -> Result<u32> {
    /// A launch size: device, kernel and dynamic shared memory.
    type Launch = (DeviceId, String, u32);
    static RESIDENT: OnceLock<Mutex<HashMap<Launch, u32>>> = OnceLock::new();
    let mut resident = RESIDENT.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&blocks) = resident.get(&(dev.id(), name.to_string(), bytes)) {
        return Ok(blocks);
    }
    let attribute = CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
    let multiprocessors = dev.cuda_stream().context().attribute(attribute).w()? as u32;
    let per_multiprocessor = func.occupancy_max_active_blocks_per_multiprocessor(threads, bytes as usize, None).w()?;
    let blocks = per_multiprocessor.max(1) * multiprocessors;
    resident.insert((dev.id(), name.to_string(), bytes), blocks);
    Ok(blocks)
}

/// The most shared memory a block may opt in to on `dev` (99 KiB on some GPUs, 227 KiB on an H100).
fn shared_bytes_limit(dev: &CudaDevice) -> Result<u32> {
    static LIMITS: OnceLock<Mutex<HashMap<DeviceId, u32>>> = OnceLock::new();
    let mut limits = LIMITS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&limit) = limits.get(&dev.id()) {
        return Ok(limit);
    }
    let attribute = CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
    let limit = dev.cuda_stream().context().attribute(attribute).w()? as u32;
    limits.insert(dev.id(), limit);
    Ok(limit)
}

/// `x · Wᵀ`, `[M, N]` f32, for contiguous f32 `x` `[M, K]` (1 ≤ M ≤ 16, 16-byte aligned) and Q8_0 `w`
/// `[N, K]` read in place, with `dims` = (M, N, K) checked by the caller; K must be a multiple of 256
/// (`qgemv.cu` stages rows in aligned chunks of 8 blocks), and 9 to 16 rows need a launch that fits
/// ([`qgemv_fits`]).
pub fn q8_gemv(
    (x, x_l): (&CudaStorage, &Layout),
    w: &candle_core::quantized::QTensor,
    (m, n, k): (usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = x.device.clone();
    if !w.device().same_device(&candle_core::Device::Cuda(dev.clone())) {
        candle_core::bail!("q8-gemv: the weights are on another device than the activations");
    }
    if !k.is_multiple_of(super::QGEMV_K_MULTIPLE) {
        candle_core::bail!("q8-gemv on CUDA takes rows of a multiple of {} weights, not {k}", super::QGEMV_K_MULTIPLE);
    }
    let Some((shape, sum_buffers, bytes)) = qgemv_launch(&dev, m, k)? else {
        candle_core::bail!("q8-gemv: {m} rows of {k} weights do not fit a block's shared memory");
    };
    let x = f32_view(x, x_l, "q8-gemv x")?;
    // SAFETY: the kernel writes every (row of x, row of W) sum.
    let out = unsafe { cuda_capture::alloc::<f32>(&dev, m * n)? };
    let name = shape.name(m);
    let func = function(&dev, "qgemv", &name)?;
    // As many blocks as fit on the device at once (each takes every gridDim-th group of 16 rows), or
    // one per group when there are fewer.
    let resident = resident_blocks(&dev, &name, &func, shape.threads(), bytes)?;
    let groups = n.div_ceil(QGEMV_WEIGHT_ROWS) as u32;
    let cfg = LaunchConfig {
        grid_dim: (groups.min(resident), 1, 1),
        block_dim: (shape.threads(), 1, 1),
        shared_mem_bytes: bytes,
    };
    let stream = dev.cuda_stream();
    let (weights, _in_use) = w.device_ptr_with_guard(&stream)?;
    let (weights, m, n, k, sum_buffers) = (weights as u64, m as u32, n as u32, k as u32, sum_buffers as u32);
    let mut builder = KernelLaunch::new(&stream, &func);
    builder.arg(&weights).arg(&x).arg(&out).arg(&m).arg(&n).arg(&k).arg(&sum_buffers);
    // SAFETY: reads the `n` rows of `k / 32` Q8_0 blocks that `w` holds and `m * k` activations,
    // writes `m * n` sums.
    unsafe { builder.launch(cfg) }?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// `[2, rows, dim]`: `x + y` and its RMS norm by `w` (all contiguous f32).
pub fn add_rms_norm(
    (x, x_l): (&CudaStorage, &Layout),
    (y, y_l): (&CudaStorage, &Layout),
    (w, w_l): (&CudaStorage, &Layout),
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<CudaStorage> {
    let dev = x.device.clone();
    if rows == 0 || dim == 0 {
        candle_core::bail!("add-rms-norm of an empty [{rows}, {dim}] tensor");
    }
    let (x, y) = (f32_view(x, x_l, "add-rms-norm x")?, f32_view(y, y_l, "add-rms-norm y")?);
    let w = f32_view(w, w_l, "add-rms-norm weight")?;
    // SAFETY: the kernel writes both halves of every row.
    let out = unsafe { cuda_capture::alloc::<f32>(&dev, 2 * rows * dim)? };
    let func = function(&dev, "add_norm", "add_rms_norm_f32")?;
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
    let stream = dev.cuda_stream();
    let mut builder = KernelLaunch::new(&stream, &func);
    let (rows, dim) = (rows as u32, dim as u32);
    builder.arg(&x).arg(&y).arg(&w).arg(&out).arg(&rows).arg(&dim).arg(&eps);
    // SAFETY: reads `rows * dim` of x and y and `dim` of w (checked shapes), writes `out`.
    unsafe { builder.launch(cfg) }?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Rows of an f32 tensor `[rows, ...]` whose rows are contiguous inside (a `[rows, n]` slice of a
/// wider matrix, say): its view from the first element and its row stride.
fn row_view<'a>(storage: &'a CudaStorage, layout: &Layout, what: &str) -> Result<(CudaView<'a, f32>, usize)> {
    let CudaStorageSlice::F32(slice) = &storage.slice else {
        candle_core::bail!("{what} must be f32 on CUDA");
    };
    let (dims, stride) = (layout.dims(), layout.stride());
    let Some((&rows, inner)) = dims.split_first() else { candle_core::bail!("{what}: a scalar has no rows") };
    let n: usize = inner.iter().product();
    let mut expected = 1;
    for (&dim, &st) in inner.iter().zip(&stride[1..]).rev() {
        if dim > 1 && st != expected {
            candle_core::bail!("{what}: rows must be contiguous inside");
        }
        expected *= dim;
    }
    let start = layout.start_offset();
    let row_stride = if rows > 1 { stride[0] } else { n };
    Ok((slice.slice(start..start + (rows - 1) * row_stride + n), row_stride))
}

/// `act(gate) · up` for `[rows, n]` f32 `gate` and `up` whose rows are contiguous inside (the two
/// halves of a fused gate/up output, say); returns a contiguous `[rows, n]`.
pub fn gated_activation(
    gelu: bool,
    (gate, gate_l): (&CudaStorage, &Layout),
    (up, up_l): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = gate.device.clone();
    let (rows, n) = gate_l.shape().dims2()?;
    if rows == 0 || n == 0 {
        candle_core::bail!("gated-activation of an empty [{rows}, {n}] tensor");
    }
    let (gate, gate_stride) = row_view(gate, gate_l, "gated-activation gate")?;
    let (up, up_stride) = row_view(up, up_l, "gated-activation up")?;
    // SAFETY: the kernel writes all `rows * n` values.
    let out = unsafe { cuda_capture::alloc::<f32>(&dev, rows * n)? };
    let func = function(&dev, "gated", if gelu { "gated_gelu_f32" } else { "gated_silu_f32" })?;
    let cfg = LaunchConfig {
        grid_dim: ((n as u32).div_ceil(GATED_THREADS), rows as u32, 1),
        block_dim: (GATED_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let stream = dev.cuda_stream();
    let mut builder = KernelLaunch::new(&stream, &func);
    let (n, gate_stride, up_stride) = (n as u32, gate_stride as u32, up_stride as u32);
    builder.arg(&gate).arg(&up).arg(&out).arg(&n).arg(&gate_stride).arg(&up_stride);
    // SAFETY: reads `rows` rows of `n` at the given strides inside the views, writes `out`.
    unsafe { builder.launch(cfg) }?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Warps per block of `rope_kv_write` (`ROPE_WARPS` in `rope_kv.cu`): one warp per head.
const ROPE_KV_WARPS: u32 = 4;

/// One step's RoPE and cache write: returns `q` rotated (`[T, heads, D]` contiguous f32) and writes
/// `k` rotated and `v` into the caches' slots (`meta.slot_mapping`; shapes and slots checked by the
/// caller). `qkv` are `[T, heads, D]` rows contiguous inside (thirds of a fused product are fine),
/// `tables` the `[T, D / 2]` cosines and sines, `caches` written in place though shared: candle lends
/// one tensor mutably per op, and the engine's one stream orders this write before any read.
pub fn rope_kv_write(
    qkv: [(&CudaStorage, &Layout); 3],
    tables: [(&CudaStorage, &Layout); 2],
    caches: [(&CudaStorage, &Layout); 2],
    meta: &AttentionMetadata,
    interleaved: bool,
) -> Result<CudaStorage> {
    let [(q, q_l), (k, k_l), (v, v_l)] = qkv;
    let dev = q.device.clone();
    let (t, heads, d) = q_l.shape().dims3()?;
    let (_, kv_heads, _) = k_l.shape().dims3()?;
    if t == 0 {
        candle_core::bail!("rope-kv-write of an empty step");
    }
    let (q, q_stride) = row_view(q, q_l, "rope-kv-write q")?;
    let (k, k_stride) = row_view(k, k_l, "rope-kv-write k")?;
    let (v, v_stride) = row_view(v, v_l, "rope-kv-write v")?;
    let [(cos, cos_l), (sin, sin_l)] = tables;
    let (cos, sin) = (f32_view(cos, cos_l, "RoPE cosines")?, f32_view(sin, sin_l, "RoPE sines")?);
    let [(k_cache, kc_l), (v_cache, vc_l)] = caches;
    if kc_l.start_offset() != 0 || vc_l.start_offset() != 0 || !kc_l.is_contiguous() || !vc_l.is_contiguous() {
        candle_core::bail!("rope-kv-write: caches must be whole contiguous tensors");
    }
    let slots = meta.uploads.get_or_upload(SLOTS_UPLOAD, || dev.cuda_stream().clone_htod(&meta.slot_mapping).w())?;
    // SAFETY: the kernel writes every (token, query head) row.
    let out = unsafe { cuda_capture::alloc::<f32>(&dev, t * heads * d)? };
    let style = if interleaved { "interleaved" } else { "halves" };
    let func = function(&dev, "rope_kv", &format!("rope_kv_write_{}_{style}", cache_type(&k_cache.slice)?.0))?;
    let head_blocks = ((heads + 2 * kv_heads) as u32).div_ceil(ROPE_KV_WARPS);
    let cfg = LaunchConfig {
        grid_dim: (t as u32, head_blocks, 1),
        block_dim: (32 * ROPE_KV_WARPS, 1, 1),
        shared_mem_bytes: 0,
    };
    let stream = dev.cuda_stream();
    let mut builder = KernelLaunch::new(&stream, &func);
    let strides = [q_stride as u32, k_stride as u32, v_stride as u32];
    builder.arg(&q).arg(&k).arg(&v).arg(&strides[0]).arg(&strides[1]).arg(&strides[2]);
    builder.arg(&cos).arg(&sin).arg(&*slots).arg(&out);
    match (&k_cache.slice, &v_cache.slice) {
        (CudaStorageSlice::F32(kc), CudaStorageSlice::F32(vc)) => builder.arg(kc).arg(vc),
        (CudaStorageSlice::F16(kc), CudaStorageSlice::F16(vc)) => builder.arg(kc).arg(vc),
        (CudaStorageSlice::BF16(kc), CudaStorageSlice::BF16(vc)) => builder.arg(kc).arg(vc),
        _ => candle_core::bail!("rope-kv-write: keys and values must share one dtype"),
    };
    let dims = [heads as u32, kv_heads as u32, d as u32];
    builder.arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
    // SAFETY: reads T rows of q, k, v at their strides inside the views and T × D/2 angles; writes
    // `out` and the slots the caller checked are inside the caches.
    unsafe { builder.launch(cfg) }?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Writes `src` (`[T, row_len]` f32) into cache slots `meta.slot_mapping`, converting to the cache's
/// type.
pub fn kv_write(
    cache: &mut CudaStorage,
    cache_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    meta: &AttentionMetadata,
    row_len: usize,
) -> Result<()> {
    let slot_mapping = &meta.slot_mapping;
    if slot_mapping.is_empty() {
        return Ok(());
    }
    let dev = cache.device.clone();
    let src = f32_view(src, src_l, "kv-write source")?;
    let slots = meta.uploads.get_or_upload(SLOTS_UPLOAD, || dev.cuda_stream().clone_htod(slot_mapping).w())?;
    let func = function(&dev, "kv_write", &format!("kv_write_{}", cache_type(&cache.slice)?.0))?;
    let cfg = LaunchConfig {
        grid_dim: (slot_mapping.len() as u32, 1, 1),
        block_dim: (row_len.min(256) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let offset = cache_l.start_offset();
    let args = (&src, &*slots, offset, row_len as u32, cfg);
    let stream = dev.cuda_stream();
    match &mut cache.slice {
        CudaStorageSlice::F32(c) => launch_kv_write(&stream, &func, c, args),
        CudaStorageSlice::F16(c) => launch_kv_write(&stream, &func, c, args),
        CudaStorageSlice::BF16(c) => launch_kv_write(&stream, &func, c, args),
        _ => unreachable!("cache_type accepted the cache"),
    }
}

/// The source rows, their slots, the cache's start offset, the row length and the grid.
type KvWriteArgs<'a> = (&'a CudaView<'a, f32>, &'a CudaSlice<u32>, usize, u32, LaunchConfig);

fn launch_kv_write<T: DeviceRepr>(
    stream: &CudaStream,
    func: &CudaFunction,
    cache: &mut CudaSlice<T>,
    (src, slots, offset, row_len, cfg): KvWriteArgs<'_>,
) -> Result<()> {
    let cache = cache.slice_mut(offset..);
    let mut builder = KernelLaunch::new(stream, func);
    builder.arg(src).arg(slots).arg(&cache).arg(&row_len);
    // SAFETY: the kernel reads T rows of `row_len` f32 and writes them to slots that the caller
    // checked are inside the cache.
    unsafe { builder.launch(cfg) }?;
    Ok(())
}

/// Replaces `captured`'s metadata by `step`'s (a step of the same shape: sequences, queries, table
/// width) and rewrites its device copies in place, so that a CUDA graph captured over them reads the
/// new step. Uploads go straight to the stream (never through candle's capture cache of small
/// uploads, which must keep its contents).
pub fn refill_uploads(captured: &mut AttentionMetadata, step: AttentionMetadata) -> Result<()> {
    let same = |m: &AttentionMetadata| (m.num_seqs(), m.num_tokens(), m.max_blocks);
    if same(captured) != same(&step) {
        candle_core::bail!("a replayed step must keep its captured shape");
    }
    let mut uploads = std::mem::take(&mut captured.uploads);
    *captured = step;
    let meta: &AttentionMetadata = captured;
    let refilled = uploads.refill(|key, copy| {
        if let Some(slots) = copy.downcast_mut::<CudaSlice<u32>>() {
            let stream = slots.stream().clone();
            return stream.memcpy_htod(&meta.slot_mapping, slots).w();
        }
        let Some(packed) = copy.downcast_mut::<PackedMetadata>() else {
            candle_core::bail!("unknown device metadata under key {key}");
        };
        let (values, at) = pack_metadata(meta, (key - ATTENTION_UPLOAD) as usize, packed.partials);
        if values.len() != packed.len || at != packed.at {
            candle_core::bail!("a replayed step's attention metadata changed its layout");
        }
        let stream = packed.slice.stream().clone();
        stream.memcpy_htod(&values, &mut packed.slice).w()
    });
    captured.uploads = uploads;
    refilled
}

/// Launch parameters of the attention kernel (`AttnParams` in `paged_attention.cu`, same layout).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct KernelParams {
    num_heads: u32,
    num_kv_heads: u32,
    block_size: u32,
    max_blocks: u32,
    window: u32,
    scale: f32,
    heads_per_chunk: u32,
    num_chunks: u32,
    num_partitions: u32,
    num_tokens: u32,
}

// SAFETY: plain old data with the C layout the kernel declares.
unsafe impl DeviceRepr for KernelParams {}

/// The kernel that takes the sequences with several queries (chunked prefill, speculative
/// verification): tensor cores for f16/bf16 caches at head sizes 64/128/256, CUDA cores for f32
/// caches (which the GPU tests hold to f32 tolerances) and head sizes 16/32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkKernel {
    /// `paged_attention_mma.cu`: `warps` warps of 16 query rows, `parts` partitions per block.
    TensorCores {
        warps: usize,
        parts: usize,
    },
    CudaCores,
}

/// Whether attention over `cache` at `head_dim` runs on tensor cores: f16/bf16 caches at head sizes
/// 64/128/256 (`paged_attention_mma.cu`); f32 caches (which the GPU tests hold to f32 tolerances)
/// and head sizes 16/32 stay on CUDA cores.
fn on_tensor_cores(cache: &CudaStorageSlice, head_dim: usize) -> bool {
    matches!(cache, CudaStorageSlice::F16(_) | CudaStorageSlice::BF16(_)) && head_dim >= 64
}

impl ChunkKernel {
    fn new(cache: &CudaStorageSlice, head_dim: usize) -> Self {
        match on_tensor_cores(cache, head_dim) {
            // `MmaShape` in paged_attention_mma.cu: chosen on an H200 among 4 or 8 warps × 1, 2 or 4
            // partitions (docs/perf.md).
            true => Self::TensorCores { warps: if head_dim == 64 { 8 } else { 4 }, parts: 4 },
            false => Self::CudaCores,
        }
    }

    /// Partial results each of this kernel's query rows writes for the reduction when the context is
    /// cut into `partitions`: on tensor cores a block merges its consecutive partitions before writing
    /// (one per block along the context), on CUDA cores each partition is written. One means the
    /// kernel writes the row's output itself.
    fn partials(self, partitions: usize) -> usize {
        match self {
            Self::TensorCores { parts, .. } => partitions.div_ceil(parts),
            Self::CudaCores => partitions,
        }
    }

    /// Query rows (token, head) per block: 16 a warp on tensor cores (`MmaTile`), `2048 / head_dim`
    /// and at most 64 on CUDA cores (`Tile` in `paged_attention.cu`).
    fn rows(self, head_dim: usize) -> usize {
        match self {
            Self::TensorCores { warps, .. } => 16 * warps,
            Self::CudaCores => (2048 / head_dim).min(64),
        }
    }

    /// The launch of this kernel over `items` work items × `y` blocks, without its argument list.
    fn launch(self, suffix: &str, head_dim: usize, items: usize, y: usize) -> Launch {
        match self {
            Self::TensorCores { warps, parts } => {
                // `MmaTile::SMEM`: the query rows and `stages` tiles of keys and of values (32 keys
                // at head size 256, else 64), rows padded by 8 two-byte elements.
                let keys = if head_dim == 256 { 32 } else { 64 };
                let stages = if head_dim == 64 { 2 } else { 1 };
                Launch {
                    family: "paged_attention_mma",
                    name: format!("paged_attention_mma_{suffix}"),
                    threads: 32 * warps as u32,
                    parts_per_block: parts,
                    shared_bytes: ((16 * warps + 2 * stages * keys) * (head_dim + 8) * 2) as u32,
                    blocks: (items, y),
                }
            }
            Self::CudaCores => Launch {
                family: "paged_attention",
                name: format!("paged_attention_{suffix}"),
                threads: ATTENTION_THREADS,
                parts_per_block: 1,
                shared_bytes: 0,
                blocks: (items, y),
            },
        }
    }
}

/// The launch of the decode kernel (one query per sequence) over `decodes` sequences: on tensor cores
/// where the chunk kernel is (`paged_decode_mma`: on CUDA cores it was bound by its instructions, at
/// ~2.6 TB/s on an H200, docs/perf.md), else `paged_decode` on CUDA cores.
fn decode_launch(
    cache: &CudaStorageSlice,
    elem_bytes: usize,
    suffix: &str,
    shape: &AttentionParams,
    decodes: usize,
) -> Launch {
    let (head_dim, kv_heads) = (shape.head_dim, shape.num_kv_heads);
    let group = shape.num_heads / kv_heads;
    match on_tensor_cores(cache, head_dim) {
        true => Launch {
            family: "paged_attention_mma",
            name: format!("paged_decode_mma_{suffix}"),
            threads: ATTENTION_THREADS,
            parts_per_block: 1,
            shared_bytes: decode_mma_shared_bytes(head_dim),
            blocks: (decodes, kv_heads * group.div_ceil(DECODE_MMA_HEADS)),
        },
        false => {
            let g = decode_heads(group);
            Launch {
                family: "paged_attention",
                name: format!("paged_decode_{suffix}_g{g}"),
                threads: ATTENTION_THREADS,
                parts_per_block: 1,
                shared_bytes: decode_shared_bytes(head_dim, elem_bytes, g),
                blocks: (decodes, kv_heads * group.div_ceil(g)),
            }
        }
    }
}

/// One attention kernel's launch: blocks `(x, y, partitions / parts_per_block)`.
struct Launch {
    family: &'static str,
    name: String,
    threads: u32,
    parts_per_block: usize,
    /// Dynamic shared memory.
    shared_bytes: u32,
    blocks: (usize, usize),
}

/// How the queries are cut into thread blocks of [`ChunkKernel::rows`] rows (token, head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tiling {
    /// Query heads of a GQA group in one block.
    heads_per_chunk: usize,
    /// Blocks per group.
    num_chunks: usize,
    /// Query tokens of one sequence in one block.
    tokens_per_item: usize,
}

impl Tiling {
    fn new(shape: &AttentionParams, rows: usize) -> Self {
        let group = shape.num_heads / shape.num_kv_heads;
        let heads_per_chunk = group.min(rows);
        Self {
            heads_per_chunk,
            num_chunks: group.div_ceil(heads_per_chunk),
            tokens_per_item: (rows / heads_per_chunk).max(1),
        }
    }
}

/// Partial results the reduction combines for a query row: `[decoding rows, rows with several
/// queries]`, 0 where the kernel wrote the row's output itself.
type RowPartials = [u32; 2];

/// Device-side metadata of one call, packed into one upload: block tables, query offsets, context
/// lengths, the work items of the sequences with several queries (sequence, first query row, query
/// count), the sequences that decode, one query each ([`DECODE_ENTRY`] words: sequence, context
/// length, query row), then each query row's partial results to reduce (`partials`).
fn pack_metadata(meta: &AttentionMetadata, tokens_per_item: usize, partials: RowPartials) -> (Vec<u32>, [usize; 5]) {
    let b = meta.num_seqs();
    let mut packed = Vec::with_capacity(meta.block_tables.len().max(1) + 5 * b + 1 + 4 * meta.num_tokens());
    packed.extend_from_slice(&meta.block_tables);
    if packed.is_empty() {
        packed.push(0); // a zero-width table still needs a valid pointer
    }
    let cu_at = packed.len();
    packed.extend_from_slice(&meta.cu_query_lens);
    let ctx_at = packed.len();
    packed.extend_from_slice(&meta.context_lens);
    let work_at = packed.len();
    let query_rows = |s: usize| meta.cu_query_lens[s] as usize..meta.cu_query_lens[s + 1] as usize;
    for s in (0..b).filter(|&s| query_rows(s).len() > 1) {
        let rows = query_rows(s);
        for first in rows.clone().step_by(tokens_per_item) {
            packed.extend([s as u32, first as u32, (rows.end - first).min(tokens_per_item) as u32]);
        }
    }
    let decode_at = packed.len();
    for s in (0..b).filter(|&s| query_rows(s).len() == 1) {
        packed.extend([s as u32, meta.context_lens[s], meta.cu_query_lens[s]]);
    }
    let partials_at = packed.len();
    for s in 0..b {
        let rows = query_rows(s);
        let n = partials[usize::from(rows.len() > 1)];
        packed.extend(std::iter::repeat_n(n, rows.len()));
    }
    (packed, [cu_at, ctx_at, work_at, decode_at, partials_at])
}

/// One call's uploaded metadata ([`pack_metadata`]), where its parts start and the row partials it
/// was packed with (a replayed graph's refill packs the same).
struct PackedMetadata {
    slice: CudaSlice<u32>,
    len: usize,
    at: [usize; 5],
    partials: RowPartials,
}

/// Paged attention on the GPU: `q` `[T, heads, head_dim]` f32, caches of f32/f16/bf16; returns the
/// output `[T, heads, head_dim]` f32. The metadata must have been validated by the caller.
pub fn paged_attention(
    (q, q_l): (&CudaStorage, &Layout),
    (k, k_l): (&CudaStorage, &Layout),
    (v, v_l): (&CudaStorage, &Layout),
    meta: &AttentionMetadata,
    shape: AttentionParams,
) -> Result<CudaStorage> {
    let dev = q.device.clone();
    let q = f32_view(q, q_l, "paged-attention queries")?;
    let tokens = meta.num_tokens();
    let d = shape.head_dim;
    if ![16, 32, 64, 128, 256].contains(&d) {
        candle_core::bail!("paged-attention on CUDA takes head sizes 16, 32, 64, 128 or 256, not {d}");
    }
    let out_len = tokens * shape.num_heads * d;
    if tokens == 0 {
        return Ok(CudaStorage::wrap_cuda_slice(dev.alloc_zeros::<f32>(1)?, dev));
    }
    // SAFETY: the kernels write every (token, head) row: the work items cover the queries of each
    // sequence with several and the chunks each group's heads; the decode blocks cover each decoding
    // sequence's query and its group's heads in chunks (`decode_launch`).
    let out = unsafe { cuda_capture::alloc::<f32>(&dev, out_len)? };
    let chunk_kernel = ChunkKernel::new(&k.slice, d);
    let tiling = Tiling::new(&shape, chunk_kernel.rows(d));
    // The partitions cover the block tables' width, not the longest context: a replayed graph's grid
    // is fixed while its sequences grow within their padded tables (later partitions are empty).
    let decoding = (0..meta.num_seqs()).any(|s| meta.cu_query_lens[s + 1] - meta.cu_query_lens[s] == 1);
    let partitions = partitions(meta.max_blocks * shape.block_size, decoding);
    // A kernel that writes one partial result per row writes the output itself: nothing to reduce.
    let reduced = |n: usize| if n > 1 { n as u32 } else { 0 };
    let row_partials = [reduced(partitions), reduced(chunk_kernel.partials(partitions))];
    let packed = meta.uploads.get_or_upload(ATTENTION_UPLOAD + tiling.tokens_per_item as u32, || {
        let (values, at) = pack_metadata(meta, tiling.tokens_per_item, row_partials);
        let slice = dev.cuda_stream().clone_htod(&values).w()?;
        Ok(PackedMetadata { slice, len: values.len(), at, partials: row_partials })
    })?;
    let [cu_at, ctx_at, work_at, decode_at, partials_at] = packed.at;
    let (items, decodes) = ((decode_at - work_at) / 3, (partials_at - decode_at) / DECODE_ENTRY);
    let reduce = (decodes > 0 && row_partials[0] > 0) || (items > 0 && row_partials[1] > 0);
    let (acc_len, ml_len) =
        if reduce { (partitions * out_len, partitions * tokens * shape.num_heads * 2) } else { (1, 1) };
    // The partial results' sums, then their maxima and denominators, in one allocation (one node fewer
    // in a captured graph; a row writes at most `partitions`). SAFETY: every entry the reduction reads
    // (a row's first `row_partials`) is written by the attention kernels before it; a row with none
    // is written to `out` directly (so no memset launches for placeholders either).
    let partials = unsafe { cuda_capture::alloc::<f32>(&dev, acc_len + ml_len)? };
    let (part_acc, part_ml) = (partials.slice(..acc_len), partials.slice(acc_len..));
    let params = KernelParams {
        num_heads: shape.num_heads as u32,
        num_kv_heads: shape.num_kv_heads as u32,
        block_size: shape.block_size as u32,
        max_blocks: meta.max_blocks as u32,
        window: shape.window as u32,
        scale: shape.scale,
        heads_per_chunk: tiling.heads_per_chunk as u32,
        num_chunks: tiling.num_chunks as u32,
        num_partitions: partitions as u32,
        num_tokens: tokens as u32,
    };
    if k_l.start_offset() != 0 || v_l.start_offset() != 0 {
        candle_core::bail!("paged-attention: caches must start at their storage's first element");
    }
    let (dtype, elem_bytes) = cache_type(&k.slice)?;
    let suffix = format!("{dtype}_d{d}");
    let slice = &packed.slice;
    let (tables, cu, ctx) = (slice.slice(..cu_at), slice.slice(cu_at..ctx_at), slice.slice(ctx_at..work_at));
    let stream = dev.cuda_stream();
    // The chunk kernel over the work items and the decode kernel over the decoding sequences, each
    // with its list; each skipped when the step has none of its sequences.
    let launches = [
        (
            chunk_kernel.launch(&suffix, d, items, shape.num_kv_heads * tiling.num_chunks),
            slice.slice(work_at..decode_at),
        ),
        (decode_launch(&k.slice, elem_bytes, &suffix, &shape, decodes), slice.slice(decode_at..partials_at)),
    ];
    for (launch, list) in launches.iter().filter(|(l, _)| l.blocks.0 > 0) {
        let func = function(&dev, launch.family, &launch.name)?;
        allow_shared_bytes(&dev, &launch.name, &func, launch.shared_bytes)?;
        let (x, y) = launch.blocks;
        let cfg = LaunchConfig {
            grid_dim: (x as u32, y as u32, partitions.div_ceil(launch.parts_per_block) as u32),
            block_dim: (launch.threads, 1, 1),
            shared_mem_bytes: launch.shared_bytes,
        };
        let mut builder = KernelLaunch::new(&stream, &func);
        builder.arg(&q);
        match (&k.slice, &v.slice) {
            (CudaStorageSlice::F32(k), CudaStorageSlice::F32(v)) => builder.arg(k).arg(v),
            (CudaStorageSlice::F16(k), CudaStorageSlice::F16(v)) => builder.arg(k).arg(v),
            (CudaStorageSlice::BF16(k), CudaStorageSlice::BF16(v)) => builder.arg(k).arg(v),
            _ => candle_core::bail!("paged-attention: keys and values must share one dtype"),
        };
        builder.arg(&tables).arg(&cu).arg(&ctx).arg(list).arg(&out).arg(&part_acc).arg(&part_ml).arg(&params);
        // SAFETY: the metadata was validated against the cache shape (blocks, slots, lengths), so every
        // read stays inside the caches and the tables; the two kernels write disjoint query rows of
        // `out` or of the partition buffers.
        unsafe { builder.launch(cfg) }?;
    }
    if reduce {
        let rows = tokens * shape.num_heads;
        // `_c8`'s groups of `d / 4` threads take 8 partitions each per round trip.
        let one_round_c8 = 8 * REDUCE_THREADS as usize / (d / 4);
        let (name, slices) = match rows {
            r if r <= REDUCE_FEWEST_ROWS && partitions <= REDUCE_SLICED_PARTITIONS => ("c8_s4", REDUCE_SLICES),
            r if r <= REDUCE_FEWEST_ROWS && partitions > one_round_c8 => ("c32", 1),
            r if r <= REDUCE_FEW_ROWS => ("c8", 1),
            _ => ("c2", 1),
        };
        let reduce = function(&dev, "paged_attention", &format!("paged_attention_reduce_{name}"))?;
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, shape.num_heads as u32, slices),
            block_dim: (REDUCE_THREADS / slices, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = KernelLaunch::new(&stream, &reduce);
        let dims = [tokens as u32, shape.num_heads as u32, d as u32];
        let row_partials = slice.slice(partials_at..packed.len);
        builder.arg(&part_acc).arg(&part_ml).arg(&row_partials).arg(&out).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
        // SAFETY: reads, for each row, the partials written above (`row_partials` of them; rows with
        // none were written by the kernels), writes `out` of `tokens * heads * d`.
        unsafe { builder.launch(cfg) }?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
