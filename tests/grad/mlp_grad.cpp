// Finite-difference checks of the SwiGLU FFN (layers/mlp.hpp) and its primitives on the host backend.
#include <catch2/catch.hpp>

#include "dsx/backend/host/all.hpp"
#include "dsx/layers/mlp.hpp"
#include "support/gradcheck.hpp"

using dsx::test::check_gradient;
using dsx::test::random_vector;

TEST_CASE("mlp: finite-difference gradients of x, gate_up and down", "[grad]") {
  dsx::backend::host be;
  const std::int64_t tokens = 5, hidden = 6, inter = 4;
  auto x = random_vector(tokens * hidden, 1);
  auto wgu = random_vector(2 * inter * hidden, 2, 0.5);
  auto wd = random_vector(hidden * inter, 3, 0.5);
  const auto r = random_vector(tokens * hidden, 4);

  dsx::mlp<double> layer(hidden, inter);
  dsx::arena_plan plan;
  layer.plan(plan, tokens);
  dsx::arena<dsx::backend::host> act(be, plan.bytes());
  layer.bind(act.data(), plan);
  std::vector<std::byte> scratch(layer.scratch_bytes(tokens));

  std::vector<double> y(tokens * hidden);
  auto loss = [&] {
    layer.forward(be, {wgu.data(), wd.data()}, x.data(), y.data(), tokens);
    return dsx::test::dot(y.data(), r.data(), y.size());
  };
  loss();
  std::vector<double> dx(x.size()), dgu(wgu.size()), dwd(wd.size());
  layer.backward(be, {wgu.data(), wd.data()}, {dgu.data(), dwd.data()}, x.data(), r.data(), dx.data(), tokens,
                 scratch.data());
  for (auto rep : {check_gradient("x", x.data(), dx.data(), x.size(), loss),
                   check_gradient("gate_up", wgu.data(), dgu.data(), wgu.size(), loss),
                   check_gradient("down", wd.data(), dwd.data(), wd.size(), loss)}) {
    INFO(rep.name << " max rel error " << rep.max_rel_error << " over " << rep.checked);
    CHECK(rep.checked > 0);
    CHECK(rep.max_rel_error < 1e-6);
  }
}
