// paged_attention: every sequence's queries attend over its own cache blocks (contract, layouts and
// positions: kernels/README.md). Three kernels, all f32 arithmetic over f16/bf16 storage:
//
// - decode (q_len = 1): one simdgroup per (sequence, KV head, partition of PARTITION_SIZE positions).
//   All query heads of the GQA group (up to MAX_GROUP per threadgroup) are served from one read of
//   each key and value; online softmax per head; the partition's unnormalised output, max and sum go
//   to scratch buffers.
// - reduce: one simdgroup per (sequence, query head) merges the partitions in order. Partitions are
//   fixed spans of positions, so a sequence's arithmetic never depends on what else is in the batch.
// - prefill (q_len > 1: chunked prefill, speculative verification): a threadgroup of simdgroups takes
//   a tile of 8 * NSG query rows (a row is one (query, head) pair of the GQA group) against one cache
//   block at a time; Q·Kᵀ and P·V are simdgroup_matrix 8x8 products; online softmax per row.
//
// Each kernel skips the sequences that are the other's (decode: q_len != 1; prefill: q_len == 1), so
// the host launches both over the whole batch of a mixed step.

#include <metal_stdlib>
using namespace metal;

constant constexpr uint BLOCK_SIZE = 16;      // tokens per cache block
constant constexpr uint PARTITION_SIZE = 512; // decode: positions per partition (a multiple of BLOCK_SIZE)
constant constexpr uint SIMD_WIDTH = 32;
constant constexpr uint MAX_GROUP = 8;        // decode: query heads per threadgroup (larger groups split)
constant constexpr float MASKED = -1e30f;     // a finite "minus infinity": fast math may drop infinities

/// One call's shapes (the host's `AttentionParams`, same field order).
struct AttentionParams {
    uint num_heads;
    uint num_kv_heads;
    uint max_blocks;      // columns of block_tables
    uint window;          // keys a query sees, at most (0: all)
    uint max_partitions;  // decode: partitions per (sequence, head) in the scratch buffers
    float scale;          // multiplier of q·k
};

/// Simdgroups per prefill threadgroup: as many as threadgroup memory (32 KiB) holds for this head size.
template <uint D> constexpr uint prefill_simdgroups() { return D >= 256 ? 1 : 4; }

/// Element offset of (cache slot, KV head) in a `[num_blocks, BLOCK_SIZE, num_kv_heads, D]` cache.
inline ulong cache_offset(uint block, uint slot_in_block, uint kv_head, uint num_kv_heads, uint d) {
    return ((ulong)(block * BLOCK_SIZE + slot_in_block) * num_kv_heads + kv_head) * d;
}

/// First position a query at `pos` sees.
inline uint first_visible(uint pos, uint window) {
    return (window == 0 || pos + 1 <= window) ? 0 : pos + 1 - window;
}

template <typename T, uint D>
kernel void paged_attention_decode(
    device const T* q [[buffer(0)]],
    device const T* k_cache [[buffer(1)]],
    device const T* v_cache [[buffer(2)]],
    device const uint* block_tables [[buffer(3)]],
    device const uint* cu_query_lens [[buffer(4)]],
    device const uint* context_lens [[buffer(5)]],
    device float* part_acc [[buffer(6)]],
    device float* part_max [[buffer(7)]],
    device float* part_sum [[buffer(8)]],
    constant AttentionParams& p [[buffer(9)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint lane [[thread_index_in_simdgroup]])
{
    constexpr uint HALF = D / 2;                // key elements each lane dots: lane = (key, half)
    constexpr uint PER_LANE = D / SIMD_WIDTH;   // output elements each lane accumulates
    threadgroup float4 q_tg[MAX_GROUP][D / 4];     // the group's scaled queries
    threadgroup float partial_tg[MAX_GROUP][SIMD_WIDTH]; // per head: each lane's half-dot of one key
    const uint group = p.num_heads / p.num_kv_heads;
    const uint chunks = (group + MAX_GROUP - 1) / MAX_GROUP;
    const uint kv_head = tg.x / chunks;
    const uint head0 = (tg.x % chunks) * MAX_GROUP;
    const uint heads = min(MAX_GROUP, group - head0);
    const uint seq = tg.y;
    const uint part = tg.z;
    const uint row = cu_query_lens[seq];
    const uint ctx = context_lens[seq];
    if (cu_query_lens[seq + 1] - row != 1 || part * PARTITION_SIZE >= ctx) {
        return;  // a prefill sequence, or a partition past this sequence's end
    }
    const uint start = max(first_visible(ctx - 1, p.window), part * PARTITION_SIZE);
    const uint end = min(ctx, (part + 1) * PARTITION_SIZE);
    device const uint* table = block_tables + (ulong)seq * p.max_blocks;

    for (uint i = lane; i < heads * (D / 4); i += SIMD_WIDTH) {
        const uint h = i / (D / 4), c = i % (D / 4);
        device const T* qh = q + ((ulong)row * p.num_heads + kv_head * group + head0 + h) * D;
        q_tg[h][c] = float4(*(device const vec<T, 4>*)(qh + 4 * c)) * p.scale;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    float m[MAX_GROUP], l[MAX_GROUP], acc[MAX_GROUP][PER_LANE];
    for (uint h = 0; h < MAX_GROUP; ++h) {
        m[h] = MASKED;
        l[h] = 0.0f;
        for (uint i = 0; i < PER_LANE; ++i) {
            acc[h][i] = 0.0f;
        }
    }
    const uint key = lane % BLOCK_SIZE, half_index = lane / BLOCK_SIZE;
    for (uint b = start / BLOCK_SIZE; b * BLOCK_SIZE < end; ++b) {
        const uint block = table[b];
        // Scores: lane (key, half) dots its half of one key with every head's query.
        device const T* k = k_cache + cache_offset(block, key, kv_head, p.num_kv_heads, D) + half_index * HALF;
        float s[MAX_GROUP] = {};
        for (uint i = 0; i < HALF / 4; ++i) {
            const float4 k4 = float4(*(device const vec<T, 4>*)(k + 4 * i));
            for (uint h = 0; h < heads; ++h) {
                s[h] += dot(q_tg[h][half_index * (HALF / 4) + i], k4);
            }
        }
        for (uint h = 0; h < heads; ++h) {
            partial_tg[h][lane] = s[h];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        // Every lane keeps the (identical) softmax state of every head; only visible keys count.
        const uint j0 = max(start, b * BLOCK_SIZE) - b * BLOCK_SIZE;
        const uint j1 = min(end, (b + 1) * BLOCK_SIZE) - b * BLOCK_SIZE;
        float m_new[MAX_GROUP];
        for (uint h = 0; h < heads; ++h) {
            float block_max = MASKED;
            for (uint j = j0; j < j1; ++j) {
                block_max = max(block_max, partial_tg[h][j] + partial_tg[h][j + BLOCK_SIZE]);
            }
            m_new[h] = max(m[h], block_max);
            const float alpha = exp(m[h] - m_new[h]);
            l[h] *= alpha;
            for (uint i = 0; i < PER_LANE; ++i) {
                acc[h][i] *= alpha;
            }
            m[h] = m_new[h];
        }
        for (uint j = j0; j < j1; ++j) {
            device const T* v = v_cache + cache_offset(block, j, kv_head, p.num_kv_heads, D);
            float vj[PER_LANE];
            for (uint i = 0; i < PER_LANE; ++i) {
                vj[i] = float(v[lane + i * SIMD_WIDTH]);
            }
            for (uint h = 0; h < heads; ++h) {
                const float w = exp(partial_tg[h][j] + partial_tg[h][j + BLOCK_SIZE] - m[h]);
                l[h] += w;
                for (uint i = 0; i < PER_LANE; ++i) {
                    acc[h][i] += w * vj[i];
                }
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    for (uint h = 0; h < heads; ++h) {
        const ulong at = ((ulong)seq * p.num_heads + kv_head * group + head0 + h) * p.max_partitions + part;
        for (uint i = 0; i < PER_LANE; ++i) {
            part_acc[at * D + lane + i * SIMD_WIDTH] = acc[h][i];
        }
        if (lane == 0) {
            part_max[at] = m[h];
            part_sum[at] = l[h];
        }
    }
}

template <typename T, uint D>
kernel void paged_attention_reduce(
    device const float* part_acc [[buffer(0)]],
    device const float* part_max [[buffer(1)]],
    device const float* part_sum [[buffer(2)]],
    device const uint* cu_query_lens [[buffer(3)]],
    device const uint* context_lens [[buffer(4)]],
    device T* out [[buffer(5)]],
    constant AttentionParams& p [[buffer(6)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint lane [[thread_index_in_simdgroup]])
{
    const uint head = tg.x, seq = tg.y;
    const uint row = cu_query_lens[seq];
    if (cu_query_lens[seq + 1] - row != 1) {
        return;
    }
    const uint parts = (context_lens[seq] + PARTITION_SIZE - 1) / PARTITION_SIZE;
    const ulong base = ((ulong)seq * p.num_heads + head) * p.max_partitions;
    float m = MASKED;
    for (uint i = lane; i < parts; i += SIMD_WIDTH) {
        m = max(m, part_max[base + i]);
    }
    m = simd_max(m);
    float l = 0.0f;
    for (uint i = lane; i < parts; i += SIMD_WIDTH) {
        l += exp(part_max[base + i] - m) * part_sum[base + i];
    }
    l = simd_sum(l);
    // Each lane merges its output elements over the partitions in order.
    for (uint d = lane; d < D; d += SIMD_WIDTH) {
        float o = 0.0f;
        for (uint i = 0; i < parts; ++i) {
            o += exp(part_max[base + i] - m) * part_acc[(base + i) * D + d];
        }
        out[((ulong)row * p.num_heads + head) * D + d] = T(o / l);
    }
}

template <typename T, uint D>
kernel void paged_attention_prefill(
    device const T* q [[buffer(0)]],
    device const T* k_cache [[buffer(1)]],
    device const T* v_cache [[buffer(2)]],
    device const uint* block_tables [[buffer(3)]],
    device const uint* cu_query_lens [[buffer(4)]],
    device const uint* context_lens [[buffer(5)]],
    device T* out [[buffer(6)]],
    constant AttentionParams& p [[buffer(7)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    constexpr uint NSG = prefill_simdgroups<D>();
    constexpr uint ROWS = 8 * NSG;
    constexpr uint THREADS = SIMD_WIDTH * NSG;
    threadgroup float q_tg[ROWS * D];        // this tile's scaled queries; later its outputs
    threadgroup float kv_tg[BLOCK_SIZE * D]; // one block of keys, then of values
    threadgroup float s_tg[NSG * 8 * BLOCK_SIZE]; // per simdgroup: 8 rows x 16 keys of scores, then P
    threadgroup float a_tg[NSG * 64];        // per simdgroup: diag(alpha), the rescale of O
    threadgroup float l_tg[ROWS];
    const uint kv_head = tg.x, seq = tg.y, tile = tg.z;
    const uint row0 = cu_query_lens[seq];
    const uint q_len = cu_query_lens[seq + 1] - row0;
    const uint group = p.num_heads / p.num_kv_heads;
    const uint rows = q_len * group;
    if (q_len == 1 || tile * ROWS >= rows) {
        return;  // a decode sequence, or a tile past this sequence's rows
    }
    const uint ctx = context_lens[seq];
    const uint pos0 = ctx - q_len;  // position of query 0
    device const uint* table = block_tables + (ulong)seq * p.max_blocks;

    // Row f of the sequence is (query f / group, head f % group); padding rows repeat the last row.
    for (uint i = tid; i < ROWS * D; i += THREADS) {
        const uint f = min(tile * ROWS + i / D, rows - 1);
        const ulong at = ((ulong)(row0 + f / group) * p.num_heads + kv_head * group + f % group) * D;
        q_tg[i] = float(q[at + i % D]) * p.scale;
    }
    for (uint i = tid; i < NSG * 64; i += THREADS) {
        a_tg[i] = 0.0f;
    }
    // Keys the tile needs: from the first row's window start to the last row's position.
    const uint first = first_visible(pos0 + (tile * ROWS) / group, p.window);
    const uint last = pos0 + (min(tile * ROWS + ROWS, rows) - 1) / group;
    // This lane's softmax row (lane / 4) and its four keys of each block.
    const uint r = lane / 4, c0 = (lane % 4) * 4;
    const uint my_pos = pos0 + min(tile * ROWS + sg * 8 + r, rows - 1) / group;
    const uint my_first = first_visible(my_pos, p.window);
    float m = MASKED, l = 0.0f;
    simdgroup_float8x8 o[D / 8];
    for (uint c = 0; c < D / 8; ++c) {
        o[c] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    for (uint b = first / BLOCK_SIZE; b * BLOCK_SIZE <= last; ++b) {
        const uint block = table[b];
        for (uint i = tid; i < BLOCK_SIZE * D; i += THREADS) {
            const uint j = i / D, pos = b * BLOCK_SIZE + j;
            const bool needed = pos >= first && pos <= last;
            kv_tg[i] = needed ? float(k_cache[cache_offset(block, j, kv_head, p.num_kv_heads, D) + i % D]) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        // S (8 rows x 16 keys) = Q · Kᵀ, one 8x8 slice of the head dimension at a time.
        simdgroup_float8x8 s0 = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        simdgroup_float8x8 s1 = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        for (uint c = 0; c < D / 8; ++c) {
            simdgroup_float8x8 qm, k0, k1;
            simdgroup_load(qm, q_tg + sg * 8 * D + c * 8, D);
            simdgroup_load(k0, kv_tg + c * 8, D, ulong2(0, 0), true);
            simdgroup_load(k1, kv_tg + 8 * D + c * 8, D, ulong2(0, 0), true);
            simdgroup_multiply_accumulate(s0, qm, k0, s0);
            simdgroup_multiply_accumulate(s1, qm, k1, s1);
        }
        simdgroup_store(s0, s_tg + sg * 128, BLOCK_SIZE);
        simdgroup_store(s1, s_tg + sg * 128 + 8, BLOCK_SIZE);
        simdgroup_barrier(mem_flags::mem_threadgroup);

        // Online softmax: four lanes per row, four keys each; masked keys weigh exactly 0.
        float s[4];
        float block_max = MASKED;
        for (uint j = 0; j < 4; ++j) {
            const uint pos = b * BLOCK_SIZE + c0 + j;
            const bool visible = pos >= my_first && pos <= my_pos;
            s[j] = visible ? s_tg[sg * 128 + r * BLOCK_SIZE + c0 + j] : MASKED;
            block_max = max(block_max, s[j]);
        }
        block_max = max(block_max, simd_shuffle_xor(block_max, 1));
        block_max = max(block_max, simd_shuffle_xor(block_max, 2));
        const float m_new = max(m, block_max);
        const float alpha = exp(m - m_new);
        float block_sum = 0.0f;
        for (uint j = 0; j < 4; ++j) {
            const float w = s[j] == MASKED ? 0.0f : exp(s[j] - m_new);
            s_tg[sg * 128 + r * BLOCK_SIZE + c0 + j] = w;
            block_sum += w;
        }
        block_sum += simd_shuffle_xor(block_sum, 1);
        block_sum += simd_shuffle_xor(block_sum, 2);
        l = l * alpha + block_sum;
        m = m_new;
        if (lane % 4 == 0) {
            a_tg[sg * 64 + r * 9] = alpha;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);  // every simdgroup is done with the keys

        for (uint i = tid; i < BLOCK_SIZE * D; i += THREADS) {
            const uint j = i / D, pos = b * BLOCK_SIZE + j;
            const bool needed = pos >= first && pos <= last;
            kv_tg[i] = needed ? float(v_cache[cache_offset(block, j, kv_head, p.num_kv_heads, D) + i % D]) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        // O = diag(alpha) · O + P · V.
        simdgroup_float8x8 rescale, p0, p1;
        simdgroup_load(rescale, a_tg + sg * 64, 8);
        simdgroup_load(p0, s_tg + sg * 128, BLOCK_SIZE);
        simdgroup_load(p1, s_tg + sg * 128 + 8, BLOCK_SIZE);
        for (uint c = 0; c < D / 8; ++c) {
            simdgroup_float8x8 v0, v1;
            simdgroup_load(v0, kv_tg + c * 8, D);
            simdgroup_load(v1, kv_tg + 8 * D + c * 8, D);
            simdgroup_multiply(o[c], rescale, o[c]);
            simdgroup_multiply_accumulate(o[c], p0, v0, o[c]);
            simdgroup_multiply_accumulate(o[c], p1, v1, o[c]);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);  // before the next block overwrites the tiles
    }

    // Normalise each row by its sum and write the rows that exist.
    for (uint c = 0; c < D / 8; ++c) {
        simdgroup_store(o[c], q_tg + sg * 8 * D + c * 8, D);
    }
    if (lane % 4 == 0) {
        l_tg[sg * 8 + r] = l;
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
    for (uint i = lane; i < 8 * D; i += SIMD_WIDTH) {
        const uint f = tile * ROWS + sg * 8 + i / D;
        if (f < rows) {
            const ulong at = ((ulong)(row0 + f / group) * p.num_heads + kv_head * group + f % group) * D;
            out[at + i % D] = T(q_tg[sg * 8 * D + i] / l_tg[sg * 8 + i / D]);
        }
    }
}

// The host looks kernels up by these names. (C++ has no [[host_name]]: the emulation build
// instantiates the same templates without it.)
#if defined(__METAL_VERSION__)
#define instantiate_kernel(name, ...) template [[host_name(name)]] [[kernel]] decltype(__VA_ARGS__) __VA_ARGS__;
#else
#define instantiate_kernel(name, ...) template decltype(__VA_ARGS__) __VA_ARGS__;
#endif

#define instantiate_attention(type, d)                                                   \
    instantiate_kernel("paged_attention_decode_" #type "_" #d, paged_attention_decode<type, d>)   \
    instantiate_kernel("paged_attention_reduce_" #type "_" #d, paged_attention_reduce<type, d>)   \
    instantiate_kernel("paged_attention_prefill_" #type "_" #d, paged_attention_prefill<type, d>)

instantiate_attention(half, 64)
instantiate_attention(half, 128)
instantiate_attention(half, 256)
instantiate_attention(bfloat, 64)
instantiate_attention(bfloat, 128)
instantiate_attention(bfloat, 256)
