// AdamW on the host backend (backend/host/adamw.hpp) against steps worked out by hand from the
// definition (bias-corrected moments m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t) and
// p ← p − lr · (m̂ / (√v̂ + ε) + λ · p), the paper's arrangement rather than the implementation's), the
// decay mask on a flat buffer, bf16 moments, and the checks of hyperparameters and ranges.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "dsx/backend/host/adamw.hpp"

using Catch::Matchers::Contains;
using dsx::bf16;
using dsx::backend::adamw_params;
using dsx::backend::decay_range;
using dsx::backend::host;

namespace {

// One step over a buffer of T with float moments; returns the new parameters, moments through m and v.
template <class T>
std::vector<T> step(std::vector<T> p, const std::vector<T>& g, std::vector<float>& m, std::vector<float>& v,
                    const adamw_params& hp, const std::vector<decay_range>& ranges) {
  host hb;
  adamw_update(hb, p.data(), g.data(), m.data(), v.data(), std::int64_t(p.size()), hp, ranges.data(),
               std::int64_t(ranges.size()));
  return p;
}

}  // namespace

TEMPLATE_TEST_CASE("adamw: the first step, worked by hand", "[unit]", double, float) {
  // t = 1, m = v = 0: m = (1 − β1) g, v = (1 − β2) g², so m̂ = g and v̂ = g², and each element moves by
  // lr · g / (|g| + ε), about lr · sign(g), after the decay.
  const adamw_params hp{.lr = 0.1, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .step = 1};
  std::vector<float> m(2, 0.0f), v(2, 0.0f);
  const auto p = step<TestType>({1, 1}, {0.5, -2}, m, v, hp, {{0, 1, true}, {1, 2, false}});
  const double tol = std::is_same_v<TestType, double> ? 1e-15 : 3e-7;  // f32: a few roundings
  // decayed, g = 0.5:      1 − 0.1 · (0.5 / (0.5 + 1e-8) + 0.1 · 1) = 0.99 − 0.05 / (0.5 + 1e-8)
  CHECK(double(p[0]) == Approx(0.99 - 0.05 / (0.5 + 1e-8)).epsilon(tol));
  // not decayed, g = −2:   1 − 0.1 · (−2 / (2 + 1e-8)) = 1 + 0.2 / (2 + 1e-8)
  CHECK(double(p[1]) == Approx(1 + 0.2 / (2 + 1e-8)).epsilon(tol));
  CHECK(double(m[0]) == Approx(0.05).epsilon(1e-7));     // 0.1 · 0.5
  CHECK(double(v[0]) == Approx(0.0125).epsilon(1e-7));   // 0.05 · 0.25
  CHECK(double(m[1]) == Approx(-0.2).epsilon(1e-7));     // 0.1 · −2
  CHECK(double(v[1]) == Approx(0.2).epsilon(1e-7));      // 0.05 · 4
}

TEMPLATE_TEST_CASE("adamw: a later step with moments and a gradient scale, worked by hand", "[unit]", double,
                   float) {
  // t = 3, p = 2, grad = 0.1 scaled by 0.5 → g = 0.05, m = 0.02, v = 0.001, lr = 0.01, λ = 0.1:
  //   m' = 0.9 · 0.02 + 0.1 · 0.05 = 0.023          v' = 0.95 · 0.001 + 0.05 · 0.0025 = 0.001075
  //   1 − β1³ = 1 − 0.729 = 0.271                   1 − β2³ = 1 − 0.857375 = 0.142625
  //   p' = 2 − 0.01 · ((0.023 / 0.271) / (√(0.001075 / 0.142625) + 1e-8) + 0.1 · 2)
  const adamw_params hp{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .step = 3,
                        .grad_scale = 0.5};
  std::vector<float> m{0.02f}, v{0.001f};
  const auto p = step<TestType>({2}, {0.1}, m, v, hp, {{0, 1, true}});
  const double m_hat = 0.023 / 0.271, v_hat = 0.001075 / 0.142625;
  const double expected = 2 - 0.01 * (m_hat / (std::sqrt(v_hat) + 1e-8) + 0.1 * 2);
  // f32 moments hold 0.02 and 0.001 to 6e-8 relative; the step is 0.03 of p, so p is good to ~1e-8.
  CHECK(double(p[0]) == Approx(expected).epsilon(std::is_same_v<TestType, double> ? 1e-8 : 3e-7));
  CHECK(double(m[0]) == Approx(0.023).epsilon(1e-6));
  CHECK(double(v[0]) == Approx(0.001075).epsilon(1e-6));
}

TEST_CASE("adamw: the decay mask on a flat buffer", "[unit]") {
  // Zero gradients and moments leave only the decay: decayed elements are multiplied by 1 − lr · λ,
  // the others (norms) stay bit-exact. An empty range between two others changes nothing.
  const adamw_params hp{.lr = 0.5, .weight_decay = 0.1, .step = 7};
  const std::vector<float> p0{1, -2, 3, 4, 5, 6, -7, 8};
  std::vector<float> m(8, 0.0f), v(8, 0.0f);
  const auto p = step<float>(p0, std::vector<float>(8, 0.0f), m, v, hp,
                             {{0, 3, true}, {3, 5, false}, {5, 5, false}, {5, 8, true}});
  for (int i = 0; i < 8; ++i) {
    INFO("element " << i);
    if (i == 3 || i == 4)
      CHECK(p[std::size_t(i)] == p0[std::size_t(i)]);
    else
      CHECK(p[std::size_t(i)] == float(p0[std::size_t(i)] * 0.95f));
  }
}

TEST_CASE("adamw: bf16 parameters and moments round once from the f32 update", "[unit]") {
  const adamw_params hp{.lr = 1e-3, .step = 2};
  // p0 and g0 are exact in bf16; the moments are compared through their bf16 values.
  const std::vector<float> p0{0.75f, -1.5f, 3.25f}, g0{0.25f, -0.0078125f, 2.0f}, m0{0.01f, 0.002f, -0.1f},
      v0{1e-3f, 2e-5f, 0.5f};
  const std::vector<decay_range> ranges{{0, 2, true}, {2, 3, false}};
  std::vector<bf16> pb, gb, mb, vb;
  for (std::size_t i = 0; i < 3; ++i) {
    pb.push_back(bf16(p0[i]));
    gb.push_back(bf16(g0[i]));
    mb.push_back(bf16(m0[i]));
    vb.push_back(bf16(v0[i]));
  }
  for (std::size_t i = 0; i < 3; ++i) REQUIRE((float(pb[i]) == p0[i] && float(gb[i]) == g0[i]));
  std::vector<float> m_exact(3), v_exact(3);
  for (std::size_t i = 0; i < 3; ++i) {
    m_exact[i] = float(mb[i]);
    v_exact[i] = float(vb[i]);
  }
  // The f32 step on the same values, rounded to bf16 once at the end.
  const std::vector<float> pr = step<float>(p0, g0, m_exact, v_exact, hp, ranges);
  host hb;
  adamw_update(hb, pb.data(), gb.data(), mb.data(), vb.data(), 3, hp, ranges.data(), 2);
  for (std::size_t i = 0; i < 3; ++i) {
    INFO("element " << i);
    CHECK(pb[i].bits == bf16(pr[i]).bits);
    CHECK(mb[i].bits == bf16(m_exact[i]).bits);
    CHECK(vb[i].bits == bf16(v_exact[i]).bits);
  }
}

TEST_CASE("adamw: untrained ranges are left as they are", "[unit]") {
  const adamw_params hp{.lr = 0.1, .step = 1};
  std::vector<float> m(4, 0.0f), v(4, 0.0f);
  const auto p = step<float>({1, 2, 3, 4}, {0.5, 0.5, 0.5, 0.5}, m, v, hp,
                             {{0, 1, true, true}, {1, 3, false, false}, {3, 4, false, true}});
  CHECK(p[0] < 1);  // trained: moved
  CHECK((p[1] == 2 && p[2] == 3 && m[1] == 0 && v[2] == 0));
  CHECK(p[3] < 4);
}

TEST_CASE("adamw: the master copy takes the f32 update and the bf16 parameters its rounding", "[unit]") {
  // Master weights bf16 cannot hold; bf16 gradients; three elements trained (two decayed), one not:
  // the routing bias, whose parameter moved outside the optimizer (3.0 while the master holds 0.5).
  const std::vector<decay_range> ranges{{0, 2, true, true}, {2, 3, false, true}, {3, 4, false, false}};
  const std::vector<float> master0{0.7001f, -1.3337f, 2.0049f, 0.5f};
  const std::vector<float> g0{0.25f, -0.0078125f, 2.0f, 0.0f};
  std::vector<bf16> params, grads;
  for (std::size_t i = 0; i < 4; ++i) {
    params.push_back(bf16(master0[i]));
    grads.push_back(bf16(g0[i]));
  }
  params[3] = bf16(3.0f);
  std::vector<float> master = master0, m{0.01f, 0.002f, -0.1f, 0.0f}, v{1e-3f, 2e-5f, 0.5f, 0.0f};
  // The same step in f32 on the master's values.
  std::vector<float> m_ref = m, v_ref = v;
  const std::vector<float> ref = step<float>(master0, g0, m_ref, v_ref, {.lr = 1e-3, .step = 2}, ranges);
  host hb;
  adamw_update_master(hb, master.data(), params.data(), grads.data(), m.data(), v.data(), 4, {.lr = 1e-3, .step = 2},
                      ranges.data(), 3);
  for (std::size_t i = 0; i < 3; ++i) {
    INFO("element " << i);
    CHECK(master[i] == ref[i]);
    CHECK(params[i].bits == bf16(ref[i]).bits);
    CHECK((m[i] == m_ref[i] && v[i] == v_ref[i]));
  }
  CHECK(float(params[3]) == 3.0f);  // the untrained element is left alone
  CHECK((master[3] == 0.5f && m[3] == 0 && v[3] == 0));
}

TEST_CASE("adamw: updates below bf16's resolution accumulate in the master and vanish without one", "[unit]") {
  // A constant gradient moves a weight by about lr per step (m̂ / √v̂ = 1). At 1.0, bf16 holds steps of
  // 2⁻⁷, so 200 steps of lr = 1e-4 round away one by one in bf16 but add up to 0.02 in the master.
  const std::vector<decay_range> ranges{{0, 1, false, true}};
  std::vector<bf16> plain{bf16(1.0f)}, with_master{bf16(1.0f)};
  const std::vector<bf16> g{bf16(1.0f)};
  std::vector<float> master{1.0f}, m1{0}, v1{0}, m2{0}, v2{0};
  host hb;
  for (std::int64_t t = 1; t <= 200; ++t) {
    const adamw_params hp{.lr = 1e-4, .weight_decay = 0, .step = t};
    adamw_update(hb, plain.data(), g.data(), m1.data(), v1.data(), 1, hp, ranges.data(), 1);
    adamw_update_master(hb, master.data(), with_master.data(), g.data(), m2.data(), v2.data(), 1, hp, ranges.data(), 1);
  }
  CHECK(float(plain[0]) == 1.0f);
  CHECK(master[0] == Approx(0.98).epsilon(1e-4));
  CHECK(float(with_master[0]) == float(bf16(master[0])));
  CHECK(float(with_master[0]) < 0.985f);
}

TEST_CASE("adamw: bad hyperparameters and decay ranges are rejected", "[unit]") {
  std::vector<float> p(4, 1.0f), g(4, 0.5f), m(4, 0.0f), v(4, 0.0f);
  host hb;
  const std::vector<decay_range> good{{0, 2, true}, {2, 4, false}};
  auto run = [&](const adamw_params& hp, const std::vector<decay_range>& r) {
    adamw_update(hb, p.data(), g.data(), m.data(), v.data(), 4, hp, r.data(), std::int64_t(r.size()));
  };
  const adamw_params ok{.lr = 1e-3};
  CHECK_NOTHROW(run(ok, good));
  const std::vector<float> after_good = p;

  adamw_params bad = ok;
  bad.beta1 = 1.0;
  CHECK_THROWS_WITH(run(bad, good), Contains("beta1") && Contains("[0, 1)"));
  bad = ok;
  bad.beta2 = -0.1;
  CHECK_THROWS_WITH(run(bad, good), Contains("beta2"));
  bad = ok;
  bad.step = 0;
  CHECK_THROWS_WITH(run(bad, good), Contains("step"));
  bad = ok;
  bad.lr = -1e-3;
  CHECK_THROWS_WITH(run(bad, good), Contains("lr"));
  bad = ok;
  bad.grad_scale = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(run(bad, good), Contains("grad_scale"));

  CHECK_THROWS_WITH(run(ok, {{0, 2, true}, {3, 4, false}}), Contains("range 1 begins at 3, expected 2"));
  CHECK_THROWS_WITH(run(ok, {{0, 3, true}, {2, 4, false}}), Contains("range 1 begins at 2, expected 3"));
  CHECK_THROWS_WITH(run(ok, {{0, 2, true}, {2, 3, false}}), Contains("end at 3, expected n = 4"));
  CHECK_THROWS_WITH(run(ok, {{1, 4, true}}), Contains("range 0 begins at 1, expected 0"));
  CHECK_THROWS_WITH(run(ok, {{0, 2, true}, {2, 1, true}, {1, 4, true}}), Contains("ends before it begins"));
  CHECK_THROWS_WITH(run(ok, {}), Contains("no decay ranges"));
  // The failed calls wrote nothing.
  CHECK(p == after_good);
}
