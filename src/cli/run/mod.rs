//! `bodega run`: one prompt in, one streamed reply out — made for shell scripts.

mod each_line;

use super::generation::{print_stats, read_stdin_prompt, reply_once, JsonReply, SamplingArgs};
use super::load::{load, EngineArgs, Loaded};
use super::{GlobalArgs, UsageError};
use crate::engine::{Request, SamplingParams};
use crate::tokenizer::Message;
use anyhow::Context;
use clap::Args;
use std::io::{IsTerminal, Read};

pub(super) const EXAMPLES: &str = "\
Examples:
  bodega run smollm2-135m \"Name three fruits\"
  echo \"Summarise: $(cat notes.txt)\" | bodega run smollm2-135m --max-tokens 200
  bodega run smollm2-135m --temperature 0 --json \"2+2=\" | jq .text
  bodega run model.gguf --raw \"def fib(n):\" --stop \"\\n\\n\"";

/// Flags of `bodega run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The model: a .gguf file, a demo alias (smollm2-135m, gemma3-270m), or a Hub repository
    /// ORG/NAME[:QUANT] (pulled unless cached).
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
    #[command(flatten)]
    sampling: SamplingArgs,
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

/// Runs `bodega run`.
pub fn run(args: RunArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    args.sampling.check()?;
    if args.each_line {
        let lines = read_lines()?;
        let loaded = load(&args.model, &args.engine, global)?;
        let sampling = args.sampling.params(&loaded.sampling);
        return each_line::run_lines(&args, &loaded, &sampling, lines);
    }
    let prompt = read_prompt(args.prompt.as_deref())?;
    let loaded = load(&args.model, &args.engine, global)?;
    let sampling = args.sampling.params(&loaded.sampling);
    let prompt_ids = args.encode(&loaded, &prompt)?;
    reply_once(&loaded.engine, args.request(prompt_ids, &sampling), args.json, global.verbose)
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
        Request { prompt_ids, sampling: sampling.clone(), stop: self.sampling.stop_conditions(self.ignore_eos) }
    }
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
    match arg {
        Some(p) => Ok(p.to_string()),
        None => read_stdin_prompt("no prompt: give one as an argument or pipe it on stdin"),
    }
}
