// examples/models/gpt2/gpt2.hpp — GPT-2 on the CPU, its KV cache a kvcar cache.
//
// The whole model, read top to bottom:
//
//   x = wte[token] + wpe[position]                                   (residual stream, d_model)
//   for each layer:
//       h = LayerNorm_1(x)
//       q, k, v = split(h · W_qkv + b_qkv)                           (n_heads heads of head_dim)
//       cache.append(k, v)                  <- the layer's K/V are stored through the codec
//       a = softmax(q · Kᵀ / √head_dim, causal) · V    over K, V *decoded from the cache*
//       x = x + a · W_proj + b_proj
//       h = LayerNorm_2(x)
//       x = x + GELU_tanh(h · W_fc + b_fc) · W_out + b_out
//   logits = LayerNorm_f(x) · wteᵀ                                   (tied head)
//
// Because attention reads K and V only back from the cache, whatever a codec loses shows up in
// the logits, and nothing else differs from Hugging Face's GPT2LMHeadModel.
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

#include "examples/models/blocks.hpp"
#include "examples/models/model_common.hpp"
#include "examples/models/tensor_ops.hpp"

namespace kvcar::examples {

struct gpt2_config {
    int vocab_size = 0;
    int max_positions = 0;  ///< n_positions: rows of the learned position table
    int d_model = 0;
    int n_layers = 0;
    int n_heads = 0;
    int d_ff = 0;           ///< n_inner, 4 · d_model when config.json says null
    float norm_eps = 1e-5f;

    int head_dim() const { return d_model / n_heads; }
};

inline void validate(const gpt2_config& c) {
    require(c.vocab_size > 0 && c.max_positions > 0 && c.d_model > 0 && c.n_layers > 0 &&
                c.n_heads > 0 && c.d_ff > 0,
            "gpt2: config needs positive vocab_size, n_positions, n_embd, n_layer, n_head and "
            "n_inner");
    require(c.d_model % c.n_heads == 0, "gpt2: n_embd " + std::to_string(c.d_model) +
                                            " is not a multiple of n_head " +
                                            std::to_string(c.n_heads));
}

/// One transformer block. Matrices are [out][in] (already transposed from GPT-2's Conv1D).
struct gpt2_layer {
    std::vector<float> ln1_weight, ln1_bias;    // [D]
    std::vector<float> qkv_weight, qkv_bias;    // [3D][D], [3D]: q, then k, then v
    std::vector<float> proj_weight, proj_bias;  // [D][D], [D]
    std::vector<float> ln2_weight, ln2_bias;    // [D]
    std::vector<float> fc_weight, fc_bias;      // [F][D], [F]
    std::vector<float> out_weight, out_bias;    // [D][F], [D]
};

struct gpt2_weights {
    std::vector<float> token_embedding;     // wte [V][D]; also the LM head (tied)
    std::vector<float> position_embedding;  // wpe [P][D]
    std::vector<gpt2_layer> layers;
    std::vector<float> final_norm_weight, final_norm_bias;  // ln_f [D]
    std::vector<float> lm_head;  // [V][D] when the checkpoint carries its own, else empty (tied)
};

class gpt2_model {
public:
    gpt2_model(gpt2_config config, gpt2_weights weights, model_options options = {})
        : config_(config), w_(std::move(weights)), options_(options) {
        validate(config_);
    }

    /// Reads a Hugging Face GPT-2 checkpoint. Accepts `transformer.h.0.…` (GPT2LMHeadModel) and
    /// `h.0.…` (the original OpenAI conversion) names; ignores `attn.bias` mask buffers.
    template <class Tensors>
    static gpt2_model from_safetensors(const Tensors& st, const gpt2_config& c,
                                       model_options options = {}) {
        validate(c);
        const std::string who = "gpt2";
        const std::string p = st.contains("transformer.wte.weight") ? "transformer." : "";
        const std::int64_t V = c.vocab_size, P = c.max_positions, D = c.d_model, F = c.d_ff;
        const auto get = [&](const std::string& name, std::vector<std::int64_t> shape) {
            return load_tensor(st, p + name, shape, who);
        };
        // Conv1D weights are stored [in][out]; check that shape, then transpose to [out][in].
        const auto conv = [&](const std::string& name, std::int64_t in, std::int64_t out) {
            return transposed(get(name, {in, out}), int(in), int(out));
        };

        gpt2_weights w;
        w.token_embedding = get("wte.weight", {V, D});
        w.position_embedding = get("wpe.weight", {P, D});
        for (int l = 0; l < c.n_layers; ++l) {
            const std::string h = "h." + std::to_string(l) + ".";
            gpt2_layer L;
            L.ln1_weight = get(h + "ln_1.weight", {D});
            L.ln1_bias = get(h + "ln_1.bias", {D});
            L.qkv_weight = conv(h + "attn.c_attn.weight", D, 3 * D);
            L.qkv_bias = get(h + "attn.c_attn.bias", {3 * D});
            L.proj_weight = conv(h + "attn.c_proj.weight", D, D);
            L.proj_bias = get(h + "attn.c_proj.bias", {D});
            L.ln2_weight = get(h + "ln_2.weight", {D});
            L.ln2_bias = get(h + "ln_2.bias", {D});
            L.fc_weight = conv(h + "mlp.c_fc.weight", D, F);
            L.fc_bias = get(h + "mlp.c_fc.bias", {F});
            L.out_weight = conv(h + "mlp.c_proj.weight", F, D);
            L.out_bias = get(h + "mlp.c_proj.bias", {D});
            w.layers.push_back(std::move(L));
        }
        w.final_norm_weight = get("ln_f.weight", {D});
        w.final_norm_bias = get("ln_f.bias", {D});
        if (st.contains("lm_head.weight")) w.lm_head = load_tensor(st, "lm_head.weight", {V, D}, who);
        return gpt2_model(c, std::move(w), options);
    }

    const gpt2_config& config() const { return config_; }
    const model_options& options() const { return options_; }
    /// The weights, for a backend that copies them elsewhere (examples/models/cuda).
    const gpt2_weights& weights() const { return w_; }
    int vocab_size() const { return config_.vocab_size; }
    int max_positions() const { return config_.max_positions; }
    /// The shape of the KV cache this model fills: every head is a KV head.
    kv_geometry cache_geometry() const {
        return {config_.n_layers, config_.n_heads, config_.head_dim()};
    }

    /// Runs `tokens` (appended after what sequence `seq` of `cache` already holds) through the
    /// model; returns logits [n][vocab] (or [1][vocab] for logits_for::last).
    template <class Cache>
    std::vector<float> forward(Cache& cache, int seq, std::span<const int> tokens,
                               logits_for which = logits_for::all) const {
        const gpt2_config& c = config_;
        const int n = int(tokens.size());
        const int D = c.d_model, F = c.d_ff, V = c.vocab_size;
        const int threads = resolve_threads(options_.threads);
        check_cache_geometry("gpt2", cache.geometry(), cache_geometry());
        const int pos0 = cache.length(seq);
        check_chunk("gpt2", tokens, pos0, V, c.max_positions, cache_token_limit(cache));
        const auto N = [](long long a, long long b) { return std::size_t(a) * std::size_t(b); };

        // Embeddings: token row plus the row of the token's absolute position.
        std::vector<float> x(N(n, D));
        for (int t = 0; t < n; ++t) {
            const float* te = &w_.token_embedding[N(tokens[std::size_t(t)], D)];
            const float* pe = &w_.position_embedding[N(pos0 + t, D)];
            for (int i = 0; i < D; ++i) x[N(t, D) + std::size_t(i)] = te[i] + pe[i];
        }

        std::vector<float> h(N(n, D)), qkv(N(n, 3 * D)), q(N(n, D)), k(N(n, D)), v(N(n, D));
        std::vector<float> att(N(n, D)), proj(N(n, D)), ff(N(n, F));
        const attention_params ap{.n_heads = c.n_heads};  // scale 1/√head_dim, causal, no RoPE
        for (int l = 0; l < c.n_layers; ++l) {
            const gpt2_layer& L = w_.layers[std::size_t(l)];

            // --- attention ---
            layernorm(h, x, L.ln1_weight, L.ln1_bias, n, D, c.norm_eps);
            matmul(qkv, h, L.qkv_weight, L.qkv_bias, n, D, 3 * D, threads);
            for (int t = 0; t < n; ++t) {
                const float* row = &qkv[N(t, 3 * D)];
                std::copy(row, row + D, &q[N(t, D)]);
                std::copy(row + D, row + 2 * D, &k[N(t, D)]);
                std::copy(row + 2 * D, row + 3 * D, &v[N(t, D)]);
            }
            attention_through_cache(cache, seq, l, ap, q, k, v, pos0, att);
            matmul(proj, att, L.proj_weight, L.proj_bias, n, D, D, threads);
            add_inplace(x, proj);

            // --- MLP ---
            layernorm(h, x, L.ln2_weight, L.ln2_bias, n, D, c.norm_eps);
            matmul(ff, h, L.fc_weight, L.fc_bias, n, D, F, threads);
            gelu_tanh(ff);
            matmul(proj, ff, L.out_weight, L.out_bias, n, F, D, threads);
            add_inplace(x, proj);
        }

        // Final norm and the LM head, for the rows asked for.
        return lm_head_logits(x, n, which, D, V, w_.token_embedding, w_.lm_head, threads,
                              [&](std::span<float> out, std::span<const float> in, int rows) {
                                  layernorm(out, in, w_.final_norm_weight, w_.final_norm_bias,
                                            rows, D, c.norm_eps);
                              });
    }

private:
    gpt2_config config_;
    gpt2_weights w_;
    model_options options_;
};

}  // namespace kvcar::examples
