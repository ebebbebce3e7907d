// qgemv: y = x · Wᵀ for a few rows of x, with GGUF Q8_0 weights read where candle's QTensor keeps them.
// x is [M, K] f32 (M ≤ 8), W is [N, K] in Q8_0 (each row K / 32 blocks of 34 bytes: an f16 scale d,
// then 32 int8 q; a weight is d · q), y is [M, N] f32. One launch: no quantization of the activations
// first, and each weight byte is read once for all M rows.
//
// Blocks are 34 bytes, so a block (and a row, when K / 32 is odd) is only 2-byte aligned: the kernel
// reads everything as 16-bit words. A lane takes 4 quants at a time (a "unit": two 16-bit loads, plus
// the block's scale, which the 8 lanes of one block share through L1); consecutive lanes take
// consecutive units, so a warp's loads of x (one float4 per unit and row of x) are contiguous, and
// each lane issues the loads of UNROLL units of ROWS rows of W before using any.
//
// One warp computes ROWS rows of W for every row of x; each sum is then reduced across the warp. A
// weight is dequantized exactly in f32 (an f16 times an int8 fits in 24 bits), then multiplied into
// the running sums. A row's arithmetic (unit order per lane, reduction tree) does not depend on M or on
// the other rows, so a sequence gets the same result whatever its batch.
#include "common.cuh"

#define QGEMV_THREADS 128
#define QGEMV_WARPS (QGEMV_THREADS / 32)
// Bytes of one Q8_0 block of 32 weights.
#define Q8_0_BYTES 34

// Four int8 (one per byte of q) times d, exactly: each byte, made unsigned by flipping its sign bit,
// becomes the low mantissa byte of 2^23, so the float is 2^23 + 128 + q.
__device__ __forceinline__ void dequant4(uint32_t q, float d, float *w) {
    const uint32_t u = q ^ 0x80808080u;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float biased = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540 + e));
        w[e] = (biased - 8388736.0f) * d;
    }
}

// K is a multiple of 32 (whole blocks; the host checks), so a row has K / 4 units, 8 per block.
template <int M>
__device__ void qgemv_q8_0(const uint8_t *__restrict__ w, const float *__restrict__ x, float *__restrict__ y,
                           uint32_t n, uint32_t k) {
    constexpr int ROWS = GemvShape<M>::ROWS, UNROLL = GemvShape<M>::UNROLL;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t row0 = (blockIdx.x * QGEMV_WARPS + warp) * ROWS;
    if (row0 >= n) return;
    const uint32_t units = k / 4;
    const size_t row_bytes = (size_t)(k / 32) * Q8_0_BYTES;
    const uint8_t *wr[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        // A row past the end reads the last row again; its sum is never written.
        wr[r] = w + (size_t)min(row0 + r, n - 1) * row_bytes;
    }
    float acc[ROWS][M] = {};
    for (uint32_t base = lane; base < units; base += 32 * UNROLL) {
        uint32_t quants[UNROLL][ROWS];
        unsigned short scales[UNROLL][ROWS];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const uint32_t c = base + u * 32;
            // The unit's block, and its quants' offset in the row (past the block's scale).
            const uint32_t block = (c / 8) * Q8_0_BYTES, at = block + 2 + (c % 8) * 4;
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                if (c < units) {
                    const uint32_t lo = __ldg(reinterpret_cast<const unsigned short *>(wr[r] + at));
                    const uint32_t hi = __ldg(reinterpret_cast<const unsigned short *>(wr[r] + at + 2));
                    quants[u][r] = lo | (hi << 16);
                    scales[u][r] = __ldg(reinterpret_cast<const unsigned short *>(wr[r] + block));
                } else {
                    quants[u][r] = 0;
                    scales[u][r] = 0;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const uint32_t c = base + u * 32;
            if (c >= units) break;
            float wf[ROWS][4];
#pragma unroll
            for (int r = 0; r < ROWS; r++) dequant4(quants[u][r], __half2float(__ushort_as_half(scales[u][r])), wf[r]);
#pragma unroll
            for (int m = 0; m < M; m++) {
                const float4 xv = __ldg(reinterpret_cast<const float4 *>(x + (size_t)m * k) + c);
#pragma unroll
                for (int r = 0; r < ROWS; r++) {
                    acc[r][m] = fmaf(wf[r][0], xv.x, acc[r][m]);
                    acc[r][m] = fmaf(wf[r][1], xv.y, acc[r][m]);
                    acc[r][m] = fmaf(wf[r][2], xv.z, acc[r][m]);
                    acc[r][m] = fmaf(wf[r][3], xv.w, acc[r][m]);
                }
            }
        }
    }
    store_row_sums<ROWS, M>(acc, lane, row0, n, y);
}

#define QGEMV(M)                                                                                            \
    extern "C" __global__ void __launch_bounds__(QGEMV_THREADS)                                             \
        qgemv_q8_0_m##M(const uint8_t *w, const float *x, float *y, uint32_t n, uint32_t k) {               \
        qgemv_q8_0<M>(w, x, y, n, k);                                                                       \
    }
QGEMV(1)
QGEMV(2)
QGEMV(3)
QGEMV(4)
QGEMV(5)
QGEMV(6)
QGEMV(7)
QGEMV(8)
