// SwiGLU on a fused gate/up activation, host's signatures (backend/host/swiglu.hpp); the formulas are
// the shared ones of core/activation.hpp. Element-wise over (rows, inter), W elements per thread step:
// 16-byte accesses when inter is a multiple of the vector width and the buffers are aligned (then no
// vector crosses a row or the gate/up boundary).
#pragma once

#include <cstdint>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/activation.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

template <class T, int W>
__global__ void swiglu_forward_kernel(T* h, const T* gu, std::int64_t rows, std::int64_t inter) {
  using A = accum_t<T>;
  const std::int64_t total = rows * inter;
  for (std::int64_t e = (std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * W; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x * W) {
    const std::int64_t r = e / inter, i = e % inter;
    const auto g = load<W>(gu + r * 2 * inter + i), u = load<W>(gu + r * 2 * inter + inter + i);
    pack<T, W> out;
    for (int j = 0; j < W; ++j) out.v[j] = T(silu(A(g.v[j])) * A(u.v[j]));
    store<W>(h + e, out);
  }
}

template <class T, int W>
__global__ void swiglu_backward_kernel(T* dgu, const T* dh, const T* gu, std::int64_t rows, std::int64_t inter) {
  using A = accum_t<T>;
  const std::int64_t total = rows * inter;
  for (std::int64_t e = (std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * W; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x * W) {
    const std::int64_t r = e / inter, i = e % inter;
    const std::int64_t gi = r * 2 * inter + i;
    const auto g = load<W>(gu + gi), u = load<W>(gu + gi + inter), d = load<W>(dh + e);
    pack<T, W> dg, du;
    for (int j = 0; j < W; ++j) {
      const A gv = A(g.v[j]), dv = A(d.v[j]);
      dg.v[j] = T(dv * A(u.v[j]) * silu_grad(gv));
      du.v[j] = T(dv * silu(gv));
    }
    store<W>(dgu + gi, dg);
    store<W>(dgu + gi + inter, du);
  }
}

}  // namespace cuda_detail

// gu: (rows, 2·inter) = [g | u] per row; h: (rows, inter) = silu(g) · u.
template <class T>
void swiglu_forward(cuda& be, T* h, const T* gu, std::int64_t rows, std::int64_t inter) {
  using namespace cuda_detail;
  if (rows <= 0 || inter <= 0) return;
  constexpr int V = vec_width<T>;
  constexpr unsigned threads = 256;
  if (inter % V == 0 && rows_aligned(h, 0) && rows_aligned(gu, 0))
    swiglu_forward_kernel<T, V><<<grid_for(rows * inter, threads * V), threads, 0, be.stream()>>>(h, gu, rows, inter);
  else
    swiglu_forward_kernel<T, 1><<<grid_for(rows * inter, threads), threads, 0, be.stream()>>>(h, gu, rows, inter);
  DSX_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

// dgu (=): [dg | du] with dg = dh · u · silu'(g), du = dh · silu(g).
template <class T>
void swiglu_backward(cuda& be, T* dgu, const T* dh, const T* gu, std::int64_t rows, std::int64_t inter) {
  using namespace cuda_detail;
  if (rows <= 0 || inter <= 0) return;
  constexpr int V = vec_width<T>;
  constexpr unsigned threads = 256;
  if (inter % V == 0 && rows_aligned(dgu, 0) && rows_aligned(dh, 0) && rows_aligned(gu, 0))
    swiglu_backward_kernel<T, V><<<grid_for(rows * inter, threads * V), threads, 0, be.stream()>>>(dgu, dh, gu, rows,
                                                                                                   inter);
  else
    swiglu_backward_kernel<T, 1><<<grid_for(rows * inter, threads), threads, 0, be.stream()>>>(dgu, dh, gu, rows,
                                                                                               inter);
  DSX_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace dsx::backend
