// top_k_rows: the k largest values of each row of a [R, V] f32 matrix with their indices, for top-k
// sampling on the device: a sampler with top-k (and penalties, which only lower logits) needs only
// those, 8·k bytes a row back to the host instead of 4·V. The order is IEEE total order (Rust's
// f32::total_cmp: -NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN) with ties to the lower index,
// the host sampler's, so the set is the one it would pick. One block per row: a radix select finds
// the k-th largest key in four 8-bit passes over the row (per-warp histograms, one atomic per
// distinct bin of a warp), then one ordered pass writes the values above it and then its first
// equals, each group in index order, as `ops::cpu::top_k` does.
#include <stdint.h>

#define TOPK_THREADS 1024
#define TOPK_WARPS (TOPK_THREADS / 32)  // = 32: lane w of a warp reads warp w's counts

// An unsigned key whose order is the float's total order.
__device__ __forceinline__ uint32_t order_key(float v) {
    const uint32_t b = __float_as_uint(v);
    return b ^ ((b >> 31) ? 0xffffffffu : 0x80000000u);
}

// Elements per thread in each round of a pass: 4 loads in flight, fewer rounds.
#define TOPK_PER_THREAD 4
#define TOPK_TILE (TOPK_THREADS * TOPK_PER_THREAD)

// Adds one to bin `bin` of this warp's histogram for every lane that has it (in_play), one atomic
// per distinct bin: a pass over logits in a narrow range puts most lanes in the same few bins.
__device__ __forceinline__ void count_bin(uint32_t *hist, bool in_play, uint32_t bin, uint32_t lane) {
    const uint32_t peers = __match_any_sync(0xffffffffu, in_play ? bin : 0xffffffffu);
    if (in_play && __ffs(peers) - 1 == (int)lane) atomicAdd(&hist[bin], (uint32_t)__popc(peers));
}

// out: [rows, 2, k] u32, the k indices then the k values' bits. k <= vocab.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS) top_k_rows_f32(const float *__restrict__ logits,
                                                                         uint32_t vocab, uint32_t k,
                                                                         uint32_t *__restrict__ out) {
    __shared__ uint32_t hist[TOPK_WARPS][256];  // one histogram per warp: fewer colliding atomics
    __shared__ uint32_t chosen[2];               // the pass's bin and how many keys lie above it
    __shared__ uint32_t warp_greater[TOPK_WARPS], warp_equal[TOPK_WARPS];
    const float *row = logits + (size_t)blockIdx.x * vocab;
    uint32_t *ids = out + (size_t)blockIdx.x * 2 * k, *values = ids + k;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    // Radix select, most significant byte first: keys matching `prefix` under `mask` are still in
    // play; `above` keys were left above them, and the k-th largest is the `want`-th in play. Each
    // warp takes runs of 32 × TOPK_PER_THREAD consecutive indices (the same rounds for every lane).
    uint32_t prefix = 0, mask = 0, above = 0, want = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (uint32_t i = threadIdx.x; i < TOPK_WARPS * 256; i += TOPK_THREADS) (&hist[0][0])[i] = 0;
        __syncthreads();
        for (uint32_t base = warp * 32 * TOPK_PER_THREAD; base < vocab; base += TOPK_TILE) {
            float v[TOPK_PER_THREAD];
#pragma unroll
            for (int j = 0; j < TOPK_PER_THREAD; j++) {
                const uint32_t i = base + j * 32 + lane;
                v[j] = i < vocab ? row[i] : 0.f;
            }
#pragma unroll
            for (int j = 0; j < TOPK_PER_THREAD; j++) {
                const uint32_t key = order_key(v[j]);
                const bool in_play = base + j * 32 + lane < vocab && (key & mask) == prefix;
                count_bin(hist[warp], in_play, (key >> shift) & 0xffu, lane);
            }
        }
        __syncthreads();
        if (warp == 0) {
            // Lane l sums bins 8l .. 8l + 7 over the warps' histograms; a suffix scan over lanes then
            // says which lane's bins hold the want-th largest, and that lane finds the bin.
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
        __syncthreads();  // `chosen` is rewritten by the next pass
    }

    // prefix is the k-th largest key: the `above` keys over it all go out, and the first `want` of
    // its equals. Tiles of TOPK_TILE consecutive indices, TOPK_PER_THREAD consecutive ones a thread,
    // keep both groups in index order.
    uint32_t done_greater = 0, done_equal = 0;
    for (uint32_t start = 0; start < vocab; start += TOPK_TILE) {
        const uint32_t first = start + threadIdx.x * TOPK_PER_THREAD;
        float v[TOPK_PER_THREAD];
        uint32_t greater = 0, equal = 0;  // bit j: element first + j
#pragma unroll
        for (int j = 0; j < TOPK_PER_THREAD; j++) {
            v[j] = first + j < vocab ? row[first + j] : 0.f;
            const uint32_t key = order_key(v[j]);
            greater |= (uint32_t)(first + j < vocab && key > prefix) << j;
            equal |= (uint32_t)(first + j < vocab && key == prefix) << j;
        }
        // Inclusive scans of the counts over the warp's lanes, then over the warps.
        const uint32_t ng = __popc(greater), ne = __popc(equal);
        uint32_t sg = ng, se = ne;
        for (int o = 1; o < 32; o *= 2) {
            const uint32_t a = __shfl_up_sync(0xffffffffu, sg, o), b = __shfl_up_sync(0xffffffffu, se, o);
            if (lane >= o) {
                sg += a;
                se += b;
            }
        }
        if (lane == 31) {
            warp_greater[warp] = sg;
            warp_equal[warp] = se;
        }
        __syncthreads();
        // Every warp scans the warps' totals itself (lane w holds warp w's).
        const uint32_t cg = warp_greater[lane], ce = warp_equal[lane];
        uint32_t wg = cg, we = ce;
        for (int o = 1; o < 32; o *= 2) {
            const uint32_t a = __shfl_up_sync(0xffffffffu, wg, o), b = __shfl_up_sync(0xffffffffu, we, o);
            if (lane >= o) {
                wg += a;
                we += b;
            }
        }
        uint32_t at_greater = done_greater + __shfl_sync(0xffffffffu, wg - cg, warp) + sg - ng;
        uint32_t at_equal = done_equal + __shfl_sync(0xffffffffu, we - ce, warp) + se - ne;
#pragma unroll
        for (int j = 0; j < TOPK_PER_THREAD; j++) {
            if (greater >> j & 1) {
                ids[at_greater] = first + j;
                values[at_greater++] = __float_as_uint(v[j]);
            }
            if (equal >> j & 1) {
                if (at_equal < want) {
                    ids[above + at_equal] = first + j;
                    values[above + at_equal] = __float_as_uint(v[j]);
                }
                at_equal++;
            }
        }
        done_greater += __shfl_sync(0xffffffffu, wg, 31);
        done_equal += __shfl_sync(0xffffffffu, we, 31);
        __syncthreads();  // the totals are rewritten by the next tile
        if (done_greater == above && done_equal >= want) break;
    }
}
