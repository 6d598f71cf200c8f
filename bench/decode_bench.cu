// kvcar decode-attention benchmark: one query token per sequence, every codec, logical shapes
// of GPT-2 small, TinyLlama and a Llama-3-8B-like layer. Prints one JSON object per line.
//
// What is timed: kvcar::kernels::decode_attention on one layer's cache (the same kernel a model
// calls per layer per generated token), CUDA events around the launch, 3 warm-up runs, the L2
// flushed before every run (a write of 2x its size), median of --reps runs. The device-side
// arguments (sequence ids, lengths) are uploaded once, so no host work falls inside the timing.
//
//     decode_bench [--reps 30] [--grid quick|full] [--codec NAME] [--model NAME] [--batch B]
//                  [--context L] > kvcar.jsonl
// bench/run_speed.sh runs this beside PyTorch SDPA and a copy (bench/peers.py) in one session.
#include <kvcar/kvcar.hpp>
#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/append.cuh>
#include <kvcar/kernels/decode_attention.cuh>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <cuda_runtime.h>

namespace {

#define BENCH_CHECK(call)                                                                      \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            std::exit(1);                                                                      \
        }                                                                                      \
    } while (0)

struct model_shape {
    const char* name;
    int heads, kv_heads, head_dim;
};
constexpr model_shape models[] = {{"gpt2-small", 12, 12, 64},
                                  {"tinyllama", 32, 4, 64},
                                  {"llama3-8b", 32, 8, 128}};

// Deterministic pseudo-random values in [-1, 1): timing on zeros would hide real work.
__global__ void fill_random(float* x, std::size_t n, unsigned seed) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
         i += std::size_t(gridDim.x) * blockDim.x) {
        unsigned h = unsigned(i) * 2654435761u ^ (seed * 0x9e3779b9u);
        h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
        x[i] = float(h & 0xffffff) / 8388608.0f - 1.0f;
    }
}

void random_device(float* x, std::size_t n, unsigned seed) {
    fill_random<<<1024, 256>>>(x, n, seed);
    BENCH_CHECK(cudaGetLastError());
}

struct timer {
    int reps;
    float* flush = nullptr;
    std::size_t flush_bytes = 0;
    cudaEvent_t start, stop;

    explicit timer(int r) : reps(r) {
        int dev = 0, l2 = 0;
        BENCH_CHECK(cudaGetDevice(&dev));
        BENCH_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
        flush_bytes = std::size_t(std::max(l2, 1 << 20)) * 2;
        BENCH_CHECK(cudaMalloc(&flush, flush_bytes));
        BENCH_CHECK(cudaEventCreate(&start));
        BENCH_CHECK(cudaEventCreate(&stop));
    }
    double median_ms(const std::function<void()>& fn) {
        for (int i = 0; i < 3; ++i) fn();
        std::vector<float> t;
        for (int i = 0; i < reps; ++i) {
            BENCH_CHECK(cudaMemsetAsync(flush, i & 0xff, flush_bytes));
            BENCH_CHECK(cudaEventRecord(start));
            fn();
            BENCH_CHECK(cudaEventRecord(stop));
            BENCH_CHECK(cudaEventSynchronize(stop));
            float ms = 0;
            BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
            t.push_back(ms);
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    }
};

// Parameters of a linear codec with a random basis: timing does not depend on the values.
kvcar::linear_params random_linear(int width, int rank, int heads, unsigned seed) {
    kvcar::linear_params p;  // field by field: nvcc's host pass warns on partial designated lists
    p.width = width;
    p.rank = rank;
    p.heads = heads;
    p.mean.assign(std::size_t(width), 0.0f);
    p.basis.resize(std::size_t(width) * rank);
    unsigned s = seed;
    for (float& b : p.basis) {
        s = s * 1664525u + 1013904223u;
        b = (float(s >> 8) / 16777216.0f - 0.5f) / std::sqrt(float(width));
    }
    return p;
}

// The paper's autoencoder (h = D, d = D/2) with random weights, BatchNorm at identity.
kvcar::folded_autoencoder random_autoencoder(int D, int h, int d, unsigned seed) {
    kvcar::autoencoder_params p;  // field by field, as above
    p.width = D;
    p.hidden = h;
    p.latent = d;
    unsigned s = seed;
    auto fill = [&](std::vector<float>& v, std::size_t n, float scale) {
        v.resize(n);
        for (float& x : v) {
            s = s * 1664525u + 1013904223u;
            x = (float(s >> 8) / 16777216.0f - 0.5f) * scale;
        }
    };
    fill(p.enc1_w, std::size_t(h) * D, 1.0f / std::sqrt(float(D)));
    fill(p.enc1_b, h, 0.0f);
    fill(p.enc2_w, std::size_t(d) * h, 1.0f / std::sqrt(float(h)));
    fill(p.enc2_b, d, 0.0f);
    fill(p.dec1_w, std::size_t(h) * d, 1.0f / std::sqrt(float(d)));
    fill(p.dec1_b, h, 0.0f);
    fill(p.dec2_w, std::size_t(D) * h, 1.0f / std::sqrt(float(h)));
    fill(p.dec2_b, D, 0.0f);
    for (auto* v : {&p.enc_bn_gamma, &p.dec_bn_gamma, &p.enc_bn_var, &p.dec_bn_var}) v->assign(h, 1.0f);
    for (auto* v : {&p.enc_bn_beta, &p.dec_bn_beta, &p.enc_bn_mean, &p.dec_bn_mean}) v->assign(h, 0.0f);
    return kvcar::fold(p);
}

struct bench_case {
    const model_shape& m;
    int batch, context;
};

// Builds a one-layer cache of `batch` sequences of `context` tokens with `codecs`, fills it
// through kvcar's append kernel, times decode attention, prints a JSON line.
template <class Codec>
void run(const char* codec_name, const bench_case& c, int heads_per_group, std::vector<Codec> codecs,
         timer& tm, const char* gpu) {
    const kvcar::kv_geometry g{.n_layers = 1, .n_kv_heads = c.m.kv_heads, .head_dim = c.m.head_dim};
    const int page = 16;
    const int pages = c.batch * ((c.context + page - 1) / page);
    kvcar::cuda::device_kv_cache<Codec> cache(kvcar::dense_layout(g, heads_per_group), std::move(codecs),
                                              {.max_sequences = c.batch, .max_tokens = c.context,
                                               .page_size = page, .num_pages = pages});
    std::vector<int> seqs(std::size_t(c.batch));
    for (int& s : seqs) s = cache.add_sequence();

    // Fill in chunks so the float staging buffers stay small.
    const int width = g.token_width();
    const int chunk = std::max(1, std::min(c.context, int((std::size_t(64) << 20) / (std::size_t(width) * c.batch))));
    float *k = nullptr, *v = nullptr;
    BENCH_CHECK(cudaMalloc(&k, std::size_t(chunk) * c.batch * width * sizeof(float)));
    BENCH_CHECK(cudaMalloc(&v, std::size_t(chunk) * c.batch * width * sizeof(float)));
    for (int done = 0, round = 0; done < c.context; done += chunk, ++round) {
        const int n = std::min(chunk, c.context - done);
        random_device(k, std::size_t(n) * c.batch * width, 2u * round + 1u);
        random_device(v, std::size_t(n) * c.batch * width, 2u * round + 2u);
        const std::vector<int> counts(std::size_t(c.batch), n);
        kvcar::kernels::append(cache, 0, seqs, counts, k, v);
    }
    BENCH_CHECK(cudaDeviceSynchronize());
    BENCH_CHECK(cudaFree(k));
    BENCH_CHECK(cudaFree(v));

    float *q = nullptr, *out = nullptr;
    std::int32_t* dev_ints = nullptr;
    const std::size_t qn = std::size_t(c.batch) * c.m.heads * c.m.head_dim;
    BENCH_CHECK(cudaMalloc(&q, qn * sizeof(float)));
    BENCH_CHECK(cudaMalloc(&out, qn * sizeof(float)));
    random_device(q, qn, 99u);
    std::vector<std::int32_t> ints(2 * std::size_t(c.batch));
    for (int b = 0; b < c.batch; ++b) {
        ints[std::size_t(b)] = seqs[std::size_t(b)];
        ints[std::size_t(c.batch + b)] = c.context;
    }
    BENCH_CHECK(cudaMalloc(&dev_ints, ints.size() * sizeof(std::int32_t)));
    BENCH_CHECK(cudaMemcpy(dev_ints, ints.data(), ints.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));

    kvcar::kernels::decode_attention_params p;
    p.q = q;
    p.out = out;
    p.sequences = dev_ints;
    p.kv_lengths = dev_ints + c.batch;
    p.batch = c.batch;
    p.max_kv_length = c.context;
    p.layer = 0;
    p.n_heads = c.m.heads;
    kvcar::kernels::attention_workspace ws;
    const auto view = cache.view();
    const double ms = tm.median_ms([&] { kvcar::kernels::decode_attention(view, p, ws); });
    BENCH_CHECK(cudaGetLastError());

    const double stored = double(cache.bytes_per_token()) * c.context * c.batch;
    const double fp16 = double(g.fp16_bytes_per_token()) * c.context * c.batch;
    std::printf("{\"impl\":\"kvcar\",\"codec\":\"%s\",\"gpu\":\"%s\",\"model\":\"%s\",\"batch\":%d,"
                "\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"context\":%d,\"ms\":%.6f,"
                "\"stored_bytes\":%.0f,\"fp16_bytes\":%.0f,\"bytes_per_token\":%zu,"
                "\"stored_gbps\":%.2f,\"splits\":%d,\"latent_tensor_cores\":%s,"
                "\"direct_tensor_cores\":%s}\n",
                codec_name, gpu, c.m.name, c.batch, c.m.heads, c.m.kv_heads, c.m.head_dim, c.context,
                ms, stored, fp16, cache.bytes_per_token(), stored / ms / 1e6, ws.last_splits,
                ws.last_latent_tensor_cores ? "true" : "false",
                ws.last_direct_tensor_cores ? "true" : "false");
    std::fflush(stdout);
    BENCH_CHECK(cudaFree(q));
    BENCH_CHECK(cudaFree(out));
    BENCH_CHECK(cudaFree(dev_ints));
}

template <class Codec>
std::vector<Codec> per_slot(int slots, Codec c) { return std::vector<Codec>(std::size_t(slots), c); }

}  // namespace

int main(int argc, char** argv) {
    int reps = 30;
    std::string grid = "quick", only_codec, only_model;
    int only_batch = 0, only_context = 0;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--grid") && i + 1 < argc) grid = argv[++i];
        else if (!std::strcmp(argv[i], "--codec") && i + 1 < argc) only_codec = argv[++i];
        else if (!std::strcmp(argv[i], "--model") && i + 1 < argc) only_model = argv[++i];
        else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) only_batch = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--context") && i + 1 < argc) only_context = std::atoi(argv[++i]);
        else { std::fprintf(stderr, "usage: decode_bench [--reps N] [--grid quick|full] [--codec NAME] [--model NAME] [--batch B] [--context L]\n"); return 2; }
    }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) { std::fprintf(stderr, "decode_bench: no GPU\n"); return 1; }
    cudaDeviceProp prop{};
    BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
    timer tm(reps);

    const std::vector<int> batches = grid == "full" ? std::vector<int>{1, 8, 32, 64} : std::vector<int>{1, 32, 64};
    const std::vector<int> contexts = grid == "full" ? std::vector<int>{512, 2048, 4096, 8192, 16384, 32768}
                                                     : std::vector<int>{512, 4096, 32768};
    auto wanted = [&](const char* name) { return only_codec.empty() || only_codec == name; };
    try {
        for (const model_shape& m : models)
            for (int b : batches)
                for (int L : contexts) {
                    if (!only_model.empty() && only_model != m.name) continue;
                    if ((only_batch && b != only_batch) || (only_context && L != only_context)) continue;
                    const double fp16_gb = 4.0 * b * L * m.kv_heads * m.head_dim / 1e9;
                    if (fp16_gb > 24.0) continue;
                    const bench_case c{m, b, L};
                    const int D = m.kv_heads * m.head_dim, hd = m.head_dim;
                    const int slots_head = 2 * m.kv_heads, slots_layer = 2;
                    if (wanted("identity-f16"))
                        run("identity-f16", c, 1, per_slot(slots_head, kvcar::identity_codec<kvcar::f16>{hd}), tm, prop.name);
                    if (wanted("int8"))
                        run("int8", c, 1, per_slot(slots_head, kvcar::make_quantized<std::int8_t>(kvcar::identity_codec<float>{hd})), tm, prop.name);
                    // The linear codecs' parameters must outlive the host views handed to the cache.
                    const kvcar::linear_params head_half = random_linear(hd, hd / 2, 1, 7u);
                    const kvcar::linear_params layer_half = random_linear(D, D / 2, m.kv_heads, 11u);
                    const kvcar::linear_params layer_quarter = random_linear(D, D / 4, m.kv_heads, 13u);
                    if (wanted("linear-head-d/2"))
                        run("linear-head-d/2", c, 1, per_slot(slots_head, head_half.codec<kvcar::f16>()), tm, prop.name);
                    if (wanted("linear-layer-d/2"))
                        run("linear-layer-d/2", c, m.kv_heads, per_slot(slots_layer, layer_half.codec<kvcar::f16>()), tm, prop.name);
                    if (wanted("linear-layer-d/2-int8"))
                        run("linear-layer-d/2-int8", c, m.kv_heads,
                            per_slot(slots_layer, kvcar::make_quantized<std::int8_t>(layer_half.codec<float>())), tm, prop.name);
                    if (wanted("linear-layer-d/4"))
                        run("linear-layer-d/4", c, m.kv_heads, per_slot(slots_layer, layer_quarter.codec<kvcar::f16>()), tm, prop.name);
                    // The paper's autoencoder: its decoder's first layer runs per cached token on
                    // tensor cores (compute-bound), attention in the hidden space.
                    if (wanted("autoencoder-layer-d/2")) {
                        const kvcar::folded_autoencoder ae = random_autoencoder(D, D, D / 2, 17u);
                        run("autoencoder-layer-d/2", c, m.kv_heads, per_slot(slots_layer, ae.codec<kvcar::f16>()), tm, prop.name);
                    }
                }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "decode_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
