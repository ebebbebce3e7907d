//! CPU paged-attention microbenchmark: one decode step (one query per sequence) of a SmolLM2-135M
//! layer (9 query heads, 3 KV heads, head dim 64) for B sequences of context C, in the cache layout
//! the engine uses (blocks of 16 tokens, scattered). Prints the wall-clock time per call, per
//! sequence, and the KV bytes it reads per second.
//!
//! `cargo run --release --example attention-bench [-- THREADS]` (default 2).

use bodega::ops::cpu::{paged_attention, AttentionParams};
use bodega::ops::AttentionMetadata;
use bodega_cpu_kernels::KernelPath;
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|t| t.parse().ok()).unwrap_or(2);
    bodega_cpu_kernels::set_threads(threads).expect("thread pool");
    let (num_heads, num_kv_heads, head_dim, block_size) = (9, 3, 64, 16);
    println!("| sequences | context | µs per call | µs per sequence | KV GB/s |");
    println!("|---|---|---|---|---|");
    for (seqs, ctx) in [(1usize, 256usize), (16, 256), (16, 1024), (1, 4096)] {
        let blocks_per_seq = ctx.div_ceil(block_size);
        let num_blocks = seqs * blocks_per_seq;
        let row = num_kv_heads * head_dim;
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let cache_len = num_blocks * block_size * row;
        let k: Vec<f32> = (0..cache_len).map(|_| random()).collect();
        let v: Vec<f32> = (0..cache_len).map(|_| random()).collect();
        let q: Vec<f32> = (0..seqs * num_heads * head_dim).map(|_| random()).collect();
        // Interleave the sequences' blocks, as a busy pool hands them out.
        let block_tables = (0..seqs).flat_map(|s| (0..blocks_per_seq).map(move |b| (b * seqs + s) as u32)).collect();
        let meta = AttentionMetadata {
            slot_mapping: vec![0; seqs],
            block_tables,
            max_blocks: blocks_per_seq,
            cu_query_lens: (0..=seqs as u32).collect(),
            context_lens: vec![ctx as u32; seqs],
            ..Default::default()
        };
        let params = AttentionParams {
            num_heads,
            num_kv_heads,
            head_dim,
            block_size,
            scale: (head_dim as f32).powf(-0.5),
            window: 0,
        };
        let path = KernelPath::detect().expect("kernel path");
        let mut out = vec![0f32; q.len()];
        paged_attention(path, &q, (&k, &v), &meta, params, &mut out);
        let reps = (2_000_000 / (seqs * ctx)).max(20);
        let start = Instant::now();
        for _ in 0..reps {
            paged_attention(path, &q, (&k, &v), &meta, params, &mut out);
        }
        let per_call = start.elapsed().as_secs_f64() / reps as f64;
        let bytes = (2 * seqs * ctx * row * std::mem::size_of::<f32>()) as f64;
        println!(
            "| {seqs} | {ctx} | {:.1} | {:.2} | {:.1} |",
            per_call * 1e6,
            per_call * 1e6 / seqs as f64,
            bytes / per_call / 1e9
        );
    }
}
