//! How the KV memory is split between the two groups of layers. Global layers keep every token of a
//! sequence; sliding-window layers keep only the last `window` tokens, so they get their own,
//! smaller pool, sized for what one sequence holds there at most (the window plus one step's chunk).

/// The split of a model's layers and of a memory budget between the groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    /// Whether layer `i` is in the window group.
    pub windowed: Vec<bool>,
    /// Keys the window group's queries see (0: no window group).
    pub window: usize,
    /// Bytes of one block over the global layers.
    pub bytes_per_block: usize,
    /// Bytes of one block over the window group's layers.
    pub window_bytes_per_block: usize,
    /// Global blocks one sequence of the whole context holds.
    pub blocks_per_seq: usize,
    /// Window blocks one sequence holds at most.
    pub window_blocks_per_seq: usize,
}

impl KvLayout {
    /// The layout for layers with these windows (0: global). Layers whose window does not save
    /// anything within `context` stay global. `layer_block_bytes` is one block of one layer.
    pub fn new(
        layer_windows: &[usize],
        context: usize,
        block_size: usize,
        max_batched_tokens: usize,
        layer_block_bytes: usize,
    ) -> Self {
        let windowed: Vec<bool> = layer_windows.iter().map(|&w| w > 0 && w < context).collect();
        let window = layer_windows.iter().zip(&windowed).filter(|(_, &on)| on).map(|(&w, _)| w).max().unwrap_or(0);
        let num_windowed = windowed.iter().filter(|&&on| on).count();
        let blocks_per_seq = context.div_ceil(block_size);
        // A step's chunk of `max_batched_tokens` starts at most `window - 1` positions after the
        // oldest key it needs: that span and a block of misalignment.
        let window_blocks_per_seq = match window {
            0 => 0,
            w => blocks_per_seq.min((w + max_batched_tokens).div_ceil(block_size) + 1),
        };
        Self {
            window,
            bytes_per_block: (windowed.len() - num_windowed) * layer_block_bytes,
            window_bytes_per_block: num_windowed * layer_block_bytes,
            blocks_per_seq,
            window_blocks_per_seq,
            windowed,
        }
    }

    /// Bytes of everything one sequence of the whole context holds.
    pub fn bytes_per_seq(&self) -> usize {
        self.blocks_per_seq * self.bytes_per_block + self.window_blocks_per_seq * self.window_bytes_per_block
    }

    /// The smallest useful budget: two global blocks, and room for one sequence in the window group.
    pub fn min_bytes(&self) -> usize {
        2 * self.bytes_per_block + self.window_blocks_per_seq * self.window_bytes_per_block
    }

    /// Global and window blocks for `budget` bytes, in the proportion full-context sequences use
    /// them; the window group always gets room for one sequence. Global layers that hold nothing
    /// (every layer windowed) get blocks for `max_seqs` sequences: they cost no memory.
    pub fn split(&self, budget: u64, max_seqs: usize) -> (usize, usize) {
        if self.window == 0 {
            return ((budget / self.bytes_per_block as u64) as usize, 0);
        }
        let sequences = budget as f64 / self.bytes_per_seq() as f64;
        let window_blocks = ((sequences * self.window_blocks_per_seq as f64) as usize).max(self.window_blocks_per_seq);
        let rest = budget.saturating_sub((window_blocks * self.window_bytes_per_block) as u64);
        let blocks = match self.bytes_per_block {
            0 => max_seqs * self.blocks_per_seq,
            per_block => (rest / per_block as u64) as usize,
        };
        (blocks, window_blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_like_layers_split_into_a_small_window_pool() {
        // Five sliding layers of window 512 for every global one, 8k context, blocks of 16.
        let windows: Vec<usize> = (0..6).map(|i| if i == 5 { 0 } else { 512 }).collect();
        let layout = KvLayout::new(&windows, 8192, 16, 512, 100);
        assert_eq!(layout.windowed, [true, true, true, true, true, false]);
        assert_eq!((layout.blocks_per_seq, layout.window_blocks_per_seq), (512, 65));
        assert_eq!(layout.bytes_per_seq(), 512 * 100 + 65 * 500);
        let (blocks, window_blocks) = layout.split(4 * layout.bytes_per_seq() as u64, 4);
        assert_eq!((blocks, window_blocks), (4 * 512, 4 * 65));
    }

    #[test]
    fn a_window_as_long_as_the_context_saves_nothing() {
        let layout = KvLayout::new(&[4096, 0], 4096, 16, 512, 100);
        assert_eq!((layout.window, layout.windowed.clone()), (0, vec![false, false]));
        assert_eq!(layout.split(1000, 1), (5, 0));
    }

    #[test]
    fn with_every_layer_windowed_the_global_blocks_cost_nothing() {
        // Mistral with a window shorter than the context: the global table only tracks positions.
        let layout = KvLayout::new(&[64, 64], 1024, 16, 16, 100);
        assert_eq!((layout.bytes_per_block, layout.window_bytes_per_block), (0, 200));
        assert_eq!(layout.min_bytes(), 6 * 200);
        assert_eq!(layout.split(10 * 6 * 200, 4), (4 * 64, 60));
    }

    #[test]
    fn a_small_budget_still_fits_one_windowed_sequence() {
        let layout = KvLayout::new(&[32, 0], 1024, 16, 16, 100);
        assert_eq!(layout.window_blocks_per_seq, 4);
        assert_eq!(layout.split(1000, 8), (6, 4));
    }
}
