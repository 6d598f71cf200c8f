// examples/models/llama/llama_cuda.cuh — Llama's part of the CUDA model (examples/models/cuda/
// device_model.cuh): its traits and its weights uploaded, whole or one tensor-parallel rank's
// share.
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/llama/llama_cuda.cuh needs nvcc"
#endif

#include <cstddef>
#include <utility>
#include <vector>

#include "kvcar/cuda/buffer.cuh"

#include "examples/models/cuda/device_weights.cuh"
#include "examples/models/llama/llama.hpp"
#include "examples/models/model_common.hpp"

namespace kvcar::examples::cuda_model {

/// RMSNorm without biases, the SwiGLU MLP, rotary positions.
inline constexpr device_family llama_family{.name = "llama",
                                            .norm = norm_kind::rmsnorm,
                                            .mlp = mlp_kind::swiglu,
                                            .positions = position_kind::rope};

/// `m`'s weights on the current device, rank `split`'s share of the heads and hidden units, the
/// matrices in precision `p` (converted one at a time on the host).
inline device_weights upload_weights(const llama_model& m, const rank_split& split,
                                     weight_precision p) {
    const llama_config& c = m.config();
    const llama_weights& w = m.weights();
    const std::size_t D = std::size_t(c.d_model);
    const auto up = [](const std::vector<float>& v) { return gpu::device_buffer<float>(v); };
    const head_range qh = split.query_heads, kvh = split.kv_heads;
    device_weights d;
    d.family = llama_family;
    d.d_model = c.d_model;
    d.d_ff = int(split.ff);
    d.n_heads = qh.count;
    d.norm_eps = c.norm_eps;
    d.rope = c.rope;
    d.rotate_before_storing = m.options().keys == cached_keys::post_rope;
    d.attention = m.attention();
    d.attention.n_heads = qh.count;
    d.precision = p;
    d.token_embedding = upload_matrix(w.token_embedding, D, p);
    for (const llama_layer& L : w.layers) {
        device_layer l;
        l.norm1_w = up(L.attn_norm);
        l.qkv_w = upload_matrix_concat(split.head_rows(L.wq, D, qh), split.head_rows(L.wk, D, kvh),
                                       split.head_rows(L.wv, D, kvh), D, p);
        l.o_w = upload_matrix(split.o_columns(L.wo, std::size_t(c.n_heads) * split.head_dim),
                              std::size_t(qh.count) * split.head_dim, p);
        l.norm2_w = up(L.ffn_norm);
        l.up_w = upload_matrix_concat(matrix_rows(L.w_gate, D, split.ff0, split.ff),
                                      matrix_rows(L.w_up, D, split.ff0, split.ff), {}, D, p);
        l.down_w = upload_matrix(
            matrix_columns(L.w_down, std::size_t(c.d_ff), split.ff0, split.ff), split.ff, p);
        d.layers.push_back(std::move(l));
    }
    d.final_norm_w = up(w.final_norm);
    if (!w.lm_head.empty()) d.lm_head = upload_matrix(w.lm_head, D, p);
    return d;
}

}  // namespace kvcar::examples::cuda_model
