// kvcar/cuda/error.cuh — CUDA runtime errors become kvcar::error, naming the call that failed.
//
// Every CUDA call kvcar makes on the host goes through KVCAR_CUDA_CHECK, so a failure (out of
// memory, a bad launch, an earlier kernel's fault surfacing at the next call) is reported as
// "kvcar: CUDA error in cudaMalloc(&p, bytes) (kvcar/cuda/buffer.cuh:42): out of memory".
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/cuda/error.cuh needs nvcc"
#endif

#include <string>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"

namespace kvcar::gpu {

/// Throws kvcar::error unless `status` is cudaSuccess. `call` is the text of the call.
inline void check(cudaError_t status, const char* call, const char* file, int line) {
    if (status == cudaSuccess) return;
    throw error("kvcar: CUDA error in " + std::string(call) + " (" + file + ":" +
                std::to_string(line) + "): " + cudaGetErrorName(status) + ": " +
                cudaGetErrorString(status));
}

/// After a kernel launch: reports a bad launch configuration at once (the launch itself returns
/// nothing). Faults inside the kernel surface at the next synchronizing call.
inline void check_launch(const char* kernel, const char* file, int line) {
    const cudaError_t status = cudaGetLastError();
    if (status == cudaSuccess) return;
    throw error("kvcar: CUDA error launching " + std::string(kernel) + " (" + file + ":" +
                std::to_string(line) + "): " + cudaGetErrorName(status) + ": " +
                cudaGetErrorString(status));
}

/// The number of multiprocessors of the current device (looked up once per device).
inline int multiprocessor_count() {
    int device = 0;
    check(cudaGetDevice(&device), "cudaGetDevice", __FILE__, __LINE__);
    int count = 0;
    check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device),
          "cudaDeviceGetAttribute(MultiProcessorCount)", __FILE__, __LINE__);
    return count;
}

}  // namespace kvcar::gpu

/// Evaluates a CUDA runtime call and throws kvcar::error naming it when it fails.
#define KVCAR_CUDA_CHECK(call) ::kvcar::gpu::check((call), #call, __FILE__, __LINE__)
/// Checks the launch of `kernel_name` that was just made.
#define KVCAR_CUDA_CHECK_LAUNCH(kernel_name) \
    ::kvcar::gpu::check_launch(kernel_name, __FILE__, __LINE__)
