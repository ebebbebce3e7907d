//! The Llama family in one implementation: Llama 2/3.x, SmolLM, Mistral, Qwen2 (biases on Q/K/V),
//! Qwen3 (RMS norms on Q and K per head) and Gemma 3 (sandwich norms, GeGLU, a scaled embedding, and
//! sliding-window layers with their own RoPE base). The variants differ only in the flags of
//! [`Variant`]; the block is written once.

use super::load::gguf::GgufFile;
use super::rope::{Rope, RopeConfig, RopeStyle};
use super::{Model, ModelInfo, StepInput};
use crate::error::{Error, Result};
use crate::ops::{self, PagedKvCache, QWeights};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// What distinguishes one member of the family from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Prefix of the architecture's metadata keys (`llama.block_count`, ...).
    arch: &'static str,
    /// Q, K and V projections carry a bias (Qwen2).
    qkv_bias: bool,
    /// Per-head RMS norm on queries and keys before RoPE (Qwen3, Gemma 3).
    qk_norm: bool,
    /// How RoPE pairs dimensions in this file's layout.
    rope_style: RopeStyle,
    /// Gemma 3: norms after attention and MLP too, GeGLU, embedding × √hidden, sliding layers.
    gemma: bool,
}

impl Variant {
    /// The variant for a `general.architecture` value, if bodega implements it.
    pub fn from_architecture(arch: &str) -> Option<Self> {
        let (arch, qkv_bias, qk_norm, rope_style, gemma) = match arch {
            "llama" => ("llama", false, false, RopeStyle::Interleaved, false),
            "mistral" => ("mistral", false, false, RopeStyle::Interleaved, false),
            "qwen2" => ("qwen2", true, false, RopeStyle::Halves, false),
            "qwen3" => ("qwen3", false, true, RopeStyle::Halves, false),
            "gemma3" => ("gemma3", false, true, RopeStyle::Halves, true),
            _ => return None,
        };
        Some(Self { arch, qkv_bias, qk_norm, rope_style, gemma })
    }
}

/// Gemma 3 makes five of every six layers sliding-window layers (llama.cpp and transformers agree).
const GEMMA3_SLIDING_PATTERN: usize = 6;
/// RoPE base of Gemma 3's sliding layers (the file gives only the global one).
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// A projection: quantized (or dense) weights and an optional bias.
#[derive(Debug)]
struct Linear {
    weight: QWeights,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(weight: QTensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self { weight: QWeights::new(Arc::new(weight))?, bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Tensor>,
    /// Keys each query sees (0: all).
    window: usize,
    /// Index into `Llama::ropes`.
    rope: usize,
}

/// A loaded Llama-family model.
#[derive(Debug)]
pub struct Llama {
    info: ModelInfo,
    embedding: QWeights,
    embedding_scale: Option<f64>,
    blocks: Vec<Block>,
    output_norm: Tensor,
    output: Linear,
    ropes: Vec<Rope>,
    gelu: bool,
    eps: f32,
    scale: f32,
}

impl Llama {
    /// Reads the weights and hyper-parameters from a GGUF file, only the first `max_layers` blocks
    /// when given.
    pub fn from_gguf(
        file: &mut GgufFile,
        variant: Variant,
        device: &Device,
        max_layers: Option<usize>,
    ) -> Result<Self> {
        let key = |k: &str| format!("{}.{k}", variant.arch);
        let hidden = file.usize(&key("embedding_length"))?;
        let num_layers = file.usize(&key("block_count"))?.min(max_layers.unwrap_or(usize::MAX));
        let num_heads = file.usize(&key("attention.head_count"))?;
        let num_kv_heads = file.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(num_heads);
        let head_dim = file.opt_usize(&key("attention.key_length"))?.unwrap_or(hidden / num_heads.max(1));
        let context_length = file.usize(&key("context_length"))?;
        let eps = file.opt_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 || head_dim % 2 != 0 {
            return Err(Error::Metadata(format!(
                "inconsistent attention shape: {num_heads} heads, {num_kv_heads} KV heads, head size {head_dim}"
            )));
        }
        let global_rope = rope_config(file, &key, head_dim, context_length, variant.rope_style, device)?;
        let mut ropes = vec![Rope::new(&global_rope, device)?];
        let sliding_window = match variant.gemma {
            true => file.opt_usize(&key("attention.sliding_window"))?.unwrap_or(0),
            false => 0,
        };
        if sliding_window > 0 {
            let local = RopeConfig { base: GEMMA3_LOCAL_ROPE_BASE, linear_factor: 1.0, ..global_rope };
            ropes.push(Rope::new(&local, device)?);
        }

        let embedding = QWeights::new(Arc::new(file.tensor("token_embd.weight", device)?))?;
        let vocab_size = embedding.dims()?.0;
        let (output, untied_output_bytes) = if file.has_tensor("output.weight") {
            let weight = Linear::new(file.tensor("output.weight", device)?, None)?;
            let bytes = weight.weight.storage_bytes();
            (weight, bytes)
        } else {
            (Linear { weight: embedding.clone(), bias: None }, 0)
        };
        let embedding_bytes = embedding.storage_bytes();
        // A step reads every block and the output layer in full; of an untied embedding only its rows.
        let mut step_weight_bytes = if untied_output_bytes > 0 { untied_output_bytes } else { embedding_bytes };
        let mut weight_bytes = embedding_bytes + untied_output_bytes;
        let mut blocks = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let sliding = sliding_window > 0 && (i + 1) % GEMMA3_SLIDING_PATTERN != 0;
            let mut loader = BlockLoader { file, device, prefix: format!("blk.{i}"), bytes: 0 };
            let gemma = variant.gemma;
            let block = Block {
                attn_norm: loader.dense("attn_norm.weight")?,
                q: loader.linear("attn_q", variant.qkv_bias)?,
                k: loader.linear("attn_k", variant.qkv_bias)?,
                v: loader.linear("attn_v", variant.qkv_bias)?,
                o: loader.linear("attn_output", false)?,
                q_norm: variant.qk_norm.then(|| loader.dense("attn_q_norm.weight")).transpose()?,
                k_norm: variant.qk_norm.then(|| loader.dense("attn_k_norm.weight")).transpose()?,
                post_attn_norm: gemma.then(|| loader.dense("post_attention_norm.weight")).transpose()?,
                ffn_norm: loader.dense("ffn_norm.weight")?,
                gate: loader.linear("ffn_gate", false)?,
                up: loader.linear("ffn_up", false)?,
                down: loader.linear("ffn_down", false)?,
                post_ffn_norm: gemma.then(|| loader.dense("post_ffw_norm.weight")).transpose()?,
                window: if sliding { sliding_window } else { 0 },
                rope: usize::from(sliding),
            };
            weight_bytes += loader.bytes;
            step_weight_bytes += loader.bytes;
            blocks.push(block);
        }
        let output_norm = file.tensor("output_norm.weight", device)?.dequantize(device)?;
        let info = ModelInfo {
            architecture: variant.arch.to_string(),
            name: file.string("general.name").ok().map(str::to_string),
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            weight_bytes,
            step_weight_bytes,
        };
        Ok(Self {
            info,
            embedding,
            embedding_scale: variant.gemma.then_some((hidden as f64).sqrt()),
            blocks,
            output_norm,
            output,
            ropes,
            gelu: variant.gemma,
            eps,
            scale: 1.0 / (head_dim as f32).sqrt(),
        })
    }

    fn norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, self.eps)?)
    }

    fn attention(&self, block: &Block, x: &Tensor, input: &StepInput, cache: (&Tensor, &Tensor)) -> Result<Tensor> {
        let t = x.dim(0)?;
        let (h, kvh, d) = (self.info.num_heads, self.info.num_kv_heads, self.info.head_dim);
        let mut q = block.q.forward(x)?.reshape((t, h, d))?;
        let mut k = block.k.forward(x)?.reshape((t, kvh, d))?;
        let v = block.v.forward(x)?.reshape((t, kvh, d))?;
        if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
            q = self.norm(&q, qn)?;
            k = self.norm(&k, kn)?;
        }
        let rope = &self.ropes[block.rope];
        let q = rope.apply(&q, &input.positions)?;
        let k = rope.apply(&k, &input.positions)?;
        ops::kv_write(&k, &v, &input.attention.slot_mapping, cache.0, cache.1)?;
        let out = ops::paged_attention(&q, cache.0, cache.1, &input.attention, self.scale, block.window)?;
        block.o.forward(&out.reshape((t, h * d))?)
    }

    fn feed_forward(&self, block: &Block, x: &Tensor) -> Result<Tensor> {
        let gate = block.gate.forward(x)?;
        let gate = if self.gelu { gate.gelu()? } else { candle_nn::ops::silu(&gate)? };
        block.down.forward(&(gate * block.up.forward(x)?)?)
    }

    /// `x + post_norm(f(norm(x)))`, the post-norm being Gemma's.
    fn residual(
        &self,
        x: Tensor,
        norm: &Tensor,
        post_norm: Option<&Tensor>,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut y = f(&self.norm(&x, norm)?)?;
        if let Some(post) = post_norm {
            y = self.norm(&y, post)?;
        }
        Ok((x + y)?)
    }
}

impl Model for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&self, input: &StepInput, cache: &PagedKvCache) -> Result<Tensor> {
        let mut x = self.embedding.embedding(&input.token_ids)?;
        if let Some(scale) = self.embedding_scale {
            x = (x * scale)?;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            x = self.residual(x, &block.attn_norm, block.post_attn_norm.as_ref(), |h| {
                self.attention(block, h, input, cache.layer(i))
            })?;
            x = self.residual(x, &block.ffn_norm, block.post_ffn_norm.as_ref(), |h| self.feed_forward(block, h))?;
        }
        let x = x.index_select(&input.logits_rows, 0)?;
        let x = self.norm(&x, &self.output_norm)?;
        self.output.forward(&x)
    }
}

/// Reads the tensors of one block, adding up their sizes.
struct BlockLoader<'a> {
    file: &'a mut GgufFile,
    device: &'a Device,
    prefix: String,
    bytes: usize,
}

impl BlockLoader<'_> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        let t = self.file.tensor(&format!("{}.{name}", self.prefix), self.device)?;
        self.bytes += t.storage_size_in_bytes();
        Ok(t)
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(self.device)?)
    }

    fn linear(&mut self, name: &str, bias: bool) -> Result<Linear> {
        let weight = self.qtensor(&format!("{name}.weight"))?;
        let bias = bias.then(|| self.dense(&format!("{name}.bias"))).transpose()?;
        Linear::new(weight, bias)
    }
}

/// RoPE settings from the metadata: θ base, linear scaling, Llama 3 frequency factors.
fn rope_config(
    file: &mut GgufFile,
    key: &dyn Fn(&str) -> String,
    head_dim: usize,
    context_length: usize,
    style: RopeStyle,
    device: &Device,
) -> Result<RopeConfig> {
    let dim = file.opt_usize(&key("rope.dimension_count"))?.unwrap_or(head_dim);
    if dim != head_dim {
        return Err(Error::Metadata(format!("partial rotary embeddings ({dim} of {head_dim}) are not supported")));
    }
    let scaling = file.string(&key("rope.scaling.type")).unwrap_or("none").to_string();
    let factor = file.opt_f32(&key("rope.scaling.factor"))?.unwrap_or(1.0);
    let linear_factor = match scaling.as_str() {
        "none" => 1.0,
        "linear" => factor,
        other => return Err(Error::Metadata(format!("RoPE scaling '{other}' is not supported"))),
    };
    let freq_factors = if file.has_tensor("rope_freqs.weight") {
        let t = file.tensor("rope_freqs.weight", device)?.dequantize(&Device::Cpu)?;
        Some(t.flatten_all()?.to_vec1::<f32>()?)
    } else {
        None
    };
    if freq_factors.as_ref().is_some_and(|f| f.len() != dim / 2) {
        return Err(Error::Metadata("rope_freqs.weight does not match the head size".into()));
    }
    Ok(RopeConfig {
        dim,
        base: file.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        linear_factor,
        freq_factors,
        max_positions: context_length,
        style,
    })
}
