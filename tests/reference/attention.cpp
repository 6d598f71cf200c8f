// Tests for kvcar/reference/attention.hpp: the oracle must equal plain attention written out on
// raw tensors, for every head arrangement, prefill shape, RoPE mode, storage and layout.
#include "catch.hpp"

#include <kvcar/codec/identity.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>
#include <kvcar/reference/attention.hpp>
#include <kvcar/rope.hpp>
#include <kvcar/storage/contiguous.hpp>
#include <kvcar/storage/paged.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace {

using kvcar::attention_params;
using kvcar::kv_geometry;
using kvcar::kv_kind;
using kvcar::rope_mode;
using kvcar::rope_params;
using kvcar::rope_style;

using f32_cache = kvcar::kv_cache<kvcar::identity_codec<float>>;
using f16_cache = kvcar::kv_cache<kvcar::identity_codec<kvcar::f16>>;
using paged_f32_cache =
    kvcar::kv_cache<kvcar::identity_codec<float>, kvcar::dense_layout, kvcar::paged_storage>;
using reuse_f32_cache = kvcar::kv_cache<kvcar::identity_codec<float>, kvcar::reuse_map>;

std::vector<float> random_floats(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> x(n);
    for (float& v : x) v = dist(rng);
    return x;
}

/// One layer's K and V of one sequence as plain row-major tensors [token][n_kv_heads][head_dim].
struct raw_layer {
    std::vector<float> k, v;
};

/// Attention written out with nothing shared with the library: every query row, every head,
/// every visible token, a max-subtracted softmax in double.
std::vector<float> naive_attention(const std::vector<float>& q, int q_position, const raw_layer& kv,
                                   int length, int n_heads, int n_kv_heads, int head_dim,
                                   bool causal, double scale) {
    const int n_q = int(q.size()) / (n_heads * head_dim);
    std::vector<float> out(q.size());
    for (int i = 0; i < n_q; ++i) {
        const int visible = causal ? q_position + i + 1 : length;
        for (int h = 0; h < n_heads; ++h) {
            const int kvh = h / (n_heads / n_kv_heads);
            auto q_at = [&](int d) {
                return double(q[std::size_t((i * n_heads + h) * head_dim + d)]);
            };
            auto k_at = [&](int t, int d) {
                return double(kv.k[std::size_t((t * n_kv_heads + kvh) * head_dim + d)]);
            };
            auto v_at = [&](int t, int d) {
                return double(kv.v[std::size_t((t * n_kv_heads + kvh) * head_dim + d)]);
            };
            std::vector<double> s(static_cast<std::size_t>(visible));
            double m = -1e300;
            for (int t = 0; t < visible; ++t) {
                double dot = 0.0;
                for (int d = 0; d < head_dim; ++d) dot += q_at(d) * k_at(t, d);
                s[std::size_t(t)] = dot * scale;
                m = std::max(m, s[std::size_t(t)]);
            }
            double sum = 0.0;
            for (double& x : s) sum += (x = std::exp(x - m));
            for (int d = 0; d < head_dim; ++d) {
                double o = 0.0;
                for (int t = 0; t < visible; ++t) o += s[std::size_t(t)] * v_at(t, d);
                out[std::size_t((i * n_heads + h) * head_dim + d)] = float(o / sum);
            }
        }
    }
    return out;
}

/// Rotates every head of `rows` ([row][heads][head_dim]) with row r at position first + r.
void rope_rows(std::vector<float>& rows, int heads, int head_dim, int first,
               const rope_params& cfg) {
    const int n = int(rows.size()) / (heads * head_dim);
    for (int r = 0; r < n; ++r)
        for (int h = 0; h < heads; ++h)
            kvcar::apply_rope(&rows[std::size_t((r * heads + h) * head_dim)], head_dim, first + r,
                              cfg);
}

/// Largest |a - b| over two equally long vectors.
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double m = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
    return m;
}

/// A sequence's raw K/V for every layer, appended to `cache` in chunks of `chunk` tokens (the
/// way prefill then decode would fill it).
template <class Cache>
std::vector<raw_layer> fill(Cache& cache, int seq, int length, unsigned seed, int chunk = 3) {
    const kv_geometry g = cache.geometry();
    const std::size_t width = std::size_t(g.token_width());
    std::vector<raw_layer> layers;
    for (int l = 0; l < g.n_layers; ++l) {
        const unsigned s = seed + 100u * unsigned(l);
        layers.push_back({random_floats(std::size_t(length) * width, s),
                          random_floats(std::size_t(length) * width, s + 7u)});
    }
    for (int t = 0; t < length; t += chunk) {
        const int n = std::min(chunk, length - t);
        for (int l = 0; l < g.n_layers; ++l) {
            const raw_layer& r = layers[std::size_t(l)];
            const std::size_t first = std::size_t(t) * width, count = std::size_t(n) * width;
            cache.append(seq, l, std::span<const float>(r.k).subspan(first, count),
                         std::span<const float>(r.v).subspan(first, count));
        }
    }
    return layers;
}

std::vector<float> run_reference(const auto& cache, int seq, int layer, const attention_params& p,
                                 const std::vector<float>& q, int q_position) {
    std::vector<float> out(q.size(), -7.0f);
    kvcar::reference_attention(cache, seq, layer, p, q, q_position, out);
    return out;
}

std::vector<float> run_decode(const auto& cache, int seq, int layer, const attention_params& p,
                              const std::vector<float>& q) {
    std::vector<float> out(q.size(), -7.0f);
    kvcar::reference_decode_attention(cache, seq, layer, p, q, out);
    return out;
}

/// The smallest cache the concept allows, with hand-written contents; it counts its reads.
struct fake_cache {
    kv_geometry g{1, 1, 2};
    std::vector<float> k{1.0f, 0.0f, 0.0f, 1.0f, 2.0f, 2.0f};  // tokens [1,0], [0,1], [2,2]
    std::vector<float> v{1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
    int tokens = 3;
    mutable std::vector<std::string> reads;

    kv_geometry geometry() const { return g; }
    int length(int, int) const { return tokens; }
    void read(int, int, kv_kind kind, int begin, int end, std::span<float> out) const {
        reads.push_back(std::string(kvcar::to_string(kind)) + "[" + std::to_string(begin) + "," +
                        std::to_string(end) + ")");
        const std::vector<float>& src = kind == kv_kind::key ? k : v;
        std::copy(src.begin() + 2 * begin, src.begin() + 2 * end, out.begin());
    }
};

}  // namespace

static_assert(kvcar::readable_kv_cache<fake_cache>);
static_assert(kvcar::readable_kv_cache<f32_cache>);
static_assert(kvcar::readable_kv_cache<paged_f32_cache>);
static_assert(kvcar::readable_kv_cache<reuse_f32_cache>);
static_assert(!kvcar::readable_kv_cache<std::vector<float>>);

TEST_CASE("attention: hand-computed values through a fake cache, each range read once",
          "[reference]") {
    fake_cache cache;
    attention_params p{.n_heads = 1, .scale = 1.0f};

    SECTION("causal query at position 1 sees tokens 0 and 1 and reads only them") {
        // q . k = (ln 3, 0) gives weights 3/4 and 1/4: out = 0.75 [1,2] + 0.25 [3,4].
        const std::vector<float> q{float(std::log(3.0)), 0.0f};
        const std::vector<float> out = run_reference(cache, 0, 0, p, q, 1);
        REQUIRE(out[0] == Approx(1.5).margin(1e-6));
        REQUIRE(out[1] == Approx(2.5).margin(1e-6));
        REQUIRE(cache.reads == std::vector<std::string>{"K[0,2)", "V[0,2)"});
    }
    SECTION("decode sees all three tokens") {
        // Scores 0, 0, 0 for q = 0: the plain mean of the values.
        const std::vector<float> out = run_decode(cache, 0, 0, p, {0.0f, 0.0f});
        REQUIRE(out[0] == Approx(3.0).margin(1e-6));
        REQUIRE(out[1] == Approx(4.0).margin(1e-6));
        REQUIRE(cache.reads == std::vector<std::string>{"K[0,3)", "V[0,3)"});
    }
    SECTION("default scale is 1/sqrt(head_dim)") {
        // q = (sqrt2 ln 3, 0) with scale 1/sqrt2: the same weights as the first section.
        p.scale = 0.0f;
        const std::vector<float> q{float(std::sqrt(2.0) * std::log(3.0)), 0.0f};
        const std::vector<float> out = run_reference(cache, 0, 0, p, q, 1);
        REQUIRE(out[0] == Approx(1.5).margin(1e-6));
        REQUIRE(out[1] == Approx(2.5).margin(1e-6));
    }
    SECTION("non-causal reads and sees the whole sequence even for an early query") {
        p.causal = false;
        const std::vector<float> out = run_reference(cache, 0, 0, p, {0.0f, 0.0f}, 0);
        REQUIRE(out[0] == Approx(3.0).margin(1e-6));
        REQUIRE(cache.reads == std::vector<std::string>{"K[0,3)", "V[0,3)"});
    }
}

TEST_CASE("attention: through an identity f32 kv_cache equals attention on the raw tensors",
          "[reference]") {
    struct heads {
        const char* name;
        int n_heads, n_kv_heads;
    };
    const heads h = GENERATE(heads{"MHA", 4, 4}, heads{"GQA", 8, 2}, heads{"MQA", 4, 1});
    const int length = GENERATE(1, 6, 13);
    CAPTURE(h.name, length);

    const int head_dim = 16;
    const kv_geometry g{3, h.n_kv_heads, head_dim};
    f32_cache cache(kvcar::dense_layout(g), kvcar::identity_codec<float>{head_dim}, {2, 32});
    const int seq = cache.add_sequence();
    const std::vector<raw_layer> raw = fill(cache, seq, length, 42u);
    const attention_params p{.n_heads = h.n_heads};
    const double scale = 1.0 / std::sqrt(double(head_dim));
    const std::size_t q_width = std::size_t(h.n_heads * head_dim);

    for (int layer = 0; layer < g.n_layers; ++layer) {
        CAPTURE(layer);
        const raw_layer& kv = raw[std::size_t(layer)];
        SECTION("causal prefill of the whole sequence") {
            const std::vector<float> q = random_floats(std::size_t(length) * q_width, 5u);
            const std::vector<float> got = run_reference(cache, seq, layer, p, q, 0);
            const std::vector<float> want = naive_attention(q, 0, kv, length, h.n_heads,
                                                            h.n_kv_heads, head_dim, true, scale);
            REQUIRE(max_abs_diff(got, want) < 1e-6);
        }
        SECTION("chunked prefill: queries for the last 5 tokens (or all, if fewer)") {
            const int n_q = std::min(5, length);
            const std::vector<float> q = random_floats(std::size_t(n_q) * q_width, 6u);
            const std::vector<float> got = run_reference(cache, seq, layer, p, q, length - n_q);
            const std::vector<float> want = naive_attention(
                q, length - n_q, kv, length, h.n_heads, h.n_kv_heads, head_dim, true, scale);
            REQUIRE(max_abs_diff(got, want) < 1e-6);
        }
        SECTION("single-token decode equals the last row of a prefill") {
            const std::vector<float> q = random_floats(q_width, 7u);
            const std::vector<float> got = run_decode(cache, seq, layer, p, q);
            const std::vector<float> want = naive_attention(
                q, length - 1, kv, length, h.n_heads, h.n_kv_heads, head_dim, true, scale);
            REQUIRE(max_abs_diff(got, want) < 1e-6);
            REQUIRE(run_reference(cache, seq, layer, p, q, length - 1) == got);
        }
        SECTION("non-causal, with an explicit scale") {
            attention_params nc = p;
            nc.causal = false;
            nc.scale = 0.3f;
            const std::vector<float> q =
                random_floats(std::size_t(std::min(2, length)) * q_width, 8u);
            const std::vector<float> got = run_reference(cache, seq, layer, nc, q, 0);
            const std::vector<float> want = naive_attention(
                q, 0, kv, length, h.n_heads, h.n_kv_heads, head_dim, false, double(0.3f));
            REQUIRE(max_abs_diff(got, want) < 1e-6);
        }
    }
}

TEST_CASE("attention: rope on_read equals rotating raw K and q first, then plain attention",
          "[reference]") {
    const rope_style style = GENERATE(rope_style::half, rope_style::interleaved);
    const int rotary_dim = GENERATE(0, 8);
    CAPTURE(kvcar::to_string(style), rotary_dim);

    const int head_dim = 16, n_heads = 4, n_kv_heads = 2, length = 11;
    const kv_geometry g{2, n_kv_heads, head_dim};
    f32_cache cache(kvcar::dense_layout(g), kvcar::identity_codec<float>{head_dim}, {1, 16});
    const int seq = cache.add_sequence();
    const std::vector<raw_layer> raw = fill(cache, seq, length, 9u, 4);  // stored un-rotated
    const rope_params cfg{10000.0f, style, rotary_dim};
    attention_params p{.n_heads = n_heads, .rope = rope_mode::on_read, .rope_cfg = cfg};
    const double scale = 1.0 / std::sqrt(double(head_dim));

    raw_layer rotated = raw[1];
    rope_rows(rotated.k, n_kv_heads, head_dim, 0, cfg);

    const int n_q = 4, q_position = length - n_q;
    const std::vector<float> q = random_floats(std::size_t(n_q * n_heads * head_dim), 10u);
    std::vector<float> q_rotated = q;
    rope_rows(q_rotated, n_heads, head_dim, q_position, cfg);

    const std::vector<float> got = run_reference(cache, seq, 1, p, q, q_position);
    const std::vector<float> want = naive_attention(q_rotated, q_position, rotated, length,
                                                    n_heads, n_kv_heads, head_dim, true, scale);
    REQUIRE(max_abs_diff(got, want) < 1e-6);

    // The rotation matters: without it the answer is different.
    p.rope = rope_mode::none;
    REQUIRE(max_abs_diff(run_reference(cache, seq, 1, p, q, q_position), want) > 1e-3);

    // Decode rotates the query by the last position, length - 1.
    p.rope = rope_mode::on_read;
    const std::vector<float> q1(q.end() - n_heads * head_dim, q.end());
    std::vector<float> q1_rotated = q1;
    rope_rows(q1_rotated, n_heads, head_dim, length - 1, cfg);
    REQUIRE(max_abs_diff(run_decode(cache, seq, 1, p, q1),
                         naive_attention(q1_rotated, length - 1, rotated, length, n_heads,
                                         n_kv_heads, head_dim, true, scale)) < 1e-6);
}

TEST_CASE("attention: paged storage (page_size 4) gives exactly the contiguous result",
          "[reference]") {
    const int head_dim = 8, n_heads = 6, n_kv_heads = 3;
    const kv_geometry g{2, n_kv_heads, head_dim};
    const kvcar::identity_codec<float> codec{head_dim};
    f32_cache contiguous(kvcar::dense_layout(g), codec, {3, 24});
    paged_f32_cache paged(kvcar::dense_layout(g), codec,
                          {.max_sequences = 3, .max_tokens = 24, .page_size = 4, .n_pages = 24});
    // Three sequences appended in turn, so their pages interleave in the pool.
    const int lengths[] = {9, 17, 4};
    for (int s = 0; s < 3; ++s) {
        REQUIRE(contiguous.add_sequence() == s);
        REQUIRE(paged.add_sequence() == s);
    }
    for (int s = 0; s < 3; ++s) {
        fill(contiguous, s, lengths[s], 60u + unsigned(s), 5);
        fill(paged, s, lengths[s], 60u + unsigned(s), 3);
    }
    const attention_params p{.n_heads = n_heads};
    for (int s = 0; s < 3; ++s) {
        for (int layer = 0; layer < 2; ++layer) {
            const std::vector<float> q =
                random_floats(std::size_t(lengths[s] * n_heads * head_dim), 70u);
            REQUIRE(run_reference(paged, s, layer, p, q, 0) ==
                    run_reference(contiguous, s, layer, p, q, 0));
            const std::vector<float> q1(q.begin(), q.begin() + n_heads * head_dim);
            REQUIRE(run_decode(paged, s, layer, p, q1) == run_decode(contiguous, s, layer, p, q1));
        }
    }
}

TEST_CASE("attention: a reuse_map layout attends with the source layer's K/V for reused heads",
          "[reference]") {
    // 3 layers, 2 KV heads (one head per group). K of (1, 0) reads (0, 0); V of (2, 1) reads
    // (1, 1), and V of (1, 1) is stored, so layer 2's head 1 sees layer 1's values.
    const int head_dim = 8, n_heads = 4, n_kv_heads = 2, length = 7;
    const kv_geometry g{3, n_kv_heads, head_dim};
    kvcar::reuse_map layout(g, 1, {{1, 0, 0, 0}}, {{2, 1, 1, 1}});
    reuse_f32_cache cache(layout, kvcar::identity_codec<float>{head_dim}, {1, 16});
    const int seq = cache.add_sequence();
    const std::vector<raw_layer> raw = fill(cache, seq, length, 80u);
    const attention_params p{.n_heads = n_heads};
    const double scale = 1.0 / std::sqrt(double(head_dim));

    // What each layer really attends to: its own K/V with the reused heads swapped in.
    auto copy_head = [&](std::vector<float>& dst, const std::vector<float>& src, int head) {
        for (int t = 0; t < length; ++t)
            for (int d = 0; d < head_dim; ++d) {
                const std::size_t i = std::size_t((t * n_kv_heads + head) * head_dim + d);
                dst[i] = src[i];
            }
    };
    std::vector<raw_layer> effective = raw;
    copy_head(effective[1].k, raw[0].k, 0);
    copy_head(effective[2].v, raw[1].v, 1);

    const std::vector<float> q = random_floats(std::size_t(length * n_heads * head_dim), 81u);
    for (int layer = 0; layer < 3; ++layer) {
        CAPTURE(layer);
        const std::vector<float> got = run_reference(cache, seq, layer, p, q, 0);
        REQUIRE(max_abs_diff(got, naive_attention(q, 0, effective[std::size_t(layer)], length,
                                                  n_heads, n_kv_heads, head_dim, true,
                                                  scale)) < 1e-6);
        if (layer > 0) {  // and the layer's own (discarded) K/V would have given another answer
            REQUIRE(max_abs_diff(got, naive_attention(q, 0, raw[std::size_t(layer)], length,
                                                      n_heads, n_kv_heads, head_dim, true,
                                                      scale)) > 1e-3);
        }
    }
}

TEST_CASE("attention: identity f16 cache is within f16 rounding of the f32 result", "[reference]") {
    const int head_dim = 32, n_heads = 8, n_kv_heads = 2, length = 21;
    const kv_geometry g{1, n_kv_heads, head_dim};
    f16_cache cache(kvcar::dense_layout(g), kvcar::identity_codec<kvcar::f16>{head_dim}, {1, 32});
    const int seq = cache.add_sequence();
    const std::vector<raw_layer> raw = fill(cache, seq, length, 90u);
    const attention_params p{.n_heads = n_heads};
    const double scale = 1.0 / std::sqrt(double(head_dim));
    const std::vector<float> q = random_floats(std::size_t(length * n_heads * head_dim), 91u);
    const std::vector<float> got = run_reference(cache, seq, 0, p, q, 0);

    // Exactly attention over the f16-rounded K/V ...
    raw_layer rounded = raw[0];
    for (float& x : rounded.k) x = kvcar::to_float(kvcar::to_f16(x));
    for (float& x : rounded.v) x = kvcar::to_float(kvcar::to_f16(x));
    REQUIRE(max_abs_diff(got, naive_attention(q, 0, rounded, length, n_heads, n_kv_heads,
                                              head_dim, true, scale)) < 1e-6);
    // ... which is within f16's relative rounding (2^-11 per element, a few elements' worth
    // through the scores) of attention over the exact floats, and not equal to it.
    const double err = max_abs_diff(got, naive_attention(q, 0, raw[0], length, n_heads,
                                                          n_kv_heads, head_dim, true, scale));
    REQUIRE(err < 4e-3);
    REQUIRE(err > 1e-6);
}

TEST_CASE("attention: sequences of different lengths in one cache do not interfere",
          "[reference]") {
    const int head_dim = 8, n_heads = 4, n_kv_heads = 2;
    const kv_geometry g{2, n_kv_heads, head_dim};
    f32_cache cache(kvcar::dense_layout(g), kvcar::identity_codec<float>{head_dim}, {4, 20});
    int lengths[] = {3, 11, 6};
    std::vector<std::vector<raw_layer>> raw;
    for (int s = 0; s < 3; ++s) REQUIRE(cache.add_sequence() == s);
    for (int s = 0; s < 3; ++s) {
        raw.push_back(fill(cache, s, lengths[s], 100u + 10u * unsigned(s), 2));
    }
    const attention_params p{.n_heads = n_heads};
    const double scale = 1.0 / std::sqrt(double(head_dim));

    auto check_all = [&](std::initializer_list<int> seqs) {
        for (int s : seqs) {
            for (int layer = 0; layer < 2; ++layer) {
                CAPTURE(s, layer);
                const std::vector<float> q =
                    random_floats(std::size_t(lengths[s] * n_heads * head_dim), 120u);
                REQUIRE(max_abs_diff(run_reference(cache, s, layer, p, q, 0),
                                     naive_attention(q, 0, raw[std::size_t(s)][std::size_t(layer)],
                                                     lengths[s], n_heads, n_kv_heads, head_dim,
                                                     true, scale)) < 1e-6);
            }
        }
    };
    check_all({0, 1, 2});
    // Dropping one sequence and starting another in its place leaves the others as they were.
    cache.remove_sequence(1);
    REQUIRE(cache.add_sequence() == 1);
    raw[1] = fill(cache, 1, 5, 130u);
    lengths[1] = 5;
    check_all({0, 1, 2});
}

TEST_CASE("attention: bad inputs throw clear errors and leave out untouched", "[reference]") {
    const int head_dim = 8;
    const kv_geometry g{2, 2, head_dim};
    f32_cache cache(kvcar::dense_layout(g), kvcar::identity_codec<float>{head_dim}, {2, 16});
    const int seq = cache.add_sequence();
    const int empty = cache.add_sequence();
    fill(cache, seq, 5, 140u);
    attention_params p{.n_heads = 4};
    const std::vector<float> q(std::size_t(2 * 4 * head_dim), 0.5f);  // two query tokens
    std::vector<float> out(q.size(), -7.0f);
    const std::vector<float> untouched = out;
    auto attend = [&](const attention_params& pp, std::span<const float> qq, int q_position,
                      std::span<float> oo, int layer = 0, int s = -1) {
        kvcar::reference_attention(cache, s < 0 ? seq : s, layer, pp, qq, q_position, oo);
    };

    KVCAR_REQUIRE_ERROR(attend({.n_heads = 3}, q, 0, out),
                        "reference_attention: n_heads 3 is not a positive multiple of the "
                        "cache's n_kv_heads 2");
    KVCAR_REQUIRE_ERROR(attend({.n_heads = 0}, q, 0, out), "n_heads 0 is not a positive multiple");
    KVCAR_REQUIRE_ERROR(attend({.n_heads = -2}, q, 0, out), "n_heads -2 is not a positive");
    KVCAR_REQUIRE_ERROR(attend(p, std::span<const float>(q).first(12), 0,
                               std::span(out).first(12)),
                        "q has 12 floats, not a positive multiple of n_heads * head_dim = 32");
    KVCAR_REQUIRE_ERROR(attend(p, std::span<const float>(), 0, std::span<float>()),
                        "q has 0 floats");
    KVCAR_REQUIRE_ERROR(attend(p, q, 0, std::span(out).first(32)),
                        "out has 32 floats but q has 64");
    KVCAR_REQUIRE_ERROR(attend(p, q, 4, out),
                        "queries at positions 4..5 go past the 5 tokens cached for sequence 0, "
                        "layer 0");
    KVCAR_REQUIRE_ERROR(attend(p, q, -1, out), "q_position -1 is negative");
    KVCAR_REQUIRE_ERROR(attend(p, q, 0, out, 2), "reference_attention: layer 2 is out of range");
    KVCAR_REQUIRE_ERROR(attend(p, q, 0, out, 0, empty), "go past the 0 tokens cached");
    KVCAR_REQUIRE_ERROR(attend(p, q, 0, out, 0, 5), "sequence 5 is not live");
    KVCAR_REQUIRE_ERROR(attend({.n_heads = 4, .scale = -1.0f}, q, 0, out),
                        "scale -1.000000 must be finite and not negative");
    KVCAR_REQUIRE_ERROR(attend({.n_heads = 4, .scale = INFINITY}, q, 0, out),
                        "must be finite and not negative");
    const rope_params odd_rope{10000.0f, rope_style::half, 5};
    KVCAR_REQUIRE_ERROR(
        attend({.n_heads = 4, .rope = rope_mode::on_read, .rope_cfg = odd_rope}, q, 0, out),
        "reference_attention: rope_cfg: the rotated width 5 is odd");
    // rope_cfg is only checked when it is used.
    std::vector<float> scratch(q.size());
    REQUIRE_NOTHROW(attend({.n_heads = 4, .rope_cfg = odd_rope}, q, 0, scratch));

    const std::span<const float> q1 = std::span<const float>(q).first(32);
    const std::span<float> out1 = std::span<float>(out).first(32);
    KVCAR_REQUIRE_ERROR(kvcar::reference_decode_attention(cache, empty, 1, p, q1, out1),
                        "reference_decode_attention: sequence 1 has no cached tokens in layer 1");
    KVCAR_REQUIRE_ERROR(kvcar::reference_decode_attention(cache, seq, 0, p, q, out),
                        "reference_decode_attention: q has 64 floats but one token of "
                        "n_heads * head_dim is 32");
    KVCAR_REQUIRE_ERROR(kvcar::reference_decode_attention(cache, seq, 0, p, q1, out1.first(8)),
                        "reference_decode_attention: out has 8 floats but q has 32");
    KVCAR_REQUIRE_ERROR(kvcar::reference_decode_attention(cache, seq, 0, {.n_heads = 3}, q1, out1),
                        "reference_decode_attention: n_heads 3 is not a positive multiple");
    KVCAR_REQUIRE_ERROR(kvcar::reference_decode_attention(cache, seq, -1, p, q1, out1),
                        "reference_decode_attention: layer -1 is out of range");

    REQUIRE(out == untouched);
    REQUIRE(cache.length(seq, 0) == 5);
    REQUIRE(cache.length(empty, 0) == 0);
}
