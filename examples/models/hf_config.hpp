// examples/models/hf_config.hpp — the shape of a GPT-2 or Llama model from its Hugging Face
// config.json. The examples' loader (model.hpp) reads it; the library itself knows no model
// family by name.
//
// Only the fields a forward pass and a KV cache need. Keys that HF itself defaults (norm eps,
// RoPE theta, tie_word_embeddings, ...) get HF's default when absent; the sizes that define the
// model are required, because a default there (HF's is GPT-2 small) would load the wrong model
// silently. Options that change the computation in ways the reference models do not implement
// (RoPE scaling, attention biases in Llama, GPT-2's per-layer attention scaling) are rejected
// with a message rather than ignored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/json.hpp"

namespace kvcar::examples {

/// What a transformer implementation needs to know about a checkpoint.
struct model_config {
    /// The model families kvcar's reference models implement.
    enum class arch { gpt2, llama };
    arch architecture = arch::gpt2;  ///< which family the config describes
    int vocab_size = 0;              ///< tokens in the vocabulary
    int n_layers = 0;                ///< transformer layers
    int n_heads = 0;                 ///< query heads
    int n_kv_heads = 0;              ///< KV heads; == n_heads without grouped-query attention
    int d_model = 0;                 ///< hidden size (embedding width)
    int head_dim = 0;                ///< elements per head
    int d_ff = 0;                    ///< MLP hidden width
    int max_positions = 0;           ///< longest context the model supports
    float norm_eps = 1e-5f;          ///< epsilon of its LayerNorm (GPT-2) or RMSNorm (Llama)
    float rope_theta = 10000;        ///< RoPE frequency base (Llama only)
    bool tie_embeddings = false;     ///< the output head reuses the token embedding
    std::string activation;          ///< "gelu_new", "silu", ... as config.json names it
    std::string source;              ///< the file (or name) it was parsed from

    /// The KV cache this model needs.
    kv_geometry kv() const { return {n_layers, n_kv_heads, head_dim}; }
};

/// "gpt2" or "llama".
constexpr const char* to_string(model_config::arch a) {
    return a == model_config::arch::gpt2 ? "gpt2" : "llama";
}

namespace hf_config_detail {

class hf_config_reader {
public:
    hf_config_reader(const io::json_value& root, std::string_view source)
        : root_(root), source_(source) {}

    [[noreturn]] void fail(const std::string& problem) const {
        throw error(io::detail::msg() + "kvcar: " + source_ + ": " + problem);
    }

    /// The member `key`, treating JSON null as absent (HF writes "n_inner": null).
    const io::json_value* get(std::string_view key) const {
        const io::json_value* v = root_.find(key);
        return v && !v->is_null() ? v : nullptr;
    }

    int positive_int(std::string_view key) const {
        const io::json_value* v = get(key);
        if (!v) fail(io::detail::msg() + "missing key '" + key + "'");
        return positive_int(key, *v);
    }
    int positive_int(std::string_view key, const io::json_value& v) const {
        if (!v.is_integer())
            fail(io::detail::msg() + "'" + key + "' is " +
                 (v.is_number() ? std::string("not an integer")
                                : std::string(io::json_value::kind_name(v.type()))) +
                 ", expected a positive integer");
        const std::int64_t i = v.as_int();
        if (i <= 0 || i > std::numeric_limits<int>::max())
            fail(io::detail::msg() + "'" + key + "' is " + i +
                 ", expected a positive integer below 2^31");
        return int(i);
    }
    int positive_int_or(std::string_view key, int fallback) const {
        const io::json_value* v = get(key);
        return v ? positive_int(key, *v) : fallback;
    }

    float positive_float(std::string_view key, const io::json_value& v) const {
        if (!v.is_number()) fail(io::detail::msg() + "'" + key + "' is not a number");
        const double d = v.as_double();
        if (!(d > 0) || !(d <= double(std::numeric_limits<float>::max())) || !(float(d) > 0.0f))
            fail(io::detail::msg() + "'" + key + "' is " + d + ", expected a positive finite number");
        return float(d);
    }
    float positive_float_or(std::string_view key, float fallback) const {
        const io::json_value* v = get(key);
        return v ? positive_float(key, *v) : fallback;
    }

    bool bool_or(std::string_view key, bool fallback) const {
        const io::json_value* v = get(key);
        if (!v) return fallback;
        if (!v->is_bool()) fail(io::detail::msg() + "'" + key + "' is not true or false");
        return v->as_bool();
    }

    std::string string_or(std::string_view key, std::string fallback) const {
        const io::json_value* v = get(key);
        if (!v) return fallback;
        if (!v->is_string()) fail(io::detail::msg() + "'" + key + "' is not a string");
        return v->as_string();
    }

    model_config::arch architecture() const {
        if (const io::json_value* t = get("model_type")) {
            if (!t->is_string()) fail(io::detail::msg() + "'model_type' is not a string");
            if (t->as_string() == "gpt2") return model_config::arch::gpt2;
            if (t->as_string() == "llama") return model_config::arch::llama;
            fail(io::detail::msg() + "unknown architecture '" + t->as_string() +
                 "' (supported: gpt2, llama)");
        }
        if (const io::json_value* a = get("architectures"); a && a->is_array() && a->size() > 0) {
            const io::json_value& first = a->at(0);
            if (!first.is_string()) fail(io::detail::msg() + "'architectures' does not hold strings");
            const std::string& name = first.as_string();
            if (name == "GPT2LMHeadModel" || name == "GPT2Model") return model_config::arch::gpt2;
            if (name == "LlamaForCausalLM" || name == "LlamaModel")
                return model_config::arch::llama;
            fail(io::detail::msg() + "unknown architecture '" + name + "' (supported: gpt2, llama)");
        }
        fail(io::detail::msg() +
             "unknown architecture: neither 'model_type' nor 'architectures' is given");
    }

    /// RoPE theta from "rope_theta" (transformers 4) or "rope_parameters" (transformers 5);
    /// any scaling type but the default changes the rotation and is rejected.
    float rope_theta() const {
        float theta = positive_float_or("rope_theta", 10000.0f);
        for (const char* key : {"rope_scaling", "rope_parameters"}) {
            const io::json_value* p = get(key);
            if (!p) continue;
            if (!p->is_object()) fail(io::detail::msg() + "'" + key + "' is not an object");
            std::string type = "default";
            for (const char* type_key : {"rope_type", "type"})
                if (const io::json_value* t = p->find(type_key); t && t->is_string())
                    type = t->as_string();
            if (type != "default")
                fail(io::detail::msg() + "RoPE scaling '" + type + "' (in '" + key +
                     "') is not supported");
            if (const io::json_value* t = p->find("rope_theta"); t && !t->is_null())
                theta = positive_float("rope_theta", *t);
        }
        return theta;
    }

private:
    const io::json_value& root_;
    std::string source_;
};

}  // namespace hf_config_detail

/// Parses a config.json text. Throws kvcar::error "<source>: <problem>".
inline model_config parse_hf_config(std::string_view json, std::string_view source) {
    io::json_value root;
    try {
        root = io::parse_json(json, source);
    } catch (const io::json_error& e) {
        throw error(io::detail::msg() + "kvcar: " + source + ": not valid JSON: " + e.line() + ":" +
                    e.column() + ": " + e.problem());
    }
    const hf_config_detail::hf_config_reader r(root, source);
    if (!root.is_object()) r.fail(io::detail::msg() + "config is not a JSON object");

    model_config c;
    c.source = std::string(source);
    c.architecture = r.architecture();
    c.vocab_size = r.positive_int("vocab_size");
    if (c.architecture == model_config::arch::gpt2) {
        c.d_model = r.positive_int("n_embd");
        c.n_layers = r.positive_int("n_layer");
        c.n_heads = r.positive_int("n_head");
        c.n_kv_heads = c.n_heads;
        c.max_positions = r.get("n_positions") ? r.positive_int("n_positions")
                                               : r.positive_int("n_ctx");  // very old configs
        c.norm_eps = r.positive_float_or("layer_norm_epsilon", 1e-5f);
        c.activation = r.string_or("activation_function", "gelu_new");
        if (r.get("n_inner")) {
            c.d_ff = r.positive_int("n_inner");
        } else {
            if (c.d_model > std::numeric_limits<int>::max() / 4)
                r.fail(io::detail::msg() + "4 * n_embd overflows an int");
            c.d_ff = 4 * c.d_model;
        }
        c.tie_embeddings = r.bool_or("tie_word_embeddings", true);
        if (c.d_model % c.n_heads != 0)
            r.fail(io::detail::msg() + "n_embd " + c.d_model + " is not divisible by n_head " +
                   c.n_heads);
        c.head_dim = c.d_model / c.n_heads;
        if (r.bool_or("scale_attn_by_inverse_layer_idx", false))
            r.fail(io::detail::msg() + "scale_attn_by_inverse_layer_idx is not supported");
        if (!r.bool_or("scale_attn_weights", true))
            r.fail(io::detail::msg() + "scale_attn_weights false is not supported");
    } else {
        c.d_model = r.positive_int("hidden_size");
        c.n_layers = r.positive_int("num_hidden_layers");
        c.n_heads = r.positive_int("num_attention_heads");
        c.n_kv_heads = r.positive_int_or("num_key_value_heads", c.n_heads);
        c.d_ff = r.positive_int("intermediate_size");
        c.max_positions = r.positive_int_or("max_position_embeddings", 2048);
        c.norm_eps = r.positive_float_or("rms_norm_eps", 1e-6f);
        c.rope_theta = r.rope_theta();
        c.activation = r.string_or("hidden_act", "silu");
        c.tie_embeddings = r.bool_or("tie_word_embeddings", false);
        if (r.get("head_dim")) {
            c.head_dim = r.positive_int("head_dim");
        } else {
            if (c.d_model % c.n_heads != 0)
                r.fail(io::detail::msg() + "hidden_size " + c.d_model +
                       " is not divisible by num_attention_heads " + c.n_heads);
            c.head_dim = c.d_model / c.n_heads;
        }
        if (c.head_dim % 2 != 0)
            r.fail(io::detail::msg() + "head_dim " + c.head_dim + " is odd; RoPE rotates pairs");
        if (c.n_heads % c.n_kv_heads != 0)
            r.fail(io::detail::msg() + "num_attention_heads " + c.n_heads +
                   " is not divisible by num_key_value_heads " + c.n_kv_heads);
        if (r.bool_or("attention_bias", false))
            r.fail(io::detail::msg() + "attention_bias true is not supported");
        if (r.bool_or("mlp_bias", false)) r.fail(io::detail::msg() + "mlp_bias true is not supported");
    }
    return c;
}

/// Reads `path` (a config.json, or a model folder holding one) and parses it.
inline model_config load_hf_config(const std::string& path) {
    std::error_code ec;
    std::string file = path;
    if (std::filesystem::is_directory(path, ec))
        file = (std::filesystem::path(path) / "config.json").string();
    const std::vector<std::byte> bytes = io::detail::read_file_bytes(file, "hf_config");
    return parse_hf_config(
        std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), file);
}

}  // namespace kvcar::examples
