//! Bookkeeping of the paged KV cache: which blocks are free, which hold which tokens, which may be
//! shared. No tensors here: the memory itself is `ops::PagedKvCache`.

mod block_pool;
mod layout;
mod prefix;
mod window_table;

pub use block_pool::{BlockId, BlockPool, PoolStats};
pub use layout::KvLayout;
pub use prefix::{block_hash, BlockHash};
pub use window_table::{droppable_blocks, WindowTable};
