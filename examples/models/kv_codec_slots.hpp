// examples/models/kv_codec_slots.hpp — a codec set inserted between a model's K/V projections
// and its attention, for stage-2 training (examples/models/kv_train.hpp says what is trained and
// how the codecs, reuse included, are differentiated). Model-independent: every trainer
// (kv_trainer_base.hpp) holds one.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/codec/any.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/layout/reuse_map.hpp"

#include "examples/models/kv_train.hpp"
#include "examples/models/model_common.hpp"

namespace kvcar::examples {

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
        for (int s = 0; s < layout_.n_slots(); ++s) {
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

}  // namespace kvcar::examples
