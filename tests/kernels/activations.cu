// Tests for the activation types (kvcar/cuda/activations.cuh): q and out in f16 or bf16, as
// runtimes hold them, on every decode path and both prefill paths, and k / v in f16 or bf16 on
// both append kernels.
//
// The kernels widen q to f32 when they load it and compute in f32 whatever its type, so with a
// query that f16 (bf16) represents exactly, the f16 (bf16) launch computes the very values of the
// f32 launch and differs only in the one rounding of the store: each output element must be,
// bit for bit, the f32 launch's element rounded to nearest even. That holds on every path, so
// the test asks for equality, not a tolerance. The f32 launch itself is checked against the CPU
// reference by the other kernel tests. An append from T k/v likewise writes the very bytes of an
// append from the same values in f32.
#include "kernels/decode_check.cuh"
#include "common/gpu_test.cuh"

#include <kvcar/cuda/activations.cuh>
#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/kernels/append.cuh>
#include <kvcar/kernels/decode_attention.cuh>
#include <kvcar/kernels/decode_plan.cuh>
#include <kvcar/kernels/prefill_attention.cuh>
#include <kvcar/layout/dense.hpp>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <utility>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

namespace {

/// T's bits of x rounded to nearest even (the host forms of the device conversions).
template <class T>
std::uint16_t rounded_bits(float x) {
    T t;
    if constexpr (std::is_same_v<T, __half>) t = __float2half_rn(x);
    else t = __float2bfloat16_rn(x);
    std::uint16_t bits;
    std::memcpy(&bits, &t, sizeof bits);
    return bits;
}

template <class T>
float widened(T t) {
    if constexpr (std::is_same_v<T, __half>) return __half2float(t);
    else return __bfloat162float(t);
}

/// n random values that T represents exactly, as T and widened to f32.
template <class T>
std::pair<std::vector<T>, std::vector<float>> representable(std::size_t n, std::uint32_t seed) {
    std::vector<T> t;
    std::vector<float> f;
    for (float x : random_floats(n, seed)) {
        if constexpr (std::is_same_v<T, __half>) t.push_back(__float2half_rn(x));
        else t.push_back(__float2bfloat16_rn(x));
        f.push_back(widened(t.back()));
    }
    return {t, f};
}

/// The number of elements of `got` (T) that are not `want` (f32) rounded once to T.
template <class T>
std::size_t rounding_mismatches(const std::vector<float>& want, const std::vector<T>& got) {
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, &got[i], sizeof bits);
        mismatches += bits != rounded_bits<T>(want[i]);
    }
    return mismatches;
}

/// One decode step of every layer in f32 and in T, from the same (T-representable) queries.
template <class T, class Codec>
void check_type(const Codec& codec, int n_heads, const char* what, int heads_per_group = 1,
                rope_mode rope = rope_mode::none) {
    INFO(what << (std::is_same_v<T, __half> ? ", f16" : ", bf16")
              << (rope == rope_mode::on_read ? ", RoPE on read" : ""));
    const kv_geometry g{2, 2, 64};
    const dense_layout layout(g, heads_per_group);
    const std::vector<Codec> codecs(std::size_t(layout.n_slots()), codec);
    // Odd lengths, a page boundary, one token and an empty sequence.
    auto c = kvcar_test::make_interleaved_caches(layout, codecs, {700, 1, 0, 1500, 65}, 29u);
    const int batch = int(c.sequences.size());
    const std::size_t per_layer = std::size_t(batch) * n_heads * g.head_dim;

    const auto [q_t, q_f] = representable<T>(per_layer, 13u);
    gpu::device_buffer<T> q_t_dev(q_t);
    gpu::device_buffer<float> q_f_dev(q_f);

    attention_params opt{.n_heads = n_heads, .scale = 0.0f, .causal = true, .rope = rope,
                         .rope_cfg = {}};
    for (int layer = 0; layer < g.n_layers; ++layer) {
        kernels::attention_workspace ws;
        gpu::device_buffer<float> out_f = kvcar_test::poisoned(per_layer);
        kernels::decode_attention(c.device, layer, c.sequences, q_f_dev.data(), out_f.data(), opt,
                                  ws);
        const kernels::decode_path f32_path = ws.last_path;

        // The device-cache form takes __half / __nv_bfloat16 pointers as they are.
        gpu::device_buffer<T> out_t(per_layer);
        KVCAR_CUDA_CHECK(cudaMemset(out_t.data(), 0xff, per_layer * sizeof(T)));  // NaN
        kernels::decode_attention(c.device, layer, c.sequences, q_t_dev.data(), out_t.data(), opt,
                                  ws);
        REQUIRE(ws.last_path == f32_path);
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<T> got = out_t.to_host();
        INFO("layer " << layer << ", path " << kernels::to_string(f32_path));
        REQUIRE(rounding_mismatches(out_f.to_host(), got) == 0);

        // A plan holds for every activation type: planned from the device-cache form's shape
        // (no pointers, so f32), its runs in T give the same bytes.
        kernels::attention_workspace ws_plan;
        const kernels::decode_plan plan =
            kernels::plan_decode_attention(c.device, batch, c.device.max_tokens(), opt, ws_plan);
        gpu::device_buffer<T> planned(per_layer);
        kernels::run_decode_attention(plan, c.device, layer, c.sequences, q_t_dev.data(),
                                      planned.data(), opt, ws_plan);
        REQUIRE(ws_plan.last_path == f32_path);
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<T> again = planned.to_host();
        REQUIRE(std::memcmp(again.data(), got.data(), per_layer * sizeof(T)) == 0);
    }
}

/// Appends the same steps (prefill chunks of odd sizes, one empty, then decode steps) to two
/// device caches, one from T k/v and one from the same values in f32; every record must be the
/// same bytes.
template <class T, class Codec>
void check_append_type(const Codec& codec, int heads_per_group, const char* what) {
    INFO(what << (std::is_same_v<T, __half> ? ", f16 k/v" : ", bf16 k/v"));
    const kv_geometry g{2, 2, 64};
    const dense_layout layout(g, heads_per_group);
    gpu::device_kv_cache<Codec> from_t(layout, codec, {3, 96, 16, 24});
    gpu::device_kv_cache<Codec> from_f(layout, codec, {3, 96, 16, 24});
    std::vector<int> seqs;
    for (int i = 0; i < 3; ++i) {
        seqs.push_back(from_t.add_sequence());
        REQUIRE(from_f.add_sequence() == seqs.back());
    }
    const std::size_t width = std::size_t(g.token_width());
    const std::vector<std::vector<int>> steps{{17, 0, 33}, {1, 1, 1}, {15, 16, 2}};
    std::uint32_t seed = 3;
    for (const std::vector<int>& counts : steps) {
        int total = 0;
        for (int c : counts) total += c;
        for (int layer = 0; layer < g.n_layers; ++layer) {
            const auto [k_t, k_f] = representable<T>(std::size_t(total) * width, seed++);
            const auto [v_t, v_f] = representable<T>(std::size_t(total) * width, seed++);
            gpu::device_buffer<T> k_t_dev(k_t), v_t_dev(v_t);
            gpu::device_buffer<float> k_f_dev(k_f), v_f_dev(v_f);
            kernels::append(from_t, layer, seqs, counts, k_t_dev.data(), v_t_dev.data());
            kernels::append(from_f, layer, seqs, counts, k_f_dev.data(), v_f_dev.data());
            KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        }
    }
    const std::vector<int> lengths{33, 17, 36};  // the steps' counts, summed per sequence
    for (int slot = 0; slot < layout.n_slots(); ++slot)
        for (std::size_t i = 0; i < seqs.size(); ++i) {
            const int seq = seqs[i], n = lengths[i];
            REQUIRE(from_t.length(seq) == n);
            REQUIRE(from_f.length(seq) == n);
            INFO("slot " << slot << ", sequence " << seq << ", " << n << " tokens");
            REQUIRE(from_t.download_records(slot, seq, 0, n) ==
                    from_f.download_records(slot, seq, 0, n));
        }
}

/// Prefill of chunks in f32 and in T from the same (T-representable) queries: the T outputs
/// are the f32 outputs rounded once. `want_tiled`: chunks the tiled path must take (a batch that
/// mixes them with per-query items also stages rows, in T).
template <class T, class Codec>
void check_prefill_type(const Codec& codec, int n_heads, const std::vector<int>& lengths,
                        const std::vector<int>& queries, rope_mode rope, int want_tiled,
                        const char* what) {
    INFO(what << (std::is_same_v<T, __half> ? ", f16" : ", bf16")
              << (rope == rope_mode::on_read ? ", RoPE on read" : ""));
    const kv_geometry g{2, 2, 64};
    const dense_layout layout(g);
    kv_cache<Codec, dense_layout, paged_storage> host(layout, codec, {4, 128, 16, 40});
    gpu::device_kv_cache<Codec> dev(layout, codec, {4, 128, 16, 40});
    std::vector<int> seqs;
    for (std::size_t i = 0; i < lengths.size(); ++i) {
        seqs.push_back(host.add_sequence());
        kvcar_test::fill_sequence(host, seqs.back(), lengths[i], 70u + std::uint32_t(i));
    }
    dev.copy_from(host);
    attention_params opt{.n_heads = n_heads, .scale = 0.0f, .causal = true, .rope = rope,
                         .rope_cfg = {}};
    int total = 0;
    for (int q : queries) total += q;
    const std::size_t n = std::size_t(total) * n_heads * g.head_dim;
    for (int layer = 0; layer < g.n_layers; ++layer) {
        const auto [q_t, q_f] = representable<T>(n, 40u + std::uint32_t(layer));
        gpu::device_buffer<T> q_t_dev(q_t);
        gpu::device_buffer<float> q_f_dev(q_f);
        kernels::attention_workspace ws;
        gpu::device_buffer<float> out_f = kvcar_test::poisoned(n);
        kernels::prefill_attention(dev, layer, seqs, queries, q_f_dev.data(), out_f.data(), opt, ws);
        REQUIRE(ws.last_prefill_tiled == want_tiled);
        gpu::device_buffer<T> out_t(n);
        KVCAR_CUDA_CHECK(cudaMemset(out_t.data(), 0xff, n * sizeof(T)));  // NaN
        kernels::prefill_attention(dev, layer, seqs, queries, q_t_dev.data(), out_t.data(), opt, ws);
        REQUIRE(ws.last_prefill_tiled == want_tiled);
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        INFO("layer " << layer);
        REQUIRE(rounding_mismatches(out_f.to_host(), out_t.to_host()) == 0);
    }
}

template <class T>
void check_every_path() {
    check_type<T>(identity_codec<f16>{64}, 8, "identity f16 (direct tensor cores)");
    check_type<T>(identity_codec<float>{64}, 8, "identity f32 (direct)");
    check_type<T>(make_quantized<std::int8_t>(identity_codec<float>{64}), 4, "int8");
    const linear_params head = kvcar_test::random_linear(64, 24, 1, 5);
    check_type<T>(head.codec<f16>(), 8, "linear per head (latent)");
    const linear_params layer = kvcar_test::random_linear(128, 40, 2, 7);
    check_type<T>(layer.codec<f16>(), 8, "linear whole layer (latent tensor cores)", 2);
    const folded_autoencoder ae = kvcar_test::random_autoencoder(64, 48, 32, 9);
    check_type<T>(ae.codec<f16>(), 8, "autoencoder (tensor cores)");
    check_type<T>(identity_codec<f16>{64}, 8, "identity f16", 1, rope_mode::on_read);
    check_type<T>(head.codec<f16>(), 4, "linear per head", 1, rope_mode::on_read);
}

}  // namespace

TEST_CASE("decode_attention: f16 q and out give the f32 launch's values rounded once",
          "[kernels][activations]") {
    check_every_path<__half>();
}

TEST_CASE("decode_attention: bf16 q and out give the f32 launch's values rounded once",
          "[kernels][activations]") {
    check_every_path<__nv_bfloat16>();
}

namespace {

template <class T>
void check_append_and_prefill() {
    check_append_type<T>(identity_codec<f16>{64}, 1, "identity f16 (warps)");
    check_append_type<T>(make_quantized<std::int8_t>(identity_codec<float>{64}), 1, "int8 (warps)");
    const linear_params layer = kvcar_test::random_linear(128, 40, 2, 7);
    check_append_type<T>(layer.codec<f16>(), 2, "linear whole layer (affine tiles)");
    check_append_type<T>(make_quantized<std::int8_t>(layer.codec<float>()), 2,
                         "linear + int8 (affine tiles)");
    const folded_autoencoder ae = kvcar_test::random_autoencoder(64, 48, 32, 9);
    check_append_type<T>(ae.codec<f16>(), 1, "autoencoder (warps)");

    // 24 and 17 queries take the tiled path, 1 and 3 the per-query one (rows staged in T).
    check_prefill_type<T>(identity_codec<f16>{64}, 4, {40, 17, 5}, {24, 17, 1}, rope_mode::none,
                          2, "identity f16, tiled + staged");
    check_prefill_type<T>(identity_codec<f16>{64}, 8, {40, 20}, {33, 3}, rope_mode::on_read, 1,
                          "identity f16, tiled + staged");
    check_prefill_type<T>(identity_codec<float>{64}, 4, {40, 17}, {5, 2}, rope_mode::none, 0,
                          "identity f32, per query only");
}

}  // namespace

TEST_CASE("append and prefill_attention: f16 k/v, q and out give the f32 launch's bytes",
          "[kernels][activations]") {
    check_append_and_prefill<__half>();
}

TEST_CASE("append and prefill_attention: bf16 k/v, q and out give the f32 launch's bytes",
          "[kernels][activations]") {
    check_append_and_prefill<__nv_bfloat16>();
}

TEST_CASE("append and prefill_attention: activation types are checked before any work",
          "[kernels][activations]") {
    const kv_geometry g{1, 1, 64};
    const dense_layout layout(g);
    gpu::device_kv_cache<identity_codec<f16>> dev(layout, identity_codec<f16>{64}, {2, 64, 16, 8});
    const int seq = dev.add_sequence();
    gpu::device_buffer<__half> kv(2 * 64);
    const std::vector<int> seqs{seq}, counts{1};
    const input_activations bad(kv.data(), static_cast<activation_type>(5));
    KVCAR_REQUIRE_ERROR(kernels::append(dev, 0, seqs, counts, bad, kv.data()), "f32, f16 or bf16");
    kernels::append(dev, 0, seqs, counts, kv.data(), kv.data() + 64);
    gpu::device_buffer<__half> q(4 * 64), out(4 * 64);
    attention_params opt;
    opt.n_heads = 4;
    kernels::attention_workspace ws;
    KVCAR_REQUIRE_ERROR(kernels::prefill_attention(dev, 0, seqs, counts, bad, out.data(), opt, ws),
                        "f32, f16 or bf16");
    KVCAR_REQUIRE_ERROR(kernels::prefill_attention(
                            dev, 0, seqs, counts, q.data(),
                            output_activations(out.data(), static_cast<activation_type>(9)), opt, ws),
                        "f32, f16 or bf16");
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
}

TEST_CASE("decode_attention: activation types are checked, and unaligned f16 q is read",
          "[kernels][activations]") {
    const kv_geometry g{2, 2, 64};
    const dense_layout layout(g);
    const std::vector<identity_codec<f16>> codecs(std::size_t(layout.n_slots()),
                                                  identity_codec<f16>{64});
    auto c = kvcar_test::make_interleaved_caches(layout, codecs, {300, 41}, 3u);
    const int batch = 2, n_heads = 4;
    const std::size_t n = std::size_t(batch) * n_heads * g.head_dim;
    std::vector<__half> q_h;
    for (float x : random_floats(n + 4, 5u)) q_h.push_back(__float2half_rn(x));
    gpu::device_buffer<__half> q(q_h);
    gpu::device_buffer<__half> aligned(n), shifted(n);
    const std::vector<std::int32_t> ints{c.sequences[0], c.sequences[1], 300, 41};
    gpu::device_buffer<std::int32_t> ints_dev(ints);

    kernels::decode_attention_params p;
    p.q = q.data();
    p.out = aligned.data();
    REQUIRE(p.q.type == activation_type::f16);
    REQUIRE(p.out.type == activation_type::f16);
    p.sequences = ints_dev.data();
    p.kv_lengths = ints_dev.data() + batch;
    p.batch = batch;
    p.max_kv_length = 300;
    p.n_heads = n_heads;
    kernels::attention_workspace ws;

    // A type that is no activation_type is refused before anything runs.
    p.q.type = static_cast<activation_type>(7);
    KVCAR_REQUIRE_ERROR(kernels::decode_attention(c.device.view(), p, ws), "f32, f16 or bf16");
    p.q.type = activation_type::f16;
    p.out.type = static_cast<activation_type>(3);
    KVCAR_REQUIRE_ERROR(kernels::decode_attention(c.device.view(), p, ws), "f32, f16 or bf16");
    p.out.type = activation_type::f16;

    // q one element past an aligned address: no 4-element loads, so the tensor-core direct path
    // steps aside, for decode_attention and for a plan's run alike; the values are those of the
    // same queries at an aligned address (copied there), on the path that took them.
    const kernels::decode_plan plan = kernels::plan_decode_attention(c.device.view(), p, ws);
    REQUIRE(plan.paths[1] == kernels::decode_path::direct_tensor_cores);
    p.layer = 1;
    p.q = input_activations(q.data() + 1, activation_type::f16);
    p.out = shifted.data();
    KVCAR_REQUIRE_ERROR(kernels::run_decode_attention(plan, c.device.view(), p, ws),
                        "not aligned to 4 elements");
    kernels::decode_attention(c.device.view(), p, ws);
    const kernels::decode_path took = ws.last_path;
    REQUIRE(took != kernels::decode_path::direct_tensor_cores);
    gpu::device_buffer<__half> q_copy(n);
    KVCAR_CUDA_CHECK(cudaMemcpy(q_copy.data(), q.data() + 1, n * sizeof(__half),
                                cudaMemcpyDeviceToDevice));
    // The aligned copy takes the tensor-core path: the two agree within its f16 operands.
    p.q = q_copy.data();
    p.out = aligned.data();
    kernels::decode_attention(c.device.view(), p, ws);
    KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<__half> a = aligned.to_host(), b = shifted.to_host();
    double worst = 0.0;
    for (std::size_t i = 0; i < n; ++i)
        worst = std::max(worst, double(std::abs(__half2float(a[i]) - __half2float(b[i]))));
    INFO("aligned (" << kernels::to_string(ws.last_path) << ") against shifted ("
                     << kernels::to_string(took) << "): largest difference " << worst);
    REQUIRE(worst < 4e-3);  // two paths, fp16 operands on one of them, outputs of |o| < 2
}
