// kvcar quickstart: compress a synthetic KV cache with every codec and see what each one costs.
//
// Real K/V activations are low-rank: a layer's keys live mostly in a subspace much narrower than
// n_kv_heads × head_dim. This program plants exactly that structure (a rank-24 signal per layer
// plus a little noise), fits the codecs on the first half of the tokens, stores the second half
// through a kvcar::kv_cache with each codec, and prints
//   bytes/token      what the cache stores per token (K and V, all layers)
//   ratio            how many times smaller than an fp16 cache
//   recon error      RMS(x̂ − x) / RMS(x) over every stored value
//   attention error  max |out − out_exact| / max |out_exact| of a decode step read through the cache
//
// Run: ./build/examples/quickstart/kvcar-quickstart
#include <kvcar/kvcar.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// 1. The synthetic model: 4 layers, 4 KV heads of 64 dims, 8 query heads (GQA), 512 tokens.
// ---------------------------------------------------------------------------------------------
constexpr kvcar::kv_geometry geometry{.n_layers = 4, .n_kv_heads = 4, .head_dim = 64};
constexpr int n_heads = 8;
constexpr int n_tokens = 512;  // first half fits the codecs, second half is stored and measured
constexpr int signal_rank = 24;

// activations[layer][kind] is [n_tokens][token_width] row-major.
using activations = std::vector<std::vector<std::vector<float>>>;

activations make_activations(std::mt19937& rng) {
    const int width = geometry.token_width();
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    activations act(geometry.n_layers, std::vector<std::vector<float>>(2));
    for (auto& layer : act) {
        for (auto& x : layer) {
            // x = mean + Σ_k σ_k g_k u_k + noise, with a decaying spectrum σ_k.
            std::vector<float> basis(std::size_t(signal_rank) * width), mean(width);
            for (auto& b : basis) b = gauss(rng) / std::sqrt(float(width));
            for (auto& m : mean) m = 0.5f * gauss(rng);
            x.assign(std::size_t(n_tokens) * width, 0.0f);
            for (int t = 0; t < n_tokens; ++t) {
                float* row = x.data() + std::size_t(t) * width;
                for (int i = 0; i < width; ++i) row[i] = mean[i] + 0.02f * gauss(rng);
                for (int k = 0; k < signal_rank; ++k) {
                    const float coeff = 4.0f * std::exp(-0.12f * float(k)) * gauss(rng);
                    for (int i = 0; i < width; ++i) row[i] += coeff * basis[std::size_t(k) * width + i];
                }
            }
        }
    }
    return act;
}

// The columns of one group (heads_per_group heads) of the fitting half, as a dense matrix.
std::vector<float> fitting_rows(const std::vector<float>& x, int group, int group_width) {
    const int width = geometry.token_width();
    std::vector<float> rows(std::size_t(n_tokens / 2) * group_width);
    for (int t = 0; t < n_tokens / 2; ++t)
        for (int i = 0; i < group_width; ++i)
            rows[std::size_t(t) * group_width + i] = x[std::size_t(t) * width + group * group_width + i];
    return rows;
}

// ---------------------------------------------------------------------------------------------
// 2. Codec parameters, fitted per slot. Codecs are views: the owning params must outlive them.
// ---------------------------------------------------------------------------------------------
struct fitted_linear {
    std::vector<kvcar::linear_params> params;  // one per slot, in slot order
};

fitted_linear fit_linear(const activations& act, const kvcar::dense_layout& layout, int rank) {
    fitted_linear out;
    const int group_width = layout.heads_per_group() * geometry.head_dim;
    for (int slot = 0; slot < layout.n_slots(); ++slot) {
        const kvcar::slot_owner who = layout.owner(slot);
        const auto rows = fitting_rows(act[who.layer][int(who.kind)], who.group, group_width);
        out.params.push_back(kvcar::calib::fit_pca(rows.data(), n_tokens / 2, group_width,
                                                   {.rank = rank, .heads = layout.heads_per_group()})
                                 .params);
    }
    return out;
}

// The paper's autoencoder, initialised from PCA — where calibration starts its training. With
// h = 2d hidden units, LeakyReLU(s) is undone exactly: (lrelu(a) − lrelu(−a)) / (1 + s) = a, so
// this AE reproduces the rank-d PCA codec through the paper's FC-BN-LeakyReLU-FC shape.
kvcar::folded_autoencoder autoencoder_from_pca(const kvcar::linear_params& pca) {
    const int D = pca.width, d = pca.rank, h = 2 * d;
    const float s = 0.01f;
    kvcar::autoencoder_params p;  // the weight vectors are filled below
    p.width = D;
    p.hidden = h;
    p.latent = d;
    p.slope = s;
    p.enc1_w.assign(std::size_t(h) * D, 0.0f);
    p.enc1_b.assign(h, 0.0f);
    p.enc2_w.assign(std::size_t(d) * h, 0.0f);
    p.enc2_b.assign(d, 0.0f);
    p.dec1_w.assign(std::size_t(h) * d, 0.0f);
    p.dec1_b.assign(h, 0.0f);
    p.dec2_w.assign(std::size_t(D) * h, 0.0f);
    p.dec2_b.assign(pca.mean.begin(), pca.mean.end());
    for (auto* bn : {&p.enc_bn_gamma, &p.dec_bn_gamma, &p.enc_bn_var, &p.dec_bn_var}) bn->assign(h, 1.0f);
    for (auto* bn : {&p.enc_bn_beta, &p.dec_bn_beta, &p.enc_bn_mean, &p.dec_bn_mean}) bn->assign(h, 0.0f);
    for (auto* var : {&p.enc_bn_var, &p.dec_bn_var})
        for (float& v : *var) v = 1.0f - p.bn_eps;  // BatchNorm = identity
    for (int j = 0; j < d; ++j) {
        float mu_proj = 0.0f;
        for (int i = 0; i < D; ++i) {
            const float pij = pca.basis[std::size_t(i) * d + j];
            p.enc1_w[std::size_t(j) * D + i] = pij;         // +Pᵀ x
            p.enc1_w[std::size_t(j + d) * D + i] = -pij;    // −Pᵀ x
            p.dec2_w[std::size_t(i) * h + j] = pij / (1.0f + s);
            p.dec2_w[std::size_t(i) * h + j + d] = -pij / (1.0f + s);
            mu_proj += pij * pca.mean[i];
        }
        p.enc1_b[j] = -mu_proj;
        p.enc1_b[j + d] = mu_proj;
        p.enc2_w[std::size_t(j) * h + j] = 1.0f / (1.0f + s);
        p.enc2_w[std::size_t(j) * h + j + d] = -1.0f / (1.0f + s);
        p.dec1_w[std::size_t(j) * d + j] = 1.0f;
        p.dec1_w[std::size_t(j + d) * d + j] = -1.0f;
    }
    return kvcar::fold(p);
}

// ---------------------------------------------------------------------------------------------
// 3. Store the measured half through a cache, read it back, and run one decode step.
// ---------------------------------------------------------------------------------------------
struct measurement {
    std::size_t bytes_per_token;
    double ratio, recon_error, attention_error;
};

template <class Cache>
void fill(Cache& cache, int seq, const activations& act) {
    const int width = geometry.token_width();
    const std::size_t half = std::size_t(n_tokens / 2) * width;
    for (int layer = 0; layer < geometry.n_layers; ++layer) {
        std::span<const float> k(act[layer][0].data() + half, half), v(act[layer][1].data() + half, half);
        cache.append(seq, layer, k, v);
    }
}

std::vector<float> decode_step(const auto& cache, int seq, const std::vector<float>& q) {
    std::vector<float> out(q.size());
    kvcar::reference_decode_attention(cache, seq, geometry.n_layers - 1,
                                      kvcar::attention_params{.n_heads = n_heads}, q, out);
    return out;
}

template <class Codec, class Layout>
measurement measure(const Layout& layout, std::vector<Codec> codecs, const activations& act,
                    const std::vector<float>& q, const std::vector<float>& exact_out) {
    kvcar::kv_cache cache(layout, std::move(codecs),
                          kvcar::contiguous_storage::params{.max_sequences = 1, .max_tokens = n_tokens});
    const int seq = cache.add_sequence();
    fill(cache, seq, act);

    const int width = geometry.token_width(), n = n_tokens / 2;
    double err2 = 0.0, sig2 = 0.0;
    std::vector<float> back(std::size_t(n) * width);
    for (int layer = 0; layer < geometry.n_layers; ++layer)
        for (kvcar::kv_kind kind : {kvcar::kv_kind::key, kvcar::kv_kind::value}) {
            cache.read(seq, layer, kind, 0, n, back);
            const float* x = act[layer][int(kind)].data() + std::size_t(n) * width;
            for (std::size_t i = 0; i < back.size(); ++i) {
                err2 += double(back[i] - x[i]) * (back[i] - x[i]);
                sig2 += double(x[i]) * x[i];
            }
        }
    const auto out = decode_step(cache, seq, q);
    double max_diff = 0.0, max_ref = 0.0;
    for (std::size_t i = 0; i < out.size(); ++i) {
        max_diff = std::max(max_diff, double(std::fabs(out[i] - exact_out[i])));
        max_ref = std::max(max_ref, double(std::fabs(exact_out[i])));
    }
    return {cache.bytes_per_token(), cache.compression_ratio(), std::sqrt(err2 / sig2),
            max_diff / max_ref};
}

void print_row(const char* name, const measurement& m) {
    std::printf("%-44s %10zu %8.2fx %12.2e %12.2e\n", name, m.bytes_per_token, m.ratio,
                m.recon_error, m.attention_error);
}

template <class T>
std::vector<kvcar::linear_codec<T>> views(const fitted_linear& f) {
    std::vector<kvcar::linear_codec<T>> v;
    for (const auto& p : f.params) v.push_back(p.template codec<T>());
    return v;
}

/// The program takes no options: -h/--help says what it does, anything else is refused.
/// Returns the exit status when the program should stop here, or -1 to run.
int handle_arguments(int argc, char** argv) {
    const char* usage =
        "usage: %s [-h | --help]\n"
        "Compresses a synthetic KV cache (planted low-rank K/V, no data needed) with every codec and\n"
        "prints each one's bytes/token, ratio vs fp16, reconstruction error and attention error.\n";
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            std::printf(usage, "kvcar-quickstart");
            return 0;
        }
        std::fprintf(stderr, "error: kvcar-quickstart: unknown argument '%s' (it takes no options; see --help)\n",
                     arg.c_str());
        return 2;
    }
    return -1;
}

}  // namespace

int main(int argc, char** argv) {
    if (const int status = handle_arguments(argc, argv); status >= 0) return status;
    std::mt19937 rng(2025);
    const activations act = make_activations(rng);
    std::vector<float> q(std::size_t(n_heads) * geometry.head_dim);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    for (float& x : q) x = 0.3f * gauss(rng);

    const kvcar::dense_layout per_head(geometry, 1);
    const kvcar::dense_layout per_layer(geometry, geometry.n_kv_heads);
    const int hd = geometry.head_dim, D = geometry.token_width();

    // The exact answer: attention on the raw floats, stored without loss.
    std::vector<float> exact;
    {
        kvcar::kv_cache cache(per_head, kvcar::identity_codec<float>{hd},
                              kvcar::contiguous_storage::params{.max_sequences = 1, .max_tokens = n_tokens});
        const int seq = cache.add_sequence();
        fill(cache, seq, act);
        exact = decode_step(cache, seq, q);
    }

    std::printf("kvcar quickstart: %d layers x %d KV heads x %d dims, %d query heads, %d tokens stored\n",
                geometry.n_layers, geometry.n_kv_heads, hd, n_heads, n_tokens / 2);
    std::printf("synthetic K/V: rank-%d signal + noise; codecs fitted on %d other tokens\n\n",
                signal_rank, n_tokens / 2);
    std::printf("%-44s %10s %9s %12s %12s\n", "codec", "bytes/tok", "ratio", "recon err", "attn err");

    auto same = [](auto codec, const kvcar::dense_layout& l) {
        return std::vector<decltype(codec)>(std::size_t(l.n_slots()), codec);
    };
    print_row("identity f32", measure(per_head, same(kvcar::identity_codec<float>{hd}, per_head), act, q, exact));
    print_row("identity f16 (the baseline)", measure(per_head, same(kvcar::identity_codec<kvcar::f16>{hd}, per_head), act, q, exact));
    print_row("identity bf16", measure(per_head, same(kvcar::identity_codec<kvcar::bf16>{hd}, per_head), act, q, exact));
    print_row("int8 per head (quantized<identity>)",
              measure(per_head, same(kvcar::make_quantized<std::int8_t>(kvcar::identity_codec<float>{hd}), per_head), act, q, exact));
    print_row("fp8 e4m3 per head (quantized<identity>)",
              measure(per_head, same(kvcar::make_quantized<kvcar::fp8_e4m3>(kvcar::identity_codec<float>{hd}), per_head), act, q, exact));

    const fitted_linear head_pca = fit_linear(act, per_head, hd / 2);
    print_row("linear per head, d = 32, f16", measure(per_head, views<kvcar::f16>(head_pca), act, q, exact));

    const fitted_linear layer_pca = fit_linear(act, per_layer, D / 8);
    print_row("linear per layer, d = 32 of 256, f16", measure(per_layer, views<kvcar::f16>(layer_pca), act, q, exact));
    {
        std::vector<kvcar::quantized_codec<kvcar::linear_codec<float>, std::int8_t>> codecs;
        for (const auto& p : layer_pca.params) codecs.push_back(kvcar::make_quantized<std::int8_t>(p.codec<float>()));
        print_row("linear per layer, d = 32, int8", measure(per_layer, codecs, act, q, exact));
    }
    {
        std::vector<kvcar::folded_autoencoder> aes;
        for (const auto& p : layer_pca.params) aes.push_back(autoencoder_from_pca(p));
        std::vector<kvcar::autoencoder_codec<kvcar::f16>> codecs;
        for (const auto& ae : aes) codecs.push_back(ae.codec<kvcar::f16>());
        print_row("autoencoder per layer (PCA init), d = 32, f16", measure(per_layer, codecs, act, q, exact));
    }
    std::printf("\nratio = fp16 bytes per token / stored bytes per token (K and V, all layers)\n");
    return 0;
}
