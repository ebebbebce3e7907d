//! `add_rms_norm`: a transformer block's residual add and the RMS norm that follows it (the next
//! sub-block's input), `(x + y, rms_norm(x + y) · w)`. On CUDA one kernel writes both (a decode step
//! is bound by the host's per-op cost: two launches a sub-block fewer); elsewhere candle's two ops,
//! so CPU results stay bit-identical to the unfused model.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `(x + y, rms_norm(x + y) · weight)` for `x`, `y` of shape `[T, D]` and `weight` `[D]`.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let f32s = [x, y, weight].iter().all(|t| t.dtype() == DType::F32);
    if x.device().is_cuda() && f32s && x.rank() == 2 {
        let both = x.contiguous()?.apply_op3_no_bwd(&y.contiguous()?, &weight.contiguous()?, &AddRmsNorm(eps))?;
        return Ok((both.get(0)?, both.get(1)?));
    }
    let sum = (x + y)?;
    let normed = candle_nn::ops::rms_norm(&sum.contiguous()?, weight, eps)?;
    Ok((sum, normed))
}

/// The fused op: `[2, T, D]`, the sum then its norm.
struct AddRmsNorm(f32);

impl AddRmsNorm {
    /// Checks the shapes; returns (T, D).
    fn dims(&self, x_l: &Layout, y_l: &Layout, w_l: &Layout) -> Result<(usize, usize)> {
        let (rows, dim) = x_l.shape().dims2()?;
        if y_l.shape() != x_l.shape() || w_l.shape().dims() != [dim] {
            candle_core::bail!("add-rms-norm: x {:?}, y {:?}, weight {:?}", x_l.shape(), y_l.shape(), w_l.shape());
        }
        Ok((rows, dim))
    }
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    /// The op's CPU half (the model's CPU path calls candle's ops instead, see [`add_rms_norm`]).
    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        y: &CpuStorage,
        y_l: &Layout,
        w: &CpuStorage,
        w_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, dim) = self.dims(x_l, y_l, w_l)?;
        let slice = |s: &'_ CpuStorage, l: &Layout| -> Result<Vec<f32>> {
            match (s, l.contiguous_offsets()) {
                (CpuStorage::F32(v), Some((a, b))) => Ok(v[a..b].to_vec()),
                _ => candle_core::bail!("add-rms-norm takes contiguous f32 tensors"),
            }
        };
        let (x, y, w) = (slice(x, x_l)?, slice(y, y_l)?, slice(w, w_l)?);
        let mut out = vec![0f32; 2 * rows * dim];
        let (sums, normed) = out.split_at_mut(rows * dim);
        for (r, row) in sums.chunks_exact_mut(dim).enumerate() {
            for (i, s) in row.iter_mut().enumerate() {
                *s = x[r * dim + i] + y[r * dim + i];
            }
            let inv = 1.0 / (row.iter().map(|s| s * s).sum::<f32>() / dim as f32 + self.0).sqrt();
            for (i, n) in normed[r * dim..(r + 1) * dim].iter_mut().enumerate() {
                *n = row[i] * inv * w[i];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((2, rows, dim))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_l: &Layout,
        y: &candle_core::CudaStorage,
        y_l: &Layout,
        w: &candle_core::CudaStorage,
        w_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, dim) = self.dims(x_l, y_l, w_l)?;
        let out = super::cuda::add_rms_norm((x, x_l), (y, y_l), (w, w_l), rows, dim, self.0)?;
        Ok((out, Shape::from((2, rows, dim))))
    }
}
