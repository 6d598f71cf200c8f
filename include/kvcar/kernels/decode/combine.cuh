// kvcar/kernels/decode/combine.cuh — the merge that ends every split-KV decode path.
//
// A split of `chunk` tokens leaves, per (item, head), an unnormalized accumulator
// acc_s = Σ_t e^(s_t − m_s) v_t with its score maximum m_s and sum l_s = Σ_t e^(s_t − m_s). The
// merge is exact: with M = max_s m_s and w_s = e^(m_s − M),
//     o = Σ_s w_s acc_s / Σ_s w_s l_s
// (the rescaling by w_s keeps every exponential <= 1, so nothing overflows). The latent and
// autoencoder paths merge into latent or hidden space (z̄) and lift afterwards; the direct and
// decoded paths merge straight into `out`.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/combine.cuh needs nvcc"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/workspace.cuh"

namespace kvcar::kernels::detail {

/// The splits' partial results of one launch and where their merge goes (combine_kernel).
struct merge_params {
    const float* part_acc = nullptr;          ///< [batch][n_heads][splits][acc_stride]
    const float* part_ml = nullptr;           ///< [batch][n_heads][splits][2]: max, sum
    const std::int32_t* kv_lengths = nullptr; ///< [batch]: tells how many splits saw tokens
    /// [batch][n_heads][width]: the attention output (f32, f16 or bf16), or the f32 latent or
    /// hidden z̄ that a lift reads next
    output_activations out;
    int batch = 0, n_heads = 0;
    int width = 0;       ///< merged floats per (item, head)
    int chunk = 0;       ///< tokens per split
    int splits = 0;      ///< splits per item (the partial buffers' stride)
    int acc_stride = 0;  ///< floats between two splits' accumulators
};

/// CTA sizes of the merge: 4 warps when an item has few splits (large batches: many CTAs, each
/// warp sums at most a few splits), 16 when it has many and the grid is smaller than the
/// multiprocessors (batch 1 at long contexts: 64–256 splits over 32 CTAs, where 4 warps walked
/// 16–64 splits each, a chain of dependent loads: on one H100 the merge of 128 splits took 18 µs
/// against the split kernel's 26, ncu, batch 1, 16k tokens).
inline constexpr int merge_threads = 128;
inline constexpr int merge_threads_many = 512;
inline constexpr int merge_many_splits = 16;  ///< from this many splits, merge_threads_many
inline constexpr int merge_columns = 128;  ///< columns per merge CTA: 4 per lane

/// fmaxf as a CUB reduction operator (spelled out: the name CUB gives it moved between releases).
struct max_op {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/// Merges the splits of (item blockIdx.x, head blockIdx.y) for the columns blockIdx.z · 128 …:
/// element i is Σ_s w_s acc_s[i] / Σ_s w_s l_s with w_s = e^(m_s − M). The CTA reduces M and
/// the denominator once over the splits; then warp w sums the splits w, w + W, … for all 128
/// columns (4 consecutive per lane, float4 loads where aligned), with the split's weight one
/// exponential per lane, and the warps meet in shared memory. At batch 1 a long context has
/// hundreds of splits per head: spreading columns over CTAs and splits over warps keeps enough
/// loads in flight (one CTA per head with a serial loop over splits was latency-bound).
/// The two block-wide reductions over the splits (M, then Σ w l) are cub::BlockReduce, whose
/// result thread 0 broadcasts through shared memory.
/// THREADS: merge_threads or merge_threads_many (W = THREADS / 32 warps).
template <int THREADS>
__global__ void __launch_bounds__(THREADS) combine_kernel(merge_params m) {
    static_assert(THREADS == merge_threads || THREADS == merge_threads_many,
                  "launch_merge's CTA shapes");
    using block_reduce = cub::BlockReduce<float, THREADS>;
    __shared__ typename block_reduce::TempStorage reduce_storage;
    __shared__ float4 partial[THREADS / 32][32];
    __shared__ float total_max, total_sum;
    gpu::wait_for_prior_grids();  // the split kernel's partials (launched with overlap)
    gpu::allow_dependent_grids();
    const int b = int(blockIdx.x), h = int(blockIdx.y);
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    constexpr int warps = THREADS / 32;
    const int len = m.kv_lengths[b];
    const int splits = len > 0 ? min((len + m.chunk - 1) / m.chunk, m.splits) : 0;
    const std::size_t row = std::size_t(b) * m.n_heads + h;
    const float* ml = m.part_ml + row * m.splits * 2;
    const float* acc = m.part_acc + row * m.splits * m.acc_stride;

    float mx = -INFINITY;
    for (int s = tid; s < splits; s += THREADS) mx = fmaxf(mx, ml[2 * s]);
    mx = block_reduce(reduce_storage).Reduce(mx, max_op{});
    if (tid == 0) total_max = mx;
    __syncthreads();  // publishes M; every thread is also done with reduce_storage
    mx = total_max;
    float l = 0.0f;
    for (int s = tid; s < splits; s += THREADS) l += ::expf(ml[2 * s] - mx) * ml[2 * s + 1];
    l = block_reduce(reduce_storage).Sum(l);
    if (tid == 0) total_sum = l;
    __syncthreads();
    l = total_sum;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // no token seen: zeros


    const int col = int(blockIdx.z) * merge_columns + 4 * lane;
    const bool vec = m.acc_stride % 4 == 0 && col + 4 <= m.width;
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (col < m.width) {
#pragma unroll 8
        for (int s = warp; s < splits; s += warps) {
            const float w = ::expf(ml[2 * s] - mx);
            const float* a = acc + std::size_t(s) * m.acc_stride + col;
            float4 v;
            if (vec) {
                v = *reinterpret_cast<const float4*>(a);
            } else {
                v.x = a[0];
                v.y = col + 1 < m.width ? a[1] : 0.0f;
                v.z = col + 2 < m.width ? a[2] : 0.0f;
                v.w = col + 3 < m.width ? a[3] : 0.0f;
            }
            o.x += w * v.x;
            o.y += w * v.y;
            o.z += w * v.z;
            o.w += w * v.w;
        }
    }
    partial[warp][lane] = o;
    __syncthreads();
    if (warp == 0 && col < m.width) {
        float4 t = partial[0][lane];
        for (int w = 1; w < warps; ++w) {
            const float4 u = partial[w][lane];
            t.x += u.x;
            t.y += u.y;
            t.z += u.z;
            t.w += u.w;
        }
        const std::size_t dst = row * m.width + col;
        const float r[4] = {t.x * inv, t.y * inv, t.z * inv, t.w * inv};
        for (int e = 0; e < 4 && col + e < m.width; ++e) gpu::store(m.out, dst + e, r[e]);
    }
}

/// Merges the splits of every (item, head) into `out` (combine_kernel: a CTA per 128 columns)
/// and records the split plan in the workspace; every split-KV path ends with it.
inline void launch_merge(const merge_params& m, attention_workspace& ws, cudaStream_t stream,
                         const char* what) {
    const dim3 grid = gpu::checked_grid(m.batch, m.n_heads,
                                         (m.width + merge_columns - 1) / merge_columns, what);
    // The 16-warp CTA adds parallelism to a small grid (batch 1: one CTA per head); where the
    // grid alone covers the multiprocessors it only adds idle warps and a wider reduction. At
    // batch 8, 16 splits (256 merge CTAs) merged 5 µs faster on 4 warps at every context on one
    // H100 (decode_bench --merge-many-splits 17, linear-layer-d/2, Llama-3-8B-like layer), the
    // constant +5–8 µs that decode-ab-2026-12-06.md found. A tuned threshold keeps the old rule.
    const bool tuned = ws.tune.merge_many_splits > 0;
    const long ctas = long(grid.x) * grid.y * grid.z;
    const bool many = m.splits >= (tuned ? ws.tune.merge_many_splits : merge_many_splits) &&
                      (tuned || ctas < ws.sm_count());
    gpu::launch(many ? combine_kernel<merge_threads_many> : combine_kernel<merge_threads>,
                {grid, dim3(many ? merge_threads_many : merge_threads), 0, stream,
                 ws.overlap_launches()},
                what, m);
    ws.last_splits = m.splits;
    ws.last_chunk = m.chunk;
}

}  // namespace kvcar::kernels::detail
