//! `paged_attention` and `kv_write` against plain dense causal attention computed in f64, on random
//! inputs: GQA ratios 1, 2, 3, 4 and 8, head sizes 64 and 128, contexts crossing block boundaries,
//! decode (q_len 1) and prefill chunks (q_len > 1) of several sequences in one call, scattered blocks,
//! and the sliding window.

mod common;

use bodega::ops::{kv_write, paged_attention, AttentionMetadata, PagedKvCache};
use candle_core::{DType, Device, Tensor};
use common::{writes, AttentionCase as Case};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BLOCK: usize = 16;

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Reference: query i of a sequence at position p attends keys max(0, p-window+1)..=p.
#[allow(clippy::too_many_arguments)]
fn dense(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv_heads: usize,
    d: usize,
    ctx: usize,
    q_len: usize,
    window: usize,
) -> Vec<f32> {
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0f32; q_len * heads * d];
    for i in 0..q_len {
        let p = ctx - q_len + i;
        let first = if window == 0 { 0 } else { (p + 1).saturating_sub(window) };
        for h in 0..heads {
            let g = h / group;
            let qv = &q[(i * heads + h) * d..][..d];
            let scores: Vec<f64> = (first..=p)
                .map(|j| (0..d).map(|x| qv[x] as f64 * k[(j * kv_heads + g) * d + x] as f64).sum::<f64>() * scale)
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = w.iter().sum();
            for x in 0..d {
                let acc: f64 = (first..=p).zip(&w).map(|(j, wj)| wj * v[(j * kv_heads + g) * d + x] as f64).sum();
                out[(i * heads + h) * d + x] = (acc / sum) as f32;
            }
        }
    }
    out
}

fn check(case: &Case, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (h, kvh, d) = (case.heads, case.kv_heads, case.dim);
    let blocks_needed: usize = case.seqs.iter().map(|(ctx, _)| ctx.div_ceil(BLOCK)).sum();
    let num_blocks = blocks_needed + 3;
    let cache = PagedKvCache::new(1, num_blocks, BLOCK, kvh, d, DType::F32, &Device::Cpu).unwrap();
    let (kc, vc) = cache.layer(0);
    // Blocks handed out in a random order, so that tables are not contiguous.
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    free.shuffle(&mut rng);
    let mut meta = AttentionMetadata { cu_query_lens: vec![0], ..Default::default() };
    meta.max_blocks = case.seqs.iter().map(|(ctx, _)| ctx.div_ceil(BLOCK)).max().unwrap();
    let (mut q_all, mut expected) = (Vec::new(), Vec::new());
    for &(ctx, q_len) in &case.seqs {
        let table: Vec<u32> = (0..ctx.div_ceil(BLOCK)).map(|_| free.pop().unwrap()).collect();
        let keys = random(&mut rng, ctx * kvh * d);
        let values = random(&mut rng, ctx * kvh * d);
        // The cached prefix is written first (as earlier steps would), then this step's tokens.
        let slots: Vec<u32> = (0..ctx).map(|p| table[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32).collect();
        let kt = Tensor::from_vec(keys.clone(), (ctx, kvh, d), &Device::Cpu).unwrap();
        let vt = Tensor::from_vec(values.clone(), (ctx, kvh, d), &Device::Cpu).unwrap();
        kv_write(&kt, &vt, &writes(&slots), kc, vc).unwrap();
        let q = random(&mut rng, q_len * h * d);
        expected.extend(dense(&q, &keys, &values, h, kvh, d, ctx, q_len, case.window));
        q_all.extend(q);
        meta.slot_mapping.extend(&slots[ctx - q_len..]);
        meta.block_tables.extend(&table);
        meta.block_tables.resize(meta.block_tables.len() + meta.max_blocks - table.len(), 0);
        meta.cu_query_lens.push(meta.cu_query_lens.last().unwrap() + q_len as u32);
        meta.context_lens.push(ctx as u32);
    }
    let t = meta.num_tokens();
    let q = Tensor::from_vec(q_all, (t, h, d), &Device::Cpu).unwrap();
    let out = paged_attention(&q, kc, vc, &meta, 1.0 / (d as f32).sqrt(), case.window).unwrap();
    let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let (num, den) = got
        .iter()
        .zip(&expected)
        .fold((0f64, 0f64), |(n, dd), (g, e)| (n + ((g - e) as f64).powi(2), dd + (*e as f64).powi(2)));
    let rel = (num / den).sqrt();
    assert!(
        rel < 1e-5,
        "relative error {rel} for heads {h}/{kvh}, dim {d}, seqs {:?}, window {}",
        case.seqs,
        case.window
    );
}

/// Runs `check` for every (heads, kv_heads) pair and head size, with distinct seeds.
fn check_shapes(pairs: &[(usize, usize)], dims: &[usize], seqs: &[(usize, usize)], window: usize, seed: u64) {
    for (i, &(heads, kv_heads)) in pairs.iter().enumerate() {
        for &dim in dims {
            let case = Case { heads, kv_heads, dim, seqs: seqs.to_vec(), window };
            check(&case, seed + i as u64 * 1000 + dim as u64);
        }
    }
}

#[test]
fn decode_matches_dense_attention_for_every_gqa_ratio_and_head_size() {
    let seqs = [(1, 1), (15, 1), (16, 1), (17, 1), (300, 1), (2048, 1)];
    check_shapes(&[(4, 4), (8, 4), (9, 3), (8, 2), (16, 2)], &[64, 128], &seqs, 0, 1);
}

#[test]
fn prefill_chunks_match_dense_causal_attention() {
    // Whole prompts, chunks after a cached prefix, and decodes, mixed in one call.
    let seqs = [(7, 7), (61, 61), (100, 39), (33, 1), (520, 17), (16, 16)];
    check_shapes(&[(4, 4), (9, 3), (8, 1)], &[64, 128], &seqs, 0, 2);
}

#[test]
fn sliding_window_limits_what_each_query_sees() {
    for window in [1, 5, 16, 40] {
        check_shapes(&[(8, 2)], &[64], &[(70, 1), (90, 30), (10, 10)], window, window as u64);
    }
}
