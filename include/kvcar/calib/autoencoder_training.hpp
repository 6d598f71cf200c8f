// kvcar/calib/autoencoder_training.hpp — trains the KV-CAR paper's autoencoder on K (or V) rows
// (host only): stage 1 of the paper's Algorithm 1 with a reconstruction loss.
//
//   encoder: x (D) → FC(D→h) → BatchNorm → LeakyReLU → FC(h→d) → z
//   decoder: z (d) → FC(d→h) → BatchNorm → LeakyReLU → FC(h→D) → x̂
//   loss     = l1_weight · mean |x̂ − x| + mse_weight · mean (x̂ − x)²   (mean over rows × D)
//
// Forward and backward are written out by hand (no autograd): FC, BatchNorm in training mode
// (batch statistics; running statistics updated with momentum 0.1 and used at inference, as in
// PyTorch), LeakyReLU. Adam updates the weights; mini-batches are reshuffled every epoch by a
// seeded generator; a holdout split drives early stopping, and the best epoch's weights are
// returned.
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
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kvcar/calib/pca.hpp"
#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/common.hpp"

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

/// Mean losses per element over a set of rows.
struct autoencoder_loss {
    double loss = 0;  ///< l1_weight · l1 + mse_weight · mse
    double l1 = 0;    ///< mean |x̂ − x|
    double mse = 0;   ///< mean (x̂ − x)²
};

/// The trainable form of the network in precision `Real` (float to train; double for gradient
/// checks). Layouts as in autoencoder_params (PyTorch: an FC weight is [out][in]).
template <std::floating_point Real>
struct autoencoder_weights {
    int width = 0;                   ///< D: floats per group
    int hidden = 0;                  ///< h: hidden units of each half
    int latent = 0;                  ///< d: latent elements
    Real slope = Real(0.01);         ///< LeakyReLU negative slope
    Real bn_eps = Real(1e-5);        ///< BatchNorm epsilon added to the variance
    std::vector<Real> enc1_w;        ///< encoder FC(D→h) weight, [h][D]
    std::vector<Real> enc1_b;        ///< encoder FC(D→h) bias, [h]
    std::vector<Real> enc_bn_gamma;  ///< encoder BatchNorm scale γ, [h]
    std::vector<Real> enc_bn_beta;   ///< encoder BatchNorm shift β, [h]
    std::vector<Real> enc2_w;        ///< encoder FC(h→d) weight, [d][h]
    std::vector<Real> enc2_b;        ///< encoder FC(h→d) bias, [d]
    std::vector<Real> dec1_w;        ///< decoder FC(d→h) weight, [h][d]
    std::vector<Real> dec1_b;        ///< decoder FC(d→h) bias, [h]
    std::vector<Real> dec_bn_gamma;  ///< decoder BatchNorm scale γ, [h]
    std::vector<Real> dec_bn_beta;   ///< decoder BatchNorm shift β, [h]
    std::vector<Real> dec2_w;        ///< decoder FC(h→D) weight, [D][h]
    std::vector<Real> dec2_b;        ///< decoder FC(h→D) bias, [D]
    // BatchNorm running statistics: not trained; updated in training mode, used at inference.
    std::vector<Real> enc_bn_mean;   ///< encoder BatchNorm running mean, [h]
    std::vector<Real> enc_bn_var;    ///< encoder BatchNorm running variance, [h]
    std::vector<Real> dec_bn_mean;   ///< decoder BatchNorm running mean, [h]
    std::vector<Real> dec_bn_var;    ///< decoder BatchNorm running variance, [h]

    /// How many tensors the optimizer updates (the weights, biases, γ and β of both halves).
    static constexpr int trainable_count = 12;
    /// The trainable tensors' names, in trainable(i) order (as messages name them).
    static constexpr const char* trainable_names[trainable_count] = {
        "enc1_w", "enc1_b", "enc_bn_gamma", "enc_bn_beta", "enc2_w", "enc2_b",
        "dec1_w", "dec1_b", "dec_bn_gamma", "dec_bn_beta", "dec2_w", "dec2_b"};

    /// Trainable tensor `i` (0 <= i < trainable_count, unchecked), in trainable_names order.
    std::vector<Real>& trainable(int i) {
        std::vector<Real>* t[trainable_count] = {
            &enc1_w, &enc1_b, &enc_bn_gamma, &enc_bn_beta, &enc2_w, &enc2_b,
            &dec1_w, &dec1_b, &dec_bn_gamma, &dec_bn_beta, &dec2_w, &dec2_b};
        return *t[i];
    }
    /// Trainable tensor `i` (0 <= i < trainable_count, unchecked), read-only.
    const std::vector<Real>& trainable(int i) const {
        return const_cast<autoencoder_weights*>(this)->trainable(i);
    }

    /// Throws kvcar::error unless every tensor has the size (width, hidden, latent) implies.
    void validate_shapes(const char* who) const {
        require(width > 0 && hidden > 0 && latent > 0,
                std::string(who) + ": width, hidden and latent must be positive");
        const autoencoder_weights want = zeros(width, hidden, latent);
        for (int i = 0; i < trainable_count; ++i)
            require(trainable(i).size() == want.trainable(i).size(),
                    std::string(who) + ": " + trainable_names[i] + " has " +
                        std::to_string(trainable(i).size()) + " values, expected " +
                        std::to_string(want.trainable(i).size()));
        for (const auto* v : {&enc_bn_mean, &enc_bn_var, &dec_bn_mean, &dec_bn_var})
            require(v->size() == std::size_t(hidden),
                    std::string(who) + ": a BatchNorm running statistic has " +
                        std::to_string(v->size()) + " values, expected hidden " +
                        std::to_string(hidden));
    }

    /// Every tensor sized for (width, hidden, latent) and zero; BatchNorm var = 1, γ = 1.
    static autoencoder_weights zeros(int width, int hidden, int latent) {
        autoencoder_weights w;
        w.width = width;
        w.hidden = hidden;
        w.latent = latent;
        const std::size_t D = std::size_t(width), h = std::size_t(hidden);
        const std::size_t d = std::size_t(latent);
        w.enc1_w.assign(h * D, 0);
        w.enc2_w.assign(d * h, 0);
        w.dec1_w.assign(h * d, 0);
        w.dec2_w.assign(D * h, 0);
        for (auto* v :
             {&w.enc1_b, &w.enc_bn_beta, &w.dec1_b, &w.dec_bn_beta, &w.enc_bn_mean, &w.dec_bn_mean})
            v->assign(h, 0);
        for (auto* v : {&w.enc_bn_gamma, &w.dec_bn_gamma, &w.enc_bn_var, &w.dec_bn_var})
            v->assign(h, 1);
        w.enc2_b.assign(d, 0);
        w.dec2_b.assign(D, 0);
        return w;
    }

    /// The weights of `p` converted to Real. Throws kvcar::error when `p` is invalid
    /// (autoencoder_params::validate).
    static autoencoder_weights from_params(const autoencoder_params& p) {
        p.validate();
        autoencoder_weights w;
        w.width = p.width;
        w.hidden = p.hidden;
        w.latent = p.latent;
        w.slope = Real(p.slope);
        w.bn_eps = Real(p.bn_eps);
        const auto cast = [](const std::vector<float>& v) {
            return std::vector<Real>(v.begin(), v.end());
        };
        w.enc1_w = cast(p.enc1_w);
        w.enc1_b = cast(p.enc1_b);
        w.enc_bn_gamma = cast(p.enc_bn_gamma);
        w.enc_bn_beta = cast(p.enc_bn_beta);
        w.enc2_w = cast(p.enc2_w);
        w.enc2_b = cast(p.enc2_b);
        w.dec1_w = cast(p.dec1_w);
        w.dec1_b = cast(p.dec1_b);
        w.dec_bn_gamma = cast(p.dec_bn_gamma);
        w.dec_bn_beta = cast(p.dec_bn_beta);
        w.dec2_w = cast(p.dec2_w);
        w.dec2_b = cast(p.dec2_b);
        w.enc_bn_mean = cast(p.enc_bn_mean);
        w.enc_bn_var = cast(p.enc_bn_var);
        w.dec_bn_mean = cast(p.dec_bn_mean);
        w.dec_bn_var = cast(p.dec_bn_var);
        return w;
    }

    /// These weights rounded to float, BatchNorm unfolded (what codec files and fold() take).
    autoencoder_params to_params() const {
        const auto cast = [](const std::vector<Real>& v) {
            return std::vector<float>(v.begin(), v.end());
        };
        autoencoder_params p;
        p.width = width;
        p.hidden = hidden;
        p.latent = latent;
        p.slope = float(slope);
        p.bn_eps = float(bn_eps);
        p.enc1_w = cast(enc1_w);
        p.enc1_b = cast(enc1_b);
        p.enc_bn_gamma = cast(enc_bn_gamma);
        p.enc_bn_beta = cast(enc_bn_beta);
        p.enc_bn_mean = cast(enc_bn_mean);
        p.enc_bn_var = cast(enc_bn_var);
        p.enc2_w = cast(enc2_w);
        p.enc2_b = cast(enc2_b);
        p.dec1_w = cast(dec1_w);
        p.dec1_b = cast(dec1_b);
        p.dec_bn_gamma = cast(dec_bn_gamma);
        p.dec_bn_beta = cast(dec_bn_beta);
        p.dec_bn_mean = cast(dec_bn_mean);
        p.dec_bn_var = cast(dec_bn_var);
        p.dec2_w = cast(dec2_w);
        p.dec2_b = cast(dec2_b);
        return p;
    }
};

namespace detail {

/// Calls f(begin, end) over [0, n) split into contiguous chunks, one per thread. Callers only
/// split along independent elements, so the result never depends on `threads`; small jobs
/// (`n * cost_per_item` below a few hundred thousand operations) run inline, where a thread
/// start would cost more than the work.
template <class F>
void parallel_for(std::size_t n, int threads, std::size_t cost_per_item, F&& f) {
    const std::size_t min_work = std::size_t(1) << 18;
    std::size_t parts = std::min<std::size_t>(std::size_t(threads > 1 ? threads : 1), n);
    if (cost_per_item * n < min_work * 2) parts = 1;
    parts = std::min(parts, std::max<std::size_t>(1, cost_per_item * n / min_work));
    if (parts <= 1) {
        if (n > 0) f(std::size_t(0), n);
        return;
    }
    std::vector<std::thread> workers;
    workers.reserve(parts - 1);
    const auto bound = [&](std::size_t p) { return n * p / parts; };
    for (std::size_t p = 1; p < parts; ++p)
        workers.emplace_back([&f, b = bound(p), e = bound(p + 1)] { f(b, e); });
    f(std::size_t(0), bound(1));
    for (auto& w : workers) w.join();
}

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

/// [rows][cols] → [cols][rows].
template <class Real>
void transpose_into(const std::vector<Real>& m, std::size_t rows, std::size_t cols,
                    std::vector<Real>& t) {
    t.resize(m.size());
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) t[c * rows + r] = m[r * cols + c];
}

/// The dense kernels. All are written as `y[:] += s * w[:]` over contiguous rows, so the
/// compiler vectorises them without reassociating a sum, and each output element is computed by
/// one fixed sequence of operations.
template <class Real>
struct fc {
    /// Y[B][out] = X[B][in] · W^T + b, with wt = Wᵀ as [in][out]. Parallel over rows.
    static void forward(const Real* x, std::size_t B, std::size_t in, const Real* wt, const Real* b,
                        std::size_t out, Real* y, int threads) {
        parallel_for(B, threads, in * out, [&](std::size_t r0, std::size_t r1) {
            for (std::size_t r = r0; r < r1; ++r) {
                Real* yr = y + r * out;
                const Real* xr = x + r * in;
                for (std::size_t o = 0; o < out; ++o) yr[o] = b[o];
                for (std::size_t i = 0; i < in; ++i) {
                    const Real xi = xr[i];
                    const Real* w = wt + i * out;
                    for (std::size_t o = 0; o < out; ++o) yr[o] += xi * w[o];
                }
            }
        });
    }
    /// dX[B][in] = dY[B][out] · W, W as [out][in]. Parallel over rows.
    static void backward_input(const Real* dy, std::size_t B, std::size_t out, const Real* w,
                               std::size_t in, Real* dx, int threads) {
        parallel_for(B, threads, in * out, [&](std::size_t r0, std::size_t r1) {
            for (std::size_t r = r0; r < r1; ++r) {
                Real* dxr = dx + r * in;
                const Real* dyr = dy + r * out;
                for (std::size_t i = 0; i < in; ++i) dxr[i] = 0;
                for (std::size_t o = 0; o < out; ++o) {
                    const Real g = dyr[o];
                    const Real* wr = w + o * in;
                    for (std::size_t i = 0; i < in; ++i) dxr[i] += g * wr[i];
                }
            }
        });
    }
    /// dW[out][in] = Σ_r dY[r]ᵀ X[r], db = Σ_r dY[r]: rows summed in order. Parallel over out.
    static void backward_weight(const Real* dy, const Real* x, std::size_t B, std::size_t in,
                                std::size_t out, Real* dw, Real* db, int threads) {
        parallel_for(out, threads, B * in, [&](std::size_t o0, std::size_t o1) {
            for (std::size_t o = o0; o < o1; ++o) {
                Real* dwo = dw + o * in;
                for (std::size_t i = 0; i < in; ++i) dwo[i] = 0;
                Real bias = 0;
                for (std::size_t r = 0; r < B; ++r) {
                    const Real g = dy[r * out + o];
                    bias += g;
                    const Real* xr = x + r * in;
                    for (std::size_t i = 0; i < in; ++i) dwo[i] += g * xr[i];
                }
                db[o] = bias;
            }
        });
    }
};

template <class Real>
Real lrelu(Real x, Real slope) {
    return x >= Real(0) ? x : slope * x;
}

/// Activations and gradients of one batch, reused from batch to batch.
template <class Real>
class autoencoder_workspace {
public:
    autoencoder_workspace(int width, int hidden, int latent, int threads)
        : D_(std::size_t(width)),
          h_(std::size_t(hidden)),
          d_(std::size_t(latent)),
          threads_(threads) {}

    /// Training-mode forward pass on B rows `x` ([B][D]), loss, and (if `grad`) the backward
    /// pass into `grad`'s trainable tensors. The batch statistics are kept for
    /// `update_running_stats`. Needs B >= 2.
    Real train_step(const autoencoder_weights<Real>& w, const Real* x, std::size_t B,
                    Real l1_weight, Real mse_weight, autoencoder_weights<Real>* grad) {
        resize(B);
        prepare(w);
        const int t = threads_;
        fc<Real>::forward(x, B, D_, w1t_.data(), w.enc1_b.data(), h_, a1_.data(), t);
        bn_train(a1_, B, w.enc_bn_gamma, w.enc_bn_beta, w.bn_eps, mean1_, var1_, inv1_, xh1_, n1_);
        activate(n1_, B, w.slope, h1_);
        fc<Real>::forward(h1_.data(), B, h_, w2t_.data(), w.enc2_b.data(), d_, z_.data(), t);
        fc<Real>::forward(z_.data(), B, d_, w3t_.data(), w.dec1_b.data(), h_, a2_.data(), t);
        bn_train(a2_, B, w.dec_bn_gamma, w.dec_bn_beta, w.bn_eps, mean2_, var2_, inv2_, xh2_, n2_);
        activate(n2_, B, w.slope, h2_);
        fc<Real>::forward(h2_.data(), B, h_, w4t_.data(), w.dec2_b.data(), D_, y_.data(), t);

        // Loss and dL/dŷ = (l1 · sign(ŷ − x) + 2 · mse · (ŷ − x)) / (B · D).
        const Real inv_n = Real(1) / Real(B * D_);
        for (std::size_t r = 0; r < B; ++r) {
            double s1 = 0, s2 = 0;
            for (std::size_t i = 0; i < D_; ++i) {
                const std::size_t k = r * D_ + i;
                const Real e = y_[k] - x[k];
                s1 += double(e < 0 ? -e : e);
                s2 += double(e) * double(e);
                const Real sign = e > 0 ? Real(1) : e < 0 ? Real(-1) : Real(0);
                dy_[k] = (l1_weight * sign + Real(2) * mse_weight * e) * inv_n;
            }
            row_l1_[r] = s1;
            row_sq_[r] = s2;
        }
        double total = 0;
        for (std::size_t r = 0; r < B; ++r)
            total += double(l1_weight) * row_l1_[r] + double(mse_weight) * row_sq_[r];
        const Real loss = Real(total / double(B * D_));
        if (!grad) return loss;

        autoencoder_weights<Real>& g = *grad;
        fc<Real>::backward_weight(dy_.data(), h2_.data(), B, h_, D_, g.dec2_w.data(),
                                  g.dec2_b.data(), t);
        fc<Real>::backward_input(dy_.data(), B, D_, w.dec2_w.data(), h_, dh_.data(), t);
        activate_backward(dh_, n2_, B, w.slope);
        bn_backward(dh_, xh2_, inv2_, B, w.dec_bn_gamma, g.dec_bn_gamma, g.dec_bn_beta, da_);
        fc<Real>::backward_weight(da_.data(), z_.data(), B, d_, h_, g.dec1_w.data(),
                                  g.dec1_b.data(), t);
        fc<Real>::backward_input(da_.data(), B, h_, w.dec1_w.data(), d_, dz_.data(), t);
        fc<Real>::backward_weight(dz_.data(), h1_.data(), B, h_, d_, g.enc2_w.data(),
                                  g.enc2_b.data(), t);
        fc<Real>::backward_input(dz_.data(), B, d_, w.enc2_w.data(), h_, dh_.data(), t);
        activate_backward(dh_, n1_, B, w.slope);
        bn_backward(dh_, xh1_, inv1_, B, w.enc_bn_gamma, g.enc_bn_gamma, g.enc_bn_beta, da_);
        fc<Real>::backward_weight(da_.data(), x, B, D_, h_, g.enc1_w.data(), g.enc1_b.data(), t);
        return loss;
    }

    /// running ← (1 − m) · running + m · batch statistic, with the unbiased batch variance
    /// (PyTorch's convention), from the last train_step of B rows.
    void update_running_stats(autoencoder_weights<Real>& w, std::size_t B, Real momentum) const {
        const Real unbias = Real(B) / Real(B - 1);
        for (std::size_t k = 0; k < h_; ++k) {
            w.enc_bn_mean[k] = (1 - momentum) * w.enc_bn_mean[k] + momentum * mean1_[k];
            w.enc_bn_var[k] = (1 - momentum) * w.enc_bn_var[k] + momentum * var1_[k] * unbias;
            w.dec_bn_mean[k] = (1 - momentum) * w.dec_bn_mean[k] + momentum * mean2_[k];
            w.dec_bn_var[k] = (1 - momentum) * w.dec_bn_var[k] + momentum * var2_[k] * unbias;
        }
    }

    /// Inference-mode forward of B rows (BatchNorm with running statistics) up to `stage`:
    /// 1 → encoder pre-activations in a1(), 2 → decoder pre-activations in a2() (z in z()),
    /// 3 → reconstruction in y(). Call prepare(w) first (once per weights).
    void eval_forward(const autoencoder_weights<Real>& w, const Real* x, std::size_t B, int stage) {
        resize(B);
        const int t = threads_;
        fc<Real>::forward(x, B, D_, w1t_.data(), w.enc1_b.data(), h_, a1_.data(), t);
        if (stage < 2) return;
        bn_eval(a1_, B, w.enc_bn_gamma, w.enc_bn_beta, w.enc_bn_mean, w.enc_bn_var, w.bn_eps,
                w.slope, h1_);
        fc<Real>::forward(h1_.data(), B, h_, w2t_.data(), w.enc2_b.data(), d_, z_.data(), t);
        fc<Real>::forward(z_.data(), B, d_, w3t_.data(), w.dec1_b.data(), h_, a2_.data(), t);
        if (stage < 3) return;
        bn_eval(a2_, B, w.dec_bn_gamma, w.dec_bn_beta, w.dec_bn_mean, w.dec_bn_var, w.bn_eps,
                w.slope, h2_);
        fc<Real>::forward(h2_.data(), B, h_, w4t_.data(), w.dec2_b.data(), D_, y_.data(), t);
    }

    /// Transposed copies of the FC weights for the forward kernels (O(weights), once per step).
    void prepare(const autoencoder_weights<Real>& w) {
        transpose_into(w.enc1_w, h_, D_, w1t_);
        transpose_into(w.enc2_w, d_, h_, w2t_);
        transpose_into(w.dec1_w, h_, d_, w3t_);
        transpose_into(w.dec2_w, D_, h_, w4t_);
    }

    const std::vector<Real>& a1() const { return a1_; }
    const std::vector<Real>& a2() const { return a2_; }
    const std::vector<Real>& z() const { return z_; }
    const std::vector<Real>& y() const { return y_; }

private:
    void resize(std::size_t B) {
        if (B <= rows_) return;
        rows_ = B;
        for (auto* v : {&a1_, &xh1_, &n1_, &h1_, &a2_, &xh2_, &n2_, &h2_, &dh_, &da_})
            v->resize(B * h_);
        z_.resize(B * d_);
        dz_.resize(B * d_);
        y_.resize(B * D_);
        dy_.resize(B * D_);
        row_l1_.resize(B);
        row_sq_.resize(B);
        for (auto* v : {&mean1_, &var1_, &inv1_, &mean2_, &var2_, &inv2_}) v->resize(h_);
    }

    /// BatchNorm with batch statistics (biased variance, as PyTorch normalises): per unit k,
    /// x̂ = (a − mean) / √(var + eps), n = γ x̂ + β. Parallel over units.
    void bn_train(const std::vector<Real>& a, std::size_t B, const std::vector<Real>& gamma,
                  const std::vector<Real>& beta, Real eps, std::vector<Real>& mean,
                  std::vector<Real>& var, std::vector<Real>& inv_std, std::vector<Real>& xhat,
                  std::vector<Real>& n) const {
        const std::size_t h = h_;
        parallel_for(h, threads_, 4 * B, [&](std::size_t k0, std::size_t k1) {
            for (std::size_t k = k0; k < k1; ++k) {
                Real s = 0;
                for (std::size_t r = 0; r < B; ++r) s += a[r * h + k];
                const Real m = s / Real(B);
                Real q = 0;
                for (std::size_t r = 0; r < B; ++r) {
                    const Real c = a[r * h + k] - m;
                    q += c * c;
                }
                const Real v = q / Real(B);
                const Real inv = Real(1) / std::sqrt(v + eps);
                mean[k] = m;
                var[k] = v;
                inv_std[k] = inv;
                for (std::size_t r = 0; r < B; ++r) {
                    const Real xh = (a[r * h + k] - m) * inv;
                    xhat[r * h + k] = xh;
                    n[r * h + k] = gamma[k] * xh + beta[k];
                }
            }
        });
    }

    /// Given dL/dn in `dn` ([B][h]): dγ = Σ dn·x̂, dβ = Σ dn and
    /// dL/da = γ/√(var + eps) · (dn − dβ/B − x̂ · dγ/B).
    void bn_backward(const std::vector<Real>& dn, const std::vector<Real>& xhat,
                     const std::vector<Real>& inv_std, std::size_t B,
                     const std::vector<Real>& gamma, std::vector<Real>& dgamma,
                     std::vector<Real>& dbeta, std::vector<Real>& da) const {
        const std::size_t h = h_;
        parallel_for(h, threads_, 4 * B, [&](std::size_t k0, std::size_t k1) {
            for (std::size_t k = k0; k < k1; ++k) {
                Real sg = 0, sb = 0;
                for (std::size_t r = 0; r < B; ++r) {
                    sb += dn[r * h + k];
                    sg += dn[r * h + k] * xhat[r * h + k];
                }
                dgamma[k] = sg;
                dbeta[k] = sb;
                const Real scale = gamma[k] * inv_std[k];
                const Real mb = sb / Real(B), mg = sg / Real(B);
                for (std::size_t r = 0; r < B; ++r)
                    da[r * h + k] = scale * (dn[r * h + k] - mb - xhat[r * h + k] * mg);
            }
        });
    }

    void bn_eval(const std::vector<Real>& a, std::size_t B, const std::vector<Real>& gamma,
                 const std::vector<Real>& beta, const std::vector<Real>& mean,
                 const std::vector<Real>& var, Real eps, Real slope, std::vector<Real>& out) {
        scale_.resize(h_);
        shift_.resize(h_);
        for (std::size_t k = 0; k < h_; ++k) {
            scale_[k] = gamma[k] / std::sqrt(var[k] + eps);
            shift_[k] = beta[k] - mean[k] * scale_[k];
        }
        for (std::size_t r = 0; r < B; ++r)
            for (std::size_t k = 0; k < h_; ++k)
                out[r * h_ + k] = lrelu(a[r * h_ + k] * scale_[k] + shift_[k], slope);
    }

    void activate(const std::vector<Real>& n, std::size_t B, Real slope,
                  std::vector<Real>& out) const {
        for (std::size_t i = 0; i < B * h_; ++i) out[i] = lrelu(n[i], slope);
    }
    void activate_backward(std::vector<Real>& dh, const std::vector<Real>& n, std::size_t B,
                           Real slope) const {
        for (std::size_t i = 0; i < B * h_; ++i)
            if (n[i] < Real(0)) dh[i] *= slope;
    }

    std::size_t D_, h_, d_;
    int threads_;
    std::size_t rows_ = 0;
    std::vector<Real> w1t_, w2t_, w3t_, w4t_;
    std::vector<Real> a1_, xh1_, n1_, h1_, z_, a2_, xh2_, n2_, h2_, y_;
    std::vector<Real> dy_, dh_, da_, dz_;
    std::vector<Real> mean1_, var1_, inv1_, mean2_, var2_, inv2_, scale_, shift_;
    std::vector<double> row_l1_, row_sq_;
};

inline int resolve_threads(int threads) {
    if (threads > 0) return threads;
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? int(hw) : 1;
}

/// Rows `index[0..n)` of `rows` (width D) gathered into `out` as Real.
template <class Real>
void gather_rows(const float* rows, std::size_t D, const std::size_t* index, std::size_t n,
                 std::vector<Real>& out) {
    out.resize(n * D);
    for (std::size_t r = 0; r < n; ++r) {
        const float* src = rows + index[r] * D;
        for (std::size_t i = 0; i < D; ++i) out[r * D + i] = Real(src[i]);
    }
}

/// Inference-mode loss of `w` on rows `index` (or all `n` rows when index is null), in chunks;
/// per-row sums in double, added in row order.
inline autoencoder_loss evaluate_rows(const autoencoder_weights<float>& w, const float* rows,
                                      const std::size_t* index, std::size_t n, double l1_weight,
                                      double mse_weight, int threads) {
    autoencoder_loss result;
    if (n == 0) {
        result.loss = result.l1 = result.mse = std::numeric_limits<double>::quiet_NaN();
        return result;
    }
    const std::size_t D = std::size_t(w.width), chunk = 512;
    autoencoder_workspace<float> ws(w.width, w.hidden, w.latent, threads);
    ws.prepare(w);
    std::vector<float> x;
    std::vector<std::size_t> ids(chunk);
    double l1 = 0, sq = 0;
    for (std::size_t begin = 0; begin < n; begin += chunk) {
        const std::size_t B = std::min(chunk, n - begin);
        for (std::size_t r = 0; r < B; ++r) ids[r] = index ? index[begin + r] : begin + r;
        gather_rows(rows, D, ids.data(), B, x);
        ws.eval_forward(w, x.data(), B, 3);
        const std::vector<float>& y = ws.y();
        for (std::size_t r = 0; r < B; ++r) {
            double s1 = 0, s2 = 0;
            for (std::size_t i = 0; i < D; ++i) {
                const double e = double(y[r * D + i]) - double(x[r * D + i]);
                s1 += std::fabs(e);
                s2 += e * e;
            }
            l1 += s1;
            sq += s2;
        }
    }
    const double count = double(n) * double(D);
    result.l1 = l1 / count;
    result.mse = sq / count;
    result.loss = l1_weight * result.l1 + mse_weight * result.mse;
    return result;
}

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

/// Adam (Kingma & Ba) over the trainable tensors, bias-corrected, no weight decay.
class adam {
public:
    adam(const autoencoder_weights<float>& w, float lr) : lr_(lr) {
        for (int i = 0; i < autoencoder_weights<float>::trainable_count; ++i) {
            m_[i].assign(w.trainable(i).size(), 0.0f);
            v_[i].assign(w.trainable(i).size(), 0.0f);
        }
    }
    void step(autoencoder_weights<float>& w, const autoencoder_weights<float>& g) {
        ++t_;
        const double c1 = 1.0 - std::pow(0.9, double(t_));
        const double c2 = 1.0 - std::pow(0.999, double(t_));
        const float step = float(double(lr_) / c1);
        const float inv_c2 = float(1.0 / c2);
        for (int i = 0; i < autoencoder_weights<float>::trainable_count; ++i) {
            std::vector<float>& p = w.trainable(i);
            const std::vector<float>& gi = g.trainable(i);
            std::vector<float>& m = m_[i];
            std::vector<float>& v = v_[i];
            for (std::size_t k = 0; k < p.size(); ++k) {
                m[k] = 0.9f * m[k] + 0.1f * gi[k];
                v[k] = 0.999f * v[k] + 0.001f * gi[k] * gi[k];
                p[k] -= step * m[k] / (std::sqrt(v[k] * inv_c2) + 1e-8f);
            }
        }
    }

private:
    float lr_;
    long t_ = 0;
    std::vector<float> m_[autoencoder_weights<float>::trainable_count];
    std::vector<float> v_[autoencoder_weights<float>::trainable_count];
};

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
    adam optimizer(w, p.lr);
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
            optimizer.step(w, grad);
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
                                 detail::resolve_threads(threads));
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
                                           detail::resolve_threads(threads));
    return ws.train_step(weights, rows, n, l1_weight, mse_weight, gradient);
}

}  // namespace kvcar::calib
