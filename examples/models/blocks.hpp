// examples/models/blocks.hpp — the pieces of a CPU forward pass that every family
// (gpt2/gpt2.hpp, llama/llama.hpp) runs the same way: attention through a kvcar cache, and the
// LM head over the rows a caller asks for.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "kvcar/reference/attention.hpp"

#include "examples/models/model_common.hpp"
#include "examples/models/tensor_ops.hpp"

namespace kvcar::examples {

/// Layer `layer`'s attention for n new tokens of sequence `seq` at positions pos0...: k and v
/// are appended to the cache (encoded by its codec), then every query row attends over the
/// keys and values *decoded back from the cache*, its own included. Whatever the codec loses
/// therefore reaches the logits, and nothing else differs from the uncompressed model.
template <class Cache>
void attention_through_cache(Cache& cache, int seq, int layer, const attention_params& ap,
                             const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v, int pos0, std::vector<float>& att) {
    cache.append(seq, layer, k, v);
    reference_attention(cache, seq, layer, ap, q, pos0, att);
}

/// Logits of the residual stream x ([n][D]) for the rows `which` asks for (every row, or the
/// last one): final_norm(xf, x_rows, rows) the family's final norm, then the LM head, the
/// model's own `lm_head` or, when that is empty, the tied `embedding` ([V][D] either way).
template <class FinalNorm>
std::vector<float> lm_head_logits(const std::vector<float>& x, int n, logits_for which, int D,
                                  int V, const std::vector<float>& embedding,
                                  const std::vector<float>& lm_head, int threads,
                                  FinalNorm&& final_norm) {
    const auto N = [](long long a, long long b) { return std::size_t(a) * std::size_t(b); };
    const int first = which == logits_for::last ? n - 1 : 0;
    const int rows = n - first;
    std::vector<float> xf(N(rows, D));
    final_norm(std::span<float>(xf), std::span<const float>(x).subspan(N(first, D)), rows);
    std::vector<float> logits(N(rows, V));
    matmul(logits, xf, lm_head.empty() ? embedding : lm_head, {}, rows, D, V, threads);
    return logits;
}

}  // namespace kvcar::examples
