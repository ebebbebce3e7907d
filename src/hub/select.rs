//! Which files of a repository make the model the user asked for: the GGUF file (or every part of a
//! split one) whose name carries the quant tag, or the files of a safetensors model. The same rules
//! pick from the Hub's listing when pulling and from a snapshot folder when resolving offline.
//!
//! Without a quant tag the choice is: the only GGUF model of the repository; else `Q4_K_M` (the
//! usual size/quality trade-off); else the smallest 4-bit one (`Q4_*`, `IQ4_*`); else no default,
//! and the error lists the quants to choose from.

use super::error::HubError;
use super::listing::Listing;

/// The quant picked when none is named and the repository has several.
pub const DEFAULT_QUANT: &str = "Q4_K_M";

/// The small files of a safetensors model that are fetched when the repository has them.
pub const SAFETENSORS_EXTRAS: [&str; 5] =
    ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"];

/// The weights of a safetensors model in one file.
pub const SAFETENSORS_SINGLE: &str = "model.safetensors";

/// The index naming the shards of a sharded safetensors model.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// One GGUF model of a repository: a single file, or all parts of a split one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufModel {
    /// The quant tag in its file name, upper-case (`Q4_K_M`), if it has one.
    pub quant: Option<String>,
    /// Its files: one, or the parts `-00001-of-000NN` in order.
    pub files: Vec<String>,
    /// Total size, when known.
    pub bytes: u64,
}

impl GgufModel {
    /// What a user types after the colon to get this model, or its file name without a tag.
    pub fn label(&self) -> String {
        self.quant.clone().unwrap_or_else(|| self.files[0].clone())
    }
}

/// What to download for one pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A GGUF model (every part of a split file).
    Gguf(GgufModel),
    /// A safetensors model: the extras present, the weights file or the index; the shards the
    /// index names are added once it is downloaded.
    Safetensors(Vec<String>),
    /// Files named with `--file` (a split GGUF part brings its siblings).
    Files(Vec<String>),
}

/// Chooses what to fetch from `listing` for `quant` or `file`.
pub fn plan(repo: &str, listing: &Listing, quant: Option<&str>, file: Option<&str>) -> Result<Plan, HubError> {
    let ggufs = gguf_models(listing.files.iter().map(|f| (f.path.as_str(), f.size.unwrap_or(0))));
    if let Some(file) = file {
        if listing.get(file).is_none() {
            return Err(HubError::FileNotFound { repo: repo.to_string(), file: file.to_string() });
        }
        return Ok(match ggufs.into_iter().find(|m| m.files.iter().any(|f| f == file)) {
            Some(model) => Plan::Files(model.files),
            None => Plan::Files(vec![file.to_string()]),
        });
    }
    if !ggufs.is_empty() || quant.is_some() {
        return choose(repo, &ggufs, quant).cloned().map(Plan::Gguf);
    }
    let has = |name: &str| listing.get(name).is_some();
    let weights = [SAFETENSORS_SINGLE, SAFETENSORS_INDEX].into_iter().find(|w| has(w));
    match weights {
        Some(weights) if has("config.json") => Ok(Plan::Safetensors(
            SAFETENSORS_EXTRAS.iter().copied().filter(|f| has(f)).chain([weights]).map(str::to_string).collect(),
        )),
        _ => Err(HubError::NoWeights { repo: repo.to_string() }),
    }
}

/// The GGUF models among `files` (path, size): split parts grouped, vision projectors (`mmproj*`)
/// left out, and split models with a part missing left out.
pub fn gguf_models<'a>(files: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<GgufModel> {
    let mut models: Vec<(Option<(String, u32)>, GgufModel)> = Vec::new();
    for (path, size) in files {
        let file_name = path.rsplit('/').next().unwrap_or(path);
        if !path.ends_with(".gguf") || file_name.to_ascii_lowercase().starts_with("mmproj") {
            continue;
        }
        let split = split_part(path).map(|(prefix, _, total)| (prefix.to_string(), total));
        match models.iter_mut().find(|(key, _)| split.is_some() && *key == split) {
            Some((_, model)) => {
                model.files.push(path.to_string());
                model.bytes += size;
            }
            None => {
                models.push((split, GgufModel { quant: quant_tag(path), files: vec![path.to_string()], bytes: size }))
            }
        }
    }
    models
        .into_iter()
        .filter_map(|(split, mut model)| {
            model.files.sort();
            match split {
                Some((_, total)) if model.files.len() != total as usize => None,
                _ => Some(model),
            }
        })
        .collect()
}

/// Picks the model for `quant` (case-insensitive), or the default when there is none.
pub fn choose<'a>(repo: &str, models: &'a [GgufModel], quant: Option<&str>) -> Result<&'a GgufModel, HubError> {
    let tagged = |tag: &str| -> Vec<&'a GgufModel> {
        models.iter().filter(|m| m.quant.as_deref().is_some_and(|q| q.eq_ignore_ascii_case(tag))).collect()
    };
    let one = |hits: Vec<&'a GgufModel>| match hits.as_slice() {
        [one] => Ok(*one),
        _ => Err(HubError::AmbiguousQuant {
            repo: repo.to_string(),
            choices: hits.iter().map(|m| m.files[0].clone()).collect(),
        }),
    };
    if let Some(tag) = quant {
        let hits = tagged(tag);
        if hits.is_empty() {
            return Err(HubError::NoSuchQuant {
                repo: repo.to_string(),
                quant: tag.to_string(),
                available: labels(models),
            });
        }
        return one(hits);
    }
    match models {
        [] => return Err(HubError::NoWeights { repo: repo.to_string() }),
        [only] => return Ok(only),
        _ => {}
    }
    let default = tagged(DEFAULT_QUANT);
    if !default.is_empty() {
        return one(default);
    }
    let four_bit = |m: &&GgufModel| m.quant.as_deref().is_some_and(|q| q.starts_with("Q4") || q.starts_with("IQ4"));
    models
        .iter()
        .filter(four_bit)
        .min_by_key(|m| m.bytes)
        .ok_or_else(|| HubError::AmbiguousQuant { repo: repo.to_string(), choices: labels(models) })
}

/// The quants (or file names) of `models`, sorted, each once.
pub fn labels(models: &[GgufModel]) -> Vec<String> {
    let mut labels: Vec<String> = models.iter().map(GgufModel::label).collect();
    labels.sort();
    labels.dedup();
    labels
}

/// The quant tag in a GGUF path: the last `-`/`.`/`/`-separated word that looks like one (`Q4_K_M`,
/// `IQ4_XS`, `Q8_0`, `F16`, `BF16`), upper-case.
pub fn quant_tag(path: &str) -> Option<String> {
    let stem = path.strip_suffix(".gguf").unwrap_or(path);
    let stem = split_part(path).map_or(stem, |(prefix, _, _)| prefix);
    stem.rsplit(['-', '.', '/']).map(str::to_ascii_uppercase).find(|word| is_quant(word))
}

fn is_quant(word: &str) -> bool {
    if matches!(word, "F16" | "F32" | "BF16" | "FP16" | "FP32" | "MXFP4" | "MXFP4_MOE") {
        return true;
    }
    let rest = word.strip_prefix("IQ").or_else(|| word.strip_prefix("TQ")).or_else(|| word.strip_prefix('Q'));
    let Some(rest) = rest else { return false };
    let mut parts = rest.split('_');
    let bits = parts.next().unwrap_or("");
    !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `name-00001-of-00003.gguf` → (`name`, 1, 3).
pub fn split_part(path: &str) -> Option<(&str, u32, u32)> {
    let stem = path.strip_suffix(".gguf")?;
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (prefix, part) = rest.rsplit_once('-')?;
    let number = |s: &str| (s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u32>().ok())?;
    let (part, total) = (number(part)?, number(total)?);
    (part >= 1 && part <= total).then_some((prefix, part, total))
}

/// The shard files that a `model.safetensors.index.json` names, sorted, each once.
pub fn index_shards(index: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_slice(index).map_err(|e| format!("{SAFETENSORS_INDEX}: {e}"))?;
    let mut shards: Vec<String> = index.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(names: &[(&str, u64)]) -> Vec<GgufModel> {
        gguf_models(names.iter().copied())
    }

    #[test]
    fn quant_tags_are_read_from_file_names() {
        assert_eq!(quant_tag("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf").as_deref(), Some("Q4_K_M"));
        assert_eq!(quant_tag("qwen2.5-0.5b-instruct-q8_0.gguf").as_deref(), Some("Q8_0"));
        assert_eq!(quant_tag("SmolLM2-135M-Instruct.Q4_1.gguf").as_deref(), Some("Q4_1"));
        assert_eq!(quant_tag("Llama-3.2-1B-Instruct-UD-IQ4_XS.gguf").as_deref(), Some("IQ4_XS"));
        assert_eq!(quant_tag("model-bf16.gguf").as_deref(), Some("BF16"));
        assert_eq!(quant_tag("Q4_K_M/Big-Q4_K_M-00001-of-00002.gguf").as_deref(), Some("Q4_K_M"));
        assert_eq!(quant_tag("Qwen2-7B.gguf"), None);
    }

    #[test]
    fn split_parts_are_grouped_and_incomplete_sets_dropped() {
        let m = models(&[
            ("Big-Q8_0-00002-of-00002.gguf", 5),
            ("Big-Q8_0-00001-of-00002.gguf", 5),
            ("Big-Q4_K_M-00001-of-00002.gguf", 3),
            ("mmproj-F16.gguf", 1),
            ("Small-Q4_0.gguf", 2),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].files, ["Big-Q8_0-00001-of-00002.gguf", "Big-Q8_0-00002-of-00002.gguf"]);
        assert_eq!((m[0].quant.as_deref(), m[0].bytes), (Some("Q8_0"), 10));
        assert_eq!(m[1].quant.as_deref(), Some("Q4_0"));
    }

    #[test]
    fn tags_match_case_insensitively_and_misses_list_the_quants() {
        let m = models(&[("a-Q8_0.gguf", 8), ("a-Q4_K_M.gguf", 4), ("a-Q2_K.gguf", 2)]);
        assert_eq!(choose("r", &m, Some("q8_0")).unwrap().files, ["a-Q8_0.gguf"]);
        match choose("r", &m, Some("Q5_K_M")) {
            Err(HubError::NoSuchQuant { available, .. }) => assert_eq!(available, ["Q2_K", "Q4_K_M", "Q8_0"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_default_is_q4_k_m_then_the_smallest_four_bit_then_a_question() {
        let m = models(&[("a-Q8_0.gguf", 8), ("a-Q4_K_M.gguf", 4), ("a-Q4_0.gguf", 3)]);
        assert_eq!(choose("r", &m, None).unwrap().quant.as_deref(), Some("Q4_K_M"));
        let m = models(&[("a-Q8_0.gguf", 8), ("a-Q4_K_S.gguf", 4), ("a-IQ4_XS.gguf", 3)]);
        assert_eq!(choose("r", &m, None).unwrap().quant.as_deref(), Some("IQ4_XS"));
        let m = models(&[("a-Q8_0.gguf", 8), ("a-F16.gguf", 16)]);
        assert!(matches!(choose("r", &m, None), Err(HubError::AmbiguousQuant { .. })));
        let m = models(&[("a-F16.gguf", 16)]);
        assert_eq!(choose("r", &m, None).unwrap().quant.as_deref(), Some("F16"));
    }

    #[test]
    fn sharded_safetensors_indexes_name_each_shard_once() {
        let index = br#"{"metadata":{},"weight_map":{"a":"model-00002-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#;
        assert_eq!(
            index_shards(index).unwrap(),
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        );
    }
}
