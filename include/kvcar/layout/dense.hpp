// kvcar/layout/dense.hpp — every (layer, group, K/V) stores its own slot: a plain KV cache.
//
// Slot numbering is ((layer * groups_per_layer) + group) * 2 + kind, so a layer's K and V slots
// of one group sit side by side and a layer's slots are one contiguous range. The same numbering
// is the *logical* numbering of every layout: reuse_map builds on it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"

namespace kvcar {

/// Every (layer, group, K/V) stores its own slot: the layout of a plain, uncompressed-shape KV
/// cache, and the logical numbering every other layout builds on. Throws kvcar::error for an
/// invalid geometry, a heads_per_group that does not divide n_kv_heads, or an index out of range.
class dense_layout {
public:
    /// `heads_per_group` consecutive KV heads form one group (one codec record per token):
    /// 1 = per head, `geometry.n_kv_heads` = the whole layer's token vector.
    explicit dense_layout(kv_geometry geometry, int heads_per_group = 1)
        : geometry_(geometry), heads_per_group_(heads_per_group) {
        validate(geometry);
        require(heads_per_group > 0 && geometry.n_kv_heads % heads_per_group == 0,
                "dense_layout: heads_per_group " + std::to_string(heads_per_group) +
                    " must be positive and divide n_kv_heads " +
                    std::to_string(geometry.n_kv_heads));
        groups_per_layer_ = geometry.n_kv_heads / heads_per_group;
    }

    /// The logical shape this layout covers.
    kv_geometry geometry() const { return geometry_; }
    /// Consecutive KV heads that one codec record holds.
    int heads_per_group() const { return heads_per_group_; }
    /// Groups per layer: n_kv_heads / heads_per_group.
    int groups_per_layer() const { return groups_per_layer_; }
    /// Floats per group: what every codec of this layout must take as `group_width()`.
    int group_width() const { return heads_per_group_ * geometry_.head_dim; }
    /// Stored slots: every logical slot (2 x n_layers x groups_per_layer).
    int n_slots() const { return logical_slot_count(); }
    /// (layer, group, K/V) triples: 2 * n_layers * groups_per_layer.
    int logical_slot_count() const {
        return kv_kind_count * geometry_.n_layers * groups_per_layer_;
    }

    /// The slot (layer, group, kind) reads, which here is its own logical index; throws
    /// kvcar::error when any argument is out of range.
    int slot(int layer, int group, kv_kind kind) const {
        check(layer, group, kind);
        return logical_index(layer, group, kind);
    }
    /// Whether (layer, group, kind) writes its own slot: always true here, after the same range
    /// checks as slot().
    bool owns(int layer, int group, kv_kind kind) const {
        check(layer, group, kind);
        return true;
    }
    /// The (layer, group, kind) that writes slot `slot`; throws kvcar::error unless 0 <= slot <
    /// n_slots().
    slot_owner owner(int slot) const {
        if (slot < 0 || slot >= n_slots()) {
            throw error("kvcar: dense_layout: slot " + std::to_string(slot) + " out of range [0, " +
                        std::to_string(n_slots()) + ")");
        }
        return logical_owner(slot);
    }

    /// Flat [layer][group][kind] -> slot, the table kernels index (here the identity).
    std::vector<std::int32_t> slot_table() const {
        std::vector<std::int32_t> table(static_cast<std::size_t>(n_slots()));
        for (std::size_t i = 0; i < table.size(); ++i) table[i] = std::int32_t(i);
        return table;
    }

    /// The logical index of (layer, group, kind), unchecked; also the index into `slot_table()`.
    int logical_index(int layer, int group, kv_kind kind) const {
        return (layer * groups_per_layer_ + group) * kv_kind_count + int(kind);
    }
    /// Inverse of `logical_index`, unchecked.
    slot_owner logical_owner(int index) const {
        const int kind = index % kv_kind_count;
        const int layer_group = index / kv_kind_count;
        return {layer_group / groups_per_layer_, layer_group % groups_per_layer_, kv_kind(kind)};
    }

    /// Throws unless (layer, group, kind) names a logical slot; `who` prefixes the message.
    /// (Checks on per-call paths throw directly rather than through require(), which would build
    /// the message string on every call, failing or not.)
    void check(int layer, int group, kv_kind kind, const char* who = "dense_layout") const {
        if (layer < 0 || layer >= geometry_.n_layers) {
            throw error("kvcar: " + std::string(who) + ": layer " + std::to_string(layer) +
                        " out of range [0, " + std::to_string(geometry_.n_layers) + ")");
        }
        if (group < 0 || group >= groups_per_layer_) {
            throw error("kvcar: " + std::string(who) + ": group " + std::to_string(group) +
                        " out of range [0, " + std::to_string(groups_per_layer_) + ")");
        }
        if (kind != kv_kind::key && kind != kv_kind::value) {
            throw error("kvcar: " + std::string(who) + ": kind " + std::to_string(int(kind)) +
                        " is neither K nor V");
        }
    }

private:
    kv_geometry geometry_;
    int heads_per_group_;
    int groups_per_layer_ = 0;
};

}  // namespace kvcar
