// examples/models/kv_trainer_base.hpp — what every model's stage-2 trainer shares
// (gpt2/gpt2_train.hpp, llama/llama_train.hpp): the public face (the loss of a window and its
// gradient with respect to the autoencoders), the codec slots being trained, the residual stream
// and the LM head with its cross-entropy, and attention through the codecs. A model supplies its
// layers around these; each piece here is the same operations, in the same order, for both.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/codec_file.hpp"

#include "examples/models/kv_codec_slots.hpp"
#include "examples/models/kv_train.hpp"
#include "examples/models/tensor_ops.hpp"

namespace kvcar::examples {

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
    /// Copies `config`, the set's codecs (`set` must be made for `geometry`) and the model's LM
    /// head (`lm_head` empty when it is tied to `embedding`); `who` names the trainer in error
    /// messages.
    kv_trainer_base(Config config, const io::codec_set& set, const kv_geometry& geometry,
                    kv_finetune_params params, const std::string& who,
                    const std::vector<float>& embedding, const std::vector<float>& lm_head)
        : config_(std::move(config)), params_(checked(params, who)),
          threads_(resolve_threads(params.threads)), who_(who),
          codecs_(set, geometry, who, threads_),
          embed_(train_detail::to_real<Real>(embedding)),
          head_(train_detail::to_real<Real>(lm_head)) {}

    /// The LM head: the model's own, or the token embedding when tied.
    const std::vector<Real>& head() const { return head_.empty() ? embed_ : head_; }

    /// Sizes the codecs and the shared buffers for an n-token window; false when they already
    /// are (the model's own buffers then are too).
    bool resize_window(int n) {
        codecs_.resize(n);
        if (n == n_) return false;
        n_ = n;
        const std::size_t T = std::size_t(n), D = std::size_t(config_.d_model);
        x_.assign(T * D, 0);
        xf_.assign(T * D, 0);
        dlogits_.assign(T * std::size_t(config_.vocab_size), 0);
        return true;
    }

    /// One layer's attention activations for the current window, kept for the backward.
    struct attention_acts {
        std::vector<Real> q;       // [n][H·hd]: queries, positions applied
        std::vector<Real> k, v;    // [n][KVH·hd]: the codecs' inputs
        std::vector<Real> kh, vh;  // [n][KVH·hd]: what attention reads (through the codecs)
        std::vector<Real> prob;    // [H][n][n]: softmax rows (causal; upper part unused)
        std::vector<Real> att;     // [n][H·hd]

        void assign(std::size_t n, std::size_t H, std::size_t KVH, std::size_t hd) {
            q.assign(n * H * hd, 0);
            att.assign(n * H * hd, 0);
            for (auto* x : {&k, &v, &kh, &vh}) x->assign(n * KVH * hd, 0);
            prob.assign(H * n * n, 0);
        }
    };

    /// Gradients through one layer's attention, reused from layer to layer.
    struct attention_grads {
        std::vector<Real> dq;        // [n][H·hd]: ∂L/∂q
        std::vector<Real> dk, dv;    // [n][KVH·hd]: ∂L/∂ the codecs' inputs
        std::vector<Real> dkh, dvh;  // [n][KVH·hd]: ∂L/∂ what attention read (scratch)

        attention_grads(std::size_t n, std::size_t H, std::size_t KVH, std::size_t hd)
            : dq(n * H * hd), dk(n * KVH * hd), dv(n * KVH * hd), dkh(n * KVH * hd),
              dvh(n * KVH * hd) {}
    };

    /// Layer l's attention through its codecs: A.k and A.v (the true projections) go through the
    /// slots into A.kh and A.vh, `on_read(kh)` turns the stored keys into what attention reads
    /// (RoPE for pre-RoPE caches; nothing otherwise), and causal attention of A.q writes A.att
    /// and keeps A.prob. Returns the layer's L1 term (unweighted).
    template <class OnRead>
    double attention_forward(int l, attention_acts& A, int H, int KVH, int hd, OnRead&& on_read) {
        const double l1 = codecs_.forward_layer(l, A.k, A.v, A.kh, A.vh);
        on_read(A.kh);
        train_detail::causal_attention_forward(A.att.data(), A.prob.data(), A.q.data(),
                                               A.kh.data(), A.vh.data(), n_, H, KVH, hd);
        return l1;
    }

    /// The backward of attention_forward: given datt, writes G.dq (∂L/∂q) and G.dk, G.dv (∂L/∂
    /// the true K and V, before the codecs), adding the autoencoders' weight gradients into
    /// `grad`. `on_read_backward(dkh)` is the transpose of on_read.
    template <class OnReadBackward>
    void attention_backward(int l, const std::vector<Real>& datt, const attention_acts& A,
                            attention_grads& G, int H, int KVH, int hd, ae_gradients<Real>& grad,
                            Real grad_scale, OnReadBackward&& on_read_backward) {
        std::fill(G.dq.begin(), G.dq.end(), Real(0));
        std::fill(G.dkh.begin(), G.dkh.end(), Real(0));
        std::fill(G.dvh.begin(), G.dvh.end(), Real(0));
        train_detail::causal_attention_backward(G.dq.data(), G.dkh.data(), G.dvh.data(),
                                                datt.data(), A.prob.data(), A.q.data(),
                                                A.kh.data(), A.vh.data(), n_, H, KVH, hd);
        on_read_backward(G.dkh);
        // ∂K̂, ∂V̂ go to the slots they were read from (this layer's or an earlier one's);
        // this layer's slots pass theirs on to the true K and V.
        codecs_.backward_layer(l, G.dkh, G.dvh, G.dk, G.dv, grad, grad_scale,
                               Real(params_.l1_weight));
    }

    /// x += y over the residual stream (or any two buffers of one size).
    static void add_residual(std::vector<Real>& x, const std::vector<Real>& y) {
        for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    }

    /// The window's loss once xf_ holds the final norm's output: the LM head's mean
    /// cross-entropy (its gradient kept in dlogits_) plus λ times the layers' L1 terms.
    kv_finetune_loss lm_loss(std::span<const int> targets, double l1_sum) {
        kv_finetune_loss r;
        r.ce = train_detail::lm_head_cross_entropy(dlogits_, xf_, head(), targets, n_,
                                                   config_.d_model, config_.vocab_size, threads_);
        r.l1 = l1_sum;
        r.total = r.ce + double(params_.l1_weight) * l1_sum;
        return r;
    }

    /// ∂L/∂xf, the LM head's input gradient, into dxf ([n][D], overwritten).
    void lm_head_backward(std::vector<Real>& dxf) const {
        train_detail::fc_backward_input(dxf.data(), dlogits_.data(), head().data(), n_,
                                        config_.d_model, config_.vocab_size, threads_, false);
    }

    Config config_;
    kv_finetune_params params_;
    int threads_ = 1;
    std::string who_;
    kv_codec_slots<Real> codecs_;
    std::vector<Real> embed_, head_;  // the token embedding; the LM head, empty when tied

    int n_ = -1;                 // the window length the buffers are sized for
    std::vector<Real> x_;        // [n][D] the residual stream
    std::vector<Real> xf_;       // [n][D] the final norm's output, the LM head's input
    std::vector<Real> dlogits_;  // [n][V] the logits, then ∂L/∂logits

private:
    static kv_finetune_params checked(kv_finetune_params p, const std::string& who) {
        require(std::isfinite(p.l1_weight) && p.l1_weight >= 0.0f,
                who + ": l1_weight must be finite and not negative");
        require(p.threads >= 0, who + ": threads must not be negative");
        return p;
    }
};

}  // namespace kvcar::examples
