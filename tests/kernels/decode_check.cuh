// tests/kernels/decode_check.cuh — one decode step on the GPU, checked against the CPU reference
// (kvcar::reference_decode_attention on the host cache holding the same records). Shared by the
// tests of the tensor-core decode paths. Not a public header.
#pragma once

#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/decode_attention.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/reference/attention.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace kvcar_test {

/// A host cache and a device cache holding the same records, and the sequences to attend over.
template <class Codec>
struct paired_caches {
    kvcar::kv_cache<Codec, kvcar::dense_layout, kvcar::paged_storage> host;
    kvcar::gpu::device_kv_cache<Codec, kvcar::dense_layout> device;
    std::vector<int> sequences;
};

/// Paired caches with sequences of the given lengths (0: live but empty), their pages
/// interleaved with a spare sequence's so that tiles cross page boundaries (pages of 16 tokens);
/// the device cache is larger than the host's, so ids and pages differ from a fresh cache's.
template <class Codec>
paired_caches<Codec> make_interleaved_caches(const kvcar::dense_layout& layout,
                                             const std::vector<Codec>& codecs,
                                             const std::vector<int>& lengths,
                                             std::uint32_t seed) {
    constexpr int page_size = 16;
    constexpr int spare_step = 3;  // tokens the spare sequence takes after each sequence's start
    int max_len = 1, pages = 0;
    for (int len : lengths) {
        max_len = std::max(max_len, len);
        pages += (len + page_size - 1) / page_size;
    }
    const int n = int(lengths.size());
    // The spare holds spare_step * n tokens until it is removed, all while every sequence grows
    // to its full length: the host pool needs its pages on top of theirs (at least 4 spare pages,
    // as before, for batches of up to 21), and its max_tokens must cover it too.
    const int spare_tokens = spare_step * n;
    const int spare_pages = std::max(4, (spare_tokens + page_size - 1) / page_size);
    paired_caches<Codec> c{
        kvcar::kv_cache<Codec, kvcar::dense_layout, kvcar::paged_storage>(
            layout, codecs,
            {n + 1, std::max(max_len, spare_tokens), page_size, pages + spare_pages}),
        kvcar::gpu::device_kv_cache<Codec, kvcar::dense_layout>(
            layout, codecs, {n + 2, max_len + 8, page_size, pages + spare_pages + 5}),
        {}};
    const int spare = c.host.add_sequence();
    for (int i = 0; i < n; ++i) {
        const int seq = c.host.add_sequence();
        c.sequences.push_back(seq);
        fill_sequence(c.host, seq, lengths[std::size_t(i)] / 2, seed + 17u * seq, 64);
        fill_sequence(c.host, spare, spare_step, seed + 999u + std::uint32_t(i));
    }
    for (int i = 0; i < n; ++i) {
        const int seq = c.sequences[std::size_t(i)];
        const int rest = lengths[std::size_t(i)] - c.host.length(seq);
        fill_sequence(c.host, seq, rest, seed + 31u * seq + 5u, 64);
    }
    c.host.remove_sequence(spare);
    c.device.copy_from(c.host);
    return c;
}

/// For every layer of `host`: random queries (from `seed`), an output poisoned with NaN, and
/// `attend(p)` with p describing one decode step of `sequences` (lengths from layer 0, as the
/// tests' caches have equal lengths in every layer). Returns the worst relative error against
/// the reference, each (sequence, head) against its own scale (row_relative_error); an empty
/// sequence must give exact zeros.
template <class HostCache, class Attend>
double worst_decode_error(const HostCache& host, const std::vector<int>& sequences,
                          const kvcar::attention_params& opt, std::uint32_t seed,
                          Attend&& attend) {
    const kvcar::kv_geometry g = host.geometry();
    const int batch = int(sequences.size());
    const std::size_t q_width = std::size_t(opt.n_heads) * g.head_dim;
    std::vector<std::int32_t> ints;
    int max_len = 0;
    for (int seq : sequences) ints.push_back(seq);
    for (int seq : sequences) {
        ints.push_back(host.length(seq, 0));
        max_len = std::max(max_len, host.length(seq, 0));
    }
    kvcar::gpu::device_buffer<std::int32_t> ints_dev(ints);
    double worst = 0.0;
    for (int layer = 0; layer < g.n_layers; ++layer) {
        const std::vector<float> q = random_floats(q_width * batch, seed + 7u * layer);
        kvcar::gpu::device_buffer<float> q_dev(q);
        kvcar::gpu::device_buffer<float> out_dev = poisoned(q.size());
        kvcar::kernels::decode_attention_params p;
        p.q = q_dev.data();
        p.out = out_dev.data();
        p.sequences = ints_dev.data();
        p.kv_lengths = ints_dev.data() + batch;
        p.batch = batch;
        p.max_kv_length = max_len;
        p.layer = layer;
        p.n_heads = opt.n_heads;
        p.scale = opt.scale;
        attend(p);
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<float> got = out_dev.to_host();
        std::vector<float> want(q.size(), 0.0f);
        for (int b = 0; b < batch; ++b) {
            const int seq = sequences[std::size_t(b)];
            if (host.length(seq, layer) == 0) {
                for (std::size_t i = 0; i < q_width; ++i)
                    REQUIRE(got[std::size_t(b) * q_width + i] == 0.0f);
                continue;
            }
            kvcar::reference_decode_attention(
                host, seq, layer, opt,
                std::span<const float>(q).subspan(std::size_t(b) * q_width, q_width),
                std::span<float>(want).subspan(std::size_t(b) * q_width, q_width));
        }
        worst = std::max(worst, row_relative_error(got, want, std::size_t(g.head_dim)));
    }
    return worst;
}

}  // namespace kvcar_test
