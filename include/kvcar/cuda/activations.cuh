// kvcar/cuda/activations.cuh — loads and stores of the activations a kernel reads and writes
// (queries and new keys/values in, attention outputs out) in the type the runtime holds them:
// f32, f16 or bf16.
//
// The type is a run-time value of the launch (input_activations::type), the same for every
// thread, so the switch below is a uniform branch and not a divergence; the kernels compute in
// f32 whatever the type, and the values they compute from are the same for every type that
// represents the inputs exactly. Only the final rounding of a stored output differs.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/cuda/activations.cuh needs nvcc"
#endif

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kvcar/attention_params.hpp"

namespace kvcar {

/// __half is f16.
template <>
struct activation_type_of<__half> {
    static constexpr activation_type value = activation_type::f16;  ///< f16
};
/// __nv_bfloat16 is bf16.
template <>
struct activation_type_of<__nv_bfloat16> {
    static constexpr activation_type value = activation_type::bf16;  ///< bf16
};

}  // namespace kvcar

namespace kvcar::gpu {

/// Element i of a, widened to f32.
__device__ __forceinline__ float load(const input_activations& a, std::size_t i) {
    switch (a.type) {
        case activation_type::f16: return __half2float(static_cast<const __half*>(a.data)[i]);
        case activation_type::bf16:
            return __bfloat162float(static_cast<const __nv_bfloat16*>(a.data)[i]);
        default: return static_cast<const float*>(a.data)[i];
    }
}

/// Elements i … i + 3 of a in one load: 16 bytes for f32, 8 for f16 and bf16, so the address
/// must be aligned to 4 elements (aligned4 checks it on the host).
__device__ __forceinline__ float4 load4(const input_activations& a, std::size_t i) {
    switch (a.type) {
        case activation_type::f16: {
            const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const __half*>(a.data) + i);
            const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
            const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
            return make_float4(lo.x, lo.y, hi.x, hi.y);
        }
        case activation_type::bf16: {
            const uint2 raw =
                *reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(a.data) + i);
            const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
            const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
            return make_float4(lo.x, lo.y, hi.x, hi.y);
        }
        default: return *reinterpret_cast<const float4*>(static_cast<const float*>(a.data) + i);
    }
}

/// Writes v to element i of a, rounded to nearest even for f16 and bf16.
__device__ __forceinline__ void store(const output_activations& a, std::size_t i, float v) {
    switch (a.type) {
        case activation_type::f16: static_cast<__half*>(a.data)[i] = __float2half_rn(v); break;
        case activation_type::bf16:
            static_cast<__nv_bfloat16*>(a.data)[i] = __float2bfloat16_rn(v);
            break;
        default: static_cast<float*>(a.data)[i] = v; break;
    }
}

/// Writes v.x and v.y to elements i and i + 1 of a in one store: 8 bytes for f32, 4 for f16 and
/// bf16, so i must be even and the array aligned to 2 elements (aligned2 checks it on the host).
__device__ __forceinline__ void store2(const output_activations& a, std::size_t i, float2 v) {
    switch (a.type) {
        case activation_type::f16:
            *reinterpret_cast<__half2*>(static_cast<__half*>(a.data) + i) = __float22half2_rn(v);
            break;
        case activation_type::bf16:
            *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(a.data) + i) =
                __float22bfloat162_rn(v);
            break;
        default: *reinterpret_cast<float2*>(static_cast<float*>(a.data) + i) = v; break;
    }
}

}  // namespace kvcar::gpu

namespace kvcar {

/// Whether store2 may write a from element 0 (and so at every even element).
inline bool aligned2(const output_activations& a) {
    return reinterpret_cast<std::uintptr_t>(a.data) % (2 * size_of(a.type)) == 0;
}

/// Whether load4 may read a from element 0 (and so from every multiple of 4 elements).
inline bool aligned4(const input_activations& a) {
    return reinterpret_cast<std::uintptr_t>(a.data) % (4 * size_of(a.type)) == 0;
}

}  // namespace kvcar
