// kvcar/kernels/append/affine_tiles.cuh — append for linear codecs (plain or quantized): the
// latents of a tile of tokens computed by one block, so each projection element is read once per
// tile instead of once per record.
//
// Why. The general append (append.cuh) gives every record — (token, group, K/V) — its own warp,
// and for a linear codec that warp streams the whole projection P ([D][d] floats: 64 KiB for
// TinyLlama's whole-layer d/4 codec) to compute z = Pᵀ(x − μ). A 2048-token prefill step has
// about 4600 records per layer, so the kernel moved ~300 MB through L1/L2 per layer for 0.15
// GFLOP of work: 1.8 ms of a 21 ms serving pass on an H100 (docs/results/serving-profile.md).
//
// Work split. Block (t, r) takes rows [t·T, t·T + T) of the batch for record kind r = (group,
// K/V), whose slot (and codec) is one for the whole block:
//   1. stage      x − μ for the tile's rows into shared memory ([T][D] floats);
//   2. project    z[row][j] = Σ_i P[i][j] · (x − μ)[row][i]: a thread owns one column j and
//                 kRows rows, so each P[i][j] it loads (coalesced along j) serves kRows rows,
//                 and its kRows sums are independent chains that hide the add latency;
//   3. store      a warp per row writes the record (plain elements, or quantized exactly as the
//                 host does: device::detail::warp_quantize).
// The sums run in the host codec's order with one rounding per product and per sum
// (__fmul_rn/__fadd_rn, as device/encode.cuh does), so records are bit-identical to the host's
// and to the general kernel's.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/append/affine_tiles.cuh needs nvcc"
#endif

#include <algorithm>
#include <cstddef>

#include <cuda_runtime.h>

#include "kvcar/attention_params.hpp"
#include "kvcar/codec/traits.hpp"
#include "kvcar/cuda/activations.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/encode.cuh"
#include "kvcar/device/latent.cuh"

namespace kvcar::kernels::detail {

inline constexpr int affine_tile_threads = 256;
/// Rows one thread projects per column: P[i][j] is loaded once for this many rows.
inline constexpr int affine_rows_per_thread = 8;

/// Codecs whose latent is Pᵀ(x − μ): linear_codec, and quantized_codec around one.
template <class Codec>
inline constexpr bool affine_append_codec =
    device::codec_traits<Codec>::family == codec_family::affine;

/// The item (append_params entry) that owns batch row `row`: the last b with token_offsets[b] <=
/// row (binary search; the offsets are ascending).
__device__ inline int append_item_of(const append_params& p, int row) {
    int lo = 0, hi = p.batch - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (p.token_offsets[mid] <= row) lo = mid; else hi = mid - 1;
    }
    return lo;
}

/// Rows per block: as many as fit `smem_budget` bytes of [rows][D + d] floats, a multiple of
/// affine_rows_per_thread, at most 32 (more only lengthens the grid's tail); 0 when not even
/// affine_rows_per_thread rows fit.
inline int affine_tile_rows(int group_width, int max_latent_width, std::size_t smem_budget) {
    const std::size_t row_bytes = sizeof(float) * std::size_t(group_width + max_latent_width);
    const int fit = int(smem_budget / row_bytes);
    return std::min(32, fit / affine_rows_per_thread * affine_rows_per_thread);
}

template <class Codec>
__global__ void __launch_bounds__(affine_tile_threads)
    append_affine_tiles_kernel(device::cache_view<Codec> cache, append_params p, int tile_rows,
                               int max_latent_width) {
    extern __shared__ float tile[];  // [tile_rows][D] centered x, then [tile_rows][d_max] z
    const int group = int(blockIdx.y) / kv_kind_count;
    const kv_kind kind = kv_kind(int(blockIdx.y) % kv_kind_count);
    const int slot = cache.write_slots[cache.logical_index(p.layer, group, kind)];
    if (slot < 0) return;  // reused: this layer stores nothing for the group
    const Codec& codec = cache.codecs[slot];
    const auto& core = device::core_of(codec);
    const int D = core.width, d = core.rank;
    const int first_row = int(blockIdx.x) * tile_rows;
    const int rows = min(tile_rows, p.total_tokens - first_row);
    float* centered = tile;
    float* z = tile + std::size_t(tile_rows) * D;

    // 1. Stage x − μ (consecutive threads read consecutive floats of a row).
    // f16 / bf16 input is widened here, where it is read once anyway.
    const input_activations src = kind == kv_kind::key ? p.k : p.v;
    const std::size_t x0 = std::size_t(group) * cache.group_width();
    for (int e = int(threadIdx.x); e < rows * D; e += affine_tile_threads) {
        const int r = e / D, i = e - r * D;
        const float x = gpu::load(src, x0 + std::size_t(first_row + r) * cache.token_width() + i);
        centered[e] = __fsub_rn(x, core.mean[i]);
    }
    __syncthreads();

    // 2. Project: work item (column j, row block rb) sums rows rb·R .. rb·R + R − 1. Rows past
    // the tile's end repeat its last row (in bounds) and are not stored.
    constexpr int R = affine_rows_per_thread;
    const int row_blocks = (rows + R - 1) / R;
    for (int item = int(threadIdx.x); item < d * row_blocks; item += affine_tile_threads) {
        const int j = item % d, rb = item / d;
        const float* src[R];
#pragma unroll
        for (int k = 0; k < R; ++k) src[k] = centered + std::size_t(min(rb * R + k, rows - 1)) * D;
        float acc[R];
#pragma unroll
        for (int k = 0; k < R; ++k) acc[k] = 0.0f;
        for (int i = 0; i < D; ++i) {
            const float w = core.basis[std::size_t(i) * d + j];
#pragma unroll
            for (int k = 0; k < R; ++k) acc[k] = __fadd_rn(acc[k], __fmul_rn(w, src[k][i]));
        }
#pragma unroll
        for (int k = 0; k < R; ++k)
            if (rb * R + k < rows) z[std::size_t(rb * R + k) * max_latent_width + j] = acc[k];
    }
    __syncthreads();

    // 3. Store: a warp per row.
    const int warp = int(threadIdx.x) >> 5;
    for (int r = warp; r < rows; r += affine_tile_threads / 32) {
        const int row = first_row + r;
        const int b = append_item_of(p, row);
        const int position = p.positions[b] + (row - p.token_offsets[b]);
        std::byte* record = cache.slots[slot].record(p.sequences[b], position);
        const float* zr = z + std::size_t(r) * max_latent_width;
        if constexpr (device::codec_traits<Codec>::quantized) {
            device::detail::warp_quantize(codec, zr, record);
        } else {
            device::detail::warp_store_plain<typename Codec::storage_type>(zr, d, record);
        }
    }
}

/// Whether the tiled kernel takes this append: an affine codec whose tile of at least
/// affine_rows_per_thread rows fits the default dynamic shared memory.
template <class Codec>
bool append_affine_tiles_supported(const device::cache_view<Codec>& cache, int max_latent_width) {
    if constexpr (!affine_append_codec<Codec>) {
        return false;
    } else {
        return affine_tile_rows(cache.group_width(), max_latent_width,
                                gpu::default_dynamic_smem) > 0;
    }
}

/// Enqueues the tiled append (precondition: append_affine_tiles_supported).
template <class Codec>
void launch_append_affine_tiles(const device::cache_view<Codec>& cache, const append_params& p,
                                int max_latent_width, cudaStream_t stream) {
    const int rows = affine_tile_rows(cache.group_width(), max_latent_width,
                                      gpu::default_dynamic_smem);
    const std::size_t smem =
        sizeof(float) * std::size_t(rows) * std::size_t(cache.group_width() + max_latent_width);
    const long long tiles = (p.total_tokens + rows - 1) / rows;
    append_affine_tiles_kernel<Codec><<<
        gpu::checked_grid(tiles, (long long)cache.groups_per_layer * kv_kind_count, 1,
                          "append_affine_tiles_kernel"),
        affine_tile_threads, smem, stream>>>(cache, p, rows, max_latent_width);
    KVCAR_CUDA_CHECK_LAUNCH("append_affine_tiles_kernel");
}

}  // namespace kvcar::kernels::detail
