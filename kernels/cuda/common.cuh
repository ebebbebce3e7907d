// Conversions between the KV cache's storage types and f32, shared by bodega's CUDA kernels.
// The cache holds f32, f16 or bf16; every kernel computes in f32.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

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

// A GEMV's shape (gemv.cu, qgemv.cu) for M rows of x: rows of W per warp, and loads per lane in flight
// (8-element chunks in gemv, 4-quant units in qgemv). `gemv_rows_per_block` in src/ops/cuda.rs
// launches by ROWS.
template <int M> struct GemvShape {
    static constexpr int ROWS = M <= 2 ? 2 : 4;
    static constexpr int UNROLL = M <= 2 ? 4 : 2;
};

// The end of a GEMV (gemv.cu, qgemv.cu): each lane holds partial sums of ROWS rows of W for M rows of x;
// sums them across the warp (a fixed shuffle tree) and lane 0 writes y[m, row0 + r] for the rows
// that exist (row0 + r < n).
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
