// kvcar/kernels/decode_plan.cuh — decode attention in two steps, plan and run, as FlashInfer's
// batch decode wrapper has them: plan once per batch shape, then run every layer.
//
// decode_attention(view, p, ws, stream) decides everything on each call: it walks the decode
// paths asking each whether it takes the launch, plans the split, and grows the workspace when
// the launch needs more. A model calls it once per layer with the same batch, so the choices are
// the same every time, and a growth inside a CUDA graph capture is an error. The split:
//
//     decode_plan plan = plan_decode_attention(view, shape, ws, stream);   // once per step shape
//     for (int layer = 0; layer < n_layers; ++layer)
//         run_decode_attention(plan, view, params_of(layer), ws, stream);  // no choices, no growth
//
// The plan records which path each layer takes and reserves the workspace all of them need.
// It finds the sizes by running the layers' decode_attention with the workspace in sizing mode
// inside a stream capture that is thrown away (attention_workspace::begin_sizing): the sizes come
// from the code that launches, so plan and run cannot disagree. run_decode_attention then calls
// the recorded path directly and never allocates, so a step of runs can be captured in a graph.
//
// A plan holds for launches of its batch and head count and of at most its max_kv_length over
// the same cache geometry (checked); the device arrays (q, out, sequences, kv_lengths) may change
// between runs. Plan again when the batch or the longest context grows.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode_plan.cuh needs nvcc"
#endif

#include <span>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/attention_params.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/kernels/decode_attention.cuh"

namespace kvcar::kernels {

/// What plan_decode_attention decided for one batch shape (see the file comment).
struct decode_plan {
    int batch = 0;          ///< items of every run
    int n_heads = 0;        ///< query heads of every run
    int max_kv_length = 0;  ///< longest context a run may have
    int n_layers = 0;       ///< layers of the cache planned for
    int n_kv_heads = 0;     ///< its KV heads per layer
    int head_dim = 0;       ///< its head width
    std::vector<decode_path> paths;                  ///< [n_layers]: the path each layer takes
    // No activation types: every path reads them from the run's parameters, so one plan serves
    // f32, f16 and bf16 q and out alike (the tensor-core direct path's alignment is checked at
    // each run).
};

namespace detail {

/// Runs the policy of `path` (the one the plan recorded) when it reads Codec; false otherwise.
template <class Codec, class... Policies>
bool run_planned_path(policy_list<Policies...>, decode_path path,
                      const device::cache_view<Codec>& cache, const decode_attention_params& p,
                      attention_workspace& ws, cudaStream_t stream) {
    const auto try_one = [&]<class Policy>() {
        if constexpr (!Policy::template accepts<Codec>) {
            return false;
        } else {
            if (Policy::path != path) return false;
            require(Policy::supported(cache, p, ws),
                    std::string("run_decode_attention: the planned path ") + to_string(path) +
                        " does not take layer " + std::to_string(p.layer) +
                        " of this launch; plan again for its shape");
            Policy::run(cache, p, ws, stream);
            ws.last_path = path;
            return true;
        }
    };
    return (try_one.template operator()<Policies>() || ...);
}

}  // namespace detail

/// Plans decode attention for launches shaped like `shape` (its batch, n_heads, max_kv_length,
/// scale and rope; its pointers are not read) over every layer of `cache`: records each layer's
/// path and grows `ws` in `stream`'s order to what every layer needs. Throws kvcar::error for a
/// shape decode_attention would refuse. Call it outside any graph capture.
template <kv_codec Codec>
decode_plan plan_decode_attention(const device::cache_view<Codec>& cache,
                                  const decode_attention_params& shape, attention_workspace& ws,
                                  cudaStream_t stream = nullptr) {
    detail::validate(shape, cache.n_layers, cache.n_kv_heads, cache.head_dim,
                     "plan_decode_attention", false);
    decode_plan plan{shape.batch, shape.n_heads, shape.max_kv_length, cache.n_layers,
                     cache.n_kv_heads, cache.head_dim, {}};
    plan.paths.assign(std::size_t(cache.n_layers), decode_path::none);
    if (shape.batch == 0) return plan;
    // Placeholder device pointers: the captured launches are never run (see the file comment).
    decode_attention_params p = shape;
    const auto placeholder = reinterpret_cast<const std::int32_t*>(std::uintptr_t(256));
    p.q = input_activations(placeholder, shape.q.type);
    p.out = output_activations(reinterpret_cast<void*>(std::uintptr_t(256)), shape.out.type);
    p.sequences = placeholder;
    p.kv_lengths = placeholder;
    if (shape.q_positions) p.q_positions = placeholder;

    cudaStream_t side = nullptr;
    KVCAR_CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    ws.begin_sizing();
    const decode_path previous = ws.last_path;
    try {
        for (int layer = 0; layer < cache.n_layers; ++layer) {
            p.layer = layer;
            KVCAR_CUDA_CHECK(cudaStreamBeginCapture(side, cudaStreamCaptureModeThreadLocal));
            cudaGraph_t graph = nullptr;
            try {
                decode_attention(cache, p, ws, side);
            } catch (...) {
                cudaStreamEndCapture(side, &graph);
                if (graph) cudaGraphDestroy(graph);
                throw;
            }
            KVCAR_CUDA_CHECK(cudaStreamEndCapture(side, &graph));
            KVCAR_CUDA_CHECK(cudaGraphDestroy(graph));
            plan.paths[std::size_t(layer)] = ws.last_path;
        }
    } catch (...) {
        ws.end_sizing(stream);
        ws.last_path = previous;
        cudaStreamDestroy(side);
        throw;
    }
    KVCAR_CUDA_CHECK(cudaStreamDestroy(side));
    ws.end_sizing(stream);
    ws.last_path = previous;
    return plan;
}

/// Runs one layer of a planned decode step: the path the plan recorded for p.layer, with no
/// walk over the paths and no workspace growth. p must match the plan's batch and n_heads and
/// have max_kv_length <= the plan's over a cache of the planned geometry (kvcar::error otherwise,
/// before anything is enqueued). Safe inside a CUDA graph capture.
template <kv_codec Codec>
void run_decode_attention(const decode_plan& plan, const device::cache_view<Codec>& cache,
                          const decode_attention_params& p, attention_workspace& ws,
                          cudaStream_t stream = nullptr) {
    ws.use_stream(stream);
    detail::validate(p, cache.n_layers, cache.n_kv_heads, cache.head_dim, "run_decode_attention");
    require(cache.n_layers == plan.n_layers && cache.n_kv_heads == plan.n_kv_heads &&
                cache.head_dim == plan.head_dim,
            "run_decode_attention: the cache's geometry (" + std::to_string(cache.n_layers) +
                " layers, " + std::to_string(cache.n_kv_heads) + " KV heads of " +
                std::to_string(cache.head_dim) + ") is not the planned one (" +
                std::to_string(plan.n_layers) + ", " + std::to_string(plan.n_kv_heads) + ", " +
                std::to_string(plan.head_dim) + ")");
    require(p.batch == plan.batch && p.n_heads == plan.n_heads &&
                p.max_kv_length <= plan.max_kv_length,
            "run_decode_attention: batch " + std::to_string(p.batch) + ", " +
                std::to_string(p.n_heads) + " heads and max_kv_length " +
                std::to_string(p.max_kv_length) + " do not fit the plan (batch " +
                std::to_string(plan.batch) + ", " + std::to_string(plan.n_heads) +
                " heads, max_kv_length <= " + std::to_string(plan.max_kv_length) +
                "); plan again");
    ws.last_path = decode_path::none;
    if (p.batch == 0) return;
    const decode_path path = plan.paths[std::size_t(p.layer)];
    // The tensor-core direct path reads q 4 elements at a time; the plan saw an aligned q.
    require(path != decode_path::direct_tensor_cores || aligned4(p.q),
            "run_decode_attention: q is not aligned to 4 elements, as the planned path needs");
    const auto run_slice = [&](const decode_attention_params& slice) {
        const bool ran =
            detail::run_planned_path(detail::decode_policies{}, path, cache, slice, ws, stream);
        require(ran, std::string("run_decode_attention: the planned path ") + to_string(path) +
                         " does not read this codec; was the plan made for another cache?");
    };
    if (!detail::run_in_item_slices(p, cache.head_dim, run_slice)) run_slice(p);
}

/// plan_decode_attention for the decode steps of a device cache's sequences, as a model runs
/// them: `batch` sequences whose contexts stay within `max_kv_length` tokens. Plan for the
/// longest context the steps may reach (the cache's capacity, say), so that only a new batch
/// size needs a new plan.
template <gpu::uploadable_codec Codec, kv_layout Layout>
decode_plan plan_decode_attention(const gpu::device_kv_cache<Codec, Layout>& cache, int batch,
                                  int max_kv_length, const attention_params& opt,
                                  attention_workspace& ws, cudaStream_t stream = nullptr) {
    return plan_decode_attention(cache.view(), detail::decode_shape(batch, max_kv_length, opt), ws,
                                 stream);
}

/// One layer of a planned decode step over a device cache's sequences (decode_attention's
/// arguments, plus the plan): their lengths are read and uploaded as decode_attention does, then
/// the planned path runs.
template <gpu::uploadable_codec Codec, kv_layout Layout>
void run_decode_attention(const decode_plan& plan, const gpu::device_kv_cache<Codec, Layout>& cache,
                          int layer, std::span<const int> sequences, input_activations q,
                          output_activations out, const attention_params& opt,
                          attention_workspace& ws, cudaStream_t stream = nullptr) {
    const decode_attention_params p = detail::device_cache_step(
        cache, layer, sequences, q, out, opt, ws, stream, "run_decode_attention");
    run_decode_attention(plan, cache.view(), p, ws, stream);
}

}  // namespace kvcar::kernels
