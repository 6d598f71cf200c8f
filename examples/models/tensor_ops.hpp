// examples/models/tensor_ops.hpp — the handful of CPU kernels a GPT-2 or Llama forward needs.
//
// Plain loops, float accumulation, no -ffast-math: results depend only on the order written
// here, so a run is reproducible bit for bit and close to PyTorch's float32 (to ~1e-6 relative).
// Only the matmul is threaded, over output rows (kvcar/parallel.hpp's pool), because it is where
// >95% of the time goes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/parallel.hpp"

namespace kvcar::examples {

/// The library's rule for a thread count (kvcar/parallel.hpp), under the name the tools use.
using kvcar::resolve_threads;

/// Dot product of two float vectors with eight independent partial sums: the compiler can keep
/// them in one or two SIMD registers without reassociating anything (which -ffast-math would).
inline float dot(const float* a, const float* b, int n) {
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
    }
    for (; i < n; ++i) part[i % 8] += a[i] * b[i];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

/// out[t][o] = Σ_i in[t][i] · w[o][i] + bias[o], for n tokens. `w` is [out_dim][in_dim], the
/// layout of torch.nn.Linear (so one weight row is contiguous); `bias` may be empty.
///
/// Threads split the *output rows*: each thread streams its own slice of `w` once and reuses it
/// for all n tokens while the activations (n · in_dim floats) stay in cache. For the LM head
/// (50k × d_model) this is the whole cost of a forward pass.
inline void matmul(std::span<float> out, std::span<const float> in, std::span<const float> w,
                   std::span<const float> bias, int n, int in_dim, int out_dim, int threads) {
    require(in.size() == std::size_t(n) * std::size_t(in_dim) &&
                w.size() == std::size_t(out_dim) * std::size_t(in_dim) &&
                out.size() == std::size_t(n) * std::size_t(out_dim) &&
                (bias.empty() || bias.size() == std::size_t(out_dim)),
            "matmul: shapes disagree (n " + std::to_string(n) + ", in " + std::to_string(in_dim) +
                ", out " + std::to_string(out_dim) + ")");
    const double work = double(n) * double(in_dim) * double(out_dim);
    parallel_for(out_dim, threads, work, [&](int begin, int end) {
        for (int o = begin; o < end; ++o) {
            const float* row = w.data() + std::size_t(o) * std::size_t(in_dim);
            const float b = bias.empty() ? 0.0f : bias[std::size_t(o)];
            for (int t = 0; t < n; ++t) {
                out[std::size_t(t) * std::size_t(out_dim) + std::size_t(o)] =
                    dot(in.data() + std::size_t(t) * std::size_t(in_dim), row, in_dim) + b;
            }
        }
    });
}

/// LayerNorm over each of n rows of `dim`: (x - mean) / sqrt(var + eps) · weight + bias, with
/// the biased variance, as torch.nn.LayerNorm.
inline void layernorm(std::span<float> out, std::span<const float> in, std::span<const float> weight,
                      std::span<const float> bias, int n, int dim, float eps) {
    for (int t = 0; t < n; ++t) {
        const float* x = in.data() + std::size_t(t) * std::size_t(dim);
        float* y = out.data() + std::size_t(t) * std::size_t(dim);
        float mean = 0.0f;
        for (int i = 0; i < dim; ++i) mean += x[i];
        mean /= float(dim);
        float var = 0.0f;
        for (int i = 0; i < dim; ++i) var += (x[i] - mean) * (x[i] - mean);
        var /= float(dim);
        const float inv_std = 1.0f / std::sqrt(var + eps);
        for (int i = 0; i < dim; ++i) {
            y[i] = (x[i] - mean) * inv_std * weight[std::size_t(i)] + bias[std::size_t(i)];
        }
    }
}

/// RMSNorm over each of n rows: x / sqrt(mean(x²) + eps) · weight (Llama; no mean, no bias).
inline void rmsnorm(std::span<float> out, std::span<const float> in, std::span<const float> weight,
                    int n, int dim, float eps) {
    for (int t = 0; t < n; ++t) {
        const float* x = in.data() + std::size_t(t) * std::size_t(dim);
        float* y = out.data() + std::size_t(t) * std::size_t(dim);
        float sum_sq = 0.0f;
        for (int i = 0; i < dim; ++i) sum_sq += x[i] * x[i];
        const float inv_rms = 1.0f / std::sqrt(sum_sq / float(dim) + eps);
        for (int i = 0; i < dim; ++i) y[i] = weight[std::size_t(i)] * (x[i] * inv_rms);
    }
}

/// GELU, tanh approximation (GPT-2's "gelu_new"):
/// 0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³))).
inline void gelu_tanh(std::span<float> x) {
    const float sqrt_2_over_pi = 0.7978845608028654f;
    for (float& v : x) {
        const float cube = 0.044715f * v * v * v;
        v = 0.5f * v * (1.0f + std::tanh(sqrt_2_over_pi * (v + cube)));
    }
}

/// SwiGLU's gate: gate[i] = silu(gate[i]) · up[i], silu(x) = x / (1 + e^-x).
inline void silu_mul(std::span<float> gate, std::span<const float> up) {
    for (std::size_t i = 0; i < gate.size(); ++i) {
        const float g = gate[i];
        gate[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

/// x += y, elementwise (the residual stream).
inline void add_inplace(std::span<float> x, std::span<const float> y) {
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
}

/// log softmax(logits)[target], in double: the per-token loss of perplexity is its negative.
inline double log_prob(std::span<const float> logits, int target) {
    double max_logit = -INFINITY;
    for (float v : logits) max_logit = std::max(max_logit, double(v));
    double sum = 0.0;
    for (float v : logits) sum += std::exp(double(v) - max_logit);
    return double(logits[std::size_t(target)]) - max_logit - std::log(sum);
}

/// KL(P || Q) in nats, P = softmax(base_logits), Q = softmax(logits), in double:
/// Σ_j p_j (log p_j − log q_j) with log p = base − max − log Σ exp(base − max), likewise q.
/// This is what a compressed cache costs a next-token distribution, taking the fp16 cache's as P
/// (llama.cpp's --kl-divergence); 0 exactly when the two rows are equal.
inline double kl_divergence(std::span<const float> base_logits, std::span<const float> logits) {
    const auto log_normalizer = [](std::span<const float> row) {
        double max_logit = -INFINITY;
        for (float v : row) max_logit = std::max(max_logit, double(v));
        double sum = 0.0;
        for (float v : row) sum += std::exp(double(v) - max_logit);
        return max_logit + std::log(sum);
    };
    const double zp = log_normalizer(base_logits), zq = log_normalizer(logits);
    double kl = 0.0;
    for (std::size_t j = 0; j < base_logits.size(); ++j) {
        const double lp = double(base_logits[j]) - zp, lq = double(logits[j]) - zq;
        kl += std::exp(lp) * (lp - lq);
    }
    return std::max(kl, 0.0);  // rounding can leave -1e-17 where the rows are equal
}

/// Index of the largest logit (the greedy token); the first one on ties. NaNs are never the
/// largest (a row of NaNs gives 0).
///
/// Two passes, because both vectorize: the maximum (four running maxima, `v > m ? v : m` is
/// one SIMD max instruction), then the first position that holds it. std::max_element carries
/// the index through every comparison and runs one element at a time. kvcar-serve samples a row
/// per running sequence every step: 256 rows of a 32000-token vocabulary took about 25 ms with
/// std::max_element on one core of the development machine (g++ 12 -O2), about 3 ms here, the
/// same ids.
inline int argmax(std::span<const float> logits) {
    const float* x = logits.data();
    const std::size_t n = logits.size();
    float m0 = -INFINITY, m1 = -INFINITY, m2 = -INFINITY, m3 = -INFINITY;
    std::size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        m0 = x[i] > m0 ? x[i] : m0;
        m1 = x[i + 1] > m1 ? x[i + 1] : m1;
        m2 = x[i + 2] > m2 ? x[i + 2] : m2;
        m3 = x[i + 3] > m3 ? x[i + 3] : m3;
    }
    for (; i < n; ++i) m0 = x[i] > m0 ? x[i] : m0;
    const float m01 = m1 > m0 ? m1 : m0, m23 = m3 > m2 ? m3 : m2;
    const float m = m23 > m01 ? m23 : m01;
    for (std::size_t j = 0; j < n; ++j)
        if (x[j] == m) return int(j);
    return 0;  // empty, or every element NaN
}

/// Per-token statistics of a perplexity run: the negative log-likelihoods, and (when a base
/// distribution is given) the KL divergence from it and whether the greedy token agrees.
struct token_stats {
    std::vector<double> nll;  ///< −log p(target), one per scored token
    std::vector<double> kl;   ///< KL(base || this) per scored token, when measured
    long long same_top = 0;   ///< scored tokens whose argmax equals the base's

    double mean_nll() const { return mean(nll); }
    double perplexity() const { return std::exp(mean_nll()); }
    /// Standard error of the perplexity by the delta method: PPL · s / √n, s the sample standard
    /// deviation of the per-token NLL (tokens treated as independent, as llama.cpp does).
    double perplexity_stderr() const {
        const std::size_t n = nll.size();
        if (n < 2) return NAN;
        const double m = mean_nll();
        double ss = 0.0;
        for (double x : nll) ss += (x - m) * (x - m);
        return perplexity() * std::sqrt(ss / double(n - 1)) / std::sqrt(double(n));
    }
    /// The q-quantile (0..1) of the KL values, nearest rank; NaN without any.
    double kl_quantile(double q) const {
        if (kl.empty()) return NAN;
        std::vector<double> v = kl;
        const std::size_t k = std::min(v.size() - 1, std::size_t(std::ceil(q * double(v.size()))) -
                                                         (q > 0.0 ? 1 : 0));
        std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(k), v.end());
        return v[k];
    }
    double mean_kl() const { return kl.empty() ? NAN : mean(kl); }

private:
    static double mean(const std::vector<double>& v) {
        double s = 0.0;
        for (double x : v) s += x;
        return v.empty() ? NAN : s / double(v.size());
    }
};

}  // namespace kvcar::examples
