// examples/models/model.hpp — load a GPT-2 or Llama checkpoint from any of the three formats
// (HF safetensors folder, single .safetensors file beside its config.json, llama2.c .bin) into
// one object whose forward pass fills any kvcar cache.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/safetensors_model.hpp"

#include "examples/models/gpt2/gpt2.hpp"
#include "examples/models/hf_config.hpp"
#include "examples/models/llama/llama.hpp"
#include "examples/models/llama/llama2c.hpp"
#include "examples/models/model_common.hpp"

namespace kvcar::examples {

/// Where a checkpoint came from, which decides the tokenizer a tool pairs with it.
enum class checkpoint_format { huggingface, llama2c };

/// The dtype a safetensors checkpoint stores its weight matrices (its 2-D tensors) in, when they
/// all share one; f32 when they are mixed or there are none. The loader converts everything to
/// fp32 for the CPU; this is what `--weights auto` keeps on the GPU (BF16 stays bf16).
inline io::dtype stored_matrix_dtype(const io::safetensors_model& st) {
    bool seen = false;
    io::dtype common = io::dtype::f32;
    for (const std::string& name : st.names()) {
        const io::tensor_view t = st.tensor(name);
        if (t.shape.size() != 2) continue;
        if (seen && t.dtype != common) return io::dtype::f32;
        common = t.dtype;
        seen = true;
    }
    return common;
}

class language_model {
public:
    /// `path`: a Hugging Face model folder (config.json + model.safetensors or a sharded index),
    /// a .safetensors / .index.json file whose folder holds config.json, or a llama2.c .bin.
    static language_model load(const std::string& path, model_options options = {}) {
        namespace fs = std::filesystem;
        std::error_code ec;
        require(fs::exists(path, ec), "model: '" + path + "' does not exist");
        const bool is_dir = fs::is_directory(path, ec);
        if (!is_dir && fs::path(path).extension() == ".bin") {
            return language_model(llama_model::from_llama2c(load_llama2c(path), options),
                                  checkpoint_format::llama2c, path);
        }
        const fs::path folder = is_dir ? fs::path(path) : fs::path(path).parent_path();
        const model_config c = load_hf_config((folder / "config.json").string());
        // GPT-2 adds learned absolute positions to its input and rotates nothing: its keys are
        // the same before and after "RoPE", so pre-RoPE caching means nothing there. Refused
        // before the weights load.
        require(c.architecture != model_config::arch::gpt2 ||
                    options.keys != cached_keys::pre_rope,
                "model: " + c.source + ": --keys pre does not apply to GPT-2 (learned absolute "
                "positions, no RoPE: its keys are cached as computed); drop --keys or use post");
        const io::safetensors_model st = io::safetensors_model::open(path);
        if (c.architecture == model_config::arch::gpt2) {
            require(c.activation == "gelu_new" || c.activation == "gelu_pytorch_tanh",
                    "model: " + c.source + ": GPT-2 activation '" + c.activation +
                        "' is not supported (only the tanh GELU: gelu_new)");
            gpt2_config g;
            g.vocab_size = c.vocab_size;
            g.max_positions = c.max_positions;
            g.d_model = c.d_model;
            g.n_layers = c.n_layers;
            g.n_heads = c.n_heads;
            g.d_ff = c.d_ff;
            g.norm_eps = c.norm_eps;
            return language_model(gpt2_model::from_safetensors(st, g, options),
                                  checkpoint_format::huggingface, path, stored_matrix_dtype(st));
        }
        require(c.activation == "silu",
                "model: " + c.source + ": Llama activation '" + c.activation +
                    "' is not supported (only silu)");
        llama_config l;
        l.vocab_size = c.vocab_size;
        l.max_positions = c.max_positions;
        l.d_model = c.d_model;
        l.n_layers = c.n_layers;
        l.n_heads = c.n_heads;
        l.n_kv_heads = c.n_kv_heads;
        l.head_dim = c.head_dim;
        l.d_ff = c.d_ff;
        l.norm_eps = c.norm_eps;
        l.rope = {.theta = c.rope_theta, .style = rope_style::half};
        return language_model(llama_model::from_safetensors(st, l, c.tie_embeddings, options),
                              checkpoint_format::huggingface, path, stored_matrix_dtype(st));
    }

    /// `matrices`: the dtype the checkpoint stored its weight matrices in (f32 for llama2.c
    /// files and models built in memory).
    language_model(gpt2_model m, checkpoint_format f, std::string path,
                   io::dtype matrices = io::dtype::f32)
        : impl_(std::move(m)), format_(f), path_(std::move(path)), matrices_(matrices) {}
    language_model(llama_model m, checkpoint_format f, std::string path,
                   io::dtype matrices = io::dtype::f32)
        : impl_(std::move(m)), format_(f), path_(std::move(path)), matrices_(matrices) {}

    checkpoint_format format() const { return format_; }
    /// The dtype the checkpoint stored its weight matrices in (stored_matrix_dtype); the
    /// weights in memory are fp32 whatever it was.
    io::dtype matrix_dtype() const { return matrices_; }
    const std::string& path() const { return path_; }
    bool is_gpt2() const { return std::holds_alternative<gpt2_model>(impl_); }
    /// The model inside, or null when it is the other architecture (for other backends).
    const gpt2_model* as_gpt2() const { return std::get_if<gpt2_model>(&impl_); }
    const llama_model* as_llama() const { return std::get_if<llama_model>(&impl_); }
    const char* architecture() const { return is_gpt2() ? "gpt2" : "llama"; }
    int vocab_size() const {
        return std::visit([](const auto& m) { return m.vocab_size(); }, impl_);
    }
    int max_positions() const {
        return std::visit([](const auto& m) { return m.max_positions(); }, impl_);
    }
    kv_geometry cache_geometry() const {
        return std::visit([](const auto& m) { return m.cache_geometry(); }, impl_);
    }
    const model_options& options() const {
        return std::visit([](const auto& m) -> const model_options& { return m.options(); },
                          impl_);
    }

    /// One line for a tool's banner: "llama, 6 layers, 4 heads (2 KV) of 32, vocab 50257, ...".
    std::string describe() const {
        const kv_geometry g = cache_geometry();
        return std::string(architecture()) + ", " + std::to_string(g.n_layers) + " layers, " +
               std::to_string(g.n_kv_heads) + " KV heads of " + std::to_string(g.head_dim) +
               ", vocab " + std::to_string(vocab_size()) + ", context " +
               std::to_string(max_positions()) +
               (is_gpt2() ? "" : std::string(", keys cached ") + to_string(options().keys));
    }

    /// f(model) with the family's model inside (gpt2_model or llama_model): code written once
    /// per family (the CUDA upload) picks its overload here.
    template <class F>
    decltype(auto) visit(F&& f) const {
        return std::visit(std::forward<F>(f), impl_);
    }

    /// See gpt2_model::forward / llama_model::forward.
    template <class Cache>
    std::vector<float> forward(Cache& cache, int seq, std::span<const int> tokens,
                               logits_for which = logits_for::all) const {
        return std::visit([&](const auto& m) { return m.forward(cache, seq, tokens, which); },
                          impl_);
    }

private:
    std::variant<gpt2_model, llama_model> impl_;
    checkpoint_format format_;
    std::string path_;
    io::dtype matrices_ = io::dtype::f32;
};

}  // namespace kvcar::examples
