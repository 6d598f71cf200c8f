// Tests for kvcar/kernels/decode_attention.cuh: every codec, layout and head arrangement against
// kvcar::reference_decode_attention on the CPU, reading the very same records (the host cache is
// filled, then copied byte for byte into the device cache).
#include "kernels/decode_check.cuh"
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/append.cuh>
#include <kvcar/kernels/decode_attention.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>
#include <kvcar/reference/attention.hpp>

#include <algorithm>
#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

namespace {

struct shape {
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int n_heads;
    int heads_per_group = 1;
};

template <class Codec, class Layout>
struct test_caches {
    kv_cache<Codec, Layout, paged_storage> host;
    kvcar::gpu::device_kv_cache<Codec, Layout> device;
    std::vector<int> sequences;  // in the order they are queried
};

/// Host and device caches holding the same records; sequences of the given lengths (0 = a live
/// but empty sequence) are created in order.
template <class Codec, class Layout>
test_caches<Codec, Layout> make_caches(const Layout& layout, const std::vector<Codec>& codecs,
                                       const std::vector<int>& lengths, std::uint32_t seed,
                                       int device_page_size = 16) {
    int max_len = 1, pages = 0;
    for (int len : lengths) {
        max_len = std::max(max_len, len);
        pages += (len + 15) / 16;
    }
    const int n = int(lengths.size());
    test_caches<Codec, Layout> c{
        kv_cache<Codec, Layout, paged_storage>(layout, codecs, {n + 1, max_len, 16, pages + 4}),
        kvcar::gpu::device_kv_cache<Codec, Layout>(
            layout, codecs,
            {n + 2, max_len + 8, device_page_size,
             (pages + 9) * 16 / device_page_size + n + 2}),
        {}};
    // Interleaved creation and a removed sequence: page ids are not in sequence order.
    const int spare = c.host.add_sequence();
    for (int i = 0; i < n; ++i) {
        const int seq = c.host.add_sequence();
        c.sequences.push_back(seq);
        kvcar_test::fill_sequence(c.host, seq, lengths[std::size_t(i)] / 2, seed + 17u * seq);
        kvcar_test::fill_sequence(c.host, spare, 3, seed + 999u + std::uint32_t(i));
    }
    for (int i = 0; i < n; ++i) {
        const int seq = c.sequences[std::size_t(i)];
        const int rest = lengths[std::size_t(i)] - c.host.length(seq);
        kvcar_test::fill_sequence(c.host, seq, rest, seed + 31u * seq + 5u, 5);
    }
    c.host.remove_sequence(spare);
    c.device.copy_from(c.host);
    return c;
}

/// Runs decode attention on the device for every sequence and layer and returns the worst
/// relative error against the CPU reference (empty sequences must give exact zeros).
template <class Codec, class Layout>
double decode_error(test_caches<Codec, Layout>& c, const attention_params& opt,
                    kernels::attention_workspace& ws, std::uint32_t seed) {
    const kv_geometry g = c.host.geometry();
    const int batch = int(c.sequences.size());
    const std::size_t q_width = std::size_t(opt.n_heads) * g.head_dim;
    double worst = 0.0;
    for (int layer = 0; layer < g.n_layers; ++layer) {
        const std::vector<float> q = random_floats(q_width * batch, seed + 7u * layer);
        kvcar::gpu::device_buffer<float> q_dev(q);
        kvcar::gpu::device_buffer<float> out_dev = kvcar_test::poisoned(q.size());
        kernels::decode_attention(c.device, layer, c.sequences, q_dev.data(), out_dev.data(), opt,
                                  ws);
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<float> got = out_dev.to_host();
        std::vector<float> want(q.size(), 0.0f);
        for (int b = 0; b < batch; ++b) {
            const int seq = c.sequences[std::size_t(b)];
            if (c.host.length(seq, layer) == 0) continue;  // defined as zeros
            reference_decode_attention(
                c.host, seq, layer, opt,
                std::span<const float>(q).subspan(std::size_t(b) * q_width, q_width),
                std::span<float>(want).subspan(std::size_t(b) * q_width, q_width));
        }
        for (int b = 0; b < batch; ++b) {
            if (c.host.length(c.sequences[std::size_t(b)], layer) != 0) continue;
            for (std::size_t i = 0; i < q_width; ++i)
                REQUIRE(got[std::size_t(b) * q_width + i] == 0.0f);
        }
        worst = std::max(worst,
                         kvcar_test::row_relative_error(got, want, std::size_t(g.head_dim)));
    }
    return worst;
}

const std::vector<int> boundary_lengths{1, 15, 16, 17, 100, 0, 33};

template <class Codec>
double check_dense(const shape& s, const Codec& codec, double tolerance, const char* name,
                   const std::vector<int>& lengths = boundary_lengths,
                   rope_mode rope = rope_mode::none, int device_page_size = 16,
                   bool* tensor_cores = nullptr) {
    const kv_geometry g{s.n_layers, s.n_kv_heads, s.head_dim};
    const dense_layout layout(g, s.heads_per_group);
    auto caches = make_caches(layout, std::vector<Codec>(std::size_t(layout.n_slots()), codec),
                              lengths, 11u, device_page_size);
    attention_params opt;
    opt.n_heads = s.n_heads;
    opt.rope = rope;
    opt.rope_cfg.theta = 500.0f;  // small theta: the rotation varies a lot over 100 tokens
    kernels::attention_workspace ws;
    const double err = decode_error(caches, opt, ws, 3u);
    std::printf("decode_attention %-28s H%-2d KV%d hd%-3d hpg%d%s page%d: rel err %.2e (splits %d, "
                "chunk %d, %s)\n",
                name, s.n_heads, s.n_kv_heads, s.head_dim, s.heads_per_group,
                rope == rope_mode::on_read ? " rope" : "", device_page_size, err, ws.last_splits,
                ws.last_chunk, kernels::to_string(ws.last_path));
    CHECK(err <= tolerance);
    if (tensor_cores) *tensor_cores = ws.last_path == kernels::decode_path::direct_tensor_cores;
    return err;
}

}  // namespace

TEST_CASE("decode_attention: identity f32 matches the reference to float rounding", "[kernels]") {
    const identity_codec<float> c128{128}, c64{64};
    check_dense({2, 2, 128, 8}, c128, 1e-5, "identity<f32> GQA 8/2");
    check_dense({1, 4, 128, 32}, c128, 1e-5, "identity<f32> GQA 32/4");
    check_dense({1, 4, 64, 4}, c64, 1e-5, "identity<f32> MHA");
    // head_dim 32: no direct kernel, the generic decoded path.
    check_dense({1, 2, 32, 4}, identity_codec<float>{32}, 1e-5, "identity<f32> hd32 (generic)");
}

TEST_CASE("decode_attention: identity f16 and bf16", "[kernels]") {
    check_dense({2, 2, 128, 8}, identity_codec<f16>{128}, 1e-3, "identity<f16> GQA 8/2");
    check_dense({1, 4, 64, 32}, identity_codec<f16>{64}, 1e-3, "identity<f16> GQA 32/4");
    check_dense({1, 4, 64, 4}, identity_codec<bf16>{64}, 1e-3, "identity<bf16> MHA");
    check_dense({1, 2, 128, 2}, identity_codec<bf16>{128}, 1e-3, "identity<bf16> MHA hd128");
    // Whole-layer groups: each KV head reads its slice of a wider record.
    check_dense({1, 4, 64, 8, 4}, identity_codec<f16>{256}, 1e-3, "identity<f16> layer group");
}

TEST_CASE("decode_attention: GQA f16 and int8 heads on tensor cores", "[kernels]") {
    // Every (head_dim, query heads per KV head) the tensor-core direct kernel takes, odd lengths
    // and page boundaries; page size 8 takes its per-token record lookup instead of per-tile.
    const auto i8_64 = make_quantized<std::int8_t>(identity_codec<float>{64});
    const auto i8_128 = make_quantized<std::int8_t>(identity_codec<float>{128});
    const std::vector<int> lengths{1, 15, 16, 17, 100, 0, 33, 64, 65, 1000};
    for (int page : {16, 8, 48}) {
        // G = 1 is MHA: on tensor cores unless built with KVCAR_DIRECT_MMA_MIN_GQA=2.
        for (int G : {1, 2, 4, 8}) {
            const bool expect_tc = G >= kernels::detail::direct_mma_min_gqa;
            bool tc = false;
            check_dense({1, 2, 64, 2 * G}, identity_codec<f16>{64}, 2e-3, "identity<f16> tc",
                        lengths, rope_mode::none, page, &tc);
            CHECK(tc == expect_tc);
            check_dense({1, 2, 128, 2 * G}, identity_codec<f16>{128}, 2e-3, "identity<f16> tc",
                        lengths, rope_mode::none, page, &tc);
            CHECK(tc == expect_tc);
            check_dense({1, 2, 64, 2 * G}, i8_64, 2e-3, "quantized<identity,int8> tc", lengths,
                        rope_mode::none, page, &tc);
            CHECK(tc == expect_tc);
            check_dense({1, 2, 128, 2 * G}, i8_128, 2e-3, "quantized<identity,int8> tc", lengths,
                        rope_mode::none, page, &tc);
            CHECK(tc == expect_tc);
        }
    }
    // RoPE on read stays on the CUDA-core kernels (MHA takes tensor cores by default).
    bool tc = true;
    check_dense({1, 2, 64, 2}, identity_codec<f16>{64}, 2e-3, "identity<f16> MHA", lengths,
                rope_mode::none, 16, &tc);
    CHECK(tc == (kernels::detail::direct_mma_min_gqa <= 1));
    check_dense({1, 2, 64, 8}, identity_codec<f16>{64}, 2e-3, "identity<f16> rope", lengths,
                rope_mode::on_read, 16, &tc);
    CHECK(!tc);
}

TEST_CASE("decode_attention: every GQA ratio 1 to 8, empty and one-token sequences", "[kernels]") {
    // Ratios 3, 5, 6 and 7 have no tensor-core or direct instantiation: the generic path takes
    // them; 1, 2, 4 and 8 the direct kernels. Lengths cross the 16-token pages and tiles.
    const std::vector<int> lengths{0, 1, 2, 15, 16, 17, 31, 33, 47, 100, 129};
    const auto i8 = make_quantized<std::int8_t>(identity_codec<float>{64});
    const linear_params lin = kvcar_test::random_linear(64, 24, 1, 15);
    for (int G = 1; G <= 8; ++G) {
        check_dense({1, 2, 64, 2 * G}, identity_codec<f16>{64}, 2e-3, "identity<f16> GQA sweep",
                    lengths);
        check_dense({1, 2, 64, 2 * G}, i8, 2e-3, "quantized<identity,int8> GQA sweep", lengths);
        check_dense({1, 2, 64, 2 * G}, identity_codec<float>{64}, 1e-5,
                    "identity<f32> GQA sweep", lengths);
        check_dense({1, 2, 64, 2 * G}, lin.codec<f16>(), 2e-3, "linear<f16> GQA sweep", lengths);
    }
}

TEST_CASE("decode_attention: quantized identity int8 and fp8 (plain KV quantization)",
          "[kernels]") {
    const auto i8 = make_quantized<std::int8_t>(identity_codec<float>{128});
    const auto f8 = make_quantized<fp8_e4m3>(identity_codec<float>{64});
    check_dense({2, 2, 128, 8}, i8, kvcar_test::int8_fp16_operands_tolerance,
                "quantized<identity,int8>");
    check_dense({1, 4, 64, 4}, f8, 1e-3, "quantized<identity,fp8>");
}

TEST_CASE("decode_attention: linear codec in latent space per head and whole layer", "[kernels]") {
    const linear_params head = kvcar_test::random_linear(64, 24, 1, 5);
    check_dense({2, 2, 64, 8}, head.codec<f16>(), 1e-3, "linear<f16> per head d24");
    const linear_params head128 = kvcar_test::random_linear(128, 64, 1, 6);
    check_dense({1, 4, 128, 32}, head128.codec<float>(), 1e-4, "linear<f32> per head d64");
    // Whole-layer latent: all 8 query heads of 2 KV heads share one latent per token.
    const linear_params layer = kvcar_test::random_linear(128, 40, 2, 7);
    check_dense({2, 2, 64, 8, 2}, layer.codec<bf16>(), 1e-3, "linear<bf16> whole layer");
    // Quantized latents stay affine: still read in latent space.
    const auto q8 = make_quantized<std::int8_t>(head.codec<float>());
    check_dense({1, 2, 64, 2}, q8, 1e-3, "quantized<linear,int8>");
    const auto q8l = make_quantized<fp8_e4m3>(layer.codec<float>());
    check_dense({1, 2, 64, 4, 2}, q8l, 1e-3, "quantized<linear,fp8> layer");
}

TEST_CASE("decode_attention: autoencoder decoded tile by tile in shared memory", "[kernels]") {
    const folded_autoencoder head = kvcar_test::random_autoencoder(64, 48, 32, 9);
    // f16 latents take the tensor-core path (kernels/decode/autoencoder_tensor_cores.cuh): fp16
    // weights, hidden activations and probabilities with fp32 accumulation (3.5e-4 measured on an
    // H100).
    check_dense({2, 2, 64, 8}, head.codec<f16>(), 2e-3, "autoencoder<f16> per head (tc)");
    const folded_autoencoder layer = kvcar_test::random_autoencoder(256, 96, 64, 10);
    check_dense({1, 2, 128, 4, 2}, layer.codec<float>(), 1e-4, "autoencoder<f32> whole layer");
    const auto q8 = make_quantized<std::int8_t>(head.codec<float>());
    check_dense({1, 2, 64, 4}, q8, 1e-3, "quantized<autoencoder,int8>");
}

TEST_CASE("decode_attention: RoPE on read for identity and a linear codec", "[kernels]") {
    check_dense({1, 2, 64, 8}, identity_codec<float>{64}, 1e-4, "identity<f32>",
                boundary_lengths, rope_mode::on_read);
    const linear_params head = kvcar_test::random_linear(64, 32, 1, 12);
    check_dense({1, 2, 64, 4}, head.codec<f16>(), 1e-3, "linear<f16>", boundary_lengths,
                rope_mode::on_read);
}

TEST_CASE("decode_attention: a reuse map reads earlier layers' slots", "[kernels]") {
    const kv_geometry g{3, 2, 64};
    // Layer 1 reuses layer 0's K of group 0; layer 2 reuses layer 1's V of group 1, which is
    // stored; layer 2's K of group 1 chains to layer 0.
    const reuse_map map(g, 1, {{1, 0, 0, 0}, {2, 1, 1, 1}, {1, 1, 0, 1}}, {{2, 1, 1, 1}});
    const identity_codec<f16> c{64};
    auto caches = make_caches(map, std::vector<identity_codec<f16>>(std::size_t(map.n_slots()), c),
                              {1, 17, 40, 0}, 21u);
    attention_params opt;
    opt.n_heads = 4;
    kernels::attention_workspace ws;
    const double err = decode_error(caches, opt, ws, 4u);
    std::printf("decode_attention reuse_map identity<f16>: rel err %.2e\n", err);
    CHECK(err <= 1e-3);

    const linear_params lin = kvcar_test::random_linear(64, 16, 1, 13);
    auto lc = make_caches(map, std::vector<linear_codec<f16>>(std::size_t(map.n_slots()),
                                                              lin.codec<f16>()),
                          {5, 16, 33}, 22u);
    const double lerr = decode_error(lc, opt, ws, 5u);
    std::printf("decode_attention reuse_map linear<f16>: rel err %.2e\n", lerr);
    CHECK(lerr <= 1e-3);
}

TEST_CASE("decode_attention: per-slot codecs differ (one linear codec per layer)", "[kernels]") {
    const kv_geometry g{2, 2, 64};
    const dense_layout layout(g);
    std::vector<linear_params> params;
    std::vector<linear_codec<f16>> codecs;
    for (int s = 0; s < layout.n_slots(); ++s)
        params.push_back(kvcar_test::random_linear(64, 8 + 8 * (s % 3), 1, 40u + s));
    for (const auto& p : params) codecs.push_back(p.codec<f16>());
    auto caches = make_caches(layout, codecs, {3, 16, 50}, 23u);
    attention_params opt;
    opt.n_heads = 4;
    kernels::attention_workspace ws;
    const double err = decode_error(caches, opt, ws, 6u);
    CHECK(err <= 1e-3);
}

TEST_CASE("decode_attention: long sequences split over many CTAs batch 1", "[kernels]") {
    // 3000 tokens at batch 1: the split plan must cut the sequence into many chunks.
    check_dense({1, 2, 128, 16}, identity_codec<f16>{128}, 1e-3, "identity<f16> long", {3000});
    kernels::attention_workspace ws;
    const kv_geometry g{1, 2, 128};
    const dense_layout layout(g);
    auto caches = make_caches(
        layout, std::vector<identity_codec<float>>(std::size_t(layout.n_slots()), {128}), {3000}, 8u);
    attention_params opt;
    opt.n_heads = 4;
    CHECK(decode_error(caches, opt, ws, 1u) <= 1e-5);
    CHECK(ws.last_splits > 8);
    const linear_params lin = kvcar_test::random_linear(128, 32, 1, 14);
    check_dense({1, 2, 128, 8}, lin.codec<f16>(), 1e-3, "linear<f16> long", {2500});
}

TEST_CASE("decode_attention: a batch larger than a grid dimension holds (70,000 sequences)",
          "[kernels]") {
    // 70,000 items: more than gridDim.y (65,535) takes, so decode_attention cuts the launch.
    // Lengths 0..36 (empty, one token, page boundaries); every (sequence, head) is checked.
    const int batch = 70000;
    std::vector<int> lengths;
    int pages = 0;
    for (int b = 0; b < batch; ++b) {
        lengths.push_back((b * 7) % 37);
        pages += (lengths.back() + 15) / 16;
    }
    auto run = [&](const auto& codec, int n_kv_heads, int head_dim, int n_heads, double tolerance,
                   const char* name) {
        using Codec = std::decay_t<decltype(codec)>;
        const kv_geometry g{1, n_kv_heads, head_dim};
        const dense_layout layout(g);
        kv_cache<Codec, dense_layout, paged_storage> host(layout, codec, {batch, 36, 16, pages});
        kvcar::gpu::device_kv_cache<Codec> dev(layout, codec, {batch, 36, 16, pages});
        std::vector<int> seqs;
        for (int b = 0; b < batch; ++b) {
            seqs.push_back(host.add_sequence());
            kvcar_test::fill_sequence(host, seqs.back(), lengths[std::size_t(b)],
                                      90u + std::uint32_t(b), 64);
        }
        dev.copy_from(host);
        attention_params opt;
        opt.n_heads = n_heads;
        kernels::attention_workspace ws;
        const double err = kvcar_test::worst_decode_error(
            host, seqs, opt, 6u, [&](const kernels::decode_attention_params& p) {
                kernels::decode_attention(dev.view(), p, ws);
            });
        std::printf("decode_attention %-28s B%d H%d KV%d hd%d: rel err %.2e (splits %d, %s)\n",
                    name, batch, n_heads, n_kv_heads, head_dim, err, ws.last_splits,
                    kernels::to_string(ws.last_path));
        CHECK(err <= tolerance);
    };
    run(identity_codec<f16>{64}, 2, 64, 16, 2e-3, "identity<f16> GQA 8 (tc)");
    run(make_quantized<std::int8_t>(identity_codec<float>{128}), 1, 128, 4,
        kvcar_test::int8_fp16_operands_tolerance, "quantized<identity,int8> (tc)");
    run(identity_codec<float>{32}, 1, 32, 2, 1e-5, "identity<f32> hd32 (generic)");
}

TEST_CASE("decode_attention: a model's full context", "[kernels]") {
    // TinyLlama-1.1B (32 heads, 4 KV heads, hd 64) at its 2048 positions; Llama-3-8B (32 heads,
    // 8 KV heads, hd 128) at 8192, in f16 and int8, beside short sequences in the same batch.
    check_dense({1, 4, 64, 32}, identity_codec<f16>{64}, 2e-3, "identity<f16> TinyLlama 2048",
                {2048, 1, 2047});
    check_dense({1, 8, 128, 32}, identity_codec<f16>{128}, 2e-3, "identity<f16> Llama-3 8192",
                {8192, 17, 0});
    check_dense({1, 8, 128, 32}, make_quantized<std::int8_t>(identity_codec<float>{128}), 2e-3,
                "quantized<identity,int8> Llama-3 8192", {8192, 8191});
}

TEST_CASE("decode_attention: argument errors throw before anything runs", "[kernels]") {
    const kv_geometry g{1, 2, 64};
    kvcar::gpu::device_kv_cache<identity_codec<f16>> cache(dense_layout(g),
                                                            identity_codec<f16>{64}, {2, 32, 16, 4});
    const int seq = cache.add_sequence();
    kernels::attention_workspace ws;
    kvcar::gpu::device_buffer<float> q(4 * 64), out(4 * 64);
    attention_params opt;
    opt.n_heads = 3;
    const std::vector<int> seqs{seq};
    KVCAR_REQUIRE_ERROR(kernels::decode_attention(cache, 0, seqs, q.data(), out.data(), opt, ws),
                        "not a positive multiple");
    opt.n_heads = 4;
    KVCAR_REQUIRE_ERROR(kernels::decode_attention(cache, 1, seqs, q.data(), out.data(), opt, ws),
                        "layer 1 is out of range");
    const std::vector<int> dead{1};
    KVCAR_REQUIRE_ERROR(kernels::decode_attention(cache, 0, dead, q.data(), out.data(), opt, ws),
                        "sequence 1 is not live");
    opt.scale = -1.0f;
    KVCAR_REQUIRE_ERROR(kernels::decode_attention(cache, 0, seqs, q.data(), out.data(), opt, ws),
                        "scale");
    opt.scale = 0.0f;
    opt.rope = rope_mode::on_read;
    opt.rope_cfg.rotary_dim = 7;
    KVCAR_REQUIRE_ERROR(kernels::decode_attention(cache, 0, seqs, q.data(), out.data(), opt, ws),
                        "odd");
}

namespace {

/// Median of `reps` timed launches of `fn` (after 3 warm-ups), in milliseconds.
template <class Fn>
float median_ms(Fn&& fn, int reps = 21) {
    for (int i = 0; i < 3; ++i) fn(i);
    cudaEvent_t start, stop;
    KVCAR_CUDA_CHECK(cudaEventCreate(&start));
    KVCAR_CUDA_CHECK(cudaEventCreate(&stop));
    std::vector<float> times;
    for (int i = 0; i < reps; ++i) {
        KVCAR_CUDA_CHECK(cudaEventRecord(start));
        fn(i);
        KVCAR_CUDA_CHECK(cudaEventRecord(stop));
        KVCAR_CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0.0f;
        KVCAR_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    KVCAR_CUDA_CHECK(cudaEventDestroy(start));
    KVCAR_CUDA_CHECK(cudaEventDestroy(stop));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

/// Decode attention over `batch` sequences of `length` tokens (2 layers, alternated so that
/// consecutive runs do not find the previous one's data in L2). Prints achieved bandwidth:
/// stored bytes of K and V read once, over the median time.
template <class Codec>
void time_decode(const char* name, const Codec& codec, int heads_per_group, int batch, int length,
                 double copy_gbps) {
    const kv_geometry g{2, 8, 128};
    const int n_heads = 32;
    const dense_layout layout(g, heads_per_group);
    const int pages = batch * ((length + 15) / 16);
    kvcar::gpu::device_kv_cache<Codec> cache(layout, codec, {batch, length, 16, pages});
    std::vector<int> seqs;
    for (int b = 0; b < batch; ++b) seqs.push_back(cache.add_sequence());
    const int chunk = std::min(length, 1024);
    const std::vector<float> kv = random_floats(std::size_t(chunk) * g.token_width(), 1);
    kvcar::gpu::device_buffer<float> kv_dev(kv);
    for (int seq : seqs)
        for (int t = 0; t < length; t += chunk)
            for (int layer = 0; layer < g.n_layers; ++layer)
                kernels::append(cache, layer, std::vector<int>{seq},
                                std::vector<int>{std::min(chunk, length - t)}, kv_dev.data(),
                                kv_dev.data());
    const std::vector<float> q = random_floats(std::size_t(batch) * n_heads * g.head_dim, 2);
    kvcar::gpu::device_buffer<float> q_dev(q), out(q.size());
    kernels::attention_workspace ws;
    attention_params opt;
    opt.n_heads = n_heads;
    const float ms = median_ms([&](int i) {
        kernels::decode_attention(cache, i % 2, seqs, q_dev.data(), out.data(), opt, ws);
    });
    const double bytes = double(batch) * length * g.n_kv_heads / heads_per_group * 2.0 *
                         double(codec.bytes_per_group());
    const double gbps = bytes / (ms * 1e-3) / 1e9;
    std::printf("PERF decode_attention %-26s B%-3d L%-6d H32/KV8 hd128: %8.4f ms  %7.1f GB/s  "
                "(%.0f%% of copy)  splits %d\n",
                name, batch, length, ms, gbps, 100.0 * gbps / copy_gbps, ws.last_splits);
}

}  // namespace

TEST_CASE("decode_attention: bandwidth against a device-to-device copy", "[kernels][.perf]") {
    cudaDeviceProp prop{};
    KVCAR_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const std::size_t bytes = std::size_t(1) << 30;
    kvcar::gpu::device_buffer<std::byte> a(bytes), b(bytes);
    a.fill_bytes(1);
    const float copy_ms = median_ms([&](int) {
        KVCAR_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice));
    }, 11);
    const double copy_gbps = 2.0 * double(bytes) / (copy_ms * 1e-3) / 1e9;  // read + write
    std::printf("PERF %s (%d SMs): device-to-device copy %.1f GB/s (bytes read + written)\n",
                prop.name, prop.multiProcessorCount, copy_gbps);
    const linear_params lin = kvcar_test::random_linear(128, 64, 1, 1);
    for (const auto& [batch, length] : {std::pair{1, 16384}, std::pair{8, 8192}, std::pair{32, 4096}}) {
        time_decode("identity<f16>", identity_codec<f16>{128}, 1, batch, length, copy_gbps);
        time_decode("linear<f16> d64 (latent)", lin.codec<f16>(), 1, batch, length, copy_gbps);
        time_decode("quantized<identity,int8>", make_quantized(identity_codec<float>{128}), 1,
                    batch, length, copy_gbps);
    }
}
