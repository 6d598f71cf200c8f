#include <algorithm>
#include <cstdint>
#include <kvcar/codec/identity.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>
#include <kvcar/storage/contiguous.hpp>
#include <kvcar/storage/paged.hpp>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "catch.hpp"

using kvcar::contiguous_storage;
using kvcar::dense_layout;
using kvcar::kv_cache;
using kvcar::kv_geometry;
using kvcar::kv_kind;
using kvcar::paged_storage;
using kvcar::reuse_map;
using kvcar::slot_owner;

using exact = kvcar::identity_codec<float>;
using half = kvcar::identity_codec<kvcar::f16>;

static_assert(kvcar::kv_codec<exact>);
static_assert(kvcar::kv_layout<dense_layout> && kvcar::kv_layout<reuse_map>);
static_assert(kvcar::kv_storage<contiguous_storage> && kvcar::kv_storage<paged_storage>);
// The defaults: a dense layout in contiguous storage.
static_assert(std::is_same_v<kv_cache<exact>, kv_cache<exact, dense_layout, contiguous_storage>>);

namespace {

constexpr kv_kind K = kv_kind::key;
constexpr kv_kind V = kv_kind::value;

// A value no two (tag, layer, kind, position, column) share, exactly representable in f32 (and
// in f16 for small arguments). `tag` tells a sequence apart from an earlier one with the same id.
float value(int tag, int layer, kv_kind kind, int pos, int col) {
    return float((((tag * 8 + layer) * 2 + int(kind)) * 64 + pos) * 64 + col) * 0.5f + 0.25f;
}

// Appends tokens [length, length + n) of `layer` for sequence `seq` with values tagged `tag`.
template <class Cache>
void append_tokens(Cache& cache, int seq, int tag, int layer, int n) {
    const int width = cache.geometry().token_width();
    const int begin = cache.length(seq, layer);
    std::vector<float> k(std::size_t(n * width)), v(std::size_t(n * width));
    for (int t = 0; t < n; ++t)
        for (int c = 0; c < width; ++c) {
            k[std::size_t(t * width + c)] = value(tag, layer, K, begin + t, c);
            v[std::size_t(t * width + c)] = value(tag, layer, V, begin + t, c);
        }
    cache.append(seq, layer, k, v);
}

template <class Cache>
std::vector<float> read(const Cache& cache, int seq, int layer, kv_kind kind, int begin, int end) {
    std::vector<float> out(std::size_t((end - begin) * cache.geometry().token_width()), -1.0f);
    cache.read(seq, layer, kind, begin, end, out);
    return out;
}

// What read must return: every group's columns come from the (layer, group) owning its slot.
template <class Cache>
std::vector<float> expected(const Cache& cache, int tag, int layer, kv_kind kind, int begin,
                            int end) {
    const auto& layout = cache.layout();
    const int width = cache.geometry().token_width();
    const int group_width = layout.heads_per_group() * cache.geometry().head_dim;
    std::vector<float> out;
    for (int t = begin; t < end; ++t)
        for (int c = 0; c < width; ++c) {
            const slot_owner src = layout.owner(layout.slot(layer, c / group_width, kind));
            out.push_back(
                value(tag, src.layer, kind, t, src.group * group_width + c % group_width));
        }
    return out;
}

// Everything observable about the cache, to show a failed call changed nothing.
struct snapshot {
    std::vector<int> live;
    std::vector<int> lengths;
    std::vector<float> contents;
    std::size_t bytes_used = 0, bytes_reserved = 0;
    bool operator==(const snapshot&) const = default;
};

template <class Cache>
snapshot take_snapshot(const Cache& cache) {
    snapshot s;
    s.bytes_used = cache.bytes_used();
    s.bytes_reserved = cache.bytes_reserved();
    const auto& layout = cache.layout();
    for (int seq = 0; seq < cache.max_sequences(); ++seq) {
        if (!cache.is_live(seq)) continue;
        s.live.push_back(seq);
        for (int layer = 0; layer < cache.geometry().n_layers; ++layer) {
            s.lengths.push_back(cache.length(seq, layer));
            for (kv_kind kind : {K, V}) {
                int end = cache.length(seq, layer);
                for (int g = 0; g < layout.groups_per_layer(); ++g) {
                    const int src = layout.owner(layout.slot(layer, g, kind)).layer;
                    end = std::min(end, cache.length(seq, src));
                }
                const std::vector<float> data = read(cache, seq, layer, kind, 0, end);
                s.contents.insert(s.contents.end(), data.begin(), data.end());
            }
        }
    }
    return s;
}

}  // namespace

TEST_CASE("kv_cache: interleaved sequences of different lengths read back exactly", "[cache]") {
    const kv_geometry g{3, 4, 8};
    kv_cache<exact> cache(dense_layout(g), exact{8}, {4, 40});
    REQUIRE(cache.n_slots() == 24);
    const int a = cache.add_sequence(), b = cache.add_sequence(), c = cache.add_sequence();
    REQUIRE((a == 0 && b == 1 && c == 2));
    REQUIRE(cache.live_sequences() == 3);
    REQUIRE(cache.length(a) == 0);

    // One token at a time for a, many at once for b, a mix for c; layers in lockstep or not.
    for (int step = 0; step < 7; ++step)
        for (int layer = 0; layer < 3; ++layer) append_tokens(cache, a, a, layer, 1);
    for (int layer = 0; layer < 3; ++layer) append_tokens(cache, b, b, layer, 13);
    append_tokens(cache, c, c, 0, 3);
    append_tokens(cache, c, c, 1, 2);
    append_tokens(cache, c, c, 0, 5);
    append_tokens(cache, c, c, 2, 1);
    append_tokens(cache, c, c, 1, 0);  // nothing

    REQUIRE(cache.length(a) == 7);
    REQUIRE(cache.length(b) == 13);
    REQUIRE(cache.length(c, 0) == 8);
    REQUIRE(cache.length(c, 1) == 2);
    REQUIRE(cache.length(c, 2) == 1);
    REQUIRE(cache.length(c) == 1);

    for (int seq : {a, b, c})
        for (int layer = 0; layer < 3; ++layer)
            for (kv_kind kind : {K, V}) {
                const int n = cache.length(seq, layer);
                for (int begin = 0; begin <= n; ++begin)
                    for (int end = begin; end <= n; ++end)
                        REQUIRE(read(cache, seq, layer, kind, begin, end) ==
                                expected(cache, seq, layer, kind, begin, end));
            }

    // An out span larger than needed is fine; the floats past the range are untouched.
    std::vector<float> out(3 * 32 + 5, -7.0f);
    cache.read(b, 2, V, 4, 7, out);
    REQUIRE(std::vector<float>(out.begin(), out.begin() + 96) == expected(cache, b, 2, V, 4, 7));
    REQUIRE(out.back() == -7.0f);

    // Removing a sequence frees its id (the lowest is handed out again) and its storage.
    const std::size_t reserved = cache.bytes_reserved();
    cache.remove_sequence(b);
    REQUIRE_FALSE(cache.is_live(b));
    REQUIRE(cache.bytes_reserved() == reserved - 40u * cache.bytes_per_token());
    REQUIRE(cache.add_sequence() == b);
    REQUIRE(cache.length(b) == 0);
    append_tokens(cache, b, 99, 1, 4);
    REQUIRE(read(cache, b, 1, K, 0, 4) == expected(cache, 99, 1, K, 0, 4));
    REQUIRE(read(cache, a, 1, K, 0, 7) == expected(cache, a, 1, K, 0, 7));
}

namespace {

// Runs one scripted mix of add, remove and append (odd chunk sizes, page boundaries) on two caches
// and requires both to agree with each other and with the values appended, after every step.
template <class CacheA, class CacheB>
void run_same_script(CacheA& first, CacheB& second, unsigned seed, int steps) {
    std::mt19937 rng(seed);
    const int layers = first.geometry().n_layers;
    std::vector<int> tag(std::size_t(first.max_sequences()), -1);
    int next_tag = 0;
    for (int step = 0; step < steps; ++step) {
        std::vector<int> live;
        for (int s = 0; s < first.max_sequences(); ++s)
            if (first.is_live(s)) live.push_back(s);
        const unsigned op = rng() % 10;
        if (op == 0 && !live.empty()) {
            const int seq = live[rng() % live.size()];
            first.remove_sequence(seq);
            second.remove_sequence(seq);
        } else if (op <= 2 && int(live.size()) < first.max_sequences()) {
            const int seq = first.add_sequence();
            REQUIRE(second.add_sequence() == seq);
            tag[std::size_t(seq)] = next_tag++ % 7;
        } else if (!live.empty()) {
            const int seq = live[rng() % live.size()];
            const int layer = int(rng() % unsigned(layers));
            const int n = 1 + int(rng() % 5);
            const int t = tag[std::size_t(seq)];
            if (first.length(seq, layer) + n > first.storage().max_tokens()) {
                const snapshot before1 = take_snapshot(first), before2 = take_snapshot(second);
                KVCAR_REQUIRE_ERROR(append_tokens(first, seq, t, layer, n), "exceeds max_tokens");
                KVCAR_REQUIRE_ERROR(append_tokens(second, seq, t, layer, n), "exceeds max_tokens");
                REQUIRE(take_snapshot(first) == before1);
                REQUIRE(take_snapshot(second) == before2);
            } else {
                append_tokens(first, seq, t, layer, n);
                append_tokens(second, seq, t, layer, n);
            }
        }
        REQUIRE(first.bytes_used() == second.bytes_used());
        for (int seq : live) {
            if (!first.is_live(seq)) continue;
            for (int layer = 0; layer < layers; ++layer) {
                const int n = first.length(seq, layer);
                REQUIRE(second.length(seq, layer) == n);
                const int begin = n == 0 ? 0 : int(rng() % unsigned(n));
                for (kv_kind kind : {K, V}) {
                    const auto got = read(first, seq, layer, kind, begin, n);
                    REQUIRE(got == read(second, seq, layer, kind, begin, n));
                    REQUIRE(got == expected(first, tag[std::size_t(seq)], layer, kind, begin, n));
                }
            }
        }
    }
}

}  // namespace

TEST_CASE("kv_cache: paged storage equals contiguous storage", "[cache]") {
    const kv_geometry g{2, 2, 4};
    kv_cache<exact> contiguous(dense_layout(g), exact{4}, {4, 23});
    kv_cache<exact, dense_layout, paged_storage> paged(
        dense_layout(g), exact{4},
        {.max_sequences = 4, .max_tokens = 23, .page_size = 4, .n_pages = 4 * 6});
    run_same_script(contiguous, paged, 12345u, 400);

    // Page bookkeeping followed the sequences: every page is held by one live sequence or free.
    const paged_storage& s = paged.storage();
    int held = 0;
    for (int seq = 0; seq < 4; ++seq) {
        held += s.pages_held(seq);
        if (paged.is_live(seq)) {
            int longest = 0;
            for (int layer = 0; layer < 2; ++layer)
                longest = std::max(longest, paged.length(seq, layer));
            REQUIRE(s.pages_held(seq) == (longest + 3) / 4);
        } else {
            REQUIRE(s.pages_held(seq) == 0);
        }
    }
    REQUIRE(held + s.free_pages() == 24);
    REQUIRE(paged.bytes_reserved() == std::size_t(held) * 4u * paged.bytes_per_token());
}

TEST_CASE("kv_cache: paged and contiguous agree with a reuse map and layer-wide groups",
          "[cache]") {
    const kv_geometry g{3, 4, 2};
    const reuse_map map(g, 2, {{1, 0, 0, 1}, {2, 1, 1, 1}}, {{2, 0, 0, 0}});
    kv_cache<exact, reuse_map> contiguous(map, exact{4}, {3, 11});
    kv_cache<exact, reuse_map, paged_storage> paged(map, exact{4}, {3, 11, 4, 9});
    // Appending layers in order keeps every source ahead of its readers, as a forward pass does;
    // the script appends layers at random, so reads are limited to what the sources hold.
    for (int seq = 0; seq < 3; ++seq) {
        REQUIRE(contiguous.add_sequence() == seq);
        REQUIRE(paged.add_sequence() == seq);
        for (int n : {3, 1, 5, 2}) {
            if (contiguous.length(seq, 0) + n > 11) break;
            for (int layer = 0; layer < 3; ++layer) {
                append_tokens(contiguous, seq, seq, layer, n);
                append_tokens(paged, seq, seq, layer, n);
            }
        }
    }
    REQUIRE(paged.storage().free_pages() == 0);
    for (int seq = 0; seq < 3; ++seq)
        for (int layer = 0; layer < 3; ++layer)
            for (kv_kind kind : {K, V}) {
                const auto got = read(paged, seq, layer, kind, 0, 11);
                REQUIRE(got == read(contiguous, seq, layer, kind, 0, 11));
                REQUIRE(got == expected(paged, seq, layer, kind, 0, 11));
            }
}

TEST_CASE("kv_cache: removed sequences give their pages to new ones, no stale data", "[cache]") {
    const kv_geometry g{2, 1, 4};
    kv_cache<exact, dense_layout, paged_storage> cache(dense_layout(g), exact{4}, {2, 9, 4, 3});
    const int a = cache.add_sequence(), b = cache.add_sequence();
    for (int layer = 0; layer < 2; ++layer) append_tokens(cache, a, 1, layer, 9);  // 3 pages
    KVCAR_REQUIRE_ERROR(append_tokens(cache, b, 2, 0, 1),
                        "paged_storage: out of pages: sequence 1 needs 1 more page, 0 free");
    REQUIRE(cache.length(b, 0) == 0);

    const auto pages_of_a = cache.storage().pages(a);
    cache.remove_sequence(a);
    REQUIRE(cache.storage().free_pages() == 3);
    for (int layer = 0; layer < 2; ++layer) append_tokens(cache, b, 2, layer, 7);
    REQUIRE(cache.storage().pages(b) ==
            std::vector<std::int32_t>(pages_of_a.begin(), pages_of_a.begin() + 2));
    REQUIRE(cache.add_sequence() == a);
    append_tokens(cache, a, 3, 0, 3);
    append_tokens(cache, a, 3, 1, 2);
    REQUIRE(cache.storage().free_pages() == 0);
    for (int layer = 0; layer < 2; ++layer)
        for (kv_kind kind : {K, V}) {
            REQUIRE(read(cache, b, layer, kind, 0, 7) == expected(cache, 2, layer, kind, 0, 7));
            const int n = cache.length(a, layer);
            REQUIRE(read(cache, a, layer, kind, 0, n) == expected(cache, 3, layer, kind, 0, n));
        }
}

TEST_CASE("kv_cache: reused groups read their source layer's data", "[cache]") {
    // 3 layers x 2 heads. K of (1,0) reads (0,0); K of (2,0) reads (1,1) (another head);
    // V of (2,1) chains through (1,1) to (0,1).
    const kv_geometry g{3, 2, 4};
    const reuse_map map(g, 1, {{1, 0, 0, 0}, {2, 0, 1, 1}}, {{2, 1, 1, 1}, {1, 1, 0, 1}});
    kv_cache<exact, reuse_map> cache(map, exact{4}, {2, 16});
    REQUIRE(cache.n_slots() == 8);
    const int seq = cache.add_sequence();
    for (int layer = 0; layer < 3; ++layer) append_tokens(cache, seq, 5, layer, 6);

    const std::vector<float> k1 = read(cache, seq, 1, K, 0, 6);
    const std::vector<float> k2 = read(cache, seq, 2, K, 0, 6);
    const std::vector<float> v2 = read(cache, seq, 2, V, 0, 6);
    for (int t = 0; t < 6; ++t)
        for (int c = 0; c < 4; ++c) {
            // layer 1 K: head 0 is layer 0's head 0, head 1 its own.
            REQUIRE(k1[std::size_t(t * 8 + c)] == value(5, 0, K, t, c));
            REQUIRE(k1[std::size_t(t * 8 + 4 + c)] == value(5, 1, K, t, 4 + c));
            // layer 2 K: head 0 is layer 1's head 1.
            REQUIRE(k2[std::size_t(t * 8 + c)] == value(5, 1, K, t, 4 + c));
            REQUIRE(k2[std::size_t(t * 8 + 4 + c)] == value(5, 2, K, t, 4 + c));
            // layer 2 V: head 1 is layer 0's head 1, through the chain.
            REQUIRE(v2[std::size_t(t * 8 + c)] == value(5, 2, V, t, c));
            REQUIRE(v2[std::size_t(t * 8 + 4 + c)] == value(5, 0, V, t, 4 + c));
        }
    REQUIRE(read(cache, seq, 1, V, 2, 5) == expected(cache, 5, 1, V, 2, 5));

    // Only owned slots are stored: 8 stored records of 16 bytes per token.
    REQUIRE(cache.bytes_per_token() == 8u * 16u);
    REQUIRE(cache.bytes_used() == 6u * 8u * 16u);
    REQUIRE(cache.compression_ratio() == Approx(double(g.fp16_bytes_per_token()) / 128.0));
}

TEST_CASE("kv_cache: whole-layer groups", "[cache]") {
    const kv_geometry g{2, 4, 3};
    kv_cache<exact> cache(dense_layout(g, 4), exact{12}, {2, 5});
    REQUIRE(cache.n_slots() == 4);
    const int seq = cache.add_sequence();
    append_tokens(cache, seq, 0, 0, 5);
    append_tokens(cache, seq, 0, 1, 4);
    for (int layer = 0; layer < 2; ++layer)
        for (kv_kind kind : {K, V}) {
            const int n = cache.length(seq, layer);
            REQUIRE(read(cache, seq, layer, kind, 0, n) == expected(cache, 0, layer, kind, 0, n));
        }
    REQUIRE(cache.bytes_per_token() == 4u * 48u);
    REQUIRE(cache.bytes_used() == (5u + 4u) * 2u * 48u);

    // Whole-layer reuse: layer 1's V is layer 0's.
    const reuse_map map(g, 4, {}, {{1, 0, 0, 0}});
    kv_cache<exact, reuse_map> reused(map, exact{12}, {1, 5});
    const int r = reused.add_sequence();
    append_tokens(reused, r, 4, 0, 3);
    append_tokens(reused, r, 4, 1, 3);
    const std::vector<float> v1 = read(reused, r, 1, V, 0, 3);
    for (int t = 0; t < 3; ++t)
        for (int c = 0; c < 12; ++c) REQUIRE(v1[std::size_t(t * 12 + c)] == value(4, 0, V, t, c));
    REQUIRE(reused.bytes_per_token() == 3u * 48u);
}

TEST_CASE("kv_cache: bytes per token, used, reserved and compression ratio", "[cache]") {
    const kv_geometry g{2, 4, 8};
    SECTION("dense f16 is the baseline") {
        kv_cache<half> cache(dense_layout(g), half{8}, {3, 10});
        REQUIRE(cache.bytes_per_token() == g.fp16_bytes_per_token());
        REQUIRE(cache.bytes_per_token() == 2u * 2u * 4u * 16u);
        REQUIRE(cache.compression_ratio() == 1.0);
        REQUIRE(cache.bytes_used() == 0);
        REQUIRE(cache.bytes_reserved() == 0);

        const int a = cache.add_sequence(), b = cache.add_sequence();
        cache.add_sequence();  // live, never appended to: no storage
        append_tokens(cache, a, 0, 0, 5);
        append_tokens(cache, a, 0, 1, 3);
        append_tokens(cache, b, 1, 0, 2);
        append_tokens(cache, b, 1, 1, 2);
        // Each layer holds 8 slots of 16-byte records.
        REQUIRE(cache.bytes_used() == (5u + 3u + 2u + 2u) * 8u * 16u);
        REQUIRE(cache.bytes_reserved() == 2u * 10u * cache.bytes_per_token());
        // Read back as f16 rounded them.
        std::vector<float> rounded = expected(cache, 0, 0, V, 0, 5);
        for (float& x : rounded) x = kvcar::to_float(kvcar::to_f16(x));
        REQUIRE(read(cache, a, 0, V, 0, 5) == rounded);
        REQUIRE(rounded != expected(cache, 0, 0, V, 0, 5));  // the check above is not vacuous
        cache.remove_sequence(a);
        REQUIRE(cache.bytes_used() == 4u * 8u * 16u);
        REQUIRE(cache.bytes_reserved() == 10u * cache.bytes_per_token());
    }
    SECTION("dense f32 is twice the baseline") {
        kv_cache<exact> cache(dense_layout(g), exact{8}, {1, 4});
        REQUIRE(cache.bytes_per_token() == 2u * g.fp16_bytes_per_token());
        REQUIRE(cache.compression_ratio() == 0.5);
    }
    SECTION("paged reserves whole pages") {
        kv_cache<half, dense_layout, paged_storage> cache(dense_layout(g), half{8}, {2, 10, 4, 5});
        const int a = cache.add_sequence();
        append_tokens(cache, a, 0, 0, 5);  // 2 pages
        REQUIRE(cache.bytes_reserved() == 2u * 4u * cache.bytes_per_token());
        REQUIRE(cache.bytes_used() == 5u * 8u * 16u);
    }
    SECTION("a reuse map stores fewer slots") {
        const reuse_map map(g, 1, {{1, 0, 0, 0}, {1, 3, 0, 3}}, {{1, 2, 0, 1}});
        kv_cache<half, reuse_map> cache(map, half{8}, {1, 4});
        REQUIRE(cache.bytes_per_token() == (16u - 3u) * 16u);
        REQUIRE(cache.compression_ratio() == Approx(16.0 / 13.0));
        const int a = cache.add_sequence();
        append_tokens(cache, a, 0, 0, 4);
        append_tokens(cache, a, 0, 1, 1);
        // Layer 1 wrote 5 of its 8 slots for 1 token; layer 0 all 8 for 4 tokens.
        REQUIRE(cache.bytes_used() == (4u * 8u + 1u * 5u) * 16u);
    }
    SECTION("one codec per slot") {
        const kv_geometry small{1, 4, 8};
        kv_cache<exact> cache(dense_layout(small), std::vector<exact>(8, exact{8}), {1, 4});
        REQUIRE(cache.codec(3).group_width() == 8);
        REQUIRE(cache.codecs().size() == 8);
        REQUIRE(cache.bytes_per_token() == 8u * 32u);
    }
}

TEST_CASE("kv_cache: rejects bad construction", "[cache]") {
    const kv_geometry g{3, 4, 32};
    KVCAR_REQUIRE_ERROR(
        (kv_cache<half>(dense_layout(g, 2), std::vector<half>(11, half{64}), {1, 4})),
        "kv_cache: 11 codecs for a layout of 12 slots");
    // Layers 1 and 2 reuse all but (2,1), so stored slot 5 is (layer 2, group 1, V).
    const reuse_map map(g, 2, {{1, 0, 0, 0}, {1, 1, 0, 1}, {2, 0, 0, 0}},
                        {{1, 0, 0, 0}, {1, 1, 0, 1}, {2, 0, 0, 0}});
    REQUIRE(map.n_slots() == 6);
    std::vector<half> codecs(6, half{64});
    codecs[5] = half{32};
    KVCAR_REQUIRE_ERROR((kv_cache<half, reuse_map>(map, codecs, {1, 4})),
                        "kv_cache: codec for slot 5 (layer 2, group 1, V) has group width 32, the "
                        "layout's groups are 64 wide");
    KVCAR_REQUIRE_ERROR((kv_cache<half>(dense_layout(g), half{64}, {1, 4})),
                        "codec for slot 0 (layer 0, group 0, K) has group width 64, the layout's "
                        "groups are 32 wide");
    KVCAR_REQUIRE_ERROR((kv_cache<half>(dense_layout(g), half{32}, {0, 4})),
                        "contiguous_storage: max_sequences and max_tokens must be positive");
    KVCAR_REQUIRE_ERROR(
        (kv_cache<half, dense_layout, paged_storage>(dense_layout(g), half{32}, {1, 4, 4, 0})),
        "paged_storage: max_sequences, max_tokens, page_size and n_pages");
}

TEST_CASE("kv_cache: every bad call throws and changes nothing", "[cache]") {
    const kv_geometry g{3, 2, 4};
    const reuse_map map(g, 1, {{2, 1, 0, 1}}, {});
    kv_cache<exact, reuse_map, paged_storage> cache(map, exact{4}, {2, 10, 4, 5});
    const int a = cache.add_sequence(), b = cache.add_sequence();
    append_tokens(cache, a, 1, 0, 3);
    append_tokens(cache, a, 1, 1, 9);
    append_tokens(cache, a, 1, 2, 5);
    append_tokens(cache, b, 2, 0, 4);
    const snapshot before = take_snapshot(cache);
    const std::vector<float> eight(8, 1.0f), sixteen(16, 1.0f), twelve(12, 1.0f);
    std::vector<float> out(200);

    KVCAR_REQUIRE_ERROR(cache.add_sequence(), "kv_cache: all 2 sequences are in use");
    KVCAR_REQUIRE_ERROR(cache.append(a, 3, eight, eight), "kv_cache: layer 3 out of range [0, 3)");
    KVCAR_REQUIRE_ERROR(cache.append(a, -1, eight, eight), "layer -1 out of range");
    KVCAR_REQUIRE_ERROR(cache.append(2, 0, eight, eight), "kv_cache: sequence 2 is not live");
    KVCAR_REQUIRE_ERROR(cache.append(-1, 0, eight, eight), "sequence -1 is not live");
    KVCAR_REQUIRE_ERROR(cache.append(a, 0, eight, sixteen),
                        "kv_cache: append to layer 0 got 8 K floats but 16 V floats");
    KVCAR_REQUIRE_ERROR(cache.append(a, 0, twelve, twelve),
                        "got 12 floats, not a multiple of the token width 8");
    // Past max_tokens: checked before anything is written.
    std::vector<float> many(8 * 8, 1.0f);
    KVCAR_REQUIRE_ERROR(cache.append(a, 2, many, many),
                        "kv_cache: appending 8 tokens to sequence 0 layer 2 (length 5) exceeds "
                        "max_tokens 10");
    // Out of pages: a holds 3 pages, b 1, 1 is free; b's 4 + 6 tokens need 3.
    std::vector<float> six(6 * 8, 1.0f);
    KVCAR_REQUIRE_ERROR(cache.append(b, 0, six, six),
                        "paged_storage: out of pages: sequence 1 needs 2 more pages, 1 free");
    REQUIRE(take_snapshot(cache) == before);

    KVCAR_REQUIRE_ERROR(cache.read(a, 0, K, 2, 1, out),
                        "kv_cache: read of tokens [2, 1) is not a range");
    KVCAR_REQUIRE_ERROR(cache.read(a, 0, K, -1, 1, out), "read of tokens [-1, 1) is not a range");
    KVCAR_REQUIRE_ERROR(cache.read(a, 0, V, 0, 4, out),
                        "kv_cache: reading past a sequence's length: tokens [0, 4) of layer 0 but "
                        "sequence 0 has 3");
    // Layer 2 holds 5 tokens, but its K group 1 reads layer 0, which holds 3.
    KVCAR_REQUIRE_ERROR(cache.read(a, 2, K, 1, 4, out),
                        "kv_cache: reading past a sequence's length: layer 2 group 1 K reuses "
                        "layer 0 group 1, which holds 3 tokens of sequence 0, but tokens up to 4 "
                        "were asked for");
    REQUIRE(read(cache, a, 2, K, 1, 3) == expected(cache, 1, 2, K, 1, 3));
    REQUIRE(read(cache, a, 2, V, 0, 5) == expected(cache, 1, 2, V, 0, 5));  // V is not reused
    KVCAR_REQUIRE_ERROR(cache.read(a, 1, K, 1, 4, std::span<float>(out.data(), 23)),
                        "kv_cache: out span too small: 23 floats for 3 tokens of 8 floats");
    KVCAR_REQUIRE_ERROR(cache.read(a, 3, K, 0, 0, out), "kv_cache: layer 3 out of range");
    KVCAR_REQUIRE_ERROR(cache.read(5, 0, K, 0, 0, out), "kv_cache: sequence 5 is not live");
    KVCAR_REQUIRE_ERROR(cache.read(a, 0, kv_kind(2), 0, 1, out), "neither K nor V");
    KVCAR_REQUIRE_ERROR(cache.length(7), "kv_cache: sequence 7 is not live");
    KVCAR_REQUIRE_ERROR(cache.length(a, 3), "kv_cache: layer 3 out of range");
    KVCAR_REQUIRE_ERROR(cache.view(cache.n_slots()), "kv_cache: slot 11 out of range [0, 11)");
    KVCAR_REQUIRE_ERROR(cache.codec(-1), "kv_cache: slot -1 out of range");
    REQUIRE(take_snapshot(cache) == before);

    cache.remove_sequence(b);
    KVCAR_REQUIRE_ERROR(cache.remove_sequence(b), "kv_cache: sequence 1 is not live");
    KVCAR_REQUIRE_ERROR(cache.append(b, 0, eight, eight), "sequence 1 is not live");
    KVCAR_REQUIRE_ERROR(cache.read(b, 0, K, 0, 0, out), "sequence 1 is not live");
    REQUIRE(cache.length(a, 1) == 9);
    REQUIRE(read(cache, a, 1, K, 0, 9) == expected(cache, 1, 1, K, 0, 9));

    // Contiguous storage: past max_tokens is rejected before any token is written.
    kv_cache<exact> dense(dense_layout(g), exact{4}, {1, 4});
    const int d = dense.add_sequence();
    append_tokens(dense, d, 0, 0, 3);
    const snapshot dense_before = take_snapshot(dense);
    KVCAR_REQUIRE_ERROR(append_tokens(dense, d, 0, 0, 2),
                        "kv_cache: appending 2 tokens to sequence 0 layer 0 (length 3) exceeds "
                        "max_tokens 4");
    REQUIRE(take_snapshot(dense) == dense_before);
}
