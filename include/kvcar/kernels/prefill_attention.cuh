// kvcar/kernels/prefill_attention.cuh — causal attention of many query tokens per sequence (a
// prefill chunk) over a kvcar cache.
//
// Two paths. The per-query path makes each query token one item of decode attention that sees
// the tokens up to its own position (kv_length = position + 1), so every codec, layout, RoPE mode
// and the split-KV machinery are shared with decode_attention; it reads each key and value once
// per query, so its cost grows with n_queries × context. The tiled path (prefill/dense_tiles.cuh)
// decodes a chunk's context once to dense fp16 and attends tiles of 64 queries on tensor cores:
// the device-cache form below sends chunks of 16 queries or more there. The params form takes
// the per-query path.
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
#include "kvcar/cuda/activations.cuh"
#include "kvcar/cuda/device_kv_cache.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/kernels/decode_attention.cuh"
#include "kvcar/kernels/prefill/dense_tiles.cuh"
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

namespace detail {

/// Copies rows between a batch's q/out and a compact staging array of the same element type
/// (the rows are moved, not converted: `width_units` 2-byte units a row, which fits f32, f16 and
/// bf16 alike). Compact row r of item b is batch row source_rows[b] + (r − offsets[b]);
/// `gather` copies batch → compact (dst compact), otherwise compact → batch (src compact). One
/// block per compact row.
static __global__ void stage_rows_kernel(std::uint16_t* dst, const std::uint16_t* src,
                                         const std::int32_t* offsets,
                                         const std::int32_t* source_rows, int n_items, int rows,
                                         int width_units, bool gather) {
    const int r = int(blockIdx.x);
    if (r >= rows) return;
    int lo = 0, hi = n_items - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= r) lo = mid; else hi = mid - 1;
    }
    const std::size_t batch_row = std::size_t(source_rows[lo] + (r - offsets[lo]));
    std::uint16_t* d = dst + (gather ? std::size_t(r) : batch_row) * width_units;
    const std::uint16_t* s = src + (gather ? batch_row : std::size_t(r)) * width_units;
    for (int i = int(threadIdx.x); i < width_units; i += int(blockDim.x)) d[i] = s[i];
}

/// The tiled path (prefill/dense_tiles.cuh) for chunks `chunks` of a batch: items are built
/// here, cut into launches whose dense K/V stay within a budget, and uploaded to ws.ints.
template <class Codec>
void prefill_tiled_chunks(const device::cache_view<Codec>& view, int layer,
                          const std::vector<prefill_tile_item>& chunks, input_activations q,
                          output_activations out, const attention_params& opt,
                          attention_workspace& ws, cudaStream_t stream) {
    // 256 MiB of dense fp16 K/V per launch (more when one context alone needs it).
    const std::size_t row_bytes = std::size_t(view.n_kv_heads) * view.head_dim * 2 * sizeof(__half);
    const std::size_t budget_rows = (std::size_t(256) << 20) / row_bytes;
    std::size_t first = 0;
    while (first < chunks.size()) {
        std::vector<prefill_tile_item> items;
        int rows = 0, kv_tiles = 0, q_tiles = 0;
        for (std::size_t c = first; c < chunks.size(); ++c) {
            prefill_tile_item it = chunks[c];
            if (!items.empty() && std::size_t(rows + it.kv_length) > budget_rows) break;
            it.dense_row = rows;
            it.first_kv_tile = kv_tiles;
            it.first_q_tile = q_tiles;
            rows += it.kv_length;
            kv_tiles += (it.kv_length + gather_tile - 1) / gather_tile;
            q_tiles += (it.n_queries + prefill_q_tile - 1) / prefill_q_tile;
            items.push_back(it);
        }
        ws.use_stream(stream);
        auto* dev = reinterpret_cast<prefill_tile_item*>(
            ws.ints(items.size() * (sizeof(prefill_tile_item) / sizeof(std::int32_t))));
        KVCAR_CUDA_CHECK(cudaMemcpyAsync(dev, items.data(), items.size() * sizeof(prefill_tile_item),
                                         cudaMemcpyHostToDevice, stream));
        launch_prefill_tiles(view, dev, int(items.size()), kv_tiles, q_tiles, rows, layer, q, out,
                             opt, ws, stream);
        first += items.size();
    }
}

}  // namespace detail

/// Prefill for the sequences of a device cache: item b's query_counts[b] queries are its last
/// query_counts[b] cached tokens of `layer` (the chunk just appended), in order; q and out are
/// device [Σ query_counts][opt.n_heads][head_dim] arrays of f32, f16 or bf16 (a typed pointer
/// converts). opt.causal picks causal or full attention.
///
/// Two paths share a batch. A chunk of at least 16 queries (ws.tune.prefill_tiles_min_queries)
/// takes the tiled path (prefill/dense_tiles.cuh: its context decoded once, queries attended in
/// tiles of 64 on tensor cores); the others, decode steps among them, are items of decode
/// attention (their rows staged into a compact array when the batch holds both kinds).
/// ws.last_prefill_tiled tells how many chunks took the tiled path.
template <gpu::uploadable_codec Codec, kv_layout Layout>
void prefill_attention(const gpu::device_kv_cache<Codec, Layout>& cache, int layer,
                       std::span<const int> sequences, std::span<const int> query_counts,
                       input_activations q, output_activations out,
                       const attention_params& opt, attention_workspace& ws,
                       cudaStream_t stream = nullptr) {
    require(sequences.size() == query_counts.size(),
            "prefill_attention: " + std::to_string(sequences.size()) + " sequences but " +
                std::to_string(query_counts.size()) + " query counts");
    require(layer >= 0 && layer < cache.geometry().n_layers,
            "prefill_attention: layer " + std::to_string(layer) + " is out of range [0, " +
                std::to_string(cache.geometry().n_layers) + ")");
    const int batch = int(sequences.size());
    const auto view = cache.view();
    require(is_activation_type(q.type) && is_activation_type(out.type),
            "prefill_attention: q and out must be f32, f16 or bf16 (activation_type)");
    // The tiled path loads q 4 elements and stores out 2 elements at a time.
    const bool q_aligned = aligned4(q) && aligned2(out);
    // Per-query items: [sequences | offsets (n + 1) | positions | lengths | batch rows].
    std::vector<std::int32_t> seqs, offsets, positions, lengths, rows;
    std::vector<detail::prefill_tile_item> tiled;
    int per_query_total = 0, max_len = 0, row = 0;
    for (int b = 0; b < batch; ++b) {
        const int seq = sequences[std::size_t(b)], count = query_counts[std::size_t(b)];
        const int len = cache.length(seq, layer);  // throws if not live
        require(count >= 0 && count <= len,
                "prefill_attention: sequence " + std::to_string(seq) + " has " +
                    std::to_string(len) + " tokens in layer " + std::to_string(layer) +
                    ", fewer than its " + std::to_string(count) + " queries");
        if (count > 0 && q_aligned && detail::prefill_tiles_supported(view, count, ws)) {
            detail::prefill_tile_item it;
            it.sequence = seq;
            it.kv_length = len;
            it.first_position = len - count;
            it.query_row = row;
            it.n_queries = count;
            tiled.push_back(it);
        } else {
            seqs.push_back(seq);
            offsets.push_back(per_query_total);
            positions.push_back(len - count);
            lengths.push_back(len);
            rows.push_back(row);
            per_query_total += count;
            max_len = std::max(max_len, len);
        }
        row += count;
    }
    ws.last_prefill_tiled = int(tiled.size());
    if (!tiled.empty()) {
        // The checks decode_attention makes, before any launch.
        decode_attention_params shape = detail::decode_shape(row, max_len, opt);
        shape.layer = layer;
        detail::validate(shape, view.n_layers, view.n_kv_heads, view.head_dim,
                         "prefill_attention", false);
        require(q && out, "prefill_attention: q and out must be device pointers");
    }
    if (per_query_total > 0) {
        const int n = int(seqs.size());
        offsets.push_back(per_query_total);
        std::vector<std::int32_t> host;
        for (const auto* part : {&seqs, &offsets, &positions, &lengths, &rows})
            host.insert(host.end(), part->begin(), part->end());
        // The expansion writes ws.ints, so the descriptors live in the cache's own scratch.
        std::int32_t* dev = cache.scratch_ints(host.size());
        KVCAR_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size() * sizeof(std::int32_t),
                                         cudaMemcpyHostToDevice, stream));
        prefill_attention_params p;
        p.q = q;
        p.out = out;
        p.sequences = dev;
        p.query_offsets = dev + n;
        p.query_positions = dev + 2 * n + 1;
        p.kv_lengths = dev + 3 * n + 1;
        p.batch = n;
        p.total_queries = per_query_total;
        p.max_kv_length = max_len;
        p.layer = layer;
        p.n_heads = opt.n_heads;
        p.scale = opt.scale;
        p.causal = opt.causal;
        p.rope = opt.rope;
        p.rope_cfg = opt.rope_cfg;
        if (tiled.empty()) {
            prefill_attention(view, p, ws, stream);
        } else {
            // The per-query rows are scattered among the tiled ones: stage them compactly.
            require(q && out, "prefill_attention: q and out must be device pointers");
            // The staged rows keep q's and out's types, in 2-byte units (f32 rows are two a
            // value); staged_rows counts floats, so a row of either type takes `width` of them.
            const int width = opt.n_heads * view.head_dim;
            const int q_units = width * int(size_of(q.type) / 2);
            const int out_units = width * int(size_of(out.type) / 2);
            ws.use_stream(stream);
            float* staged = ws.staged_rows(2 * std::size_t(per_query_total) * width);
            float* staged_out = staged + std::size_t(per_query_total) * width;
            const std::int32_t* src_rows = dev + 4 * n + 1;
            detail::stage_rows_kernel<<<unsigned(per_query_total), 128, 0, stream>>>(
                reinterpret_cast<std::uint16_t*>(staged), static_cast<const std::uint16_t*>(q.data),
                p.query_offsets, src_rows, n, per_query_total, q_units, true);
            KVCAR_CUDA_CHECK_LAUNCH("stage_rows_kernel");
            p.q = input_activations(staged, q.type);
            p.out = output_activations(staged_out, out.type);
            prefill_attention(view, p, ws, stream);
            detail::stage_rows_kernel<<<unsigned(per_query_total), 128, 0, stream>>>(
                static_cast<std::uint16_t*>(out.data),
                reinterpret_cast<const std::uint16_t*>(staged_out), p.query_offsets, src_rows, n,
                per_query_total, out_units, false);
            KVCAR_CUDA_CHECK_LAUNCH("stage_rows_kernel");
        }
    }
    if (!tiled.empty()) detail::prefill_tiled_chunks(view, layer, tiled, q, out, opt, ws, stream);
}

}  // namespace kvcar::kernels
