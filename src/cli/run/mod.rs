//! `bodega run`: one prompt in, one streamed reply out — made for shell scripts.

mod each_line;

use super::load::{load, EngineArgs, Loaded};
use super::output::Stdout;
use super::{interrupt_flag, GlobalArgs, Interrupted, UsageError};
use crate::engine::{Completion, Event, FinishReason, Request, RequestHandle, SamplingParams, StopConditions};
use crate::tokenizer::Message;
use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

pub(super) const EXAMPLES: &str = "\
Examples:
  bodega run smollm2-135m \"Name three fruits\"
  echo \"Summarise: $(cat notes.txt)\" | bodega run smollm2-135m --max-tokens 200
  bodega run smollm2-135m --temperature 0 --json \"2+2=\" | jq .text
  bodega run model.gguf --raw \"def fib(n):\" --stop \"\\n\\n\"";

/// Flags of `bodega run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The model: a path to a .gguf file, or a demo alias (smollm2-135m, gemma3-270m).
    /// Example: smollm2-135m
    model: String,
    /// The prompt. Without it, the prompt is read from stdin (when stdin is not a terminal).
    /// Example: "Write a haiku about bread"
    prompt: Option<String>,
    /// A system message to put before the prompt (chat models). Example: --system "Answer in French."
    #[arg(long, value_name = "TEXT", conflicts_with = "raw")]
    system: Option<String>,
    /// Send the prompt as is, without the chat template. Example: --raw
    #[arg(long)]
    raw: bool,
    /// Stop after N generated tokens (default: until end of turn or the context end). Example: --max-tokens 128
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy, the same reply every time. Example: --temperature 0
    #[arg(long, default_value_t = 0.8, value_name = "T")]
    temperature: f32,
    /// Sample among the K most likely tokens only (0 = off). Example: --top-k 40
    #[arg(long, default_value_t = 40, value_name = "K")]
    top_k: usize,
    /// Sample from the smallest set of tokens whose probability adds up to P (1 = off). Example: --top-p 0.9
    #[arg(long, default_value_t = 0.95, value_name = "P")]
    top_p: f32,
    /// Drop tokens less likely than P × the likeliest one's probability (0 = off). Example: --min-p 0.05
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    min_p: f32,
    /// Penalise tokens seen in the last 64 (1 = off). Example: --repeat-penalty 1.1
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    repeat_penalty: f32,
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
    /// Keep generating past end-of-turn tokens, up to --max-tokens (for benchmarks). Example: --ignore-eos
    #[arg(long, requires = "max_tokens")]
    ignore_eos: bool,
    /// Print one JSON object (text, token ids, finish_reason, usage, timings) instead of streaming.
    /// Example: --json
    #[arg(long)]
    json: bool,
    /// Treat every line of stdin as its own prompt; all are submitted at once (see --concurrency) and
    /// the replies printed in input order, each followed by an empty line (or as JSON lines with
    /// --json). Example: cat prompts.txt | bodega run smollm2-135m --each-line
    #[arg(long, conflicts_with = "prompt")]
    each_line: bool,
    /// With --each-line: at most N prompts in flight at once (default: all). Example: --concurrency 8
    #[arg(long, value_name = "N", requires = "each_line", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    #[command(flatten)]
    engine: EngineArgs,
}

impl RunArgs {
    fn sampling(&self) -> anyhow::Result<SamplingParams> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(UsageError(format!("--temperature must be 0 or more, not {}", self.temperature)).into());
        }
        if !(0.0..=1.0).contains(&self.top_p) || !(0.0..=1.0).contains(&self.min_p) {
            return Err(UsageError("--top-p and --min-p must be between 0 and 1".into()).into());
        }
        if ![self.presence_penalty, self.frequency_penalty].iter().all(|p| (-2.0..=2.0).contains(p)) {
            return Err(UsageError("--presence-penalty and --frequency-penalty must be between -2 and 2".into()).into());
        }
        if self.repeat_penalty.is_nan() || self.repeat_penalty <= 0.0 {
            return Err(UsageError("--repeat-penalty must be more than 0".into()).into());
        }
        Ok(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logprobs: None,
            seed: self.seed.unwrap_or_else(rand::random),
        })
    }
}

/// The `--json` object (conventions.md keys); `index` only with `--each-line`.
#[derive(Debug, Serialize)]
struct JsonReply<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    text: &'a str,
    prompt_ids: &'a [u32],
    generated_ids: &'a [u32],
    finish_reason: FinishReason,
    usage: crate::engine::Usage,
    timings: crate::engine::Timings,
}

impl<'a> JsonReply<'a> {
    fn new(index: Option<usize>, text: &'a str, prompt_ids: &'a [u32], c: &'a Completion) -> Self {
        Self {
            index,
            text,
            prompt_ids,
            generated_ids: &c.generated_ids,
            finish_reason: c.finish_reason,
            usage: c.usage,
            timings: c.timings,
        }
    }
}

/// Runs `bodega run`.
pub fn run(args: RunArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let sampling = args.sampling()?;
    if args.each_line {
        let lines = read_lines()?;
        let loaded = load(&args.model, &args.engine, global)?;
        return each_line::run_lines(&args, &loaded, &sampling, lines);
    }
    let prompt = read_prompt(args.prompt.as_deref())?;
    let loaded = load(&args.model, &args.engine, global)?;
    let prompt_ids = args.encode(&loaded, &prompt)?;
    let interrupted = interrupt_flag();
    let handle = loaded.engine.submit(args.request(prompt_ids.clone(), &sampling))?;
    let mut stdout = Stdout::new();
    let mut text = String::new();
    let completion = stream(&handle, &interrupted, |piece| {
        text.push_str(piece);
        if args.json {
            Ok(true)
        } else {
            stdout.write(piece)
        }
    })?;
    if args.json {
        stdout.write(&(serde_json::to_string(&JsonReply::new(None, &text, &prompt_ids, &completion))? + "\n"))?;
    } else {
        stdout.finish_line()?;
    }
    if global.verbose {
        print_stats(&completion);
    }
    if completion.finish_reason == FinishReason::Cancelled && interrupted.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    Ok(())
}

impl RunArgs {
    /// The prompt's token ids: the chat template applied, unless `--raw`.
    fn encode(&self, loaded: &Loaded, prompt: &str) -> crate::Result<Vec<u32>> {
        if self.raw {
            return loaded.tokenizer.encode_raw(prompt);
        }
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::new("system", system.as_str()));
        }
        messages.push(Message::new("user", prompt));
        Ok(loaded.tokenizer.encode_chat(&messages)?.1)
    }

    fn request(&self, prompt_ids: Vec<u32>, sampling: &SamplingParams) -> Request {
        Request {
            prompt_ids,
            sampling: sampling.clone(),
            stop: StopConditions {
                max_tokens: self.max_tokens,
                stop_strings: self.stop.clone(),
                ignore_eos: self.ignore_eos,
            },
        }
    }
}

/// The `--verbose` stats line.
fn print_stats(completion: &Completion) {
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
}

/// Stdin's lines for `--each-line`: each line is valid UTF-8 or carries its own error.
fn read_lines() -> anyhow::Result<Vec<std::result::Result<String, String>>> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(UsageError("--each-line reads prompts from stdin: pipe them in".into()).into());
    }
    let mut bytes = Vec::new();
    stdin.read_to_end(&mut bytes).context("reading stdin")?;
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    Ok(lines
        .into_iter()
        .map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            String::from_utf8(l.to_vec())
                .map_err(|e| format!("not valid UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to()))
        })
        .collect())
}

/// The prompt from the argument, else from piped stdin.
fn read_prompt(arg: Option<&str>) -> anyhow::Result<String> {
    if let Some(p) = arg {
        return Ok(p.to_string());
    }
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(UsageError("no prompt: give one as an argument or pipe it on stdin".into()).into());
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
fn stream(
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
