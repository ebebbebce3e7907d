// Top-k of logits rows: the k largest values of each row of a [R, V] f32 matrix with their indices,
// for top-k sampling on the device: a sampler with top-k (and penalties, which only lower logits)
// needs only those, 8·k bytes a row back to the host instead of 4·V. The order is IEEE total order
// (Rust's f32::total_cmp: -NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN) with ties to the lower
// index, the host sampler's, so the set is the one it would pick. Output `[rows, 2, k]` u32: the
// values above the k-th largest, then its first equals, each group in index order (as
// `ops::cpu::top_k`), the indices then the values' bits.
//
// Selecting: a radix select finds the k-th largest key in four 8-bit passes (per-warp histograms,
// one atomic per distinct bin of a warp), then an ordered pass (tiles of TOPK_TILE indices, block
// scans of the counts) writes the selection. A long row takes two launches so that one row does
// not wait on one SM: `top_k_slices_f32` selects each slice's k largest (grid rows × slices, every
// slice at least k long), in index order; `top_k_rows_f32` then selects from the slices' k each
// (whose concatenation is in index order, so equal values still come out by index), or from the
// whole row when it is short.
#include <stdint.h>
#include "dependent_launch.cuh"

#define TOPK_THREADS 1024
#define TOPK_WARPS (TOPK_THREADS / 32)  // = 32: lane w of a warp reads warp w's totals
#define TOPK_PER_THREAD 4                // consecutive elements a thread takes per round
#define TOPK_TILE (TOPK_THREADS * TOPK_PER_THREAD)

// An unsigned key whose order is the float's total order.
__device__ __forceinline__ uint32_t order_key(float v) {
    const uint32_t b = __float_as_uint(v);
    return b ^ ((b >> 31) ? 0xffffffffu : 0x80000000u);
}

// Elements [lo, lo + n) of a logits row: element i is index lo + i.
struct RowSpan {
    const float *row;
    uint32_t lo;
    __device__ float value(uint32_t i) const { return row[lo + i]; }
    __device__ uint32_t id(uint32_t i) const { return lo + i; }
};

// The slices' candidates of one row (`top_k_slices_f32`'s [slices, 2, k] blocks), one after another:
// element i is candidate i % k of slice i / k.
struct SliceCandidates {
    const uint32_t *base;
    uint32_t k;
    __device__ float value(uint32_t i) const { return __uint_as_float(base[(i / k) * 2 * k + k + i % k]); }
    __device__ uint32_t id(uint32_t i) const { return base[(i / k) * 2 * k + i % k]; }
};

// The block's shared memory, declared once per kernel and handed to the steps.
struct TopKShared {
    uint32_t hist[TOPK_WARPS][256];  // one histogram per warp: fewer colliding atomics
    uint32_t chosen[2];              // a pass's bin and how many keys in play lie above it
    uint32_t warp_a[TOPK_WARPS], warp_b[TOPK_WARPS];  // the warps' totals in a block scan
};

// Adds one to bin `bin` of this warp's histogram for every lane that has it (in_play), one atomic
// per distinct bin: a pass over logits in a narrow range puts most lanes in the same few bins.
__device__ __forceinline__ void count_bin(uint32_t *hist, bool in_play, uint32_t bin, uint32_t lane) {
    const uint32_t peers = __match_any_sync(0xffffffffu, in_play ? bin : 0xffffffffu);
    if (in_play && __ffs(peers) - 1 == (int)lane) atomicAdd(&hist[bin], (uint32_t)__popc(peers));
}

// The k-th largest key of the n elements (`kth`), how many keys lie above it (`above`), and how
// many of its equals complete the k (`want`, at least 1). k <= n. Every thread gets the results.
template <class In>
__device__ void radix_select(TopKShared &sh, const In &in, uint32_t n, uint32_t k, uint32_t &kth, uint32_t &above,
                             uint32_t &want) {
    uint32_t(&hist)[TOPK_WARPS][256] = sh.hist;
    uint32_t *chosen = sh.chosen;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint32_t prefix = 0, mask = 0;
    above = 0;
    want = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (uint32_t i = threadIdx.x; i < TOPK_WARPS * 256; i += TOPK_THREADS) (&hist[0][0])[i] = 0;
        __syncthreads();
        // Each warp takes runs of 32 × TOPK_PER_THREAD elements: the same rounds for every lane.
        for (uint32_t base = warp * 32 * TOPK_PER_THREAD; base < n; base += TOPK_TILE) {
            float v[TOPK_PER_THREAD];
#pragma unroll
            for (int j = 0; j < TOPK_PER_THREAD; j++) {
                const uint32_t i = base + j * 32 + lane;
                v[j] = i < n ? in.value(i) : 0.f;
            }
#pragma unroll
            for (int j = 0; j < TOPK_PER_THREAD; j++) {
                const uint32_t key = order_key(v[j]);
                const bool in_play = base + j * 32 + lane < n && (key & mask) == prefix;
                count_bin(hist[warp], in_play, (key >> shift) & 0xffu, lane);
            }
        }
        __syncthreads();
        if (warp == 0) {
            // Lane l sums bins 8l .. 8l + 7 over the warps' histograms; a suffix scan over lanes says
            // which lane's bins hold the want-th largest in play, and that lane finds the bin.
            uint32_t count[8], mine = 0;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                count[j] = 0;
                for (int w = 0; w < TOPK_WARPS; w++) count[j] += hist[w][lane * 8 + j];
                mine += count[j];
            }
            uint32_t from_here = mine;  // keys in this lane's bins and every bin above
            for (int o = 1; o < 32; o *= 2) {
                const uint32_t up = __shfl_down_sync(0xffffffffu, from_here, o);
                if (lane + o < 32) from_here += up;
            }
            uint32_t higher = from_here - mine;
            if (higher < want && want <= from_here) {
                for (int j = 7; j >= 0; j--) {
                    if (higher + count[j] >= want) {
                        chosen[0] = lane * 8 + j;
                        chosen[1] = higher;
                        break;
                    }
                    higher += count[j];
                }
            }
        }
        __syncthreads();
        prefix |= chosen[0] << shift;
        mask |= 0xffu << shift;
        above += chosen[1];
        want -= chosen[1];
        __syncthreads();  // `chosen` and the histograms are rewritten by the next pass
    }
    kth = prefix;
}

// Inclusive prefix sums of two counts over the lanes of a warp, in place.
__device__ __forceinline__ void warp_scan(uint32_t &a, uint32_t &b, uint32_t lane) {
    for (int o = 1; o < 32; o *= 2) {
        const uint32_t x = __shfl_up_sync(0xffffffffu, a, o), y = __shfl_up_sync(0xffffffffu, b, o);
        if (lane >= o) {
            a += x;
            b += y;
        }
    }
}

// Exclusive prefix sums over the block's threads, in thread order, of two counts, and their block
// totals (every thread gets them). Two barriers.
__device__ __forceinline__ void block_scan(TopKShared &sh, uint32_t a, uint32_t b, uint32_t &before_a,
                                           uint32_t &before_b, uint32_t &total_a, uint32_t &total_b) {
    uint32_t *warp_a = sh.warp_a, *warp_b = sh.warp_b;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint32_t sa = a, sb = b;
    warp_scan(sa, sb, lane);
    if (lane == 31) {
        warp_a[warp] = sa;
        warp_b[warp] = sb;
    }
    __syncthreads();
    // Every warp scans the warps' totals itself (lane w holds warp w's).
    const uint32_t ca = warp_a[lane], cb = warp_b[lane];
    uint32_t wa = ca, wb = cb;
    warp_scan(wa, wb, lane);
    before_a = __shfl_sync(0xffffffffu, wa - ca, warp) + sa - a;
    before_b = __shfl_sync(0xffffffffu, wb - cb, warp) + sb - b;
    total_a = __shfl_sync(0xffffffffu, wa, 31);
    total_b = __shfl_sync(0xffffffffu, wb, 31);
    __syncthreads();  // the warps' totals are rewritten by the next scan
}

// Writes the k selected elements (keys above `kth`, then the first `want` of its equals) to ids and
// bits. grouped: those above first, then the equals, each in element order; else all k in element
// order.
template <class In>
__device__ void write_selection(TopKShared &sh, const In &in, uint32_t n, uint32_t kth, uint32_t above, uint32_t want,
                                uint32_t *ids, uint32_t *bits, bool grouped) {
    uint32_t done_greater = 0, done_equal = 0, done_taken = 0;
    for (uint32_t start = 0; start < n; start += TOPK_TILE) {
        const uint32_t first = start + threadIdx.x * TOPK_PER_THREAD;
        float v[TOPK_PER_THREAD];
        uint32_t greater = 0, equal = 0;  // bit j: element first + j
#pragma unroll
        for (int j = 0; j < TOPK_PER_THREAD; j++) {
            v[j] = first + j < n ? in.value(first + j) : 0.f;
            const uint32_t key = order_key(v[j]);
            greater |= (uint32_t)(first + j < n && key > kth) << j;
            equal |= (uint32_t)(first + j < n && key == kth) << j;
        }
        uint32_t at_greater, at_equal, tile_greater, tile_equal;
        block_scan(sh, __popc(greater), __popc(equal), at_greater, at_equal, tile_greater, tile_equal);
        at_greater += done_greater;
        at_equal += done_equal;
        if (grouped) {
#pragma unroll
            for (int j = 0; j < TOPK_PER_THREAD; j++) {
                if (greater >> j & 1) {
                    ids[at_greater] = in.id(first + j);
                    bits[at_greater++] = __float_as_uint(v[j]);
                } else if (equal >> j & 1) {
                    if (at_equal < want) {
                        ids[above + at_equal] = in.id(first + j);
                        bits[above + at_equal] = __float_as_uint(v[j]);
                    }
                    at_equal++;
                }
            }
        } else {
            // Those above, and the first `want` equals in element order, all in element order.
            uint32_t taken = greater;
#pragma unroll
            for (int j = 0; j < TOPK_PER_THREAD; j++) {
                if (equal >> j & 1) {
                    if (at_equal < want) taken |= 1u << j;
                    at_equal++;
                }
            }
            uint32_t at, unused, tile_taken, zero;
            block_scan(sh, __popc(taken), 0, at, unused, tile_taken, zero);
            at += done_taken;
#pragma unroll
            for (int j = 0; j < TOPK_PER_THREAD; j++) {
                if (taken >> j & 1) {
                    ids[at] = in.id(first + j);
                    bits[at++] = __float_as_uint(v[j]);
                }
            }
            done_taken += tile_taken;
        }
        done_greater += tile_greater;
        done_equal += tile_equal;
        if (done_greater == above && done_equal >= want) break;  // the same for every thread
    }
}

// Each slice's k largest: grid (rows, slices), slice s of a row covering [s·len, min((s+1)·len, V)),
// every slice at least k long. out: [rows, slices, 2, k] u32 (ids, then value bits), in index order.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS) top_k_slices_f32(const float *__restrict__ logits,
                                                                           uint32_t vocab, uint32_t k, uint32_t len,
                                                                           uint32_t *__restrict__ out) {
    follow_previous_kernel();
    __shared__ TopKShared sh;
    const RowSpan in{logits + (size_t)blockIdx.x * vocab, blockIdx.y * len};
    const uint32_t n = min(len, vocab - in.lo);
    uint32_t *ids = out + ((size_t)blockIdx.x * gridDim.y + blockIdx.y) * 2 * k;
    uint32_t kth, above, want;
    radix_select(sh, in, n, k, kth, above, want);
    write_selection(sh, in, n, kth, above, want, ids, ids + k, false);
}

// The k largest of each row: from the row itself (slices = 0) or from its slices' candidates
// (`top_k_slices_f32`'s output, [rows, slices, 2, k]). out: [rows, 2, k] u32. k <= the elements.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS) top_k_rows_f32(const float *__restrict__ logits,
                                                                         const uint32_t *__restrict__ slices,
                                                                         uint32_t vocab, uint32_t num_slices,
                                                                         uint32_t k, uint32_t *__restrict__ out) {
    follow_previous_kernel();
    __shared__ TopKShared sh;
    uint32_t *ids = out + (size_t)blockIdx.x * 2 * k, *bits = ids + k;
    uint32_t kth, above, want;
    if (num_slices == 0) {
        const RowSpan in{logits + (size_t)blockIdx.x * vocab, 0};
        radix_select(sh, in, vocab, k, kth, above, want);
        write_selection(sh, in, vocab, kth, above, want, ids, bits, true);
    } else {
        const SliceCandidates in{slices + (size_t)blockIdx.x * num_slices * 2 * k, k};
        radix_select(sh, in, num_slices * k, k, kth, above, want);
        write_selection(sh, in, num_slices * k, kth, above, want, ids, bits, true);
    }
}
