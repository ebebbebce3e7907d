//! The default sampling a model folder's `generation_config.json` asks for: what its authors tuned
//! the model to be sampled with, used for every setting the user leaves unset (CLI flags, server
//! request fields). Its stop tokens are the tokenizer's business (`tokenizer::hf`).

use super::safetensors::read_json;
use crate::engine::SamplingParams;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

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
    let number = |key: &str, ok: fn(f64) -> bool, want: &str| -> Result<Option<f32>> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().filter(|&x| ok(x)).map(|x| Some(x as f32)).ok_or_else(|| bad(key, want)),
        }
    };
    let mut params = defaults;
    if let Some(t) = number("temperature", |x| x >= 0.0 && x.is_finite(), "0 or more")? {
        params.temperature = t;
    }
    if let Some(k) = number("top_k", |x| x >= 0.0 && x.fract() == 0.0, "a whole number, 0 or more")? {
        params.top_k = k as usize;
    }
    if let Some(p) = number("top_p", |x| x > 0.0 && x <= 1.0, "more than 0 and at most 1")? {
        params.top_p = p;
    }
    if let Some(p) = number("min_p", |x| (0.0..=1.0).contains(&x), "between 0 and 1")? {
        params.min_p = p;
    }
    if let Some(r) = number("repetition_penalty", |x| x > 0.0 && x.is_finite(), "more than 0")? {
        params.repeat_penalty = r;
    }
    match json.get("do_sample") {
        Some(Value::Bool(false)) => params.temperature = 0.0,
        None | Some(Value::Null | Value::Bool(true)) => {}
        Some(_) => return Err(bad("do_sample", "true or false")),
    }
    Ok(params)
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
