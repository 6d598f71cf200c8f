#include <kvcar/codec/identity.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>
#include <vector>

#include "catch.hpp"

using kvcar::kv_geometry;
using kvcar::kv_kind;
using kvcar::reuse_entry;
using kvcar::reuse_map;
using kvcar::slot_owner;

static_assert(kvcar::kv_layout<reuse_map>);

namespace {

constexpr kv_kind K = kv_kind::key;
constexpr kv_kind V = kv_kind::value;

// `count` heads of a 12 x 12 model, each reading the same head of the previous layer; heads
// from `first_head` on, layers 1..11, so some entries chain (layer 3 -> 2 -> 1 -> 0).
std::vector<reuse_entry> previous_layer_heads(int count, int first_head) {
    std::vector<reuse_entry> entries;
    for (int i = 0; i < count; ++i) {
        const int layer = 1 + i % 11;
        const int head = first_head + i / 11;
        entries.push_back({layer, head, layer - 1, head});
    }
    return entries;
}

}  // namespace

TEST_CASE("reuse_map: K and V reuse are independent, stored slots are compact", "[layout]") {
    // 3 layers x 2 heads. K of (1,0) reads (0,0); V of (2,1) chains through (1,1) to (0,1).
    const reuse_map map(kv_geometry{3, 2, 4}, 1, {{1, 0, 0, 0}}, {{2, 1, 1, 1}, {1, 1, 0, 1}});
    REQUIRE(map.heads_per_group() == 1);
    REQUIRE(map.groups_per_layer() == 2);
    REQUIRE(map.group_width() == 4);
    REQUIRE(map.logical_slot_count() == 12);
    REQUIRE(map.n_slots() == 9);
    REQUIRE(map.reused_count(K) == 1);
    REQUIRE(map.reused_count(V) == 2);
    REQUIRE(map.stored_fraction() == Approx(9.0 / 12.0));
    REQUIRE(map.reuse(V).size() == 2);
    REQUIRE(map.reuse(V)[0] == reuse_entry{2, 1, 1, 1});

    // Stored slots in (layer, group, kind) order, skipping reused ones; chains resolved.
    const std::vector<std::int32_t> expected{0, 1, 2, 3, 0, 4, 5, 3, 6, 7, 8, 3};
    REQUIRE(map.slot_table() == expected);
    REQUIRE(map.slot(1, 0, K) == 0);
    REQUIRE(map.slot(1, 0, V) == 4);  // V of (1,0) is still stored
    REQUIRE(map.slot(2, 1, V) == 3);
    REQUIRE(map.slot(1, 1, V) == 3);
    REQUIRE_FALSE(map.owns(1, 0, K));
    REQUIRE(map.owns(1, 0, V));
    REQUIRE_FALSE(map.owns(2, 1, V));
    REQUIRE(map.owns(0, 1, V));
    REQUIRE(map.owner(3) == slot_owner{0, 1, V});
    REQUIRE(map.owner(4) == slot_owner{1, 0, V});
    REQUIRE(map.owner(8) == slot_owner{2, 1, K});

    // Every stored slot is owned by exactly the (layer, group, kind) that maps to it and owns it.
    for (int slot = 0; slot < map.n_slots(); ++slot) {
        const slot_owner o = map.owner(slot);
        REQUIRE(map.slot(o.layer, o.group, o.kind) == slot);
        REQUIRE(map.owns(o.layer, o.group, o.kind));
    }
}

TEST_CASE("reuse_map: an empty map is the dense layout", "[layout]") {
    const kv_geometry g{4, 6, 8};
    const reuse_map map(g, 2, {}, {});
    const kvcar::dense_layout dense(g, 2);
    REQUIRE(map.n_slots() == dense.n_slots());
    REQUIRE(map.slot_table() == dense.slot_table());
    REQUIRE(map.stored_fraction() == 1.0);
}

TEST_CASE("reuse_map: whole-layer groups", "[layout]") {
    const reuse_map map(kv_geometry{4, 4, 8}, 4, {{1, 0, 0, 0}, {3, 0, 2, 0}}, {{2, 0, 1, 0}});
    REQUIRE(map.groups_per_layer() == 1);
    REQUIRE(map.group_width() == 32);
    REQUIRE(map.logical_slot_count() == 8);
    REQUIRE(map.n_slots() == 5);
    REQUIRE(map.owner(map.slot(1, 0, K)) == slot_owner{0, 0, K});
    REQUIRE(map.owner(map.slot(3, 0, K)) == slot_owner{2, 0, K});
    REQUIRE(map.owner(map.slot(2, 0, V)) == slot_owner{1, 0, V});
}

TEST_CASE("reuse_map: cross-group sources and forward-then-back chains", "[layout]") {
    // (2,0) reads (3,1), which reads (1,0): the final stored slot is earlier, so it is allowed.
    const reuse_map map(kv_geometry{4, 2, 4}, 1, {{2, 0, 3, 1}, {3, 1, 1, 0}}, {});
    REQUIRE(map.owner(map.slot(2, 0, K)) == slot_owner{1, 0, K});
    REQUIRE(map.owner(map.slot(3, 1, K)) == slot_owner{1, 0, K});
    REQUIRE(map.n_slots() == 14);
}

TEST_CASE("reuse_map: the paper's GPT-2 figures", "[layout]") {
    const kv_geometry gpt2{12, 12, 64};
    const reuse_map keys(gpt2, 1, previous_layer_heads(19, 0), {});
    const reuse_map values(gpt2, 1, {}, previous_layer_heads(25, 0));
    const reuse_map both(gpt2, 1, previous_layer_heads(19, 0), previous_layer_heads(17, 5));

    REQUIRE(keys.logical_slot_count() == 288);
    REQUIRE(keys.n_slots() == 288 - 19);
    REQUIRE(values.n_slots() == 288 - 25);
    REQUIRE(both.n_slots() == 288 - 36);
    REQUIRE(both.reused_count(K) == 19);
    REQUIRE(both.reused_count(V) == 17);
    REQUIRE(1.0 - keys.stored_fraction() == Approx(0.06597).margin(5e-6));
    REQUIRE(1.0 - values.stored_fraction() == Approx(0.0868).margin(5e-5));
    REQUIRE(1.0 - both.stored_fraction() == 0.125);

    // With the same identity codec in every slot, the cache's bytes shrink by exactly that.
    using codec = kvcar::identity_codec<kvcar::f16>;
    const kvcar::contiguous_storage::params one{1, 1};
    const kvcar::kv_cache<codec> dense(kvcar::dense_layout(gpt2), codec{64}, one);
    REQUIRE(dense.bytes_per_token() == gpt2.fp16_bytes_per_token());
    for (const reuse_map* map : {&keys, &values, &both}) {
        const kvcar::kv_cache<codec, reuse_map> cache(*map, codec{64}, one);
        REQUIRE(double(cache.bytes_per_token()) ==
                double(dense.bytes_per_token()) * map->stored_fraction());
        REQUIRE(dense.bytes_per_token() - cache.bytes_per_token() ==
                std::size_t(map->reused_count(K) + map->reused_count(V)) * 128u);
        REQUIRE(cache.compression_ratio() == Approx(1.0 / map->stored_fraction()));
    }
    const kvcar::kv_cache<codec, reuse_map> cache(both, codec{64}, one);
    REQUIRE(cache.bytes_per_token() == 36864u * 7u / 8u);
}

TEST_CASE("reuse_map: rejects bad maps with precise messages", "[layout]") {
    const kv_geometry g{4, 2, 4};
    KVCAR_REQUIRE_ERROR(reuse_map(g, 3, {}, {}), "reuse_map: heads_per_group 3 must be positive");
    KVCAR_REQUIRE_ERROR(reuse_map(kv_geometry{0, 2, 4}, 1, {}, {}), "kv_geometry needs positive");

    SECTION("indices out of range") {
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {{4, 0, 0, 0}}, {}),
                            "reuse_map: K reuse entry 0 has layer 4 out of range [0, 4)");
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {{1, 0, 0, 0}, {1, -1, 0, 0}}, {}),
                            "reuse_map: K reuse entry 1 has group -1 out of range [0, 2)");
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {}, {{1, 0, -2, 0}}),
                            "reuse_map: V reuse entry 0 has source_layer -2 out of range [0, 4)");
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {}, {{1, 0, 0, 2}}),
                            "reuse_map: V reuse entry 0 has source_group 2 out of range [0, 2)");
    }
    SECTION("an entry listed twice (in the same list)") {
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {{1, 0, 0, 0}, {2, 1, 1, 1}, {1, 0, 0, 1}}, {}),
                            "reuse_map: K reuse lists (1,0) twice (entries 0 and 2)");
        // The same (layer, group) in the K and the V list is two different streams: fine.
        REQUIRE(reuse_map(g, 1, {{1, 0, 0, 0}}, {{1, 0, 0, 0}}).n_slots() == 14);
    }
    SECTION("self reference") {
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {}, {{2, 1, 2, 1}}),
                            "reuse_map: V reuse entry 0 maps (2,1) to itself");
    }
    SECTION("cycles") {
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {{2, 0, 1, 0}, {1, 0, 2, 0}}, {}),
                            "reuse_map: K reuse has a cycle: (2,0) -> (1,0) -> (2,0)");
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {}, {{3, 0, 2, 0}, {2, 0, 1, 1}, {1, 1, 3, 0}}),
                            "reuse_map: V reuse has a cycle: (3,0) -> (2,0) -> (1,1) -> (3,0)");
        // A chain running into a cycle reports the cycle alone.
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {{3, 1, 3, 0}, {3, 0, 2, 0}, {2, 0, 3, 0}}, {}),
                            "reuse_map: K reuse has a cycle: (3,0) -> (2,0) -> (3,0)");
    }
    SECTION("only earlier stored slots") {
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {{1, 0, 2, 0}}, {}),
                            "reuse_map: K reuse of (1,0) reads (2,0), a later layer (forward "
                            "reference): only earlier stored slots can be reused");
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {}, {{1, 0, 1, 1}}),
                            "reuse_map: V reuse of (1,0) reads (1,1), the same layer");
        // (3,0) -> (2,0) points back, but the chain goes on to the stored (3,1): judged by the
        // final slot, which is in (3,0)'s own layer.
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {{3, 0, 2, 0}, {2, 0, 3, 1}}, {}),
                            "reuse_map: K reuse of (3,0) resolves through a chain to (3,1), the "
                            "same layer: only earlier stored slots");
        KVCAR_REQUIRE_ERROR(reuse_map(g, 1, {{2, 0, 3, 1}}, {}), "forward reference");
    }
}
