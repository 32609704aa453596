// One MoE layer under test in float64 (layers/moe.hpp, layers/router.hpp): a model configuration around
// a gate, the layer bound to its own arena, the gate's scores by definition, random inputs, and redrawing
// them until the routing margins are large enough for finite differences.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/layers/moe.hpp"
#include "support/gradcheck.hpp"

namespace dsx::test {

// A complete model configuration around an MoE block (the layer validates the whole configuration).
inline model_config layer_config(const moe_config& m, int hidden) {
  return {.vocab = 16, .hidden = hidden, .layers = 2, .dense_layers = 1, .dense_inter = 8,
          .mla = {.heads = 2, .q_lora = 0, .kv_lora = 4, .nope = 4, .rope = 2, .v = 4},
          .moe = m, .max_positions = 16};
}

// A layer bound to its own activation arena and scratch, with storage type T.
template <class T = double>
struct layer_fixture {
  backend::host be;
  moe<T> layer;
  arena_plan plan;
  arena<backend::host> activations;
  std::vector<std::byte> scratch;

  layer_fixture(const model_config& c, std::int64_t tokens) : layer(c) {
    layer.plan(plan, tokens);
    activations = arena<backend::host>(be, plan.bytes());
    layer.bind(activations.data(), plan);
    scratch.resize(layer.scratch_bytes(tokens));
  }
};

// One token's affinities by the definition: the sigmoid of each logit, or the softmax over all of them.
inline std::vector<double> reference_scores(score_fn score, std::vector<double> s) {
  if (score == score_fn::sigmoid) {
    for (auto& v : s) v = 1 / (1 + std::exp(-v));
  } else {
    double z = 0;
    for (auto& v : s) z += (v = std::exp(v));
    for (auto& v : s) v /= z;
  }
  return s;
}

// One token's group scores from its selection scores (E): the sum of each group's best two with the
// correction bias (V3), its best one without (V2).
inline std::vector<double> reference_group_scores(const moe_config& m, const std::vector<double>& selection) {
  const int size = m.routed / m.groups;
  std::vector<double> group_score(m.groups);
  for (int g = 0; g < m.groups; ++g) {
    std::vector<double> members(selection.begin() + g * size, selection.begin() + (g + 1) * size);
    std::sort(members.begin(), members.end(), std::greater<>());
    group_score[g] = m.bias ? members[0] + members[1] : members[0];
  }
  return group_score;
}

// V3-style gate: sigmoid, correction bias, groups scored by top-2 sums, norm, one shared expert.
inline const moe_config v3_gate{.routed = 8, .shared = 1, .top_k = 2, .groups = 4, .top_groups = 2,
                                .score = score_fn::sigmoid, .norm_topk = true, .route_scale = 2.5, .bias = true,
                                .inter = 4};
// V2-style gate: softmax, groups scored by their best expert, no norm, two shared experts.
inline const moe_config v2_gate{.routed = 8, .shared = 2, .top_k = 2, .groups = 4, .top_groups = 2,
                                .score = score_fn::softmax, .norm_topk = false, .route_scale = 1.5, .bias = false,
                                .inter = 4};

// Smallest routing margin over the tokens: the gaps between the last kept and the first dropped group,
// and between the last selected and the first unselected expert. logits (tokens, E), bias (E) or empty.
inline double routing_margin(const moe_config& m, const std::vector<double>& logits, const std::vector<double>& bias,
                             std::int64_t tokens) {
  const int n = m.routed, size = n / m.groups;
  double margin = std::numeric_limits<double>::infinity();
  auto gap = [&](std::vector<double> v, int keep) {  // gap between the keep-th and (keep+1)-th largest
    if (keep >= int(v.size())) return;
    std::sort(v.begin(), v.end(), std::greater<>());
    margin = std::min(margin, v[keep - 1] - v[keep]);
  };
  for (std::int64_t t = 0; t < tokens; ++t) {
    const auto s = reference_scores(m.score, {logits.begin() + t * n, logits.begin() + (t + 1) * n});
    std::vector<double> sel(n);
    for (int e = 0; e < n; ++e) sel[e] = s[e] + (m.bias ? bias[e] : 0.0);
    const auto group_score = reference_group_scores(m, sel);
    gap(group_score, m.top_groups);
    std::vector<int> order(m.groups);
    for (int g = 0; g < m.groups; ++g) order[g] = g;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return group_score[a] > group_score[b]; });
    std::vector<double> candidates;
    for (int r = 0; r < m.top_groups; ++r)
      for (int e = order[r] * size; e < (order[r] + 1) * size; ++e) candidates.push_back(sel[e]);
    gap(candidates, m.top_k);
  }
  return margin;
}

// Inputs and weights of one MoE layer in float64, and a fixed output gradient r (loss = Σ y · r).
struct moe_case {
  model_config config;
  std::int64_t tokens = 0;
  std::vector<double> x, router, bias, experts, shared_gate_up, shared_down, r;

  moe_weights<double> view() const {
    return {router.data(), bias.empty() ? nullptr : bias.data(), experts.data(), shared_gate_up.data(),
            shared_down.data()};
  }
};

// r is drawn with standard deviation r_scale.
inline moe_case draw(const model_config& c, std::int64_t tokens, std::uint64_t seed, double r_scale = 1.0) {
  const std::int64_t d = c.hidden, e = c.moe.routed, inter = c.moe.inter, si = c.shared_inter();
  moe_case k;
  k.config = c;
  k.tokens = tokens;
  k.x = random_vector(tokens * d, seed);
  k.router = random_vector(e * d, seed + 1, 0.5);
  k.bias = c.moe.bias ? random_vector(e, seed + 2, 0.1) : std::vector<double>{};
  k.experts = random_vector(e * 3 * inter * d, seed + 3, 0.5);
  k.shared_gate_up = random_vector(2 * si * d, seed + 4, 0.5);
  k.shared_down = random_vector(d * si, seed + 5, 0.5);
  k.r = random_vector(tokens * d, seed + 6, r_scale);
  return k;
}

inline double margin_of(const moe_case& k) {
  const std::int64_t d = k.config.hidden, e = k.config.moe.routed;
  std::vector<double> logits(k.tokens * e);
  for (std::int64_t t = 0; t < k.tokens; ++t)
    for (std::int64_t j = 0; j < e; ++j) logits[t * e + j] = dot(&k.x[t * d], &k.router[j * d], d);
  return routing_margin(k.config.moe, logits, k.bias, k.tokens);
}

// The first draw, trying seeds from `seed` on, whose routing margins exceed `min_margin`.
inline moe_case draw_with_margin(const model_config& c, std::int64_t tokens, std::uint64_t seed, double min_margin,
                                 double r_scale = 1.0) {
  for (std::uint64_t s = seed; s < seed + 100 * 16; s += 16) {
    moe_case k = draw(c, tokens, s, r_scale);
    if (margin_of(k) > min_margin) return k;
  }
  FAIL("no draw with routing margins above " << min_margin);
  return {};
}

}  // namespace dsx::test
