//! Reference CPU kernels for the ops contract, on plain slices. They are the definition every GPU
//! kernel is tested against and the production path on the CPU, so they are written to be obviously
//! right first and fast second: each query's keys are visited in position order, whatever else is in
//! the batch, which keeps a sequence's arithmetic independent of batch composition.

use super::AttentionMetadata;
use std::cell::RefCell;

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

/// Causal attention of each sequence's queries over its paged keys and values.
///
/// `q` and `out` are `[T, num_heads, head_dim]`; the caches are
/// `[num_blocks, block_size, num_kv_heads, head_dim]`. Query `i` of sequence `b` sits at position
/// `context_lens[b] - q_len + i` and sees keys `max(0, p - window + 1) ..= p` (`window == 0`: all).
/// Work is split over (sequence, KV head) pairs, run on the CPU kernels' thread pool (the one the
/// matmuls of the step use, so that no second pool spins on the same cores); the query heads of a GQA
/// group share each key read.
pub fn paged_attention(
    q: &[f32],
    cache: (&[f32], &[f32]),
    meta: &AttentionMetadata,
    params: AttentionParams,
    out: &mut [f32],
) {
    let num_kv_heads = params.num_kv_heads;
    let out_ptr = SharedMut(out.as_mut_ptr());
    let tasks = meta.num_seqs() * num_kv_heads;
    bodega_cpu_kernels::parallel_for(tasks, &|task| {
        let (seq, kv_head) = (task / num_kv_heads, task % num_kv_heads);
        // SAFETY: task (seq, kv_head) writes only its sequence's rows and its group's heads, which
        // no other task touches; `out` outlives the parallel loop.
        let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.get(), q.len()) };
        attend_group(q, cache, meta, params, (seq, kv_head), out);
    });
}

/// All queries of sequence `seq` for the query heads of one KV head.
fn attend_group(
    q: &[f32],
    (k_cache, v_cache): (&[f32], &[f32]),
    meta: &AttentionMetadata,
    params: AttentionParams,
    (seq, kv_head): (usize, usize),
    out: &mut [f32],
) {
    let AttentionParams { num_heads, num_kv_heads, head_dim: d, block_size, scale, window } = params;
    let rows = meta.cu_query_lens[seq] as usize..meta.cu_query_lens[seq + 1] as usize;
    let group = num_heads / num_kv_heads;
    let table = meta.block_table(seq);
    let ctx = meta.context_lens[seq] as usize;
    let q_len = rows.len();
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        for (i, t) in rows.enumerate() {
            let pos = ctx - q_len + i;
            let first = if window == 0 { 0 } else { (pos + 1).saturating_sub(window) };
            let n_keys = pos + 1 - first;
            scratch.clear();
            scratch.resize(group * n_keys, 0.0);
            // Scores: one read of each key serves every query head of the group.
            for (j, key_pos) in (first..=pos).enumerate() {
                let base = kv_offset(table, key_pos, block_size, num_kv_heads, kv_head, d);
                let key = &k_cache[base..base + d];
                for h in 0..group {
                    let qh = (t * num_heads + kv_head * group + h) * d;
                    scratch[h * n_keys + j] = dot(&q[qh..qh + d], key) * scale;
                }
            }
            for h in 0..group {
                let scores = &mut scratch[h * n_keys..(h + 1) * n_keys];
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                scores.iter_mut().for_each(|s| *s *= inv);
            }
            for h in 0..group {
                let oh = (t * num_heads + kv_head * group + h) * d;
                out[oh..oh + d].fill(0.0);
            }
            for (j, key_pos) in (first..=pos).enumerate() {
                let base = kv_offset(table, key_pos, block_size, num_kv_heads, kv_head, d);
                let value = &v_cache[base..base + d];
                for h in 0..group {
                    let w = scratch[h * n_keys + j];
                    let oh = (t * num_heads + kv_head * group + h) * d;
                    axpy(w, value, &mut out[oh..oh + d]);
                }
            }
        }
    });
}

thread_local! {
    /// Per-thread score buffer, reused across steps so that attention allocates nothing per token.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Element offset of (position, kv head) in a paged cache.
fn kv_offset(table: &[u32], pos: usize, block_size: usize, num_kv_heads: usize, kv_head: usize, d: usize) -> usize {
    let slot = table[pos / block_size] as usize * block_size + pos % block_size;
    (slot * num_kv_heads + kv_head) * d
}

/// Dot product with eight independent accumulators, so that the compiler vectorises it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += a * x`.
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
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
