// Tests for kvcar/calib/pca.hpp: the symmetric eigensolver and PCA fitting of a linear codec.
#include "catch.hpp"

#include <kvcar/calib/pca.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

using namespace kvcar;
using calib::fit_pca;
using calib::pca_params;
using calib::symmetric_eigen;

namespace {

using idx = std::size_t;

/// n orthonormal vectors of length n (rows), by Gram-Schmidt on Gaussian vectors.
std::vector<double> random_orthonormal(int n, std::mt19937& rng) {
    std::normal_distribution<double> g(0.0, 1.0);
    const idx un = idx(n);
    std::vector<double> u(un * un);
    for (idx k = 0; k < un; ++k) {
        double* row = &u[k * un];
        for (idx i = 0; i < un; ++i) row[i] = g(rng);
        for (int pass = 0; pass < 2; ++pass) {  // twice: re-orthogonalisation keeps it exact
            for (idx p = 0; p < k; ++p) {
                const double* prev = &u[p * un];
                double d = 0.0;
                for (idx i = 0; i < un; ++i) d += row[i] * prev[i];
                for (idx i = 0; i < un; ++i) row[i] -= d * prev[i];
            }
        }
        double norm = 0.0;
        for (idx i = 0; i < un; ++i) norm += row[i] * row[i];
        norm = std::sqrt(norm);
        for (idx i = 0; i < un; ++i) row[i] /= norm;
    }
    return u;
}

/// A = Σ_k lambda_k u_k u_kᵀ.
std::vector<double> compose(const std::vector<double>& u, const std::vector<double>& lambda) {
    const idx n = lambda.size();
    std::vector<double> a(n * n, 0.0);
    for (idx k = 0; k < n; ++k)
        for (idx i = 0; i < n; ++i)
            for (idx j = 0; j < n; ++j) a[i * n + j] += lambda[k] * u[k * n + i] * u[k * n + j];
    return a;
}

/// Checks A v_k = λ_k v_k, orthonormality, descending order and the sign convention.
void check_eigen(const std::vector<double>& a, int n, const calib::symmetric_eigen_result& e) {
    const idx un = idx(n);
    REQUIRE(e.values.size() == un);
    REQUIRE(e.vectors.size() == un * un);
    double norm = 0.0;
    for (double x : a) norm = std::max(norm, std::fabs(x));
    norm = std::max(norm * double(n), 1e-300);
    for (idx k = 0; k < un; ++k) {
        if (k > 0) REQUIRE(e.values[k] <= e.values[k - 1]);
        const double* v = &e.vectors[k * un];
        double residual = 0.0;
        for (idx i = 0; i < un; ++i) {
            double av = 0.0;
            for (idx j = 0; j < un; ++j) av += a[i * un + j] * v[j];
            residual = std::max(residual, std::fabs(av - e.values[k] * v[i]));
        }
        REQUIRE(residual <= 1e-12 * norm);
        idx biggest = 0;
        for (idx i = 1; i < un; ++i)
            if (std::fabs(v[i]) > std::fabs(v[biggest]) + 1e-12) biggest = i;
        REQUIRE(v[biggest] > 0.0);
        for (idx l = 0; l <= k; ++l) {
            double d = 0.0;
            for (idx i = 0; i < un; ++i) d += v[i] * e.vectors[l * un + i];
            REQUIRE(d == Approx(l == k ? 1.0 : 0.0).margin(1e-12));
        }
    }
}

struct planted {
    int width = 0;
    idx n_rows = 0;
    std::vector<double> mean;
    std::vector<double> axes;    // [width][width] orthonormal rows u_k
    std::vector<double> lambda;  // planted variance along u_k
    std::vector<float> rows;     // [n_rows][width]
};

/// x = μ + Σ_k sqrt(λ_k) g_k u_k with independent standard normal g_k.
planted make_planted(const std::vector<double>& lambda, idx n_rows, std::uint32_t seed) {
    std::mt19937 rng(seed);
    planted p;
    p.width = int(lambda.size());
    p.n_rows = n_rows;
    p.lambda = lambda;
    p.axes = random_orthonormal(p.width, rng);
    const idx w = lambda.size();
    std::normal_distribution<double> g(0.0, 1.0);
    p.mean.resize(w);
    for (double& m : p.mean) m = 3.0 * g(rng);
    p.rows.resize(n_rows * w);
    std::vector<double> x(w);
    for (idx r = 0; r < n_rows; ++r) {
        x = p.mean;
        for (idx k = 0; k < w; ++k) {
            const double c = std::sqrt(lambda[k]) * g(rng);
            for (idx i = 0; i < w; ++i) x[i] += c * p.axes[k * w + i];
        }
        for (idx i = 0; i < w; ++i) p.rows[r * w + i] = float(x[i]);
    }
    return p;
}

/// Top `strong` planted variances well above a geometric tail: a clear spectral gap.
std::vector<double> gapped_spectrum(int width, int strong) {
    std::vector<double> lambda;
    for (int k = 0; k < strong; ++k) lambda.push_back(50.0 - 6.0 * k);
    for (int k = strong; k < width; ++k) lambda.push_back(0.5 * std::pow(0.9, k - strong));
    return lambda;
}

/// Mean over rows of ||x − decode(encode(x))||², in double.
template <class Codec>
double mean_squared_error(const Codec& codec, const std::vector<float>& rows, idx n_rows) {
    const idx w = idx(codec.group_width());
    std::vector<std::byte> record(codec.bytes_per_group());
    std::vector<float> y(w);
    double total = 0.0;
    for (idx r = 0; r < n_rows; ++r) {
        codec.encode(&rows[r * w], record.data());
        codec.decode(record.data(), y.data());
        for (idx i = 0; i < w; ++i) {
            const double d = double(rows[r * w + i]) - double(y[i]);
            total += d * d;
        }
    }
    return total / double(n_rows);
}

}  // namespace

// ------------------------------------------------------------------------------ eigensolver

TEST_CASE("symmetric_eigen: random symmetric matrices", "[calib]") {
    std::mt19937 rng(1);
    std::normal_distribution<double> g(0.0, 1.0);
    for (int n : {1, 2, 3, 5, 17, 40}) {
        INFO("n = " << n);
        std::vector<double> a(static_cast<idx>(n) * idx(n));
        for (int i = 0; i < n; ++i)
            for (int j = 0; j <= i; ++j) a[idx(i * n + j)] = a[idx(j * n + i)] = g(rng);
        check_eigen(a, n, symmetric_eigen(a, n));
    }
}

TEST_CASE("symmetric_eigen: known spectra, repeated and graded eigenvalues", "[calib]") {
    std::mt19937 rng(2);
    const int n = 12;
    const std::vector<double> u = random_orthonormal(n, rng);
    const std::vector<std::vector<double>> spectra = {
        {5, 5, 5, 5, 2, 2, 2, 1, 0, 0, 0, 0},                        // repeated, singular
        {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6, -1, -1e2, -1e4, 3, 3},  // graded, signed
        {7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7},                        // a multiple of I
    };
    for (const auto& lambda : spectra) {
        const std::vector<double> a = compose(u, lambda);
        const auto e = symmetric_eigen(a, n);
        check_eigen(a, n, e);
        std::vector<double> sorted = lambda;
        std::sort(sorted.rbegin(), sorted.rend());
        for (idx k = 0; k < idx(n); ++k)
            REQUIRE(e.values[k] == Approx(sorted[k]).margin(1e-9 * 1e6));
    }
}

TEST_CASE("symmetric_eigen: diagonal, zero and 2x2 matrices", "[calib]") {
    const std::vector<double> diagonal = {1, 0, 0, 0, 0, -3, 0, 0, 0, 0, 4, 0, 0, 0, 0, 2};
    const auto d = symmetric_eigen(diagonal, 4);
    check_eigen(diagonal, 4, d);
    REQUIRE(d.values == std::vector<double>{4, 2, 1, -3});
    REQUIRE(d.vectors[0 * 4 + 2] == 1.0);  // e_2 for 4, sign fixed positive

    const std::vector<double> zero(9, 0.0);
    const auto z = symmetric_eigen(zero, 3);
    check_eigen(zero, 3, z);
    REQUIRE(z.values == std::vector<double>{0, 0, 0});

    // [[2, 1], [1, 2]]: eigenvalues 3 and 1 along (1, 1)/√2 and (1, −1)/√2.
    const std::vector<double> two = {2, 1, 1, 2};
    const auto t = symmetric_eigen(two, 2);
    check_eigen(two, 2, t);
    REQUIRE(t.values[0] == Approx(3.0));
    REQUIRE(t.values[1] == Approx(1.0));
    REQUIRE(t.vectors[0] == Approx(std::sqrt(0.5)));
    REQUIRE(t.vectors[1] == Approx(std::sqrt(0.5)));
}

TEST_CASE("symmetric_eigen: bad input throws", "[calib]") {
    KVCAR_REQUIRE_ERROR(symmetric_eigen(std::vector<double>(8, 0.0), 3), "matrix has 8 values");
    KVCAR_REQUIRE_ERROR(symmetric_eigen({}, 0), "n must be positive");
    KVCAR_REQUIRE_ERROR(symmetric_eigen({1.0, NAN, NAN, 1.0}, 2), "not finite");
}

// --------------------------------------------------------------------------------------- PCA

TEST_CASE("fit_pca: recovers a planted subspace and its variances", "[calib]") {
    const int width = 32, strong = 6;
    const idx n_rows = 20000;
    const planted data = make_planted(gapped_spectrum(width, strong), n_rows, 3);
    const auto fit = fit_pca(data.rows.data(), n_rows, width, pca_params{.rank = strong});
    const linear_params& p = fit.params;
    REQUIRE(p.width == width);
    REQUIRE(p.rank == strong);
    REQUIRE(p.heads == 1);
    REQUIRE(fit.eigenvalues.size() == idx(width));
    REQUIRE_NOTHROW(p.validate());

    // Basis columns are orthonormal.
    const idx w = idx(width), r = idx(strong);
    for (idx a = 0; a < r; ++a)
        for (idx b = 0; b <= a; ++b) {
            double d = 0.0;
            for (idx i = 0; i < w; ++i) d += double(p.basis[i * r + a]) * p.basis[i * r + b];
            REQUIRE(d == Approx(a == b ? 1.0 : 0.0).margin(1e-6));
        }
    // ||U_rᵀ P||_F² = r exactly when the spans agree (all principal angles zero).
    double overlap = 0.0;
    for (idx k = 0; k < r; ++k)
        for (idx j = 0; j < r; ++j) {
            double d = 0.0;
            for (idx i = 0; i < w; ++i) d += data.axes[k * w + i] * p.basis[i * r + j];
            overlap += d * d;
        }
    REQUIRE(overlap == Approx(double(strong)).margin(5e-3));
    REQUIRE(overlap <= double(strong) + 1e-5);

    // A sample variance along a fixed axis has relative s.d. sqrt(2 / n) = 1%: allow 5 s.d.
    for (idx k = 0; k < r; ++k) REQUIRE(fit.eigenvalues[k] == Approx(data.lambda[k]).epsilon(0.05));
    double planted_tail = 0.0, fitted_tail = 0.0;
    for (idx k = r; k < w; ++k) {
        planted_tail += data.lambda[k];
        fitted_tail += fit.eigenvalues[k];
    }
    REQUIRE(fitted_tail == Approx(planted_tail).epsilon(0.03));
    for (idx i = 0; i < w; ++i) REQUIRE(p.mean[i] == Approx(data.mean[i]).margin(0.1));

    // Sign convention: each column's largest-magnitude component is positive.
    for (idx j = 0; j < r; ++j) {
        idx biggest = 0;
        for (idx i = 1; i < w; ++i)
            if (std::fabs(p.basis[i * r + j]) > std::fabs(p.basis[biggest * r + j])) biggest = i;
        REQUIRE(p.basis[biggest * r + j] > 0.0f);
    }
    // Deterministic: a second fit is bit-identical.
    const auto again = fit_pca(data.rows.data(), n_rows, width, pca_params{.rank = strong});
    REQUIRE(again.params.basis == p.basis);
    REQUIRE(again.params.mean == p.mean);
    REQUIRE(again.eigenvalues == fit.eigenvalues);
}

TEST_CASE("fit_pca: reconstruction error is the discarded eigenvalue mass", "[calib]") {
    const int width = 32;
    // Few rows make the (n − 1) / n normalisation visible; many make the sample match the plant.
    for (const idx n_rows : {idx(40), idx(20000)}) {
        const planted data = make_planted(gapped_spectrum(width, 6), n_rows, 4);
        for (int rank : {1, 4, 6, 12, 31}) {
            INFO("rank " << rank << ", " << n_rows << " rows");
            const auto fit = fit_pca(data.rows.data(), n_rows, width, pca_params{.rank = rank});
            double discarded = 0.0, planted_discarded = 0.0, total = 0.0;
            for (idx k = 0; k < idx(width); ++k) {
                total += fit.eigenvalues[k];
                if (k >= idx(rank)) {
                    discarded += fit.eigenvalues[k];
                    planted_discarded += data.lambda[k];
                }
            }
            const double mse = mean_squared_error(fit.params.codec<float>(), data.rows, n_rows);
            // Exact identity on the fitting data (the covariance is normalised by n − 1).
            const double n = double(n_rows);
            REQUIRE(mse == Approx(discarded * (n - 1.0) / n).epsilon(1e-4));
            // And close to what was planted (sampling error, and PCA fits the sample's own noise).
            if (n_rows >= 20000) REQUIRE(mse == Approx(planted_discarded).epsilon(0.05));
            REQUIRE(fit.retained_energy == Approx(1.0 - discarded / total).epsilon(1e-12));
        }
    }
}

TEST_CASE("fit_pca: full rank reconstructs exactly; heads pass through", "[calib]") {
    const int width = 24;
    const idx n_rows = 500;
    std::vector<double> lambda;
    for (int k = 0; k < width; ++k) lambda.push_back(1.0 + k);
    const planted data = make_planted(lambda, n_rows, 5);
    const auto fit =
        fit_pca(data.rows.data(), n_rows, width, pca_params{.rank = width, .heads = 4});
    REQUIRE(fit.params.heads == 4);
    REQUIRE(fit.retained_energy == Approx(1.0));
    const auto codec = fit.params.codec<float>();
    REQUIRE(codec.head_dim() == 6);
    std::vector<std::byte> record(codec.bytes_per_group());
    std::vector<float> y(static_cast<idx>(width));
    for (idx r = 0; r < n_rows; ++r) {
        codec.encode(&data.rows[r * idx(width)], record.data());
        codec.decode(record.data(), y.data());
        for (idx i = 0; i < idx(width); ++i)
            REQUIRE(y[i] == Approx(data.rows[r * idx(width) + i]).epsilon(1e-5).margin(1e-5));
    }
}

TEST_CASE("fit_pca: energy picks the smallest rank that retains it", "[calib]") {
    // Four strong axes (variance 10) over 28 weak ones (0.001): 99% needs exactly 4.
    const int width = 32;
    std::vector<double> lambda(static_cast<idx>(width), 0.001);
    for (int k = 0; k < 4; ++k) lambda[idx(k)] = 10.0;
    const planted data = make_planted(lambda, 4000, 6);
    const auto fit = fit_pca(data.rows.data(), 4000, width, pca_params{.energy = 0.99});
    REQUIRE(fit.params.rank == 4);
    REQUIRE(fit.retained_energy >= 0.99);
    REQUIRE(fit.params.basis.size() == idx(width) * 4);

    // Against the eigenvalues it reports, for a range of targets.
    const planted graded = make_planted(gapped_spectrum(width, 6), 4000, 7);
    for (double energy : {0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0}) {
        INFO("energy " << energy);
        const auto f = fit_pca(graded.rows.data(), 4000, width, pca_params{.energy = energy});
        double total = 0.0;
        for (double l : f.eigenvalues) total += std::max(l, 0.0);
        int want = width;
        double kept = 0.0;
        for (int k = 0; k < width; ++k) {
            kept += std::max(f.eigenvalues[idx(k)], 0.0);
            if (kept >= energy * total) {
                want = k + 1;
                break;
            }
        }
        REQUIRE(f.params.rank == want);
        REQUIRE(f.retained_energy >= energy * (1.0 - 1e-12));
        if (want > 1) {  // one fewer would not have been enough
            REQUIRE(kept - std::max(f.eigenvalues[idx(want - 1)], 0.0) < energy * total);
        }
    }

    // Constant data has no variance to retain: rank 1, everything retained, no division by 0.
    const std::vector<float> constant(10 * 8, 2.5f);
    const auto c = fit_pca(constant.data(), 10, 8, pca_params{.energy = 0.9});
    REQUIRE(c.params.rank == 1);
    REQUIRE(c.retained_energy == 1.0);
    REQUIRE(c.params.mean == std::vector<float>(8, 2.5f));
}

TEST_CASE("fit_pca: bad inputs throw naming the problem", "[calib]") {
    const std::vector<float> rows(64 * 8, 1.0f);
    KVCAR_REQUIRE_ERROR(fit_pca(rows.data(), 64, 8, pca_params{.rank = 9}),
                        "rank 9 exceeds width 8");
    KVCAR_REQUIRE_ERROR(fit_pca(rows.data(), 1, 8, pca_params{.rank = 2}), "at least 2 rows");
    KVCAR_REQUIRE_ERROR(fit_pca(rows.data(), 64, 8, pca_params{.rank = 2, .heads = 3}),
                        "width 8 is not divisible by heads 3");
    KVCAR_REQUIRE_ERROR(fit_pca(rows.data(), 64, 8, pca_params{.rank = 2, .heads = 0}),
                        "heads must be positive");
    KVCAR_REQUIRE_ERROR(fit_pca(rows.data(), 64, 8, pca_params{}),
                        "exactly one of rank and energy");
    KVCAR_REQUIRE_ERROR(fit_pca(rows.data(), 64, 8, pca_params{.rank = 2, .energy = 0.9}),
                        "exactly one of rank and energy");
    KVCAR_REQUIRE_ERROR(fit_pca(rows.data(), 64, 8, pca_params{.energy = 1.5}),
                        "energy must be in");
    KVCAR_REQUIRE_ERROR(fit_pca(rows.data(), 64, 8, pca_params{.rank = -1}),
                        "must not be negative");
    KVCAR_REQUIRE_ERROR(fit_pca(rows.data(), 64, 0, pca_params{.rank = 1}),
                        "width must be positive");
    KVCAR_REQUIRE_ERROR(fit_pca(nullptr, 64, 8, pca_params{.rank = 1}), "rows is null");
    std::vector<float> bad = rows;
    bad[3 * 8 + 5] = NAN;
    KVCAR_REQUIRE_ERROR(fit_pca(bad.data(), 64, 8, pca_params{.rank = 1}), "row 3 is not finite");
    const std::vector<float> wide(2 * 1100, 0.0f);
    KVCAR_REQUIRE_ERROR(fit_pca(wide.data(), 2, 1100, pca_params{.rank = 1025}),
                        "exceeds max_latent_width 1024");
}
