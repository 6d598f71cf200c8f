// kvcar/storage/host_pool.hpp: zeroed, aligned record blocks and the id range check.
#include <kvcar/storage/host_pool.hpp>

#include <cstdint>

#include "catch.hpp"

TEST_CASE("host_pool: blocks are zeroed and aligned for vector loads", "[storage]") {
    for (std::size_t bytes : {std::size_t(4), std::size_t(1000), std::size_t(1) << 20}) {
        const kvcar::host_pool pool = kvcar::allocate_host_pool(bytes);
        REQUIRE(reinterpret_cast<std::uintptr_t>(pool.get()) % kvcar::host_pool_alignment == 0);
        bool zero = true;
        for (std::size_t i = 0; i < bytes; ++i) zero = zero && pool[i] == std::byte{0};
        REQUIRE(zero);
    }
}

TEST_CASE("host_pool: check_index accepts [0, end) and names what is out of range", "[storage]") {
    kvcar::check_index("paged_storage", "slot", 0, 3);
    kvcar::check_index("paged_storage", "slot", 2, 3);
    KVCAR_REQUIRE_ERROR(kvcar::check_index("paged_storage", "slot", 3, 3),
                        "kvcar: paged_storage: slot 3 out of range [0, 3)");
    KVCAR_REQUIRE_ERROR(kvcar::check_index("contiguous_storage", "sequence", -1, 2),
                        "contiguous_storage: sequence -1 out of range [0, 2)");
}
