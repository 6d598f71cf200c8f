// Tests for kvcar/codec/quantized.hpp: int8 and fp8 latent quantization around other codecs.
#include "catch.hpp"

#include <kvcar/codec/autoencoder.hpp>
#include <kvcar/codec/identity.hpp>
#include <kvcar/codec/linear.hpp>
#include <kvcar/codec/quantized.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

using namespace kvcar;

using int8_identity = quantized_codec<identity_codec<float>>;
using fp8_identity = quantized_codec<identity_codec<float>, fp8_e4m3>;
using int8_linear = quantized_codec<linear_codec<float>>;

static_assert(kv_codec<int8_identity>);
static_assert(latent_codec<int8_identity>);
static_assert(latent_codec<fp8_identity>);
static_assert(!affine_latent_codec<int8_identity>);
static_assert(affine_latent_codec<int8_linear>);
static_assert(affine_latent_codec<quantized_codec<linear_codec<f16>, fp8_e4m3>>);
static_assert(latent_codec<quantized_codec<autoencoder_codec<f16>>>);
static_assert(!affine_latent_codec<quantized_codec<autoencoder_codec<f16>>>);
static_assert(std::is_same_v<int8_identity::storage_type, std::int8_t>);
static_assert(std::is_same_v<fp8_identity::storage_type, fp8_e4m3>);
static_assert(latent_quantization<std::int8_t> && latent_quantization<fp8_e4m3>);
static_assert(!latent_quantization<std::uint8_t> && !latent_quantization<f16>);

namespace {

using idx = std::size_t;

struct scale_and_offset {
    float scale, offset;
};

template <class Codec>
scale_and_offset read_header(const Codec& c, const std::vector<std::byte>& record) {
    scale_and_offset h;
    std::memcpy(&h.scale, record.data() + c.scale_offset_bytes(), sizeof(float));
    std::memcpy(&h.offset, record.data() + c.scale_offset_bytes() + 4, sizeof(float));
    return h;
}

/// Groups that stress the quantizer: ordinary, skewed, outliers, constant, huge, tiny.
std::vector<std::vector<float>> test_groups(int d, std::mt19937& rng) {
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<std::vector<float>> groups;
    const idx n = idx(d);
    for (int trial = 0; trial < 200; ++trial) {
        std::vector<float> z(n);
        const int kind = trial % 10;
        for (float& v : z) v = kind < 3 ? g(rng) * 5.0f : u(rng);
        switch (kind) {
            case 3:  // far from zero
                for (float& v : z) v = v * 0.5f + 100.0f;
                break;
            case 4:  // tiny, all negative
                for (float& v : z) v = -std::fabs(v) * 1e-30f;
                break;
            case 5:  // one outlier
                z[idx(trial) % n] = 1e4f;
                break;
            case 6:  // constant
                std::fill(z.begin(), z.end(), float(trial) - 7.25f);
                break;
            case 7:  // near float's limit
                for (float& v : z) v *= 3e38f;
                break;
            case 8:  // spanning ±FLT_MAX: the range itself overflows float
                z.front() = -3.4e38f;
                z.back() = 3.4e38f;
                break;
            case 9:  // few distinct values
                for (float& v : z) v = std::round(v * 4.0f) / 4.0f;
                break;
            default: break;
        }
        groups.push_back(z);
    }
    return groups;
}

}  // namespace

TEST_CASE("quantized: bytes_per_group is d codes padded to 4, plus scale and offset", "[codec]") {
    CHECK(make_quantized(identity_codec<float>{32}).bytes_per_group() == 40);
    CHECK(make_quantized(identity_codec<float>{5}).bytes_per_group() == 16);
    CHECK(make_quantized(identity_codec<float>{1}).bytes_per_group() == 12);
    CHECK(make_quantized<fp8_e4m3>(identity_codec<float>{32}).bytes_per_group() == 40);
    CHECK(make_quantized<fp8_e4m3>(identity_codec<float>{3}).bytes_per_group() == 12);
    CHECK(make_quantized(identity_codec<float>{768}).bytes_per_group() == 776);
    CHECK(make_quantized(identity_codec<float>{5}).scale_offset_bytes() == 8);
    for (int d = 1; d < 20; ++d)
        CHECK(make_quantized(identity_codec<float>{d}).bytes_per_group() % 4 == 0);
}

TEST_CASE("quantized int8: per-element error is at most half a step", "[codec]") {
    std::mt19937 rng(1);
    for (int d : {1, 2, 7, 32, 100}) {
        INFO("d = " << d);
        const int8_identity codec = make_quantized(identity_codec<float>{d});
        std::vector<std::byte> record(codec.bytes_per_group());
        std::vector<float> back(static_cast<idx>(d));
        for (const std::vector<float>& z : test_groups(d, rng)) {
            codec.quantize(z.data(), record.data());
            codec.dequantize(record.data(), back.data());
            const auto [lo_it, hi_it] = std::minmax_element(z.begin(), z.end());
            const float lo = *lo_it, hi = *hi_it;
            const scale_and_offset h = read_header(codec, record);
            REQUIRE(std::isfinite(h.scale));
            REQUIRE(std::isfinite(h.offset));
            if (lo == hi) {
                REQUIRE(h.scale == 0.0f);
                for (idx j = 0; j < idx(d); ++j) REQUIRE(back[j] == z[j]);  // exact
                continue;
            }
            REQUIRE(double(h.scale) == Approx((double(hi) - double(lo)) / 255.0).epsilon(1e-6));
            // Float rounding of the arithmetic adds a few ulps of the group's magnitude.
            const float slack = 4e-7f * std::max(std::fabs(lo), std::fabs(hi));
            const std::int8_t* q = reinterpret_cast<const std::int8_t*>(record.data());
            for (idx j = 0; j < idx(d); ++j) {
                INFO("element " << j << " value " << z[j] << " decoded " << back[j]);
                REQUIRE(std::fabs(back[j] - z[j]) <= h.scale * 0.5f + slack);
                if (z[j] == lo) REQUIRE(q[j] == -128);  // the extremes take the end codes
                if (z[j] == hi) REQUIRE(q[j] == 127);
            }
        }
    }
}

TEST_CASE("quantized fp8: error is relative to the distance from the group's midpoint", "[codec]") {
    std::mt19937 rng(2);
    for (int d : {1, 3, 32, 64}) {
        INFO("d = " << d);
        const fp8_identity codec = make_quantized<fp8_e4m3>(identity_codec<float>{d});
        std::vector<std::byte> record(codec.bytes_per_group());
        std::vector<float> back(static_cast<idx>(d));
        for (const std::vector<float>& z : test_groups(d, rng)) {
            codec.quantize(z.data(), record.data());
            codec.dequantize(record.data(), back.data());
            const auto [lo_it, hi_it] = std::minmax_element(z.begin(), z.end());
            const double lo = *lo_it, hi = *hi_it;
            const scale_and_offset h = read_header(codec, record);
            REQUIRE(std::isfinite(h.scale));
            if (lo == hi) {
                REQUIRE(h.scale == 0.0f);
                for (idx j = 0; j < idx(d); ++j) REQUIRE(back[j] == z[j]);
                continue;
            }
            const double slack = 4e-7 * std::max(std::fabs(lo), std::fabs(hi));
            REQUIRE(double(h.offset) == Approx(0.5 * (lo + hi)).epsilon(1e-6).margin(slack));
            REQUIRE(double(h.scale) == Approx((hi - lo) / 2.0 / 448.0).epsilon(1e-6));
            for (idx j = 0; j < idx(d); ++j) {
                INFO("element " << j << " value " << z[j] << " decoded " << back[j]);
                // 3 mantissa bits: half an ulp is 2^-4 relative; subnormal steps are 2^-9 · scale.
                const double bound =
                    std::fabs(double(z[j]) - h.offset) / 16.0 + double(h.scale) / 1024.0 + slack;
                REQUIRE(std::fabs(double(back[j]) - double(z[j])) <= bound);
                REQUIRE(std::fabs(double(back[j]) - double(z[j])) <=
                        (hi - lo) / 32.0 + double(h.scale) / 1024.0 + slack);
            }
        }
    }
}

TEST_CASE("quantized: padding bytes are zero, so equal latents give equal records", "[codec]") {
    const int8_identity codec = make_quantized(identity_codec<float>{5});
    std::vector<std::byte> record(codec.bytes_per_group(), std::byte{0xff});
    const std::vector<float> z = {1.0f, -2.0f, 3.0f, 0.5f, 0.0f};
    codec.quantize(z.data(), record.data());
    for (idx b = 5; b < 8; ++b) REQUIRE(record[b] == std::byte{0});
}

TEST_CASE("quantized<identity>: encode/decode round trip within the quantization bound",
          "[codec]") {
    const int width = 64;
    const auto int8 = make_quantized(identity_codec<float>{width});
    const auto fp8 = make_quantized<fp8_e4m3>(identity_codec<float>{width});
    std::mt19937 rng(3);
    std::normal_distribution<float> g(0.0f, 2.0f);
    std::vector<float> x(static_cast<idx>(width)), y(static_cast<idx>(width)),
        z(static_cast<idx>(width));
    std::vector<std::byte> record(int8.bytes_per_group());
    for (int trial = 0; trial < 50; ++trial) {
        for (float& v : x) v = g(rng);
        const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
        const float range = *hi - *lo;
        int8.encode(x.data(), record.data());
        int8.decode(record.data(), y.data());
        for (idx i = 0; i < idx(width); ++i)
            REQUIRE(std::fabs(y[i] - x[i]) <= range / 510.0f + 1e-5f);
        fp8.encode(x.data(), record.data());
        fp8.decode(record.data(), y.data());
        for (idx i = 0; i < idx(width); ++i)
            REQUIRE(std::fabs(y[i] - x[i]) <= range / 32.0f + 1e-5f);
        fp8.dequantize(record.data(), z.data());
        REQUIRE(z == y);  // identity's from_latent copies
    }
}

TEST_CASE("quantized<linear>: decode is the inner decoder of the dequantized latent", "[codec]") {
    const int heads = 2, head_dim = 8, width = heads * head_dim, rank = 6;
    std::mt19937 rng(4);
    std::normal_distribution<float> g(0.0f, 1.0f);
    linear_params p;
    p.width = width;
    p.rank = rank;
    p.heads = heads;
    for (int i = 0; i < width; ++i) p.mean.push_back(g(rng));
    for (int i = 0; i < width * rank; ++i) p.basis.push_back(0.4f * g(rng));
    const linear_codec<float> inner = p.codec<float>();
    const int8_linear codec = make_quantized(inner);
    REQUIRE(codec.group_width() == width);
    REQUIRE(codec.latent_width() == rank);
    REQUIRE(codec.head_dim() == head_dim);
    REQUIRE(codec.bytes_per_group() == 16);

    std::vector<float> x(static_cast<idx>(width)), y(static_cast<idx>(width)),
        want(static_cast<idx>(width)), z(static_cast<idx>(rank)), zq(static_cast<idx>(rank));
    std::vector<std::byte> record(codec.bytes_per_group());
    for (int trial = 0; trial < 20; ++trial) {
        for (float& v : x) v = 3.0f * g(rng);
        codec.encode(x.data(), record.data());
        codec.decode(record.data(), y.data());
        codec.dequantize(record.data(), zq.data());
        inner.from_latent(zq.data(), want.data());
        REQUIRE(y == want);
        codec.to_latent(x.data(), z.data());  // forwarded: the unquantized latent
        const auto [lo, hi] = std::minmax_element(z.begin(), z.end());
        for (idx j = 0; j < idx(rank); ++j)
            REQUIRE(std::fabs(zq[j] - z[j]) <= (*hi - *lo) / 510.0f + 1e-5f);

        // Latent-space attention on the dequantized latent equals attention on decoded vectors.
        for (int h = 0; h < heads; ++h) {
            std::vector<float> q(static_cast<idx>(head_dim)), qz(static_cast<idx>(rank)),
                out(static_cast<idx>(head_dim));
            for (float& v : q) v = g(rng);
            const float bias = codec.project_query(q.data(), h, qz.data());
            double latent = bias, direct = 0.0;
            for (idx j = 0; j < idx(rank); ++j) latent += double(qz[j]) * zq[j];
            for (idx r = 0; r < idx(head_dim); ++r)
                direct += double(q[r]) * y[idx(h * head_dim) + r];
            REQUIRE(latent == Approx(direct).epsilon(1e-5).margin(1e-5));
            codec.lift(zq.data(), 1.0f, h, out.data());  // one token with weight 1: decode
            for (idx r = 0; r < idx(head_dim); ++r)
                REQUIRE(out[r] == Approx(y[idx(h * head_dim) + r]).epsilon(1e-5).margin(1e-5));
        }
    }
}

TEST_CASE("make_quantized: rejects latents the quantizer cannot hold", "[codec]") {
    KVCAR_REQUIRE_ERROR(make_quantized(identity_codec<float>{max_latent_width + 1}),
                        "latent width 1025 exceeds max_latent_width 1024");
    KVCAR_REQUIRE_ERROR(make_quantized<fp8_e4m3>(identity_codec<f16>{0}),
                        "latent width must be positive");
    REQUIRE_NOTHROW(make_quantized(identity_codec<float>{max_latent_width}));
}
