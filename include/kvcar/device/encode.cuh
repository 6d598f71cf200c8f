// kvcar/device/encode.cuh — a warp encodes one group's floats into one record.
//
// Encoding runs once per new token (decode step) or per prompt token (prefill), so it is not the
// bandwidth-critical path; a warp per record keeps it simple and coalesced:
//   identity     lanes convert consecutive elements;
//   linear       lanes own latent elements j and stream P row by row (row i is contiguous in j,
//                so each step reads 32 consecutive floats); products and sums are rounded one by
//                one (__fmul_rn/__fadd_rn) in the host's order, so the latent matches the host
//                codec's bit for bit when the host does not contract to FMA;
//   autoencoder  for each hidden unit the warp splits the dot product W1[k]·x over lanes and
//                reduces it, then lanes add a_k · W2ᵀ[k] to their latent elements;
//   quantized    the latent goes through warp min/max and is quantized exactly as on the host
//                (same scale, offset and rounding formulas).
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/device/encode.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/device/latent.cuh"
#include "kvcar/numeric.hpp"

namespace kvcar::device {

/// Floats of scratch (shared memory, per warp) that warp_encode needs for codec `c`.
template <kv_codec Codec>
__host__ __device__ int encode_scratch_floats(const Codec& c) {
    constexpr codec_family family = codec_traits<Codec>::family;
    if constexpr (family == codec_family::opaque ||
                  (family == codec_family::identity && !codec_traits<Codec>::quantized)) {
        return 0;
    } else {
        return c.latent_width();
    }
}

namespace detail {

/// Lanes write z (d floats in scratch, or x for identity) to the record as element type T.
template <class T>
__device__ void warp_store_plain(const float* z, int d, std::byte* record) {
    T* out = reinterpret_cast<T*>(record);
    for (int j = int(threadIdx.x & 31); j < d; j += 32) out[j] = element_traits<T>::store(z[j]);
}

/// The latent of x, computed by the warp into z (d floats). Synchronizes the warp at the end.
template <kv_codec Codec>
__device__ void warp_to_latent(const Codec& c, const float* x, float* z) {
    const int lane = int(threadIdx.x & 31);
    const auto& core = core_of(c);
    using Core = std::remove_cvref_t<decltype(core)>;
    constexpr codec_family family = codec_traits<Core>::family;
    if constexpr (family == codec_family::identity) {
        for (int j = lane; j < core.width; j += 32) z[j] = x[j];
    } else if constexpr (family == codec_family::affine) {
        const int d = core.rank;
        for (int j = lane; j < d; j += 32) {
            float acc = 0.0f;
            for (int i = 0; i < core.width; ++i) {
                const float centered = __fsub_rn(x[i], core.mean[i]);
                acc = __fadd_rn(acc, __fmul_rn(core.basis[std::size_t(i) * d + j], centered));
            }
            z[j] = acc;
        }
    } else if constexpr (family == codec_family::mlp) {
        const int d = core.latent, D = core.width;
        for (int j = lane; j < d; j += 32) z[j] = core.enc2_b[j];
        for (int k = 0; k < core.hidden; ++k) {
            const float* w1 = core.enc1_w + std::size_t(k) * D;
            float partial = 0.0f;
            for (int i = lane; i < D; i += 32) partial += w1[i] * x[i];
            const float a = leaky_relu(core.enc1_b[k] + warp_sum(partial), core.slope);
            const float* w2 = core.enc2_wt + std::size_t(k) * d;
            for (int j = lane; j < d; j += 32) z[j] += a * w2[j];
        }
    } else {
        if (lane == 0) c.to_latent(x, z);
    }
    __syncwarp();
}

/// Quantizes z (d floats) into the record exactly as quantized_codec::quantize does.
template <kv_codec Codec>
__device__ void warp_quantize(const Codec& c, const float* z, std::byte* record) {
    using Q = typename Codec::storage_type;
    const int lane = int(threadIdx.x & 31);
    const int d = c.latent_width();
    float lo = INFINITY, hi = -INFINITY;
    for (int j = lane; j < d; j += 32) {
        lo = z[j] < lo ? z[j] : lo;
        hi = z[j] > hi ? z[j] : hi;
    }
    lo = warp_min(lo);
    hi = warp_max(hi);
    const float range = hi - lo;
    const float half_range = range < INFINITY ? 0.5f * range : 0.5f * hi - 0.5f * lo;
    const float s = half_range / (std::is_same_v<Q, std::int8_t> ? 127.5f : 448.0f);
    float scale = 0.0f, offset = lo;
    if (s > 0.0f) {
        scale = s;
        offset = lo * 0.5f + hi * 0.5f;
    }
    Q* q = reinterpret_cast<Q*>(record);
    for (int j = lane; j < d; j += 32) {
        const float t = scale > 0.0f ? __fdiv_rn(__fsub_rn(z[j], offset), scale) : 0.0f;
        if constexpr (std::is_same_v<Q, std::int8_t>) {
            const float r = ::rintf(t - 0.5f);
            q[j] = std::int8_t(r < -128.0f ? -128.0f : r > 127.0f ? 127.0f : r);
        } else {
            q[j] = to_fp8_e4m3(t);
        }
    }
    const int header = int(c.scale_offset_bytes());
    for (int b = d * int(sizeof(Q)) + lane; b < header; b += 32) record[b] = std::byte{0};
    if (lane == 0) {
        memcpy(record + header, &scale, sizeof scale);
        memcpy(record + header + sizeof scale, &offset, sizeof offset);
    }
}

}  // namespace detail

/// Warp: encodes one group `x` (group_width floats, global or shared memory) into `record`.
/// `scratch` is this warp's encode_scratch_floats(c) floats of shared memory (may be null when
/// that is 0). All 32 lanes call it. The record is complete when every lane has returned.
template <kv_codec Codec>
__device__ void warp_encode(const Codec& c, const float* x, std::byte* record, float* scratch) {
    constexpr codec_family family = codec_traits<Codec>::family;
    if constexpr (family == codec_family::opaque) {
        if ((threadIdx.x & 31) == 0) c.encode(x, record);
    } else if constexpr (codec_traits<Codec>::quantized) {
        detail::warp_to_latent(c, x, scratch);
        detail::warp_quantize(c, scratch, record);
    } else if constexpr (family == codec_family::identity) {
        detail::warp_store_plain<typename Codec::storage_type>(x, c.width, record);
    } else {
        detail::warp_to_latent(c, x, scratch);
        detail::warp_store_plain<typename Codec::storage_type>(scratch, c.latent_width(), record);
    }
    __syncwarp();
}

}  // namespace kvcar::device
