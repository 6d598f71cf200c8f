// kvcar/io/utf8.hpp — which bytes are well-formed UTF-8, decided in one place.
//
// Every text kvcar touches may be hostile or broken: JSON files users download, tokenizer
// vocabularies, and model output, which can stop inside a character (byte-fallback and byte-level
// tokens) or hold bytes no character starts with. The JSON reader rejects ill-formed strings, the
// JSON writer refuses them, and the tokenizers and tools replace them; all of them ask this header,
// so they agree on what "well-formed" means.
//
// Well-formed is RFC 3629 / Unicode §3.9 Table 3-7. Besides the bit patterns, the second byte's
// range is narrowed for four lead bytes, which is what rules out the three ways a bit pattern can
// still be wrong:
//   lead      length  second byte  why
//   00..7F    1       -
//   C2..DF    2       80..BF       (C0, C1 could only start overlong forms of ASCII)
//   E0        3       A0..BF       below A0 would be an overlong form
//   E1..EC    3       80..BF
//   ED        3       80..9F       A0..BF would encode a surrogate, D800..DFFF
//   EE..EF    3       80..BF
//   F0        4       90..BF       below 90 would be an overlong form
//   F1..F3    4       80..BF
//   F4        4       80..8F       90..BF would be past U+10FFFF
//   (80..BF, C0, C1 and F5..FF start nothing; every byte after the second is 80..BF.)
//
// An ill-formed sequence is split as Unicode §3.9 "U+FFFD Substitution of Maximal Subparts"
// defines: its maximal subpart is the longest prefix of some well-formed sequence (a lead byte and
// the continuation bytes that fit the table), or the one byte there when no well-formed sequence
// starts with it. Replacing each maximal subpart by one U+FFFD is the practice the standard
// recommends and the one WHATWG's (so W3C's) decoder and Python's errors="replace" follow, so text
// repaired here reads the same as in the tools that users compare against.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kvcar::io {

/// U+FFFD REPLACEMENT CHARACTER, in UTF-8.
inline constexpr std::string_view utf8_replacement_character = "\xEF\xBF\xBD";

namespace detail {

/// One row of the table in the file comment: the length of the sequence a byte starts (0 when
/// none starts with it) and the allowed range of the sequence's second byte.
struct utf8_lead {
    std::size_t length;
    unsigned char second_min, second_max;
};

constexpr utf8_lead utf8_lead_of(unsigned char b) noexcept {
    if (b < 0x80) return {1, 0, 0};
    if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
    if (b == 0xE0) return {3, 0xA0, 0xBF};
    if (b == 0xED) return {3, 0x80, 0x9F};
    if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
    if (b == 0xF0) return {4, 0x90, 0xBF};
    if (b == 0xF4) return {4, 0x80, 0x8F};
    if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
    return {0, 0, 0};
}

}  // namespace detail

/// The length of the well-formed sequence that a byte can start: 1 for ASCII, 2 to 4 for a lead
/// byte, 0 for a byte that no well-formed sequence starts with (80..BF, C0, C1, F5..FF). Whether
/// the bytes that follow fit is utf8_at's question; this one lets a caller tell a bad lead byte
/// from a sequence cut short, as the JSON reader's error messages do.
constexpr std::size_t utf8_sequence_length(unsigned char lead) noexcept {
    return detail::utf8_lead_of(lead).length;
}

/// What starts at s[pos]: a well-formed sequence of `length` bytes encoding `code_point`
/// (valid = true), or an ill-formed one whose maximal subpart is `length` bytes (valid = false,
/// code_point = U+FFFD): the bytes that one U+FFFD replaces under the W3C/WHATWG and Python
/// policy. `length` is at least 1, so stepping by it always advances.
struct utf8_sequence {
    std::size_t length;    ///< bytes it spans (>= 1)
    bool valid;            ///< well-formed UTF-8
    char32_t code_point;   ///< what it encodes; U+FFFD when not valid
};

/// The sequence at s[pos]; pos < s.size(). Reads nothing past s, so a sequence cut by the end of
/// `s` is ill-formed, its maximal subpart being what is left of it.
constexpr utf8_sequence utf8_at(std::string_view s, std::size_t pos) noexcept {
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[pos + i]); };
    const unsigned char b0 = byte(0);
    const detail::utf8_lead lead = detail::utf8_lead_of(b0);
    if (lead.length == 1) return {1, true, char32_t(b0)};
    if (lead.length == 0) return {1, false, U'\uFFFD'};
    const std::size_t left = s.size() - pos;
    char32_t code_point = char32_t(b0 & (0x7F >> lead.length));  // the lead byte's payload bits
    for (std::size_t i = 1; i < lead.length; ++i) {
        if (i >= left) return {i, false, U'\uFFFD'};
        const unsigned char b = byte(i);
        const unsigned char min = i == 1 ? lead.second_min : 0x80;
        const unsigned char max = i == 1 ? lead.second_max : 0xBF;
        if (b < min || b > max) return {i, false, U'\uFFFD'};  // b starts the next subpart
        code_point = (code_point << 6) | char32_t(b & 0x3F);
    }
    return {lead.length, true, code_point};
}

/// Whether all of `s` is well-formed UTF-8 (the empty string is).
constexpr bool is_valid_utf8(std::string_view s) noexcept {
    for (std::size_t pos = 0; pos < s.size();) {
        const utf8_sequence seq = utf8_at(s, pos);
        if (!seq.valid) return false;
        pos += seq.length;
    }
    return true;
}

/// `s` with each maximal subpart of an ill-formed sequence replaced by one U+FFFD, as Python's
/// bytes.decode("utf-8", errors="replace") and WHATWG's decoder do; well-formed text is returned
/// unchanged. Unicode §3.9 Table 3-8: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64 becomes
/// "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd".
inline std::string replace_invalid_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t pos = 0; pos < s.size();) {
        const utf8_sequence seq = utf8_at(s, pos);
        if (seq.valid) out.append(s.substr(pos, seq.length));
        else out += utf8_replacement_character;
        pos += seq.length;
    }
    return out;
}

}  // namespace kvcar::io
