// Tests for examples/common/tokenizer.hpp: which tokenizer a model folder gets, BOS/EOS from its
// config files, the error when there is none, and token-id lists.
#include "catch.hpp"

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "examples/common/tokenizer.hpp"

namespace {

namespace fs = std::filesystem;
using kvcar::examples::find_tokenizer;
using kvcar::examples::format_token_ids;
using kvcar::examples::parse_token_ids;
using kvcar::examples::tokenizer;

std::string shared(const std::string& rel) { return std::string(KVCAR_SHARED_DATA) + "/" + rel; }

/// A fresh empty folder under the temp dir, removed at scope exit.
struct temp_folder {
    fs::path path;
    temp_folder() {
        std::random_device rd;
        path = fs::temp_directory_path() / ("kvcar_tokenizer_test_" + std::to_string(rd()));
        fs::create_directories(path);
    }
    ~temp_folder() { fs::remove_all(path); }
    void write(const std::string& name, const std::string& text) const {
        std::ofstream(path / name, std::ios::binary) << text;
    }
    void copy(const std::string& from, const std::string& name) const {
        fs::copy_file(from, path / name, fs::copy_options::overwrite_existing);
    }
};

// A tiny tokenizer.json: 3 specials, bytes, "▁" and "a".
std::string tiny_json() {
    std::string vocab = R"("<unk>":0,"<s>":1,"</s>":2)";
    for (int b = 0; b < 256; ++b) vocab += ",\"<0x" + std::string(1, "0123456789ABCDEF"[b >> 4]) +
                                           std::string(1, "0123456789ABCDEF"[b & 15]) + ">\":" + std::to_string(3 + b);
    vocab += ",\"\xE2\x96\x81\":259,\"a\":260";
    return R"({"added_tokens":[{"id":1,"content":"<s>","special":true},{"id":2,"content":"</s>","special":true}],
      "normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"\u2581"},
        {"type":"Replace","pattern":{"String":" "},"content":"\u2581"}]},
      "pre_tokenizer":null,"post_processor":null,
      "decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"\u2581"},"content":" "},
        {"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},
      "model":{"type":"BPE","unk_token":"<unk>","byte_fallback":true,"fuse_unk":true,"vocab":{)" +
           vocab + R"(},"merges":[]}})";
}

TEST_CASE("tokenizer: a folder's tokenizer.json comes first, and config.json gives BOS/EOS",
          "[tokenizer]") {
    temp_folder f;
    f.write("tokenizer.json", tiny_json());
    f.write("config.json", R"({"bos_token_id": 1, "eos_token_id": [2, 0]})");
    f.write("generation_config.json", R"({"eos_token_id": 2})");
    f.write("tokenizer_config.json", R"({"add_bos_token": true})");
    const tokenizer t = find_tokenizer({.model_path = f.path.string(), .llama2c_model = false,
                                        .tokenizer_path = "", .tokenizer_dir = "",
                                        .model_vocab_size = 261, .gpt2_fallback_dir = ""});
    CHECK(t.path() == (f.path / "tokenizer.json").string());
    CHECK(t.bos_id() == 1);
    CHECK(t.eos_ids() == std::vector<int>{2});  // generation_config.json wins over config.json
    CHECK(t.add_bos());
    CHECK(t.encode("a") == std::vector<int>{1, 259, 260});
    CHECK(t.encode("a", false) == std::vector<int>{259, 260});
    CHECK(t.decode(std::vector<int>{1, 259, 260, 2}) == "a");
    CHECK(t.is_eos(2));
    CHECK(t.decode_piece(-1, 1) == "");
    CHECK(t.decode_piece(1, 259) == "");
    CHECK(t.decode_piece(259, 260) == "a");
}

TEST_CASE("tokenizer: tokenizer.model, then vocab.json + merges.txt", "[tokenizer][data]") {
    const std::string model = shared("tokenizers/llama2/tokenizer.model");
    const std::string gpt2 = shared("tokenizers/gpt2");
    if (!fs::exists(model) || !fs::exists(gpt2 + "/vocab.json")) {
        WARN("shared data not found under " KVCAR_SHARED_DATA "; skipping");
        return;
    }
    temp_folder f;
    f.copy(gpt2 + "/vocab.json", "vocab.json");
    f.copy(gpt2 + "/merges.txt", "merges.txt");
    CHECK(tokenizer::load_dir(f.path.string()).vocab_size() == 50257);
    CHECK_FALSE(tokenizer::load_dir(f.path.string()).add_bos());
    f.copy(model, "tokenizer.model");  // a temporary copy, removed with the folder
    const tokenizer t = tokenizer::load_dir(f.path.string());
    CHECK(t.vocab_size() == 32000);
    CHECK(t.add_bos());
    CHECK(t.encode("Hello world") == std::vector<int>{1, 15043, 3186});
    CHECK(t.decode(t.encode("Hello world")) == "Hello world");
    CHECK(t.eos_ids() == std::vector<int>{2});
}

TEST_CASE("tokenizer: no tokenizer is an error naming what was looked for and where",
          "[tokenizer]") {
    temp_folder f;
    f.write("config.json", "{}");
    const auto request = [&](int vocab, const std::string& fallback) {
        return kvcar::examples::tokenizer_request{.model_path = f.path.string(), .llama2c_model = false,
                                                  .tokenizer_path = "", .tokenizer_dir = "",
                                                  .model_vocab_size = vocab, .gpt2_fallback_dir = fallback};
    };
    CHECK_THROWS_WITH(find_tokenizer(request(32000, "")),
                      Catch::Contains("looked in '" + f.path.string() + "'") &&
                          Catch::Contains("tokenizer.json, tokenizer.model, vocab.json + merges.txt") &&
                          Catch::Contains("--tokenizer PATH"));
    // The GPT-2 fallback is for 50257-token models only.
    CHECK_THROWS_WITH(find_tokenizer(request(32000, shared("tokenizers/gpt2"))),
                      Catch::Contains("only for 50257-token models"));
    f.write("merges.txt", "#version: 0.2\n");  // half a GPT-2 tokenizer is none
    CHECK_THROWS_WITH(tokenizer::load_dir(f.path.string()), Catch::Contains("no tokenizer in"));
    CHECK_THROWS_WITH(tokenizer::load_file((f.path / "config.txt").string()), Catch::Contains("not a file"));
}

TEST_CASE("tokenizer: token id lists", "[tokenizer]") {
    CHECK(parse_token_ids("1 450 4996", 32000, "x") == std::vector<int>{1, 450, 4996});
    CHECK(parse_token_ids("[1, 450,4996]\n", 32000, "x") == std::vector<int>{1, 450, 4996});
    CHECK(parse_token_ids("", 32000, "x").empty());
    CHECK_THROWS_WITH(parse_token_ids("1 32000", 32000, "--prompt-ids"),
                      Catch::Contains("--prompt-ids: '32000' is not a token id in [0, 32000)"));
    CHECK_THROWS_WITH(parse_token_ids("1 -2", 32000, "x"), Catch::Contains("'-2'"));
    CHECK_THROWS_WITH(parse_token_ids("1 2a", 32000, "x"), Catch::Contains("'2a'"));
    CHECK_THROWS(parse_token_ids("99999999999999999999", 32000, "x"));
    const std::vector<int> ids = {1, 2, 3};
    CHECK(format_token_ids(ids) == "[1, 2, 3]");
    CHECK(parse_token_ids(format_token_ids(ids), 4, "x") == ids);
}

}  // namespace
