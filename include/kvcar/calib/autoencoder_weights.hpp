// kvcar/calib/autoencoder_weights.hpp — the KV-CAR autoencoder in its trainable form (host only):
// BatchNorm unfolded, every tensor in a precision of the caller's choice. train_autoencoder
// (autoencoder_training.hpp) trains it; to_params() gives the form codec files and fold() take.
#pragma once

#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/common.hpp"

namespace kvcar::calib {

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

    /// The trainable tensors in trainable_names order, as an optimizer (calib::adam) takes them.
    std::vector<std::span<Real>> trainable_spans() {
        std::vector<std::span<Real>> s;
        for (int i = 0; i < trainable_count; ++i) s.emplace_back(trainable(i));
        return s;
    }
    /// The same, read-only (a gradient).
    std::vector<std::span<const Real>> trainable_spans() const {
        std::vector<std::span<const Real>> s;
        for (int i = 0; i < trainable_count; ++i) s.emplace_back(trainable(i));
        return s;
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

}  // namespace kvcar::calib
