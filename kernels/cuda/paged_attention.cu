// Paged attention over the block tables: `paged_attention` for chunked prefill and speculative
// verification (several queries per sequence, causal), `paged_decode` for sequences with one query
// (below), and the reduction of context splits that both feed.
//
// paged_attention: one thread block (128 threads) = one work item (up to QT query tokens of one sequence) × one KV head
// (× one chunk of its query heads when a GQA group is wider than a tile) × one context partition of
// PART keys. Its query rows (token, head) sit in shared memory; the keys and values are walked in
// tiles of KT positions, each tile loaded once into shared memory for every row of the block, with
// an online softmax per row. Partitions sit at absolute positions (multiples of PART) and tiles at
// multiples of KT, so a row's arithmetic never depends on what else is in the batch: a sequence
// gets the same result alone or batched, chunked or whole. With more than one partition, each writes
// its unnormalised sum, max and denominator and `paged_attention_reduce` combines them in order.
//
// This kernel runs on CUDA cores (shared-memory tiles, warp reductions: the structure of the Metal
// version) and takes f32 caches and head sizes 16/32; f16 and bf16 caches at head sizes 64/128/256
// take its tensor-core twin, `paged_attention_mma` (paged_attention_mma.cu), with the same work
// items and partitions.
#include "attention.cuh"
#include <float.h>

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

    const WorkItem w = work_item(block_tables, cu_query_lens, context_lens, work, p, blockIdx.z);
    const uint32_t row0 = w.row0, kv_head = w.kv_head, gc = p.heads_per_chunk, head0 = w.head0;
    const uint32_t heads_here = w.heads_here, lo = w.lo, hi = w.hi;
    const uint32_t *table = w.table;
    const int rows = w.rows;

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
        m_s[r] = -INFINITY;
        l_s[r] = 0.f;
        row_range(w, p, r, first_s[r], last_s[r]);
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

// Decode (one query per sequence): one block = (sequence, KV head, up to G query heads of its group,
// partition of PART keys, or SHORT_PART for a context of PART to SHORT_CTX), flash-decoding style.
// Bandwidth is the limit, so every cache load is 16 bytes: LPK lanes hold one key (each lane CH
// 16-byte pieces of it), a warp takes UK × 32 / LPK keys a round and the block's warps stride over
// the partition's keys. Pass 1: each key's dot with the G queries (kept in registers) into shared
// scores; the partition's softmax; pass 2: the probability-weighted values, summed across lanes and
// warps in a fixed order. Keys outside [lo, hi) (window, other partitions, not yet written) are
// never read.
// What sets the speed is the bytes in flight (measured on an H100, docs/perf.md). One long context
// is sequences × KV heads × partitions blocks (1 × 8 × 128 = 1,024 at 32k keys); at most 64
// registers (DEC_MINB) let an SM hold 8 blocks (1,056 on 132 SMs), so 32k keys run in one wave. Loads
// into registers would hold a lane's registers until they land, so each lane copies its own pieces
// of the keys, then of the values, DEC_DEPTH rounds ahead of their use with cp.async into a private
// slice of shared memory (no registers held, no barrier: a lane reads only what it copied itself),
// and the values of the first rounds are on their way while the block takes the softmax. The
// arithmetic is that of the register-loading kernel it replaced, bit for bit; it was 1.03–1.4×
// faster. A block-wide ring (the whole partition requested at once, 3 blocks per SM) was slower.
#define DEC_DEPTH 2 // rounds each lane has in flight
#define UK 2        // keys each lane takes per round
#define DEC_MINB 8  // decode blocks of G = 4 per SM that the registers must allow (8 × 128 threads)

template <typename T, int D> struct Dec {
    static constexpr int E = 16 / (int)sizeof(T);              // elements per 16-byte load
    static constexpr int LPK = D / E < 32 ? D / E : 32;        // lanes per key
    static constexpr int CH = D / (E * LPK);                   // 16-byte pieces per lane
    static constexpr int KPW = 32 / LPK;                       // keys per warp in a round
    static constexpr int STEP = WARPS * KPW * UK;              // keys per block round
    // 16-byte slots of the staging buffer: DEC_DEPTH rounds × UK keys × CH pieces × NT lanes.
    static constexpr int SLOTS = DEC_DEPTH * UK * CH * NT;
};

// A lane's round `s` of its stream: rounds [0, rounds) are keys, [rounds, 2 rounds) values of the
// same positions, base warp × KPW × UK + (s mod rounds) × STEP.
template <typename T, int D> struct LaneStream {
    using C = Dec<T, D>;
    const T *k_cache, *v_cache;
    const uint32_t *slots;
    uint4 *stage;          // this block's staging buffer (C::SLOTS)
    uint32_t n, first, kv_head, num_kv_heads;
    int rounds, warp, kw, sub;

    __device__ __forceinline__ uint32_t key(int s, int u) const {
        return (uint32_t)(warp * C::KPW * UK + (s % rounds) * C::STEP + u * C::KPW + kw);
    }
    __device__ __forceinline__ bool live(uint32_t j) const { return j >= first && j < n; }
    __device__ __forceinline__ uint4 *slot(int s, int u, int c) const {
        return stage + (((s % DEC_DEPTH) * UK + u) * C::CH + c) * NT + threadIdx.x;
    }
    // Starts round s's copies (nothing past the stream's end) and commits them as one group.
    __device__ __forceinline__ void issue(int s) const {
        if (s < 2 * rounds) {
            const T *cache = s < rounds ? k_cache : v_cache;
#pragma unroll
            for (int u = 0; u < UK; u++) {
                const uint32_t j = key(s, u);
                if (!live(j)) continue;
                const T *src = cache + ((size_t)slots[j] * num_kv_heads + kv_head) * D;
#pragma unroll
                for (int c = 0; c < C::CH; c++) copy16_async(slot(s, u, c), src + (c * C::LPK + sub) * C::E, true);
            }
        }
        commit_async();
    }
    // Waits for round s (the oldest of DEC_DEPTH groups in flight) and reads its pieces.
    __device__ __forceinline__ void take(int s, uint4 (&raw)[UK][C::CH]) const {
        wait_async<DEC_DEPTH - 1>();
#pragma unroll
        for (int u = 0; u < UK; u++)
#pragma unroll
            for (int c = 0; c < C::CH; c++) raw[u][c] = *slot(s, u, c);
    }
};

template <typename T, int D, int G>
__device__ void paged_decode(const float *__restrict__ q, const T *__restrict__ k_cache,
                             const T *__restrict__ v_cache, const uint32_t *__restrict__ block_tables,
                             const uint32_t *__restrict__ cu_query_lens, const uint32_t *__restrict__ context_lens,
                             const uint32_t *__restrict__ decodes, float *__restrict__ out,
                             float *__restrict__ part_acc, float *__restrict__ part_ml, AttnParams p) {
    using C = Dec<T, D>;
    // The lanes' staging slots (dynamic, C::SLOTS × 16 bytes); once every round is read, the warps' sums.
    extern __shared__ uint4 stage_s[];
    __shared__ float s_s[G][PART];
    __shared__ float m_s[G], l_s[G];
    __shared__ uint32_t slot_s[PART];

    const DecodeBlock blk = decode_block<G>(block_tables, decodes, p);
    const uint32_t kv_head = blk.kv_head, head0 = blk.head0, row = blk.row, part_lo = blk.part_lo;
    const uint32_t lo = blk.lo, hi = blk.hi, n = blk.n;  // score slots used: [0, n) relative to part_lo
    const uint32_t *table = blk.table;
    const int heads = blk.heads;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int sub = lane % C::LPK, kw = lane / C::LPK;  // lane within its key, key within the warp
    // The partition's cache slots, looked up once: each copy then waits on no block-table read.
    for (uint32_t j = threadIdx.x; j < n; j += NT) {
        const uint32_t kpos = part_lo + j;
        slot_s[j] = table[kpos / p.block_size] * p.block_size + kpos % p.block_size;
    }
    // Only the step's metadata was read so far (uploaded before the step's first kernel): this much
    // overlaps the kernel before, which wrote the queries and the new keys (dependent_launch.cuh).
    follow_previous_kernel();
    __syncthreads();
    const uint32_t warp_base = (uint32_t)(warp * C::KPW * UK);
    const LaneStream<T, D> ls{k_cache, v_cache, slot_s, stage_s, n, lo < hi ? lo - part_lo : 0, kv_head,
                              p.num_kv_heads, n > warp_base ? (int)((n - warp_base + C::STEP - 1) / C::STEP) : 0,
                              warp, kw, sub};
#pragma unroll
    for (int s = 0; s < DEC_DEPTH; s++) ls.issue(s);

    // This lane's dims: piece c covers [(c * LPK + sub) * E, + E).
    float qr[G][C::CH][C::E];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int c = 0; c < C::CH; c++)
#pragma unroll
            for (int e = 0; e < C::E; e++) {
                const int d = (c * C::LPK + sub) * C::E + e;
                qr[g][c][e] = g < heads ? q[((size_t)row * p.num_heads + head0 + g) * D + d] * p.scale : 0.f;
            }

    // Pass 1: scores. Every lane of a warp runs the same rounds (the shuffles need the whole warp).
    for (int s = 0; s < ls.rounds; s++) {
        uint4 raw[UK][C::CH];
        ls.take(s, raw);
#pragma unroll
        for (int u = 0; u < UK; u++) {
            const uint32_t j = ls.key(s, u);
            const bool live = ls.live(j);
            float dot[G];
#pragma unroll
            for (int g = 0; g < G; g++) dot[g] = 0.f;
            if (live) {
#pragma unroll
                for (int c = 0; c < C::CH; c++) {
                    float kf[C::E];
                    unpack16<T>(raw[u][c], kf);
#pragma unroll
                    for (int g = 0; g < G; g++)
#pragma unroll
                        for (int e = 0; e < C::E; e++) dot[g] += qr[g][c][e] * kf[e];
                }
            }
#pragma unroll
            for (int g = 0; g < G; g++) {
#pragma unroll
                for (int o = C::LPK / 2; o > 0; o /= 2) dot[g] += __shfl_xor_sync(0xffffffff, dot[g], o);
            }
            if (sub == 0 && j < n) {
#pragma unroll
                for (int g = 0; g < G; g++) s_s[g][j] = live ? dot[g] : -INFINITY;
            }
        }
        ls.issue(s + DEC_DEPTH);
    }
    __syncthreads();
    // The partition's softmax (the values' first rounds are landing meanwhile): warp w takes heads
    // w, w + WARPS, ...
    for (int g = warp; g < heads; g += WARPS) {
        float mx = -INFINITY;
        for (uint32_t j = lane; j < n; j += 32) mx = fmaxf(mx, s_s[g][j]);
        for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
        float sum = 0.f;
        for (uint32_t j = lane; j < n; j += 32) {
            const float e = mx == -INFINITY ? 0.f : expf(s_s[g][j] - mx);
            s_s[g][j] = e;
            sum += e;
        }
        for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
        if (lane == 0) {
            m_s[g] = mx;
            l_s[g] = sum;
        }
    }
    __syncthreads();
    // Pass 2: weighted values, this lane's dims of its keys.
    float acc[G][C::CH][C::E];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int c = 0; c < C::CH; c++)
#pragma unroll
            for (int e = 0; e < C::E; e++) acc[g][c][e] = 0.f;
    for (int s = ls.rounds; s < 2 * ls.rounds; s++) {
        uint4 raw[UK][C::CH];
        ls.take(s, raw);
#pragma unroll
        for (int u = 0; u < UK; u++) {
            const uint32_t j = ls.key(s, u);
            if (!ls.live(j)) continue;
            float w[G];
#pragma unroll
            for (int g = 0; g < G; g++) w[g] = s_s[g][j];
#pragma unroll
            for (int c = 0; c < C::CH; c++) {
                float vf[C::E];
                unpack16<T>(raw[u][c], vf);
#pragma unroll
                for (int g = 0; g < G; g++)
#pragma unroll
                    for (int e = 0; e < C::E; e++) acc[g][c][e] += w[g] * vf[e];
            }
        }
        ls.issue(s + DEC_DEPTH);
    }
    // Every lane's copies have landed and been read: the staging slots now hold the warps' sums.
    wait_async<0>();
    __syncthreads();
    float(*acc_s)[G][D] = reinterpret_cast<float(*)[G][D]>(stage_s);
    // Sum over the warp's keys (lanes of equal `sub`), then over warps in order.
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int c = 0; c < C::CH; c++)
#pragma unroll
            for (int e = 0; e < C::E; e++) {
                float a = acc[g][c][e];
#pragma unroll
                for (int o = 16; o >= C::LPK; o /= 2) a += __shfl_xor_sync(0xffffffff, a, o);
                if (kw == 0 && g < heads) acc_s[warp][g][(c * C::LPK + sub) * C::E + e] = a;
            }
    __syncthreads();
    for (int i = threadIdx.x; i < heads * D; i += NT) {
        const int g = i / D, d = i % D;
        float a = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) a += acc_s[w][g][d];
        const size_t o = (size_t)row * p.num_heads + head0 + g;
        if (p.num_partitions == 1) {
            out[o * D + d] = a / l_s[g];
        } else {
            const size_t po = (size_t)blockIdx.z * p.num_tokens * p.num_heads + o;
            part_acc[po * D + d] = a;
            if (d == 0) {
                part_ml[2 * po] = m_s[g];
                part_ml[2 * po + 1] = l_s[g];
            }
        }
    }
}

// Combines the partial results of row (token blockIdx.x, head blockIdx.y), z < row_partials[token]:
// out = Σ e^(m_z - M) acc_z / Σ e^(m_z - M) l_z. A decoding row's are its partitions, a chunk row's
// its partitions (CUDA cores) or its blocks' groups of consecutive partitions (tensor cores); a row
// with none was written by its kernel and is skipped. A long context has hundreds of partitions, so no thread walks them all: the
// RED_THREADS threads are RED_THREADS / (D / 4) groups of D / 4 threads, each thread 4 columns (one
// 16-byte load per partition), and group k sums partitions k, k + groups, ... in order before the
// groups' sums are added in group order. A group loads CHUNK partitions at a time, the first chunk
// before the row's maximum M is known, so that up to CHUNK × groups partitions cost one round trip to
// memory (128 at head size 64, 32k keys, at CHUNK = 8). CHUNK is 2 (32 registers, 8 blocks per SM:
// the many rows of a prefill or a large batch), 8 (a few rows of long contexts, too few blocks for
// occupancy to matter) or 32 (226 registers, one block per SM: the rows of one or two sequences,
// whose 128k keys are 512 partitions a row, one round trip instead of four); it changes when loads
// are issued, never the order of the sums. The grouping
// depends on the head size alone, and partitions past a sequence's context add exact zeros, so a
// sequence's result depends neither on the table width nor on the batch. SLICES = 4 splits a row's
// columns over 4 blocks of RED_THREADS / 4 threads (the same groups, a quarter of the columns each,
// every column summed exactly as before): the few rows of one or two sequences then read their
// partitions on 4× as many SMs, 0.2–0.5 µs sooner up to 64 partitions a row, but 0.5–1.8 µs later
// over 128 to 512 (each block also reads every partition's maximum; docs/perf.md).
#define RED_THREADS 256
template <int CHUNK> struct ReduceChunk {
    float m[CHUNK], l[CHUNK];
    float4 acc[CHUNK];

    // Loads partitions z0 + k × groups (k < CHUNK) of row `o`; those past the last are empty.
    __device__ __forceinline__ void load(const float *__restrict__ part_acc, const float *__restrict__ part_ml,
                                         uint32_t z0, uint32_t groups, uint32_t num_partitions, size_t stride,
                                         size_t o, uint32_t head_dim, uint32_t c) {
#pragma unroll
        for (int k = 0; k < CHUNK; k++) {
            const uint32_t z = z0 + k * groups;
            m[k] = -INFINITY;
            l[k] = 0.f;
            acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (z < num_partitions) {
                const size_t po = z * stride + o;
                m[k] = part_ml[2 * po];
                l[k] = part_ml[2 * po + 1];
                acc[k] = reinterpret_cast<const float4 *>(part_acc + po * head_dim)[c];
            }
        }
    }

    // Adds the chunk, in order, to the sums relative to the row's maximum `row_max`.
    __device__ __forceinline__ void add_to(float4 &num, float &den, float row_max) const {
#pragma unroll
        for (int k = 0; k < CHUNK; k++) {
            const float e = m[k] == -INFINITY ? 0.f : expf(m[k] - row_max);
            den += e * l[k];
            num.x += e * acc[k].x;
            num.y += e * acc[k].y;
            num.z += e * acc[k].z;
            num.w += e * acc[k].w;
        }
    }
};

template <int CHUNK, int SLICES>
__device__ void paged_attention_reduce(const float *__restrict__ part_acc, const float *__restrict__ part_ml,
                                       float *__restrict__ out, uint32_t num_tokens, uint32_t num_heads,
                                       uint32_t head_dim, uint32_t num_partitions) {
    constexpr int THREADS = RED_THREADS / SLICES;
    __shared__ float4 num_s[THREADS];
    __shared__ float den_s[THREADS];
    __shared__ float max_s[THREADS / 32];
    const size_t o = (size_t)blockIdx.x * num_heads + blockIdx.y;
    const size_t stride = (size_t)num_tokens * num_heads;
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    // The groups of the whole row (RED_THREADS threads over all its columns); this block sums its
    // slice's columns, `cols` of them.
    const uint32_t groups = RED_THREADS / (head_dim / 4), cols = head_dim / 4 / SLICES;
    const uint32_t c = blockIdx.z * cols + threadIdx.x % cols, group = threadIdx.x / cols;
    ReduceChunk<CHUNK> chunk;
    chunk.load(part_acc, part_ml, group, groups, num_partitions, stride, o, head_dim, c);
    float m = -INFINITY;
    for (uint32_t z = threadIdx.x; z < num_partitions; z += THREADS) m = fmaxf(m, part_ml[2 * (z * stride + o)]);
    for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, off));
    if (lane == 0) max_s[warp] = m;
    __syncthreads();
    m = -INFINITY;
#pragma unroll
    for (int w = 0; w < THREADS / 32; w++) m = fmaxf(m, max_s[w]);
    float4 num = make_float4(0.f, 0.f, 0.f, 0.f);
    float den = 0.f;
    chunk.add_to(num, den, m);
    for (uint32_t z0 = group + CHUNK * groups; z0 < num_partitions; z0 += CHUNK * groups) {
        chunk.load(part_acc, part_ml, z0, groups, num_partitions, stride, o, head_dim, c);
        chunk.add_to(num, den, m);
    }
    num_s[threadIdx.x] = num;
    den_s[threadIdx.x] = den;
    __syncthreads();
    if (threadIdx.x < cols) {
        float4 sum = num_s[threadIdx.x];
        float total = den_s[threadIdx.x];
        for (uint32_t k = 1; k < groups; k++) {
            const float4 g = num_s[k * cols + threadIdx.x];
            sum.x += g.x;
            sum.y += g.y;
            sum.z += g.z;
            sum.w += g.w;
            total += den_s[k * cols + threadIdx.x];
        }
        reinterpret_cast<float4 *>(out + o * head_dim)[c] =
            make_float4(sum.x / total, sum.y / total, sum.z / total, sum.w / total);
    }
}

// MINB: blocks per SM the registers must allow (8 at CHUNK = 2: 32 registers, no spills).
// The token's count of partial results is step metadata, read before the wait (dependent_launch.cuh);
// a token with none was written by its kernel. A launch always has a token with some, so the grid
// still completes only after the kernels before it.
#define PAGED_ATTENTION_REDUCE(NAME, CHUNK, SLICES, MINB)                                              \
    extern "C" __global__ void __launch_bounds__(RED_THREADS / SLICES, MINB) NAME(                      \
        const float *part_acc, const float *part_ml, const uint32_t *row_partials, float *out,          \
        uint32_t num_tokens, uint32_t num_heads, uint32_t head_dim) {                                  \
        const uint32_t partials = row_partials[blockIdx.x];                                            \
        follow_previous_kernel();                                                                      \
        if (partials > 0)                                                                              \
            paged_attention_reduce<CHUNK, SLICES>(part_acc, part_ml, out, num_tokens, num_heads, head_dim, \
                                                  partials);                                           \
    }
PAGED_ATTENTION_REDUCE(paged_attention_reduce_c2, 2, 1, 8)
PAGED_ATTENTION_REDUCE(paged_attention_reduce_c8, 8, 1, 1)
PAGED_ATTENTION_REDUCE(paged_attention_reduce_c8_s4, 8, 4, 1)
PAGED_ATTENTION_REDUCE(paged_attention_reduce_c32, 32, 1, 1)

#define PAGED_ATTENTION(NAME, T, D)                                                                    \
    extern "C" __global__ void __launch_bounds__(NT) NAME(                                              \
        const float *q, const T *k_cache, const T *v_cache, const uint32_t *block_tables,              \
        const uint32_t *cu_query_lens, const uint32_t *context_lens, const uint32_t *work, float *out,  \
        float *part_acc, float *part_ml, AttnParams p) { follow_previous_kernel();                     \
        paged_attention<T, D>(q, k_cache, v_cache, block_tables, cu_query_lens, context_lens, work, out, \
                              part_acc, part_ml, p);                                                   \
    }

// G: query heads per block, 4 (GQA groups of up to 4: half the registers, more blocks per SM) or 8.
// MINB: blocks per SM the registers must allow: DEC_MINB for G = 4 (64 registers; 4 bytes spill to
// the stack at some sizes, as in the kernel measured fastest), 1 for G = 8 (its 8 queries and sums
// need ~128 registers).
#define PAGED_DECODE(NAME, T, D, G, MINB)                                                              \
    extern "C" __global__ void __launch_bounds__(NT, MINB) NAME(                                              \
        const float *q, const T *k_cache, const T *v_cache, const uint32_t *block_tables,              \
        const uint32_t *cu_query_lens, const uint32_t *context_lens, const uint32_t *decodes,          \
        float *out, float *part_acc, float *part_ml, AttnParams p) {                                   \
        paged_decode<T, D, G>(q, k_cache, v_cache, block_tables, cu_query_lens, context_lens, decodes, \
                              out, part_acc, part_ml, p);                                              \
    }
#define PAGED_DECODE_G(T, NAME, D)                                                                     \
    PAGED_DECODE(paged_decode_##NAME##_d##D##_g4, T, D, 4, DEC_MINB)                                   \
    PAGED_DECODE(paged_decode_##NAME##_d##D##_g8, T, D, 8, 1)

PAGED_DECODE_G(float, f32, 16)
PAGED_DECODE_G(float, f32, 32)
PAGED_DECODE_G(float, f32, 64)
PAGED_DECODE_G(float, f32, 128)
PAGED_DECODE_G(float, f32, 256)
PAGED_DECODE_G(__half, f16, 16)
PAGED_DECODE_G(__half, f16, 32)
PAGED_DECODE_G(__half, f16, 64)
PAGED_DECODE_G(__half, f16, 128)
PAGED_DECODE_G(__half, f16, 256)
PAGED_DECODE_G(__nv_bfloat16, bf16, 16)
PAGED_DECODE_G(__nv_bfloat16, bf16, 32)
PAGED_DECODE_G(__nv_bfloat16, bf16, 64)
PAGED_DECODE_G(__nv_bfloat16, bf16, 128)
PAGED_DECODE_G(__nv_bfloat16, bf16, 256)

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
