// Tests for kvcar/codec/identity.hpp: the uncompressed baseline codec.
#include "catch.hpp"

#include <kvcar/codec/identity.hpp>

#include <cstddef>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

using namespace kvcar;

static_assert(kv_codec<identity_codec<float>>);
static_assert(latent_codec<identity_codec<float>>);
static_assert(latent_codec<identity_codec<f16>>);
static_assert(latent_codec<identity_codec<bf16>>);
// Its decoder is the identity, but it offers no per-head query projection: not affine.
static_assert(!affine_latent_codec<identity_codec<f16>>);
static_assert(std::is_same_v<identity_codec<>::storage_type, f16>);

namespace {

std::vector<float> random_vector(int n, std::uint32_t seed, float scale = 3.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.0f, scale);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = g(rng);
    return v;
}

}  // namespace

TEST_CASE("identity<f32>: round trip is bit-exact", "[codec]") {
    const int width = 77;
    const identity_codec<float> codec{width};
    std::vector<float> x = random_vector(width, 1);
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 1e-40f;  // a float subnormal survives too
    x[3] = 3e38f;
    std::vector<std::byte> record(codec.bytes_per_group());
    std::vector<float> y(std::size_t(width), 42.0f);
    codec.encode(x.data(), record.data());
    codec.decode(record.data(), y.data());
    REQUIRE(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
    REQUIRE(codec.group_width() == width);
    REQUIRE(codec.latent_width() == width);
}

template <class Element>
void check_16_bit_round_trip() {
    const int width = 64;
    const identity_codec<Element> codec{width};
    const std::vector<float> x = random_vector(width, 2, 100.0f);
    std::vector<std::byte> record(codec.bytes_per_group());
    std::vector<float> y(static_cast<std::size_t>(width));
    codec.encode(x.data(), record.data());
    codec.decode(record.data(), y.data());
    const Element* stored = reinterpret_cast<const Element*>(record.data());
    for (int i = 0; i < width; ++i) {
        const Element want = element_traits<Element>::store(x[std::size_t(i)]);
        REQUIRE(stored[i].bits == want.bits);
        REQUIRE(y[std::size_t(i)] == to_float(want));
    }
    // Decoding what was decoded is exact: the second pass stores exactly representable values.
    std::vector<std::byte> again(codec.bytes_per_group());
    codec.encode(y.data(), again.data());
    REQUIRE(std::memcmp(again.data(), record.data(), record.size()) == 0);
}

TEST_CASE("identity<16-bit>: round trip equals the format's rounding", "[codec]") {
    check_16_bit_round_trip<f16>();
    check_16_bit_round_trip<bf16>();
}

TEST_CASE("identity: to_latent and from_latent copy", "[codec]") {
    const identity_codec<bf16> codec{5};
    const std::vector<float> x = {1.5f, -2.0f, 0.1f, 7.0f, -0.25f};
    std::vector<float> z(5), y(5);
    codec.to_latent(x.data(), z.data());
    codec.from_latent(z.data(), y.data());
    REQUIRE(z == x);  // not rounded to storage: to_latent is exact
    REQUIRE(y == x);
}

TEST_CASE("identity: bytes_per_group pads each record to 4 bytes", "[codec]") {
    CHECK(identity_codec<float>{4}.bytes_per_group() == 16);
    CHECK(identity_codec<float>{1}.bytes_per_group() == 4);
    CHECK(identity_codec<f16>{64}.bytes_per_group() == 128);
    CHECK(identity_codec<f16>{3}.bytes_per_group() == 8);   // 6 bytes, padded
    CHECK(identity_codec<bf16>{1}.bytes_per_group() == 4);  // 2 bytes, padded
    CHECK(identity_codec<bf16>{768}.bytes_per_group() == 1536);
    CHECK(identity_codec<f16>{0}.bytes_per_group() == 0);
    for (int w = 1; w < 40; ++w) {
        CHECK(identity_codec<f16>{w}.bytes_per_group() % 4 == 0);
        CHECK(identity_codec<f16>{w}.bytes_per_group() >= std::size_t(w) * 2);
        CHECK(identity_codec<f16>{w}.bytes_per_group() < std::size_t(w) * 2 + 4);
    }
}

TEST_CASE("identity: encode writes only inside its record", "[codec]") {
    const identity_codec<f16> codec{3};  // 6 bytes of data in an 8-byte record
    std::vector<std::byte> buffer(16, std::byte{0xab});
    const std::vector<float> x = {1.0f, 2.0f, 3.0f};
    codec.encode(x.data(), buffer.data() + 4);
    for (std::size_t i = 0; i < 4; ++i) REQUIRE(buffer[i] == std::byte{0xab});
    for (std::size_t i = 12; i < 16; ++i) REQUIRE(buffer[i] == std::byte{0xab});
}
