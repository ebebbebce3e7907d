//! Projections: a weight matrix with an optional bias, and several projections of one input fused
//! into one matrix (Q/K/V, gate/up) so that a step runs one matmul where it ran three or two: one
//! launch and one activation quantization instead of one per projection, which matters most where
//! a decode step is bound by the host's per-op work (CUDA).

use super::load::Matrix;
use crate::error::Result;
use crate::ops::QWeights;
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use std::borrow::Cow;
use std::sync::Arc;

/// A projection: quantized (or dense) weights and an optional bias.
#[derive(Debug)]
pub struct Linear {
    /// `W`, `[N, K]`.
    pub weight: QWeights,
    /// `b`, `[N]` (Qwen2's Q/K/V have one).
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `x · Wᵀ (+ b)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Projections of the same input, as one matrix when their weights could be stacked, else apart.
#[derive(Debug)]
pub enum Projections {
    /// The weights stacked by rows (and the biases end to end): one matmul, then each projection's
    /// columns of the output.
    Fused {
        /// The stacked matrix.
        linear: Linear,
        /// Each projection's output width, in order.
        widths: Vec<usize>,
    },
    /// One matmul each (their formats differ, say Q4_K beside Q6_K).
    Separate(Vec<Linear>),
}

impl Projections {
    /// Stacks `parts` (matrices of one input width, each with its bias or none) when they share a
    /// quantized type, or are all dense on a GPU; `dense_dtype` as for a single matrix. Quantized rows
    /// are computed one by one whatever the matrix (bodega's CPU kernels, candle's GPU kernels), so
    /// stacking leaves every value as it was; candle's CPU f32 GEMM chooses its blocking from the
    /// matrix width, so dense matrices stay apart there to keep CPU results bit-identical.
    pub fn new(parts: Vec<(Matrix, Option<Tensor>)>, dense_dtype: DType, device: &Device) -> Result<Self> {
        let widths: Vec<usize> = parts.iter().map(|(m, _)| matrix_dims(m).map(|d| d.0)).collect::<Result<_>>()?;
        let biased = parts.iter().filter(|(_, b)| b.is_some()).count();
        let (matrices, biases): (Vec<Matrix>, Vec<Option<Tensor>>) = parts.into_iter().unzip();
        let stacked = match biased == 0 || biased == matrices.len() {
            true => stack(&matrices, dense_dtype, device)?,
            false => None,
        };
        match stacked {
            Some(weight) => {
                let bias = match biased {
                    0 => None,
                    _ => Some(Tensor::cat(&biases.into_iter().flatten().collect::<Vec<_>>(), 0)?),
                };
                Ok(Self::Fused { linear: Linear { weight, bias }, widths })
            }
            None => Ok(Self::Separate(
                matrices
                    .into_iter()
                    .zip(biases)
                    .map(|(m, bias)| Ok(Linear { weight: weights(m, dense_dtype)?, bias }))
                    .collect::<Result<_>>()?,
            )),
        }
    }

    /// Each projection of `x` (`[T, K]`), in order.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Fused { linear, widths } => {
                let y = linear.forward(x)?;
                let mut at = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = y.narrow(1, at, w)?;
                        at += w;
                        Ok(part)
                    })
                    .collect()
            }
            Self::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
        }
    }

    /// Bytes of weight storage.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Self::Fused { linear, .. } => linear.weight.storage_bytes(),
            Self::Separate(parts) => parts.iter().map(|p| p.weight.storage_bytes()).sum(),
        }
    }
}

/// A file's matrix as the model multiplies by it.
pub fn weights(matrix: Matrix, dense_dtype: DType) -> Result<QWeights> {
    match matrix {
        Matrix::Quantized(t) => QWeights::new(Arc::new(*t)),
        Matrix::Dense(t) => QWeights::dense(t.to_dtype(dense_dtype)?),
    }
}

fn matrix_dims(m: &Matrix) -> Result<(usize, usize)> {
    Ok(match m {
        Matrix::Quantized(t) => t.shape().dims2()?,
        Matrix::Dense(t) => t.dims2()?,
    })
}

/// `matrices` stacked by rows into one, when they can be (see [`Projections::new`]).
fn stack(matrices: &[Matrix], dense_dtype: DType, device: &Device) -> Result<Option<QWeights>> {
    let cols: Vec<usize> = matrices.iter().map(|m| matrix_dims(m).map(|d| d.1)).collect::<Result<_>>()?;
    if matrices.len() < 2 || cols.iter().any(|&c| c != cols[0]) {
        return Ok(None);
    }
    let rows: usize = matrices.iter().map(|m| matrix_dims(m).map(|d| d.0)).sum::<Result<usize>>()?;
    let quantized: Vec<&QTensor> = matrices
        .iter()
        .filter_map(|m| match m {
            Matrix::Quantized(t) => Some(&**t),
            Matrix::Dense(_) => None,
        })
        .collect();
    if quantized.len() == matrices.len() {
        let dtype = quantized[0].dtype();
        if quantized.iter().any(|t| t.dtype() != dtype) {
            return Ok(None);
        }
        // A quantized matrix is its rows' blocks end to end: stacking is concatenating the bytes.
        let mut bytes = Vec::with_capacity(quantized.iter().map(|t| t.storage_size_in_bytes()).sum());
        for t in &quantized {
            bytes.extend_from_slice(&t.data()?);
        }
        let storage = QStorage::from_data(Cow::Owned(bytes), device, dtype)?;
        return Ok(Some(QWeights::new(Arc::new(QTensor::new(storage, (rows, cols[0]))?))?));
    }
    if quantized.is_empty() && !device.is_cpu() {
        let dense: Vec<Tensor> = matrices
            .iter()
            .filter_map(|m| match m {
                Matrix::Dense(t) => Some(t.to_dtype(dense_dtype)),
                Matrix::Quantized(_) => None,
            })
            .collect::<candle_core::Result<_>>()?;
        return Ok(Some(QWeights::dense(Tensor::cat(&dense, 0)?)?));
    }
    Ok(None)
}
