//! What `run` and `chat` share: the sampling flags, streaming a reply from the engine, the `--json`
//! reply object, the `--verbose` stats line, and reading a prompt from piped stdin.

use super::output::Stdout;
use super::{interrupt_flag, Interrupted, UsageError};
use crate::engine::{Completion, Engine, Event, FinishReason, Request, RequestHandle, SamplingParams, StopConditions};
use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

/// Sampling and stopping flags.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Stop after N generated tokens (default: until end of turn or the context end). Example: --max-tokens 128
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy, the same reply every time (default: the model's
    /// generation_config.json, else 0.8). Example: --temperature 0
    #[arg(long, value_name = "T")]
    temperature: Option<f32>,
    /// Sample among the K most likely tokens only (0 = off; default: the model's, else 40). Example: --top-k 40
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability adds up to P (1 = off; default: the
    /// model's, else 0.95). Example: --top-p 0.9
    #[arg(long, value_name = "P")]
    top_p: Option<f32>,
    /// Drop tokens less likely than P × the likeliest one's probability (0 = off; default: the
    /// model's, else 0). Example: --min-p 0.05
    #[arg(long, value_name = "P")]
    min_p: Option<f32>,
    /// Penalise tokens seen in the last 64 (1 = off; default: the model's, else 1). Example: --repeat-penalty 1.1
    #[arg(long, value_name = "X")]
    repeat_penalty: Option<f32>,
    /// Subtract X from the logits of tokens already in the reply (OpenAI's presence penalty).
    /// Example: --presence-penalty 0.5
    #[arg(long, default_value_t = 0.0, value_name = "X", allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Subtract X per earlier occurrence in the reply (OpenAI's frequency penalty).
    /// Example: --frequency-penalty 0.3
    #[arg(long, default_value_t = 0.0, value_name = "X", allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Seed for sampling: the same seed gives the same reply (default: random). Example: --seed 42
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// End the reply before this text (repeatable). Example: --stop "\n\n"
    #[arg(long, value_name = "STRING")]
    stop: Vec<String>,
}

impl SamplingArgs {
    /// Checks the flags given, before the model loads.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(t) = self.temperature.filter(|t| !(*t >= 0.0 && t.is_finite())) {
            return Err(UsageError(format!("--temperature must be 0 or more, not {t}")).into());
        }
        if [self.top_p, self.min_p].iter().flatten().any(|p| !(0.0..=1.0).contains(p)) {
            return Err(UsageError("--top-p and --min-p must be between 0 and 1".into()).into());
        }
        if ![self.presence_penalty, self.frequency_penalty].iter().all(|p| (-2.0..=2.0).contains(p)) {
            return Err(UsageError("--presence-penalty and --frequency-penalty must be between -2 and 2".into()).into());
        }
        if self.repeat_penalty.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err(UsageError("--repeat-penalty must be more than 0".into()).into());
        }
        Ok(())
    }

    /// The sampling parameters: each flag given (checked by [`check`](Self::check)), else the
    /// model's default.
    pub fn params(&self, model_defaults: &SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.unwrap_or(model_defaults.temperature),
            top_k: self.top_k.unwrap_or(model_defaults.top_k),
            top_p: self.top_p.unwrap_or(model_defaults.top_p),
            min_p: self.min_p.unwrap_or(model_defaults.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(model_defaults.repeat_penalty),
            repeat_last_n: 64,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logprobs: None,
            seed: self.seed.unwrap_or_else(rand::random),
        }
    }

    /// When to stop a reply.
    pub fn stop_conditions(&self, ignore_eos: bool) -> StopConditions {
        StopConditions { max_tokens: self.max_tokens, stop_strings: self.stop.clone(), ignore_eos }
    }
}

/// The `--json` object (conventions.md keys); `index` only with `--each-line`.
#[derive(Debug, Serialize)]
pub struct JsonReply<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    text: &'a str,
    prompt_ids: &'a [u32],
    generated_ids: &'a [u32],
    finish_reason: FinishReason,
    usage: crate::engine::Usage,
    timings: crate::engine::Timings,
    /// Guesses proposed and accepted, when speculation is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    speculative: Option<crate::engine::speculative::SpecCounts>,
}

impl<'a> JsonReply<'a> {
    pub fn new(index: Option<usize>, text: &'a str, prompt_ids: &'a [u32], c: &'a Completion) -> Self {
        Self {
            index,
            text,
            prompt_ids,
            generated_ids: &c.generated_ids,
            finish_reason: c.finish_reason,
            usage: c.usage,
            timings: c.timings,
            speculative: c.speculative,
        }
    }
}

/// The `--verbose` stats line.
pub fn print_stats(completion: &Completion) {
    let (u, t) = (completion.usage, completion.timings);
    let reason = serde_json::to_value(completion.finish_reason).ok();
    eprintln!(
        "prompt: {} tokens ({} cached), {:.1} tok/s | TTFT {:.0} ms | generated: {} tokens, {:.1} tok/s | {}",
        u.prompt_tokens,
        u.cached_tokens,
        t.prefill_tok_s,
        t.ttft_ms,
        u.completion_tokens,
        t.decode_tok_s,
        reason.as_ref().and_then(|r| r.as_str()).unwrap_or_default()
    );
    if let Some(spec) = completion.speculative {
        eprintln!(
            "speculative: {} guesses proposed, {} accepted ({:.0}%)",
            spec.proposed,
            spec.accepted,
            100.0 * spec.accepted as f64 / spec.proposed.max(1) as f64
        );
    }
}

/// A prompt piped on stdin (a terminal there is a usage error saying `missing`).
pub fn read_stdin_prompt(missing: &str) -> anyhow::Result<String> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(UsageError(missing.into()).into());
    }
    let mut bytes = Vec::new();
    stdin.read_to_end(&mut bytes).context("reading stdin")?;
    match String::from_utf8(bytes) {
        Ok(text) if text.trim().is_empty() => bail!("the prompt on stdin is empty"),
        Ok(text) => Ok(text.strip_suffix('\n').unwrap_or(&text).to_string()),
        Err(e) => bail!("stdin is not valid UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to()),
    }
}

/// Feeds the reply's text to `on_text` until `Done`; cancels when interrupted or when `on_text`
/// says the reader is gone.
pub fn stream(
    handle: &RequestHandle,
    interrupted: &AtomicBool,
    mut on_text: impl FnMut(&str) -> std::io::Result<bool>,
) -> anyhow::Result<Completion> {
    loop {
        if interrupted.load(Ordering::Relaxed) {
            handle.cancel();
        }
        match handle.recv_timeout(Duration::from_millis(50)) {
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => bail!(crate::Error::EngineStopped),
            Ok(Event::Token { text, .. }) => {
                if !on_text(&text)? {
                    handle.cancel();
                }
            }
            Ok(Event::Done(completion)) => return Ok(completion),
            Ok(Event::Error(message)) => bail!(message),
        }
    }
}

/// Submits one request and prints its reply as `run` does: streamed to stdout (or one `--json`
/// object), the `--verbose` stats line, and [`Interrupted`] when Ctrl-C cut it short.
pub fn reply_once(engine: &Engine, request: Request, json: bool, verbose: bool) -> anyhow::Result<()> {
    let prompt_ids = request.prompt_ids.clone();
    let interrupted = interrupt_flag();
    let handle = engine.submit(request)?;
    let mut stdout = Stdout::new();
    let mut text = String::new();
    let completion = stream(&handle, &interrupted, |piece| {
        text.push_str(piece);
        if json {
            Ok(true)
        } else {
            stdout.write(piece)
        }
    })?;
    if json {
        stdout.write(&(serde_json::to_string(&JsonReply::new(None, &text, &prompt_ids, &completion))? + "\n"))?;
    } else {
        stdout.finish_line()?;
    }
    if verbose {
        print_stats(&completion);
    }
    if completion.finish_reason == FinishReason::Cancelled && interrupted.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    Ok(())
}
