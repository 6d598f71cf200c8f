// examples/models/cuda/device_matrix.cuh — a weight matrix of the CUDA model, stored fp32 or
// bf16 (weight_precision), and the product that dispatches on its storage.
//
// fp32 storage multiplies through cuda_ops::linear (cuBLAS SGEMM, unchanged: the fp32 model's
// outputs are bit for bit those it always gave). bf16 storage multiplies through
// bf16_linear.cuh: its own GEMV kernel for a few rows (decode), cublasGemmEx on the tensor cores
// for more (prefill).
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/cuda/device_matrix.cuh needs nvcc"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/buffer.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/numeric.hpp"

#include "examples/models/cuda/bf16_linear.cuh"
#include "examples/models/cuda/device_ops.cuh"
#include "examples/models/model_common.hpp"

namespace kvcar::examples::cuda_model {

/// A row-major [rows][cols] weight matrix on the device in fp32 or bf16. Built from the host's
/// fp32 values one matrix at a time: a bf16 matrix is rounded on the host (round to nearest
/// even, kvcar::to_bf16) and only its bf16 copy is uploaded, so the device never holds an fp32
/// copy of a bf16 model.
class device_matrix {
public:
    device_matrix() = default;
    device_matrix(std::span<const float> host, int rows, int cols, weight_precision p)
        : rows_(rows), cols_(cols), precision_(p) {
        require(rows >= 0 && cols >= 0 && host.size() == std::size_t(rows) * std::size_t(cols),
                "device_matrix: " + std::to_string(host.size()) + " values for a [" +
                    std::to_string(rows) + "][" + std::to_string(cols) + "] matrix");
        if (p == weight_precision::fp32) {
            f32_ = gpu::device_buffer<float>(host);
            return;
        }
        std::vector<kvcar::bf16> rounded(host.size());
        std::transform(host.begin(), host.end(), rounded.begin(),
                       [](float x) { return kvcar::to_bf16(x); });
        bf16_ = gpu::device_buffer<kvcar::bf16>(rounded);
    }

    int rows() const { return rows_; }
    int cols() const { return cols_; }
    weight_precision precision() const { return precision_; }
    bool empty() const { return f32_.empty() && bf16_.empty(); }
    std::size_t bytes() const { return f32_.bytes() + bf16_.bytes(); }
    /// The storage (null unless the matrix has that precision).
    const float* f32() const { return f32_.data(); }
    const kvcar::bf16* bf16() const { return bf16_.data(); }

    /// f(pointer to the elements), as const float* or const kvcar::bf16*: a kernel templated on
    /// its element type (the embedding lookup) is instantiated for both.
    template <class F>
    decltype(auto) visit(F&& f) const {
        return precision_ == weight_precision::bf16 ? f(bf16_.data()) : f(f32_.data());
    }

private:
    int rows_ = 0, cols_ = 0;
    weight_precision precision_ = weight_precision::fp32;
    gpu::device_buffer<float> f32_;
    gpu::device_buffer<kvcar::bf16> bf16_;
};

/// out[t][o] = Σ_i in[t][i] · w[o][i] for n rows (torch.nn.Linear without its bias) with whichever
/// storage w has: the model's one entry point for its products. Owns the scratch buffer the
/// bf16 GEMM rounds its activations into, grown to the largest n · in_dim seen.
class linear_op {
public:
    linear_op(cublasHandle_t blas, cudaStream_t stream) : blas_(blas), stream_(stream) {}

    void operator()(float* out, const float* in, const device_matrix& w, int n) {
        const int in_dim = w.cols(), out_dim = w.rows();
        if (w.precision() == weight_precision::fp32) {
            cuda_ops::linear(blas_, out, in, w.f32(), n, in_dim, out_dim);
            return;
        }
        if (n == 0) return;
        // Few rows and 16-byte rows: the memory-bound GEMV. Anything else (prefill, or an odd
        // width the vector loads cannot take) goes to the tensor cores.
        if (cuda_ops::bf16_gemv_refusal(in, w.bf16(), n, in_dim).empty()) {
            cuda_ops::bf16_gemv(stream_, out, in, w.bf16(), nullptr, n, in_dim, out_dim);
            return;
        }
        kvcar::bf16* scratch = rounded_input(std::size_t(n) * std::size_t(in_dim));
        cuda_ops::bf16_gemm(blas_, stream_, out, in, w.bf16(), scratch, n, in_dim, out_dim);
    }

    /// Whether the product with `w` over n rows would round its activations to bf16 first (bf16
    /// storage, more rows than the GEMV takes). Then the producer of the activations can write
    /// them as bf16 itself, into rounded_input(), and the product is from_rounded(): the same
    /// values, without the rounding pass. `fuse_rounding` off keeps the separate pass (a test
    /// compares the two).
    /// Times rounded_input() reallocated: a CUDA graph captured before it moved is stale.
    std::uint64_t growths = 0;

    bool takes_rounded(const device_matrix& w, int n) const {
        return fuse_rounding && w.precision() == weight_precision::bf16 &&
               n > cuda_ops::gemv_max_rows;
    }
    /// Room for `count` bf16 activations (n · w.cols()) that from_rounded() reads.
    kvcar::bf16* rounded_input(std::size_t count) {
        if (count > scratch_.size()) {
            // The old buffer may still be read by work already enqueued.
            KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream_));
            scratch_.reserve_discard(std::max(count, scratch_.size() * 3 / 2));
            ++growths;
        }
        return scratch_.data();
    }
    /// out = rounded_input() · wᵀ for n rows (precondition: takes_rounded(w, n)).
    void from_rounded(float* out, const device_matrix& w, int n) {
        cuda_ops::bf16_gemm_rounded(blas_, out, scratch_.data(), w.bf16(), n, w.cols(), w.rows());
    }

    /// Producers write bf16 for the tensor-core products (takes_rounded); off: an fp32 write and
    /// the product's own rounding pass, the same values.
    bool fuse_rounding = true;

private:
    cublasHandle_t blas_;
    cudaStream_t stream_;
    gpu::device_buffer<kvcar::bf16> scratch_;
};

}  // namespace kvcar::examples::cuda_model
