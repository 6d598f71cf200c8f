// kvcar/kernels/decode/latent_tc_aux.cuh — the small kernels around the latent split kernel:
// the query projection Qz = P_hᵀ q (+ the bias q·μ_h) before it, and the lift P_h z̄ + μ_h after
// the merge. Both are small GEMMs per KV head: the G query heads of a KV head and the items of
// the batch are VB "vectors" that share one read of P's rows for that KV head, so a CTA serves
// up to VB = 16 vectors (4 items of a Llama-3-8B layer) from each element of P it loads.
//
// Why they are shaped this way (Nsight Compute, one H100, decode_bench llama3-8b B8 L512,
// linear-layer-d/2, docs/results/speed-data/h100-2026-12-07-ncu): the kernels they replace kept a
// CTA per *query* head, each thread walking up to 64 rows of P, and reduced every item's sum with
// its own 5-shuffle warp reduction. The lift took 27 µs, the split kernel 18.5 and the merge 8.1
// (that profile missed the projection) of a step decode_bench times at 70 µs. Here a CTA covers a KV head's G
// heads at once, the projection's threads each sum a quarter of the rows with the loads issued
// together, and the lift reduces VB sums over the warp in VB - 1 + 5 - log2(VB) shuffles
// (warp_sum_vectors) instead of 5·VB.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/latent_tc_aux.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>

#include "kvcar/kernels/decode/latent_tc_common.cuh"

namespace kvcar::kernels::detail::latent_tc {

/// Vectors (item, query head of one KV head) per projection or lift CTA: 4. The first choice, 16
/// from 5 vectors up (fewer CTAs, each row of P_h read once for 16 vectors), was slower at every
/// batch of the 2026-12-08 H100 sweep (docs/results/decode-sweep-2026-12-08.md, Llama-3-8B
/// layer, batches 1-64, 512-32k tokens): with 4 vectors and the lift rows below the whole latent
/// step ran 1.06-1.41x faster at batch 8, 1.02-1.27x at 32, 1.01-1.23x at 64 (not profiled; more
/// CTAs of fewer vectors spread the projection and the lift over more multiprocessors, and a row
/// of P_h that several CTAs read is likely an L2 hit after the first). 16 stays a tuning choice
/// (attention_workspace::tuning).
__host__ __device__ constexpr int vectors_per_block(int /*vectors*/) { return 4; }

inline constexpr int aux_threads = 256;
inline constexpr int project_columns = 64;                         // latent columns per CTA
inline constexpr int project_row_slices = aux_threads / project_columns;  // 4

/// Sums VB per-lane values over the warp at once: each of log2(VB) halving steps trades half of
/// a lane's values with the partner lane `off` away, so VB sums cost VB - 1 shuffles, plus one per
/// remaining step, instead of 5 per sum. Afterwards lane l holds in v[0] the full sum of value
/// l / (32 / VB) (lanes that share it hold the same total).
template <int VB>
__device__ __forceinline__ void warp_sum_vectors(float (&v)[VB], int lane) {
    static_assert(VB >= 1 && VB <= 32 && (VB & (VB - 1)) == 0, "a power of two up to 32");
    int off = 16;
#pragma unroll
    for (int n = VB; n > 1; n /= 2, off /= 2) {
        const bool upper = (lane & off) != 0;  // keeps the upper half of the n values
#pragma unroll
        for (int i = 0; i < n / 2; ++i) {
            const float mine = upper ? v[i + n / 2] : v[i];
            const float other = upper ? v[i] : v[i + n / 2];
            v[i] = mine + __shfl_xor_sync(0xffffffffu, other, off);
        }
    }
    for (; off >= 1; off /= 2) v[0] += __shfl_xor_sync(0xffffffffu, v[0], off);
}

/// Qz = P_hᵀ q (fp16, zero beyond d_k up to qz_ld) for KV head blockIdx.x, latent columns
/// blockIdx.y · 64 … and vectors blockIdx.z · VB … (vector v is item v / G, query head
/// kvh · G + v % G); bias = q · μ_h from the CTAs of column block 0. Thread (row slice, column):
/// the column's coalesced loads of a quarter of P_h's rows, all issued before the multiply-adds
/// that use them (no chain of dependent loads), each feeding VB multiply-adds; the four slices
/// meet in shared memory. ΣQz of quantized codecs is summed by the split kernel from the fp16 Qz.
template <class Codec, int VB>
__global__ void __launch_bounds__(aux_threads)
    project_kernel(device::cache_view<Codec> cache, input_activations q, __half* qz, float* qbias,
                   int layer, int batch, int n_heads, int heads_per_kv, int qz_ld) {
    extern __shared__ __align__(16) float q_s[];  // [VB][head_dim], then [slices][VB][columns]
    gpu::wait_for_prior_grids();  // q (launched with overlap)
    gpu::allow_dependent_grids();
    const int kvh = int(blockIdx.x), G = heads_per_kv, v0 = int(blockIdx.z) * VB;
    const int nv = min(VB, batch * G - v0);
    const int hd = cache.head_dim;
    const Codec ck = cache.codecs[cache.slot(layer, 0, kv_kind::key)];
    const auto& lin = device::core_of(ck);
    const int d = lin.rank;
    const int first = kvh * hd;  // whole-layer group: the KV head's rows inside P
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    auto q_row = [&](int vv) {  // q's row of vector v0 + vv
        const int v = v0 + vv, b = v / G;
        return (std::size_t(b) * n_heads + kvh * G + (v - b * G)) * hd;
    };
    for (int idx = tid; idx < VB * hd; idx += aux_threads) {
        const int vv = idx / hd, r = idx - vv * hd;
        q_s[idx] = vv < nv ? gpu::load(q, q_row(vv) + r) : 0.0f;
    }
    __syncthreads();
    float* red = q_s + VB * hd;
    const int rg = tid / project_columns, jj = tid % project_columns;
    const int j = int(blockIdx.y) * project_columns + jj;
    const int rows = (hd + project_row_slices - 1) / project_row_slices;
    const int r_begin = rg * rows, r_end = min(hd, r_begin + rows);
    {
        float acc[VB];
#pragma unroll
        for (int vv = 0; vv < VB; ++vv) acc[vv] = 0.0f;
        if (j < d) {
            const float* col = lin.basis + std::size_t(first) * d + j;
#pragma unroll 8
            for (int r = r_begin; r < r_end; ++r) {
                const float w = col[std::size_t(r) * d];  // coalesced over the warp's columns
#pragma unroll
                for (int vv = 0; vv < VB; ++vv) acc[vv] += w * q_s[vv * hd + r];  // broadcast
            }
        }
#pragma unroll
        for (int vv = 0; vv < VB; ++vv) red[(rg * VB + vv) * project_columns + jj] = acc[vv];
    }
    __syncthreads();
    for (int idx = tid; idx < nv * project_columns; idx += aux_threads) {
        const int vv = idx / project_columns, c = idx % project_columns;
        const int col = int(blockIdx.y) * project_columns + c;
        if (col >= qz_ld) continue;
        float sum = 0.0f;
#pragma unroll
        for (int g = 0; g < project_row_slices; ++g) sum += red[(g * VB + vv) * project_columns + c];
        qz[q_row(vv) / hd * qz_ld + col] = __float2half_rn(sum);
    }
    if (blockIdx.y == 0) {
        for (int vv = warp; vv < nv; vv += aux_threads / 32) {
            float bias = 0.0f;
            for (int r = lane; r < hd; r += 32) bias += q_s[vv * hd + r] * lin.mean[first + r];
            bias = device::warp_sum(bias);
            if (lane == 0) qbias[q_row(vv) / hd] = bias;
        }
    }
}

/// Output rows per warp of a lift CTA (8 warps): 1 while the grid is small, more when the launch
/// has many vector blocks, so that fewer CTAs stage the same z̄ (VB × d floats each).
__host__ __device__ constexpr int lift_rows_per_warp(int vector_blocks) {
    return vector_blocks >= 8 ? 4 : vector_blocks >= 4 ? 2 : 1;
}

/// out = P_h z̄ + μ_h for KV head blockIdx.x, output rows blockIdx.y · 8 · rows_per_warp … and
/// vectors blockIdx.z · VB …, from the merged latents z̄ [batch][n_heads][zbar_stride]
/// (combine_kernel's output; μ only for items that saw a token). A warp per row of P_h: its
/// lanes read the row once, coalesced, for all VB vectors, whose z̄ sit in shared memory, and
/// warp_sum_vectors leaves each lane one vector's sum to store.
template <class Codec, int VB>
__global__ void __launch_bounds__(aux_threads)
    lift_kernel(device::cache_view<Codec> cache, const float* zbar, int zbar_stride,
                const std::int32_t* kv_lengths, output_activations out, int layer, int batch,
                int n_heads, int heads_per_kv, int rows_per_warp) {
    extern __shared__ __align__(16) float z_s[];  // [VB][d]
    gpu::wait_for_prior_grids();  // the merged z̄ (launched with overlap)
    gpu::allow_dependent_grids();
    const int kvh = int(blockIdx.x), G = heads_per_kv, v0 = int(blockIdx.z) * VB;
    const int nv = min(VB, batch * G - v0);
    const int hd = cache.head_dim;
    const Codec cv = cache.codecs[cache.slot(layer, 0, kv_kind::value)];
    const auto& lin = device::core_of(cv);
    const int d = lin.rank;
    const int first = kvh * hd;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    auto row_of = [&](int vv) {  // (item, head) row of vector v0 + vv
        const int v = v0 + vv, b = v / G;
        return std::size_t(b) * n_heads + kvh * G + (v - b * G);
    };
    for (int idx = tid; idx < VB * d; idx += aux_threads) {
        const int vv = idx / d, j = idx - vv * d;
        z_s[idx] = vv < nv ? zbar[row_of(vv) * zbar_stride + j] : 0.0f;
    }
    __syncthreads();
    const bool vec4 = d % 4 == 0;  // z_s rows are then 16-byte aligned
    const int row0 = int(blockIdx.y) * (aux_threads / 32) * rows_per_warp;
    for (int k = 0; k < rows_per_warp; ++k) {
        const int r = row0 + k * (aux_threads / 32) + warp;
        if (r >= hd) break;  // warp-uniform
        const float* prow = lin.basis + std::size_t(first + r) * d;
        float acc[VB];
#pragma unroll
        for (int vv = 0; vv < VB; ++vv) acc[vv] = 0.0f;
        if (vec4 && (reinterpret_cast<std::uintptr_t>(prow) & 15u) == 0) {
#pragma unroll 2
            for (int j4 = lane; j4 < d / 4; j4 += 32) {
                const float4 w = *reinterpret_cast<const float4*>(prow + 4 * j4);
#pragma unroll
                for (int vv = 0; vv < VB; ++vv) {
                    const float4 z = *reinterpret_cast<const float4*>(z_s + vv * d + 4 * j4);
                    acc[vv] += w.x * z.x + w.y * z.y + w.z * z.z + w.w * z.w;
                }
            }
        } else {
            for (int j = lane; j < d; j += 32) {
                const float w = prow[j];
#pragma unroll
                for (int vv = 0; vv < VB; ++vv) acc[vv] += w * z_s[vv * d + j];
            }
        }
        warp_sum_vectors<VB>(acc, lane);
        const int vv = lane / (32 / VB);
        if (lane % (32 / VB) == 0 && vv < nv) {
            const std::size_t row = row_of(vv);
            const int b = int(row / std::size_t(n_heads));
            // Σ a = 1 after normalization; an empty item has no tokens and gives zeros, not μ.
            gpu::store(out, row * hd + r, (kv_lengths[b] > 0 ? lin.mean[first + r] : 0.0f) + acc[0]);
        }
    }
}

}  // namespace kvcar::kernels::detail::latent_tc
