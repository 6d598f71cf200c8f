// examples/models/tool_checks.hpp — the command-line tools' checks, made before any work starts:
// numbers, input files, output paths, text that is really text, a memory estimate, and the
// signal flag that lets a long run stop cleanly. Every message names the option, the value it
// got and the rule it broke, e.g.
//   kvcar-generate: --temperature 'nan' must be a finite number ≥ 0
//   kvcar-calibrate: --out '/missing/x.kvc': folder '/missing' does not exist
//
// Host-only and free of the models, so tests/tools checks them in-process.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>

#include "kvcar/common.hpp"

namespace kvcar::examples {

// ---------------------------------------------------------------------------------------------
// Numbers.

/// Throws unless `value` (given on the command line as `text`) is finite and >= `min`:
/// "tool: --temperature 'nan' must be a finite number ≥ 0".
inline void require_finite_at_least(const std::string& tool, const std::string& option,
                                    const std::string& text, double value, double min) {
    char bound[32];
    std::snprintf(bound, sizeof bound, "%g", min);
    require(std::isfinite(value) && value >= min, tool + ": --" + option + " '" + text +
                                                      "' must be a finite number ≥ " + bound);
}

// ---------------------------------------------------------------------------------------------
// Paths.

/// Throws unless `path` names an existing regular file (a folder, or nothing, is refused):
/// "tool: --text 'data/': is a folder, not a file".
inline void check_input_file(const std::string& tool, const std::string& option,
                             const std::string& path) {
    namespace fs = std::filesystem;
    const std::string me = tool + ": --" + option + " '" + path + "': ";
    require(!path.empty(), tool + ": --" + option + " needs a file path, got an empty one");
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    require(fs::exists(st), me + "no such file");
    require(!fs::is_directory(st), me + "is a folder, not a file");
    require(fs::is_regular_file(st) || fs::is_character_file(st) || fs::is_fifo(st),
            me + "is not a regular file");
    require(::access(path.c_str(), R_OK) == 0, me + "is not readable");
}

/// Throws unless `path` names an existing folder.
inline void check_input_dir(const std::string& tool, const std::string& option,
                            const std::string& path) {
    namespace fs = std::filesystem;
    const std::string me = tool + ": --" + option + " '" + path + "': ";
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    require(fs::exists(st), me + "no such folder");
    require(fs::is_directory(st), me + "is a file, not a folder");
}

/// Throws unless a file can be written at `path`: it is not a folder, its folder exists and is
/// writable. Checked before any work, so a long run never fails at its very end.
inline void check_output_file(const std::string& tool, const std::string& option,
                              const std::string& path) {
    namespace fs = std::filesystem;
    const std::string me = tool + ": --" + option + " '" + path + "': ";
    require(!path.empty(), tool + ": --" + option + " needs a file path, got an empty one");
    std::error_code ec;
    require(!fs::is_directory(path, ec), me + "is a folder; give a file name inside it");
    fs::path folder = fs::path(path).parent_path();
    if (folder.empty()) folder = ".";
    require(fs::exists(folder, ec), me + "folder '" + folder.string() + "' does not exist");
    require(fs::is_directory(folder, ec), me + "'" + folder.string() + "' is not a folder");
    require(::access(folder.c_str(), W_OK) == 0,
            me + "folder '" + folder.string() + "' is not writable");
    if (fs::exists(path, ec))
        require(::access(path.c_str(), W_OK) == 0, me + "the existing file is not writable");
}

// ---------------------------------------------------------------------------------------------
// Text that is really text.

/// Why `bytes` is not text, or nothing when it is: a NUL byte anywhere, or more than 1% of the
/// bytes in invalid UTF-8 sequences (a safetensors file, a tokenizer.bin, an image). Plain
/// ASCII and UTF-8 pass; a Latin-1 file with a few accented letters passes too.
inline std::optional<std::string> binary_reason(std::string_view bytes) {
    if (const std::size_t nul = bytes.find('\0'); nul != std::string_view::npos)
        return "it holds a NUL byte at offset " + std::to_string(nul);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < bytes.size();) {
        const auto c = static_cast<unsigned char>(bytes[i]);
        std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3
                                                       : (c >> 3) == 0x1E ? 4 : 0;
        bool ok = len != 0 && i + len <= bytes.size();
        for (std::size_t k = 1; ok && k < len; ++k)
            ok = (static_cast<unsigned char>(bytes[i + k]) >> 6) == 0x2;
        if (ok) {
            i += len;
        } else {
            ++bad;
            ++i;
        }
    }
    if (bad * 100 > bytes.size())
        return std::to_string(bad) + " of its " + std::to_string(bytes.size()) +
               " bytes are not UTF-8 (more than 1%)";
    return std::nullopt;
}

/// The bytes of the text file `path` given as --`option`: refused when it is not a file (a
/// folder says so rather than reading as "0 tokens"), and when it is not text.
inline std::string read_text_file(const std::string& tool, const std::string& option,
                                  const std::string& path) {
    check_input_file(tool, option, path);
    std::ifstream in(path, std::ios::binary);
    require(bool(in), tool + ": --" + option + " '" + path + "': cannot open it");
    std::ostringstream s;
    s << in.rdbuf();
    std::string bytes = s.str();
    if (const auto why = binary_reason(bytes))
        throw error("kvcar: " + tool + ": --" + option + " '" + path + "' is not text: " + *why +
                    " (a text option reads a UTF-8 text file)");
    return bytes;
}

// ---------------------------------------------------------------------------------------------
// Memory.

/// "3.2 GiB": sizes in messages.
inline std::string gib_string(double bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / double(1ull << 30));
    return buf;
}

/// What `kvcar-generate --batch B` will hold at once, in bytes: the KV cache at its full length
/// for every sequence, two copies of every sequence's logits, and the token lists.
struct generate_memory_estimate {
    double kv_cache = 0;
    double logits = 0;
    double tokens = 0;
    double total() const { return kv_cache + logits + tokens; }
};

inline generate_memory_estimate estimate_generate_memory(long long batch, long long tokens_per_seq,
                                                         double kv_bytes_per_token, long long vocab) {
    generate_memory_estimate e;
    e.kv_cache = double(batch) * double(tokens_per_seq) * kv_bytes_per_token;
    e.logits = 2.0 * double(batch) * double(vocab) * sizeof(float);
    e.tokens = double(batch) * double(tokens_per_seq) * sizeof(int);
    return e;
}

/// Throws when `e` exceeds `limit_bytes`, with the estimate's parts and what to change.
inline void check_generate_memory(const std::string& tool, long long batch,
                                  long long tokens_per_seq, const generate_memory_estimate& e,
                                  double limit_bytes) {
    require(e.total() <= limit_bytes,
            tool + ": --batch " + std::to_string(batch) + " would need about " +
                gib_string(e.total()) + " (KV cache " + gib_string(e.kv_cache) + " for " +
                std::to_string(batch) + " sequences of " + std::to_string(tokens_per_seq) +
                " tokens, logits " + gib_string(e.logits) + "), more than the limit of " +
                gib_string(limit_bytes) + "; lower --batch or --steps, or raise --max-memory");
}

// ---------------------------------------------------------------------------------------------
// SIGINT / SIGTERM: a long run checks the flag between steps, saves what it has and exits with
// 128 + the signal (130 for Ctrl-C), as a shell expects.

namespace detail {
inline volatile std::sig_atomic_t interrupt_signal_number = 0;
inline void record_interrupt(int sig) { interrupt_signal_number = sig; }
}  // namespace detail

/// Routes SIGINT and SIGTERM to the flag (the default action would lose the run's work).
inline void install_interrupt_flag() {
    detail::interrupt_signal_number = 0;
    std::signal(SIGINT, detail::record_interrupt);
    std::signal(SIGTERM, detail::record_interrupt);
}
/// The signal received since install_interrupt_flag(), or 0.
inline int interrupt_signal() { return int(detail::interrupt_signal_number); }
/// The exit status a run stopped by `sig` returns: 128 + sig.
inline int interrupted_exit_status(int sig) { return 128 + sig; }
/// Gives SIGINT and SIGTERM their default actions back.
inline void remove_interrupt_flag() {
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
}

}  // namespace kvcar::examples
