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
// with fp32 accumulation, as in flash attention; a quantized V's p·scale is rounded to fp16
// relative to the tile's largest, so the terms that matter keep fp16's relative precision.
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

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

/// Shared-memory layout of the split kernel; the same function sizes it on the host and carves
/// it on the device. Every region is 128-byte aligned. Row strides of fp16 tiles are an odd
/// number of 16-byte units, so the eight rows one ldmatrix reads fall in different bank groups.
struct smem_layout {
    int q_ld = 0, t_ld = 0, s_ld = 0, p_ld = 0;  // row strides: halves, halves, floats, halves
    int qz = 0, ring = 0, scores = 0, probs = 0, vectors = 0;  // byte offsets
    int stage_bytes = 0;  // one ring stage: the K tile, then the V tile at v_part
    int v_part = 0;
    int total = 0;
};

/// `lat_pad`: widest latent rounded up to 16; `raw_ld`: bytes per raw record row (quantized), an
/// odd number of 16-byte units, so the 4-byte fragment loads of 8 rows hit distinct banks.
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
    L.scores = off;  // [slices][heads_pad][s_ld] partial scores
    off += round_up(slices * heads_pad * L.s_ld * 4, 128);
    L.probs = off;  // [heads_pad][p_ld] fp16 probabilities of the tile
    off += round_up(heads_pad * L.p_ld * 2, 128);
    L.vectors = off;  // bias, ΣQz, α, V unit [heads_pad each]
    off += 4 * heads_pad * 4;
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

/// Four int8 or fp8 e4m3 elements (one register) → two half2 registers holding their values
/// exactly: int8 q as q + ½ (the codec's load_float), fp8 as its value / 2^8 (widen_fp8x4).
template <class E>
__device__ __forceinline__ void widen_elements4(std::uint32_t raw, std::uint32_t& lo,
                                                std::uint32_t& hi) {
    if constexpr (std::same_as<E, std::int8_t>) {
        const __half2 one = __float2half2_rn(1.0f), half = __float2half2_rn(0.5f);
        dequant_int8x4(raw, one, half, lo, hi);
    } else {
        widen_fp8x4(raw, lo, hi);
    }
}

/// Where column c of the Qz tile reads Qz when K is quantized. A B fragment's lane holds rows
/// 2·t4, 2·t4 + 1 (register b0) and 2·t4 + 8, 2·t4 + 9 (b1) of a 16-deep k-step; a lane of the
/// quantized path loads the 4 consecutive raw bytes 4·t4 … 4·t4 + 3 of the k-step into b0, b1
/// instead. A dot product does not care about order, so Qz's columns are permuted to match:
/// fragment row k reads raw column raw_k_column(k) (within each 16, the same for every step).
__host__ __device__ constexpr int raw_k_column(int c) {
    const int k = c & 15, t4 = (k & 7) >> 1;
    return (c & ~15) + 4 * t4 + (k >= 8 ? 2 : 0) + (k & 1);
}
// The split kernel's set-up moves whole column pairs (32-bit words): 0, 2, 4, 6, then 1, 3, 5, 7.
static_assert(raw_k_column(2) == 4 && raw_k_column(6) == 12 && raw_k_column(8) == 2 &&
              raw_k_column(15) == 15 && raw_k_column(21) == 25);

/// One thread's walk over the records of tokens t, t + step, t + 2·step, … of a sequence in one
/// slot: the block and the offset in it advance by subtraction (no integer division per step),
/// and the page id of the next step is loaded as the walk advances, a whole step before the
/// copy that needs it, so the dependent block-table load is off the copy's critical path.
struct record_walk {
    int block = 0, offset = 0, page = 0;

    /// `valid`: whether token `token` exists (no block-table entry is read for one that does not).
    __device__ void start(const page_view& v, int seq, int token, bool valid) {
        block = token / v.page_size;
        offset = token - block * v.page_size;
        page = valid ? v.block_table[std::size_t(seq) * v.pages_per_sequence + block] : 0;
    }
    __device__ const std::byte* record(const page_view& v) const {
        return v.pool + (std::size_t(page) * v.page_size + offset) * v.record_bytes;
    }
    __device__ void advance(const page_view& v, int seq, int step, bool valid) {
        offset += step;
        while (offset >= v.page_size) {
            offset -= v.page_size;
            ++block;
        }
        if (valid) page = v.block_table[std::size_t(seq) * v.pages_per_sequence + block];
    }
};

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
    const int dk16 = (dk + 15) / 16, dv16 = (dv + 15) / 16, dv8 = 2 * dv16;
    const int header_k = scale_offset_bytes(ck), header_v = scale_offset_bytes(cv);
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;

    const smem_layout L = make_layout(NQP, p.lat_pad, S, p.raw_ld, QUANT, KSL);
    __half* qz_s = reinterpret_cast<__half*>(smem + L.qz);
    unsigned char* ring = smem + L.ring;
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    __half* probs = reinterpret_cast<__half*>(smem + L.probs);
    float* bias_s = reinterpret_cast<float*>(smem + L.vectors);
    float* qsum_s = bias_s + NQP;
    float* alpha_s = qsum_s + NQP;
    float* unit_s = alpha_s + NQP;  // quantized V: the unit of each head's accumulators

    // --- set-up: Qz (fp16, zero rows beyond NQ), running statistics, zeroed tiles ------------
    {
        if constexpr (QUANT) {
            // Columns in the order quantized K fragments arrive in (raw_k_column): per 16
            // columns, the column pairs 0, 2, 4, 6, then 1, 3, 5, 7.
            const int blocks = p.lat_pad / 16;
            for (int idx = tid; idx < NQP * blocks; idx += NT) {
                const int h = idx / blocks, c = (idx - (idx / blocks) * blocks) * 16;
                uint4 lo = make_uint4(0u, 0u, 0u, 0u), hi = lo;
                if (h < NQ) {
                    const __half* src = p.qz + (std::size_t(b) * NQ + h) * p.qz_ld + c;
                    lo = *reinterpret_cast<const uint4*>(src);
                    hi = *reinterpret_cast<const uint4*>(src + 8);
                }
                *reinterpret_cast<uint4*>(qz_s + h * L.q_ld + c) = make_uint4(lo.x, lo.z, hi.x, hi.z);
                *reinterpret_cast<uint4*>(qz_s + h * L.q_ld + c + 8) =
                    make_uint4(lo.y, lo.w, hi.y, hi.w);
            }
        } else {
            const int pieces = p.lat_pad / 8;  // 16-byte pieces per row
            for (int idx = tid; idx < NQP * pieces; idx += NT) {
                const int h = idx / pieces, c = idx - (idx / pieces) * pieces;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (h < NQ)
                    v = *reinterpret_cast<const uint4*>(
                        p.qz + (std::size_t(b) * NQ + h) * p.qz_ld + std::size_t(c) * 8);
                *reinterpret_cast<uint4*>(qz_s + h * L.q_ld + c * 8) = v;
            }
        }
        for (int h = tid; h < NQP; h += NT) {
            bias_s[h] = h < NQ ? p.qbias[std::size_t(b) * NQ + h] : 0.0f;
            alpha_s[h] = 0.0f;
            unit_s[h] = 1.0f;
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
    // Quantized V (see the softmax): c_run sums p · offset per lane.
    float m_run[HPW], l_run[HPW], c_run[HPW], bias_r[HPW], qsum_r[HPW];
#pragma unroll
    for (int u = 0; u < HPW; ++u) {
        m_run[u] = -INFINITY;
        l_run[u] = 0.0f;
        c_run[u] = 0.0f;
        bias_r[u] = bias_s[u * NW + warp];
        qsum_r[u] = QUANT ? qsum_s[u * NW + warp] : 0.0f;
    }

    // --- the tile stream: tile i's K rows, then its V rows, each one copy group ---------------
    // NT / 32 threads per row of the tile: one page lookup per row and thread (an integer
    // division and a dependent load — per 16-byte piece it cost as much as the copy), eight
    // consecutive 16-byte pieces per warp instruction and row.
    constexpr int row_threads = NT / tile;
    const int my_row = tid / row_threads, my_piece = tid % row_threads;
    // The walks of my_row's token through the K and V slots, one tile per issue.
    record_walk walk_k, walk_v;
    walk_k.start(pk, seq, begin + my_row, begin + my_row < end);
    walk_v.start(pv, seq, begin + my_row, begin + my_row < end);
    auto copy_rows = [&](const page_view& view, const record_walk& walk, int d, int t0, int n,
                         unsigned char* dst) {
        const int rb = int(view.record_bytes);
        if constexpr (QUANT) {
            // Whole records (elements, padding, scale, offset) in the widest aligned pieces.
            const int piece = rb % 16 == 0 ? 16 : rb % 8 == 0 ? 8 : 4;
            const int per_row = rb / piece;
            if (my_row < n) {
                const std::byte* src = walk.record(view);
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
                    const std::byte* src = walk.record(view);
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
    // Tiles are issued in order, each once: issue_stage is tile i's ring stage (i mod S).
    int issue_stage = 0;
    auto issue = [&](int i) {
        if (i < n_tiles) {
            const int t0 = begin + i * tile;
            const int n = min(tile, end - t0);
            unsigned char* stage = ring + std::size_t(issue_stage) * L.stage_bytes;
            issue_stage = issue_stage + 1 == S ? 0 : issue_stage + 1;
            copy_rows(pk, walk_k, dk, t0, n, stage);
            cp_async_commit();
            copy_rows(pv, walk_v, dv, t0, n, stage + L.v_part);
            const bool next = t0 + tile + my_row < end;
            walk_k.advance(pk, seq, tile, next);
            walk_v.advance(pv, seq, tile, next);
        } else {
            cp_async_commit();  // empty groups keep the count of groups per tile at two
        }
        cp_async_commit();
    };

    // Quantized records are read in place (the ring holds them raw): fragments take 4 bytes of
    // one record per lane and widen them to fp16 in registers, exactly (int8 q as q + ½, fp8 as
    // its value / 2^8, the 2^8 in `fold`) — no conversion pass, no fp16 copy of the tile, so
    // the ring has room for more stages. Scales and offsets stay per token in fp32.
    constexpr float fold = std::same_as<E, fp8_e4m3> ? 256.0f : 1.0f;

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
    int read_stage = 0;  // tile i's ring stage
    for (int i = 0; i < n_tiles; ++i) {
        __syncthreads();  // tile i - 1 is finished: its ring stage, scores and probs are free
        issue(i + S - 1);
        const int t0 = begin + i * tile;
        const int n = min(tile, end - t0);
        const unsigned char* stage = ring + std::size_t(read_stage) * L.stage_bytes;
        read_stage = read_stage + 1 == S ? 0 : read_stage + 1;
        cp_async_wait_dyn(2 * S - 1);  // this thread's copies of K_i have landed
        __syncthreads();               // ... everyone's
        const __half* kt = reinterpret_cast<const __half*>(stage);
        const __half* vt = reinterpret_cast<const __half*>(stage + L.v_part);

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
                if constexpr (QUANT) {
                    // Token nb·16 + g (+ 8), raw bytes 4·t4 … 4·t4 + 3 of this k-step: b0, b1
                    // of the fragment whose columns raw_k_column put there.
                    const unsigned char* r = stage + (nb * 16 + g) * p.raw_ld + kk * 16 + 4 * t4;
                    widen_elements4<E>(*reinterpret_cast<const std::uint32_t*>(r), kb[0], kb[1]);
                    widen_elements4<E>(*reinterpret_cast<const std::uint32_t*>(r + 8 * p.raw_ld),
                                       kb[2], kb[3]);
                } else {
                    ldmatrix_x4(kb, kt + (nb * 16 + kb_row) * L.t_ld + kk * 16 + kb_col);
                }
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
        //
        // Quantized V (v = s_t·u + o_t per token, u exact in fp16): Σ p v = Σ (p s_t) u
        // + Σ p o_t, so the MMA takes w = p·s_t as its probability and the offsets become one
        // per-head sum: no dequantization pass over V. w is stored relative to the tile's largest
        // w of the head (its new unit), so the terms that matter are normal fp16 however small
        // the scales; the accumulators change unit with α' = α · unit_old / unit_new.
        {
            float x[HPW];
            float k_scale = 0.0f, k_offset = 0.0f, v_scale = 0.0f, v_offset = 0.0f;
            if constexpr (QUANT) {
                if (lane < n) {
                    const unsigned char* krow = stage + lane * p.raw_ld + header_k;
                    const unsigned char* vrow = stage + L.v_part + lane * p.raw_ld + header_v;
                    k_scale = *reinterpret_cast<const float*>(krow) * fold;
                    k_offset = *reinterpret_cast<const float*>(krow + 4);
                    v_scale = *reinterpret_cast<const float*>(vrow) * fold;  // >= 0
                    v_offset = *reinterpret_cast<const float*>(vrow + 4);
                }
            }
#pragma unroll
            for (int u = 0; u < HPW; ++u) {
                const int h = u * NW + warp;
                x[u] = -INFINITY;
                if (h < NQ && lane < n) {
                    float acc = 0.0f;
#pragma unroll
                    for (int ks = 0; ks < KSL; ++ks)
                        acc += scores[(ks * NQP + h) * L.s_ld + lane];
                    if constexpr (QUANT) acc = acc * k_scale + k_offset * qsum_r[u];
                    x[u] = (acc + bias_r[u]) * p.scale;
                }
            }
#pragma unroll
            for (int u = 0; u < HPW; ++u) {
                const int h = u * NW + warp;
                if (h >= NQ) continue;  // warp-uniform; padded heads' probabilities stay zero
                const float m_new = fmaxf(m_run[u], warp_max_float(x[u]));
                const float pe = lane < n ? __expf(x[u] - m_new) : 0.0f;
                const __half e = __float2half_rn(pe);
                const float alpha = __expf(m_run[u] - m_new);  // 0 on the first tile
                l_run[u] = l_run[u] * alpha + __half2float(e);  // the weights the MMA uses
                m_run[u] = m_new;
                if constexpr (QUANT) {
                    const float w = pe * v_scale;
                    const float w_max = warp_max_float(w);
                    const float old_unit = unit_s[h];  // only this warp writes it
                    const float unit = w_max > 0.0f ? w_max : old_unit;  // all-zero: keep
                    probs[h * L.p_ld + lane] = __float2half_rn(w * (1.0f / unit));
                    c_run[u] = c_run[u] * alpha + __half2float(e) * v_offset;
                    __syncwarp();
                    if (lane == 0) {
                        alpha_s[h] = alpha * (old_unit / unit);
                        unit_s[h] = unit;
                    }
                } else {
                    probs[h * L.p_ld + lane] = e;
                    if (lane == 0) alpha_s[h] = alpha;
                }
            }
        }
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
            if constexpr (QUANT) {
                // Column group q = 16 raw columns: 4 bytes of tokens g and g + 8 per lane,
                // widened, are the rows of four 8×8 matrices (tokens × columns 4·t4 + {0, 1}
                // and 4·t4 + {2, 3}); movmatrix turns them into the B fragments of the two
                // 8-column blocks j, j + 1 (raw_v_column maps them back).
#pragma unroll
                for (int j = 0; j < NB; j += 2) {
                    const int q = warp + NW * (j / 2);
                    if (q >= dv16) break;  // warp-uniform
                    const unsigned char* r =
                        stage + L.v_part + (kk * 16 + g) * p.raw_ld + q * 16 + 4 * t4;
                    std::uint32_t lo0, hi0, lo1, hi1;
                    widen_elements4<E>(*reinterpret_cast<const std::uint32_t*>(r), lo0, hi0);
                    widen_elements4<E>(*reinterpret_cast<const std::uint32_t*>(r + 8 * p.raw_ld),
                                       lo1, hi1);
                    const std::uint32_t b_lo0 = transpose_8x8(lo0), b_lo1 = transpose_8x8(lo1);
                    const std::uint32_t b_hi0 = transpose_8x8(hi0), b_hi1 = transpose_8x8(hi1);
#pragma unroll
                    for (int m = 0; m < MT; ++m) {
                        mma_16816(o[m][j], a[m][0], a[m][1], a[m][2], a[m][3], b_lo0, b_lo1);
                        mma_16816(o[m][j + 1], a[m][0], a[m][1], a[m][2], a[m][3], b_hi0, b_hi1);
                    }
                }
            } else {
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
                            mma_16816(o[m][j + 1], a[m][0], a[m][1], a[m][2], a[m][3], vb[2],
                                      vb[3]);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();

    // --- the split's unnormalized accumulators, m and l, for the combine kernel --------------
    // Quantized V: back from each head's unit, plus its offset sum, which the softmax warps
    // hand over in shared memory (ΣQz's slots, read only at set-up).
    float* offset_sum_s = qsum_s;
    if constexpr (QUANT) {
#pragma unroll
        for (int u = 0; u < HPW; ++u) {
            const float c = device::warp_sum(c_run[u]);
            if (lane == 0) offset_sum_s[u * NW + warp] = c;
        }
        __syncthreads();
    }
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            // Quantized: column group warp + NW·(j / 2), block j % 2 held raw columns
            // 4·t4 + 2·(j % 2) and + 1 (see P·V).
            const int col = QUANT ? (warp + NW * (j / 2)) * 16 + 4 * t4 + 2 * (j % 2)
                                  : (warp + NW * j) * 8 + 2 * t4;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int h = m * 16 + g + 8 * half;
                if (h >= NQ) continue;
                float* dst = p.part_acc +
                             ((std::size_t(b) * NQ + h) * p.max_splits + split) * p.acc_stride;
                const float unit = QUANT ? unit_s[h] : 1.0f;
                const float add = QUANT ? offset_sum_s[h] : 0.0f;
                if (col < dv) dst[col] = o[m][j][2 * half] * unit + add;
                if (col + 1 < dv) dst[col + 1] = o[m][j][2 * half + 1] * unit + add;
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
/// Row groups of a projection CTA for BB items: each thread sums head_dim / groups rows of P_h,
/// one dependent chain of loads. With few items a load feeds few multiply-adds and the chain's
/// latency is the kernel's time (64 rows issued 4 loads at a time wait ~16 DRAM latencies), so
/// small batches split the rows 8 ways (512 threads, 16 rows, all loads issued at once); 16
/// items give each load 16 multiply-adds, and 2 groups keep the shared reduction small.
__host__ __device__ constexpr int project_row_groups(int items) { return items <= 4 ? 8 : 2; }
__host__ __device__ constexpr int project_threads(int items) {
    return project_columns * project_row_groups(items);
}

/// Qz = P_hᵀ q (fp16, zero beyond d_k up to qz_ld) for head blockIdx.x, items blockIdx.y · BB …
/// and latent columns blockIdx.z · project_columns …; bias = q · μ_h from the blocks of column
/// block 0. Each element of P_h is read once per BB items. Threads are (row group, column):
/// each sums every project_row_groups(BB)-th row of P_h, so a thread's chain of dependent loads is
/// head_dim / project_row_groups(BB) long, and the groups meet in shared memory — at batch 1 the
/// projection is latency-bound, not bandwidth-bound.
/// ΣQz of quantized codecs is summed by the split kernel from the fp16 Qz it multiplies.
template <class Codec, int BB>
__global__ void __launch_bounds__(project_threads(BB))
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
    constexpr int RG = project_row_groups(BB), NT = project_threads(BB);
    for (int idx = tid; idx < BB * hd; idx += NT) {
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
#pragma unroll 16
            for (int r = rg; r < hd; r += RG) {
                const float w = col[std::size_t(r) * d];  // coalesced over j
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) acc[bb] += w * q_s[bb * hd + r];
            }
        }
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) red[(rg * BB + bb) * project_columns + jj] = acc[bb];
    }
    __syncthreads();
    for (int idx = tid; idx < nb * project_columns; idx += NT) {
        const int bb = idx / project_columns, c = idx % project_columns;
        const int col = int(blockIdx.z) * project_columns + c;
        if (col >= qz_ld) continue;
        float sum = 0.0f;
#pragma unroll
        for (int g = 0; g < RG; ++g) sum += red[(g * BB + bb) * project_columns + c];
        qz[(std::size_t(b0 + bb) * n_heads + h) * qz_ld + col] = __float2half_rn(sum);
    }
    if (blockIdx.z == 0) {
        for (int bb = warp; bb < nb; bb += NT / 32) {
            float bias = 0.0f;
            for (int r = lane; r < hd; r += 32) bias += q_s[bb * hd + r] * lin.mean[first + r];
            bias = device::warp_sum(bias);
            if (lane == 0) qbias[std::size_t(b0 + bb) * n_heads + h] = bias;
        }
    }
}

inline constexpr int lift_threads = 256;
/// Output rows per lift CTA: a warp per row of P_h at a time. One item: a row per warp (8),
/// so that the 128 rows of a head spread over 16 CTAs and no warp walks rows one latency after
/// another; 16 items: 4 rows per warp, so z̄ (16 × d floats) is staged by fewer CTAs.
__host__ __device__ constexpr int lift_rows_per_block(int items) { return items <= 4 ? 8 : 32; }

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
    constexpr int RPB = lift_rows_per_block(BB);
    const int r_end = min(hd, int(blockIdx.z + 1) * RPB);
    for (int r = int(blockIdx.z) * RPB + warp; r < r_end;
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
    const long slots = long(ws.sm_count()) * ctas_per_sm;
    pl.chunk = tile;
    pl.splits = 1;
    if (p.max_kv_length > 0 && ws.tune.latent_chunk > 0) {
        pl.chunk = std::min(max_chunk, round_up(ws.tune.latent_chunk, tile));
        pl.splits = (p.max_kv_length + pl.chunk - 1) / pl.chunk;
    } else if (p.max_kv_length > 0) {
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
    // make_plan kept pl.smem within the device's opt-in limit.
    KVCAR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(pl.smem)));
    const dim3 grid = cuda::checked_grid(pl.splits, batch, 1, "latent_decode_attention split_kernel");
    kernel<<<grid, NW * 32, pl.smem, stream>>>(sp);
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
                sizeof(float) * BB * (cache.head_dim + lt::project_columns * lt::project_row_groups(BB));
            const dim3 project_grid = cuda::checked_grid(
                H, (p.batch + BB - 1) / BB,
                (pl.lat_pad + lt::project_columns - 1) / lt::project_columns,
                "latent_decode_attention project_kernel");
            auto project = lt::project_kernel<Codec, BB>;
            cuda::allow_dynamic_smem(project, project_smem, ws.max_shared_bytes(),
                                     "latent_decode_attention project_kernel");
            project<<<project_grid, lt::project_threads(BB), project_smem, stream>>>(
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
            cuda::allow_dynamic_smem(lift, lift_smem, ws.max_shared_bytes(),
                                     "latent_decode_attention lift_kernel");
            const dim3 lift_grid = cuda::checked_grid(
                H, (p.batch + BB - 1) / BB,
                (cache.head_dim + lt::lift_rows_per_block(BB) - 1) / lt::lift_rows_per_block(BB),
                "latent_decode_attention lift_kernel");
            lift<<<lift_grid, lt::lift_threads, lift_smem, stream>>>(
                cache, zbar, zw, p.kv_lengths, p.out, p.layer, p.batch, H, G);
            KVCAR_CUDA_CHECK_LAUNCH("latent_decode_attention lift_kernel");
        });
    }
}

}  // namespace kvcar::kernels
