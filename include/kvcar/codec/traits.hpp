// kvcar/codec/traits.hpp — the one place a codec registers itself with the run-time machinery.
//
// The concrete codecs (identity_codec<T>, linear_codec<T>, autoencoder_codec<T>, a user's own)
// are compile-time types. What picks one at run time — any_codec, the codec file
// (io/codec_file.hpp), the device upload (cuda/codec_params.cuh), the tools' `--kv` names — needs
// to know a few things about each: its name, its view for each latent storage, its owning
// parameters, and the members a file stores. Each codec says them once, in a specialisation of
// `codec_registration` in its own header next to its `static_assert(kv_codec<...>)`:
//
//     template <float_element T>
//     struct codec_registration<my_codec<T>> {
//         static constexpr const char* name = "mine";          // the file's "codec" value
//         static constexpr codec_family family = ...;          // optional: how the GPU decodes
//         template <float_element U> using view = my_codec<U>; // the codec storing z as U
//         using params = my_params;                            // what a file loads into (owns)
//         static my_codec<float> view_of(const my_params& p);  // a view over p's arrays
//         template <class X, class F> static void members(X& x, F& f) {  // X: view or params
//             f.size("width", x.width);           // D, always first
//             f.size("latent", x.latent);         // d, always second (identity: x.width again)
//             f.real("slope", x.slope);           // further ints (size, > 0), floats (real)
//             f.tensor("w", x.w, {x.latent, x.width});  // f32 arrays, in file order, with shape
//         }
//         static void validate(const my_params& p);      // throws kvcar::error (host)
//         static void validate(const my_codec<float>& v);// shapes and pointers of a view (host)
//     };
//
// A size named "heads" is the number of KV heads the codec spans: a codec file requires it to
// be its group's (io/codec_file.hpp). Then the codec is one more entry of a codec_list:
// any_codec's list is builtin_codecs (codec/any.hpp), and
// `any_codec_for<codec_list_with<builtin_codecs, my_codec<>>>` is a run-time codec that also
// knows `my_codec`, with no edit to kvcar. The registration is host-only: the device reads a
// run-time codec through the view it stores (see basic_any_codec), not through `members`.
// tests/codec/gain_codec.hpp is a complete example.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"

namespace kvcar {

/// Specialised by each codec that the run-time machinery should know (see the file comment). The
/// primary template is left undefined: a codec without a registration is still a kv_codec that
/// kv_cache and the kernels take as a type, it only has no name, no file form and no any_codec.
template <class Codec>
struct codec_registration;

/// How the device code (device/latent.cuh, decode.cuh, encode.cuh, the decode kernels) turns a
/// codec's records into floats. A registration names its codec's family (`static constexpr
/// codec_family family`); a codec that names none, or has no registration, is `opaque`.
enum class codec_family {
    identity,  ///< the latent is the group (identity, or quantized identity)
    affine,    ///< x̂ = P z + μ with a linear_codec's parameters (linear, quantized linear)
    mlp,       ///< the paper's autoencoder decoder (autoencoder, quantized autoencoder)
    latent,    ///< another latent codec with a kvcar record: load z, then from_latent per token
    opaque,    ///< anything else: decode() per token, one thread each
};

/// The family `Codec`'s registration names, or opaque.
template <class Codec>
constexpr codec_family registered_family() {
    if constexpr (requires { codec_registration<Codec>::family; }) {
        return codec_registration<Codec>::family;
    } else {
        return codec_family::opaque;
    }
}

/// An ordered list of registered codecs, named by any of their views (e.g. `linear_codec<>`).
/// A codec's index in the list is its kind id in basic_any_codec; files store the name instead,
/// so ids need not be stable across lists.
template <class... Codecs>
struct codec_list {
    /// Number of codecs in the list.
    static constexpr std::size_t size = sizeof...(Codecs);
};

/// `List` with `More` appended: `codec_list_with<builtin_codecs, my_codec<>>` is the built-in
/// codecs and a user's.
template <class List, class... More>
struct codec_list_append;
/// codec_list<Codecs..., More...>.
template <class... Codecs, class... More>
struct codec_list_append<codec_list<Codecs...>, More...> {
    using type = codec_list<Codecs..., More...>;  ///< the longer list
};
/// `List` with `More` appended.
template <class List, class... More>
using codec_list_with = typename codec_list_append<List, More...>::type;

namespace detail {

/// A members() visitor that only counts tensors: registered_codec calls members() with it.
struct count_tensors {
    int n = 0;
    void size(const char*, const int&) {}
    void real(const char*, const float&) {}
    template <class Array>
    void tensor(const char*, const Array&, std::initializer_list<int>) {
        ++n;
    }
};

}  // namespace detail

/// Codec's registered view storing its latent as T (unconstrained: registered_codec checks it).
template <class Codec, class T>
using registered_view_as = typename codec_registration<Codec>::template view<T>;

/// A codec with a usable registration: a name, views per float storage that are kv_codecs of one
/// layout (any_codec keeps the float view's bytes and reads them as the view it needs), owning
/// parameters, and the member list.
template <class Codec>
concept registered_codec = requires {
    { codec_registration<Codec>::name } -> std::convertible_to<const char*>;
    typename registered_view_as<Codec, float>;
    typename codec_registration<Codec>::params;
} && kv_codec<registered_view_as<Codec, float>> &&
    std::is_trivially_copyable_v<registered_view_as<Codec, float>> &&
    sizeof(registered_view_as<Codec, f16>) == sizeof(registered_view_as<Codec, float>) &&
    sizeof(registered_view_as<Codec, bf16>) == sizeof(registered_view_as<Codec, float>) &&
    requires(const typename codec_registration<Codec>::params& p,
             typename codec_registration<Codec>::params& mp,
             const registered_view_as<Codec, float>& v, detail::count_tensors& f) {
        { codec_registration<Codec>::view_of(p) } -> std::same_as<registered_view_as<Codec, float>>;
        codec_registration<Codec>::validate(p);
        codec_registration<Codec>::validate(v);
        codec_registration<Codec>::members(mp, f);
    };

/// The codec's view storing its latent as float (what basic_any_codec keeps).
template <registered_codec Codec>
using registered_view = registered_view_as<Codec, float>;

/// Calls `f.template operator()<Codec>()` for the codec at `index` of `Codecs` and returns true, or
/// returns false for an index past the list (a fold over the list, no table).
template <class... Codecs, class F>
bool with_codec_at(int index, F&& f) {
    int i = 0;
    return ((i++ == index ? (f.template operator()<Codecs>(), true) : false) || ...);
}

/// The index of `Codec` in `Codecs` (compared by registered view), or -1.
template <class Codec, class... Codecs>
constexpr int codec_index() {
    int i = 0, found = -1;
    ((std::is_same_v<registered_view<Codec>, registered_view<Codecs>> && found < 0
          ? void(found = i)
          : void(), ++i), ...);
    return found;
}

/// The index of `Codec` in a codec_list, or -1.
template <class Codec, class... Codecs>
constexpr int codec_index_in(codec_list<Codecs...>) {
    return codec_index<Codec, Codecs...>();
}

/// The registered names of a list's codecs, by index (names[i] is codec i's).
template <class... Codecs>
constexpr const char* codec_name(codec_list<Codecs...>, int index) {
    const char* names[] = {codec_registration<Codecs>::name...};
    return index >= 0 && index < int(sizeof...(Codecs)) ? names[index] : "?";
}

/// The index of the codec named `name` in the list, or -1.
template <class... Codecs>
constexpr int codec_index_of_name(codec_list<Codecs...> list, std::string_view name) {
    for (int i = 0; i < int(sizeof...(Codecs)); ++i)
        if (name == codec_name(list, i)) return i;
    return -1;
}

/// "a linear", "an identity": the codec name with its article, for messages.
inline std::string with_article(const std::string& name) {
    const bool vowel = !name.empty() && std::string("aeiou").find(name[0]) != std::string::npos;
    return (vowel ? "an " : "a ") + name;
}

}  // namespace kvcar
