// kvcar/kv_cache.hpp — the host-side owner of a compressed KV cache: sequences, append, read,
// memory accounting.
//
// kv_cache ties the three parts together: the layout says which (layer, group, K/V) streams are
// stored and where reused ones read, the codecs (one per stored slot) turn a group's floats into
// a record, and the storage holds the records. Kernels never see this class, only `view(slot)`,
// the layout's slot table and the codecs. `append` and `read` here are the host reference path
// (tests, CPU models); a kernel does the same through the same page_view.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/layout/dense.hpp"
#include "kvcar/storage/sequence_table.hpp"
#include "kvcar/storage/contiguous.hpp"
#include "kvcar/page_view.hpp"

namespace kvcar {

/// A compressed KV cache on the host: one codec per stored slot, a layout that maps every logical
/// (layer, group, K/V) to a slot, and a storage that holds the encoded records of every live
/// sequence. Owns all of it; kernels read it through view(slot), the layout and codecs(). Every
/// method that takes a sequence, layer or slot throws kvcar::error when it is out of range or not
/// live, and then changes nothing.
template <kv_codec Codec, kv_layout Layout = dense_layout, kv_storage Storage = contiguous_storage>
requires std::constructible_from<Storage, typename Storage::params, std::vector<std::size_t>>
class kv_cache {
public:
    using codec_type = Codec;  ///< the codec type of every stored slot
    using layout_type = Layout;  ///< maps (layer, group, K/V) to slots (dense_layout or reuse_map)
    using storage_type = Storage;  ///< where the records live (contiguous_storage or paged_storage)
    /// The storage's constructor parameters (capacity: sequences, tokens or pages)
    using storage_params = typename Storage::params;

    /// `codecs[slot]` encodes stored slot `slot`; its group_width must be the layout's
    /// heads_per_group * head_dim.
    kv_cache(Layout layout, std::vector<Codec> codecs, storage_params params)
        : layout_(std::move(layout)),
          codecs_(std::move(codecs)),
          storage_(params, validated_record_bytes(layout_, codecs_)),
          sequences_(storage_.max_sequences(), layout_.geometry().n_layers, "kv_cache") {}

    /// The same codec for every stored slot.
    kv_cache(Layout layout, const Codec& codec, storage_params params)
        : kv_cache(layout, std::vector<Codec>(std::size_t(layout.n_slots()), codec), params) {}

    /// The layout the cache was built with.
    const Layout& layout() const { return layout_; }
    /// The logical shape this cache stores (the layout's).
    kv_geometry geometry() const { return layout_.geometry(); }
    /// Stored slots, one codec each (reused streams have no slot of their own).
    int n_slots() const { return int(codecs_.size()); }
    /// The codec of stored slot `slot`; throws kvcar::error when `slot` is outside [0,
    /// n_slots()).
    const Codec& codec(int slot) const {
        check_slot(slot);
        return codecs_[std::size_t(slot)];
    }
    /// Every stored slot's codec, indexed by slot.
    const std::vector<Codec>& codecs() const { return codecs_; }
    /// The storage, for memory accounting and for kernels that need its parameters.
    const Storage& storage() const { return storage_; }
    /// Where slot `slot`'s records are, for kernels: record(sequence, token).
    page_view view(int slot) const {
        check_slot(slot);
        return storage_.view(slot);
    }

    /// Sequences the storage has room for at once (live or not).
    int max_sequences() const { return storage_.max_sequences(); }
    /// Whether `seq` is a sequence id handed out by add_sequence and not removed since; false for
    /// any out-of-range id.
    bool is_live(int seq) const { return sequences_.is_live(seq); }
    /// How many sequences are live now.
    int live_sequences() const { return sequences_.live_sequences(); }

    /// Starts an empty sequence and returns its id, the lowest one not in use.
    int add_sequence() { return sequences_.add(); }
    /// Ends a sequence and frees its storage; its id may be handed out again.
    void remove_sequence(int seq) {
        check_live(seq);
        storage_.release(seq);
        sequences_.remove(seq);
    }

    /// Tokens appended to every layer: the prefix attention may use in all layers.
    int length(int seq) const { return sequences_.length(seq); }
    /// Tokens appended to layer `layer` of sequence `seq`; throws kvcar::error when `seq` is not
    /// live or `layer` is out of range.
    int length(int seq, int layer) const { return sequences_.length(seq, layer); }
    /// Tokens the storage holds room for now (all layers and slots alike).
    int capacity(int seq) const {
        check_live(seq);
        return storage_.capacity(seq);
    }

    /// Appends n tokens of one layer at positions length(seq, layer) .. + n. `k` and `v` are
    /// [n][n_kv_heads * head_dim] row-major. Groups whose slot this layer does not own (reused)
    /// are not stored: they read their source's tokens at the same positions.
    void append(int seq, int layer, std::span<const float> k, std::span<const float> v) {
        check_live(seq);
        check_layer(layer);
        const std::size_t width = std::size_t(geometry().token_width());
        if (k.size() != v.size()) {
            throw error("kvcar: kv_cache: append to layer " + std::to_string(layer) + " got " +
                        std::to_string(k.size()) + " K floats but " + std::to_string(v.size()) +
                        " V floats");
        }
        if (k.size() % width != 0) {
            throw error("kvcar: kv_cache: append to layer " + std::to_string(layer) + " got " +
                        std::to_string(k.size()) + " floats, not a multiple of the token width " +
                        std::to_string(width));
        }
        const int n = int(k.size() / width);
        const int begin = length_ref(seq, layer);
        if (n == 0) return;
        if (std::size_t(begin) + std::size_t(n) > std::size_t(max_tokens_bound())) {
            throw error("kvcar: kv_cache: appending " + std::to_string(n) + " tokens to sequence " +
                        std::to_string(seq) + " layer " + std::to_string(layer) + " (length " +
                        std::to_string(begin) + ") exceeds max_tokens " +
                        std::to_string(max_tokens_bound()));
        }
        const int end = begin + n;
        // All or nothing: storage either makes room for every token or throws untouched, and
        // nothing below can fail.
        if (storage_.capacity(seq) < end) storage_.reserve(seq, end);

        const int groups = layout_.groups_per_layer();
        const std::size_t group_width =
            std::size_t(layout_.heads_per_group()) * std::size_t(geometry().head_dim);
        for (kv_kind kind : {kv_kind::key, kv_kind::value}) {
            const float* src = (kind == kv_kind::key ? k : v).data();
            for (int g = 0; g < groups; ++g) {
                if (!layout_.owns(layer, g, kind)) continue;
                const int slot = layout_.slot(layer, g, kind);
                const Codec& c = codecs_[std::size_t(slot)];
                const page_view pv = storage_.view(slot);
                for (int t = 0; t < n; ++t) {
                    c.encode(src + std::size_t(t) * width + std::size_t(g) * group_width,
                             pv.record(seq, begin + t));
                }
            }
        }
        length_ref(seq, layer) = end;
    }

    /// Decodes tokens [begin, end) of one layer's K or V into `out`, [(end - begin)][n_kv_heads *
    /// head_dim]. A reused group decodes its source slot at the same token positions.
    void read(int seq, int layer, kv_kind kind, int begin, int end, std::span<float> out) const {
        check_live(seq);
        check_layer(layer);
        if (kind != kv_kind::key && kind != kv_kind::value) {
            throw error("kvcar: kv_cache: read of kind " + std::to_string(int(kind)) +
                        ", neither K nor V");
        }
        if (begin < 0 || begin > end) {
            throw error("kvcar: kv_cache: read of tokens [" + std::to_string(begin) + ", " +
                        std::to_string(end) + ") is not a range (need 0 <= begin <= end)");
        }
        if (end > length_ref(seq, layer)) {
            throw error("kvcar: kv_cache: reading past a sequence's length: tokens [" +
                        std::to_string(begin) + ", " + std::to_string(end) + ") of layer " +
                        std::to_string(layer) + " but sequence " + std::to_string(seq) + " has " +
                        std::to_string(length_ref(seq, layer)));
        }
        const int groups = layout_.groups_per_layer();
        for (int g = 0; g < groups; ++g) {
            const slot_owner src = layout_.owner(layout_.slot(layer, g, kind));
            if (end > length_ref(seq, src.layer)) {
                throw error("kvcar: kv_cache: reading past a sequence's length: layer " +
                            std::to_string(layer) + " group " + std::to_string(g) + " " +
                            to_string(kind) + " reuses layer " + std::to_string(src.layer) +
                            " group " + std::to_string(src.group) + ", which holds " +
                            std::to_string(length_ref(seq, src.layer)) + " tokens of sequence " +
                            std::to_string(seq) + ", but tokens up to " + std::to_string(end) +
                            " were asked for");
            }
        }
        const std::size_t width = std::size_t(geometry().token_width());
        const std::size_t needed = std::size_t(end - begin) * width;
        if (out.size() < needed) {
            throw error("kvcar: kv_cache: out span too small: " + std::to_string(out.size()) +
                        " floats for " + std::to_string(end - begin) + " tokens of " +
                        std::to_string(width) + " floats");
        }

        const std::size_t group_width =
            std::size_t(layout_.heads_per_group()) * std::size_t(geometry().head_dim);
        for (int g = 0; g < groups; ++g) {
            const int slot = layout_.slot(layer, g, kind);
            const Codec& c = codecs_[std::size_t(slot)];
            const page_view pv = storage_.view(slot);
            for (int t = begin; t < end; ++t) {
                float* dst = out.data() + std::size_t(t - begin) * width;
                c.decode(pv.record(seq, t), dst + std::size_t(g) * group_width);
            }
        }
    }

    /// Stored bytes per token, all layers, K and V: Σ over stored slots of the record size.
    std::size_t bytes_per_token() const {
        std::size_t sum = 0;
        for (const Codec& c : codecs_) sum += std::size_t(c.bytes_per_group());
        return sum;
    }
    /// Bytes of records written: for every live sequence and stored slot, the tokens its owner
    /// layer appended times the slot's record size.
    std::size_t bytes_used() const {
        std::size_t sum = 0;
        for (int seq = 0; seq < max_sequences(); ++seq) {
            if (!is_live(seq)) continue;
            for (int slot = 0; slot < n_slots(); ++slot) {
                const slot_owner o = layout_.owner(slot);
                sum += std::size_t(length_ref(seq, o.layer)) *
                       std::size_t(codecs_[std::size_t(slot)].bytes_per_group());
            }
        }
        return sum;
    }
    /// Bytes the storage holds for live sequences (whole regions or pages, used or not).
    std::size_t bytes_reserved() const { return storage_.bytes_reserved(); }
    /// How many times smaller than a dense fp16 cache of the same geometry, per token.
    double compression_ratio() const {
        return double(geometry().fp16_bytes_per_token()) / double(bytes_per_token());
    }

private:
    static std::vector<std::size_t> validated_record_bytes(const Layout& layout,
                                                           const std::vector<Codec>& codecs) {
        require(int(codecs.size()) == layout.n_slots(),
                "kv_cache: " + std::to_string(codecs.size()) + " codecs for a layout of " +
                    std::to_string(layout.n_slots()) + " slots (one codec per slot)");
        const int group_width = layout.heads_per_group() * layout.geometry().head_dim;
        std::vector<std::size_t> bytes(codecs.size());
        for (std::size_t slot = 0; slot < codecs.size(); ++slot) {
            const Codec& c = codecs[slot];
            const slot_owner o = layout.owner(int(slot));
            const std::string name = "kv_cache: codec for slot " + std::to_string(slot) +
                                     " (layer " + std::to_string(o.layer) + ", group " +
                                     std::to_string(o.group) + ", " + to_string(o.kind) + ")";
            require(int(c.group_width()) == group_width,
                    name + " has group width " + std::to_string(int(c.group_width())) +
                        ", the layout's groups are " + std::to_string(group_width) + " wide");
            bytes[slot] = std::size_t(c.bytes_per_group());
            require(bytes[slot] > 0 && bytes[slot] % 4 == 0,
                    name + " has records of " + std::to_string(bytes[slot]) +
                        " bytes; records must be a positive multiple of 4 bytes");
        }
        return bytes;
    }

    int n_layers() const { return layout_.geometry().n_layers; }
    // Largest token count a sequence may reach; storages that do not say are bounded by capacity.
    int max_tokens_bound() const {
        if constexpr (requires(const Storage& s) { s.max_tokens(); }) {
            return storage_.max_tokens();
        } else {
            return 0x7fffffff;
        }
    }
    int& length_ref(int seq, int layer) { return sequences_.at(seq, layer); }
    int length_ref(int seq, int layer) const { return sequences_.at(seq, layer); }
    void check_live(int seq) const { sequences_.check_live(seq); }
    void check_layer(int layer) const { sequences_.check_layer(layer); }
    void check_slot(int slot) const {
        if (slot < 0 || slot >= n_slots()) {
            throw error("kvcar: kv_cache: slot " + std::to_string(slot) + " out of range [0, " +
                        std::to_string(n_slots()) + ")");
        }
    }

    Layout layout_;
    std::vector<Codec> codecs_;
    Storage storage_;
    sequence_table sequences_;  // live ids, tokens appended per layer
};

/// Deduces the storage from its params, so that
///     kv_cache cache(layout, codec, paged_storage::params{...});
/// is a paged cache (without these guides the default storage, contiguous, would be deduced and
/// the params would not convert). Braced params without a type still mean contiguous_storage.
template <kv_layout L, kv_codec C, class P>
    requires kv_storage<typename P::storage_type>
kv_cache(L, C, P) -> kv_cache<C, L, typename P::storage_type>;
/// The same, with one codec per stored slot.
template <kv_layout L, kv_codec C, class P>
    requires kv_storage<typename P::storage_type>
kv_cache(L, std::vector<C>, P) -> kv_cache<C, L, typename P::storage_type>;

}  // namespace kvcar
