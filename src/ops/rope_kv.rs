//! `rope_kv_write`: rotates a step's queries and keys by their positions (RoPE) and writes the keys
//! and values into their cache slots. On CUDA one kernel does all of it (`kernels/cuda/rope_kv.cu`):
//! a decode step's layer had four launches for it, each tiny; elsewhere candle's RoPE and
//! [`kv_write`](super::kv_write).

use super::{kv_write, AttentionMetadata};
#[cfg(feature = "cuda")]
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use candle_core::{Result, Tensor};

/// One step's rotation tables: the cosines and sines of each token's angles, `[T, 1, head_dim / 2]`
/// contiguous f32, and how the rotated dimensions pair up.
#[derive(Debug, Clone, Copy)]
pub struct RopeTables<'a> {
    /// `cos(position · θ_i)`.
    pub cos: &'a Tensor,
    /// `sin(position · θ_i)`.
    pub sin: &'a Tensor,
    /// Pairs (2i, 2i + 1) (GGUF Llama files), else (i, i + head_dim / 2).
    pub interleaved: bool,
}

/// Returns `q` rotated (`[T, heads, head_dim]` f32), and writes `k` rotated and `v` (`[T, kv_heads,
/// head_dim]`) into the cache slots `meta.slot_mapping` (padding rows write nothing).
pub fn rope_kv_write(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    tables: RopeTables<'_>,
    meta: &AttentionMetadata,
    (k_cache, v_cache): (&Tensor, &Tensor),
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() && [q, k, v, tables.cos, tables.sin].iter().all(|t| t.dtype() == candle_core::DType::F32) {
        return q.apply_op3_no_bwd(k, v, &RopeKvWrite { tables, meta, k_cache, v_cache });
    }
    let (q, k) = (rotate(q, tables)?, rotate(k, tables)?);
    kv_write(&k, v, meta, k_cache, v_cache)?;
    Ok(q)
}

/// `x` (`[T, heads, head_dim]`) rotated by candle's RoPE.
fn rotate(x: &Tensor, tables: RopeTables<'_>) -> Result<Tensor> {
    let (t, heads, d) = x.dims3()?;
    let x = x.reshape((t, heads, 1, d))?.contiguous()?;
    let y = match tables.interleaved {
        true => candle_nn::rotary_emb::rope_i(&x, tables.cos, tables.sin)?,
        false => candle_nn::rotary_emb::rope(&x, tables.cos, tables.sin)?,
    };
    y.reshape((t, heads, d))
}

/// The fused op. candle passes at most one tensor to an op mutably, so the caches (and the tables)
/// travel in the op and the kernel writes the caches through their shared storage.
#[cfg(feature = "cuda")]
struct RopeKvWrite<'a> {
    tables: RopeTables<'a>,
    meta: &'a AttentionMetadata,
    k_cache: &'a Tensor,
    v_cache: &'a Tensor,
}

#[cfg(feature = "cuda")]
impl CustomOp3 for RopeKvWrite<'_> {
    fn name(&self) -> &'static str {
        "rope-kv-write"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // `rope_kv_write` builds this op for CUDA tensors only (elsewhere it composes candle's RoPE
        // and `kv_write`).
        candle_core::bail!("rope-kv-write is fused on CUDA only")
    }

    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_l: &Layout,
        k: &candle_core::CudaStorage,
        k_l: &Layout,
        v: &candle_core::CudaStorage,
        v_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::Storage;
        let (t, heads, d) = q_l.shape().dims3()?;
        let (kt, kv_heads, kd) = k_l.shape().dims3()?;
        let (k_cache, kc_l) = self.k_cache.storage_and_layout();
        let (v_cache, vc_l) = self.v_cache.storage_and_layout();
        let (cos, cos_l) = self.tables.cos.storage_and_layout();
        let (sin, sin_l) = self.tables.sin.storage_and_layout();
        let (Storage::Cuda(k_cache), Storage::Cuda(v_cache), Storage::Cuda(cos), Storage::Cuda(sin)) =
            (&*k_cache, &*v_cache, &*cos, &*sin)
        else {
            candle_core::bail!("rope-kv-write: the caches and tables must be on the GPU too");
        };
        let (_, _, cache_heads, cache_d) = kc_l.shape().dims4()?;
        let rows_fit = kt == t && v_l.shape() == k_l.shape() && kd == d && d % 2 == 0;
        if !rows_fit || (cache_heads, cache_d) != (kv_heads, d) || kc_l.shape() != vc_l.shape() {
            candle_core::bail!(
                "rope-kv-write: q {:?}, k {:?}, v {:?}, cache {:?}",
                q_l.shape(),
                k_l.shape(),
                v_l.shape(),
                kc_l.shape()
            );
        }
        if t != self.meta.num_tokens() || cos_l.shape().elem_count() != t * d / 2 || sin_l.shape() != cos_l.shape() {
            candle_core::bail!(
                "rope-kv-write: {t} tokens, {} slots, tables {:?}",
                self.meta.num_tokens(),
                cos_l.shape()
            );
        }
        let slots = kc_l.shape().elem_count() / (kv_heads * d);
        if self.meta.slot_mapping.iter().any(|&s| s != super::PADDING_SLOT && s as usize >= slots) {
            candle_core::bail!("rope-kv-write: slot out of range ({slots} slots)");
        }
        let out = super::cuda::rope_kv_write(
            [(q, q_l), (k, k_l), (v, v_l)],
            [(cos, cos_l), (sin, sin_l)],
            [(k_cache, kc_l), (v_cache, vc_l)],
            self.meta,
            self.tables.interleaved,
        )?;
        Ok((out, Shape::from((t, heads, d))))
    }
}
