// kvcar/kernels/decode/direct_mma.cuh — the `direct_tensor_cores` path: decode attention over
// identity f16 and int8 KV heads on tensor cores: one warp scores all query heads of a KV head
// from one read of it.
//
// Why. Decode attention reads every cached byte once; with G query heads per KV head (GQA) each
// K and V element is used G times (TinyLlama G = 8, Llama-3-8B G = 4). Done on CUDA cores with a
// lane-split dot product and shuffle reductions that is ~50 instructions per token at G = 8:
// instruction-bound far below copy bandwidth. As matrix products the same work is
//     Sᵀ[16 tokens × 8 heads]  = K_tile [16 × hd]     · Qᵀ[hd × 8]          (hd/16 MMAs)
//     Oᵀ[hd × 8 heads]        += V_tileᵀ[hd × 16 tok] · Pᵀ[16 tokens × 8]   (hd/16 MMAs)
// with mma.sync m16n8k16 (fp16 in, fp32 accumulate): ~2 MMAs per token for hd = 128, and the
// tokens sit on the MMA's M side so G = 8 wastes nothing (G < 8 leaves columns idle, which costs
// tensor throughput the kernel has plenty of).
//
// Register layouts, chosen so that no shared memory is needed between global memory and MMAs:
//   * Both products reduce over an index (head dimension, tokens) whose order is free as long as
//     both operands use the same one. Lane (g, t) = (lane / 4, lane % 4) loads, for tokens g and
//     g + 8 of the tile, the 16 consecutive head elements [16t, 16t + 16) of every 64-element
//     block: two 16-byte loads, coalesced over the 4 lanes of a token. Those are exactly the
//     A-fragment registers of 4 k-steps under a permutation of the head dimension, and the query
//     B-fragments (kept in registers for the whole split) use the same permutation.
//   * The score fragment (token rows g, g + 8; head columns 2t, 2t + 1), rounded to fp16 and
//     transposed by movmatrix, is the B fragment of the second product (heads g; tokens
//     2t, 2t + 1, 2t + 8, 2t + 9): no shuffle through shared memory.
//   * For V, lane (g, t) loads the hd/8 consecutive elements [g·hd/8, (g+1)·hd/8) of tokens 2t,
//     2t + 1, 2t + 8, 2t + 9; one byte permute per register pairs two tokens' elements of one
//     dimension, which is the A fragment of Vᵀ with the output dimensions permuted. The lane ends
//     with Oᵀ for heads 2t, 2t + 1 over its own hd/8 dimensions.
// int8 records (quantized identity: u · scale + offset per token, load_float(u) = u + ½) are
// dequantized in registers with packed half2 math (byte permute into 1024 + u + 128, subtract,
// one fused multiply-add), so int8 reads half the bytes of f16 for about the same instructions.
//
// Measured on one H100 (docs/results/speed-data/h100-direct-mma, against the CUDA-core kernel
// in the same session): TinyLlama-like f16 1.5–1.8× faster, Llama-3-8B-like f16 1.14–1.31×,
// int8 1.3–2.7×; Llama-3-8B-like f16 at batch ≥ 32 reads at about 2.7–3.0 TB/s.
//
// Work split as in the CUDA-core direct kernel: a CTA per (split, item, KV head); its 4 warps take
// the split's 16-token tiles round robin, each with its own online softmax, and merge through
// shared memory at the end; the splits are merged by combine_kernel. Loads: a tile's page is
// looked up once (when the page size is a multiple of 16, every tile lies in one page), and the
// next tile's K and V are loaded while the current one is computed.
//
// Limits (direct_tensor_cores_policy::supported; outside them the dispatcher tries the CUDA-core
// direct kernel next): identity_codec<f16> or quantized_codec<identity_codec<T>, int8>; head_dim
// 64 or 128; 2, 4 or 8 query heads per KV head, and 1 (MHA) unless built with
// KVCAR_DIRECT_MMA_MIN_GQA=2; no RoPE on read; q 16-byte aligned. Precision: query (scaled) and
// probabilities are fp16 operands with fp32 accumulation, as in flash attention; dequantized int8
// values must fit fp16 (|v| < 65504).
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/direct_mma.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/kernels/decode/combine.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/direct.cuh"
#include "kvcar/kernels/decode/workspace.cuh"
#include "kvcar/kernels/mma.cuh"

namespace kvcar::kernels::detail {

/// Codecs the tensor-core direct kernel reads: f16 identity records and int8 quantized identity
/// records (scale and offset per record).
template <class Codec>
struct direct_mma_codec : std::false_type {};
template <>
struct direct_mma_codec<identity_codec<f16>> : std::true_type {};
template <class T>
struct direct_mma_codec<quantized_codec<identity_codec<T>, std::int8_t>> : std::true_type {};

/// Fewest query heads per KV head that take the tensor-core kernel: 1, so MHA takes it too. On
/// an H100 it timed faster than the CUDA-core direct kernel for MHA (GPT-2 small shapes, f16 and
/// int8: docs/results/speed-data/h100-direct-mma/gqa1.jsonl). Build with
/// -DKVCAR_DIRECT_MMA_MIN_GQA=2 to keep MHA on the CUDA-core kernel.
#ifndef KVCAR_DIRECT_MMA_MIN_GQA
#define KVCAR_DIRECT_MMA_MIN_GQA 1
#endif
inline constexpr int direct_mma_min_gqa = KVCAR_DIRECT_MMA_MIN_GQA;
/// Threads of a tensor-core direct CTA (4 warps).
inline constexpr int direct_mma_threads = 128;
/// Tokens per MMA tile (the M side of the score product).
inline constexpr int direct_mma_tile = 16;
/// Tokens per split at most: wide splits write fewer partial outputs.
inline constexpr int direct_mma_max_chunk = 1024;
/// Splits are planned for this many CTAs per multiprocessor. 2, not 4: each split adds a partial
/// row per head to merge, and on one H100 (decode_bench --direct-ctas-per-sm, Llama-3-8B-like
/// heads) 2 beat 4 by 5–23% at batch 1 (4k and 16k tokens) and batch 8 (8k) for f16 and int8.
inline constexpr int direct_mma_ctas_per_sm = 2;

/// One CTA: split blockIdx.x of item blockIdx.y for KV head blockIdx.z and its GQA query heads.
template <class Codec, int HEAD_DIM, int GQA>
__global__ void __launch_bounds__(direct_mma_threads, 2)
    direct_mma_attention_kernel(direct_params p) {
    using E = typename device::codec_traits<Codec>::element;
    constexpr bool QUANT = device::codec_traits<Codec>::quantized;
    static_assert(HEAD_DIM == 64 || HEAD_DIM == 128, "head_dim 64 or 128");
    static_assert(GQA >= 1 && GQA <= 8, "at most 8 query heads per KV head");
    constexpr int NW = direct_mma_threads / 32;
    constexpr int TILE = direct_mma_tile;
    constexpr int KSTEPS = HEAD_DIM / 16;         // k-steps of Sᵀ = K Qᵀ, and m-tiles of Oᵀ
    constexpr int DPL = HEAD_DIM / 8;             // V elements (output dimensions) per lane
    // Raw 32-bit words a lane holds per token: K [16t, 16t+16) of each 64-block, V its DPL.
    constexpr int KW = HEAD_DIM / 4 * int(sizeof(E)) / 4;
    constexpr int VW = DPL * int(sizeof(E)) / 4;
    // Loads: f16 records are 16-byte aligned (uint4), int8 records only 8-byte (uint2).
    constexpr int LOADW = QUANT ? 2 : 4;
    using load_t = std::conditional_t<QUANT, uint2, uint4>;
    static_assert(KW % LOADW == 0 && VW % LOADW == 0, "whole vector loads");
    constexpr float log2e = 1.4426950408889634f;

    __shared__ float sh_o[NW][GQA][HEAD_DIM];
    __shared__ float sh_m[NW][8], sh_l[NW][8];

    gpu::wait_for_prior_grids();  // q and this step's K/V (launched with overlap)
    gpu::allow_dependent_grids();
    const int split = int(blockIdx.x), b = int(blockIdx.y), kvh = int(blockIdx.z);
    const int len = p.kv_lengths[b];
    const int begin = split * p.chunk;
    if (begin >= len) return;  // uniform across the block
    const int end = min(len, begin + p.chunk);
    const int seq = p.sequences[b];
    const int group = kvh / p.heads_per_group, in_group = kvh - group * p.heads_per_group;
    const int logical = (p.layer * p.groups_per_layer + group) * kv_kind_count;
    const page_view pk = p.slots[p.read_slots[logical + int(kv_kind::key)]];
    const page_view pv = p.slots[p.read_slots[logical + int(kv_kind::value)]];
    const std::size_t head_bytes = std::size_t(in_group) * HEAD_DIM * sizeof(E);

    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
    const int g = lane >> 2, t = lane & 3;

    // Query B fragments: head g, k-step s covers physical elements 64(s/4) + 16t + 4(s%4) + 0..3.
    std::uint32_t qf[KSTEPS][2];
    {
        const bool real = g < GQA;
        const std::size_t qrow =
            (std::size_t(b) * p.n_heads + std::size_t(kvh) * GQA + (real ? g : 0)) * HEAD_DIM;
        const float qs = p.scale * log2e;  // scores in log2 units: exp2 in the softmax
#pragma unroll
        for (int s = 0; s < KSTEPS; ++s) {
            const int e = 64 * (s / 4) + 16 * t + 4 * (s % 4);
            const float4 v = real ? gpu::load4(p.q, qrow + e) : make_float4(0.f, 0.f, 0.f, 0.f);
            qf[s][0] = pack_half2(v.x * qs, v.y * qs);
            qf[s][1] = pack_half2(v.z * qs, v.w * qs);
        }
    }

    struct tile_regs {
        std::uint32_t k[2][KW];   // tokens g, g + 8
        std::uint32_t v[4][VW];   // tokens 2t, 2t + 1, 2t + 8, 2t + 9
        float2 kso[2];            // int8: (scale, offset) of those tokens
        float2 vso[4];
    };
    const bool page_tiles = pk.page_size % TILE == 0 && pv.page_size % TILE == 0;
    auto tile_base = [&](const page_view& view, int base) -> const std::byte* {
        // base % TILE == 0 and page_size % TILE == 0: the whole tile is in base's page.
        const int page = view.block_table[std::size_t(seq) * view.pages_per_sequence +
                                          base / view.page_size];
        return view.pool + (std::size_t(page) * view.page_size + base % view.page_size) *
                               view.record_bytes;
    };
    auto load_tile = [&](int base, tile_regs& r) {
        const std::byte* kbase = page_tiles ? tile_base(pk, base) : nullptr;
        const std::byte* vbase = page_tiles ? tile_base(pv, base) : nullptr;
        auto record = [&](const page_view& view, const std::byte* tile, int i) {
            return page_tiles ? tile + std::size_t(i) * view.record_bytes
                              : view.record(seq, base + i);
        };
#pragma unroll
        for (int r2 = 0; r2 < 2; ++r2) {
            const int i = g + 8 * r2;
            if (base + i < end) {
                const std::byte* rec = record(pk, kbase, i);
                const std::byte* src = rec + head_bytes + 16 * t * sizeof(E);
#pragma unroll
                for (int w = 0; w < KW; w += LOADW) {
                    // word w of the lane: 64-block w / (KW / (HEAD_DIM / 64)), piece within it
                    constexpr int WPB = KW / (HEAD_DIM / 64);  // words per 64-block
                    const int blk = w / WPB, in = w % WPB;
                    const load_t x = *reinterpret_cast<const load_t*>(
                        src + std::size_t(64 * blk) * sizeof(E) + 4 * in);
                    std::memcpy(&r.k[r2][w], &x, sizeof x);
                }
                if constexpr (QUANT) r.kso[r2] = *reinterpret_cast<const float2*>(rec + p.header_bytes);
            } else {
#pragma unroll
                for (int w = 0; w < KW; ++w) r.k[r2][w] = 0u;
                if constexpr (QUANT) r.kso[r2] = make_float2(0.f, 0.f);
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int i = 2 * t + (j & 1) + 8 * (j >> 1);
            if (base + i < end) {
                const std::byte* rec = record(pv, vbase, i);
                const std::byte* src = rec + head_bytes + std::size_t(g) * DPL * sizeof(E);
#pragma unroll
                for (int w = 0; w < VW; w += LOADW) {
                    const load_t x = *reinterpret_cast<const load_t*>(src + 4 * w);
                    std::memcpy(&r.v[j][w], &x, sizeof x);
                }
                if constexpr (QUANT) r.vso[j] = *reinterpret_cast<const float2*>(rec + p.header_bytes);
            } else {
#pragma unroll
                for (int w = 0; w < VW; ++w) r.v[j][w] = 0u;
                if constexpr (QUANT) r.vso[j] = make_float2(0.f, 0.f);
            }
        }
    };

    float o[KSTEPS][4];  // Oᵀ m-tile j: (dim DPL·g + 2j: heads 2t, 2t+1), (dim + 1: same heads)
#pragma unroll
    for (int j = 0; j < KSTEPS; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY;  // running maxima of heads 2t, 2t + 1 (log2 units)
    float l0 = 0.f, l1 = 0.f;              // this lane's share of the sums of exponentials

    auto compute_tile = [&](int base, const tile_regs& r) {
        // fp16 words of K (tokens g, g + 8) and V (4 tokens), dequantized when int8.
        constexpr int KH = HEAD_DIM / 8;  // half2 words per K token per lane
        constexpr int VH = DPL / 2;
        std::uint32_t kh[2][KH], vh[4][VH];
        if constexpr (QUANT) {
#pragma unroll
            for (int r2 = 0; r2 < 2; ++r2) {
                const __half2 sc = __float2half2_rn(r.kso[r2].x);
                const __half2 of = __float2half2_rn(r.kso[r2].y + 0.5f * r.kso[r2].x);
#pragma unroll
                for (int w = 0; w < KW; ++w) dequant_int8x4(r.k[r2][w], sc, of, kh[r2][2 * w], kh[r2][2 * w + 1]);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const __half2 sc = __float2half2_rn(r.vso[j].x);
                const __half2 of = __float2half2_rn(r.vso[j].y + 0.5f * r.vso[j].x);
#pragma unroll
                for (int w = 0; w < VW; ++w) dequant_int8x4(r.v[j][w], sc, of, vh[j][2 * w], vh[j][2 * w + 1]);
            }
        } else {
#pragma unroll
            for (int r2 = 0; r2 < 2; ++r2)
#pragma unroll
                for (int w = 0; w < KH; ++w) kh[r2][w] = r.k[r2][w];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int w = 0; w < VH; ++w) vh[j][w] = r.v[j][w];
        }

        // Sᵀ = K Qᵀ: rows tokens g / g + 8, columns heads 2t / 2t + 1.
        float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int k = 0; k < KSTEPS; ++k)
            mma_16816(s, kh[0][2 * k], kh[1][2 * k], kh[0][2 * k + 1], kh[1][2 * k + 1], qf[k][0],
                      qf[k][1]);
        if (base + g >= end) s[0] = s[1] = -INFINITY;
        if (base + g + 8 >= end) s[2] = s[3] = -INFINITY;

        // Online softmax per head column; the tile's first token is always valid, so the new
        // maximum is finite and exp2(-inf - finite) = 0 handles the first tile.
        float x0 = fmaxf(s[0], s[2]), x1 = fmaxf(s[1], s[3]);
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
            x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, off));
            x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, off));
        }
        const float n0 = fmaxf(m0, x0), n1 = fmaxf(m1, x1);
        const float f0 = exp2f(m0 - n0), f1 = exp2f(m1 - n1);
        m0 = n0;
        m1 = n1;
        const float p0 = exp2f(s[0] - n0), p1 = exp2f(s[1] - n1);
        const float p2 = exp2f(s[2] - n0), p3 = exp2f(s[3] - n1);
        l0 = l0 * f0 + p0 + p2;
        l1 = l1 * f1 + p1 + p3;
#pragma unroll
        for (int j = 0; j < KSTEPS; ++j) {
            o[j][0] *= f0;
            o[j][1] *= f1;
            o[j][2] *= f0;
            o[j][3] *= f1;
        }
        // Pᵀ fragment (tokens × heads) → B operand (head g; tokens 2t, 2t+1 | 2t+8, 2t+9).
        const std::uint32_t pb0 = transpose_8x8(pack_half2(p0, p1));
        const std::uint32_t pb1 = transpose_8x8(pack_half2(p2, p3));

        // Oᵀ += Vᵀ Pᵀ: m-tile j rows = dims DPL·g + 2j (row g) and + 1 (row g + 8).
#pragma unroll
        for (int j = 0; j < KSTEPS; ++j) {
            const std::uint32_t a0 = __byte_perm(vh[0][j], vh[1][j], 0x5410);
            const std::uint32_t a1 = __byte_perm(vh[0][j], vh[1][j], 0x7632);
            const std::uint32_t a2 = __byte_perm(vh[2][j], vh[3][j], 0x5410);
            const std::uint32_t a3 = __byte_perm(vh[2][j], vh[3][j], 0x7632);
            mma_16816(o[j], a0, a1, a2, a3, pb0, pb1);
        }
    };

    // Warp w takes tiles begin + 16 (w + NW i); the next tile loads while this one computes.
    int base = begin + TILE * warp;
    tile_regs cur;
    if (base < end) load_tile(base, cur);
    for (; base < end; base += TILE * NW) {
        tile_regs next;
        if (base + TILE * NW < end) load_tile(base + TILE * NW, next);
        compute_tile(base, cur);
        cur = next;
    }

    // This warp's sums over its lanes g (the maxima are already uniform over g).
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const int h0 = 2 * t, h1 = 2 * t + 1;
    if (g == 0) {
        sh_m[warp][h0] = m0;
        sh_m[warp][h1] = m1;
        sh_l[warp][h0] = l0;
        sh_l[warp][h1] = l1;
    }
#pragma unroll
    for (int j = 0; j < KSTEPS; ++j) {
        const int d = DPL * g + 2 * j;
        if (h0 < GQA) {
            sh_o[warp][h0][d] = o[j][0];
            sh_o[warp][h0][d + 1] = o[j][2];
        }
        if (h1 < GQA) {
            sh_o[warp][h1][d] = o[j][1];
            sh_o[warp][h1][d + 1] = o[j][3];
        }
    }
    __syncthreads();

    // Merge the warps: a warp that saw no tile has m = -inf and weight 0; warp 0 always saw one.
    constexpr float ln2 = 0.6931471805599453f;
    for (int idx = int(threadIdx.x); idx < GQA * HEAD_DIM; idx += direct_mma_threads) {
        const int h = idx / HEAD_DIM, i = idx % HEAD_DIM;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < NW; ++w) mx = fmaxf(mx, sh_m[w][h]);
        float acc = 0.f;
#pragma unroll
        for (int w = 0; w < NW; ++w) acc += exp2f(sh_m[w][h] - mx) * sh_o[w][h][i];
        const std::size_t row = std::size_t(b) * p.n_heads + std::size_t(kvh) * GQA + h;
        p.part_acc[(row * p.max_splits + split) * HEAD_DIM + i] = acc;
    }
    for (int h = int(threadIdx.x); h < GQA; h += direct_mma_threads) {
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < NW; ++w) mx = fmaxf(mx, sh_m[w][h]);
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < NW; ++w) sum += exp2f(sh_m[w][h] - mx) * sh_l[w][h];
        const std::size_t row = std::size_t(b) * p.n_heads + std::size_t(kvh) * GQA + h;
        p.part_ml[(row * p.max_splits + split) * 2] = mx * ln2;  // natural-log units for combine
        p.part_ml[(row * p.max_splits + split) * 2 + 1] = sum;
    }
}

/// Launches the tensor-core direct kernel and the combine step for HEAD_DIM and GQA query heads
/// per KV head (the caller checked that the codec and shape qualify).
template <class Codec, int HEAD_DIM, int GQA>
void launch_direct_mma(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                       float scale, attention_workspace& ws, cudaStream_t stream) {
    using E = typename device::codec_traits<Codec>::element;
    // The chunk that finishes soonest with direct_mma_ctas_per_sm CTAs per multiprocessor (the
    // tuning knob overrides it): waves × (chunk + 3 rounds of overhead), chunks whole rounds of
    // the 4 warps' 16-token tiles. A plain target of 2 CTAs per SM gave 5 splits at batch 8 and
    // 2k-4k tokens (320 CTAs, two waves of 264 on an H100); 4 splits (one wave) ran 9-20% faster
    // there, and this rule ran within 3.2% of the fastest swept chunk at batch 1, 8 and 32 from
    // 512 to 32k tokens (decode_bench --direct-chunk, docs/results/decode-ab-2026-12-06.md).
    constexpr int round_tokens = direct_mma_tile * (direct_mma_threads / 32);
    const int ctas_per_sm =
        ws.tune.direct_ctas_per_sm > 0 ? ws.tune.direct_ctas_per_sm : direct_mma_ctas_per_sm;
    const split_plan plan = plan_splits_by_waves(
        p.batch * cache.n_kv_heads, p.max_kv_length, long(ws.sm_count()) * ctas_per_sm,
        direct_mma_max_chunk, round_tokens, 3 * round_tokens, ws.tune.direct_chunk);
    const std::size_t rows = std::size_t(p.batch) * p.n_heads * plan.splits;
    const int header = int(pad_record_bytes(std::size_t(cache.group_width()) * sizeof(E)));
    direct_params dp{cache.slots, cache.read_slots, p.q, p.sequences, p.kv_lengths,
                     ws.partial_acc(rows * HEAD_DIM), ws.partial_ml(rows * 2), p.layer,
                     p.n_heads, cache.heads_per_group, cache.groups_per_layer, plan.chunk,
                     plan.splits, header, scale};
    const dim3 grid = gpu::checked_grid(plan.splits, p.batch, cache.n_kv_heads,
                                         "direct_mma_attention_kernel");
    gpu::launch(direct_mma_attention_kernel<Codec, HEAD_DIM, GQA>,
                {grid, dim3(direct_mma_threads), 0, stream, ws.overlap_launches()},
                "direct_mma_attention_kernel", dp);
    launch_merge(merge_params{dp.part_acc, dp.part_ml, p.kv_lengths, p.out, p.batch, p.n_heads,
                              /*width=*/HEAD_DIM, plan.chunk, plan.splits,
                              /*acc_stride=*/HEAD_DIM},
                 ws, stream, "combine_kernel");
}

/// Decode path policy (see decode_attention.cuh): f16 and int8 identity heads on tensor cores.
struct direct_tensor_cores_policy {
    static constexpr decode_path path = decode_path::direct_tensor_cores;
    template <class Codec>
    static constexpr bool accepts = direct_mma_codec<Codec>::value;
    /// The (head_dim, GQA) pairs the kernel is built for: one m16n8k16 column block of heads
    /// (GQA <= 8), and the query fragments of head_dim <= 128 in registers.
    template <int HEAD_DIM, int GQA>
    static constexpr bool instantiated = HEAD_DIM <= 128 && GQA >= direct_mma_min_gqa;

    template <class Codec>
    static bool supported(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                          attention_workspace&) {
        if (p.rope == rope_mode::on_read) return false;
        if (!aligned4(p.q)) return false;  // 4 elements per load
        bool built = false;
        dispatch_head_dim(cache.head_dim, [&]<int HEAD_DIM>() {
            dispatch_gqa(p.n_heads / cache.n_kv_heads,
                         [&]<int GQA>() { built = instantiated<HEAD_DIM, GQA>; });
        });
        return built;
    }

    /// The tensor-core kernel for (head_dim, GQA), then the merge.
    template <class Codec>
    static void run(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                    attention_workspace& ws, cudaStream_t stream) {
        const float scale = softmax_scale(p, cache.head_dim);
        dispatch_head_dim(cache.head_dim, [&]<int HEAD_DIM>() {
            dispatch_gqa(p.n_heads / cache.n_kv_heads, [&]<int GQA>() {
                if constexpr (instantiated<HEAD_DIM, GQA>)
                    launch_direct_mma<Codec, HEAD_DIM, GQA>(cache, p, scale, ws, stream);
            });
        });
    }
};

}  // namespace kvcar::kernels::detail
