// kvcar/calib/reuse_selection.hpp — picks which K/V heads reuse the previous layer's (host only):
// the selection step of the KV-CAR paper's Algorithm 2.
//
// On calibration text, the mean L1 distance between head h of layer l and head h of layer l−1
// says how much attention would change if layer l read layer l−1's cached head instead of its
// own. Heads are then chosen by a threshold on that distance, by a count (closest first), or
// jointly over K and V until a byte budget is met. K and V are measured and chosen separately
// (the paper reuses 19 K heads and 25 V heads independently).
//
// Normalisation: K and V (and different layers) live at different scales, so a raw distance of
// 0.1 means little by itself. Each distance is also reported divided by the mean |x| of layer l
// (over all its heads and tokens), a relative error that compares across K, V and layers; the
// selection functions use it unless told otherwise.
//
// Chains: if layer 3 reuses layer 2 and layer 2 reuses layer 1, layer 3 actually reads layer 1
// (reuse_map resolves chains), but the distance was measured to layer 2 only; the error of a
// chain is not the distance of its last link. Pass allow_chains = false to forbid selecting
// both (l, h) and (l−1, h), so that every reused head reads exactly the layer it was measured
// against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/layout/reuse_map.hpp"

namespace kvcar::calib {

/// Distances between each group (heads_per_group consecutive KV heads; 1 = per head, as in the
/// paper) of layer l and the same group of layer l−1, for K or for V.
struct reuse_distance_table {
    kv_geometry geometry;         ///< the model geometry the distances were measured on
    int heads_per_group = 1;      ///< consecutive KV heads per group (1 = per head)
    kv_kind kind = kv_kind::key;  ///< whether these are K or V distances
    std::size_t tokens = 0;       ///< calibration tokens averaged over
    /// [layer][group]: mean over tokens and elements of |x_l − x_{l−1}|; +inf for layer 0.
    std::vector<double> l1;
    /// [layer]: mean |x| over the tokens and elements of layer l.
    std::vector<double> scale;

    /// Groups per layer: n_kv_heads / heads_per_group.
    int groups_per_layer() const { return geometry.n_kv_heads / heads_per_group; }

    /// The raw mean L1 distance of (layer, group) to (layer − 1, group).
    double distance(int layer, int group) const {
        check(layer, group);
        return l1[std::size_t(layer) * std::size_t(groups_per_layer()) + std::size_t(group)];
    }
    /// distance / mean |x| of the layer; 0 for identical heads even in an all-zero layer.
    double normalized(int layer, int group) const {
        const double d = distance(layer, group);
        const double s = scale[std::size_t(layer)];
        if (d == 0.0) return 0.0;
        return s > 0.0 ? d / s : std::numeric_limits<double>::infinity();
    }

private:
    void check(int layer, int group) const {
        if (layer < 0 || layer >= geometry.n_layers || group < 0 || group >= groups_per_layer())
            throw error("kvcar: reuse_distance_table: (" + std::to_string(layer) + ", " +
                        std::to_string(group) +
                        ") out of range: " + std::to_string(geometry.n_layers) + " layers x " +
                        std::to_string(groups_per_layer()) + " groups");
    }
};

/// Measures the table from per-layer activations: `layers[l]` points to `n_tokens` rows of
/// `geometry.token_width()` floats (layer l's K, or V, for the same tokens in every layer).
inline reuse_distance_table reuse_distances(std::span<const float* const> layers,
                                            std::size_t n_tokens, kv_geometry geometry,
                                            kv_kind kind, int heads_per_group = 1) {
    validate(geometry);
    require(heads_per_group > 0 && geometry.n_kv_heads % heads_per_group == 0,
            "reuse_distances: heads_per_group " + std::to_string(heads_per_group) +
                " must be positive and divide n_kv_heads " + std::to_string(geometry.n_kv_heads));
    require(layers.size() == std::size_t(geometry.n_layers),
            "reuse_distances: got activations of " + std::to_string(layers.size()) +
                " layers for a model of " + std::to_string(geometry.n_layers));
    require(n_tokens > 0, "reuse_distances: needs at least one token");
    for (std::size_t l = 0; l < layers.size(); ++l)
        require(layers[l] != nullptr,
                "reuse_distances: activations of layer " + std::to_string(l) + " are null");

    reuse_distance_table t;
    t.geometry = geometry;
    t.heads_per_group = heads_per_group;
    t.kind = kind;
    t.tokens = n_tokens;
    const std::size_t L = std::size_t(geometry.n_layers), G = std::size_t(t.groups_per_layer());
    const std::size_t W = std::size_t(geometry.token_width());
    const std::size_t group_width = std::size_t(heads_per_group) * std::size_t(geometry.head_dim);
    t.l1.assign(L * G, std::numeric_limits<double>::infinity());
    t.scale.assign(L, 0.0);
    std::vector<double> sum(G);
    for (std::size_t l = 0; l < L; ++l) {
        const float* x = layers[l];
        double abs_sum = 0.0;
        for (std::size_t i = 0; i < n_tokens * W; ++i) {
            require(std::isfinite(x[i]),
                    "reuse_distances: layer " + std::to_string(l) + " " + to_string(kind) +
                        " activations are not finite (token " + std::to_string(i / W) + ")");
            abs_sum += std::fabs(double(x[i]));
        }
        t.scale[l] = abs_sum / double(n_tokens * W);
        if (l == 0) continue;
        const float* prev = layers[l - 1];
        std::fill(sum.begin(), sum.end(), 0.0);
        for (std::size_t tok = 0; tok < n_tokens; ++tok)
            for (std::size_t i = 0; i < W; ++i)
                sum[i / group_width] +=
                    std::fabs(double(x[tok * W + i]) - double(prev[tok * W + i]));
        for (std::size_t g = 0; g < G; ++g)
            t.l1[l * G + g] = sum[g] / double(n_tokens * group_width);
    }
    return t;
}

/// The same from one vector per layer, each `n_tokens * token_width` floats.
inline reuse_distance_table reuse_distances(const std::vector<std::vector<float>>& layers,
                                            kv_geometry geometry, kv_kind kind,
                                            int heads_per_group = 1) {
    validate(geometry);
    require(!layers.empty() && !layers[0].empty(), "reuse_distances: no activations");
    const std::size_t W = std::size_t(geometry.token_width());
    const std::size_t n_tokens = layers[0].size() / W;
    std::vector<const float*> pointers;
    for (std::size_t l = 0; l < layers.size(); ++l) {
        require(layers[l].size() == layers[0].size() && layers[l].size() % W == 0,
                "reuse_distances: layer " + std::to_string(l) + " has " +
                    std::to_string(layers[l].size()) +
                    " floats; every layer needs the same "
                    "whole number of tokens of width " +
                    std::to_string(W) + " (layer 0 has " + std::to_string(layers[0].size()) + ")");
        pointers.push_back(layers[l].data());
    }
    return reuse_distances(pointers, n_tokens, geometry, kind, heads_per_group);
}

/// How the select_reuse_* functions rank and combine candidate (layer, group)s.
struct reuse_selection_params {
    bool normalized = true;    ///< rank by distance / mean |x| of the layer (else the raw L1)
    bool allow_chains = true;  ///< may (l, g) and (l−1, g) both be reused (see the file comment)
};

/// A joint K and V choice.
struct reuse_selection {
    std::vector<reuse_entry> key;    ///< reused K groups, as reuse_map takes them
    std::vector<reuse_entry> value;  ///< reused V groups, as reuse_map takes them
    std::size_t bytes_saved = 0;     ///< bytes per token the reuse saves, all layers
};

namespace detail {

struct reuse_candidate {
    double distance;
    kv_kind kind;
    int layer, group;
};

/// Layers 1..n−1 of one table, closest first (ties in (kind, layer, group) order).
inline void add_candidates(const reuse_distance_table& t, bool normalized,
                           std::vector<reuse_candidate>& out) {
    for (int l = 1; l < t.geometry.n_layers; ++l)
        for (int g = 0; g < t.groups_per_layer(); ++g) {
            const double d = normalized ? t.normalized(l, g) : t.distance(l, g);
            out.push_back(
                {std::isnan(d) ? std::numeric_limits<double>::infinity() : d, t.kind, l, g});
        }
}

inline void sort_candidates(std::vector<reuse_candidate>& c) {
    std::stable_sort(c.begin(), c.end(), [](const reuse_candidate& a, const reuse_candidate& b) {
        if (a.distance != b.distance) return a.distance < b.distance;
        if (a.kind != b.kind) return a.kind < b.kind;
        if (a.layer != b.layer) return a.layer < b.layer;
        return a.group < b.group;
    });
}

/// Tracks what is chosen, per kind, to refuse chains when asked.
class reuse_chooser {
public:
    reuse_chooser(kv_geometry g, int groups, bool allow_chains)
        : layers_(g.n_layers),
          groups_(groups),
          allow_chains_(allow_chains),
          chosen_(std::size_t(kv_kind_count * g.n_layers * groups), 0) {}

    bool can_take(const reuse_candidate& c) const {
        if (allow_chains_) return true;
        return !(c.layer > 1 && taken(c.kind, c.layer - 1, c.group)) &&
               !(c.layer + 1 < layers_ && taken(c.kind, c.layer + 1, c.group));
    }
    void take(const reuse_candidate& c) { chosen_[index(c.kind, c.layer, c.group)] = 1; }

    /// The chosen entries of `kind` in (layer, group) order, each reading the previous layer.
    std::vector<reuse_entry> entries(kv_kind kind) const {
        std::vector<reuse_entry> e;
        for (int l = 1; l < layers_; ++l)
            for (int g = 0; g < groups_; ++g)
                if (taken(kind, l, g)) e.push_back({l, g, l - 1, g});
        return e;
    }

private:
    std::size_t index(kv_kind k, int l, int g) const {
        return (std::size_t(k) * std::size_t(layers_) + std::size_t(l)) * std::size_t(groups_) +
               std::size_t(g);
    }
    bool taken(kv_kind k, int l, int g) const { return chosen_[index(k, l, g)] != 0; }

    int layers_, groups_;
    bool allow_chains_;
    std::vector<char> chosen_;
};

inline void require_table(const reuse_distance_table& t, const char* who) {
    validate(t.geometry);
    require(t.heads_per_group > 0 && t.geometry.n_kv_heads % t.heads_per_group == 0,
            std::string(who) + ": the table's heads_per_group does not divide n_kv_heads");
    require(t.l1.size() == std::size_t(t.geometry.n_layers) * std::size_t(t.groups_per_layer()) &&
                t.scale.size() == std::size_t(t.geometry.n_layers),
            std::string(who) + ": the table's l1 or scale does not match its geometry");
}

}  // namespace detail

/// Every (layer, group) whose distance to the previous layer is at most `threshold` (normalized
/// or raw, see params). Without chains, closer candidates win a conflict.
inline std::vector<reuse_entry> select_reuse_threshold(const reuse_distance_table& table,
                                                       double threshold,
                                                       const reuse_selection_params& params = {}) {
    detail::require_table(table, "select_reuse_threshold");
    require(!std::isnan(threshold), "select_reuse_threshold: threshold is NaN");
    std::vector<detail::reuse_candidate> c;
    detail::add_candidates(table, params.normalized, c);
    detail::sort_candidates(c);
    detail::reuse_chooser chooser(table.geometry, table.groups_per_layer(), params.allow_chains);
    for (const auto& cand : c) {
        if (!(cand.distance <= threshold)) break;
        if (chooser.can_take(cand)) chooser.take(cand);
    }
    return chooser.entries(table.kind);
}

/// The `groups_to_reuse` closest (layer, group)s. Throws if fewer can be chosen.
inline std::vector<reuse_entry> select_reuse_budget(const reuse_distance_table& table,
                                                    int groups_to_reuse,
                                                    const reuse_selection_params& params = {}) {
    detail::require_table(table, "select_reuse_budget");
    require(groups_to_reuse >= 0,
            "select_reuse_budget: groups_to_reuse must not be negative (got " +
                std::to_string(groups_to_reuse) + ")");
    std::vector<detail::reuse_candidate> c;
    detail::add_candidates(table, params.normalized, c);
    detail::sort_candidates(c);
    detail::reuse_chooser chooser(table.geometry, table.groups_per_layer(), params.allow_chains);
    int taken = 0;
    for (const auto& cand : c) {
        if (taken == groups_to_reuse) break;
        if (!chooser.can_take(cand)) continue;
        chooser.take(cand);
        ++taken;
    }
    require(taken == groups_to_reuse,
            "select_reuse_budget: asked for " + std::to_string(groups_to_reuse) + " " +
                to_string(table.kind) + " groups but only " + std::to_string(taken) +
                " can be reused (layer 0 never is" + (params.allow_chains ? ")" : "; no chains)"));
    return chooser.entries(table.kind);
}

/// Chooses K and V groups jointly, closest (normalized or raw, see params) first, until at
/// least `bytes_to_save` bytes per token are saved. `record_bytes(owner)` is what the slot of
/// (layer, group, kind) would store per token (default: fp16, heads_per_group · head_dim · 2).
/// Throws if even reusing every eligible group saves less.
inline reuse_selection select_reuse_bytes(
    const reuse_distance_table& keys, const reuse_distance_table& values, std::size_t bytes_to_save,
    const std::function<std::size_t(slot_owner)>& record_bytes = {},
    const reuse_selection_params& params = {}) {
    detail::require_table(keys, "select_reuse_bytes");
    detail::require_table(values, "select_reuse_bytes");
    require(keys.kind == kv_kind::key && values.kind == kv_kind::value,
            "select_reuse_bytes: pass the K table first and the V table second");
    require(keys.geometry.n_layers == values.geometry.n_layers &&
                keys.geometry.n_kv_heads == values.geometry.n_kv_heads &&
                keys.geometry.head_dim == values.geometry.head_dim &&
                keys.heads_per_group == values.heads_per_group,
            "select_reuse_bytes: the K and V tables have different geometries or groups");
    const std::size_t fp16_group =
        std::size_t(keys.heads_per_group) * std::size_t(keys.geometry.head_dim) * 2u;
    const auto bytes_of = [&](const detail::reuse_candidate& c) {
        return record_bytes ? record_bytes(slot_owner{c.layer, c.group, c.kind}) : fp16_group;
    };
    std::vector<detail::reuse_candidate> c;
    detail::add_candidates(keys, params.normalized, c);
    detail::add_candidates(values, params.normalized, c);
    detail::sort_candidates(c);
    detail::reuse_chooser chooser(keys.geometry, keys.groups_per_layer(), params.allow_chains);
    reuse_selection s;
    for (const auto& cand : c) {
        if (s.bytes_saved >= bytes_to_save) break;
        if (!chooser.can_take(cand)) continue;
        chooser.take(cand);
        s.bytes_saved += bytes_of(cand);
    }
    require(s.bytes_saved >= bytes_to_save,
            "select_reuse_bytes: cannot save " + std::to_string(bytes_to_save) +
                " bytes per token: reusing every eligible group saves " +
                std::to_string(s.bytes_saved));
    s.key = chooser.entries(kv_kind::key);
    s.value = chooser.entries(kv_kind::value);
    return s;
}

}  // namespace kvcar::calib
