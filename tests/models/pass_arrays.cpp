// Tests for examples/models/cuda/pass_arrays.hpp, the host side of a CUDA forward pass: the
// batch checks that make a bad batch change nothing, the arrays a prefill pass and a decode step
// upload (laid out by hand here), and the context bucket decode attention runs a step for.
#include "catch.hpp"

#include <cstdint>
#include <string>
#include <vector>

#include "examples/models/cuda/pass_arrays.hpp"

namespace {

namespace cm = kvcar::examples::cuda_model;

/// What validate_batch asks of a device cache: live ids and their lengths.
struct fake_cache {
    kvcar::kv_geometry shape{2, 2, 64};
    std::vector<int> lengths{5, -1, 0};  // -1: not live
    int capacity = 100;

    kvcar::kv_geometry geometry() const { return shape; }
    bool is_live(int seq) const {
        return seq >= 0 && seq < int(lengths.size()) && lengths[std::size_t(seq)] >= 0;
    }
    int length(int seq) const { return lengths[std::size_t(seq)]; }
    int max_tokens() const { return capacity; }
};

const cm::pass_limits limits{"llama (cuda)", {2, 2, 64}, 300, 64};

}  // namespace

TEST_CASE("pass_arrays: a valid batch gives each item's first position", "[models][pass_arrays]") {
    const fake_cache cache;
    const std::vector<int> seqs{2, 0}, counts{3, 1}, tokens{7, 8, 9, 10};
    const cm::token_batch b{seqs, counts, tokens};
    CHECK(cm::validate_batch(limits, cache, b) == std::vector<int>{0, 5});
    CHECK_FALSE(cm::is_decode_step(b));
    const std::vector<int> ones{1, 1}, two{4, 5};
    CHECK(cm::is_decode_step({seqs, ones, two}));
}

TEST_CASE("pass_arrays: bad batches are refused, naming what is wrong", "[models][pass_arrays]") {
    const fake_cache cache;
    const auto validate = [&](const fake_cache& c, std::vector<int> seqs, std::vector<int> counts,
                              std::vector<int> tokens) {
        return cm::validate_batch(limits, c, {seqs, counts, tokens});
    };
    KVCAR_REQUIRE_ERROR(validate(cache, {0}, {1, 1}, {1, 2}), "1 sequences but 2 token counts");
    KVCAR_REQUIRE_ERROR(validate(cache, {}, {}, {}), "no sequences");
    KVCAR_REQUIRE_ERROR(validate(cache, {0, 2}, {0, 1}, {1}), "has 0 tokens");
    KVCAR_REQUIRE_ERROR(validate(cache, {0}, {2}, {1}), "add up to 2 tokens but 1");
    KVCAR_REQUIRE_ERROR(validate(cache, {1}, {1}, {1}), "sequence 1 is not live");
    KVCAR_REQUIRE_ERROR(validate(cache, {0, 0}, {1, 1}, {1, 2}), "appears twice");
    KVCAR_REQUIRE_ERROR(validate(cache, {0}, {1}, {300}), "outside the vocabulary");
    KVCAR_REQUIRE_ERROR(validate(cache, {0}, {60}, std::vector<int>(60, 1)),
                        "exceed the model's context of 64");
    fake_cache small;
    small.capacity = 6;
    KVCAR_REQUIRE_ERROR(validate(small, {0}, {2}, {1, 2}), "capacity of 6");
    fake_cache other;
    other.shape = {3, 2, 64};
    KVCAR_REQUIRE_ERROR(validate(other, {0}, {2}, {1, 2}), "the KV cache is shaped");
}

TEST_CASE("pass_arrays: a prefill pass uploads tokens, positions and each item's last row",
          "[models][pass_arrays]") {
    const std::vector<int> seqs{2, 0}, counts{3, 1}, tokens{7, 8, 9, 10};
    const std::vector<std::int32_t> want{7, 8, 9, 10,  // tokens
                                         0, 1, 2, 5,   // positions: sequence 2 from 0, 0 from 5
                                         2, 3};        // last rows of the two items
    CHECK(cm::prefill_arrays({seqs, counts, tokens}, {0, 5}) == want);
}

TEST_CASE("pass_arrays: a decode step uploads one array whose parts sit where it says",
          "[models][pass_arrays]") {
    const std::vector<int> seqs{2, 0, 3}, counts{1, 1, 1}, tokens{7, 8, 9};
    const cm::decode_arrays a({seqs, counts, tokens}, {0, 5, 40});
    const std::vector<std::int32_t> want{7, 8, 9,      // tokens
                                         0, 5, 40,     // positions
                                         0, 1, 2,      // last rows
                                         0, 1, 2, 3,   // append's token offsets
                                         2, 0, 3,      // sequences
                                         1, 6, 41};    // lengths after this token
    CHECK(a.ints == want);
    CHECK(a.n == 3);
    CHECK(a.longest == 41);
    CHECK(a.positions() == 3);
    CHECK(a.token_offsets() == 9);
    CHECK(a.sequences() == 13);
    CHECK(a.kv_lengths() == 16);
}

TEST_CASE("pass_arrays: the context bucket is the next power of two, 64 at least, capped",
          "[models][pass_arrays]") {
    CHECK(cm::decode_length_bucket(1, 2048) == 64);
    CHECK(cm::decode_length_bucket(64, 2048) == 64);
    CHECK(cm::decode_length_bucket(65, 2048) == 128);
    CHECK(cm::decode_length_bucket(1000, 2048) == 1024);
    CHECK(cm::decode_length_bucket(1025, 2048) == 2048);
    CHECK(cm::decode_length_bucket(1025, 1500) == 1500);  // the cache's capacity caps it
    CHECK(cm::decode_length_bucket(10, 40) == 40);
}
