// Tests for examples/models/kv_collect.hpp (collecting K/V for calibration) and the cache names
// kvcar-calibrate's files are read back with (examples/models/kv_dispatch.hpp: int8, fp8,
// file:PATH). They run gpt2-tiny and llama-tiny from shared/data and skip when it is absent.
#include "catch.hpp"

#include "examples/models/kv_collect.hpp"
#include "examples/models/kv_dispatch.hpp"
#include "examples/models/model.hpp"

#include <kvcar/calib/pca.hpp>
#include <kvcar/codec/any.hpp>
#include <kvcar/codec/identity.hpp>
#include <kvcar/codec/quantized.hpp>
#include <kvcar/io/codec_file.hpp>
#include <kvcar/kv_cache.hpp>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <span>
#include <string>
#include <tuple>
#include <vector>

namespace {

namespace ex = kvcar::examples;
namespace fs = std::filesystem;
using kvcar::kv_kind;

const std::string data_dir = KVCAR_SHARED_DATA;
const std::string gpt2_dir = data_dir + "/models/gpt2-tiny";
const std::string llama_dir = data_dir + "/models/llama-tiny";

static_assert(kvcar::kv_codec<kvcar::quantized_codec<kvcar::identity_codec<float>, std::int8_t>>);
static_assert(kvcar::kv_codec<kvcar::any_codec>);

bool have(const std::string& dir) {
    if (fs::exists(dir + "/model.safetensors")) return true;
    WARN("skipped: " << dir << " is absent");
    return false;
}

/// Deterministic token ids inside GPT-2's vocabulary (real text is not needed to check shapes).
std::vector<int> some_ids(int n) {
    std::vector<int> ids(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) ids[std::size_t(i)] = (i * 7919 + 13) % 50000;
    return ids;
}

/// One layer's K or V of one window, by a plain forward into an f32 cache.
std::vector<float> window_rows(const ex::language_model& m, std::span<const int> ids, int layer,
                               kv_kind kind) {
    const kvcar::kv_geometry g = m.cache_geometry();
    kvcar::kv_cache<kvcar::identity_codec<float>> cache(kvcar::dense_layout(g),
                                                        kvcar::identity_codec<float>{g.head_dim},
                                                        {1, int(ids.size())});
    const int seq = cache.add_sequence();
    (void)m.forward(cache, seq, ids);
    std::vector<float> rows(ids.size() * std::size_t(g.token_width()));
    cache.read(seq, layer, kind, 0, int(ids.size()), rows);
    return rows;
}

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
    REQUIRE(a.size() == b.size());
    double d = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
    return d;
}

std::string temp_path(const std::string& name) {
    return (fs::temp_directory_path() / ("kvcar_kv_collect_" + name)).string();
}

}  // namespace

TEST_CASE("collect_kv: windows of ctx tokens, every layer's K and V exactly",
          "[models][kv_collect]") {
    if (!have(gpt2_dir)) return;
    const auto m = ex::language_model::load(gpt2_dir, {.threads = 2});
    const kvcar::kv_geometry g = m.cache_geometry();
    const std::vector<int> ids = some_ids(40);
    std::vector<std::size_t> progress;
    ex::kv_collect_params p;
    p.ctx = 16;
    p.on_window = [&](std::size_t done, std::size_t total) {
        progress.push_back(done);
        CHECK(total == 40);
    };
    const ex::kv_collection kv = ex::collect_kv(m, ids, p);
    CHECK(kv.tokens == 40);
    CHECK(progress == std::vector<std::size_t>{16, 32, 40});
    REQUIRE(kv.keys.size() == std::size_t(g.n_layers));
    REQUIRE(kv.values.size() == std::size_t(g.n_layers));
    const std::size_t W = std::size_t(g.token_width());
    for (int l = 0; l < g.n_layers; ++l) {
        CHECK(kv.layer(l, kv_kind::key).size() == 40 * W);
        CHECK(kv.layer(l, kv_kind::value).size() == 40 * W);
    }
    // The third window (tokens 32..39) restarts at position 0: its rows are those of a fresh
    // forward over just those 8 tokens (bit-identical: same code, same f32 cache).
    const std::span<const int> third(ids.data() + 32, 8);
    for (int l : {0, g.n_layers - 1}) {
        for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
            const std::vector<float> want = window_rows(m, third, l, kind);
            const std::span<const float> got(kv.layer(l, kind).data() + 32 * W, 8 * W);
            CHECK(max_abs_diff(got, want) == 0.0);
        }
    }
    // And neighbouring layers differ (the collection is not one layer repeated).
    CHECK(max_abs_diff(kv.layer(0, kv_kind::key), kv.layer(1, kv_kind::key)) > 0.0);
}

TEST_CASE("collect_kv: max_tokens, a 1-token tail is dropped, group_rows", "[models][kv_collect]") {
    if (!have(gpt2_dir)) return;
    const auto m = ex::language_model::load(gpt2_dir, {.threads = 2});
    const kvcar::kv_geometry g = m.cache_geometry();
    const std::vector<int> ids = some_ids(100);
    ex::kv_collect_params p;
    p.ctx = 16;
    p.max_tokens = 33;  // windows 16 + 16 + 1: the single-token tail is dropped
    const ex::kv_collection kv = ex::collect_kv(m, ids, p);
    CHECK(kv.tokens == 32);

    // group_rows: the columns of one head (or all heads) of one layer, token by token.
    const std::size_t W = std::size_t(g.token_width()), hd = std::size_t(g.head_dim);
    const std::vector<float> head2 = kv.group_rows(3, 2, 1, kv_kind::value);
    REQUIRE(head2.size() == 32 * hd);
    const std::vector<float>& all = kv.layer(3, kv_kind::value);
    for (std::size_t t : {std::size_t(0), std::size_t(17), std::size_t(31)})
        for (std::size_t i = 0; i < hd; ++i) CHECK(head2[t * hd + i] == all[t * W + 2 * hd + i]);
    CHECK(kv.group_rows(3, 0, g.n_kv_heads, kv_kind::value) == all);

    KVCAR_REQUIRE_ERROR(kv.group_rows(3, 4, 1, kv_kind::key), "group 4 out of range [0, 4)");
    KVCAR_REQUIRE_ERROR(kv.group_rows(3, 0, 3, kv_kind::key), "heads_per_group 3");
    KVCAR_REQUIRE_ERROR(kv.layer(6, kv_kind::key), "layer 6 out of range [0, 6)");
}

TEST_CASE("collect_kv: bad parameters throw before the model runs",
          "[models][kv_collect][errors]") {
    if (!have(gpt2_dir)) return;
    const auto m = ex::language_model::load(gpt2_dir, {.threads = 1});
    const std::vector<int> ids = some_ids(10);
    ex::kv_collect_params p;
    p.ctx = 513;
    KVCAR_REQUIRE_ERROR(ex::collect_kv(m, ids, p), "ctx 513 must be in [2, the model's context 512]");
    p.ctx = 1;
    KVCAR_REQUIRE_ERROR(ex::collect_kv(m, ids, p), "ctx 1");
    p.ctx = 8;
    KVCAR_REQUIRE_ERROR(ex::collect_kv(m, std::vector<int>{464}, p), "needs at least 2");
    std::vector<int> bad = ids;
    bad[3] = 60000;
    KVCAR_REQUIRE_ERROR(ex::collect_kv(m, bad, p), "outside the vocabulary");
}

TEST_CASE("collect_kv: Llama keys before RoPE unless post-RoPE is asked", "[models][kv_collect]") {
    if (!have(llama_dir)) return;
    const auto post = ex::language_model::load(llama_dir, {.threads = 2});
    const auto pre =
        ex::language_model::load(llama_dir, {.threads = 2, .keys = ex::cached_keys::pre_rope});
    const std::vector<int> ids = some_ids(24);
    ex::kv_collect_params p;
    p.ctx = 12;
    const ex::kv_collection a = ex::collect_kv(post, ids, p), b = ex::collect_kv(pre, ids, p);
    CHECK(a.keys_form == ex::cached_keys::post_rope);
    CHECK(b.keys_form == ex::cached_keys::pre_rope);
    const std::size_t W = std::size_t(a.geometry.token_width());
    // Position 0 of each window is not rotated: its keys agree; later positions differ.
    for (std::size_t t : {std::size_t(0), std::size_t(12)}) {
        const std::span<const float> ka(a.keys[2].data() + t * W, W), kb(b.keys[2].data() + t * W, W);
        CHECK(max_abs_diff(ka, kb) < 1e-6);
    }
    const std::span<const float> ka(a.keys[2].data() + 5 * W, W), kb(b.keys[2].data() + 5 * W, W);
    CHECK(max_abs_diff(ka, kb) > 1e-3);
    // Values do not depend on where RoPE happens.
    CHECK(max_abs_diff(a.values[2], b.values[2]) < 1e-6);
}

TEST_CASE("with_kv_cache: int8, fp8 and file:PATH caches", "[models][kv_collect][kv_dispatch]") {
    if (!have(gpt2_dir)) return;
    const auto m = ex::language_model::load(gpt2_dir, {.threads = 2});
    const kvcar::kv_geometry g = m.cache_geometry();
    const std::vector<int> ids = some_ids(12);
    const auto logits_of = [&](const std::string& kv, std::size_t* bytes = nullptr) {
        return ex::with_kv_cache(kv, g, {1, 16}, [&](auto& cache) {
            const int seq = cache.add_sequence();
            std::vector<float> out = m.forward(cache, seq, ids);
            if (bytes) *bytes = cache.bytes_per_token();
            return out;
        });
    };
    std::size_t bytes = 0;
    const std::vector<float> f16 = logits_of("identity-f16", &bytes);
    CHECK(bytes == g.fp16_bytes_per_token());

    SECTION("int8 and fp8: a 32-float head in 32 bytes plus scale and offset") {
        // The bound follows the format's unit roundoff u: int8 spreads a head's range over 255
        // steps (u = 1/510), fp8 e4m3 keeps 3 mantissa bits (u = 2^-4). The logits moved by
        // 0.8 u (int8) and 0.24 u (fp8) of max |logit| (9.18) on gpt2-tiny; the bounds are
        // 2 u and 1 u of it, where the test allowed 1.0 (about 11 u of int8's) before.
        double max_logit = 0;
        for (float x : f16) max_logit = std::max(max_logit, double(std::fabs(x)));
        for (const auto& [name, u, factor] : {std::tuple{"int8", 1.0 / 510.0, 2.0},
                                              std::tuple{"fp8", 1.0 / 16.0, 1.0}}) {
            const std::vector<float> q = logits_of(name, &bytes);
            CHECK(bytes == 2u * 6u * 4u * (32u + 8u));
            const double diff = max_abs_diff(q, f16);
            WARN(name << ": max |logit - fp16 cache's| " << diff << " = " << diff / (u * max_logit)
                      << " u of max |logit| " << max_logit);
            CHECK(diff > 0.0);  // quantized: not the same cache
            CHECK(diff < factor * u * max_logit);
        }
    }
    SECTION("file: an identity f16 codec file gives the identity-f16 cache's logits") {
        const std::string path = temp_path("identity.kvc");
        kvcar::io::codec_set set = kvcar::io::codec_set::identity(g, 1);
        set.model.architecture = "gpt2";
        kvcar::io::save_codec_set(set, path);
        CHECK(max_abs_diff(logits_of("file:" + path, &bytes), f16) == 0.0);
        CHECK(bytes == g.fp16_bytes_per_token());
        fs::remove(path);
    }
    SECTION("file: a PCA codec per layer with one reused V head") {
        // A rank-32 PCA codec per layer (D = 128), fitted on a few windows of K/V.
        ex::kv_collect_params p;
        p.ctx = 16;
        const ex::kv_collection kv = ex::collect_kv(m, some_ids(64), p);
        kvcar::io::codec_set set;
        set.geometry = g;
        set.heads_per_group = g.n_kv_heads;
        set.value_reuse = {{5, 0, 4, 0}};  // layer 5's V reads layer 4's
        const kvcar::reuse_map map = set.layout();
        for (int slot = 0; slot < map.n_slots(); ++slot) {
            const kvcar::slot_owner o = map.owner(slot);
            const std::vector<float> rows = kv.group_rows(o.layer, o.group, g.n_kv_heads, o.kind);
            kvcar::calib::pca_params pp;
            pp.rank = 32;
            pp.heads = g.n_kv_heads;
            set.slots.push_back(kvcar::io::slot_codec::make_linear(
                o.layer, o.group, o.kind,
                kvcar::calib::fit_pca(rows.data(), kv.tokens, 128, pp).params));
        }
        const std::string path = temp_path("pca.kvc");
        kvcar::io::save_codec_set(set, path);
        const std::vector<float> got = logits_of("file:" + path, &bytes);
        CHECK(bytes == 11u * 64u);  // 11 stored slots of 32 f16 latents
        CHECK(max_abs_diff(got, f16) > 0.0);
        fs::remove(path);
    }
    SECTION("file: errors name the problem") {
        KVCAR_REQUIRE_ERROR(logits_of("file:"), "needs a codec file path");
        KVCAR_REQUIRE_ERROR(logits_of("file:/nonexistent/x.kvc"), "/nonexistent/x.kvc");
        const std::string path = temp_path("other_geometry.kvc");
        kvcar::io::save_codec_set(kvcar::io::codec_set::identity({6, 2, 32}, 1), path);
        KVCAR_REQUIRE_ERROR(logits_of("file:" + path), "was made for 6 layers x 2 KV heads x 32");
        fs::remove(path);
        KVCAR_REQUIRE_ERROR(logits_of("int4"), "'int4' is not a known cache");
    }
}
