//! The command line: argument parsing, one module per subcommand, and the one place where errors
//! become an `error:` line, a `hint:` line and an exit code (conventions.md).

mod bench;
mod chat;
mod generation;
mod load;
mod models;
mod output;
mod pull;
mod run;
mod serve;

use crate::device::DeviceChoice;
use crate::error::Error;
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

/// Exit code for errors the user can act on.
const EXIT_ERROR: u8 = 1;
/// Exit code for usage errors (clap's own).
const EXIT_USAGE: u8 = 2;
/// Exit code after Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

const EXAMPLES: &str = "\
Examples:
  bodega run smollm2-135m \"Write a haiku about bread\"
  echo \"What is 2+2?\" | bodega run smollm2-135m --temperature 0
  bodega run ./model.gguf --raw \"Once upon a time\" --max-tokens 64
  bodega run bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M \"Hi\"   # pulled on first use
  bodega list";

fn long_version() -> &'static str {
    Box::leak(
        format!(
            "{} (commit {}, backends: {})",
            env!("CARGO_PKG_VERSION"),
            env!("BODEGA_GIT_COMMIT"),
            crate::device::compiled_backends().join(", ")
        )
        .into_boxed_str(),
    )
}

/// bodega: run and benchmark LLMs locally, fast.
#[derive(Debug, Parser)]
#[command(name = "bodega", version = long_version(), after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Compute device: auto, cpu, cuda, cuda:N or metal (auto = the best one compiled in and present).
    /// Example: --device cpu
    #[arg(long, global = true, default_value = "auto", value_name = "DEVICE")]
    device: DeviceChoice,
    /// Print more: load times and a stats line after each reply. Example: -v
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    verbose: bool,
    /// Print nothing on stderr but errors. Example: -q
    #[arg(short, long, global = true)]
    quiet: bool,
    /// CPU threads for the model (default: all cores). Example: --threads 4
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Never download: a model must be a path, a demo alias or already in the Hugging Face cache
    /// (HF_HUB_OFFLINE=1 does the same). Example: --no-pull
    #[arg(long, global = true)]
    no_pull: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a reply to one prompt (from the argument or piped stdin) and stream it to stdout.
    #[command(after_help = run::EXAMPLES)]
    Run(run::RunArgs),
    /// Chat with the model at the terminal (history, multi-line input, /commands); one reply when piped.
    #[command(after_help = chat::EXAMPLES)]
    Chat(chat::ChatArgs),
    /// Measure throughput and latency: in-process or any OpenAI-compatible server, sweeps, scenarios.
    #[command(after_help = bench::EXAMPLES)]
    Bench(Box<bench::BenchArgs>),
    /// Serve the model over an OpenAI-compatible HTTP API (chat, completions, models, metrics).
    #[command(name = "serve-lite", after_help = serve::EXAMPLES)]
    ServeLite(serve::ServeArgs),
    /// Download a model from the Hugging Face Hub into the Hugging Face cache (GGUF by quant, or safetensors).
    #[command(after_help = pull::EXAMPLES)]
    Pull(pull::PullArgs),
    /// List local models: the demo models and everything runnable in the Hugging Face cache.
    #[command(after_help = models::LIST_EXAMPLES)]
    List(models::ListArgs),
    /// Remove a model (a repository, or one quant of it) from the Hugging Face cache.
    #[command(after_help = models::RM_EXAMPLES)]
    Rm(models::RmArgs),
}

/// A mistake in how the command was called (exit code 2, like clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The user pressed Ctrl-C; what was finished has been printed (exit code 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// A flag that Ctrl-C sets, so that a front end can stop cleanly and print what it finished.
fn interrupt_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let setter = flag.clone();
    let _ = ctrlc::set_handler(move || setter.store(true, std::sync::atomic::Ordering::Relaxed));
    flag
}

/// Parses the command line, runs the subcommand and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.global);
    if let Some(n) = cli.global.threads {
        // candle's CPU kernels size their work by the same variable rayon reads.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n as usize).build_global();
        // bodega's quantized matmuls run on their own pool (the pool starts with the first matmul).
        let _ = bodega_cpu_kernels::set_threads(n as usize);
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args, &cli.global),
        Command::ServeLite(args) => serve::run(args, &cli.global),
        Command::Bench(args) => bench::run(*args, &cli.global),
        Command::Chat(args) => chat::run(args, &cli.global),
        Command::Pull(args) => pull::run(args, &cli.global),
        Command::List(args) => models::list(args, &cli.global),
        Command::Rm(args) => models::rm(args, &cli.global),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn init_logging(global: &GlobalArgs) {
    let level = if global.verbose {
        "bodega=debug"
    } else if global.quiet {
        "error"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BODEGA_LOG").unwrap_or_else(|_| level.into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).without_time().init();
}

/// Prints one `error:` line (and a `hint:` when there is a next step) and picks the exit code.
fn report(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<Interrupted>().is_some() {
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    if let Some(usage) = e.downcast_ref::<UsageError>() {
        eprintln!("error: {usage}\n\nFor more information, try '--help'.");
        return ExitCode::from(EXIT_USAGE);
    }
    let message = format!("{e:#}").replace('\n', " ");
    eprintln!("error: {message}");
    if let Some(hint) = e.downcast_ref::<Error>().and_then(hint) {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(EXIT_ERROR)
}

/// The next step for errors that have one.
fn hint(e: &Error) -> Option<String> {
    match e {
        Error::ModelNotFound { available, .. } => Some(format!(
            "did you mean {}? Models: a path to a .gguf file, a Hub repository ORG/NAME[:QUANT], or one of: {}",
            available[0],
            crate::hub::ALIASES.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        )),
        Error::ModelNotInstalled { .. } => Some("install the demo models with scripts/fetch-test-models.sh".into()),
        Error::PromptTooLong { .. } => {
            Some("shorten the prompt, or raise --ctx-size up to the model's trained context".into())
        }
        Error::UnsupportedArchitecture(_) => Some(
            "bodega runs these architectures as GGUF files and as safetensors or MLX-quantized folders (README: Supported models)"
                .into(),
        ),
        Error::DraftMismatch { .. } => Some(
            "a draft must share the target's tokenizer (a smaller model of the same family, or the target cut with --draft-layers); --speculative ngram needs no draft".into(),
        ),
        Error::Hub(e) => pull::hint(e),
        Error::MemoryBudget { hint, .. } => Some(hint.clone()),
        _ => None,
    }
}
