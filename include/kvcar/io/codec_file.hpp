// kvcar/io/codec_file.hpp — everything a model needs to build its compressed KV cache, and the
// file that stores it (docs/codec_file.md describes the format).
//
// A codec_set is what calibration produces and a model loads: the geometry it was made for, the
// K and V reuse lists (which heads read an earlier layer's slot), and for every stored slot its
// codec (identity, linear, autoencoder, or any codec registered in a codec_list the functions
// are given, see codec/traits.hpp) and latent storage. It owns all parameter memory;
// `codecs()` hands out any_codec views into it, one per stored slot, in the layout's order, so
//   kv_cache<any_codec, reuse_map> cache(set.layout(), set.codecs(), storage_params);
// builds the cache a file describes. The file is safetensors (codec tensors, f32) with one JSON
// document in the `__metadata__` entry "kvcar"; loading validates every field and every tensor
// against each other and against the model's geometry, naming the file in every message. What a
// slot stores beyond its width, latent and storage is its codec registration's `members`: sizes
// and reals in the slot's JSON object, tensors named L<layer>.G<group>.<K|V>.<member>.
//
// Autoencoders are stored folded (BatchNorm merged into the FC before it, see
// codec/autoencoder.hpp): that is exactly what inference runs, and nothing is lost for it. The
// unfolded training form (BatchNorm γ, β and running statistics) is not stored; to fine-tune
// again, recreate it from the folded weights with γ = √(var + eps), β = mean measured on data.
#pragma once

#include <algorithm>
#include <any>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
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
#include "kvcar/io/json.hpp"
#include "kvcar/io/safetensors.hpp"
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

inline json_value reuse_json(const std::vector<reuse_entry>& entries) {
    json_value a = json_value::array();
    for (const reuse_entry& e : entries)
        a.push_back(
            json_value(json_value::array_type{e.layer, e.group, e.source_layer, e.source_group}));
    return a;
}

/// A members() visitor over a slot's parameters that writes its further sizes and reals to the
/// slot's JSON object and queues its tensors (width and latent are written for every codec).
struct slot_writer {
    json_value& slot;
    std::vector<tensor_to_write>& tensors;
    std::vector<std::vector<std::byte>>& keep;
    std::string prefix;

    void size(const char* name, const int& v) {
        const std::string_view n(name);
        if (n != "width" && n != "latent") slot.set(name, v);
    }
    void real(const char* name, const float& v) { slot.set(name, double(v)); }
    void tensor(const char* name, const std::vector<float>& v, std::initializer_list<int> shape) {
        tensors.push_back({prefix + name, dtype::f32,
                           std::vector<std::int64_t>(shape.begin(), shape.end()),
                           le_bytes(v, keep)});
    }
};

/// Reads the JSON metadata of a codec file, reporting problems as "codec file <path>: ...".
class codec_metadata_reader {
public:
    explicit codec_metadata_reader(std::string path) : path_(std::move(path)) {}

    [[noreturn]] void fail(const std::string& problem) const {
        throw error("kvcar: codec file " + path_ + ": " + problem);
    }

    const json_value& member(const json_value& obj, const char* key,
                             const std::string& where) const {
        const json_value* v = obj.find(key);
        if (!v) fail(where + " has no \"" + key + "\"");
        return *v;
    }
    std::string get_string(const json_value& obj, const char* key, const std::string& where) const {
        const json_value& v = member(obj, key, where);
        if (!v.is_string())
            fail(where + " \"" + key + "\" is " + json_value::kind_name(v.type()) +
                 ", expected a string");
        return v.as_string();
    }
    int get_int(const json_value& obj, const char* key, const std::string& where) const {
        return as_int(member(obj, key, where), where + " \"" + key + "\"");
    }
    int as_int(const json_value& v, const std::string& what) const {
        if (!v.is_integer() || v.as_int() < std::int64_t(-2147483647 - 1) ||
            v.as_int() > std::int64_t(2147483647))
            fail(what + " is " +
                 (v.is_number() ? std::string("not a 32-bit integer")
                                : std::string(json_value::kind_name(v.type()))) +
                 ", expected an integer");
        return int(v.as_int());
    }
    const json_value& get_object(const json_value& obj, const char* key,
                                 const std::string& where) const {
        const json_value& v = member(obj, key, where);
        if (!v.is_object())
            fail(where + " \"" + key + "\" is " + json_value::kind_name(v.type()) +
                 ", expected an object");
        return v;
    }
    const json_value& get_array(const json_value& obj, const char* key,
                                const std::string& where) const {
        const json_value& v = member(obj, key, where);
        if (!v.is_array())
            fail(where + " \"" + key + "\" is " + json_value::kind_name(v.type()) +
                 ", expected an array");
        return v;
    }

    std::vector<reuse_entry> reuse_list(const json_value& root, const char* key) const {
        const json_value& a = get_array(root, key, "metadata");
        std::vector<reuse_entry> out;
        for (std::size_t i = 0; i < a.size(); ++i) {
            const std::string what = std::string(key) + "[" + std::to_string(i) + "]";
            const json_value& e = a.at(i);
            if (!e.is_array() || e.size() != 4)
                fail(what +
                     " is not an array of 4 integers [layer, group, source_layer, "
                     "source_group]");
            out.push_back({as_int(e.at(0), what + "[0]"), as_int(e.at(1), what + "[1]"),
                           as_int(e.at(2), what + "[2]"), as_int(e.at(3), what + "[3]")});
        }
        return out;
    }

private:
    std::string path_;
};

}  // namespace detail

/// Writes `set` to `path` (validated first; written to path.tmp and renamed, so a failure
/// leaves no half file). The slots' kinds are of `List`; the file names each slot's codec.
template <class List = builtin_codecs>
void save_codec_set(const codec_set& set, const std::string& path) {
    set.validate<List>();
    const reuse_map map = set.layout();
    json_value model = json_value::object();
    model.set("architecture", set.model.architecture);
    model.set("n_layers", set.geometry.n_layers);
    model.set("n_kv_heads", set.geometry.n_kv_heads);
    model.set("head_dim", set.geometry.head_dim);
    model.set("name", set.model.name);

    std::vector<tensor_to_write> tensors;
    std::vector<std::vector<std::byte>> keep;
    std::vector<std::string> names;
    json_value slots = json_value::array();
    for (int i = 0; i < map.n_slots(); ++i) {
        const slot_owner o = map.owner(i);
        const slot_codec& s = *set.find(o.layer, o.group, o.kind);
        json_value j = json_value::object();
        j.set("layer", s.layer);
        j.set("group", s.group);
        j.set("kind", to_string(s.kind));
        j.set("codec", codec_name(List{}, int(s.codec)));
        j.set("width", s.width);
        j.set("latent", s.latent_width<List>());
        detail::slot_writer writer{j, tensors, keep,
                                   detail::slot_prefix(s.layer, s.group, s.kind)};
        s.with_codec<List>([&]<class Codec>() {
            using reg = codec_registration<Codec>;
            const typename reg::params none{};  // a codec the slot holds no parameters for
            const auto* p = s.find_params<typename reg::params>();
            reg::members(p ? *p : none, writer);
        });
        j.set("storage", to_string(s.storage));
        slots.push_back(std::move(j));
    }
    json_value calibration = json_value::object();
    calibration.set("text", set.calibration.text);
    calibration.set("tokens", set.calibration.tokens);
    calibration.set("notes", set.calibration.notes);

    json_value root = json_value::object();
    root.set("format", codec_file_format);
    root.set("version", codec_file_version);
    root.set("model", std::move(model));
    root.set("heads_per_group", set.heads_per_group);
    if (set.keys != codec_keys::unknown) root.set("keys", to_string(set.keys));
    root.set("key_reuse", detail::reuse_json(set.key_reuse));
    root.set("value_reuse", detail::reuse_json(set.value_reuse));
    root.set("slots", std::move(slots));
    root.set("calibration", std::move(calibration));
    write_safetensors(path, tensors, {{"kvcar", to_json(root)}});
}

namespace detail {

/// A members() visitor that fills a slot's parameters from its JSON object and the file's
/// tensors, checking each against the shape the sizes read before it give.
struct slot_reader {
    const codec_metadata_reader& r;
    const safetensors_file& file;
    const json_value& slot;
    const std::string& where;  // "slots[4] (1, 0, K)"
    const std::string& codec;  // its codec's name
    int width, latent;         // read for every codec
    std::string prefix;        // its tensors' name prefix
    std::set<std::string>& used_tensors;
    std::map<const int*, std::pair<std::string, int>> assigned{};  // the sizes set so far

    void size(const char* name, int& v) {
        const std::string_view n(name);
        const int value = n == "width"    ? width
                          : n == "latent" ? latent
                                          : r.get_int(slot, name, where);
        if (value <= 0)
            r.fail(where + " " + name + " must be positive (got " + std::to_string(value) + ")");
        // Two names for one member (an identity's latent is its width) must agree.
        if (const auto it = assigned.find(&v); it != assigned.end() && it->second.second != value)
            r.fail(where + " is " + with_article(codec) + " codec with " + name + " " +
                   std::to_string(value) + " but " + it->second.first + " " +
                   std::to_string(it->second.second));
        v = value;
        assigned[&v] = {name, value};
    }
    void real(const char* name, float& v) {
        const json_value& x = r.member(slot, name, where);
        if (!x.is_number()) r.fail(where + " " + name + " is not a number");
        v = float(x.as_double());
    }
    void tensor(const char* suffix, std::vector<float>& v, std::initializer_list<int> dims) {
        const std::string name = prefix + suffix;
        const std::vector<std::int64_t> shape(dims.begin(), dims.end());
        if (!file.contains(name))
            r.fail(where + " (" + codec + ") needs tensor '" + name +
                   "', which the file does not have");
        const tensor_view t = file.tensor(name);
        if (t.dtype != dtype::f32)
            r.fail("tensor '" + name + "' has dtype " + dtype_name(t.dtype) + ", expected F32");
        if (t.shape != shape)
            r.fail("tensor '" + name + "' has shape " + shape_text(t.shape) + ", expected " +
                   shape_text(shape) + " from " + where);
        v = tensor_to_float(t, name);
        used_tensors.insert(name);
    }
};

/// parse_codec_set over bytes it owns: the path loader hands its file's bytes over without a
/// copy, since safetensors_file keeps the bytes its tensor views point into.
template <class List>
codec_set parse_owned_codec_bytes(std::vector<std::byte> bytes, const std::string& source) {
    const codec_metadata_reader r(source);
    safetensors_file file = [&] {
        try {
            return safetensors_file::from_bytes(std::move(bytes), source);
        } catch (const error& e) {
            r.fail(slot_codec::strip(e.what()));
        }
    }();
    const auto meta = file.metadata().find("kvcar");
    if (meta == file.metadata().end())
        r.fail("is not a kvcar codec file: its safetensors metadata has no \"kvcar\" entry");
    json_value root;
    try {
        root = parse_json(meta->second, source + " metadata");
    } catch (const json_error& e) {
        r.fail("metadata is not valid JSON: " + std::to_string(e.line()) + ":" +
               std::to_string(e.column()) + ": " + e.problem());
    }
    if (!root.is_object()) r.fail("metadata is not a JSON object");
    const std::string format = r.get_string(root, "format", "metadata");
    if (format != codec_file_format)
        r.fail("is not a kvcar codec file: format is \"" + format + "\", expected \"" +
               codec_file_format + "\"");
    const int version = r.get_int(root, "version", "metadata");
    if (version != codec_file_version)
        r.fail("has format version " + std::to_string(version) + "; this kvcar reads version " +
               std::to_string(codec_file_version));

    codec_set set;
    const json_value& model = r.get_object(root, "model", "metadata");
    set.model.architecture = r.get_string(model, "architecture", "model");
    set.model.name = r.get_string(model, "name", "model");
    set.geometry.n_layers = r.get_int(model, "n_layers", "model");
    set.geometry.n_kv_heads = r.get_int(model, "n_kv_heads", "model");
    set.geometry.head_dim = r.get_int(model, "head_dim", "model");
    set.heads_per_group = r.get_int(root, "heads_per_group", "metadata");
    if (root.contains("keys")) {
        const std::string keys = r.get_string(root, "keys", "metadata");
        if (keys == "post-rope")
            set.keys = codec_keys::post_rope;
        else if (keys == "pre-rope")
            set.keys = codec_keys::pre_rope;
        else
            r.fail("metadata \"keys\" is \"" + keys + "\", not \"post-rope\" or \"pre-rope\"");
    }
    set.key_reuse = r.reuse_list(root, "key_reuse");
    set.value_reuse = r.reuse_list(root, "value_reuse");
    if (const json_value* cal = root.find("calibration")) {
        if (!cal->is_object()) r.fail("metadata \"calibration\" is not an object");
        if (cal->contains("text")) set.calibration.text = r.get_string(*cal, "text", "calibration");
        if (cal->contains("notes"))
            set.calibration.notes = r.get_string(*cal, "notes", "calibration");
        if (const json_value* tokens = cal->find("tokens")) {
            if (!tokens->is_integer() || tokens->as_int() < 0)
                r.fail("calibration \"tokens\" is not a non-negative integer");
            set.calibration.tokens = tokens->as_int();
        }
    }

    const json_value& slots = r.get_array(root, "slots", "metadata");
    std::set<std::string> used_tensors;
    set.slots.reserve(slots.size());
    for (std::size_t i = 0; i < slots.size(); ++i) {
        const std::string where = "slots[" + std::to_string(i) + "]";
        const json_value& j = slots.at(i);
        if (!j.is_object()) r.fail(where + " is not an object");
        slot_codec s;
        s.layer = r.get_int(j, "layer", where);
        s.group = r.get_int(j, "group", where);
        const std::string kind = r.get_string(j, "kind", where);
        if (kind != "K" && kind != "V") r.fail(where + " kind is \"" + kind + "\", not K or V");
        s.kind = kind == "K" ? kv_kind::key : kv_kind::value;
        const std::string slot_where = where + " " + s.name();
        const std::string codec = r.get_string(j, "codec", slot_where);
        const int index = codec_index_of_name(List{}, codec);
        if (index < 0) {
            std::string known;
            for (int k = 0; k < int(List::size); ++k)
                known += std::string(k == 0 ? "" : k + 1 == int(List::size) ? " or " : ", ") +
                         codec_name(List{}, k);
            r.fail(slot_where + " has unknown codec \"" + codec + "\" (expected " + known + ")");
        }
        s.codec = codec_kind(index);
        const std::string storage = r.get_string(j, "storage", slot_where);
        const auto st = parse_latent_storage(storage);
        if (!st)
            r.fail(slot_where + " has unknown storage \"" + storage +
                   "\" (expected f32, f16, bf16, int8 or fp8_e4m3)");
        s.storage = *st;
        s.width = r.get_int(j, "width", slot_where);
        const int latent = r.get_int(j, "latent", slot_where);
        if (s.width <= 0 || latent <= 0)
            r.fail(slot_where + " width and latent must be positive (got " +
                   std::to_string(s.width) + ", " + std::to_string(latent) + ")");
        slot_reader reader{r, file, j, slot_where, codec, s.width, latent,
                           slot_prefix(s.layer, s.group, s.kind), used_tensors};
        s.with_codec<List>([&]<class Codec>() {
            using reg = codec_registration<Codec>;
            reg::members(s.params<typename reg::params>(), reader);
        });
        set.slots.push_back(std::move(s));
    }
    for (const std::string& name : file.names())
        if (!used_tensors.count(name))
            r.fail("tensor '" + name + "' belongs to no slot of the metadata");

    // Every logical (layer, group, K/V) is either a listed slot or a reuse entry, so there are
    // at least as many entries as groups. Checked in 64 bits before validate() builds the layout: a geometry the
    // file cannot back with slots would otherwise size tables from the header alone (found by
    // fuzz/codec_file).
    if (set.heads_per_group > 0 && set.geometry.n_kv_heads > 0 && set.geometry.n_layers > 0 &&
        set.geometry.n_kv_heads % set.heads_per_group == 0) {
        const long long logical = 2LL * set.geometry.n_layers *
                                  (set.geometry.n_kv_heads / set.heads_per_group);
        const long long listed = static_cast<long long>(set.slots.size() + set.key_reuse.size() +
                                                        set.value_reuse.size());
        // Fewer entries than groups: name the first group nothing covers, found from the
        // entries alone (sorting them), not from tables the size of the claimed geometry. More
        // entries than groups is left to validate(), which names the duplicate or the cycle.
        if (logical > listed) {
            const long long groups = set.geometry.n_kv_heads / set.heads_per_group;
            auto index = [&](long long layer, long long group, kv_kind kind) {
                return (layer * groups + group) * 2 + int(kind);
            };
            std::vector<long long> covered;
            covered.reserve(std::size_t(listed));
            for (const slot_codec& c : set.slots) covered.push_back(index(c.layer, c.group, c.kind));
            for (const reuse_entry& e : set.key_reuse) covered.push_back(index(e.layer, e.group, kv_kind::key));
            for (const reuse_entry& e : set.value_reuse) covered.push_back(index(e.layer, e.group, kv_kind::value));
            std::sort(covered.begin(), covered.end());
            long long missing = 0;
            for (long long c : covered) {
                if (c != missing) break;
                ++missing;
            }
            const int layer = int(missing / 2 / groups), group = int(missing / 2 % groups);
            r.fail("stored slot " + slot_codec::identity(layer, group, kv_kind(missing % 2), 0).name() +
                   " has no codec (the geometry has " + std::to_string(logical) +
                   " logical K/V groups, the file lists " + std::to_string(listed) + ")");
        }
    }
    try {
        set.validate<List>();
    } catch (const error& e) {
        r.fail(slot_codec::strip(e.what()));
    }
    return set;
}

}  // namespace detail

/// Parses and validates a codec file held in memory (every field, tensor and reference; see
/// docs/codec_file.md), exactly as load_codec_set reads one from disk: the entry point for
/// files that did not come from a path (a download, an archive member, a fuzzer's input).
/// `bytes` is copied; `source` names the input in messages. Throws kvcar::error
/// "codec file <source>: <problem>", e.g. for bytes too short to be safetensors, a header
/// that runs past the end, metadata that is not a kvcar codec set, or a tensor that
/// contradicts it.
/// The slots' codecs are looked up by name in `List`.
template <class List = builtin_codecs>
codec_set parse_codec_set(std::span<const std::byte> bytes, const std::string& source) {
    return detail::parse_owned_codec_bytes<List>(std::vector<std::byte>(bytes.begin(), bytes.end()),
                                           source);
}

/// Reads and validates the codec file at `path` (parse_codec_set over the file's bytes).
/// Throws kvcar::error "codec file <path>: <problem>", also when the file cannot be read.
template <class List = builtin_codecs>
codec_set load_codec_set(const std::string& path) {
    std::vector<std::byte> bytes;
    try {
        bytes = detail::read_file_bytes(path, "safetensors");
    } catch (const error& e) {
        detail::codec_metadata_reader(path).fail(slot_codec::strip(e.what()));
    }
    return detail::parse_owned_codec_bytes<List>(std::move(bytes), path);
}

/// Loads a codec file for a model of geometry `expected`: as load_codec_set(path), and the file
/// must have been made for that geometry.
template <class List = builtin_codecs>
codec_set load_codec_set(const std::string& path, const kv_geometry& expected) {
    codec_set set = load_codec_set<List>(path);
    const kv_geometry& g = set.geometry;
    if (g.n_layers != expected.n_layers || g.n_kv_heads != expected.n_kv_heads ||
        g.head_dim != expected.head_dim)
        throw error("kvcar: codec file " + path + " was made for " + std::to_string(g.n_layers) +
                    " layers x " + std::to_string(g.n_kv_heads) + " KV heads x " +
                    std::to_string(g.head_dim) + ", this model has " +
                    std::to_string(expected.n_layers) + " x " +
                    std::to_string(expected.n_kv_heads) + " x " +
                    std::to_string(expected.head_dim));
    return set;
}

}  // namespace kvcar::io
