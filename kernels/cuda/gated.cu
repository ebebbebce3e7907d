// gated_{silu,gelu}_f32: out[t, i] = act(gate[t, i]) · up[t, i], the gated activation of a
// feed-forward block in one launch. Rows need only be contiguous inside: gate and up may be the two
// halves of one [T, 2N] matmul output (fused gate/up weights), so their row strides are arguments.
// The activations are the CPU kernels' formulas (bodega-cpu-kernels' `Activation::apply`).
#include <stdint.h>
#include "dependent_launch.cuh"

#define GATED_THREADS 256

template <bool GELU>
__device__ void gated(const float *__restrict__ gate, const float *__restrict__ up, float *__restrict__ out,
                      uint32_t n, uint32_t gate_stride, uint32_t up_stride) {
    const uint32_t i = blockIdx.x * GATED_THREADS + threadIdx.x, t = blockIdx.y;
    if (i >= n) return;
    const float x = gate[(size_t)t * gate_stride + i];
    // GELU's tanh form is x · sigmoid(2·√(2/π)·(x + 0.044715·x³)).
    const float u = GELU ? 1.595769f * (x + 0.044715f * x * x * x) : x;
    out[(size_t)t * n + i] = x / (1.f + expf(-u)) * up[(size_t)t * up_stride + i];
}

extern "C" __global__ void gated_silu_f32(const float *gate, const float *up, float *out, uint32_t n,
                                          uint32_t gate_stride, uint32_t up_stride) {
    follow_previous_kernel();
    gated<false>(gate, up, out, n, gate_stride, up_stride);
}

extern "C" __global__ void gated_gelu_f32(const float *gate, const float *up, float *out, uint32_t n,
                                          uint32_t gate_stride, uint32_t up_stride) {
    follow_previous_kernel();
    gated<true>(gate, up, out, n, gate_stride, up_stride);
}
