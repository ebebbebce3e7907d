//! Chooses each step's work. The rule, in one place:
//!
//! Every step is one forward pass with a token budget (`max_batched_tokens`). Running sequences take
//! it first, oldest first: one token each when decoding, or the next chunk of a prompt still being
//! prefilled. Waiting sequences get what is left, first come first served, while fewer than
//! `max_seqs` run: a new sequence first takes the longest run of its prompt's full blocks that the
//! prefix cache holds, then a chunk of the rest. A sequence that needs a block when none is free
//! preempts the newest running sequence, which gives back all its blocks and waits at the front of
//! the queue to be recomputed from its tokens (the same tokens give the same result). Chunked prefill
//! is nothing more than this budget cap. A decoding sequence with speculative guesses (set by
//! `set_draft` before `schedule`) feeds its last token and the guesses as one chunk, trimmed to the
//! budget; after verification the engine keeps the accepted guesses (`accept_draft`), and the blocks
//! that held only rejected ones go back to the pool.
//!
//! A model with sliding-window layers has a second pool for them (`with_window`): each sequence
//! holds a [`WindowTable`] there besides its block table, allocated and preempted together, and the
//! leading window blocks that no later query can see go back to that pool after every step. A
//! prefix-cache hit then needs both the global blocks of the prefix and the window blocks of its
//! last `window` tokens (both pools cache full blocks by the same chained hash).
//!
//! The scheduler knows sequences and blocks, never tensors or requests.

use super::kv::{block_hash, droppable_blocks, BlockHash, BlockId, BlockPool, PoolStats, WindowTable};
use std::collections::VecDeque;

/// Identifies a sequence for the life of its request.
pub type SeqId = u64;

/// Limits of each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most tokens in one forward pass (decode tokens and prefill chunks together).
    pub max_batched_tokens: usize,
    /// Most sequences running at once.
    pub max_seqs: usize,
}

/// A sequence's tokens and where their keys and values are.
#[derive(Debug)]
pub struct Sequence {
    /// Its id.
    pub id: SeqId,
    /// Prompt, then generated tokens.
    pub tokens: Vec<u32>,
    /// Tokens whose keys and values are in the cache.
    pub num_computed: usize,
    /// Prompt tokens the prefix cache supplied when the sequence was first admitted.
    pub num_cached: usize,
    /// Whether it has been admitted before (a preempted sequence keeps its first `num_cached`).
    admitted: bool,
    /// Speculative guesses at the end of `tokens`, fed this step and taken back after it.
    num_draft: usize,
    block_table: Vec<BlockId>,
    /// Its blocks in the sliding-window pool (empty when the scheduler has none).
    window_table: WindowTable,
    /// Chained hashes of its full blocks registered so far.
    block_hashes: Vec<BlockHash>,
}

impl Sequence {
    /// A new sequence for these prompt tokens.
    pub fn new(id: SeqId, prompt: Vec<u32>) -> Self {
        Self {
            id,
            tokens: prompt,
            num_computed: 0,
            num_cached: 0,
            admitted: false,
            num_draft: 0,
            block_table: Vec::new(),
            window_table: WindowTable::default(),
            block_hashes: Vec::new(),
        }
    }

    /// Its blocks, in order.
    pub fn block_table(&self) -> &[BlockId] {
        &self.block_table
    }

    /// Its blocks in the sliding-window pool.
    pub fn window_table(&self) -> &WindowTable {
        &self.window_table
    }

    /// Whether its next step feeds one token to sample the next (its prompt is done).
    pub fn is_decoding(&self) -> bool {
        self.num_draft == 0 && self.num_computed + 1 == self.tokens.len()
    }

    /// The next tokens to feed within `budget`; a token is sampled when they reach the end. Guesses
    /// that do not fit the budget are dropped first, so that a speculating chunk is always whole.
    fn next_chunk(&mut self, budget: usize) -> ScheduledChunk {
        if self.num_draft > 0 && self.num_draft >= budget {
            self.drop_draft(self.num_draft + 1 - budget);
        }
        let len = (self.tokens.len() - self.num_computed).min(budget);
        let sample = self.num_computed + len == self.tokens.len();
        ScheduledChunk { seq: self.id, start: self.num_computed, len, sample, draft: self.num_draft }
    }

    /// Removes the last `n` guesses.
    fn drop_draft(&mut self, n: usize) {
        self.tokens.truncate(self.tokens.len() - n);
        self.num_draft -= n;
    }
}

/// One sequence's work in a step: feed `tokens[start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledChunk {
    /// Whose.
    pub seq: SeqId,
    /// First position fed.
    pub start: usize,
    /// Tokens fed.
    pub len: usize,
    /// Whether this chunk reaches the end of the sequence, so that a token is sampled after it.
    pub sample: bool,
    /// Speculative guesses among the fed tokens (its last `draft`): the chunk needs logits for its
    /// last `draft + 1` positions.
    pub draft: usize,
}

/// What `schedule` decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// This step's work, in the order of the forward pass.
    pub chunks: Vec<ScheduledChunk>,
    /// Sequences that lost their blocks this step and wait to be recomputed.
    pub preempted: Vec<SeqId>,
}

/// The pool of the sliding-window layers' blocks, and their window.
#[derive(Debug)]
struct WindowPool {
    pool: BlockPool,
    /// Keys each query of those layers sees.
    window: usize,
}

/// The scheduler: the block pool(s) and the two queues.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: BlockPool,
    window: Option<WindowPool>,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
}

impl Scheduler {
    /// A scheduler over a pool of `num_blocks` blocks.
    pub fn new(config: SchedulerConfig, num_blocks: usize, prefix_caching: bool) -> Self {
        Self {
            config,
            pool: BlockPool::new(num_blocks, prefix_caching),
            window: None,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Adds a second pool of `num_blocks` blocks for the layers that see only the last `window`
    /// keys, whose blocks are returned as they leave the window.
    pub fn with_window(mut self, window: usize, num_blocks: usize, prefix_caching: bool) -> Self {
        self.window = Some(WindowPool { pool: BlockPool::new(num_blocks, prefix_caching), window });
        self
    }

    /// Queues a sequence.
    pub fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq);
    }

    /// Whether nothing is running or waiting.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Sequences running and waiting.
    pub fn queue_lengths(&self) -> (usize, usize) {
        (self.running.len(), self.waiting.len())
    }

    /// Block counts.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Block counts of the sliding-window pool, when there is one.
    pub fn window_pool_stats(&self) -> Option<PoolStats> {
        self.window.as_ref().map(|w| w.pool.stats())
    }

    /// The sequence with this id, running or waiting.
    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.running.iter().chain(self.waiting.iter()).find(|s| s.id == id)
    }

    /// Running sequences whose next step decodes one token: those that may speculate.
    pub fn decoding(&self) -> impl Iterator<Item = &Sequence> {
        self.running.iter().filter(|s| s.is_decoding())
    }

    /// Appends speculative guesses to a decoding sequence, to be fed by the next `schedule`.
    pub fn set_draft(&mut self, id: SeqId, draft: &[u32]) {
        if let Some(seq) = self.running.iter_mut().find(|s| s.id == id && s.is_decoding()) {
            seq.tokens.extend_from_slice(draft);
            seq.num_draft = draft.len();
        }
    }

    /// Takes the guesses back out of the sequence after the step (whether or not it ran), before
    /// `commit`; the verified tokens are appended afterwards.
    pub fn take_draft(&mut self, id: SeqId) {
        if let Some(seq) = self.running.iter_mut().find(|s| s.id == id) {
            seq.drop_draft(seq.num_draft);
        }
    }

    /// Records that the first `accepted` tokens appended after a speculating step were guesses whose
    /// keys and values that step computed: they count as cached (full blocks are registered in the
    /// prefix cache), and blocks beyond what the sequence's tokens need are freed.
    pub fn accept_draft(&mut self, id: SeqId, accepted: usize) {
        let bs = self.config.block_size;
        let Some(seq) = self.running.iter_mut().find(|s| s.id == id) else { return };
        seq.num_computed = (seq.num_computed + accepted).min(seq.tokens.len());
        register_full_blocks(&mut self.pool, self.window.as_mut(), seq, bs);
        let keep = seq.tokens.len().div_ceil(bs);
        if seq.block_table.len() > keep {
            self.pool.release(seq.block_table.drain(keep..).rev());
        }
        if let Some(w) = &mut self.window {
            seq.window_table.truncate(&mut w.pool, keep);
            seq.window_table.drop_outside(&mut w.pool, bs, w.window, seq.num_computed);
        }
    }

    /// Appends a sampled token to a running sequence.
    pub fn append_token(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.running.iter_mut().find(|s| s.id == id) {
            seq.tokens.push(token);
        }
    }

    /// Removes a sequence (finished or cancelled) and frees its blocks at once.
    pub fn finish(&mut self, id: SeqId) -> Option<Sequence> {
        let seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else {
            let i = self.waiting.iter().position(|s| s.id == id)?;
            self.waiting.remove(i)?
        };
        let mut seq = seq;
        self.free_blocks(&mut seq);
        Some(seq)
    }

    /// Decides this step's work (see the module documentation for the rule).
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let chunk = self.running[i].next_chunk(budget);
            if !self.grow_or_preempt(i, chunk.start + chunk.len, &mut out) {
                continue; // `i` itself was preempted
            }
            out.chunks.push(chunk);
            budget -= chunk.len;
            i += 1;
        }
        while budget > 0 && self.running.len() < self.config.max_seqs {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            self.take_cached_prefix(&mut seq);
            let chunk = seq.next_chunk(budget);
            let bs = self.config.block_size;
            if !allocate_seq(&mut self.pool, self.window.as_mut(), &mut seq, bs, chunk.start + chunk.len) {
                self.free_blocks(&mut seq);
                self.waiting.push_front(seq);
                break;
            }
            seq.admitted = true;
            out.chunks.push(chunk);
            budget -= chunk.len;
            self.running.push(seq);
        }
        out
    }

    /// Records that the step ran: its tokens are now cached, and newly full blocks are registered in
    /// the prefix cache.
    /// A speculating chunk's guesses have been taken back by then (`take_draft`): only the tokens
    /// the sequence still holds count, and `accept_draft` adds the accepted guesses.
    pub fn commit(&mut self, out: &SchedulerOutput) {
        let bs = self.config.block_size;
        for chunk in &out.chunks {
            let Some(seq) = self.running.iter_mut().find(|s| s.id == chunk.seq) else { continue };
            seq.num_computed = (chunk.start + chunk.len).min(seq.tokens.len());
            register_full_blocks(&mut self.pool, self.window.as_mut(), seq, bs);
            if let Some(w) = &mut self.window {
                seq.window_table.drop_outside(&mut w.pool, bs, w.window, seq.num_computed);
            }
        }
    }

    /// Forgets every prefix-cache entry of free blocks, so that the next requests start cold (a
    /// benchmark comparing two settings on the same prompts).
    pub fn clear_prefix_cache(&mut self) {
        self.pool.forget_cached();
        if let Some(w) = &mut self.window {
            w.pool.forget_cached();
        }
    }

    /// Gives running sequence `i` blocks for `target` tokens, preempting the newest running
    /// sequences while none are free. Returns false when `i` itself had to be preempted.
    fn grow_or_preempt(&mut self, i: usize, target: usize, out: &mut SchedulerOutput) -> bool {
        loop {
            let bs = self.config.block_size;
            if allocate_seq(&mut self.pool, self.window.as_mut(), &mut self.running[i], bs, target) {
                return true;
            }
            let victim_index = self.running.len() - 1;
            let mut victim = self.running.remove(victim_index);
            victim.drop_draft(victim.num_draft);
            self.free_blocks(&mut victim);
            victim.num_computed = 0;
            out.preempted.push(victim.id);
            self.waiting.push_front(victim);
            if victim_index == i {
                return false;
            }
        }
    }

    /// Starts a sequence without blocks on the longest cached run of its full blocks (with a window
    /// pool: whose window blocks are cached too). The last token is never served from the cache: its
    /// logits are needed.
    fn take_cached_prefix(&mut self, seq: &mut Sequence) {
        if !seq.block_table.is_empty() {
            return;
        }
        let bs = self.config.block_size;
        let full = (seq.tokens.len() - 1) / bs;
        let block_tokens = |b: usize| &seq.tokens[b * bs..(b + 1) * bs];
        let mut hashes: Vec<BlockHash> = Vec::new();
        for b in 0..full {
            let hash = block_hash(hashes.last().copied(), block_tokens(b));
            if !self.pool.contains(hash, block_tokens(b)) {
                break;
            }
            hashes.push(hash);
        }
        let mut hit = hashes.len();
        if let Some(w) = &self.window {
            let window_cached = |k: usize| {
                (droppable_blocks(bs, w.window, k * bs)..k).all(|b| w.pool.contains(hashes[b], block_tokens(b)))
            };
            while !window_cached(hit) {
                hit -= 1;
            }
        }
        for (b, &hash) in hashes.iter().enumerate().take(hit) {
            let block = self.pool.take_cached(hash, block_tokens(b)).expect("checked cached above");
            seq.block_table.push(block);
        }
        if let Some(w) = &mut self.window {
            let first = droppable_blocks(bs, w.window, hit * bs);
            seq.window_table = WindowTable::starting_at(first);
            for (b, &hash) in hashes.iter().enumerate().take(hit).skip(first) {
                seq.window_table.push(w.pool.take_cached(hash, block_tokens(b)).expect("checked cached above"));
            }
        }
        hashes.truncate(hit);
        seq.block_hashes = hashes;
        seq.num_computed = seq.block_table.len() * bs;
        if !seq.admitted {
            seq.num_cached = seq.num_computed;
        }
    }

    /// Returns a sequence's blocks to the pool, last block first (so its prefix stays cached longest).
    fn free_blocks(&mut self, seq: &mut Sequence) {
        self.pool.release(seq.block_table.drain(..).rev());
        if let Some(w) = &mut self.window {
            seq.window_table.release_all(&mut w.pool);
        }
        seq.block_hashes.clear();
        seq.num_computed = 0;
    }
}

/// Registers a sequence's newly full, computed blocks in the prefix cache, in both pools (a window
/// block is registered before it can leave the window, so it stays findable while it waits free).
fn register_full_blocks(pool: &mut BlockPool, window: Option<&mut WindowPool>, seq: &mut Sequence, bs: usize) {
    let mut window = window;
    while seq.block_hashes.len() < seq.num_computed / bs {
        let b = seq.block_hashes.len();
        let tokens = &seq.tokens[b * bs..(b + 1) * bs];
        let hash = block_hash(seq.block_hashes.last().copied(), tokens);
        pool.register(seq.block_table[b], hash, tokens);
        if let (Some(w), Some(block)) = (window.as_deref_mut(), seq.window_table.get(b)) {
            w.pool.register(block, hash, tokens);
        }
        seq.block_hashes.push(hash);
    }
}

/// Gives `seq` blocks for `target` tokens in every pool; false if one ran dry (the blocks taken so
/// far stay with the sequence).
fn allocate_seq(
    pool: &mut BlockPool,
    window: Option<&mut WindowPool>,
    seq: &mut Sequence,
    block_size: usize,
    target: usize,
) -> bool {
    allocate_up_to(pool, &mut seq.block_table, block_size, target)
        && window.is_none_or(|w| seq.window_table.allocate_up_to(&mut w.pool, block_size, target))
}

/// Allocates blocks until `table` holds `target` tokens; false if the pool ran dry (the blocks taken
/// so far stay in the table).
pub(crate) fn allocate_up_to(pool: &mut BlockPool, table: &mut Vec<BlockId>, block_size: usize, target: usize) -> bool {
    while table.len() * block_size < target {
        match pool.allocate() {
            Some(b) => table.push(b),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_batched_tokens: usize, max_seqs: usize) -> SchedulerConfig {
        SchedulerConfig { block_size: 4, max_batched_tokens, max_seqs }
    }

    #[test]
    fn decodes_go_first_and_prompts_are_chunked_under_the_budget() {
        let mut s = Scheduler::new(config(8, 4), 16, true);
        s.add(Sequence::new(1, vec![1; 6]));
        let out = s.schedule();
        assert_eq!(out.chunks, vec![ScheduledChunk { seq: 1, start: 0, len: 6, sample: true, draft: 0 }]);
        s.commit(&out);
        s.append_token(1, 7);
        s.add(Sequence::new(2, vec![2; 10]));
        let out = s.schedule();
        assert_eq!(
            out.chunks,
            vec![
                ScheduledChunk { seq: 1, start: 6, len: 1, sample: true, draft: 0 },
                ScheduledChunk { seq: 2, start: 0, len: 7, sample: false, draft: 0 },
            ]
        );
        s.commit(&out);
        s.append_token(1, 8);
        let out = s.schedule();
        assert_eq!(out.chunks[1], ScheduledChunk { seq: 2, start: 7, len: 3, sample: true, draft: 0 });
    }

    #[test]
    fn a_shared_prefix_is_served_from_cached_blocks() {
        let mut s = Scheduler::new(config(64, 4), 16, true);
        s.add(Sequence::new(1, (0..10).collect()));
        let out = s.schedule();
        s.commit(&out);
        let first_blocks = s.get(1).unwrap().block_table().to_vec();
        s.finish(1);
        s.add(Sequence::new(2, (0..9).chain([99]).collect()));
        let out = s.schedule();
        // Two full blocks (8 tokens) come from the cache; the rest is computed.
        assert_eq!(out.chunks, vec![ScheduledChunk { seq: 2, start: 8, len: 2, sample: true, draft: 0 }]);
        let seq = s.get(2).unwrap();
        assert_eq!(seq.num_cached, 8);
        assert_eq!(seq.block_table()[..2], first_blocks[..2]);
    }

    #[test]
    fn running_out_of_blocks_preempts_the_newest_sequence() {
        let mut s = Scheduler::new(config(64, 4), 3, true);
        s.add(Sequence::new(1, vec![1; 4]));
        s.add(Sequence::new(2, vec![2; 8]));
        let out = s.schedule();
        s.commit(&out);
        s.append_token(1, 5);
        s.append_token(2, 5);
        // Sequence 1 needs a second block; only sequence 2 can give one back.
        let out = s.schedule();
        assert_eq!(out.preempted, vec![2]);
        assert_eq!(out.chunks, vec![ScheduledChunk { seq: 1, start: 4, len: 1, sample: true, draft: 0 }]);
        assert_eq!(s.queue_lengths(), (1, 1));
        assert_eq!(s.get(2).unwrap().num_computed, 0);
    }

    #[test]
    fn speculative_rollback_keeps_accepted_tokens_and_never_leaks() {
        speculate_at_random(Scheduler::new(config(64, 4), 64, true), None);
    }

    #[test]
    fn speculative_rollback_with_a_window_pool_keeps_only_the_window() {
        speculate_at_random(Scheduler::new(config(64, 4), 64, true).with_window(6, 24, true), Some(6));
    }

    /// Three sequences speculating at random for many steps: blocks match tokens in every pool, and
    /// all return at the end.
    fn speculate_at_random(mut s: Scheduler, window: Option<usize>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for id in 0..3 {
            s.add(Sequence::new(id, vec![id as u32; 5]));
        }
        let out = s.schedule();
        s.commit(&out);
        for id in 0..3 {
            s.append_token(id, 100);
        }
        for step in 0..100_000u32 {
            let drafts: Vec<(SeqId, Vec<u32>)> = (0..3).map(|id| (id, vec![7; rng.random_range(1..=5)])).collect();
            for (id, d) in &drafts {
                s.set_draft(*id, d);
            }
            let out = s.schedule();
            assert!(out.preempted.is_empty());
            for (id, _) in &drafts {
                s.take_draft(*id);
            }
            s.commit(&out);
            for chunk in &out.chunks {
                let accepted = rng.random_range(0..=chunk.draft);
                for _ in 0..=accepted {
                    s.append_token(chunk.seq, step % 50);
                }
                s.accept_draft(chunk.seq, accepted);
                let seq = s.get(chunk.seq).unwrap();
                assert_eq!(seq.num_computed + 1, seq.tokens.len());
                let blocks = seq.block_table().len();
                assert!(blocks <= seq.tokens.len().div_ceil(4), "blocks beyond the tokens");
                assert!(blocks >= seq.num_computed.div_ceil(4), "computed tokens without blocks");
                assert_eq!(seq.block_hashes.len(), seq.num_computed / 4, "hashes only for computed full blocks");
                if let Some(window) = window {
                    let table = seq.window_table();
                    assert_eq!(table.len(), blocks, "window table covers what the block table covers");
                    assert_eq!(
                        table.first(),
                        droppable_blocks(4, window, seq.num_computed),
                        "blocks outside the window"
                    );
                }
            }
            // Sequences restart before they outgrow the pool.
            for id in 0..3 {
                if s.get(id).unwrap().tokens.len() > 60 {
                    let tokens = s.finish(id).unwrap().tokens;
                    s.add(Sequence::new(id, tokens[..9].to_vec()));
                    let out = s.schedule();
                    s.commit(&out);
                    for chunk in &out.chunks {
                        s.append_token(chunk.seq, 100);
                    }
                }
            }
        }
        for id in 0..3 {
            s.finish(id);
        }
        assert_eq!(s.pool_stats().used, 0);
        assert_eq!(s.window_pool_stats().map_or(0, |w| w.used), 0);
        assert!(s.is_idle());
    }

    #[test]
    fn a_long_sequence_holds_a_bounded_number_of_window_blocks() {
        let mut s = Scheduler::new(config(4, 4), 64, false).with_window(8, 4, false);
        s.add(Sequence::new(1, vec![1; 10]));
        for step in 0..200 {
            let out = s.schedule();
            assert!(out.preempted.is_empty(), "step {step}: preempted");
            s.commit(&out);
            if out.chunks[0].sample {
                s.append_token(1, 2);
            }
            let seq = s.get(1).unwrap();
            assert!(seq.window_table().blocks().len() <= 8 / 4 + 1, "step {step}: {:?}", seq.window_table());
        }
        assert!(s.get(1).unwrap().tokens.len() > 200);
        s.finish(1);
        assert_eq!((s.pool_stats().used, s.window_pool_stats().unwrap().used), (0, 0));
    }

    #[test]
    fn a_prefix_hit_needs_the_window_blocks_of_its_last_window() {
        // Chunks of 4 tokens: a window pool of 4 blocks is enough for one sequence.
        let mut s = Scheduler::new(config(4, 4), 64, true).with_window(8, 4, true);
        let prompt: Vec<u32> = (0..30).collect();
        // Prefills a prompt, finishes it, and returns the first position it computed.
        let run = |s: &mut Scheduler, id: SeqId, prompt: &[u32]| {
            s.add(Sequence::new(id, prompt.to_vec()));
            let mut first = None;
            loop {
                let out = s.schedule();
                s.commit(&out);
                first.get_or_insert(out.chunks[0].start);
                if out.chunks[0].sample {
                    s.finish(id);
                    return first.unwrap();
                }
            }
        };
        assert_eq!(run(&mut s, 1, &prompt), 0);
        // Blocks 0..7 are cached globally; of the window pool, the blocks of the last window (5, 6).
        assert_eq!(run(&mut s, 2, &prompt), 28);
        // Another prompt takes every window block back: the global blocks alone are no hit.
        run(&mut s, 3, &(100..130).collect::<Vec<u32>>());
        assert_eq!(run(&mut s, 4, &prompt), 0);
        assert_eq!((s.pool_stats().used, s.window_pool_stats().unwrap().used), (0, 0));
    }

    #[test]
    fn the_prefix_cache_holds_accepted_tokens_only() {
        let mut s = Scheduler::new(config(64, 4), 16, true);
        s.add(Sequence::new(1, vec![1, 2, 3]));
        let out = s.schedule();
        s.commit(&out);
        s.append_token(1, 4);
        // Guesses 5, 6, 7, 8, 9 fill the first block and most of a second; only 5 and 6 are accepted,
        // then the verifier replaces 7 by 70.
        s.set_draft(1, &[5, 6, 7, 8, 9]);
        let out = s.schedule();
        assert_eq!(out.chunks, vec![ScheduledChunk { seq: 1, start: 3, len: 6, sample: true, draft: 5 }]);
        assert_eq!(s.get(1).unwrap().block_table().len(), 3);
        s.take_draft(1);
        s.commit(&out);
        for t in [5, 6, 70] {
            s.append_token(1, t);
        }
        s.accept_draft(1, 2);
        let seq = s.get(1).unwrap();
        assert_eq!((seq.num_computed, seq.tokens.clone()), (6, vec![1, 2, 3, 4, 5, 6, 70]));
        assert_eq!(seq.block_table().len(), 2, "the block of rejected guesses only is freed");
        s.finish(1);
        // The first block (1 2 3 4) is cached; a prompt continuing with the rejected 7 8 finds only it.
        s.add(Sequence::new(2, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]));
        let out = s.schedule();
        assert_eq!(out.chunks[0].start, 4);
    }

    #[test]
    fn finishing_frees_every_block() {
        let mut s = Scheduler::new(config(64, 4), 8, false);
        s.add(Sequence::new(1, vec![1; 13]));
        let out = s.schedule();
        s.commit(&out);
        assert_eq!(s.pool_stats().used, 4);
        s.finish(1);
        assert_eq!(s.pool_stats().used, 0);
        assert!(s.is_idle());
    }
}
