// Churn: thousands of random add, append and remove steps over many sequences, for every codec,
// both layouts and paged storage with page sizes that are not powers of two (plus contiguous
// storage), checked against a host shadow after every step:
//   - every live sequence reads back, in every layer and for K and V, exactly what the codec's
//     encode -> decode makes of what was appended (reused groups: their source's tokens);
//   - lengths, capacities, pages held and free pages match a model of the storage, and no page is
//     held twice;
//   - an append that cannot fit (out of pages, or past max_tokens) throws kvcar::error and
//     changes nothing: lengths, pages and contents are as before;
//   - when every sequence has ended, every page is free again.
// Seeded (KVCAR_CHURN_SEED) and bounded (KVCAR_CHURN_STEPS steps per configuration, default 1500).
#include "catch.hpp"

#include "churn_fixtures.hpp"

#include <kvcar/kv_cache.hpp>
#include <kvcar/storage/contiguous.hpp>
#include <kvcar/storage/paged.hpp>

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstdlib>
#include <cstring>
#include <set>
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

/// Everything the cache should hold, kept apart from it.
struct shadow_sequence {
    bool live = false;
    int lengths[geometry.n_layers] = {};
    /// [layer][kind][token][token_width]: the decoded floats of the groups the layer owns
    /// (a reused group's entries are unused: it reads its source's).
    std::vector<float> decoded[geometry.n_layers][kv_kind_count];
    int longest() const { return *std::max_element(lengths, lengths + geometry.n_layers); }
};

template <class Codec, class Layout, class Storage>
class churn {
public:
    churn(Layout layout, std::vector<Codec> codecs, typename Storage::params params,
          std::uint32_t seed, std::string name)
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
        // Then fill the pool until an append is refused, so every run meets that path.
        const int refused_before = refused_;
        for (int i = 0; i < 10000 && refused_ == refused_before; ++i) {
            if (pick(0, 3) == 0) add();
            append(page_size());
            check_all();
        }
        // Everything ends: every page comes back.
        for (int seq = 0; seq < int(shadow_.size()); ++seq)
            if (shadow_[std::size_t(seq)].live) remove(seq);
        check_all();
        REQUIRE(cache_.live_sequences() == 0);
        REQUIRE(cache_.bytes_reserved() == 0);
        if constexpr (std::same_as<Storage, paged_storage>) {
            REQUIRE(cache_.storage().free_pages() == n_pages());
        }
        REQUIRE(appended_ > 0);
        REQUIRE(refused_ > 0);  // the pool was small enough to run out
    }

private:
    int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
    int page_size() const {
        if constexpr (std::same_as<Storage, paged_storage>) {
            return params_.page_size;
        } else {
            return params_.max_tokens;
        }
    }
    // Pages a sequence holds: enough for its longest layer.
    int pages_for(int tokens) const { return (tokens + page_size() - 1) / page_size(); }
    int free_pages_expected() const {
        int held = 0;
        for (const shadow_sequence& s : shadow_) held += s.live ? pages_for(s.longest()) : 0;
        return n_pages() - held;
    }
    // Contiguous storage: one region per sequence, its "page".
    int n_pages() const {
        if constexpr (std::same_as<Storage, paged_storage>) {
            return params_.n_pages;
        } else {
            return params_.max_sequences;
        }
    }

    void add() {
        int expected = -1;
        for (int seq = 0; seq < int(shadow_.size()); ++seq) {
            if (!shadow_[std::size_t(seq)].live) {
                expected = seq;
                break;
            }
        }
        if (expected < 0) {
            REQUIRE_THROWS_AS(cache_.add_sequence(), kvcar::error);
            return;
        }
        REQUIRE(cache_.add_sequence() == expected);  // the lowest free id
        shadow_[std::size_t(expected)] = shadow_sequence{};
        shadow_[std::size_t(expected)].live = true;
    }
    void remove(int seq) {
        cache_.remove_sequence(seq);
        shadow_[std::size_t(seq)] = shadow_sequence{};
    }
    void remove_one() {
        std::vector<int> live;
        for (int seq = 0; seq < int(shadow_.size()); ++seq)
            if (shadow_[std::size_t(seq)].live) live.push_back(seq);
        if (live.empty()) {
            REQUIRE_THROWS_AS(cache_.remove_sequence(0), kvcar::error);
            return;
        }
        remove(live[std::size_t(pick(0, int(live.size()) - 1))]);
    }

    /// Appends `forced_n` tokens (or a random count when negative) to a random live sequence.
    void append(int forced_n = -1) {
        std::vector<int> live;
        for (int seq = 0; seq < int(shadow_.size()); ++seq)
            if (shadow_[std::size_t(seq)].live) live.push_back(seq);
        if (live.empty()) return add();
        const int seq = live[std::size_t(pick(0, int(live.size()) - 1))];
        // Mostly one layer at a time as a forward pass does, now and then layers out of order.
        shadow_sequence& s = shadow_[std::size_t(seq)];
        int layer = 0;
        while (layer + 1 < geometry.n_layers && s.lengths[layer + 1] < s.lengths[layer]) ++layer;
        if (pick(0, 9) == 0) layer = pick(0, geometry.n_layers - 1);
        // Decode steps (1 token), prefill chunks, the odd empty or oversized append.
        const int kind = pick(0, 9);
        int n = kind < 6 ? 1 : kind < 9 ? pick(0, 3 * page_size() / 2 + 2) : pick(10, 40);
        if (forced_n >= 0) n = forced_n;

        const int width = geometry.token_width();
        std::vector<float> k = normal(std::size_t(n) * std::size_t(width), rng_, 1.0f);
        std::vector<float> v = normal(k.size(), rng_, 1.0f);

        const int end = s.lengths[layer] + n;
        const int more = std::max(0, pages_for(end) - pages_for(s.longest()));
        const bool fits = n == 0 || (end <= params_.max_tokens && more <= free_pages_expected());
        if (!fits) {
            INFO("append of " << n << " tokens to sequence " << seq << " layer " << layer
                              << " must be refused");
            REQUIRE_THROWS_AS(cache_.append(seq, layer, k, v), kvcar::error);
            ++refused_;
            return;  // check_all() proves nothing changed
        }
        cache_.append(seq, layer, k, v);
        ++appended_;
        // The shadow: each owned group through its slot's codec, encode then decode.
        const int hpg = layout_.heads_per_group();
        const int gw = hpg * geometry.head_dim;
        std::vector<std::byte> record;
        for (kv_kind kk : {kv_kind::key, kv_kind::value}) {
            const std::vector<float>& x = kk == kv_kind::key ? k : v;
            std::vector<float>& out = s.decoded[layer][int(kk)];
            out.resize(std::size_t(end) * std::size_t(width), 0.0f);
            for (int g = 0; g < layout_.groups_per_layer(); ++g) {
                if (!layout_.owns(layer, g, kk)) continue;
                const Codec& c = codecs_[std::size_t(layout_.slot(layer, g, kk))];
                record.assign(c.bytes_per_group() + 16, std::byte{0});
                // 4-byte aligned scratch for the record.
                auto* rec = reinterpret_cast<std::byte*>(
                    (reinterpret_cast<std::uintptr_t>(record.data()) + 15) & ~std::uintptr_t(15));
                for (int t = 0; t < n; ++t) {
                    c.encode(x.data() + std::size_t(t) * width + std::size_t(g) * gw, rec);
                    c.decode(rec, out.data() + std::size_t(s.lengths[layer] + t) * width +
                                      std::size_t(g) * gw);
                }
            }
        }
        s.lengths[layer] = end;
    }

    void check_all() {
        REQUIRE(free_pages_now() == free_pages_expected());
        std::set<std::int32_t> pages_seen;
        int live = 0;
        for (int seq = 0; seq < int(shadow_.size()); ++seq) {
            const shadow_sequence& s = shadow_[std::size_t(seq)];
            REQUIRE(cache_.is_live(seq) == s.live);
            if (!s.live) continue;
            ++live;
            INFO("sequence " << seq);
            for (int layer = 0; layer < geometry.n_layers; ++layer)
                REQUIRE(cache_.length(seq, layer) == s.lengths[layer]);
            if constexpr (std::same_as<Storage, paged_storage>) {
                const std::vector<std::int32_t> pages = cache_.storage().pages(seq);
                REQUIRE(int(pages.size()) == pages_for(s.longest()));
                for (std::int32_t p : pages) {
                    REQUIRE((p >= 0 && p < params_.n_pages));
                    REQUIRE(pages_seen.insert(p).second);  // no page held twice
                }
                REQUIRE(cache_.capacity(seq) ==
                        std::min(pages_for(s.longest()) * page_size(), params_.max_tokens));
            } else {
                REQUIRE(cache_.capacity(seq) == (s.longest() > 0 ? params_.max_tokens : 0));
            }
            check_contents(seq, s);
        }
        REQUIRE(cache_.live_sequences() == live);
    }

    // Reads every layer's K and V as far as every group can be read, and compares bit for bit.
    void check_contents(int seq, const shadow_sequence& s) {
        const int width = geometry.token_width();
        const int gw = layout_.heads_per_group() * geometry.head_dim;
        std::vector<float> got;
        for (int layer = 0; layer < geometry.n_layers; ++layer) {
            for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
                int end = s.lengths[layer];
                for (int g = 0; g < layout_.groups_per_layer(); ++g)
                    end = std::min(end, s.lengths[layout_.owner(layout_.slot(layer, g, kind)).layer]);
                got.assign(std::size_t(end) * std::size_t(width), -1.0f);
                cache_.read(seq, layer, kind, 0, end, got);
                for (int g = 0; g < layout_.groups_per_layer(); ++g) {
                    const slot_owner src = layout_.owner(layout_.slot(layer, g, kind));
                    const std::vector<float>& want = s.decoded[src.layer][int(kind)];
                    for (int t = 0; t < end; ++t) {
                        const float* a = got.data() + std::size_t(t) * width + std::size_t(g) * gw;
                        const float* b =
                            want.data() + std::size_t(t) * width + std::size_t(src.group) * gw;
                        if (std::memcmp(a, b, sizeof(float) * std::size_t(gw)) != 0) {
                            int j = 0;
                            while (j + 1 < gw && std::memcmp(a + j, b + j, sizeof(float)) == 0) ++j;
                            FAIL("layer " << layer << " " << to_string(kind) << " group " << g
                                          << " token " << t << " of " << end << " element " << j
                                          << ": read " << a[j] << ", wrote " << b[j]);
                        }
                    }
                }
            }
        }
    }

    int free_pages_now() const {
        if constexpr (std::same_as<Storage, paged_storage>) {
            return cache_.storage().free_pages();
        } else {
            return free_pages_expected();  // contiguous storage has no pool to run out of
        }
    }

    Layout layout_;
    std::vector<Codec> codecs_;
    typename Storage::params params_;
    std::mt19937 rng_;
    kv_cache<Codec, Layout, Storage> cache_;
    std::string name_;
    std::vector<shadow_sequence> shadow_;
    int appended_ = 0, refused_ = 0;
};

template <class Maker, class Layout>
void churn_all_storages(const Layout& layout, const char* layout_name, std::uint32_t seed,
                        int steps) {
    codec_zoo zoo(seed);
    const auto codecs = make_codecs<Maker>(zoo, layout);
    using codec = typename decltype(codecs)::value_type;
    // Page sizes that are not powers of two (and 16); pools small enough to run out.
    for (int page_size : {3, 7, 16, 24}) {
        std::ostringstream name;
        name << Maker::name << ", " << layout_name << ", paged_storage page_size " << page_size;
        const int max_tokens = 2 * page_size + 29;  // the last page of a sequence is partial
        const paged_storage::params p{.max_sequences = 7, .max_tokens = max_tokens,
                                      .page_size = page_size,
                                      .n_pages = 3 * ((max_tokens + page_size - 1) / page_size)};
        churn<codec, Layout, paged_storage>(layout, codecs, p, seed + std::uint32_t(page_size),
                                            name.str())
            .run(steps);
    }
}

template <class Layout>
void churn_codecs(const Layout& layout, const char* layout_name, std::uint32_t seed, int steps) {
    for_each_codec([&]<class Maker>() {
        churn_all_storages<Maker>(layout, layout_name, seed, steps);
        seed += 101;
    });
}

}  // namespace

TEST_CASE("churn: random add, append and remove over paged storage, every codec and layout",
          "[storage][churn]") {
    const std::uint32_t seed = std::uint32_t(env_int("KVCAR_CHURN_SEED", 20261204));
    const int steps = env_int("KVCAR_CHURN_STEPS", 1500);
    const auto start = std::chrono::steady_clock::now();
    churn_codecs(dense(1), "dense_layout (group = head)", seed, steps);
    churn_codecs(dense(2), "dense_layout (group = layer)", seed + 1, steps / 3);
    churn_codecs(reuse(1), "reuse_map (group = head)", seed + 2, steps);
    churn_codecs(reuse(2), "reuse_map (group = layer)", seed + 3, steps / 3);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    WARN("churn: seed " << seed << ", " << steps << " steps per configuration, " << seconds
                        << " s");
}

TEST_CASE("churn: contiguous storage under the same churn", "[storage][churn]") {
    const std::uint32_t seed = std::uint32_t(env_int("KVCAR_CHURN_SEED", 20261204)) + 7;
    const int steps = env_int("KVCAR_CHURN_STEPS", 1500);
    for_each_codec([&]<class Maker>() {
        for (int hpg : {1, 2}) {
            codec_zoo zoo(seed);
            const reuse_map layout = reuse(hpg);
            const auto codecs = make_codecs<Maker>(zoo, layout);
            using codec = typename decltype(codecs)::value_type;
            // A region of 37 tokens: the sequence's one "page" is not a power of two either.
            const contiguous_storage::params p{.max_sequences = 5, .max_tokens = 37};
            churn<codec, reuse_map, contiguous_storage>(layout, codecs, p, seed,
                                                        std::string(Maker::name) +
                                                            ", reuse_map, contiguous_storage")
                .run(steps / 3);
        }
    });
}
