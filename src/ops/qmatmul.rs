//! Quantized weights as the model uses them: `x · Wᵀ` and row lookups (tied embeddings). On the CPU,
//! for the formats bodega's kernels read (`bodega-cpu-kernels`), the kernels own the only copy of the
//! bytes and multiply a whole batch per weight read, batch-invariantly; on CUDA, a decode step's 4
//! rows by wide Q8_0 matrices take bodega's GEMV kernel (`q8_gemv`, where it beats candle's); elsewhere
//! candle's `QMatMul` does the work.

use crate::error::{Error, Result};
use bodega_cpu_kernels::{KernelPath, QuantFormat, QuantMatrix};
use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use std::sync::Arc;

/// A weight matrix `[N, K]`: quantized, or dense in the `--dtype` chosen for unquantized weights.
#[derive(Debug, Clone)]
pub enum QWeights {
    /// bodega's CPU kernels.
    Cpu(Arc<QuantMatrix>),
    /// candle's quantized tensor and matmul.
    Candle {
        /// The tensor (for embedding lookups).
        tensor: Arc<QTensor>,
        /// Its matmul.
        matmul: QMatMul,
    },
    /// Unquantized values (f32, f16 or bf16) multiplied by candle's matmul.
    Dense(Tensor),
}

/// The kernels' name for a GGUF type they read.
fn kernel_format(dtype: GgmlDType) -> Option<QuantFormat> {
    Some(match dtype {
        GgmlDType::Q4_0 => QuantFormat::Q4_0,
        GgmlDType::Q4_1 => QuantFormat::Q4_1,
        GgmlDType::Q5_0 => QuantFormat::Q5_0,
        GgmlDType::Q8_0 => QuantFormat::Q8_0,
        GgmlDType::Q4K => QuantFormat::Q4K,
        GgmlDType::Q5K => QuantFormat::Q5K,
        GgmlDType::Q6K => QuantFormat::Q6K,
        _ => return None,
    })
}

/// Whether bodega's CPU kernels read GGUF type `dtype` (candle's kernels run the others).
pub fn bodega_kernels_read(dtype: GgmlDType) -> bool {
    kernel_format(dtype).is_some()
}

/// The CPU kernel path matmuls use (`BODEGA_CPU_KERNEL` or the best this CPU runs).
pub fn cpu_kernel_path() -> Result<KernelPath> {
    KernelPath::detect().map_err(|e| Error::InvalidRequest(e.to_string()))
}

impl QWeights {
    /// Takes a matrix from a GGUF file: on the CPU, a format the kernels read is copied into a
    /// [`QuantMatrix`] (drop the `QTensor` afterwards to keep one copy); anything else stays candle's.
    pub fn new(tensor: Arc<QTensor>) -> Result<Self> {
        let (n, k) = tensor.shape().dims2()?;
        match kernel_format(tensor.dtype()) {
            Some(format) if tensor.device().is_cpu() && k % format.block_len() == 0 => {
                cpu_kernel_path()?;
                let matrix = QuantMatrix::new(format, n, k, tensor.data()?.into_owned())
                    .map_err(|e| Error::Metadata(format!("weight matrix {n}×{k}: {e}")))?;
                Ok(Self::Cpu(Arc::new(matrix)))
            }
            _ => Ok(Self::Candle { matmul: QMatMul::from_arc(tensor.clone())?, tensor }),
        }
    }

    /// Takes an unquantized `[N, K]` matrix as it is (its dtype is the one computed in).
    pub fn dense(weights: Tensor) -> Result<Self> {
        weights.dims2()?;
        Ok(Self::Dense(weights.contiguous()?))
    }

    /// Bytes of weight storage.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Self::Cpu(m) => m.storage_bytes(),
            Self::Candle { tensor, .. } => tensor.storage_size_in_bytes(),
            Self::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
        }
    }

    /// Rows (N) and columns (K).
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Self::Cpu(m) => (m.rows(), m.cols()),
            Self::Candle { tensor, .. } => tensor.shape().dims2()?,
            Self::Dense(w) => w.dims2()?,
        })
    }

    /// `x · Wᵀ` for `x` of shape `[..., K]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Cpu(m) => x.contiguous()?.apply_op1_no_bwd(&CpuMatMul(m.clone()))?,
            Self::Candle { matmul, tensor } => {
                // A decode step's few rows by a Q8_0 matrix: bodega's GEMV kernel (one launch).
                let (rows, out_dims) = as_rows(x, tensor.shape().dims2()?.0)?;
                match super::qgemv_takes(&rows, tensor) {
                    true => super::q8_gemv(&rows, tensor)?.reshape(out_dims)?,
                    false => {
                        #[cfg(feature = "cuda")]
                        super::candle_scratch::note_product(rows.device(), rows.dim(0)?, rows.dim(1)?);
                        matmul.forward(x)?
                    }
                }
            }
            Self::Dense(w) => {
                // One 2-D product over all rows (a broadcast batched matmul would re-read W per batch):
                // a decode step's few rows by the GEMV kernel, no casts; else a GEMM in W's type.
                let (rows, out_dims) = as_rows(x, w.dim(0)?)?;
                let product = match super::gemv_takes(&rows, w) {
                    true => super::dense_gemv(&rows, w)?,
                    false => rows.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32)?,
                };
                product.reshape(out_dims)?
            }
        })
    }

    /// Rows `ids` of the matrix as f32, `[ids..., K]` (a token embedding lookup).
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Cpu(m) => {
                let k = m.cols();
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let mut rows = vec![0.0f32; ids.len() * k];
                for (&id, row) in ids.iter().zip(rows.chunks_exact_mut(k)) {
                    m.dequantize_row(id as usize, row)
                        .map_err(|e| Error::InvalidRequest(format!("token {id}: {e}")))?;
                }
                Ok(Tensor::from_vec(rows, (ids.len(), k), &candle_core::Device::Cpu)?)
            }
            Self::Candle { tensor, .. } => Ok(tensor.embedding(ids)?),
            Self::Dense(w) => {
                let mut dims = ids.dims().to_vec();
                dims.push(w.dim(1)?);
                Ok(w.index_select(&ids.flatten_all()?, 0)?.to_dtype(DType::F32)?.reshape(dims)?)
            }
        }
    }
}

/// `x` (`[..., K]`) as one 2-D `[rows, K]` matrix, and the dims of its product by `n` rows of weights.
fn as_rows(x: &Tensor, n: usize) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let rows = x.reshape((x.elem_count() / k.max(1), k))?;
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    Ok((rows, out_dims))
}

/// The kernels as a candle op on a contiguous f32 `[..., K]` CPU tensor.
struct CpuMatMul(Arc<QuantMatrix>);

impl CustomOp1 for CpuMatMul {
    fn name(&self) -> &'static str {
        "bodega-qmatmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("bodega-qmatmul takes f32 activations, got {:?}", storage.dtype());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bodega-qmatmul takes contiguous activations");
        };
        let dims = layout.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != self.0.cols() {
            candle_core::bail!("bodega-qmatmul: activations of width {k} for a matrix of {} columns", self.0.cols());
        }
        let m = layout.shape().elem_count() / k;
        let mut out = vec![0.0f32; m * self.0.rows()];
        self.0.matmul(&data[start..end], m, &mut out).map_err(candle_core::Error::wrap)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("at least one dimension") = self.0.rows();
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}
