// kvcar/kernels/append.cuh — encode new tokens' K/V and write their records into a device cache.
//
// One launch per layer per step appends a batch of sequences at once: a decode step (one token
// each) or a prefill chunk (many tokens each). Groups whose slot this layer does not own (reused
// from an earlier layer) are skipped, as kv_cache::append does. Two kernels:
//   affine tiles  linear codecs, plain or quantized (append/affine_tiles.cuh): a block computes
//                 the latents of a tile of tokens, reading the projection once per tile;
//   warps         every other codec: one warp encodes one record — one (token, group, K/V) —
//                 through device::warp_encode. Records of one token are written by different
//                 warps, records of different tokens land in different page positions: no two
//                 warps write the same bytes.
// Both write the bytes the host codec writes for the same floats.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/append.cuh needs nvcc"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/attention_params.hpp"
#include "kvcar/common.hpp"
#include "kvcar/cuda/activations.cuh"
#include "kvcar/cuda/device_kv_cache.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/encode.cuh"
#include "kvcar/kernels/append/affine_tiles.cuh"

namespace kvcar::kernels {

namespace detail {

inline constexpr int append_warps = 4;

template <class Codec>
__global__ void __launch_bounds__(append_warps * 32)
    append_kernel(device::cache_view<Codec> cache, append_params p, int latent_floats,
                  int scratch_per_warp) {
    // Per warp: the codec's scratch (latent_floats), then, for f16 / bf16 input, the group
    // widened to f32 (group_width floats): warp_encode reads x more than once (a projection
    // reads every element per latent column), so it is widened once, not on every read.
    extern __shared__ float scratch[];
    const int warp = int(threadIdx.x) >> 5;
    const long long record = (long long)blockIdx.x * append_warps + warp;
    const int per_token = cache.groups_per_layer * kv_kind_count;
    const long long row_ll = record / per_token;
    if (row_ll >= p.total_tokens) return;  // whole warps leave together
    const int row = int(row_ll);
    const int rest = int(record - row_ll * per_token);
    const int group = rest / kv_kind_count;
    const kv_kind kind = kv_kind(rest % kv_kind_count);
    const int slot = cache.write_slots[cache.logical_index(p.layer, group, kind)];
    if (slot < 0) return;  // reused: this layer stores nothing for the group
    const int lo = append_item_of(p, row);
    const int position = p.positions[lo] + (row - p.token_offsets[lo]);
    const input_activations src = kind == kv_kind::key ? p.k : p.v;
    const std::size_t first = std::size_t(row) * cache.token_width() +
                              std::size_t(group) * cache.group_width();
    float* own = scratch + std::size_t(warp) * scratch_per_warp;
    const float* x;
    if (src.type == activation_type::f32) {
        x = static_cast<const float*>(src.data) + first;
    } else {
        float* widened = own + latent_floats;
        for (int i = int(threadIdx.x & 31); i < cache.group_width(); i += 32)
            widened[i] = gpu::load(src, first + std::size_t(i));
        __syncwarp();
        x = widened;
    }
    std::byte* out = cache.slots[slot].record(p.sequences[lo], position);
    device::warp_encode(cache.codecs[slot], x, out, own);
}

/// Enqueues the warp-per-record kernel (every codec).
template <class Codec>
void launch_append_warps(const device::cache_view<Codec>& cache, const append_params& p,
                         int max_latent_width, cudaStream_t stream) {
    const long long records =
        (long long)p.total_tokens * cache.groups_per_layer * kv_kind_count;
    const long long blocks = (records + detail::append_warps - 1) / detail::append_warps;
    const int latent = std::max(max_latent_width, 1);
    const bool widen = p.k.type != activation_type::f32 || p.v.type != activation_type::f32;
    const int per_warp = latent + (widen ? cache.group_width() : 0);
    const std::size_t smem = sizeof(float) * std::size_t(per_warp) * detail::append_warps;
    auto kernel = detail::append_kernel<Codec>;
    if (smem > gpu::default_dynamic_smem)  // the limit is looked up only where it matters
        gpu::allow_dynamic_smem(kernel, smem, gpu::max_dynamic_smem_optin(), "append_kernel");
    kernel<<<gpu::checked_grid(blocks, 1, 1, "append_kernel"), detail::append_warps * 32, smem,
             stream>>>(cache, p, latent, per_warp);
    KVCAR_CUDA_CHECK_LAUNCH("append_kernel");
}

}  // namespace detail

/// Enqueues the encode + write of p.total_tokens rows on `stream`. The pages for every written
/// position must already be in the block table (device_kv_cache::prepare_append does that).
/// `max_latent_width`: the widest latent of the view's codecs (sizes the kernels' scratch).
template <kv_codec Codec>
void append(const device::cache_view<Codec>& cache, const append_params& p, int max_latent_width,
            cudaStream_t stream = nullptr) {
    require(p.batch >= 0 && p.total_tokens >= 0, "append: batch and total_tokens must not be negative");
    require(p.layer >= 0 && p.layer < cache.n_layers,
            "append: layer " + std::to_string(p.layer) + " is out of range [0, " +
                std::to_string(cache.n_layers) + ")");
    if (p.batch == 0 || p.total_tokens == 0) return;
    require(p.k && p.v && p.token_offsets && p.sequences && p.positions,
            "append: k, v, token_offsets, sequences and positions must be device pointers");
    require(is_activation_type(p.k.type) && is_activation_type(p.v.type),
            "append: k and v must be f32, f16 or bf16 (activation_type)");
    if constexpr (detail::affine_append_codec<Codec>) {
        if (detail::append_affine_tiles_supported(cache, max_latent_width)) {
            detail::launch_append_affine_tiles(cache, p, max_latent_width, stream);
            return;
        }
    }
    detail::launch_append_warps(cache, p, max_latent_width, stream);
}

/// Appends counts[i] tokens to sequences[i] in `layer` of a device cache: k and v are device
/// [Σ counts][n_kv_heads * head_dim] arrays of f32, f16 or bf16 (a typed pointer converts), the
/// items' rows one after another. Plans the pages (all or nothing; a host-side error changes
/// nothing), then enqueues the encode on `stream`.
template <gpu::uploadable_codec Codec, kv_layout Layout>
void append(gpu::device_kv_cache<Codec, Layout>& cache, int layer, std::span<const int> sequences,
            std::span<const int> counts, input_activations k, input_activations v,
            cudaStream_t stream = nullptr) {
    const std::vector<std::int32_t> positions = cache.prepare_append(layer, sequences, counts, stream);
    const int batch = int(sequences.size());
    std::vector<std::int32_t> host(3 * std::size_t(batch) + 1);
    int total = 0;
    for (int b = 0; b < batch; ++b) {
        host[std::size_t(b)] = total;
        total += counts[std::size_t(b)];
    }
    host[std::size_t(batch)] = total;
    for (int b = 0; b < batch; ++b) {
        host[std::size_t(batch + 1 + b)] = sequences[std::size_t(b)];
        host[std::size_t(2 * batch + 1 + b)] = positions[std::size_t(b)];
    }
    if (total == 0) return;
    std::int32_t* dev = cache.scratch_ints(host.size());
    KVCAR_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size() * sizeof(std::int32_t),
                                     cudaMemcpyHostToDevice, stream));
    append_params p;
    p.k = k;
    p.v = v;
    p.token_offsets = dev;
    p.sequences = dev + batch + 1;
    p.positions = dev + 2 * batch + 1;
    p.batch = batch;
    p.total_tokens = total;
    p.layer = layer;
    append(cache.view(), p, cache.max_latent_width(), stream);
}

}  // namespace kvcar::kernels
