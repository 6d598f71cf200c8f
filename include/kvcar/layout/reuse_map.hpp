// kvcar/layout/reuse_map.hpp — KV-CAR's head reuse: some (layer, group) K or V streams are not
// stored at all and read the slot of a group in an earlier layer instead.
//
// Adjacent layers' K (or V) heads are often close enough that one can stand in for the other
// (the paper measures the mean L1 distance on calibration text and reuses the closest), so a
// reused group costs no bytes. K and V are chosen independently. A map may chain (layer 3 reuses
// layer 2, which reuses layer 1): chains are resolved at construction so every reader goes
// straight to the final stored slot, and that slot must belong to a strictly earlier layer —
// during a forward pass it is then always written before the layer that reads it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/layout/dense.hpp"

namespace kvcar {

/// (layer, group) reads the slot of (source_layer, source_group), for K or for V.
struct reuse_entry {
    int layer;         ///< the reusing layer
    int group;         ///< the reusing group within that layer
    int source_layer;  ///< the layer it reads from (through a chain, ending in an earlier layer)
    int source_group;  ///< the group it reads from in source_layer
    /// Same four indices.
    friend constexpr bool operator==(const reuse_entry&, const reuse_entry&) = default;
};

/// A layout where some (layer, group) K or V streams store nothing and read the slot of a group in
/// an earlier layer (KV-CAR's head reuse). Stored slots are numbered compactly in logical order;
/// reused streams resolve to the final stored slot of their chain.
class reuse_map {
public:
    /// Builds the map from the geometry, the group size and the K and V reuse lists. Throws
    /// kvcar::error naming the entry when the geometry or heads_per_group is invalid, an index is
    /// out of range, a (layer, group) is listed twice or maps to itself, the entries form a cycle,
    /// or a chain ends in the same or a later layer.
    reuse_map(kv_geometry geometry, int heads_per_group, std::vector<reuse_entry> key_reuse,
              std::vector<reuse_entry> value_reuse)
        : logical_(checked(geometry, heads_per_group), heads_per_group),
          reuse_{std::move(key_reuse), std::move(value_reuse)} {
        const int n_logical = logical_.logical_slot_count();
        // source[i]: the logical index that logical slot i reads directly, or -1 if it stores.
        std::vector<int> source(std::size_t(n_logical), -1);
        for (kv_kind kind : {kv_kind::key, kv_kind::value}) record_sources(kind, source);
        for (kv_kind kind : {kv_kind::key, kv_kind::value}) check_cycles(kind, source);

        // Stored slots are numbered compactly in (layer, group, kind) order.
        stored_of_logical_.assign(std::size_t(n_logical), -1);
        for (int i = 0; i < n_logical; ++i) {
            if (source[std::size_t(i)] >= 0) continue;
            stored_of_logical_[std::size_t(i)] = int(owners_.size());
            owners_.push_back(logical_.logical_owner(i));
        }
        for (kv_kind kind : {kv_kind::key, kv_kind::value}) resolve(kind, source);
    }

    /// The logical shape this layout covers.
    kv_geometry geometry() const { return logical_.geometry(); }
    /// Consecutive KV heads that one codec record holds.
    int heads_per_group() const { return logical_.heads_per_group(); }
    /// Groups per layer: n_kv_heads / heads_per_group.
    int groups_per_layer() const { return logical_.groups_per_layer(); }
    /// Floats per group: what every codec of this layout must take as `group_width()`.
    int group_width() const { return logical_.group_width(); }
    /// Stored slots only: what the cache allocates and what codecs are given for.
    int n_slots() const { return int(owners_.size()); }

    /// The stored slot (layer, group, kind) reads: its own, or the earlier slot it reuses. Throws
    /// kvcar::error when any argument is out of range.
    int slot(int layer, int group, kv_kind kind) const {
        logical_.check(layer, group, kind, "reuse_map");
        return stored_of_logical_[std::size_t(logical_.logical_index(layer, group, kind))];
    }
    /// Whether (layer, group, kind) writes the slot it reads (false for a reused stream).
    bool owns(int layer, int group, kv_kind kind) const {
        return owner(slot(layer, group, kind)) == slot_owner{layer, group, kind};
    }
    /// The (layer, group, kind) that writes stored slot `slot`; throws kvcar::error unless 0 <=
    /// slot < n_slots().
    slot_owner owner(int slot) const {
        if (slot < 0 || slot >= n_slots()) {
            throw error("kvcar: reuse_map: slot " + std::to_string(slot) + " out of range [0, " +
                        std::to_string(n_slots()) + ")");
        }
        return owners_[std::size_t(slot)];
    }

    /// Flat [layer][group][kind] -> stored slot, the table kernels index.
    std::vector<std::int32_t> slot_table() const {
        return std::vector<std::int32_t>(stored_of_logical_.begin(), stored_of_logical_.end());
    }

    /// The entries this map was built from, as given.
    const std::vector<reuse_entry>& reuse(kv_kind kind) const { return reuse_[std::size_t(kind)]; }
    /// How many (layer, group) streams of `kind` are not stored.
    int reused_count(kv_kind kind) const { return int(reuse_[std::size_t(kind)].size()); }
    /// 2 * n_layers * groups_per_layer: the slots a dense layout would store.
    int logical_slot_count() const { return logical_.logical_slot_count(); }
    /// Stored slots / logical slots: with equal codecs, the cache's bytes shrink by exactly this.
    double stored_fraction() const { return double(n_slots()) / double(logical_slot_count()); }

private:
    static kv_geometry checked(kv_geometry geometry, int heads_per_group) {
        validate(geometry);
        require(heads_per_group > 0 && geometry.n_kv_heads % heads_per_group == 0,
                "reuse_map: heads_per_group " + std::to_string(heads_per_group) +
                    " must be positive and divide n_kv_heads " +
                    std::to_string(geometry.n_kv_heads));
        return geometry;
    }
    static std::string at(int layer, int group) {
        // Built by appending: `"(" + std::string&&` trips a false -Wrestrict in GCC 12.
        std::string s(1, '(');
        s += std::to_string(layer);
        s += ',';
        s += std::to_string(group);
        s += ')';
        return s;
    }
    std::string prefix(kv_kind kind) const {
        return std::string("reuse_map: ") + to_string(kind) + " reuse";
    }

    // Range, duplicate and self-reference checks; fills source for this kind.
    void record_sources(kv_kind kind, std::vector<int>& source) const {
        const auto& entries = reuse_[std::size_t(kind)];
        const int n_layers = logical_.geometry().n_layers;
        const int n_groups = logical_.groups_per_layer();
        std::vector<int> listed_at(std::size_t(n_layers * n_groups), -1);
        for (std::size_t e = 0; e < entries.size(); ++e) {
            const reuse_entry& r = entries[e];
            const std::string entry = prefix(kind) + " entry " + std::to_string(e) + " ";
            auto in_range = [&](int value, int end, const char* what) {
                require(value >= 0 && value < end,
                        entry + "has " + what + " " + std::to_string(value) + " out of range [0, " +
                            std::to_string(end) + ")");
            };
            in_range(r.layer, n_layers, "layer");
            in_range(r.group, n_groups, "group");
            in_range(r.source_layer, n_layers, "source_layer");
            in_range(r.source_group, n_groups, "source_group");
            int& first = listed_at[std::size_t(r.layer * n_groups + r.group)];
            require(first < 0, prefix(kind) + " lists " + at(r.layer, r.group) +
                                   " twice (entries " + std::to_string(first) + " and " +
                                   std::to_string(e) + ")");
            first = int(e);
            require(r.layer != r.source_layer || r.group != r.source_group,
                    entry + "maps " + at(r.layer, r.group) + " to itself");
            source[std::size_t(logical_.logical_index(r.layer, r.group, kind))] =
                logical_.logical_index(r.source_layer, r.source_group, kind);
        }
    }

    // Following sources from any entry must end at a stored slot; report the first cycle met.
    void check_cycles(kv_kind kind, const std::vector<int>& source) const {
        for (const reuse_entry& r : reuse_[std::size_t(kind)]) {
            std::vector<int> path{logical_.logical_index(r.layer, r.group, kind)};
            // A chain without a cycle visits each (layer, group) at most once.
            while (source[std::size_t(path.back())] >= 0) {
                const int next = source[std::size_t(path.back())];
                for (std::size_t i = 0; i < path.size(); ++i) {
                    if (path[i] != next) continue;
                    std::string cycle;
                    for (std::size_t j = i; j < path.size(); ++j) {
                        const slot_owner o = logical_.logical_owner(path[j]);
                        cycle += at(o.layer, o.group) + " -> ";
                    }
                    const slot_owner o = logical_.logical_owner(next);
                    throw error("kvcar: " + prefix(kind) + " has a cycle: " + cycle +
                                at(o.layer, o.group));
                }
                path.push_back(next);
            }
        }
    }

    // Point each reused logical slot at its chain's final stored slot, which must be earlier.
    void resolve(kv_kind kind, const std::vector<int>& source) {
        for (const reuse_entry& r : reuse_[std::size_t(kind)]) {
            const int index = logical_.logical_index(r.layer, r.group, kind);
            int final_index = index;
            while (source[std::size_t(final_index)] >= 0) {
                final_index = source[std::size_t(final_index)];
            }
            const slot_owner target = logical_.logical_owner(final_index);
            if (target.layer >= r.layer) {
                const bool chained = final_index != source[std::size_t(index)];
                throw error("kvcar: " + prefix(kind) + " of " + at(r.layer, r.group) +
                            (chained ? " resolves through a chain to " : " reads ") +
                            at(target.layer, target.group) + ", " +
                            (target.layer == r.layer ? "the same layer"
                                                     : "a later layer (forward reference)") +
                            ": only earlier stored slots can be reused");
            }
            stored_of_logical_[std::size_t(index)] = stored_of_logical_[std::size_t(final_index)];
        }
    }

    dense_layout logical_;
    std::vector<reuse_entry> reuse_[kv_kind_count];
    std::vector<int> stored_of_logical_;  // logical index -> stored slot
    std::vector<slot_owner> owners_;      // stored slot -> who writes it
};

}  // namespace kvcar
