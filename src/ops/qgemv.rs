//! `q8_gemv`: `x · Wᵀ` for the few rows of a decode step against GGUF Q8_0 weights, f32 activations in
//! and out, reading the weights where candle's `QTensor` keeps them (no second copy). candle's CUDA
//! `QMatMul` first quantizes the activations to q8_1 into a workspace in a kernel of its own, then
//! runs its matmul kernel. bodega's kernel (`kernels/cuda/qgemv.cu`) quantizes the activations
//! itself, 32 at a time as Q8_0 does the weights, and multiplies the int8 blocks exactly on integer
//! tensor cores, in one launch. On the CPU the op is the readable reference (the same quantization of
//! x, then integer dot products scaled block by block) that the kernel is tested against.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::f16;

/// Rows of `x` the kernel takes in production (all it can); elsewhere candle's `QMatMul` runs.
/// Measured on an H200 against `QMatMul` (same call, docs/perf.md): 1.01–2.8× on every
/// Llama-3.2-1B decode matrix at 1, 4 and 8 rows, and at 2 but on the down projection (0.95×, one
/// launch instead of candle's two); 1.43–1.71× at 16 on every one where two tiles of x fit a block
/// (the down projection's rows of 8,192 weights do not: [`qgemv_takes`] leaves those to candle).
pub const QGEMV_ROWS: std::ops::RangeInclusive<usize> = 1..=KERNEL_MAX_ROWS;
/// The CUDA kernel stages rows in 16-byte-aligned chunks of 8 Q8_0 blocks: K must be a multiple of
/// this (every Llama-shaped hidden and feed-forward size is).
pub const QGEMV_K_MULTIPLE: usize = 256;

/// Most rows of `x` the kernel takes: two tiles of the mma's n (8).
const KERNEL_MAX_ROWS: usize = 16;

/// Weights in a Q8_0 block, and its bytes: an f16 scale, then one int8 per weight.
const Q8_0_WEIGHTS: usize = 32;
const Q8_0_BYTES: usize = 2 + Q8_0_WEIGHTS;

/// Whether [`q8_gemv`] runs `x` (`[M, K]`) times `w` (`[N, K]`) on the GPU: a CUDA device holding
/// both, f32 `x` of [`QGEMV_ROWS`] rows starting 16-byte aligned (the kernel reads it as float4),
/// Q8_0 `w` with K a multiple of [`QGEMV_K_MULTIPLE`], and a launch of the kernel for such rows that
/// fits the device's shared memory.
pub fn qgemv_takes(x: &Tensor, w: &QTensor) -> bool {
    let fits = match (x.dims2(), w.shape().dims2()) {
        (Ok((m, k)), Ok((_, wk))) => {
            QGEMV_ROWS.contains(&m) && k == wk && k.is_multiple_of(QGEMV_K_MULTIPLE) && launch_fits(x.device(), m, k)
        }
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

/// Whether the CUDA kernel has a launch for `m` rows of x and rows of `k` weights on `device`.
#[cfg(feature = "cuda")]
fn launch_fits(device: &candle_core::Device, m: usize, k: usize) -> bool {
    matches!(device, candle_core::Device::Cuda(dev) if super::cuda::qgemv_fits(dev, m, k))
}

/// Without the `cuda` feature there is no kernel to launch.
#[cfg(not(feature = "cuda"))]
fn launch_fits(_: &candle_core::Device, _: usize, _: usize) -> bool {
    false
}

/// `x · Wᵀ` as `[M, N]` f32, for f32 `x` `[M, K]` (1 ≤ M ≤ 16) and Q8_0 `w` `[N, K]` on the same device.
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

/// 32 activations quantized as the kernel quantizes them (and as candle's and llama.cpp's CPU Q8_0
/// dot products do, there with an f16 scale): the scale `max |x| / 127` and each `round(x / scale)`,
/// halves away from zero.
fn quantize_block(xs: &[f32]) -> (f32, Vec<i8>) {
    let most = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = most / 127.0;
    let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    (scale, xs.iter().map(|x| (x * inverse).round() as i8).collect())
}

/// `y[m, n] = Σ_blocks d_w · d_x · Σ q_w q_x` for Q8_0 `w` (`n` rows of `k / 32` blocks) and `x`
/// quantized by [`quantize_block`]: each block's dot product exact in integers, scaled in f32, summed
/// in order.
fn reference(x: &[f32], w: &[u8], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
    let row_bytes = k / Q8_0_WEIGHTS * Q8_0_BYTES;
    let x: Vec<Vec<(f32, Vec<i8>)>> =
        x.chunks_exact(k).take(m).map(|row| row.chunks_exact(Q8_0_WEIGHTS).map(quantize_block).collect()).collect();
    let mut y = vec![0f32; m * n];
    for (r, blocks) in w.chunks_exact(row_bytes).take(n).enumerate() {
        for (i, x_blocks) in x.iter().enumerate() {
            y[i * n + r] = blocks
                .chunks_exact(Q8_0_BYTES)
                .zip(x_blocks)
                .map(|(block, (x_scale, x_quants))| {
                    let w_scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let dot: i32 =
                        block[2..].iter().zip(x_quants).map(|(&q, &p)| i32::from(q as i8) * i32::from(p)).sum();
                    dot as f32 * (w_scale * x_scale)
                })
                .sum();
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

    /// The largest difference between `a` and `b` relative to the largest |b|.
    fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        diff / scale
    }

    /// The reference against candle's own dequantization of the same blocks times candle's f32 matmul,
    /// with K over several blocks and scales far from 1: exactly (to f32 rounding) where every block
    /// of x is exact in 8 bits (its largest |x| 127 and integers), within x's rounding elsewhere; and
    /// against candle's CPU `QMatMul`, which quantizes x the same way but keeps its scale in f16.
    #[test]
    fn the_cpu_reference_is_x_quantized_times_w_transposed() {
        let (m, n, k) = (3, 5, 96);
        let w: Vec<f32> = (0..n * k).map(|i| (((i * 5) % 13) as f32 - 6.5) * (1 + i / 40) as f32).collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let w = std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let dense = w.dequantize(&Device::Cpu).unwrap().t().unwrap();
        let exact: Vec<f32> =
            (0..m * k).map(|i| if i % 32 == 5 { -127.0 } else { ((i * 7) % 11) as f32 - 5.0 }).collect();
        let exact = Tensor::from_vec(exact, (m, k), &Device::Cpu).unwrap();
        let error = relative_error(&q8_gemv(&exact, &w).unwrap(), &exact.matmul(&dense).unwrap());
        assert!(error <= 1e-6, "exact blocks of x: off by {error}");
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 300.0 - 1.6).collect();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        let got = q8_gemv(&x, &w).unwrap();
        let error = relative_error(&got, &x.matmul(&dense).unwrap());
        assert!(error > 1e-6 && error <= 1e-2, "x rounded to 8 bits: off by {error}");
        let candle = candle_core::quantized::QMatMul::from_arc(w.clone()).unwrap();
        let error = relative_error(&got, &candle_core::Module::forward(&candle, &x).unwrap());
        assert!(error <= 1e-3, "against candle's QMatMul: off by {error}");
        let q4 = QTensor::quantize(&w.dequantize(&Device::Cpu).unwrap(), GgmlDType::Q4_0).unwrap();
        assert!(q8_gemv(&x, &q4).is_err(), "Q4_0 weights are not the op's");
        assert!(!qgemv_takes(&x, &w), "the op runs on CUDA only in production");
    }
}
