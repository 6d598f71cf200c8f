// examples/models/cuda/backend.hpp — the CUDA backend of the reference models, as the tools see
// it: plain C++ (no CUDA headers), so kvcar-generate and kvcar-perplexity stay host code compiled
// by the C++ compiler and link backend.cu only when kvcar was built with CUDA (KVCAR_WITH_CUDA).
//
//     const auto model = language_model::load("models/gpt2-tiny");
//     cuda_backend::session gpu(model, "identity-f16", {.max_sequences = 1, .max_tokens = 512});
//     const int seq = gpu.add_sequence();
//     std::vector<float> logits = gpu.forward(seq, prompt_ids, logits_for::last);
//
// A session is the model's weights on the GPU plus one paged device KV cache of the codec that
// the run-time name picks (the same names as the CPU's --kv; see kv_dispatch.hpp). With
// session_params::tensor_parallel, one such pair per GPU, each holding its share of the heads
// (device_model.cuh explains the split), each driven by its own host thread.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvcar/common.hpp"

#include "examples/models/model.hpp"
#include "examples/models/model_common.hpp"

namespace kvcar::examples::cuda_backend {

/// The names `session` accepts for its cache.
const std::vector<std::string>& kv_names();

/// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" for the current device; throws kvcar::error when
/// there is no usable GPU.
std::string device_description();

/// True when this build can run tensor-parallel sessions over NCCL (CMake found NCCL).
bool has_nccl();
/// "NCCL 2.27.3" or "no NCCL in this build".
std::string nccl_description();

struct session_params {
    int max_sequences = 1;  ///< sequence ids live at once
    int max_tokens = 0;     ///< tokens per sequence; 0 = the model's context
    int page_size = 16;     ///< tokens per page of the device cache
    /// Pages in the pool; 0 = enough for max_sequences full sequences.
    int n_pages = 0;
    /// Tensor-parallel ranks. 0: the plain one-GPU model, no communicator. N >= 1: the model
    /// and its cache split by heads over N ranks, rank r on GPU r, partial products summed by
    /// NCCL (needs has_nccl()); N = 1 runs that very code path, NCCL included, on one GPU.
    int tensor_parallel = 0;
    /// With tensor_parallel N: all N ranks on the current GPU, summed by an in-process
    /// all-reduce instead of NCCL. Checks the sharding where there is one GPU; not for speed.
    bool ranks_share_one_gpu = false;
    /// How the weight matrices are stored on the device: fp32 (cuBLAS SGEMM, the CPU's
    /// numbers) or bf16 (half the memory; a bf16 checkpoint's own values). The tools pick it
    /// with --weights (weights_option.hpp: auto = bf16 for a BF16 checkpoint).
    weight_precision weights = weight_precision::fp32;
    /// Decode steps (every item one token) replayed as CUDA graphs, one per batch size and
    /// context bucket (examples/models/cuda/decode_graphs.cuh); off, the same launches are
    /// enqueued one by one. Not used with tensor_parallel.
    bool decode_graphs = true;
};

/// Host time of a session's forward passes (rank 0): `enqueue_s` building and launching them
/// (validation, planning, uploads, launches), `wait_s` waiting for the GPU at their end.
struct host_time {
    double enqueue_s = 0;
    double wait_s = 0;
    long long passes = 0;
    long long graph_steps = 0;  ///< decode steps launched as one CUDA graph
    long long graph_captures = 0;
};

class session {
public:
    /// Uploads `model`'s weights and builds a device cache of codec `kv`. Throws kvcar::error for
    /// an unknown name (listing the known ones), bad params or a CUDA failure.
    session(const language_model& model, const std::string& kv, session_params params);
    ~session();
    session(session&&) noexcept;
    session& operator=(session&&) noexcept;

    int add_sequence();
    void remove_sequence(int seq);
    int length(int seq) const;

    /// Appends `tokens` to `seq` and returns logits [n][vocab] or [1][vocab] (logits_for::last),
    /// like language_model::forward on the CPU.
    std::vector<float> forward(int seq, std::span<const int> tokens,
                               logits_for which = logits_for::all);
    /// A batch: item b appends counts[b] of `tokens` (in order) to sequences[b]; returns
    /// [Σ counts][vocab] or [items][vocab] (each item's last token).
    std::vector<float> forward(std::span<const int> sequences, std::span<const int> counts,
                               std::span<const int> tokens, logits_for which = logits_for::all);
    /// A batch as above; returns the greedy next token of each item: the argmax of its last
    /// token's logits (the first on ties, as examples/models/tensor_ops.hpp's argmax), computed
    /// on the GPU, so only one int per item comes back.
    std::vector<int> greedy(std::span<const int> sequences, std::span<const int> counts,
                            std::span<const int> tokens);
    /// Appends `tokens` to `seq` and returns log p(targets[i] | tokens[0..i], earlier tokens)
    /// for every i, computed on the GPU (only these doubles come back).
    std::vector<double> log_probs(int seq, std::span<const int> tokens,
                                  std::span<const int> targets);

    /// Ranks the model is split over (1 for the plain model).
    int ranks() const;

    // The cache report (the same names as kv_cache, for print_cache_report). With several
    // ranks, bytes are per GPU: each rank's cache holds n_kv_heads / ranks of the heads.
    std::size_t bytes_per_token() const;
    double compression_ratio() const;
    /// Bytes of records the live sequences hold now.
    std::size_t bytes_used() const;
    /// Device bytes of the cache's page pools.
    std::size_t bytes_reserved() const;
    /// Device bytes of the model's weights (per GPU with several ranks).
    std::size_t weight_bytes() const;
    /// How the weight matrices are stored on the device.
    weight_precision weights() const;
    /// Pages of the cache's pool that no sequence holds (a scheduler checks its plan with it).
    int free_pages() const;
    /// Host time of the passes so far (forward and greedy; rank 0): where a step's time goes
    /// between the host and the GPU.
    host_time pass_host_time() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace kvcar::examples::cuda_backend
