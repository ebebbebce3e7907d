//! Launches bodega's Metal kernels (`kernels/metal/*.metal`) on candle's Metal device, for the ops'
//! `metal_fwd`. The sources are embedded in the binary and compiled at run time, once per process and
//! device, on first use; pipelines are cached by kernel name. Launch shapes mirror the emulation
//! driver (`kernels/metal/emu/driver.cpp`), which is how they are tested off a Mac.

use super::cpu::AttentionParams;
use super::AttentionMetadata;
use candle_core::backend::BackendStorage;
use candle_core::metal_backend::DeviceId;
use candle_core::{DType, Layout, MetalDevice, MetalError, MetalStorage, Result};
use candle_metal_kernels::metal::{Buffer, ComputeCommandEncoder, ComputePipeline, Library};
use objc2_metal::MTLSize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Tokens per cache block the kernels are built for (`BLOCK_SIZE` in paged_attention.metal).
const BLOCK_SIZE: usize = 16;
/// Positions per decode partition (`PARTITION_SIZE`).
const PARTITION_SIZE: usize = 512;
/// Query heads one decode threadgroup serves (`MAX_GROUP`).
const MAX_GROUP: usize = 8;
/// Lanes of an Apple GPU simdgroup.
const SIMD_WIDTH: usize = 32;

/// The kernel source files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    KvWrite,
    PagedAttention,
}

impl Source {
    fn text(self) -> &'static str {
        match self {
            Source::KvWrite => include_str!("../../kernels/metal/kv_write.metal"),
            Source::PagedAttention => include_str!("../../kernels/metal/paged_attention.metal"),
        }
    }
}

/// Libraries and pipelines compiled so far, per device.
#[derive(Default)]
struct Compiled {
    libraries: HashMap<(DeviceId, Source), Library>,
    pipelines: HashMap<(DeviceId, String), ComputePipeline>,
}

/// The pipeline of kernel `name` from `source`, compiling the source on first use.
fn pipeline(device: &MetalDevice, source: Source, name: &str) -> Result<ComputePipeline> {
    static COMPILED: OnceLock<Mutex<Compiled>> = OnceLock::new();
    let mut compiled = COMPILED
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| MetalError::Message("the Metal pipeline cache is poisoned".into()))?;
    if let Some(pipeline) = compiled.pipelines.get(&(device.id(), name.to_string())) {
        return Ok(pipeline.clone());
    }
    let library = match compiled.libraries.get(&(device.id(), source)) {
        Some(library) => library.clone(),
        None => {
            let library =
                device.metal_device().new_library_with_source(source.text(), None).map_err(MetalError::from)?;
            compiled.libraries.insert((device.id(), source), library.clone());
            library
        }
    };
    let function = library.get_function(name, None).map_err(MetalError::from)?;
    let pipeline =
        device.metal_device().new_compute_pipeline_state_with_function(&function).map_err(MetalError::from)?;
    compiled.pipelines.insert((device.id(), name.to_string()), pipeline.clone());
    Ok(pipeline)
}

/// The MSL spelling of a cache dtype, as it appears in kernel names.
fn msl_type(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F16 => Ok("half"),
        DType::BF16 => Ok("bfloat"),
        other => candle_core::bail!("the Metal kernels keep the KV cache in f16 or bf16, not {other:?}"),
    }
}

fn size(width: usize, height: usize, depth: usize) -> MTLSize {
    MTLSize { width, height, depth }
}

/// `storage` (laid out by `layout`) in `dtype`, and the byte offset where its data starts.
fn in_dtype(storage: &MetalStorage, layout: &Layout, dtype: DType) -> Result<(MetalStorage, usize)> {
    if storage.dtype() == dtype && layout.is_contiguous() {
        Ok((storage.clone(), layout.start_offset() * dtype.size_in_bytes()))
    } else {
        Ok((storage.to_dtype(layout, dtype)?, 0))
    }
}

/// `kv_write`'s sizes (`KvWriteParams` in kv_write.metal).
#[repr(C)]
struct KvWriteParams {
    row_len: u32,
    num_slots: u32,
}

/// Copies the rows of `src` (`[T, row_len]`, any float dtype) into cache slots `slot_mapping[t]`.
/// The caller has checked shapes and slots.
pub fn kv_write(
    cache: &mut MetalStorage,
    cache_l: &Layout,
    src: &MetalStorage,
    src_l: &Layout,
    slot_mapping: &[u32],
    row_len: usize,
) -> Result<()> {
    let device = cache.device().clone();
    let dtype = cache.dtype();
    let pipeline = pipeline(&device, Source::KvWrite, &format!("kv_write_{}", msl_type(dtype)?))?;
    let (src, src_offset) = in_dtype(src, src_l, dtype)?;
    let slots = device.new_buffer_with_data(slot_mapping)?;
    let num_slots = cache_l.shape().elem_count() / row_len;
    let params = KvWriteParams { row_len: row_len as u32, num_slots: num_slots as u32 };
    let threads = row_len.next_multiple_of(SIMD_WIDTH).min(256);
    let guard = device.command_encoder()?;
    let encoder: &ComputeCommandEncoder = guard.as_ref();
    encoder.set_compute_pipeline_state(&pipeline);
    encoder.set_input_buffer(0, Some(src.buffer()), src_offset);
    encoder.set_input_buffer(1, Some(&*slots), 0);
    encoder.set_output_buffer(2, Some(cache.buffer()), cache_l.start_offset() * dtype.size_in_bytes());
    encoder.set_bytes(3, &params);
    encoder.dispatch_thread_groups(size(slot_mapping.len(), 1, 1), size(threads, 1, 1));
    Ok(())
}

/// One attention call's shapes (`AttentionParams` in paged_attention.metal).
#[repr(C)]
struct KernelParams {
    num_heads: u32,
    num_kv_heads: u32,
    max_blocks: u32,
    window: u32,
    max_partitions: u32,
    scale: f32,
}

/// Simdgroups per prefill threadgroup (`prefill_simdgroups` in paged_attention.metal).
fn prefill_simdgroups(head_dim: usize) -> usize {
    if head_dim >= 256 {
        1
    } else {
        4
    }
}

/// The batch's metadata on the GPU.
struct MetadataBuffers {
    block_tables: Arc<Buffer>,
    cu_query_lens: Arc<Buffer>,
    context_lens: Arc<Buffer>,
}

impl MetadataBuffers {
    fn upload(device: &MetalDevice, meta: &AttentionMetadata) -> Result<Self> {
        // An empty table (no sequence needs a block) still needs a buffer to bind.
        let tables: &[u32] = if meta.block_tables.is_empty() { &[0] } else { &meta.block_tables };
        Ok(Self {
            block_tables: device.new_buffer_with_data(tables)?,
            cu_query_lens: device.new_buffer_with_data(&meta.cu_query_lens)?,
            context_lens: device.new_buffer_with_data(&meta.context_lens)?,
        })
    }

    fn bind(&self, encoder: &ComputeCommandEncoder, first_index: usize) {
        encoder.set_input_buffer(first_index, Some(&*self.block_tables), 0);
        encoder.set_input_buffer(first_index + 1, Some(&*self.cu_query_lens), 0);
        encoder.set_input_buffer(first_index + 2, Some(&*self.context_lens), 0);
    }

    /// Binds only the query and context lengths (the reduce kernel needs no table).
    fn bind_lengths(&self, encoder: &ComputeCommandEncoder, first_index: usize) {
        encoder.set_input_buffer(first_index, Some(&*self.cu_query_lens), 0);
        encoder.set_input_buffer(first_index + 1, Some(&*self.context_lens), 0);
    }
}

/// What the batch asks of each kernel: decode partitions (0: no decode sequence) and prefill rows.
fn batch_shape(meta: &AttentionMetadata, group: usize) -> (usize, usize) {
    let (mut partitions, mut rows) = (0, 0);
    for s in 0..meta.num_seqs() {
        let q_len = (meta.cu_query_lens[s + 1] - meta.cu_query_lens[s]) as usize;
        if q_len == 1 {
            partitions = partitions.max((meta.context_lens[s] as usize).div_ceil(PARTITION_SIZE));
        } else {
            rows = rows.max(q_len * group);
        }
    }
    (partitions, rows)
}

/// Paged attention of `q` (`[T, heads, head_dim]`, any float dtype) over the f16/bf16 caches; the
/// output has `q`'s dtype. Decode sequences go through the decode and reduce kernels, the others
/// through the prefill kernel, in one command stream. The caller has validated shapes and metadata.
pub fn paged_attention(
    (q, q_l): (&MetalStorage, &Layout),
    (k, k_l): (&MetalStorage, &Layout),
    (v, v_l): (&MetalStorage, &Layout),
    meta: &AttentionMetadata,
    params: AttentionParams,
) -> Result<MetalStorage> {
    let device = q.device().clone();
    let dtype = k.dtype();
    let d = params.head_dim;
    if v.dtype() != dtype || !matches!(d, 64 | 128 | 256) || params.block_size != BLOCK_SIZE {
        candle_core::bail!(
            "paged-attention on Metal: head dim {d} (64, 128, 256), block size {} ({BLOCK_SIZE}), caches {dtype:?}/{:?}",
            params.block_size,
            v.dtype()
        );
    }
    let ty = msl_type(dtype)?;
    let (q_cast, q_offset) = in_dtype(q, q_l, dtype)?;
    let (k_offset, v_offset) = (k_l.start_offset() * dtype.size_in_bytes(), v_l.start_offset() * dtype.size_in_bytes());
    let tokens = meta.num_tokens();
    let elems = tokens * params.num_heads * d;
    let out = device.new_buffer(elems, dtype, "paged-attention")?;
    let buffers = MetadataBuffers::upload(&device, meta)?;
    let group = params.num_heads / params.num_kv_heads;
    let (partitions, rows) = batch_shape(meta, group);
    let kernel_params = KernelParams {
        num_heads: params.num_heads as u32,
        num_kv_heads: params.num_kv_heads as u32,
        max_blocks: meta.max_blocks as u32,
        window: params.window as u32,
        max_partitions: partitions.max(1) as u32,
        scale: params.scale,
    };
    let seqs = meta.num_seqs();
    if partitions > 0 {
        let decode = pipeline(&device, Source::PagedAttention, &format!("paged_attention_decode_{ty}_{d}"))?;
        let reduce = pipeline(&device, Source::PagedAttention, &format!("paged_attention_reduce_{ty}_{d}"))?;
        let slots = seqs * params.num_heads * partitions;
        let part_acc = device.new_buffer(slots * d, DType::F32, "paged-attention-partials")?;
        let part_max = device.new_buffer(slots, DType::F32, "paged-attention-max")?;
        let part_sum = device.new_buffer(slots, DType::F32, "paged-attention-sum")?;
        let guard = device.command_encoder()?;
        let encoder: &ComputeCommandEncoder = guard.as_ref();
        encoder.set_compute_pipeline_state(&decode);
        encoder.set_input_buffer(0, Some(q_cast.buffer()), q_offset);
        encoder.set_input_buffer(1, Some(k.buffer()), k_offset);
        encoder.set_input_buffer(2, Some(v.buffer()), v_offset);
        buffers.bind(encoder, 3);
        encoder.set_output_buffer(6, Some(&*part_acc), 0);
        encoder.set_output_buffer(7, Some(&*part_max), 0);
        encoder.set_output_buffer(8, Some(&*part_sum), 0);
        encoder.set_bytes(9, &kernel_params);
        let chunks = group.div_ceil(MAX_GROUP);
        encoder.dispatch_thread_groups(size(params.num_kv_heads * chunks, seqs, partitions), size(SIMD_WIDTH, 1, 1));

        encoder.set_compute_pipeline_state(&reduce);
        encoder.set_input_buffer(0, Some(&*part_acc), 0);
        encoder.set_input_buffer(1, Some(&*part_max), 0);
        encoder.set_input_buffer(2, Some(&*part_sum), 0);
        buffers.bind_lengths(encoder, 3);
        encoder.set_output_buffer(5, Some(&*out), 0);
        encoder.set_bytes(6, &kernel_params);
        encoder.dispatch_thread_groups(size(params.num_heads, seqs, 1), size(SIMD_WIDTH, 1, 1));
    }
    if rows > 0 {
        let prefill = pipeline(&device, Source::PagedAttention, &format!("paged_attention_prefill_{ty}_{d}"))?;
        let simdgroups = prefill_simdgroups(d);
        let tiles = rows.div_ceil(8 * simdgroups);
        let guard = device.command_encoder()?;
        let encoder: &ComputeCommandEncoder = guard.as_ref();
        encoder.set_compute_pipeline_state(&prefill);
        encoder.set_input_buffer(0, Some(q_cast.buffer()), q_offset);
        encoder.set_input_buffer(1, Some(k.buffer()), k_offset);
        encoder.set_input_buffer(2, Some(v.buffer()), v_offset);
        buffers.bind(encoder, 3);
        encoder.set_output_buffer(6, Some(&*out), 0);
        encoder.set_bytes(7, &kernel_params);
        encoder.dispatch_thread_groups(size(params.num_kv_heads, seqs, tiles), size(SIMD_WIDTH * simdgroups, 1, 1));
    }
    let out = MetalStorage::new(out, device, elems, dtype);
    if q.dtype() == dtype {
        Ok(out)
    } else {
        out.to_dtype(&Layout::contiguous(q_l.shape().clone()), q.dtype())
    }
}
