// Tests for kvcar/calib/autoencoder_training.hpp: the hand-written backward pass against finite
// differences, the PCA initialisation, learning a nonlinear manifold better than PCA, bit-exact
// determinism across thread counts, early stopping, and parameter validation.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <kvcar/calib/autoencoder_training.hpp>
#include <kvcar/calib/pca.hpp>
#include <kvcar/codec/autoencoder.hpp>
#include <kvcar/codec/linear.hpp>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"

using namespace kvcar;
using namespace kvcar::calib;

static_assert(
    std::is_same_v<decltype(autoencoder_batch_loss<double>(
                       std::declval<const autoencoder_weights<double>&>(), nullptr, 0, 1.0, 1.0)),
                   double>);

namespace {

using idx = std::size_t;

/// Points on a smooth 2-dimensional manifold curved through `width` dimensions:
/// x = A tanh(B u) + c, u ~ N(0, I₂), B: 8×2, A: width×8. Linear in no 2-d subspace.
struct manifold {
    int width;
    std::vector<double> a, b, c;
    manifold(int w, std::uint32_t seed) : width(w) {
        std::mt19937 rng(seed);
        std::normal_distribution<double> g(0.0, 1.0);
        b.resize(16);
        for (double& v : b) v = 1.5 * g(rng);
        a.resize(idx(w) * 8);
        for (double& v : a) v = g(rng) / std::sqrt(8.0);
        c.resize(idx(w));
        for (double& v : c) v = 0.5 * g(rng);
    }
    std::vector<float> sample(idx n, std::uint32_t seed, double noise = 0.0) const {
        std::mt19937 rng(seed);
        std::normal_distribution<double> g(0.0, 1.0);
        std::vector<float> rows(n * idx(width));
        for (idx r = 0; r < n; ++r) {
            const double u0 = g(rng), u1 = g(rng);
            double t[8];
            for (int k = 0; k < 8; ++k)
                t[k] = std::tanh(b[idx(2 * k)] * u0 + b[idx(2 * k + 1)] * u1);
            for (int i = 0; i < width; ++i) {
                double x = c[idx(i)];
                for (int k = 0; k < 8; ++k) x += a[idx(i * 8 + k)] * t[k];
                rows[r * idx(width) + idx(i)] = float(x + noise * g(rng));
            }
        }
        return rows;
    }
};

/// Mean squared error per element of a codec's (unquantized) reconstruction.
template <class Codec>
double codec_mse(const Codec& c, const std::vector<float>& rows) {
    const idx D = idx(c.group_width());
    const idx n = rows.size() / D;
    std::vector<float> z(idx(c.latent_width())), y(D);
    double s = 0;
    for (idx r = 0; r < n; ++r) {
        c.to_latent(rows.data() + r * D, z.data());
        c.from_latent(z.data(), y.data());
        for (idx i = 0; i < D; ++i) {
            const double e = double(y[i]) - double(rows[r * D + i]);
            s += e * e;
        }
    }
    return s / double(n * D);
}

double variance_per_element(const std::vector<float>& rows, int width) {
    const idx D = idx(width), n = rows.size() / D;
    double total = 0;
    for (idx i = 0; i < D; ++i) {
        double m = 0, q = 0;
        for (idx r = 0; r < n; ++r) m += rows[r * D + i];
        m /= double(n);
        for (idx r = 0; r < n; ++r) q += (rows[r * D + i] - m) * (rows[r * D + i] - m);
        total += q / double(n);
    }
    return total / double(D);
}

bool same_params(const autoencoder_params& a, const autoencoder_params& b) {
    const std::vector<float> autoencoder_params::*fields[] = {
        &autoencoder_params::enc1_w,       &autoencoder_params::enc1_b,
        &autoencoder_params::enc_bn_gamma, &autoencoder_params::enc_bn_beta,
        &autoencoder_params::enc_bn_mean,  &autoencoder_params::enc_bn_var,
        &autoencoder_params::enc2_w,       &autoencoder_params::enc2_b,
        &autoencoder_params::dec1_w,       &autoencoder_params::dec1_b,
        &autoencoder_params::dec_bn_gamma, &autoencoder_params::dec_bn_beta,
        &autoencoder_params::dec_bn_mean,  &autoencoder_params::dec_bn_var,
        &autoencoder_params::dec2_w,       &autoencoder_params::dec2_b};
    for (auto f : fields) {
        const std::vector<float>& x = a.*f;
        const std::vector<float>& y = b.*f;
        if (x.size() != y.size() || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)))
            return false;
    }
    return true;
}

}  // namespace

TEST_CASE("the backward pass matches finite differences (double precision)",
          "[calib][ae_training]") {
    const int D = 5, h = 6, d = 3;
    const idx B = 7;
    std::mt19937 rng(11);
    std::normal_distribution<double> g(0.0, 1.0);
    auto w = autoencoder_weights<double>::zeros(D, h, d);
    w.slope = 0.1;
    for (int t = 0; t < w.trainable_count; ++t)
        for (double& v : w.trainable(t)) v = 0.6 * g(rng);
    for (double& v : w.enc_bn_gamma) v = 1.0 + 0.3 * g(rng);
    for (double& v : w.dec_bn_gamma) v = 1.0 + 0.3 * g(rng);
    std::vector<double> x(B * D);
    for (double& v : x) v = g(rng);
    const double l1 = 0.7, mse = 1.3;

    auto grad = autoencoder_weights<double>::zeros(D, h, d);
    const double loss = autoencoder_batch_loss(w, x.data(), B, l1, mse, &grad);
    REQUIRE(std::isfinite(loss));
    REQUIRE(loss == autoencoder_batch_loss(w, x.data(), B, l1, mse));  // gradient changes nothing

    const double eps = 1e-6;
    int checked = 0;
    for (int t = 0; t < w.trainable_count; ++t) {
        for (idx k = 0; k < w.trainable(t).size(); ++k) {
            auto plus = w, minus = w;
            plus.trainable(t)[k] += eps;
            minus.trainable(t)[k] -= eps;
            const double fd = (autoencoder_batch_loss(plus, x.data(), B, l1, mse) -
                               autoencoder_batch_loss(minus, x.data(), B, l1, mse)) /
                              (2 * eps);
            const double analytic = grad.trainable(t)[k];
            INFO(autoencoder_weights<double>::trainable_names[t] << "[" << k << "]: analytic "
                                                                 << analytic << ", fd " << fd);
            REQUIRE(std::fabs(analytic - fd) <= 1e-7 + 1e-5 * std::fabs(fd));
            ++checked;
        }
    }
    REQUIRE(checked == 2 * h * D + 2 * d * h + 6 * h + d + D);  // every parameter
    // BatchNorm removes the FC bias before it: its gradient is zero (to rounding).
    for (double v : grad.enc1_b) REQUIRE(std::fabs(v) < 1e-12);
    for (double v : grad.dec1_b) REQUIRE(std::fabs(v) < 1e-12);
}

TEST_CASE("batch loss and gradient are bit-identical with 1 and 2 threads",
          "[calib][ae_training]") {
    const int D = 64, h = 128, d = 16;
    const idx B = 256;  // big enough that the kernels really split across threads
    std::mt19937 rng(12);
    std::normal_distribution<float> g(0.0f, 1.0f);
    auto w = autoencoder_weights<float>::zeros(D, h, d);
    for (int t = 0; t < w.trainable_count; ++t)
        for (float& v : w.trainable(t)) v = 0.1f * g(rng);
    std::vector<float> x(B * D);
    for (float& v : x) v = g(rng);
    auto g1 = autoencoder_weights<float>::zeros(D, h, d), g2 = g1;
    const float l1 = autoencoder_batch_loss(w, x.data(), B, 1.0f, 1.0f, &g1, 1);
    const float l2 = autoencoder_batch_loss(w, x.data(), B, 1.0f, 1.0f, &g2, 2);
    REQUIRE(std::memcmp(&l1, &l2, sizeof l1) == 0);
    for (int t = 0; t < w.trainable_count; ++t)
        REQUIRE(std::memcmp(g1.trainable(t).data(), g2.trainable(t).data(),
                            g1.trainable(t).size() * sizeof(float)) == 0);
}

TEST_CASE("PCA initialisation starts at the PCA codec", "[calib][ae_training]") {
    const manifold m(12, 21);
    const std::vector<float> rows = m.sample(600, 22);
    autoencoder_training_params p;
    p.hidden = 10;  // 2·latent PCA units plus 2 extra ones
    p.latent = 4;
    p.max_epochs = 0;
    p.holdout = 0.0f;
    const auto r = train_autoencoder(rows.data(), 600, 12, p);
    REQUIRE(r.epochs == 0);
    REQUIRE(r.best_epoch == 0);
    REQUIRE(r.holdout_history.empty());
    REQUIRE(std::isnan(r.holdout_loss));

    const pca_result pca = fit_pca(rows.data(), 600, 12, pca_params{4, 0, 1});
    const double pca_mse = codec_mse(pca.params.codec<float>(), rows);
    const folded_autoencoder f = fold(r.params);
    const auto ae = f.codec<float>();
    REQUIRE(codec_mse(ae, rows) == Approx(pca_mse).epsilon(1e-3));
    // Not just the same error: the same reconstructions, row by row.
    std::vector<float> z(4), y_ae(12), y_pca(12);
    const auto lin = pca.params.codec<float>();
    for (idx r0 = 0; r0 < 600; r0 += 37) {
        ae.to_latent(rows.data() + r0 * 12, z.data());
        ae.from_latent(z.data(), y_ae.data());
        lin.to_latent(rows.data() + r0 * 12, z.data());
        lin.from_latent(z.data(), y_pca.data());
        for (idx i = 0; i < 12; ++i) REQUIRE(y_ae[i] == Approx(y_pca[i]).margin(1e-3));
    }
    // The inference-mode evaluation agrees with the folded codec.
    const autoencoder_loss e = evaluate_autoencoder(r.params, rows.data(), 600, 0.0f, 1.0f);
    REQUIRE(e.mse == Approx(codec_mse(ae, rows)).epsilon(1e-4));
    REQUIRE(e.loss == e.mse);
    REQUIRE(r.train_loss == Approx(e.l1 + e.mse).epsilon(1e-6));
}

TEST_CASE("training learns a curved manifold better than PCA at the same latent width",
          "[calib][ae_training]") {
    const int D = 16;
    const manifold m(D, 31);
    const std::vector<float> train = m.sample(4000, 32);
    const std::vector<float> hold = m.sample(1000, 33);
    autoencoder_training_params p;
    p.hidden = 48;
    p.latent = 2;
    p.slope = 0.05f;
    p.lr = 3e-3f;
    p.batch = 64;
    p.max_epochs = 40;
    p.patience = 8;
    p.seed = 7;
    p.threads = 2;
    const auto r = train_autoencoder(train.data(), 4000, D, hold.data(), 1000, p);

    const pca_result pca = fit_pca(train.data(), 4000, D, pca_params{2, 0, 1});
    const double pca_mse = codec_mse(pca.params.codec<float>(), hold);
    const double var = variance_per_element(hold, D);
    INFO("variance " << var << ", PCA holdout MSE " << pca_mse << ", AE holdout MSE "
                     << r.holdout_mse << " after " << r.epochs << " epochs (best " << r.best_epoch
                     << ")");
    REQUIRE(pca_mse > 0.03 * var);           // the manifold really is curved
    REQUIRE(r.holdout_mse < 0.2 * pca_mse);  // the autoencoder captures the curvature
    REQUIRE(r.holdout_mse < 0.005 * var);    // and reconstructs well in absolute terms
    REQUIRE(r.holdout_loss <= r.holdout_history.front());  // never worse than its PCA start
    REQUIRE(r.best_epoch > 0);
    // The folded codec (what a cache runs) reproduces the reported holdout error.
    REQUIRE(codec_mse(fold(r.params).codec<float>(), hold) == Approx(r.holdout_mse).epsilon(1e-3));
}

TEST_CASE("training is deterministic under a seed, whatever the thread count",
          "[calib][ae_training]") {
    const int D = 64;
    const manifold m(D, 41);
    const std::vector<float> rows = m.sample(1200, 42, 0.05);
    autoencoder_training_params p;
    p.hidden = 128;
    p.latent = 16;
    p.batch = 256;
    p.max_epochs = 3;
    p.seed = 99;
    p.threads = 1;
    const auto a = train_autoencoder(rows.data(), 1200, D, p);
    p.threads = 2;
    const auto b = train_autoencoder(rows.data(), 1200, D, p);
    REQUIRE(same_params(a.params, b.params));
    REQUIRE(a.holdout_history == b.holdout_history);
    REQUIRE(a.train_loss == b.train_loss);
    REQUIRE(a.epochs == 3);
    p.seed = 100;
    const auto c = train_autoencoder(rows.data(), 1200, D, p);
    REQUIRE(!same_params(a.params, c.params));
    // Random initialisation is seeded too.
    p.init_from_pca = false;
    p.threads = 1;
    const auto d1 = train_autoencoder(rows.data(), 1200, D, p);
    p.threads = 2;
    const auto d2 = train_autoencoder(rows.data(), 1200, D, p);
    REQUIRE(same_params(d1.params, d2.params));
    REQUIRE(d1.holdout_history.back() < d1.holdout_history.front());  // it learns
}

TEST_CASE("early stopping returns the best epoch's weights", "[calib][ae_training]") {
    // Few noisy training rows and a large step: the holdout loss turns up soon.
    const int D = 16;
    const manifold m(D, 51);
    const std::vector<float> train = m.sample(48, 52, 0.3);
    const std::vector<float> hold = m.sample(400, 53, 0.3);
    autoencoder_training_params p;
    p.hidden = 64;
    p.latent = 4;
    p.lr = 2e-2f;
    p.batch = 16;
    p.max_epochs = 300;
    p.patience = 3;
    p.seed = 5;
    p.init_from_pca = false;
    const auto r = train_autoencoder(train.data(), 48, D, hold.data(), 400, p);
    INFO("epochs " << r.epochs << ", best " << r.best_epoch);
    REQUIRE(r.epochs < p.max_epochs);  // it did stop early
    REQUIRE(r.epochs == r.best_epoch + p.patience);
    REQUIRE(r.holdout_history.size() == idx(r.epochs) + 1);
    const double best = *std::min_element(r.holdout_history.begin(), r.holdout_history.end());
    REQUIRE(r.holdout_loss == best);
    REQUIRE(r.holdout_history[idx(r.best_epoch)] == best);
    for (idx e = idx(r.best_epoch) + 1; e < r.holdout_history.size(); ++e)
        REQUIRE(r.holdout_history[e] >= best);
    // The returned weights are the best epoch's, not the last one's: evaluating them gives the
    // best holdout loss exactly (same code path).
    const autoencoder_loss e = evaluate_autoencoder(r.params, hold.data(), 400);
    REQUIRE(e.loss == r.holdout_loss);
    REQUIRE(e.mse == r.holdout_mse);
    REQUIRE(e.loss < r.holdout_history.back());
}

TEST_CASE("without a holdout, training runs every epoch and keeps the last weights",
          "[calib][ae_training]") {
    const manifold m(8, 61);
    const std::vector<float> rows = m.sample(300, 62);
    autoencoder_training_params p;
    p.hidden = 8;
    p.latent = 2;
    p.max_epochs = 4;
    p.holdout = 0.0f;
    const auto r = train_autoencoder(rows.data(), 300, 8, p);
    REQUIRE(r.epochs == 4);
    REQUIRE(r.best_epoch == 4);
    REQUIRE(r.holdout_history.empty());
    REQUIRE(std::isnan(r.holdout_mse));
    REQUIRE(std::isfinite(r.train_loss));
    REQUIRE_NOTHROW(fold(r.params));
}

TEST_CASE("training rejects bad parameters and data", "[calib][ae_training]") {
    const manifold m(8, 71);
    std::vector<float> rows = m.sample(100, 72);
    autoencoder_training_params good;
    good.hidden = 8;
    good.latent = 2;
    good.max_epochs = 1;
    REQUIRE_NOTHROW(train_autoencoder(rows.data(), 100, 8, good));

    auto bad = good;
    bad.hidden = 0;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad), "hidden must be positive");
    bad = good;
    bad.latent = 9;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad),
                        "latent 9 must be in [1, width 8]");
    bad = good;
    bad.hidden = 3;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad),
                        "init_from_pca needs hidden >= 2 * latent");
    bad.init_from_pca = false;
    REQUIRE_NOTHROW(train_autoencoder(rows.data(), 100, 8, bad));
    bad = good;
    bad.batch = 1;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad), "batch must be at least 2");
    bad = good;
    bad.holdout = 1.0f;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad), "holdout must be in [0, 1)");
    bad = good;
    bad.lr = 0.0f;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad), "lr must be positive");
    bad = good;
    bad.patience = 0;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad), "patience must be at least 1");
    bad = good;
    bad.l1_weight = bad.mse_weight = 0.0f;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad), "not both 0");
    bad = good;
    bad.slope = -1.0f;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad),
                        "slope must be finite and not -1");
    bad = good;
    bad.threads = -1;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, bad),
                        "threads must not be negative");

    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 0, good), "width must be positive");
    KVCAR_REQUIRE_ERROR(train_autoencoder(nullptr, 100, 8, good), "rows is null");
    bad = good;
    bad.holdout = 0.0f;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 1, 8, bad),
                        "needs at least 2 training rows");
    bad = good;
    bad.holdout = 0.1f;
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 4, 8, bad), "is no row");
    rows[8 * 37 + 3] = std::numeric_limits<float>::quiet_NaN();
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 100, 8, good), "row 37 is not finite");
    KVCAR_REQUIRE_ERROR(train_autoencoder(rows.data(), 30, 8, rows.data(), 100, good),
                        "row 37 is not finite");

    auto w = autoencoder_weights<double>::zeros(4, 4, 2);
    std::vector<double> x(4 * 4, 1.0);
    KVCAR_REQUIRE_ERROR(autoencoder_batch_loss(w, x.data(), 1, 1.0, 1.0), "at least 2 rows");
    auto g = autoencoder_weights<double>::zeros(4, 5, 2);
    KVCAR_REQUIRE_ERROR(autoencoder_batch_loss(w, x.data(), 4, 1.0, 1.0, &g), "differ");
    g = autoencoder_weights<double>::zeros(4, 4, 2);
    g.dec2_w.pop_back();
    KVCAR_REQUIRE_ERROR(autoencoder_batch_loss(w, x.data(), 4, 1.0, 1.0, &g),
                        "dec2_w has 15 values, expected 16");
    w.enc_bn_var.clear();
    KVCAR_REQUIRE_ERROR(autoencoder_batch_loss(w, x.data(), 4, 1.0, 1.0), "running statistic");
}
