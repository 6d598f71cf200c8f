// Tests for kvcar/calib/reuse_selection.hpp: distances on hand-checked data, planted identical
// heads are exactly the ones chosen, threshold / count / byte-budget variants, chains, and the
// result is a valid reuse_map.
#include <cmath>
#include <cstddef>
#include <kvcar/calib/reuse_selection.hpp>
#include <kvcar/layout/reuse_map.hpp>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"

using namespace kvcar;
using namespace kvcar::calib;

static_assert(kv_layout<reuse_map>);

namespace {

using idx = std::size_t;
using activations = std::vector<std::vector<float>>;  // [layer][token * width + i]

activations random_layers(kv_geometry g, idx tokens, std::uint32_t seed, float sd = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.0f, sd);
    activations a(idx(g.n_layers), std::vector<float>(tokens * idx(g.token_width())));
    for (auto& layer : a)
        for (float& v : layer) v = n(rng);
    return a;
}

/// Makes head `head` of `layer` equal to head `head` of layer − 1 plus noise of size `noise`.
void plant(activations& a, kv_geometry g, idx tokens, int layer, int head, float noise,
           std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.0f, 1.0f);
    const idx W = idx(g.token_width()), hd = idx(g.head_dim);
    for (idx t = 0; t < tokens; ++t)
        for (idx i = 0; i < hd; ++i) {
            const idx k = t * W + idx(head) * hd + i;
            a[idx(layer)][k] = a[idx(layer - 1)][k] + noise * n(rng);
        }
}

}  // namespace

TEST_CASE("reuse distances are mean L1 per element, layer 0 infinite", "[calib][reuse_selection]") {
    // 2 layers x 2 heads x 2 dims, 2 tokens, by hand.
    const kv_geometry g{2, 2, 2};
    const activations a = {{1, 2, 3, 4, /**/ -1, 0, 0, 8}, {1, 3, 3, 0, /**/ -2, 2, 0, 4}};
    const reuse_distance_table t = reuse_distances(a, g, kv_kind::value);
    REQUIRE(t.kind == kv_kind::value);
    REQUIRE(t.tokens == 2);
    REQUIRE(std::isinf(t.distance(0, 0)));
    REQUIRE(std::isinf(t.normalized(0, 1)));
    // head 0: |1-1| + |3-2| + |-2+1| + |2-0| = 4 over 4 elements
    REQUIRE(t.distance(1, 0) == 1.0);
    // head 1: |3-3| + |0-4| + |0-0| + |4-8| = 8 over 4 elements
    REQUIRE(t.distance(1, 1) == 2.0);
    // mean |x| of layer 1: (1+3+3+0+2+2+0+4)/8 = 15/8
    REQUIRE(t.scale[1] == 15.0 / 8.0);
    REQUIRE(t.normalized(1, 1) == Approx(2.0 / (15.0 / 8.0)));

    // Groups of 2 heads: one group, distance (4 + 8) / 8.
    const reuse_distance_table t2 = reuse_distances(a, g, kv_kind::value, 2);
    REQUIRE(t2.groups_per_layer() == 1);
    REQUIRE(t2.distance(1, 0) == 1.5);
    KVCAR_REQUIRE_ERROR(t2.distance(1, 1), "(1, 1) out of range");
}

TEST_CASE("normalised distances are scale-free; raw ones are not", "[calib][reuse_selection]") {
    const kv_geometry g{4, 3, 8};
    const activations a = random_layers(g, 50, 1);
    activations scaled = a;
    for (auto& layer : scaled)
        for (float& v : layer) v *= 16.0f;  // exact in float
    const auto t = reuse_distances(a, g, kv_kind::key);
    const auto s = reuse_distances(scaled, g, kv_kind::value);
    for (int l = 1; l < 4; ++l)
        for (int h = 0; h < 3; ++h) {
            REQUIRE(s.distance(l, h) == Approx(16.0 * t.distance(l, h)));
            REQUIRE(s.normalized(l, h) == Approx(t.normalized(l, h)));
        }
}

TEST_CASE("planted identical heads are exactly the heads selected", "[calib][reuse_selection]") {
    const kv_geometry g{5, 3, 16};
    const idx T = 64;
    activations k = random_layers(g, T, 2), v = random_layers(g, T, 3);
    plant(k, g, T, 3, 1, 0.0f, 10);  // K: layer 3 head 1 == layer 2 head 1
    plant(v, g, T, 2, 0, 0.0f, 11);  // V: layer 2 head 0 == layer 1 head 0
    plant(v, g, T, 4, 2, 0.0f, 12);  //    layer 4 head 2 == layer 3 head 2
    const auto kt = reuse_distances(k, g, kv_kind::key);
    const auto vt = reuse_distances(v, g, kv_kind::value);
    REQUIRE(kt.distance(3, 1) == 0.0);
    REQUIRE(kt.distance(3, 0) > 0.5);  // independent normal heads: mean |a − b| ≈ 1.13

    const std::vector<reuse_entry> k_want = {{3, 1, 2, 1}};
    const std::vector<reuse_entry> v_want = {{2, 0, 1, 0}, {4, 2, 3, 2}};
    REQUIRE(select_reuse_threshold(kt, 1e-9) == k_want);
    REQUIRE(select_reuse_threshold(vt, 1e-9) == v_want);
    REQUIRE(select_reuse_threshold(kt, 0.0, {.normalized = false}) == k_want);
    REQUIRE(select_reuse_budget(kt, 1) == k_want);
    REQUIRE(select_reuse_budget(vt, 2) == v_want);
    REQUIRE(select_reuse_budget(vt, 0).empty());
    REQUIRE(select_reuse_threshold(kt, -1.0).empty());

    // The selection is a valid reuse_map that stores 3 fewer slots.
    const reuse_map map(g, 1, select_reuse_threshold(kt, 1e-9), select_reuse_threshold(vt, 1e-9));
    REQUIRE(map.n_slots() == map.logical_slot_count() - 3);
    REQUIRE(map.slot(3, 1, kv_kind::key) == map.slot(2, 1, kv_kind::key));
    REQUIRE(map.slot(4, 2, kv_kind::value) == map.slot(3, 2, kv_kind::value));
    REQUIRE(!map.owns(2, 0, kv_kind::value));
}

TEST_CASE("count and threshold variants take the closest heads first", "[calib][reuse_selection]") {
    const kv_geometry g{4, 4, 8};
    const idx T = 200;
    activations k = random_layers(g, T, 4);
    // Graded similarity: noise 0.1 < 0.2 < 0.3 < 0.4 at these (layer, head)s.
    plant(k, g, T, 2, 3, 0.3f, 20);
    plant(k, g, T, 1, 0, 0.1f, 21);
    plant(k, g, T, 3, 2, 0.4f, 22);
    plant(k, g, T, 3, 1, 0.2f, 23);
    const auto t = reuse_distances(k, g, kv_kind::key);
    REQUIRE(select_reuse_budget(t, 1) == std::vector<reuse_entry>{{1, 0, 0, 0}});
    REQUIRE(select_reuse_budget(t, 2) == std::vector<reuse_entry>{{1, 0, 0, 0}, {3, 1, 2, 1}});
    REQUIRE(select_reuse_budget(t, 4) ==
            std::vector<reuse_entry>{{1, 0, 0, 0}, {2, 3, 1, 3}, {3, 1, 2, 1}, {3, 2, 2, 2}});
    // A threshold between the 3rd and 4th distances selects the first three.
    const double cut = 0.5 * (t.normalized(2, 3) + t.normalized(3, 2));
    REQUIRE(select_reuse_threshold(t, cut) ==
            std::vector<reuse_entry>{{1, 0, 0, 0}, {2, 3, 1, 3}, {3, 1, 2, 1}});
    // Every eligible group (layers 1..3), and no more.
    REQUIRE(select_reuse_budget(t, 12).size() == 12);
    REQUIRE(select_reuse_threshold(t, std::numeric_limits<double>::infinity()).size() == 12);
    KVCAR_REQUIRE_ERROR(select_reuse_budget(t, 13), "asked for 13 K groups but only 12");
    KVCAR_REQUIRE_ERROR(select_reuse_budget(t, -1), "must not be negative");
    KVCAR_REQUIRE_ERROR(select_reuse_threshold(t, std::nan("")), "threshold is NaN");
    // Reusing everything still makes a valid map: every head reads layer 0.
    const reuse_map all(g, 1, select_reuse_budget(t, 12), {});
    REQUIRE(all.slot(3, 2, kv_kind::key) == all.slot(0, 2, kv_kind::key));
}

TEST_CASE("chains can be refused", "[calib][reuse_selection]") {
    const kv_geometry g{4, 1, 8};
    const idx T = 40;
    activations k = random_layers(g, T, 5);
    plant(k, g, T, 1, 0, 0.0f, 30);  // layers 0..3 of head 0 all equal
    plant(k, g, T, 2, 0, 0.0f, 31);
    plant(k, g, T, 3, 0, 0.0f, 32);
    const auto t = reuse_distances(k, g, kv_kind::key);
    REQUIRE(select_reuse_threshold(t, 0.0).size() == 3);
    // Without chains, (1) is taken first (ties in layer order), which rules out (2); then (3).
    const auto no_chain = select_reuse_threshold(t, 0.0, {.allow_chains = false});
    REQUIRE(no_chain == std::vector<reuse_entry>{{1, 0, 0, 0}, {3, 0, 2, 0}});
    const reuse_map map(g, 1, no_chain, {});
    REQUIRE(map.slot(3, 0, kv_kind::key) == map.slot(2, 0, kv_kind::key));  // measured source
    KVCAR_REQUIRE_ERROR(select_reuse_budget(t, 3, {.allow_chains = false}), "no chains");
}

TEST_CASE("the byte budget chooses K and V jointly by normalised distance",
          "[calib][reuse_selection]") {
    const kv_geometry g{3, 2, 4};
    const idx T = 300;
    activations k = random_layers(g, T, 6), v = random_layers(g, T, 7, 10.0f);  // V 10x larger
    plant(k, g, T, 1, 1, 0.30f, 40);  // K relative noise 0.3
    plant(v, g, T, 2, 0, 1.0f, 41);   // V absolute noise 1.0 = relative 0.1: the closest
    plant(v, g, T, 1, 1, 5.0f, 42);   // V relative 0.5
    const auto kt = reuse_distances(k, g, kv_kind::key);
    const auto vt = reuse_distances(v, g, kv_kind::value);
    REQUIRE(vt.distance(2, 0) > kt.distance(1, 1));      // raw: V looks worse
    REQUIRE(vt.normalized(2, 0) < kt.normalized(1, 1));  // normalised: V is closer

    // fp16 group = 4 * 2 = 8 bytes. 1 byte needs one group: the V one.
    reuse_selection s = select_reuse_bytes(kt, vt, 1);
    REQUIRE(s.key.empty());
    REQUIRE(s.value == std::vector<reuse_entry>{{2, 0, 1, 0}});
    REQUIRE(s.bytes_saved == 8);
    // 9..16 bytes: two groups, the K one next.
    s = select_reuse_bytes(kt, vt, 16);
    REQUIRE(s.key == std::vector<reuse_entry>{{1, 1, 0, 1}});
    REQUIRE(s.value == std::vector<reuse_entry>{{2, 0, 1, 0}});
    REQUIRE(s.bytes_saved == 16);
    s = select_reuse_bytes(kt, vt, 17);
    REQUIRE(s.value.size() == 2);
    REQUIRE(s.bytes_saved == 24);
    // Raw distances prefer K instead.
    s = select_reuse_bytes(kt, vt, 8, {}, {.normalized = false});
    REQUIRE(s.key == std::vector<reuse_entry>{{1, 1, 0, 1}});
    REQUIRE(s.value.empty());
    // Per-slot record sizes: a compressed V slot saves only 2 bytes, so two more groups are needed.
    const auto bytes = [](slot_owner o) -> std::size_t { return o.kind == kv_kind::value ? 2 : 8; };
    s = select_reuse_bytes(kt, vt, 10, bytes);
    REQUIRE(s.bytes_saved == 10);
    REQUIRE(s.key.size() == 1);
    REQUIRE(s.value.size() == 1);
    const reuse_map map(g, 1, s.key, s.value);
    REQUIRE(map.n_slots() == map.logical_slot_count() - 2);
    // Everything eligible: 2 layers x 2 heads x {K, V} = 8 groups = 64 bytes.
    REQUIRE(select_reuse_bytes(kt, vt, 64).bytes_saved == 64);
    KVCAR_REQUIRE_ERROR(select_reuse_bytes(kt, vt, 65), "cannot save 65 bytes per token");
    KVCAR_REQUIRE_ERROR(select_reuse_bytes(vt, kt, 8), "K table first");
    const auto other =
        reuse_distances(random_layers(kv_geometry{3, 2, 4}, T, 8), g, kv_kind::value, 2);
    KVCAR_REQUIRE_ERROR(select_reuse_bytes(kt, other, 8), "different geometries");
}

TEST_CASE("reuse_distances rejects bad activations", "[calib][reuse_selection]") {
    const kv_geometry g{3, 2, 4};
    activations a = random_layers(g, 5, 9);
    KVCAR_REQUIRE_ERROR(reuse_distances(a, kv_geometry{4, 2, 4}, kv_kind::key),
                        "activations of 3 layers for a model of 4");
    KVCAR_REQUIRE_ERROR(reuse_distances(a, g, kv_kind::key, 3), "heads_per_group 3");
    KVCAR_REQUIRE_ERROR(reuse_distances(a, kv_geometry{3, 0, 4}, kv_kind::key),
                        "positive n_layers");
    activations ragged = a;
    ragged[2].pop_back();
    KVCAR_REQUIRE_ERROR(reuse_distances(ragged, g, kv_kind::key), "layer 2 has 39 floats");
    std::vector<const float*> ptrs = {a[0].data(), nullptr, a[2].data()};
    KVCAR_REQUIRE_ERROR(reuse_distances(ptrs, 5, g, kv_kind::key), "layer 1 are null");
    ptrs[1] = a[1].data();
    KVCAR_REQUIRE_ERROR(reuse_distances(ptrs, 0, g, kv_kind::key), "at least one token");
    a[1][8 * 3 + 2] = std::numeric_limits<float>::infinity();
    KVCAR_REQUIRE_ERROR(reuse_distances(a, g, kv_kind::value),
                        "layer 1 V activations are not finite (token 3)");
    reuse_distance_table broken = reuse_distances(random_layers(g, 5, 10), g, kv_kind::key);
    broken.scale.pop_back();
    KVCAR_REQUIRE_ERROR(select_reuse_budget(broken, 1), "does not match its geometry");
}
