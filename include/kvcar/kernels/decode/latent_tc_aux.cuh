// kvcar/kernels/decode/latent_tc_aux.cuh — the small kernels around the latent split kernel:
// the query projection Qz = P_hᵀ q (+ the bias q·μ_h) before it, and the lift P_h z̄ + μ_h after
// the merge. Both read P_h once per block of items; at small batch they are latency-bound, so
// their CTA shapes depend on the items per block (see project_row_slices, lift_rows_per_block).
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/latent_tc_aux.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>

#include "kvcar/kernels/decode/latent_tc_common.cuh"

namespace kvcar::kernels::detail::latent_tc {

inline constexpr int project_columns = 64;  // latent columns per projection CTA
/// Row groups of a projection CTA for BB items: each thread sums head_dim / groups rows of P_h,
/// one dependent chain of loads. With few items a load feeds few multiply-adds and the chain's
/// latency is the kernel's time (64 rows issued 4 loads at a time wait ~16 DRAM latencies), so
/// small batches split the rows 8 ways (512 threads, 16 rows, all loads issued at once); 16
/// items give each load 16 multiply-adds, and 2 groups keep the shared reduction small.
__host__ __device__ constexpr int project_row_slices(int items) { return items <= 4 ? 8 : 2; }
__host__ __device__ constexpr int project_threads(int items) {
    return project_columns * project_row_slices(items);
}

/// Qz = P_hᵀ q (fp16, zero beyond d_k up to qz_ld) for head blockIdx.x, items blockIdx.y · BB …
/// and latent columns blockIdx.z · project_columns …; bias = q · μ_h from the blocks of column
/// block 0. Each element of P_h is read once per BB items. Threads are (row group, column):
/// each sums every project_row_slices(BB)-th row of P_h, so a thread's chain of dependent loads is
/// head_dim / project_row_slices(BB) long, and the groups meet in shared memory — at batch 1 the
/// projection is latency-bound, not bandwidth-bound.
/// ΣQz of quantized codecs is summed by the split kernel from the fp16 Qz it multiplies.
template <class Codec, int BB>
__global__ void __launch_bounds__(project_threads(BB))
    project_kernel(device::cache_view<Codec> cache, input_activations q, __half* qz, float* qbias,
                   int layer, int batch, int n_heads, int heads_per_kv, int qz_ld) {
    extern __shared__ __align__(16) float q_s[];  // [BB][head_dim], then [groups][BB][columns]
    gpu::wait_for_prior_grids();  // q (launched with overlap)
    gpu::allow_dependent_grids();
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
    constexpr int RG = project_row_slices(BB), NT = project_threads(BB);
    for (int idx = tid; idx < BB * hd; idx += NT) {
        const int bb = idx / hd, r = idx - (idx / hd) * hd;
        q_s[idx] = bb < nb ? gpu::load(q, (std::size_t(b0 + bb) * n_heads + h) * hd + r) : 0.0f;
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
                const std::int32_t* kv_lengths, output_activations out, int layer, int batch,
                int n_heads, int heads_per_kv) {
    extern __shared__ __align__(16) float z_s[];  // [BB][d]
    gpu::wait_for_prior_grids();  // the merged z̄ (launched with overlap)
    gpu::allow_dependent_grids();
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
                gpu::store(out, (std::size_t(b0 + bb) * n_heads + h) * hd + r,
                           (kv_lengths[b0 + bb] > 0 ? mu : 0.0f) + v);
        }
    }
}

}  // namespace kvcar::kernels::detail::latent_tc
