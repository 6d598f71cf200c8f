// kvcar/storage/page_table.hpp: the page policy every paged cache shares.
#include <kvcar/storage/page_table.hpp>

#include <cstdint>
#include <vector>

#include "catch.hpp"

using kvcar::page_table;

TEST_CASE("page_table: rows grow a page at a time from the lowest free page", "[storage]") {
    page_table t(3, 10, 4, 6);  // 3 sequences of up to 10 tokens, pages of 4, 6 pages
    REQUIRE(t.pages_per_sequence() == 3);
    REQUIRE(t.free_pages() == 6);
    REQUIRE(t.pages_for(0) == 0);
    REQUIRE(t.pages_for(4) == 1);
    REQUIRE(t.pages_for(5) == 2);

    REQUIRE(t.shortfall(1, 5) == 2);
    REQUIRE(t.grow(1, 5));
    REQUIRE(t.pages(1) == std::vector<std::int32_t>{0, 1});
    REQUIRE(t.capacity(1) == 8);
    REQUIRE_FALSE(t.grow(1, 8));  // already room: the row is unchanged
    REQUIRE(t.shortfall(1, 8) == 0);
    REQUIRE(t.grow(0, 1));
    REQUIRE(t.pages(0) == std::vector<std::int32_t>{2});
    REQUIRE(t.grow(1, 10));
    REQUIRE(t.pages(1) == std::vector<std::int32_t>{0, 1, 3});
    REQUIRE(t.capacity(1) == 10);  // 3 pages hold 12, but max_tokens is 10
    REQUIRE(t.page_of(1, 9) == 3);
    REQUIRE(t.free_pages() == 2);

    // The row as a kernel indexes it; entries past the held pages name a real page.
    const std::vector<std::int32_t>& e = t.entries();
    REQUIRE(e.size() == 9);
    REQUIRE(e[t.row_offset(0) + 1] == page_table::unused_page);
}

TEST_CASE("page_table: released pages come back in the same order", "[storage]") {
    page_table t(2, 16, 4, 8);
    t.grow(0, 12);  // pages 0, 1, 2
    t.grow(1, 4);   // page 3
    t.release(0);
    REQUIRE(t.pages_held(0) == 0);
    REQUIRE(t.free_pages() == 7);
    REQUIRE(t.row(0)[0] == page_table::unused_page);
    t.grow(0, 12);
    REQUIRE(t.pages(0) == std::vector<std::int32_t>{0, 1, 2});
}

TEST_CASE("page_table: sizes must be positive", "[storage]") {
    KVCAR_REQUIRE_ERROR(page_table(0, 10, 4, 6), "must be positive (got 0, 10, 4, 6)");
    KVCAR_REQUIRE_ERROR(page_table(1, 10, 0, 6, "my_cache"), "my_cache: max_sequences");
    KVCAR_REQUIRE_ERROR(page_table(1, 10, 4, -1), "must be positive");
}
