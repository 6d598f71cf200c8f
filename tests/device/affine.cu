// Tests for kvcar/device/affine.cuh: latent-space attention pieces (query projection, latent
// dot products, lift) against the host codec's project_query / lift and against decoding.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/codec_params.cuh>
#include <kvcar/device/affine.cuh>

#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

static_assert(device::linear_core_codec<linear_codec<f16>>);
static_assert(device::linear_core_codec<quantized_codec<linear_codec<float>, fp8_e4m3>>);
static_assert(!device::linear_core_codec<autoencoder_codec<f16>>);
static_assert(!device::linear_core_codec<identity_codec<f16>>);

namespace {

/// Block h: qz_h = P_hᵀ q_h with its bias; then for every record, score = qz·z + bias; then the
/// lift of the weighted latent sum with weights w.
template <class Codec>
__global__ void latent_attention_pieces(Codec c, const float* q, const std::byte* records,
                                        std::size_t record_bytes, int n_records, const float* w,
                                        float* qz_out, float* bias_out, float* scores,
                                        float* lifted) {
    __shared__ float qz[256];
    __shared__ float zsum[256];
    const int head = int(blockIdx.x);
    const int hd = c.head_dim(), d = c.latent_width();
    const device::block_scope<64> blk;
    const float bias = device::project_query(blk, c, q + head * hd, head, qz);
    for (int j = int(threadIdx.x); j < d; j += 64) {
        qz_out[head * d + j] = qz[j];
        zsum[j] = 0.0f;
    }
    if (threadIdx.x == 0) bias_out[head] = bias;
    __syncthreads();
    float wsum = 0.0f;
    for (int t = 0; t < n_records; ++t) wsum += w[t];
    if (threadIdx.x == 0) {
        for (int t = 0; t < n_records; ++t) {
            const device::latent_record<Codec> z(c, records + std::size_t(t) * record_bytes);
            scores[head * n_records + t] = device::latent_dot(z, qz, d) + bias;
            device::accumulate_latent(z, w[t], zsum, d);
        }
    }
    __syncthreads();
    device::lift(blk, c, zsum, wsum, head, lifted + head * hd);
}

template <class HostCodec, class DeviceCodec>
void check_affine(const HostCodec& host, const DeviceCodec& dev) {
    const int heads = host.group_width() / host.head_dim();
    const int hd = host.head_dim(), d = host.latent_width(), D = host.group_width();
    const int n = 9;
    const std::size_t rb = host.bytes_per_group();
    const std::vector<float> x = random_floats(std::size_t(n) * D, 5);
    const std::vector<float> q = random_floats(std::size_t(D), 6);
    const std::vector<float> w = random_floats(std::size_t(n), 7, 0.5f);
    std::vector<std::byte> records(std::size_t(n) * rb);
    for (int t = 0; t < n; ++t) host.encode(&x[std::size_t(t) * D], &records[std::size_t(t) * rb]);

    gpu::device_buffer<float> q_dev(q), w_dev(w);
    gpu::device_buffer<std::byte> rec_dev(records);
    gpu::device_buffer<float> qz = kvcar_test::poisoned(std::size_t(heads) * d);
    gpu::device_buffer<float> bias = kvcar_test::poisoned(static_cast<std::size_t>(heads));
    gpu::device_buffer<float> scores = kvcar_test::poisoned(std::size_t(heads) * n);
    gpu::device_buffer<float> lifted = kvcar_test::poisoned(static_cast<std::size_t>(D));
    latent_attention_pieces<<<heads, 64>>>(dev, q_dev.data(), rec_dev.data(), rb, n, w_dev.data(),
                                           qz.data(), bias.data(), scores.data(), lifted.data());
    KVCAR_CUDA_CHECK_LAUNCH("latent_attention_pieces");

    std::vector<float> want_qz(std::size_t(heads) * d), want_bias(static_cast<std::size_t>(heads));
    std::vector<float> want_scores(std::size_t(heads) * n), want_lift(static_cast<std::size_t>(D));
    std::vector<float> decoded(static_cast<std::size_t>(D)), zsum(static_cast<std::size_t>(d));
    for (int h = 0; h < heads; ++h) {
        want_bias[std::size_t(h)] =
            host.project_query(&q[std::size_t(h) * hd], h, &want_qz[std::size_t(h) * d]);
        std::fill(zsum.begin(), zsum.end(), 0.0f);
        float wsum = 0.0f;
        for (int t = 0; t < n; ++t) {
            // The score through the decoded key must equal the latent-space score.
            host.decode(&records[std::size_t(t) * rb], decoded.data());
            double s = 0.0;
            for (int r = 0; r < hd; ++r)
                s += double(q[std::size_t(h) * hd + r]) * decoded[std::size_t(h) * hd + r];
            want_scores[std::size_t(h) * n + t] = float(s);
            for (int j = 0; j < d; ++j) {
                const float z = kvcar_test::host_latent(host, &records[std::size_t(t) * rb], j);
                zsum[std::size_t(j)] += w[std::size_t(t)] * z;
            }
            wsum += w[std::size_t(t)];
        }
        host.lift(zsum.data(), wsum, h, &want_lift[std::size_t(h) * hd]);
    }
    CHECK(kvcar_test::relative_error(qz.to_host(), want_qz) <= 1e-5);
    CHECK(kvcar_test::relative_error(bias.to_host(), want_bias) <= 1e-5);
    CHECK(kvcar_test::relative_error(scores.to_host(), want_scores) <= 1e-4);
    CHECK(kvcar_test::relative_error(lifted.to_host(), want_lift) <= 1e-5);
}

}  // namespace

TEST_CASE("affine helpers: projection latent scores and lift match the host codec", "[device]") {
    const linear_params per_head = kvcar_test::random_linear(64, 20, 1, 1);
    const linear_params layer = kvcar_test::random_linear(128, 48, 4, 2);
    const linear_params odd = kvcar_test::random_linear(30, 7, 2, 3);
    gpu::parameter_store store;
    check_affine(per_head.codec<f16>(), gpu::upload_codec(per_head.codec<f16>(), store));
    check_affine(layer.codec<float>(), gpu::upload_codec(layer.codec<float>(), store));
    check_affine(odd.codec<bf16>(), gpu::upload_codec(odd.codec<bf16>(), store));
    const auto q8 = make_quantized(layer.codec<float>());
    check_affine(q8, gpu::upload_codec(q8, store));
    const auto f8 = make_quantized<fp8_e4m3>(per_head.codec<float>());
    check_affine(f8, gpu::upload_codec(f8, store));
}
