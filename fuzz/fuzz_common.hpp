// fuzz/fuzz_common.hpp — what every kvcar fuzzer shares.
//
// A parser of untrusted bytes has exactly one way to say "no": throw kvcar::error with a message
// that starts "kvcar: " and names the problem. Everything else — a crash, a sanitizer report, an
// exception of another type, a broken round trip, a std::bad_alloc because a header field made us
// reserve terabytes — is a finding, so it is left to escape (libFuzzer reports an uncaught
// exception as a crash) or turned into an abort() with a message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "kvcar/common.hpp"

namespace kvcar_fuzz {

[[noreturn]] inline void finding(std::string_view what) {
    std::fprintf(stderr, "kvcar fuzz finding: %.*s\n", int(what.size()), what.data());
    std::abort();
}

inline void check(bool ok, std::string_view what) {
    if (!ok) finding(what);
}

/// Runs `body`, accepting kvcar::error as the input's rejection. The message must follow the
/// library's convention, so a throw site that forgot its prefix shows up here too.
template <class Body>
int accept_only_kvcar_errors(Body&& body) {
    try {
        body();
    } catch (const kvcar::error& e) {
        const std::string_view message = e.what();
        if (!message.starts_with("kvcar: ") || message.size() <= 7)
            finding(std::string("kvcar::error without a 'kvcar: <problem>' message: ") +
                    std::string(message));
    }
    return 0;
}

/// Runs `body` on input that was already accepted: any kvcar::error here is a finding (e.g. a
/// parsed tokenizer that cannot decode its own ids).
template <class Body>
void must_not_throw(std::string_view what, Body&& body) {
    try {
        body();
    } catch (const kvcar::error& e) {
        finding(std::string(what) + ": " + e.what());
    }
}

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

/// Little-endian int32 from the first 4 bytes (the fuzzers that need a parameter take it there).
inline std::int32_t leading_int32(const std::uint8_t* data) {
    std::uint32_t v = 0;
    for (int k = 3; k >= 0; --k) v = v << 8 | data[k];
    return static_cast<std::int32_t>(v);
}

/// A file under fuzz/data (the fixed tokenizers); aborts when it is missing, because a fuzzer
/// that silently tests nothing is worse than one that does not start.
inline std::string read_data_file(const std::string& relative) {
    const std::string path = std::string(KVCAR_FUZZ_DATA_DIR) + "/" + relative;
    std::ifstream in(path, std::ios::binary);
    if (!in) finding("cannot open fuzz data file " + path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace kvcar_fuzz
