//! Speculative decoding with the real SmolLM2 model on the CPU: greedy replies are token for token
//! the replies without speculation (n-gram guesses, the model itself as its draft, and the model cut
//! to its first layers as weaker drafts), alone and among 16 sequences; sampled replies follow the
//! target's distribution (a chi-square test); every KV block comes back after many rejections; and
//! the command line reports the counts and refuses a draft with another tokenizer.

mod common;

use bodega::engine::speculative::draft::DraftModel;
use bodega::engine::speculative::ngram::PromptLookup;
use bodega::engine::speculative::{Proposer, Speculation};
use bodega::engine::{Engine, EngineConfig, Request, SamplingParams, StopConditions};
use bodega::model::load::gguf::GgufFile;
use bodega::model::load::{LoadOptions, ModelFiles};
use bodega::ops::PagedKvCache;
use candle_core::{DType, Device};
use serde_json::Value;
use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which proposer an engine under test gets.
#[derive(Debug, Clone, Copy)]
enum Spec {
    Off,
    Ngram,
    /// The demo model as its own draft, cut to its first N layers when given.
    Draft(Option<usize>),
}

fn load_model(layers: Option<usize>) -> Box<dyn bodega::model::Model> {
    let mut files = ModelFiles::open(&common::smollm2_path()).unwrap();
    let options = LoadOptions::for_device(&Device::Cpu, None, None);
    bodega::model::load_layers(&mut files, options, &Device::Cpu, layers).unwrap()
}

/// An engine over `kv_blocks` blocks, speculating with up to 4 guesses while at most 64 sequences
/// decode (so that 16 sequences do speculate).
fn engine(spec: Spec, kv_blocks: usize) -> Engine {
    let file = GgufFile::open(&common::smollm2_path()).unwrap();
    let tokenizer = Arc::new(bodega::tokenizer::Tokenizer::from_gguf(&file).unwrap());
    let proposer: Option<Box<dyn Proposer>> = match spec {
        Spec::Off => None,
        Spec::Ngram => Some(Box::new(PromptLookup)),
        Spec::Draft(layers) => Some(Box::new(DraftModel::new(load_model(layers), Device::Cpu))),
    };
    let speculation = proposer.map(|proposer| Speculation { proposer, max_tokens: 4, max_batch: 64 });
    let bytes = (kv_blocks * PagedKvCache::bytes_per_block(30, 16, 3, 64, DType::F32)) as u64;
    let config = EngineConfig { kv_memory: Some(bytes), ..EngineConfig::default() };
    Engine::start_with(load_model(None), tokenizer, Device::Cpu, config, speculation).unwrap()
}

fn request(prompt_ids: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> Request {
    Request { prompt_ids, sampling, stop: StopConditions { max_tokens: Some(max_tokens), ..StopConditions::default() } }
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, ..SamplingParams::default() }
}

/// A chat prompt whose reply copies most of it: where n-gram guesses are right.
fn copy_prompt() -> Vec<u32> {
    let text = "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the quiet river bank.";
    common::smollm2().tokenizer.encode_chat(&[bodega::tokenizer::Message::new("user", text)]).unwrap().1
}

/// The copy prompt and 15 fixture prompts of 1 to 293 tokens.
fn mixed_requests(max_tokens: usize) -> Vec<Request> {
    let fixture = common::reference();
    let prompts = fixture["cases"].as_array().unwrap().iter().map(|c| common::ids(&c["prompt_ids"]));
    std::iter::once(copy_prompt()).chain(prompts.take(15)).map(|p| request(p, max_tokens, greedy())).collect()
}

/// Submits everything at once; each request's generated ids.
fn run_all(engine: &Engine, requests: &[Request]) -> Vec<Vec<u32>> {
    let handles: Vec<_> = requests.iter().map(|r| engine.submit(r.clone()).unwrap()).collect();
    handles.iter().map(|h| h.wait().unwrap().0.generated_ids).collect()
}

fn assert_no_leak(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.stats().blocks.used != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = engine.stats();
    assert_eq!(stats.blocks.used, 0, "blocks leaked: {stats:?}");
    assert_eq!((stats.running, stats.waiting), (0, 0));
}

/// Greedy replies with each of `specs` equal those without, for the copy prompt alone and for all
/// 16 together; returns each engine's (proposed, accepted) guesses.
fn assert_greedy_identity(specs: &[Spec]) -> Vec<(u64, u64)> {
    let requests = mixed_requests(20);
    let plain = run_all(&engine(Spec::Off, 384), &requests);
    let mut counts = Vec::new();
    for &spec in specs {
        let speculating = engine(spec, 384);
        let alone = run_all(&speculating, &requests[..1]);
        assert_eq!(alone[0], plain[0], "{spec:?}: the copy prompt alone differs with speculation");
        let together = run_all(&speculating, &requests);
        for (i, (p, s)) in plain.iter().zip(&together).enumerate() {
            assert_eq!(p, s, "{spec:?}: request {i} of 16 differs with speculation");
        }
        assert_no_leak(&speculating);
        let c = speculating.stats().speculation;
        assert!(c.proposed > 0, "{spec:?}: nothing was proposed");
        counts.push((c.proposed, c.accepted));
    }
    counts
}

#[test]
fn greedy_with_ngram_guesses_is_token_for_token_the_plain_reply() {
    let [(proposed, accepted)] = assert_greedy_identity(&[Spec::Ngram])[..] else { unreachable!() };
    assert!(accepted > 0, "no n-gram guess was accepted ({proposed} proposed)");
}

#[test]
fn greedy_with_the_model_as_its_own_draft_accepts_every_guess() {
    let [(proposed, accepted)] = assert_greedy_identity(&[Spec::Draft(None)])[..] else { unreachable!() };
    assert_eq!(accepted, proposed, "the target rejected its own greedy guesses");
}

/// The demo model cut to its first few layers: a real draft whose guesses the target rejects (on
/// these prompts, every one: SmolLM2-135M's early layers do not yet predict its output).
const FEW_DRAFT_LAYERS: usize = 4;
/// Cut to 24 of its 30 layers, the target accepts some of its greedy guesses and rejects others.
const PARTLY_RIGHT_DRAFT_LAYERS: usize = 24;
/// For the sampling test's counting prompt, a draft needs 29 layers for the target to accept some
/// guesses (24 layers: none of 500).
const SAMPLING_DRAFT_LAYERS: usize = 29;

#[test]
fn greedy_with_weaker_drafts_rejects_guesses_and_changes_nothing() {
    let drafts = [Spec::Draft(Some(FEW_DRAFT_LAYERS)), Spec::Draft(Some(PARTLY_RIGHT_DRAFT_LAYERS))];
    let [(few_proposed, few_accepted), (proposed, accepted)] = assert_greedy_identity(&drafts)[..] else {
        unreachable!()
    };
    assert!(few_accepted < few_proposed, "the {FEW_DRAFT_LAYERS}-layer draft was never wrong");
    assert!(accepted > 0 && accepted < proposed, "expected some rejections: {accepted} of {proposed} accepted");
}

/// Chi-square critical values at significance 0.001 for 1..=9 degrees of freedom.
const CHI2_CRITICAL_0_001: [f64; 9] = [10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877];

/// Temperature 1.5 over the 3 likeliest tokens: few outcomes, none negligible.
fn sampling(seed: u64) -> SamplingParams {
    SamplingParams { temperature: 1.5, top_k: 3, top_p: 1.0, min_p: 0.0, seed, ..SamplingParams::default() }
}

/// The sampler's distribution of the token after `prompt`, from the plain engine's log-probabilities.
fn next_token_distribution(engine: &Engine, prompt: &[u32]) -> Vec<(u32, f64)> {
    let mut params = sampling(0);
    params.logprobs = Some(3);
    let handle = engine.submit(request(prompt.to_vec(), 1, params)).unwrap();
    let top = loop {
        match handle.recv().expect("a token") {
            bodega::engine::Event::Token { logprobs: Some(lp), .. } => break lp.top,
            bodega::engine::Event::Token { .. } => continue,
            other => panic!("no logprobs: {other:?}"),
        }
    };
    let weights: Vec<f64> = top.iter().map(|&(_, lp)| ((lp - top[0].1) as f64 / 1.5).exp()).collect();
    let sum: f64 = weights.iter().sum();
    top.iter().zip(weights).map(|(&(id, _), w)| (id, w / sum)).collect()
}

/// Samples `n` two-token continuations of `prompt` (seeds 0..n, 3 tokens asked so that the second
/// is verified) with `spec`, and checks the joint distribution of the first two tokens against the
/// target's own with a chi-square test at significance 0.001.
fn assert_sampling_is_exact(spec: Spec, n: usize) {
    let prompt = common::smollm2()
        .tokenizer
        .encode_raw("one two three four one two three four one two three four one two three four one two")
        .unwrap();
    let plain = engine(Spec::Off, 256);
    let mut expected: HashMap<(u32, u32), f64> = HashMap::new();
    for (first, p1) in next_token_distribution(&plain, &prompt) {
        let then: Vec<u32> = prompt.iter().copied().chain([first]).collect();
        for (second, p2) in next_token_distribution(&plain, &then) {
            expected.insert((first, second), p1 * p2 * n as f64);
        }
    }
    let speculating = engine(spec, 256);
    let handles: Vec<_> = (0..n as u64)
        .map(|seed| {
            let mut r = request(prompt.clone(), 3, sampling(seed));
            r.stop.ignore_eos = true;
            speculating.submit(r).unwrap()
        })
        .collect();
    let mut observed: HashMap<(u32, u32), f64> = HashMap::new();
    let mut with_guesses = 0;
    for h in handles {
        let (done, _) = h.wait().unwrap();
        let ids = &done.generated_ids;
        *observed.entry((ids[0], ids[1])).or_default() += 1.0;
        with_guesses += usize::from(done.speculative.is_some_and(|s| s.proposed > 0));
    }
    assert_no_leak(&speculating);
    let counts = speculating.stats().speculation;
    assert!(with_guesses * 2 > n, "{spec:?}: only {with_guesses} of {n} requests had guesses");
    assert!(counts.accepted > 0 && counts.accepted < counts.proposed, "{spec:?}: {counts:?}: both outcomes needed");
    for pair in observed.keys() {
        assert!(expected.contains_key(pair), "{spec:?}: {pair:?} is impossible for the target");
    }
    // Cells expected fewer than 5 times are pooled, as the test requires.
    let (mut small_expected, mut small_observed, mut chi2, mut cells) = (0.0, 0.0, 0.0, 0);
    for (pair, &e) in &expected {
        let o = observed.get(pair).copied().unwrap_or(0.0);
        if e < 5.0 {
            small_expected += e;
            small_observed += o;
        } else {
            chi2 += (o - e) * (o - e) / e;
            cells += 1;
        }
    }
    if small_expected > 0.0 {
        chi2 += (small_observed - small_expected).powi(2) / small_expected;
        cells += 1;
    }
    let critical = CHI2_CRITICAL_0_001[cells - 2];
    assert!(chi2 < critical, "{spec:?}: chi-square {chi2:.2} over {cells} cells exceeds {critical} (p < 0.001)");
}

#[test]
fn sampling_with_ngram_guesses_follows_the_target_distribution() {
    assert_sampling_is_exact(Spec::Ngram, 500);
}

#[test]
fn sampling_with_a_draft_model_follows_the_target_distribution() {
    assert_sampling_is_exact(Spec::Draft(Some(SAMPLING_DRAFT_LAYERS)), 500);
}

#[test]
fn every_block_comes_back_after_many_rejections_and_preemptions() {
    // 40 blocks for 24 sequences of up to 340 tokens: preemption, and a 2-layer draft whose guesses
    // are all rejected.
    let engine = engine(Spec::Draft(Some(2)), 40);
    let fixture = common::reference();
    let prompts: Vec<Vec<u32>> =
        fixture["cases"].as_array().unwrap().iter().map(|c| common::ids(&c["prompt_ids"])).collect();
    let requests: Vec<Request> = (0..24)
        .map(|i| {
            let params = SamplingParams { temperature: 1.0, seed: i as u64, ..SamplingParams::default() };
            let mut r = request(prompts[i % prompts.len()].clone(), 48, params);
            r.stop.ignore_eos = true;
            r
        })
        .collect();
    let replies = run_all(&engine, &requests);
    assert!(replies.iter().all(|r| r.len() == 48));
    let stats = engine.stats();
    assert!(stats.speculation.proposed - stats.speculation.accepted >= 50, "too few rejections: {stats:?}");
    assert!(stats.preemptions > 0, "the budget did not force preemption");
    assert_no_leak(&engine);
    // The pool is whole: a request as large as the context still fits.
    let all = engine.context_length() - 1;
    let (done, _) = engine.submit(request(vec![1; all - 8], 8, greedy())).unwrap().wait().unwrap();
    assert_eq!(done.generated_ids.len(), 8);
    assert_no_leak(&engine);
}

fn bodega(args: &[&str]) -> Output {
    common::smollm2_path();
    Command::new(env!("CARGO_BIN_EXE_bodega")).env_remove("BODEGA_LOG").args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_draft_with_another_tokenizer_is_refused_clearly() {
    common::demo_path("gemma3-270m");
    let out = bodega(&["run", "smollm2-135m", "--speculative", "draft=gemma3-270m", "--max-tokens", "4", "Hi"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("error: the draft model "), "stderr: {err}");
    assert!(err.contains("cannot propose for the target"), "stderr: {err}");
    assert!(err.contains("\nhint: a draft must share the target's tokenizer"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

#[test]
fn speculation_flags_are_checked() {
    let out = bodega(&["run", "smollm2-135m", "--speculative", "ngram", "--draft-layers", "2", "Hi"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("--draft-layers needs --speculative draft=MODEL"), "{}", stderr(&out));
    let out = bodega(&["run", "smollm2-135m", "--speculative", "medusa", "Hi"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("'medusa' is neither ngram nor draft=MODEL"), "{}", stderr(&out));
}

#[test]
fn run_json_reports_guesses_and_the_same_tokens() {
    let prompt = "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog.";
    let args = ["run", "smollm2-135m", "--json", "--temperature", "0", "--max-tokens", "24", "--kv-memory", "64M"];
    let json = |extra: &[&str]| -> Value {
        let out = bodega(&[&args[..], extra, &[prompt]].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plain = json(&[]);
    assert!(plain.get("speculative").is_none(), "no speculative key without speculation");
    for spec in [&["--speculative", "ngram"][..], &["--speculative", "draft=smollm2-135m", "--draft-layers", "6"]] {
        let reply = json(spec);
        assert_eq!(reply["generated_ids"], plain["generated_ids"], "{spec:?}");
        let (proposed, accepted) = (&reply["speculative"]["proposed"], &reply["speculative"]["accepted"]);
        assert!(proposed.as_u64().unwrap() > 0 && accepted.as_u64() <= proposed.as_u64(), "{spec:?}: {reply}");
    }
}

#[test]
fn the_server_reports_guesses_in_usage_and_metrics() {
    let server = common::serve_lite(&["--speculative", "ngram"]);
    let body = serde_json::json!({
        "prompt": "one two three four one two three four one two three four one two",
        "max_tokens": 16, "temperature": 0
    });
    let out = Command::new("curl")
        .args(["-s", "-H", "Content-Type: application/json", "-d", &body.to_string()])
        .arg(format!("http://127.0.0.1:{}/v1/completions", server.port))
        .output()
        .expect("curl (the server tests need it)");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let usage = &reply["usage"];
    let (proposed, accepted) = (usage["speculative"]["proposed"].as_u64(), usage["speculative"]["accepted"].as_u64());
    assert!(proposed.unwrap() > 0, "{reply}");
    let details = &usage["completion_tokens_details"];
    assert_eq!(details["accepted_prediction_tokens"].as_u64(), accepted, "{reply}");
    assert_eq!(details["rejected_prediction_tokens"].as_u64(), Some(proposed.unwrap() - accepted.unwrap()));
    let metrics = Command::new("curl").arg(format!("http://127.0.0.1:{}/metrics", server.port)).output().unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(value("bodega_spec_proposed_tokens_total"), proposed.unwrap() as f64);
    assert_eq!(value("bodega_spec_accepted_tokens_total"), accepted.unwrap() as f64);
    assert!(value("bodega_spec_verifications_total") > 0.0);
}

#[test]
fn bench_compares_speculation_on_and_off_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("copy.jsonl");
    let line = |text: &str| {
        let prompt = format!("Copy this text word for word: {text}");
        serde_json::json!({"messages": [{"role": "user", "content": prompt}], "output_len": 16}).to_string()
    };
    let lines = [line("The cat sat on the mat by the door."), line("Rain fell on the roofs of the old town.")];
    std::fs::write(&dataset, lines.join("\n")).unwrap();
    let json = dir.path().join("report.json");
    let out = bodega(&[
        "bench",
        "smollm2-135m",
        "--kv-memory",
        "128M",
        "--warmup",
        "1",
        "--dataset",
        dataset.to_str().unwrap(),
        "--concurrency",
        "2",
        "--num-prompts",
        "2",
        "--speculative",
        "ngram",
        "--spec-compare",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("spec accept") && table.contains("B/A"), "{table}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = |target: &str| report["runs"].as_array().unwrap().iter().find(|r| r["target"] == target).unwrap().clone();
    assert_eq!(run("A")["engine"]["spec_proposed"], 0, "A runs without speculation");
    assert!(run("B")["engine"]["spec_proposed"].as_u64().unwrap() > 0, "B speculates");
    assert!(run("B")["engine"]["spec_mean_accepted_length"].as_f64().unwrap() >= 1.0);
    assert_eq!(report["targets"][0]["engine"]["speculative"], Value::Null);
    assert_eq!(report["targets"][1]["engine"]["speculative"], "ngram");
    assert_eq!(run("A")["classes"][0]["completed"], run("B")["classes"][0]["completed"]);
    assert!(!report["ratios"].as_array().unwrap().is_empty());
}

/// A draft with sliding-window layers (Gemma 3 270M drafting for itself) keeps only their window in
/// its cache: a 1,300-token prompt is caught up in pieces, the window layers hold about
/// (512 + 64 + 512) / 16 blocks instead of 82, and the guesses are the target's own greedy tokens,
/// before and after the draft continues from its accepted guesses.
#[test]
fn a_draft_with_window_layers_keeps_only_the_window_and_guesses_right() {
    let path = common::demo_path("gemma3-270m");
    let load = || bodega::model::from_gguf(&mut GgufFile::open(&path).unwrap(), &Device::Cpu).unwrap();
    let tokenizer = Arc::new(bodega::tokenizer::Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap());
    let text = "The harbour town wakes before the sun, and the boats slip out past the pier. ".repeat(80);
    let prompt: Vec<u32> = tokenizer.encode_raw(&text).unwrap().into_iter().take(1300).collect();
    assert_eq!(prompt.len(), 1300);
    let plain = Engine::start(load(), tokenizer, Device::Cpu, EngineConfig::default()).unwrap();
    let expected = plain.submit(request(prompt.clone(), 8, greedy())).unwrap().wait().unwrap().0.generated_ids;

    let mut draft = DraftModel::new(load(), Device::Cpu);
    draft.reserve(200, 16).unwrap();
    let sampling = greedy();
    let mut tokens = prompt.clone();
    for step in 0..2 {
        let ask = bodega::engine::speculative::ProposalRequest {
            seq: 0,
            tokens: &tokens,
            prompt_len: prompt.len(),
            k: 4,
            sampling: &sampling,
        };
        let guesses = draft.propose(&[ask]).unwrap().remove(0).tokens;
        assert_eq!(guesses, expected[4 * step..4 * step + 4], "pass {step}: the draft's greedy guesses");
        let held = draft.window_blocks_used().expect("Gemma 3 has window layers");
        assert!(held <= (512 + 64 + 512) / 16 + 2, "{held} window blocks held for {} tokens", tokens.len());
        tokens.extend(guesses);
    }
    draft.forget(0);
    assert_eq!(draft.window_blocks_used(), Some(0), "blocks leaked");
}
