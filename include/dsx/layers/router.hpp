// The DeepSeekMoE gate for one token, forward and backward, written once for host and device: the host
// backend loops these functions over tokens and a CUDA kernel calls them per token. They work on plain
// arrays with a few integers (route_params): no containers, no allocation, no exceptions.
//
// Semantics (DeepSeek-V3 inference/model.py `Gate`; see docs for the V2/V3 differences):
//   scores    = sigmoid(logits) or softmax(logits) over the E experts          (the affinities s)
//   selection = scores + bias                when the correction bias is on (selection only)
//   groups    : each of `groups` contiguous groups is scored by the sum of its top-2 selection scores
//               when the bias is on (V3), by its best selection score otherwise (V2); only the best
//               `top_groups` groups stay candidates (the reference masks the others with -inf)
//   indices   = the top_k candidates by selection score
//   weights   = scores[indices] (unbiased), divided by their sum when `norm`, times `scale`
// Ties: torch.topk leaves them unspecified; here the higher value wins and, on exactly equal values, the
// lower expert (or group) index, so host and device pick the same experts.
//
// Gradients flow through the weights into the unbiased scores and the logits; the selection is a
// constant of the backward pass (it is piecewise constant in the logits).
//
// Load balancing (DeepSeek-V3 report §2.1.2), per-token and per-expert formulas of both mechanisms:
//   auxiliary-loss-free: after each training step b_i += γ · sign(mean load − load_i), the loads counted
//     over the step's tokens (router_bias_step);
//   sequence-wise balance loss (eqs. 17–20), per sequence of T tokens:
//     L_Bal = α Σ_i f_i P_i,  f_i = E / (K T) · count_i,  P_i = (1/T) Σ_t s'_{i,t},
//     s'_{i,t} = s_{i,t} / Σ_j s_{j,t}
//     with count_i the tokens of the sequence that selected expert i and s the affinities over all E
//     experts; a batch's loss is the mean over its B sequences. The report writes the indicator on the
//     top-K of the unbiased scores; here count_i counts the experts actually selected (with the bias and
//     the group limit), the routing the tokens really take. f is a constant of the backward pass; the
//     gradient reaches the logits through P. With c_i = α f_i / (B T) the batch loss is
//     Σ_t Σ_i c_i s'_{i,t} (router_balance_coefficient, router_balance_token_loss, router_balance_backward).
#pragma once

#include <cmath>
#include <cstdint>

#include "dsx/config/model_config.hpp"
#include "dsx/core/activation.hpp"
#include "dsx/core/macros.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx {

// The integers the gate needs; built from a validated moe_config (config/checks.hpp guarantees
// 1 ≤ top_k ≤ top_groups · E / groups, groups divides E, and ≥ 2 experts per group with the bias).
struct route_params {
  int experts = 0;     // E
  int top_k = 0;       // experts per token
  int groups = 1;      // expert groups (1: plain top-k over all experts)
  int top_groups = 1;  // groups kept per token
  score_fn score = score_fn::softmax;
  bool bias = false;   // a correction bias is added for selection; groups are then scored by top-2 sums
  bool norm = false;   // renormalise the selected weights to sum to 1
  double scale = 1.0;  // routed_scaling_factor
};

constexpr route_params route_params_of(const moe_config& m) {
  return {m.routed, m.top_k, m.groups, m.top_groups, m.score, m.bias, m.norm_topk, m.route_scale};
}

// The kept groups of a token are a bit mask, which bounds the number of groups (V3 has 8).
inline constexpr int router_max_groups = 64;

// Strict order used for every top-k: (a, ia) comes before (b, ib) when a is larger, or equal with a
// lower index.
template <class A>
DSX_HD bool router_ranks_before(A a, int ia, A b, int ib) {
  return a > b || (a == b && ia < ib);
}

// scores (E) = sigmoid(logits) or softmax(logits) (E), computed in A.
template <class A, class L>
DSX_HD void router_scores(const route_params& p, A* scores, const L* logits) {
  if (p.score == score_fn::sigmoid) {
    for (int e = 0; e < p.experts; ++e) scores[e] = sigmoid(convert<A>(logits[e]));
    return;
  }
  A max = convert<A>(logits[0]);
  for (int e = 1; e < p.experts; ++e) max = convert<A>(logits[e]) > max ? convert<A>(logits[e]) : max;
  A sum = 0;
  for (int e = 0; e < p.experts; ++e) {
    scores[e] = std::exp(convert<A>(logits[e]) - max);
    sum += scores[e];
  }
  for (int e = 0; e < p.experts; ++e) scores[e] /= sum;
}

// The score expert e is selected by: its affinity plus the correction bias when that is on.
template <class A, class B>
DSX_HD A router_selection_score(const route_params& p, const A* scores, const B* bias, int e) {
  return p.bias ? scores[e] + convert<A>(bias[e]) : scores[e];
}

// Score of group g: sum of its two best selection scores with the bias, its best one without.
template <class A, class B>
DSX_HD A router_group_score(const route_params& p, const A* scores, const B* bias, int g) {
  const int size = p.experts / p.groups, first = g * size;
  A best = router_selection_score(p, scores, bias, first);
  if (!p.bias) {
    for (int e = first + 1; e < first + size; ++e) {
      const A v = router_selection_score(p, scores, bias, e);
      best = v > best ? v : best;
    }
    return best;
  }
  A second = router_selection_score(p, scores, bias, first + 1);
  if (second > best) {
    const A t = best;
    best = second;
    second = t;
  }
  for (int e = first + 2; e < first + size; ++e) {
    const A v = router_selection_score(p, scores, bias, e);
    if (v > best) {
      second = best;
      best = v;
    } else if (v > second) {
      second = v;
    }
  }
  return best + second;
}

// Bit g is set when group g is among the top_groups best groups (all bits of `groups` when not limited).
// Groups are taken best first; each round takes the best group that ranks after the previous one.
template <class A, class B>
DSX_HD std::uint64_t router_kept_groups(const route_params& p, const A* scores, const B* bias) {
  if (p.top_groups >= p.groups)
    return p.groups == router_max_groups ? ~std::uint64_t(0) : (std::uint64_t(1) << p.groups) - 1;
  std::uint64_t kept = 0;
  A prev_score = 0;
  int prev = -1;
  for (int round = 0; round < p.top_groups; ++round) {
    int best = -1;
    A best_score = 0;
    for (int g = 0; g < p.groups; ++g) {
      const A s = router_group_score(p, scores, bias, g);
      if (prev >= 0 && !router_ranks_before(prev_score, prev, s, g)) continue;  // taken in an earlier round
      if (best < 0 || router_ranks_before(s, g, best_score, best)) {
        best = g;
        best_score = s;
      }
    }
    kept |= std::uint64_t(1) << best;
    prev = best;
    prev_score = best_score;
  }
  return kept;
}

// indices (top_k): the selected experts, best first; weights (top_k): their routing weights.
// scores (E) come from router_scores; bias (E) is read only when p.bias. Scores and bias must be
// finite (the host primitive checks); then every index is a distinct expert of a kept group.
template <class A, class B>
DSX_HD void router_select(const route_params& p, std::int32_t* indices, A* weights, const A* scores, const B* bias) {
  const std::uint64_t kept = router_kept_groups(p, scores, bias);
  const int group_size = p.experts / p.groups;
  A prev_score = 0;
  int prev = -1;
  for (int k = 0; k < p.top_k; ++k) {
    int best = -1;
    A best_score = 0;
    for (int e = 0; e < p.experts; ++e) {
      if (!((kept >> (e / group_size)) & 1u)) continue;
      const A s = router_selection_score(p, scores, bias, e);
      if (prev >= 0 && !router_ranks_before(prev_score, prev, s, e)) continue;  // selected already
      if (best < 0 || router_ranks_before(s, e, best_score, best)) {
        best = e;
        best_score = s;
      }
    }
    indices[k] = best;
    prev = best;
    prev_score = best_score;
  }
  A sum = 0;
  for (int k = 0; k < p.top_k; ++k) {
    weights[k] = scores[indices[k]];
    sum += weights[k];
  }
  const A factor = p.norm ? A(p.scale) / sum : A(p.scale);
  for (int k = 0; k < p.top_k; ++k) weights[k] *= factor;
}

// dlogits (E, written) from dweights (top_k), given the forward's scores (E) and indices (top_k).
// With c = scale and S = Σ_k s_{i_k}, the score gradient of a selected expert is
//   ds_{i_k} = c · dw_k                               without norm,
//   ds_{i_k} = c / S · (dw_k − Σ_j dw_j s_{i_j} / S)   with norm (w_k = c · s_{i_k} / S),
// and zero for the others. Then dlogit_e = ds_e · s_e (1 − s_e) for sigmoid, and
// dlogit_e = s_e (ds_e − Σ_j ds_j s_j) for softmax.
template <class A, class G>
DSX_HD void router_backward(const route_params& p, G* dlogits, const A* dweights, const A* scores,
                            const std::int32_t* indices) {
  A sum = 0, weighted = 0;  // S and Σ_k dw_k s_{i_k}
  for (int k = 0; k < p.top_k; ++k) {
    sum += scores[indices[k]];
    weighted += dweights[k] * scores[indices[k]];
  }
  const A scale = A(p.scale);
  // ds of the k-th selected expert.
  auto dscore = [&](int k) { return p.norm ? scale / sum * (dweights[k] - weighted / sum) : scale * dweights[k]; };
  if (p.score == score_fn::sigmoid) {
    for (int e = 0; e < p.experts; ++e) dlogits[e] = convert<G>(A(0));
    for (int k = 0; k < p.top_k; ++k) {
      const A s = scores[indices[k]];
      dlogits[indices[k]] = convert<G>(dscore(k) * s * (A(1) - s));
    }
    return;
  }
  A dot = 0;  // Σ_j ds_j s_j over the selected experts (ds is zero elsewhere)
  for (int k = 0; k < p.top_k; ++k) dot += dscore(k) * scores[indices[k]];
  for (int e = 0; e < p.experts; ++e) dlogits[e] = convert<G>(-scores[e] * dot);
  for (int k = 0; k < p.top_k; ++k) dlogits[indices[k]] = convert<G>(scores[indices[k]] * (dscore(k) - dot));
}

// c_i = α f_i / (B T) of an expert that `count` tokens of a sequence of `seq` tokens selected, in a batch of
// `batch` sequences: α · E · count / (K · T · B · T).
template <class A>
DSX_HD A router_balance_coefficient(const route_params& p, std::int64_t count, std::int64_t batch, std::int64_t seq,
                                    double alpha) {
  return A(alpha * double(p.experts) * double(count) / (double(p.top_k) * double(seq) * double(batch) * double(seq)));
}

// One token's share of the balance loss: Σ_i c_i s_i / Σ_j s_j. coeff (E): its sequence's c; scores (E).
template <class A>
DSX_HD A router_balance_token_loss(const route_params& p, const A* coeff, const A* scores) {
  A sum = 0, weighted = 0;
  for (int e = 0; e < p.experts; ++e) {
    sum += scores[e];
    weighted += coeff[e] * scores[e];
  }
  return weighted / sum;
}

// dlogits (E) += d(router_balance_token_loss)/d logits. With S = Σ_j s_j and m = Σ_i c_i s_i / S, the
// score gradient is ds_e = (c_e − m) / S; then dlogit_e = ds_e · s_e (1 − s_e) for sigmoid and
// s_e (ds_e − Σ_j ds_j s_j) for softmax (where S = 1, so the sum vanishes up to rounding).
template <class A, class G>
DSX_HD void router_balance_backward(const route_params& p, G* dlogits, const A* coeff, const A* scores) {
  A sum = 0, weighted = 0;
  for (int e = 0; e < p.experts; ++e) {
    sum += scores[e];
    weighted += coeff[e] * scores[e];
  }
  const A mean = weighted / sum;
  if (p.score == score_fn::sigmoid) {
    for (int e = 0; e < p.experts; ++e) {
      const A s = scores[e];
      dlogits[e] = convert<G>(convert<A>(dlogits[e]) + (coeff[e] - mean) / sum * s * (A(1) - s));
    }
    return;
  }
  A dot = 0;  // Σ_j ds_j s_j
  for (int e = 0; e < p.experts; ++e) dot += (coeff[e] - mean) / sum * scores[e];
  for (int e = 0; e < p.experts; ++e)
    dlogits[e] = convert<G>(convert<A>(dlogits[e]) + scores[e] * ((coeff[e] - mean) / sum - dot));
}

// The auxiliary-loss-free step of expert e's routing bias: γ · sign(mean − load), mean = total / E.
// The sign is taken on integers, sign(total − E · load), so an expert at exactly the mean load (a tie)
// does not move.
template <class A>
DSX_HD A router_bias_step(std::int64_t load, std::int64_t total, int experts, double gamma) {
  const std::int64_t diff = total - std::int64_t(experts) * load;
  return diff > 0 ? A(gamma) : diff < 0 ? A(-gamma) : A(0);
}

}  // namespace dsx
