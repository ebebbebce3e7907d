//! The engine with the real SmolLM2 model on the CPU: batching, chunked prefill, preemption and the
//! prefix cache never change a greedy sequence's tokens, and every block comes back. The same for
//! Gemma 3 270M, whose sliding-window layers keep only their window of blocks.

mod common;

use bodega::engine::{Engine, EngineConfig, FinishReason, Request};
use bodega::model::load::gguf::GgufFile;
use bodega::ops::PagedKvCache;
use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine(config: EngineConfig) -> Engine {
    engine_of("smollm2-135m", config)
}

/// An engine on one of the demo models.
fn engine_of(alias: &str, config: EngineConfig) -> Engine {
    let mut file = GgufFile::open(&common::demo_path(alias)).unwrap();
    let tokenizer = Arc::new(bodega::tokenizer::Tokenizer::from_gguf(&file).unwrap());
    let model = bodega::model::from_gguf(&mut file, &Device::Cpu).unwrap();
    Engine::start(model, tokenizer, Device::Cpu, config).unwrap()
}

/// Bytes of `blocks` KV blocks of the demo model.
fn blocks(n: usize) -> u64 {
    (n * PagedKvCache::bytes_per_block(30, 16, 3, 64, DType::F32)) as u64
}

fn config(max_batched_tokens: usize, kv_blocks: usize, prefix_caching: bool) -> EngineConfig {
    EngineConfig { max_batched_tokens, kv_memory: Some(blocks(kv_blocks)), prefix_caching, ..EngineConfig::default() }
}

/// The fixture's prompts: 20 lengths from 1 to 293 tokens, raw and chat.
fn prompts() -> Vec<Vec<u32>> {
    common::reference()["cases"].as_array().unwrap().iter().map(|c| common::ids(&c["prompt_ids"])).collect()
}

fn run_one_by_one(engine: &Engine, requests: Vec<Request>) -> Vec<Vec<u32>> {
    requests.into_iter().map(|r| engine.submit(r).unwrap().wait().unwrap().0.generated_ids).collect()
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

#[test]
fn sixteen_concurrent_greedy_requests_match_each_alone() {
    let engine = engine(config(512, 512, false));
    let requests: Vec<Request> = prompts().into_iter().take(16).map(|p| common::greedy(p, 12)).collect();
    let alone = run_one_by_one(&engine, requests.clone());
    let together = common::run_all(&engine, requests);
    for (i, (a, (t, _))) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i} differs when batched");
    }
    assert!(engine.stats().steps > 0);
    assert_no_leak(&engine);
}

#[test]
fn chunked_prefill_with_odd_chunk_sizes_matches_whole_prompt_prefill() {
    let requests: Vec<Request> = prompts().into_iter().rev().take(6).map(|p| common::greedy(p, 6)).collect();
    let whole = common::run_all(&engine(config(4096, 512, false)), requests.clone());
    for chunk in [7, 61] {
        let chunked = common::run_all(&engine(config(chunk, 512, false)), requests.clone());
        assert_eq!(whole, chunked, "chunks of {chunk} tokens differ from whole prefill");
    }
}

#[test]
fn preemption_under_a_small_kv_budget_keeps_every_output() {
    let requests: Vec<Request> = prompts().into_iter().take(10).map(|p| common::greedy(p, 24)).collect();
    let roomy = common::run_all(&engine(config(512, 512, false)), requests.clone());
    let tight_engine = engine(config(512, 12, false));
    let tight = common::run_all(&tight_engine, requests);
    assert!(tight_engine.stats().preemptions > 0, "the budget did not force preemption");
    assert_eq!(roomy, tight);
    assert_no_leak(&tight_engine);
}

#[test]
fn a_shared_system_prompt_is_served_from_the_prefix_cache() {
    let demo = common::smollm2();
    let system = "You are a meticulous assistant. ".repeat(12);
    let chat = |q: &str| {
        let messages =
            [bodega::tokenizer::Message::new("system", system.as_str()), bodega::tokenizer::Message::new("user", q)];
        demo.tokenizer.encode_chat(&messages).unwrap().1
    };
    let (first, second) = (chat("What is bread?"), chat("Name a river."));
    let shared = first.iter().zip(&second).take_while(|(a, b)| a == b).count();
    let warm = engine(config(512, 512, true));
    common::run_all(&warm, vec![common::greedy(first, 4)]);
    let (ids, cached) = common::run_all(&warm, vec![common::greedy(second.clone(), 8)]).remove(0);
    assert_eq!(cached, shared / 16 * 16, "cached tokens should be the shared full blocks");
    assert!(cached >= 64, "only {cached} tokens cached");
    let cold = common::run_all(&engine(config(512, 512, false)), vec![common::greedy(second, 8)]).remove(0);
    assert_eq!(ids, cold.0, "a prefix-cache hit changed the output");
    assert_eq!(cold.1, 0);
}

#[test]
fn randomized_prefix_sharing_under_eviction_matches_cold_runs() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let prefixes: Vec<Vec<u32>> =
        (0..4).map(|_| (0..rng.random_range(20..70)).map(|_| rng.random_range(100..40000)).collect()).collect();
    let requests: Vec<Request> = (0..80)
        .map(|_| {
            let mut p = prefixes[rng.random_range(0..prefixes.len())].clone();
            p.truncate(rng.random_range(1..=p.len()));
            p.extend((0..rng.random_range(1..20)).map(|_| rng.random_range(100..40000u32)));
            common::greedy(p, 3)
        })
        .collect();
    let cold = common::run_all(&engine(config(512, 400, false)), requests.clone());
    // 40 blocks for up to 64 sequences: cached blocks are evicted and reused all the time.
    let warm_engine = engine(config(256, 40, true));
    let mut warm = Vec::new();
    for batch in requests.chunks(20) {
        warm.extend(common::run_all(&warm_engine, batch.to_vec()));
    }
    for (i, ((c, _), (w, _))) in cold.iter().zip(&warm).enumerate() {
        assert_eq!(c, w, "request {i} differs with the prefix cache");
    }
    assert!(warm.iter().map(|(_, cached)| cached).sum::<usize>() > 0, "no request hit the cache");
    assert_no_leak(&warm_engine);
    assert!(warm_engine.stats().blocks.cached > 0);
}

#[test]
fn cancelling_mid_generation_frees_the_blocks_at_once() {
    let engine = engine(config(512, 256, true));
    let handle = engine.submit(common::greedy(prompts()[12].clone(), 2000)).unwrap();
    for _ in 0..3 {
        handle.recv().unwrap();
    }
    assert!(engine.stats().blocks.used > 0);
    drop(handle);
    assert_no_leak(&engine);
    // Every block is free or cached; the engine still serves.
    let (done, _) = engine.submit(common::greedy(prompts()[0].clone(), 2)).unwrap().wait().unwrap();
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_no_leak(&engine);
}

#[test]
fn requests_that_can_never_fit_are_rejected_at_once() {
    let engine = engine(config(512, 4, true));
    assert_eq!(engine.context_length(), 64);
    let err = engine.submit(common::greedy(vec![1; 40], 40)).err().expect("accepted a request larger than the pool");
    assert!(err.to_string().contains("exceeds the context of 64 tokens"), "{err}");
    let err = engine.submit(common::greedy(vec![1; 80], 1)).err().expect("accepted a prompt larger than the pool");
    assert!(err.to_string().contains("prompt is 80 tokens but the context holds 64"), "{err}");
}

#[test]
fn gemma3_greedy_output_is_identical_alone_and_among_eight() {
    // Chunks of 128 tokens: the 575-token prompt crosses the 512-token window while others decode.
    let config = EngineConfig { context_length: 1024, max_seqs: 8, max_batched_tokens: 128, ..EngineConfig::default() };
    let engine = engine_of("gemma3-270m", config);
    let cases = common::fixture("gemma3")["cases"].as_array().unwrap().clone();
    let mut prompts: Vec<Vec<u32>> = cases.iter().map(|c| common::ids(&c["prompt_ids"])).collect();
    prompts.sort_by_key(|p| std::cmp::Reverse(p.len()));
    assert!(prompts[0].len() > 512, "the fixture has a prompt longer than the window");
    let requests: Vec<Request> = prompts.into_iter().take(8).map(|p| common::greedy(p, 16)).collect();
    let alone = run_one_by_one(&engine, requests.clone());
    let together = common::run_all(&engine, requests);
    for (i, (a, (t, _))) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i} differs among 8");
    }
    let stats = engine.stats();
    assert!(stats.window_blocks.is_some_and(|w| w.total < stats.blocks.total), "no small window pool: {stats:?}");
    assert_no_leak(&engine);
    assert_eq!(engine.stats().window_blocks.unwrap().used, 0, "window blocks leaked");
}
