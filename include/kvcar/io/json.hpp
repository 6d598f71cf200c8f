// kvcar/io/json.hpp — a small, strict JSON reader and writer for the files kvcar loads.
//
// kvcar reads JSON that users download (config.json, safetensors headers, sharded index files,
// vocab.json), so the parser follows RFC 8259 to the letter and treats every input as hostile:
// it never reads out of bounds, limits nesting to 256 levels (recursion depth, so no stack
// overflow), checks that strings are valid UTF-8, and reports every error with the source name
// and line:column. Objects keep their key order (safetensors and HF files are written that way,
// and writing them back should not reorder them) and reject duplicate keys, which RFC 8259
// leaves undefined and which would make a tensor name ambiguous.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"

namespace kvcar::io {

/// Integer types a JSON number (and an error message) takes exactly: bool and char are text.
template <class I>
concept json_integer = std::integral<I> && !std::same_as<I, bool> && !std::same_as<I, char>;

namespace detail {

/// Builds an error message by appending left to right: `msg() + "x " + name + " is " + n`.
/// Starting from a message object keeps every `+` an append, which is cheaper than chained
/// std::string temporaries and avoids GCC 12's false -Wrestrict warnings on `"lit" + temp`.
struct msg {
    std::string text;
    operator std::string() && { return std::move(text); }
    operator std::string() const& { return text; }
};
inline msg operator+(msg m, std::string_view s) {
    m.text.append(s);
    return m;
}
inline msg operator+(msg m, char c) {
    m.text.push_back(c);
    return m;
}
template <json_integer I>
msg operator+(msg m, I i) {
    char buf[24];
    const auto r = std::to_chars(buf, buf + sizeof buf, i);
    m.text.append(buf, r.ptr);
    return m;
}
/// Doubles in their shortest round-trip form ("1e-05", "0.5").
inline msg operator+(msg m, double d) {
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, d);
    m.text.append(buf, r.ptr);
    return m;
}

}  // namespace detail

/// A JSON syntax error: a kvcar::error that also carries where the problem is, so a reader that
/// embeds JSON (a safetensors header) can report it in its own terms.
class json_error : public error {
public:
    /// A syntax error in `source` at 1-based `line` and byte `column`; what() reads "kvcar: json:
    /// <source>:<line>:<column>: <problem>".
    json_error(std::string source, int line, int column, std::string problem)
        : error(detail::msg() + "kvcar: json: " + source + ":" + line + ":" + column + ": " +
                problem),
          source_(std::move(source)),
          line_(line),
          column_(column),
          problem_(std::move(problem)) {}

    /// The name the parsed text was given (a file path, or what embeds it).
    const std::string& source() const { return source_; }
    /// 1-based line of the problem.
    int line() const { return line_; }
    /// 1-based byte column.
    int column() const { return column_; }
    /// What is wrong, without the location (e.g. "expected ',' or '}'").
    const std::string& problem() const { return problem_; }

private:
    std::string source_;
    int line_;
    int column_;
    std::string problem_;
};

namespace detail {
class json_access;
}

/// Deepest nesting of arrays and objects parse_json accepts.
inline constexpr int json_max_depth = 256;

/// One JSON value: null, bool, number, string, array or object (members in document order).
class json_value {
public:
    /// The six JSON types.
    enum class kind : std::uint8_t { null, boolean, number, string, array, object };
    /// An array's elements.
    using array_type = std::vector<json_value>;
    /// One member of an object: key and value.
    using member_type = std::pair<std::string, json_value>;
    /// An object's members, in document order, keys unique.
    using object_type = std::vector<member_type>;

    json_value() = default;
    /// null.
    json_value(std::nullptr_t) {}
    /// true or false.
    json_value(bool b) : kind_(kind::boolean), bool_(b) {}
    json_value(char) = delete;  // a character is not a number; pass a string
    /// Integers keep their exact value; one beyond int64 is stored as a double.
    template <json_integer I>
    json_value(I i)
        : kind_(kind::number),
          number_(std::in_range<std::int64_t>(i) ? number_data{double(i), std::int64_t(i), true}
                                                 : number_data{double(i), 0, false}) {}
    /// A number from a float or double (stored as a double, not an exact integer).
    template <std::floating_point F>
    json_value(F f) : kind_(kind::number), number_{double(f), 0, false} {}
    /// A string (UTF-8 bytes, stored as given).
    json_value(std::string s) : kind_(kind::string), string_(std::move(s)) {}
    /// A string, copied from `s`.
    json_value(std::string_view s) : kind_(kind::string), string_(s) {}
    /// A string, copied from the NUL-terminated `s` (not a bool, as the pointer would otherwise
    /// convert).
    json_value(const char* s) : kind_(kind::string), string_(s) {}
    /// An array of `a`'s elements.
    json_value(array_type a) : kind_(kind::array), array_(std::move(a)) {}
    /// Of repeated keys the last one wins, as with set().
    json_value(object_type members) : kind_(kind::object) {
        for (auto& m : members) set(std::move(m.first), std::move(m.second));
    }

    /// An empty array.
    static json_value array() { return json_value(array_type{}); }
    /// An empty object.
    static json_value object() { return json_value(object_type{}); }

    /// Which of the six types this value is.
    kind type() const { return kind_; }
    /// Whether this is null.
    bool is_null() const { return kind_ == kind::null; }
    /// Whether this is true or false.
    bool is_bool() const { return kind_ == kind::boolean; }
    /// Whether this is a number (integer or not).
    bool is_number() const { return kind_ == kind::number; }
    /// Whether this is a string.
    bool is_string() const { return kind_ == kind::string; }
    /// Whether this is an array.
    bool is_array() const { return kind_ == kind::array; }
    /// Whether this is an object.
    bool is_object() const { return kind_ == kind::object; }
    /// A number with an integral value that fits int64 (as_int() will not throw).
    bool is_integer() const {
        return is_number() && (number_.exact || integral_double(number_.value));
    }

    /// The bool; throws kvcar::error "expected a bool, got ..." for any other type.
    bool as_bool() const { return expect(kind::boolean).bool_; }
    /// The number as a double (an integer beyond 2^53 rounds); throws kvcar::error for a
    /// non-number.
    double as_double() const { return expect(kind::number).number_.value; }
    /// The exact integer of an integral literal ("123"); "1e3" and "2.0" are accepted too.
    std::int64_t as_int() const {
        const number_data& n = expect(kind::number).number_;
        if (n.exact) return n.integer;
        if (!integral_double(n.value))
            throw error(detail::msg() + "kvcar: json: " + number_text(n.value) +
                        (std::isfinite(n.value) && std::trunc(n.value) == n.value
                             ? " is outside the range of a 64-bit integer"
                             : " is not an integer"));
        return std::int64_t(n.value);
    }
    /// The string; throws kvcar::error for any other type.
    const std::string& as_string() const { return expect(kind::string).string_; }
    /// The elements; throws kvcar::error unless this is an array.
    const array_type& as_array() const { return expect(kind::array).array_; }
    /// An object's members in document order.
    const object_type& items() const { return expect(kind::object).object_.members; }

    /// Elements of an array or members of an object.
    std::size_t size() const {
        if (is_array()) return array_.size();
        if (is_object()) return object_.members.size();
        throw error(detail::msg() + "kvcar: json: size() of " + kind_name(kind_) +
                    ", which is neither an array nor an object");
    }

    /// Element `i`; throws kvcar::error unless this is an array with more than `i` elements.
    const json_value& at(std::size_t i) const {
        const auto& a = as_array();
        if (i >= a.size())
            throw error(detail::msg() + "kvcar: json: index " + i + " out of range for array of " +
                        a.size());
        return a[i];
    }
    /// The member named `key`; throws kvcar::error "missing key 'key'".
    const json_value& at(std::string_view key) const {
        expect(kind::object);
        const json_value* v = find(key);
        if (!v) throw error(detail::msg() + "kvcar: json: missing key '" + key + "'");
        return *v;
    }
    /// The member named `key`, or nullptr (also when this is not an object).
    const json_value* find(std::string_view key) const {
        if (!is_object()) return nullptr;
        const std::size_t i = object_.find(key);
        return i == npos ? nullptr : &object_.members[i].second;
    }
    /// Whether this is an object with a member named `key`.
    bool contains(std::string_view key) const { return find(key) != nullptr; }

    /// Appends `v`; throws kvcar::error unless this is an array.
    void push_back(json_value v) {
        expect(kind::array);
        array_.push_back(std::move(v));
    }
    /// Replaces the member `key` or appends it at the end.
    void set(std::string key, json_value v) {
        expect(kind::object);
        const std::size_t i = object_.find(key);
        if (i != npos)
            object_.members[i].second = std::move(v);
        else
            object_.append(std::move(key), std::move(v));
    }

    /// Structural equality; numbers compare by value (1 == 1.0), objects by members in order.
    friend bool operator==(const json_value& a, const json_value& b) {
        if (a.kind_ != b.kind_) return false;
        switch (a.kind_) {
            case kind::null:
                return true;
            case kind::boolean:
                return a.bool_ == b.bool_;
            case kind::number:
                if (a.number_.exact && b.number_.exact)
                    return a.number_.integer == b.number_.integer;
                return a.number_.value == b.number_.value;
            case kind::string:
                return a.string_ == b.string_;
            case kind::array:
                return a.array_ == b.array_;
            case kind::object:
                return a.object_.members == b.object_.members;
        }
        return false;
    }

    /// "null", "a bool", "a number", "a string", "an array" or "an object", as messages name a
    /// type.
    static const char* kind_name(kind k) {
        switch (k) {
            case kind::null:
                return "null";
            case kind::boolean:
                return "a bool";
            case kind::number:
                return "a number";
            case kind::string:
                return "a string";
            case kind::array:
                return "an array";
            case kind::object:
                return "an object";
        }
        return "?";
    }

private:
    static constexpr std::size_t npos = std::size_t(-1);
    friend class detail::json_access;

    struct number_data {
        double value = 0;
        std::int64_t integer = 0;
        bool exact = false;  // `integer` holds the literal's exact value
    };

    /// Members in document order plus an index sorted by key, so that lookups in vocab.json
    /// (50k keys) are O(log n) and a duplicate is found without an O(n^2) scan.
    struct object_data {
        object_type members;
        std::vector<std::uint32_t> by_key;

        auto lower_bound(std::string_view key) const {
            return std::lower_bound(by_key.begin(), by_key.end(), key,
                                    [&](std::uint32_t i, std::string_view k) {
                                        return std::string_view(members[i].first) < k;
                                    });
        }
        std::size_t find(std::string_view key) const {
            const auto it = lower_bound(key);
            if (it != by_key.end() && members[*it].first == key) return *it;
            return npos;
        }
        void append(std::string key, json_value v) {
            const auto at = lower_bound(key) - by_key.begin();
            members.emplace_back(std::move(key), std::move(v));
            by_key.insert(by_key.begin() + at, std::uint32_t(members.size() - 1));
        }
    };

    const json_value& expect(kind want) const {
        if (kind_ != want)
            throw error(detail::msg() + "kvcar: json: expected " + kind_name(want) + ", got " +
                        kind_name(kind_));
        return *this;
    }

    // 2^63 is exactly representable; every integral double below it converts exactly.
    static bool integral_double(double d) {
        return std::isfinite(d) && std::trunc(d) == d && d >= -9223372036854775808.0 &&
               d < 9223372036854775808.0;
    }
    static std::string number_text(double d) {
        char buf[32];
        auto r = std::to_chars(buf, buf + sizeof buf, d);
        return std::string(buf, r.ptr);
    }

    // Plain members rather than std::variant: simpler, and GCC 12 issues false
    // -Wmaybe-uninitialized warnings for a recursive variant in users' -O2 builds.
    kind kind_ = kind::null;
    bool bool_ = false;
    number_data number_;
    std::string string_;
    array_type array_;
    object_data object_;
};

namespace detail {

/// Builds objects during parsing, where members arrive in order and the duplicate check is
/// done once at the end with the key positions at hand.
class json_access {
public:
    static json_value object_from(json_value::object_type members,
                                  std::vector<std::uint32_t> sorted) {
        json_value v;
        v.kind_ = json_value::kind::object;
        v.object_ = json_value::object_data{std::move(members), std::move(sorted)};
        return v;
    }
    static json_value number_from(double d, std::int64_t i, bool exact) {
        json_value v;
        v.kind_ = json_value::kind::number;
        v.number_ = json_value::number_data{d, i, exact};
        return v;
    }
    /// The literal's exact integer, if it had one (writing it back must not round it).
    static const std::int64_t* exact_int(const json_value& v) {
        return v.number_.exact ? &v.number_.integer : nullptr;
    }
};

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
            utf8_sequence(out);
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

    /// Copies one multi-byte UTF-8 sequence, rejecting overlong forms, surrogates and > U+10FFFF.
    void utf8_sequence(std::string& out) {
        const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text_[i]); };
        const unsigned char c = byte(pos_);
        int len;
        unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            fail(detail::msg() + "invalid UTF-8 in string: unexpected " + describe(pos_));
        }
        if (text_.size() - pos_ < std::size_t(len))
            fail(detail::msg() + "invalid UTF-8 in string: truncated sequence");
        for (int i = 1; i < len; ++i) {
            const unsigned char b = byte(pos_ + i);
            const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
            if (!ok)
                fail(detail::msg() + "invalid UTF-8 in string: bad continuation " +
                     describe(pos_ + i));
        }
        out.append(text_.substr(pos_, std::size_t(len)));
        pos_ += std::size_t(len);
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

inline void append_json(std::string& out, const json_value& v);

inline bool valid_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        int len;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return false;
        }
        if (s.size() - i < std::size_t(len)) return false;
        for (int k = 1; k < len; ++k) {
            const unsigned char b = static_cast<unsigned char>(s[i + std::size_t(k)]);
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return false;
        }
        i += std::size_t(len);
    }
    return true;
}

inline void append_json_string(std::string& out, std::string_view s) {
    if (!valid_utf8(s)) throw error(detail::msg() + "kvcar: to_json: string is not valid UTF-8");
    static const char* hex = "0123456789abcdef";
    out += '"';
    for (const char ch : s) {
        const unsigned char c = static_cast<unsigned char>(ch);
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\b':
                out += "\\b";
                break;
            case '\f':
                out += "\\f";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (c < 0x20) {
                    out += "\\u00";
                    out += hex[c >> 4];
                    out += hex[c & 15];
                } else {
                    out += ch;
                }
        }
    }
    out += '"';
}

inline void append_json(std::string& out, const json_value& v) {
    switch (v.type()) {
        case json_value::kind::null:
            out += "null";
            break;
        case json_value::kind::boolean:
            out += v.as_bool() ? "true" : "false";
            break;
        case json_value::kind::number: {
            const double d = v.as_double();
            char buf[32];
            std::to_chars_result r;
            if (const std::int64_t* i = json_access::exact_int(v)) {
                r = std::to_chars(buf, buf + sizeof buf, *i);
            } else {
                if (!std::isfinite(d))
                    throw error(detail::msg() +
                                "kvcar: to_json: " + (std::isnan(d) ? "NaN" : "infinity") +
                                " cannot be written as JSON");
                r = std::to_chars(buf, buf + sizeof buf,
                                  d);  // shortest form that reads back exactly
            }
            out.append(buf, r.ptr);
            break;
        }
        case json_value::kind::string:
            append_json_string(out, v.as_string());
            break;
        case json_value::kind::array: {
            out += '[';
            bool first = true;
            for (const auto& e : v.as_array()) {
                if (!first) out += ',';
                first = false;
                append_json(out, e);
            }
            out += ']';
            break;
        }
        case json_value::kind::object: {
            out += '{';
            bool first = true;
            for (const auto& [k, e] : v.items()) {
                if (!first) out += ',';
                first = false;
                append_json_string(out, k);
                out += ':';
                append_json(out, e);
            }
            out += '}';
            break;
        }
    }
}

/// Reads a whole regular file; errors name `who` (the format) and the path.
inline std::vector<std::byte> read_file_bytes(const std::string& path, std::string_view who) {
    const std::string where = detail::msg() + "kvcar: " + who + ": " + path + ": ";
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status))
        throw error(detail::msg() + where + "cannot open: no such file");
    if (std::filesystem::is_directory(status))
        throw error(detail::msg() + where + "is a directory, not a file");
    if (!std::filesystem::is_regular_file(status))
        throw error(detail::msg() + where + "is not a regular file");
    const std::uintmax_t size = std::filesystem::file_size(path, ec);
    if (ec) throw error(detail::msg() + where + "cannot read the file size: " + ec.message());
    if (size > std::uintmax_t(std::numeric_limits<std::ptrdiff_t>::max()))
        throw error(detail::msg() + where + "file of " + size + " bytes is too large to load");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error(detail::msg() + where + "cannot open for reading");
    std::vector<std::byte> bytes(static_cast<std::size_t>(size));
    if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size));
    if (!in || std::uintmax_t(in.gcount()) != size)
        throw error(detail::msg() + where + "read " + in.gcount() + " of " + size + " bytes");
    return bytes;
}

}  // namespace detail

/// Parses one JSON document (RFC 8259). Throws json_error naming `source_name` and line:column.
inline json_value parse_json(std::string_view text, std::string_view source_name) {
    return detail::json_parser(text, source_name).document();
}

/// Reads and parses a JSON file; errors name the path.
inline json_value load_json(const std::string& path) {
    const std::vector<std::byte> bytes = detail::read_file_bytes(path, "json");
    return parse_json(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                      path);
}

/// Compact JSON text of `v`: no whitespace, members in order, non-ASCII written as UTF-8.
/// Throws kvcar::error for NaN, infinity or a string that is not valid UTF-8.
inline std::string to_json(const json_value& v) {
    std::string out;
    detail::append_json(out, v);
    return out;
}

}  // namespace kvcar::io
