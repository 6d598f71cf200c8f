// kvcar/codec/identity.hpp — stores each group as it is, in f32, f16 or bf16.
//
// The baseline every other codec is measured against: identity<f16> is a plain fp16 cache.
#pragma once

#include <cstddef>

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"

namespace kvcar {

template <float_element T = f16>
struct identity_codec {
    using storage_type = T;

    int width = 0;  // D = d

    KVCAR_HD int group_width() const { return width; }
    KVCAR_HD int latent_width() const { return width; }
    KVCAR_HD std::size_t bytes_per_group() const {
        return (std::size_t(width) * sizeof(T) + 3u) & ~std::size_t(3);
    }

    KVCAR_HD void to_latent(const float* x, float* z) const {
        for (int i = 0; i < width; ++i) z[i] = x[i];
    }
    KVCAR_HD void from_latent(const float* z, float* x) const {
        for (int i = 0; i < width; ++i) x[i] = z[i];
    }
    KVCAR_HD void encode(const float* x, std::byte* out) const {
        T* z = reinterpret_cast<T*>(out);
        for (int i = 0; i < width; ++i) z[i] = element_traits<T>::store(x[i]);
    }
    KVCAR_HD void decode(const std::byte* in, float* x) const {
        const T* z = reinterpret_cast<const T*>(in);
        for (int i = 0; i < width; ++i) x[i] = to_float(z[i]);
    }
};

}  // namespace kvcar
