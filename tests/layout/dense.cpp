#include <kvcar/layout/dense.hpp>
#include <set>
#include <vector>

#include "catch.hpp"

using kvcar::dense_layout;
using kvcar::kv_geometry;
using kvcar::kv_kind;
using kvcar::slot_owner;

static_assert(kvcar::kv_layout<dense_layout>);

TEST_CASE("dense_layout numbers slots ((layer * G) + group) * 2 + kind", "[layout]") {
    const dense_layout layout(kv_geometry{3, 4, 8}, 2);
    REQUIRE(layout.heads_per_group() == 2);
    REQUIRE(layout.groups_per_layer() == 2);
    REQUIRE(layout.group_width() == 16);
    REQUIRE(layout.n_slots() == 3 * 2 * 2);
    REQUIRE(layout.geometry().n_layers == 3);

    REQUIRE(layout.slot(0, 0, kv_kind::key) == 0);
    REQUIRE(layout.slot(0, 0, kv_kind::value) == 1);
    REQUIRE(layout.slot(0, 1, kv_kind::key) == 2);
    REQUIRE(layout.slot(1, 0, kv_kind::key) == 4);
    REQUIRE(layout.slot(2, 1, kv_kind::value) == 11);

    std::set<int> seen;
    for (int layer = 0; layer < 3; ++layer) {
        for (int group = 0; group < 2; ++group) {
            for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                const int slot = layout.slot(layer, group, kind);
                REQUIRE(layout.owns(layer, group, kind));
                REQUIRE(layout.owner(slot) == slot_owner{layer, group, kind});
                seen.insert(slot);
            }
        }
    }
    REQUIRE(seen.size() == 12);
    REQUIRE(*seen.begin() == 0);
    REQUIRE(*seen.rbegin() == 11);
}

TEST_CASE("dense_layout slot_table is the flat [layer][group][kind] table", "[layout]") {
    const dense_layout layout(kv_geometry{2, 6, 4}, 3);
    const std::vector<std::int32_t> table = layout.slot_table();
    REQUIRE(table.size() == 8);
    for (int layer = 0; layer < 2; ++layer)
        for (int group = 0; group < 2; ++group)
            for (int kind = 0; kind < 2; ++kind)
                REQUIRE(table[std::size_t((layer * 2 + group) * 2 + kind)] ==
                        layout.slot(layer, group, kv_kind(kind)));
}

TEST_CASE("dense_layout per head and whole-layer groups", "[layout]") {
    const dense_layout per_head(kv_geometry{12, 12, 64});
    REQUIRE(per_head.heads_per_group() == 1);
    REQUIRE(per_head.groups_per_layer() == 12);
    REQUIRE(per_head.n_slots() == 288);
    REQUIRE(per_head.group_width() == 64);

    const dense_layout whole_layer(kv_geometry{12, 12, 64}, 12);
    REQUIRE(whole_layer.groups_per_layer() == 1);
    REQUIRE(whole_layer.n_slots() == 24);
    REQUIRE(whole_layer.group_width() == 768);
    REQUIRE(whole_layer.slot(5, 0, kv_kind::value) == 11);
}

TEST_CASE("dense_layout rejects bad geometry, groups and indices", "[layout]") {
    KVCAR_REQUIRE_ERROR(dense_layout(kv_geometry{0, 4, 8}), "kv_geometry needs positive");
    KVCAR_REQUIRE_ERROR(dense_layout(kv_geometry{2, 4, -1}), "kv_geometry needs positive");
    KVCAR_REQUIRE_ERROR(dense_layout(kv_geometry{2, 4, 8}, 3),
                        "dense_layout: heads_per_group 3 must be positive and divide n_kv_heads 4");
    KVCAR_REQUIRE_ERROR(dense_layout(kv_geometry{2, 4, 8}, 0), "heads_per_group 0");
    KVCAR_REQUIRE_ERROR(dense_layout(kv_geometry{2, 4, 8}, 8), "heads_per_group 8");

    const dense_layout layout(kv_geometry{2, 4, 8}, 2);
    KVCAR_REQUIRE_ERROR(layout.slot(2, 0, kv_kind::key),
                        "dense_layout: layer 2 out of range [0, 2)");
    KVCAR_REQUIRE_ERROR(layout.slot(-1, 0, kv_kind::key), "layer -1 out of range");
    KVCAR_REQUIRE_ERROR(layout.slot(0, 2, kv_kind::key),
                        "dense_layout: group 2 out of range [0, 2)");
    KVCAR_REQUIRE_ERROR(layout.owns(0, -1, kv_kind::value), "group -1 out of range");
    KVCAR_REQUIRE_ERROR(layout.slot(0, 0, kv_kind(7)), "kind 7 is neither K nor V");
    KVCAR_REQUIRE_ERROR(layout.owner(8), "dense_layout: slot 8 out of range [0, 8)");
    KVCAR_REQUIRE_ERROR(layout.owner(-1), "slot -1 out of range");
    // Still usable after the failures.
    REQUIRE(layout.slot(1, 1, kv_kind::value) == 7);
}
