// Tests for examples/models/llama/llama.hpp (through model.hpp): the CPU Llama reproduces Hugging
// Face's float32 logits for llama-tiny (GQA, rotate-half RoPE, tied head) through a kvcar cache,
// with post- and pre-RoPE keys, prefill and decode; and the llama2.c path (interleaved RoPE)
// reproduces run.c's greedy output on aidreams260K.bin token for token.
#include "catch.hpp"
#include "models/model_fixtures.hpp"

#include "examples/models/kv_dispatch.hpp"
#include "examples/models/llama/llama.hpp"
#include "examples/models/model.hpp"

#include <kvcar/codec/identity.hpp>
#include <kvcar/io/json.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/reference/attention.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace {

namespace ex = kvcar::examples;
namespace fs = std::filesystem;

const std::string data_dir = KVCAR_SHARED_DATA;
const std::string model_dir = data_dir + "/models/llama-tiny";
const std::string llama2c_path = data_dir + "/llama2c/aidreams260K.bin";
const std::string fixture_path =
    std::string(KVCAR_SOURCE_DIR) + "/tests/fixtures/llama_tiny_logits.json";

static_assert(kvcar::kv_codec<kvcar::identity_codec<float>>);
static_assert(kvcar::readable_kv_cache<kvcar::kv_cache<kvcar::identity_codec<float>>>);

using namespace kvcar_test;

f32_cache make_cache(const ex::language_model& m, int max_tokens) {
    return make_f32_cache(m, 1, max_tokens);
}

/// Logits of every position, prefilled at once or fed one token at a time.
std::vector<float> run(const ex::language_model& m, const std::vector<int>& ids, bool decode) {
    f32_cache cache = make_cache(m, 64);
    const int seq = cache.add_sequence();
    if (!decode) return m.forward(cache, seq, ids);
    std::vector<float> all;
    for (std::size_t t = 0; t < ids.size(); ++t) {
        const auto step = m.forward(cache, seq, std::span<const int>(&ids[t], 1), ex::logits_for::last);
        all.insert(all.end(), step.begin(), step.end());
    }
    return all;
}


/// One layer, D = 8, 2 query heads and 1 KV head of 4, F = 12, V = 10.
const ex::llama_config tiny_config{.vocab_size = 10, .max_positions = 16, .d_model = 8,
                                   .n_layers = 1, .n_heads = 2, .n_kv_heads = 1, .head_dim = 4,
                                   .d_ff = 12, .norm_eps = 1e-5f, .rope = {}};

fake_tensors tiny_llama_tensors() {
    fake_tensors t;
    t.add("model.embed_tokens.weight", {10, 8});
    t.add("model.layers.0.input_layernorm.weight", {8});
    t.add("model.layers.0.self_attn.q_proj.weight", {8, 8});
    t.add("model.layers.0.self_attn.k_proj.weight", {4, 8});
    t.add("model.layers.0.self_attn.v_proj.weight", {4, 8});
    t.add("model.layers.0.self_attn.o_proj.weight", {8, 8});
    t.add("model.layers.0.post_attention_layernorm.weight", {8});
    t.add("model.layers.0.mlp.gate_proj.weight", {12, 8});
    t.add("model.layers.0.mlp.up_proj.weight", {12, 8});
    t.add("model.layers.0.mlp.down_proj.weight", {8, 12});
    t.add("model.norm.weight", {8});
    return t;
}

}  // namespace

TEST_CASE("llama: HF llama-tiny through an f32 cache matches Hugging Face's logits",
          "[models][llama]") {
    if (!have(model_dir + "/model.safetensors")) return;
    const fixture f = load_fixture(fixture_path);
    const auto m = ex::language_model::load(model_dir, {.threads = 2});
    REQUIRE(!m.is_gpt2());
    REQUIRE(m.format() == ex::checkpoint_format::huggingface);
    const kvcar::kv_geometry g = m.cache_geometry();
    REQUIRE((g.n_layers == 6 && g.n_kv_heads == 2 && g.head_dim == 32));  // GQA: 4 q, 2 kv heads

    const std::vector<float> prefill = run(m, f.ids, false);
    CHECK(reported_error(f, prefill, 50257) < 1e-5);
    for (std::size_t t = 0; t < f.ids.size(); ++t)
        CHECK(argmax(&prefill[t * 50257], 50257) == f.top5[t][0].first);
    const std::vector<float> decode = run(m, f.ids, true);
    CHECK(reported_error(f, decode, 50257) < 1e-5);
}

TEST_CASE("llama: pre-RoPE keys with RoPE on read give the same logits", "[models][llama]") {
    if (!have(model_dir + "/model.safetensors")) return;
    const fixture f = load_fixture(fixture_path);
    const auto m = ex::language_model::load(model_dir, {.threads = 2, .keys = ex::cached_keys::pre_rope});
    CHECK(m.describe().find("keys cached pre-rope") != std::string::npos);
    CHECK(reported_error(f, run(m, f.ids, false), 50257) < 1e-5);
    CHECK(reported_error(f, run(m, f.ids, true), 50257) < 1e-5);

    // The cache really holds un-rotated keys: position 0 is not rotated at all, so token 0's key
    // is the same either way, but token 3's differs.
    const auto post = ex::language_model::load(model_dir, {.threads = 2});
    f32_cache a = make_cache(m, 16), b = make_cache(post, 16);
    const int sa = a.add_sequence(), sb = b.add_sequence();
    m.forward(a, sa, f.ids);
    post.forward(b, sb, f.ids);
    std::vector<float> ka(64), kb(64);
    a.read(sa, 0, kvcar::kv_kind::key, 0, 1, ka);
    b.read(sb, 0, kvcar::kv_kind::key, 0, 1, kb);
    CHECK(ka == kb);
    a.read(sa, 0, kvcar::kv_kind::key, 3, 4, ka);
    b.read(sb, 0, kvcar::kv_kind::key, 3, 4, kb);
    CHECK(ka != kb);
    // And rotating the stored pre-RoPE key by its position gives the post-RoPE one.
    for (int h = 0; h < 2; ++h)
        kvcar::apply_rope(&ka[std::size_t(h) * 32], 32, 3, kvcar::rope_params{});
    for (std::size_t i = 0; i < 64; ++i) CHECK(ka[i] == Approx(kb[i]).margin(1e-5));
}

TEST_CASE("llama: llama2.c aidreams260K greedy decoding reproduces run.c",
          "[models][llama][llama2c]") {
    if (!have(llama2c_path)) return;
    const auto m = ex::language_model::load(llama2c_path, {.threads = 1});
    REQUIRE(m.format() == ex::checkpoint_format::llama2c);
    REQUIRE(m.vocab_size() == 512);
    REQUIRE(m.max_positions() == 128);
    const kvcar::kv_geometry g = m.cache_geometry();
    REQUIRE((g.n_layers == 4 && g.n_kv_heads == 4 && g.head_dim == 16));

    const std::vector<int> golden = {1,   319, 459, 355, 260, 275, 429, 339, 315, 374, 327,
                                     446, 262, 421, 392, 275, 280, 269, 440, 270, 283, 446,
                                     299, 303, 266, 358, 430, 312, 379, 441, 260, 446, 262,
                                     421, 392, 275, 280, 269, 440, 270, 283};
    for (const auto keys : {ex::cached_keys::post_rope, ex::cached_keys::pre_rope}) {
        const auto model = ex::language_model::load(llama2c_path, {.threads = 1, .keys = keys});
        f32_cache cache = make_cache(model, 128);
        const int seq = cache.add_sequence();
        std::vector<int> ids = {1};  // BOS
        std::vector<float> logits = model.forward(cache, seq, ids, ex::logits_for::last);
        if (keys == ex::cached_keys::post_rope) {
            // run.c's logits after BOS: 319 = 11.064, 459 = 5.239, 461 = 4.879 (top 3).
            std::vector<int> order(512);
            for (int i = 0; i < 512; ++i) order[std::size_t(i)] = i;
            std::partial_sort(order.begin(), order.begin() + 3, order.end(),
                              [&](int x, int y) { return logits[std::size_t(x)] > logits[std::size_t(y)]; });
            CHECK(order[0] == 319);
            CHECK(order[1] == 459);
            CHECK(order[2] == 461);
            CHECK(logits[319] == Approx(11.064).margin(1e-3));
            CHECK(logits[459] == Approx(5.239).margin(1e-3));
            CHECK(logits[461] == Approx(4.879).margin(1e-3));
        }
        for (int step = 0; step < 40; ++step) {
            const int next = argmax(logits.data(), 512);
            ids.push_back(next);
            logits = model.forward(cache, seq, std::span<const int>(&ids.back(), 1),
                                   ex::logits_for::last);
        }
        CHECK(ids == golden);
        CHECK(cache.length(seq) == 41);
    }
}

TEST_CASE("llama: bad inputs throw and leave the cache unchanged", "[models][llama][errors]") {
    if (!have(llama2c_path)) return;
    const auto m = ex::language_model::load(llama2c_path, {.threads = 1});
    SECTION("prompt longer than the model's 128 positions") {
        f32_cache cache = make_cache(m, 256);
        const int seq = cache.add_sequence();
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, std::vector<int>(129, 5)),
                            "129 tokens (0 cached + 129 new) exceed the model's context of 128");
        CHECK(cache.length(seq) == 0);
    }
    SECTION("prompt longer than the cache") {
        f32_cache cache = make_cache(m, 20);
        const int seq = cache.add_sequence();
        m.forward(cache, seq, std::vector<int>(15, 5));
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, std::vector<int>(6, 5)),
                            "21 tokens (15 cached + 6 new) exceed the KV cache's capacity of 20");
        CHECK(cache.length(seq) == 15);
        CHECK(cache.bytes_used() == 15 * cache.bytes_per_token());
    }
    SECTION("empty prompt, bad id") {
        f32_cache cache = make_cache(m, 20);
        const int seq = cache.add_sequence();
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, std::vector<int>{}), "prompt is empty");
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, std::vector<int>{3, 512}), "id 512");
        CHECK(cache.length(seq) == 0);
    }
    SECTION("a cache shaped for another model") {
        f32_cache cache(kvcar::dense_layout(kvcar::kv_geometry{4, 2, 16}),
                        kvcar::identity_codec<float>{16}, {1, 20});
        const int seq = cache.add_sequence();
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, std::vector<int>{1}),
                            "cache is shaped 4 layers x 2 KV heads x 16 but the model needs 4 "
                            "layers x 4 KV heads x 16");
        CHECK(cache.length(seq) == 0);
    }
    SECTION("bad files") {
        KVCAR_REQUIRE_ERROR(ex::language_model::load(data_dir + "/llama2c/aidreams_tok512.bin"),
                            "llama2c");
    }
}

TEST_CASE("llama: loader checks every shape and needs lm_head when untied",
          "[models][llama][load]") {
    fake_tensors t = tiny_llama_tensors();
    const ex::llama_model tied = ex::llama_model::from_safetensors(t, tiny_config, true);
    CHECK(tied.cache_geometry().n_kv_heads == 1);
    f32_cache cache(kvcar::dense_layout(tied.cache_geometry()), kvcar::identity_codec<float>{4},
                    {1, 16});
    const int seq = cache.add_sequence();
    const auto logits = tied.forward(cache, seq, std::vector<int>{1, 2, 3}, ex::logits_for::last);
    REQUIRE(logits.size() == 10u);

    KVCAR_REQUIRE_ERROR(ex::llama_model::from_safetensors(t, tiny_config, false),
                        "tensor 'lm_head.weight' is missing");
    t.add("lm_head.weight", {10, 8});
    CHECK(ex::llama_model::from_safetensors(t, tiny_config, false).vocab_size() == 10);

    t = tiny_llama_tensors();
    t.add("model.layers.0.self_attn.k_proj.weight", {8, 8});  // MHA-sized K in a GQA config
    KVCAR_REQUIRE_ERROR(ex::llama_model::from_safetensors(t, tiny_config, true),
                        "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [8, 8] but "
                        "config.json implies [4, 8]");

    ex::llama_config bad = tiny_config;
    bad.n_kv_heads = 3;
    KVCAR_REQUIRE_ERROR(ex::llama_model::from_safetensors(tiny_llama_tensors(), bad, true),
                        "n_heads 2 is not a multiple of n_kv_heads 3");
}
