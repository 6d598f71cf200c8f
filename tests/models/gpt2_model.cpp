// Tests for examples/models/gpt2/gpt2.hpp (and model.hpp, kv_dispatch.hpp, tensor_ops.hpp): the CPU
// GPT-2 reproduces Hugging Face's float32 logits through a kvcar cache, prefill and decode alike,
// and every bad input is refused before the cache changes.
#include "catch.hpp"
#include "models/model_fixtures.hpp"

#include "examples/models/gpt2/gpt2.hpp"
#include "examples/models/kv_dispatch.hpp"
#include "examples/models/model.hpp"
#include "examples/models/tensor_ops.hpp"

#include <kvcar/codec/identity.hpp>
#include <kvcar/io/json.hpp>
#include <kvcar/kv_cache.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace {

namespace ex = kvcar::examples;
namespace fs = std::filesystem;

const std::string data_dir = KVCAR_SHARED_DATA;
const std::string model_dir = data_dir + "/models/gpt2-tiny";
const std::string fixture_path = std::string(KVCAR_SOURCE_DIR) + "/tests/fixtures/gpt2_tiny_logits.json";

static_assert(kvcar::kv_codec<kvcar::identity_codec<float>>);

using namespace kvcar_test;

bool have_model() { return have(model_dir + "/model.safetensors"); }

f32_cache make_cache(const ex::language_model& m, int max_tokens) {
    return make_f32_cache(m, 2, max_tokens);
}

/// A complete 1-layer GPT-2 with `prefix` names (D = 8, 2 heads, F = 16, V = 10, P = 6).
fake_tensors tiny_gpt2_tensors(const std::string& p) {
    fake_tensors t;
    t.add(p + "wte.weight", {10, 8});
    t.add(p + "wpe.weight", {6, 8});
    t.add(p + "h.0.ln_1.weight", {8});
    t.add(p + "h.0.ln_1.bias", {8});
    t.add(p + "h.0.attn.c_attn.weight", {8, 24});
    t.add(p + "h.0.attn.c_attn.bias", {24});
    t.add(p + "h.0.attn.c_proj.weight", {8, 8});
    t.add(p + "h.0.attn.c_proj.bias", {8});
    t.add(p + "h.0.ln_2.weight", {8});
    t.add(p + "h.0.ln_2.bias", {8});
    t.add(p + "h.0.mlp.c_fc.weight", {8, 16});
    t.add(p + "h.0.mlp.c_fc.bias", {16});
    t.add(p + "h.0.mlp.c_proj.weight", {16, 8});
    t.add(p + "h.0.mlp.c_proj.bias", {8});
    t.add(p + "ln_f.weight", {8});
    t.add(p + "ln_f.bias", {8});
    return t;
}

const ex::gpt2_config tiny_config{.vocab_size = 10, .max_positions = 6, .d_model = 8,
                                  .n_layers = 1, .n_heads = 2, .d_ff = 16, .norm_eps = 1e-5f};

}  // namespace

TEST_CASE("gpt2: prefill through an f32 cache matches Hugging Face's logits", "[models][gpt2]") {
    if (!have_model()) return;
    const fixture f = load_fixture(fixture_path);
    const auto m = ex::language_model::load(model_dir, {.threads = 2});
    REQUIRE(m.is_gpt2());
    REQUIRE(m.vocab_size() == 50257);
    REQUIRE(m.max_positions() == 512);
    const kvcar::kv_geometry g = m.cache_geometry();
    REQUIRE((g.n_layers == 6 && g.n_kv_heads == 4 && g.head_dim == 32));

    f32_cache cache = make_cache(m, 64);
    const int seq = cache.add_sequence();
    const std::vector<float> logits = m.forward(cache, seq, f.ids);
    REQUIRE(logits.size() == f.ids.size() * 50257u);
    REQUIRE(cache.length(seq) == int(f.ids.size()));
    CHECK(reported_error(f, logits, 50257) < 1e-5);
    for (std::size_t t = 0; t < f.ids.size(); ++t) {
        CHECK(argmax(&logits[t * 50257], 50257) == f.top5[t][0].first);
    }
    // The cache holds exactly the tokens written, in f32: 2 (K, V) · 6 layers · 128 · 4 bytes.
    CHECK(cache.bytes_per_token() == 2u * 6u * 128u * 4u);
    CHECK(cache.bytes_used() == f.ids.size() * cache.bytes_per_token());
    CHECK(cache.compression_ratio() == Approx(0.5));
}

TEST_CASE("gpt2: token-by-token decode matches the prefill and Hugging Face", "[models][gpt2]") {
    if (!have_model()) return;
    const fixture f = load_fixture(fixture_path);
    const auto m = ex::language_model::load(model_dir, {.threads = 1});
    f32_cache cache = make_cache(m, 64);
    const int seq = cache.add_sequence();
    std::vector<float> logits;
    for (std::size_t t = 0; t < f.ids.size(); ++t) {
        const std::vector<float> step =
            m.forward(cache, seq, std::span<const int>(&f.ids[t], 1), ex::logits_for::last);
        REQUIRE(step.size() == 50257u);
        logits.insert(logits.end(), step.begin(), step.end());
    }
    CHECK(reported_error(f, logits, 50257) < 1e-5);

    // Prefill in two chunks: the chunk boundary (positions, causal mask offset) is invisible.
    f32_cache chunked = make_cache(m, 64);
    const int s2 = chunked.add_sequence();
    const std::span<const int> ids(f.ids);
    std::vector<float> a = m.forward(chunked, s2, ids.first(4));
    const std::vector<float> b = m.forward(chunked, s2, ids.subspan(4));
    a.insert(a.end(), b.begin(), b.end());
    CHECK(reported_error(f, a, 50257) < 1e-5);
}

TEST_CASE("gpt2: an f16 cache is close to, but not the same as, the f32 one", "[models][gpt2]") {
    if (!have_model()) return;
    const fixture f = load_fixture(fixture_path);
    const auto m = ex::language_model::load(model_dir, {.threads = 2});
    const std::vector<float> logits = ex::with_kv_cache(
        "identity-f16", m.cache_geometry(), {1, 32}, [&](auto& cache) {
            const int seq = cache.add_sequence();
            std::vector<float> out = m.forward(cache, seq, f.ids);
            CHECK(cache.bytes_per_token() == 2u * 6u * 128u * 2u);
            CHECK(cache.compression_ratio() == Approx(1.0));
            return out;
        });
    const double err = reported_error(f, logits, 50257);
    CHECK(err < 1e-2);
    CHECK(err > 0.0);
}

TEST_CASE("gpt2: bad inputs throw and leave the cache unchanged", "[models][gpt2][errors]") {
    if (!have_model()) return;
    const auto m = ex::language_model::load(model_dir, {.threads = 1});
    const std::vector<int> ten(10, 464);

    SECTION("empty prompt") {
        f32_cache cache = make_cache(m, 16);
        const int seq = cache.add_sequence();
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, std::vector<int>{}), "prompt is empty");
        CHECK(cache.length(seq) == 0);
    }
    SECTION("prompt longer than the cache") {
        f32_cache cache = make_cache(m, 8);
        const int seq = cache.add_sequence();
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, ten), "10 tokens");
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, ten), "capacity of 8");
        CHECK(cache.length(seq) == 0);
        CHECK(cache.bytes_used() == 0);
    }
    SECTION("prompt longer than the model's context") {
        f32_cache cache = make_cache(m, 600);
        const int seq = cache.add_sequence();
        m.forward(cache, seq, ten);
        const std::vector<int> long_prompt(503, 464);
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, long_prompt), "513 tokens");
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, long_prompt), "context of 512");
        CHECK(cache.length(seq) == 10);
    }
    SECTION("token id outside the vocabulary") {
        f32_cache cache = make_cache(m, 8);
        const int seq = cache.add_sequence();
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, std::vector<int>{1, 50257}), "id 50257");
        KVCAR_REQUIRE_ERROR(m.forward(cache, seq, std::vector<int>{-1}), "outside the vocabulary");
        CHECK(cache.length(seq) == 0);
    }
    SECTION("unknown --kv name") {
        KVCAR_REQUIRE_ERROR(ex::with_kv_cache("identity-f8", m.cache_geometry(), {1, 8},
                                              [](auto&) {}),
                            "'identity-f8' is not a known cache (known: identity-f32");
    }
    SECTION("tokenizer with another vocabulary") {
        KVCAR_REQUIRE_ERROR(ex::check_tokenizer_vocab(50000, m.vocab_size(), "vocab.json"),
                            "has 50000 tokens but the model's vocabulary has 50257");
        ex::check_tokenizer_vocab(50257, m.vocab_size(), "vocab.json");
    }
}

TEST_CASE("gpt2: loader accepts both name spellings and checks every shape",
          "[models][gpt2][load]") {
    for (const std::string prefix : {"transformer.", ""}) {
        fake_tensors t = tiny_gpt2_tensors(prefix);
        const ex::gpt2_model m = ex::gpt2_model::from_safetensors(t, tiny_config);
        CHECK(m.cache_geometry().head_dim == 4);
        f32_cache cache(kvcar::dense_layout(m.cache_geometry()), kvcar::identity_codec<float>{4},
                        {1, 6});
        const int seq = cache.add_sequence();
        const std::vector<float> logits = m.forward(cache, seq, std::vector<int>{1, 2, 3});
        REQUIRE(logits.size() == 30u);
        for (float v : logits) CHECK(std::isfinite(v));
    }

    fake_tensors t = tiny_gpt2_tensors("transformer.");
    t.add("transformer.h.0.mlp.c_fc.weight", {16, 8});  // stored [out][in]: wrong for Conv1D
    KVCAR_REQUIRE_ERROR(ex::gpt2_model::from_safetensors(t, tiny_config),
                        "tensor 'transformer.h.0.mlp.c_fc.weight' has shape [16, 8] but "
                        "config.json implies [8, 16]");
    t = tiny_gpt2_tensors("transformer.");
    t.tensors.erase("transformer.ln_f.bias");
    KVCAR_REQUIRE_ERROR(ex::gpt2_model::from_safetensors(t, tiny_config),
                        "tensor 'transformer.ln_f.bias' is missing");
    t = tiny_gpt2_tensors("");
    t.add("wpe.weight", {5, 8});
    KVCAR_REQUIRE_ERROR(ex::gpt2_model::from_safetensors(t, tiny_config),
                        "'wpe.weight' has shape [5, 8] but config.json implies [6, 8]");
}

TEST_CASE("gpt2: Conv1D weights are transposed to [out][in] at load", "[models][gpt2][load]") {
    // out = x · W with W [in = 2][out = 3] stored row-major; the matmul reads W^T rows.
    const std::vector<float> w = {1, 2, 3, 4, 5, 6};
    const std::vector<float> wt = ex::transposed(w, 2, 3);
    CHECK(wt == std::vector<float>{1, 4, 2, 5, 3, 6});
    std::vector<float> out(3);
    ex::matmul(out, std::vector<float>{1, 10}, wt, std::vector<float>{0.5f, 0, 0}, 1, 2, 3, 1);
    CHECK(out == std::vector<float>{41.5f, 52, 63});
}

TEST_CASE("gpt2: an unknown architecture in config.json is refused", "[models][gpt2][load]") {
    const fs::path dir = fs::temp_directory_path() / "kvcar_test_gpt2_unknown_arch";
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << R"({"model_type": "bert", "vocab_size": 10})";
    KVCAR_REQUIRE_ERROR(ex::language_model::load(dir.string()), "unknown architecture 'bert'");
    KVCAR_REQUIRE_ERROR(ex::language_model::load((dir / "nothing").string()), "does not exist");
    fs::remove_all(dir);
}

TEST_CASE("tensor_ops: threaded matmul equals the single-threaded one bit for bit",
          "[models][ops]") {
    const int n = 3, in = 37, out = 1001;
    std::vector<float> x(std::size_t(n * in)), w(std::size_t(out * in)), b(static_cast<std::size_t>(out));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i));
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::cos(float(i) * 0.37f);
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = float(i) * 1e-3f;
    std::vector<float> one(std::size_t(n * out)), four(one.size());
    ex::matmul(one, x, w, b, n, in, out, 1);
    ex::matmul(four, x, w, b, n, in, out, 4);
    CHECK(one == four);
    double max_err = 0;
    for (int t = 0; t < n; ++t)
        for (int o = 0; o < out; ++o) {
            double ref = b[std::size_t(o)];
            for (int i = 0; i < in; ++i) ref += double(x[std::size_t(t * in + i)]) * w[std::size_t(o * in + i)];
            max_err = std::max(max_err, std::fabs(ref - one[std::size_t(t * out + o)]));
        }
    CHECK(max_err < 1e-4);
    KVCAR_REQUIRE_ERROR(ex::matmul(one, x, w, b, n, in + 1, out, 1), "matmul: shapes disagree");
}
