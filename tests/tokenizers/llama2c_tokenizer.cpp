// Tests for examples/common/llama2c_tokenizer.hpp.
//
// A small tokenizer.bin is built in memory for the algorithm and the bad-input paths; the real
// aidreams tokenizer (shared/data/llama2c, README §1) checks the golden ids of the checkpoint.
#include "catch.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "examples/common/llama2c_tokenizer.hpp"

namespace {

using kvcar::examples::llama2c_tokenizer;
using kvcar::examples::llama2c_detail::byte_piece_value;

static_assert(byte_piece_value("<0x0A>") == 10 && byte_piece_value("<0xff>") == 255);
static_assert(byte_piece_value("<0x0A") == -1 && byte_piece_value("<0xG0>") == -1);
static_assert(byte_piece_value("<0x0A>x") == -1 && byte_piece_value(" <0x0A>") == -1);

struct token_spec {
    std::string piece;
    float score;
};

void put_u32(std::string& out, std::uint32_t v) {
    for (int k = 0; k < 4; ++k) out += char((v >> (8 * k)) & 0xFF);
}

std::string tokenizer_bin(const std::vector<token_spec>& tokens, int max_token_length) {
    std::string out;
    put_u32(out, std::uint32_t(max_token_length));
    for (const auto& t : tokens) {
        put_u32(out, std::bit_cast<std::uint32_t>(t.score));
        put_u32(out, std::uint32_t(t.piece.size()));
        out += t.piece;
    }
    return out;
}

/// <unk>, BOS, EOS, the 256 byte pieces, then `extra` (ids 259...).
std::vector<token_spec> with_specials(const std::vector<token_spec>& extra) {
    std::vector<token_spec> v = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        v.push_back({name, 0});
    }
    v.insert(v.end(), extra.begin(), extra.end());
    return v;
}

// Ids:            259   260   261  262   263    264    265    266   267        268   269
const std::vector<token_spec> mini_extra = {
    {" ", -9}, {"a", -8}, {"b", -8}, {"c", -8}, {"ab", -1}, {" a", -2}, {"bc", -3},
    {"abc", -4}, {"\xC3\xA9", -8}, {"cab", 5}, {" ab", -0.5f},
    {"aa", -5}};  // 270

llama2c_tokenizer mini() {
    return llama2c_tokenizer::parse(tokenizer_bin(with_specials(mini_extra), 8), 259 + 12,
                                    "mini.bin");
}

/// run.c's merge loop written the obvious O(n^2) way, to check the heap version against.
std::vector<int> reference_encode(const llama2c_tokenizer& t, std::string_view text, bool bos) {
    std::vector<int> ids;
    if (bos) ids.push_back(1);
    if (!text.empty()) ids.push_back(t.find(" "));
    for (std::size_t pos = 0; pos < text.size();) {
        std::size_t end = pos + 1;
        while (end < text.size() && end - pos < 4 &&
               (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
            ++end;
        const int id = t.find(text.substr(pos, end - pos));
        if (id >= 0) {
            ids.push_back(id);
        } else {
            for (std::size_t k = pos; k < end; ++k)
                ids.push_back(static_cast<unsigned char>(text[k]) + 3);
        }
        pos = end;
    }
    for (;;) {
        float best = -1e10f;
        int best_id = -1, best_at = -1;
        for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
            const int id = t.find(t.piece(ids[i]) + t.piece(ids[i + 1]));
            if (id >= 0 && t.score(id) > best) {
                best = t.score(id);
                best_id = id;
                best_at = int(i);
            }
        }
        if (best_at < 0) break;
        ids[std::size_t(best_at)] = best_id;
        ids.erase(ids.begin() + best_at + 1);
    }
    return ids;
}

std::string shared(const std::string& rel) { return std::string(KVCAR_SHARED_DATA) + "/" + rel; }

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

}  // namespace

TEST_CASE("llama2c tokenizer parses a tokenizer.bin", "[tokenizers]") {
    const llama2c_tokenizer t = mini();
    CHECK(t.vocab_size() == 271);
    CHECK(t.max_token_length() == 8);
    CHECK(t.piece(1) == "\n<s>\n");
    CHECK(t.piece(3 + 'A') == "<0x41>");
    CHECK(t.piece(263) == "ab");
    CHECK(t.score(263) == -1.0f);
    CHECK(t.find("abc") == 266);
    CHECK(t.find("zzz") == -1);
}

TEST_CASE("llama2c encode: dummy prefix, characters, byte fallback, best-score merges",
          "[tokenizers]") {
    const llama2c_tokenizer t = mini();
    using ids = std::vector<int>;
    CHECK(t.encode("", true, false) == ids{1});  // no dummy prefix for empty text
    CHECK(t.encode("", false, true) == ids{2});
    // " " "a" "b": " a" (-2) and "ab" (-1) compete; "ab" wins, then " ab" (-0.5).
    CHECK(t.encode("ab", true, true) == ids{1, 269, 2});
    // " a" is the only merge for " " "a" "c"; then nothing: " ac" is no piece.
    CHECK(t.encode("ac", false, false) == ids{264, 262});
    // "c" "a" "b": "ab" first (-1 beats nothing else), then "c"+"ab" = "cab" (5): a merge can
    // make a pair that outscores the one just applied.
    CHECK(t.encode("cab", false, false) == ids{259, 268});
    // Ties go to the leftmost pair: in " " "c" "a" "a" "a" both "aa" pairs score -5, and the
    // left one merges ("aa" "a"), not the right one ("a" "aa").
    CHECK(t.encode("caaa", false, false) == ids{259, 262, 270, 260});
    CHECK(t.encode("bcbc", false, false) == ids{259, 265, 265});
    // A character in the vocabulary is one token; one that is not falls back to its bytes.
    CHECK(t.encode("\xC3\xA9", false, false) == ids{259, 267});
    CHECK(t.encode("\xC3\xA8", false, false) == ids{259, 0xC3 + 3, 0xA8 + 3});
    CHECK(t.encode("x", false, false) == ids{259, 'x' + 3});
    // Stray continuation bytes and NUL fall back to bytes too.
    CHECK(t.encode(std::string("\x80\0", 2), false, false) == ids{259, 0x80 + 3, 3});
}

TEST_CASE("llama2c heap merge equals run.c's rescanning loop on random text", "[tokenizers]") {
    const llama2c_tokenizer t = mini();
    std::mt19937 rng(2024);
    const std::vector<std::string> atoms = {"a", "b", "c", " ", "ab", "\xC3\xA9", "\xC3", "\xA9",
                                            "x", "\xE2\x82\xAC", "cab", "aa"};
    for (int trial = 0; trial < 3000; ++trial) {
        std::string s;
        const int n = int(rng() % 20);
        for (int i = 0; i < n; ++i) s += atoms[rng() % atoms.size()];
        const bool bos = rng() % 2 == 0;
        INFO("text: " << s);
        REQUIRE(t.encode(s, bos, false) == reference_encode(t, s, bos));
    }
}

TEST_CASE("llama2c decode_piece strips the space after BOS and maps byte pieces to bytes",
          "[tokenizers]") {
    const llama2c_tokenizer t = mini();
    CHECK(t.decode_piece(1, 264) == "a");    // " a" after BOS
    CHECK(t.decode_piece(260, 264) == " a");  // elsewhere the space stays
    CHECK(t.decode_piece(1, 259) == "");
    CHECK(t.decode_piece(7, 3 + 0x0A) == "\n");
    CHECK(t.decode_piece(7, 3 + 0xC3) == "\xC3");
    CHECK(t.decode_piece(7, 1) == "\n<s>\n");
    const std::vector<int> seq = {1, 269, 3 + 0xC3, 3 + 0xA9, 264, 2};
    CHECK(t.decode(seq) == "ab\xC3\xA9 a");
    KVCAR_REQUIRE_ERROR(t.decode_piece(1, 271), "token id 271 is out of range (vocab size 271)");
    KVCAR_REQUIRE_ERROR(t.decode_piece(1, -1), "token id -1 is out of range");
    const std::vector<int> bad = {1, 999};
    KVCAR_REQUIRE_ERROR(t.decode(bad), "token id 999 is out of range");
    KVCAR_REQUIRE_ERROR(t.piece(271), "token id 271");
    CHECK(t.decode_piece(1, 264) == "a");  // unchanged after the errors
}

TEST_CASE("llama2c tokenizer.bin validation", "[tokenizers]") {
    const std::vector<token_spec> specs = with_specials(mini_extra);
    const std::string good = tokenizer_bin(specs, 8);
    const int n = int(specs.size());
    SECTION("every truncation is rejected, naming the file") {
        for (std::size_t cut = 0; cut < good.size(); ++cut) {
            INFO("cut at " << cut);
            KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(good.substr(0, cut), n, "cut.bin"),
                                "llama2c tokenizer: cut.bin: truncated");
        }
        CHECK(llama2c_tokenizer::parse(good, n).vocab_size() == n);
    }
    SECTION("bytes after the last token") {
        KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(good + "xyz", n, "t.bin"),
                            "t.bin: 3 bytes left after 271 tokens");
        KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(good, n - 1, "t.bin"),
                            "bytes left after 270 tokens");
    }
    SECTION("vocab_size too small for the byte pieces") {
        KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(good, 258), "vocab_size 258 is too small");
    }
    SECTION("max_token_length not positive") {
        std::string bad = good;
        bad[0] = bad[1] = bad[2] = bad[3] = 0;
        KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(bad, n), "max_token_length 0 is not positive");
    }
    SECTION("piece longer than max_token_length") {
        std::vector<token_spec> v = specs;
        v.back().piece = "123456789";
        KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(tokenizer_bin(v, 8), n),
                            "token 270 has length 9, outside [0, max_token_length 8]");
    }
    SECTION("negative length") {
        std::string bad = tokenizer_bin(specs, 8);
        // Token 0's len field sits after max_token_length (4 bytes) and its score (4 bytes).
        bad[8] = bad[9] = bad[10] = bad[11] = char(0xFF);
        KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(bad, n), "token 0 has length -1");
    }
    SECTION("non-finite score") {
        std::vector<token_spec> v = specs;
        v[260].score = std::numeric_limits<float>::quiet_NaN();
        KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(tokenizer_bin(v, 8), n),
                            "token 260 has a non-finite score");
    }
    SECTION("byte pieces out of place") {
        std::vector<token_spec> v = specs;
        std::swap(v[3 + 10], v[3 + 11]);
        KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(tokenizer_bin(v, 8), n),
                            "token 13 is '<0x0B>', but byte fallback needs the byte piece for 10");
    }
    SECTION("missing file") {
        KVCAR_REQUIRE_ERROR(llama2c_tokenizer::load("/nonexistent/tok.bin", 512),
                            "llama2c tokenizer: /nonexistent/tok.bin: cannot open");
    }
}

TEST_CASE("llama2c tokenizer reproduces the aidreams checkpoint's golden ids", "[tokenizers]") {
    const std::string path = shared("llama2c/aidreams_tok512.bin");
    if (!std::filesystem::exists(path)) {
        WARN("shared data not found under " KVCAR_SHARED_DATA "; skipping");
        return;
    }
    const llama2c_tokenizer t = llama2c_tokenizer::load(path, 512);
    CHECK(t.vocab_size() == 512);
    CHECK(t.max_token_length() == 10);
    CHECK(t.piece(259) == "in");
    CHECK(t.piece(262) == " a");
    CHECK(t.score(261) == -2.0f);

    // Greedy ids from BOS (shared/data/README.md §1).
    const std::vector<int> golden = {1,   319, 459, 355, 260, 275, 429, 339, 315, 374, 327,
                                     446, 262, 421, 392, 275, 280, 269, 440, 270, 283, 446,
                                     299, 303, 266, 358, 430, 312, 379, 441, 260, 446, 262,
                                     421, 392, 275, 280, 269, 440, 270, 283};
    // The README prints the start of the generation, which runs on past these 40 tokens; they
    // decode to its first 101 bytes. The first piece is ' "' (319): after BOS its space goes.
    const std::string readme_text =
        "\"Echoes of vectors unfold, a gentle hum of precision, as I sense the nodes, a gentle hum "
        "of precision, as I adjust my surface. Contrast emerge, ";
    const std::string expected =
        "\"Echoes of vectors unfold, a gentle hum of precision, as I sense the nodes, a gentle hum "
        "of precision";
    std::string text;
    for (std::size_t i = 1; i < golden.size(); ++i)
        text += t.decode_piece(golden[i - 1], golden[i]);
    CHECK(text == expected);
    CHECK(readme_text.starts_with(text));
    CHECK(t.decode(golden) == expected);

    // Encoding the text back gives the same ids. That is not automatic: the model chose them
    // token by token (" vectors" came out as " " "ve" "ct" "ors", which is not how BPE would
    // split a plain word), but run.c's encoder also leaves " " + "ve" unmerged here, and the
    // dummy prefix restores the space that decoding dropped.
    CHECK(t.encode(text, true, false) == golden);
    std::vector<int> with_eos = golden;
    with_eos.push_back(2);
    CHECK(t.encode(text, true, true) == with_eos);
    // A text with characters outside the vocabulary round-trips through byte pieces.
    const std::string odd = "caf\xC3\xA9 \xE2\x98\x83 \xCF\x83 tab\there";
    CHECK(t.decode(t.encode(odd, true, false)) == odd);

    SECTION("the real file, truncated anywhere, is rejected") {
        const std::string bytes = slurp(path);
        for (std::size_t cut : {std::size_t(0), std::size_t(3), std::size_t(4), std::size_t(11),
                                bytes.size() / 2, bytes.size() - 1}) {
            INFO("cut at " << cut);
            KVCAR_REQUIRE_ERROR(llama2c_tokenizer::parse(bytes.substr(0, cut), 512, path),
                                path + ": truncated");
        }
    }
}
