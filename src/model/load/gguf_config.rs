//! GGUF metadata → [`ModelConfig`], with llama.cpp's conventions: keys prefixed by the architecture,
//! Llama/Mistral Q/K rows permuted for interleaved RoPE, Gemma 3's sliding pattern and local RoPE base
//! implied rather than stored.

use super::gguf::GgufFile;
use crate::error::{Error, Result};
use crate::model::config::{gemma3_windows, ModelConfig, Variant};
use crate::model::rope::{RopeConfig, RopeStyle};
use candle_core::Device;

/// RoPE base of Gemma 3's sliding layers (the file gives only the global one).
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Reads the hyper-parameters of a GGUF model.
pub fn config(file: &mut GgufFile) -> Result<ModelConfig> {
    let arch = file.architecture()?.to_string();
    let variant = Variant::from_architecture(&arch).ok_or(Error::UnsupportedArchitecture(arch))?;
    let key = |k: &str| format!("{}.{k}", variant.arch);
    let hidden = file.usize(&key("embedding_length"))?;
    let num_layers = file.usize(&key("block_count"))?;
    let num_heads = file.usize(&key("attention.head_count"))?;
    let num_kv_heads = file.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(num_heads);
    let head_dim = file.opt_usize(&key("attention.key_length"))?.unwrap_or(hidden / num_heads.max(1));
    let context_length = file.usize(&key("context_length"))?;
    // llama.cpp's converter permutes Llama and Mistral Q/K rows into adjacent pairs.
    let style = match variant.arch {
        "llama" | "mistral" => RopeStyle::Interleaved,
        _ => RopeStyle::Halves,
    };
    let rope = rope_config(file, &key, head_dim, context_length, style)?;
    let window = match variant.gemma {
        true => file.opt_usize(&key("attention.sliding_window"))?.unwrap_or(0),
        false => 0,
    };
    let config = ModelConfig {
        variant,
        name: file.string("general.name").ok().map(str::to_string),
        hidden,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        context_length,
        eps: file.opt_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope,
        local_rope_base: (window > 0).then_some(GEMMA3_LOCAL_ROPE_BASE),
        layer_windows: gemma3_windows(num_layers, window),
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        embedding_scale: variant.gemma.then_some((hidden as f64).sqrt()),
    };
    config.validate()?;
    Ok(config)
}

/// RoPE settings from the metadata: θ base, linear scaling, Llama 3 frequency factors.
fn rope_config(
    file: &mut GgufFile,
    key: &dyn Fn(&str) -> String,
    head_dim: usize,
    context_length: usize,
    style: RopeStyle,
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
        let t = file.tensor("rope_freqs.weight", &Device::Cpu)?.dequantize(&Device::Cpu)?;
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
