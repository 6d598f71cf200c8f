// examples/models/cuda/device_weights.cuh — what a model family hands the CUDA model
// (device_model.cuh): its weights on the device, cut to one tensor-parallel rank's share, and
// the family's traits, the few ways GPT-2 and Llama differ in a forward pass.
//
// A family folder supplies one upload_weights(host model, rank_split, weight_precision)
// (gpt2/gpt2_cuda.cuh, llama/llama_cuda.cuh); device_model then runs every family through the same code, choosing a
// kernel by a trait where the families differ, never by the family's name.
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/cuda/device_weights.cuh needs nvcc"
#endif

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/cuda/buffer.cuh"
#include "kvcar/reference/attention.hpp"
#include "kvcar/rope.hpp"
#include "kvcar/shard.hpp"

#include "examples/models/cuda/device_matrix.cuh"
#include "examples/models/model_common.hpp"

namespace kvcar::examples::cuda_model {

/// The normalisation before attention, before the MLP and before the LM head.
enum class norm_kind {
    layernorm,  ///< (x − mean) / √(var + ε) · w + b (GPT-2)
    rmsnorm,    ///< x / √(mean x² + ε) · w, no bias (Llama)
};

/// The MLP between its two matrices.
enum class mlp_kind {
    gelu,    ///< up = h W_fcᵀ + b_fc, act = GELU_tanh(up): one up matrix with a bias (GPT-2)
    swiglu,  ///< [gate | up] = h W_guᵀ, act = silu(gate) ⊙ up: the fused pair (Llama)
};

/// How a token's position enters the model.
enum class position_kind {
    learned,  ///< a learned row added to the token's embedding (GPT-2)
    rope,     ///< q and k rotated by position (Llama); no table
};

/// The traits of a model family: all device_model needs to know about which family it runs.
struct device_family {
    const char* name = "";  ///< "gpt2", "llama": error messages name the model by it
    norm_kind norm = norm_kind::layernorm;
    mlp_kind mlp = mlp_kind::gelu;
    position_kind positions = position_kind::learned;
};

/// One transformer block's weights on the device. Every family fills the same list: norms, the
/// fused [q | k | v] projection, the output projection, and the MLP, whose first matrix is
/// mlp_kind's (c_fc for gelu, the fused [gate | up] for swiglu). A family without biases
/// leaves them empty. The matrices are fp32 or bf16 (device_matrix); norms and biases fp32.
struct device_layer {
    gpu::device_buffer<float> norm1_w, norm1_b;  // [D]
    device_matrix qkv_w;                         // [Q + 2 KV][D]
    gpu::device_buffer<float> qkv_b;             // [Q + 2 KV]
    device_matrix o_w;                           // [D][Q]
    gpu::device_buffer<float> o_b;               // [D]
    gpu::device_buffer<float> norm2_w, norm2_b;  // [D]
    device_matrix up_w;                          // gelu [F][D]; swiglu [2F][D] (gate, up)
    gpu::device_buffer<float> up_b;              // gelu [F]
    device_matrix down_w;                        // [D][F]
    gpu::device_buffer<float> down_b;            // [D]
};

/// A model (or one rank's share of it) on the device: its traits, its shape as this rank sees
/// it, and its weights.
struct device_weights {
    device_family family;
    int d_model = 0;
    int d_ff = 0;     ///< this rank's MLP hidden units
    int n_heads = 0;  ///< this rank's query heads
    float norm_eps = 1e-5f;
    rope_params rope{};                 ///< position_kind::rope only
    bool rotate_before_storing = true;  ///< rope: keys rotated before the cache stores them
    attention_params attention{};       ///< how attention reads the cache (this rank's heads)
    weight_precision precision = weight_precision::fp32;  ///< storage of the matrices

    device_matrix token_embedding;                 // [V][D]: the largest matrix
    gpu::device_buffer<float> position_embedding;  // [P][D]; position_kind::learned only
    std::vector<device_layer> layers;
    gpu::device_buffer<float> final_norm_w, final_norm_b;  // [D]
    device_matrix lm_head;  // [V][D], or empty when tied to token_embedding

    /// The LM head: its own matrix, or the token embedding when tied.
    const device_matrix& head() const { return lm_head.empty() ? token_embedding : lm_head; }

    /// Bytes of weights on the device (a tied head counted once).
    std::size_t bytes() const {
        std::size_t sum = token_embedding.bytes() + position_embedding.bytes() +
                          final_norm_w.bytes() + final_norm_b.bytes() + lm_head.bytes();
        for (const device_layer& d : layers) {
            for (const auto* b : {&d.norm1_w, &d.norm1_b, &d.qkv_b, &d.o_b, &d.norm2_w,
                                  &d.norm2_b, &d.up_b, &d.down_b})
                sum += b->bytes();
            for (const auto* m : {&d.qkv_w, &d.o_w, &d.up_w, &d.down_w}) sum += m->bytes();
        }
        return sum;
    }
};

/// Rows [first, first + count) of a row-major matrix with `cols` columns.
inline std::vector<float> matrix_rows(const std::vector<float>& m, std::size_t cols,
                                      std::size_t first, std::size_t count) {
    return {m.begin() + std::ptrdiff_t(first * cols),
            m.begin() + std::ptrdiff_t((first + count) * cols)};
}

/// Columns [first, first + count) of a row-major matrix with `cols` columns.
inline std::vector<float> matrix_columns(const std::vector<float>& m, std::size_t cols,
                                         std::size_t first, std::size_t count) {
    const std::size_t rows = m.size() / cols;
    std::vector<float> out(rows * count);
    for (std::size_t r = 0; r < rows; ++r)
        std::copy_n(m.begin() + std::ptrdiff_t(r * cols + first), count,
                    out.begin() + std::ptrdiff_t(r * count));
    return out;
}

/// a, then b, then c (the fused projections), as one device buffer (biases).
inline gpu::device_buffer<float> upload_concat(const std::vector<float>& a,
                                                const std::vector<float>& b,
                                                const std::vector<float>& c) {
    std::vector<float> all(a);
    all.insert(all.end(), b.begin(), b.end());
    all.insert(all.end(), c.begin(), c.end());
    return gpu::device_buffer<float>(all);
}

/// A [rows][cols] matrix (rows = its size / cols) on the device in precision p.
inline device_matrix upload_matrix(const std::vector<float>& m, std::size_t cols,
                                   weight_precision p) {
    return device_matrix(m, int(m.size() / cols), int(cols), p);
}

/// The rows of a, then b, then c (matrices of `cols` columns) as one device matrix.
inline device_matrix upload_matrix_concat(const std::vector<float>& a,
                                          const std::vector<float>& b,
                                          const std::vector<float>& c, std::size_t cols,
                                          weight_precision p) {
    std::vector<float> all(a);
    all.insert(all.end(), b.begin(), b.end());
    all.insert(all.end(), c.begin(), c.end());
    return upload_matrix(all, cols, p);
}

/// Which part of every weight one tensor-parallel rank keeps (device_model.cuh explains the
/// split): its query heads and KV heads (kvcar/shard.hpp) and its slice of the MLP's hidden
/// units.
struct rank_split {
    head_range query_heads{};
    head_range kv_heads{};
    std::size_t head_dim = 0;
    std::size_t ff = 0;   ///< hidden units per rank
    std::size_t ff0 = 0;  ///< this rank's first hidden unit

    /// The split of a model of `total_heads` query heads and `total_ff` hidden units whose cache
    /// is `full`; throws when the hidden units do not divide evenly.
    static rank_split of(int total_heads, int total_ff, const kv_geometry& full,
                         const head_shard& shard) {
        require(total_ff % shard.world == 0,
                "device_model: the MLP's " + std::to_string(total_ff) +
                    " hidden units cannot be split evenly across " + std::to_string(shard.world) +
                    " ranks");
        rank_split s;
        s.query_heads = query_heads_of(total_heads, full, shard);
        s.kv_heads = kv_heads_of(full, shard);
        s.head_dim = std::size_t(full.head_dim);
        s.ff = std::size_t(total_ff / shard.world);
        s.ff0 = std::size_t(shard.rank) * s.ff;
        return s;
    }

    /// This rank's rows of a [heads · head_dim][cols] projection (cols = 1 for a bias).
    std::vector<float> head_rows(const std::vector<float>& m, std::size_t cols,
                                 head_range h) const {
        return matrix_rows(m, cols, std::size_t(h.first) * head_dim,
                           std::size_t(h.count) * head_dim);
    }
    /// This rank's columns of W_o ([D][total query heads · head_dim]).
    std::vector<float> o_columns(const std::vector<float>& m, std::size_t cols) const {
        return matrix_columns(m, cols, std::size_t(query_heads.first) * head_dim,
                              std::size_t(query_heads.count) * head_dim);
    }
};

}  // namespace kvcar::examples::cuda_model
