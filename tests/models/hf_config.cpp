// Tests for examples/models/hf_config.hpp: the GPT-2 and Llama keys of config.json, HF's
// defaults, and errors that name the file and the problem.
#include <filesystem>
#include <fstream>
#include <string>
#include <type_traits>

#include "catch.hpp"
#include "examples/models/hf_config.hpp"

using kvcar::examples::model_config;
using kvcar::examples::parse_hf_config;

static_assert(std::is_aggregate_v<model_config>);

namespace {

model_config parse(const std::string& json) { return parse_hf_config(json, "config.json"); }

const std::string gpt2_json = R"({
  "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
  "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_embd": 128, "n_head": 4,
  "n_inner": null, "n_layer": 6, "n_positions": 512, "vocab_size": 50257
})";

const std::string llama_json = R"({
  "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 128,
  "intermediate_size": 352, "max_position_embeddings": 512, "model_type": "llama",
  "num_attention_heads": 4, "num_hidden_layers": 6, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": true, "vocab_size": 32000
})";

/// `base` with `key` set to the raw JSON `value` (added if absent), or removed when value is "".
std::string with(const std::string& base, const std::string& key, const std::string& value) {
    kvcar::io::json_value v = kvcar::io::parse_json(base, "base");
    kvcar::io::json_value out = kvcar::io::json_value::object();
    for (const auto& [k, e] : v.items())
        if (k != key) out.set(k, e);
    if (!value.empty()) out.set(key, kvcar::io::parse_json(value, "value"));
    return kvcar::io::to_json(out);
}

}  // namespace

TEST_CASE("hf_config: the real gpt2-tiny config", "[models][data]") {
    const std::string path = std::string(KVCAR_SHARED_DATA) + "/models/gpt2-tiny/config.json";
    if (!std::filesystem::exists(path)) {
        WARN("skipped: " << path << " is absent");
        return;
    }
    const model_config c = kvcar::examples::load_hf_config(path);
    CHECK(c.architecture == model_config::arch::gpt2);
    CHECK(c.vocab_size == 50257);
    CHECK(c.d_model == 128);
    CHECK(c.n_layers == 6);
    CHECK(c.n_heads == 4);
    CHECK(c.n_kv_heads == 4);
    CHECK(c.head_dim == 32);
    CHECK(c.d_ff == 512);  // n_inner null -> 4 * n_embd
    CHECK(c.max_positions == 512);
    CHECK(c.norm_eps == 1e-5f);
    CHECK(c.tie_embeddings);
    CHECK(c.activation == "gelu_new");
    CHECK(c.source == path);
    CHECK(c.kv().token_width() == 128);
    // A model folder works too.
    CHECK(kvcar::examples::load_hf_config(std::filesystem::path(path).parent_path().string()).d_model ==
          128);
}

TEST_CASE("hf_config: the real llama-tiny config (transformers 5 rope_parameters)", "[models][data]") {
    const std::string path = std::string(KVCAR_SHARED_DATA) + "/models/llama-tiny/config.json";
    if (!std::filesystem::exists(path)) {
        WARN("skipped: " << path << " is absent");
        return;
    }
    const model_config c = kvcar::examples::load_hf_config(path);
    CHECK(c.architecture == model_config::arch::llama);
    CHECK(c.vocab_size == 50257);
    CHECK(c.d_model == 128);
    CHECK(c.n_layers == 6);
    CHECK(c.n_heads == 4);
    CHECK(c.n_kv_heads == 2);
    CHECK(c.head_dim == 32);
    CHECK(c.d_ff == 352);
    CHECK(c.max_positions == 512);
    CHECK(c.norm_eps == 1e-5f);
    CHECK(c.rope_theta == 10000.0f);
    CHECK(c.tie_embeddings);
    CHECK(c.activation == "silu");
    CHECK(c.kv().token_width() == 64);
}

TEST_CASE("hf_config: GPT-2 keys and defaults", "[models]") {
    model_config c = parse(gpt2_json);
    CHECK(c.architecture == model_config::arch::gpt2);
    CHECK(c.d_ff == 512);
    CHECK(c.source == "config.json");
    CHECK(parse(with(gpt2_json, "n_inner", "1000")).d_ff == 1000);
    // Identified by "architectures" alone, with HF's defaults for the optional keys.
    c = parse(with(with(with(gpt2_json, "model_type", ""), "layer_norm_epsilon", ""),
                   "activation_function", ""));
    CHECK(c.architecture == model_config::arch::gpt2);
    CHECK(c.norm_eps == 1e-5f);
    CHECK(c.activation == "gelu_new");
    CHECK(c.tie_embeddings);
    CHECK_FALSE(parse(with(gpt2_json, "tie_word_embeddings", "false")).tie_embeddings);
    // Very old configs say n_ctx.
    CHECK(parse(with(with(gpt2_json, "n_positions", ""), "n_ctx", "1024")).max_positions == 1024);
}

TEST_CASE("hf_config: Llama keys and defaults", "[models]") {
    model_config c = parse(llama_json);
    CHECK(c.n_kv_heads == 2);
    CHECK(c.head_dim == 32);
    c = parse(
        with(with(with(with(with(with(llama_json, "num_key_value_heads", ""), "rope_theta", ""),
                            "tie_word_embeddings", ""),
                       "rms_norm_eps", ""),
                  "max_position_embeddings", ""),
             "hidden_act", ""));
    CHECK(c.n_kv_heads == 4);  // default: no GQA
    CHECK(c.rope_theta == 10000.0f);
    CHECK_FALSE(c.tie_embeddings);  // HF's LlamaConfig default
    CHECK(c.norm_eps == 1e-6f);
    CHECK(c.max_positions == 2048);
    CHECK(c.activation == "silu");
    CHECK(parse(with(llama_json, "num_key_value_heads", "null")).n_kv_heads == 4);
    CHECK(parse(with(llama_json, "head_dim", "64")).head_dim == 64);
    CHECK(parse(with(llama_json, "rope_theta", "500000.0")).rope_theta == 500000.0f);
    CHECK(parse(with(with(llama_json, "rope_theta", ""), "rope_parameters",
                     R"({"rope_theta": 1000000.0, "rope_type": "default"})"))
              .rope_theta == 1000000.0f);
    CHECK(parse(with(llama_json, "rope_scaling", "null")).rope_theta == 10000.0f);
    // TinyLlama-style: identified by model_type only.
    CHECK(parse(with(llama_json, "architectures", "")).architecture == model_config::arch::llama);
}

TEST_CASE("hf_config: errors name the file and the problem", "[models]") {
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "model_type", "\"bert\"")),
                        "config.json: unknown architecture 'bert'");
    KVCAR_REQUIRE_ERROR(
        parse(with(with(gpt2_json, "model_type", ""), "architectures", R"(["BertModel"])")),
        "config.json: unknown architecture 'BertModel'");
    KVCAR_REQUIRE_ERROR(parse(with(with(gpt2_json, "model_type", ""), "architectures", "")),
                        "neither 'model_type' nor 'architectures'");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "n_embd", "")), "config.json: missing key 'n_embd'");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "n_layer", "null")), "missing key 'n_layer'");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "vocab_size", "")), "missing key 'vocab_size'");
    KVCAR_REQUIRE_ERROR(parse(with(with(gpt2_json, "n_positions", ""), "n_ctx", "")),
                        "missing key 'n_ctx'");
    KVCAR_REQUIRE_ERROR(parse(with(llama_json, "intermediate_size", "")),
                        "missing key 'intermediate_size'");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "n_head", "0")),
                        "'n_head' is 0, expected a positive");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "n_embd", "-128")), "'n_embd' is -128");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "n_embd", "128.5")), "'n_embd' is not an integer");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "n_embd", "\"128\"")), "'n_embd' is a string");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "n_layer", "4294967296")), "below 2^31");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "n_head", "3")),
                        "n_embd 128 is not divisible by n_head 3");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "layer_norm_epsilon", "0")),
                        "'layer_norm_epsilon' is 0, expected a positive finite number");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "layer_norm_epsilon", "1e300")), "positive finite");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "tie_word_embeddings", "1")), "not true or false");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "activation_function", "1")), "is not a string");
    KVCAR_REQUIRE_ERROR(parse(with(gpt2_json, "scale_attn_by_inverse_layer_idx", "true")),
                        "not supported");
    KVCAR_REQUIRE_ERROR(parse(with(llama_json, "num_attention_heads", "3")),
                        "hidden_size 128 is not divisible by num_attention_heads 3");
    KVCAR_REQUIRE_ERROR(parse(with(llama_json, "num_key_value_heads", "3")),
                        "num_attention_heads 4 is not divisible by num_key_value_heads 3");
    KVCAR_REQUIRE_ERROR(parse(with(llama_json, "head_dim", "33")), "head_dim 33 is odd");
    KVCAR_REQUIRE_ERROR(parse(with(llama_json, "rope_theta", "-1")), "'rope_theta' is -1");
    KVCAR_REQUIRE_ERROR(
        parse(with(llama_json, "rope_scaling", R"({"rope_type": "llama3", "factor": 8.0})")),
        "RoPE scaling 'llama3' (in 'rope_scaling') is not supported");
    KVCAR_REQUIRE_ERROR(parse(with(llama_json, "rope_scaling", R"({"type": "linear"})")),
                        "RoPE scaling 'linear'");
    KVCAR_REQUIRE_ERROR(parse(with(llama_json, "attention_bias", "true")),
                        "attention_bias true is not supported");
    KVCAR_REQUIRE_ERROR(parse("[1, 2]"), "config.json: config is not a JSON object");
    KVCAR_REQUIRE_ERROR(parse("{\"model_type\": \"gpt2\",}"),
                        "config.json: not valid JSON: 1:23: trailing comma in object");
}

TEST_CASE("hf_config: load_hf_config names the file", "[models]") {
    const auto dir = std::filesystem::temp_directory_path() / "kvcar_test_hf_config";
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "config.json").string();
    std::ofstream(path) << with(gpt2_json, "model_type", "\"bert\"");
    KVCAR_REQUIRE_ERROR(kvcar::examples::load_hf_config(path), path + ": unknown architecture 'bert'");
    KVCAR_REQUIRE_ERROR(kvcar::examples::load_hf_config((dir / "none.json").string()), "no such file");
    std::filesystem::remove(path);
    KVCAR_REQUIRE_ERROR(kvcar::examples::load_hf_config(dir.string()), "config.json: cannot open");
    std::filesystem::remove_all(dir);
}
