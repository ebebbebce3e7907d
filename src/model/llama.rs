//! The Llama family in one implementation: Llama 2/3.x, SmolLM, Mistral, Qwen2 (biases on Q/K/V),
//! Qwen3 (RMS norms on Q and K per head) and Gemma 3 (sandwich norms, GeGLU, a scaled embedding, and
//! sliding-window layers with their own RoPE base). The variants differ only in the flags of
//! [`Variant`](super::config::Variant); the block is written once.

use super::config::ModelConfig;
use super::linear::{self, Linear, Projections};
use super::load::{LoadOptions, Matrix, WeightSource};
use super::rope::{Rope, RopeConfig, StepRotation};
use super::{Model, ModelInfo, StepInput};
use crate::error::{Error, Result};
use crate::ops::{self, Activation, PagedKvCache, QWeights};
use candle_core::{Device, Tensor};

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    /// Q, K and V.
    qkv: Projections,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    /// Gate and up.
    gate_up: Projections,
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
    /// Builds the model `config` describes from the tensors of `source`.
    pub fn load(
        config: &ModelConfig,
        source: &mut dyn WeightSource,
        options: LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        let mut ropes = vec![Rope::new(&config.rope, device)?];
        if let Some(base) = config.local_rope_base {
            let local = RopeConfig { base, linear_factor: 1.0, freq_factors: None, ..config.rope.clone() };
            ropes.push(Rope::new(&local, device)?);
        }
        let mut loader = Loader { source, device, options, bytes: 0 };
        let embedding = loader.matrix("token_embd.weight")?;
        let embedding_bytes = loader.bytes;
        let vocab_size = embedding.dims()?.0;
        let output = match loader.source.has("output.weight") {
            true => Linear { weight: loader.matrix("output.weight")?, bias: None },
            false => Linear { weight: embedding.clone(), bias: None },
        };
        let untied_output_bytes = loader.bytes - embedding_bytes;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for (i, &window) in config.layer_windows.iter().enumerate().take(config.num_layers) {
            blocks.push(loader.block(i, config, window)?);
        }
        let output_norm = loader.vector("output_norm.weight")?;
        // A step reads every block and the output layer in full; of an untied embedding only its rows.
        let step_weight_bytes = loader.bytes - if untied_output_bytes > 0 { embedding_bytes } else { 0 };
        let info = ModelInfo {
            architecture: config.variant.arch.to_string(),
            name: config.name.clone(),
            num_layers: config.num_layers,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            vocab_size,
            context_length: config.context_length,
            layer_windows: config.layer_windows[..config.num_layers].to_vec(),
            weight_bytes: loader.bytes,
            step_weight_bytes,
        };
        Ok(Self {
            info,
            embedding,
            embedding_scale: config.embedding_scale,
            blocks,
            output_norm,
            output,
            ropes,
            gelu: config.variant.gemma,
            eps: config.eps,
            scale: config.attn_scale,
        })
    }

    fn norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, self.eps)?)
    }

    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        meta: &ops::AttentionMetadata,
        rotation: &StepRotation,
        cache: (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let t = x.dim(0)?;
        let (h, kvh, d) = (self.info.num_heads, self.info.num_kv_heads, self.info.head_dim);
        let [q, k, v]: [Tensor; 3] = block
            .qkv
            .forward(x)?
            .try_into()
            .map_err(|_| Error::Metadata("the Q/K/V projections gave other than 3 outputs".into()))?;
        let mut q = q.reshape((t, h, d))?;
        let mut k = k.reshape((t, kvh, d))?;
        let v = v.reshape((t, kvh, d))?;
        if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
            q = self.norm(&q, qn)?;
            k = self.norm(&k, kn)?;
        }
        let q = ops::rope_kv_write(&q, &k, &v, rotation.tables(), meta, cache)?;
        let out = ops::paged_attention(&q, cache.0, cache.1, meta, self.scale, block.window)?;
        block.o.forward(&out.reshape((t, h * d))?)
    }

    fn feed_forward(&self, block: &Block, x: &Tensor) -> Result<Tensor> {
        let act = if self.gelu { Activation::GeluTanh } else { Activation::Silu };
        let [gate, up]: [Tensor; 2] = block
            .gate_up
            .forward(x)?
            .try_into()
            .map_err(|_| Error::Metadata("the gate/up projections gave other than 2 outputs".into()))?;
        let gated = ops::gated_activation(&gate, &up, act)?;
        block.down.forward(&gated)
    }

    /// A sub-block with its residual: `x + post_norm(f(h))` (`h` being x's norm, the post-norm
    /// Gemma's), and that sum's norm by `next`, the input of whatever follows.
    fn residual(
        &self,
        (x, h): (Tensor, Tensor),
        post_norm: Option<&Tensor>,
        next: &Tensor,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let mut y = f(&h)?;
        if let Some(post) = post_norm {
            y = self.norm(&y, post)?;
        }
        Ok(ops::add_rms_norm(&x, &y, next, self.eps)?)
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
        let rotations =
            self.ropes.iter().map(|rope| rope.at(&input.positions)).collect::<Result<Vec<StepRotation>>>()?;
        // The residual stream and its norm by the next norm weight: each residual add is fused
        // with the norm after it (the next sub-block's, the last one the output norm).
        let first_norm = self.blocks.first().map_or(&self.output_norm, |b| &b.attn_norm);
        let mut stream = (x.clone(), self.norm(&x, first_norm)?);
        for (i, block) in self.blocks.iter().enumerate() {
            let meta = match (cache.is_windowed(i), &input.window_attention) {
                (false, _) => &input.attention,
                (true, Some(window)) => window,
                (true, None) => return Err(Error::InvalidRequest("the step has no window block tables".into())),
            };
            let next_norm = self.blocks.get(i + 1).map_or(&self.output_norm, |b| &b.attn_norm);
            stream = self.residual(stream, block.post_attn_norm.as_ref(), &block.ffn_norm, |h| {
                self.attention(block, h, meta, &rotations[block.rope], cache.layer(i))
            })?;
            stream = self.residual(stream, block.post_ffn_norm.as_ref(), next_norm, |h| self.feed_forward(block, h))?;
        }
        if input.logits_rows.dim(0)? == 0 {
            return Ok(Tensor::zeros((0, self.info.vocab_size), candle_core::DType::F32, &Device::Cpu)?);
        }
        // Rows are normed independently: norming all of them and keeping the sampled ones equals
        // norming the sampled ones.
        self.output.forward(&stream.1.index_select(&input.logits_rows, 0)?)
    }
}

/// Reads tensors from the source, adding up their sizes.
struct Loader<'a> {
    source: &'a mut dyn WeightSource,
    device: &'a Device,
    options: LoadOptions,
    bytes: usize,
}

impl Loader<'_> {
    fn matrix(&mut self, name: &str) -> Result<QWeights> {
        let weights = linear::weights(self.source.matrix(name, self.device)?, self.options.dense_dtype)?;
        self.bytes += weights.storage_bytes();
        Ok(weights)
    }

    /// The projections `names` of one input (`{name}.weight`, and `{name}.bias` when `bias`).
    fn projections(&mut self, names: &[String], bias: bool) -> Result<Projections> {
        let mut parts: Vec<(Matrix, Option<Tensor>)> = Vec::with_capacity(names.len());
        for name in names {
            let matrix = self.source.matrix(&format!("{name}.weight"), self.device)?;
            let b = bias.then(|| self.vector(&format!("{name}.bias"))).transpose()?;
            parts.push((matrix, b));
        }
        let projections = Projections::new(parts, self.options.dense_dtype, self.device)?;
        self.bytes += projections.storage_bytes();
        Ok(projections)
    }

    fn vector(&mut self, name: &str) -> Result<Tensor> {
        let t = self.source.vector(name, self.device)?;
        self.bytes += t.elem_count() * t.dtype().size_in_bytes();
        Ok(t)
    }

    fn linear(&mut self, name: &str, bias: bool) -> Result<Linear> {
        let weight = self.matrix(&format!("{name}.weight"))?;
        let bias = bias.then(|| self.vector(&format!("{name}.bias"))).transpose()?;
        Ok(Linear { weight, bias })
    }

    fn block(&mut self, i: usize, config: &ModelConfig, window: usize) -> Result<Block> {
        let p = |name: &str| format!("blk.{i}.{name}");
        let (variant, gemma) = (config.variant, config.variant.gemma);
        Ok(Block {
            attn_norm: self.vector(&p("attn_norm.weight"))?,
            qkv: self.projections(&[p("attn_q"), p("attn_k"), p("attn_v")], variant.qkv_bias)?,
            o: self.linear(&p("attn_output"), false)?,
            q_norm: variant.qk_norm.then(|| self.vector(&p("attn_q_norm.weight"))).transpose()?,
            k_norm: variant.qk_norm.then(|| self.vector(&p("attn_k_norm.weight"))).transpose()?,
            post_attn_norm: gemma.then(|| self.vector(&p("post_attention_norm.weight"))).transpose()?,
            ffn_norm: self.vector(&p("ffn_norm.weight"))?,
            gate_up: self.projections(&[p("ffn_gate"), p("ffn_up")], false)?,
            down: self.linear(&p("ffn_down"), false)?,
            post_ffn_norm: gemma.then(|| self.vector(&p("post_ffw_norm.weight"))).transpose()?,
            window,
            // Gemma 3's sliding layers have their own RoPE base (`ropes[1]`).
            rope: usize::from(window > 0 && config.local_rope_base.is_some()),
        })
    }
}
