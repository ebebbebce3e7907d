// Paged attention over the block tables, for decode (one query per sequence), chunked prefill and
// speculative verification (several, causal) in one kernel, plus the reduction of context splits.
//
// One thread block (128 threads) = one work item (up to QT query tokens of one sequence) × one KV head
// (× one chunk of its query heads when a GQA group is wider than a tile) × one context partition of
// PART keys. Its query rows (token, head) sit in shared memory; the keys and values are walked in
// tiles of KT positions, each tile loaded once into shared memory for every row of the block, with
// an online softmax per row. Partitions sit at absolute positions (multiples of PART) and tiles at
// multiples of KT, so a row's arithmetic never depends on what else is in the batch: a sequence
// gets the same result alone or batched, chunked or whole. With more than one partition, each writes
// its unnormalised sum, max and denominator and `paged_attention_reduce` combines them in order.
//
// Structure kept portable to Metal: shared-memory tiles, warp (simdgroup) reductions, no tensor cores.
#include "common.cuh"
#include <float.h>

#define NT 128
#define WARPS (NT / 32)
#define PART 256

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

// Elements of type T packed in one 32-bit word of a shared tile.
template <typename T> struct Words;
template <> struct Words<float> {
    static constexpr int PER = 1;
    __device__ static void unpack(uint32_t w, float *out) { out[0] = __uint_as_float(w); }
};
template <> struct Words<__half> {
    static constexpr int PER = 2;
    __device__ static void unpack(uint32_t w, float *out) {
        __half2 h = *reinterpret_cast<__half2 *>(&w);
        float2 f = __half22float2(h);
        out[0] = f.x;
        out[1] = f.y;
    }
};
template <> struct Words<__nv_bfloat16> {
    static constexpr int PER = 2;
    __device__ static void unpack(uint32_t w, float *out) {
        __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162 *>(&w);
        float2 f = __bfloat1622float2(h);
        out[0] = f.x;
        out[1] = f.y;
    }
};

// Rows and keys per block are capped at 64: the softmax pass covers a tile with one warp's two
// lanes per key, and small heads (16, 32) would otherwise overflow the 48 KB of static shared memory.
template <typename T, int D> struct Tile {
    static constexpr int R = 2048 / D < 64 ? 2048 / D : 64;        // query rows per block
    static constexpr int KT_FULL = (sizeof(T) == 4 ? 2048 : 4096) / D;
    static constexpr int KT = KT_FULL < 64 ? KT_FULL : 64;          // keys per tile
    static constexpr int W = D * (int)sizeof(T) / 4;               // 32-bit words per key
    static constexpr int WS = W + 1;                                // padded row: no bank conflicts
    static constexpr int VEC = D * (int)sizeof(T) / 16;             // 16-byte loads per key
    static constexpr int DC = D < NT ? D : NT;                      // output columns per pass
    static constexpr int DPT = D / DC;                              // columns per thread
    static constexpr int RG = NT / DC;                              // row groups in the PV pass
    static constexpr int RPT = R / RG;                              // rows per thread in the PV pass
};

// Loads keys [tile_start, tile_start + KT) of one KV head into a padded shared tile; positions
// outside [lo, hi) are zeros (they may belong to freed blocks or another partition).
template <typename T, int D>
__device__ void load_tile(uint32_t *tile, const T *__restrict__ cache, const uint32_t *__restrict__ table,
                          uint32_t tile_start, uint32_t lo, uint32_t hi, const AttnParams &p, uint32_t kv_head) {
    using C = Tile<T, D>;
    for (int i = threadIdx.x; i < C::KT * C::VEC; i += NT) {
        const int j = i / C::VEC, v = i % C::VEC;
        const uint32_t pos = tile_start + j;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (pos >= lo && pos < hi) {
            const uint32_t slot = table[pos / p.block_size] * p.block_size + pos % p.block_size;
            const uint4 *src = reinterpret_cast<const uint4 *>(cache + ((size_t)slot * p.num_kv_heads + kv_head) * D);
            val = src[v];
        }
        uint32_t *dst = tile + j * C::WS + v * 4;
        dst[0] = val.x;
        dst[1] = val.y;
        dst[2] = val.z;
        dst[3] = val.w;
    }
}

template <typename T, int D>
__device__ void paged_attention(const float *__restrict__ q, const T *__restrict__ k_cache,
                                const T *__restrict__ v_cache, const uint32_t *__restrict__ block_tables,
                                const uint32_t *__restrict__ cu_query_lens, const uint32_t *__restrict__ context_lens,
                                const uint32_t *__restrict__ work, float *__restrict__ out,
                                float *__restrict__ part_acc, float *__restrict__ part_ml, AttnParams p) {
    using C = Tile<T, D>;
    __shared__ float q_s[C::R][D];
    __shared__ uint32_t k_s[C::KT * C::WS];
    __shared__ uint32_t v_s[C::KT * C::WS];
    __shared__ float s_s[C::R][C::KT];
    __shared__ float m_s[C::R], l_s[C::R], alpha_s[C::R];
    __shared__ uint32_t first_s[C::R], last_s[C::R];

    const uint32_t seq = work[3 * blockIdx.x], row0 = work[3 * blockIdx.x + 1], n_tok = work[3 * blockIdx.x + 2];
    const uint32_t kv_head = blockIdx.y / p.num_chunks, chunk = blockIdx.y % p.num_chunks;
    const uint32_t group = p.num_heads / p.num_kv_heads;
    const uint32_t gc = p.heads_per_chunk;
    const uint32_t head0 = kv_head * group + chunk * gc;
    const uint32_t heads_here = min(gc, group - chunk * gc);
    const uint32_t ctx = context_lens[seq];
    const uint32_t q_start = cu_query_lens[seq];
    const uint32_t q_len = cu_query_lens[seq + 1] - q_start;
    const uint32_t *table = block_tables + (size_t)seq * p.max_blocks;
    const int rows = (int)(n_tok * gc);

    // Positions of the block's first and last query; its keys lie in [lo, hi).
    const uint32_t pos_first = ctx - q_len + (row0 - q_start);
    const uint32_t pos_last = pos_first + n_tok - 1;
    const uint32_t win_lo = (p.window == 0 || pos_first + 1 < p.window) ? 0 : pos_first + 1 - p.window;
    const uint32_t part_lo = blockIdx.z * PART, part_hi = part_lo + PART;
    const uint32_t lo = max(win_lo, part_lo), hi = min(pos_last + 1, part_hi);

    for (int i = threadIdx.x; i < C::R * D; i += NT) {
        const int r = i / D, d = i % D;
        const uint32_t tok = r / gc, hc = r % gc;
        float val = 0.f;
        if (r < rows && hc < heads_here) {
            val = q[((size_t)(row0 + tok) * p.num_heads + head0 + hc) * D + d] * p.scale;
        }
        q_s[r][d] = val;
    }
    for (int r = threadIdx.x; r < C::R; r += NT) {
        const uint32_t pos = pos_first + r / gc;
        m_s[r] = -INFINITY;
        l_s[r] = 0.f;
        first_s[r] = (p.window == 0 || pos + 1 < p.window) ? 0 : pos + 1 - p.window;
        last_s[r] = (r < rows && r % gc < heads_here) ? pos : 0;
        if (!(r < rows && r % gc < heads_here)) first_s[r] = 1;  // empty range: first > last
    }
    // The row state must be visible to every warp even when the tile loop below does not run (an
    // empty partition still writes its rows' max and denominator).
    __syncthreads();
    float acc[C::RPT][C::DPT];
#pragma unroll
    for (int a = 0; a < C::RPT; a++)
#pragma unroll
        for (int b = 0; b < C::DPT; b++) acc[a][b] = 0.f;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int pv_col = threadIdx.x % C::DC, pv_row = threadIdx.x / C::DC;
    for (uint32_t tile_start = lo / C::KT * C::KT; lo < hi && tile_start < hi; tile_start += C::KT) {
        load_tile<T, D>(k_s, k_cache, table, tile_start, lo, hi, p, kv_head);
        load_tile<T, D>(v_s, v_cache, table, tile_start, lo, hi, p, kv_head);
        __syncthreads();
        // Scores: thread (key j, row group) dots its key with its rows' queries.
        {
            const int j = threadIdx.x % C::KT;
            const uint32_t pos = tile_start + j;
            const uint32_t *key = k_s + j * C::WS;
            for (int r = threadIdx.x / C::KT; r < rows; r += NT / C::KT) {
                float s = -INFINITY;
                if (pos >= lo && pos < hi && pos >= first_s[r] && pos <= last_s[r]) {
                    float dot = 0.f;
#pragma unroll 8
                    for (int w = 0; w < C::W; w++) {
                        float kv[Words<T>::PER];
                        Words<T>::unpack(key[w], kv);
#pragma unroll
                        for (int e = 0; e < Words<T>::PER; e++) dot += q_s[r][w * Words<T>::PER + e] * kv[e];
                    }
                    s = dot;
                }
                s_s[r][j] = s;
            }
        }
        __syncthreads();
        // Online softmax: one warp per row.
        for (int r = warp; r < rows; r += WARPS) {
            float v0 = lane < C::KT ? s_s[r][lane] : -INFINITY;
            float v1 = lane + 32 < C::KT ? s_s[r][lane + 32] : -INFINITY;
            float mx = fmaxf(v0, v1);
            for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
            const float m_old = m_s[r];
            const float m_new = fmaxf(m_old, mx);
            float alpha = 1.f, e0 = 0.f, e1 = 0.f;
            if (m_new != -INFINITY) {
                alpha = expf(m_old - m_new);
                e0 = expf(v0 - m_new);
                e1 = expf(v1 - m_new);
            }
            float sum = e0 + e1;
            for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
            if (lane < C::KT) s_s[r][lane] = e0;
            if (lane + 32 < C::KT) s_s[r][lane + 32] = e1;
            if (lane == 0) {
                m_s[r] = m_new;
                l_s[r] = l_s[r] * alpha + sum;
                alpha_s[r] = alpha;
            }
        }
        __syncthreads();
        // Weighted values: thread owns columns pv_col + i*DC of rows pv_row + k*RG.
#pragma unroll
        for (int k = 0; k < C::RPT; k++) {
            const int r = pv_row + k * C::RG;
            if (r >= rows) break;
            const float alpha = alpha_s[r];
#pragma unroll
            for (int i = 0; i < C::DPT; i++) {
                const int d = pv_col + i * C::DC;
                float a = acc[k][i] * alpha;
                for (int j = 0; j < C::KT; j++) {
                    float vv[Words<T>::PER];
                    Words<T>::unpack(v_s[j * C::WS + d / Words<T>::PER], vv);
                    a += s_s[r][j] * vv[d % Words<T>::PER];
                }
                acc[k][i] = a;
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int k = 0; k < C::RPT; k++) {
        const int r = pv_row + k * C::RG;
        if (r >= rows) break;
        const uint32_t tok = r / gc, hc = r % gc;
        if (hc >= heads_here) continue;
        const size_t o = ((size_t)(row0 + tok) * p.num_heads + head0 + hc);
        if (p.num_partitions == 1) {
            const float inv = 1.f / l_s[r];
#pragma unroll
            for (int i = 0; i < C::DPT; i++) out[o * D + pv_col + i * C::DC] = acc[k][i] * inv;
        } else {
            const size_t po = (size_t)blockIdx.z * p.num_tokens * p.num_heads + o;
#pragma unroll
            for (int i = 0; i < C::DPT; i++) part_acc[po * D + pv_col + i * C::DC] = acc[k][i];
            if (pv_col == 0) {
                part_ml[2 * po] = m_s[r];
                part_ml[2 * po + 1] = l_s[r];
            }
        }
    }
}

// Combines the partitions of row (token blockIdx.x, head blockIdx.y) in partition order.
extern "C" __global__ void paged_attention_reduce(const float *__restrict__ part_acc, const float *__restrict__ part_ml,
                                                  float *__restrict__ out, uint32_t num_tokens, uint32_t num_heads,
                                                  uint32_t head_dim, uint32_t num_partitions) {
    const size_t o = (size_t)blockIdx.x * num_heads + blockIdx.y;
    const size_t stride = (size_t)num_tokens * num_heads;
    float m = -INFINITY;
    for (uint32_t z = 0; z < num_partitions; z++) m = fmaxf(m, part_ml[2 * (z * stride + o)]);
    for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float num = 0.f, den = 0.f;
        for (uint32_t z = 0; z < num_partitions; z++) {
            const float mz = part_ml[2 * (z * stride + o)];
            if (mz == -INFINITY) continue;
            const float e = expf(mz - m);
            num += e * part_acc[(z * stride + o) * head_dim + d];
            den += e * part_ml[2 * (z * stride + o) + 1];
        }
        out[o * head_dim + d] = num / den;
    }
}

#define PAGED_ATTENTION(NAME, T, D)                                                                    \
    extern "C" __global__ void __launch_bounds__(NT) NAME(                                              \
        const float *q, const T *k_cache, const T *v_cache, const uint32_t *block_tables,              \
        const uint32_t *cu_query_lens, const uint32_t *context_lens, const uint32_t *work, float *out,  \
        float *part_acc, float *part_ml, AttnParams p) {                                               \
        paged_attention<T, D>(q, k_cache, v_cache, block_tables, cu_query_lens, context_lens, work, out, \
                              part_acc, part_ml, p);                                                   \
    }

PAGED_ATTENTION(paged_attention_f32_d16, float, 16)
PAGED_ATTENTION(paged_attention_f32_d32, float, 32)
PAGED_ATTENTION(paged_attention_f32_d64, float, 64)
PAGED_ATTENTION(paged_attention_f32_d128, float, 128)
PAGED_ATTENTION(paged_attention_f32_d256, float, 256)
PAGED_ATTENTION(paged_attention_f16_d16, __half, 16)
PAGED_ATTENTION(paged_attention_f16_d32, __half, 32)
PAGED_ATTENTION(paged_attention_f16_d64, __half, 64)
PAGED_ATTENTION(paged_attention_f16_d128, __half, 128)
PAGED_ATTENTION(paged_attention_f16_d256, __half, 256)
PAGED_ATTENTION(paged_attention_bf16_d16, __nv_bfloat16, 16)
PAGED_ATTENTION(paged_attention_bf16_d32, __nv_bfloat16, 32)
PAGED_ATTENTION(paged_attention_bf16_d64, __nv_bfloat16, 64)
PAGED_ATTENTION(paged_attention_bf16_d128, __nv_bfloat16, 128)
PAGED_ATTENTION(paged_attention_bf16_d256, __nv_bfloat16, 256)
