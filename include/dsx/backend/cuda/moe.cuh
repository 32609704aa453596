// The mixture-of-experts primitives on the GPU, with host's signatures and semantics
// (backend/host/moe.hpp: vocabulary, shapes, = / += contracts): routing, sort by expert, dispatch,
// grouped GEMMs, combine, their backwards, and load balancing (balance loss, expert loads, bias update).
// Every kernel is deterministic: the routing and balancing math is the per-token code of
// layers/router.hpp, one thread per token; the sort is CUB's stable radix sort; gathers, sums and dot
// products run in a fixed order (block sums in a fixed tree) with no floating-point atomics.
//
// Errors found on the device. The host primitives throw at once; here a kernel cannot, and a stream
// synchronisation per primitive would stall the pipeline, so the two device-side checks travel with the
// data to the first place where the host reads device memory anyway:
//   - moe_route writes expert id −1 (moe_unrouted) for every k of a token whose selection scores are not
//     finite (the host throws "non-finite router score");
//   - moe_sort_by_expert checks every expert id (the host throws on one outside [0, E)); it encodes the
//     first bad assignment a and its id in the offsets: offsets[0] = −1 − a, offsets[1] = the id;
//   - gemm_grouped and gemm_grouped_wgrad copy the offsets to the host (they need them to issue one GEMM
//     per expert) and throw dsx::error naming the assignment and the id, before any GEMM is enqueued.
// In the MoE layer (layers/moe.hpp) the first grouped GEMM follows route → sort → dispatch, so a forward
// with a non-finite router score throws there, as the host backend's does (from moe_route). Arguments
// checked on the host (parameters, a missing bias, sizes) throw at once, as on the host backend.
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/backend/cuda/gemm.cuh"
#include "dsx/backend/host/moe.hpp"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"
#include "dsx/layers/router.hpp"

namespace dsx::backend {

namespace cuda_detail {

// The expert id moe_route gives the assignments of a token whose router scores are not finite.
inline constexpr std::int32_t moe_unrouted = -1;
static_assert(moe_unrouted < 0, "the marker must lie outside every expert range [0, E)");

// "No bad assignment" in the sort's check word (its atomicMin keeps the first bad assignment).
inline constexpr std::uint32_t moe_all_valid = 0xffffffffu;

// One thread per token: the host loop body of moe_route.
template <class T>
__global__ void moe_route_kernel(const route_params p, accum_t<T>* scores, std::int32_t* indices,
                                 accum_t<T>* weights, const T* logits, const T* bias, std::int64_t tokens) {
  using A = accum_t<T>;
  for (std::int64_t t = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += std::int64_t(gridDim.x) * blockDim.x) {
    A* s = scores + t * p.experts;
    router_scores(p, s, logits + t * p.experts);
    bool finite = true;
    for (int e = 0; e < p.experts; ++e) finite = finite && isfinite(router_selection_score(p, s, bias, e));
    if (!finite) {
      for (int k = 0; k < p.top_k; ++k) indices[t * p.top_k + k] = moe_unrouted;
      continue;
    }
    router_select(p, indices + t * p.top_k, weights + t * p.top_k, s, bias);
  }
}

// One thread per token. A token with an expert id outside [0, E) (moe_unrouted) gets NaN logit gradients
// instead of reading scores out of bounds; its forward has already failed in the grouped GEMM.
template <class T>
__global__ void moe_route_backward_kernel(const route_params p, T* dlogits, const accum_t<T>* dweights,
                                          const accum_t<T>* scores, const std::int32_t* indices, std::int64_t tokens) {
  using A = accum_t<T>;
  for (std::int64_t t = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int32_t* idx = indices + t * p.top_k;
    bool valid = true;
    for (int k = 0; k < p.top_k; ++k) valid = valid && idx[k] >= 0 && idx[k] < p.experts;
    if (!valid) {
      for (int e = 0; e < p.experts; ++e) dlogits[t * p.experts + e] = T(A(::nan("")));
      continue;
    }
    router_backward(p, dlogits + t * p.experts, dweights + t * p.top_k, scores + t * p.experts, idx);
  }
}

// values[a] = a (the payload the sort permutes), and the first assignment whose id is outside [0, E)
// into *first_bad (which starts as moe_all_valid).
// Kernels that are not templates are `static`: this header is included by many translation units.
static __global__ void moe_sort_prepare_kernel(std::int32_t* values, std::uint32_t* first_bad, const std::int32_t* indices,
                                        std::int64_t assignments, int experts) {
  for (std::int64_t a = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; a < assignments;
       a += std::int64_t(gridDim.x) * blockDim.x) {
    values[a] = std::int32_t(a);
    if (indices[a] < 0 || indices[a] >= experts) atomicMin(first_bad, std::uint32_t(a));
  }
}

// From the sorted ids: inv_perm[perm[j]] = j, and offsets[e] = the first row whose id is ≥ e. Position
// j ∈ [0, n] writes offsets[e] for ids[j − 1] < e ≤ ids[j] (ids[−1] = −1, ids[n] = E, ids clamped to E),
// so every entry is written exactly once when the ids are sorted, with no histogram atomics and no
// scan. With a bad id the order is by its low bits only, and the offsets carry the error instead
// (offsets[0] = −1 − a, offsets[1] = indices[a]); every entry is still written, none out of bounds.
static __global__ void moe_sort_finish_kernel(std::int32_t* inv_perm, std::int32_t* offsets, const std::uint32_t* sorted_ids,
                                       const std::int32_t* perm, const std::int32_t* indices,
                                       const std::uint32_t* first_bad, std::int64_t n, int experts) {
  const std::uint32_t bad = *first_bad;
  const auto clamped = [&](std::int64_t j) -> std::int64_t {  // ids[j] with ids[−1] = −1, ids[n] = E
    if (j < 0) return -1;
    if (j == n || sorted_ids[j] >= std::uint32_t(experts)) return experts;
    return sorted_ids[j];
  };
  for (std::int64_t j = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j <= n;
       j += std::int64_t(gridDim.x) * blockDim.x) {
    if (j < n) inv_perm[perm[j]] = std::int32_t(j);
    const std::int64_t lo = clamped(j - 1), hi = clamped(j);
    for (std::int64_t e = lo + 1; e <= hi; ++e) {
      std::int32_t v = std::int32_t(j);
      if (bad != moe_all_valid && e == 0) v = -1 - std::int32_t(bad);
      if (bad != moe_all_valid && e == 1) v = indices[bad];
      offsets[e] = v;
    }
  }
}

// xs[j] = x[perm[j] / top_k], one block per row.
template <class T, int W>
__global__ void moe_dispatch_kernel(T* xs, const T* x, const std::int32_t* perm, std::int64_t assignments, int top_k,
                                    std::int64_t hidden) {
  for (std::int64_t j = blockIdx.x; j < assignments; j += gridDim.x) {
    const T* src = x + std::int64_t(perm[j]) / top_k * hidden;
    T* dst = xs + j * hidden;
    block_row_loop<W>(hidden, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      store<n>(dst + i, load<n>(src + i));
    });
  }
}

// out[t] (=, or += when accumulate) = Σ_k w_k · rows[inv_perm[t · top_k + k]], k in order, in accum_t<T>;
// w_k = 1 when weights is null (the dispatch backward), else weights[t · top_k + k] (the combine).
template <class T, int W>
__global__ void moe_gather_sum_kernel(T* out, const T* rows, const accum_t<T>* weights, const std::int32_t* inv_perm,
                                      std::int64_t tokens, int top_k, std::int64_t hidden, bool accumulate) {
  using A = accum_t<T>;
  for (std::int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    T* dst = out + t * hidden;
    const std::int32_t* where = inv_perm + t * top_k;
    block_row_loop<W>(hidden, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      A sum[n];
      if (accumulate) {
        const auto old = load<n>(dst + i);
        for (int c = 0; c < n; ++c) sum[c] = A(old.v[c]);
      } else {
        for (int c = 0; c < n; ++c) sum[c] = A(0);
      }
      for (int k = 0; k < top_k; ++k) {
        const auto r = load<n>(rows + std::int64_t(where[k]) * hidden + i);
        if (weights) {
          const A w = weights[t * top_k + k];
          for (int c = 0; c < n; ++c) sum[c] += w * A(r.v[c]);
        } else {
          for (int c = 0; c < n; ++c) sum[c] += A(r.v[c]);
        }
      }
      pack<T, n> result;
      for (int c = 0; c < n; ++c) result.v[c] = T(sum[c]);
      store<n>(dst + i, result);
    });
  }
}

// One block per assignment a = t · top_k + k in row j = inv_perm[a]: deo[j] = w[a] · dy[t],
// dweights[a] = dy[t] · eo[j] (block_sum: a fixed tree for the block size).
template <class T, int W>
__global__ void moe_combine_backward_kernel(T* deo, accum_t<T>* dweights, const T* dy, const T* eo,
                                            const accum_t<T>* weights, const std::int32_t* inv_perm,
                                            std::int64_t assignments, int top_k, std::int64_t hidden) {
  using A = accum_t<T>;
  __shared__ A partial[32];
  for (std::int64_t a = blockIdx.x; a < assignments; a += gridDim.x) {
    const std::int64_t row = inv_perm[a];
    const T* g = dy + a / top_k * hidden;
    const T* e = eo + row * hidden;
    T* d = deo + row * hidden;
    const A w = weights[a];
    A dot = 0;
    block_row_loop<W>(hidden, [&](std::int64_t i, auto width) {
      constexpr int n = decltype(width)::value;
      const auto gv = load<n>(g + i), ev = load<n>(e + i);
      pack<T, n> out;
      for (int c = 0; c < n; ++c) {
        out.v[c] = T(w * A(gv.v[c]));
        dot += A(gv.v[c]) * A(ev.v[c]);
      }
      store<n>(d + i, out);
    });
    dot = block_sum(dot, partial);
    if (threadIdx.x == 0) dweights[a] = dot;
  }
}

// One block per sequence b: the expert counts of its assignments (integer shared-memory atomics: the
// counts do not depend on their order), coeff (E) of the sequence, then the sum of the tokens' losses by
// a block_sum (a fixed tree). Ids outside [0, E) are not counted: the sort reports them.
template <class A>
__global__ void moe_balance_loss_kernel(const route_params p, A* coeff, A* losses, const A* scores,
                                        const std::int32_t* indices, std::int64_t batch, std::int64_t seq,
                                        double alpha) {
  extern __shared__ unsigned counts[];  // (E)
  __shared__ A partial[32];
  for (std::int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x) counts[e] = 0;
    __syncthreads();
    const std::int64_t end = (b + 1) * seq * p.top_k;
    for (std::int64_t a = b * seq * p.top_k + threadIdx.x; a < end; a += blockDim.x) {
      const std::int32_t id = indices[a];
      if (id >= 0 && id < p.experts) atomicAdd(&counts[id], 1u);
    }
    __syncthreads();
    A* c = coeff + b * p.experts;
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x)
      c[e] = router_balance_coefficient<A>(p, counts[e], batch, seq, alpha);
    __syncthreads();  // the block's writes of c are visible to the block
    A sum = 0;
    for (std::int64_t t = b * seq + threadIdx.x; t < (b + 1) * seq; t += blockDim.x)
      sum += router_balance_token_loss(p, static_cast<const A*>(c), scores + t * p.experts);
    sum = block_sum(sum, partial);
    if (threadIdx.x == 0) losses[b] = sum;
  }
}

// One thread per token: the host loop body of moe_balance_backward.
template <class T>
__global__ void moe_balance_backward_kernel(const route_params p, T* dlogits, const accum_t<T>* coeff,
                                            const accum_t<T>* scores, std::int64_t tokens, std::int64_t seq) {
  for (std::int64_t t = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += std::int64_t(gridDim.x) * blockDim.x)
    router_balance_backward(p, dlogits + t * p.experts, coeff + t / seq * p.experts, scores + t * p.experts);
}

static __global__ void moe_expert_load_add_kernel(std::int64_t* load, const std::int32_t* offsets, int experts) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < experts; e += gridDim.x * blockDim.x)
    load[e] += offsets[e + 1] - offsets[e];
}

// One block: the total load (an integer block_sum), then every expert's step.
template <class T>
__global__ void moe_routing_bias_update_kernel(T* bias, const std::int64_t* load, int experts, double gamma) {
  using A = accum_t<T>;
  __shared__ std::int64_t partial[32];
  std::int64_t total = 0;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) total += load[e];
  total = block_sum(total, partial);
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    bias[e] = convert<T>(convert<A>(bias[e]) + router_bias_step<A>(load[e], total, experts, gamma));
}

inline void check_assignments(std::int64_t assignments, const char* what) {
  if (assignments > std::numeric_limits<std::int32_t>::max())
    throw error(std::string(what) + ": " + std::to_string(assignments) +
                " assignments overflow the int32 permutation");
}

// The expert offsets (E + 1) copied to the host, and checked: the error a sort encoded in them, or
// offsets that do not rise from 0. Reused buffer: valid until the next call on this thread.
inline const std::vector<std::int32_t>& host_offsets(cuda& be, const std::int32_t* offsets, int experts,
                                                     const char* what) {
  thread_local std::vector<std::int32_t> h;
  h.resize(std::size_t(experts) + 1);
  be.download(h.data(), offsets, h.size() * sizeof(std::int32_t));  // one small copy and a stream sync
  if (h[0] < 0) {
    const std::int64_t a = -1 - std::int64_t(h[0]);
    std::string message = std::string(what) + ": moe_sort_by_expert found assignment " + std::to_string(a) +
                          " with expert id " + std::to_string(h[1]) + ", expected [0, " + std::to_string(experts) +
                          ") (checked here, where the expert offsets first reach the host)";
    if (h[1] == moe_unrouted)
      throw non_finite_error(message +
                             "; moe_route gives that id to every assignment of a token with a non-finite router score "
                             "(router logits or correction bias are inf/NaN), and assignment a belongs to token a / top_k");
    throw error(message);
  }
  if (h[0] != 0)
    throw error(std::string(what) + ": expert offsets[0] is " + std::to_string(h[0]) + ", expected 0");
  for (int e = 0; e < experts; ++e)
    if (h[e + 1] < h[e])
      throw error(std::string(what) + ": expert offsets must not decrease, found offsets[" + std::to_string(e) +
                  "] = " + std::to_string(h[e]) + " > offsets[" + std::to_string(e + 1) +
                  "] = " + std::to_string(h[e + 1]));
  return h;
}

}  // namespace cuda_detail

// Per token: scores (tokens, E), indices (tokens, top_k), weights (tokens, top_k) from logits (tokens, E)
// and bias (E, read only when p.bias). A token with a non-finite selection score gets expert id −1 in
// every k (its scores are written, its weights are not); the first grouped GEMM after the sort reports it.
template <class T>
void moe_route(cuda& be, const route_params& p, accum_t<T>* scores, std::int32_t* indices, accum_t<T>* weights,
               const T* logits, const T* bias, std::int64_t tokens) {
  using namespace cuda_detail;
  moe_route_check(p, bias != nullptr);
  if (tokens <= 0) return;
  constexpr unsigned threads = 128;
  moe_route_kernel<T><<<grid_for(tokens, threads), threads, 0, be.stream()>>>(p, scores, indices, weights, logits,
                                                                              bias, tokens);
  DSX_CUDA_CHECK_LAUNCH("moe_route_kernel");
}

// dlogits (tokens, E) (=) from dweights (tokens, top_k), with the forward's scores and indices.
template <class T>
void moe_route_backward(cuda& be, const route_params& p, T* dlogits, const accum_t<T>* dweights,
                        const accum_t<T>* scores, const std::int32_t* indices, std::int64_t tokens) {
  using namespace cuda_detail;
  if (tokens <= 0) return;
  constexpr unsigned threads = 128;
  moe_route_backward_kernel<T><<<grid_for(tokens, threads), threads, 0, be.stream()>>>(p, dlogits, dweights, scores,
                                                                                       indices, tokens);
  DSX_CUDA_CHECK_LAUNCH("moe_route_backward_kernel");
}

// perm, inv_perm (assignments) and offsets (E + 1) as on the host: CUB's radix sort of (expert id,
// assignment) pairs over the bits that ids below E occupy. The sort is stable, so perm equals the host's
// counting sort. Temporaries (sorted ids, the assignment numbers, CUB's storage) live in the backend's
// scratch, which grows to the largest call and is then reused. An id outside [0, E) is reported by the
// next grouped GEMM (see the top of this file).
inline void moe_sort_by_expert(cuda& be, std::int32_t* perm, std::int32_t* inv_perm, std::int32_t* offsets,
                               const std::int32_t* indices, std::int64_t assignments, int experts) {
  using namespace cuda_detail;
  check_assignments(assignments, "moe_sort_by_expert");
  if (experts < 1) throw error("moe_sort_by_expert: " + std::to_string(experts) + " experts, expected at least 1");
  if (assignments <= 0) {
    be.fill_zero(offsets, (std::size_t(experts) + 1) * sizeof(std::int32_t));
    return;
  }
  const int n = int(assignments);
  const int end_bit = std::max(1, int(std::bit_width(unsigned(experts - 1))));  // ids < E fit in these bits
  const auto* keys = reinterpret_cast<const std::uint32_t*>(indices);

  std::size_t sort_bytes = 0;
  DSX_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys, static_cast<std::uint32_t*>(nullptr),
                                                 static_cast<const std::int32_t*>(nullptr),
                                                 static_cast<std::int32_t*>(nullptr), n, 0, end_bit, be.stream()));
  const std::size_t list_bytes = (std::size_t(n) * sizeof(std::int32_t) + 255) / 256 * 256;
  auto* base = static_cast<unsigned char*>(be.scratch(2 * list_bytes + 256 + sort_bytes));
  auto* sorted_ids = reinterpret_cast<std::uint32_t*>(base);
  auto* numbers = reinterpret_cast<std::int32_t*>(base + list_bytes);
  auto* first_bad = reinterpret_cast<std::uint32_t*>(base + 2 * list_bytes);
  void* sort_storage = base + 2 * list_bytes + 256;

  DSX_CUDA_CHECK(cudaMemsetAsync(first_bad, 0xff, sizeof(std::uint32_t), be.stream()));  // moe_all_valid
  constexpr unsigned threads = 256;
  moe_sort_prepare_kernel<<<grid_for(n, threads), threads, 0, be.stream()>>>(numbers, first_bad, indices, n, experts);
  DSX_CUDA_CHECK_LAUNCH("moe_sort_prepare_kernel");
  DSX_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_storage, sort_bytes, keys, sorted_ids, numbers, perm, n, 0,
                                                 end_bit, be.stream()));
  moe_sort_finish_kernel<<<grid_for(std::int64_t(n) + 1, threads), threads, 0, be.stream()>>>(
      inv_perm, offsets, sorted_ids, perm, indices, first_bad, n, experts);
  DSX_CUDA_CHECK_LAUNCH("moe_sort_finish_kernel");
}

// xs (assignments, hidden) = x[perm[j] / top_k] row by row; x: (tokens, hidden). A pure copy.
template <class T>
void moe_dispatch(cuda& be, T* xs, const T* x, const std::int32_t* perm, std::int64_t assignments, int top_k,
                  std::int64_t hidden) {
  using namespace cuda_detail;
  if (assignments <= 0 || hidden <= 0) return;
  constexpr int V = vec_width<T>;
  const bool vec = rows_aligned(xs, hidden) && rows_aligned(x, hidden);
  const int threads = row_block_threads(hidden, vec ? V : 1, 256);
  if (vec)
    moe_dispatch_kernel<T, V><<<grid_for(assignments), threads, 0, be.stream()>>>(xs, x, perm, assignments, top_k,
                                                                                 hidden);
  else
    moe_dispatch_kernel<T, 1><<<grid_for(assignments), threads, 0, be.stream()>>>(xs, x, perm, assignments, top_k,
                                                                                 hidden);
  DSX_CUDA_CHECK_LAUNCH("moe_dispatch_kernel");
}

namespace cuda_detail {

// out[t] (=, or +=) = Σ_k w · rows[inv_perm[t · top_k + k]]; see moe_gather_sum_kernel.
template <class T>
void moe_gather_sum(cuda& be, T* out, const T* rows, const accum_t<T>* weights, const std::int32_t* inv_perm,
                    std::int64_t tokens, int top_k, std::int64_t hidden, bool accumulate) {
  if (tokens <= 0 || hidden <= 0) return;
  constexpr int V = vec_width<T>;
  const bool vec = rows_aligned(out, hidden) && rows_aligned(rows, hidden);
  const int threads = row_block_threads(hidden, vec ? V : 1, 256);
  if (vec)
    moe_gather_sum_kernel<T, V><<<grid_for(tokens), threads, 0, be.stream()>>>(out, rows, weights, inv_perm, tokens,
                                                                              top_k, hidden, accumulate);
  else
    moe_gather_sum_kernel<T, 1><<<grid_for(tokens), threads, 0, be.stream()>>>(out, rows, weights, inv_perm, tokens,
                                                                              top_k, hidden, accumulate);
  DSX_CUDA_CHECK_LAUNCH("moe_gather_sum_kernel");
}

}  // namespace cuda_detail

// dx (tokens, hidden) (=, or += when accumulate): dx[t] = Σ_k dxs[inv_perm[t · top_k + k]], k in order.
template <class T>
void moe_dispatch_backward(cuda& be, T* dx, const T* dxs, const std::int32_t* inv_perm, std::int64_t tokens,
                           int top_k, std::int64_t hidden, bool accumulate) {
  cuda_detail::moe_gather_sum<T>(be, dx, dxs, nullptr, inv_perm, tokens, top_k, hidden, accumulate);
}

// y (tokens, hidden) (=, or += when accumulate): y[t] = Σ_k w[t, k] · eo[inv_perm[t · top_k + k]], k in
// order; eo: (assignments, hidden), weights: (tokens, top_k).
template <class T>
void moe_combine(cuda& be, T* y, const T* eo, const accum_t<T>* weights, const std::int32_t* inv_perm,
                 std::int64_t tokens, int top_k, std::int64_t hidden, bool accumulate) {
  cuda_detail::moe_gather_sum<T>(be, y, eo, weights, inv_perm, tokens, top_k, hidden, accumulate);
}

// deo (assignments, hidden) (=) and dweights (tokens, top_k) (=) from dy (tokens, hidden); see host.
template <class T>
void moe_combine_backward(cuda& be, T* deo, accum_t<T>* dweights, const T* dy, const T* eo, const accum_t<T>* weights,
                          const std::int32_t* inv_perm, std::int64_t tokens, int top_k, std::int64_t hidden) {
  using namespace cuda_detail;
  const std::int64_t assignments = tokens * top_k;
  if (assignments <= 0) return;
  if (hidden <= 0) {  // empty rows: every dot product is 0
    DSX_CUDA_CHECK(cudaMemsetAsync(dweights, 0, std::size_t(assignments) * sizeof(accum_t<T>), be.stream()));
    return;
  }
  constexpr int V = vec_width<T>;
  const bool vec = rows_aligned(deo, hidden) && rows_aligned(dy, hidden) && rows_aligned(eo, hidden);
  const int threads = row_block_threads(hidden, vec ? V : 1, 256);
  if (vec)
    moe_combine_backward_kernel<T, V><<<grid_for(assignments), threads, 0, be.stream()>>>(
        deo, dweights, dy, eo, weights, inv_perm, assignments, top_k, hidden);
  else
    moe_combine_backward_kernel<T, 1><<<grid_for(assignments), threads, 0, be.stream()>>>(
        deo, dweights, dy, eo, weights, inv_perm, assignments, top_k, hidden);
  DSX_CUDA_CHECK_LAUNCH("moe_combine_backward_kernel");
}

// Sequence-wise balance loss of `batch` sequences of `seq` tokens (host's contract): coeff (batch, E) (=)
// and losses (batch) (=) from the affinities scores (batch·seq, E) and the indices (batch·seq, top_k).
// An id outside [0, E) is not counted here (the host throws); the sort reports it at the next grouped GEMM.
template <class A>
void moe_balance_loss(cuda& be, const route_params& p, A* coeff, A* losses, const A* scores,
                      const std::int32_t* indices, std::int64_t batch, std::int64_t seq, double alpha) {
  using namespace cuda_detail;
  moe_balance_loss_check(batch, seq, alpha);
  const std::size_t count_bytes = std::size_t(p.experts) * sizeof(unsigned);
  if (p.experts < 1 || count_bytes > 48 * 1024)
    throw error("moe_balance_loss: " + std::to_string(p.experts) +
                " experts, expected 1 to 12288 (the per-sequence counts live in 48 KiB of shared memory)");
  constexpr unsigned threads = 256;
  moe_balance_loss_kernel<A><<<grid_for(batch), threads, count_bytes, be.stream()>>>(p, coeff, losses, scores, indices,
                                                                                    batch, seq, alpha);
  DSX_CUDA_CHECK_LAUNCH("moe_balance_loss_kernel");
}

// dlogits (batch·seq, E) += the balance loss's logit gradient, from coeff (batch, E) and scores.
template <class T>
void moe_balance_backward(cuda& be, const route_params& p, T* dlogits, const accum_t<T>* coeff,
                          const accum_t<T>* scores, std::int64_t batch, std::int64_t seq) {
  using namespace cuda_detail;
  const std::int64_t tokens = batch * seq;
  if (tokens <= 0) return;
  constexpr unsigned threads = 128;
  moe_balance_backward_kernel<T><<<grid_for(tokens, threads), threads, 0, be.stream()>>>(p, dlogits, coeff, scores,
                                                                                         tokens, seq);
  DSX_CUDA_CHECK_LAUNCH("moe_balance_backward_kernel");
}

// load (E) += offsets[e + 1] − offsets[e]; load and offsets in device memory.
inline void moe_expert_load_add(cuda& be, std::int64_t* load, const std::int32_t* offsets, int experts) {
  using namespace cuda_detail;
  if (experts <= 0) return;
  constexpr unsigned threads = 256;
  moe_expert_load_add_kernel<<<grid_for(experts, threads), threads, 0, be.stream()>>>(load, offsets, experts);
  DSX_CUDA_CHECK_LAUNCH("moe_expert_load_add_kernel");
}

// bias (E) += γ · sign(mean load − load[e]) in accum_t<T>, loads (E) in device memory. The loads come
// from moe_expert_load_add and are counts; the host's check that none is negative is not repeated here
// (it would need a synchronisation).
template <class T>
void moe_routing_bias_update(cuda& be, T* bias, const std::int64_t* load, int experts, double gamma) {
  using namespace cuda_detail;
  if (!std::isfinite(gamma) || gamma < 0)
    throw error("moe_routing_bias_update: the update speed gamma is " + std::to_string(gamma) +
                ", expected finite and non-negative");
  if (experts <= 0) return;
  moe_routing_bias_update_kernel<T><<<1, 256, 0, be.stream()>>>(bias, load, experts, gamma);
  DSX_CUDA_CHECK_LAUNCH("moe_routing_bias_update_kernel");
}

// For every expert e with rows: c[rows] = a[rows] · op(b_e) (=), b_e = b + e · stride_b, (n, k) used
// transposed when trans_b, else (k, n); a: (rows, k), c: (rows, n); experts without rows are skipped.
//
// The offsets live in device memory and cuBLASLt takes sizes from the host, so this copies the E + 1
// offsets to the host (one small copy and a stream synchronisation per call) and enqueues one GEMM per
// non-empty expert through cuBLASLt. A device-side grouped GEMM (a CUTLASS-style grouped kernel that
// reads the offsets on the device, or cuBLASLt's grouped API) removes that synchronisation later. Row
// counts change with every step, so these GEMMs share cuBLASLt plans by size class (lt_matmul::run): a
// new count costs a descriptor and an algorithm check, not a heuristic query. (With one query per
// distinct count, the benchmark's gpu_1b training steps on an H100 took from 700 down to 313 ms over the
// first five steps; with size classes each takes about 230 ms from the first.)
template <class T>
void gemm_grouped(cuda& be, bool trans_b, std::int64_t n, std::int64_t k, const T* a, const T* b, std::int64_t stride_b,
                  T* c, const std::int32_t* offsets, int experts) {
  if (experts <= 0) return;
  const std::vector<std::int32_t>& off = cuda_detail::host_offsets(be, offsets, experts, "gemm_grouped");
  for (int e = 0; e < experts; ++e) {
    const std::int64_t first = off[e], rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    cuda_detail::gemm_lt(be, false, trans_b, rows, n, k, 1.0, a + first * k, k, 0, b + e * stride_b, trans_b ? k : n,
                         0, 0.0, c + first * n, n, 0, 1, true);
  }
}

// For every expert e with rows: c_e += a[rows]ᵀ · b[rows], c_e = c + e · stride_c (m, n), a: (rows, m),
// b: (rows, n). The offsets reach the host as in gemm_grouped.
template <class T>
void gemm_grouped_wgrad(cuda& be, std::int64_t m, std::int64_t n, const T* a, const T* b, T* c, std::int64_t stride_c,
                        const std::int32_t* offsets, int experts) {
  if (experts <= 0) return;
  const std::vector<std::int32_t>& off = cuda_detail::host_offsets(be, offsets, experts, "gemm_grouped_wgrad");
  for (int e = 0; e < experts; ++e) {
    const std::int64_t first = off[e], rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    cuda_detail::gemm_lt(be, true, false, m, n, rows, 1.0, a + first * m, m, 0, b + first * n, n, 0, 1.0,
                         c + e * stride_c, n, 0, 1, true);
  }
}

}  // namespace dsx::backend
