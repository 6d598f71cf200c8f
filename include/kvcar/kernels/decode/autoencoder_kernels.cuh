// kvcar/kernels/decode/autoencoder_kernels.cuh — the split kernel of the
// `autoencoder_tensor_cores` path (decode/autoencoder_tensor_cores.cuh says the math and the
// limits): attention over the KV-CAR autoencoder's hidden activations, computed per tile on
// tensor cores from the f16 latents.
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
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/autoencoder_kernels.cuh needs nvcc"
#endif

#include <concepts>
#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/device/cache_view.cuh"
#include "kvcar/device/latent.cuh"
#include "kvcar/kernels/decode/common.cuh"
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

}  // namespace detail::autoencoder_tc

}  // namespace kvcar::kernels
