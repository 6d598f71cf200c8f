// Tests for kvcar/device/encode.cuh: a warp's record equals the host codec's record (identity and
// quantized identity byte for byte), or decodes to the same floats within float rounding.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/codec_params.cuh>
#include <kvcar/device/encode.cuh>

#include <cstring>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

namespace {

/// Warp w of the block encodes group w.
template <class Codec>
__global__ void encode_groups(Codec c, const float* x, int n, std::byte* records,
                              std::size_t record_bytes, int scratch_floats) {
    extern __shared__ float scratch[];
    const int warp = int(threadIdx.x) >> 5;
    const int group = int(blockIdx.x) * 4 + warp;
    if (group >= n) return;
    device::warp_encode(c, x + std::size_t(group) * c.group_width(),
                        records + std::size_t(group) * record_bytes,
                        scratch + warp * scratch_floats);
}

template <class Codec>
void check_encode(const Codec& host, bool bytewise, double tolerance) {
    gpu::parameter_store store;
    const Codec dev = gpu::upload_codec(host, store);
    const int n = 37, D = host.group_width();
    const std::size_t rb = host.bytes_per_group();
    std::vector<float> x = random_floats(std::size_t(n) * D, 3, 2.0f);
    for (int i = 0; i < D; ++i) x[std::size_t(5 * D + i)] = 1.25f;  // a constant group
    std::vector<std::byte> want(std::size_t(n) * rb, std::byte{0});
    for (int g = 0; g < n; ++g) host.encode(&x[std::size_t(g) * D], &want[std::size_t(g) * rb]);

    gpu::device_buffer<float> x_dev(x);
    gpu::device_buffer<std::byte> rec(want.size());
    rec.fill_bytes(0);
    const int per_warp = device::encode_scratch_floats(host);
    encode_groups<<<(n + 3) / 4, 128, sizeof(float) * 4 * std::max(per_warp, 1)>>>(
        dev, x_dev.data(), n, rec.data(), rb, per_warp);
    KVCAR_CUDA_CHECK_LAUNCH("encode_groups");
    const std::vector<std::byte> got = rec.to_host();
    if (bytewise) {
        REQUIRE(std::memcmp(got.data(), want.data(), want.size()) == 0);
        return;
    }
    std::vector<float> a(std::size_t(n) * D), b(std::size_t(n) * D);
    for (int g = 0; g < n; ++g) {
        host.decode(&got[std::size_t(g) * rb], &a[std::size_t(g) * D]);
        host.decode(&want[std::size_t(g) * rb], &b[std::size_t(g) * D]);
    }
    CHECK(kvcar_test::relative_error(a, b) <= tolerance);
}

}  // namespace

TEST_CASE("warp_encode: identity and quantized identity records are bit-identical", "[device]") {
    check_encode(identity_codec<f16>{64}, true, 0.0);
    check_encode(identity_codec<bf16>{100}, true, 0.0);
    check_encode(identity_codec<float>{33}, true, 0.0);
    check_encode(make_quantized(identity_codec<float>{64}), true, 0.0);
    check_encode(make_quantized<fp8_e4m3>(identity_codec<float>{45}), true, 0.0);
}

TEST_CASE("warp_encode: linear and autoencoder latents match the host's", "[device]") {
    const linear_params lin = kvcar_test::random_linear(64, 24, 1, 1);
    const linear_params layer = kvcar_test::random_linear(128, 70, 2, 2);
    const folded_autoencoder ae = kvcar_test::random_autoencoder(64, 48, 32, 3);
    // f32 latents rounded step by step in the host's order: equal unless the host used FMA.
    check_encode(lin.codec<float>(), false, 1e-6);
    check_encode(layer.codec<f16>(), false, 1e-3);  // an f16 rounding may flip
    check_encode(ae.codec<float>(), false, 1e-5);
    check_encode(ae.codec<bf16>(), false, 1e-2);
    // Quantized: a latent off by one float ulp can land one int8 level away: half a scale step.
    check_encode(make_quantized(lin.codec<float>()), false, 5e-2);
    check_encode(make_quantized<fp8_e4m3>(ae.codec<float>()), false, 0.1);
}
