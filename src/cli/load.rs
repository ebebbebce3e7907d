//! Model reference → a running engine, with the notices every subcommand prints while loading.

use super::GlobalArgs;
use crate::engine::{Engine, EngineConfig};
use crate::model::load::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use std::sync::Arc;
use std::time::Instant;

/// A loaded model ready to serve.
pub struct Loaded {
    /// The engine serving it.
    pub engine: Engine,
    /// Its tokenizer and chat template.
    pub tokenizer: Arc<Tokenizer>,
}

/// Resolves, opens and loads `reference` on the chosen device, and starts the engine.
pub fn load(reference: &str, ctx_size: Option<usize>, global: &GlobalArgs) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    let device = crate::device::select(global.device)?;
    let path = crate::hub::resolve(reference)?;
    let mut file = GgufFile::open(&path)?;
    let tokenizer = Arc::new(Tokenizer::from_gguf(&file)?);
    let model = crate::model::from_gguf(&mut file, &device)?;
    let info = model.info().clone();
    let context_length = ctx_size.unwrap_or(info.context_length).min(info.context_length);
    let engine = Engine::start(model, tokenizer.clone(), device, EngineConfig { block_size: 16, context_length })?;
    tracing::info!(
        "loaded {} ({}, {} layers, {:.0} MiB of weights, context {}) in {:.2}s",
        path.display(),
        info.architecture,
        info.num_layers,
        info.weight_bytes as f64 / (1 << 20) as f64,
        engine.context_length(),
        started.elapsed().as_secs_f64()
    );
    Ok(Loaded { engine, tokenizer })
}
