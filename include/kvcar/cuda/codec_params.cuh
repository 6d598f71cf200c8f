// kvcar/cuda/codec_params.cuh — device copies of codec parameters, and codec views that point
// at them.
//
// kvcar codecs are views: a linear_codec holds pointers to μ and P, an autoencoder_codec to its
// eight weight arrays. A kernel needs the same view with *device* pointers. `upload_codec` makes
// one from a host view (copying each array once: views sharing an array share its copy), and
// `device_codecs` does it for a cache's per-slot codecs and puts the views in device memory too:
//
//     kvcar::gpu::parameter_store store;
//     auto dev = kvcar::gpu::upload_codec(params.codec<kvcar::f16>(), store);  // device pointers
//     my_kernel<<<...>>>(dev, ...);                                            // valid while store lives
//
// Every registered codec (codec/traits.hpp) uploads through its registration: each tensor its
// members() list is copied, so a new codec needs nothing here. A codec without a registration
// becomes uploadable by an `upload_codec(const C&, parameter_store&)` overload found by
// argument-dependent lookup.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/cuda/codec_params.cuh needs nvcc"
#endif

#include <concepts>
#include <cstddef>
#include <initializer_list>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/codec/any.hpp"
#include "kvcar/codec/autoencoder.hpp"
#include "kvcar/codec/identity.hpp"
#include "kvcar/codec/linear.hpp"
#include "kvcar/codec/quantized.hpp"
#include "kvcar/codec/traits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/cuda/buffer.cuh"

namespace kvcar::gpu {

/// Owns device copies of parameter arrays, one per distinct (host address, length).
class parameter_store {
public:
    /// A device copy of host[0 .. count). `what` names the array for error messages.
    const float* put(const float* host, std::size_t count, const char* what) {
        if (count == 0) throw error(std::string("kvcar: upload_codec: ") + what + " is empty");
        if (host == nullptr) throw error(std::string("kvcar: upload_codec: ") + what + " is null");
        const auto key = std::make_pair(host, count);
        if (const auto it = index_.find(key); it != index_.end()) return it->second;
        device_buffer<float> copy(std::span<const float>(host, count));
        const float* device = copy.data();
        buffers_.push_back(std::move(copy));
        index_.emplace(key, device);
        return device;
    }
    /// Bytes of device memory held.
    std::size_t bytes() const {
        std::size_t sum = 0;
        for (const auto& b : buffers_) sum += b.bytes();
        return sum;
    }
    /// Distinct arrays held.
    std::size_t arrays() const { return buffers_.size(); }

private:
    std::vector<device_buffer<float>> buffers_;
    std::map<std::pair<const float*, std::size_t>, const float*> index_;
};

namespace detail {

/// A members() visitor that points each tensor of a view at its device copy.
struct upload_tensors {
    parameter_store& store;
    const char* codec;
    void size(const char*, int&) {}
    void real(const char*, float&) {}
    void tensor(const char* name, const float*& p, std::initializer_list<int> shape) {
        std::size_t count = 1;
        for (int n : shape) count *= std::size_t(n);
        p = store.put(p, count, (std::string(codec) + " " + name).c_str());
    }
};

}  // namespace detail

/// A copy of the registered codec `c` (identity_codec, linear_codec, autoencoder_codec, a user's)
/// whose tensors point to device copies held by `store` (shared with earlier uploads of the same
/// host arrays); a codec without tensors comes back unchanged. Throws kvcar::error when `c` is
/// invalid (the checks of basic_any_codec::validate: shape, null pointers).
template <registered_codec Codec>
Codec upload_codec(const Codec& c, parameter_store& store) {
    (void)basic_any_codec<Codec>::of(c);  // validates the view as any_codec would
    Codec d = c;
    detail::upload_tensors up{store, codec_registration<Codec>::name};
    codec_registration<Codec>::members(d, up);
    return d;
}

/// The inner codec uploaded, wrapped again (quantization itself has no parameters).
template <class Inner, class Q>
quantized_codec<Inner, Q> upload_codec(const quantized_codec<Inner, Q>& c,
                                       parameter_store& store) {
    return quantized_codec<Inner, Q>{upload_codec(c.inner, store)};
}

/// A run-time codec (a codec file's slot) on the device: the concrete view it stands for is
/// uploaded as that view would be, and the copy points at the device arrays. Kernels then read it
/// through its own encode/decode (one dispatch per record), or, after `visit`, as the concrete
/// codec. Throws kvcar::error as validate() and the concrete uploads do.
template <class... Codecs>
basic_any_codec<Codecs...> upload_codec(const basic_any_codec<Codecs...>& c,
                                        parameter_store& store) {
    c.validate();
    basic_any_codec<Codecs...> d = c;
    with_codec_at<Codecs...>(int(c.kind), [&]<class Codec>() {
        using view = registered_view<Codec>;
        d.set_view(upload_codec(c.template as<view>(), store));
    });
    return d;
}

/// Codecs that upload_codec can copy to the device.
template <class Codec>
concept uploadable_codec = kv_codec<Codec> && requires(const Codec& c, parameter_store& s) {
    { upload_codec(c, s) } -> std::same_as<Codec>;
};

/// The codecs of a cache's stored slots on the device: their parameters and the array of views
/// (device pointers) that kernels index by slot.
template <uploadable_codec Codec>
class device_codecs {
public:
    /// Uploads every codec's parameters and the array of their device views. Throws kvcar::error as
    /// upload_codec does, or when a CUDA call fails.
    explicit device_codecs(std::span<const Codec> host) {
        views_.reserve(host.size());
        for (const Codec& c : host) views_.push_back(upload_codec(c, store_));
        array_ = device_buffer<Codec>(std::span<const Codec>(views_));
    }

    /// Device array of size() views, indexed by slot.
    const Codec* data() const { return array_.data(); }
    /// Number of codecs (stored slots).
    std::size_t size() const { return views_.size(); }
    /// A host copy of slot i's view: its pointers are device pointers (pass it to a kernel).
    const Codec& operator[](std::size_t i) const { return views_.at(i); }
    /// Bytes of parameters on the device (shared arrays counted once).
    std::size_t parameter_bytes() const { return store_.bytes(); }

private:
    parameter_store store_;
    std::vector<Codec> views_;
    device_buffer<Codec> array_;
};

/// A linear codec's parameters on the device (from linear_params, validated).
class device_linear_params {
public:
    /// Validates `p` (throws kvcar::error like linear_params::validate) and copies its mean and
    /// basis to the device.
    explicit device_linear_params(const linear_params& p) {
        p.validate();
        width_ = p.width;
        rank_ = p.rank;
        heads_ = p.heads;
        mean_ = device_buffer<float>(p.mean);
        basis_ = device_buffer<float>(p.basis);
    }
    /// A view with device pointers, valid while *this lives.
    template <float_element T = f16>
    linear_codec<T> codec() const {
        return linear_codec<T>{width_, rank_, heads_, mean_.data(), basis_.data()};
    }

private:
    int width_ = 0, rank_ = 0, heads_ = 1;
    device_buffer<float> mean_, basis_;
};

/// A folded autoencoder's parameters on the device (validated).
class device_autoencoder {
public:
    /// Validates `f` (throws kvcar::error like folded_autoencoder::validate) and copies its eight
    /// arrays to the device.
    explicit device_autoencoder(const folded_autoencoder& f) {
        f.validate();
        width_ = f.width;
        hidden_ = f.hidden;
        latent_ = f.latent;
        slope_ = f.slope;
        for (const std::vector<float>* a : {&f.enc1_w, &f.enc1_b, &f.enc2_wt, &f.enc2_b,
                                            &f.dec1_w, &f.dec1_b, &f.dec2_wt, &f.dec2_b})
            arrays_.emplace_back(*a);
    }
    /// A view with device pointers, valid while *this lives.
    template <float_element T = f16>
    autoencoder_codec<T> codec() const {
        return autoencoder_codec<T>{width_,           hidden_,          latent_,
                                    slope_,           arrays_[0].data(), arrays_[1].data(),
                                    arrays_[2].data(), arrays_[3].data(), arrays_[4].data(),
                                    arrays_[5].data(), arrays_[6].data(), arrays_[7].data()};
    }

private:
    int width_ = 0, hidden_ = 0, latent_ = 0;
    float slope_ = 0.01f;
    std::vector<device_buffer<float>> arrays_;
};

}  // namespace kvcar::gpu
