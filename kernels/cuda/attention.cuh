// What the two paged-attention families (`paged_attention.cu`: CUDA cores, `paged_attention_mma.cu`:
// tensor cores) share with each other and with the launch code in src/ops/cuda.rs: the launch
// parameters and the context partition, so that both write partitions that `paged_attention_reduce`
// combines the same way.
#pragma once
#include "common.cuh"

#define NT 128           // threads per attention block
#define WARPS (NT / 32)
#define PART 256         // keys per context partition, at absolute positions
// A decoding sequence of more than PART and at most SHORT_CTX keys takes partitions of SHORT_PART keys
// (paged_decode): its few blocks would otherwise each walk up to PART keys in rounds of dependent
// loads. Up to PART keys one partition needs no reduction; past SHORT_CTX there are blocks enough.
#define SHORT_CTX 1024
#define SHORT_PART 64

// Same layout as `KernelParams` in src/ops/cuda.rs.
struct AttnParams {
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t block_size;
    uint32_t max_blocks;
    uint32_t window;         // 0: none
    float scale;
    uint32_t heads_per_chunk;  // query heads of a group handled by one block (Gc)
    uint32_t num_chunks;       // ceil(group / Gc)
    uint32_t num_partitions;   // gridDim.z; 1 writes the output directly
    uint32_t num_tokens;       // T: rows of q and out
};

// One work item of a chunked-prefill kernel: the query rows (token, head) of one block and the key
// range they see in this block's partition.
struct WorkItem {
    uint32_t row0;       // first query token (row of q)
    uint32_t heads_here; // query heads of this chunk of the group
    uint32_t head0;      // first query head
    uint32_t kv_head;
    int rows;            // tokens × heads_per_chunk (rows past the last token or head are padding)
    uint32_t pos_first;  // position of the first query token
    uint32_t lo, hi;     // keys [lo, hi) that some row of the block sees in this partition
    const uint32_t *table;
};

// Reads the block's work item (`work`: sequence, first query row, token count) from the step's
// metadata, with the key range it sees in partitions `part` .. `part + parts - 1`.
__device__ __forceinline__ WorkItem work_item(const uint32_t *__restrict__ block_tables,
                                              const uint32_t *__restrict__ cu_query_lens,
                                              const uint32_t *__restrict__ context_lens,
                                              const uint32_t *__restrict__ work, const AttnParams &p,
                                              uint32_t part, uint32_t parts = 1) {
    WorkItem w;
    const uint32_t seq = work[3 * blockIdx.x], n_tok = work[3 * blockIdx.x + 2];
    w.row0 = work[3 * blockIdx.x + 1];
    w.kv_head = blockIdx.y / p.num_chunks;
    const uint32_t chunk = blockIdx.y % p.num_chunks;
    const uint32_t group = p.num_heads / p.num_kv_heads;
    w.head0 = w.kv_head * group + chunk * p.heads_per_chunk;
    w.heads_here = min(p.heads_per_chunk, group - chunk * p.heads_per_chunk);
    w.rows = (int)(n_tok * p.heads_per_chunk);
    const uint32_t ctx = context_lens[seq];
    const uint32_t q_start = cu_query_lens[seq];
    const uint32_t q_len = cu_query_lens[seq + 1] - q_start;
    w.table = block_tables + (size_t)seq * p.max_blocks;
    // Positions of the block's first and last query; its keys lie in [lo, hi).
    w.pos_first = ctx - q_len + (w.row0 - q_start);
    const uint32_t pos_last = w.pos_first + n_tok - 1;
    const uint32_t win_lo = (p.window == 0 || w.pos_first + 1 < p.window) ? 0 : w.pos_first + 1 - p.window;
    const uint32_t part_lo = part * PART, part_hi = (part + parts) * PART;
    w.lo = max(win_lo, part_lo);
    w.hi = min(pos_last + 1, part_hi);
    return w;
}

// The keys row r of a work item sees, [first, last], or first > last for a padding row.
__device__ __forceinline__ void row_range(const WorkItem &w, const AttnParams &p, int r, uint32_t &first,
                                          uint32_t &last) {
    const uint32_t pos = w.pos_first + r / p.heads_per_chunk;
    if (r < w.rows && r % p.heads_per_chunk < w.heads_here) {
        first = (p.window == 0 || pos + 1 < p.window) ? 0 : pos + 1 - p.window;
        last = pos;
    } else {
        first = 1;
        last = 0;
    }
}

// What a decode block (`paged_decode`, `paged_decode_mma`) takes: blockIdx.x indexes the decoding
// sequences, blockIdx.y a KV head and a chunk of up to G of its query heads, blockIdx.z a partition.
struct DecodeBlock {
    uint32_t kv_head, head0;  // the KV head, and the first of the block's query heads
    int heads;                // query heads in the block (≤ G)
    uint32_t row;             // the sequence's query row
    const uint32_t *table;    // its block table
    uint32_t part_lo;         // the partition's first position
    uint32_t lo, hi;          // the keys the query sees in it, [lo, hi) (lo ≥ hi: none)
    uint32_t n;               // keys [0, n) relative to part_lo may be live
    uint32_t newest;          // the sequence's newest key relative to part_lo (≥ n: not in the partition)
};

// A short context (PART < ctx <= SHORT_CTX) is cut finer, SHORT_PART keys: a single sequence of a
// few hundred keys then spreads over many blocks of few keys instead of a few blocks of many
// (docs/perf.md). The size depends on the sequence's own length alone, never on the batch, so its
// result does not either; the grid holds enough partitions for both sizes (`partitions` in
// src/ops/cuda.rs) and those past a context stay empty.
//
// `decodes` holds DECODE_ENTRY words per decoding sequence: the sequence, its context length and its
// query row, so that a block finds its keys in two dependent loads (entry, then block table) rather
// than three (docs/perf.md).
#define DECODE_ENTRY 3
template <int G>
__device__ __forceinline__ DecodeBlock decode_block(const uint32_t *__restrict__ block_tables,
                                                   const uint32_t *__restrict__ decodes, const AttnParams &p) {
    DecodeBlock b;
    const uint32_t *entry = decodes + DECODE_ENTRY * blockIdx.x;
    const uint32_t seq = entry[0], ctx = entry[1];
    const uint32_t group = p.num_heads / p.num_kv_heads;
    const uint32_t hchunks = (group + G - 1) / G;
    b.kv_head = blockIdx.y / hchunks;
    const uint32_t hc = blockIdx.y % hchunks;
    b.head0 = b.kv_head * group + hc * G;
    b.heads = (int)min((uint32_t)G, group - hc * G);
    b.row = entry[2];
    const uint32_t pos = ctx - 1;
    b.table = block_tables + (size_t)seq * p.max_blocks;
    const uint32_t win_lo = (p.window == 0 || pos + 1 < p.window) ? 0 : pos + 1 - p.window;
    const uint32_t part_keys = ctx > PART && ctx <= SHORT_CTX ? SHORT_PART : PART;
    b.part_lo = blockIdx.z * part_keys;
    b.lo = max(win_lo, b.part_lo);
    b.hi = min(ctx, b.part_lo + part_keys);
    b.n = b.lo < b.hi ? b.hi - b.part_lo : 0;
    b.newest = pos - b.part_lo;  // wraps past n when the partition starts after it
    return b;
}
