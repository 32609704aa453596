// SwiGLU on a fused gate/up activation: each row of `gu` is [g (inter) | u (inter)], the output of one
// GEMM against the adjacent gate_proj and up_proj weights; h = silu(g) · u.
#pragma once

#include <cmath>
#include <cstdint>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/activation.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

// gu: (rows, 2·inter); h: (rows, inter).
template <class T>
void swiglu_forward(host&, T* h, const T* gu, std::int64_t rows, std::int64_t inter) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* g = gu + r * 2 * inter;
    const T* u = g + inter;
    for (std::int64_t i = 0; i < inter; ++i) {
      h[r * inter + i] = T(silu(A(g[i])) * A(u[i]));
    }
  }
}

// dgu (=): [dg | du] with dg = dh · u · silu'(g), du = dh · silu(g), silu'(g) = σ(g)(1 + g(1 − σ(g))).
template <class T>
void swiglu_backward(host&, T* dgu, const T* dh, const T* gu, std::int64_t rows, std::int64_t inter) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* g = gu + r * 2 * inter;
    const T* u = g + inter;
    T* dg = dgu + r * 2 * inter;
    T* du = dg + inter;
    for (std::int64_t i = 0; i < inter; ++i) {
      const A gv = A(g[i]), d = A(dh[r * inter + i]);
      dg[i] = T(d * A(u[i]) * silu_grad(gv));
      du[i] = T(d * silu(gv));
    }
  }
}

}  // namespace dsx::backend
