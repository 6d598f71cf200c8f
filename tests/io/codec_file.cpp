// Tests for kvcar/io/codec_file.hpp: a codec set round-trips through a file bit for bit, builds a
// working mixed cache, and every broken set or file is rejected with a message naming it.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <kvcar/codec/any.hpp>
#include <kvcar/io/codec_file.hpp>
#include <kvcar/io/json.hpp>
#include <kvcar/io/safetensors_write.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/reuse_map.hpp>
#include <kvcar/storage/contiguous.hpp>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"

using namespace kvcar;
using namespace kvcar::io;

static_assert(kv_codec<any_codec>);
static_assert(kv_layout<reuse_map>);

namespace {

using idx = std::size_t;
namespace fs = std::filesystem;

/// A fresh folder under the system temp dir, removed at the end of the test.
struct temp_dir {
    fs::path path;
    temp_dir() {
        path = fs::temp_directory_path() /
               ("kvcar_codec_file_" + std::to_string(std::random_device{}()) + "_" +
                std::to_string(count()++));
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string file(const std::string& name) const { return (path / name).string(); }
    static int& count() {
        static int n = 0;
        return n;
    }
};

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
    p.basis = normal(idx(width) * idx(rank), rng, 0.3f);
    return p;
}

folded_autoencoder random_autoencoder(int width, int hidden, int latent, std::mt19937& rng) {
    folded_autoencoder f;
    f.width = width;
    f.hidden = hidden;
    f.latent = latent;
    f.slope = 0.02f;
    const idx D = idx(width), h = idx(hidden), d = idx(latent);
    f.enc1_w = normal(h * D, rng, 0.3f);
    f.enc1_b = normal(h, rng, 0.1f);
    f.enc2_wt = normal(h * d, rng, 0.3f);
    f.enc2_b = normal(d, rng, 0.1f);
    f.dec1_w = normal(h * d, rng, 0.3f);
    f.dec1_b = normal(h, rng, 0.1f);
    f.dec2_wt = normal(h * D, rng, 0.3f);
    f.dec2_b = normal(D, rng, 0.1f);
    return f;
}

/// 4 layers x 2 KV heads x 8, one head per group. K of (2, 1) reuses (1, 1); V of (3, 0)
/// reuses (2, 0). Layer 0 fp16, layer 1 linear (f16 K, int8 V), layer 2 autoencoder (bf16 K,
/// fp8 V), layer 3 identity f32 K and int8 V.
codec_set example_set() {
    std::mt19937 rng(1);
    codec_set s;
    s.geometry = {4, 2, 8};
    s.heads_per_group = 1;
    s.key_reuse = {{2, 1, 1, 1}};
    s.value_reuse = {{3, 0, 2, 0}};
    s.model = {"gpt2", "tiny test model"};
    s.calibration = {"wikitext-2 validation", 12345, "unit test \xe2\x9c\x93"};
    const reuse_map map = s.layout();
    for (int slot = 0; slot < map.n_slots(); ++slot) {
        const slot_owner o = map.owner(slot);
        const bool k = o.kind == kv_kind::key;
        switch (o.layer) {
            case 0:
                s.slots.push_back(slot_codec::identity(o.layer, o.group, o.kind, 8));
                break;
            case 1:
                s.slots.push_back(
                    slot_codec::make_linear(o.layer, o.group, o.kind, random_linear(8, 3, 1, rng),
                                            k ? latent_storage::f16 : latent_storage::int8));
                break;
            case 2:
                s.slots.push_back(slot_codec::make_autoencoder(
                    o.layer, o.group, o.kind, random_autoencoder(8, 6, 4, rng),
                    k ? latent_storage::bf16 : latent_storage::fp8_e4m3));
                break;
            default:
                s.slots.push_back(slot_codec::identity(
                    o.layer, o.group, o.kind, 8, k ? latent_storage::f32 : latent_storage::int8));
        }
    }
    // Listed in reverse: the order of `slots` does not matter.
    std::reverse(s.slots.begin(), s.slots.end());
    return s;
}

bool same_floats(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

/// Rewrites codec file `in` as `out` after `edit` changed its metadata JSON and/or tensors.
struct file_parts {
    json_value meta;
    std::map<std::string, std::pair<tensor_view, std::vector<std::byte>>> tensors;
    std::vector<std::string> order;
};
void rewrite(const std::string& in, const std::string& out,
             const std::function<void(file_parts&)>& edit) {
    const safetensors_file f = safetensors_file::open(in);
    file_parts parts;
    parts.meta = parse_json(f.metadata().at("kvcar"), "test");
    for (const std::string& n : f.names()) {
        const tensor_view v = f.tensor(n);
        parts.tensors[n] = {v, std::vector<std::byte>(v.data.begin(), v.data.end())};
        parts.order.push_back(n);
    }
    edit(parts);
    std::vector<tensor_to_write> t;
    for (const std::string& n : parts.order) {
        auto it = parts.tensors.find(n);
        if (it == parts.tensors.end()) continue;
        t.push_back({n, it->second.first.dtype, it->second.first.shape, it->second.second});
    }
    write_safetensors(out, t, {{"kvcar", to_json(parts.meta)}});
}

/// A copy of `array` with element i replaced by edit(element).
json_value edit_element(const json_value& array, idx i,
                        const std::function<void(json_value&)>& edit) {
    json_value::array_type a = array.as_array();
    edit(a[i]);
    return json_value(std::move(a));
}

}  // namespace

TEST_CASE("a codec set round-trips through a file bit for bit", "[io][codec_file]") {
    temp_dir dir;
    const codec_set s = example_set();
    REQUIRE_NOTHROW(s.validate());
    const std::string path = dir.file("tiny.kvc");
    save_codec_set(s, path);
    const codec_set t = load_codec_set(path, kv_geometry{4, 2, 8});

    REQUIRE(t.geometry.n_layers == 4);
    REQUIRE(t.geometry.n_kv_heads == 2);
    REQUIRE(t.geometry.head_dim == 8);
    REQUIRE(t.heads_per_group == 1);
    REQUIRE(t.key_reuse == s.key_reuse);
    REQUIRE(t.value_reuse == s.value_reuse);
    REQUIRE(t.model.architecture == "gpt2");
    REQUIRE(t.model.name == "tiny test model");
    REQUIRE(t.calibration.text == s.calibration.text);
    REQUIRE(t.calibration.tokens == 12345);
    REQUIRE(t.calibration.notes == s.calibration.notes);
    REQUIRE(t.slots.size() == s.slots.size());
    for (const slot_codec& a : s.slots) {
        const slot_codec* b = t.find(a.layer, a.group, a.kind);
        REQUIRE(b != nullptr);
        REQUIRE(b->codec == a.codec);
        REQUIRE(b->storage == a.storage);
        REQUIRE(b->width == a.width);
        REQUIRE(b->latent_width() == a.latent_width());
        REQUIRE(same_floats(b->linear.mean, a.linear.mean));
        REQUIRE(same_floats(b->linear.basis, a.linear.basis));
        REQUIRE(b->linear.heads == a.linear.heads);
        REQUIRE(b->autoencoder.hidden == a.autoencoder.hidden);
        REQUIRE(b->autoencoder.slope == a.autoencoder.slope);
        for (auto field : {&folded_autoencoder::enc1_w, &folded_autoencoder::enc1_b,
                           &folded_autoencoder::enc2_wt, &folded_autoencoder::enc2_b,
                           &folded_autoencoder::dec1_w, &folded_autoencoder::dec1_b,
                           &folded_autoencoder::dec2_wt, &folded_autoencoder::dec2_b})
            REQUIRE(same_floats(b->autoencoder.*field, a.autoencoder.*field));
    }
    // The codecs, slot by slot, encode identically.
    const std::vector<any_codec> ca = s.codecs(), cb = t.codecs();
    REQUIRE(ca.size() == idx(t.layout().n_slots()));
    REQUIRE(cb.size() == ca.size());
    std::mt19937 rng(2);
    for (idx i = 0; i < ca.size(); ++i) {
        REQUIRE(ca[i].kind == cb[i].kind);
        REQUIRE(ca[i].storage == cb[i].storage);
        const std::vector<float> x = normal(8, rng, 1.0f);
        std::vector<std::byte> ra(ca[i].bytes_per_group()), rb(cb[i].bytes_per_group());
        REQUIRE(ra.size() == rb.size());
        ca[i].encode(x.data(), ra.data());
        cb[i].encode(x.data(), rb.data());
        REQUIRE(ra == rb);
    }
    // Slot order follows the layout: codecs()[slot] is the codec of layout().owner(slot).
    const reuse_map map = t.layout();
    for (int slot = 0; slot < map.n_slots(); ++slot) {
        const slot_owner o = map.owner(slot);
        REQUIRE(cb[idx(slot)].kind == t.find(o.layer, o.group, o.kind)->codec);
    }
    // Accounting: 14 stored slots. Layer 0: 4 x 16 B (fp16 x 8). Layer 1: K 2 x 8 B (f16 x 3,
    // padded), V 2 x (4 + 8) B (int8 x 3 padded, scale, offset). Layer 2 (one K reused): K 1 x
    // 8 B (bf16 x 4), V 2 x (4 + 8) B. Layer 3 (one V reused): K 2 x 32 B, V 1 x (8 + 8) B.
    REQUIRE(t.bytes_per_token() == 64 + 16 + 24 + 8 + 24 + 64 + 16);
    REQUIRE(t.bytes_per_token() == s.bytes_per_token());
    REQUIRE(t.compression_ratio() == Approx(256.0 / 216.0));
    // Saving the loaded set gives the same bytes again.
    save_codec_set(t, dir.file("again.kvc"));
    std::ifstream f1(path, std::ios::binary), f2(dir.file("again.kvc"), std::ios::binary);
    const std::string b1((std::istreambuf_iterator<char>(f1)), {});
    const std::string b2((std::istreambuf_iterator<char>(f2)), {});
    REQUIRE(b1 == b2);
}

TEST_CASE("a loaded codec set builds a working mixed cache", "[io][codec_file]") {
    temp_dir dir;
    save_codec_set(example_set(), dir.file("c.kvc"));
    const codec_set set = load_codec_set(dir.file("c.kvc"), kv_geometry{4, 2, 8});
    kv_cache<any_codec, reuse_map> cache(set.layout(), set.codecs(), {2, 32});
    const int seq = cache.add_sequence();
    std::mt19937 rng(3);
    const int T = 6;
    std::vector<std::vector<float>> k, v;
    for (int layer = 0; layer < 4; ++layer) {
        k.push_back(normal(idx(T * 16), rng, 1.0f));
        v.push_back(normal(idx(T * 16), rng, 1.0f));
        cache.append(seq, layer, k.back(), v.back());
    }
    std::vector<float> out(idx(T * 16));
    cache.read(seq, 0, kv_kind::key, 0, T, out);  // fp16 identity: within fp16 rounding
    for (idx i = 0; i < out.size(); ++i) REQUIRE(out[i] == Approx(k[0][i]).margin(2e-3));
    cache.read(seq, 3, kv_kind::key, 0, T, out);  // f32 identity: exact
    REQUIRE(out == k[3]);
    // (2, 1) K reads layer 1's slot.
    std::vector<float> l1(idx(T * 16));
    cache.read(seq, 1, kv_kind::key, 0, T, l1);
    cache.read(seq, 2, kv_kind::key, 0, T, out);
    for (int t = 0; t < T; ++t)
        for (int i = 8; i < 16; ++i) REQUIRE(out[idx(t * 16 + i)] == l1[idx(t * 16 + i)]);
    REQUIRE(cache.storage().bytes_reserved() >= set.bytes_per_token() * 32);
}

TEST_CASE("the identity set is the fp16 baseline", "[io][codec_file]") {
    const codec_set s = codec_set::identity(kv_geometry{3, 4, 16}, 2);
    REQUIRE(s.slots.size() == 3 * 2 * 2);
    REQUIRE(s.bytes_per_token() == s.geometry.fp16_bytes_per_token());
    REQUIRE(s.compression_ratio() == 1.0);
    REQUIRE(s.codecs()[0].group_width() == 32);
}

TEST_CASE("codec_set validation names the problem", "[io][codec_file]") {
    const codec_set good = example_set();
    codec_set s = good;
    s.slots.push_back(s.slots.front());
    KVCAR_REQUIRE_ERROR(s.validate(), "codec_set: slot (3, 1, V) is listed twice");
    s = good;
    s.slots.pop_back();
    KVCAR_REQUIRE_ERROR(s.validate(), "stored slot (0, 0, K) has no codec");
    s = good;
    s.slots.push_back(slot_codec::identity(2, 1, kv_kind::key, 8));
    KVCAR_REQUIRE_ERROR(s.validate(), "slot (2, 1, K) is reused (it reads layer 1 group 1)");
    s = good;
    s.slots.push_back(slot_codec::identity(4, 0, kv_kind::key, 8));
    KVCAR_REQUIRE_ERROR(s.validate(), "slot (4, 0, K) has layer 4 out of range [0, 4)");
    s = good;
    s.slots.push_back(slot_codec::identity(0, 2, kv_kind::key, 8));
    KVCAR_REQUIRE_ERROR(s.validate(), "has group 2 out of range [0, 2)");
    s = good;
    s.slots.front().width = 16;
    KVCAR_REQUIRE_ERROR(s.validate(), "has width 16 but a group is 1 heads x 8 = 8");
    s = good;
    s.key_reuse.push_back({1, 0, 2, 0});
    KVCAR_REQUIRE_ERROR(s.validate(), "codec_set: reuse_map: K reuse of (1,0)");
    s = good;
    s.key_reuse.push_back({2, 1, 1, 0});
    KVCAR_REQUIRE_ERROR(s.validate(), "lists (2,1) twice");
    s = good;
    s.heads_per_group = 3;
    KVCAR_REQUIRE_ERROR(s.validate(), "heads_per_group 3");
    s = good;
    for (slot_codec& c : s.slots)
        if (c.codec == codec_kind::linear) {
            c.linear.heads = 2;
            break;
        }
    KVCAR_REQUIRE_ERROR(s.validate(), "is a linear codec over 2 heads but a group has 1");
    s = good;
    for (slot_codec& c : s.slots)
        if (c.codec == codec_kind::linear) {
            c.linear.basis[3] = std::numeric_limits<float>::quiet_NaN();
            break;
        }
    KVCAR_REQUIRE_ERROR(s.validate(), "linear_params: basis is not finite");
    s = good;
    for (slot_codec& c : s.slots)
        if (c.codec == codec_kind::autoencoder) {
            c.autoencoder.dec2_b.pop_back();
            break;
        }
    KVCAR_REQUIRE_ERROR(s.validate(), "folded_autoencoder: dec2_b has 7 values");
    s = good;
    s.slots.front().storage = latent_storage(17);
    KVCAR_REQUIRE_ERROR(s.validate(), "unknown latent storage 17");
    s = good;
    s.slots.front().codec = codec_kind(9);
    KVCAR_REQUIRE_ERROR(s.validate(), "unknown codec kind 9");
    // A throwing validate changed nothing, and saving an invalid set writes nothing.
    temp_dir dir;
    KVCAR_REQUIRE_ERROR(save_codec_set(s, dir.file("bad.kvc")), "unknown codec kind 9");
    REQUIRE(!fs::exists(dir.file("bad.kvc")));
    REQUIRE_NOTHROW(good.validate());
}

TEST_CASE("loading rejects files made for another model", "[io][codec_file]") {
    temp_dir dir;
    const std::string path = dir.file("x.kvc");
    save_codec_set(codec_set::identity(kv_geometry{12, 12, 64}), path);
    KVCAR_REQUIRE_ERROR(
        load_codec_set(path, kv_geometry{6, 2, 32}),
        "codec file " + path +
            " was made for 12 layers x 12 KV heads x 64, this model has 6 x 2 x 32");
    KVCAR_REQUIRE_ERROR(load_codec_set(path, kv_geometry{12, 12, 32}),
                        "this model has 12 x 12 x 32");
    REQUIRE(load_codec_set(path, kv_geometry{12, 12, 64}).slots.size() == 12 * 12 * 2);
}

TEST_CASE("loading rejects broken codec files, naming the file and the problem",
          "[io][codec_file]") {
    temp_dir dir;
    const std::string good = dir.file("good.kvc"), bad = dir.file("bad.kvc");
    save_codec_set(example_set(), good);
    const kv_geometry g{4, 2, 8};
    const auto expect = [&](const std::function<void(file_parts&)>& edit,
                            const std::string& fragment) {
        rewrite(good, bad, edit);
        REQUIRE_THROWS_WITH(load_codec_set(bad, g),
                            KVCAR_STRING_CONTAINS("kvcar: codec file " + bad + ": ") &&
                                KVCAR_STRING_CONTAINS(fragment));
    };
    const auto meta = [](const char* key, json_value v) {
        return [key, v](file_parts& p) { p.meta.set(key, v); };
    };
    const auto slot0 = [](const std::function<void(json_value&)>& edit) {
        return [edit](file_parts& p) {
            p.meta.set("slots", edit_element(p.meta.at("slots"), 0, edit));
        };
    };
    // Slot 0 of the file is (0, 0, K), identity f16; the linear slot (1, 0, K) is slots[4].
    const auto slot4 = [](const std::function<void(json_value&)>& edit) {
        return [edit](file_parts& p) {
            p.meta.set("slots", edit_element(p.meta.at("slots"), 4, edit));
        };
    };

    // An untouched rewrite loads.
    rewrite(good, bad, [](file_parts&) {});
    REQUIRE_NOTHROW(load_codec_set(bad, g));

    expect(meta("format", "kvcar-model"),
           "is not a kvcar codec file: format is \"kvcar-model\", expected \"kvcar-codec\"");
    expect(meta("version", 2), "has format version 2; this kvcar reads version 1");
    expect(meta("version", "1"), "metadata \"version\" is a string, expected an integer");
    expect(meta("heads_per_group", 3), "heads_per_group 3 must be positive and divide");
    expect(meta("key_reuse",
                json_value(json_value::array_type{json_value(json_value::array_type{2, 1, 1})})),
           "key_reuse[0] is not an array of 4 integers");
    expect(meta("value_reuse",
                json_value(json_value::array_type{json_value(json_value::array_type{3, 0, 2, 0}),
                                                  json_value(json_value::array_type{2, 0, 3, 0})})),
           "V reuse has a cycle");
    expect(meta("model", json_value::object()), "model has no \"architecture\"");
    expect(
        [](file_parts& p) {
            json_value m = p.meta.at("model");
            m.set("n_layers", 4.5);
            p.meta.set("model", m);
        },
        "model \"n_layers\" is not a 32-bit integer");
    expect(slot0([](json_value& s) { s.set("codec", "pca"); }),
           "slots[0] (0, 0, K) has unknown codec \"pca\"");
    expect(slot0([](json_value& s) { s.set("storage", "fp16"); }),
           "slots[0] (0, 0, K) has unknown storage \"fp16\"");
    expect(slot0([](json_value& s) { s.set("kind", "Q"); }), "slots[0] kind is \"Q\", not K or V");
    expect(slot0([](json_value& s) { s.set("latent", 4); }),
           "is an identity codec with latent 4 but width 8");
    expect(slot0([](json_value& s) {
               s.set("width", 16);
               s.set("latent", 16);
           }),
           "slot (0, 0, K) has width 16 but a group is 1 heads x 8 = 8");
    expect(slot0([](json_value& s) { s.set("group", 1); }), "slot (0, 1, K) is listed twice");
    expect(slot0([](json_value& s) {
               s.set("layer", 2);
               s.set("group", 1);
           }),
           "slot (2, 1, K) is reused");
    expect(
        [](file_parts& p) {
            json_value::array_type a = p.meta.at("slots").as_array();
            a.erase(a.begin());
            p.meta.set("slots", json_value(std::move(a)));
        },
        "stored slot (0, 0, K) has no codec");
    expect(slot4([](json_value& s) { s.set("latent", 4); }),
           "tensor 'L1.G0.K.basis' has shape [8,3], expected [8,4] from slots[4] (1, 0, K)");
    expect(slot4([](json_value& s) { s.set("heads", 2); }),
           "is a linear codec over 2 heads but a group has 1");
    expect([](file_parts& p) { p.tensors.erase("L1.G0.K.mean"); },
           "slots[4] (1, 0, K) (linear) needs tensor 'L1.G0.K.mean', which the file does not have");
    expect([](file_parts& p) { p.tensors.erase("L2.G1.V.dec2_wt"); },
           "needs tensor 'L2.G1.V.dec2_wt'");
    expect(
        [](file_parts& p) {
            auto& t = p.tensors.at("L1.G0.K.mean");
            t.first.dtype = dtype::f16;
            t.second.resize(t.second.size() / 2);
        },
        "tensor 'L1.G0.K.mean' has dtype F16, expected F32");
    expect(
        [](file_parts& p) {
            auto t = p.tensors.at("L1.G0.K.mean");
            p.tensors["L9.G0.K.mean"] = t;
            p.order.push_back("L9.G0.K.mean");
        },
        "tensor 'L9.G0.K.mean' belongs to no slot of the metadata");
    expect(
        [](file_parts& p) {
            auto& t = p.tensors.at("L1.G0.K.mean");
            const float nan = std::numeric_limits<float>::quiet_NaN();
            std::memcpy(t.second.data(), &nan, 4);
        },
        "slot (1, 0, K): linear_params: mean is not finite");

    // Not JSON, not kvcar metadata, not safetensors at all.
    write_safetensors(bad, {}, {{"kvcar", "{not json"}});
    KVCAR_REQUIRE_ERROR(load_codec_set(bad),
                        "codec file " + bad + ": metadata is not valid JSON: 1:2");
    write_safetensors(bad, {}, {{"format", "pt"}});
    KVCAR_REQUIRE_ERROR(load_codec_set(bad), "has no \"kvcar\" entry");
    {
        std::ofstream f(bad, std::ios::binary | std::ios::trunc);
        f << "definitely not a safetensors file";
    }
    KVCAR_REQUIRE_ERROR(load_codec_set(bad), "codec file " + bad + ": safetensors: ");
    KVCAR_REQUIRE_ERROR(load_codec_set(dir.file("missing.kvc")), "no such file");
}

TEST_CASE("parse_codec_set reads bytes exactly as load_codec_set reads the file",
          "[io][codec_file]") {
    temp_dir dir;
    const std::string path = dir.file("tiny.kvc");
    save_codec_set(example_set(), path);
    std::vector<std::byte> bytes;
    {
        std::ifstream f(path, std::ios::binary);
        const std::string text((std::istreambuf_iterator<char>(f)), {});
        bytes.resize(text.size());
        std::memcpy(bytes.data(), text.data(), text.size());
    }

    // Same set: saving what each entry point returns gives the same file, byte for byte.
    const codec_set from_path = load_codec_set(path);
    const codec_set from_bytes = parse_codec_set(bytes, "in-memory tiny.kvc");
    REQUIRE(from_bytes.slots.size() == from_path.slots.size());
    REQUIRE(from_bytes.key_reuse == from_path.key_reuse);
    REQUIRE(from_bytes.value_reuse == from_path.value_reuse);
    REQUIRE(from_bytes.bytes_per_token() == from_path.bytes_per_token());
    save_codec_set(from_bytes, dir.file("again.kvc"));
    {
        std::ifstream f(dir.file("again.kvc"), std::ios::binary);
        const std::string again((std::istreambuf_iterator<char>(f)), {});
        REQUIRE(again.size() == bytes.size());
        REQUIRE(std::memcmp(again.data(), bytes.data(), bytes.size()) == 0);
    }

    // Broken inputs: the bytes entry point names its source and gives the path loader's message.
    const std::string source = "download.kvc";
    const auto same_error = [&](const std::vector<std::byte>& broken) {
        std::string from_bytes_message, from_path_message;
        try {
            (void)parse_codec_set(broken, source);
        } catch (const kvcar::error& e) {
            from_bytes_message = e.what();
        }
        const std::string file = dir.file("broken.kvc");
        {
            std::ofstream f(file, std::ios::binary | std::ios::trunc);
            f.write(reinterpret_cast<const char*>(broken.data()), std::streamsize(broken.size()));
        }
        try {
            (void)load_codec_set(file);
        } catch (const kvcar::error& e) {
            from_path_message = e.what();
        }
        REQUIRE(from_bytes_message.rfind("kvcar: codec file " + source + ": ", 0) == 0);
        // The messages differ only in the name: every occurrence of the file's path.
        std::string renamed = from_path_message;
        for (std::size_t at; (at = renamed.find(file)) != std::string::npos;)
            renamed.replace(at, file.size(), source);
        REQUIRE(renamed == from_bytes_message);
        return from_bytes_message;
    };
    const auto cut = [&](std::size_t n) {
        return std::vector<std::byte>(bytes.begin(), bytes.begin() + std::ptrdiff_t(n));
    };

    REQUIRE_THAT(same_error({}), KVCAR_STRING_CONTAINS(
                                     "safetensors: download.kvc: not a safetensors file: 0 bytes, "
                                     "too short for the 8-byte header length"));
    REQUIRE_THAT(same_error(cut(5)), KVCAR_STRING_CONTAINS("5 bytes, too short"));
    // Cut inside the JSON header, then inside the tensor data.
    REQUIRE_THAT(same_error(cut(40)), KVCAR_STRING_CONTAINS("truncated: header says "));
    REQUIRE_THAT(same_error(cut(bytes.size() - 1)),
                 KVCAR_STRING_CONTAINS("out of range: data section has "));
    // Every shorter prefix is rejected with a message naming the source, never accepted.
    for (std::size_t n = 0; n < bytes.size(); n += 7) (void)same_error(cut(n));

    // Corrupt header bytes: a header length past the end, a header that is not JSON.
    std::vector<std::byte> corrupt = bytes;
    corrupt[7] = std::byte{0x01};
    REQUIRE_THAT(same_error(corrupt), KVCAR_STRING_CONTAINS("exceeds the 100 MiB limit"));
    corrupt = bytes;
    corrupt[8] = std::byte{'['};
    REQUIRE_THAT(same_error(corrupt), KVCAR_STRING_CONTAINS("header does not start with '{'"));
    corrupt = bytes;
    corrupt[9] = std::byte{'}'};
    REQUIRE_THAT(same_error(corrupt), KVCAR_STRING_CONTAINS("header is not valid JSON: 1:"));
}
