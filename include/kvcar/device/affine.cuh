// kvcar/device/affine.cuh — attention in latent space for affine codecs (linear, quantized linear).
//
// With x̂ = P z + μ the scores and outputs of attention never need x̂ (see affine_latent_codec):
//   score_t  = q · x̂_h,t = (P_hᵀ q) · z_t + q · μ_h      project the query once: qz = P_hᵀ q
//   output   = Σ a_t x̂_h,t = P_h (Σ a_t z_t) + (Σ a_t) μ_h  accumulate latents, lift once
// So a kernel reads each token's d-wide latent once and does d multiply-adds per query head,
// instead of decoding D floats. The cooperative helpers below do the two O(D·d) steps (projection
// and lift) once per block; latent_dot is the per-token inner loop.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/device/affine.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kvcar/codec/linear.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/device/latent.cuh"

namespace kvcar::device {

/// Affine codecs whose parameters the device helpers can read: a linear_codec, possibly wrapped
/// in quantized_codec. (Other affine codecs can still call their own project_query / lift per
/// thread; they are KVCAR_HD.)
template <class Codec>
concept linear_core_codec =
    affine_latent_codec<Codec> && codec_traits<Codec>::family == codec_family::affine;

/// Scope-cooperative: qz[j] = Σ_r P[h·hd + r][j] q[r] for j < d (threads over j: for each r the
/// group reads one contiguous row piece of P, coalesced), and returns q · μ_h to every thread.
/// `qz` may be shared or global memory; it is complete after the group synchronizes, which this
/// function does before returning.
template <thread_scope Scope, linear_core_codec Codec>
__device__ float project_query(Scope g, const Codec& c, const float* q, int head, float* qz) {
    const auto& lin = core_of(c);
    const int d = lin.rank;
    const int hd = lin.width / lin.heads;
    const int first = head * hd;
    for (int j = g.rank(); j < d; j += Scope::size) {
        float acc = 0.0f;
        for (int r = 0; r < hd; ++r) acc += lin.basis[std::size_t(first + r) * d + j] * q[r];
        qz[j] = acc;
    }
    // hd multiply-adds: cheaper for every thread to compute than to share through memory.
    float bias = 0.0f;
    for (int r = 0; r < hd; ++r) bias += q[r] * lin.mean[first + r];
    g.sync();
    return bias;
}

/// Scope-cooperative: out[r] = weight_sum · μ_h[r] + P_h[r] · z for r < head_dim (threads over
/// r, each reading its row of P with 16-byte loads when aligned). With z = Σ a_t z_t and
/// weight_sum = Σ a_t this is the attention output Σ a_t x̂_h,t. Synchronizes before returning.
template <thread_scope Scope, linear_core_codec Codec>
__device__ void lift(Scope g, const Codec& c, const float* z, float weight_sum, int head,
                     float* out) {
    const auto& lin = core_of(c);
    const int d = lin.rank;
    const int hd = lin.width / lin.heads;
    const int first = head * hd;
    for (int r = g.rank(); r < hd; r += Scope::size) {
        const float* row = lin.basis + std::size_t(first + r) * d;
        float acc = 0.0f;
        if (d % 4 == 0 && (reinterpret_cast<std::uintptr_t>(row) & 15u) == 0) {
            for (int j = 0; j < d; j += 4) {
                const float4 w = *reinterpret_cast<const float4*>(row + j);
                acc += w.x * z[j] + w.y * z[j + 1] + w.z * z[j + 2] + w.w * z[j + 3];
            }
        } else {
            for (int j = 0; j < d; ++j) acc += row[j] * z[j];
        }
        out[r] = weight_sum * lin.mean[first + r] + acc;
    }
    g.sync();
}

/// Thread: qz · z for one record (d latent elements, dequantized on the fly). Add the bias that
/// project_query returned to get q · x̂.
template <has_latent_record Codec>
__device__ float latent_dot(const latent_record<Codec>& z, const float* qz, int d) {
    float acc = 0.0f;
    for (int j = 0; j < d; ++j) acc += qz[j] * z[j];
    return acc;
}

/// Thread: acc[j] += weight · z[j] for one record: the latent-space accumulation Σ a_t z_t.
template <has_latent_record Codec>
__device__ void accumulate_latent(const latent_record<Codec>& z, float weight, float* acc, int d) {
    for (int j = 0; j < d; ++j) acc[j] += weight * z[j];
}

}  // namespace kvcar::device
