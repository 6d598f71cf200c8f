// kvcar/calib/pca.hpp — fits a linear codec by principal component analysis (host only).
//
// The rank-d subspace that minimises the mean squared reconstruction error of the calibration
// vectors is spanned by the top d eigenvectors of their covariance; the error left is the sum of
// the discarded eigenvalues. So: mean, covariance (in double), a symmetric eigensolver, sort.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "kvcar/codec/limits.hpp"
#include "kvcar/codec/linear.hpp"
#include "kvcar/common.hpp"

namespace kvcar::calib {

/// How many components to keep: set exactly one of `rank` (fixed) or `energy` (the smallest
/// rank whose components retain at least this fraction of the total variance, in (0, 1]).
struct pca_params {
    int rank = 0;       ///< components to keep (0: choose by `energy`)
    double energy = 0;  ///< fraction of variance to retain, in (0, 1] (0: use `rank`)
    int heads = 1;      ///< KV heads in the group (the codec's `heads`); must divide the width
};

/// A fitted linear codec and the spectrum it was cut from.
struct pca_result {
    linear_params params;             ///< the mean; the top-`rank` eigenvectors as basis columns
    std::vector<double> eigenvalues;  ///< all `width` covariance eigenvalues, descending
    double retained_energy = 0;       ///< Σ kept eigenvalues / Σ all (1 when the data is constant)
};

/// The eigen-decomposition of a symmetric matrix: A = Σ_k values[k] v_k v_kᵀ.
struct symmetric_eigen_result {
    std::vector<double> values;   ///< descending
    std::vector<double> vectors;  ///< [n][n] row-major, row k = unit eigenvector of values[k]
};

namespace detail {

/// Householder reduction of the symmetric n×n matrix `a` (row-major, destroyed) to a
/// tridiagonal T = Qᵀ A Q: `diag` and `off` (off[i] = T[i][i+1]) receive T, `qt` receives Qᵀ.
/// Each step k reflects the rest of row k onto its first element with H = I − β v vᵀ and applies
/// H·S·H to the trailing block S as the rank-2 update S − v wᵀ − w vᵀ, w = p − (β vᵀp / 2) v,
/// p = β S v. About (4/3) n³ multiply-adds, plus n³ to accumulate Qᵀ row-wise.
inline void tridiagonalize(std::vector<double>& a, int n, std::vector<double>& diag,
                           std::vector<double>& off, std::vector<double>& qt) {
    const std::size_t un = std::size_t(n);
    qt.assign(un * un, 0.0);
    for (std::size_t i = 0; i < un; ++i) qt[i * un + i] = 1.0;
    std::vector<double> v(un), p(un), row_combo(un);
    for (int k = 0; k + 2 < n; ++k) {
        const std::size_t first = std::size_t(k) + 1;  // H acts on indices first..n-1
        const std::size_t m = un - first;
        double* row_k = &a[std::size_t(k) * un];
        double tail = 0.0;  // squared norm of row k beyond the first off-diagonal element
        for (std::size_t j = 1; j < m; ++j) tail += row_k[first + j] * row_k[first + j];
        if (tail == 0.0) continue;  // already tridiagonal in this row
        const double x0 = row_k[first];
        const double norm = std::sqrt(tail + x0 * x0);
        const double alpha = x0 >= 0.0 ? -norm : norm;  // the sign that avoids cancellation
        for (std::size_t j = 0; j < m; ++j) v[j] = row_k[first + j];
        v[0] -= alpha;
        const double beta = 1.0 / (norm * norm - x0 * alpha);  // 2 / vᵀv
        double vp = 0.0;
        for (std::size_t i = 0; i < m; ++i) {
            const double* s_row = &a[(first + i) * un + first];
            double s = 0.0;
            for (std::size_t j = 0; j < m; ++j) s += s_row[j] * v[j];
            p[i] = beta * s;
            vp += v[i] * p[i];
        }
        const double half = 0.5 * beta * vp;
        for (std::size_t i = 0; i < m; ++i) p[i] -= half * v[i];  // p becomes w
        for (std::size_t i = 0; i < m; ++i) {
            double* s_row = &a[(first + i) * un + first];
            for (std::size_t j = 0; j < m; ++j) s_row[j] -= v[i] * p[j] + p[i] * v[j];
        }
        row_k[first] = alpha;
        a[first * un + std::size_t(k)] = alpha;
        for (std::size_t j = 1; j < m; ++j) {
            row_k[first + j] = 0.0;
            a[(first + j) * un + std::size_t(k)] = 0.0;
        }
        // Qᵀ ← H Qᵀ: only rows first..n-1 change, by −β v (vᵀ Qᵀ[first:, :]).
        std::fill(row_combo.begin(), row_combo.end(), 0.0);
        for (std::size_t i = 0; i < m; ++i) {
            const double* q_row = &qt[(first + i) * un];
            for (std::size_t c = 0; c < un; ++c) row_combo[c] += v[i] * q_row[c];
        }
        for (std::size_t i = 0; i < m; ++i) {
            double* q_row = &qt[(first + i) * un];
            const double f = beta * v[i];
            for (std::size_t c = 0; c < un; ++c) q_row[c] -= f * row_combo[c];
        }
    }
    diag.resize(un);
    off.assign(un, 0.0);
    for (std::size_t i = 0; i < un; ++i) diag[i] = a[i * un + i];
    for (std::size_t i = 0; i + 1 < un; ++i) off[i] = a[i * un + i + 1];
}

/// Diagonalises the symmetric tridiagonal (diag, off) in place by implicit QR sweeps with the
/// Wilkinson shift (Golub & Van Loan, 8.3), rotating the rows of `vt` along: on entry vt = Qᵀ,
/// on exit row i of vt is the eigenvector of diag[i]. Each sweep chases a bulge down the
/// unreduced block with Givens rotations; convergence is cubic in practice (2–3 sweeps per
/// eigenvalue), so the cost is dominated by rotating vt: about 6 n³ multiply-adds.
inline void tridiagonal_qr(std::vector<double>& diag, std::vector<double>& off,
                           std::vector<double>& vt, int n) {
    const std::size_t un = std::size_t(n);
    const double eps = std::numeric_limits<double>::epsilon();
    double scale = 0.0;
    for (std::size_t i = 0; i < un; ++i)
        scale = std::max(scale, std::fabs(diag[i]) + std::fabs(off[i]));
    const auto negligible = [&](int i) {  // is off[i] (between i and i+1) zero for our purposes?
        const double b = std::fabs(off[std::size_t(i)]);
        return b <= eps * (std::fabs(diag[std::size_t(i)]) + std::fabs(diag[std::size_t(i) + 1])) ||
               b <= eps * eps * scale;
    };
    const auto rotate_rows = [&](int k, double c, double s) {
        double* r0 = &vt[std::size_t(k) * un];
        double* r1 = r0 + un;
        for (std::size_t j = 0; j < un; ++j) {
            const double a0 = r0[j], a1 = r1[j];
            r0[j] = c * a0 + s * a1;
            r1[j] = c * a1 - s * a0;
        }
    };
    long sweeps_left = 60L * n + 60;
    int last = n - 1;  // the active block ends here; everything below is converged
    while (last > 0) {
        if (negligible(last - 1)) {
            off[std::size_t(last) - 1] = 0.0;
            --last;
            continue;
        }
        int lo = last - 1;  // the unreduced block is [lo, last]
        while (lo > 0 && !negligible(lo - 1)) --lo;
        if (lo > 0) off[std::size_t(lo) - 1] = 0.0;
        require(--sweeps_left > 0, "symmetric_eigen: QR iteration did not converge");

        // Wilkinson shift: the eigenvalue of the trailing 2×2 block nearer its last entry.
        const double a_m = diag[std::size_t(last)], b_m = off[std::size_t(last) - 1];
        const double delta = 0.5 * (diag[std::size_t(last) - 1] - a_m);
        const double root = std::hypot(delta, b_m);
        const double shift = a_m - b_m * b_m / (delta + (delta >= 0.0 ? root : -root));

        double x = diag[std::size_t(lo)] - shift, z = off[std::size_t(lo)];
        double bulge = 0.0;
        for (int k = lo; k < last; ++k) {
            const std::size_t uk = std::size_t(k);
            // Rotation G (G e_k = c e_k + s e_{k+1}) whose first column is ∝ (x, z): at k = lo
            // it starts the implicit shifted step, afterwards it zeroes the bulge at (k−1, k+1).
            const double r = std::hypot(x, z);
            const double c = r == 0.0 ? 1.0 : x / r;
            const double s = r == 0.0 ? 0.0 : z / r;
            if (k > lo) off[uk - 1] = r;
            const double a0 = diag[uk], a1 = diag[uk + 1], b = off[uk];
            diag[uk] = c * c * a0 + 2.0 * c * s * b + s * s * a1;
            diag[uk + 1] = s * s * a0 - 2.0 * c * s * b + c * c * a1;
            off[uk] = c * s * (a1 - a0) + (c * c - s * s) * b;
            if (k + 1 < last) {
                bulge = s * off[uk + 1];
                off[uk + 1] *= c;
                x = off[uk];
                z = bulge;
            }
            rotate_rows(k, c, s);
        }
    }
}

}  // namespace detail

/// All eigenvalues (descending) and unit eigenvectors of the symmetric n×n row-major matrix `a`
/// (pass a symmetric matrix). Householder tridiagonalisation then implicit shifted QR: O(n³),
/// about 8 n³ multiply-adds with the eigenvectors (~2 s at n = 768 on one core), where cyclic
/// Jacobi would spend ~3 n³ per sweep, times 6–10 sweeps.
/// Each eigenvector's sign is fixed so that its largest-magnitude component (the first one, on
/// ties) is positive, so results are reproducible across runs and platforms.
inline symmetric_eigen_result symmetric_eigen(std::vector<double> a, int n) {
    require(n > 0, "symmetric_eigen: n must be positive (got " + std::to_string(n) + ")");
    const std::size_t un = std::size_t(n);
    require(a.size() == un * un, "symmetric_eigen: matrix has " + std::to_string(a.size()) +
                                     " values but n x n is " + std::to_string(un * un));
    for (double x : a) require(std::isfinite(x), "symmetric_eigen: matrix is not finite");
    std::vector<double> diag, off, vt;
    detail::tridiagonalize(a, n, diag, off, vt);
    detail::tridiagonal_qr(diag, off, vt, n);

    std::vector<std::size_t> order(un);
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t i, std::size_t j) { return diag[i] > diag[j]; });
    symmetric_eigen_result result;
    result.values.resize(un);
    result.vectors.resize(un * un);
    for (std::size_t k = 0; k < un; ++k) {
        result.values[k] = diag[order[k]];
        const double* src = &vt[order[k] * un];
        std::size_t biggest = 0;
        for (std::size_t j = 1; j < un; ++j)
            if (std::fabs(src[j]) > std::fabs(src[biggest])) biggest = j;
        const double sign = src[biggest] < 0.0 ? -1.0 : 1.0;
        for (std::size_t j = 0; j < un; ++j) result.vectors[k * un + j] = sign * src[j];
    }
    return result;
}

/// Fits a rank-d linear codec to `n_rows` row-major vectors of `width` floats.
///
/// The covariance uses the unbiased 1/(n−1) normalisation, so `eigenvalues` are sample
/// variances along the principal axes; the mean squared reconstruction error (per row, summed
/// over dimensions) of the fitted codec on the fitting data is (n−1)/n · Σ discarded eigenvalues.
/// Cost: O(n_rows · width²) for the covariance plus O(width³) for the eigensolver.
inline pca_result fit_pca(const float* rows, std::size_t n_rows, int width,
                          const pca_params& params) {
    require(width > 0, "fit_pca: width must be positive (got " + std::to_string(width) + ")");
    require(params.heads > 0, "fit_pca: heads must be positive (got " +
                                  std::to_string(params.heads) + ")");
    require(width % params.heads == 0, "fit_pca: width " + std::to_string(width) +
                                           " is not divisible by heads " +
                                           std::to_string(params.heads));
    require(n_rows >= 2, "fit_pca: needs at least 2 rows to estimate a covariance (got " +
                             std::to_string(n_rows) + ")");
    require(rows != nullptr, "fit_pca: rows is null");
    require(params.rank >= 0 && params.energy >= 0.0,
            "fit_pca: rank and energy must not be negative");
    require((params.rank > 0) != (params.energy > 0.0),
            "fit_pca: set exactly one of rank and energy");
    require(params.rank <= width, "fit_pca: rank " + std::to_string(params.rank) +
                                      " exceeds width " + std::to_string(width));
    require(params.rank <= max_latent_width, "fit_pca: rank " + std::to_string(params.rank) +
                                                 " exceeds max_latent_width " +
                                                 std::to_string(max_latent_width));
    require(params.energy <= 1.0, "fit_pca: energy must be in (0, 1] (got " +
                                      std::to_string(params.energy) + ")");

    const std::size_t uw = std::size_t(width);
    std::vector<double> mean(uw, 0.0);
    for (std::size_t r = 0; r < n_rows; ++r) {
        const float* x = rows + r * uw;
        for (std::size_t i = 0; i < uw; ++i) {
            require(std::isfinite(x[i]), "fit_pca: row " + std::to_string(r) + " is not finite");
            mean[i] += double(x[i]);
        }
    }
    for (double& m : mean) m /= double(n_rows);

    // Upper triangle of Σ_r (x_r − μ)(x_r − μ)ᵀ, accumulated row by row (two-pass: centred).
    std::vector<double> cov(uw * uw, 0.0), centred(uw);
    for (std::size_t r = 0; r < n_rows; ++r) {
        const float* x = rows + r * uw;
        for (std::size_t i = 0; i < uw; ++i) centred[i] = double(x[i]) - mean[i];
        for (std::size_t i = 0; i < uw; ++i) {
            const double ci = centred[i];
            double* c_row = &cov[i * uw];
            for (std::size_t j = i; j < uw; ++j) c_row[j] += ci * centred[j];
        }
    }
    const double norm = 1.0 / double(n_rows - 1);
    for (std::size_t i = 0; i < uw; ++i)
        for (std::size_t j = i; j < uw; ++j) cov[j * uw + i] = cov[i * uw + j] *= norm;

    symmetric_eigen_result eig = symmetric_eigen(std::move(cov), width);

    // The covariance is positive semi-definite; a negative eigenvalue is rounding, counted as 0.
    double total = 0.0;
    for (double l : eig.values) total += std::max(l, 0.0);
    int rank = params.rank;
    if (rank == 0) {
        rank = width;
        double kept = 0.0;
        for (int k = 0; k < width; ++k) {
            kept += std::max(eig.values[std::size_t(k)], 0.0);
            if (total == 0.0 || kept >= params.energy * total) {
                rank = k + 1;
                break;
            }
        }
        require(rank <= max_latent_width,
                "fit_pca: retaining energy " + std::to_string(params.energy) + " needs rank " +
                    std::to_string(rank) + ", above max_latent_width " +
                    std::to_string(max_latent_width));
    }
    double kept = 0.0;
    for (int k = 0; k < rank; ++k) kept += std::max(eig.values[std::size_t(k)], 0.0);

    pca_result result;
    result.retained_energy = total == 0.0 ? 1.0 : std::min(kept / total, 1.0);
    result.params.width = width;
    result.params.rank = rank;
    result.params.heads = params.heads;
    result.params.mean.assign(mean.begin(), mean.end());
    const std::size_t ur = std::size_t(rank);
    result.params.basis.resize(uw * ur);
    for (std::size_t j = 0; j < ur; ++j)
        for (std::size_t i = 0; i < uw; ++i)
            result.params.basis[i * ur + j] = float(eig.vectors[j * uw + i]);
    result.eigenvalues = std::move(eig.values);
    return result;
}

}  // namespace kvcar::calib
