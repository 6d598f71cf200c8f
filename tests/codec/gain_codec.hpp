// tests/codec/gain_codec.hpp — a codec that exists only in the tests, registered here and nowhere
// else: the proof that adding a codec is one header. tests/codec/registration.cpp runs it
// through kv_cache, an any_codec over an extended list and a codec file; tests/device/
// registration.cu through the device upload and the device decoders.
//
// gain_codec<T> stores z_i = (x_i − offset) · gain_i as T and decodes x_i = z_i / gain_i + offset:
// a per-element rescaling with one tensor (gain, [D]) and one real (offset), so its registration
// uses every kind of member a codec file knows (sizes, reals, tensors).
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include <kvcar/codec/any.hpp>
#include <kvcar/codec/limits.hpp>
#include <kvcar/codec/traits.hpp>
#include <kvcar/common.hpp>
#include <kvcar/concepts.hpp>
#include <kvcar/numeric.hpp>

namespace kvcar_test {

/// The view: D floats per group, latent d = D elements of T.
template <kvcar::float_element T = kvcar::f16>
struct gain_codec {
    using storage_type = T;

    int width = 0;                ///< D = d
    float offset = 0.0f;          ///< subtracted before the gain
    const float* gain = nullptr;  ///< [D], non-zero

    KVCAR_HD int group_width() const { return width; }
    KVCAR_HD int latent_width() const { return width; }
    KVCAR_HD std::size_t bytes_per_group() const {
        return kvcar::pad_record_bytes(std::size_t(width) * sizeof(T));
    }
    KVCAR_HD void to_latent(const float* x, float* z) const {
        for (int i = 0; i < width; ++i) z[i] = (x[i] - offset) * gain[i];
    }
    KVCAR_HD void from_latent(const float* z, float* x) const {
        for (int i = 0; i < width; ++i) x[i] = z[i] / gain[i] + offset;
    }
    KVCAR_HD void encode(const float* x, std::byte* out) const {
        T* z = reinterpret_cast<T*>(out);
        for (int i = 0; i < width; ++i)
            z[i] = kvcar::element_traits<T>::store((x[i] - offset) * gain[i]);
    }
    KVCAR_HD void decode(const std::byte* in, float* x) const {
        const T* z = reinterpret_cast<const T*>(in);
        for (int i = 0; i < width; ++i) x[i] = kvcar::to_float(z[i]) / gain[i] + offset;
    }
};

static_assert(kvcar::latent_codec<gain_codec<>>);

/// The owning parameters, as a codec file loads them.
struct gain_params {
    int width = 0;
    float offset = 0.0f;
    std::vector<float> gain;

    void validate() const {
        kvcar::require(width > 0, "gain_params: width must be positive");
        kvcar::require(gain.size() == std::size_t(width),
                       "gain_params: gain has " + std::to_string(gain.size()) + " values");
        for (float g : gain)
            kvcar::require(std::isfinite(g) && g != 0.0f,
                           "gain_params: a gain is zero or not finite");
    }
};

}  // namespace kvcar_test

/// The registration: everything kvcar's run-time parts need to know about gain_codec.
template <kvcar::float_element T>
struct kvcar::codec_registration<kvcar_test::gain_codec<T>> {
    static constexpr const char* name = "gain";
    template <kvcar::float_element U>
    using view = kvcar_test::gain_codec<U>;
    using params = kvcar_test::gain_params;

    static kvcar_test::gain_codec<float> view_of(const params& p) {
        return {p.width, p.offset, p.gain.data()};
    }
    template <class X, class F>
    static void members(X& x, F& f) {
        f.size("width", x.width);
        f.size("latent", x.width);
        f.real("offset", x.offset);
        f.tensor("gain", x.gain, {x.width});
    }
    static void validate(const params& p) { p.validate(); }
    static void validate(const kvcar_test::gain_codec<float>& c) {
        kvcar::require(c.gain != nullptr, "gain_codec: gain pointer is null");
    }
};

static_assert(kvcar::registered_codec<kvcar_test::gain_codec<>>);

namespace kvcar_test {

/// The built-in codecs and gain_codec: what a user's program would name once.
using gain_codecs = kvcar::codec_list_with<kvcar::builtin_codecs, gain_codec<>>;
/// The run-time codec over them.
using gain_any_codec = kvcar::any_codec_for<gain_codecs>;

}  // namespace kvcar_test
