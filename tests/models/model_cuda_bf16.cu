// Tests for bf16 weights on the CUDA model (examples/models/cuda/bf16_linear.cuh,
// device_matrix.cuh): the bf16 GEMV kernel and the GemmEx path against a host reference (the
// bf16-rounded weights, math in double) for many shapes, odd widths and n = 1 .. 16 and more; then
// the CUDA model with bf16 weights against the same model in fp32 whose matrices were rounded to
// bf16 beforehand (so both hold the very same weight values, and only the bf16 products differ);
// and the norms and SwiGLU writing the products' bf16 inputs (fused) against the separate rounding
// pass: bit for bit the same logits.
//
// Tolerances, from the arithmetic:
//   GEMV   fp32 activations × exact bf16 weights, fp32 sums: only the order of the additions
//          differs from the reference, |err| ≤ ~in_dim · 2⁻²⁴ · Σ|a·w|; checked at 1e-5 · Σ|a·w|.
//   GemmEx the activations rounded to bf16 (relative error ≤ 2⁻⁸ each: 8 significant bits,
//          half their 2⁻⁷ spacing), so |err| ≤ 2⁻⁸ · Σ|a·w| + the sums' error; checked at
//          (2⁻⁸ + 1e-4) · Σ|a·w| (an H100 run measured up to 2.6e-3 where 2⁻⁹ had been assumed,
//          and the one-term products [n×1] reach the bound itself). Against a
//          reference that rounds the activations the same way, 1e-4 · Σ|a·w| (the tensor cores'
//          fp32 accumulation is not IEEE-exact in its rounding: a looser bound than the GEMV's).
//   model  a prefill (33 rows: GemmEx) carries that 2⁻⁸ ≈ 3.9e-3 per product through 2 layers of
//          4 products and the head: logits within 2e-2 of the largest logit (5× one product's
//          bound; an H100 run measured 4.2e-3). A model fed one token at a time runs every product through the GEMV, where
//          the two models differ only in the order of fp32 additions: 1e-4.
#include "model_cuda_fixtures.cuh"

#include "examples/models/cuda/bf16_linear.cuh"
#include "examples/models/cuda/device_matrix.cuh"

#include <kvcar/numeric.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>
#include "common/thrown.hpp"

using namespace model_cuda_test;
using kvcar::examples::cuda_model::device_matrix;
using kvcar::examples::cuda_model::linear_op;
using kvcar::examples::weight_precision;
namespace ops = kvcar::examples::cuda_ops;

namespace {

float bf16_round(float x) { return kvcar::to_float(kvcar::to_bf16(x)); }

void round_all(std::vector<float>& v) {
    for (float& x : v) x = bf16_round(x);
}

using kvcar::tests::thrown;

/// Checks out[t][o] against Σ_i a[t][i] · w[o][i] (+ bias[o]) in double, each within
/// rel · Σ_i |a · w| + 1e-30; `round_activations` rounds a to bf16 first (the GemmEx reference).
void check_product(const std::vector<float>& out, const std::vector<float>& a,
                   const std::vector<float>& w, const std::vector<float>& bias, int n, int in_dim,
                   int out_dim, bool round_activations, double rel, const std::string& what) {
    double worst = 0.0;
    for (int t = 0; t < n; ++t) {
        for (int o = 0; o < out_dim; ++o) {
            double sum = bias.empty() ? 0.0 : double(bias[std::size_t(o)]), mag = 0.0;
            for (int i = 0; i < in_dim; ++i) {
                float x = a[std::size_t(t) * in_dim + i];
                if (round_activations) x = bf16_round(x);
                const double p = double(x) * double(w[std::size_t(o) * in_dim + i]);
                sum += p;
                mag += std::fabs(p);
            }
            const double err = std::fabs(double(out[std::size_t(t) * out_dim + o]) - sum);
            worst = std::max(worst, err / (mag + 1e-30));
            if (!(err <= rel * mag + 1e-30)) {
                FAIL_CHECK(what << ": row " << t << " output " << o << ": got "
                                << out[std::size_t(t) * out_dim + o] << ", want " << sum
                                << " (|a·w| sum " << mag << ")");
                return;
            }
        }
    }
    std::printf("bf16 %-44s worst error %.2e of sum |a.w| (tolerance %.1e)\n", what.c_str(), worst,
                rel);
}

struct product_case {
    int in_dim, out_dim;
};

}  // namespace

TEST_CASE("bf16 GEMV and GemmEx match the host product of the bf16-rounded weights",
          "[models][model_cuda][bf16]") {
    kvcar::examples::cuda_model::owned_stream stream;
    ops::cublas_handle blas(stream.get());
    linear_op linear(blas.get(), stream.get());
    std::mt19937 rng(5);
    // Widths of real models (multiples of 8) and odd ones; out_dim not a multiple of the GEMV's
    // 4 rows per block, and 1.
    const std::vector<product_case> cases = {
        {256, 300}, {64, 1}, {2048, 129}, {8, 13}, {1000, 37}, {37, 64}, {100, 5}, {1, 3}};
    for (const product_case& pc : cases) {
        const int K = pc.in_dim, O = pc.out_dim;
        std::vector<float> w = normal(std::size_t(O) * K, rng, 0.0f, 0.05f);
        const device_matrix dw(w, O, K, weight_precision::bf16);
        round_all(w);  // what the device holds
        REQUIRE(dw.bytes() == std::size_t(O) * K * 2);
        const std::vector<float> bias = normal(std::size_t(O), rng, 0.0f, 0.5f);
        kvcar::gpu::device_buffer<float> dbias(bias);
        for (int n : {1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 33, 64}) {
            const std::vector<float> a = normal(std::size_t(n) * K, rng, 0.0f, 1.0f);
            kvcar::gpu::device_buffer<float> da(a), dout(std::size_t(n) * O);
            std::vector<float> out(std::size_t(n) * O);
            const std::string shape = "[" + std::to_string(n) + "x" + std::to_string(K) + "]·[" +
                                      std::to_string(O) + "x" + std::to_string(K) + "]ᵀ";
            // The dispatch the model uses: GEMV for n <= 8 and widths of 8, GemmEx otherwise.
            linear(dout.data(), da.data(), dw, n);
            KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
            dout.download(out);
            const bool gemv = n <= ops::gemv_max_rows && K % ops::gemv_vector == 0;
            if (gemv) {
                check_product(out, a, w, {}, n, K, O, false, 1e-5, "linear (GEMV) " + shape);
            } else {
                check_product(out, a, w, {}, n, K, O, true, 1e-4, "linear (GemmEx) " + shape);
                check_product(out, a, w, {}, n, K, O, false, std::ldexp(1.0, -8) + 1e-4,
                              "linear (GemmEx) vs fp32 activations " + shape);
            }
            // The GemmEx path at every n, the GEMV's rows included.
            kvcar::gpu::device_buffer<kvcar::bf16> scratch(std::size_t(n) * K);
            ops::bf16_gemm(blas.get(), stream.get(), dout.data(), da.data(), dw.bf16(),
                           scratch.data(), n, K, O);
            KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
            dout.download(out);
            check_product(out, a, w, {}, n, K, O, true, 1e-4, "bf16_gemm " + shape);
            // The GEMV with its bias, or its refusal.
            const std::string why = ops::bf16_gemv_refusal(da.data(), dw.bf16(), n, K);
            if (gemv) {
                REQUIRE(why.empty());
                ops::bf16_gemv(stream.get(), dout.data(), da.data(), dw.bf16(), dbias.data(), n,
                               K, O);
                KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
                dout.download(out);
                check_product(out, a, w, bias, n, K, O, false, 1e-5, "bf16_gemv + bias " + shape);
            } else {
                const std::string m = thrown([&] {
                    ops::bf16_gemv(stream.get(), dout.data(), da.data(), dw.bf16(), nullptr, n,
                                   K, O);
                });
                INFO(m);
                CHECK(m.find("bf16_gemv: cannot multiply: ") != std::string::npos);
                CHECK(m.find(n > ops::gemv_max_rows ? "rows (it takes 1 to 8)"
                                                    : "is not a multiple of 8") !=
                      std::string::npos);
            }
        }
    }
}

namespace {

/// `m` with every matrix the CUDA model stores as bf16 rounded to bf16 (norms, biases and GPT-2's
/// position table untouched): the fp32 model that holds what a bf16 upload of `m` holds.
ex::language_model rounded_matrices(const ex::language_model& m) {
    if (const ex::gpt2_model* g = m.as_gpt2()) {
        ex::gpt2_weights w = g->weights();
        round_all(w.token_embedding);
        round_all(w.lm_head);
        for (ex::gpt2_layer& L : w.layers) {
            for (auto* v : {&L.qkv_weight, &L.proj_weight, &L.fc_weight, &L.out_weight})
                round_all(*v);
        }
        return ex::language_model(ex::gpt2_model(g->config(), std::move(w), g->options()),
                                  m.format(), m.path() + " (bf16-rounded)");
    }
    const ex::llama_model* l = m.as_llama();
    ex::llama_weights w = l->weights();
    round_all(w.token_embedding);
    round_all(w.lm_head);
    for (ex::llama_layer& L : w.layers) {
        for (auto* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) round_all(*v);
    }
    return ex::language_model(ex::llama_model(l->config(), std::move(w), l->options()),
                              m.format(), m.path() + " (bf16-rounded)");
}

using f32_codec = kvcar::identity_codec<float>;

/// Logits of `prompt` prefilled in one pass (all rows), or fed one token at a time.
std::vector<float> run_prompt(device_model& gpu, const ex::language_model& m,
                              const std::vector<int>& prompt, bool one_at_a_time) {
    const kvcar::kv_geometry g = m.cache_geometry();
    device_kv_cache<f32_codec> cache(kvcar::dense_layout(g), f32_codec{g.head_dim},
                                     {.max_sequences = 1, .max_tokens = 64, .page_size = 16,
                                      .n_pages = 4});
    const int seq = cache.add_sequence();
    if (!one_at_a_time) return gpu.forward(cache, seq, prompt);
    std::vector<float> all;
    for (const int& id : prompt) {
        const auto row = gpu.forward(cache, seq, std::span<const int>(&id, 1));
        all.insert(all.end(), row.begin(), row.end());
    }
    return all;
}

/// Greedy ids after `prompt`, and for each step the gap between the best and second-best logit
/// (relative to the row's largest |logit|).
std::vector<int> greedy(device_model& gpu, const ex::language_model& m,
                        const std::vector<int>& prompt, int steps, std::vector<double>& gaps) {
    const kvcar::kv_geometry g = m.cache_geometry();
    device_kv_cache<f32_codec> cache(kvcar::dense_layout(g), f32_codec{g.head_dim},
                                     {.max_sequences = 1, .max_tokens = 64, .page_size = 16,
                                      .n_pages = 4});
    const int seq = cache.add_sequence();
    std::vector<float> logits = gpu.forward(cache, seq, prompt, ex::logits_for::last);
    std::vector<int> ids;
    gaps.clear();
    for (int s = 0; s < steps; ++s) {
        std::vector<float> sorted = logits;
        std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
        double scale = 1e-30;
        for (float x : logits) scale = std::max(scale, double(std::fabs(x)));
        gaps.push_back(double(sorted[0] - sorted[1]) / scale);
        const int id = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
        ids.push_back(id);
        logits = gpu.forward(cache, seq, std::span<const int>(&id, 1), ex::logits_for::last);
    }
    return ids;
}

void check_bf16_model(const ex::language_model& m) {
    const ex::language_model rounded = rounded_matrices(m);
    device_model fp32(rounded, {}, weight_precision::fp32);
    device_model bf16(m, {}, weight_precision::bf16);
    CHECK(fp32.weights() == weight_precision::fp32);
    CHECK(bf16.weights() == weight_precision::bf16);
    // The matrices are most of the bytes: bf16 is about half (norms, biases, positions stay).
    CHECK(double(bf16.weight_bytes()) < 0.55 * double(fp32.weight_bytes()));
    CHECK(bf16.weight_bytes() > fp32.weight_bytes() / 2);

    const int V = m.vocab_size();
    const std::vector<int> prompt = random_ids(33, V, 17);
    for (const bool one_at_a_time : {false, true}) {
        const std::vector<float> want = run_prompt(fp32, rounded, prompt, one_at_a_time);
        const std::vector<float> got = run_prompt(bf16, m, prompt, one_at_a_time);
        REQUIRE(got.size() == want.size());
        error_meter err;
        err.add(got.data(), want.data(), got.size());
        const double tol = one_at_a_time ? 1e-4 : 2e-2;
        std::printf("bf16 model %-28s %-22s rel err vs bf16-rounded fp32 %.2e (tolerance %.0e)\n",
                    m.path().c_str(), one_at_a_time ? "one token a pass (GEMV)"
                                                    : "prefill of 33 (GemmEx)",
                    err.relative(), tol);
        CHECK(err.relative() < tol);
    }

    // Norms, attention (its output in bf16) and SwiGLU writing the products' bf16 inputs (the
    // default) give the very logits of an fp32 write followed by the products' rounding pass:
    // bit for bit.
    device_model unfused(m, {}, weight_precision::bf16);
    unfused.fuse_bf16_rounding(false);
    CHECK(run_prompt(bf16, m, prompt, false) == run_prompt(unfused, m, prompt, false));

    // Greedy generation: the same ids, step by step. Each logit may move by the prefill's
    // tolerance (2e-2 of the largest), so a step whose best two logits are closer than twice that
    // could flip on rounding alone: the comparison stops there (reported, not failed).
    std::vector<double> gaps32, gaps16;
    const std::vector<int> p = random_ids(12, V, 23);
    const std::vector<int> ids32 = greedy(fp32, rounded, p, 12, gaps32);
    const std::vector<int> ids16 = greedy(bf16, m, p, 12, gaps16);
    std::size_t compared = 0;
    for (; compared < ids32.size(); ++compared) {
        if (gaps32[compared] < 4e-2) break;
        CHECK(ids16[compared] == ids32[compared]);
        if (ids16[compared] != ids32[compared]) break;
    }
    std::printf("bf16 model %-28s greedy ids equal for %zu of %zu steps%s\n", m.path().c_str(),
                compared, ids32.size(),
                compared < ids32.size() ? " (then a near tie: not compared further)" : "");
}

}  // namespace

TEST_CASE("model_cuda: bf16 weights give the logits and greedy ids of the bf16-rounded fp32 model",
          "[models][model_cuda][bf16]") {
    check_bf16_model(synthetic_gpt2());
    check_bf16_model(synthetic_llama(ex::cached_keys::post_rope));
    for (const char* name : {"gpt2-tiny", "llama-tiny"}) {
        const std::string path = data_dir + "/models/" + name;
        if (!have(path + "/model.safetensors")) continue;
        check_bf16_model(ex::language_model::load(path, {.threads = 2}));
    }
}

TEST_CASE("model_cuda: the session keeps the weights it is asked for", "[models][model_cuda][bf16]") {
    const ex::language_model m = synthetic_llama(ex::cached_keys::post_rope);
    ex::cuda_backend::session a(m, "identity-f32", {.max_sequences = 1, .max_tokens = 32});
    ex::cuda_backend::session b(m, "identity-f32",
                                {.max_sequences = 1, .max_tokens = 32,
                                 .weights = weight_precision::bf16});
    CHECK(a.weights() == weight_precision::fp32);  // the default: fp32, as before
    CHECK(b.weights() == weight_precision::bf16);
    CHECK(b.weight_bytes() < a.weight_bytes());
    const std::vector<int> ids = random_ids(5, m.vocab_size(), 3);
    const int sa = a.add_sequence(), sb = b.add_sequence();
    const std::vector<float> la = a.forward(sa, ids, ex::logits_for::last);
    const std::vector<float> lb = b.forward(sb, ids, ex::logits_for::last);
    REQUIRE(la.size() == lb.size());
    error_meter err;
    err.add(lb.data(), la.data(), la.size());
    // Unrounded fp32 weights against bf16 ones: the weights' own rounding (2⁻⁹) shows.
    CHECK(err.relative() < 5e-2);
}
