// Scalar activation functions written once for the host and the CUDA backends (DSX_HD), evaluated in
// the accumulation type A (float or double).
#pragma once

#include <cmath>

#include "dsx/core/macros.hpp"

namespace dsx {

// σ(x) = 1 / (1 + e^−x).
template <class A>
DSX_HD A sigmoid(A x) {
  using std::exp;
  return A(1) / (A(1) + exp(-x));
}

// silu(x) = x · σ(x).
template <class A>
DSX_HD A silu(A x) {
  return x * sigmoid(x);
}

// silu'(x) = σ(x) · (1 + x · (1 − σ(x))).
template <class A>
DSX_HD A silu_grad(A x) {
  const A s = sigmoid(x);
  return s * (A(1) + x * (A(1) - s));
}

}  // namespace dsx
