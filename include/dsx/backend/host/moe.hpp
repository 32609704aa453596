// Mixture-of-experts primitives: routing over all tokens, the token permutation into expert order,
// the gather of token rows into that order (dispatch), grouped GEMMs over the expert segments, and the
// weighted combine back to token rows, each with its backward; and load balancing: the sequence-wise
// balance loss with its backward, per-expert load counts and the auxiliary-loss-free bias update.
//
// Vocabulary: an assignment is one (token, k) pair, a = t · top_k + k; there are tokens · top_k of them.
// Expert order lists the assignments sorted by expert id, stably (equal experts keep token order):
//   perm (assignments):     row j of an expert-ordered buffer holds assignment perm[j];
//   inv_perm (assignments): assignment a sits in row inv_perm[a];
//   offsets (E + 1):        expert e owns rows [offsets[e], offsets[e + 1]).
// The combine and the dispatch backward gather through inv_perm per token instead of scattering, so
// they are deterministic and need no atomics.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "dsx/backend/host/gemm.hpp"
#include "dsx/backend/host/host.hpp"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"
#include "dsx/layers/router.hpp"

namespace dsx::backend {

// The parameter checks of moe_route, shared with the CUDA backend's (backend/cuda/moe.cuh): the group
// layout, top_groups and top_k, and a bias tensor when the correction bias is on.
inline void moe_route_check(const route_params& p, bool has_bias) {
  const int group_size = p.groups >= 1 ? p.experts / p.groups : 0;
  if (p.groups < 1 || p.groups > router_max_groups || p.experts % p.groups != 0 || (p.bias && group_size < 2))
    throw error("moe_route: " + std::to_string(p.groups) + " groups of " + std::to_string(p.experts) +
                " experts: expected at most " + std::to_string(router_max_groups) +
                " groups that divide the experts, with at least 2 experts each when the bias is on");
  if (p.top_groups < 1 || p.top_groups > p.groups || p.top_k < 1 || p.top_k > p.top_groups * group_size)
    throw error("moe_route: top_k " + std::to_string(p.top_k) + " with top_groups " + std::to_string(p.top_groups) +
                " of " + std::to_string(p.groups) + " groups: expected 1 <= top_groups <= groups and " +
                "1 <= top_k <= the experts in the kept groups");
  if (p.bias && !has_bias) throw error("moe_route: the correction bias is on but no bias tensor was given");
}

// Per token (layers/router.hpp): scores (tokens, E) = the affinities, kept for the backward;
// indices (tokens, top_k) and weights (tokens, top_k) = the selected experts, best first, and their
// routing weights. logits: (tokens, E); bias: (E), read only when p.bias.
template <class T>
void moe_route(host&, const route_params& p, accum_t<T>* scores, std::int32_t* indices, accum_t<T>* weights,
               const T* logits, const T* bias, std::int64_t tokens) {
  using A = accum_t<T>;
  moe_route_check(p, bias != nullptr);
  std::int64_t bad_token = tokens;  // first token whose scores are not finite
#pragma omp parallel for schedule(static) reduction(min : bad_token)
  for (std::int64_t t = 0; t < tokens; ++t) {
    A* s = scores + t * p.experts;
    router_scores(p, s, logits + t * p.experts);
    bool finite = true;
    for (int e = 0; e < p.experts; ++e) finite = finite && std::isfinite(router_selection_score(p, s, bias, e));
    if (!finite) {
      bad_token = t < bad_token ? t : bad_token;
      continue;
    }
    router_select(p, indices + t * p.top_k, weights + t * p.top_k, s, bias);
  }
  if (bad_token < tokens)
    throw non_finite_error("moe_route: token " + std::to_string(bad_token) +
                " has a non-finite router score (router logits or correction bias are inf/NaN)");
}

// dlogits (tokens, E) (=) from dweights (tokens, top_k), with the forward's scores and indices.
template <class T>
void moe_route_backward(host&, const route_params& p, T* dlogits, const accum_t<T>* dweights, const accum_t<T>* scores,
                        const std::int32_t* indices, std::int64_t tokens) {
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < tokens; ++t)
    router_backward(p, dlogits + t * p.experts, dweights + t * p.top_k, scores + t * p.experts, indices + t * p.top_k);
}

// Stable counting sort of the assignments by expert id: perm, inv_perm (assignments) and offsets (E + 1)
// as described at the top. indices: (assignments) expert ids in [0, experts).
inline void moe_sort_by_expert(host&, std::int32_t* perm, std::int32_t* inv_perm, std::int32_t* offsets,
                               const std::int32_t* indices, std::int64_t assignments, int experts) {
  if (assignments > std::numeric_limits<std::int32_t>::max())
    throw error("moe_sort_by_expert: " + std::to_string(assignments) + " assignments overflow the int32 permutation");
  for (int e = 0; e <= experts; ++e) offsets[e] = 0;
  for (std::int64_t a = 0; a < assignments; ++a) {
    if (indices[a] < 0 || indices[a] >= experts)
      throw error("moe_sort_by_expert: assignment " + std::to_string(a) + " has expert id " +
                  std::to_string(indices[a]) + ", expected [0, " + std::to_string(experts) + ")");
    ++offsets[indices[a] + 1];
  }
  for (int e = 0; e < experts; ++e) offsets[e + 1] += offsets[e];
  // Next free row of each expert: offsets[e] advanced in place, then shifted back.
  for (std::int64_t a = 0; a < assignments; ++a) {
    const std::int32_t row = offsets[indices[a]]++;
    perm[row] = std::int32_t(a);
    inv_perm[a] = row;
  }
  for (int e = experts; e > 0; --e) offsets[e] = offsets[e - 1];
  offsets[0] = 0;
}

// Dispatch: xs (assignments, hidden) in expert order, xs[j] = x[perm[j] / top_k]; x: (tokens, hidden).
template <class T>
void moe_dispatch(host&, T* xs, const T* x, const std::int32_t* perm, std::int64_t assignments, int top_k,
                  std::int64_t hidden) {
#pragma omp parallel for schedule(static)
  for (std::int64_t j = 0; j < assignments; ++j) {
    const T* src = x + std::int64_t(perm[j]) / top_k * hidden;
    for (std::int64_t i = 0; i < hidden; ++i) xs[j * hidden + i] = src[i];
  }
}

// dx (tokens, hidden) (=, or += when accumulate): dx[t] = Σ_k dxs[inv_perm[t · top_k + k]].
template <class T>
void moe_dispatch_backward(host&, T* dx, const T* dxs, const std::int32_t* inv_perm, std::int64_t tokens, int top_k,
                           std::int64_t hidden, bool accumulate) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t i = 0; i < hidden; ++i) {
      A sum = accumulate ? A(dx[t * hidden + i]) : A(0);
      for (int k = 0; k < top_k; ++k) sum += A(dxs[std::int64_t(inv_perm[t * top_k + k]) * hidden + i]);
      dx[t * hidden + i] = T(sum);
    }
}

// Grouped GEMM over the expert segments of an expert-ordered buffer: for every expert e with rows,
// c[rows] = a[rows] · op(b_e) (=), where b_e = b + e · stride_b is (n, k) used transposed when trans_b,
// else (k, n). a: (rows, k), c: (rows, n). Experts without rows are skipped.
template <class T>
void gemm_grouped(host& be, bool trans_b, std::int64_t n, std::int64_t k, const T* a, const T* b,
                  std::int64_t stride_b, T* c, const std::int32_t* offsets, int experts) {
  for (int e = 0; e < experts; ++e) {
    const std::int64_t first = offsets[e], rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    gemm(be, false, trans_b, rows, n, k, 1.0, a + first * k, k, b + e * stride_b, trans_b ? k : n, 0.0,
         c + first * n, n);
  }
}

// The weight-gradient form: for every expert e with rows, c_e += a[rows]ᵀ · b[rows], where
// c_e = c + e · stride_c is (m, n), a: (rows, m), b: (rows, n).
template <class T>
void gemm_grouped_wgrad(host& be, std::int64_t m, std::int64_t n, const T* a, const T* b, T* c, std::int64_t stride_c,
                        const std::int32_t* offsets, int experts) {
  for (int e = 0; e < experts; ++e) {
    const std::int64_t first = offsets[e], rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    gemm(be, true, false, m, n, rows, 1.0, a + first * m, m, b + first * n, n, 1.0, c + e * stride_c, n);
  }
}

// The argument checks of moe_balance_loss, shared with the CUDA backend's (backend/cuda/moe.cuh): at
// least one sequence of at least one token, and a finite, non-negative loss weight.
inline void moe_balance_loss_check(std::int64_t batch, std::int64_t seq, double alpha) {
  if (batch < 1 || seq < 1)
    throw error("moe_balance_loss: batch " + std::to_string(batch) + " × seq " + std::to_string(seq) +
                ", expected at least one sequence of at least one token");
  if (!std::isfinite(alpha) || alpha < 0)
    throw error("moe_balance_loss: the loss weight alpha is " + std::to_string(alpha) +
                ", expected finite and non-negative");
}

// Sequence-wise balance loss (layers/router.hpp) of `batch` sequences of `seq` tokens, token t of sequence b
// at row b · seq + t. From the selection indices (batch·seq, top_k) and the affinities scores
// (batch·seq, E): coeff (batch, E) = the c_i of each sequence (=), and losses (batch) = the sum of
// router_balance_token_loss over each sequence's tokens (=), i.e. (α / B) Σ_i f_i P_i of sequence b; the
// batch's loss is the sum of `losses`.
template <class A>
void moe_balance_loss(host&, const route_params& p, A* coeff, A* losses, const A* scores, const std::int32_t* indices,
                      std::int64_t batch, std::int64_t seq, double alpha) {
  moe_balance_loss_check(batch, seq, alpha);
  std::vector<std::int64_t> counts(std::size_t(p.experts));
  for (std::int64_t b = 0; b < batch; ++b) {
    std::fill(counts.begin(), counts.end(), 0);
    for (std::int64_t a = b * seq * p.top_k; a < (b + 1) * seq * p.top_k; ++a) {
      if (indices[a] < 0 || indices[a] >= p.experts)
        throw error("moe_balance_loss: assignment " + std::to_string(a) + " has expert id " +
                    std::to_string(indices[a]) + ", expected [0, " + std::to_string(p.experts) + ")");
      ++counts[std::size_t(indices[a])];
    }
    for (int e = 0; e < p.experts; ++e)
      coeff[b * p.experts + e] = router_balance_coefficient<A>(p, counts[std::size_t(e)], batch, seq, alpha);
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < batch; ++b) {
    A sum = 0;
    for (std::int64_t t = b * seq; t < (b + 1) * seq; ++t)
      sum += router_balance_token_loss(p, coeff + b * p.experts, scores + t * p.experts);
    losses[b] = sum;
  }
}

// dlogits (batch·seq, E) += the balance loss's logit gradient, from moe_balance_loss's coeff (batch, E)
// and the affinities scores (batch·seq, E).
template <class T>
void moe_balance_backward(host&, const route_params& p, T* dlogits, const accum_t<T>* coeff, const accum_t<T>* scores,
                          std::int64_t batch, std::int64_t seq) {
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < batch * seq; ++t)
    router_balance_backward(p, dlogits + t * p.experts, coeff + t / seq * p.experts, scores + t * p.experts);
}

// load (E) += the assignments of each expert in an expert order: load[e] += offsets[e + 1] − offsets[e].
inline void moe_expert_load_add(host&, std::int64_t* load, const std::int32_t* offsets, int experts) {
  for (int e = 0; e < experts; ++e) load[e] += offsets[e + 1] - offsets[e];
}

// The auxiliary-loss-free update of a routing bias (E) from the loads (E) of a step:
// bias[e] += γ · sign(mean load − load[e]) (router_bias_step), computed in accum_t<T>.
template <class T>
void moe_routing_bias_update(host&, T* bias, const std::int64_t* load, int experts, double gamma) {
  using A = accum_t<T>;
  if (!std::isfinite(gamma) || gamma < 0)
    throw error("moe_routing_bias_update: the update speed gamma is " + std::to_string(gamma) +
                ", expected finite and non-negative");
  std::int64_t total = 0;
  for (int e = 0; e < experts; ++e) {
    if (load[e] < 0)
      throw error("moe_routing_bias_update: expert " + std::to_string(e) + " has load " + std::to_string(load[e]) +
                  ", expected a non-negative count");
    total += load[e];
  }
  for (int e = 0; e < experts; ++e)
    bias[e] = convert<T>(convert<A>(bias[e]) + router_bias_step<A>(load[e], total, experts, gamma));
}

// Combine: y (tokens, hidden) (=, or += when accumulate), y[t] = Σ_k w[t, k] · eo[inv_perm[t · top_k + k]];
// eo: (assignments, hidden) expert outputs in expert order; weights: (tokens, top_k).
template <class T>
void moe_combine(host&, T* y, const T* eo, const accum_t<T>* weights, const std::int32_t* inv_perm, std::int64_t tokens,
                 int top_k, std::int64_t hidden, bool accumulate) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t i = 0; i < hidden; ++i) {
      A sum = accumulate ? A(y[t * hidden + i]) : A(0);
      for (int k = 0; k < top_k; ++k)
        sum += weights[t * top_k + k] * A(eo[std::int64_t(inv_perm[t * top_k + k]) * hidden + i]);
      y[t * hidden + i] = T(sum);
    }
}

// Combine backward from dy (tokens, hidden): deo[j] = w[a] · dy[a / top_k] (=) for the row j of
// assignment a, and dweights[a] = dy[a / top_k] · eo[j] (=). deo, eo: (assignments, hidden).
template <class T>
void moe_combine_backward(host&, T* deo, accum_t<T>* dweights, const T* dy, const T* eo, const accum_t<T>* weights,
                          const std::int32_t* inv_perm, std::int64_t tokens, int top_k, std::int64_t hidden) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < tokens; ++t)
    for (int k = 0; k < top_k; ++k) {
      const std::int64_t a = t * top_k + k, row = inv_perm[a];
      const T* g = dy + t * hidden;
      A dot = 0;
      for (std::int64_t i = 0; i < hidden; ++i) {
        deo[row * hidden + i] = T(weights[a] * A(g[i]));
        dot += A(g[i]) * A(eo[row * hidden + i]);
      }
      dweights[a] = dot;
    }
}

}  // namespace dsx::backend
