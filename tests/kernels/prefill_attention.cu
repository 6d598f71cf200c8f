// Tests for kvcar/kernels/prefill_attention.cuh: causal (and full) attention of a chunk of
// queries per sequence against kvcar::reference_attention reading the same records.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/append.cuh>
#include <kvcar/kernels/prefill_attention.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/reference/attention.hpp>

#include <cstdio>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

namespace {

/// Sequences of `lengths` tokens; the last `queries[i]` tokens of each are the chunk's queries.
template <class Codec>
void check_prefill(const kv_geometry& g, int hpg, const Codec& codec, int n_heads,
                   const std::vector<int>& lengths, const std::vector<int>& queries, bool causal,
                   rope_mode rope, double tolerance, const char* name) {
    const dense_layout layout(g, hpg);
    kv_cache<Codec, dense_layout, paged_storage> host(layout, codec, {4, 128, 16, 40});
    cuda::device_kv_cache<Codec> dev(layout, codec, {4, 128, 16, 40});
    std::vector<int> seqs;
    for (std::size_t i = 0; i < lengths.size(); ++i) {
        seqs.push_back(host.add_sequence());
        kvcar_test::fill_sequence(host, seqs.back(), lengths[i], 50u + std::uint32_t(i));
    }
    dev.copy_from(host);
    attention_params opt;
    opt.n_heads = n_heads;
    opt.causal = causal;
    opt.rope = rope;
    const std::size_t q_width = std::size_t(n_heads) * g.head_dim;
    int total = 0;
    for (int q : queries) total += q;
    kernels::attention_workspace ws;
    double worst = 0.0;
    for (int layer = 0; layer < g.n_layers; ++layer) {
        const std::vector<float> q = random_floats(std::size_t(total) * q_width, 9u + layer);
        cuda::device_buffer<float> q_dev(q);
        cuda::device_buffer<float> out = kvcar_test::poisoned(q.size());
        kernels::prefill_attention(dev, layer, seqs, queries, q_dev.data(), out.data(), opt, ws);
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<float> want(q.size());
        std::size_t row = 0;
        for (std::size_t i = 0; i < seqs.size(); ++i) {
            const std::size_t n = std::size_t(queries[i]) * q_width;
            if (n > 0)
                reference_attention(host, seqs[i], layer, opt,
                                    std::span<const float>(q).subspan(row, n),
                                    lengths[i] - queries[i], std::span<float>(want).subspan(row, n));
            row += n;
        }
        worst = std::max(worst, kvcar_test::relative_error(out.to_host(), want));
    }
    std::printf("prefill_attention %-24s %s%s: rel err %.2e\n", name, causal ? "causal" : "full",
                rope == rope_mode::on_read ? " rope" : "", worst);
    CHECK(worst <= tolerance);
}

}  // namespace

TEST_CASE("prefill_attention: causal chunks for every codec family", "[kernels]") {
    const kv_geometry g{2, 2, 64};
    const std::vector<int> lengths{40, 17, 5}, queries{24, 17, 1};
    check_prefill(g, 1, identity_codec<float>{64}, 8, lengths, queries, true, rope_mode::none,
                  1e-5, "identity<f32>");
    check_prefill(g, 1, identity_codec<f16>{64}, 4, lengths, queries, true, rope_mode::none, 1e-3,
                  "identity<f16>");
    const linear_params lin = kvcar_test::random_linear(128, 32, 2, 3);
    check_prefill(g, 2, lin.codec<f16>(), 8, lengths, queries, true, rope_mode::none, 1e-3,
                  "linear<f16> layer");
    const folded_autoencoder ae = kvcar_test::random_autoencoder(64, 32, 16, 4);
    check_prefill(g, 1, make_quantized(ae.codec<float>()), 2, lengths, queries, true,
                  rope_mode::none, 1e-3, "quantized<autoencoder>");
}

TEST_CASE("prefill_attention: RoPE on read full attention and an empty chunk", "[kernels]") {
    const kv_geometry g{1, 2, 128};
    check_prefill(g, 1, identity_codec<float>{128}, 4, {33, 16}, {33, 3}, true, rope_mode::on_read,
                  1e-4, "identity<f32>");
    check_prefill(g, 1, identity_codec<f16>{128}, 4, {33, 16}, {5, 0}, false, rope_mode::none,
                  1e-3, "identity<f16>");
    check_prefill(g, 1, identity_codec<float>{128}, 4, {33, 16}, {5, 2}, false,
                  rope_mode::on_read, 1e-4, "identity<f32>");
}

TEST_CASE("prefill_attention: argument errors", "[kernels]") {
    const kv_geometry g{1, 1, 64};
    cuda::device_kv_cache<identity_codec<f16>> dev(dense_layout(g), identity_codec<f16>{64},
                                                   {2, 32, 16, 4});
    const int s = dev.add_sequence();
    kernels::attention_workspace ws;
    cuda::device_buffer<float> q(64 * 4), out(64 * 4);
    attention_params opt;
    opt.n_heads = 1;
    const std::vector<int> seqs{s};
    KVCAR_REQUIRE_ERROR(kernels::prefill_attention(dev, 0, seqs, std::vector<int>{1}, q.data(),
                                                   out.data(), opt, ws),
                        "fewer than its 1 queries");
    KVCAR_REQUIRE_ERROR(kernels::prefill_attention(dev, 0, seqs, std::vector<int>{1, 2}, q.data(),
                                                   out.data(), opt, ws),
                        "1 sequences but 2 query counts");
    cuda::device_buffer<float> k(64 * 3);
    kernels::append(dev, 0, seqs, std::vector<int>{3}, k.data(), k.data());
    opt.n_heads = 0;
    KVCAR_REQUIRE_ERROR(kernels::prefill_attention(dev, 0, seqs, std::vector<int>{2}, q.data(),
                                                   out.data(), opt, ws),
                        "prefill_attention: n_heads 0 is not a positive multiple");
}
