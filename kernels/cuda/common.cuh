// What bodega's CUDA kernels share: conversions between the KV cache's storage types (f32, f16, bf16)
// and f32, in which every kernel computes, 16-byte copies into shared memory with cp.async, the
// tensor-core mma.sync of f16/bf16 operands, and (dependent_launch.cuh) the wait every kernel starts
// with.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include "dependent_launch.cuh"

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// Elements of type T packed in one 32-bit word (of a shared tile, of a 16-byte load).
template <typename T> struct Words;
template <> struct Words<float> {
    static constexpr int PER = 1;
    __device__ static void unpack(uint32_t w, float *out) { out[0] = __uint_as_float(w); }
};
template <> struct Words<__half> {
    static constexpr int PER = 2;
    __device__ static void unpack(uint32_t w, float *out) {
        __half2 h = *reinterpret_cast<__half2 *>(&w);
        float2 f = __half22float2(h);
        out[0] = f.x;
        out[1] = f.y;
    }
};
template <> struct Words<__nv_bfloat16> {
    static constexpr int PER = 2;
    __device__ static void unpack(uint32_t w, float *out) {
        __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162 *>(&w);
        float2 f = __bfloat1622float2(h);
        out[0] = f.x;
        out[1] = f.y;
    }
};

// The 16 bytes of one load as f32: 4 (f32) or 8 (f16, bf16) values.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4 &raw, float *out) {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; i++) Words<T>::unpack(w[i], out + i * Words<T>::PER);
}

// Copies 16 bytes global → shared without passing through registers; `valid` false writes zeros and
// reads nothing.
__device__ __forceinline__ void copy16_async(void *dst, const void *src, bool valid) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void commit_async() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N of this thread's committed copy groups are still in flight.
template <int N> __device__ __forceinline__ void wait_async() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// The mma.sync of a 2-byte type: D += A·B for a 16×16 A (4 registers) and a 16×8 B (2 registers).
template <typename T> struct Mma;
template <> struct Mma<__half> {
    __device__ static uint32_t pack(float a, float b) {
        __half2 h = __floats2half2_rn(a, b);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
template <> struct Mma<__nv_bfloat16> {
    __device__ static uint32_t pack(float a, float b) {
        __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
