//! Reference CPU kernels for the ops contract, on plain slices. They are the definition every GPU
//! kernel is tested against and the production path on the CPU, so they are written to be obviously
//! right first and fast second: each query's keys are visited in position order, whatever else is in
//! the batch, which keeps a sequence's arithmetic independent of batch composition.

use super::AttentionMetadata;
use bodega_cpu_kernels::{attend, KernelPath, PagedRows};

/// Shape and settings of one attention call (the same for every layer of a model).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (`num_heads` is a multiple of it: grouped-query attention).
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Multiplier of the query-key dot products (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Each query sees at most this many most recent keys (0: all).
    pub window: usize,
}

/// Copies row `t` of `src` (`[T, row_len]`) into cache slot `slot_mapping[t]` of `cache`
/// (`[slots, row_len]`).
pub fn kv_write(src: &[f32], slot_mapping: &[u32], cache: &mut [f32], row_len: usize) {
    for (row, &slot) in src.chunks_exact(row_len).zip(slot_mapping) {
        let at = slot as usize * row_len;
        cache[at..at + row_len].copy_from_slice(row);
    }
}

/// Causal attention of each sequence's queries over its paged keys and values, on kernel `path`
/// (`KernelPath::Scalar` is the readable reference GPU kernels are tested against).
///
/// `q` and `out` are `[T, num_heads, head_dim]`; the caches are
/// `[num_blocks, block_size, num_kv_heads, head_dim]`. Query `i` of sequence `b` sits at position
/// `context_lens[b] - q_len + i` and sees keys `max(0, p - window + 1) ..= p` (`window == 0`: all).
/// Work is split over (sequence, KV head) pairs, run on the CPU kernels' thread pool (the one the
/// matmuls of the step use, so that no second pool spins on the same cores); the query heads of a GQA
/// group share each key read.
pub fn paged_attention(
    path: KernelPath,
    q: &[f32],
    cache: (&[f32], &[f32]),
    meta: &AttentionMetadata,
    params: AttentionParams,
    out: &mut [f32],
) {
    let AttentionParams { num_heads, num_kv_heads, head_dim: d, block_size, scale, window } = params;
    let group = num_heads / num_kv_heads;
    let out_ptr = SharedMut(out.as_mut_ptr());
    let tasks = meta.num_seqs() * num_kv_heads;
    bodega_cpu_kernels::parallel_for(tasks, &|task| {
        let (seq, kv_head) = (task / num_kv_heads, task % num_kv_heads);
        // SAFETY: task (seq, kv_head) writes only its sequence's rows and its group's heads, which
        // no other task touches; `out` outlives the parallel loop.
        let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.get(), q.len()) };
        let rows = meta.cu_query_lens[seq] as usize..meta.cu_query_lens[seq + 1] as usize;
        let ctx = meta.context_lens[seq] as usize;
        let q_len = rows.len();
        for (i, t) in rows.enumerate() {
            let pos = ctx - q_len + i;
            let keys = PagedRows {
                table: meta.block_table(seq),
                block_size,
                slot_stride: num_kv_heads * d,
                head_offset: kv_head * d,
                first: if window == 0 { 0 } else { (pos + 1).saturating_sub(window) },
                end: pos + 1,
            };
            let heads = (t * num_heads + kv_head * group) * d..(t * num_heads + (kv_head + 1) * group) * d;
            attend(path, &q[heads.clone()], scale, cache, &keys, d, &mut out[heads]);
        }
    });
}

/// A raw pointer that parallel tasks may share because each writes a disjoint part.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used for disjoint writes, see `paged_attention`.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}
