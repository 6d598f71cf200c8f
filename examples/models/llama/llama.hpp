// examples/models/llama/llama.hpp — Llama (TinyLlama, llama2.c) on the CPU, its KV cache a kvcar
// cache.
//
// The whole model, read top to bottom:
//
//   x = embed[token]                                                 (residual stream, d_model)
//   for each layer:
//       h = RMSNorm_attn(x)
//       q = h · W_qᵀ   (n_heads heads)    k = h · W_kᵀ, v = h · W_vᵀ   (n_kv_heads heads: GQA)
//       post-RoPE cache (default): q, k = RoPE(q, k, position); cache.append(k, v)
//       pre-RoPE cache:            cache.append(k, v); attention rotates q and each decoded k
//       a = softmax(q · Kᵀ / √head_dim, causal) · V    over K, V *decoded from the cache*;
//           query head h reads KV head h / (n_heads / n_kv_heads)
//       x = x + a · W_oᵀ
//       h = RMSNorm_ffn(x)
//       x = x + (silu(h · W_gateᵀ) ⊙ (h · W_upᵀ)) · W_downᵀ                     (SwiGLU)
//   logits = RMSNorm_final(x) · W_headᵀ                    (W_head = embed when tied)
//
// Hugging Face checkpoints pair RoPE dimensions (i, i + head_dim/2) ("rotate_half"); llama2.c
// checkpoints pair (2i, 2i + 1). The weights differ by a permutation of W_q/W_k rows, so the
// same code runs both with a different rope_style.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/reference/attention.hpp"
#include "kvcar/rope.hpp"

#include "examples/models/blocks.hpp"
#include "examples/models/llama/llama2c.hpp"
#include "examples/models/model_common.hpp"
#include "examples/models/tensor_ops.hpp"

namespace kvcar::examples {

struct llama_config {
    int vocab_size = 0;
    int max_positions = 0;
    int d_model = 0;
    int n_layers = 0;
    int n_heads = 0;
    int n_kv_heads = 0;
    int head_dim = 0;
    int d_ff = 0;  ///< SwiGLU hidden width (intermediate_size)
    float norm_eps = 1e-5f;
    rope_params rope{};  ///< theta and pairing (half for HF, interleaved for llama2.c)
};

inline void validate(const llama_config& c) {
    require(c.vocab_size > 0 && c.max_positions > 0 && c.d_model > 0 && c.n_layers > 0 &&
                c.n_heads > 0 && c.n_kv_heads > 0 && c.head_dim > 0 && c.d_ff > 0,
            "llama: config needs positive vocab_size, max_positions, hidden_size, layers, "
            "heads, kv heads, head_dim and intermediate_size");
    require(c.n_heads % c.n_kv_heads == 0,
            "llama: n_heads " + std::to_string(c.n_heads) + " is not a multiple of n_kv_heads " +
                std::to_string(c.n_kv_heads));
    validate(c.rope, c.head_dim);
}

/// One decoder layer; every matrix is torch.nn.Linear's [out][in].
struct llama_layer {
    std::vector<float> attn_norm;  // [D]
    std::vector<float> wq;         // [H·hd][D]
    std::vector<float> wk;         // [KV·hd][D]
    std::vector<float> wv;         // [KV·hd][D]
    std::vector<float> wo;         // [D][H·hd]
    std::vector<float> ffn_norm;   // [D]
    std::vector<float> w_gate;     // [F][D]
    std::vector<float> w_up;       // [F][D]
    std::vector<float> w_down;     // [D][F]
};

struct llama_weights {
    std::vector<float> token_embedding;  // [V][D]
    std::vector<llama_layer> layers;
    std::vector<float> final_norm;       // [D]
    std::vector<float> lm_head;          // [V][D], or empty when tied to token_embedding
};

class llama_model {
public:
    llama_model(llama_config config, llama_weights weights, model_options options = {})
        : config_(config), w_(std::move(weights)), options_(options) {
        validate(config_);
    }

    /// Reads a Hugging Face LlamaForCausalLM checkpoint (`model.layers.N.…`). The head is
    /// `lm_head.weight` when present, else the embedding (tie_word_embeddings).
    template <class Tensors>
    static llama_model from_safetensors(const Tensors& st, const llama_config& c, bool tied,
                                        model_options options = {}) {
        validate(c);
        const std::string who = "llama";
        const std::int64_t V = c.vocab_size, D = c.d_model, F = c.d_ff;
        const std::int64_t Q = std::int64_t(c.n_heads) * c.head_dim;
        const std::int64_t KV = std::int64_t(c.n_kv_heads) * c.head_dim;
        const auto get = [&](const std::string& name, std::vector<std::int64_t> shape) {
            return load_tensor(st, name, shape, who);
        };
        llama_weights w;
        w.token_embedding = get("model.embed_tokens.weight", {V, D});
        for (int l = 0; l < c.n_layers; ++l) {
            const std::string p = "model.layers." + std::to_string(l) + ".";
            llama_layer L;
            L.attn_norm = get(p + "input_layernorm.weight", {D});
            L.wq = get(p + "self_attn.q_proj.weight", {Q, D});
            L.wk = get(p + "self_attn.k_proj.weight", {KV, D});
            L.wv = get(p + "self_attn.v_proj.weight", {KV, D});
            L.wo = get(p + "self_attn.o_proj.weight", {D, Q});
            L.ffn_norm = get(p + "post_attention_layernorm.weight", {D});
            L.w_gate = get(p + "mlp.gate_proj.weight", {F, D});
            L.w_up = get(p + "mlp.up_proj.weight", {F, D});
            L.w_down = get(p + "mlp.down_proj.weight", {D, F});
            w.layers.push_back(std::move(L));
        }
        w.final_norm = get("model.norm.weight", {D});
        // An untied model must carry its head; a tied one may still ship a copy (it is used).
        if (!tied || st.contains("lm_head.weight")) w.lm_head = get("lm_head.weight", {V, D});
        return llama_model(c, std::move(w), options);
    }

    /// Takes a llama2.c checkpoint (weights already in [out][in] layout, layers stacked).
    static llama_model from_llama2c(const llama2c_weights& in, model_options options = {}) {
        const llama2c_config& k = in.config;
        llama_config c;
        c.vocab_size = k.vocab_size;
        c.max_positions = k.seq_len;
        c.d_model = k.dim;
        c.n_layers = k.n_layers;
        c.n_heads = k.n_heads;
        c.n_kv_heads = k.n_kv_heads;
        c.head_dim = k.head_size();
        c.d_ff = k.hidden_dim;
        c.norm_eps = 1e-5f;  // llama2.c's run.c hard-codes it
        c.rope = {.theta = 10000.0f, .style = rope_style::interleaved};
        validate(c);

        const std::size_t D = std::size_t(c.d_model), F = std::size_t(c.d_ff);
        const std::size_t KV = std::size_t(k.kv_dim());
        // Layer l's slice of a stacked [L][rows][cols] array.
        const auto slice = [](const std::vector<float>& all, int l, std::size_t size) {
            return std::vector<float>(all.begin() + std::ptrdiff_t(std::size_t(l) * size),
                                      all.begin() + std::ptrdiff_t(std::size_t(l + 1) * size));
        };
        llama_weights w;
        w.token_embedding = in.token_embedding;
        for (int l = 0; l < c.n_layers; ++l) {
            llama_layer L;
            L.attn_norm = slice(in.rms_att, l, D);
            L.wq = slice(in.wq, l, D * D);
            L.wk = slice(in.wk, l, KV * D);
            L.wv = slice(in.wv, l, KV * D);
            L.wo = slice(in.wo, l, D * D);
            L.ffn_norm = slice(in.rms_ffn, l, D);
            L.w_gate = slice(in.w1, l, F * D);
            L.w_down = slice(in.w2, l, D * F);
            L.w_up = slice(in.w3, l, F * D);
            w.layers.push_back(std::move(L));
        }
        w.final_norm = in.rms_final;
        w.lm_head = in.wcls;  // empty when the classifier is shared
        return llama_model(c, std::move(w), options);
    }

    const llama_config& config() const { return config_; }
    const model_options& options() const { return options_; }
    /// The weights, for a backend that copies them elsewhere (examples/models/cuda).
    const llama_weights& weights() const { return w_; }
    int vocab_size() const { return config_.vocab_size; }
    int max_positions() const { return config_.max_positions; }
    kv_geometry cache_geometry() const {
        return {config_.n_layers, config_.n_kv_heads, config_.head_dim};
    }
    /// How attention must treat the keys this model stores (for a kernel reading the cache).
    attention_params attention() const {
        attention_params ap{.n_heads = config_.n_heads};
        if (options_.keys == cached_keys::pre_rope) {
            ap.rope = rope_mode::on_read;
            ap.rope_cfg = config_.rope;
        }
        return ap;
    }

    /// Runs `tokens` (appended after what sequence `seq` of `cache` already holds) through the
    /// model; returns logits [n][vocab] (or [1][vocab] for logits_for::last).
    template <class Cache>
    std::vector<float> forward(Cache& cache, int seq, std::span<const int> tokens,
                               logits_for which = logits_for::all) const {
        const llama_config& c = config_;
        const int n = int(tokens.size());
        const int D = c.d_model, F = c.d_ff, V = c.vocab_size, hd = c.head_dim;
        const int Q = c.n_heads * hd, KV = c.n_kv_heads * hd;
        const int threads = resolve_threads(options_.threads);
        check_cache_geometry("llama", cache.geometry(), cache_geometry());
        const int pos0 = cache.length(seq);
        check_chunk("llama", tokens, pos0, V, c.max_positions, cache_token_limit(cache));
        const auto N = [](long long a, long long b) { return std::size_t(a) * std::size_t(b); };
        const bool rotate_before_storing = options_.keys == cached_keys::post_rope;
        const attention_params ap = attention();

        std::vector<float> x(N(n, D));
        for (int t = 0; t < n; ++t) {
            const float* e = &w_.token_embedding[N(tokens[std::size_t(t)], D)];
            std::copy(e, e + D, &x[N(t, D)]);
        }

        std::vector<float> h(N(n, D)), q(N(n, Q)), k(N(n, KV)), v(N(n, KV)), att(N(n, Q));
        std::vector<float> proj(N(n, D)), gate(N(n, F)), up(N(n, F));
        for (int l = 0; l < c.n_layers; ++l) {
            const llama_layer& L = w_.layers[std::size_t(l)];

            // --- attention ---
            rmsnorm(h, x, L.attn_norm, n, D, c.norm_eps);
            matmul(q, h, L.wq, {}, n, D, Q, threads);
            matmul(k, h, L.wk, {}, n, D, KV, threads);
            matmul(v, h, L.wv, {}, n, D, KV, threads);
            if (rotate_before_storing) {
                for (int t = 0; t < n; ++t) {
                    for (int head = 0; head < c.n_heads; ++head)
                        apply_rope(&q[N(t, Q) + N(head, hd)], hd, pos0 + t, c.rope);
                    for (int head = 0; head < c.n_kv_heads; ++head)
                        apply_rope(&k[N(t, KV) + N(head, hd)], hd, pos0 + t, c.rope);
                }
            }
            attention_through_cache(cache, seq, l, ap, q, k, v, pos0, att);
            matmul(proj, att, L.wo, {}, n, Q, D, threads);
            add_inplace(x, proj);

            // --- SwiGLU MLP ---
            rmsnorm(h, x, L.ffn_norm, n, D, c.norm_eps);
            matmul(gate, h, L.w_gate, {}, n, D, F, threads);
            matmul(up, h, L.w_up, {}, n, D, F, threads);
            silu_mul(gate, up);
            matmul(proj, gate, L.w_down, {}, n, F, D, threads);
            add_inplace(x, proj);
        }

        return lm_head_logits(x, n, which, D, V, w_.token_embedding, w_.lm_head, threads,
                              [&](std::span<float> out, std::span<const float> in, int rows) {
                                  rmsnorm(out, in, w_.final_norm, rows, D, c.norm_eps);
                              });
    }

private:
    llama_config config_;
    llama_weights w_;
    model_options options_;
};

}  // namespace kvcar::examples
