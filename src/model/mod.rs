//! Model architectures behind one trait: a forward pass over a whole step (many sequences' decode
//! tokens and prefill chunks at once), described by explicit batch metadata built by the runner, with
//! keys and values kept in the paged cache. Logits come back only for the rows that need a token.

pub mod config;
mod linear;
mod llama;
pub mod load;
mod rope;

use crate::error::Result;
use crate::ops::{AttentionMetadata, PagedKvCache};
use candle_core::{Device, Tensor};
use load::gguf::GgufFile;
use load::{LoadOptions, ModelFiles, WeightSource};

/// One forward pass's input: the step flattened into tensors.
#[derive(Debug)]
pub struct StepInput {
    /// `[T]` u32: the tokens fed this step, sequence after sequence.
    pub token_ids: Tensor,
    /// `[T]` u32: each token's position in its sequence.
    pub positions: Tensor,
    /// Where each sequence's keys and values live, and which of its tokens are queries.
    pub attention: AttentionMetadata,
    /// The same for the cache's window group (its own blocks), when the cache has one.
    pub window_attention: Option<AttentionMetadata>,
    /// `[R]` u32: the rows of the step whose logits are needed (one per sequence that samples).
    pub logits_rows: Tensor,
}

/// What the rest of bodega needs to know about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// `general.architecture` as the file names it.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Rows of the output layer.
    pub vocab_size: usize,
    /// The context the model was trained for.
    pub context_length: usize,
    /// Keys each query of layer `i` sees (0: all): the engine keeps windowed layers in a smaller pool.
    pub layer_windows: Vec<usize>,
    /// Bytes the weights take in memory.
    pub weight_bytes: usize,
    /// Bytes of weights one forward pass reads, whatever its batch: the numerator of a decode step's
    /// achieved memory bandwidth.
    pub step_weight_bytes: usize,
}

/// A language model that can run one engine step.
pub trait Model: Send {
    /// Shapes and sizes of the loaded model.
    fn info(&self) -> &ModelInfo;

    /// Runs the step: writes its keys and values into `cache` and returns `[R, vocab]` f32 logits
    /// for `input.logits_rows`.
    fn forward(&self, input: &StepInput, cache: &PagedKvCache) -> Result<Tensor>;
}

/// Builds the model a GGUF file describes, on `device`, with unquantized matrices in f32.
pub fn from_gguf(file: &mut GgufFile, device: &Device) -> Result<Box<dyn Model>> {
    let config = load::gguf_config(file)?;
    let options = LoadOptions::for_device(device, Some(candle_core::DType::F32), None);
    build(&config, file, options, device)
}

/// Builds the model of any supported format on `device`.
pub fn load(files: &mut ModelFiles, options: LoadOptions, device: &Device) -> Result<Box<dyn Model>> {
    load_layers(files, options, device, None)
}

/// [`load`] keeping only the first `max_layers` transformer blocks (all when `None`): a cheaper,
/// weaker model with the same tokenizer, as a speculative draft (`--draft-layers`).
pub fn load_layers(
    files: &mut ModelFiles,
    options: LoadOptions,
    device: &Device,
    max_layers: Option<usize>,
) -> Result<Box<dyn Model>> {
    let mut config = files.config()?;
    config.num_layers = config.num_layers.min(max_layers.unwrap_or(usize::MAX));
    build(&config, files.weights(), options, device)
}

/// Builds the model `config` describes from any weight source: the loaders' common end, and the way
/// tests build a reference from a wrapped source (weights dequantized, say).
pub fn build(
    config: &config::ModelConfig,
    source: &mut dyn WeightSource,
    options: LoadOptions,
    device: &Device,
) -> Result<Box<dyn Model>> {
    Ok(Box::new(llama::Llama::load(config, source, options, device)?))
}
