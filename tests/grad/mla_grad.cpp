// Finite-difference checks of Multi-head Latent Attention (layers/mla.hpp) on the host backend: the
// gradient of x and of every weight, with and without query compression, with plain RoPE and with YaRN.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "dsx/backend/host/all.hpp"
#include "dsx/layers/mla.hpp"
#include "support/gradcheck.hpp"

using dsx::test::check_gradient;
using dsx::test::random_vector;

namespace {

// A valid model around the attention under test; only hidden, mla, rope and rms_eps reach the layer.
dsx::model_config tiny_config(int q_lora, bool yarn) {
  dsx::model_config c{.vocab = 8, .hidden = 16, .layers = 1, .dense_layers = 1, .dense_inter = 8,
                      .mla = {.heads = 2, .q_lora = q_lora, .kv_lora = 6, .nope = 4, .rope = 4, .v = 6},
                      .rms_eps = 1e-6, .max_positions = 16};
  // mscale ≠ mscale_all_dim scales cos/sin (the rotation is then not orthogonal) and the softmax scale.
  if (yarn) c.rope.yarn = {.factor = 4.0, .original_max_positions = 4, .beta_fast = 32.0, .beta_slow = 1.0,
                           .mscale = 1.0, .mscale_all_dim = 0.5};
  return c;
}

// One tensor of the test: its values, the analytic gradient and the name reported on failure.
struct tensor {
  std::string name;
  std::vector<double> value, grad;
};

bool all_finite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

void check_mla_gradients(const dsx::model_config& cfg) {
  dsx::backend::host be;
  const std::int64_t batch = 2, seq = 5, d = cfg.hidden, h = cfg.mla.heads, qk = cfg.mla.qk_head();
  const std::int64_t q_lora = cfg.mla.q_lora, kv_lora = cfg.mla.kv_lora, nope = cfg.mla.nope, v = cfg.mla.v;
  const std::int64_t q_rows = h * qk;

  // Projections scaled by 1/sqrt(fan-in) keep the scores O(1), so the softmax is far from one-hot.
  std::uint64_t seed = 100;
  auto linear = [&](const char* name, std::int64_t out, std::int64_t in) {
    return tensor{name, random_vector(out * in, ++seed, 1.0 / std::sqrt(double(in))), {}};
  };
  auto norm = [&](const char* name, std::int64_t dim) {
    auto w = random_vector(dim, ++seed, 0.2);
    for (auto& x : w) x += 1.0;
    return tensor{name, w, {}};
  };
  std::vector<tensor> t;
  if (q_lora > 0) {
    t.push_back(linear("q_a_proj", q_lora, d));
    t.push_back(norm("q_a_norm", q_lora));
    t.push_back(linear("q_b_proj", q_rows, q_lora));
  } else {
    t.push_back(linear("q_proj", q_rows, d));
  }
  t.push_back(linear("kv_a_proj", kv_lora + cfg.mla.rope, d));
  t.push_back(norm("kv_a_norm", kv_lora));
  t.push_back(linear("kv_b_proj", h * (nope + v), kv_lora));
  t.push_back(linear("o_proj", d, h * v));
  // Parameter gradients accumulate: start them from a known offset and check the increment.
  const double offset = 0.25;
  for (auto& x : t) x.grad.assign(x.value.size(), offset);

  auto find = [&](const char* name) -> tensor* {
    for (auto& x : t)
      if (x.name == name) return &x;
    return nullptr;
  };
  auto wptr = [&](const char* name) -> const double* { auto* x = find(name); return x ? x->value.data() : nullptr; };
  auto gptr = [&](const char* name) -> double* { auto* x = find(name); return x ? x->grad.data() : nullptr; };
  const dsx::mla_weights<double> w{wptr("q_proj"),    wptr("q_a_proj"),  wptr("q_a_norm"),  wptr("q_b_proj"),
                                   wptr("kv_a_proj"), wptr("kv_a_norm"), wptr("kv_b_proj"), wptr("o_proj")};
  const dsx::mla_grads<double> g{gptr("q_proj"),    gptr("q_a_proj"),  gptr("q_a_norm"),  gptr("q_b_proj"),
                                 gptr("kv_a_proj"), gptr("kv_a_norm"), gptr("kv_b_proj"), gptr("o_proj")};

  tensor x{"x", random_vector(batch * seq * d, 1), {}};
  const auto r = random_vector(batch * seq * d, 2);
  const auto table = dsx::make_rope_table<double>(cfg, int(seq));

  dsx::mla<double> layer(cfg);
  dsx::arena_plan plan;
  layer.plan(plan, batch, seq);
  dsx::arena<dsx::backend::host> act(be, plan.bytes());
  layer.bind(act.data(), plan);
  std::vector<std::byte> scratch(layer.scratch_bytes(batch, seq));

  std::vector<double> y(batch * seq * d);
  auto loss = [&] {
    layer.forward(be, w, x.value.data(), y.data(), batch, seq, table.cos.data(), table.sin.data(), scratch.data());
    return dsx::test::dot(y.data(), r.data(), y.size());
  };
  loss();
  // dx is written (=): start it from NaN so that any element left unwritten fails.
  x.grad.assign(x.value.size(), std::numeric_limits<double>::quiet_NaN());
  layer.backward(be, w, g, x.value.data(), r.data(), x.grad.data(), batch, seq, table.cos.data(), table.sin.data(),
                 scratch.data());
  REQUIRE(all_finite(x.grad));
  for (auto& p : t)
    for (auto& e : p.grad) e -= offset;

  std::vector<tensor*> checked{&x};
  for (auto& p : t) checked.push_back(&p);
  for (tensor* p : checked) {
    // Step 1e-5: this loss is O(10), so at 1e-6 rounding (~1e-16 · |L| / h) already reaches 1e-6 of the
    // smaller gradient elements, while the truncation error at 1e-5 stays below 1e-7 of them.
    const auto rep = check_gradient(p->name, p->value.data(), p->grad.data(), p->value.size(), loss, 64, 1e-5);
    const double largest = std::abs(*std::max_element(p->grad.begin(), p->grad.end(),
                                                      [](double a, double b) { return std::abs(a) < std::abs(b); }));
    INFO(rep.name << ": max rel error " << rep.max_rel_error << " over " << rep.checked << ", largest |grad| "
                  << largest);
    CHECK(rep.checked > 0);
    CHECK(largest > 1e-3);  // a vanishing gradient would make the comparison vacuous
    CHECK(rep.max_rel_error < 1e-6);
  }
}

}  // namespace

TEST_CASE("mla: finite-difference gradients with query compression (q_lora > 0)", "[grad]") {
  check_mla_gradients(tiny_config(8, false));
}

TEST_CASE("mla: finite-difference gradients without query compression (q_lora == 0)", "[grad]") {
  check_mla_gradients(tiny_config(0, false));
}

TEST_CASE("mla: finite-difference gradients with YaRN, q_lora > 0", "[grad]") {
  const auto cfg = tiny_config(8, true);
  REQUIRE(dsx::softmax_scale(cfg) != 1.0 / std::sqrt(double(cfg.mla.qk_head())));
  check_mla_gradients(cfg);
}

TEST_CASE("mla: finite-difference gradients with YaRN, q_lora == 0", "[grad]") {
  check_mla_gradients(tiny_config(0, true));
}
