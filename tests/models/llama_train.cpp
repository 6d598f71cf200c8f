// Tests for examples/models/llama/llama_train.hpp (and kv_codec_slots.hpp's codec insertion with
// reuse): the Llama stage-2 trainer computes the same loss as the Llama reference model reading
// its K/V through a kvcar cache of the same codec set, for keys cached after and before RoPE; its
// gradient with respect to every autoencoder weight matches central finite differences through
// the whole frozen model (double precision, tiny random GQA Llama), with and without head reuse
// between layers; a reused group's gradient reaches the slot it reads; Adam lowers the loss.
#include "catch.hpp"
#include "train_fixtures.hpp"

#include "examples/models/llama/llama.hpp"
#include "examples/models/llama/llama_train.hpp"
#include "examples/models/tensor_ops.hpp"

#include <kvcar/codec/any.hpp>
#include <kvcar/codec/autoencoder.hpp>
#include <kvcar/io/codec_file.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/reuse_map.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace train_fixtures;
namespace ex = kvcar::examples;
namespace io = kvcar::io;
using kvcar::codec_kind;
using kvcar::kv_kind;
using kvcar::latent_storage;

constexpr int vocab = 40;

/// A Llama with random weights: 2 layers, 4 query heads and 2 KV heads of 8 (GQA; the query
/// width 32 is not d_model 16, so W_o is not square), SwiGLU width 24, context 16, untied head.
ex::llama_model tiny_llama(std::uint64_t seed, ex::cached_keys keys,
                           kvcar::rope_style style = kvcar::rope_style::half) {
    ex::llama_config c;
    c.vocab_size = vocab;
    c.max_positions = 16;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.d_ff = 24;
    c.rope = {.theta = 100.0f, .style = style};  // small theta: every pair turns visibly
    rng r(seed);
    const std::size_t D = 16, F = 24, Q = 32, KV = 16;
    ex::llama_weights w;
    w.token_embedding = r.fill(vocab * D, 1.0);
    const double s = 1.0 / std::sqrt(double(D));
    for (int l = 0; l < c.n_layers; ++l) {
        ex::llama_layer L;
        L.attn_norm = r.around(D, 1.0f, 0.2);
        L.wq = r.fill(Q * D, 2.0 * s);  // large enough for peaked attention
        L.wk = r.fill(KV * D, 2.0 * s);
        L.wv = r.fill(KV * D, s);
        L.wo = r.fill(D * Q, 1.0 / std::sqrt(double(Q)));
        L.ffn_norm = r.around(D, 1.0f, 0.2);
        L.w_gate = r.fill(F * D, s);
        L.w_up = r.fill(F * D, s);
        L.w_down = r.fill(D * F, 1.0 / std::sqrt(double(F)));
        w.layers.push_back(std::move(L));
    }
    w.final_norm = r.around(D, 1.0f, 0.2);
    w.lm_head = r.fill(vocab * D, s);
    return ex::llama_model(c, std::move(w), ex::model_options{.threads = 1, .keys = keys});
}

const kvcar::kv_geometry geometry{2, 2, 8};

/// Algorithm 2's layout: per-head autoencoders on layer 0 (their sources), layer 1 reusing
/// layer 0's K head 1 and V head 0 (it stores K head 0 and V head 1 itself, one autoencoder and
/// one linear codec).
io::codec_set reuse_set(std::uint64_t seed, latent_storage storage = latent_storage::f32) {
    rng r(seed);
    io::codec_set set;
    set.geometry = geometry;
    set.heads_per_group = 1;
    set.key_reuse = {{1, 1, 0, 1}};
    set.value_reuse = {{1, 0, 0, 0}};
    for (int g = 0; g < 2; ++g)
        for (kv_kind kind : {kv_kind::key, kv_kind::value})
            set.slots.push_back(
                io::slot_codec::make_autoencoder(0, g, kind, random_ae(r, 8, 10, 5), storage));
    set.slots.push_back(
        io::slot_codec::make_autoencoder(1, 0, kv_kind::key, random_ae(r, 8, 10, 5), storage));
    kvcar::linear_params lp;
    lp.width = 8;
    lp.rank = 4;
    lp.mean = r.fill(8, 0.3);
    lp.basis = r.fill(8 * 4, 0.5);
    set.slots.push_back(io::slot_codec::make_linear(1, 1, kv_kind::value, lp, storage));
    set.validate();
    return set;
}

struct window {
    std::vector<int> inputs, targets;
};
window random_window(std::uint64_t seed, int ctx = 8) {
    const std::vector<int> tokens = random_tokens(seed, ctx + 1, vocab);
    return {std::vector<int>(tokens.begin(), tokens.end() - 1),
            std::vector<int>(tokens.begin() + 1, tokens.end())};
}

/// The trainer's gradient against central finite differences (train_fixtures.hpp).
void check_gradient(const ex::llama_model& model, const io::codec_set& set, float l1_weight,
                    std::uint64_t seed) {
    ex::llama_kv_trainer<double> trainer(model, set, {.l1_weight = l1_weight, .threads = 1});
    const window w = random_window(seed + 1);
    check_gradient_by_finite_differences(trainer, w.inputs, w.targets, seed + 2);
}

}  // namespace

TEST_CASE("the Llama trainer's loss is the CE of the model reading K/V through a kvcar cache",
          "[models][llama_train]") {
    const window w = random_window(12);
    for (ex::cached_keys keys : {ex::cached_keys::post_rope, ex::cached_keys::pre_rope}) {
        for (kvcar::rope_style style : {kvcar::rope_style::half, kvcar::rope_style::interleaved}) {
            INFO("keys " << ex::to_string(keys) << ", rope " << kvcar::to_string(style));
            const ex::llama_model model = tiny_llama(11, keys, style);
            const io::codec_set set = per_layer_set(13);
            ex::llama_kv_trainer<float> trainer(model, set, {.l1_weight = 0.0f, .threads = 1});
            CHECK(trainer.keys() == keys);
            const ex::kv_finetune_loss l = trainer.loss(w.inputs, w.targets);
            CHECK(l.ce == Approx(inference_ce(model, set, w.inputs, w.targets)).epsilon(1e-5));
            CHECK(l.total == l.ce);
            CHECK(l.l1 > 0.0);

            // f16 latents rounded as the cache rounds them; reuse read as the cache reads it.
            const io::codec_set f16 = per_layer_set(13, latent_storage::f16);
            ex::llama_kv_trainer<float> t16(model, f16, {.l1_weight = 0.0f, .threads = 1});
            CHECK(t16.loss(w.inputs, w.targets).ce ==
                  Approx(inference_ce(model, f16, w.inputs, w.targets)).epsilon(1e-4));
            const io::codec_set reuse = reuse_set(14, latent_storage::f16);
            ex::llama_kv_trainer<float> tr(model, reuse, {.l1_weight = 0.3f, .threads = 1});
            CHECK(tr.autoencoders().size() == 5);
            const ex::kv_finetune_loss lr = tr.loss(w.inputs, w.targets);
            CHECK(lr.ce == Approx(inference_ce(model, reuse, w.inputs, w.targets)).epsilon(1e-4));
            CHECK(lr.total == Approx(lr.ce + double(0.3f) * lr.l1).epsilon(1e-12));
        }
    }
    SECTION("an all-identity set gives the uncompressed model's loss") {
        const ex::llama_model model = tiny_llama(11, ex::cached_keys::post_rope);
        const io::codec_set set = io::codec_set::identity(geometry, 1, latent_storage::f32);
        ex::llama_kv_trainer<float> trainer(model, set, {});
        CHECK(trainer.autoencoders().empty());
        CHECK(trainer.loss(w.inputs, w.targets).ce ==
              Approx(inference_ce(model, set, w.inputs, w.targets)).epsilon(1e-5));
    }
}

TEST_CASE("the Llama gradient matches finite differences through the frozen model",
          "[models][llama_train]") {
    SECTION("post-RoPE keys, one autoencoder per layer, L1 term on") {
        check_gradient(tiny_llama(21, ex::cached_keys::post_rope), per_layer_set(22), 0.5f, 23);
    }
    SECTION("pre-RoPE keys (RoPE after the codec), interleaved pairs, LM loss only") {
        check_gradient(tiny_llama(24, ex::cached_keys::pre_rope, kvcar::rope_style::interleaved),
                       per_layer_set(25), 0.0f, 26);
    }
    SECTION("head reuse between layers (Algorithm 2), post-RoPE keys") {
        check_gradient(tiny_llama(27, ex::cached_keys::post_rope), reuse_set(28), 0.5f, 29);
    }
    SECTION("head reuse between layers, pre-RoPE keys") {
        check_gradient(tiny_llama(30, ex::cached_keys::pre_rope), reuse_set(31), 0.5f, 32);
    }
}

TEST_CASE("a reused group's gradient flows into the slot it reads", "[models][llama_train]") {
    // Same codecs, once with layer 1 reusing layer 0's K head 1, once with layer 1 storing its
    // own (identity) K head 1. The source autoencoder (layer 0, K head 1) gets the reader's
    // gradient only in the first; with the LM loss alone and layer 0's K read through the
    // same weights, the difference is exactly layer 1's contribution.
    const ex::llama_model model = tiny_llama(61, ex::cached_keys::post_rope);
    const io::codec_set reused = reuse_set(62);
    io::codec_set own = reused;
    own.key_reuse.clear();
    own.slots.push_back(io::slot_codec::identity(1, 1, kv_kind::key, 8, latent_storage::f32));
    own.validate();
    ex::llama_kv_trainer<double> a(model, reused, {.l1_weight = 0.0f, .threads = 1});
    ex::llama_kv_trainer<double> b(model, own, {.l1_weight = 0.0f, .threads = 1});
    REQUIRE(a.autoencoders().size() == b.autoencoders().size());
    int source = -1;
    for (int i = 0; i < int(a.autoencoders().size()); ++i)
        if (a.autoencoder_slot(i) == kvcar::slot_owner{0, 1, kv_kind::key}) source = i;
    REQUIRE(source >= 0);
    const window w = random_window(63);
    ex::ae_gradients<double> ga = a.zero_gradient(), gb = b.zero_gradient();
    a.loss(w.inputs, w.targets, &ga);
    b.loss(w.inputs, w.targets, &gb);
    double diff = 0, norm = 0;
    for (std::size_t k = 0; k < ga[std::size_t(source)].enc1_w.size(); ++k) {
        diff += std::fabs(ga[std::size_t(source)].enc1_w[k] - gb[std::size_t(source)].enc1_w[k]);
        norm += std::fabs(gb[std::size_t(source)].enc1_w[k]);
    }
    INFO("source gradient |own| " << norm << ", |reused − own| " << diff);
    CHECK(norm > 0.0);
    CHECK(diff > 1e-3 * norm);
}

TEST_CASE("Llama: threads do not change a bit, and Adam lowers the stage-2 loss",
          "[models][llama_train]") {
    const ex::llama_model model = tiny_llama(41, ex::cached_keys::pre_rope);
    const io::codec_set set = reuse_set(42, latent_storage::f16);
    const window w = random_window(43);
    ex::llama_kv_trainer<float> one(model, set, {.l1_weight = 0.1f, .threads = 1});
    ex::llama_kv_trainer<float> three(model, set, {.l1_weight = 0.1f, .threads = 3});
    ex::ae_gradients<float> g1 = one.zero_gradient(), g3 = three.zero_gradient();
    CHECK(one.loss(w.inputs, w.targets, &g1).total == three.loss(w.inputs, w.targets, &g3).total);
    for (std::size_t a = 0; a < g1.size(); ++a)
        for (int i = 0; i < 8; ++i) CHECK(g1[a].tensor(i) == g3[a].tensor(i));

    // The frozen random model bounds what the codecs can do (uniform CE is ln 40 = 3.69): the
    // check is a clear drop, not a fit.
    kvcar::calib::adam<float> adam = ex::ae_adam(one.autoencoders(), 1e-2f, 1.0f);
    const double first = one.loss(w.inputs, w.targets).total;
    for (int step = 0; step < 40; ++step) {
        ex::ae_gradients<float> g = one.zero_gradient();
        one.loss(w.inputs, w.targets, &g);
        REQUIRE(std::isfinite(ex::ae_step(adam, one.autoencoders(), g)));
    }
    const ex::kv_finetune_loss last = one.loss(w.inputs, w.targets);
    INFO("loss " << first << " -> " << last.total);
    CHECK(last.total < first - 0.5);
    // The trained set (reuse map kept) is what the cache evaluates.
    const io::codec_set trained = one.trained_codec_set();
    CHECK(trained.key_reuse.size() == 1);
    CHECK(inference_ce(model, trained, w.inputs, w.targets) == Approx(last.ce).epsilon(1e-4));
}

TEST_CASE("the Llama trainer refuses bad inputs", "[models][llama_train]") {
    const ex::llama_model model = tiny_llama(51, ex::cached_keys::post_rope);
    KVCAR_REQUIRE_ERROR(
        ex::llama_kv_trainer<float>(model, io::codec_set::identity({2, 4, 8}, 1), {}),
        "llama_kv_trainer: the codec set is made for 2 layers x 4 KV heads");
    KVCAR_REQUIRE_ERROR(ex::llama_kv_trainer<float>(model, per_layer_set(52), {.l1_weight = NAN}),
                        "l1_weight must be finite and not negative");
    ex::llama_kv_trainer<float> trainer(model, per_layer_set(52), {.threads = 1});
    const window w = random_window(53);
    std::vector<int> bad = w.targets;
    bad[2] = vocab;
    KVCAR_REQUIRE_ERROR(trainer.loss(w.inputs, bad), "target 2 has id 40, outside the vocabulary");
    ex::ae_gradients<float> g = trainer.zero_gradient();
    g[1].enc2_b.pop_back();
    KVCAR_REQUIRE_ERROR(trainer.loss(w.inputs, w.targets, &g), "gradient of autoencoder 1's enc2_b");
    const window too_long = random_window(54, 17);
    KVCAR_REQUIRE_ERROR(trainer.loss(too_long.inputs, too_long.targets),
                        "exceed the model's context of 16");
    CHECK(std::isfinite(trainer.loss(w.inputs, w.targets).total));
}
