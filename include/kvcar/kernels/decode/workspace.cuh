// kvcar/kernels/decode/workspace.cuh — the device scratch that decode attention launches reuse.
//
// Growth is stream-ordered. A larger buffer is taken with cudaMallocAsync and the old one given
// back with cudaFreeAsync on the stream the launches run on, so the old buffer stays valid for
// every kernel already enqueued there and the host never waits: a decode step that grows the
// workspace (a longer context, a larger batch) costs no device-wide synchronization. Where the
// device has no memory pools, the fallback waits for that one stream, not the whole device.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/kernels/decode/workspace.cuh needs nvcc"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/error.cuh"
#include "kvcar/kernels/decode/common.cuh"

namespace kvcar::kernels {

namespace detail {

/// One growable device array whose allocations follow a stream's order (see the file comment).
template <class T>
class stream_scratch {
public:
    stream_scratch() = default;
    stream_scratch(const stream_scratch&) = delete;
    stream_scratch& operator=(const stream_scratch&) = delete;
    stream_scratch(stream_scratch&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    stream_scratch& operator=(stream_scratch&& other) noexcept {
        if (this != &other) {
            release();
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }
    // The stream may be gone by now, so no stream-ordered free: cudaFree also frees pool memory
    // and waits for the device first, which is affordable once, at destruction.
    ~stream_scratch() { release(); }

    /// At least n elements, growing by 1.5x so that slowly rising sizes reallocate rarely; the
    /// old contents are discarded. `pools`: the device has memory pools (cudaMallocAsync).
    T* grow(std::size_t n, cudaStream_t stream, bool pools) {
        if (n <= size_) return data_;
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        KVCAR_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
        // An allocation inside a capture would belong to the graph, not to the workspace.
        require(capture == cudaStreamCaptureStatusNone,
                "attention_workspace: cannot grow while its stream is being captured into a "
                "graph; run the same launch once before capturing, so that it has its size");
        const std::size_t count = std::max(n, size_ * 3 / 2);
        void* fresh = nullptr;
        if (pools) {
            KVCAR_CUDA_CHECK(cudaMallocAsync(&fresh, count * sizeof(T), stream));
            // Ordered after every kernel already enqueued on `stream` that reads the old buffer.
            if (data_) KVCAR_CUDA_CHECK(cudaFreeAsync(data_, stream));
        } else {
            // No pools: wait for this stream alone, then free and allocate synchronously.
            KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream));
            if (data_) KVCAR_CUDA_CHECK(cudaFree(data_));
            data_ = nullptr;
            size_ = 0;
            KVCAR_CUDA_CHECK(cudaMalloc(&fresh, count * sizeof(T)));
        }
        data_ = static_cast<T*>(fresh);
        size_ = count;
        return data_;
    }

    /// Elements held now.
    std::size_t size() const { return size_; }

private:
    void release() noexcept {
        if (data_) cudaFree(data_);  // a destructor cannot throw; a failed free leaks at worst
        data_ = nullptr;
        size_ = 0;
    }
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace detail

/// Device scratch that attention launches reuse: split partials, latent queries and small index
/// arrays. Grows on demand, in the order of the stream given to use_stream (every kvcar entry
/// point passes its own); one workspace serves one stream at a time, as its buffers are reused
/// by every launch.
class attention_workspace {
public:
    /// The stream the following launches run on: growth is ordered on it. kvcar's entry points
    /// call it with their `stream` argument before taking any buffer.
    void use_stream(cudaStream_t stream) { stream_ = stream; }

    // Each accessor returns device memory for at least n elements, valid until the next call of
    // the same accessor with a larger n; growing discards the old contents.

    /// Unnormalized split outputs Σ e^(s − m) v (Σ e^(s − m) z on the latent paths), one row per
    /// split of each (item, head) or latent unit.
    float* partial_acc(std::size_t n) { return take(acc_, n, 0); }
    /// Each split row's score maximum m and sum of exponentials l (2 floats per row).
    float* partial_ml(std::size_t n) { return take(ml_, n, 1); }
    /// Queries projected into latent space (qz = Pᵀq) for the latent paths; the tensor-core path
    /// stores them as f16 in the same bytes.
    float* latent_queries(std::size_t n) { return take(qz_, n, 2); }
    /// Per-query score bias q·μ of the latent paths; the tensor-core latent path also keeps the
    /// merged latents z̄ after the biases.
    float* latent_bias(std::size_t n) { return take(qbias_, n, 3); }
    /// Small index arrays staged from the host (sequences, lengths, positions, item maps).
    std::int32_t* ints(std::size_t n) { return take(ints_, n, 4); }
    /// The tiled prefill's dense fp16 K and V of the contexts it attends (prefill/dense_tiles.cuh).
    __half* dense_kv(std::size_t n) { return take(dense_, n, 5); }
    /// Rows gathered from a larger array and scattered back (the prefill's per-query share of a
    /// batch whose other chunks take the tiled path): queries, then outputs.
    float* staged_rows(std::size_t n) { return take(rows_, n, 6); }
    /// Multiprocessors of the current device (looked up once).
    int sm_count() {
        if (sm_count_ == 0) sm_count_ = gpu::multiprocessor_count();
        return sm_count_;
    }
    /// Largest dynamic shared memory a block may opt into on the current device.
    int max_shared_bytes() {
        if (max_smem_ == 0) max_smem_ = gpu::max_dynamic_smem_optin();
        return max_smem_;
    }
    /// Whether the decode kernels may overlap the kernel before them on the stream
    /// (gpu::launch_shape::overlap): tune.dependent_launch on sm_90 and later.
    bool overlap_launches() {
        if (!tune.dependent_launch) return false;
        if (dependent_launch_ < 0) dependent_launch_ = gpu::dependent_launch_supported() ? 1 : 0;
        return dependent_launch_ == 1;
    }
    /// The split layout of the last launch (for tests and tuning).
    int last_splits = 0;
    /// Tokens per split in the last launch (the last split may hold fewer).
    int last_chunk = 0;
    /// How many times a buffer was reallocated. A CUDA graph captured over these buffers holds
    /// their addresses: it is stale once this count has moved (capture it again).
    std::uint64_t growths() const { return growths_; }
    /// The path the last decode_attention took (one value, not a flag per path).
    decode_path last_path = decode_path::none;
    /// Chunks the last prefill_attention (device-cache form) ran on the tiled path.
    int last_prefill_tiled = 0;
    /// Overrides of choices the paths make themselves, for benchmarks and autotuning; 0 leaves
    /// a choice to the path, and a value the path cannot run is ignored (the plan stays valid).
    struct tuning {
        int latent_warps = 0;   ///< tensor-core latent split kernel: 8 or 16 warps
        int latent_stages = 0;  ///< its ring stages (2 … 4, as shared memory allows)
        int latent_chunk = 0;   ///< tokens per split (rounded up to the 32-token tile)
        /// (item, query head) vectors per projection and lift CTA: 4 or 16 (latent_tc_aux.cuh's
        /// vectors_per_block picks 4, the faster in the 2026-12-08 sweep,
        /// docs/results/decode-sweep-2026-12-08.md).
        int latent_aux_vectors = 0;
        int latent_lift_rows = 0;  ///< rows of P_h per lift warp: 1, 2 or 4 (lift_rows_per_warp)
        int direct_ctas_per_sm = 0;  ///< tensor-core direct path: split target, CTAs per SM
        int direct_chunk = 0;  ///< tensor-core direct path: tokens per split (rounded up to 64)
        /// The merge's 16-warp CTAs from this many splits per (item, head) on (combine.cuh's
        /// merge_many_splits). A knob so one decode_bench binary can sweep it: an H100 A/B run
        /// showed batch 8, where the latent paths have exactly 16 splits, slower after the
        /// 16-warp merge came (docs/results/decode-ab-2026-12-06.md).
        int merge_many_splits = 0;
        /// Fewest queries of a prefill chunk that take the tiled path (prefill/dense_tiles.cuh);
        /// 0: its default (16), -1: never (every query an item of decode attention).
        int prefill_tiles_min_queries = 0;
        /// Programmatic dependent launch between the decode kernels (sm_90+; gpu::launch_shape).
        /// Off by default until it has been measured and tested on a GPU.
        bool dependent_launch = false;
    } tune;  ///< launch-shape overrides for benchmarks (0 = the planner's choice)

    // Sizing (plan_decode_attention). Between begin_sizing and end_sizing the accessors record
    // the largest size asked of each buffer and return a placeholder address instead of memory;
    // the launches that ask are captured into a graph that is thrown away, never run. So the
    // sizes a plan reserves come from the very code that launches, and cannot disagree with it.

    /// Starts recording sizes instead of allocating (see above).
    void begin_sizing() {
        sizing_ = true;
        for (std::size_t& n : need_) n = 0;
    }
    /// Stops recording and grows every buffer to the largest size recorded, in `stream`'s order.
    void end_sizing(cudaStream_t stream) {
        sizing_ = false;
        use_stream(stream);
        if (need_[0]) grow(acc_, need_[0]);
        if (need_[1]) grow(ml_, need_[1]);
        if (need_[2]) grow(qz_, need_[2]);
        if (need_[3]) grow(qbias_, need_[3]);
        if (need_[4]) grow(ints_, need_[4]);
        if (need_[5]) grow(dense_, need_[5]);
        if (need_[6]) grow(rows_, need_[6]);
    }

private:
    template <class T>
    T* take(detail::stream_scratch<T>& buffer, std::size_t n, int which) {
        if (!sizing_) return grow(buffer, n);
        need_[which] = std::max(need_[which], n);
        // A placeholder, never dereferenced: the captured launches are discarded unrun.
        return reinterpret_cast<T*>(std::uintptr_t(256));
    }
    template <class T>
    T* grow(detail::stream_scratch<T>& buffer, std::size_t n) {
        const std::size_t before = buffer.size();
        T* data = buffer.grow(n, stream_, pools());
        if (buffer.size() != before) ++growths_;
        return data;
    }
    /// Whether the current device has memory pools (cudaMallocAsync), looked up once.
    bool pools() {
        if (pools_ < 0) {
            int device = 0, supported = 0;
            KVCAR_CUDA_CHECK(cudaGetDevice(&device));
            KVCAR_CUDA_CHECK(
                cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device));
            pools_ = supported != 0 ? 1 : 0;
        }
        return pools_ == 1;
    }
    detail::stream_scratch<float> acc_, ml_, qz_, qbias_, rows_;
    detail::stream_scratch<std::int32_t> ints_;
    detail::stream_scratch<__half> dense_;
    cudaStream_t stream_ = nullptr;
    int sm_count_ = 0;
    int max_smem_ = 0;
    int pools_ = -1;
    int dependent_launch_ = -1;
    std::uint64_t growths_ = 0;
    bool sizing_ = false;
    std::size_t need_[7] = {};  // acc, ml, qz, qbias, ints, dense, rows
};

}  // namespace kvcar::kernels
