//! Model reference → a running engine: the engine flags every subcommand shares, and the notices
//! printed while loading.

use super::pull::Bars;
use super::{GlobalArgs, UsageError};
use crate::engine::speculative::draft::DraftModel;
use crate::engine::speculative::ngram::PromptLookup;
use crate::engine::speculative::{default_spec_max_batch, default_spec_tokens, Proposer, Speculation};
use crate::engine::{Engine, EngineConfig, SamplingParams};
use crate::error::Error;
use crate::hub::{Fetch, PullEvent};
use crate::model::load::synthetic::SyntheticSpec;
use crate::model::load::{LoadOptions, ModelFiles};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Engine flags (run, and later chat, serve-lite and bench).
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct EngineArgs {
    /// Most tokens of context per sequence (prompt + reply), at most the model's trained length.
    /// Example: --ctx-size 4096
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
    ctx_size: Option<u32>,
    /// Most sequences decoded together in one step. Example: --max-seqs 16
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_seqs: u32,
    /// Most tokens in one step: decode tokens plus prefill chunks (long prompts are split into chunks
    /// of at most this size). Example: --max-batched-tokens 256
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_batched_tokens: u32,
    /// Memory for the KV cache, e.g. 512M or 2G (default: a quarter of the memory available after the
    /// weights load, at most what --max-seqs full-context sequences need). Example: --kv-memory 1G
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    kv_memory: Option<u64>,
    /// Do not reuse the KV cache of shared prompt prefixes. Example: --no-prefix-cache
    #[arg(long)]
    no_prefix_cache: bool,
    /// Run every step op by op: no CUDA graphs for decode steps (they replay the whole forward pass
    /// with one launch on an NVIDIA GPU). For comparison and debugging. Example: --eager
    #[arg(long)]
    eager: bool,
    /// Dtype of unquantized weights (safetensors, F16/BF16/F32 GGUF tensors, dequantized MLX):
    /// auto = f32 on the CPU, the model's bf16/f16 on GPUs. Example: --dtype f16
    #[arg(long, value_enum, default_value_t = WeightDtype::Auto)]
    dtype: WeightDtype,
    /// Let a thinking model (Qwen3) think before it answers: its chat template's `enable_thinking`
    /// (default: the template's own default). Example: --think
    #[arg(long, overrides_with = "no_think")]
    think: bool,
    /// Ask a thinking model to answer without thinking (`enable_thinking=false`). Example: --no-think
    #[arg(long, overrides_with = "think")]
    no_think: bool,
    /// Speculative decoding: `ngram` (guesses copied from earlier in the prompt and reply) or
    /// `draft=MODEL` (a smaller model with the same tokenizer guesses). Example: --speculative ngram
    #[arg(long, value_name = "ngram|draft=MODEL", value_parser = parse_speculative)]
    speculative: Option<String>,
    /// Most guessed tokens per sequence and step; each sequence adapts below it to its acceptance.
    /// Default: 8 for ngram, 4 for a draft model. Example: --spec-tokens 6
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=64))]
    spec_tokens: Option<u32>,
    /// Speculation is off in a step where more than N sequences decode (the batch is then
    /// compute-bound and guesses cost as much as tokens). Default: 4 on the CPU, 16 on a GPU
    /// (measured). Example: --spec-max-batch 8
    #[arg(long, value_name = "N")]
    spec_max_batch: Option<u32>,
    /// With --speculative draft=MODEL: use only the draft's first N layers (a cheaper, weaker
    /// draft). Example: --draft-layers 8
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    draft_layers: Option<u32>,
}

/// `--dtype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// f32 on the CPU, the model's half type on GPUs.
    Auto,
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl WeightDtype {
    fn requested(self) -> Option<DType> {
        match self {
            Self::Auto => None,
            Self::F32 => Some(DType::F32),
            Self::F16 => Some(DType::F16),
            Self::Bf16 => Some(DType::BF16),
        }
    }
}

/// Checks the form of `--speculative`.
fn parse_speculative(s: &str) -> Result<String, String> {
    match s.strip_prefix("draft=") {
        Some("") => Err("draft= needs a model, e.g. draft=smollm2-135m".into()),
        Some(_) => Ok(s.to_string()),
        None if s == "ngram" => Ok(s.to_string()),
        None => Err(format!("'{s}' is neither ngram nor draft=MODEL")),
    }
}

/// Parses `1024`, `512K`, `512M`, `2G`, `1.5G` (binary multiples; a trailing `B`/`iB` is allowed).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (number, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let scale: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("'{s}' is not a size (examples: 512M, 2G)")),
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("'{s}' is not a size (examples: 512M, 2G)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("'{s}' must be more than 0"));
    }
    Ok((value * scale as f64) as u64)
}

/// A loaded model ready to serve.
pub struct Loaded {
    /// The engine serving it.
    pub engine: Engine,
    /// Its tokenizer and chat template.
    pub tokenizer: Arc<Tokenizer>,
    /// The model file.
    pub path: PathBuf,
    /// Its main weight type (`Q4_1`, ...), for reports.
    pub quant: Option<String>,
    /// The GPU it runs on (`Apple M2 Pro`), for reports; `None` on the CPU.
    pub gpu: Option<String>,
    /// The model's default sampling (its `generation_config.json`), for settings left unset.
    pub sampling: SamplingParams,
}

/// Resolves `reference` to a GGUF file or a model folder, pulling it (with progress on stderr) when it is a Hub
/// repository that is not cached, unless `--no-pull`.
pub fn model_file(reference: &str, global: &GlobalArgs) -> anyhow::Result<PathBuf> {
    let mut bars = Bars::new(global.quiet);
    let mut show = |event: PullEvent<'_>| bars.show(event);
    let fetch = match global.no_pull {
        true => Fetch::Never { why: "--no-pull" },
        false => Fetch::Pull(&mut show),
    };
    let path = crate::hub::resolve(reference, fetch)?;
    bars.finish();
    Ok(path)
}

/// Keeps candle's elementwise ops on the thread that calls them, unless the user set
/// `CANDLE_NUM_THREADS`. candle splits large ones over a spinning pool of its own; beside the kernel
/// pool that runs every matmul and attention, the two pools' threads fight for the same cores
/// (prompt processing ran 1.35× faster on 2 cores without candle's pool). A model with GGUF types
/// that only candle's quantized kernels read keeps candle's pool, which those kernels use.
/// Called before the first candle op, which sizes candle's pool once.
fn keep_candle_on_the_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Resolves, opens and loads `reference` on the chosen device, and starts the engine.
pub fn load(reference: &str, engine_args: &EngineArgs, global: &GlobalArgs) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    let device = crate::device::select(global.device)?;
    let path = model_file(reference, global)?;
    start(ModelFiles::open(&path)?, path, engine_args, device, global, started)
}

/// Builds a synthetic model (random weights of a named shape) on the chosen device and starts the
/// engine; its `path` is the spec's name.
pub fn load_synthetic(spec: &SyntheticSpec, engine_args: &EngineArgs, global: &GlobalArgs) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    let device = crate::device::select(global.device)?;
    start(ModelFiles::Gguf(spec.open()?), PathBuf::from(spec.to_string()), engine_args, device, global, started)
}

/// Builds the model and its tokenizer from `files` on `device` and starts the engine.
fn start(
    mut files: ModelFiles,
    path: PathBuf,
    engine_args: &EngineArgs,
    device: Device,
    global: &GlobalArgs,
    started: Instant,
) -> anyhow::Result<Loaded> {
    if device.is_cpu() && !files.needs_candle_cpu_kernels() {
        keep_candle_on_the_calling_thread();
    }
    if let Some(memory) = crate::device::unified_memory(&device) {
        memory.check_weights(files.weight_bytes())?;
    }
    let mut tokenizer = tokenizer_of(&files)?;
    if engine_args.think || engine_args.no_think {
        tokenizer.set_template_default("enable_thinking", engine_args.think.into());
    }
    let tokenizer = Arc::new(tokenizer);
    let quant = files.quantization();
    let sampling = files.sampling_defaults()?;
    let options = LoadOptions::for_device(&device, engine_args.dtype.requested(), files.native_dtype());
    let model = crate::model::load(&mut files, options, &device)?;
    if let ModelFiles::Safetensors(folder) = &files {
        notice_dequantized(folder.dequantized(), options.dense_dtype, global);
    }
    let info = model.info().clone();
    let config = EngineConfig {
        context_length: engine_args.ctx_size.map_or(info.context_length, |n| n as usize),
        max_seqs: engine_args.max_seqs as usize,
        max_batched_tokens: engine_args.max_batched_tokens as usize,
        kv_memory: engine_args.kv_memory,
        prefix_caching: !engine_args.no_prefix_cache,
        cuda_graphs: !engine_args.eager,
        ..EngineConfig::default()
    };
    let on_cpu = device.is_cpu();
    let gpu = crate::device::gpu_name(&device);
    let speculation = speculation(engine_args, &tokenizer, info.vocab_size, &device, global)?;
    let engine = Engine::start_with(model, tokenizer.clone(), device, config, speculation)?;
    let (blocks, block_size) = engine.kv_blocks();
    tracing::info!(
        "loaded {} ({}, {} {}, {} layers, {:.0} MiB of weights, context {}, KV cache {} blocks of {}) in {:.2}s",
        path.display(),
        info.architecture,
        files.format(),
        quant.as_deref().unwrap_or("-"),
        info.num_layers,
        info.weight_bytes as f64 / (1 << 20) as f64,
        engine.context_length(),
        blocks,
        block_size,
        started.elapsed().as_secs_f64()
    );
    if on_cpu {
        let kernels = crate::ops::cpu_kernel_path()?;
        tracing::info!("CPU quantized matmul: {kernels} kernels, {} threads", bodega_cpu_kernels::threads());
    }
    Ok(Loaded { engine, tokenizer, path, quant, gpu, sampling })
}

/// The one line saying that MLX matrices run dequantized (slower and larger than their own format).
fn notice_dequantized(modules: &[String], dtype: DType, global: &GlobalArgs) {
    if modules.is_empty() || global.quiet {
        return;
    }
    eprintln!(
        "notice: {} MLX-quantized matrices have no exact block format here and run dequantized to {} \
         (docs/mlx.md)",
        modules.len(),
        format!("{dtype:?}").to_lowercase()
    );
}

/// The speculative decoding the engine flags ask for, with its draft model loaded and checked.
fn speculation(
    args: &EngineArgs,
    tokenizer: &Tokenizer,
    vocab_size: usize,
    device: &Device,
    global: &GlobalArgs,
) -> anyhow::Result<Option<Speculation>> {
    let draft = args.speculative.as_deref().and_then(|s| s.strip_prefix("draft="));
    if args.draft_layers.is_some() && draft.is_none() {
        return Err(UsageError("--draft-layers needs --speculative draft=MODEL".into()).into());
    }
    let proposer: Box<dyn Proposer> = match (args.speculative.as_deref(), draft) {
        (None, _) => return Ok(None),
        (_, Some(reference)) => Box::new(load_draft(reference, args, tokenizer, vocab_size, device, global)?),
        (Some(_), None) => Box::new(PromptLookup),
    };
    let max_batch = args.spec_max_batch.map_or_else(|| default_spec_max_batch(device), |n| n as usize);
    let max_tokens = args.spec_tokens.map_or_else(|| default_spec_tokens(draft.is_some()), |k| k as usize);
    Ok(Some(Speculation { proposer, max_tokens, max_batch }))
}

/// Loads a draft model (its first `layers` blocks when given), refusing one whose tokenizer is not
/// the target's.
fn load_draft(
    reference: &str,
    args: &EngineArgs,
    tokenizer: &Tokenizer,
    vocab_size: usize,
    device: &Device,
    global: &GlobalArgs,
) -> anyhow::Result<DraftModel> {
    let path = model_file(reference, global)?;
    let mut files = ModelFiles::open(&path)?;
    let mismatch = |reason: String| Error::DraftMismatch { model: path.display().to_string(), reason };
    if let Some(reason) = tokenizer.difference(&tokenizer_of(&files)?) {
        return Err(mismatch(reason).into());
    }
    let options = LoadOptions::for_device(device, args.dtype.requested(), files.native_dtype());
    let layers = args.draft_layers.map(|n| n as usize);
    let model = crate::model::load_layers(&mut files, options, device, layers)?;
    let draft_vocab = model.info().vocab_size;
    if draft_vocab != vocab_size {
        return Err(mismatch(format!("its output layer has {draft_vocab} rows, the target's {vocab_size}")).into());
    }
    tracing::info!("draft model {} ({} layers)", path.display(), model.info().num_layers);
    Ok(DraftModel::new(model, device.clone()))
}

/// The tokenizer and chat template stored with a model: in the GGUF metadata, or the folder's files.
fn tokenizer_of(files: &ModelFiles) -> crate::error::Result<Tokenizer> {
    match files {
        ModelFiles::Gguf(file) => Tokenizer::from_gguf(file),
        ModelFiles::Safetensors(folder) => Tokenizer::from_folder(folder.dir()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }
}
