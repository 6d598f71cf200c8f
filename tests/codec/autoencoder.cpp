// Tests for kvcar/codec/autoencoder.hpp: BatchNorm folding against the unfolded training-form
// network, exactly invertible autoencoders built by hand, and parameter validation.
#include "catch.hpp"

#include <kvcar/codec/autoencoder.hpp>

#include <cmath>
#include <cstddef>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

using namespace kvcar;

static_assert(kv_codec<autoencoder_codec<f16>>);
static_assert(latent_codec<autoencoder_codec<f16>>);
static_assert(latent_codec<autoencoder_codec<float>>);
static_assert(latent_codec<autoencoder_codec<bf16>>);
static_assert(!affine_latent_codec<autoencoder_codec<f16>>);  // its decoder is nonlinear
static_assert(std::is_trivially_copyable_v<autoencoder_codec<f16>>);

namespace {

using idx = std::size_t;

std::vector<float> normal(idx n, std::mt19937& rng, float mean, float sd) {
    std::normal_distribution<float> g(mean, sd);
    std::vector<float> v(n);
    for (float& x : v) x = g(rng);
    return v;
}
std::vector<float> uniform(idx n, std::mt19937& rng, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = u(rng);
    return v;
}

autoencoder_params random_autoencoder(int width, int hidden, int latent, std::uint32_t seed) {
    std::mt19937 rng(seed);
    autoencoder_params p;
    p.width = width;
    p.hidden = hidden;
    p.latent = latent;
    p.slope = 0.1f;
    const idx D = idx(width), h = idx(hidden), d = idx(latent);
    p.enc1_w = normal(h * D, rng, 0.0f, 1.0f / std::sqrt(float(D)));
    p.enc1_b = normal(h, rng, 0.0f, 0.3f);
    p.enc_bn_gamma = uniform(h, rng, 0.5f, 2.0f);
    p.enc_bn_beta = normal(h, rng, 0.0f, 0.5f);
    p.enc_bn_mean = normal(h, rng, 0.0f, 0.5f);
    p.enc_bn_var = uniform(h, rng, 0.2f, 3.0f);
    p.enc2_w = normal(d * h, rng, 0.0f, 1.0f / std::sqrt(float(h)));
    p.enc2_b = normal(d, rng, 0.0f, 0.3f);
    p.dec1_w = normal(h * d, rng, 0.0f, 1.0f / std::sqrt(float(d)));
    p.dec1_b = normal(h, rng, 0.0f, 0.3f);
    p.dec_bn_gamma = uniform(h, rng, 0.5f, 2.0f);
    p.dec_bn_beta = normal(h, rng, 0.0f, 0.5f);
    p.dec_bn_mean = normal(h, rng, 0.0f, 0.5f);
    p.dec_bn_var = uniform(h, rng, 0.2f, 3.0f);
    p.dec2_w = normal(D * h, rng, 0.0f, 1.0f / std::sqrt(float(h)));
    p.dec2_b = normal(D, rng, 0.0f, 0.3f);
    return p;
}

/// The training-form half, in double: FC → BatchNorm (running stats) → LeakyReLU → FC.
std::vector<double> reference_half(const std::vector<float>& w1, const std::vector<float>& b1,
                                   const std::vector<float>& gamma, const std::vector<float>& beta,
                                   const std::vector<float>& mean, const std::vector<float>& var,
                                   const std::vector<float>& w2, const std::vector<float>& b2,
                                   float eps, double slope, const std::vector<float>& in) {
    const idx n_in = in.size(), h = b1.size(), n_out = b2.size();
    std::vector<double> a(h);
    for (idx k = 0; k < h; ++k) {
        double pre = b1[k];
        for (idx i = 0; i < n_in; ++i) pre += double(w1[k * n_in + i]) * in[i];
        const double bn = gamma[k] * (pre - mean[k]) / std::sqrt(double(var[k]) + eps) + beta[k];
        a[k] = bn >= 0.0 ? bn : slope * bn;
    }
    std::vector<double> out(n_out);
    for (idx j = 0; j < n_out; ++j) {
        out[j] = b2[j];
        for (idx k = 0; k < h; ++k) out[j] += double(w2[j * h + k]) * a[k];
    }
    return out;
}

std::vector<double> reference_encode(const autoencoder_params& p, const std::vector<float>& x) {
    return reference_half(p.enc1_w, p.enc1_b, p.enc_bn_gamma, p.enc_bn_beta, p.enc_bn_mean,
                          p.enc_bn_var, p.enc2_w, p.enc2_b, p.bn_eps, p.slope, x);
}
std::vector<double> reference_decode(const autoencoder_params& p, const std::vector<float>& z) {
    return reference_half(p.dec1_w, p.dec1_b, p.dec_bn_gamma, p.dec_bn_beta, p.dec_bn_mean,
                          p.dec_bn_var, p.dec2_w, p.dec2_b, p.bn_eps, p.slope, z);
}

/// The exact autoencoder: [x; −x] through LeakyReLU, then (lrelu(x) − lrelu(−x)) / (1 + slope)
/// = x recovers x. With `map` (d = D, row-major) the latent is map·x, and the decoder's first FC
/// applies `inverse` to undo it. BatchNorm is set up to be an identity after folding.
autoencoder_params exact_autoencoder(int width, float slope, const std::vector<double>& map,
                                     const std::vector<double>& inverse, std::mt19937& rng) {
    const idx D = idx(width), h = 2 * D;
    autoencoder_params p;
    p.width = width;
    p.hidden = int(h);
    p.latent = width;
    p.slope = slope;
    p.bn_eps = 0.0f;
    p.enc1_w.assign(h * D, 0.0f);
    p.enc2_w.assign(D * h, 0.0f);
    p.dec1_w.assign(h * D, 0.0f);
    p.dec2_w.assign(D * h, 0.0f);
    const float unit = 1.0f / (1.0f + slope);
    for (idx i = 0; i < D; ++i) {
        p.enc1_w[i * D + i] = 1.0f;
        p.enc1_w[(D + i) * D + i] = -1.0f;
        for (idx j = 0; j < D; ++j) {
            const float m = float(map[j * D + i]);  // z_j = Σ_i map[j][i] x_i
            p.enc2_w[j * h + i] = m * unit;
            p.enc2_w[j * h + D + i] = -m * unit;
            const float v = float(inverse[i * D + j]);  // decoder hidden i = (map⁻¹ z)_i
            p.dec1_w[i * D + j] = v;
            p.dec1_w[(D + i) * D + j] = -v;
        }
        p.dec2_w[i * h + i] = unit;
        p.dec2_w[i * h + D + i] = -unit;
    }
    // BatchNorm with gamma 2, var 4 (eps 0) scales by exactly 1; its mean cancels FC1's bias.
    p.enc1_b = normal(h, rng, 0.0f, 1.0f);
    p.enc_bn_mean = p.enc1_b;
    p.dec1_b = normal(h, rng, 0.0f, 1.0f);
    p.dec_bn_mean = p.dec1_b;
    p.enc_bn_gamma.assign(h, 2.0f);
    p.dec_bn_gamma.assign(h, 2.0f);
    p.enc_bn_var.assign(h, 4.0f);
    p.dec_bn_var.assign(h, 4.0f);
    p.enc_bn_beta.assign(h, 0.0f);
    p.dec_bn_beta.assign(h, 0.0f);
    // The encoder adds an offset to the latent that the decoder's last bias takes away again:
    // z = map x + c, map⁻¹ z = x + map⁻¹ c, so dec2_b = −map⁻¹ c.
    p.enc2_b = normal(D, rng, 0.0f, 1.0f);
    p.dec2_b.assign(D, 0.0f);
    for (idx i = 0; i < D; ++i) {
        double s = 0.0;
        for (idx j = 0; j < D; ++j) s += inverse[i * D + j] * p.enc2_b[j];
        p.dec2_b[i] = float(-s);
    }
    return p;
}

std::vector<double> identity_matrix(int n) {
    std::vector<double> m(static_cast<idx>(n) * idx(n), 0.0);
    for (idx i = 0; i < idx(n); ++i) m[i * idx(n) + i] = 1.0;
    return m;
}

}  // namespace

TEST_CASE("autoencoder: folded forward equals the unfolded training-form network", "[codec]") {
    const autoencoder_params p = random_autoencoder(24, 40, 12, 1);
    const folded_autoencoder f = fold(p);
    const auto codec = f.codec<float>();
    REQUIRE(codec.group_width() == 24);
    REQUIRE(codec.latent_width() == 12);
    REQUIRE(codec.bytes_per_group() == 48);
    std::mt19937 rng(2);
    for (int trial = 0; trial < 20; ++trial) {
        const std::vector<float> x = normal(24, rng, 0.0f, 2.0f);
        std::vector<float> z(12), y(24);
        codec.to_latent(x.data(), z.data());
        const std::vector<double> z_ref = reference_encode(p, x);
        for (idx j = 0; j < 12; ++j) REQUIRE(z[j] == Approx(z_ref[j]).epsilon(1e-5).margin(1e-5));

        // The decoder on its own, from a latent that did not come from the encoder.
        const std::vector<float> zr = normal(12, rng, 0.0f, 2.0f);
        codec.from_latent(zr.data(), y.data());
        const std::vector<double> y_ref = reference_decode(p, zr);
        for (idx i = 0; i < 24; ++i) REQUIRE(y[i] == Approx(y_ref[i]).epsilon(1e-5).margin(1e-5));

        // encode/decode with f32 storage is exactly from_latent(to_latent(x)).
        std::vector<std::byte> record(codec.bytes_per_group());
        std::vector<float> direct(24), via(24);
        codec.from_latent(z.data(), direct.data());
        codec.encode(x.data(), record.data());
        codec.decode(record.data(), via.data());
        REQUIRE(via == direct);
    }
}

TEST_CASE("autoencoder: f16 storage rounds the latent once", "[codec]") {
    const folded_autoencoder f = fold(random_autoencoder(16, 20, 6, 3));
    const auto codec = f.codec<f16>();
    REQUIRE(codec.bytes_per_group() == 12);
    std::mt19937 rng(4);
    const std::vector<float> x = normal(16, rng, 0.0f, 1.0f);
    std::vector<float> z(6), y(16), want(16);
    std::vector<std::byte> record(codec.bytes_per_group());
    codec.to_latent(x.data(), z.data());
    codec.encode(x.data(), record.data());
    const f16* stored = reinterpret_cast<const f16*>(record.data());
    for (idx j = 0; j < 6; ++j) {
        REQUIRE(stored[j].bits == to_f16(z[j]).bits);
        z[j] = to_float(stored[j]);
    }
    codec.decode(record.data(), y.data());
    codec.from_latent(z.data(), want.data());
    REQUIRE(y == want);
}

TEST_CASE("autoencoder: an exact autoencoder reconstructs its input", "[codec]") {
    const int width = 16;
    for (const float slope : {0.01f, 0.2f}) {
        INFO("slope " << slope);
        std::mt19937 rng(5);
        const autoencoder_params p =
            exact_autoencoder(width, slope, identity_matrix(width), identity_matrix(width), rng);
        const folded_autoencoder f = fold(p);
        const auto codec = f.codec<float>();
        std::vector<std::byte> record(codec.bytes_per_group());
        std::vector<float> z(static_cast<idx>(width), 0.0f), y(static_cast<idx>(width), 0.0f);
        for (int trial = 0; trial < 50; ++trial) {
            const std::vector<float> x = normal(idx(width), rng, 0.0f, 3.0f);
            codec.to_latent(x.data(), z.data());
            for (idx i = 0; i < idx(width); ++i)
                REQUIRE(z[i] == Approx(x[i] + p.enc2_b[i]).epsilon(1e-5).margin(1e-5));
            codec.encode(x.data(), record.data());
            codec.decode(record.data(), y.data());
            for (idx i = 0; i < idx(width); ++i)
                REQUIRE(y[i] == Approx(x[i]).epsilon(1e-5).margin(1e-5));
        }
    }
}

TEST_CASE("autoencoder: an exact autoencoder with a known invertible latent map", "[codec]") {
    // map = diag(scale) · Q with Q orthogonal, so map⁻¹ = Qᵀ · diag(1 / scale).
    const int width = 12;
    const idx D = idx(width);
    std::mt19937 rng(6);
    std::vector<double> q(D * D);
    std::normal_distribution<double> g(0.0, 1.0);
    for (idx k = 0; k < D; ++k) {  // Gram-Schmidt rows
        for (idx i = 0; i < D; ++i) q[k * D + i] = g(rng);
        for (int pass = 0; pass < 2; ++pass)
            for (idx l = 0; l < k; ++l) {
                double d = 0.0;
                for (idx i = 0; i < D; ++i) d += q[k * D + i] * q[l * D + i];
                for (idx i = 0; i < D; ++i) q[k * D + i] -= d * q[l * D + i];
            }
        double n = 0.0;
        for (idx i = 0; i < D; ++i) n += q[k * D + i] * q[k * D + i];
        for (idx i = 0; i < D; ++i) q[k * D + i] /= std::sqrt(n);
    }
    std::vector<double> map(D * D), inverse(D * D);
    for (idx j = 0; j < D; ++j) {
        const double scale = 0.5 + 0.25 * double(j);
        for (idx i = 0; i < D; ++i) {
            map[j * D + i] = scale * q[j * D + i];
            inverse[i * D + j] = q[j * D + i] / scale;
        }
    }
    const autoencoder_params p = exact_autoencoder(width, 0.05f, map, inverse, rng);
    const folded_autoencoder f = fold(p);
    const auto codec = f.codec<float>();
    std::vector<std::byte> record(codec.bytes_per_group());
    std::vector<float> z(D), y(D);
    for (int trial = 0; trial < 50; ++trial) {
        const std::vector<float> x = normal(D, rng, 0.0f, 3.0f);
        codec.to_latent(x.data(), z.data());
        for (idx j = 0; j < D; ++j) {
            double want = p.enc2_b[j];
            for (idx i = 0; i < D; ++i) want += map[j * D + i] * x[i];
            REQUIRE(z[j] == Approx(want).epsilon(1e-5).margin(1e-5));
        }
        codec.encode(x.data(), record.data());
        codec.decode(record.data(), y.data());
        for (idx i = 0; i < D; ++i) REQUIRE(y[i] == Approx(x[i]).epsilon(1e-5).margin(1e-5));
    }
}

TEST_CASE("autoencoder_params: validation names the tensor and the problem", "[codec]") {
    const autoencoder_params good = random_autoencoder(8, 10, 4, 7);
    REQUIRE_NOTHROW(good.validate());
    REQUIRE_NOTHROW(fold(good));

    const std::pair<std::vector<float> autoencoder_params::*, const char*> tensors[] = {
        {&autoencoder_params::enc1_w, "enc1_w has 81 values but hidden x width is 80"},
        {&autoencoder_params::enc1_b, "enc1_b has 11 values but hidden is 10"},
        {&autoencoder_params::enc_bn_gamma, "enc_bn_gamma has 11 values"},
        {&autoencoder_params::enc_bn_beta, "enc_bn_beta has 11 values"},
        {&autoencoder_params::enc_bn_mean, "enc_bn_mean has 11 values"},
        {&autoencoder_params::enc_bn_var, "enc_bn_var has 11 values"},
        {&autoencoder_params::enc2_w, "enc2_w has 41 values but latent x hidden is 40"},
        {&autoencoder_params::enc2_b, "enc2_b has 5 values but latent is 4"},
        {&autoencoder_params::dec1_w, "dec1_w has 41 values but hidden x latent is 40"},
        {&autoencoder_params::dec1_b, "dec1_b has 11 values"},
        {&autoencoder_params::dec_bn_gamma, "dec_bn_gamma has 11 values"},
        {&autoencoder_params::dec_bn_beta, "dec_bn_beta has 11 values"},
        {&autoencoder_params::dec_bn_mean, "dec_bn_mean has 11 values"},
        {&autoencoder_params::dec_bn_var, "dec_bn_var has 11 values"},
        {&autoencoder_params::dec2_w, "dec2_w has 81 values but width x hidden is 80"},
        {&autoencoder_params::dec2_b, "dec2_b has 9 values but width is 8"},
    };
    for (const auto& [member, message] : tensors) {
        INFO(message);
        autoencoder_params p = good;
        (p.*member).push_back(0.5f);
        const autoencoder_params before = p;
        KVCAR_REQUIRE_ERROR(p.validate(), message);
        KVCAR_REQUIRE_ERROR(fold(p), message);
        REQUIRE(p.*member == before.*member);  // nothing changed by the failed fold
        p = good;
        (p.*member)[1] = NAN;
        const std::string name(message, std::string(message).find(' '));
        KVCAR_REQUIRE_ERROR(p.validate(), name + " is not finite");
    }

    autoencoder_params p = good;
    p.enc_bn_var[3] = -0.5f;
    KVCAR_REQUIRE_ERROR(fold(p), "enc_bn_var[3] is negative");
    p = good;
    p.dec_bn_var[0] = 0.0f;
    p.bn_eps = 0.0f;
    KVCAR_REQUIRE_ERROR(fold(p), "dec_bn_var[0] is negative or zero with bn_eps");
    p.bn_eps = 1e-5f;
    REQUIRE_NOTHROW(fold(p));  // zero variance is fine when eps keeps the scale finite
    p = good;
    p.bn_eps = -1.0f;
    KVCAR_REQUIRE_ERROR(p.validate(), "bn_eps must be finite and not negative");
    p = good;
    p.hidden = 0;
    KVCAR_REQUIRE_ERROR(p.validate(), "width, hidden and latent must be positive");
    p = good;
    p.slope = INFINITY;
    KVCAR_REQUIRE_ERROR(p.validate(), "slope is not finite");
    p = good;
    p.enc_bn_gamma[2] = 1e30f;  // folds to a scale float cannot hold
    p.enc_bn_var[2] = 1e-30f;
    p.bn_eps = 0.0f;
    KVCAR_REQUIRE_ERROR(fold(p), "folded_autoencoder: enc1_w is not finite");

    autoencoder_params wide;
    wide.width = 2;
    wide.hidden = 2;
    wide.latent = max_latent_width + 1;
    KVCAR_REQUIRE_ERROR(wide.validate(), "latent 1025 exceeds max_latent_width 1024");
}

TEST_CASE("folded_autoencoder: validation of hand-made folded parameters", "[codec]") {
    const folded_autoencoder good = fold(random_autoencoder(8, 10, 4, 8));
    REQUIRE_NOTHROW(good.validate());
    folded_autoencoder f = good;
    f.enc2_wt.pop_back();
    KVCAR_REQUIRE_ERROR(f.codec<f16>(),
                        "folded_autoencoder: enc2_wt has 39 values but hidden x latent is 40");
    f = good;
    f.dec2_wt.push_back(0.0f);
    KVCAR_REQUIRE_ERROR(f.validate(), "dec2_wt has 81 values but hidden x width is 80");
    f = good;
    f.latent = 0;
    KVCAR_REQUIRE_ERROR(f.validate(), "must be positive");
    // The transposed layout: enc2_wt[k][j] = enc2_w[j][k].
    const autoencoder_params p = random_autoencoder(8, 10, 4, 8);
    for (idx k = 0; k < 10; ++k)
        for (idx j = 0; j < 4; ++j) REQUIRE(good.enc2_wt[k * 4 + j] == p.enc2_w[j * 10 + k]);
}
