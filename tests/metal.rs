//! The Metal kernels on a Mac's GPU, through the same ops the engine calls (`kv_write`,
//! `paged_attention` on candle's Metal device), against the CPU reference on random inputs: f16 and
//! bf16 caches, GQA ratios 1, 3, 4 and 8, head dims 64, 128 and 256, decode and prefill mixed in one
//! call, with and without a sliding window. Compiled on macOS only; elsewhere
//! `scripts/check-macos.sh` type-checks it and `tests/metal_emulated.rs` runs the kernels on the CPU.
#![cfg(target_os = "macos")]

mod common;

use bodega::ops::{kv_write, paged_attention, AttentionMetadata, PagedKvCache};
use candle_core::{DType, Device, Tensor};
use common::writes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BLOCK: usize = 16;

/// Random values in [-1, 1), already rounded to `dtype`, so that both backends see the same inputs.
fn random(rng: &mut ChaCha8Rng, shape: (usize, usize, usize), dtype: DType) -> Tensor {
    let n = shape.0 * shape.1 * shape.2;
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

/// Largest |Metal - CPU| for one call.
fn max_error(
    gpu: &Device,
    dtype: DType,
    (heads, kv_heads, dim): (usize, usize, usize),
    seqs: &[(usize, usize)],
    window: usize,
) -> f32 {
    let mut rng = ChaCha8Rng::seed_from_u64((heads * 1000 + dim + window) as u64);
    let num_blocks = seqs.iter().map(|(ctx, _)| ctx.div_ceil(BLOCK)).sum::<usize>() + 2;
    let cpu_cache = PagedKvCache::new(1, num_blocks, BLOCK, kv_heads, dim, DType::F32, &Device::Cpu).unwrap();
    let gpu_cache = PagedKvCache::new(1, num_blocks, BLOCK, kv_heads, dim, dtype, gpu).unwrap();
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    free.shuffle(&mut rng);
    let mut meta = AttentionMetadata { cu_query_lens: vec![0], ..Default::default() };
    meta.max_blocks = seqs.iter().map(|(ctx, _)| ctx.div_ceil(BLOCK)).max().unwrap();
    let mut queries = Vec::new();
    for &(ctx, q_len) in seqs {
        let table: Vec<u32> = (0..ctx.div_ceil(BLOCK)).map(|_| free.pop().unwrap()).collect();
        let slots: Vec<u32> = (0..ctx).map(|p| table[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32).collect();
        let (k, v) = (random(&mut rng, (ctx, kv_heads, dim), dtype), random(&mut rng, (ctx, kv_heads, dim), dtype));
        for (cache, device) in [(&cpu_cache, &Device::Cpu), (&gpu_cache, gpu)] {
            let (kc, vc) = cache.layer(0);
            kv_write(&k.to_device(device).unwrap(), &v.to_device(device).unwrap(), &writes(&slots), kc, vc).unwrap();
        }
        queries.push(random(&mut rng, (q_len, heads, dim), dtype));
        meta.slot_mapping.extend(&slots[ctx - q_len..]);
        meta.block_tables.extend(&table);
        meta.block_tables.resize(meta.block_tables.len() + meta.max_blocks - table.len(), 0);
        meta.cu_query_lens.push(meta.cu_query_lens.last().unwrap() + q_len as u32);
        meta.context_lens.push(ctx as u32);
    }
    let q = Tensor::cat(&queries, 0).unwrap();
    let scale = 1.0 / (dim as f32).sqrt();
    let (kc, vc) = cpu_cache.layer(0);
    let expected = paged_attention(&q, kc, vc, &meta, scale, window).unwrap();
    let (kc, vc) = gpu_cache.layer(0);
    let got = paged_attention(&q.to_device(gpu).unwrap(), kc, vc, &meta, scale, window).unwrap();
    let diff = (got.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap() - expected).unwrap();
    diff.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn metal_kernels_match_the_cpu_reference() {
    let gpu = Device::new_metal(0).expect("no Metal device: these tests run on a Mac with Apple Silicon");
    let seqs = [(1, 1), (17, 1), (600, 1), (1100, 1), (61, 61), (100, 39), (530, 17)];
    for (dtype, tolerance) in [(DType::F16, 1e-3f32), (DType::BF16, 8e-3)] {
        let mut worst = 0f32;
        for shape in [(4, 4, 64), (9, 3, 64), (8, 2, 128), (16, 2, 128), (4, 1, 256)] {
            for window in [0, 40] {
                let err = max_error(&gpu, dtype, shape, &seqs, window);
                assert!(err <= tolerance, "{dtype:?} {shape:?} window {window}: max abs error {err}");
                worst = worst.max(err);
            }
        }
        println!("{dtype:?}: max abs error {worst:.2e} against the CPU reference");
    }
}
