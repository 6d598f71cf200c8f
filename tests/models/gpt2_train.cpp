// Tests for examples/models/gpt2/gpt2_train.hpp: the stage-2 trainer computes the same loss as the
// GPT-2 reference model reading its K/V through a kvcar cache of the same codec set, its
// gradient with respect to every autoencoder weight matches central finite differences through
// the whole frozen model (double precision, tiny random GPT-2), Adam on it lowers the loss, the
// trained set saves back, and every bad input is refused with the trainer unchanged.
#include "catch.hpp"
#include "train_fixtures.hpp"

#include "examples/models/gpt2/gpt2.hpp"
#include "examples/models/gpt2/gpt2_train.hpp"
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

static_assert(kvcar::kv_codec<kvcar::any_codec>);
static_assert(std::floating_point<decltype(ex::kv_finetune_loss{}.total)>);

/// A GPT-2 with random weights: 2 layers, 2 heads, d_model 16, vocab 50, context 16.
ex::gpt2_model tiny_gpt2(std::uint64_t seed, int vocab = 50, int d_model = 16) {
    ex::gpt2_config c;
    c.vocab_size = vocab;
    c.max_positions = 16;
    c.d_model = d_model;
    c.n_layers = 2;
    c.n_heads = 2;
    c.d_ff = 4 * d_model;
    rng r(seed);
    const std::size_t D = std::size_t(d_model), F = std::size_t(c.d_ff);
    ex::gpt2_weights w;
    w.token_embedding = r.fill(std::size_t(vocab) * D, 0.5);
    w.position_embedding = r.fill(std::size_t(c.max_positions) * D, 0.2);
    const double s = 1.0 / std::sqrt(double(D));
    for (int l = 0; l < c.n_layers; ++l) {
        ex::gpt2_layer L;
        L.ln1_weight = r.around(D, 1.0f, 0.2);
        L.ln1_bias = r.fill(D, 0.1);
        L.qkv_weight = r.fill(3 * D * D, 2.0 * s);  // large enough for peaked attention
        L.qkv_bias = r.fill(3 * D, 0.1);
        L.proj_weight = r.fill(D * D, s);
        L.proj_bias = r.fill(D, 0.1);
        L.ln2_weight = r.around(D, 1.0f, 0.2);
        L.ln2_bias = r.fill(D, 0.1);
        L.fc_weight = r.fill(F * D, s);
        L.fc_bias = r.fill(F, 0.1);
        L.out_weight = r.fill(D * F, 1.0 / std::sqrt(double(F)));
        L.out_bias = r.fill(D, 0.1);
        w.layers.push_back(std::move(L));
    }
    w.final_norm_weight = r.around(D, 1.0f, 0.2);
    w.final_norm_bias = r.fill(D, 0.1);
    return ex::gpt2_model(c, std::move(w), ex::model_options{.threads = 1});
}

/// Every path at once: one group per head; autoencoders, a linear slot, identity slots, and
/// layer 1's K group 0 reusing layer 0's.
io::codec_set mixed_set(std::uint64_t seed, latent_storage ae_storage = latent_storage::f32) {
    rng r(seed);
    io::codec_set set;
    set.geometry = {2, 2, 8};
    set.heads_per_group = 1;
    set.key_reuse = {{1, 0, 0, 0}};
    const auto ae = [&](int l, int g, kv_kind kind) {
        set.slots.push_back(
            io::slot_codec::make_autoencoder(l, g, kind, random_ae(r, 8, 8, 4), ae_storage));
    };
    ae(0, 0, kv_kind::key);
    kvcar::linear_params lp;
    lp.width = 8;
    lp.rank = 3;
    lp.mean = r.fill(8, 0.3);
    lp.basis = r.fill(8 * 3, 0.5);
    set.slots.push_back(io::slot_codec::make_linear(0, 1, kv_kind::key, lp, latent_storage::f32));
    set.slots.push_back(io::slot_codec::identity(0, 0, kv_kind::value, 8, latent_storage::f32));
    set.slots.push_back(io::slot_codec::identity(0, 1, kv_kind::value, 8, latent_storage::f32));
    ae(1, 1, kv_kind::key);
    ae(1, 0, kv_kind::value);
    ae(1, 1, kv_kind::value);
    set.validate();
    return set;
}

template <class Real>
bool same_weights(const std::vector<ex::folded_ae_weights<Real>>& a,
                  const std::vector<ex::folded_ae_weights<Real>>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t k = 0; k < a.size(); ++k)
        for (int i = 0; i < ex::folded_ae_weights<Real>::tensor_count; ++i)
            if (a[k].tensor(i) != b[k].tensor(i)) return false;
    return true;
}

/// Central finite differences on a few entries of every tensor of every autoencoder, against
/// the analytic gradient. Double precision: step 1e-6, truncation and rounding ~1e-10.
void check_gradient(const io::codec_set& set, float l1_weight, std::uint64_t seed) {
    const ex::gpt2_model model = tiny_gpt2(seed);
    ex::gpt2_kv_trainer<double> trainer(model, set, {.l1_weight = l1_weight, .threads = 1});
    const std::vector<int> tokens = random_tokens(seed + 1, 9, 50);
    const std::vector<int> inputs(tokens.begin(), tokens.end() - 1);  // ctx 8
    const std::vector<int> targets(tokens.begin() + 1, tokens.end());
    check_gradient_by_finite_differences(trainer, inputs, targets, seed + 2);
}

}  // namespace

TEST_CASE("folded_ae_weights round-trips a folded autoencoder exactly", "[models][gpt2_train]") {
    rng r(3);
    const kvcar::folded_autoencoder f = random_ae(r, 16, 12, 6);
    const auto w = ex::folded_ae_weights<float>::from_folded(f);
    CHECK(w.parameter_count() == 16 * 12 + 12 + 12 * 6 + 6 + 6 * 12 + 12 + 12 * 16 + 16);
    // [out][in] for the second FCs: enc2_w[j][k] is the folded form's enc2_wt[k][j].
    CHECK(w.enc2_w[2 * 12 + 5] == f.enc2_wt[5 * 6 + 2]);
    CHECK(w.dec2_w[7 * 12 + 3] == f.dec2_wt[3 * 16 + 7]);
    const kvcar::folded_autoencoder back = w.to_folded();
    CHECK(back.enc1_w == f.enc1_w);
    CHECK(back.enc2_wt == f.enc2_wt);
    CHECK(back.dec1_b == f.dec1_b);
    CHECK(back.dec2_wt == f.dec2_wt);
    CHECK(back.slope == f.slope);

    auto bad = w;
    bad.dec2_b[0] = NAN;
    KVCAR_REQUIRE_ERROR(bad.to_folded(), "dec2_b is not finite");
}

TEST_CASE("the trainer's loss is the CE of the model reading K/V through a kvcar cache",
          "[models][gpt2_train]") {
    const ex::gpt2_model model = tiny_gpt2(11);
    const std::vector<int> tokens = random_tokens(12, 9, 50);
    const std::vector<int> inputs(tokens.begin(), tokens.end() - 1);
    const std::vector<int> targets(tokens.begin() + 1, tokens.end());
    SECTION("one autoencoder per layer, f32 latents") {
        const io::codec_set set = per_layer_set(13);
        ex::gpt2_kv_trainer<float> trainer(model, set, {.l1_weight = 0.0f, .threads = 1});
        const ex::kv_finetune_loss l = trainer.loss(inputs, targets);
        CHECK(l.ce == Approx(inference_ce(model, set, inputs, targets)).epsilon(1e-5));
        CHECK(l.total == l.ce);
        CHECK(l.l1 > 0.0);
    }
    SECTION("f16 latents are rounded as the cache rounds them") {
        const io::codec_set set = per_layer_set(13, latent_storage::f16);
        ex::gpt2_kv_trainer<float> trainer(model, set, {.l1_weight = 0.0f, .threads = 1});
        const double want = inference_ce(model, set, inputs, targets);
        CHECK(trainer.loss(inputs, targets).ce == Approx(want).epsilon(1e-4));
        // ... and the int8-quantized latent too (per-record scale, as quantized_codec does).
        const io::codec_set q = per_layer_set(13, latent_storage::int8);
        ex::gpt2_kv_trainer<float> tq(model, q, {.l1_weight = 0.0f, .threads = 1});
        const double want_q = inference_ce(model, q, inputs, targets);
        CHECK(tq.loss(inputs, targets).ce == Approx(want_q).epsilon(1e-4));
        CHECK(std::fabs(want_q - want) > 1e-6);  // the quantization did change the model
    }
    SECTION("per-head slots: autoencoder, linear, identity and reuse") {
        const io::codec_set set = mixed_set(14);
        ex::gpt2_kv_trainer<float> trainer(model, set, {.l1_weight = 0.3f, .threads = 1});
        CHECK(trainer.autoencoders().size() == 4);
        CHECK(trainer.autoencoder_slot(1) == kvcar::slot_owner{1, 0, kv_kind::value});  // slot order
        const ex::kv_finetune_loss l = trainer.loss(inputs, targets);
        CHECK(l.ce == Approx(inference_ce(model, set, inputs, targets)).epsilon(1e-5));
        CHECK(l.total == Approx(l.ce + double(0.3f) * l.l1).epsilon(1e-12));
    }
    SECTION("an all-identity set gives the uncompressed model's loss") {
        const io::codec_set set = io::codec_set::identity({2, 2, 8}, 1, latent_storage::f32);
        ex::gpt2_kv_trainer<float> trainer(model, set, {});
        CHECK(trainer.autoencoders().empty());
        CHECK(trainer.loss(inputs, targets).ce ==
              Approx(inference_ce(model, set, inputs, targets)).epsilon(1e-5));
    }
}

TEST_CASE("the gradient matches finite differences through the frozen GPT-2",
          "[models][gpt2_train]") {
    SECTION("one autoencoder per layer (the paper's layout), L1 term on") {
        check_gradient(per_layer_set(21), 0.5f, 22);
    }
    SECTION("LM loss only") { check_gradient(per_layer_set(23), 0.0f, 24); }
    SECTION("per-head autoencoders beside linear, identity and reused slots") {
        check_gradient(mixed_set(25), 0.5f, 26);
    }
}

TEST_CASE("gradients accumulate with a scale, and threads do not change a bit",
          "[models][gpt2_train]") {
    // Big enough that the LM head and autoencoders are split across threads.
    const ex::gpt2_model model = tiny_gpt2(31, 600, 32);
    io::codec_set set;
    set.geometry = {2, 2, 16};
    set.heads_per_group = 2;
    rng r(32);
    for (int l = 0; l < 2; ++l)
        for (kv_kind kind : {kv_kind::key, kv_kind::value})
            set.slots.push_back(io::slot_codec::make_autoencoder(l, 0, kind, random_ae(r, 32, 64, 16)));
    const std::vector<int> tokens = random_tokens(33, 17, 600);
    const std::vector<int> inputs(tokens.begin(), tokens.end() - 1);
    const std::vector<int> targets(tokens.begin() + 1, tokens.end());

    ex::gpt2_kv_trainer<float> one(model, set, {.l1_weight = 0.2f, .threads = 1});
    ex::gpt2_kv_trainer<float> three(model, set, {.l1_weight = 0.2f, .threads = 3});
    ex::ae_gradients<float> g1 = one.zero_gradient(), g3 = three.zero_gradient();
    const ex::kv_finetune_loss l1 = one.loss(inputs, targets, &g1);
    const ex::kv_finetune_loss l3 = three.loss(inputs, targets, &g3);
    CHECK(l1.total == l3.total);
    CHECK(same_weights(g1, g3));

    // Two half-scaled accumulations equal one full one.
    ex::ae_gradients<float> half = one.zero_gradient();
    one.loss(inputs, targets, &half, 0.5f);
    one.loss(inputs, targets, &half, 0.5f);
    for (std::size_t a = 0; a < g1.size(); ++a)
        for (int i = 0; i < 8; ++i)
            for (std::size_t k = 0; k < g1[a].tensor(i).size(); ++k)
                REQUIRE(half[a].tensor(i)[k] ==
                        Approx(g1[a].tensor(i)[k]).margin(1e-7).epsilon(1e-5));
}

TEST_CASE("Adam on the stage-2 loss lowers it, and the trained set saves and loads",
          "[models][gpt2_train]") {
    const ex::gpt2_model model = tiny_gpt2(41);
    const io::codec_set set = per_layer_set(42, latent_storage::f16);
    ex::gpt2_kv_trainer<float> trainer(model, set, {.l1_weight = 0.1f, .threads = 1});
    const std::vector<int> tokens = random_tokens(43, 9, 50);
    const std::vector<int> inputs(tokens.begin(), tokens.end() - 1);
    const std::vector<int> targets(tokens.begin() + 1, tokens.end());

    kvcar::calib::adam<float> adam = ex::ae_adam(trainer.autoencoders(), 3e-3f, 1.0f);
    const double first = trainer.loss(inputs, targets).total;
    double last = first;
    for (int step = 0; step < 30; ++step) {
        ex::ae_gradients<float> g = trainer.zero_gradient();
        last = trainer.loss(inputs, targets, &g).total;
        const double norm = ex::ae_step(adam, trainer.autoencoders(), g);
        REQUIRE(std::isfinite(norm));
    }
    last = trainer.loss(inputs, targets).total;
    INFO("loss " << first << " -> " << last);
    CHECK(last < 0.8 * first);

    // The trained set is a valid codec set whose inference CE is the trainer's.
    const io::codec_set trained = trainer.trained_codec_set();
    CHECK(trained.slots.size() == set.slots.size());
    CHECK(trained.slots[0].autoencoder.enc1_w != set.slots[0].autoencoder.enc1_w);
    CHECK(trained.slots[0].storage == latent_storage::f16);
    const ex::kv_finetune_loss now = trainer.loss(inputs, targets);
    CHECK(inference_ce(model, trained, inputs, targets) == Approx(now.ce).epsilon(1e-4));
}

TEST_CASE("bad inputs are refused and leave the trainer unchanged", "[models][gpt2_train]") {
    const ex::gpt2_model model = tiny_gpt2(51);
    const io::codec_set set = per_layer_set(52);
    ex::gpt2_kv_trainer<float> trainer(model, set, {.l1_weight = 0.1f, .threads = 1});
    const auto before = trainer.autoencoders();
    const std::vector<int> ok = random_tokens(53, 8, 50);

    SECTION("a codec set made for another geometry") {
        const io::codec_set other = io::codec_set::identity({3, 2, 8}, 1);
        KVCAR_REQUIRE_ERROR(ex::gpt2_kv_trainer<float>(model, other, {}),
                            "the codec set is made for 3 layers");
    }
    SECTION("bad parameters") {
        KVCAR_REQUIRE_ERROR(ex::gpt2_kv_trainer<float>(model, set, {.l1_weight = -1.0f}),
                            "l1_weight must be finite and not negative");
        KVCAR_REQUIRE_ERROR(ex::gpt2_kv_trainer<float>(model, set, {.threads = -2}),
                            "threads must not be negative");
        KVCAR_REQUIRE_ERROR(ex::ae_adam(trainer.autoencoders(), 0.0f), "lr must be positive");
        KVCAR_REQUIRE_ERROR(ex::ae_adam(trainer.autoencoders(), 1e-3f, -1.0f),
                            "clip_norm must be finite and not negative");
    }
    SECTION("bad windows") {
        std::vector<int> bad = ok;
        bad[3] = 50;
        KVCAR_REQUIRE_ERROR(trainer.loss(bad, ok), "token 3 has id 50, outside the vocabulary");
        KVCAR_REQUIRE_ERROR(trainer.loss(ok, bad), "target 3 has id 50, outside the vocabulary");
        KVCAR_REQUIRE_ERROR(trainer.loss(ok, std::vector<int>(ok.begin(), ok.end() - 1)),
                            "7 targets for 8 inputs");
        KVCAR_REQUIRE_ERROR(trainer.loss(std::vector<int>{}, std::vector<int>{}), "empty");
        const std::vector<int> long_window = random_tokens(54, 17, 50);
        KVCAR_REQUIRE_ERROR(trainer.loss(long_window, long_window),
                            "exceed the model's context of 16");
    }
    SECTION("a misshapen gradient") {
        ex::ae_gradients<float> g = trainer.zero_gradient();
        g.pop_back();
        KVCAR_REQUIRE_ERROR(trainer.loss(ok, ok, &g), "the gradient has 3 autoencoders");
        g = trainer.zero_gradient();
        g[2].dec1_w.pop_back();
        KVCAR_REQUIRE_ERROR(trainer.loss(ok, ok, &g), "gradient of autoencoder 2's dec1_w");
    }
    SECTION("a diverged autoencoder cannot be saved") {
        trainer.autoencoders()[1].enc1_b[0] = INFINITY;
        KVCAR_REQUIRE_ERROR(trainer.trained_codec_set(), "enc1_b is not finite");
        trainer.autoencoders() = before;
    }
    CHECK(same_weights(trainer.autoencoders(), before));
    // And it still works after the refusals.
    CHECK(std::isfinite(trainer.loss(ok, ok).total));
}
