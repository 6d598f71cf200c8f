// Tests for kvcar/kernels/latent_decode_attention.cuh: decode attention over whole-layer linear
// latents on tensor cores, against kvcar::reference_decode_attention on the CPU reading the very
// same records (the host cache is filled, then copied byte for byte into the device cache).
// fp16 operands (Qz, probabilities) with fp32 accumulation: relative error <= 2e-3.
#include "kernels/decode_check.cuh"
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/decode_attention.cuh>
#include <kvcar/kernels/latent_decode_attention.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/reference/attention.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

static_assert(kernels::latent_tensor_core_codec<linear_codec<f16>>);
static_assert(kernels::latent_tensor_core_codec<quantized_codec<linear_codec<float>, std::int8_t>>);
static_assert(kernels::latent_tensor_core_codec<quantized_codec<linear_codec<float>, fp8_e4m3>>);
static_assert(!kernels::latent_tensor_core_codec<linear_codec<float>>);  // fp16 would round z
static_assert(!kernels::latent_tensor_core_codec<linear_codec<bf16>>);
static_assert(!kernels::latent_tensor_core_codec<identity_codec<f16>>);

namespace {

constexpr double tolerance = 2e-3;

struct shape {
    const char* name;
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int n_heads;
};

template <class Codec>
using test_caches = kvcar_test::paired_caches<Codec>;

/// Paired caches over whole-layer groups (kvcar_test::make_interleaved_caches).
template <class Codec>
test_caches<Codec> make_caches(const shape& s, const std::vector<Codec>& codecs,
                               const std::vector<int>& lengths, std::uint32_t seed) {
    const dense_layout layout(kv_geometry{s.n_layers, s.n_kv_heads, s.head_dim}, s.n_kv_heads);
    return kvcar_test::make_interleaved_caches(layout, codecs, lengths, seed);
}

/// Runs decode attention (through decode_attention's dispatch, or latent_decode_attention
/// directly) for every layer and returns the worst relative error against the CPU reference.
/// Empty sequences must give exact zeros; every output element must be written.
template <class Codec>
double decode_error(test_caches<Codec>& c, const attention_params& opt,
                    kernels::attention_workspace& ws, std::uint32_t seed, bool direct) {
    return kvcar_test::worst_decode_error(
        c.host, c.sequences, opt, seed, [&](const kernels::decode_attention_params& p) {
            if (direct) {
                kernels::latent_decode_attention(c.device.view(), p, ws);
            } else {
                kernels::decode_attention(c.device, p.layer, c.sequences, p.q, p.out, opt, ws);
                CHECK((ws.last_path == kernels::decode_path::latent_tensor_cores));
            }
        });
}

template <class Codec>
void check(const shape& s, const std::vector<Codec>& codecs, const std::vector<int>& lengths,
           const char* codec_name, bool direct = false, float scale = 0.0f,
           const kernels::attention_workspace::tuning& tune = {}) {
    auto caches = make_caches(s, codecs, lengths, 11u);
    attention_params opt;
    opt.n_heads = s.n_heads;
    opt.scale = scale;
    kernels::attention_workspace ws;
    ws.tune = tune;
    const double err = decode_error(caches, opt, ws, 3u, direct);
    std::printf("latent_decode_attention %-10s %-26s H%-2d KV%-2d hd%-3d B%zu: rel err %.2e "
                "(splits %d, chunk %d)\n",
                s.name, codec_name, s.n_heads, s.n_kv_heads, s.head_dim, lengths.size(), err,
                ws.last_splits, ws.last_chunk);
    CHECK(err <= tolerance);
}

template <class Codec>
std::vector<Codec> same(const shape& s, const Codec& c) {
    return std::vector<Codec>(std::size_t(2 * s.n_layers), c);
}

// Odd lengths, page boundaries (pages of 16), tile boundaries (32), an empty sequence.
const std::vector<int> boundary_lengths{1, 15, 16, 17, 100, 0, 33, 64, 65};

}  // namespace

TEST_CASE("latent_decode_attention: GPT-2-like whole-layer f16 latent (d = D/2)", "[kernels]") {
    const shape s{"gpt2", 2, 12, 64, 12};
    const linear_params lin = kvcar_test::random_linear(768, 384, 12, 5);
    check(s, same(s, lin.codec<f16>()), boundary_lengths, "linear<f16> d384");
    check(s, same(s, lin.codec<f16>()), {700, 0, 301}, "linear<f16> d384 long", true);
}

TEST_CASE("latent_decode_attention: Llama-like GQA whole-layer f16 latent (d = D/2)", "[kernels]") {
    const shape s{"llama", 1, 8, 128, 32};
    const linear_params lin = kvcar_test::random_linear(1024, 512, 8, 6);
    check(s, same(s, lin.codec<f16>()), {1, 17, 0, 257, 130}, "linear<f16> d512");
    // A scale other than 1/sqrt(head_dim).
    check(s, same(s, lin.codec<f16>()), {40, 3}, "linear<f16> d512 scale", false, 0.05f);
}

TEST_CASE("latent_decode_attention: batches over many projection and lift blocks", "[kernels]") {
    // The projection and the lift take up to 16 (item, query head) vectors of a KV head per CTA
    // (latent_tc_aux.cuh). 37 items of GQA 4 are 148 vectors: 10 blocks, the last one partial,
    // so each lift warp takes 4 rows; empty items in between must still give zeros. 3 items of
    // GQA 8 (TinyLlama-like) are 24 vectors: a full block and a partial one; 1 item of MHA is 1
    // vector in a block of 4.
    const shape s{"llama", 1, 8, 128, 32};
    const linear_params lin = kvcar_test::random_linear(1024, 512, 8, 31);
    std::vector<int> lengths;
    for (int i = 0; i < 37; ++i) lengths.push_back(i % 9 == 4 ? 0 : 1 + (i * 37) % 150);
    check(s, same(s, lin.codec<f16>()), lengths, "linear<f16> d512 B37");
    check(s, same(s, make_quantized<std::int8_t>(lin.codec<float>())), lengths,
          "quantized<linear,int8> d512 B37", true);
    const shape tiny{"tinyllama", 1, 4, 64, 32};
    const linear_params lin128 = kvcar_test::random_linear(256, 128, 4, 32);
    check(tiny, same(tiny, lin128.codec<f16>()), {70, 1, 33}, "linear<f16> d128 B3");
    const shape mha{"gpt2", 1, 12, 64, 12};
    const linear_params lin384 = kvcar_test::random_linear(768, 384, 12, 33);
    check(mha, same(mha, lin384.codec<f16>()), {129}, "linear<f16> d384 B1");
}

TEST_CASE("latent_decode_attention: every projection / lift block shape a tuning can choose",
          "[kernels]") {
    // decode_bench's --latent-aux-vectors and --latent-lift-rows sweep these; each choice must
    // give the same attention, whatever the batch (partial vector blocks, rows past head_dim).
    const shape s{"llama", 1, 8, 128, 32};
    const linear_params lin = kvcar_test::random_linear(1024, 512, 8, 34);
    std::vector<int> lengths;
    for (int i = 0; i < 19; ++i) lengths.push_back(i % 7 == 3 ? 0 : 1 + (i * 53) % 120);
    const shape tiny{"tinyllama", 1, 4, 64, 32};
    const linear_params lin128 = kvcar_test::random_linear(256, 128, 4, 35);
    for (int vectors : {4, 16}) {
        for (int rows : {1, 2, 4}) {
            kernels::attention_workspace::tuning tune;
            tune.latent_aux_vectors = vectors;
            tune.latent_lift_rows = rows;
            const std::string tag = " v" + std::to_string(vectors) + " r" + std::to_string(rows);
            check(s, same(s, lin.codec<f16>()), lengths, ("linear<f16> d512 B19" + tag).c_str(),
                  false, 0.0f, tune);
            check(tiny, same(tiny, lin128.codec<f16>()), {70, 1, 33},
                  ("linear<f16> d128 B3" + tag).c_str(), false, 0.0f, tune);
        }
    }
}

TEST_CASE("latent_decode_attention: TinyLlama-like shapes and a 64-head model", "[kernels]") {
    const shape tiny{"tinyllama", 2, 4, 64, 32};
    const linear_params lin = kvcar_test::random_linear(256, 128, 4, 7);
    check(tiny, same(tiny, lin.codec<f16>()), boundary_lengths, "linear<f16> d128");
    const shape wide{"64 heads", 1, 8, 64, 64};
    const linear_params lin64 = kvcar_test::random_linear(512, 256, 8, 8);
    check(wide, same(wide, lin64.codec<f16>()), {5, 0, 90}, "linear<f16> d256");
    const shape mha{"mha-5", 1, 5, 32, 5};  // 5 heads: padded to a 16-row block
    const linear_params lin5 = kvcar_test::random_linear(160, 64, 5, 9);
    check(mha, same(mha, lin5.codec<f16>()), {31, 0, 47}, "linear<f16> d64");
}

TEST_CASE("latent_decode_attention: int8 and fp8 latents (quantized linear)", "[kernels]") {
    const shape llama{"llama", 1, 8, 128, 32};
    const linear_params lin = kvcar_test::random_linear(1024, 512, 8, 10);
    const auto i8 = make_quantized<std::int8_t>(lin.codec<float>());
    check(llama, same(llama, i8), {1, 17, 0, 257, 130}, "quantized<linear,int8> d512");
    const shape gpt2{"gpt2", 1, 12, 64, 12};
    const linear_params lin2 = kvcar_test::random_linear(768, 384, 12, 11);
    const auto f8 = make_quantized<fp8_e4m3>(lin2.codec<float>());
    check(gpt2, same(gpt2, f8), boundary_lengths, "quantized<linear,fp8> d384");
    const auto i8g = make_quantized<std::int8_t>(lin2.codec<float>());
    check(gpt2, same(gpt2, i8g), {300, 0, 7}, "quantized<linear,int8> d384", true);
}

/// Sequences whose V latents change size by tiles of 32 tokens — 1e-3 … 1e3 times a random row,
/// and whole tiles of zero latents (records of scale 0) — under random K: a quantized V's
/// probability · scale, which the split kernel keeps relative to each tile's largest, must follow
/// them (every tile a new unit) and come back to the true sums.
template <class Codec>
void check_v_scales(const Codec& codec, const linear_params& lin, const char* name) {
    const shape s{"llama", 1, 8, 128, 32};
    const dense_layout layout(kv_geometry{s.n_layers, s.n_kv_heads, s.head_dim}, s.n_kv_heads);
    const std::vector<int> lengths{700, 45, 96, 1};
    const int width = s.n_kv_heads * s.head_dim;
    kvcar_test::paired_caches<Codec> c{
        kv_cache<Codec, dense_layout, paged_storage>(layout, same(s, codec), {8, 700, 16, 64}),
        kvcar::gpu::device_kv_cache<Codec, dense_layout>(layout, same(s, codec), {8, 700, 16, 64}),
        {}};
    for (std::size_t i = 0; i < lengths.size(); ++i) {
        const int seq = c.host.add_sequence();
        c.sequences.push_back(seq);
        const int n = lengths[i];
        const std::vector<float> k = random_floats(std::size_t(n) * width, 50u + unsigned(i));
        std::vector<float> v = random_floats(std::size_t(n) * width, 60u + unsigned(i));
        for (int t = 0; t < n; ++t) {
            // Tiles 0, 1, 2 (mod 4) at 1e-3, 1, 1e3 (times 1 … 5 by token); tile 3 all zero:
            // x = μ gives the latent 0 exactly.
            const int size_class = (t / 32 + int(i)) % 4;
            const float size = size_class == 3 ? 0.0f
                                               : std::pow(1000.0f, float(size_class - 1)) *
                                                     float(1 + t % 5);
            for (int e = 0; e < width; ++e) {
                float& x = v[std::size_t(t) * width + std::size_t(e)];
                x = lin.mean[std::size_t(e)] + size * x;
            }
        }
        c.host.append(seq, 0, k, v);
    }
    c.device.copy_from(c.host);
    attention_params opt;
    opt.n_heads = s.n_heads;
    kernels::attention_workspace ws;
    const double err = decode_error(c, opt, ws, 5u, false);
    std::printf("latent_decode_attention V scales 1e-3..1e3 %-26s: rel err %.2e\n", name, err);
    CHECK(err <= tolerance);
}

TEST_CASE("latent_decode_attention: quantized V latents of very different sizes", "[kernels]") {
    const linear_params lin = kvcar_test::random_linear(1024, 512, 8, 41);
    check_v_scales(make_quantized<std::int8_t>(lin.codec<float>()), lin,
                   "quantized<linear,int8> d512");
    check_v_scales(make_quantized<fp8_e4m3>(lin.codec<float>()), lin,
                   "quantized<linear,fp8> d512");
}

TEST_CASE("latent_decode_attention: latent widths that are not multiples of 16 or 8", "[kernels]") {
    const shape s{"small", 1, 2, 64, 8};
    // d = 24: 16-byte records, zero-padded to 32 columns; d = 20: 2-byte loads; d = 20 int8:
    // 28-byte records fetched in 4-byte pieces.
    const linear_params l24 = kvcar_test::random_linear(128, 24, 2, 12);
    check(s, same(s, l24.codec<f16>()), boundary_lengths, "linear<f16> d24");
    const linear_params l20 = kvcar_test::random_linear(128, 20, 2, 13);
    check(s, same(s, l20.codec<f16>()), boundary_lengths, "linear<f16> d20");
    check(s, same(s, make_quantized<std::int8_t>(l20.codec<float>())), boundary_lengths,
          "quantized<linear,int8> d20");
}

TEST_CASE("latent_decode_attention: K and V codecs of different widths in each layer",
          "[kernels]") {
    const shape s{"per-slot", 2, 4, 64, 16};
    std::vector<linear_params> params;
    for (int slot = 0; slot < 4; ++slot)
        params.push_back(kvcar_test::random_linear(256, 48 + 32 * slot, 4, 20u + slot));
    std::vector<linear_codec<f16>> codecs;
    for (const auto& p : params) codecs.push_back(p.codec<f16>());
    check(s, codecs, {1, 50, 0, 129}, "linear<f16> d48..144");
}

TEST_CASE("latent_decode_attention: long sequences split over many CTAs at batch 1", "[kernels]") {
    const shape s{"llama", 1, 8, 128, 32};
    const linear_params lin = kvcar_test::random_linear(1024, 256, 8, 30);
    auto caches = make_caches(s, same(s, lin.codec<f16>()), {3000}, 8u);
    attention_params opt;
    opt.n_heads = s.n_heads;
    kernels::attention_workspace ws;
    const double err = decode_error(caches, opt, ws, 1u, false);
    std::printf("latent_decode_attention long B1 L3000: rel err %.2e (splits %d, chunk %d)\n", err,
                ws.last_splits, ws.last_chunk);
    CHECK(err <= tolerance);
    CHECK(ws.last_splits > 8);
}

TEST_CASE("latent_decode_attention: what the tensor-core path does not take", "[kernels]") {
    kernels::attention_workspace ws;
    std::string why;
    // Per-head groups: the generic latent path.
    {
        const kv_geometry g{1, 2, 64};
        const linear_params lin = kvcar_test::random_linear(64, 32, 1, 40);
        kvcar::gpu::device_kv_cache<linear_codec<f16>> cache(dense_layout(g), lin.codec<f16>(),
                                                       {2, 32, 16, 4});
        kernels::decode_attention_params p;
        p.n_heads = 4;
        CHECK_FALSE(kernels::latent_decode_attention_supported(cache.view(), p, ws, &why));
        CHECK(why.find("whole layer") != std::string::npos);
        KVCAR_REQUIRE_ERROR(kernels::latent_decode_attention(cache.view(), p, ws), "whole layer");
    }
    const kv_geometry g{1, 2, 64};
    const linear_params lin = kvcar_test::random_linear(128, 64, 2, 41);
    kvcar::gpu::device_kv_cache<linear_codec<f16>> cache(dense_layout(g, 2), lin.codec<f16>(),
                                                   {2, 32, 16, 4});
    const int seq = cache.add_sequence();
    kernels::decode_attention_params p;
    p.n_heads = 8;
    CHECK(kernels::latent_decode_attention_supported(cache.view(), p, ws, &why));
    p.rope = rope_mode::on_read;
    KVCAR_REQUIRE_ERROR(kernels::latent_decode_attention(cache.view(), p, ws), "RoPE");
    p.rope = rope_mode::none;
    p.n_heads = 128;
    KVCAR_REQUIRE_ERROR(kernels::latent_decode_attention(cache.view(), p, ws), "exceed");
    p.n_heads = 7;  // not a multiple of n_kv_heads
    KVCAR_REQUIRE_ERROR(kernels::latent_decode_attention(cache.view(), p, ws),
                        "not a positive multiple");
    // Through decode_attention, RoPE on read takes the decoded path (and stays correct there).
    kvcar::gpu::device_buffer<float> q(8 * 64), out(8 * 64);
    attention_params opt;
    opt.n_heads = 8;
    opt.rope = rope_mode::on_read;
    kernels::decode_attention(cache, 0, std::vector<int>{seq}, q.data(), out.data(), opt, ws);
    CHECK_FALSE((ws.last_path == kernels::decode_path::latent_tensor_cores));
    // fp32 latents would be rounded to fp16: the generic path.
    const linear_codec<float> f32 = lin.codec<float>();
    kvcar::gpu::device_kv_cache<linear_codec<float>> cache32(dense_layout(g, 2), f32,
                                                              {2, 32, 16, 4});
    p.n_heads = 8;
    CHECK_FALSE(kernels::latent_decode_attention_supported(cache32.view(), p, ws, &why));
    KVCAR_REQUIRE_ERROR(kernels::latent_decode_attention(cache32.view(), p, ws),
                        "f16, int8 or fp8");
}
