// FlashInfer's batch decode as a peer of kvcar's decode attention, timed the way decode_bench
// times kvcar (same shapes, same L2 flush, CUDA graph, median of --reps) and printed in the same
// JSONL form as bench/peers.py's rows ("peer": "flashinfer").
//
// FlashInfer is not part of kvcar and none of its code is in this repository: its headers come
// at build time from -DFLASHINFER_INCLUDE_DIR (the include/ folder of the flashinfer-python
// wheel; bench/run_speed.sh unpacks it into .fi/include). What runs is the library's C++ entry
// of BatchDecodeWithPagedKVCache for the CUDA-core decode kernel (the one its Python
// BatchDecodeWithPagedKVCacheWrapper picks for these head dims without use_tensor_cores):
//   plan  DecodePlan on the host (the split-KV partition from the lengths), once per shape;
//   run   BatchDecodeWithPagedKVCacheDispatched (+ its merge of the partitions) — timed.
// Cache: paged fp16 K and V, page size 16, NHD layout ([page][token][kv head][head dim]),
// pages of a sequence scattered (a fixed permutation), q and o fp16, as a runtime holds them.
// Checked: the first and last rows, two heads each, against a CPU reference in double.
//
//     flashinfer_peer [--reps 31] [--grid quick|full] [--model NAME] [--batch B]
//                     [--context L] [--round R] > flashinfer.jsonl
#include <flashinfer/attention/decode.cuh>
#include <flashinfer/attention/default_decode_params.cuh>
#include <flashinfer/attention/scheduler.cuh>
#include <flashinfer/attention/variants.cuh>
#include <flashinfer/page.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

#define PEER_CHECK(call)                                                                        \
    do {                                                                                        \
        cudaError_t e_ = (call);                                                                \
        if (e_ != cudaSuccess) {                                                                \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call,                   \
                         cudaGetErrorString(e_));                                               \
            std::exit(1);                                                                       \
        }                                                                                       \
    } while (0)

struct model_shape {
    const char* name;
    int heads, kv_heads, head_dim;
};
// decode_bench's shapes and grid (bench/peers.py lists the same).
constexpr model_shape models[] = {{"gpt2-small", 12, 12, 64},
                                  {"tinyllama", 32, 4, 64},
                                  {"llama3-8b", 32, 8, 128}};

// Deterministic pseudo-random fp16 values in [-1, 1).
__global__ void fill_random_half(__half* x, std::size_t n, unsigned seed) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
         i += std::size_t(gridDim.x) * blockDim.x) {
        unsigned h = unsigned(i) * 2654435761u ^ (seed * 0x9e3779b9u);
        h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
        x[i] = __float2half(float(h & 0xffffff) / 8388608.0f - 1.0f);
    }
}

double median_of(std::vector<float> t) {
    std::sort(t.begin(), t.end());
    const std::size_t n = t.size();
    return n % 2 ? t[n / 2] : 0.5 * (double(t[n / 2 - 1]) + double(t[n / 2]));
}

// The timer of decode_bench: L2 flush, CUDA graph replay, median of reps.
struct timer {
    int reps;
    float* flush = nullptr;
    std::size_t flush_bytes = 0;
    cudaEvent_t start, stop;
    cudaStream_t stream;

    explicit timer(int r) : reps(r) {
        int dev = 0, l2 = 0;
        PEER_CHECK(cudaGetDevice(&dev));
        PEER_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
        flush_bytes = std::size_t(std::max(l2, 1 << 20)) * 2;
        PEER_CHECK(cudaMalloc(&flush, flush_bytes));
        PEER_CHECK(cudaEventCreate(&start));
        PEER_CHECK(cudaEventCreate(&stop));
        PEER_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    }
    double median_ms(const std::function<cudaError_t(cudaStream_t)>& fn, bool& graph) {
        for (int i = 0; i < 3; ++i) PEER_CHECK(fn(stream));
        PEER_CHECK(cudaStreamSynchronize(stream));
        graph = false;
        cudaGraph_t g = nullptr;
        cudaGraphExec_t exec = nullptr;
        if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed) == cudaSuccess) {
            const cudaError_t ran = fn(stream);
            const cudaError_t end = cudaStreamEndCapture(stream, &g);
            if (ran == cudaSuccess && end == cudaSuccess && g &&
                cudaGraphInstantiate(&exec, g, 0) == cudaSuccess)
                graph = true;
            if (g) cudaGraphDestroy(g);
            (void)cudaGetLastError();
        }
        std::vector<float> t;
        for (int i = 0; i < reps; ++i) {
            PEER_CHECK(cudaMemsetAsync(flush, i & 0xff, flush_bytes, stream));
            PEER_CHECK(cudaEventRecord(start, stream));
            if (graph) PEER_CHECK(cudaGraphLaunch(exec, stream));
            else PEER_CHECK(fn(stream));
            PEER_CHECK(cudaEventRecord(stop, stream));
            PEER_CHECK(cudaEventSynchronize(stop));
            float ms = 0;
            PEER_CHECK(cudaEventElapsedTime(&ms, start, stop));
            t.push_back(ms);
        }
        if (exec) PEER_CHECK(cudaGraphExecDestroy(exec));
        return median_of(std::move(t));
    }
};

using params_t = flashinfer::BatchDecodeParams<__half, __half, __half, std::int32_t>;
using variant_t = flashinfer::DefaultAttention</*custom_mask=*/false, /*sliding_window=*/false,
                                               /*logits_soft_cap=*/false, /*alibi=*/false>;
constexpr auto no_rope = flashinfer::PosEncodingMode::kNone;

/// Runs body.template operator()<HEAD_DIM, GROUP>() for the shapes FlashInfer's decode kernel
/// is instantiated for here; false for any other.
template <class Body>
bool dispatch_shape(int head_dim, int group, Body&& body) {
    auto by_group = [&]<int D>() {
        switch (group) {
            case 1: body.template operator()<D, 1>(); return true;
            case 4: body.template operator()<D, 4>(); return true;
            case 8: body.template operator()<D, 8>(); return true;
            default: return false;
        }
    };
    if (head_dim == 64) return by_group.template operator()<64>();
    if (head_dim == 128) return by_group.template operator()<128>();
    return false;
}

template <int D, int GROUP>
void run_shape(const model_shape& m, int batch, int context, timer& tm, const char* gpu,
               int round) {
    const int page = 16, H = m.heads, KV = m.kv_heads;
    const int pages_per_seq = (context + page - 1) / page;
    const int n_pages = batch * pages_per_seq;
    const std::size_t page_elems = std::size_t(page) * KV * D;
    __half *k = nullptr, *v = nullptr, *q = nullptr, *o = nullptr;
    PEER_CHECK(cudaMalloc(&k, page_elems * n_pages * sizeof(__half)));
    PEER_CHECK(cudaMalloc(&v, page_elems * n_pages * sizeof(__half)));
    const std::size_t qn = std::size_t(batch) * H * D;
    PEER_CHECK(cudaMalloc(&q, qn * sizeof(__half)));
    PEER_CHECK(cudaMalloc(&o, qn * sizeof(__half)));
    fill_random_half<<<1024, 256>>>(k, page_elems * n_pages, 1u);
    fill_random_half<<<1024, 256>>>(v, page_elems * n_pages, 2u);
    fill_random_half<<<1024, 256>>>(q, qn, 99u);
    PEER_CHECK(cudaGetLastError());

    // Block table: sequence b owns pages indices[indptr[b] .. indptr[b+1]), scattered by a
    // fixed odd stride so that consecutive pages of a sequence are not adjacent in memory.
    std::vector<std::int32_t> indptr(std::size_t(batch) + 1);
    std::vector<std::int32_t> indices(static_cast<std::size_t>(n_pages));
    std::vector<std::int32_t> last(static_cast<std::size_t>(batch));
    const long long stride = 7919;  // prime: a permutation unless n_pages is a multiple
    const bool permute = n_pages % stride != 0;
    for (int b = 0; b <= batch; ++b) indptr[std::size_t(b)] = b * pages_per_seq;
    for (int i = 0; i < n_pages; ++i)
        indices[std::size_t(i)] = permute ? int((i * stride) % n_pages) : i;
    for (int b = 0; b < batch; ++b) last[std::size_t(b)] = context - (pages_per_seq - 1) * page;
    std::int32_t *indptr_d = nullptr, *indices_d = nullptr, *last_d = nullptr;
    PEER_CHECK(cudaMalloc(&indptr_d, indptr.size() * sizeof(std::int32_t)));
    PEER_CHECK(cudaMalloc(&indices_d, indices.size() * sizeof(std::int32_t)));
    PEER_CHECK(cudaMalloc(&last_d, last.size() * sizeof(std::int32_t)));
    PEER_CHECK(cudaMemcpy(indptr_d, indptr.data(), indptr.size() * 4, cudaMemcpyHostToDevice));
    PEER_CHECK(cudaMemcpy(indices_d, indices.data(), indices.size() * 4, cudaMemcpyHostToDevice));
    PEER_CHECK(cudaMemcpy(last_d, last.data(), last.size() * 4, cudaMemcpyHostToDevice));

    // Plan (host): workspace sizes, then the partition into the workspaces.
    auto estimate = flashinfer::BatchDecodeWithPagedKVCacheWorkEstimationDispatched<
        GROUP, D, no_rope, variant_t, params_t>;
    std::size_t float_bytes = 0, int_bytes = 0;
    PEER_CHECK((flashinfer::DecodePlanWorkspaceSize<D, no_rope, variant_t, params_t>(
        float_bytes, int_bytes, indptr.data(), unsigned(batch), unsigned(H), unsigned(page),
        /*enable_cuda_graph=*/false, tm.stream, estimate)));
    float_bytes = std::max<std::size_t>(float_bytes, 16);
    int_bytes = std::max<std::size_t>(int_bytes, 16);
    void *float_ws = nullptr, *int_ws = nullptr, *int_host = nullptr;
    PEER_CHECK(cudaMalloc(&float_ws, float_bytes));
    PEER_CHECK(cudaMalloc(&int_ws, int_bytes));
    PEER_CHECK(cudaMallocHost(&int_host, int_bytes));
    flashinfer::DecodePlanInfo plan;
    PEER_CHECK((flashinfer::DecodePlan<D, no_rope, variant_t, params_t>(
        float_ws, float_bytes, int_ws, int_host, int_bytes, plan, indptr.data(), unsigned(batch),
        unsigned(H), unsigned(page), /*enable_cuda_graph=*/false, tm.stream, estimate)));
    PEER_CHECK(cudaStreamSynchronize(tm.stream));

    flashinfer::paged_kv_t<__half, std::int32_t> kv(unsigned(KV), unsigned(page), unsigned(D),
                                                    unsigned(batch), flashinfer::QKVLayout::kNHD,
                                                    k, v, indices_d, indptr_d, last_d);
    params_t p;
    p.q = q;
    p.paged_kv = kv;
    p.o = o;
    p.lse = nullptr;
    p.num_qo_heads = unsigned(H);
    p.q_stride_n = H * D;
    p.q_stride_h = D;
    p.window_left = -1;
    p.logits_soft_cap = 0.0f;
    p.sm_scale = 1.0f / std::sqrt(float(D));
    p.rope_rcp_scale = 1.0f;
    p.rope_rcp_theta = 1.0f / 1e4f;
    auto base = [](void* ws, std::int64_t off) { return static_cast<char*>(ws) + off; };
    p.request_indices = reinterpret_cast<std::int32_t*>(base(int_ws, plan.request_indices_offset));
    p.kv_tile_indices = reinterpret_cast<std::int32_t*>(base(int_ws, plan.kv_tile_indices_offset));
    p.o_indptr = reinterpret_cast<std::int32_t*>(base(int_ws, plan.o_indptr_offset));
    p.kv_chunk_size_ptr =
        reinterpret_cast<std::int32_t*>(base(int_ws, plan.kv_chunk_size_ptr_offset));
    __half* tmp_v = nullptr;
    float* tmp_s = nullptr;
    if (plan.split_kv) {
        tmp_v = reinterpret_cast<__half*>(base(float_ws, plan.v_offset));
        tmp_s = reinterpret_cast<float*>(base(float_ws, plan.s_offset));
    }
    p.padded_batch_size = unsigned(plan.padded_batch_size);

    bool graph = false;
    const double ms = tm.median_ms(
        [&](cudaStream_t s) {
            return flashinfer::BatchDecodeWithPagedKVCacheDispatched<D, no_rope, variant_t>(
                p, tmp_v, tmp_s, /*enable_pdl=*/false, s);
        },
        graph);
    PEER_CHECK(cudaStreamSynchronize(tm.stream));

    // Check rows first and last, heads h and h + H/2 + 1, against a CPU reference.
    double max_err = 0.0;
    {
        std::vector<__half> qh(qn), oh(qn), kp(page_elems), vp(page_elems);
        PEER_CHECK(cudaMemcpy(qh.data(), q, qn * 2, cudaMemcpyDeviceToHost));
        PEER_CHECK(cudaMemcpy(oh.data(), o, qn * 2, cudaMemcpyDeviceToHost));
        std::vector<int> rows{0};
        if (batch > 1) rows.push_back(batch - 1);
        for (int b : rows) {
            // This sequence's K and V, [token][kv head][D], gathered page by page.
            std::vector<float> ks(std::size_t(context) * KV * D), vs(ks.size());
            for (int pg = 0; pg < pages_per_seq; ++pg) {
                const std::size_t id = std::size_t(indices[std::size_t(b * pages_per_seq + pg)]);
                PEER_CHECK(cudaMemcpy(kp.data(), k + id * page_elems, page_elems * 2,
                                      cudaMemcpyDeviceToHost));
                PEER_CHECK(cudaMemcpy(vp.data(), v + id * page_elems, page_elems * 2,
                                      cudaMemcpyDeviceToHost));
                for (std::size_t i = 0; i < page_elems; ++i) {
                    const std::size_t at = std::size_t(pg) * page_elems + i;
                    if (at < ks.size()) {
                        ks[at] = __half2float(kp[i]);
                        vs[at] = __half2float(vp[i]);
                    }
                }
            }
            for (int h : {(b * 5) % H, ((b * 5) % H + H / 2 + 1) % H}) {
                const int kvh = h / GROUP;
                const __half* qr = qh.data() + (std::size_t(b) * H + h) * D;
                std::vector<double> s(static_cast<std::size_t>(context));
                for (int t = 0; t < context; ++t) {
                    double dot = 0.0;
                    for (int i = 0; i < D; ++i)
                        dot += double(__half2float(qr[i])) *
                               ks[(std::size_t(t) * KV + kvh) * D + std::size_t(i)];
                    s[std::size_t(t)] = dot / std::sqrt(double(D));
                }
                const double mx = *std::max_element(s.begin(), s.end());
                double l = 0.0;
                std::vector<double> acc(std::size_t(D), 0.0);
                for (int t = 0; t < context; ++t) {
                    const double a = std::exp(s[std::size_t(t)] - mx);
                    l += a;
                    for (int i = 0; i < D; ++i)
                        acc[std::size_t(i)] += a * vs[(std::size_t(t) * KV + kvh) * D + std::size_t(i)];
                }
                double diff = 0.0, mag = 1e-6;
                for (int i = 0; i < D; ++i) {
                    const double got = __half2float(oh[(std::size_t(b) * H + h) * D + std::size_t(i)]);
                    const double want = acc[std::size_t(i)] / l;
                    diff = std::isfinite(got) ? std::max(diff, std::fabs(got - want)) : INFINITY;
                    mag = std::max(mag, std::fabs(want));
                }
                max_err = std::max(max_err, diff / mag);
            }
        }
    }
    // fp16 output: its own rounding is 2^-11 of the head's scale; 1e-2 flags a wrong result.
    const bool ok = max_err <= 1e-2;
    const double kv_bytes = 2.0 * double(batch) * context * KV * D * 2;
    std::printf("{\"peer\":\"flashinfer\",\"model\":\"%s\",\"gpu\":\"%s\",\"batch\":%d,"
                "\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"context\":%d,\"kv_bytes\":%.0f,"
                "\"round\":%d,\"reps\":%d,\"ms\":%.6f,\"timing\":\"%s\",\"gbps\":%.2f,"
                "\"split_kv\":%s,\"page_size\":%d,\"check\":\"%s\",\"check_err\":%.3e}\n",
                m.name, gpu, batch, H, KV, D, context, kv_bytes, round, tm.reps, ms,
                graph ? "graph" : "eager", kv_bytes / ms / 1e6, plan.split_kv ? "true" : "false",
                page, ok ? "ok" : "FAIL", max_err);
    std::fflush(stdout);
    for (void* ptr : {(void*)k, (void*)v, (void*)q, (void*)o, (void*)indptr_d, (void*)indices_d,
                      (void*)last_d, float_ws, int_ws})
        PEER_CHECK(cudaFree(ptr));
    PEER_CHECK(cudaFreeHost(int_host));
}

}  // namespace

int main(int argc, char** argv) {
    int reps = 31, round = 0, only_batch = 0, only_context = 0;
    std::string grid = "quick", only_model;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--grid") && i + 1 < argc) grid = argv[++i];
        else if (!std::strcmp(argv[i], "--model") && i + 1 < argc) only_model = argv[++i];
        else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) only_batch = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--context") && i + 1 < argc) only_context = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--round") && i + 1 < argc) round = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "usage: flashinfer_peer [--reps N] [--grid quick|full] [--model NAME] "
                                 "[--batch B] [--context L] [--round R]\n");
            return 2;
        }
    }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        std::fprintf(stderr, "flashinfer_peer: no GPU\n");
        return 1;
    }
    cudaDeviceProp prop{};
    PEER_CHECK(cudaGetDeviceProperties(&prop, 0));
    timer tm(reps);
    const std::vector<int> batches = grid == "full" ? std::vector<int>{1, 8, 32, 64}
                                                    : std::vector<int>{1, 32, 64};
    const std::vector<int> contexts = grid == "full"
                                          ? std::vector<int>{512, 2048, 4096, 8192, 16384, 32768}
                                          : std::vector<int>{512, 4096, 32768};
    for (const model_shape& m : models)
        for (int b : batches)
            for (int L : contexts) {
                if (!only_model.empty() && only_model != m.name) continue;
                if ((only_batch && b != only_batch) || (only_context && L != only_context)) continue;
                if (4.0 * b * L * m.kv_heads * m.head_dim / 1e9 > 24.0) continue;  // as decode_bench
                const bool ran = dispatch_shape(m.head_dim, m.heads / m.kv_heads,
                                                [&]<int D, int GROUP>() {
                                                    run_shape<D, GROUP>(m, b, L, tm, prop.name, round);
                                                });
                if (!ran) std::fprintf(stderr, "flashinfer_peer: %s not instantiated\n", m.name);
            }
    return 0;
}
