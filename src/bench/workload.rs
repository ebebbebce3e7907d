//! The prompts a benchmark sends: random-token prompts of a given length (optionally behind a shared
//! prefix, like a long system prompt), or the lines of a JSONL dataset. Every prompt carries both its
//! text (what an HTTP target gets) and its token ids (what the in-process engine gets), made so that
//! the two agree: random ids are decoded and re-encoded until the text tokenizes to the wanted length.

use super::plan::WorkloadSpec;
use crate::error::{Error, Result};
use crate::tokenizer::{Message, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

/// What a request sends: a raw prompt (the completions API) or a conversation (the chat API).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptBody {
    Text(String),
    Chat(Vec<Message>),
}

/// One prompt, ready for any target.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub body: PromptBody,
    /// The ids the in-process engine is given (chat template applied, BOS as the model asks).
    pub ids: Vec<u32>,
    /// Tokens to generate.
    pub output_len: usize,
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
}

/// Rounds of decode → re-encode before a random prompt's length is accepted as it is.
const STABILISE_ROUNDS: usize = 8;

/// Builds `n` prompts of a workload. The same seed gives the same prompts, so two targets compared
/// with `--vs` get identical work.
pub fn build(spec: &WorkloadSpec, n: usize, tokenizer: &Tokenizer, seed: u64) -> Result<Vec<Prompt>> {
    match &spec.dataset {
        Some(path) => from_dataset(path, n, spec, tokenizer),
        None => random(spec, n, tokenizer, seed),
    }
}

fn random(spec: &WorkloadSpec, n: usize, tokenizer: &Tokenizer, seed: u64) -> Result<Vec<Prompt>> {
    let vocab = tokenizer.ordinary_ids();
    if vocab.is_empty() {
        return Err(Error::Bench("the tokenizer has no ordinary tokens to make random prompts from".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let prefix = match spec.prefix_len {
        0 => String::new(),
        len => random_text(tokenizer, &vocab, len, &mut rng)? + "\n\n",
    };
    (0..n)
        .map(|_| {
            let input_len = vary(spec.input_len, spec.range_ratio, &mut rng);
            let output_len = vary(spec.output_len, spec.range_ratio, &mut rng);
            let text = prefix.clone() + &random_text(tokenizer, &vocab, input_len, &mut rng)?;
            let ids = tokenizer.encode_raw(&text)?;
            Ok(Prompt { body: PromptBody::Text(text), ids, output_len, temperature: spec.temperature })
        })
        .collect()
}

/// A length drawn uniformly from `len × [1 − ratio, 1 + ratio]`, at least 1.
fn vary(len: usize, ratio: f64, rng: &mut ChaCha8Rng) -> usize {
    if ratio == 0.0 {
        return len;
    }
    let lo = ((len as f64) * (1.0 - ratio)).round().max(1.0) as usize;
    let hi = ((len as f64) * (1.0 + ratio)).round().max(lo as f64) as usize;
    rng.random_range(lo..=hi)
}

/// Text of random ordinary tokens that tokenizes back to `len` tokens (or as close as a few rounds
/// of decode → re-encode get: merges at token borders make the first text drift).
fn random_text(tokenizer: &Tokenizer, vocab: &[u32], len: usize, rng: &mut ChaCha8Rng) -> Result<String> {
    let mut draw = |n: usize| -> Vec<u32> { (0..n).map(|_| vocab[rng.random_range(0..vocab.len())]).collect() };
    let mut ids = draw(len);
    for _ in 0..STABILISE_ROUNDS {
        let text = tokenizer.decode(&ids)?;
        let again = tokenizer.encode_plain(&text)?;
        if again.len() == len {
            return Ok(text);
        }
        ids = again;
        ids.truncate(len);
        let missing = len - ids.len();
        ids.extend(draw(missing));
    }
    tokenizer.decode(&ids)
}

/// One line of a dataset file.
#[derive(Debug, Deserialize)]
struct DatasetLine {
    prompt: Option<String>,
    messages: Option<Vec<DatasetMessage>>,
    /// Tokens to generate for this prompt (else `--output-len`).
    #[serde(alias = "max_tokens")]
    output_len: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct DatasetMessage {
    role: String,
    content: String,
}

/// Reads up to `n` prompts from a JSONL file: `{"prompt": "..."}` or `{"messages": [{"role",
/// "content"}, ...]}` per line, each optionally with `output_len` (or `max_tokens`; else the spec's).
fn from_dataset(path: &std::path::Path, n: usize, spec: &WorkloadSpec, tokenizer: &Tokenizer) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Bench(format!("cannot read dataset {}: {e}", path.display())))?;
    let mut prompts = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if prompts.len() == n {
            break;
        }
        let at = || format!("dataset {} line {}", path.display(), number + 1);
        let parsed: DatasetLine = serde_json::from_str(line).map_err(|e| Error::Bench(format!("{}: {e}", at())))?;
        let output_len = parsed.output_len.unwrap_or(spec.output_len);
        if output_len == 0 {
            return Err(Error::Bench(format!("{}: output_len must be at least 1", at())));
        }
        let (body, ids) = match (parsed.prompt, parsed.messages) {
            (Some(text), None) => {
                let ids = tokenizer.encode_raw(&text)?;
                (PromptBody::Text(text), ids)
            }
            (None, Some(messages)) if !messages.is_empty() => {
                let messages: Vec<Message> = messages.into_iter().map(|m| Message::new(m.role, m.content)).collect();
                let (_, ids) = tokenizer.encode_chat(&messages)?;
                (PromptBody::Chat(messages), ids)
            }
            _ => {
                return Err(Error::Bench(format!(
                    "{}: give either \"prompt\" (a string) or \"messages\" (a non-empty list)",
                    at()
                )))
            }
        };
        prompts.push(Prompt { body, ids, output_len, temperature: spec.temperature });
    }
    if prompts.is_empty() {
        return Err(Error::Bench(format!("dataset {} has no prompts", path.display())));
    }
    if prompts.len() < n {
        tracing::warn!("dataset {} has {} prompts; running those instead of {n}", path.display(), prompts.len());
    }
    Ok(prompts)
}

/// The three requests of one single-stream measurement at a context depth (llama-bench's `-d`).
pub struct DepthPrompts {
    /// Puts the depth's tokens in the prefix cache (None at depth 0).
    pub warm: Option<Prompt>,
    /// The depth's tokens then the spec's `input_len` new ones, one token generated: its TTFT is the
    /// prefill time.
    pub prefill: Prompt,
    /// The depth's tokens then one new one, the spec's `output_len` tokens generated: decode at that
    /// depth.
    pub decode: Prompt,
}

/// Builds the prompts for one measurement at `depth`, sampled at the spec's temperature. The depth's
/// text comes from `depth_seed` (the same for every repetition, so it stays cached); the new tokens
/// from `seed` (fresh each time).
pub fn depth_prompts(
    tokenizer: &Tokenizer,
    depth: usize,
    spec: &WorkloadSpec,
    depth_seed: u64,
    seed: u64,
) -> Result<DepthPrompts> {
    let vocab = tokenizer.ordinary_ids();
    let context = match depth {
        0 => String::new(),
        n => random_text(tokenizer, &vocab, n, &mut ChaCha8Rng::seed_from_u64(depth_seed))?,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let prompt = |text: String, output_len: usize| -> Result<Prompt> {
        let ids = tokenizer.encode_raw(&text)?;
        Ok(Prompt { body: PromptBody::Text(text), ids, output_len, temperature: spec.temperature })
    };
    Ok(DepthPrompts {
        warm: (depth > 0).then(|| prompt(context.clone(), 1)).transpose()?,
        prefill: prompt(context.clone() + &random_text(tokenizer, &vocab, spec.input_len, &mut rng)?, 1)?,
        decode: prompt(context + &random_text(tokenizer, &vocab, 1, &mut rng)?, spec.output_len)?,
    })
}
