// Multi-token prediction (layers/mtp.hpp) inside a whole model (model/transformer.hpp) on the host
// backend in float64:
//  - finite differences of the combined loss L = L_main + (λ / D) Σ_k L_MTP^k w.r.t. every MTP tensor,
//    the shared embedding and head, and a sample of main-model tensors, for depth 1 and 2, with and
//    without q-LoRA, with an MoE block in each module;
//  - with λ = 0 every gradient equals that of the same model without MTP;
//  - on a toy whose blocks are the identity, the main and per-depth losses equal a direct evaluation of
//    the definition (which tokens feed module k, which targets it predicts, which positions count).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/model/transformer.hpp"
#include "support/gradcheck.hpp"
#include "support/model.hpp"

using dsx::param_kind;
using dsx::test::check_gradient;
using dsx::test::grad_report;
using dsx::test::init_params;
using dsx::test::model_t;
using dsx::test::random_tokens;
using dsx::test::routing;

namespace {

// Two main layers (dense, then MoE) and MoE blocks in the modules, V3-style gate.
constexpr dsx::model_config small(int mtp_depth, int q_lora) {
  return {.vocab = 11, .hidden = 8, .layers = 2, .dense_layers = 1, .dense_inter = 8,
          .mla = {.heads = 2, .q_lora = q_lora, .kv_lora = 4, .nope = 4, .rope = 2, .v = 4},
          .moe = {.routed = 4, .shared = 1, .top_k = 2, .groups = 2, .top_groups = 1, .score = dsx::score_fn::sigmoid,
                  .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 4},
          .rms_eps = 1e-6, .mtp_depth = mtp_depth, .max_positions = 16};
}

// The main-model tensors checked besides the embedding and head: a sample over both layers.
bool sampled_main(const dsx::param_spec& s, const dsx::model_config& c) {
  if (s.mtp(c)) return false;
  switch (s.kind) {
    case param_kind::final_norm: case param_kind::attn_norm: case param_kind::q_proj: case param_kind::q_b_proj:
    case param_kind::kv_a_proj: case param_kind::mlp_down: case param_kind::router: case param_kind::shared_down:
      return true;
    case param_kind::expert_gate: return s.expert == 0;
    default: return false;
  }
}

// Central differences with h = 1e-6 on a loss of a few units carry a round-off near 1e-9, so the
// relative error is taken against at least 1e-2 (as in moe_grad.cpp): a gradient element smaller than
// that is held to an absolute error of 1e-8 instead. (Measured: at most 8e-8 over all checked tensors.)
template <dsx::model_config C>
void check_model_gradients(double lambda, std::uint64_t seed) {
  dsx::backend::host be;
  const std::int64_t batch = 2, seq = 6;
  model_t<C> m(be, batch, seq);
  init_params(m, seed);
  m.set_mtp_weight(lambda);
  const auto tokens = random_tokens(std::size_t(batch * seq), C.vocab, seed + 1000);

  m.zero_grad();
  m.forward(tokens, batch, seq);
  m.backward();
  const auto base_routing = routing(m);
  const std::vector<double> grads(m.grad_data(), m.grad_data() + m.params().size());
  REQUIRE(m.last_mtp_losses().size() == std::size_t(C.mtp_depth));

  int flips = 0;  // evaluations whose routing differs from the base: finite differences would be invalid there
  auto loss = [&] {
    const double l = m.forward(tokens, batch, seq);
    flips += routing(m) != base_routing;
    return l;
  };
  int mtp_tensors = 0;
  for (const auto& e : m.params().entries()) {
    const auto& s = e.spec;
    if (!s.trained()) continue;
    const bool mtp = s.mtp(C) && !s.shared_copy();
    if (!(mtp || s.kind == param_kind::embed || s.kind == param_kind::head || sampled_main(s, C))) continue;
    mtp_tensors += mtp;
    const grad_report rep = check_gradient(e.name, m.param_data() + e.offset, grads.data() + e.offset,
                                           std::size_t(s.numel()), loss, 8, 1e-6, 1e-2);
    INFO(rep.name << ": max relative error " << rep.max_rel_error << " over " << rep.checked << " elements");
    CHECK(rep.max_rel_error < 1e-6);
  }
  // Per module: enorm, hnorm, eh_proj, head_norm, the block's 2 norms, attention and MoE.
  const int attention = C.mla.q_lora > 0 ? 7 : 5, moe = 1 + 3 * C.moe.routed + 3;
  CHECK(mtp_tensors == C.mtp_depth * (4 + 2 + attention + moe));
  CHECK(flips == 0);
}

}  // namespace

TEST_CASE("mtp: finite-difference gradients of the combined loss, depth 1 and 2, with and without q-LoRA", "[grad]") {
  SECTION("depth 1, q-LoRA") { check_model_gradients<small(1, 6)>(0.3, 11); }
  SECTION("depth 1, no q-LoRA") { check_model_gradients<small(1, 0)>(0.3, 21); }
  SECTION("depth 2, q-LoRA") { check_model_gradients<small(2, 6)>(0.7, 31); }
  SECTION("depth 2, no q-LoRA") { check_model_gradients<small(2, 0)>(0.7, 41); }
}

TEST_CASE("mtp: with weight 0 the gradients equal the model's without MTP", "[grad]") {
  constexpr dsx::model_config with = small(2, 6), without = small(0, 6);
  dsx::backend::host be;
  const std::int64_t batch = 2, seq = 6;
  model_t<with> a(be, batch, seq);
  model_t<without> b(be, batch, seq);
  init_params(a, 5);
  for (const auto& e : b.params().entries()) b.set_param(e, a.get_param(*a.params().find(e.name)));
  const auto tokens = random_tokens(std::size_t(batch * seq), with.vocab, 6);
  a.set_mtp_weight(0.0);
  const double la = a.forward(tokens, batch, seq), lb = b.forward(tokens, batch, seq);
  a.backward();
  b.backward();
  CHECK(la == lb);
  CHECK(a.last_lm_loss() == lb);
  for (double l : a.last_mtp_losses()) CHECK(l > 0);  // the modules still ran and report their losses
  for (const auto& e : a.params().entries()) {
    if (e.spec.shared_copy()) continue;  // the main embedding and head, compared under their own names
    INFO(e.name);
    const auto ga = a.get_grad(e);
    if (e.spec.mtp(with)) {
      CHECK(std::all_of(ga.begin(), ga.end(), [](double g) { return g == 0.0; }));
    } else {
      const auto gb = b.get_grad(*b.params().find(e.name));
      CHECK(ga == gb);
    }
  }
}

namespace {

// One dense main layer, MoE blocks in two modules; all blocks are made the identity (o_proj, the dense
// down_proj, every expert's and the shared expert's down_proj zero) so the losses have a closed form.
constexpr dsx::model_config toy = [] {
  dsx::model_config c = small(2, 6);
  c.layers = 1;
  c.dense_layers = 1;
  return c;
}();

std::vector<double> rms_norm(const double* x, const std::vector<double>& w, double eps) {
  const std::size_t d = w.size();
  double ss = 0;
  for (std::size_t i = 0; i < d; ++i) ss += x[i] * x[i];
  const double r = 1 / std::sqrt(ss / double(d) + eps);
  std::vector<double> y(d);
  for (std::size_t i = 0; i < d; ++i) y[i] = x[i] * r * w[i];
  return y;
}

// −log softmax(head · x)[target]; head (V, d).
double cross_entropy(const std::vector<double>& head, const std::vector<double>& x, std::int32_t target) {
  const std::size_t d = x.size(), v = head.size() / d;
  std::vector<double> z(v);
  for (std::size_t j = 0; j < v; ++j) z[j] = dsx::test::dot(&head[j * d], x.data(), d);
  const double mx = *std::max_element(z.begin(), z.end());
  double s = 0;
  for (double t : z) s += std::exp(t - mx);
  return mx + std::log(s) - z[std::size_t(target)];
}

}  // namespace

TEST_CASE("mtp: the losses use the right tokens, targets and positions (identity blocks)", "[grad]") {
  dsx::backend::host be;
  const std::int64_t batch = 2, seq = 7, d = toy.hidden;
  model_t<toy> m(be, batch, seq);
  init_params(m, 77);
  for (const auto& e : m.params().entries()) {
    const auto k = e.spec.kind;
    if (k == param_kind::o_proj || k == param_kind::mlp_down || k == param_kind::shared_down ||
        k == param_kind::expert_down)
      m.set_param(e, std::vector<double>(std::size_t(e.spec.numel()), 0.0));
  }
  const double lambda = 0.45;
  m.set_mtp_weight(lambda);
  const auto tokens = random_tokens(std::size_t(batch * seq), toy.vocab, 78);
  const double loss = m.forward(tokens, batch, seq);

  auto get = [&](param_kind k, int layer = -1) { return m.get_param(*m.params().find(k, layer)); };
  const auto embed = get(param_kind::embed), head = get(param_kind::head), final_norm = get(param_kind::final_norm);
  auto token = [&](std::int64_t b, std::int64_t i) { return tokens[std::size_t(b * seq + i)]; };

  // Main model: h^0_i = Emb(t_i) (the block is the identity), predicting t_{i+1} for i + 1 < seq.
  double main_sum = 0;
  std::vector<std::vector<double>> h(std::size_t(batch * seq));  // h^{k−1}, starting with h^0
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t i = 0; i < seq; ++i) {
      const double* x = &embed[std::size_t(token(b, i)) * d];
      h[std::size_t(b * seq + i)].assign(x, x + d);
      if (i + 1 < seq) main_sum += cross_entropy(head, rms_norm(x, final_norm, toy.rms_eps), token(b, i + 1));
    }
  const double main_loss = main_sum / double(batch * (seq - 1));
  CHECK(m.last_lm_loss() == Approx(main_loss).epsilon(1e-12));

  // Module k: h^k_i = eh_proj · [enorm(Emb(t_{i+k})) ; hnorm(h^{k−1}_i)], the embedding half zero where
  // i + k ≥ seq; loss against t_{i+k+1} over the i + k + 1 < seq.
  double expected = main_loss;
  for (int k = 1; k <= toy.mtp_depth; ++k) {
    const int l = toy.layers + k - 1;
    const auto enorm = get(param_kind::mtp_enorm, l), hnorm = get(param_kind::mtp_hnorm, l),
               eh = get(param_kind::mtp_eh_proj, l), head_norm = get(param_kind::mtp_head_norm, l);
    double sum = 0;
    std::int64_t counted = 0;
    std::vector<std::vector<double>> next(h.size());
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t i = 0; i < seq; ++i) {
        std::vector<double> cat(std::size_t(2 * d), 0.0);
        if (i + k < seq) {
          const auto e = rms_norm(&embed[std::size_t(token(b, i + k)) * d], enorm, toy.rms_eps);
          std::copy(e.begin(), e.end(), cat.begin());
        }
        const auto hn = rms_norm(h[std::size_t(b * seq + i)].data(), hnorm, toy.rms_eps);
        std::copy(hn.begin(), hn.end(), cat.begin() + d);
        auto& out = next[std::size_t(b * seq + i)];
        out.resize(std::size_t(d));
        for (std::int64_t r = 0; r < d; ++r)
          out[std::size_t(r)] = dsx::test::dot(&eh[std::size_t(r * 2 * d)], cat.data(), std::size_t(2 * d));
        if (i + k + 1 < seq) {
          sum += cross_entropy(head, rms_norm(out.data(), head_norm, toy.rms_eps), token(b, i + k + 1));
          ++counted;
        }
      }
    CHECK(counted == batch * (seq - k - 1));
    INFO("depth " << k);
    CHECK(m.last_mtp_losses()[std::size_t(k - 1)] == Approx(sum / double(counted)).epsilon(1e-12));
    expected += lambda / toy.mtp_depth * sum / double(counted);
    h = std::move(next);
  }
  CHECK(loss == Approx(expected).epsilon(1e-12));
}

TEST_CASE("mtp: a bad loss weight, module depth or sequence length is reported", "[grad]") {
  dsx::backend::host be;
  model_t<toy> m(be, 1, 6);
  CHECK_THROWS_WITH(m.set_mtp_weight(-0.1), Catch::Contains("MTP loss weight") && Catch::Contains("non-negative"));
  CHECK_THROWS_WITH(m.set_mtp_weight(std::nan("")), Catch::Contains("MTP loss weight"));
  const std::vector<std::int32_t> three{1, 2, 3};
  CHECK_THROWS_WITH(m.forward(three, 1, 3), Catch::Contains("at least 4 tokens") && Catch::Contains("got 3"));
  CHECK_NOTHROW(m.forward(three, 1, 3, false));  // inference never runs the modules
  CHECK_THROWS_WITH(m.backward(), Catch::Contains("backward() needs a forward() with loss"));
  CHECK_THROWS_WITH(dsx::mtp_module<double>(toy, 3), Catch::Contains("depth 3") && Catch::Contains("mtp_depth (2)"));
}
