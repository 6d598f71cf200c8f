// Tests for examples/common/hf_tokenizer.hpp (tokenizer.json, the Hugging Face tokenizers format).
//
// Tiny tokenizer.json texts written here check each step. The real vocabularies come from
// ../shared/data and are turned into tokenizer.json in memory, the way the Python side does it:
//   - GPT-2 (ByteLevel): vocab.json + merges.txt in the layout `tokenizers`' ByteLevelBPETokenizer
//     saves; ids compared with tests/fixtures/gpt2_tokens.json (made by `tokenizers`).
//   - Llama 2 (Metaspace + byte fallback): tokenizer.model converted as transformers'
//     LlamaConverter does (vocab = the pieces, merges = every split of a piece into two pieces,
//     ordered by the piece's score); the merges' count and hash and the ids are compared with what
//     tools/make_sentencepiece_fixtures.py recorded from `tokenizers` on transformers' conversion.
// The Meta-derived tokenizer.json is never written to the repository.
#include "catch.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "examples/common/hf_tokenizer.hpp"
#include "examples/common/sentencepiece_tokenizer.hpp"
#include "kvcar/io/json.hpp"

namespace {

using kvcar::examples::hf_tokenizer;
using kvcar::io::json_value;

const std::string sp = "\xE2\x96\x81";  // ▁

std::vector<int> ids(std::initializer_list<int> l) { return l; }

std::string shared(const std::string& rel) { return std::string(KVCAR_SHARED_DATA) + "/" + rel; }

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::vector<int> ints(const json_value& v) {
    std::vector<int> out;
    for (std::size_t i = 0; i < v.size(); ++i) out.push_back(int(v.at(i).as_int()));
    return out;
}

/// FNV-1a 64 of the ids as little-endian int32 bytes (as the fixture scripts hash them).
std::uint64_t ids_hash(const std::vector<int>& ids) {
    std::uint64_t h = 0xCBF29CE484222325ull;
    for (int id : ids)
        for (int k = 0; k < 4; ++k) {
            h ^= (std::uint32_t(id) >> (8 * k)) & 0xFF;
            h *= 0x100000001B3ull;
        }
    return h;
}

std::string show(const std::vector<int>& v) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return s + "]";
}

std::uint64_t fnv1a64(std::string_view bytes) {
    std::uint64_t h = 0xCBF29CE484222325ull;
    for (unsigned char b : bytes) {
        h ^= b;
        h *= 0x100000001B3ull;
    }
    return h;
}

// --- the Metaspace kind, on a tiny vocabulary --------------------------------------------------

std::string tiny_metaspace_json() {
    std::string vocab = R"("<unk>":0,"<s>":1,"</s>":2)";
    for (int b = 0; b < 256; ++b) {
        char name[32];
        std::snprintf(name, sizeof name, R"(,"<0x%02X>":%d)", b, 3 + b);
        vocab += name;
    }
    // 259 ▁, 260 a, 261 b, 262 ab, 263 ▁a, 264 ▁ab
    vocab += ",\"" + sp + "\":259,\"a\":260,\"b\":261,\"ab\":262,\"" + sp + "a\":263,\"" + sp + "ab\":264";
    return R"({"version":"1.0","added_tokens":[
      {"id":0,"content":"<unk>","special":true},{"id":1,"content":"<s>","special":true},
      {"id":2,"content":"</s>","special":true}],
    "normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":")" + sp + R"("},
      {"type":"Replace","pattern":{"String":" "},"content":")" + sp + R"("}]},
    "pre_tokenizer":null,
    "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},
      {"Sequence":{"id":"A","type_id":0}}],"pair":[],"special_tokens":{}},
    "decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":")" + sp + R"("},"content":" "},
      {"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},
    "model":{"type":"BPE","dropout":null,"unk_token":"<unk>","continuing_subword_prefix":null,
      "end_of_word_suffix":null,"fuse_unk":true,"byte_fallback":true,"ignore_merges":false,
      "vocab":{)" + vocab + R"(},
      "merges":[["a","b"],[")" + sp + R"(","a"],[")" + sp + R"(","ab"]]}})";
}

TEST_CASE("hf_tokenizer: Metaspace with byte fallback", "[hf_tokenizer]") {
    const auto t = hf_tokenizer::parse(tiny_metaspace_json());
    CHECK(t.vocab_size() == 265);
    CHECK(t.byte_fallback());
    CHECK_FALSE(t.byte_level());
    CHECK(t.add_bos());
    CHECK(t.bos_id() == 1);
    CHECK(t.is_special(2));
    CHECK(t.encode("ab") == ids({264}));  // ▁ab: "ab" (rank 0) before "▁a" (rank 1)
    CHECK(t.encode("ab", true) == ids({1, 264}));
    CHECK(t.encode("a b") == ids({263, 259, 261}));
    CHECK(t.encode("é") == ids({259, 3 + 0xC3, 3 + 0xA9}));
    CHECK(t.encode("") == ids({}));
    CHECK(t.decode(ids({1, 264, 259, 261, 3 + 0xC3, 3 + 0xA9, 2})) == "ab bé");
    CHECK(t.decode(ids({3 + 0xC3})) == "\xEF\xBF\xBD");
    CHECK(t.decode_piece(-1, 264) == "ab");
    CHECK(t.decode_piece(1, 264) == "ab");
    CHECK(t.decode_piece(264, 263) == " a");
    CHECK(t.decode_piece(264, 3 + 0xC3) == "\xC3");
    CHECK_THROWS(t.decode(ids({265})));
}

TEST_CASE("hf_tokenizer: unsupported steps are named", "[hf_tokenizer]") {
    std::string j = tiny_metaspace_json();
    const std::string pre = R"("pre_tokenizer":null)";
    j.replace(j.find(pre), pre.size(),
              R"("pre_tokenizer":{"type":"Split","pattern":{"Regex":"x"},"behavior":"Isolated","invert":false})");
    CHECK_THROWS_WITH(hf_tokenizer::parse(j), Catch::Contains("'Split' is supported only with Llama 3's"));
    std::string ws = tiny_metaspace_json();
    ws.replace(ws.find(pre), pre.size(), R"("pre_tokenizer":{"type":"Whitespace"})");
    CHECK_THROWS_WITH(hf_tokenizer::parse(ws), Catch::Contains("pre_tokenizer 'Whitespace' is not supported"));
    std::string w = tiny_metaspace_json();
    w.replace(w.find(R"("type":"BPE")"), 12, R"("type":"WordPiece")");
    CHECK_THROWS_WITH(hf_tokenizer::parse(w), Catch::Contains("only BPE"));
    CHECK_THROWS_AS(hf_tokenizer::parse("{"), kvcar::error);
}

TEST_CASE("hf_tokenizer: unknown characters without byte fallback", "[hf_tokenizer]") {
    // As tokenizers: with unk_token, runs of unknown characters become one unk (fuse_unk), even
    // when unk is also an ordinary piece; without unk_token they are dropped.
    const std::string model = R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]]%s}})";
    const auto with = [&](const std::string& extra) {
        std::string j = model;
        j.replace(j.find("%s"), 2, extra);
        return hf_tokenizer::parse(j);
    };
    CHECK(with("").encode("ab xab") == ids({2, 2}));
    CHECK(with(R"(,"unk_token":"a","fuse_unk":true)").encode("xxab yyab") == ids({0, 2, 0, 2}));
    CHECK(with(R"(,"unk_token":"a","fuse_unk":true)").encode("axx") == ids({0, 0}));
    CHECK(with(R"(,"unk_token":"a","fuse_unk":false)").encode("xxab") == ids({0, 0, 2}));
}

// --- GPT-2 as tokenizer.json ------------------------------------------------------------------

/// vocab.json + merges.txt in the tokenizer.json layout that ByteLevelBPETokenizer.save writes.
/// With `pre_tokenizer_json` and `ignore_merges`, the Llama 3 layout on GPT-2's vocabulary.
std::string gpt2_tokenizer_json(const std::string& dir, const std::string& pre_tokenizer_json = "",
                                bool ignore_merges = false) {
    const std::string vocab = read_file(dir + "/vocab.json");
    std::string merges = "[";
    std::istringstream lines(read_file(dir + "/merges.txt"));
    std::string line;
    bool first = true;
    while (std::getline(lines, line)) {
        if (line.starts_with("#version") || line.empty()) continue;
        const std::size_t space = line.find(' ');
        merges += std::string(first ? "" : ",") + "[" +
                  kvcar::io::to_json(json_value(line.substr(0, space))) + "," +
                  kvcar::io::to_json(json_value(line.substr(space + 1))) + "]";
        first = false;
    }
    merges += "]";
    const std::string byte_level =
        R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})";
    return R"({"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
      "pre_tokenizer":)" + (pre_tokenizer_json.empty() ? byte_level : pre_tokenizer_json) +
           R"(,"post_processor":)" + byte_level + R"(,"decoder":)" + byte_level +
           R"(,"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":"",
      "end_of_word_suffix":"","fuse_unk":false,"byte_fallback":false,"ignore_merges":)" +
           (ignore_merges ? "true" : "false") + R"(,"vocab":)" + vocab + R"(,"merges":)" + merges + "}}";
}

TEST_CASE("hf_tokenizer: GPT-2 ByteLevel tokenizer.json gives tokenizers' ids", "[hf_tokenizer][data]") {
    const std::string dir = shared("tokenizers/gpt2");
    if (!std::filesystem::exists(dir + "/vocab.json")) {
        WARN("shared data not found under " KVCAR_SHARED_DATA "; skipping");
        return;
    }
    const auto t = hf_tokenizer::parse(gpt2_tokenizer_json(dir), "gpt2 tokenizer.json");
    CHECK(t.vocab_size() == 50257);
    CHECK(t.byte_level());
    CHECK_FALSE(t.add_bos());
    const auto fixture = kvcar::io::load_json(std::string(KVCAR_SOURCE_DIR) + "/tests/fixtures/gpt2_tokens.json");
    int mismatches = 0, checked = 0;
    for (const auto& s : fixture.at("strings").as_array()) {
        const std::string& text = s.at("text").as_string();
        const std::vector<int> want = ints(s.at("ids"));
        const std::vector<int> got = t.encode(text);
        ++checked;
        if (got != want && ++mismatches <= 5)
            FAIL_CHECK(kvcar::io::to_json(json_value(text)) << "\n  tokenizers " << show(want)
                                                            << "\n  kvcar      " << show(got));
        CHECK(t.decode(want) == text);
    }
    const std::string raw = read_file(shared("wikitext-2/wiki.test.raw"));
    std::size_t pos = 0;
    for (const auto& line_ids : fixture.at("wiki_lines").as_array()) {
        const std::size_t eol = raw.find('\n', pos);
        const std::string line = raw.substr(pos, eol + 1 - pos);
        pos = eol + 1;
        ++checked;
        if (t.encode(line) != ints(line_ids) && ++mismatches <= 5) FAIL_CHECK("wiki line differs: " << line);
    }
    CHECK(mismatches == 0);
    WARN("GPT-2 tokenizer.json: " << checked << " texts checked, " << mismatches << " differ");
}

TEST_CASE("hf_tokenizer: Llama 3's Split + ByteLevel layout gives tokenizers' ids", "[hf_tokenizer][data]") {
    const std::string dir = shared("tokenizers/gpt2");
    if (!std::filesystem::exists(dir + "/vocab.json")) {
        WARN("shared data not found under " KVCAR_SHARED_DATA "; skipping");
        return;
    }
    // tools/make_hf_tokenizer_fixtures.py: GPT-2's vocabulary under Llama 3's pre-tokenizer
    // (a Split on Llama 3's regex, then ByteLevel without its own regex) and ignore_merges.
    const auto fixture = kvcar::io::load_json(std::string(KVCAR_SOURCE_DIR) +
                                              "/tests/fixtures/hf_split_bytelevel_tokens.json");
    const std::string pre = kvcar::io::to_json(fixture.at("pre_tokenizer"));
    const auto t = hf_tokenizer::parse(gpt2_tokenizer_json(dir, pre, fixture.at("ignore_merges").as_bool()),
                                       "llama3-style tokenizer.json");
    int mismatches = 0, checked = 0;
    for (const auto& k : fixture.at("cases").as_array()) {
        const std::string& text = k.at("text").as_string();
        const std::vector<int> want = ints(k.at("ids"));
        const std::vector<int> got = t.encode(text);
        ++checked;
        if (got != want && ++mismatches <= 5)
            FAIL_CHECK(kvcar::io::to_json(json_value(text)) << "\n  tokenizers " << show(want)
                                                            << "\n  kvcar      " << show(got));
        if (t.decode(want) != text && ++mismatches <= 5) FAIL_CHECK("decode of " << kvcar::io::to_json(json_value(text)));
    }
    CHECK(mismatches == 0);
    WARN("Llama 3 style tokenizer.json: " << checked << " texts checked, " << mismatches << " differ");
}

// --- Llama 2 tokenizer.model converted to tokenizer.json ----------------------------------------

/// The code points of `s`, as Python slices a str.
std::vector<std::string> characters(const std::string& s) {
    std::vector<std::string> out;
    for (std::size_t pos = 0; pos < s.size();) {
        const auto u = kvcar::examples::gpt2_detail::decode_utf8_at(s, pos);
        out.push_back(s.substr(pos, u.length));
        pos += u.length;
    }
    return out;
}

struct converted {
    std::string json;
    std::size_t merges;
    std::uint64_t merges_fnv;
};

/// transformers' LlamaConverter(legacy=True) in C++: the vocabulary is the pieces by id; the merges
/// are every split of a piece into two pieces, ordered by the piece's score (highest first), then
/// by the lengths of the left and right parts (longest first), stably (generate_merges).
converted llama_tokenizer_json(const kvcar::examples::sentencepiece_tokenizer& spm) {
    const int n = spm.vocab_size();
    struct merge {
        std::string left, right;
        float score;
        std::size_t left_len, right_len;
    };
    std::vector<merge> merges;
    for (int id = 0; id < n; ++id) {
        const std::string& piece = spm.piece(id);
        const std::vector<std::string> chars = characters(piece);
        std::vector<std::tuple<int, int, merge>> local;
        std::string left;
        for (std::size_t k = 1; k < chars.size(); ++k) {
            left += chars[k - 1];
            const std::string right = piece.substr(left.size());
            const int l = spm.piece_to_id(left), r = spm.piece_to_id(right);
            if (l >= 0 && r >= 0) local.push_back({l, r, {left, right, spm.score(id), k, chars.size() - k}});
        }
        std::stable_sort(local.begin(), local.end(), [](const auto& a, const auto& b) {
            return std::tie(std::get<0>(a), std::get<1>(a)) < std::tie(std::get<0>(b), std::get<1>(b));
        });
        for (auto& m : local) merges.push_back(std::move(std::get<2>(m)));
    }
    std::stable_sort(merges.begin(), merges.end(), [](const merge& a, const merge& b) {
        return std::tie(a.score, a.left_len, a.right_len) > std::tie(b.score, b.left_len, b.right_len);
    });
    std::string joined, merges_json = "[";
    for (std::size_t i = 0; i < merges.size(); ++i) {
        joined += merges[i].left + " " + merges[i].right + "\n";
        merges_json += std::string(i ? "," : "") + "[" + kvcar::io::to_json(json_value(merges[i].left)) + "," +
                       kvcar::io::to_json(json_value(merges[i].right)) + "]";
    }
    merges_json += "]";
    std::string vocab = "{";
    for (int id = 0; id < n; ++id)
        vocab += std::string(id ? "," : "") + kvcar::io::to_json(json_value(spm.piece(id))) + ":" + std::to_string(id);
    vocab += "}";
    std::string json = R"({"version":"1.0","added_tokens":[
      {"id":0,"content":"<unk>","special":true},{"id":1,"content":"<s>","special":true},
      {"id":2,"content":"</s>","special":true}],
    "normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":")" + sp + R"("},
      {"type":"Replace","pattern":{"String":" "},"content":")" + sp + R"("}]},
    "pre_tokenizer":null,
    "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},
      {"Sequence":{"id":"A","type_id":0}}],"pair":[],"special_tokens":{}},
    "decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":")" + sp + R"("},"content":" "},
      {"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},
    "model":{"type":"BPE","dropout":null,"unk_token":"<unk>","continuing_subword_prefix":null,
      "end_of_word_suffix":null,"fuse_unk":true,"byte_fallback":true,"ignore_merges":false,
      "vocab":)" + vocab + R"(,"merges":)" + merges_json + "}}";
    return {std::move(json), merges.size(), fnv1a64(joined)};
}

TEST_CASE("hf_tokenizer: Llama 2 as tokenizer.json gives tokenizers' ids", "[hf_tokenizer][data]") {
    const std::string model_path = shared("tokenizers/llama2/tokenizer.model");
    if (!std::filesystem::exists(model_path)) {
        WARN("shared data not found under " KVCAR_SHARED_DATA "; skipping");
        return;
    }
    const auto fixture = kvcar::io::load_json(std::string(KVCAR_SOURCE_DIR) +
                                              "/tests/fixtures/sentencepiece_tokens.json");
    if (fixture.at("hf_merges").is_null()) {
        WARN("the fixture was made without transformers; skipping");
        return;
    }
    const converted c = llama_tokenizer_json(kvcar::examples::sentencepiece_tokenizer::load(model_path));
    char fnv[17];
    std::snprintf(fnv, sizeof fnv, "%016llx", static_cast<unsigned long long>(c.merges_fnv));
    CHECK(c.merges == std::size_t(fixture.at("hf_merges").at("count").as_int()));
    CHECK(std::string(fnv) == fixture.at("hf_merges").at("fnv1a64").as_string());

    const auto t = hf_tokenizer::parse(c.json, "llama2 tokenizer.json (converted in memory)");
    CHECK(t.vocab_size() == 32000);
    CHECK(t.add_bos());
    CHECK(t.bos_id() == 1);
    int mismatches = 0, checked = 0, skipped = 0;
    for (const auto& k : fixture.at("cases").as_array()) {
        const std::string& text = k.at("text").as_string();
        if (k.contains("hf_ids")) {  // tokenizers matched "<s>" in the text; we never do
            ++skipped;
            continue;
        }
        ++checked;
        const std::vector<int> want = ints(k.at("ids"));
        const std::vector<int> got = t.encode(text);
        if (got != want && ++mismatches <= 5)
            FAIL_CHECK(kvcar::io::to_json(json_value(text)) << "\n  tokenizers " << show(want)
                                                            << "\n  kvcar      " << show(got));
        const std::string decoded = k.contains("hf_decoded") ? k.at("hf_decoded").as_string()
                                    : k.contains("decoded")  ? k.at("decoded").as_string()
                                                             : text;
        if (t.decode(want) != decoded && ++mismatches <= 5)
            FAIL_CHECK("decode of " << kvcar::io::to_json(json_value(text)));
    }
    const std::string raw = read_file(shared("wikitext-2/wiki.test.raw"));
    std::size_t pos = 0;
    for (const auto& line_ids : fixture.at("wiki_lines").as_array()) {
        const std::size_t eol = raw.find('\n', pos);
        const std::string line = raw.substr(pos, eol - pos);
        pos = eol + 1;
        ++checked;
        if (t.encode(line) != ints(line_ids) && ++mismatches <= 5) FAIL_CHECK("wiki line differs: " << line);
    }
    // The whole of wiki.test.raw as one text: one BPE run over 1.29 MB.
    const auto& whole = fixture.at("wiki_whole");
    REQUIRE(raw.size() == std::size_t(whole.at("bytes").as_int()));
    const std::vector<int> all = t.encode(raw);
    char hash[17];
    std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(ids_hash(all)));
    CHECK(all.size() == std::size_t(whole.at("ids").as_int()));
    CHECK(std::string(hash) == whole.at("fnv1a64").as_string());
    CHECK(mismatches == 0);
    CHECK(skipped <= 1);
    WARN("Llama 2 tokenizer.json: " << checked << " texts checked, " << mismatches << " differ, "
                                    << skipped << " skipped (special tokens in the text)");
}

}  // namespace
