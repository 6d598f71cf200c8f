// Tests for kvcar/numeric.hpp: f16, bf16 and fp8 e4m3 conversions, exhaustively where the format
// is small and against independent brute-force references where it is not.
#include "catch.hpp"

#include <kvcar/numeric.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace kvcar;

namespace {

float from_bits(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
std::uint32_t bits_of(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

bool f16_is_nan(std::uint16_t b) { return (b & 0x7c00u) == 0x7c00u && (b & 0x3ffu) != 0; }
bool fp8_is_nan(std::uint8_t b) { return (b & 0x7fu) == 0x7fu; }

/// Round-to-nearest-even onto a sorted list of representable non-negative values, saturating at
/// the largest: the definition of the conversion, independent of any bit manipulation.
/// `even(i)` says whether candidate i has an even significand (the tie winner).
template <class Even>
std::size_t nearest_even(const std::vector<double>& grid, double v, Even even) {
    if (v >= grid.back()) return grid.size() - 1;
    std::size_t hi = 1;
    while (grid[hi] < v) ++hi;
    const std::size_t lo = hi - 1;
    const double dlo = v - grid[lo], dhi = grid[hi] - v;
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return even(lo) ? lo : hi;
}

}  // namespace

// ----------------------------------------------------------------------------------------- f16

TEST_CASE("f16: every non-NaN bit pattern round-trips bit-exactly", "[reference]") {
    int checked = 0;
    for (std::uint32_t b = 0; b < 65536u; ++b) {
        if (f16_is_nan(std::uint16_t(b))) {
            REQUIRE(std::isnan(to_float(f16{std::uint16_t(b)})));
            continue;
        }
        const float f = to_float(f16{std::uint16_t(b)});
        const f16 back = to_f16(f);
        if (back.bits != b) FAIL("f16 pattern " << b << " -> " << f << " -> " << back.bits);
        ++checked;
    }
    REQUIRE(checked == 65536 - 2 * 1023);
}

TEST_CASE("f16: known values", "[reference]") {
    CHECK(to_f16(1.0f).bits == 0x3c00u);
    CHECK(to_f16(-2.0f).bits == 0xc000u);
    CHECK(to_f16(0.0f).bits == 0x0000u);
    CHECK(to_f16(-0.0f).bits == 0x8000u);
    CHECK(to_f16(65504.0f).bits == 0x7bffu);
    CHECK(to_float(f16{0x7bffu}) == 65504.0f);
    CHECK(to_f16(std::ldexp(1.0f, -24)).bits == 0x0001u);  // smallest subnormal
    CHECK(to_float(f16{0x0001u}) == std::ldexp(1.0f, -24));
    CHECK(to_f16(std::ldexp(1.0f, -14)).bits == 0x0400u);  // smallest normal
    CHECK(to_f16(65520.0f).bits == 0x7c00u);               // halfway to 2^16 rounds to inf
    CHECK(to_f16(std::nextafter(65520.0f, 0.0f)).bits == 0x7bffu);
    CHECK(to_f16(-1e6f).bits == 0xfc00u);
    CHECK(to_f16(std::numeric_limits<float>::infinity()).bits == 0x7c00u);
    CHECK(f16_is_nan(to_f16(std::numeric_limits<float>::quiet_NaN()).bits));
    CHECK(std::isinf(to_float(f16{0x7c00u})));
}

TEST_CASE("f16: ties round to even, in the normal and the subnormal range", "[reference]") {
    // 1 + 2^-11 is halfway between 1 (even) and 1 + 2^-10 (odd).
    CHECK(to_f16(1.0f + std::ldexp(1.0f, -11)).bits == 0x3c00u);
    // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
    CHECK(to_f16(1.0f + 3.0f * std::ldexp(1.0f, -11)).bits == 0x3c02u);
    // Just above a tie goes up.
    CHECK(to_f16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)).bits == 0x3c01u);
    // 2^-25 is halfway between 0 and the smallest subnormal: to 0. 3 * 2^-25: to 2 * 2^-24.
    CHECK(to_f16(std::ldexp(1.0f, -25)).bits == 0x0000u);
    CHECK(to_f16(3.0f * std::ldexp(1.0f, -25)).bits == 0x0002u);
    CHECK(to_f16(-3.0f * std::ldexp(1.0f, -25)).bits == 0x8002u);
    // Halfway between the largest subnormal (1023 * 2^-24) and the smallest normal: to normal.
    CHECK(to_f16(1023.5f * std::ldexp(1.0f, -24)).bits == 0x0400u);
    // Tiny values underflow to a signed zero.
    CHECK(to_f16(1e-10f).bits == 0x0000u);
    CHECK(to_f16(-1e-10f).bits == 0x8000u);
}

#if defined(__FLT16_MAX__)
TEST_CASE("f16: random floats convert exactly as the compiler's _Float16 does", "[reference]") {
    std::mt19937 rng(7);
    std::uniform_int_distribution<std::uint32_t> bits;
    int compared = 0;
    for (int i = 0; i < 2000000; ++i) {
        // Bias towards the f16 range (exponents 2^-26 .. 2^17) where rounding is interesting.
        std::uint32_t u = bits(rng);
        if (i % 2 == 0) u = (u & 0x807fffffu) | ((101u + (u >> 23) % 44u) << 23);
        const float f = from_bits(u);
        if (std::isnan(f)) continue;
        const _Float16 h = static_cast<_Float16>(f);
        std::uint16_t ref;
        std::memcpy(&ref, &h, sizeof ref);
        const std::uint16_t got = to_f16(f).bits;
        if (got != ref) FAIL("float bits " << u << ": got " << got << ", _Float16 " << ref);
        ++compared;
    }
    REQUIRE(compared > 1000000);
}
#endif

// ---------------------------------------------------------------------------------------- bf16

TEST_CASE("bf16: every non-NaN bit pattern round-trips bit-exactly", "[reference]") {
    for (std::uint32_t b = 0; b < 65536u; ++b) {
        const float f = to_float(bf16{std::uint16_t(b)});
        REQUIRE(bits_of(f) == b << 16);
        if (std::isnan(f)) {
            REQUIRE(std::isnan(to_float(to_bf16(f))));
            continue;
        }
        if (to_bf16(f).bits != b) FAIL("bf16 pattern " << b);
    }
}

TEST_CASE("bf16: known values and ties to even", "[reference]") {
    CHECK(to_bf16(1.0f).bits == 0x3f80u);
    CHECK(to_bf16(-2.0f).bits == 0xc000u);
    CHECK(to_bf16(1.0f + std::ldexp(1.0f, -8)).bits == 0x3f80u);         // tie, 1 is even
    CHECK(to_bf16(1.0f + 3.0f * std::ldexp(1.0f, -8)).bits == 0x3f82u);  // tie, up to even
    CHECK(to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)).bits == 0x3f81u);
    CHECK(to_bf16(std::numeric_limits<float>::max()).bits == 0x7f80u);  // rounds to inf
    CHECK(to_bf16(std::numeric_limits<float>::infinity()).bits == 0x7f80u);
    CHECK(to_bf16(-std::numeric_limits<float>::infinity()).bits == 0xff80u);
    CHECK(std::isnan(to_float(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
    // A signalling-looking NaN whose payload sits only in the low bits must stay a NaN.
    CHECK(std::isnan(to_float(to_bf16(from_bits(0x7f800001u)))));
    CHECK(to_bf16(from_bits(0x00000001u)).bits == 0x0000u);  // float subnormal below bf16's
}

TEST_CASE("bf16: random floats round to the nearest bf16, ties to even", "[reference]") {
    std::mt19937 rng(11);
    std::uniform_int_distribution<std::uint32_t> bits;
    for (int i = 0; i < 1000000; ++i) {
        std::uint32_t u = bits(rng);
        if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // force exact ties
        const float f = from_bits(u);
        if (std::isnan(f) || std::isinf(f)) continue;
        // Reference: the two bf16 neighbours by truncation, chosen in double precision.
        const std::uint32_t lo = u & 0xffff0000u;
        const std::uint32_t hi = lo + 0x10000u;
        // Past the largest bf16 the upper neighbour is infinity, reached as if it were 2^128.
        const double hi_value = (hi & 0x7fffffffu) == 0x7f800000u
                                    ? std::copysign(std::ldexp(1.0, 128), double(f))
                                    : double(from_bits(hi));
        const double dlo = std::fabs(double(f) - double(from_bits(lo)));
        const double dhi = std::fabs(hi_value - double(f));
        std::uint32_t ref = dlo < dhi ? lo : dhi < dlo ? hi : ((lo >> 16) & 1u) ? hi : lo;
        if (to_bf16(f).bits != ref >> 16) FAIL("float bits " << u);
    }
}

// ------------------------------------------------------------------------------------ fp8 e4m3

TEST_CASE("fp8_e4m3: every non-NaN bit pattern round-trips", "[reference]") {
    for (std::uint32_t b = 0; b < 256u; ++b) {
        const float f = to_float(fp8_e4m3{std::uint8_t(b)});
        if (fp8_is_nan(std::uint8_t(b))) {
            REQUIRE(std::isnan(f));
            continue;
        }
        INFO("pattern " << b << " value " << f);
        REQUIRE(std::isfinite(f));
        REQUIRE(to_fp8_e4m3(f).bits == b);
    }
}

TEST_CASE("fp8_e4m3: known values, saturation and subnormals", "[reference]") {
    CHECK(to_float(fp8_e4m3{0x7eu}) == 448.0f);
    CHECK(to_float(fp8_e4m3{0xfeu}) == -448.0f);
    CHECK(to_fp8_e4m3(448.0f).bits == 0x7eu);
    CHECK(to_fp8_e4m3(1e6f).bits == 0x7eu);
    CHECK(to_fp8_e4m3(-1e6f).bits == 0xfeu);
    CHECK(to_fp8_e4m3(464.0f).bits == 0x7eu);  // would round to 480 = NaN pattern: saturate
    CHECK(to_fp8_e4m3(std::numeric_limits<float>::infinity()).bits == 0x7eu);
    CHECK(fp8_is_nan(to_fp8_e4m3(std::numeric_limits<float>::quiet_NaN()).bits));
    CHECK(to_fp8_e4m3(1.0f).bits == 0x38u);
    CHECK(to_fp8_e4m3(-2.0f).bits == 0xc0u);
    CHECK(to_float(fp8_e4m3{0x01u}) == std::ldexp(1.0f, -9));  // smallest subnormal
    CHECK(to_float(fp8_e4m3{0x07u}) == 7.0f * std::ldexp(1.0f, -9));
    CHECK(to_float(fp8_e4m3{0x08u}) == std::ldexp(1.0f, -6));        // smallest normal
    CHECK(to_fp8_e4m3(std::ldexp(1.0f, -10)).bits == 0x00u);         // tie between 0 and 2^-9: to 0
    CHECK(to_fp8_e4m3(3.0f * std::ldexp(1.0f, -10)).bits == 0x02u);  // tie: to even 2 * 2^-9
    CHECK(to_fp8_e4m3(7.5f * std::ldexp(1.0f, -9)).bits == 0x08u);   // tie: up to 2^-6
    CHECK(to_fp8_e4m3(1.0625f).bits == 0x38u);  // tie between 1 and 1.125: to even
    CHECK(to_fp8_e4m3(1.1875f).bits == 0x3au);  // tie between 1.125 and 1.25: to even
    CHECK(to_fp8_e4m3(-0.0f).bits == 0x80u);
    CHECK(to_fp8_e4m3(1e-30f).bits == 0x00u);
}

TEST_CASE("fp8_e4m3: random floats round to the nearest value, ties to even, saturating",
          "[reference]") {
    std::vector<double> grid;  // the 127 non-negative finite values, ascending
    for (std::uint32_t b = 0; b < 127u; ++b) grid.push_back(to_float(fp8_e4m3{std::uint8_t(b)}));
    for (std::size_t i = 1; i < grid.size(); ++i) REQUIRE(grid[i] > grid[i - 1]);
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> exponent(-14.0f, 10.0f);
    std::uniform_int_distribution<int> coin(0, 1);
    for (int i = 0; i < 300000; ++i) {
        float v = std::exp2(exponent(rng));
        if (i % 3 == 0) {  // exact midpoints between neighbours
            const std::size_t k = std::size_t(i / 3) % (grid.size() - 1);
            v = float((grid[k] + grid[k + 1]) / 2);
        }
        const bool negative = coin(rng) == 1;
        const std::size_t ref = nearest_even(grid, v, [](std::size_t k) { return k % 2 == 0; });
        const std::uint8_t want = std::uint8_t(ref | (negative ? 0x80u : 0u));
        const std::uint8_t got = to_fp8_e4m3(negative ? -v : v).bits;
        if (got != want)
            FAIL("value " << (negative ? -v : v) << ": got " << int(got) << ", want " << int(want));
    }
}

// ------------------------------------------------------------------------------------- traits

TEST_CASE("element traits name the formats and store through the conversions", "[reference]") {
    static_assert(float_element<float> && float_element<f16> && float_element<bf16> &&
                  float_element<fp8_e4m3>);
    static_assert(!float_element<double> && !float_element<int>);
    static_assert(sizeof(f16) == 2 && sizeof(bf16) == 2 && sizeof(fp8_e4m3) == 1);
    CHECK(std::string(element_traits<float>::name) == "f32");
    CHECK(std::string(element_traits<f16>::name) == "f16");
    CHECK(std::string(element_traits<bf16>::name) == "bf16");
    CHECK(std::string(element_traits<fp8_e4m3>::name) == "fp8_e4m3");
    CHECK(element_traits<f16>::store(0.1f).bits == to_f16(0.1f).bits);
    CHECK(element_traits<bf16>::store(0.1f).bits == to_bf16(0.1f).bits);
    CHECK(element_traits<fp8_e4m3>::store(0.1f).bits == to_fp8_e4m3(0.1f).bits);
    CHECK(element_traits<float>::store(0.1f) == 0.1f);
    CHECK(to_float(0.25f) == 0.25f);
}
