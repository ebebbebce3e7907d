//! What a model listing shows about local weights without loading them: the architecture, the
//! quantization and the parameter count, read from GGUF metadata and tensor shapes, or from
//! `config.json` and safetensors headers (MLX-quantized matrices counted unpacked).

use crate::model::load::gguf::GgufFile;
use crate::model::load::mlx::Quantization;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Architecture, quantization and size of a model, when its files say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightsInfo {
    /// `llama`, `qwen3`, ...: GGUF's `general.architecture`, or `config.json`'s `model_type`.
    pub architecture: Option<String>,
    /// Whether the safetensors are MLX-quantized.
    pub mlx: bool,
    /// `Q4_K_M`, `Q8_0`, `BF16`...
    pub quant: Option<String>,
    /// Elements in all weight tensors.
    pub parameters: Option<u64>,
}

/// Reads every part of a GGUF model; unreadable files give no information rather than an error, so
/// that one damaged file does not hide the rest of a listing.
pub fn gguf(parts: &[PathBuf]) -> WeightsInfo {
    let files: Option<Vec<GgufFile>> = parts.iter().map(|p| GgufFile::open(p).ok()).collect();
    let Some(files) = files else { return WeightsInfo::default() };
    let Some(first) = files.first() else { return WeightsInfo::default() };
    let named = first.opt_usize("general.file_type").ok().flatten().and_then(file_type_name);
    WeightsInfo {
        architecture: first.architecture().ok().map(str::to_string),
        mlx: false,
        quant: named.map(str::to_string).or_else(|| first.main_weight_type()),
        parameters: Some(files.iter().map(GgufFile::parameter_count).sum()),
    }
}

/// llama.cpp's names for `general.file_type` (`llama_ftype`): the mix a file was quantized to, which
/// the main weight type alone does not tell (`Q4_K` is both `Q4_K_S` and `Q4_K_M`).
fn file_type_name(file_type: usize) -> Option<&'static str> {
    const NAMES: [(usize, &str); 31] = [
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (7, "Q8_0"),
        (8, "Q5_0"),
        (9, "Q5_1"),
        (10, "Q2_K"),
        (11, "Q3_K_S"),
        (12, "Q3_K_M"),
        (13, "Q3_K_L"),
        (14, "Q4_K_S"),
        (15, "Q4_K_M"),
        (16, "Q5_K_S"),
        (17, "Q5_K_M"),
        (18, "Q6_K"),
        (19, "IQ2_XXS"),
        (20, "IQ2_XS"),
        (21, "Q2_K_S"),
        (22, "IQ3_XS"),
        (23, "IQ3_XXS"),
        (24, "IQ1_S"),
        (25, "IQ4_NL"),
        (26, "IQ3_S"),
        (27, "IQ3_M"),
        (28, "IQ2_S"),
        (29, "IQ2_M"),
        (30, "IQ4_XS"),
        (31, "IQ1_M"),
        (32, "BF16"),
        (38, "MXFP4_MOE"),
    ];
    NAMES.iter().find(|(n, _)| *n == file_type).map(|(_, name)| *name)
}

/// Reads `config.json` beside the weight files and their headers: the dtype holding most bytes (or the
/// MLX quantization), and the element count of every tensor (packed MLX codes counted as values, their
/// scales and biases left out).
pub fn safetensors(files: &[PathBuf]) -> WeightsInfo {
    let config = files
        .first()
        .and_then(|f| std::fs::read(f.with_file_name("config.json")).ok())
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .unwrap_or_default();
    let mlx = Quantization::from_config(&config).ok().flatten();
    let mut bytes: HashMap<String, u64> = HashMap::new();
    let mut parameters = 0u64;
    for file in files {
        let Some(tensors) = safetensors_header(file) else { return WeightsInfo::default() };
        for (name, dtype, elements, size) in tensors {
            let module = name.rsplit_once('.').map_or(name.as_str(), |(m, _)| m);
            let quant = mlx.as_ref().and_then(|q| q.of(module));
            parameters += match (quant, name.rsplit_once('.').map(|(_, kind)| kind)) {
                (Some(_), Some("scales" | "biases")) => 0,
                (Some(q), _) if dtype == "U32" => elements * 32 / q.bits as u64,
                _ => elements,
            };
            *bytes.entry(dtype).or_default() += size;
        }
    }
    let quant = match &mlx {
        Some(q) => Some(q.describe()),
        None => bytes.into_iter().max_by_key(|(_, size)| *size).map(|(dtype, _)| dtype),
    };
    let architecture = crate::model::load::architecture(&config)
        .map(str::to_string)
        .or_else(|| config.get("model_type").and_then(|t| t.as_str()).map(str::to_string));
    WeightsInfo { architecture, mlx: mlx.is_some(), quant, parameters: Some(parameters) }
}

/// (name, dtype, elements, bytes) of each tensor in a safetensors file's header.
fn safetensors_header(path: &Path) -> Option<Vec<(String, String, u64, u64)>> {
    #[derive(serde::Deserialize)]
    struct Tensor {
        dtype: String,
        shape: Vec<u64>,
        data_offsets: [u64; 2],
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let mut entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
    entries.remove("__metadata__");
    entries
        .into_iter()
        .map(|(name, v)| {
            let t: Tensor = serde_json::from_value(v).ok()?;
            Some((name, t.dtype, t.shape.iter().product(), t.data_offsets[1].saturating_sub(t.data_offsets[0])))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_headers_give_dtype_and_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let header = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 20]);
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let info = safetensors(&[path]);
        assert_eq!(info, WeightsInfo { quant: Some("BF16".into()), parameters: Some(8), ..WeightsInfo::default() });
    }

    #[test]
    fn mlx_folders_show_architecture_quantization_and_unpacked_parameters() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/qwen3");
        let info = safetensors(&[dir.join("mlx-4bit-g64/model.safetensors")]);
        let plain = safetensors(&[dir.join("hf/model.safetensors")]);
        assert_eq!(info.architecture.as_deref(), Some("qwen3"));
        assert!(info.mlx && !plain.mlx);
        assert_eq!(info.quant.as_deref(), Some("4-bit g64"));
        assert_eq!(plain.quant.as_deref(), Some("BF16"));
        assert_eq!(info.parameters, plain.parameters);
    }

    #[test]
    fn unreadable_files_give_no_information() {
        assert_eq!(gguf(&[PathBuf::from("/nonexistent.gguf")]), WeightsInfo::default());
        assert_eq!(safetensors(&[PathBuf::from("/nonexistent.safetensors")]), WeightsInfo::default());
    }
}
