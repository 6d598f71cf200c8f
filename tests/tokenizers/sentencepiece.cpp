// Tests for examples/common/sentencepiece_tokenizer.hpp.
//
// A tiny model built here byte by byte (protobuf wire format) checks the parser and the BPE rules
// without data; the real Llama 2 tokenizer.model from ../shared/data is compared with the ids of
// the reference `sentencepiece` (tests/fixtures/sentencepiece_tokens.json, written by
// tools/make_sentencepiece_fixtures.py). Those tests skip when the shared data is absent.
#include "catch.hpp"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "examples/common/sentencepiece_tokenizer.hpp"
#include "kvcar/io/json.hpp"

namespace {

using kvcar::examples::sentencepiece_tokenizer;
using piece_type = sentencepiece_tokenizer::piece_type;

// --- a protobuf writer for the tiny model ------------------------------------------------------

void put_varint(std::string& out, std::uint64_t v) {
    while (v >= 0x80) {
        out += char(0x80 | (v & 0x7F));
        v >>= 7;
    }
    out += char(v);
}
void put_tag(std::string& out, int field, int wire) { put_varint(out, std::uint64_t(field) << 3 | unsigned(wire)); }
void put_bytes(std::string& out, int field, std::string_view s) {
    put_tag(out, field, 2);
    put_varint(out, s.size());
    out.append(s);
}
void put_int(std::string& out, int field, std::int64_t v) {
    put_tag(out, field, 0);
    put_varint(out, std::uint64_t(v));
}
void put_float(std::string& out, int field, float f) {
    put_tag(out, field, 5);
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    for (int i = 0; i < 4; ++i) out += char((u >> (8 * i)) & 0xFF);
}

struct tiny_piece {
    std::string text;
    float score;
    int type;
};

/// A BPE model: <unk> <s> </s>, the 256 byte pieces, then `normal` pieces.
std::string tiny_model(const std::vector<tiny_piece>& normal, bool byte_fallback = true,
                       bool dummy_prefix = true, bool squeeze = false) {
    std::vector<tiny_piece> pieces = {{"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}};
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        pieces.push_back({name, 0, 6});
    }
    pieces.insert(pieces.end(), normal.begin(), normal.end());
    std::string model;
    for (const tiny_piece& p : pieces) {
        std::string m;
        put_bytes(m, 1, p.text);
        put_float(m, 2, p.score);
        if (p.type != 1) put_int(m, 3, p.type);
        put_bytes(model, 1, m);
    }
    std::string trainer;
    put_int(trainer, 3, 2);  // BPE
    put_int(trainer, 35, byte_fallback ? 1 : 0);
    put_int(trainer, 43, -1);  // pad_id: a negative int32 is a 10-byte varint
    put_bytes(trainer, 1, "ignored input path");
    put_bytes(model, 2, trainer);
    std::string normalizer;
    put_bytes(normalizer, 1, "identity");
    put_int(normalizer, 3, dummy_prefix ? 1 : 0);
    put_int(normalizer, 4, squeeze ? 1 : 0);
    put_bytes(model, 3, normalizer);
    return model;
}

const std::string sp = "\xE2\x96\x81";  // ▁

TEST_CASE("sentencepiece: a tiny model is read from the wire format", "[sentencepiece]") {
    const auto t = sentencepiece_tokenizer::parse(tiny_model({{sp + "a", -1, 1}}));
    CHECK(t.vocab_size() == 3 + 256 + 1);
    CHECK(t.bos_id() == 1);
    CHECK(t.eos_id() == 2);
    CHECK(t.unk_id() == 0);
    CHECK(t.type(1) == piece_type::control);
    CHECK(t.type(3 + 0x41) == piece_type::byte);
    CHECK(t.piece(259) == sp + "a");
    CHECK(t.score(259) == -1.0f);
    CHECK(t.settings().byte_fallback);
    CHECK(t.settings().pad_id == -1);
    CHECK(t.settings().normalizer_name == "identity");
    CHECK_FALSE(t.settings().remove_extra_whitespaces);
}

TEST_CASE("sentencepiece: BPE merges the highest-scoring pair, leftmost on ties",
          "[sentencepiece]") {
    // Pieces: ▁ a b ab ▁a ▁ab bb; scores pick "ab" before "▁a".
    const auto t = sentencepiece_tokenizer::parse(tiny_model({
        {sp, -10, 1}, {"a", -10, 1}, {"b", -10, 1}, {"ab", -1, 1}, {sp + "a", -2, 1},
        {sp + "ab", -3, 1}, {"bb", -1, 1}}));
    const int s = 259, a = 260, b = 261, ab = 262, s_ab = 264, bb = 265;
    CHECK(t.encode("ab") == std::vector<int>{s_ab});          // ▁ a b -> ▁ ab -> ▁ab
    CHECK(t.encode("ab", true) == std::vector<int>{1, s_ab});
    CHECK(t.encode("ab", true, true) == std::vector<int>{1, s_ab, 2});
    // "abb": ab and bb tie at -1; the leftmost (ab) wins, then ▁ab.
    CHECK(t.encode("abb") == std::vector<int>{s_ab, b});
    CHECK(t.encode("bbb") == std::vector<int>{s, bb, b});
    CHECK(t.encode("ba") == std::vector<int>{s, b, a});
    const int s_a = 263;
    CHECK(t.encode("a b") == std::vector<int>{s_a, s, b});
    CHECK(t.encode("ab ab") == std::vector<int>{s_ab, s_ab});
    (void)ab;
    // Unknown characters fall back to their UTF-8 bytes.
    CHECK(t.encode("é") == std::vector<int>{s, 3 + 0xC3, 3 + 0xA9});
    CHECK(t.encode("") == std::vector<int>{});
    CHECK(t.decode(t.encode("a bé ab")) == "a bé ab");
    CHECK(t.decode(std::vector<int>{1, s, 3 + 0xC3, 3 + 0xA9, 2}) == "é");
    CHECK(t.decode(std::vector<int>{3 + 0xC3}) == "\xEF\xBF\xBD");  // a cut character
    CHECK(t.decode(std::vector<int>{0}) == " \xE2\x81\x87 ");       // <unk>
    CHECK(t.decode_piece(1, s_ab) == "ab");
    CHECK(t.decode_piece(s_ab, s_ab) == " ab");
    CHECK_THROWS(t.decode(std::vector<int>{9999}));
}

TEST_CASE("sentencepiece: normalizer options", "[sentencepiece]") {
    const std::vector<tiny_piece> pieces = {{sp, -10, 1}, {"a", -10, 1}};
    const auto plain = sentencepiece_tokenizer::parse(tiny_model(pieces, true, false));
    CHECK(plain.encode("a") == std::vector<int>{260});
    const auto squeeze = sentencepiece_tokenizer::parse(tiny_model(pieces, true, true, true));
    CHECK(squeeze.encode("  a   a  ") == std::vector<int>{259, 260, 259, 260});
    const auto no_fallback = sentencepiece_tokenizer::parse(tiny_model(pieces, false));
    CHECK(no_fallback.encode("aé") == std::vector<int>{259, 260, 0});
    // Invalid UTF-8 becomes U+FFFD, which falls back to its three bytes.
    CHECK(plain.encode("\xFF") == std::vector<int>{3 + 0xEF, 3 + 0xBF, 3 + 0xBD});
}

TEST_CASE("sentencepiece: malformed files are errors, not crashes", "[sentencepiece]") {
    const std::string good = tiny_model({{sp, -1, 1}});
    CHECK_NOTHROW(sentencepiece_tokenizer::parse(good));
    for (std::size_t cut : {std::size_t(1), std::size_t(7), good.size() / 2, good.size() - 1})
        CHECK_THROWS_AS(sentencepiece_tokenizer::parse(good.substr(0, cut)), kvcar::error);
    CHECK_THROWS_AS(sentencepiece_tokenizer::parse(""), kvcar::error);
    CHECK_THROWS_AS(sentencepiece_tokenizer::parse("not a model at all"), kvcar::error);
    std::string unigram = good;
    put_bytes(unigram, 2, std::string("\x18\x01", 2));  // a later trainer_spec: model_type UNIGRAM
    CHECK_THROWS_WITH(sentencepiece_tokenizer::parse(unigram),
                      Catch::Contains("only BPE models are supported"));
    std::string charsmap = good;
    put_bytes(charsmap, 3, std::string("\x12\x03xyz", 5));  // precompiled_charsmap "xyz"
    CHECK_THROWS_WITH(sentencepiece_tokenizer::parse(charsmap), Catch::Contains("charsmap"));
}

// --- the real Llama 2 tokenizer against sentencepiece ------------------------------------------

std::string shared(const std::string& rel) { return std::string(KVCAR_SHARED_DATA) + "/" + rel; }

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::vector<int> ints(const kvcar::io::json_value& v) {
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

std::string show(const std::vector<int>& ids) {
    std::string s = "[";
    for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
    return s + "]";
}

TEST_CASE("sentencepiece: Llama 2 tokenizer.model gives sentencepiece's ids", "[sentencepiece][data]") {
    const std::string model_path = shared("tokenizers/llama2/tokenizer.model");
    if (!std::filesystem::exists(model_path)) {
        WARN("shared data not found under " KVCAR_SHARED_DATA "; skipping");
        return;
    }
    const auto t = sentencepiece_tokenizer::load(model_path);
    CHECK(t.vocab_size() == 32000);
    CHECK(t.bos_id() == 1);
    CHECK(t.eos_id() == 2);
    CHECK(t.settings().model_type == 2);
    CHECK(t.settings().byte_fallback);
    CHECK(t.settings().normalizer_name == "identity");
    CHECK(t.settings().precompiled_charsmap_bytes == 0);
    CHECK(t.settings().add_dummy_prefix);
    CHECK_FALSE(t.settings().remove_extra_whitespaces);

    const auto fixture = kvcar::io::load_json(std::string(KVCAR_SOURCE_DIR) +
                                              "/tests/fixtures/sentencepiece_tokens.json");
    const auto& cases = fixture.at("cases");
    REQUIRE(cases.size() >= 200);
    int mismatches = 0, decode_mismatches = 0;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const auto& c = cases.at(i);
        const std::string& text = c.at("text").as_string();
        const std::vector<int> want = ints(c.at("ids"));
        const std::vector<int> got = t.encode(text);
        if (got != want && ++mismatches <= 5)
            FAIL_CHECK("case " << i << " " << kvcar::io::to_json(kvcar::io::json_value(text))
                               << "\n  sentencepiece " << show(want) << "\n  kvcar         "
                               << show(got));
        const std::string want_text = c.contains("decoded") ? c.at("decoded").as_string() : text;
        if (t.decode(want) != want_text && ++decode_mismatches <= 5)
            FAIL_CHECK("decode of case " << i << ": " << kvcar::io::to_json(kvcar::io::json_value(kvcar::examples::spm_detail::valid_utf8(t.decode(want))))
                                         << " != " << kvcar::io::to_json(kvcar::io::json_value(want_text)));
        std::vector<int> with_bos = {1};
        with_bos.insert(with_bos.end(), want.begin(), want.end());
        if (mismatches == 0) CHECK(t.encode(text, true) == with_bos);
    }
    CHECK(mismatches == 0);
    CHECK(decode_mismatches == 0);

    // WikiText lines, encoded one by one (the text is read from the shared data).
    const std::string raw = read_file(shared("wikitext-2/wiki.test.raw"));
    const auto& wiki = fixture.at("wiki_lines");
    std::size_t pos = 0;
    int wiki_mismatches = 0;
    for (std::size_t i = 0; i < wiki.size(); ++i) {
        const std::size_t eol = raw.find('\n', pos);
        const std::string line = raw.substr(pos, eol - pos);
        pos = eol + 1;
        if (t.encode(line) != ints(wiki.at(i)) && ++wiki_mismatches <= 3)
            FAIL_CHECK("wiki line " << i << " differs");
    }
    CHECK(wiki_mismatches == 0);

    // The whole of wiki.test.raw as one text: one BPE run over 1.29 MB.
    const auto& whole = fixture.at("wiki_whole");
    REQUIRE(raw.size() == std::size_t(whole.at("bytes").as_int()));
    const std::vector<int> all = t.encode(raw);
    char hash[17];
    std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(ids_hash(all)));
    CHECK(all.size() == std::size_t(whole.at("ids").as_int()));
    CHECK(std::string(hash) == whole.at("fnv1a64").as_string());
}

}  // namespace
