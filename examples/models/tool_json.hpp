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
#include "kvcar/io/utf8.hpp"

namespace kvcar::examples {

/// A number for a JSON report: NaN and infinities (which JSON cannot hold) become null.
inline io::json_value json_number(double x) {
    return std::isfinite(x) ? io::json_value(x) : io::json_value(nullptr);
}

/// `text` made valid UTF-8 for a JSON string: each maximal ill-formed subsequence becomes U+FFFD,
/// as Python's bytes.decode("utf-8", errors="replace") does (io::replace_invalid_utf8). A model's
/// text can end inside a character (byte-fallback or byte-level tokens) or hold bytes no character
/// starts with; JSON strings must be UTF-8, so the report carries the replacement, not an error.
inline std::string json_text(std::string_view s) { return io::replace_invalid_utf8(s); }

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
