// kvcar/calib/autoencoder_training.hpp — trains the KV-CAR paper's autoencoder on K (or V) rows
// (host only): stage 1 of the paper's Algorithm 1 with a reconstruction loss.
//
//   encoder: x (D) → FC(D→h) → BatchNorm → LeakyReLU → FC(h→d) → z
//   decoder: z (d) → FC(d→h) → BatchNorm → LeakyReLU → FC(h→D) → x̂
//   loss     = l1_weight · mean |x̂ − x| + mse_weight · mean (x̂ − x)²   (mean over rows × D)
//
// Forward and backward are written out by hand (no autograd; autoencoder_kernels.hpp): FC,
// BatchNorm in training mode (batch statistics; running statistics updated with momentum 0.1 and
// used at inference, as in PyTorch), LeakyReLU. Adam (adam.hpp) updates the weights;
// mini-batches are reshuffled every epoch by a seeded generator; a holdout split drives early
// stopping, and the best epoch's weights are returned.
//
// Reproducibility: every number the training computes is a fixed sequence of float operations
// that does not depend on the thread count. Work is split across threads only along axes whose
// elements are independent (rows of a batch for activations; output units for weight gradients
// and BatchNorm statistics), and each sum runs over the batch in row order inside one thread. So
// the same seed gives bit-identical weights with 1, 2 or 16 threads, for one build (other
// compiler flags, e.g. FMA contraction with -march=native, round differently). (The random streams
// use std::mt19937_64, whose output the C++ standard fixes, and kvcar's own integer and normal
// sampling, so they also agree across standard libraries.)
//
// PCA initialisation: with hidden >= 2·latent the network can represent the PCA codec exactly,
// because (lrelu(a) − lrelu(−a)) / (1 + s) = a for any slope s ≠ −1. Hidden units j and j + d of
// the encoder compute ±p_jᵀ(x − μ) (p_j the j-th principal direction), BatchNorm starts as the
// identity on the data (γ = √(var + eps), β = mean, running stats = the data's), and the second
// FC combines the pair; the decoder mirrors it. Training therefore starts at the PCA codec, the
// MSE-optimal linear one, and since epoch 0 (the initial weights) is a candidate for early
// stopping, the returned weights are never worse than PCA on the holdout loss.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/calib/adam.hpp"
#include "kvcar/calib/autoencoder_kernels.hpp"
#include "kvcar/calib/autoencoder_weights.hpp"
#include "kvcar/calib/pca.hpp"
#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/parallel.hpp"

namespace kvcar::calib {

/// What to train and how. `hidden` and `latent` are required; the rest have working defaults.
struct autoencoder_training_params {
    int hidden = 0;             ///< h: width of each half's hidden layer (> 0)
    int latent = 0;             ///< d: the stored latent width, 1..min(D, max_latent_width)
    float slope = 0.01f;        ///< LeakyReLU negative slope (finite, not -1)
    float lr = 1e-3f;           ///< Adam step size (β1 0.9, β2 0.999, eps 1e-8)
    /// Rows per mini-batch, at least 2 for BatchNorm (the last batches of an epoch share the
    /// remainder).
    int batch = 256;
    int max_epochs = 50;        ///< upper bound on passes over the training rows (>= 0)
    float l1_weight = 1.0f;     ///< weight of the mean |x̂ − x| term of the loss (>= 0)
    float mse_weight = 1.0f;    ///< weight of the mean (x̂ − x)² term (>= 0; not both 0)
    float holdout = 0.1f;       ///< fraction of rows held out for early stopping, in [0, 1)
    int patience = 5;           ///< stop after this many epochs without a better holdout loss
    std::uint64_t seed = 0;     ///< seeds the holdout split, the shuffling and the initial weights
    int threads = 0;            ///< worker threads; 0: std::thread::hardware_concurrency()
    bool init_from_pca = true;  ///< start at the PCA codec (needs hidden >= 2 * latent)
    /// Called after every epoch with (epoch, max_epochs, holdout loss or NaN without a holdout),
    /// from the calling thread: a long training run can report progress. Empty: not called.
    std::function<void(int, int, double)> on_epoch;

    /// Throws kvcar::error naming the first bad field; `width` is D.
    void validate(int width) const {
        const std::string me = "autoencoder_training_params: ";
        require(width > 0, me + "width must be positive (got " + std::to_string(width) + ")");
        require(hidden > 0, me + "hidden must be positive (got " + std::to_string(hidden) + ")");
        require(latent > 0 && latent <= width, me + "latent " + std::to_string(latent) +
                                                   " must be in [1, width " +
                                                   std::to_string(width) + "]");
        require(latent <= max_latent_width, me + "latent " + std::to_string(latent) +
                                                " exceeds max_latent_width " +
                                                std::to_string(max_latent_width));
        require(std::isfinite(slope) && slope != -1.0f, me + "slope must be finite and not -1");
        require(std::isfinite(lr) && lr > 0.0f, me + "lr must be positive");
        require(batch >= 2,
                me + "batch must be at least 2 (BatchNorm needs batch statistics), got " +
                    std::to_string(batch));
        require(max_epochs >= 0, me + "max_epochs must not be negative");
        require(std::isfinite(l1_weight) && std::isfinite(mse_weight) && l1_weight >= 0.0f &&
                    mse_weight >= 0.0f && (l1_weight > 0.0f || mse_weight > 0.0f),
                me + "l1_weight and mse_weight must be finite, not negative, and not both 0");
        require(holdout >= 0.0f && holdout < 1.0f,
                me + "holdout must be in [0, 1) (got " + std::to_string(holdout) + ")");
        require(patience >= 1, me + "patience must be at least 1");
        require(threads >= 0, me + "threads must not be negative");
        require(!init_from_pca || hidden >= 2 * latent,
                me + "init_from_pca needs hidden >= 2 * latent (got hidden " +
                    std::to_string(hidden) + ", latent " + std::to_string(latent) + ")");
    }
};

/// What training produced: the best weights and how they were chosen.
struct autoencoder_training_result {
    autoencoder_params params;  ///< the best epoch's weights, BatchNorm unfolded (fold() them)
    double train_loss = 0;      ///< loss of `params` on the training rows, inference mode
    double holdout_loss = 0;    ///< loss of `params` on the holdout rows (NaN without a holdout)
    double holdout_mse = 0;     ///< mean squared error per element on the holdout rows (or NaN)
    int epochs = 0;             ///< epochs run
    int best_epoch = 0;         ///< the epoch `params` come from; 0 = the initial weights
    bool diverged = false;      ///< a batch loss became non-finite; training stopped there
    /// Holdout loss before training ([0]) and after each epoch ([e]); empty without a holdout.
    std::vector<double> holdout_history;
};


namespace detail {

/// Seeded randomness that is the same on every platform: std::mt19937_64's sequence is fixed by
/// the standard, its distributions are not, so sampling is done here.
class portable_rng {
public:
    explicit portable_rng(std::uint64_t seed) : engine_(seed) {}
    std::uint64_t next() { return engine_(); }
    /// Uniform in [0, n), unbiased (rejection of the short last interval).
    std::uint64_t below(std::uint64_t n) {
        const std::uint64_t limit = (0 - n) % n;  // 2^64 mod n: values below it are rejected
        for (;;) {
            const std::uint64_t r = engine_();
            if (r >= limit) return r % n;
        }
    }
    /// Uniform in [0, 1) with 53 random bits.
    double uniform() { return double(engine_() >> 11) * 0x1.0p-53; }
    /// Standard normal (Box–Muller; one of the pair is discarded for simplicity).
    double normal() {
        const double u1 = 1.0 - uniform();  // (0, 1]
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
    template <class T>
    void shuffle(std::vector<T>& v) {
        for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
    }

private:
    std::mt19937_64 engine_;
};

/// Per-unit mean and (biased) variance of pre-activations over many chunks, in double.
struct unit_moments {
    std::vector<double> sum, sum_sq;
    std::size_t count = 0;
    explicit unit_moments(std::size_t h) : sum(h, 0.0), sum_sq(h, 0.0) {}
    void add(const std::vector<float>& a, std::size_t B) {
        const std::size_t h = sum.size();
        for (std::size_t r = 0; r < B; ++r)
            for (std::size_t k = 0; k < h; ++k) {
                const double v = a[r * h + k];
                sum[k] += v;
                sum_sq[k] += v * v;
            }
        count += B;
    }
    double mean(std::size_t k) const { return sum[k] / double(count); }
    double var(std::size_t k) const {
        const double m = mean(k);
        return std::max(sum_sq[k] / double(count) - m * m, 0.0);
    }
};

/// Sets one BatchNorm's running statistics to the data's, and for units marked `identity`
/// makes the layer the identity on the data: γ = √(var + eps), β = mean.
inline void calibrate_batchnorm(const unit_moments& m, float eps, const std::vector<char>& identity,
                                std::vector<float>& gamma, std::vector<float>& beta,
                                std::vector<float>& mean, std::vector<float>& var) {
    for (std::size_t k = 0; k < gamma.size(); ++k) {
        mean[k] = float(m.mean(k));
        var[k] = float(m.var(k));
        if (identity[k]) {
            gamma[k] = float(std::sqrt(double(var[k]) + double(eps)));
            beta[k] = mean[k];
        }
    }
}

/// Initial weights: the PCA construction (see the file comment) or PyTorch's default FC init
/// (uniform ±1/√fan_in) with the output bias at the data mean. Either way the BatchNorm running
/// statistics are measured on `sample` (training rows), so epoch 0 is evaluated fairly.
inline autoencoder_weights<float> initial_weights(const std::vector<float>& sample,
                                                  std::size_t n_sample, int width,
                                                  const autoencoder_training_params& p,
                                                  portable_rng& rng, int threads) {
    const std::size_t D = std::size_t(width), h = std::size_t(p.hidden);
    const std::size_t d = std::size_t(p.latent);
    auto w = autoencoder_weights<float>::zeros(width, p.hidden, p.latent);
    w.slope = p.slope;
    const auto uniform_fill = [&](std::vector<float>& v, std::size_t begin, std::size_t end,
                                  std::size_t stride, std::size_t count, std::size_t fan_in) {
        // Rows [begin, end) of a matrix with `stride` columns, `count` of them filled.
        const double bound = 1.0 / std::sqrt(double(fan_in));
        for (std::size_t r = begin; r < end; ++r)
            for (std::size_t c = 0; c < count; ++c)
                v[r * stride + c] = float((2.0 * rng.uniform() - 1.0) * bound);
    };
    std::vector<char> identity_units(h, 0);
    if (p.init_from_pca) {
        const pca_result pca = fit_pca(sample.data(), n_sample, width, pca_params{p.latent, 0, 1});
        const linear_params& lp = pca.params;
        const float s1 = 1.0f + p.slope;
        for (std::size_t j = 0; j < d; ++j) {
            double mu_proj = 0;
            for (std::size_t i = 0; i < D; ++i) {
                const float pij = lp.basis[i * d + j];
                w.enc1_w[j * D + i] = pij;         // unit j:     +p_jᵀ x
                w.enc1_w[(j + d) * D + i] = -pij;  // unit j + d: −p_jᵀ x
                w.dec2_w[i * h + j] = pij / s1;    // x̂ = μ + Σ_j p_j (a_j⁺ − a_j⁻)/(1+s)
                w.dec2_w[i * h + j + d] = -pij / s1;
                mu_proj += double(pij) * double(lp.mean[i]);
            }
            w.enc1_b[j] = float(-mu_proj);
            w.enc1_b[j + d] = float(mu_proj);
            w.enc2_w[j * h + j] = 1.0f / s1;  // z_j = (lrelu(a) − lrelu(−a)) / (1 + s) = a
            w.enc2_w[j * h + j + d] = -1.0f / s1;
            w.dec1_w[j * d + j] = 1.0f;
            w.dec1_w[(j + d) * d + j] = -1.0f;
            identity_units[j] = identity_units[j + d] = 1;
        }
        for (std::size_t i = 0; i < D; ++i) w.dec2_b[i] = lp.mean[i];
        // Extra hidden units: random incoming weights, zero outgoing ones, so the network starts
        // as exactly the PCA codec and the outgoing weights get gradient from the first step.
        uniform_fill(w.enc1_w, 2 * d, h, D, D, D);
        uniform_fill(w.dec1_w, 2 * d, h, d, d, d);
    } else {
        uniform_fill(w.enc1_w, 0, h, D, D, D);
        uniform_fill(w.enc1_b, 0, h, 1, 1, D);
        uniform_fill(w.enc2_w, 0, d, h, h, h);
        uniform_fill(w.enc2_b, 0, d, 1, 1, h);
        uniform_fill(w.dec1_w, 0, h, d, d, d);
        uniform_fill(w.dec1_b, 0, h, 1, 1, d);
        uniform_fill(w.dec2_w, 0, D, h, h, h);
        std::vector<double> mean(D, 0.0);
        for (std::size_t r = 0; r < n_sample; ++r)
            for (std::size_t i = 0; i < D; ++i) mean[i] += sample[r * D + i];
        for (std::size_t i = 0; i < D; ++i) w.dec2_b[i] = float(mean[i] / double(n_sample));
    }

    // Running statistics (and identity BatchNorm for the PCA units) measured on the sample:
    // the encoder's first, then, with it final, the decoder's.
    autoencoder_workspace<float> ws(width, p.hidden, p.latent, threads);
    const std::size_t chunk = 512;
    for (int stage = 1; stage <= 2; ++stage) {
        ws.prepare(w);
        unit_moments moments(h);
        for (std::size_t begin = 0; begin < n_sample; begin += chunk) {
            const std::size_t B = std::min(chunk, n_sample - begin);
            ws.eval_forward(w, sample.data() + begin * D, B, stage);
            moments.add(stage == 1 ? ws.a1() : ws.a2(), B);
        }
        if (stage == 1)
            calibrate_batchnorm(moments, w.bn_eps, identity_units, w.enc_bn_gamma, w.enc_bn_beta,
                                w.enc_bn_mean, w.enc_bn_var);
        else
            calibrate_batchnorm(moments, w.bn_eps, identity_units, w.dec_bn_gamma, w.dec_bn_beta,
                                w.dec_bn_mean, w.dec_bn_var);
    }
    return w;
}

inline void require_rows(const char* who, const float* rows, std::size_t n, int width) {
    require(rows != nullptr || n == 0, std::string(who) + ": rows is null");
    const std::size_t count = n * std::size_t(width > 0 ? width : 0);
    for (std::size_t k = 0; k < count; ++k)
        if (!std::isfinite(rows[k]))
            throw error("kvcar: " + std::string(who) + ": row " +
                        std::to_string(k / std::size_t(width)) + " is not finite");
}

inline autoencoder_training_result train(const float* rows, std::size_t n, int width,
                                         const float* holdout_rows, std::size_t n_holdout,
                                         bool explicit_holdout,
                                         const autoencoder_training_params& p) {
    const char* me = "train_autoencoder";
    p.validate(width);
    require_rows(me, rows, n, width);
    if (explicit_holdout) require_rows(me, holdout_rows, n_holdout, width);
    const int threads = resolve_threads(p.threads);
    const std::size_t D = std::size_t(width);
    portable_rng rng(p.seed);

    // The split: a seeded permutation, the first n_hold rows held out.
    std::vector<std::size_t> train_ids, hold_ids;
    if (explicit_holdout) {
        train_ids.resize(n);
        for (std::size_t i = 0; i < n; ++i) train_ids[i] = i;
        hold_ids.resize(n_holdout);
        for (std::size_t i = 0; i < n_holdout; ++i) hold_ids[i] = i;
    } else {
        std::vector<std::size_t> perm(n);
        for (std::size_t i = 0; i < n; ++i) perm[i] = i;
        rng.shuffle(perm);
        const std::size_t n_hold = std::size_t(std::llround(double(p.holdout) * double(n)));
        require(p.holdout == 0.0f || n_hold >= 1,
                std::string(me) + ": holdout " + std::to_string(p.holdout) + " of " +
                    std::to_string(n) + " rows is no row; use more rows or holdout 0");
        hold_ids.assign(perm.begin(), perm.begin() + std::ptrdiff_t(std::min(n_hold, n)));
        train_ids.assign(perm.begin() + std::ptrdiff_t(std::min(n_hold, n)), perm.end());
    }
    require(train_ids.size() >= 2, std::string(me) + ": needs at least 2 training rows (got " +
                                       std::to_string(train_ids.size()) + ")");
    const float* hold_src = explicit_holdout ? holdout_rows : rows;
    const bool has_holdout = !hold_ids.empty();

    // Initialisation from a sample of the training rows (PCA and BatchNorm statistics need no
    // more than a few thousand rows; a copy of all of them could be gigabytes).
    const std::size_t max_sample = 16384;
    const std::size_t n_sample = std::min(max_sample, train_ids.size());
    std::vector<float> sample;
    gather_rows(rows, D, train_ids.data(), n_sample, sample);
    autoencoder_weights<float> w = initial_weights(sample, n_sample, width, p, rng, threads);
    sample = {};

    autoencoder_training_result result;
    const auto holdout_loss = [&](const autoencoder_weights<float>& weights) {
        return evaluate_rows(weights, hold_src, hold_ids.data(), hold_ids.size(), p.l1_weight,
                             p.mse_weight, threads);
    };
    double best_loss = std::numeric_limits<double>::infinity();
    if (has_holdout) {
        best_loss = holdout_loss(w).loss;
        result.holdout_history.push_back(best_loss);
    }
    autoencoder_weights<float> best = w;

    autoencoder_workspace<float> ws(width, p.hidden, p.latent, threads);
    autoencoder_weights<float> grad = autoencoder_weights<float>::zeros(width, p.hidden, p.latent);
    std::vector<std::size_t> sizes;
    for (std::span<const float> t : std::as_const(w).trainable_spans()) sizes.push_back(t.size());
    adam<float> optimizer(std::move(sizes), p.lr);
    std::vector<float> x;
    const std::size_t n_train = train_ids.size();
    const std::size_t n_batches = (n_train + std::size_t(p.batch) - 1) / std::size_t(p.batch);
    for (int epoch = 1; epoch <= p.max_epochs && !result.diverged; ++epoch) {
        rng.shuffle(train_ids);
        // Batches of near-equal size (never a last batch of one row, which BatchNorm can't use).
        std::size_t begin = 0;
        for (std::size_t b = 0; b < n_batches; ++b) {
            const std::size_t B = n_train / n_batches + (b < n_train % n_batches ? 1 : 0);
            gather_rows(rows, D, train_ids.data() + begin, B, x);
            begin += B;
            const float loss = ws.train_step(w, x.data(), B, p.l1_weight, p.mse_weight, &grad);
            if (!std::isfinite(loss)) {
                result.diverged = true;
                break;
            }
            ws.update_running_stats(w, B, 0.1f);
            optimizer.step(w.trainable_spans(), std::as_const(grad).trainable_spans());
        }
        if (result.diverged) break;
        result.epochs = epoch;
        if (!has_holdout) {
            best = w;
            result.best_epoch = epoch;
            if (p.on_epoch) p.on_epoch(epoch, p.max_epochs, std::numeric_limits<double>::quiet_NaN());
            continue;
        }
        const double loss = holdout_loss(w).loss;
        result.holdout_history.push_back(loss);
        if (p.on_epoch) p.on_epoch(epoch, p.max_epochs, loss);
        if (loss < best_loss) {  // NaN never improves
            best_loss = loss;
            best = w;
            result.best_epoch = epoch;
        } else if (epoch - result.best_epoch >= p.patience) {
            break;
        }
    }

    result.train_loss =
        evaluate_rows(best, rows, train_ids.data(), n_train, p.l1_weight, p.mse_weight, threads)
            .loss;
    if (has_holdout) {
        const autoencoder_loss h = holdout_loss(best);
        result.holdout_loss = h.loss;
        result.holdout_mse = h.mse;
    } else {
        result.holdout_loss = result.holdout_mse = std::numeric_limits<double>::quiet_NaN();
    }
    result.params = best.to_params();
    return result;
}

}  // namespace detail

/// Trains an autoencoder on `n` row-major rows of `width` floats (K or V vectors of one group),
/// holding out `params.holdout` of them (a seeded random split) for early stopping.
inline autoencoder_training_result train_autoencoder(const float* rows, std::size_t n, int width,
                                                     const autoencoder_training_params& params) {
    return detail::train(rows, n, width, nullptr, 0, false, params);
}

/// The same with an explicit holdout set (e.g. K/V collected from a separate validation text);
/// `params.holdout` is ignored, and an empty holdout set disables early stopping.
inline autoencoder_training_result train_autoencoder(const float* rows, std::size_t n, int width,
                                                     const float* holdout_rows,
                                                     std::size_t n_holdout,
                                                     const autoencoder_training_params& params) {
    return detail::train(rows, n, width, holdout_rows, n_holdout, true, params);
}

/// The inference-mode loss (BatchNorm with running statistics) of `params` on `n` rows: the
/// numbers `train_autoencoder` reports, computed by the same code.
inline autoencoder_loss evaluate_autoencoder(const autoencoder_params& params, const float* rows,
                                             std::size_t n, float l1_weight = 1.0f,
                                             float mse_weight = 1.0f, int threads = 0) {
    const autoencoder_weights<float> w = autoencoder_weights<float>::from_params(params);
    detail::require_rows("evaluate_autoencoder", rows, n, params.width);
    return detail::evaluate_rows(w, rows, nullptr, n, l1_weight, mse_weight,
                                 resolve_threads(threads));
}

/// One training-mode step's loss (batch statistics) on `n` rows and, if `gradient` is given,
/// the loss's gradient with respect to every trainable tensor (written into `gradient`, which
/// must have the shapes of `weights`, e.g. autoencoder_weights<Real>::zeros(...)). For gradient
/// checks and custom training loops (the paper's stage 2 adds an LM loss to this one).
template <std::floating_point Real>
Real autoencoder_batch_loss(const autoencoder_weights<Real>& weights, const Real* rows,
                            std::size_t n, Real l1_weight, Real mse_weight,
                            autoencoder_weights<Real>* gradient = nullptr, int threads = 1) {
    require(n >= 2,
            "autoencoder_batch_loss: needs at least 2 rows (got " + std::to_string(n) + ")");
    require(rows != nullptr, "autoencoder_batch_loss: rows is null");
    weights.validate_shapes("autoencoder_batch_loss: weights");
    if (gradient) {
        require(gradient->width == weights.width && gradient->hidden == weights.hidden &&
                    gradient->latent == weights.latent,
                "autoencoder_batch_loss: gradient's width, hidden and latent differ from the "
                "weights'");
        gradient->validate_shapes("autoencoder_batch_loss: gradient");
    }
    detail::autoencoder_workspace<Real> ws(weights.width, weights.hidden, weights.latent,
                                           resolve_threads(threads));
    return ws.train_step(weights, rows, n, l1_weight, mse_weight, gradient);
}

}  // namespace kvcar::calib
