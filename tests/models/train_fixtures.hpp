// What the stage-2 trainer tests (gpt2_train.cpp, llama_train.cpp) share: platform-independent
// random numbers, random autoencoders and codec sets, the reference CE through a kvcar cache,
// and the finite-difference check of a trainer's gradient. Not a test of its own.
#pragma once

#include "catch.hpp"

#include "examples/models/kv_train.hpp"
#include "examples/models/tensor_ops.hpp"

#include <kvcar/codec/any.hpp>
#include <kvcar/codec/autoencoder.hpp>
#include <kvcar/io/codec_file.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/reuse_map.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace train_fixtures {

namespace ex = kvcar::examples;
namespace io = kvcar::io;

/// Platform-independent uniform numbers (std::mt19937_64's sequence is fixed by the standard).
struct rng {
    std::mt19937_64 engine;
    explicit rng(std::uint64_t seed) : engine(seed) {}
    double uniform() { return double(engine() >> 11) * 0x1.0p-53; }  // [0, 1)
    float symmetric(double bound) { return float((2.0 * uniform() - 1.0) * bound); }
    std::vector<float> fill(std::size_t n, double bound) {
        std::vector<float> v(n);
        for (float& x : v) x = symmetric(bound);
        return v;
    }
    std::vector<float> around(std::size_t n, float center, double bound) {
        std::vector<float> v = fill(n, bound);
        for (float& x : v) x += center;
        return v;
    }
};

/// A folded autoencoder with random weights scaled like a trained one's (slope 0.1).
inline kvcar::folded_autoencoder random_ae(rng& r, int width, int hidden, int latent) {
    kvcar::folded_autoencoder f;
    f.width = width;
    f.hidden = hidden;
    f.latent = latent;
    f.slope = 0.1f;
    const std::size_t D = std::size_t(width), h = std::size_t(hidden), d = std::size_t(latent);
    f.enc1_w = r.fill(h * D, 1.0 / std::sqrt(double(D)));
    f.enc1_b = r.fill(h, 0.2);
    f.enc2_wt = r.fill(h * d, 1.0 / std::sqrt(double(h)));
    f.enc2_b = r.fill(d, 0.2);
    f.dec1_w = r.fill(h * d, 1.0 / std::sqrt(double(d)));
    f.dec1_b = r.fill(h, 0.2);
    f.dec2_wt = r.fill(h * D, 1.0 / std::sqrt(double(h)));
    f.dec2_b = r.fill(D, 0.2);
    return f;
}

/// The paper's layout on a {2 layers, 2 KV heads, head_dim 8} model: one autoencoder (hidden
/// 12, latent 6) per layer's whole K and whole V, 4 slots.
inline io::codec_set per_layer_set(std::uint64_t seed,
                                   kvcar::latent_storage storage = kvcar::latent_storage::f32) {
    rng r(seed);
    io::codec_set set;
    set.geometry = {2, 2, 8};
    set.heads_per_group = 2;
    for (int l = 0; l < 2; ++l)
        for (kvcar::kv_kind kind : {kvcar::kv_kind::key, kvcar::kv_kind::value})
            set.slots.push_back(
                io::slot_codec::make_autoencoder(l, 0, kind, random_ae(r, 16, 12, 6), storage));
    set.validate();
    return set;
}

/// `n` token ids uniform in [0, vocab).
inline std::vector<int> random_tokens(std::uint64_t seed, int n, int vocab) {
    rng r(seed);
    std::vector<int> t(static_cast<std::size_t>(n));
    for (int& v : t) v = int(r.uniform() * vocab);
    return t;
}

/// Mean CE of `model` (a reference model) on inputs → targets, reading K/V through a kv_cache
/// of `set`: the number a trainer's loss must reproduce.
template <class Model>
double inference_ce(const Model& model, const io::codec_set& set, const std::vector<int>& inputs,
                    const std::vector<int>& targets) {
    kvcar::kv_cache<kvcar::any_codec, kvcar::reuse_map> cache(set.layout(), set.codecs(),
                                                             {1, int(inputs.size())});
    const int seq = cache.add_sequence();
    const std::vector<float> logits = model.forward(cache, seq, inputs);
    const std::size_t V = std::size_t(model.vocab_size());
    double ce = 0;
    for (std::size_t t = 0; t < inputs.size(); ++t)
        ce -= ex::log_prob(std::span<const float>(&logits[t * V], V), targets[t]);
    return ce / double(inputs.size());
}

/// Central finite differences on 4 random entries of every tensor of every autoencoder of
/// `trainer` (a double-precision stage-2 trainer), against its analytic gradient on one window.
/// Step 1e-6: truncation and rounding ~1e-10. Every autoencoder must get a gradient, and the
/// probes must leave the weights as they were.
template <class Trainer>
void check_gradient_by_finite_differences(Trainer& trainer, const std::vector<int>& inputs,
                                          const std::vector<int>& targets, std::uint64_t seed) {
    ex::ae_gradients<double> grad = trainer.zero_gradient();
    const ex::kv_finetune_loss base = trainer.loss(inputs, targets, &grad);
    REQUIRE(std::isfinite(base.total));
    REQUIRE(base.l1 > 0.0);

    rng pick(seed);
    const double eps = 1e-6;
    int checked = 0;
    for (std::size_t a = 0; a < trainer.autoencoders().size(); ++a) {
        double norm = 0;
        for (int i = 0; i < ex::folded_ae_weights<double>::tensor_count; ++i) {
            std::vector<double>& param = trainer.autoencoders()[a].tensor(i);
            const std::vector<double>& g = grad[a].tensor(i);
            for (double v : g) norm += v * v;
            for (int trial = 0; trial < 4; ++trial) {
                const std::size_t k = std::size_t(pick.uniform() * double(param.size()));
                const double saved = param[k];
                param[k] = saved + eps;
                const double up = trainer.loss(inputs, targets).total;
                param[k] = saved - eps;
                const double down = trainer.loss(inputs, targets).total;
                param[k] = saved;
                const double fd = (up - down) / (2 * eps);
                INFO("autoencoder " << a << " " << ex::folded_ae_weights<double>::tensor_names[i]
                                    << "[" << k << "]: analytic " << g[k] << ", finite "
                                    << "difference " << fd);
                CHECK(std::fabs(fd - g[k]) <= 1e-6 + 1e-4 * std::fabs(g[k]));
                ++checked;
            }
        }
        INFO("autoencoder " << a);
        CHECK(norm > 0.0);  // every autoencoder (sources of reuse included) gets a gradient
    }
    CHECK(checked == int(trainer.autoencoders().size()) * 8 * 4);
    CHECK(trainer.loss(inputs, targets).total == base.total);
}

}  // namespace train_fixtures
