// The floor for any kernel that reads n bytes: 16-byte loads, four in flight per thread, grid-stride,
// one xor per thread written so that nothing is optimised away (scripts/decode-bench.sh).
#include <stdint.h>

extern "C" __global__ void __launch_bounds__(256) stream_read(const uint4 *__restrict__ src, uint64_t n16,
                                                              uint32_t *out) {
    uint32_t x = 0;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        const uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
        x ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n16; i += stride) {
        const uint4 a = src[i];
        x ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    out[(uint64_t)blockIdx.x * blockDim.x + threadIdx.x] = x;
}
