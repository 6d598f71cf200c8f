// examples/models/tool_json.hpp — `--json`: a tool's final results as one JSON object on stdout
// (the human-readable report then goes to stderr), for scripts such as tools/quality.py.
//
//   kvcar-perplexity --model M --json   →   {"tool":"kvcar-perplexity","perplexity":152.6,...}
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

#include "kvcar/io/json.hpp"

namespace kvcar::examples {

/// A number for a JSON report: NaN and infinities (which JSON cannot hold) become null.
inline io::json_value json_number(double x) {
    return std::isfinite(x) ? io::json_value(x) : io::json_value(nullptr);
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
    c.set("kv", kv);
    c.set("peak_bytes_used", peak_bytes_used);
    c.set("peak_bytes_reserved", peak_bytes_reserved);
    c.set("bytes_per_token", cache.bytes_per_token());
    c.set("compression_vs_fp16", json_number(cache.compression_ratio()));
    report.set("kv_cache", std::move(c));
}

}  // namespace kvcar::examples
