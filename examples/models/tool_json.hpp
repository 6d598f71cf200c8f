// examples/models/tool_json.hpp — `--json`: a tool's final results as one JSON object on stdout
// (the human-readable report then goes to stderr), for scripts such as tools/quality.py.
//
//   kvcar-perplexity --model M --json   →   {"tool":"kvcar-perplexity","perplexity":152.6,...}
#pragma once

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>

#include "kvcar/io/json.hpp"

namespace kvcar::examples {

/// A number for a JSON report: NaN and infinities (which JSON cannot hold) become null.
inline io::json_value json_number(double x) {
    return std::isfinite(x) ? io::json_value(x) : io::json_value(nullptr);
}

/// `text` made valid UTF-8 for a JSON string: each maximal ill-formed subsequence becomes U+FFFD,
/// as Python's bytes.decode("utf-8", errors="replace") does. A model's text can end inside a
/// character (byte-fallback or byte-level tokens) or hold bytes no character starts with; JSON
/// strings must be UTF-8, so the report carries the replacement, not an error.
inline std::string json_text(std::string_view s) {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    std::string out;
    out.reserve(s.size());
    std::size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = byte(i);
        if (c < 0x80) {
            out += char(c);
            ++i;
            continue;
        }
        // RFC 3629: the sequence a lead byte starts, and the range of its second byte (no
        // overlong forms, no surrogates, nothing past U+10FFFF).
        std::size_t len = 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        }
        std::size_t n = 1;  // the lead byte and the continuation bytes that fit its pattern
        while (n < len && i + n < s.size()) {
            const unsigned char b = byte(i + n);
            if (n == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
            ++n;
        }
        if (len > 0 && n == len)
            out.append(s.substr(i, n));
        else
            out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER
        i += n;
    }
    return out;
}

/// The report object every tool starts from: {"tool": name}.
inline io::json_value json_report(const std::string& tool) {
    io::json_value r = io::json_value::object();
    r.set("tool", tool);
    return r;
}

/// Prints `report` as one line on stdout.
inline void print_json_report(const io::json_value& report) {
    std::printf("%s\n", io::to_json(report).c_str());
    std::fflush(stdout);
}

/// The cache report's numbers (print_cache_report's line) as members of `report`.
template <class Cache>
void add_cache_json(io::json_value& report, const std::string& kv, const Cache& cache,
                    std::size_t peak_bytes_used, std::size_t peak_bytes_reserved) {
    io::json_value c = io::json_value::object();
    c.set("kv", json_text(kv));
    c.set("peak_bytes_used", peak_bytes_used);
    c.set("peak_bytes_reserved", peak_bytes_reserved);
    c.set("bytes_per_token", cache.bytes_per_token());
    c.set("compression_vs_fp16", json_number(cache.compression_ratio()));
    report.set("kv_cache", std::move(c));
}

}  // namespace kvcar::examples
