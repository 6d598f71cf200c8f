// kvcar/codec/autoencoder.hpp — the KV-CAR paper's per-layer autoencoder, inference side.
//
//   encoder: x (D) → FC(D→h) → BatchNorm → LeakyReLU → FC(h→d) → z
//   decoder: z (d) → FC(d→h) → BatchNorm → LeakyReLU → FC(h→D) → x̂
//
// At inference BatchNorm is a fixed per-unit affine map, so it is folded into the FC before it
// (fold()). The decoder is nonlinear: attention must decode the cached latents before use.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/traits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"

namespace kvcar {

/// LeakyReLU: x for x >= 0, slope · x below (the autoencoder's activation).
KVCAR_HD inline float leaky_relu(float x, float slope) { return x >= 0.0f ? x : slope * x; }

/// A view of a folded autoencoder (it owns nothing; see folded_autoencoder). Both halves have
/// the same shape: hidden unit k computes a_k = lrelu(W1[k]·in + b1[k]) from one contiguous row
/// of W1, then adds a_k · W2ᵀ[k] (one contiguous row of the transposed second FC) to the output.
/// So each half streams its two weight matrices once, and needs no buffer for the hidden layer:
/// decode accumulates straight into the D output floats, encode into a local float[d].
template <float_element T = f16>
struct autoencoder_codec {
    using storage_type = T;  ///< element type the latent is stored in

    int width = 0;                   ///< D: floats per group
    int hidden = 0;                  ///< h: hidden units of each half
    int latent = 0;                  ///< d: latent elements per group (<= max_latent_width)
    float slope = 0.01f;             ///< LeakyReLU negative slope
    const float* enc1_w = nullptr;   ///< [h][D], BatchNorm folded in
    const float* enc1_b = nullptr;   ///< [h]
    const float* enc2_wt = nullptr;  ///< [h][d]: FC(h→d) transposed
    const float* enc2_b = nullptr;   ///< [d]
    const float* dec1_w = nullptr;   ///< [h][d], BatchNorm folded in
    const float* dec1_b = nullptr;   ///< [h]
    const float* dec2_wt = nullptr;  ///< [h][D]: FC(h→D) transposed
    const float* dec2_b = nullptr;   ///< [D]

    /// D: floats per group.
    KVCAR_HD int group_width() const { return width; }
    /// d: latent elements per record.
    KVCAR_HD int latent_width() const { return latent; }
    /// d elements of T, rounded up to a multiple of 4 bytes.
    KVCAR_HD std::size_t bytes_per_group() const {
        return pad_record_bytes(std::size_t(latent) * sizeof(T));
    }

    /// The encoder: z = W2 lrelu(W1 x + b1) + b2. `x` and `z` must not overlap.
    KVCAR_HD void to_latent(const float* x, float* z) const {
        half_forward(enc1_w, enc1_b, enc2_wt, enc2_b, width, latent, x, z);
    }
    /// The decoder: x̂ = W2 lrelu(W1 z + b1) + b2. `z` and `x` must not overlap.
    KVCAR_HD void from_latent(const float* z, float* x) const {
        half_forward(dec1_w, dec1_b, dec2_wt, dec2_b, latent, width, z, x);
    }

    /// Precondition (checked by folded_autoencoder): latent <= max_latent_width.
    KVCAR_HD void encode(const float* x, std::byte* out) const {
        float z[max_latent_width];
        to_latent(x, z);
        T* stored = reinterpret_cast<T*>(out);
        for (int j = 0; j < latent; ++j) stored[j] = element_traits<T>::store(z[j]);
    }
    /// Reads the d stored latent elements at `in` and runs the decoder into D floats at `x`.
    KVCAR_HD void decode(const std::byte* in, float* x) const {
        float z[max_latent_width];
        const T* stored = reinterpret_cast<const T*>(in);
        for (int j = 0; j < latent; ++j) z[j] = to_float(stored[j]);
        from_latent(z, x);
    }

private:
    /// out = W2 lrelu(W1 in + b1) + b2 with W1 [h][n_in], W2ᵀ [h][n_out].
    KVCAR_HD void half_forward(const float* w1, const float* b1, const float* w2t,
                               const float* b2, int n_in, int n_out, const float* in,
                               float* out) const {
        for (int i = 0; i < n_out; ++i) out[i] = b2[i];
        for (int k = 0; k < hidden; ++k) {
            const float* w1_row = w1 + std::size_t(k) * std::size_t(n_in);
            float pre = b1[k];
            for (int i = 0; i < n_in; ++i) pre += w1_row[i] * in[i];
            const float a = leaky_relu(pre, slope);
            const float* w2_row = w2t + std::size_t(k) * std::size_t(n_out);
            for (int i = 0; i < n_out; ++i) out[i] += a * w2_row[i];
        }
    }
};

namespace detail {

inline void require_tensor(const char* owner, const char* name, const std::vector<float>& t,
                           std::size_t want, const char* shape) {
    require(t.size() == want, std::string(owner) + ": " + name + " has " +
                                  std::to_string(t.size()) + " values but " + shape + " is " +
                                  std::to_string(want));
    for (float v : t)
        require(std::isfinite(v), std::string(owner) + ": " + name + " is not finite");
}

inline void require_autoencoder_shape(const char* owner, int width, int hidden, int latent,
                                      float slope) {
    require(width > 0 && hidden > 0 && latent > 0,
            std::string(owner) + ": width, hidden and latent must be positive (got " +
                std::to_string(width) + ", " + std::to_string(hidden) + ", " +
                std::to_string(latent) + ")");
    require(latent <= max_latent_width, std::string(owner) + ": latent " +
                                            std::to_string(latent) + " exceeds max_latent_width " +
                                            std::to_string(max_latent_width));
    require(std::isfinite(slope), std::string(owner) + ": slope is not finite");
}

}  // namespace detail

/// The autoencoder as trained (PyTorch layouts: an FC weight is [out][in]), BatchNorm unfolded.
/// Turn it into a codec with fold(params).codec<T>().
struct autoencoder_params {
    int width = 0;                    ///< D: floats per group
    int hidden = 0;                   ///< h: hidden units of each half
    int latent = 0;                   ///< d: latent elements (<= max_latent_width)
    float slope = 0.01f;              ///< LeakyReLU negative slope
    std::vector<float> enc1_w;        ///< encoder FC(D→h) weight, [h][D]
    std::vector<float> enc1_b;        ///< encoder FC(D→h) bias, [h]
    std::vector<float> enc_bn_gamma;  ///< encoder BatchNorm scale γ, [h]
    std::vector<float> enc_bn_beta;   ///< encoder BatchNorm shift β, [h]
    std::vector<float> enc_bn_mean;   ///< encoder BatchNorm running mean, [h]
    std::vector<float> enc_bn_var;    ///< encoder BatchNorm running variance, [h], >= 0
    std::vector<float> enc2_w;        ///< encoder FC(h→d) weight, [d][h]
    std::vector<float> enc2_b;        ///< encoder FC(h→d) bias, [d]
    std::vector<float> dec1_w;        ///< decoder FC(d→h) weight, [h][d]
    std::vector<float> dec1_b;        ///< decoder FC(d→h) bias, [h]
    std::vector<float> dec_bn_gamma;  ///< decoder BatchNorm scale γ, [h]
    std::vector<float> dec_bn_beta;   ///< decoder BatchNorm shift β, [h]
    std::vector<float> dec_bn_mean;   ///< decoder BatchNorm running mean, [h]
    std::vector<float> dec_bn_var;    ///< decoder BatchNorm running variance, [h], >= 0
    std::vector<float> dec2_w;        ///< decoder FC(h→D) weight, [D][h]
    std::vector<float> dec2_b;        ///< decoder FC(h→D) bias, [D]
    float bn_eps = 1e-5f;             ///< BatchNorm epsilon added to the variance

    /// Throws kvcar::error naming the first bad field or tensor.
    void validate() const {
        const char* me = "autoencoder_params";
        detail::require_autoencoder_shape(me, width, hidden, latent, slope);
        require(std::isfinite(bn_eps) && bn_eps >= 0.0f,
                "autoencoder_params: bn_eps must be finite and not negative");
        const std::size_t D = std::size_t(width), h = std::size_t(hidden), d = std::size_t(latent);
        detail::require_tensor(me, "enc1_w", enc1_w, h * D, "hidden x width");
        detail::require_tensor(me, "enc1_b", enc1_b, h, "hidden");
        detail::require_tensor(me, "enc_bn_gamma", enc_bn_gamma, h, "hidden");
        detail::require_tensor(me, "enc_bn_beta", enc_bn_beta, h, "hidden");
        detail::require_tensor(me, "enc_bn_mean", enc_bn_mean, h, "hidden");
        detail::require_tensor(me, "enc_bn_var", enc_bn_var, h, "hidden");
        detail::require_tensor(me, "enc2_w", enc2_w, d * h, "latent x hidden");
        detail::require_tensor(me, "enc2_b", enc2_b, d, "latent");
        detail::require_tensor(me, "dec1_w", dec1_w, h * d, "hidden x latent");
        detail::require_tensor(me, "dec1_b", dec1_b, h, "hidden");
        detail::require_tensor(me, "dec_bn_gamma", dec_bn_gamma, h, "hidden");
        detail::require_tensor(me, "dec_bn_beta", dec_bn_beta, h, "hidden");
        detail::require_tensor(me, "dec_bn_mean", dec_bn_mean, h, "hidden");
        detail::require_tensor(me, "dec_bn_var", dec_bn_var, h, "hidden");
        detail::require_tensor(me, "dec2_w", dec2_w, D * h, "width x hidden");
        detail::require_tensor(me, "dec2_b", dec2_b, D, "width");
        for (std::size_t k = 0; k < h; ++k) {
            require(enc_bn_var[k] >= 0.0f && enc_bn_var[k] + bn_eps > 0.0f,
                    "autoencoder_params: enc_bn_var[" + std::to_string(k) +
                        "] is negative or zero with bn_eps");
            require(dec_bn_var[k] >= 0.0f && dec_bn_var[k] + bn_eps > 0.0f,
                    "autoencoder_params: dec_bn_var[" + std::to_string(k) +
                        "] is negative or zero with bn_eps");
        }
    }
};

/// An autoencoder ready for inference: BatchNorm folded into the first FC of each half, the
/// second FC of each half transposed (see autoencoder_codec). Owning, host side; `codec<T>()`
/// hands out a view valid while `*this` lives and its vectors are not resized.
struct folded_autoencoder {
    int width = 0;                ///< D: floats per group
    int hidden = 0;               ///< h: hidden units of each half
    int latent = 0;               ///< d: latent elements (<= max_latent_width)
    float slope = 0.01f;          ///< LeakyReLU negative slope
    std::vector<float> enc1_w;    ///< encoder FC(D→h) with BatchNorm folded in, [h][D]
    std::vector<float> enc1_b;    ///< its bias, [h]
    std::vector<float> enc2_wt;   ///< encoder FC(h→d) transposed, [h][d]
    std::vector<float> enc2_b;    ///< its bias, [d]
    std::vector<float> dec1_w;    ///< decoder FC(d→h) with BatchNorm folded in, [h][d]
    std::vector<float> dec1_b;    ///< its bias, [h]
    std::vector<float> dec2_wt;   ///< decoder FC(h→D) transposed, [h][D]
    std::vector<float> dec2_b;    ///< its bias, [D]

    /// Throws kvcar::error naming the first bad field or tensor (shape, size or non-finite value).
    void validate() const {
        const char* me = "folded_autoencoder";
        detail::require_autoencoder_shape(me, width, hidden, latent, slope);
        const std::size_t D = std::size_t(width), h = std::size_t(hidden), d = std::size_t(latent);
        detail::require_tensor(me, "enc1_w", enc1_w, h * D, "hidden x width");
        detail::require_tensor(me, "enc1_b", enc1_b, h, "hidden");
        detail::require_tensor(me, "enc2_wt", enc2_wt, h * d, "hidden x latent");
        detail::require_tensor(me, "enc2_b", enc2_b, d, "latent");
        detail::require_tensor(me, "dec1_w", dec1_w, h * d, "hidden x latent");
        detail::require_tensor(me, "dec1_b", dec1_b, h, "hidden");
        detail::require_tensor(me, "dec2_wt", dec2_wt, h * D, "hidden x width");
        detail::require_tensor(me, "dec2_b", dec2_b, D, "width");
    }

    /// Validates (throws kvcar::error like validate()) and returns a view over these vectors,
    /// storing the latent as T.
    template <float_element T = f16>
    autoencoder_codec<T> codec() const {
        validate();
        return autoencoder_codec<T>{width,          hidden,         latent,
                                    slope,          enc1_w.data(),  enc1_b.data(),
                                    enc2_wt.data(), enc2_b.data(),  dec1_w.data(),
                                    dec1_b.data(),  dec2_wt.data(), dec2_b.data()};
    }
};

namespace detail {

/// BatchNorm after an FC, y = γ (W x + b − mean) / sqrt(var + eps) + β, is the FC with each
/// row scaled by s = γ / sqrt(var + eps) and bias s (b − mean) + β. Computed in double.
inline void fold_batchnorm(const std::vector<float>& w, const std::vector<float>& b,
                           const std::vector<float>& gamma, const std::vector<float>& beta,
                           const std::vector<float>& mean, const std::vector<float>& var,
                           float eps, std::size_t n_in, std::vector<float>& w_out,
                           std::vector<float>& b_out) {
    const std::size_t h = b.size();
    w_out.resize(w.size());
    b_out.resize(h);
    for (std::size_t k = 0; k < h; ++k) {
        const double s = double(gamma[k]) / std::sqrt(double(var[k]) + double(eps));
        for (std::size_t i = 0; i < n_in; ++i) w_out[k * n_in + i] = float(s * w[k * n_in + i]);
        b_out[k] = float(s * (double(b[k]) - double(mean[k])) + double(beta[k]));
    }
}

/// [rows][cols] → [cols][rows].
inline std::vector<float> transposed(const std::vector<float>& m, std::size_t rows,
                                     std::size_t cols) {
    std::vector<float> t(m.size());
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) t[c * rows + r] = m[r * cols + c];
    return t;
}

}  // namespace detail

/// Validates `p` and folds it for inference.
inline folded_autoencoder fold(const autoencoder_params& p) {
    p.validate();
    const std::size_t D = std::size_t(p.width), h = std::size_t(p.hidden);
    const std::size_t d = std::size_t(p.latent);
    folded_autoencoder f;
    f.width = p.width;
    f.hidden = p.hidden;
    f.latent = p.latent;
    f.slope = p.slope;
    detail::fold_batchnorm(p.enc1_w, p.enc1_b, p.enc_bn_gamma, p.enc_bn_beta, p.enc_bn_mean,
                           p.enc_bn_var, p.bn_eps, D, f.enc1_w, f.enc1_b);
    detail::fold_batchnorm(p.dec1_w, p.dec1_b, p.dec_bn_gamma, p.dec_bn_beta, p.dec_bn_mean,
                           p.dec_bn_var, p.bn_eps, d, f.dec1_w, f.dec1_b);
    f.enc2_wt = detail::transposed(p.enc2_w, d, h);
    f.enc2_b = p.enc2_b;
    f.dec2_wt = detail::transposed(p.dec2_w, D, h);
    f.dec2_b = p.dec2_b;
    f.validate();  // folding can overflow (a tiny variance with a large gamma): say so here
    return f;
}

static_assert(latent_codec<autoencoder_codec<f16>>);

/// The autoencoder's registration (codec/traits.hpp): a file stores it folded (folded_autoencoder),
/// which is exactly what inference runs.
template <float_element T>
struct codec_registration<autoencoder_codec<T>> {
    /// The codec file's "codec" value.
    static constexpr const char* name = "autoencoder";
    /// How the device decodes a record: the two-layer MLP decoder.
    static constexpr codec_family family = codec_family::mlp;
    /// The codec storing its latent as U.
    template <float_element U>
    using view = autoencoder_codec<U>;
    /// The owning, folded parameters.
    using params = folded_autoencoder;
    /// A view over `p`'s vectors (not validated: see validate).
    static autoencoder_codec<float> view_of(const params& p) {
        return autoencoder_codec<float>{p.width,          p.hidden,         p.latent,
                                        p.slope,          p.enc1_w.data(),  p.enc1_b.data(),
                                        p.enc2_wt.data(), p.enc2_b.data(),  p.dec1_w.data(),
                                        p.dec1_b.data(),  p.dec2_wt.data(), p.dec2_b.data()};
    }
    /// D, d, the hidden width h and the LeakyReLU slope, then the eight folded tensors.
    template <class X, class F>
    static void members(X& x, F& f) {
        f.size("width", x.width);
        f.size("latent", x.latent);
        f.size("hidden", x.hidden);
        f.real("slope", x.slope);
        f.tensor("enc1_w", x.enc1_w, {x.hidden, x.width});
        f.tensor("enc1_b", x.enc1_b, {x.hidden});
        f.tensor("enc2_wt", x.enc2_wt, {x.hidden, x.latent});
        f.tensor("enc2_b", x.enc2_b, {x.latent});
        f.tensor("dec1_w", x.dec1_w, {x.hidden, x.latent});
        f.tensor("dec1_b", x.dec1_b, {x.hidden});
        f.tensor("dec2_wt", x.dec2_wt, {x.hidden, x.width});
        f.tensor("dec2_b", x.dec2_b, {x.width});
    }
    /// folded_autoencoder::validate.
    static void validate(const params& p) { p.validate(); }
    /// The view's shape and pointers.
    static void validate(const autoencoder_codec<float>& c) {
        require(c.hidden > 0, "autoencoder_codec: hidden must be positive (got " +
                                  std::to_string(c.hidden) + ")");
        for (const float* t : {c.enc1_w, c.enc1_b, c.enc2_wt, c.enc2_b, c.dec1_w, c.dec1_b,
                               c.dec2_wt, c.dec2_b})
            require(t != nullptr, "autoencoder_codec: a weight pointer is null");
    }
};

}  // namespace kvcar
