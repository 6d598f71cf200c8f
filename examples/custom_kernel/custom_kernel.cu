// custom_kernel — your own attention kernel reading a kvcar cache through the device API only.
//
// The kernel below knows nothing about how records are stored: it asks the cache_view where a
// (layer, group, K/V) slot is, and a block_decode turns a tile of records into floats in shared
// memory. The same kernel therefore runs on an fp16 cache, a low-rank one, the paper's
// autoencoder or an int8 one; here it runs on two, and checks itself against kvcar's CPU
// reference attention reading the very same records.
//
// Build: part of kvcar's examples when CUDA is found (target kvcar-custom-kernel). Run it with no
// arguments; without a GPU it says so and exits 0.
#include <kvcar/kvcar.hpp>

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/device/cache_view.cuh>
#include <kvcar/device/decode.cuh>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>

namespace {

constexpr int threads = 128;
constexpr int tile = 16;
constexpr int max_head_dim = 256;

/// Decode attention, one block per (sequence, query head), one pass with an online softmax:
/// for each tile of 16 tokens, decode the keys, score them, rescale the running output, decode
/// the values and accumulate. Simple rather than fast (kvcar::kernels::decode_attention splits
/// long sequences over many blocks); the point is that every record is read through kvcar.
template <class Codec>
__global__ void my_decode_attention(kvcar::device::cache_view<Codec> cache, int layer,
                                    const int* sequences, const int* lengths, const float* q,
                                    float* out, int n_heads, float scale) {
    using decoder = kvcar::device::block_decode<Codec, threads, tile>;
    extern __shared__ float smem[];
    __shared__ float query[max_head_dim], acc[max_head_dim], probs[tile];
    __shared__ float running_max, running_sum, correction;

    const int b = int(blockIdx.x), h = int(blockIdx.y);
    const int hd = cache.head_dim, D = cache.group_width();
    const int kv_head = h / (n_heads / cache.n_kv_heads);
    const int group = kv_head / cache.heads_per_group;
    const int offset = (kv_head % cache.heads_per_group) * hd;  // this head inside the group
    const int seq = sequences[b], length = lengths[b];

    const int k_slot = cache.slot(layer, group, kvcar::kv_kind::key);
    const int v_slot = cache.slot(layer, group, kvcar::kv_kind::value);
    const Codec k_codec = cache.codecs[k_slot], v_codec = cache.codecs[v_slot];
    float* rows = smem;                 // [tile][D] decoded keys, then values
    decoder dec(smem + tile * D);       // the decoder's scratch follows

    for (int i = int(threadIdx.x); i < hd; i += threads) {
        query[i] = q[(std::size_t(b) * n_heads + h) * hd + i] * scale;
        acc[i] = 0.0f;
    }
    if (threadIdx.x == 0) {
        running_max = -INFINITY;
        running_sum = 0.0f;
    }
    __syncthreads();

    for (int t0 = 0; t0 < length; t0 += tile) {
        const int n = min(tile, length - t0);
        dec.decode(k_codec, cache.slots[k_slot], seq, t0, n, rows, D);  // synchronizes
        if (int(threadIdx.x) < n) {
            const float* key = rows + threadIdx.x * D + offset;
            float s = 0.0f;
            for (int i = 0; i < hd; ++i) s += query[i] * key[i];
            probs[threadIdx.x] = s;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float m = running_max;
            for (int t = 0; t < n; ++t) m = fmaxf(m, probs[t]);
            correction = expf(running_max - m);  // 0 on the first tile (exp(-inf))
            float sum = running_sum * correction;
            for (int t = 0; t < n; ++t) {
                probs[t] = expf(probs[t] - m);
                sum += probs[t];
            }
            running_max = m;
            running_sum = sum;
        }
        __syncthreads();
        dec.decode(v_codec, cache.slots[v_slot], seq, t0, n, rows, D);
        for (int i = int(threadIdx.x); i < hd; i += threads) {
            float a = acc[i] * correction;
            for (int t = 0; t < n; ++t) a += probs[t] * rows[t * D + offset + i];
            acc[i] = a;
        }
        __syncthreads();
    }
    for (int i = int(threadIdx.x); i < hd; i += threads) {
        out[(std::size_t(b) * n_heads + h) * hd + i] =
            running_sum > 0.0f ? acc[i] / running_sum : 0.0f;
    }
}

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) {
        std::fprintf(stderr, "custom_kernel: %s: %s\n", what, cudaGetErrorString(status));
        std::exit(1);
    }
}

/// Fills a host cache with random tokens, mirrors it on the device, runs the kernel above for
/// every sequence of layer 1, and returns the largest difference from the CPU reference.
template <class Codec>
float run(const char* name, const Codec& codec, int heads_per_group) {
    const kvcar::kv_geometry g{2, 2, 64};  // 2 layers, 2 KV heads of 64
    const int n_heads = 8;                 // GQA: 4 query heads per KV head
    const kvcar::dense_layout layout(g, heads_per_group);
    kvcar::kv_cache<Codec, kvcar::dense_layout, kvcar::paged_storage> host(
        layout, codec, {.max_sequences = 4, .max_tokens = 128, .page_size = 16, .n_pages = 24});
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    const std::vector<int> lengths{1, 37, 100};
    std::vector<int> sequences;
    for (int length : lengths) {
        const int seq = host.add_sequence();
        sequences.push_back(seq);
        for (int layer = 0; layer < g.n_layers; ++layer) {
            std::vector<float> k(std::size_t(length) * g.token_width()), v(k.size());
            for (float& x : k) x = normal(rng);
            for (float& x : v) x = normal(rng);
            host.append(seq, layer, k, v);
        }
    }
    kvcar::gpu::device_kv_cache<Codec> device(layout, codec, {4, 128, 16, 24});
    device.copy_from(host);

    const int batch = int(sequences.size()), layer = 1;
    std::vector<float> q(std::size_t(batch) * n_heads * g.head_dim);
    for (float& x : q) x = normal(rng);
    kvcar::gpu::device_buffer<float> q_dev(q), out_dev(q.size());
    kvcar::gpu::device_buffer<int> seq_dev(sequences), len_dev(lengths);
    const int D = layout.group_width();
    const std::size_t smem =
        sizeof(float) * (tile * D + kvcar::device::decode_scratch_floats(codec, tile));
    my_decode_attention<<<dim3(batch, n_heads), threads, smem>>>(
        device.view(), layer, seq_dev.data(), len_dev.data(), q_dev.data(), out_dev.data(),
        n_heads, 1.0f / std::sqrt(float(g.head_dim)));
    check(cudaGetLastError(), "launch");
    const std::vector<float> got = out_dev.to_host();

    float worst = 0.0f;
    const std::size_t width = std::size_t(n_heads) * g.head_dim;
    std::vector<float> want(width);
    kvcar::attention_params opt;
    opt.n_heads = n_heads;
    for (int b = 0; b < batch; ++b) {
        kvcar::reference_decode_attention(host, sequences[std::size_t(b)], layer, opt,
                                          std::span<const float>(q).subspan(b * width, width),
                                          want);
        for (std::size_t i = 0; i < width; ++i)
            worst = std::max(worst, std::fabs(got[b * width + i] - want[i]));
    }
    std::printf("custom_kernel: %-34s max |error| vs CPU reference = %.3g\n", name, worst);
    return worst;
}

/// The program takes no options: -h/--help says what it does, anything else is refused.
/// Returns the exit status when the program should stop here, or -1 to run.
int handle_arguments(int argc, char** argv) {
    const char* usage =
        "usage: %s [-h | --help]\n"
        "Runs a hand-written CUDA attention kernel that reads kvcar caches (fp16 and low-rank)\n"
        "through the device API and checks it against kvcar's CPU reference. Without a GPU it\n"
        "says so and exits 0.\n";
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            std::printf(usage, "kvcar-custom-kernel");
            return 0;
        }
        std::fprintf(stderr, "error: kvcar-custom-kernel: unknown argument '%s' (it takes no options; see --help)\n",
                     arg.c_str());
        return 2;
    }
    return -1;
}

}  // namespace

int main(int argc, char** argv) {
    if (const int status = handle_arguments(argc, argv); status >= 0) return status;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("custom_kernel: no GPU found; nothing to run (built fine)\n");
        return 0;
    }
    float worst = 0.0f;
    try {
        worst = std::max(worst, run("fp16 cache (identity<f16>)", kvcar::identity_codec<kvcar::f16>{64}, 1));

        // The paper's autoencoder on whole layers (2 heads of 64 -> latent 48), weights random.
        kvcar::folded_autoencoder ae;
        ae.width = 128;
        ae.hidden = 96;
        ae.latent = 48;
        std::mt19937 rng(3);
        std::normal_distribution<float> normal(0.0f, 0.1f);
        for (auto* a : {&ae.enc1_w, &ae.dec2_wt}) a->resize(96 * 128);
        for (auto* a : {&ae.enc2_wt, &ae.dec1_w}) a->resize(96 * 48);
        ae.enc1_b.resize(96);
        ae.dec1_b.resize(96);
        ae.enc2_b.resize(48);
        ae.dec2_b.resize(128);
        for (auto* a : {&ae.enc1_w, &ae.enc1_b, &ae.enc2_wt, &ae.enc2_b, &ae.dec1_w, &ae.dec1_b,
                        &ae.dec2_wt, &ae.dec2_b})
            for (float& x : *a) x = normal(rng);
        worst = std::max(worst, run("int8 autoencoder latents, per layer",
                                    kvcar::make_quantized(ae.codec<float>()), 2));
    } catch (const kvcar::error& e) {
        std::fprintf(stderr, "custom_kernel: %s\n", e.what());
        return 1;
    }
    const bool ok = worst < 1e-3f;
    std::printf("custom_kernel: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
