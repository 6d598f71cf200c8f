// examples/models/cuda/device_ops.cuh — the handful of CUDA kernels a GPT-2 or Llama forward
// needs besides matrix products and attention, and the cuBLAS call that does the products.
//
// The device twin of examples/models/tensor_ops.hpp. Every kernel computes the same expression as
// its CPU twin, in float, in the same order within an element (only reductions are reassociated:
// a block sums a row in a tree instead of left to right), so the CUDA model agrees with the CPU
// one to float rounding (~1e-6 relative before attention and the codec's own rounding).
// Matrix products of fp32 weights go through cuBLAS in plain fp32 (CUBLAS_DEFAULT_MATH: no
// TF32), which is the exact-first choice: at the tiny models' sizes the products are launch-bound,
// not math-bound. bf16 weights multiply through bf16_linear.cuh (device_matrix.cuh dispatches).
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/cuda/device_ops.cuh needs nvcc"
#endif

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/numeric.hpp"
#include "kvcar/rope.hpp"

namespace kvcar::examples::cuda_ops {

// ---------------------------------------------------------------------------------------------
// cuBLAS

/// Throws kvcar::error unless `status` is CUBLAS_STATUS_SUCCESS; `call` is the text of the call.
inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    throw error("kvcar: cuBLAS error in " + std::string(call) + " (" + file + ":" +
                std::to_string(line) + "): status " + std::to_string(int(status)));
}
#define KVCAR_CUBLAS_CHECK(call) \
    ::kvcar::examples::cuda_ops::check_cublas((call), #call, __FILE__, __LINE__)

/// An owned cuBLAS handle bound to one stream, in plain fp32 math (no TF32 tensor-core
/// shortcut, whose 10-bit mantissa would cost the 1e-4 agreement with the CPU model).
class cublas_handle {
public:
    explicit cublas_handle(cudaStream_t stream) {
        KVCAR_CUBLAS_CHECK(cublasCreate(&handle_));
        KVCAR_CUBLAS_CHECK(cublasSetStream(handle_, stream));
        KVCAR_CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
    }
    cublas_handle(const cublas_handle&) = delete;
    cublas_handle& operator=(const cublas_handle&) = delete;
    ~cublas_handle() {
        if (handle_) cublasDestroy(handle_);
    }
    cublasHandle_t get() const { return handle_; }

private:
    cublasHandle_t handle_ = nullptr;
};

/// out[t][o] = Σ_i in[t][i] · w[o][i] for n rows: torch.nn.Linear without its bias, `w` in
/// [out_dim][in_dim] as on the CPU. cuBLAS is column-major, where a row-major [r][c] array is the
/// [c][r] matrix, so this is outᵀ (out_dim × n) = w (viewed in_dim × out_dim, transposed) · inᵀ.
inline void linear(cublasHandle_t h, float* out, const float* in, const float* w, int n,
                   int in_dim, int out_dim) {
    if (n == 0) return;
    const float one = 1.0f, zero = 0.0f;
    KVCAR_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, out_dim, n, in_dim, &one, w,
                                   in_dim, in, in_dim, &zero, out, out_dim));
}

// ---------------------------------------------------------------------------------------------
// Reductions

inline constexpr int row_threads = 128;  // one block per row: rows are 100s to 1000s wide

/// Sum of `v` over the block (every thread gets it). `shared` holds THREADS / 32 values.
template <int THREADS, class T>
__device__ T block_sum(T v, T* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
    __syncthreads();  // an earlier call's readers are done with `shared`
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    T total = 0;
    for (int w = 0; w < THREADS / 32; ++w) total += shared[w];
    return total;
}

/// Maximum of `v` over the block (every thread gets it).
template <int THREADS>
__device__ float block_max(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v = ::fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float m = shared[0];
    for (int w = 1; w < THREADS / 32; ++w) m = ::fmaxf(m, shared[w]);
    return m;
}

// ---------------------------------------------------------------------------------------------
// Kernels (one block per row unless said otherwise). `static`: internal linkage, so two
// translation units of one program may both include this header without duplicate kernels.

/// A table element as float: itself, or a bf16 widened (exactly).
__device__ inline float element_float(float x) { return x; }
__device__ inline float element_float(kvcar::bf16 x) { return kvcar::to_float(x); }

/// x[r] = table[tokens[r]] (+ positions_table[positions[r]] for GPT-2's learned positions); the
/// token table fp32 or bf16 (device_matrix), the position table fp32.
template <class T>
static __global__ void embed_kernel(float* x, const T* table, const float* position_table,
                                    const std::int32_t* tokens, const std::int32_t* positions,
                                    int dim) {
    const int r = int(blockIdx.x);
    const T* te = table + std::size_t(tokens[r]) * dim;
    float* y = x + std::size_t(r) * dim;
    if (position_table) {
        const float* pe = position_table + std::size_t(positions[r]) * dim;
        for (int i = int(threadIdx.x); i < dim; i += int(blockDim.x))
            y[i] = element_float(te[i]) + pe[i];
    } else {
        for (int i = int(threadIdx.x); i < dim; i += int(blockDim.x)) y[i] = element_float(te[i]);
    }
}

/// Stores an fp32 result as T: unchanged for float; for bf16 rounded to nearest even exactly as
/// round_to_bf16_kernel rounds it (kvcar::to_bf16), so a kernel that writes bf16 gives the very
/// values of an fp32 write followed by a rounding pass, without that pass's read and write.
template <class T>
__device__ inline T store_as(float v) {
    if constexpr (std::is_same_v<T, float>) return v;
    else return kvcar::to_bf16(v);
}

/// LayerNorm of row r: (x - mean) / sqrt(var + eps) · w + b, biased variance, two passes.
template <class Out>
static __global__ void __launch_bounds__(row_threads)
    layernorm_kernel(Out* out, const float* in, const float* w, const float* b, int dim,
                     float eps) {
    __shared__ float shared[row_threads / 32];
    const float* x = in + std::size_t(blockIdx.x) * dim;
    Out* y = out + std::size_t(blockIdx.x) * dim;
    float s = 0.0f;
    for (int i = int(threadIdx.x); i < dim; i += row_threads) s += x[i];
    const float mean = block_sum<row_threads>(s, shared) / float(dim);
    float sq = 0.0f;
    for (int i = int(threadIdx.x); i < dim; i += row_threads) sq += (x[i] - mean) * (x[i] - mean);
    const float var = block_sum<row_threads>(sq, shared) / float(dim);
    const float inv_std = 1.0f / ::sqrtf(var + eps);
    for (int i = int(threadIdx.x); i < dim; i += row_threads)
        y[i] = store_as<Out>((x[i] - mean) * inv_std * w[i] + b[i]);
}

/// RMSNorm of row r: w · (x / sqrt(mean(x²) + eps)).
template <class Out>
static __global__ void __launch_bounds__(row_threads)
    rmsnorm_kernel(Out* out, const float* in, const float* w, int dim, float eps) {
    __shared__ float shared[row_threads / 32];
    const float* x = in + std::size_t(blockIdx.x) * dim;
    Out* y = out + std::size_t(blockIdx.x) * dim;
    float sq = 0.0f;
    for (int i = int(threadIdx.x); i < dim; i += row_threads) sq += x[i] * x[i];
    const float inv_rms = 1.0f / ::sqrtf(block_sum<row_threads>(sq, shared) / float(dim) + eps);
    for (int i = int(threadIdx.x); i < dim; i += row_threads) y[i] = store_as<Out>(w[i] * (x[i] * inv_rms));
}

/// Splits the fused projection qkv[r] = [q | k | v] (widths q_width, kv_width, kv_width) into
/// three contiguous arrays, adding `bias` (same layout; may be null). One thread per element.
static __global__ void split_qkv_kernel(const float* qkv, const float* bias, float* q, float* k,
                                        float* v, int rows, int q_width, int kv_width) {
    const int width = q_width + 2 * kv_width;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * width) return;
    const int r = int(i / width), c = int(i - (long long)r * width);
    const float x = qkv[i] + (bias ? bias[c] : 0.0f);
    if (c < q_width) q[std::size_t(r) * q_width + c] = x;
    else if (c < q_width + kv_width) k[std::size_t(r) * kv_width + (c - q_width)] = x;
    else v[std::size_t(r) * kv_width + (c - q_width - kv_width)] = x;
}

/// Rotates every head of row r of `x` ([rows][heads][head_dim]) to positions[r]: one thread per
/// (row, head, pair), with kvcar::apply_rope's arithmetic (same inv_freq, float angle, cosf/sinf).
static __global__ void rope_kernel(float* x, const std::int32_t* positions, int rows, int heads,
                            int head_dim, rope_params cfg) {
    const int rot = rope_rotary_dim(cfg, head_dim);
    const int pairs = rot / 2;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * heads * pairs) return;
    const int pair = int(i % pairs);
    const long long rh = i / pairs;  // row * heads + head
    const int r = int(rh / heads);
    const float angle = float(positions[r]) * rope_inv_freq(pair, rot, cfg.theta);
    const float c = ::cosf(angle), s = ::sinf(angle);
    int a, b;
    rope_pair_dims(cfg.style, rot, pair, a, b);
    float* h = x + std::size_t(rh) * head_dim;
    const float xa = h[a], xb = h[b];
    h[a] = xa * c - xb * s;
    h[b] = xb * c + xa * s;
}

/// x[r][i] = gelu_tanh(x[r][i] + bias[i]) (GPT-2's MLP activation after c_fc).
static __global__ void bias_gelu_kernel(float* x, const float* bias, int rows, int dim) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * dim) return;
    const float v = x[i] + bias[i % dim];
    const float cube = 0.044715f * v * v * v;
    x[i] = 0.5f * v * (1.0f + ::tanhf(0.7978845608028654f * (v + cube)));
}

/// out[r][i] = silu(gu[r][i]) · gu[r][dim + i]: SwiGLU on the fused [gate | up] projection.
template <class Out>
static __global__ void silu_mul_kernel(Out* out, const float* gu, int rows, int dim) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * dim) return;
    const long long r = i / dim, c = i - r * dim;
    const float g = gu[r * 2 * dim + c], u = gu[r * 2 * dim + dim + c];
    out[i] = store_as<Out>(g / (1.0f + ::expf(-g)) * u);
}

/// x += y + bias (bias may be null): the residual stream after a projection, in the CPU's order
/// (the projection's bias is part of the projection).
static __global__ void residual_kernel(float* x, const float* y, const float* bias, int rows,
                                       int dim) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * dim) return;
    x[i] += bias ? y[i] + bias[i % dim] : y[i];
}

/// out[j] = in[rows[j]] (rows of `dim` floats): the last token of each item for the LM head.
static __global__ void gather_rows_kernel(float* out, const float* in, const std::int32_t* rows,
                                   int dim) {
    const float* x = in + std::size_t(rows[blockIdx.x]) * dim;
    float* y = out + std::size_t(blockIdx.x) * dim;
    for (int i = int(threadIdx.x); i < dim; i += int(blockDim.x)) y[i] = x[i];
}

/// out[r] = log softmax(logits[r])[targets[r]], the sum of exponentials in double as
/// tensor_ops.hpp's log_prob does: a perplexity run downloads 8 bytes per token, not a vocab row.
static __global__ void __launch_bounds__(row_threads)
    log_prob_kernel(double* out, const float* logits, const std::int32_t* targets, int vocab) {
    __shared__ float shared_max[row_threads / 32];
    __shared__ double shared_sum[row_threads / 32];
    const float* x = logits + std::size_t(blockIdx.x) * vocab;
    float m = -INFINITY;
    for (int i = int(threadIdx.x); i < vocab; i += row_threads) m = ::fmaxf(m, x[i]);
    const double max_logit = double(block_max<row_threads>(m, shared_max));
    double s = 0.0;
    for (int i = int(threadIdx.x); i < vocab; i += row_threads)
        s += ::exp(double(x[i]) - max_logit);
    const double sum = block_sum<row_threads>(s, shared_sum);
    if (threadIdx.x == 0) out[blockIdx.x] = double(x[targets[blockIdx.x]]) - max_logit - ::log(sum);
}

/// A candidate of argmax_kernel: a logit and its index in the row.
struct indexed_logit {
    float value;
    int index;
};

/// Of two candidates, the larger logit; on a tie the lower index (the first in the row).
struct first_largest {
    __device__ indexed_logit operator()(const indexed_logit& a, const indexed_logit& b) const {
        if (a.value != b.value) return a.value > b.value ? a : b;
        return a.index < b.index ? a : b;
    }
};

/// out[r] = the index of the largest logit of row r, the first one on ties; NaNs never win and a
/// row of NaNs gives 0 (tensor_ops.hpp's argmax, the host's greedy token, exactly). A serving
/// step then downloads one int per sequence, not its row of the vocabulary (128 KB at 32000).
/// Each thread keeps the first of its strided elements' maxima (its indices only grow), and
/// cub::BlockReduce merges the threads' candidates.
static __global__ void __launch_bounds__(row_threads)
    argmax_kernel(std::int32_t* out, const float* logits, int vocab) {
    using block_reduce = cub::BlockReduce<indexed_logit, row_threads>;
    __shared__ typename block_reduce::TempStorage temp;
    const float* x = logits + std::size_t(blockIdx.x) * vocab;
    indexed_logit mine{-INFINITY, INT_MAX};
    for (int i = int(threadIdx.x); i < vocab; i += row_threads) {
        const float v = x[i];
        if (v > mine.value) mine = {v, i};
        else if (v == mine.value && mine.index == INT_MAX) mine.index = i;  // the first -inf
    }
    const indexed_logit best = block_reduce(temp).Reduce(mine, first_largest{});
    if (threadIdx.x == 0) out[blockIdx.x] = best.index == INT_MAX ? 0 : best.index;
}

// ---------------------------------------------------------------------------------------------
// Launch helpers

inline unsigned elementwise_blocks(long long count, int threads) {
    return unsigned((count + threads - 1) / threads);
}

}  // namespace kvcar::examples::cuda_ops
