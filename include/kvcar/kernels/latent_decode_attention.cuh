// kvcar/kernels/latent_decode_attention.cuh — decode attention over a whole-layer latent on
// tensor cores: multi-head latent attention (MLA) decode for kvcar's linear codecs.
//
// The math. A whole-layer linear codec stores per token one latent z (d elements) shared by all
// H query heads, x̂ = P z + μ. With Qz[h] = P_hᵀ q_h (d wide) and bias_h = q_h · μ_h:
//     score[h][t] = Qz[h] · z_t + bias_h                S  = Qz · Zᵀ      [H × T] per tile
//     out_h       = P_h (Σ_t a_ht z_t) + μ_h            Acc = softmax(S) · Z  [H × d]
// so every cached byte is used by all H heads: 2·H multiply-adds per latent element and stream,
// about 32 FLOP per byte for H = 32 — compute-bound on CUDA cores (the generic latent path runs
// at a tenth of copy bandwidth), memory-bound again on tensor cores.
//
// The split kernel (one CTA of 8 or 16 warps per (split of `chunk` tokens, item)), flash-decoding
// style with an online softmax, so a split can be as long as the plan likes (few partials):
//   * Qz of all heads (fp16, padded to a multiple of 16 rows) sits in shared memory;
//   * tiles of 32 tokens stream through a ring of `stages` shared-memory stages filled by
//     cp.async, a tile's K rows and V rows in separate copy groups; the next tile is requested
//     before the current one is awaited, so tiles are always in flight, and V lands while the
//     scores are computed. f16 latents land in the fp16 tile directly; int8 / fp8 records land
//     raw and stay raw: each lane loads 4 bytes of a record for its MMA fragment and widens
//     them to the element values u (exact in fp16) in registers (K's columns in an order that
//     matches Qz's permuted copy, V's through movmatrix); each record's scale and offset stay
//     in fp32: for K they apply to the score, s = scale·(Qz·u) + offset·ΣQz, for V the scale
//     joins the probability (Σ p·v = Σ (p·scale)·u + Σ p·offset), so V is never dequantized;
//   * S = Qz · Zᵀ by mma.sync m16n8k16 (fp16 in, fp32 accumulate, operands by ldmatrix): warp
//     (token block, slice of d) computes a partial product, the slices meet in shared memory;
//   * the online softmax (lane per token, each warp a fixed set of heads) keeps each head's
//     running max m and sum l in registers and writes the tile's fp16 probabilities and the
//     rescale factor α;
//   * Acc = α·Acc + P · Z_v by mma.sync, the fp32 accumulators in registers for the whole split:
//     warp w of NW owns the V-latent columns 8(w + NW·j) … 8(w + NW·j) + 7 of every head;
//   * the unnormalized Acc, the split's m and l go to the same partial buffers as the other
//     paths.
// Around it: a projection kernel computes Qz (fp16) and the bias for up to 16 (item, query
// head) vectors of one KV head and a slice of latent columns, reading P_h once for all of them;
// the shared combine kernel merges the splits into z̄; a lift kernel computes P_h z̄ + μ_h for up
// to 16 vectors of a KV head and a block of output rows.
//
// Limits (the dispatcher in decode_attention.cuh falls back to the generic path outside them):
// codec a linear_codec<f16>, or a linear codec under quantized_codec with int8 or fp8 e4m3
// latents; the group is the whole layer (heads_per_group == n_kv_heads); no RoPE on read; at most
// 64 query heads; d up to max_latent_width (1024) with the accumulators fitting 128 registers
// (d <= 1024 for <= 32 heads, d <= 512 for <= 64 heads); shared memory for two tiles. Any d
// works; d a multiple of 8 (f16) lets each record be fetched in 16-byte pieces, other widths are
// zero-padded to 16 on the way in. Latents must be finite (a cached inf times a zero probability
// would be NaN). Precision: Qz, Z (f16 latents are exact) and the probabilities are fp16 operands
// with fp32 accumulation, as in flash attention; a quantized V's p·scale is rounded to fp16
// relative to the tile's largest, so the terms that matter keep fp16's relative precision.
//
// Files: decode/latent_tc_common.cuh (constants, layout, helpers), decode/latent_tc_split.cuh (the
// split kernel), decode/latent_tc_aux.cuh (projection and lift); here the host plan and launch.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/latent_decode_attention.cuh needs nvcc"
#endif

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/linear.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/device/affine.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/kernels/decode/combine.cuh"
#include "kvcar/kernels/mma.cuh"
#include "kvcar/numeric.hpp"
#include "kvcar/kernels/decode/latent_tc_aux.cuh"
#include "kvcar/kernels/decode/latent_tc_common.cuh"
#include "kvcar/kernels/decode/latent_tc_split.cuh"

namespace kvcar::kernels {

namespace detail::latent_tc {

/// What the host decided for one launch (or why the path does not apply).
struct plan {
    bool ok = false;
    std::string why;
    int mt = 0, nb = 0, nw = 0, stages = 0, chunk = 0, splits = 0;
    int lat_pad = 0, raw_ld = 0, acc_stride = 0;
    /// Projection / lift CTAs: (item, query head) vectors each (4 or 16), their count, and the
    /// rows of P_h per lift warp (latent_tc_aux.cuh).
    int aux_vectors = 0, vector_blocks = 0, lift_rows = 0;
    std::size_t smem = 0;
};

template <class Codec>
plan make_plan(const device::cache_view<Codec>& cache, const decode_attention_params& p,
               attention_workspace& ws) {
    using E = typename device::codec_traits<Codec>::element;
    constexpr bool QUANT = device::codec_traits<Codec>::quantized;
    plan pl;
    auto fail = [&](std::string why) {
        pl.why = "latent_decode_attention: " + std::move(why);
        return pl;
    };
    if (p.rope == rope_mode::on_read)
        return fail("RoPE on read does not commute with the latent projection");
    if (cache.groups_per_layer != 1 || cache.heads_per_group != cache.n_kv_heads)
        return fail("the codec's group is not the whole layer (heads_per_group " +
                    std::to_string(cache.heads_per_group) + ", n_kv_heads " +
                    std::to_string(cache.n_kv_heads) + ")");
    if (p.n_heads > max_heads)
        return fail(std::to_string(p.n_heads) + " query heads exceed the limit of " +
                    std::to_string(max_heads));
    if (cache.max_latent_width <= 0 || cache.max_latent_width > max_latent_width)
        return fail("the cache view's max_latent_width " +
                    std::to_string(cache.max_latent_width) + " is not in [1, " +
                    std::to_string(max_latent_width) + "]");
    pl.mt = p.n_heads <= 16 ? 1 : p.n_heads <= 32 ? 2 : 4;
    pl.lat_pad = round_up(cache.max_latent_width, 16);
    const int max_rb = int(pad_record_bytes(std::size_t(cache.max_latent_width) * sizeof(E))) +
                       (QUANT ? 8 : 0);
    pl.raw_ld = round_up(max_rb, 16);
    if ((pl.raw_ld / 16) % 2 == 0) pl.raw_ld += 16;  // odd: conflict-free fragment loads
    pl.acc_stride = round_up(cache.max_latent_width, 4);
    const int heads_pad = 16 * pl.mt;
    const int limit = ws.max_shared_bytes();
    // 8-wide column blocks per warp, in pairs. 8 warps: at most 32 accumulator fragments (128
    // registers). When that leaves one CTA per multiprocessor, 16 warps with half the columns
    // each (at most 16 fragments within 128 registers) give the schedulers twice the warps to
    // hide latency with, if their score slices fit shared memory.
    auto blocks = [&](int nw) {
        const int need = (pl.lat_pad / 8 + nw - 1) / nw;
        return need <= 2 ? 2 : need <= 4 ? 4 : need <= 8 ? 8 : 16;
    };
    auto layout = [&](int nw, int stages) {
        return make_layout(heads_pad, pl.lat_pad, stages, pl.raw_ld, QUANT, nw / token_blocks);
    };
    pl.nw = 8;
    pl.nb = blocks(8);
    const bool wide_ok = wide_fits_registers(pl.mt, blocks(16)) && layout(16, 2).total <= limit;
    if (ws.tune.latent_warps == 16 ? wide_ok
                                   : ws.tune.latent_warps != 8 &&
                                         !two_ctas_per_sm(pl.mt, pl.nb) && wide_ok) {
        pl.nw = 16;
        pl.nb = blocks(16);
    }
    if (pl.mt * pl.nb > 32)
        return fail("a latent of " + std::to_string(cache.max_latent_width) + " for " +
                    std::to_string(p.n_heads) + " heads exceeds the accumulator registers");
    // The ring: enough stages that (stages - 1) tiles cover inflight_bytes, as many as fit.
    const int stage_bytes = layout(pl.nw, 2).stage_bytes;
    pl.stages = std::clamp(ws.tune.latent_stages > 0
                               ? ws.tune.latent_stages
                               : 1 + (inflight_bytes + stage_bytes - 1) / stage_bytes,
                           2, max_stages);
    while (pl.stages > 2 && layout(pl.nw, pl.stages).total > limit) --pl.stages;
    const int total = layout(pl.nw, pl.stages).total;
    if (total > limit)
        return fail("two tiles of a latent of " + std::to_string(cache.max_latent_width) +
                    " need " + std::to_string(total) +
                    " bytes of shared memory, more than the device's " + std::to_string(limit));
    pl.smem = std::size_t(total);
    int device = 0, per_sm = 0;
    KVCAR_CUDA_CHECK(cudaGetDevice(&device));
    KVCAR_CUDA_CHECK(
        cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    const int by_registers = pl.nw == 8 && two_ctas_per_sm(pl.mt, pl.nb) ? 2 : 1;  // bounds
    const int ctas_per_sm = std::clamp(per_sm / (total + 1024), 1, by_registers);
    // The chunk that minimizes waves × (chunk + per-CTA overhead): the set-up, the partial
    // accumulators written and merged (n_heads × d floats, about what three tiles of latents
    // weigh); a last wave that fills few multiprocessors wastes the rest.
    const split_plan sp =
        plan_splits_by_waves(p.batch, p.max_kv_length, long(ws.sm_count()) * ctas_per_sm,
                             max_chunk, tile, 3 * tile, ws.tune.latent_chunk);
    pl.chunk = sp.chunk;
    pl.splits = sp.splits;
    // Each read of a row of P_h serves aux_vectors (item, query head) vectors of its KV head.
    const int vectors = p.batch * (p.n_heads / cache.n_kv_heads);
    const int tuned_vectors = ws.tune.latent_aux_vectors, tuned_rows = ws.tune.latent_lift_rows;
    pl.aux_vectors = tuned_vectors == 4 || tuned_vectors == 16 ? tuned_vectors
                                                               : vectors_per_block(vectors);
    pl.vector_blocks = (vectors + pl.aux_vectors - 1) / pl.aux_vectors;
    pl.lift_rows = tuned_rows == 1 || tuned_rows == 2 || tuned_rows == 4
                       ? tuned_rows
                       : lift_rows_per_warp(pl.vector_blocks);
    pl.ok = true;
    return pl;
}

template <class Codec, int MT, int NB, int NW>
void launch_split(const split_params<Codec>& sp, const plan& pl, int batch, cudaStream_t stream,
                  bool overlap) {
    auto kernel = split_kernel<Codec, MT, NB, NW>;
    // make_plan kept pl.smem within the device's opt-in limit.
    KVCAR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(pl.smem)));
    const dim3 grid = gpu::checked_grid(pl.splits, batch, 1, "latent_decode_attention split_kernel");
    gpu::launch(kernel, {grid, dim3(NW * 32), pl.smem, stream, overlap},
                "latent_decode_attention split_kernel", sp);
}

/// Run-time (warps, column blocks) → the instantiation for MT head blocks: 8 warps with
/// MT · NB <= 32, 16 warps where wide_fits_registers (make_plan).
template <class Codec, int MT>
void launch_split_mt(const split_params<Codec>& sp, const plan& pl, int batch,
                     cudaStream_t stream, bool overlap) {
    if (pl.nw == 16) {
        switch (pl.nb) {
            case 2: launch_split<Codec, MT, 2, 16>(sp, pl, batch, stream, overlap); break;
            case 4:
                if constexpr (wide_fits_registers(MT, 4))
                    launch_split<Codec, MT, 4, 16>(sp, pl, batch, stream, overlap);
                break;
            default:
                if constexpr (wide_fits_registers(MT, 8))
                    launch_split<Codec, MT, 8, 16>(sp, pl, batch, stream, overlap);
                break;
        }
        return;
    }
    switch (pl.nb) {
        case 2: launch_split<Codec, MT, 2, 8>(sp, pl, batch, stream, overlap); break;
        case 4: launch_split<Codec, MT, 4, 8>(sp, pl, batch, stream, overlap); break;
        case 8: launch_split<Codec, MT, 8, 8>(sp, pl, batch, stream, overlap); break;
        default:
            if constexpr (MT <= 2) launch_split<Codec, MT, 16, 8>(sp, pl, batch, stream, overlap);
            break;
    }
}

}  // namespace detail::latent_tc

/// Whether latent_decode_attention can run this launch; if not, `why` (when given) says why.
template <kv_codec Codec>
bool latent_decode_attention_supported(const device::cache_view<Codec>& cache,
                                       const decode_attention_params& p, attention_workspace& ws,
                                       std::string* why = nullptr) {
    if constexpr (!latent_tensor_core_codec<Codec>) {
        if (why) *why = "latent_decode_attention: the codec is not a linear codec with f16, int8 "
                        "or fp8 latents";
        return false;
    } else {
        const detail::latent_tc::plan pl = detail::latent_tc::make_plan(cache, p, ws);
        if (why) *why = pl.why;
        return pl.ok;
    }
}

/// Decode attention over a whole-layer latent on tensor cores (see the file comment): the same
/// result as decode_attention, for the codecs and shapes latent_decode_attention_supported
/// accepts; throws kvcar::error naming the reason otherwise, before anything is enqueued.
/// Three launches: query projection, split kernel, merge + lift.
template <kv_codec Codec>
void latent_decode_attention(const device::cache_view<Codec>& cache,
                             const decode_attention_params& p, attention_workspace& ws,
                             cudaStream_t stream = nullptr) {
    namespace lt = detail::latent_tc;
    ws.use_stream(stream);  // the workspace grows in this stream's order
    detail::validate(p, cache.n_layers, cache.n_kv_heads, cache.head_dim,
                     "latent_decode_attention");
    if constexpr (!latent_tensor_core_codec<Codec>) {
        require(false, "latent_decode_attention: the codec is not a linear codec with f16, int8 "
                       "or fp8 latents");
    } else {
        if (detail::run_in_item_slices(p, cache.head_dim, [&](const decode_attention_params& slice) {
                latent_decode_attention(cache, slice, ws, stream);
            }))
            return;
        const lt::plan pl = lt::make_plan(cache, p, ws);
        require(pl.ok, pl.why);
        if (p.batch == 0) return;
        const int H = p.n_heads;
        const int G = H / cache.n_kv_heads;
        const std::size_t rows = std::size_t(p.batch) * H;
        lt::split_params<Codec> sp{};
        sp.cache = cache;
        sp.sequences = p.sequences;
        sp.kv_lengths = p.kv_lengths;
        sp.layer = p.layer;
        sp.n_heads = H;
        sp.chunk = pl.chunk;
        sp.max_splits = pl.splits;
        sp.acc_stride = pl.acc_stride;
        sp.qz_ld = pl.lat_pad;
        sp.stages = pl.stages;
        sp.lat_pad = pl.lat_pad;
        sp.raw_ld = pl.raw_ld;
        sp.scale = p.scale == 0.0f ? 1.0f / std::sqrt(float(cache.head_dim)) : p.scale;
        // fp16 Qz lives in the latent-query floats (two halves per float); the bias floats hold
        // the biases, then (16-byte aligned) the merged latents z̄ the lift reads.
        __half* qz = reinterpret_cast<__half*>(ws.latent_queries(rows * pl.lat_pad / 2 + 1));
        // z̄ rows are max_latent_width wide (the V codec's own width d is known on the device
        // only): the merge fills them, the lift reads the first d.
        const int zw = cache.max_latent_width;
        const std::size_t zbar_offset = (rows + 3) / 4 * 4;
        float* bias = ws.latent_bias(zbar_offset + rows * std::size_t(cache.max_latent_width));
        float* zbar = bias + zbar_offset;
        sp.qz = qz;
        sp.qbias = bias;
        sp.part_acc = ws.partial_acc(rows * pl.splits * pl.acc_stride);
        sp.part_ml = ws.partial_ml(rows * pl.splits * 2);

        // Vectors (item, query head of a KV head) per projection / lift CTA: each read of P_h
        // serves them all (latent_tc_aux.cuh).
        auto with_vectors = [&](auto&& body) {
            if (pl.aux_vectors == 4) body(std::integral_constant<int, 4>{});
            else body(std::integral_constant<int, 16>{});
        };
        with_vectors([&]<int VB>(std::integral_constant<int, VB>) {
            const std::size_t project_smem =
                sizeof(float) * VB * (cache.head_dim + lt::project_columns * lt::project_row_slices);
            const dim3 project_grid = gpu::checked_grid(
                cache.n_kv_heads, (pl.lat_pad + lt::project_columns - 1) / lt::project_columns,
                pl.vector_blocks, "latent_decode_attention project_kernel");
            auto project = lt::project_kernel<Codec, VB>;
            gpu::allow_dynamic_smem(project, project_smem, ws.max_shared_bytes(),
                                     "latent_decode_attention project_kernel");
            gpu::launch(project,
                        {project_grid, dim3(lt::aux_threads), project_smem, stream,
                         ws.overlap_launches()},
                        "latent_decode_attention project_kernel", cache, p.q, qz, bias,
                        p.layer, p.batch, H, G, pl.lat_pad);
        });

        if (pl.mt == 1) {
            lt::launch_split_mt<Codec, 1>(sp, pl, p.batch, stream, ws.overlap_launches());
        } else if (pl.mt == 2) {
            lt::launch_split_mt<Codec, 2>(sp, pl, p.batch, stream, ws.overlap_launches());
        } else {
            lt::launch_split_mt<Codec, 4>(sp, pl, p.batch, stream, ws.overlap_launches());
        }

        // Merge the splits of every (item, head) into z̄ (one CTA each), then lift.
        detail::launch_merge(detail::merge_params{sp.part_acc, sp.part_ml, p.kv_lengths,
                                                  /*out=*/zbar, p.batch, H, /*width=*/zw,
                                                  pl.chunk, pl.splits, pl.acc_stride},
                             ws, stream, "latent_decode_attention combine_kernel");
        with_vectors([&]<int VB>(std::integral_constant<int, VB>) {
            const int rows_per_block = lt::aux_threads / 32 * pl.lift_rows;
            const std::size_t lift_smem = sizeof(float) * VB * std::size_t(zw);
            auto lift = lt::lift_kernel<Codec, VB>;
            gpu::allow_dynamic_smem(lift, lift_smem, ws.max_shared_bytes(),
                                     "latent_decode_attention lift_kernel");
            const dim3 lift_grid = gpu::checked_grid(
                cache.n_kv_heads, (cache.head_dim + rows_per_block - 1) / rows_per_block,
                pl.vector_blocks, "latent_decode_attention lift_kernel");
            gpu::launch(lift,
                        {lift_grid, dim3(lt::aux_threads), lift_smem, stream,
                         ws.overlap_launches()},
                        "latent_decode_attention lift_kernel", cache, zbar, zw, p.kv_lengths,
                        p.out, p.layer, p.batch, H, G, pl.lift_rows);
        });
    }
}

}  // namespace kvcar::kernels
