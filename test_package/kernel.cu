// CUDA consumer (Conan test_package and tests/package/consumer): a kernel of its own decodes
// records through a kvcar codec. It includes a .cuh and uses C++20, which must come with the
// kvcar::cuda target alone (no -std flag in the consumer's CMakeLists).
#include <kvcar/cuda/error.cuh>
#include <kvcar/kvcar.hpp>

#include <concepts>

#include <cstdio>
#include <cuda_runtime.h>

static_assert(std::floating_point<float>, "C++20 <concepts> works in this .cu");

__global__ void decode_kernel(kvcar::identity_codec<kvcar::f16> codec, const std::byte* records,
                              float* out) {
    codec.decode(records + threadIdx.x * codec.bytes_per_group(), out + threadIdx.x * codec.group_width());
}

int main() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        std::printf("kvcar consumer (cuda): built; no GPU here, kernel not launched\n");
        return 0;
    }
    kvcar::identity_codec<kvcar::f16> codec{8};
    float host[16], back[16];
    std::byte rec[64];
    for (int i = 0; i < 16; ++i) host[i] = 0.25f * float(i) - 1.0f;
    codec.encode(host, rec);
    codec.encode(host + 8, rec + codec.bytes_per_group());
    std::byte* d_rec;
    float* d_out;
    cudaMalloc(&d_rec, sizeof rec);
    cudaMalloc(&d_out, sizeof back);
    cudaMemcpy(d_rec, rec, sizeof rec, cudaMemcpyHostToDevice);
    decode_kernel<<<1, 2>>>(codec, d_rec, d_out);
    KVCAR_CUDA_CHECK(cudaMemcpy(back, d_out, sizeof back, cudaMemcpyDeviceToHost));
    cudaFree(d_rec);
    cudaFree(d_out);
    for (int i = 0; i < 16; ++i)
        if (back[i] != host[i]) return 1;
    std::printf("kvcar consumer (cuda): ok\n");
    return 0;
}
