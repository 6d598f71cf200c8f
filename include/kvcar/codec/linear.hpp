// kvcar/codec/linear.hpp — the low-rank (PCA) codec: z = Pᵀ(x − μ), x̂ = P z + μ.
//
// Because the decoder is affine, attention never needs x̂: a score is q·x̂_h = (P_hᵀq)·z + q·μ_h
// and an output is Σ a_i x̂_h,i = P_h (Σ a_i z_i) + (Σ a_i) μ_h, so a kernel reads the d-wide
// latents once and decompresses nothing (see affine_latent_codec). When the group is a whole
// layer, all heads share one latent per token, as in multi-head latent attention.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/traits.hpp"
#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"

namespace kvcar {

/// A view of a linear codec's parameters (it owns nothing; see linear_params). The latent is
/// stored as `T` elements. P's rows are grouped by head: head h owns rows [h·hd, (h+1)·hd)
/// with hd = width / heads.
template <float_element T = f16>
struct linear_codec {
    using storage_type = T;  ///< element type the latent is stored in

    int width = 0;                 ///< D: floats per group (heads · head_dim)
    int rank = 0;                  ///< d: latent elements per group
    int heads = 1;                 ///< KV heads in the group
    const float* mean = nullptr;   ///< μ, [D]
    const float* basis = nullptr;  ///< P, [D][d] row-major: x̂_i = Σ_j basis[i·d + j] z_j + μ_i

    /// D: floats per group.
    KVCAR_HD int group_width() const { return width; }
    /// d = rank: latent elements per record.
    KVCAR_HD int latent_width() const { return rank; }
    /// Floats per head: width / heads.
    KVCAR_HD int head_dim() const { return width / heads; }
    /// d elements of T, rounded up to a multiple of 4 bytes.
    KVCAR_HD std::size_t bytes_per_group() const {
        return pad_record_bytes(std::size_t(rank) * sizeof(T));
    }

    /// z = Pᵀ(x − μ). Walks P row by row (one pass over it, contiguous), accumulating into z.
    KVCAR_HD void to_latent(const float* x, float* z) const {
        for (int j = 0; j < rank; ++j) z[j] = 0.0f;
        for (int i = 0; i < width; ++i) {
            const float centered = x[i] - mean[i];
            const float* row = basis + std::size_t(i) * std::size_t(rank);
            for (int j = 0; j < rank; ++j) z[j] += row[j] * centered;
        }
    }

    /// x̂ = P z + μ: one dot product per output element, P streamed once.
    KVCAR_HD void from_latent(const float* z, float* x) const {
        for (int i = 0; i < width; ++i) x[i] = mean[i] + row_dot(i, z);
    }

    /// Precondition (checked by linear_params): rank <= max_latent_width.
    KVCAR_HD void encode(const float* x, std::byte* out) const {
        float z[max_latent_width];
        to_latent(x, z);
        T* stored = reinterpret_cast<T*>(out);
        for (int j = 0; j < rank; ++j) stored[j] = element_traits<T>::store(z[j]);
    }

    /// Converts the d stored elements once, not once per output row.
    KVCAR_HD void decode(const std::byte* in, float* x) const {
        float z[max_latent_width];
        const T* stored = reinterpret_cast<const T*>(in);
        for (int j = 0; j < rank; ++j) z[j] = to_float(stored[j]);
        from_latent(z, x);
    }

    /// Writes qz = P_hᵀ q (d floats) for a query q of head_dim() floats and returns q·μ_h, so
    /// that q·decode(z) = qz·z + the returned bias for every token of this head.
    KVCAR_HD float project_query(const float* q, int head, float* qz) const {
        const int hd = head_dim();
        const int first = head * hd;
        for (int j = 0; j < rank; ++j) qz[j] = 0.0f;
        float bias = 0.0f;
        for (int r = 0; r < hd; ++r) {
            const float qr = q[r];
            const float* row = basis + std::size_t(first + r) * std::size_t(rank);
            for (int j = 0; j < rank; ++j) qz[j] += row[j] * qr;
            bias += qr * mean[first + r];
        }
        return bias;
    }

    /// out = P_h z + weight_sum · μ_h (head_dim() floats), where z = Σ a_i z_i and
    /// weight_sum = Σ a_i: the attention output Σ a_i x̂_h,i computed from the latent sum.
    KVCAR_HD void lift(const float* z, float weight_sum, int head, float* out) const {
        const int hd = head_dim();
        const int first = head * hd;
        for (int r = 0; r < hd; ++r) out[r] = weight_sum * mean[first + r] + row_dot(first + r, z);
    }

private:
    KVCAR_HD float row_dot(int i, const float* z) const {
        const float* row = basis + std::size_t(i) * std::size_t(rank);
        float s = 0.0f;
        for (int j = 0; j < rank; ++j) s += row[j] * z[j];
        return s;
    }
};

/// The owning, host-side parameters of a linear codec (what calibration fits and codec files
/// hold). `codec<T>()` validates them and hands out a view that stays valid while `*this` lives
/// and its vectors are not resized.
struct linear_params {
    int width = 0;             ///< D: floats per group (> 0)
    int rank = 0;              ///< d: latent elements, 1..min(D, max_latent_width)
    int heads = 1;             ///< KV heads in the group; D = heads · head_dim
    std::vector<float> mean;   ///< μ, [D], finite
    std::vector<float> basis;  ///< P, [D][d] row-major, finite

    /// Throws kvcar::error naming the first problem found.
    void validate() const {
        require(width > 0, "linear_params: width must be positive (got " +
                               std::to_string(width) + ")");
        require(heads > 0, "linear_params: heads must be positive (got " +
                               std::to_string(heads) + ")");
        require(width % heads == 0, "linear_params: width " + std::to_string(width) +
                                        " is not divisible by heads " + std::to_string(heads));
        require(rank > 0, "linear_params: rank must be positive (got " + std::to_string(rank) +
                              ")");
        require(rank <= width, "linear_params: rank " + std::to_string(rank) +
                                   " exceeds width " + std::to_string(width));
        require(rank <= max_latent_width, "linear_params: rank " + std::to_string(rank) +
                                              " exceeds max_latent_width " +
                                              std::to_string(max_latent_width));
        require(mean.size() == std::size_t(width),
                "linear_params: mean has " + std::to_string(mean.size()) +
                    " values but width is " + std::to_string(width));
        const std::size_t basis_size = std::size_t(width) * std::size_t(rank);
        require(basis.size() == basis_size,
                "linear_params: basis has " + std::to_string(basis.size()) +
                    " values but width x rank is " + std::to_string(basis_size));
        for (float m : mean) require(std::isfinite(m), "linear_params: mean is not finite");
        for (float b : basis) require(std::isfinite(b), "linear_params: basis is not finite");
    }

    /// Validates (throws kvcar::error like validate()) and returns a view over these vectors,
    /// storing the latent as T.
    template <float_element T = f16>
    linear_codec<T> codec() const {
        validate();
        return linear_codec<T>{width, rank, heads, mean.data(), basis.data()};
    }
};

static_assert(affine_latent_codec<linear_codec<f16>>);

/// The linear codec's registration (codec/traits.hpp): a file stores its heads, μ and P.
template <float_element T>
struct codec_registration<linear_codec<T>> {
    /// The codec file's "codec" value.
    static constexpr const char* name = "linear";
    /// How the device decodes a record: x̂ = P z + μ.
    static constexpr codec_family family = codec_family::affine;
    /// The codec storing its latent as U.
    template <float_element U>
    using view = linear_codec<U>;
    /// The owning parameters (what calibration fits and a file loads).
    using params = linear_params;
    /// A view over `p`'s vectors (not validated: see validate).
    static linear_codec<float> view_of(const params& p) {
        return linear_codec<float>{p.width, p.rank, p.heads, p.mean.data(), p.basis.data()};
    }
    /// D, d = rank, the heads of the group, then μ [D] and P [D][d].
    template <class X, class F>
    static void members(X& x, F& f) {
        f.size("width", x.width);
        f.size("latent", x.rank);
        f.size("heads", x.heads);
        f.tensor("mean", x.mean, {x.width});
        f.tensor("basis", x.basis, {x.width, x.rank});
    }
    /// linear_params::validate.
    static void validate(const params& p) { p.validate(); }
    /// The view's shape and pointers (a view's arrays cannot be checked for their values).
    static void validate(const linear_codec<float>& c) {
        const std::string me = "linear_codec: ";
        require(c.rank <= c.width, me + "latent " + std::to_string(c.rank) + " exceeds width " +
                                       std::to_string(c.width));
        require(c.heads > 0 && c.width % c.heads == 0, me + "heads " + std::to_string(c.heads) +
                                                           " must divide width " +
                                                           std::to_string(c.width));
        require(c.mean && c.basis, me + "mean or basis pointer is null");
    }
};

}  // namespace kvcar
