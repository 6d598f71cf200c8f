// examples/models/cuda/backend.cu — backend.hpp's session: a device_model plus a device KV cache
// whose codec type is picked from its run-time name, behind a small virtual interface (one
// instantiation of the forward pass per codec, as kv_dispatch.hpp does on the CPU).
#include "examples/models/cuda/backend.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/common.hpp"
#include "kvcar/cuda/device_kv_cache.cuh"
#include "kvcar/cuda/error.cuh"
#include "kvcar/layout/dense.hpp"
#include "kvcar/numeric.hpp"

#include "examples/models/cuda/device_model.cuh"

namespace kvcar::examples::cuda_backend {

const std::vector<std::string>& kv_names() {
    static const std::vector<std::string> names = {"identity-f32", "identity-f16",
                                                   "identity-bf16", "int8", "fp8"};
    return names;
}

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

namespace {

using cuda_model::device_model;
using cuda_model::token_batch;

/// The cache, its codec type erased.
struct any_cache {
    virtual ~any_cache() = default;
    virtual int add_sequence() = 0;
    virtual void remove_sequence(int seq) = 0;
    virtual int length(int seq) const = 0;
    virtual std::vector<float> forward(device_model& m, const token_batch& b, logits_for w) = 0;
    virtual std::vector<double> log_probs(device_model& m, const token_batch& b,
                                          std::span<const int> targets) = 0;
    virtual std::size_t bytes_per_token() const = 0;
    virtual std::size_t bytes_used() const = 0;
    virtual std::size_t bytes_reserved() const = 0;
    virtual kv_geometry geometry() const = 0;
};

template <class Codec>
struct typed_cache final : any_cache {
    cuda::device_kv_cache<Codec> cache;

    typed_cache(kv_geometry g, const Codec& codec,
                typename cuda::device_kv_cache<Codec>::params p)
        : cache(dense_layout(g), codec, p) {}

    int add_sequence() override { return cache.add_sequence(); }
    void remove_sequence(int seq) override { cache.remove_sequence(seq); }
    int length(int seq) const override { return cache.length(seq); }
    std::vector<float> forward(device_model& m, const token_batch& b, logits_for w) override {
        return m.forward(cache, b, w);
    }
    std::vector<double> log_probs(device_model& m, const token_batch& b,
                                  std::span<const int> targets) override {
        return m.log_probs(cache, b, targets);
    }
    std::size_t bytes_per_token() const override { return cache.bytes_per_token(); }
    std::size_t bytes_used() const override {
        std::size_t tokens = 0;
        for (int seq = 0; seq < cache.max_sequences(); ++seq)
            if (cache.is_live(seq)) tokens += std::size_t(cache.length(seq));
        return tokens * cache.bytes_per_token();
    }
    std::size_t bytes_reserved() const override { return cache.pool_bytes(); }
    kv_geometry geometry() const override { return cache.geometry(); }
};

/// device_kv_cache<Codec>::params without the codec type.
struct cache_shape {
    int max_sequences, max_tokens, page_size, num_pages;
};

template <class Codec>
std::unique_ptr<any_cache> make(kv_geometry g, const Codec& codec, const cache_shape& p) {
    return std::make_unique<typed_cache<Codec>>(
        g, codec, typename cuda::device_kv_cache<Codec>::params{p.max_sequences, p.max_tokens,
                                                                p.page_size, p.num_pages});
}

/// The device cache `kv` names (kv_dispatch.hpp's fixed names; codec files are CPU-only for
/// now), dense: one group per KV head. int8 / fp8: quantized<identity<float>>, one scale and
/// offset per KV head and token, as on the CPU.
std::unique_ptr<any_cache> make_cache(const std::string& kv, kv_geometry g, const cache_shape& p) {
    const int hd = g.head_dim;
    if (kv == "identity-f32") return make(g, identity_codec<float>{hd}, p);
    if (kv == "identity-f16") return make(g, identity_codec<f16>{hd}, p);
    if (kv == "identity-bf16") return make(g, identity_codec<bf16>{hd}, p);
    if (kv == "int8") return make(g, make_quantized<std::int8_t>(identity_codec<float>{hd}), p);
    if (kv == "fp8") return make(g, make_quantized<fp8_e4m3>(identity_codec<float>{hd}), p);
    std::string known;
    for (const std::string& n : kv_names()) known += (known.empty() ? "" : ", ") + n;
    throw error("kvcar: --kv '" + kv + "' is not a known cache on CUDA (known: " + known + ")");
}

}  // namespace

struct session::impl {
    std::unique_ptr<device_model> model;
    std::unique_ptr<any_cache> cache;
};

session::session(const language_model& model, const std::string& kv, session_params params)
    : impl_(std::make_unique<impl>()) {
    const int max_tokens = params.max_tokens == 0 ? model.max_positions() : params.max_tokens;
    require(params.max_sequences > 0 && max_tokens > 0 && params.page_size > 0 &&
                params.num_pages >= 0,
            "cuda session: max_sequences, max_tokens and page_size must be positive and "
            "num_pages not negative");
    const int pages_per_sequence = (max_tokens + params.page_size - 1) / params.page_size;
    const int num_pages =
        params.num_pages > 0 ? params.num_pages : params.max_sequences * pages_per_sequence;
    (void)device_description();  // a clear error when there is no GPU, before any allocation
    impl_->cache = make_cache(kv, model.cache_geometry(),
                              {params.max_sequences, max_tokens, params.page_size, num_pages});
    impl_->model = std::make_unique<device_model>(model);
}

session::~session() = default;
session::session(session&&) noexcept = default;
session& session::operator=(session&&) noexcept = default;

int session::add_sequence() { return impl_->cache->add_sequence(); }
void session::remove_sequence(int seq) { impl_->cache->remove_sequence(seq); }
int session::length(int seq) const { return impl_->cache->length(seq); }

std::vector<float> session::forward(int seq, std::span<const int> tokens, logits_for which) {
    const int count = int(tokens.size());
    return impl_->cache->forward(*impl_->model, token_batch{{&seq, 1}, {&count, 1}, tokens},
                                 which);
}

std::vector<float> session::forward(std::span<const int> sequences, std::span<const int> counts,
                                    std::span<const int> tokens, logits_for which) {
    return impl_->cache->forward(*impl_->model, token_batch{sequences, counts, tokens}, which);
}

std::vector<double> session::log_probs(int seq, std::span<const int> tokens,
                                       std::span<const int> targets) {
    const int count = int(tokens.size());
    return impl_->cache->log_probs(*impl_->model, token_batch{{&seq, 1}, {&count, 1}, tokens},
                                   targets);
}

std::size_t session::bytes_per_token() const { return impl_->cache->bytes_per_token(); }
double session::compression_ratio() const {
    return double(impl_->cache->geometry().fp16_bytes_per_token()) /
           double(impl_->cache->bytes_per_token());
}
std::size_t session::bytes_used() const { return impl_->cache->bytes_used(); }
std::size_t session::bytes_reserved() const { return impl_->cache->bytes_reserved(); }
std::size_t session::weight_bytes() const { return impl_->model->weight_bytes(); }

}  // namespace kvcar::examples::cuda_backend
