// examples/models/cuda/backend.cu — backend.hpp's session: a device_model plus a device KV cache
// whose codec type is picked from its run-time name, behind a small virtual interface
// (erased_cache.cuh). The forward pass is instantiated once per codec, as kv_dispatch.hpp does on
// the CPU: here for the fixed names, in file_caches.cu for codec files.
//
// Tensor parallel: one such pair per rank, each on its GPU, each driven by a persistent host
// thread of its own (rank_workers). Every call the session gets is run by all ranks at once:
// they meet only inside the all-reduces of the forward pass. Everything that can fail on bad
// input is checked on the host before any rank enqueues work, identically on every rank, so
// either all ranks throw or none does; a rank cannot be left waiting in an all-reduce that
// another rank never reaches.
#include "examples/models/cuda/backend.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/codec/any.hpp"
#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/common.hpp"
#include "kvcar/cuda/device_kv_cache.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/layout/dense.hpp"
#include "kvcar/layout/reuse_map.hpp"
#include "kvcar/numeric.hpp"

#include "kvcar/shard.hpp"

#include "examples/models/cuda/communicator.cuh"
#include "examples/models/kv_dispatch.hpp"
#include "examples/models/cuda/device_model.cuh"
#include "examples/models/cuda/erased_cache.cuh"
#ifdef KVCAR_WITH_NCCL
#include "examples/models/cuda/nccl_communicator.cuh"
#endif

namespace kvcar::examples::cuda_backend {

const std::vector<std::string>& kv_names() { return kv_codec_names(); }  // the CPU's names

std::string device_description() {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    require(status == cudaSuccess && count > 0,
            std::string("cuda: no usable GPU (") +
                (status == cudaSuccess ? "no devices" : cudaGetErrorString(status)) + ")");
    int device = 0;
    KVCAR_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp p{};
    KVCAR_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) +
           ", " + std::to_string(p.multiProcessorCount) + " SMs, " +
           std::to_string(p.totalGlobalMem >> 20) + " MiB)";
}

bool has_nccl() {
#ifdef KVCAR_WITH_NCCL
    return true;
#else
    return false;
#endif
}

std::string nccl_description() {
#ifdef KVCAR_WITH_NCCL
    return "NCCL " + cuda_model::nccl_version();
#else
    return "no NCCL in this build";
#endif
}

namespace {

template <class Codec>
std::unique_ptr<any_cache> make(kv_geometry g, const Codec& codec, const cache_shape& p) {
    return std::make_unique<typed_cache<Codec>>(
        g, codec, typename gpu::device_kv_cache<Codec>::params{p.max_sequences, p.max_tokens,
                                                                p.page_size, p.n_pages});
}

/// The device cache `kv` names (kv_dispatch.hpp's names). The fixed names are dense, one group
/// per KV head; int8 / fp8 are quantized<identity<float>>, one scale and offset per KV head and
/// token, as on the CPU. `file:PATH` is a codec file (any per-slot codecs and K/V reuse maps),
/// checked against the model's geometry `full` and split to this rank's `shard` of KV heads: the
/// same any_codec records as the CPU's kv_cache<any_codec, reuse_map>, encoded and decoded on
/// the device through the uploaded views.
std::unique_ptr<any_cache> make_cache(const std::string& kv, kv_geometry full, head_shard shard,
                                      const cache_shape& p) {
    const kv_geometry g = shard_geometry(full, shard);
    const int hd = g.head_dim;
    if (kv.starts_with("file:")) {
        const std::string path = kv.substr(5);
        require(!path.empty(), "--kv file: needs a codec file path (--kv file:PATH)");
        io::codec_set set = io::load_codec_set(path, full);
        if (shard.world > 1) set = shard_codec_set(set, shard);
        return make_file_cache(std::make_shared<const io::codec_set>(std::move(set)), p);
    }
    if (const std::optional<dense_kv_codec> codec = dense_kv_codec_named(kv, hd))
        return codec->visit([&](const auto& c) { return make(g, c, p); });
    std::string known;
    for (const std::string& n : kv_names()) known += (known.empty() ? "" : ", ") + n;
    throw error("kvcar: --kv '" + kv + "' is not a known cache on CUDA (known: " + known + ")");
}

/// One persistent host thread per rank, bound to the rank's GPU for its whole life (CUDA's
/// current device is per thread). run(job) hands job(rank) to every thread at once and waits;
/// the first exception any rank threw is rethrown on the caller's thread.
class rank_workers {
public:
    explicit rank_workers(const std::vector<int>& devices) : errors_(devices.size()) {
        for (std::size_t r = 0; r < devices.size(); ++r)
            threads_.emplace_back([this, r, d = devices[r]] { loop(int(r), d); });
    }
    rank_workers(const rank_workers&) = delete;
    rank_workers& operator=(const rank_workers&) = delete;
    ~rank_workers() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        start_.notify_all();
        for (std::thread& t : threads_) t.join();
    }

    void run(const std::function<void(int)>& job) {
        std::unique_lock<std::mutex> lock(mutex_);
        job_ = &job;
        pending_ = int(threads_.size());
        ++generation_;
        start_.notify_all();
        done_.wait(lock, [&] { return pending_ == 0; });
        job_ = nullptr;
        for (std::exception_ptr& e : errors_) {
            if (e) std::rethrow_exception(std::exchange(e, nullptr));
        }
    }

private:
    void loop(int rank, int device) {
        const cudaError_t bound = cudaSetDevice(device);
        std::uint64_t seen = 0;
        for (;;) {
            const std::function<void(int)>* job = nullptr;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                start_.wait(lock, [&] { return stop_ || generation_ != seen; });
                if (stop_) return;
                seen = generation_;
                job = job_;
            }
            std::exception_ptr error;
            try {
                if (bound != cudaSuccess) {
                    throw kvcar::error("cuda session: rank " + std::to_string(rank) +
                                       " cannot use GPU " + std::to_string(device) + ": " +
                                       cudaGetErrorString(bound));
                }
                (*job)(rank);
            } catch (...) {
                error = std::current_exception();
            }
            std::lock_guard<std::mutex> lock(mutex_);
            errors_[std::size_t(rank)] = error;
            if (--pending_ == 0) done_.notify_all();
        }
    }

    std::mutex mutex_;
    std::condition_variable start_, done_;
    const std::function<void(int)>* job_ = nullptr;
    std::uint64_t generation_ = 0;
    int pending_ = 0;
    bool stop_ = false;
    std::vector<std::exception_ptr> errors_;
    std::vector<std::thread> threads_;
};

/// One rank: its communicator, its share of the weights, its share of the cache.
struct rank_state {
    std::unique_ptr<cuda_model::communicator> comm;
    std::unique_ptr<device_model> model;
    std::unique_ptr<any_cache> cache;
};

}  // namespace

struct session::impl {
    std::vector<rank_state> ranks;
    // Declared before the workers: destroyed after them, so no thread can still use a group.
    std::unique_ptr<cuda_model::local_ranks> local;
#ifdef KVCAR_WITH_NCCL
    std::unique_ptr<cuda_model::nccl_ranks> nccl;
#endif
    std::unique_ptr<rank_workers> workers;  // null for the plain model (tensor_parallel 0)

    /// job(rank) on every rank: inline for the plain model, else on the rank threads.
    void each_rank(const std::function<void(int)>& job) {
        if (workers) {
            workers->run(job);
        } else {
            job(0);
        }
    }

    ~impl() {
        // Free each rank's device memory, cuBLAS handle and stream from its own thread (its
        // device current) before the communicators and threads go.
        if (workers && !ranks.empty()) {
            try {
                workers->run([&](int r) {
                    ranks[std::size_t(r)].cache.reset();
                    ranks[std::size_t(r)].model.reset();
                });
            } catch (...) {
                // Destruction cannot report; the process is going on without the GPU state.
            }
        }
    }
};

session::session(const language_model& model, const std::string& kv, session_params params)
    : impl_(std::make_unique<impl>()) {
    const int max_tokens = params.max_tokens == 0 ? model.max_positions() : params.max_tokens;
    require(params.max_sequences > 0 && max_tokens > 0 && params.page_size > 0 &&
                params.n_pages >= 0,
            "cuda session: max_sequences, max_tokens and page_size must be positive and "
            "n_pages not negative");
    require(params.tensor_parallel >= 0,
            "cuda session: tensor_parallel must not be negative (got " +
                std::to_string(params.tensor_parallel) + ")");
    const int pages_per_sequence = (max_tokens + params.page_size - 1) / params.page_size;
    const int n_pages =
        params.n_pages > 0 ? params.n_pages : params.max_sequences * pages_per_sequence;
    const cache_shape shape{params.max_sequences, max_tokens, params.page_size, n_pages};
    (void)device_description();  // a clear error when there is no GPU, before any allocation

    if (params.tensor_parallel == 0) {
        impl_->ranks.resize(1);
        impl_->ranks[0].cache = make_cache(kv, model.cache_geometry(), head_shard{0, 1}, shape);
        impl_->ranks[0].model =
            std::make_unique<device_model>(model, cuda_model::tensor_parallel_params{},
                                           params.weights);
        impl_->ranks[0].model->use_decode_graphs(params.decode_graphs);
        return;
    }

    // Sharded. Check the split before creating any communicator or thread.
    const int world = params.tensor_parallel;
    const kv_geometry full = model.cache_geometry();
    (void)kv_heads_of(full, {0, world});
    int current = 0, count = 0;
    KVCAR_CUDA_CHECK(cudaGetDevice(&current));
    KVCAR_CUDA_CHECK(cudaGetDeviceCount(&count));
    std::vector<int> devices(std::size_t(world), current);
    if (params.ranks_share_one_gpu) {
        impl_->local = std::make_unique<cuda_model::local_ranks>(world);
    } else {
        require(has_nccl(), "cuda session: --tensor-parallel needs a build with NCCL (CMake did "
                            "not find nccl.h and libnccl; see docs/install.md)");
        require(world <= count, "cuda session: tensor parallel " + std::to_string(world) +
                                    " needs " + std::to_string(world) + " GPUs, this machine has " +
                                    std::to_string(count));
        for (int r = 0; r < world; ++r) devices[std::size_t(r)] = r;
#ifdef KVCAR_WITH_NCCL
        impl_->nccl = std::make_unique<cuda_model::nccl_ranks>(devices);
#endif
    }
    impl_->ranks.resize(std::size_t(world));
    for (int r = 0; r < world; ++r) {
        rank_state& rank = impl_->ranks[std::size_t(r)];
        if (impl_->local) {
            rank.comm = std::make_unique<cuda_model::local_communicator>(*impl_->local, r);
        }
#ifdef KVCAR_WITH_NCCL
        if (impl_->nccl) {
            rank.comm = std::make_unique<cuda_model::nccl_communicator>(*impl_->nccl, r);
        }
#endif
    }
    impl_->workers = std::make_unique<rank_workers>(devices);
    impl_->each_rank([&](int r) {
        rank_state& rank = impl_->ranks[std::size_t(r)];
        const head_shard shard{r, world};
        rank.cache = make_cache(kv, full, shard, shape);
        rank.model = std::make_unique<device_model>(
            model, cuda_model::tensor_parallel_params{shard, rank.comm.get()}, params.weights);
    });
}

session::~session() = default;
session::session(session&&) noexcept = default;
session& session::operator=(session&&) noexcept = default;

int session::ranks() const { return int(impl_->ranks.size()); }

int session::add_sequence() {
    std::vector<int> ids(impl_->ranks.size());
    impl_->each_rank([&](int r) { ids[std::size_t(r)] = impl_->ranks[std::size_t(r)].cache->add_sequence(); });
    return ids[0];  // every rank's cache hands out the same lowest free id
}
void session::remove_sequence(int seq) {
    impl_->each_rank([&](int r) { impl_->ranks[std::size_t(r)].cache->remove_sequence(seq); });
}
int session::length(int seq) const { return impl_->ranks[0].cache->length(seq); }

std::vector<float> session::forward(std::span<const int> sequences, std::span<const int> counts,
                                    std::span<const int> tokens, logits_for which) {
    std::vector<float> logits;
    impl_->each_rank([&](int r) {
        rank_state& rank = impl_->ranks[std::size_t(r)];
        std::vector<float> out =
            rank.cache->forward(*rank.model, token_batch{sequences, counts, tokens}, which);
        if (r == 0) logits = std::move(out);
    });
    return logits;
}

std::vector<int> session::greedy(std::span<const int> sequences, std::span<const int> counts,
                                 std::span<const int> tokens) {
    std::vector<int> next;
    impl_->each_rank([&](int r) {
        rank_state& rank = impl_->ranks[std::size_t(r)];
        std::vector<int> out = rank.cache->greedy(*rank.model, token_batch{sequences, counts, tokens});
        if (r == 0) next = std::move(out);
    });
    return next;
}

std::vector<float> session::forward(int seq, std::span<const int> tokens, logits_for which) {
    const int count = int(tokens.size());
    return forward({&seq, 1}, {&count, 1}, tokens, which);
}

std::vector<double> session::log_probs(int seq, std::span<const int> tokens,
                                       std::span<const int> targets) {
    const int count = int(tokens.size());
    std::vector<double> result;
    impl_->each_rank([&](int r) {
        rank_state& rank = impl_->ranks[std::size_t(r)];
        std::vector<double> out = rank.cache->log_probs(
            *rank.model, token_batch{{&seq, 1}, {&count, 1}, tokens}, targets);
        if (r == 0) result = std::move(out);
    });
    return result;
}

std::size_t session::bytes_per_token() const { return impl_->ranks[0].cache->bytes_per_token(); }
double session::compression_ratio() const {
    return double(impl_->ranks[0].cache->geometry().fp16_bytes_per_token()) /
           double(impl_->ranks[0].cache->bytes_per_token());
}
std::size_t session::bytes_used() const { return impl_->ranks[0].cache->bytes_used(); }
std::size_t session::bytes_reserved() const { return impl_->ranks[0].cache->bytes_reserved(); }
std::size_t session::weight_bytes() const { return impl_->ranks[0].model->weight_bytes(); }
weight_precision session::weights() const { return impl_->ranks[0].model->weights(); }
int session::free_pages() const { return impl_->ranks[0].cache->free_pages(); }
host_time session::pass_host_time() const {
    const device_model& m = *impl_->ranks[0].model;
    const auto& t = m.host_time();
    return {t.enqueue, t.wait, t.passes, m.graph_steps(), m.graph_captures()};
}

}  // namespace kvcar::examples::cuda_backend
