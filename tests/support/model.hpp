// Whole models in float64 on the host backend (model/transformer.hpp) for the model-level tests: the
// model type, a parameter initialisation, random token ids and the routing of every MoE layer.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/model/transformer.hpp"
#include "support/gradcheck.hpp"

namespace dsx::test {

// The smallest model with every trained feature: two main layers (dense, then MoE with a routing bias)
// and one MTP module with an MoE block. Used by the checkpoint and pre-training tests.
inline constexpr model_config tiny_mtp{
    .vocab = 13, .hidden = 8, .layers = 2, .dense_layers = 1, .dense_inter = 8,
    .mla = {.heads = 2, .q_lora = 0, .kv_lora = 4, .nope = 4, .rope = 2, .v = 4},
    .moe = {.routed = 4, .shared = 1, .top_k = 2, .groups = 2, .top_groups = 1, .score = score_fn::sigmoid,
            .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 4},
    .rms_eps = 1e-6, .mtp_depth = 1, .max_positions = 16};

template <model_config C>
using model_t = transformer<C, precision::f64, backend::host>;

// Norm weights near 1, the routing bias small, matrices with unit-variance outputs for unit inputs.
template <class Model>
void init_params(Model& m, std::uint64_t seed) {
  for (const auto& e : m.params().entries()) {
    if (e.spec.shared_copy()) continue;
    const auto& s = e.spec;
    std::vector<double> v;
    if (s.kind == param_kind::router_bias) {
      v = random_vector(std::size_t(s.numel()), seed, 0.1);
    } else if (s.is_vector()) {
      v = random_vector(std::size_t(s.numel()), seed, 0.2);
      for (auto& x : v) x += 1.0;
    } else {
      const double scale = s.kind == param_kind::embed ? 1.0 : 1.0 / std::sqrt(double(s.cols));
      v = random_vector(std::size_t(s.numel()), seed, scale);
    }
    m.set_param(e, v);
    ++seed;
  }
}

inline std::vector<std::int32_t> random_tokens(std::size_t n, int vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> dist(0, vocab - 1);
  std::vector<std::int32_t> t(n);
  for (auto& x : t) x = dist(rng);
  return t;
}

// Every MoE layer's routing of the last forward, main blocks and MTP blocks.
template <class Model>
std::vector<std::vector<std::int32_t>> routing(Model& m) {
  std::vector<std::vector<std::int32_t>> r;
  for (int l : m.moe_layers()) r.push_back(m.routed_experts(l));
  return r;
}

}  // namespace dsx::test
