// Softmax cross-entropy fused with its gradient on the GPU, host's signature
// (backend/host/cross_entropy.hpp). One block per row: one pass over the logits keeps a running
// (max, Σ exp(z − max)) per thread (online softmax), a fixed tree merges the block's pairs, and a second
// pass writes the gradient. Both passes read the row with 16-byte accesses when it is aligned.
#pragma once

#include <cmath>
#include <cstdint>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

// (m, s) ← the pair for the union of the sets summarised by (m, s) and (m2, s2), where s = Σ exp(z − m).
template <class A>
__device__ __forceinline__ void softmax_merge(A& m, A& s, A m2, A s2) {
  if (m2 > m) {
    s = s * exp(m - m2) + s2;
    m = m2;
  } else if (s2 != A(0)) {
    s += s2 * exp(m2 - m);
  }
}

// Merges every thread's (m, s) over the block; every thread receives the result.
template <class A>
__device__ void block_softmax_merge(A& m, A& s, A* shared_m, A* shared_s) {
  for (int offset = 16; offset > 0; offset /= 2)
    softmax_merge(m, s, __shfl_xor_sync(0xffffffffu, m, offset), __shfl_xor_sync(0xffffffffu, s, offset));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  __syncthreads();
  if (lane == 0) {
    shared_m[warp] = m;
    shared_s[warp] = s;
  }
  __syncthreads();
  m = lane < warps ? shared_m[lane] : -A(INFINITY);
  s = lane < warps ? shared_s[lane] : A(0);
  for (int offset = 16; offset > 0; offset /= 2)
    softmax_merge(m, s, __shfl_xor_sync(0xffffffffu, m, offset), __shfl_xor_sync(0xffffffffu, s, offset));
}

template <class T, int W>
__global__ void cross_entropy_kernel(accum_t<T>* loss, T* dlogits, const T* logits, const std::int32_t* targets,
                                     std::int64_t rows, std::int64_t vocab, accum_t<T> grad_scale) {
  using A = accum_t<T>;
  __shared__ A shared_m[32], shared_s[32];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* z = logits + r * vocab;
    T* dz = dlogits ? dlogits + r * vocab : nullptr;
    const std::int32_t y = targets[r];
    if (y < 0) {  // ignored row: the same branch for the whole block
      if (threadIdx.x == 0) loss[r] = 0;
      if (dz)
        block_row_loop<W>(vocab, [&](std::int64_t i, auto width) {
          constexpr int n = decltype(width)::value;
          pack<T, n> zero;
          for (int j = 0; j < n; ++j) zero.v[j] = T(A(0));
          store<n>(dz + i, zero);
        });
      continue;
    }
    A m = -A(INFINITY), s = 0;
    block_row_loop<W>(vocab, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      const auto zv = load<n>(z + i);
      for (int j = 0; j < n; ++j) softmax_merge(m, s, A(zv.v[j]), A(1));
    });
    block_softmax_merge(m, s, shared_m, shared_s);
    const A lse = m + log(s);
    if (threadIdx.x == 0) loss[r] = lse - A(z[y]);
    if (dz)
      block_row_loop<W>(vocab, [&](std::int64_t i, auto width) {
        constexpr int n = decltype(width)::value;
        const auto zv = load<n>(z + i);
        pack<T, n> g;
        for (int j = 0; j < n; ++j)
          g.v[j] = T(grad_scale * (exp(A(zv.v[j]) - lse) - (i + j == y ? A(1) : A(0))));
        store<n>(dz + i, g);
      });
  }
}

}  // namespace cuda_detail

// logits: (rows, vocab); targets: (rows) device array, a negative target ignores the row (loss 0,
// gradient 0), others are in [0, vocab). loss: (rows) = logsumexp(logits[r]) − logits[r, target].
// When dlogits is not null it receives grad_scale · (softmax(logits[r]) − onehot(target)) (=).
template <class T>
void cross_entropy(cuda& be, accum_t<T>* loss, T* dlogits, const T* logits, const std::int32_t* targets,
                   std::int64_t rows, std::int64_t vocab, double grad_scale) {
  using namespace cuda_detail;
  if (rows <= 0) return;
  require(vocab > 0, "cuda cross_entropy: vocab must be positive, got " + std::to_string(vocab));
  constexpr int V = vec_width<T>;
  const bool vec = rows_aligned(logits, vocab) && (!dlogits || rows_aligned(dlogits, vocab));
  const int threads = row_block_threads(vocab, vec ? V : 1, 1024);
  if (vec)
    cross_entropy_kernel<T, V><<<grid_for(rows), threads, 0, be.stream()>>>(loss, dlogits, logits, targets, rows, vocab,
                                                                             accum_t<T>(grad_scale));
  else
    cross_entropy_kernel<T, 1><<<grid_for(rows), threads, 0, be.stream()>>>(loss, dlogits, logits, targets, rows, vocab,
                                                                             accum_t<T>(grad_scale));
  DSX_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
}

}  // namespace dsx::backend
