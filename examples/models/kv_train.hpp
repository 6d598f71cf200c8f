// examples/models/kv_train.hpp — the parts of KV-CAR stage 2 (the paper's Algorithm 1, second
// stage: every autoencoder fine-tuned jointly through the frozen model) that do not depend on the
// model: the trained autoencoder weights, the codec set inserted between a layer's K/V
// projections and its attention (kv_codec_slots), causal GQA attention and the LM head's
// cross-entropy with their input gradients, and Adam. gpt2_train.hpp and llama_train.hpp put a
// model around them.
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

/// A codec set inserted between a model's K/V projections and its attention, for training: per
/// layer, the forward maps the layer's true K and V to what its attention reads (through the
/// layer's own slots, or an earlier layer's for reused groups) and the backward maps the
/// gradient with respect to what attention read back to the true K and V, adding each
/// autoencoder's weight gradient on the way. Model-independent: a layer's K (or V) is a
/// [n][n_kv_heads · head_dim] matrix, cut into groups of heads_per_group heads.
template <std::floating_point Real>
class kv_codec_slots {
public:
    /// Copies the set's codecs; the set must be valid and shaped like `model` (checked).
    kv_codec_slots(const io::codec_set& set, const kv_geometry& model, const std::string& who,
                   int threads)
        : set_(set), layout_(checked_layout(set, model, who)), who_(who), threads_(threads) {
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
                st.rounding = any_codec::of(identity_codec<float>{st.latent});
                st.rounding.storage = c->storage;
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

    const reuse_map& layout() const { return layout_; }
    std::vector<folded_ae_weights<Real>>& autoencoders() { return aes_; }
    const std::vector<folded_ae_weights<Real>>& autoencoders() const { return aes_; }
    slot_owner autoencoder_slot(int i) const { return ae_slots_.at(std::size_t(i)); }

    ae_gradients<Real> zero_gradient() const {
        ae_gradients<Real> g;
        for (const auto& a : aes_) g.push_back(a.zeros_like());
        return g;
    }

    /// Throws unless `gradient` is shaped like zero_gradient().
    void check_gradient(const ae_gradients<Real>& gradient) const {
        require(gradient.size() == aes_.size(),
                who_ + ": the gradient has " + std::to_string(gradient.size()) +
                    " autoencoders but the trainer has " + std::to_string(aes_.size()));
        for (std::size_t a = 0; a < aes_.size(); ++a)
            for (int i = 0; i < folded_ae_weights<Real>::tensor_count; ++i)
                require(gradient[a].tensor(i).size() == aes_[a].tensor(i).size(),
                        who_ + ": gradient of autoencoder " + std::to_string(a) + "'s " +
                            folded_ae_weights<Real>::tensor_names[i] + " is misshapen");
    }

    /// The set given to the constructor with every autoencoder slot replaced by the trained
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

    /// Sizes the per-slot activations for windows of n tokens.
    void resize(int n) {
        if (n == n_) return;
        n_ = n;
        const std::size_t T = std::size_t(n);
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

    /// Layer l's codecs: k and v are the layer's true K and V ([n][KV] each, KV = n_kv_heads ·
    /// head_dim); kh and vh (same shape) get what its attention reads. Returns Σ over the
    /// layer's own autoencoder slots of mean |x̂ − x| (the L1 term, unweighted).
    double forward_layer(int l, const std::vector<Real>& k, const std::vector<Real>& v,
                         std::vector<Real>& kh, std::vector<Real>& vh) {
        const int n = n_, G = layout_.groups_per_layer(), W = layout_.group_width();
        const int KV = G * W;
        double l1_sum = 0;
        for (int g = 0; g < G; ++g)
            for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                slot_state& s = slots_[std::size_t(layout_.slot(l, g, kind))];
                if (!(s.owner == slot_owner{l, g, kind})) continue;
                gather_group(kind == kv_kind::key ? k : v, KV, g, W, n, s.x);
                slot_forward(s, n);
                if (s.codec == codec_kind::autoencoder) {
                    double sum = 0;
                    for (std::size_t i = 0; i < s.x.size(); ++i)
                        sum += std::fabs(double(s.y[i]) - double(s.x[i]));
                    l1_sum += sum / double(s.x.size());
                }
            }
        for (int g = 0; g < G; ++g) {
            scatter_group(slots_[std::size_t(layout_.slot(l, g, kv_kind::key))].y, KV, g, W, n, kh);
            scatter_group(slots_[std::size_t(layout_.slot(l, g, kv_kind::value))].y, KV, g, W, n,
                          vh);
        }
        return l1_sum;
    }

    /// Clears the slots' ∂x̂ before a backward pass (layers then go from last to first).
    void begin_backward() {
        for (slot_state& s : slots_) std::fill(s.dy.begin(), s.dy.end(), Real(0));
    }

    /// Layer l's backward: dkh, dvh are ∂L/∂ of what its attention read. They go to the slots
    /// read (this layer's or an earlier one's); then this layer's own slots, whose readers are
    /// all done (readers are this layer or later ones), back-propagate (with the L1 term's
    /// gradient, weight λ) into dk and dv, ∂L/∂ the layer's true K and V (overwritten).
    void backward_layer(int l, const std::vector<Real>& dkh, const std::vector<Real>& dvh,
                        std::vector<Real>& dk, std::vector<Real>& dv, ae_gradients<Real>& grad,
                        Real grad_scale, Real lambda) {
        const int n = n_, G = layout_.groups_per_layer(), W = layout_.group_width();
        const int KV = G * W;
        rows_.resize(train_detail::N(n, W));
        for (int g = 0; g < G; ++g)
            for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                slot_state& s = slots_[std::size_t(layout_.slot(l, g, kind))];
                gather_group(kind == kv_kind::key ? dkh : dvh, KV, g, W, n, rows_);
                for (std::size_t i = 0; i < rows_.size(); ++i) s.dy[i] += rows_[i];
            }
        std::fill(dk.begin(), dk.end(), Real(0));
        std::fill(dv.begin(), dv.end(), Real(0));
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
                slot_backward(s, n, rows_, grad, grad_scale);
                for (std::size_t i = 0; i < l1_dx.size(); ++i) rows_[i] += l1_dx[i];
                scatter_group(rows_, KV, g, W, n, kind == kv_kind::key ? dk : dv);
            }
    }

private:
    /// One stored slot: its codec and the activations of the current window.
    struct slot_state {
        slot_owner owner{};
        codec_kind codec = codec_kind::identity;
        latent_storage storage = latent_storage::f16;
        int width = 0, latent = 0;
        int ae = -1;             // index into aes_ for an autoencoder
        any_codec rounding{};    // identity of the latent's width and storage (unless f32)
        std::vector<std::byte> record;
        std::vector<Real> mean, basis;                 // linear: μ [W], P [W][d]
        std::vector<Real> x, y, dy;                    // [n][W]: input, reconstruction, dL/dy
        std::vector<Real> a1, h1, z, a2, h2, da, dz;   // autoencoder intermediates
        std::vector<Real> dh;                          // [n][h] scratch
    };

    static reuse_map checked_layout(const io::codec_set& set, const kv_geometry& want,
                                    const std::string& who) {
        require(set.geometry.n_layers == want.n_layers &&
                    set.geometry.n_kv_heads == want.n_kv_heads &&
                    set.geometry.head_dim == want.head_dim,
                who + ": the codec set is made for " + geometry_string(set.geometry) +
                    " but the model is " + geometry_string(want));
        set.validate();
        return set.layout();
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
                              std::vector<Real>& full) {
        for (int t = 0; t < n; ++t)
            std::copy_n(rows.data() + train_detail::N(t, W), W,
                        full.data() + train_detail::N(t, D) + train_detail::N(group, W));
    }

    io::codec_set set_;
    reuse_map layout_;
    std::string who_;
    int threads_ = 1;
    std::vector<slot_state> slots_;  // layout order
    std::vector<folded_ae_weights<Real>> aes_;
    std::vector<slot_owner> ae_slots_;
    std::vector<Real> rows_;  // [n][W] scratch
    int n_ = -1;
};

/// What every model's stage-2 trainer shares: the configuration, the codec slots being trained
/// and the public face (the loss of a window and its gradient with respect to the autoencoders).
/// `Model` (CRTP) supplies the model: `resize(n)` for an n-token window, `forward(inputs,
/// targets)` returning the loss and keeping what backward needs, and `backward(gradient,
/// scale)` adding scale · ∂loss/∂weights into the gradient.
template <class Model, class Config, std::floating_point Real>
class kv_trainer_base {
public:
    /// The model's configuration as copied.
    const Config& config() const { return config_; }
    /// The loss weights and threads this trainer was made with.
    const kv_finetune_params& params() const { return params_; }
    /// The trained autoencoders (one per autoencoder slot, in slot order) — an optimizer
    /// updates these in place.
    std::vector<folded_ae_weights<Real>>& autoencoders() { return codecs_.autoencoders(); }
    /// The trained autoencoders, read-only.
    const std::vector<folded_ae_weights<Real>>& autoencoders() const {
        return codecs_.autoencoders();
    }
    /// Which slot autoencoders()[i] is.
    slot_owner autoencoder_slot(int i) const { return codecs_.autoencoder_slot(i); }
    /// A zero gradient shaped like autoencoders().
    ae_gradients<Real> zero_gradient() const { return codecs_.zero_gradient(); }

    /// The loss of `inputs` (one sequence from position 0) predicting `targets` (same length:
    /// targets[t] is the token after inputs[t]). With `gradient` (shaped like zero_gradient()),
    /// adds `gradient_scale` · ∂loss/∂weights into it, so windows of a batch accumulate.
    kv_finetune_loss loss(std::span<const int> inputs, std::span<const int> targets,
                          ae_gradients<Real>* gradient = nullptr, Real gradient_scale = Real(1)) {
        train_detail::check_window(who_, inputs, targets, config_.vocab_size,
                                   config_.max_positions);
        if (gradient) codecs_.check_gradient(*gradient);
        Model& model = static_cast<Model&>(*this);
        model.resize(int(inputs.size()));
        kv_finetune_loss result = model.forward(inputs, targets);
        if (gradient) model.backward(*gradient, gradient_scale);
        return result;
    }

    /// The codec set given to the constructor with every autoencoder slot replaced by the
    /// trained weights; throws if a weight is not finite.
    io::codec_set trained_codec_set() const { return codecs_.trained_codec_set(); }

protected:
    /// Copies `config` and the set's codecs (`set` must be made for `geometry`); `who` names the
    /// trainer in error messages.
    kv_trainer_base(Config config, const io::codec_set& set, const kv_geometry& geometry,
                    kv_finetune_params params, const std::string& who)
        : config_(std::move(config)), params_(checked(params, who)),
          threads_(resolve_threads(params.threads)), who_(who),
          codecs_(set, geometry, who, threads_) {}

    Config config_;
    kv_finetune_params params_;
    int threads_ = 1;
    std::string who_;
    kv_codec_slots<Real> codecs_;

private:
    static kv_finetune_params checked(kv_finetune_params p, const std::string& who) {
        require(std::isfinite(p.l1_weight) && p.l1_weight >= 0.0f,
                who + ": l1_weight must be finite and not negative");
        require(p.threads >= 0, who + ": threads must not be negative");
        return p;
    }
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
