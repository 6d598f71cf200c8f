// kvcar/storage/sequence_table.hpp: live ids and per-layer lengths.
#include <kvcar/storage/sequence_table.hpp>

#include "catch.hpp"

using kvcar::sequence_table;

TEST_CASE("sequence_table: ids are the lowest free ones; length is the shortest layer",
          "[storage]") {
    sequence_table t(3, 4, "cache");
    REQUIRE(t.add() == 0);
    REQUIRE(t.add() == 1);
    REQUIRE(t.live_sequences() == 2);
    REQUIRE(t.is_live(1));
    REQUIRE_FALSE(t.is_live(2));
    REQUIRE_FALSE(t.is_live(-1));
    REQUIRE_FALSE(t.is_live(3));

    // Mid forward pass: layers 0..1 have one more token than layers 2..3.
    for (int layer = 0; layer < 4; ++layer) t.at(1, layer) = layer < 2 ? 6 : 5;
    REQUIRE(t.length(1) == 5);
    REQUIRE(t.length(1, 0) == 6);
    REQUIRE(t.longest(1) == 6);

    t.remove(0);
    REQUIRE(t.add() == 0);  // the freed id is handed out again, with zero lengths
    REQUIRE(t.length(0) == 0);
    t.remove(1);
    t.add_at(1);
    REQUIRE(t.length(1, 3) == 0);
    REQUIRE(t.add() == 2);
    KVCAR_REQUIRE_ERROR(t.add(), "kvcar: cache: all 3 sequences are in use");
}

TEST_CASE("sequence_table: bad ids and layers are refused with the owner's name", "[storage]") {
    sequence_table t(2, 3, "device_kv_cache");
    t.add();
    KVCAR_REQUIRE_ERROR(t.length(1), "kvcar: device_kv_cache: sequence 1 is not live");
    KVCAR_REQUIRE_ERROR(t.remove(5), "sequence 5 is not live");
    KVCAR_REQUIRE_ERROR(t.length(0, 3), "device_kv_cache: layer 3 out of range [0, 3)");
    KVCAR_REQUIRE_ERROR(t.add_at(0), "sequence 0 is out of range or already live");
    KVCAR_REQUIRE_ERROR(t.add_at(2), "out of range or already live");
    KVCAR_REQUIRE_ERROR(sequence_table(0, 3, "x"), "x: max_sequences and n_layers must be positive");
    REQUIRE(t.live_sequences() == 1);
}
