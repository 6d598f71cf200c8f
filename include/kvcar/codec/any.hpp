// kvcar/codec/any.hpp — a codec chosen at run time among a list of registered codecs
// (codec/traits.hpp; by default identity, linear and autoencoder), with the latent stored as f32,
// f16, bf16, int8 or fp8 e4m3.
//
// A model that loads its codecs from a file (io/codec_file.hpp) cannot name their types at
// compile time, and one cache may mix kinds: the paper compresses N of the layers with an
// autoencoder and leaves the rest at fp16. any_codec is one value type for all of them. It holds
// the kind (the codec's index in its list), the storage and the bytes of the concrete codec's
// float view (its widths and parameter pointers), and every member rebuilds the concrete view on
// the stack and forwards to it, so its records and outputs are bit-identical to the concrete
// codec's: it adds no arithmetic of its own. The dispatch costs a few instructions per encoded or
// decoded group; a kernel that wants the concrete type in its inner loop dispatches once with
// `visit`. basic_any_codec<Codecs...> does the same over a list that includes a user's codecs.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/linear.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/codec/traits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"

namespace kvcar {

/// The built-in codecs, in kind order: what any_codec, codec files and the tools know by default.
/// A user's codec joins a basic_any_codec list of its own (see codec/traits.hpp).
using builtin_codecs = codec_list<identity_codec<>, linear_codec<>, autoencoder_codec<>>;

/// A codec's kind: its index in a codec list (builtin_codecs for the named values). Codec files
/// store the codec's name, not this number.
enum class codec_kind : std::uint8_t { identity = 0, linear = 1, autoencoder = 2 };
static_assert(codec_index_in<linear_codec<>>(builtin_codecs{}) == int(codec_kind::linear) &&
                  codec_index_in<autoencoder_codec<>>(builtin_codecs{}) ==
                      int(codec_kind::autoencoder),
              "codec_kind names the positions of builtin_codecs");

/// How the latent is stored: element by element as a float format, or quantized per record
/// (quantized_codec: d bytes plus an f32 scale and offset).
enum class latent_storage : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, int8 = 3, fp8_e4m3 = 4 };

/// Every built-in codec_kind, in value order (for loops over kinds and parsing).
inline constexpr auto all_codec_kinds = [] {
    std::array<codec_kind, builtin_codecs::size> kinds{};
    for (std::size_t i = 0; i < kinds.size(); ++i) kinds[i] = codec_kind(i);
    return kinds;
}();
/// Every latent_storage, in value order (for loops over storages and parsing).
inline constexpr latent_storage all_latent_storages[] = {latent_storage::f32, latent_storage::f16,
                                                         latent_storage::bf16, latent_storage::int8,
                                                         latent_storage::fp8_e4m3};

/// The registered names of the built-in kinds ("identity", "linear", "autoencoder"), "?" for
/// another value.
constexpr const char* to_string(codec_kind k) { return codec_name(builtin_codecs{}, int(k)); }
/// "f32", "f16", "bf16" (element_traits names), "int8", "fp8_e4m3".
constexpr const char* to_string(latent_storage s) {
    switch (s) {
        case latent_storage::f32:
            return "f32";
        case latent_storage::f16:
            return "f16";
        case latent_storage::bf16:
            return "bf16";
        case latent_storage::int8:
            return "int8";
        case latent_storage::fp8_e4m3:
            return "fp8_e4m3";
    }
    return "?";
}
/// The built-in codec_kind named `name` (as to_string spells it), or nullopt for an unknown name.
constexpr std::optional<codec_kind> parse_codec_kind(std::string_view name) {
    const int i = codec_index_of_name(builtin_codecs{}, name);
    if (i < 0) return std::nullopt;
    return codec_kind(i);
}
/// The latent_storage named `name` (as to_string spells it), or nullopt for an unknown name.
constexpr std::optional<latent_storage> parse_latent_storage(std::string_view name) {
    for (latent_storage s : all_latent_storages)
        if (name == to_string(s)) return s;
    return std::nullopt;
}
/// int8 and fp8_e4m3 wrap the codec in quantized_codec; the others store floats element-wise.
constexpr bool is_quantized(latent_storage s) {
    return s == latent_storage::int8 || s == latent_storage::fp8_e4m3;
}

/// The storage tag of a concrete latent element type.
template <class T>
inline constexpr latent_storage latent_storage_of = latent_storage::f32;
/// f16 latents.
template <>
inline constexpr latent_storage latent_storage_of<f16> = latent_storage::f16;
/// bf16 latents.
template <>
inline constexpr latent_storage latent_storage_of<bf16> = latent_storage::bf16;
/// int8 latents (quantized per record).
template <>
inline constexpr latent_storage latent_storage_of<std::int8_t> = latent_storage::int8;
/// fp8 e4m3 latents (quantized per record).
template <>
inline constexpr latent_storage latent_storage_of<fp8_e4m3> = latent_storage::fp8_e4m3;

/// A run-time codec over the registered `Codecs` (see the file comment). Build one with
/// make_any_codec (built-in list) or `of` from a concrete codec, a quantized_codec of one, or from
/// parameters (linear_params::codec<T>() and so on); a default-constructed one is the list's first
/// codec with zeroed members (any_codec: identity of width 0). Trivially copyable, so it can be
/// copied to the device as it is; its parameter pointers must then point to device memory, as a
/// concrete view's would (cuda/codec_params.cuh uploads them).
template <class... Codecs>
struct basic_any_codec {
    static_assert(sizeof...(Codecs) > 0 && (registered_codec<Codecs> && ...),
                  "basic_any_codec: every codec of the list needs a codec_registration");
    /// Records are bytes whose element type depends on `storage`; kv_codec asks for a name.
    using storage_type = std::byte;
    /// The list this codec picks from.
    using list = codec_list<Codecs...>;

    codec_kind kind = codec_kind{0};               ///< index of the codec in `Codecs`
    latent_storage storage = latent_storage::f16;  ///< the latent's element format
    /// The bytes of the codec's float view (registered_view): widths and parameter pointers. Every
    /// float view of a codec has the same members, so these bytes are its view for any storage.
    alignas(registered_view<Codecs>...) std::byte
        view_bytes[std::max({sizeof(registered_view<Codecs>)...})] = {};

private:
    template <std::size_t I>
    using codec_at = std::tuple_element_t<I, std::tuple<Codecs...>>;

    // Dispatch helpers, defined before visit: GCC deduces a member's return type only from a
    // body it has already parsed.
    KVCAR_HD_CALLS_ANY
    template <class Codec, class F>
    KVCAR_HD decltype(auto) visit_storage(F& f) const {
        using reg = codec_registration<Codec>;
        using plain = typename reg::template view<float>;
        if constexpr (latent_codec<plain>) {
            // Quantization never uses the inner codec's storage type, so float stands for all.
            if (storage == latent_storage::int8)
                return f(quantized_codec<plain, std::int8_t>{as<plain>()});
            if (storage == latent_storage::fp8_e4m3)
                return f(quantized_codec<plain, fp8_e4m3>{as<plain>()});
        }
        if (storage == latent_storage::f16) return f(as<typename reg::template view<f16>>());
        if (storage == latent_storage::bf16) return f(as<typename reg::template view<bf16>>());
        return f(as<plain>());
    }
    KVCAR_HD_CALLS_ANY
    template <std::size_t I, class F>
    KVCAR_HD decltype(auto) visit_kind(F& f, int k) const {
        if constexpr (I + 1 < sizeof...(Codecs)) {
            if (k != int(I)) return visit_kind<I + 1>(f, k);
        }
        return visit_storage<codec_at<I>>(f);
    }

public:
    /// Calls f(concrete codec) with the concrete view this codec stands for: Codec's view<T> for
    /// f32, f16 and bf16 storage, quantized_codec<view<float>, Q> for int8 and fp8 e4m3 (with Q
    /// std::int8_t or fp8_e4m3). Every instantiation of f must return the same type. An invalid
    /// kind (not from the factories) decodes as the first codec and an invalid storage as f32 —
    /// host code catches both in `validate()`.
    KVCAR_HD_CALLS_ANY
    template <class F>
    KVCAR_HD decltype(auto) visit(F&& f) const {
        const int k = int(kind) < int(sizeof...(Codecs)) ? int(kind) : 0;
        return visit_kind<0>(f, k);
    }

    /// The stored view bytes read as `View`, unchecked: the caller knows the kind (host or
    /// device). View is one of the current codec's views.
    template <class View>
    KVCAR_HD View as() const {
        static_assert(std::is_trivially_copyable_v<View> && sizeof(View) <= sizeof(view_bytes));
        View v;
        memcpy(static_cast<void*>(&v), view_bytes, sizeof v);
        return v;
    }

    /// Replaces the stored view with `v`, one of the current codec's views (unchecked: the caller
    /// sets `kind` to match).
    template <class View>
    void set_view(const View& v) {
        static_assert(std::is_trivially_copyable_v<View> && sizeof(View) <= sizeof(view_bytes));
        memcpy(view_bytes, static_cast<const void*>(&v), sizeof v);
    }

    /// D: floats per group.
    KVCAR_HD int group_width() const {
        return visit([](const auto& c) { return int(c.group_width()); });
    }
    /// d: latent elements per record.
    KVCAR_HD int latent_width() const {
        return visit([](const auto& c) { return int(c.latent_width()); });
    }
    /// Record bytes of the concrete codec this stands for.
    KVCAR_HD std::size_t bytes_per_group() const {
        return visit([](const auto& c) { return std::size_t(c.bytes_per_group()); });
    }
    /// x -> z (D -> d floats) through the concrete codec.
    KVCAR_HD void to_latent(const float* x, float* z) const {
        visit([&](const auto& c) {
            if constexpr (latent_codec<std::decay_t<decltype(c)>>) c.to_latent(x, z);
        });
    }
    /// z -> x̂ (d -> D floats) through the concrete codec.
    KVCAR_HD void from_latent(const float* z, float* x) const {
        visit([&](const auto& c) {
            if constexpr (latent_codec<std::decay_t<decltype(c)>>) c.from_latent(z, x);
        });
    }
    /// Encodes D floats at `x` into the record at `out` (bytes_per_group() bytes, 4-byte aligned);
    /// bit-identical to the concrete codec.
    KVCAR_HD void encode(const float* x, std::byte* out) const {
        visit([&](const auto& c) { c.encode(x, out); });
    }
    /// Decodes the record at `in` to D floats at `x`; bit-identical to the concrete codec.
    KVCAR_HD void decode(const std::byte* in, float* x) const {
        visit([&](const auto& c) { c.decode(in, x); });
    }
    /// Whether the concrete codec's decoder is affine (linear, any storage): then `visit` hands
    /// out an affine_latent_codec and attention can run in latent space.
    KVCAR_HD bool is_affine() const {
        return visit([](const auto& c) { return affine_latent_codec<std::decay_t<decltype(c)>>; });
    }
    /// The registered name of the codec ("?" for an invalid kind).
    const char* name() const { return codec_name(list{}, int(kind)); }

    /// The run-time codec of `c`: a view of one of `Codecs` (any storage) or a quantized_codec of
    /// one. Host side; throws kvcar::error as validate() does. The inner codec's storage type is
    /// irrelevant under quantization, so quantized_codec<linear_codec<f16>, Q> and
    /// <linear_codec<float>, Q> give the same codec.
    template <kv_codec C>
    static basic_any_codec of(const C& c) {
        basic_any_codec a;
        if constexpr (requires { typename C::inner_codec; }) {
            a = of(c.inner);
        } else {
            constexpr int index = codec_index<C, Codecs...>();
            static_assert(index >= 0, "basic_any_codec::of: the codec is not in this list");
            static_assert(sizeof(C) == sizeof(registered_view<C>));
            a.kind = codec_kind(index);
            a.set_view(c);
        }
        a.storage = latent_storage_of<typename C::storage_type>;
        a.validate();  // a quantizer's latent buffer bounds even an identity's width
        return a;
    }

    /// Host-side check of the fields (the factories produce valid codecs; a hand-filled one may
    /// not): kind and storage known, widths positive, a quantized latent within max_latent_width,
    /// then the codec's own registration check of its view (shape, parameter pointers).
    void validate() const {
        require(int(kind) < int(sizeof...(Codecs)),
                "any_codec: unknown kind " + std::to_string(int(kind)));
        require(parse_latent_storage(to_string(storage)).has_value(),
                "any_codec: unknown storage " + std::to_string(int(storage)));
        with_codec_at<Codecs...>(int(kind), [&]<class Codec>() {
            using plain = registered_view<Codec>;
            const plain v = as<plain>();
            const std::string me =
                std::string("any_codec (") + name() + ", " + to_string(storage) + "): ";
            const int width = v.group_width(), latent = v.latent_width();
            require(width > 0, me + "width must be positive (got " + std::to_string(width) + ")");
            require(latent > 0,
                    me + "latent must be positive (got " + std::to_string(latent) + ")");
            if (is_quantized(storage)) {
                require(latent_codec<plain>, me + "the codec has no latent to quantize");
                require(latent <= max_latent_width,
                        me + "latent " + std::to_string(latent) + " exceeds max_latent_width " +
                            std::to_string(max_latent_width));
            }
            try {
                codec_registration<Codec>::validate(v);
            } catch (const error& e) {
                const std::string what = e.what();
                const bool prefixed = what.rfind("kvcar: ", 0) == 0;
                throw error("kvcar: " + me + (prefixed ? what.substr(7) : what));
            }
        });
    }
};

/// The run-time codec over the built-in codecs (builtin_codecs).
using any_codec = basic_any_codec<identity_codec<>, linear_codec<>, autoencoder_codec<>>;
static_assert(std::is_same_v<any_codec::list, builtin_codecs>);

static_assert(kv_codec<any_codec>);
static_assert(latent_codec<any_codec>);

/// The run-time codec type over a codec_list (any_codec for builtin_codecs).
template <class List>
struct any_codec_for_list;
/// basic_any_codec over the list's codecs.
template <class... Codecs>
struct any_codec_for_list<codec_list<Codecs...>> {
    using type = basic_any_codec<Codecs...>;  ///< the run-time codec
};
/// basic_any_codec<Codecs...> for codec_list<Codecs...>.
template <class List>
using any_codec_for = typename any_codec_for_list<List>::type;

/// The any_codec of a built-in codec (any storage) or a quantized_codec of one: any_codec::of.
/// Throws kvcar::error when a width is not positive, the latent exceeds max_latent_width where a
/// buffer holds it, the codec's shape is inconsistent, or a parameter pointer is null.
template <kv_codec C>
any_codec make_any_codec(const C& c) {
    return any_codec::of(c);
}

}  // namespace kvcar
