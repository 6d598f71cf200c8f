// Tests for kvcar/kernels/append.cuh: batched encode + append on the device writes the records
// the host kv_cache writes for the same tokens (prefill chunks, decode steps, reuse maps, pages).
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/append.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>

#include <cstring>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

namespace {

/// Appends the same steps to a host cache and a device cache and compares every stored record:
/// byte for byte (`bytewise`) or decoded within `tolerance`.
template <class Codec, class Layout>
void check_append(const Layout& layout, const Codec& codec, bool bytewise, double tolerance) {
    const kv_geometry g = layout.geometry();
    const std::size_t width = std::size_t(g.token_width());
    kv_cache<Codec, Layout, paged_storage> host(layout, codec, {4, 80, 16, 24});
    cuda::device_kv_cache<Codec, Layout> dev(layout, codec, {4, 80, 16, 24});
    std::vector<int> seqs;
    for (int i = 0; i < 3; ++i) {
        seqs.push_back(host.add_sequence());
        REQUIRE(dev.add_sequence() == seqs.back());
    }
    // A prefill chunk of different lengths (one empty), then decode steps, then a second chunk.
    const std::vector<std::vector<int>> steps{{17, 0, 33}, {1, 1, 1}, {1, 1, 1}, {15, 16, 2}};
    std::uint32_t seed = 1;
    for (const std::vector<int>& counts : steps) {
        int total = 0;
        for (int c : counts) total += c;
        for (int layer = 0; layer < g.n_layers; ++layer) {
            const std::vector<float> k = random_floats(std::size_t(total) * width, seed++);
            const std::vector<float> v = random_floats(std::size_t(total) * width, seed++);
            std::size_t row = 0;
            for (std::size_t i = 0; i < seqs.size(); ++i) {
                const std::size_t n = std::size_t(counts[i]) * width;
                host.append(seqs[i], layer, std::span<const float>(k).subspan(row, n),
                            std::span<const float>(v).subspan(row, n));
                row += n;
            }
            cuda::device_buffer<float> k_dev(k), v_dev(v);
            kernels::append(dev, layer, seqs, counts, k_dev.data(), v_dev.data());
            KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        }
    }
    for (int seq : seqs) REQUIRE(dev.length(seq) == host.length(seq));
    const int D = layout.heads_per_group() * g.head_dim;
    for (int slot = 0; slot < layout.num_slots(); ++slot) {
        const Codec& c = host.codec(slot);
        const page_view pv = host.view(slot);
        for (int seq : seqs) {
            const int n = host.length(seq);
            const std::vector<std::byte> got = dev.download_records(slot, seq, 0, n);
            std::vector<float> a(static_cast<std::size_t>(D)), b(static_cast<std::size_t>(D));
            for (int t = 0; t < n; ++t) {
                const std::byte* mine = got.data() + std::size_t(t) * pv.record_bytes;
                if (bytewise) {
                    REQUIRE(std::memcmp(mine, pv.record(seq, t), pv.record_bytes) == 0);
                } else {
                    c.decode(mine, a.data());
                    c.decode(pv.record(seq, t), b.data());
                    REQUIRE(kvcar_test::relative_error(a, b) <= tolerance);
                }
            }
        }
    }
}

}  // namespace

TEST_CASE("append: identity records equal the host's across pages and a reuse map", "[kernels]") {
    const kv_geometry g{3, 2, 64};
    check_append(dense_layout(g), identity_codec<f16>{64}, true, 0.0);
    check_append(dense_layout(g, 2), identity_codec<bf16>{128}, true, 0.0);
    const reuse_map map(g, 1, {{1, 0, 0, 0}, {2, 1, 0, 1}}, {{2, 0, 1, 0}});
    check_append(map, identity_codec<float>{64}, true, 0.0);
    check_append(map, make_quantized(identity_codec<float>{64}), true, 0.0);
}

TEST_CASE("append: linear autoencoder and quantized latents", "[kernels]") {
    const kv_geometry g{2, 2, 64};
    const linear_params lin = kvcar_test::random_linear(64, 16, 1, 4);
    check_append(dense_layout(g), lin.codec<float>(), false, 1e-6);
    check_append(dense_layout(g), lin.codec<f16>(), false, 1e-2);
    const folded_autoencoder ae = kvcar_test::random_autoencoder(128, 64, 40, 5);
    check_append(dense_layout(g, 2), ae.codec<float>(), false, 1e-5);
    check_append(dense_layout(g), make_quantized<fp8_e4m3>(lin.codec<float>()), false, 0.1);
}

TEST_CASE("append: a failed plan changes nothing", "[kernels]") {
    const kv_geometry g{1, 1, 64};
    cuda::device_kv_cache<identity_codec<f16>> dev(dense_layout(g), identity_codec<f16>{64},
                                                   {2, 64, 16, 2});
    const int a = dev.add_sequence(), b = dev.add_sequence();
    cuda::device_buffer<float> k(64 * 40), v(64 * 40);
    const std::vector<int> both{a, b};
    KVCAR_REQUIRE_ERROR(kernels::append(dev, 0, both, std::vector<int>{17, 16}, k.data(), v.data()),
                        "out of pages");
    REQUIRE(dev.length(a) == 0);
    REQUIRE(dev.free_pages() == 2);
    kernels::append(dev, 0, both, std::vector<int>{16, 16}, k.data(), v.data());
    REQUIRE(dev.length(b) == 16);
    REQUIRE(dev.free_pages() == 0);
    kernels::append(dev, 0, both, std::vector<int>{0, 0}, k.data(), v.data());  // nothing to do
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
}
