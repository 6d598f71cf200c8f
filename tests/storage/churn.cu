// Churn on the device: thousands of random add, batched append and remove steps over a
// gpu::device_kv_cache, for every uploadable codec, both layouts and page sizes that are not
// powers of two. Appends run kernels::append (encode on the device, through the device block
// table); the shadow keeps each new record as downloaded right after its append, and checks it
// decodes to about what the host codec makes of the input. After every step a kernel decodes
// every token of every live sequence through cache.view() (device block table, slot tables and
// codecs) and the result must equal the host decode of the shadow's records; lengths, pages held
// and free pages must match a model; a batch that cannot fit throws and changes nothing; at the
// end every page is free. Seeded (KVCAR_CHURN_SEED), bounded (KVCAR_CHURN_STEPS, default 400).
#include "catch.hpp"

#include "churn_fixtures.hpp"

#include <kvcar/cuda/buffer.cuh>
#include <kvcar/cuda/device_kv_cache.cuh>
#include <kvcar/device/cache_view.cuh>
#include <kvcar/device/decode.cuh>
#include <kvcar/kernels/append.cuh>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

using namespace kvcar;
using namespace kvcar_churn;

namespace {

int env_int(const char* name, int fallback) {
    const char* v = std::getenv(name);
    return v ? std::atoi(v) : fallback;
}

/// One thread per item (sequence, layer, kind, token): decodes every group of that token
/// through the cache view, as a kernel reading the cache would, into out[item][token_width].
template <class Codec>
__global__ void read_tokens(device::cache_view<Codec> view, const int* items, int n_items,
                            float* out) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n_items) return;
    const int seq = items[4 * i], layer = items[4 * i + 1], token = items[4 * i + 3];
    const kv_kind kind = kv_kind(items[4 * i + 2]);
    const int gw = view.heads_per_group * view.head_dim;
    for (int g = 0; g < view.groups_per_layer; ++g) {
        const int slot = view.slot(layer, g, kind);
        device::decode_token(view.codecs[slot], view.slots[slot].record(seq, token),
                             out + std::size_t(i) * std::size_t(view.n_kv_heads * view.head_dim) +
                                 std::size_t(g) * std::size_t(gw));
    }
}

struct shadow_sequence {
    bool live = false;
    int lengths[geometry.n_layers] = {};
    /// [slot] the records of its tokens, as downloaded right after their append.
    std::vector<std::vector<std::byte>> records;
    int longest() const { return *std::max_element(lengths, lengths + geometry.n_layers); }
};

template <class Codec, class Layout>
class device_churn {
public:
    device_churn(Layout layout, std::vector<Codec> codecs,
                 typename gpu::device_kv_cache<Codec, Layout>::params params, std::uint32_t seed,
                 std::string name)
        : layout_(layout), codecs_(codecs), params_(params), rng_(seed),
          cache_(std::move(layout), std::move(codecs), params), name_(std::move(name)),
          shadow_(std::size_t(params.max_sequences)) {}

    void run(int steps) {
        INFO(name_);
        for (int step = 0; step < steps; ++step) {
            INFO("step " << step);
            const int op = pick(0, 99);
            if (op < 15) {
                add();
            } else if (op < 27) {
                remove_one();
            } else {
                append();
            }
            check_all();
        }
        const int refused_before = refused_;
        for (int i = 0; i < 10000 && refused_ == refused_before; ++i) {
            if (pick(0, 3) == 0) add();
            append(params_.page_size);
            check_all();
        }
        for (int seq = 0; seq < int(shadow_.size()); ++seq)
            if (shadow_[std::size_t(seq)].live) remove(seq);
        check_all();
        REQUIRE(cache_.live_sequences() == 0);
        REQUIRE(cache_.free_pages() == params_.n_pages);
        REQUIRE(appended_ > 0);
        REQUIRE(refused_ > 0);
    }

private:
    int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
    int pages_for(int tokens) const { return (tokens + params_.page_size - 1) / params_.page_size; }
    int free_pages_expected() const {
        int held = 0;
        for (const shadow_sequence& s : shadow_) held += s.live ? pages_for(s.longest()) : 0;
        return params_.n_pages - held;
    }
    std::vector<int> live() const {
        std::vector<int> ids;
        for (int seq = 0; seq < int(shadow_.size()); ++seq)
            if (shadow_[std::size_t(seq)].live) ids.push_back(seq);
        return ids;
    }

    void add() {
        int expected = -1;
        for (int seq = 0; seq < int(shadow_.size()) && expected < 0; ++seq)
            if (!shadow_[std::size_t(seq)].live) expected = seq;
        if (expected < 0) {
            REQUIRE_THROWS_AS(cache_.add_sequence(), kvcar::error);
            return;
        }
        REQUIRE(cache_.add_sequence() == expected);
        shadow_sequence& s = shadow_[std::size_t(expected)];
        s = shadow_sequence{};
        s.live = true;
        s.records.resize(std::size_t(cache_.n_slots()));
    }
    void remove(int seq) {
        cache_.remove_sequence(seq);
        shadow_[std::size_t(seq)] = shadow_sequence{};
    }
    void remove_one() {
        const std::vector<int> ids = live();
        if (ids.empty()) {
            REQUIRE_THROWS_AS(cache_.remove_sequence(0), kvcar::error);
            return;
        }
        remove(ids[std::size_t(pick(0, int(ids.size()) - 1))]);
    }

    /// A batch of 1-3 live sequences appended to one layer; `forced_n` tokens each when >= 0.
    void append(int forced_n = -1) {
        std::vector<int> ids = live();
        if (ids.empty()) return add();
        std::shuffle(ids.begin(), ids.end(), rng_);
        ids.resize(std::size_t(std::min<int>(int(ids.size()), pick(1, 3))));
        const shadow_sequence& first = shadow_[std::size_t(ids[0])];
        int layer = 0;
        while (layer + 1 < geometry.n_layers && first.lengths[layer + 1] < first.lengths[layer])
            ++layer;
        if (pick(0, 9) == 0) layer = pick(0, geometry.n_layers - 1);

        std::vector<int> counts;
        int total = 0, more_pages = 0;
        bool fits = true;
        for (int seq : ids) {
            const int kind = pick(0, 9);
            int n = kind < 6 ? 1 : kind < 9 ? pick(0, 3 * params_.page_size / 2 + 2) : pick(10, 40);
            if (forced_n >= 0) n = forced_n;
            counts.push_back(n);
            total += n;
            const shadow_sequence& s = shadow_[std::size_t(seq)];
            const int end = s.lengths[layer] + n;
            fits = fits && end <= params_.max_tokens;
            more_pages += std::max(0, pages_for(end) - pages_for(s.longest()));
        }
        fits = fits && more_pages <= free_pages_expected();

        const int width = geometry.token_width();
        const std::vector<float> k = normal(std::size_t(total) * std::size_t(width), rng_, 1.0f);
        const std::vector<float> v = normal(k.size(), rng_, 1.0f);
        const gpu::device_buffer<float> k_dev(k.empty() ? std::vector<float>(1) : k);
        const gpu::device_buffer<float> v_dev(v.empty() ? std::vector<float>(1) : v);
        if (!fits) {
            REQUIRE_THROWS_AS(kernels::append(cache_, layer, ids, counts, k_dev.data(),
                                              v_dev.data()),
                              kvcar::error);
            ++refused_;
            return;  // check_all() proves nothing changed
        }
        kernels::append(cache_, layer, ids, counts, k_dev.data(), v_dev.data());
        KVCAR_CUDA_CHECK(cudaDeviceSynchronize());
        ++appended_;

        // The shadow takes the new records as the device wrote them, after checking they decode
        // to about what the host codec makes of the input.
        const int gw = layout_.heads_per_group() * geometry.head_dim;
        std::vector<float> from_device(static_cast<std::size_t>(gw)), from_host(from_device.size());
        int row = 0;
        for (std::size_t b = 0; b < ids.size(); ++b) {
            shadow_sequence& s = shadow_[std::size_t(ids[b])];
            const int begin = s.lengths[layer], n = counts[b];
            for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                const std::vector<float>& x = kind == kv_kind::key ? k : v;
                for (int g = 0; g < layout_.groups_per_layer(); ++g) {
                    if (!layout_.owns(layer, g, kind) || n == 0) continue;
                    const int slot = layout_.slot(layer, g, kind);
                    const Codec& c = codecs_[std::size_t(slot)];
                    const std::size_t rb = c.bytes_per_group();
                    const std::vector<std::byte> got =
                        cache_.download_records(slot, ids[b], begin, begin + n);
                    std::vector<std::byte>& mine = s.records[std::size_t(slot)];
                    REQUIRE(mine.size() == std::size_t(begin) * rb);
                    mine.insert(mine.end(), got.begin(), got.end());
                    alignas(16) std::byte rec[1024];
                    REQUIRE(rb <= sizeof rec);
                    for (int t = 0; t < n; ++t) {
                        const float* in =
                            x.data() + std::size_t(row + t) * width + std::size_t(g) * gw;
                        c.encode(in, rec);
                        c.decode(rec, from_host.data());
                        std::memcpy(rec, got.data() + std::size_t(t) * rb, rb);
                        c.decode(rec, from_device.data());
                        for (int j = 0; j < gw; ++j) {
                            const float tol = 0.3f + 0.1f * std::fabs(from_host[std::size_t(j)]);
                            if (!(std::fabs(from_device[std::size_t(j)] -
                                            from_host[std::size_t(j)]) <= tol)) {
                                FAIL("sequence " << ids[b] << " layer " << layer << " "
                                                 << to_string(kind) << " group " << g << " token "
                                                 << begin + t << " element " << j
                                                 << ": the device record decodes to "
                                                 << from_device[std::size_t(j)]
                                                 << ", the host encoding to "
                                                 << from_host[std::size_t(j)]);
                            }
                        }
                    }
                }
            }
            s.lengths[layer] = begin + n;
            row += n;
        }
    }

    void check_all() {
        REQUIRE(cache_.free_pages() == free_pages_expected());
        std::vector<int> items;  // [n][4]: sequence, layer, kind, token
        for (int seq = 0; seq < int(shadow_.size()); ++seq) {
            const shadow_sequence& s = shadow_[std::size_t(seq)];
            REQUIRE(cache_.is_live(seq) == s.live);
            if (!s.live) continue;
            for (int layer = 0; layer < geometry.n_layers; ++layer)
                REQUIRE(cache_.length(seq, layer) == s.lengths[layer]);
            REQUIRE(cache_.pages_held(seq) == pages_for(s.longest()));
            for (int layer = 0; layer < geometry.n_layers; ++layer) {
                for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                    for (int t = 0; t < readable(s, layer, kind); ++t)
                        items.insert(items.end(), {seq, layer, int(kind), t});
                }
            }
        }
        const int n_items = int(items.size() / 4);
        if (n_items == 0) return;
        const int width = geometry.token_width();
        const gpu::device_buffer<int> items_dev(items);
        gpu::device_buffer<float> out_dev(std::size_t(n_items) * std::size_t(width));
        read_tokens<<<unsigned((n_items + 127) / 128), 128>>>(cache_.view(), items_dev.data(),
                                                              n_items, out_dev.data());
        KVCAR_CUDA_CHECK(cudaGetLastError());
        const std::vector<float> out = out_dev.to_host();

        const int gw = layout_.heads_per_group() * geometry.head_dim;
        std::vector<float> want(static_cast<std::size_t>(gw));
        alignas(16) std::byte rec[1024];
        for (int i = 0; i < n_items; ++i) {
            const int seq = items[std::size_t(4 * i)], layer = items[std::size_t(4 * i + 1)];
            const kv_kind kind = kv_kind(items[std::size_t(4 * i + 2)]);
            const int t = items[std::size_t(4 * i + 3)];
            for (int g = 0; g < layout_.groups_per_layer(); ++g) {
                const int slot = layout_.slot(layer, g, kind);
                const Codec& c = codecs_[std::size_t(slot)];
                const std::size_t rb = c.bytes_per_group();
                std::memcpy(rec, shadow_[std::size_t(seq)].records[std::size_t(slot)].data() +
                                     std::size_t(t) * rb, rb);
                c.decode(rec, want.data());
                const float* got = out.data() + std::size_t(i) * width + std::size_t(g) * gw;
                for (int j = 0; j < gw; ++j) {
                    const float w = want[std::size_t(j)];
                    if (!(std::fabs(got[j] - w) <= 1e-4f + 1e-4f * std::fabs(w))) {
                        FAIL("sequence " << seq << " layer " << layer << " " << to_string(kind)
                                         << " group " << g << " token " << t << " element " << j
                                         << ": the device reads " << got[j] << ", written "
                                         << w);
                    }
                }
            }
        }
    }
    // Tokens of (layer, kind) every group can read: its own and its sources' lengths.
    int readable(const shadow_sequence& s, int layer, kv_kind kind) const {
        int end = s.lengths[layer];
        for (int g = 0; g < layout_.groups_per_layer(); ++g)
            end = std::min(end, s.lengths[layout_.owner(layout_.slot(layer, g, kind)).layer]);
        return end;
    }

    Layout layout_;
    std::vector<Codec> codecs_;
    typename gpu::device_kv_cache<Codec, Layout>::params params_;
    std::mt19937 rng_;
    gpu::device_kv_cache<Codec, Layout> cache_;
    std::string name_;
    std::vector<shadow_sequence> shadow_;
    int appended_ = 0, refused_ = 0;
};

template <class Layout>
void churn_codecs(const Layout& layout, const char* layout_name, std::uint32_t seed, int steps) {
    for_each_codec([&]<class Maker>() {
        codec_zoo zoo(seed);
        const auto codecs = make_codecs<Maker>(zoo, layout);
        using codec = typename decltype(codecs)::value_type;
        if constexpr (gpu::uploadable_codec<codec>) {  // any_codec has no device form yet
            for (int page_size : {3, 7, 16, 24}) {
                std::ostringstream name;
                name << Maker::name << ", " << layout_name << ", page_size " << page_size;
                const int max_tokens = 2 * page_size + 29;
                const typename gpu::device_kv_cache<codec, Layout>::params p{
                    .max_sequences = 7, .max_tokens = max_tokens, .page_size = page_size,
                    .n_pages = 3 * ((max_tokens + page_size - 1) / page_size)};
                device_churn<codec, Layout>(layout, codecs, p, seed + std::uint32_t(page_size),
                                            name.str())
                    .run(steps);
            }
        }
        seed += 101;
    });
}

}  // namespace

TEST_CASE("churn on the device: random add, batched append and remove, every codec and layout",
          "[storage][churn][gpu]") {
    const std::uint32_t seed = std::uint32_t(env_int("KVCAR_CHURN_SEED", 20261204));
    const int steps = env_int("KVCAR_CHURN_STEPS", 400);
    const auto start = std::chrono::steady_clock::now();
    churn_codecs(dense(1), "dense_layout (group = head)", seed, steps);
    churn_codecs(reuse(1), "reuse_map (group = head)", seed + 2, steps);
    churn_codecs(dense(2), "dense_layout (group = layer)", seed + 1, steps / 4);
    churn_codecs(reuse(2), "reuse_map (group = layer)", seed + 3, steps / 4);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    WARN("device churn: seed " << seed << ", " << steps << " steps per configuration, " << seconds
                               << " s");
}
