// kvcar/kernels/prefill_attention.cuh — causal attention of many query tokens per sequence (a
// prefill chunk) over a kvcar cache.
//
// Correct and simple: each query token becomes one item of decode attention that sees the
// tokens up to its own position (kv_length = position + 1), so every codec, layout, RoPE mode and
// the split-KV machinery are shared with decode_attention. It reads each key and value once per
// query rather than once per query tile, so its cost grows with n_queries × context: fine for
// chunks and tests, not a FlashAttention replacement.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/prefill_attention.cuh needs nvcc"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/device_kv_cache.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/kernels/decode_attention.cuh"
#include "kvcar/attention_params.hpp"

namespace kvcar::kernels {

namespace detail {

/// One thread per query: its sequence and the number of tokens it sees.
// static: a non-template kernel in a header would be defined once per translation unit that
// includes it, and two such units in one program would not link.
static __global__ void expand_queries_kernel(prefill_attention_params p, std::int32_t* item_sequences,
                                      std::int32_t* item_lengths, std::int32_t* item_positions) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= p.total_queries) return;
    int lo = 0, hi = p.batch - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (p.query_offsets[mid] <= i) lo = mid; else hi = mid - 1;
    }
    const int position = p.query_positions[lo] + (i - p.query_offsets[lo]);
    item_sequences[i] = p.sequences[lo];
    item_lengths[i] = p.causal ? position + 1 : p.kv_lengths[lo];
    item_positions[i] = position;
}

}  // namespace detail

/// Enqueues prefill attention on `stream`. Preconditions: the queries' own K/V are already in
/// the cache (append the chunk first); every visible token is cached in `layer`.
template <kv_codec Codec>
void prefill_attention(const device::cache_view<Codec>& cache, const prefill_attention_params& p,
                       attention_workspace& ws, cudaStream_t stream = nullptr) {
    require(p.batch >= 0 && p.total_queries >= 0,
            "prefill_attention: batch and total_queries must not be negative");
    if (p.batch == 0 || p.total_queries == 0) return;
    require(p.sequences && p.query_offsets && p.query_positions && (p.causal || p.kv_lengths),
            "prefill_attention: sequences, query_offsets, query_positions and (when not causal) "
            "kv_lengths must be device pointers");
    {
        decode_attention_params shape;  // the checks decode_attention makes, before any launch
        shape.batch = p.total_queries;
        shape.max_kv_length = p.max_kv_length;
        shape.layer = p.layer;
        shape.n_heads = p.n_heads;
        shape.scale = p.scale;
        shape.rope = p.rope;
        shape.rope_cfg = p.rope_cfg;
        detail::validate(shape, cache.n_layers, cache.n_kv_heads, cache.head_dim,
                         "prefill_attention", false);
        require(p.q && p.out, "prefill_attention: q and out must be device pointers");
    }
    ws.use_stream(stream);  // ws.ints grows in this stream's order
    std::int32_t* items = ws.ints(3 * std::size_t(p.total_queries));
    const int threads = 128;
    detail::expand_queries_kernel<<<unsigned((p.total_queries + threads - 1) / threads), threads,
                                    0, stream>>>(p, items, items + p.total_queries,
                                                 items + 2 * p.total_queries);
    KVCAR_CUDA_CHECK_LAUNCH("expand_queries_kernel");
    decode_attention_params d;
    d.q = p.q;
    d.out = p.out;
    d.sequences = items;
    d.kv_lengths = items + p.total_queries;
    d.q_positions = items + 2 * p.total_queries;
    d.batch = p.total_queries;
    d.max_kv_length = p.max_kv_length;
    d.layer = p.layer;
    d.n_heads = p.n_heads;
    d.scale = p.scale;
    d.rope = p.rope;
    d.rope_cfg = p.rope_cfg;
    decode_attention(cache, d, ws, stream);
}

/// Prefill for the sequences of a device cache: item b's query_counts[b] queries are its last
/// query_counts[b] cached tokens of `layer` (the chunk just appended), in order; q and out are
/// device [Σ query_counts][opt.n_heads][head_dim]. opt.causal picks causal or full attention.
template <gpu::uploadable_codec Codec, kv_layout Layout>
void prefill_attention(const gpu::device_kv_cache<Codec, Layout>& cache, int layer,
                       std::span<const int> sequences, std::span<const int> query_counts,
                       const float* q, float* out, const attention_params& opt,
                       attention_workspace& ws, cudaStream_t stream = nullptr) {
    require(sequences.size() == query_counts.size(),
            "prefill_attention: " + std::to_string(sequences.size()) + " sequences but " +
                std::to_string(query_counts.size()) + " query counts");
    require(layer >= 0 && layer < cache.geometry().n_layers,
            "prefill_attention: layer " + std::to_string(layer) + " is out of range [0, " +
                std::to_string(cache.geometry().n_layers) + ")");
    const int batch = int(sequences.size());
    // [sequences | offsets (batch + 1) | positions | lengths]
    std::vector<std::int32_t> host(4 * std::size_t(batch) + 1);
    int total = 0, max_len = 0;
    for (int b = 0; b < batch; ++b) {
        const int seq = sequences[std::size_t(b)], count = query_counts[std::size_t(b)];
        const int len = cache.length(seq, layer);  // throws if not live
        require(count >= 0 && count <= len,
                "prefill_attention: sequence " + std::to_string(seq) + " has " +
                    std::to_string(len) + " tokens in layer " + std::to_string(layer) +
                    ", fewer than its " + std::to_string(count) + " queries");
        host[std::size_t(b)] = seq;
        host[std::size_t(batch + b)] = total;
        host[std::size_t(2 * batch + 1 + b)] = len - count;
        host[std::size_t(3 * batch + 1 + b)] = len;
        total += count;
        max_len = std::max(max_len, len);
    }
    host[std::size_t(2 * batch)] = total;
    if (total == 0) return;
    // The expansion writes ws.ints, so the descriptors live in the cache's own scratch.
    std::int32_t* dev = cache.scratch_ints(host.size());
    KVCAR_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size() * sizeof(std::int32_t),
                                     cudaMemcpyHostToDevice, stream));
    prefill_attention_params p;
    p.q = q;
    p.out = out;
    p.sequences = dev;
    p.query_offsets = dev + batch;
    p.query_positions = dev + 2 * batch + 1;
    p.kv_lengths = dev + 3 * batch + 1;
    p.batch = batch;
    p.total_queries = total;
    p.max_kv_length = max_len;
    p.layer = layer;
    p.n_heads = opt.n_heads;
    p.scale = opt.scale;
    p.causal = opt.causal;
    p.rope = opt.rope;
    p.rope_cfg = opt.rope_cfg;
    prefill_attention(cache.view(), p, ws, stream);
}

}  // namespace kvcar::kernels
