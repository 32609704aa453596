// The DeepSeekMoE layer (layers/moe.hpp) and its gate on the host backend: router backward and layer
// backward against float64 finite differences, the layer forward against a per-token evaluation of the
// definition, and float / bf16 storage against float64.
//
// Finite differences only see the gradient when no perturbation changes which experts are selected, so
// every draw is checked for routing margins (gaps between the last kept and the first dropped group, and
// between the last selected and the first unselected expert) above 1e-4, and redrawn otherwise.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/layers/moe.hpp"
#include "dsx/layers/router.hpp"
#include "support/gradcheck.hpp"
#include "support/moe.hpp"

using dsx::test::draw;
using dsx::test::draw_with_margin;
using dsx::test::layer_config;
using dsx::test::layer_fixture;
using dsx::test::max_abs;
using dsx::test::max_abs_diff;
using dsx::test::moe_case;
using dsx::test::random_vector;
using dsx::test::require_gradient;
using dsx::test::routing_margin;
using dsx::test::v2_gate;
using dsx::test::v3_gate;

namespace {

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = dsx::convert<T>(v[i]);
  return out;
}
template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = dsx::convert<double>(v[i]);
  return out;
}

// Forward and backward of a case in storage type T; results widened to float64.
struct moe_result {
  std::vector<double> y, dx, drouter, dexperts, dshared_gate_up, dshared_down;
};

template <class T>
moe_result run_layer(const moe_case& k) {
  layer_fixture<T> f(k.config, k.tokens);
  const auto x = cast<T>(k.x), router = cast<T>(k.router), bias = cast<T>(k.bias), experts = cast<T>(k.experts),
             sgu = cast<T>(k.shared_gate_up), sd = cast<T>(k.shared_down), r = cast<T>(k.r);
  const dsx::moe_weights<T> w{router.data(), bias.empty() ? nullptr : bias.data(), experts.data(), sgu.data(),
                              sd.data()};
  std::vector<T> y(x.size()), dx(x.size()), dr(router.size(), T(0.0f)), de(experts.size(), T(0.0f)),
      dgu(sgu.size(), T(0.0f)), dd(sd.size(), T(0.0f));
  f.layer.forward(f.be, w, x.data(), y.data(), k.tokens, f.scratch.data());
  f.layer.backward(f.be, w, {dr.data(), de.data(), dgu.data(), dd.data()}, x.data(), r.data(), dx.data(), k.tokens,
                   f.scratch.data());
  return {widen(y), widen(dx), widen(dr), widen(de), widen(dgu), widen(dd)};
}

using dsx::score_fn;

// The gates the layer is checked with: v3_gate and v2_gate (support/moe.hpp), and a plain softmax top-k
// with norm and no shared expert.
const dsx::moe_config plain_gate{.routed = 8, .shared = 0, .top_k = 3, .groups = 1, .top_groups = 1,
                                 .score = score_fn::softmax, .norm_topk = true, .route_scale = 1.0, .bias = false,
                                 .inter = 4};

}  // namespace

TEST_CASE("router backward: finite-difference d logits for sigmoid and softmax, with and without norm", "[grad]") {
  dsx::backend::host be;
  const score_fn score = GENERATE(score_fn::sigmoid, score_fn::softmax);
  const bool norm = GENERATE(false, true);
  const dsx::moe_config m{.routed = 8, .top_k = 3, .groups = 1, .top_groups = 1, .score = score, .norm_topk = norm,
                          .route_scale = 2.0};
  const auto p = dsx::route_params_of(m);
  const std::int64_t tokens = 5;
  std::vector<double> logits;
  for (std::uint64_t seed = 100; seed < 200; ++seed) {
    logits = random_vector(tokens * m.routed, seed, 1.5);
    if (routing_margin(m, logits, {}, tokens) > 1e-4) break;
  }
  REQUIRE(routing_margin(m, logits, {}, tokens) > 1e-4);
  const auto r = random_vector(tokens * m.top_k, 7);  // dL/dweights
  std::vector<double> scores(logits.size()), weights(r.size()), dlogits(logits.size());
  std::vector<std::int32_t> indices(r.size());
  auto loss = [&] {
    dsx::backend::moe_route(be, p, scores.data(), indices.data(), weights.data(), logits.data(),
                            static_cast<const double*>(nullptr), tokens);
    return dsx::test::dot(weights.data(), r.data(), r.size());
  };
  loss();
  dsx::backend::moe_route_backward(be, p, dlogits.data(), r.data(), scores.data(), indices.data(), tokens);
  INFO((score == score_fn::sigmoid ? "sigmoid" : "softmax") << (norm ? ", norm" : ", no norm"));
  require_gradient("logits", logits.data(), dlogits.data(), logits.size(), loss);
}

TEST_CASE("moe forward: equals the per-token sum of weighted experts plus the shared expert", "[grad]") {
  const dsx::moe_config gate = GENERATE(v3_gate, v2_gate, plain_gate);
  const std::int64_t tokens = 7, d = 8;
  const moe_case k = draw_with_margin(layer_config(gate, d), tokens, 1, 1e-4);
  layer_fixture<double> f(k.config, tokens);
  std::vector<double> y(k.x.size());
  f.layer.forward(f.be, {k.router.data(), k.bias.empty() ? nullptr : k.bias.data(), k.experts.data(),
                         k.shared_gate_up.data(), k.shared_down.data()},
                  k.x.data(), y.data(), tokens, f.scratch.data());

  // SwiGLU of one row: down · (silu(gate · x) ⊙ (up · x)), gate_up (2·inter, d), down (d, inter).
  auto swiglu = [&](const double* gate_up, const double* down, std::int64_t inter, const double* x, double* out) {
    std::vector<double> h(inter);
    for (std::int64_t i = 0; i < inter; ++i) {
      const double g = dsx::test::dot(gate_up + i * d, x, d), u = dsx::test::dot(gate_up + (inter + i) * d, x, d);
      h[i] = g / (1 + std::exp(-g)) * u;
    }
    for (std::int64_t j = 0; j < d; ++j) out[j] += dsx::test::dot(down + j * inter, h.data(), inter);
  };
  const auto p = dsx::route_params_of(gate);
  const std::int64_t inter = gate.inter, si = k.config.shared_inter(), block = 3 * inter * d;
  std::vector<double> expected(y.size(), 0.0);
  std::vector<std::int32_t> indices(tokens * gate.top_k), counts(gate.routed, 0);
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::vector<double> logits(gate.routed), scores(gate.routed), weights(gate.top_k);
    for (int e = 0; e < gate.routed; ++e) logits[e] = dsx::test::dot(&k.x[t * d], &k.router[e * d], d);
    dsx::router_scores(p, scores.data(), logits.data());
    dsx::router_select(p, &indices[t * gate.top_k], weights.data(), scores.data(), k.bias.data());
    for (int j = 0; j < gate.top_k; ++j) {
      const std::int32_t e = indices[t * gate.top_k + j];
      ++counts[e];
      std::vector<double> out(d, 0.0);
      swiglu(&k.experts[e * block], &k.experts[e * block + 2 * inter * d], inter, &k.x[t * d], out.data());
      for (std::int64_t i = 0; i < d; ++i) expected[t * d + i] += weights[j] * out[i];
    }
    if (si > 0) swiglu(k.shared_gate_up.data(), k.shared_down.data(), si, &k.x[t * d], &expected[t * d]);
  }
  CHECK(max_abs_diff(y, expected) < 1e-13 * max_abs(expected));
  CHECK(std::vector<std::int32_t>(f.layer.topk_indices(), f.layer.topk_indices() + indices.size()) == indices);
  for (int e = 0; e < gate.routed; ++e) {
    INFO("expert " << e);
    CHECK(f.layer.expert_offsets()[e + 1] - f.layer.expert_offsets()[e] == counts[e]);
  }
}

TEST_CASE("moe backward: finite-difference gradients of x, router, every expert and the shared expert", "[grad]") {
  const dsx::moe_config gate = GENERATE(v3_gate, v2_gate, plain_gate);
  const std::int64_t tokens = 7, d = 8;
  moe_case k = draw_with_margin(layer_config(gate, d), tokens, 1, 1e-4);
  layer_fixture<double> f(k.config, tokens);
  const dsx::moe_weights<double> w{k.router.data(), k.bias.empty() ? nullptr : k.bias.data(), k.experts.data(),
                                   k.shared_gate_up.data(), k.shared_down.data()};
  std::vector<double> y(k.x.size());
  auto loss = [&] {
    f.layer.forward(f.be, w, k.x.data(), y.data(), tokens, f.scratch.data());
    return dsx::test::dot(y.data(), k.r.data(), y.size());
  };
  loss();
  const std::vector<std::int32_t> offsets(f.layer.expert_offsets(), f.layer.expert_offsets() + gate.routed + 1);
  std::vector<double> dx(k.x.size()), drouter(k.router.size(), 0.0), dexperts(k.experts.size(), 0.0),
      dshared_gate_up(k.shared_gate_up.size(), 0.0), dshared_down(k.shared_down.size(), 0.0);
  f.layer.backward(f.be, w, {drouter.data(), dexperts.data(), dshared_gate_up.data(), dshared_down.data()},
                   k.x.data(), k.r.data(), dx.data(), tokens, f.scratch.data());

  INFO("gate: " << (gate.score == score_fn::sigmoid ? "sigmoid" : "softmax") << ", groups " << gate.groups
                << ", bias " << gate.bias << ", norm " << gate.norm_topk << ", shared " << gate.shared);
  require_gradient("x", k.x.data(), dx.data(), k.x.size(), loss);
  require_gradient("router", k.router.data(), drouter.data(), k.router.size(), loss);
  const std::int64_t block = 3 * gate.inter * d;
  int used = 0;
  for (int e = 0; e < gate.routed; ++e) {
    const int rows = offsets[e + 1] - offsets[e];
    if (rows == 0) {  // an unused expert gets no gradient
      CHECK(max_abs(std::vector<double>(dexperts.begin() + e * block, dexperts.begin() + (e + 1) * block)) == 0.0);
      continue;
    }
    ++used;
    INFO("expert " << e << " with " << rows << " assignments");
    require_gradient("expert", &k.experts[e * block], &dexperts[e * block], block, loss);
  }
  CHECK(used >= 2);
  if (gate.shared > 0) {
    require_gradient("shared gate_up", k.shared_gate_up.data(), dshared_gate_up.data(), k.shared_gate_up.size(), loss);
    require_gradient("shared down", k.shared_down.data(), dshared_down.data(), k.shared_down.size(), loss);
  }
}

TEST_CASE("moe: float and bf16 storage agree with float64", "[grad]") {
  // bf16 rounds x, the weights and the router logits to 8 significant bits; margins of 0.05 keep the
  // routing identical to float64's.
  const dsx::moe_config gate = GENERATE(v3_gate, v2_gate);
  const std::int64_t tokens = 7, d = 8;
  moe_case k = draw_with_margin(layer_config(gate, d), tokens, 1, 5e-2);
  // Evaluate float64 on the bf16-representable inputs so that only the arithmetic differs.
  for (auto* v : {&k.x, &k.router, &k.bias, &k.experts, &k.shared_gate_up, &k.shared_down, &k.r})
    *v = widen(cast<dsx::bf16>(*v));
  const moe_result ref = run_layer<double>(k), f32 = run_layer<float>(k), b16 = run_layer<dsx::bf16>(k);
  auto rel = [](const std::vector<double>& got, const std::vector<double>& want) {
    return max_abs_diff(got, want) / max_abs(want);
  };
  CHECK(rel(f32.y, ref.y) < 1e-5);
  CHECK(rel(f32.dx, ref.dx) < 1e-5);
  CHECK(rel(f32.drouter, ref.drouter) < 1e-5);
  CHECK(rel(f32.dexperts, ref.dexperts) < 1e-5);
  CHECK(rel(b16.y, ref.y) < 3e-2);
  CHECK(rel(b16.dx, ref.dx) < 3e-2);
  CHECK(rel(b16.dexperts, ref.dexperts) < 3e-2);
}

TEST_CASE("moe: a bad configuration, token count or missing weight is reported", "[grad]") {
  dsx::moe_config bad = v3_gate;
  bad.top_k = 5;  // more than the 2 kept groups of 2 experts hold
  CHECK_THROWS_WITH(dsx::moe<double>(layer_config(bad, 8)), Catch::Contains("moe.top_k"));

  const moe_case k = draw(layer_config(v3_gate, 8), 3, 1);
  layer_fixture<double> f(k.config, 3);
  std::vector<double> y(k.x.size());
  const dsx::moe_weights<double> no_bias{k.router.data(), nullptr, k.experts.data(), k.shared_gate_up.data(),
                                         k.shared_down.data()};
  CHECK_THROWS_WITH(f.layer.forward(f.be, no_bias, k.x.data(), y.data(), 3, f.scratch.data()),
                    Catch::Contains("weights.bias"));
  dsx::moe_weights<double> w = no_bias;
  w.bias = k.bias.data();
  CHECK_THROWS_WITH(f.layer.forward(f.be, w, k.x.data(), y.data(), 4, f.scratch.data()),
                    Catch::Contains("4 tokens") && Catch::Contains("planned for 3"));
}
