// Small whole-buffer operations the layers and the optimizer compose with: residual adds, copies and
// conversions.
#pragma once

#include <cstdint>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

// y += x, n elements.
template <class T>
void add_into(host&, T* y, const T* x, std::int64_t n) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) y[i] = T(A(y[i]) + A(x[i]));
}

// y = x for a strided block of rows: (rows, cols) with row strides.
template <class T>
void copy_rows(host&, T* y, std::int64_t y_stride, const T* x, std::int64_t x_stride, std::int64_t rows, std::int64_t cols) {
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < cols; ++i) y[r * y_stride + i] = x[r * x_stride + i];
}

// y = x converted to To (rounded to nearest even when To is narrower), n elements.
template <class To, class From>
void convert_copy(host&, To* y, const From* x, std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) y[i] = convert<To>(x[i]);
}

// Σ x², accumulated in f64: the global gradient norm for clipping, and a finiteness test (NaN or Inf
// anywhere makes the sum non-finite).
template <class T>
double sum_squares(host&, const T* x, std::int64_t n) {
  double s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s)
  for (std::int64_t i = 0; i < n; ++i) s += convert<double>(x[i]) * convert<double>(x[i]);
  return s;
}

}  // namespace dsx::backend
