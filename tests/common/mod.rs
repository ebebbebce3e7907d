//! Shared by the integration tests: the demo model, loaded once per test binary, and the fixture.

#![allow(dead_code)]

use bodega::model::load::gguf::GgufFile;
use bodega::model::Model;
use bodega::tokenizer::Tokenizer;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// A demo model's file; fails with the way to get it when it is missing.
pub fn demo_path(alias: &str) -> PathBuf {
    match bodega::hub::resolve(alias, bodega::hub::Fetch::Never { why: "tests use the demo models" }) {
        Ok(path) => path,
        Err(e) => panic!("{e}\nThe tests need the demo models: run scripts/fetch-test-models.sh first."),
    }
}

/// The SmolLM2 demo model's file.
pub fn smollm2_path() -> PathBuf {
    demo_path("smollm2-135m")
}

/// The demo model and its tokenizer, loaded once per test binary.
pub struct Demo {
    pub model: Mutex<Box<dyn Model>>,
    pub tokenizer: Tokenizer,
}

pub fn smollm2() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| load_demo("smollm2-135m"))
}

/// The Gemma 3 demo model and its tokenizer, loaded once per test binary.
pub fn gemma3() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| load_demo("gemma3-270m"))
}

fn load_demo(alias: &str) -> Demo {
    let mut file = GgufFile::open(&demo_path(alias)).expect("open the demo model");
    let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer");
    let model = bodega::model::from_gguf(&mut file, &candle_core::Device::Cpu).expect("model");
    Demo { model: Mutex::new(model), tokenizer }
}

/// A transformers reference fixture (`smollm2` or `gemma3`).
pub fn fixture(model: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/reference-{model}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("read fixture")).expect("parse fixture")
}

/// The SmolLM2 reference fixture.
pub fn reference() -> serde_json::Value {
    fixture("smollm2")
}

/// A JSON array of integers as token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// The fixture case with this name.
pub fn reference_case(name: &str) -> serde_json::Value {
    let all = reference();
    all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// A `bodega serve-lite` child process on a free port, killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts serve-lite on the demo SmolLM2 with a small KV pool and `extra` flags; returns once it
/// has printed the address it listens on.
pub fn serve_lite(extra: &[&str]) -> Server {
    smollm2_path();
    serve("smollm2-135m", extra)
}

/// `bodega serve-lite MODEL` on a free port (the demo models are fetched by `smollm2_path`).
pub fn serve(model: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bodega"))
        .args(["serve-lite", model, "--port", "0", "--kv-memory", "256M"])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let port = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in startup line {line:?}"));
    Server { child, port }
}

/// A greedy request for `max_tokens` tokens that ignores end-of-sequence, so that every comparison
/// runs to the same length.
pub fn greedy(prompt_ids: Vec<u32>, max_tokens: usize) -> bodega::engine::Request {
    use bodega::engine::{Request, SamplingParams, StopConditions};
    Request {
        prompt_ids,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        stop: StopConditions { max_tokens: Some(max_tokens), ignore_eos: true, ..StopConditions::default() },
    }
}

/// Submits everything at once and returns each request's generated ids (and cached tokens).
pub fn run_all(engine: &bodega::engine::Engine, requests: Vec<bodega::engine::Request>) -> Vec<(Vec<u32>, usize)> {
    let handles: Vec<_> = requests.into_iter().map(|r| engine.submit(r).unwrap()).collect();
    handles
        .iter()
        .map(|h| {
            let (c, _) = h.wait().unwrap();
            (c.generated_ids, c.usage.cached_tokens)
        })
        .collect()
}

/// The metadata of a step that only writes keys and values, into `slots` (a test filling a cache).
pub fn writes(slots: &[u32]) -> bodega::ops::AttentionMetadata {
    bodega::ops::AttentionMetadata { slot_mapping: slots.to_vec(), ..Default::default() }
}

/// One paged-attention problem for the kernel tests: shape, sequences (context length after the
/// step, query length) and window (0: none).
pub struct AttentionCase {
    pub heads: usize,
    pub kv_heads: usize,
    pub dim: usize,
    pub seqs: Vec<(usize, usize)>,
    pub window: usize,
}
