// Tests for kvcar/codec/traits.hpp: a codec registered only in a test header (gain_codec.hpp)
// works through kv_cache, an any_codec over the built-in list extended with it, and a codec file
// write/read round trip; the built-in registrations give the names and kinds the rest of kvcar
// uses.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <kvcar/codec/any.hpp>
#include <kvcar/codec/identity.hpp>
#include <kvcar/codec/linear.hpp>
#include <kvcar/codec/quantized.hpp>
#include <kvcar/codec/traits.hpp>
#include <kvcar/io/codec_file.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>
#include <kvcar/storage/contiguous.hpp>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "catch.hpp"
#include "codec/gain_codec.hpp"

using namespace kvcar;
using kvcar_test::gain_any_codec;
using kvcar_test::gain_codec;
using kvcar_test::gain_codecs;
using kvcar_test::gain_params;

static_assert(registered_codec<identity_codec<bf16>>);
static_assert(registered_codec<linear_codec<float>>);
static_assert(registered_codec<autoencoder_codec<f16>>);
static_assert(!registered_codec<quantized_codec<linear_codec<float>>>);  // a storage, not a codec
static_assert(kv_codec<gain_any_codec> && latent_codec<gain_any_codec>);
static_assert(std::is_trivially_copyable_v<gain_any_codec>);
static_assert(gain_codecs::size == builtin_codecs::size + 1);

namespace {

using idx = std::size_t;

std::vector<float> normal(idx n, std::mt19937& rng, float sd) {
    std::normal_distribution<float> g(0.0f, sd);
    std::vector<float> v(n);
    for (float& x : v) x = g(rng);
    return v;
}

gain_params random_gain(int width, std::mt19937& rng) {
    gain_params p;
    p.width = width;
    p.offset = 0.25f;
    std::uniform_real_distribution<float> g(0.5f, 2.0f);
    for (int i = 0; i < width; ++i) p.gain.push_back(g(rng));
    return p;
}

linear_params random_linear(int width, int rank, std::mt19937& rng) {
    linear_params p;
    p.width = width;
    p.rank = rank;
    p.mean = normal(idx(width), rng, 0.5f);
    p.basis = normal(idx(width) * idx(rank), rng, 0.3f);
    return p;
}

/// Encodes and decodes `x` through both codecs; the records and outputs must be the same bytes.
template <class A, class B>
void require_same_codec(const A& a, const B& b, const std::vector<float>& x) {
    REQUIRE(a.bytes_per_group() == b.bytes_per_group());
    std::vector<std::byte> ra(a.bytes_per_group()), rb(b.bytes_per_group());
    a.encode(x.data(), ra.data());
    b.encode(x.data(), rb.data());
    REQUIRE(ra == rb);
    std::vector<float> ya(x.size()), yb(x.size());
    a.decode(ra.data(), ya.data());
    b.decode(rb.data(), yb.data());
    REQUIRE(std::memcmp(ya.data(), yb.data(), ya.size() * sizeof(float)) == 0);
}

struct temp_file {
    std::filesystem::path path = std::filesystem::temp_directory_path() /
                                 ("kvcar_registration_" + std::to_string(std::random_device{}()) +
                                  ".kvc");
    ~temp_file() {
        std::error_code ec;
        std::filesystem::remove(path, ec);
    }
};

}  // namespace

TEST_CASE("the built-in registrations name the kinds", "[codec][traits]") {
    REQUIRE(std::string(to_string(codec_kind::linear)) == "linear");
    REQUIRE(parse_codec_kind("autoencoder") == codec_kind::autoencoder);
    REQUIRE(codec_index_in<linear_codec<bf16>>(builtin_codecs{}) == int(codec_kind::linear));
    REQUIRE(codec_index_in<gain_codec<float>>(gain_codecs{}) == 3);
    REQUIRE(codec_index_in<gain_codec<float>>(builtin_codecs{}) == -1);
    REQUIRE(std::string(codec_name(gain_codecs{}, 3)) == "gain");
    REQUIRE(std::string(codec_name(gain_codecs{}, 4)) == "?");
}

TEST_CASE("a test-only codec works in kv_cache", "[codec][traits]") {
    std::mt19937 rng(1);
    const gain_params p = random_gain(8, rng);
    const gain_codec<f16> c = {p.width, p.offset, p.gain.data()};
    const kv_geometry g{2, 2, 8};
    kv_cache<gain_codec<f16>, dense_layout, contiguous_storage> cache(dense_layout(g), c, {1, 8});
    const int seq = cache.add_sequence();
    const std::vector<float> k = normal(idx(3 * g.token_width()), rng, 1.0f);
    const std::vector<float> v = normal(idx(3 * g.token_width()), rng, 1.0f);
    for (int layer = 0; layer < g.n_layers; ++layer) cache.append(seq, layer, k, v);
    std::vector<float> got(k.size());
    cache.read(seq, 1, kv_kind::key, 0, 3, got);
    for (idx i = 0; i < got.size(); ++i) REQUIRE(std::abs(got[i] - k[i]) < 2e-2f);
}

TEST_CASE("an any_codec over an extended list stands for the test-only codec", "[codec][traits]") {
    std::mt19937 rng(2);
    const gain_params p = random_gain(16, rng);
    const std::vector<float> x = normal(16, rng, 1.0f);
    const gain_codec<bf16> c = {p.width, p.offset, p.gain.data()};
    const gain_any_codec a = gain_any_codec::of(c);
    REQUIRE(a.kind == codec_kind(3));
    REQUIRE(a.storage == latent_storage::bf16);
    REQUIRE(std::string(a.name()) == "gain");
    REQUIRE(a.group_width() == 16);
    REQUIRE(!a.is_affine());
    require_same_codec(a, c, x);
    // It is a latent codec, so any_codec quantizes it too.
    const auto q = make_quantized<std::int8_t>(gain_codec<float>{p.width, p.offset, p.gain.data()});
    require_same_codec(gain_any_codec::of(q), q, x);
    // The built-in kinds keep their numbers in the longer list.
    const linear_params lin = random_linear(16, 4, rng);
    const gain_any_codec l = gain_any_codec::of(lin.codec<f16>());
    REQUIRE(l.kind == codec_kind::linear);
    require_same_codec(l, lin.codec<f16>(), x);

    gain_codec<f16> broken = {p.width, p.offset, nullptr};
    KVCAR_REQUIRE_ERROR(gain_any_codec::of(broken),
                        "any_codec (gain, f16): gain_codec: gain pointer is null");

    // One cache mixes the test codec with built-in ones, slot by slot.
    const reuse_map layout(kv_geometry{2, 1, 16}, 1, {}, {});
    std::vector<gain_any_codec> codecs;
    for (int s = 0; s < layout.n_slots(); ++s)
        codecs.push_back(s % 2 ? a : gain_any_codec::of(identity_codec<f16>{16}));
    kv_cache<gain_any_codec, reuse_map> cache(layout, codecs, {1, 4});
    const int seq = cache.add_sequence();
    cache.append(seq, 0, x, x);
    std::vector<float> got(16), want(16);
    std::vector<std::byte> rec(c.bytes_per_group());
    cache.read(seq, 0, kv_kind::value, 0, 1, got);
    c.encode(x.data(), rec.data());
    c.decode(rec.data(), want.data());
    REQUIRE(std::memcmp(got.data(), want.data(), sizeof(float) * 16) == 0);
}

TEST_CASE("a codec file round-trips the test-only codec beside built-in ones", "[codec][traits]") {
    std::mt19937 rng(3);
    const kv_geometry g{2, 2, 8};
    io::codec_set set = io::codec_set::identity(g);
    for (io::slot_codec& slot : set.slots) {
        if (slot.layer == 0 && slot.group == 0 && slot.kind == kv_kind::value)
            slot = io::slot_codec::make<gain_codec<>, gain_codecs>(
                0, 0, kv_kind::value, random_gain(8, rng), latent_storage::int8);
        if (slot.layer == 0 && slot.group == 1 && slot.kind == kv_kind::key)
            slot = io::slot_codec::make_linear(0, 1, kv_kind::key, random_linear(8, 3, rng));
    }
    REQUIRE_NOTHROW(set.validate<gain_codecs>());
    // Without the test codec in its list, kvcar does not know kind 3.
    KVCAR_REQUIRE_ERROR(set.validate(), "slot (0, 0, V): unknown codec kind 3");

    temp_file file;
    io::save_codec_set<gain_codecs>(set, file.path.string());
    KVCAR_REQUIRE_ERROR(io::load_codec_set(file.path.string()),
                        "has unknown codec \"gain\" (expected identity, linear or autoencoder)");
    const io::codec_set back = io::load_codec_set<gain_codecs>(file.path.string(), g);

    const io::slot_codec* s = back.find(0, 0, kv_kind::value);
    REQUIRE(s != nullptr);
    REQUIRE(s->codec == codec_kind(3));
    REQUIRE(s->storage == latent_storage::int8);
    const gain_params* loaded = s->find_params<gain_params>();
    const gain_params* saved = set.find(0, 0, kv_kind::value)->find_params<gain_params>();
    REQUIRE(loaded != nullptr);
    REQUIRE(loaded->gain == saved->gain);
    REQUIRE(loaded->offset == saved->offset);
    REQUIRE(back.find(0, 1, kv_kind::key)->linear.basis ==
            set.find(0, 1, kv_kind::key)->linear.basis);

    // The loaded codecs encode exactly as the saved ones, and build a cache.
    const std::vector<gain_any_codec> before = set.codecs<gain_codecs>();
    const std::vector<gain_any_codec> after = back.codecs<gain_codecs>();
    REQUIRE(before.size() == after.size());
    const std::vector<float> x = normal(8, rng, 1.0f);
    for (idx i = 0; i < before.size(); ++i) {
        REQUIRE(before[i].kind == after[i].kind);
        require_same_codec(before[i], after[i], x);
    }
    REQUIRE(back.bytes_per_token<gain_codecs>() == set.bytes_per_token<gain_codecs>());
    kv_cache<gain_any_codec, reuse_map> cache(back.layout(), after, {1, 4});
    REQUIRE(cache.add_sequence() == 0);
}
