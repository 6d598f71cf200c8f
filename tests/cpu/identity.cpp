#include "catch.hpp"
#include <kvcar/codec/identity.hpp>
#include <vector>
static_assert(kvcar::latent_codec<kvcar::identity_codec<kvcar::f16>>);
TEST_CASE("identity placeholder compiles") { REQUIRE(kvcar::identity_codec<float>{4}.bytes_per_group() == 16); }
