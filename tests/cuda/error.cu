// Tests for kvcar/cuda/error.cuh: CUDA failures become kvcar::error naming the call.
#include "catch.hpp"

#include <kvcar/cuda/error.cuh>

#include <cstddef>

namespace {
__global__ void noop() {}
}  // namespace

TEST_CASE("gpu::check passes success and names the failing call", "[cuda]") {
    REQUIRE_NOTHROW(kvcar::gpu::check(cudaSuccess, "cudaFree(p)", "f.cu", 1));
    KVCAR_REQUIRE_ERROR(kvcar::gpu::check(cudaErrorMemoryAllocation, "cudaMalloc(&p, n)",
                                           "f.cu", 7),
                        "CUDA error in cudaMalloc(&p, n) (f.cu:7)");
    KVCAR_REQUIRE_ERROR(kvcar::gpu::check(cudaErrorMemoryAllocation, "x", "f.cu", 7),
                        "cudaErrorMemoryAllocation");
}

TEST_CASE("KVCAR_CUDA_CHECK throws on a real failure with the call's text", "[cuda]") {
    void* p = nullptr;
    // An absurd size: cudaMalloc fails with cudaErrorMemoryAllocation (not a sticky error).
    KVCAR_REQUIRE_ERROR(KVCAR_CUDA_CHECK(cudaMalloc(&p, std::size_t(1) << 60)),
                        "cudaMalloc(&p, std::size_t(1) << 60)");
    (void)cudaGetLastError();  // clear it for the next test
    REQUIRE(p == nullptr);
    REQUIRE_NOTHROW(KVCAR_CUDA_CHECK(cudaMalloc(&p, 256)));
    REQUIRE_NOTHROW(KVCAR_CUDA_CHECK(cudaFree(p)));
}

TEST_CASE("KVCAR_CUDA_CHECK_LAUNCH reports a bad launch configuration", "[cuda]") {
    noop<<<1, 4096>>>();  // more threads than a block may have
    KVCAR_REQUIRE_ERROR(KVCAR_CUDA_CHECK_LAUNCH("noop"), "launching noop");
    noop<<<1, 32>>>();
    REQUIRE_NOTHROW(KVCAR_CUDA_CHECK_LAUNCH("noop"));
    REQUIRE_NOTHROW(KVCAR_CUDA_CHECK(cudaDeviceSynchronize()));
}

TEST_CASE("multiprocessor_count reads the device", "[cuda]") {
    REQUIRE(kvcar::gpu::multiprocessor_count() > 0);
}
