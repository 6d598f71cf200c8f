// What the CUDA model tests (model_cuda.cu, model_cuda_codec_file.cu) share: synthetic GPT-2
// and Llama models, random ids, and the batched CPU-versus-CUDA comparison through one codec.
// Not a test of its own.
#pragma once

#include "common/gpu_test.cuh"

// The session API the tools use (compiled once for this executable in backend.cu) and the
// device model's templates.
#include "examples/models/cuda/backend.hpp"
#include "examples/models/cuda/device_model.cuh"

#include "examples/models/model.hpp"
#include "examples/models/tensor_ops.hpp"

#include <kvcar/codec/identity.hpp>
#include <kvcar/codec/quantized.hpp>
#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/dense.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <kvcar/codec/any.hpp>
#include <kvcar/io/codec_file.hpp>
#include <kvcar/layout/reuse_map.hpp>

namespace model_cuda_test {

namespace ex = kvcar::examples;
namespace fs = std::filesystem;
using kvcar::gpu::device_kv_cache;
using kvcar::examples::cuda_model::device_model;
using kvcar::examples::cuda_model::token_batch;

inline const std::string data_dir = KVCAR_SHARED_DATA;

static_assert(kvcar::gpu::uploadable_codec<kvcar::identity_codec<kvcar::f16>>);

inline bool have(const std::string& path) {
    if (fs::exists(path)) return true;
    WARN("skipped: " << path << " is absent");
    return false;
}

inline std::vector<float> normal(std::size_t n, std::mt19937& rng, float mean, float sigma) {
    std::normal_distribution<float> d(mean, sigma);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

/// A GPT-2 with random weights: 2 layers, d_model 256, 4 heads of 64 (the direct decode path).
inline ex::language_model synthetic_gpt2() {
    ex::gpt2_config c{.vocab_size = 300, .max_positions = 64, .d_model = 256, .n_layers = 2,
                      .n_heads = 4, .d_ff = 512, .norm_eps = 1e-5f};
    std::mt19937 rng(7);
    const std::size_t V = 300, P = 64, D = 256, F = 512;
    ex::gpt2_weights w;
    w.token_embedding = normal(V * D, rng, 0.0f, 0.1f);
    w.position_embedding = normal(P * D, rng, 0.0f, 0.1f);
    for (int l = 0; l < c.n_layers; ++l) {
        ex::gpt2_layer L;
        L.ln1_weight = normal(D, rng, 1.0f, 0.1f);
        L.ln1_bias = normal(D, rng, 0.0f, 0.1f);
        L.qkv_weight = normal(3 * D * D, rng, 0.0f, 0.08f);
        L.qkv_bias = normal(3 * D, rng, 0.0f, 0.1f);
        L.proj_weight = normal(D * D, rng, 0.0f, 0.05f);
        L.proj_bias = normal(D, rng, 0.0f, 0.1f);
        L.ln2_weight = normal(D, rng, 1.0f, 0.1f);
        L.ln2_bias = normal(D, rng, 0.0f, 0.1f);
        L.fc_weight = normal(F * D, rng, 0.0f, 0.06f);
        L.fc_bias = normal(F, rng, 0.0f, 0.1f);
        L.out_weight = normal(D * F, rng, 0.0f, 0.04f);
        L.out_bias = normal(D, rng, 0.0f, 0.1f);
        w.layers.push_back(std::move(L));
    }
    w.final_norm_weight = normal(D, rng, 1.0f, 0.1f);
    w.final_norm_bias = normal(D, rng, 0.0f, 0.1f);
    return ex::language_model(ex::gpt2_model(c, std::move(w), {.threads = 1}),
                              ex::checkpoint_format::huggingface, "synthetic-gpt2");
}

/// A Llama with random weights: 2 layers, 4 query heads and 2 KV heads of 64 (GQA 2), an untied
/// head, keys cached post- or pre-RoPE; a context of `max_positions`.
inline ex::language_model synthetic_llama(ex::cached_keys keys, int max_positions = 64) {
    ex::llama_config c{.vocab_size = 300, .max_positions = max_positions, .d_model = 256, .n_layers = 2,
                       .n_heads = 4, .n_kv_heads = 2, .head_dim = 64, .d_ff = 384,
                       .norm_eps = 1e-5f, .rope = {}};
    std::mt19937 rng(11);
    const std::size_t V = 300, D = 256, F = 384, KV = 128;
    ex::llama_weights w;
    w.token_embedding = normal(V * D, rng, 0.0f, 1.0f);
    for (int l = 0; l < c.n_layers; ++l) {
        ex::llama_layer L;
        L.attn_norm = normal(D, rng, 1.0f, 0.1f);
        L.wq = normal(D * D, rng, 0.0f, 0.08f);
        L.wk = normal(KV * D, rng, 0.0f, 0.08f);
        L.wv = normal(KV * D, rng, 0.0f, 0.06f);
        L.wo = normal(D * D, rng, 0.0f, 0.05f);
        L.ffn_norm = normal(D, rng, 1.0f, 0.1f);
        L.w_gate = normal(F * D, rng, 0.0f, 0.06f);
        L.w_up = normal(F * D, rng, 0.0f, 0.06f);
        L.w_down = normal(D * F, rng, 0.0f, 0.05f);
        w.layers.push_back(std::move(L));
    }
    w.final_norm = normal(D, rng, 1.0f, 0.1f);
    w.lm_head = normal(V * D, rng, 0.0f, 0.06f);
    return ex::language_model(ex::llama_model(c, std::move(w), {.threads = 1, .keys = keys}),
                              ex::checkpoint_format::huggingface, "synthetic-llama");
}

inline std::vector<int> random_ids(std::size_t n, int vocab, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> d(0, vocab - 1);
    std::vector<int> ids(n);
    for (int& id : ids) id = d(rng);
    return ids;
}

/// max |got - want| / max |want| over the rows compared so far; infinity once a NaN or an
/// infinity was seen (a row the GPU never wrote, say).
struct error_meter {
    double worst_diff = 0.0, scale = 1e-30;
    bool finite = true;
    void add(const float* got, const float* want, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) {
            finite = finite && std::isfinite(got[i]);
            worst_diff = std::max(worst_diff, std::fabs(double(got[i]) - double(want[i])));
            scale = std::max(scale, std::fabs(double(want[i])));
        }
    }
    double relative() const { return finite ? worst_diff / scale : INFINITY; }
};

/// The CPU model and the CUDA model, each through a cache of `codec`, on three sequences:
/// prompts of 5, 17 and 11 tokens prefilled in one batch (17 crosses a 16-token page), then a
/// chunk of 3, 1 and 2 tokens (the prefill kernel at non-zero positions), then ten decode steps
/// of one token each (the decode kernel, batched). Returns the logits' relative error.
template <class Codec>
double compare_with_cpu(const ex::language_model& m, const Codec& codec) {
    const kvcar::kv_geometry g = m.cache_geometry();
    const int V = m.vocab_size();
    const std::vector<int> prompt_lengths = {5, 17, 11}, chunk_lengths = {3, 1, 2};
    const int steps = 10, items = 3;
    std::vector<std::vector<int>> prompts, chunks, decoded;
    for (int b = 0; b < items; ++b) {
        prompts.push_back(random_ids(std::size_t(prompt_lengths[std::size_t(b)]), V, 100u + b));
        chunks.push_back(random_ids(std::size_t(chunk_lengths[std::size_t(b)]), V, 200u + b));
        decoded.push_back(random_ids(std::size_t(steps), V, 300u + b));
    }

    // CPU: each sequence on its own, the way the tools run it.
    std::vector<std::vector<float>> cpu_prefill, cpu_chunk, cpu_steps;
    for (int b = 0; b < items; ++b) {
        kvcar::kv_cache<Codec> cache(kvcar::dense_layout(g), codec, {1, 64});
        const int seq = cache.add_sequence();
        cpu_prefill.push_back(m.forward(cache, seq, prompts[std::size_t(b)]));
        cpu_chunk.push_back(m.forward(cache, seq, chunks[std::size_t(b)]));
        std::vector<float> all;
        for (int s = 0; s < steps; ++s) {
            const int* token = &decoded[std::size_t(b)][std::size_t(s)];
            const auto row = m.forward(cache, seq, std::span<const int>(token, 1),
                                       ex::logits_for::last);
            all.insert(all.end(), row.begin(), row.end());
        }
        cpu_steps.push_back(all);
    }

    // CUDA: the three sequences batched. Sequence 0 is taken and dropped first, so the batch's
    // ids are not 0, 1, 2 and its pages not in order.
    device_model gpu(m);
    device_kv_cache<Codec> cache(kvcar::dense_layout(g), codec,
                                 {.max_sequences = 4, .max_tokens = 64, .page_size = 16,
                                  .n_pages = 16});
    const int dropped = cache.add_sequence();
    std::vector<int> seqs;
    for (int b = 0; b < items; ++b) seqs.push_back(cache.add_sequence());
    cache.remove_sequence(dropped);
    const auto flat = [](const std::vector<std::vector<int>>& parts) {
        std::vector<int> all;
        for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
        return all;
    };
    error_meter err;
    const auto compare_rows = [&](const std::vector<float>& got,
                                  const std::vector<std::vector<float>>& want) {
        std::size_t row = 0;
        for (const auto& w : want) {
            REQUIRE(got.size() >= (row * V + w.size()));
            err.add(got.data() + row * std::size_t(V), w.data(), w.size());
            row += w.size() / std::size_t(V);
        }
        CHECK(got.size() == row * std::size_t(V));
    };
    const std::vector<int> prompt_ids = flat(prompts), chunk_ids = flat(chunks);
    compare_rows(gpu.forward(cache, token_batch{seqs, prompt_lengths, prompt_ids}), cpu_prefill);
    compare_rows(gpu.forward(cache, token_batch{seqs, chunk_lengths, chunk_ids}), cpu_chunk);
    const std::vector<int> ones(std::size_t(items), 1);
    for (int s = 0; s < steps; ++s) {
        std::vector<int> step_ids;
        for (int b = 0; b < items; ++b) step_ids.push_back(decoded[std::size_t(b)][std::size_t(s)]);
        const std::vector<float> got =
            gpu.forward(cache, token_batch{seqs, ones, step_ids}, ex::logits_for::last);
        REQUIRE(got.size() == std::size_t(items) * std::size_t(V));
        for (int b = 0; b < items; ++b) {
            err.add(got.data() + std::size_t(b) * V,
                    cpu_steps[std::size_t(b)].data() + std::size_t(s) * V, std::size_t(V));
        }
    }
    for (int b = 0; b < items; ++b) {
        CHECK(cache.length(seqs[std::size_t(b)]) ==
              prompt_lengths[std::size_t(b)] + chunk_lengths[std::size_t(b)] + steps);
    }
    return err.relative();
}

template <class Codec>
void check_model(const ex::language_model& m, const Codec& codec, double tolerance,
                 const char* name) {
    const double e = compare_with_cpu(m, codec);
    std::printf("model_cuda %-18s %-14s batch of 3, prefill + chunk + 10 decode steps: "
                "rel err vs CPU %.2e (tolerance %.0e)\n",
                m.path().c_str(), name, e, tolerance);
    CHECK(e < tolerance);
}

template <class Body>
void for_each_codec(int hd, Body&& body) {
    // Both sides round the same K/V to the same format, so only values that float rounding
    // pushes across a rounding boundary differ. Measured on an H200 (2026-11-26): f32 8e-7,
    // f16 6e-5, bf16 8e-5, int8 1e-3 at most; the tolerances leave 10x or more (f32: 12x, so
    // with the CPU model's 1e-5 against transformers, CUDA is within 2e-5 of transformers).
    body(kvcar::identity_codec<float>{hd}, 1e-5, "identity-f32");
    body(kvcar::identity_codec<kvcar::f16>{hd}, 1e-3, "identity-f16");
    body(kvcar::identity_codec<kvcar::bf16>{hd}, 1e-3, "identity-bf16");
    // One K or V element that lands on the other side of an int8 step moves a logit by a step's
    // share of one attention term: looser, but far below the codec's own effect.
    body(kvcar::make_quantized<std::int8_t>(kvcar::identity_codec<float>{hd}), 1e-2, "int8");
}

}  // namespace model_cuda_test
