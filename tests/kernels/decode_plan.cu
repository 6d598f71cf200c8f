// Tests for kvcar/kernels/decode_plan.cuh: a planned step gives the very bytes decode_attention
// gives, on every path, and so does decode_attention with programmatic dependent launch; its runs
// capture into a CUDA graph from a workspace that never grew
// before the plan; the device-cache forms (planned for the cache's capacity) give the bytes of
// decode_attention's device-cache form; launches that do not fit the plan are refused before
// anything is enqueued.
#include "kernels/decode_check.cuh"
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/decode_attention.cuh>
#include <kvcar/kernels/decode_plan.cuh>
#include <kvcar/layout/dense.hpp>

#include <cstdint>
#include <string>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

namespace {

/// One decode step over every layer of a device cache: queries, outputs and the index arrays.
struct step_buffers {
    int batch = 0, n_heads = 0, head_dim = 0, n_layers = 0, max_len = 0;
    gpu::device_buffer<std::int32_t> ints;  // sequences, then kv_lengths
    gpu::device_buffer<float> q;            // [n_layers][batch][n_heads][head_dim]
    gpu::device_buffer<float> out;          // same shape

    kernels::decode_attention_params params(int layer) const {
        const std::size_t per_layer = std::size_t(batch) * n_heads * head_dim;
        kernels::decode_attention_params p;
        p.q = q.data() + per_layer * layer;
        p.out = const_cast<float*>(out.data()) + per_layer * layer;
        p.sequences = ints.data();
        p.kv_lengths = ints.data() + batch;
        p.batch = batch;
        p.max_kv_length = max_len;
        p.layer = layer;
        p.n_heads = n_heads;
        return p;
    }
};

template <class Cache>
step_buffers make_step(const Cache& host, const std::vector<int>& sequences, int n_heads,
                       std::uint32_t seed) {
    const kv_geometry g = host.geometry();
    step_buffers s;
    s.batch = int(sequences.size());
    s.n_heads = n_heads;
    s.head_dim = g.head_dim;
    s.n_layers = g.n_layers;
    std::vector<std::int32_t> ints(sequences.begin(), sequences.end());
    for (int seq : sequences) {
        ints.push_back(host.length(seq, 0));
        s.max_len = std::max(s.max_len, host.length(seq, 0));
    }
    s.ints = gpu::device_buffer<std::int32_t>(ints);
    const std::size_t n = std::size_t(g.n_layers) * s.batch * n_heads * g.head_dim;
    s.q = gpu::device_buffer<float>(random_floats(n, seed));
    s.out = kvcar_test::poisoned(n);
    return s;
}

/// decode_attention layer by layer, then the planned step (eagerly, then as a captured graph
/// from a fresh workspace): all three must give the same bytes, on the path the plan recorded.
template <class Codec>
void check_planned(const kv_geometry& g, int n_heads, const Codec& codec, const char* what,
                   int heads_per_group = 1) {
    INFO(what);
    const dense_layout layout(g, heads_per_group);
    const std::vector<Codec> codecs(std::size_t(layout.n_slots()), codec);
    auto c = kvcar_test::make_interleaved_caches(layout, codecs, {700, 1, 0, 1500, 64}, 71u);
    step_buffers s = make_step(c.host, c.sequences, n_heads, 5u);

    kernels::attention_workspace ws_eager;
    std::vector<kernels::decode_path> eager_paths;
    for (int layer = 0; layer < g.n_layers; ++layer) {
        kernels::decode_attention(c.device.view(), s.params(layer), ws_eager);
        eager_paths.push_back(ws_eager.last_path);
    }
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> eager = s.out.to_host();

    // Planned, eager runs.
    kernels::attention_workspace ws;
    const kernels::decode_plan plan =
        kernels::plan_decode_attention(c.device.view(), s.params(0), ws);
    REQUIRE(plan.paths == eager_paths);
    // The plan sized the workspace; runs never reallocate it, so a graph of them stays valid
    // while growths() holds (what a caller capturing the step checks).
    const std::uint64_t planned_growths = ws.growths();
    s.out = kvcar_test::poisoned(eager.size());
    for (int layer = 0; layer < g.n_layers; ++layer) {
        kernels::run_decode_attention(plan, c.device.view(), s.params(layer), ws);
        REQUIRE(ws.last_path == plan.paths[std::size_t(layer)]);
    }
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
    REQUIRE(s.out.to_host() == eager);
    REQUIRE(ws.growths() == planned_growths);

    // The device-cache forms a model calls, planned for the cache's capacity (longer than any
    // context of this step: the splits follow each run's own lengths) and run with the lengths
    // read from the cache: the same bytes as decode_attention's device-cache form.
    const attention_params opt{.n_heads = n_heads, .scale = 0.0f, .causal = true,
                               .rope = rope_mode::none, .rope_cfg = {}};
    const std::size_t per_layer = std::size_t(s.batch) * n_heads * g.head_dim;
    kernels::attention_workspace ws_form;
    s.out = kvcar_test::poisoned(eager.size());
    for (int layer = 0; layer < g.n_layers; ++layer)
        kernels::decode_attention(c.device, layer, c.sequences, s.q.data() + per_layer * layer,
                                  s.out.data() + per_layer * layer, opt, ws_form);
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> by_form = s.out.to_host();
    REQUIRE(c.device.max_tokens() > s.max_len);
    kernels::attention_workspace ws_cache;
    const kernels::decode_plan for_cache = kernels::plan_decode_attention(
        c.device, s.batch, c.device.max_tokens(), opt, ws_cache);
    REQUIRE(for_cache.paths == eager_paths);
    s.out = kvcar_test::poisoned(eager.size());
    for (int layer = 0; layer < g.n_layers; ++layer)
        kernels::run_decode_attention(for_cache, c.device, layer, c.sequences,
                                      s.q.data() + per_layer * layer,
                                      s.out.data() + per_layer * layer, opt, ws_cache);
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
    REQUIRE(s.out.to_host() == by_form);

    // Programmatic dependent launch (opt-in): the kernels overlap their launches, not their
    // work, so the bytes are the same.
    kernels::attention_workspace ws_pdl;
    ws_pdl.tune.dependent_launch = true;
    s.out = kvcar_test::poisoned(eager.size());
    for (int layer = 0; layer < g.n_layers; ++layer)
        kernels::decode_attention(c.device.view(), s.params(layer), ws_pdl);
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
    REQUIRE(s.out.to_host() == eager);

    // Planned runs captured into one graph, from a workspace that only the plan sized: a run
    // that grew the workspace would throw inside the capture.
    kernels::attention_workspace ws_graph;
    cudaStream_t stream = nullptr;
    KVCAR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const kernels::decode_plan again =
        kernels::plan_decode_attention(c.device.view(), s.params(0), ws_graph, stream);
    KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream));
    s.out = kvcar_test::poisoned(eager.size());
    cudaGraph_t graph = nullptr;
    KVCAR_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int layer = 0; layer < g.n_layers; ++layer)
        kernels::run_decode_attention(again, c.device.view(), s.params(layer), ws_graph, stream);
    KVCAR_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    KVCAR_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    KVCAR_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    KVCAR_CUDA_CHECK(cudaStreamSynchronize(stream));
    REQUIRE(s.out.to_host() == eager);
    KVCAR_CUDA_CHECK(cudaGraphExecDestroy(exec));
    KVCAR_CUDA_CHECK(cudaGraphDestroy(graph));
    KVCAR_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace

TEST_CASE("decode_plan: planned runs give decode_attention's bytes on every path", "[kernels]") {
    const kv_geometry g{2, 2, 64};
    check_planned(g, 8, identity_codec<f16>{64}, "identity f16 (direct tensor cores)");
    check_planned(g, 8, identity_codec<float>{64}, "identity f32 (direct)");
    check_planned(g, 4, make_quantized<std::int8_t>(identity_codec<float>{64}), "int8");
    const linear_params head = kvcar_test::random_linear(64, 24, 1, 5);
    check_planned(g, 8, head.codec<f16>(), "linear per head (latent)");
    const linear_params layer = kvcar_test::random_linear(128, 40, 2, 7);
    check_planned(g, 8, layer.codec<f16>(), "linear whole layer (latent tensor cores)", 2);
    const folded_autoencoder ae = kvcar_test::random_autoencoder(64, 48, 32, 9);
    check_planned(g, 8, ae.codec<f16>(), "autoencoder (tensor cores)");
}

TEST_CASE("decode_plan: a launch that does not fit the plan is refused", "[kernels]") {
    const kv_geometry g{2, 2, 64};
    const dense_layout layout(g);
    const std::vector<identity_codec<f16>> codecs(std::size_t(layout.n_slots()),
                                                  identity_codec<f16>{64});
    auto c = kvcar_test::make_interleaved_caches(layout, codecs, {100, 40}, 3u);
    step_buffers s = make_step(c.host, c.sequences, 4, 9u);
    kernels::attention_workspace ws;
    const kernels::decode_plan plan =
        kernels::plan_decode_attention(c.device.view(), s.params(0), ws);

    kernels::decode_attention_params p = s.params(1);
    p.batch = 1;
    KVCAR_REQUIRE_ERROR(kernels::run_decode_attention(plan, c.device.view(), p, ws),
                        "do not fit the plan");
    p = s.params(1);
    p.max_kv_length = plan.max_kv_length + 1;
    KVCAR_REQUIRE_ERROR(kernels::run_decode_attention(plan, c.device.view(), p, ws),
                        "plan again");
    p = s.params(1);
    p.n_heads = 8;
    KVCAR_REQUIRE_ERROR(kernels::run_decode_attention(plan, c.device.view(), p, ws),
                        "do not fit the plan");

    // Another cache geometry: three layers.
    const kv_geometry g3{3, 2, 64};
    const dense_layout layout3(g3);
    const std::vector<identity_codec<f16>> codecs3(std::size_t(layout3.n_slots()),
                                                   identity_codec<f16>{64});
    auto c3 = kvcar_test::make_interleaved_caches(layout3, codecs3, {100, 40}, 4u);
    KVCAR_REQUIRE_ERROR(kernels::run_decode_attention(plan, c3.device.view(), s.params(0), ws),
                        "not the planned one");
    // Bad shapes are refused at plan time, as decode_attention refuses them.
    p = s.params(0);
    p.n_heads = 3;
    KVCAR_REQUIRE_ERROR(kernels::plan_decode_attention(c.device.view(), p, ws),
                        "not a positive multiple");
}
