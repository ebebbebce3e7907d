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

/// The index of the largest of `row` (greedy sampling): the lowest index among equals, NaN read
/// as −∞ (a row of NaN gives 0). The definition `argmax_rows` is tested against on every backend.
pub fn argmax(row: &[f32]) -> u32 {
    let value = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
    let mut best = 0;
    for (i, &l) in row.iter().enumerate() {
        if value(l) > value(row[best]) {
            best = i;
        }
    }
    best as u32
}

/// A key whose unsigned order is `f32::total_cmp`'s (−NaN < −∞ < … < −0 < +0 < … < +∞ < +NaN).
fn total_order_key(v: f32) -> u32 {
    let bits = v.to_bits();
    bits ^ if bits >> 31 == 1 { u32::MAX } else { 1 << 31 }
}

/// The `k` largest of `row` (all of it when shorter) with their indices, in `f32::total_cmp` order
/// with ties to the lower index: the candidates the host sampler ranks the same way. Those above the
/// k-th largest come first, then its equals, each group in index order. The definition
/// `top_k_rows` is tested against on every backend.
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    let keys: Vec<u32> = row.iter().map(|&v| total_order_key(v)).collect();
    let mut order = keys.clone();
    let kth = *order.select_nth_unstable_by(k - 1, |a, b| b.cmp(a)).1;
    let above: Vec<(u32, f32)> =
        keys.iter().zip(row).enumerate().filter(|(_, (&key, _))| key > kth).map(|(i, (_, &v))| (i as u32, v)).collect();
    let equals = keys.iter().zip(row).enumerate().filter(|(_, (&key, _))| key == kth).map(|(i, (_, &v))| (i as u32, v));
    let mut out = above;
    let missing = k - out.len();
    out.extend(equals.take(missing));
    out
}

/// Copies row `t` of `src` (`[T, row_len]`) into cache slot `slot_mapping[t]` of `cache`
/// (`[slots, row_len]`), skipping padding rows ([`super::PADDING_SLOT`]).
pub fn kv_write(src: &[f32], slot_mapping: &[u32], cache: &mut [f32], row_len: usize) {
    for (row, &slot) in src.chunks_exact(row_len).zip(slot_mapping).filter(|(_, &s)| s != super::PADDING_SLOT) {
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
/// Work is split over (query rows, KV head) pairs, run on the CPU kernels' thread pool (the one the
/// matmuls of the step use, so that no second pool spins on the same cores); the query heads of a GQA
/// group share each key read, unless there are too few pairs to keep every thread busy.
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
    // Tasks: (rows of one sequence, KV head, query heads). A decode step of many sequences has
    // enough (sequence, KV head) pairs; one long prompt or a few sequences are split further, by
    // query rows and by query head, so that every thread gets work.
    let chunks: Vec<(usize, usize)> = (0..meta.num_seqs())
        .flat_map(|seq| {
            let rows = meta.cu_query_lens[seq] as usize..meta.cu_query_lens[seq + 1] as usize;
            rows.step_by(ROWS_PER_TASK).map(move |start| (seq, start))
        })
        .collect();
    let heads_per_task = if chunks.len() * num_kv_heads >= 4 * bodega_cpu_kernels::threads() { group } else { 1 };
    let parts = group / heads_per_task;
    let out_ptr = SharedMut(out.as_mut_ptr());
    bodega_cpu_kernels::parallel_for(chunks.len() * num_kv_heads * parts, &|task| {
        let (seq, start) = chunks[task / (num_kv_heads * parts)];
        let kv_head = task / parts % num_kv_heads;
        let first_head = kv_head * group + task % parts * heads_per_task;
        // SAFETY: each task writes only its rows' heads `first_head..+heads_per_task`, which no
        // other task touches; `out` outlives the parallel loop.
        let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.get(), q.len()) };
        let end = (meta.cu_query_lens[seq + 1] as usize).min(start + ROWS_PER_TASK);
        let q_len = (meta.cu_query_lens[seq + 1] - meta.cu_query_lens[seq]) as usize;
        let ctx = meta.context_lens[seq] as usize;
        for t in start..end {
            let pos = ctx - q_len + (t - meta.cu_query_lens[seq] as usize);
            let keys = PagedRows {
                table: meta.block_table(seq),
                block_size,
                slot_stride: num_kv_heads * d,
                head_offset: kv_head * d,
                first: if window == 0 { 0 } else { (pos + 1).saturating_sub(window) },
                end: pos + 1,
            };
            let heads = (t * num_heads + first_head) * d..(t * num_heads + first_head + heads_per_task) * d;
            attend(path, &q[heads.clone()], scale, cache, &keys, d, &mut out[heads]);
        }
    });
}

/// Query rows of one sequence per attention task (a prompt chunk is split into several tasks).
const ROWS_PER_TASK: usize = 16;

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
