// kvcar/kernels/decode/direct.cuh — the `direct` path: identity and quantized identity heads on
// CUDA cores, one CTA per (split, item, KV head).
//
// Every lane loads 16 bytes of a key or value (8 f16; 8 bytes of int8/fp8, whose records are
// only 8-byte aligned) and keeps its slice of the queries and of the output in registers; the
// scores of all query heads that share the KV head come from one read of it (GQA), so each
// cached byte is read once per step; a quantized record's scale and offset are applied per
// token, never per element. head_dim 64/128/256 and 1/2/4/8 query heads per KV head, no RoPE on
// read. f16 and int8 heads usually take the tensor-core variant (decode/direct_mma.cuh), which
// shares direct_params and the merge with this kernel.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/direct.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_runtime.h>

#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/decode.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/kernels/decode/combine.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/workspace.cuh"

namespace kvcar::kernels::detail {

inline constexpr int direct_threads = 128;
inline constexpr int direct_max_chunk = 512;
inline constexpr int direct_unroll = 4;   // tokens a lane has in flight per pass step

/// Arguments of both direct kernels (CUDA cores here, tensor cores in decode/direct_mma.cuh).
struct direct_params {
    const page_view* slots;
    const std::int32_t* read_slots;
    input_activations q;  // [batch][H][HEAD_DIM]
    const std::int32_t* sequences;
    const std::int32_t* kv_lengths;
    float* part_acc;  // [batch][H][max_splits][HEAD_DIM]
    float* part_ml;
    int layer, n_heads, heads_per_group, groups_per_layer;
    int chunk, max_splits;
    int header_bytes;  // quantized records: where scale and offset start
    float scale;
};

/// Codecs the direct kernel reads: a record is the group's elements (identity), or the group's
/// quantized elements followed by one scale and offset (quantized identity).
template <class Codec>
struct direct_codec : std::false_type {};
template <class T>
struct direct_codec<identity_codec<T>> : std::true_type {};
template <class T, class Q>
struct direct_codec<quantized_codec<identity_codec<T>, Q>> : std::true_type {};

/// One CTA: split blockIdx.x of item blockIdx.y for KV head blockIdx.z and its GQA query heads.
/// A token's head vector (HEAD_DIM elements) is read by LPT lanes, LOAD bytes each: 16 for
/// identity records; 8 for quantized ones, whose records (d bytes + 8) are only 8-byte aligned.
///
/// Quantized records never dequantize element by element: with v = u · scale + offset,
///   q · v            = scale · (q · u) + offset · Σq
///   Σ_t p_t v_t      = Σ_t (p_t scale_t) u_t + (Σ_t p_t offset_t)
/// so the inner loops see raw element values u, as for an identity cache.
template <class Codec, int HEAD_DIM, int GQA, int THREADS>
__global__ void __launch_bounds__(THREADS) direct_attention_kernel(direct_params p) {
    using E = typename device::codec_traits<Codec>::element;
    constexpr bool QUANT = device::codec_traits<Codec>::quantized;
    constexpr int LOAD = QUANT ? 8 : 16;
    using piece_t = std::conditional_t<LOAD == 16, uint4, uint2>;
    constexpr int VEC = LOAD / int(sizeof(E));      // elements per load
    constexpr int LPT = HEAD_DIM / VEC;             // lanes per token
    static_assert(LPT >= 1 && LPT <= 32 && 32 % LPT == 0, "a token's head fits in one warp");
    constexpr int TPW = 32 / LPT;                   // tokens per warp per step
    constexpr int NW = THREADS / 32;
    constexpr int STEP = NW * TPW;                  // tokens per block per step
    constexpr int UNROLL = direct_unroll;
    union shared_t {
        float scores[GQA][direct_max_chunk];
        float reduce[NW][GQA][HEAD_DIM];
    };
    __shared__ shared_t sh;
    __shared__ float ml[GQA][2];

    const int split = int(blockIdx.x), b = int(blockIdx.y), kvh = int(blockIdx.z);
    const int len = p.kv_lengths[b];
    const int begin = split * p.chunk;
    if (begin >= len) return;
    const int end = min(len, begin + p.chunk);
    const int seq = p.sequences[b];
    const int group = kvh / p.heads_per_group, in_group = kvh - group * p.heads_per_group;
    const int logical = (p.layer * p.groups_per_layer + group) * kv_kind_count;
    const page_view pk = p.slots[p.read_slots[logical + int(kv_kind::key)]];
    const page_view pv = p.slots[p.read_slots[logical + int(kv_kind::value)]];
    const std::size_t head_bytes = std::size_t(in_group) * HEAD_DIM * sizeof(E);

    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int sub = lane % LPT;          // which piece of the head
    const int slot_in_warp = lane / LPT; // which of the warp's tokens
    const std::size_t piece = head_bytes + std::size_t(sub) * LOAD;

    float q[GQA][VEC];
    float qsum[GQA];  // Σ q over the whole head (quantized offsets)
#pragma unroll
    for (int g = 0; g < GQA; ++g) {
        const std::size_t qp = (std::size_t(b) * p.n_heads + std::size_t(kvh) * GQA + g) *
                                   HEAD_DIM + sub * VEC;
        qsum[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            q[g][e] = gpu::load(p.q, qp + e) * p.scale;
            qsum[g] += q[g][e];
        }
        if constexpr (QUANT) {
#pragma unroll
            for (int o = LPT / 2; o > 0; o >>= 1)
                qsum[g] += __shfl_xor_sync(0xffffffffu, qsum[g], o);
        }
    }

    struct token_data {
        piece_t raw;
        float2 scale_offset;  // quantized: (scale, offset); identity: unused
    };
    auto load = [&](const page_view& view, int t) {
        token_data d{};
        if (t < end) {
            const std::byte* rec = view.record(seq, t);
            d.raw = *reinterpret_cast<const piece_t*>(rec + piece);
            if constexpr (QUANT)
                d.scale_offset = *reinterpret_cast<const float2*>(rec + p.header_bytes);
        }
        return d;
    };
    auto unpack = [](const piece_t& raw, float (&x)[VEC]) {
        E e[VEC];
        memcpy(e, &raw, LOAD);
#pragma unroll
        for (int i = 0; i < VEC; ++i) x[i] = device::load_float(e[i]);
    };

    // --- keys ----------------------------------------------------------------------------------
    for (int base = begin; base < end; base += STEP * UNROLL) {
        token_data data[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)  // all loads first: UNROLL in flight per lane
            data[u] = load(pk, base + u * STEP + warp * TPW + slot_in_warp);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int t = base + u * STEP + warp * TPW + slot_in_warp;
            float k[VEC];
            unpack(data[u].raw, k);
#pragma unroll
            for (int g = 0; g < GQA; ++g) {
                float s = 0.0f;
#pragma unroll
                for (int e = 0; e < VEC; ++e) s += q[g][e] * k[e];
#pragma unroll
                for (int o = LPT / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                if constexpr (QUANT) s = s * data[u].scale_offset.x + data[u].scale_offset.y * qsum[g];
                if (sub == 0 && t < end) sh.scores[g][t - begin] = s;
            }
        }
    }
    __syncthreads();

    const int n_tok = end - begin;
    for (int g = warp; g < GQA; g += NW) {
        float m = -INFINITY;
        for (int i = lane; i < n_tok; i += 32) m = fmaxf(m, sh.scores[g][i]);
        m = device::warp_max(m);
        float l = 0.0f;
        for (int i = lane; i < n_tok; i += 32) {
            const float e = ::expf(sh.scores[g][i] - m);
            sh.scores[g][i] = e;
            l += e;
        }
        l = device::warp_sum(l);
        if (lane == 0) {
            ml[g][0] = m;
            ml[g][1] = l;
        }
    }
    __syncthreads();

    // --- values --------------------------------------------------------------------------------
    float acc[GQA][VEC];
    float offsets[GQA];  // quantized: Σ_t p_t offset_t (the same in every lane of a token)
#pragma unroll
    for (int g = 0; g < GQA; ++g) {
        offsets[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[g][e] = 0.0f;
    }
    for (int base = begin; base < end; base += STEP * UNROLL) {
        token_data data[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
            data[u] = load(pv, base + u * STEP + warp * TPW + slot_in_warp);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int t = base + u * STEP + warp * TPW + slot_in_warp;
            if (t < end) {
                float v[VEC];
                unpack(data[u].raw, v);
#pragma unroll
                for (int g = 0; g < GQA; ++g) {
                    const float pr = sh.scores[g][t - begin];
                    float w = pr;
                    if constexpr (QUANT) {
                        w = pr * data[u].scale_offset.x;
                        offsets[g] += pr * data[u].scale_offset.y;
                    }
#pragma unroll
                    for (int e = 0; e < VEC; ++e) acc[g][e] += w * v[e];
                }
            }
        }
    }
    // Sum the warp's TPW token slots (lanes LPT apart hold the same elements).
#pragma unroll
    for (int o = LPT; o < 32; o <<= 1)
#pragma unroll
        for (int g = 0; g < GQA; ++g) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
            if constexpr (QUANT) offsets[g] += __shfl_xor_sync(0xffffffffu, offsets[g], o);
        }
    __syncthreads();  // scores are dead: their memory becomes the cross-warp reduction buffer
    if (slot_in_warp == 0) {
#pragma unroll
        for (int g = 0; g < GQA; ++g)
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                sh.reduce[warp][g][sub * VEC + e] = acc[g][e] + (QUANT ? offsets[g] : 0.0f);
    }
    __syncthreads();
    for (int idx = tid; idx < GQA * HEAD_DIM; idx += THREADS) {
        const int g = idx / HEAD_DIM, i = idx - (idx / HEAD_DIM) * HEAD_DIM;
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < NW; ++w) s += sh.reduce[w][g][i];
        const std::size_t row = std::size_t(b) * p.n_heads + std::size_t(kvh) * GQA + g;
        p.part_acc[(row * p.max_splits + split) * HEAD_DIM + i] = s;
    }
    for (int g = tid; g < GQA; g += THREADS) {
        const std::size_t row = std::size_t(b) * p.n_heads + std::size_t(kvh) * GQA + g;
        p.part_ml[(row * p.max_splits + split) * 2] = ml[g][0];
        p.part_ml[(row * p.max_splits + split) * 2 + 1] = ml[g][1];
    }
}

/// Launches the direct kernel and its combine step for identity or quantized identity heads of
/// HEAD_DIM, GQA query heads per KV head.
template <class Codec, int HEAD_DIM, int GQA>
void launch_direct(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                   float scale, attention_workspace& ws, cudaStream_t stream) {
    using E = typename device::codec_traits<Codec>::element;
    // 128-thread CTAs of ~70 registers: 6 fit on a multiprocessor; ask for that many.
    const split_plan plan = plan_splits(p.batch * cache.n_kv_heads, p.max_kv_length,
                                        ws.sm_count() * 6, direct_max_chunk, 16);
    const std::size_t rows = std::size_t(p.batch) * p.n_heads * plan.splits;
    const int header = int(pad_record_bytes(std::size_t(cache.group_width()) * sizeof(E)));
    direct_params dp{cache.slots, cache.read_slots, p.q, p.sequences, p.kv_lengths,
                     ws.partial_acc(rows * HEAD_DIM), ws.partial_ml(rows * 2), p.layer,
                     p.n_heads, cache.heads_per_group, cache.groups_per_layer, plan.chunk,
                     plan.splits, header, scale};
    const dim3 grid = gpu::checked_grid(plan.splits, p.batch, cache.n_kv_heads,
                                         "direct_attention_kernel");
    direct_attention_kernel<Codec, HEAD_DIM, GQA, direct_threads>
        <<<grid, direct_threads, 0, stream>>>(dp);
    KVCAR_CUDA_CHECK_LAUNCH("direct_attention_kernel");
    launch_merge(merge_params{dp.part_acc, dp.part_ml, p.kv_lengths, p.out, p.batch, p.n_heads,
                              /*width=*/HEAD_DIM, plan.chunk, plan.splits,
                              /*acc_stride=*/HEAD_DIM},
                 ws, stream, "combine_kernel");
}

/// Decode path policy (see decode_attention.cuh): identity and quantized identity heads of the
/// shapes the direct kernel is instantiated for, no RoPE on read.
struct direct_policy {
    static constexpr decode_path path = decode_path::direct;
    template <class Codec>
    static constexpr bool accepts = direct_codec<Codec>::value;
    /// A head's pieces (16 bytes per lane, 8 for quantized records) must fit in one warp.
    template <class Codec, int HEAD_DIM>
    static constexpr bool fits = HEAD_DIM * sizeof(typename device::codec_traits<Codec>::element) <=
                                 32 * (device::codec_traits<Codec>::quantized ? 8 : 16);

    template <class Codec>
    static bool supported(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                          attention_workspace&) {
        if (p.rope == rope_mode::on_read) return false;
        bool fit = false;
        const bool head_dim_ok =
            dispatch_head_dim(cache.head_dim, [&]<int HEAD_DIM>() { fit = fits<Codec, HEAD_DIM>; });
        // A capturing lambda: a captureless one's conversion to a function pointer makes nvcc warn
        // that the unnamed template parameter declares no parameter type.
        return head_dim_ok && fit && dispatch_gqa(p.n_heads / cache.n_kv_heads, [&]<int>() {});
    }

    /// The direct kernel for (head_dim, GQA), then the merge.
    template <class Codec>
    static void run(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                    attention_workspace& ws, cudaStream_t stream) {
        const float scale = softmax_scale(p, cache.head_dim);
        dispatch_head_dim(cache.head_dim, [&]<int HEAD_DIM>() {
            dispatch_gqa(p.n_heads / cache.n_kv_heads, [&]<int GQA>() {
                if constexpr (fits<Codec, HEAD_DIM>)
                    launch_direct<Codec, HEAD_DIM, GQA>(cache, p, scale, ws, stream);
            });
        });
    }
};

}  // namespace kvcar::kernels::detail
