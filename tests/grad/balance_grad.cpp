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
#include <string>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/layers/moe.hpp"
#include "dsx/model/transformer.hpp"
#include "support/gradcheck.hpp"
#include "support/model.hpp"
#include "support/moe.hpp"

using dsx::param_kind;
using dsx::score_fn;
using dsx::test::draw_with_margin;
using dsx::test::init_params;
using dsx::test::layer_config;
using dsx::test::layer_fixture;
using dsx::test::max_abs;
using dsx::test::max_abs_diff;
using dsx::test::model_t;
using dsx::test::moe_case;
using dsx::test::random_tokens;
using dsx::test::require_gradient;
using dsx::test::routing;
using dsx::test::v2_gate;
using dsx::test::v3_gate;

TEST_CASE("balance loss backward: finite differences of Σ y·r + L_Bal w.r.t. x and the router", "[grad]") {
  const dsx::moe_config gate = GENERATE(v3_gate, v2_gate);
  const std::int64_t batch = 2, seq = 4, tokens = batch * seq;
  const int d = 8;
  const double alpha = 0.1;
  const auto c = layer_config(gate, d);
  // The output gradient r is small (0.1) so that the balance loss's gradient is not swamped by that of
  // Σ y · r.
  moe_case k = draw_with_margin(c, tokens, 1, 1e-4, 0.1);
  layer_fixture f(c, tokens);
  f.layer.set_sequences(batch, seq);
  std::vector<double> y(k.x.size());

  // Gradients of x and the router for a balance weight.
  auto gradients = [&](double weight) {
    f.layer.set_balance_weight(weight);
    f.layer.forward(f.be, k.view(), k.x.data(), y.data(), tokens, f.scratch.data());
    std::vector<double> dx(k.x.size()), drouter(k.router.size(), 0.0), dexperts(k.experts.size(), 0.0),
        dgu(k.shared_gate_up.size(), 0.0), dd(k.shared_down.size(), 0.0);
    f.layer.backward(f.be, k.view(), {drouter.data(), dexperts.data(), dgu.data(), dd.data()}, k.x.data(),
                     k.r.data(), dx.data(), tokens, f.scratch.data());
    return std::pair{dx, drouter};
  };
  const auto [dx0, drouter0] = gradients(0.0);
  const auto [dx, drouter] = gradients(alpha);
  INFO("gate: " << (gate.score == score_fn::sigmoid ? "sigmoid, bias" : "softmax") << ", L_Bal "
                << f.layer.balance_loss(f.be));
  auto loss = [&] {
    f.layer.forward(f.be, k.view(), k.x.data(), y.data(), tokens, f.scratch.data());
    return dsx::test::dot(y.data(), k.r.data(), y.size()) + f.layer.balance_loss(f.be);
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
