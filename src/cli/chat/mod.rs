//! `bodega chat`: an interactive REPL at a terminal (rustyline: history, multi-line input, slash
//! commands with tab completion, Ctrl-C stops a reply), and a one-shot reply when stdin is piped.

mod conversation;
mod input;
mod thinking;

use super::generation::{print_stats, read_stdin_prompt, reply_once, stream, SamplingArgs};
use super::load::{load, EngineArgs, Loaded};
use super::{interrupt_flag, GlobalArgs, UsageError};
use crate::engine::{Completion, FinishReason, Request, SamplingParams, StopConditions};
use crate::tokenizer::Message;
use anyhow::{bail, Context as _};
use clap::Args;
use conversation::{Conversation, Overflow};
use input::{Command, Input, LineAssembler, Setting, COMMANDS};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Editor, Helper, Highlighter, Hinter, Validator};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use thinking::ThinkingView;

pub(super) const EXAMPLES: &str = "\
Examples:
  bodega chat smollm2-135m
  bodega chat smollm2-135m --system \"You are a terse assistant.\" --temperature 0.3
  echo \"What is a bodega?\" | bodega chat smollm2-135m
  printf '%s\\n' '{\"role\":\"user\",\"content\":\"Hi\"}' | bodega chat smollm2-135m --jsonl";

/// Flags of `bodega chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The model: a .gguf file, a demo alias (smollm2-135m, gemma3-270m), or a Hub repository
    /// ORG/NAME[:QUANT] (pulled unless cached).
    /// Example: smollm2-135m
    model: String,
    /// The system message to start with (/system changes it). Example: --system "Answer in French."
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// When the conversation outgrows the context: say so (error) or drop the oldest turns.
    /// Example: --context-overflow truncate
    #[arg(long, value_enum, default_value = "error", value_name = "WHAT")]
    context_overflow: Overflow,
    /// Do not read or write the input history file. Example: --no-history
    #[arg(long)]
    no_history: bool,
    /// Piped stdin: read JSON lines of {"role", "content"} (a conversation) instead of one message.
    /// Example: --jsonl
    #[arg(long)]
    jsonl: bool,
    /// Piped stdin: print one JSON object (as `run --json` does) instead of streaming.
    /// Example: --json
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `bodega chat`.
pub fn run(args: ChatArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    args.sampling.check()?;
    if std::io::stdin().is_terminal() {
        if args.jsonl || args.json {
            return Err(UsageError("--jsonl and --json are for piped input; at a terminal, just chat".into()).into());
        }
        let loaded = load(&args.model, &args.engine, global)?;
        let sampling = args.sampling.params(&loaded.sampling);
        Repl::new(&args, global, &loaded, sampling).run()
    } else {
        piped(&args, global)
    }
}

/// Stdin is not a terminal: one reply to what was piped in, with `run`'s output contract.
fn piped(args: &ChatArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let text = read_stdin_prompt("no input")?;
    let mut conversation = if args.jsonl {
        let mut messages = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let m: Message = serde_json::from_str(line)
                .with_context(|| format!("stdin line {}: expected {{\"role\": ..., \"content\": ...}}", i + 1))?;
            messages.push(m);
        }
        Conversation::from_messages(messages)?
    } else {
        Conversation { system: None, turns: vec![Message::new("user", text)] }
    };
    if conversation.system.is_none() {
        conversation.system = args.system.clone();
    }
    if conversation.turns.last().is_none_or(|m| m.role != "user") {
        bail!("the conversation on stdin must end with a user message");
    }
    let loaded = load(&args.model, &args.engine, global)?;
    let (prompt_ids, _) =
        conversation.fit(&loaded.tokenizer, loaded.engine.context_length(), 1, args.context_overflow)?;
    let request = Request {
        prompt_ids,
        sampling: args.sampling.params(&loaded.sampling),
        stop: args.sampling.stop_conditions(false),
    };
    reply_once(&loaded.engine, request, args.json, global.verbose)
}

/// Tab completion of slash commands and `/set` names.
#[derive(Helper, Hinter, Highlighter, Validator)]
struct ChatHelper;

impl Completer for ChatHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let typed = &line[..pos];
        let pair = |s: &str| Pair { display: s.to_string(), replacement: format!("{s} ") };
        if let Some(partial) = typed.strip_prefix("/set ") {
            let names = Setting::ALL.iter().map(|(_, n)| *n).filter(|n| n.starts_with(partial.trim_start()));
            return Ok((pos - partial.trim_start().len(), names.map(pair).collect()));
        }
        if typed.starts_with('/') && !typed.contains(char::is_whitespace) {
            let names = COMMANDS.iter().map(|(c, _)| *c).filter(|c| c.starts_with(typed));
            return Ok((0, names.map(pair).collect()));
        }
        Ok((pos, Vec::new()))
    }
}

/// The interactive session.
struct Repl<'a> {
    args: &'a ChatArgs,
    verbose: bool,
    loaded: &'a Loaded,
    conversation: Conversation,
    sampling: SamplingParams,
    max_tokens: Option<usize>,
    stop: StopConditions,
    last: Option<Completion>,
    interrupted: std::sync::Arc<AtomicBool>,
    history: Option<PathBuf>,
    /// Show a thinking model's reasoning dimmed (true) or collapsed to one line (`/think` toggles).
    show_thinking: bool,
}

impl<'a> Repl<'a> {
    fn new(args: &'a ChatArgs, global: &GlobalArgs, loaded: &'a Loaded, sampling: SamplingParams) -> Self {
        let stop = args.sampling.stop_conditions(false);
        Self {
            args,
            verbose: global.verbose,
            loaded,
            conversation: Conversation { system: args.system.clone(), turns: Vec::new() },
            sampling,
            max_tokens: stop.max_tokens,
            stop,
            last: None,
            interrupted: std::sync::Arc::new(AtomicBool::new(false)),
            history: (!args.no_history).then(|| crate::hub::bodega_home().join("chat_history")),
            show_thinking: true,
        }
    }

    fn run(mut self) -> anyhow::Result<()> {
        let mut editor: Editor<ChatHelper, FileHistory> = Editor::new().context("cannot start the line editor")?;
        editor.set_helper(Some(ChatHelper));
        // After the editor: rustyline installs a SIGINT handler of its own when it opens the terminal,
        // and ours must win so that Ctrl-C during a reply stops the reply (at the prompt the terminal
        // is in raw mode and Ctrl-C reaches rustyline as a key).
        self.interrupted = interrupt_flag();
        if let Some(path) = &self.history {
            let _ = editor.load_history(path); // none yet is fine
        }
        println!("bodega chat — {}. /help for commands, Ctrl-D to leave.", self.model_name());
        let mut assembler = LineAssembler::default();
        loop {
            let prompt = if assembler.in_progress() { "... " } else { ">>> " };
            let line = match editor.readline(prompt) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => {
                    assembler.reset();
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e).context("reading input"),
            };
            if !line.trim().is_empty() {
                let _ = editor.add_history_entry(line.as_str());
                self.save_history(&mut editor);
            }
            match assembler.push(&line) {
                Input::More | Input::Nothing => {}
                Input::Message(text) => self.turn(text)?,
                Input::Command(Err(message)) => eprintln!("{message}"),
                Input::Command(Ok(Command::Exit)) => break,
                Input::Command(Ok(command)) => self.command(command),
            }
        }
        Ok(())
    }

    fn save_history(&self, editor: &mut Editor<ChatHelper, FileHistory>) {
        if let Some(path) = &self.history {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = editor.save_history(path) {
                eprintln!("warning: cannot save the history to {}: {e}", path.display());
            }
        }
    }

    fn model_name(&self) -> String {
        let info = self.loaded.engine.model_info();
        info.name.clone().unwrap_or_else(|| self.loaded.path.display().to_string())
    }

    /// Sends the conversation with a new user message and streams the reply.
    fn turn(&mut self, text: String) -> anyhow::Result<()> {
        let before = self.conversation.clone();
        self.conversation.turns.push(Message::new("user", text));
        let room = self.max_tokens.unwrap_or(1);
        let context = self.loaded.engine.context_length();
        let prompt_ids = match self.conversation.fit(&self.loaded.tokenizer, context, room, self.args.context_overflow)
        {
            Ok((ids, 0)) => ids,
            Ok((ids, dropped)) => {
                eprintln!("(dropped the {dropped} oldest messages to fit the context of {context} tokens)");
                ids
            }
            Err(e) => {
                self.conversation = before;
                eprintln!("{e:#}");
                return Ok(());
            }
        };
        let stop = StopConditions { max_tokens: self.max_tokens, ..self.stop.clone() };
        let request = Request { prompt_ids, sampling: self.sampling.clone(), stop };
        let handle = match self.loaded.engine.submit(request) {
            Ok(handle) => handle,
            Err(e) => {
                self.conversation = before;
                eprintln!("error: {e}");
                return Ok(());
            }
        };
        self.interrupted.store(false, Ordering::Relaxed);
        let mut reply = String::new();
        let mut out = std::io::stdout();
        let mut view = ThinkingView::new(self.show_thinking);
        let completion = stream(&handle, &self.interrupted, |piece| {
            reply.push_str(piece);
            out.write_all(view.push(piece).as_bytes())?;
            out.flush()?;
            Ok(true)
        })?;
        out.write_all(view.finish().as_bytes())?;
        if completion.finish_reason == FinishReason::Cancelled {
            println!("\n[reply stopped]");
        } else {
            println!();
        }
        // A reply cut short stays in the conversation as far as it got.
        self.conversation.turns.push(Message::new("assistant", reply));
        if self.verbose {
            print_stats(&completion);
        }
        self.last = Some(completion);
        Ok(())
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Help => {
                for (name, what) in COMMANDS {
                    println!("  {name:<8} {what}");
                }
            }
            Command::System(text) if text.is_empty() => {
                println!("system: {}", self.conversation.system.as_deref().unwrap_or("(none)"));
            }
            Command::System(text) => {
                self.conversation.system = Some(text);
                println!("system message set");
            }
            Command::Clear => {
                self.conversation.turns.clear();
                self.last = None;
                println!("new conversation");
            }
            Command::Set(setting, value) => match self.set(setting, &value) {
                Ok(()) => println!("{} = {value}", setting.name()),
                Err(e) => eprintln!("{e}"),
            },
            Command::Show => self.show(),
            Command::Stats => self.stats(),
            Command::Save(file) => match self.conversation.save(Path::new(&file)) {
                Ok(()) => println!("saved {} messages to {file}", self.conversation.messages().len()),
                Err(e) => eprintln!("error: {e:#}"),
            },
            Command::Load(file) => match Conversation::load(Path::new(&file)) {
                Ok(c) => {
                    self.conversation = c;
                    println!("loaded {} messages from {file}", self.conversation.messages().len());
                }
                Err(e) => eprintln!("error: {e:#}"),
            },
            Command::Think => {
                self.show_thinking = !self.show_thinking;
                let how = if self.show_thinking { "shown dimmed" } else { "collapsed" };
                eprintln!("reasoning of thinking models is now {how}");
            }
            Command::Exit => {}
        }
    }

    fn set(&mut self, setting: Setting, value: &str) -> Result<(), String> {
        let bad = |what: &str| format!("{}: '{value}' is not {what}", setting.name());
        let unit = |v: f32| (0.0..=1.0).contains(&v).then_some(v).ok_or_else(|| bad("between 0 and 1"));
        let s = &mut self.sampling;
        match setting {
            Setting::Temperature => {
                let t: f32 = value.parse().map_err(|_| bad("a number"))?;
                s.temperature = (t >= 0.0 && t.is_finite()).then_some(t).ok_or_else(|| bad("0 or more"))?;
            }
            Setting::TopP => s.top_p = unit(value.parse().map_err(|_| bad("a number"))?)?,
            Setting::MinP => s.min_p = unit(value.parse().map_err(|_| bad("a number"))?)?,
            Setting::TopK => s.top_k = value.parse().map_err(|_| bad("a whole number"))?,
            Setting::Seed => s.seed = value.parse().map_err(|_| bad("a whole number"))?,
            Setting::MaxTokens => {
                let n: usize = value.parse().map_err(|_| bad("a whole number"))?;
                self.max_tokens = (n > 0).then_some(n);
            }
        }
        Ok(())
    }

    fn show(&self) {
        let s = &self.sampling;
        let max = self.max_tokens.map_or("none".to_string(), |n| n.to_string());
        println!(
            "temperature {}  top_p {}  top_k {}  min_p {}  max_tokens {max}  seed {}",
            s.temperature, s.top_p, s.top_k, s.min_p, s.seed
        );
        let info = self.loaded.engine.model_info();
        let (blocks, block_size) = self.loaded.engine.kv_blocks();
        println!(
            "model {} ({}, {}{} layers, {:.0} MiB) — {}",
            self.model_name(),
            info.architecture,
            self.loaded.quant.as_deref().map(|q| format!("{q}, ")).unwrap_or_default(),
            info.num_layers,
            info.weight_bytes as f64 / (1 << 20) as f64,
            self.loaded.path.display()
        );
        println!(
            "context {} tokens, KV cache {blocks} blocks of {block_size}; conversation: {} messages; system: {}",
            self.loaded.engine.context_length(),
            self.conversation.messages().len(),
            self.conversation.system.as_deref().unwrap_or("(none)")
        );
    }

    fn stats(&self) {
        match &self.last {
            None => println!("no reply yet"),
            Some(c) => println!(
                "prompt {} tokens ({} cached, {} processed) | TTFT {:.0} ms | {} tokens at {:.1} tok/s",
                c.usage.prompt_tokens,
                c.usage.cached_tokens,
                c.usage.prompt_tokens - c.usage.cached_tokens,
                c.timings.ttft_ms,
                c.usage.completion_tokens,
                c.timings.decode_tok_s
            ),
        }
    }
}
