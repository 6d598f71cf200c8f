// bench/bf16_gemv_bench.cu — the CUDA model's bf16 decode product (examples/models/cuda/
// bf16_linear.cuh) against its roofline: for the matrices of TinyLlama-1.1B and Llama-3-8B, the
// time of one product at n = 1, 2, 4, 8 rows and the weight bytes it streamed per second, beside
// the fp32 SGEMM of the same shape (the --weights fp32 path) and a device-to-device copy (the
// rate the weights can be read at, counting read and written bytes).
//
//   build/bench/bf16_gemv_bench            one line per shape and n; the copy rate first
#include <cstdio>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "kvcar/cuda/buffer.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/numeric.hpp"

#include "examples/models/cuda/bf16_linear.cuh"
#include "examples/models/cuda/device_ops.cuh"

namespace ops = kvcar::examples::cuda_ops;

namespace {

struct shape {
    const char* name;
    int out_dim, in_dim;
};

/// Mean milliseconds of `f` over `reps` runs after 3 warm-ups, timed with events on `s`.
template <class F>
float time_ms(cudaStream_t s, int reps, F&& f) {
    for (int i = 0; i < 3; ++i) f();
    cudaEvent_t a, b;
    KVCAR_CUDA_CHECK(cudaEventCreate(&a));
    KVCAR_CUDA_CHECK(cudaEventCreate(&b));
    KVCAR_CUDA_CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < reps; ++i) f();
    KVCAR_CUDA_CHECK(cudaEventRecord(b, s));
    KVCAR_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0.0f;
    KVCAR_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms / float(reps);
}

}  // namespace

int main() {
    cudaStream_t s;
    KVCAR_CUDA_CHECK(cudaStreamCreate(&s));
    ops::cublas_handle blas(s);

    // The copy rate: 1 GiB read and 1 GiB written.
    {
        const std::size_t bytes = std::size_t(1) << 30;
        kvcar::gpu::device_buffer<char> a(bytes), b(bytes);
        const float ms = time_ms(s, 10, [&] {
            KVCAR_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, s));
        });
        std::printf("device copy: %.0f GB/s (read + written)\n", 2.0 * double(bytes) / ms / 1e6);
    }

    const shape shapes[] = {
        {"tinyllama qkv", 2560, 2048},   {"tinyllama o", 2048, 2048},
        {"tinyllama gate-up", 11264, 2048}, {"tinyllama down", 2048, 5632},
        {"tinyllama head", 32000, 2048}, {"llama3-8b qkv", 6144, 4096},
        {"llama3-8b gate-up", 28672, 4096}, {"llama3-8b down", 4096, 14336},
        {"llama3-8b head", 128256, 4096},
    };
    std::printf("%-20s %3s %10s %12s %14s %12s\n", "matrix", "n", "bf16 us", "bf16 GB/s",
                "fp32 sgemm us", "fp32 GB/s");
    for (const shape& sh : shapes) {
        const std::size_t count = std::size_t(sh.out_dim) * std::size_t(sh.in_dim);
        kvcar::gpu::device_buffer<kvcar::bf16> w16(count);
        kvcar::gpu::device_buffer<float> w32(count);
        w16.fill_bytes(0x3c);  // bf16 0x3c3c ≈ 0.0115: finite, nonzero
        w32.fill_bytes(0x3c);
        kvcar::gpu::device_buffer<float> in(std::size_t(8) * sh.in_dim),
            out(std::size_t(8) * sh.out_dim);
        in.fill_bytes(0x3c);
        for (int n : {1, 2, 4, 8}) {
            const float ms16 = time_ms(s, 50, [&] {
                ops::bf16_gemv(s, out.data(), in.data(), w16.data(), nullptr, n, sh.in_dim,
                               sh.out_dim);
            });
            const float ms32 = time_ms(s, 20, [&] {
                ops::linear(blas.get(), out.data(), in.data(), w32.data(), n, sh.in_dim,
                            sh.out_dim);
            });
            std::printf("%-20s %3d %10.1f %12.0f %14.1f %12.0f\n", sh.name, n, ms16 * 1e3,
                        double(count) * 2 / ms16 / 1e6, ms32 * 1e3,
                        double(count) * 4 / ms32 / 1e6);
        }
    }
    KVCAR_CUDA_CHECK(cudaStreamSynchronize(s));
    cudaStreamDestroy(s);
    return 0;
}
