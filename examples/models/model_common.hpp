// examples/models/model_common.hpp — what GPT-2 and Llama share: run options, checks on a chunk
// of tokens before it touches the cache, and loading a tensor with its shape checked.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvcar/common.hpp"

namespace kvcar::examples {

/// What a model's K cache holds for RoPE models (GPT-2 has no RoPE and ignores it).
enum class cached_keys {
    /// Keys rotated to their position before they are stored, as every inference engine does;
    /// attention then needs no RoPE.
    post_rope,
    /// Keys stored as the projection produced them; attention rotates each decoded key by its
    /// position (rope_mode::on_read). A codec fitted to un-rotated keys wants this (Palu).
    pre_rope,
};

inline const char* to_string(cached_keys k) {
    return k == cached_keys::post_rope ? "post-rope" : "pre-rope";
}

/// How the CUDA model stores its weight matrices (the fused qkv, o, up/gate-up and down
/// projections and the token embedding / LM head; norms and biases are always fp32). The CPU
/// model always holds and multiplies fp32.
enum class weight_precision {
    fp32,  ///< fp32 matrices, cuBLAS SGEMM: the exact path, as the CPU computes
    bf16,  ///< bfloat16 matrices, fp32 accumulation: half the memory and the weight traffic
};

inline const char* to_string(weight_precision p) {
    return p == weight_precision::bf16 ? "bf16" : "fp32";
}

struct model_options {
    int threads = 0;  ///< matmul threads; 0 = every hardware thread
    cached_keys keys = cached_keys::post_rope;
};

/// Which rows of logits a forward pass computes: every token's (perplexity, scoring) or only the
/// last one's (generation, where the LM head is most of the cost of a step).
enum class logits_for { all, last };

/// The most tokens `cache` can hold for one sequence, when its storage says so.
template <class Cache>
int cache_token_limit(const Cache& cache) {
    if constexpr (requires { cache.storage().max_tokens(); }) {
        return int(cache.storage().max_tokens());
    } else {
        return INT_MAX;
    }
}

/// Validates a chunk of `tokens` that is to be appended at `position` before anything is written,
/// so a failed forward leaves the cache as it was.
inline void check_chunk(const std::string& who, std::span<const int> tokens, int position,
                        int vocab_size, int max_positions, int cache_limit) {
    require(!tokens.empty(), who + ": the prompt is empty (a forward pass needs at least one token)");
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        require(tokens[i] >= 0 && tokens[i] < vocab_size,
                who + ": token " + std::to_string(i) + " has id " + std::to_string(tokens[i]) +
                    ", outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
    }
    const long long end = (long long)position + (long long)tokens.size();
    require(end <= max_positions,
            who + ": " + std::to_string(end) + " tokens (" + std::to_string(position) +
                " cached + " + std::to_string(tokens.size()) +
                " new) exceed the model's context of " + std::to_string(max_positions) +
                " positions");
    require(end <= cache_limit,
            who + ": " + std::to_string(end) + " tokens (" + std::to_string(position) +
                " cached + " + std::to_string(tokens.size()) +
                " new) exceed the KV cache's capacity of " + std::to_string(cache_limit) +
                " tokens per sequence");
}

/// A tokenizer must produce exactly the ids the model has embeddings for: one with a different
/// vocabulary would index the wrong rows (or past the table) without any other symptom.
inline void check_tokenizer_vocab(int tokenizer_vocab, int model_vocab, const std::string& what) {
    require(tokenizer_vocab == model_vocab,
            "tokenizer " + what + " has " + std::to_string(tokenizer_vocab) +
                " tokens but the model's vocabulary has " + std::to_string(model_vocab));
}

inline std::string geometry_string(const kv_geometry& g) {
    return std::to_string(g.n_layers) + " layers x " + std::to_string(g.n_kv_heads) +
           " KV heads x " + std::to_string(g.head_dim);
}

/// A cache built for another model would take this model's K/V rows as several tokens each, or
/// drop layers, without any error of its own, so the model checks the shape it writes into.
inline void check_cache_geometry(const std::string& who, const kv_geometry& cache,
                                 const kv_geometry& model) {
    require(cache.n_layers == model.n_layers && cache.n_kv_heads == model.n_kv_heads &&
                cache.head_dim == model.head_dim,
            who + ": the KV cache is shaped " + geometry_string(cache) + " but the model needs " +
                geometry_string(model));
}

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    return s + "]";
}

/// Tensor `name` of a safetensors checkpoint as floats, after checking that it exists and has
/// the `expected` shape (derived from config.json). Any dtype the reader converts is accepted.
template <class Tensors>
std::vector<float> load_tensor(const Tensors& st, const std::string& name,
                               const std::vector<std::int64_t>& expected, const std::string& who) {
    require(st.contains(name), who + ": tensor '" + name + "' is missing from the checkpoint");
    std::vector<std::int64_t> shape;
    for (auto d : st.tensor(name).shape) shape.push_back(std::int64_t(d));
    require(shape == expected, who + ": tensor '" + name + "' has shape " + shape_string(shape) +
                                   " but config.json implies " + shape_string(expected));
    return st.to_float(name);
}

/// [rows][cols] -> [cols][rows]. GPT-2's Conv1D stores weights [in][out]; the matmul wants
/// torch.nn.Linear's [out][in], so they are transposed once, at load.
inline std::vector<float> transposed(const std::vector<float>& m, int rows, int cols) {
    std::vector<float> t(m.size());
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
            t[std::size_t(c) * std::size_t(rows) + std::size_t(r)] =
                m[std::size_t(r) * std::size_t(cols) + std::size_t(c)];
    return t;
}

}  // namespace kvcar::examples
