// Tests that a codec registered only in a test header (codec/gain_codec.hpp) runs on the device
// with no edit to kvcar: upload_codec copies its registered tensor, device_kv_cache holds it alone
// or inside an any_codec over an extended list, and the device decoders read its records as the
// host does.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/codec_params.cuh>
#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/device/decode.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>

#include <vector>

#include "codec/gain_codec.hpp"

using namespace kvcar;
using kvcar_test::gain_any_codec;
using kvcar_test::gain_codec;

static_assert(gpu::uploadable_codec<gain_codec<f16>>);
static_assert(gpu::uploadable_codec<gain_any_codec>);
// The device family is read from each codec's registration: the built-in ones name theirs, the
// test codec names none and is decoded per token (opaque), and quantization keeps the family.
static_assert(device::codec_traits<kvcar::identity_codec<f16>>::family == codec_family::identity);
static_assert(device::codec_traits<kvcar::linear_codec<bf16>>::family == codec_family::affine);
static_assert(device::codec_traits<kvcar::autoencoder_codec<float>>::family == codec_family::mlp);
static_assert(device::codec_traits<gain_codec<f16>>::family == codec_family::opaque);
static_assert(device::codec_traits<quantized_codec<linear_codec<float>, std::int8_t>>::family ==
              codec_family::affine);
static_assert(std::is_same_v<device::codec_traits<kvcar::linear_codec<f16>>::element, f16>);

namespace {

/// Decodes tokens [0, n) of slot 0 into `out`, one thread per token.
template <class Codec>
__global__ void decode_tokens(device::cache_view<Codec> view, int seq, int n, float* out) {
    const int t = int(threadIdx.x);
    const Codec c = view.codecs[0];
    if (t < n)
        device::decode_token(c, view.slots[0].record(seq, t),
                             out + std::size_t(t) * std::size_t(c.group_width()));
}

/// Fills a host cache of `codec`, copies it to the device and decodes slot 0 there.
template <class Codec, class Layout>
void check_device_decode(const Layout& layout, const std::vector<Codec>& codecs) {
    const int n = 21;
    kv_cache<Codec, Layout, paged_storage> host(layout, codecs, {1, 32, 16, 4});
    const int seq = host.add_sequence();
    kvcar_test::fill_sequence(host, seq, n, 5);
    gpu::device_kv_cache<Codec, Layout> dev(layout, codecs, {1, 32, 16, 4});
    dev.copy_from(host);
    const int D = codecs[0].group_width();
    const slot_owner o = layout.owner(0);  // the (layer, group, K/V) slot 0 stores
    std::vector<float> want(std::size_t(n) * std::size_t(layout.geometry().token_width()));
    host.read(seq, o.layer, o.kind, 0, n, want);
    gpu::device_buffer<float> out = kvcar_test::poisoned(std::size_t(n) * std::size_t(D));
    decode_tokens<Codec><<<1, 32>>>(dev.view(), seq, n, out.data());
    KVCAR_CUDA_CHECK_LAUNCH("decode_tokens");
    const std::vector<float> got = out.to_host();
    const int W = layout.geometry().token_width();
    for (int t = 0; t < n; ++t)
        for (int i = 0; i < D; ++i)
            REQUIRE(got[std::size_t(t * D + i)] == want[std::size_t(t * W + o.group * D + i)]);
}

}  // namespace

TEST_CASE("a test-only codec uploads and decodes on the device", "[device][traits]") {
    const std::vector<float> gain = kvcar_test::random_floats(16, 7, 0.2f);
    std::vector<float> g(gain);
    for (float& x : g) x += 1.0f;  // away from zero
    const gain_codec<f16> c = {16, 0.5f, g.data()};

    gpu::parameter_store store;
    const gain_codec<f16> up = gpu::upload_codec(c, store);
    REQUIRE(up.gain != c.gain);
    REQUIRE(store.arrays() == 1);
    REQUIRE(store.bytes() == 16 * sizeof(float));
    const gain_any_codec any_up = gpu::upload_codec(gain_any_codec::of(c), store);
    REQUIRE(any_up.as<gain_codec<f16>>().gain == up.gain);  // the same host array, copied once

    const dense_layout dense(kv_geometry{1, 2, 16});
    check_device_decode(dense, std::vector<gain_codec<f16>>(std::size_t(dense.n_slots()), c));
    const reuse_map mixed(kv_geometry{1, 2, 16}, 1, {}, {});
    std::vector<gain_any_codec> codecs;
    for (int s = 0; s < mixed.n_slots(); ++s)
        codecs.push_back(s == 0 ? gain_any_codec::of(c) : gain_any_codec::of(identity_codec<f16>{16}));
    check_device_decode(mixed, codecs);
}
