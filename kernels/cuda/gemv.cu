// gemv: y = x · Wᵀ for a few rows of x, with the dense half-precision weights of a decode step.
// x is [M, K] f32 (M ≤ 8; the engine sends M ≤ 4, GEMV_MAX_ROWS), W is [N, K] f16 or bf16, y is [M, N] f32: no casts of the activations
// before or after, and each weight is read once for all M rows. Decode is bound by reading the
// weights, so the loads are 16 bytes wide and several are in flight per lane before any is used.
//
// One warp computes ROWS rows of W for every row of x: its lanes stride over K in 8-element chunks
// (one 16-byte load per row of W, two float4 loads per row of x, which L1 serves to all ROWS rows),
// then each sum is reduced across the warp. ROWS grows with M (2 up to two rows of x, else 4) so that
// the loads of x, which grow with M, stay a fraction of the weights' bytes. A row's arithmetic (chunk order, reduction tree) does not
// depend on M or on the other rows, so a sequence gets the same result whatever its batch.
#include "common.cuh"

// The shape for M rows of x: rows of W per warp, and 8-element chunks per lane in flight
// (`gemv_rows_per_block` in src/ops/cuda.rs launches by ROWS).
template <int M> struct GemvShape {
    static constexpr int ROWS = M <= 2 ? 2 : 4;
    static constexpr int UNROLL = M <= 2 ? 4 : 2;
};

// The end: each lane holds partial sums of ROWS rows of W for M rows of x; sums them across the warp
// (a fixed shuffle tree) and lane 0 writes y[m, row0 + r] for the rows that exist (row0 + r < n).
template <int ROWS, int M>
__device__ __forceinline__ void store_row_sums(float (&acc)[ROWS][M], int lane, uint32_t row0, uint32_t n,
                                               float *__restrict__ y) {
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int m = 0; m < M; m++) {
            float s = acc[r][m];
#pragma unroll
            for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffff, s, o);
            if (lane == 0 && row0 + r < n) y[(size_t)m * n + row0 + r] = s;
        }
}

#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / 32)
// K must be a multiple of 8 (the host checks), so every chunk is whole and 16-byte aligned.
template <typename T, int M>
__device__ void gemv(const T *__restrict__ w, const float *__restrict__ x, float *__restrict__ y, uint32_t n,
                     uint32_t k) {
    constexpr int ROWS = GemvShape<M>::ROWS, UNROLL = GemvShape<M>::UNROLL;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t row0 = (blockIdx.x * GEMV_WARPS + warp) * ROWS;
    if (row0 >= n) return;
    const uint32_t chunks = k / 8;
    const uint4 *wr[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        // A row past the end reads the last row again; its sum is never written.
        wr[r] = reinterpret_cast<const uint4 *>(w + (size_t)min(row0 + r, n - 1) * k);
    }
    float acc[ROWS][M] = {};
    for (uint32_t base = lane; base < chunks; base += 32 * UNROLL) {
        uint4 raw[UNROLL][ROWS];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const uint32_t c = base + u * 32;
#pragma unroll
            for (int r = 0; r < ROWS; r++) raw[u][r] = c < chunks ? __ldg(wr[r] + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const uint32_t c = base + u * 32;
            if (c >= chunks) break;
            float wf[ROWS][8];
#pragma unroll
            for (int r = 0; r < ROWS; r++) unpack16<T>(raw[u][r], wf[r]);
#pragma unroll
            for (int m = 0; m < M; m++) {
                const float4 *xr = reinterpret_cast<const float4 *>(x + (size_t)m * k) + 2 * c;
                const float4 a = __ldg(xr), b = __ldg(xr + 1);
                const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                for (int r = 0; r < ROWS; r++)
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[r][m] = fmaf(wf[r][e], xv[e], acc[r][m]);
            }
        }
    }
    store_row_sums<ROWS, M>(acc, lane, row0, n, y);
}

#define GEMV(NAME, T, M)                                                                                    \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                              \
        NAME(const T *w, const float *x, float *y, uint32_t n, uint32_t k) { follow_previous_kernel();      \
        gemv<T, M>(w, x, y, n, k);                                                                          \
    }
#define GEMV_ALL_M(T, SUFFIX)                                                                               \
    GEMV(gemv_##SUFFIX##_m1, T, 1)                                                                          \
    GEMV(gemv_##SUFFIX##_m2, T, 2)                                                                          \
    GEMV(gemv_##SUFFIX##_m3, T, 3)                                                                          \
    GEMV(gemv_##SUFFIX##_m4, T, 4)                                                                          \
    GEMV(gemv_##SUFFIX##_m5, T, 5)                                                                          \
    GEMV(gemv_##SUFFIX##_m6, T, 6)                                                                          \
    GEMV(gemv_##SUFFIX##_m7, T, 7)                                                                          \
    GEMV(gemv_##SUFFIX##_m8, T, 8)

GEMV_ALL_M(__half, f16)
GEMV_ALL_M(__nv_bfloat16, bf16)
