// kvcar/io/json_value.hpp — one JSON value (null, bool, number, string, array, object) and the
// error type of kvcar's JSON reader. The reader is io/json_parser.hpp, the writer and file
// helpers io/json.hpp (include that one).
//
// Objects keep their key order (safetensors and HF files are written that way, and writing them
// back should not reorder them); numbers keep the literal's exact integer when it has one.
#pragma once


#include <algorithm>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
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

}  // namespace detail

}  // namespace kvcar::io
