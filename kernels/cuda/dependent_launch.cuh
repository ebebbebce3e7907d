// Programmatic dependent launch (sm_90 and newer): src/ops/cuda.rs launches bodega's kernels with
// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, so that a kernel's blocks may be scheduled
// while the kernel before it in the stream finishes, hiding ~1 µs of launch and ramp-up at each
// boundary between them (docs/perf.md). The contract: every kernel calls `follow_previous_kernel`
// before it reads or writes any memory but the step's attention metadata (block tables, lengths:
// uploaded before the step's first kernel), which the decode kernels read first, and, in the
// tensor-core decode kernel, a decoding sequence's keys and values before its newest: the engine
// wrote those in earlier steps, and this step's cache write (the kernel before) only the newest.
// Whatever runs `paged_attention` must keep that: no kernel right before it writes older keys.
#pragma once

// Waits until the previous kernel in the stream has completed and its writes are visible (at once
// when this kernel was launched without the attribute, or on an older GPU), then lets the next
// kernel launch: its blocks can become resident while this one runs, and wait in turn.
__device__ __forceinline__ void follow_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
