// kvcar/common.hpp — the few definitions every other kvcar header needs.
#pragma once

// kvcar needs C++20 (concepts, std::span, designated initializers). Checked before anything else,
// so that an older standard gets this one message instead of pages of errors. With nvcc, pass
// -std=c++20 (in CMake: link kvcar::cuda, see docs/install.md).
#if (defined(_MSVC_LANG) && _MSVC_LANG < 202002L) || (!defined(_MSVC_LANG) && __cplusplus < 202002L)
#error "kvcar needs C++20: compile with -std=c++20 (g++, clang++, nvcc) or /std:c++20 (MSVC)"
#endif

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

/// Marks functions that a codec, a layout or a storage view offers to host *and* device code.
/// Under g++ alone it expands to nothing, so `.hpp` headers stay plain C++20.
#if defined(__CUDACC__)
#define KVCAR_HD __host__ __device__
#else
#define KVCAR_HD
#endif

/// Before a KVCAR_HD template that calls a callable it is given (any_codec::visit): host code
/// passes host-only lambdas, which nvcc would otherwise reject as calls from host-device code.
/// The check still applies where such a template is really used on the device.
#if defined(__CUDACC__)
#define KVCAR_HD_CALLS_ANY _Pragma("nv_exec_check_disable")
#else
#define KVCAR_HD_CALLS_ANY
#endif

namespace kvcar {

/// Every error kvcar reports: bad shapes, bad files, bad indices, capacity exhausted.
/// The message names the object and the problem; the operation that threw changed nothing.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Throws kvcar::error with `what` unless `ok`. Used for argument validation on host paths.
inline void require(bool ok, const std::string& what) {
    if (!ok) throw error("kvcar: " + what);
}

/// K or V: the two streams a transformer layer caches.
enum class kv_kind : std::uint8_t { key = 0, value = 1 };

/// How many kv_kind values there are (K and V): the factor 2 in every per-token byte count.
inline constexpr int kv_kind_count = 2;

/// "K" or "V", as messages and codec files spell the kind.
inline constexpr const char* to_string(kv_kind k) { return k == kv_kind::key ? "K" : "V"; }

/// The logical shape of a model's KV cache: what a dense fp16 cache would hold per token.
struct kv_geometry {
    int n_layers = 0;    ///< transformer layers that have a KV cache
    int n_kv_heads = 0;  ///< K/V heads per layer (fewer than query heads under GQA/MQA)
    int head_dim = 0;    ///< elements per head vector

    /// Width of one layer's K (or V) token vector.
    constexpr int token_width() const { return n_kv_heads * head_dim; }
    /// Bytes an uncompressed fp16 cache spends per token, K and V, all layers: the paper's Eq. 3
    /// with P = 2, B = L_seq = 1. Compression ratios are measured against this.
    constexpr std::size_t fp16_bytes_per_token() const {
        return std::size_t(kv_kind_count) * 2u * std::size_t(n_layers) * std::size_t(token_width());
    }
};

/// Throws kvcar::error unless every field is positive and the products kernels index with
/// (n_kv_heads x head_dim x 4 bytes, 2 x n_layers x n_kv_heads slots) fit in an int.
inline void validate(const kv_geometry& g) {
    require(g.n_layers > 0 && g.n_kv_heads > 0 && g.head_dim > 0,
            "kv_geometry needs positive n_layers, n_kv_heads and head_dim (got " +
                std::to_string(g.n_layers) + ", " + std::to_string(g.n_kv_heads) + ", " +
                std::to_string(g.head_dim) + ")");
    // Token widths and slot counts are ints everywhere (kernels index with them): keep every
    // product of the geometry representable, so a hostile file cannot overflow one.
    constexpr long long int_max = 2147483647;
    require(static_cast<long long>(g.n_kv_heads) * g.head_dim <= int_max / 4 &&
                2LL * g.n_layers * g.n_kv_heads <= int_max,
            "kv_geometry " + std::to_string(g.n_layers) + " x " + std::to_string(g.n_kv_heads) +
                " x " + std::to_string(g.head_dim) + " is too large");
}

}  // namespace kvcar
