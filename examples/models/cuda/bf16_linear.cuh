// examples/models/cuda/bf16_linear.cuh — out = in · Wᵀ with W stored as bfloat16 and everything
// else fp32: the two products the CUDA model uses for a bf16 checkpoint (device_matrix.cuh
// picks one per call).
//
//   bf16_gemv  n <= gemv_max_rows activation rows (decode): a memory-bound kernel of our own.
//              fp32 activations, bf16 weights widened exactly to fp32, fp32 accumulation. Its
//              result is the fp32 product of the bf16-rounded weights up to the order of the
//              additions (~1e-6 relative).
//   bf16_gemm  more rows (prefill): the activations rounded to bf16 into a scratch buffer, then
//              cublasGemmEx on the tensor cores (bf16 × bf16, fp32 accumulation and output).
//              Rounding the activations adds a relative error of at most 2⁻⁸ per element (bf16
//              keeps 8 significant bits: half of its 2⁻⁷ spacing, round to nearest even); over a
//              dot product of random-signed terms that is about 2⁻⁸/√3 ≈ 2e-3 of the product's
//              scale.
//
// Why a kernel of our own for decode: at n = 1 a product is a matrix-vector product, two flops
// per weight and one weight read per two flops, so its time is the time to stream the weights
// from DRAM. TinyLlama's 1.1 B weights are 2.2 GB in bf16: at H100's ~3 TB/s that is ~0.7 ms per
// token, half of fp32's. cuBLAS' GEMMs pad n up to a tile and are not built for that regime.
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/cuda/bf16_linear.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>
#include <string>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/numeric.hpp"

#include "examples/models/cuda/device_ops.cuh"

namespace kvcar::examples::cuda_ops {

/// The most activation rows bf16_gemv takes; more go through bf16_gemm. Up to 8 rows the
/// weight stream still dominates (see bf16_gemv_kernel); beyond it the tensor cores win.
inline constexpr int gemv_max_rows = 8;
/// bf16_gemv's weights are read 8 elements (16 bytes) at a time: in_dim must be a multiple.
inline constexpr int gemv_vector = 8;

inline constexpr int gemv_threads = 128;       // 4 warps per block share one group of rows
inline constexpr int gemv_rows_per_block = 4;  // output rows of one block

/// The 8 bf16 of one 16-byte load as floats (exact: a bf16 is the top half of a float). Little
/// endian: the lower half of each 32-bit word is the element with the lower index.
__device__ inline void widen_bf16x8(const uint4& v, float (&f)[8]) {
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(words[i] << 16);
        f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
}

/// out[t][o] = Σ_i in[t][i] · w[o][i] (+ bias[o]) for t < N, o < out_dim; w is [out_dim][in_dim]
/// bf16, in_dim a multiple of 8, w and in 16-byte aligned.
///
/// Work split: block b owns output rows [R·b, R·b + R); its 128 threads split the row's 16-byte
/// chunks (thread j takes chunks j, j + 128, ...), each keeping N·R partial sums in registers;
/// a warp shuffle and then shared memory add the partial sums of the block.
///
/// Memory traffic. Weights: each weight is read once, from DRAM, out_dim · in_dim · 2 bytes in
/// all, as 16-byte loads that a warp issues for 512 contiguous bytes of a row (fully coalesced),
/// with the streaming hint (__ldcs: evict-first) because nothing reads them again this pass.
/// Activations: N · in_dim · 4 bytes, read by every block (read-only path, __ldg). They are
/// small (≤ 8 × 14336 × 4 = 448 KiB) and stay in L2 and each SM's L1, so DRAM sees them about
/// once; the L1/L2 traffic per block is N · in_dim · 4 against R · in_dim · 2 bytes of weights,
/// i.e. 2N/R = N/2 times the weight stream, which the caches serve at several times DRAM's
/// rate up to N = 8. R = 4 rows per block is what keeps that ratio low; the grid still has
/// out_dim / 4 blocks (512 for a 2048-row matrix, several per SM) and every thread has
/// R · 16 bytes per chunk in flight (more with the unrolled loop), enough to cover DRAM latency.
template <int N, int R>
static __global__ void __launch_bounds__(gemv_threads)
    bf16_gemv_kernel(float* out, const float* in, const kvcar::bf16* w, const float* bias,
                     int in_dim, int out_dim) {
    const int row0 = int(blockIdx.x) * R;
    const int chunks = in_dim / gemv_vector;
    const uint4* wv = reinterpret_cast<const uint4*>(w);
    float acc[N][R];
#pragma unroll
    for (int t = 0; t < N; ++t) {
#pragma unroll
        for (int r = 0; r < R; ++r) acc[t][r] = 0.0f;
    }

#pragma unroll 2
    for (int c = int(threadIdx.x); c < chunks; c += gemv_threads) {
        float wf[R][8];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            // Rows past the end (the last block of a matrix whose rows are not a multiple of R)
            // read nothing and contribute zeros that are never stored.
            if (row0 + r < out_dim) {
                widen_bf16x8(__ldcs(wv + std::size_t(row0 + r) * std::size_t(chunks) + c), wf[r]);
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) wf[r][i] = 0.0f;
            }
        }
#pragma unroll
        for (int t = 0; t < N; ++t) {
            const float4* a =
                reinterpret_cast<const float4*>(in + std::size_t(t) * std::size_t(in_dim)) + 2 * c;
            const float4 a0 = __ldg(a), a1 = __ldg(a + 1);
            const float x[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
#pragma unroll
            for (int r = 0; r < R; ++r) {
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[t][r] = ::fmaf(x[i], wf[r][i], acc[t][r]);
            }
        }
    }

    // Sum over the warp (butterfly shuffles), then over the block's warps.
    __shared__ float partial[gemv_threads / 32][N * R];
    const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
#pragma unroll
    for (int t = 0; t < N; ++t) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float v = acc[t][r];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) partial[warp][t * R + r] = v;
        }
    }
    __syncthreads();
    for (int j = int(threadIdx.x); j < N * R; j += gemv_threads) {
        const int t = j / R, row = row0 + j % R;
        if (row >= out_dim) continue;
        float s = 0.0f;
        for (int wi = 0; wi < gemv_threads / 32; ++wi) s += partial[wi][j];
        out[std::size_t(t) * std::size_t(out_dim) + std::size_t(row)] = bias ? s + bias[row] : s;
    }
}

/// Why bf16_gemv cannot take these arguments ("" when it can): in_dim a multiple of 8 and both
/// pointers 16-byte aligned (the vector loads), n in [1, gemv_max_rows].
inline std::string bf16_gemv_refusal(const float* in, const kvcar::bf16* w, int n, int in_dim) {
    if (n < 1 || n > gemv_max_rows)
        return std::to_string(n) + " rows (it takes 1 to " + std::to_string(gemv_max_rows) + ")";
    if (in_dim % gemv_vector != 0)
        return "in_dim " + std::to_string(in_dim) + " is not a multiple of " +
               std::to_string(gemv_vector) + " (its weight rows are read 16 bytes at a time)";
    if (reinterpret_cast<std::uintptr_t>(in) % 16 != 0 ||
        reinterpret_cast<std::uintptr_t>(w) % 16 != 0)
        return "the activations or weights are not 16-byte aligned";
    return "";
}

template <int N>
void launch_bf16_gemv(cudaStream_t s, float* out, const float* in, const kvcar::bf16* w,
                      const float* bias, int in_dim, int out_dim) {
    constexpr int R = gemv_rows_per_block;
    const unsigned blocks = unsigned((out_dim + R - 1) / R);
    bf16_gemv_kernel<N, R><<<blocks, gemv_threads, 0, s>>>(out, in, w, bias, in_dim, out_dim);
    KVCAR_CUDA_CHECK_LAUNCH("bf16_gemv_kernel");
}

/// out[t][o] = Σ_i in[t][i] · w[o][i] (+ bias[o]; bias may be null) for n rows, w bf16
/// [out_dim][in_dim]. Throws kvcar::error for what bf16_gemv_refusal names.
inline void bf16_gemv(cudaStream_t s, float* out, const float* in, const kvcar::bf16* w,
                      const float* bias, int n, int in_dim, int out_dim) {
    const std::string why = bf16_gemv_refusal(in, w, n, in_dim);
    require(why.empty(), "bf16_gemv: cannot multiply: " + why);
    if (out_dim == 0) return;
    switch (n) {
        case 1: return launch_bf16_gemv<1>(s, out, in, w, bias, in_dim, out_dim);
        case 2: return launch_bf16_gemv<2>(s, out, in, w, bias, in_dim, out_dim);
        case 3: return launch_bf16_gemv<3>(s, out, in, w, bias, in_dim, out_dim);
        case 4: return launch_bf16_gemv<4>(s, out, in, w, bias, in_dim, out_dim);
        case 5: return launch_bf16_gemv<5>(s, out, in, w, bias, in_dim, out_dim);
        case 6: return launch_bf16_gemv<6>(s, out, in, w, bias, in_dim, out_dim);
        case 7: return launch_bf16_gemv<7>(s, out, in, w, bias, in_dim, out_dim);
        default: return launch_bf16_gemv<8>(s, out, in, w, bias, in_dim, out_dim);
    }
}

static_assert(gemv_max_rows == 8, "bf16_gemv's switch instantiates N = 1 .. 8");

/// out[i] = bf16(in[i]), round to nearest even (kvcar::to_bf16, as the weights were rounded).
static __global__ void round_to_bf16_kernel(kvcar::bf16* out, const float* in, long long count) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = kvcar::to_bf16(in[i]);
}

/// out (fp32, [n][out_dim]) = in · wᵀ for activations already rounded to bf16 (a producer that
/// writes bf16 itself: the CUDA model's norms and SwiGLU), one cublasGemmEx as below.
inline void bf16_gemm_rounded(cublasHandle_t h, float* out, const kvcar::bf16* in,
                              const kvcar::bf16* w, int n, int in_dim, int out_dim) {
    if (n == 0 || out_dim == 0) return;
    const float one = 1.0f, zero = 0.0f;
    KVCAR_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out_dim, n, in_dim, &one, w,
                                    CUDA_R_16BF, in_dim, in, CUDA_R_16BF, in_dim, &zero, out,
                                    CUDA_R_32F, out_dim, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/// out (fp32, [n][out_dim]) = bf16(in) · wᵀ on the tensor cores: `in` is rounded into `scratch`
/// (n · in_dim elements), then one cublasGemmEx with bf16 A and B, fp32 C and fp32 compute
/// (CUBLAS_COMPUTE_32F: products exact, sums in fp32). The layout argument is linear()'s in
/// device_ops.cuh: column-major outᵀ = (w viewed in_dim × out_dim)ᵀ · inᵀ. No alignment or
/// shape rule beyond cuBLAS's own (odd in_dim works, on a slower kernel).
inline void bf16_gemm(cublasHandle_t h, cudaStream_t s, float* out, const float* in,
                      const kvcar::bf16* w, kvcar::bf16* scratch, int n, int in_dim,
                      int out_dim) {
    if (n == 0 || out_dim == 0) return;
    const long long count = (long long)n * in_dim;
    const int T = 256;
    round_to_bf16_kernel<<<elementwise_blocks(count, T), T, 0, s>>>(scratch, in, count);
    KVCAR_CUDA_CHECK_LAUNCH("round_to_bf16_kernel");
    bf16_gemm_rounded(h, out, scratch, w, n, in_dim, out_dim);
}

}  // namespace kvcar::examples::cuda_ops
