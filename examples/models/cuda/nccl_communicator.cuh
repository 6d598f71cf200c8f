// examples/models/cuda/nccl_communicator.cuh — communicator.cuh's all-reduce over NCCL: one rank
// per GPU of this process, each rank driven by its own host thread.
//
// Only built when CMake found NCCL (KVCAR_WITH_NCCL). The group is created with
// ncclCommInitAll, which needs no out-of-band exchange of a unique id because every rank lives in
// this one process; a multi-process runtime would call ncclCommInitRank instead and nothing else
// here would change.
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/cuda/nccl_communicator.cuh needs nvcc"
#endif

#include <cstddef>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <nccl.h>

#include "kvcar/common.hpp"

#include "examples/models/cuda/communicator.cuh"

namespace kvcar::examples::cuda_model {

/// Throws kvcar::error unless `result` is ncclSuccess; `call` is the text of the call.
inline void check_nccl(ncclResult_t result, const char* call) {
    if (result == ncclSuccess) return;
    throw error(std::string("kvcar: NCCL error in ") + call + ": " + ncclGetErrorString(result));
}
#define KVCAR_NCCL_CHECK(call) ::kvcar::examples::cuda_model::check_nccl((call), #call)

/// The NCCL version this process runs, e.g. "2.27.3".
inline std::string nccl_version() {
    int v = 0;
    KVCAR_NCCL_CHECK(ncclGetVersion(&v));
    // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
    return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
           std::to_string(v % 100);
}

/// One NCCL communicator per GPU in `devices` (rank r on devices[r]), created together.
class nccl_ranks {
public:
    explicit nccl_ranks(const std::vector<int>& devices) : comms_(devices.size(), nullptr) {
        require(!devices.empty(), "nccl_ranks: no devices");
        int count = 0;
        KVCAR_CUDA_CHECK(cudaGetDeviceCount(&count));
        for (int d : devices) {
            require(d >= 0 && d < count,
                    "nccl_ranks: GPU " + std::to_string(d) + " does not exist (this machine has " +
                        std::to_string(count) + ")");
        }
        KVCAR_NCCL_CHECK(ncclCommInitAll(comms_.data(), int(devices.size()), devices.data()));
    }
    nccl_ranks(const nccl_ranks&) = delete;
    nccl_ranks& operator=(const nccl_ranks&) = delete;
    ~nccl_ranks() {
        for (ncclComm_t c : comms_)
            if (c) ncclCommDestroy(c);
    }
    int world() const { return int(comms_.size()); }
    ncclComm_t comm(int rank) const { return comms_[std::size_t(rank)]; }

private:
    std::vector<ncclComm_t> comms_;
};

/// Rank `rank` of an nccl_ranks (which must outlive it).
class nccl_communicator final : public communicator {
public:
    nccl_communicator(const nccl_ranks& group, int rank) : group_(&group), rank_(rank) {
        require(rank >= 0 && rank < group.world(),
                "nccl_communicator: rank " + std::to_string(rank) + " outside world " +
                    std::to_string(group.world()));
    }
    int rank() const override { return rank_; }
    int world() const override { return group_->world(); }
    void all_reduce_sum(float* data, std::size_t count, cudaStream_t stream) override {
        KVCAR_NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat, ncclSum,
                                       group_->comm(rank_), stream));
    }

private:
    const nccl_ranks* group_;
    int rank_;
};

}  // namespace kvcar::examples::cuda_model
