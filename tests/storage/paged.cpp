#include <cstdint>
#include <cstring>
#include <kvcar/storage/paged.hpp>
#include <set>
#include <vector>

#include "catch.hpp"

using kvcar::page_view;
using kvcar::paged_storage;

static_assert(kvcar::kv_storage<paged_storage>);

namespace {

std::vector<std::int32_t> block_row(const paged_storage& s, int seq) {
    const page_view v = s.view(0);
    const std::int32_t* row = v.block_table + std::size_t(seq) * std::size_t(v.pages_per_sequence);
    return std::vector<std::int32_t>(row, row + v.pages_per_sequence);
}

}  // namespace

TEST_CASE("paged_storage: pools, block table and free list", "[storage]") {
    paged_storage s({.max_sequences = 3, .max_tokens = 10, .page_size = 4, .n_pages = 6}, {8, 4});
    REQUIRE(s.pages_per_sequence() == 3);  // ceil(10 / 4)
    REQUIRE(s.free_pages() == 6);
    REQUIRE(s.bytes_allocated() == 6u * 4u * 12u);
    REQUIRE(s.bytes_reserved() == 0);
    for (int slot = 0; slot < 2; ++slot) {
        const page_view v = s.view(slot);
        REQUIRE(v.page_size == 4);
        REQUIRE(v.pages_per_sequence == 3);
        REQUIRE(reinterpret_cast<std::uintptr_t>(v.pool) % paged_storage::pool_alignment == 0);
    }
    // One block table shared by every slot.
    REQUIRE(s.view(0).block_table == s.view(1).block_table);
    // Unused entries hold a real page id, so a stray read stays inside the pool.
    for (int seq = 0; seq < 3; ++seq)
        for (std::int32_t page : block_row(s, seq)) REQUIRE(page == paged_storage::unused_page);

    s.reserve(0, 1);  // one page
    REQUIRE(s.pages_held(0) == 1);
    REQUIRE(s.capacity(0) == 4);
    s.reserve(0, 4);  // still one page
    REQUIRE(s.pages_held(0) == 1);
    s.reserve(0, 5);  // a second page
    REQUIRE(s.pages(0) == std::vector<std::int32_t>{0, 1});
    s.reserve(1, 9);
    REQUIRE(s.pages(1) == std::vector<std::int32_t>{2, 3, 4});
    REQUIRE(s.capacity(1) == 10);  // 3 pages hold 12, but max_tokens bounds it
    REQUIRE(s.free_pages() == 1);
    REQUIRE(s.bytes_reserved() == 5u * 4u * 12u);
    s.reserve(1, 2);  // never shrinks
    REQUIRE(s.pages_held(1) == 3);

    // Records of different sequences land in their own pages.
    const page_view v = s.view(0);
    REQUIRE(v.record(0, 5) == v.pool + (1 * 4 + 1) * 8);
    REQUIRE(v.record(1, 8) == v.pool + (4 * 4 + 0) * 8);

    s.release(0);
    REQUIRE(s.pages_held(0) == 0);
    REQUIRE(s.capacity(0) == 0);
    REQUIRE(s.free_pages() == 3);
    REQUIRE(block_row(s, 0) == std::vector<std::int32_t>(3, paged_storage::unused_page));
    REQUIRE(s.bytes_reserved() == 3u * 4u * 12u);
    // Released pages come back in order.
    s.reserve(2, 8);
    REQUIRE(s.pages(2) == std::vector<std::int32_t>{0, 1});
}

TEST_CASE("paged_storage: out of pages is all or nothing", "[storage]") {
    paged_storage s({.max_sequences = 4, .max_tokens = 16, .page_size = 4, .n_pages = 5}, {4});
    s.reserve(0, 8);
    s.reserve(1, 8);
    REQUIRE(s.free_pages() == 1);
    const auto table_before =
        std::vector<std::int32_t>(s.view(0).block_table, s.view(0).block_table + 4 * 4);
    KVCAR_REQUIRE_ERROR(s.reserve(3, 5),
                        "paged_storage: out of pages: sequence 3 needs 2 more pages, 1 free");
    KVCAR_REQUIRE_ERROR(s.reserve(0, 16), "sequence 0 needs 2 more pages, 1 free");
    REQUIRE(s.free_pages() == 1);
    REQUIRE(s.pages_held(3) == 0);
    REQUIRE(s.pages_held(0) == 2);
    REQUIRE(std::vector<std::int32_t>(s.view(0).block_table, s.view(0).block_table + 16) ==
            table_before);
    s.reserve(3, 4);  // one page still fits
    REQUIRE(s.pages(3) == std::vector<std::int32_t>{4});
    KVCAR_REQUIRE_ERROR(s.reserve(2, 1), "sequence 2 needs 1 more page, 0 free");

    // Removing a sequence makes its pages available to another.
    s.release(1);
    s.reserve(2, 8);
    REQUIRE(s.pages(2) == std::vector<std::int32_t>{2, 3});
}

TEST_CASE("paged_storage: pages of distinct sequences never alias", "[storage]") {
    paged_storage s({.max_sequences = 3, .max_tokens = 7, .page_size = 2, .n_pages = 12}, {4});
    const int lengths[3] = {7, 3, 6};
    // Grow the sequences token by token, interleaved, so their pages interleave in the pool.
    for (int t = 1; t <= 7; ++t)
        for (int seq = 0; seq < 3; ++seq)
            if (t <= lengths[seq]) s.reserve(seq, t);
    std::set<std::int32_t> used;
    for (int seq = 0; seq < 3; ++seq)
        for (std::int32_t p : s.pages(seq)) REQUIRE(used.insert(p).second);
    REQUIRE(used.size() == 4 + 2 + 3);

    const page_view v = s.view(0);
    for (int seq = 0; seq < 3; ++seq)
        for (int t = 0; t < lengths[seq]; ++t) {
            const std::int32_t tag = seq * 100 + t;
            std::memcpy(v.record(seq, t), &tag, 4);
        }
    for (int seq = 0; seq < 3; ++seq)
        for (int t = 0; t < lengths[seq]; ++t) {
            std::int32_t tag = -1;
            std::memcpy(&tag, v.record(seq, t), 4);
            REQUIRE(tag == seq * 100 + t);
        }
}

TEST_CASE("paged_storage: rejects bad parameters and indices, changing nothing", "[storage]") {
    KVCAR_REQUIRE_ERROR(paged_storage({1, 4, 0, 4}, {4}),
                        "paged_storage: max_sequences, max_tokens, page_size and n_pages must be "
                        "positive (got 1, 4, 0, 4)");
    KVCAR_REQUIRE_ERROR(paged_storage({1, 4, 4, 0}, {4}), "(got 1, 4, 4, 0)");
    KVCAR_REQUIRE_ERROR(paged_storage({1, 4, 4, 2}, {}), "paged_storage: needs at least one slot");
    KVCAR_REQUIRE_ERROR(paged_storage({1, 4, 4, 2}, {4, 2}),
                        "paged_storage: slot 1 has records of 2 bytes");

    paged_storage s({2, 6, 4, 8}, {4});
    s.reserve(0, 2);
    KVCAR_REQUIRE_ERROR(s.reserve(0, 7),
                        "paged_storage: sequence 0 needs 7 tokens, more than max_tokens 6");
    KVCAR_REQUIRE_ERROR(s.reserve(1, -3), "sequence 1 cannot reserve a negative token count -3");
    KVCAR_REQUIRE_ERROR(s.reserve(2, 1), "paged_storage: sequence 2 out of range [0, 2)");
    KVCAR_REQUIRE_ERROR(s.release(-1), "sequence -1 out of range");
    KVCAR_REQUIRE_ERROR(s.capacity(5), "sequence 5 out of range");
    KVCAR_REQUIRE_ERROR(s.view(1), "paged_storage: slot 1 out of range [0, 1)");
    REQUIRE(s.pages_held(0) == 1);
    REQUIRE(s.pages_held(1) == 0);
    REQUIRE(s.free_pages() == 7);
}
