// examples/serve/cuda_engine.hpp — the engine that kvcar-serve's scheduler drives on the GPU: the
// models' CUDA session (weights + one paged device cache), whose forward pass is one batched
// call for every item of the step, prefill chunks and decode tokens together.
//
// Plain C++: the session's header has no CUDA in it; link kvcar_models_cuda (or compile
// examples/models/cuda/backend.cu) to use it.
#pragma once

#include <span>
#include <vector>

#include "examples/models/cuda/backend.hpp"

namespace kvcar::examples::serve {

struct cuda_engine {
    cuda_backend::session& session;

    int add_sequence() { return session.add_sequence(); }
    void remove_sequence(int seq) { session.remove_sequence(seq); }
    /// Item b appends counts[b] of `tokens` to sequences[b]; returns each item's greedy next
    /// token (the argmax of its last token's logits).
    std::vector<int> next_tokens(std::span<const int> sequences, std::span<const int> counts,
                                 std::span<const int> tokens) {
        return session.greedy(sequences, counts, tokens);
    }
    /// Host time of the passes so far: building and launching them, and waiting for the GPU.
    cuda_backend::host_time host_time() const { return session.pass_host_time(); }
    /// Pages of the device cache's pool no sequence holds.
    int free_pages() const { return session.free_pages(); }
};

}  // namespace kvcar::examples::serve
