// kvcar/kernels/decode_attention.cuh — attention of one query token per item over a kvcar
// cache: split-KV ("flash-decoding") over pages, online softmax, a combine step; one entry point
// for every codec. This is the public header: it brings in every decode path.
//
// Work split. Item b (a query token of sequence sequences[b] that sees kv_lengths[b] tokens) is
// cut into splits of `chunk` tokens; a CTA handles one (split, item, unit) and writes an
// unnormalized partial output with its score maximum m and sum of exponentials l. The combine
// kernel merges the splits of each (item, head): o = Σ_s e^(m_s − M) acc_s / Σ_s e^(m_s − M) l_s.
// The number of splits is chosen so that several CTAs per multiprocessor exist even at batch 1:
// decode attention reads every cached byte once, and only a full GPU reaches copy bandwidth.
//
// Decode paths. Each way of reading the cache is a policy in kernels/decode/ (as FlashInfer's
// attention variants are): a struct with
//     path                  the decode_path value recorded in attention_workspace::last_path
//     accepts<Codec>        compile time: the codec types it reads (others never instantiate it)
//     supported(view, p, ws) run time: whether this launch's shape qualifies (enqueues nothing)
//     run(view, p, ws, s)   enqueues the launches; throws kvcar::error (decode/common.cuh)
// decode_attention walks decode_policies in order and runs the first that is supported:
//   direct_tensor_cores       f16 / int8 identity heads, head_dim 64/128, GQA 1–8 (direct_mma)
//   direct                    identity / quantized identity heads on CUDA cores (direct)
//   latent_tensor_cores       whole-layer f16/int8/fp8 latents, MLA-like (latent_tensor_cores)
//   latent                    affine latents on CUDA cores, in latent space (latent)
//   autoencoder_tensor_cores  f16 autoencoder latents in the decoder's hidden space
//   decoded                   everything else: tiles decoded into shared memory (decoded)
// Tensor-core variants come before the CUDA-core kernels that read the same codecs, and decoded
// accepts every launch, so the walk always ends in a path. The shared pieces are in
// decode/common.cuh (parameters, dispatch, split planning), decode/workspace.cuh and
// decode/combine.cuh (the merge).
//
// Preconditions (checked on the host where they can be): kv_lengths[b] <= the sequence's length
// in `layer` (and in the layers its reused slots belong to); n_heads is a multiple of n_kv_heads;
// q and out are [batch][n_heads][head_dim] floats. kv_lengths[b] == 0 gives a zero output.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode_attention.cuh needs nvcc"
#endif

#include <algorithm>
#include <concepts>
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
#include "kvcar/kernels/decode/autoencoder_tensor_cores.cuh"
#include "kvcar/kernels/decode/combine.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/decoded.cuh"
#include "kvcar/kernels/decode/direct.cuh"
#include "kvcar/kernels/decode/direct_mma.cuh"
#include "kvcar/kernels/decode/latent.cuh"
#include "kvcar/kernels/decode/latent_tensor_cores.cuh"
#include "kvcar/kernels/decode/workspace.cuh"
#include "kvcar/attention_params.hpp"

namespace kvcar::kernels {

namespace detail {

/// What decode_attention asks of a decode path (see the file comment). `accepts` is checked
/// first, so supported() and run() are only instantiated for codecs the path reads.
template <class P, class Codec>
concept decode_policy = requires(const device::cache_view<Codec>& cache,
                                 const decode_attention_params& p, attention_workspace& ws,
                                 cudaStream_t stream) {
    { P::path } -> std::convertible_to<decode_path>;
    { P::template accepts<Codec> } -> std::convertible_to<bool>;
    { P::supported(cache, p, ws) } -> std::same_as<bool>;
    P::run(cache, p, ws, stream);
};

/// An ordered list of decode paths.
template <class... Policies>
struct policy_list {};

/// The decode paths in the order decode_attention tries them.
using decode_policies =
    policy_list<direct_tensor_cores_policy, direct_policy, latent_tensor_cores_policy,
                latent_policy, autoencoder_tensor_cores_policy, decoded_policy>;

/// Runs `Policy` and records its path when it reads Codec and supports this launch.
template <class Policy, class Codec>
bool run_if_supported(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                      attention_workspace& ws, cudaStream_t stream) {
    if constexpr (!Policy::template accepts<Codec>) {
        return false;
    } else {
        static_assert(decode_policy<Policy, Codec>);
        if (!Policy::supported(cache, p, ws)) return false;
        Policy::run(cache, p, ws, stream);
        ws.last_path = Policy::path;
        return true;
    }
}

/// Runs the first policy of the list that reads Codec and supports the launch (|| stops there).
template <class Codec, class... Policies>
void run_first_supported(policy_list<Policies...>, const device::cache_view<Codec>& cache,
                         const decode_attention_params& p, attention_workspace& ws,
                         cudaStream_t stream) {
    const bool ran = (run_if_supported<Policies>(cache, p, ws, stream) || ...);
    require(ran, "decode_attention: no decode path took the launch");  // decoded takes all
}

}  // namespace detail

/// Decode attention over a cache view: out[b][h] = softmax(scale · q[b][h] · K) V over the first
/// kv_lengths[b] tokens of sequence sequences[b] in `layer`, for every codec. Enqueued on
/// `stream`; host-side argument errors throw kvcar::error before anything is enqueued.
/// ws.last_path names the path that ran (none for an empty batch).
template <kv_codec Codec>
void decode_attention(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                      attention_workspace& ws, cudaStream_t stream = nullptr) {
    ws.use_stream(stream);  // the workspace grows in this stream's order
    detail::validate(p, cache.n_layers, cache.n_kv_heads, cache.head_dim, "decode_attention");
    if (detail::run_in_item_slices(p, cache.head_dim, [&](const decode_attention_params& slice) {
            decode_attention(cache, slice, ws, stream);
        }))
        return;
    ws.last_path = decode_path::none;
    if (p.batch == 0) return;
    detail::run_first_supported(detail::decode_policies{}, cache, p, ws, stream);
}

namespace detail {

/// The shape of a decode launch from a model's attention options: batch, context bound, heads,
/// scale and RoPE; the pointers, layer and lengths are the caller's.
inline decode_attention_params decode_shape(int batch, int max_kv_length,
                                            const attention_params& opt) {
    decode_attention_params p;
    p.batch = batch;
    p.max_kv_length = max_kv_length;
    p.n_heads = opt.n_heads;
    p.scale = opt.scale;
    p.rope = opt.rope;
    p.rope_cfg = opt.rope_cfg;
    return p;
}

/// The launch parameters of one decode layer over a device cache's sequences: their lengths in
/// `layer` read on the host (throws for a sequence that is not live), uploaded with the sequence
/// ids into ws.ints in `stream`'s order. Shared by decode_attention and run_decode_attention.
template <gpu::uploadable_codec Codec, kv_layout Layout>
decode_attention_params device_cache_step(const gpu::device_kv_cache<Codec, Layout>& cache,
                                          int layer, std::span<const int> sequences,
                                          input_activations q, output_activations out,
                                          const attention_params& opt, attention_workspace& ws,
                                          cudaStream_t stream, const char* who) {
    ws.use_stream(stream);  // ws.ints below grows in this stream's order
    const int batch = int(sequences.size());
    require(layer >= 0 && layer < cache.geometry().n_layers,
            std::string(who) + ": layer " + std::to_string(layer) + " is out of range [0, " +
                std::to_string(cache.geometry().n_layers) + ")");
    std::vector<std::int32_t> host(2 * std::size_t(batch));
    int max_len = 0;
    for (int b = 0; b < batch; ++b) {
        host[std::size_t(b)] = sequences[std::size_t(b)];
        const int len = cache.length(sequences[std::size_t(b)], layer);  // throws if not live
        host[std::size_t(batch + b)] = len;
        max_len = std::max(max_len, len);
    }
    decode_attention_params p = decode_shape(batch, max_len, opt);
    p.q = q;
    p.out = out;
    p.layer = layer;
    validate(p, cache.geometry().n_layers, cache.geometry().n_kv_heads,
             cache.geometry().head_dim, who, false);
    if (batch == 0) return p;
    require(q && out, std::string(who) + ": q and out must be device pointers");
    std::int32_t* dev = ws.ints(host.size());
    KVCAR_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size() * sizeof(std::int32_t),
                                     cudaMemcpyHostToDevice, stream));
    p.sequences = dev;
    p.kv_lengths = dev + batch;
    return p;
}

}  // namespace detail

/// Decode step for the sequences of a device cache: one query per sequence at its last cached
/// position of `layer` (append this step's K/V first, as a model does). q, out: device
/// [sequences.size()][opt.n_heads][head_dim], each float, __half or __nv_bfloat16. A sequence
/// of length 0 gets zeros.
template <gpu::uploadable_codec Codec, kv_layout Layout>
void decode_attention(const gpu::device_kv_cache<Codec, Layout>& cache, int layer,
                      std::span<const int> sequences, input_activations q, output_activations out,
                      const attention_params& opt, attention_workspace& ws,
                      cudaStream_t stream = nullptr) {
    const decode_attention_params p = detail::device_cache_step(
        cache, layer, sequences, q, out, opt, ws, stream, "decode_attention");
    if (p.batch == 0) return;
    decode_attention(cache.view(), p, ws, stream);
}

}  // namespace kvcar::kernels
