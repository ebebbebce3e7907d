//! Turning files on disk into a model: a GGUF file, or a folder of safetensors (plain or
//! MLX-quantized) with its `config.json`; synthetic models (random weights of a named shape) are GGUFs
//! generated on demand. Each format gives a [`ModelConfig`] and a [`WeightSource`]
//! that hands out tensors under GGUF's names, so that the model is built by one piece of code.

mod generation;
pub mod gguf;
mod gguf_config;
pub use gguf_config::config as gguf_config;
mod hf_config;
pub use hf_config::architecture;
pub mod mlx;
pub mod safetensors;
pub mod synthetic;

use super::config::ModelConfig;
use crate::error::{Error, Result};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// A weight matrix as a file stores it.
#[derive(Debug)]
pub enum Matrix {
    /// Quantized blocks (GGUF, or MLX 4-bit repacked as Q4_1): multiplied as they are.
    Quantized(Box<QTensor>),
    /// Plain values (f32/f16/bf16 files, dequantized MLX): stored in the `--dtype` the user chose.
    Dense(Tensor),
}

/// Where the model's tensors come from. Names follow GGUF (`blk.0.attn_q.weight`); each format maps
/// them to its own.
pub trait WeightSource {
    /// Whether the model has this tensor (optional ones: an untied output layer).
    fn has(&self, name: &str) -> bool;
    /// A `[rows, cols]` matrix.
    fn matrix(&mut self, name: &str, device: &Device) -> Result<Matrix>;
    /// A vector (norm weights, biases) as f32.
    fn vector(&mut self, name: &str, device: &Device) -> Result<Tensor>;
}

/// Choices about how weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The dtype of unquantized matrices.
    pub dense_dtype: DType,
}

impl LoadOptions {
    /// `requested`, else f32 on the CPU (candle's CPU matmul is fastest and exact there) and the
    /// model's own half type on GPUs (bf16 when its files are bf16, else f16).
    pub fn for_device(device: &Device, requested: Option<DType>, native: Option<DType>) -> Self {
        let dense_dtype = requested.unwrap_or(match (device.is_cpu(), native) {
            (true, _) => DType::F32,
            (false, Some(DType::BF16)) => DType::BF16,
            (false, _) => DType::F16,
        });
        Self { dense_dtype }
    }
}

/// The files of one model, opened, with the format detected from what is on disk.
pub enum ModelFiles {
    /// A `.gguf` file.
    Gguf(gguf::GgufFile),
    /// A folder with `config.json` and safetensors (plain or MLX-quantized).
    Safetensors(Box<safetensors::SafetensorsModel>),
}

impl ModelFiles {
    /// Opens a `.gguf` file or a model folder; anything else is an error naming what is supported.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Ok(Self::Safetensors(Box::new(safetensors::SafetensorsModel::open(path)?)));
        }
        match gguf::GgufFile::open(path) {
            Ok(file) => Ok(Self::Gguf(file)),
            // A `.gguf` without the magic is a damaged GGUF; anything else is another format.
            Err(Error::BadGguf { reason, .. })
                if reason.starts_with("not a GGUF file") && path.extension().is_none_or(|x| x != "gguf") =>
            {
                Err(Error::UnsupportedFormat(path.to_path_buf()))
            }
            Err(e) => Err(e),
        }
    }

    /// The hyper-parameters.
    pub fn config(&mut self) -> Result<ModelConfig> {
        match self {
            Self::Gguf(file) => gguf_config::config(file),
            Self::Safetensors(model) => Ok(model.config().clone()),
        }
    }

    /// The tensors.
    pub fn weights(&mut self) -> &mut dyn WeightSource {
        match self {
            Self::Gguf(file) => file,
            Self::Safetensors(model) => model.as_mut(),
        }
    }

    /// `gguf`, `safetensors` or `mlx`: what `bodega list` and the load line call the format.
    pub fn format(&self) -> &'static str {
        match self {
            Self::Gguf(_) => "gguf",
            Self::Safetensors(model) if model.mlx().is_some() => "mlx",
            Self::Safetensors(_) => "safetensors",
        }
    }

    /// The weights' main type as people name it (`Q4_K`, `BF16`, `4-bit g64`), for reports.
    pub fn quantization(&self) -> Option<String> {
        match self {
            Self::Gguf(file) => file.main_weight_type(),
            Self::Safetensors(model) => Some(model.quantization()),
        }
    }

    /// Bytes of all stored tensors: about what loading the weights takes, known before loading them
    /// (the unified-memory budget checks it first).
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Self::Gguf(file) => file.weight_bytes(),
            Self::Safetensors(model) => model.weight_bytes(),
        }
    }

    /// Whether loading on the CPU leaves some matmul to candle's quantized kernels, which split
    /// their work over candle's own thread pool (GGUF types bodega's kernels do not read).
    pub fn needs_candle_cpu_kernels(&self) -> bool {
        match self {
            Self::Gguf(file) => !file.quantized_on_bodega_kernels(),
            Self::Safetensors(_) => false,
        }
    }

    /// The sampling settings for whatever the user leaves unset: a folder's `generation_config.json`
    /// or a GGUF's `general.sampling.*` keys over bodega's defaults.
    pub fn sampling_defaults(&self) -> Result<crate::engine::SamplingParams> {
        let defaults = crate::engine::SamplingParams::default();
        match self {
            Self::Gguf(file) => generation::gguf_sampling_defaults(file, defaults),
            Self::Safetensors(model) => generation::sampling_defaults(model.dir(), defaults),
        }
    }

    /// The dtype the files store unquantized weights in, when they say.
    pub fn native_dtype(&self) -> Option<DType> {
        match self {
            Self::Gguf(_) => None,
            Self::Safetensors(model) => model.native_dtype(),
        }
    }
}
