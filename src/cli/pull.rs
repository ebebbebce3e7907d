//! `bodega pull`: a Hub repository into the Hugging Face cache, with progress bars on stderr (one per
//! file and a total) and the model's path on stdout. The bars also show while `run` and the other
//! commands pull a model they do not find. The work itself is `crate::hub::pull`.

use super::{GlobalArgs, UsageError};
use crate::error::Error;
use crate::hub::{HubError, PullEvent, PullRequest, RepoRef, DEFAULT_QUANT};
use clap::Args;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub(super) const EXAMPLES: &str = "\
Examples:
  bodega pull bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M
  bodega pull Qwen/Qwen2.5-0.5B-Instruct-GGUF:q8_0 --revision main
  bodega pull unsloth/gemma-3-270m-it-GGUF --file gemma-3-270m-it-Q4_K_M.gguf
  bodega pull HuggingFaceTB/SmolLM2-135M-Instruct        # a safetensors model
  path=$(bodega pull -q bartowski/SmolLM2-135M-Instruct-GGUF) && bodega run \"$path\" \"Hi\"

Files go to the Hugging Face cache (HF_HUB_CACHE, else $HF_HOME/hub); HF_TOKEN or the token file of
`huggingface-cli login` opens gated repositories; HF_ENDPOINT names another Hub.";

/// Flags of `bodega pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The repository and, for GGUF repositories, the quant (case-insensitive; default Q4_K_M, else
    /// the smallest 4-bit file). Example: bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M
    #[arg(value_name = "REPO[:QUANT]")]
    reference: String,
    /// Fetch this file of the repository instead of choosing by quant (all parts of a split GGUF).
    /// Example: --file SmolLM2-135M-Instruct-Q8_0.gguf
    #[arg(long, value_name = "NAME")]
    file: Option<String>,
    /// The branch, tag or commit to pull from. Example: --revision v1.0
    #[arg(long, value_name = "REV", default_value = "main")]
    revision: String,
}

/// Runs `bodega pull`.
pub fn run(args: PullArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if global.no_pull {
        return Err(UsageError("--no-pull forbids what pull does: download".into()).into());
    }
    let reference = RepoRef::parse(&args.reference).map_err(Error::from)?;
    if reference.quant.is_some() && args.file.is_some() {
        return Err(UsageError("give either REPO:QUANT or --file NAME, not both".into()).into());
    }
    if args.revision.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(UsageError(format!("--revision '{}' is not a branch, tag or commit", args.revision)).into());
    }
    let request = PullRequest { reference, file: args.file, revision: args.revision };
    let mut bars = Bars::new(global.quiet);
    let pulled = crate::hub::pull(&request, &mut |event| bars.show(event))?;
    bars.finish();
    if !global.quiet {
        let what = match &pulled.label {
            Some(label) => format!("{}:{label}", request.reference.repo),
            None => request.reference.repo.clone(),
        };
        let files = match pulled.files.len() {
            1 => "1 file".to_string(),
            n => format!("{n} files"),
        };
        eprintln!("pulled {what} ({files}, {}, commit {:.7})", HumanBytes(bars.bytes), pulled.commit);
    }
    println!("{}", pulled.path.display());
    Ok(())
}

/// The progress display: a bar per file (bytes, rate, ETA) above a total bar, on stderr; nothing
/// when stderr is not a terminal or with `-q`. Notices print unless `-q`.
pub(super) struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    file: Option<ProgressBar>,
    quiet: bool,
    /// Bytes of every file handled so far.
    bytes: u64,
}

impl Bars {
    /// A display that stays hidden when `quiet` or when stderr is not a terminal.
    pub(super) fn new(quiet: bool) -> Self {
        let target = match quiet || !std::io::stderr().is_terminal() {
            true => ProgressDrawTarget::hidden(),
            false => ProgressDrawTarget::stderr(),
        };
        let multi = MultiProgress::with_draw_target(target);
        let total = multi.add(ProgressBar::new(0).with_style(style(RATE)).with_message("total"));
        Self { multi, total, file: None, quiet, bytes: 0 }
    }

    /// Shows one event of a pull.
    pub(super) fn show(&mut self, event: PullEvent<'_>) {
        match event {
            PullEvent::Pulling { reference } if !self.quiet => {
                let notice = format!(
                    "{reference} is not in the Hugging Face cache: pulling it (--no-pull or HF_HUB_OFFLINE=1 prevent this)"
                );
                match self.multi.is_hidden() {
                    true => eprintln!("{notice}"),
                    false => drop(self.multi.println(notice)),
                }
            }
            PullEvent::Pulling { .. } => {}
            PullEvent::Queued { bytes, .. } => self.total.inc_length(bytes),
            PullEvent::FileStarted { path, size, done } => {
                let style = if done >= size { style("cached") } else { style(RATE) };
                let bar = self.multi.insert_before(&self.total, ProgressBar::new(size).with_style(style));
                bar.set_message(path.rsplit('/').next().unwrap_or(path).to_string());
                bar.set_position(done);
                bar.reset_eta();
                // Bytes already there are not throughput.
                self.total.inc(done);
                self.total.reset_eta();
                self.bytes += size;
                self.file = Some(bar);
            }
            PullEvent::Bytes(n) => {
                self.total.inc(n);
                if let Some(bar) = &self.file {
                    bar.inc(n);
                }
            }
            PullEvent::FileDone { .. } => {
                if let Some(bar) = self.file.take() {
                    bar.finish();
                }
            }
        }
    }

    /// Clears the total bar once everything has arrived.
    pub(super) fn finish(&self) {
        self.total.finish_and_clear();
    }
}

/// The tail of a bar that is downloading.
const RATE: &str = "{binary_bytes_per_sec:>12} ETA {eta:>4}";

/// A bar with the name, the bytes, and `tail` (rate and ETA, or a word).
fn style(tail: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{{msg:<36!}} {{bar:28}} {{bytes:>10}}/{{total_bytes:<10}} {tail}"))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The next step after a failure of the Hub or the cache.
pub(super) fn hint(e: &HubError) -> Option<String> {
    Some(match e {
        HubError::BadReference { .. } => "for example: bodega pull bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M".into(),
        HubError::NotCached { reference, .. } => {
            format!("pull it first with `bodega pull {reference}` (without --no-pull and HF_HUB_OFFLINE)")
        }
        HubError::Offline { .. } => "unset HF_HUB_OFFLINE to download; cached models run without it".into(),
        HubError::RepoNotFound { .. } => "check the spelling; a private repository also needs HF_TOKEN".into(),
        HubError::RevisionNotFound { .. } => "--revision takes a branch, a tag or a commit hash".into(),
        HubError::FileNotFound { .. } => "leave out --file to choose by quant; the repository's files are on its Hub page".into(),
        HubError::Unauthorized { had_token: false, .. } => {
            "accept the model's terms on its Hub page, then log in: set HF_TOKEN=hf_... or run `huggingface-cli login`".into()
        }
        HubError::Unauthorized { had_token: true, .. } => {
            "the token was refused: accept the model's terms on its Hub page, or set a token with read access in HF_TOKEN".into()
        }
        HubError::NoSuchQuant { repo, available, .. } | HubError::AmbiguousQuant { repo, choices: available } => {
            match available.first() {
                Some(first) => format!("pick one: bodega pull {repo}:{first} (or --file NAME)"),
                None => return None,
            }
        }
        HubError::NoWeights { .. } => format!(
            "bodega pulls GGUF repositories (by quant, default {DEFAULT_QUANT}) and safetensors models; use --file for anything else"
        ),
        HubError::Unreachable { .. } => {
            "check the network (or HF_ENDPOINT); cached models work offline with HF_HUB_OFFLINE=1".into()
        }
        HubError::Interrupted { .. } => "run the same command again: the download continues where it stopped".into(),
        HubError::ChecksumMismatch { .. } | HubError::SizeMismatch { .. } => {
            "run the same command again to download it afresh".into()
        }
        HubError::DiskFull { .. } => "free some space, or move the cache with HF_HUB_CACHE=/bigger/disk".into(),
        HubError::NotInCache { .. } => "`bodega list` shows the models in the cache".into(),
        HubError::NotRemovable { path, .. } => format!("delete the file itself: rm {}", path.display()),
        HubError::Http { .. } | HubError::BadResponse { .. } | HubError::UnsafeName { .. } => return None,
    })
}
