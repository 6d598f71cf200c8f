// Tests for kvcar/cuda/device_kv_cache.cuh: page bookkeeping (the kv_cache contract), all-or-
// nothing appends, byte-exact copies of a host cache, and argument errors.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

using namespace kvcar;

namespace {
using f16_cache = gpu::device_kv_cache<identity_codec<f16>>;
const kv_geometry geom{2, 2, 64};

f16_cache small_cache(int pages = 6) {
    return f16_cache(dense_layout(geom), identity_codec<f16>{64},
                     {.max_sequences = 3, .max_tokens = 40, .page_size = 16, .n_pages = pages});
}
std::vector<int> v(std::initializer_list<int> x) { return std::vector<int>(x); }
}  // namespace

TEST_CASE("device_kv_cache: construction shape and errors", "[cuda]") {
    f16_cache c = small_cache();
    REQUIRE(c.n_slots() == 8);
    REQUIRE(c.bytes_per_token() == 8 * 128);
    REQUIRE(c.pages_per_sequence() == 3);
    REQUIRE(c.free_pages() == 6);
    REQUIRE(c.pool_bytes() >= std::size_t(6) * 16 * 128 * 8);
    const device::cache_view<identity_codec<f16>> view = c.view();
    REQUIRE(view.n_slots == 8);
    REQUIRE(view.groups_per_layer == 2);
    REQUIRE(view.group_width() == 64);
    REQUIRE(view.max_latent_width == 64);

    // Every cache gets its own serial, and a move takes it along with the memory.
    f16_cache other = small_cache();
    REQUIRE(other.serial() != c.serial());
    const std::uint64_t serial = other.serial();
    const f16_cache moved = std::move(other);
    REQUIRE(moved.serial() == serial);

    KVCAR_REQUIRE_ERROR(f16_cache(dense_layout(geom), identity_codec<f16>{32}, {3, 40, 16, 6}),
                        "slot 0 has group width 32");
    KVCAR_REQUIRE_ERROR(f16_cache(dense_layout(geom), identity_codec<f16>{64}, {3, 40, 0, 6}),
                        "must be positive");
    KVCAR_REQUIRE_ERROR(f16_cache(dense_layout(geom), std::vector<identity_codec<f16>>(3, {64}),
                                  {3, 40, 16, 6}),
                        "3 codecs for a layout of 8 slots");
}

TEST_CASE("device_kv_cache: sequences and appends follow kv_cache's contract", "[cuda]") {
    f16_cache c = small_cache(5);
    const int a = c.add_sequence(), b = c.add_sequence();
    REQUIRE(a == 0);
    REQUIRE(b == 1);
    REQUIRE(c.live_sequences() == 2);
    REQUIRE(c.prepare_append(0, v({a, b}), v({17, 1}), nullptr) == std::vector<std::int32_t>{0, 0});
    REQUIRE(c.length(a, 0) == 17);
    REQUIRE(c.length(a) == 0);  // layer 1 has nothing yet
    REQUIRE(c.pages_held(a) == 2);
    REQUIRE(c.capacity(a) == 32);
    REQUIRE(c.free_pages() == 2);
    REQUIRE(c.prepare_append(1, v({a}), v({17}), nullptr) == std::vector<std::int32_t>{0});
    REQUIRE(c.free_pages() == 2);  // the pages are shared by all layers
    REQUIRE(c.prepare_append(0, v({a}), v({1}), nullptr) == std::vector<std::int32_t>{17});
    REQUIRE(c.length(a, 0) == 18);

    SECTION("out of pages: nothing changes for any item") {
        KVCAR_REQUIRE_ERROR(c.prepare_append(0, v({b, a}), v({39, 20}), nullptr),
                            "out of pages: the append needs 3 more, 2 free");
        REQUIRE(c.length(b, 0) == 1);
        REQUIRE(c.length(a, 0) == 18);
        REQUIRE(c.free_pages() == 2);
    }
    SECTION("bad items throw before anything changes") {
        KVCAR_REQUIRE_ERROR(c.prepare_append(0, v({b, b}), v({1, 1}), nullptr), "appears twice");
        KVCAR_REQUIRE_ERROR(c.prepare_append(0, v({b}), v({-1}), nullptr), "negative token count");
        KVCAR_REQUIRE_ERROR(c.prepare_append(0, v({b, 2}), v({1, 1}), nullptr),
                            "sequence 2 is not live");
        KVCAR_REQUIRE_ERROR(c.prepare_append(2, v({b}), v({1}), nullptr), "layer 2 out of range");
        KVCAR_REQUIRE_ERROR(c.prepare_append(0, v({a}), v({23}), nullptr), "exceeds max_tokens 40");
        KVCAR_REQUIRE_ERROR(c.prepare_append(0, v({a}), v({1, 2}), nullptr), "1 sequences but 2");
        REQUIRE(c.length(b, 0) == 1);
        REQUIRE(c.free_pages() == 2);
    }
    SECTION("removing returns pages and the id") {
        c.remove_sequence(a);
        REQUIRE_FALSE(c.is_live(a));
        REQUIRE(c.free_pages() == 4);
        KVCAR_REQUIRE_ERROR(c.length(a), "sequence 0 is not live");
        REQUIRE(c.add_sequence() == a);
        REQUIRE(c.length(a) == 0);
        REQUIRE(c.add_sequence() == 2);
        KVCAR_REQUIRE_ERROR(c.add_sequence(), "all 3 sequences are in use");
    }
}

TEST_CASE("device_kv_cache: copy_from copies a host cache's records byte for byte", "[cuda]") {
    const reuse_map map(geom, 1, {{1, 0, 0, 0}}, {});
    using codec = quantized_codec<identity_codec<float>>;
    const codec q8 = make_quantized(identity_codec<float>{64});
    kv_cache<codec, reuse_map, paged_storage> host(map, q8, {4, 64, 16, 12});
    const int s0 = host.add_sequence(), s1 = host.add_sequence(), s2 = host.add_sequence();
    kvcar_test::fill_sequence(host, s0, 5, 1);
    kvcar_test::fill_sequence(host, s2, 40, 2);
    host.remove_sequence(s1);  // a hole in the ids
    gpu::device_kv_cache<codec, reuse_map> dev(map, q8, {5, 64, 16, 8});
    dev.add_sequence();  // replaced by the copy
    dev.copy_from(host);
    REQUIRE(dev.live_sequences() == 2);
    REQUIRE(dev.is_live(s0));
    REQUIRE_FALSE(dev.is_live(s1));
    REQUIRE(dev.length(s2) == 40);
    REQUIRE(dev.free_pages() == 8 - 1 - 3);
    for (int slot = 0; slot < map.n_slots(); ++slot) {
        for (int seq : {s0, s2}) {
            const int n = host.length(seq);
            const std::vector<std::byte> got = dev.download_records(slot, seq, 0, n);
            const page_view pv = host.view(slot);
            for (int t = 0; t < n; ++t)
                REQUIRE(std::memcmp(got.data() + std::size_t(t) * pv.record_bytes,
                                    pv.record(seq, t), pv.record_bytes) == 0);
        }
    }
    KVCAR_REQUIRE_ERROR(dev.download_records(0, s0, 0, 17), "outside its capacity 16");

    gpu::device_kv_cache<codec, reuse_map> tiny(map, q8, {5, 64, 16, 3});
    KVCAR_REQUIRE_ERROR(tiny.copy_from(host), "out of pages");
    const reuse_map other(geom, 1, {}, {{1, 1, 0, 1}});
    gpu::device_kv_cache<codec, reuse_map> different(other, q8, {5, 64, 16, 8});
    KVCAR_REQUIRE_ERROR(different.copy_from(host), "same layout");
}
