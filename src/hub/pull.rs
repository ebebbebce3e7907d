//! `pull`: a repository reference in, the model's files in the Hugging Face cache out. Lists the
//! repository once at the revision asked for, picks the files (`select`), fetches each at the
//! listing's commit (`download`), so that one pull is one consistent snapshot, then points
//! `refs/{revision}` at that commit.

use super::cache::HfCache;
use super::download::{fetch, io_error};
use super::env;
use super::error::HubError;
use super::listing::{check_path, Listing, RemoteFile};
use super::reference::RepoRef;
use super::remote::Remote;
use super::select::{self, Plan, SAFETENSORS_INDEX};
use crate::error::{Error, Result};
use std::path::PathBuf;

/// What a pull reports as it goes, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent<'a> {
    /// A model reference is not in the cache and is about to be pulled (resolution only).
    Pulling {
        /// The reference.
        reference: &'a str,
    },
    /// More files will be fetched: their number and total size (sizes the listing gives).
    Queued {
        /// How many files.
        files: usize,
        /// Their bytes.
        bytes: u64,
    },
    /// A file starts; `done` bytes of it are already there (resumed, or all of it when cached).
    FileStarted {
        /// The path inside the repository.
        path: &'a str,
        /// Its size.
        size: u64,
        /// Bytes already present.
        done: u64,
    },
    /// Bytes of the current file arrived.
    Bytes(u64),
    /// The current file is complete and verified.
    FileDone {
        /// The path inside the repository.
        path: &'a str,
    },
}

/// Receives a pull's events (a progress display, or nothing).
pub type OnEvent<'a> = dyn FnMut(PullEvent<'_>) + Send + 'a;

/// What to pull.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// The repository and quant.
    pub reference: RepoRef,
    /// An exact file of the repository instead of choosing by quant.
    pub file: Option<String>,
    /// Branch, tag or commit (`main` by default).
    pub revision: String,
}

/// A finished pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// What to load: the GGUF file (its first part when split), or the snapshot folder of a
    /// safetensors model.
    pub path: PathBuf,
    /// The quant pulled, or the file name when there is none.
    pub label: Option<String>,
    /// The commit the files come from.
    pub commit: String,
    /// Every file, in the snapshot.
    pub files: Vec<PathBuf>,
}

/// Pulls `request` into the cache. Blocks; the network work runs on its own thread and runtime, so
/// that this may be called from inside another tokio runtime too.
pub fn pull(request: &PullRequest, on: &mut OnEvent<'_>) -> Result<Pulled> {
    if env::offline() {
        return Err(HubError::Offline { reference: request.reference.to_string() }.into());
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
                    HubError::Unreachable { endpoint: "the Hub".into(), reason: format!("cannot start tokio: {e}") }
                })?;
                runtime.block_on(pull_async(request, on))
            })
            .join()
            .unwrap_or_else(|_| Err(Error::InvalidRequest("the download thread panicked".into())))
    })
}

async fn pull_async(request: &PullRequest, on: &mut OnEvent<'_>) -> Result<Pulled> {
    let repo = request.reference.repo.as_str();
    let remote = Remote::from_env()?;
    let cached = HfCache::from_env().repo(repo);
    let listing = remote.listing(repo, &request.revision).await?;
    let plan = select::plan(repo, &listing, request.reference.quant.as_deref(), request.file.as_deref())?;
    let (names, label) = match &plan {
        Plan::Gguf(model) => (model.files.clone(), Some(model.label())),
        Plan::Safetensors(files) | Plan::Files(files) => (files.clone(), None),
    };
    let mut paths = Vec::new();
    for file in queue(repo, &listing, &names, on)? {
        paths.push(fetch(&remote, &cached, &listing.commit, file, on).await?);
    }
    let snapshot = cached.snapshot(&listing.commit);
    if matches!(plan, Plan::Safetensors(_)) && names.iter().any(|n| n == SAFETENSORS_INDEX) {
        let index_path = snapshot.join(SAFETENSORS_INDEX);
        let index = std::fs::read(&index_path).map_err(|e| io_error(&index_path, e))?;
        let shards = select::index_shards(&index)
            .map_err(|reason| HubError::BadResponse { url: format!("{repo}/{SAFETENSORS_INDEX}"), reason })?;
        for shard in &shards {
            check_path(shard)?;
        }
        for file in queue(repo, &listing, &shards, on)? {
            paths.push(fetch(&remote, &cached, &listing.commit, file, on).await?);
        }
    }
    if request.revision != listing.commit {
        cached.set_ref(&request.revision, &listing.commit).map_err(|e| io_error(cached.dir(), e))?;
    }
    let path = match plan {
        Plan::Safetensors(_) => snapshot,
        _ => paths.first().cloned().unwrap_or(snapshot),
    };
    Ok(Pulled { path, label, commit: listing.commit, files: paths })
}

/// The listing's entries for `names` (each must exist), announced as queued.
fn queue<'l>(repo: &str, listing: &'l Listing, names: &[String], on: &mut OnEvent<'_>) -> Result<Vec<&'l RemoteFile>> {
    let files = names
        .iter()
        .map(|name| listing.get(name).ok_or_else(|| HubError::FileNotFound { repo: repo.into(), file: name.clone() }))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    on(PullEvent::Queued { files: files.len(), bytes: files.iter().filter_map(|f| f.size).sum() });
    Ok(files)
}
