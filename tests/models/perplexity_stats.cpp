// Tests for the per-token statistics of kvcar-perplexity (examples/models/tensor_ops.hpp):
// KL divergence between next-token distributions, the greedy token (argmax, which kvcar-serve
// and kvcar-generate sample with too), and the perplexity's standard error, against values
// worked out by hand and std::max_element.
#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "examples/models/tensor_ops.hpp"

namespace ex = kvcar::examples;

TEST_CASE("perplexity stats: KL divergence of softmax rows", "[models][perplexity]") {
    const std::vector<float> p = {0.0f, 0.0f};                     // (1/2, 1/2)
    const std::vector<float> q = {float(std::log(3.0)), 0.0f};     // (3/4, 1/4)
    // KL(P||Q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    CHECK(ex::kl_divergence(p, q) == Approx(0.5 * std::log(4.0 / 3.0)).epsilon(1e-6));
    // KL(Q||P) = 3/4 ln(3/2) + 1/4 ln(1/2): not symmetric.
    CHECK(ex::kl_divergence(q, p) ==
          Approx(0.75 * std::log(1.5) + 0.25 * std::log(0.5)).epsilon(1e-6));
    // Equal rows, and rows that differ by a constant (the same distribution), give 0.
    const std::vector<float> r = {1.5f, -2.0f, 0.25f, 7.0f};
    std::vector<float> shifted = r;
    for (float& v : shifted) v += 100.0f;
    CHECK(ex::kl_divergence(r, r) == 0.0);
    CHECK(ex::kl_divergence(r, shifted) == Approx(0.0).margin(1e-9));
    // Large logits do not overflow (log-sum-exp in double).
    const std::vector<float> big = {1000.0f, 0.0f}, big2 = {0.0f, 1000.0f};
    CHECK(ex::kl_divergence(big, big2) == Approx(1000.0).epsilon(1e-6));
    CHECK(ex::argmax(r) == 3);
    CHECK(ex::argmax(std::vector<float>{2.0f, 2.0f}) == 0);  // first on ties
}

TEST_CASE("perplexity stats: standard error and KL quantiles", "[models][perplexity]") {
    ex::token_stats s;
    s.nll = {1.0, 2.0, 3.0};
    // Mean 2, sample standard deviation 1: PPL e^2 with standard error e^2 / sqrt(3).
    CHECK(s.perplexity() == Approx(std::exp(2.0)));
    CHECK(s.perplexity_stderr() == Approx(std::exp(2.0) / std::sqrt(3.0)));
    s.nll = {1.0};
    CHECK(std::isnan(s.perplexity_stderr()));  // one token: no spread to estimate
    CHECK(std::isnan(s.mean_kl()));
    s.kl = {0.5, 0.1, 0.4, 0.2, 0.3};
    CHECK(s.mean_kl() == Approx(0.3));
    CHECK(s.kl_quantile(0.5) == 0.3);   // nearest rank 3 of 5
    CHECK(s.kl_quantile(1.0) == 0.5);   // the largest
    CHECK(s.kl_quantile(0.99) == 0.5);  // rank ceil(4.95) = 5
    CHECK(s.kl_quantile(0.0) == 0.1);   // the smallest
}

TEST_CASE("argmax: the first largest, as std::max_element gives it", "[models][perplexity]") {
    // Every length around the four-lane main loop and its tail, the maximum placed in each
    // lane and in the tail, with ties at both sides of it.
    for (int n = 1; n <= 13; ++n) {
        for (int at = 0; at < n; ++at) {
            std::vector<float> x(static_cast<std::size_t>(n), -3.0f);
            x[std::size_t(at)] = 5.0f;
            CHECK(ex::argmax(x) == at);
            if (at + 1 < n) {
                x[std::size_t(n - 1)] = 5.0f;  // a later tie: the first one still wins
                CHECK(ex::argmax(x) == at);
            }
        }
    }
    // Against std::max_element on rows whose values repeat (many ties), negative rows and
    // a vocabulary-sized row.
    std::uint32_t state = 12345u;
    const auto next = [&] { return state = state * 1664525u + 1013904223u; };
    for (int n : {2, 7, 64, 1000, 32000}) {
        std::vector<float> x(static_cast<std::size_t>(n));
        for (float& v : x) v = float(int(next() >> 24) % 17) - 20.0f;
        CHECK(ex::argmax(x) == int(std::max_element(x.begin(), x.end()) - x.begin()));
    }
    // Infinities; NaNs are never the largest; an empty or all-NaN row gives 0.
    CHECK(ex::argmax(std::vector<float>{-INFINITY, -INFINITY}) == 0);
    CHECK(ex::argmax(std::vector<float>{1.0f, INFINITY, 2.0f}) == 1);
    CHECK(ex::argmax(std::vector<float>{NAN, 1.0f, 3.0f, NAN, 2.0f}) == 2);
    CHECK(ex::argmax(std::vector<float>{NAN, NAN}) == 0);
    CHECK(ex::argmax(std::vector<float>{}) == 0);
}
