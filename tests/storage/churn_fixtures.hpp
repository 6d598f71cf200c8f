// What the churn tests (churn.cpp on the host, churn.cu on the device) run over: every codec with
// random parameters, different in every slot, and the layouts, over a small geometry whose groups
// are 8 or 16 floats. Parameters live in a codec_zoo, which the codec views point into.
#pragma once

#include <kvcar/codec/any.hpp>
#include <kvcar/codec/autoencoder.hpp>
#include <kvcar/codec/identity.hpp>
#include <kvcar/codec/linear.hpp>
#include <kvcar/codec/quantized.hpp>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>

#include <cmath>
#include <cstdint>
#include <deque>
#include <random>
#include <string>
#include <vector>

namespace kvcar_churn {

/// Three layers of two KV heads of 8 floats: small enough for thousands of checked steps.
inline constexpr kvcar::kv_geometry geometry{.n_layers = 3, .n_kv_heads = 2, .head_dim = 8};

inline std::vector<float> normal(std::size_t n, std::mt19937& rng, float sigma) {
    std::normal_distribution<float> d(0.0f, sigma);
    std::vector<float> x(n);
    for (float& v : x) v = d(rng);
    return x;
}

/// Owns the parameters of the codecs it hands out (a deque: views stay valid as it grows).
class codec_zoo {
public:
    explicit codec_zoo(std::uint32_t seed) : rng_(seed) {}

    kvcar::linear_codec<kvcar::f16> linear(int width, int heads) {
        kvcar::linear_params& p = linear_.emplace_back();
        p.width = width;
        p.rank = width / 2 + 1;  // not a power of two either
        p.heads = heads;
        p.mean = normal(std::size_t(width), rng_, 0.3f);
        p.basis = normal(std::size_t(width) * std::size_t(p.rank), rng_, 0.5f);
        return p.codec<kvcar::f16>();
    }
    kvcar::autoencoder_codec<kvcar::f16> autoencoder(int width) {
        kvcar::folded_autoencoder& a = autoencoders_.emplace_back();
        a.width = width;
        a.hidden = 12;
        a.latent = width / 2;
        a.slope = 0.1f;
        const std::size_t D = std::size_t(width), h = 12, d = std::size_t(a.latent);
        const float s = 1.0f / std::sqrt(float(width));
        a.enc1_w = normal(h * D, rng_, s);
        a.enc1_b = normal(h, rng_, 0.1f);
        a.enc2_wt = normal(h * d, rng_, 0.3f);
        a.enc2_b = normal(d, rng_, 0.1f);
        a.dec1_w = normal(h * d, rng_, 0.4f);
        a.dec1_b = normal(h, rng_, 0.1f);
        a.dec2_wt = normal(h * D, rng_, 0.3f);
        a.dec2_b = normal(D, rng_, 0.1f);
        return a.codec<kvcar::f16>();
    }

private:
    std::mt19937 rng_;
    std::deque<kvcar::linear_params> linear_;
    std::deque<kvcar::folded_autoencoder> autoencoders_;
};

/// The codecs under test, one maker each: `make(zoo, width, heads, slot)` gives slot `slot`'s
/// codec for groups of `width` floats holding `heads` KV heads.
struct identity_f32 {
    static constexpr const char* name = "identity<f32>";
    static kvcar::identity_codec<float> make(codec_zoo&, int width, int, int) { return {width}; }
};
struct identity_f16 {
    static constexpr const char* name = "identity<f16>";
    static kvcar::identity_codec<kvcar::f16> make(codec_zoo&, int width, int, int) {
        return {width};
    }
};
struct identity_bf16 {
    static constexpr const char* name = "identity<bf16>";
    static kvcar::identity_codec<kvcar::bf16> make(codec_zoo&, int width, int, int) {
        return {width};
    }
};
struct linear_f16 {
    static constexpr const char* name = "linear<f16>";
    static kvcar::linear_codec<kvcar::f16> make(codec_zoo& z, int width, int heads, int) {
        return z.linear(width, heads);
    }
};
struct autoencoder_f16 {
    static constexpr const char* name = "autoencoder<f16>";
    static kvcar::autoencoder_codec<kvcar::f16> make(codec_zoo& z, int width, int, int) {
        return z.autoencoder(width);
    }
};
struct int8_identity {
    static constexpr const char* name = "quantized<identity<f32>, int8>";
    static kvcar::quantized_codec<kvcar::identity_codec<float>, std::int8_t> make(codec_zoo&,
                                                                                  int width, int,
                                                                                  int) {
        return kvcar::make_quantized<std::int8_t>(kvcar::identity_codec<float>{width});
    }
};
struct fp8_linear {
    static constexpr const char* name = "quantized<linear<f16>, fp8>";
    static kvcar::quantized_codec<kvcar::linear_codec<kvcar::f16>, kvcar::fp8_e4m3> make(
        codec_zoo& z, int width, int heads, int) {
        return kvcar::make_quantized<kvcar::fp8_e4m3>(z.linear(width, heads));
    }
};
struct int8_linear {
    static constexpr const char* name = "quantized<linear<f16>, int8>";
    static kvcar::quantized_codec<kvcar::linear_codec<kvcar::f16>, std::int8_t> make(
        codec_zoo& z, int width, int heads, int) {
        return kvcar::make_quantized<std::int8_t>(z.linear(width, heads));
    }
};
/// any_codec with a different kind in neighbouring slots, so records differ in size per slot.
struct any_mixed {
    static constexpr const char* name = "any_codec (mixed per slot)";
    static kvcar::any_codec make(codec_zoo& z, int width, int heads, int slot) {
        switch (slot % 6) {
        case 0: return kvcar::make_any_codec(identity_f16::make(z, width, heads, slot));
        case 1: return kvcar::make_any_codec(linear_f16::make(z, width, heads, slot));
        case 2: return kvcar::make_any_codec(int8_identity::make(z, width, heads, slot));
        case 3: return kvcar::make_any_codec(autoencoder_f16::make(z, width, heads, slot));
        case 4: return kvcar::make_any_codec(identity_f32::make(z, width, heads, slot));
        default: return kvcar::make_any_codec(fp8_linear::make(z, width, heads, slot));
        }
    }
};

/// A plain layout: heads_per_group 1 (a group per head) or 2 (the whole layer).
inline kvcar::dense_layout dense(int heads_per_group) {
    return kvcar::dense_layout(geometry, heads_per_group);
}
/// A reuse map with a chain (layer 2 -> layer 1 -> layer 0) for K and a single reuse for V.
inline kvcar::reuse_map reuse(int heads_per_group) {
    if (heads_per_group == 1) {
        return kvcar::reuse_map(geometry, 1, {{1, 0, 0, 0}, {2, 0, 1, 0}, {2, 1, 0, 1}},
                                {{2, 1, 1, 0}});
    }
    return kvcar::reuse_map(geometry, 2, {{1, 0, 0, 0}, {2, 0, 1, 0}}, {{2, 0, 0, 0}});
}

/// One codec per stored slot of `layout`, all different.
template <class Maker, class Layout>
auto make_codecs(codec_zoo& zoo, const Layout& layout) {
    using codec = decltype(Maker::make(zoo, 1, 1, 0));
    std::vector<codec> codecs;
    const int width = layout.heads_per_group() * geometry.head_dim;
    for (int slot = 0; slot < layout.n_slots(); ++slot)
        codecs.push_back(Maker::make(zoo, width, layout.heads_per_group(), slot));
    return codecs;
}

/// Calls f.template operator()<Maker>() for every codec maker.
template <class F>
void for_each_codec(F&& f) {
    f.template operator()<identity_f32>();
    f.template operator()<identity_f16>();
    f.template operator()<identity_bf16>();
    f.template operator()<linear_f16>();
    f.template operator()<autoencoder_f16>();
    f.template operator()<int8_identity>();
    f.template operator()<int8_linear>();
    f.template operator()<fp8_linear>();
    f.template operator()<any_mixed>();
}

}  // namespace kvcar_churn
