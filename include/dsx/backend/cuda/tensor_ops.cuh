// Whole-buffer operations on the GPU, host's signatures (backend/host/tensor_ops.hpp): residual adds,
// strided row copies, conversions and the sum of squares, 16-byte accesses where the buffers allow.
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

template <class To, class From>
__global__ void convert_copy_kernel(To* y, const From* x, std::int64_t n) {
  const std::int64_t first = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t step = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = first; i < n; i += step) y[i] = convert<To>(x[i]);
}

// Blocks of the first pass of sum_squares: a fixed number, so the reduction tree, and with it the
// rounding of the result, does not depend on the device.
inline constexpr unsigned sum_squares_blocks = 1024;

// Pass 1: block b adds x[i]² in f64 over a grid-stride loop and writes its sum to partial[b].
template <class T>
__global__ void sum_squares_partial_kernel(const T* x, std::int64_t n, double* partial) {
  __shared__ double shared[32];
  double s = 0;
  const std::int64_t step = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const double v = convert<double>(x[i]);
    s += v * v;
  }
  s = block_sum(s, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2: one block adds the partial sums. (A template, as every kernel of a header: a plain __global__
// function would be defined in each translation unit that includes it.)
template <class A>
__global__ void sum_partials_kernel(const A* partial, unsigned count, A* out) {
  __shared__ A shared[32];
  A s = 0;
  for (unsigned i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = block_sum(s, shared);
  if (threadIdx.x == 0) *out = s;
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

// y = x converted to To (rounded to nearest even when To is narrower), n elements. Used once per run
// (the optimizer's master copy), so one element per thread.
template <class To, class From>
void convert_copy(cuda& be, To* y, const From* x, std::int64_t n) {
  using namespace cuda_detail;
  if (n <= 0) return;
  constexpr unsigned threads = 256;
  convert_copy_kernel<To, From><<<grid_for(n, threads), threads, 0, be.stream()>>>(y, x, n);
  DSX_CUDA_CHECK_LAUNCH("convert_copy_kernel");
}

// Σ x², accumulated in f64 (host's contract: NaN or Inf anywhere makes the sum non-finite). Waits for
// the stream: the result is a host value. Deterministic for a given n.
template <class T>
double sum_squares(cuda& be, const T* x, std::int64_t n) {
  using namespace cuda_detail;
  if (n <= 0) return 0.0;
  constexpr unsigned threads = 256;
  double* partial = static_cast<double*>(be.scratch((sum_squares_blocks + 1) * sizeof(double)));
  sum_squares_partial_kernel<T><<<sum_squares_blocks, threads, 0, be.stream()>>>(x, n, partial);
  DSX_CUDA_CHECK_LAUNCH("sum_squares_partial_kernel");
  sum_partials_kernel<double><<<1, threads, 0, be.stream()>>>(partial, sum_squares_blocks, partial + sum_squares_blocks);
  DSX_CUDA_CHECK_LAUNCH("sum_partials_kernel");
  double s = 0;
  be.download(&s, partial + sum_squares_blocks, sizeof(double));
  return s;
}

}  // namespace dsx::backend
