//! `paged_attention`: every sequence's queries attend over its own cache blocks, causally; decode
//! (one query), chunked prefill and speculative verification (several) are the same call.

use super::cpu::{self, AttentionParams};
use super::AttentionMetadata;
use bodega_cpu_kernels::KernelPath;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Attention output `[T, num_heads, head_dim]` for queries `q` (same shape) over the paged caches
/// `[num_blocks, block_size, num_kv_heads, head_dim]`, as laid out by `meta`. `window` limits each
/// query to the last `window` keys (0: no limit). On CUDA the decode kernel starts reading a decoding
/// sequence's keys before its newest while the kernel before it still runs (the engine writes them in
/// earlier steps): a caller must not write those with the kernel right before this op.
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &AttentionMetadata,
    scale: f32,
    window: usize,
) -> Result<Tensor> {
    let op = PagedAttention { meta, scale, window };
    q.contiguous()?.apply_op3_no_bwd(k_cache, v_cache, &op)
}

struct PagedAttention<'a> {
    meta: &'a AttentionMetadata,
    scale: f32,
    window: usize,
}

impl PagedAttention<'_> {
    /// Checks the shapes and the metadata against the caches; returns the call's parameters.
    fn params(&self, q_l: &Layout, k_l: &Layout, v_l: &Layout) -> Result<AttentionParams> {
        let (tokens, num_heads, head_dim) = q_l.shape().dims3()?;
        let (num_blocks, block_size, num_kv_heads, kd) = k_l.shape().dims4()?;
        if kd != head_dim || k_l.shape() != v_l.shape() || num_heads % num_kv_heads != 0 {
            candle_core::bail!("paged-attention: q {:?} does not match cache {:?}", q_l.shape(), k_l.shape());
        }
        if tokens != self.meta.num_tokens() {
            candle_core::bail!("paged-attention: {tokens} queries but metadata for {}", self.meta.num_tokens());
        }
        self.meta.validate(block_size, num_blocks)?;
        if !(k_l.is_contiguous() && v_l.is_contiguous()) {
            candle_core::bail!("paged-attention: caches must be contiguous");
        }
        Ok(AttentionParams { num_heads, num_kv_heads, head_dim, block_size, scale: self.scale, window: self.window })
    }
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let params = self.params(q_l, k_l, v_l)?;
        let len = q_l.shape().elem_count();
        match (q, k, v) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                let q = &q[q_l.start_offset()..q_l.start_offset() + len];
                let k = &k[k_l.start_offset()..];
                let v = &v[v_l.start_offset()..];
                let mut out = vec![0f32; q.len()];
                let path = KernelPath::detect().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                cpu::paged_attention(path, q, (k, v), self.meta, params, &mut out);
                Ok((CpuStorage::F32(out), q_l.shape().clone()))
            }
            _ => candle_core::bail!("paged-attention: the CPU path takes f32 queries and caches"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_l: &Layout,
        k: &candle_core::CudaStorage,
        k_l: &Layout,
        v: &candle_core::CudaStorage,
        v_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let params = self.params(q_l, k_l, v_l)?;
        let out = super::cuda::paged_attention((q, q_l), (k, k_l), (v, v_l), self.meta, params)?;
        Ok((out, q_l.shape().clone()))
    }

    #[cfg(target_os = "macos")]
    fn metal_fwd(
        &self,
        q: &candle_core::MetalStorage,
        q_l: &Layout,
        k: &candle_core::MetalStorage,
        k_l: &Layout,
        v: &candle_core::MetalStorage,
        v_l: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let params = self.params(q_l, k_l, v_l)?;
        let out = super::metal::paged_attention((q, q_l), (k, k_l), (v, v_l), self.meta, params)?;
        Ok((out, q_l.shape().clone()))
    }
}
