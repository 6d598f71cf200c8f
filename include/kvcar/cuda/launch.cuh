// kvcar/cuda/launch.cuh — launch configurations checked against the limits of the hardware, so
// that a shape past a limit is a kvcar::error naming the kernel and the value before anything is
// enqueued, not a cudaErrorInvalidValue after it.
//
// The limits (CUDA C++ Programming Guide, "Compute Capabilities", the same for every GPU kvcar
// builds for): gridDim.x <= 2^31 − 1, gridDim.y and gridDim.z <= 65535; a block gets more than
// 48 KB of dynamic shared memory only after cudaFuncSetAttribute raises its limit, and never
// more than the device's opt-in limit (227 KB on sm_90).
//
// kvcar puts the work that grows with the batch (items, query rows) on grid x, or cuts it into
// launches of at most max_grid_yz items where a kernel keeps it on y (decode_attention slices its
// batch); the y and z dimensions carry bounded things: heads, groups, column blocks.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/cuda/launch.cuh needs nvcc"
#endif

#include <cstddef>
#include <string>
#include <utility>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"

namespace kvcar::gpu {

/// Largest gridDim.x of every CUDA GPU kvcar builds for.
inline constexpr long long max_grid_x = 2147483647;
/// Largest gridDim.y and gridDim.z.
inline constexpr long long max_grid_yz = 65535;
/// Dynamic shared memory a block gets without cudaFuncSetAttribute.
inline constexpr std::size_t default_dynamic_smem = 48 * 1024;

/// The grid (x, y, z) after checking each dimension against the hardware's limits; throws
/// kvcar::error naming `kernel` and the dimension otherwise. A dimension of 0 is a launch with
/// nothing to do, which the caller must not make: it is an error too.
inline dim3 checked_grid(long long x, long long y, long long z, const char* kernel) {
    auto check_dim = [&](long long v, long long limit, const char* name) {
        require(v >= 1 && v <= limit,
                std::string("kvcar: ") + kernel + ": grid dimension " + name + " = " +
                    std::to_string(v) + " is outside [1, " + std::to_string(limit) + "]");
    };
    check_dim(x, max_grid_x, "x");
    check_dim(y, max_grid_yz, "y");
    check_dim(z, max_grid_yz, "z");
    return dim3(unsigned(x), unsigned(y), unsigned(z));
}

/// The device's opt-in limit of dynamic shared memory per block (current device).
inline int max_dynamic_smem_optin() {
    int device = 0, bytes = 0;
    KVCAR_CUDA_CHECK(cudaGetDevice(&device));
    KVCAR_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return bytes;
}

/// Lets `kernel` take `bytes` of dynamic shared memory: raises its limit when bytes exceed the
/// default 48 KB; throws kvcar::error naming `name` when bytes exceed `optin_limit` (the device's
/// opt-in limit, e.g. attention_workspace::max_shared_bytes()).
template <class Kernel>
void allow_dynamic_smem(Kernel* kernel, std::size_t bytes, int optin_limit, const char* name) {
    require(bytes <= std::size_t(optin_limit),
            std::string("kvcar: ") + name + " needs " + std::to_string(bytes) +
                " bytes of shared memory, more than the device's " + std::to_string(optin_limit));
    if (bytes > default_dynamic_smem) {
        KVCAR_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              int(bytes)));
    }
}

// Programmatic dependent launch (sm_90 and later). A decode step at batch 1 is three or four
// short kernels in a row (projection, split, merge, lift) of 5-30 µs each, and between two
// dependent kernels the GPU idles while the second one is launched and its CTAs are placed: a
// few µs, a large share of such a step. A kernel launched with `overlap` may be placed as soon as
// every CTA of the kernel before it on the stream has started (allow_dependent_grids) and waits
// in wait_for_prior_grids until that kernel has finished and its writes are visible; the launch
// latency overlaps the previous kernel's work instead of following it. Only a kernel that calls
// wait_for_prior_grids before its first memory access may be launched with overlap. The decode
// paths use it only when attention_workspace::tune.dependent_launch is set: it is not yet
// measured or tested on a GPU (bench/decode_bench --dependent-launch compares both).

/// Waits until every grid this one depends on has finished and its writes are visible (a no-op
/// below sm_90 and for a kernel launched without overlap).
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// Lets the kernel after this one on the stream be placed (it still waits for this one's end in
/// wait_for_prior_grids); called by every CTA once it has started.
__device__ __forceinline__ void allow_dependent_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/// Whether the current device runs programmatic dependent launches (compute capability 9.0+).
inline bool dependent_launch_supported() {
    int device = 0, major = 0;
    KVCAR_CUDA_CHECK(cudaGetDevice(&device));
    KVCAR_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    return major >= 9;
}

/// Where and how a kernel runs: grid, block, dynamic shared memory, stream, and whether it may
/// overlap the kernel before it (see above; the kernel must wait_for_prior_grids first).
struct launch_shape {
    dim3 grid;                      ///< blocks (gpu::checked_grid)
    dim3 block;                     ///< threads per block
    std::size_t smem = 0;           ///< dynamic shared memory, bytes
    cudaStream_t stream = nullptr;  ///< where it is enqueued
    bool overlap = false;           ///< programmatic dependent launch (see above)
};

/// Launches kernel(args...) with `shape`; throws kvcar::error naming `name` when the launch fails.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), const launch_shape& shape, const char* name,
            Args&&... args) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = shape.grid;
    config.blockDim = shape.block;
    config.dynamicSmemBytes = shape.smem;
    config.stream = shape.stream;
    config.attrs = attr;
    config.numAttrs = shape.overlap ? 1 : 0;
    const cudaError_t status = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
    if (status != cudaSuccess) {
        (void)cudaGetLastError();  // reported here; the next check must not see it again
        throw error("kvcar: CUDA error launching " + std::string(name) + ": " +
                    cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
    }
}

}  // namespace kvcar::gpu
