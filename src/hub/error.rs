//! What can go wrong between a model reference and the Hugging Face cache: each failure names the
//! repository or file it is about, so that the CLI can add the next step as a `hint:` line.

use std::path::PathBuf;

/// A failure while resolving, pulling, listing or removing a Hub model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Text that is not a repository reference (`ORG/NAME[:QUANT]`).
    #[error("'{reference}' is not a Hugging Face repository reference: {reason}")]
    BadReference {
        /// What the user typed.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A reference that is not in the cache while downloads are off.
    #[error("'{reference}' is not in the Hugging Face cache ({}), and downloads are off ({why})", cache.display())]
    NotCached {
        /// What the user typed.
        reference: String,
        /// The cache that was searched.
        cache: PathBuf,
        /// Which switch turned downloads off (`--no-pull`, `HF_HUB_OFFLINE=1`).
        why: &'static str,
    },
    /// `pull` while `HF_HUB_OFFLINE=1`.
    #[error("cannot pull '{reference}': downloads are off (HF_HUB_OFFLINE=1)")]
    Offline {
        /// What the user asked for.
        reference: String,
    },
    /// The Hub has no such repository (HTTP 404), or hides a private one.
    #[error("repository '{repo}' was not found on the Hub")]
    RepoNotFound {
        /// `ORG/NAME`.
        repo: String,
    },
    /// The repository exists but not this branch, tag or commit.
    #[error("repository '{repo}' has no revision '{revision}'")]
    RevisionNotFound {
        /// `ORG/NAME`.
        repo: String,
        /// What `--revision` named.
        revision: String,
    },
    /// A file that the repository does not have (`--file`, or a shard its index names).
    #[error("repository '{repo}' has no file '{file}'")]
    FileNotFound {
        /// `ORG/NAME`.
        repo: String,
        /// The path inside the repository.
        file: String,
    },
    /// HTTP 401 or 403: a gated or private repository, or a token without access.
    #[error("the Hub refused access to '{repo}' (HTTP {status}): it is gated or private, or the token lacks access")]
    Unauthorized {
        /// `ORG/NAME`.
        repo: String,
        /// 401 or 403.
        status: u16,
        /// Whether a token was sent.
        had_token: bool,
    },
    /// A quant tag that no GGUF file of the repository carries.
    #[error("no GGUF file in '{repo}' matches the quant '{quant}' (available: {})", list(available))]
    NoSuchQuant {
        /// `ORG/NAME`.
        repo: String,
        /// The tag the user gave.
        quant: String,
        /// The quants the repository has.
        available: Vec<String>,
    },
    /// No quant tag, and no default applies (or a tag that several files carry).
    #[error("'{repo}' has several GGUF files and none is the default: choose one ({})", list(choices))]
    AmbiguousQuant {
        /// `ORG/NAME`.
        repo: String,
        /// The quants (or file names) to choose from.
        choices: Vec<String>,
    },
    /// Neither GGUF files nor a safetensors model in the repository.
    #[error("'{repo}' has no GGUF files and no safetensors model (model.safetensors or its index)")]
    NoWeights {
        /// `ORG/NAME`.
        repo: String,
    },
    /// The Hub could not be reached at all.
    #[error("cannot reach the Hub at {endpoint}: {reason}")]
    Unreachable {
        /// The endpoint's address.
        endpoint: String,
        /// What the connection said.
        reason: String,
    },
    /// Any other HTTP status.
    #[error("the Hub answered HTTP {status} for {url}")]
    Http {
        /// The request.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The Hub answered something bodega cannot use (missing headers, bad JSON).
    #[error("unexpected answer from the Hub for {url}: {reason}")]
    BadResponse {
        /// The request.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A name in the Hub's answer that would escape the cache (`../x`, `/etc/x`) or is not a plain name.
    #[error("refusing the Hub's answer: '{name}' is not a safe {what}")]
    UnsafeName {
        /// The offending text.
        name: String,
        /// What it was meant to be (file path, commit hash, etag).
        what: &'static str,
    },
    /// The connection broke during a download; the partial file is kept for the next attempt.
    #[error("the download of {file} stopped at {done} of {total} bytes: {reason}")]
    Interrupted {
        /// The path inside the repository.
        file: String,
        /// Bytes kept.
        done: u64,
        /// Bytes expected.
        total: u64,
        /// What the connection said.
        reason: String,
    },
    /// The downloaded bytes are not the ones the Hub announced; they were deleted.
    #[error("{file}: sha256 {actual} does not match the Hub's {expected}; the download was deleted")]
    ChecksumMismatch {
        /// The path inside the repository.
        file: String,
        /// The Hub's sha256.
        expected: String,
        /// The downloaded file's sha256.
        actual: String,
    },
    /// A downloaded file of another size than announced; it was deleted.
    #[error("{file}: {actual} bytes arrived but the Hub announced {expected}; the download was deleted")]
    SizeMismatch {
        /// The path inside the repository.
        file: String,
        /// Announced bytes.
        expected: u64,
        /// Received bytes.
        actual: u64,
    },
    /// The disk holding the cache is full.
    #[error("no space left on the device holding {}", path.display())]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// `rm` of something that is not in the Hugging Face cache.
    #[error("'{reference}' is not in the Hugging Face cache ({})", cache.display())]
    NotInCache {
        /// What the user typed.
        reference: String,
        /// The cache that was searched.
        cache: PathBuf,
    },
    /// `rm` of a demo model or a plain file, which bodega does not own in the cache.
    #[error("bodega rm removes models from the Hugging Face cache; '{reference}' is the file {}", path.display())]
    NotRemovable {
        /// What the user typed.
        reference: String,
        /// The file it stands for.
        path: PathBuf,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
