//! A sequence's block table for the sliding-window layers (Gemma 3's local layers, Mistral's
//! window). Those layers never read a key older than the window, so the blocks whose every position
//! has left the window of every query still to come go back to their pool: a long sequence holds
//! about `window / block_size` blocks there, however long it grows. Logical block `b` covers positions
//! `b * block_size ..`; the first `dropped` logical blocks are no longer held.

use super::block_pool::{BlockId, BlockPool};

/// The blocks still held, and how many leading ones were returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowTable {
    /// Leading logical blocks given back to the pool.
    dropped: usize,
    /// Logical blocks `dropped..`, in order.
    blocks: Vec<BlockId>,
}

impl WindowTable {
    /// A table whose first `dropped` logical blocks are not held (a prefix-cache hit that starts past
    /// the window needs none of them).
    pub fn starting_at(dropped: usize) -> Self {
        Self { dropped, blocks: Vec::new() }
    }

    /// Logical index of the first block held.
    pub fn first(&self) -> usize {
        self.dropped
    }

    /// The blocks held, from logical block [`first`](Self::first) on.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Logical blocks covered, dropped ones included.
    pub fn len(&self) -> usize {
        self.dropped + self.blocks.len()
    }

    /// Whether it covers no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The block holding logical block `b`, if still held.
    pub fn get(&self, b: usize) -> Option<BlockId> {
        b.checked_sub(self.dropped).and_then(|i| self.blocks.get(i)).copied()
    }

    /// Appends a block taken elsewhere (a prefix-cache hit) as the next logical block.
    pub fn push(&mut self, block: BlockId) {
        self.blocks.push(block);
    }

    /// Allocates blocks until the table covers `target` positions; false if the pool ran dry (the
    /// blocks taken so far stay in the table).
    pub fn allocate_up_to(&mut self, pool: &mut BlockPool, block_size: usize, target: usize) -> bool {
        while self.len() * block_size < target {
            match pool.allocate() {
                Some(b) => self.blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Returns the blocks that no query at position `num_computed` or later can see, since query `p`
    /// sees keys `p - window + 1 ..= p`.
    pub fn drop_outside(&mut self, pool: &mut BlockPool, block_size: usize, window: usize, num_computed: usize) {
        let droppable = droppable_blocks(block_size, window, num_computed).min(self.len());
        if droppable > self.dropped {
            pool.release(self.blocks.drain(..droppable - self.dropped));
            self.dropped = droppable;
        }
    }

    /// Returns the blocks past logical block `keep` (speculative guesses rejected), last first.
    pub fn truncate(&mut self, pool: &mut BlockPool, keep: usize) {
        let keep = keep.saturating_sub(self.dropped);
        if self.blocks.len() > keep {
            pool.release(self.blocks.drain(keep..).rev());
        }
    }

    /// Returns every block, last first (so that the earliest stay cached longest), and starts over.
    pub fn release_all(&mut self, pool: &mut BlockPool) {
        pool.release(self.blocks.drain(..).rev());
        self.dropped = 0;
    }
}

/// Leading blocks that no query at position `num_computed` or later sees through a window of
/// `window` keys: those whose last position is before `num_computed - window + 1`.
pub fn droppable_blocks(block_size: usize, window: usize, num_computed: usize) -> usize {
    (num_computed + 1).saturating_sub(window) / block_size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_dropped_once_its_last_position_leaves_every_later_window() {
        // Window 4, blocks of 2: query 6 sees 3..=6, so block 0 (0, 1) may go, block 1 (2, 3) not.
        assert_eq!(droppable_blocks(2, 4, 6), 1);
        // Query 7 sees 4..=7: blocks 0 and 1 may go.
        assert_eq!(droppable_blocks(2, 4, 7), 2);
        assert_eq!(droppable_blocks(2, 4, 2), 0);
    }

    #[test]
    fn the_table_holds_a_bounded_number_of_blocks_and_returns_them_all() {
        let mut pool = BlockPool::new(8, false);
        let mut table = WindowTable::default();
        for n in 1..200 {
            assert!(table.allocate_up_to(&mut pool, 4, n));
            table.drop_outside(&mut pool, 4, 8, n);
            assert_eq!(table.len(), n.div_ceil(4));
            assert!(table.blocks().len() <= 8 / 4 + 1, "{} blocks held at {n} tokens", table.blocks().len());
        }
        assert_eq!(table.get(table.first()), table.blocks().first().copied());
        assert_eq!(table.get(0), None);
        table.release_all(&mut pool);
        assert_eq!(pool.stats().used, 0);
        assert!(table.is_empty());
    }
}
