// Tests for kvcar/kernels/decode/autoencoder_tensor_cores.cuh (autoencoder_decode_attention,
// through kvcar/kernels/decode_attention.cuh): decode attention over autoencoder latents on
// tensor cores (attention in the decoder's hidden space), against
// kvcar::reference_decode_attention on the CPU, which decodes the very same records with the fp32
// decoder (the host cache is filled, then copied byte for byte into the device cache).
//
// Tolerance 2e-3 of max |out|. The kernel rounds W1, the hidden activations, the projected
// queries q̃ and the probabilities to fp16 (relative 2^-11 ≈ 4.9e-4 each) and accumulates in
// fp32; with random-signed rounding errors over d or h terms the errors stay a few times 2^-11 of
// the output's scale. Measured on an H100 (2026-11-26): 1.1e-4 to 3.0e-4 over these cases, so
// 2e-3 leaves a margin of ~7x, while a wrong fragment layout, a missing bias, an unmasked padded
// token or a mis-merged split gives errors of order 1.
#include "kernels/decode_check.cuh"
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/decode_attention.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/reference/attention.hpp>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

static_assert(kernels::autoencoder_tensor_core_codec<autoencoder_codec<f16>>);
static_assert(!kernels::autoencoder_tensor_core_codec<autoencoder_codec<float>>);
static_assert(!kernels::autoencoder_tensor_core_codec<autoencoder_codec<bf16>>);
static_assert(!kernels::autoencoder_tensor_core_codec<linear_codec<f16>>);

namespace {

using ae_codec = autoencoder_codec<f16>;

constexpr double tolerance = 2e-3;

struct shape {
    const char* name;
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int n_heads;
    int heads_per_group;
    int group_width() const { return heads_per_group * head_dim; }
};

using test_caches = kvcar_test::paired_caches<ae_codec>;

/// Paired caches over groups of s.heads_per_group heads (kvcar_test::make_interleaved_caches).
test_caches make_caches(const shape& s, const std::vector<ae_codec>& codecs,
                        const std::vector<int>& lengths, std::uint32_t seed) {
    const dense_layout layout(kv_geometry{s.n_layers, s.n_kv_heads, s.head_dim},
                              s.heads_per_group);
    return kvcar_test::make_interleaved_caches(layout, codecs, lengths, seed);
}

/// Runs decode attention (through decode_attention's dispatch, or autoencoder_decode_attention
/// directly) for every layer and returns the worst relative error against the CPU reference.
/// Empty sequences must give exact zeros; every output element must be written (the output
/// starts as NaN).
double decode_error(test_caches& c, const attention_params& opt, kernels::attention_workspace& ws,
                    std::uint32_t seed, bool direct) {
    return kvcar_test::worst_decode_error(
        c.host, c.sequences, opt, seed, [&](const kernels::decode_attention_params& p) {
            if (direct) {
                kernels::autoencoder_decode_attention(c.device.view(), p, ws);
            } else {
                kernels::decode_attention(c.device, p.layer, c.sequences, p.q, p.out, opt, ws);
                CHECK((ws.last_path == kernels::decode_path::autoencoder_tensor_cores));
            }
        });
}

/// One autoencoder per stored slot (2 per layer and group), all of hidden width `hidden` and
/// latent width `latent`. The returned folded weights must outlive the caches.
std::vector<folded_autoencoder> autoencoders(const shape& s, int hidden, int latent,
                                             std::uint32_t seed) {
    std::vector<folded_autoencoder> f;
    const int slots = 2 * s.n_layers * (s.n_kv_heads / s.heads_per_group);
    for (int i = 0; i < slots; ++i)
        f.push_back(kvcar_test::random_autoencoder(s.group_width(), hidden, latent,
                                                   seed + 13u * std::uint32_t(i)));
    return f;
}

std::vector<ae_codec> codecs_of(const std::vector<folded_autoencoder>& f) {
    std::vector<ae_codec> c;
    for (const auto& a : f) c.push_back(a.codec<f16>());
    return c;
}

void check(const shape& s, const std::vector<folded_autoencoder>& weights,
           const std::vector<int>& lengths, const char* what, bool direct = false,
           float scale = 0.0f, int min_splits = 1) {
    auto caches = make_caches(s, codecs_of(weights), lengths, 11u);
    attention_params opt;
    opt.n_heads = s.n_heads;
    opt.scale = scale;
    kernels::attention_workspace ws;
    const double err = decode_error(caches, opt, ws, 3u, direct);
    std::printf("autoencoder_decode_attention %-10s %-22s H%-2d KV%-2d hd%-3d hpg%d B%zu: rel err "
                "%.2e (splits %d, chunk %d)\n",
                s.name, what, s.n_heads, s.n_kv_heads, s.head_dim, s.heads_per_group,
                lengths.size(), err, ws.last_splits, ws.last_chunk);
    CHECK(err <= tolerance);
    CHECK(ws.last_splits >= min_splits);
}

// Odd lengths, page boundaries (pages of 16), tile boundaries (32), an empty sequence.
const std::vector<int> boundary_lengths{1, 15, 16, 17, 100, 0, 33, 64, 65};

}  // namespace

TEST_CASE("autoencoder_decode_attention: Llama-3-8B-like whole layer (h = D, d = D/2)",
          "[kernels]") {
    // The bench shape: 32 query heads over 8 KV heads of 128, D = 1024, h = 1024, d = 512.
    const shape s{"llama", 1, 8, 128, 32, 8};
    const auto w = autoencoders(s, 1024, 512, 5);
    check(s, w, {1, 17, 0, 257, 130}, "h1024 d512");
    check(s, w, {40, 3}, "h1024 d512 scale", true, 0.05f);
}

TEST_CASE("autoencoder_decode_attention: small whole-layer groups, d and h not multiples of 64",
          "[kernels]") {
    // h = 100 (padded to 128), d = 40 (16-byte latent loads, zero-padded to 48).
    const shape s2{"small", 2, 2, 64, 8, 2};
    check(s2, autoencoders(s2, 100, 40, 7), boundary_lengths, "h100 d40");
    // d = 37: odd, 4-byte loads with the record padding masked; h = 72.
    check(s2, autoencoders(s2, 72, 37, 8), boundary_lengths, "h72 d37", true);
    // 20 query heads over 4 KV heads (G = 5): two 16-row head blocks, 12 rows padded.
    const shape s4{"kv4-g5", 1, 4, 32, 20, 4};
    check(s4, autoencoders(s4, 160, 64, 9), boundary_lengths, "h160 d64");
}

TEST_CASE("autoencoder_decode_attention: per-head and two-head groups, MHA and GQA", "[kernels]") {
    // MHA, one codec per KV head: four CTAs per split and item (grid z).
    const shape mha{"mha", 2, 4, 64, 4, 1};
    check(mha, autoencoders(mha, 96, 24, 20), boundary_lengths, "h96 d24");
    // GQA 8 query heads per KV head, head_dim 128, per-head groups.
    const shape gqa{"gqa8", 1, 2, 128, 16, 1};
    check(gqa, autoencoders(gqa, 200, 48, 21), boundary_lengths, "h200 d48");
    // Groups of two KV heads (D = 128), GQA 2.
    const shape pair{"pairs", 1, 4, 64, 8, 2};
    check(pair, autoencoders(pair, 256, 64, 22), boundary_lengths, "h256 d64", true);
}

TEST_CASE("autoencoder_decode_attention: K and V codecs of different widths in each layer",
          "[kernels]") {
    const shape s{"per-slot", 2, 2, 64, 8, 2};
    std::vector<folded_autoencoder> w;
    for (int slot = 0; slot < 4; ++slot)
        w.push_back(kvcar_test::random_autoencoder(128, 64 + 96 * slot, 24 + 20 * slot,
                                                   30u + std::uint32_t(slot)));
    check(s, w, {1, 50, 0, 129}, "h64..352 d24..84");
}

TEST_CASE("autoencoder_decode_attention: long sequences split over many CTAs at batch 1",
          "[kernels]") {
    const shape s{"long", 1, 4, 64, 16, 4};
    check(s, autoencoders(s, 256, 128, 40), {3000}, "h256 d128 L3000", false, 0.0f, 8);
    check(s, autoencoders(s, 256, 128, 41), {1500, 2, 0}, "h256 d128 L1500", true, 0.0f, 4);
}

TEST_CASE("autoencoder_decode_attention: what the tensor-core path does not take", "[kernels]") {
    kernels::attention_workspace ws;
    std::string why;
    const kv_geometry g{1, 2, 64};
    const folded_autoencoder ae = kvcar_test::random_autoencoder(128, 96, 32, 50);
    kvcar::gpu::device_kv_cache<ae_codec> cache(dense_layout(g, 2), ae.codec<f16>(),
                                                 {2, 32, 16, 4});
    kernels::decode_attention_params p;
    p.n_heads = 8;
    CHECK(kernels::autoencoder_decode_attention_supported(cache.view(), p, ws, &why));
    CHECK(why.empty());

    // RoPE on read: supported() says why, the direct call throws, decode_attention falls back to
    // the generic decoded path and is still right there.
    p.rope = rope_mode::on_read;
    CHECK_FALSE(kernels::autoencoder_decode_attention_supported(cache.view(), p, ws, &why));
    CHECK(why.find("RoPE") != std::string::npos);
    KVCAR_REQUIRE_ERROR(kernels::autoencoder_decode_attention(cache.view(), p, ws), "RoPE");
    {
        const shape s{"rope", 1, 2, 64, 8, 2};
        const auto w = autoencoders(s, 96, 32, 51);
        auto caches = make_caches(s, codecs_of(w), {1, 40, 0, 33}, 12u);
        attention_params opt;
        opt.n_heads = 8;
        opt.rope = rope_mode::on_read;
        const int batch = int(caches.sequences.size());
        const std::vector<float> q = random_floats(std::size_t(batch) * 8 * 64, 77u);
        kvcar::gpu::device_buffer<float> q_dev(q);
        kvcar::gpu::device_buffer<float> out_dev = kvcar_test::poisoned(q.size());
        kernels::decode_attention(caches.device, 0, caches.sequences, q_dev.data(),
                                  out_dev.data(), opt, ws);
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        CHECK_FALSE((ws.last_path == kernels::decode_path::autoencoder_tensor_cores));
        const std::vector<float> got = out_dev.to_host();
        std::vector<float> want(q.size(), 0.0f);
        for (int b = 0; b < batch; ++b) {
            const int seq = caches.sequences[std::size_t(b)];
            if (caches.host.length(seq, 0) == 0) continue;
            reference_decode_attention(
                caches.host, seq, 0, opt,
                std::span<const float>(q).subspan(std::size_t(b) * 512, 512),
                std::span<float>(want).subspan(std::size_t(b) * 512, 512));
        }
        const double err = kvcar_test::row_relative_error(got, want, std::size_t(g.head_dim));
        std::printf("autoencoder_decode_attention RoPE on read (generic fallback): rel err %.2e\n",
                    err);
        CHECK(err <= 1e-3);  // the generic path decodes in fp32
    }
    p.rope = rope_mode::none;

    // More than 32 query heads per codec group.
    p.n_heads = 64;
    CHECK_FALSE(kernels::autoencoder_decode_attention_supported(cache.view(), p, ws, &why));
    KVCAR_REQUIRE_ERROR(kernels::autoencoder_decode_attention(cache.view(), p, ws), "exceed");
    p.n_heads = 7;  // not a multiple of n_kv_heads
    KVCAR_REQUIRE_ERROR(kernels::autoencoder_decode_attention(cache.view(), p, ws),
                        "not a positive multiple");
    p.n_heads = 8;

    // A hand-made view without max_hidden_width: the path cannot size its tiles.
    device::cache_view<ae_codec> bare = cache.view();
    bare.max_hidden_width = 0;
    CHECK_FALSE(kernels::autoencoder_decode_attention_supported(bare, p, ws, &why));
    CHECK(why.find("max_hidden_width") != std::string::npos);

    // A hidden layer wider than the register budget.
    const folded_autoencoder wide = kvcar_test::random_autoencoder(128, 1100, 32, 52);
    kvcar::gpu::device_kv_cache<ae_codec> wide_cache(dense_layout(g, 2), wide.codec<f16>(),
                                               {2, 32, 16, 4});
    CHECK_FALSE(kernels::autoencoder_decode_attention_supported(wide_cache.view(), p, ws, &why));
    CHECK(why.find("1100") != std::string::npos);

    // fp32 latents would be rounded to fp16: the generic path.
    kvcar::gpu::device_kv_cache<autoencoder_codec<float>> cache32(dense_layout(g, 2),
                                                            ae.codec<float>(), {2, 32, 16, 4});
    CHECK_FALSE(kernels::autoencoder_decode_attention_supported(cache32.view(), p, ws, &why));
    CHECK(why.find("autoencoder_codec<f16>") != std::string::npos);
    KVCAR_REQUIRE_ERROR(kernels::autoencoder_decode_attention(cache32.view(), p, ws),
                        "autoencoder_codec<f16>");
    const int seq = cache32.add_sequence();
    kvcar::gpu::device_buffer<float> q(8 * 64), out(8 * 64);
    attention_params opt;
    opt.n_heads = 8;
    kernels::decode_attention(cache32, 0, std::vector<int>{seq}, q.data(), out.data(), opt, ws);
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
    CHECK_FALSE((ws.last_path == kernels::decode_path::autoencoder_tensor_cores));
}
