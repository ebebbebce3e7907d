//! Flattens a step (which sequences feed which tokens, where their keys live) into the tensors of one
//! forward pass, and runs it. Knows tensors, never requests.

use crate::error::Result;
use crate::model::{Model, StepInput};
use crate::ops::{AttentionMetadata, PagedKvCache};
use candle_core::{Device, Tensor};

/// One sequence's share of a step: a prefill chunk or a decode token.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// Tokens fed this step.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` in the sequence (tokens before it are already cached).
    pub start: usize,
    /// The sequence's blocks, enough for `start + tokens.len()` tokens.
    pub block_table: &'a [u32],
    /// Whether the logits of the last token are wanted.
    pub sample: bool,
}

/// Builds the step input for `chunks` (in order) with blocks of `block_size` tokens.
pub fn build_step(chunks: &[SeqChunk<'_>], block_size: usize, device: &Device) -> Result<StepInput> {
    build_step_rows(chunks, &sampled_rows(chunks), block_size, device)
}

/// The logits rows `sample` asks for: the last token of each sampling chunk.
fn sampled_rows(chunks: &[SeqChunk<'_>]) -> Vec<usize> {
    chunks.iter().map(|c| usize::from(c.sample)).collect()
}

/// [`build_step`] with the logits of the last `rows[i]` tokens of chunk `i` (speculative verification
/// scores every guessed position).
pub fn build_step_rows(
    chunks: &[SeqChunk<'_>],
    rows: &[usize],
    block_size: usize,
    device: &Device,
) -> Result<StepInput> {
    let total: usize = chunks.iter().map(|c| c.tokens.len()).sum();
    let max_blocks = chunks.iter().map(|c| c.block_table.len()).max().unwrap_or(0);
    let mut token_ids = Vec::with_capacity(total);
    let mut positions = Vec::with_capacity(total);
    let mut meta = AttentionMetadata {
        slot_mapping: Vec::with_capacity(total),
        block_tables: Vec::with_capacity(chunks.len() * max_blocks),
        max_blocks,
        cu_query_lens: Vec::with_capacity(chunks.len() + 1),
        context_lens: Vec::with_capacity(chunks.len()),
    };
    let mut logits_rows = Vec::new();
    meta.cu_query_lens.push(0);
    for (chunk, &wanted) in chunks.iter().zip(rows) {
        for (i, &tok) in chunk.tokens.iter().enumerate() {
            let pos = chunk.start + i;
            token_ids.push(tok);
            positions.push(pos as u32);
            let block = chunk.block_table[pos / block_size];
            meta.slot_mapping.push(block * block_size as u32 + (pos % block_size) as u32);
        }
        let end = token_ids.len() as u32;
        logits_rows.extend(end - wanted.min(chunk.tokens.len()) as u32..end);
        meta.block_tables.extend_from_slice(chunk.block_table);
        meta.block_tables.extend(std::iter::repeat_n(0, max_blocks - chunk.block_table.len()));
        meta.cu_query_lens.push(token_ids.len() as u32);
        meta.context_lens.push((chunk.start + chunk.tokens.len()) as u32);
    }
    let n_rows = logits_rows.len();
    Ok(StepInput {
        token_ids: Tensor::from_vec(token_ids, total, device)?,
        positions: Tensor::from_vec(positions, total, device)?,
        attention: meta,
        // A step of prefill chunks alone samples nothing; a GPU cannot allocate an empty buffer.
        logits_rows: Tensor::from_vec(logits_rows, n_rows, if n_rows == 0 { &Device::Cpu } else { device })?,
    })
}

/// Runs one step and returns the logits of the sampled rows as host vectors, in chunk order.
pub fn run_step(
    model: &dyn Model,
    cache: &PagedKvCache,
    chunks: &[SeqChunk<'_>],
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    run_step_rows(model, cache, chunks, &sampled_rows(chunks), device)
}

/// [`run_step`] with the logits of the last `rows[i]` tokens of chunk `i`, in order.
pub fn run_step_rows(
    model: &dyn Model,
    cache: &PagedKvCache,
    chunks: &[SeqChunk<'_>],
    rows: &[usize],
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let input = build_step_rows(chunks, rows, cache.block_size(), device)?;
    let logits = model.forward(&input, cache)?;
    Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}
