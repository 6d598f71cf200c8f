// kvcar/device/latent.cuh — reading stored latents on the device: thread scopes, what each
// codec's record holds, and a cooperative loader that turns records into floats.
//
// Every kvcar codec but a user's opaque one stores a record as d latent elements, either plain
// (identity, linear, autoencoder: d elements of T) or quantized (d elements of Q, padded to 4
// bytes, then an f32 scale and an f32 offset). `latent_record` reads element j of either kind
// as a float; `load_latents` has a group of threads dequantize a tile of tokens with the widest
// loads the record alignment allows (16 bytes for f16 heads of 64 or 128: one LDG.128 brings 8
// elements), which is what lets an uncompressed cache be read at copy bandwidth.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/device/latent.cuh needs nvcc"
#endif

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_fp16.h>

#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/linear.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/codec/traits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"
#include "kvcar/page_view.hpp"

namespace kvcar::device {

// ---------------------------------------------------------------------------------------------
// Thread scopes: who cooperates on one call. Functions taking a `Scope` must be called by every
// thread of the scope (they synchronize it). Blocks are one-dimensional (threadIdx.x only).
// ("Group" means the codec group only: the heads one codec instance encodes.)

/// What a cooperative device function needs of its threads: how many there are, this thread's
/// index among them, and a barrier for all of them. block_scope and warp_scope satisfy it.
template <class S>
concept thread_scope = requires(const S& s) {
    { S::size } -> std::convertible_to<int>;
    s.rank();
    s.sync();
};

/// All BLOCK_THREADS threads of a one-dimensional block.
template <int BLOCK_THREADS>
struct block_scope {
    /// Threads in the scope; must equal blockDim.x (cooperative loops stride by it from rank()).
    static constexpr int size = BLOCK_THREADS;
    /// This thread's index in the scope, 0 .. size - 1 (threadIdx.x).
    __device__ int rank() const { return int(threadIdx.x); }
    /// Barrier for the whole block (__syncthreads): every thread of the block must reach it.
    __device__ void sync() const { __syncthreads(); }
};

/// The 32 lanes of the calling warp (all must be converged at the call).
struct warp_scope {
    /// Lanes in a warp.
    static constexpr int size = 32;
    /// The lane index, 0 .. 31 (blocks are one-dimensional, so threadIdx.x mod 32).
    __device__ int rank() const { return int(threadIdx.x) & 31; }
    /// Barrier and memory fence for the 32 lanes (__syncwarp with a full mask).
    __device__ void sync() const { __syncwarp(); }
};

static_assert(thread_scope<block_scope<128>> && thread_scope<warp_scope>);

/// Sum over the warp; every lane gets the result.
__device__ inline float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}
/// Maximum over the warp; every lane gets the result.
__device__ inline float warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}
/// Minimum over the warp; every lane gets the result.
__device__ inline float warp_min(float x) {
    for (int offset = 16; offset > 0; offset >>= 1)
        x = fminf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}

// ---------------------------------------------------------------------------------------------
// Element conversion. The same values as kvcar::to_float (the conversions are exact), through
// the hardware converter where there is one.

/// An f32 element: the value itself.
__device__ inline float load_float(float x) { return x; }
/// An IEEE binary16 element, through the hardware half → float conversion (exact).
__device__ inline float load_float(f16 x) { return __half2float(__ushort_as_half(x.bits)); }
/// A bfloat16 element: its 16 bits are the top half of the f32 with the same value.
__device__ inline float load_float(bf16 x) { return __uint_as_float(std::uint32_t(x.bits) << 16); }
/// An FP8 E4M3 (OCP, finite-only) element; 0x7f and 0xff give NaN, every other code is exact.
__device__ inline float load_float(fp8_e4m3 x) {
    // E4M3 and binary16 differ only in exponent bias (7 vs 15) and width: the bits shifted into a
    // half and scaled by 2^8 give the value exactly, subnormals included. 0x7f/0xff is NaN.
    if ((x.bits & 0x7fu) == 0x7fu) return __uint_as_float(0x7fc00000u);
    const std::uint16_t h = std::uint16_t(((x.bits & 0x80u) << 8) | ((x.bits & 0x7fu) << 7));
    return __half2float(__ushort_as_half(h)) * 256.0f;
}
/// A quantized int8 element's value before scale and offset: q + 1/2 (see quantized.hpp).
__device__ inline float load_float(std::int8_t q) { return float(q) + 0.5f; }

// ---------------------------------------------------------------------------------------------
// Codec families (codec/traits.hpp): how a record becomes the group's floats.

// The family of a codec comes from its registration (codec/traits.hpp, `family`), so a codec
// says how the GPU decodes it in its own header, once.
using kvcar::codec_family;

namespace detail {
/// Unknown to the device code (opaque): records read only through Codec::decode, and no
/// `element` type (so latent_record and load_latents do not accept them).
template <class Codec, codec_family Family>
struct codec_traits_base {
    /// How records become floats: opaque, one decode() call per token.
    static constexpr codec_family family = codec_family::opaque;
    /// Whether the record's elements carry a per-record f32 scale and offset.
    static constexpr bool quantized = false;
};
/// A registered family: the record is the latent as elements of the codec's storage_type
/// (padded to 4 bytes), decoded as the family says.
template <class Codec, codec_family Family>
    requires(Family != codec_family::opaque)
struct codec_traits_base<Codec, Family> {
    /// The family the codec's registration names.
    static constexpr codec_family family = Family;
    /// Plain elements: no scale or offset in the record.
    static constexpr bool quantized = false;
    /// Type of one stored latent element.
    using element = typename Codec::storage_type;
};
}  // namespace detail

/// What the device code knows about a codec's record layout: its family (from its registration)
/// and, for every family but opaque, its element type. identity_codec<T>, linear_codec<T> and
/// autoencoder_codec<T> store d elements of T; a user's codec is opaque unless its registration
/// names a family.
template <class Codec>
struct codec_traits : detail::codec_traits_base<Codec, registered_family<Codec>()> {};
/// quantized_codec<Inner, Q>: Inner's latent stored as d elements of Q (padded to 4 bytes), then
/// an f32 scale and an f32 offset; element j's latent value is load_float(q_j) · scale + offset.
template <class Inner, class Q>
struct codec_traits<quantized_codec<Inner, Q>> {
    /// Inner's family (the dequantized latent is decoded as Inner decodes its own); `latent` when
    /// Inner is a codec kvcar does not know, whose from_latent() then runs per token.
    static constexpr codec_family family = codec_traits<Inner>::family == codec_family::opaque
                                               ? codec_family::latent
                                               : codec_traits<Inner>::family;
    /// Quantized elements: the record ends with the f32 scale and offset.
    static constexpr bool quantized = true;
    /// Type of one stored (quantized) element, e.g. std::int8_t or fp8_e4m3.
    using element = Q;
};

/// Codecs whose record `latent_record` can read (every kvcar codec).
template <class Codec>
concept has_latent_record = codec_traits<Codec>::family != codec_family::opaque;

/// The codec that turns z into x̂: the codec itself, or what a quantized_codec wraps (repeatedly).
template <class Codec>
__host__ __device__ const auto& core_of(const Codec& c) {
    if constexpr (requires { typename Codec::inner_codec; }) {
        return core_of(c.inner);
    } else {
        return c;
    }
}

/// Element j of one record's latent, as a float. Construct once per record (a quantized record's
/// scale and offset are read here), then index.
template <has_latent_record Codec>
struct latent_record {
    /// Type of one stored element (codec_traits<Codec>::element).
    using element = typename codec_traits<Codec>::element;
    /// Whether elements are dequantized with scale and offset.
    static constexpr bool quantized = codec_traits<Codec>::quantized;

    /// The record's first element (the record start); latent_width() elements follow.
    const element* elements;
    /// Per-record dequantization scale (1 for plain records).
    float scale = 1.0f;
    /// Per-record dequantization offset (0 for plain records).
    float offset = 0.0f;

    /// Reads the record at `record` (4-byte aligned, c.record_bytes() long, in global or shared
    /// memory) of codec `c`; a quantized record's scale and offset are loaded here.
    __device__ latent_record(const Codec& c, const std::byte* record)
        : elements(reinterpret_cast<const element*>(record)) {
        if constexpr (quantized) {
            // Records are 4-byte aligned and scale_offset_bytes() is a multiple of 4.
            const float* header = reinterpret_cast<const float*>(record + c.scale_offset_bytes());
            scale = header[0];
            offset = header[1];
        }
    }
    /// Latent element j (0 <= j < latent_width()) as a float, dequantized.
    __device__ float operator[](int j) const { return dequantize(load_float(elements[j])); }
    /// The stored element value v (after load_float) → the latent: v · scale + offset.
    __device__ float dequantize(float v) const {
        if constexpr (quantized) {
            return v * scale + offset;
        } else {
            return v;
        }
    }
};

namespace detail {

/// Loads BYTES bytes (16, 8 or 4) at `p`, which must be BYTES-aligned, as E elements converted
/// to floats.
template <class E, int BYTES>
__device__ void load_chunk(const std::byte* p, float (&out)[BYTES / sizeof(E)]) {
    constexpr int n = BYTES / int(sizeof(E));
    E e[n];
    if constexpr (BYTES == 16) {
        const uint4 raw = *reinterpret_cast<const uint4*>(p);
        memcpy(e, &raw, 16);
    } else if constexpr (BYTES == 8) {
        const uint2 raw = *reinterpret_cast<const uint2*>(p);
        memcpy(e, &raw, 8);
    } else {
        static_assert(BYTES == 4, "chunks are 4, 8 or 16 bytes");
        const unsigned raw = *reinterpret_cast<const unsigned*>(p);
        memcpy(e, &raw, 4);
    }
#pragma unroll
    for (int i = 0; i < n; ++i) out[i] = load_float(e[i]);
}

template <int BYTES, thread_scope Scope, class Codec>
__device__ void load_latents_chunked(Scope g, const Codec& c, const page_view& pv, int seq,
                                     int t0, int n, int first, int count, float* dst,
                                     int stride) {
    using E = typename latent_record<Codec>::element;
    constexpr int per_chunk = BYTES / int(sizeof(E));
    const int chunks = count / per_chunk;  // the caller checked count % per_chunk == 0
    for (int idx = g.rank(); idx < n * chunks; idx += Scope::size) {
        const int t = idx / chunks;
        const int chunk = idx - t * chunks;
        const std::byte* rec = pv.record(seq, t0 + t);
        const latent_record<Codec> r(c, rec);
        float v[per_chunk];
        load_chunk<E, BYTES>(rec + (std::size_t(first) + std::size_t(chunk) * per_chunk) * sizeof(E),
                             v);
        float* out = dst + std::size_t(t) * stride + chunk * per_chunk;
#pragma unroll
        for (int i = 0; i < per_chunk; ++i) out[i] = r.dequantize(v[i]);
    }
}

}  // namespace detail

/// Scope-cooperative: dequantizes latent elements [first, first + count) of tokens
/// [t0, t0 + n) of `seq` into dst[t * stride + e] (t < n, e < count), as floats.
///
/// Uses 16-byte loads when the record size, `first` and `count` (in bytes) are multiples of 16,
/// else 8- or 4-byte loads, else one element at a time. Consecutive threads take consecutive
/// chunks of one token, so a warp reads whole records (coalesced). Does not synchronize: call
/// g.sync() before reading dst from other threads.
/// Preconditions: tokens t0 .. t0 + n - 1 are within the sequence's capacity in this slot;
/// first + count <= c.latent_width().
template <thread_scope Scope, has_latent_record Codec>
__device__ void load_latents(Scope g, const Codec& c, const page_view& pv, int seq, int t0, int n,
                             int first, int count, float* dst, int stride) {
    using E = typename latent_record<Codec>::element;
    const std::size_t rb = pv.record_bytes;
    const std::size_t first_bytes = std::size_t(first) * sizeof(E);
    const std::size_t count_bytes = std::size_t(count) * sizeof(E);
    auto fits = [&](std::size_t bytes) {
        return rb % bytes == 0 && first_bytes % bytes == 0 && count_bytes % bytes == 0;
    };
    if (fits(16)) {
        detail::load_latents_chunked<16>(g, c, pv, seq, t0, n, first, count, dst, stride);
    } else if (fits(8)) {
        detail::load_latents_chunked<8>(g, c, pv, seq, t0, n, first, count, dst, stride);
    } else if (fits(4)) {
        detail::load_latents_chunked<4>(g, c, pv, seq, t0, n, first, count, dst, stride);
    } else {
        for (int idx = g.rank(); idx < n * count; idx += Scope::size) {
            const int t = idx / count;
            const int e = idx - t * count;
            const latent_record<Codec> r(c, pv.record(seq, t0 + t));
            dst[std::size_t(t) * stride + e] = r[first + e];
        }
    }
}

}  // namespace kvcar::device
