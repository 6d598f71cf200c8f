// examples/models/cuda/erased_cache.cuh — the device KV cache behind backend.cu's session, its
// codec type erased (any_cache). Each typed cache instantiates the model's forward pass and the
// whole decode dispatcher for its codec (about 10 s of nvcc per codec), so the codec files' caches
// compile in a translation unit of their own (file_caches.cu), beside backend.cu on a second core.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/cuda/device_kv_cache.cuh"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/layout/dense.hpp"

#include "examples/models/cuda/backend.hpp"
#include "examples/models/cuda/device_model.cuh"
#include "examples/models/kv_dispatch.hpp"

namespace kvcar::examples::cuda_backend {

using cuda_model::device_model;
using cuda_model::token_batch;

/// The cache, its codec type erased.
struct any_cache {
    virtual ~any_cache() = default;
    virtual int add_sequence() = 0;
    virtual void remove_sequence(int seq) = 0;
    virtual int length(int seq) const = 0;
    virtual std::vector<float> forward(device_model& m, const token_batch& b, logits_for w) = 0;
    virtual std::vector<int> greedy(device_model& m, const token_batch& b) = 0;
    virtual std::vector<double> log_probs(device_model& m, const token_batch& b,
                                          std::span<const int> targets) = 0;
    virtual std::size_t bytes_per_token() const = 0;
    virtual std::size_t bytes_used() const = 0;
    virtual std::size_t bytes_reserved() const = 0;
    virtual kv_geometry geometry() const = 0;
    virtual int free_pages() const = 0;
};

template <class Codec, class Layout = dense_layout>
struct typed_cache final : any_cache {
    /// What the host codec views point to (a codec file's tensors); null for parameterless codecs.
    /// Declared first: it outlives the cache, whose host_codec() views it backs.
    std::shared_ptr<const io::codec_set> owner;
    gpu::device_kv_cache<Codec, Layout> cache;

    typed_cache(kv_geometry g, const Codec& codec,
                typename gpu::device_kv_cache<Codec, Layout>::params p)
        : cache(dense_layout(g), codec, p) {}
    typed_cache(std::shared_ptr<const io::codec_set> set, std::vector<Codec> codecs,
                typename gpu::device_kv_cache<Codec, Layout>::params p)
        : owner(std::move(set)), cache(owner->layout(), std::move(codecs), p) {}

    int add_sequence() override { return cache.add_sequence(); }
    void remove_sequence(int seq) override { cache.remove_sequence(seq); }
    int length(int seq) const override { return cache.length(seq); }
    std::vector<float> forward(device_model& m, const token_batch& b, logits_for w) override {
        return m.forward(cache, b, w);
    }
    std::vector<int> greedy(device_model& m, const token_batch& b) override {
        return m.greedy(cache, b);
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
    int free_pages() const override { return cache.free_pages(); }
};

/// device_kv_cache<Codec>::params without the codec type.
struct cache_shape {
    int max_sequences, max_tokens, page_size, n_pages;
};

/// A codec file's cache (any per-slot codecs and reuse maps), in file_caches.cu.
std::unique_ptr<any_cache> make_file_cache(std::shared_ptr<const io::codec_set> set,
                                           const cache_shape& p);

}  // namespace kvcar::examples::cuda_backend
