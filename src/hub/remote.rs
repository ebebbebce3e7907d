//! The Hub over HTTP. hf-hub builds the URLs (its default endpoint, or `HF_ENDPOINT`); bodega sends
//! the requests with its own reqwest clients so that it sees every status code and header: the
//! listing, a `HEAD` per file for its etag, size and commit (redirects to other hosts not followed,
//! as huggingface_hub does, since the `X-Linked-*` headers are on the Hub's own answer), and the
//! download itself, which may be a `Range` request and may be redirected to a CDN.

use super::env;
use super::error::HubError;
use super::listing::{check_commit, check_etag, Listing};
use hf_hub::api::tokio::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, ETAG, RANGE, USER_AGENT};
use reqwest::{redirect, Client, Response, StatusCode};
use std::time::Duration;

/// A file as the Hub's `HEAD` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// The blob's name in the cache: the sha256 of an LFS file, the git object id of another.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
    /// The commit the Hub served it from.
    pub commit: String,
    /// Whether it is an LFS file (its etag is then its sha256).
    pub lfs: bool,
}

/// A connection to the Hub.
pub struct Remote {
    api: Api,
    /// For the API and `HEAD`s: follows redirects on the same host only.
    meta: Client,
    /// For downloads: follows redirects anywhere (reqwest drops the token when the host changes).
    data: Client,
    had_token: bool,
}

/// What a request was about, to name the right thing when it fails.
enum Target<'a> {
    Repo { repo: &'a str, revision: &'a str },
    File { repo: &'a str, file: &'a str },
}

impl Remote {
    /// Endpoint, token and cache from the environment (`HF_ENDPOINT`, `HF_TOKEN`, the token file).
    pub fn from_env() -> Result<Self, HubError> {
        let mut builder = ApiBuilder::from_cache(Cache::new(env::cache_dir())).with_progress(false).with_token(None);
        if let Some(endpoint) = env::endpoint() {
            builder = builder.with_endpoint(endpoint);
        }
        let client_error = |e: &dyn std::fmt::Display| HubError::Unreachable {
            endpoint: "the Hub".into(),
            reason: format!("cannot set up the HTTP client: {e}"),
        };
        let api = builder.build().map_err(|e| client_error(&e))?;
        let token = env::token();
        let mut headers = HeaderMap::new();
        let agent = concat!("bodega/", env!("CARGO_PKG_VERSION"));
        headers.insert(USER_AGENT, HeaderValue::from_static(agent));
        if let Some(token) = &token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| client_error(&e))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let same_host = redirect::Policy::custom(|attempt| {
            let previous = attempt.previous().last();
            let same =
                previous.is_some_and(|p| p.host_str() == attempt.url().host_str() && p.port() == attempt.url().port());
            if attempt.previous().len() > 10 || !same {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let build = |policy| {
            Client::builder()
                .default_headers(headers.clone())
                .redirect(policy)
                .connect_timeout(Duration::from_secs(20))
                .read_timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| client_error(&e))
        };
        Ok(Self {
            api,
            meta: build(same_host)?,
            data: build(redirect::Policy::limited(10))?,
            had_token: token.is_some(),
        })
    }

    /// The files of `repo` at `revision` (a branch, tag or commit).
    pub async fn listing(&self, repo: &str, revision: &str) -> Result<Listing, HubError> {
        let request = self.api.repo(Repo::with_revision(repo.into(), RepoType::Model, revision.into())).info_request();
        let mut url = request.build().map_err(|e| unreachable(&e))?.url().clone();
        url.query_pairs_mut().append_pair("blobs", "true");
        let response = self.meta.get(url.clone()).send().await.map_err(|e| unreachable(&e))?;
        let response = self.check(response, Target::Repo { repo, revision })?;
        let body = response.bytes().await.map_err(|e| unreachable(&e))?;
        Listing::parse(url.as_str(), &body)
    }

    /// The etag, size and commit of `file` at `commit`.
    pub async fn file_meta(&self, repo: &str, commit: &str, file: &str) -> Result<FileMeta, HubError> {
        let url = self.url(repo, commit, file);
        let response = self.meta.head(&url).send().await.map_err(|e| unreachable(&e))?;
        let response = self.check(response, Target::File { repo, file })?;
        let headers = response.headers();
        let bad = |reason: &str| HubError::BadResponse { url: url.clone(), reason: reason.to_string() };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let linked = header("x-linked-etag");
        let etag = linked.or(header(ETAG.as_str())).ok_or_else(|| bad("no ETag"))?;
        let etag = etag.trim_start_matches("W/").trim_matches('"').to_string();
        check_etag(&etag)?;
        let size = header("x-linked-size").or(header(CONTENT_LENGTH.as_str())).and_then(|s| s.parse().ok());
        let commit = header("x-repo-commit").ok_or_else(|| bad("no X-Repo-Commit"))?.to_string();
        check_commit(&commit)?;
        Ok(FileMeta { etag, size: size.ok_or_else(|| bad("no file size"))?, commit, lfs: linked.is_some() })
    }

    /// Starts downloading `file` at `commit` from byte `offset` (a `Range` request when not 0). The
    /// answer is 200 (the whole file) or 206 (from `offset`).
    pub async fn download(&self, repo: &str, commit: &str, file: &str, offset: u64) -> Result<Response, HubError> {
        let mut request = self.data.get(self.url(repo, commit, file));
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let response = request.send().await.map_err(|e| unreachable(&e))?;
        if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(response);
        }
        self.check(response, Target::File { repo, file })
    }

    fn url(&self, repo: &str, revision: &str, file: &str) -> String {
        self.api.repo(Repo::with_revision(repo.into(), RepoType::Model, revision.into())).url(file)
    }

    /// Maps an error status to what it means for `target`.
    fn check(&self, response: Response, target: Target) -> Result<Response, HubError> {
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            return Ok(response);
        }
        let code = response.headers().get("x-error-code").and_then(|v| v.to_str().ok()).unwrap_or("");
        let (repo, revision, file) = match target {
            Target::Repo { repo, revision } => (repo, revision, None),
            Target::File { repo, file } => (repo, "", Some(file)),
        };
        let repo_s = repo.to_string();
        Err(match (status.as_u16(), code, file) {
            (_, "RepoNotFound", _) => HubError::RepoNotFound { repo: repo_s },
            (_, "RevisionNotFound", _) => HubError::RevisionNotFound { repo: repo_s, revision: revision.into() },
            (_, "EntryNotFound", Some(file)) | (404, _, Some(file)) => {
                HubError::FileNotFound { repo: repo_s, file: file.into() }
            }
            (404, _, None) => HubError::RepoNotFound { repo: repo_s },
            (s @ (401 | 403), _, _) => HubError::Unauthorized { repo: repo_s, status: s, had_token: self.had_token },
            (s, _, _) => HubError::Http { url: response.url().to_string(), status: s },
        })
    }
}

/// A request that got no answer: the host is unreachable, refused, or timed out.
pub fn unreachable(e: &reqwest::Error) -> HubError {
    let endpoint = e.url().map_or_else(|| "the Hub".to_string(), |u| u.origin().ascii_serialization());
    HubError::Unreachable { endpoint, reason: chain(e) }
}

/// An error and its causes on one line (reqwest's own message alone says little).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
