// Tests for kvcar/device/cache_view.cuh: a kernel finds every (layer, group, K/V, sequence,
// token) record through the view — reuse resolved, pages resolved — exactly where the host does.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/device/cache_view.cuh>
#include <kvcar/layout/reuse_map.hpp>

#include <cstring>
#include <vector>

using namespace kvcar;

namespace {

/// Block (layer, group, kind), thread t: decodes token t of `seq` into out[(logical)][t][:].
template <class Codec>
__global__ void read_all(device::cache_view<Codec> view, int seq, int tokens, float* out) {
    const int layer = int(blockIdx.x), group = int(blockIdx.y);
    const kv_kind kind = kv_kind(blockIdx.z);
    const int t = int(threadIdx.x);
    if (t >= tokens) return;
    const int slot = view.slot(layer, group, kind);
    const int D = view.group_width();
    float* dst = out + (std::size_t(view.logical_index(layer, group, kind)) * tokens + t) * D;
    view.codecs[slot].decode(view.record(layer, group, kind, seq, t), dst);
}

}  // namespace

TEST_CASE("cache_view: records and reuse found on the device as on the host", "[device]") {
    const kv_geometry g{3, 4, 32};
    // Heads in pairs (2 groups per layer); layer 2 reuses layer 1's K of group 1 and layer 0's
    // V of group 0.
    const reuse_map map(g, 2, {{2, 1, 1, 1}}, {{2, 0, 0, 0}, {1, 0, 0, 0}});
    const identity_codec<bf16> c{64};
    kv_cache<identity_codec<bf16>, reuse_map, paged_storage> host(map, c, {3, 50, 16, 12});
    const int a = host.add_sequence(), b = host.add_sequence();
    kvcar_test::fill_sequence(host, a, 20, 5);
    kvcar_test::fill_sequence(host, b, 37, 6);
    gpu::device_kv_cache<identity_codec<bf16>, reuse_map> dev(map, c, {3, 50, 16, 12});
    dev.copy_from(host);
    const auto view = dev.view();
    REQUIRE(view.heads_per_group == 2);
    REQUIRE(view.token_width() == 128);
    for (int seq : {a, b}) {
        const int n = host.length(seq);
        const std::size_t per_slot = std::size_t(n) * 64;
        gpu::device_buffer<float> out = kvcar_test::poisoned(per_slot * map.logical_slot_count());
        read_all<<<dim3(3, 2, 2), 64>>>(view, seq, n, out.data());
        KVCAR_CUDA_CHECK_LAUNCH("read_all");
        const std::vector<float> got = out.to_host();
        std::vector<float> want(std::size_t(n) * 128);
        for (int layer = 0; layer < 3; ++layer) {
            for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                host.read(seq, layer, kind, 0, n, want);
                for (int group = 0; group < 2; ++group) {
                    const int logical = (layer * 2 + group) * 2 + int(kind);
                    for (int t = 0; t < n; ++t)
                        REQUIRE(std::memcmp(&got[(std::size_t(logical) * n + t) * 64],
                                            &want[std::size_t(t) * 128 + group * 64],
                                            64 * sizeof(float)) == 0);
                }
            }
        }
    }
}
