// examples/serve/cpu_engine.hpp — the engine that kvcar-serve's scheduler drives on the CPU: a
// reference model and a paged kvcar cache (kv_cache<Codec, Layout, paged_storage>).
//
// The CPU model runs one sequence at a time, so a "batched" forward pass is a loop over the
// items; each item's chunk is appended to its own sequence and yields its last token's greedy
// successor.
#pragma once

#include <span>
#include <vector>

#include "examples/models/model.hpp"
#include "examples/models/tensor_ops.hpp"

namespace kvcar::examples::serve {

template <class Cache>
struct cpu_engine {
    const language_model& model;
    Cache& cache;

    int add_sequence() { return cache.add_sequence(); }
    void remove_sequence(int seq) { cache.remove_sequence(seq); }
    /// Item b appends counts[b] of `tokens` to sequences[b]; returns each item's greedy next
    /// token (the argmax of its last token's logits).
    std::vector<int> next_tokens(std::span<const int> sequences, std::span<const int> counts,
                                 std::span<const int> tokens) {
        std::vector<int> next;
        std::size_t offset = 0;
        for (std::size_t b = 0; b < sequences.size(); ++b) {
            const std::vector<float> row = model.forward(
                cache, sequences[b], tokens.subspan(offset, std::size_t(counts[b])), logits_for::last);
            next.push_back(argmax(row));
            offset += std::size_t(counts[b]);
        }
        return next;
    }
    /// Pages of the cache's pool no sequence holds (the scheduler's plan is checked against it).
    int free_pages() const { return cache.storage().free_pages(); }
};

}  // namespace kvcar::examples::serve
