//! Model references → files on disk (conventions.md, "Naming a model"): an existing path (a `.gguf`
//! file, or a folder with `config.json`), an alias of a demo model that `scripts/fetch-test-models.sh`
//! installs under bodega's home, or `ORG/NAME[:QUANT]` on the Hugging Face Hub, found in the Hugging
//! Face cache or pulled into it.
//!
//! The cache is huggingface_hub's, so models pulled by bodega are visible to other tools and the other
//! way round. The hf-hub crate (0.5, without its default features) gives the cache layout and the
//! Hub's URLs; bodega does the HTTP itself on reqwest, for resumable, sha256-checked downloads and
//! exact errors (`download.rs` says why). bodega never names the Hub's address: hf-hub's default
//! endpoint applies unless `HF_ENDPOINT` is set.
//!
//! Modules, one job each: `reference` parses `ORG/NAME[:QUANT]`; `env` reads the `HF_*` variables;
//! `cache` knows the layout; `remote` talks HTTP; `listing` checks the Hub's file list; `select` picks
//! files; `download` fetches one file; `pull` fetches a model; `store` finds, lists and removes local
//! models; `inspect` reads quant and size from weight files.

mod cache;
mod download;
mod env;
mod error;
mod inspect;
mod listing;
mod pull;
mod reference;
mod remote;
mod select;
mod store;

pub use error::HubError;
pub use pull::{pull, OnEvent, PullEvent, PullRequest, Pulled};
pub use reference::RepoRef;
pub use select::DEFAULT_QUANT;
pub use store::{list, plan_removal, Format, LocalModel, Removal, Source};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A short name for a demo model and the file it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    /// What users type.
    pub name: &'static str,
    /// The file under `models_dir()`.
    pub file: &'static str,
    /// One line for listings.
    pub description: &'static str,
}

/// The demo models (conventions.md).
pub const ALIASES: &[Alias] = &[
    Alias {
        name: "smollm2-135m",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        description: "SmolLM2 135M Instruct, Q4_1 (Llama architecture, chat template)",
    },
    Alias { name: "gemma3-270m", file: "gemma-3-270m-Q4_K_M.gguf", description: "Gemma 3 270M base, Q4_K_M" },
];

/// bodega's own data: `BODEGA_HOME`, else the XDG data directory + `/bodega`.
pub fn bodega_home() -> PathBuf {
    if let Some(home) = std::env::var_os("BODEGA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("bodega")
}

/// Where the demo models live.
pub fn models_dir() -> PathBuf {
    bodega_home().join("models")
}

/// The Hugging Face cache folder (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
pub fn hf_cache_dir() -> PathBuf {
    env::cache_dir()
}

/// Whether resolution may download what is not cached.
pub enum Fetch<'a> {
    /// Never touch the network; `why` names the switch that says so (`--no-pull`) for the error.
    Never {
        /// The switch, for the error message.
        why: &'static str,
    },
    /// Pull what is missing (unless `HF_HUB_OFFLINE=1`), reporting progress here.
    Pull(&'a mut OnEvent<'a>),
}

/// Resolves what the user typed to a `.gguf` file (its first part when split) or a safetensors
/// model's folder, in the order of conventions.md: an existing path, a demo alias, `ORG/NAME[:QUANT]`
/// in the Hugging Face cache, then pulled (when `fetch` allows).
pub fn resolve(reference: &str, fetch: Fetch<'_>) -> Result<PathBuf> {
    let path = Path::new(reference);
    if path.is_file() || path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some(alias) = ALIASES.iter().find(|a| a.name.eq_ignore_ascii_case(reference)) {
        let file = models_dir().join(alias.file);
        return if file.is_file() {
            Ok(file)
        } else {
            Err(Error::ModelNotInstalled { alias: alias.name.to_string(), path: file })
        };
    }
    if path.is_dir() {
        return Err(Error::InvalidRequest(format!(
            "{reference} is a folder without config.json; bodega runs .gguf files and model folders"
        )));
    }
    let repo = match RepoRef::parse(reference) {
        Ok(repo) if !reference.ends_with(".gguf") => repo,
        _ if reference.ends_with(".gguf") || reference.contains(std::path::MAIN_SEPARATOR) => {
            return Err(Error::Io { path: path.to_path_buf(), source: std::io::ErrorKind::NotFound.into() })
        }
        _ => {
            let mut available: Vec<String> = ALIASES.iter().map(|a| a.name.to_string()).collect();
            available.sort_by_key(|name| strsim::levenshtein(name, reference));
            return Err(Error::ModelNotFound { name: reference.to_string(), available });
        }
    };
    if let Some(found) = store::find(&repo)? {
        return Ok(found);
    }
    let not_cached =
        |why| Error::from(HubError::NotCached { reference: reference.into(), cache: env::cache_dir(), why });
    let on = match fetch {
        Fetch::Never { why } => return Err(not_cached(why)),
        Fetch::Pull(_) if env::offline() => return Err(not_cached("HF_HUB_OFFLINE=1")),
        Fetch::Pull(on) => on,
    };
    on(PullEvent::Pulling { reference });
    let request = PullRequest { reference: repo, file: None, revision: "main".into() };
    Ok(pull(&request, on)?.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_list_the_aliases_closest_first() {
        match resolve("gemma-270m", Fetch::Never { why: "a test" }) {
            Err(Error::ModelNotFound { available, .. }) => assert_eq!(available[0], "gemma3-270m"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_missing_gguf_path_is_a_file_error() {
        assert!(matches!(resolve("/nonexistent/model.gguf", Fetch::Never { why: "a test" }), Err(Error::Io { .. })));
    }
}
