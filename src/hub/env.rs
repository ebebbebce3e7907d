//! The Hugging Face environment variables, read the way huggingface_hub reads them, so that bodega
//! and the Python tools share one cache and one login.

use std::path::PathBuf;

/// A variable's value, unless unset or empty.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home);
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface")
}

/// The hub cache: `HF_HUB_CACHE` (or its old name `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`.
pub fn cache_dir() -> PathBuf {
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("hub"))
}

/// The access token for gated and private repositories: `HF_TOKEN`, else the file that
/// `huggingface-cli login` writes (`HF_TOKEN_PATH`, default `$HF_HOME/token`).
pub fn token() -> Option<String> {
    var("HF_TOKEN").map(|t| t.trim().to_string()).or_else(|| {
        let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home().join("token"));
        std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
    })
}

/// `HF_HUB_OFFLINE` set to a true value (`1`, `true`, `yes`, `on`): never touch the network.
pub fn offline() -> bool {
    var("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// `HF_ENDPOINT` without a trailing slash; when unset, hf-hub's default endpoint applies.
pub fn endpoint() -> Option<String> {
    var("HF_ENDPOINT").map(|e| e.trim().trim_end_matches('/').to_string())
}
