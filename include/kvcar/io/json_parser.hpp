// kvcar/io/json_parser.hpp — kvcar's strict JSON reader (RFC 8259).
//
// kvcar reads JSON that users download (config.json, safetensors headers, sharded index files,
// vocab.json), so the parser follows RFC 8259 to the letter and treats every input as hostile:
// it never reads out of bounds, limits nesting to json_max_depth levels (recursion depth, so no
// stack overflow), checks that strings are valid UTF-8, rejects duplicate keys (RFC 8259 leaves
// them undefined, and they would make a tensor name ambiguous) and reports every error with the
// source name and line:column. Include io/json.hpp, which adds the writer and file reading.
#pragma once

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "kvcar/io/json_value.hpp"
#include "kvcar/io/utf8.hpp"

namespace kvcar::io {

namespace detail {

class json_parser {
public:
    json_parser(std::string_view text, std::string_view source) : text_(text), source_(source) {}

    json_value document() {
        if (text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;  // RFC 8259 §8.1: may ignore a BOM
        skip_ws();
        if (pos_ == text_.size()) fail(detail::msg() + "empty document, expected a JSON value");
        json_value v = value(0);
        skip_ws();
        if (pos_ != text_.size())
            fail(detail::msg() + "unexpected " + describe(pos_) +
                 " after the JSON value (trailing garbage)");
        return v;
    }

private:
    std::string_view text_;
    std::string_view source_;
    std::size_t pos_ = 0;

    [[noreturn]] void fail(const std::string& problem) const { fail_at(pos_, problem); }
    [[noreturn]] void fail_at(std::size_t at, const std::string& problem) const {
        int line = 1;
        std::size_t line_start = 0;
        for (std::size_t i = 0; i < at && i < text_.size(); ++i)
            if (text_[i] == '\n') {
                ++line;
                line_start = i + 1;
            }
        throw json_error(std::string(source_), line, int(at - line_start + 1), problem);
    }

    std::string describe(std::size_t at) const {
        if (at >= text_.size()) return "end of input";
        const unsigned char c = static_cast<unsigned char>(text_[at]);
        if (c >= 0x21 && c < 0x7f) return std::string("'") + char(c) + "'";
        static const char* hex = "0123456789abcdef";
        return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
    }

    bool at_end() const { return pos_ >= text_.size(); }
    char peek() const { return at_end() ? '\0' : text_[pos_]; }

    void skip_ws() {
        while (!at_end()) {
            const char c = text_[pos_];
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
            ++pos_;
        }
    }

    json_value value(int depth) {
        switch (peek()) {
            case '{':
                return object(depth + 1);
            case '[':
                return array(depth + 1);
            case '"':
                return json_value(string());
            case 't':
                literal("true");
                return json_value(true);
            case 'f':
                literal("false");
                return json_value(false);
            case 'n':
                literal("null");
                return json_value(nullptr);
            default:
                break;
        }
        const char c = peek();
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        if (at_end()) fail(detail::msg() + "unexpected end of input, expected a JSON value");
        fail(detail::msg() + "unexpected " + describe(pos_) + ", expected a JSON value");
    }

    void literal(std::string_view word) {
        if (text_.substr(pos_, word.size()) != word)
            fail(detail::msg() + "invalid literal, expected '" + word + "'");
        pos_ += word.size();
    }

    void enter(int depth) const {
        if (depth > json_max_depth)
            fail(detail::msg() + "nesting deeper than " + json_max_depth + " levels");
    }

    json_value array(int depth) {
        enter(depth);
        ++pos_;  // '['
        json_value::array_type elements;
        skip_ws();
        if (peek() == ']') {
            ++pos_;
            return json_value(std::move(elements));
        }
        for (;;) {
            skip_ws();
            if (peek() == ']') fail(detail::msg() + "trailing comma in array");
            elements.push_back(value(depth));
            skip_ws();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            if (peek() == ']') {
                ++pos_;
                return json_value(std::move(elements));
            }
            fail(detail::msg() + "expected ',' or ']' in array, got " + describe(pos_));
        }
    }

    json_value object(int depth) {
        enter(depth);
        ++pos_;  // '{'
        json_value::object_type members;
        std::vector<std::size_t> key_pos;
        skip_ws();
        if (peek() == '}') {
            ++pos_;
            return json_access::object_from(std::move(members), {});
        }
        for (;;) {
            skip_ws();
            if (peek() == '}') fail(detail::msg() + "trailing comma in object");
            if (peek() != '"')
                fail(detail::msg() + "expected a string key in object, got " + describe(pos_));
            key_pos.push_back(pos_);
            std::string key = string();
            skip_ws();
            if (peek() != ':')
                fail(detail::msg() + "expected ':' after object key, got " + describe(pos_));
            ++pos_;
            skip_ws();
            json_value v = value(depth);
            if (members.size() >= std::numeric_limits<std::uint32_t>::max())
                fail(detail::msg() + "object has too many members");
            members.emplace_back(std::move(key), std::move(v));
            skip_ws();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            if (peek() == '}') {
                ++pos_;
                break;
            }
            fail(detail::msg() + "expected ',' or '}' in object, got " + describe(pos_));
        }
        std::vector<std::uint32_t> sorted(members.size());
        for (std::size_t i = 0; i < sorted.size(); ++i) sorted[i] = std::uint32_t(i);
        // Stable: of two equal keys the earlier comes first, so the later one is reported.
        std::stable_sort(sorted.begin(), sorted.end(), [&](std::uint32_t a, std::uint32_t b) {
            return members[a].first < members[b].first;
        });
        for (std::size_t i = 1; i < sorted.size(); ++i)
            if (members[sorted[i]].first == members[sorted[i - 1]].first)
                fail_at(key_pos[sorted[i]],
                        detail::msg() + "duplicate key '" + members[sorted[i]].first + "'");
        return json_access::object_from(std::move(members), std::move(sorted));
    }

    static int hex_digit(char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    }

    /// Reads the 4 hex digits after "\u" at pos_ (pos_ is on the 'u').
    std::uint32_t hex4() {
        const std::size_t start = pos_ - 1;
        ++pos_;  // 'u'
        std::uint32_t cp = 0;
        for (int i = 0; i < 4; ++i) {
            const int d = at_end() ? -1 : hex_digit(text_[pos_]);
            if (d < 0) fail_at(start, detail::msg() + "invalid \\u escape: expected 4 hex digits");
            cp = cp * 16 + std::uint32_t(d);
            ++pos_;
        }
        return cp;
    }

    static void append_utf8(std::string& out, std::uint32_t cp) {
        if (cp < 0x80) {
            out += char(cp);
        } else if (cp < 0x800) {
            out += char(0xC0 | (cp >> 6));
            out += char(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += char(0xE0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        } else {
            out += char(0xF0 | (cp >> 18));
            out += char(0x80 | ((cp >> 12) & 0x3F));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        }
    }

    /// Parses a string literal at pos_ (on the opening quote).
    std::string string() {
        const std::size_t open = pos_;
        ++pos_;
        std::string out;
        for (;;) {
            if (at_end()) fail_at(open, detail::msg() + "unterminated string");
            const unsigned char c = static_cast<unsigned char>(text_[pos_]);
            if (c == '"') {
                ++pos_;
                return out;
            }
            if (c == '\\') {
                escape(out);
                continue;
            }
            if (c < 0x20)
                fail(detail::msg() + "control character " + describe(pos_) +
                     " in string (must be escaped)");
            if (c < 0x80) {
                out += char(c);
                ++pos_;
                continue;
            }
            copy_utf8_sequence(out);
        }
    }

    void escape(std::string& out) {
        const std::size_t start = pos_;
        ++pos_;  // '\\'
        if (at_end()) fail_at(start, detail::msg() + "unterminated string");
        const char e = text_[pos_];
        switch (e) {
            case '"':
                out += '"';
                break;
            case '\\':
                out += '\\';
                break;
            case '/':
                out += '/';
                break;
            case 'b':
                out += '\b';
                break;
            case 'f':
                out += '\f';
                break;
            case 'n':
                out += '\n';
                break;
            case 'r':
                out += '\r';
                break;
            case 't':
                out += '\t';
                break;
            case 'u': {
                std::uint32_t cp = hex4();
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    fail_at(start,
                            detail::msg() +
                                "lone low surrogate in \\u escape (no preceding high surrogate)");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (text_.substr(pos_, 2) != "\\u")
                        fail_at(
                            start,
                            detail::msg() +
                                "lone high surrogate in \\u escape (no following low surrogate)");
                    ++pos_;  // '\\'
                    const std::uint32_t lo = hex4();
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        fail_at(start,
                                detail::msg() +
                                    "high surrogate in \\u escape not followed by a low surrogate");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                append_utf8(out, cp);
                return;  // hex4 advanced pos_
            }
            default:
                fail_at(start, detail::msg() + "invalid escape '\\" + e + "' in string");
        }
        ++pos_;
    }

    /// Copies one multi-byte UTF-8 sequence, rejecting overlong forms, surrogates and > U+10FFFF
    /// (io/utf8.hpp). The error is located at the sequence's first byte, and says whether that
    /// byte starts nothing, the text ends before the sequence can, or which byte breaks it.
    void copy_utf8_sequence(std::string& out) {
        const std::size_t len = utf8_sequence_length(static_cast<unsigned char>(text_[pos_]));
        if (len == 0) fail(detail::msg() + "invalid UTF-8 in string: unexpected " + describe(pos_));
        if (text_.size() - pos_ < len)
            fail(detail::msg() + "invalid UTF-8 in string: truncated sequence");
        const utf8_sequence seq = utf8_at(text_, pos_);
        if (!seq.valid)  // the maximal subpart ends just before the byte that does not fit
            fail(detail::msg() + "invalid UTF-8 in string: bad continuation " +
                 describe(pos_ + seq.length));
        out.append(text_.substr(pos_, len));
        pos_ += len;
    }

    json_value number() {
        const std::size_t start = pos_;
        const auto digit = [&] { return !at_end() && text_[pos_] >= '0' && text_[pos_] <= '9'; };
        bool negative = false;
        if (peek() == '-') {
            negative = true;
            ++pos_;
        }
        if (!digit()) fail(detail::msg() + "expected a digit after '-'");
        // Decimal exponent of the leading significant digit: tells overflow from underflow.
        long long lead_exp = 0;
        bool seen_significant = false;
        if (text_[pos_] == '0') {
            ++pos_;
            if (digit()) fail_at(start, detail::msg() + "leading zeros are not allowed in numbers");
        } else {
            std::size_t n = 0;
            while (digit()) ++pos_, ++n;
            lead_exp = (long long)n - 1;
            seen_significant = true;
        }
        bool integral = true;
        if (peek() == '.') {
            integral = false;
            ++pos_;
            if (!digit()) fail(detail::msg() + "expected a digit after '.' in number");
            long long place = -1;
            while (digit()) {
                if (!seen_significant && text_[pos_] != '0') {
                    lead_exp = place;
                    seen_significant = true;
                }
                ++pos_, --place;
            }
        }
        if (peek() == 'e' || peek() == 'E') {
            integral = false;
            ++pos_;
            bool exp_negative = false;
            if (peek() == '+' || peek() == '-') exp_negative = text_[pos_++] == '-';
            if (!digit()) fail(detail::msg() + "expected a digit in the exponent of a number");
            long long e = 0;
            while (digit()) {
                e = std::min<long long>(e * 10 + (text_[pos_] - '0'), 1000000000LL);
                ++pos_;
            }
            lead_exp += exp_negative ? -e : e;
        }
        const char* first = text_.data() + start;
        const char* last = text_.data() + pos_;
        double d = 0;
        const auto r = std::from_chars(first, last, d);
        if (r.ec == std::errc::result_out_of_range) {
            if (lead_exp >= 0)
                fail_at(start, detail::msg() + "number " +
                                   std::string_view(first, std::size_t(last - first)) +
                                   " is out of range of a double");
            d = negative ? -0.0 : 0.0;  // underflow: the nearest double is zero
        } else if (r.ec != std::errc() || r.ptr != last) {
            fail_at(start, detail::msg() + "invalid number");
        }
        std::int64_t i = 0;
        bool exact = false;
        if (integral) {
            const auto ri = std::from_chars(first, last, i);
            // "-0" stays a double: as an integer it would lose its sign when written back.
            exact = ri.ec == std::errc() && ri.ptr == last && !(negative && i == 0);
        }
        return json_access::number_from(d, exact ? i : 0, exact);
    }
};

}  // namespace detail

/// Parses one JSON document (RFC 8259). Throws json_error naming `source_name` and line:column.
inline json_value parse_json(std::string_view text, std::string_view source_name) {
    return detail::json_parser(text, source_name).document();
}

}  // namespace kvcar::io
