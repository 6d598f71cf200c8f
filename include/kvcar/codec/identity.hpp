// kvcar/codec/identity.hpp — stores each group as it is, in f32, f16 or bf16.
//
// The baseline every other codec is measured against: identity<f16> is a plain fp16 cache.
#pragma once

#include <cstddef>

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

}  // namespace kvcar
