// kvcar/numeric.hpp — the 16- and 8-bit float formats a cache may store, usable on host and device.
//
// kvcar does not include <cuda_fp16.h> here so that host-only users compile with g++ alone.
// The types below are bit-compatible with __half, __nv_bfloat16 and __nv_fp8_e4m3, so kernels
// may reinterpret pointers to them. Conversions round to nearest even, as the CUDA intrinsics do.
#pragma once

#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>

#include "kvcar/common.hpp"

namespace kvcar {

/// IEEE binary16.
struct f16 {
    std::uint16_t bits;  ///< the raw binary16 bits: sign, 5 exponent bits, 10 mantissa bits
};
/// bfloat16: the upper half of a binary32.
struct bf16 {
    std::uint16_t bits;  ///< the raw bits: the upper 16 bits of the binary32 value
};
/// OCP FP8 E4M3 ("fn": no infinities, one NaN pattern, largest finite 448).
struct fp8_e4m3 {
    std::uint8_t bits;  ///< the raw bits: sign, 4 exponent bits (bias 7), 3 mantissa bits
};

namespace detail {

KVCAR_HD inline std::uint32_t float_bits(float f) {
    std::uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
KVCAR_HD inline float bits_float(std::uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

}  // namespace detail

/// Rounds to the nearest binary16, ties to even; beyond the f16 range (65520 and up) gives
/// infinity, NaN stays NaN.
KVCAR_HD inline f16 to_f16(float f) {
    std::uint32_t x = detail::float_bits(f);
    const std::uint16_t sign = std::uint16_t((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return {std::uint16_t(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u))};
    if (x >= 0x477ff000u) return {std::uint16_t(sign | 0x7c00u)};  // >= 65520 rounds to inf
    if (x < 0x38800000u) {
        // Subnormal half: the value is an integer multiple of 2^-24; scaling by 2^24 is exact.
        const float m = ::rintf(detail::bits_float(x) * 16777216.0f);
        return {std::uint16_t(sign | std::uint16_t(m))};
    }
    x += 0x0fffu + ((x >> 13) & 1u);  // round to nearest even at bit 13
    return {std::uint16_t(sign | ((x - 0x38000000u) >> 13))};
}

/// The exact float value of a binary16 (subnormals, infinities and NaN included).
KVCAR_HD inline float to_float(f16 h) {
    const std::uint32_t sign = std::uint32_t(h.bits & 0x8000u) << 16;
    const std::uint32_t e = (h.bits >> 10) & 0x1fu;
    const std::uint32_t m = h.bits & 0x3ffu;
    if (e == 0) {
        const float v = float(m) * 5.9604644775390625e-8f;  // m * 2^-24
        return sign ? -v : v;
    }
    if (e == 31) return detail::bits_float(sign | 0x7f800000u | (m << 13));
    return detail::bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

/// Rounds to the nearest bfloat16, ties to even; NaN stays a (quiet) NaN.
KVCAR_HD inline bf16 to_bf16(float f) {
    std::uint32_t x = detail::float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return {std::uint16_t(((x >> 16) & 0x8000u) | 0x7fc0u)};
    x += 0x7fffu + ((x >> 16) & 1u);
    return {std::uint16_t(x >> 16)};
}

/// The exact float value of a bfloat16.
KVCAR_HD inline float to_float(bf16 b) { return detail::bits_float(std::uint32_t(b.bits) << 16); }

/// Saturates to +-448 (the convention of scaled-fp8 KV caches: an outlier clips, never becomes NaN).
KVCAR_HD inline fp8_e4m3 to_fp8_e4m3(float f) {
    const std::uint32_t x = detail::float_bits(f);
    const std::uint8_t sign = std::uint8_t((x >> 24) & 0x80u);
    const std::uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return {std::uint8_t(0x7fu)};
    const float v = detail::bits_float(a);
    if (v >= 448.0f) return {std::uint8_t(sign | 0x7eu)};
    if (v < 0.015625f) {  // below 2^-6: subnormal, a multiple of 2^-9 (8 rounds up to 2^-6 = 0x08)
        return {std::uint8_t(sign | std::uint8_t(::rintf(v * 512.0f)))};
    }
    std::uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);  // round to 3 mantissa bits, nearest even
    const int e = int(r >> 23) - 127 + 7;
    const std::uint32_t m = (r >> 20) & 7u;
    if (e > 15 || (e == 15 && m == 7u)) return {std::uint8_t(sign | 0x7eu)};
    return {std::uint8_t(sign | std::uint8_t(e << 3) | std::uint8_t(m))};
}

/// The exact float value of an E4M3 byte; the pattern S.1111.111 is NaN.
KVCAR_HD inline float to_float(fp8_e4m3 q) {
    const int e = (q.bits >> 3) & 15;
    const int m = q.bits & 7;
    float v;
    if (e == 0)
        v = float(m) * 0.001953125f;  // m * 2^-9
    else if (e == 15 && m == 7)
        v = detail::bits_float(0x7fc00000u);
    else
        v = ldexpf(1.0f + float(m) * 0.125f, e - 7);
    return (q.bits & 0x80u) ? -v : v;
}

/// Identity, so generic code can call to_float on any element type.
KVCAR_HD inline float to_float(float f) { return f; }

/// The element formats a codec can store its latent in, with the name used in codec files.
template <class T>
struct element_traits;

/// Latents stored as float32 (no rounding).
template <>
struct element_traits<float> {
    static constexpr const char* name = "f32";  ///< the name codec files use for this storage
    KVCAR_HD static float store(float x) { return x; }  ///< x unchanged
};
/// Latents stored as IEEE binary16.
template <>
struct element_traits<f16> {
    static constexpr const char* name = "f16";  ///< the name codec files use for this storage
    KVCAR_HD static f16 store(float x) { return to_f16(x); }  ///< x rounded to binary16 (to_f16)
};
/// Latents stored as bfloat16.
template <>
struct element_traits<bf16> {
    static constexpr const char* name = "bf16";  ///< the name codec files use for this storage
    KVCAR_HD static bf16 store(float x) { return to_bf16(x); }  ///< x rounded to bfloat16 (to_bf16)
};
/// Latents stored as FP8 E4M3.
template <>
struct element_traits<fp8_e4m3> {
    static constexpr const char* name = "fp8_e4m3";  ///< the name codec files use for this storage
    /// `x` rounded to E4M3, saturating at +-448 (to_fp8_e4m3).
    KVCAR_HD static fp8_e4m3 store(float x) { return to_fp8_e4m3(x); }
};

/// A float format a latent can be stored in element by element.
template <class T>
concept float_element = requires(float x, T t) {
    { element_traits<T>::store(x) } -> std::same_as<T>;
    { to_float(t) } -> std::same_as<float>;
};

}  // namespace kvcar
