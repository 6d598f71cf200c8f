// kvcar/kernels/decode/generic_split.cuh — the generic split kernel: any codec, any shape, RoPE on
// read; the kernel behind the `latent` and `decoded` paths (decode/latent.cuh, decode/decoded.cuh).
//
// One CTA of 256 threads per (split of `chunk` tokens, item, codec group), all query heads of
// the group: their queries sit in shared memory, tiles of the split's tokens are staged there
// (decoded by device::decode_tile, or in latent space loaded as d-wide latents), every
// (token, head) score is written to a shared score row, the softmax runs over the whole split
// once the scores are known, and the values are read a second time for Σ p v. Each cached byte
// of the group is read once per CTA for every head of the group, which is what makes a
// whole-layer group (MLA-like) cheap in bytes; the output is the usual split partial (acc, m, l).
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/generic_split.cuh needs nvcc"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/decode.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/workspace.cuh"
#include "kvcar/rope.hpp"

namespace kvcar::kernels::detail {

inline constexpr int generic_threads = 256;
/// Tokens staged per step. Codecs decoded through registers (linear, autoencoder: decode_tile
/// keeps TILE accumulators per thread) use 16; codecs that are only loaded and dequantized
/// (identity family, latents in latent space) use 64, so each step has 4x more bytes in flight.
template <class Codec, bool LATENT>
inline constexpr int generic_tile =
    (LATENT || device::codec_traits<Codec>::family == device::codec_family::identity) ? 64 : 16;

/// Rotates `count` rows of head vectors in shared memory: row r holds `heads` heads of hd floats
/// at stride `row_stride` and sits at position first_position + r · position_step. Does not
/// synchronize.
template <int THREADS>
__device__ void rope_rows(float* rows, int count, int row_stride, int heads, int hd,
                          int first_position, int position_step, const rope_params& cfg) {
    const int rot = rope_rotary_dim(cfg, hd);
    const int pairs = rot / 2;
    const int per_row = heads * pairs;
    for (int idx = int(threadIdx.x); idx < count * per_row; idx += THREADS) {
        const int r = idx / per_row;
        const int rest = idx - r * per_row;
        const int head = rest / pairs;
        const int pair = rest - head * pairs;
        const float angle =
            float(first_position + r * position_step) * rope_inv_freq(pair, rot, cfg.theta);
        const float c = ::cosf(angle), s = ::sinf(angle);
        int a, b;
        rope_pair_dims(cfg.style, rot, pair, a, b);
        float* x = rows + std::size_t(r) * row_stride + head * hd;
        const float xa = x[a], xb = x[b];
        x[a] = xa * c - xb * s;
        x[b] = xb * c + xa * s;
    }
}

template <class Codec>
struct split_params {
    device::cache_view<Codec> cache;
    input_activations q;   // output-space queries [batch][H][hd]
    const float* qz;       // latent queries [batch][H][qz_stride]
    const float* qbias;    // [batch][H]
    const std::int32_t* sequences;
    const std::int32_t* kv_lengths;
    const std::int32_t* q_positions;  // null: kv_length - 1
    float* part_acc;       // [batch][H][max_splits][acc_stride]
    float* part_ml;        // [batch][H][max_splits][2]
    int layer, n_heads, heads_per_kv;
    int chunk, max_splits;
    int tile;              // tokens staged per step (<= the kernel's TILE)
    int qw_max;            // widest query row (hd, or widest K latent)
    int acc_stride;        // widest accumulator row (hd, or widest V latent)
    int tile_width;        // widest staged row (group width, or widest latent)
    int qz_stride;
    float scale;
    bool rope;
    rope_params rope_cfg;
};

/// A shared-memory row stride for rows of `width` floats: a multiple of 4 (rows are 16-byte
/// aligned, so float4 reads work) and ≡ 4 mod 8, so that 8 lanes reading float4s of 8
/// consecutive rows at the same column hit 8 different bank quads (no conflicts).
__host__ __device__ inline int padded_stride(int width) {
    const int s = (width + 3) / 4 * 4;
    return s % 8 == 0 ? s + 4 : s;
}
inline std::size_t round4(std::size_t n) { return (n + 3) / 4 * 4; }

/// Shared-memory floats of the generic kernel for `nq` heads per CTA. Every region starts
/// 16-byte aligned.
inline std::size_t generic_smem_floats(int nq, int qw_max, int acc_stride, int tile,
                                       int tile_width, int chunk, int scratch_floats) {
    return round4(std::size_t(nq) * padded_stride(qw_max)) + round4(3u * std::size_t(nq)) +
           round4(std::size_t(nq) * chunk) + round4(std::size_t(nq) * acc_stride) +
           round4(std::size_t(tile) * padded_stride(tile_width)) + std::size_t(scratch_floats);
}

/// One CTA: split blockIdx.x of item blockIdx.y for group blockIdx.z, all heads of the group.
template <class Codec, bool LATENT, int THREADS, int TILE>
__global__ void __launch_bounds__(THREADS) split_attention_kernel(split_params<Codec> p) {
    extern __shared__ float smem[];
    const int split = int(blockIdx.x), b = int(blockIdx.y), group = int(blockIdx.z);
    const int len = p.kv_lengths[b];
    const int begin = split * p.chunk;
    if (begin >= len) return;  // uniform across the block: no barrier is skipped by some only
    const int end = min(len, begin + p.chunk);
    const int seq = p.sequences[b];
    const auto& cache = p.cache;
    const int G = p.heads_per_kv;
    const int hd = cache.head_dim;
    const int NQ = cache.heads_per_group * G;
    const int h0 = group * NQ;  // the group's first query head
    const int slot_k = cache.slot(p.layer, group, kv_kind::key);
    const int slot_v = cache.slot(p.layer, group, kv_kind::value);
    const Codec ck = cache.codecs[slot_k];
    const Codec cv = cache.codecs[slot_v];
    const page_view pk = cache.slots[slot_k];
    const page_view pv = cache.slots[slot_v];
    const int qw = LATENT ? int(ck.latent_width()) : hd;
    const int aw = LATENT ? int(cv.latent_width()) : hd;
    const int tid = int(threadIdx.x);
    const device::block_scope<THREADS> blk;

    const int qs = padded_stride(p.qw_max);
    const int ts = padded_stride(p.tile_width);
    auto r4 = [](int n) { return (n + 3) / 4 * 4; };
    float* qv = smem;                               // [NQ][qs]
    float* bias = qv + r4(NQ * qs);                 // [NQ]
    float* ml = bias + NQ;                          // [NQ][2]
    float* scores = bias + r4(3 * NQ);              // [NQ][chunk], then probabilities
    float* acc = scores + r4(NQ * p.chunk);         // [NQ][acc_stride]
    float* tile = acc + r4(NQ * p.acc_stride);      // [p.tile][ts]
    float* scratch = tile + r4(p.tile * ts);        // decode_tile's scratch
    // float4 reads when every row and offset is a multiple of 4 floats (acc_stride is, by host).
    const bool vec_k = qw % 4 == 0 && (LATENT || hd % 4 == 0);
    const bool vec_v = aw % 4 == 0 && (LATENT || hd % 4 == 0) && p.acc_stride % 4 == 0;

    for (int idx = tid; idx < NQ * qw; idx += THREADS) {
        const int h = idx / qw, i = idx - (idx / qw) * qw;
        const std::size_t row = std::size_t(b) * p.n_heads + h0 + h;
        qv[h * qs + i] = LATENT ? p.qz[row * p.qz_stride + i] : gpu::load(p.q, row * hd + i);
    }
    for (int h = tid; h < NQ; h += THREADS)
        bias[h] = LATENT ? p.qbias[std::size_t(b) * p.n_heads + h0 + h] : 0.0f;
    for (int idx = tid; idx < NQ * p.acc_stride; idx += THREADS) acc[idx] = 0.0f;
    __syncthreads();
    if constexpr (!LATENT) {
        if (p.rope) {
            // Every query head (one row each) rotated to the query's position.
            const int position = p.q_positions ? p.q_positions[b] : len - 1;
            rope_rows<THREADS>(qv, NQ, qs, 1, hd, position, 0, p.rope_cfg);
            __syncthreads();
        }
    }

    // Split each (token, head) dot product over P lanes so that a tile keeps the block busy.
    int P = 1;
    while (P < 32 && P * 2 * p.tile * NQ <= THREADS) P *= 2;

    // --- keys: scores[h][t] = scale · (q_h · k_t + bias_h) ------------------------------------
    for (int t0 = begin; t0 < end; t0 += p.tile) {
        const int n = min(p.tile, end - t0);
        if constexpr (LATENT) {
            device::load_latents(blk, ck, pk, seq, t0, n, 0, qw, tile, ts);
            __syncthreads();
        } else {
            device::decode_tile<TILE>(blk, ck, pk, seq, t0, n, tile, ts, scratch);
            if (p.rope) {
                rope_rows<THREADS>(tile, n, ts, cache.heads_per_group, hd, t0, 1, p.rope_cfg);
                __syncthreads();
            }
        }
        const int pairs = n * NQ;
        for (int base = 0; base < pairs * P; base += THREADS) {
            const int idx = base + tid;
            const bool valid = idx < pairs * P;
            const int pair = idx / P, part = idx - (idx / P) * P;
            const int h = pair / n, t = pair - (pair / n) * n;
            float s = 0.0f;
            if (valid) {
                const float* qh = qv + h * qs;
                const float* kt = tile + t * ts + (LATENT ? 0 : (h / G) * hd);
                if (vec_k) {
                    const float4* q4 = reinterpret_cast<const float4*>(qh);
                    const float4* k4 = reinterpret_cast<const float4*>(kt);
                    for (int i = part; i < qw / 4; i += P) {
                        const float4 a = q4[i], k = k4[i];
                        s += a.x * k.x + a.y * k.y + a.z * k.z + a.w * k.w;
                    }
                } else {
                    for (int i = part; i < qw; i += P) s += qh[i] * kt[i];
                }
            }
            for (int o = P / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (valid && part == 0) scores[h * p.chunk + (t0 - begin) + t] = (s + bias[h]) * p.scale;
        }
        __syncthreads();
    }

    // --- softmax over this split, one warp per head ------------------------------------------
    const int n_tok = end - begin;
    const int lane = tid & 31, warp = tid >> 5;
    for (int h = warp; h < NQ; h += THREADS / 32) {
        float* s = scores + h * p.chunk;
        float m = -INFINITY;
        for (int i = lane; i < n_tok; i += 32) m = fmaxf(m, s[i]);
        m = device::warp_max(m);
        float l = 0.0f;
        for (int i = lane; i < n_tok; i += 32) {
            const float e = ::expf(s[i] - m);
            s[i] = e;
            l += e;
        }
        l = device::warp_sum(l);
        if (lane == 0) {
            ml[2 * h] = m;
            ml[2 * h + 1] = l;
        }
    }
    __syncthreads();

    // --- values: acc[h][i] += Σ_t p[h][t] · v_t[i] ---------------------------------------------
    for (int t0 = begin; t0 < end; t0 += p.tile) {
        const int n = min(p.tile, end - t0);
        if constexpr (LATENT) {
            device::load_latents(blk, cv, pv, seq, t0, n, 0, aw, tile, ts);
            __syncthreads();
        } else {
            device::decode_tile<TILE>(blk, cv, pv, seq, t0, n, tile, ts, scratch);
        }
        if (vec_v) {
            // Each thread owns 4 consecutive output elements: one float4 of the tile per token.
            const int aw4 = aw / 4;
            for (int idx = tid; idx < NQ * aw4; idx += THREADS) {
                const int h = idx / aw4, i = 4 * (idx - (idx / aw4) * aw4);
                const float* ph = scores + h * p.chunk + (t0 - begin);
                const float* vt = tile + (LATENT ? 0 : (h / G) * hd) + i;
                float4& slot = *reinterpret_cast<float4*>(acc + h * p.acc_stride + i);
                float4 a = slot;
                for (int t = 0; t < n; ++t) {
                    const float pr = ph[t];
                    const float4 v = *reinterpret_cast<const float4*>(vt + t * ts);
                    a.x += pr * v.x;
                    a.y += pr * v.y;
                    a.z += pr * v.z;
                    a.w += pr * v.w;
                }
                slot = a;
            }
        } else {
            for (int idx = tid; idx < NQ * aw; idx += THREADS) {
                const int h = idx / aw, i = idx - (idx / aw) * aw;
                const float* ph = scores + h * p.chunk + (t0 - begin);
                const float* vt = tile + (LATENT ? 0 : (h / G) * hd) + i;
                float a = acc[h * p.acc_stride + i];
                for (int t = 0; t < n; ++t) a += ph[t] * vt[t * ts];
                acc[h * p.acc_stride + i] = a;
            }
        }
        __syncthreads();
    }

    for (int idx = tid; idx < NQ * aw; idx += THREADS) {
        const int h = idx / aw, i = idx - (idx / aw) * aw;
        const std::size_t row = std::size_t(b) * p.n_heads + h0 + h;
        p.part_acc[(row * p.max_splits + split) * p.acc_stride + i] = acc[h * p.acc_stride + i];
    }
    for (int h = tid; h < NQ; h += THREADS) {
        const std::size_t row = std::size_t(b) * p.n_heads + h0 + h;
        p.part_ml[(row * p.max_splits + split) * 2] = ml[2 * h];
        p.part_ml[(row * p.max_splits + split) * 2 + 1] = ml[2 * h + 1];
    }
}

/// The generic split kernel's launch as the host planned it: the kernel's arguments (partial
/// buffers, and in latent space the projected queries, taken from the workspace), its shared
/// memory and its grid. Planning enqueues nothing.
template <class Codec>
struct generic_split_launch {
    split_params<Codec> params{};
    std::size_t smem = 0;
    dim3 grid;
};

/// Plans the generic split kernel for `p`; LATENT: attention in latent space (affine codecs).
/// Throws kvcar::error when one tile of the group's heads does not fit the device's shared memory.
template <class Codec, bool LATENT>
generic_split_launch<Codec> plan_generic_split(const device::cache_view<Codec>& cache,
                                               const decode_attention_params& p,
                                               attention_workspace& ws) {
    constexpr int TILE = generic_tile<Codec, LATENT>;
    const int hd = cache.head_dim;
    const int G = p.n_heads / cache.n_kv_heads;
    const int NQ = cache.heads_per_group * G;
    const int qw_max = LATENT ? cache.max_latent_width : hd;
    const int acc_stride = ((LATENT ? cache.max_latent_width : hd) + 3) / 4 * 4;
    const int tile_width = LATENT ? cache.max_latent_width : cache.group_width();
    const int scratch = LATENT ? 0 : cache.decode_scratch_per_token * TILE;
    require(!LATENT || cache.max_latent_width > 0,
            "decode_attention: the cache view's max_latent_width is not set");
    // Chunk from the shared memory left after the fixed part: ~100 KB keeps two CTAs per SM.
    const std::size_t limit = std::size_t(ws.max_shared_bytes()) / sizeof(float);
    int tile = TILE;
    std::size_t fixed = 0, budget = 0;
    for (;; tile /= 2) {
        fixed = generic_smem_floats(NQ, qw_max, acc_stride, tile, tile_width, 0, scratch);
        budget = std::min(std::max<std::size_t>(100 * 1024 / sizeof(float),
                                                fixed + std::size_t(NQ) * 64),
                          limit);
        if (fixed + std::size_t(NQ) * tile <= budget || tile <= 16) break;
    }
    require(fixed + std::size_t(NQ) * tile <= budget,
            "decode_attention: " + std::to_string(NQ) + " heads per group of width " +
                std::to_string(tile_width) + " need " +
                std::to_string((fixed + std::size_t(NQ) * tile) * sizeof(float)) +
                " bytes of shared memory, more than the device's " +
                std::to_string(limit * sizeof(float)));
    const int max_chunk = int(std::min<std::size_t>((budget - fixed) / NQ / tile * tile, 4096));
    // 256-thread CTAs: aim for 4 per multiprocessor.
    const split_plan plan = plan_splits(p.batch * cache.groups_per_layer, p.max_kv_length,
                                        ws.sm_count() * 4, max_chunk, tile);
    const std::size_t rows = std::size_t(p.batch) * p.n_heads;
    split_params<Codec> sp{};
    sp.cache = cache;
    sp.q = p.q;
    sp.sequences = p.sequences;
    sp.kv_lengths = p.kv_lengths;
    sp.q_positions = p.q_positions;
    sp.part_acc = ws.partial_acc(rows * plan.splits * acc_stride);
    sp.part_ml = ws.partial_ml(rows * plan.splits * 2);
    sp.layer = p.layer;
    sp.n_heads = p.n_heads;
    sp.heads_per_kv = G;
    sp.chunk = plan.chunk;
    sp.max_splits = plan.splits;
    sp.tile = tile;
    sp.qw_max = qw_max;
    sp.acc_stride = acc_stride;
    sp.tile_width = tile_width;
    sp.qz_stride = cache.max_latent_width;
    sp.scale = softmax_scale(p, hd);
    sp.rope = p.rope == rope_mode::on_read;
    sp.rope_cfg = p.rope_cfg;
    if constexpr (LATENT) {
        sp.qz = ws.latent_queries(rows * cache.max_latent_width);
        sp.qbias = ws.latent_bias(rows);
    }
    generic_split_launch<Codec> launch;
    launch.params = sp;
    launch.smem = sizeof(float) * generic_smem_floats(NQ, qw_max, acc_stride, tile, tile_width,
                                                      plan.chunk, scratch);
    launch.grid = gpu::checked_grid(plan.splits, p.batch, cache.groups_per_layer,
                                     "split_attention_kernel");
    return launch;
}

/// Enqueues the planned split kernel (the partials; the caller merges them).
template <class Codec, bool LATENT>
void launch_generic_split(const generic_split_launch<Codec>& launch, attention_workspace& ws,
                          cudaStream_t stream) {
    auto kernel =
        split_attention_kernel<Codec, LATENT, generic_threads, generic_tile<Codec, LATENT>>;
    gpu::allow_dynamic_smem(kernel, launch.smem, ws.max_shared_bytes(), "split_attention_kernel");
    kernel<<<launch.grid, generic_threads, launch.smem, stream>>>(launch.params);
    KVCAR_CUDA_CHECK_LAUNCH("split_attention_kernel");
}

}  // namespace kvcar::kernels::detail
