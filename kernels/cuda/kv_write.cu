// kv_write: copies row t of src ([T, row_len] f32) into cache slot slot_mapping[t]
// ([slots, row_len] of the cache's type), converting on the way. One block per token row,
// threads stride over the row (the same shape as the Metal kernel: one threadgroup per row). A padding
// row (slot 0xffffffff, PADDING_SLOT in src/ops) is not written.
#include "common.cuh"

template <typename T>
__device__ void kv_write(const float *__restrict__ src, const uint32_t *__restrict__ slot_mapping,
                         T *__restrict__ cache, uint32_t row_len) {
    const uint32_t t = blockIdx.x;
    const uint32_t slot = slot_mapping[t];
    if (slot == 0xffffffffu) return;
    const float *row = src + (size_t)t * row_len;
    T *dst = cache + (size_t)slot * row_len;
    for (uint32_t i = threadIdx.x; i < row_len; i += blockDim.x) {
        dst[i] = from_float<T>(row[i]);
    }
}

#define KV_WRITE(NAME, T)                                                                          \
    extern "C" __global__ void NAME(const float *src, const uint32_t *slot_mapping, T *cache,       \
                                    uint32_t row_len) { follow_previous_kernel();                  \
        kv_write<T>(src, slot_mapping, cache, row_len);                                             \
    }

KV_WRITE(kv_write_f32, float)
KV_WRITE(kv_write_f16, __half)
KV_WRITE(kv_write_bf16, __nv_bfloat16)
