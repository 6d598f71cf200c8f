// kvcar/device/decode.cuh — decoding records into floats inside a kernel: one token by one
// thread, a tile of tokens by a warp, a tile of tokens by a block into shared memory.
//
// The tile decoders do the codec's work cooperatively rather than one token per thread:
//   identity      the latents are the group: one dequantizing pass (load_latents), nothing else;
//   linear        z tile into scratch, then each thread owns output rows i and computes
//                 x̂[t][i] = μ_i + P[i]·z[t] for every token of the tile at once, so each row of
//                 P is read once per tile, not once per token;
//   autoencoder   z tile, then hidden[t][k] = lrelu(W1[k]·z[t] + b1[k]) with threads over k,
//                 then x̂[t][i] = b2[i] + Σ_k hidden[t][k] W2ᵀ[k][i] with threads over i — the
//                 transposed second FC makes that read coalesced — each weight read once per
//                 tile and used TILE_TOKENS times from registers;
//   other latent  z tile, then from_latent per token (one thread per token);
//   opaque        codec.decode per token (one thread per token).
// Nothing is written to global memory but the caller's `out`.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/device/decode.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>

#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/device/latent.cuh"
#include "kvcar/page_view.hpp"

namespace kvcar::device {

/// Thread: decodes one record into the group's floats (codec.decode; the codecs are KVCAR_HD).
/// linear, autoencoder and quantized codecs keep a float[max_latent_width] in local memory:
/// correct anywhere, but a kernel reading many tokens should use a tile decoder.
template <kv_codec Codec>
__device__ void decode_token(const Codec& c, const std::byte* record, float* out) {
    c.decode(record, out);
}

/// Floats of scratch a tile decoder needs for a tile of `tile_tokens` tokens of codec `c`.
template <kv_codec Codec>
__host__ __device__ int decode_scratch_floats(const Codec& c, int tile_tokens) {
    constexpr codec_family family = codec_traits<Codec>::family;
    if constexpr (family == codec_family::affine || family == codec_family::latent) {
        return tile_tokens * c.latent_width();
    } else if constexpr (family == codec_family::mlp) {
        return tile_tokens * (c.latent_width() + core_of(c).hidden);
    } else {
        return 0;
    }
}

namespace detail {

/// acc[t] += Σ_j row[j] · z[t * z_stride + j] for t < TILE (rows in global memory, z in shared).
/// float4 reads of the row when it is 16-byte aligned and n % 4 == 0 (one LDG.128 per 4 FMAs
/// per token instead of one LDG.32 per FMA).
template <int TILE>
__device__ void rows_times_tile(const float* row, int n, const float* z, int z_stride,
                                float (&acc)[TILE]) {
    if (n % 4 == 0 && (reinterpret_cast<std::uintptr_t>(row) & 15u) == 0) {
        for (int j = 0; j < n; j += 4) {
            const float4 w = *reinterpret_cast<const float4*>(row + j);
#pragma unroll
            for (int t = 0; t < TILE; ++t) {
                const float* zt = z + t * z_stride + j;
                acc[t] += w.x * zt[0] + w.y * zt[1] + w.z * zt[2] + w.w * zt[3];
            }
        }
    } else {
        for (int j = 0; j < n; ++j) {
            const float w = row[j];
#pragma unroll
            for (int t = 0; t < TILE; ++t) acc[t] += w * z[t * z_stride + j];
        }
    }
}

}  // namespace detail

/// Scope-cooperative tile decode: tokens [t0, t0 + n) of `seq` (n <= TILE_TOKENS) into
/// out[t * out_stride + i], i < c.group_width(). `scratch` holds decode_scratch_floats(c,
/// TILE_TOKENS) floats of shared memory (unused for identity and opaque codecs). Synchronizes the
/// group before returning, so `out` is ready for every thread.
/// Preconditions: the tokens are within the sequence's capacity in this slot; `out` and
/// `scratch` do not overlap; rows of `out` at t >= n are left as they were.
template <int TILE_TOKENS, thread_scope Scope, kv_codec Codec>
__device__ void decode_tile(Scope g, const Codec& c, const page_view& pv, int seq, int t0, int n,
                            float* out, int out_stride, float* scratch) {
    constexpr codec_family family = codec_traits<Codec>::family;
    if constexpr (family == codec_family::identity) {
        load_latents(g, c, pv, seq, t0, n, 0, c.latent_width(), out, out_stride);
    } else if constexpr (family == codec_family::affine) {
        const auto& lin = core_of(c);
        const int d = lin.rank;
        load_latents(g, c, pv, seq, t0, n, 0, d, scratch, d);
        g.sync();
        for (int i = g.rank(); i < lin.width; i += Scope::size) {
            float acc[TILE_TOKENS];
#pragma unroll
            for (int t = 0; t < TILE_TOKENS; ++t) acc[t] = 0.0f;
            detail::rows_times_tile<TILE_TOKENS>(lin.basis + std::size_t(i) * d, d, scratch, d,
                                                 acc);
            const float mu = lin.mean[i];
#pragma unroll
            for (int t = 0; t < TILE_TOKENS; ++t)
                if (t < n) out[std::size_t(t) * out_stride + i] = mu + acc[t];
        }
    } else if constexpr (family == codec_family::mlp) {
        const auto& ae = core_of(c);
        const int d = ae.latent, h = ae.hidden, D = ae.width;
        float* z = scratch;                               // [TILE][d]
        float* hidden = scratch + TILE_TOKENS * d;        // [TILE][h]
        load_latents(g, c, pv, seq, t0, n, 0, d, z, d);
        g.sync();
        for (int k = g.rank(); k < h; k += Scope::size) {
            float acc[TILE_TOKENS];
#pragma unroll
            for (int t = 0; t < TILE_TOKENS; ++t) acc[t] = 0.0f;
            detail::rows_times_tile<TILE_TOKENS>(ae.dec1_w + std::size_t(k) * d, d, z, d, acc);
            const float b = ae.dec1_b[k];
#pragma unroll
            for (int t = 0; t < TILE_TOKENS; ++t)
                hidden[t * h + k] = leaky_relu(acc[t] + b, ae.slope);
        }
        g.sync();
        for (int i = g.rank(); i < D; i += Scope::size) {
            float acc[TILE_TOKENS];
            const float b = ae.dec2_b[i];
#pragma unroll
            for (int t = 0; t < TILE_TOKENS; ++t) acc[t] = b;
            // W2ᵀ[k][i]: for fixed k, consecutive threads read consecutive i (coalesced).
            for (int k = 0; k < h; ++k) {
                const float w = ae.dec2_wt[std::size_t(k) * D + i];
#pragma unroll
                for (int t = 0; t < TILE_TOKENS; ++t) acc[t] += hidden[t * h + k] * w;
            }
#pragma unroll
            for (int t = 0; t < TILE_TOKENS; ++t)
                if (t < n) out[std::size_t(t) * out_stride + i] = acc[t];
        }
    } else if constexpr (family == codec_family::latent) {
        const int d = c.latent_width();
        load_latents(g, c, pv, seq, t0, n, 0, d, scratch, d);
        g.sync();
        for (int t = g.rank(); t < n; t += Scope::size)
            c.from_latent(scratch + t * d, out + std::size_t(t) * out_stride);
    } else {
        for (int t = g.rank(); t < n; t += Scope::size)
            c.decode(pv.record(seq, t0 + t), out + std::size_t(t) * out_stride);
    }
    g.sync();
}

/// A block decodes a tile of up to TILE_TOKENS tokens into shared (or global) memory, CUB style:
///
///     using decoder = kvcar::device::block_decode<Codec, 128, 16, 64, 128>;
///     __shared__ decoder::TempStorage temp;
///     __shared__ float tile[16][D];
///     decoder(temp).decode(codec, view, seq, t0, n, &tile[0][0], D);
///
/// TempStorage fits codecs whose latent is at most MAX_LATENT wide and whose autoencoder hidden
/// layer has at most MAX_HIDDEN units (check with fits() on the host). For shapes known only at
/// run time, construct from dynamic shared memory of decode_scratch_floats(c, TILE_TOKENS) floats.
template <kv_codec Codec, int BLOCK_THREADS, int TILE_TOKENS, int MAX_LATENT = 128,
          int MAX_HIDDEN = 128>
class block_decode {
public:
    /// Static shared memory for one block's decoder: TILE_TOKENS · (MAX_LATENT + MAX_HIDDEN)
    /// floats. Declare it `__shared__`, one per block.
    struct TempStorage {
        /// The tile's latents, then (autoencoder) its hidden activations.
        float scratch[TILE_TOKENS * (MAX_LATENT + MAX_HIDDEN)];
    };

    /// Decoder using static shared memory `temp`; valid only for codecs with fits(c).
    __device__ explicit block_decode(TempStorage& temp) : scratch_(temp.scratch) {}
    /// Decoder using `dynamic_scratch`: decode_scratch_floats(c, TILE_TOKENS) floats of shared
    /// memory (e.g. the kernel's `extern __shared__` buffer), for any latent and hidden width.
    __device__ explicit block_decode(float* dynamic_scratch) : scratch_(dynamic_scratch) {}

    /// Whether TempStorage is large enough for `c`.
    __host__ __device__ static bool fits(const Codec& c) {
        return decode_scratch_floats(c, TILE_TOKENS) <= TILE_TOKENS * (MAX_LATENT + MAX_HIDDEN);
    }

    /// Every thread of the block calls this; see decode_tile for the contract.
    __device__ void decode(const Codec& c, const page_view& pv, int seq, int t0, int n, float* out,
                           int out_stride) {
        decode_tile<TILE_TOKENS>(block_scope<BLOCK_THREADS>{}, c, pv, seq, t0, n, out, out_stride,
                                 scratch_);
    }

private:
    float* scratch_;
};

/// A warp decodes a tile of up to TILE_TOKENS tokens; each warp of a block needs its own
/// TempStorage (or its own slice of dynamic shared memory).
template <kv_codec Codec, int TILE_TOKENS, int MAX_LATENT = 128, int MAX_HIDDEN = 128>
class warp_decode {
public:
    /// Static shared memory for one warp's decoder: TILE_TOKENS · (MAX_LATENT + MAX_HIDDEN)
    /// floats. Declare a `__shared__` array of these, one per warp.
    struct TempStorage {
        /// The tile's latents, then (autoencoder) its hidden activations.
        float scratch[TILE_TOKENS * (MAX_LATENT + MAX_HIDDEN)];
    };

    /// Decoder using this warp's static shared memory `temp`; valid only for codecs with fits(c).
    __device__ explicit warp_decode(TempStorage& temp) : scratch_(temp.scratch) {}
    /// Decoder using `dynamic_scratch`: this warp's own decode_scratch_floats(c, TILE_TOKENS)
    /// floats of shared memory, for any latent and hidden width.
    __device__ explicit warp_decode(float* dynamic_scratch) : scratch_(dynamic_scratch) {}

    /// Whether TempStorage is large enough for `c`.
    __host__ __device__ static bool fits(const Codec& c) {
        return decode_scratch_floats(c, TILE_TOKENS) <= TILE_TOKENS * (MAX_LATENT + MAX_HIDDEN);
    }

    /// All 32 lanes call this; see decode_tile for the contract.
    __device__ void decode(const Codec& c, const page_view& pv, int seq, int t0, int n, float* out,
                           int out_stride) {
        decode_tile<TILE_TOKENS>(warp_scope{}, c, pv, seq, t0, n, out, out_stride, scratch_);
    }

private:
    float* scratch_;
};

}  // namespace kvcar::device
