//! Every architecture and weight type the loader claims, on tiny synthetic GGUF files: each loads,
//! produces finite logits of the right shape, gives the same logits alone and batched, and actually
//! uses the tensors that make it different (Qwen2's biases, Qwen3's Q/K norms, an untied output).

use bodega::model::load::gguf::GgufFile;
use bodega::model::Model;
use bodega::ops::PagedKvCache;
use bodega::runner::{run_step, SeqChunk};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

const HIDDEN: usize = 256;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const FFN: usize = 512;
const LAYERS: usize = 2;
const VOCAB: usize = 64;

/// What to put in the synthetic file.
struct Spec {
    arch: &'static str,
    dtype: GgmlDType,
    /// Multiplies the Q/K/V biases (Qwen2) or Q/K norm weights (Qwen3): lets a test change them.
    special_scale: f32,
    untied_output: bool,
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    // A cheap deterministic pattern in [-0.1, 0.1], different per tensor.
    let data: Vec<f32> =
        (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 2001) as f32 / 10000.0) - 0.1).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn gguf(spec: &Spec) -> tempfile::NamedTempFile {
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut seed = 0;
    let mut add = |name: &str, shape: &[usize], dtype: GgmlDType, scale: f32| {
        seed += 1;
        let t = (random(shape, seed) * scale as f64).unwrap();
        tensors.push((name.to_string(), QTensor::quantize(&t, dtype).unwrap()));
    };
    add("token_embd.weight", &[VOCAB, HIDDEN], spec.dtype, 1.0);
    add("output_norm.weight", &[HIDDEN], GgmlDType::F32, 10.0);
    if spec.untied_output {
        add("output.weight", &[VOCAB, HIDDEN], spec.dtype, 1.0);
    }
    for l in 0..LAYERS {
        let p = |n: &str| format!("blk.{l}.{n}");
        add(&p("attn_norm.weight"), &[HIDDEN], GgmlDType::F32, 10.0);
        add(&p("ffn_norm.weight"), &[HIDDEN], GgmlDType::F32, 10.0);
        add(&p("attn_q.weight"), &[HEADS * HEAD_DIM, HIDDEN], spec.dtype, 1.0);
        add(&p("attn_k.weight"), &[KV_HEADS * HEAD_DIM, HIDDEN], spec.dtype, 1.0);
        add(&p("attn_v.weight"), &[KV_HEADS * HEAD_DIM, HIDDEN], spec.dtype, 1.0);
        add(&p("attn_output.weight"), &[HIDDEN, HEADS * HEAD_DIM], spec.dtype, 1.0);
        add(&p("ffn_gate.weight"), &[FFN, HIDDEN], spec.dtype, 1.0);
        add(&p("ffn_up.weight"), &[FFN, HIDDEN], spec.dtype, 1.0);
        add(&p("ffn_down.weight"), &[HIDDEN, FFN], spec.dtype, 1.0);
        if spec.arch == "qwen2" {
            add(&p("attn_q.bias"), &[HEADS * HEAD_DIM], GgmlDType::F32, 10.0 * spec.special_scale);
            add(&p("attn_k.bias"), &[KV_HEADS * HEAD_DIM], GgmlDType::F32, 10.0 * spec.special_scale);
            add(&p("attn_v.bias"), &[KV_HEADS * HEAD_DIM], GgmlDType::F32, 10.0 * spec.special_scale);
        }
        if spec.arch == "qwen3" {
            add(&p("attn_q_norm.weight"), &[HEAD_DIM], GgmlDType::F32, 10.0 * spec.special_scale);
            add(&p("attn_k_norm.weight"), &[HEAD_DIM], GgmlDType::F32, 10.0 * spec.special_scale);
        }
    }
    let key = |k: &str| format!("{}.{k}", spec.arch);
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(spec.arch.into())),
        (key("embedding_length"), Value::U32(HIDDEN as u32)),
        (key("block_count"), Value::U32(LAYERS as u32)),
        (key("feed_forward_length"), Value::U32(FFN as u32)),
        (key("attention.head_count"), Value::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (key("attention.key_length"), Value::U32(HEAD_DIM as u32)),
        (key("context_length"), Value::U32(256)),
        (key("rope.freq_base"), Value::F32(10000.0)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
    ];
    let file = tempfile::NamedTempFile::new().unwrap();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(file.path()).unwrap(), &md, &ts).unwrap();
    file
}

fn load(spec: &Spec) -> Box<dyn Model> {
    let file = gguf(spec);
    let mut gguf = GgufFile::open(file.path()).unwrap();
    bodega::model::from_gguf(&mut gguf, &Device::Cpu).unwrap()
}

/// Last-token logits of each prompt, all in one step.
fn logits(model: &dyn Model, prompts: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let cache = PagedKvCache::new(LAYERS, 16, 16, KV_HEADS, HEAD_DIM, DType::F32, &Device::Cpu).unwrap();
    let tables: Vec<Vec<u32>> = (0..prompts.len() as u32).map(|i| vec![i * 2, i * 2 + 1]).collect();
    let chunks: Vec<SeqChunk> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqChunk { tokens: p, start: 0, block_table: t, sample: true, window_blocks: None })
        .collect();
    run_step(model, &cache, &chunks, &Device::Cpu).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![1, 5, 9, 13, 2, 7], vec![3, 3, 60, 12, 40, 41, 42, 43, 44, 45, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
}

fn check(spec: &Spec) -> Vec<Vec<f32>> {
    let model = load(spec);
    assert_eq!(model.info().vocab_size, VOCAB);
    let batched = logits(model.as_ref(), &prompts());
    for (i, p) in prompts().iter().enumerate() {
        let alone = logits(model.as_ref(), std::slice::from_ref(p)).remove(0);
        assert_eq!(alone.len(), VOCAB);
        assert!(alone.iter().all(|x| x.is_finite()), "{} {:?}: non-finite logits", spec.arch, spec.dtype);
        assert_eq!(alone, batched[i], "{} {:?}: batched logits differ", spec.arch, spec.dtype);
    }
    batched
}

#[test]
fn every_architecture_loads_and_runs() {
    for arch in ["llama", "mistral", "qwen2", "qwen3"] {
        check(&Spec { arch, dtype: GgmlDType::Q8_0, special_scale: 1.0, untied_output: false });
    }
}

#[test]
fn every_weight_type_loads_and_runs() {
    use GgmlDType::*;
    for dtype in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K] {
        check(&Spec { arch: "llama", dtype, special_scale: 1.0, untied_output: true });
    }
}

#[test]
fn qwen2_biases_and_qwen3_norms_are_applied() {
    for arch in ["qwen2", "qwen3"] {
        let a = check(&Spec { arch, dtype: GgmlDType::F32, special_scale: 1.0, untied_output: false });
        let b = check(&Spec { arch, dtype: GgmlDType::F32, special_scale: 3.0, untied_output: false });
        assert_ne!(a, b, "{arch}: changing its extra tensors did not change the logits");
    }
}

#[test]
fn an_untied_output_layer_is_used() {
    let tied = check(&Spec { arch: "llama", dtype: GgmlDType::F32, special_scale: 1.0, untied_output: false });
    let untied = check(&Spec { arch: "llama", dtype: GgmlDType::F32, special_scale: 1.0, untied_output: true });
    assert_ne!(tied, untied);
}
