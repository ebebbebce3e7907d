// qgemv: y = x · Wᵀ for the few rows of a decode step, with GGUF Q8_0 weights read where candle's
// QTensor keeps them, on integer tensor cores. x is [M, K] f32 (M ≤ 16), W is [N, K] in Q8_0 (each row
// K / 32 blocks of 34 bytes: an f16 scale d, then 32 int8 q; a weight is d · q), y is [M, N] f32.
//
// The activations are quantized the same way, in the kernel, 32 at a time: d_x = max |x| / 127, then
// q_x = round(x / d_x) (as candle's and llama.cpp's CPU Q8_0 dot products do). A Q8_0 block of a row
// of W against one of x is then an exact integer dot product, scaled by d_w · d_x in f32: one
// mma.sync m16n8k32 (s8 × s8 → s32) takes 16 rows of W and up to 8 rows of x one block at a time;
// the `_n16` kernels take 9 to 16 rows of x as two such tiles against the same fragments of W, so
// that W is read once for all of them.
// An earlier version rounded x to bf16 and converted every weight into bf16 for two f16-shaped mmas
// a block: ~70 instructions per block and warp against ~30 here, which made it slower than candle's
// MMVQ at 1 and 2 rows (docs/perf.md).
//
// A group of 16 rows of W (the mma's m) is split between the WARPS warps of a block, against all M
// rows of x (the mma's n, padded to 8). The rows' bytes are staged in chunks of 8 Q8_0 blocks (256
// weights, 272 bytes a row: 17 aligned 16-byte pieces, as every row is when K is a multiple of 256)
// with cp.async, each warp streaming its own chunks (w, w + WARPS, ...) DEPTH ahead, across the
// groups its block takes: the grid is only as large as what is resident at once, so that the copies
// of a block's next group are in flight while it finishes one (a block per group, each loading then
// computing, left the memory idle between waves: the large matrices took 1.2–1.3× as long on an H200,
// docs/perf.md).
// The weights do not depend on the previous kernel: each warp starts copying them before it waits.
//
// Within a Q8_0 block the mma's k positions may take the quants in any order as long as x takes the
// same: lane (g, t) holds bytes [8t, 8t + 8) of rows g and g + 8 of W and of row g of x, so that k
// slots 4t .. 4t + 3 are quants 8t .. 8t + 3 and slots 16 + 4t .. 16 + 4t + 3 are quants 8t + 4 ..
// 8t + 7. A row's arithmetic depends neither on M nor on the other rows, so a sequence gets the same
// result whatever its batch; the WARPS warps' sums are added in warp order at the end.
#include "common.cuh"

#define QG_ROWS 16                                // rows of W per block: the mma's m
#define QG_COLS 8                                 // rows of x per tile: the mma's n
#define Q8_0_BYTES 34                             // bytes of one Q8_0 block of 32 weights
#define QG_CHUNK 8                                // Q8_0 blocks per staged chunk of a row
#define QG_CHUNK_BYTES (QG_CHUNK * Q8_0_BYTES)    // 272: 17 pieces of 16 bytes
#define QG_W_PIECES (QG_ROWS * QG_CHUNK_BYTES / 16)
#define QG_W_STAGE (QG_ROWS * QG_CHUNK_BYTES)     // bytes of one staged chunk of W, rows unpadded
#define QG_X_FLOATS (QG_CHUNK * 32)               // floats of a chunk of a row of x
#define QG_XQ_STRIDE 288                          // bytes a row of a quantized chunk of x: 256 + 32 (banks)

// Bytes of one quantized chunk of the m rows of x: m rows of int8, then the scales, [block][row of x]
// for the `cols` rows (8 a tile) the kernel computes.
__device__ __forceinline__ int xq_chunk_bytes(uint32_t m, int cols) { return (int)m * QG_XQ_STRIDE + QG_CHUNK * cols * 4; }

// Bytes [off, off + 8) of a staged row as two words, where `off` (known once the caller's loop is
// unrolled) is only 2-byte aligned half the time: a Q8_0 block's quants start 2 bytes after its
// 34-byte-aligned start.
__device__ __forceinline__ uint2 load8(const uint8_t *row, int off) {
    const uint32_t *words = reinterpret_cast<const uint32_t *>(row + (off & ~3));
    if (off % 4 == 0) return make_uint2(words[0], words[1]);
    return make_uint2(__funnelshift_r(words[0], words[1], 16), __funnelshift_r(words[1], words[2], 16));
}

// D = A·B for A 16×32 int8 (4 registers), B 32×8 int8 (2 registers), D 16×8 int32.
__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], uint2 b) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y), "r"(0));
}

// Four int8 (bytes of a word, first in the low byte).
__device__ __forceinline__ uint32_t pack_s8(int a, int b, int c, int d) {
    return (uint32_t)(a & 0xff) | ((uint32_t)(b & 0xff) << 8) | ((uint32_t)(c & 0xff) << 16) | ((uint32_t)d << 24);
}

// Quantizes 8 floats of a row of x (`v`), a quarter of Q8_0 block lane / 4, into the row's quants
// (`quants`, 8 bytes from byte 8 · lane) and, from the quarter's first lane, the block's scale at
// `scales[(lane / 4) * cols]`: the four lanes of a block agree on its maximum.
__device__ __forceinline__ void quantize_quarter(const float (&v)[8], uint8_t *quants, float *scales, int cols, int lane) {
    float most = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) most = fmaxf(most, fabsf(v[i]));
    most = fmaxf(most, __shfl_xor_sync(0xffffffffu, most, 1));
    most = fmaxf(most, __shfl_xor_sync(0xffffffffu, most, 2));
    const float d = most / 127.f, inv = d != 0.f ? 1.f / d : 0.f;
    int q[8];
#pragma unroll
    for (int i = 0; i < 8; i++) q[i] = (int)roundf(v[i] * inv);
    *reinterpret_cast<uint2 *>(quants + 8 * lane) =
        make_uint2(pack_s8(q[0], q[1], q[2], q[3]), pack_s8(q[4], q[5], q[6], q[7]));
    if (lane % 4 == 0) scales[(lane / 4) * cols] = d;
}

// Lane `lane`'s 8 floats of chunk `chunk` (256 columns) of row r of x: floats [8 lane, 8 lane + 8).
__device__ __forceinline__ void load_quarter(const float *__restrict__ x, uint32_t r, uint32_t k, int chunk, int lane,
                                             float (&v)[8]) {
    const float4 *src = reinterpret_cast<const float4 *>(x + (size_t)r * k + chunk * QG_X_FLOATS) + 2 * lane;
    const float4 lo = __ldg(src), hi = __ldg(src + 1);  // the read-only path, as the kernel loaded x before
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}

// Zeroes the scales of rows m .. cols - 1 of a quantized chunk, so that those columns of the products
// are too.
__device__ __forceinline__ void zero_padding_scales(uint8_t *xq, uint32_t m, int cols, int lane) {
    float *scales = reinterpret_cast<float *>(xq + m * QG_XQ_STRIDE);
    if (lane < QG_CHUNK) {
        for (int r = (int)m; r < cols; r++) scales[lane * cols + r] = 0.f;
    }
}

// Quantizes the warp's chunks of x (chunks warp, warp + WARPS, ..., `per_group` of them, those past
// `chunks` skipped) into `xq`, one xq_chunk_bytes(m, cols) each. With one row of x, every chunk's floats
// are loaded before any is quantized, QG_X_BATCH chunks at a time, so that the loads share one round
// trip (the down projection's warps take two chunks each: one after the other, the second waited
// for the first's shuffles, docs/perf.md).
#define QG_X_BATCH 4
template <int WARPS, bool ONE>
__device__ __forceinline__ void quantize_x(const float *__restrict__ x, uint32_t m, uint32_t k, int chunks,
                                           int per_group, int cols, uint8_t *xq, int warp, int lane) {
    for (int j0 = 0; j0 < per_group; j0 += ONE ? QG_X_BATCH : 1) {
        constexpr int BATCH = ONE ? QG_X_BATCH : 1;
        float v[BATCH][8];
#pragma unroll
        for (int b = 0; b < BATCH; b++) {
            const int chunk = warp + WARPS * (j0 + b);
            if (j0 + b < per_group && chunk < chunks) load_quarter(x, 0, k, chunk, lane, v[b]);
        }
#pragma unroll
        for (int b = 0; b < BATCH; b++) {
            const int j = j0 + b;
            if (j >= per_group || warp + WARPS * j >= chunks) continue;
            uint8_t *chunk_q = xq + j * xq_chunk_bytes(m, cols);
            float *scales = reinterpret_cast<float *>(chunk_q + m * QG_XQ_STRIDE);
            zero_padding_scales(chunk_q, m, cols, lane);
            quantize_quarter(v[b], chunk_q, scales, cols, lane);
            for (uint32_t r = 1; r < (ONE ? 1 : m); r++) {
                float w[8];
                load_quarter(x, r, k, warp + WARPS * j, lane, w);
                quantize_quarter(w, chunk_q + r * QG_XQ_STRIDE, scales + r, cols, lane);
            }
        }
    }
}

// K is a multiple of 256 and rows start 16-byte aligned (the host checks). The grid may be smaller
// than the ceil(N / 16) groups of 16 rows: block b takes groups b, b + gridDim.x, ..., and each warp
// streams its chunks of all of them through one pipeline, DEPTH ahead, so that the copies of the
// next group are in flight while this one finishes. Warp w takes chunks w, w + WARPS, ... of every
// group (`per_group` of them, the last maybe past K and skipped): the same columns of x each time, so
// it quantizes them once, first. Dynamic shared memory (`QgemvShape::shared_bytes` in
// src/ops/cuda.rs): WARPS × (DEPTH × QG_W_STAGE + per_group × xq_chunk_bytes(m, 8 NT)) + sum_buffers
// × WARPS × 16 × 8 NT × 4, the warps' sums of `sum_buffers` groups: 2 let the warps start on the next
// group while the last one is added up, 1 (one more barrier a group) is for where 2 do not fit; the
// sums are the same either way.
// ONE: m is 1 (a single sequence's decode step). Its chunk of x then sits in registers across the
// groups of rows (a warp with one chunk a group loads it once), and only the products' columns of
// x's first row are computed (the others are padding): ~15% fewer instructions a chunk,
// the same arithmetic for that row, so its products stay bitwise those of a batch (docs/perf.md).
// NT: tiles of 8 rows of x, each its own mma against the same fragments of W. A row's products are
// summed in the same order whatever NT is: with the same WARPS, bitwise those of the one-tile kernel.
template <int WARPS, int DEPTH, bool ONE, int NT>
__device__ void qgemv_q8_0(const uint8_t *__restrict__ w, const float *__restrict__ x, float *__restrict__ y,
                           uint32_t m, uint32_t n, uint32_t k, uint32_t sum_buffers) {
    static_assert(!ONE || NT == 1, "one row of x is one tile");
    constexpr int COLS = QG_COLS * NT;  // rows of x computed, padding included
    extern __shared__ uint4 smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;  // fragment row (of W; of x for B) and column quad
    const uint32_t row_bytes = (k / 32) * Q8_0_BYTES;
    const int chunks = (int)(k / (32 * QG_CHUNK)), per_group = (chunks + WARPS - 1) / WARPS;
    const uint32_t groups = (n + QG_ROWS - 1) / QG_ROWS;
    const int items = blockIdx.x < groups ? (int)((groups - blockIdx.x + gridDim.x - 1) / gridDim.x) * per_group : 0;
    float *sums = reinterpret_cast<float *>(smem);  // [sum_buffers][WARPS][16][COLS]
    uint8_t *slots = reinterpret_cast<uint8_t *>(sums + sum_buffers * WARPS * QG_ROWS * COLS) +
                     warp * (DEPTH * QG_W_STAGE + per_group * xq_chunk_bytes(m, COLS));
    uint8_t *xq = slots + DEPTH * QG_W_STAGE;
    // Lane l copies pieces l + 32j of a chunk of W: piece (l + 32j) % 17 of row (l + 32j) / 17 of
    // the group (rows past the last read the last again: their sums are never written).
    int w_row[(QG_W_PIECES + 31) / 32];
    uint32_t w_piece[(QG_W_PIECES + 31) / 32];
#pragma unroll
    for (int j = 0; j < (QG_W_PIECES + 31) / 32; j++) {
        const int i = lane + 32 * j;
        w_row[j] = i / (QG_CHUNK_BYTES / 16);
        w_piece[j] = (i % (QG_CHUNK_BYTES / 16)) * 16;
    }
    // Starts copying item i (chunk warp + WARPS (i % per_group) of group blockIdx.x + gridDim.x
    // (i / per_group)) into slot i % DEPTH; one commit group per item, empty past the end.
    auto issue = [&](int i) {
        const int chunk = warp + WARPS * (i % per_group);
        if (i < items && chunk < chunks) {
            const uint32_t row0 = (blockIdx.x + gridDim.x * (i / per_group)) * QG_ROWS;
            const uint8_t *src = w + (size_t)chunk * QG_CHUNK_BYTES;
            uint8_t *dst = slots + (i % DEPTH) * QG_W_STAGE;
#pragma unroll
            for (int j = 0; j < (QG_W_PIECES + 31) / 32; j++)
                if (lane + 32 * j < QG_W_PIECES)
                    copy16_async(dst + 16 * (lane + 32 * j),
                                 src + (size_t)min(row0 + w_row[j], n - 1) * row_bytes + w_piece[j], true);
        }
        commit_async();
    };
#pragma unroll
    for (int i = 0; i < DEPTH; i++) issue(i);
    follow_previous_kernel();
    quantize_x<WARPS, ONE>(x, m, k, chunks, per_group, COLS, xq, warp, lane);
    __syncwarp();

    // acc[nt][e]: row g + 8 (e / 2) of the group, row 8 nt + 2t + e % 2 of x.
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[nt][e] = 0.f;
    uint2 x_held[QG_CHUNK];  // ONE: chunk `held` of x's quants (the mma's B) and scales
    float dx_held[QG_CHUNK];
    int held = -1;
    for (int i = 0; i < items; i++) {
        wait_async<DEPTH - 1>();
        __syncwarp();
        const int j = i % per_group;
        if (warp + WARPS * j < chunks) {
            const uint8_t *st = slots + (i % DEPTH) * QG_W_STAGE;
            const uint8_t *w_rows[2] = {st + g * QG_CHUNK_BYTES, st + (g + 8) * QG_CHUNK_BYTES};
            const uint8_t *xc = xq + j * xq_chunk_bytes(m, COLS);
            // Tile nt's B: row 8 nt + g of x (columns past m repeat row m - 1; never written).
            const uint8_t *x_quants[NT];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) x_quants[nt] = xc + min(8 * nt + g, (int)m - 1) * QG_XQ_STRIDE + 8 * t;
            const float *x_scales = reinterpret_cast<const float *>(xc + m * QG_XQ_STRIDE) + 2 * t;
            if (ONE && j != held) {
#pragma unroll
                for (int c = 0; c < QG_CHUNK; c++) {
                    x_held[c] = *reinterpret_cast<const uint2 *>(x_quants[0] + c * 32);
                    dx_held[c] = x_scales[c * COLS];
                }
                held = j;
            }
#pragma unroll
            for (int c = 0; c < QG_CHUNK; c++) {
                const uint2 lo = load8(w_rows[0] + 8 * t, c * Q8_0_BYTES + 2);
                const uint2 hi = load8(w_rows[1] + 8 * t, c * Q8_0_BYTES + 2);
                const uint32_t a[4] = {lo.x, hi.x, lo.y, hi.y};
                const float dw[2] = {__half2float(*reinterpret_cast<const __half *>(w_rows[0] + c * Q8_0_BYTES)),
                                     __half2float(*reinterpret_cast<const __half *>(w_rows[1] + c * Q8_0_BYTES))};
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    int dot[4];
                    mma_s8(dot, a, ONE ? x_held[c] : *reinterpret_cast<const uint2 *>(x_quants[nt] + c * 32));
                    const float2 dx = ONE ? make_float2(dx_held[c], 0.f)
                                          : *reinterpret_cast<const float2 *>(x_scales + c * COLS + 8 * nt);
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (!ONE || e % 2 == 0)
                            acc[nt][e] = fmaf((float)dot[e], dw[e / 2] * (e % 2 ? dx.y : dx.x), acc[nt][e]);
                }
            }
        }
        __syncwarp();
        issue(i + DEPTH);
        if (j == per_group - 1) {
            // The group's last item: its warps' sums, added in warp order by 128 threads. With two
            // buffers the next group's writes into this one come after the next barrier; with one,
            // after a second barrier here.
            const int group = i / per_group;
            float *buffer = sums + (group % sum_buffers) * WARPS * QG_ROWS * COLS;
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    if (!ONE || e % 2 == 0)
                        buffer[(warp * QG_ROWS + g + 8 * (e / 2)) * COLS + 8 * nt + 2 * t + e % 2] = acc[nt][e];
                    acc[nt][e] = 0.f;
                }
            __syncthreads();
            for (int i = threadIdx.x; i < QG_ROWS * COLS; i += 32 * WARPS) {
                const int r = i / COLS, col = i % COLS;
                const uint32_t row = (blockIdx.x + gridDim.x * group) * QG_ROWS + r;
                float v = buffer[r * COLS + col];
#pragma unroll
                for (int wi = 1; wi < WARPS; wi++) v += buffer[(wi * QG_ROWS + r) * COLS + col];
                if ((uint32_t)col < m && row < n) y[(size_t)col * n + row] = v;
            }
            if (sum_buffers == 1) __syncthreads();
        }
    }
}

// qgemv_q8_0_wW_dD takes 1-8 rows of x, qgemv_q8_0_wW_dD_m1 exactly one, qgemv_q8_0_wW_dD_n16 9-16;
// at 9-16 rows also one chunk in flight a warp, where that fits more blocks on a multiprocessor
// (`qgemv_launch` in src/ops/cuda.rs).
#define QGEMV_M(WARPS, DEPTH, ONE, NT, SUFFIX)                                                            \
    extern "C" __global__ void __launch_bounds__(32 * WARPS) qgemv_q8_0_w##WARPS##_d##DEPTH##SUFFIX(     \
        const uint8_t *w, const float *x, float *y, uint32_t m, uint32_t n, uint32_t k, uint32_t sums) { \
        qgemv_q8_0<WARPS, DEPTH, ONE, NT>(w, x, y, m, n, k, sums);                                      \
    }
#define QGEMV(WARPS) \
    QGEMV_M(WARPS, 2, false, 1, ) QGEMV_M(WARPS, 2, true, 1, _m1) QGEMV_M(WARPS, 2, false, 2, _n16) \
    QGEMV_M(WARPS, 1, false, 2, _n16)
QGEMV(4)
QGEMV(8)
QGEMV(16)
