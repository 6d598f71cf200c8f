// examples/models/cuda/decode_graphs.cuh — CUDA graphs of a model's decode steps.
//
// Why: a decode step is a few hundred small launches (per layer: norm, products, split, RoPE,
// append, attention, residuals; TinyLlama has 22 layers). At the batch sizes a memory budget
// allows, the GPU runs them faster than the host enqueues them: the 2026-12-07 serving run of
// fp16 at 512 MiB spent 19 of its 30 s enqueueing (docs/results/serving.md). A graph replays the
// whole step with one launch.
//
// What makes a step replayable is that every kernel argument is the same from step to step:
//   - the step's varying data (tokens, positions, sequence ids, lengths) lives in one device
//     array at a fixed address, uploaded before the graph launches; block-table rows are
//     uploaded by device_kv_cache::prepare_append, also before;
//   - decode attention runs for a length *bucket* (the next power of two of the longest context,
//     at most the cache's capacity) instead of the exact longest context, so its split layout
//     is the same for every step of the bucket. Steps without graphs use the same bucket, so
//     both run the very same kernels and give the same bits;
//   - no buffer the step uses may be reallocated after the capture. Every owner counts its
//     reallocations (`generation`); a graph captured at another count is captured again.
// A graph is keyed by (cache serial, items, bucket, which logits). The first step of a key runs
// uncaptured, which sizes every buffer (a growth inside a capture is an error); the second
// captures, instantiates and launches; later ones only launch. A capture that fails marks its
// key: its steps run uncaptured, with the same kernels, and the reason is printed once.
#pragma once

#if !defined(__CUDACC__)
#error "examples/models/cuda/decode_graphs.cuh needs nvcc"
#endif

#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <tuple>
#include <utility>

#include <cuda_runtime.h>

#include "kvcar/cuda/error.cuh"
#include "kvcar/kernels/decode_plan.cuh"

namespace kvcar::examples::cuda_model {

/// An instantiated graph, destroyed with its owner.
class graph_exec {
public:
    graph_exec() = default;
    graph_exec(const graph_exec&) = delete;
    graph_exec& operator=(const graph_exec&) = delete;
    graph_exec(graph_exec&& o) noexcept : exec_(std::exchange(o.exec_, nullptr)) {}
    graph_exec& operator=(graph_exec&& o) noexcept {
        if (this != &o) {
            reset();
            exec_ = std::exchange(o.exec_, nullptr);
        }
        return *this;
    }
    ~graph_exec() { reset(); }

    explicit operator bool() const { return exec_ != nullptr; }
    /// Takes the graph `g` (destroying it) and keeps its executable form.
    void instantiate(cudaGraph_t g) {
        reset();
        const cudaError_t status = cudaGraphInstantiate(&exec_, g, 0);
        cudaGraphDestroy(g);
        KVCAR_CUDA_CHECK(status);
    }
    void launch(cudaStream_t stream) const { KVCAR_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }
    void reset() {
        if (exec_) cudaGraphExecDestroy(exec_);
        exec_ = nullptr;
    }

private:
    cudaGraphExec_t exec_ = nullptr;
};

/// The graphs of one model's decode steps (see the file comment).
class decode_graphs {
public:
    /// One key's state.
    struct entry {
        kernels::decode_plan plan;  ///< decode attention's path per layer (empty until planned)
        int uncaptured_runs = 0;
        bool uncapturable = false;
        std::uint64_t generation = 0;  ///< buffers' reallocation count when `exec` was captured
        int rows = 0;                  ///< logit rows the step leaves
        graph_exec exec;
    };

    bool enabled = true;
    /// Instantiated graphs kept at most. Each holds its kernels' parameters in device memory,
    /// and a server meets many batch sizes: when a capture would pass this, every graph is
    /// dropped and the sizes in use are captured again as they come.
    int max_graphs = 64;

    /// The entry of (cache, items, bucket, which logits), created empty on first sight;
    /// `cache` is the cache's serial(), not its address, which a later cache may reuse.
    entry& at(std::uint64_t cache, int items, int bucket, int logits) {
        return entries_[std::make_tuple(cache, items, bucket, logits)];
    }
    /// Runs one step of key e, whose launches `enqueue` puts on `stream` and returns the logit
    /// rows they leave: launches e's graph when it was captured at this buffer `generation`;
    /// else enqueues the step uncaptured if it is the key's first (that sizes every buffer) or
    /// the key cannot be captured; else captures, instantiates and launches. Returns the rows.
    template <class Enqueue>
    int run(entry& e, cudaStream_t stream, std::uint64_t generation, const Enqueue& enqueue) {
        if (e.exec && e.generation == generation) {
            e.exec.launch(stream);
            ++launches_;
            return e.rows;
        }
        if (e.uncapturable || e.uncaptured_runs == 0) {
            ++e.uncaptured_runs;
            return enqueue();
        }
        make_room();
        if (!capture(e, stream, generation, enqueue)) return enqueue();
        e.exec.launch(stream);
        ++launches_;
        return e.rows;
    }
    /// Steps launched as a graph so far.
    long long launches() const { return launches_; }
    /// Graphs captured so far (recaptures included).
    long long captures() const { return captures_; }

private:
    /// Captures the work `enqueue` puts on `stream` into e's graph (thread-local capture: other
    /// threads' CUDA calls are not affected). On a failure the capture is abandoned, e is marked
    /// uncapturable and false is returned with nothing enqueued.
    template <class Enqueue>
    bool capture(entry& e, cudaStream_t stream, std::uint64_t generation, const Enqueue& enqueue) {
        KVCAR_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        cudaGraph_t graph = nullptr;
        try {
            e.rows = enqueue();
        } catch (const std::exception& ex) {
            cudaStreamEndCapture(stream, &graph);
            if (graph) cudaGraphDestroy(graph);
            (void)cudaGetLastError();  // the failed capture's error is not the next call's
            give_up(e, ex.what());
            return false;
        }
        const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
        if (ended != cudaSuccess || !graph) {
            if (graph) cudaGraphDestroy(graph);
            (void)cudaGetLastError();
            give_up(e, cudaGetErrorString(ended));
            return false;
        }
        e.exec.instantiate(graph);
        e.generation = generation;
        ++captures_;
        return true;
    }
    void make_room() {
        int live = 0;
        for (const auto& [key, e] : entries_) live += e.exec ? 1 : 0;
        if (live < max_graphs) return;
        for (auto& [key, e] : entries_) e.exec.reset();
    }
    void give_up(entry& e, const std::string& why) {
        e.uncapturable = true;
        e.exec.reset();
        if (!told_)  // said once: the steps still run, only slower
            std::fprintf(stderr, "kvcar: a decode step could not be captured as a CUDA graph (%s); "
                                 "such steps run launch by launch\n", why.c_str());
        told_ = true;
    }
    std::map<std::tuple<std::uint64_t, int, int, int>, entry> entries_;
    long long captures_ = 0, launches_ = 0;
    bool told_ = false;
};

}  // namespace kvcar::examples::cuda_model
