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
// The split kernel (one CTA of 8 warps per (split of `chunk` tokens, item)):
//   * Qz of all heads (fp16, padded to a multiple of 16 rows) sits in shared memory;
//   * tiles of 32 tokens of Z stream through a ring of `stages` shared-memory buffers filled by
//     cp.async, K tiles first, then V tiles, so V loads are already in flight while the softmax
//     runs. f16 latents land in the fp16 tile directly; int8 / fp8 records land raw and are
//     converted to fp16 in shared memory (K: the raw element values u, exact in fp16, with the
//     record's scale and offset applied to the fp32 score, s = scale·(Qz·u) + offset·ΣQz;
//     V: the dequantized value u·scale + offset rounded to fp16);
//   * S = Qz · Zᵀ by WMMA 16×16×16 (fp16 in, fp32 accumulate), warps over (head block, token
//     block, slice of d), partial slices summed in the softmax pass;
//   * softmax over the whole split in shared memory: with every score of the split known before
//     the first V tile, no running maximum and no rescaling of the accumulators is needed (the
//     combine step merges splits as the other paths do);
//   * Acc += P · Z_v by WMMA, the accumulators in fragments: warp w owns the d-columns
//     w, w + 8, … for every head block;
//   * the unnormalized Acc, the split's maximum and sum go to the same partial buffers as the
//     other paths.
// Around it: a projection kernel computes Qz (fp16), bias and ΣQz for a block of items per head,
// reading each head's rows of P once per 16 items, and a combine kernel merges the splits and
// lifts P_h z̄ + μ_h for 16 items per head, again reading P_h once per 16 items.
//
// Limits (the dispatcher in decode_attention.cuh falls back to the generic path outside them):
// codec a linear_codec<f16>, or a linear codec under quantized_codec with int8 or fp8 e4m3
// latents; the group is the whole layer (heads_per_group == n_kv_heads); no RoPE on read; at most
// 64 query heads; d up to max_latent_width (1024) with (d rounded up to 16) / 16 / 8 column blocks
// per warp fitting the register budget (d <= 1024 for <= 32 heads, d <= 512 for <= 64 heads);
// shared memory for at least one tile of 32 tokens. Any d works; d a multiple of 8 (f16) lets
// each record be fetched in 16-byte pieces, other widths are zero-padded to 16 on the way in.
// Precision: Qz, Z (f16 latents are exact) and the probabilities are fp16 operands with fp32
// accumulation, as in flash attention; dequantized V latents must fit fp16 (|z| < 65504).
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
#include <mma.h>

#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/linear.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/device/affine.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/kernels/decode_attention.cuh"
#include "kvcar/numeric.hpp"

namespace kvcar::kernels {

/// Codecs the tensor-core latent path reads: a linear codec with f16 latents, or a linear codec
/// whose latents are quantized to int8 or fp8 e4m3 (all three convert to fp16 exactly).
template <class Codec>
concept latent_tensor_core_codec =
    device::linear_core_codec<Codec> &&
    (std::same_as<typename device::codec_traits<Codec>::element, f16> ||
     std::same_as<typename device::codec_traits<Codec>::element, std::int8_t> ||
     std::same_as<typename device::codec_traits<Codec>::element, fp8_e4m3>);

namespace detail::latent_tc {

inline constexpr int threads = 256;
inline constexpr int warps = threads / 32;
inline constexpr int tile = 32;            // tokens per staged tile (two 16-token MMA blocks)
inline constexpr int token_blocks = tile / 16;
inline constexpr int max_heads = 64;
inline constexpr int max_chunk = 512;
inline constexpr int max_stages = 8;
/// Bytes of tiles a CTA keeps in flight: about DRAM latency × a multiprocessor's share of the
/// bandwidth (1 µs × 4.2 TB/s / 132), with margin.
inline constexpr int inflight_bytes = 48 * 1024;
inline constexpr int items_per_block = 16;  // projection and lift: items sharing one read of P_h
inline constexpr int aux_threads = 128;

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

/// Shared-memory layout of the split kernel; the same function sizes it on the host and carves
/// it on the device. Every region is 128-byte aligned (WMMA pointers need 32 bytes).
struct smem_layout {
    int q_ld = 0, t_ld = 0, s_ld = 0, p_ld = 0;  // row strides: halves, halves, floats, halves
    int qz = 0, ring = 0, half_tile = 0, scores = 0, probs = 0, vectors = 0;  // byte offsets
    int stage_bytes = 0;  // one ring buffer
    int total = 0;
};

/// `lat_pad`: widest latent rounded up to 16; `raw_ld`: bytes per raw record row (quantized).
__host__ __device__ inline smem_layout make_layout(int heads_pad, int lat_pad, int chunk,
                                                   int stages, int raw_ld, bool quantized) {
    smem_layout L;
    L.q_ld = lat_pad + 8;  // +16 bytes: rows of a 16×16 fragment fall in different bank quads
    L.t_ld = lat_pad + 8;
    L.s_ld = chunk + 4;
    L.p_ld = chunk + 8;
    L.stage_bytes = quantized ? tile * raw_ld : tile * L.t_ld * 2;
    int off = 0;
    L.qz = off;
    off += round_up(heads_pad * L.q_ld * 2, 128);
    L.ring = off;
    off += round_up(stages * L.stage_bytes, 128);
    L.half_tile = L.ring;
    if (quantized) {
        L.half_tile = off;
        off += round_up(tile * L.t_ld * 2, 128);
    }
    // Score partials: (warps / token_blocks) slices of d × 16-row head blocks = 64 rows for any
    // head count; reused as the epilogue's per-warp 16×16 staging (8 KB <= 64 × 36 floats).
    L.scores = off;
    off += round_up(warps / token_blocks * 16 * L.s_ld * 4, 128);
    L.probs = off;
    off += round_up(heads_pad * L.p_ld * 2, 128);
    L.vectors = off;  // K scale[chunk], K offset[chunk], bias, ΣQz, m, l [heads_pad each]
    off += (2 * chunk + 4 * heads_pad) * 4;
    L.total = round_up(off, 128);
    return L;
}

template <class Codec>
struct split_params {
    device::cache_view<Codec> cache;
    const __half* qz;    // [batch][n_heads][qz_ld], columns >= d_k are zero
    const float* qbias;  // [batch][n_heads]
    const std::int32_t* sequences;
    const std::int32_t* kv_lengths;
    float* part_acc;  // [batch][n_heads][max_splits][acc_stride]
    float* part_ml;   // [batch][n_heads][max_splits][2]
    int layer, n_heads, chunk, max_splits, acc_stride, qz_ld;
    int stages, lat_pad, raw_ld;
    float scale;
};

__device__ inline void cp_async16(void* dst, const void* src) {
    const unsigned s = unsigned(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
}
__device__ inline void cp_async8(void* dst, const void* src) {
    const unsigned s = unsigned(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(src));
}
__device__ inline void cp_async4(void* dst, const void* src) {
    const unsigned s = unsigned(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src));
}
/// Two floats → one 32-bit word of two fp16 (round to nearest), low half first.
__device__ inline unsigned pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    unsigned u;
    memcpy(&u, &h, 4);
    return u;
}

__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
/// Waits until at most `pending` groups are in flight (the ring depth is a run-time value).
__device__ inline void cp_async_wait_dyn(int pending) {
    switch (pending) {
        case 0: cp_async_wait<0>(); break;
        case 1: cp_async_wait<1>(); break;
        case 2: cp_async_wait<2>(); break;
        case 3: cp_async_wait<3>(); break;
        case 4: cp_async_wait<4>(); break;
        case 5: cp_async_wait<5>(); break;
        default: cp_async_wait<6>(); break;
    }
}

/// Where a quantized record's scale and offset start (0 for plain records).
template <class Codec>
__device__ int scale_offset_bytes(const Codec& c) {
    if constexpr (device::codec_traits<Codec>::quantized) {
        return int(c.scale_offset_bytes());
    } else {
        return 0;
    }
}

/// One CTA: split blockIdx.x of item blockIdx.y, all heads. MT: 16-row head blocks (1, 2, 4);
/// NCOL: most 16-wide d-column blocks a warp accumulates.
template <class Codec, int MT, int NCOL>
__global__ void __launch_bounds__(threads, 1) split_kernel(split_params<Codec> p) {
    namespace wmma = nvcuda::wmma;
    using E = typename device::codec_traits<Codec>::element;
    constexpr bool QUANT = device::codec_traits<Codec>::quantized;
    constexpr int NQP = 16 * MT;
    constexpr int KS = warps / (MT * token_blocks);  // slices of d per score fragment
    static_assert(KS >= 1 && KS * MT * token_blocks == warps, "warps cover the score tile");
    extern __shared__ __align__(128) unsigned char smem[];

    const int split = int(blockIdx.x), b = int(blockIdx.y);
    const int len = p.kv_lengths[b];
    const int begin = split * p.chunk;
    if (begin >= len) return;  // uniform across the block
    const int end = min(len, begin + p.chunk);
    const int n_tok = end - begin;
    const int n_tiles = (n_tok + tile - 1) / tile;
    const int seq = p.sequences[b];
    const int NQ = p.n_heads;
    const auto& cache = p.cache;
    const int slot_k = cache.slot(p.layer, 0, kv_kind::key);
    const int slot_v = cache.slot(p.layer, 0, kv_kind::value);
    const Codec ck = cache.codecs[slot_k];
    const Codec cv = cache.codecs[slot_v];
    const page_view pk = cache.slots[slot_k];
    const page_view pv = cache.slots[slot_v];
    const int dk = int(ck.latent_width()), dv = int(cv.latent_width());
    const int dk16 = (dk + 15) / 16, dv16 = (dv + 15) / 16;
    const int header_k = scale_offset_bytes(ck), header_v = scale_offset_bytes(cv);
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;

    const smem_layout L = make_layout(NQP, p.lat_pad, p.chunk, p.stages, p.raw_ld, QUANT);
    __half* qz_s = reinterpret_cast<__half*>(smem + L.qz);
    unsigned char* ring = smem + L.ring;
    __half* half_tile = reinterpret_cast<__half*>(smem + L.half_tile);
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    __half* probs = reinterpret_cast<__half*>(smem + L.probs);
    float* k_scale = reinterpret_cast<float*>(smem + L.vectors);
    float* k_offset = k_scale + p.chunk;
    float* bias_s = k_offset + p.chunk;
    float* qsum_s = bias_s + NQP;
    float* m_s = qsum_s + NQP;
    float* l_s = m_s + NQP;

    // --- Qz (fp16) of every head; padded rows are zero, so their scores are 0 and unused -----
    {
        const int pieces = p.lat_pad / 8;  // 16-byte pieces per row
        for (int idx = tid; idx < NQP * pieces; idx += threads) {
            const int h = idx / pieces, c = idx - (idx / pieces) * pieces;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (h < NQ)
                v = *reinterpret_cast<const uint4*>(
                    p.qz + (std::size_t(b) * NQ + h) * p.qz_ld + std::size_t(c) * 8);
            *reinterpret_cast<uint4*>(qz_s + h * L.q_ld + c * 8) = v;
        }
        for (int h = tid; h < NQP; h += threads)
            bias_s[h] = h < NQ ? p.qbias[std::size_t(b) * NQ + h] : 0.0f;
    }
    if constexpr (QUANT) {
        // ΣQz of the fp16 Qz the score products use (zero rows and columns add nothing); the
        // tile loop's first barrier orders these writes before the first score.
        __syncthreads();
        for (int h = warp; h < NQP; h += warps) {
            float sum = 0.0f;
            for (int j = lane; j < p.lat_pad; j += 32) sum += __half2float(qz_s[h * L.q_ld + j]);
            sum = device::warp_sum(sum);
            if (lane == 0) qsum_s[h] = sum;
        }
    }

    // --- the tile stream: tiles 0 .. n_tiles-1 are K, n_tiles .. 2·n_tiles-1 are V -----------
    const int total = 2 * n_tiles;
    auto issue = [&](int i) {
        if (i >= total) return;
        const bool is_v = i >= n_tiles;
        const int t0 = begin + (is_v ? i - n_tiles : i) * tile;
        const int n = min(tile, end - t0);
        // A copy: a reference to either would put both page views in local memory.
        const page_view view = is_v ? pv : pk;
        const int d = is_v ? dv : dk;
        unsigned char* dst = ring + std::size_t(i % p.stages) * L.stage_bytes;
        const int rb = int(view.record_bytes);
        if constexpr (QUANT) {
            // Whole records (elements, padding, scale, offset) in the widest aligned pieces.
            const int piece = rb % 16 == 0 ? 16 : rb % 8 == 0 ? 8 : 4;
            const int per_row = rb / piece;
            for (int idx = tid; idx < n * per_row; idx += threads) {
                const int r = idx / per_row, c = idx - (idx / per_row) * per_row;
                const std::byte* src = view.record(seq, t0 + r) + std::size_t(c) * piece;
                unsigned char* to = dst + r * p.raw_ld + c * piece;
                if (piece == 16) cp_async16(to, src);
                else if (piece == 8) cp_async8(to, src);
                else cp_async4(to, src);
            }
        } else {
            __half* t = reinterpret_cast<__half*>(dst);
            const int d_pad = (d + 15) / 16 * 16;
            if (d % 8 == 0 && rb % 16 == 0) {
                const int per_row = d / 8;
                for (int idx = tid; idx < n * per_row; idx += threads) {
                    const int r = idx / per_row, c = idx - (idx / per_row) * per_row;
                    cp_async16(t + r * L.t_ld + c * 8,
                               view.record(seq, t0 + r) + std::size_t(c) * 16);
                }
            } else {
                // Unaligned widths: plain 2-byte loads (correct, not fast).
                for (int idx = tid; idx < n * d; idx += threads) {
                    const int r = idx / d, j = idx - (idx / d) * d;
                    const f16 e = reinterpret_cast<const f16*>(view.record(seq, t0 + r))[j];
                    t[r * L.t_ld + j] = __ushort_as_half(e.bits);
                }
            }
            // Zero what the MMAs read beyond the data: columns d .. d_pad of the rows loaded,
            // every column of rows n .. tile (a 0 probability times garbage could be NaN).
            for (int idx = tid; idx < n * (d_pad - d); idx += threads) {
                const int r = idx / (d_pad - d), j = d + idx % (d_pad - d);
                t[r * L.t_ld + j] = __float2half_rn(0.0f);
            }
            const int pieces = d_pad / 8;
            for (int idx = tid; idx < (tile - n) * pieces; idx += threads) {
                const int r = n + idx / pieces, c = idx - (idx / pieces) * pieces;
                *reinterpret_cast<uint4*>(t + r * L.t_ld + c * 8) = make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };

    // Quantized: raw records of tile i → fp16 tile (K: raw values and per-token scale/offset
    // for the score; V: dequantized). Columns beyond d and rows beyond n become zero.
    auto convert = [&](int i) {
        const bool is_v = i >= n_tiles;
        const int tt = is_v ? i - n_tiles : i;
        const int n = min(tile, end - (begin + tt * tile));
        const int d = is_v ? dv : dk;
        const int header = is_v ? header_v : header_k;
        const unsigned char* raw = ring + std::size_t(i % p.stages) * L.stage_bytes;
        const int groups = (d + 15) / 16 * 2;  // 8 elements each
        for (int idx = tid; idx < tile * groups; idx += threads) {
            const int r = idx / groups, g = idx - (idx / groups) * groups;
            const int j0 = g * 8;
            float v[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] = 0.0f;
            if (r < n) {
                const unsigned char* row = raw + r * p.raw_ld;
                float sc = 1.0f, of = 0.0f;
                if (is_v) {
                    sc = *reinterpret_cast<const float*>(row + header);
                    of = *reinterpret_cast<const float*>(row + header + 4);
                } else if (g == 0) {
                    k_scale[tt * tile + r] = *reinterpret_cast<const float*>(row + header);
                    k_offset[tt * tile + r] = *reinterpret_cast<const float*>(row + header + 4);
                }
                if (j0 + 8 <= d) {
                    const uint2 bytes = *reinterpret_cast<const uint2*>(row + j0);
                    E el[8];
                    memcpy(el, &bytes, 8);
#pragma unroll
                    for (int e = 0; e < 8; ++e) v[e] = device::load_float(el[e]) * sc + of;
                } else {
                    const E* el = reinterpret_cast<const E*>(row);
#pragma unroll
                    for (int e = 0; e < 8; ++e)
                        if (j0 + e < d) v[e] = device::load_float(el[j0 + e]) * sc + of;
                }
            }
            *reinterpret_cast<uint4*>(half_tile + r * L.t_ld + j0) =
                make_uint4(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]),
                           pack_half2(v[4], v[5]), pack_half2(v[6], v[7]));
        }
    };

    // --- softmax over the split: scores → fp16 probabilities, m and l per head ---------------
    auto softmax = [&]() {
        const int n_pad = n_tiles * tile;
        for (int h = warp; h < NQP; h += warps) {
            __half* ph = probs + h * L.p_ld;
            if (h >= NQ) {
                for (int t = lane; t < n_pad; t += 32) ph[t] = __float2half_rn(0.0f);
                continue;
            }
            float* s0 = scores + h * L.s_ld;
            float m = -INFINITY;
            for (int t = lane; t < n_tok; t += 32) {
                float s = 0.0f;
#pragma unroll
                for (int ks = 0; ks < KS; ++ks) s += scores[(ks * NQP + h) * L.s_ld + t];
                if constexpr (QUANT) s = s * k_scale[t] + k_offset[t] * qsum_s[h];
                s = (s + bias_s[h]) * p.scale;
                s0[t] = s;
                m = fmaxf(m, s);
            }
            m = device::warp_max(m);
            float l = 0.0f;
            for (int t = lane; t < n_pad; t += 32) {
                const __half e = __float2half_rn(t < n_tok ? ::expf(s0[t] - m) : 0.0f);
                ph[t] = e;
                l += __half2float(e);  // the weights the MMA uses, so that Σ a = 1 exactly
            }
            l = device::warp_sum(l);
            if (lane == 0) {
                m_s[h] = m;
                l_s[h] = l;
            }
        }
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[MT][NCOL];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int c = 0; c < NCOL; ++c) wmma::fill_fragment(acc[m][c], 0.0f);

    for (int s = 0; s < p.stages - 1; ++s) {
        issue(s);
        cp_async_commit();
    }
    for (int i = 0; i < total; ++i) {
        cp_async_wait_dyn(p.stages - 2);  // tile i has landed (for this thread's copies)
        __syncthreads();                  // ... for everyone's; buffer (i-1) % stages is free
        issue(i + p.stages - 1);
        cp_async_commit();
        const bool is_v = i >= n_tiles;
        const int tt = is_v ? i - n_tiles : i;
        const __half* t;
        if constexpr (QUANT) {
            convert(i);
            t = half_tile;
        } else {
            t = reinterpret_cast<const __half*>(ring + std::size_t(i % p.stages) * L.stage_bytes);
        }
        if (i == n_tiles) softmax();  // every score of the split was stored before the barrier
        if (QUANT || i == n_tiles) __syncthreads();

        if (!is_v) {
            // S[m-block][n-block] over the d-slice kk ≡ ks (mod KS).
            const int unit = warp % (MT * token_blocks), ks = warp / (MT * token_blocks);
            const int m = unit % MT, n = unit / MT;
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bk;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
            wmma::fill_fragment(s, 0.0f);
            for (int kk = ks; kk < dk16; kk += KS) {
                wmma::load_matrix_sync(a, qz_s + m * 16 * L.q_ld + kk * 16, L.q_ld);
                wmma::load_matrix_sync(bk, t + n * 16 * L.t_ld + kk * 16, L.t_ld);
                wmma::mma_sync(s, a, bk, s);
            }
            wmma::store_matrix_sync(scores + (ks * NQP + m * 16) * L.s_ld + tt * tile + n * 16, s,
                                    L.s_ld, wmma::mem_row_major);
        } else {
#pragma unroll
            for (int kk = 0; kk < token_blocks; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[MT];
#pragma unroll
                for (int m = 0; m < MT; ++m)
                    wmma::load_matrix_sync(a[m], probs + m * 16 * L.p_ld + tt * tile + kk * 16,
                                           L.p_ld);
#pragma unroll
                for (int c = 0; c < NCOL; ++c) {
                    const int n = warp + c * warps;
                    if (n < dv16) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> bv;
                        wmma::load_matrix_sync(bv, t + kk * 16 * L.t_ld + n * 16, L.t_ld);
#pragma unroll
                        for (int m = 0; m < MT; ++m) wmma::mma_sync(acc[m][c], a[m], bv, acc[m][c]);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();

    // --- epilogue: fragments → 16×16 staging per warp (the dead score buffer) → partials -----
    float* stage = scores + warp * 256;
#pragma unroll
    for (int c = 0; c < NCOL; ++c) {
        const int n = warp + c * warps;
        if (n >= dv16) continue;
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            wmma::store_matrix_sync(stage, acc[m][c], 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                const int h = m * 16 + e / 16, col = n * 16 + e % 16;
                if (h < NQ && col < dv) {
                    const std::size_t row = std::size_t(b) * NQ + h;
                    p.part_acc[(row * p.max_splits + split) * p.acc_stride + col] = stage[e];
                }
            }
            __syncwarp();
        }
    }
    for (int h = tid; h < NQ; h += threads) {
        const std::size_t row = std::size_t(b) * NQ + h;
        p.part_ml[(row * p.max_splits + split) * 2] = m_s[h];
        p.part_ml[(row * p.max_splits + split) * 2 + 1] = l_s[h];
    }
}

/// Qz = P_hᵀ q (fp16, zero beyond d_k up to qz_ld) for head blockIdx.x, items blockIdx.y · BB …
/// and latent columns blockIdx.z · aux_threads …; bias = q · μ_h from the blocks of column block
/// 0. Each element of P_h is read once per BB items; the column blocks spread the projection
/// over enough CTAs to fill the GPU (one CTA per head and item block left most of it idle).
/// ΣQz of quantized codecs is summed by the split kernel from the fp16 Qz it multiplies.
template <class Codec, int BB>
__global__ void __launch_bounds__(aux_threads)
    project_kernel(device::cache_view<Codec> cache, const float* q, __half* qz, float* qbias,
                   int layer, int batch, int n_heads, int heads_per_kv, int qz_ld) {
    extern __shared__ __align__(16) float q_s[];  // [BB][head_dim]
    const int h = int(blockIdx.x), b0 = int(blockIdx.y) * BB;
    const int nb = min(BB, batch - b0);
    const int hd = cache.head_dim;
    const int kvh = h / heads_per_kv;  // whole-layer group: the KV head's rows inside P
    const Codec ck = cache.codecs[cache.slot(layer, 0, kv_kind::key)];
    const auto& lin = device::core_of(ck);
    const int d = lin.rank;
    const int first = kvh * hd;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    for (int idx = tid; idx < BB * hd; idx += aux_threads) {
        const int bb = idx / hd, r = idx - (idx / hd) * hd;
        q_s[idx] = bb < nb ? q[(std::size_t(b0 + bb) * n_heads + h) * hd + r] : 0.0f;
    }
    __syncthreads();
    const int j = int(blockIdx.z) * aux_threads + tid;
    if (j < qz_ld) {
        float acc[BB];
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) acc[bb] = 0.0f;
        if (j < d) {
            const float* col = lin.basis + std::size_t(first) * d + j;
#pragma unroll 4
            for (int r = 0; r < hd; ++r) {
                const float w = col[std::size_t(r) * d];  // coalesced over j
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) acc[bb] += w * q_s[bb * hd + r];
            }
        }
#pragma unroll
        for (int bb = 0; bb < BB; ++bb)
            if (bb < nb)
                qz[(std::size_t(b0 + bb) * n_heads + h) * qz_ld + j] = __float2half_rn(acc[bb]);
    }
    if (blockIdx.z == 0) {
        for (int bb = warp; bb < nb; bb += aux_threads / 32) {
            float bias = 0.0f;
            for (int r = lane; r < hd; r += 32) bias += q_s[bb * hd + r] * lin.mean[first + r];
            bias = device::warp_sum(bias);
            if (lane == 0) qbias[std::size_t(b0 + bb) * n_heads + h] = bias;
        }
    }
}

inline constexpr int lift_threads = 256;
inline constexpr int lift_rows_per_block = 32;  // 4 rows of P_h per warp

/// out = P_h z̄ + μ_h for head blockIdx.x, items blockIdx.y · BB … and output rows
/// blockIdx.z · lift_rows_per_block …, from the merged latents z̄ [batch][n_heads][zbar_stride]
/// (combine_kernel's output; μ only for items that saw a token). A warp per row of P_h: its
/// lanes read the row once, coalesced, for all BB items, whose z̄ sit in shared memory.
template <class Codec, int BB>
__global__ void __launch_bounds__(lift_threads)
    lift_kernel(device::cache_view<Codec> cache, const float* zbar, int zbar_stride,
                const std::int32_t* kv_lengths, float* out, int layer, int batch, int n_heads,
                int heads_per_kv) {
    extern __shared__ __align__(16) float z_s[];  // [BB][d]
    const int h = int(blockIdx.x), b0 = int(blockIdx.y) * BB;
    const int nb = min(BB, batch - b0);
    const int hd = cache.head_dim;
    const int kvh = h / heads_per_kv;
    const Codec cv = cache.codecs[cache.slot(layer, 0, kv_kind::value)];
    const auto& lin = device::core_of(cv);
    const int d = lin.rank;
    const int first = kvh * hd;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    for (int idx = tid; idx < BB * d; idx += lift_threads) {
        const int bb = idx / d, j = idx - (idx / d) * d;
        z_s[idx] = bb < nb ? zbar[(std::size_t(b0 + bb) * n_heads + h) * zbar_stride + j] : 0.0f;
    }
    __syncthreads();
    const int r_end = min(hd, int(blockIdx.z + 1) * lift_rows_per_block);
    for (int r = int(blockIdx.z) * lift_rows_per_block + warp; r < r_end;
         r += lift_threads / 32) {
        const float* prow = lin.basis + std::size_t(first + r) * d;
        float acc[BB];
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) acc[bb] = 0.0f;
        if (d % 4 == 0 && (reinterpret_cast<std::uintptr_t>(prow) & 15u) == 0) {
            for (int j4 = lane; j4 < d / 4; j4 += 32) {
                const float4 w = *reinterpret_cast<const float4*>(prow + 4 * j4);
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) {
                    const float4 z = *reinterpret_cast<const float4*>(z_s + bb * d + 4 * j4);
                    acc[bb] += w.x * z.x + w.y * z.y + w.z * z.z + w.w * z.w;
                }
            }
        } else {
            for (int j = lane; j < d; j += 32) {
                const float w = prow[j];
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) acc[bb] += w * z_s[bb * d + j];
            }
        }
        const float mu = lin.mean[first + r];
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) {
            const float v = device::warp_sum(acc[bb]);
            // Σ a = 1 after normalization; an empty item has no tokens and gives zeros, not μ.
            if (lane == 0 && bb < nb)
                out[(std::size_t(b0 + bb) * n_heads + h) * hd + r] =
                    (kv_lengths[b0 + bb] > 0 ? mu : 0.0f) + v;
        }
    }
}

/// What the host decided for one launch (or why the path does not apply).
struct plan {
    bool ok = false;
    std::string why;
    int mt = 0, ncol = 0, stages = 0, chunk = 0, splits = 0;
    int lat_pad = 0, raw_ld = 0, acc_stride = 0;
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
    const int cols = pl.lat_pad / 16;
    const int need = (cols + warps - 1) / warps;
    const int widest = 16 / pl.mt;  // 16 accumulator fragments (128 registers) per thread
    pl.ncol = need <= 2 ? 2 : need <= 4 ? 4 : need <= widest ? widest : 0;
    if (pl.ncol == 0)
        return fail("a latent of " + std::to_string(cache.max_latent_width) + " for " +
                    std::to_string(p.n_heads) + " heads exceeds the accumulator registers");
    const int max_rb = int(pad_record_bytes(std::size_t(cache.max_latent_width) * sizeof(E))) +
                       (QUANT ? 8 : 0);
    pl.raw_ld = round_up(max_rb, 16);
    pl.acc_stride = round_up(cache.max_latent_width, 4);
    const int heads_pad = 16 * pl.mt;
    const int stage_bytes = make_layout(heads_pad, pl.lat_pad, tile, 3, pl.raw_ld, QUANT)
                                .stage_bytes;
    pl.stages = std::clamp((inflight_bytes + stage_bytes - 1) / stage_bytes + 1, 3, max_stages);
    const int limit = ws.max_shared_bytes();
    // The widest chunk that fits: fewer splits, fewer partial outputs written and merged.
    int max_chunk_fit = 0;
    for (;;) {
        for (int c = max_chunk; c >= tile; c -= tile) {
            if (make_layout(heads_pad, pl.lat_pad, c, pl.stages, pl.raw_ld, QUANT).total <=
                limit) {
                max_chunk_fit = c;
                break;
            }
        }
        if (max_chunk_fit >= 4 * tile || pl.stages == 3) break;
        --pl.stages;  // a shallower ring buys a wider chunk
    }
    if (max_chunk_fit == 0)
        return fail("one tile of a latent of " + std::to_string(cache.max_latent_width) +
                    " needs more shared memory than the device's " + std::to_string(limit));
    int device = 0, per_sm = 0;
    KVCAR_CUDA_CHECK(cudaGetDevice(&device));
    KVCAR_CUDA_CHECK(
        cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    const int fixed =
        make_layout(heads_pad, pl.lat_pad, max_chunk_fit, pl.stages, pl.raw_ld, QUANT).total;
    const int ctas_per_sm = std::max(1, per_sm / (fixed + 1024));
    // The chunk that minimizes waves × (chunk + a tile's worth of per-CTA overhead): wide chunks
    // write fewer partials, but a last wave that fills few multiprocessors wastes the rest.
    const long slots = long(ws.sm_count()) * ctas_per_sm;
    pl.chunk = tile;
    pl.splits = 1;
    if (p.max_kv_length > 0) {
        long best = -1;
        for (int c = max_chunk_fit; c >= tile; c -= tile) {
            const int splits = (p.max_kv_length + c - 1) / c;
            const long waves = (long(std::max(p.batch, 1)) * splits + slots - 1) / slots;
            const long cost = waves * (c + 2 * tile);
            if (best < 0 || cost < best) {
                best = cost;
                pl.chunk = c;
                pl.splits = splits;
            }
        }
    }
    pl.smem = std::size_t(
        make_layout(heads_pad, pl.lat_pad, pl.chunk, pl.stages, pl.raw_ld, QUANT).total);
    pl.ok = true;
    return pl;
}

template <class Codec, int MT, int NCOL>
void launch_split(const split_params<Codec>& sp, const plan& pl, int batch, cudaStream_t stream) {
    auto kernel = split_kernel<Codec, MT, NCOL>;
    KVCAR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(pl.smem)));
    kernel<<<dim3(unsigned(pl.splits), unsigned(batch)), threads, pl.smem, stream>>>(sp);
    KVCAR_CUDA_CHECK_LAUNCH("latent_decode_attention split_kernel");
}

template <class Codec, int MT>
void launch_split_mt(const split_params<Codec>& sp, const plan& pl, int batch,
                     cudaStream_t stream) {
    if (pl.ncol == 2) {
        launch_split<Codec, MT, 2>(sp, pl, batch, stream);
    } else if (pl.ncol == 4) {
        launch_split<Codec, MT, 4>(sp, pl, batch, stream);
    } else if constexpr (16 / MT > 4) {
        launch_split<Codec, MT, 16 / MT>(sp, pl, batch, stream);
    }
}

}  // namespace detail::latent_tc

/// Whether latent_decode_attention can run this launch; if not, `why` (when given) says why.
template <class Codec>
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
template <class Codec>
void latent_decode_attention(const device::cache_view<Codec>& cache,
                             const decode_attention_params& p, attention_workspace& ws,
                             cudaStream_t stream = nullptr) {
    namespace lt = detail::latent_tc;
    detail::validate(p, cache.n_layers, cache.n_kv_heads, cache.head_dim,
                     "latent_decode_attention");
    if constexpr (!latent_tensor_core_codec<Codec>) {
        require(false, "latent_decode_attention: the codec is not a linear codec with f16, int8 "
                       "or fp8 latents");
    } else {
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

        constexpr int BB = lt::items_per_block;
        const std::size_t project_smem = sizeof(float) * BB * cache.head_dim;
        const dim3 project_grid(unsigned(H), unsigned((p.batch + BB - 1) / BB),
                                unsigned((pl.lat_pad + lt::aux_threads - 1) / lt::aux_threads));
        lt::project_kernel<Codec, BB><<<project_grid, lt::aux_threads, project_smem, stream>>>(
            cache, p.q, qz, bias, p.layer, p.batch, H, G, pl.lat_pad);
        KVCAR_CUDA_CHECK_LAUNCH("latent_decode_attention project_kernel");

        if (pl.mt == 1) {
            lt::launch_split_mt<Codec, 1>(sp, pl, p.batch, stream);
        } else if (pl.mt == 2) {
            lt::launch_split_mt<Codec, 2>(sp, pl, p.batch, stream);
        } else {
            lt::launch_split_mt<Codec, 4>(sp, pl, p.batch, stream);
        }

        // Merge the splits of every (item, head) into z̄ (one CTA each), then lift.
        detail::combine_kernel<128><<<dim3(unsigned(p.batch), unsigned(H)), 128, 0, stream>>>(
            sp.part_acc, sp.part_ml, p.kv_lengths, zbar, zw, pl.chunk, pl.splits,
            pl.acc_stride);
        KVCAR_CUDA_CHECK_LAUNCH("latent_decode_attention combine_kernel");
        const std::size_t lift_smem = sizeof(float) * BB * std::size_t(zw);
        auto lift = lt::lift_kernel<Codec, BB>;
        if (lift_smem > 48 * 1024) {
            KVCAR_CUDA_CHECK(cudaFuncSetAttribute(
                lift, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lift_smem)));
        }
        const dim3 lift_grid(
            unsigned(H), unsigned((p.batch + BB - 1) / BB),
            unsigned((cache.head_dim + lt::lift_rows_per_block - 1) / lt::lift_rows_per_block));
        lift<<<lift_grid, lt::lift_threads, lift_smem, stream>>>(
            cache, zbar, zw, p.kv_lengths, p.out, p.layer, p.batch, H, G);
        KVCAR_CUDA_CHECK_LAUNCH("latent_decode_attention lift_kernel");
        ws.last_splits = pl.splits;
        ws.last_chunk = pl.chunk;
    }
}

namespace detail {

/// The hook decode_attention calls: runs the tensor-core path and returns true when it applies.
template <class Codec>
bool try_latent_tensor_cores(const device::cache_view<Codec>& cache,
                             const decode_attention_params& p, attention_workspace& ws,
                             cudaStream_t stream) {
    if constexpr (!latent_tensor_core_codec<Codec>) {
        return false;
    } else {
        if (!latent_tc::make_plan(cache, p, ws).ok) return false;
        latent_decode_attention(cache, p, ws, stream);
        return true;
    }
}

}  // namespace detail

}  // namespace kvcar::kernels
