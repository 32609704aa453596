// The MoE gate (layers/router.hpp through the host primitive moe_route) against a direct transcription of
// the reference gate written here with std containers, plus crafted cases for the bias, group exclusion,
// ties and bad input, and the stable permutation by expert (moe_sort_by_expert).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/layers/router.hpp"
#include "support/moe.hpp"

namespace {

struct routed {
  std::vector<std::int32_t> indices;  // (tokens, top_k)
  std::vector<double> weights;        // (tokens, top_k)
};

// The gate as DeepSeek-V3's inference/model.py writes it, one token at a time: scores, biased selection
// scores, groups masked with -inf, torch.topk-style ordering (stable sorts, so exact ties keep the lower
// index first), unbiased weights.
routed reference_route(const dsx::moe_config& m, const std::vector<double>& logits, const std::vector<double>& bias,
                       int tokens) {
  const int n = m.routed;
  routed out;
  for (int t = 0; t < tokens; ++t) {
    const auto scores =
        dsx::test::reference_scores(m.score, {logits.begin() + t * n, logits.begin() + (t + 1) * n});
    std::vector<double> selection = scores;
    if (m.bias)
      for (int e = 0; e < n; ++e) selection[e] += bias[e];
    if (m.groups > 1) {
      const int size = n / m.groups;
      const auto group_score = dsx::test::reference_group_scores(m, selection);
      std::vector<int> order(m.groups);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return group_score[a] > group_score[b]; });
      for (int r = m.top_groups; r < m.groups; ++r)
        for (int e = order[r] * size; e < (order[r] + 1) * size; ++e)
          selection[e] = -std::numeric_limits<double>::infinity();
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return selection[a] > selection[b]; });
    double sum = 0;
    for (int k = 0; k < m.top_k; ++k) sum += scores[order[k]];
    for (int k = 0; k < m.top_k; ++k) {
      out.indices.push_back(order[k]);
      out.weights.push_back(scores[order[k]] / (m.norm_topk ? sum : 1.0) * m.route_scale);
    }
  }
  return out;
}

routed host_route(const dsx::moe_config& m, const std::vector<double>& logits, const std::vector<double>& bias,
                  int tokens) {
  dsx::backend::host be;
  std::vector<double> scores(std::size_t(tokens) * m.routed);
  routed out{std::vector<std::int32_t>(std::size_t(tokens) * m.top_k),
             std::vector<double>(std::size_t(tokens) * m.top_k)};
  dsx::backend::moe_route(be, dsx::route_params_of(m), scores.data(), out.indices.data(), out.weights.data(),
                          logits.data(), bias.empty() ? nullptr : bias.data(), tokens);
  return out;
}

std::vector<double> normal(std::size_t n, std::uint64_t seed, double scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

}  // namespace

TEST_CASE("router: random tokens match the reference gate", "[unit]") {
  using dsx::score_fn;
  // V3-like, V2-Lite-like and V2-like gates, with the normalisation and scale varied.
  const dsx::moe_config config = GENERATE(
      dsx::moe_config{.routed = 16, .top_k = 4, .groups = 4, .top_groups = 2, .score = score_fn::sigmoid,
                      .norm_topk = true, .route_scale = 2.5, .bias = true},
      dsx::moe_config{.routed = 16, .top_k = 4, .groups = 4, .top_groups = 2, .score = score_fn::sigmoid,
                      .norm_topk = false, .route_scale = 1.0, .bias = true},
      dsx::moe_config{.routed = 16, .top_k = 3, .groups = 1, .top_groups = 1, .score = score_fn::softmax,
                      .norm_topk = false, .route_scale = 1.0, .bias = false},
      dsx::moe_config{.routed = 16, .top_k = 3, .groups = 1, .top_groups = 1, .score = score_fn::softmax,
                      .norm_topk = true, .route_scale = 1.5, .bias = false},
      dsx::moe_config{.routed = 16, .top_k = 3, .groups = 8, .top_groups = 3, .score = score_fn::softmax,
                      .norm_topk = false, .route_scale = 16.0, .bias = false},
      dsx::moe_config{.routed = 12, .top_k = 2, .groups = 1, .top_groups = 1, .score = score_fn::sigmoid,
                      .norm_topk = true, .route_scale = 1.0, .bias = false});
  const int tokens = 200;
  const auto logits = normal(std::size_t(tokens) * config.routed, 11, 2.0);
  const auto bias = config.bias ? normal(std::size_t(config.routed), 12, 0.2) : std::vector<double>{};
  const routed expected = reference_route(config, logits, bias, tokens);
  const routed got = host_route(config, logits, bias, tokens);
  INFO("score " << (config.score == score_fn::sigmoid ? "sigmoid" : "softmax") << ", groups " << config.groups
                << ", bias " << config.bias << ", norm " << config.norm_topk << ", scale " << config.route_scale);
  CHECK(got.indices == expected.indices);
  double max_rel = 0;
  for (std::size_t i = 0; i < got.weights.size(); ++i)
    max_rel = std::max(max_rel, std::abs(got.weights[i] - expected.weights[i]) / std::abs(expected.weights[i]));
  CHECK(max_rel < 1e-14);
}

TEST_CASE("router: the bias changes the selection, not the weights", "[unit]") {
  // Sigmoid scores of experts 0 and 1 are σ(0.4) > σ(0.2); a bias of +0.2 on expert 1 lifts its selection
  // score above expert 0's, so expert 1 is picked, with its own unbiased affinity as weight.
  dsx::moe_config m{.routed = 4, .top_k = 1, .groups = 1, .top_groups = 1, .score = dsx::score_fn::sigmoid,
                    .norm_topk = false, .route_scale = 2.5, .bias = true};
  const std::vector<double> logits{0.4, 0.2, -1.0, -2.0};
  const std::vector<double> zero(4, 0.0), lift{0.0, 0.2, 0.0, 0.0};
  const routed plain = host_route(m, logits, zero, 1);
  const routed biased = host_route(m, logits, lift, 1);
  CHECK(plain.indices[0] == 0);
  CHECK(biased.indices[0] == 1);
  CHECK(biased.weights[0] == Approx(2.5 / (1 + std::exp(-0.2))).epsilon(1e-15));
  CHECK(plain.weights[0] == Approx(2.5 / (1 + std::exp(-0.4))).epsilon(1e-15));
  CHECK(biased.indices == reference_route(m, logits, lift, 1).indices);
}

TEST_CASE("router: a group's exclusion removes the best expert", "[unit]") {
  // Sigmoid scores (bias 0) by group of 2: {0.95, 0.05} sum 1.0, {0.8, 0.7} sum 1.5, {0.6, 0.6} sum 1.2,
  // {0.1, 0.1} sum 0.2. The two best groups by top-2 sum are 1 and 2, so expert 0, the best single
  // expert, is excluded and top-2 gives experts 2 and 3; without groups it would be experts 0 and 2.
  auto logit = [](double s) { return std::log(s / (1 - s)); };
  const std::vector<double> logits{logit(0.95), logit(0.05), logit(0.8), logit(0.7),
                                   logit(0.6),  logit(0.6),  logit(0.1), logit(0.1)};
  const std::vector<double> bias(8, 0.0);
  dsx::moe_config m{.routed = 8, .top_k = 2, .groups = 4, .top_groups = 2, .score = dsx::score_fn::sigmoid,
                    .norm_topk = true, .route_scale = 1.0, .bias = true};
  const routed grouped = host_route(m, logits, bias, 1);
  CHECK(grouped.indices == std::vector<std::int32_t>{2, 3});
  CHECK(grouped.weights[0] == Approx(0.8 / 1.5).epsilon(1e-14));
  CHECK(grouped.weights[1] == Approx(0.7 / 1.5).epsilon(1e-14));
  CHECK(grouped.indices == reference_route(m, logits, bias, 1).indices);
  m.groups = m.top_groups = 1;
  CHECK(host_route(m, logits, bias, 1).indices == std::vector<std::int32_t>{0, 2});
}

TEST_CASE("router: exact ties go to the lower expert and group index", "[unit]") {
  // All scores equal: groups tie, so groups 0 and 1 are kept; experts tie, so 0, 1, 2 are taken.
  dsx::moe_config m{.routed = 8, .top_k = 3, .groups = 4, .top_groups = 2, .score = dsx::score_fn::softmax,
                    .norm_topk = false, .route_scale = 1.0, .bias = false};
  const std::vector<double> logits(8, 0.3);
  const routed r = host_route(m, logits, {}, 1);
  CHECK(r.indices == std::vector<std::int32_t>{0, 1, 2});
  for (double w : r.weights) CHECK(w == Approx(1.0 / 8).epsilon(1e-15));
}

TEST_CASE("router: non-finite router scores are reported with the token", "[unit]") {
  dsx::moe_config m{.routed = 4, .top_k = 2, .groups = 1, .top_groups = 1, .score = dsx::score_fn::softmax};
  std::vector<double> logits(12, 0.0);
  logits[6] = std::numeric_limits<double>::quiet_NaN();  // token 1
  CHECK_THROWS_WITH(host_route(m, logits, {}, 3), Catch::Contains("token 1") && Catch::Contains("non-finite"));
}

TEST_CASE("router: the permutation by expert is stable and its offsets count the assignments", "[unit]") {
  dsx::backend::host be;
  const int experts = 11;  // more experts than some draws use, so empty segments occur
  const std::int64_t n = 40;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> pick(0, experts - 1);
  std::vector<std::int32_t> ids(n);
  for (auto& e : ids) e = pick(rng);
  ids[3] = ids[17] = ids[29] = 4;  // a repeated expert, whose order must follow the assignment order
  std::vector<std::int32_t> perm(n), inv_perm(n), offsets(experts + 1);
  dsx::backend::moe_sort_by_expert(be, perm.data(), inv_perm.data(), offsets.data(), ids.data(), n, experts);

  CHECK(offsets[0] == 0);
  CHECK(offsets[experts] == n);
  for (int e = 0; e < experts; ++e) {
    std::vector<std::int32_t> expected;  // assignments of expert e in increasing order
    for (std::int64_t a = 0; a < n; ++a)
      if (ids[a] == e) expected.push_back(std::int32_t(a));
    const std::vector<std::int32_t> segment(perm.begin() + offsets[e], perm.begin() + offsets[e + 1]);
    INFO("expert " << e);
    CHECK(segment == expected);
  }
  for (std::int64_t j = 0; j < n; ++j) CHECK(inv_perm[perm[j]] == j);

  ids[7] = experts;
  CHECK_THROWS_WITH(
      dsx::backend::moe_sort_by_expert(be, perm.data(), inv_perm.data(), offsets.data(), ids.data(), n, experts),
      Catch::Contains("assignment 7") && Catch::Contains("expert id 11"));
}
