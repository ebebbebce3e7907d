//! A draft model: a smaller model with the target's tokenizer guesses k tokens per sequence, run as its
//! own batch over its own paged KV cache. Each engine step, every speculating sequence first catches
//! up (the tokens the target accepted since the last step, or its whole prompt the first time), which
//! also yields the first guess; then one batched decode step per further guess. Guesses are sampled
//! with the request's own settings from the draft's distribution, which verification needs (q).
//!
//! The draft's cache keeps the keys and values of the tokens it has seen; after a step, the part that
//! still agrees with the sequence is kept and the rest (rejected guesses) rolled back.

use super::{Proposal, ProposalRequest, Proposer};
use crate::engine::kv::{BlockId, BlockPool};
use crate::engine::request::SamplingParams;
use crate::engine::sampler::Sampler;
use crate::engine::scheduler::{allocate_up_to, SeqId};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::PagedKvCache;
use crate::runner::{run_step, SeqChunk};
use candle_core::Device;
use std::collections::HashMap;

/// Mixed into a request's seed for its draft sampler, so that the draft's random stream is not the
/// verifier's.
const DRAFT_SEED_SALT: u64 = 0x6472_6166_7400_0001;

/// What the draft keeps for one sequence.
struct DraftSeq {
    /// Tokens whose keys and values are in the draft's cache.
    computed: Vec<u32>,
    blocks: Vec<BlockId>,
    sampler: Sampler,
}

/// The draft-model proposer (`--speculative draft=MODEL`).
pub struct DraftModel {
    model: Box<dyn Model>,
    device: Device,
    /// Allocated by `reserve`, as many tokens as the target's cache.
    cache: Option<(PagedKvCache, BlockPool)>,
    seqs: HashMap<SeqId, DraftSeq>,
}

impl DraftModel {
    /// A proposer running `model` on `device`. The caller checks that its tokenizer is the target's.
    pub fn new(model: Box<dyn Model>, device: Device) -> Self {
        Self { model, device, cache: None, seqs: HashMap::new() }
    }

    fn release(pool: &mut BlockPool, seq: &mut DraftSeq, keep_tokens: usize, block_size: usize) {
        seq.computed.truncate(keep_tokens);
        let keep = keep_tokens.div_ceil(block_size);
        if seq.blocks.len() > keep {
            pool.release(seq.blocks.drain(keep..).rev());
        }
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
        let cache = PagedKvCache::new(
            info.num_layers,
            num_blocks,
            block_size,
            info.num_kv_heads,
            info.head_dim,
            crate::device::kv_dtype(&self.device),
            &self.device,
        )?;
        self.cache = Some((cache, BlockPool::new(num_blocks, false)));
        Ok(())
    }

    fn forget(&mut self, seq: SeqId) {
        if let (Some(mut state), Some((cache, pool))) = (self.seqs.remove(&seq), self.cache.as_mut()) {
            Self::release(pool, &mut state, 0, cache.block_size());
        }
    }

    fn propose(&mut self, requests: &[ProposalRequest<'_>]) -> Result<Vec<Proposal>> {
        let (cache, pool) =
            self.cache.as_mut().ok_or_else(|| Error::InvalidRequest("the draft model has no KV cache".into()))?;
        let bs = cache.block_size();
        let mut proposals: Vec<Proposal> =
            requests.iter().map(|_| Proposal { tokens: Vec::new(), dists: Some(Vec::new()) }).collect();
        // Roll each sequence's draft cache back to what still agrees with it, and make room for k
        // guesses (the last guess is never fed).
        let mut feeds = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            if r.k == 0 || r.tokens.is_empty() {
                continue;
            }
            let state = self.seqs.entry(r.seq).or_insert_with(|| DraftSeq {
                computed: Vec::new(),
                blocks: Vec::new(),
                sampler: Sampler::new(SamplingParams { seed: r.sampling.seed ^ DRAFT_SEED_SALT, ..r.sampling.clone() }),
            });
            let agree = state.computed.iter().zip(r.tokens).take_while(|(a, b)| a == b).count();
            Self::release(pool, state, agree.min(r.tokens.len() - 1), bs);
            if !allocate_up_to(pool, &mut state.blocks, bs, r.tokens.len() + r.k - 1) {
                // The draft's pool is full: this sequence goes without guesses this step.
                Self::release(pool, state, 0, bs);
                continue;
            }
            let start = state.computed.len();
            feeds.push(Feed { request: i, tokens: r.tokens[start..].to_vec(), start });
        }
        // Pass 0 catches up and guesses once; every further pass feeds the previous guess.
        while !feeds.is_empty() {
            let logits = {
                let chunks: Vec<SeqChunk<'_>> = feeds
                    .iter()
                    .map(|f| SeqChunk {
                        tokens: &f.tokens,
                        start: f.start,
                        block_table: &self.seqs[&requests[f.request].seq].blocks,
                        sample: true,
                        window_blocks: None,
                    })
                    .collect();
                run_step(self.model.as_ref(), cache, &chunks, &self.device)?
            };
            let mut next = Vec::new();
            for (feed, mut row) in feeds.into_iter().zip(logits) {
                let r = &requests[feed.request];
                let state = self.seqs.get_mut(&r.seq).expect("fed sequences have draft state");
                state.computed.extend_from_slice(&feed.tokens);
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
