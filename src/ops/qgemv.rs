//! `q8_gemv`: `x · Wᵀ` for the few rows of a decode step against GGUF Q8_0 weights, f32 activations in
//! and out, reading the weights where candle's `QTensor` keeps them (no second copy). candle's CUDA
//! `QMatMul` first quantizes the activations to q8_1 in a kernel of its own and then runs its matmul
//! kernel: two launches per matmul, and activations rounded to 8 bits. bodega's kernel
//! (`kernels/cuda/qgemv.cu`) runs on tensor cores with the activations rounded to bf16, in one
//! launch. On the CPU the op is the readable reference (dequantize, then multiply) that the kernel is
//! tested against.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::f16;

/// Rows of `x` the kernel takes in production; elsewhere candle's `QMatMul` runs. Measured on an
/// H200 against `QMatMul` (`q8_gemv_throughput`, same call, docs/perf.md): at 4 and 8 rows the kernel
/// was 1.08–1.47× faster on Llama-3.2-1B's Q/K/V, O, gate/up and output matrices and on down at 8
/// rows (0.69× on down at 4); at 1 and 2 rows candle's MMVQ was faster everywhere (0.56–0.96×), so a
/// single sequence keeps it. Decode graphs pad 3 rows to 4 and 5–7 to 8.
pub const QGEMV_ROWS: std::ops::RangeInclusive<usize> = 4..=8;
/// The CUDA kernel stages rows in 16-byte-aligned chunks of 8 Q8_0 blocks: K must be a multiple of
/// this (every Llama-shaped hidden and feed-forward size is).
pub const QGEMV_K_MULTIPLE: usize = 256;

/// Most rows of `x` the kernel takes: the mma's n.
const KERNEL_MAX_ROWS: usize = 8;

/// Weights in a Q8_0 block, and its bytes: an f16 scale, then one int8 per weight.
const Q8_0_WEIGHTS: usize = 32;
const Q8_0_BYTES: usize = 2 + Q8_0_WEIGHTS;

/// Whether [`q8_gemv`] runs `x` (`[M, K]`) times `w` (`[N, K]`) on the GPU: a CUDA device holding
/// both, f32 `x` of [`QGEMV_ROWS`] rows starting 16-byte aligned (the kernel reads it as float4),
/// Q8_0 `w` with K a multiple of [`QGEMV_K_MULTIPLE`].
pub fn qgemv_takes(x: &Tensor, w: &QTensor) -> bool {
    let fits = match (x.dims2(), w.shape().dims2()) {
        (Ok((m, k)), Ok((_, wk))) => QGEMV_ROWS.contains(&m) && k == wk && k.is_multiple_of(QGEMV_K_MULTIPLE),
        _ => false,
    };
    let aligned = x.is_contiguous() && x.layout().start_offset().is_multiple_of(4);
    x.device().is_cuda()
        && x.device().same_device(&w.device())
        && x.dtype() == DType::F32
        && w.dtype() == GgmlDType::Q8_0
        && fits
        && aligned
}

/// `x · Wᵀ` as `[M, N]` f32, for f32 `x` `[M, K]` (1 ≤ M ≤ 8) and Q8_0 `w` `[N, K]` on the same device.
pub fn q8_gemv(x: &Tensor, w: &QTensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Q8Gemv(w))
}

struct Q8Gemv<'a>(&'a QTensor);

impl Q8Gemv<'_> {
    /// `(M, N, K)`, checked.
    fn dims(&self, x_l: &Layout) -> Result<(usize, usize, usize)> {
        let ((m, k), (n, wk)) = (x_l.shape().dims2()?, self.0.shape().dims2()?);
        if self.0.dtype() != GgmlDType::Q8_0 {
            candle_core::bail!("q8-gemv takes Q8_0 weights, not {:?}", self.0.dtype());
        }
        if k != wk || m == 0 || m > KERNEL_MAX_ROWS {
            candle_core::bail!(
                "q8-gemv: x {:?} and W {:?} (at most {KERNEL_MAX_ROWS} rows)",
                x_l.shape(),
                self.0.shape()
            );
        }
        if !x_l.is_contiguous() || !x_l.start_offset().is_multiple_of(4) {
            candle_core::bail!("q8-gemv takes contiguous activations starting 16-byte aligned");
        }
        Ok((m, n, k))
    }
}

/// A Q8_0 block's 32 weights: its scale times each int8.
fn dequantize_block(block: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
    block[2..Q8_0_BYTES].iter().map(move |&q| scale * f32::from(q as i8))
}

/// `y[m, n] = Σ_k x[m, k] · w[n, k]` for Q8_0 `w` (`n` rows of `k / 32` blocks), each row dequantized
/// then multiplied, summed in order in f32.
fn reference(x: &[f32], w: &[u8], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
    let row_bytes = k / Q8_0_WEIGHTS * Q8_0_BYTES;
    let mut y = vec![0f32; m * n];
    for (r, blocks) in w.chunks_exact(row_bytes).take(n).enumerate() {
        let row: Vec<f32> = blocks.chunks_exact(Q8_0_BYTES).flat_map(dequantize_block).collect();
        for (i, xs) in x.chunks_exact(k).take(m).enumerate() {
            y[i * n + r] = xs.iter().zip(&row).map(|(a, b)| a * b).sum();
        }
    }
    y
}

impl CustomOp1 for Q8Gemv<'_> {
    fn name(&self) -> &'static str {
        "q8-gemv"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims @ (m, n, k) = self.dims(x_l)?;
        let CpuStorage::F32(x) = x else { candle_core::bail!("q8-gemv takes f32 activations") };
        let y = reference(&x[x_l.start_offset()..][..m * k], &self.0.data()?, dims);
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, x: &candle_core::CudaStorage, x_l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims @ (m, n, _) = self.dims(x_l)?;
        Ok((super::cuda::q8_gemv((x, x_l), self.0, dims)?, Shape::from((m, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The reference against candle's own dequantization of the same blocks times candle's f32 matmul,
    /// with K over several blocks and scales far from 1.
    #[test]
    fn the_cpu_reference_is_x_times_the_dequantized_w_transposed() {
        let (m, n, k) = (3, 5, 96);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (((i * 5) % 13) as f32 - 6.5) * (1 + i / 40) as f32).collect();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
        let expected = x.matmul(&w.dequantize(&Device::Cpu).unwrap().t().unwrap()).unwrap();
        let got = q8_gemv(&x, &w).unwrap();
        let scale = expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let diff = (got - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-6 * scale, "off by {diff} of {scale}");
        let q4 = QTensor::quantize(&w.dequantize(&Device::Cpu).unwrap(), GgmlDType::Q4_0).unwrap();
        assert!(q8_gemv(&x, &q4).is_err(), "Q4_0 weights are not the op's");
        assert!(!qgemv_takes(&x, &w), "the op runs on CUDA only in production");
    }
}
