// kvcar/kernels/decode/autoencoder_tensor_cores.cuh — the `autoencoder_tensor_cores` path:
// decode attention over the KV-CAR autoencoder's latents on tensor cores, with the attention
// done in the decoder's hidden space. The split kernel is in decode/autoencoder_kernels.cuh; this
// file has the projection and lift around it, the host plan, autoencoder_decode_attention() and
// the decode path policy.
//
// The math. The decoder is x̂ = W2ᵀ a + b2 with a = lrelu(W1 z + b1) (h hidden units, W2ᵀ the
// transposed second layer [h][D]). Only the first layer is nonlinear, so for query head q of a
// KV head whose columns of the group are c (hd wide), with q̃ = W2ᵀ[:, c] q (h wide) and
// bias = q · b2[c]:
//     q · x̂_t[c]            = q̃ · a_t + bias                      (scores)
//     Σ_t p_t x̂_t[c]        = W2ᵀ[:, c]ᵀ (Σ_t p_t a_t) + b2[c]     (Σ_t p_t = 1 after the merge)
// so the second layer never runs per token: queries are projected into hidden space once per
// step, the split kernel attends over the hidden activations a_t of the cached tokens, and the
// merged Σ p a is lifted back through W2 once per (item, head). Per token and stream that leaves
// the first layer (d·h multiply-adds) instead of both (d·h + h·D), and the hidden activations are
// shared by every query head of the group (a whole-layer group serves all H heads, as in MLA).
// Exact up to rounding; RoPE on read does not commute with W2 (the rotation depends on the
// token), so that case takes the decoded path.
//
// Launches: query projection into hidden space, the fp16 copy of W1 (copy_weights_kernel), the
// split kernel, the merge into z̄ (combine_kernel), the lift through W2.
//
// Limits (autoencoder_tensor_cores_policy::supported; outside them decode_attention takes the
// decoded path, and autoencoder_decode_attention_supported says why): codec
// autoencoder_codec<f16>; no RoPE on read; at most 32 query heads per codec group
// (heads_per_group × query heads per KV head); hidden width h <= 1024 (the value accumulators
// live in registers: (h / 64) blocks of 8 columns per warp); latent width d <= max_latent_width;
// the cache view's max_hidden_width set (device_kv_cache does); shared memory for one 32-token
// tile. Any d and h work: they are zero-padded to 32.
// Precision: z is exact in fp16; W1, the hidden activations, q̃ and the probabilities are fp16
// operands with fp32 accumulation (as in flash attention); the lift is fp32. Hidden activations
// and q̃ must fit fp16 (|x| < 65504).
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/autoencoder_tensor_cores.cuh needs nvcc"
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kvcar/codec/limits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/kernels/decode/autoencoder_kernels.cuh"
#include "kvcar/kernels/decode/combine.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/workspace.cuh"

namespace kvcar::kernels {

namespace detail::autoencoder_tc {

/// q̃ = W2ᵀ[:, c] q and bias = q · b2[c] for head blockIdx.x, items blockIdx.y · BB …, hidden
/// units blockIdx.z · project_rows …, from the K codec of the head's group: a warp per hidden
/// unit reads its row slice W2ᵀ[k][c] once, coalesced, for BB items whose queries sit in shared
/// memory. Writes fp16 q̃ [batch][n_heads][hid_pad], zero past the codec's h.
template <class Codec, int BB>
__global__ void __launch_bounds__(aux_threads)
    project_kernel(device::cache_view<Codec> cache, input_activations q, __half* qt, float* qbias,
                   int layer, int batch, int n_heads, int heads_per_kv, int hid_pad) {
    extern __shared__ __align__(16) float q_s[];  // [BB][hd]
    const int hh = int(blockIdx.x), b0 = int(blockIdx.y) * BB;
    const int nb = min(BB, batch - b0);
    const int hd = cache.head_dim;
    const int kvh = hh / heads_per_kv;
    const int group = kvh / cache.heads_per_group, in_group = kvh % cache.heads_per_group;
    const Codec ck = cache.codecs[cache.slot(layer, group, kv_kind::key)];
    const int first = in_group * hd, D = ck.width, h = ck.hidden;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    for (int idx = tid; idx < BB * hd; idx += aux_threads) {
        const int bb = idx / hd, i = idx - (idx / hd) * hd;
        q_s[idx] = bb < nb ? gpu::load(q, (std::size_t(b0 + bb) * n_heads + hh) * hd + i) : 0.0f;
    }
    __syncthreads();
    const int k_end = min(hid_pad, int(blockIdx.z + 1) * project_rows);
    for (int k = int(blockIdx.z) * project_rows + warp; k < k_end; k += aux_threads / 32) {
        float acc[BB];
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) acc[bb] = 0.0f;
        if (k < h) {
            const float* row = ck.dec2_wt + std::size_t(k) * D + first;
            for (int i = lane; i < hd; i += 32) {
                const float w = row[i];
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) acc[bb] += w * q_s[bb * hd + i];
            }
        }
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) {
            const float v = device::warp_sum(acc[bb]);
            if (lane == 0 && bb < nb)
                qt[(std::size_t(b0 + bb) * n_heads + hh) * hid_pad + k] = __float2half_rn(v);
        }
    }
    if (blockIdx.z == 0) {
        for (int bb = warp; bb < nb; bb += aux_threads / 32) {
            float bias = 0.0f;
            for (int i = lane; i < hd; i += 32) bias += q_s[bb * hd + i] * ck.dec2_b[first + i];
            bias = device::warp_sum(bias);
            if (lane == 0) qbias[std::size_t(b0 + bb) * n_heads + hh] = bias;
        }
    }
}

/// out = W2ᵀ[:, c]ᵀ z̄ + b2[c] for head blockIdx.x and items blockIdx.y · BB …, from the merged
/// hidden-space sums z̄ [batch][n_heads][zbar_stride] and the V codec of the head's group (b2
/// only for items that saw a token). The block's threads split as hd output columns × `ksplit`
/// slices of the hidden units; W2ᵀ rows are read coalesced over the columns, once for BB items.
template <class Codec, int BB>
__global__ void __launch_bounds__(lift_threads)
    lift_kernel(device::cache_view<Codec> cache, const float* zbar, int zbar_stride,
                const std::int32_t* kv_lengths, output_activations out, int layer, int batch,
                int n_heads, int heads_per_kv) {
    extern __shared__ __align__(16) float lift_s[];  // z̄ [BB][zbar_stride], then sums
    const int hh = int(blockIdx.x), b0 = int(blockIdx.y) * BB;
    const int nb = min(BB, batch - b0);
    const int hd = cache.head_dim;
    const int kvh = hh / heads_per_kv;
    const int group = kvh / cache.heads_per_group, in_group = kvh % cache.heads_per_group;
    const Codec cv = cache.codecs[cache.slot(layer, group, kv_kind::value)];
    const int first = in_group * hd, D = cv.width, h = cv.hidden;
    const int tid = int(threadIdx.x);
    const int ksplit = max(1, lift_threads / hd);
    float* z_s = lift_s;
    float* sums = lift_s + BB * zbar_stride;  // [ksplit][BB][hd]
    for (int idx = tid; idx < BB * h; idx += lift_threads) {
        const int bb = idx / h, k = idx - (idx / h) * h;
        z_s[bb * zbar_stride + k] =
            bb < nb ? zbar[(std::size_t(b0 + bb) * n_heads + hh) * zbar_stride + k] : 0.0f;
    }
    __syncthreads();
    const int slice = tid / hd;
    if (slice < ksplit) {
        const int k_begin = slice * h / ksplit, k_end = (slice + 1) * h / ksplit;
        // ksplit > 1: one column per thread; ksplit == 1: columns strided by the block.
        const int step = ksplit > 1 ? hd : lift_threads;
        for (int i = tid - slice * hd; i < hd; i += step) {
            float acc[BB];
#pragma unroll
            for (int bb = 0; bb < BB; ++bb) acc[bb] = 0.0f;
            const float* col = cv.dec2_wt + first + i;
            for (int k = k_begin; k < k_end; ++k) {
                const float w = col[std::size_t(k) * D];
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) acc[bb] += w * z_s[bb * zbar_stride + k];
            }
            if (ksplit == 1) {
#pragma unroll
                for (int bb = 0; bb < BB; ++bb)
                    if (bb < nb)
                        gpu::store(out, (std::size_t(b0 + bb) * n_heads + hh) * hd + i,
                                   (kv_lengths[b0 + bb] > 0 ? cv.dec2_b[first + i] : 0.0f) +
                                       acc[bb]);
            } else {
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) sums[(slice * BB + bb) * hd + i] = acc[bb];
            }
        }
    }
    if (ksplit > 1) {
        __syncthreads();
        for (int idx = tid; idx < nb * hd; idx += lift_threads) {
            const int bb = idx / hd, i = idx - (idx / hd) * hd;
            float v = 0.0f;
            for (int s = 0; s < ksplit; ++s) v += sums[(s * BB + bb) * hd + i];
            // Σ p = 1 after the merge; an empty item has no tokens and gives zeros, not b2.
            gpu::store(out, (std::size_t(b0 + bb) * n_heads + hh) * hd + i,
                       (kv_lengths[b0 + bb] > 0 ? cv.dec2_b[first + i] : 0.0f) + v);
        }
    }
}

/// What the host decided for one launch (or why the path does not apply).
struct plan {
    bool ok = false;
    std::string why;
    int mt = 0, ncol = 0, chunk = 0, splits = 0, lat_pad = 0, hid_pad = 0;
    std::size_t smem = 0;
};

template <class Codec>
plan make_plan(const device::cache_view<Codec>& cache, const decode_attention_params& p,
               attention_workspace& ws) {
    plan pl;
    auto fail = [&](std::string why) {
        pl.why = "autoencoder_decode_attention: " + std::move(why);
        return pl;
    };
    if (p.rope == rope_mode::on_read)
        return fail("RoPE on read rotates each decoded key by its position, which does not "
                    "commute with the decoder's second layer");
    if (cache.n_kv_heads <= 0 || p.n_heads <= 0 || p.n_heads % cache.n_kv_heads != 0)
        return fail("n_heads " + std::to_string(p.n_heads) +
                    " is not a positive multiple of n_kv_heads " +
                    std::to_string(cache.n_kv_heads));
    const int NQ = cache.heads_per_group * (p.n_heads / cache.n_kv_heads);
    if (NQ > max_heads)
        return fail(std::to_string(NQ) + " query heads per codec group exceed the limit of " +
                    std::to_string(max_heads));
    if (cache.max_hidden_width <= 0)
        return fail("the cache view's max_hidden_width is not set");
    if (cache.max_hidden_width > max_hidden)
        return fail("a hidden layer of " + std::to_string(cache.max_hidden_width) +
                    " units exceeds the limit of " + std::to_string(max_hidden));
    if (cache.max_latent_width <= 0 || cache.max_latent_width > max_latent_width)
        return fail("the cache view's max_latent_width " +
                    std::to_string(cache.max_latent_width) + " is not in [1, " +
                    std::to_string(max_latent_width) + "]");
    pl.mt = NQ <= 16 ? 1 : 2;
    pl.hid_pad = round_up(cache.max_hidden_width, hidden_block);
    pl.lat_pad = round_up(cache.max_latent_width, 32);
    const int need = (pl.hid_pad / 8 + warps - 1) / warps;  // 8-column blocks per warp
    pl.ncol = need <= 4 ? 4 : need <= 8 ? 8 : 16;
    const int limit = ws.max_shared_bytes();
    int max_chunk_fit = 0;
    for (int c = max_chunk; c >= tile; c -= tile) {
        if (make_layout(16 * pl.mt, pl.lat_pad, pl.hid_pad, c).total <= limit) {
            max_chunk_fit = c;
            break;
        }
    }
    if (max_chunk_fit == 0)
        return fail("one tile of a latent of " + std::to_string(cache.max_latent_width) +
                    " and a hidden layer of " + std::to_string(cache.max_hidden_width) +
                    " needs more shared memory than the device's " + std::to_string(limit));
    // One CTA per multiprocessor fits (the tiles take most of shared memory): two waves' worth
    // of CTAs hides the tail without writing many partial outputs.
    const split_plan sp = plan_splits(p.batch * cache.groups_per_layer, p.max_kv_length,
                                      2 * ws.sm_count(), max_chunk_fit, tile);
    pl.chunk = sp.chunk;
    pl.splits = sp.splits;
    pl.smem = std::size_t(make_layout(16 * pl.mt, pl.lat_pad, pl.hid_pad, pl.chunk).total);
    pl.ok = true;
    return pl;
}

template <class Codec, int MT, int NCOL>
void launch_split(const split_params<Codec>& sp, const plan& pl, int batch, int groups,
                  cudaStream_t stream) {
    auto kernel = split_kernel<Codec, MT, NCOL>;
    KVCAR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(pl.smem)));
    const dim3 grid =
        gpu::checked_grid(pl.splits, batch, groups, "autoencoder_decode_attention split_kernel");
    kernel<<<grid, threads, pl.smem, stream>>>(sp);
    KVCAR_CUDA_CHECK_LAUNCH("autoencoder_decode_attention split_kernel");
}

}  // namespace detail::autoencoder_tc

/// Whether autoencoder_decode_attention can run this launch; if not, `why` (when given) says why.
template <class Codec>
bool autoencoder_decode_attention_supported(const device::cache_view<Codec>& cache,
                                            const decode_attention_params& p,
                                            attention_workspace& ws, std::string* why = nullptr) {
    if constexpr (!autoencoder_tensor_core_codec<Codec>) {
        if (why) *why = "autoencoder_decode_attention: the codec is not autoencoder_codec<f16>";
        return false;
    } else {
        const detail::autoencoder_tc::plan pl = detail::autoencoder_tc::make_plan(cache, p, ws);
        if (why) *why = pl.why;
        return pl.ok;
    }
}

/// Decode attention over autoencoder latents on tensor cores (see the file comment): the same
/// result as decode_attention, for the codecs and shapes autoencoder_decode_attention_supported
/// accepts; throws kvcar::error naming the reason otherwise, before anything is enqueued.
/// Five launches: query projection into hidden space, fp16 copy of W1, split kernel, merge,
/// lift.
template <class Codec>
void autoencoder_decode_attention(const device::cache_view<Codec>& cache,
                                  const decode_attention_params& p, attention_workspace& ws,
                                  cudaStream_t stream = nullptr) {
    namespace at = detail::autoencoder_tc;
    ws.use_stream(stream);  // the workspace grows in this stream's order
    detail::validate(p, cache.n_layers, cache.n_kv_heads, cache.head_dim,
                     "autoencoder_decode_attention");
    if constexpr (!autoencoder_tensor_core_codec<Codec>) {
        require(false, "autoencoder_decode_attention: the codec is not autoencoder_codec<f16>");
    } else {
        if (detail::run_in_item_slices(p, cache.head_dim, [&](const decode_attention_params& slice) {
                autoencoder_decode_attention(cache, slice, ws, stream);
            }))
            return;
        const at::plan pl = at::make_plan(cache, p, ws);
        require(pl.ok, pl.why);
        if (p.batch == 0) return;
        const int H = p.n_heads;
        const int G = H / cache.n_kv_heads;
        const std::size_t rows = std::size_t(p.batch) * H;
        // fp16 q̃ lives in the latent-query floats (two halves per float; hid_pad is even); the
        // bias floats hold the biases, then (16-byte aligned) the merged hidden sums z̄.
        // After q̃, (16-byte aligned: hid_pad is a multiple of 32) the fp16 copies of W1.
        const std::size_t w1_halves =
            std::size_t(cache.groups_per_layer) * 2 * pl.hid_pad * pl.lat_pad;
        __half* qt = reinterpret_cast<__half*>(
            ws.latent_queries((rows * pl.hid_pad + w1_halves) / 2));
        __half* w1h = qt + rows * pl.hid_pad;
        const std::size_t zbar_offset = (rows + 3) / 4 * 4;
        float* bias = ws.latent_bias(zbar_offset + rows * std::size_t(pl.hid_pad));
        float* zbar = bias + zbar_offset;
        at::split_params<Codec> sp{};
        sp.cache = cache;
        sp.qt = qt;
        sp.w1h = w1h;
        sp.qbias = bias;
        sp.sequences = p.sequences;
        sp.kv_lengths = p.kv_lengths;
        sp.part_acc = ws.partial_acc(rows * pl.splits * pl.hid_pad);
        sp.part_ml = ws.partial_ml(rows * pl.splits * 2);
        sp.layer = p.layer;
        sp.n_heads = H;
        sp.heads_per_kv = G;
        sp.chunk = pl.chunk;
        sp.max_splits = pl.splits;
        sp.lat_pad = pl.lat_pad;
        sp.hid_pad = pl.hid_pad;
        sp.scale = p.scale == 0.0f ? 1.0f / std::sqrt(float(cache.head_dim)) : p.scale;

        constexpr int PB = at::project_items;
        const std::size_t project_smem = sizeof(float) * PB * cache.head_dim;
        auto project = at::project_kernel<Codec, PB>;
        gpu::allow_dynamic_smem(project, project_smem, ws.max_shared_bytes(),
                                 "autoencoder_decode_attention project_kernel");
        const dim3 project_grid = gpu::checked_grid(
            H, (p.batch + PB - 1) / PB, (pl.hid_pad + at::project_rows - 1) / at::project_rows,
            "autoencoder_decode_attention project_kernel");
        project<<<project_grid, at::aux_threads, project_smem, stream>>>(
            cache, p.q, qt, bias, p.layer, p.batch, H, G, pl.hid_pad);
        KVCAR_CUDA_CHECK_LAUNCH("autoencoder_decode_attention project_kernel");

        const dim3 copy_grid = gpu::checked_grid(
            2 * cache.groups_per_layer, (pl.hid_pad + at::copy_rows - 1) / at::copy_rows, 1,
            "autoencoder_decode_attention copy_weights_kernel");
        at::copy_weights_kernel<Codec><<<copy_grid, at::aux_threads, 0, stream>>>(
            cache, p.layer, w1h, pl.hid_pad, pl.lat_pad);
        KVCAR_CUDA_CHECK_LAUNCH("autoencoder_decode_attention copy_weights_kernel");

        // make_plan picks MT in {1, 2} and NCOL in {4, 8, 16}: the instantiations that exist.
        detail::dispatch_int<1, 2>(pl.mt, [&]<int MT>() {
            detail::dispatch_int<4, 8, 16>(pl.ncol, [&]<int NCOL>() {
                at::launch_split<Codec, MT, NCOL>(sp, pl, p.batch, cache.groups_per_layer, stream);
            });
        });

        // Merge the splits of every (item, head) into z̄ (one CTA each), then lift through W2.
        detail::launch_merge(detail::merge_params{sp.part_acc, sp.part_ml, p.kv_lengths,
                                                  /*out=*/zbar, p.batch, H,
                                                  /*width=*/pl.hid_pad, pl.chunk, pl.splits,
                                                  /*acc_stride=*/pl.hid_pad},
                             ws, stream, "autoencoder_decode_attention combine_kernel");
        constexpr int LB = at::lift_items;
        const int ksplit = std::max(1, at::lift_threads / cache.head_dim);
        const std::size_t lift_smem =
            sizeof(float) * (std::size_t(LB) * pl.hid_pad +
                             (ksplit > 1 ? std::size_t(ksplit) * LB * cache.head_dim : 0));
        auto lift = at::lift_kernel<Codec, LB>;
        gpu::allow_dynamic_smem(lift, lift_smem, ws.max_shared_bytes(),
                                 "autoencoder_decode_attention lift_kernel");
        const dim3 lift_grid = gpu::checked_grid(H, (p.batch + LB - 1) / LB, 1,
                                                  "autoencoder_decode_attention lift_kernel");
        lift<<<lift_grid, at::lift_threads, lift_smem, stream>>>(
            cache, zbar, pl.hid_pad, p.kv_lengths, p.out, p.layer, p.batch, H, G);
        KVCAR_CUDA_CHECK_LAUNCH("autoencoder_decode_attention lift_kernel");
    }
}

namespace detail {

/// Decode path policy (see decode_attention.cuh): autoencoder_codec<f16> within make_plan's
/// limits (no RoPE on read, heads per group, hidden and latent widths, shared memory).
struct autoencoder_tensor_cores_policy {
    static constexpr decode_path path = decode_path::autoencoder_tensor_cores;
    template <class Codec>
    static constexpr bool accepts = autoencoder_tensor_core_codec<Codec>;

    template <class Codec>
    static bool supported(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                          attention_workspace& ws) {
        return autoencoder_tc::make_plan(cache, p, ws).ok;
    }

    /// Projection, W1 copy, split kernel, merge and lift (autoencoder_decode_attention).
    template <class Codec>
    static void run(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                    attention_workspace& ws, cudaStream_t stream) {
        autoencoder_decode_attention(cache, p, ws, stream);
    }
};

}  // namespace detail

}  // namespace kvcar::kernels
