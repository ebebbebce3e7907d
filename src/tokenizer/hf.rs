//! The tokenizer files of a Hugging Face model folder: `tokenizer.json` as it is, the special tokens and
//! chat template of `tokenizer_config.json` (or `chat_template.jinja`), and the stop tokens of
//! `generation_config.json` and `config.json`.

use super::Specials;
use crate::error::{Error, Result};
use crate::model::load::safetensors::read_json;
use serde_json::Value;
use std::path::Path;

/// The tokenizer, its special tokens and the chat template, if the folder has one.
pub(super) fn read(dir: &Path) -> Result<(tokenizers::Tokenizer, Specials, Option<String>)> {
    let file = dir.join("tokenizer.json");
    if !file.is_file() {
        return Err(Error::Tokenizer(format!("{} has no tokenizer.json", dir.display())));
    }
    let inner =
        tokenizers::Tokenizer::from_file(&file).map_err(|e| Error::Tokenizer(format!("{}: {e}", file.display())))?;
    let optional = |name: &str| -> Result<Value> {
        let path = dir.join(name);
        if path.is_file() {
            read_json(&path)
        } else {
            Ok(Value::Null)
        }
    };
    let config = optional("tokenizer_config.json")?;
    let generation = optional("generation_config.json")?;
    let model = optional("config.json")?;
    let token = |key: &str| -> Option<u32> {
        let v = config.get(key)?;
        inner.token_to_id(v.as_str().or_else(|| v.get("content")?.as_str())?)
    };
    let bos = token("bos_token").or_else(|| first_id(&generation, "bos_token_id"));
    let eos = token("eos_token").or_else(|| first_id(&generation, "eos_token_id"));
    let mut stop_ids: Vec<u32> = eos.into_iter().collect();
    for source in [&generation, &model] {
        stop_ids.extend(
            ids(source.get("eos_token_id")).into_iter().filter(|id| !stop_ids.contains(id)).collect::<Vec<_>>(),
        );
    }
    // Without `add_bos_token`, BOS is added when tokenizer.json's post-processor adds it.
    let adds_bos = || {
        let with = inner.encode("a", true).ok();
        with.is_some_and(|e| bos.is_some() && e.get_ids().first() == bos.as_ref())
    };
    let add_bos = config.get("add_bos_token").and_then(Value::as_bool).unwrap_or_else(adds_bos);
    let add_eos = config.get("add_eos_token").and_then(Value::as_bool).unwrap_or(false);
    let template = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
        Ok(text) => Some(text),
        Err(_) => template_of(&config),
    };
    Ok((inner, Specials { bos, eos, add_bos, add_eos, stop_ids }, template))
}

/// `chat_template` as a string, or the `default` one of a list of named templates.
fn template_of(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// A token id field that is one id or a list of them.
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        Some(v) => v.as_u64().map(|x| x as u32).into_iter().collect(),
        None => Vec::new(),
    }
}

fn first_id(json: &Value, key: &str) -> Option<u32> {
    ids(json.get(key)).first().copied()
}
