//! Flattens a step (which sequences feed which tokens, where their keys live) into the tensors of one
//! forward pass, and runs it. Knows tensors, never requests.

#[cfg(feature = "cuda")]
mod graphs;

use crate::error::{Error, Result};
use crate::model::{Model, StepInput};
use crate::ops::{self, AttentionMetadata, PagedKvCache};
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
    /// Its blocks in the window group, when the cache has one.
    pub window_blocks: Option<WindowBlocks<'a>>,
}

/// A sequence's blocks in the cache's window group: `blocks[i]` holds logical block `first + i`;
/// the blocks before `first` have left the window and are not read (the step's table names block 0
/// there).
#[derive(Debug, Clone, Copy)]
pub struct WindowBlocks<'a> {
    /// Logical index of `blocks[0]`.
    pub first: usize,
    /// The blocks held, enough for `start + tokens.len()` tokens.
    pub blocks: &'a [u32],
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
    HostStep::new(chunks, rows, block_size)?.upload(device)
}

/// A step flattened on the host, before its tensors are made: what a replayed CUDA graph gets
/// written into its captured inputs instead.
#[derive(Debug)]
struct HostStep {
    token_ids: Vec<u32>,
    positions: Vec<u32>,
    attention: AttentionMetadata,
    window_attention: Option<AttentionMetadata>,
    logits_rows: Vec<u32>,
}

impl HostStep {
    fn new(chunks: &[SeqChunk<'_>], rows: &[usize], block_size: usize) -> Result<Self> {
        let total: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let mut token_ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut logits_rows = Vec::new();
        for (chunk, &wanted) in chunks.iter().zip(rows) {
            token_ids.extend_from_slice(chunk.tokens);
            positions.extend((chunk.start..chunk.start + chunk.tokens.len()).map(|p| p as u32));
            let end = token_ids.len() as u32;
            logits_rows.extend(end - wanted.min(chunk.tokens.len()) as u32..end);
        }
        let tables: Vec<WindowBlocks<'_>> =
            chunks.iter().map(|c| WindowBlocks { first: 0, blocks: c.block_table }).collect();
        let attention = metadata(chunks, &tables, block_size);
        let window_attention = match chunks.iter().all(|c| c.window_blocks.is_none()) {
            true => None,
            false => {
                let mixed = || Error::InvalidRequest("a step mixes sequences with and without window blocks".into());
                let tables: Vec<WindowBlocks<'_>> =
                    chunks.iter().map(|c| c.window_blocks.ok_or_else(mixed)).collect::<Result<_>>()?;
                Some(metadata(chunks, &tables, block_size))
            }
        };
        Ok(Self { token_ids, positions, attention, window_attention, logits_rows })
    }

    fn upload(self, device: &Device) -> Result<StepInput> {
        let (total, n_rows) = (self.token_ids.len(), self.logits_rows.len());
        Ok(StepInput {
            token_ids: Tensor::from_vec(self.token_ids, total, device)?,
            positions: Tensor::from_vec(self.positions, total, device)?,
            attention: self.attention,
            window_attention: self.window_attention,
            // A step of prefill chunks alone samples nothing; a GPU cannot allocate an empty buffer.
            logits_rows: Tensor::from_vec(self.logits_rows, n_rows, if n_rows == 0 { &Device::Cpu } else { device })?,
        })
    }
}

impl WindowBlocks<'_> {
    /// Logical blocks covered, the ones not held included.
    fn len(&self) -> usize {
        self.first + self.blocks.len()
    }

    /// The block holding logical block `b`; block 0 for one not held.
    fn block(&self, b: usize) -> u32 {
        b.checked_sub(self.first).map_or(0, |i| self.blocks[i])
    }
}

/// The attention metadata of `chunks` whose blocks are `tables` (one per chunk).
fn metadata(chunks: &[SeqChunk<'_>], tables: &[WindowBlocks<'_>], block_size: usize) -> AttentionMetadata {
    let total: usize = chunks.iter().map(|c| c.tokens.len()).sum();
    let max_blocks = tables.iter().map(WindowBlocks::len).max().unwrap_or(0);
    let mut meta = AttentionMetadata {
        slot_mapping: Vec::with_capacity(total),
        block_tables: Vec::with_capacity(chunks.len() * max_blocks),
        max_blocks,
        cu_query_lens: Vec::with_capacity(chunks.len() + 1),
        context_lens: Vec::with_capacity(chunks.len()),
        uploads: Default::default(),
    };
    meta.cu_query_lens.push(0);
    for (chunk, table) in chunks.iter().zip(tables) {
        for pos in chunk.start..chunk.start + chunk.tokens.len() {
            let block = table.block(pos / block_size);
            meta.slot_mapping.push(block * block_size as u32 + (pos % block_size) as u32);
        }
        meta.block_tables.extend((0..max_blocks).map(|b| if b < table.len() { table.block(b) } else { 0 }));
        meta.cu_query_lens.push(meta.slot_mapping.len() as u32);
        meta.context_lens.push((chunk.start + chunk.tokens.len()) as u32);
    }
    meta
}

/// Runs one step and returns the logits of the sampled rows as host vectors, in chunk order.
pub fn run_step(
    model: &dyn Model,
    cache: &PagedKvCache,
    chunks: &[SeqChunk<'_>],
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let step = HostStep::new(chunks, &sampled_rows(chunks), cache.block_size())?;
    let logits = forward(model, cache, step, device)?;
    Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

/// What a chunk's sampler needs back from its logits rows, so that only that crosses from a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowWant {
    /// The argmax alone (greedy sampling).
    Greedy,
    /// At least this many of the largest logits with their ids (top-k sampling,
    /// `Sampler::candidates_needed`).
    Top(usize),
    /// The whole row.
    Logits,
}

/// What the engine gets back for one row of a step: the token itself when the row is sampled
/// greedily (the argmax taken where the logits are, so that a GPU sends back only token ids), the
/// largest logits for top-k sampling (selected there too), the whole row otherwise.
#[derive(Debug, Clone, PartialEq)]
pub enum StepRow {
    /// The greedy token (lowest index among equal logits).
    Greedy(u32),
    /// The row's largest logits with their token ids ([`ops::top_k_rows`]): as many as the step's
    /// largest [`RowWant::Top`], which is at least what this row asked for.
    Candidates(Vec<(u32, f32)>),
    /// The whole row of logits, for a sampler that needs the distribution.
    Logits(Vec<f32>),
}

/// Runs a worker's steps: op by op, or, on a CUDA GPU unless turned off, plain decode steps replayed
/// from captured CUDA graphs (one launch for the whole forward pass, see `graphs`).
pub struct Executor {
    device: Device,
    #[cfg(feature = "cuda")]
    graphs: Option<graphs::DecodeGraphs>,
}

impl Executor {
    /// An executor for `device`; `graphs`: replay decode steps from CUDA graphs (where `device` is a
    /// CUDA GPU).
    pub fn new(device: Device, graphs: bool) -> Self {
        #[cfg(feature = "cuda")]
        return Self { graphs: (graphs && device.is_cuda()).then(graphs::DecodeGraphs::default), device };
        #[cfg(not(feature = "cuda"))]
        {
            let _ = graphs; // no other device has graphs
            Self { device }
        }
    }

    /// CUDA graphs captured so far (one per decode shape met, and again for each after candle's
    /// quantized matmuls moved their workspaces): for reports and tests.
    pub fn graphs_captured(&self) -> usize {
        #[cfg(feature = "cuda")]
        return self.graphs.as_ref().map_or(0, graphs::DecodeGraphs::captures);
        #[cfg(not(feature = "cuda"))]
        0
    }

    /// Runs one step with the logits of the last `rows[i]` tokens of chunk `i`, in order; the rows of
    /// chunk `i` come back as `wants[i]` asks.
    pub fn run_step_rows(
        &mut self,
        model: &dyn Model,
        cache: &PagedKvCache,
        chunks: &[SeqChunk<'_>],
        rows: &[usize],
        wants: &[RowWant],
    ) -> Result<Vec<StepRow>> {
        let step = HostStep::new(chunks, rows, cache.block_size())?;
        #[cfg(feature = "cuda")]
        if let (Some(graphs), Device::Cuda(cuda)) = (&mut self.graphs, &self.device) {
            if graphs.takes(&step) {
                check_window_group(cache, &step)?;
                let (logits, ids) = graphs.forward(model, cache, step, cuda)?;
                return split_rows_given(&logits, ids.as_ref(), &row_wants(rows, wants));
            }
        }
        let logits = forward(model, cache, step, &self.device)?;
        split_rows(&logits, &row_wants(rows, wants))
    }
}

/// One want per logits row: chunk `i`'s `rows[i]` rows take `wants[i]`.
fn row_wants(rows: &[usize], wants: &[RowWant]) -> Vec<RowWant> {
    rows.iter().zip(wants).flat_map(|(&n, &w)| std::iter::repeat_n(w, n)).collect()
}

/// The forward pass of a step, op by op.
fn forward(model: &dyn Model, cache: &PagedKvCache, step: HostStep, device: &Device) -> Result<Tensor> {
    check_window_group(cache, &step)?;
    model.forward(&step.upload(device)?, cache)
}

/// Fails a step whose window block tables do not match the cache's window group.
fn check_window_group(cache: &PagedKvCache, step: &HostStep) -> Result<()> {
    match cache.has_window_group() == step.window_attention.is_some() {
        true => Ok(()),
        false => Err(Error::InvalidRequest("the step's window blocks do not match the cache's window group".into())),
    }
}

/// Splits `logits` (`[R, V]`) into what each row's sampler wants (`wants[r]`), in row order:
/// greedy tokens ([`ops::argmax_rows`]), the largest logits ([`ops::top_k_rows`], as many for every
/// such row as the most any of them wants), or host copies of whole rows.
pub fn split_rows(logits: &Tensor, wants: &[RowWant]) -> Result<Vec<StepRow>> {
    split_rows_given(logits, None, wants)
}

/// [`split_rows`] where `ids`, when given, already holds every row's argmax (`[R]` u32, computed
/// inside a replayed graph): the greedy rows take theirs from it.
fn split_rows_given(logits: &Tensor, ids: Option<&Tensor>, wants: &[RowWant]) -> Result<Vec<StepRow>> {
    let logits = logits.to_dtype(candle_core::DType::F32)?;
    let rows_where = |want: &dyn Fn(RowWant) -> bool| -> Result<Option<Tensor>> {
        let picked: Vec<u32> = (0..wants.len() as u32).filter(|&r| want(wants[r as usize])).collect();
        Ok(match picked.len() {
            0 => None,
            n if n == wants.len() => Some(logits.clone()),
            n => Some(logits.index_select(&Tensor::from_vec(picked, n, logits.device())?, 0)?),
        })
    };
    let greedy = |w: RowWant| w == RowWant::Greedy;
    let mut tokens = match (wants.iter().any(|&w| greedy(w)), ids) {
        (false, _) => Vec::new(),
        (true, Some(ids)) => {
            ids.to_vec1::<u32>()?.into_iter().zip(wants).filter_map(|(t, &w)| greedy(w).then_some(t)).collect()
        }
        (true, None) => rows_where(&greedy)?.map(|t| ops::argmax_rows(&t)).transpose()?.unwrap_or_default(),
    }
    .into_iter();
    let most = wants.iter().filter_map(|w| if let RowWant::Top(k) = w { Some(*k) } else { None }).max();
    let mut candidates = match most {
        Some(k) => rows_where(&|w| matches!(w, RowWant::Top(_)))?.map(|t| ops::top_k_rows(&t, k)).transpose()?,
        None => None,
    }
    .unwrap_or_default()
    .into_iter();
    let mut full = match rows_where(&|w| w == RowWant::Logits)? {
        Some(t) => t.to_vec2::<f32>()?,
        None => Vec::new(),
    }
    .into_iter();
    wants
        .iter()
        .map(|w| match w {
            RowWant::Greedy => tokens.next().map(StepRow::Greedy),
            RowWant::Top(_) => candidates.next().map(StepRow::Candidates),
            RowWant::Logits => full.next().map(StepRow::Logits),
        })
        .collect::<Option<Vec<StepRow>>>()
        .ok_or_else(|| Error::InvalidRequest(format!("the model returned fewer than {} logits rows", wants.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rows_returns_each_rows_argmax_largest_logits_or_whole_row_in_order() {
        let logits = vec![0.5, 2.0, 2.0, -1.0, 3.0, 0.0, 9.0, 1.0, 9.0, f32::NAN, 0.0, 0.1, 4.0, 4.0, 5.0];
        let t = Tensor::from_vec(logits.clone(), (5, 3), &Device::Cpu).unwrap();
        let (g, l) = (RowWant::Greedy, RowWant::Logits);
        let rows = split_rows(&t, &[g, l, g, g, RowWant::Top(2)]).unwrap();
        assert_eq!(
            rows,
            vec![
                StepRow::Greedy(1),
                StepRow::Logits(logits[3..6].to_vec()),
                StepRow::Greedy(0),
                StepRow::Greedy(2),
                StepRow::Candidates(vec![(2, 5.0), (0, 4.0)]),
            ]
        );
        // Every Top row gets as many candidates as the most any of them asked for.
        let rows = split_rows(&t, &[RowWant::Top(1), l, l, l, RowWant::Top(2)]).unwrap();
        assert_eq!(rows[0], StepRow::Candidates(vec![(1, 2.0), (2, 2.0)]));
        assert!(split_rows(&t, &[g; 6]).is_err(), "more rows asked for than the model returned");
    }
}
