// Finite-difference gradient checks in float64 for the layer tests.
//
// A test builds a scalar loss L = Σ y · r with fixed random r (so dL/dy = r), runs the layer's backward
// with dy = r, and compares each analytic gradient with central differences (L(v+h) − L(v−h)) / 2h on
// every element (or a deterministic sample of `max_checks` elements for large tensors).
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace dsx::test {

inline std::vector<double> random_vector(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline double dot(const double* a, const double* b, std::size_t n) {
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

struct grad_report {
  std::string name;
  double max_rel_error = 0;  // max over checked elements of |a − n| / max(|a| + |n|, floor)
  std::size_t checked = 0;
};

// `values` points at the n inputs of `loss`; `analytic` holds dL/dvalues.
inline grad_report check_gradient(const std::string& name, double* values, const double* analytic, std::size_t n,
                                  const std::function<double()>& loss, std::size_t max_checks = 64,
                                  double h = 1e-6, double floor = 1e-7) {
  grad_report r{name, 0, 0};
  const std::size_t stride = std::max<std::size_t>(1, n / max_checks);
  for (std::size_t i = (n > max_checks ? 7 % stride : 0); i < n; i += stride) {
    const double v = values[i];
    values[i] = v + h;
    const double lp = loss();
    values[i] = v - h;
    const double lm = loss();
    values[i] = v;
    const double numeric = (lp - lm) / (2 * h);
    const double err = std::abs(analytic[i] - numeric) / std::max(std::abs(analytic[i]) + std::abs(numeric), floor);
    r.max_rel_error = std::max(r.max_rel_error, err);
    ++r.checked;
  }
  return r;
}

// check_gradient with h = 1e-6 and a floor of 1e-2, as a test requirement: at least min(n, max_checks)
// elements checked (every element by default), max relative error below 1e-6. Central differences with
// h = 1e-6 on losses of a few units carry a round-off of about 1e-16 · (size of the loss's terms) / h
// ≈ 1e-9, so the relative error is taken against at least 1e-2: an element whose gradient is smaller is
// held to an absolute error of 1e-8 instead.
inline void require_gradient(const std::string& name, double* values, const double* analytic, std::size_t n,
                             const std::function<double()>& loss,
                             std::size_t max_checks = std::numeric_limits<std::size_t>::max()) {
  const grad_report rep = check_gradient(name, values, analytic, n, loss, max_checks, 1e-6, 1e-2);
  INFO(rep.name << ": max relative error " << rep.max_rel_error << " over " << rep.checked << " elements");
  CHECK(rep.checked >= std::min(n, max_checks));
  CHECK(rep.max_rel_error < 1e-6);
}

}  // namespace dsx::test
