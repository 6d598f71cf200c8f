// Tests for kvcar/cuda/buffer.cuh: owning device arrays, checked copies, moves.
#include "catch.hpp"

#include <kvcar/cuda/buffer.cuh>

#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

using kvcar::gpu::device_buffer;

static_assert(!std::is_copy_constructible_v<device_buffer<float>>);
static_assert(std::is_nothrow_move_constructible_v<device_buffer<float>>);

namespace {
__global__ void add_one(int* x, int n) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) x[i] += 1;
}
}  // namespace

TEST_CASE("device_buffer: upload kernel download round trip", "[cuda]") {
    std::vector<int> host(1000);
    for (int i = 0; i < 1000; ++i) host[std::size_t(i)] = 3 * i - 7;
    device_buffer<int> d(host);
    REQUIRE(d.size() == 1000);
    REQUIRE(d.bytes() == 4000);
    REQUIRE(reinterpret_cast<std::uintptr_t>(d.data()) % 256 == 0);
    add_one<<<4, 256>>>(d.data(), 1000);
    KVCAR_CUDA_CHECK_LAUNCH("add_one");
    const std::vector<int> back = d.to_host();
    for (int i = 0; i < 1000; ++i) REQUIRE(back[std::size_t(i)] == 3 * i - 6);
}

TEST_CASE("device_buffer: partial copies at an offset and range checks", "[cuda]") {
    device_buffer<float> d(10);
    d.fill_bytes(0);
    const std::vector<float> three{1.0f, 2.0f, 3.0f};
    d.upload(three, 7);
    std::vector<float> all(10, -1.0f);
    d.download(all);
    REQUIRE(all[6] == 0.0f);
    REQUIRE(all[7] == 1.0f);
    REQUIRE(all[9] == 3.0f);
    KVCAR_REQUIRE_ERROR(d.upload(three, 8), "upload of 3 elements at offset 8 exceeds");
    std::vector<float> big(11);
    KVCAR_REQUIRE_ERROR(d.download(big), "download of 11 elements");
    REQUIRE(d.to_host()[9] == 3.0f);  // unchanged by the failed calls
    d.fill_bytes(0xff);
    REQUIRE(std::isnan(d.to_host()[0]));
}

TEST_CASE("device_buffer: moves transfer ownership; empty buffers are harmless", "[cuda]") {
    device_buffer<double> a(std::vector<double>{1.5, 2.5});
    const double* p = a.data();
    device_buffer<double> b(std::move(a));
    REQUIRE(b.data() == p);
    REQUIRE(a.data() == nullptr);
    REQUIRE(a.empty());
    device_buffer<double> c;
    c = std::move(b);
    REQUIRE(c.to_host() == std::vector<double>{1.5, 2.5});
    device_buffer<double> empty;
    REQUIRE(empty.to_host().empty());
    empty.fill_bytes(0);
    empty.upload(std::span<const double>());
    c.reserve_discard(1);
    REQUIRE(c.size() == 2);  // big enough already: kept
    c.reserve_discard(100);
    REQUIRE(c.size() == 100);
}
