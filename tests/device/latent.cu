// Tests for kvcar/device/latent.cuh: element conversions, latent_record and the cooperative
// latent loader (16-, 8-, 4-byte and element-wise paths) against the host codecs.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/device/latent.cuh>
#include <kvcar/layout/dense.hpp>

#include <cstring>
#include <vector>

using namespace kvcar;

static_assert(device::has_latent_record<identity_codec<f16>>);
static_assert(device::has_latent_record<quantized_codec<linear_codec<f16>, fp8_e4m3>>);
static_assert(device::codec_traits<quantized_codec<autoencoder_codec<float>>>::family ==
              device::codec_family::mlp);
static_assert(device::codec_traits<linear_codec<bf16>>::family == device::codec_family::affine);

namespace {

template <class T>
__global__ void convert_all(const T* in, float* out, int n) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) out[i] = device::load_float(in[i]);
}

template <class T>
void check_all_patterns(int n, float (*host)(T)) {
    std::vector<T> in(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) std::memcpy(&in[std::size_t(i)], &i, sizeof(T));
    gpu::device_buffer<T> d_in(in);
    gpu::device_buffer<float> d_out = kvcar_test::poisoned(static_cast<std::size_t>(n));
    convert_all<<<(n + 255) / 256, 256>>>(d_in.data(), d_out.data(), n);
    KVCAR_CUDA_CHECK_LAUNCH("convert_all");
    const std::vector<float> got = d_out.to_host();
    for (int i = 0; i < n; ++i) {
        const float want = host(in[std::size_t(i)]);
        if (std::isnan(want)) {
            REQUIRE(std::isnan(got[std::size_t(i)]));
        } else {
            REQUIRE(got[std::size_t(i)] == want);
        }
    }
}

/// Block (or warp, WARP) loads [first, first + count) of tokens [t0, t0 + n) to shared memory and
/// copies the tile out.
template <bool WARP, class Codec>
__global__ void load_tile(device::cache_view<Codec> view, int seq, int t0, int n, int first,
                          int count, float* out) {
    __shared__ float tile[16 * 200];
    const page_view pv = view.slots[0];
    const Codec c = view.codecs[0];
    if constexpr (WARP) {
        if (threadIdx.x >= 32) return;
        device::load_latents(device::warp_scope{}, c, pv, seq, t0, n, first, count, tile, count);
        __syncwarp();
    } else {
        device::load_latents(device::block_scope<128>{}, c, pv, seq, t0, n, first, count, tile,
                             count);
        __syncthreads();
    }
    for (int i = int(threadIdx.x); i < n * count; i += int(blockDim.x)) out[i] = tile[i];
}

template <class Codec>
void check_loader(const Codec& codec, int first, int count) {
    const int D = codec.group_width();
    const kv_geometry g{1, 1, D};
    const dense_layout layout(g);
    kv_cache<Codec, dense_layout, paged_storage> host(layout, codec, {2, 64, 16, 8});
    const int seq = host.add_sequence();
    kvcar_test::fill_sequence(host, seq, 40, 3);
    gpu::device_kv_cache<Codec> dev(layout, codec, {2, 64, 16, 8});
    dev.copy_from(host);
    for (const int t0 : {0, 13, 30}) {
        const int n = std::min(16, 40 - t0);
        gpu::device_buffer<float> out = kvcar_test::poisoned(std::size_t(n) * count);
        for (const bool warp : {false, true}) {
            if (warp)
                load_tile<true><<<1, 128>>>(dev.view(), seq, t0, n, first, count, out.data());
            else
                load_tile<false><<<1, 128>>>(dev.view(), seq, t0, n, first, count, out.data());
            KVCAR_CUDA_CHECK_LAUNCH("load_tile");
            const std::vector<float> got = out.to_host();
            for (int t = 0; t < n; ++t)
                for (int e = 0; e < count; ++e) {
                    const float want =
                        kvcar_test::host_latent(codec, host.view(0).record(seq, t0 + t), first + e);
                    // quantized: device fuses v * scale + offset into one FMA
                    REQUIRE(got[std::size_t(t) * count + e] ==
                            Approx(want).margin(1e-6).epsilon(1e-6));
                }
        }
    }
}

}  // namespace

TEST_CASE("load_float equals the host conversions for every bit pattern", "[device]") {
    check_all_patterns<f16>(65536, [](f16 x) { return to_float(x); });
    check_all_patterns<bf16>(65536, [](bf16 x) { return to_float(x); });
    check_all_patterns<fp8_e4m3>(256, [](fp8_e4m3 x) { return to_float(x); });
    check_all_patterns<std::int8_t>(256, [](std::int8_t x) { return float(x) + 0.5f; });
}

TEST_CASE("load_latents: wide loads where records allow element loads where they do not",
          "[device]") {
    check_loader(identity_codec<f16>{64}, 0, 64);        // 16-byte pieces
    check_loader(identity_codec<f16>{64}, 8, 32);        // 16-byte pieces of a slice
    check_loader(identity_codec<f16>{12}, 0, 12);        // 24-byte records: 8-byte pieces
    check_loader(identity_codec<float>{5}, 0, 5);        // 20-byte records: 4-byte pieces
    check_loader(identity_codec<bf16>{64}, 3, 7);        // odd slice: element by element
    check_loader(make_quantized(identity_codec<float>{64}), 0, 64);            // 72 B: 8-byte
    check_loader(make_quantized(identity_codec<float>{13}), 0, 13);            // elementwise
    check_loader(make_quantized<fp8_e4m3>(identity_codec<float>{20}), 0, 20);  // 4-byte
    check_loader(make_quantized<fp8_e4m3>(identity_codec<float>{128}), 16, 64);  // 136 B: 8-byte
}
