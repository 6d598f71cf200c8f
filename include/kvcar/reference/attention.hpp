// kvcar/reference/attention.hpp — the host oracle that kvcar's attention kernels are tested
// against: plain scaled-dot-product attention over whatever a KV cache decodes to.
//
// It reads the cache only through `read` (decoded floats), so it is correct for every codec,
// layout and storage by construction, and a kernel that reads latents directly (in latent
// space, page by page, split-KV) must agree with it up to the codec's own float rounding.
// Clarity wins over speed here: one pass, double accumulators, no tiling.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "kvcar/attention_params.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/rope.hpp"

namespace kvcar {

namespace detail {

inline void check_layer_and_heads(const kv_geometry& g, int layer, const attention_params& p,
                                  const std::string& who) {
    require(layer >= 0 && layer < g.n_layers,
            who + ": layer " + std::to_string(layer) + " is out of range [0, " +
                std::to_string(g.n_layers) + ")");
    require(p.n_heads > 0 && p.n_heads % g.n_kv_heads == 0,
            who + ": n_heads " + std::to_string(p.n_heads) +
                " is not a positive multiple of the cache's n_kv_heads " +
                std::to_string(g.n_kv_heads));
}

template <readable_kv_cache Cache>
void attention_impl(const Cache& cache, int seq, int layer, const attention_params& p,
                    std::span<const float> q, int q_position, std::span<float> out,
                    const std::string& who) {
    const kv_geometry g = cache.geometry();
    const int head_dim = g.head_dim;
    const int token_width = g.token_width();

    check_layer_and_heads(g, layer, p, who);
    require(std::isfinite(p.scale) && p.scale >= 0.0f,
            who + ": scale " + std::to_string(p.scale) +
                " must be finite and not negative (0 picks 1/sqrt(head_dim))");
    if (p.rope == rope_mode::on_read) {
        try {
            validate(p.rope_cfg, head_dim);
        } catch (const error& e) {
            // Re-badge "kvcar: rope: <problem>" as this call's error.
            const std::string what = e.what();
            const std::size_t at = what.find("rope: ");
            throw error("kvcar: " + who + ": rope_cfg: " +
                        (at == std::string::npos ? what : what.substr(at + 6)));
        }
    }
    const std::size_t q_width = std::size_t(p.n_heads) * std::size_t(head_dim);
    require(!q.empty() && q.size() % q_width == 0,
            who + ": q has " + std::to_string(q.size()) +
                " floats, not a positive multiple of n_heads * head_dim = " +
                std::to_string(q_width));
    require(out.size() == q.size(), who + ": out has " + std::to_string(out.size()) +
                                        " floats but q has " + std::to_string(q.size()));
    const int n_q = int(q.size() / q_width);

    const int length = cache.length(seq, layer);
    require(q_position >= 0,
            who + ": q_position " + std::to_string(q_position) + " is negative");
    require(std::size_t(q_position) + std::size_t(n_q) <= std::size_t(length),
            who + ": queries at positions " + std::to_string(q_position) + ".." +
                std::to_string(q_position + n_q - 1) + " go past the " + std::to_string(length) +
                " tokens cached for sequence " + std::to_string(seq) + ", layer " +
                std::to_string(layer));

    // Causal queries never look past the last one's position, so only that prefix is read.
    const int kv_len = p.causal ? q_position + n_q : length;
    std::vector<float> keys(std::size_t(kv_len) * std::size_t(token_width));
    std::vector<float> values(keys.size());
    cache.read(seq, layer, kv_kind::key, 0, kv_len, std::span<float>(keys));
    cache.read(seq, layer, kv_kind::value, 0, kv_len, std::span<float>(values));

    std::vector<float> queries(q.begin(), q.end());
    if (p.rope == rope_mode::on_read) {
        // Token t of the cache sits at position t: the cache holds the sequence from its start.
        for (int t = 0; t < kv_len; ++t)
            for (int h = 0; h < g.n_kv_heads; ++h)
                apply_rope(&keys[std::size_t(t) * token_width + std::size_t(h) * head_dim],
                           head_dim, t, p.rope_cfg);
        for (int i = 0; i < n_q; ++i)
            for (int h = 0; h < p.n_heads; ++h)
                apply_rope(&queries[std::size_t(i) * q_width + std::size_t(h) * head_dim],
                           head_dim, q_position + i, p.rope_cfg);
    }

    // Scores, softmax and the weighted sum run in double, with the maximum subtracted before
    // exp, so the oracle's own rounding (~1e-15 relative) is far below any float kernel's and
    // a mismatch is the kernel's; the result is rounded to float once, at the end.
    const double scale = p.scale == 0.0f ? 1.0 / std::sqrt(double(head_dim)) : double(p.scale);
    const int heads_per_kv = p.n_heads / g.n_kv_heads;
    std::vector<double> scores(static_cast<std::size_t>(kv_len));
    std::vector<double> acc(static_cast<std::size_t>(head_dim));
    std::vector<float> result(q.size());
    for (int i = 0; i < n_q; ++i) {
        const int visible = p.causal ? q_position + i + 1 : length;
        for (int h = 0; h < p.n_heads; ++h) {
            const std::size_t kv_offset = std::size_t(h / heads_per_kv) * head_dim;
            const float* qh = &queries[std::size_t(i) * q_width + std::size_t(h) * head_dim];
            double max_score = -INFINITY;
            for (int t = 0; t < visible; ++t) {
                const float* k = &keys[std::size_t(t) * token_width + kv_offset];
                double s = 0.0;
                for (int d = 0; d < head_dim; ++d) s += double(qh[d]) * double(k[d]);
                scores[std::size_t(t)] = s * scale;
                if (scores[std::size_t(t)] > max_score) max_score = scores[std::size_t(t)];
            }
            double sum = 0.0;
            for (double& a : acc) a = 0.0;
            for (int t = 0; t < visible; ++t) {
                const double w = std::exp(scores[std::size_t(t)] - max_score);
                sum += w;
                const float* v = &values[std::size_t(t) * token_width + kv_offset];
                for (int d = 0; d < head_dim; ++d) acc[std::size_t(d)] += w * double(v[d]);
            }
            float* o = &result[std::size_t(i) * q_width + std::size_t(h) * head_dim];
            for (int d = 0; d < head_dim; ++d) o[d] = float(acc[std::size_t(d)] / sum);
        }
    }
    // Written only now, so a throw from the cache's read leaves `out` as it was.
    for (std::size_t j = 0; j < result.size(); ++j) out[j] = result[j];
}

}  // namespace detail

/// Attention of `n_q` query tokens of sequence `seq` over the cached K/V of `layer`.
///
/// q, out: [n_q][n_heads][head_dim]; the queries sit at positions q_position .. q_position +
/// n_q - 1, which must already be cached (append this step's K/V first, as a model does).
/// Causal: query i sees tokens [0, q_position + i]; otherwise all length(seq, layer) tokens.
/// GQA/MQA: query head h reads KV head h / (n_heads / n_kv_heads).
/// Each needed K and V range is read once through `cache.read`; softmax runs in double.
template <readable_kv_cache Cache>
void reference_attention(const Cache& cache, int seq, int layer, const attention_params& p,
                         std::span<const float> q, int q_position, std::span<float> out) {
    detail::attention_impl(cache, seq, layer, p, q, q_position, out, "reference_attention");
}

/// Decode step: one query token (q, out: [n_heads][head_dim]) at the last cached position,
/// length(seq, layer) - 1, attending to every cached token.
template <readable_kv_cache Cache>
void reference_decode_attention(const Cache& cache, int seq, int layer,
                                const attention_params& p, std::span<const float> q,
                                std::span<float> out) {
    const std::string who = "reference_decode_attention";
    const kv_geometry g = cache.geometry();
    detail::check_layer_and_heads(g, layer, p, who);
    const std::size_t q_width = std::size_t(p.n_heads) * std::size_t(g.head_dim);
    require(q.size() == q_width,
            who + ": q has " + std::to_string(q.size()) +
                " floats but one token of n_heads * head_dim is " + std::to_string(q_width));
    const int length = cache.length(seq, layer);
    require(length > 0, who + ": sequence " + std::to_string(seq) +
                            " has no cached tokens in layer " + std::to_string(layer));
    detail::attention_impl(cache, seq, layer, p, q, length - 1, out, who);
}

}  // namespace kvcar
