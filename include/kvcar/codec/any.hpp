// kvcar/codec/any.hpp — a codec chosen at run time: identity, linear or autoencoder, with the
// latent stored as f32, f16, bf16, int8 or fp8 e4m3.
//
// A model that loads its codecs from a file (io/codec_file.hpp) cannot name their types at
// compile time, and one cache may mix kinds: the paper compresses N of the layers with an
// autoencoder and leaves the rest at fp16. any_codec is one value type for all of them. It holds
// exactly what the concrete views hold (widths and parameter pointers) and every member rebuilds
// the concrete view on the stack and forwards to it through one switch, so its records and
// outputs are bit-identical to the concrete codec's: it adds no arithmetic of its own. The
// switch costs a few instructions per encoded or decoded group; a kernel that wants the concrete
// type in its inner loop dispatches once with `visit`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/linear.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"

namespace kvcar {

/// The transform between a group and its latent.
enum class codec_kind : std::uint8_t { identity = 0, linear = 1, autoencoder = 2 };

/// How the latent is stored: element by element as a float format, or quantized per record
/// (quantized_codec: d bytes plus an f32 scale and offset).
enum class latent_storage : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, int8 = 3, fp8_e4m3 = 4 };

/// Every codec_kind, in value order (for loops over kinds and parsing).
inline constexpr codec_kind all_codec_kinds[] = {codec_kind::identity, codec_kind::linear,
                                                 codec_kind::autoencoder};
/// Every latent_storage, in value order (for loops over storages and parsing).
inline constexpr latent_storage all_latent_storages[] = {latent_storage::f32, latent_storage::f16,
                                                         latent_storage::bf16, latent_storage::int8,
                                                         latent_storage::fp8_e4m3};

/// The names codec files use: "identity", "linear", "autoencoder".
constexpr const char* to_string(codec_kind k) {
    switch (k) {
        case codec_kind::identity:
            return "identity";
        case codec_kind::linear:
            return "linear";
        case codec_kind::autoencoder:
            return "autoencoder";
    }
    return "?";
}
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
/// The codec_kind named `name` (as to_string spells it), or nullopt for an unknown name.
constexpr std::optional<codec_kind> parse_codec_kind(std::string_view name) {
    for (codec_kind k : all_codec_kinds)
        if (name == to_string(k)) return k;
    return std::nullopt;
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

/// A run-time codec (see the file comment). Build one with make_any_codec from a concrete codec
/// (or from parameters: linear_params::codec<T>() and so on); a default-constructed one is an
/// identity codec of width 0. Trivially copyable, so it can be copied to the device as it is;
/// its parameter pointers must then point to device memory, as a concrete view's would.
struct any_codec {
    /// Records are bytes whose element type depends on `storage`; kv_codec asks for a name.
    using storage_type = std::byte;

    codec_kind kind = codec_kind::identity;        ///< the transform between group and latent
    latent_storage storage = latent_storage::f16;  ///< the latent's element format
    int width = 0;        ///< D: floats per group
    int latent = 0;       ///< d: latent elements (= D for identity)
    int heads = 1;        ///< linear: KV heads in the group
    int hidden = 0;       ///< autoencoder: h
    float slope = 0.01f;  ///< autoencoder: LeakyReLU slope
    /// linear: {mean, basis}; autoencoder: {enc1_w, enc1_b, enc2_wt, enc2_b, dec1_w, dec1_b,
    /// dec2_wt, dec2_b}, as in the concrete views. Unused entries are null.
    const float* tensors[8] = {};

private:
    // Dispatch helpers, defined before visit: GCC deduces a member's return type only from a
    // body it has already parsed.
    template <float_element T, class F>
    KVCAR_HD decltype(auto) visit_kind(F& f) const {
        switch (kind) {
            case codec_kind::linear:
                return f(as_linear<T>());
            case codec_kind::autoencoder:
                return f(as_autoencoder<T>());
            case codec_kind::identity:
            default:
                return f(as_identity<T>());
        }
    }
    template <latent_quantization Q, class F>
    KVCAR_HD decltype(auto) visit_quantized(F& f) const {
        switch (kind) {
            case codec_kind::linear:
                return f(quantized_codec<linear_codec<float>, Q>{as_linear<float>()});
            case codec_kind::autoencoder:
                return f(quantized_codec<autoencoder_codec<float>, Q>{as_autoencoder<float>()});
            case codec_kind::identity:
            default:
                return f(quantized_codec<identity_codec<float>, Q>{as_identity<float>()});
        }
    }

public:
    /// Calls f(concrete codec) with the concrete view this codec stands for:
    ///   identity:    identity_codec<T>      or quantized_codec<identity_codec<float>, Q>
    ///   linear:      linear_codec<T>        or quantized_codec<linear_codec<float>, Q>
    ///   autoencoder: autoencoder_codec<T>   or quantized_codec<autoencoder_codec<float>, Q>
    /// with T in {float, f16, bf16} and Q in {int8_t, fp8_e4m3}. (A quantized codec never uses
    /// its inner codec's storage type, so float stands for all.) Every instantiation of f must
    /// return the same type. An invalid kind or storage (not from the factories) decodes as
    /// identity f32 — host code catches it in `validate()`.
    template <class F>
    KVCAR_HD decltype(auto) visit(F&& f) const {
        switch (storage) {
            case latent_storage::f16:
                return visit_kind<f16>(f);
            case latent_storage::bf16:
                return visit_kind<bf16>(f);
            case latent_storage::int8:
                return visit_quantized<std::int8_t>(f);
            case latent_storage::fp8_e4m3:
                return visit_quantized<fp8_e4m3>(f);
            case latent_storage::f32:
            default:
                return visit_kind<float>(f);
        }
    }

    /// D: floats per group.
    KVCAR_HD int group_width() const { return width; }
    /// d: latent elements per record.
    KVCAR_HD int latent_width() const { return latent; }
    /// Record bytes of the concrete codec this stands for.
    KVCAR_HD std::size_t bytes_per_group() const {
        return visit([](const auto& c) { return c.bytes_per_group(); });
    }
    /// x -> z (D -> d floats) through the concrete codec.
    KVCAR_HD void to_latent(const float* x, float* z) const {
        visit([&](const auto& c) { c.to_latent(x, z); });
    }
    /// z -> x̂ (d -> D floats) through the concrete codec.
    KVCAR_HD void from_latent(const float* z, float* x) const {
        visit([&](const auto& c) { c.from_latent(z, x); });
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
    /// Whether the decoder is affine (linear kind, any storage): then `visit` hands out an
    /// affine_latent_codec and attention can run in latent space.
    KVCAR_HD bool is_affine() const { return kind == codec_kind::linear; }

    /// The concrete views, unchecked: the caller knows the kind (host or device).
    template <float_element T>
    KVCAR_HD identity_codec<T> as_identity() const {
        return identity_codec<T>{width};
    }
    /// The linear view of `width`, `latent`, `heads` and tensors[0..1].
    template <float_element T>
    KVCAR_HD linear_codec<T> as_linear() const {
        return linear_codec<T>{width, latent, heads, tensors[0], tensors[1]};
    }
    /// The autoencoder view of the widths, `slope` and tensors[0..7].
    template <float_element T>
    KVCAR_HD autoencoder_codec<T> as_autoencoder() const {
        return autoencoder_codec<T>{width,      hidden,     latent,     slope,
                                    tensors[0], tensors[1], tensors[2], tensors[3],
                                    tensors[4], tensors[5], tensors[6], tensors[7]};
    }

    /// Host-side check of the fields (the factories produce valid codecs; a hand-filled one may
    /// not): kind and storage known, widths consistent, parameter pointers set.
    void validate() const {
        const std::string me =
            std::string("any_codec (") + to_string(kind) + ", " + to_string(storage) + ")";
        require(parse_codec_kind(to_string(kind)).has_value(),
                "any_codec: unknown kind " + std::to_string(int(kind)));
        require(parse_latent_storage(to_string(storage)).has_value(),
                "any_codec: unknown storage " + std::to_string(int(storage)));
        require(width > 0, me + ": width must be positive (got " + std::to_string(width) + ")");
        // encode/decode of every kind but plain identity keep a float[max_latent_width] latent.
        const bool buffered = kind != codec_kind::identity || is_quantized(storage);
        require(latent > 0 && (!buffered || latent <= max_latent_width),
                me + ": latent " + std::to_string(latent) + " must be in [1, " +
                    std::to_string(max_latent_width) + "]");
        switch (kind) {
            case codec_kind::identity:
                require(latent == width, me + ": latent " + std::to_string(latent) +
                                             " must equal width " + std::to_string(width));
                break;
            case codec_kind::linear:
                require(latent <= width, me + ": latent " + std::to_string(latent) +
                                             " exceeds width " + std::to_string(width));
                require(heads > 0 && width % heads == 0, me + ": heads " + std::to_string(heads) +
                                                             " must divide width " +
                                                             std::to_string(width));
                require(tensors[0] && tensors[1], me + ": mean or basis pointer is null");
                break;
            case codec_kind::autoencoder:
                require(hidden > 0,
                        me + ": hidden must be positive (got " + std::to_string(hidden) + ")");
                for (const float* t : tensors)
                    require(t != nullptr, me + ": a weight pointer is null");
                break;
        }
    }
};

static_assert(kv_codec<any_codec>);
static_assert(latent_codec<any_codec>);

// Factories: one per concrete codec. Host side; they check what the concrete views assume.

/// The any_codec of an identity codec (storage from T). Throws kvcar::error when the width is not
/// positive.
template <float_element T>
any_codec make_any_codec(const identity_codec<T>& c) {
    any_codec a;
    a.kind = codec_kind::identity;
    a.storage = latent_storage_of<T>;
    a.width = a.latent = c.width;
    a.validate();
    return a;
}

/// The any_codec of a linear codec, pointing at its mean and basis. Throws kvcar::error when widths
/// or heads are inconsistent, the rank exceeds max_latent_width, or a pointer is null.
template <float_element T>
any_codec make_any_codec(const linear_codec<T>& c) {
    any_codec a;
    a.kind = codec_kind::linear;
    a.storage = latent_storage_of<T>;
    a.width = c.width;
    a.latent = c.rank;
    a.heads = c.heads;
    a.tensors[0] = c.mean;
    a.tensors[1] = c.basis;
    a.validate();
    return a;
}

/// The any_codec of an autoencoder codec, pointing at its eight tensors. Throws kvcar::error when a
/// width is not positive, the latent exceeds max_latent_width, or a pointer is null.
template <float_element T>
any_codec make_any_codec(const autoencoder_codec<T>& c) {
    any_codec a;
    a.kind = codec_kind::autoencoder;
    a.storage = latent_storage_of<T>;
    a.width = c.width;
    a.latent = c.latent;
    a.hidden = c.hidden;
    a.slope = c.slope;
    const float* t[8] = {c.enc1_w, c.enc1_b, c.enc2_wt, c.enc2_b,
                         c.dec1_w, c.dec1_b, c.dec2_wt, c.dec2_b};
    for (int i = 0; i < 8; ++i) a.tensors[i] = t[i];
    a.validate();
    return a;
}

/// The inner codec's storage type is irrelevant under quantization (only to_latent and
/// from_latent are used), so quantized_codec<linear_codec<f16>, Q> and <linear_codec<float>, Q>
/// give the same any_codec.
template <latent_codec Inner, latent_quantization Q>
requires requires(const Inner& inner) { make_any_codec(inner); }
any_codec make_any_codec(const quantized_codec<Inner, Q>& c) {
    any_codec a = make_any_codec(c.inner);
    a.storage = latent_storage_of<Q>;
    a.validate();  // the quantizer's latent buffer bounds even an identity's width
    return a;
}

}  // namespace kvcar
