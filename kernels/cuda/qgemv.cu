// qgemv: y = x · Wᵀ for the few rows of a decode step, with GGUF Q8_0 weights read where candle's
// QTensor keeps them, on tensor cores. x is [M, K] f32 (M ≤ 8), W is [N, K] in Q8_0 (each row K / 32
// blocks of 34 bytes: an f16 scale d, then 32 int8 q; a weight is d · q), y is [M, N] f32.
//
// One block of 4 warps takes 16 rows of W (the mma's m) and all M rows of x (its n, padded to 8).
// The rows' bytes are staged in chunks of 8 Q8_0 blocks (256 weights, 272 bytes a row: 17 aligned
// 16-byte pieces, as every row is when K is a multiple of 256) with cp.async, together with the same
// 256 columns of x, each warp streaming its own chunks (w, w + 4, ...) DEPTH ahead: no registers held
// by loads in flight, and nothing read from global memory inside the products. Per Q8_0 block and warp: the 32 quants of each
// row, exact in bf16, times x rounded to bf16 with two mma.sync m16n8k16 (f32 accumulation), then
// scaled by the rows' d into the warp's sums; the 4 warps' sums are added in warp order at the end.
// The CUDA-core kernel this replaced dequantized every weight into f32 and spent ~9 instructions a
// weight at 4 rows of x: it read 1.4 TB/s on an H200 (docs/perf.md).
//
// Within a Q8_0 block the mma's k positions may take the quants in any order as long as x takes the
// same: lane (g, t) holds bytes [8t, 8t + 8) of rows g and g + 8 and x[g][8t .. 8t + 8), so that
// k slots 2t, 2t + 1 (step s) are quants 8t + 4s, + 1 and slots 2t + 8, + 9 are 8t + 4s + 2, + 3.
// A row's arithmetic depends neither on M nor on the other rows, so a sequence gets the same result
// whatever its batch. Rounding x to bf16 (8 significant bits, the range of f32) is the price: about
// what candle's QMatMul pays by quantizing x to 8 bits (q8_1).
#include "common.cuh"

#define QMMA_WARPS 4
#define QMMA_THREADS (32 * QMMA_WARPS)
#define QMMA_ROWS 16                                // rows of W per block: the mma's m
#define QMMA_COLS 8                                 // rows of x: the mma's n
#define Q8_0_BYTES 34                               // bytes of one Q8_0 block of 32 weights
#define QMMA_CHUNK 8                                // Q8_0 blocks per staged chunk of a row
#define QMMA_CHUNK_BYTES (QMMA_CHUNK * Q8_0_BYTES)  // 272: 17 pieces of 16 bytes
#define QMMA_PIECES (QMMA_ROWS * QMMA_CHUNK_BYTES / 16)
#define QMMA_STAGE (QMMA_ROWS * QMMA_CHUNK_BYTES)   // bytes of one staged chunk of 16 rows
#define QMMA_X_ROW (QMMA_CHUNK * 32 + 4)            // floats of one staged row of x (padded)

// Two int8 (bytes `lo`, `lo + 1` of q) as a bf16 pair, exactly: each byte, made unsigned by flipping
// its sign bit, becomes the low mantissa byte of 2^23, so the float is 2^23 + 128 + q.
__device__ __forceinline__ uint32_t int8x2_bf16(uint32_t q, int lo) {
    const uint32_t u = q ^ 0x80808080u;
    const float a = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540 + lo)) - 8388736.0f;
    const float b = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540 + lo + 1)) - 8388736.0f;
    return Mma<__nv_bfloat16>::pack(a, b);
}

// K is a multiple of 256 and rows start 16-byte aligned (the host checks). DEPTH: chunks each warp
// has in flight (2, or 4 for long rows, 1 where shared memory is short: `qgemv_depth` in
// src/ops/cuda.rs); dynamic shared memory:
// QMMA_WARPS × DEPTH × (QMMA_STAGE + m × QMMA_X_ROW × 4) bytes.
template <int DEPTH>
__device__ void qgemv_q8_0(const uint8_t *__restrict__ w, const float *__restrict__ x, float *__restrict__ y,
                           uint32_t m, uint32_t n, uint32_t k) {
    extern __shared__ uint4 smem[];
    __shared__ float sums[QMMA_WARPS][QMMA_ROWS][QMMA_COLS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;  // fragment row (of W; of x for B) and column pair
    const uint32_t row0 = blockIdx.x * QMMA_ROWS;
    const size_t row_bytes = (size_t)(k / 32) * Q8_0_BYTES;
    const int chunks = (int)(k / (32 * QMMA_CHUNK));
    const int mine = chunks > warp ? (chunks - warp + QMMA_WARPS - 1) / QMMA_WARPS : 0;
    // This warp's DEPTH slots: a chunk of the 16 rows of W, then its 256 columns of the m rows of x
    // (rows padded to QMMA_X_ROW floats: a quarter-warp's 16-byte reads fall in distinct banks).
    const int slot_bytes = QMMA_STAGE + (int)m * QMMA_X_ROW * 4;
    uint8_t *slots = reinterpret_cast<uint8_t *>(smem) + warp * DEPTH * slot_bytes;
    // Starts copying this warp's chunk s (chunk warp + 4s of the row); rows of W past the last read
    // the last again (their sums are never written).
    auto issue = [&](int s) {
        if (s < mine) {
            const uint32_t chunk = warp + QMMA_WARPS * s;
            uint8_t *dst = slots + (s % DEPTH) * slot_bytes;
            for (int i = lane; i < QMMA_PIECES; i += 32) {
                const int r = i / (QMMA_CHUNK_BYTES / 16), piece = i % (QMMA_CHUNK_BYTES / 16);
                const uint8_t *src = w + (size_t)min(row0 + r, n - 1) * row_bytes + (size_t)chunk * QMMA_CHUNK_BYTES;
                copy16_async(dst + r * QMMA_CHUNK_BYTES + piece * 16, src + piece * 16, true);
            }
            float *xs = reinterpret_cast<float *>(dst + QMMA_STAGE);
            for (int i = lane; i < (int)m * (QMMA_CHUNK * 32 / 4); i += 32) {
                const int r = i / (QMMA_CHUNK * 32 / 4), piece = i % (QMMA_CHUNK * 32 / 4);
                copy16_async(xs + r * QMMA_X_ROW + piece * 4, x + (size_t)r * k + chunk * QMMA_CHUNK * 32 + piece * 4, true);
            }
        }
        commit_async();
    };
#pragma unroll
    for (int s = 0; s < DEPTH; s++) issue(s);

    const bool x_row = (uint32_t)g < m;
    // acc[e]: row g + 8 (e / 2) of the block's W, row 2t + e % 2 of x.
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int s = 0; s < mine; s++) {
        wait_async<DEPTH - 1>();
        __syncwarp();
        const uint8_t *st = slots + (s % DEPTH) * slot_bytes;
        const float *xs = reinterpret_cast<const float *>(st + QMMA_STAGE) + (x_row ? g : 0) * QMMA_X_ROW + 8 * t;
#pragma unroll 2
        for (int c = 0; c < QMMA_CHUNK; c++) {
            // x[g][8t .. 8t + 8) of Q8_0 block c as bf16 pairs: b[0], b[1] for step 0, b[2], b[3] for step 1.
            uint32_t b[4] = {0u, 0u, 0u, 0u};
            if (x_row) {
                const float4 x0 = *reinterpret_cast<const float4 *>(xs + c * 32);
                const float4 x1 = *reinterpret_cast<const float4 *>(xs + c * 32 + 4);
                b[0] = Mma<__nv_bfloat16>::pack(x0.x, x0.y);
                b[1] = Mma<__nv_bfloat16>::pack(x0.z, x0.w);
                b[2] = Mma<__nv_bfloat16>::pack(x1.x, x1.y);
                b[3] = Mma<__nv_bfloat16>::pack(x1.z, x1.w);
            }
            // Rows g and g + 8: the block's scale and quants [8t, 8t + 8) (2-byte aligned: 16-bit reads).
            uint32_t q[2][2];
            float d[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const uint8_t *blk = st + (g + 8 * h) * QMMA_CHUNK_BYTES + c * Q8_0_BYTES;
                const unsigned short *qs = reinterpret_cast<const unsigned short *>(blk + 2 + 8 * t);
                q[h][0] = qs[0] | ((uint32_t)qs[1] << 16);
                q[h][1] = qs[2] | ((uint32_t)qs[3] << 16);
                d[h] = __half2float(*reinterpret_cast<const __half *>(blk));
            }
            float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int step = 0; step < 2; step++) {
                const uint32_t a[4] = {int8x2_bf16(q[0][step], 0), int8x2_bf16(q[1][step], 0),
                                       int8x2_bf16(q[0][step], 2), int8x2_bf16(q[1][step], 2)};
                Mma<__nv_bfloat16>::mma(part, a, b[2 * step], b[2 * step + 1]);
            }
#pragma unroll
            for (int e = 0; e < 4; e++) acc[e] = fmaf(part[e], d[e / 2], acc[e]);
        }
        __syncwarp();
        issue(s + DEPTH);
    }
#pragma unroll
    for (int e = 0; e < 4; e++) sums[warp][g + 8 * (e / 2)][2 * t + e % 2] = acc[e];
    __syncthreads();
    // Thread i: row i / 8 of the block's W, row i % 8 of x; the warps' sums in warp order.
    const int r = threadIdx.x / QMMA_COLS, col = threadIdx.x % QMMA_COLS;
    float v = sums[0][r][col];
#pragma unroll
    for (int wi = 1; wi < QMMA_WARPS; wi++) v += sums[wi][r][col];
    if ((uint32_t)col < m && row0 + r < n) y[(size_t)col * n + row0 + r] = v;
}

#define QGEMV(DEPTH)                                                                                       \
    extern "C" __global__ void __launch_bounds__(QMMA_THREADS) qgemv_q8_0_d##DEPTH(                        \
        const uint8_t *w, const float *x, float *y, uint32_t m, uint32_t n, uint32_t k) { follow_previous_kernel(); \
        qgemv_q8_0<DEPTH>(w, x, y, m, n, k);                                                               \
    }
QGEMV(1)
QGEMV(2)
QGEMV(4)
