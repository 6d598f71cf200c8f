// kvcar/kernels/decode/latent.cuh — the `latent` path: affine codecs (linear, quantized linear)
// in latent space on CUDA cores.
//
// The decoder is x̂ = P z + μ, so q·x̂ = (Pᵀq)·z + q·μ and Σ a x̂ = P(Σ a z) + (Σ a) μ: queries are
// projected once per (item, head) into each group's latent space (qz = Pᵀq, bias = q·μ), the
// generic split kernel (decode/generic_split.cuh) reads the d-wide latents of its group once
// for all heads of the group and accumulates Σ a z, and the merge lifts P(Σ a z) + μ. The cache
// is read at width d and nothing is decompressed. RoPE on read rotates keys by their token's
// position, which does not commute with P, so that case takes the decoded path. Whole-layer
// groups of f16/int8/fp8 latents run on tensor cores instead (decode/latent_tensor_cores.cuh).
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/latent.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/device/affine.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/generic_split.cuh"
#include "kvcar/kernels/decode/workspace.cuh"

namespace kvcar::kernels::detail {

/// Merges the splits of (item blockIdx.x, head blockIdx.y): element i of the output is
/// Σ_s w_s acc_s[i] / Σ_s w_s l_s with w_s = e^(m_s − M). Every thread recomputes the few weights
/// it needs (splits are tens to hundreds), so no shared state and no barrier is involved.
/// Writes merged[i] = that value (0 when no token was seen) for the thread's own i < width and
/// returns whether any token was seen.
template <int THREADS>
__device__ bool merge_splits(const float* part_acc, const float* part_ml, int len, int chunk,
                             int max_splits, int acc_stride, int width, float* merged) {
    const int b = int(blockIdx.x), h = int(blockIdx.y), n_heads = int(gridDim.y);
    const std::size_t row = std::size_t(b) * n_heads + h;
    const int splits = len > 0 ? min((len + chunk - 1) / chunk, max_splits) : 0;
    const float* ml = part_ml + row * max_splits * 2;
    float m = -INFINITY;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, ml[2 * s]);
    float l = 0.0f;
    for (int s = 0; s < splits; ++s) l += ::expf(ml[2 * s] - m) * ml[2 * s + 1];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const float* acc = part_acc + row * max_splits * acc_stride;
    for (int i = int(threadIdx.x); i < width; i += THREADS) {
        float o = 0.0f;
        for (int s = 0; s < splits; ++s)
            o += ::expf(ml[2 * s] - m) * acc[std::size_t(s) * acc_stride + i];
        merged[i] = o * inv;
    }
    return l > 0.0f;
}

/// Merges latent partials and lifts them: out = P_v,h z̄ + μ_v,h (zeros for an empty item).
template <class Codec, int THREADS>
__global__ void __launch_bounds__(THREADS)
    combine_lift_kernel(device::cache_view<Codec> cache, const float* part_acc,
                        const float* part_ml, const std::int32_t* kv_lengths,
                        output_activations out, int layer, int heads_per_kv, int chunk,
                        int max_splits, int acc_stride) {
    extern __shared__ float merged[];  // [max latent width], then [head_dim] for f16/bf16 out
    const int b = int(blockIdx.x), h = int(blockIdx.y);
    const int kvh = h / heads_per_kv;
    const int group = kvh / cache.heads_per_group, in_group = kvh % cache.heads_per_group;
    const Codec cv = cache.codecs[cache.slot(layer, group, kv_kind::value)];
    const bool seen = merge_splits<THREADS>(part_acc, part_ml, kv_lengths[b], chunk, max_splits,
                                            acc_stride, cv.latent_width(), merged);
    __syncthreads();  // lift reads every element of merged
    // Σ a_t = 1 after normalization; an empty item has no tokens and must give zeros, not μ.
    const std::size_t row = (std::size_t(b) * gridDim.y + h) * cache.head_dim;
    if (out.type == activation_type::f32) {  // lift straight into out
        device::lift(device::block_scope<THREADS>{}, cv, merged, seen ? 1.0f : 0.0f, in_group,
                     static_cast<float*>(out.data) + row);
        return;
    }
    // f16 / bf16: lift in f32 into shared memory, then round once on the store.
    float* lifted = merged + cache.max_latent_width;
    device::lift(device::block_scope<THREADS>{}, cv, merged, seen ? 1.0f : 0.0f, in_group,
                 lifted);
    __syncthreads();
    for (int i = int(threadIdx.x); i < cache.head_dim; i += THREADS)
        gpu::store(out, row + i, lifted[i]);
}

/// qz = P_hᵀ q and bias = q·μ_h for (item blockIdx.x, head blockIdx.y).
template <class Codec, int THREADS>
__global__ void __launch_bounds__(THREADS)
    project_queries_kernel(device::cache_view<Codec> cache, input_activations q, float* qz,
                           float* qbias, int layer, int heads_per_kv, int qz_stride) {
    extern __shared__ float widened[];  // [head_dim]: an f16 / bf16 query in f32
    const int b = int(blockIdx.x), h = int(blockIdx.y);
    const std::size_t row = std::size_t(b) * gridDim.y + h;
    const int kvh = h / heads_per_kv;
    const int group = kvh / cache.heads_per_group, in_group = kvh % cache.heads_per_group;
    const Codec ck = cache.codecs[cache.slot(layer, group, kv_kind::key)];
    const float* qrow = widened;
    if (q.type == activation_type::f32) {
        qrow = static_cast<const float*>(q.data) + row * cache.head_dim;
    } else {
        for (int i = int(threadIdx.x); i < cache.head_dim; i += THREADS)
            widened[i] = gpu::load(q, row * cache.head_dim + i);
        __syncthreads();
    }
    const float bias = device::project_query(device::block_scope<THREADS>{}, ck, qrow, in_group,
                                             qz + row * qz_stride);
    if (threadIdx.x == 0) qbias[row] = bias;
}

/// Decode path policy (see decode_attention.cuh): affine latents without RoPE on read.
struct latent_policy {
    static constexpr decode_path path = decode_path::latent;
    template <class Codec>
    static constexpr bool accepts = device::linear_core_codec<Codec>;
    /// Threads of the projection and merge + lift CTAs (one per (item, head)).
    static constexpr int aux_threads = 128;

    template <class Codec>
    static bool supported(const device::cache_view<Codec>&, const decode_attention_params& p,
                          attention_workspace&) {
        return p.rope != rope_mode::on_read;
    }

    /// Three launches: query projection, split kernel over latents, merge + lift.
    template <class Codec>
    static void run(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                    attention_workspace& ws, cudaStream_t stream) {
        const int G = p.n_heads / cache.n_kv_heads;
        const generic_split_launch<Codec> launch = plan_generic_split<Codec, true>(cache, p, ws);
        const split_params<Codec>& sp = launch.params;
        // Both grids are checked before the first launch, so a bad shape enqueues nothing.
        const dim3 heads = gpu::checked_grid(p.batch, p.n_heads, 1, "project_queries_kernel");
        const std::size_t lift_smem =
            sizeof(float) * (cache.max_latent_width +
                             (p.out.type == activation_type::f32 ? 0 : cache.head_dim));
        const std::size_t widen_smem =
            p.q.type == activation_type::f32 ? 0 : sizeof(float) * cache.head_dim;
        gpu::allow_dynamic_smem(combine_lift_kernel<Codec, aux_threads>, lift_smem,
                                 ws.max_shared_bytes(), "combine_lift_kernel");
        project_queries_kernel<Codec, aux_threads><<<heads, aux_threads, widen_smem, stream>>>(
            cache, p.q, const_cast<float*>(sp.qz), const_cast<float*>(sp.qbias), p.layer, G,
            cache.max_latent_width);
        KVCAR_CUDA_CHECK_LAUNCH("project_queries_kernel");
        launch_generic_split<Codec, true>(launch, ws, stream);
        combine_lift_kernel<Codec, aux_threads><<<heads, aux_threads, lift_smem, stream>>>(
            cache, sp.part_acc, sp.part_ml, p.kv_lengths, p.out, p.layer, G, sp.chunk,
            sp.max_splits, sp.acc_stride);
        KVCAR_CUDA_CHECK_LAUNCH("combine_lift_kernel");
        ws.last_splits = sp.max_splits;
        ws.last_chunk = sp.chunk;
    }
};

}  // namespace kvcar::kernels::detail
