// kvcar/kernels/autoencoder_decode_attention.cuh — decode attention over the KV-CAR autoencoder's
// latents on tensor cores, with the attention done in the decoder's hidden space.
//
// The math. The decoder is x̂ = W2ᵀ a + b2 with a = lrelu(W1 z + b1) (h hidden units, W2ᵀ the
// transposed second layer [h][D]). Only the first layer is nonlinear, so for query head q of a
// KV head whose columns of the group are c (hd wide), with q̃ = W2ᵀ[:, c] q (h wide) and
// bias = q · b2[c]:
//     q · x̂_t[c]            = q̃ · a_t + bias                      (scores)
//     Σ_t p_t x̂_t[c]        = W2ᵀ[:, c]ᵀ (Σ_t p_t a_t) + b2[c]     (Σ_t p_t = 1 after the merge)
// so the second layer never runs per token: queries are projected into hidden space once per
// step, the split kernel attends over the hidden activations a_t of the cached tokens, and the
// merged Σ p a is lifted back through W2 once per (item, head). Per token and stream that leaves
// the first layer (d·h multiply-adds) instead of both (d·h + h·D), and the hidden activations are
// shared by every query head of the group (a whole-layer group serves all H heads, as in MLA).
// Exact up to rounding; RoPE on read does not commute with W2 (the rotation depends on the
// token), so that case takes the generic path.
//
// The split kernel: one CTA of 8 warps per (split of `chunk` tokens, item, codec group).
//   * q̃ of the group's query heads (fp16, padded to 16-row blocks) sits in shared memory;
//   * tiles of 32 tokens: the f16 latents (exact in fp16) are staged in shared memory, then
//     A = lrelu(Z · W1ᵀ + b1) by mma.sync m16n8k16 (fp16 in, fp32 accumulate), warps over 32-wide
//     blocks of hidden units; the weights go from global memory (L2-resident: W1 is a few MB,
//     shared by every CTA) straight into B fragments, one 16-byte load per row and two k-steps;
//     A is stored as fp16 in shared memory, [token][hidden];
//   * keys: S += q̃ · Aᵀ per tile (warps over head blocks × 8-token blocks); softmax over the whole
//     split in shared memory once every score is known (no running maximum needed; the combine
//     step merges splits as the other paths do);
//   * values: the same decoder on the V latents, then Acc += P · A with the accumulators in
//     registers, warp w owning the hidden columns 8w + 64j … + 7;
//   * the unnormalized Acc (h wide), the split's maximum and sum go to the same partial buffers
//     as the other paths; combine_kernel merges them into z̄ = Σ p a, and a lift kernel computes
//     out = W2ᵀ[:, c]ᵀ z̄ + b2[c].
// Nothing decompressed (neither x̂ nor a) reaches global memory.
//
// The fp16 W1. Every CTA streams all of W1 once per tile of 32 tokens, so the L2 traffic of the
// decoder is (tokens / 32) · |W1|: fp16 halves it against reading the fp32 weights, and a
// fragment-ordered, zero-padded copy needs one 16-byte load per row and two k-steps and no
// bounds checks. The copy is made into the workspace on every launch (copy_weights_kernel,
// a few MB per layer, microseconds): a copy kept across launches could not tell on the host that
// a cache's codecs changed (they live in device memory) and would silently go stale.
//
// Limits (decode_attention falls back to the generic decoded path outside them, and
// autoencoder_decode_attention_supported says why): codec autoencoder_codec<f16>; no RoPE on read;
// at most 32 query heads per codec group (heads_per_group × query heads per KV head); hidden width
// h <= 1024 (the value accumulators live in registers: (h / 64) blocks of 8 columns per warp);
// latent width d <= max_latent_width; the cache view's max_hidden_width set (device_kv_cache does);
// shared memory for one 32-token tile. Any d and h work: they are zero-padded to 32.
// Precision: z is exact in fp16; W1, the hidden activations, q̃ and the probabilities are fp16
// operands with fp32 accumulation (as in flash attention); the lift is fp32. Hidden activations
// and q̃ must fit fp16 (|x| < 65504).
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/autoencoder_decode_attention.cuh needs nvcc"
#endif

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/kernels/decode_attention.cuh"
#include "kvcar/kernels/mma.cuh"
#include "kvcar/numeric.hpp"

namespace kvcar::kernels {

/// Codecs the tensor-core autoencoder path reads: the autoencoder with f16 latents (exact as
/// fp16 MMA operands).
template <class Codec>
concept autoencoder_tensor_core_codec = std::same_as<Codec, autoencoder_codec<f16>>;

namespace detail::autoencoder_tc {

inline constexpr int threads = 256;
inline constexpr int warps = threads / 32;
inline constexpr int tile = 32;         // tokens per staged tile (two 16-row MMA blocks)
inline constexpr int max_heads = 32;    // query heads per codec group (two 16-row blocks)
inline constexpr int max_hidden = 1024; // 16 accumulator blocks of 8 columns per warp
inline constexpr int max_chunk = 512;
inline constexpr int hidden_block = 32; // hidden units a warp computes at once (4 MMA columns)
inline constexpr int project_items = 16;  // items sharing one read of W2 in the projection
inline constexpr int project_rows = 64;   // hidden units per projection CTA
inline constexpr int aux_threads = 128;
inline constexpr int lift_items = 8;      // items sharing one read of W2 in the lift
inline constexpr int lift_threads = 256;

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }
/// Row stride (in halves) of fp16 rows read as 32-bit words by the 8 × 4 lanes (g, t) of an MMA
/// fragment: ≡ 8 (mod 64) halves puts row g's words at bank 4g, so the 32 reads hit 32 banks.
__host__ __device__ constexpr int fragment_ld(int width) { return round_up(width, 64) + 8; }

/// Shared-memory layout of the split kernel; the same function sizes it on the host and carves
/// it on the device. Regions are 128-byte aligned.
struct smem_layout {
    int q_ld = 0, p_ld = 0, z_ld = 0, a_ld = 0;        // row strides in halves
    int query = 0, latents = 0, hidden = 0, scores = 0, vectors = 0;  // byte offsets
    int total = 0;
};

/// `heads_pad`: 16 · head blocks; `lat_pad`, `hid_pad`: widest d and h rounded up to 32.
__host__ __device__ inline smem_layout make_layout(int heads_pad, int lat_pad, int hid_pad,
                                                   int chunk) {
    smem_layout L;
    L.q_ld = fragment_ld(hid_pad);
    L.p_ld = fragment_ld(chunk);
    L.z_ld = fragment_ld(lat_pad);
    L.a_ld = fragment_ld(hid_pad);
    int off = 0;
    // q̃ during the keys, the fp16 probabilities during the values: one region.
    L.query = off;
    off += round_up(heads_pad * (L.q_ld > L.p_ld ? L.q_ld : L.p_ld) * 2, 128);
    L.latents = off;
    off += round_up(tile * L.z_ld * 2, 128);
    L.hidden = off;
    off += round_up(tile * L.a_ld * 2, 128);
    L.scores = off;
    off += round_up(heads_pad * chunk * 4, 128);
    L.vectors = off;  // bias, m, l [heads_pad each]
    off += 3 * heads_pad * 4;
    L.total = round_up(off, 128);
    return L;
}

template <class Codec>
struct split_params {
    device::cache_view<Codec> cache;
    const __half* qt;    // [batch][n_heads][hid_pad] projected queries, zero beyond the K codec's h
    const __half* w1h;   // [groups][2][hid_pad][lat_pad] fp16 W1 (copy_weights_kernel)
    const float* qbias;  // [batch][n_heads] q · b2
    const std::int32_t* sequences;
    const std::int32_t* kv_lengths;
    float* part_acc;  // [batch][n_heads][max_splits][hid_pad]
    float* part_ml;   // [batch][n_heads][max_splits][2]
    int layer, n_heads, heads_per_kv, chunk, max_splits, lat_pad, hid_pad;
    float scale;
};

/// A 32-bit word of two fp16 in shared memory (the address is 4-byte aligned).
__device__ __forceinline__ std::uint32_t lds32(const __half* p) {
    return *reinterpret_cast<const std::uint32_t*>(p);
}
/// Two fp16 → one 32-bit word, `lo` in the low half.
__device__ __forceinline__ std::uint32_t pack_halves(__half lo, __half hi) {
    return std::uint32_t(__half_as_ushort(lo)) | (std::uint32_t(__half_as_ushort(hi)) << 16);
}
/// Block-cooperative: the f16 latents of tokens [t0, t0 + n) into z[r][0 .. lat_pad) (row
/// stride z_ld halves), zeros past d and in rows n .. tile − 1. Does not synchronize.
__device__ inline void stage_latents(const page_view& view, int seq, int t0, int n, int d,
                                     int lat_pad, __half* z, int z_ld) {
    const int tid = int(threadIdx.x);
    const int rb = int(view.record_bytes);
    if (d % 8 == 0 && rb % 16 == 0) {
        // 16-byte pieces: whole records, and lat_pad − d is a multiple of 8 halves.
        const int pieces = lat_pad / 8, real = d / 8;
        for (int idx = tid; idx < tile * pieces; idx += threads) {
            const int r = idx / pieces, c = idx - (idx / pieces) * pieces;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (r < n && c < real)
                v = *reinterpret_cast<const uint4*>(view.record(seq, t0 + r) + std::size_t(c) * 16);
            *reinterpret_cast<uint4*>(z + r * z_ld + c * 8) = v;
        }
    } else {
        // 4-byte words (records are 4-byte aligned); an odd d's last word holds one element and
        // record padding, which is masked.
        const int words = lat_pad / 2;
        for (int idx = tid; idx < tile * words; idx += threads) {
            const int r = idx / words, w = idx - (idx / words) * words;
            std::uint32_t v = 0u;
            if (r < n && 2 * w < d) {
                v = reinterpret_cast<const std::uint32_t*>(view.record(seq, t0 + r))[w];
                if (2 * w + 1 == d) v &= 0xffffu;
            }
            *reinterpret_cast<std::uint32_t*>(z + r * z_ld + 2 * w) = v;
        }
    }
}

/// Where logical column k of a row of W1 sits in its fp16 copy: within each block of 32, lane
/// t of an MMA fragment finds the 8 halves it needs for two k-steps — (2t, 2t + 1, 2t + 8,
/// 2t + 9) and the same + 16, i.e. b0, b1 of both steps — at [8t, 8t + 8), one 16-byte load.
__host__ __device__ constexpr int weight_position(int k) {
    const int r = k % 32, step = r / 16, within = r % 16;
    const int t = (within % 8) / 2, upper = within / 8, lo = within % 2;
    return k - r + 8 * t + 4 * step + 2 * upper + lo;
}

/// The fp16 copy of W1 for (group, kind) = blockIdx.x / 2, blockIdx.x % 2 of `layer`, hidden
/// rows blockIdx.y · copy_rows …: [hid_pad][lat_pad] halves in weight_position order, zero past
/// the codec's h and d, so that the split kernel reads whole 16-byte pieces with no bounds.
/// Made on every launch: a few MB, negligible next to the attention, and never stale.
inline constexpr int copy_rows = 8;
template <class Codec>
__global__ void __launch_bounds__(aux_threads)
    copy_weights_kernel(device::cache_view<Codec> cache, int layer, __half* w1h, int hid_pad,
                        int lat_pad) {
    const int group = int(blockIdx.x) / 2;
    const kv_kind kind = blockIdx.x % 2 == 0 ? kv_kind::key : kv_kind::value;
    const Codec c = cache.codecs[cache.slot(layer, group, kind)];
    __half* dst = w1h + std::size_t(blockIdx.x) * hid_pad * lat_pad;
    const int n0 = int(blockIdx.y) * copy_rows;
    for (int idx = int(threadIdx.x); idx < copy_rows * lat_pad; idx += aux_threads) {
        const int n = n0 + idx / lat_pad, k = idx % lat_pad;  // k: logical column
        if (n >= hid_pad) break;
        const float w =
            n < c.hidden && k < c.latent ? c.dec1_w[std::size_t(n) * c.latent + k] : 0.f;
        dst[std::size_t(n) * lat_pad + weight_position(k)] = __float2half_rn(w);
    }
}

/// Block-cooperative: a[r][k] = lrelu(W1[k] · z[r] + b1[k]) as fp16 for the tile's 32 rows and
/// k < hid_pad (zero for k >= h). Warp w computes hidden blocks w, w + 8, … of 32 units: two
/// 16-row MMA blocks × four 8-column blocks, two k-steps per 16-byte load of each weight row
/// (the fp16 copy `w1h` [hid_pad][lat_pad] in weight_position order, L2-resident), the A
/// fragments from the staged latents in shared memory. UNROLL: 32-column blocks of W1 in flight
/// per warp (2 unless the caller's accumulators leave no registers). Does not synchronize.
template <int UNROLL>
__device__ void hidden_tile(const __half* w1h, const float* b1, int h, int d, float slope,
                                   int lat_pad, const __half* z, int z_ld, __half* a, int a_ld,
                                   int hid_pad) {
    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int kblocks = (d + 31) / 32;  // latent columns past d are zero in z and in w1h
    for (int blk = warp; blk < hid_pad / hidden_block; blk += warps) {
        const __half* rows = w1h + std::size_t(blk * hidden_block + g) * lat_pad + 8 * t;
        float acc[2][4][4];
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[m][j][e] = 0.f;
#pragma unroll UNROLL
        for (int kb = 0; kb < kblocks; ++kb) {
            uint4 bf[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                bf[j] = __ldg(reinterpret_cast<const uint4*>(rows + std::size_t(8 * j) * lat_pad +
                                                             32 * kb));
#pragma unroll
            for (int step = 0; step < 2; ++step) {
                const int k0 = 32 * kb + 16 * step;
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const __half* zr = z + (16 * m + g) * z_ld + k0 + 2 * t;
                    const std::uint32_t a0 = lds32(zr), a1 = lds32(zr + 8 * z_ld);
                    const std::uint32_t a2 = lds32(zr + 8), a3 = lds32(zr + 8 * z_ld + 8);
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        mma_16816(acc[m][j], a0, a1, a2, a3, step == 0 ? bf[j].x : bf[j].z,
                                  step == 0 ? bf[j].y : bf[j].w);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = blk * hidden_block + 8 * j + 2 * t;
            const float bias0 = col < h ? b1[col] : 0.0f;
            const float bias1 = col + 1 < h ? b1[col + 1] : 0.0f;
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const int r = 16 * m + g;
                *reinterpret_cast<std::uint32_t*>(a + r * a_ld + col) =
                    pack_half2(leaky_relu(acc[m][j][0] + bias0, slope),
                               leaky_relu(acc[m][j][1] + bias1, slope));
                *reinterpret_cast<std::uint32_t*>(a + (r + 8) * a_ld + col) =
                    pack_half2(leaky_relu(acc[m][j][2] + bias0, slope),
                               leaky_relu(acc[m][j][3] + bias1, slope));
            }
        }
    }
}

/// One CTA: split blockIdx.x of item blockIdx.y, codec group blockIdx.z, all its query heads.
/// MT: 16-row head blocks (1, 2); NCOL: most 8-column hidden blocks a warp accumulates.
template <class Codec, int MT, int NCOL>
__global__ void __launch_bounds__(threads, 1) split_kernel(split_params<Codec> p) {
    constexpr int NQP = 16 * MT;
    extern __shared__ __align__(128) unsigned char smem[];

    const int split = int(blockIdx.x), b = int(blockIdx.y), group = int(blockIdx.z);
    const int len = p.kv_lengths[b];
    const int begin = split * p.chunk;
    if (begin >= len) return;  // uniform across the block
    const int end = min(len, begin + p.chunk);
    const int n_tok = end - begin;
    const int n_tiles = (n_tok + tile - 1) / tile;
    const int seq = p.sequences[b];
    const auto& cache = p.cache;
    const int NQ = cache.heads_per_group * p.heads_per_kv;
    const int h0 = group * NQ;  // the group's first query head
    const int slot_k = cache.slot(p.layer, group, kv_kind::key);
    const int slot_v = cache.slot(p.layer, group, kv_kind::value);
    const Codec ck = cache.codecs[slot_k];
    const Codec cv = cache.codecs[slot_v];
    const page_view pk = cache.slots[slot_k];
    const page_view pv = cache.slots[slot_v];
    const std::size_t w1_size = std::size_t(p.hid_pad) * p.lat_pad;
    const __half* w1k = p.w1h + (2 * std::size_t(group)) * w1_size;
    const __half* w1v = w1k + w1_size;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;

    const smem_layout L = make_layout(NQP, p.lat_pad, p.hid_pad, p.chunk);
    __half* qt = reinterpret_cast<__half*>(smem + L.query);
    __half* probs = qt;  // after the keys
    __half* z = reinterpret_cast<__half*>(smem + L.latents);
    __half* a = reinterpret_cast<__half*>(smem + L.hidden);
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    float* bias_s = reinterpret_cast<float*>(smem + L.vectors);
    float* m_s = bias_s + NQP;
    float* l_s = m_s + NQP;

    // --- q̃ of the group's heads (zero rows pad to NQP), biases, zeroed score sums -------------
    {
        const int pieces = p.hid_pad / 8;
        for (int idx = tid; idx < NQP * pieces; idx += threads) {
            const int h = idx / pieces, c = idx - (idx / pieces) * pieces;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (h < NQ)
                v = *reinterpret_cast<const uint4*>(
                    p.qt + (std::size_t(b) * p.n_heads + h0 + h) * p.hid_pad + std::size_t(c) * 8);
            *reinterpret_cast<uint4*>(qt + h * L.q_ld + c * 8) = v;
        }
        for (int h = tid; h < NQP; h += threads)
            bias_s[h] = h < NQ ? p.qbias[std::size_t(b) * p.n_heads + h0 + h] : 0.0f;
        for (int idx = tid; idx < NQP * p.chunk; idx += threads) scores[idx] = 0.0f;
    }
    // (the first tile's barriers order these writes before their readers)

    // --- keys: scores[h][t] = q̃_h · a_t, per tile ----------------------------------------------
    {
        constexpr int PAIRS = MT * (tile / 8);  // (head block, 8-token block) output fragments
        constexpr int KS = PAIRS >= warps ? 1 : warps / PAIRS;  // slices of h per fragment
        const int hk16 = (ck.hidden + 15) / 16;  // q̃ and a are zero past h
        for (int tt = 0; tt < n_tiles; ++tt) {
            const int t0 = begin + tt * tile;
            stage_latents(pk, seq, t0, min(tile, end - t0), ck.latent, p.lat_pad, z, L.z_ld);
            __syncthreads();
            hidden_tile<2>(w1k, ck.dec1_b, ck.hidden, ck.latent, ck.slope, p.lat_pad, z, L.z_ld,
                           a, L.a_ld, p.hid_pad);
            __syncthreads();
            for (int u = warp; u < PAIRS * KS; u += warps) {
                const int pair = u % PAIRS, slice = u / PAIRS;
                const int m = pair / (tile / 8), j = pair % (tile / 8);
                const int k_begin = slice * hk16 / KS, k_end = (slice + 1) * hk16 / KS;
                float s[4] = {0.f, 0.f, 0.f, 0.f};
                const __half* qr = qt + (16 * m + g) * L.q_ld + 2 * t;
                const __half* ar = a + (8 * j + g) * L.a_ld + 2 * t;
                for (int ks = k_begin; ks < k_end; ++ks) {
                    const int k0 = 16 * ks;
                    mma_16816(s, lds32(qr + k0), lds32(qr + 8 * L.q_ld + k0), lds32(qr + k0 + 8),
                              lds32(qr + 8 * L.q_ld + k0 + 8), lds32(ar + k0), lds32(ar + k0 + 8));
                }
                // Columns past the split's tokens are never read by the softmax.
                float* srow = scores + (16 * m + g) * p.chunk + tt * tile + 8 * j + 2 * t;
                atomicAdd(srow, s[0]);
                atomicAdd(srow + 1, s[1]);
                atomicAdd(srow + 8 * p.chunk, s[2]);
                atomicAdd(srow + 8 * p.chunk + 1, s[3]);
            }
            __syncthreads();  // the next tile overwrites z and a
        }
    }

    // --- softmax over the split, one warp per head; fp16 probabilities replace q̃ ------------
    const int n_pad = n_tiles * tile;
    for (int h = warp; h < NQP; h += warps) {
        const float* s = scores + h * p.chunk;
        __half* pr = probs + h * L.p_ld;
        if (h < NQ) {
            const float bias = bias_s[h];
            float mx = -INFINITY;
            for (int i = lane; i < n_tok; i += 32) mx = fmaxf(mx, (s[i] + bias) * p.scale);
            mx = device::warp_max(mx);
            float l = 0.0f;
            for (int i = lane; i < n_pad; i += 32) {
                const float e = i < n_tok ? ::expf((s[i] + bias) * p.scale - mx) : 0.0f;
                pr[i] = __float2half_rn(e);
                l += e;
            }
            l = device::warp_sum(l);
            if (lane == 0) {
                m_s[h] = mx;
                l_s[h] = l;
            }
        } else {
            for (int i = lane; i < n_pad; i += 32) pr[i] = __float2half_rn(0.0f);
        }
    }
    __syncthreads();

    // --- values: Acc[h][k] += Σ_t p[h][t] a_t[k], warp w owning 8-column blocks w + 8j ---------
    float acc[MT][NCOL][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NCOL; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[m][j][e] = 0.f;
    const int col_blocks = (cv.hidden + 7) / 8;  // a is zero past h
    for (int tt = 0; tt < n_tiles; ++tt) {
        const int t0 = begin + tt * tile;
        stage_latents(pv, seq, t0, min(tile, end - t0), cv.latent, p.lat_pad, z, L.z_ld);
        __syncthreads();
        // Fewer weight loads in flight when the accumulators take most registers (no spills).
        constexpr int UNROLL_V = MT * NCOL > 16 ? 1 : 2;
        hidden_tile<UNROLL_V>(w1v, cv.dec1_b, cv.hidden, cv.latent, cv.slope, p.lat_pad, z,
                              L.z_ld, a, L.a_ld, p.hid_pad);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < tile / 16; ++kk) {
            std::uint32_t af[MT][4];
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                const __half* pr = probs + (16 * m + g) * L.p_ld + tt * tile + 16 * kk + 2 * t;
                af[m][0] = lds32(pr);
                af[m][1] = lds32(pr + 8 * L.p_ld);
                af[m][2] = lds32(pr + 8);
                af[m][3] = lds32(pr + 8 * L.p_ld + 8);
            }
            // B (k = tokens 2t, 2t + 1 | 2t + 8, 2t + 9; n = hidden unit g of the block).
            const __half* ar = a + (16 * kk + 2 * t) * L.a_ld + g;
#pragma unroll
            for (int j = 0; j < NCOL; ++j) {
                const int blk = warp + warps * j;
                if (blk < col_blocks) {
                    const __half* col = ar + 8 * blk;
                    const std::uint32_t b0 = pack_halves(col[0], col[L.a_ld]);
                    const std::uint32_t b1 = pack_halves(col[8 * L.a_ld], col[9 * L.a_ld]);
#pragma unroll
                    for (int m = 0; m < MT; ++m)
                        mma_16816(acc[m][j], af[m][0], af[m][1], af[m][2], af[m][3], b0, b1);
                }
            }
        }
        __syncthreads();  // the next tile overwrites z and a
    }

    // --- partial outputs ----------------------------------------------------------------------
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int j = 0; j < NCOL; ++j) {
            const int blk = warp + warps * j;
            if (blk * 8 >= p.hid_pad) continue;
            const int col = 8 * blk + 2 * t;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int h = 16 * m + g + 8 * half;
                if (h >= NQ) continue;
                const std::size_t row = std::size_t(b) * p.n_heads + h0 + h;
                *reinterpret_cast<float2*>(p.part_acc +
                                           (row * p.max_splits + split) * p.hid_pad + col) =
                    make_float2(acc[m][j][2 * half], acc[m][j][2 * half + 1]);
            }
        }
    }
    for (int h = tid; h < NQ; h += threads) {
        const std::size_t row = std::size_t(b) * p.n_heads + h0 + h;
        p.part_ml[(row * p.max_splits + split) * 2] = m_s[h];
        p.part_ml[(row * p.max_splits + split) * 2 + 1] = l_s[h];
    }
}

/// q̃ = W2ᵀ[:, c] q and bias = q · b2[c] for head blockIdx.x, items blockIdx.y · BB …, hidden
/// units blockIdx.z · project_rows …, from the K codec of the head's group: a warp per hidden
/// unit reads its row slice W2ᵀ[k][c] once, coalesced, for BB items whose queries sit in shared
/// memory. Writes fp16 q̃ [batch][n_heads][hid_pad], zero past the codec's h.
template <class Codec, int BB>
__global__ void __launch_bounds__(aux_threads)
    project_kernel(device::cache_view<Codec> cache, const float* q, __half* qt, float* qbias,
                   int layer, int batch, int n_heads, int heads_per_kv, int hid_pad) {
    extern __shared__ __align__(16) float q_s[];  // [BB][hd]
    const int hh = int(blockIdx.x), b0 = int(blockIdx.y) * BB;
    const int nb = min(BB, batch - b0);
    const int hd = cache.head_dim;
    const int kvh = hh / heads_per_kv;
    const int group = kvh / cache.heads_per_group, in_group = kvh % cache.heads_per_group;
    const Codec ck = cache.codecs[cache.slot(layer, group, kv_kind::key)];
    const int first = in_group * hd, D = ck.width, h = ck.hidden;
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    for (int idx = tid; idx < BB * hd; idx += aux_threads) {
        const int bb = idx / hd, i = idx - (idx / hd) * hd;
        q_s[idx] = bb < nb ? q[(std::size_t(b0 + bb) * n_heads + hh) * hd + i] : 0.0f;
    }
    __syncthreads();
    const int k_end = min(hid_pad, int(blockIdx.z + 1) * project_rows);
    for (int k = int(blockIdx.z) * project_rows + warp; k < k_end; k += aux_threads / 32) {
        float acc[BB];
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) acc[bb] = 0.0f;
        if (k < h) {
            const float* row = ck.dec2_wt + std::size_t(k) * D + first;
            for (int i = lane; i < hd; i += 32) {
                const float w = row[i];
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) acc[bb] += w * q_s[bb * hd + i];
            }
        }
#pragma unroll
        for (int bb = 0; bb < BB; ++bb) {
            const float v = device::warp_sum(acc[bb]);
            if (lane == 0 && bb < nb)
                qt[(std::size_t(b0 + bb) * n_heads + hh) * hid_pad + k] = __float2half_rn(v);
        }
    }
    if (blockIdx.z == 0) {
        for (int bb = warp; bb < nb; bb += aux_threads / 32) {
            float bias = 0.0f;
            for (int i = lane; i < hd; i += 32) bias += q_s[bb * hd + i] * ck.dec2_b[first + i];
            bias = device::warp_sum(bias);
            if (lane == 0) qbias[std::size_t(b0 + bb) * n_heads + hh] = bias;
        }
    }
}

/// out = W2ᵀ[:, c]ᵀ z̄ + b2[c] for head blockIdx.x and items blockIdx.y · BB …, from the merged
/// hidden-space sums z̄ [batch][n_heads][zbar_stride] and the V codec of the head's group (b2
/// only for items that saw a token). The block's threads split as hd output columns × `ksplit`
/// slices of the hidden units; W2ᵀ rows are read coalesced over the columns, once for BB items.
template <class Codec, int BB>
__global__ void __launch_bounds__(lift_threads)
    lift_kernel(device::cache_view<Codec> cache, const float* zbar, int zbar_stride,
                const std::int32_t* kv_lengths, float* out, int layer, int batch, int n_heads,
                int heads_per_kv) {
    extern __shared__ __align__(16) float lift_s[];  // z̄ [BB][zbar_stride], then sums
    const int hh = int(blockIdx.x), b0 = int(blockIdx.y) * BB;
    const int nb = min(BB, batch - b0);
    const int hd = cache.head_dim;
    const int kvh = hh / heads_per_kv;
    const int group = kvh / cache.heads_per_group, in_group = kvh % cache.heads_per_group;
    const Codec cv = cache.codecs[cache.slot(layer, group, kv_kind::value)];
    const int first = in_group * hd, D = cv.width, h = cv.hidden;
    const int tid = int(threadIdx.x);
    const int ksplit = max(1, lift_threads / hd);
    float* z_s = lift_s;
    float* sums = lift_s + BB * zbar_stride;  // [ksplit][BB][hd]
    for (int idx = tid; idx < BB * h; idx += lift_threads) {
        const int bb = idx / h, k = idx - (idx / h) * h;
        z_s[bb * zbar_stride + k] =
            bb < nb ? zbar[(std::size_t(b0 + bb) * n_heads + hh) * zbar_stride + k] : 0.0f;
    }
    __syncthreads();
    const int slice = tid / hd;
    if (slice < ksplit) {
        const int k_begin = slice * h / ksplit, k_end = (slice + 1) * h / ksplit;
        // ksplit > 1: one column per thread; ksplit == 1: columns strided by the block.
        const int step = ksplit > 1 ? hd : lift_threads;
        for (int i = tid - slice * hd; i < hd; i += step) {
            float acc[BB];
#pragma unroll
            for (int bb = 0; bb < BB; ++bb) acc[bb] = 0.0f;
            const float* col = cv.dec2_wt + first + i;
            for (int k = k_begin; k < k_end; ++k) {
                const float w = col[std::size_t(k) * D];
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) acc[bb] += w * z_s[bb * zbar_stride + k];
            }
            if (ksplit == 1) {
#pragma unroll
                for (int bb = 0; bb < BB; ++bb)
                    if (bb < nb)
                        out[(std::size_t(b0 + bb) * n_heads + hh) * hd + i] =
                            (kv_lengths[b0 + bb] > 0 ? cv.dec2_b[first + i] : 0.0f) + acc[bb];
            } else {
#pragma unroll
                for (int bb = 0; bb < BB; ++bb) sums[(slice * BB + bb) * hd + i] = acc[bb];
            }
        }
    }
    if (ksplit > 1) {
        __syncthreads();
        for (int idx = tid; idx < nb * hd; idx += lift_threads) {
            const int bb = idx / hd, i = idx - (idx / hd) * hd;
            float v = 0.0f;
            for (int s = 0; s < ksplit; ++s) v += sums[(s * BB + bb) * hd + i];
            // Σ p = 1 after the merge; an empty item has no tokens and gives zeros, not b2.
            out[(std::size_t(b0 + bb) * n_heads + hh) * hd + i] =
                (kv_lengths[b0 + bb] > 0 ? cv.dec2_b[first + i] : 0.0f) + v;
        }
    }
}

/// What the host decided for one launch (or why the path does not apply).
struct plan {
    bool ok = false;
    std::string why;
    int mt = 0, ncol = 0, chunk = 0, splits = 0, lat_pad = 0, hid_pad = 0;
    std::size_t smem = 0;
};

template <class Codec>
plan make_plan(const device::cache_view<Codec>& cache, const decode_attention_params& p,
               attention_workspace& ws) {
    plan pl;
    auto fail = [&](std::string why) {
        pl.why = "autoencoder_decode_attention: " + std::move(why);
        return pl;
    };
    if (p.rope == rope_mode::on_read)
        return fail("RoPE on read rotates each decoded key by its position, which does not "
                    "commute with the decoder's second layer");
    if (cache.n_kv_heads <= 0 || p.n_heads <= 0 || p.n_heads % cache.n_kv_heads != 0)
        return fail("n_heads " + std::to_string(p.n_heads) +
                    " is not a positive multiple of n_kv_heads " +
                    std::to_string(cache.n_kv_heads));
    const int NQ = cache.heads_per_group * (p.n_heads / cache.n_kv_heads);
    if (NQ > max_heads)
        return fail(std::to_string(NQ) + " query heads per codec group exceed the limit of " +
                    std::to_string(max_heads));
    if (cache.max_hidden_width <= 0)
        return fail("the cache view's max_hidden_width is not set");
    if (cache.max_hidden_width > max_hidden)
        return fail("a hidden layer of " + std::to_string(cache.max_hidden_width) +
                    " units exceeds the limit of " + std::to_string(max_hidden));
    if (cache.max_latent_width <= 0 || cache.max_latent_width > max_latent_width)
        return fail("the cache view's max_latent_width " +
                    std::to_string(cache.max_latent_width) + " is not in [1, " +
                    std::to_string(max_latent_width) + "]");
    pl.mt = NQ <= 16 ? 1 : 2;
    pl.hid_pad = round_up(cache.max_hidden_width, hidden_block);
    pl.lat_pad = round_up(cache.max_latent_width, 32);
    const int need = (pl.hid_pad / 8 + warps - 1) / warps;  // 8-column blocks per warp
    pl.ncol = need <= 4 ? 4 : need <= 8 ? 8 : 16;
    const int limit = ws.max_shared_bytes();
    int max_chunk_fit = 0;
    for (int c = max_chunk; c >= tile; c -= tile) {
        if (make_layout(16 * pl.mt, pl.lat_pad, pl.hid_pad, c).total <= limit) {
            max_chunk_fit = c;
            break;
        }
    }
    if (max_chunk_fit == 0)
        return fail("one tile of a latent of " + std::to_string(cache.max_latent_width) +
                    " and a hidden layer of " + std::to_string(cache.max_hidden_width) +
                    " needs more shared memory than the device's " + std::to_string(limit));
    // One CTA per multiprocessor fits (the tiles take most of shared memory): two waves' worth
    // of CTAs hides the tail without writing many partial outputs.
    const split_plan sp = plan_splits(p.batch * cache.groups_per_layer, p.max_kv_length,
                                      2 * ws.sm_count(), max_chunk_fit, tile);
    pl.chunk = sp.chunk;
    pl.splits = sp.splits;
    pl.smem = std::size_t(make_layout(16 * pl.mt, pl.lat_pad, pl.hid_pad, pl.chunk).total);
    pl.ok = true;
    return pl;
}

template <class Codec, int MT, int NCOL>
void launch_split(const split_params<Codec>& sp, const plan& pl, int batch, int groups,
                  cudaStream_t stream) {
    auto kernel = split_kernel<Codec, MT, NCOL>;
    KVCAR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(pl.smem)));
    const dim3 grid =
        cuda::checked_grid(pl.splits, batch, groups, "autoencoder_decode_attention split_kernel");
    kernel<<<grid, threads, pl.smem, stream>>>(sp);
    KVCAR_CUDA_CHECK_LAUNCH("autoencoder_decode_attention split_kernel");
}

template <class Codec, int MT>
void launch_split_mt(const split_params<Codec>& sp, const plan& pl, int batch, int groups,
                     cudaStream_t stream) {
    if (pl.ncol == 4) {
        launch_split<Codec, MT, 4>(sp, pl, batch, groups, stream);
    } else if (pl.ncol == 8) {
        launch_split<Codec, MT, 8>(sp, pl, batch, groups, stream);
    } else {
        launch_split<Codec, MT, 16>(sp, pl, batch, groups, stream);
    }
}

}  // namespace detail::autoencoder_tc

/// Whether autoencoder_decode_attention can run this launch; if not, `why` (when given) says why.
template <class Codec>
bool autoencoder_decode_attention_supported(const device::cache_view<Codec>& cache,
                                            const decode_attention_params& p,
                                            attention_workspace& ws, std::string* why = nullptr) {
    if constexpr (!autoencoder_tensor_core_codec<Codec>) {
        if (why) *why = "autoencoder_decode_attention: the codec is not autoencoder_codec<f16>";
        return false;
    } else {
        const detail::autoencoder_tc::plan pl = detail::autoencoder_tc::make_plan(cache, p, ws);
        if (why) *why = pl.why;
        return pl.ok;
    }
}

/// Decode attention over autoencoder latents on tensor cores (see the file comment): the same
/// result as decode_attention, for the codecs and shapes autoencoder_decode_attention_supported
/// accepts; throws kvcar::error naming the reason otherwise, before anything is enqueued.
/// Five launches: query projection into hidden space, fp16 copy of W1, split kernel, merge,
/// lift.
template <class Codec>
void autoencoder_decode_attention(const device::cache_view<Codec>& cache,
                                  const decode_attention_params& p, attention_workspace& ws,
                                  cudaStream_t stream = nullptr) {
    namespace at = detail::autoencoder_tc;
    detail::validate(p, cache.n_layers, cache.n_kv_heads, cache.head_dim,
                     "autoencoder_decode_attention");
    if constexpr (!autoencoder_tensor_core_codec<Codec>) {
        require(false, "autoencoder_decode_attention: the codec is not autoencoder_codec<f16>");
    } else {
        if (detail::run_in_item_slices(p, cache.head_dim, [&](const decode_attention_params& slice) {
                autoencoder_decode_attention(cache, slice, ws, stream);
            }))
            return;
        const at::plan pl = at::make_plan(cache, p, ws);
        require(pl.ok, pl.why);
        if (p.batch == 0) return;
        const int H = p.n_heads;
        const int G = H / cache.n_kv_heads;
        const std::size_t rows = std::size_t(p.batch) * H;
        // fp16 q̃ lives in the latent-query floats (two halves per float; hid_pad is even); the
        // bias floats hold the biases, then (16-byte aligned) the merged hidden sums z̄.
        // After q̃, (16-byte aligned: hid_pad is a multiple of 32) the fp16 copies of W1.
        const std::size_t w1_halves =
            std::size_t(cache.groups_per_layer) * 2 * pl.hid_pad * pl.lat_pad;
        __half* qt = reinterpret_cast<__half*>(
            ws.latent_queries((rows * pl.hid_pad + w1_halves) / 2));
        __half* w1h = qt + rows * pl.hid_pad;
        const std::size_t zbar_offset = (rows + 3) / 4 * 4;
        float* bias = ws.latent_bias(zbar_offset + rows * std::size_t(pl.hid_pad));
        float* zbar = bias + zbar_offset;
        at::split_params<Codec> sp{};
        sp.cache = cache;
        sp.qt = qt;
        sp.w1h = w1h;
        sp.qbias = bias;
        sp.sequences = p.sequences;
        sp.kv_lengths = p.kv_lengths;
        sp.part_acc = ws.partial_acc(rows * pl.splits * pl.hid_pad);
        sp.part_ml = ws.partial_ml(rows * pl.splits * 2);
        sp.layer = p.layer;
        sp.n_heads = H;
        sp.heads_per_kv = G;
        sp.chunk = pl.chunk;
        sp.max_splits = pl.splits;
        sp.lat_pad = pl.lat_pad;
        sp.hid_pad = pl.hid_pad;
        sp.scale = p.scale == 0.0f ? 1.0f / std::sqrt(float(cache.head_dim)) : p.scale;

        constexpr int PB = at::project_items;
        const std::size_t project_smem = sizeof(float) * PB * cache.head_dim;
        auto project = at::project_kernel<Codec, PB>;
        cuda::allow_dynamic_smem(project, project_smem, ws.max_shared_bytes(),
                                 "autoencoder_decode_attention project_kernel");
        const dim3 project_grid = cuda::checked_grid(
            H, (p.batch + PB - 1) / PB, (pl.hid_pad + at::project_rows - 1) / at::project_rows,
            "autoencoder_decode_attention project_kernel");
        project<<<project_grid, at::aux_threads, project_smem, stream>>>(
            cache, p.q, qt, bias, p.layer, p.batch, H, G, pl.hid_pad);
        KVCAR_CUDA_CHECK_LAUNCH("autoencoder_decode_attention project_kernel");

        const dim3 copy_grid = cuda::checked_grid(
            2 * cache.groups_per_layer, (pl.hid_pad + at::copy_rows - 1) / at::copy_rows, 1,
            "autoencoder_decode_attention copy_weights_kernel");
        at::copy_weights_kernel<Codec><<<copy_grid, at::aux_threads, 0, stream>>>(
            cache, p.layer, w1h, pl.hid_pad, pl.lat_pad);
        KVCAR_CUDA_CHECK_LAUNCH("autoencoder_decode_attention copy_weights_kernel");

        if (pl.mt == 1) {
            at::launch_split_mt<Codec, 1>(sp, pl, p.batch, cache.groups_per_layer, stream);
        } else {
            at::launch_split_mt<Codec, 2>(sp, pl, p.batch, cache.groups_per_layer, stream);
        }

        // Merge the splits of every (item, head) into z̄ (one CTA each), then lift through W2.
        detail::launch_merge(detail::merge_params{sp.part_acc, sp.part_ml, p.kv_lengths,
                                                  /*out=*/zbar, p.batch, H,
                                                  /*width=*/pl.hid_pad, pl.chunk, pl.splits,
                                                  /*acc_stride=*/pl.hid_pad},
                             ws, stream, "autoencoder_decode_attention combine_kernel");
        constexpr int LB = at::lift_items;
        const int ksplit = std::max(1, at::lift_threads / cache.head_dim);
        const std::size_t lift_smem =
            sizeof(float) * (std::size_t(LB) * pl.hid_pad +
                             (ksplit > 1 ? std::size_t(ksplit) * LB * cache.head_dim : 0));
        auto lift = at::lift_kernel<Codec, LB>;
        cuda::allow_dynamic_smem(lift, lift_smem, ws.max_shared_bytes(),
                                 "autoencoder_decode_attention lift_kernel");
        const dim3 lift_grid = cuda::checked_grid(H, (p.batch + LB - 1) / LB, 1,
                                                  "autoencoder_decode_attention lift_kernel");
        lift<<<lift_grid, at::lift_threads, lift_smem, stream>>>(cache, zbar, pl.hid_pad, p.kv_lengths, p.out, p.layer, p.batch, H, G);
        KVCAR_CUDA_CHECK_LAUNCH("autoencoder_decode_attention lift_kernel");
    }
}

namespace detail {

/// The hook decode_attention calls: runs the tensor-core autoencoder path and returns true when
/// the codec and launch qualify (false: nothing was enqueued).
template <class Codec>
bool try_autoencoder_tensor_cores(const device::cache_view<Codec>& cache,
                                  const decode_attention_params& p, attention_workspace& ws,
                                  cudaStream_t stream) {
    if constexpr (!autoencoder_tensor_core_codec<Codec>) {
        return false;
    } else {
        if (!autoencoder_tc::make_plan(cache, p, ws).ok) return false;
        autoencoder_decode_attention(cache, p, ws, stream);
        return true;
    }
}

}  // namespace detail

}  // namespace kvcar::kernels
