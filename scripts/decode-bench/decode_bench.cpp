// Times one of bodega's f16 decode attention kernels (KERNEL from CUBIN, at the head size its name
// gives, then `paged_attention_reduce` from REDUCE_CUBIN) outside the engine, so that several kernels
// and versions can be compared in one device call (scripts/decode-bench.sh); or, with --stream, the
// floor that no kernel beats: one that only reads as many bytes.
//
//   decode_bench CUBIN KERNEL DYN_SMEM REDUCE_CUBIN [ENTRY]
//                  Llama-3.2-1B's attention (32 query heads, 8 KV heads); ENTRY: words per decoding
//                  sequence in the kernel's decode list (3: sequence, context length, query row, as
//                  `DECODE_ENTRY` in kernels/cuda/attention.cuh; 1: the sequence, before 2026-11-28)
//   decode_bench --stream CUBIN                       stream_read.cu over 8 MiB .. 512 MiB
//
// With DECODE_BENCH_PDL=1 both kernels launch as the engine launches them, as programmatic
// dependents (src/ops/cuda_launch.rs): only for revisions whose kernels start with
// `follow_previous_kernel` (kernels/cuda/dependent_launch.cuh; without it they would race).
//
// Every timing is the median of 9 replays of a CUDA graph of 20 calls, after 50 warm-up replays;
// consecutive calls read different copies of the inputs, 256 MiB or more in all, so that nothing is
// timed from the 50 MB L2. Driver API only: the cubins are loaded at run time.
#include <cmath>
#include <random>

#include "bench_util.h"

// Same layout as `KernelParams` in src/ops/cuda.rs and `AttnParams` in kernels/cuda/attention.cuh.
struct AttnParams {
    uint32_t num_heads, num_kv_heads, block_size, max_blocks, window;
    float scale;
    uint32_t heads_per_chunk, num_chunks, num_partitions, num_tokens;
};

// The decode kernel and its reduction over `seqs` sequences of `ctx` keys each.
// `g`: query heads per block (`_g4`: 4; `_g8` and the tensor-core kernel: 8).
static void time_decode(CUfunction decode, uint32_t g, uint32_t dim, CUmodule reduce_mod, int dyn_smem, uint32_t entry,
                        CUstream st, uint32_t seqs, uint32_t ctx, std::mt19937 &rng) {
    const uint32_t heads = 32, kv_heads = 8, block = 16;
    // As src/ops/cuda.rs picks it; where that is `_c8_s4` (a row's columns over 4 blocks), `_c8`'s
    // time is printed beside.
    const uint32_t rows = seqs * heads, partitions = ctx / 256;
    const bool sliced = rows <= 64 && partitions <= 64, widest = rows <= 64 && partitions > 8 * 256 / (dim / 4);
    CUfunction reduce, unsliced = nullptr;
    const uint32_t slices = sliced ? 4 : 1;
    CHECK(cuModuleGetFunction(&reduce, reduce_mod,
                              sliced   ? "paged_attention_reduce_c8_s4"
                              : widest ? "paged_attention_reduce_c32"
                              : rows <= 256 ? "paged_attention_reduce_c8"
                                            : "paged_attention_reduce_c2"));
    if (sliced) CHECK(cuModuleGetFunction(&unsliced, reduce_mod, "paged_attention_reduce_c8"));
    const uint32_t blocks_per_seq = ctx / block;
    const size_t cache_elems = (size_t)seqs * ctx * kv_heads * dim, bytes = 2 * cache_elems * 2;
    std::uniform_real_distribution<float> uniform(-1.f, 1.f);
    std::vector<uint16_t> cache(cache_elems);
    for (auto &h : cache) h = to_f16(uniform(rng));
    const int copies = (int)(ROTATION_BYTES / bytes + 1);
    std::vector<CUdeviceptr> k(copies), v(copies);
    for (int c = 0; c < copies; c++) {
        k[c] = upload(cache.data(), cache_elems * 2);
        v[c] = upload(cache.data(), cache_elems * 2);
    }
    std::vector<uint32_t> table(seqs * blocks_per_seq), cu(seqs + 1), lens(seqs, ctx), decodes;
    for (uint32_t i = 0; i < table.size(); i++) table[i] = i;
    // Shuffled (a long-running server's scattered blocks) unless DECODE_BENCH_TABLES=ordered (each
    // sequence's blocks consecutive, as a fresh engine allocates them).
    const char *tables = getenv("DECODE_BENCH_TABLES");
    if (!tables || std::string(tables) != "ordered") std::shuffle(table.begin(), table.end(), rng);
    for (uint32_t s = 0; s <= seqs; s++) cu[s] = s;
    for (uint32_t s = 0; s < seqs; s++) {
        const uint32_t words[] = {s, ctx, s};  // sequence, context length, query row
        decodes.insert(decodes.end(), words, words + entry);
    }
    std::vector<float> q(seqs * heads * dim);
    for (auto &x : q) x = uniform(rng);
    CUdeviceptr table_d = upload(table.data(), table.size() * 4), cu_d = upload(cu.data(), cu.size() * 4),
                lens_d = upload(lens.data(), lens.size() * 4), dec_d = upload(decodes.data(), decodes.size() * 4),
                q_d = upload(q.data(), q.size() * 4);
    // Partitions as `partitions` in src/ops/cuda.rs computes them for a table this wide.
    const uint32_t keys = blocks_per_seq * block;
    uint32_t parts = std::max({(keys + 255) / 256, keys > 256 ? (std::min(keys, 1024u) + 63) / 64 : 0u, 1u});
    // Every row's partial results for the reduction: its partitions.
    std::vector<uint32_t> row_partials(seqs, parts);
    CUdeviceptr out, part_acc, part_ml, partials_d = upload(row_partials.data(), row_partials.size() * 4);
    CHECK(cuMemAlloc(&out, q.size() * 4));
    CHECK(cuMemAlloc(&part_acc, (size_t)parts * q.size() * 4));
    CHECK(cuMemAlloc(&part_ml, (size_t)parts * seqs * heads * 2 * 4));
    AttnParams p{heads, kv_heads, block, blocks_per_seq, 0, 0.125f, 0, 0, parts, seqs};
    uint32_t tokens = seqs, num_heads = heads, head_dim = dim;
    const char *pdl = getenv("DECODE_BENCH_PDL");
    const bool dependent = pdl && std::string(pdl) == "1";
    // `red`: the reduction to launch after the decode kernel (none: the decode kernel alone).
    auto launch = [&](int i, CUfunction red, uint32_t red_slices) {
        void *args[] = {&q_d, &k[i % copies], &v[i % copies], &table_d, &cu_d, &lens_d, &dec_d, &out, &part_acc, &part_ml, &p};
        launch_kernel(decode, seqs, kv_heads * ((heads / kv_heads + g - 1) / g), parts, 128, dyn_smem, st, args, dependent);
        if (red && parts > 1) {
            void *rargs[] = {&part_acc, &part_ml, &partials_d, &out, &tokens, &num_heads, &head_dim};
            launch_kernel(red, tokens, num_heads, red_slices, 256 / red_slices, 0, st, rargs, dependent);
        }
    };
    // The output's sum and absolute sum: equal checksums, equal outputs.
    auto checksum = [&]() {
        std::vector<float> result(q.size());
        CHECK(cuMemcpyDtoH(result.data(), out, result.size() * 4));
        double sum = 0, abs_sum = 0;
        for (float x : result) sum += x, abs_sum += fabs(x);
        return std::make_pair(sum, abs_sum);
    };
    const double alone = time_calls(st, [&](int i) { launch(i, nullptr, 1); });
    std::string beside;
    if (unsliced) {
        const double t = time_calls(st, [&](int i) { launch(i, unsliced, 1); });
        const auto [sum, abs_sum] = checksum();
        char text[128];
        snprintf(text, sizeof text, "  (unsliced %7.1f us, checksum %.6e %.6e)", t, sum, abs_sum);
        beside = text;
    }
    const double both = time_calls(st, [&](int i) { launch(i, reduce, slices); });
    const auto [sum, abs_sum] = checksum();
    printf("%3u x %5u keys (%2d copies): decode %7.1f us, + reduce %7.1f us = %5.0f GB/s  checksum %.6e %.6e%s\n", seqs,
           ctx, copies, alone, both, bytes / both / 1e3, sum, abs_sum, beside.c_str());
    for (int c = 0; c < copies; c++) {
        CHECK(cuMemFree(k[c]));
        CHECK(cuMemFree(v[c]));
    }
    for (CUdeviceptr d : {table_d, cu_d, lens_d, dec_d, q_d, out, part_acc, part_ml, partials_d}) CHECK(cuMemFree(d));
}

// stream_read over n bytes for n from 8 MiB to 512 MiB, at 4 and 16 blocks of 256 threads per SM.
static void time_stream(CUmodule mod, CUstream st, int sms) {
    CUfunction kernel;
    CHECK(cuModuleGetFunction(&kernel, mod, "stream_read"));
    CUdeviceptr out;
    CHECK(cuMemAlloc(&out, (size_t)sms * 16 * 256 * 4));
    for (size_t n = 8u << 20; n <= (512u << 20); n *= 2) {
        const int copies = (int)(ROTATION_BYTES / n + 1);
        std::vector<CUdeviceptr> bufs(copies);
        for (auto &b : bufs) {
            CHECK(cuMemAlloc(&b, n));
            CHECK(cuMemsetD8(b, 7, n));
        }
        uint64_t n16 = n / 16;
        for (int per_sm : {4, 16}) {
            const double us = time_calls(st, [&](int i) {
                void *args[] = {&bufs[i % copies], &n16, &out};
                CHECK(cuLaunchKernel(kernel, sms * per_sm, 1, 1, 256, 1, 1, 0, st, args, nullptr));
            });
            printf("stream_read %4zu MiB, %2d blocks per SM: %7.1f us = %5.0f GB/s\n", n >> 20, per_sm, us, n / us / 1e3);
        }
        for (auto &b : bufs) CHECK(cuMemFree(b));
    }
    CHECK(cuMemFree(out));
}

int main(int argc, char **argv) {
    const bool stream = argc == 3 && std::string(argv[1]) == "--stream";
    if (!stream && argc != 5 && argc != 6) {
        fprintf(stderr, "usage: decode_bench CUBIN KERNEL DYN_SMEM REDUCE_CUBIN [ENTRY] | decode_bench --stream CUBIN\n");
        return 2;
    }
    const Gpu gpu = open_gpu();
    const CUdevice dev = gpu.dev;
    const CUstream st = gpu.stream;
    const CUmodule mod = load_module(stream ? argv[2] : argv[1]);
    int sms;
    CHECK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    if (stream) {
        time_stream(mod, st, sms);
        return 0;
    }
    const std::string kernel = argv[2];
    const int dyn_smem = atoi(argv[3]);
    const uint32_t entry = argc == 6 ? (uint32_t)atoi(argv[5]) : 3;
    const CUmodule reduce_mod = load_module(argv[4]);
    CUfunction decode;
    CHECK(cuModuleGetFunction(&decode, mod, kernel.c_str()));
    CHECK(cuFuncSetAttribute(decode, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dyn_smem));
    const uint32_t g = kernel.find("_g4") != std::string::npos ? 4 : 8;
    const uint32_t dim = (uint32_t)atoi(kernel.c_str() + kernel.rfind("_d") + 2);  // `…_d64`, `…_d128_g8`
    int regs, per_sm;
    CHECK(cuFuncGetAttribute(&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, decode));
    CHECK(cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode, 128, dyn_smem));
    printf("%s: %s, %d registers, %d B dynamic shared memory, %d blocks per SM\n", argv[1], kernel.c_str(), regs,
           dyn_smem, per_sm);
    std::mt19937 rng(7);  // the same inputs for every cubin: equal checksums mean equal outputs
    const uint32_t shapes[][2] = {{1, 256},  {1, 1024}, {1, 4096},  {1, 16384}, {1, 32768},
                                  {1, 65536}, {1, 131072}, {4, 4096}, {16, 4096}, {64, 4096}, {64, 1024}, {16, 8192}, {4, 32768}};
    for (const auto &shape : shapes) time_decode(decode, g, dim, reduce_mod, dyn_smem, entry, st, shape[0], shape[1], rng);
    return 0;
}
