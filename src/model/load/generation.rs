//! The default sampling a model's files ask for: what its authors tuned the model to be sampled
//! with, used for every setting the user leaves unset (CLI flags, server request fields). A folder's
//! `generation_config.json` says it in transformers' names; a GGUF file in llama.cpp's
//! `general.sampling.*` keys. Stop tokens are the tokenizer's business (`tokenizer::hf`).

use super::gguf::GgufFile;
use super::safetensors::read_json;
use crate::engine::SamplingParams;
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::Value;
use std::path::Path;

/// The names one format gives the sampling settings.
struct Keys {
    temperature: &'static str,
    top_k: &'static str,
    top_p: &'static str,
    min_p: &'static str,
    repeat_penalty: &'static str,
    /// Recent tokens the repeat penalty looks at (-1: all of them), where the format has it.
    repeat_last_n: Option<&'static str>,
}

const HF_KEYS: Keys = Keys {
    temperature: "temperature",
    top_k: "top_k",
    top_p: "top_p",
    min_p: "min_p",
    repeat_penalty: "repetition_penalty",
    repeat_last_n: None,
};

const GGUF_KEYS: Keys = Keys {
    temperature: "general.sampling.temp",
    top_k: "general.sampling.top_k",
    top_p: "general.sampling.top_p",
    min_p: "general.sampling.min_p",
    repeat_penalty: "general.sampling.penalty_repeat",
    repeat_last_n: Some("general.sampling.penalty_last_n"),
};

/// `params` with every setting `value` finds under `keys`, each checked; `bad(key, want)` is the
/// error for a value out of range.
fn apply(
    mut params: SamplingParams,
    keys: &Keys,
    value: impl Fn(&str) -> Result<Option<f64>>,
    bad: impl Fn(&str, &str) -> Error,
) -> Result<SamplingParams> {
    let number = |key: &str, ok: fn(f64) -> bool, want: &str| -> Result<Option<f64>> {
        match value(key)? {
            Some(x) if !ok(x) => Err(bad(key, want)),
            found => Ok(found),
        }
    };
    if let Some(t) = number(keys.temperature, |x| x >= 0.0 && x.is_finite(), "0 or more")? {
        params.temperature = t as f32;
    }
    if let Some(k) = number(keys.top_k, |x| x >= 0.0 && x.fract() == 0.0, "a whole number, 0 or more")? {
        params.top_k = k as usize;
    }
    if let Some(p) = number(keys.top_p, |x| x > 0.0 && x <= 1.0, "more than 0 and at most 1")? {
        params.top_p = p as f32;
    }
    if let Some(p) = number(keys.min_p, |x| (0.0..=1.0).contains(&x), "between 0 and 1")? {
        params.min_p = p as f32;
    }
    if let Some(r) = number(keys.repeat_penalty, |x| x > 0.0 && x.is_finite(), "more than 0")? {
        params.repeat_penalty = r as f32;
    }
    if let Some(key) = keys.repeat_last_n {
        if let Some(n) = number(key, |x| x >= -1.0 && x.fract() == 0.0, "a whole number, -1 or more")? {
            params.repeat_last_n = if n < 0.0 { usize::MAX } else { n as usize };
        }
    }
    Ok(params)
}

/// `defaults` with the folder's `temperature`, `top_k`, `top_p`, `min_p` and `repetition_penalty`
/// over them. `"do_sample": false` means greedy, as transformers reads it; a folder without the
/// file keeps `defaults`.
pub fn sampling_defaults(dir: &Path, defaults: SamplingParams) -> Result<SamplingParams> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(defaults);
    }
    let json = read_json(&path)?;
    let bad = |key: &str, want: &str| Error::Metadata(format!("{}: `{key}` must be {want}", path.display()));
    let value = |key: &str| match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(key, "a number")),
    };
    let mut params = apply(defaults, &HF_KEYS, value, bad)?;
    match json.get("do_sample") {
        Some(Value::Bool(false)) => params.temperature = 0.0,
        None | Some(Value::Null | Value::Bool(true)) => {}
        Some(_) => return Err(bad("do_sample", "true or false")),
    }
    Ok(params)
}

/// `defaults` with a GGUF file's `general.sampling.temp`, `top_k`, `top_p`, `min_p`,
/// `penalty_repeat` and `penalty_last_n` over them (llama.cpp's keys for a model's recommended
/// sampling).
pub fn gguf_sampling_defaults(file: &GgufFile, defaults: SamplingParams) -> Result<SamplingParams> {
    let bad = |key: &str, want: &str| Error::Metadata(format!("{}: `{key}` must be {want}", file.path().display()));
    let value = |key: &str| match file.get(key) {
        None => Ok(None),
        Some(v) => gguf_number(v).map(Some).ok_or_else(|| bad(key, "a number")),
    };
    apply(defaults, &GGUF_KEYS, value, bad)
}

/// A numeric GGUF value of any width, as f64.
fn gguf_number(v: &GgufValue) -> Option<f64> {
    Some(match *v {
        GgufValue::F32(x) => x as f64,
        GgufValue::F64(x) => x,
        GgufValue::U8(x) => x as f64,
        GgufValue::I8(x) => x as f64,
        GgufValue::U16(x) => x as f64,
        GgufValue::I16(x) => x as f64,
        GgufValue::U32(x) => x as f64,
        GgufValue::I32(x) => x as f64,
        GgufValue::U64(x) => x as f64,
        GgufValue::I64(x) => x as f64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_config(json: &str) -> Result<SamplingParams> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("generation_config.json"), json).unwrap();
        sampling_defaults(dir.path(), SamplingParams::default())
    }

    #[test]
    fn the_file_sets_what_it_names_and_leaves_the_rest() {
        let p = with_config(
            r#"{"do_sample": true, "temperature": 0.6, "top_k": 20, "top_p": 0.9,
            "repetition_penalty": 1.1, "eos_token_id": [2, 0]}"#,
        )
        .unwrap();
        let expected = SamplingParams {
            temperature: 0.6,
            top_k: 20,
            top_p: 0.9,
            repeat_penalty: 1.1,
            ..SamplingParams::default()
        };
        assert_eq!(p, expected);
        assert_eq!(with_config(r#"{"bos_token_id": 0}"#).unwrap(), SamplingParams::default());
    }

    #[test]
    fn do_sample_false_is_greedy() {
        assert_eq!(with_config(r#"{"do_sample": false, "temperature": 0.7}"#).unwrap().temperature, 0.0);
    }

    #[test]
    fn a_folder_without_the_file_keeps_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sampling_defaults(dir.path(), SamplingParams::default()).unwrap(), SamplingParams::default());
    }

    fn with_gguf(metadata: &[(&str, GgufValue)]) -> Result<SamplingParams> {
        let file = tempfile::NamedTempFile::new().unwrap();
        let md: Vec<(&str, &GgufValue)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        candle_core::quantized::gguf_file::write(&mut std::fs::File::create(file.path()).unwrap(), &md, &[]).unwrap();
        gguf_sampling_defaults(&GgufFile::open(file.path()).unwrap(), SamplingParams::default())
    }

    #[test]
    fn a_gguf_sets_what_its_sampling_keys_name() {
        let p = with_gguf(&[
            ("general.architecture", GgufValue::String("llama".into())),
            ("general.sampling.temp", GgufValue::F32(0.6)),
            ("general.sampling.top_k", GgufValue::I32(20)),
            ("general.sampling.top_p", GgufValue::F32(0.95)),
            ("general.sampling.penalty_last_n", GgufValue::I32(-1)),
        ])
        .unwrap();
        let expected = SamplingParams {
            temperature: 0.6,
            top_k: 20,
            top_p: 0.95,
            repeat_last_n: usize::MAX,
            ..SamplingParams::default()
        };
        assert_eq!(p, expected);
        let plain = with_gguf(&[("general.architecture", GgufValue::String("llama".into()))]).unwrap();
        assert_eq!(plain, SamplingParams::default());
        let err = with_gguf(&[("general.sampling.top_p", GgufValue::F32(2.0))]).unwrap_err().to_string();
        assert!(err.contains("`general.sampling.top_p` must be more than 0 and at most 1"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        for (json, key) in [
            (r#"{"top_p": 1.5}"#, "top_p"),
            (r#"{"top_k": 2.5}"#, "top_k"),
            (r#"{"temperature": "hot"}"#, "temperature"),
        ] {
            let err = with_config(json).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
    }
}
