// The sequence-wise balance loss's backward (layers/router.hpp, layers/moe.hpp) against float64 finite
// differences, with α = 0.1 so that its share of the gradient is far above the tolerance:
//  - one MoE layer over two sequences: L = Σ y · r + L_Bal w.r.t. x and the router weight, for a V3-style
//    sigmoid gate with the correction bias and group limit, and a V2-style softmax gate;
//  - whole models (model/transformer.hpp): the combined loss (cross-entropy, MTP, every MoE layer's
//    balance loss) w.r.t. every MoE layer's router, the embedding (the model's input) and a sample of
//    other tensors, with an MTP module whose block is MoE, and a softmax model without bias or MTP.
//
// Finite differences only see the gradient when no perturbation changes the selection (the balance
// loss's f counts it), so the layer draws are redrawn until their routing margins exceed 1e-4 (as in
// moe_grad.cpp), and the model checks count evaluations whose routing differs and require none.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/layers/moe.hpp"
#include "dsx/model/transformer.hpp"
#include "support/gradcheck.hpp"

using dsx::param_kind;
using dsx::score_fn;
using dsx::test::check_gradient;
using dsx::test::grad_report;
using dsx::test::random_vector;

namespace {

// Central differences with h = 1e-6 on losses of a few units carry a round-off near 1e-9, so the relative
// error is taken against at least 1e-2 (as in moe_grad.cpp): an element whose gradient is smaller is
// held to an absolute error of 1e-8 instead.
void require_gradient(const std::string& name, double* values, const double* analytic, std::size_t n,
                      const std::function<double()>& loss, std::size_t max_checks) {
  const grad_report rep = check_gradient(name, values, analytic, n, loss, max_checks, 1e-6, 1e-2);
  INFO(rep.name << ": max relative error " << rep.max_rel_error << " over " << rep.checked << " elements");
  CHECK(rep.checked >= std::min(n, max_checks));
  CHECK(rep.max_rel_error < 1e-6);
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// A complete model configuration around an MoE block (the layer validates the whole configuration).
dsx::model_config layer_config(const dsx::moe_config& m, int hidden) {
  return {.vocab = 16, .hidden = hidden, .layers = 2, .dense_layers = 1, .dense_inter = 8,
          .mla = {.heads = 2, .q_lora = 0, .kv_lora = 4, .nope = 4, .rope = 2, .v = 4},
          .moe = m, .max_positions = 16};
}

// Smallest routing margin over the tokens: the gap between the last kept and the first dropped group
// score, and between the last selected and the first unselected candidate's selection score.
double routing_margin(const dsx::moe_config& m, const std::vector<double>& x, const std::vector<double>& router,
                      const std::vector<double>& bias, std::int64_t tokens, std::size_t d) {
  const auto p = dsx::route_params_of(m);
  const std::size_t n = std::size_t(m.routed), size = n / std::size_t(m.groups);
  const double* b = bias.empty() ? nullptr : bias.data();
  double margin = std::numeric_limits<double>::infinity();
  auto gap = [&](std::vector<double> v, int keep) {  // between the keep-th and (keep+1)-th largest
    if (std::size_t(keep) >= v.size()) return;
    std::sort(v.begin(), v.end(), std::greater<>());
    margin = std::min(margin, v[std::size_t(keep) - 1] - v[std::size_t(keep)]);
  };
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::vector<double> logits(n), s(n);
    for (std::size_t e = 0; e < n; ++e) logits[e] = dsx::test::dot(&x[std::size_t(t) * d], &router[e * d], d);
    dsx::router_scores(p, s.data(), logits.data());
    std::vector<double> groups(std::size_t(m.groups));
    for (int g = 0; g < m.groups; ++g) groups[std::size_t(g)] = dsx::router_group_score(p, s.data(), b, g);
    gap(groups, m.top_groups);
    std::vector<int> order(std::size_t(m.groups));
    for (int g = 0; g < m.groups; ++g) order[std::size_t(g)] = g;
    std::stable_sort(order.begin(), order.end(),
                     [&](int u, int v) { return groups[std::size_t(u)] > groups[std::size_t(v)]; });
    std::vector<double> candidates;
    for (int r = 0; r < m.top_groups; ++r) {
      const std::size_t first = std::size_t(order[std::size_t(r)]) * size;
      for (std::size_t e = first; e < first + size; ++e)
        candidates.push_back(dsx::router_selection_score(p, s.data(), b, int(e)));
    }
    gap(candidates, m.top_k);
  }
  return margin;
}

// One layer's inputs in float64 and a fixed output gradient r, small (0.1) so that the balance loss's
// gradient is not swamped by that of Σ y · r.
struct moe_case {
  std::vector<double> x, router, bias, experts, shared_gate_up, shared_down, r;
  dsx::moe_weights<double> view() const {
    return {router.data(), bias.empty() ? nullptr : bias.data(), experts.data(), shared_gate_up.data(),
            shared_down.data()};
  }
};

moe_case draw_with_margin(const dsx::model_config& c, std::int64_t tokens, std::uint64_t seed, double min_margin) {
  const std::int64_t d = c.hidden, e = c.moe.routed, inter = c.moe.inter, si = c.shared_inter();
  for (std::uint64_t s = seed; s < seed + 100 * 16; s += 16) {
    moe_case k{random_vector(std::size_t(tokens * d), s), random_vector(std::size_t(e * d), s + 1, 0.5),
               c.moe.bias ? random_vector(std::size_t(e), s + 2, 0.1) : std::vector<double>{},
               random_vector(std::size_t(e * 3 * inter * d), s + 3, 0.5),
               random_vector(std::size_t(2 * si * d), s + 4, 0.5),
               random_vector(std::size_t(d * si), s + 5, 0.5), random_vector(std::size_t(tokens * d), s + 6, 0.1)};
    if (routing_margin(c.moe, k.x, k.router, k.bias, tokens, std::size_t(d)) > min_margin) return k;
  }
  FAIL("no draw with routing margins above " << min_margin);
  return {};
}

const dsx::moe_config v3_gate{.routed = 8, .shared = 1, .top_k = 2, .groups = 4, .top_groups = 2,
                              .score = score_fn::sigmoid, .norm_topk = true, .route_scale = 2.5, .bias = true,
                              .inter = 4};
const dsx::moe_config v2_gate{.routed = 8, .shared = 2, .top_k = 2, .groups = 4, .top_groups = 2,
                              .score = score_fn::softmax, .norm_topk = false, .route_scale = 1.5, .bias = false,
                              .inter = 4};

}  // namespace

TEST_CASE("balance loss backward: finite differences of Σ y·r + L_Bal w.r.t. x and the router", "[grad]") {
  const dsx::moe_config gate = GENERATE(v3_gate, v2_gate);
  const std::int64_t batch = 2, seq = 4, tokens = batch * seq;
  const int d = 8;
  const double alpha = 0.1;
  const auto c = layer_config(gate, d);
  moe_case k = draw_with_margin(c, tokens, 1, 1e-4);
  dsx::backend::host be;
  dsx::moe<double> layer(c);
  dsx::arena_plan plan;
  layer.plan(plan, tokens);
  dsx::arena<dsx::backend::host> activations(be, plan.bytes());
  layer.bind(activations.data(), plan);
  std::vector<std::byte> scratch(layer.scratch_bytes(tokens));
  layer.set_sequences(batch, seq);
  std::vector<double> y(k.x.size());

  // Gradients of x and the router for a balance weight.
  auto gradients = [&](double weight) {
    layer.set_balance_weight(weight);
    layer.forward(be, k.view(), k.x.data(), y.data(), tokens, scratch.data());
    std::vector<double> dx(k.x.size()), drouter(k.router.size(), 0.0), dexperts(k.experts.size(), 0.0),
        dgu(k.shared_gate_up.size(), 0.0), dd(k.shared_down.size(), 0.0);
    layer.backward(be, k.view(), {drouter.data(), dexperts.data(), dgu.data(), dd.data()}, k.x.data(), k.r.data(),
                   dx.data(), tokens, scratch.data());
    return std::pair{dx, drouter};
  };
  const auto [dx0, drouter0] = gradients(0.0);
  const auto [dx, drouter] = gradients(alpha);
  INFO("gate: " << (gate.score == score_fn::sigmoid ? "sigmoid, bias" : "softmax") << ", L_Bal "
                << layer.balance_loss(be));
  auto loss = [&] {
    layer.forward(be, k.view(), k.x.data(), y.data(), tokens, scratch.data());
    return dsx::test::dot(y.data(), k.r.data(), y.size()) + layer.balance_loss(be);
  };
  // The balance term's share of the router gradient (measured 0.02 and 0.04 of its largest element)
  // must be far above the finite-difference tolerance (1e-6), so that a missing or wrong balance
  // backward fails the checks below.
  const double share = max_abs_diff(drouter, drouter0) / max_abs(drouter);
  INFO("balance share of the router gradient " << share);
  CHECK(share > 1e-3);
  CHECK(max_abs_diff(dx, dx0) > 0.0);
  require_gradient("x", k.x.data(), dx.data(), k.x.size(), loss, k.x.size());
  require_gradient("router", k.router.data(), drouter.data(), k.router.size(), loss, k.router.size());
}

namespace {

// Two main layers (dense, then MoE) and one MTP module with an MoE block (MoE layers 1 and 2), V3 gate.
constexpr dsx::model_config sigmoid_model{
    .vocab = 11, .hidden = 8, .layers = 2, .dense_layers = 1, .dense_inter = 8,
    .mla = {.heads = 2, .q_lora = 6, .kv_lora = 4, .nope = 4, .rope = 2, .v = 4},
    .moe = {.routed = 4, .shared = 1, .top_k = 2, .groups = 2, .top_groups = 1, .score = score_fn::sigmoid,
            .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 4},
    .rms_eps = 1e-6, .mtp_depth = 1, .max_positions = 16};
// Two MoE layers with a softmax gate, no bias, no MTP.
constexpr dsx::model_config softmax_model{
    .vocab = 11, .hidden = 8, .layers = 2, .dense_layers = 0,
    .mla = {.heads = 2, .q_lora = 0, .kv_lora = 4, .nope = 4, .rope = 2, .v = 4},
    .moe = {.routed = 6, .shared = 0, .top_k = 2, .groups = 1, .top_groups = 1, .score = score_fn::softmax,
            .norm_topk = false, .route_scale = 1.0, .bias = false, .inter = 4},
    .rms_eps = 1e-6, .max_positions = 16};

template <dsx::model_config C>
using model_t = dsx::transformer<C, dsx::precision::f64, dsx::backend::host>;

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

std::vector<std::int32_t> random_tokens(std::size_t n, int vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> dist(0, vocab - 1);
  std::vector<std::int32_t> t(n);
  for (auto& x : t) x = dist(rng);
  return t;
}

template <class Model>
std::vector<std::vector<std::int32_t>> routing(Model& m) {
  std::vector<std::vector<std::int32_t>> r;
  for (int l : m.moe_layers()) r.push_back(m.routed_experts(l));
  return r;
}

template <dsx::model_config C>
void check_model_gradients(std::uint64_t seed) {
  dsx::backend::host be;
  const std::int64_t batch = 2, seq = 6;
  model_t<C> m(be, batch, seq);
  init_params(m, seed);
  const auto tokens = random_tokens(std::size_t(batch * seq), C.vocab, seed + 1000);
  auto gradients = [&](double alpha) {
    m.set_balance_weight(alpha);
    m.zero_grad();
    m.forward(tokens, batch, seq);
    m.backward();
    return std::vector<double>(m.grad_data(), m.grad_data() + m.params().size());
  };
  const auto plain = gradients(0.0);
  const auto grads = gradients(0.1);
  const auto base_routing = routing(m);
  const double total = m.forward(tokens, batch, seq);
  INFO("balance loss " << m.last_balance_loss() << " of the loss " << total);
  REQUIRE(m.last_balance_loss() > 0);

  int flips = 0;  // evaluations whose routing differs from the base: finite differences would be invalid there
  auto loss = [&] {
    const double l = m.forward(tokens, batch, seq);
    flips += routing(m) != base_routing;
    return l;
  };
  int routers = 0;
  for (const auto& e : m.params().entries()) {
    const auto& s = e.spec;
    const bool router = s.kind == param_kind::router;
    if (!(router || s.kind == param_kind::embed || s.kind == param_kind::ffn_norm || s.kind == param_kind::kv_a_proj))
      continue;
    if (router) {
      // The balance term's share of each router's gradient (measured 0.25–1.3 of its largest element),
      // far above the tolerance as in the layer test.
      auto slice = [&](const std::vector<double>& g) {
        return std::vector<double>(g.begin() + e.offset, g.begin() + e.offset + s.numel());
      };
      const double share = max_abs_diff(slice(grads), slice(plain)) / max_abs(slice(grads));
      INFO(e.name << ": balance share " << share);
      CHECK(share > 1e-3);
      ++routers;
    }
    require_gradient(e.name, m.param_data() + e.offset, grads.data() + e.offset, std::size_t(s.numel()), loss,
                     router ? std::size_t(s.numel()) : 16);
  }
  CHECK(routers == int(m.moe_layers().size()));
  CHECK(flips == 0);
}

}  // namespace

TEST_CASE("balance loss backward: finite differences through whole models", "[grad]") {
  SECTION("sigmoid gate with bias, an MTP module with an MoE block") { check_model_gradients<sigmoid_model>(11); }
  SECTION("softmax gate, two MoE layers") { check_model_gradients<softmax_model>(21); }
}
