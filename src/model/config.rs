//! The hyper-parameters of a Llama-family model, whatever file they came from: GGUF metadata and
//! Hugging Face `config.json` both become one [`ModelConfig`], so that the model is built one way.

use super::rope::RopeConfig;

/// The architectures bodega implements, as `general.architecture` and `bodega list` name them.
pub const SUPPORTED_ARCHITECTURES: &str = "llama, mistral, qwen2, qwen3, gemma3";

/// What distinguishes one member of the family from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// The architecture's name (`llama`, `qwen3`, ...), also the prefix of its GGUF metadata keys.
    pub arch: &'static str,
    /// Q, K and V projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// Per-head RMS norm on queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma 3: norms after attention and MLP too, GeGLU, embedding × √hidden, sliding layers.
    pub gemma: bool,
}

impl Variant {
    /// The variant for an architecture name, if bodega implements it.
    pub fn from_architecture(arch: &str) -> Option<Self> {
        let (arch, qkv_bias, qk_norm, gemma) = match arch {
            "llama" => ("llama", false, false, false),
            "mistral" => ("mistral", false, false, false),
            "qwen2" => ("qwen2", true, false, false),
            "qwen3" => ("qwen3", false, true, false),
            "gemma3" => ("gemma3", false, true, true),
            _ => return None,
        };
        Some(Self { arch, qkv_bias, qk_norm, gemma })
    }
}

/// Everything needed to build the model besides its tensors.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Which member of the family.
    pub variant: Variant,
    /// The model's own name, when the files give one.
    pub name: Option<String>,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Transformer blocks to build (a loader may lower it to load only the first ones).
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// The context the model was trained for.
    pub context_length: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// RoPE of the global-attention layers.
    pub rope: RopeConfig,
    /// RoPE θ base of the sliding-window layers, when they have their own (Gemma 3).
    pub local_rope_base: Option<f32>,
    /// Keys each query of layer `i` sees (0: all): Gemma 3's sliding layers, Mistral's window.
    pub layer_windows: Vec<usize>,
    /// Attention scores are multiplied by this (1/√head_dim unless the model says otherwise).
    pub attn_scale: f32,
    /// Token embeddings are multiplied by this (Gemma 3: √hidden).
    pub embedding_scale: Option<f64>,
}

impl ModelConfig {
    /// Checks the attention shape, so that a bad file fails here rather than inside a matmul.
    pub fn validate(&self) -> crate::error::Result<()> {
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        if h == 0 || kvh == 0 || h % kvh != 0 || d % 2 != 0 || self.layer_windows.len() != self.num_layers {
            return Err(crate::error::Error::Metadata(format!(
                "inconsistent attention shape: {h} heads, {kvh} KV heads, head size {d}"
            )));
        }
        Ok(())
    }
}

/// Gemma 3 makes five of every six layers sliding-window layers (llama.cpp and transformers agree).
pub const GEMMA3_SLIDING_PATTERN: usize = 6;

/// Windows per layer for Gemma 3's default pattern: every sixth layer is global.
pub fn gemma3_windows(num_layers: usize, window: usize) -> Vec<usize> {
    (0..num_layers).map(|i| if window > 0 && (i + 1) % GEMMA3_SLIDING_PATTERN != 0 { window } else { 0 }).collect()
}
