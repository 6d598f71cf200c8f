// examples/models/cuda/pass_arrays.hpp — a forward pass's batch as device_model receives it:
// the host-side checks that make a bad batch change nothing, and the small int arrays one
// upload per pass carries to the device.
//
// A prefill pass (any item with more than one token) uploads
//     [tokens (n) | positions (n) | last row of each item (items)]
// A decode step (one token per item, n = items) uploads, at one fixed address,
//     [tokens | positions | last rows | append's token offsets (n + 1) | sequences |
//      lengths after this token]
// whose first three parts are laid out as a prefill's: the layers read both the same way.
// Everything a decode step's launches read that changes from step to step is in it, which is
// what lets a CUDA graph replay them (decode_graphs.cuh).
//
// Plain C++ (no CUDA): tests/models/pass_arrays.cpp checks it on the CPU.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvcar/common.hpp"

#include "examples/models/model_common.hpp"

namespace kvcar::examples::cuda_model {

/// The tokens of one forward pass: item b appends counts[b] tokens, the next counts[b] entries of
/// `tokens`, to cache sequence sequences[b] (each sequence at most once).
struct token_batch {
    std::span<const int> sequences;
    std::span<const int> counts;
    std::span<const int> tokens;
};

/// What a model's pass needs to know of itself to check a batch.
struct pass_limits {
    std::string who;      ///< "llama (cuda)": names the model in errors
    kv_geometry geometry;  ///< the cache geometry the model writes
    int vocab = 0;
    int max_positions = 0;
};

/// Checks everything about `b` that can be checked on the host against `cache` (a device cache)
/// and returns each item's first position (its sequence's length now). Throws kvcar::error, so a
/// bad batch changes nothing.
template <class Cache>
std::vector<int> validate_batch(const pass_limits& m, const Cache& cache, const token_batch& b) {
    const std::string& who = m.who;
    check_cache_geometry(who, cache.geometry(), m.geometry);
    require(b.sequences.size() == b.counts.size(),
            who + ": " + std::to_string(b.sequences.size()) + " sequences but " +
                std::to_string(b.counts.size()) + " token counts");
    require(!b.sequences.empty(), who + ": the batch has no sequences");
    std::size_t total = 0;
    for (int c : b.counts) {
        require(c > 0, who + ": a sequence in the batch has " + std::to_string(c) +
                           " tokens (a forward pass needs at least one per sequence)");
        total += std::size_t(c);
    }
    require(total == b.tokens.size(), who + ": the counts add up to " + std::to_string(total) +
                                          " tokens but " + std::to_string(b.tokens.size()) +
                                          " were given");
    std::vector<int> first_positions;
    std::size_t offset = 0;
    for (std::size_t i = 0; i < b.sequences.size(); ++i) {
        const int seq = b.sequences[i];
        require(cache.is_live(seq), who + ": sequence " + std::to_string(seq) +
                                        " is not live in the cache");
        for (std::size_t j = 0; j < i; ++j)
            require(b.sequences[j] != seq, who + ": sequence " + std::to_string(seq) +
                                               " appears twice in one batch");
        const int pos0 = cache.length(seq);
        check_chunk(who, b.tokens.subspan(offset, std::size_t(b.counts[i])), pos0, m.vocab,
                    m.max_positions, cache.max_tokens());
        first_positions.push_back(pos0);
        offset += std::size_t(b.counts[i]);
    }
    return first_positions;
}

/// The context bound decode attention runs a step for: the next power of two of the longest
/// context (at least 64), at most the cache's capacity. Its split layout then stays the same for
/// every step of the bucket, which a captured graph needs (decode_graphs.cuh).
inline int decode_length_bucket(int longest, int capacity) {
    const unsigned want = unsigned(std::max(longest, 64));
    return std::min(int(std::bit_ceil(want)), capacity);
}

/// Whether every item of the batch has one token.
inline bool is_decode_step(const token_batch& b) {
    return std::all_of(b.counts.begin(), b.counts.end(), [](int c) { return c == 1; });
}

/// A prefill pass's upload (see the file comment).
inline std::vector<std::int32_t> prefill_arrays(const token_batch& b,
                                                const std::vector<int>& first_positions) {
    const std::size_t N = b.tokens.size(), items = b.sequences.size();
    std::vector<std::int32_t> ints(2 * N + items);
    for (std::size_t i = 0, row = 0; i < items; ++i) {
        for (int t = 0; t < b.counts[i]; ++t, ++row) {
            ints[row] = b.tokens[row];
            ints[N + row] = first_positions[i] + t;
        }
        ints[2 * N + i] = std::int32_t(row) - 1;
    }
    return ints;
}

/// A decode step's upload (see the file comment) and where its parts start.
struct decode_arrays {
    std::vector<std::int32_t> ints;
    int n = 0;        ///< items = tokens
    int longest = 0;  ///< the longest context after this step's token

    std::size_t positions() const { return std::size_t(n); }
    std::size_t token_offsets() const { return 3 * std::size_t(n); }
    std::size_t sequences() const { return 4 * std::size_t(n) + 1; }
    std::size_t kv_lengths() const { return 5 * std::size_t(n) + 1; }

    decode_arrays(const token_batch& b, const std::vector<int>& first_positions)
        : ints(6 * b.tokens.size() + 1), n(int(b.tokens.size())) {
        const std::size_t N = std::size_t(n);
        for (std::size_t u = 0; u < N; ++u) {
            ints[u] = b.tokens[u];
            ints[positions() + u] = first_positions[u];
            ints[2 * N + u] = std::int32_t(u);  // each item's last row is its only row
            ints[token_offsets() + u] = std::int32_t(u);
            ints[sequences() + u] = b.sequences[u];
            ints[kv_lengths() + u] = first_positions[u] + 1;
            longest = std::max(longest, first_positions[u] + 1);
        }
        ints[token_offsets() + N] = n;
    }
};

}  // namespace kvcar::examples::cuda_model
