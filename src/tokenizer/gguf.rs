//! Builds a `tokenizers::Tokenizer` from a GGUF file's `tokenizer.ggml.*` metadata: the `gpt2`
//! byte-level BPE kind (Llama 3, Qwen, SmolLM2), with the pre-tokenizer llama.cpp uses for each
//! `tokenizer.ggml.pre`, and the `llama` SentencePiece kind (Llama 2, Mistral, Gemma), whose merges are
//! derived from the token scores the same way Hugging Face converts SentencePiece models.

use crate::error::{Error, Result};
use crate::model::load::gguf::GgufFile;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_UNKNOWN: usize = 2;
const TYPE_CONTROL: usize = 3;
const TYPE_USER_DEFINED: usize = 4;
const TYPE_BYTE: usize = 6;

/// Llama 3's pre-tokenizer split, as in its `tokenizer.json`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer and the ids of the tokens that must never be split or shown.
pub fn build(file: &GgufFile) -> Result<tokenizers::Tokenizer> {
    let kind = file.string("tokenizer.ggml.model")?.to_string();
    let tokens = file
        .opt_strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::Tokenizer("the file has no tokenizer.ggml.tokens".into()))?;
    let types = file.opt_usizes("tokenizer.ggml.token_type")?.unwrap_or_default();
    let mut tokenizer = match kind.as_str() {
        "gpt2" => byte_level_bpe(file, &tokens)?,
        "llama" => sentencepiece_bpe(file, &tokens, &types)?,
        other => {
            return Err(Error::Tokenizer(format!("unsupported tokenizer kind '{other}' (bodega reads gpt2 and llama)")))
        }
    };
    let added: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter_map(|(id, text)| match types.get(id).copied() {
            Some(TYPE_UNKNOWN | TYPE_CONTROL) => Some(AddedToken::from(text.clone(), true)),
            Some(TYPE_USER_DEFINED) => Some(AddedToken::from(text.clone(), false).normalized(false)),
            _ => None,
        })
        .collect();
    let (special, user): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
    let to_err = |e: tokenizers::Error| Error::Tokenizer(e.to_string());
    tokenizer.add_special_tokens(special).map_err(to_err)?;
    tokenizer.add_tokens(user).map_err(to_err)?;
    Ok(tokenizer)
}

fn byte_level_bpe(file: &GgufFile, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    let merges = file
        .opt_strings("tokenizer.ggml.merges")?
        .ok_or_else(|| Error::Tokenizer("a gpt2 tokenizer needs tokenizer.ggml.merges".into()))?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("malformed merge '{m}'")))
        })
        .collect::<Result<Vec<_>>>()?;
    let pre = file.string("tokenizer.ggml.pre").unwrap_or("default").to_string();
    let (split, normalizer, ignore_merges) = match pre.as_str() {
        "llama3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "pixtral" => (Some(LLAMA3_SPLIT), None, true),
        "qwen2" | "deepseek-r1-qwen" => (Some(QWEN2_SPLIT), Some(NormalizerWrapper::from(NFC)), false),
        "smollm" | "starcoder" | "refact" | "codeshell" | "gpt2" | "default" => (None, None, false),
        other => {
            tracing::warn!(
                "unknown pre-tokenizer '{other}': using GPT-2's; tokenization may differ from the model's own"
            );
            (None, None, false)
        }
    };
    let digits = matches!(pre.as_str(), "smollm" | "starcoder" | "refact" | "codeshell");
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let mut pre_steps: Vec<PreTokenizerWrapper> = Vec::new();
    if digits {
        pre_steps.push(Digits::new(true).into());
    }
    if let Some(pattern) = split {
        let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        pre_steps.push(split.into());
        pre_steps.push(ByteLevel::new(false, false, false).into());
    } else {
        pre_steps.push(ByteLevel::new(false, true, true).into());
    }
    tokenizer.with_pre_tokenizer(Some(PreSequence::new(pre_steps)));
    if let Some(n) = normalizer {
        tokenizer.with_normalizer(Some(n)).map_err(|e| Error::Tokenizer(e.to_string()))?;
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

fn sentencepiece_bpe(file: &GgufFile, tokens: &[String], types: &[usize]) -> Result<tokenizers::Tokenizer> {
    let scores = file.opt_f32s("tokenizer.ggml.scores")?.unwrap_or_else(|| vec![0.0; tokens.len()]);
    if scores.len() != tokens.len() {
        return Err(Error::Tokenizer("tokenizer.ggml.scores and tokens differ in length".into()));
    }
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    // A merge (a, b) exists for every normal token that splits into two tokens; merges of tokens with
    // higher scores apply first, as SentencePiece's BPE does.
    let mut merges: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if matches!(types.get(id).copied(), Some(TYPE_CONTROL | TYPE_BYTE | TYPE_UNKNOWN)) {
            continue;
        }
        for (split, _) in token.char_indices().skip(1) {
            let (a, b) = token.split_at(split);
            if vocab.contains_key(a) && vocab.contains_key(b) {
                merges.push((scores[id], id as u32, a.to_string(), b.to_string()));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges = merges.into_iter().map(|(_, _, a, b)| (a, b)).collect();
    let unk = file
        .opt_usize("tokenizer.ggml.unknown_token_id")?
        .and_then(|id| tokens.get(id).cloned())
        .unwrap_or_else(|| "<unk>".to_string());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .byte_fallback(true)
        .fuse_unk(true)
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let space_prefix = file.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        normalizers.push(Prepend::new("▁".into()).into());
    }
    normalizers.push(Replace::new(" ", "▁").map_err(|e| Error::Tokenizer(e.to_string()))?.into());
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        tokenizers::decoders::DecoderWrapper::Replace(
            Replace::new("▁", " ").map_err(|e| Error::Tokenizer(e.to_string()))?,
        ),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}
