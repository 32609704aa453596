// Softmax cross-entropy over the vocabulary, fused with its gradient.
#pragma once

#include <cmath>
#include <cstdint>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

// logits: (rows, vocab); targets: (rows), a negative target ignores the row (loss 0, gradient 0).
// loss[r] = logsumexp(logits[r]) − logits[r, target]. When dlogits is not null it receives
// grad_scale · (softmax(logits[r]) − onehot(target)) (=), e.g. grad_scale = 1 / counted rows for a mean.
template <class T>
void cross_entropy(host&, accum_t<T>* loss, T* dlogits, const T* logits, const std::int32_t* targets, std::int64_t rows,
                   std::int64_t vocab, double grad_scale) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* z = logits + r * vocab;
    T* dz = dlogits ? dlogits + r * vocab : nullptr;
    const std::int32_t y = targets[r];
    if (y < 0) {
      loss[r] = 0;
      if (dz) for (std::int64_t i = 0; i < vocab; ++i) dz[i] = T(0);
      continue;
    }
    A mx = A(z[0]);
    for (std::int64_t i = 1; i < vocab; ++i) mx = A(z[i]) > mx ? A(z[i]) : mx;
    A sum = 0;
    for (std::int64_t i = 0; i < vocab; ++i) sum += std::exp(A(z[i]) - mx);
    const A lse = mx + std::log(sum);
    loss[r] = lse - A(z[y]);
    if (dz)
      for (std::int64_t i = 0; i < vocab; ++i)
        dz[i] = T(A(grad_scale) * (std::exp(A(z[i]) - lse) - (i == y ? A(1) : A(0))));
  }
}

}  // namespace dsx::backend
