// Tests for kvcar/cuda/codec_params.cuh: codec parameters copied to the device, views with device
// pointers that decode on the GPU exactly like the host views.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/codec_params.cuh>

#include <cstdint>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

static_assert(gpu::uploadable_codec<identity_codec<f16>>);
static_assert(gpu::uploadable_codec<linear_codec<bf16>>);
static_assert(gpu::uploadable_codec<autoencoder_codec<float>>);
static_assert(gpu::uploadable_codec<quantized_codec<linear_codec<float>, fp8_e4m3>>);

namespace {

/// Thread i decodes record i with codecs[i % n_codecs].
template <class Codec>
__global__ void decode_records(const Codec* codecs, int n_codecs, const std::byte* records,
                               std::size_t record_bytes, int n, float* out) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n) return;
    const Codec& c = codecs[i % n_codecs];
    c.decode(records + std::size_t(i) * record_bytes, out + std::size_t(i) * c.group_width());
}

/// Encodes n random groups on the host with host views, decodes them on the device with the
/// uploaded views, and returns the worst |device - host| decoded value.
template <class Codec>
double device_vs_host(const std::vector<Codec>& host_views, int n) {
    gpu::device_codecs<Codec> dev(host_views);
    REQUIRE(dev.size() == host_views.size());
    const int D = host_views[0].group_width();
    const std::size_t rb = host_views[0].bytes_per_group();
    const std::vector<float> x = random_floats(std::size_t(n) * D, 77);
    std::vector<std::byte> records(std::size_t(n) * rb);
    std::vector<float> want(std::size_t(n) * D);
    for (int i = 0; i < n; ++i) {
        const Codec& c = host_views[std::size_t(i) % host_views.size()];
        c.encode(&x[std::size_t(i) * D], &records[std::size_t(i) * rb]);
        c.decode(&records[std::size_t(i) * rb], &want[std::size_t(i) * D]);
    }
    gpu::device_buffer<std::byte> rec_dev(records);
    gpu::device_buffer<float> out = kvcar_test::poisoned(want.size());
    decode_records<<<(n + 63) / 64, 64>>>(dev.data(), int(dev.size()), rec_dev.data(), rb, n,
                                          out.data());
    KVCAR_CUDA_CHECK_LAUNCH("decode_records");
    return kvcar_test::relative_error(out.to_host(), want);
}

}  // namespace

TEST_CASE("upload_codec: identity has no parameters", "[cuda]") {
    gpu::parameter_store store;
    const identity_codec<bf16> c{48};
    REQUIRE(gpu::upload_codec(c, store).width == 48);
    REQUIRE(store.arrays() == 0);
    KVCAR_REQUIRE_ERROR(gpu::upload_codec(identity_codec<f16>{0}, store), "width must be positive");
}

TEST_CASE("upload_codec: linear views point at device copies; shared arrays are copied once",
          "[cuda]") {
    const linear_params a = kvcar_test::random_linear(32, 8, 2, 1);
    const linear_params b = kvcar_test::random_linear(32, 8, 2, 2);
    gpu::parameter_store store;
    const linear_codec<f16> da = gpu::upload_codec(a.codec<f16>(), store);
    REQUIRE(da.mean != a.mean.data());
    REQUIRE(da.rank == 8);
    REQUIRE(da.heads == 2);
    cudaPointerAttributes attr{};
    KVCAR_CUDA_CHECK(cudaPointerGetAttributes(&attr, da.basis));
    REQUIRE(attr.type == cudaMemoryTypeDevice);
    const linear_codec<float> da2 = gpu::upload_codec(a.codec<float>(), store);
    REQUIRE(da2.basis == da.basis);  // same host array, same device copy
    REQUIRE(store.arrays() == 2);
    gpu::upload_codec(b.codec<f16>(), store);
    REQUIRE(store.arrays() == 4);
    REQUIRE(store.bytes() == 2 * (32 + 32 * 8) * sizeof(float));

    linear_codec<f16> broken = a.codec<f16>();
    broken.basis = nullptr;
    KVCAR_REQUIRE_ERROR(gpu::upload_codec(broken, store), "mean or basis pointer is null");
    broken = a.codec<f16>();
    broken.heads = 3;
    KVCAR_REQUIRE_ERROR(gpu::upload_codec(broken, store), "heads 3 must divide width");
    REQUIRE(store.arrays() == 4);
}

TEST_CASE("device_codecs decode like the host views for every codec", "[cuda]") {
    const linear_params lp = kvcar_test::random_linear(64, 16, 1, 3);
    const linear_params lp2 = kvcar_test::random_linear(64, 16, 1, 4);
    const folded_autoencoder ae = kvcar_test::random_autoencoder(64, 40, 20, 5);
    CHECK(device_vs_host(std::vector<identity_codec<f16>>{{64}}, 100) == 0.0);
    CHECK(device_vs_host(std::vector<linear_codec<f16>>{lp.codec<f16>(), lp2.codec<f16>()},
                         100) <= 1e-5);
    CHECK(device_vs_host(std::vector<autoencoder_codec<bf16>>{ae.codec<bf16>()}, 100) <= 1e-5);
    CHECK(device_vs_host(std::vector<quantized_codec<linear_codec<float>>>{
                             make_quantized(lp.codec<float>())},
                         100) <= 1e-5);
    CHECK(device_vs_host(std::vector<quantized_codec<identity_codec<float>, fp8_e4m3>>{
                             make_quantized<fp8_e4m3>(identity_codec<float>{64})},
                         100) <= 1e-6);
}

TEST_CASE("device_linear_params and device_autoencoder own validated device copies", "[cuda]") {
    const linear_params lp = kvcar_test::random_linear(16, 4, 1, 6);
    const gpu::device_linear_params dl(lp);
    const linear_codec<f16> v = dl.codec<f16>();
    REQUIRE(v.width == 16);
    REQUIRE(v.rank == 4);
    std::vector<float> mean(16);
    KVCAR_CUDA_CHECK(cudaMemcpy(mean.data(), v.mean, 64, cudaMemcpyDeviceToHost));
    REQUIRE(mean == lp.mean);
    linear_params bad = lp;
    bad.basis.pop_back();
    KVCAR_REQUIRE_ERROR(gpu::device_linear_params{bad}, "basis has 63 values");

    const folded_autoencoder ae = kvcar_test::random_autoencoder(16, 12, 6, 7);
    const gpu::device_autoencoder da(ae);
    const autoencoder_codec<float> av = da.codec<float>();
    REQUIRE(av.hidden == 12);
    REQUIRE(av.slope == ae.slope);
    std::vector<float> b2(16);
    KVCAR_CUDA_CHECK(cudaMemcpy(b2.data(), av.dec2_b, 64, cudaMemcpyDeviceToHost));
    REQUIRE(b2 == ae.dec2_b);
    folded_autoencoder bad_ae = ae;
    bad_ae.dec1_b.push_back(0.0f);
    KVCAR_REQUIRE_ERROR(gpu::device_autoencoder{bad_ae}, "dec1_b has 13 values");
}
