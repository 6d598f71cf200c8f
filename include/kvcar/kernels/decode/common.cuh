// kvcar/kernels/decode/common.cuh — what every decode path shares on the host: the parameters,
// the path names, run-time value -> template dispatch, split planning, argument checks and the
// cutting of large batches into launches.
//
// Errors. Every launcher and policy in kernels/decode/ returns void and throws kvcar::error:
// argument checks (`require`), launch shapes past the hardware's limits (gpu::checked_grid,
// gpu::allow_dynamic_smem) and failed CUDA calls (KVCAR_CUDA_CHECK*) all fail the same way,
// with a message naming the kernel and the value, and before anything is enqueued where the
// host can know. A cudaError_t could not say which grid dimension or which limit it was, and
// the public entry points already threw, so one convention runs from the top to each launch.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/common.cuh needs nvcc"
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/attention_params.hpp"
#include "kvcar/cuda/activations.cuh"
#include "kvcar/rope.hpp"

namespace kvcar::kernels {

namespace detail {

// Run-time value -> compile-time constant. The body is a C++20 templated lambda that sees the
// value as a template argument, `dispatch_head_dim(hd, [&]<int HD>() { ... })`, and the call
// returns false (nothing ran) when the value is not one of the instantiated ones. The body is
// instantiated for every listed value, so a combination a kernel cannot take is excluded inside
// it with `if constexpr`; policies use the same call with a body that only evaluates that
// condition, so supported() and run() cannot disagree about which shapes exist.

/// Calls f.template operator()<V>() for the V of `Values` equal to `value`; false when none is.
template <int... Values, class F>
bool dispatch_int(int value, F&& f) {
    return ((value == Values && (f.template operator()<Values>(), true)) || ...);
}
/// head_dim 64, 128 or 256: the widths whose head vector a warp's lanes split evenly.
template <class F>
bool dispatch_head_dim(int head_dim, F&& f) {
    return dispatch_int<64, 128, 256>(head_dim, static_cast<F&&>(f));
}
/// Query heads per KV head 1, 2, 4 or 8 (MHA and the GQA ratios of common models).
template <class F>
bool dispatch_gqa(int gqa_ratio, F&& f) {
    return dispatch_int<1, 2, 4, 8>(gqa_ratio, static_cast<F&&>(f));
}

/// The softmax scale a launch uses: p.scale, or 1/sqrt(head_dim) when it is 0.
inline float softmax_scale(const decode_attention_params& p, int head_dim) {
    return p.scale == 0.0f ? 1.0f / std::sqrt(float(head_dim)) : p.scale;
}

inline constexpr int min_chunk = 32;  // below this a split costs more than it spreads

/// Splits of `chunk` tokens so that units · splits ≈ target_ctas (a few per multiprocessor: the
/// loads in flight, not the arithmetic, set the speed of decode attention).
struct split_plan {
    int chunk = 0;
    int splits = 0;
};
inline split_plan plan_splits(int units, int max_len, int target_ctas, int max_chunk,
                              int granularity) {
    split_plan plan;
    if (max_len <= 0) return {granularity, 1};
    const int want = std::max(1, (target_ctas + units - 1) / std::max(units, 1));
    int chunk = (max_len + want - 1) / want;
    chunk = (chunk + granularity - 1) / granularity * granularity;
    chunk = std::clamp(chunk, std::min(min_chunk, max_chunk), max_chunk);
    plan.chunk = chunk;
    plan.splits = (max_len + chunk - 1) / chunk;
    return plan;
}

/// Splits that finish soonest when `slots` CTAs run at once: the chunk (a multiple of
/// `granularity`, at most `max_chunk`) that minimizes waves × (chunk + overhead), where a wave is
/// `slots` CTAs and `overhead` is a CTA's fixed cost in token-equivalents (set-up, the partial
/// output it writes, its share of the merge). A last wave that fills few multiprocessors wastes
/// the rest, and a chunk too small pays the overhead for little work. Ties keep the wider chunk
/// (fewer partial rows to merge). `forced_chunk` > 0 (a tuning knob, for sweeps) replaces the
/// choice, rounded up to `granularity` and at most `max_chunk`.
inline split_plan plan_splits_by_waves(int units, int max_len, long slots, int max_chunk,
                                       int granularity, int overhead, int forced_chunk = 0) {
    if (max_len <= 0) return {granularity, 1};
    if (forced_chunk > 0) {
        const int c =
            std::min(max_chunk, (forced_chunk + granularity - 1) / granularity * granularity);
        return {c, (max_len + c - 1) / c};
    }
    split_plan plan{granularity, 1};
    long best = -1;
    const int widest =
        std::min(max_chunk, (max_len + granularity - 1) / granularity * granularity);
    for (int c = widest; c >= granularity; c -= granularity) {
        const int splits = (max_len + c - 1) / c;
        const long waves = (long(std::max(units, 1)) * splits + slots - 1) / std::max(slots, 1L);
        const long cost = waves * (c + overhead);
        if (best < 0 || cost < best) {
            best = cost;
            plan = {c, splits};
        }
    }
    return plan;
}

/// Host-side checks of everything but the device pointers (`pointers`: those too).
inline void validate(const decode_attention_params& p, int n_layers, int n_kv_heads,
                     int head_dim, const char* who, bool pointers = true) {
    const std::string me = who;
    require(p.batch >= 0, me + ": batch " + std::to_string(p.batch) + " is negative");
    require(p.layer >= 0 && p.layer < n_layers, me + ": layer " + std::to_string(p.layer) +
                                                    " is out of range [0, " +
                                                    std::to_string(n_layers) + ")");
    require(p.n_heads > 0 && p.n_heads % n_kv_heads == 0,
            me + ": n_heads " + std::to_string(p.n_heads) +
                " is not a positive multiple of the cache's n_kv_heads " +
                std::to_string(n_kv_heads));
    require(std::isfinite(p.scale) && p.scale >= 0.0f,
            me + ": scale must be finite and not negative (0 picks 1/sqrt(head_dim))");
    require(p.max_kv_length >= 0, me + ": max_kv_length is negative");
    if (p.rope == rope_mode::on_read) validate(p.rope_cfg, head_dim);
    require(is_activation_type(p.q.type) && is_activation_type(p.out.type),
            me + ": q and out must be f32, f16 or bf16 (activation_type)");
    if (pointers && p.batch > 0) {
        require(p.q && p.out && p.sequences && p.kv_lengths,
                me + ": q, out, sequences and kv_lengths must be device pointers");
    }
}

/// Most items one launch takes. The split kernels keep the item on grid y, and the projection
/// and lift kernels a block of items, so a launch of more items than gridDim.y may hold would
/// fail (a prefill of 64 sequences × 1493 tokens is 95,552 items); the entry points cut such a
/// batch into launches of at most this many items, one after another on the stream (they share
/// the workspace, which stream order makes safe).
inline constexpr int max_items_per_launch = int(gpu::max_grid_yz);

/// Items [first, first + count) of p, as a launch of their own: q, out and the per-item arrays
/// move by `first` items; max_kv_length stays a bound.
inline decode_attention_params item_slice(const decode_attention_params& p, int first, int count,
                                          int head_dim) {
    decode_attention_params s = p;
    const std::size_t rows = std::size_t(first) * std::size_t(p.n_heads) * std::size_t(head_dim);
    s.q = p.q.advanced(rows);
    s.out = p.out.advanced(rows);
    s.sequences = p.sequences + first;
    s.kv_lengths = p.kv_lengths + first;
    if (p.q_positions) s.q_positions = p.q_positions + first;
    s.batch = count;
    return s;
}

/// When p has more than max_items_per_launch items, calls run(slice) for consecutive slices of
/// at most that many and returns true; otherwise runs nothing and returns false. Slices are of
/// equal size (a multiple of 4 items, so that q stays 16-byte aligned), the last one smaller.
template <class Run>
bool run_in_item_slices(const decode_attention_params& p, int head_dim, Run&& run) {
    if (p.batch <= max_items_per_launch) return false;
    const int n = (p.batch + max_items_per_launch - 1) / max_items_per_launch;
    int per = (p.batch + n - 1) / n;
    per = std::min((per + 3) / 4 * 4, max_items_per_launch / 4 * 4);
    for (int first = 0; first < p.batch; first += per)
        run(item_slice(p, first, std::min(per, p.batch - first), head_dim));
    return true;
}

}  // namespace detail

}  // namespace kvcar::kernels
