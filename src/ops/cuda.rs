//! Launches bodega's CUDA kernels (`kernels/cuda`, compiled to PTX by `build.rs`) on candle's CUDA
//! device: `kv_write` in place, and paged attention with its split-context reduction. The PTX of the
//! newest compiled architecture the GPU supports is loaded once per device (candle caches modules).

use super::cpu::AttentionParams;
use super::AttentionMetadata;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));
}

/// Threads per attention block (`NT` in `paged_attention.cu`).
const ATTENTION_THREADS: u32 = 128;
/// Keys per context partition (`PART` in `paged_attention.cu`).
const PARTITION_KEYS: usize = 256;

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

/// Kernel-name suffix of a cache storage type.
fn dtype_suffix(slice: &CudaStorageSlice) -> Result<&'static str> {
    Ok(match slice {
        CudaStorageSlice::F32(_) => "f32",
        CudaStorageSlice::F16(_) => "f16",
        CudaStorageSlice::BF16(_) => "bf16",
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

/// Writes `src` (`[T, row_len]` f32) into cache slots `slot_mapping`, converting to the cache's type.
pub fn kv_write(
    cache: &mut CudaStorage,
    cache_l: &Layout,
    src: &CudaStorage,
    src_l: &Layout,
    slot_mapping: &[u32],
    row_len: usize,
) -> Result<()> {
    if slot_mapping.is_empty() {
        return Ok(());
    }
    let dev = cache.device.clone();
    let src = f32_view(src, src_l, "kv-write source")?;
    let slots = dev.clone_htod(slot_mapping)?;
    let func = function(&dev, "kv_write", &format!("kv_write_{}", dtype_suffix(&cache.slice)?))?;
    let cfg = LaunchConfig {
        grid_dim: (slot_mapping.len() as u32, 1, 1),
        block_dim: (row_len.min(256) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let offset = cache_l.start_offset();
    let args = (&src, &slots, offset, row_len as u32, cfg);
    let stream = dev.cuda_stream();
    match &mut cache.slice {
        CudaStorageSlice::F32(c) => launch_kv_write(&stream, &func, c, args),
        CudaStorageSlice::F16(c) => launch_kv_write(&stream, &func, c, args),
        CudaStorageSlice::BF16(c) => launch_kv_write(&stream, &func, c, args),
        _ => unreachable!("dtype_suffix accepted the cache"),
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
    let mut cache = cache.slice_mut(offset..);
    let mut builder = stream.launch_builder(func);
    builder.arg(src).arg(slots).arg(&mut cache).arg(&row_len);
    // SAFETY: the kernel reads T rows of `row_len` f32 and writes them to slots that the caller
    // checked are inside the cache.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(())
}

/// Launch parameters of the attention kernel (`AttnParams` in `paged_attention.cu`, same layout).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct KernelParams {
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

/// How the queries are cut into thread blocks: rows (token, head) per block are `2048 / head_dim`,
/// at most 64 (`Tile` in `paged_attention.cu`).
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
    fn new(shape: &AttentionParams) -> Self {
        let rows = (2048 / shape.head_dim).min(64);
        let group = shape.num_heads / shape.num_kv_heads;
        let heads_per_chunk = group.min(rows);
        Self {
            heads_per_chunk,
            num_chunks: group.div_ceil(heads_per_chunk),
            tokens_per_item: (rows / heads_per_chunk).max(1),
        }
    }
}

/// Device-side metadata of one call, packed into one upload: block tables, query offsets, context
/// lengths, then the work items (sequence, first query row, query count).
fn pack_metadata(meta: &AttentionMetadata, tokens_per_item: usize) -> (Vec<u32>, [usize; 3]) {
    let b = meta.num_seqs();
    let mut packed = Vec::with_capacity(meta.block_tables.len().max(1) + 2 * b + 1 + 3 * meta.num_tokens());
    packed.extend_from_slice(&meta.block_tables);
    if packed.is_empty() {
        packed.push(0); // a zero-width table still needs a valid pointer
    }
    let cu_at = packed.len();
    packed.extend_from_slice(&meta.cu_query_lens);
    let ctx_at = packed.len();
    packed.extend_from_slice(&meta.context_lens);
    let work_at = packed.len();
    for s in 0..b {
        let (start, end) = (meta.cu_query_lens[s] as usize, meta.cu_query_lens[s + 1] as usize);
        for first in (start..end).step_by(tokens_per_item) {
            packed.extend([s as u32, first as u32, (end - first).min(tokens_per_item) as u32]);
        }
    }
    (packed, [cu_at, ctx_at, work_at])
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
    // SAFETY: the kernels write every (token, head) row: the work items cover each sequence's
    // queries and the chunks cover each group's heads.
    let out = unsafe { dev.alloc::<f32>(out_len)? };
    let tiling = Tiling::new(&shape);
    let (packed, [cu_at, ctx_at, work_at]) = pack_metadata(meta, tiling.tokens_per_item);
    let items = (packed.len() - work_at) / 3;
    let max_ctx = meta.context_lens.iter().copied().max().unwrap_or(0) as usize;
    let partitions = max_ctx.div_ceil(PARTITION_KEYS).max(1);
    let packed = dev.clone_htod(&packed)?;
    let (part_acc, part_ml): (CudaSlice<f32>, CudaSlice<f32>) = if partitions > 1 {
        // SAFETY: every entry is written by the attention kernel before the reduction reads it.
        unsafe {
            (dev.alloc::<f32>(partitions * out_len)?, dev.alloc::<f32>(partitions * tokens * shape.num_heads * 2)?)
        }
    } else {
        (dev.alloc_zeros::<f32>(1)?, dev.alloc_zeros::<f32>(1)?)
    };
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
    let name = format!("paged_attention_{}_d{d}", dtype_suffix(&k.slice)?);
    let func = function(&dev, "paged_attention", &name)?;
    let cfg = LaunchConfig {
        grid_dim: (items as u32, (shape.num_kv_heads * tiling.num_chunks) as u32, partitions as u32),
        block_dim: (ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (tables, cu) = (packed.slice(..cu_at), packed.slice(cu_at..ctx_at));
    let (ctx, work) = (packed.slice(ctx_at..work_at), packed.slice(work_at..));
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    builder.arg(&q);
    match (&k.slice, &v.slice) {
        (CudaStorageSlice::F32(k), CudaStorageSlice::F32(v)) => builder.arg(k).arg(v),
        (CudaStorageSlice::F16(k), CudaStorageSlice::F16(v)) => builder.arg(k).arg(v),
        (CudaStorageSlice::BF16(k), CudaStorageSlice::BF16(v)) => builder.arg(k).arg(v),
        _ => candle_core::bail!("paged-attention: keys and values must share one dtype"),
    };
    if k_l.start_offset() != 0 || v_l.start_offset() != 0 {
        candle_core::bail!("paged-attention: caches must start at their storage's first element");
    }
    builder.arg(&tables).arg(&cu).arg(&ctx).arg(&work).arg(&out).arg(&part_acc).arg(&part_ml).arg(&params);
    // SAFETY: the metadata was validated against the cache shape (blocks, slots, lengths), so every
    // read stays inside the caches and the tables; writes cover `out` or the partition buffers.
    unsafe { builder.launch(cfg) }.w()?;
    if partitions > 1 {
        let reduce = function(&dev, "paged_attention", "paged_attention_reduce")?;
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, shape.num_heads as u32, 1),
            block_dim: (d.min(128) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = stream.launch_builder(&reduce);
        let dims = [tokens as u32, shape.num_heads as u32, d as u32, partitions as u32];
        builder.arg(&part_acc).arg(&part_ml).arg(&out).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(&dims[3]);
        // SAFETY: reads the partitions written above, writes `out` of `tokens * heads * d`.
        unsafe { builder.launch(cfg) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
