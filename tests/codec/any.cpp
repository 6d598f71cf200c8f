// Tests for kvcar/codec/any.hpp: the run-time codec is bit-identical to every concrete codec it
// stands for, dispatches to the right type, mixes kinds in one cache, and rejects bad fields.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <kvcar/codec/any.hpp>
#include <kvcar/codec/autoencoder.hpp>
#include <kvcar/codec/identity.hpp>
#include <kvcar/codec/linear.hpp>
#include <kvcar/codec/quantized.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/reuse_map.hpp>
#include <kvcar/storage/contiguous.hpp>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "catch.hpp"

using namespace kvcar;

static_assert(kv_codec<any_codec>);
static_assert(latent_codec<any_codec>);
static_assert(!affine_latent_codec<any_codec>);  // affine only for some kinds: use visit
static_assert(std::is_trivially_copyable_v<any_codec>);

namespace {

using idx = std::size_t;

std::vector<float> normal(idx n, std::mt19937& rng, float sd) {
    std::normal_distribution<float> g(0.0f, sd);
    std::vector<float> v(n);
    for (float& x : v) x = g(rng);
    return v;
}

linear_params random_linear(int width, int rank, int heads, std::mt19937& rng) {
    linear_params p;
    p.width = width;
    p.rank = rank;
    p.heads = heads;
    p.mean = normal(idx(width), rng, 0.5f);
    p.basis = normal(idx(width) * idx(rank), rng, 1.0f / std::sqrt(float(width)));
    return p;
}

folded_autoencoder random_autoencoder(int width, int hidden, int latent, std::mt19937& rng) {
    folded_autoencoder f;
    f.width = width;
    f.hidden = hidden;
    f.latent = latent;
    f.slope = 0.05f;
    const idx D = idx(width), h = idx(hidden), d = idx(latent);
    f.enc1_w = normal(h * D, rng, 1.0f / std::sqrt(float(D)));
    f.enc1_b = normal(h, rng, 0.2f);
    f.enc2_wt = normal(h * d, rng, 1.0f / std::sqrt(float(h)));
    f.enc2_b = normal(d, rng, 0.2f);
    f.dec1_w = normal(h * d, rng, 1.0f / std::sqrt(float(d)));
    f.dec1_b = normal(h, rng, 0.2f);
    f.dec2_wt = normal(h * D, rng, 1.0f / std::sqrt(float(h)));
    f.dec2_b = normal(D, rng, 0.2f);
    return f;
}

/// Both codecs produce the same record bytes, the same decoded floats (bit for bit) and the same
/// latents, on `n` random groups.
template <class Concrete>
void require_identical(const any_codec& a, const Concrete& c, std::mt19937& rng, int n = 20) {
    REQUIRE(a.group_width() == c.group_width());
    REQUIRE(a.latent_width() == c.latent_width());
    REQUIRE(a.bytes_per_group() == c.bytes_per_group());
    const idx D = idx(c.group_width()), d = idx(c.latent_width()), B = c.bytes_per_group();
    for (int trial = 0; trial < n; ++trial) {
        const std::vector<float> x = normal(D, rng, 2.0f);
        std::vector<std::byte> ra(B, std::byte{0x5a}), rc(B, std::byte{0x5a});
        a.encode(x.data(), ra.data());
        c.encode(x.data(), rc.data());
        REQUIRE(std::memcmp(ra.data(), rc.data(), B) == 0);

        std::vector<float> ya(D, -1.0f), yc(D, -2.0f);
        a.decode(ra.data(), ya.data());
        c.decode(rc.data(), yc.data());
        REQUIRE(std::memcmp(ya.data(), yc.data(), D * sizeof(float)) == 0);

        std::vector<float> za(d, -1.0f), zc(d, -2.0f);
        a.to_latent(x.data(), za.data());
        c.to_latent(x.data(), zc.data());
        REQUIRE(std::memcmp(za.data(), zc.data(), d * sizeof(float)) == 0);
        a.from_latent(za.data(), ya.data());
        c.from_latent(zc.data(), yc.data());
        REQUIRE(std::memcmp(ya.data(), yc.data(), D * sizeof(float)) == 0);
    }
}

/// A number per concrete type, to check what visit hands out.
template <class C>
constexpr int type_id = -1;
template <>
constexpr int type_id<identity_codec<float>> = 0;
template <>
constexpr int type_id<identity_codec<f16>> = 1;
template <>
constexpr int type_id<identity_codec<bf16>> = 2;
template <>
constexpr int type_id<quantized_codec<identity_codec<float>, std::int8_t>> = 3;
template <>
constexpr int type_id<quantized_codec<identity_codec<float>, fp8_e4m3>> = 4;
template <>
constexpr int type_id<linear_codec<float>> = 10;
template <>
constexpr int type_id<linear_codec<f16>> = 11;
template <>
constexpr int type_id<linear_codec<bf16>> = 12;
template <>
constexpr int type_id<quantized_codec<linear_codec<float>, std::int8_t>> = 13;
template <>
constexpr int type_id<quantized_codec<linear_codec<float>, fp8_e4m3>> = 14;
template <>
constexpr int type_id<autoencoder_codec<float>> = 20;
template <>
constexpr int type_id<autoencoder_codec<f16>> = 21;
template <>
constexpr int type_id<autoencoder_codec<bf16>> = 22;
template <>
constexpr int type_id<quantized_codec<autoencoder_codec<float>, std::int8_t>> = 23;
template <>
constexpr int type_id<quantized_codec<autoencoder_codec<float>, fp8_e4m3>> = 24;

int visited_type(const any_codec& a) {
    return a.visit([](const auto& c) { return type_id<std::decay_t<decltype(c)>>; });
}

}  // namespace

TEST_CASE("any_codec names and parses kinds and storages", "[codec][any]") {
    for (codec_kind k : all_codec_kinds) REQUIRE(parse_codec_kind(to_string(k)) == k);
    for (latent_storage s : all_latent_storages) REQUIRE(parse_latent_storage(to_string(s)) == s);
    REQUIRE(!parse_codec_kind("pca").has_value());
    REQUIRE(!parse_latent_storage("fp16").has_value());
    REQUIRE(std::string(to_string(latent_storage::f16)) == element_traits<f16>::name);
    REQUIRE(std::string(to_string(latent_storage::bf16)) == element_traits<bf16>::name);
    REQUIRE(std::string(to_string(latent_storage::fp8_e4m3)) == element_traits<fp8_e4m3>::name);
    REQUIRE(is_quantized(latent_storage::int8));
    REQUIRE(is_quantized(latent_storage::fp8_e4m3));
    REQUIRE(!is_quantized(latent_storage::bf16));
}

TEST_CASE("any_codec is bit-identical to identity codecs", "[codec][any]") {
    std::mt19937 rng(1);
    const int W = 37;  // odd: exercises record padding
    require_identical(make_any_codec(identity_codec<float>{W}), identity_codec<float>{W}, rng);
    require_identical(make_any_codec(identity_codec<f16>{W}), identity_codec<f16>{W}, rng);
    require_identical(make_any_codec(identity_codec<bf16>{W}), identity_codec<bf16>{W}, rng);
    const auto q8 = make_quantized<std::int8_t>(identity_codec<float>{W});
    const auto qf8 = make_quantized<fp8_e4m3>(identity_codec<float>{W});
    require_identical(make_any_codec(q8), q8, rng);
    require_identical(make_any_codec(qf8), qf8, rng);
    REQUIRE(visited_type(make_any_codec(identity_codec<float>{W})) == 0);
    REQUIRE(visited_type(make_any_codec(identity_codec<f16>{W})) == 1);
    REQUIRE(visited_type(make_any_codec(identity_codec<bf16>{W})) == 2);
    REQUIRE(visited_type(make_any_codec(q8)) == 3);
    REQUIRE(visited_type(make_any_codec(qf8)) == 4);
    // The inner codec's own storage type does not matter under quantization.
    const auto q8_from_f16 = make_quantized<std::int8_t>(identity_codec<f16>{W});
    REQUIRE(visited_type(make_any_codec(q8_from_f16)) == 3);
    require_identical(make_any_codec(q8_from_f16), q8_from_f16, rng);
    REQUIRE(!make_any_codec(q8).is_affine());
}

TEST_CASE("any_codec is bit-identical to linear codecs", "[codec][any]") {
    std::mt19937 rng(2);
    const linear_params p = random_linear(48, 13, 3, rng);
    require_identical(make_any_codec(p.codec<float>()), p.codec<float>(), rng);
    require_identical(make_any_codec(p.codec<f16>()), p.codec<f16>(), rng);
    require_identical(make_any_codec(p.codec<bf16>()), p.codec<bf16>(), rng);
    const auto q8 = make_quantized<std::int8_t>(p.codec<float>());
    const auto qf8 = make_quantized<fp8_e4m3>(p.codec<f16>());
    require_identical(make_any_codec(q8), q8, rng);
    require_identical(make_any_codec(qf8), qf8, rng);
    REQUIRE(visited_type(make_any_codec(p.codec<float>())) == 10);
    REQUIRE(visited_type(make_any_codec(p.codec<f16>())) == 11);
    REQUIRE(visited_type(make_any_codec(p.codec<bf16>())) == 12);
    REQUIRE(visited_type(make_any_codec(q8)) == 13);
    REQUIRE(visited_type(make_any_codec(qf8)) == 14);

    const any_codec a = make_any_codec(p.codec<f16>());
    REQUIRE(a.is_affine());
    REQUIRE(a.as<linear_codec<f16>>().heads == 3);
    REQUIRE(std::string(a.name()) == "linear");
    // Latent-space attention through visit: the affine view answers as the concrete one does.
    const std::vector<float> q = normal(16, rng, 1.0f);
    std::vector<float> qz_any(13), qz_concrete(13);
    const float bias_any = a.visit([&](const auto& c) {
        if constexpr (affine_latent_codec<std::decay_t<decltype(c)>>)
            return c.project_query(q.data(), 2, qz_any.data());
        else
            return -1.0f;
    });
    const float bias_concrete = p.codec<f16>().project_query(q.data(), 2, qz_concrete.data());
    REQUIRE(bias_any == bias_concrete);
    REQUIRE(qz_any == qz_concrete);
}

TEST_CASE("any_codec is bit-identical to autoencoder codecs", "[codec][any]") {
    std::mt19937 rng(3);
    const folded_autoencoder f = random_autoencoder(40, 24, 9, rng);
    require_identical(make_any_codec(f.codec<float>()), f.codec<float>(), rng);
    require_identical(make_any_codec(f.codec<f16>()), f.codec<f16>(), rng);
    require_identical(make_any_codec(f.codec<bf16>()), f.codec<bf16>(), rng);
    const auto q8 = make_quantized<std::int8_t>(f.codec<float>());
    const auto qf8 = make_quantized<fp8_e4m3>(f.codec<float>());
    require_identical(make_any_codec(q8), q8, rng);
    require_identical(make_any_codec(qf8), qf8, rng);
    REQUIRE(visited_type(make_any_codec(f.codec<float>())) == 20);
    REQUIRE(visited_type(make_any_codec(f.codec<f16>())) == 21);
    REQUIRE(visited_type(make_any_codec(f.codec<bf16>())) == 22);
    REQUIRE(visited_type(make_any_codec(q8)) == 23);
    REQUIRE(visited_type(make_any_codec(qf8)) == 24);
    REQUIRE(make_any_codec(f.codec<f16>()).as<autoencoder_codec<f16>>().slope == 0.05f);
    REQUIRE(!make_any_codec(f.codec<f16>()).is_affine());
}

TEST_CASE("one cache mixes kinds per slot, as the concrete codecs would store them",
          "[codec][any]") {
    // 4 layers x 2 KV heads x 8, one head per group; layer 2 head 1 K reuses layer 1.
    const kv_geometry g{4, 2, 8};
    const reuse_map layout(g, 1, {{2, 1, 1, 1}}, {});
    std::mt19937 rng(4);
    const linear_params lin = random_linear(8, 4, 1, rng);
    const folded_autoencoder ae = random_autoencoder(8, 12, 5, rng);
    // Per stored slot: fp16 in layers 0 and 3, linear in layer 1, autoencoder (int8) in layer 2.
    std::vector<any_codec> codecs;
    for (int s = 0; s < layout.n_slots(); ++s) {
        const int layer = layout.owner(s).layer;
        if (layer == 1)
            codecs.push_back(make_any_codec(lin.codec<f16>()));
        else if (layer == 2)
            codecs.push_back(make_any_codec(make_quantized<std::int8_t>(ae.codec<float>())));
        else
            codecs.push_back(make_any_codec(identity_codec<f16>{8}));
    }
    kv_cache<any_codec, reuse_map> cache(layout, codecs, {1, 16});
    const int seq = cache.add_sequence();
    const int T = 5, W = g.token_width();
    std::vector<std::vector<float>> keys, values;
    for (int layer = 0; layer < g.n_layers; ++layer) {
        keys.push_back(normal(idx(T * W), rng, 1.0f));
        values.push_back(normal(idx(T * W), rng, 1.0f));
        cache.append(seq, layer, keys.back(), values.back());
    }
    // Expected: each group decoded by the concrete codec of the slot it reads.
    for (int layer = 0; layer < g.n_layers; ++layer) {
        for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
            std::vector<float> got(idx(T * W));
            cache.read(seq, layer, kind, 0, T, got);
            for (int head = 0; head < 2; ++head) {
                const slot_owner src = layout.owner(layout.slot(layer, head, kind));
                const auto& data =
                    kind == kv_kind::key ? keys[idx(src.layer)] : values[idx(src.layer)];
                for (int t = 0; t < T; ++t) {
                    const float* x = data.data() + idx(t * W + head * 8);
                    std::vector<float> want(8);
                    std::vector<std::byte> rec(64);
                    if (src.layer == 1) {
                        lin.codec<f16>().encode(x, rec.data());
                        lin.codec<f16>().decode(rec.data(), want.data());
                    } else if (src.layer == 2) {
                        const auto q = make_quantized<std::int8_t>(ae.codec<f16>());
                        q.encode(x, rec.data());
                        q.decode(rec.data(), want.data());
                    } else {
                        identity_codec<f16>{8}.encode(x, rec.data());
                        identity_codec<f16>{8}.decode(rec.data(), want.data());
                    }
                    REQUIRE(std::memcmp(want.data(), got.data() + idx(t * W + head * 8),
                                        8 * sizeof(float)) == 0);
                }
            }
        }
    }
    // Layer 2 head 1 K reads layer 1's linear slot: the same values as layer 1 head 1 K.
    std::vector<float> l1(idx(T * W)), l2(idx(T * W));
    cache.read(seq, 1, kv_kind::key, 0, T, l1);
    cache.read(seq, 2, kv_kind::key, 0, T, l2);
    for (int t = 0; t < T; ++t)
        for (int i = 8; i < 16; ++i) REQUIRE(l1[idx(t * W + i)] == l2[idx(t * W + i)]);
}

TEST_CASE("any_codec rejects bad codecs and fields", "[codec][any]") {
    std::mt19937 rng(5);
    KVCAR_REQUIRE_ERROR(make_any_codec(identity_codec<f16>{0}), "width must be positive");
    // Plain identity has no latent buffer, so it may be wide; quantized identity may not.
    REQUIRE(make_any_codec(identity_codec<f16>{4096}).group_width() == 4096);
    KVCAR_REQUIRE_ERROR(make_any_codec(make_quantized<std::int8_t>(identity_codec<float>{4096})),
                        "max_latent_width");

    linear_params p = random_linear(16, 4, 2, rng);
    linear_codec<f16> bad = p.codec<f16>();
    bad.basis = nullptr;
    KVCAR_REQUIRE_ERROR(make_any_codec(bad), "mean or basis pointer is null");
    bad = p.codec<f16>();
    bad.heads = 3;
    KVCAR_REQUIRE_ERROR(make_any_codec(bad), "heads 3 must divide width 16");
    bad = p.codec<f16>();
    bad.rank = 17;
    KVCAR_REQUIRE_ERROR(make_any_codec(bad), "exceeds width 16");

    const folded_autoencoder f = random_autoencoder(8, 6, 3, rng);
    autoencoder_codec<f16> bad_ae = f.codec<f16>();
    bad_ae.dec2_wt = nullptr;
    KVCAR_REQUIRE_ERROR(make_any_codec(bad_ae), "a weight pointer is null");
    bad_ae = f.codec<f16>();
    bad_ae.hidden = 0;
    KVCAR_REQUIRE_ERROR(make_any_codec(bad_ae), "hidden must be positive");

    any_codec a = make_any_codec(identity_codec<f16>{8});
    const any_codec before = a;
    a.kind = codec_kind(7);
    KVCAR_REQUIRE_ERROR(a.validate(), "unknown kind 7");
    a = before;
    a.storage = latent_storage(9);
    KVCAR_REQUIRE_ERROR(a.validate(), "unknown storage 9");
    a = make_any_codec(identity_codec<f16>{2048});
    a.storage = latent_storage::int8;  // a quantized latent lives in a max_latent_width buffer
    KVCAR_REQUIRE_ERROR(a.validate(), "latent 2048 exceeds max_latent_width 1024");
    a = before;
    REQUIRE_NOTHROW(a.validate());
}
