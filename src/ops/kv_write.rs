//! `kv_write`: scatters a step's new keys and values into their cache slots, in place.

use super::{cpu, AttentionMetadata, PADDING_SLOT};
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};

/// Writes `k` and `v` (`[T, num_kv_heads, head_dim]`) into the slots `meta.slot_mapping[t]` of
/// `k_cache` and `v_cache` (`[num_blocks, block_size, num_kv_heads, head_dim]`); rows whose slot is
/// [`PADDING_SLOT`] are not written.
pub fn kv_write(k: &Tensor, v: &Tensor, meta: &AttentionMetadata, k_cache: &Tensor, v_cache: &Tensor) -> Result<()> {
    let op = KvWrite { meta };
    k_cache.inplace_op2(&k.contiguous()?, &op)?;
    v_cache.inplace_op2(&v.contiguous()?, &op)
}

/// The in-place op, one struct per backend dispatch.
struct KvWrite<'a> {
    /// The step's metadata: its slots (and GPU backends' upload of them).
    meta: &'a AttentionMetadata,
}

impl KvWrite<'_> {
    /// Checks that the source rows fit the cache and every slot exists; returns the row length.
    fn row_len(&self, cache_l: &Layout, src_l: &Layout) -> Result<usize> {
        let (_, block_size, kv_heads, head_dim) = cache_l.shape().dims4()?;
        let row_len = kv_heads * head_dim;
        let (tokens, src_heads, src_dim) = src_l.shape().dims3()?;
        if src_heads * src_dim != row_len || tokens != self.meta.slot_mapping.len() {
            candle_core::bail!("kv-write: source {:?} does not fit cache {:?}", src_l.shape(), cache_l.shape());
        }
        let slots = cache_l.shape().elem_count() / row_len;
        if self.meta.slot_mapping.iter().any(|&s| s != PADDING_SLOT && s as usize >= slots) {
            candle_core::bail!("kv-write: slot out of range ({slots} slots of {block_size} tokens each block)");
        }
        Ok(row_len)
    }
}

impl InplaceOp2 for KvWrite<'_> {
    fn name(&self) -> &'static str {
        "kv-write"
    }

    fn cpu_fwd(&self, cache: &mut CpuStorage, cache_l: &Layout, src: &CpuStorage, src_l: &Layout) -> Result<()> {
        let row_len = self.row_len(cache_l, src_l)?;
        let tokens = self.meta.slot_mapping.len();
        match (cache, src) {
            (CpuStorage::F32(cache), CpuStorage::F32(src)) => {
                let src = &src[src_l.start_offset()..src_l.start_offset() + tokens * row_len];
                let cache = &mut cache[cache_l.start_offset()..];
                cpu::kv_write(src, &self.meta.slot_mapping, cache, row_len);
                Ok(())
            }
            _ => candle_core::bail!("kv-write: the CPU cache holds f32 keys and values"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        cache_l: &Layout,
        src: &candle_core::CudaStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let row_len = self.row_len(cache_l, src_l)?;
        super::cuda::kv_write(cache, cache_l, src, src_l, self.meta, row_len)
    }

    #[cfg(target_os = "macos")]
    fn metal_fwd(
        &self,
        cache: &mut candle_core::MetalStorage,
        cache_l: &Layout,
        src: &candle_core::MetalStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let row_len = self.row_len(cache_l, src_l)?;
        super::metal::kv_write(cache, cache_l, src, src_l, &self.meta.slot_mapping, row_len)
    }
}
