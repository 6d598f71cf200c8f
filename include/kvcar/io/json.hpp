// kvcar/io/json.hpp — a small, strict JSON reader and writer for the files kvcar loads.
//
// kvcar reads JSON that users download (config.json, safetensors headers, sharded index files,
// vocab.json), so the parser follows RFC 8259 to the letter and treats every input as hostile:
// it never reads out of bounds, limits nesting to 256 levels (recursion depth, so no stack
// overflow), checks that strings are valid UTF-8, and reports every error with the source name
// and line:column. Objects keep their key order (safetensors and HF files are written that way,
// and writing them back should not reorder them) and reject duplicate keys, which RFC 8259
// leaves undefined and which would make a tensor name ambiguous.
//
// This header is the one to include: the value type is in io/json_value.hpp, the reader in
// io/json_parser.hpp; here are the writer (to_json) and the file helpers (load_json).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/json_parser.hpp"
#include "kvcar/io/json_value.hpp"
#include "kvcar/io/utf8.hpp"

namespace kvcar::io {

namespace detail {

inline void append_json(std::string& out, const json_value& v);

inline void append_json_string(std::string& out, std::string_view s) {
    if (!is_valid_utf8(s)) throw error(detail::msg() + "kvcar: to_json: string is not valid UTF-8");
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