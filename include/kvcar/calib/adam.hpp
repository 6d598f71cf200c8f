// kvcar/calib/adam.hpp — Adam (Kingma & Ba) over a list of tensors (host only).
//
// Stage 1 (train_autoencoder) and stage 2 (the examples' fine-tuning through a frozen model)
// both train autoencoders with it: β1 0.9, β2 0.999, ε 1e-8, bias-corrected, no weight decay,
// and optionally the gradient scaled down to a norm (global-norm clipping, as
// torch.nn.utils.clip_grad_norm_). Each tensor is a flat span; the optimizer keeps one first
// and one second moment per element, in the order the tensors are given.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "kvcar/common.hpp"

namespace kvcar::calib {

/// Adam (Kingma & Ba, 2015) over a fixed list of tensors: first and second moments per element,
/// bias-corrected; the one optimizer that calibration and fine-tuning share.
template <std::floating_point Real>
class adam {
public:
    /// Moments for tensors of `sizes` elements, in that order; `lr` the step size (> 0),
    /// `clip_norm` the largest gradient norm a step uses (0: no clipping).
    adam(std::vector<std::size_t> sizes, Real lr, Real clip_norm = Real(0))
        : lr_(lr), clip_(clip_norm) {
        require(std::isfinite(double(lr)) && lr > Real(0), "adam: lr must be positive");
        require(std::isfinite(double(clip_norm)) && clip_norm >= Real(0),
                "adam: clip_norm must be finite and not negative");
        for (std::size_t n : sizes) {
            m_.emplace_back(n, Real(0));
            v_.emplace_back(n, Real(0));
        }
    }

    /// Euclidean norm of a gradient over all its tensors, in double.
    static double norm(std::span<const std::span<const Real>> gradient) {
        double s = 0;
        for (std::span<const Real> g : gradient)
            for (Real x : g) s += double(x) * double(x);
        return std::sqrt(s);
    }

    /// One update of every tensor of `params` by its gradient; returns the gradient's norm
    /// before clipping. Both lists must match the sizes the optimizer was made for.
    double step(std::span<const std::span<Real>> params,
                std::span<const std::span<const Real>> gradient) {
        require(params.size() == m_.size() && gradient.size() == m_.size(),
                "adam: " + std::to_string(params.size()) + " tensors and " +
                    std::to_string(gradient.size()) + " gradients for an optimizer of " +
                    std::to_string(m_.size()));
        for (std::size_t i = 0; i < m_.size(); ++i)
            require(params[i].size() == m_[i].size() && gradient[i].size() == m_[i].size(),
                    "adam: tensor " + std::to_string(i) + " changed shape");
        const double gnorm = norm(gradient);
        // Scaling by exactly 1 when not clipped leaves every product as it was.
        const Real gscale = clip_ > Real(0) && gnorm > double(clip_) ? Real(double(clip_) / gnorm)
                                                                     : Real(1);
        ++t_;
        const double c1 = 1.0 - std::pow(0.9, double(t_));
        const double c2 = 1.0 - std::pow(0.999, double(t_));
        const Real step = Real(double(lr_) / c1);
        const Real inv_c2 = Real(1.0 / c2);
        for (std::size_t i = 0; i < m_.size(); ++i) {
            Real* p = params[i].data();
            const Real* g = gradient[i].data();
            Real* m = m_[i].data();
            Real* v = v_[i].data();
            for (std::size_t k = 0; k < m_[i].size(); ++k) {
                const Real gk = g[k] * gscale;
                m[k] = Real(0.9) * m[k] + Real(0.1) * gk;
                v[k] = Real(0.999) * v[k] + Real(0.001) * gk * gk;
                p[k] -= step * m[k] / (std::sqrt(v[k] * inv_c2) + Real(1e-8));
            }
        }
        return gnorm;
    }

    /// Steps taken so far.
    long steps() const { return t_; }

private:
    Real lr_, clip_;
    long t_ = 0;
    std::vector<std::vector<Real>> m_, v_;
};

}  // namespace kvcar::calib
