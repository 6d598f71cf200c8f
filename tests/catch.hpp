// The one place that knows which Catch2 is installed: 2.13 (Debian, CI) or 3.x (GPU machine).
// Catch2 3 splits what 2.13's single header holds; every feature the tests use is included here:
// test cases and sections, INFO/WARN/CAPTURE, Approx, GENERATE with values/range/take/table,
// template test cases, string and floating-point matchers.
#pragma once
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_message.hpp>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/generators/catch_generators_adapters.hpp>
#include <catch2/generators/catch_generators_range.hpp>
#include <catch2/matchers/catch_matchers_floating_point.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
#define KVCAR_STRING_CONTAINS Catch::Matchers::ContainsSubstring
#else
#include <catch2/catch.hpp>
#define KVCAR_STRING_CONTAINS Catch::Matchers::Contains
#endif

/// REQUIRE that `expr` throws kvcar::error whose message contains `fragment`.
#define KVCAR_REQUIRE_ERROR(expr, fragment) \
    REQUIRE_THROWS_WITH((expr), KVCAR_STRING_CONTAINS(fragment))
