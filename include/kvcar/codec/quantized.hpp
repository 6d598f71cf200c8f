// kvcar/codec/quantized.hpp — stores any latent codec's latent as int8 or fp8 e4m3.
//
// Each record (one token's group) carries its own scale and offset: the paper's Eq. 4 quantizes
// per tensor, and per token-group min-max is strictly tighter at the cost of 8 bytes a record.
// quantized_codec<identity_codec<float>> is plain KV-cache quantization (llama.cpp, TensorRT-LLM);
// on a linear codec it stays affine, so attention still runs in latent space on dequantized z.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "kvcar/codec/limits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"

namespace kvcar {

/// The element types a quantized latent can be stored in.
template <class Q>
concept latent_quantization = std::same_as<Q, std::int8_t> || std::same_as<Q, fp8_e4m3>;

/// Record layout: d elements of Q, zero-padded to 4 bytes, then two f32, `scale` and `offset`
/// (the group's midpoint). Dequantizing is a multiply-add per element.
///
/// int8, asymmetric min-max: scale = (max − min) / 255, q = round((z − min) / scale) − 128 and
/// z' = (q + 128) · scale + min, computed as (q + ½) · scale + midpoint: the same numbers, but no
/// intermediate exceeds half the range, so even groups spanning ±3e38 cannot overflow. Error per
/// element <= scale / 2 (plus float rounding).
///
/// fp8 e4m3: scale = half the range / 448, z' = fp8(q) · scale + midpoint, so the group spans the
/// format's whole finite range [−448, 448]; relative error 2^-4 of the distance from the midpoint.
///
/// A constant group gets scale 0 and offset its value, and decodes exactly (no division by zero).
/// Non-finite latents are not supported (garbage in, garbage out).
template <latent_codec Inner, latent_quantization Q = std::int8_t>
struct quantized_codec {
    using storage_type = Q;     ///< int8_t or fp8_e4m3: the element type of the quantized latent
    using inner_codec = Inner;  ///< the wrapped codec, which defines the latent

    Inner inner;  ///< the codec whose latent z is quantized

    /// D: floats per group (the inner codec's).
    KVCAR_HD int group_width() const { return inner.group_width(); }
    /// d: quantized elements per record (the inner codec's latent width).
    KVCAR_HD int latent_width() const { return inner.latent_width(); }
    /// Where scale and offset start inside a record.
    KVCAR_HD std::size_t scale_offset_bytes() const {
        return pad_record_bytes(std::size_t(latent_width()) * sizeof(Q));
    }
    /// d elements of Q padded to 4 bytes, then scale and offset (two f32).
    KVCAR_HD std::size_t bytes_per_group() const {
        return scale_offset_bytes() + 2 * sizeof(float);
    }

    /// The inner codec's x -> z (D -> d floats), before quantization.
    KVCAR_HD void to_latent(const float* x, float* z) const { inner.to_latent(x, z); }
    /// The inner codec's z -> x̂ (d -> D floats).
    KVCAR_HD void from_latent(const float* z, float* x) const { inner.from_latent(z, x); }

    /// Precondition (checked by make_quantized): latent_width() <= max_latent_width.
    KVCAR_HD void encode(const float* x, std::byte* out) const {
        float z[max_latent_width];
        inner.to_latent(x, z);
        quantize(z, out);
    }
    /// Dequantizes the record at `in` and decodes the latent to D floats at `x`. Precondition:
    /// latent_width() <= max_latent_width.
    KVCAR_HD void decode(const std::byte* in, float* x) const {
        float z[max_latent_width];
        dequantize(in, z);
        inner.from_latent(z, x);
    }

    /// One latent (d floats) → one record.
    KVCAR_HD void quantize(const float* z, std::byte* record) const {
        const int d = latent_width();
        float lo = INFINITY, hi = -INFINITY;
        for (int j = 0; j < d; ++j) {
            lo = z[j] < lo ? z[j] : lo;
            hi = z[j] > hi ? z[j] : hi;
        }
        // A range beyond float (a group spanning ±3e38) is halved before it is formed.
        const float range = hi - lo;
        const float half_range = range < INFINITY ? 0.5f * range : 0.5f * hi - 0.5f * lo;
        const float s = half_range / (std::same_as<Q, std::int8_t> ? 127.5f : 448.0f);
        float scale = 0.0f, offset = lo;  // a constant group: every element decodes to lo
        if (s > 0.0f) {
            scale = s;
            offset = lo * 0.5f + hi * 0.5f;
        }
        Q* q = reinterpret_cast<Q*>(record);
        for (int j = 0; j < d; ++j) {
            const float t = scale > 0.0f ? (z[j] - offset) / scale : 0.0f;
            if constexpr (std::same_as<Q, std::int8_t>) {
                const float r = ::rintf(t - 0.5f);
                // Written so a NaN (inf - inf from extreme parameters) maps to -128: converting
                // NaN to an integer is undefined behaviour (found by fuzz/codec_file).
                q[j] = std::int8_t(r >= -128.0f ? (r <= 127.0f ? r : 127.0f) : -128.0f);
            } else {
                q[j] = to_fp8_e4m3(t);
            }
        }
        for (std::size_t b = std::size_t(d) * sizeof(Q); b < scale_offset_bytes(); ++b)
            record[b] = std::byte{0};  // deterministic padding: records hash and compare
        memcpy(record + scale_offset_bytes(), &scale, sizeof scale);
        memcpy(record + scale_offset_bytes() + sizeof scale, &offset, sizeof offset);
    }

    /// One record → its latent z' (d floats): what attention over quantized latents reads.
    KVCAR_HD void dequantize(const std::byte* record, float* z) const {
        float scale, offset;
        memcpy(&scale, record + scale_offset_bytes(), sizeof scale);
        memcpy(&offset, record + scale_offset_bytes() + sizeof scale, sizeof offset);
        const Q* q = reinterpret_cast<const Q*>(record);
        for (int j = 0; j < latent_width(); ++j) z[j] = value(q[j]) * scale + offset;
    }

    // Latent-space attention passes straight through when the inner decoder is affine.
    /// Elements per head (the inner affine codec's).
    KVCAR_HD int head_dim() const
        requires affine_latent_codec<Inner>
    {
        return inner.head_dim();
    }
    /// The inner codec's query projection: writes P_hᵀ q to `qz` and returns q · μ_h, to be
    /// dotted with dequantized latents.
    KVCAR_HD float project_query(const float* q, int head, float* qz) const
        requires affine_latent_codec<Inner>
    {
        return inner.project_query(q, head, qz);
    }
    /// The inner codec's lift: out = P_h z + weight_sum · μ_h, z being a sum of dequantized
    /// latents.
    KVCAR_HD void lift(const float* z, float weight_sum, int head, float* out) const
        requires affine_latent_codec<Inner>
    {
        inner.lift(z, weight_sum, head, out);
    }

private:
    KVCAR_HD static float value(std::int8_t q) { return float(q) + 0.5f; }  // exact
    KVCAR_HD static float value(fp8_e4m3 q) { return to_float(q); }
};

/// Wraps `inner` (host side), checking that its latent fits the quantizer's local buffer.
template <latent_quantization Q = std::int8_t, latent_codec Inner>
quantized_codec<Inner, Q> make_quantized(const Inner& inner) {
    const int d = inner.latent_width();
    require(d > 0,
            "quantized_codec: latent width must be positive (got " + std::to_string(d) + ")");
    require(d <= max_latent_width, "quantized_codec: latent width " + std::to_string(d) +
                                       " exceeds max_latent_width " +
                                       std::to_string(max_latent_width));
    return quantized_codec<Inner, Q>{inner};
}

}  // namespace kvcar
