// examples/models/gpt2/gpt2_cuda.cuh — GPT-2's part of the CUDA model (examples/models/cuda/
// device_model.cuh): its traits and its weights uploaded, whole or one tensor-parallel rank's
// share.
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/gpt2/gpt2_cuda.cuh needs nvcc"
#endif

#include <cstddef>
#include <utility>
#include <vector>

#include "kvcar/cuda/buffer.cuh"
#include "kvcar/reference/attention.hpp"

#include "examples/models/cuda/device_weights.cuh"
#include "examples/models/gpt2/gpt2.hpp"

namespace kvcar::examples::cuda_model {

/// LayerNorm with biases, a GELU MLP with biases, learned absolute positions (no RoPE).
inline constexpr device_family gpt2_family{.name = "gpt2",
                                           .norm = norm_kind::layernorm,
                                           .mlp = mlp_kind::gelu,
                                           .positions = position_kind::learned};

/// `m`'s weights on the current device, rank `split`'s share of the heads and hidden units, the
/// matrices in precision `p` (converted one at a time on the host).
inline device_weights upload_weights(const gpt2_model& m, const rank_split& split,
                                     weight_precision p) {
    const gpt2_config& c = m.config();
    const gpt2_weights& w = m.weights();
    const std::size_t D = std::size_t(c.d_model);
    const auto up = [](const std::vector<float>& v) { return gpu::device_buffer<float>(v); };
    const head_range qh = split.query_heads, kvh = split.kv_heads;
    device_weights d;
    d.family = gpt2_family;
    d.d_model = c.d_model;
    d.d_ff = int(split.ff);
    d.n_heads = qh.count;
    d.norm_eps = c.norm_eps;
    d.attention = attention_params{.n_heads = qh.count};
    d.precision = p;
    d.token_embedding = upload_matrix(w.token_embedding, D, p);
    d.position_embedding = up(w.position_embedding);
    for (const gpt2_layer& L : w.layers) {
        // c_attn's rows are [q (D) | k (D) | v (D)]; GPT-2 has n_kv_heads = n_heads.
        // This rank's rows of q, k and v, each of `cols` columns (1 for the bias).
        const auto qkv_parts = [&](const std::vector<float>& all, std::size_t cols) {
            const std::size_t third = all.size() / 3;
            const std::vector<float> q(all.begin(), all.begin() + std::ptrdiff_t(third));
            const std::vector<float> k(all.begin() + std::ptrdiff_t(third),
                                       all.begin() + std::ptrdiff_t(2 * third));
            const std::vector<float> v(all.begin() + std::ptrdiff_t(2 * third), all.end());
            return std::vector<std::vector<float>>{split.head_rows(q, cols, qh),
                                                   split.head_rows(k, cols, kvh),
                                                   split.head_rows(v, cols, kvh)};
        };
        const auto qkv_w = qkv_parts(L.qkv_weight, D);
        const auto qkv_b = qkv_parts(L.qkv_bias, 1);
        device_layer l;
        l.norm1_w = up(L.ln1_weight);
        l.norm1_b = up(L.ln1_bias);
        l.qkv_w = upload_matrix_concat(qkv_w[0], qkv_w[1], qkv_w[2], D, p);
        l.qkv_b = upload_concat(qkv_b[0], qkv_b[1], qkv_b[2]);
        l.o_w = upload_matrix(split.o_columns(L.proj_weight, D),
                              std::size_t(qh.count) * split.head_dim, p);
        l.o_b = up(L.proj_bias);
        l.norm2_w = up(L.ln2_weight);
        l.norm2_b = up(L.ln2_bias);
        l.up_w = upload_matrix(matrix_rows(L.fc_weight, D, split.ff0, split.ff), D, p);
        l.up_b = up(matrix_rows(L.fc_bias, 1, split.ff0, split.ff));
        l.down_w = upload_matrix(
            matrix_columns(L.out_weight, std::size_t(c.d_ff), split.ff0, split.ff), split.ff, p);
        l.down_b = up(L.out_bias);
        d.layers.push_back(std::move(l));
    }
    d.final_norm_w = up(w.final_norm_weight);
    d.final_norm_b = up(w.final_norm_bias);
    if (!w.lm_head.empty()) d.lm_head = upload_matrix(w.lm_head, D, p);
    return d;
}

}  // namespace kvcar::examples::cuda_model
