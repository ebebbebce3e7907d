//! A fixed pool of KV blocks with reference counts and a prefix cache.
//!
//! A block is in use (ref count > 0) or free. Free blocks wait in an LRU queue; a free block that
//! still holds a full, hashed block of tokens stays findable by its hash until it is evicted, which
//! happens only when `allocate` takes it. Order of eviction: free blocks that hold nothing first, then
//! cached blocks, least recently freed first; when a sequence frees its blocks, its last blocks are
//! queued first, so that the shared beginnings of prompts stay cached longest.

use super::prefix::BlockHash;
use std::collections::{BTreeMap, HashMap};

/// Index of a block in every layer's cache tensors.
pub type BlockId = u32;

#[derive(Debug, Clone, Default)]
struct BlockState {
    ref_count: u32,
    /// Hash and tokens of the full block it holds, when registered in the prefix cache.
    cached: Option<(BlockHash, Vec<u32>)>,
    /// Position in the free queue, while free.
    free_stamp: Option<u64>,
}

/// Counts for engine snapshots and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// All blocks.
    pub total: usize,
    /// Blocks referenced by sequences.
    pub used: usize,
    /// Free blocks (cached or empty).
    pub free: usize,
    /// Free blocks that still hold a prefix-cache entry.
    pub cached: usize,
}

/// The pool.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<BlockState>,
    /// Free queue: stamp → block; lowest stamp is evicted first.
    free: BTreeMap<u64, BlockId>,
    next_stamp: u64,
    by_hash: HashMap<BlockHash, BlockId>,
    prefix_caching: bool,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks.
    pub fn new(num_blocks: usize, prefix_caching: bool) -> Self {
        let mut pool = Self {
            blocks: vec![BlockState::default(); num_blocks],
            free: BTreeMap::new(),
            next_stamp: 0,
            by_hash: HashMap::new(),
            prefix_caching,
        };
        for id in 0..num_blocks as BlockId {
            pool.push_free(id);
        }
        pool
    }

    /// Takes a free block (evicting its cached content), with ref count 1.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let (_, id) = self.free.pop_first()?;
        let block = &mut self.blocks[id as usize];
        block.free_stamp = None;
        block.ref_count = 1;
        if let Some((hash, _)) = block.cached.take() {
            self.by_hash.remove(&hash);
        }
        Some(id)
    }

    /// Drops one reference to each block, in the order given: the first freed is the first evicted,
    /// so callers pass a sequence's blocks last to first.
    pub fn release(&mut self, ids: impl IntoIterator<Item = BlockId>) {
        for id in ids {
            let block = &mut self.blocks[id as usize];
            debug_assert!(block.ref_count > 0, "block {id} released twice");
            block.ref_count -= 1;
            if block.ref_count == 0 {
                self.push_free(id);
            }
        }
    }

    /// The cached block holding exactly `tokens` after this hash chain, now referenced once more.
    pub fn take_cached(&mut self, hash: BlockHash, tokens: &[u32]) -> Option<BlockId> {
        let &id = self.by_hash.get(&hash)?;
        let block = &mut self.blocks[id as usize];
        if block.cached.as_ref().is_none_or(|(_, t)| t != tokens) {
            return None;
        }
        if let Some(stamp) = block.free_stamp.take() {
            self.free.remove(&stamp);
        }
        block.ref_count += 1;
        Some(id)
    }

    /// Whether a block holding exactly `tokens` after this hash chain is cached (nothing changes).
    pub fn contains(&self, hash: BlockHash, tokens: &[u32]) -> bool {
        self.by_hash
            .get(&hash)
            .is_some_and(|&id| self.blocks[id as usize].cached.as_ref().is_some_and(|(_, t)| t == tokens))
    }

    /// Records that block `id` now holds the full block `tokens` with this chained hash. A block
    /// whose content is already cached elsewhere is left unregistered.
    pub fn register(&mut self, id: BlockId, hash: BlockHash, tokens: &[u32]) {
        if !self.prefix_caching || self.by_hash.contains_key(&hash) {
            return;
        }
        self.blocks[id as usize].cached = Some((hash, tokens.to_vec()));
        self.by_hash.insert(hash, id);
    }

    /// Drops every prefix-cache entry held by a free block (blocks in use keep theirs).
    pub fn forget_cached(&mut self) {
        for &id in self.free.values() {
            if let Some((hash, _)) = self.blocks[id as usize].cached.take() {
                self.by_hash.remove(&hash);
            }
        }
    }

    /// Block counts for snapshots and metrics.
    pub fn stats(&self) -> PoolStats {
        let cached = self.free.values().filter(|&&id| self.blocks[id as usize].cached.is_some()).count();
        PoolStats { total: self.blocks.len(), used: self.blocks.len() - self.free.len(), free: self.free.len(), cached }
    }

    /// The current reference count of a block (tests and assertions).
    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_count
    }

    /// Free blocks in eviction order (tests).
    pub fn free_order(&self) -> Vec<BlockId> {
        self.free.values().copied().collect()
    }

    fn push_free(&mut self, id: BlockId) {
        // Empty blocks go before every cached one: evicting them loses nothing.
        let stamp = if self.blocks[id as usize].cached.is_some() {
            self.next_stamp += 1;
            (1 << 62) + self.next_stamp
        } else {
            self.next_stamp += 1;
            self.next_stamp
        };
        self.blocks[id as usize].free_stamp = Some(stamp);
        self.free.insert(stamp, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kv::block_hash;

    #[test]
    fn allocation_takes_empty_blocks_before_cached_ones() {
        let mut pool = BlockPool::new(4, true);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!((a, b), (0, 1));
        pool.register(a, block_hash(None, &[1, 2]), &[1, 2]);
        pool.release([b, a]);
        assert_eq!(pool.free_order(), vec![2, 3, 1, 0]);
        assert_eq!(pool.stats(), PoolStats { total: 4, used: 0, free: 4, cached: 1 });
    }

    #[test]
    fn a_cached_free_block_is_reused_until_evicted() {
        let mut pool = BlockPool::new(2, true);
        let h = block_hash(None, &[7, 8]);
        let a = pool.allocate().unwrap();
        pool.register(a, h, &[7, 8]);
        pool.release([a]);
        assert_eq!(pool.take_cached(h, &[7, 8]), Some(a));
        assert_eq!(pool.ref_count(a), 1);
        assert_eq!(pool.take_cached(h, &[7, 9]), None, "token ids are checked on a hit");
        pool.release([a]);
        // Two allocations: the empty block first, then the cached one is evicted.
        assert_eq!(pool.allocate(), Some(1));
        assert_eq!(pool.allocate(), Some(a));
        assert_eq!(pool.take_cached(h, &[7, 8]), None);
    }

    #[test]
    fn shared_blocks_are_freed_by_their_last_user() {
        let mut pool = BlockPool::new(2, true);
        let h = block_hash(None, &[1]);
        let a = pool.allocate().unwrap();
        pool.register(a, h, &[1]);
        assert_eq!(pool.take_cached(h, &[1]), Some(a));
        assert_eq!(pool.ref_count(a), 2);
        pool.release([a]);
        assert_eq!(pool.stats().used, 1);
        pool.release([a]);
        assert_eq!(pool.stats(), PoolStats { total: 2, used: 0, free: 2, cached: 1 });
    }

    #[test]
    fn without_prefix_caching_nothing_is_registered() {
        let mut pool = BlockPool::new(1, false);
        let a = pool.allocate().unwrap();
        pool.register(a, 5, &[1]);
        pool.release([a]);
        assert_eq!(pool.take_cached(5, &[1]), None);
    }
}
