// Token embedding lookup and its scatter-add backward. Token ids are checked at the model boundary
// (model/transformer.hpp) before they reach a primitive.
#pragma once

#include <cstdint>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

// out: (tokens, dim) = table[ids]; table: (vocab, dim).
template <class T>
void embedding_forward(host&, T* out, const T* table, const std::int32_t* ids, std::int64_t tokens, std::int64_t dim) {
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t i = 0; i < dim; ++i) out[t * dim + i] = table[std::int64_t(ids[t]) * dim + i];
}

// dtable[ids[t]] += dout[t]; parallel over columns so repeated ids never race.
template <class T>
void embedding_backward(host&, T* dtable, const T* dout, const std::int32_t* ids, std::int64_t tokens, std::int64_t dim) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < dim; ++i)
    for (std::int64_t t = 0; t < tokens; ++t) {
      T& d = dtable[std::int64_t(ids[t]) * dim + i];
      d = T(A(d) + A(dout[t * dim + i]));
    }
}

}  // namespace dsx::backend
