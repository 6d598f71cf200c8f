// kvcar/codec/identity.hpp — stores each group as it is, in f32, f16 or bf16.
//
// The baseline every other codec is measured against: identity<f16> is a plain fp16 cache.
#pragma once

#include <cstddef>

#include <string>

#include "kvcar/codec/traits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"

namespace kvcar {

/// Stores each group as it is, element by element in T (f32, f16 or bf16): the uncompressed
/// baseline (identity_codec<f16> is a plain fp16 cache). The latent is the group itself, d = D.
template <float_element T = f16>
struct identity_codec {
    using storage_type = T;  ///< element type of the record

    int width = 0;  ///< D = d: floats per group (> 0)

    /// D: floats per group.
    KVCAR_HD int group_width() const { return width; }
    /// d = D: the latent is the group.
    KVCAR_HD int latent_width() const { return width; }
    /// D elements of T, rounded up to a multiple of 4 bytes.
    KVCAR_HD std::size_t bytes_per_group() const {
        return (std::size_t(width) * sizeof(T) + 3u) & ~std::size_t(3);
    }

    /// z = x (D floats; no rounding to T).
    KVCAR_HD void to_latent(const float* x, float* z) const {
        for (int i = 0; i < width; ++i) z[i] = x[i];
    }
    /// x = z (D floats).
    KVCAR_HD void from_latent(const float* z, float* x) const {
        for (int i = 0; i < width; ++i) x[i] = z[i];
    }
    /// Writes `width` elements of T (x rounded to T) at `out`, which must hold bytes_per_group()
    /// bytes, 4-byte aligned.
    KVCAR_HD void encode(const float* x, std::byte* out) const {
        T* z = reinterpret_cast<T*>(out);
        for (int i = 0; i < width; ++i) z[i] = element_traits<T>::store(x[i]);
    }
    /// Reads the record at `in` back to `width` floats at `x`.
    KVCAR_HD void decode(const std::byte* in, float* x) const {
        const T* z = reinterpret_cast<const T*>(in);
        for (int i = 0; i < width; ++i) x[i] = to_float(z[i]);
    }
};

static_assert(kv_codec<identity_codec<f16>>);
static_assert(latent_codec<identity_codec<f16>>);

/// The identity codec's registration (codec/traits.hpp). It has no parameters beyond its width,
/// so its owning form is the view itself.
template <float_element T>
struct codec_registration<identity_codec<T>> {
    /// The codec file's "codec" value.
    static constexpr const char* name = "identity";
    /// How the device decodes a record: the record is the group itself.
    static constexpr codec_family family = codec_family::identity;
    /// The codec storing its latent (the group itself) as U.
    template <float_element U>
    using view = identity_codec<U>;
    /// Nothing to own: the width is all there is.
    using params = identity_codec<float>;
    /// The view of `p` (itself).
    static identity_codec<float> view_of(const params& p) { return p; }
    /// The width, which is also the latent width; no tensors.
    template <class X, class F>
    static void members(X& x, F& f) {
        f.size("width", x.width);
        f.size("latent", x.width);
    }
    /// Throws kvcar::error unless the width is positive (params and view are the same type).
    static void validate(const identity_codec<float>& c) {
        require(c.width > 0, "identity_codec: width must be positive (got " +
                                 std::to_string(c.width) + ")");
    }
};

}  // namespace kvcar
