// Tests for kvcar/device/decode.cuh: thread, warp and block decoders against the host codec's
// decode of the same records, for every codec family (identity, affine, autoencoder, a generic
// latent codec, an opaque codec).
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/device/decode.cuh>
#include <kvcar/layout/dense.hpp>

#include <cstdio>
#include <vector>

using namespace kvcar;

namespace user {

/// An opaque codec (no kvcar record format): stores x · 2 as f32.
struct doubling_codec {
    using storage_type = float;
    int width = 0;
    KVCAR_HD int group_width() const { return width; }
    KVCAR_HD int latent_width() const { return width; }
    KVCAR_HD std::size_t bytes_per_group() const { return std::size_t(width) * 4; }
    KVCAR_HD void encode(const float* x, std::byte* out) const {
        float* y = reinterpret_cast<float*>(out);
        for (int i = 0; i < width; ++i) y[i] = 2.0f * x[i];
    }
    KVCAR_HD void decode(const std::byte* in, float* x) const {
        const float* y = reinterpret_cast<const float*>(in);
        for (int i = 0; i < width; ++i) x[i] = 0.5f * y[i];
    }
};
doubling_codec upload_codec(const doubling_codec& c, gpu::parameter_store&) { return c; }

/// A latent codec kvcar knows nothing about: z = reversed x. Wrapped in quantized_codec it has a
/// kvcar record, so tile decoders load z cooperatively and call from_latent per token.
struct reversing_codec {
    using storage_type = float;
    int width = 0;
    KVCAR_HD int group_width() const { return width; }
    KVCAR_HD int latent_width() const { return width; }
    KVCAR_HD std::size_t bytes_per_group() const { return std::size_t(width) * 4; }
    KVCAR_HD void to_latent(const float* x, float* z) const {
        for (int i = 0; i < width; ++i) z[i] = x[width - 1 - i];
    }
    KVCAR_HD void from_latent(const float* z, float* x) const { to_latent(z, x); }
    KVCAR_HD void encode(const float* x, std::byte* out) const {
        to_latent(x, reinterpret_cast<float*>(out));
    }
    KVCAR_HD void decode(const std::byte* in, float* x) const {
        from_latent(reinterpret_cast<const float*>(in), x);
    }
};
reversing_codec upload_codec(const reversing_codec& c, gpu::parameter_store&) { return c; }

}  // namespace user

static_assert(kv_codec<user::doubling_codec>);
static_assert(latent_codec<user::reversing_codec>);
static_assert(device::codec_traits<user::doubling_codec>::family == device::codec_family::opaque);
static_assert(device::codec_traits<quantized_codec<user::reversing_codec>>::family ==
              device::codec_family::latent);

namespace {

constexpr int tile_tokens = 8;
constexpr int max_width = 128;

/// mode 0: thread per token (decode_token); 1: warp (static TempStorage); 2: block (static
/// TempStorage); 3: block (dynamic scratch).
template <class Codec, int MODE>
__global__ void decode_kernel(device::cache_view<Codec> view, int seq, int t0, int n,
                              float* out) {
    using block_t = device::block_decode<Codec, 128, tile_tokens, 64, 64>;
    using warp_t = device::warp_decode<Codec, tile_tokens, 64, 64>;
    extern __shared__ float dynamic_scratch[];
    __shared__ float tile[tile_tokens * max_width];
    const page_view pv = view.slots[0];
    const Codec c = view.codecs[0];
    const int D = c.group_width();
    if constexpr (MODE == 0) {
        const int t = int(threadIdx.x);
        if (t < n) device::decode_token(c, pv.record(seq, t0 + t), out + std::size_t(t) * D);
        return;
    } else if constexpr (MODE == 1) {
        __shared__ typename warp_t::TempStorage temp;
        if (threadIdx.x < 32) warp_t(temp).decode(c, pv, seq, t0, n, tile, D);
    } else if constexpr (MODE == 2) {
        __shared__ typename block_t::TempStorage temp;
        block_t(temp).decode(c, pv, seq, t0, n, tile, D);
    } else {
        block_t(dynamic_scratch).decode(c, pv, seq, t0, n, tile, D);
    }
    __syncthreads();
    for (int i = int(threadIdx.x); i < n * D; i += int(blockDim.x)) out[i] = tile[i];
}

template <class Codec>
void check_decoders(const Codec& codec, double tolerance) {
    const int D = codec.group_width();
    REQUIRE(D <= max_width);
    REQUIRE(device::block_decode<Codec, 128, tile_tokens, 64, 64>::fits(codec));
    const dense_layout layout(kv_geometry{1, 1, D});
    kv_cache<Codec, dense_layout, paged_storage> host(layout, codec, {2, 48, 16, 4});
    const int seq = host.add_sequence();
    kvcar_test::fill_sequence(host, seq, 37, 9);
    gpu::device_kv_cache<Codec> dev(layout, codec, {2, 48, 16, 4});
    dev.copy_from(host);
    const std::size_t scratch = sizeof(float) * device::decode_scratch_floats(codec, tile_tokens);
    for (const int t0 : {0, 13, 32}) {
        const int n = std::min(tile_tokens, 37 - t0);
        std::vector<float> want(std::size_t(n) * D);
        host.read(seq, 0, kv_kind::key, t0, t0 + n, want);
        for (int mode = 0; mode < 4; ++mode) {
            gpu::device_buffer<float> out = kvcar_test::poisoned(want.size());
            switch (mode) {
                case 0: decode_kernel<Codec, 0><<<1, 128>>>(dev.view(), seq, t0, n, out.data()); break;
                case 1: decode_kernel<Codec, 1><<<1, 128>>>(dev.view(), seq, t0, n, out.data()); break;
                case 2: decode_kernel<Codec, 2><<<1, 128>>>(dev.view(), seq, t0, n, out.data()); break;
                default:
                    decode_kernel<Codec, 3><<<1, 128, scratch>>>(dev.view(), seq, t0, n, out.data());
            }
            KVCAR_CUDA_CHECK_LAUNCH("decode_kernel");
            const double err = kvcar_test::relative_error(out.to_host(), want);
            if (err > tolerance) std::printf("decoder mode %d, tokens from %d: error %g\n", mode, t0, err);
            CHECK(err <= tolerance);
        }
    }
}

}  // namespace

TEST_CASE("decoders: identity codecs reproduce the host's floats exactly", "[device]") {
    check_decoders(identity_codec<f16>{64}, 0.0);
    check_decoders(identity_codec<float>{40}, 0.0);
    check_decoders(make_quantized(identity_codec<float>{64}), 1e-6);
    check_decoders(make_quantized<fp8_e4m3>(identity_codec<float>{48}), 1e-6);
}

TEST_CASE("decoders: linear codecs (affine decode in tiles)", "[device]") {
    const linear_params head = kvcar_test::random_linear(64, 24, 1, 1);
    const linear_params odd = kvcar_test::random_linear(96, 13, 3, 2);  // rows not 16-byte aligned
    check_decoders(head.codec<f16>(), 1e-5);
    check_decoders(odd.codec<bf16>(), 1e-5);
    check_decoders(make_quantized<fp8_e4m3>(head.codec<float>()), 1e-5);
}

TEST_CASE("decoders: autoencoder (hidden layer in shared memory)", "[device]") {
    const folded_autoencoder a = kvcar_test::random_autoencoder(64, 48, 32, 3);
    const folded_autoencoder b = kvcar_test::random_autoencoder(100, 37, 11, 4);
    check_decoders(a.codec<f16>(), 1e-5);
    check_decoders(b.codec<float>(), 1e-5);
    check_decoders(make_quantized(a.codec<float>()), 1e-5);
}

TEST_CASE("decoders: codecs kvcar does not know", "[device]") {
    check_decoders(user::doubling_codec{32}, 0.0);
    check_decoders(make_quantized(user::reversing_codec{48}), 1e-6);
}
