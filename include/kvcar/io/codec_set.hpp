// kvcar/io/codec_set.hpp — the codec set: everything a model needs to build its compressed KV
// cache (geometry, reuse lists, one codec per stored slot, provenance), and the helpers the
// codec file's reader and writer share. io/codec_file.hpp has the format's description;
// io/codec_file_write.hpp and io/codec_file_read.hpp store and load a set.
#pragma once

#include <algorithm>
#include <any>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcar/codec/any.hpp"
#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/linear.hpp"
#include "kvcar/codec/traits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/layout/reuse_map.hpp"

namespace kvcar::io {

/// The format name and version this header writes and reads.
inline constexpr const char* codec_file_format = "kvcar-codec";
/// The format version written; loading any other version throws.
inline constexpr int codec_file_version = 1;

namespace detail {

/// A members() visitor that finds the size member named `key` (the first one listed).
struct size_finder {
    const char* key;
    int found = 0;
    void size(const char* name, const int& v) {
        if (std::string_view(name) == key && found == 0) found = v;
    }
    void real(const char*, const float&) {}
    template <class Array>
    void tensor(const char*, const Array&, std::initializer_list<int>) {}
};

}  // namespace detail

/// The codec of one stored slot, owning its parameters. Its `codec` is a kind of a codec list:
/// builtin_codecs unless the member templates are given another list (one that a user's codecs
/// extend; the file stores the codec's name).
struct slot_codec {
    int layer = 0;                                 ///< the layer that stores this slot
    int group = 0;                                 ///< the group within the layer
    kv_kind kind = kv_kind::key;                   ///< K or V
    codec_kind codec = codec_kind::identity;       ///< which transform (index in the list)
    latent_storage storage = latent_storage::f16;  ///< the latent's element format
    int width = 0;                                 ///< D, the group width (every kind)
    linear_params linear;                          ///< the parameters when codec == linear
    folded_autoencoder autoencoder;                ///< the parameters when codec == autoencoder
    /// The parameters of any other registered codec (its registration's `params` type).
    std::any extra;

    /// An identity codec for (layer, group, kind): the group stored as it is, `width` floats in
    /// `storage`.
    static slot_codec identity(int layer, int group, kv_kind kind, int width,
                               latent_storage storage = latent_storage::f16) {
        slot_codec s;
        s.layer = layer;
        s.group = group;
        s.kind = kind;
        s.codec = codec_kind::identity;
        s.storage = storage;
        s.width = width;
        return s;
    }
    /// A linear codec for (layer, group, kind) owning `params`; the width is params.width.
    static slot_codec make_linear(int layer, int group, kv_kind kind, linear_params params,
                                  latent_storage storage = latent_storage::f16) {
        return make<linear_codec<>>(layer, group, kind, std::move(params), storage);
    }
    /// An autoencoder codec for (layer, group, kind) owning `params`; the width is params.width.
    static slot_codec make_autoencoder(int layer, int group, kv_kind kind,
                                       folded_autoencoder params,
                                       latent_storage storage = latent_storage::f16) {
        return make<autoencoder_codec<>>(layer, group, kind, std::move(params), storage);
    }
    /// A slot of the registered `Codec` (kind: its index in `List`) owning `params`; the width is
    /// the one its members() name "width".
    template <registered_codec Codec, class List = builtin_codecs>
    static slot_codec make(int layer, int group, kv_kind kind,
                           typename codec_registration<Codec>::params params,
                           latent_storage storage = latent_storage::f16) {
        constexpr int index = codec_index_in<Codec>(List{});
        static_assert(index >= 0, "slot_codec::make: the codec is not in the list");
        slot_codec s = identity(layer, group, kind, size_member<Codec>(params, "width"), storage);
        s.codec = codec_kind(index);
        s.params<typename codec_registration<Codec>::params>() = std::move(params);
        return s;
    }

    /// d: stored latent elements per token.
    template <class List = builtin_codecs>
    int latent_width() const {
        return view<List>().latent_width();
    }

    /// "(3, 0, K)", as messages name a slot.
    std::string name() const {
        std::string s(1, '(');
        s += std::to_string(layer);
        s += ", ";
        s += std::to_string(group);
        s += ", ";
        s += to_string(kind);
        s += ')';
        return s;
    }

    /// Checks the codec's own fields and parameters (not its place in a set): throws naming the
    /// slot and the problem.
    template <class List = builtin_codecs>
    void validate() const {
        const std::string me = "slot " + name() + ": ";
        require(kind == kv_kind::key || kind == kv_kind::value,
                me + "kind " + std::to_string(int(kind)) + " is neither K nor V");
        require(int(codec) < int(List::size),
                me + "unknown codec kind " + std::to_string(int(codec)));
        require(parse_latent_storage(to_string(storage)).has_value(),
                me + "unknown latent storage " + std::to_string(int(storage)));
        require(width > 0, me + "width must be positive (got " + std::to_string(width) + ")");
        try {
            with_codec<List>([&]<class Codec>() {
                using reg = codec_registration<Codec>;
                // Parameters the slot does not hold (an identity's) are the slot's width alone.
                if (const auto* p = find_params<typename reg::params>()) {
                    reg::validate(*p);
                    const int w = size_member<Codec>(*p, "width");
                    require(w == width, std::string(reg::name) + " parameters: width " +
                                            std::to_string(w) + " differs from the slot's width " +
                                            std::to_string(width));
                }
            });
            view<List>().validate();
        } catch (const error& e) {
            throw error("kvcar: " + me + strip(e.what()));
        }
    }

    /// The run-time codec over this slot's parameters (valid while *this lives, unmodified).
    template <class List = builtin_codecs>
    any_codec_for<List> view() const {
        any_codec_for<List> a;
        a.kind = codec;
        a.storage = storage;
        with_codec<List>([&]<class Codec>() {
            using reg = codec_registration<Codec>;
            const typename reg::params none{};
            const auto* p = find_params<typename reg::params>();
            registered_view<Codec> v = reg::view_of(p ? *p : none);
            set_width_visitor set{width};
            reg::members(v, set);  // the slot's width is the codec's D
            a.set_view(v);
        });
        return a;
    }

    /// The owning parameters of type P (a registration's `params`): the built-in kinds keep theirs
    /// in the named members above, every other codec in `extra` (created here when absent).
    template <class P>
    P& params() {
        if constexpr (std::is_same_v<P, linear_params>) {
            return linear;
        } else if constexpr (std::is_same_v<P, folded_autoencoder>) {
            return autoencoder;
        } else {
            if (!std::any_cast<P>(&extra)) extra = P{};
            return *std::any_cast<P>(&extra);
        }
    }
    /// The parameters of type P this slot holds, or null (see params()).
    template <class P>
    const P* find_params() const {
        if constexpr (std::is_same_v<P, linear_params>) return &linear;
        else if constexpr (std::is_same_v<P, folded_autoencoder>) return &autoencoder;
        else return std::any_cast<P>(&extra);
    }

    /// Calls `f.template operator()<Codec>()` for this slot's codec in List (nothing for an unknown
    /// kind).
    template <class List, class F>
    void with_codec(F&& f) const {
        [&]<class... Codecs>(codec_list<Codecs...>) {
            with_codec_at<Codecs...>(int(codec), f);
        }(List{});
    }

    /// The value of the size member `key` of Codec's params or view `x` (0 when it has none).
    template <class Codec, class X>
    static int size_member(const X& x, const char* key) {
        detail::size_finder f{key};
        codec_registration<Codec>::members(x, f);
        return f.found;
    }

    /// A message without its "kvcar: " prefix, to nest it in another.
    static std::string strip(const char* what) {
        std::string s(what);
        if (s.rfind("kvcar: ", 0) == 0) s.erase(0, 7);
        return s;
    }

private:
    /// Sets a view's "width" member (and an identity's latent, the same int) to the slot's.
    struct set_width_visitor {
        int width;
        void size(const char* name, int& v) {
            if (std::string_view(name) == "width") v = width;
        }
        void real(const char*, float&) {}
        void tensor(const char*, const float*&, std::initializer_list<int>) {}
    };
};

/// Which keys the K codecs were fitted to, the metadata's "keys": as attention reads them, after
/// RoPE (models without RoPE, such as GPT-2, always have these), or before RoPE (the cache
/// rotates them on read). A codec fitted to one form is wrong for the other (+31% perplexity on
/// llama-tiny), so a tool refuses a mismatch. `unknown`: the file does not say (files written
/// before the field existed).
enum class codec_keys : std::uint8_t { unknown, post_rope, pre_rope };

/// "post-rope", "pre-rope" or "unknown".
inline const char* to_string(codec_keys k) {
    switch (k) {
        case codec_keys::post_rope:
            return "post-rope";
        case codec_keys::pre_rope:
            return "pre-rope";
        case codec_keys::unknown:
        default:
            return "unknown";
    }
}

/// Free-form provenance, stored as given.
struct codec_model_info {
    std::string architecture;  ///< "gpt2", "llama", ...
    std::string name;          ///< e.g. the checkpoint's folder name
};
/// Where the codecs came from: free-form, stored as given.
struct codec_calibration_info {
    std::string text;         ///< what the codecs were fitted on, e.g. "wikitext-2 validation"
    std::int64_t tokens = 0;  ///< tokens they were fitted on (>= 0)
    std::string notes;        ///< anything else worth keeping (settings, versions)
};

/// Everything a model needs to build its compressed KV cache: the geometry, the reuse lists and one
/// codec per stored slot (see the file comment). Owns all parameter memory.
struct codec_set {
    kv_geometry geometry;                  ///< the model's KV geometry the codecs were made for
    int heads_per_group = 1;               ///< KV heads per group (1 = per head)
    std::vector<reuse_entry> key_reuse;    ///< K groups that read an earlier layer's slot
    std::vector<reuse_entry> value_reuse;  ///< V groups that read an earlier layer's slot
    std::vector<slot_codec> slots;         ///< one per stored slot, any order
    codec_model_info model;                ///< provenance: the model
    codec_calibration_info calibration;    ///< provenance: the calibration data
    codec_keys keys = codec_keys::unknown;  ///< the keys the K codecs were fitted to

    /// Every (layer, group) stored with the same codec kind `identity` of `storage`: the
    /// uncompressed baseline, and a starting point to replace some slots' codecs.
    static codec_set identity(kv_geometry geometry, int heads_per_group = 1,
                              latent_storage storage = latent_storage::f16) {
        codec_set s;
        s.geometry = geometry;
        s.heads_per_group = heads_per_group;
        const reuse_map map = s.layout();
        for (int slot = 0; slot < map.n_slots(); ++slot) {
            const slot_owner o = map.owner(slot);
            s.slots.push_back(
                slot_codec::identity(o.layer, o.group, o.kind, map.group_width(), storage));
        }
        return s;
    }

    /// The layout: reuse_map validates the geometry and the reuse lists.
    reuse_map layout() const {
        try {
            return reuse_map(geometry, heads_per_group, key_reuse, value_reuse);
        } catch (const error& e) {
            throw error("kvcar: codec_set: " + slot_codec::strip(e.what()));
        }
    }

    /// The codec of (layer, group, kind) as stored in `slots`, or null (reused or missing).
    const slot_codec* find(int layer, int group, kv_kind kind) const {
        for (const slot_codec& s : slots)
            if (s.layer == layer && s.group == group && s.kind == kind) return &s;
        return nullptr;
    }

    /// Throws kvcar::error naming the first problem: layout, a slot out of range, listed twice,
    /// reused (stores nothing) or missing, a codec whose width is not the group width, or whose
    /// parameters are invalid.
    /// The slots' kinds are of `List` (see slot_codec).
    template <class List = builtin_codecs>
    void validate() const {
        (void)ordered_slots<List>();
    }

    /// Views of every stored slot's codec, indexed by the layout's slot number. Valid while this
    /// set lives and its slots are not modified.
    template <class List = builtin_codecs>
    std::vector<any_codec_for<List>> codecs() const {
        const std::vector<const slot_codec*> order = ordered_slots<List>();
        std::vector<any_codec_for<List>> out;
        out.reserve(order.size());
        for (const slot_codec* s : order) out.push_back(s->view<List>());
        return out;
    }

    /// Bytes the cache stores per token, all layers, K and V.
    template <class List = builtin_codecs>
    std::size_t bytes_per_token() const {
        std::size_t total = 0;
        for (const auto& c : codecs<List>()) total += c.bytes_per_group();
        return total;
    }
    /// fp16 bytes per token / stored bytes per token.
    template <class List = builtin_codecs>
    double compression_ratio() const {
        return double(geometry.fp16_bytes_per_token()) / double(bytes_per_token<List>());
    }

private:
    /// Validates everything and returns the slots in the layout's slot order.
    template <class List>
    std::vector<const slot_codec*> ordered_slots() const {
        const reuse_map map = layout();
        const std::string me = "codec_set: ";
        const int groups = map.groups_per_layer();
        std::vector<const slot_codec*> order(std::size_t(map.n_slots()), nullptr);
        for (const slot_codec& s : slots) {
            require(s.layer >= 0 && s.layer < geometry.n_layers,
                    me + "slot " + s.name() + " has layer " + std::to_string(s.layer) +
                        " out of range [0, " + std::to_string(geometry.n_layers) + ")");
            require(s.group >= 0 && s.group < groups,
                    me + "slot " + s.name() + " has group " + std::to_string(s.group) +
                        " out of range [0, " + std::to_string(groups) + ")");
            require(s.kind == kv_kind::key || s.kind == kv_kind::value,
                    me + "slot " + s.name() + " is neither K nor V");
            if (!map.owns(s.layer, s.group, s.kind)) {
                const slot_owner src = map.owner(map.slot(s.layer, s.group, s.kind));
                throw error("kvcar: " + me + "slot " + s.name() + " is reused (it reads layer " +
                            std::to_string(src.layer) + " group " + std::to_string(src.group) +
                            ") and stores nothing, but has a codec");
            }
            const slot_codec*& at = order[std::size_t(map.slot(s.layer, s.group, s.kind))];
            require(at == nullptr, me + "slot " + s.name() + " is listed twice");
            at = &s;
            require(s.width == map.group_width(),
                    me + "slot " + s.name() + " has width " + std::to_string(s.width) +
                        " but a group is " + std::to_string(map.heads_per_group()) + " heads x " +
                        std::to_string(geometry.head_dim) + " = " +
                        std::to_string(map.group_width()));
            // A codec whose members name a size "heads" spans that many KV heads: a group's.
            s.with_codec<List>([&]<class Codec>() {
                using reg = codec_registration<Codec>;
                const auto* p = s.find_params<typename reg::params>();
                const int heads = p ? slot_codec::size_member<Codec>(*p, "heads") : 0;
                require(heads == 0 || heads == heads_per_group,
                        me + "slot " + s.name() + " is " + with_article(reg::name) +
                            " codec over " + std::to_string(heads) + " heads but a group has " +
                            std::to_string(heads_per_group));
            });
            try {
                s.validate<List>();
            } catch (const error& e) {
                throw error("kvcar: " + me + slot_codec::strip(e.what()));
            }
        }
        for (std::size_t i = 0; i < order.size(); ++i) {
            if (order[i]) continue;
            const slot_owner o = map.owner(int(i));
            throw error("kvcar: " + me + "stored slot " +
                        slot_codec::identity(o.layer, o.group, o.kind, 0).name() + " has no codec");
        }
        return order;
    }
};

namespace detail {

inline std::string slot_prefix(int layer, int group, kv_kind kind) {
    std::string s(1, 'L');
    s += std::to_string(layer);
    s += ".G";
    s += std::to_string(group);
    s += '.';
    s += to_string(kind);
    s += '.';
    return s;
}

/// Little-endian bytes of floats (a copy only on big-endian hosts).
inline std::span<const std::byte> le_bytes(const std::vector<float>& v,
                                           std::vector<std::vector<std::byte>>& keep) {
    if constexpr (std::endian::native == std::endian::little) {
        return std::as_bytes(std::span<const float>(v));
    } else {
        std::vector<std::byte> b(v.size() * 4);
        for (std::size_t i = 0; i < v.size(); ++i) {
            std::uint32_t u;
            std::memcpy(&u, &v[i], 4);
            for (int k = 0; k < 4; ++k) b[i * 4 + std::size_t(k)] = std::byte(u >> (8 * k));
        }
        keep.push_back(std::move(b));
        return keep.back();
    }
}

}  // namespace detail

}  // namespace kvcar::io
