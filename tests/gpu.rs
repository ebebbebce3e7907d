//! The CUDA backend against the CPU reference, on the GPU machine (`scripts/gpu-check.sh` runs it;
//! built only with `--features cuda`). Kernels: random inputs, poisoned outputs, GQA 1/3/4/8, head
//! sizes 16/32/64/128/256, q_len 1..512, contexts 1..32k, windows, f32/f16/bf16 caches (thresholds per
//! kernel and dtype: `tolerance`), and bitwise batch invariance of every kernel. End to end: a truncated SmolLM2 (`BODEGA_GPU_MODEL`, made by scripts/truncate-gguf.py)
//! agrees with the CPU backend on ≥ 99% of teacher-forced top-1 tokens, and the engine's batching,
//! chunked prefill, preemption and prefix cache work on the GPU. `formats` runs tests/formats.rs's
//! cases (every architecture and format against transformers' and mlx-lm's references, the
//! sliding-window pool) on the GPU.

mod common;
#[path = "formats/cases.rs"]
mod formats;

use bodega::engine::sampler::Sampler;
use bodega::engine::speculative::ngram::PromptLookup;
use bodega::engine::speculative::Speculation;
use bodega::engine::{Engine, EngineConfig, Request};
use bodega::model::load::gguf::GgufFile;
use bodega::model::load::synthetic::SyntheticSpec;
use bodega::model::load::{LoadOptions, Matrix, ModelFiles, WeightSource};
use bodega::model::Model;
use bodega::ops::{kv_write, paged_attention, Activation, AttentionMetadata, PagedKvCache};
use bodega::runner::{build_step, run_step, Executor, RowWant, SeqChunk, StepRow};
use candle_core::cuda_backend::cudarc::driver::CudaGraph;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use common::writes;
use common::AttentionCase as Case;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;

const BLOCK: usize = 16;
/// Written into every output and unused cache slot first, so that a kernel that skips a row or
/// reads a slot it should not shows up.
const POISON: f32 = 1.0e30;

/// The GPU, opened as `--device cuda` opens it; fails (never skips) without one.
fn cuda() -> Device {
    bodega::device::select(bodega::device::DeviceChoice::Cuda(0)).unwrap_or_else(|e| {
        panic!("tests/gpu.rs needs an NVIDIA GPU and its driver ({e}); run it on the GPU machine: scripts/gpu-check.sh")
    })
}

/// The device tests/formats.rs's cases run on here.
fn test_device() -> Device {
    cuda()
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `max |a - b| / max |b|`.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Random inputs of a case: queries, a whole random cache (no zeros anywhere) and scattered blocks.
struct Inputs {
    q: Vec<f32>,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    meta: AttentionMetadata,
    num_blocks: usize,
}

impl Case {
    fn inputs(&self, rng: &mut ChaCha8Rng) -> Inputs {
        let blocks_per_seq: Vec<usize> = self.seqs.iter().map(|&(ctx, _)| ctx.div_ceil(BLOCK)).collect();
        let num_blocks = blocks_per_seq.iter().sum::<usize>() + 3;
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        ids.shuffle(rng);
        let max_blocks = blocks_per_seq.iter().copied().max().unwrap_or(0);
        let mut meta = AttentionMetadata { max_blocks, cu_query_lens: vec![0], ..Default::default() };
        let mut next = 0;
        for (&(ctx, q_len), &n) in self.seqs.iter().zip(&blocks_per_seq) {
            let table = &ids[next..next + n];
            next += n;
            for pos in ctx - q_len..ctx {
                meta.slot_mapping.push(table[pos / BLOCK] * BLOCK as u32 + (pos % BLOCK) as u32);
            }
            meta.block_tables.extend_from_slice(table);
            meta.block_tables.extend(std::iter::repeat_n(0, max_blocks - n));
            meta.cu_query_lens.push(meta.cu_query_lens.last().unwrap() + q_len as u32);
            meta.context_lens.push(ctx as u32);
        }
        let cache_len = num_blocks * BLOCK * self.kv_heads * self.dim;
        Inputs {
            q: random(rng, meta.num_tokens() * self.heads * self.dim),
            k_cache: random(rng, cache_len),
            v_cache: random(rng, cache_len),
            meta,
            num_blocks,
        }
    }

    fn cache_shape(&self, num_blocks: usize) -> (usize, usize, usize, usize) {
        (num_blocks, BLOCK, self.kv_heads, self.dim)
    }

    /// The CPU reference on the cache values as the GPU cache holds them (rounded to `dtype`).
    fn reference(&self, x: &Inputs, dtype: DType) -> Vec<f32> {
        let shape = self.cache_shape(x.num_blocks);
        let round = |c: &[f32]| -> Tensor {
            Tensor::from_slice(c, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
        };
        let q = Tensor::from_slice(&x.q, (x.meta.num_tokens(), self.heads, self.dim), &Device::Cpu).unwrap();
        let scale = 1.0 / (self.dim as f32).sqrt();
        let out = paged_attention(&q, &round(&x.k_cache), &round(&x.v_cache), &x.meta, scale, self.window).unwrap();
        out.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The CUDA kernels on the same inputs, with caches of `dtype`.
    fn on_gpu(&self, dev: &Device, x: &Inputs, dtype: DType) -> Vec<f32> {
        let shape = self.cache_shape(x.num_blocks);
        let upload = |c: &[f32]| Tensor::from_slice(c, shape, dev).unwrap().to_dtype(dtype).unwrap();
        let q = Tensor::from_slice(&x.q, (x.meta.num_tokens(), self.heads, self.dim), dev).unwrap();
        let (k, v) = (upload(&x.k_cache), upload(&x.v_cache));
        // The op allocates its output: fill freed memory of that size with poison first, so that the
        // allocator hands the kernel a poisoned buffer and an unwritten row cannot pass as zeros.
        drop((Tensor::ones(x.q.len(), DType::F32, dev).unwrap() * POISON as f64).unwrap());
        let scale = 1.0 / (self.dim as f32).sqrt();
        let out = paged_attention(&q, &k, &v, &x.meta, scale, self.window).unwrap();
        out.flatten_all().unwrap().to_vec1().unwrap()
    }
}

/// Mixed sequences: (context, q_len) pairs with `q_len ≤ max_q` and contexts up to `max_ctx`.
fn mixed(rng: &mut ChaCha8Rng, n: usize, max_q: usize, max_ctx: usize) -> Vec<(usize, usize)> {
    (0..n)
        .map(|_| {
            let q_len = rng.random_range(1..=max_q);
            (q_len + rng.random_range(0..=max_ctx - q_len), q_len)
        })
        .collect()
}

/// Error thresholds: the inputs are rounded to the cache type before both sides see them, so what
/// remains on CUDA cores is f32 accumulation order (and `exp` implementations).
const F32_ACCUMULATION: f32 = 3e-5;

/// The threshold of a case: the tensor-core kernels (f16/bf16 caches at head sizes ≥ 64, decoding
/// or not) also round the scaled queries and the softmax probabilities to the cache type (relative
/// steps 2⁻¹¹ for f16, 2⁻⁸ for bf16), ~3e-4 and ~2e-3 of the largest output in a simulation of that
/// rounding; everything else stays at f32 accumulation.
fn tolerance(case: &Case, dtype: DType) -> f32 {
    match dtype {
        DType::F16 if case.dim >= 64 => 2e-3,
        DType::BF16 if case.dim >= 64 => 1e-2,
        _ => F32_ACCUMULATION,
    }
}

fn check(case: &Case, dtypes: &[DType], seed: u64) {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = case.inputs(&mut rng);
    for &dtype in dtypes {
        let want = case.reference(&x, dtype);
        let got = case.on_gpu(&dev, &x, dtype);
        assert!(got.iter().all(|v| v.is_finite() && v.abs() < POISON), "{dtype:?}: a row was not written");
        let err = relative_error(&got, &want);
        println!(
            "attention heads {}/{} d {} window {} {dtype:?}: {} sequences, {} queries, relative error {err:.2e}",
            case.heads,
            case.kv_heads,
            case.dim,
            case.window,
            case.seqs.len(),
            x.meta.num_tokens()
        );
        let tolerance = tolerance(case, dtype);
        assert!(err < tolerance, "{dtype:?}: relative error {err:e}, over {tolerance:e}");
    }
}

const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[test]
fn decode_of_many_sequences_gqa_3_head_64() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let seqs: Vec<_> = (0..48).map(|_| (rng.random_range(1..2500), 1)).collect();
    check(&Case { heads: 9, kv_heads: 3, dim: 64, seqs, window: 0 }, &ALL, 11);
}

#[test]
fn decode_of_few_long_sequences_splits_the_context() {
    let seqs = vec![(32768, 1), (4097, 1), (1, 1), (255, 1), (256, 1), (257, 1)];
    check(&Case { heads: 32, kv_heads: 4, dim: 128, seqs, window: 0 }, &[DType::F16, DType::BF16], 12);
}

#[test]
fn prefill_chunks_over_cached_prefixes_gqa_8_head_128() {
    let seqs = vec![(512, 512), (3000, 64), (700, 7), (17, 16), (1, 1), (4100, 300)];
    check(&Case { heads: 32, kv_heads: 4, dim: 128, seqs, window: 0 }, &ALL, 13);
}

#[test]
fn mixed_batches_gqa_1_and_4_head_64() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    check(&Case { heads: 8, kv_heads: 8, dim: 64, seqs: mixed(&mut rng, 24, 40, 1200), window: 0 }, &ALL, 14);
    check(&Case { heads: 32, kv_heads: 8, dim: 64, seqs: mixed(&mut rng, 24, 90, 2000), window: 0 }, &ALL, 15);
}

/// Small heads (tiny test models): tiles capped at 64 rows and 64 keys.
#[test]
fn small_heads_16_and_32() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    check(&Case { heads: 4, kv_heads: 2, dim: 32, seqs: mixed(&mut rng, 16, 130, 700), window: 0 }, &ALL, 18);
    check(&Case { heads: 4, kv_heads: 1, dim: 16, seqs: mixed(&mut rng, 16, 130, 700), window: 40 }, &ALL, 19);
}

#[test]
fn sliding_window_head_256() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut seqs = mixed(&mut rng, 12, 70, 3000);
    seqs.push((5000, 1));
    seqs.push((600, 600));
    check(&Case { heads: 4, kv_heads: 1, dim: 256, seqs: seqs.clone(), window: 512 }, &ALL, 16);
    check(&Case { heads: 8, kv_heads: 2, dim: 256, seqs, window: 0 }, &[DType::F16], 17);
}

/// Speculative verification (a few queries) and prefill chunks over long cached prefixes, up to 32k
/// keys: many partitions per row; GQA 8 at head sizes 128 and 256 (with a window).
#[test]
fn verification_and_prefill_chunks_over_long_contexts() {
    let seqs = vec![(32768, 8), (20000, 130), (16384, 2), (5000, 5), (300, 300)];
    check(&Case { heads: 32, kv_heads: 4, dim: 128, seqs, window: 0 }, &ALL, 20);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut seqs = mixed(&mut rng, 10, 64, 9000);
    seqs.push((12000, 200));
    check(&Case { heads: 16, kv_heads: 2, dim: 256, seqs, window: 700 }, &[DType::F16, DType::BF16], 21);
}

/// Every kernel: f32 caches take the CUDA-core tiles and decode kernel, f16 and bf16 the tensor-core
/// ones.
#[test]
fn a_sequence_gets_bitwise_the_same_attention_alone_batched_or_chunked() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut seqs = mixed(&mut rng, 20, 30, 3000);
    seqs.insert(0, (1000, 100));
    seqs.insert(1, (2900, 1));
    // A decode of more partitions (141) than the few-rows reduce loads in one round trip: alone it
    // takes the widest reduce (`_c32`), batched the narrowest (`_c2`), which must sum alike.
    seqs.insert(2, (36000, 1));
    let batched = Case { heads: 9, kv_heads: 3, dim: 64, seqs, window: 0 };
    let x = batched.inputs(&mut rng);
    let row = 9 * 64;
    // The first sequence alone, then as two chunks (37 + 63 queries), over the same cache; the second
    // and third (one query: the decode kernel, 12 and 141 partitions) alone.
    let alone_meta = |seq: usize, ctx: usize, q: std::ops::Range<usize>| AttentionMetadata {
        slot_mapping: x.meta.slot_mapping[q.clone()].to_vec(),
        block_tables: x.meta.block_table(seq).to_vec(),
        max_blocks: x.meta.max_blocks,
        cu_query_lens: vec![0, q.len() as u32],
        context_lens: vec![ctx as u32],
        ..Default::default()
    };
    for dtype in ALL {
        let all = batched.on_gpu(&dev, &x, dtype);
        let run = |meta: AttentionMetadata, q: std::ops::Range<usize>| {
            let inputs = Inputs {
                q: x.q[q.start * row..q.end * row].to_vec(),
                k_cache: x.k_cache.clone(),
                v_cache: x.v_cache.clone(),
                meta,
                num_blocks: x.num_blocks,
            };
            batched.on_gpu(&dev, &inputs, dtype)
        };
        let alone = run(alone_meta(0, 1000, 0..100), 0..100);
        assert_eq!(alone, all[..100 * row], "{dtype:?}: batch composition changed a sequence's attention");
        let mut chunked = run(alone_meta(0, 937, 0..37), 0..37);
        chunked.extend(run(alone_meta(0, 1000, 37..100), 37..100));
        assert_eq!(chunked, alone, "{dtype:?}: chunking changed a sequence's attention");
        let decoding = run(alone_meta(1, 2900, 100..101), 100..101);
        assert_eq!(decoding, all[100 * row..101 * row], "{dtype:?}: batch composition changed a decode's attention");
        let long = run(alone_meta(2, 36000, 101..102), 101..102);
        assert_eq!(long, all[101 * row..102 * row], "{dtype:?}: batch composition changed a long decode's attention");
    }
}

#[test]
fn kv_write_converts_into_exactly_its_slots() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (blocks, kv_heads, dim, tokens) = (40, 3, 64, 300);
    let shape = (blocks, BLOCK, kv_heads, dim);
    let row = kv_heads * dim;
    let mut slots: Vec<u32> = (0..(blocks * BLOCK) as u32).collect();
    slots.shuffle(&mut rng);
    slots.truncate(tokens);
    let k = random(&mut rng, tokens * row);
    let v = random(&mut rng, tokens * row);
    for dtype in ALL {
        let poison = vec![POISON; blocks * BLOCK * row];
        let k_cache = Tensor::from_slice(&poison, shape, &dev).unwrap().to_dtype(dtype).unwrap();
        let v_cache = k_cache.copy().unwrap();
        let kt = Tensor::from_slice(&k, (tokens, kv_heads, dim), &dev).unwrap();
        let vt = Tensor::from_slice(&v, (tokens, kv_heads, dim), &dev).unwrap();
        kv_write(&kt, &vt, &writes(&slots), &k_cache, &v_cache).unwrap();
        for (cache, src) in [(&k_cache, &k), (&v_cache, &v)] {
            let got: Vec<f32> = cache.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let mut want = vec![POISON; got.len()];
            bodega::ops::cpu::kv_write(src, &slots, &mut want, row);
            let want: Vec<f32> = Tensor::from_vec(want, got.len(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want, "{dtype:?}: kv_write wrote other slots or other values");
        }
    }
}

/// The truncated SmolLM2 the GPU checks run on (real weights, fits the carry).
fn model_path() -> PathBuf {
    let path = std::env::var_os("BODEGA_GPU_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        panic!("set BODEGA_GPU_MODEL to a GGUF (scripts/gpu-check.sh makes a truncated SmolLM2 with scripts/truncate-gguf.py)")
    });
    assert!(path.is_file(), "BODEGA_GPU_MODEL={} does not exist", path.display());
    path
}

/// Quantized matrices dequantized to f32 as they load: a model both backends compute the same way
/// (f32 activations into every matmul), so that what differs between them is the backend alone. The
/// backends' own quantized paths each round activations to 8 bits first, each its own way (bodega's
/// CPU kernels per row and 32-block, candle's CUDA MMVQ/MMQ as Q8_1), which alone flips near-tied
/// top-1 tokens (docs/perf.md).
struct Dequantized<'a>(&'a mut dyn WeightSource);

impl WeightSource for Dequantized<'_> {
    fn has(&self, name: &str) -> bool {
        self.0.has(name)
    }

    fn matrix(&mut self, name: &str, device: &Device) -> bodega::Result<Matrix> {
        Ok(match self.0.matrix(name, device)? {
            Matrix::Quantized(t) => Matrix::Dense(t.dequantize(device)?),
            dense => dense,
        })
    }

    fn vector(&mut self, name: &str, device: &Device) -> bodega::Result<Tensor> {
        self.0.vector(name, device)
    }
}

/// The model on `device`: as stored (quantized matmuls), or with its matrices dequantized to f32.
fn load_model(device: &Device, dequantize: bool) -> Box<dyn Model> {
    let mut file = GgufFile::open(&model_path()).unwrap();
    let config = bodega::model::load::gguf_config(&mut file).unwrap();
    let options = LoadOptions::for_device(device, Some(DType::F32), None);
    match dequantize {
        true => bodega::model::build(&config, &mut Dequantized(&mut file), options, device).unwrap(),
        false => bodega::model::build(&config, &mut file, options, device).unwrap(),
    }
}

fn tokenizer() -> Arc<bodega::tokenizer::Tokenizer> {
    Arc::new(bodega::tokenizer::Tokenizer::from_gguf(&GgufFile::open(&model_path()).unwrap()).unwrap())
}

/// The reference prompts followed by the full model's greedy continuations (inputs only).
fn teacher_sequences() -> Vec<Vec<u32>> {
    let fixture: serde_json::Value = serde_json::from_str(include_str!("fixtures/reference-smollm2.json")).unwrap();
    let ids =
        |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut seq = ids(&c["prompt_ids"]);
            seq.extend(ids(&c["greedy_ids"]));
            seq
        })
        .collect()
}

/// Top-1 token after every position of `tokens`, in one prefill, with a KV cache of `kv_dtype`.
fn argmax_per_position(model: &dyn Model, device: &Device, kv_dtype: DType, tokens: &[u32]) -> Vec<u32> {
    let info = model.info();
    let blocks = tokens.len().div_ceil(BLOCK);
    let cache =
        PagedKvCache::new(info.num_layers, blocks, BLOCK, info.num_kv_heads, info.head_dim, kv_dtype, device).unwrap();
    let table: Vec<u32> = (0..blocks as u32).collect();
    let chunk = SeqChunk { tokens, start: 0, block_table: &table, sample: true, window_blocks: None };
    let mut input = build_step(&[chunk], BLOCK, device).unwrap();
    input.logits_rows = Tensor::arange(0u32, tokens.len() as u32, device).unwrap();
    let logits = model.forward(&input, &cache).unwrap();
    logits.argmax(1).unwrap().to_vec1().unwrap()
}

/// Top-1 tokens of a model over every teacher-forced position of the reference sequences.
fn teacher_forced_top1(model: &dyn Model, device: &Device, kv_dtype: DType) -> Vec<u32> {
    teacher_sequences().iter().flat_map(|seq| argmax_per_position(model, device, kv_dtype, seq)).collect()
}

/// Share of positions where two runs pick the same token, printed as `what`.
fn agreement(a: &[u32], b: &[u32], what: &str) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    let share = same as f64 / a.len() as f64;
    println!("teacher-forced top-1, {what}: {same}/{} = {:.2}%", a.len(), 100.0 * share);
    share
}

/// The CUDA backend against the CPU one on the same f32 weights: ≥ 99% of top-1 tokens agree. The
/// quantized models' agreement is printed beside it, with each backend against the f32 reference,
/// which shows where their difference comes from (8-bit activations, not the CUDA kernels).
#[test]
fn teacher_forced_top1_agrees_with_the_cpu_backend() {
    let dev = cuda();
    let kv = bodega::device::kv_dtype(&dev);
    let cpu_dense = teacher_forced_top1(load_model(&Device::Cpu, true).as_ref(), &Device::Cpu, DType::F32);
    let gpu_dense_model = load_model(&dev, true);
    let gpu_dense = teacher_forced_top1(gpu_dense_model.as_ref(), &dev, kv);
    let gpu_dense_f32_kv = teacher_forced_top1(gpu_dense_model.as_ref(), &dev, DType::F32);
    let cpu_quant = teacher_forced_top1(load_model(&Device::Cpu, false).as_ref(), &Device::Cpu, DType::F32);
    let gpu_quant = teacher_forced_top1(load_model(&dev, false).as_ref(), &dev, kv);
    agreement(&gpu_dense_f32_kv, &cpu_dense, "f32 weights, CUDA with an f32 KV cache vs CPU");
    agreement(&gpu_quant, &cpu_quant, "quantized weights, CUDA vs CPU");
    agreement(&cpu_quant, &cpu_dense, "CPU quantized vs CPU f32 weights");
    agreement(&gpu_quant, &cpu_dense, "CUDA quantized vs CPU f32 weights");
    let share = agreement(&gpu_dense, &cpu_dense, "f32 weights, CUDA (f16 KV cache) vs CPU");
    assert!(share >= 0.99, "CUDA agrees with the CPU on {:.2}% of top-1 tokens, below 99%", 100.0 * share);
}

/// An engine on the GPU over the f32-weight model, as in the agreement test above: candle's quantized
/// CUDA matmuls take another kernel (and rounding) for more than 8 rows, so with quantized weights a
/// sequence's logits depend on how many rows share its step.
fn engine(config: EngineConfig) -> Engine {
    let dev = cuda();
    Engine::start(load_model(&dev, true), tokenizer(), dev, config).unwrap()
}

fn config(max_batched_tokens: usize, kv_blocks: usize, prefix_caching: bool) -> EngineConfig {
    let layers = GgufFile::open(&model_path()).unwrap().usize("llama.block_count").unwrap();
    let per_block = PagedKvCache::bytes_per_block(layers, BLOCK, 3, 64, DType::F16);
    EngineConfig {
        max_batched_tokens,
        kv_memory: Some((kv_blocks * per_block) as u64),
        prefix_caching,
        ..EngineConfig::default()
    }
}

fn prompts() -> Vec<Vec<u32>> {
    let fixture: serde_json::Value = serde_json::from_str(include_str!("fixtures/reference-smollm2.json")).unwrap();
    fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["prompt_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect()
}

/// Greedy outputs of two engine configurations. The attention kernels are batch-invariant (tested
/// bitwise above), but cuBLAS is not: it picks its GEMM kernel (and summation order) by the number of
/// rows in the step, so a sequence's logits move in the last bits with the batch, and near-ties of a
/// 4-of-30-layer model may flip. So: every request completes at full length, and the
/// tokens agree position by position up to the first difference on at least 90% of all tokens; the
/// log says how many requests are identical.
fn assert_same_outputs(a: &[(Vec<u32>, usize)], b: &[(Vec<u32>, usize)], what: &str) {
    let (mut prefix, mut total, mut identical) = (0, 0, 0);
    for ((x, _), (y, _)) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "{what}: lengths differ");
        prefix += x.iter().zip(y).take_while(|(p, q)| p == q).count();
        total += x.len();
        identical += usize::from(x == y);
    }
    println!("{what}: {identical}/{} requests identical, {prefix}/{total} tokens before a difference", a.len());
    assert!(prefix as f64 >= 0.9 * total as f64, "{what}: only {prefix}/{total} tokens agree");
}

#[test]
fn engine_on_cuda_sixteen_concurrent_greedy_requests_match_each_alone() {
    let engine = engine(config(512, 512, false));
    let requests: Vec<Request> = prompts().into_iter().take(16).map(|p| common::greedy(p, 12)).collect();
    let alone: Vec<_> = requests.iter().map(|r| common::run_all(&engine, vec![r.clone()]).remove(0)).collect();
    let together = common::run_all(&engine, requests);
    assert_same_outputs(&alone, &together, "batched vs alone");
    assert_no_leak(&engine);
}

#[test]
fn engine_on_cuda_chunked_prefill_matches_whole_prompt_prefill() {
    let requests: Vec<Request> = prompts().into_iter().rev().take(6).map(|p| common::greedy(p, 6)).collect();
    let whole = common::run_all(&engine(config(4096, 512, false)), requests.clone());
    for chunk in [7, 61] {
        let chunked = common::run_all(&engine(config(chunk, 512, false)), requests.clone());
        assert_same_outputs(&whole, &chunked, &format!("chunks of {chunk} vs whole prefill"));
    }
}

#[test]
fn engine_on_cuda_preemption_under_a_small_kv_budget_keeps_every_output() {
    let requests: Vec<Request> = prompts().into_iter().take(10).map(|p| common::greedy(p, 24)).collect();
    let roomy = common::run_all(&engine(config(512, 512, false)), requests.clone());
    let tight_engine = engine(config(512, 12, false));
    let tight = common::run_all(&tight_engine, requests);
    assert!(tight_engine.stats().preemptions > 0, "the budget did not force preemption");
    assert_same_outputs(&roomy, &tight, "preempted vs roomy");
    assert_no_leak(&tight_engine);
}

#[test]
fn engine_on_cuda_prefix_cache_hits_keep_the_outputs() {
    let requests: Vec<Request> = prompts().into_iter().take(8).map(|p| common::greedy(p, 8)).collect();
    let cold = common::run_all(&engine(config(512, 512, false)), requests.clone());
    let warm = engine(config(512, 512, true));
    common::run_all(&warm, requests.clone());
    let again = common::run_all(&warm, requests);
    let cached: usize = again.iter().map(|(_, c)| c).sum();
    assert!(cached > 0, "the second round hit no cached prefix");
    assert_same_outputs(&cold, &again, "prefix cache hits vs cold");
    assert_no_leak(&warm);
}

/// The fused gated activation on CUDA reads gate and up as the two halves of one `[T, 2N]` matmul
/// output (strided, as the fused gate/up projection leaves them) and matches the CPU kernels.
#[test]
fn gated_activation_on_cuda_reads_strided_halves_and_matches_the_cpu() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    for (t, n) in [(1, 8192), (7, 1000), (64, 2304)] {
        let both: Vec<f32> = random(&mut rng, t * 2 * n).iter().map(|x| x * 6.0).collect();
        for act in [Activation::Silu, Activation::GeluTanh] {
            let on = |device: &Device| {
                let fused = Tensor::from_slice(&both, (t, 2 * n), device).unwrap();
                let (gate, up) = (fused.narrow(1, 0, n).unwrap(), fused.narrow(1, n, n).unwrap());
                let out = bodega::ops::gated_activation(&gate, &up, act).unwrap();
                out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            let err = relative_error(&on(&dev), &on(&Device::Cpu));
            assert!(err < 1e-5, "{act:?} [{t}, {n}]: relative error {err:e}");
        }
    }
}

/// The residual add fused with the next RMS norm on CUDA against candle's two ops on the CPU (the
/// CPU model's path): both outputs, at one token, a ragged batch and a prefill chunk.
#[test]
fn add_rms_norm_on_cuda_matches_the_cpu_add_and_norm() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    for (t, d) in [(1, 2048), (7, 576), (512, 640)] {
        let (x, y, w) = (random(&mut rng, t * d), random(&mut rng, t * d), random(&mut rng, d));
        let on = |device: &Device| {
            let tensor = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, device).unwrap();
            let (sum, normed) =
                bodega::ops::add_rms_norm(&tensor(&x, &[t, d]), &tensor(&y, &[t, d]), &tensor(&w, &[d]), 1e-5).unwrap();
            let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (flat(sum), flat(normed))
        };
        let (gpu, cpu) = (on(&dev), on(&Device::Cpu));
        assert_eq!(gpu.0, cpu.0, "[{t}, {d}]: the sums differ");
        let err = relative_error(&gpu.1, &cpu.1);
        assert!(err < 1e-5, "[{t}, {d}]: normed relative error {err:e}");
    }
}

/// Logits rows that make an argmax easy to get wrong: random values, the maximum repeated at several
/// indices (the lowest must win), NaN (read as −∞), all equal, and −∞ before the maximum.
fn tricky_logits(rng: &mut ChaCha8Rng, rows: usize, vocab: usize) -> Vec<f32> {
    let mut logits = random(rng, rows * vocab);
    for (r, row) in logits.chunks_exact_mut(vocab).enumerate() {
        let at = |rng: &mut ChaCha8Rng| rng.random_range(0..vocab);
        match r % 5 {
            1 => {
                let top = row.iter().fold(f32::MIN, |m, &x| m.max(x)) + 1.0;
                for _ in 0..3 {
                    row[at(rng)] = top;
                }
            }
            2 => {
                for _ in 0..vocab.div_ceil(7) {
                    row[at(rng)] = f32::NAN;
                }
            }
            3 => row.fill(0.25),
            4 => {
                row[0] = f32::NEG_INFINITY;
                row[at(rng)] = 2.0;
            }
            _ => {}
        }
    }
    logits
}

/// Greedy sampling on the device picks exactly the host's token for every row (ties, NaN, whole
/// vocabularies of one value), at Llama 3's vocabulary and at sizes that leave threads idle.
#[test]
fn argmax_rows_on_cuda_picks_the_hosts_token() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for (rows, vocab) in [(64, 128_256), (7, 1), (11, 33), (9, 1025), (5, 49_152)] {
        let logits = tricky_logits(&mut rng, rows, vocab);
        let want: Vec<u32> = logits.chunks_exact(vocab).map(bodega::ops::cpu::argmax).collect();
        let got = bodega::ops::argmax_rows(&Tensor::from_slice(&logits, (rows, vocab), &dev).unwrap()).unwrap();
        assert_eq!(got, want, "{rows} rows of {vocab}");
    }
}

/// Top-k sampling's candidates selected on the device are exactly the host's, ids and value bits
/// (ties to the lower id, NaN and ±0 in total order, rows of one value, −∞), at Llama 3's and
/// SmolLM2's vocabularies, for k from 1 to 256 and beyond a small vocabulary.
#[test]
fn top_k_rows_on_cuda_are_the_hosts_candidates() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    for (rows, vocab, k) in
        [(64, 128_256, 41), (5, 128_256, 256), (10, 49_152, 1), (10, 49_152, 40), (9, 1025, 97), (6, 30, 40)]
    {
        let mut logits = tricky_logits(&mut rng, rows, vocab);
        // Coarse values: many ties at the k-th largest.
        for x in logits.iter_mut().skip(vocab).take(vocab) {
            *x = (*x * 4.0).round() / 4.0;
        }
        let want: Vec<Vec<(u32, f32)>> =
            logits.chunks_exact(vocab).map(|row| bodega::ops::cpu::top_k(row, k)).collect();
        let got = bodega::ops::top_k_rows(&Tensor::from_slice(&logits, (rows, vocab), &dev).unwrap(), k).unwrap();
        assert_eq!(got.len(), rows);
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            let bits = |c: &[(u32, f32)]| c.iter().map(|&(i, v)| (i, v.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(g), bits(w), "{rows} rows of {vocab}, k = {k}: row {r}");
        }
    }
}

/// What sampling a decode step's rows costs with llama.cpp's default sampling (temperature 0.8,
/// top-k 40, top-p 0.95) at Llama 3's vocabulary: whole rows copied to the host and ranked there,
/// against top-k candidates selected on the device. Wall time of the split and the samplers, for
/// docs/perf.md; asserts that both draw the same tokens.
#[test]
fn sampled_rows_cost() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    let vocab = 128_256;
    for rows in [1usize, 16, 64] {
        let logits = Tensor::from_vec(random(&mut rng, rows * vocab), (rows, vocab), &dev).unwrap();
        let history = [1u32, 2, 3];
        let run = |want: RowWant| {
            let mut samplers: Vec<Sampler> = (0..rows)
                .map(|r| Sampler::new(bodega::engine::SamplingParams { seed: r as u64, ..Default::default() }))
                .collect();
            let mut tokens = Vec::new();
            let secs = time_per_call(&dev, 20, || {
                let split = bodega::runner::split_rows(&logits, &vec![want; rows]).unwrap();
                tokens = split
                    .into_iter()
                    .zip(&mut samplers)
                    .map(|(row, s)| match row {
                        StepRow::Candidates(c) => {
                            let dist = s.candidate_distribution(c, &history, 1);
                            s.draw(&dist)
                        }
                        StepRow::Logits(mut l) => s.sample(&mut l, &history, 1),
                        StepRow::Greedy(_) => unreachable!("no greedy rows asked for"),
                    })
                    .collect();
            });
            (secs, tokens)
        };
        let needed = Sampler::new(Default::default()).candidates_needed(&history, 1).unwrap();
        let (whole, whole_tokens) = run(RowWant::Logits);
        let (top, top_tokens) = run(RowWant::Top(needed));
        assert_eq!(top_tokens, whole_tokens, "{rows} rows: the candidates drew other tokens");
        println!(
            "sampled rows, {rows} × {vocab}: whole rows to the host {:.0} µs, top-{needed} on the device {:.0} µs ({:.1}×)",
            whole * 1e6,
            top * 1e6,
            whole / top
        );
    }
}

/// A step's rows split by sampler: greedy rows come back as the host's argmax, top-k rows as the
/// host's candidates, the others as their exact logits, in row order, on the GPU as on the CPU.
#[test]
fn split_rows_on_cuda_returns_greedy_tokens_candidates_and_exact_logits() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let (rows, vocab) = (12, 3000);
    let logits = tricky_logits(&mut rng, rows, vocab);
    let mixed = |r: usize| [RowWant::Logits, RowWant::Greedy, RowWant::Top(40 + r)][r % 3];
    for wants in [vec![RowWant::Greedy; rows], vec![RowWant::Logits; rows], (0..rows).map(mixed).collect()] {
        let cpu =
            bodega::runner::split_rows(&Tensor::from_slice(&logits, (rows, vocab), &Device::Cpu).unwrap(), &wants);
        let gpu = bodega::runner::split_rows(&Tensor::from_slice(&logits, (rows, vocab), &dev).unwrap(), &wants);
        let (cpu, gpu) = (cpu.unwrap(), gpu.unwrap());
        for (r, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            match (c, g) {
                (StepRow::Greedy(a), StepRow::Greedy(b)) => assert_eq!(a, b, "row {r}"),
                (StepRow::Candidates(a), StepRow::Candidates(b)) => {
                    assert_eq!(a.len(), 51, "row {r}: as many candidates as the most any row asked for");
                    let bits = |c: &[(u32, f32)]| c.iter().map(|&(i, v)| (i, v.to_bits())).collect::<Vec<_>>();
                    assert_eq!(bits(a), bits(b), "row {r}")
                }
                // NaN != NaN: compare the bits.
                (StepRow::Logits(a), StepRow::Logits(b)) => assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "row {r}: logits changed on the way"
                ),
                _ => panic!("row {r}: {c:?} on the CPU, {g:?} on the GPU"),
            }
        }
        assert_eq!(gpu.len(), rows);
    }
}

/// The engine on CUDA: greedy rows sampled on the device (token ids only) and top-k rows from
/// candidates selected on the device (llama.cpp's default sampling, a repeat penalty on some), against
/// the same requests asking for logprobs, which copies every row's logits to the host sampler; same
/// batch, same steps, same seeds, so every token must be the same. With n-gram speculation too
/// (verification on the device against the host's).
#[test]
fn engine_on_cuda_device_sampling_is_token_identical_to_the_host_sampler() {
    let dev = cuda();
    let with_logprobs = |r: &Request| {
        let mut r = r.clone();
        r.sampling.logprobs = Some(1);
        r
    };
    let sampled = |(i, p): (usize, Vec<u32>)| {
        let mut r = common::greedy(p, 24);
        r.sampling = bodega::engine::SamplingParams {
            seed: i as u64,
            repeat_penalty: if i % 2 == 0 { 1.1 } else { 1.0 },
            ..Default::default()
        };
        r
    };
    let requests: Vec<Request> = prompts()
        .into_iter()
        .take(12)
        .enumerate()
        .map(|(i, p)| if i % 3 == 0 { common::greedy(p, 24) } else { sampled((i, p)) })
        .collect();
    for speculate in [false, true] {
        let speculation =
            speculate.then(|| Speculation { proposer: Box::new(PromptLookup), max_tokens: 4, max_batch: 64 });
        let engine =
            Engine::start_with(load_model(&dev, true), tokenizer(), dev.clone(), config(512, 512, false), speculation)
                .unwrap();
        let on_device = common::run_all(&engine, requests.clone());
        let on_host = common::run_all(&engine, requests.iter().map(with_logprobs).collect());
        for (i, (d, h)) in on_device.iter().zip(&on_host).enumerate() {
            assert_eq!(d.0, h.0, "speculation {speculate}: request {i} differs between device and host sampling");
        }
        assert_no_leak(&engine);
    }
}

/// Sequences decoding on twin caches, one through an executor op by op and one through an executor
/// that replays CUDA graphs: each sequence's own blocks (block 0 left unused) and tokens so far.
struct TwinDecode<'a> {
    model: &'a dyn Model,
    caches: [PagedKvCache; 2],
    executors: [Executor; 2],
    tables: Vec<Vec<u32>>,
    seqs: Vec<Vec<u32>>,
}

impl<'a> TwinDecode<'a> {
    /// `lens[i]` tokens of the teacher text for sequence `i` (all but the last prefilled on both
    /// caches), with blocks for `room` more.
    fn new(model: &'a dyn Model, dev: &Device, lens: &[usize], room: usize) -> Self {
        let info = model.info();
        let text: Vec<u32> = teacher_sequences().concat();
        let per_seq = (lens.iter().max().unwrap() + room).div_ceil(BLOCK);
        let tables: Vec<Vec<u32>> =
            (0..lens.len()).map(|i| (0..per_seq as u32).map(|b| 1 + (i * per_seq) as u32 + b).collect()).collect();
        let blocks = 1 + lens.len() * per_seq;
        let new_cache = || {
            PagedKvCache::new(info.num_layers, blocks, BLOCK, info.num_kv_heads, info.head_dim, DType::F16, dev)
                .unwrap()
        };
        let caches = [new_cache(), new_cache()];
        let seqs: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| text.iter().cycle().skip(31 * i).take(n).copied().collect())
            .collect();
        for cache in &caches {
            for (seq, table) in seqs.iter().zip(&tables) {
                let prompt = &seq[..seq.len() - 1];
                let chunk =
                    SeqChunk { tokens: prompt, start: 0, block_table: table, sample: false, window_blocks: None };
                run_step(model, cache, &[chunk], dev).unwrap();
            }
        }
        let executors = [Executor::new(dev.clone(), false), Executor::new(dev.clone(), true)];
        Self { model, caches, executors, tables, seqs }
    }

    /// Runs `steps` decode steps of every sequence on both twins (sequence `i` greedy when
    /// `greedy[i]`), appends each step's token, and returns the largest logit difference between the
    /// twins; fails when it exceeds `tolerance` or greedy tokens differ.
    fn decode(&mut self, steps: usize, greedy: &[bool], tolerance: f32, what: &str) -> f32 {
        let batch = self.seqs.len();
        let wants: Vec<RowWant> = greedy.iter().map(|&g| if g { RowWant::Greedy } else { RowWant::Logits }).collect();
        let mut worst = 0f32;
        for step in 0..steps {
            let mut outputs = Vec::new();
            for (executor, cache) in self.executors.iter_mut().zip(&self.caches) {
                let chunks: Vec<SeqChunk> = self
                    .seqs
                    .iter()
                    .zip(&self.tables)
                    .map(|(seq, table)| {
                        let n = seq.len();
                        let block_table = &table[..n.div_ceil(BLOCK)];
                        SeqChunk { tokens: &seq[n - 1..], start: n - 1, block_table, sample: true, window_blocks: None }
                    })
                    .collect();
                outputs.push(executor.run_step_rows(self.model, cache, &chunks, &vec![1; batch], &wants).unwrap());
            }
            for (i, (eager, replayed)) in outputs[0].iter().zip(&outputs[1]).enumerate() {
                let next = match (eager, replayed) {
                    (StepRow::Greedy(a), StepRow::Greedy(b)) => {
                        assert_eq!(a, b, "{what}, step {step}, sequence {i}: greedy tokens differ");
                        *a
                    }
                    (StepRow::Logits(a), StepRow::Logits(b)) => {
                        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                        assert!(diff <= tolerance, "{what}, step {step}, sequence {i}: logits differ by {diff}");
                        worst = worst.max(diff);
                        bodega::ops::cpu::argmax(a)
                    }
                    _ => panic!("{what}: the executors returned different kinds of rows"),
                };
                self.seqs[i].push(next);
            }
        }
        worst
    }

    /// Graphs captured by (the eager executor, the graph executor).
    fn captures(&self) -> (usize, usize) {
        (self.executors[0].graphs_captured(), self.executors[1].graphs_captured())
    }
}

/// Decode steps replayed from CUDA graphs against the same steps run op by op, on twin caches:
/// batches of exactly a bucket (1 and 4 sequences: nothing padded) and between buckets (5, padded to
/// 8 with rows that write nothing), greedy and sampled rows, and contexts that outgrow a table bucket
/// (256 tokens) mid-run, so that a second graph is captured. Unpadded batches: every logit bitwise
/// equal to the eager step's. Padded: cuBLAS picks its GEMM by row count, so the twin caches drift
/// in the last bits (and f16 rounding): logits within 5e-3. Greedy tokens identical.
#[test]
fn decode_graph_replays_match_eager_steps() {
    let dev = cuda();
    let model = load_model(&dev, true);
    let lens = [250usize, 17, 100, 255, 300];
    let steps = 12;
    // (batch, graphs it must capture: one per table bucket its contexts pass through)
    for (batch, expected_graphs, tolerance) in [(1, 2, 0.0), (4, 2, 0.0), (5, 1, 5e-3)] {
        let mut twins = TwinDecode::new(model.as_ref(), &dev, &lens[..batch], steps);
        let greedy: Vec<bool> = (0..batch).map(|i| i % 2 == 0).collect();
        let worst = twins.decode(steps, &greedy, tolerance, &format!("batch {batch}"));
        println!("graphs vs eager, batch {batch}: largest logit difference {worst:e}");
        let (eager, graphs) = twins.captures();
        assert_eq!(eager, 0, "the eager executor captured graphs");
        assert_eq!(
            graphs, expected_graphs,
            "batch {batch}: graphs captured (0: the capture failed, see the warning above)"
        );
    }
}

/// candle's quantized CUDA matmuls keep per-device workspaces that they replace (freeing the old one)
/// when a larger product comes, and a captured graph holds the old address (`ops::candle_scratch`).
/// On the quantized model: 16 sequences decode (their graph captured, then replayed); one 600-token
/// prefill step grows candle's MMQ workspace; tensors of a known value are allocated (they may take
/// the freed workspace); the 16 decode again. Their graph must be captured again, not replayed (a
/// replay would write into those tensors), the tensors must keep their value, and every step's logits
/// must equal the op-by-op twin's (16 rows: the same kernels either way).
#[test]
fn decode_graphs_are_captured_again_after_candles_quantized_workspaces_grow() {
    let dev = cuda();
    let model = load_model(&dev, false);
    let (steps, long) = (4, 600);
    let lens: Vec<usize> = (0..16).map(|i| 20 + 3 * i).collect();
    let mut twins = TwinDecode::new(model.as_ref(), &dev, &lens, 2 * steps);
    let greedy = vec![false; lens.len()];
    twins.decode(steps, &greedy, 0.0, "before the long prefill");
    assert_eq!(twins.captures(), (0, 1), "one graph for 16 sequences (0: the capture failed, see the warning above)");
    let prompt: Vec<u32> = teacher_sequences().concat().into_iter().cycle().take(long).collect();
    let info = model.info();
    let blocks = long.div_ceil(BLOCK);
    for executor in &mut twins.executors {
        let cache =
            PagedKvCache::new(info.num_layers, 1 + blocks, BLOCK, info.num_kv_heads, info.head_dim, DType::F16, &dev)
                .unwrap();
        let table: Vec<u32> = (1..=blocks as u32).collect();
        let chunk = SeqChunk { tokens: &prompt, start: 0, block_table: &table, sample: true, window_blocks: None };
        executor.run_step_rows(model.as_ref(), &cache, &[chunk], &[1], &[RowWant::Greedy]).unwrap();
    }
    let guards: Vec<Tensor> = (0..512).map(|i| Tensor::full(7f32, 1024 * (1 + i % 64), &dev).unwrap()).collect();
    twins.decode(steps, &greedy, 0.0, "after the long prefill");
    assert_eq!(twins.captures(), (0, 2), "the graph was replayed after candle's workspace moved");
    for (i, guard) in guards.iter().enumerate() {
        let values: Vec<f32> = guard.to_vec1().unwrap();
        assert!(values.iter().all(|&v| v == 7.0), "a decode step wrote into tensor {i}, allocated after the prefill");
    }
}

/// The engine with CUDA graphs (the default) against the engine op by op: 16 concurrent greedy
/// requests (batches padded between buckets as requests finish) complete alike; one request alone
/// (batch 1, nothing padded) is token-identical.
#[test]
fn engine_on_cuda_graph_replays_keep_the_outputs() {
    let requests: Vec<Request> = prompts().into_iter().take(16).map(|p| common::greedy(p, 24)).collect();
    let eager_config = EngineConfig { cuda_graphs: false, ..config(512, 512, false) };
    let (eager, graphs) = (engine(eager_config), engine(config(512, 512, false)));
    let alone = |engine: &Engine| common::run_all(engine, vec![requests[0].clone()]).remove(0).0;
    assert_eq!(alone(&eager), alone(&graphs), "one request alone differs between graph replays and eager steps");
    let together = common::run_all(&graphs, requests.clone());
    assert_same_outputs(&common::run_all(&eager, requests), &together, "graph replays vs eager");
    assert_no_leak(&graphs);
}

fn assert_no_leak(engine: &Engine) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while engine.stats().blocks.used != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stats = engine.stats();
    assert_eq!(stats.blocks.used, 0, "blocks leaked: {stats:?}");
    assert_eq!((stats.running, stats.waiting), (0, 0));
}

/// Seconds per call of `f`, after a warm-up, timed between device synchronisations.
fn time_per_call(dev: &Device, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    dev.synchronize().unwrap();
    let start = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.synchronize().unwrap();
    start.elapsed().as_secs_f64() / iters as f64
}

/// The fused RoPE + cache write on CUDA against the CPU's candle RoPE and `kv_write`: both pairings,
/// f32/f16/bf16 caches, q/k/v as strided thirds of one fused projection, one token and several, a
/// padding row. Every cache slot the step does not name keeps its poison.
#[test]
fn rope_kv_write_on_cuda_matches_the_cpu_rope_and_kv_write() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(47);
    let (heads, kv_heads, d, slots) = (8, 2, 64, 40);
    for interleaved in [true, false] {
        for t in [1, 5] {
            let width = (heads + 2 * kv_heads) * d;
            let fused =
                Tensor::from_vec(random(&mut rng, t * width), (t, heads + 2 * kv_heads, d), &Device::Cpu).unwrap();
            let angles = Tensor::from_vec(random(&mut rng, t * d / 2), (t, 1, d / 2), &Device::Cpu).unwrap();
            let (cos, sin) = ((&angles * 3.0).unwrap().cos().unwrap(), (&angles * 3.0).unwrap().sin().unwrap());
            let mut slot_mapping: Vec<u32> = (0..slots as u32).collect();
            slot_mapping.shuffle(&mut rng);
            slot_mapping.truncate(t);
            if t > 1 {
                slot_mapping[1] = bodega::ops::PADDING_SLOT;
            }
            let meta = AttentionMetadata {
                slot_mapping: slot_mapping.clone(),
                block_tables: vec![0],
                max_blocks: 1,
                cu_query_lens: vec![0, t as u32],
                context_lens: vec![t as u32],
                ..Default::default()
            };
            let run = |device: &Device, dtype: DType| {
                let on = |x: &Tensor| x.to_device(device).unwrap();
                let fused = on(&fused);
                let (q, k, v) = (
                    fused.narrow(1, 0, heads).unwrap(),
                    fused.narrow(1, heads, kv_heads).unwrap(),
                    fused.narrow(1, heads + kv_heads, kv_heads).unwrap(),
                );
                let poisoned =
                    || Tensor::full(7.0f32, (slots, 1, kv_heads, d), device).unwrap().to_dtype(dtype).unwrap();
                let (k_cache, v_cache) = (poisoned(), poisoned());
                let (cos, sin) = (on(&cos), on(&sin));
                let tables = bodega::ops::RopeTables { cos: &cos, sin: &sin, interleaved };
                let q = bodega::ops::rope_kv_write(&q, &k, &v, tables, &meta, (&k_cache, &v_cache)).unwrap();
                let host =
                    |x: &Tensor| x.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (host(&q), host(&k_cache), host(&v_cache))
            };
            let (q_cpu, k_cpu, v_cpu) = run(&Device::Cpu, DType::F32);
            for (dtype, tolerance) in [(DType::F32, 1e-6), (DType::F16, 2e-3), (DType::BF16, 1e-2)] {
                let (q_gpu, k_gpu, v_gpu) = run(&dev, dtype);
                let what = format!("interleaved {interleaved}, {t} tokens, {dtype:?} cache");
                assert!(relative_error(&q_gpu, &q_cpu) < 1e-6, "{what}: rotated queries differ");
                assert!(relative_error(&k_gpu, &k_cpu) < tolerance, "{what}: cached keys differ");
                assert!(relative_error(&v_gpu, &v_cpu) < tolerance, "{what}: cached values differ");
                let row = kv_heads * d;
                for slot in (0..slots).filter(|s| !slot_mapping.contains(&(*s as u32))) {
                    let untouched = |c: &[f32]| c[slot * row..(slot + 1) * row].iter().all(|&x| x == 7.0);
                    assert!(untouched(&k_gpu) && untouched(&v_gpu), "{what}: slot {slot} was written");
                }
            }
        }
    }
}

/// The tensor-core decode kernel starts reading a sequence's older keys while the kernel before it
/// still runs (`kernels/cuda/dependent_launch.cuh`), never its newest key and value: here, as in a
/// decode step, the fused RoPE + cache write writes every newest key and value (their slots poisoned
/// before) right before the attention op, whose metadata is already uploaded so that no copy
/// separates the two kernels. Against the same two ops on the CPU. Newest keys in a warp's first
/// tiles (held back from the early copies and copied after the wait: left out or misplaced, the
/// row would hold another key) and in later ones, in short and full partitions; head sizes 64 and
/// 128 (two tiles in flight a warp, and one). Whether a read of the newest key before the wait would
/// see its poison depends on timing: a build that read it early passed on an H200 (docs/perf.md).
#[test]
fn decode_reads_the_newest_keys_the_kernel_before_wrote() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let contexts = [1, 17, 100, 300, 1000, 4097, 4200, 4351, 5000, 8192];
    for dim in [64, 128] {
        let case = Case { heads: 32, kv_heads: 8, dim, seqs: contexts.map(|ctx| (ctx, 1)).to_vec(), window: 0 };
        let mut x = case.inputs(&mut rng);
        // Cached keys and values the f16 cache holds exactly, so that both sides start equal.
        for cache in [&mut x.k_cache, &mut x.v_cache] {
            *cache = Tensor::from_slice(cache, cache.len(), &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F16)?.to_dtype(DType::F32)?.to_vec1())
                .unwrap();
        }
        let t = contexts.len();
        let (heads, kv_heads) = (case.heads, case.kv_heads);
        let new_k = random(&mut rng, t * kv_heads * dim);
        let new_v = random(&mut rng, t * kv_heads * dim);
        let angles = random(&mut rng, t * dim / 2);
        let shape = case.cache_shape(x.num_blocks);
        let scale = 1.0 / (dim as f32).sqrt();
        // RoPE + cache write, then attention, on `device` over caches of `dtype` made from `k`, `v`.
        let step = |device: &Device, dtype: DType, k: &[f32], v: &[f32], warm_up: bool| -> Vec<f32> {
            let tensor = |data: &[f32], shape: &[usize]| Tensor::from_slice(data, shape, device).unwrap();
            let (q, kt, vt) = (
                tensor(&x.q, &[t, heads, dim]),
                tensor(&new_k, &[t, kv_heads, dim]),
                tensor(&new_v, &[t, kv_heads, dim]),
            );
            let angles = (tensor(&angles, &[t, 1, dim / 2]) * 3.0).unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            let tables = bodega::ops::RopeTables { cos: &cos, sin: &sin, interleaved: true };
            let caches = || {
                let cache = |c: &[f32]| Tensor::from_slice(c, shape, device).unwrap().to_dtype(dtype).unwrap();
                (cache(k), cache(v))
            };
            if warm_up {
                let (k_cache, v_cache) = caches();
                let q = bodega::ops::rope_kv_write(&q, &kt, &vt, tables, &x.meta, (&k_cache, &v_cache)).unwrap();
                drop(paged_attention(&q, &k_cache, &v_cache, &x.meta, scale, 0).unwrap());
            }
            let (k_cache, v_cache) = caches();
            let q = bodega::ops::rope_kv_write(&q, &kt, &vt, tables, &x.meta, (&k_cache, &v_cache)).unwrap();
            let out = paged_attention(&q, &k_cache, &v_cache, &x.meta, scale, 0).unwrap();
            out.flatten_all().unwrap().to_vec1().unwrap()
        };
        let want = step(&Device::Cpu, DType::F32, &x.k_cache, &x.v_cache, false);
        let row = kv_heads * dim;
        for &slot in &x.meta.slot_mapping {
            for cache in [&mut x.k_cache, &mut x.v_cache] {
                cache[slot as usize * row..(slot as usize + 1) * row].fill(POISON);
            }
        }
        let got = step(&dev, DType::F16, &x.k_cache, &x.v_cache, true);
        assert!(got.iter().all(|v| v.is_finite()), "head size {dim}: a poisoned newest key or value was read");
        let err = relative_error(&got, &want);
        println!("newest keys written right before the decode, head size {dim}: relative error {err:.2e}");
        assert!(err < tolerance(&case, DType::F16), "head size {dim}: relative error {err:e}");
    }
}

/// Seconds of GPU time per call of `f`: `iters` calls captured into one CUDA graph and replayed, so
/// that the host's per-op cost (which `time_per_call` includes) drops out. `f` must not upload.
fn gpu_time_per_call(dev: &Device, iters: usize, mut f: impl FnMut()) -> f64 {
    let graph = capture(dev, || {
        for _ in 0..iters {
            f();
        }
    });
    graph.launch().unwrap();
    dev.synchronize().unwrap();
    let replays = 5;
    let start = std::time::Instant::now();
    for _ in 0..replays {
        graph.launch().unwrap();
    }
    dev.synchronize().unwrap();
    start.elapsed().as_secs_f64() / (replays * iters) as f64
}

/// A CUDA graph of what `record` submits, captured as the engine captures its decode steps, after one
/// eager call of it (which loads the kernels).
fn capture(dev: &Device, mut record: impl FnMut()) -> CudaGraph {
    let Device::Cuda(cuda) = dev else { panic!("capture needs a CUDA device") };
    record();
    dev.synchronize().unwrap();
    let recorded = bodega::ops::cuda_capture::capture(&cuda.cuda_stream(), || -> candle_core::Result<()> {
        record();
        Ok(())
    });
    recorded.unwrap().0.expect("the capture recorded nothing")
}

/// The GEMV kernel against the CPU reference op: f16 and bf16 weights, 1 to 8 rows, N not a multiple
/// of a block's rows, K from one 8-element chunk to a long tail. A row's sums do not depend on the
/// other rows: every row of an 8-row product equals, bitwise, that row alone.
#[test]
fn dense_gemv_on_cuda_matches_the_cpu_reference() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    for dtype in [DType::F16, DType::BF16] {
        for (n, k) in [(1001, 8), (37, 2056), (3, 8200)] {
            let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let w_gpu = w.to_device(&dev).unwrap();
            let x = Tensor::from_vec(random(&mut rng, 8 * k), (8, k), &Device::Cpu).unwrap();
            let x_gpu = x.to_device(&dev).unwrap();
            let all: Vec<f32> =
                bodega::ops::dense_gemv(&x_gpu, &w_gpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for m in 1..=8 {
                let rows = |t: &Tensor| t.narrow(0, 0, m).unwrap();
                assert_eq!(bodega::ops::gemv_takes(&rows(&x_gpu), &w_gpu), m <= bodega::ops::GEMV_MAX_ROWS);
                let cpu: Vec<f32> =
                    bodega::ops::dense_gemv(&rows(&x), &w).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let gpu: Vec<f32> =
                    bodega::ops::dense_gemv(&rows(&x_gpu), &w_gpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let err = relative_error(&gpu, &cpu);
                assert!(err < 1e-5, "{dtype:?} {m}×{k} by {n}×{k}: relative error {err}");
                assert_eq!(gpu, all[..m * n], "{dtype:?} {n}×{k}: the first {m} rows differ from the 8-row product's");
            }
        }
    }
}

/// Llama-3.2-1B's decode matrices `[N, K]` (Q/K/V and gate/up fused, as the model holds them), for the
/// GEMV throughput tests.
const DECODE_MATRICES: [(&str, usize, usize); 5] = [
    ("Q/K/V 3072×2048", 3072, 2048),
    ("O 2048×2048", 2048, 2048),
    ("gate/up 16384×2048", 16384, 2048),
    ("down 2048×8192", 2048, 8192),
    ("output 128256×2048", 128256, 2048),
];

/// The GEMV kernel against cuBLAS with the casts it needs (f32 → f16, the GEMM, f16 → f32) on
/// Llama-3.2-1B's decode matrices, GPU time only, as GB/s of weights read. Printed for docs/perf.md;
/// asserts only that they ran.
#[test]
fn dense_gemv_throughput() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    for (name, n, k) in DECODE_MATRICES {
        let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &dev).unwrap().to_dtype(DType::F16).unwrap();
        for m in [1, 2, 4, 8] {
            let x = Tensor::from_vec(random(&mut rng, m * k), (m, k), &dev).unwrap();
            let gemv = gpu_time_per_call(&dev, 50, || drop(bodega::ops::dense_gemv(&x, &w).unwrap()));
            let cublas = gpu_time_per_call(&dev, 50, || {
                let product = x.to_dtype(DType::F16).unwrap().matmul(&w.t().unwrap()).unwrap();
                drop(product.to_dtype(DType::F32).unwrap())
            });
            let gbs = |secs: f64| (n * k * 2) as f64 / secs / 1e9;
            println!(
                "gemv {name}, {m} rows: {:.1} µs, {:.0} GB/s; cuBLAS with casts {:.1} µs, {:.0} GB/s ({:.2}×)",
                gemv * 1e6,
                gbs(gemv),
                cublas * 1e6,
                gbs(cublas),
                cublas / gemv
            );
        }
    }
}

/// Q8_0 blocks of a `[n, k]` matrix with no zero weight and scales that differ block to block: each
/// value is ±(0.05 to 1) times its block's factor (1 to 7), so every int8 is at least 6 in magnitude.
fn q8_0_weights(rng: &mut ChaCha8Rng, n: usize, k: usize) -> QTensor {
    let values: Vec<f32> = (0..n * k)
        .map(|i| {
            let magnitude = rng.random_range(0.05f32..1.0) * (1 + (i / 32) % 7) as f32;
            if rng.random_bool(0.5) {
                magnitude
            } else {
                -magnitude
            }
        })
        .collect();
    QTensor::quantize(&Tensor::from_vec(values, (n, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap()
}

/// The Q8_0 GEMV kernel against the CPU reference op on the same blocks (made by candle's quantizer):
/// 1 to 16 rows (one tile of 8 rows of x, two tiles from 9 wherever they fit a block's shared memory:
/// not at K = 8,192 on an H100), N not a multiple of a block's 16 rows, K from one staged chunk of
/// 256 weights to 17 (an odd count: a block's warps take different numbers of chunks), and N of up to
/// 1,025 groups of 16 rows (more than a grid of resident blocks: each block takes several). Before
/// each call a poisoned tensor of the output's size is freed, so that the op's allocation gets poison
/// back and a sum the kernel skips shows up. A row's sums do not depend on the other rows: every row
/// of the largest product the kernel takes equals, bitwise, that row alone and in every smaller batch.
/// `QWeights::forward` runs the kernel at `QGEMV_ROWS` rows where a launch fits and candle's `QMatMul`
/// elsewhere (17 rows; 9 to 16 where two tiles do not fit); a K that is not a multiple of
/// `QGEMV_K_MULTIPLE` is refused by the kernel with an error and left to candle. Thresholds: max |error| ≤ 1e-5 × max |reference|
/// against the CPU reference (both quantize x the same way, the block products are exact integers,
/// only the order of the f32 sums differs); ≤ 1e-3 against candle's `QMatMul` on the GPU (it keeps
/// x's scales in f16: 2⁻¹¹ of each block's scale).
#[test]
fn q8_gemv_on_cuda_matches_the_cpu_reference() {
    use bodega::ops::{q8_gemv, qgemv_takes, QWeights, QGEMV_K_MULTIPLE, QGEMV_ROWS};
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(53);
    let host = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let on_device = |w: &QTensor| {
        let storage = QStorage::from_data(w.data().unwrap(), &dev, GgmlDType::Q8_0).unwrap();
        Arc::new(QTensor::new(storage, w.shape().clone()).unwrap())
    };
    let mut two_tiles = 0;
    for (n, k) in [(1001, 256), (37, 4352), (3, 2304), (130, 512), (16387, 256), (2050, 8192)] {
        let w = q8_0_weights(&mut rng, n, k);
        let w_gpu = on_device(&w);
        let most = *QGEMV_ROWS.end();
        let x = Tensor::from_vec(random(&mut rng, (most + 1) * k), (most + 1, k), &Device::Cpu).unwrap();
        let x_gpu = x.to_device(&dev).unwrap();
        let on_gpu = |x: &Tensor| {
            drop(Tensor::full(POISON, (x.dim(0).unwrap(), n), &dev).unwrap());
            host(q8_gemv(x, &w_gpu).unwrap())
        };
        let rows = |t: &Tensor, m: usize| t.narrow(0, 0, m).unwrap();
        let largest = (1..=most).rev().find(|&m| qgemv_takes(&rows(&x_gpu, m), &w_gpu)).unwrap();
        assert!(largest >= 8, "{n}×{k}: the kernel must take 8 rows");
        let all = on_gpu(&rows(&x_gpu, largest));
        let weights = QWeights::new(w_gpu.clone()).unwrap();
        let candle = candle_core::quantized::QMatMul::from_arc(w_gpu.clone()).unwrap();
        for m in 1..=most + 1 {
            let rows = |t: &Tensor| rows(t, m);
            let takes = m <= largest;
            assert_eq!(qgemv_takes(&rows(&x_gpu), &w_gpu), takes, "{m} rows of {n}×{k}");
            two_tiles += usize::from(takes && m > 8);
            let candle = host(candle_core::Module::forward(&candle, &rows(&x_gpu)).unwrap());
            let routed = host(weights.forward(&rows(&x_gpu)).unwrap());
            if !takes {
                assert_eq!(routed, candle, "{m} rows of {n}×{k}: QWeights::forward took the wrong path");
                continue;
            }
            let cpu = host(q8_gemv(&rows(&x), &w).unwrap());
            let gpu = on_gpu(&rows(&x_gpu));
            let (err, err_candle) = (relative_error(&gpu, &cpu), relative_error(&gpu, &candle));
            println!("q8_gemv {m}×{k} by {n}×{k}: relative error {err:.2e}, against candle's QMatMul {err_candle:.2e}");
            assert!(err <= 1e-5, "{m}×{k} by {n}×{k}: relative error {err}");
            assert!(err_candle <= 1e-3, "{m}×{k} by {n}×{k}: relative error {err_candle} against candle");
            assert_eq!(gpu, all[..m * n], "{n}×{k}: the first {m} rows differ from the {largest}-row product's");
            assert_eq!(routed, gpu, "{m} rows of {n}×{k}: QWeights::forward took the wrong path");
        }
    }
    assert!(two_tiles > 0, "the two-tile kernel (9 to 16 rows) never ran");
    // K = 96: not the kernel's; QWeights::forward takes candle's QMatMul.
    let (n, k) = (40usize, 96usize);
    assert!(!k.is_multiple_of(QGEMV_K_MULTIPLE));
    let w_gpu = on_device(&q8_0_weights(&mut rng, n, k));
    let x_gpu = Tensor::from_vec(random(&mut rng, 4 * k), (4, k), &dev).unwrap();
    assert!(!qgemv_takes(&x_gpu, &w_gpu));
    assert!(q8_gemv(&x_gpu, &w_gpu).is_err(), "the kernel must refuse K = {k}, not read past its rows");
    let candle = candle_core::quantized::QMatMul::from_arc(w_gpu.clone()).unwrap();
    let expected = host(candle_core::Module::forward(&candle, &x_gpu).unwrap());
    assert_eq!(host(QWeights::new(w_gpu).unwrap().forward(&x_gpu).unwrap()), expected);
}

/// The Q8_0 GEMV kernel against candle's `QMatMul::forward` (after quantizing the activations in a
/// launch of its own: its MMVQ kernel up to 8 rows, MMQ above) at 1 to 16 rows of Llama-3.2-1B's
/// decode matrices, GPU time only, as GB/s of
/// weight bytes read. Consecutive calls read different copies of the weights, at least 256 MiB in
/// all, as a decode step reads each matrix once from memory (the H100's L2 holds 50 MB: a matrix
/// read over and over would be timed from L2). Printed for docs/perf.md; asserts only that they ran.
#[test]
fn q8_gemv_throughput() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(59);
    for (name, n, k) in DECODE_MATRICES {
        let values = Tensor::rand(-1f32, 1f32, (n, k), &dev).unwrap();
        let w = QTensor::quantize(&values, GgmlDType::Q8_0).unwrap();
        drop(values);
        let (bytes, blocks) = (w.storage_size_in_bytes(), w.data().unwrap());
        let copies: Vec<Arc<QTensor>> = (0..(256 << 20) / bytes + 1)
            .map(|_| {
                let storage = QStorage::from_data(blocks.clone(), &dev, GgmlDType::Q8_0).unwrap();
                Arc::new(QTensor::new(storage, w.shape().clone()).unwrap())
            })
            .collect();
        let candle: Vec<_> =
            copies.iter().map(|w| candle_core::quantized::QMatMul::from_arc(w.clone()).unwrap()).collect();
        for m in [1, 2, 4, 8, 16] {
            let x = Tensor::from_vec(random(&mut rng, m * k), (m, k), &dev).unwrap();
            if !bodega::ops::qgemv_takes(&x, &copies[0]) {
                println!("q8_gemv {name}, {m} rows: no launch fits; left to candle's QMatMul");
                continue;
            }
            let mut call = 0;
            let kernel = gpu_time_per_call(&dev, 50, || {
                drop(bodega::ops::q8_gemv(&x, &copies[call % copies.len()]).unwrap());
                call += 1;
            });
            let qmatmul = gpu_time_per_call(&dev, 50, || {
                drop(candle_core::Module::forward(&candle[call % candle.len()], &x).unwrap());
                call += 1;
            });
            let gbs = |secs: f64| bytes as f64 / secs / 1e9;
            println!(
                "q8_gemv {name}, {m} rows ({} copies): {:.1} µs, {:.0} GB/s; candle QMatMul {:.1} µs, {:.0} GB/s ({:.2}×)",
                copies.len(),
                kernel * 1e6,
                gbs(kernel),
                qmatmul * 1e6,
                gbs(qmatmul),
                qmatmul / kernel
            );
        }
    }
}

/// Achieved throughput of the attention kernels on Llama-3.2-1B's attention shape (32 query heads
/// over 8 KV heads of 64, f16 cache; also at Llama-3.1-8B's head size 128), printed for
/// docs/perf.md: decode as GB/s of cache read against the measured device-to-device copy bandwidth,
/// prefill as TFLOP/s, also for a 512-token prompt chunk after 4,096 and 16,384 cached tokens (`bench
/// --depth`'s prompt). Consecutive calls read different copies of the caches, at least 256 MiB in
/// all (the H100's L2 holds 50 MB: a small cache read over and over would be timed from L2, which
/// no decode step sees). Asserts only that they ran.
#[test]
fn attention_kernel_throughput() {
    let dev = cuda();
    let Device::Cuda(cuda_dev) = &dev else { unreachable!("cuda() is a CUDA device") };
    // The driver's device-to-device copy (cuMemcpyDtoD) of 1 GiB: faster than candle's copy kernel,
    // so the ceiling the attention kernels are held to.
    let stream = cuda_dev.cuda_stream();
    let gib = 1usize << 30;
    let src = stream.alloc_zeros::<u8>(gib).unwrap();
    let mut dst = stream.alloc_zeros::<u8>(gib).unwrap();
    let copy = time_per_call(&dev, 20, || stream.memcpy_dtod(&src, &mut dst).unwrap());
    drop((src, dst));
    let peak = 2.0 * gib as f64 / copy / 1e9;
    println!("measured peak: device-to-device copy {peak:.0} GB/s (read + write of 1 GiB)");
    let (heads, kv_heads) = (32, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let shapes = [
        (64, 1, 4096, 1),
        (64, 1, 16384, 1),
        (64, 1, 32768, 1),
        (64, 1, 65536, 1),
        (64, 1, 131072, 1),
        (64, 16, 4096, 1),
        (64, 64, 4096, 1),
        (64, 64, 1024, 1),
        (64, 4, 32768, 1),
        (64, 4, 2048, 512),
        (64, 1, 4096 + 512, 512),
        (64, 1, 16384 + 512, 512),
    ];
    let head_128 = [(128, 1, 16384, 1), (128, 16, 4096, 1), (128, 4, 2048, 512)];
    for (d, seqs, ctx, q_len) in shapes.into_iter().chain(head_128) {
        let case = Case { heads, kv_heads, dim: d, seqs: vec![(ctx, q_len); seqs], window: 0 };
        let x = case.inputs(&mut rng);
        let shape = case.cache_shape(x.num_blocks);
        let k = Tensor::from_slice(&x.k_cache, shape, &dev).unwrap().to_dtype(DType::F16).unwrap();
        let v = Tensor::from_slice(&x.v_cache, shape, &dev).unwrap().to_dtype(DType::F16).unwrap();
        let bytes = 2 * k.elem_count() * 2;
        let caches: Vec<(Tensor, Tensor)> =
            (0..(256 << 20) / bytes + 1).map(|_| (k.copy().unwrap(), v.copy().unwrap())).collect();
        let q = Tensor::from_slice(&x.q, (x.meta.num_tokens(), heads, d), &dev).unwrap();
        let scale = 1.0 / (d as f32).sqrt();
        // GPU time alone (calls replayed from a graph): the op's host work is not the kernels'.
        let mut call = 0;
        let secs = gpu_time_per_call(&dev, 20, || {
            let (k, v) = &caches[call % caches.len()];
            call += 1;
            drop(paged_attention(&q, k, v, &x.meta, scale, 0).unwrap())
        });
        if q_len == 1 {
            let gbs = (seqs * ctx * kv_heads * d * 2 * 2) as f64 / secs / 1e9;
            println!(
                "decode attention, head {d}: {seqs} × {ctx} keys: {:.1} µs, {gbs:.0} GB/s = {:.0}% of copy peak",
                secs * 1e6,
                100.0 * gbs / peak
            );
        } else {
            // Causal: query i of a chunk ending at the context's end sees ctx - q_len + i + 1 keys.
            let pairs: usize = (0..q_len).map(|i| ctx - q_len + i + 1).sum();
            let flops = (seqs * heads * pairs * d * 4) as f64;
            println!(
                "prefill attention, head {d}: {seqs} × {q_len} queries over {ctx}: {:.1} µs, {:.1} TFLOP/s",
                secs * 1e6,
                flops / secs / 1e12
            );
        }
    }
}

/// The host's cost of each kind of op a decode step issues (1 token, Llama-3.2-1B shapes, f16
/// weights), printed for docs/perf.md: µs per call, 200 calls queued back to back and one
/// synchronisation at the end, so that host time dominates wherever it exceeds the kernel's.
/// Asserts only that they ran.
#[test]
fn decode_op_host_costs() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let x = Tensor::from_vec(random(&mut rng, 2048), (1, 2048), &dev).unwrap();
    let w = Tensor::from_vec(random(&mut rng, 3072 * 2048), (3072, 2048), &dev).unwrap().to_dtype(DType::F16).unwrap();
    let norm = Tensor::from_vec(random(&mut rng, 2048), 2048, &dev).unwrap();
    let wide = Tensor::from_vec(random(&mut rng, 3072), (1, 3072), &dev).unwrap();
    let cos = Tensor::from_vec(random(&mut rng, 32), (1, 1, 32), &dev).unwrap();
    let host_ids = vec![7u32; 64];
    let time = |what: &str, f: &mut dyn FnMut()| {
        let us = time_per_call(&dev, 200, f) * 1e6;
        println!("decode op host cost: {what}: {us:.1} µs per call");
    };
    time("to_dtype f32 → f16 [1, 2048]", &mut || drop(x.to_dtype(DType::F16).unwrap()));
    let xh = x.to_dtype(DType::F16).unwrap();
    time("matmul f16 [1, 2048] × [3072, 2048]ᵀ (cuBLAS)", &mut || drop(xh.matmul(&w.t().unwrap()).unwrap()));
    time("rms_norm [1, 2048]", &mut || drop(candle_nn::ops::rms_norm(&x, &norm, 1e-5).unwrap()));
    time("add [1, 2048]", &mut || drop((&x + &x).unwrap()));
    time("narrow + contiguous [1, 512] of [1, 3072]", &mut || {
        drop(wide.narrow(1, 2048, 512).unwrap().contiguous().unwrap())
    });
    let q = wide.narrow(1, 0, 2048).unwrap().reshape((1, 32, 1, 64)).unwrap();
    let q = q.contiguous().unwrap();
    time("rope_i [1, 32, 1, 64]", &mut || drop(candle_nn::rotary_emb::rope_i(&q, &cos, &cos).unwrap()));
    time("silu [1, 3072]", &mut || drop(candle_nn::ops::silu(&wide).unwrap()));
    time("upload 64 u32 (Tensor::from_slice)", &mut || drop(Tensor::from_slice(&host_ids, 64, &dev).unwrap()));
    time("empty synchronize", &mut || dev.synchronize().unwrap());
}

/// Where a graph-replayed decode step's time goes (synthetic Llama-3.2-1B, f16 and q8_0 weights, 1 and
/// 4 sequences at context 128), printed for docs/perf.md: the forward pass alone on the GPU (replayed
/// from a graph of 20 passes), each small op alone on the GPU, the greedy tokens' argmax and copy,
/// and the executor's whole step as the engine runs it (host work, uploads, replay, argmax, copy),
/// graphs on and off. The difference between the step and the GPU's forward pass is the host's share.
/// Asserts only that graphs were captured and the tokens agree with `--eager`.
#[test]
fn decode_step_time_split() {
    let dev = cuda();
    let Device::Cuda(cuda_dev) = &dev else { unreachable!() };
    let context = 128usize;
    for weights in ["f16", "q8_0"] {
        let spec: SyntheticSpec = format!("llama-3.2-1b:{weights}").parse().unwrap();
        let mut files = ModelFiles::Gguf(spec.open().unwrap());
        let model = bodega::model::load(&mut files, LoadOptions::for_device(&dev, None, None), &dev).unwrap();
        let info = model.info().clone();
        for seqs in [1usize, 4] {
            let per_seq = (context + 1).div_ceil(BLOCK);
            let kv = bodega::device::kv_dtype(&dev);
            let cache =
                PagedKvCache::new(info.num_layers, seqs * per_seq, BLOCK, info.num_kv_heads, info.head_dim, kv, &dev)
                    .unwrap();
            let tables: Vec<Vec<u32>> =
                (0..seqs).map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect()).collect();
            let token = [7u32];
            let chunks: Vec<SeqChunk> = tables
                .iter()
                .map(|t| SeqChunk { tokens: &token, start: context, block_table: t, sample: true, window_blocks: None })
                .collect();
            let input = build_step(&chunks, BLOCK, &dev).unwrap();
            let forward = {
                let _uploads = cuda_dev.enable_cuda_graph_htod_cache();
                let one = capture(&dev, || drop(model.forward(&input, &cache).unwrap()));
                let (programmatic, kernels) = bodega::ops::cuda_capture::programmatic_edges(&one).unwrap();
                println!("{weights}, {seqs} sequences: a captured forward pass has {kernels} kernels, {programmatic} programmatic edges");
                gpu_time_per_call(&dev, 20, || drop(model.forward(&input, &cache).unwrap()))
            };
            let logits = model.forward(&input, &cache).unwrap();
            let argmax = time_per_call(&dev, 50, &mut || drop(bodega::ops::argmax_rows(&logits).unwrap()));
            let step_time = |graphs: bool| {
                let mut executor = Executor::new(dev.clone(), graphs);
                let (rows, wants) = (vec![1; seqs], vec![RowWant::Greedy; seqs]);
                let mut step = || executor.run_step_rows(model.as_ref(), &cache, &chunks, &rows, &wants).unwrap();
                let first = step();
                step();
                let iters = 100;
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    assert_eq!(step(), first, "a repeated step changed its tokens");
                }
                let per_step = start.elapsed().as_secs_f64() / iters as f64;
                (per_step, executor.graphs_captured(), first)
            };
            let (replayed, captured, tokens) = step_time(true);
            let (eager, _, eager_tokens) = step_time(false);
            assert_eq!(captured, 1, "{weights}, {seqs} sequences: no graph captured (see the warning above)");
            assert_eq!(tokens, eager_tokens, "{weights}, {seqs} sequences: graph and eager tokens differ");
            let us = |s: f64| s * 1e6;
            println!(
                "decode step split, {weights}, {seqs} seq at context {context}: forward on the GPU {:.0} µs; argmax + \
                 copy {:.0} µs (wall); executor step with graphs {:.0} µs (host share {:.0} µs, {:.0}%), eager {:.0} µs",
                us(forward),
                us(argmax),
                us(replayed),
                us(replayed - forward),
                (replayed - forward) / replayed * 100.0,
                us(eager)
            );
        }
    }
    // The small ops of one decode layer, each alone on the GPU (Llama-3.2-1B shapes, one token).
    let mut rng = ChaCha8Rng::seed_from_u64(37);
    let x = Tensor::from_vec(random(&mut rng, 2048), (1, 2048), &dev).unwrap();
    let norm = Tensor::from_vec(random(&mut rng, 2048), 2048, &dev).unwrap();
    let fused = Tensor::from_vec(random(&mut rng, 16384), (1, 16384), &dev).unwrap();
    let (gate, up) = (fused.narrow(1, 0, 8192).unwrap(), fused.narrow(1, 8192, 8192).unwrap());
    let qkv = Tensor::from_vec(random(&mut rng, 3072), (1, 3072), &dev).unwrap();
    let [q, k, v] = [(0, 32), (2048, 8), (2560, 8)].map(|(at, heads)| qkv.narrow(1, at, heads * 64).unwrap());
    let [q, k, v] = [(q, 32), (k, 8), (v, 8)].map(|(t, heads)| t.reshape((1, heads, 64)).unwrap());
    let angles = Tensor::from_vec(random(&mut rng, 32), (1, 1, 32), &dev).unwrap();
    let tables = bodega::ops::RopeTables { cos: &angles, sin: &angles, interleaved: true };
    let caches = [0, 1].map(|_| Tensor::zeros((16, 16, 8, 64), DType::F16, &dev).unwrap());
    let meta = AttentionMetadata {
        slot_mapping: vec![130],
        block_tables: (0..16).collect(),
        max_blocks: 16,
        cu_query_lens: vec![0, 1],
        context_lens: vec![131],
        ..Default::default()
    };
    let op =
        |what: &str, secs: f64| println!("decode step split, one op alone on the GPU: {what}: {:.1} µs", secs * 1e6);
    op(
        "add + rms norm [1, 2048]",
        gpu_time_per_call(&dev, 50, || drop(bodega::ops::add_rms_norm(&x, &x, &norm, 1e-5).unwrap())),
    );
    op(
        "gated activation [1, 8192]",
        gpu_time_per_call(&dev, 50, || drop(bodega::ops::gated_activation(&gate, &up, Activation::Silu).unwrap())),
    );
    op(
        "rope + cache write, 32 + 8 heads of 64",
        gpu_time_per_call(&dev, 50, || {
            drop(bodega::ops::rope_kv_write(&q, &k, &v, tables, &meta, (&caches[0], &caches[1])).unwrap())
        }),
    );
    for (seqs, ctx) in [(1, 128), (1, 512), (4, 128), (1, 2048)] {
        let case = Case { heads: 32, kv_heads: 8, dim: 64, seqs: vec![(ctx, 1); seqs], window: 0 };
        let inputs = case.inputs(&mut rng);
        let shape = case.cache_shape(inputs.num_blocks);
        let [k, v] = [&inputs.k_cache, &inputs.v_cache]
            .map(|c| Tensor::from_slice(c, shape, &dev).unwrap().to_dtype(DType::F16).unwrap());
        let q = Tensor::from_slice(&inputs.q, (seqs, 32, 64), &dev).unwrap();
        let secs = gpu_time_per_call(&dev, 50, || drop(paged_attention(&q, &k, &v, &inputs.meta, 0.125, 0).unwrap()));
        op(&format!("decode attention {seqs} × {ctx} keys, f16"), secs);
    }
}

/// Inside a captured graph each bodega kernel follows the kernel before it programmatically, although
/// every op allocates its output and frees its input between them (memory nodes, which a plain
/// capture puts on the chain: `ops::cuda_capture`). Prints the GPU time per op of a long chain.
#[test]
fn captured_bodega_kernels_follow_each_other_programmatically() {
    let dev = cuda();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = Tensor::from_vec(random(&mut rng, 2048), (1, 2048), &dev).unwrap();
    let norm = Tensor::from_vec(random(&mut rng, 2048), 2048, &dev).unwrap();
    let w = Tensor::from_vec(random(&mut rng, 2048 * 2048), (2048, 2048), &dev).unwrap().to_dtype(DType::F16).unwrap();
    // Add + norm, then a product by the normed row: two kernels an op, each output freed at the next.
    let chain = |ops: usize| {
        let mut h = x.clone();
        for _ in 0..ops {
            let (sum, normed) = bodega::ops::add_rms_norm(&h, &x, &norm, 1e-5).unwrap();
            drop(sum);
            h = bodega::ops::dense_gemv(&normed, &w).unwrap();
        }
    };
    let graph = capture(&dev, || chain(4));
    let (programmatic, kernels) = bodega::ops::cuda_capture::programmatic_edges(&graph).unwrap();
    println!("a captured chain of 4 add + norm and 4 products: {programmatic} programmatic edges, {kernels} kernels");
    assert_eq!((programmatic, kernels), (7, 8), "every kernel but the first follows the one before programmatically");
    let per_op = gpu_time_per_call(&dev, 1, || chain(100)) * 1e6 / 200.0;
    println!("a captured chain of 100 add + norm and 100 products (2048 × 2048 f16): {per_op:.2} µs per kernel");
}
