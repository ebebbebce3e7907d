//! The paged KV cache's storage: one key and one value tensor per layer, shaped
//! `[num_blocks, block_size, num_kv_heads, head_dim]`. Which block belongs to which sequence is the
//! engine's business (its block tables); this type only owns the memory.

use candle_core::{DType, Device, Result, Tensor};

/// Per-layer key/value block storage shared by every sequence.
#[derive(Debug)]
pub struct PagedKvCache {
    layers: Vec<(Tensor, Tensor)>,
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
        let shape = (num_blocks, block_size, num_kv_heads, head_dim);
        let layers = (0..num_layers)
            .map(|_| Ok((Tensor::zeros(shape, dtype, device)?, Tensor::zeros(shape, dtype, device)?)))
            .collect::<Result<_>>()?;
        Ok(Self { layers, block_size })
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

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}
