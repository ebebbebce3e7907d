//! `ORG/NAME[:QUANT]`: how a user names a model on the Hub. Checked with the Hub's own rules for
//! repository names before anything is looked up, so that a name never becomes a path outside the
//! cache and a typo of an alias is not sent to the network.

use super::error::HubError;
use std::fmt;

/// A repository on the Hub and, for GGUF repositories, the quant wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// `ORG/NAME`.
    pub repo: String,
    /// The quant tag after the colon (`Q4_K_M`), as typed; matched case-insensitively.
    pub quant: Option<String>,
}

impl RepoRef {
    /// Parses `ORG/NAME` or `ORG/NAME:QUANT`.
    pub fn parse(text: &str) -> Result<Self, HubError> {
        let bad = |reason: &str| HubError::BadReference { reference: text.to_string(), reason: reason.to_string() };
        let (repo, quant) = match text.rsplit_once(':') {
            Some((repo, quant)) => (repo, Some(quant)),
            None => (text, None),
        };
        if let Some(q) = quant {
            if q.is_empty() || !q.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
                return Err(bad("the quant after ':' must be letters, digits, '_', '-' or '.' (e.g. Q4_K_M)"));
            }
        }
        let mut parts = repo.split('/');
        let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected ORG/NAME or ORG/NAME:QUANT"));
        };
        for part in [org, name] {
            if let Err(reason) = check_name(part) {
                return Err(bad(&reason));
            }
        }
        Ok(Self { repo: repo.to_string(), quant: quant.map(str::to_string) })
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.quant {
            Some(q) => write!(f, "{}:{q}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// The Hub's rule for an owner or repository name: letters, digits, `-`, `_`, `.`; no `--` or `..`;
/// no `-` or `.` at either end; at most 96 characters.
fn check_name(part: &str) -> Result<(), String> {
    let ok_chars = part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if part.is_empty() || part.len() > 96 || !ok_chars {
        return Err(format!("'{part}' must be 1-96 letters, digits, '-', '_' or '.'"));
    }
    if part.contains("--") || part.contains("..") {
        return Err(format!("'{part}' must not contain '--' or '..'"));
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err(format!("'{part}' must not start or end with '-' or '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_and_quant_are_split_at_the_colon() {
        let r = RepoRef::parse("bartowski/SmolLM2-135M-Instruct-GGUF:q4_k_m").unwrap();
        assert_eq!(r.repo, "bartowski/SmolLM2-135M-Instruct-GGUF");
        assert_eq!(r.quant.as_deref(), Some("q4_k_m"));
        assert_eq!(r.to_string(), "bartowski/SmolLM2-135M-Instruct-GGUF:q4_k_m");
        assert_eq!(RepoRef::parse("org/name").unwrap().quant, None);
    }

    #[test]
    fn names_that_could_leave_the_cache_are_refused() {
        for bad in ["../x", "org/..", "org/../x", "/abs/x", "org/na--me", "org/name:", "org", "a/b/c", "org/n me"] {
            assert!(RepoRef::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
