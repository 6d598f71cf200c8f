// examples/models/llama/llama2c.hpp — Karpathy's llama2.c checkpoint (.bin) and tokenizer
// (tokenizer.bin), as the examples' Llama (llama.hpp) and llama2c_tokenizer read them.
//
// Checkpoint: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size, seq_len), then float32 arrays, every matrix [out][in]: token_embedding[V][D],
// rms_att[L][D], wq[L][D][D], wk[L][KV][D], wv[L][KV][D], wo[L][D][D], rms_ffn[L][D],
// w1[L][H][D], w2[L][D][H], w3[L][H][D], rms_final[D], the legacy freq_cis (seq_len * head_size
// floats, unused), and wcls[V][D] only when the header's vocab_size is negative (unshared
// classifier). The header fixes the file size exactly, so the loader demands that size: a
// truncated download or a file of another format is caught before any weight is read.
//
// Tokenizer: int32 max_token_length, then per token float32 score, int32 length, length bytes.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/io/safetensors.hpp"
#include "kvcar/io/json.hpp"  // io::detail::read_file_bytes

namespace kvcar::examples {

/// The 7-int32 header of a llama2.c checkpoint, validated (parse_llama2c_header).
struct llama2c_config {
    int dim = 0;         ///< D: model width
    int hidden_dim = 0;  ///< H: width of the feed-forward hidden layer
    int n_layers = 0;    ///< L: transformer layers
    int n_heads = 0;     ///< query heads
    int n_kv_heads = 0;  ///< KV heads (a divisor of n_heads)
    int vocab_size = 0;  ///< V: tokens, positive (the header's sign is `shared_classifier`)
    int seq_len = 0;     ///< longest context; sizes the file's unused freq_cis table
    bool shared_classifier = true;  ///< header vocab_size > 0: the classifier is token_embedding

    /// Per-head width: dim / n_heads.
    int head_size() const { return dim / n_heads; }
    /// KV: width of one layer's K (or V) token vector, n_kv_heads x head_size.
    int kv_dim() const { return n_kv_heads * head_size(); }
};

/// Weights of a llama2.c checkpoint as float32, each array in file layout ([out][in] matrices,
/// layers outermost).
struct llama2c_weights {
    llama2c_config config;               ///< the header the arrays were sized from
    std::vector<float> token_embedding;  ///< one row per token id, [V][D]
    std::vector<float> rms_att;          ///< attention RMSNorm weights, [L][D]
    std::vector<float> wq;               ///< query projection, [L][D][D]
    std::vector<float> wk;               ///< key projection, [L][KV][D]
    std::vector<float> wv;               ///< value projection, [L][KV][D]
    std::vector<float> wo;               ///< attention output projection, [L][D][D]
    std::vector<float> rms_ffn;          ///< feed-forward RMSNorm weights, [L][D]
    std::vector<float> w1;               ///< SwiGLU gate projection, [L][H][D]
    std::vector<float> w2;               ///< SwiGLU down projection, [L][D][H]
    std::vector<float> w3;               ///< SwiGLU up projection, [L][H][D]
    std::vector<float> rms_final;        ///< final RMSNorm weights, [D]
    std::vector<float> wcls;             ///< classifier, [V][D]; empty when shared (embedding)
};

/// The tokens of a llama2.c tokenizer.bin, by id.
struct llama2c_vocab {
    int max_token_length = 0;         ///< longest piece in bytes, as the file's header says
    std::vector<std::string> pieces;  ///< raw bytes of each token
    std::vector<float> scores;        ///< each token's merge score (higher merges first)
};

namespace llama2c_detail {

/// Sum of products in 64 bits, or false on overflow (header values may be anything).
inline bool llama2c_add_product(std::uint64_t& total, std::initializer_list<std::uint64_t> f) {
    std::uint64_t p = 1;
    for (std::uint64_t x : f) {
        if (x != 0 && p > std::numeric_limits<std::uint64_t>::max() / x) return false;
        p *= x;
    }
    if (p > std::numeric_limits<std::uint64_t>::max() - total) return false;
    total += p;
    return true;
}

}  // namespace llama2c_detail

/// Bytes of a checkpoint's header: 7 int32.
inline constexpr std::size_t llama2c_header_bytes = 7 * sizeof(std::int32_t);

/// Validates the 28-byte header. Throws kvcar::error "llama2c: <source>: <problem>".
inline llama2c_config parse_llama2c_header(std::span<const std::byte> bytes,
                                           const std::string& source) {
    const std::string where = "kvcar: llama2c: " + source + ": ";
    if (bytes.size() < llama2c_header_bytes)
        throw error(io::detail::msg() + where + "truncated: " + bytes.size() +
                    " bytes, shorter than the 28-byte header");
    std::int32_t h[7];
    for (int i = 0; i < 7; ++i) h[i] = io::load_le<std::int32_t>(bytes.data() + 4 * i);
    const char* names[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                            "n_kv_heads", "vocab_size", "seq_len"};
    for (int i = 0; i < 7; ++i) {
        const bool ok =
            i == 5 ? (h[i] != 0 && h[i] != std::numeric_limits<std::int32_t>::min()) : h[i] > 0;
        if (!ok)
            throw error(io::detail::msg() + where + "header " + names[i] + " = " + h[i] +
                        " is invalid (expected " + (i == 5 ? "nonzero" : "positive") +
                        "); not a llama2.c checkpoint?");
    }
    llama2c_config c{h[0], h[1], h[2], h[3], h[4], h[5] < 0 ? -h[5] : h[5], h[6], h[5] > 0};
    if (c.dim % c.n_heads != 0)
        throw error(io::detail::msg() + where + "header n_heads " + c.n_heads +
                    " does not divide dim " + c.dim);
    if (c.n_heads % c.n_kv_heads != 0)
        throw error(io::detail::msg() + where + "header n_kv_heads " + c.n_kv_heads +
                    " does not divide n_heads " + c.n_heads);
    if (c.head_size() % 2 != 0)
        throw error(io::detail::msg() + where + "head size " + c.head_size() +
                    " (dim / n_heads) is odd; RoPE rotates pairs");
    return c;
}

/// Number of float32 values that follow the header, or 0 if it does not fit 64 bits.
inline std::uint64_t llama2c_float_count(const llama2c_config& c) {
    const std::uint64_t D = std::uint64_t(c.dim), H = std::uint64_t(c.hidden_dim),
                        L = std::uint64_t(c.n_layers), V = std::uint64_t(c.vocab_size),
                        KV = std::uint64_t(c.kv_dim()), S = std::uint64_t(c.seq_len),
                        hs = std::uint64_t(c.head_size());
    std::uint64_t n = 0;
    const bool ok = llama2c_detail::llama2c_add_product(n, {V, D}) &&         // token_embedding
                    llama2c_detail::llama2c_add_product(n, {L, D}) &&         // rms_att
                    llama2c_detail::llama2c_add_product(n, {L, D, D}) &&      // wq
                    llama2c_detail::llama2c_add_product(n, {2, L, KV, D}) &&  // wk, wv
                    llama2c_detail::llama2c_add_product(n, {L, D, D}) &&      // wo
                    llama2c_detail::llama2c_add_product(n, {L, D}) &&         // rms_ffn
                    llama2c_detail::llama2c_add_product(n, {3, L, H, D}) &&   // w1, w2, w3
                    llama2c_detail::llama2c_add_product(n, {D}) &&            // rms_final
                    llama2c_detail::llama2c_add_product(n, {S, hs}) &&        // freq_cis (legacy)
                    llama2c_detail::llama2c_add_product(n, {c.shared_classifier ? 0u : V, D});  // wcls
    return ok ? n : 0;
}

/// Parses a whole checkpoint held in memory; `source` names it in errors.
inline llama2c_weights parse_llama2c(std::span<const std::byte> bytes, const std::string& source) {
    const std::string where = "kvcar: llama2c: " + source + ": ";
    llama2c_weights w;
    w.config = parse_llama2c_header(bytes, source);
    const llama2c_config& c = w.config;
    const std::uint64_t floats = llama2c_float_count(c);
    const std::uint64_t max_floats = (std::numeric_limits<std::uint64_t>::max() - 28) / 4;
    if (floats == 0 || floats > max_floats)
        throw error(io::detail::msg() + where + "header sizes (dim " + c.dim + ", hidden_dim " +
                    c.hidden_dim + ", n_layers " + c.n_layers + ", vocab " + c.vocab_size +
                    ") overflow 64 bits");
    const std::uint64_t expected = llama2c_header_bytes + 4 * floats;
    if (bytes.size() != expected)
        throw error(io::detail::msg() + where + (bytes.size() < expected ? "truncated" : "oversized") +
                    ": header (dim " + c.dim + ", hidden_dim " + c.hidden_dim + ", n_layers " +
                    c.n_layers + ", n_heads " + c.n_heads + ", n_kv_heads " + c.n_kv_heads +
                    ", vocab_size " + (c.shared_classifier ? c.vocab_size : -c.vocab_size) +
                    ", seq_len " + c.seq_len + ") implies " + expected + " bytes, file has " +
                    bytes.size());

    // The size matched, so every count below fits in memory already held: no overflow.
    const std::size_t D = std::size_t(c.dim), H = std::size_t(c.hidden_dim),
                      L = std::size_t(c.n_layers), V = std::size_t(c.vocab_size),
                      KV = std::size_t(c.kv_dim());
    std::size_t at = llama2c_header_bytes;
    const auto take = [&](std::vector<float>& out, std::size_t n) {
        out.resize(n);
        if constexpr (std::endian::native == std::endian::little) {
            if (n) std::memcpy(out.data(), bytes.data() + at, n * sizeof(float));
        } else {
            for (std::size_t i = 0; i < n; ++i)
                out[i] = io::load_le<float>(bytes.data() + at + 4 * i);
        }
        at += n * sizeof(float);
    };
    take(w.token_embedding, V * D);
    take(w.rms_att, L * D);
    take(w.wq, L * D * D);
    take(w.wk, L * KV * D);
    take(w.wv, L * KV * D);
    take(w.wo, L * D * D);
    take(w.rms_ffn, L * D);
    take(w.w1, L * H * D);
    take(w.w2, L * D * H);
    take(w.w3, L * H * D);
    take(w.rms_final, D);
    at += std::size_t(c.seq_len) * std::size_t(c.head_size()) * sizeof(float);  // freq_cis
    if (!c.shared_classifier) take(w.wcls, V * D);
    return w;
}

/// Loads a llama2.c checkpoint. Throws kvcar::error "llama2c: <path>: <problem>".
inline llama2c_weights load_llama2c(const std::string& path) {
    const std::vector<std::byte> bytes = io::detail::read_file_bytes(path, "llama2c");
    return parse_llama2c(bytes, path);
}

/// Parses a tokenizer.bin held in memory, expecting exactly `vocab_size` tokens.
inline llama2c_vocab parse_llama2c_vocab(std::span<const std::byte> bytes, int vocab_size,
                                         const std::string& source) {
    const std::string where = "kvcar: llama2c tokenizer: " + source + ": ";
    if (vocab_size <= 0)
        throw error(io::detail::msg() + where + "vocab_size " + vocab_size + " is not positive");
    if (bytes.size() < 4)
        throw error(io::detail::msg() + where + "truncated: " + bytes.size() +
                    " bytes, shorter than the 4-byte max_token_length");
    llama2c_vocab v;
    v.max_token_length = io::load_le<std::int32_t>(bytes.data());
    if (v.max_token_length <= 0)
        throw error(io::detail::msg() + where + "max_token_length " + v.max_token_length +
                    " is not positive");
    // Each token needs at least 8 bytes: a bogus vocab_size cannot make us reserve much.
    if (std::uint64_t(vocab_size) > (bytes.size() - 4) / 8)
        throw error(io::detail::msg() + where + "truncated: " + vocab_size + " tokens need at least " +
                    8 * std::uint64_t(vocab_size) + " bytes, file has " + (bytes.size() - 4) +
                    " after max_token_length");
    v.pieces.reserve(std::size_t(vocab_size));
    v.scores.reserve(std::size_t(vocab_size));
    std::size_t at = 4;
    for (int id = 0; id < vocab_size; ++id) {
        if (bytes.size() - at < 8)
            throw error(io::detail::msg() + where + "truncated at token " + id + " of " + vocab_size +
                        ": " + (bytes.size() - at) + " bytes left, its score and length need 8");
        const float score = io::load_le<float>(bytes.data() + at);
        const std::int32_t len = io::load_le<std::int32_t>(bytes.data() + at + 4);
        at += 8;
        if (len < 0 || len > v.max_token_length)
            throw error(io::detail::msg() + where + "token " + id + " has length " + len +
                        ", outside [0, max_token_length " + v.max_token_length + "]");
        if (std::size_t(len) > bytes.size() - at)
            throw error(io::detail::msg() + where + "truncated at token " + id + ": length " + len +
                        " but " + (bytes.size() - at) + " bytes left");
        v.pieces.emplace_back(reinterpret_cast<const char*>(bytes.data() + at), std::size_t(len));
        v.scores.push_back(score);
        at += std::size_t(len);
    }
    if (at != bytes.size())
        throw error(io::detail::msg() + where + (bytes.size() - at) + " bytes left after " +
                    vocab_size + " tokens (does vocab_size match the tokenizer?)");
    return v;
}

/// Loads a llama2.c tokenizer.bin of `vocab_size` tokens (the checkpoint's vocab_size).
inline llama2c_vocab load_llama2c_vocab(const std::string& path, int vocab_size) {
    const std::vector<std::byte> bytes = io::detail::read_file_bytes(path, "llama2c tokenizer");
    return parse_llama2c_vocab(bytes, vocab_size, path);
}

}  // namespace kvcar::examples
