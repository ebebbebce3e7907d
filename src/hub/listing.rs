//! A repository's file listing as the Hub's model API gives it (`/api/models/{repo}/revision/{rev}`
//! with `blobs=true`): the commit it describes and every file with its size and, for LFS files, its
//! sha256. Every name in it is checked here, once, before it can become a path in the cache: the
//! Hub's answer is data from the network and a hostile one must not write outside the cache.

use super::error::HubError;
use serde::Deserialize;
use std::path::{Component, Path};

/// The files of one commit of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The commit hash (40 hex digits) the listing describes.
    pub commit: String,
    /// Every file, in the Hub's order.
    pub files: Vec<RemoteFile>,
}

/// One file of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// The path inside the repository (`Q4_K_M/model-00001-of-00002.gguf`), checked to be safe.
    pub path: String,
    /// Its size in bytes, when the Hub says.
    pub size: Option<u64>,
    /// The sha256 of an LFS file (every weight file is one), lower-case hex.
    pub sha256: Option<String>,
}

#[derive(Deserialize)]
struct RawListing {
    sha: String,
    #[serde(default)]
    siblings: Vec<RawSibling>,
}

#[derive(Deserialize)]
struct RawSibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<RawLfs>,
}

#[derive(Deserialize)]
struct RawLfs {
    /// The model API calls it `sha256`; the tree API `oid`.
    #[serde(alias = "oid")]
    sha256: String,
    size: Option<u64>,
}

impl Listing {
    /// Parses and checks the JSON body that `url` answered.
    pub fn parse(url: &str, body: &[u8]) -> Result<Self, HubError> {
        let raw: RawListing = serde_json::from_slice(body)
            .map_err(|e| HubError::BadResponse { url: url.to_string(), reason: format!("listing: {e}") })?;
        check_commit(&raw.sha)?;
        let files = raw
            .siblings
            .into_iter()
            .map(|s| {
                check_path(&s.rfilename)?;
                let sha256 = s.lfs.as_ref().map(|l| l.sha256.to_ascii_lowercase());
                if let Some(sha) = &sha256 {
                    check_sha256(sha).map_err(|_| HubError::BadResponse {
                        url: url.to_string(),
                        reason: format!("'{}' has no valid sha256", s.rfilename),
                    })?;
                }
                Ok(RemoteFile { size: s.size.or(s.lfs.and_then(|l| l.size)), path: s.rfilename, sha256 })
            })
            .collect::<Result<_, HubError>>()?;
        Ok(Self { commit: raw.sha, files })
    }

    /// The file at `path`, if the repository has it.
    pub fn get(&self, path: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// A path inside a repository that stays inside the snapshot folder: relative, `/`-separated, no
/// empty, `.` or `..` parts, no backslashes, colons or control characters.
pub fn check_path(path: &str) -> Result<(), HubError> {
    let plain = path.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    let clean_chars = !path.chars().any(|c| c.is_control() || c == '\\' || c == ':');
    let relative = Path::new(path).components().all(|c| matches!(c, Component::Normal(_)));
    if plain && clean_chars && relative && path.len() <= 1024 {
        Ok(())
    } else {
        Err(HubError::UnsafeName { name: path.to_string(), what: "file path" })
    }
}

/// A commit hash: 40 hex digits (it becomes a folder name under `snapshots/`).
pub fn check_commit(commit: &str) -> Result<(), HubError> {
    if commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(HubError::UnsafeName { name: commit.to_string(), what: "commit hash" })
    }
}

/// An etag (it becomes a file name under `blobs/`): a git object id or a sha256, hex digits.
pub fn check_etag(etag: &str) -> Result<(), HubError> {
    if (1..=128).contains(&etag.len()) && etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(HubError::UnsafeName { name: etag.to_string(), what: "etag" })
    }
}

/// Whether `text` is a sha256 in hex.
pub fn check_sha256(text: &str) -> Result<(), HubError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(HubError::UnsafeName { name: text.to_string(), what: "sha256" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn listing(names: &[&str]) -> Result<Listing, HubError> {
        let siblings: Vec<_> = names.iter().map(|n| serde_json::json!({ "rfilename": n })).collect();
        Listing::parse("test", serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string().as_bytes())
    }

    #[test]
    fn sizes_and_lfs_hashes_are_read() {
        let sha = "a".repeat(64);
        let body = serde_json::json!({ "sha": COMMIT, "siblings": [
            { "rfilename": "config.json", "size": 10 },
            { "rfilename": "m.gguf", "lfs": { "sha256": sha, "size": 99 } },
        ]});
        let l = Listing::parse("test", body.to_string().as_bytes()).unwrap();
        assert_eq!(l.get("config.json").unwrap().size, Some(10));
        assert_eq!(l.get("m.gguf").unwrap().sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(l.get("m.gguf").unwrap().size, Some(99));
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["../../x", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\..\\b", "C:/x", "a/\u{0}b", ""] {
            assert!(matches!(listing(&[bad]), Err(HubError::UnsafeName { .. })), "{bad:?} accepted");
        }
        assert!(listing(&["Q4_K_M/model-00001-of-00002.gguf", ".gitattributes"]).is_ok());
    }

    #[test]
    fn a_commit_that_is_not_a_hash_is_refused() {
        let body = serde_json::json!({ "sha": "../../x", "siblings": [] });
        assert!(matches!(Listing::parse("test", body.to_string().as_bytes()), Err(HubError::UnsafeName { .. })));
        assert!(check_etag("../x").is_err() && check_etag("abc123").is_ok());
    }
}
