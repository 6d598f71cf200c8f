// examples/models/gpt2/gpt2_train.hpp — stage 2 of the KV-CAR paper's Algorithm 1 on the CPU:
// GPT-2 with its K/V codecs inserted, the model frozen, and the language-model loss
// differentiated down to every autoencoder's weights.
//
//   x = wte[token] + wpe[position]
//   for each layer l:
//       q, k, v = split(LN_1(x) · W_qkv + b_qkv)
//       k̂, v̂ = slot codecs applied to k, v          <- AE: FC → LeakyReLU → FC → z → FC → … → x̂
//       x += softmax(q k̂ᵀ / √hd, causal) v̂ · W_proj + b_proj
//       x += GELU(LN_2(x) · W_fc + b_fc) · W_out + b_out
//   loss = mean_t CE(LN_f(x_t) · wteᵀ, target_t) + λ Σ_{AE slots} mean |x̂ − x|
//
// This is exactly what kvcar-perplexity computes through a kv_cache<any_codec, reuse_map> built
// from the same codec file (attention reads every token's K/V, the current one's included, back
// through the codec), so the loss trained here is the one evaluated there. What is trained and
// how the codecs (reuse included) are differentiated: examples/models/kv_train.hpp; the residual
// stream, the LM head and attention through the codecs: kv_trainer_base.hpp (shared with Llama).
// The frozen GPT-2 only gets input gradients, never weight gradients.
//
// Costs, per window of n tokens: the LM head dominates (2 · n · vocab · d_model multiply-adds,
// forward and input-gradient), then the autoencoders; everything is stored for one window
// (O(n² · heads) for attention probabilities, O(n · d_ff) per layer for the MLP).
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/codec_file.hpp"

#include "examples/models/gpt2/gpt2.hpp"
#include "examples/models/kv_train.hpp"
#include "examples/models/kv_trainer_base.hpp"

namespace kvcar::examples {

namespace train_detail {
/// LayerNorm forward keeping x̂ = (x − μ)·rstd and rstd for the backward.
template <class Real>
void layernorm_forward(Real* y, Real* xhat, Real* rstd, const Real* x, const Real* w,
                       const Real* b, int n, int dim, Real eps) {
    for (int t = 0; t < n; ++t) {
        const Real* xt = x + N(t, dim);
        Real mean = 0;
        for (int i = 0; i < dim; ++i) mean += xt[i];
        mean /= Real(dim);
        Real var = 0;
        for (int i = 0; i < dim; ++i) var += (xt[i] - mean) * (xt[i] - mean);
        var /= Real(dim);
        const Real r = Real(1) / std::sqrt(var + eps);
        rstd[t] = r;
        for (int i = 0; i < dim; ++i) {
            const Real xh = (xt[i] - mean) * r;
            xhat[N(t, dim) + std::size_t(i)] = xh;
            y[N(t, dim) + std::size_t(i)] = xh * w[i] + b[i];
        }
    }
}

/// dx += rstd · (g − mean(g) − x̂ · mean(g · x̂)) with g = dy · w: the LayerNorm input gradient.
template <class Real>
void layernorm_backward(Real* dx, const Real* dy, const Real* xhat, const Real* rstd,
                        const Real* w, int n, int dim) {
    for (int t = 0; t < n; ++t) {
        const Real* dyt = dy + N(t, dim);
        const Real* xht = xhat + N(t, dim);
        Real mg = 0, mgx = 0;
        for (int i = 0; i < dim; ++i) {
            const Real g = dyt[i] * w[i];
            mg += g;
            mgx += g * xht[i];
        }
        mg /= Real(dim);
        mgx /= Real(dim);
        Real* dxt = dx + N(t, dim);
        for (int i = 0; i < dim; ++i) dxt[i] += rstd[t] * (dyt[i] * w[i] - mg - xht[i] * mgx);
    }
}

template <class Real>
Real gelu(Real x) {
    const Real c = Real(0.7978845608028654);
    return Real(0.5) * x * (Real(1) + std::tanh(c * (x + Real(0.044715) * x * x * x)));
}
/// d/dx of the tanh GELU: ½(1 + tanh u) + ½ x (1 − tanh² u) · c (1 + 3 · 0.044715 x²).
template <class Real>
Real gelu_grad(Real x) {
    const Real c = Real(0.7978845608028654);
    const Real th = std::tanh(c * (x + Real(0.044715) * x * x * x));
    return Real(0.5) * (Real(1) + th) +
           Real(0.5) * x * (Real(1) - th * th) * c * (Real(1) + Real(3 * 0.044715) * x * x);
}

}  // namespace train_detail

/// GPT-2 with a codec set's K/V codecs inserted: the loss of a window and its gradient with
/// respect to every autoencoder slot's (folded) weights; the model itself is frozen.
template <std::floating_point Real>
class gpt2_kv_trainer : public kv_trainer_base<gpt2_kv_trainer<Real>, gpt2_config, Real> {
    using base = kv_trainer_base<gpt2_kv_trainer<Real>, gpt2_config, Real>;
    friend base;

public:
    /// Copies the model's weights (as Real) and the set's codecs; `set` must be made for the
    /// model's geometry.
    gpt2_kv_trainer(const gpt2_model& model, const io::codec_set& set, kv_finetune_params params)
        : base(model.config(), set, model.cache_geometry(), params, "gpt2_kv_trainer",
               model.weights().token_embedding, model.weights().lm_head) {
        copy_weights(model.weights());
    }

private:
    struct layer_weights {
        std::vector<Real> ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b;
        std::vector<Real> ln2_w, ln2_b, fc_w, fc_b, out_w, out_b;
    };
    /// Activations of one layer for the current window.
    struct layer_acts {
        std::vector<Real> xhat1, rstd1;          // LN_1
        typename base::attention_acts attn;      // q, k, v [n][D] and what attention read
        std::vector<Real> xhat2, rstd2;          // LN_2
        std::vector<Real> ff_pre, ff_act;        // [n][F]
    };

    using base::config_;
    using base::embed_;
    using base::n_;
    using base::threads_;
    using base::x_;
    using base::xf_;

    void copy_weights(const gpt2_weights& w) {
        using train_detail::to_real;
        wpe_ = to_real<Real>(w.position_embedding);
        lnf_w_ = to_real<Real>(w.final_norm_weight);
        lnf_b_ = to_real<Real>(w.final_norm_bias);
        for (const gpt2_layer& L : w.layers) {
            layer_weights R;
            R.ln1_w = to_real<Real>(L.ln1_weight);
            R.ln1_b = to_real<Real>(L.ln1_bias);
            R.qkv_w = to_real<Real>(L.qkv_weight);
            R.qkv_b = to_real<Real>(L.qkv_bias);
            R.proj_w = to_real<Real>(L.proj_weight);
            R.proj_b = to_real<Real>(L.proj_bias);
            R.ln2_w = to_real<Real>(L.ln2_weight);
            R.ln2_b = to_real<Real>(L.ln2_bias);
            R.fc_w = to_real<Real>(L.fc_weight);
            R.fc_b = to_real<Real>(L.fc_bias);
            R.out_w = to_real<Real>(L.out_weight);
            R.out_b = to_real<Real>(L.out_bias);
            layers_.push_back(std::move(R));
        }
    }

    void resize(int n) {
        if (!this->resize_window(n)) return;
        const std::size_t D = std::size_t(config_.d_model), F = std::size_t(config_.d_ff);
        const std::size_t H = std::size_t(config_.n_heads), T = std::size_t(n);
        acts_.resize(std::size_t(config_.n_layers));
        for (layer_acts& a : acts_) {
            a.attn.assign(T, H, H, D / H);
            a.xhat1.assign(T * D, 0);
            a.xhat2.assign(T * D, 0);
            a.rstd1.assign(T, 0);
            a.rstd2.assign(T, 0);
            a.ff_pre.assign(T * F, 0);
            a.ff_act.assign(T * F, 0);
        }
        xhatf_.assign(T * D, 0);
        rstdf_.assign(T, 0);
    }

    kv_finetune_loss forward(std::span<const int> inputs, std::span<const int> targets) {
        using namespace train_detail;
        const gpt2_config& c = config_;
        const int n = n_, D = c.d_model, F = c.d_ff, H = c.n_heads;
        const int hd = c.head_dim();
        const Real eps = Real(c.norm_eps);

        for (int t = 0; t < n; ++t)
            for (int i = 0; i < D; ++i)
                x_[N(t, D) + std::size_t(i)] =
                    embed_[N(inputs[std::size_t(t)], D) + std::size_t(i)] +
                    wpe_[N(t, D) + std::size_t(i)];
        std::vector<Real> h(N(n, D)), qkv(N(n, 3 * D)), proj(N(n, D));
        double l1_sum = 0;
        for (int l = 0; l < c.n_layers; ++l) {
            const layer_weights& L = layers_[std::size_t(l)];
            layer_acts& A = acts_[std::size_t(l)];

            layernorm_forward(h.data(), A.xhat1.data(), A.rstd1.data(), x_.data(), L.ln1_w.data(),
                              L.ln1_b.data(), n, D, eps);
            fc_forward(qkv.data(), h.data(), L.qkv_w.data(), L.qkv_b.data(), n, D, 3 * D, threads_);
            for (int t = 0; t < n; ++t) {
                const Real* row = &qkv[N(t, 3 * D)];
                std::copy(row, row + D, &A.attn.q[N(t, D)]);
                std::copy(row + D, row + 2 * D, &A.attn.k[N(t, D)]);
                std::copy(row + 2 * D, row + 3 * D, &A.attn.v[N(t, D)]);
            }
            // GPT-2 caches keys as attention reads them (no RoPE): nothing to do on read.
            l1_sum += this->attention_forward(l, A.attn, H, H, hd, [](std::vector<Real>&) {});
            fc_forward(proj.data(), A.attn.att.data(), L.proj_w.data(), L.proj_b.data(), n, D, D,
                       threads_);
            this->add_residual(x_, proj);

            layernorm_forward(h.data(), A.xhat2.data(), A.rstd2.data(), x_.data(), L.ln2_w.data(),
                              L.ln2_b.data(), n, D, eps);
            fc_forward(A.ff_pre.data(), h.data(), L.fc_w.data(), L.fc_b.data(), n, D, F, threads_);
            for (std::size_t i = 0; i < A.ff_pre.size(); ++i) A.ff_act[i] = gelu(A.ff_pre[i]);
            fc_forward(proj.data(), A.ff_act.data(), L.out_w.data(), L.out_b.data(), n, F, D, threads_);
            this->add_residual(x_, proj);
        }

        layernorm_forward(xf_.data(), xhatf_.data(), rstdf_.data(), x_.data(), lnf_w_.data(),
                          lnf_b_.data(), n, D, eps);
        return this->lm_loss(targets, l1_sum);
    }

    void backward(ae_gradients<Real>& grad, Real grad_scale) {
        using namespace train_detail;
        const gpt2_config& c = config_;
        const int n = n_, D = c.d_model, F = c.d_ff, H = c.n_heads;
        const int hd = c.head_dim();

        // LM head and final LayerNorm.
        std::vector<Real> dxf(N(n, D)), dx(N(n, D), Real(0));
        this->lm_head_backward(dxf);
        layernorm_backward(dx.data(), dxf.data(), xhatf_.data(), rstdf_.data(), lnf_w_.data(), n, D);

        this->codecs_.begin_backward();
        std::vector<Real> dff(N(n, F)), dh(N(n, D)), datt(N(n, D)), dqkv(N(n, 3 * D));
        typename base::attention_grads G{std::size_t(n), std::size_t(H), std::size_t(H),
                                         std::size_t(hd)};
        for (int l = c.n_layers - 1; l >= 0; --l) {
            const layer_weights& L = layers_[std::size_t(l)];
            layer_acts& A = acts_[std::size_t(l)];

            // MLP: x_out = x_mid + W_out GELU(W_fc LN_2(x_mid)).
            fc_backward_input(dff.data(), dx.data(), L.out_w.data(), n, F, D, threads_, false);
            for (std::size_t i = 0; i < dff.size(); ++i) dff[i] *= gelu_grad(A.ff_pre[i]);
            fc_backward_input(dh.data(), dff.data(), L.fc_w.data(), n, D, F, threads_, false);
            layernorm_backward(dx.data(), dh.data(), A.xhat2.data(), A.rstd2.data(), L.ln2_w.data(),
                               n, D);  // dx is now ∂L/∂x_mid

            // Attention: x_mid = x_in + W_proj att.
            fc_backward_input(datt.data(), dx.data(), L.proj_w.data(), n, D, D, threads_, false);
            this->attention_backward(l, datt, A.attn, G, H, H, hd, grad, grad_scale,
                                     [](std::vector<Real>&) {});
            if (l == 0) break;  // nothing below layer 0's K/V is trained

            for (int t = 0; t < n; ++t) {
                Real* row = &dqkv[N(t, 3 * D)];
                std::copy_n(&G.dq[N(t, D)], D, row);
                std::copy_n(&G.dk[N(t, D)], D, row + D);
                std::copy_n(&G.dv[N(t, D)], D, row + 2 * D);
            }
            // qkv = W_qkv LN_1(x_in); x_in's gradient also has the residual path (dx).
            fc_backward_input(dh.data(), dqkv.data(), L.qkv_w.data(), n, D, 3 * D, threads_, false);
            layernorm_backward(dx.data(), dh.data(), A.xhat1.data(), A.rstd1.data(), L.ln1_w.data(),
                               n, D);
        }
    }


    std::vector<Real> wpe_, lnf_w_, lnf_b_;
    std::vector<layer_weights> layers_;

    std::vector<layer_acts> acts_;
    std::vector<Real> xhatf_, rstdf_;  // the final LayerNorm's x̂ and 1/σ
};

}  // namespace kvcar::examples
