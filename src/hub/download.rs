//! One file from the Hub into the cache, resumable and verified.
//!
//! Why not hf-hub's own download: hf-hub 0.5's `ApiRepo::download` renames the finished file into
//! `blobs/` without checking its sha256 (a bad file would stay in the cache), keeps partial downloads
//! in its own chunked format, and hides status codes and headers behind its error type (so 401, 404
//! and gated repositories could not be told apart). So bodega uses hf-hub for the cache layout and
//! the URLs, and does the HTTP itself: the bytes go to `blobs/{etag}.incomplete` (huggingface_hub's
//! name for a partial download), a later attempt continues it with a `Range` request, the sha256 of
//! LFS files is checked against the Hub's (the listing's `lfs.sha256`, else the `X-Linked-Etag`), and
//! only a complete, verified file is renamed to `blobs/{etag}` and linked from the snapshot. A bad
//! file is deleted, never kept.

use super::cache::CachedRepo;
use super::error::HubError;
use super::listing::{check_sha256, RemoteFile};
use super::pull::{OnEvent, PullEvent};
use super::remote::{chain, Remote};
use crate::error::{Error, Result};
use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Makes `file` of `commit` present in the cache and returns its snapshot path.
pub async fn fetch(
    remote: &Remote,
    cached: &CachedRepo,
    commit: &str,
    file: &RemoteFile,
    on: &mut OnEvent<'_>,
) -> Result<PathBuf> {
    let pointer = cached.snapshot(commit).join(&file.path);
    if let Ok(meta) = std::fs::metadata(&pointer) {
        on(PullEvent::FileStarted { path: &file.path, size: meta.len(), done: meta.len() });
        on(PullEvent::FileDone { path: &file.path });
        return Ok(pointer);
    }
    let meta = remote.file_meta(&cached.id, commit, &file.path).await?;
    if meta.commit != commit {
        return Err(HubError::BadResponse {
            url: file.path.clone(),
            reason: format!("served from commit {} while the listing named {commit}", meta.commit),
        }
        .into());
    }
    // The listing's hash, else the LFS etag, which is the sha256 of the content.
    let sha256 =
        file.sha256.clone().or_else(|| meta.lfs.then(|| meta.etag.clone()).filter(|e| check_sha256(e).is_ok()));
    let blob = cached.blob(&meta.etag);
    if !blob.is_file() {
        let _lock = lock(&cached.lock_file(&meta.etag))?;
        if !blob.is_file() {
            let job = Job { remote, cached, commit, path: &file.path, size: meta.size, sha256: sha256.as_deref() };
            job.run(&cached.incomplete(&meta.etag), &blob, on).await?;
        }
    } else {
        on(PullEvent::FileStarted { path: &file.path, size: meta.size, done: meta.size });
    }
    on(PullEvent::FileDone { path: &file.path });
    cached.link(commit, &file.path, &meta.etag).map_err(|e| io_error(&pointer, e))
}

/// One blob's download.
struct Job<'a> {
    remote: &'a Remote,
    cached: &'a CachedRepo,
    commit: &'a str,
    path: &'a str,
    size: u64,
    sha256: Option<&'a str>,
}

impl Job<'_> {
    /// Downloads into `partial` (continuing what is there), verifies, and renames it to `blob`.
    async fn run(&self, partial: &Path, blob: &Path, on: &mut OnEvent<'_>) -> Result<()> {
        let mut hasher = Sha256::new();
        let mut offset = match std::fs::metadata(partial) {
            Ok(m) if m.len() <= self.size => hash_prefix(partial, &mut hasher)?,
            _ => 0,
        };
        if offset < self.size {
            let mut response = self.remote.download(&self.cached.id, self.commit, self.path, offset).await?;
            if offset > 0 && range_start(&response) != Some(offset) {
                // The server ignored the range (200: the whole file follows) or refused it: start over.
                if response.status() != StatusCode::OK {
                    response = self.remote.download(&self.cached.id, self.commit, self.path, 0).await?;
                }
                offset = 0;
                hasher = Sha256::new();
            }
            on(PullEvent::FileStarted { path: self.path, size: self.size, done: offset });
            let mut out = open_partial(partial, offset)?;
            let mut stream = response.bytes_stream();
            let mut done = offset;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    let _ = out.flush();
                    HubError::Interrupted { file: self.path.into(), done, total: self.size, reason: chain(&e) }
                })?;
                out.write_all(&chunk).map_err(|e| io_error(partial, e))?;
                hasher.update(&chunk);
                done += chunk.len() as u64;
                on(PullEvent::Bytes(chunk.len() as u64));
                if done > self.size {
                    break; // more than announced: `verify` rejects and deletes it
                }
            }
            out.flush().and_then(|()| out.get_ref().sync_all()).map_err(|e| io_error(partial, e))?;
            offset = done;
        } else {
            on(PullEvent::FileStarted { path: self.path, size: self.size, done: offset });
        }
        self.verify(partial, offset, hasher)?;
        std::fs::rename(partial, blob).map_err(|e| io_error(blob, e))
    }

    /// Checks size and sha256; deletes the partial file when either is wrong.
    fn verify(&self, partial: &Path, received: u64, hasher: Sha256) -> Result<()> {
        let failure = if received != self.size {
            Some(HubError::SizeMismatch { file: self.path.into(), expected: self.size, actual: received })
        } else {
            let actual = format!("{:x}", hasher.finalize());
            self.sha256.filter(|expected| !expected.eq_ignore_ascii_case(&actual)).map(|expected| {
                HubError::ChecksumMismatch { file: self.path.into(), expected: expected.to_string(), actual }
            })
        };
        match failure {
            Some(e) => {
                let _ = std::fs::remove_file(partial);
                Err(e.into())
            }
            None => Ok(()),
        }
    }
}

/// Where a 206 answer's `Content-Range: bytes START-END/TOTAL` starts.
fn range_start(response: &reqwest::Response) -> Option<u64> {
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let range = response.headers().get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    range.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// Feeds the bytes already in `partial` to `hasher`; returns how many there are.
fn hash_prefix(partial: &Path, hasher: &mut Sha256) -> Result<u64> {
    let mut file = File::open(partial).map_err(|e| io_error(partial, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = file.read(&mut buf).map_err(|e| io_error(partial, e))?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Opens `partial` for writing at `offset` (0: from scratch).
fn open_partial(partial: &Path, offset: u64) -> Result<std::io::BufWriter<File>> {
    if let Some(parent) = partial.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    let mut options = OpenOptions::new();
    options.create(true);
    if offset > 0 {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    let file = options.open(partial).map_err(|e| io_error(partial, e))?;
    Ok(std::io::BufWriter::with_capacity(1 << 20, file))
}

/// Waits for and holds the lock on `path` (released when the file is dropped).
fn lock(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(|e| io_error(path, e))?;
    file.lock().map_err(|e| io_error(path, e))?;
    Ok(file)
}

/// A file error; a full disk gets its own message.
pub fn io_error(path: &Path, source: std::io::Error) -> Error {
    match source.kind() {
        std::io::ErrorKind::StorageFull => HubError::DiskFull { path: path.to_path_buf() }.into(),
        _ => Error::Io { path: path.to_path_buf(), source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_as_such() {
        let e = io_error(Path::new("/x"), std::io::ErrorKind::StorageFull.into());
        assert!(matches!(e, Error::Hub(HubError::DiskFull { .. })), "{e:?}");
    }
}
