//! A draft model: a smaller model with the target's tokenizer guesses k tokens per sequence, run as its
//! own batch over its own paged KV cache. Each engine step, every speculating sequence first catches
//! up (the tokens the target accepted since the last step, or its whole prompt the first time), which
//! also yields the first guess; then one batched decode step per further guess. Guesses are sampled
//! with the request's own settings from the draft's distribution, which verification needs (q).
//!
//! The draft's cache keeps the keys and values of the tokens it has seen; after a step, the part that
//! still agrees with the sequence is kept and the rest (rejected guesses) rolled back. A draft with
//! sliding-window layers keeps only their window (and a margin for rollbacks) in a pool of their
//! own, as the engine does for the target; its catch-up is fed in pieces for that reason.

use super::{Proposal, ProposalRequest, Proposer};
use crate::engine::kv::{droppable_blocks, BlockId, BlockPool, KvLayout, WindowTable};
use crate::engine::request::SamplingParams;
use crate::engine::sampler::Sampler;
use crate::engine::scheduler::{allocate_up_to, SeqId};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::{KvShape, PagedKvCache};
use crate::runner::{run_step, SeqChunk, WindowBlocks};
use candle_core::Device;
use std::collections::HashMap;

/// Mixed into a request's seed for its draft sampler, so that the draft's random stream is not the
/// verifier's.
const DRAFT_SEED_SALT: u64 = 0x6472_6166_7400_0001;

/// Most tokens of one sequence fed in one draft pass: a long catch-up (the whole prompt, the first
/// time) goes in pieces, so that a sliding-window layer never holds more than its window, the
/// rollback margin and one piece.
const MAX_FEED: usize = 512;
/// Positions a window table keeps beyond the window, so that rolling back rejected guesses (at most
/// 64, `--spec-tokens`' limit) does not need a block already returned to the pool.
const ROLLBACK_MARGIN: usize = 64;

/// What the draft keeps for one sequence.
struct DraftSeq {
    /// Tokens whose keys and values are in the draft's cache.
    computed: Vec<u32>,
    blocks: Vec<BlockId>,
    /// Its blocks in the sliding-window layers' pool (unused without one).
    window: WindowTable,
    sampler: Sampler,
}

/// The draft's sliding-window layers' pool and the keys they keep.
struct WindowPool {
    pool: BlockPool,
    /// The model's window plus [`ROLLBACK_MARGIN`].
    keep: usize,
}

/// The draft's KV cache and the pools its blocks come from.
struct DraftCache {
    kv: PagedKvCache,
    pool: BlockPool,
    window: Option<WindowPool>,
}

impl DraftCache {
    /// Rolls a sequence back to its first `keep` tokens; to none when a window layer has already
    /// returned a block that the token after them needs.
    fn roll_back(&mut self, seq: &mut DraftSeq, keep: usize) {
        let bs = self.kv.block_size();
        let keep = match &self.window {
            Some(w) if seq.window.first() > droppable_blocks(bs, w.keep, keep) => 0,
            _ => keep,
        };
        seq.computed.truncate(keep);
        let blocks = keep.div_ceil(bs);
        if seq.blocks.len() > blocks {
            self.pool.release(seq.blocks.drain(blocks..).rev());
        }
        if let Some(w) = &mut self.window {
            match keep {
                0 => seq.window.release_all(&mut w.pool),
                _ => seq.window.truncate(&mut w.pool, blocks),
            }
        }
    }
}

/// The draft-model proposer (`--speculative draft=MODEL`).
pub struct DraftModel {
    model: Box<dyn Model>,
    device: Device,
    /// Allocated by `reserve`, as many tokens as the target's cache.
    cache: Option<DraftCache>,
    seqs: HashMap<SeqId, DraftSeq>,
}

impl DraftModel {
    /// A proposer running `model` on `device`. The caller checks that its tokenizer is the target's.
    pub fn new(model: Box<dyn Model>, device: Device) -> Self {
        Self { model, device, cache: None, seqs: HashMap::new() }
    }

    /// Blocks its sequences hold in the sliding-window layers' pool (`None`: the draft has none).
    pub fn window_blocks_used(&self) -> Option<usize> {
        self.cache.as_ref()?.window.as_ref().map(|w| w.pool.stats().used)
    }
}

/// One sequence's feed in one draft pass.
struct Feed {
    request: usize,
    tokens: Vec<u32>,
    start: usize,
}

impl Proposer for DraftModel {
    fn reserve(&mut self, num_blocks: usize, block_size: usize) -> Result<()> {
        let info = self.model.info();
        let shape = KvShape {
            block_size,
            num_kv_heads: info.num_kv_heads,
            head_dim: info.head_dim,
            dtype: crate::device::kv_dtype(&self.device),
        };
        let layer_block = PagedKvCache::bytes_per_block(1, block_size, shape.num_kv_heads, shape.head_dim, shape.dtype);
        let context = num_blocks * block_size;
        let layout = KvLayout::new(&info.layer_windows, context, block_size, MAX_FEED + ROLLBACK_MARGIN, layer_block);
        let (kv, window) = match layout.window {
            0 => {
                let kv = PagedKvCache::new(
                    info.num_layers,
                    num_blocks,
                    block_size,
                    shape.num_kv_heads,
                    shape.head_dim,
                    shape.dtype,
                    &self.device,
                )?;
                (kv, None)
            }
            window => {
                // Room in the window layers for as many whole-context sequences as the pool holds.
                let sequences = num_blocks.div_ceil(layout.blocks_per_seq).max(1);
                let window_blocks = sequences * layout.window_blocks_per_seq;
                let kv =
                    PagedKvCache::with_window_group(&layout.windowed, num_blocks, window_blocks, shape, &self.device)?;
                let pool = BlockPool::new(window_blocks, false);
                (kv, Some(WindowPool { pool, keep: window + ROLLBACK_MARGIN }))
            }
        };
        self.cache = Some(DraftCache { kv, pool: BlockPool::new(num_blocks, false), window });
        Ok(())
    }

    fn forget(&mut self, seq: SeqId) {
        if let (Some(mut state), Some(cache)) = (self.seqs.remove(&seq), self.cache.as_mut()) {
            cache.roll_back(&mut state, 0);
        }
    }

    fn propose(&mut self, requests: &[ProposalRequest<'_>]) -> Result<Vec<Proposal>> {
        let Self { model, device, cache, seqs } = self;
        let cache = cache.as_mut().ok_or_else(|| Error::InvalidRequest("the draft model has no KV cache".into()))?;
        let bs = cache.kv.block_size();
        let mut proposals: Vec<Proposal> =
            requests.iter().map(|_| Proposal { tokens: Vec::new(), dists: Some(Vec::new()), weak: false }).collect();
        // Roll each sequence's draft cache back to what still agrees with it, and make room for k
        // guesses (the last guess is never fed).
        let mut feeds = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            if r.k == 0 || r.tokens.is_empty() {
                continue;
            }
            let state = seqs.entry(r.seq).or_insert_with(|| DraftSeq {
                computed: Vec::new(),
                blocks: Vec::new(),
                window: WindowTable::default(),
                sampler: Sampler::new(SamplingParams { seed: r.sampling.seed ^ DRAFT_SEED_SALT, ..r.sampling.clone() }),
            });
            let agree = state.computed.iter().zip(r.tokens).take_while(|(a, b)| a == b).count();
            cache.roll_back(state, agree.min(r.tokens.len() - 1));
            if !allocate_up_to(&mut cache.pool, &mut state.blocks, bs, r.tokens.len() + r.k - 1) {
                // The draft's pool is full: this sequence goes without guesses this step.
                cache.roll_back(state, 0);
                continue;
            }
            let start = state.computed.len();
            feeds.push(Feed { request: i, tokens: r.tokens[start..].to_vec(), start });
        }
        // Each pass feeds every sequence's next piece of catch-up or its previous guess; the pass
        // that ends a sequence's catch-up guesses once, every further pass once more.
        while !feeds.is_empty() {
            if let Some(w) = &mut cache.window {
                // A sequence the window pool cannot take this pass stops guessing and starts over.
                feeds.retain(|f| {
                    let state = seqs.get_mut(&requests[f.request].seq).expect("fed sequences have draft state");
                    let end = f.start + f.tokens.len().min(MAX_FEED);
                    let room = state.window.allocate_up_to(&mut w.pool, bs, end);
                    if !room {
                        state.computed.clear();
                        state.window.release_all(&mut w.pool);
                        cache.pool.release(state.blocks.drain(..).rev());
                    }
                    room
                });
            }
            let logits = {
                let chunks: Vec<SeqChunk<'_>> = feeds
                    .iter()
                    .map(|f| {
                        let state = &seqs[&requests[f.request].seq];
                        let piece = f.tokens.len().min(MAX_FEED);
                        SeqChunk {
                            tokens: &f.tokens[..piece],
                            start: f.start,
                            block_table: &state.blocks,
                            sample: piece == f.tokens.len(),
                            window_blocks: cache
                                .window
                                .is_some()
                                .then(|| WindowBlocks { first: state.window.first(), blocks: state.window.blocks() }),
                        }
                    })
                    .collect();
                run_step(model.as_ref(), &cache.kv, &chunks, device)?
            };
            let mut rows = logits.into_iter();
            let mut next = Vec::new();
            for feed in feeds {
                let r = &requests[feed.request];
                let state = seqs.get_mut(&r.seq).expect("fed sequences have draft state");
                let piece = feed.tokens.len().min(MAX_FEED);
                state.computed.extend_from_slice(&feed.tokens[..piece]);
                if let Some(w) = &mut cache.window {
                    state.window.drop_outside(&mut w.pool, bs, w.keep, state.computed.len());
                }
                if piece < feed.tokens.len() {
                    next.push(Feed {
                        request: feed.request,
                        tokens: feed.tokens[piece..].to_vec(),
                        start: feed.start + piece,
                    });
                    continue;
                }
                let mut row = rows.next().expect("one logits row per sampling chunk");
                let proposal = &mut proposals[feed.request];
                let history: Vec<u32> = r.tokens.iter().chain(&proposal.tokens).copied().collect();
                let dist = state.sampler.distribution(&mut row, &history, r.prompt_len);
                let token = state.sampler.draw(&dist);
                proposal.tokens.push(token);
                proposal.dists.get_or_insert_with(Vec::new).push(dist);
                if proposal.tokens.len() < r.k {
                    next.push(Feed { request: feed.request, tokens: vec![token], start: history.len() });
                }
            }
            feeds = next;
        }
        Ok(proposals)
    }
}
