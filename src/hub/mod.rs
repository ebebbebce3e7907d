//! Model references → files on disk: a path to a `.gguf` file, or an alias of an offline demo model
//! that `scripts/fetch-test-models.sh` installs under bodega's home.

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

/// Resolves what the user typed to a model file.
pub fn resolve(reference: &str) -> Result<PathBuf> {
    let path = Path::new(reference);
    if path.is_file() {
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
    if path.exists() {
        return Err(Error::InvalidRequest(format!("{reference} is a folder; bodega runs .gguf files")));
    }
    if reference.ends_with(".gguf") || reference.contains(std::path::MAIN_SEPARATOR) {
        return Err(Error::Io { path: path.to_path_buf(), source: std::io::ErrorKind::NotFound.into() });
    }
    let mut available: Vec<String> = ALIASES.iter().map(|a| a.name.to_string()).collect();
    available.sort_by_key(|name| strsim::levenshtein(name, reference));
    Err(Error::ModelNotFound { name: reference.to_string(), available })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_list_the_aliases_closest_first() {
        match resolve("gemma-270m") {
            Err(Error::ModelNotFound { available, .. }) => assert_eq!(available[0], "gemma3-270m"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_missing_gguf_path_is_a_file_error() {
        assert!(matches!(resolve("/nonexistent/model.gguf"), Err(Error::Io { .. })));
    }
}
