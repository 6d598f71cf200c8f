// kvcar/kernels/decode_attention.cuh — attention of one query token per item over a kvcar
// cache: split-KV ("flash-decoding") over pages, online softmax, a combine step; one entry point
// for every codec.
//
// Work split. Item b (a query token of sequence sequences[b] that sees kv_lengths[b] tokens) is
// cut into splits of `chunk` tokens; a CTA handles one (split, item, unit) and writes an
// unnormalized partial output with its score maximum m and sum of exponentials l. The combine
// kernel merges the splits of each (item, head): o = Σ_s e^(m_s − M) acc_s / Σ_s e^(m_s − M) l_s.
// The number of splits is chosen so that several CTAs per multiprocessor exist even at batch 1:
// decode attention reads every cached byte once, and only a full GPU reaches copy bandwidth.
//
// Four ways to read a unit's records, picked from the codec type (and RoPE):
//   direct on tensor cores   f16 identity and int8 quantized identity heads, head_dim 64/128,
//            2/4/8 query heads per KV head, no RoPE (kernels/direct_mma_decode_attention.cuh):
//            the scores of all query heads of a KV head and their weighted sum of V as two
//            small matrix products per 16-token tile, so GQA costs no extra instructions per byte.
//   direct   identity and quantized identity codecs, head_dim 64/128/256 and 1/2/4/8 query heads
//            per KV head: one CTA per KV head, every lane loads 16 bytes of a key or value (8 f16;
//            8 bytes of int8/fp8, whose records are only 8-byte aligned) and keeps its slice of
//            the queries and of the output in registers; scores of all query heads that share the
//            KV head come from one read of it (GQA); a quantized record's scale and offset are
//            applied per token, never per element.
//   latent   affine codecs (linear, quantized linear) without RoPE on read: queries are projected
//            into each group's latent space once (qz = Pᵀq, bias = q·μ), the CTA reads the d-wide
//            latents of its group once for all heads of the group (a whole-layer latent serves
//            every head, as in MLA), accumulates Σ a z, and the combine step lifts P(Σ a z) + μ.
//            Nothing is decompressed. Whole-layer groups of f16/int8/fp8 latents run instead on
//            tensor cores (kernels/latent_decode_attention.cuh), where the heads' shared latent
//            makes the CUDA-core loop compute-bound.
//   decoded  everything else (autoencoder, RoPE on read, other shapes): the CTA decodes tiles of
//            TILE tokens of its group into shared memory with device::decode_tile and attends
//            from there; no decompressed copy ever reaches global memory. f16 autoencoder latents
//            without RoPE on read run instead on tensor cores in the decoder's hidden space
//            (kernels/autoencoder_decode_attention.cuh).
//
// Preconditions (checked on the host where they can be): kv_lengths[b] <= the sequence's length
// in `layer` (and in the layers its reused slots belong to); n_heads is a multiple of n_kv_heads;
// q and out are [batch][n_heads][head_dim] floats. kv_lengths[b] == 0 gives a zero output.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode_attention.cuh needs nvcc"
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/common.hpp"
#include "kvcar/cuda/buffer.cuh"
#include "kvcar/cuda/device_kv_cache.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/cuda/launch.cuh"
#include "kvcar/device/affine.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/decode.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/reference/attention.hpp"
#include "kvcar/rope.hpp"

// Run-time value -> compile-time constant, FlashInfer style: the body sees `NAME` as constexpr.
// Each expands to an expression that is true when the value was one of the listed ones.

/// Runs `...` with `constexpr int NAME` = head_dim when head_dim is 64, 128 or 256; the whole
/// expression is false (nothing ran) for any other value.
#define KVCAR_DISPATCH_HEAD_DIM(head_dim, NAME, ...)                       \
    [&]() -> bool {                                                        \
        switch (head_dim) {                                                \
            case 64: { constexpr int NAME = 64; __VA_ARGS__; return true; }   \
            case 128: { constexpr int NAME = 128; __VA_ARGS__; return true; } \
            case 256: { constexpr int NAME = 256; __VA_ARGS__; return true; } \
            default: return false;                                         \
        }                                                                  \
    }()
/// Runs `...` with `constexpr int NAME` = group_size (query heads per KV head) when it is 1, 2,
/// 4 or 8; the whole expression is false (nothing ran) for any other value.
#define KVCAR_DISPATCH_GQA(group_size, NAME, ...)                          \
    [&]() -> bool {                                                        \
        switch (group_size) {                                              \
            case 1: { constexpr int NAME = 1; __VA_ARGS__; return true; }  \
            case 2: { constexpr int NAME = 2; __VA_ARGS__; return true; }  \
            case 4: { constexpr int NAME = 4; __VA_ARGS__; return true; }  \
            case 8: { constexpr int NAME = 8; __VA_ARGS__; return true; }  \
            default: return false;                                         \
        }                                                                  \
    }()

namespace kvcar::kernels {

/// Device-side arguments of decode attention. Every pointer is device memory.
struct decode_attention_params {
    const float* q = nullptr;                  ///< [batch][n_heads][head_dim]
    float* out = nullptr;                      ///< [batch][n_heads][head_dim]
    const std::int32_t* sequences = nullptr;   ///< [batch] cache sequence of each query
    const std::int32_t* kv_lengths = nullptr;  ///< [batch] tokens each query sees (position + 1)
    /// [batch] each query's position for RoPE on read; null: kv_lengths[b] - 1 (a decode step)
    const std::int32_t* q_positions = nullptr;
    int batch = 0;          ///< query tokens (items); 0 enqueues nothing
    int max_kv_length = 0;  ///< host-side bound of kv_lengths: sizes the splits
    int layer = 0;          ///< layer attended, 0 <= layer < the cache's n_layers
    int n_heads = 0;        ///< query heads, a positive multiple of the cache's n_kv_heads
    float scale = 0.0f;     ///< 0 picks 1/sqrt(head_dim)
    rope_mode rope = rope_mode::none;  ///< on_read: keys rotated by token index, query by kv_length-1
    rope_params rope_cfg{};  ///< the model's RoPE (theta, style, rotary_dim); read when rope != none
};

/// The way decode_attention read the cache in its last call (attention_workspace::last_path).
enum class decode_path {
    none,                      ///< nothing ran (batch 0), or no decode_attention call yet
    direct_tensor_cores,       ///< f16 / int8 identity heads on tensor cores (direct_mma_…)
    direct,                    ///< identity / quantized identity heads on CUDA cores
    latent_tensor_cores,       ///< whole-layer latents on tensor cores (latent_decode_attention)
    latent,                    ///< affine latents on CUDA cores (the generic kernel, latent space)
    autoencoder_tensor_cores,  ///< f16 autoencoder latents on tensor cores (hidden space)
    decoded,                   ///< every other case: tiles decoded into shared memory
};

/// The path's name as the benchmark's JSON rows spell it.
inline const char* to_string(decode_path path) {
    switch (path) {
        case decode_path::none: return "none";
        case decode_path::direct_tensor_cores: return "direct_tensor_cores";
        case decode_path::direct: return "direct";
        case decode_path::latent_tensor_cores: return "latent_tensor_cores";
        case decode_path::latent: return "latent";
        case decode_path::autoencoder_tensor_cores: return "autoencoder_tensor_cores";
        case decode_path::decoded: return "decoded";
    }
    return "?";
}

/// Device scratch that attention launches reuse: split partials, latent queries and small index
/// arrays. Grows on demand (a growth synchronizes the device); keep one per stream.
class attention_workspace {
public:
    // Each accessor returns device memory for at least n elements, valid until the next call of
    // the same accessor with a larger n; growing discards the old contents.

    /// Unnormalized split outputs Σ e^(s − m) v (Σ e^(s − m) z on the latent paths), one row per
    /// split of each (item, head) or latent unit.
    float* partial_acc(std::size_t n) { return grow(acc_, n); }
    /// Each split row's score maximum m and sum of exponentials l (2 floats per row).
    float* partial_ml(std::size_t n) { return grow(ml_, n); }
    /// Queries projected into latent space (qz = Pᵀq) for the latent paths; the tensor-core path
    /// stores them as f16 in the same bytes.
    float* latent_queries(std::size_t n) { return grow(qz_, n); }
    /// Per-query score bias q·μ of the latent paths; the tensor-core latent path also keeps the
    /// merged latents z̄ after the biases.
    float* latent_bias(std::size_t n) { return grow(qbias_, n); }
    /// Small index arrays staged from the host (sequences, lengths, positions, item maps).
    std::int32_t* ints(std::size_t n) { return grow(ints_, n); }
    /// Multiprocessors of the current device (looked up once).
    int sm_count() {
        if (sm_count_ == 0) sm_count_ = cuda::multiprocessor_count();
        return sm_count_;
    }
    /// Largest dynamic shared memory a block may opt into on the current device.
    int max_shared_bytes() {
        if (max_smem_ == 0) {
            int device = 0;
            KVCAR_CUDA_CHECK(cudaGetDevice(&device));
            KVCAR_CUDA_CHECK(cudaDeviceGetAttribute(
                &max_smem_, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
        }
        return max_smem_;
    }
    /// The split layout of the last launch (for tests and tuning).
    int last_splits = 0;
    /// Tokens per split in the last launch (the last split may hold fewer).
    int last_chunk = 0;
    /// The path the last decode_attention took (one value, not a flag per path).
    decode_path last_path = decode_path::none;
    /// Overrides of choices the paths make themselves, for benchmarks and autotuning; 0 leaves
    /// a choice to the path, and a value the path cannot run is ignored (the plan stays valid).
    struct tuning {
        int latent_warps = 0;   ///< tensor-core latent split kernel: 8 or 16 warps
        int latent_stages = 0;  ///< its ring stages (2 … 4, as shared memory allows)
        int latent_chunk = 0;   ///< tokens per split (rounded up to the 32-token tile)
    } tune;

private:
    template <class T>
    static T* grow(cuda::device_buffer<T>& b, std::size_t n) {
        if (n > b.size()) {
            KVCAR_CUDA_CHECK(cudaDeviceSynchronize());  // the old buffer may still be in use
            b.reserve_discard(std::max(n, b.size() * 3 / 2));
        }
        return b.data();
    }
    cuda::device_buffer<float> acc_, ml_, qz_, qbias_;
    cuda::device_buffer<std::int32_t> ints_;
    int sm_count_ = 0;
    int max_smem_ = 0;
};

namespace detail {

inline constexpr int generic_threads = 256;
/// Tokens staged per step. Codecs decoded through registers (linear, autoencoder: decode_tile
/// keeps TILE accumulators per thread) use 16; codecs that are only loaded and dequantized
/// (identity family, latents in latent space) use 64, so each step has 4x more bytes in flight.
template <class Codec, bool LATENT>
inline constexpr int generic_tile =
    (LATENT || device::codec_traits<Codec>::family == device::codec_family::identity) ? 64 : 16;
inline constexpr int direct_threads = 128;
inline constexpr int direct_max_chunk = 512;
inline constexpr int direct_unroll = 4;   // tokens a lane has in flight per pass step
inline constexpr int min_chunk = 32;      // below this a split costs more than it spreads

/// Splits of `chunk` tokens so that units · splits ≈ target_ctas (a few per multiprocessor: the
/// loads in flight, not the arithmetic, set the speed of decode attention).
struct split_plan {
    int chunk = 0;
    int splits = 0;
};
inline split_plan plan_splits(int units, int max_len, int target_ctas, int max_chunk,
                              int granularity) {
    split_plan plan;
    if (max_len <= 0) return {granularity, 1};
    const int want = std::max(1, (target_ctas + units - 1) / std::max(units, 1));
    int chunk = (max_len + want - 1) / want;
    chunk = (chunk + granularity - 1) / granularity * granularity;
    chunk = std::clamp(chunk, std::min(min_chunk, max_chunk), max_chunk);
    plan.chunk = chunk;
    plan.splits = (max_len + chunk - 1) / chunk;
    return plan;
}

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
    const float* q;        // output-space queries [batch][H][hd]
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
    const device::block_group<THREADS> blk;

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
        qv[h * qs + i] = LATENT ? p.qz[row * p.qz_stride + i] : p.q[row * hd + i];
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

struct direct_params {
    const page_view* slots;
    const std::int32_t* read_slots;
    const float* q;
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
        const float* qp = p.q + (std::size_t(b) * p.n_heads + std::size_t(kvh) * GQA + g) *
                                    HEAD_DIM + sub * VEC;
        qsum[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            q[g][e] = qp[e] * p.scale;
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

/// The splits' partial results of one launch and where their merge goes (combine_kernel).
struct merge_params {
    const float* part_acc = nullptr;          ///< [batch][n_heads][splits][acc_stride]
    const float* part_ml = nullptr;           ///< [batch][n_heads][splits][2]: max, sum
    const std::int32_t* kv_lengths = nullptr; ///< [batch]: tells how many splits saw tokens
    float* out = nullptr;                     ///< [batch][n_heads][width]
    int batch = 0, n_heads = 0;
    int width = 0;       ///< merged floats per (item, head)
    int chunk = 0;       ///< tokens per split
    int splits = 0;      ///< splits per item (the partial buffers' stride)
    int acc_stride = 0;  ///< floats between two splits' accumulators
};

inline constexpr int merge_threads = 128;  ///< 4 warps, each summing every 4th split
inline constexpr int merge_columns = 128;  ///< columns per merge CTA: 4 per lane

/// Merges the splits of (item blockIdx.x, head blockIdx.y) for the columns blockIdx.z · 128 …:
/// element i is Σ_s w_s acc_s[i] / Σ_s w_s l_s with w_s = e^(m_s − M). The CTA reduces M and
/// the denominator once over the splits; then warp w sums the splits w, w + 4, … for all 128
/// columns (4 consecutive per lane, float4 loads where aligned), with the split's weight one
/// exponential per lane, and the warps meet in shared memory. At batch 1 a long context has
/// hundreds of splits per head: spreading columns over CTAs and splits over warps keeps enough
/// loads in flight (one CTA per head with a serial loop over splits was latency-bound).
/// A template (of THREADS = merge_threads) so that every translation unit may include it.
template <int THREADS>
__global__ void __launch_bounds__(THREADS) combine_kernel(merge_params m) {
    static_assert(THREADS == merge_threads, "launch_merge's CTA shape");
    __shared__ float4 partial[merge_threads / 32][32];
    __shared__ float red[merge_threads / 32];
    const int b = int(blockIdx.x), h = int(blockIdx.y);
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    constexpr int warps = merge_threads / 32;
    const int len = m.kv_lengths[b];
    const int splits = len > 0 ? min((len + m.chunk - 1) / m.chunk, m.splits) : 0;
    const std::size_t row = std::size_t(b) * m.n_heads + h;
    const float* ml = m.part_ml + row * m.splits * 2;
    const float* acc = m.part_acc + row * m.splits * m.acc_stride;

    float mx = -INFINITY;
    for (int s = tid; s < splits; s += merge_threads) mx = fmaxf(mx, ml[2 * s]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    mx = red[0];
    for (int w = 1; w < warps; ++w) mx = fmaxf(mx, red[w]);
    __syncthreads();  // red is reused for the sum
    float l = 0.0f;
    for (int s = tid; s < splits; s += merge_threads) l += ::expf(ml[2 * s] - mx) * ml[2 * s + 1];
    l = device::warp_sum(l);
    if (lane == 0) red[warp] = l;
    __syncthreads();
    l = 0.0f;
    for (int w = 0; w < warps; ++w) l += red[w];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // no token seen: zeros

    const int col = int(blockIdx.z) * merge_columns + 4 * lane;
    const bool vec = m.acc_stride % 4 == 0 && col + 4 <= m.width;
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (col < m.width) {
#pragma unroll 4
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
        float* dst = m.out + row * m.width + col;
        const float r[4] = {t.x * inv, t.y * inv, t.z * inv, t.w * inv};
        for (int e = 0; e < 4 && col + e < m.width; ++e) dst[e] = r[e];
    }
}

/// Merges latent partials and lifts them: out = P_v,h z̄ + μ_v,h (zeros for an empty item).
template <class Codec, int THREADS>
__global__ void __launch_bounds__(THREADS)
    combine_lift_kernel(device::cache_view<Codec> cache, const float* part_acc,
                        const float* part_ml, const std::int32_t* kv_lengths, float* out,
                        int layer, int heads_per_kv, int chunk, int max_splits, int acc_stride) {
    extern __shared__ float merged[];  // [latent width]
    const int b = int(blockIdx.x), h = int(blockIdx.y);
    const int kvh = h / heads_per_kv;
    const int group = kvh / cache.heads_per_group, in_group = kvh % cache.heads_per_group;
    const Codec cv = cache.codecs[cache.slot(layer, group, kv_kind::value)];
    const bool seen = merge_splits<THREADS>(part_acc, part_ml, kv_lengths[b], chunk, max_splits,
                                            acc_stride, cv.latent_width(), merged);
    __syncthreads();  // lift reads every element of merged
    // Σ a_t = 1 after normalization; an empty item has no tokens and must give zeros, not μ.
    device::lift(device::block_group<THREADS>{}, cv, merged, seen ? 1.0f : 0.0f, in_group,
                 out + (std::size_t(b) * gridDim.y + h) * cache.head_dim);
}

/// qz = P_hᵀ q and bias = q·μ_h for (item blockIdx.x, head blockIdx.y).
template <class Codec, int THREADS>
__global__ void __launch_bounds__(THREADS)
    project_queries_kernel(device::cache_view<Codec> cache, const float* q, float* qz,
                           float* qbias, int layer, int heads_per_kv, int qz_stride) {
    const int b = int(blockIdx.x), h = int(blockIdx.y);
    const std::size_t row = std::size_t(b) * gridDim.y + h;
    const int kvh = h / heads_per_kv;
    const int group = kvh / cache.heads_per_group, in_group = kvh % cache.heads_per_group;
    const Codec ck = cache.codecs[cache.slot(layer, group, kv_kind::key)];
    const float bias = device::project_query(device::block_group<THREADS>{}, ck,
                                             q + row * cache.head_dim, in_group,
                                             qz + row * qz_stride);
    if (threadIdx.x == 0) qbias[row] = bias;
}

/// Host-side checks of everything but the device pointers (`pointers`: those too).
inline void validate(const decode_attention_params& p, int n_layers, int n_kv_heads,
                     int head_dim, const char* who, bool pointers = true) {
    const std::string me = who;
    require(p.batch >= 0, me + ": batch " + std::to_string(p.batch) + " is negative");
    require(p.layer >= 0 && p.layer < n_layers, me + ": layer " + std::to_string(p.layer) +
                                                    " is out of range [0, " +
                                                    std::to_string(n_layers) + ")");
    require(p.n_heads > 0 && p.n_heads % n_kv_heads == 0,
            me + ": n_heads " + std::to_string(p.n_heads) +
                " is not a positive multiple of the cache's n_kv_heads " +
                std::to_string(n_kv_heads));
    require(std::isfinite(p.scale) && p.scale >= 0.0f,
            me + ": scale must be finite and not negative (0 picks 1/sqrt(head_dim))");
    require(p.max_kv_length >= 0, me + ": max_kv_length is negative");
    if (p.rope == rope_mode::on_read) validate(p.rope_cfg, head_dim);
    if (pointers && p.batch > 0) {
        require(p.q && p.out && p.sequences && p.kv_lengths,
                me + ": q, out, sequences and kv_lengths must be device pointers");
    }
}

/// Most items one launch takes. The split kernels keep the item on grid y, and the projection
/// and lift kernels a block of items, so a launch of more items than gridDim.y may hold would
/// fail (a prefill of 64 sequences × 1493 tokens is 95,552 items); the entry points cut such a
/// batch into launches of at most this many items, one after another on the stream (they share
/// the workspace, which stream order makes safe).
inline constexpr int max_items_per_launch = int(cuda::max_grid_yz);

/// Items [first, first + count) of p, as a launch of their own: q, out and the per-item arrays
/// move by `first` items; max_kv_length stays a bound.
inline decode_attention_params item_slice(const decode_attention_params& p, int first, int count,
                                          int head_dim) {
    decode_attention_params s = p;
    const std::size_t rows = std::size_t(first) * std::size_t(p.n_heads) * std::size_t(head_dim);
    s.q = p.q + rows;
    s.out = p.out + rows;
    s.sequences = p.sequences + first;
    s.kv_lengths = p.kv_lengths + first;
    if (p.q_positions) s.q_positions = p.q_positions + first;
    s.batch = count;
    return s;
}

/// When p has more than max_items_per_launch items, calls run(slice) for consecutive slices of
/// at most that many and returns true; otherwise runs nothing and returns false. Slices are of
/// equal size (a multiple of 4 items, so that q stays 16-byte aligned), the last one smaller.
template <class Run>
bool run_in_item_slices(const decode_attention_params& p, int head_dim, Run&& run) {
    if (p.batch <= max_items_per_launch) return false;
    const int n = (p.batch + max_items_per_launch - 1) / max_items_per_launch;
    int per = (p.batch + n - 1) / n;
    per = std::min((per + 3) / 4 * 4, max_items_per_launch / 4 * 4);
    for (int first = 0; first < p.batch; first += per)
        run(item_slice(p, first, std::min(per, p.batch - first), head_dim));
    return true;
}

/// Merges the splits of every (item, head) into `out` (combine_kernel: a CTA per 128 columns)
/// and records the split plan in the workspace; every split-KV path ends with it.
inline void launch_merge(const merge_params& m, attention_workspace& ws, cudaStream_t stream,
                         const char* what) {
    const dim3 grid = cuda::checked_grid(m.batch, m.n_heads,
                                         (m.width + merge_columns - 1) / merge_columns, what);
    combine_kernel<merge_threads><<<grid, merge_threads, 0, stream>>>(m);
    KVCAR_CUDA_CHECK_LAUNCH(what);
    ws.last_splits = m.splits;
    ws.last_chunk = m.chunk;
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
    const dim3 grid = cuda::checked_grid(plan.splits, p.batch, cache.n_kv_heads,
                                         "direct_attention_kernel");
    direct_attention_kernel<Codec, HEAD_DIM, GQA, direct_threads>
        <<<grid, direct_threads, 0, stream>>>(dp);
    KVCAR_CUDA_CHECK_LAUNCH("direct_attention_kernel");
    launch_merge(merge_params{dp.part_acc, dp.part_ml, p.kv_lengths, p.out, p.batch, p.n_heads,
                              /*width=*/HEAD_DIM, plan.chunk, plan.splits,
                              /*acc_stride=*/HEAD_DIM},
                 ws, stream, "combine_kernel");
}

/// The tensor-core direct path for f16 and int8 identity heads with GQA
/// (kvcar/kernels/direct_mma_decode_attention.cuh, included at the end of this file): runs it and
/// returns true when the codec and shape qualify.
template <class Codec>
bool try_direct_tensor_cores(const device::cache_view<Codec>& cache,
                             const decode_attention_params& p, float scale,
                             attention_workspace& ws, cudaStream_t stream);

/// The tensor-core path for whole-layer latents (kvcar/kernels/latent_decode_attention.cuh,
/// included at the end of this file): runs it and returns true when the launch qualifies.
template <class Codec>
bool try_latent_tensor_cores(const device::cache_view<Codec>& cache,
                             const decode_attention_params& p, attention_workspace& ws,
                             cudaStream_t stream);

/// The tensor-core path for autoencoder codecs (kvcar/kernels/autoencoder_decode_attention.cuh,
/// included at the end of this file): runs it and returns true when the launch qualifies.
template <class Codec>
bool try_autoencoder_tensor_cores(const device::cache_view<Codec>& cache,
                                  const decode_attention_params& p, attention_workspace& ws,
                                  cudaStream_t stream);

}  // namespace detail

/// Decode attention over a cache view: out[b][h] = softmax(scale · q[b][h] · K) V over the first
/// kv_lengths[b] tokens of sequence sequences[b] in `layer`, for every codec. Enqueued on
/// `stream`; host-side argument errors throw kvcar::error before anything is enqueued.
template <class Codec>
void decode_attention(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                      attention_workspace& ws, cudaStream_t stream = nullptr) {
    detail::validate(p, cache.n_layers, cache.n_kv_heads, cache.head_dim, "decode_attention");
    if (detail::run_in_item_slices(p, cache.head_dim, [&](const decode_attention_params& slice) {
            decode_attention(cache, slice, ws, stream);
        }))
        return;
    ws.last_path = decode_path::none;
    if (p.batch == 0) return;
    const int hd = cache.head_dim;
    const int G = p.n_heads / cache.n_kv_heads;
    const float scale = p.scale == 0.0f ? 1.0f / std::sqrt(float(hd)) : p.scale;
    const bool rope = p.rope == rope_mode::on_read;
    constexpr int combine_threads = 128;

    // The direct path: identity and quantized identity codecs of common shapes, no RoPE.
    if constexpr (detail::direct_codec<Codec>::value) {
        using E = typename device::codec_traits<Codec>::element;
        constexpr int load_bytes = device::codec_traits<Codec>::quantized ? 8 : 16;
        // GQA heads of f16 / int8 records: all query heads of a KV head on tensor cores.
        if (detail::try_direct_tensor_cores(cache, p, scale, ws, stream)) {
            ws.last_path = decode_path::direct_tensor_cores;
            return;
        }
        bool launched = false;
        if (!rope) {
            KVCAR_DISPATCH_HEAD_DIM(hd, HEAD_DIM, KVCAR_DISPATCH_GQA(G, GQA, {
                // a head's pieces must fit in one warp
                if constexpr (HEAD_DIM * sizeof(E) <= 32 * load_bytes) {
                    detail::launch_direct<Codec, HEAD_DIM, GQA>(cache, p, scale, ws, stream);
                    launched = true;
                }
            }));
        }
        if (launched) {
            ws.last_path = decode_path::direct;
            return;
        }
    }

    auto run_generic = [&]<bool LATENT>() {
        constexpr int THREADS = detail::generic_threads;
        constexpr int TILE = detail::generic_tile<Codec, LATENT>;
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
            fixed = detail::generic_smem_floats(NQ, qw_max, acc_stride, tile, tile_width, 0,
                                                scratch);
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
        const int max_chunk =
            int(std::min<std::size_t>((budget - fixed) / NQ / tile * tile, 4096));
        // 256-thread CTAs: aim for 4 per multiprocessor.
        const detail::split_plan plan =
            detail::plan_splits(p.batch * cache.groups_per_layer, p.max_kv_length,
                                ws.sm_count() * 4, max_chunk, tile);
        const std::size_t rows = std::size_t(p.batch) * p.n_heads;
        detail::split_params<Codec> sp{};
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
        sp.scale = scale;
        sp.rope = rope;
        sp.rope_cfg = p.rope_cfg;
        if constexpr (LATENT) {
            sp.qz = ws.latent_queries(rows * cache.max_latent_width);
            sp.qbias = ws.latent_bias(rows);
            detail::project_queries_kernel<Codec, 128>
                <<<cuda::checked_grid(p.batch, p.n_heads, 1, "project_queries_kernel"), 128, 0,
                   stream>>>(
                    cache, p.q, const_cast<float*>(sp.qz), const_cast<float*>(sp.qbias), p.layer,
                    G, cache.max_latent_width);
            KVCAR_CUDA_CHECK_LAUNCH("project_queries_kernel");
        }
        const std::size_t smem =
            sizeof(float) * detail::generic_smem_floats(NQ, qw_max, acc_stride, tile, tile_width,
                                                        plan.chunk, scratch);
        auto kernel = detail::split_attention_kernel<Codec, LATENT, THREADS, TILE>;
        cuda::allow_dynamic_smem(kernel, smem, ws.max_shared_bytes(), "split_attention_kernel");
        const dim3 grid = cuda::checked_grid(plan.splits, p.batch, cache.groups_per_layer,
                                             "split_attention_kernel");
        kernel<<<grid, THREADS, smem, stream>>>(sp);
        KVCAR_CUDA_CHECK_LAUNCH("split_attention_kernel");
        if constexpr (LATENT) {
            const dim3 heads = cuda::checked_grid(p.batch, p.n_heads, 1, "combine_lift_kernel");
            const std::size_t csmem = sizeof(float) * cache.max_latent_width;
            cuda::allow_dynamic_smem(detail::combine_lift_kernel<Codec, 128>, csmem,
                                     ws.max_shared_bytes(), "combine_lift_kernel");
            detail::combine_lift_kernel<Codec, 128><<<heads, combine_threads, csmem, stream>>>(
                cache, sp.part_acc, sp.part_ml, p.kv_lengths, p.out, p.layer, G, plan.chunk,
                plan.splits, acc_stride);
            KVCAR_CUDA_CHECK_LAUNCH("combine_lift_kernel");
        } else {
            detail::launch_merge(
                detail::merge_params{sp.part_acc, sp.part_ml, p.kv_lengths, p.out, p.batch,
                                     p.n_heads, /*width=*/hd, plan.chunk, plan.splits,
                                     acc_stride},
                ws, stream, "combine_kernel");
        }
        ws.last_splits = plan.splits;
        ws.last_chunk = plan.chunk;
    };

    if constexpr (device::linear_core_codec<Codec>) {
        if (!rope) {
            // Whole-layer latents (MLA-like) on tensor cores when the codec and shape allow.
            if (detail::try_latent_tensor_cores(cache, p, ws, stream)) {
                ws.last_path = decode_path::latent_tensor_cores;
                return;
            }
            run_generic.template operator()<true>();
            ws.last_path = decode_path::latent;
            return;
        }
    }
    if constexpr (device::codec_traits<Codec>::family == device::codec_family::mlp) {
        // Autoencoder decoders as matrix products on tensor cores, attention in hidden space.
        if (detail::try_autoencoder_tensor_cores(cache, p, ws, stream)) {
            ws.last_path = decode_path::autoencoder_tensor_cores;
            return;
        }
    }
    run_generic.template operator()<false>();
    ws.last_path = decode_path::decoded;
}

/// Decode step for the sequences of a device cache: one query per sequence at its last cached
/// position of `layer` (append this step's K/V first, as a model does). q, out: device
/// [sequences.size()][opt.n_heads][head_dim]. A sequence of length 0 gets zeros.
template <class Codec, class Layout>
void decode_attention(const cuda::device_kv_cache<Codec, Layout>& cache, int layer,
                      std::span<const int> sequences, const float* q, float* out,
                      const attention_params& opt, attention_workspace& ws,
                      cudaStream_t stream = nullptr) {
    const int batch = int(sequences.size());
    require(layer >= 0 && layer < cache.geometry().n_layers,
            "decode_attention: layer " + std::to_string(layer) + " is out of range [0, " +
                std::to_string(cache.geometry().n_layers) + ")");
    std::vector<std::int32_t> host(2 * std::size_t(batch));
    int max_len = 0;
    for (int b = 0; b < batch; ++b) {
        host[std::size_t(b)] = sequences[std::size_t(b)];
        const int len = cache.length(sequences[std::size_t(b)], layer);  // throws if not live
        host[std::size_t(batch + b)] = len;
        max_len = std::max(max_len, len);
    }
    decode_attention_params p;
    p.q = q;
    p.out = out;
    p.batch = batch;
    p.max_kv_length = max_len;
    p.layer = layer;
    p.n_heads = opt.n_heads;
    p.scale = opt.scale;
    p.rope = opt.rope;
    p.rope_cfg = opt.rope_cfg;
    detail::validate(p, cache.geometry().n_layers, cache.geometry().n_kv_heads,
                     cache.geometry().head_dim, "decode_attention", false);
    if (batch == 0) return;
    require(q && out, "decode_attention: q and out must be device pointers");
    std::int32_t* dev = ws.ints(host.size());
    KVCAR_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size() * sizeof(std::int32_t),
                                     cudaMemcpyHostToDevice, stream));
    p.sequences = dev;
    p.kv_lengths = dev + batch;
    decode_attention(cache.view(), p, ws, stream);
}

}  // namespace kvcar::kernels

// The tensor-core latent path (defines detail::try_latent_tensor_cores).
#include "kvcar/kernels/latent_decode_attention.cuh"
// The tensor-core direct path (defines detail::try_direct_tensor_cores).
#include "kvcar/kernels/direct_mma_decode_attention.cuh"
// The tensor-core autoencoder path (defines detail::try_autoencoder_tensor_cores).
#include "kvcar/kernels/autoencoder_decode_attention.cuh"
