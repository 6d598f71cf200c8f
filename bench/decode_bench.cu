// kvcar decode-attention benchmark: one query token per sequence, every codec, logical shapes
// of GPT-2 small, TinyLlama and a Llama-3-8B-like layer. Prints one JSON object per line.
//
// What is timed: kvcar::kernels::decode_attention on one layer's cache (the same kernel a model
// calls per layer per generated token), captured once into a CUDA graph so that the host work
// between its launches (projection, split kernel, merge, lift) stays out of the interval, as a
// runtime that replays a decode step's graph sees it; 3 eager warm-ups (the workspace grows
// there, never inside the capture), the L2 flushed before every run (a write of 2x its size),
// CUDA events around one graph launch, the median of --reps runs (the middle sample; the mean of
// the two middle ones for an even count, as Python's statistics.median, which bench/peers.py
// uses). "timing" says "graph", or "eager" where the capture failed.
//
// What is checked: the output of the timed launch, against a CPU reference of the same records
// (downloaded from the cache): two query heads of each checked row, softmax in double. Rows are
// checked in the order last, first, then spread over the batch, until --check-seconds (0.25)
// per shape are spent (check_rows says how many; at small shapes every row); a row whose
// per-head relative error exceeds 5e-3 marks the shape "check": "FAIL" (max error in
// "check_err"); "skipped" where decoding one row on the CPU would take far longer than the
// budget (the autoencoder at long contexts). The reference is the attention definition, per head: for affine (linear)
// codecs in latent space (q·(P z + μ) = (Pᵀq)·z + q·μ, Σ a (P z + μ) = P Σ a z + μ, exact
// algebra), for the others on the decoded record.
//
//     decode_bench [--reps 31] [--grid quick|full] [--codec NAME] [--model NAME] [--batch B]
//                  [--context L] [--round R] [--check-seconds S]
//                  [--latent-warps 8|16] [--latent-stages N] [--latent-chunk T]
//                  [--latent-aux-vectors 4|16] [--latent-lift-rows 1|2|4]
//                  [--direct-ctas-per-sm N] [--direct-chunk T] [--merge-many-splits N] [--dependent-launch]
//                  [--activations f32|f16|bf16] > kvcar.jsonl
// --activations: q and out in that type (default f32), as a runtime holds them; the row's
// "activations" says which.
// The --latent-* and --direct-* flags override the tensor-core latent and direct paths' own plans
// (attention_workspace::tuning), to sweep them; the row's "tune" says what was asked.
// --dependent-launch turns programmatic dependent launch on ("tune" ends in " pdl"), so that
// one binary measures the step with and without the overlap of its kernels' launches.
// bench/run_speed.sh runs this beside PyTorch SDPA, FlashInfer and a copy, interleaved.
#include <kvcar/kvcar.hpp>
#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/append.cuh>
#include <kvcar/kernels/decode_attention.cuh>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_runtime.h>

namespace {

kvcar::kernels::attention_workspace::tuning tune;  // --latent-* (0: the path decides)
// --activations: the element type of q and out (a runtime's fp16 / bf16, or fp32)
kvcar::activation_type activations = kvcar::activation_type::f32;
long rows_printed = 0;  // a run whose filters match nothing says so, not an empty file

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

/// to = from in another activation type (narrowing rounds to nearest even; widening is exact).
__global__ void convert_activations(kvcar::input_activations from, kvcar::output_activations to,
                                    std::size_t n) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
         i += std::size_t(gridDim.x) * blockDim.x)
        kvcar::gpu::store(to, i, kvcar::gpu::load(from, i));
}

bool parse_activations(const char* name, kvcar::activation_type& t) {
    for (auto c : {kvcar::activation_type::f32, kvcar::activation_type::f16, kvcar::activation_type::bf16})
        if (!std::strcmp(name, kvcar::to_string(c))) { t = c; return true; }
    return false;
}

void convert_device(kvcar::input_activations from, kvcar::output_activations to, std::size_t n) {
    convert_activations<<<256, 256>>>(from, to, n);
    BENCH_CHECK(cudaGetLastError());
}

void random_device(float* x, std::size_t n, unsigned seed) {
    fill_random<<<1024, 256>>>(x, n, seed);
    BENCH_CHECK(cudaGetLastError());
}

/// The median of `t` (sorted here): the middle sample, or the mean of the two middle ones.
double median_of(std::vector<float> t) {
    std::sort(t.begin(), t.end());
    const std::size_t n = t.size();
    return n % 2 ? t[n / 2] : 0.5 * (double(t[n / 2 - 1]) + double(t[n / 2]));
}

struct timer {
    int reps;
    float* flush = nullptr;
    std::size_t flush_bytes = 0;
    cudaEvent_t start, stop;
    cudaStream_t stream;

    explicit timer(int r) : reps(r) {
        int dev = 0, l2 = 0;
        BENCH_CHECK(cudaGetDevice(&dev));
        BENCH_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
        flush_bytes = std::size_t(std::max(l2, 1 << 20)) * 2;
        BENCH_CHECK(cudaMalloc(&flush, flush_bytes));
        BENCH_CHECK(cudaEventCreate(&start));
        BENCH_CHECK(cudaEventCreate(&stop));
        BENCH_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    }

    /// Median time of fn(stream), replayed from a CUDA graph when it can be captured (`graph`
    /// tells). fn must enqueue the same work every call.
    double median_ms(const std::function<void(cudaStream_t)>& fn, bool& graph) {
        for (int i = 0; i < 3; ++i) fn(stream);
        BENCH_CHECK(cudaStreamSynchronize(stream));
        cudaGraphExec_t exec = nullptr;
        graph = false;
        cudaGraph_t g = nullptr;
        if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed) == cudaSuccess) {
            bool ok = true;
            try {
                fn(stream);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "decode_bench: capture failed (%s): timing eagerly\n", e.what());
                ok = false;
            }
            const cudaError_t end = cudaStreamEndCapture(stream, &g);
            if (ok && end == cudaSuccess && g &&
                cudaGraphInstantiate(&exec, g, 0) == cudaSuccess)
                graph = true;
            if (g) cudaGraphDestroy(g);
            (void)cudaGetLastError();  // a failed capture leaves its error behind
        }
        std::vector<float> t;
        for (int i = 0; i < reps; ++i) {
            BENCH_CHECK(cudaMemsetAsync(flush, i & 0xff, flush_bytes, stream));
            BENCH_CHECK(cudaEventRecord(start, stream));
            if (graph) BENCH_CHECK(cudaGraphLaunch(exec, stream));
            else fn(stream);
            BENCH_CHECK(cudaEventRecord(stop, stream));
            BENCH_CHECK(cudaEventSynchronize(stop));
            float ms = 0;
            BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
            t.push_back(ms);
        }
        if (exec) BENCH_CHECK(cudaGraphExecDestroy(exec));
        return median_of(std::move(t));
    }
};

/// Copies tokens [0, n) of `seq` in the slot whose records `v` finds into out (n records).
__global__ void gather_records(kvcar::page_view v, int seq, int n, std::byte* out) {
    const std::size_t rb = v.record_bytes, total = std::size_t(n) * rb;
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < total;
         i += std::size_t(gridDim.x) * blockDim.x) {
        const std::size_t t = i / rb;
        out[i] = v.record(seq, int(t))[i - t * rb];
    }
}

/// Codecs whose decoder is affine: attention runs in latent space, exactly.
template <class Codec>
concept affine_codec = requires(const Codec& c, const float* q, float* z) {
    c.project_query(q, 0, z);
    c.lift(q, 1.0f, 0, z);
};
template <class Codec>
concept dequantizing = requires(const Codec& c, const std::byte* r, float* z) { c.dequantize(r, z); };

/// The latent z of a record (d floats).
template <class Codec>
void latent_of(const Codec& c, const std::byte* record, float* z) {
    if constexpr (dequantizing<Codec>) {
        c.dequantize(record, z);
    } else {
        using T = typename Codec::storage_type;
        const T* x = reinterpret_cast<const T*>(record);
        for (int j = 0; j < c.latent_width(); ++j) z[j] = kvcar::to_float(x[j]);
    }
}

/// CPU attention of one query head over n tokens of K and V records (rb bytes each), head
/// `in_group` of its codec group: writes want[hd].
template <class Codec>
void reference_head(const Codec& ck, const Codec& cv, const std::byte* k, const std::byte* v,
                    std::size_t rb, int n, int in_group, int hd, const float* q, float scale,
                    float* want) {
    std::vector<double> s(static_cast<std::size_t>(n));
    if constexpr (affine_codec<Codec>) {
        const int d = ck.latent_width(), dv = cv.latent_width();
        std::vector<float> qz(static_cast<std::size_t>(d)), z(std::size_t(std::max(d, dv)));
        const double bias = ck.project_query(q, in_group, qz.data());
        for (int t = 0; t < n; ++t) {
            latent_of(ck, k + std::size_t(t) * rb, z.data());
            double dot = bias;
            for (int j = 0; j < d; ++j) dot += double(qz[std::size_t(j)]) * z[std::size_t(j)];
            s[std::size_t(t)] = scale * dot;
        }
        const double m = *std::max_element(s.begin(), s.end());
        double l = 0.0;
        std::vector<double> acc(std::size_t(dv), 0.0);
        for (int t = 0; t < n; ++t) {
            const double a = std::exp(s[std::size_t(t)] - m);
            l += a;
            latent_of(cv, v + std::size_t(t) * rb, z.data());
            for (int j = 0; j < dv; ++j) acc[std::size_t(j)] += a * z[std::size_t(j)];
        }
        std::vector<float> zbar(static_cast<std::size_t>(dv));
        for (int j = 0; j < dv; ++j) zbar[std::size_t(j)] = float(acc[std::size_t(j)] / l);
        cv.lift(zbar.data(), 1.0f, in_group, want);
    } else {
        std::vector<float> x(std::size_t(ck.group_width()));
        const std::size_t off = std::size_t(in_group) * hd;
        for (int t = 0; t < n; ++t) {
            ck.decode(k + std::size_t(t) * rb, x.data());
            double dot = 0.0;
            for (int i = 0; i < hd; ++i) dot += double(q[i]) * x[off + std::size_t(i)];
            s[std::size_t(t)] = scale * dot;
        }
        const double m = *std::max_element(s.begin(), s.end());
        double l = 0.0;
        std::vector<double> acc(std::size_t(hd), 0.0);
        for (int t = 0; t < n; ++t) {
            const double a = std::exp(s[std::size_t(t)] - m);
            l += a;
            cv.decode(v + std::size_t(t) * rb, x.data());
            for (int i = 0; i < hd; ++i) acc[std::size_t(i)] += a * x[off + std::size_t(i)];
        }
        for (int i = 0; i < hd; ++i) want[i] = float(acc[std::size_t(i)] / l);
    }
}

struct check_result {
    double max_err = 0.0;
    int rows = 0;
};

// Parameters of a linear codec with a random basis: timing does not depend on the values.
kvcar::linear_params random_linear(int width, int rank, int heads, unsigned seed) {
    kvcar::linear_params p;  // members assigned, not designated: -Wmissing-field-initializers
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
    kvcar::autoencoder_params p;
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
         timer& tm, const char* gpu, int round, double check_budget_s) {
    const kvcar::kv_geometry g{.n_layers = 1, .n_kv_heads = c.m.kv_heads, .head_dim = c.m.head_dim};
    const int page = 16;
    const int pages = c.batch * ((c.context + page - 1) / page);
    const kvcar::dense_layout layout(g, heads_per_group);
    kvcar::gpu::device_kv_cache<Codec> cache(layout, std::move(codecs),
                                              {.max_sequences = c.batch, .max_tokens = c.context,
                                               .page_size = page, .n_pages = pages});
    std::vector<int> seqs(std::size_t(c.batch));
    for (int& s : seqs) s = cache.add_sequence();

    // Fill in chunks so the float staging buffers stay small.
    const int width = g.token_width();
    const int chunk = std::max(1, std::min(c.context, int((std::size_t(64) << 20) / (std::size_t(width) * c.batch))));
    float *k = nullptr, *v = nullptr;
    BENCH_CHECK(cudaMalloc(&k, std::size_t(chunk) * c.batch * width * sizeof(float)));
    BENCH_CHECK(cudaMalloc(&v, std::size_t(chunk) * c.batch * width * sizeof(float)));
    for (int done = 0, pass = 0; done < c.context; done += chunk, ++pass) {
        const int n = std::min(chunk, c.context - done);
        random_device(k, std::size_t(n) * c.batch * width, 2u * pass + 1u);
        random_device(v, std::size_t(n) * c.batch * width, 2u * pass + 2u);
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
    // fp16 / bf16 activations: the kernels read q_t and write out_t; q holds q_t widened (the
    // queries the check's reference sees) and out gets out_t widened after the timed runs.
    void *q_t = nullptr, *out_t = nullptr;
    if (activations != kvcar::activation_type::f32) {
        BENCH_CHECK(cudaMalloc(&q_t, qn * kvcar::size_of(activations)));
        BENCH_CHECK(cudaMalloc(&out_t, qn * kvcar::size_of(activations)));
        convert_device(q, kvcar::output_activations(q_t, activations), qn);
        convert_device(kvcar::input_activations(q_t, activations), q, qn);
    }
    std::vector<std::int32_t> ints(2 * std::size_t(c.batch));
    for (int b = 0; b < c.batch; ++b) {
        ints[std::size_t(b)] = seqs[std::size_t(b)];
        ints[std::size_t(c.batch + b)] = c.context;
    }
    BENCH_CHECK(cudaMalloc(&dev_ints, ints.size() * sizeof(std::int32_t)));
    BENCH_CHECK(cudaMemcpy(dev_ints, ints.data(), ints.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));

    kvcar::kernels::decode_attention_params p;
    p.q = q_t ? kvcar::input_activations(q_t, activations) : kvcar::input_activations(q);
    p.out = out_t ? kvcar::output_activations(out_t, activations) : kvcar::output_activations(out);
    p.sequences = dev_ints;
    p.kv_lengths = dev_ints + c.batch;
    p.batch = c.batch;
    p.max_kv_length = c.context;
    p.layer = 0;
    p.n_heads = c.m.heads;
    kvcar::kernels::attention_workspace ws;
    ws.tune = tune;
    const auto view = cache.view();
    bool graph = false;
    const double ms = tm.median_ms(
        [&](cudaStream_t s) { kvcar::kernels::decode_attention(view, p, ws, s); }, graph);
    BENCH_CHECK(cudaGetLastError());
    BENCH_CHECK(cudaStreamSynchronize(tm.stream));
    // Read the flags of the path taken before the check (which launches nothing of kvcar's).
    const int splits = ws.last_splits;
    const kvcar::kernels::decode_path path = ws.last_path;
    const bool latent_tc = path == kvcar::kernels::decode_path::latent_tensor_cores;
    const bool direct_tc = path == kvcar::kernels::decode_path::direct_tensor_cores;
    if (out_t) convert_device(kvcar::input_activations(out_t, activations), out, qn);

    // Check the output of the last timed run against the CPU reference.
    check_result chk;
    bool check_skipped = false;
    {
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<float> q_host(qn), out_host(qn);
        BENCH_CHECK(cudaMemcpy(q_host.data(), q, qn * sizeof(float), cudaMemcpyDeviceToHost));
        BENCH_CHECK(cudaMemcpy(out_host.data(), out, qn * sizeof(float), cudaMemcpyDeviceToHost));
        const int H = c.m.heads, hd = c.m.head_dim, G = H / c.m.kv_heads;
        const float scale = 1.0f / std::sqrt(float(hd));
        std::vector<int> order{c.batch - 1};
        if (c.batch > 1) order.push_back(0);
        for (int stride = std::max(1, c.batch / 8), b = stride; b < c.batch - 1; b += stride)
            order.push_back(b);
        for (int b = 1; b < c.batch - 1; ++b)
            if (std::find(order.begin(), order.end(), b) == order.end()) order.push_back(b);
        std::size_t rb_max = 0;
        for (int slot = 0; slot < cache.n_slots(); ++slot)
            rb_max = std::max(rb_max, std::size_t(cache.host_codec(slot).bytes_per_group()));
        std::byte* staging = nullptr;
        BENCH_CHECK(cudaMalloc(&staging, rb_max * std::size_t(c.context)));
        std::vector<std::byte> krec(rb_max * std::size_t(c.context)), vrec(krec.size());
        std::vector<kvcar::page_view> views(std::size_t(cache.n_slots()));
        BENCH_CHECK(cudaMemcpy(views.data(), view.slots, views.size() * sizeof(kvcar::page_view),
                               cudaMemcpyDeviceToHost));
        auto fetch = [&](int slot, int seq, std::vector<std::byte>& dst) {
            const kvcar::page_view v = views[std::size_t(slot)];
            gather_records<<<256, 256>>>(v, seq, c.context, staging);
            BENCH_CHECK(cudaGetLastError());
            BENCH_CHECK(cudaMemcpy(dst.data(), staging, v.record_bytes * std::size_t(c.context),
                                   cudaMemcpyDeviceToHost));
        };
        std::vector<float> want(static_cast<std::size_t>(hd));
        if constexpr (!affine_codec<Codec>) {
            // Decoding every token of a row may cost far more than the budget (an autoencoder's
            // decoder at 32k tokens: minutes): time 64 decodes first and skip the check when one
            // row (K and V of two heads) would take more than 20 budgets.
            const int sk = layout.slot(0, 0, kvcar::kv_kind::key);
            fetch(sk, seqs[std::size_t(order[0])], krec);
            const int probe = std::min(64, c.context);
            const Codec& ck = cache.host_codec(sk);
            const std::size_t rb = views[std::size_t(sk)].record_bytes;
            std::vector<float> x(static_cast<std::size_t>(ck.group_width()));
            const auto p0 = std::chrono::steady_clock::now();
            for (int t = 0; t < probe; ++t) ck.decode(krec.data() + std::size_t(t) * rb, x.data());
            const double per_token =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count() / probe;
            check_skipped = per_token * c.context * 4.0 > 20.0 * check_budget_s;
        }
        for (int b : order) {
            if (check_skipped) break;
            const double spent =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (chk.rows > 0 && spent > check_budget_s) break;
            const int h1 = (b * 5) % H, h2 = (h1 + H / 2 + 1) % H;
            for (int h : {h1, h2}) {
                const int kvh = h / G, group = kvh / heads_per_group;
                const int in_group = kvh % heads_per_group;
                const int sk = layout.slot(0, group, kvcar::kv_kind::key);
                const int sv = layout.slot(0, group, kvcar::kv_kind::value);
                fetch(sk, seqs[std::size_t(b)], krec);
                fetch(sv, seqs[std::size_t(b)], vrec);
                const std::size_t row = (std::size_t(b) * H + h) * hd;
                reference_head(cache.host_codec(sk), cache.host_codec(sv), krec.data(),
                               vrec.data(), views[std::size_t(sk)].record_bytes, c.context,
                               in_group, hd, q_host.data() + row, scale, want.data());
                double diff = 0.0, mag = 1e-6;
                for (int i = 0; i < hd; ++i) {
                    const double got = out_host[row + std::size_t(i)];
                    diff = std::isfinite(got) ? std::max(diff, std::fabs(got - want[std::size_t(i)]))
                                              : INFINITY;
                    mag = std::max(mag, std::fabs(double(want[std::size_t(i)])));
                }
                chk.max_err = std::max(chk.max_err, diff / mag);
            }
            ++chk.rows;
        }
        BENCH_CHECK(cudaFree(staging));
    }
    // fp16 / bf16 outputs add one rounding of the output type (relative to the row's scale).
    const double out_rounding = activations == kvcar::activation_type::bf16  ? 1.0 / 256.0
                                : activations == kvcar::activation_type::f16 ? 1.0 / 2048.0
                                                                             : 0.0;
    const char* check = check_skipped                         ? "skipped"
                        : chk.max_err <= 5e-3 + out_rounding ? "ok"
                                                              : "FAIL";

    const double stored = double(cache.bytes_per_token()) * c.context * c.batch;
    const double fp16 = double(g.fp16_bytes_per_token()) * c.context * c.batch;
    std::printf("{\"impl\":\"kvcar\",\"codec\":\"%s\",\"gpu\":\"%s\",\"model\":\"%s\",\"batch\":%d,"
                "\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"context\":%d,\"ms\":%.6f,"
                "\"stored_bytes\":%.0f,\"fp16_bytes\":%.0f,\"bytes_per_token\":%zu,"
                "\"stored_gbps\":%.2f,\"splits\":%d,\"latent_tensor_cores\":%s,"
                "\"direct_tensor_cores\":%s,\"path\":\"%s\",\"timing\":\"%s\",\"reps\":%d,\"round\":%d,"
                "\"check\":\"%s\",\"check_err\":%.3e,\"check_rows\":%d,\"activations\":\"%s\","
                "\"tune\":\"w%d s%d c%d v%d r%d d%d k%d m%d%s\"}\n",
                codec_name, gpu, c.m.name, c.batch, c.m.heads, c.m.kv_heads, c.m.head_dim, c.context,
                ms, stored, fp16, cache.bytes_per_token(), stored / ms / 1e6, splits,
                latent_tc ? "true" : "false", direct_tc ? "true" : "false",
                kvcar::kernels::to_string(path), graph ? "graph" : "eager", tm.reps, round, check, chk.max_err,
                chk.rows, kvcar::to_string(activations), tune.latent_warps, tune.latent_stages, tune.latent_chunk,
                tune.latent_aux_vectors, tune.latent_lift_rows, tune.direct_ctas_per_sm, tune.direct_chunk, tune.merge_many_splits, tune.dependent_launch ? " pdl" : "");
    std::fflush(stdout);
    ++rows_printed;
    BENCH_CHECK(cudaFree(q));
    BENCH_CHECK(cudaFree(out));
    if (q_t) BENCH_CHECK(cudaFree(q_t));
    if (out_t) BENCH_CHECK(cudaFree(out_t));
    BENCH_CHECK(cudaFree(dev_ints));
}

template <class Codec>
std::vector<Codec> per_slot(int slots, Codec c) { return std::vector<Codec>(std::size_t(slots), c); }

}  // namespace

int main(int argc, char** argv) {
    int reps = 31, round = 0;
    double check_s = 0.25;
    std::string grid = "quick", only_codec, only_model;
    int only_batch = 0, only_context = 0;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--grid") && i + 1 < argc) grid = argv[++i];
        else if (!std::strcmp(argv[i], "--codec") && i + 1 < argc) only_codec = argv[++i];
        else if (!std::strcmp(argv[i], "--model") && i + 1 < argc) only_model = argv[++i];
        else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) only_batch = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--context") && i + 1 < argc) only_context = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--round") && i + 1 < argc) round = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--check-seconds") && i + 1 < argc) check_s = std::atof(argv[++i]);
        else if (!std::strcmp(argv[i], "--latent-warps") && i + 1 < argc) tune.latent_warps = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--latent-stages") && i + 1 < argc) tune.latent_stages = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--latent-chunk") && i + 1 < argc) tune.latent_chunk = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--latent-aux-vectors") && i + 1 < argc) tune.latent_aux_vectors = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--latent-lift-rows") && i + 1 < argc) tune.latent_lift_rows = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--direct-ctas-per-sm") && i + 1 < argc) tune.direct_ctas_per_sm = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--direct-chunk") && i + 1 < argc) tune.direct_chunk = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--merge-many-splits") && i + 1 < argc) tune.merge_many_splits = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--dependent-launch")) tune.dependent_launch = true;
        else if (!std::strcmp(argv[i], "--activations") && i + 1 < argc &&
                 parse_activations(argv[i + 1], activations)) ++i;
        else { std::fprintf(stderr, "usage: decode_bench [--reps N] [--grid quick|full] [--codec NAME] [--model NAME] [--batch B] [--context L] [--round R] [--check-seconds S] [--latent-warps 8|16] [--latent-stages N] [--latent-chunk T] [--latent-aux-vectors 4|16] [--latent-lift-rows 1|2|4] [--direct-ctas-per-sm N] [--direct-chunk T] [--merge-many-splits N] [--dependent-launch] [--activations f32|f16|bf16]\n"); return 2; }
    }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) { std::fprintf(stderr, "decode_bench: no GPU\n"); return 1; }
    if (grid != "quick" && grid != "full") {
        std::fprintf(stderr, "decode_bench: --grid must be quick or full, got '%s'\n", grid.c_str());
        return 2;
    }
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
                        run("identity-f16", c, 1, per_slot(slots_head, kvcar::identity_codec<kvcar::f16>{hd}), tm, prop.name, round, check_s);
                    if (wanted("int8"))
                        run("int8", c, 1, per_slot(slots_head, kvcar::make_quantized<std::int8_t>(kvcar::identity_codec<float>{hd})), tm, prop.name, round, check_s);
                    // The linear codecs' parameters must outlive the host views handed to the cache.
                    const kvcar::linear_params head_half = random_linear(hd, hd / 2, 1, 7u);
                    const kvcar::linear_params layer_half = random_linear(D, D / 2, m.kv_heads, 11u);
                    const kvcar::linear_params layer_quarter = random_linear(D, D / 4, m.kv_heads, 13u);
                    if (wanted("linear-head-d/2"))
                        run("linear-head-d/2", c, 1, per_slot(slots_head, head_half.codec<kvcar::f16>()), tm, prop.name, round, check_s);
                    if (wanted("linear-layer-d/2"))
                        run("linear-layer-d/2", c, m.kv_heads, per_slot(slots_layer, layer_half.codec<kvcar::f16>()), tm, prop.name, round, check_s);
                    if (wanted("linear-layer-d/2-int8"))
                        run("linear-layer-d/2-int8", c, m.kv_heads,
                            per_slot(slots_layer, kvcar::make_quantized<std::int8_t>(layer_half.codec<float>())), tm, prop.name, round, check_s);
                    if (wanted("linear-layer-d/4"))
                        run("linear-layer-d/4", c, m.kv_heads, per_slot(slots_layer, layer_quarter.codec<kvcar::f16>()), tm, prop.name, round, check_s);
                    // The paper's autoencoder: its decoder's first layer runs per cached token on
                    // tensor cores (compute-bound), attention in the hidden space.
                    if (wanted("autoencoder-layer-d/2")) {
                        const kvcar::folded_autoencoder ae = random_autoencoder(D, D, D / 2, 17u);
                        run("autoencoder-layer-d/2", c, m.kv_heads, per_slot(slots_layer, ae.codec<kvcar::f16>()), tm, prop.name, round, check_s);
                    }
                }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "decode_bench: %s\n", e.what());
        return 1;
    }
    if (rows_printed == 0) {
        std::fprintf(stderr, "decode_bench: no row: no shape of --grid %s matches --model, --codec, "
                             "--batch and --context (the quick grid has batches 1, 32, 64 and "
                             "contexts 512, 4096, 32768; --grid full has them all)\n", grid.c_str());
        return 1;
    }
    return 0;
}
