// Tests for kvcar/codec/linear.hpp: the affine low-rank codec and its latent-space attention
// identities.
#include "catch.hpp"

#include <kvcar/codec/linear.hpp>

#include <cmath>
#include <cstddef>
#include <random>
#include <type_traits>
#include <vector>

using namespace kvcar;

static_assert(kv_codec<linear_codec<f16>>);
static_assert(latent_codec<linear_codec<float>>);
static_assert(affine_latent_codec<linear_codec<f16>>);
static_assert(affine_latent_codec<linear_codec<bf16>>);
static_assert(affine_latent_codec<linear_codec<float>>);
static_assert(std::is_trivially_copyable_v<linear_codec<f16>>);

namespace {

std::vector<float> gaussian(std::size_t n, std::mt19937& rng, float sd = 1.0f) {
    std::normal_distribution<float> g(0.0f, sd);
    std::vector<float> v(n);
    for (float& x : v) x = g(rng);
    return v;
}

linear_params random_params(int width, int rank, int heads, std::uint32_t seed) {
    std::mt19937 rng(seed);
    linear_params p;
    p.width = width;
    p.rank = rank;
    p.heads = heads;
    p.mean = gaussian(std::size_t(width), rng, 2.0f);
    p.basis = gaussian(std::size_t(width) * std::size_t(rank), rng, 0.3f);
    return p;
}

std::vector<float> floats(int n) { return std::vector<float>(static_cast<std::size_t>(n)); }

double dot(const float* a, const float* b, int n) {
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
    return s;
}

}  // namespace

TEST_CASE("linear: to_latent and from_latent are Pᵀ(x − μ) and P z + μ", "[codec]") {
    const linear_params p = random_params(12, 5, 3, 1);
    const auto codec = p.codec<float>();
    REQUIRE(codec.group_width() == 12);
    REQUIRE(codec.latent_width() == 5);
    REQUIRE(codec.head_dim() == 4);
    std::mt19937 rng(2);
    const std::vector<float> x = gaussian(12, rng);
    std::vector<float> z(5), y(12);
    codec.to_latent(x.data(), z.data());
    for (int j = 0; j < 5; ++j) {
        double want = 0.0;
        for (int i = 0; i < 12; ++i)
            want += double(p.basis[i * 5 + j]) * (double(x[i]) - p.mean[i]);
        REQUIRE(z[j] == Approx(want).margin(1e-5));
    }
    codec.from_latent(z.data(), y.data());
    for (int i = 0; i < 12; ++i) {
        double want = p.mean[i];
        for (int j = 0; j < 5; ++j) want += double(p.basis[i * 5 + j]) * z[j];
        REQUIRE(y[i] == Approx(want).margin(1e-5));
    }
}

TEST_CASE("linear: an orthonormal full-rank basis reconstructs exactly (up to storage rounding)",
          "[codec]") {
    // A signed permutation scaled by 1 is orthonormal and its products are exact in float.
    const int width = 8;
    linear_params p;
    p.width = width;
    p.rank = width;
    p.mean = {1.0f, -2.0f, 0.5f, 3.0f, 0.0f, -1.0f, 4.0f, 0.25f};
    p.basis.assign(std::size_t(width * width), 0.0f);
    const int perm[width] = {3, 0, 7, 1, 6, 2, 5, 4};
    for (int i = 0; i < width; ++i) p.basis[i * width + perm[i]] = (i % 2) ? -1.0f : 1.0f;
    const std::vector<float> x = {0.1f, 7.0f, -3.5f, 2.0f, 1e3f, -0.001f, 5.5f, 6.0f};
    std::vector<float> y(x.size());

    const auto exact = p.codec<float>();
    std::vector<std::byte> record(exact.bytes_per_group());
    exact.encode(x.data(), record.data());
    exact.decode(record.data(), y.data());
    for (std::size_t i = 0; i < x.size(); ++i)
        REQUIRE(y[i] == Approx(x[i]).epsilon(1e-6).margin(1e-6));

    // With f16 storage, each latent is rounded once: error <= 2^-11 relative to |x - μ|.
    const auto half = p.codec<f16>();
    REQUIRE(half.bytes_per_group() == 16);
    std::vector<std::byte> rec16(half.bytes_per_group());
    half.encode(x.data(), rec16.data());
    half.decode(rec16.data(), y.data());
    for (std::size_t i = 0; i < x.size(); ++i)
        REQUIRE(std::fabs(y[i] - x[i]) <= std::fabs(x[i] - p.mean[i]) * 4.9e-4f + 1e-6f);
}

TEST_CASE("linear: encode stores the latent rounded to T, decode is from_latent of it", "[codec]") {
    const linear_params p = random_params(16, 7, 1, 3);
    const auto codec = p.codec<bf16>();
    REQUIRE(codec.bytes_per_group() == 16);  // 14 bytes padded to 16
    std::mt19937 rng(4);
    const std::vector<float> x = gaussian(16, rng);
    std::vector<float> z(7), zr(7), y(16), want(16);
    std::vector<std::byte> record(codec.bytes_per_group());
    codec.to_latent(x.data(), z.data());
    codec.encode(x.data(), record.data());
    const bf16* stored = reinterpret_cast<const bf16*>(record.data());
    for (std::size_t j = 0; j < 7; ++j) {
        REQUIRE(stored[j].bits == to_bf16(z[j]).bits);
        zr[j] = to_float(stored[j]);
    }
    codec.decode(record.data(), y.data());
    codec.from_latent(zr.data(), want.data());
    REQUIRE(y == want);
}

TEST_CASE("linear: project_query and lift equal decode-then-dot and decode-then-sum", "[codec]") {
    // heads = 1: one KV head per group; heads = 4: a whole layer's token vector shares a latent.
    for (const int heads : {1, 4}) {
        INFO(heads << " heads in the group");
        const int head_dim = 16;
        const int width = heads * head_dim;
        const int rank = heads == 1 ? 6 : 24;
        const linear_params p = random_params(width, rank, heads, 10u + std::uint32_t(heads));
        const auto codec = p.codec<f16>();
        REQUIRE(codec.head_dim() == head_dim);
        std::mt19937 rng(20);

        const int tokens = 9;
        std::vector<std::vector<std::byte>> records(tokens);
        std::vector<std::vector<float>> decoded(tokens), latents(tokens);
        for (int t = 0; t < tokens; ++t) {
            const std::vector<float> x = gaussian(std::size_t(width), rng, 3.0f);
            records[t].resize(codec.bytes_per_group());
            codec.encode(x.data(), records[t].data());
            decoded[t].resize(std::size_t(width));
            codec.decode(records[t].data(), decoded[t].data());
            latents[t].resize(std::size_t(rank));  // the stored latent, as floats
            const f16* stored = reinterpret_cast<const f16*>(records[t].data());
            for (int j = 0; j < rank; ++j) latents[t][j] = to_float(stored[j]);
        }

        for (int h = 0; h < heads; ++h) {
            INFO("head " << h << " of " << heads);
            const std::vector<float> q = gaussian(std::size_t(head_dim), rng);
            std::vector<float> qz = floats(rank);
            const float bias = codec.project_query(q.data(), h, qz.data());
            for (int t = 0; t < tokens; ++t) {
                const double direct = dot(q.data(), decoded[t].data() + h * head_dim, head_dim);
                const double latent = dot(qz.data(), latents[t].data(), rank) + bias;
                REQUIRE(latent == Approx(direct).epsilon(1e-5).margin(1e-5));
            }
            double mean_dot = 0.0;  // the returned bias is exactly q·μ_h
            for (int r = 0; r < head_dim; ++r) mean_dot += double(q[r]) * p.mean[h * head_dim + r];
            REQUIRE(bias == Approx(mean_dot).epsilon(1e-6).margin(1e-6));

            std::uniform_real_distribution<float> weight(0.0f, 1.0f);
            std::vector<float> a(tokens);
            for (float& w : a) w = weight(rng);
            std::vector<float> z_sum(std::size_t(rank), 0.0f);
            float a_sum = 0.0f;
            std::vector<double> direct(std::size_t(head_dim), 0.0);
            for (int t = 0; t < tokens; ++t) {
                a_sum += a[t];
                for (int j = 0; j < rank; ++j) z_sum[j] += a[t] * latents[t][j];
                for (int r = 0; r < head_dim; ++r)
                    direct[r] += double(a[t]) * decoded[t][h * head_dim + r];
            }
            std::vector<float> lifted = floats(head_dim);
            codec.lift(z_sum.data(), a_sum, h, lifted.data());
            for (int r = 0; r < head_dim; ++r)
                REQUIRE(lifted[r] == Approx(direct[r]).epsilon(1e-5).margin(1e-5));
        }
    }
}

TEST_CASE("linear_params: validation names the problem and changes nothing", "[codec]") {
    const linear_params good = random_params(8, 3, 2, 5);
    REQUIRE_NOTHROW(good.validate());

    linear_params p = good;
    p.mean.pop_back();
    KVCAR_REQUIRE_ERROR(p.validate(), "mean has 7 values but width is 8");
    KVCAR_REQUIRE_ERROR(p.codec<f16>(), "mean has 7 values");

    p = good;
    p.basis.push_back(0.0f);
    KVCAR_REQUIRE_ERROR(p.validate(), "basis has 25 values but width x rank is 24");

    p = good;
    p.rank = 0;
    KVCAR_REQUIRE_ERROR(p.validate(), "rank must be positive");

    p = good;
    p.rank = 9;
    KVCAR_REQUIRE_ERROR(p.validate(), "rank 9 exceeds width 8");

    p = good;
    p.heads = 3;
    KVCAR_REQUIRE_ERROR(p.validate(), "width 8 is not divisible by heads 3");

    p = good;
    p.heads = 0;
    KVCAR_REQUIRE_ERROR(p.validate(), "heads must be positive");

    p = good;
    p.width = 0;
    KVCAR_REQUIRE_ERROR(p.validate(), "width must be positive");

    p = good;
    p.basis[4] = std::nanf("");
    KVCAR_REQUIRE_ERROR(p.validate(), "basis is not finite");

    p = good;
    p.mean[1] = INFINITY;
    KVCAR_REQUIRE_ERROR(p.validate(), "mean is not finite");

    linear_params wide;
    wide.width = max_latent_width + 2;
    wide.rank = max_latent_width + 1;
    wide.mean.assign(std::size_t(wide.width), 0.0f);
    wide.basis.assign(std::size_t(wide.width) * std::size_t(wide.rank), 0.0f);
    KVCAR_REQUIRE_ERROR(wide.validate(), "exceeds max_latent_width 1024");

    // A failed validation leaves the params as they were.
    p = good;
    p.rank = 0;
    const linear_params before = p;
    REQUIRE_THROWS_AS(p.codec<float>(), kvcar::error);
    REQUIRE(p.rank == before.rank);
    REQUIRE(p.mean == before.mean);
    REQUIRE(p.basis == before.basis);
}
