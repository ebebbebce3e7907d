// Times bodega's Q8_0 GEMV (kernels/cuda/qgemv.cu) outside the engine, in each launch shape the cubin
// holds (`qgemv_q8_0_w{4,8,16}_d2`, and at one row of x its `_m1` variant where the cubin has one, as
// the engine launches; at 16 rows its `_n16` variants where the cubin has them and they fit, two
// chunks in flight a warp and one (`_d1_n16`), and two launches of 8 rows beside), on
// Llama-3.2-1B's and Llama-3.1-8B's decode matrices, so that
// shapes and versions can be compared in one device call (scripts/decode-bench.sh qgemv). Each
// call reads the next of >= 256 MiB of weight copies, as a decode step reads each matrix once from
// memory, and launches as the engine launches it: a programmatic dependent, with the grid of
// resident blocks and the shared memory src/ops/cuda.rs gives it (`QgemvShape::shared_bytes`: two
// sum buffers where they fit, else one). The result of the first 2,048 rows is checked against a
// CPU reference that quantizes x as the kernel does (relative to the largest output: ~1e-7 when right).
//
//   qgemv_bench CUBIN
#include <cmath>
#include <random>

#include "bench_util.h"

struct Matrix {
    const char *name;
    uint32_t n, k;
    bool all_rows;  // 1, 2, 4, 8 and 16 rows of x, else 1, 8 and 16
};

// Shared memory of a launch (src/ops/cuda.rs, `QgemvShape::shared_bytes`).
static unsigned shared_bytes(unsigned warps, unsigned depth, unsigned m, unsigned k, unsigned sum_buffers) {
    const unsigned chunks_per_group = (k / 256 + warps - 1) / warps, cols = (m + 7) / 8 * 8;
    return warps * (depth * 16 * 272 + chunks_per_group * (m * 288 + 32 * cols) + sum_buffers * 16 * cols * 4);
}

// y[c][r] for Q8_0 rows `w` and x quantized 32 at a time (scale max |x| / 127, round half away from
// zero), over the first `rows` rows; returns the largest |difference| over the largest |reference|.
static double check(const std::vector<uint8_t> &w, const std::vector<float> &x, const std::vector<float> &y,
                    uint32_t m, uint32_t n, uint32_t k, uint32_t rows) {
    const size_t row_bytes = k / 32 * 34;
    std::vector<float> scales(x.size() / 32);
    std::vector<int> quants(x.size());
    for (size_t b = 0; b < scales.size(); b++) {
        float most = 0;
        for (int i = 0; i < 32; i++) most = std::max(most, std::fabs(x[b * 32 + i]));
        const float d = most / 127.f, inv = d != 0.f ? 1.f / d : 0.f;
        scales[b] = d;
        for (int i = 0; i < 32; i++) quants[b * 32 + i] = (int)std::round(x[b * 32 + i] * inv);
    }
    double most = 0, error = 0;
    for (uint32_t r = 0; r < std::min(n, rows); r++)
        for (uint32_t c = 0; c < m; c++) {
            double sum = 0;
            for (uint32_t b = 0; b < k / 32; b++) {
                const uint8_t *block = &w[r * row_bytes + b * 34];
                uint16_t h;
                memcpy(&h, block, 2);
                const float d = std::ldexp((float)(1024 + (h & 1023)), (int)((h >> 10) & 31) - 25);  // normal f16
                int dot = 0;
                for (int i = 0; i < 32; i++) dot += (int8_t)block[2 + i] * quants[c * k + b * 32 + i];
                sum += (double)d * scales[c * k / 32 + b] * dot;
            }
            most = std::max(most, std::fabs(sum));
            error = std::max(error, std::fabs(sum - y[(size_t)c * n + r]));
        }
    return error / most;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: qgemv_bench CUBIN\n");
        return 2;
    }
    const Gpu gpu = open_gpu();
    const CUdevice dev = gpu.dev;
    const CUstream st = gpu.stream;
    const CUmodule mod = load_module(argv[1]);
    int sms, limit;
    CHECK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    CHECK(cuDeviceGetAttribute(&limit, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev));
    const Matrix matrices[] = {{"1B Q/K/V", 3072, 2048, true},       {"1B O", 2048, 2048, true},
                               {"1B gate/up", 16384, 2048, true},    {"1B down", 2048, 8192, true},
                               {"1B output", 128256, 2048, true},    {"8B Q/K/V", 6144, 4096, false},
                               {"8B O", 4096, 4096, false},          {"8B gate/up", 28672, 4096, false},
                               {"8B down", 4096, 14336, false},      {"8B output", 128256, 4096, false}};
    std::mt19937 rng(5);  // the same inputs for every cubin
    std::uniform_real_distribution<float> uniform(-1.f, 1.f);
    for (unsigned warps : {4u, 8u, 16u}) {
        const std::string name = "qgemv_q8_0_w" + std::to_string(warps) + "_d2";
        const std::string shallow_name = "qgemv_q8_0_w" + std::to_string(warps) + "_d1_n16";
        CUfunction many, one, two_tiles, shallow;  // shallow: two tiles, one chunk in flight a warp
        if (cuModuleGetFunction(&many, mod, name.c_str()) != CUDA_SUCCESS) continue;
        if (cuModuleGetFunction(&one, mod, (name + "_m1").c_str()) != CUDA_SUCCESS) one = many;
        if (cuModuleGetFunction(&two_tiles, mod, (name + "_n16").c_str()) != CUDA_SUCCESS) two_tiles = nullptr;
        if (cuModuleGetFunction(&shallow, mod, shallow_name.c_str()) != CUDA_SUCCESS) shallow = nullptr;
        for (CUfunction f : {many, one, two_tiles, shallow})
            if (f) CHECK(cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, limit));
        for (const Matrix &mat : matrices) {
            const size_t row_bytes = mat.k / 32 * 34, bytes = row_bytes * mat.n;
            std::vector<uint8_t> w(bytes);
            for (auto &b : w) b = (uint8_t)(rng() & 0xff);
            for (size_t b = 0; b < bytes / 34; b++) {
                const uint16_t d = to_f16(0.001f + 0.01f * (uniform(rng) + 1.f));
                memcpy(&w[b * 34], &d, 2);
            }
            const int copies = (int)(ROTATION_BYTES / bytes + 1);
            std::vector<CUdeviceptr> wd(copies);
            for (auto &p : wd) p = upload(w.data(), bytes);
            // m rows of x in launches of `per_launch` rows (16 rows: one two-tile launch, 2 or 1 chunks
            // in flight a warp, or two launches of 8).
            struct Run {
                uint32_t m, per_launch, depth;
            };
            for (auto [m, per_launch, depth] :
                 {Run{1, 1, 2}, {2, 2, 2}, {4, 4, 2}, {8, 8, 2}, {16, 16, 2}, {16, 16, 1}, {16, 8, 2}}) {
                if (!mat.all_rows && m != 1 && m < 8) continue;
                const CUfunction f = per_launch == 1 ? one : per_launch <= 8 ? many : depth == 2 ? two_tiles : shallow;
                if (!f) continue;
                const std::string label = depth == 2 ? name : shallow_name;
                uint32_t sum_buffers = 2, n = mat.n, k = mat.k;
                if (shared_bytes(warps, depth, per_launch, k, 2) > (unsigned)limit) sum_buffers = 1;
                const unsigned smem = shared_bytes(warps, depth, per_launch, k, sum_buffers);
                if (smem > (unsigned)limit) {
                    printf("%-21s %-10s %u rows: %u bytes of shared memory do not fit\n", label.c_str(), mat.name, m, smem);
                    continue;
                }
                std::vector<float> x(m * k);
                for (auto &v : x) v = uniform(rng);
                const CUdeviceptr xd = upload(x.data(), x.size() * 4);
                CUdeviceptr yd;
                CHECK(cuMemAlloc(&yd, (size_t)m * n * 4));
                int resident;
                CHECK(cuOccupancyMaxActiveBlocksPerMultiprocessor(&resident, f, 32 * warps, smem));
                const unsigned grid = std::min((n + 15) / 16, (unsigned)(std::max(resident, 1) * sms));
                const double us = time_calls(st, [&](int i) {
                    for (uint32_t first = 0; first < m; first += per_launch) {
                        CUdeviceptr x_rows = xd + (size_t)first * k * 4, y_rows = yd + (size_t)first * n * 4;
                        uint32_t rows = per_launch;
                        void *args[] = {&wd[i % copies], &x_rows, &y_rows, &rows, &n, &k, &sum_buffers};
                        launch_kernel(f, grid, 1, 1, 32 * warps, smem, st, args, true);
                    }
                });
                std::vector<float> y((size_t)m * n);
                CHECK(cuMemcpyDtoH(y.data(), yd, y.size() * 4));
                printf("%-21s %-10s %2u rows%s: %7.1f us %5.0f GB/s  (%2d copies, %d blocks per SM, %u sum buffers)  "
                       "error %.1e\n",
                       label.c_str(), mat.name, m, per_launch < m ? " (launches of 8)" : "", us, bytes / us / 1e3,
                       copies, resident, sum_buffers, check(w, x, y, m, n, k, 2048));
                CHECK(cuMemFree(xd));
                CHECK(cuMemFree(yd));
            }
            for (CUdeviceptr p : wd) CHECK(cuMemFree(p));
        }
    }
    return 0;
}
