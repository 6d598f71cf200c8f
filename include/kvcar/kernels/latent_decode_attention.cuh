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
//     raw and are converted to fp16 in shared memory (K: the raw element values u, exact in
//     fp16, with the record's scale and offset applied to the fp32 score,
//     s = scale·(Qz·u) + offset·ΣQz; V: the dequantized value u·scale + offset in fp16);
//   * S = Qz · Zᵀ by mma.sync m16n8k16 (fp16 in, fp32 accumulate, operands by ldmatrix): warp
//     (token block, slice of d) computes a partial product, the slices meet in shared memory;
//   * the online softmax (lane per token, each warp a fixed set of heads) keeps each head's
//     running max m and sum l in registers and writes the tile's fp16 probabilities and the
//     rescale factor α;
//   * Acc = α·Acc + P · Z_v by mma.sync, the fp32 accumulators in registers for the whole split:
//     warp w of NW owns the V-latent columns 8(w + NW·j) … 8(w + NW·j) + 7 of every head;
//   * the unnormalized Acc, the split's m and l go to the same partial buffers as the other
//     paths.
// Around it: a projection kernel computes Qz (fp16) and the bias for a block of 16 items per
// head and a slice of latent columns, reading P_h once per 16 items; the shared combine kernel
// merges the splits into z̄; a lift kernel computes P_h z̄ + μ_h for 16 items per head and a
// block of output rows.
//
// Limits (the dispatcher in decode_attention.cuh falls back to the generic path outside them):
// codec a linear_codec<f16>, or a linear codec under quantized_codec with int8 or fp8 e4m3
// latents; the group is the whole layer (heads_per_group == n_kv_heads); no RoPE on read; at most
// 64 query heads; d up to max_latent_width (1024) with the accumulators fitting 128 registers
// (d <= 1024 for <= 32 heads, d <= 512 for <= 64 heads); shared memory for two tiles. Any d
// works; d a multiple of 8 (f16) lets each record be fetched in 16-byte pieces, other widths are
// zero-padded to 16 on the way in. Latents must be finite (a cached inf times a zero probability
// would be NaN). Precision: Qz, Z (f16 latents are exact) and the probabilities are fp16 operands
// with fp32 accumulation, as in flash attention; dequantized V latents must fit fp16.
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
#include "kvcar/kernels/decode_attention.cuh"
#include "kvcar/kernels/mma.cuh"
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

inline constexpr int tile = 32;  // tokens per staged tile: one per lane in the softmax
inline constexpr int token_blocks = tile / 16;           // 16-token blocks of the score product
inline constexpr int max_heads = 64;
inline constexpr int max_chunk = 16384;
inline constexpr int max_stages = 4;
/// Bytes of tiles a CTA keeps in flight while it computes one: above DRAM latency × a
/// multiprocessor's share of the bandwidth (~1.5 µs × 3.35 TB/s / 132 ≈ 38 KB).
inline constexpr int inflight_bytes = 64 * 1024;
inline constexpr int items_per_block = 16;  // projection and lift: items sharing one read of P_h
inline constexpr int aux_threads = 128;

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

/// Shared-memory layout of the split kernel; the same function sizes it on the host and carves
/// it on the device. Every region is 128-byte aligned. Row strides of fp16 tiles are an odd
/// number of 16-byte units, so the eight rows one ldmatrix reads fall in different bank groups.
struct smem_layout {
    int q_ld = 0, t_ld = 0, s_ld = 0, p_ld = 0;  // row strides: halves, halves, floats, halves
    int qz = 0, ring = 0, k_half = 0, v_half = 0, scores = 0, probs = 0, vectors = 0;  // bytes
    int stage_bytes = 0;  // one ring stage: the K tile, then the V tile at v_part
    int v_part = 0;
    int total = 0;
};

/// `lat_pad`: widest latent rounded up to 16; `raw_ld`: bytes per raw record row (quantized).
/// `slices`: the d-slices the score warps split (warps / token_blocks).
__host__ __device__ inline smem_layout make_layout(int heads_pad, int lat_pad, int stages,
                                                   int raw_ld, bool quantized, int slices) {
    smem_layout L;
    L.q_ld = lat_pad + 8;
    L.t_ld = lat_pad + 8;
    L.s_ld = tile + 8;  // float2 stores of a score fragment's 8 rows hit distinct banks
    L.p_ld = tile + 8;
    L.v_part = round_up(quantized ? tile * raw_ld : tile * L.t_ld * 2, 128);
    L.stage_bytes = 2 * L.v_part;
    int off = 0;
    L.qz = off;
    off += round_up(heads_pad * L.q_ld * 2, 128);
    L.ring = off;
    off += stages * L.stage_bytes;
    L.k_half = L.v_half = L.ring;
    if (quantized) {
        L.k_half = off;
        off += round_up(tile * L.t_ld * 2, 128);
        L.v_half = off;
        off += round_up(tile * L.t_ld * 2, 128);
    }
    L.scores = off;  // [slices][heads_pad][s_ld] partial scores
    off += round_up(slices * heads_pad * L.s_ld * 4, 128);
    L.probs = off;  // [heads_pad][p_ld] fp16 probabilities of the tile
    off += round_up(heads_pad * L.p_ld * 2, 128);
    L.vectors = off;  // K scale[tile], K offset[tile], bias, ΣQz, α [heads_pad each]
    off += (2 * tile + 3 * heads_pad) * 4;
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

/// Where a quantized record's scale and offset start (0 for plain records).
template <class Codec>
__device__ int scale_offset_bytes(const Codec& c) {
    if constexpr (device::codec_traits<Codec>::quantized) {
        return int(c.scale_offset_bytes());
    } else {
        return 0;
    }
}

/// Whether the split kernel for (MT, NB) is built for two CTAs per multiprocessor (128
/// registers a thread): when its accumulators and score fragments fit them without spilling.
__host__ __device__ constexpr bool two_ctas_per_sm(int mt, int nb) { return mt * nb <= 8 && mt <= 2; }

/// Whether the 16-warp split kernel for (MT, NB) fits 128 registers a thread without spilling
/// (ptxas, sm_90): 16 accumulator fragments with up to 2 head blocks, 8 with 4.
__host__ __device__ constexpr bool wide_fits_registers(int mt, int nb) {
    return mt * nb <= 16 && (mt <= 2 || nb <= 2);
}

/// Maximum over the warp in one redux.sync: IEEE floats order like their bit patterns read as
/// sign-magnitude integers, which x ^ 0x7fffffff (for negative x) turns into two's complement.
__device__ __forceinline__ float warp_max_float(float x) {
    int key = __float_as_int(x);
    key = key >= 0 ? key : key ^ 0x7fffffff;
    key = __reduce_max_sync(0xffffffffu, key);
    return __int_as_float(key >= 0 ? key : key ^ 0x7fffffff);
}

/// One CTA of NW warps (8 or 16): split blockIdx.x of item blockIdx.y, all heads. MT: 16-row
/// head blocks (1, 2, 4); NB: 8-wide column blocks of the V latent each warp accumulates (even).
///
/// Per tile of 32 tokens, with three barriers:
///   scores   warp (token block n, slice s of NW / 2) multiplies Qz (ldmatrix from shared
///            memory) by its 16 tokens × the k-steps s, s + NW / 2, … of K; the slices' partial
///            scores meet in shared memory;
///   softmax  lane per token, warp w the heads w, w + NW, …: the online softmax's running max m
///            and sum l (registers), the tile's fp16 probabilities and the factor α that
///            rescales the accumulators;
///   P·V      warp w owns the V-latent columns 8·(w + NW·j) … + 8 for every head: the fp32
///            accumulators never leave registers, P (ldmatrix) and V (ldmatrix.trans) come from
///            shared memory, each V byte is read once.
/// The ring holds `stages` tiles, K and V in separate copy groups, and the next tile is requested
/// before this one is awaited, so a multiprocessor always has tiles in flight; V's arrival hides
/// behind the score product.
template <class Codec, int MT, int NB, int NW>
__global__ void __launch_bounds__(NW * 32, NW == 8 && two_ctas_per_sm(MT, NB) ? 2 : 1)
    split_kernel(split_params<Codec> p) {
    using E = typename device::codec_traits<Codec>::element;
    constexpr bool QUANT = device::codec_traits<Codec>::quantized;
    constexpr int NQP = 16 * MT;
    constexpr int NT = NW * 32;                 // threads
    constexpr int KSL = NW / token_blocks;      // d-slices of the score product
    static_assert(NQP % NW == 0, "every softmax warp owns the same number of heads");
    static_assert(NB % 2 == 0, "V column blocks are loaded in pairs");
    extern __shared__ __align__(128) unsigned char smem[];

    const int split = int(blockIdx.x), b = int(blockIdx.y);
    const int len = p.kv_lengths[b];
    const int begin = split * p.chunk;
    if (begin >= len) return;  // uniform across the block
    const int end = min(len, begin + p.chunk);
    const int n_tiles = (end - begin + tile - 1) / tile;
    const int seq = p.sequences[b];
    const int NQ = p.n_heads;
    const int S = p.stages;
    const auto& cache = p.cache;
    const int slot_k = cache.slot(p.layer, 0, kv_kind::key);
    const int slot_v = cache.slot(p.layer, 0, kv_kind::value);
    const Codec ck = cache.codecs[slot_k];
    const Codec cv = cache.codecs[slot_v];
    const page_view pk = cache.slots[slot_k];
    const page_view pv = cache.slots[slot_v];
    const int dk = int(ck.latent_width()), dv = int(cv.latent_width());
    const int dk16 = (dk + 15) / 16, dv8 = (dv + 15) / 16 * 2;
    const int header_k = scale_offset_bytes(ck), header_v = scale_offset_bytes(cv);
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;

    const smem_layout L = make_layout(NQP, p.lat_pad, S, p.raw_ld, QUANT, KSL);
    __half* qz_s = reinterpret_cast<__half*>(smem + L.qz);
    unsigned char* ring = smem + L.ring;
    __half* k_half = reinterpret_cast<__half*>(smem + L.k_half);
    __half* v_half = reinterpret_cast<__half*>(smem + L.v_half);
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    __half* probs = reinterpret_cast<__half*>(smem + L.probs);
    float* k_scale = reinterpret_cast<float*>(smem + L.vectors);
    float* k_offset = k_scale + tile;
    float* bias_s = k_offset + tile;
    float* qsum_s = bias_s + NQP;
    float* alpha_s = qsum_s + NQP;

    // --- set-up: Qz (fp16, zero rows beyond NQ), running statistics, zeroed tiles ------------
    {
        const int pieces = p.lat_pad / 8;  // 16-byte pieces per row
        for (int idx = tid; idx < NQP * pieces; idx += NT) {
            const int h = idx / pieces, c = idx - (idx / pieces) * pieces;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (h < NQ)
                v = *reinterpret_cast<const uint4*>(
                    p.qz + (std::size_t(b) * NQ + h) * p.qz_ld + std::size_t(c) * 8);
            *reinterpret_cast<uint4*>(qz_s + h * L.q_ld + c * 8) = v;
        }
        for (int h = tid; h < NQP; h += NT) {
            bias_s[h] = h < NQ ? p.qbias[std::size_t(b) * NQ + h] : 0.0f;
            alpha_s[h] = 0.0f;
        }
        // Rows of padded heads stay zero: their MMA rows add nothing.
        for (int idx = tid; idx < NQP * L.p_ld / 2; idx += NT)
            reinterpret_cast<std::uint32_t*>(probs)[idx] = 0u;
        if constexpr (!QUANT) {
            // cp.async writes only the latent's columns of the rows a tile has: the padding
            // columns (multiplied by zero Qz columns, or dropped) and the rows past the end of a
            // split's last tile (multiplied by zero probabilities) must hold finite values.
            for (int idx = tid; idx < S * L.stage_bytes / 16; idx += NT)
                reinterpret_cast<uint4*>(ring)[idx] = make_uint4(0u, 0u, 0u, 0u);
        }
    }
    __syncthreads();
    if constexpr (QUANT) {
        // ΣQz of the fp16 Qz the score products use (zero rows and columns add nothing).
        for (int h = warp; h < NQP; h += NW) {
            float sum = 0.0f;
            for (int j = lane; j < p.lat_pad; j += 32) sum += __half2float(qz_s[h * L.q_ld + j]);
            sum = device::warp_sum(sum);
            if (lane == 0) qsum_s[h] = sum;
        }
        __syncthreads();
    }

    // The softmax warp w owns heads u · NW + w (u < HPW): its running max (uniform) and
    // per-lane partial sums stay in registers for the whole split.
    constexpr int HPW = NQP / NW;
    float m_run[HPW], l_run[HPW], bias_r[HPW], qsum_r[HPW];
#pragma unroll
    for (int u = 0; u < HPW; ++u) {
        m_run[u] = -INFINITY;
        l_run[u] = 0.0f;
        bias_r[u] = bias_s[u * NW + warp];
        qsum_r[u] = QUANT ? qsum_s[u * NW + warp] : 0.0f;
    }

    // --- the tile stream: tile i's K rows, then its V rows, each one copy group ---------------
    // NT / 32 threads per row of the tile: one page lookup per row and thread (an integer
    // division and a dependent load — per 16-byte piece it cost as much as the copy), eight
    // consecutive 16-byte pieces per warp instruction and row.
    constexpr int row_threads = NT / tile;
    const int my_row = tid / row_threads, my_piece = tid % row_threads;
    auto copy_rows = [&](const page_view& view, int d, int t0, int n, unsigned char* dst) {
        const int rb = int(view.record_bytes);
        if constexpr (QUANT) {
            // Whole records (elements, padding, scale, offset) in the widest aligned pieces.
            const int piece = rb % 16 == 0 ? 16 : rb % 8 == 0 ? 8 : 4;
            const int per_row = rb / piece;
            if (my_row < n) {
                const std::byte* src = view.record(seq, t0 + my_row);
                unsigned char* to = dst + my_row * p.raw_ld;
                for (int c = my_piece; c < per_row; c += row_threads) {
                    if (piece == 16) cp_async16(to + c * 16, src + c * 16);
                    else if (piece == 8) cp_async8(to + c * 8, src + c * 8);
                    else cp_async4(to + c * 4, src + c * 4);
                }
            }
        } else {
            __half* t = reinterpret_cast<__half*>(dst);
            if (d % 8 == 0 && rb % 16 == 0) {
                if (my_row < n) {
                    const std::byte* src = view.record(seq, t0 + my_row);
                    __half* to = t + my_row * L.t_ld;
                    for (int c = my_piece; c < d / 8; c += row_threads)
                        cp_async16(to + c * 8, src + std::size_t(c) * 16);
                }
            } else {
                // Unaligned widths: plain 2-byte loads (correct, not fast).
                for (int idx = tid; idx < n * d; idx += NT) {
                    const int r = idx / d, j = idx - (idx / d) * d;
                    const f16 e = reinterpret_cast<const f16*>(view.record(seq, t0 + r))[j];
                    t[r * L.t_ld + j] = __ushort_as_half(e.bits);
                }
            }
        }
    };
    auto issue = [&](int i) {
        if (i < n_tiles) {
            const int t0 = begin + i * tile;
            const int n = min(tile, end - t0);
            unsigned char* stage = ring + std::size_t(i % S) * L.stage_bytes;
            copy_rows(pk, dk, t0, n, stage);
            cp_async_commit();
            copy_rows(pv, dv, t0, n, stage + L.v_part);
        } else {
            cp_async_commit();  // empty groups keep the count of groups per tile at two
        }
        cp_async_commit();
    };

    // Quantized: raw records → fp16 tile of the raw element values (exact for int8 and fp8);
    // K keeps its per-token scale and offset for the fp32 score, V is dequantized in fp16
    // (u · scale + offset). Columns beyond d and rows beyond n become zero.
    auto convert = [&](const unsigned char* raw, int d, int header, int n, bool is_v,
                       __half* out) {
        const int groups = (d + 15) / 16 * 2;  // 8 elements each
        for (int idx = tid; idx < tile * groups; idx += NT) {
            const int r = idx / groups, gr = idx - (idx / groups) * groups;
            const int j0 = gr * 8;
            float v[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] = 0.0f;
            if (r < n) {
                const unsigned char* row = raw + r * p.raw_ld;
                const float sc = *reinterpret_cast<const float*>(row + header);
                const float of = *reinterpret_cast<const float*>(row + header + 4);
                if (!is_v && gr == 0) {
                    k_scale[r] = sc;
                    k_offset[r] = of;
                }
                const float mul = is_v ? sc : 1.0f, add = is_v ? of : 0.0f;
                if constexpr (std::same_as<E, std::int8_t>) {
                    if (!is_v && j0 + 8 <= d) {
                        // K's raw values u + ½ (load_float), packed: 8 elements in 4 byte
                        // permutes and 4 half2 operations, exact. V keeps the fp32 path: its
                        // scale rounded to fp16 would shift every value it dequantizes.
                        const uint2 raw8 = *reinterpret_cast<const uint2*>(row + j0);
                        const __half2 h_mul = __float2half2_rn(1.0f);
                        const __half2 h_add = __float2half2_rn(0.5f);
                        uint4 packed;
                        dequant_int8x4(raw8.x, h_mul, h_add, packed.x, packed.y);
                        dequant_int8x4(raw8.y, h_mul, h_add, packed.z, packed.w);
                        *reinterpret_cast<uint4*>(out + r * L.t_ld + j0) = packed;
                        continue;
                    }
                }
                if (j0 + 8 <= d) {
                    const uint2 bytes = *reinterpret_cast<const uint2*>(row + j0);
                    E el[8];
                    memcpy(el, &bytes, 8);
#pragma unroll
                    for (int e = 0; e < 8; ++e) v[e] = device::load_float(el[e]) * mul + add;
                } else {
                    const E* el = reinterpret_cast<const E*>(row);
#pragma unroll
                    for (int e = 0; e < 8; ++e)
                        if (j0 + e < d) v[e] = device::load_float(el[j0 + e]) * mul + add;
                }
            } else if (!is_v && gr == 0) {
                k_scale[r] = 0.0f;
                k_offset[r] = 0.0f;
            }
            *reinterpret_cast<uint4*>(out + r * L.t_ld + j0) =
                make_uint4(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]),
                           pack_half2(v[4], v[5]), pack_half2(v[6], v[7]));
        }
    };

    float o[MT][NB][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NB; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[m][j][e] = 0.0f;

    // ldmatrix row addresses: A fragments (row-major [row][k]) take matrix i = lane / 8 at rows
    // 8·(i % 2) …, columns 8·(i / 2) …; K as Bᵀ (rows = tokens) takes tokens 8·(i / 2) … and
    // columns 8·(i % 2) …, giving b0, b1 of token blocks 0 and 1; V (rows = tokens, read
    // transposed) takes tokens 8·(i % 2) … of column block i / 2 of a pair.
    const int a_row = ((lane >> 3) & 1) * 8 + (lane & 7), a_col = (lane >> 4) * 8;
    const int kb_row = (lane >> 4) * 8 + (lane & 7), kb_col = ((lane >> 3) & 1) * 8;
    const int v_row = ((lane >> 3) & 1) * 8 + (lane & 7), v_pair = lane >> 4;

    for (int s = 0; s < S - 1; ++s) issue(s);
    for (int i = 0; i < n_tiles; ++i) {
        __syncthreads();  // tile i - 1 is finished: its ring stage, scores and probs are free
        issue(i + S - 1);
        const int t0 = begin + i * tile;
        const int n = min(tile, end - t0);
        const unsigned char* stage = ring + std::size_t(i % S) * L.stage_bytes;
        cp_async_wait_dyn(2 * S - 1);  // this thread's copies of K_i have landed
        __syncthreads();               // ... everyone's
        const __half* kt = reinterpret_cast<const __half*>(stage);
        const __half* vt = reinterpret_cast<const __half*>(stage + L.v_part);
        if constexpr (QUANT) {
            convert(stage, dk, header_k, n, false, k_half);
            __syncthreads();
            kt = k_half;
            vt = v_half;
        }

        // S = Qz · K_tileᵀ, partial over this warp's slice of d.
        {
            const int nb = warp % token_blocks, ks = warp / token_blocks;
            float sacc[MT][2][4];
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int j = 0; j < 2; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) sacc[m][j][e] = 0.0f;
            for (int kk = ks; kk < dk16; kk += KSL) {
                std::uint32_t kb[4];
                ldmatrix_x4(kb, kt + (nb * 16 + kb_row) * L.t_ld + kk * 16 + kb_col);
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    std::uint32_t a[4];
                    ldmatrix_x4(a, qz_s + (m * 16 + a_row) * L.q_ld + kk * 16 + a_col);
                    mma_16816(sacc[m][0], a[0], a[1], a[2], a[3], kb[0], kb[1]);
                    mma_16816(sacc[m][1], a[0], a[1], a[2], a[3], kb[2], kb[3]);
                }
            }
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    float* r0 = scores + (ks * NQP + m * 16 + g) * L.s_ld + nb * 16 + j * 8 + 2 * t4;
                    *reinterpret_cast<float2*>(r0) = make_float2(sacc[m][j][0], sacc[m][j][1]);
                    *reinterpret_cast<float2*>(r0 + 8 * L.s_ld) =
                        make_float2(sacc[m][j][2], sacc[m][j][3]);
                }
        }
        cp_async_wait_dyn(2 * S - 2);  // V_i has landed (this thread's copies)
        __syncthreads();               // scores complete; everyone's V_i has landed

        // Online softmax over the tile: lane per token, the warp's HPW heads side by side so
        // their reductions overlap. The running max lives in registers (uniform over the warp),
        // the running sum as per-lane partials reduced once at the end: per head and tile, one
        // warp reduction (redux.sync on the float's ordered-integer image) and one exponential.
        {
            float x[HPW];
#pragma unroll
            for (int u = 0; u < HPW; ++u) {
                const int h = u * NW + warp;
                x[u] = -INFINITY;
                if (h < NQ && lane < n) {
                    float acc = 0.0f;
#pragma unroll
                    for (int ks = 0; ks < KSL; ++ks)
                        acc += scores[(ks * NQP + h) * L.s_ld + lane];
                    if constexpr (QUANT) acc = acc * k_scale[lane] + k_offset[lane] * qsum_r[u];
                    x[u] = (acc + bias_r[u]) * p.scale;
                }
            }
#pragma unroll
            for (int u = 0; u < HPW; ++u) {
                const int h = u * NW + warp;
                if (h >= NQ) continue;  // warp-uniform; padded heads' probabilities stay zero
                const float m_new = fmaxf(m_run[u], warp_max_float(x[u]));
                const __half e = __float2half_rn(lane < n ? __expf(x[u] - m_new) : 0.0f);
                probs[h * L.p_ld + lane] = e;
                const float alpha = __expf(m_run[u] - m_new);  // 0 on the first tile
                l_run[u] = l_run[u] * alpha + __half2float(e);  // the weights the MMA uses
                m_run[u] = m_new;
                if (lane == 0) alpha_s[h] = alpha;
            }
        }
        if constexpr (QUANT) convert(stage + L.v_part, dv, header_v, n, true, v_half);
        __syncthreads();

        // O = α·O + P · V_tile over this warp's column blocks.
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            const float a0 = alpha_s[m * 16 + g], a1 = alpha_s[m * 16 + g + 8];
#pragma unroll
            for (int j = 0; j < NB; ++j) {
                o[m][j][0] *= a0;
                o[m][j][1] *= a0;
                o[m][j][2] *= a1;
                o[m][j][3] *= a1;
            }
        }
#pragma unroll
        for (int kk = 0; kk < token_blocks; ++kk) {
            std::uint32_t a[MT][4];
#pragma unroll
            for (int m = 0; m < MT; ++m)
                ldmatrix_x4(a[m], probs + (m * 16 + a_row) * L.p_ld + kk * 16 + a_col);
#pragma unroll
            for (int j = 0; j < NB; j += 2) {
                const int c0 = warp + NW * j, c1 = c0 + NW;
                if (c0 >= dv8) break;  // warp-uniform
                const int c = v_pair ? (c1 < dv8 ? c1 : c0) : c0;
                std::uint32_t vb[4];
                ldmatrix_x4_trans(vb, vt + (kk * 16 + v_row) * L.t_ld + c * 8);
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    mma_16816(o[m][j], a[m][0], a[m][1], a[m][2], a[m][3], vb[0], vb[1]);
                    if (c1 < dv8)
                        mma_16816(o[m][j + 1], a[m][0], a[m][1], a[m][2], a[m][3], vb[2], vb[3]);
                }
            }
        }
    }
    cp_async_wait<0>();

    // --- the split's unnormalized accumulators, m and l, for the combine kernel --------------
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            const int col = (warp + NW * j) * 8 + 2 * t4;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int h = m * 16 + g + 8 * half;
                if (h >= NQ) continue;
                float* dst = p.part_acc +
                             ((std::size_t(b) * NQ + h) * p.max_splits + split) * p.acc_stride;
                if (col < dv) dst[col] = o[m][j][2 * half];
                if (col + 1 < dv) dst[col + 1] = o[m][j][2 * half + 1];
            }
        }
#pragma unroll
    for (int u = 0; u < HPW; ++u) {
        const int h = u * NW + warp;
        if (h >= NQ) continue;
        const float l = device::warp_sum(l_run[u]);
        if (lane == 0) {
            const std::size_t row = std::size_t(b) * NQ + h;
            p.part_ml[(row * p.max_splits + split) * 2] = m_run[u];
            p.part_ml[(row * p.max_splits + split) * 2 + 1] = l;
        }
    }
}

inline constexpr int project_columns = 64;  // latent columns per projection CTA
inline constexpr int project_row_groups = aux_threads / project_columns;

/// Qz = P_hᵀ q (fp16, zero beyond d_k up to qz_ld) for head blockIdx.x, items blockIdx.y · BB …
/// and latent columns blockIdx.z · project_columns …; bias = q · μ_h from the blocks of column
/// block 0. Each element of P_h is read once per BB items. Threads are (row group, column):
/// each sums every project_row_groups-th row of P_h, so a thread's chain of dependent loads is
/// head_dim / project_row_groups long, and the groups meet in shared memory — at batch 1 the
/// projection is latency-bound, not bandwidth-bound.
/// ΣQz of quantized codecs is summed by the split kernel from the fp16 Qz it multiplies.
template <class Codec, int BB>
__global__ void __launch_bounds__(aux_threads)
    project_kernel(device::cache_view<Codec> cache, const float* q, __half* qz, float* qbias,
                   int layer, int batch, int n_heads, int heads_per_kv, int qz_ld) {
    extern __shared__ __align__(16) float q_s[];  // [BB][head_dim], then [groups][BB][columns]
    const int h = int(blockIdx.x), b0 = int(blockIdx.y) * BB;
    const int nb = min(BB, batch - b0);
    const int hd = cache.head_dim;
    const int kvh = h / heads_per_kv;  // whole-layer group: the KV head's rows inside P
    const Codec ck = cache.codecs[cache.slot(layer, 0, kv_kind::key)];
    const auto& lin = device::core_of(ck);
    const int d = lin.rank;
    const int first = kvh * hd;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    float* red = q_s + BB * hd;
    for (int idx = tid; idx < BB * hd; idx += aux_threads) {
        const int bb = idx / hd, r = idx - (idx / hd) * hd;
        q_s[idx] = bb < nb ? q[(std::size_t(b0 + bb) * n_heads + h) * hd + r] : 0.0f;
    }
    __syncthreads();
    const int rg = tid / project_columns, jj = tid % project_columns;
    const int j = int(blockIdx.z) * project_columns + jj;
    {
        float acc[BB];
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) acc[bb] = 0.0f;
        if (j < d) {
            const float* col = lin.basis + std::size_t(first) * d + j;
#pragma unroll 4
            for (int r = rg; r < hd; r += project_row_groups) {
                const float w = col[std::size_t(r) * d];  // coalesced over j
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) acc[bb] += w * q_s[bb * hd + r];
            }
        }
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) red[(rg * BB + bb) * project_columns + jj] = acc[bb];
    }
    __syncthreads();
    for (int idx = tid; idx < nb * project_columns; idx += aux_threads) {
        const int bb = idx / project_columns, c = idx % project_columns;
        const int col = int(blockIdx.z) * project_columns + c;
        if (col >= qz_ld) continue;
        float sum = 0.0f;
#pragma unroll
        for (int g = 0; g < project_row_groups; ++g) sum += red[(g * BB + bb) * project_columns + c];
        qz[(std::size_t(b0 + bb) * n_heads + h) * qz_ld + col] = __float2half_rn(sum);
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
            if (bb >= nb) break;  // uniform: no reductions for items past the batch
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
    int mt = 0, nb = 0, nw = 0, stages = 0, chunk = 0, splits = 0;
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
    const int max_rb = int(pad_record_bytes(std::size_t(cache.max_latent_width) * sizeof(E))) +
                       (QUANT ? 8 : 0);
    pl.raw_ld = round_up(max_rb, 16);
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
    if (!two_ctas_per_sm(pl.mt, pl.nb) && wide_fits_registers(pl.mt, blocks(16)) &&
        layout(16, 2).total <= limit) {
        pl.nw = 16;
        pl.nb = blocks(16);
    }
    if (pl.mt * pl.nb > 32)
        return fail("a latent of " + std::to_string(cache.max_latent_width) + " for " +
                    std::to_string(p.n_heads) + " heads exceeds the accumulator registers");
    // The ring: enough stages that (stages - 1) tiles cover inflight_bytes, as many as fit.
    const int stage_bytes = layout(pl.nw, 2).stage_bytes;
    pl.stages = std::clamp(1 + (inflight_bytes + stage_bytes - 1) / stage_bytes, 2, max_stages);
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
    const long slots = long(ws.sm_count()) * ctas_per_sm;
    pl.chunk = tile;
    pl.splits = 1;
    if (p.max_kv_length > 0) {
        long best = -1;
        const int widest = std::min(max_chunk, round_up(p.max_kv_length, tile));
        for (int c = widest; c >= tile; c -= tile) {
            const int splits = (p.max_kv_length + c - 1) / c;
            const long waves = (long(std::max(p.batch, 1)) * splits + slots - 1) / slots;
            const long cost = waves * (c + 3 * tile);
            if (best < 0 || cost < best) {
                best = cost;
                pl.chunk = c;
                pl.splits = splits;
            }
        }
    }
    pl.ok = true;
    return pl;
}

template <class Codec, int MT, int NB, int NW>
void launch_split(const split_params<Codec>& sp, const plan& pl, int batch, cudaStream_t stream) {
    auto kernel = split_kernel<Codec, MT, NB, NW>;
    KVCAR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(pl.smem)));
    kernel<<<dim3(unsigned(pl.splits), unsigned(batch)), NW * 32, pl.smem, stream>>>(sp);
    KVCAR_CUDA_CHECK_LAUNCH("latent_decode_attention split_kernel");
}

/// Run-time (warps, column blocks) → the instantiation for MT head blocks: 8 warps with
/// MT · NB <= 32, 16 warps where wide_fits_registers (make_plan).
template <class Codec, int MT>
void launch_split_mt(const split_params<Codec>& sp, const plan& pl, int batch,
                     cudaStream_t stream) {
    if (pl.nw == 16) {
        switch (pl.nb) {
            case 2: launch_split<Codec, MT, 2, 16>(sp, pl, batch, stream); break;
            case 4:
                if constexpr (wide_fits_registers(MT, 4))
                    launch_split<Codec, MT, 4, 16>(sp, pl, batch, stream);
                break;
            default:
                if constexpr (wide_fits_registers(MT, 8))
                    launch_split<Codec, MT, 8, 16>(sp, pl, batch, stream);
                break;
        }
        return;
    }
    switch (pl.nb) {
        case 2: launch_split<Codec, MT, 2, 8>(sp, pl, batch, stream); break;
        case 4: launch_split<Codec, MT, 4, 8>(sp, pl, batch, stream); break;
        case 8: launch_split<Codec, MT, 8, 8>(sp, pl, batch, stream); break;
        default:
            if constexpr (MT <= 2) launch_split<Codec, MT, 16, 8>(sp, pl, batch, stream);
            break;
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

        // Items per projection / lift CTA: as many as the batch has, up to 16 (each read of
        // P_h serves them all; unused slots would cost multiply-adds and reductions).
        auto with_items = [&](auto&& body) {
            if (p.batch <= 1) body(std::integral_constant<int, 1>{});
            else if (p.batch <= 4) body(std::integral_constant<int, 4>{});
            else body(std::integral_constant<int, lt::items_per_block>{});
        };
        with_items([&](auto items) {
            constexpr int BB = decltype(items)::value;
            const std::size_t project_smem =
                sizeof(float) * BB * (cache.head_dim + lt::project_columns * lt::project_row_groups);
            const dim3 project_grid(
                unsigned(H), unsigned((p.batch + BB - 1) / BB),
                unsigned((pl.lat_pad + lt::project_columns - 1) / lt::project_columns));
            auto project = lt::project_kernel<Codec, BB>;
            if (project_smem > 48 * 1024) {
                KVCAR_CUDA_CHECK(cudaFuncSetAttribute(
                    project, cudaFuncAttributeMaxDynamicSharedMemorySize, int(project_smem)));
            }
            project<<<project_grid, lt::aux_threads, project_smem, stream>>>(
                cache, p.q, qz, bias, p.layer, p.batch, H, G, pl.lat_pad);
            KVCAR_CUDA_CHECK_LAUNCH("latent_decode_attention project_kernel");
        });

        if (pl.mt == 1) {
            lt::launch_split_mt<Codec, 1>(sp, pl, p.batch, stream);
        } else if (pl.mt == 2) {
            lt::launch_split_mt<Codec, 2>(sp, pl, p.batch, stream);
        } else {
            lt::launch_split_mt<Codec, 4>(sp, pl, p.batch, stream);
        }

        // Merge the splits of every (item, head) into z̄ (one CTA each), then lift.
        detail::launch_merge(detail::merge_params{sp.part_acc, sp.part_ml, p.kv_lengths,
                                                  /*out=*/zbar, p.batch, H, /*width=*/zw,
                                                  pl.chunk, pl.splits, pl.acc_stride},
                             ws, stream, "latent_decode_attention combine_kernel");
        with_items([&](auto items) {
            constexpr int BB = decltype(items)::value;
            const std::size_t lift_smem = sizeof(float) * BB * std::size_t(zw);
            auto lift = lt::lift_kernel<Codec, BB>;
            if (lift_smem > 48 * 1024) {
                KVCAR_CUDA_CHECK(cudaFuncSetAttribute(
                    lift, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lift_smem)));
            }
            const dim3 lift_grid(unsigned(H), unsigned((p.batch + BB - 1) / BB),
                                 unsigned((cache.head_dim + lt::lift_rows_per_block - 1) /
                                          lt::lift_rows_per_block));
            lift<<<lift_grid, lt::lift_threads, lift_smem, stream>>>(
                cache, zbar, zw, p.kv_lengths, p.out, p.layer, p.batch, H, G);
            KVCAR_CUDA_CHECK_LAUNCH("latent_decode_attention lift_kernel");
        });
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
