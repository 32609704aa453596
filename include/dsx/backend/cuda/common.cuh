// Device helpers shared by the CUDA primitives: launch sizing, 16-byte vector access along rows, and
// deterministic block reductions (a fixed tree for a given block size, no atomics).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/numeric.hpp"

namespace dsx::backend::cuda_detail {

// W consecutive elements moved as one access: 16 bytes when W = 16 / sizeof(T).
template <class T, int W>
struct alignas(sizeof(T) * W) pack {
  T v[W];
};

template <class T>
inline constexpr int vec_width = 16 / int(sizeof(T));
static_assert(vec_width<float> == 4 && vec_width<double> == 2 && vec_width<bf16> == 8);

template <int W, class T>
__device__ __forceinline__ pack<T, W> load(const T* p) {
  return *reinterpret_cast<const pack<T, W>*>(p);
}
template <int W, class T>
__device__ __forceinline__ void store(T* p, const pack<T, W>& v) {
  *reinterpret_cast<pack<T, W>*>(p) = v;
}

// True when every row start base + r·stride (elements of T) is 16-byte aligned.
template <class T>
inline bool rows_aligned(const T* base, std::int64_t stride) {
  return reinterpret_cast<std::uintptr_t>(base) % 16 == 0 && (stride * std::int64_t(sizeof(T))) % 16 == 0;
}

// Calls f(i, std::integral_constant<int, w>) over [0, n) split among the block's threads: full packs of
// W elements first, then the remainder one element at a time, so any n is covered exactly once.
template <int W, class F>
__device__ __forceinline__ void block_row_loop(std::int64_t n, F&& f) {
  const std::int64_t full = n / W * W;
  for (std::int64_t i = std::int64_t(threadIdx.x) * W; i < full; i += std::int64_t(blockDim.x) * W)
    f(i, std::integral_constant<int, W>{});
  if constexpr (W > 1)
    for (std::int64_t i = full + threadIdx.x; i < n; i += blockDim.x) f(i, std::integral_constant<int, 1>{});
}

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block, returned to every thread. `shared` holds 32 values; callers may reuse it after.
template <class A>
__device__ A block_sum(A v, A* shared) {
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  __syncthreads();  // earlier readers of `shared` are done
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : A(0);
  return warp_sum(v);
}

// Threads for a block that walks rows of n elements W at a time: a multiple of 32 in [32, max_threads].
inline int row_block_threads(std::int64_t n, int w, int max_threads = 512) {
  const std::int64_t packs = (n + w - 1) / w;
  return int(std::clamp<std::int64_t>((packs + 31) / 32 * 32, 32, max_threads));
}

// Grid for grid-stride loops over `items` units of work: enough blocks to fill the device many times over,
// never beyond what a launch allows. Kernels loop, so any count is covered.
inline unsigned grid_for(std::int64_t items, std::int64_t per_block = 1) {
  const std::int64_t blocks = (items + per_block - 1) / per_block;
  return unsigned(std::clamp<std::int64_t>(blocks, 1, std::int64_t(1) << 20));
}

}  // namespace dsx::backend::cuda_detail
