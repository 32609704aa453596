// Token embedding lookup and its backward on the GPU, host's signatures (backend/host/embedding.hpp).
//
// The backward pass is deterministic and bit-identical to the host loop: the token positions are
// sorted by id with CUB's stable radix sort, then one block per distinct id walks that id's tokens in
// their original order and adds each row, rounding to T after every addition exactly as the host does.
// Rows of different ids never share an element, so there are no atomics.
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include <cstdint>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

template <class T, int W>
__global__ void embedding_forward_kernel(T* out, const T* table, const std::int32_t* ids, std::int64_t tokens,
                                         std::int64_t dim) {
  for (std::int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const T* src = table + std::int64_t(ids[t]) * dim;
    T* dst = out + t * dim;
    block_row_loop<W>(dim, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      store<n>(dst + i, load<n>(src + i));
    });
  }
}

template <class I>
__global__ void iota_kernel(I* v, std::int64_t n) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    v[i] = I(i);
}

// sorted_ids: (tokens) ids in ascending order; order: (tokens) the token position of each, ascending
// within equal ids. The blocks at the first position of each run of equal ids own that table row, one
// block per chunk of blockDim.x · W columns (grid.y), so a frequent id is spread over several SMs. The
// additions along a run stay sequential (that is the host's rounding order); their loads are issued
// `unroll` at a time so memory latency overlaps.
template <class T, int W>
__global__ void embedding_backward_kernel(T* dtable, const T* dout, const std::int32_t* sorted_ids,
                                          const std::int32_t* order, std::int64_t tokens, std::int64_t dim) {
  using A = accum_t<T>;
  constexpr int unroll = 8;
  // Each thread owns W columns; W > 1 only when dim is a multiple of W (16-byte rows).
  const std::int64_t col = (std::int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * W;
  if (col >= dim) return;
  for (std::int64_t p = blockIdx.x; p < tokens; p += gridDim.x) {
    const std::int32_t id = sorted_ids[p];
    if (p > 0 && sorted_ids[p - 1] == id) continue;
    // End of the run: the first position after p with a larger id (binary search, same for all threads).
    std::int64_t lo = p + 1, hi = tokens;
    while (lo < hi) {
      const std::int64_t mid = lo + (hi - lo) / 2;
      if (sorted_ids[mid] == id) lo = mid + 1; else hi = mid;
    }
    const std::int64_t end = lo;
    T* row = dtable + std::int64_t(id) * dim;
    auto acc = load<W>(row + col);
    std::int64_t q = p;
    for (; q + unroll <= end; q += unroll) {
      pack<T, W> d[unroll];
      for (int u = 0; u < unroll; ++u) d[u] = load<W>(dout + std::int64_t(order[q + u]) * dim + col);
      for (int u = 0; u < unroll; ++u)
        for (int j = 0; j < W; ++j) acc.v[j] = T(A(acc.v[j]) + A(d[u].v[j]));
    }
    for (; q < end; ++q) {
      const auto d = load<W>(dout + std::int64_t(order[q]) * dim + col);
      for (int j = 0; j < W; ++j) acc.v[j] = T(A(acc.v[j]) + A(d.v[j]));
    }
    store<W>(row + col, acc);
  }
}

}  // namespace cuda_detail

// out: (tokens, dim) = table[ids]; table: (vocab, dim); ids: (tokens) device array, in range.
template <class T>
void embedding_forward(cuda& be, T* out, const T* table, const std::int32_t* ids, std::int64_t tokens,
                       std::int64_t dim) {
  using namespace cuda_detail;
  if (tokens <= 0 || dim <= 0) return;
  constexpr int V = vec_width<T>;
  const bool vec = rows_aligned(out, dim) && rows_aligned(table, dim);
  const int threads = row_block_threads(dim, vec ? V : 1, 256);
  if (vec)
    embedding_forward_kernel<T, V><<<grid_for(tokens), threads, 0, be.stream()>>>(out, table, ids, tokens, dim);
  else
    embedding_forward_kernel<T, 1><<<grid_for(tokens), threads, 0, be.stream()>>>(out, table, ids, tokens, dim);
  DSX_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

// dtable[ids[t]] += dout[t] for every token t, in token order per row.
template <class T>
void embedding_backward(cuda& be, T* dtable, const T* dout, const std::int32_t* ids, std::int64_t tokens,
                        std::int64_t dim) {
  using namespace cuda_detail;
  if (tokens <= 0 || dim <= 0) return;
  require(tokens <= INT32_MAX, "cuda embedding_backward: " + std::to_string(tokens) +
                                   " tokens exceed the 2^31 − 1 that the sort's positions hold");
  const int n = int(tokens);
  std::size_t sort_bytes = 0;
  DSX_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, ids, static_cast<std::int32_t*>(nullptr),
                                                 static_cast<const std::int32_t*>(nullptr),
                                                 static_cast<std::int32_t*>(nullptr), n, 0, 32, be.stream()));
  const std::size_t list_bytes = (std::size_t(n) * sizeof(std::int32_t) + 255) / 256 * 256;
  auto* base = static_cast<unsigned char*>(be.scratch(3 * list_bytes + sort_bytes));
  auto* sorted_ids = reinterpret_cast<std::int32_t*>(base);
  auto* positions = reinterpret_cast<std::int32_t*>(base + list_bytes);
  auto* order = reinterpret_cast<std::int32_t*>(base + 2 * list_bytes);
  iota_kernel<<<grid_for(n, 256), 256, 0, be.stream()>>>(positions, n);
  DSX_CUDA_CHECK_LAUNCH("iota_kernel");
  DSX_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(base + 3 * list_bytes, sort_bytes, ids, sorted_ids, positions, order,
                                                 n, 0, 32, be.stream()));

  constexpr int V = vec_width<T>;
  const bool vec = rows_aligned(dtable, dim) && rows_aligned(dout, dim);  // implies dim % V == 0
  constexpr unsigned threads = 128;
  const int w = vec ? V : 1;
  const std::int64_t chunks = (dim + std::int64_t(threads) * w - 1) / (std::int64_t(threads) * w);
  require(chunks <= 65535, "cuda embedding_backward: dim = " + std::to_string(dim) + " exceeds the supported " +
                               std::to_string(65535 * threads * w));
  const dim3 grid(grid_for(tokens), unsigned(chunks));
  if (vec)
    embedding_backward_kernel<T, V><<<grid, threads, 0, be.stream()>>>(dtable, dout, sorted_ids, order, tokens, dim);
  else
    embedding_backward_kernel<T, 1><<<grid, threads, 0, be.stream()>>>(dtable, dout, sorted_ids, order, tokens, dim);
  DSX_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
}

}  // namespace dsx::backend
