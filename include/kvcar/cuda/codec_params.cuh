// kvcar/cuda/codec_params.cuh — device copies of codec parameters, and codec views that point
// at them.
//
// kvcar codecs are views: a linear_codec holds pointers to μ and P, an autoencoder_codec to its
// eight weight arrays. A kernel needs the same view with *device* pointers. `upload_codec` makes
// one from a host view (copying each array once: views sharing an array share its copy), and
// `device_codecs` does it for a cache's per-slot codecs and puts the views in device memory too:
//
//     kvcar::cuda::parameter_store store;
//     auto dev = kvcar::cuda::upload_codec(params.codec<kvcar::f16>(), store);  // device pointers
//     my_kernel<<<...>>>(dev, ...);                                            // valid while store lives
//
// A user codec with parameters becomes uploadable by an `upload_codec(const C&, parameter_store&)`
// overload found by argument-dependent lookup.
#pragma once

#if !defined(__CUDACC__)
#error "kvcar/cuda/codec_params.cuh needs nvcc"
#endif

#include <concepts>
#include <cstddef>
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
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/cuda/buffer.cuh"

namespace kvcar::cuda {

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

/// An identity codec has no parameters: returns `c` unchanged. Throws kvcar::error when the width
/// is not positive.
template <float_element T>
identity_codec<T> upload_codec(const identity_codec<T>& c, parameter_store&) {
    require(c.width > 0, "upload_codec: identity_codec width must be positive (got " +
                             std::to_string(c.width) + ")");
    return c;  // no parameters
}

/// A copy of `c` whose mean and basis point to device copies held by `store` (shared with earlier
/// uploads of the same host arrays). Throws kvcar::error for a bad shape or a null or empty array.
template <float_element T>
linear_codec<T> upload_codec(const linear_codec<T>& c, parameter_store& store) {
    require(c.width > 0 && c.rank > 0 && c.heads > 0 && c.width % c.heads == 0 &&
                c.rank <= max_latent_width,
            "upload_codec: linear_codec has bad shape (width " + std::to_string(c.width) +
                ", rank " + std::to_string(c.rank) + ", heads " + std::to_string(c.heads) + ")");
    linear_codec<T> d = c;
    const std::size_t D = std::size_t(c.width), r = std::size_t(c.rank);
    d.mean = store.put(c.mean, D, "linear_codec mean");
    d.basis = store.put(c.basis, D * r, "linear_codec basis");
    return d;
}

/// A copy of `c` whose eight weight arrays point to device copies held by `store` (shared with
/// earlier uploads of the same host arrays). Throws kvcar::error for a bad shape or a null or empty
/// array.
template <float_element T>
autoencoder_codec<T> upload_codec(const autoencoder_codec<T>& c, parameter_store& store) {
    require(c.width > 0 && c.hidden > 0 && c.latent > 0 && c.latent <= max_latent_width,
            "upload_codec: autoencoder_codec has bad shape (width " + std::to_string(c.width) +
                ", hidden " + std::to_string(c.hidden) + ", latent " + std::to_string(c.latent) +
                ")");
    autoencoder_codec<T> d = c;
    const std::size_t D = std::size_t(c.width), h = std::size_t(c.hidden),
                      l = std::size_t(c.latent);
    d.enc1_w = store.put(c.enc1_w, h * D, "autoencoder enc1_w");
    d.enc1_b = store.put(c.enc1_b, h, "autoencoder enc1_b");
    d.enc2_wt = store.put(c.enc2_wt, h * l, "autoencoder enc2_wt");
    d.enc2_b = store.put(c.enc2_b, l, "autoencoder enc2_b");
    d.dec1_w = store.put(c.dec1_w, h * l, "autoencoder dec1_w");
    d.dec1_b = store.put(c.dec1_b, h, "autoencoder dec1_b");
    d.dec2_wt = store.put(c.dec2_wt, h * D, "autoencoder dec2_wt");
    d.dec2_b = store.put(c.dec2_b, D, "autoencoder dec2_b");
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
/// through any_codec's own encode/decode (one switch per record), or, after `visit`, as the
/// concrete codec. Throws kvcar::error as any_codec::validate and the concrete uploads do.
inline any_codec upload_codec(const any_codec& c, parameter_store& store) {
    c.validate();
    any_codec d = c;
    switch (c.kind) {
        case codec_kind::linear: {
            const linear_codec<float> up = upload_codec(c.as_linear<float>(), store);
            d.tensors[0] = up.mean;
            d.tensors[1] = up.basis;
            break;
        }
        case codec_kind::autoencoder: {
            const autoencoder_codec<float> up = upload_codec(c.as_autoencoder<float>(), store);
            const float* t[8] = {up.enc1_w, up.enc1_b, up.enc2_wt, up.enc2_b,
                                 up.dec1_w, up.dec1_b, up.dec2_wt, up.dec2_b};
            for (int i = 0; i < 8; ++i) d.tensors[i] = t[i];
            break;
        }
        case codec_kind::identity:
            break;  // no parameters
    }
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

}  // namespace kvcar::cuda
