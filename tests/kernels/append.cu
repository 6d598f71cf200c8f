// Tests for kvcar/kernels/append.cuh: batched encode + append on the device writes the records
// the host kv_cache writes for the same tokens (prefill chunks, decode steps, reuse maps, pages),
// and its two kernels (tiled for linear codecs, warp per record) write the same bytes.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/append.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

namespace {

/// The largest |device − host| that latent element j of a record may show when the host and
/// the device encode the same token. Both compute the fp32 latent (in different orders, so the
/// two agree within fp32_slack of the record's range) and round it to the stored format; where
/// the two fp32 values straddle a rounding boundary they land one unit apart, and no further:
///   f16 / bf16 / f32 latents: one ulp = 2u·|z| (u = 2^-11, 2^-8, 2^-24);
///   int8 (min-max per record): one step = scale;
///   fp8 e4m3 (z = fp8(q)·scale + offset): one ulp of the scaled value = 2^-3·|z − offset|.
/// A scale 10% off moves most elements by far more than that, so it fails here.
template <class Codec>
double latent_bound(const Codec& c, const std::byte* host_record, int j, double fp32_slack) {
    const int d = c.latent_width();
    double range = 0.0;
    for (int i = 0; i < d; ++i)
        range = std::max(range, std::fabs(double(kvcar_test::host_latent(c, host_record, i))));
    const double z = kvcar_test::host_latent(c, host_record, j);
    const double slack = fp32_slack * range + 1e-30;
    if constexpr (kvcar_test::has_dequantize<Codec>) {
        float scale = 0.0f, offset = 0.0f;
        std::memcpy(&scale, host_record + c.scale_offset_bytes(), sizeof scale);
        std::memcpy(&offset, host_record + c.scale_offset_bytes() + sizeof scale, sizeof offset);
        if constexpr (std::is_same_v<typename Codec::storage_type, std::int8_t>)
            return double(scale) * (1.0 + 1e-5) + slack;
        else
            return 2.0 * kvcar_test::fp8_e4m3_unit_roundoff * std::fabs(z - double(offset)) +
                   0x1p-9 * double(scale) + slack;  // + fp8's step near 0 (2^-9), scaled
    } else {
        using T = typename Codec::storage_type;
        const double u = std::is_same_v<T, f16>    ? kvcar_test::f16_unit_roundoff
                         : std::is_same_v<T, bf16> ? kvcar_test::bf16_unit_roundoff
                                                   : 0x1p-24;
        return 2.0 * u * std::fabs(z) + slack;
    }
}

/// Appends the same steps to a host cache and a device cache and compares every stored record:
/// byte for byte (`bytewise`), or latent element by latent element within latent_bound (the
/// stored format's rounding; fp32_slack: how far the host's and the device's fp32 encoders may
/// differ, relative to the record's range).
template <class Codec, class Layout>
void check_append(const Layout& layout, const Codec& codec, bool bytewise, double fp32_slack) {
    const kv_geometry g = layout.geometry();
    const std::size_t width = std::size_t(g.token_width());
    kv_cache<Codec, Layout, paged_storage> host(layout, codec, {4, 80, 16, 24});
    gpu::device_kv_cache<Codec, Layout> dev(layout, codec, {4, 80, 16, 24});
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
            gpu::device_buffer<float> k_dev(k), v_dev(v);
            kernels::append(dev, layer, seqs, counts, k_dev.data(), v_dev.data());
            KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        }
    }
    for (int seq : seqs) REQUIRE(dev.length(seq) == host.length(seq));
    for (int slot = 0; slot < layout.n_slots(); ++slot) {
        const Codec& c = host.codec(slot);
        const page_view pv = host.view(slot);
        for (int seq : seqs) {
            const int n = host.length(seq);
            const std::vector<std::byte> got = dev.download_records(slot, seq, 0, n);
            double worst = 0.0;  // in units of the bound
            for (int t = 0; t < n; ++t) {
                const std::byte* mine = got.data() + std::size_t(t) * pv.record_bytes;
                const std::byte* theirs = pv.record(seq, t);
                if (bytewise) {
                    REQUIRE(std::memcmp(mine, theirs, pv.record_bytes) == 0);
                    continue;
                }
                for (int j = 0; j < c.latent_width(); ++j) {
                    const double diff = std::fabs(double(kvcar_test::host_latent(c, mine, j)) -
                                                  double(kvcar_test::host_latent(c, theirs, j)));
                    const double bound = latent_bound(c, theirs, j, fp32_slack);
                    worst = std::max(worst, diff / bound);
                    if (diff > bound) {
                        std::printf("append: slot %d seq %d token %d latent %d: device %.9g host "
                                    "%.9g, |diff| %.3g > bound %.3g\n",
                                    slot, seq, t, j, double(kvcar_test::host_latent(c, mine, j)),
                                    double(kvcar_test::host_latent(c, theirs, j)), diff, bound);
                        REQUIRE(diff <= bound);
                    }
                }
            }
            if (!bytewise && worst > 0.0)
                std::printf("append: slot %d seq %d worst |diff| / bound %.3f\n", slot, seq, worst);
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
    // fp32_slack: the fp32 encoders (a dot product of 64 terms; the autoencoder's two layers)
    // agree within ~1e-6 of the latent's range; the stored format's rounding is latent_bound's.
    check_append(dense_layout(g), lin.codec<float>(), false, 1e-6);
    check_append(dense_layout(g), lin.codec<f16>(), false, 1e-6);
    check_append(dense_layout(g), lin.codec<bf16>(), false, 1e-6);
    const folded_autoencoder ae = kvcar_test::random_autoencoder(128, 64, 40, 5);
    check_append(dense_layout(g, 2), ae.codec<float>(), false, 1e-5);
    check_append(dense_layout(g), make_quantized<fp8_e4m3>(lin.codec<float>()), false, 1e-6);
    check_append(dense_layout(g), make_quantized<std::int8_t>(lin.codec<float>()), false, 1e-6);
}

namespace {

/// Appends the same steps to two device caches, one through kernels::append (linear codecs take
/// the tiled kernel) and one through the warp-per-record kernel, and compares every record byte
/// for byte: both sum in the host codec's order with the same roundings.
template <class Codec, class Layout>
void check_tiles_match_warps(const Layout& layout, const std::vector<Codec>& codecs) {
    const kv_geometry g = layout.geometry();
    const std::size_t width = std::size_t(g.token_width());
    const typename gpu::device_kv_cache<Codec, Layout>::params sizes{4, 256, 16, 64};
    gpu::device_kv_cache<Codec, Layout> tiled(layout, codecs, sizes), warps(layout, codecs, sizes);
    REQUIRE(kernels::detail::append_affine_tiles_supported(tiled.view(),
                                                           tiled.max_latent_width()));
    std::vector<int> seqs;
    for (int i = 0; i < 3; ++i) {
        seqs.push_back(tiled.add_sequence());
        REQUIRE(warps.add_sequence() == seqs.back());
    }
    // Chunks longer than one 32-row tile, ending mid-tile; a decode step; an empty item.
    const std::vector<std::vector<int>> steps{{70, 1, 33}, {1, 1, 1}, {40, 0, 9}};
    std::uint32_t seed = 100;
    for (const std::vector<int>& counts : steps) {
        int total = 0;
        for (int c : counts) total += c;
        for (int layer = 0; layer < g.n_layers; ++layer) {
            const gpu::device_buffer<float> k(random_floats(std::size_t(total) * width, seed++));
            const gpu::device_buffer<float> v(random_floats(std::size_t(total) * width, seed++));
            kernels::append(tiled, layer, seqs, counts, k.data(), v.data());
            // The same append by hand, through the warp kernel.
            const std::vector<std::int32_t> positions =
                warps.prepare_append(layer, seqs, counts, nullptr);
            std::vector<std::int32_t> host{0};
            for (int c : counts) host.push_back(host.back() + c);
            host.insert(host.end(), seqs.begin(), seqs.end());
            host.insert(host.end(), positions.begin(), positions.end());
            const gpu::device_buffer<std::int32_t> ints(host);
            kernels::append_params p;
            p.k = k.data();
            p.v = v.data();
            p.token_offsets = ints.data();
            p.sequences = ints.data() + seqs.size() + 1;
            p.positions = ints.data() + 2 * seqs.size() + 1;
            p.batch = int(seqs.size());
            p.total_tokens = total;
            p.layer = layer;
            kernels::detail::launch_append_warps(warps.view(), p, warps.max_latent_width(),
                                                 nullptr);
            KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        }
    }
    for (int slot = 0; slot < layout.n_slots(); ++slot) {
        for (int seq : seqs) {
            const int n = tiled.length(seq);
            REQUIRE(n == warps.length(seq));
            REQUIRE(tiled.download_records(slot, seq, 0, n) ==
                    warps.download_records(slot, seq, 0, n));
        }
    }
}

}  // namespace

TEST_CASE("append: the tiled linear kernel writes the warp kernel's bytes", "[kernels]") {
    // Whole-layer groups (4 heads of 64, the latent attention's shape) and a reused key slot;
    // per-slot ranks differ, so the widest one sets the latent stride in shared memory.
    const kv_geometry g{2, 4, 64};
    const reuse_map map(g, 4, {{1, 0, 0, 0}}, {});
    std::vector<linear_codec<f16>> plain;
    std::vector<quantized_codec<linear_codec<float>, std::int8_t>> int8;
    std::vector<quantized_codec<linear_codec<float>, fp8_e4m3>> fp8;
    std::vector<linear_params> params;  // owns the codecs' tensors
    params.reserve(std::size_t(map.n_slots()));
    for (int slot = 0; slot < map.n_slots(); ++slot) {
        params.push_back(kvcar_test::random_linear(256, slot % 2 ? 40 : 64, 4, 7u + 2u * slot));
        plain.push_back(params.back().codec<f16>());
        int8.push_back(make_quantized<std::int8_t>(params.back().codec<float>()));
        fp8.push_back(make_quantized<fp8_e4m3>(params.back().codec<float>()));
    }
    check_tiles_match_warps(map, plain);
    check_tiles_match_warps(map, int8);
    check_tiles_match_warps(map, fp8);
    // Per-head groups (64 wide, rank 16): many groups per launch.
    const linear_params head = kvcar_test::random_linear(64, 16, 1, 3);
    check_tiles_match_warps(dense_layout(g),
                            std::vector(std::size_t(dense_layout(g).n_slots()),
                                        make_quantized<std::int8_t>(head.codec<float>())));
}

TEST_CASE("append: a failed plan changes nothing", "[kernels]") {
    const kv_geometry g{1, 1, 64};
    gpu::device_kv_cache<identity_codec<f16>> dev(dense_layout(g), identity_codec<f16>{64},
                                                   {2, 64, 16, 2});
    const int a = dev.add_sequence(), b = dev.add_sequence();
    gpu::device_buffer<float> k(64 * 40), v(64 * 40);
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
