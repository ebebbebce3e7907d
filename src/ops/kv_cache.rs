//! The paged KV cache's storage: one key and one value tensor per layer, shaped
//! `[num_blocks, block_size, num_kv_heads, head_dim]`. Which block belongs to which sequence is the
//! engine's business (its block tables); this type only owns the memory. A model with sliding-window
//! layers may keep those layers in a second, smaller pool of blocks (the window group), since they
//! hold only the last `window` tokens of each sequence.

use candle_core::{DType, Device, Result, Tensor};

/// Per-layer key/value block storage shared by every sequence.
#[derive(Debug)]
pub struct PagedKvCache {
    layers: Vec<(Tensor, Tensor)>,
    /// Whether layer `i` lives in the window group (indexed by the step's window block tables).
    windowed: Vec<bool>,
    block_size: usize,
}

impl PagedKvCache {
    /// Allocates `num_blocks` blocks of `block_size` tokens for every layer.
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = KvShape { block_size, num_kv_heads, head_dim, dtype };
        Self::with_window_group(&vec![false; num_layers], num_blocks, 0, shape, device)
    }

    /// Allocates `num_blocks` blocks for the layers where `windowed` is false and
    /// `num_window_blocks` for those where it is true.
    pub fn with_window_group(
        windowed: &[bool],
        num_blocks: usize,
        num_window_blocks: usize,
        shape: KvShape,
        device: &Device,
    ) -> Result<Self> {
        let KvShape { block_size, num_kv_heads, head_dim, dtype } = shape;
        let layers = windowed
            .iter()
            .map(|&w| {
                let dims = (if w { num_window_blocks } else { num_blocks }, block_size, num_kv_heads, head_dim);
                Ok((Tensor::zeros(dims, dtype, device)?, Tensor::zeros(dims, dtype, device)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers, windowed: windowed.to_vec(), block_size })
    }

    /// Bytes one block takes over all layers (keys and values): the unit of the memory budget.
    pub fn bytes_per_block(
        num_layers: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> usize {
        2 * num_layers * block_size * num_kv_heads * head_dim * dtype.size_in_bytes()
    }

    /// The key and value tensors of one layer.
    pub fn layer(&self, index: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[index];
        (k, v)
    }

    /// Blocks in the main pool, or in the window group (0 when it has no layer).
    pub fn num_blocks(&self, window_group: bool) -> usize {
        let layer = self.windowed.iter().position(|&w| w == window_group);
        layer.map_or(0, |i| self.layers[i].0.dims()[0])
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Whether layer `index` is in the window group (its keys are found through the step's window
    /// block tables).
    pub fn is_windowed(&self, index: usize) -> bool {
        self.windowed[index]
    }

    /// Whether some layer is in the window group, so that every step needs window block tables.
    pub fn has_window_group(&self) -> bool {
        self.windowed.contains(&true)
    }
}

/// The shape of one block of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Tokens per block.
    pub block_size: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Element type.
    pub dtype: DType,
}
