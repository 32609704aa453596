// RMSNorm on rows: y = x · rstd · w with rstd = 1 / sqrt(mean(x²) + eps), computed in accum_t<T>
// (f32 for bf16 storage, as the reference does). rstd is saved per row for the backward pass.
#pragma once

#include <cmath>
#include <cstdint>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

// x, y: (rows, dim) with row strides x_stride, y_stride; w: (dim); rstd: (rows).
template <class T>
void rmsnorm_forward(host&, T* y, std::int64_t y_stride, accum_t<T>* rstd, const T* x, std::int64_t x_stride,
                     const T* w, std::int64_t rows, std::int64_t dim, double eps) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * x_stride;
    A ss = 0;
    for (std::int64_t i = 0; i < dim; ++i) ss += A(xr[i]) * A(xr[i]);
    const A s = A(1) / std::sqrt(ss / A(dim) + A(eps));
    rstd[r] = s;
    T* yr = y + r * y_stride;
    for (std::int64_t i = 0; i < dim; ++i) yr[i] = T(A(xr[i]) * s * A(w[i]));
  }
}

// dx (=, or += when accumulate) and dw (+=) from dy. With g = dy · w:
// dx = rstd · g − x · rstd³ · Σ(g · x) / dim;  dw += Σ_rows dy · x · rstd.
template <class T>
void rmsnorm_backward(host&, T* dx, std::int64_t dx_stride, T* dw, const T* dy, std::int64_t dy_stride, const T* x,
                      std::int64_t x_stride, const T* w, const accum_t<T>* rstd, std::int64_t rows, std::int64_t dim,
                      bool accumulate) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * x_stride;
    const T* dyr = dy + r * dy_stride;
    A dot = 0;
    for (std::int64_t i = 0; i < dim; ++i) dot += A(dyr[i]) * A(w[i]) * A(xr[i]);
    const A s = rstd[r];
    const A c = dot * s * s * s / A(dim);
    T* dxr = dx + r * dx_stride;
    for (std::int64_t i = 0; i < dim; ++i) {
      const A v = s * A(dyr[i]) * A(w[i]) - A(xr[i]) * c;
      dxr[i] = accumulate ? T(A(dxr[i]) + v) : T(v);
    }
  }
  // Column sums: parallel over columns so that no two threads write the same dw element.
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < dim; ++i) {
    A acc = 0;
    for (std::int64_t r = 0; r < rows; ++r) acc += A(dy[r * dy_stride + i]) * A(x[r * x_stride + i]) * rstd[r];
    dw[i] = T(A(dw[i]) + acc);
  }
}

}  // namespace dsx::backend
