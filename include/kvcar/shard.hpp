// kvcar/shard.hpp — tensor parallelism: one rank's share of a KV cache, split by KV head.
//
// Tensor-parallel attention gives each of `world` GPUs a contiguous block of the query heads and
// of the KV heads they read (Megatron's column split of W_q, W_k, W_v; the row split of W_o is
// followed by an all-reduce). Attention never mixes heads, so every rank's cache holds only its
// own KV heads: n_kv_heads / world heads of every layer, the same codecs it would have held
// unsharded, and per-GPU KV bytes shrink by exactly `world`.
//
// That holds for every group that lies inside one rank's heads. A *whole-layer* latent (one
// codec over all KV heads of a layer, heads_per_group = n_kv_heads) does not: encoding a token
// needs every head's K, which lives on other GPUs, so it would cost an all-gather per layer and
// per token, and its decoder would have to be replicated. kvcar refuses to split such a group;
// calibrate one codec per rank's heads instead (heads_per_group = n_kv_heads / world), which
// trades some of the cross-head redundancy a whole-layer latent exploits for zero communication.
//
// A reuse map shards the same way, as long as no kept group reads a group of another rank:
// KV-CAR reuses head h of layer l-1 for head h of layer l, which always stays on one rank.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/io/codec_file.hpp"
#include "kvcar/layout/dense.hpp"
#include "kvcar/layout/reuse_map.hpp"

namespace kvcar {

/// One rank of a tensor-parallel group: it holds KV heads
/// [rank * n_kv_heads / world, (rank + 1) * n_kv_heads / world).
struct head_shard {
    int rank = 0;   ///< 0 <= rank < world
    int world = 1;  ///< ranks sharing the heads; must divide n_kv_heads
};

/// A contiguous run of KV heads (or of groups): [first, first + count).
struct head_range {
    int first = 0;  ///< first index in the unsharded numbering
    int count = 0;  ///< how many
    /// True when `index` (unsharded numbering) lies in the range.
    constexpr bool contains(int index) const { return index >= first && index < first + count; }
};

/// Throws kvcar::error unless `shard` can split `geometry` into whole groups of
/// `heads_per_group` heads: 0 <= rank < world, world divides n_kv_heads, and each rank's heads
/// are a whole number of groups (the message explains the whole-layer-latent case).
inline void validate(const head_shard& shard, const kv_geometry& geometry,
                     int heads_per_group = 1) {
    validate(geometry);
    require(shard.world > 0 && shard.rank >= 0 && shard.rank < shard.world,
            "head_shard: rank " + std::to_string(shard.rank) + " of world " +
                std::to_string(shard.world) + " (need world > 0 and 0 <= rank < world)");
    require(geometry.n_kv_heads % shard.world == 0,
            "head_shard: " + std::to_string(geometry.n_kv_heads) +
                " KV heads cannot be split evenly across " + std::to_string(shard.world) +
                " ranks (the tensor-parallel size must divide n_kv_heads)");
    const int per_rank = geometry.n_kv_heads / shard.world;
    require(heads_per_group > 0 && per_rank % heads_per_group == 0,
            "head_shard: a group of " + std::to_string(heads_per_group) +
                " KV heads would straddle ranks (each of the " + std::to_string(shard.world) +
                " ranks holds " + std::to_string(per_rank) +
                " heads). A codec over a whole layer's heads cannot be split without an "
                "all-gather per token: calibrate one per rank's heads (heads_per_group " +
                std::to_string(per_rank) + " or a divisor of it)");
}

/// The KV heads `shard` holds, in the unsharded numbering.
inline head_range kv_heads_of(const kv_geometry& geometry, const head_shard& shard) {
    validate(shard, geometry);
    const int per_rank = geometry.n_kv_heads / shard.world;
    return {shard.rank * per_rank, per_rank};
}

/// The query heads `shard` computes: the ones that read its KV heads (GQA keeps each group of
/// n_heads / n_kv_heads query heads with its KV head). Throws unless n_kv_heads divides n_heads.
inline head_range query_heads_of(int n_heads, const kv_geometry& geometry,
                                 const head_shard& shard) {
    const head_range kv = kv_heads_of(geometry, shard);
    require(n_heads > 0 && n_heads % geometry.n_kv_heads == 0,
            "head_shard: " + std::to_string(n_heads) + " query heads are not a multiple of " +
                std::to_string(geometry.n_kv_heads) + " KV heads");
    const int ratio = n_heads / geometry.n_kv_heads;
    return {kv.first * ratio, kv.count * ratio};
}

/// The geometry of one rank's cache: the same layers and head width, its share of the heads.
inline kv_geometry shard_geometry(const kv_geometry& geometry, const head_shard& shard) {
    return {geometry.n_layers, kv_heads_of(geometry, shard).count, geometry.head_dim};
}

/// The groups (of `heads_per_group` heads) `shard` holds, in the unsharded group numbering.
inline head_range groups_of(const kv_geometry& geometry, int heads_per_group,
                            const head_shard& shard) {
    validate(shard, geometry, heads_per_group);
    const int per_rank = geometry.n_kv_heads / shard.world / heads_per_group;
    return {shard.rank * per_rank, per_rank};
}

/// One rank's dense layout: the same grouping over its share of the heads.
inline dense_layout shard_layout(const dense_layout& full, const head_shard& shard) {
    validate(shard, full.geometry(), full.heads_per_group());
    return dense_layout(shard_geometry(full.geometry(), shard), full.heads_per_group());
}

namespace detail {

/// The reuse entries of `kind` whose group `shard` holds, renumbered to the rank's groups.
/// A kept group whose source is another rank's group is an error (it would need the other
/// GPU's cache); `who` names the map in the message.
inline std::vector<reuse_entry> shard_reuse(const std::vector<reuse_entry>& entries,
                                            head_range groups, kv_kind kind,
                                            const std::string& who) {
    std::vector<reuse_entry> kept;
    for (const reuse_entry& r : entries) {
        if (!groups.contains(r.group)) continue;
        require(groups.contains(r.source_group),
                who + ": " + to_string(kind) + " group " + std::to_string(r.group) + " of layer " +
                    std::to_string(r.layer) + " reuses group " + std::to_string(r.source_group) +
                    " of layer " + std::to_string(r.source_layer) +
                    ", which another tensor-parallel rank holds (groups " +
                    std::to_string(groups.first) + ".." +
                    std::to_string(groups.first + groups.count - 1) + " are on this rank)");
        kept.push_back({r.layer, r.group - groups.first, r.source_layer,
                        r.source_group - groups.first});
    }
    return kept;
}

}  // namespace detail

/// One rank's reuse map: the entries of its groups, renumbered. Throws kvcar::error for a
/// reuse across ranks and for groups that straddle ranks.
inline reuse_map shard_layout(const reuse_map& full, const head_shard& shard) {
    const head_range groups = groups_of(full.geometry(), full.heads_per_group(), shard);
    std::vector<reuse_entry> key = detail::shard_reuse(full.reuse(kv_kind::key), groups,
                                                       kv_kind::key, "shard_layout");
    std::vector<reuse_entry> value = detail::shard_reuse(full.reuse(kv_kind::value), groups,
                                                         kv_kind::value, "shard_layout");
    return reuse_map(shard_geometry(full.geometry(), shard), full.heads_per_group(),
                     std::move(key), std::move(value));
}

/// The codecs of one rank's cache, in its stored-slot order: `codecs[s]` belongs to stored slot
/// `s` of `full` (as a kv_cache takes them); the result lines up with shard_layout(full, shard).
/// Throws kvcar::error when `codecs` does not have one codec per stored slot of `full`.
template <kv_layout Layout, kv_codec Codec>
std::vector<Codec> shard_codecs(const Layout& full, const std::vector<Codec>& codecs,
                                const head_shard& shard) {
    require(int(codecs.size()) == full.n_slots(),
            "shard_codecs: " + std::to_string(codecs.size()) + " codecs for a layout of " +
                std::to_string(full.n_slots()) + " stored slots");
    const Layout part = shard_layout(full, shard);
    const head_range groups = groups_of(full.geometry(), full.heads_per_group(), shard);
    std::vector<Codec> out;
    out.reserve(std::size_t(part.n_slots()));
    for (int slot = 0; slot < part.n_slots(); ++slot) {
        const slot_owner o = part.owner(slot);
        out.push_back(codecs[std::size_t(full.slot(o.layer, o.group + groups.first, o.kind))]);
    }
    return out;
}

/// One rank's codec set: its geometry, the slots of its groups (renumbered) and its share of
/// the reuse maps; model and calibration info are kept. Throws kvcar::error as shard_layout. The
/// slots' kinds are of `List` (see io::slot_codec).
template <class List = builtin_codecs>
io::codec_set shard_codec_set(const io::codec_set& full, const head_shard& shard) {
    full.validate<List>();
    const head_range groups = groups_of(full.geometry, full.heads_per_group, shard);
    io::codec_set part;
    part.geometry = shard_geometry(full.geometry, shard);
    part.heads_per_group = full.heads_per_group;
    part.key_reuse = detail::shard_reuse(full.key_reuse, groups, kv_kind::key, "shard_codec_set");
    part.value_reuse =
        detail::shard_reuse(full.value_reuse, groups, kv_kind::value, "shard_codec_set");
    for (const io::slot_codec& s : full.slots) {
        if (!groups.contains(s.group)) continue;
        io::slot_codec copy = s;
        copy.group -= groups.first;
        part.slots.push_back(std::move(copy));
    }
    part.model = full.model;
    part.calibration = full.calibration;
    part.validate<List>();
    return part;
}

}  // namespace kvcar
