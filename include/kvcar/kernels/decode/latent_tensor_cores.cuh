// kvcar/kernels/decode/latent_tensor_cores.cuh — the `latent_tensor_cores` path: whole-layer
// latents (MLA-like) on tensor cores, as a decode path policy.
//
// The kernels and their host plan live in kvcar/kernels/latent_decode_attention.cuh, whose
// public latent_decode_attention() this policy calls: one latent per token serves every query
// head, so the CUDA-core latent loop is compute-bound (about 2·H FLOP per latent element) and
// tensor cores make it memory-bound again. supported() is that file's make_plan, so the
// dispatcher takes the path exactly when a direct call would not throw.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/latent_tensor_cores.cuh needs nvcc"
#endif

#include <cuda_runtime.h>

#include "kvcar/device/cache_view.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/workspace.cuh"
#include "kvcar/kernels/latent_decode_attention.cuh"

namespace kvcar::kernels::detail {

/// Decode path policy (see decode_attention.cuh): linear codecs with f16, int8 or fp8 latents
/// whose group is the whole layer, no RoPE on read, within the kernel's head and width limits.
struct latent_tensor_cores_policy {
    static constexpr decode_path path = decode_path::latent_tensor_cores;
    template <class Codec>
    static constexpr bool accepts = latent_tensor_core_codec<Codec>;

    template <class Codec>
    static bool supported(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                          attention_workspace& ws) {
        return latent_tc::make_plan(cache, p, ws).ok;
    }

    /// Query projection, split kernel, merge and lift (latent_decode_attention).
    template <class Codec>
    static void run(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                    attention_workspace& ws, cudaStream_t stream) {
        latent_decode_attention(cache, p, ws, stream);
    }
};

}  // namespace kvcar::kernels::detail
