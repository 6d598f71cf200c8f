// Tests for kvcar/cuda/page_pool_view.cuh and kvcar/kernels/csr_block_table.cuh: kvcar's append
// and decode kernels over pools and a block table the test owns (as a runtime would), with pages
// handed out in a scrambled order, give bit for bit what a device_kv_cache gives; FlashInfer's
// CSR form converts to the same result; every bad argument is refused before any device work.
#include "common/gpu_test.cuh"

#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/cuda/page_pool_view.cuh>
#include <kvcar/kernels/append.cuh>
#include <kvcar/kernels/csr_block_table.cuh>
#include <kvcar/kernels/decode_attention.cuh>
#include <kvcar/layout/dense.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

using namespace kvcar;
using kvcar_test::random_floats;

namespace {

const kv_geometry geom{.n_layers = 2, .n_kv_heads = 2, .head_dim = 64};
constexpr int n_heads = 8;  // GQA ratio 4
constexpr int page = 16;
const std::vector<int> lengths{1, 37, 300, 16};  // one token, a partial page, many, exactly one

/// The runtime's side: pools it allocated, a block table whose pages it handed out in a
/// scrambled order, and the batch's descriptors.
struct runtime_memory {
    std::vector<kvcar::gpu::device_buffer<std::byte>> pools;
    std::vector<std::byte*> pool_ptrs;
    std::vector<std::int32_t> table;  // [sequences][pages_per_sequence]
    int pages_per_sequence = 0, n_pages = 0;
    kvcar::gpu::device_buffer<std::int32_t> table_dev;
};

template <class Codec>
runtime_memory make_runtime(const std::vector<Codec>& codecs) {
    runtime_memory m;
    const int max_len = *std::max_element(lengths.begin(), lengths.end());
    m.pages_per_sequence = (max_len + page - 1) / page;
    for (int len : lengths) m.n_pages += (len + page - 1) / page;
    m.n_pages += 5;  // spare pages that nobody holds
    for (const Codec& c : codecs) {
        using view_t = kvcar::gpu::page_pool_view<Codec>;
        m.pools.emplace_back(view_t::pool_bytes(c, m.n_pages, page));
        m.pools.back().fill_bytes(0x7f);  // garbage in pages nobody wrote: must never be read
        m.pool_ptrs.push_back(m.pools.back().data());
    }
    std::vector<std::int32_t> order(std::size_t(m.n_pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(12345u));
    m.table.assign(lengths.size() * std::size_t(m.pages_per_sequence), order.back());
    std::size_t next = 0;
    for (std::size_t s = 0; s < lengths.size(); ++s)
        for (int p = 0; p < (lengths[s] + page - 1) / page; ++p)
            m.table[s * std::size_t(m.pages_per_sequence) + std::size_t(p)] = order[next++];
    m.table_dev = kvcar::gpu::device_buffer<std::int32_t>(m.table);
    return m;
}

/// K/V of every sequence and layer, [sequence][layer][token][token_width].
std::vector<float> tokens_of(int seq, int layer, bool value) {
    return random_floats(std::size_t(lengths[std::size_t(seq)]) * geom.token_width(),
                         1000u * std::uint32_t(seq) + 10u * std::uint32_t(layer) + (value ? 5u : 0u));
}

/// Decode output of layer 1 for every sequence through a device_kv_cache (the reference) and
/// through a page_pool_view over the runtime's memory, appended in two chunks per sequence.
template <class Codec>
void check_same_as_device_cache(const std::vector<Codec>& codecs, int heads_per_group) {
    const dense_layout layout(geom, heads_per_group);
    const int batch = int(lengths.size());
    const int max_len = *std::max_element(lengths.begin(), lengths.end());
    const std::vector<float> q = random_floats(std::size_t(batch) * n_heads * geom.head_dim, 77u);
    kvcar::gpu::device_buffer<float> q_dev(q);
    attention_params opt;
    opt.n_heads = n_heads;

    // Reference: kvcar owns the pages.
    kvcar::gpu::device_kv_cache<Codec> owned(layout, codecs,
                                       {.max_sequences = batch, .max_tokens = max_len,
                                        .page_size = page, .n_pages = 64});
    std::vector<int> seqs;
    for (int s = 0; s < batch; ++s) seqs.push_back(owned.add_sequence());
    for (int layer = 0; layer < geom.n_layers; ++layer)
        for (int s = 0; s < batch; ++s) {
            kvcar::gpu::device_buffer<float> k(tokens_of(s, layer, false)), v(tokens_of(s, layer, true));
            const int counts[] = {lengths[std::size_t(s)]};
            const int which[] = {seqs[std::size_t(s)]};
            kernels::append(owned, layer, which, counts, k.data(), v.data());
        }
    kernels::attention_workspace ws;
    kvcar::gpu::device_buffer<float> want_dev = kvcar_test::poisoned(q.size());
    kernels::decode_attention(owned, 1, seqs, q_dev.data(), want_dev.data(), opt, ws);
    const std::vector<float> want = want_dev.to_host();
    const kernels::decode_path owned_path = ws.last_path;

    // The runtime owns the pages: append each sequence in two chunks (prefill, then the rest).
    runtime_memory m = make_runtime(codecs);
    kvcar::gpu::page_pool_view<Codec> view(layout, codecs,
                                     {.slot_pools = m.pool_ptrs, .page_size = page,
                                      .n_pages = m.n_pages, .block_table = m.table_dev.data(),
                                      .pages_per_sequence = m.pages_per_sequence,
                                      .max_sequences = batch});
    REQUIRE(view.bytes_per_token() == owned.bytes_per_token());
    for (int layer = 0; layer < geom.n_layers; ++layer)
        for (int s = 0; s < batch; ++s) {
            const std::vector<float> k = tokens_of(s, layer, false), v = tokens_of(s, layer, true);
            const int len = lengths[std::size_t(s)], first = len / 2;
            for (const auto& [from, to] : {std::pair{0, first}, std::pair{first, len}}) {
                if (to == from) continue;
                const std::size_t w = std::size_t(geom.token_width());
                kvcar::gpu::device_buffer<float> kc(std::vector<float>(k.begin() + from * w, k.begin() + to * w));
                kvcar::gpu::device_buffer<float> vc(std::vector<float>(v.begin() + from * w, v.begin() + to * w));
                kvcar::gpu::device_buffer<std::int32_t> desc(std::vector<std::int32_t>{0, to - from, s, from});
                kernels::append_params ap;
                ap.k = kc.data();
                ap.v = vc.data();
                ap.token_offsets = desc.data();
                ap.sequences = desc.data() + 2;
                ap.positions = desc.data() + 3;
                ap.batch = 1;
                ap.total_tokens = to - from;
                ap.layer = layer;
                kernels::append(view.view(), ap, view.max_latent_width());
                KVCAR_CUDA_CHECK(cudaDeviceSynchronize());  // kc, vc, desc die at scope end
            }
        }
    std::vector<std::int32_t> desc(2 * std::size_t(batch));
    for (int s = 0; s < batch; ++s) {
        desc[std::size_t(s)] = s;
        desc[std::size_t(batch + s)] = lengths[std::size_t(s)];
    }
    kvcar::gpu::device_buffer<std::int32_t> desc_dev(desc);
    kernels::decode_attention_params p;
    p.q = q_dev.data();
    p.sequences = desc_dev.data();
    p.kv_lengths = desc_dev.data() + batch;
    p.batch = batch;
    p.max_kv_length = max_len;
    p.layer = 1;
    p.n_heads = n_heads;
    kvcar::gpu::device_buffer<float> got_dev = kvcar_test::poisoned(q.size());
    p.out = got_dev.data();
    kernels::decode_attention(view.view(), p, ws, nullptr);
    REQUIRE(ws.last_path == owned_path);
    REQUIRE(got_dev.to_host() == want);  // the same records, the same kernel: the same bits

    // FlashInfer's CSR form of the same batch, converted on the device, then read through a
    // second table the view is rebound to.
    std::vector<std::int32_t> indptr{0}, indices, last_len;
    for (int s = 0; s < batch; ++s) {
        const int pages = (lengths[std::size_t(s)] + page - 1) / page;
        for (int i = 0; i < pages; ++i)
            indices.push_back(m.table[std::size_t(s) * m.pages_per_sequence + std::size_t(i)]);
        indptr.push_back(int(indices.size()));
        last_len.push_back(lengths[std::size_t(s)] - (pages - 1) * page);
    }
    kvcar::gpu::device_buffer<std::int32_t> indptr_dev(indptr), indices_dev(indices), last_dev(last_len);
    kvcar::gpu::device_buffer<std::int32_t> dense(std::size_t(batch) * m.pages_per_sequence);
    dense.fill_bytes(0);
    kvcar::gpu::device_buffer<std::int32_t> lens{std::size_t(batch)}, rows{std::size_t(batch)};
    kernels::csr_block_table({.indptr = indptr_dev.data(), .indices = indices_dev.data(),
                              .last_page_len = last_dev.data(), .batch = batch, .page_size = page},
                             {.block_table = dense.data(), .pages_per_sequence = m.pages_per_sequence,
                              .kv_lengths = lens.data(), .sequences = rows.data()},
                             m.pages_per_sequence);
    REQUIRE(lens.to_host() == std::vector<std::int32_t>(lengths.begin(), lengths.end()));
    view.rebind_block_table(dense.data(), m.pages_per_sequence, batch);
    p.sequences = rows.data();
    p.kv_lengths = lens.data();
    got_dev.fill_bytes(0xff);
    kernels::decode_attention(view.view(), p, ws, nullptr);
    REQUIRE(got_dev.to_host() == want);
}

}  // namespace

TEST_CASE("page_pool_view: identity f16 heads over runtime-owned pages", "[cuda]") {
    const dense_layout layout(geom);
    check_same_as_device_cache(std::vector<identity_codec<f16>>(std::size_t(layout.n_slots()),
                                                                identity_codec<f16>{64}),
                               1);
}

TEST_CASE("page_pool_view: whole-layer linear latents (tensor-core latent path)", "[cuda]") {
    const int D = geom.token_width();
    const linear_params lp = kvcar_test::random_linear(D, D / 2, geom.n_kv_heads, 5u);
    check_same_as_device_cache(std::vector<linear_codec<f16>>(4, lp.codec<f16>()), geom.n_kv_heads);
}

TEST_CASE("page_pool_view: int8 heads", "[cuda]") {
    const dense_layout layout(geom);
    auto c = make_quantized<std::int8_t>(identity_codec<float>{64});
    check_same_as_device_cache(std::vector<decltype(c)>(std::size_t(layout.n_slots()), c), 1);
}

TEST_CASE("page_pool_view: bad arguments are refused before any device work", "[cuda]") {
    using view_t = kvcar::gpu::page_pool_view<identity_codec<f16>>;
    const dense_layout layout(geom);
    const identity_codec<f16> codec{64};
    kvcar::gpu::device_buffer<std::byte> pool(view_t::pool_bytes(codec, 4, page) + 64);
    kvcar::gpu::device_buffer<std::int32_t> table(8);
    std::vector<std::byte*> pools(std::size_t(layout.n_slots()), pool.data());
    view_t::pools good{.slot_pools = pools, .page_size = page, .n_pages = 4,
                       .block_table = table.data(), .pages_per_sequence = 4, .max_sequences = 2};
    REQUIRE(view_t(layout, codec, good).n_slots() == layout.n_slots());

    auto with = [&](auto change) {
        view_t::pools p = good;
        change(p);
        return p;
    };
    std::vector<std::byte*> three(3, pool.data());
    KVCAR_REQUIRE_ERROR(view_t(layout, codec, with([&](auto& p) { p.slot_pools = three; })),
                        "3 pools for a layout of 8 slots");
    std::vector<std::byte*> with_null = pools;
    with_null[5] = nullptr;
    KVCAR_REQUIRE_ERROR(view_t(layout, codec, with([&](auto& p) { p.slot_pools = with_null; })),
                        "slot 5: its pool is null");
    std::vector<std::byte*> unaligned = pools;
    unaligned[2] = pool.data() + 4;
    KVCAR_REQUIRE_ERROR(view_t(layout, codec, with([&](auto& p) { p.slot_pools = unaligned; })),
                        "slot 2: its pool is not 16-byte aligned");
    KVCAR_REQUIRE_ERROR(view_t(layout, codec, with([](auto& p) { p.block_table = nullptr; })),
                        "block_table is null");
    KVCAR_REQUIRE_ERROR(view_t(layout, codec, with([](auto& p) { p.page_size = 0; })),
                        "page_size and n_pages must be positive");
    KVCAR_REQUIRE_ERROR(view_t(layout, codec, with([](auto& p) { p.max_sequences = 0; })),
                        "pages_per_sequence and max_sequences must be positive");
    KVCAR_REQUIRE_ERROR(view_t(layout, identity_codec<f16>{32}, good),
                        "slot 0: its codec is 32 wide, the layout's groups are 64");
    KVCAR_REQUIRE_ERROR(view_t(layout, std::vector<identity_codec<f16>>(2, codec), good),
                        "2 codecs for a layout of 8 slots");
    KVCAR_REQUIRE_ERROR(view_t::pool_bytes(codec, 0, page), "must be positive");

    view_t v(layout, codec, good);
    KVCAR_REQUIRE_ERROR(v.rebind_block_table(nullptr, 4, 2), "block_table is null");

    kvcar::gpu::device_buffer<std::int32_t> ints(16);
    const kernels::csr_pages in{.indptr = ints.data(), .indices = ints.data(),
                                .last_page_len = ints.data(), .batch = 2, .page_size = page};
    const kernels::dense_pages out{.block_table = ints.data(), .pages_per_sequence = 2,
                                   .kv_lengths = ints.data(), .sequences = ints.data()};
    KVCAR_REQUIRE_ERROR(kernels::csr_block_table(in, out, 3), "rows of 2 entries cannot hold 3 pages");
    KVCAR_REQUIRE_ERROR(kernels::csr_block_table({.batch = 1, .page_size = page}, out, 1),
                        "indptr, indices and last_page_len must be device pointers");
}
