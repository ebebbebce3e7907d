// add_rms_norm_f32: a block's residual add and the next RMS norm in one launch. For row t of x and y
// ([T, D] f32): out[0][t] = s = x[t] + y[t], out[1][t] = s / sqrt(mean(s²) + eps) · w. One block
// per row; the sum of squares is reduced in a fixed order (per thread, then warp shuffles, then warps).
//
// A decode step has one row, so the kernel is one block and its time is memory latency: each thread
// issues every load of its elements (x, y and w, NORM_PER of each, strided by the block) before using
// any, keeps the sums in registers and writes both outputs from them — one round trip to memory, not
// one per element and another to read the sums back. Rows wider than NORM_PER · NORM_THREADS (8,192)
// take their tail in a loop that reads x and y again.
#include <stdint.h>
#include "dependent_launch.cuh"

#define NORM_THREADS 256
#define NORM_PER 32

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    add_rms_norm_f32(const float *__restrict__ x, const float *__restrict__ y, const float *__restrict__ w,
                     float *__restrict__ out, uint32_t rows, uint32_t dim, float eps) {
    follow_previous_kernel();
    __shared__ float warp_sums[NORM_THREADS / 32];
    const size_t row = (size_t)blockIdx.x * dim;
    float *sum = out + row, *normed = out + (size_t)rows * dim + row;
    float s[NORM_PER], ws[NORM_PER];
#pragma unroll
    for (int j = 0; j < NORM_PER; j++) {
        const uint32_t i = threadIdx.x + j * NORM_THREADS;
        s[j] = i < dim ? x[row + i] + y[row + i] : 0.f;
        ws[j] = i < dim ? w[i] : 0.f;
    }
    float sq = 0.f;
#pragma unroll
    for (int j = 0; j < NORM_PER; j++) sq += s[j] * s[j];
    for (uint32_t i = threadIdx.x + NORM_PER * NORM_THREADS; i < dim; i += NORM_THREADS) {
        const float v = x[row + i] + y[row + i];
        sum[i] = v;
        sq += v * v;
    }
    for (int o = 16; o > 0; o /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, o);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sq;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < NORM_THREADS / 32; i++) total += warp_sums[i];
    const float inv = rsqrtf(total / (float)dim + eps);
#pragma unroll
    for (int j = 0; j < NORM_PER; j++) {
        const uint32_t i = threadIdx.x + j * NORM_THREADS;
        if (i < dim) {
            sum[i] = s[j];
            normed[i] = s[j] * inv * ws[j];
        }
    }
    for (uint32_t i = threadIdx.x + NORM_PER * NORM_THREADS; i < dim; i += NORM_THREADS) {
        normed[i] = (x[row + i] + y[row + i]) * inv * w[i];
    }
}
