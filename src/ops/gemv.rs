//! `dense_gemv`: `x · Wᵀ` for the few rows of a decode step against dense f16/bf16 weights, with f32
//! activations in and out. cuBLAS would need the activations cast to the weights' type before and the
//! product cast back after (two more kernels a matmul), and its kernels for one row read the weights
//! below bandwidth; decode is bound by that read. On the CPU the op is the readable reference the
//! CUDA kernel (`kernels/cuda/gemv.cu`) is tested against.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

/// Most rows of `x` the kernel takes: beyond, cuBLAS's GEMM (casts included) wins; measured on an
/// H200 (`dense_gemv_throughput`, docs/perf.md): the kernel is 1.0–1.8× faster up to 4 rows and
/// 0.5–0.9× at 8.
pub const GEMV_MAX_ROWS: usize = 4;

/// Most rows the kernel itself takes (one instantiation each): past [`GEMV_MAX_ROWS`] only so that
/// `dense_gemv_throughput` keeps measuring where cuBLAS overtakes it.
const KERNEL_MAX_ROWS: usize = 8;

/// Whether [`dense_gemv`] runs `x` (`[M, K]`) times `w` (`[N, K]`) on the GPU: a CUDA device, f32
/// `x` of at most [`GEMV_MAX_ROWS`] rows, f16 or bf16 `w`, K a multiple of 8 (16-byte loads).
pub fn gemv_takes(x: &Tensor, w: &Tensor) -> bool {
    let half = matches!(w.dtype(), DType::F16 | DType::BF16);
    let fits = match (x.dims2(), w.dims2()) {
        (Ok((m, k)), Ok((_, wk))) => m <= GEMV_MAX_ROWS && k == wk && k % 8 == 0,
        _ => false,
    };
    x.device().is_cuda() && x.dtype() == DType::F32 && half && fits
}

/// `x · Wᵀ` as `[M, N]` f32, for f32 `x` `[M, K]` and f16/bf16 `w` `[N, K]`.
pub fn dense_gemv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &Gemv)
}

struct Gemv;

impl Gemv {
    /// `(M, N, K)`, checked.
    fn dims(x_l: &Layout, w_l: &Layout) -> Result<(usize, usize, usize)> {
        let ((m, k), (n, wk)) = (x_l.shape().dims2()?, w_l.shape().dims2()?);
        if k != wk || m == 0 || m > KERNEL_MAX_ROWS || k % 8 != 0 {
            candle_core::bail!(
                "gemv: x {:?} and W {:?} (at most {KERNEL_MAX_ROWS} rows, K a multiple of 8)",
                x_l.shape(),
                w_l.shape()
            );
        }
        if !(x_l.is_contiguous() && w_l.is_contiguous()) {
            candle_core::bail!("gemv takes contiguous tensors");
        }
        Ok((m, n, k))
    }
}

/// `y[m, n] = Σ_k x[m, k] · w[n, k]`, summed in order in f32.
fn reference<T: Copy>(x: &[f32], w: &[T], (m, n, k): (usize, usize, usize), to_f32: impl Fn(T) -> f32) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for (i, out) in y.iter_mut().enumerate() {
        let (row, col) = (&x[(i / n) * k..][..k], &w[(i % n) * k..][..k]);
        *out = row.iter().zip(col).map(|(&a, &b)| a * to_f32(b)).sum();
    }
    y
}

impl CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "gemv"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout, w: &CpuStorage, w_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims @ (m, n, k) = Self::dims(x_l, w_l)?;
        let CpuStorage::F32(x) = x else { candle_core::bail!("gemv takes f32 activations") };
        let x = &x[x_l.start_offset()..][..m * k];
        let y = match w {
            CpuStorage::F16(w) => reference(x, &w[w_l.start_offset()..][..n * k], dims, f16::to_f32),
            CpuStorage::BF16(w) => reference(x, &w[w_l.start_offset()..][..n * k], dims, bf16::to_f32),
            _ => candle_core::bail!("gemv takes f16 or bf16 weights"),
        };
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_l: &Layout,
        w: &candle_core::CudaStorage,
        w_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims @ (m, n, _) = Self::dims(x_l, w_l)?;
        Ok((super::cuda::gemv((x, x_l), (w, w_l), dims)?, Shape::from((m, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The reference against candle's f32 matmul of the same (rounded) weights.
    #[test]
    fn the_cpu_reference_is_x_times_w_transposed() {
        let (m, n, k) = (3, 5, 16);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 5) % 13) as f32 * 0.25 - 1.5).collect();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let wh = w.to_dtype(dtype).unwrap();
            let expected = x.matmul(&wh.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
            let got = dense_gemv(&x, &wh).unwrap();
            let diff = (got - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{dtype:?}: off by {diff}");
        }
        assert!(dense_gemv(&x, &w).is_err(), "f32 weights are not the op's");
        assert!(!gemv_takes(&x, &w.to_dtype(DType::F16).unwrap()), "the op runs on CUDA only in production");
    }
}
