// kvcar/rope.hpp — rotary position embedding (RoPE), on host and device.
//
// RoPE rotates pairs of a head's dimensions by an angle proportional to the token's position,
// so that q(m) . k(n) depends only on m - n. kvcar needs it because a cache may store keys
// *before* RoPE (a codec fitted on un-rotated keys does not see the position mixed into the
// data, as in Palu); the attention kernel then rotates each decoded key by its position.
//
// The arithmetic follows Hugging Face's fp32 path exactly, so a reference model that rotates
// here gives the same floats as transformers does:
//   inv_freq[i] = 1 / theta^(2i / rotary_dim)          (float powf, float division)
//   angle       = float(position) * inv_freq[i]         (one float product)
//   cos, sin    = cosf(angle), sinf(angle)               (full-range float cos/sin)
// At position 32k the float angle is off from the exact one by up to ~4e-3 rad (half an ulp of
// 32768 plus the rounding of inv_freq times the position). Computing it in double would be
// "more accurate" and yet differ from every fp32 model by that much; matching the model wins.
#pragma once

#include <cmath>
#include <string>

#include "kvcar/common.hpp"

namespace kvcar {

/// Which dimensions of a head form a rotated pair.
enum class rope_style {
    half,         ///< Hugging Face `rotate_half` (Llama, Mistral, Qwen): pairs (i, i + rot/2)
    interleaved,  ///< llama2.c, GPT-J, Meta's original Llama: pairs (2i, 2i + 1)
};

/// "half" or "interleaved", as configs and messages spell the style.
inline constexpr const char* to_string(rope_style s) {
    return s == rope_style::half ? "half" : "interleaved";
}

/// How a model rotates its queries and keys by position (RoPE).
struct rope_params {
    float theta = 10000.0f;          ///< base of the frequencies (Llama 2: 1e4, Llama 3: 5e5)
    rope_style style = rope_style::half;  ///< which dimensions form a rotated pair
    int rotary_dim = 0;              ///< dimensions rotated, the first ones of the head; 0 = all
};

/// The number of leading dimensions `p` rotates in a head of `head_dim`.
KVCAR_HD inline int rope_rotary_dim(const rope_params& p, int head_dim) {
    return p.rotary_dim == 0 ? head_dim : p.rotary_dim;
}

/// Host-side check that `p` can rotate a head of `head_dim` (the device functions assume it).
inline void validate(const rope_params& p, int head_dim) {
    const int rot = rope_rotary_dim(p, head_dim);
    require(head_dim > 0, "rope: head_dim must be positive (got " + std::to_string(head_dim) + ")");
    require(p.rotary_dim >= 0 && rot <= head_dim,
            "rope: rotary_dim " + std::to_string(p.rotary_dim) + " is outside [0, head_dim = " +
                std::to_string(head_dim) + "]");
    require(rot % 2 == 0, "rope: the rotated width " + std::to_string(rot) +
                              " is odd; RoPE rotates pairs of dimensions");
    require(std::isfinite(p.theta) && p.theta > 0.0f,
            "rope: theta must be finite and positive (got " + std::to_string(p.theta) + ")");
}

/// Inverse frequency of pair `pair` (0 .. rot/2 - 1): theta^(-2 pair / rot), as HF computes it.
KVCAR_HD inline float rope_inv_freq(int pair, int rotary_dim, float theta) {
    return 1.0f / ::powf(theta, float(2 * pair) / float(rotary_dim));
}

/// Indices (a, b) of the two dimensions that pair `pair` rotates: x_a' = x_a cos - x_b sin,
/// x_b' = x_b cos + x_a sin.
KVCAR_HD inline void rope_pair_dims(rope_style style, int rotary_dim, int pair, int& a, int& b) {
    if (style == rope_style::half) {
        a = pair;
        b = pair + rotary_dim / 2;
    } else {
        a = 2 * pair;
        b = 2 * pair + 1;
    }
}

namespace detail {

/// Rotates every pair by `direction` (+1 or -1) times its angle.
KVCAR_HD inline void rope_rotate(float* x, int head_dim, int position, const rope_params& p,
                                 float direction) {
    const int rot = rope_rotary_dim(p, head_dim);
    const float pos = float(position);
    for (int i = 0; i < rot / 2; ++i) {
        const float angle = pos * rope_inv_freq(i, rot, p.theta);
        const float c = ::cosf(angle);
        const float s = direction * ::sinf(angle);  // sin(-t) = -sin(t) exactly in float
        int a, b;
        rope_pair_dims(p.style, rot, i, a, b);
        const float xa = x[a];
        const float xb = x[b];
        x[a] = xa * c - xb * s;
        x[b] = xb * c + xa * s;
    }
}

}  // namespace detail

/// Rotates one head vector `x` (head_dim floats, in place) to `position`. Dimensions past the
/// rotary width are left as they are. Preconditions: validate(p, head_dim) passes.
KVCAR_HD inline void apply_rope(float* x, int head_dim, int position, const rope_params& p) {
    detail::rope_rotate(x, head_dim, position, p, 1.0f);
}

/// Undoes apply_rope (rotation by -angle): recovers pre-RoPE keys from post-RoPE ones, e.g. to
/// calibrate a codec on un-rotated keys collected from a model that only exposes rotated ones.
KVCAR_HD inline void apply_rope_inverse(float* x, int head_dim, int position,
                                        const rope_params& p) {
    detail::rope_rotate(x, head_dim, position, p, -1.0f);
}

/// rope_element for a vector that `x(i)` reads element by element (a widening load of an fp16
/// or bf16 query, say), so the vector needs no fp32 copy first.
template <class Element>
KVCAR_HD inline float rope_element_of(const Element& x, int d, int head_dim, int position,
                                      const rope_params& p) {
    const int rot = rope_rotary_dim(p, head_dim);
    if (d >= rot) return x(d);
    // The pair that holds d, then its two dimensions as rope_pair_dims names them.
    const int pair = p.style == rope_style::half ? d % (rot / 2) : d / 2;
    int a, b;
    rope_pair_dims(p.style, rot, pair, a, b);
    const float angle = float(position) * rope_inv_freq(pair, rot, p.theta);
    const float c = ::cosf(angle), s = ::sinf(angle);
    return d == a ? x(a) * c - x(b) * s : x(b) * c + x(a) * s;
}

/// Element `d` of `x` rotated to `position`, read from the unrotated vector: what apply_rope
/// would leave in x[d] (x_a' = x_a cos - x_b sin, x_b' = x_b cos + x_a sin for each pair (a, b)).
/// For code that produces each element on its own, as a tile load does; x itself is not changed.
KVCAR_HD inline float rope_element(const float* x, int d, int head_dim, int position,
                                   const rope_params& p) {
    return rope_element_of([x](int i) { return x[i]; }, d, head_dim, position, p);
}

}  // namespace kvcar
