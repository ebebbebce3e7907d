//! `bodega pull`, `list`, `rm` and `REPO[:QUANT]` resolution, driven through the real binary against
//! a fake Hub on loopback (plain HTTP through `HF_ENDPOINT`) and a temporary Hugging Face cache.
//! The fake Hub answers what huggingface_hub's clients ask: the model listing
//! (`/api/models/{repo}/revision/{rev}`) and `/{repo}/resolve/{rev}/{file}` with `ETag`,
//! `X-Linked-Etag`, `X-Repo-Commit` and ranges; it can cut a download halfway and logs every request.

mod common;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const COMMIT: &str = "aaaaaaaaaabbbbbbbbbbccccccccccdddddddddd";
const TOKEN: &str = "hf_test_token";

/// One file of a fake repository.
#[derive(Clone)]
struct FakeFile {
    path: String,
    bytes: Arc<Vec<u8>>,
    /// LFS files get `X-Linked-Etag` (their sha256) and `lfs.sha256` in the listing.
    lfs: bool,
    /// A wrong sha256 to put in the listing.
    listed_sha256: Option<String>,
}

impl FakeFile {
    fn new(path: &str, bytes: Vec<u8>) -> Self {
        let lfs = path.ends_with(".gguf") || path.ends_with(".safetensors");
        Self { path: path.into(), bytes: Arc::new(bytes), lfs, listed_sha256: None }
    }

    fn sha256(&self) -> String {
        format!("{:x}", Sha256::digest(self.bytes.as_slice()))
    }

    /// The Hub's etag: the sha256 for LFS files, a git-object-like id otherwise.
    fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.sha256()[..40].to_string()
        }
    }
}

#[derive(Default)]
struct FakeRepo {
    files: Vec<FakeFile>,
    gated: bool,
}

/// A logged request: method, path and `Range` header.
#[derive(Debug, Clone)]
struct Logged {
    method: String,
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct Hub {
    repos: Mutex<HashMap<String, FakeRepo>>,
    log: Mutex<Vec<Logged>>,
    /// Files whose next download stops halfway.
    cut: Mutex<HashSet<String>>,
}

impl Hub {
    fn add(&self, repo: &str, files: Vec<FakeFile>) {
        self.repos.lock().unwrap().insert(repo.into(), FakeRepo { files, gated: false });
    }

    fn downloads_of(&self, file: &str) -> Vec<Logged> {
        self.log.lock().unwrap().iter().filter(|l| l.method == "GET" && l.path.ends_with(file)).cloned().collect()
    }
}

fn authorized(repo: &FakeRepo, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {TOKEN}");
    !repo.gated || headers.get(header::AUTHORIZATION).is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

fn status(code: StatusCode, error_code: &str) -> Response {
    Response::builder().status(code).header("x-error-code", error_code).body(Body::empty()).unwrap()
}

async fn listing(
    State(hub): State<Arc<Hub>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repos = hub.repos.lock().unwrap();
    let Some(repo) = repos.get(&format!("{org}/{name}")) else { return status(StatusCode::NOT_FOUND, "RepoNotFound") };
    if !authorized(repo, &headers) {
        return status(StatusCode::UNAUTHORIZED, "GatedRepo");
    }
    if rev != "main" && rev != COMMIT {
        return status(StatusCode::NOT_FOUND, "RevisionNotFound");
    }
    let siblings: Vec<_> = repo
        .files
        .iter()
        .map(|f| {
            let size = f.bytes.len();
            match f.lfs {
                true => serde_json::json!({ "rfilename": f.path, "size": size, "lfs": {
                    "sha256": f.listed_sha256.clone().unwrap_or_else(|| f.sha256()), "size": size, "pointerSize": 130 } }),
                false => serde_json::json!({ "rfilename": f.path, "size": size }),
            }
        })
        .collect();
    let body = serde_json::json!({ "id": format!("{org}/{name}"), "sha": COMMIT, "siblings": siblings });
    Response::builder().header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    UrlPath((org, name, rev, file)): UrlPath<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    hub.log.lock().unwrap().push(Logged {
        method: method.to_string(),
        path: format!("/{org}/{name}/resolve/{rev}/{file}"),
        range: range.clone(),
    });
    let found = {
        let repos = hub.repos.lock().unwrap();
        let Some(repo) = repos.get(&format!("{org}/{name}")) else {
            return status(StatusCode::NOT_FOUND, "RepoNotFound");
        };
        if !authorized(repo, &headers) {
            return status(StatusCode::UNAUTHORIZED, "GatedRepo");
        }
        repo.files.iter().find(|f| f.path == file).cloned()
    };
    let Some(f) = found else { return status(StatusCode::NOT_FOUND, "EntryNotFound") };
    let len = f.bytes.len();
    let mut response = Response::builder()
        .header("x-repo-commit", COMMIT)
        .header(header::ETAG, format!("\"{}\"", f.etag()))
        .header(header::ACCEPT_RANGES, "bytes");
    if f.lfs {
        response = response.header("x-linked-etag", format!("\"{}\"", f.etag())).header("x-linked-size", len);
    }
    if method == Method::HEAD {
        return response.header(header::CONTENT_LENGTH, len).body(Body::empty()).unwrap();
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok())
        .filter(|&s| s < len);
    if let Some(start) = start {
        response = response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1));
    }
    let body = f.bytes[start.unwrap_or(0)..].to_vec();
    response = response.header(header::CONTENT_LENGTH, body.len());
    if hub.cut.lock().unwrap().remove(&file) {
        // Send half, then break the connection.
        let half = body[..body.len() / 2].to_vec();
        let stream =
            futures_util::stream::iter([Ok::<_, std::io::Error>(half)]).chain(futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(std::io::Error::other("cut"))
            }));
        return response.body(Body::from_stream(stream)).unwrap();
    }
    response.body(Body::from(body)).unwrap()
}

/// Starts a fake Hub on a free loopback port; it lives as long as the test process.
fn start_hub() -> (Arc<Hub>, String) {
    let hub = Arc::new(Hub::default());
    let app = Router::new()
        .route("/api/models/{org}/{name}/revision/{rev}", get(listing))
        .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
        .with_state(hub.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (hub, endpoint)
}

/// A temporary `HF_HOME` and `BODEGA_HOME`, and a fake Hub.
struct Sandbox {
    dir: tempfile::TempDir,
    hub: Arc<Hub>,
    endpoint: String,
}

impl Sandbox {
    fn new() -> Self {
        let (hub, endpoint) = start_hub();
        Self { dir: tempfile::tempdir().unwrap(), hub, endpoint }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("hf/hub")
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache().join(format!("models--{}", repo.replace('/', "--")))
    }

    fn snapshot(&self, repo: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(COMMIT)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bodega"));
        for var in
            ["BODEGA_LOG", "HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"]
        {
            cmd.env_remove(var);
        }
        cmd.env("HF_HOME", self.dir.path().join("hf"))
            .env("BODEGA_HOME", self.dir.path().join("bodega"))
            .env("HF_ENDPOINT", &self.endpoint)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn bodega(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "exit {:?}, stderr: {}", o.status.code(), stderr(o));
}

/// Exit 1, one `error:` line containing `needle`, then a `hint:` line; nothing on stdout.
fn assert_error_with_hint(o: &Output, needle: &str) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "stderr: {err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "expected '{needle}' in: {err}");
    assert!(lines[1].starts_with("hint: "), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(o));
    err
}

/// A few KB of fake GGUF bytes, different per name (pull does not load them).
fn fake_gguf(name: &str) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(name.bytes().cycle().take(4096));
    bytes
}

const MULTI: &str = "test/Multi-GGUF";

fn add_multi_quant_repo(hub: &Hub) {
    hub.add(
        MULTI,
        vec![
            FakeFile::new("README.md", b"# multi".to_vec()),
            FakeFile::new("multi-Q2_K.gguf", fake_gguf("q2")),
            FakeFile::new("multi-Q4_K_M.gguf", fake_gguf("q4")),
            FakeFile::new("multi-Q8_0.gguf", fake_gguf("q8")),
        ],
    );
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn pull_takes_the_gguf_file_of_the_quant_tag_case_insensitively_in_the_hf_cache_layout() {
    let s = Sandbox::new();
    add_multi_quant_repo(&s.hub);
    let o = s.bodega(&["pull", &format!("{MULTI}:q8_0")]);
    assert_ok(&o);
    let pointer = s.snapshot(MULTI).join("multi-Q8_0.gguf");
    assert_eq!(stdout(&o).trim(), pointer.display().to_string());
    assert_eq!(std::fs::read(&pointer).unwrap(), fake_gguf("q8"));
    let sha = FakeFile::new("x.gguf", fake_gguf("q8")).sha256();
    assert_eq!(std::fs::read_link(&pointer).unwrap(), Path::new("../../blobs").join(&sha));
    assert_eq!(std::fs::read_to_string(s.repo_dir(MULTI).join("refs/main")).unwrap(), COMMIT);
    assert_eq!(files_under(&s.repo_dir(MULTI).join("blobs")), [sha]);
    assert!(s.hub.downloads_of("multi-Q4_K_M.gguf").is_empty());

    // No tag: Q4_K_M, the documented default. The Q8_0 file is reused, not fetched again.
    assert_ok(&s.bodega(&["pull", MULTI]));
    assert!(s.snapshot(MULTI).join("multi-Q4_K_M.gguf").is_file());
    assert_ok(&s.bodega(&["pull", &format!("{MULTI}:Q8_0")]));
    assert_eq!(s.hub.downloads_of("multi-Q8_0.gguf").len(), 1);
}

#[test]
fn a_quant_the_repository_lacks_lists_the_available_ones() {
    let s = Sandbox::new();
    add_multi_quant_repo(&s.hub);
    let err = assert_error_with_hint(&s.bodega(&["pull", &format!("{MULTI}:Q5_K_M")]), "matches the quant 'Q5_K_M'");
    assert!(err.contains("available: Q2_K, Q4_K_M, Q8_0"), "{err}");
    assert!(err.contains(&format!("bodega pull {MULTI}:Q2_K")), "{err}");
}

#[test]
fn a_split_gguf_is_fetched_whole() {
    let s = Sandbox::new();
    let repo = "test/Big-GGUF";
    s.hub.add(
        repo,
        vec![
            FakeFile::new("Q4_K_M/Big-Q4_K_M-00001-of-00002.gguf", fake_gguf("p1")),
            FakeFile::new("Q4_K_M/Big-Q4_K_M-00002-of-00002.gguf", fake_gguf("p2")),
            FakeFile::new("Big-Q8_0.gguf", fake_gguf("q8")),
        ],
    );
    let o = s.bodega(&["pull", &format!("{repo}:Q4_K_M")]);
    assert_ok(&o);
    assert_eq!(
        files_under(&s.snapshot(repo)),
        ["Q4_K_M/Big-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/Big-Q4_K_M-00002-of-00002.gguf"]
    );
    assert_eq!(stdout(&o).trim(), s.snapshot(repo).join("Q4_K_M/Big-Q4_K_M-00001-of-00002.gguf").display().to_string());
    assert_eq!(std::fs::read(s.snapshot(repo).join("Q4_K_M/Big-Q4_K_M-00002-of-00002.gguf")).unwrap(), fake_gguf("p2"));
}

/// A safetensors header with one tensor of `n` BF16 elements, and its data.
fn fake_safetensors(name: &str, n: usize) -> Vec<u8> {
    let header = format!(r#"{{"{name}":{{"dtype":"BF16","shape":[{n}],"data_offsets":[0,{}]}}}}"#, 2 * n);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.bytes());
    bytes.extend(std::iter::repeat_n(0u8, 2 * n));
    bytes
}

#[test]
fn pull_fetches_a_sharded_safetensors_model_that_list_describes_and_run_reads() {
    let s = Sandbox::new();
    let repo = "test/Tiny-Instruct";
    let index = r#"{"metadata":{"total_size":40},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    s.hub.add(
        repo,
        vec![
            FakeFile::new(".gitattributes", b"*.safetensors filter=lfs".to_vec()),
            FakeFile::new("README.md", b"# tiny".to_vec()),
            FakeFile::new("config.json", br#"{"model_type":"llama"}"#.to_vec()),
            FakeFile::new("generation_config.json", br#"{"temperature":0.6}"#.to_vec()),
            FakeFile::new("tokenizer.json", b"{}".to_vec()),
            FakeFile::new("tokenizer_config.json", b"{}".to_vec()),
            FakeFile::new("chat_template.jinja", b"{{ messages }}".to_vec()),
            FakeFile::new("model.safetensors.index.json", index.as_bytes().to_vec()),
            FakeFile::new("model-00001-of-00002.safetensors", fake_safetensors("a", 10)),
            FakeFile::new("model-00002-of-00002.safetensors", fake_safetensors("b", 10)),
            FakeFile::new("pytorch_model.bin", b"not wanted".to_vec()),
        ],
    );
    let o = s.bodega(&["pull", repo]);
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), s.snapshot(repo).display().to_string());
    assert_eq!(
        files_under(&s.snapshot(repo)),
        [
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    );
    let listed: serde_json::Value = serde_json::from_str(&stdout(&s.bodega(&["list", "--json"]))).unwrap();
    let model = &listed["models"].as_array().unwrap()[0];
    assert_eq!((model["id"].as_str(), model["format"].as_str()), (Some(repo), Some("safetensors")));
    assert_eq!((model["quant"].as_str(), model["parameters"].as_u64()), (Some("BF16"), Some(20)));
    assert_eq!(model["architecture"].as_str(), Some("llama"));

    // The folder is read as a model: this fake one's config.json lacks the shapes, and says so.
    let o = s.bodega(&["--no-pull", "run", repo, "hi"]);
    assert_error_with_hint_or_plain(&o, "config.json has no `hidden_size`");
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let s = Sandbox::new();
    add_multi_quant_repo(&s.hub);
    s.hub.cut.lock().unwrap().insert("multi-Q4_K_M.gguf".into());
    let reference = format!("{MULTI}:Q4_K_M");
    let err = assert_error_with_hint(&s.bodega(&["pull", &reference]), "stopped at");
    assert!(err.contains("run the same command again"), "{err}");
    let bytes = fake_gguf("q4");
    let sha = FakeFile::new("x.gguf", bytes.clone()).sha256();
    let partial = s.repo_dir(MULTI).join("blobs").join(format!("{sha}.incomplete"));
    let kept = std::fs::metadata(&partial).expect("the partial download is kept").len();
    assert_eq!(kept, bytes.len() as u64 / 2);
    assert!(!s.snapshot(MULTI).join("multi-Q4_K_M.gguf").exists());

    assert_ok(&s.bodega(&["pull", &reference]));
    let downloads = s.hub.downloads_of("multi-Q4_K_M.gguf");
    assert_eq!(downloads.len(), 2, "{downloads:?}");
    assert_eq!(downloads[0].range, None);
    assert_eq!(downloads[1].range.as_deref(), Some(format!("bytes={kept}-").as_str()));
    assert_eq!(std::fs::read(s.snapshot(MULTI).join("multi-Q4_K_M.gguf")).unwrap(), bytes);
    assert!(!partial.exists());
}

#[test]
fn a_sha256_mismatch_is_an_error_and_leaves_nothing_in_the_cache() {
    let s = Sandbox::new();
    let mut file = FakeFile::new("bad-Q4_K_M.gguf", fake_gguf("bad"));
    file.listed_sha256 = Some("0".repeat(64));
    s.hub.add("test/Bad-GGUF", vec![file]);
    let err = assert_error_with_hint(&s.bodega(&["pull", "test/Bad-GGUF"]), "does not match the Hub's");
    assert!(err.contains(&"0".repeat(64)), "{err}");
    assert_eq!(files_under(&s.repo_dir("test/Bad-GGUF").join("blobs")), Vec::<String>::new());
    assert!(!s.snapshot("test/Bad-GGUF").join("bad-Q4_K_M.gguf").exists());
}

#[test]
fn missing_and_gated_repositories_say_what_to_do() {
    let s = Sandbox::new();
    let err = assert_error_with_hint(&s.bodega(&["pull", "test/Nope-GGUF"]), "'test/Nope-GGUF' was not found");
    assert!(err.contains("check the spelling"), "{err}");

    s.hub.add("test/Gated-GGUF", vec![FakeFile::new("g-Q4_K_M.gguf", fake_gguf("g"))]);
    s.hub.repos.lock().unwrap().get_mut("test/Gated-GGUF").unwrap().gated = true;
    let err = assert_error_with_hint(&s.bodega(&["pull", "test/Gated-GGUF"]), "HTTP 401");
    assert!(err.contains("HF_TOKEN") && err.contains("huggingface-cli login"), "{err}");

    // The token, from HF_TOKEN or from the file `huggingface-cli login` writes.
    assert_ok(&s.command(&["pull", "test/Gated-GGUF"]).env("HF_TOKEN", TOKEN).output().unwrap());
    std::fs::remove_dir_all(s.cache()).unwrap();
    std::fs::create_dir_all(s.dir.path().join("hf")).unwrap();
    std::fs::write(s.dir.path().join("hf/token"), format!("{TOKEN}\n")).unwrap();
    assert_ok(&s.bodega(&["pull", "test/Gated-GGUF"]));
}

#[test]
fn a_hostile_listing_is_refused_and_nothing_is_written_outside_the_cache() {
    let s = Sandbox::new();
    for (i, name) in ["../../escape-Q4_K_M.gguf", "/tmp/escape-Q4_K_M.gguf"].into_iter().enumerate() {
        let repo = format!("test/Hostile{i}-GGUF");
        s.hub.add(&repo, vec![FakeFile::new(name, fake_gguf("x")), FakeFile::new("ok-Q8_0.gguf", fake_gguf("ok"))]);
        assert_error_with_hint_or_plain(&s.bodega(&["pull", &repo]), "is not a safe file path");
    }
    assert!(!s.dir.path().join("hf/escape-Q4_K_M.gguf").exists());
    assert!(!Path::new("/tmp/escape-Q4_K_M.gguf").exists());
    assert!(s.hub.downloads_of(".gguf").is_empty());
}

/// Exit 1 with one `error:` line containing `needle` (a `hint:` line is optional).
fn assert_error_with_hint_or_plain(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "expected '{needle}' in: {err}");
    assert!(err.lines().all(|l| l.starts_with("error: ") || l.starts_with("hint: ")), "stderr: {err}");
}

#[test]
fn an_unreachable_hub_is_a_clear_error() {
    let s = Sandbox::new();
    let o = s.command(&["pull", MULTI]).env("HF_ENDPOINT", "http://127.0.0.1:9").output().unwrap();
    assert_error_with_hint(&o, "cannot reach the Hub at http://127.0.0.1:9");
}

/// Puts the demo SmolLM2 into `$BODEGA_HOME/models` (as the fetch script does) and, as `repo`, into the
/// Hugging Face cache, linked rather than copied.
fn install_demo(s: &Sandbox, repo: &str) -> PathBuf {
    let demo = common::smollm2_path();
    let home = s.dir.path().join("bodega/models");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(&demo, home.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let blobs = s.repo_dir(repo).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::os::unix::fs::symlink(&demo, blobs.join("0123abcd")).unwrap();
    std::fs::create_dir_all(s.snapshot(repo)).unwrap();
    let pointer = s.snapshot(repo).join("SmolLM2-135M-Instruct-Q4_1.gguf");
    std::os::unix::fs::symlink("../../blobs/0123abcd", &pointer).unwrap();
    std::fs::create_dir_all(s.repo_dir(repo).join("refs")).unwrap();
    std::fs::write(s.repo_dir(repo).join("refs/main"), COMMIT).unwrap();
    pointer
}

#[test]
fn run_finds_a_cached_repo_quant_without_the_network() {
    let s = Sandbox::new();
    install_demo(&s, "test/Smol-GGUF");
    let args = ["run", "test/Smol-GGUF:q4_1", "Hi", "--temperature", "0", "--max-tokens", "4", "--kv-memory", "64M"];
    let o = s.command(&args).env("HF_ENDPOINT", "http://127.0.0.1:9").output().unwrap();
    assert_ok(&o);
    assert!(!stdout(&o).trim().is_empty());
    assert!(stderr(&o).is_empty(), "stderr: {}", stderr(&o));
}

#[test]
fn no_pull_and_hf_hub_offline_never_download() {
    let s = Sandbox::new();
    add_multi_quant_repo(&s.hub);
    let reference = format!("{MULTI}:Q4_K_M");
    let err =
        assert_error_with_hint(&s.bodega(&["--no-pull", "run", &reference, "hi"]), "not in the Hugging Face cache");
    assert!(err.contains("--no-pull") && err.contains(&format!("bodega pull {reference}")), "{err}");
    let o = s.command(&["run", &reference, "hi"]).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(assert_error_with_hint(&o, "not in the Hugging Face cache").contains("HF_HUB_OFFLINE=1"));
    let o = s.command(&["pull", &reference]).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert_error_with_hint(&o, "HF_HUB_OFFLINE=1");
    assert!(s.hub.log.lock().unwrap().is_empty());
}

#[test]
fn run_pulls_a_missing_repo_with_a_notice_then_generates() {
    let s = Sandbox::new();
    let demo = std::fs::read(common::smollm2_path()).unwrap();
    s.hub.add("test/Smol-GGUF", vec![FakeFile::new("SmolLM2-135M-Instruct-Q4_1.gguf", demo)]);
    let args = ["run", "test/Smol-GGUF", "Hi", "--temperature", "0", "--max-tokens", "4", "--kv-memory", "64M"];
    let o = s.bodega(&args);
    assert_ok(&o);
    assert!(!stdout(&o).trim().is_empty());
    assert!(stderr(&o).starts_with("test/Smol-GGUF is not in the Hugging Face cache: pulling it"), "{}", stderr(&o));
    // The second time it is cached: no notice, no request.
    let requests = s.hub.log.lock().unwrap().len();
    let o = s.bodega(&args);
    assert_ok(&o);
    assert!(stderr(&o).is_empty(), "stderr: {}", stderr(&o));
    assert_eq!(s.hub.log.lock().unwrap().len(), requests);
}

fn validate_list_json(doc: &serde_json::Value) {
    let path = format!("{}/docs/list-schema.json", env!("CARGO_MANIFEST_DIR"));
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator.iter_errors(doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "list --json does not match docs/list-schema.json:\n{}", errors.join("\n"));
}

#[test]
fn list_shows_demo_and_cached_models_and_rm_removes_one_quant_then_the_repo() {
    let s = Sandbox::new();
    add_multi_quant_repo(&s.hub);
    install_demo(&s, "test/Smol-GGUF");
    assert_ok(&s.bodega(&["pull", &format!("{MULTI}:Q8_0")]));
    assert_ok(&s.bodega(&["pull", &format!("{MULTI}:Q2_K")]));

    let o = s.bodega(&["list", "--json"]);
    assert_ok(&o);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    validate_list_json(&doc);
    let ids: Vec<&str> = doc["models"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["smollm2-135m", "test/Multi-GGUF:Q2_K", "test/Multi-GGUF:Q8_0", "test/Smol-GGUF:Q4_1"]);
    let demo = &doc["models"][0];
    assert_eq!((demo["quant"].as_str(), demo["source"].as_str()), (Some("Q4_1"), Some("bodega-home")));
    assert!(demo["parameters"].as_u64().unwrap() > 100_000_000, "{demo}");
    let cached = &doc["models"][3];
    assert_eq!((cached["repo"].as_str(), cached["revision"].as_str()), (Some("test/Smol-GGUF"), Some(COMMIT)));
    assert_eq!(cached["parameters"], demo["parameters"]);

    let table = stdout(&s.bodega(&["list"]));
    for needle in ["id", "parameters", "smollm2-135m", "test/Multi-GGUF:Q8_0", "Q4_1"] {
        assert!(table.contains(needle), "no {needle} in:\n{table}");
    }

    // rm asks first; without a terminal it needs -y.
    assert_eq!(s.bodega(&["rm", "test/Multi-GGUF:Q8_0"]).status.code(), Some(2));
    assert_ok(&s.bodega(&["rm", "test/Multi-GGUF:q8_0", "-y"]));
    assert_eq!(files_under(&s.snapshot(MULTI)), ["multi-Q2_K.gguf"]);
    assert_eq!(files_under(&s.repo_dir(MULTI).join("blobs")).len(), 1);
    assert_ok(&s.bodega(&["rm", MULTI, "-y"]));
    assert!(!s.repo_dir(MULTI).exists());
    assert_error_with_hint(&s.bodega(&["rm", MULTI, "-y"]), "is not in the Hugging Face cache");

    // A blob that links out of the cache loses its link, never its target.
    let linked = "test/Linked-GGUF";
    let outside = s.dir.path().join("outside.gguf");
    std::fs::write(&outside, b"q4").unwrap();
    let blobs = s.repo_dir(linked).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(s.snapshot(linked)).unwrap();
    std::os::unix::fs::symlink(&outside, blobs.join("1234ab")).unwrap();
    std::fs::write(blobs.join("5678ef"), b"q8").unwrap();
    std::os::unix::fs::symlink("../../blobs/1234ab", s.snapshot(linked).join("l-Q4_1.gguf")).unwrap();
    std::os::unix::fs::symlink("../../blobs/5678ef", s.snapshot(linked).join("l-Q8_0.gguf")).unwrap();
    assert_ok(&s.bodega(&["rm", &format!("{linked}:Q4_1"), "-y"]));
    assert_eq!(files_under(&blobs), ["5678ef"]);
    assert_eq!(files_under(&s.snapshot(linked)), ["l-Q8_0.gguf"]);
    assert!(outside.is_file());

    let err =
        assert_error_with_hint(&s.bodega(&["rm", "smollm2-135m", "-y"]), "removes models from the Hugging Face cache");
    assert!(err.contains("hint: delete the file itself: rm "), "{err}");
    assert!(s.dir.path().join("bodega/models/SmolLM2-135M-Instruct.Q4_1.gguf").exists());
}
