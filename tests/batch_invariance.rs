//! The model's arithmetic for one sequence must not depend on what else is in the step: logits of a
//! sequence alone, in a batch with others, and with its prompt fed in chunks must be bit-identical.

mod common;

use bodega::ops::PagedKvCache;
use bodega::runner::{run_step, SeqChunk};
use candle_core::{DType, Device};
use common::Demo;

struct Seq {
    tokens: Vec<u32>,
    table: Vec<u32>,
}

fn cache(demo: &Demo, blocks: usize) -> PagedKvCache {
    let info = demo.model.lock().unwrap().info().clone();
    PagedKvCache::new(info.num_layers, blocks, 16, info.num_kv_heads, info.head_dim, DType::F32, &Device::Cpu).unwrap()
}

fn prompts(demo: &Demo) -> Vec<Vec<u32>> {
    ["The quick brown fox", "Write a poem about the moon and the stars over the sea at night, please.", "1 2 3"]
        .iter()
        .map(|p| demo.tokenizer.encode_raw(p).unwrap())
        .collect()
}

fn logits(demo: &Demo, seqs: &[Seq], chunk: usize) -> Vec<Vec<f32>> {
    let cache = cache(demo, 64);
    let model = demo.model.lock().unwrap();
    let longest = seqs.iter().map(|s| s.tokens.len()).max().unwrap();
    let mut last = vec![Vec::new(); seqs.len()];
    let mut start = 0;
    while start < longest {
        let active: Vec<usize> = (0..seqs.len()).filter(|&i| start < seqs[i].tokens.len()).collect();
        let chunks: Vec<SeqChunk> = active
            .iter()
            .map(|&i| {
                let s = &seqs[i];
                let end = (start + chunk).min(s.tokens.len());
                SeqChunk {
                    tokens: &s.tokens[start..end],
                    start,
                    block_table: &s.table[..end.div_ceil(16)],
                    sample: true,
                    window_blocks: None,
                }
            })
            .collect();
        let rows = run_step(model.as_ref(), &cache, &chunks, &Device::Cpu).unwrap();
        for (&i, row) in active.iter().zip(rows) {
            last[i] = row;
        }
        start += chunk;
    }
    last
}

fn seqs(prompts: &[Vec<u32>]) -> Vec<Seq> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Seq { tokens: p.clone(), table: (i as u32 * 8..i as u32 * 8 + 8).collect() })
        .collect()
}

fn check(demo: &Demo) {
    let prompts = prompts(demo);
    let batched = logits(demo, &seqs(&prompts), 1000);
    for (i, p) in prompts.iter().enumerate() {
        let alone = logits(demo, &seqs(std::slice::from_ref(p)), 1000);
        assert_eq!(alone[0], batched[i], "sequence {i}: batched logits differ from alone");
        for chunk in [1, 3, 7] {
            let chunked = logits(demo, &seqs(std::slice::from_ref(p)), chunk);
            assert_eq!(alone[0], chunked[0], "sequence {i}: chunks of {chunk} differ from whole prefill");
        }
    }
}

#[test]
fn a_smollm2_sequence_gives_the_same_logits_alone_batched_and_chunked() {
    check(common::smollm2());
}

#[test]
fn a_gemma3_sequence_gives_the_same_logits_alone_batched_and_chunked() {
    check(common::gemma3());
}
