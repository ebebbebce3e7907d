// What the standalone kernel benchmarks (decode_bench.cpp, qgemv_bench.cpp) share: driver-API error
// checks, launches (optionally as programmatic dependents, as the engine launches bodega's kernels),
// graph-replay timing, uploads, f16 conversion and cubin loading.
#pragma once
#include <cuda.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#define CHECK(call)                                                                              \
    do {                                                                                         \
        CUresult r_ = (call);                                                                    \
        if (r_ != CUDA_SUCCESS) {                                                                \
            const char *s_;                                                                      \
            cuGetErrorString(r_, &s_);                                                           \
            fprintf(stderr, "bench: %s:%d: %s: %s\n", __FILE__, __LINE__, #call, s_);            \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

// Bytes of input copies a benchmark rotates through, so that nothing is timed from the 50 MB L2.
inline const size_t ROTATION_BYTES = 256u << 20;
// Calls captured in one timed graph.
inline const int CALLS = 20;

// One launch of `f`; with `dependent`, allowed to start while the kernel before it finishes.
inline void launch_kernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned threads, unsigned smem,
                          CUstream st, void **args, bool dependent) {
    CUlaunchAttribute attr;
    memset(&attr, 0, sizeof attr);
    attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDimX = gx;
    cfg.gridDimY = gy;
    cfg.gridDimZ = gz;
    cfg.blockDimX = threads;
    cfg.blockDimY = 1;
    cfg.blockDimZ = 1;
    cfg.sharedMemBytes = smem;
    cfg.hStream = st;
    cfg.attrs = &attr;
    cfg.numAttrs = dependent ? 1 : 0;
    CHECK(cuLaunchKernelEx(&cfg, f, args, nullptr));
}

// Median µs per call of a graph of CALLS calls of `launch(i)` (call i reads input copy i).
inline double time_calls(CUstream st, const std::function<void(int)> &launch) {
    launch(0);
    CHECK(cuStreamSynchronize(st));
    CHECK(cuStreamBeginCapture(st, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    for (int i = 0; i < CALLS; i++) launch(i);
    CUgraph graph;
    CHECK(cuStreamEndCapture(st, &graph));
    CUgraphExec exec;
    CHECK(cuGraphInstantiate(&exec, graph, 0));
    for (int w = 0; w < 50; w++) CHECK(cuGraphLaunch(exec, st));
    CHECK(cuStreamSynchronize(st));
    CUevent start, end;
    CHECK(cuEventCreate(&start, 0));
    CHECK(cuEventCreate(&end, 0));
    std::vector<float> us;
    for (int r = 0; r < 9; r++) {
        CHECK(cuEventRecord(start, st));
        CHECK(cuGraphLaunch(exec, st));
        CHECK(cuEventRecord(end, st));
        CHECK(cuEventSynchronize(end));
        float ms;
        CHECK(cuEventElapsedTime(&ms, start, end));
        us.push_back(ms * 1000.f / CALLS);
    }
    std::sort(us.begin(), us.end());
    CHECK(cuGraphExecDestroy(exec));
    CHECK(cuGraphDestroy(graph));
    CHECK(cuEventDestroy(start));
    CHECK(cuEventDestroy(end));
    return us[us.size() / 2];
}

inline CUdeviceptr upload(const void *data, size_t bytes) {
    CUdeviceptr p;
    CHECK(cuMemAlloc(&p, bytes));
    CHECK(cuMemcpyHtoD(p, data, bytes));
    return p;
}

// f32 → f16 bits, round to nearest (normal range: the inputs are in [-1, 1]).
inline uint16_t to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000, mantissa = x & 0x7fffff;
    const int exponent = (int)((x >> 23) & 0xff) - 127 + 15;
    if (exponent <= 0) return (uint16_t)sign;
    return (uint16_t)((sign | ((uint32_t)exponent << 10) | (mantissa >> 13)) + ((mantissa >> 12) & 1));
}

inline CUmodule load_module(const char *path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) {
        fprintf(stderr, "bench: cannot read %s\n", path);
        exit(1);
    }
    std::stringstream image;
    image << file.rdbuf();
    const std::string bytes = image.str();
    CUmodule mod;
    CHECK(cuModuleLoadData(&mod, bytes.data()));
    return mod;
}

// Device 0 with its primary context current, and a stream of its own to time on.
struct Gpu {
    CUdevice dev;
    CUstream stream;
};
inline Gpu open_gpu() {
    Gpu gpu;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&gpu.dev, 0));
    CUcontext ctx;
    CHECK(cuDevicePrimaryCtxRetain(&ctx, gpu.dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuStreamCreate(&gpu.stream, CU_STREAM_NON_BLOCKING));
    return gpu;
}
