// The one place that knows which Catch2 is installed: 2.13 (Debian, CI) or 3.x (GPU machine).
#pragma once
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
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
