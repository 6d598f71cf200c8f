// Tests for kvcar/kernels/prefill_attention.cuh: causal (and full) attention of a chunk of
// queries per sequence against kvcar::reference_attention reading the same records.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/append.cuh>
#include <kvcar/kernels/prefill_attention.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/reference/attention.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

namespace {

/// Sequences of `lengths` tokens; the last `queries[i]` tokens of each are the chunk's queries.
template <class Codec>
void check_prefill(const kv_geometry& g, int hpg, const Codec& codec, int n_heads,
                   const std::vector<int>& lengths, const std::vector<int>& queries, bool causal,
                   rope_mode rope, double tolerance, const char* name, int want_tiled = -1,
                   int tiles_min_queries = 0) {
    const dense_layout layout(g, hpg);
    // Room for the sequences (pages of 16; at least the 4 × 128 × 40 pages of the first tests).
    int max_tokens = 128, pages = 8;
    for (int len : lengths) {
        max_tokens = std::max(max_tokens, (len + 15) / 16 * 16);
        pages += (len + 15) / 16;
    }
    pages = std::max(pages, 40);
    const int max_seqs = std::max(4, int(lengths.size()));
    kv_cache<Codec, dense_layout, paged_storage> host(layout, codec,
                                                      {max_seqs, max_tokens, 16, pages});
    kvcar::gpu::device_kv_cache<Codec> dev(layout, codec, {max_seqs, max_tokens, 16, pages});
    std::vector<int> seqs;
    for (std::size_t i = 0; i < lengths.size(); ++i) {
        seqs.push_back(host.add_sequence());
        kvcar_test::fill_sequence(host, seqs.back(), lengths[i], 50u + std::uint32_t(i));
    }
    dev.copy_from(host);
    attention_params opt;
    opt.n_heads = n_heads;
    opt.causal = causal;
    opt.rope = rope;
    const std::size_t q_width = std::size_t(n_heads) * g.head_dim;
    int total = 0;
    for (int q : queries) total += q;
    kernels::attention_workspace ws;
    ws.tune.prefill_tiles_min_queries = tiles_min_queries;
    double worst = 0.0;
    for (int layer = 0; layer < g.n_layers; ++layer) {
        const std::vector<float> q = random_floats(std::size_t(total) * q_width, 9u + layer);
        kvcar::gpu::device_buffer<float> q_dev(q);
        kvcar::gpu::device_buffer<float> out = kvcar_test::poisoned(q.size());
        kernels::prefill_attention(dev, layer, seqs, queries, q_dev.data(), out.data(), opt, ws);
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<float> want(q.size());
        std::size_t row = 0;
        for (std::size_t i = 0; i < seqs.size(); ++i) {
            const std::size_t n = std::size_t(queries[i]) * q_width;
            if (n > 0)
                reference_attention(host, seqs[i], layer, opt,
                                    std::span<const float>(q).subspan(row, n),
                                    lengths[i] - queries[i], std::span<float>(want).subspan(row, n));
            row += n;
        }
        worst = std::max(worst, kvcar_test::row_relative_error(out.to_host(), want,
                                                                std::size_t(g.head_dim)));
        if (want_tiled >= 0) CHECK(ws.last_prefill_tiled == want_tiled);
    }
    std::printf("prefill_attention %-24s %s%s: %d chunks tiled, rel err %.2e\n", name,
                causal ? "causal" : "full", rope == rope_mode::on_read ? " rope" : "",
                ws.last_prefill_tiled, worst);
    CHECK(worst <= tolerance);
}

}  // namespace

TEST_CASE("prefill_attention: causal chunks for every codec family", "[kernels]") {
    const kv_geometry g{2, 2, 64};
    const std::vector<int> lengths{40, 17, 5}, queries{24, 17, 1};
    check_prefill(g, 1, identity_codec<float>{64}, 8, lengths, queries, true, rope_mode::none,
                  1e-5, "identity<f32>");
    check_prefill(g, 1, identity_codec<f16>{64}, 4, lengths, queries, true, rope_mode::none,
                  kvcar_test::fp16_operands_tolerance, "identity<f16>", 2);
    check_prefill(g, 1, identity_codec<f16>{64}, 4, lengths, queries, true, rope_mode::none, 1e-3,
                  "identity<f16> per query", 0, -1);
    const linear_params lin = kvcar_test::random_linear(128, 32, 2, 3);
    // Its 24- and 17-query chunks are tiled: the latent is rounded when stored and the decoded
    // vector again in the dense copy, so the bound is the int8 one's 8u (H100: 2.16e-3 > 4u).
    check_prefill(g, 2, lin.codec<f16>(), 8, lengths, queries, true, rope_mode::none,
                  kvcar_test::int8_fp16_operands_tolerance, "linear<f16> layer", 2);
    const folded_autoencoder ae = kvcar_test::random_autoencoder(64, 32, 16, 4);
    check_prefill(g, 1, make_quantized(ae.codec<float>()), 2, lengths, queries, true,
                  rope_mode::none, kvcar_test::fp16_operands_tolerance, "quantized<autoencoder>",
                  2);
}

TEST_CASE("prefill_attention: RoPE on read full attention and an empty chunk", "[kernels]") {
    const kv_geometry g{1, 2, 128};
    check_prefill(g, 1, identity_codec<float>{128}, 4, {33, 16}, {33, 3}, true, rope_mode::on_read,
                  1e-4, "identity<f32>");
    check_prefill(g, 1, identity_codec<f16>{128}, 4, {33, 16}, {5, 0}, false, rope_mode::none,
                  1e-3, "identity<f16>", 0);
    check_prefill(g, 1, identity_codec<float>{128}, 4, {33, 16}, {5, 2}, false,
                  rope_mode::on_read, 1e-4, "identity<f32>");
}

TEST_CASE("prefill_attention: the tiled path beside per-query chunks in one batch", "[kernels]") {
    // Chunks of 200 (a whole prompt: 4 query tiles, the last one partial), 70 and 16 queries
    // take the tiled path; a decode step (1 query) and a 9-query chunk take the per-query path,
    // their rows staged between the tiled ones. Contexts cross K/V tiles of 64 at odd offsets.
    const std::vector<int> lengths{200, 131, 1, 77, 16, 40}, queries{200, 70, 1, 1, 16, 9};
    const double tol = kvcar_test::fp16_operands_tolerance;
    const double tol8 = kvcar_test::int8_fp16_operands_tolerance;
    // TinyLlama's heads: hd 64, 8 query heads per KV head.
    const kv_geometry tiny{2, 4, 64};
    check_prefill(tiny, 1, identity_codec<f16>{64}, 32, lengths, queries, true, rope_mode::none,
                  tol, "tiled identity<f16> GQA 8", 3);
    check_prefill(tiny, 1, make_quantized<std::int8_t>(identity_codec<float>{64}), 32, lengths,
                  queries, true, rope_mode::none, tol8, "tiled int8 GQA 8", 3);
    check_prefill(tiny, 1, identity_codec<f16>{64}, 32, lengths, queries, true, rope_mode::on_read,
                  tol, "tiled identity<f16> rope", 3);
    // Whole-layer latents (group = 4 heads), linear and int8 linear, and an autoencoder per head.
    const linear_params lin = kvcar_test::random_linear(256, 64, 4, 11);
    // A latent is rounded to fp16 when stored and its decoded vector again in the dense copy:
    // two roundings of K and V where identity<f16> has one, the int8 bound's 8u.
    check_prefill(tiny, 4, lin.codec<f16>(), 32, lengths, queries, true, rope_mode::none, tol8,
                  "tiled linear<f16> layer", 3);
    check_prefill(tiny, 4, make_quantized<std::int8_t>(lin.codec<float>()), 32, lengths, queries,
                  true, rope_mode::on_read, tol8, "tiled int8 linear layer rope", 3);
    const folded_autoencoder ae = kvcar_test::random_autoencoder(64, 32, 16, 12);
    check_prefill(tiny, 1, ae.codec<f16>(), 32, lengths, queries, true, rope_mode::none, tol,
                  "tiled autoencoder<f16>", 3);
    // Llama-3-8B's heads: hd 128, 4 query heads per KV head; full attention too.
    const kv_geometry big{1, 2, 128};
    check_prefill(big, 1, identity_codec<f16>{128}, 8, lengths, queries, true, rope_mode::none,
                  tol, "tiled identity<f16> hd 128", 3);
    check_prefill(big, 1, identity_codec<f16>{128}, 8, lengths, queries, false, rope_mode::on_read,
                  tol, "tiled identity<f16> hd 128 full", 3);
    // A threshold of 1 sends every chunk, decode steps too, down the tiled path.
    check_prefill(tiny, 1, identity_codec<f16>{64}, 32, lengths, queries, true, rope_mode::none,
                  tol, "tiled identity<f16> all", 6, 1);
    // Exact f32 records keep the per-query path.
    check_prefill(tiny, 1, identity_codec<float>{64}, 32, lengths, queries, true, rope_mode::none,
                  1e-5, "identity<f32> stays per query", 0);
}

TEST_CASE("prefill_attention: argument errors", "[kernels]") {
    const kv_geometry g{1, 1, 64};
    kvcar::gpu::device_kv_cache<identity_codec<f16>> dev(dense_layout(g), identity_codec<f16>{64},
                                                   {2, 32, 16, 4});
    const int s = dev.add_sequence();
    kernels::attention_workspace ws;
    kvcar::gpu::device_buffer<float> q(64 * 4), out(64 * 4);
    attention_params opt;
    opt.n_heads = 1;
    const std::vector<int> seqs{s};
    KVCAR_REQUIRE_ERROR(kernels::prefill_attention(dev, 0, seqs, std::vector<int>{1}, q.data(),
                                                   out.data(), opt, ws),
                        "fewer than its 1 queries");
    KVCAR_REQUIRE_ERROR(kernels::prefill_attention(dev, 0, seqs, std::vector<int>{1, 2}, q.data(),
                                                   out.data(), opt, ws),
                        "1 sequences but 2 query counts");
    kvcar::gpu::device_buffer<float> k(64 * 3);
    kernels::append(dev, 0, seqs, std::vector<int>{3}, k.data(), k.data());
    opt.n_heads = 0;
    KVCAR_REQUIRE_ERROR(kernels::prefill_attention(dev, 0, seqs, std::vector<int>{2}, q.data(),
                                                   out.data(), opt, ws),
                        "prefill_attention: n_heads 0 is not a positive multiple");
}

namespace {

/// A prefill of `n_seqs` sequences × `length` tokens in one call: n_seqs · length query rows,
/// more than gridDim.y holds (65,535) when that product is large (kvcar-generate --batch 64 with
/// a 1493-token prompt failed so). Checks a sample of rows against the CPU reference: every
/// sequence's first, page-boundary and last rows, and the rows around 65,535 and around the
/// middle (where decode_attention cuts the launch in two).
template <class Codec>
void check_large_prefill(const kv_geometry& g, int hpg, const Codec& codec, int n_heads,
                         int n_seqs, int length, double tolerance, const char* name,
                         int tiles_min_queries = 0) {
    const dense_layout layout(g, hpg);
    const int pages = n_seqs * ((length + 15) / 16);
    kv_cache<Codec, dense_layout, paged_storage> host(layout, codec,
                                                      {n_seqs, length, 16, pages});
    kvcar::gpu::device_kv_cache<Codec> dev(layout, codec, {n_seqs, length, 16, pages});
    std::vector<int> seqs, queries(std::size_t(n_seqs), length);
    for (int i = 0; i < n_seqs; ++i) {
        seqs.push_back(host.add_sequence());
        kvcar_test::fill_sequence(host, seqs.back(), length, 70u + std::uint32_t(i), 256);
    }
    dev.copy_from(host);
    attention_params opt;
    opt.n_heads = n_heads;
    const std::size_t q_width = std::size_t(n_heads) * g.head_dim;
    const std::size_t rows = std::size_t(n_seqs) * std::size_t(length);
    const std::vector<float> q = random_floats(rows * q_width, 5u);
    kvcar::gpu::device_buffer<float> q_dev(q);
    kvcar::gpu::device_buffer<float> out = kvcar_test::poisoned(q.size());
    kernels::attention_workspace ws;
    ws.tune.prefill_tiles_min_queries = tiles_min_queries;
    kernels::prefill_attention(dev, 0, seqs, queries, q_dev.data(), out.data(), opt, ws);
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> got = out.to_host();
    // Every row was written (no NaN left from the poison), then the sample against the reference.
    std::size_t unwritten = 0;
    for (float x : got) unwritten += std::isfinite(x) ? 0 : 1;
    CHECK(unwritten == 0);
    std::vector<std::size_t> sample;
    for (int i = 0; i < n_seqs; ++i)
        for (int r : {0, 1, 15, 16, 17, length / 2, length - 2, length - 1})
            if (r >= 0 && r < length) sample.push_back(std::size_t(i) * length + std::size_t(r));
    for (std::size_t c : {rows / 2, std::size_t(65535), rows - 1})
        for (std::size_t r = c >= 6 ? c - 6 : 0; r < std::min(rows, c + 6); ++r) sample.push_back(r);
    std::sort(sample.begin(), sample.end());
    sample.erase(std::unique(sample.begin(), sample.end()), sample.end());
    std::vector<float> got_s, want_s;
    std::vector<float> want(q_width);
    for (std::size_t r : sample) {
        const int i = int(r / std::size_t(length)), pos = int(r % std::size_t(length));
        reference_attention(host, seqs[std::size_t(i)], 0, opt,
                            std::span<const float>(q).subspan(r * q_width, q_width), pos, want);
        got_s.insert(got_s.end(), got.begin() + std::ptrdiff_t(r * q_width),
                     got.begin() + std::ptrdiff_t((r + 1) * q_width));
        want_s.insert(want_s.end(), want.begin(), want.end());
    }
    const double err = kvcar_test::row_relative_error(got_s, want_s, std::size_t(g.head_dim));
    std::printf("prefill_attention %-24s %d x %d = %zu rows (%zu checked): rel err %.2e\n", name,
                n_seqs, length, rows, sample.size(), err);
    CHECK(err <= tolerance);
}

}  // namespace

TEST_CASE("prefill_attention: more query rows than a grid dimension holds (64 x 1100)",
          "[kernels]") {
    // 70,400 rows; TinyLlama's heads (hd 64, 8 query heads per KV head) take the tensor-core
    // direct kernel that failed in kvcar-generate --batch 64.
    const kv_geometry g{1, 1, 64};
    // Chunks of 1100 queries take the tiled path; -1 keeps them on the per-query direct kernel.
    check_large_prefill(g, 1, identity_codec<f16>{64}, 8, 64, 1100, 2e-3,
                        "identity<f16> GQA 8 direct", -1);
    check_large_prefill(g, 1, identity_codec<f16>{64}, 8, 64, 1100,
                        kvcar_test::fp16_operands_tolerance, "identity<f16> GQA 8");
    check_large_prefill(g, 1, make_quantized<std::int8_t>(identity_codec<float>{64}), 8, 64, 1100,
                        kvcar_test::int8_fp16_operands_tolerance, "quantized<identity,int8>");
    // The CUDA-core direct kernel (f32 records) and the generic decoded path (head_dim 32).
    check_large_prefill(g, 1, identity_codec<float>{64}, 2, 64, 1100, 1e-5, "identity<f32>");
    check_large_prefill(kv_geometry{1, 1, 32}, 1, identity_codec<float>{32}, 2, 64, 1100, 1e-5,
                        "identity<f32> hd32 (generic)");
    // Whole-layer latents on tensor cores (projection and lift grids carry items too).
    const linear_params lin = kvcar_test::random_linear(128, 32, 2, 8);
    check_large_prefill(kv_geometry{1, 2, 64}, 2, lin.codec<f16>(), 8, 64, 1100,
                        kvcar_test::int8_fp16_operands_tolerance, "linear<f16> layer (tiled)");
}

TEST_CASE("prefill_attention: a model's full context (TinyLlama 2048, Llama-3 8192)", "[kernels]") {
    // TinyLlama-1.1B: 32 query heads, 4 KV heads, head_dim 64, 2048 positions.
    check_large_prefill(kv_geometry{1, 4, 64}, 1, identity_codec<f16>{64}, 32, 1, 2048,
                        kvcar_test::fp16_operands_tolerance, "identity<f16> TinyLlama ctx");
    // Llama-3-8B-like heads at 8192 positions (2 KV heads to keep the reference quick).
    check_large_prefill(kv_geometry{1, 2, 128}, 1, identity_codec<f16>{128}, 8, 1, 8192,
                        kvcar_test::fp16_operands_tolerance, "identity<f16> Llama-3 ctx");
}
