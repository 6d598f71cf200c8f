// kvcar/kernels/decode/decoded.cuh — the `decoded` path: the fallback that reads every codec.
//
// The generic split kernel (decode/generic_split.cuh) decodes tiles of its group's records into
// shared memory with device::decode_tile and attends from there, so no decompressed copy of the
// cache ever reaches global memory; RoPE on read rotates the staged keys by their positions.
// It takes what no faster path does: autoencoders it cannot run on tensor cores, RoPE on read,
// head sizes and group ratios the direct kernels are not instantiated for.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/decoded.cuh needs nvcc"
#endif

#include <cuda_runtime.h>

#include "kvcar/device/cache_view.cuh"
#include "kvcar/kernels/decode/combine.cuh"
#include "kvcar/kernels/decode/common.cuh"
#include "kvcar/kernels/decode/generic_split.cuh"
#include "kvcar/kernels/decode/workspace.cuh"

namespace kvcar::kernels::detail {

/// Decode path policy (see decode_attention.cuh): every codec, every launch; last in the list.
struct decoded_policy {
    static constexpr decode_path path = decode_path::decoded;
    template <class Codec>
    static constexpr bool accepts = true;

    template <class Codec>
    static bool supported(const device::cache_view<Codec>&, const decode_attention_params&,
                          attention_workspace&) {
        return true;
    }

    /// Split kernel over decoded tiles, then the merge straight into `out`.
    template <class Codec>
    static void run(const device::cache_view<Codec>& cache, const decode_attention_params& p,
                    attention_workspace& ws, cudaStream_t stream) {
        const generic_split_launch<Codec> launch = plan_generic_split<Codec, false>(cache, p, ws);
        launch_generic_split<Codec, false>(launch, ws, stream);
        const split_params<Codec>& sp = launch.params;
        launch_merge(merge_params{sp.part_acc, sp.part_ml, p.kv_lengths, p.out, p.batch,
                                  p.n_heads, /*width=*/cache.head_dim, sp.chunk, sp.max_splits,
                                  sp.acc_stride},
                     ws, stream, "combine_kernel");
    }
};

}  // namespace kvcar::kernels::detail
