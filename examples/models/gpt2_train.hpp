// examples/models/gpt2_train.hpp — stage 2 of the KV-CAR paper's Algorithm 1 on the CPU: GPT-2
// with its K/V codecs inserted, the model frozen, and the language-model loss differentiated
// down to every autoencoder's weights.
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
// through the codec), so the loss trained here is the one evaluated there.
//
// What is trained: the autoencoder slots' weights, in their FOLDED form (BatchNorm merged into
// the FC before it, the form codec files store). At inference BatchNorm is a fixed affine map per
// hidden unit, so every folded network is some unfolded network with BatchNorm in eval mode and
// vice versa: training the folded FC weights is training the inference network itself, and the
// result is saved without loss. (What it gives up is training-mode BatchNorm's normalisation by
// batch statistics, which only changes the optimisation path, not the function class.)
//
// What is not trained but differentiated through: the frozen GPT-2 (only input gradients are
// computed, never weight gradients), identity slots and linear (PCA) slots, and K/V reuse (a
// reused group's gradient flows into the slot it reads). The stored latent is rounded to the
// slot's storage type in the forward pass (f16 by default), exactly as the cache rounds it, and
// the rounding passes gradients straight through (straight-through estimator); f32 storage is
// not rounded at all, so a double-precision gradient check sees the exact function.
//
// The true K/V that the L1 term compares against are the ones the codec-inserted model computes
// (they depend on earlier layers' codecs), and the gradient flows through both sides, as
// autograd would.
//
// Costs, per window of n tokens: the LM head dominates (2 · n · vocab · d_model multiply-adds,
// forward and input-gradient), then the autoencoders; everything is stored for one window
// (O(n² · heads) for attention probabilities, O(n · d_ff) per layer for the MLP).
//
// Threads split only independent output elements (rows of the vocabulary for logits, token rows
// for input gradients, output units for weight gradients), each element summed in a fixed order,
// so a run is bit-identical for any thread count.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/codec/any.hpp"
#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/layout/reuse_map.hpp"

#include "examples/models/gpt2.hpp"
#include "examples/models/tensor_ops.hpp"

namespace kvcar::examples {

/// One autoencoder as trained in stage 2: the folded network, every FC weight in PyTorch's
/// [out][in] layout (folded_autoencoder keeps the second FC of each half transposed; the
/// conversions below transpose it back and forth exactly).
template <std::floating_point Real>
struct folded_ae_weights {
    int width = 0, hidden = 0, latent = 0;
    Real slope = Real(0.01);
    std::vector<Real> enc1_w, enc1_b;  // [h][D], [h]  (BatchNorm folded in)
    std::vector<Real> enc2_w, enc2_b;  // [d][h], [d]
    std::vector<Real> dec1_w, dec1_b;  // [h][d], [h]  (BatchNorm folded in)
    std::vector<Real> dec2_w, dec2_b;  // [D][h], [D]

    static constexpr int tensor_count = 8;
    static constexpr const char* tensor_names[tensor_count] = {
        "enc1_w", "enc1_b", "enc2_w", "enc2_b", "dec1_w", "dec1_b", "dec2_w", "dec2_b"};

    std::vector<Real>& tensor(int i) {
        std::vector<Real>* t[tensor_count] = {&enc1_w, &enc1_b, &enc2_w, &enc2_b,
                                              &dec1_w, &dec1_b, &dec2_w, &dec2_b};
        return *t[i];
    }
    const std::vector<Real>& tensor(int i) const {
        return const_cast<folded_ae_weights*>(this)->tensor(i);
    }
    std::size_t parameter_count() const {
        std::size_t n = 0;
        for (int i = 0; i < tensor_count; ++i) n += tensor(i).size();
        return n;
    }

    /// Same shape, every value zero: a gradient accumulator.
    folded_ae_weights zeros_like() const {
        folded_ae_weights z = *this;
        for (int i = 0; i < tensor_count; ++i) std::fill(z.tensor(i).begin(), z.tensor(i).end(), Real(0));
        return z;
    }

    static folded_ae_weights from_folded(const folded_autoencoder& f) {
        f.validate();
        const std::size_t D = std::size_t(f.width), h = std::size_t(f.hidden);
        const std::size_t d = std::size_t(f.latent);
        const auto cast = [](const std::vector<float>& v) {
            return std::vector<Real>(v.begin(), v.end());
        };
        folded_ae_weights w;
        w.width = f.width;
        w.hidden = f.hidden;
        w.latent = f.latent;
        w.slope = Real(f.slope);
        w.enc1_w = cast(f.enc1_w);
        w.enc1_b = cast(f.enc1_b);
        w.enc2_w = cast(detail::transposed(f.enc2_wt, h, d));  // [h][d] → [d][h]
        w.enc2_b = cast(f.enc2_b);
        w.dec1_w = cast(f.dec1_w);
        w.dec1_b = cast(f.dec1_b);
        w.dec2_w = cast(detail::transposed(f.dec2_wt, h, D));  // [h][D] → [D][h]
        w.dec2_b = cast(f.dec2_b);
        return w;
    }

    /// Back to the inference form (floats; validated, so a diverged training throws here).
    folded_autoencoder to_folded() const {
        const std::size_t D = std::size_t(width), h = std::size_t(hidden), d = std::size_t(latent);
        const auto cast = [](const std::vector<Real>& v) {
            return std::vector<float>(v.begin(), v.end());
        };
        folded_autoencoder f;
        f.width = width;
        f.hidden = hidden;
        f.latent = latent;
        f.slope = float(slope);
        f.enc1_w = cast(enc1_w);
        f.enc1_b = cast(enc1_b);
        f.enc2_wt = detail::transposed(cast(enc2_w), d, h);
        f.enc2_b = cast(enc2_b);
        f.dec1_w = cast(dec1_w);
        f.dec1_b = cast(dec1_b);
        f.dec2_wt = detail::transposed(cast(dec2_w), D, h);
        f.dec2_b = cast(dec2_b);
        f.validate();
        return f;
    }
};

/// The gradient of every trained autoencoder, in the trainer's order.
template <std::floating_point Real>
using ae_gradients = std::vector<folded_ae_weights<Real>>;

struct kv_finetune_params {
    /// λ: weight of the reconstruction term, Σ over autoencoder slots of mean |x̂ − x| (the
    /// paper's "scaled L1"; it does not say which scale). 0 trains on the LM loss alone.
    float l1_weight = 0.1f;
    int threads = 0;  ///< 0: every hardware thread
};

/// The loss of one window, split into its terms: total = ce + l1_weight · l1.
struct kv_finetune_loss {
    double total = 0;
    double ce = 0;  ///< mean cross-entropy per target token (nats)
    double l1 = 0;  ///< Σ over autoencoder slots of mean |x̂ − x|, unweighted
};

namespace train_detail {

/// Σ a[i] b[i] with eight independent partial sums (see tensor_ops.hpp's dot).
template <class Real>
Real dot(const Real* a, const Real* b, int n) {
    Real part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
    for (; i < n; ++i) part[i % 8] += a[i] * b[i];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

inline std::size_t N(long long a, long long b) { return std::size_t(a) * std::size_t(b); }

/// y[t][o] = Σ_i x[t][i] W[o][i] + b[o] (W [out][in], b may be null). Threads split the output
/// units: each streams its slice of W once for all n rows (the LM head's 50k rows, above all).
template <class Real>
void fc_forward(Real* y, const Real* x, const Real* W, const Real* b, int n, int in, int out,
                int threads) {
    parallel_for(out, threads, double(n) * in * out, [&](int o0, int o1) {
        for (int o = o0; o < o1; ++o) {
            const Real* row = W + N(o, in);
            const Real bias = b ? b[o] : Real(0);
            for (int t = 0; t < n; ++t) y[N(t, out) + std::size_t(o)] = dot(x + N(t, in), row, in) + bias;
        }
    });
}

/// dx[t][i] (+)= Σ_o dy[t][o] W[o][i]. Threads split the rows t; W is walked in blocks of 64
/// rows, each block used for all of a thread's rows while it is in cache, so a large W (the LM
/// head) is streamed once per thread, not once per row.
template <class Real>
void fc_backward_input(Real* dx, const Real* dy, const Real* W, int n, int in, int out,
                       int threads, bool accumulate) {
    parallel_for(n, threads, double(n) * in * out, [&](int t0, int t1) {
        if (!accumulate)
            for (int t = t0; t < t1; ++t) std::fill(dx + N(t, in), dx + N(t + 1, in), Real(0));
        constexpr int block = 64;
        for (int o0 = 0; o0 < out; o0 += block) {
            const int o1 = std::min(out, o0 + block);
            for (int t = t0; t < t1; ++t) {
                Real* dxt = dx + N(t, in);
                const Real* dyt = dy + N(t, out);
                for (int o = o0; o < o1; ++o) {
                    const Real g = dyt[o];
                    if (g == Real(0)) continue;
                    const Real* row = W + N(o, in);
                    for (int i = 0; i < in; ++i) dxt[i] += g * row[i];
                }
            }
        }
    });
}

/// dW[o][i] += s Σ_t dy[t][o] x[t][i], db[o] += s Σ_t dy[t][o] (rows in order; s = scale).
/// Parallel over o.
template <class Real>
void fc_backward_weight(Real* dW, Real* db, const Real* dy, const Real* x, int n, int in, int out,
                        Real scale, int threads) {
    parallel_for(out, threads, double(n) * in * out, [&](int o0, int o1) {
        for (int o = o0; o < o1; ++o) {
            Real* dwo = dW + N(o, in);
            Real bias = 0;
            for (int t = 0; t < n; ++t) {
                const Real g = scale * dy[N(t, out) + std::size_t(o)];
                bias += g;
                if (g == Real(0)) continue;
                const Real* xt = x + N(t, in);
                for (int i = 0; i < in; ++i) dwo[i] += g * xt[i];
            }
            db[o] += bias;
        }
    });
}

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

template <class Real>
Real lrelu(Real x, Real slope) {
    return x >= Real(0) ? x : slope * x;
}

template <class Real>
std::vector<Real> to_real(const std::vector<float>& v) {
    return std::vector<Real>(v.begin(), v.end());
}

}  // namespace train_detail

/// GPT-2 with a codec set's K/V codecs inserted: the loss of a window and its gradient with
/// respect to every autoencoder slot's (folded) weights; the model itself is frozen.
template <std::floating_point Real>
class gpt2_kv_trainer {
public:
    /// Copies the model's weights (as Real) and the set's codecs; `set` must be made for the
    /// model's geometry.
    gpt2_kv_trainer(const gpt2_model& model, const io::codec_set& set, kv_finetune_params params)
        : config_(model.config()), set_(set), layout_(checked_layout(model, set)), params_(params) {
        require(std::isfinite(params.l1_weight) && params.l1_weight >= 0.0f,
                "gpt2_kv_trainer: l1_weight must be finite and not negative");
        require(params.threads >= 0, "gpt2_kv_trainer: threads must not be negative");
        threads_ = resolve_threads(params.threads);
        copy_weights(model.weights());
        for (int s = 0; s < layout_.num_slots(); ++s) {
            const slot_owner o = layout_.owner(s);
            const io::slot_codec* c = set_.find(o.layer, o.group, o.kind);
            slot_state st;
            st.owner = o;
            st.codec = c->codec;
            st.storage = c->storage;
            st.width = layout_.group_width();
            st.latent = c->latent_width();
            if (c->storage != latent_storage::f32) {
                // The stored latent's round trip: an identity codec of the latent's width and
                // the slot's storage rounds (or quantizes) exactly as the cache does.
                st.rounding.kind = codec_kind::identity;
                st.rounding.storage = c->storage;
                st.rounding.width = st.rounding.latent = st.latent;
                st.rounding.validate();
                st.record.resize(st.rounding.bytes_per_group());
            }
            if (c->codec == codec_kind::linear) {
                st.mean = train_detail::to_real<Real>(c->linear.mean);
                st.basis = train_detail::to_real<Real>(c->linear.basis);
            } else if (c->codec == codec_kind::autoencoder) {
                st.ae = int(aes_.size());
                aes_.push_back(folded_ae_weights<Real>::from_folded(c->autoencoder));
                ae_slots_.push_back(o);
            }
            slots_.push_back(std::move(st));
        }
        // reuse_map guarantees that a reused group reads a slot stored by an earlier layer, so
        // the forward pass has computed it by then, and the backward pass meets every reader
        // of a slot before the slot's own layer.
    }

    const gpt2_config& config() const { return config_; }
    const kv_finetune_params& params() const { return params_; }
    /// The trained autoencoders (one per autoencoder slot, in slot order) — an optimizer
    /// updates these in place.
    std::vector<folded_ae_weights<Real>>& autoencoders() { return aes_; }
    const std::vector<folded_ae_weights<Real>>& autoencoders() const { return aes_; }
    /// Which slot autoencoders()[i] is.
    slot_owner autoencoder_slot(int i) const { return ae_slots_.at(std::size_t(i)); }

    /// A zero gradient shaped like autoencoders().
    ae_gradients<Real> zero_gradient() const {
        ae_gradients<Real> g;
        for (const auto& a : aes_) g.push_back(a.zeros_like());
        return g;
    }

    /// The loss of `inputs` (one sequence from position 0) predicting `targets` (same length:
    /// targets[t] is the token after inputs[t]). With `gradient` (shaped like zero_gradient()),
    /// adds `gradient_scale` · ∂loss/∂weights into it, so windows of a batch accumulate.
    kv_finetune_loss loss(std::span<const int> inputs, std::span<const int> targets,
                          ae_gradients<Real>* gradient = nullptr, Real gradient_scale = Real(1)) {
        const gpt2_config& c = config_;
        const std::string who = "gpt2_kv_trainer";
        check_chunk(who, inputs, 0, c.vocab_size, c.max_positions, INT_MAX);
        require(targets.size() == inputs.size(),
                who + ": " + std::to_string(targets.size()) + " targets for " +
                    std::to_string(inputs.size()) + " inputs (need one target per input)");
        for (std::size_t i = 0; i < targets.size(); ++i)
            require(targets[i] >= 0 && targets[i] < c.vocab_size,
                    who + ": target " + std::to_string(i) + " has id " +
                        std::to_string(targets[i]) + ", outside the vocabulary [0, " +
                        std::to_string(c.vocab_size) + ")");
        if (gradient) {
            require(gradient->size() == aes_.size(),
                    who + ": the gradient has " + std::to_string(gradient->size()) +
                        " autoencoders but the trainer has " + std::to_string(aes_.size()));
            for (std::size_t a = 0; a < aes_.size(); ++a)
                for (int i = 0; i < folded_ae_weights<Real>::tensor_count; ++i)
                    require((*gradient)[a].tensor(i).size() == aes_[a].tensor(i).size(),
                            who + ": gradient of autoencoder " + std::to_string(a) + "'s " +
                                folded_ae_weights<Real>::tensor_names[i] + " is misshapen");
        }
        const int n = int(inputs.size());
        resize(n);
        kv_finetune_loss result = forward(inputs, targets);
        if (gradient) backward(*gradient, gradient_scale);
        return result;
    }

    /// `set` (as given to the constructor) with every autoencoder slot replaced by the trained
    /// weights; throws if a weight is not finite.
    io::codec_set trained_codec_set() const {
        io::codec_set out = set_;
        for (std::size_t a = 0; a < aes_.size(); ++a) {
            const slot_owner o = ae_slots_[a];
            for (io::slot_codec& s : out.slots)
                if (s.layer == o.layer && s.group == o.group && s.kind == o.kind)
                    s.autoencoder = aes_[a].to_folded();
        }
        out.validate();
        return out;
    }

private:
    struct layer_weights {
        std::vector<Real> ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b;
        std::vector<Real> ln2_w, ln2_b, fc_w, fc_b, out_w, out_b;
    };
    /// Activations of one layer for the current window.
    struct layer_acts {
        std::vector<Real> xhat1, rstd1;    // LN_1
        std::vector<Real> q, k, v;         // [n][D]: the true projections
        std::vector<Real> kh, vh;          // [n][D]: what attention reads (through the codecs)
        std::vector<Real> prob;            // [H][n][n] softmax rows (causal; upper part unused)
        std::vector<Real> att;             // [n][D]
        std::vector<Real> xhat2, rstd2;    // LN_2
        std::vector<Real> ff_pre, ff_act;  // [n][F]
    };
    /// One stored slot: its codec and the activations of the current window.
    struct slot_state {
        slot_owner owner{};
        codec_kind codec = codec_kind::identity;
        latent_storage storage = latent_storage::f16;
        int width = 0, latent = 0;
        int ae = -1;             // index into aes_ for an autoencoder
        any_codec rounding{};    // identity of the latent's width and storage (unless f32)
        std::vector<std::byte> record;
        std::vector<Real> mean, basis;                 // linear: μ [D], P [D][d]
        std::vector<Real> x, y, dy;                    // [n][D]: input, reconstruction, dL/dy
        std::vector<Real> a1, h1, z, a2, h2, da, dz;   // autoencoder intermediates
        std::vector<Real> dh;                          // [n][h] scratch
    };

    static reuse_map checked_layout(const gpt2_model& model, const io::codec_set& set) {
        const kv_geometry want = model.cache_geometry();
        require(set.geometry.n_layers == want.n_layers && set.geometry.n_kv_heads == want.n_kv_heads &&
                    set.geometry.head_dim == want.head_dim,
                "gpt2_kv_trainer: the codec set is made for " + geometry_string(set.geometry) +
                    " but the model is " + geometry_string(want));
        set.validate();
        return set.layout();
    }

    void copy_weights(const gpt2_weights& w) {
        using train_detail::to_real;
        wte_ = to_real<Real>(w.token_embedding);
        wpe_ = to_real<Real>(w.position_embedding);
        head_ = w.lm_head.empty() ? std::vector<Real>{} : to_real<Real>(w.lm_head);
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

    const std::vector<Real>& head() const { return head_.empty() ? wte_ : head_; }

    void resize(int n) {
        if (n == n_) return;
        n_ = n;
        const std::size_t D = std::size_t(config_.d_model), F = std::size_t(config_.d_ff);
        const std::size_t H = std::size_t(config_.n_heads), T = std::size_t(n);
        acts_.resize(std::size_t(config_.n_layers));
        for (layer_acts& a : acts_) {
            for (auto* v : {&a.xhat1, &a.q, &a.k, &a.v, &a.kh, &a.vh, &a.att, &a.xhat2})
                v->assign(T * D, 0);
            a.rstd1.assign(T, 0);
            a.rstd2.assign(T, 0);
            a.prob.assign(H * T * T, 0);
            a.ff_pre.assign(T * F, 0);
            a.ff_act.assign(T * F, 0);
        }
        xin_.assign(std::size_t(config_.n_layers) * T * D, 0);
        xmid_.assign(std::size_t(config_.n_layers) * T * D, 0);
        x_.assign(T * D, 0);
        xhatf_.assign(T * D, 0);
        rstdf_.assign(T, 0);
        xf_.assign(T * D, 0);
        dlogits_.assign(T * std::size_t(config_.vocab_size), 0);
        for (slot_state& s : slots_) {
            const std::size_t W = std::size_t(s.width);
            for (auto* v : {&s.x, &s.y, &s.dy}) v->assign(T * W, 0);
            if (s.codec == codec_kind::autoencoder) {
                const std::size_t h = std::size_t(aes_[std::size_t(s.ae)].hidden);
                for (auto* v : {&s.a1, &s.h1, &s.a2, &s.h2, &s.da, &s.dh}) v->assign(T * h, 0);
            }
            s.z.assign(T * std::size_t(s.latent), 0);
            s.dz.assign(T * std::size_t(s.latent), 0);
        }
    }

    /// The stored latent's round trip through the slot's storage type (in place, n rows).
    void round_latent(slot_state& s, std::vector<Real>& z, int n) {
        if (s.storage == latent_storage::f32) return;
        std::vector<float> row(std::size_t(s.latent));
        for (int t = 0; t < n; ++t) {
            Real* zt = z.data() + train_detail::N(t, s.latent);
            for (int j = 0; j < s.latent; ++j) row[std::size_t(j)] = float(zt[j]);
            s.rounding.encode(row.data(), s.record.data());
            s.rounding.decode(s.record.data(), row.data());
            for (int j = 0; j < s.latent; ++j) zt[j] = Real(row[std::size_t(j)]);
        }
    }

    /// x̂ = codec(x) for the slot's n rows in s.x, into s.y, keeping what the backward needs.
    void slot_forward(slot_state& s, int n) {
        using namespace train_detail;
        const int W = s.width;
        if (s.codec == codec_kind::identity) {
            s.z = s.x;
            round_latent(s, s.z, n);
            s.y = s.z;
        } else if (s.codec == codec_kind::linear) {
            // z = Pᵀ(x − μ), x̂ = μ + P z.
            const int d = s.latent;
            for (int t = 0; t < n; ++t) {
                Real* zt = s.z.data() + N(t, d);
                std::fill(zt, zt + d, Real(0));
                for (int i = 0; i < W; ++i) {
                    const Real c = s.x[N(t, W) + std::size_t(i)] - s.mean[std::size_t(i)];
                    const Real* row = s.basis.data() + N(i, d);
                    for (int j = 0; j < d; ++j) zt[j] += row[j] * c;
                }
            }
            round_latent(s, s.z, n);
            for (int t = 0; t < n; ++t)
                for (int i = 0; i < W; ++i)
                    s.y[N(t, W) + std::size_t(i)] =
                        s.mean[std::size_t(i)] + train_detail::dot(s.basis.data() + N(i, d), s.z.data() + N(t, d), d);
        } else {
            const folded_ae_weights<Real>& a = aes_[std::size_t(s.ae)];
            const int h = a.hidden, d = a.latent;
            fc_forward(s.a1.data(), s.x.data(), a.enc1_w.data(), a.enc1_b.data(), n, W, h, threads_);
            for (std::size_t i = 0; i < s.a1.size(); ++i) s.h1[i] = lrelu(s.a1[i], a.slope);
            fc_forward(s.z.data(), s.h1.data(), a.enc2_w.data(), a.enc2_b.data(), n, h, d, threads_);
            round_latent(s, s.z, n);
            fc_forward(s.a2.data(), s.z.data(), a.dec1_w.data(), a.dec1_b.data(), n, d, h, threads_);
            for (std::size_t i = 0; i < s.a2.size(); ++i) s.h2[i] = lrelu(s.a2[i], a.slope);
            fc_forward(s.y.data(), s.h2.data(), a.dec2_w.data(), a.dec2_b.data(), n, h, W, threads_);
        }
    }

    /// Given s.dy = ∂L/∂x̂ (attention's and the L1 term's), adds scale · the autoencoder's weight
    /// gradient to `grad` and writes ∂L/∂x into dx (n rows of the slot's width, overwritten).
    void slot_backward(slot_state& s, int n, std::vector<Real>& dx, ae_gradients<Real>& grad,
                       Real scale) {
        using namespace train_detail;
        const int W = s.width;
        if (s.codec == codec_kind::identity) {
            dx = s.dy;  // the storage rounding passes gradients straight through
            return;
        }
        if (s.codec == codec_kind::linear) {
            // ∂x = P Pᵀ ∂x̂ (μ cancels).
            const int d = s.latent;
            for (int t = 0; t < n; ++t) {
                Real* dzt = s.dz.data() + N(t, d);
                std::fill(dzt, dzt + d, Real(0));
                for (int i = 0; i < W; ++i) {
                    const Real g = s.dy[N(t, W) + std::size_t(i)];
                    const Real* row = s.basis.data() + N(i, d);
                    for (int j = 0; j < d; ++j) dzt[j] += row[j] * g;
                }
                for (int i = 0; i < W; ++i)
                    dx[N(t, W) + std::size_t(i)] = train_detail::dot(s.basis.data() + N(i, d), dzt, d);
            }
            return;
        }
        const folded_ae_weights<Real>& a = aes_[std::size_t(s.ae)];
        folded_ae_weights<Real>& g = grad[std::size_t(s.ae)];
        const int h = a.hidden, d = a.latent;
        fc_backward_weight(g.dec2_w.data(), g.dec2_b.data(), s.dy.data(), s.h2.data(), n, h, W,
                           scale, threads_);
        fc_backward_input(s.dh.data(), s.dy.data(), a.dec2_w.data(), n, h, W, threads_, false);
        for (std::size_t i = 0; i < s.dh.size(); ++i)
            s.da[i] = s.a2[i] >= Real(0) ? s.dh[i] : a.slope * s.dh[i];
        fc_backward_weight(g.dec1_w.data(), g.dec1_b.data(), s.da.data(), s.z.data(), n, d, h,
                           scale, threads_);
        fc_backward_input(s.dz.data(), s.da.data(), a.dec1_w.data(), n, d, h, threads_, false);
        // (the latent's storage rounding: straight through)
        fc_backward_weight(g.enc2_w.data(), g.enc2_b.data(), s.dz.data(), s.h1.data(), n, h, d,
                           scale, threads_);
        fc_backward_input(s.dh.data(), s.dz.data(), a.enc2_w.data(), n, h, d, threads_, false);
        for (std::size_t i = 0; i < s.dh.size(); ++i)
            s.da[i] = s.a1[i] >= Real(0) ? s.dh[i] : a.slope * s.dh[i];
        fc_backward_weight(g.enc1_w.data(), g.enc1_b.data(), s.da.data(), s.x.data(), n, W, h,
                           scale, threads_);
        fc_backward_input(dx.data(), s.da.data(), a.enc1_w.data(), n, W, h, threads_, false);
    }

    /// Copies column block `group` (width W) of a [n][D] matrix into/out of a slot's [n][W] rows.
    static void gather_group(const std::vector<Real>& full, int D, int group, int W, int n,
                             std::vector<Real>& out) {
        for (int t = 0; t < n; ++t)
            std::copy_n(full.data() + train_detail::N(t, D) + train_detail::N(group, W), W,
                        out.data() + train_detail::N(t, W));
    }
    static void scatter_group(const std::vector<Real>& rows, int D, int group, int W, int n,
                              std::vector<Real>& full, bool accumulate) {
        for (int t = 0; t < n; ++t) {
            Real* dst = full.data() + train_detail::N(t, D) + train_detail::N(group, W);
            const Real* src = rows.data() + train_detail::N(t, W);
            for (int i = 0; i < W; ++i) dst[i] = accumulate ? dst[i] + src[i] : src[i];
        }
    }

    kv_finetune_loss forward(std::span<const int> inputs, std::span<const int> targets) {
        using namespace train_detail;
        const gpt2_config& c = config_;
        const int n = n_, D = c.d_model, F = c.d_ff, V = c.vocab_size, H = c.n_heads;
        const int hd = c.head_dim(), G = layout_.groups_per_layer(), W = layout_.group_width();
        const Real eps = Real(c.norm_eps);
        const Real scale = Real(1) / std::sqrt(Real(hd));

        for (int t = 0; t < n; ++t)
            for (int i = 0; i < D; ++i)
                x_[N(t, D) + std::size_t(i)] = wte_[N(inputs[std::size_t(t)], D) + std::size_t(i)] +
                                               wpe_[N(t, D) + std::size_t(i)];
        std::vector<Real> h(N(n, D)), qkv(N(n, 3 * D)), proj(N(n, D));
        double l1_sum = 0;
        for (int l = 0; l < c.n_layers; ++l) {
            const layer_weights& L = layers_[std::size_t(l)];
            layer_acts& A = acts_[std::size_t(l)];
            std::copy(x_.begin(), x_.end(), xin_.begin() + std::ptrdiff_t(N(l, N(n, D))));

            layernorm_forward(h.data(), A.xhat1.data(), A.rstd1.data(), x_.data(), L.ln1_w.data(),
                              L.ln1_b.data(), n, D, eps);
            fc_forward(qkv.data(), h.data(), L.qkv_w.data(), L.qkv_b.data(), n, D, 3 * D, threads_);
            for (int t = 0; t < n; ++t) {
                const Real* row = &qkv[N(t, 3 * D)];
                std::copy(row, row + D, &A.q[N(t, D)]);
                std::copy(row + D, row + 2 * D, &A.k[N(t, D)]);
                std::copy(row + 2 * D, row + 3 * D, &A.v[N(t, D)]);
            }
            // The slots this layer stores, then the K/V its attention reads (own or reused).
            for (int g = 0; g < G; ++g)
                for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                    slot_state& s = slots_[std::size_t(layout_.slot(l, g, kind))];
                    if (!(s.owner == slot_owner{l, g, kind})) continue;
                    gather_group(kind == kv_kind::key ? A.k : A.v, D, g, W, n, s.x);
                    slot_forward(s, n);
                    if (s.codec == codec_kind::autoencoder) {
                        double sum = 0;
                        for (std::size_t i = 0; i < s.x.size(); ++i)
                            sum += std::fabs(double(s.y[i]) - double(s.x[i]));
                        l1_sum += sum / double(s.x.size());
                    }
                }
            for (int g = 0; g < G; ++g) {
                gather_back(layout_.slot(l, g, kv_kind::key), D, g, W, n, A.kh);
                gather_back(layout_.slot(l, g, kv_kind::value), D, g, W, n, A.vh);
            }

            // Causal attention per head, probabilities kept.
            for (int hh = 0; hh < H; ++hh) {
                Real* P = A.prob.data() + N(hh, N(n, n));
                for (int t = 0; t < n; ++t) {
                    const Real* qt = &A.q[N(t, D) + N(hh, hd)];
                    Real* pt = P + N(t, n);
                    Real mx = -INFINITY;
                    for (int s = 0; s <= t; ++s) {
                        pt[s] = train_detail::dot(qt, &A.kh[N(s, D) + N(hh, hd)], hd) * scale;
                        mx = std::max(mx, pt[s]);
                    }
                    Real sum = 0;
                    for (int s = 0; s <= t; ++s) {
                        pt[s] = std::exp(pt[s] - mx);
                        sum += pt[s];
                    }
                    Real* out = &A.att[N(t, D) + N(hh, hd)];
                    std::fill(out, out + hd, Real(0));
                    for (int s = 0; s <= t; ++s) {
                        pt[s] /= sum;
                        const Real* vs = &A.vh[N(s, D) + N(hh, hd)];
                        for (int i = 0; i < hd; ++i) out[i] += pt[s] * vs[i];
                    }
                }
            }
            fc_forward(proj.data(), A.att.data(), L.proj_w.data(), L.proj_b.data(), n, D, D, threads_);
            for (std::size_t i = 0; i < x_.size(); ++i) x_[i] += proj[i];
            std::copy(x_.begin(), x_.end(), xmid_.begin() + std::ptrdiff_t(N(l, N(n, D))));

            layernorm_forward(h.data(), A.xhat2.data(), A.rstd2.data(), x_.data(), L.ln2_w.data(),
                              L.ln2_b.data(), n, D, eps);
            fc_forward(A.ff_pre.data(), h.data(), L.fc_w.data(), L.fc_b.data(), n, D, F, threads_);
            for (std::size_t i = 0; i < A.ff_pre.size(); ++i) A.ff_act[i] = gelu(A.ff_pre[i]);
            fc_forward(proj.data(), A.ff_act.data(), L.out_w.data(), L.out_b.data(), n, F, D, threads_);
            for (std::size_t i = 0; i < x_.size(); ++i) x_[i] += proj[i];
        }

        layernorm_forward(xf_.data(), xhatf_.data(), rstdf_.data(), x_.data(), lnf_w_.data(),
                          lnf_b_.data(), n, D, eps);
        fc_forward(dlogits_.data(), xf_.data(), head().data(), static_cast<const Real*>(nullptr), n,
                   D, V, threads_);
        // Cross-entropy, and its gradient in place of the logits: (softmax − onehot) / n.
        double ce = 0;
        for (int t = 0; t < n; ++t) {
            Real* row = dlogits_.data() + N(t, V);
            Real mx = -INFINITY;
            for (int v = 0; v < V; ++v) mx = std::max(mx, row[v]);
            const int y = targets[std::size_t(t)];
            const double logit_y = double(row[y] - mx);
            double sum = 0;
            for (int v = 0; v < V; ++v) {
                row[v] = std::exp(row[v] - mx);
                sum += double(row[v]);
            }
            ce += std::log(sum) - logit_y;
            const Real inv = Real(1.0 / (sum * double(n)));
            for (int v = 0; v < V; ++v) row[v] *= inv;
            row[y] -= Real(1.0 / double(n));
        }
        kv_finetune_loss r;
        r.ce = ce / double(n);
        r.l1 = l1_sum;
        r.total = r.ce + double(params_.l1_weight) * l1_sum;
        return r;
    }

    /// Copies a stored slot's reconstruction into column block `group` of a layer's K or V.
    void gather_back(int slot, int D, int group, int W, int n, std::vector<Real>& full) {
        scatter_group(slots_[std::size_t(slot)].y, D, group, W, n, full, false);
    }

    void backward(ae_gradients<Real>& grad, Real grad_scale) {
        using namespace train_detail;
        const gpt2_config& c = config_;
        const int n = n_, D = c.d_model, F = c.d_ff, V = c.vocab_size, H = c.n_heads;
        const int hd = c.head_dim(), G = layout_.groups_per_layer(), W = layout_.group_width();
        const Real scale = Real(1) / std::sqrt(Real(hd));
        const Real lambda = Real(params_.l1_weight);

        // LM head and final LayerNorm.
        std::vector<Real> dxf(N(n, D)), dx(N(n, D), Real(0));
        fc_backward_input(dxf.data(), dlogits_.data(), head().data(), n, D, V, threads_, false);
        layernorm_backward(dx.data(), dxf.data(), xhatf_.data(), rstdf_.data(), lnf_w_.data(), n, D);

        for (slot_state& s : slots_) std::fill(s.dy.begin(), s.dy.end(), Real(0));
        std::vector<Real> dff(N(n, F)), dh(N(n, D)), datt(N(n, D)), dqkv(N(n, 3 * D));
        std::vector<Real> dkh(N(n, D)), dvh(N(n, D)), dp(std::size_t(n), Real(0)), rows;
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
            std::fill(dqkv.begin(), dqkv.end(), Real(0));
            std::fill(dkh.begin(), dkh.end(), Real(0));
            std::fill(dvh.begin(), dvh.end(), Real(0));
            for (int hh = 0; hh < H; ++hh) {
                const Real* P = A.prob.data() + N(hh, N(n, n));
                for (int t = 0; t < n; ++t) {
                    const Real* pt = P + N(t, n);
                    const Real* dout = &datt[N(t, D) + N(hh, hd)];
                    // ∂p_s = ∂o · v̂_s;  ∂v̂_s += p_s ∂o;  ∂score_s = p_s (∂p_s − Σ p ∂p).
                    Real pdp = 0;
                    for (int s = 0; s <= t; ++s) {
                        dp[std::size_t(s)] = train_detail::dot(dout, &A.vh[N(s, D) + N(hh, hd)], hd);
                        pdp += pt[s] * dp[std::size_t(s)];
                        Real* dvs = &dvh[N(s, D) + N(hh, hd)];
                        for (int i = 0; i < hd; ++i) dvs[i] += pt[s] * dout[i];
                    }
                    Real* dqt = &dqkv[N(t, 3 * D) + N(hh, hd)];
                    const Real* qt = &A.q[N(t, D) + N(hh, hd)];
                    for (int s = 0; s <= t; ++s) {
                        const Real ds = pt[s] * (dp[std::size_t(s)] - pdp) * scale;
                        if (ds == Real(0)) continue;
                        const Real* ks = &A.kh[N(s, D) + N(hh, hd)];
                        Real* dks = &dkh[N(s, D) + N(hh, hd)];
                        for (int i = 0; i < hd; ++i) {
                            dqt[i] += ds * ks[i];
                            dks[i] += ds * qt[i];
                        }
                    }
                }
            }
            // ∂K̂, ∂V̂ go to the slots they were read from (this layer's or an earlier one's).
            rows.resize(N(n, W));
            for (int g = 0; g < G; ++g)
                for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                    slot_state& s = slots_[std::size_t(layout_.slot(l, g, kind))];
                    gather_group(kind == kv_kind::key ? dkh : dvh, D, g, W, n, rows);
                    for (std::size_t i = 0; i < rows.size(); ++i) s.dy[i] += rows[i];
                }
            // Every reader of this layer's slots is this layer or a later one: their ∂x̂ is
            // complete, so the slots back-propagate into this layer's true K and V.
            for (int g = 0; g < G; ++g)
                for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                    slot_state& s = slots_[std::size_t(layout_.slot(l, g, kind))];
                    if (!(s.owner == slot_owner{l, g, kind})) continue;
                    std::vector<Real> l1_dx;
                    if (s.codec == codec_kind::autoencoder && lambda != Real(0)) {
                        // λ mean|x̂ − x|: ±λ/(n·W) on x̂, the opposite on x.
                        const Real w1 = lambda / Real(double(n) * double(W));
                        l1_dx.resize(s.x.size());
                        for (std::size_t i = 0; i < s.x.size(); ++i) {
                            const Real e = s.y[i] - s.x[i];
                            const Real sg = e > Real(0) ? w1 : e < Real(0) ? -w1 : Real(0);
                            s.dy[i] += sg;
                            l1_dx[i] = -sg;
                        }
                    }
                    slot_backward(s, n, rows, grad, grad_scale);
                    for (std::size_t i = 0; i < l1_dx.size(); ++i) rows[i] += l1_dx[i];
                    // Into the K or V third of ∂qkv.
                    const int offset = (kind == kv_kind::key ? D : 2 * D) + g * W;
                    for (int t = 0; t < n; ++t)
                        for (int i = 0; i < W; ++i)
                            dqkv[N(t, 3 * D) + std::size_t(offset + i)] += rows[N(t, W) + std::size_t(i)];
                }
            if (l == 0) break;  // nothing below layer 0's K/V is trained

            // qkv = W_qkv LN_1(x_in); x_in's gradient also has the residual path (dx).
            fc_backward_input(dh.data(), dqkv.data(), L.qkv_w.data(), n, D, 3 * D, threads_, false);
            layernorm_backward(dx.data(), dh.data(), A.xhat1.data(), A.rstd1.data(), L.ln1_w.data(),
                               n, D);
        }
    }

    gpt2_config config_;
    io::codec_set set_;
    reuse_map layout_;
    kv_finetune_params params_;
    int threads_ = 1;

    std::vector<Real> wte_, wpe_, head_, lnf_w_, lnf_b_;
    std::vector<layer_weights> layers_;
    std::vector<slot_state> slots_;  // layout order
    std::vector<folded_ae_weights<Real>> aes_;
    std::vector<slot_owner> ae_slots_;

    int n_ = -1;  // the window length the buffers are sized for
    std::vector<layer_acts> acts_;
    std::vector<Real> xin_, xmid_, x_, xhatf_, rstdf_, xf_, dlogits_;
};

/// Adam (β1 0.9, β2 0.999, ε 1e-8, bias-corrected, no weight decay) over every tensor of a set
/// of autoencoders, with optional gradient-norm clipping.
template <std::floating_point Real>
class ae_adam {
public:
    ae_adam(const std::vector<folded_ae_weights<Real>>& weights, Real lr, Real clip_norm = Real(0))
        : lr_(lr), clip_(clip_norm), m_(zeros(weights)), v_(zeros(weights)) {
        require(std::isfinite(double(lr)) && lr > Real(0), "ae_adam: lr must be positive");
        require(std::isfinite(double(clip_norm)) && clip_norm >= Real(0),
                "ae_adam: clip_norm must be finite and not negative");
    }

    /// Euclidean norm of a gradient over all tensors.
    static double norm(const ae_gradients<Real>& g) {
        double s = 0;
        for (const auto& a : g)
            for (int i = 0; i < folded_ae_weights<Real>::tensor_count; ++i)
                for (Real v : a.tensor(i)) s += double(v) * double(v);
        return std::sqrt(s);
    }

    /// One update; returns the gradient's norm before clipping.
    double step(std::vector<folded_ae_weights<Real>>& w, const ae_gradients<Real>& g) {
        require(w.size() == m_.size() && g.size() == m_.size(),
                "ae_adam: weights or gradient have a different number of autoencoders");
        const double gnorm = norm(g);
        const Real gscale = clip_ > Real(0) && gnorm > double(clip_) ? Real(double(clip_) / gnorm)
                                                                     : Real(1);
        ++t_;
        const double c1 = 1.0 - std::pow(0.9, double(t_));
        const double c2 = 1.0 - std::pow(0.999, double(t_));
        const Real step = Real(double(lr_) / c1);
        const Real inv_c2 = Real(1.0 / c2);
        for (std::size_t a = 0; a < w.size(); ++a)
            for (int i = 0; i < folded_ae_weights<Real>::tensor_count; ++i) {
                std::vector<Real>& p = w[a].tensor(i);
                const std::vector<Real>& gi = g[a].tensor(i);
                std::vector<Real>& m = m_[a].tensor(i);
                std::vector<Real>& v = v_[a].tensor(i);
                require(p.size() == gi.size() && p.size() == m.size(),
                        "ae_adam: a tensor changed shape");
                for (std::size_t k = 0; k < p.size(); ++k) {
                    const Real gk = gi[k] * gscale;
                    m[k] = Real(0.9) * m[k] + Real(0.1) * gk;
                    v[k] = Real(0.999) * v[k] + Real(0.001) * gk * gk;
                    p[k] -= step * m[k] / (std::sqrt(v[k] * inv_c2) + Real(1e-8));
                }
            }
        return gnorm;
    }

private:
    static ae_gradients<Real> zeros(const std::vector<folded_ae_weights<Real>>& w) {
        ae_gradients<Real> z;
        for (const auto& a : w) z.push_back(a.zeros_like());
        return z;
    }
    Real lr_, clip_;
    long t_ = 0;
    ae_gradients<Real> m_, v_;
};

}  // namespace kvcar::examples
