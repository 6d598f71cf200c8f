// examples/models/kv_train.hpp — the parts of KV-CAR stage 2 (the paper's Algorithm 1, second
// stage: every autoencoder fine-tuned jointly through the frozen model) that do not depend on the
// model: the trained autoencoder weights, Adam over them (kvcar/calib/adam.hpp, the optimizer
// stage 1 uses too), and the kernels with their input gradients (linear layers, causal GQA
// attention, the LM head's cross-entropy). kv_codec_slots.hpp inserts the codec set between a
// layer's K/V projections and its attention; kv_trainer_base.hpp is what every model's trainer
// shares; gpt2/gpt2_train.hpp and llama/llama_train.hpp put a model around them.
//
// What is trained: the autoencoder slots' weights, in their FOLDED form (BatchNorm merged into
// the FC before it, the form codec files store). At inference BatchNorm is a fixed affine map per
// hidden unit, so every folded network is some unfolded network with BatchNorm in eval mode and
// vice versa: training the folded FC weights is training the inference network itself, and the
// result is saved without loss. (What it gives up is training-mode BatchNorm's normalisation by
// batch statistics, which only changes the optimisation path, not the function class.)
//
// What is not trained but differentiated through: identity slots, linear (PCA) slots, and K/V
// reuse: a reused (layer, group) reads the reconstruction of the slot it reuses (stored by an
// earlier layer), so its gradient flows into that slot's codec and on into the earlier layer.
// The stored latent is rounded to the slot's storage type in the forward pass (f16 by default),
// exactly as the cache rounds it, and the rounding passes gradients straight through
// (straight-through estimator); f32 storage is not rounded at all, so a double-precision
// gradient check sees the exact function.
//
// The true K/V that the L1 term compares against are the ones the codec-inserted model computes
// (they depend on earlier layers' codecs), and the gradient flows through both sides, as
// autograd would.
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

#include "kvcar/calib/adam.hpp"
#include "kvcar/codec/any.hpp"
#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/layout/reuse_map.hpp"

#include "examples/models/model_common.hpp"
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

/// Every tensor of a list of autoencoders, in order, as calib::adam takes them.
template <std::floating_point Real>
std::vector<std::span<Real>> ae_tensors(std::vector<folded_ae_weights<Real>>& aes) {
    std::vector<std::span<Real>> out;
    for (folded_ae_weights<Real>& a : aes)
        for (int i = 0; i < folded_ae_weights<Real>::tensor_count; ++i)
            out.emplace_back(a.tensor(i));
    return out;
}
/// The same, read-only (a gradient).
template <std::floating_point Real>
std::vector<std::span<const Real>> ae_tensors(const std::vector<folded_ae_weights<Real>>& aes) {
    std::vector<std::span<const Real>> out;
    for (const folded_ae_weights<Real>& a : aes)
        for (int i = 0; i < folded_ae_weights<Real>::tensor_count; ++i)
            out.emplace_back(a.tensor(i));
    return out;
}

/// Stage 2's optimizer: the library's Adam (the one stage 1 trains with) over every tensor of
/// `aes`, step size `lr`, the gradient's global norm clipped to `clip_norm` (0: no clipping).
template <std::floating_point Real>
calib::adam<Real> ae_adam(const std::vector<folded_ae_weights<Real>>& aes, Real lr,
                          Real clip_norm = Real(0)) {
    std::vector<std::size_t> sizes;
    for (std::span<const Real> t : ae_tensors(aes)) sizes.push_back(t.size());
    return calib::adam<Real>(std::move(sizes), lr, clip_norm);
}

/// One step of `adam` on autoencoders `w` by gradient `g`; returns the gradient's norm before
/// clipping.
template <std::floating_point Real>
double ae_step(calib::adam<Real>& adam, std::vector<folded_ae_weights<Real>>& w,
               const ae_gradients<Real>& g) {
    return adam.step(ae_tensors(w), ae_tensors(g));
}

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

template <class Real>
Real lrelu(Real x, Real slope) {
    return x >= Real(0) ? x : slope * x;
}

template <class Real>
std::vector<Real> to_real(const std::vector<float>& v) {
    return std::vector<Real>(v.begin(), v.end());
}


/// Causal attention of n tokens from position 0, grouped-query: query head hh reads KV head
/// hh / (H / KVH) (GPT-2: H = KVH). q and out are [n][H·hd], k and v [n][KVH·hd]; the softmax
/// rows are kept in prob [H][n][n] (upper triangle unused) for the backward.
template <class Real>
void causal_attention_forward(Real* out, Real* prob, const Real* q, const Real* k, const Real* v,
                              int n, int H, int KVH, int hd) {
    const int Q = H * hd, KV = KVH * hd, per_kv = H / KVH;
    const Real scale = Real(1) / std::sqrt(Real(hd));
    for (int hh = 0; hh < H; ++hh) {
        const int kvh = hh / per_kv;
        Real* P = prob + N(hh, N(n, n));
        for (int t = 0; t < n; ++t) {
            const Real* qt = q + N(t, Q) + N(hh, hd);
            Real* pt = P + N(t, n);
            Real mx = -INFINITY;
            for (int s = 0; s <= t; ++s) {
                pt[s] = dot(qt, k + N(s, KV) + N(kvh, hd), hd) * scale;
                mx = std::max(mx, pt[s]);
            }
            Real sum = 0;
            for (int s = 0; s <= t; ++s) {
                pt[s] = std::exp(pt[s] - mx);
                sum += pt[s];
            }
            Real* o = out + N(t, Q) + N(hh, hd);
            std::fill(o, o + hd, Real(0));
            for (int s = 0; s <= t; ++s) {
                pt[s] /= sum;
                const Real* vs = v + N(s, KV) + N(kvh, hd);
                for (int i = 0; i < hd; ++i) o[i] += pt[s] * vs[i];
            }
        }
    }
}

/// The input gradients of causal_attention_forward: given dout, ADDS into dq [n][H·hd] and
/// dk, dv [n][KVH·hd] (a KV head collects the gradient of every query head that reads it).
template <class Real>
void causal_attention_backward(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* prob,
                               const Real* q, const Real* k, const Real* v, int n, int H, int KVH,
                               int hd) {
    const int Q = H * hd, KV = KVH * hd, per_kv = H / KVH;
    const Real scale = Real(1) / std::sqrt(Real(hd));
    std::vector<Real> dp(std::size_t(n), Real(0));
    for (int hh = 0; hh < H; ++hh) {
        const int kvh = hh / per_kv;
        const Real* P = prob + N(hh, N(n, n));
        for (int t = 0; t < n; ++t) {
            const Real* pt = P + N(t, n);
            const Real* dout_t = dout + N(t, Q) + N(hh, hd);
            // ∂p_s = ∂o · v_s;  ∂v_s += p_s ∂o;  ∂score_s = p_s (∂p_s − Σ p ∂p).
            Real pdp = 0;
            for (int s = 0; s <= t; ++s) {
                dp[std::size_t(s)] = dot(dout_t, v + N(s, KV) + N(kvh, hd), hd);
                pdp += pt[s] * dp[std::size_t(s)];
                Real* dvs = dv + N(s, KV) + N(kvh, hd);
                for (int i = 0; i < hd; ++i) dvs[i] += pt[s] * dout_t[i];
            }
            Real* dqt = dq + N(t, Q) + N(hh, hd);
            const Real* qt = q + N(t, Q) + N(hh, hd);
            for (int s = 0; s <= t; ++s) {
                const Real ds = pt[s] * (dp[std::size_t(s)] - pdp) * scale;
                if (ds == Real(0)) continue;
                const Real* ks = k + N(s, KV) + N(kvh, hd);
                Real* dks = dk + N(s, KV) + N(kvh, hd);
                for (int i = 0; i < hd; ++i) {
                    dqt[i] += ds * ks[i];
                    dks[i] += ds * qt[i];
                }
            }
        }
    }
}

/// Logits = xf · headᵀ (no bias) into `dlogits` [n][V], then the mean next-token cross-entropy
/// (returned, nats per token), and its gradient in place of the logits: (softmax − onehot) / n.
template <class Real>
double lm_head_cross_entropy(std::vector<Real>& dlogits, const std::vector<Real>& xf,
                             const std::vector<Real>& head, std::span<const int> targets, int n,
                             int D, int V, int threads) {
    fc_forward(dlogits.data(), xf.data(), head.data(), static_cast<const Real*>(nullptr), n, D, V,
               threads);
    double ce = 0;
    for (int t = 0; t < n; ++t) {
        Real* row = dlogits.data() + N(t, V);
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
    return ce / double(n);
}

/// A training window: one sequence from position 0 and, per input, the token that follows it.
inline void check_window(const std::string& who, std::span<const int> inputs,
                         std::span<const int> targets, int vocab_size, int max_positions) {
    check_chunk(who, inputs, 0, vocab_size, max_positions, INT_MAX);
    require(targets.size() == inputs.size(),
            who + ": " + std::to_string(targets.size()) + " targets for " +
                std::to_string(inputs.size()) + " inputs (need one target per input)");
    for (std::size_t i = 0; i < targets.size(); ++i)
        require(targets[i] >= 0 && targets[i] < vocab_size,
                who + ": target " + std::to_string(i) + " has id " + std::to_string(targets[i]) +
                    ", outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
}

}  // namespace train_detail

}  // namespace kvcar::examples
