//! Hugging Face `config.json` → [`ModelConfig`]. Both spellings of RoPE settings are read: the older
//! top-level `rope_theta` / `rope_scaling` and transformers 5's `rope_parameters` (per layer type for
//! Gemma 3). Anything bodega would compute differently from transformers is refused by name.

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, Variant, GEMMA3_SLIDING_PATTERN};
use crate::model::rope::{RopeConfig, RopeStyle};
use serde_json::Value;

/// `model_type` values and the architecture bodega runs them as.
const MODEL_TYPES: [(&str, &str); 5] =
    [("llama", "llama"), ("mistral", "mistral"), ("qwen2", "qwen2"), ("qwen3", "qwen3"), ("gemma3_text", "gemma3")];

/// The architecture a `config.json` describes, in bodega's names (`gemma3_text` is `gemma3`).
pub fn architecture(json: &Value) -> Option<&'static str> {
    let model_type = json.get("model_type")?.as_str()?;
    MODEL_TYPES.iter().find(|(t, _)| *t == model_type).map(|(_, arch)| *arch)
}

/// Reads the hyper-parameters; HF layouts always rotate halves.
pub fn config(json: &Value) -> Result<ModelConfig> {
    let model_type = match json.get("model_type").and_then(Value::as_str) {
        // The multimodal checkpoint (vision tower + language model) is not the text-only gemma3_text.
        Some("gemma3") => "gemma3 (multimodal; bodega reads gemma3_text checkpoints)",
        Some(other) => other,
        None => "(no model_type in config.json)",
    };
    let variant = architecture(json)
        .and_then(Variant::from_architecture)
        .ok_or_else(|| Error::UnsupportedArchitecture(model_type.to_string()))?;
    let c = Fields(json);
    let hidden = c.usize("hidden_size")?;
    let num_heads = c.usize("num_attention_heads")?;
    let num_kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
    let head_dim = c.opt_usize("head_dim")?.unwrap_or(hidden / num_heads.max(1));
    let num_layers = c.usize("num_hidden_layers")?;
    let context_length = c.opt_usize("max_position_embeddings")?.unwrap_or(4096);
    if c.opt_f64("partial_rotary_factor")?.is_some_and(|f| f != 1.0) {
        return Err(Error::Metadata("partial rotary embeddings are not supported".into()));
    }
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if c.0.get(key).is_some_and(|v| !v.is_null()) {
            return Err(Error::Metadata(format!("`{key}` is not supported")));
        }
    }
    if c.0.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
        return Err(Error::Metadata(format!("{} with use_sliding_window is not supported", variant.arch)));
    }
    let (rope_params, local_params) = rope_parameters(&c, variant.gemma);
    let rope = rope_config(rope_params, head_dim, context_length)?;
    let window = c.opt_usize("sliding_window")?.unwrap_or(0);
    let layer_windows = match variant.arch {
        "gemma3" => gemma3_windows(&c, num_layers, window)?,
        "mistral" => vec![window; num_layers],
        _ => vec![0; num_layers],
    };
    let local_rope_base = match variant.gemma {
        true => Some(theta(local_params).or(c.opt_f64("rope_local_base_freq")?).unwrap_or(10_000.0) as f32),
        false => None,
    };
    let attn_scale = match variant.gemma {
        true => c.opt_f64("query_pre_attn_scalar")?.unwrap_or(head_dim as f64).powf(-0.5) as f32,
        false => 1.0 / (head_dim as f32).sqrt(),
    };
    let config = ModelConfig {
        variant,
        name: json.get("_name_or_path").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string),
        hidden,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        context_length,
        eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
        rope,
        local_rope_base,
        layer_windows,
        attn_scale,
        embedding_scale: variant.gemma.then_some((hidden as f64).sqrt()),
    };
    config.validate()?;
    Ok(config)
}

/// The global and (Gemma 3) sliding layers' RoPE settings, from whichever spelling the file uses:
/// `rope_parameters`, else top-level keys (`rope_theta`, `rope_scaling`).
fn rope_parameters<'a>(c: &Fields<'a>, gemma: bool) -> (&'a Value, Option<&'a Value>) {
    match c.0.get("rope_parameters").filter(|v| v.is_object()) {
        Some(p) if gemma && p.get("full_attention").is_some() => {
            (p.get("full_attention").unwrap_or(p), p.get("sliding_attention"))
        }
        Some(p) => (p, None),
        None => (c.0, None),
    }
}

fn theta(params: Option<&Value>) -> Option<f64> {
    params?.get("rope_theta")?.as_f64()
}

/// θ and scaling: none, linear, or Llama 3's per-frequency factors.
fn rope_config(params: &Value, head_dim: usize, context_length: usize) -> Result<RopeConfig> {
    // Legacy files keep the scaling in `rope_scaling`; transformers 5 puts it beside `rope_theta`.
    let scaling = params.get("rope_scaling").filter(|v| v.is_object()).unwrap_or(params);
    let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str).unwrap_or("default");
    let factor = scaling.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
    let mut config = RopeConfig {
        dim: head_dim,
        base: theta(Some(params)).unwrap_or(10_000.0) as f32,
        linear_factor: 1.0,
        freq_factors: None,
        max_positions: context_length,
        style: RopeStyle::Halves,
    };
    match kind {
        "default" => {}
        "linear" => config.linear_factor = factor as f32,
        "llama3" => config.freq_factors = Some(llama3_freq_factors(scaling, factor, &config)?),
        other => return Err(Error::Metadata(format!("RoPE scaling '{other}' is not supported"))),
    }
    Ok(config)
}

/// Llama 3.x's long-context scaling as divisors of each frequency (what GGUF stores as
/// `rope_freqs.weight`): long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
fn llama3_freq_factors(scaling: &Value, factor: f64, rope: &RopeConfig) -> Result<Vec<f32>> {
    let get = |key: &str| {
        scaling.get(key).and_then(Value::as_f64).ok_or_else(|| Error::Metadata(format!("llama3 RoPE needs `{key}`")))
    };
    let (low, high, original) =
        (get("low_freq_factor")?, get("high_freq_factor")?, get("original_max_position_embeddings")?);
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    Ok((0..rope.dim / 2)
        .map(|i| {
            let freq = 1.0 / (rope.base as f64).powf(2.0 * i as f64 / rope.dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect())
}

/// Gemma 3's windows: `layer_types` when given, else every `sliding_window_pattern`-th layer global.
fn gemma3_windows(c: &Fields, num_layers: usize, window: usize) -> Result<Vec<usize>> {
    if let Some(types) = c.0.get("layer_types").and_then(Value::as_array) {
        if types.len() != num_layers {
            return Err(Error::Metadata(format!("layer_types has {} entries for {num_layers} layers", types.len())));
        }
        return Ok(types.iter().map(|t| if t.as_str() == Some("sliding_attention") { window } else { 0 }).collect());
    }
    let pattern = c.opt_usize("sliding_window_pattern")?.unwrap_or(GEMMA3_SLIDING_PATTERN).max(1);
    Ok((0..num_layers).map(|i| if (i + 1) % pattern != 0 { window } else { 0 }).collect())
}

/// Typed access to a `config.json` object with errors that name the key.
struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| Error::Metadata(format!("config.json has no `{key}`")))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| Error::Metadata(format!("config.json: `{key}` is not a whole number"))),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| Error::Metadata(format!("config.json: `{key}` is not a number")))
            }
        }
    }
}
