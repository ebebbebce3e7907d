//! The Hugging Face cache on disk, laid out exactly as huggingface_hub lays it out (hf-hub's `Cache`
//! and `Repo` give the paths): `models--{org}--{name}/blobs/{etag}` holds the bytes,
//! `snapshots/{commit}/{path}` are relative symlinks to them, `refs/{revision}` holds a commit hash.
//! Downloads in progress are `blobs/{etag}.incomplete`, and `.locks/models--{org}--{name}/{etag}.lock`
//! keeps two processes from writing one blob.

use super::env;
use super::listing::check_commit;
use hf_hub::{Cache, CacheRepo, Repo, RepoType};
use std::path::{Component, Path, PathBuf};

const REPO_PREFIX: &str = "models--";

/// The cache directory (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
#[derive(Debug, Clone)]
pub struct HfCache {
    cache: Cache,
}

impl HfCache {
    /// The cache the environment names.
    pub fn from_env() -> Self {
        Self { cache: Cache::new(env::cache_dir()) }
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        self.cache.path()
    }

    /// One repository's part of the cache (which may not exist yet).
    pub fn repo(&self, repo: &str) -> CachedRepo {
        let model = Repo::new(repo.to_string(), RepoType::Model);
        let dir = self.root().join(model.folder_name());
        CachedRepo { id: repo.to_string(), dir, cache: self.cache.clone(), inner: self.cache.repo(model) }
    }

    /// Every model repository in the cache, by id.
    pub fn repos(&self) -> Vec<CachedRepo> {
        let Ok(entries) = std::fs::read_dir(self.root()) else { return Vec::new() };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix(REPO_PREFIX).map(|rest| rest.replacen("--", "/", 1)))
            .collect();
        ids.sort();
        ids.iter().map(|id| self.repo(id)).collect()
    }
}

/// One repository in the cache.
#[derive(Debug)]
pub struct CachedRepo {
    /// `ORG/NAME`.
    pub id: String,
    dir: PathBuf,
    cache: Cache,
    inner: CacheRepo,
}

/// One commit's files in the cache.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The commit hash.
    pub commit: String,
    /// `snapshots/{commit}`.
    pub dir: PathBuf,
}

impl CachedRepo {
    /// `models--{org}--{name}`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the finished bytes of `etag` live.
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.inner.blob_path(etag)
    }

    /// Where a download of `etag` in progress lives (huggingface_hub's name, so either tool resumes it).
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.blob(&format!("{etag}.incomplete"))
    }

    /// The folder of this repository's lock files (`.locks/models--{org}--{name}`).
    pub fn lock_dir(&self) -> PathBuf {
        self.cache.path().join(".locks").join(self.dir.file_name().unwrap_or_default())
    }

    /// The lock file guarding the download of `etag`.
    pub fn lock_file(&self, etag: &str) -> PathBuf {
        self.lock_dir().join(format!("{etag}.lock"))
    }

    /// The folder of `commit`'s files.
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.inner.pointer_path(commit)
    }

    /// The commit `refs/{revision}` names, if it names a valid one.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        check_commit(commit).is_ok().then(|| commit.to_string())
    }

    /// Points `refs/{revision}` at `commit`.
    pub fn set_ref(&self, revision: &str, commit: &str) -> std::io::Result<()> {
        self.cache.repo(Repo::with_revision(self.id.clone(), RepoType::Model, revision.to_string())).create_ref(commit)
    }

    /// The snapshots present: the one `refs/main` names first, then the others by commit.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("snapshots")) else { return Vec::new() };
        let mut commits: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|c| check_commit(c).is_ok())
            .collect();
        let main = self.commit_of("main");
        commits.sort_by_key(|c| (Some(c) != main.as_ref(), c.clone()));
        commits.into_iter().map(|commit| Snapshot { dir: self.snapshot(&commit), commit }).collect()
    }

    /// Makes `snapshots/{commit}/{path}` a relative symlink to `blobs/{etag}`.
    pub fn link(&self, commit: &str, path: &str, etag: &str) -> std::io::Result<PathBuf> {
        let pointer = self.snapshot(commit).join(path);
        if let Some(parent) = pointer.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let depth = path.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        match std::fs::remove_file(&pointer) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &pointer)?;
        #[cfg(not(unix))]
        std::fs::copy(self.blob(etag), &pointer).map(drop)?;
        Ok(pointer)
    }
}

impl CachedRepo {
    /// The blob a snapshot file links to, when it is one of this repository's blobs (never the target
    /// of a link that leads out of the cache).
    pub fn blob_of(&self, pointer: &Path) -> Option<PathBuf> {
        let target = std::fs::read_link(pointer).ok()?;
        let mut blob = pointer.parent()?.to_path_buf();
        for part in target.components() {
            match part {
                Component::ParentDir => {
                    blob.pop();
                }
                Component::Normal(name) => blob.push(name),
                _ => return None,
            }
        }
        (blob.parent()? == self.dir.join("blobs")).then_some(blob)
    }
}

impl Snapshot {
    /// Every file in the snapshot whose blob is present: its path inside the repository (`/`-separated)
    /// and size.
    pub fn files(&self) -> Vec<(String, u64)> {
        let mut files = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                    continue;
                }
                // Links to folders, and dangling links whose blob is gone, are not files of the snapshot.
                if let Some(m) = std::fs::metadata(&path).ok().filter(|m| m.is_file()) {
                    let rel = path.strip_prefix(&self.dir).unwrap_or(&path);
                    let parts: Vec<_> = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect();
                    files.push((parts.join("/"), m.len()));
                }
            }
        }
        files.sort();
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_huggingface_hubs() {
        let cache = HfCache { cache: Cache::new("/c".into()) };
        let repo = cache.repo("org/name");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(repo.dir(), Path::new("/c/models--org--name"));
        assert_eq!(repo.blob("abc"), Path::new("/c/models--org--name/blobs/abc"));
        assert_eq!(repo.incomplete("abc"), Path::new("/c/models--org--name/blobs/abc.incomplete"));
        assert_eq!(repo.lock_file("abc"), Path::new("/c/.locks/models--org--name/abc.lock"));
        assert_eq!(repo.snapshot(commit), Path::new("/c/models--org--name/snapshots").join(commit));
    }

    #[test]
    fn links_are_relative_and_resolve_to_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HfCache { cache: Cache::new(dir.path().to_path_buf()) };
        let repo = cache.repo("org/name");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.blob("e").parent().unwrap()).unwrap();
        std::fs::write(repo.blob("e"), b"bytes").unwrap();
        let pointer = repo.link(commit, "sub/dir/f.gguf", "e").unwrap();
        assert_eq!(std::fs::read(&pointer).unwrap(), b"bytes");
        assert_eq!(repo.blob_of(&pointer), Some(repo.blob("e")));
        repo.set_ref("main", commit).unwrap();
        assert_eq!(repo.commit_of("main").as_deref(), Some(commit));
        let snapshots = repo.snapshots();
        assert_eq!(snapshots[0].files(), [("sub/dir/f.gguf".to_string(), 5)]);
        assert_eq!(cache.repos()[0].id, "org/name");
    }
}
