// Whole-buffer operations on the GPU, host's signatures (backend/host/tensor_ops.hpp): residual adds
// and strided row copies, 16-byte accesses where the buffers allow.
#pragma once

#include <cstdint>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

template <class T, int W>
__global__ void add_into_kernel(T* y, const T* x, std::int64_t n) {
  using A = accum_t<T>;
  const std::int64_t full = n / W * W;
  const std::int64_t first = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t step = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = first * W; i < full; i += step * W) {
    auto yv = load<W>(y + i);
    const auto xv = load<W>(x + i);
    for (int j = 0; j < W; ++j) yv.v[j] = T(A(yv.v[j]) + A(xv.v[j]));
    store<W>(y + i, yv);
  }
  for (std::int64_t i = full + first; i < n; i += step) y[i] = T(A(y[i]) + A(x[i]));
}

template <class T, int W>
__global__ void copy_rows_kernel(T* y, std::int64_t y_stride, const T* x, std::int64_t x_stride, std::int64_t rows,
                                 std::int64_t cols) {
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* src = x + r * x_stride;
    T* dst = y + r * y_stride;
    block_row_loop<W>(cols, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      store<n>(dst + i, load<n>(src + i));
    });
  }
}

}  // namespace cuda_detail

// y += x, n elements.
template <class T>
void add_into(cuda& be, T* y, const T* x, std::int64_t n) {
  using namespace cuda_detail;
  if (n <= 0) return;
  constexpr int V = vec_width<T>;
  constexpr unsigned threads = 256;
  if (rows_aligned(y, 0) && rows_aligned(x, 0))
    add_into_kernel<T, V><<<grid_for(n, threads * V), threads, 0, be.stream()>>>(y, x, n);
  else
    add_into_kernel<T, 1><<<grid_for(n, threads), threads, 0, be.stream()>>>(y, x, n);
  DSX_CUDA_CHECK_LAUNCH("add_into_kernel");
}

// y = x for a strided block of rows: (rows, cols) with row strides.
template <class T>
void copy_rows(cuda& be, T* y, std::int64_t y_stride, const T* x, std::int64_t x_stride, std::int64_t rows,
               std::int64_t cols) {
  using namespace cuda_detail;
  if (rows <= 0 || cols <= 0) return;
  constexpr int V = vec_width<T>;
  const bool vec = rows_aligned(y, y_stride) && rows_aligned(x, x_stride);
  const int threads = row_block_threads(cols, vec ? V : 1, 256);
  if (vec)
    copy_rows_kernel<T, V><<<grid_for(rows), threads, 0, be.stream()>>>(y, y_stride, x, x_stride, rows, cols);
  else
    copy_rows_kernel<T, 1><<<grid_for(rows), threads, 0, be.stream()>>>(y, y_stride, x, x_stride, rows, cols);
  DSX_CUDA_CHECK_LAUNCH("copy_rows_kernel");
}

}  // namespace dsx::backend
