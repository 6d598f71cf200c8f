// kvcar/kernels/decode/latent_tc_common.cuh — the pieces the tensor-core latent path's kernels
// and its host plan share: which codecs it reads, the tile and ring constants, the split kernel's
// shared-memory layout and parameters, and small device helpers (ordered-integer warp max,
// in-register widening of int8/fp8 elements, the quantized column permutation, the page walk).
// The math and the kernel are described in kvcar/kernels/latent_decode_attention.cuh.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/latent_tc_common.cuh needs nvcc"
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
}  // namespace detail::latent_tc

}  // namespace kvcar::kernels
