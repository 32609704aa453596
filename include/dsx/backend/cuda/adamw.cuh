// AdamW on the GPU with host's signature and formulas (backend/host/adamw.hpp: the per-element update
// adamw_element is shared). One pass over the buffer: each thread reads W parameters, gradients and both
// moments with vector loads, updates them in registers and writes parameters and moments back, where
// W = 16 / sizeof of the wider of T and M (every pointer aligned to its vector), else one element at a
// time. Memory-bound: 2·sizeof(T) + 2·sizeof(M) bytes read and sizeof(T) + 2·sizeof(M) written per element.
// adamw_update_master (the f32 master copy of bf16 parameters) is the same kernel reading the master too
// and writing the master and the rounded parameters, W = 4 (16 bytes of f32).
// Untrained ranges (decay_range::trained false) are left as they are, as on the host.
//
// The decay ranges are in device memory, like every array a CUDA primitive takes: the trainer builds the
// list once, checks it with check_decay_ranges and uploads it. A vector's range is found by binary search
// over the range starts (the ranges are in order), and the few vectors that straddle a range end step
// through it element by element. The search never leaves [0, range_count), so ranges that do not tile
// [0, n) give wrong decay flags, never a fault.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/backend/host/adamw.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

// Index of the last range whose begin ≤ i; ranges[0 .. count) tile [0, n) in order, count ≥ 1.
__device__ __forceinline__ std::int64_t find_range(const decay_range* ranges, std::int64_t count, std::int64_t i) {
  std::int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const std::int64_t mid = (lo + hi + 1) / 2;
    if (ranges[mid].begin <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Element i's update, on the f32 master copy w (Master: the parameter becomes its rounding) or on the
// parameter itself; untrained elements are left as they are.
template <bool Master, class A, class T, class M>
__device__ __forceinline__ void update_element(const adamw_constants<A>& c, const decay_range& range, float& w, T& p,
                                               T g, M& m, M& v) {
  if (!range.trained) return;
  if constexpr (Master) {
    adamw_element(c, range.decay, w, g, m, v);
    p = convert<T>(w);
  } else {
    adamw_element(c, range.decay, p, g, m, v);
  }
}

// master is read and written only with Master.
template <class T, class M, int W, bool Master>
__global__ void adamw_kernel(float* master, T* params, const T* grads, M* m, M* v, std::int64_t n,
                             const adamw_constants<std::conditional_t<Master, float, accum_t<T>>> c,
                             const decay_range* ranges, std::int64_t range_count) {
  const std::int64_t first = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t threads = std::int64_t(gridDim.x) * blockDim.x;
  const std::int64_t full = n / W * W;
  for (std::int64_t i = first * W; i < full; i += threads * W) {
    std::int64_t r = find_range(ranges, range_count, i);
    pack<float, W> w{};
    if constexpr (Master) w = load<W>(master + i);
    auto p = load<W>(params + i);
    const auto g = load<W>(grads + i);
    auto mv = load<W>(m + i), vv = load<W>(v + i);
    for (int j = 0; j < W; ++j) {
      while (i + j >= ranges[r].end && r + 1 < range_count) ++r;  // a range ends inside this vector
      update_element<Master>(c, ranges[r], w.v[j], p.v[j], g.v[j], mv.v[j], vv.v[j]);
    }
    if constexpr (Master) store<W>(master + i, w);
    store<W>(params + i, p);
    store<W>(m + i, mv);
    store<W>(v + i, vv);
  }
  for (std::int64_t i = full + first; i < n; i += threads) {
    float w = Master ? master[i] : 0.0f;
    update_element<Master>(c, ranges[find_range(ranges, range_count, i)], w, params[i], grads[i], m[i], v[i]);
    if constexpr (Master) master[i] = w;
  }
}

// Checks and launches one update (master: null without a master copy).
template <bool Master, class T, class M>
void launch_adamw(cuda& be, float* master, T* params, const T* grads, M* m, M* v, std::int64_t n,
                  const adamw_params& p, const decay_range* ranges, std::int64_t range_count) {
  check_adamw_types<T, M>();
  static_assert(!std::is_same_v<M, double>, "adamw: moments must be float or bf16 on the GPU");
  check_adamw(p);
  if (n < 0) throw error("adamw: " + std::to_string(n) + " elements, expected at least 0");
  if (n == 0) return;
  if (range_count < 1 || !ranges)
    throw error("adamw: no decay ranges for " + std::to_string(n) + " elements (range_count " +
                std::to_string(range_count) + ")");
  using A = std::conditional_t<Master, float, accum_t<T>>;
  const adamw_constants<A> c = adamw_constants_of<A>(p);
  // 16-byte accesses of the widest array: f32 master and moments, or T and M.
  constexpr std::size_t widest = std::max({Master ? sizeof(float) : std::size_t(1), sizeof(T), sizeof(M)});
  constexpr int V = int(16 / widest);
  static_assert(V == 2 || V == 4 || V == 8);
  const auto aligned = [](const void* ptr, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(ptr) % bytes == 0; };
  const bool vec = (!Master || aligned(master, V * sizeof(float))) && aligned(params, V * sizeof(T)) &&
                   aligned(grads, V * sizeof(T)) && aligned(m, V * sizeof(M)) && aligned(v, V * sizeof(M));
  constexpr unsigned threads = 256;
  if (vec)
    adamw_kernel<T, M, V, Master><<<grid_for(n, threads * V), threads, 0, be.stream()>>>(master, params, grads, m, v, n,
                                                                                         c, ranges, range_count);
  else
    adamw_kernel<T, M, 1, Master><<<grid_for(n, threads), threads, 0, be.stream()>>>(master, params, grads, m, v, n, c,
                                                                                     ranges, range_count);
  DSX_CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace cuda_detail

// One AdamW step over params, grads, m, v (n elements each, device memory); ranges (range_count, device
// memory): the decay mask, tiling [0, n) in order (check_decay_ranges on the host copy before uploading).
// The hyperparameters are checked here, as on the host.
template <class T, class M>
void adamw_update(cuda& be, T* params, const T* grads, M* m, M* v, std::int64_t n, const adamw_params& p,
                  const decay_range* ranges, std::int64_t range_count) {
  cuda_detail::launch_adamw<false>(be, nullptr, params, grads, m, v, n, p, ranges, range_count);
}

// One AdamW step on the f32 master copy of bf16 params (device memory, n elements each, like grads, m
// and v); host's adamw_update_master, same contract.
template <class T, class M>
void adamw_update_master(cuda& be, float* master, T* params, const T* grads, M* m, M* v, std::int64_t n,
                         const adamw_params& p, const decay_range* ranges, std::int64_t range_count) {
  static_assert(std::is_same_v<T, bf16>, "adamw: the GPU keeps a master copy of bf16 parameters only");
  cuda_detail::launch_adamw<true>(be, master, params, grads, m, v, n, p, ranges, range_count);
}

}  // namespace dsx::backend
