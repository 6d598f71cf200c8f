// examples/models/llama/llama_train.hpp — stage 2 of the KV-CAR paper's Algorithm 1 on the CPU
// for Llama: the frozen model (examples/models/llama/llama.hpp) with its K/V codecs inserted and
// the language-model loss differentiated down to every autoencoder's weights.
//
//   x = embed[token]
//   for each layer l:
//       h = RMSNorm_attn(x);  q = h W_qᵀ, k = h W_kᵀ, v = h W_vᵀ    (GQA: fewer K/V heads)
//       post-RoPE cache: k̂ = codec(RoPE(k)), attention on RoPE(q), k̂
//       pre-RoPE cache:  k̂ = codec(k),       attention on RoPE(q), RoPE(k̂)
//       v̂ = codec(v);  x += softmax(q k̂ᵀ / √hd, causal) v̂ · W_oᵀ
//       x += (silu(h₂ W_gateᵀ) ⊙ h₂ W_upᵀ) W_downᵀ,  h₂ = RMSNorm_ffn(x)
//   loss = mean_t CE(RMSNorm_final(x_t) · W_headᵀ, target_t) + λ Σ_{AE slots} mean |x̂ − x|
//
// This is what kvcar-perplexity computes through a kv_cache<any_codec, reuse_map> of the same
// codec file and the same --keys choice, so the loss trained here is the one evaluated there.
// RoPE is a rotation per pair of dimensions, so its backward is the rotation by the opposite
// angle; the cos/sin are computed exactly as kvcar::apply_rope computes them (float), so a float
// trainer rotates bit for bit as the model does. The codecs, what is trained, and reuse:
// examples/models/kv_train.hpp; the residual stream, the LM head and attention through the
// codecs: kv_trainer_base.hpp (shared with GPT-2).
//
// Costs, per window of n tokens: the LM head (2 · n · vocab · d_model multiply-adds, forward and
// input-gradient), the MLP (six n · d_model · d_ff), then the autoencoders; the activations of
// every layer are stored for one window.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/rope.hpp"

#include "examples/models/kv_train.hpp"
#include "examples/models/kv_trainer_base.hpp"
#include "examples/models/llama/llama.hpp"

namespace kvcar::examples {

namespace train_detail {

/// y = w ⊙ x · r with r = 1/√(mean x² + ε), keeping r per row (the same operations, in the same
/// order, as tensor_ops.hpp's rmsnorm).
template <class Real>
void rmsnorm_forward(Real* y, Real* rstd, const Real* x, const Real* w, int n, int dim, Real eps) {
    for (int t = 0; t < n; ++t) {
        const Real* xt = x + N(t, dim);
        Real sum_sq = 0;
        for (int i = 0; i < dim; ++i) sum_sq += xt[i] * xt[i];
        const Real r = Real(1) / std::sqrt(sum_sq / Real(dim) + eps);
        rstd[t] = r;
        Real* yt = y + N(t, dim);
        for (int i = 0; i < dim; ++i) yt[i] = w[i] * (xt[i] * r);
    }
}

/// dx += r (g − x̂ · mean(g · x̂)) with g = dy ⊙ w and x̂ = x r: the RMSNorm input gradient.
template <class Real>
void rmsnorm_backward(Real* dx, const Real* dy, const Real* x, const Real* rstd, const Real* w,
                      int n, int dim) {
    for (int t = 0; t < n; ++t) {
        const Real* dyt = dy + N(t, dim);
        const Real* xt = x + N(t, dim);
        const Real r = rstd[t];
        Real mgx = 0;
        for (int i = 0; i < dim; ++i) mgx += dyt[i] * w[i] * xt[i] * r;
        mgx /= Real(dim);
        Real* dxt = dx + N(t, dim);
        for (int i = 0; i < dim; ++i) dxt[i] += r * (dyt[i] * w[i] - xt[i] * r * mgx);
    }
}

/// The cos and sin of every (position, pair) angle for positions [0, n), as apply_rope
/// computes them.
struct rope_table {
    int rot = 0;  // rotated dimensions of a head
    rope_params params{};
    std::vector<float> cos, sin;  // [n][rot/2]

    void build(const rope_params& p, int head_dim, int n) {
        params = p;
        rot = rope_rotary_dim(p, head_dim);
        const std::size_t pairs = std::size_t(rot / 2);
        cos.assign(std::size_t(n) * pairs, 0.0f);
        sin.assign(std::size_t(n) * pairs, 0.0f);
        for (int t = 0; t < n; ++t)
            for (int i = 0; i < rot / 2; ++i) {
                const float angle = float(t) * rope_inv_freq(i, rot, p.theta);
                cos[std::size_t(t) * pairs + std::size_t(i)] = ::cosf(angle);
                sin[std::size_t(t) * pairs + std::size_t(i)] = ::sinf(angle);
            }
    }

    /// Rotates every head of rows [n][heads · hd] to its row's position; direction −1 undoes it
    /// (and is the backward of direction +1, the rotation's transpose).
    template <class Real>
    void rotate(Real* rows, int n, int heads, int hd, Real direction) const {
        const std::size_t pairs = std::size_t(rot / 2);
        for (int t = 0; t < n; ++t)
            for (int h = 0; h < heads; ++h) {
                Real* x = rows + N(t, heads * hd) + N(h, hd);
                for (int i = 0; i < rot / 2; ++i) {
                    const Real c = Real(cos[std::size_t(t) * pairs + std::size_t(i)]);
                    const Real s = direction * Real(sin[std::size_t(t) * pairs + std::size_t(i)]);
                    int a, b;
                    rope_pair_dims(params.style, rot, i, a, b);
                    const Real xa = x[a], xb = x[b];
                    x[a] = xa * c - xb * s;
                    x[b] = xb * c + xa * s;
                }
            }
    }
};

}  // namespace train_detail

/// Llama with a codec set's K/V codecs inserted: the loss of a window and its gradient with
/// respect to every autoencoder slot's (folded) weights; the model itself is frozen. The codecs
/// see the keys as the model's options say the cache stores them (model.options().keys).
template <std::floating_point Real>
class llama_kv_trainer : public kv_trainer_base<llama_kv_trainer<Real>, llama_config, Real> {
    using base = kv_trainer_base<llama_kv_trainer<Real>, llama_config, Real>;
    friend base;

public:
    /// Copies the model's weights (as Real) and the set's codecs; `set` must be made for the
    /// model's geometry.
    llama_kv_trainer(const llama_model& model, const io::codec_set& set, kv_finetune_params params)
        : base(model.config(), set, model.cache_geometry(), params, "llama_kv_trainer",
               model.weights().token_embedding, model.weights().lm_head),
          keys_(model.options().keys) {
        copy_weights(model.weights());
    }

    /// How the codecs see the keys: as the model's cache stores them (before or after RoPE).
    cached_keys keys() const { return keys_; }

private:
    struct layer_weights {
        std::vector<Real> attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
    };
    /// Activations of one layer for the current window.
    struct layer_acts {
        std::vector<Real> x_in, rstd1;   // [n][D], [n]: the attention's RMSNorm input
        // q [n][Q] (RoPE applied); k, v [n][KV], the codecs' inputs (k rotated if post-RoPE);
        // kh, vh, what attention reads (k̂ rotated if pre-RoPE); prob; att [n][Q].
        typename base::attention_acts attn;
        std::vector<Real> x_mid, rstd2;  // [n][D], [n]: the MLP's RMSNorm input
        std::vector<Real> gate, up;      // [n][F]: before the activation
    };

    using base::config_;
    using base::embed_;
    using base::n_;
    using base::threads_;
    using base::x_;
    using base::xf_;

    void copy_weights(const llama_weights& w) {
        using train_detail::to_real;
        final_norm_ = to_real<Real>(w.final_norm);
        for (const llama_layer& L : w.layers) {
            layer_weights R;
            R.attn_norm = to_real<Real>(L.attn_norm);
            R.wq = to_real<Real>(L.wq);
            R.wk = to_real<Real>(L.wk);
            R.wv = to_real<Real>(L.wv);
            R.wo = to_real<Real>(L.wo);
            R.ffn_norm = to_real<Real>(L.ffn_norm);
            R.w_gate = to_real<Real>(L.w_gate);
            R.w_up = to_real<Real>(L.w_up);
            R.w_down = to_real<Real>(L.w_down);
            layers_.push_back(std::move(R));
        }
    }

    void resize(int n) {
        if (!this->resize_window(n)) return;
        const llama_config& c = config_;
        const std::size_t T = std::size_t(n), D = std::size_t(c.d_model), F = std::size_t(c.d_ff);
        acts_.resize(std::size_t(c.n_layers));
        for (layer_acts& a : acts_) {
            a.x_in.assign(T * D, 0);
            a.x_mid.assign(T * D, 0);
            a.rstd1.assign(T, 0);
            a.rstd2.assign(T, 0);
            a.attn.assign(T, std::size_t(c.n_heads), std::size_t(c.n_kv_heads),
                          std::size_t(c.head_dim));
            a.gate.assign(T * F, 0);
            a.up.assign(T * F, 0);
        }
        rstdf_.assign(T, 0);
        rope_.build(c.rope, c.head_dim, n);
    }

    kv_finetune_loss forward(std::span<const int> inputs, std::span<const int> targets) {
        using namespace train_detail;
        const llama_config& c = config_;
        const int n = n_, D = c.d_model, F = c.d_ff, hd = c.head_dim;
        const int H = c.n_heads, KVH = c.n_kv_heads, Q = H * hd, KV = KVH * hd;
        const Real eps = Real(c.norm_eps);
        const bool post_rope = keys_ == cached_keys::post_rope;

        for (int t = 0; t < n; ++t)
            std::copy_n(&embed_[N(inputs[std::size_t(t)], D)], D, &x_[N(t, D)]);
        std::vector<Real> h(N(n, D)), proj(N(n, D)), act(N(n, F));
        double l1_sum = 0;
        for (int l = 0; l < c.n_layers; ++l) {
            const layer_weights& L = layers_[std::size_t(l)];
            layer_acts& A = acts_[std::size_t(l)];
            A.x_in = x_;

            rmsnorm_forward(h.data(), A.rstd1.data(), x_.data(), L.attn_norm.data(), n, D, eps);
            const Real* no_bias = nullptr;
            fc_forward(A.attn.q.data(), h.data(), L.wq.data(), no_bias, n, D, Q, threads_);
            fc_forward(A.attn.k.data(), h.data(), L.wk.data(), no_bias, n, D, KV, threads_);
            fc_forward(A.attn.v.data(), h.data(), L.wv.data(), no_bias, n, D, KV, threads_);
            rope_.rotate(A.attn.q.data(), n, H, hd, Real(1));
            if (post_rope) rope_.rotate(A.attn.k.data(), n, KVH, hd, Real(1));
            // A pre-RoPE cache stores k̂ unrotated: attention rotates what it reads.
            l1_sum += this->attention_forward(
                l, A.attn, H, KVH, hd,
                [&](std::vector<Real>& kh) {
                    if (!post_rope) rope_.rotate(kh.data(), n, KVH, hd, Real(1));
                });
            fc_forward(proj.data(), A.attn.att.data(), L.wo.data(), no_bias, n, Q, D, threads_);
            this->add_residual(x_, proj);
            A.x_mid = x_;

            rmsnorm_forward(h.data(), A.rstd2.data(), x_.data(), L.ffn_norm.data(), n, D, eps);
            fc_forward(A.gate.data(), h.data(), L.w_gate.data(), static_cast<const Real*>(nullptr),
                       n, D, F, threads_);
            fc_forward(A.up.data(), h.data(), L.w_up.data(), static_cast<const Real*>(nullptr), n,
                       D, F, threads_);
            for (std::size_t i = 0; i < act.size(); ++i) {
                const Real g = A.gate[i];
                act[i] = g / (Real(1) + std::exp(-g)) * A.up[i];
            }
            fc_forward(proj.data(), act.data(), L.w_down.data(), static_cast<const Real*>(nullptr),
                       n, F, D, threads_);
            this->add_residual(x_, proj);
        }

        rmsnorm_forward(xf_.data(), rstdf_.data(), x_.data(), final_norm_.data(), n, D, eps);
        return this->lm_loss(targets, l1_sum);
    }

    void backward(ae_gradients<Real>& grad, Real grad_scale) {
        using namespace train_detail;
        const llama_config& c = config_;
        const int n = n_, D = c.d_model, F = c.d_ff, hd = c.head_dim;
        const int H = c.n_heads, KVH = c.n_kv_heads, Q = H * hd, KV = KVH * hd;
        const bool post_rope = keys_ == cached_keys::post_rope;

        std::vector<Real> dxf(N(n, D)), dx(N(n, D), Real(0));
        this->lm_head_backward(dxf);
        rmsnorm_backward(dx.data(), dxf.data(), x_.data(), rstdf_.data(), final_norm_.data(), n, D);

        this->codecs_.begin_backward();
        std::vector<Real> dact(N(n, F)), dgate(N(n, F)), dup(N(n, F)), dh(N(n, D));
        std::vector<Real> datt(N(n, Q));
        typename base::attention_grads G{std::size_t(n), std::size_t(H), std::size_t(KVH),
                                         std::size_t(hd)};
        for (int l = c.n_layers - 1; l >= 0; --l) {
            const layer_weights& L = layers_[std::size_t(l)];
            const layer_acts& A = acts_[std::size_t(l)];

            // SwiGLU: x_out = x_mid + W_down (silu(gate) ⊙ up); silu' = σ (1 + g (1 − σ)).
            fc_backward_input(dact.data(), dx.data(), L.w_down.data(), n, F, D, threads_, false);
            for (std::size_t i = 0; i < dact.size(); ++i) {
                const Real g = A.gate[i];
                const Real sig = Real(1) / (Real(1) + std::exp(-g));
                dup[i] = dact[i] * g * sig;
                dgate[i] = dact[i] * A.up[i] * sig * (Real(1) + g * (Real(1) - sig));
            }
            fc_backward_input(dh.data(), dgate.data(), L.w_gate.data(), n, D, F, threads_, false);
            fc_backward_input(dh.data(), dup.data(), L.w_up.data(), n, D, F, threads_, true);
            rmsnorm_backward(dx.data(), dh.data(), A.x_mid.data(), A.rstd2.data(),
                             L.ffn_norm.data(), n, D);  // dx is now ∂L/∂x_mid

            // Attention: x_mid = x_in + W_o att.
            fc_backward_input(datt.data(), dx.data(), L.wo.data(), n, Q, D, threads_, false);
            this->attention_backward(
                l, datt, A.attn, G, H, KVH, hd, grad, grad_scale, [&](std::vector<Real>& d) {
                    if (!post_rope) rope_.rotate(d.data(), n, KVH, hd, Real(-1));
                });
            if (l == 0) break;  // nothing below layer 0's K/V is trained

            if (post_rope) rope_.rotate(G.dk.data(), n, KVH, hd, Real(-1));
            rope_.rotate(G.dq.data(), n, H, hd, Real(-1));
            fc_backward_input(dh.data(), G.dq.data(), L.wq.data(), n, D, Q, threads_, false);
            fc_backward_input(dh.data(), G.dk.data(), L.wk.data(), n, D, KV, threads_, true);
            fc_backward_input(dh.data(), G.dv.data(), L.wv.data(), n, D, KV, threads_, true);
            rmsnorm_backward(dx.data(), dh.data(), A.x_in.data(), A.rstd1.data(),
                             L.attn_norm.data(), n, D);
        }
    }

    cached_keys keys_;

    std::vector<Real> final_norm_;
    std::vector<layer_weights> layers_;

    train_detail::rope_table rope_;
    std::vector<layer_acts> acts_;
    std::vector<Real> rstdf_;  // the final RMSNorm's 1/rms
};

}  // namespace kvcar::examples
