// kvcar/calib/autoencoder_kernels.hpp — the forward and backward passes of the KV-CAR autoencoder
// on a batch of rows (host only), for train_autoencoder (autoencoder_training.hpp), and the
// inference-mode loss on a set of rows.
//
// Every kernel splits its work across kvcar/parallel.hpp's threads only along independent
// elements (rows of a batch for activations; output units for weight gradients and BatchNorm
// statistics), and each sum runs over the batch in row order inside one thread, so the result
// does not depend on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <vector>

#include "kvcar/calib/autoencoder_weights.hpp"
#include "kvcar/parallel.hpp"

namespace kvcar::calib {

/// Mean losses per element over a set of rows.
struct autoencoder_loss {
    double loss = 0;  ///< l1_weight · l1 + mse_weight · mse
    double l1 = 0;    ///< mean |x̂ − x|
    double mse = 0;   ///< mean (x̂ − x)²
};

namespace detail {

/// [rows][cols] → [cols][rows].
template <std::floating_point Real>
void transpose_into(const std::vector<Real>& m, std::size_t rows, std::size_t cols,
                    std::vector<Real>& t) {
    t.resize(m.size());
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) t[c * rows + r] = m[r * cols + c];
}

/// The dense kernels. All are written as `y[:] += s * w[:]` over contiguous rows, so the
/// compiler vectorises them without reassociating a sum, and each output element is computed by
/// one fixed sequence of operations.
template <std::floating_point Real>
struct fc {
    /// Y[B][out] = X[B][in] · W^T + b, with wt = Wᵀ as [in][out]. Parallel over rows.
    static void forward(const Real* x, std::size_t B, std::size_t in, const Real* wt, const Real* b,
                        std::size_t out, Real* y, int threads) {
        parallel_for(B, threads, double(B) * double(in * out), [&](std::size_t r0, std::size_t r1) {
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
        parallel_for(B, threads, double(B) * double(in * out), [&](std::size_t r0, std::size_t r1) {
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
        parallel_for(out, threads, double(out) * double(B * in), [&](std::size_t o0, std::size_t o1) {
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

template <std::floating_point Real>
Real lrelu(Real x, Real slope) {
    return x >= Real(0) ? x : slope * x;
}

/// Activations and gradients of one batch, reused from batch to batch.
template <std::floating_point Real>
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
        parallel_for(h, threads_, 4.0 * double(h * B), [&](std::size_t k0, std::size_t k1) {
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
        parallel_for(h, threads_, 4.0 * double(h * B), [&](std::size_t k0, std::size_t k1) {
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

/// Rows `index[0..n)` of `rows` (width D) gathered into `out` as Real.
template <std::floating_point Real>
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

}  // namespace detail
}  // namespace kvcar::calib
