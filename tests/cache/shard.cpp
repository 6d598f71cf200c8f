// kvcar/shard.hpp: one tensor-parallel rank's share of a cache. The oracle is the unsharded
// cache: attention over every rank's shard, concatenated head by head, must equal attention over
// the whole cache bit for bit (the per-head arithmetic is the same), and per-rank bytes must be
// exactly 1/world of the whole.
#include <kvcar/codec/identity.hpp>
#include <kvcar/codec/linear.hpp>
#include <kvcar/io/codec_file.hpp>
#include <kvcar/kv_cache.hpp>
#include <kvcar/layout/dense.hpp>
#include <kvcar/layout/reuse_map.hpp>
#include <kvcar/reference/attention.hpp>
#include <kvcar/shard.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "catch.hpp"

using kvcar::dense_layout;
using kvcar::head_shard;
using kvcar::kv_geometry;
using kvcar::kv_kind;
using kvcar::reuse_map;

namespace {

std::vector<float> gaussian(std::size_t n, std::mt19937& rng, float sigma = 1.0f) {
    std::normal_distribution<float> dist(0.0f, sigma);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
}

/// A per-head linear codec of rank `rank`, different for every slot (seeded by the slot).
kvcar::linear_params slot_params(int head_dim, int rank, std::uint32_t seed) {
    std::mt19937 rng(seed);
    kvcar::linear_params p;
    p.width = head_dim;
    p.rank = rank;
    p.heads = 1;
    p.mean = gaussian(std::size_t(head_dim), rng, 0.5f);
    p.basis = gaussian(std::size_t(head_dim) * std::size_t(rank), rng, 0.3f);
    return p;
}

/// The columns of `token` ([n_heads][head_dim]) for heads [first, first + count).
std::vector<float> heads_slice(const std::vector<float>& token, int head_dim, int first,
                               int count) {
    return {token.begin() + std::ptrdiff_t(first) * head_dim,
            token.begin() + std::ptrdiff_t(first + count) * head_dim};
}

}  // namespace

TEST_CASE("shard: head ranges, geometry and query heads split evenly", "[cache]") {
    const kv_geometry g{3, 8, 16};
    const kvcar::head_range r = kvcar::kv_heads_of(g, {2, 4});
    REQUIRE(r.first == 4);
    REQUIRE(r.count == 2);
    REQUIRE(r.contains(5));
    REQUIRE_FALSE(r.contains(6));
    const kv_geometry s = kvcar::shard_geometry(g, {2, 4});
    REQUIRE(s.n_layers == 3);
    REQUIRE(s.n_kv_heads == 2);
    REQUIRE(s.head_dim == 16);
    REQUIRE(s.fp16_bytes_per_token() * 4 == g.fp16_bytes_per_token());
    // GQA 32 query heads over 8 KV heads: rank 2 of 4 computes query heads 16..23.
    const kvcar::head_range q = kvcar::query_heads_of(32, g, {2, 4});
    REQUIRE(q.first == 16);
    REQUIRE(q.count == 8);
    // A world of one is the whole cache.
    REQUIRE(kvcar::shard_geometry(g, {0, 1}).n_kv_heads == 8);
}

TEST_CASE("shard: bad shards and straddling groups are refused with a reason", "[cache]") {
    const kv_geometry g{2, 6, 8};
    KVCAR_REQUIRE_ERROR(kvcar::kv_heads_of(g, {0, 4}), "cannot be split evenly across 4");
    KVCAR_REQUIRE_ERROR(kvcar::kv_heads_of(g, {3, 3}), "rank 3 of world 3");
    KVCAR_REQUIRE_ERROR(kvcar::kv_heads_of(g, {-1, 2}), "rank -1 of world 2");
    KVCAR_REQUIRE_ERROR(kvcar::kv_heads_of(g, {0, 0}), "need world > 0");
    KVCAR_REQUIRE_ERROR(kvcar::query_heads_of(9, g, {0, 2}), "not a multiple of 6");
    // A whole-layer latent (all 6 heads in one group) cannot be split over 2 ranks.
    KVCAR_REQUIRE_ERROR(kvcar::shard_layout(dense_layout(g, 6), {0, 2}),
                        "calibrate one per rank's heads (heads_per_group 3");
    // Groups of 3 heads fit 2 ranks exactly.
    REQUIRE(kvcar::shard_layout(dense_layout(g, 3), {1, 2}).groups_per_layer() == 1);
}

TEST_CASE("shard: sharded attention equals unsharded attention, bytes shrink by world", "[cache]") {
    // 2 layers, 4 KV heads, GQA 2 query heads per KV head; per-head linear codecs, all different.
    const kv_geometry g{2, 4, 8};
    const int n_heads = 8, rank = 5, tokens = 13;
    const dense_layout full_layout(g);
    std::vector<kvcar::linear_params> params;
    for (int slot = 0; slot < full_layout.n_slots(); ++slot)
        params.push_back(slot_params(g.head_dim, rank, 100u + std::uint32_t(slot)));
    std::vector<kvcar::linear_codec<float>> codecs;
    for (const auto& p : params) codecs.push_back(p.codec<float>());

    using cache_type = kvcar::kv_cache<kvcar::linear_codec<float>>;
    cache_type full(full_layout, codecs, {1, tokens});
    const int seq = full.add_sequence();

    // K/V of every token and layer, and one query per layer at the last position.
    std::mt19937 rng(7);
    std::vector<std::vector<std::vector<float>>> k(2), v(2);
    for (int layer = 0; layer < 2; ++layer) {
        for (int t = 0; t < tokens; ++t) {
            k[std::size_t(layer)].push_back(gaussian(std::size_t(g.token_width()), rng));
            v[std::size_t(layer)].push_back(gaussian(std::size_t(g.token_width()), rng));
            full.append(seq, layer, k[std::size_t(layer)].back(), v[std::size_t(layer)].back());
        }
    }
    const std::vector<float> q = gaussian(std::size_t(n_heads * g.head_dim), rng);
    const kvcar::attention_params attn{.n_heads = n_heads};

    for (int world : {1, 2, 4}) {
        for (int layer = 0; layer < 2; ++layer) {
            std::vector<float> want(q.size());
            kvcar::reference_decode_attention(full, seq, layer, attn, q, want);
            std::vector<float> got;
            std::size_t shard_bytes = 0;
            for (int r = 0; r < world; ++r) {
                const head_shard shard{r, world};
                const kvcar::head_range kv = kvcar::kv_heads_of(g, shard);
                const kvcar::head_range qh = kvcar::query_heads_of(n_heads, g, shard);
                cache_type part(kvcar::shard_layout(full_layout, shard),
                                kvcar::shard_codecs(full_layout, codecs, shard), {1, tokens});
                const int s = part.add_sequence();
                for (int l = 0; l < 2; ++l) {
                    for (int t = 0; t < tokens; ++t) {
                        part.append(s, l,
                                    heads_slice(k[std::size_t(l)][std::size_t(t)], g.head_dim,
                                                kv.first, kv.count),
                                    heads_slice(v[std::size_t(l)][std::size_t(t)], g.head_dim,
                                                kv.first, kv.count));
                    }
                }
                const std::vector<float> q_part = heads_slice(q, g.head_dim, qh.first, qh.count);
                std::vector<float> out(q_part.size());
                kvcar::reference_decode_attention(part, s, layer,
                                                  kvcar::attention_params{.n_heads = qh.count},
                                                  q_part, out);
                got.insert(got.end(), out.begin(), out.end());
                shard_bytes = part.bytes_per_token();
            }
            REQUIRE(got == want);  // the same per-head arithmetic: bit-identical
            REQUIRE(shard_bytes * std::size_t(world) == full.bytes_per_token());
        }
    }
}

TEST_CASE("shard: reuse maps keep their rank's entries; reuse across ranks is refused", "[cache]") {
    const kv_geometry g{3, 4, 8};
    // K: head 3 of layer 1 reads head 3 of layer 0; V: head 0 of layer 2 reads layer 1's head 0.
    const reuse_map map(g, 1, {{1, 3, 0, 3}}, {{2, 0, 1, 0}});
    const reuse_map r0 = kvcar::shard_layout(map, {0, 2});
    const reuse_map r1 = kvcar::shard_layout(map, {1, 2});
    REQUIRE(r0.reused_count(kv_kind::key) == 0);
    REQUIRE(r0.reused_count(kv_kind::value) == 1);
    REQUIRE(r1.reused_count(kv_kind::key) == 1);
    REQUIRE(r1.reuse(kv_kind::key)[0] == kvcar::reuse_entry{1, 1, 0, 1});  // renumbered
    REQUIRE(r0.n_slots() + r1.n_slots() == map.n_slots());
    // Rank 1's (layer 1, head 1) K reads its own (layer 0, head 1) slot.
    REQUIRE(r1.slot(1, 1, kv_kind::key) == r1.slot(0, 1, kv_kind::key));

    // Codecs follow the stored slots of each rank.
    std::vector<kvcar::identity_codec<float>> codecs;
    for (int s = 0; s < map.n_slots(); ++s) codecs.emplace_back(8);
    REQUIRE(kvcar::shard_codecs(map, codecs, {1, 2}).size() == std::size_t(r1.n_slots()));
    const std::vector<kvcar::identity_codec<float>> three(3, kvcar::identity_codec<float>(8));
    KVCAR_REQUIRE_ERROR(kvcar::shard_codecs(map, three, head_shard{0, 2}),
                        "3 codecs for a layout of");

    // Head 2 reading head 1 crosses from rank 1 to rank 0.
    const reuse_map crossing(g, 1, {{1, 2, 0, 1}}, {});
    KVCAR_REQUIRE_ERROR(kvcar::shard_layout(crossing, {1, 2}),
                        "which another tensor-parallel rank holds");
}

TEST_CASE("shard: a codec set splits into per-rank sets that validate", "[cache]") {
    const kv_geometry g{2, 4, 8};
    kvcar::io::codec_set set = kvcar::io::codec_set::identity(g, 2);  // groups of 2 heads
    set.key_reuse = {{1, 1, 0, 1}};
    set.slots.erase(std::remove_if(set.slots.begin(), set.slots.end(),
                                   [](const kvcar::io::slot_codec& s) {
                                       return s.layer == 1 && s.group == 1 &&
                                              s.kind == kv_kind::key;
                                   }),
                    set.slots.end());
    set.model.architecture = "gpt2";
    const kvcar::io::codec_set r0 = kvcar::shard_codec_set(set, {0, 2});
    const kvcar::io::codec_set r1 = kvcar::shard_codec_set(set, {1, 2});
    REQUIRE(r0.geometry.n_kv_heads == 2);
    REQUIRE(r0.slots.size() == 4);  // layers 0,1 x K,V of its one group
    REQUIRE(r1.slots.size() == 3);  // its layer-1 K is reused
    REQUIRE(r1.key_reuse.size() == 1);
    REQUIRE(r1.key_reuse[0].group == 0);
    REQUIRE(r1.model.architecture == "gpt2");
    KVCAR_REQUIRE_ERROR(kvcar::shard_codec_set(set, {0, 4}), "would straddle ranks");
}
