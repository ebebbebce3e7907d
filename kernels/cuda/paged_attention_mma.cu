// Paged attention for chunked prefill and speculative verification (several queries per sequence,
// causal, cached prefix before the chunk) on tensor cores, for f16 and bf16 caches at head sizes 64,
// 128 and 256. Same contract, work items and partitions as `paged_attention` in paged_attention.cu
// (which keeps f32 caches and head sizes 16/32), and the same `paged_attention_reduce` after it.
//
// One thread block (W warps, MmaShape below) = one work item (up to R = 16·W query rows: consecutive
// tokens of one sequence × the query heads of one KV head's group) × one KV head × P consecutive
// partitions of PART keys, walked as one stream of tiles into one online softmax and written as one
// partial result (slot blockIdx.z; the output itself when the grid has one block along the context):
// a long prompt chunk's partial results were a quarter of its attention's time when each partition
// was written and read back by the reduction (docs/perf.md). Each warp
// owns 16 rows (a warp with only padding rows computes nothing). The queries are staged once in
// shared memory as the cache's type (pre-scaled by scale·log2 e, so the softmax is exp2), the SMEM
// bytes below being launched as dynamic shared memory; keys and values are walked in tiles of KT
// positions at absolute multiples of KT, copied into padded shared tiles with cp.async (the next
// tile's keys and values in flight during this whole tile at head size 64; elsewhere its keys load
// during this tile's P·V, its values during its own Q·Kᵀ). Per tile and
// warp: S = Q·Kᵀ with mma.sync m16n8k16 (f16/bf16 in, f32 accumulation), masking and an online
// softmax on the accumulator fragments, P rounded to the cache type, O += P·V with mma.sync.
//
// Batch invariance: a row's arithmetic depends only on its own queries and keys. mma computes each
// output element from its own row and column; tiles sit at absolute positions; each lane keeps the
// same keys of every tile, and the four lanes of a row combine their partial sums in a fixed order.
// A tile in which a row sees no key leaves its state exactly unchanged (α = 1, P = 0), so tiles that
// one work item visits and another does not (chunking) change nothing; a block's partitions are
// grouped at absolute positions (partitions z·P .. z·P + P - 1), so a row's groups do not depend on
// its chunk either.
#include "attention.cuh"

// Tile shape per head size and warp count W. KT divides PART. Rows are padded by 8 elements (16
// bytes): the eight 16-byte rows an ldmatrix reads then fall in distinct banks.
template <int D, int W> struct MmaTile {
    static constexpr int THREADS = 32 * W;
    static constexpr int R = 16 * W;                  // query rows per block
    static constexpr int KT = D == 256 ? 32 : 64;     // keys per tile (fewer at 256: registers)
    static constexpr int S = D + 8;                   // padded row, in elements
    static constexpr int CH = D / 8;                  // 16-byte chunks per row
    static constexpr int TILE = KT * S;               // elements of one staged tile of keys or values
    // Tiles of keys and values in shared memory: two (the next in flight during a whole tile) at head
    // size 64; one at 128 (the shared memory of two would cost a block per SM: docs/perf.md) and 256.
    static constexpr int STAGES = D == 64 ? 2 : 1;
    static constexpr int SMEM = (R + 2 * STAGES * KT) * S * 2;  // bytes of dynamic shared memory
    static constexpr int LOADS = KT * CH / THREADS;   // 16-byte copies per thread per tile
};

// Four 8×8 matrices of 2-byte elements from shared memory (lane i gives the address of row i % 8 of
// matrix i / 8); `trans` hands each lane a column pair instead of a row pair.
template <bool trans> __device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *row) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    if (trans) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a)
                     : "memory");
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a)
                     : "memory");
    }
}

// A position outside [lo, hi) in a tile's slots: nothing is read.
#define NO_SLOT 0xffffffffu
// No key held back from a decode tile's copies (`WarpTiles::issue`).
#define NO_KEY 0xffffffffu

// Thread i copies 16-byte chunk i % CH of tile positions i / CH, + THREADS / CH, ...: the cache
// slots of those positions in the tile at tile_start (keys and values share them).
template <int D, int W>
__device__ __forceinline__ void tile_slots(uint32_t (&slots)[MmaTile<D, W>::LOADS], const WorkItem &w,
                                           uint32_t tile_start, const AttnParams &p) {
    using C = MmaTile<D, W>;
#pragma unroll
    for (int k = 0; k < C::LOADS; k++) {
        const uint32_t pos = tile_start + (threadIdx.x + k * C::THREADS) / C::CH;
        slots[k] = pos >= w.lo && pos < w.hi ? w.table[pos / p.block_size] * p.block_size + pos % p.block_size
                                             : NO_SLOT;
    }
}

// Starts copying one KV head's rows at `slots` into a shared tile; positions without a slot become
// zeros and are never read (freed blocks, other partitions, keys not written yet).
template <typename T, int D, int W>
__device__ __forceinline__ void copy_tile_async(T *tile, const T *__restrict__ cache,
                                                const uint32_t (&slots)[MmaTile<D, W>::LOADS], uint32_t kv_head,
                                                const AttnParams &p) {
    using C = MmaTile<D, W>;
#pragma unroll
    for (int k = 0; k < C::LOADS; k++) {
        const int i = threadIdx.x + k * C::THREADS, j = i / C::CH, c = i % C::CH;
        const bool live = slots[k] != NO_SLOT;
        const T *src = live ? cache + ((size_t)slots[k] * p.num_kv_heads + kv_head) * D + c * 8 : cache;
        copy16_async(tile + j * C::S + c * 8, src, live);
    }
}

// The block's query rows into shared memory as T, scaled so that scores come out in log2 units;
// padding rows are zeros.
template <typename T, int D, int W>
__device__ __forceinline__ void stage_queries(T *q_s, const float *__restrict__ q, const WorkItem &w,
                                              const AttnParams &p) {
    using C = MmaTile<D, W>;
    const float q_scale = p.scale * 1.4426950408889634f;
    for (int i = threadIdx.x; i < C::R * D / 2; i += C::THREADS) {
        const int r = i / (D / 2), d = 2 * (i % (D / 2));
        const uint32_t tok = r / p.heads_per_chunk, hc = r % p.heads_per_chunk;
        float a = 0.f, b = 0.f;
        if (r < w.rows && hc < w.heads_here) {
            const float *src = q + ((size_t)(w.row0 + tok) * p.num_heads + w.head0 + hc) * D + d;
            a = src[0] * q_scale;
            b = src[1] * q_scale;
        }
        *reinterpret_cast<uint32_t *>(q_s + r * C::S + d) = Mma<T>::pack(a, b);
    }
}

// The block's rows over keys [w.lo, w.hi) (all of its partitions: one stream of tiles, so that the
// next tile is in flight at every partition boundary too) into the online softmax state: the
// unnormalised output o, the max m (log2 units) and each lane's part of the denominator l.
template <typename T, int D, int W>
__device__ __forceinline__ void attend_keys(float (&o)[D / 8][4], float (&m)[2], float (&l)[2], T *q_s, T *k_s, T *v_s,
                                            const float *__restrict__ q, const T *__restrict__ k_cache,
                                            const T *__restrict__ v_cache, const WorkItem &w, const AttnParams &p) {
    using C = MmaTile<D, W>;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t = lane % 4;  // column pair t of rows lane / 4 and lane / 4 + 8 of the warp's 16
    const bool live = warp * 16 < w.rows;  // a warp with only padding rows computes nothing
    // This lane's two rows (h = 0, 1: row warp·16 + lane / 4 + 8h) see keys [first, last].
    uint32_t first[2], last[2];
#pragma unroll
    for (int h = 0; h < 2; h++) row_range(w, p, warp * 16 + lane / 4 + 8 * h, first[h], last[h]);
    if (w.lo >= w.hi) return;

    // Copies of the tile at `at` into `stage` as one group: its keys (looking up their slots), its
    // values (at the slots the keys looked up), or both.
    uint32_t tile_start = w.lo / C::KT * C::KT;
    uint32_t slots[C::LOADS];
    const auto copy = [&](uint32_t at, int stage, bool keys, bool values) {
        if (at < w.hi) {
            if (keys) {
                tile_slots<D, W>(slots, w, at, p);
                copy_tile_async<T, D, W>(k_s + stage * C::TILE, k_cache, slots, w.kv_head, p);
            }
            if (values) copy_tile_async<T, D, W>(v_s + stage * C::TILE, v_cache, slots, w.kv_head, p);
        }
        commit_async();
    };
    // Two stages: stage i % 2 holds tile i, whose group is in flight during all of tile i - 1. One:
    // a tile's keys load during the P·V before it, its values during its own Q·Kᵀ.
    copy(tile_start, 0, true, C::STAGES == 2);
    copy(tile_start + (C::STAGES - 1) * C::KT, C::STAGES - 1, C::STAGES == 2, true);
    stage_queries<T, D, W>(q_s, q, w, p);  // while the first tiles load
    for (int stage = 0; tile_start < w.hi; tile_start += C::KT, stage = (stage + 1) % C::STAGES) {
        wait_async<1>();  // this tile's keys (two stages: and values; the next tile may be in flight)
        __syncthreads();
        const T *keys = k_s + stage * C::TILE, *values = v_s + stage * C::TILE;
        // S = Q·Kᵀ: 16 rows × KT keys per warp, fragment s[n] = keys n·8 .. n·8 + 7.
        float s[C::KT / 8][4];
        if (live) {
#pragma unroll
            for (int n = 0; n < C::KT / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[n][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t a[4];
                ldmatrix_x4<false>(a, q_s + (warp * 16 + (lane / 8 % 2) * 8 + lane % 8) * C::S + kk * 16 + lane / 16 * 8);
#pragma unroll
                for (int n2 = 0; n2 < C::KT / 16; n2++) {
                    uint32_t b[4];
                    ldmatrix_x4<false>(b, keys + (n2 * 16 + lane / 16 * 8 + lane % 8) * C::S + kk * 16 + (lane / 8 % 2) * 8);
                    Mma<T>::mma(s[2 * n2], a, b[0], b[1]);
                    Mma<T>::mma(s[2 * n2 + 1], a, b[2], b[3]);
                }
            }
            // Online softmax. Lane holds keys n·8 + 2t, + 1 of its rows h = 0 (e = 0, 1) and 1 (e = 2, 3);
            // keys outside a row's range are masked (a row that sees the whole tile skips the tests).
#pragma unroll
            for (int h = 0; h < 2; h++) {
                if (tile_start >= first[h] && tile_start + C::KT - 1 <= last[h]) continue;
#pragma unroll
                for (int n = 0; n < C::KT / 8; n++)
#pragma unroll
                    for (int e = 2 * h; e < 2 * h + 2; e++) {
                        const uint32_t key = tile_start + n * 8 + 2 * t + e % 2;
                        if (key < first[h] || key > last[h]) s[n][e] = -INFINITY;
                    }
            }
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < C::KT / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
            float alpha[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffff, mx[h], 1));
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffff, mx[h], 2));
                const float m_new = fmaxf(m[h], mx[h]);
                alpha[h] = m_new == -INFINITY ? 1.f : exp2f(m[h] - m_new);
                m[h] = m_new;
            }
            float sum[2] = {0.f, 0.f};
#pragma unroll
            for (int n = 0; n < C::KT / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    s[n][e] = m[e / 2] == -INFINITY ? 0.f : exp2f(s[n][e] - m[e / 2]);
                    sum[e / 2] += s[n][e];
                }
#pragma unroll
            for (int h = 0; h < 2; h++) l[h] = l[h] * alpha[h] + sum[h];
#pragma unroll
            for (int n = 0; n < D / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) o[n][e] *= alpha[e / 2];
        }

        if constexpr (C::STAGES == 1) {
            wait_async<0>();  // this tile's values
            __syncthreads();  // ... for every warp, and every warp is done with the keys
            copy(tile_start + C::KT, 0, true, false);
        }
        // O += P·V: P's accumulator fragments are the A fragments of 16 keys (two n-tiles).
        if (live) {
#pragma unroll
            for (int kk = 0; kk < C::KT / 16; kk++) {
                const uint32_t a[4] = {Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]), Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]),
                                       Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                       Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
                for (int n2 = 0; n2 < D / 16; n2++) {
                    uint32_t b[4];
                    ldmatrix_x4<true>(b, values + (kk * 16 + (lane / 8 % 2) * 8 + lane % 8) * C::S + n2 * 16 + lane / 16 * 8);
                    Mma<T>::mma(o[2 * n2], a, b[0], b[1]);
                    Mma<T>::mma(o[2 * n2 + 1], a, b[2], b[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with this stage
        if constexpr (C::STAGES == 2) copy(tile_start + 2 * C::KT, stage, true, true);
        else copy(tile_start + C::KT, 0, false, true);
    }
}

// Writes partial result `part` of the lane's rows: the output itself when the grid has one block
// along the context, else the unnormalised sum, max (natural-log units) and denominator for
// `paged_attention_reduce`.
template <int D>
__device__ __forceinline__ void write_partition(const float (&o)[D / 8][4], const float (&m)[2], float (&l)[2],
                                                const WorkItem &w, const AttnParams &p, uint32_t part,
                                                float *__restrict__ out, float *__restrict__ part_acc,
                                                float *__restrict__ part_ml) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
    // The four lanes of a row hold parts of its sum: combine them in a fixed order.
#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffff, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffff, l[h], 2);
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = warp * 16 + lane / 4 + 8 * h;
        const uint32_t tok = r / p.heads_per_chunk, hc = r % p.heads_per_chunk;
        if (r >= w.rows || hc >= w.heads_here) continue;
        const size_t row = (size_t)(w.row0 + tok) * p.num_heads + w.head0 + hc;
        if (gridDim.z == 1) {
            // acc / l, as the reduction computes it for a single live partition.
#pragma unroll
            for (int n = 0; n < D / 8; n++)
                *reinterpret_cast<float2 *>(out + row * D + n * 8 + 2 * t) =
                    make_float2(o[n][2 * h] / l[h], o[n][2 * h + 1] / l[h]);
        } else {
            const size_t po = (size_t)part * p.num_tokens * p.num_heads + row;
#pragma unroll
            for (int n = 0; n < D / 8; n++)
                *reinterpret_cast<float2 *>(part_acc + po * D + n * 8 + 2 * t) = make_float2(o[n][2 * h], o[n][2 * h + 1]);
            if (t == 0) {
                part_ml[2 * po] = m[h] * 0.6931471805599453f;  // back to natural-log units
                part_ml[2 * po + 1] = l[h];
            }
        }
    }
}

// Partitions blockIdx.z · P .. + P - 1 of one work item, one stream of tiles into one online softmax,
// written as partial result blockIdx.z; its arithmetic is the same whichever work item takes those
// rows.
template <typename T, int D, int W, int P>
__device__ void paged_attention_mma(const float *__restrict__ q, const T *__restrict__ k_cache,
                                    const T *__restrict__ v_cache, const uint32_t *__restrict__ block_tables,
                                    const uint32_t *__restrict__ cu_query_lens,
                                    const uint32_t *__restrict__ context_lens, const uint32_t *__restrict__ work,
                                    float *__restrict__ out, float *__restrict__ part_acc,
                                    float *__restrict__ part_ml, AttnParams p) {
    using C = MmaTile<D, W>;
    extern __shared__ uint4 smem[];
    T *q_s = reinterpret_cast<T *>(smem);
    T *k_s = q_s + C::R * C::S;
    T *v_s = k_s + C::STAGES * C::TILE;
    float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < D / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[n][e] = 0.f;
    const uint32_t first = blockIdx.z * P, parts = min(first + P, p.num_partitions) - first;
    const WorkItem w = work_item(block_tables, cu_query_lens, context_lens, work, p, first, parts);
    attend_keys<T, D, W>(o, m, l, q_s, k_s, v_s, q, k_cache, v_cache, w, p);
    write_partition<D>(o, m, l, w, p, blockIdx.z, out, part_acc, part_ml);
}

// Decode (one query per sequence) on tensor cores, for f16/bf16 caches at head sizes 64, 128 and 256:
// the same blocks, partitions and outputs as `paged_decode` in paged_attention.cu (one block =
// sequence × KV head × up to G query heads of its group × one partition), but each key costs a few
// tensor-core instructions instead of a lane's dot product and shuffle tree. On CUDA cores each
// 16-byte piece of a key cost its lane 32 multiply-adds, 8 conversions and 12 shuffles (each piece
// of a value 40 more instructions), and the decode kernel topped out at ~2.7 TB/s on an H200 whose
// memory streams 4.5 (2.45 on an H100 streaming 3.1: it did not follow the bandwidth); on tensor
// cores the same calls take 1.3-2.2x less time (docs/perf.md).
// A warp takes the partition's tiles of 16 keys w, w + WARPS, ...: it looks up their cache slots itself
// and streams them, each tile's keys and values copied together with cp.async into DEPTH staging slots of
// its own (no block barrier until the warps' results are combined). Per tile: Sᵀ = K·Qᵀ with mma.sync
// m16n8k16 (16 keys × 8 query heads, the queries pre-scaled by scale·log2 e and rounded to the cache type,
// as in the chunk kernel above), an online softmax on the accumulator fragments, P rounded to the cache
// type and turned into the B fragments of Oᵀ += Vᵀ·Pᵀ (16 dims × 8 heads per mma) through a small shared
// tile; at the end the warps' (max, sum, output) are combined in warp order. Batch invariance: a tile's
// keys, its warp and every sum's order depend on the sequence and the partition alone.
template <int D> struct DecMma {
    static constexpr int G = 8;                        // query heads per block: the mma's n
    static constexpr int KEYS = 16;                    // keys per tile: the mma's m
    static constexpr int CHUNKS = D / 8;               // 16-byte chunks per key
    static constexpr int PIECES = KEYS * CHUNKS / 32;  // 16-byte copies per lane per tile (keys or values)
    static constexpr int DEPTH = D == 64 ? 2 : 1;      // tiles each warp has in flight: 8 KiB+ (docs/perf.md)
    // Staged rows: swizzled at head size 64 (see staged_at), else padded by 8 elements as in MmaTile
    // (swizzling there cost registers, and blocks per SM, for no shared memory that limits them).
    static constexpr bool SWIZZLED = D == 64;
    static constexpr int S = SWIZZLED ? D : D + 8;     // staged row, in elements
    static constexpr int STAGE = 2 * KEYS * S;         // elements of one staging slot: keys, then values
    static constexpr int STAGING = WARPS * DEPTH * STAGE * 2;  // bytes of all warps' staging slots
    static constexpr int SUMS = WARPS * G * D * 4;     // bytes of the warps' outputs (reusing the staging)
    static constexpr int SMEM = STAGING > SUMS ? STAGING : SUMS;  // dynamic shared memory
    static constexpr int WARP_KEYS = PART / WARPS;     // keys of a partition one warp takes
    static_assert(WARP_KEYS % 32 == 0, "every lane looks up as many slots");
};

// Element offset of 16-byte chunk c of row r in a staged tile. Swizzled: the chunks of a row are
// permuted by the row's low 3 bits, so that the 8 rows an ldmatrix reads at one chunk column fall in
// 8 different bank groups without padding (at head size 64 the padding cost a block per SM:
// docs/perf.md).
template <int D> __device__ __forceinline__ int staged_at(int r, int c) {
    if constexpr (DecMma<D>::SWIZZLED) return r * D + ((c ^ (r & 7)) << 3);
    else return r * DecMma<D>::S + c * 8;
}

// A warp's stream of tiles: stage s is its tile s (partition-relative keys key0(s) ..+ 16).
template <typename T, int D> struct WarpTiles {
    using C = DecMma<D>;
    const T *k_cache, *v_cache;
    uint32_t *slots;        // the cache slots of this warp's keys: tile s's at [16 s, 16 s + 16)
    T *stage;               // this warp's DEPTH staging slots
    uint32_t n, first, kv_head, num_kv_heads;
    int tiles, warp, lane;

    __device__ __forceinline__ uint32_t key0(int s) const { return (uint32_t)(warp + WARPS * s) * C::KEYS; }
    // Looks up the cache slots of the warp's keys (step metadata only): no block barrier, so that
    // each warp starts copying as soon as its own slots are known.
    __device__ __forceinline__ void look_up(const DecodeBlock &b, uint32_t block_size) const {
        constexpr int PER_LANE = C::WARP_KEYS / 32;
        uint32_t found[PER_LANE];  // all loads first: the compiler cannot tell the table from `slots`
#pragma unroll
        for (int k = 0; k < PER_LANE; k++) {
            const int j = lane + 32 * k;
            const uint32_t key = key0(j / C::KEYS) + j % C::KEYS, pos = b.part_lo + key;
            found[k] = key < n ? b.table[pos / block_size] * block_size + pos % block_size : 0;
        }
#pragma unroll
        for (int k = 0; k < PER_LANE; k++) slots[lane + 32 * k] = found[k];
        __syncwarp();
    }
    // Starts tile s's copies, keys and values (keys outside [first, n) become zeros; nothing past the
    // stream's end), and commits them as one group. Key `held` (partition-relative) is left out: the
    // newest key, while the kernel before may still be writing it (`copy_newest`).
    __device__ __forceinline__ void issue(int s, uint32_t held = NO_KEY) const {
        if (s < tiles) {
            T *slot = stage + (s % C::DEPTH) * C::STAGE;
#pragma unroll
            for (int k = 0; k < C::PIECES; k++) {
                const int i = lane + 32 * k, r = i / C::CHUNKS, c = i % C::CHUNKS;
                const uint32_t j = key0(s) + r;
                const bool live = j >= first && j < n;
                const size_t at = live ? ((size_t)slots[s * C::KEYS + r] * num_kv_heads + kv_head) * D + c * 8 : 0;
                if (j == held) continue;
                copy16_async(slot + staged_at<D>(r, c), k_cache + at, live);
                copy16_async(slot + C::KEYS * C::S + staged_at<D>(r, c), v_cache + at, live);
            }
        }
        commit_async();
    }
    // Copies key `newest` (partition-relative) and its value into their staged rows when `issue` left
    // them out (a tile among the first DEPTH), with plain loads once the kernel before has finished.
    __device__ __forceinline__ void copy_newest(uint32_t newest) const {
#pragma unroll
        for (int s = 0; s < C::DEPTH; s++) {
            if (s >= tiles || newest - key0(s) >= (uint32_t)C::KEYS) continue;
            T *slot = stage + s * C::STAGE;
            const int r = (int)(newest - key0(s));
            for (int c = lane; c < C::CHUNKS; c += 32) {
                const size_t at = ((size_t)slots[s * C::KEYS + r] * num_kv_heads + kv_head) * D + c * 8;
                const uint4 key = __ldcg(reinterpret_cast<const uint4 *>(k_cache + at));
                const uint4 value = __ldcg(reinterpret_cast<const uint4 *>(v_cache + at));
                *reinterpret_cast<uint4 *>(slot + staged_at<D>(r, c)) = key;
                *reinterpret_cast<uint4 *>(slot + C::KEYS * C::S + staged_at<D>(r, c)) = value;
            }
        }
    }
    // Waits for tile s (the oldest of DEPTH groups in flight) and every lane's copies of it.
    __device__ __forceinline__ const T *take(int s) const {
        wait_async<C::DEPTH - 1>();
        __syncwarp();
        return stage + (s % C::DEPTH) * C::STAGE;
    }
    // Hands tile s's slot to tile s + DEPTH once every lane has read it.
    __device__ __forceinline__ void refill(int s) const {
        __syncwarp();
        issue(s + C::DEPTH);
    }
};

template <typename T, int D>
__device__ void paged_decode_mma(const float *__restrict__ q, const T *__restrict__ k_cache,
                                 const T *__restrict__ v_cache, const uint32_t *__restrict__ block_tables,
                                 const uint32_t *__restrict__ cu_query_lens, const uint32_t *__restrict__ context_lens,
                                 const uint32_t *__restrict__ decodes, float *__restrict__ out,
                                 float *__restrict__ part_acc, float *__restrict__ part_ml, AttnParams p) {
    using C = DecMma<D>;
    constexpr int G = C::G;
    // The warps' staging slots (C::SMEM bytes); once every tile is read, the warps' outputs.
    extern __shared__ uint4 smem[];
    __shared__ uint32_t p_s[WARPS][G][C::KEYS / 2 + 1];  // a tile's P as pairs of keys, per head
    __shared__ float m_s[WARPS][G], l_s[WARPS][G];
    __shared__ uint32_t slot_s[WARPS][C::WARP_KEYS];

    const DecodeBlock blk = decode_block<G>(block_tables, decodes, p);
    const uint32_t kv_head = blk.kv_head, head0 = blk.head0, row = blk.row, part_lo = blk.part_lo;
    const uint32_t lo = blk.lo, hi = blk.hi, n = blk.n;  // keys [0, n) relative to part_lo may be live
    const int heads = blk.heads;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;  // fragment row (key, dim) and column pair (heads 2t, 2t + 1)
    const int tiles = (int)((n + C::KEYS - 1) / C::KEYS);
    const WarpTiles<T, D> wt{k_cache, v_cache, slot_s[warp], reinterpret_cast<T *>(smem) + warp * C::DEPTH * C::STAGE,
                             n, lo < hi ? lo - part_lo : 0, kv_head, p.num_kv_heads,
                             tiles > warp ? (tiles - warp + WARPS - 1) / WARPS : 0, warp, lane};
    wt.look_up(blk, p.block_size);
    // The step's metadata (uploaded before the step's first kernel) and the keys and values before the
    // sequence's newest (written in earlier steps) are read while the kernel before finishes: it wrote
    // the queries and the newest key and value, which are read after it (dependent_launch.cuh).
#pragma unroll
    for (int s = 0; s < C::DEPTH; s++) wt.issue(s, blk.newest);
    follow_previous_kernel();
    wt.copy_newest(blk.newest);

    // Qᵀ's fragments (the mma's B): head g of the block, dims kk·16 + 2t, + 1 (b0) and + 8, + 9 (b1).
    uint32_t qb[D / 16][2];
    const float q_scale = p.scale * 1.4426950408889634f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float2 v = make_float2(0.f, 0.f);
            if (g < heads) v = *reinterpret_cast<const float2 *>(q + ((size_t)row * p.num_heads + head0 + g) * D + kk * 16 + 8 * h + 2 * t);
            qb[kk][h] = Mma<T>::pack(v.x * q_scale, v.y * q_scale);
        }

    // The warp's online softmax over its tiles, for heads 2t + c (c = 0, 1): max m (log2 units), this
    // lane's part of the sum l, and Oᵀ's fragments o[i][e]: dim i·16 + g + 8 (e / 2), head 2t + e % 2.
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    float o[D / 16][4];
#pragma unroll
    for (int i = 0; i < D / 16; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[i][e] = 0.f;
    for (int s = 0; s < wt.tiles; s++) {
        const T *kt = wt.take(s), *vt = kt + C::KEYS * C::S;
        // sc[e]: key key0 + g + 8 (e / 2), head 2t + e % 2.
        float sc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t a[4];
            ldmatrix_x4<false>(a, kt + staged_at<D>(lane % 8 + (lane / 8 % 2) * 8, kk * 2 + lane / 16));
            Mma<T>::mma(sc, a, qb[kk][0], qb[kk][1]);
        }
        float mx[2];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const uint32_t j = wt.key0(s) + g + 8 * (e / 2);
            if (j < wt.first || j >= n) sc[e] = -INFINITY;
        }
#pragma unroll
        for (int c = 0; c < 2; c++) {
            mx[c] = fmaxf(sc[c], sc[2 + c]);
#pragma unroll
            for (int x = 4; x < 32; x *= 2) mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffff, mx[c], x));
            const float m_new = fmaxf(m[c], mx[c]);
            const float alpha = m_new == -INFINITY ? 1.f : exp2f(m[c] - m_new);
            m[c] = m_new;
            l[c] *= alpha;
#pragma unroll
            for (int i = 0; i < D / 16; i++) {
                o[i][c] *= alpha;
                o[i][2 + c] *= alpha;
            }
        }
        float pr[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            pr[e] = m[e % 2] == -INFINITY ? 0.f : exp2f(sc[e] - m[e % 2]);
            l[e % 2] += pr[e];
        }
        // Pᵀ's B fragments need head g's keys 2t, 2t + 1 (b0) and + 8, + 9 (b1): through p_s, as pairs.
        T *pairs = reinterpret_cast<T *>(&p_s[warp][0][0]);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int h = 2 * t + e % 2, key = g + 8 * (e / 2);
            pairs[(h * (C::KEYS / 2 + 1) + key / 2) * 2 + key % 2] = from_float<T>(pr[e]);
        }
        __syncwarp();
        const uint32_t b0 = p_s[warp][g][t], b1 = p_s[warp][g][4 + t];
#pragma unroll
        for (int i = 0; i < D / 16; i++) {
            uint32_t a[4];
            ldmatrix_x4<true>(a, vt + staged_at<D>(lane / 16 * 8 + lane % 8, 2 * i + lane / 8 % 2));
            Mma<T>::mma(o[i], a, b0, b1);
        }
        wt.refill(s);
    }
    // This warp's sums of heads 2t, 2t + 1 over its lanes (g = 0 .. 7) in a fixed order.
#pragma unroll
    for (int c = 0; c < 2; c++)
#pragma unroll
        for (int x = 4; x < 32; x *= 2) l[c] += __shfl_xor_sync(0xffffffff, l[c], x);
    // Every copy has landed and been read: the staging slots now hold the warps' outputs.
    wait_async<0>();
    __syncthreads();
    float(*acc_s)[G][D] = reinterpret_cast<float(*)[G][D]>(smem);
#pragma unroll
    for (int i = 0; i < D / 16; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc_s[warp][2 * t + e % 2][i * 16 + g + 8 * (e / 2)] = o[i][e];
    if (g == 0) {
#pragma unroll
        for (int c = 0; c < 2; c++) {
            m_s[warp][2 * t + c] = m[c];
            l_s[warp][2 * t + c] = l[c];
        }
    }
    __syncthreads();
    // The warps combined in warp order: acc = Σ e^(m_w - M) o_w, sum = Σ e^(m_w - M) l_w.
    for (int i = threadIdx.x; i < heads * D; i += NT) {
        const int h = i / D, d = i % D;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < WARPS; w++) mx = fmaxf(mx, m_s[w][h]);
        float a = 0.f, sum = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) {
            const float f = m_s[w][h] == -INFINITY ? 0.f : exp2f(m_s[w][h] - mx);
            a += f * acc_s[w][h][d];
            sum += f * l_s[w][h];
        }
        const size_t r = (size_t)row * p.num_heads + head0 + h;
        if (p.num_partitions == 1) {
            out[r * D + d] = a / sum;
        } else {
            const size_t po = (size_t)blockIdx.z * p.num_tokens * p.num_heads + r;
            part_acc[po * D + d] = a;
            if (d == 0) {
                part_ml[2 * po] = mx * 0.6931471805599453f;  // back to natural-log units
                part_ml[2 * po + 1] = sum;
            }
        }
    }
}

// Warps (of 16 query rows) and partitions per block by head size, as `mma_shape` in src/ops/cuda.rs:
// chosen on an H200 among 4 or 8 warps × 1, 2 or 4 partitions (docs/perf.md). At head size 256, 8
// warps would leave one block per SM (252 registers a thread).
template <int D> struct MmaShape {
    static constexpr int W = D == 64 ? 8 : 4;
    static constexpr int P = 4;
};

#define PAGED_ATTENTION_MMA(NAME, T, D)                                                                \
    extern "C" __global__ void __launch_bounds__(32 * MmaShape<D>::W) NAME(                             \
        const float *q, const T *k_cache, const T *v_cache, const uint32_t *block_tables,              \
        const uint32_t *cu_query_lens, const uint32_t *context_lens, const uint32_t *work, float *out,  \
        float *part_acc, float *part_ml, AttnParams p) { follow_previous_kernel();                     \
        paged_attention_mma<T, D, MmaShape<D>::W, MmaShape<D>::P>(                                     \
            q, k_cache, v_cache, block_tables, cu_query_lens, context_lens, work, out, part_acc, part_ml, p); \
    }

PAGED_ATTENTION_MMA(paged_attention_mma_f16_d64, __half, 64)
PAGED_ATTENTION_MMA(paged_attention_mma_f16_d128, __half, 128)
PAGED_ATTENTION_MMA(paged_attention_mma_f16_d256, __half, 256)
PAGED_ATTENTION_MMA(paged_attention_mma_bf16_d64, __nv_bfloat16, 64)
PAGED_ATTENTION_MMA(paged_attention_mma_bf16_d128, __nv_bfloat16, 128)
PAGED_ATTENTION_MMA(paged_attention_mma_bf16_d256, __nv_bfloat16, 256)

#define PAGED_DECODE_MMA(NAME, T, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(NT) NAME(                                              \
        const float *q, const T *k_cache, const T *v_cache, const uint32_t *block_tables,              \
        const uint32_t *cu_query_lens, const uint32_t *context_lens, const uint32_t *decodes,          \
        float *out, float *part_acc, float *part_ml, AttnParams p) {                                   \
        paged_decode_mma<T, D>(q, k_cache, v_cache, block_tables, cu_query_lens, context_lens, decodes, out, \
                               part_acc, part_ml, p);                                                  \
    }

PAGED_DECODE_MMA(paged_decode_mma_f16_d64, __half, 64)
PAGED_DECODE_MMA(paged_decode_mma_f16_d128, __half, 128)
PAGED_DECODE_MMA(paged_decode_mma_f16_d256, __half, 256)
PAGED_DECODE_MMA(paged_decode_mma_bf16_d64, __nv_bfloat16, 64)
PAGED_DECODE_MMA(paged_decode_mma_bf16_d128, __nv_bfloat16, 128)
PAGED_DECODE_MMA(paged_decode_mma_bf16_d256, __nv_bfloat16, 256)
