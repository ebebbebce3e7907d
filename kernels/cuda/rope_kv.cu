// rope_kv_write: a step's rotary embedding and KV cache write in one launch (four before: RoPE on the
// queries, on the keys, and a cache write each for keys and values). For token t, its
// query heads are rotated into q_out ([T, heads, D] f32); its key heads are rotated and written, and
// its value heads copied, into slot slots[t] of the caches ([slots, kv_heads, D] of T), converted to
// the cache's type. A padding row (slot 0xffffffff, PADDING_SLOT in src/ops) writes no cache.
// q, k and v are rows of `*_stride` f32 (the thirds of a fused Q/K/V product, say); cos and sin are
// the token's [D / 2] angles' cosines and sines. INTERLEAVED pairs dimensions (2i, 2i + 1), else
// (i, i + D / 2); either way y = (x0·cos − x1·sin, x0·sin + x1·cos), as candle's rope_i / rope.
#include "common.cuh"

#define ROPE_WARPS 4

// One warp per head (query, key or value head of one token): blocks of ROPE_WARPS warps, grid
// (T, heads + 2 · kv_heads over ROPE_WARPS). A decode step has one token, and one block for its 48
// heads (Llama-3.2-1B) walked them in turns of memory latency; a warp per head makes it one turn.
template <typename T, bool INTERLEAVED>
__device__ void rope_kv_write(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                              uint32_t q_stride, uint32_t k_stride, uint32_t v_stride,
                              const float *__restrict__ cos, const float *__restrict__ sin,
                              const uint32_t *__restrict__ slots, float *__restrict__ q_out, T *__restrict__ k_cache,
                              T *__restrict__ v_cache, uint32_t heads, uint32_t kv_heads, uint32_t d) {
    const uint32_t t = blockIdx.x, half = d / 2, lane = threadIdx.x % 32;
    const uint32_t h = blockIdx.y * ROPE_WARPS + threadIdx.x / 32;
    if (h >= heads + 2 * kv_heads) return;
    const uint32_t slot = slots[t];
    const bool is_q = h < heads;
    if (!is_q && slot == 0xffffffffu) return;
    if (h >= heads + kv_heads) {
        const uint32_t vh = h - heads - kv_heads;
        const float *vr = v + (size_t)t * v_stride + vh * d;
        T *vo = v_cache + ((size_t)slot * kv_heads + vh) * d;
        for (uint32_t i = lane; i < d; i += 32) vo[i] = from_float<T>(vr[i]);
        return;
    }
    const float *c = cos + (size_t)t * half, *s = sin + (size_t)t * half;
    const float *x = is_q ? q + (size_t)t * q_stride + h * d : k + (size_t)t * k_stride + (h - heads) * d;
    for (uint32_t j = lane; j < half; j += 32) {
        const uint32_t a = INTERLEAVED ? 2 * j : j, b = INTERLEAVED ? 2 * j + 1 : j + half;
        const float x0 = x[a], x1 = x[b], cj = c[j], sj = s[j];
        const float y0 = x0 * cj - x1 * sj, y1 = x0 * sj + x1 * cj;
        if (is_q) {
            float *o = q_out + ((size_t)t * heads + h) * d;
            o[a] = y0;
            o[b] = y1;
        } else {
            T *o = k_cache + ((size_t)slot * kv_heads + (h - heads)) * d;
            o[a] = from_float<T>(y0);
            o[b] = from_float<T>(y1);
        }
    }
}

#define ROPE_KV(NAME, T, INTERLEAVED)                                                                         \
    extern "C" __global__ void NAME(const float *q, const float *k, const float *v, uint32_t q_stride,         \
                                    uint32_t k_stride, uint32_t v_stride, const float *cos, const float *sin,  \
                                    const uint32_t *slots, float *q_out, T *k_cache, T *v_cache,               \
                                    uint32_t heads, uint32_t kv_heads, uint32_t d) { follow_previous_kernel(); \
        rope_kv_write<T, INTERLEAVED>(q, k, v, q_stride, k_stride, v_stride, cos, sin, slots, q_out, k_cache,  \
                                      v_cache, heads, kv_heads, d);                                            \
    }

ROPE_KV(rope_kv_write_f32_interleaved, float, true)
ROPE_KV(rope_kv_write_f32_halves, float, false)
ROPE_KV(rope_kv_write_f16_interleaved, __half, true)
ROPE_KV(rope_kv_write_f16_halves, __half, false)
ROPE_KV(rope_kv_write_bf16_interleaved, __nv_bfloat16, true)
ROPE_KV(rope_kv_write_bf16_halves, __nv_bfloat16, false)
