// Rotary embedding on interleaved pairs, in place, host's signature and math (backend/host/rope.hpp).
// One block per token (grid-stride); its threads walk the (head, pair) items with 32-bit index math and
// move each pair as one access when pairs are aligned. The pairs of one head are adjacent, so a warp
// reads contiguous memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

// P = 2: each pair is one aligned access; P = 1: two scalar accesses.
template <class T, int P>
__global__ void rope_apply_kernel(T* x, std::int64_t tokens, int heads, std::int64_t token_stride,
                                  std::int64_t head_stride, int half, std::int64_t seq_len, std::int64_t pos_offset,
                                  const accum_t<T>* cos, const accum_t<T>* sin, bool inverse) {
  using A = accum_t<T>;
  const int items = heads * half;
  for (std::int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const std::int64_t pos = pos_offset + t % seq_len;
    const A* c_row = cos + pos * half;
    const A* s_row = sin + pos * half;
    T* xt = x + t * token_stride;
    for (int k = threadIdx.x; k < items; k += blockDim.x) {
      const int h = k / half, j = k - h * half;
      const A c = c_row[j], s = inverse ? -s_row[j] : s_row[j];
      T* v = xt + h * head_stride + 2 * j;
      if constexpr (P == 2) {
        auto pv = load<2>(v);
        const A a = A(pv.v[0]), b = A(pv.v[1]);
        pv.v[0] = T(a * c - b * s);
        pv.v[1] = T(a * s + b * c);
        store<2>(v, pv);
      } else {
        const A a = A(v[0]), b = A(v[1]);
        v[0] = T(a * c - b * s);
        v[1] = T(a * s + b * c);
      }
    }
  }
}

}  // namespace cuda_detail

// x: (tokens, heads, ...) with the rope vector of head h of token t at x + t·token_stride + h·head_stride;
// cos, sin: (positions, rope_dim / 2) device tables from layers/rope.hpp. Token t sits at position
// pos_offset + t % seq_len; inverse applies the opposite rotation (the backward pass).
template <class T>
void rope_apply(cuda& be, T* x, std::int64_t tokens, std::int64_t heads, std::int64_t token_stride,
                std::int64_t head_stride, std::int64_t rope_dim, std::int64_t seq_len, std::int64_t pos_offset,
                const accum_t<T>* cos, const accum_t<T>* sin, bool inverse) {
  using namespace cuda_detail;
  const std::int64_t half = rope_dim / 2;
  if (tokens <= 0 || heads <= 0 || half <= 0) return;
  require(seq_len > 0, "cuda rope_apply: seq_len must be positive, got " + std::to_string(seq_len));
  require(heads * half <= INT32_MAX, "cuda rope_apply: heads · rope_dim / 2 = " + std::to_string(heads * half) +
                                         " exceeds 2^31 − 1");
  const bool pairs = reinterpret_cast<std::uintptr_t>(x) % (2 * sizeof(T)) == 0 && token_stride % 2 == 0 &&
                     head_stride % 2 == 0;
  const int threads = int(std::min<std::int64_t>(256, (heads * half + 31) / 32 * 32));
  if (pairs)
    rope_apply_kernel<T, 2><<<grid_for(tokens), threads, 0, be.stream()>>>(
        x, tokens, int(heads), token_stride, head_stride, int(half), seq_len, pos_offset, cos, sin, inverse);
  else
    rope_apply_kernel<T, 1><<<grid_for(tokens), threads, 0, be.stream()>>>(
        x, tokens, int(heads), token_stride, head_stride, int(half), seq_len, pos_offset, cos, sin, inverse);
  DSX_CUDA_CHECK_LAUNCH("rope_apply_kernel");
}

}  // namespace dsx::backend
