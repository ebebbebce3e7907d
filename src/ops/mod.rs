//! The engine's custom operations, one dispatch point each: `kv_write` puts a step's keys and values
//! into their cache slots, `paged_attention` lets every sequence's queries attend over its own blocks,
//! `QWeights` multiplies by quantized weights (bodega's batched CPU kernels, or candle's),
//! `gated_activation` fuses a feed-forward block's `act(gate) · up`, `argmax_rows` samples greedy rows
//! where the logits are and `top_k_rows` takes top-k sampling's candidates there, `add_rms_norm`
//! fuses a residual add with the next norm, `dense_gemv` multiplies a decode step's few f32 rows by
//! dense f16/bf16 weights without casting them, `rope_kv_write` rotates queries and keys and caches
//! keys and values (one launch on CUDA).
//! The contract (shapes, layouts, positions, window) is in `kernels/README.md`; `cpu` holds the
//! reference implementation that every other backend is tested against, and the CPU production path;
//! `metal` (macOS only) launches the Metal kernels of `kernels/metal/`.

mod add_norm;
mod argmax;
#[cfg(feature = "cuda")]
pub mod candle_scratch;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
pub mod cuda_capture;
#[cfg(feature = "cuda")]
mod cuda_launch;
mod gated;
mod gemv;
mod kv_cache;
mod kv_write;
#[cfg(target_os = "macos")]
mod metal;
mod paged_attention;
mod qgemv;
mod qmatmul;
mod rope_kv;
mod topk;

pub use add_norm::add_rms_norm;
pub use argmax::{argmax_ids, argmax_rows};
pub use bodega_cpu_kernels::Activation;
#[cfg(feature = "cuda")]
pub use cuda::refill_uploads;
pub use gated::gated_activation;
pub use gemv::{dense_gemv, gemv_takes, GEMV_MAX_ROWS};
pub use kv_cache::{KvShape, PagedKvCache};
pub use kv_write::kv_write;
pub use paged_attention::paged_attention;
pub use qgemv::{q8_gemv, qgemv_takes, QGEMV_K_MULTIPLE, QGEMV_ROWS};
pub use qmatmul::{bodega_kernels_read, cpu_kernel_path, QWeights};
pub use rope_kv::{rope_kv_write, RopeTables};
pub use topk::top_k_rows;

use std::any::Any;

/// The rows of logits in a CPU storage, for the CPU half of the row-wise sampling ops: rows, row
/// length, and the contiguous f32 values.
fn logits_rows<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<(usize, usize, &'a [f32])> {
    let (rows, vocab) = layout.shape().dims2()?;
    let (candle_core::CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
        candle_core::bail!("{op} takes contiguous f32 logits");
    };
    Ok((rows, vocab, &data[start..end]))
}

/// The slot of a padding row: a row that a fixed-shape step (a replayed CUDA graph's) adds to fill its
/// batch. `kv_write` writes nothing for it; its query attends to the first key of block 0.
pub const PADDING_SLOT: u32 = u32::MAX;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Where each sequence of a step sits in the paged cache: built once per step by the runner and
/// shared by every layer. Fill it before the first kernel reads it and leave it unchanged after:
/// kernels keep their device copies of it in `uploads`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttentionMetadata {
    /// For each of the step's T tokens, the cache slot (`block * block_size + offset`) it writes.
    pub slot_mapping: Vec<u32>,
    /// `[B, max_blocks]` row-major: the physical blocks of each sequence, in order (padding unused).
    pub block_tables: Vec<u32>,
    /// Columns of `block_tables`.
    pub max_blocks: usize,
    /// `[B + 1]`: sequence b's queries are rows `cu_query_lens[b]..cu_query_lens[b + 1]` of the step.
    pub cu_query_lens: Vec<u32>,
    /// `[B]`: tokens of sequence b in the cache after this step's writes (its queries are the last ones).
    pub context_lens: Vec<u32>,
    /// Device copies of the fields above, uploaded by the first layer's kernels and reused by every
    /// later layer of the step: one upload per step instead of several per layer.
    pub uploads: DeviceCopies,
}

/// Device-side copies of a step's metadata, each made once under a key by the kernel that needs it.
/// A clone starts empty (the clone may then be edited), and copies never make two metadata unequal.
#[derive(Default)]
pub struct DeviceCopies(Mutex<HashMap<u32, Arc<dyn Any + Send + Sync>>>);

impl DeviceCopies {
    /// The copy under `key`, made by `upload` the first time it is asked for.
    #[cfg(feature = "cuda")]
    pub(crate) fn get_or_upload<T: Any + Send + Sync>(
        &self,
        key: u32,
        upload: impl FnOnce() -> candle_core::Result<T>,
    ) -> candle_core::Result<Arc<T>> {
        let mut copies = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(copy) = copies.get(&key).and_then(|c| c.clone().downcast::<T>().ok()) {
            return Ok(copy);
        }
        let copy = Arc::new(upload()?);
        copies.insert(key, copy.clone());
        Ok(copy)
    }
}

#[cfg(feature = "cuda")]
impl DeviceCopies {
    /// Hands every copy to `refill` (with its key) to be overwritten in place, at the same device
    /// address: what a replayed graph reads.
    pub(crate) fn refill(
        &mut self,
        mut refill: impl FnMut(u32, &mut (dyn Any + Send + Sync)) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        let copies = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        for (&key, copy) in copies.iter_mut() {
            let Some(copy) = Arc::get_mut(copy) else {
                candle_core::bail!("a step's device metadata is still in use");
            };
            refill(key, copy)?;
        }
        Ok(())
    }
}

impl Clone for DeviceCopies {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for DeviceCopies {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for DeviceCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |c| c.len());
        write!(f, "DeviceCopies({n})")
    }
}

impl AttentionMetadata {
    /// Number of sequences in the step.
    pub fn num_seqs(&self) -> usize {
        self.context_lens.len()
    }

    /// Number of query tokens in the step.
    pub fn num_tokens(&self) -> usize {
        self.slot_mapping.len()
    }

    /// The block table row of sequence `b`.
    pub fn block_table(&self, b: usize) -> &[u32] {
        &self.block_tables[b * self.max_blocks..(b + 1) * self.max_blocks]
    }

    /// Pads a decode step (one query per sequence) to `num_seqs` sequences and its block tables to
    /// `max_blocks` columns: the fixed shape of a captured CUDA graph. The added rows write nothing
    /// ([`PADDING_SLOT`]) and attend to one key of block 0.
    pub fn pad_decode(&mut self, num_seqs: usize, max_blocks: usize) {
        let width = max_blocks.max(self.max_blocks);
        let mut tables = Vec::with_capacity(num_seqs * width);
        for b in 0..self.num_seqs() {
            tables.extend_from_slice(self.block_table(b));
            tables.resize((b + 1) * width, 0);
        }
        tables.resize(num_seqs * width, 0);
        for _ in self.num_seqs()..num_seqs {
            self.slot_mapping.push(PADDING_SLOT);
            self.cu_query_lens.push(self.slot_mapping.len() as u32);
            self.context_lens.push(1);
        }
        self.block_tables = tables;
        self.max_blocks = width;
    }

    /// Checks the invariants every kernel relies on, so that a runner bug is an error, not an
    /// out-of-bounds read inside a kernel.
    pub fn validate(&self, block_size: usize, num_blocks: usize) -> candle_core::Result<()> {
        let b = self.num_seqs();
        if self.cu_query_lens.len() != b + 1 || self.block_tables.len() != b * self.max_blocks {
            candle_core::bail!("attention metadata: inconsistent batch sizes");
        }
        if self.cu_query_lens[b] as usize != self.num_tokens() {
            candle_core::bail!("attention metadata: query lengths do not add up to the step");
        }
        for s in 0..b {
            let q_len = self.cu_query_lens[s + 1].checked_sub(self.cu_query_lens[s]);
            let ctx = self.context_lens[s] as usize;
            match q_len {
                Some(q) if (q as usize) <= ctx => {}
                _ => candle_core::bail!("attention metadata: sequence {s} has bad query length"),
            }
            if ctx.div_ceil(block_size) > self.max_blocks {
                candle_core::bail!("attention metadata: sequence {s} outgrows its block table");
            }
            let used = ctx.div_ceil(block_size);
            if self.block_table(s)[..used].iter().any(|&blk| blk as usize >= num_blocks) {
                candle_core::bail!("attention metadata: sequence {s} names a block out of range");
            }
        }
        if self.slot_mapping.iter().any(|&s| s != PADDING_SLOT && s as usize >= num_blocks * block_size) {
            candle_core::bail!("attention metadata: slot out of range");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Two decode sequences padded to four with tables three blocks wide: the real rows keep their
    /// slots, tables and lengths; the added ones write nothing and read one key of block 0.
    #[test]
    fn pad_decode_adds_rows_that_write_nothing_and_widens_the_tables() {
        let mut meta = AttentionMetadata {
            slot_mapping: vec![17, 2],
            block_tables: vec![1, 0, 3, 4],
            max_blocks: 2,
            cu_query_lens: vec![0, 1, 2],
            context_lens: vec![18, 19],
            ..Default::default()
        };
        meta.pad_decode(4, 3);
        assert_eq!(meta.slot_mapping, vec![17, 2, PADDING_SLOT, PADDING_SLOT]);
        assert_eq!(meta.block_tables, vec![1, 0, 0, 3, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!((meta.max_blocks, meta.cu_query_lens.clone()), (3, vec![0, 1, 2, 3, 4]));
        assert_eq!(meta.context_lens, vec![18, 19, 1, 1]);
        meta.validate(16, 5).unwrap();
    }

    /// `kv_write` leaves the cache as it was for a padding row.
    #[test]
    fn kv_write_skips_padding_rows() {
        let meta = AttentionMetadata { slot_mapping: vec![PADDING_SLOT, 1], ..Default::default() };
        let rows = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 1, 2), &Device::Cpu).unwrap();
        let (k, v) = (
            Tensor::zeros((1, 2, 1, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros((1, 2, 1, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        kv_write(&rows, &rows, &meta, &k, &v).unwrap();
        assert_eq!(k.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0., 0., 3., 4.]);
        assert_eq!(v.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0., 0., 3., 4.]);
    }
}
