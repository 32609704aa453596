// RMSNorm on the GPU, host's signatures and math (backend/host/rmsnorm.hpp): y = x · rstd · w with
// rstd = 1 / sqrt(mean(x²) + eps), accumulated in accum_t<T>. One block per row; rows are read with
// 16-byte accesses when every row start is 16-byte aligned.
//
// Backward is deterministic: dx per row with a fixed block reduction, and dw in two passes: each block
// of a fixed partition of the rows writes its column sums to scratch, then one thread per column adds
// those partial sums in order. The partition depends only on `rows`, so the result is the same on
// every run and every GPU. No floating-point atomics.
#pragma once

#include <cstdint>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

template <class T, int W>
__global__ void rmsnorm_forward_kernel(T* y, std::int64_t y_stride, accum_t<T>* rstd, const T* x,
                                       std::int64_t x_stride, const T* w, std::int64_t rows, std::int64_t dim,
                                       accum_t<T> eps) {
  using A = accum_t<T>;
  __shared__ A shared[32];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * x_stride;
    T* yr = y + r * y_stride;
    A ss = 0;
    block_row_loop<W>(dim, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      const auto xv = load<n>(xr + i);
      for (int j = 0; j < n; ++j) ss += A(xv.v[j]) * A(xv.v[j]);
    });
    const A s = A(1) / sqrt(block_sum(ss, shared) / A(dim) + eps);
    if (threadIdx.x == 0) rstd[r] = s;
    block_row_loop<W>(dim, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      const auto xv = load<n>(xr + i);
      const auto wv = load<n>(w + i);
      pack<T, n> yv;
      for (int j = 0; j < n; ++j) yv.v[j] = T(A(xv.v[j]) * s * A(wv.v[j]));
      store<n>(yr + i, yv);
    });
  }
}

// dx = rstd · dy · w − x · rstd³ · Σ(dy · w · x) / dim, written or added.
template <class T, int W>
__global__ void rmsnorm_backward_dx_kernel(T* dx, std::int64_t dx_stride, const T* dy, std::int64_t dy_stride,
                                           const T* x, std::int64_t x_stride, const T* w, const accum_t<T>* rstd,
                                           std::int64_t rows, std::int64_t dim, bool accumulate) {
  using A = accum_t<T>;
  __shared__ A shared[32];
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * x_stride;
    const T* dyr = dy + r * dy_stride;
    T* dxr = dx + r * dx_stride;
    A dot = 0;
    block_row_loop<W>(dim, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      const auto xv = load<n>(xr + i), dyv = load<n>(dyr + i), wv = load<n>(w + i);
      for (int j = 0; j < n; ++j) dot += A(dyv.v[j]) * A(wv.v[j]) * A(xv.v[j]);
    });
    const A s = rstd[r];
    const A c = block_sum(dot, shared) * s * s * s / A(dim);
    block_row_loop<W>(dim, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      const auto xv = load<n>(xr + i), dyv = load<n>(dyr + i), wv = load<n>(w + i);
      pack<T, n> out;
      if (accumulate) out = load<n>(dxr + i);
      for (int j = 0; j < n; ++j) {
        const A v = s * A(dyv.v[j]) * A(wv.v[j]) - A(xv.v[j]) * c;
        out.v[j] = accumulate ? T(A(out.v[j]) + v) : T(v);
      }
      store<n>(dxr + i, out);
    });
  }
}

// partial[b, i] = Σ_{r in row block b} dy[r, i] · x[r, i] · rstd[r]; grid (column tiles, row blocks),
// each thread owns W adjacent columns.
template <class T, int W>
__global__ void rmsnorm_backward_dw_partial_kernel(accum_t<T>* partial, const T* dy, std::int64_t dy_stride,
                                                   const T* x, std::int64_t x_stride, const accum_t<T>* rstd,
                                                   std::int64_t rows, std::int64_t dim, std::int64_t rows_per_block) {
  using A = accum_t<T>;
  const std::int64_t col = (std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * W;
  if (col >= dim) return;
  const std::int64_t r0 = std::int64_t(blockIdx.y) * rows_per_block;
  const std::int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  A acc[W] = {};
  if (col + W <= dim) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const auto dyv = load<W>(dy + r * dy_stride + col), xv = load<W>(x + r * x_stride + col);
      const A s = rstd[r];
      for (int j = 0; j < W; ++j) acc[j] += A(dyv.v[j]) * A(xv.v[j]) * s;
    }
  } else {
    for (std::int64_t r = r0; r < r1; ++r)
      for (int j = 0; col + j < dim; ++j) acc[j] += A(dy[r * dy_stride + col + j]) * A(x[r * x_stride + col + j]) * rstd[r];
  }
  A* out = partial + std::int64_t(blockIdx.y) * dim + col;
  for (int j = 0; j < W && col + j < dim; ++j) out[j] = acc[j];
}

// dw[i] += Σ_b partial[b, i], b in order.
template <class T>
__global__ void rmsnorm_backward_dw_reduce_kernel(T* dw, const accum_t<T>* partial, std::int64_t row_blocks,
                                                  std::int64_t dim) {
  using A = accum_t<T>;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < dim;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    A acc = 0;
    for (std::int64_t b = 0; b < row_blocks; ++b) acc += partial[b * dim + i];
    dw[i] = T(A(dw[i]) + acc);
  }
}

// Row blocks for the dw partial sums: at most 256 (so the scratch holds at most 256 · dim values) and
// at least 32 rows each. A function of `rows` alone, which keeps dw reproducible across GPUs.
inline std::int64_t rmsnorm_rows_per_block(std::int64_t rows) {
  const std::int64_t blocks = std::min<std::int64_t>(256, (rows + 31) / 32);
  return (rows + blocks - 1) / blocks;
}

}  // namespace cuda_detail

// x, y: (rows, dim) with row strides x_stride, y_stride; w: (dim); rstd: (rows).
template <class T>
void rmsnorm_forward(cuda& be, T* y, std::int64_t y_stride, accum_t<T>* rstd, const T* x, std::int64_t x_stride,
                     const T* w, std::int64_t rows, std::int64_t dim, double eps) {
  using namespace cuda_detail;
  if (rows <= 0 || dim <= 0) return;
  constexpr int V = vec_width<T>;
  const bool vec = dim % V == 0 && rows_aligned(x, x_stride) && rows_aligned(y, y_stride) && rows_aligned(w, 0);
  const int threads = row_block_threads(dim, vec ? V : 1);
  if (vec)
    rmsnorm_forward_kernel<T, V><<<grid_for(rows), threads, 0, be.stream()>>>(y, y_stride, rstd, x, x_stride, w, rows,
                                                                               dim, accum_t<T>(eps));
  else
    rmsnorm_forward_kernel<T, 1><<<grid_for(rows), threads, 0, be.stream()>>>(y, y_stride, rstd, x, x_stride, w, rows,
                                                                               dim, accum_t<T>(eps));
  DSX_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

// dx (=, or += when accumulate) and dw (+=) from dy; see backend/host/rmsnorm.hpp.
template <class T>
void rmsnorm_backward(cuda& be, T* dx, std::int64_t dx_stride, T* dw, const T* dy, std::int64_t dy_stride, const T* x,
                      std::int64_t x_stride, const T* w, const accum_t<T>* rstd, std::int64_t rows, std::int64_t dim,
                      bool accumulate) {
  using namespace cuda_detail;
  using A = accum_t<T>;
  if (rows <= 0 || dim <= 0) return;
  constexpr int V = vec_width<T>;
  const bool vec = dim % V == 0 && rows_aligned(x, x_stride) && rows_aligned(dy, dy_stride) &&
                   rows_aligned(dx, dx_stride) && rows_aligned(w, 0);
  const int threads = row_block_threads(dim, vec ? V : 1);
  if (vec)
    rmsnorm_backward_dx_kernel<T, V><<<grid_for(rows), threads, 0, be.stream()>>>(
        dx, dx_stride, dy, dy_stride, x, x_stride, w, rstd, rows, dim, accumulate);
  else
    rmsnorm_backward_dx_kernel<T, 1><<<grid_for(rows), threads, 0, be.stream()>>>(
        dx, dx_stride, dy, dy_stride, x, x_stride, w, rstd, rows, dim, accumulate);
  DSX_CUDA_CHECK_LAUNCH("rmsnorm_backward_dx_kernel");

  const std::int64_t rows_per_block = rmsnorm_rows_per_block(rows);
  const std::int64_t row_blocks = (rows + rows_per_block - 1) / rows_per_block;
  auto* partial = static_cast<A*>(be.scratch(std::size_t(row_blocks * dim) * sizeof(A)));
  // Column vectors need every row of x and dy aligned, not dim % V == 0: a short last tile goes scalar.
  const bool col_vec = rows_aligned(x, x_stride) && rows_aligned(dy, dy_stride);
  constexpr int column_threads = 128;
  const int w_cols = col_vec ? V : 1;
  const dim3 grid(unsigned((dim + std::int64_t(column_threads) * w_cols - 1) / (std::int64_t(column_threads) * w_cols)),
                  unsigned(row_blocks));
  if (col_vec)
    rmsnorm_backward_dw_partial_kernel<T, V><<<grid, column_threads, 0, be.stream()>>>(
        partial, dy, dy_stride, x, x_stride, rstd, rows, dim, rows_per_block);
  else
    rmsnorm_backward_dw_partial_kernel<T, 1><<<grid, column_threads, 0, be.stream()>>>(
        partial, dy, dy_stride, x, x_stride, rstd, rows, dim, rows_per_block);
  DSX_CUDA_CHECK_LAUNCH("rmsnorm_backward_dw_partial_kernel");
  rmsnorm_backward_dw_reduce_kernel<T><<<grid_for(dim, 256), 256, 0, be.stream()>>>(dw, partial, row_blocks, dim);
  DSX_CUDA_CHECK_LAUNCH("rmsnorm_backward_dw_reduce_kernel");
}

}  // namespace dsx::backend
