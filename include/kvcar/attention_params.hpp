// kvcar/attention_params.hpp — the core layer's attention vocabulary: where RoPE happens, the
// host reference's options, and the device-side parameters of the append, decode and prefill
// kernels, with the decode paths' names.
//
// Plain aggregates with no CUDA types, so that the host reference (reference/attention.hpp), the
// kernels (kernels/) and a user's own host code include the same definitions from below, and no
// kernel header has to include the reference to learn what rope_mode is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kvcar/rope.hpp"

namespace kvcar {

/// Where RoPE happens relative to the cache.
enum class rope_mode {
    /// No RoPE here: the model has none (GPT-2), or the keys were rotated before they were
    /// stored and the caller passes already-rotated queries.
    none,
    /// Keys are stored un-rotated: each decoded key is rotated by its token index, and each
    /// query by its position, before the dot product (Palu-style pre-RoPE caching).
    on_read,
};

/// Element type of the activations the kernels read (queries, new keys and values) and write
/// (attention outputs): what a runtime holds them in. The kernels convert on load and store,
/// inside the kernels that touch them anyway, so a runtime in fp16 or bf16 pays no conversion
/// pass and no fp32 copy.
enum class activation_type : std::uint8_t { f32, f16, bf16 };

/// Whether t is one of the values above (a value cast from another integer is not).
constexpr bool is_activation_type(activation_type t) {
    return t == activation_type::f32 || t == activation_type::f16 || t == activation_type::bf16;
}

/// t's name as tools and benchmark rows spell it: "f32", "f16" or "bf16".
constexpr const char* to_string(activation_type t) {
    return t == activation_type::f16 ? "f16" : t == activation_type::bf16 ? "bf16" : "f32";
}

/// Bytes of one element of t.
constexpr std::size_t size_of(activation_type t) { return t == activation_type::f32 ? 4 : 2; }

/// The activation_type of element type T: float here; __half and __nv_bfloat16 in
/// kvcar/cuda/activations.cuh, which the kernels include (host code has no such types).
template <class T>
struct activation_type_of;
/// float is f32.
template <>
struct activation_type_of<float> {
    static constexpr activation_type value = activation_type::f32;  ///< f32
};
/// An element type the kernels take activations in.
template <class T>
concept activation_element = requires { activation_type_of<std::remove_const_t<T>>::value; };

/// A device array of activations that a kernel reads, with its element type. Built from a typed
/// pointer (`p.q = q` for a float, __half or __nv_bfloat16 q), or from a pointer and a type.
struct input_activations {
    const void* data = nullptr;                    ///< device memory: elements of `type`
    activation_type type = activation_type::f32;   ///< the element type of data

    constexpr input_activations() = default;
    /// No array (a shape without pointers, as plans take).
    constexpr input_activations(std::nullptr_t) {}
    /// An untyped pointer and the type of its elements.
    constexpr input_activations(const void* d, activation_type t) : data(d), type(t) {}
    /// A typed pointer: float, __half or __nv_bfloat16 (with kvcar/cuda/activations.cuh).
    template <activation_element T>
    constexpr input_activations(const T* d)
        : data(d), type(activation_type_of<std::remove_const_t<T>>::value) {}
    /// Whether there is an array.
    explicit constexpr operator bool() const { return data != nullptr; }
    /// The same array from element `elements` on.
    input_activations advanced(std::size_t elements) const {
        return {static_cast<const std::byte*>(data) + elements * size_of(type), type};
    }
};

/// A device array of activations that a kernel writes, with its element type.
struct output_activations {
    void* data = nullptr;                          ///< device memory: elements of `type`
    activation_type type = activation_type::f32;   ///< the element type of data

    constexpr output_activations() = default;
    /// No array (a shape without pointers, as plans take).
    constexpr output_activations(std::nullptr_t) {}
    /// An untyped pointer and the type of its elements.
    constexpr output_activations(void* d, activation_type t) : data(d), type(t) {}
    /// A typed pointer: float, __half or __nv_bfloat16 (with kvcar/cuda/activations.cuh).
    template <activation_element T>
        requires(!std::is_const_v<T>)
    constexpr output_activations(T* d) : data(d), type(activation_type_of<T>::value) {}
    /// Whether there is an array.
    explicit constexpr operator bool() const { return data != nullptr; }
    /// The same array from element `elements` on.
    output_activations advanced(std::size_t elements) const {
        return {static_cast<std::byte*>(data) + elements * size_of(type), type};
    }
};

/// Options of attention over a cache, for the host reference and the kernels' host entry points:
/// head counts, scaling, causality and where RoPE is applied.
struct attention_params {
    int n_heads = 0;                  ///< query heads; a positive multiple of n_kv_heads
    float scale = 0.0f;               ///< score scale; 0 picks 1/sqrt(head_dim)
    bool causal = true;               ///< a query sees cached tokens up to its own position only
    /// Whether keys are rotated when read from the cache (rope_mode::on_read) or already were
    rope_mode rope = rope_mode::none;
    rope_params rope_cfg{};           ///< used when rope == on_read
};

}  // namespace kvcar

namespace kvcar::kernels {

/// Device-side arguments of an append. Every pointer is device memory.
struct append_params {
    input_activations k;  ///< [total_tokens][n_kv_heads * head_dim], row-major: f32, f16 or bf16
    input_activations v;  ///< same shape as k; f32, f16 or bf16
    const std::int32_t* token_offsets = nullptr;  ///< [batch + 1]: item b owns rows [off[b], off[b+1])
    const std::int32_t* sequences = nullptr;      ///< [batch] cache sequence of each item
    const std::int32_t* positions = nullptr;      ///< [batch] cache position of each item's first row
    int batch = 0;         ///< items (sequences appended to); 0 enqueues nothing
    int total_tokens = 0;  ///< token_offsets[batch]
    int layer = 0;         ///< layer written, 0 <= layer < the cache's n_layers
};

/// Device-side arguments of decode attention. Every pointer is device memory.
struct decode_attention_params {
    input_activations q;                       ///< [batch][n_heads][head_dim]: f32, f16 or bf16
    output_activations out;                    ///< [batch][n_heads][head_dim]: f32, f16 or bf16
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

/// Device-side arguments of prefill attention. Every pointer is device memory.
struct prefill_attention_params {
    input_activations q;     ///< [total_queries][n_heads][head_dim]: f32, f16 or bf16
    output_activations out;  ///< [total_queries][n_heads][head_dim]: f32, f16 or bf16
    const std::int32_t* sequences = nullptr;        ///< [batch]
    const std::int32_t* query_offsets = nullptr;    ///< [batch + 1]: item b's queries
    const std::int32_t* query_positions = nullptr;  ///< [batch] position of each item's first query
    const std::int32_t* kv_lengths = nullptr;       ///< [batch] tokens seen when !causal (may be
                                                    ///< null when causal)
    int batch = 0;          ///< items (sequences with queries); 0 enqueues nothing
    int total_queries = 0;  ///< query_offsets[batch]: rows of q and out
    int max_kv_length = 0;  ///< bound of every query's visible tokens
    int layer = 0;          ///< layer attended, 0 <= layer < the cache's n_layers
    int n_heads = 0;        ///< query heads, a positive multiple of the cache's n_kv_heads
    float scale = 0.0f;     ///< score scale; 0 picks 1/sqrt(head_dim)
    bool causal = true;     ///< query i of item b sees [0, position_b + i]; else kv_lengths[b]
    /// on_read: keys rotated by token index, each query by its own position
    rope_mode rope = rope_mode::none;
    rope_params rope_cfg{};  ///< the model's RoPE (theta, style, rotary_dim); read when rope != none
};

}  // namespace kvcar::kernels
