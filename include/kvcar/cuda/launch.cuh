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

}  // namespace kvcar::gpu
