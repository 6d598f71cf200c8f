// examples/models/kv_collect.hpp — the K and V a model caches, per layer, over a calibration
// text: what kvcar-calibrate fits its codecs and picks its reused heads on.
//
// The model runs over the text in non-overlapping windows of `ctx` tokens, each a fresh sequence
// of an uncompressed float cache (kv_cache<identity_codec<float>>, which stores every value
// exactly); after each window every layer's K and V are read back from the cache. So the rows
// are exactly what a compressed cache would be asked to store in the same position:
//   - Llama keys come as the model caches them: after RoPE by default, before it when the model
//     runs with cached_keys::pre_rope (a codec fitted to those must be used with --keys pre);
//   - positions restart at 0 in every window, as they do in kvcar-perplexity's windows.
// Only the last position's logits are computed (the LM head is most of a forward pass of these
// small models, and calibration needs none of them).
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kvcar/codec/identity.hpp"
#include "kvcar/common.hpp"
#include "kvcar/kv_cache.hpp"
#include "kvcar/layout/dense.hpp"
#include "kvcar/storage/contiguous.hpp"

#include "examples/models/model.hpp"
#include "examples/models/model_common.hpp"

namespace kvcar::examples {

/// Every layer's K and V over the same tokens, as the model caches them.
struct kv_collection {
    kv_geometry geometry;
    cached_keys keys_form = cached_keys::post_rope;  ///< what the K rows are (Llama)
    std::size_t tokens = 0;                           ///< rows per layer
    /// [layer] -> tokens x token_width floats, row-major, in text order.
    std::vector<std::vector<float>> keys, values;

    const std::vector<float>& layer(int l, kv_kind kind) const {
        require(l >= 0 && l < geometry.n_layers,
                "kv_collection: layer " + std::to_string(l) + " out of range [0, " +
                    std::to_string(geometry.n_layers) + ")");
        return (kind == kv_kind::key ? keys : values)[std::size_t(l)];
    }

    /// The rows of one group (heads [group·heads_per_group, (group+1)·heads_per_group) of layer
    /// `l`): tokens x (heads_per_group · head_dim) floats, what a codec of that slot encodes.
    std::vector<float> group_rows(int l, int group, int heads_per_group, kv_kind kind) const {
        require(heads_per_group > 0 && geometry.n_kv_heads % heads_per_group == 0,
                "kv_collection: heads_per_group " + std::to_string(heads_per_group) +
                    " must be positive and divide n_kv_heads " +
                    std::to_string(geometry.n_kv_heads));
        const int groups = geometry.n_kv_heads / heads_per_group;
        require(group >= 0 && group < groups, "kv_collection: group " + std::to_string(group) +
                                                  " out of range [0, " + std::to_string(groups) +
                                                  ")");
        const std::vector<float>& all = layer(l, kind);
        const std::size_t width = std::size_t(geometry.token_width());
        const std::size_t gw = std::size_t(heads_per_group) * std::size_t(geometry.head_dim);
        std::vector<float> out(tokens * gw);
        for (std::size_t t = 0; t < tokens; ++t) {
            const float* src = &all[t * width + std::size_t(group) * gw];
            std::copy(src, src + gw, &out[t * gw]);
        }
        return out;
    }
};

struct kv_collect_params {
    int ctx = 512;               ///< window length (at most the model's context)
    std::size_t max_tokens = 0;  ///< use only the first max_tokens ids (0: all)
    /// Called after each window with (tokens collected, tokens to collect), e.g. for progress.
    std::function<void(std::size_t, std::size_t)> on_window;
};

/// Runs `model` over `ids` in windows of params.ctx tokens and returns every layer's K and V.
/// A last window shorter than 2 tokens is dropped (it would be a single-token sequence, the
/// least typical attention input there is).
inline kv_collection collect_kv(const language_model& model, std::span<const int> ids,
                                const kv_collect_params& params) {
    const std::string who = "collect_kv";
    require(params.ctx >= 2 && params.ctx <= model.max_positions(),
            who + ": ctx " + std::to_string(params.ctx) + " must be in [2, the model's context " +
                std::to_string(model.max_positions()) + "]");
    std::size_t n = ids.size();
    if (params.max_tokens > 0) n = std::min(n, params.max_tokens);
    const std::size_t ctx = std::size_t(params.ctx);
    const std::size_t usable = n - (n % ctx == 1 ? 1 : 0);  // drop a 1-token tail window
    require(usable >= 2, who + ": the text has " + std::to_string(n) +
                             " tokens; collecting K/V needs at least 2");

    const kv_geometry g = model.cache_geometry();
    const std::size_t width = std::size_t(g.token_width());
    kv_collection out;
    out.geometry = g;
    out.keys_form = model.options().keys;
    out.keys.assign(std::size_t(g.n_layers), {});
    out.values.assign(std::size_t(g.n_layers), {});
    for (int l = 0; l < g.n_layers; ++l) {
        out.keys[std::size_t(l)].reserve(usable * width);
        out.values[std::size_t(l)].reserve(usable * width);
    }

    kv_cache<identity_codec<float>> cache(dense_layout(g), identity_codec<float>{g.head_dim},
                                          {1, params.ctx});
    std::vector<float> rows;
    for (std::size_t begin = 0; begin < usable; begin += ctx) {
        const std::size_t len = std::min(ctx, usable - begin);
        const int seq = cache.add_sequence();
        (void)model.forward(cache, seq, ids.subspan(begin, len), logits_for::last);
        rows.resize(len * width);
        for (int l = 0; l < g.n_layers; ++l) {
            for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                cache.read(seq, l, kind, 0, int(len), rows);
                auto& dst = (kind == kv_kind::key ? out.keys : out.values)[std::size_t(l)];
                dst.insert(dst.end(), rows.begin(), rows.end());
            }
        }
        cache.remove_sequence(seq);
        out.tokens += len;
        if (params.on_window) params.on_window(out.tokens, usable);
    }
    return out;
}

}  // namespace kvcar::examples
