// Tests for examples/common/gpt2_tokenizer.hpp and unicode_tables.hpp.
//
// Data-free tests use a tiny byte-level vocabulary built here; the real GPT-2 files and the
// fixture from Hugging Face `tokenizers` (tools/make_tokenizer_fixtures.py) check exact ids.
#include "catch.hpp"

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "examples/common/gpt2_tokenizer.hpp"
#include "kvcar/io/json.hpp"

namespace {

using kvcar::examples::gpt2_pre_tokenize;
using kvcar::examples::gpt2_tokenizer;
namespace uni = kvcar::examples::unicode;
namespace g2d = kvcar::examples::gpt2_detail;

// --- compile-time checks of the generated tables and the byte alphabet -------------------------

template <std::size_t N>
constexpr bool sorted_and_disjoint(const uni::code_point_range (&t)[N]) {
    for (std::size_t i = 0; i < N; ++i) {
        if (t[i].first > t[i].last) return false;
        if (i > 0 && t[i].first <= t[i - 1].last) return false;
    }
    return true;
}
static_assert(sorted_and_disjoint(uni::letter_ranges));
static_assert(sorted_and_disjoint(uni::number_ranges));
static_assert(sorted_and_disjoint(uni::space_ranges));
static_assert(uni::is_letter(U'a') && uni::is_letter(U'Z') && uni::is_letter(U'é'));
static_assert(uni::is_letter(U'日') && uni::is_letter(U'ا') && uni::is_letter(0x2F800));
static_assert(!uni::is_letter(U'1') && !uni::is_letter(U' ') && !uni::is_letter(0x301));
static_assert(uni::is_number(U'7') && uni::is_number(U'٣') && uni::is_number(U'½'));
static_assert(uni::is_number(U'Ⅻ') && uni::is_number(U'²') && !uni::is_number(U'x'));
static_assert(uni::is_space(U' ') && uni::is_space(U'\n') && uni::is_space(0xA0));
static_assert(uni::is_space(0x3000) && uni::is_space(0x2028) && uni::is_space(0x85));
static_assert(!uni::is_space(0x200B) && !uni::is_space(0x1C) && !uni::is_space(U'x'));
static_assert(g2d::alphabet.byte_to_code_point[' '] == U'Ġ');
static_assert(g2d::alphabet.byte_to_code_point['\n'] == U'Ċ');
static_assert(g2d::alphabet.byte_to_code_point['A'] == U'A');
static_assert(g2d::alphabet.byte_of(U'Ġ') == ' ' && g2d::alphabet.byte_of(U'ÿ') == 0xFF);
static_assert(g2d::alphabet.byte_of(0x3000) == -1);

// --- a tiny byte-level vocabulary: ids 0..255 are the bytes, then the merges' results ---------

std::string key_of_byte(int b) {
    std::string k;
    g2d::append_utf8(k, g2d::alphabet.byte_to_code_point[b]);
    return k;
}

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

struct mini_files {
    std::vector<std::pair<std::string, int>> vocab;  // key, id
    std::vector<std::string> merges;                 // "A B"

    std::string vocab_json() const {
        std::string s = "{";
        for (std::size_t i = 0; i < vocab.size(); ++i)
            s += (i ? ", " : "") + json_string(vocab[i].first) + ": " +
                 std::to_string(vocab[i].second);
        return s + "}";
    }
    std::string merges_txt() const {
        std::string s = "#version: 0.2\n";
        for (const auto& m : merges) s += m + "\n";
        return s;
    }
};

/// Bytes plus merges "Ġ t" -> "Ġt", "h e" -> "he", "Ġt he" -> "Ġthe", "a a" -> "aa".
mini_files mini() {
    mini_files f;
    for (int b = 0; b < 256; ++b) f.vocab.emplace_back(key_of_byte(b), b);
    const std::vector<std::pair<std::string, std::string>> rules = {
        {"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"a", "a"}};
    for (const auto& [l, r] : rules) {
        f.vocab.emplace_back(l + r, int(f.vocab.size()));
        f.merges.push_back(l + " " + r);
    }
    f.vocab.emplace_back("<|endoftext|>", int(f.vocab.size()));
    return f;
}

gpt2_tokenizer parse(const mini_files& f) {
    return gpt2_tokenizer::parse(f.vocab_json(), f.merges_txt(), "mini/vocab.json",
                                 "mini/merges.txt");
}

std::vector<std::string> words(std::string_view s) {
    std::vector<std::string> out;
    for (auto w : gpt2_pre_tokenize(s)) out.emplace_back(w);
    return out;
}

std::string shared(const std::string& rel) { return std::string(KVCAR_SHARED_DATA) + "/" + rel; }

bool have(const std::string& path) { return std::filesystem::exists(path); }

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::uint64_t fnv1a64_of_ids(const std::vector<int>& ids) {
    std::uint64_t h = 0xCBF29CE484222325ull;
    for (int id : ids) {
        const auto u = std::uint32_t(id);
        for (int k = 0; k < 4; ++k) {  // little-endian int32 bytes, as the fixture script
            h ^= (u >> (8 * k)) & 0xFF;
            h *= 0x100000001B3ull;
        }
    }
    return h;
}

std::vector<int> ids_of(const kvcar::io::json_value& array) {
    std::vector<int> ids;
    for (const auto& v : array.as_array()) ids.push_back(int(v.as_int()));
    return ids;
}

}  // namespace

TEST_CASE("gpt2 pre-tokenizer follows GPT-2's pattern alternative by alternative", "[tokenizers]") {
    using v = std::vector<std::string>;
    CHECK(words("Hello world") == v{"Hello", " world"});
    // Contractions are case-sensitive: "'S" is punctuation followed by a letter run.
    CHECK(words("it's IT'S") == v{"it", "'s", " IT", "'", "S"});
    CHECK(words("we'll they've I'd") == v{"we", "'ll", " they", "'ve", " I", "'d"});
    CHECK(words("'sam") == v{"'s", "am"});
    CHECK(words("x'") == v{"x", "'"});
    CHECK(words("?'s") == v{"?'", "s"});  // the punctuation run takes the apostrophe first
    // \s+(?!\S): a run before a word keeps its last space for the word.
    CHECK(words("a  b") == v{"a", " ", " b"});
    CHECK(words("a   b") == v{"a", "  ", " b"});
    CHECK(words("  \n\n  x") == v{"  \n\n ", " x"});
    CHECK(words("a\nb") == v{"a", "\n", "b"});        // single non-' ' space: the final \s+
    CHECK(words("a \n\nb") == v{"a", " \n", "\n", "b"});
    CHECK(words("end   ") == v{"end", "   "});         // at the end the whole run stays
    CHECK(words(" ") == v{" "});
    CHECK(words("") == v{});
    CHECK(words("abc123 456x") == v{"abc", "123", " 456", "x"});
    CHECK(words(" !!x") == v{" !!", "x"});
    CHECK(words("a\xC2\xA0" "b") == v{"a", "\xC2\xA0", "b"});  // NBSP is \s
    CHECK(words("caf\xC3\xA9 na\xC3\xAFve") == v{"caf\xC3\xA9", " na\xC3\xAFve"});
    // Invalid UTF-8 bytes are "other": they join punctuation runs, never letters.
    CHECK(words("ab\xFF\xFE!cd") == v{"ab", "\xFF\xFE!", "cd"});
    CHECK(words(" \xE2\x82") == v{" \xE2\x82"});  // truncated sequence: two invalid bytes
}

TEST_CASE("gpt2 UTF-8 decoding is strict and splits invalid input byte by byte", "[tokenizers]") {
    const auto unit = [](std::string_view s) { return g2d::decode_utf8_at(s, 0); };
    CHECK(unit("\xE2\x82\xAC").code_point == U'€');
    CHECK(unit("\xF0\x9F\x98\x80").code_point == 0x1F600);
    CHECK(unit("\xC0\x80").code_point == g2d::invalid_code_point);          // overlong NUL
    CHECK(unit("\xE0\x80\x80").code_point == g2d::invalid_code_point);      // overlong
    CHECK(unit("\xED\xA0\x80").code_point == g2d::invalid_code_point);      // surrogate
    CHECK(unit("\xF4\x90\x80\x80").code_point == g2d::invalid_code_point);  // > U+10FFFF
    CHECK(unit("\x80").length == 1);
    CHECK(unit("\xE2\x82").length == 1);
}

TEST_CASE("gpt2 BPE on a tiny vocabulary applies merges by rank", "[tokenizers]") {
    const gpt2_tokenizer t = parse(mini());
    CHECK(t.vocab_size() == 261);
    CHECK(t.merge_count() == 4);
    CHECK(t.eos_id() == 260);
    // " the": "Ġ t" (rank 0) and "h e" (rank 1), then "Ġt he" (rank 2).
    CHECK(t.encode(" the") == std::vector<int>{258});
    CHECK(t.encode("the") == std::vector<int>{'t', 257});
    // Overlapping pairs of one rule merge left to right: "aaa" -> "aa" "a".
    CHECK(t.encode("aaa") == std::vector<int>{259, 'a'});
    CHECK(t.encode("aaaa") == std::vector<int>{259, 259});
    CHECK(t.encode("\xFF") == std::vector<int>{0xFF});
    CHECK(t.encode("<|endoftext|>").size() > 1);  // special tokens are not parsed from text
    CHECK(t.piece(258) == " the");
    CHECK(t.piece(' ') == " ");
    CHECK(t.piece(260) == "<|endoftext|>");
    const std::vector<int> ids = {258, 'x', 10};
    CHECK(t.decode(ids) == " thex\n");
    // A second encode of the same words comes from the cache and must agree.
    CHECK(t.encode(" the the") == std::vector<int>{258, 258});
    CHECK(t.encode(" the the") == std::vector<int>{258, 258});
    // A copy shares the cache and gives the same ids.
    const gpt2_tokenizer copy = t;
    CHECK(copy.encode("aaa the") == t.encode("aaa the"));
}

TEST_CASE("gpt2 decode rejects ids outside the vocabulary and changes nothing", "[tokenizers]") {
    const gpt2_tokenizer t = parse(mini());
    const std::vector<int> bad = {1, 261};
    KVCAR_REQUIRE_ERROR(t.decode(bad), "token id 261 is out of range (vocab size 261)");
    KVCAR_REQUIRE_ERROR(t.piece(-1), "token id -1 is out of range");
    CHECK(t.encode(" the") == std::vector<int>{258});
    const std::vector<int> good = {258};
    CHECK(t.decode(good) == " the");
}

TEST_CASE("gpt2 loading rejects inconsistent vocab.json and merges.txt, naming the file",
          "[tokenizers]") {
    SECTION("vocab is not an object") {
        KVCAR_REQUIRE_ERROR(gpt2_tokenizer::parse("[1, 2]", "", "v.json", "m.txt"),
                            "v.json: expected a JSON object");
    }
    SECTION("vocab is not JSON") {
        KVCAR_REQUIRE_ERROR(gpt2_tokenizer::parse("{\"a\": ", "", "v.json", "m.txt"), "v.json");
    }
    SECTION("id is not an integer") {
        mini_files f = mini();
        std::string text = f.vocab_json();
        text.insert(text.size() - 1, ", \"zz\": 1.5");
        KVCAR_REQUIRE_ERROR(gpt2_tokenizer::parse(text, f.merges_txt(), "v.json", "m.txt"),
                            "v.json: the id of token 'zz' is not an integer");
    }
    SECTION("negative id") {
        mini_files f = mini();
        f.vocab.back().second = -4;
        KVCAR_REQUIRE_ERROR(parse(f), "mini/vocab.json: token '<|endoftext|>' has id -4");
    }
    SECTION("two tokens share an id") {
        mini_files f = mini();
        f.vocab.back().second = 7;
        KVCAR_REQUIRE_ERROR(parse(f), "id 7 is given to both");
    }
    SECTION("ids have a gap: some id is then past the end") {
        // N distinct ids leave a gap in 0..N-1 only if one of them is >= N, which is rejected
        // before it can size anything.
        mini_files f = mini();
        f.vocab.back().second = 300;
        KVCAR_REQUIRE_ERROR(parse(f), "mini/vocab.json: token '<|endoftext|>' has id 300, but the vocabulary has only 261 tokens");
    }
    SECTION("a byte has no token") {
        mini_files f = mini();
        f.vocab[' '].first = "space";  // id 32 now holds a multi-character token
        KVCAR_REQUIRE_ERROR(parse(f), "no token for byte 32");
    }
    SECTION("merge line malformed") {
        mini_files f = mini();
        f.merges.push_back("a b c");
        KVCAR_REQUIRE_ERROR(parse(f), "mini/merges.txt line 6: expected two tokens");
    }
    SECTION("empty merge line in the middle") {
        mini_files f = mini();
        f.merges.insert(f.merges.begin() + 1, "");
        KVCAR_REQUIRE_ERROR(parse(f), "mini/merges.txt line 3: empty line");
    }
    SECTION("merge part not in vocab") {
        mini_files f = mini();
        f.merges.push_back("Ġthe re");
        KVCAR_REQUIRE_ERROR(parse(f), "line 6: token 're' is not in the vocab");
    }
    SECTION("merge result not in vocab") {
        mini_files f = mini();
        f.merges.push_back("a b");
        KVCAR_REQUIRE_ERROR(parse(f), "line 6: merged token 'ab' is not in the vocab");
    }
    SECTION("repeated merge") {
        mini_files f = mini();
        f.merges.push_back("h e");
        KVCAR_REQUIRE_ERROR(parse(f), "line 6: merge 'h e' repeats line 3");
    }
    SECTION("missing files") {
        KVCAR_REQUIRE_ERROR(gpt2_tokenizer::load("/nonexistent/vocab.json", "/nonexistent/m"),
                            "cannot open vocab file '/nonexistent/vocab.json'");
    }
}

TEST_CASE("gpt2 round trip holds for arbitrary byte strings", "[tokenizers]") {
    const gpt2_tokenizer t = parse(mini());
    std::mt19937 rng(12345);
    // Mix of pieces that stress the pre-tokenizer and UTF-8 decoding.
    const std::vector<std::string> atoms = {
        "a", "Z", " ", "  ", "\n", "\t", "'", "'s", "'LL", "7", "\xC3\xA9", "\xE2\x82\xAC",
        "\xF0\x9F\x98\x80", "\xC2\xA0", "\xE3\x80\x80", "\xFF", "\x80", "\xE2\x82", "\xC0\x80",
        "\xED\xA0\x80", "!", std::string(1, '\0'), "aa", " the"};
    for (int trial = 0; trial < 2000; ++trial) {
        std::string s;
        const int n = int(rng() % 24);
        for (int i = 0; i < n; ++i) {
            if (rng() % 4 == 0) s += char(rng() & 0xFF);
            else s += atoms[rng() % atoms.size()];
        }
        const std::vector<int> ids = t.encode(s);
        REQUIRE(t.decode(ids) == s);
        // Words tile the input exactly.
        std::string joined;
        for (auto w : gpt2_pre_tokenize(s)) joined += w;
        REQUIRE(joined == s);
    }
}

TEST_CASE("gpt2 tokenizer on the real GPT-2 files matches Hugging Face tokenizers exactly",
          "[tokenizers]") {
    const std::string vocab = shared("tokenizers/gpt2/vocab.json");
    const std::string merges = shared("tokenizers/gpt2/merges.txt");
    const std::string wiki_path = shared("wikitext-2/wiki.test.raw");
    const std::string fixture_path =
        std::string(KVCAR_SOURCE_DIR) + "/tests/fixtures/gpt2_tokens.json";
    if (!have(vocab) || !have(merges) || !have(wiki_path)) {
        WARN("shared data not found under " KVCAR_SHARED_DATA "; skipping");
        return;
    }
    const gpt2_tokenizer t = gpt2_tokenizer::load(vocab, merges);
    CHECK(t.vocab_size() == 50257);
    CHECK(t.merge_count() == 50000);
    CHECK(t.eos_id() == 50256);
    CHECK(t.piece(262) == " the");
    CHECK(t.piece(198) == "\n");
    CHECK(t.encode("Hello world") == std::vector<int>{15496, 995});

    const kvcar::io::json_value fixture = kvcar::io::parse_json(slurp(fixture_path), fixture_path);
    const std::string wiki = slurp(wiki_path);

    SECTION("tricky strings") {
        const auto& strings = fixture.at("strings").as_array();
        REQUIRE(strings.size() >= 40);
        for (const auto& s : strings) {
            const std::string& text = s.at("text").as_string();
            INFO("text: " << text);
            CHECK(t.encode(text) == ids_of(s.at("ids")));
            CHECK(t.decode(t.encode(text)) == text);
        }
    }
    SECTION("first 300 lines of wiki.test.raw, one line at a time") {
        const auto& lines = fixture.at("wiki_lines").as_array();
        REQUIRE(lines.size() == 300);
        std::size_t pos = 0;
        for (std::size_t i = 0; i < lines.size(); ++i) {
            const std::size_t eol = wiki.find('\n', pos);
            REQUIRE(eol != std::string::npos);
            const std::string line = wiki.substr(pos, eol + 1 - pos);
            pos = eol + 1;
            INFO("line " << i + 1 << ": " << line);
            CHECK(t.encode(line) == ids_of(lines[i]));
        }
    }
    SECTION("whole wiki.test.raw: id count and FNV-1a hash, round trip, speed") {
        const auto& whole = fixture.at("wiki_whole");
        REQUIRE(wiki.size() == std::size_t(whole.at("bytes").as_int()));
        const gpt2_tokenizer fresh = gpt2_tokenizer::load(vocab, merges);  // cold word cache
        const auto start = std::chrono::steady_clock::now();
        const std::vector<int> ids = fresh.encode(wiki);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        WARN("encoded wiki.test.raw (" << wiki.size() << " bytes, " << ids.size() << " ids) in "
                                       << seconds << " s");
        CHECK(ids.size() == std::size_t(whole.at("ids").as_int()));
        char hash[17];
        std::snprintf(hash, sizeof hash, "%016llx",
                      static_cast<unsigned long long>(fnv1a64_of_ids(ids)));
        CHECK(std::string(hash) == whole.at("fnv1a64").as_string());
        CHECK(fresh.decode(ids) == wiki);  // speed is reported above, never asserted
    }
    SECTION("round trip on random bytes with the real merges") {
        std::mt19937 rng(7);
        for (int trial = 0; trial < 300; ++trial) {
            std::string s;
            const int n = int(rng() % 64);
            for (int i = 0; i < n; ++i) {
                // Mostly ASCII text with some random bytes, so merges fire as well.
                const unsigned r = rng();
                s += (r % 5 == 0) ? char(r >> 8) : char(" etaoinshrdlu'\n"[(r >> 8) % 15]);
            }
            REQUIRE(t.decode(t.encode(s)) == s);
        }
    }
}
