// kv_write: scatters a step's new key (or value) rows into their paged cache slots, in place.
// Contract and layout: kernels/README.md. One threadgroup per token; its threads stride over the
// row (num_kv_heads * head_dim elements), so every store of a threadgroup is contiguous.

#include <metal_stdlib>
using namespace metal;

/// Sizes of one kv_write dispatch (the host's `KvWriteParams`, same field order).
struct KvWriteParams {
    uint row_len;    // num_kv_heads * head_dim
    uint num_slots;  // num_blocks * block_size
};

template <typename T>
kernel void kv_write(
    device const T* src [[buffer(0)]],
    device const uint* slot_mapping [[buffer(1)]],
    device T* cache [[buffer(2)]],
    constant KvWriteParams& p [[buffer(3)]],
    uint token [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint threads [[threads_per_threadgroup]])
{
    const uint slot = slot_mapping[token];
    if (slot >= p.num_slots) {
        return;  // the host validates slots; never write outside the cache
    }
    device const T* from = src + (ulong)token * p.row_len;
    device T* to = cache + (ulong)slot * p.row_len;
    for (uint e = tid; e < p.row_len; e += threads) {
        to[e] = from[e];
    }
}

// The host looks kernels up by these names. (C++ has no [[host_name]]: the emulation build
// instantiates the same templates without it.)
#if defined(__METAL_VERSION__)
#define instantiate_kernel(name, ...) template [[host_name(name)]] [[kernel]] decltype(__VA_ARGS__) __VA_ARGS__;
#else
#define instantiate_kernel(name, ...) template decltype(__VA_ARGS__) __VA_ARGS__;
#endif

instantiate_kernel("kv_write_half", kv_write<half>)
instantiate_kernel("kv_write_bfloat", kv_write<bfloat>)
