// examples/models/cuda/communicator.cuh — the one collective a tensor-parallel transformer needs:
// an in-place sum of a float buffer across the ranks, enqueued on the rank's stream.
//
// Megatron-style tensor parallelism splits W_q, W_k, W_v and the MLP's first matrix by output
// rows (each rank computes its heads and its share of the hidden units, no communication) and
// W_o and the MLP's second matrix by input columns, so each rank ends a block with a *partial*
// [tokens][d_model] product. Summing those partials is the only communication: two all-reduces
// per layer, of tokens · d_model floats each.
//
// Two implementations:
//   - nccl_communicator (nccl_communicator.cuh): one rank per GPU, NCCL; the real thing.
//   - local_communicator (here): every rank on the *same* GPU, summed by a small kernel. It
//     lets a one-GPU machine (and the tests) run the sharded code path exactly, to check the
//     sharding math apart from NCCL.
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/cuda/communicator.cuh needs nvcc"
#endif

#include <algorithm>
#include <barrier>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/common.hpp"
#include "kvcar/cuda/buffer.cuh"
#include "kvcar/cuda/error.cuh"

namespace kvcar::examples::cuda_model {

/// Sums buffers across the ranks of a tensor-parallel group.
class communicator {
public:
    virtual ~communicator() = default;
    /// This rank, 0 <= rank() < world().
    virtual int rank() const = 0;
    /// Ranks in the group.
    virtual int world() const = 0;
    /// data[0, count) := Σ over ranks of every rank's data[0, count), enqueued on `stream` (the
    /// rank's compute stream, so it orders after the partial product that wrote `data`). Every
    /// rank must call it, in the same order, with the same count.
    virtual void all_reduce_sum(float* data, std::size_t count, cudaStream_t stream) = 0;
};

namespace detail {

/// out[i] = Σ_r parts[r][i], summed in rank order (the same order on every call: the result
/// does not depend on which rank got there first). Static, as in device_ops.cuh: a plain
/// __global__ in a header is defined in every translation unit that includes it.
static __global__ void sum_parts_kernel(float* out, const float* const* parts, int n_parts,
                                        std::size_t count) {
    const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
    for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += stride) {
        float s = parts[0][i];
        for (int r = 1; r < n_parts; ++r) s += parts[r][i];
        out[i] = s;
    }
}

}  // namespace detail

/// The shared state of `world` local_communicators: ranks on one GPU, each driven by its own
/// host thread. Create it once, then one local_communicator per rank.
class local_ranks {
public:
    explicit local_ranks(int world) : world_(world), arrive_(world), parts_(std::size_t(world)) {
        require(world > 0, "local_ranks: world must be positive (got " + std::to_string(world) +
                               ")");
    }
    int world() const { return world_; }

private:
    friend class local_communicator;

    // One all-reduce, as every rank's thread runs it:
    //   1. publish its buffer, wait for its stream (the partial product is done);
    //   2. barrier; rank 0 sums every part into `sum_` and waits for the kernel;
    //   3. barrier; each rank copies the sum back into its buffer (on its stream);
    //   4. barrier, so no rank reuses `sum_` or publishes the next buffer while another still
    //      copies from this one.
    // Host synchronisation on every call: fine for checking correctness, not for speed.
    void all_reduce_sum(int rank, float* data, std::size_t count, cudaStream_t stream) {
        parts_[std::size_t(rank)] = data;
        KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream));
        arrive_.arrive_and_wait();
        if (rank == 0) {
            if (sum_.size() < count) sum_.reserve_discard(count);
            if (part_table_.size() < parts_.size()) part_table_.reserve_discard(parts_.size());
            KVCAR_CUDA_CHECK(cudaMemcpyAsync(part_table_.data(), parts_.data(),
                                             parts_.size() * sizeof(float*),
                                             cudaMemcpyHostToDevice, stream));
            const unsigned blocks = unsigned(std::min<std::size_t>((count + 255) / 256, 1024));
            detail::sum_parts_kernel<<<blocks, 256, 0, stream>>>(sum_.data(), part_table_.data(),
                                                                 world_, count);
            KVCAR_CUDA_CHECK_LAUNCH("sum_parts_kernel");
            KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream));
        }
        arrive_.arrive_and_wait();
        KVCAR_CUDA_CHECK(cudaMemcpyAsync(data, sum_.data(), count * sizeof(float),
                                         cudaMemcpyDeviceToDevice, stream));
        KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream));
        arrive_.arrive_and_wait();
    }

    int world_;
    std::barrier<> arrive_;
    std::vector<float*> parts_;
    gpu::device_buffer<float> sum_;
    gpu::device_buffer<float*> part_table_;
};

/// One rank of a local_ranks.
class local_communicator final : public communicator {
public:
    /// Rank `rank` of `group` (which must outlive it).
    local_communicator(local_ranks& group, int rank) : group_(&group), rank_(rank) {
        require(rank >= 0 && rank < group.world(),
                "local_communicator: rank " + std::to_string(rank) + " outside world " +
                    std::to_string(group.world()));
    }
    int rank() const override { return rank_; }
    int world() const override { return group_->world(); }
    void all_reduce_sum(float* data, std::size_t count, cudaStream_t stream) override {
        group_->all_reduce_sum(rank_, data, count, stream);
    }

private:
    local_ranks* group_;
    int rank_;
};

}  // namespace kvcar::examples::cuda_model
