//! A Hugging Face model folder: `config.json` and safetensors weights (one file, or shards named by
//! `model.safetensors.index.json`), f32/f16/bf16 or MLX-quantized. Tensors are memory-mapped and read
//! one at a time under GGUF's names, so the model is built as from a GGUF file.

use super::mlx::{Packed, Quantization};
use super::{hf_config, Matrix, WeightSource};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// An open model folder.
pub struct SafetensorsModel {
    dir: PathBuf,
    config: ModelConfig,
    json: Value,
    tensors: MmapedSafetensors,
    mlx: Option<Quantization>,
    /// Matrices that had to be dequantized (MLX layouts with no exact block format).
    dequantized: Vec<String>,
}

impl SafetensorsModel {
    /// Opens `dir`: reads `config.json`, finds the weight files and maps them.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join("config.json").is_file() {
            return Err(Error::UnsupportedFormat(dir.to_path_buf()));
        }
        let json = read_json(&dir.join("config.json"))?;
        let config = hf_config::config(&json)?;
        let mlx = Quantization::from_config(&json)?;
        let files = weight_files(dir)?;
        // SAFETY: the files are mapped read-only; bodega never writes to them while they are mapped.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| Error::Metadata(format!("{}: unreadable safetensors ({e})", dir.display())))?;
        Ok(Self { dir: dir.to_path_buf(), config, json, tensors, mlx, dequantized: Vec::new() })
    }

    /// Bytes of all tensors in the files, as stored.
    pub fn weight_bytes(&self) -> u64 {
        self.tensors.tensors().iter().map(|(_, view)| view.data().len() as u64).sum()
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The MLX quantization, when the model has one.
    pub fn mlx(&self) -> Option<&Quantization> {
        self.mlx.as_ref()
    }

    /// Names of the matrices dequantized so far (empty when everything ran in its own format).
    pub fn dequantized(&self) -> &[String] {
        &self.dequantized
    }

    /// `4-bit g64` for MLX, else the dtype `config.json` names (`BF16`).
    pub fn quantization(&self) -> String {
        match &self.mlx {
            Some(q) => q.describe(),
            None => format!("{:?}", self.native_dtype().unwrap_or(DType::F32)).to_uppercase(),
        }
    }

    /// The dtype `config.json` says the weights are in (`torch_dtype`, or transformers 5's `dtype`).
    pub fn native_dtype(&self) -> Option<DType> {
        let name = self.json.get("torch_dtype").or_else(|| self.json.get("dtype"))?.as_str()?;
        match name {
            "float32" => Some(DType::F32),
            "float16" => Some(DType::F16),
            "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }

    /// The file's name for a GGUF tensor name.
    fn hf_name(&self, gguf_name: &str) -> String {
        hf_name(gguf_name, self.config.variant.gemma)
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.tensors.load(name, device).map_err(|e| match self.tensors.get(name) {
            Err(_) => Error::Metadata(format!("tensor '{name}' is missing from {}", self.dir.display())),
            Ok(_) => Error::Candle(e),
        })
    }

    /// An MLX-quantized matrix: repacked to Q4_1 when exact, else dequantized to f32.
    fn mlx_matrix(&mut self, module: &str, quant: super::mlx::Quant, device: &Device) -> Result<Matrix> {
        let cpu = Device::Cpu;
        let words = self.load(&format!("{module}.weight"), &cpu)?;
        let (rows, width) = words.dims2()?;
        let words = words.flatten_all()?.to_vec1::<u32>()?;
        let f32s = |t: Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
        let scales = f32s(self.load(&format!("{module}.scales"), &cpu)?)?;
        let biases = f32s(self.load(&format!("{module}.biases"), &cpu)?)?;
        let packed =
            Packed { words: &words, scales: &scales, biases: &biases, rows, cols: width * 32 / quant.bits, quant };
        packed.check()?;
        if let Some(blocks) = packed.to_q4_1() {
            let storage = QStorage::from_data(Cow::Owned(blocks), device, GgmlDType::Q4_1)?;
            return Ok(Matrix::Quantized(Box::new(QTensor::new(storage, (rows, packed.cols))?)));
        }
        self.dequantized.push(module.to_string());
        Ok(Matrix::Dense(Tensor::from_vec(packed.dequantize(), (rows, packed.cols), device)?))
    }
}

impl WeightSource for SafetensorsModel {
    fn has(&self, name: &str) -> bool {
        // transformers ties unless the config says otherwise.
        let tied = self.json.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true);
        let hf = self.hf_name(name);
        let present = self.tensors.get(&hf).is_ok();
        present && !(tied && name == "output.weight")
    }

    fn matrix(&mut self, name: &str, device: &Device) -> Result<Matrix> {
        let hf = self.hf_name(name);
        let module = hf.strip_suffix(".weight").unwrap_or(&hf).to_string();
        let quant = self.mlx.as_ref().and_then(|q| q.of(&module));
        match quant {
            Some(quant) if self.tensors.get(&format!("{module}.scales")).is_ok() => {
                self.mlx_matrix(&module, quant, device)
            }
            _ => Ok(Matrix::Dense(self.load(&hf, device)?)),
        }
    }

    fn vector(&mut self, name: &str, device: &Device) -> Result<Tensor> {
        let t = self.load(&self.hf_name(name), device)?.to_dtype(DType::F32)?;
        // Gemma's RMS norms scale by (1 + w); GGUF stores 1 + w, transformers w.
        Ok(match self.config.variant.gemma && name.contains("norm") {
            true => (t + 1.0)?,
            false => t,
        })
    }
}

/// GGUF tensor name → the Hugging Face one (`blk.0.attn_q.weight` → `model.layers.0.self_attn.q_proj.weight`).
fn hf_name(gguf: &str, gemma: bool) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let Some(rest) = gguf.strip_prefix("blk.") else { return gguf.to_string() };
    let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
    let (module, kind) = rest.rsplit_once('.').unwrap_or((rest, ""));
    let module = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" | "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        other => other,
    };
    format!("model.layers.{layer}.{module}.{kind}")
}

/// The shards the index names, else every `*.safetensors` in the folder.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.is_file() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Metadata(format!("{}: no weight_map", index.display())))?;
        map.values().filter_map(Value::as_str).map(|f| dir.join(f)).collect()
    } else {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect()
    };
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::UnsupportedFormat(dir.to_path_buf()));
    }
    Ok(files)
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| Error::Metadata(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::hf_name;

    #[test]
    fn gguf_names_map_to_transformers_names() {
        assert_eq!(hf_name("blk.3.attn_q.weight", false), "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(hf_name("blk.0.attn_k.bias", false), "model.layers.0.self_attn.k_proj.bias");
        assert_eq!(hf_name("blk.1.ffn_norm.weight", false), "model.layers.1.post_attention_layernorm.weight");
        assert_eq!(hf_name("blk.1.ffn_norm.weight", true), "model.layers.1.pre_feedforward_layernorm.weight");
        assert_eq!(hf_name("blk.1.post_attention_norm.weight", true), "model.layers.1.post_attention_layernorm.weight");
        assert_eq!(hf_name("token_embd.weight", false), "model.embed_tokens.weight");
    }
}
