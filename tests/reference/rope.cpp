// Tests for kvcar/rope.hpp: hand-computed values, the rotation's invariants, and HF's fp32 path.
#include "catch.hpp"

#include <kvcar/rope.hpp>

#include <cmath>
#include <random>
#include <vector>

namespace {

using kvcar::rope_params;
using kvcar::rope_style;

std::vector<float> random_vector(int n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> x(static_cast<std::size_t>(n));
    for (float& v : x) v = dist(rng);
    return x;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
    return s;
}

std::vector<float> rotated(std::vector<float> x, int position, const rope_params& p) {
    kvcar::apply_rope(x.data(), int(x.size()), position, p);
    return x;
}

}  // namespace

TEST_CASE("rope: position 0 is the identity, in both styles", "[reference]") {
    for (rope_style style : {rope_style::half, rope_style::interleaved}) {
        const std::vector<float> x = random_vector(16, 1);
        REQUIRE(rotated(x, 0, {10000.0f, style, 0}) == x);
    }
}

TEST_CASE("rope: position 1, head_dim 4, theta 1e4 by hand", "[reference]") {
    // Two pairs with inverse frequencies 1e4^0 = 1 and 1e4^(-2/4) = 0.01.
    const std::vector<float> x{1.0f, 2.0f, 3.0f, 4.0f};
    const double c1 = std::cos(1.0), s1 = std::sin(1.0);
    const double c2 = std::cos(0.01), s2 = std::sin(0.01);

    SECTION("half: pairs (0, 2) at angle 1 and (1, 3) at angle 0.01") {
        const std::vector<float> y = rotated(x, 1, {10000.0f, rope_style::half, 0});
        REQUIRE(y[0] == Approx(1 * c1 - 3 * s1).margin(1e-6));
        REQUIRE(y[2] == Approx(3 * c1 + 1 * s1).margin(1e-6));
        REQUIRE(y[1] == Approx(2 * c2 - 4 * s2).margin(1e-6));
        REQUIRE(y[3] == Approx(4 * c2 + 2 * s2).margin(1e-6));
    }
    SECTION("interleaved: pairs (0, 1) at angle 1 and (2, 3) at angle 0.01") {
        const std::vector<float> y = rotated(x, 1, {10000.0f, rope_style::interleaved, 0});
        REQUIRE(y[0] == Approx(1 * c1 - 2 * s1).margin(1e-6));
        REQUIRE(y[1] == Approx(2 * c1 + 1 * s1).margin(1e-6));
        REQUIRE(y[2] == Approx(3 * c2 - 4 * s2).margin(1e-6));
        REQUIRE(y[3] == Approx(4 * c2 + 3 * s2).margin(1e-6));
    }
}

TEST_CASE("rope: partial rotary_dim rotates only the leading dimensions at its own frequencies",
          "[reference]") {
    // rotary_dim 4 in a head of 8 (GPT-NeoX / Phi style): the frequencies are those of a
    // 4-wide head, and dimensions 4..7 pass through untouched.
    const std::vector<float> x = random_vector(8, 2);
    for (rope_style style : {rope_style::half, rope_style::interleaved}) {
        const rope_params partial{10000.0f, style, 4};
        const std::vector<float> y = rotated(x, 7, partial);
        std::vector<float> head4(x.begin(), x.begin() + 4);
        head4 = rotated(head4, 7, {10000.0f, style, 0});
        for (int i = 0; i < 4; ++i) REQUIRE(y[std::size_t(i)] == head4[std::size_t(i)]);
        for (int i = 4; i < 8; ++i) REQUIRE(y[std::size_t(i)] == x[std::size_t(i)]);
    }
}

TEST_CASE("rope: the rotation preserves the norm and apply_rope_inverse undoes it", "[reference]") {
    for (rope_style style : {rope_style::half, rope_style::interleaved}) {
        const rope_params p{500000.0f, style, 0};
        for (int position : {1, 17, 1000, 32767}) {
            const std::vector<float> x = random_vector(64, unsigned(position));
            std::vector<float> y = rotated(x, position, p);
            REQUIRE(dot(y, y) == Approx(dot(x, x)).epsilon(1e-5));
            kvcar::apply_rope_inverse(y.data(), 64, position, p);
            for (std::size_t i = 0; i < x.size(); ++i) REQUIRE(y[i] == Approx(x[i]).margin(1e-5));
        }
    }
}

TEST_CASE("rope: q(m) . k(n) depends only on m - n", "[reference]") {
    const std::vector<float> q = random_vector(32, 10);
    const std::vector<float> k = random_vector(32, 11);
    for (rope_style style : {rope_style::half, rope_style::interleaved}) {
        const rope_params p{10000.0f, style, 0};
        for (int delta : {0, 3, 40}) {
            const double base = dot(rotated(q, delta, p), rotated(k, 0, p));
            for (int shift : {1, 9, 250}) {
                const double shifted = dot(rotated(q, delta + shift, p), rotated(k, shift, p));
                REQUIRE(shifted == Approx(base).margin(1e-4));
            }
        }
        // And it does depend on m - n: a different offset gives a different score.
        REQUIRE(std::fabs(dot(rotated(q, 5, p), k) - dot(q, k)) > 1e-3);
    }
}

TEST_CASE("rope: half and interleaved agree up to the permutation between their pairs",
          "[reference]") {
    // Pair i is (2i, 2i+1) interleaved and (i, i + rot/2) half: moving element 2i to i and
    // 2i+1 to i + rot/2 turns one convention into the other (what HF's Llama converter does).
    const int head_dim = 16;
    const int rot = 12;
    const std::vector<float> x = random_vector(head_dim, 20);
    auto to_half_order = [&](const std::vector<float>& v) {
        std::vector<float> out(v);
        for (int i = 0; i < rot / 2; ++i) {
            out[std::size_t(i)] = v[std::size_t(2 * i)];
            out[std::size_t(i + rot / 2)] = v[std::size_t(2 * i + 1)];
        }
        return out;
    };
    for (int position : {1, 33, 4096}) {
        const std::vector<float> a =
            to_half_order(rotated(x, position, {10000.0f, rope_style::interleaved, rot}));
        const std::vector<float> b =
            rotated(to_half_order(x), position, {10000.0f, rope_style::half, rot});
        REQUIRE(a == b);  // same floats: the same products on the same values
    }
}

TEST_CASE("rope: matches Hugging Face's fp32 arithmetic at long positions", "[reference]") {
    // HF: inv_freq = 1 / theta ** (arange(0, dim, 2).float() / dim), freqs = pos.float() *
    // inv_freq, cos/sin in fp32. The result must equal that to float rounding, and the test
    // also shows how far the fp32 angle is from the exact one at 32k (a few 1e-3).
    const int head_dim = 64;
    const int position = 32767;
    const std::vector<float> x = random_vector(head_dim, 30);
    const rope_params p{10000.0f, rope_style::half, 0};
    const std::vector<float> y = rotated(x, position, p);
    for (int i = 0; i < head_dim / 2; ++i) {
        const float inv_freq = 1.0f / std::pow(10000.0f, float(2 * i) / float(head_dim));
        const float angle = float(position) * inv_freq;
        const float c = std::cos(angle), s = std::sin(angle);
        const float x1 = x[std::size_t(i)], x2 = x[std::size_t(i + head_dim / 2)];
        REQUIRE(y[std::size_t(i)] == Approx(x1 * c - x2 * s).margin(1e-6));
        REQUIRE(y[std::size_t(i + head_dim / 2)] == Approx(x2 * c + x1 * s).margin(1e-6));

        const double exact = double(position) * std::pow(10000.0, -2.0 * i / head_dim);
        const double xe = double(x1) * std::cos(exact) - double(x2) * std::sin(exact);
        REQUIRE(std::fabs(y[std::size_t(i)] - xe) < 2e-2 * (std::fabs(x1) + std::fabs(x2)));
    }
}

TEST_CASE("rope: validate rejects parameters the device functions cannot use", "[reference]") {
    REQUIRE_NOTHROW(kvcar::validate(rope_params{}, 64));
    REQUIRE_NOTHROW(kvcar::validate(rope_params{10000.0f, rope_style::half, 32}, 64));
    KVCAR_REQUIRE_ERROR(kvcar::validate(rope_params{}, 0), "head_dim must be positive");
    KVCAR_REQUIRE_ERROR(kvcar::validate(rope_params{}, 7), "rotated width 7 is odd");
    KVCAR_REQUIRE_ERROR(kvcar::validate(rope_params{10000.0f, rope_style::half, 5}, 8),
                        "rotated width 5 is odd");
    KVCAR_REQUIRE_ERROR(kvcar::validate(rope_params{10000.0f, rope_style::half, 80}, 64),
                        "rotary_dim 80 is outside [0, head_dim = 64]");
    KVCAR_REQUIRE_ERROR(kvcar::validate(rope_params{10000.0f, rope_style::half, -2}, 64),
                        "rotary_dim -2 is outside");
    KVCAR_REQUIRE_ERROR(kvcar::validate(rope_params{0.0f, rope_style::half, 0}, 64),
                        "theta must be finite and positive");
    KVCAR_REQUIRE_ERROR(kvcar::validate(rope_params{NAN, rope_style::half, 0}, 64),
                        "theta must be finite and positive");
}

TEST_CASE("rope: rope_element gives apply_rope's value of each element on its own", "[reference]") {
    // The tiled prefill kernel rotates queries element by element as it loads them; every
    // element must equal what apply_rope leaves there, for both pair styles, a partial rotary
    // width and positions from 0 to a long context.
    const int head_dim = 64;
    const std::vector<float> x = random_vector(head_dim, 31);
    for (const rope_params p : {rope_params{10000.0f, rope_style::half, 0},
                                rope_params{500000.0f, rope_style::interleaved, 0},
                                rope_params{10000.0f, rope_style::half, 32},
                                rope_params{10000.0f, rope_style::interleaved, 16}}) {
        for (const int position : {0, 1, 17, 4095, 32767}) {
            const std::vector<float> want = rotated(x, position, p);
            for (int d = 0; d < head_dim; ++d) {
                CAPTURE(to_string(p.style), p.rotary_dim, position, d);
                REQUIRE(kvcar::rope_element(x.data(), d, head_dim, position, p) ==
                        Approx(want[std::size_t(d)]).margin(1e-6));
            }
        }
    }
}
