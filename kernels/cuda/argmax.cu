// argmax_rows: the index of the largest value of each row of a [R, V] f32 matrix (greedy sampling on
// the device: only R token ids go back to the host instead of R × V logits). One block per row;
// each thread scans a stride of the row, then the block reduces. Ties go to the lowest index and NaN
// reads as -inf, as in the host's `ops::cpu::argmax`, so the result is the same token.
#include <math.h>
#include <stdint.h>
#include "dependent_launch.cuh"

#define ARGMAX_THREADS 1024

// Whether (v, i) beats (bv, bi): a larger value, or the same value at a lower index.
__device__ __forceinline__ bool beats(float v, uint32_t i, float bv, uint32_t bi) {
    return v > bv || (v == bv && i < bi);
}

// Reduces (best, best_i) over a warp: lane 0 ends with the warp's winner.
__device__ __forceinline__ void warp_best(float &best, uint32_t &best_i) {
    for (int offset = 16; offset > 0; offset /= 2) {
        float v = __shfl_down_sync(0xffffffffu, best, offset);
        uint32_t i = __shfl_down_sync(0xffffffffu, best_i, offset);
        if (beats(v, i, best, best_i)) {
            best = v;
            best_i = i;
        }
    }
}

extern "C" __global__ void argmax_rows_f32(const float *__restrict__ logits, uint32_t vocab,
                                           uint32_t *__restrict__ out) {
    follow_previous_kernel();
    const float *row = logits + (size_t)blockIdx.x * vocab;
    float best = -INFINITY;
    uint32_t best_i = UINT32_MAX;
    for (uint32_t i = threadIdx.x; i < vocab; i += ARGMAX_THREADS) {
        float v = row[i];
        v = isnan(v) ? -INFINITY : v;
        if (beats(v, i, best, best_i)) {
            best = v;
            best_i = i;
        }
    }
    warp_best(best, best_i);
    __shared__ float warp_values[ARGMAX_THREADS / 32];
    __shared__ uint32_t warp_index[ARGMAX_THREADS / 32];
    const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        warp_values[warp] = best;
        warp_index[warp] = best_i;
    }
    __syncthreads();
    if (warp == 0) {
        best = warp_values[lane];
        best_i = warp_index[lane];
        warp_best(best, best_i);
        if (lane == 0) {
            out[blockIdx.x] = best_i;
        }
    }
}
