// Tests for kvcar/calib/adam.hpp: one step is Adam's formula, the clip scales the gradient to
// the norm given, and mismatched tensors are refused.
#include "catch.hpp"

#include <kvcar/calib/adam.hpp>

#include <cmath>
#include <span>
#include <vector>

using kvcar::calib::adam;

TEST_CASE("adam: the first step moves each weight by lr against its gradient's sign", "[calib]") {
    std::vector<double> w = {1.0, -2.0, 0.5}, g = {0.3, -4.0, 0.0};
    adam<double> opt({w.size()}, 0.1);
    const std::vector<std::span<double>> params = {w};
    const std::vector<std::span<const double>> grads = {g};
    CHECK(opt.step(params, grads) == Approx(std::sqrt(0.09 + 16.0)));
    // Bias-corrected m / √v is g / (|g| + ε) on step 1.
    CHECK(w[0] == Approx(1.0 - 0.1 * 0.3 / (0.3 + 1e-8)));
    CHECK(w[1] == Approx(-2.0 + 0.1 * 4.0 / (4.0 + 1e-8)));
    CHECK(w[2] == 0.5);
    CHECK(opt.steps() == 1);
}

TEST_CASE("adam: clipping scales the gradient down to the norm, not up", "[calib]") {
    using params = std::vector<std::span<float>>;
    using grads = std::vector<std::span<const float>>;
    // (30, 40) clipped to norm 5 is (3, 4) exactly in float: the steps must be those of (3, 4).
    std::vector<float> a = {1.0f, 2.0f}, b = a;
    const std::vector<float> big = {30.0f, 40.0f}, scaled = {3.0f, 4.0f}, turn = {-1.0f, 0.5f};
    adam<float> clipped({2}, 0.5f, 5.0f), plain({2}, 0.5f);
    CHECK(clipped.step(params{a}, grads{big}) == Approx(50.0));
    CHECK(plain.step(params{b}, grads{scaled}) == Approx(5.0));
    clipped.step(params{a}, grads{turn});  // below the norm: not scaled
    plain.step(params{b}, grads{turn});
    CHECK(a == b);
}

TEST_CASE("adam: bad parameters and misshapen tensors are refused", "[calib]") {
    KVCAR_REQUIRE_ERROR(adam<float>({1}, 0.0f), "lr must be positive");
    KVCAR_REQUIRE_ERROR(adam<float>({1}, 1e-3f, -1.0f), "clip_norm must be finite");
    adam<float> opt({2, 3}, 1e-3f);
    std::vector<float> x(2), y(3), z(2);
    KVCAR_REQUIRE_ERROR(opt.step(std::vector<std::span<float>>{x},
                                 std::vector<std::span<const float>>{x}),
                        "1 tensors and 1 gradients for an optimizer of 2");
    KVCAR_REQUIRE_ERROR(opt.step(std::vector<std::span<float>>{x, z},
                                 std::vector<std::span<const float>>{x, z}),
                        "tensor 1 changed shape");
    CHECK(opt.steps() == 0);
}
