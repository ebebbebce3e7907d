// add_rms_norm_f32: a block's residual add and the next RMS norm in one launch. For row t of x and y
// ([T, D] f32): out[0][t] = s = x[t] + y[t], out[1][t] = s / sqrt(mean(s²) + eps) · w. One block
// per row; the sum of squares is reduced in a fixed order (per thread, then warp shuffles, then warps).
#include <stdint.h>

#define NORM_THREADS 256

extern "C" __global__ void add_rms_norm_f32(const float *__restrict__ x, const float *__restrict__ y,
                                            const float *__restrict__ w, float *__restrict__ out, uint32_t rows,
                                            uint32_t dim, float eps) {
    __shared__ float warp_sums[NORM_THREADS / 32];
    const size_t row = (size_t)blockIdx.x * dim;
    float *sum = out + row, *normed = out + (size_t)rows * dim + row;
    float sq = 0.f;
    for (uint32_t i = threadIdx.x; i < dim; i += NORM_THREADS) {
        const float s = x[row + i] + y[row + i];
        sum[i] = s;
        sq += s * s;
    }
    for (int o = 16; o > 0; o /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, o);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sq;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < NORM_THREADS / 32; i++) total += warp_sums[i];
    const float inv = rsqrtf(total / (float)dim + eps);
    for (uint32_t i = threadIdx.x; i < dim; i += NORM_THREADS) normed[i] = sum[i] * inv * w[i];
}
