#include <cstdint>
#include <cstring>
#include <kvcar/storage/contiguous.hpp>
#include <vector>

#include "catch.hpp"

using kvcar::contiguous_storage;
using kvcar::page_view;

static_assert(kvcar::kv_storage<contiguous_storage>);

TEST_CASE("contiguous_storage: one page per sequence, max_tokens records per slot", "[storage]") {
    contiguous_storage s({3, 10}, {8, 16});
    REQUIRE(s.max_sequences() == 3);
    REQUIRE(s.max_tokens() == 10);
    REQUIRE(s.n_slots() == 2);
    REQUIRE(s.record_bytes(1) == 16);
    REQUIRE(s.bytes_allocated() == 3u * 10u * (8u + 16u));
    REQUIRE(s.bytes_reserved() == 0);

    for (int slot = 0; slot < 2; ++slot) {
        const page_view v = s.view(slot);
        REQUIRE(v.page_size == 10);
        REQUIRE(v.pages_per_sequence == 1);
        REQUIRE(v.record_bytes == (slot == 0 ? 8u : 16u));
        REQUIRE(reinterpret_cast<std::uintptr_t>(v.pool) % contiguous_storage::pool_alignment == 0);
        for (int seq = 0; seq < 3; ++seq) REQUIRE(v.block_table[seq] == seq);
        // Records are laid out sequence after sequence, token after token.
        REQUIRE(v.record(0, 1) == v.pool + v.record_bytes);
        REQUIRE(v.record(2, 3) == v.pool + (2 * 10 + 3) * v.record_bytes);
    }
    REQUIRE(s.view(0).pool != s.view(1).pool);

    REQUIRE(s.capacity(1) == 0);
    s.reserve(1, 0);  // nothing needed: nothing reserved
    REQUIRE(s.capacity(1) == 0);
    s.reserve(1, 4);
    REQUIRE(s.capacity(1) == 10);
    REQUIRE(s.bytes_reserved() == 10u * 24u);
    s.reserve(1, 10);
    s.reserve(2, 1);
    REQUIRE(s.bytes_reserved() == 2u * 10u * 24u);
    s.release(1);
    REQUIRE(s.capacity(1) == 0);
    REQUIRE(s.bytes_reserved() == 10u * 24u);
    s.release(1);  // releasing twice is harmless
    REQUIRE(s.bytes_reserved() == 10u * 24u);
}

TEST_CASE("contiguous_storage: regions do not overlap and start zeroed", "[storage]") {
    contiguous_storage s({2, 5}, {4});
    s.reserve(0, 5);
    s.reserve(1, 5);
    const page_view v = s.view(0);
    for (int seq = 0; seq < 2; ++seq)
        for (int t = 0; t < 5; ++t) {
            std::int32_t zero = -1;
            std::memcpy(&zero, v.record(seq, t), 4);
            REQUIRE(zero == 0);
            const std::int32_t tag = seq * 100 + t;
            std::memcpy(v.record(seq, t), &tag, 4);
        }
    for (int seq = 0; seq < 2; ++seq)
        for (int t = 0; t < 5; ++t) {
            std::int32_t tag = 0;
            std::memcpy(&tag, v.record(seq, t), 4);
            REQUIRE(tag == seq * 100 + t);
        }
}

TEST_CASE("contiguous_storage: rejects bad parameters and indices, changing nothing", "[storage]") {
    KVCAR_REQUIRE_ERROR(contiguous_storage({0, 4}, {4}),
                        "contiguous_storage: max_sequences and max_tokens must be positive");
    KVCAR_REQUIRE_ERROR(contiguous_storage({2, -1}, {4}), "must be positive (got 2, -1)");
    KVCAR_REQUIRE_ERROR(contiguous_storage({2, 4}, {}),
                        "contiguous_storage: needs at least one slot");
    KVCAR_REQUIRE_ERROR(contiguous_storage({2, 4}, {4, 6}),
                        "contiguous_storage: slot 1 has records of 6 bytes");
    KVCAR_REQUIRE_ERROR(contiguous_storage({2, 4}, {0}), "slot 0 has records of 0 bytes");

    contiguous_storage s({2, 4}, {4, 8});
    s.reserve(0, 3);
    KVCAR_REQUIRE_ERROR(s.reserve(1, 5),
                        "contiguous_storage: sequence 1 needs 5 tokens, more than max_tokens 4");
    REQUIRE(s.capacity(1) == 0);
    KVCAR_REQUIRE_ERROR(s.reserve(0, -1), "sequence 0 cannot reserve a negative token count -1");
    REQUIRE(s.capacity(0) == 4);
    KVCAR_REQUIRE_ERROR(s.reserve(2, 1), "contiguous_storage: sequence 2 out of range [0, 2)");
    KVCAR_REQUIRE_ERROR(s.release(-1), "contiguous_storage: sequence -1 out of range");
    KVCAR_REQUIRE_ERROR(s.capacity(2), "sequence 2 out of range");
    KVCAR_REQUIRE_ERROR(s.view(2), "contiguous_storage: slot 2 out of range [0, 2)");
    KVCAR_REQUIRE_ERROR(s.record_bytes(-1), "slot -1 out of range");
    REQUIRE(s.bytes_reserved() == 4u * 12u);
}
