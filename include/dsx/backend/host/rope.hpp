// Rotary embedding on interleaved pairs (x[2j], x[2j+1]) — the layout of DeepSeek checkpoints — applied
// in place to `heads` vectors of `rope_dim` per token. Token t of a sequence sits at position
// pos_offset + t % seq_len. Backward is the same rotation with the angle negated (inverse = true).
#pragma once

#include <cstdint>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

// x: (tokens, heads, ...) with the rope vector of head h of token t at x + t·token_stride + h·head_stride.
// cos, sin: (positions, rope_dim / 2) from layers/rope.hpp's table.
template <class T>
void rope_apply(host&, T* x, std::int64_t tokens, std::int64_t heads, std::int64_t token_stride,
                std::int64_t head_stride, std::int64_t rope_dim, std::int64_t seq_len, std::int64_t pos_offset,
                const accum_t<T>* cos, const accum_t<T>* sin, bool inverse) {
  using A = accum_t<T>;
  const std::int64_t half = rope_dim / 2;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < tokens; ++t) {
    const std::int64_t pos = pos_offset + t % seq_len;
    const A* c = cos + pos * half;
    const A* s = sin + pos * half;
    for (std::int64_t h = 0; h < heads; ++h) {
      T* v = x + t * token_stride + h * head_stride;
      for (std::int64_t j = 0; j < half; ++j) {
        const A a = A(v[2 * j]), b = A(v[2 * j + 1]);
        const A sn = inverse ? -s[j] : s[j];
        v[2 * j] = T(a * c[j] - b * sn);
        v[2 * j + 1] = T(a * sn + b * c[j]);
      }
    }
  }
}

}  // namespace dsx::backend
