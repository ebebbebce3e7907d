//! bodega against an implementation nobody here wrote: Hugging Face transformers running the same
//! GGUF files (tests/fixtures/reference-*.json, made by scripts/make-reference.py). Tokenization and
//! chat templates must match exactly; logits under teacher forcing must agree on the top token.

mod common;

use bodega::ops::PagedKvCache;
use bodega::runner::{build_step, SeqChunk};
use bodega::tokenizer::Message;
use candle_core::{DType, Device, Tensor};
use common::{fixture, ids, Demo};

fn messages(case: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(case["messages"].clone()).expect("messages")
}

fn check_tokenization(demo: &Demo, fixture: &serde_json::Value) {
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let expected = ids(&case["prompt_ids"]);
        let got = match case["kind"].as_str().unwrap() {
            "raw" => demo.tokenizer.encode_raw(case["text"].as_str().unwrap()).unwrap(),
            _ => demo.tokenizer.encode_chat(&messages(case)).unwrap().1,
        };
        assert_eq!(got, expected, "token ids differ for case {name}");
    }
}

#[test]
fn smollm2_tokenization_matches_the_reference_for_every_prompt() {
    check_tokenization(common::smollm2(), &fixture("smollm2"));
}

#[test]
fn gemma3_sentencepiece_tokenization_matches_llama_cpp_for_every_prompt() {
    let fixture = fixture("gemma3");
    check_tokenization(common::gemma3(), &fixture);
    for case in fixture["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(common::gemma3().tokenizer.encode_raw(text).unwrap(), ids(&case["ids"]), "ids differ for {text:?}");
    }
}

#[test]
fn chat_template_renders_byte_identical_text() {
    let demo = common::smollm2();
    for case in fixture("smollm2")["cases"].as_array().unwrap().iter().filter(|c| c["kind"] == "chat") {
        let rendered = demo.tokenizer.render_chat(&messages(case), true).unwrap();
        assert_eq!(rendered, case["text"].as_str().unwrap(), "template text differs for {}", case["name"]);
    }
}

/// Scores every position of prompt + reference continuation in one pass, as the reference did.
fn teacher_forced_logits(demo: &Demo, prompt: &[u32], greedy: &[u32]) -> Vec<Vec<f32>> {
    let model = demo.model.lock().unwrap();
    let info = model.info().clone();
    let tokens: Vec<u32> = prompt.iter().chain(&greedy[..greedy.len() - 1]).copied().collect();
    let blocks = tokens.len().div_ceil(16);
    let cache =
        PagedKvCache::new(info.num_layers, blocks, 16, info.num_kv_heads, info.head_dim, DType::F32, &Device::Cpu)
            .unwrap();
    let table: Vec<u32> = (0..blocks as u32).collect();
    let chunk = SeqChunk { tokens: &tokens, start: 0, block_table: &table, sample: true, window_blocks: None };
    let mut input = build_step(&[chunk], 16, &Device::Cpu).unwrap();
    let rows: Vec<u32> = (prompt.len() as u32 - 1..tokens.len() as u32).collect();
    input.logits_rows = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
    model.forward(&input, &cache).unwrap().to_vec2().unwrap()
}

fn top5(row: &[f32]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx.truncate(5);
    idx
}

/// Top-1 agreement must reach 95% and the reference's top-1 must always be in bodega's top-5.
fn check_teacher_forcing(demo: &Demo, fixture: &serde_json::Value) {
    let (mut positions, mut top1_equal) = (0, 0);
    let mut failures = Vec::new();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let logits = teacher_forced_logits(demo, &ids(&case["prompt_ids"]), &ids(&case["greedy_ids"]));
        for (i, (row, expected)) in logits.iter().zip(case["teacher_forced"].as_array().unwrap()).enumerate() {
            let ref_top = ids(&expected["top_ids"]);
            let ours = top5(row);
            positions += 1;
            top1_equal += usize::from(ours[0] == ref_top[0]);
            if !ours.contains(&ref_top[0]) {
                failures.push(format!("{name}[{i}]: reference top-1 {} not in our top-5 {ours:?}", ref_top[0]));
            }
        }
    }
    let agreement = top1_equal as f64 / positions as f64;
    eprintln!("top-1 agreement with transformers: {top1_equal}/{positions} = {:.1}%", agreement * 100.0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(agreement >= 0.95, "top-1 agreement {:.1}% is under 95%", agreement * 100.0);
}

#[test]
fn smollm2_teacher_forced_top_tokens_agree_with_the_reference() {
    check_teacher_forcing(common::smollm2(), &fixture("smollm2"));
}

#[test]
fn gemma3_teacher_forced_top_tokens_agree_with_the_reference() {
    check_teacher_forcing(common::gemma3(), &fixture("gemma3"));
}
