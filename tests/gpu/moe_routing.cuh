// Routing margins for the MoE GPU tests. The two backends round differently on the way to the selection
// scores (CUDA's expf is within 2 ulp where glibc's is within 1; cuBLASLt and OpenBLAS sum the router
// logits in different orders; bf16 logits may then round to neighbouring values), so two experts whose
// selection scores lie within rounding of each other can come out in either order. The tests draw
// inputs with a relative margin at every decision the gate takes: the last kept group against the first
// dropped one, and each selected expert against the next candidate down to the first unselected one
// (indices are listed best first). Then both backends must select the same experts in the same order.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "dsx/layers/router.hpp"

namespace dsx::test::gpu {

// Smallest relative gap over the decisions of one token, computed in f64 with the gate's own functions:
// logits (E), bias (E) or null when p.bias is off.
inline double routing_margin(const route_params& p, const double* logits, const double* bias) {
  const int n = p.experts, size = n / p.groups;
  std::vector<double> s(std::size_t(n), 0.0), sel(std::size_t(n), 0.0);
  router_scores(p, s.data(), logits);
  for (int e = 0; e < n; ++e) sel[std::size_t(e)] = router_selection_score(p, s.data(), bias, e);
  // With the bias a selection score is a sum of terms up to about 1 in size, whose rounding is absolute.
  const double floor = p.bias ? 1.0 : 0.0;
  double margin = std::numeric_limits<double>::infinity();
  const auto gap = [&](double higher, double lower) {
    margin = std::min(margin, (higher - lower) / std::max({std::abs(higher), std::abs(lower), floor}));
  };
  std::vector<double> group_score(std::size_t(p.groups));
  for (int g = 0; g < p.groups; ++g) group_score[std::size_t(g)] = router_group_score(p, s.data(), bias, g);
  std::vector<int> groups(std::size_t(p.groups));
  std::iota(groups.begin(), groups.end(), 0);
  std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) { return group_score[a] > group_score[b]; });
  if (p.top_groups < p.groups)
    gap(group_score[std::size_t(groups[p.top_groups - 1])], group_score[std::size_t(groups[p.top_groups])]);
  std::vector<int> candidates;
  for (int r = 0; r < p.top_groups; ++r)
    for (int e = groups[std::size_t(r)] * size; e < (groups[std::size_t(r)] + 1) * size; ++e) candidates.push_back(e);
  std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) { return sel[a] > sel[b]; });
  for (int r = 0; r < p.top_k && r + 1 < int(candidates.size()); ++r)
    gap(sel[std::size_t(candidates[std::size_t(r)])], sel[std::size_t(candidates[std::size_t(r) + 1])]);
  return margin;
}

}  // namespace dsx::test::gpu
