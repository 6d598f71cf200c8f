// Tests for the dispatch of kvcar/kernels/decode_attention.cuh: which decode path policy reads
// which codec (checked at compile time, so a path that silently stopped accepting its codec
// fails the build), the order the dispatcher walks, and the run-time value -> template dispatch.
// Nothing here launches a kernel.
#include "catch.hpp"

#include <kvcar/codec/autoencoder.hpp>
#include <kvcar/codec/identity.hpp>
#include <kvcar/codec/linear.hpp>
#include <kvcar/codec/quantized.hpp>
#include <kvcar/kernels/decode_attention.cuh>

#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

namespace kd = kvcar::kernels::detail;
using kvcar::autoencoder_codec;
using kvcar::bf16;
using kvcar::f16;
using kvcar::fp8_e4m3;
using kvcar::identity_codec;
using kvcar::linear_codec;
using kvcar::quantized_codec;

// The direct paths read identity records; tensor cores only f16 and int8 ones.
static_assert(kd::direct_tensor_cores_policy::accepts<identity_codec<f16>>);
static_assert(kd::direct_tensor_cores_policy::accepts<quantized_codec<identity_codec<float>>>);
static_assert(!kd::direct_tensor_cores_policy::accepts<identity_codec<bf16>>);
static_assert(
    !kd::direct_tensor_cores_policy::accepts<quantized_codec<identity_codec<float>, fp8_e4m3>>);
static_assert(kd::direct_policy::accepts<identity_codec<bf16>>);
static_assert(kd::direct_policy::accepts<quantized_codec<identity_codec<float>, fp8_e4m3>>);
static_assert(!kd::direct_policy::accepts<linear_codec<f16>>);
// Latent space: every affine codec on CUDA cores, f16 / int8 / fp8 latents on tensor cores.
static_assert(kd::latent_tensor_cores_policy::accepts<linear_codec<f16>>);
static_assert(kd::latent_tensor_cores_policy::accepts<quantized_codec<linear_codec<float>>>);
static_assert(!kd::latent_tensor_cores_policy::accepts<linear_codec<float>>);
static_assert(kd::latent_policy::accepts<linear_codec<float>>);
static_assert(!kd::latent_policy::accepts<identity_codec<f16>>);
static_assert(!kd::latent_policy::accepts<autoencoder_codec<f16>>);
// The autoencoder on tensor cores needs f16 latents (exact as MMA operands).
static_assert(kd::autoencoder_tensor_cores_policy::accepts<autoencoder_codec<f16>>);
static_assert(!kd::autoencoder_tensor_cores_policy::accepts<autoencoder_codec<float>>);
// decoded is the fallback: it takes every codec.
static_assert(kd::decoded_policy::accepts<autoencoder_codec<float>>);
static_assert(kd::decoded_policy::accepts<identity_codec<bf16>>);

// The walk: tensor-core variants before the CUDA-core kernels that read the same codecs, decoded
// last (it accepts everything, so a path after it would never run).
static_assert(std::is_same_v<
              kd::decode_policies,
              kd::policy_list<kd::direct_tensor_cores_policy, kd::direct_policy,
                              kd::latent_tensor_cores_policy, kd::latent_policy,
                              kd::autoencoder_tensor_cores_policy, kd::decoded_policy>>);

}  // namespace

TEST_CASE("decode dispatch: run-time values reach the template instantiated for them") {
    std::vector<int> seen;
    auto record = [&]<int V>() { seen.push_back(V); };
    CHECK(kd::dispatch_head_dim(128, record));
    CHECK(kd::dispatch_gqa(8, record));
    CHECK(kd::dispatch_int<1, 2>(2, record));
    CHECK(seen == std::vector<int>{128, 8, 2});  // one call each, with the matching value
    seen.clear();
    // Values with no instantiation run nothing and say so: the policies then decline.
    CHECK_FALSE(kd::dispatch_head_dim(96, record));
    CHECK_FALSE(kd::dispatch_gqa(3, record));
    CHECK_FALSE(kd::dispatch_int<4, 8, 16>(0, record));
    CHECK(seen.empty());
}
