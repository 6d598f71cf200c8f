// Shared helpers of kvcar's GPU tests: random inputs, random codec parameters, host caches filled
// with random tokens, poisoned device outputs and error measures. Not a public header.
#pragma once

#include "catch.hpp"

#include <kvcar/codec/autoencoder.hpp>
#include <kvcar/codec/identity.hpp>
#include <kvcar/codec/linear.hpp>
#include <kvcar/codec/quantized.hpp>
#include <kvcar/cuda/buffer.cuh>
#include <kvcar/cuda/error.cuh>
#include <kvcar/kv_cache.hpp>
#include <kvcar/storage/paged.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace kvcar_test {

/// Codecs with a quantized record (quantized_codec): dequantize(record, z) gives the latent.
template <class Codec>
concept has_dequantize = requires(const Codec& c, const std::byte* record, float* z) {
    c.dequantize(record, z);
};

/// Latent element j of a record as the host codec sees it.
template <class Codec>
float host_latent(const Codec& c, const std::byte* record, int j) {
    if constexpr (has_dequantize<Codec>) {
        std::vector<float> z(static_cast<std::size_t>(c.latent_width()));
        c.dequantize(record, z.data());
        return z[static_cast<std::size_t>(j)];
    } else {
        using T = typename Codec::storage_type;
        return kvcar::to_float(reinterpret_cast<const T*>(record)[j]);
    }
}

inline std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float sigma = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, sigma);
    std::vector<float> x(n);
    for (float& v : x) v = dist(rng);
    return x;
}

/// A random (not fitted) linear codec: any basis is a valid codec for kernel tests.
inline kvcar::linear_params random_linear(int width, int rank, int heads, std::uint32_t seed) {
    kvcar::linear_params p;
    p.width = width;
    p.rank = rank;
    p.heads = heads;
    p.mean = random_floats(std::size_t(width), seed, 0.3f);
    p.basis = random_floats(std::size_t(width) * std::size_t(rank), seed + 1,
                            1.0f / std::sqrt(float(rank)));
    return p;
}

/// A random folded autoencoder with weights scaled by 1/sqrt(fan-in).
inline kvcar::folded_autoencoder random_autoencoder(int width, int hidden, int latent,
                                                    std::uint32_t seed) {
    kvcar::folded_autoencoder f;
    f.width = width;
    f.hidden = hidden;
    f.latent = latent;
    f.slope = 0.1f;
    const auto W = [&](std::size_t n, int fan_in, std::uint32_t s) {
        return random_floats(n, s, 1.0f / std::sqrt(float(fan_in)));
    };
    const std::size_t D = std::size_t(width), h = std::size_t(hidden), d = std::size_t(latent);
    f.enc1_w = W(h * D, width, seed);
    f.enc1_b = W(h, 4, seed + 1);
    f.enc2_wt = W(h * d, hidden, seed + 2);
    f.enc2_b = W(d, 4, seed + 3);
    f.dec1_w = W(h * d, latent, seed + 4);
    f.dec1_b = W(h, 4, seed + 5);
    f.dec2_wt = W(h * D, hidden, seed + 6);
    f.dec2_b = W(D, 4, seed + 7);
    f.validate();
    return f;
}

/// Appends `length` random tokens to every layer of `seq`, in chunks of `chunk` (prefill, then
/// decode-sized steps), and returns nothing: the cache is the record of what was stored.
template <class Cache>
void fill_sequence(Cache& cache, int seq, int length, std::uint32_t seed, int chunk = 7) {
    const kvcar::kv_geometry g = cache.geometry();
    const std::size_t width = std::size_t(g.token_width());
    for (int t = 0; t < length; t += chunk) {
        const int n = std::min(chunk, length - t);
        for (int l = 0; l < g.n_layers; ++l) {
            const std::uint32_t s = seed + 1000u * std::uint32_t(l) + std::uint32_t(t);
            const std::vector<float> k = random_floats(std::size_t(n) * width, s);
            const std::vector<float> v = random_floats(std::size_t(n) * width, s + 500u);
            cache.append(seq, l, k, v);
        }
    }
}

/// A device buffer of `n` floats filled with NaN (every byte 0xff): unwritten outputs show.
inline kvcar::gpu::device_buffer<float> poisoned(std::size_t n) {
    kvcar::gpu::device_buffer<float> b(n);
    b.fill_bytes(0xff);
    return b;
}

/// max |got - want| / max(max |want|, floor): an error relative to the output's scale. NaN or
/// infinity anywhere gives infinity.
inline double relative_error(std::span<const float> got, std::span<const float> want,
                             double floor = 1e-6) {
    REQUIRE(got.size() == want.size());
    double worst = 0.0, scale = floor;
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i]) || !std::isfinite(want[i])) return INFINITY;
        worst = std::max(worst, std::fabs(double(got[i]) - double(want[i])));
        scale = std::max(scale, std::fabs(double(want[i])));
    }
    return worst / scale;
}

/// Tolerances of row_relative_error for kernels that multiply fp16 operands (tensor cores, f16
/// records): q, k, p and v are each rounded once to fp16 (unit roundoff u = 2^-11), so a head's
/// output moves by a few u relative to its scale; 4u leaves room for the sums of those roundings.
inline constexpr double fp16_operands_tolerance = 4.0 / 2048.0;
/// int8 records widened to fp16 operands: the dequantized value (q + 1/2) * scale + offset is
/// rounded to fp16 once more before the product, and the scale product once more in the sum: 8u.
/// (Measured on an H200: 1.1e-3 to 2.6e-3 over 70,000 sequences.)
inline constexpr double int8_fp16_operands_tolerance = 8.0 / 2048.0;

/// The worst, over rows of `width` elements, of max |got − want| / max(max |want| of the row,
/// floor). Attention outputs pass width = head_dim, so each (query, head) is held to its own
/// scale: one lost token of a 1000-token sequence moves its heads by ~1e-3 of their scale (and
/// more where that token carried weight), which a scale taken over the whole batch (the largest
/// |want| of any head) would hide. NaN or infinity anywhere gives infinity.
inline double row_relative_error(std::span<const float> got, std::span<const float> want,
                                 std::size_t width, double floor = 1e-6) {
    REQUIRE(got.size() == want.size());
    REQUIRE(width > 0);
    REQUIRE(got.size() % width == 0);
    double worst = 0.0;
    for (std::size_t r = 0; r < got.size(); r += width) {
        double diff = 0.0, scale = floor;
        for (std::size_t i = r; i < r + width; ++i) {
            if (!std::isfinite(got[i]) || !std::isfinite(want[i])) return INFINITY;
            diff = std::max(diff, std::fabs(double(got[i]) - double(want[i])));
            scale = std::max(scale, std::fabs(double(want[i])));
        }
        worst = std::max(worst, diff / scale);
    }
    return worst;
}

/// Unit roundoff (half an ulp, relative) of the formats records are stored in: a value rounded
/// to the format is within u·|x| of x (normal range). f16: 2^-11; bf16: 2^-8; fp8 e4m3: 2^-4.
inline constexpr double f16_unit_roundoff = 1.0 / 2048.0;
inline constexpr double bf16_unit_roundoff = 1.0 / 256.0;
inline constexpr double fp8_e4m3_unit_roundoff = 1.0 / 16.0;

}  // namespace kvcar_test
