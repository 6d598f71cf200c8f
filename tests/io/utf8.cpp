// Tests for kvcar/io/utf8.hpp: which bytes are well-formed UTF-8 (Unicode §3.9 Table 3-7) and how
// an ill-formed sequence splits into maximal subparts, each of which replace_invalid_utf8 turns
// into one U+FFFD, as Python's bytes.decode("utf-8", errors="replace") does. The expected
// replacements were checked against CPython 3.
#include <cstddef>
#include <kvcar/io/utf8.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "catch.hpp"

using kvcar::io::is_valid_utf8;
using kvcar::io::replace_invalid_utf8;
using kvcar::io::utf8_at;
using kvcar::io::utf8_sequence_length;

// Usable at compile time (the checks are constexpr, no allocation).
static_assert(is_valid_utf8("") && is_valid_utf8("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"));
static_assert(!is_valid_utf8("\xC0\xAF"));
static_assert(utf8_at("\xF0\x9F\x98\x80", 0).code_point == U'\U0001F600');
static_assert(utf8_sequence_length(0xE0) == 3);

namespace {

const std::string ufffd = "\xEF\xBF\xBD";

std::string repeat_ufffd(int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += ufffd;
    return s;
}

/// The lengths of the successive sequences (valid or maximal subparts) of `s`.
std::vector<std::size_t> split(std::string_view s) {
    std::vector<std::size_t> lengths;
    for (std::size_t pos = 0; pos < s.size();) {
        const kvcar::io::utf8_sequence seq = utf8_at(s, pos);
        REQUIRE(seq.length >= 1);
        lengths.push_back(seq.length);
        pos += seq.length;
    }
    return lengths;
}

/// The shortest UTF-8 form of `c`, written from the bit patterns alone: an oracle for utf8_at.
std::string encode(char32_t c) {
    if (c < 0x80) return std::string(1, char(c));
    if (c < 0x800) return {char(0xC0 | (c >> 6)), char(0x80 | (c & 0x3F))};
    if (c < 0x10000)
        return {char(0xE0 | (c >> 12)), char(0x80 | ((c >> 6) & 0x3F)), char(0x80 | (c & 0x3F))};
    return {char(0xF0 | (c >> 18)), char(0x80 | ((c >> 12) & 0x3F)),
            char(0x80 | ((c >> 6) & 0x3F)), char(0x80 | (c & 0x3F))};
}

}  // namespace

TEST_CASE("utf8: the lead byte table", "[io]") {
    for (int b = 0; b < 256; ++b) {
        INFO("byte " << b);
        std::size_t want = 0;
        if (b < 0x80) want = 1;
        else if (b >= 0xC2 && b <= 0xDF) want = 2;
        else if (b >= 0xE0 && b <= 0xEF) want = 3;
        else if (b >= 0xF0 && b <= 0xF4) want = 4;
        CHECK(utf8_sequence_length(static_cast<unsigned char>(b)) == want);
        if (want == 0) {  // a byte that starts nothing is a maximal subpart of its own
            const std::string s(1, char(b));
            CHECK(utf8_at(s, 0).length == 1);
            CHECK_FALSE(utf8_at(s, 0).valid);
            CHECK(utf8_at(s, 0).code_point == U'\uFFFD');
        }
    }
}

TEST_CASE("utf8: well-formed characters of 1 to 4 bytes, at the edges of each length", "[io]") {
    const std::vector<std::pair<std::string, char32_t>> cases = {
        {std::string(1, '\0'), U'\0'},
        {"A", U'A'},
        {"\x7F", U'\x7F'},
        {"\xC2\x80", U'\u0080'},
        {"\xC3\xA9", U'\u00E9'},
        {"\xDF\xBF", U'\u07FF'},
        {"\xE0\xA0\x80", U'\u0800'},
        {"\xE2\x82\xAC", U'\u20AC'},
        {"\xED\x9F\xBF", U'\uD7FF'},  // just below the surrogates
        {"\xEE\x80\x80", U'\uE000'},  // just above them
        {"\xEF\xBF\xBD", U'\uFFFD'},
        {"\xEF\xBF\xBF", U'\uFFFF'},
        {"\xF0\x90\x80\x80", U'\U00010000'},
        {"\xF0\x9F\x98\x80", U'\U0001F600'},
        {"\xF3\xBF\xBF\xBF", U'\U000FFFFF'},
        {"\xF4\x8F\xBF\xBF", U'\U0010FFFF'},  // the last code point
    };
    for (const auto& [bytes, code_point] : cases) {
        INFO("code point " << std::size_t(code_point));
        const kvcar::io::utf8_sequence seq = utf8_at(bytes, 0);
        CHECK(seq.valid);
        CHECK(seq.length == bytes.size());
        CHECK(seq.code_point == code_point);
        CHECK(is_valid_utf8(bytes));
        CHECK(replace_invalid_utf8(bytes) == bytes);
        // Followed by more text, the sequence still ends where it should.
        const std::string longer = bytes + "z";
        CHECK(utf8_at(longer, 0).length == bytes.size());
        CHECK(utf8_at(longer, bytes.size()).code_point == U'z');
    }
    const std::string mixed = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80z";
    CHECK(split(mixed) == std::vector<std::size_t>{1, 2, 3, 4, 1});
    CHECK(is_valid_utf8(""));
    CHECK(replace_invalid_utf8("").empty());
}

TEST_CASE("utf8: every scalar value decodes from its encoding", "[io]") {
    int failures = 0;
    for (char32_t c = 0; c <= 0x10FFFF; ++c) {
        if (c >= 0xD800 && c <= 0xDFFF) continue;  // surrogates are no scalar values
        const std::string bytes = encode(c);
        const kvcar::io::utf8_sequence seq = utf8_at(bytes, 0);
        if (!seq.valid || seq.length != bytes.size() || seq.code_point != c) ++failures;
    }
    CHECK(failures == 0);
}

TEST_CASE("utf8: Unicode's Table 3-8, one U+FFFD per maximal subpart", "[io]") {
    // 61 | F1 80 80 | E1 80 | C2 | 62 | 80 | 63 | 80 | BF | 64: F1 80 80 and E1 80 are prefixes
    // of well-formed sequences cut by a byte that cannot continue them; C2, 80 and BF stand alone.
    const std::string in = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
    CHECK(split(in) == std::vector<std::size_t>{1, 3, 2, 1, 1, 1, 1, 1, 1, 1});
    CHECK(replace_invalid_utf8(in) ==
          "a" + repeat_ufffd(3) + "b" + ufffd + "c" + repeat_ufffd(2) + "d");
    CHECK_FALSE(is_valid_utf8(in));
}

TEST_CASE("utf8: overlong forms, surrogates and code points past U+10FFFF", "[io]") {
    // Each is ill-formed from its second byte on, so every byte is its own maximal subpart.
    const std::vector<std::pair<std::string, int>> cases = {
        {"\xC0\xAF", 2},              // '/' in two bytes
        {"\xC1\xBF", 2},              // U+007F in two bytes
        {"\xE0\x80\xAF", 3},          // '/' in three bytes
        {"\xE0\x9F\xBF", 3},          // U+07FF in three bytes
        {"\xF0\x80\x80\xAF", 4},      // '/' in four bytes
        {"\xF0\x8F\xBF\xBF", 4},      // U+FFFF in four bytes
        {"\xED\xA0\x80", 3},          // U+D800, a high surrogate
        {"\xED\xBF\xBF", 3},          // U+DFFF, a low surrogate
        {"\xF4\x90\x80\x80", 4},      // U+110000
        {"\xF5\x80\x80\x80", 4},      // F5 starts nothing
        {"\xF8\x88\x80\x80\x80", 5},  // a 5-byte form of RFC 2279
        {"\xFF", 1},
        {"\x80\xBF", 2},              // continuation bytes without a lead
    };
    for (const auto& [in, n] : cases) {
        INFO("bytes " << in.size() << ", first " << int(static_cast<unsigned char>(in[0])));
        CHECK_FALSE(is_valid_utf8(in));
        CHECK(split(in) == std::vector<std::size_t>(std::size_t(n), 1));
        CHECK(replace_invalid_utf8(in) == repeat_ufffd(n));
    }
}

TEST_CASE("utf8: a sequence cut short is one maximal subpart", "[io]") {
    // By the end of the input, or by a byte that cannot continue it.
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"\xC3", ufffd},
        {"a\xC3", "a" + ufffd},
        {"\xC3\xA9\xC3", "\xC3\xA9" + ufffd},
        {"\xE2\x82", ufffd},
        {"\xE2", ufffd},
        {"\xE2\x82" "A", ufffd + "A"},
        {"\xF0\x9F\x98", ufffd},
        {"\xF0\x9F", ufffd},
        {"\xF0\x9F\x98" "A", ufffd + "A"},
        {"\xF0\x9F\x98\xF0\x9F\x98\x80", ufffd + "\xF0\x9F\x98\x80"},  // a new lead byte
        {"\xE0\xA0", ufffd},                 // A0 may follow E0: one subpart
        {"\xF4\x8F\xBF", ufffd},
        {"\xE0\x80", ufffd + ufffd},         // 80 does not fit after E0
    };
    for (const auto& [in, want] : cases) {
        INFO("bytes " << in.size() << ", first " << int(static_cast<unsigned char>(in[0])));
        CHECK_FALSE(is_valid_utf8(in));
        CHECK(replace_invalid_utf8(in) == want);
    }
    const kvcar::io::utf8_sequence cut = utf8_at("\xF0\x9F\x98", 0);
    CHECK(cut.length == 3);
    CHECK_FALSE(cut.valid);
    CHECK(cut.code_point == U'\uFFFD');
    // utf8_at reads nothing past the view it is given, even where the bytes go on beyond it.
    const std::string_view whole = "\xE2\x82\xAC";
    CHECK(utf8_at(whole.substr(0, 2), 0).length == 2);
    CHECK_FALSE(utf8_at(whole.substr(0, 2), 0).valid);
}

TEST_CASE("utf8: every string of one or two bytes, and three from telling first bytes", "[io]") {
    // Properties rather than expected values: the split tiles the input, each valid sequence is
    // the shortest encoding of a scalar value, replacing gives valid UTF-8, and a string is valid
    // exactly when replacing leaves it unchanged.
    // About 720,000 strings: a failure is reported once, not as millions of passing assertions.
    const auto check = [](const std::string& s) {
        std::size_t total = 0;
        for (std::size_t pos = 0; pos < s.size();) {
            const kvcar::io::utf8_sequence seq = utf8_at(s, pos);
            if (seq.length == 0) break;
            // A valid sequence must be the shortest encoding of a scalar value.
            const bool scalar = seq.code_point <= 0x10FFFF &&
                                (seq.code_point < 0xD800 || seq.code_point > 0xDFFF);
            if (seq.valid && !(scalar && encode(seq.code_point) == s.substr(pos, seq.length)))
                break;
            total += seq.length;
            pos += seq.length;
        }
        const std::string fixed = replace_invalid_utf8(s);
        if (total == s.size() && is_valid_utf8(fixed) && is_valid_utf8(s) == (fixed == s)) return;
        std::string bytes;
        for (const char c : s) bytes += std::to_string(int(static_cast<unsigned char>(c))) + " ";
        FAIL("bytes " << bytes);
    };
    const unsigned char firsts[] = {0x41, 0x80, 0xC2, 0xE0, 0xE1, 0xED, 0xF0, 0xF1, 0xF4, 0xFF};
    for (int b0 = 0; b0 < 256; ++b0) {
        const std::string one(1, char(b0));
        check(one);
        for (int b1 = 0; b1 < 256; ++b1) check(one + char(b1));
    }
    for (const unsigned char b0 : firsts)
        for (int b1 = 0; b1 < 256; ++b1)
            for (int b2 = 0; b2 < 256; ++b2) check(std::string{char(b0), char(b1), char(b2)});
}
