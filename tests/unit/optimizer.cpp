// The optimizer around a model: learning-rate and batch schedules, the decay mask from the parameter
// table, clipping, and that AdamW steps fit a fixed batch.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "dsx/backend/host/all.hpp"
#include "dsx/config/presets.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/transformer.hpp"
#include "dsx/optim/adamw.hpp"
#include "dsx/optim/schedule.hpp"

TEST_CASE("lr schedule: warm-up, constant, cosine, final", "[unit]") {
  const dsx::lr_schedule s{.peak = 1.0, .final = 0.1, .warmup = 4, .constant = 3, .decay = 10};
  CHECK(s.at(0) == Approx(0.25));
  CHECK(s.at(3) == Approx(1.0));
  CHECK(s.at(4) == Approx(1.0));
  CHECK(s.at(6) == Approx(1.0));
  CHECK(s.at(7) == Approx(1.0));                                                   // cosine starts at the peak
  CHECK(s.at(7 + 5) == Approx(0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi / 2))));  // half-way
  CHECK(s.at(7 + 10) == Approx(0.1));
  CHECK(s.at(1000) == Approx(0.1));
  for (std::int64_t i = 7; i < 17; ++i) CHECK(s.at(i + 1) <= s.at(i));
}

TEST_CASE("batch ramp grows linearly to the target", "[unit]") {
  const dsx::batch_ramp r{.start = 4, .target = 16, .ramp_tokens = 1200};
  CHECK(r.at(0) == 4);
  CHECK(r.at(600) == 10);
  CHECK(r.at(1200) == 16);
  CHECK(dsx::batch_ramp{.target = 8}.at(0) == 8);
}

TEST_CASE("decay mask: matrices decay, norms and the routing bias do not", "[unit]") {
  const dsx::param_table table(dsx::presets::tiny_v3);
  const auto ranges = dsx::decay_ranges(table, false);
  REQUIRE(!ranges.empty());
  CHECK(ranges.front().begin == 0);
  CHECK(ranges.back().end == table.size());
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    CHECK(ranges[i].begin == ranges[i - 1].end);
    CHECK(ranges[i].decay != ranges[i - 1].decay);  // runs are merged
  }
  auto decays_at = [&](std::int64_t offset) {
    for (const auto& r : ranges)
      if (offset >= r.begin && offset < r.end) return r.decay;
    FAIL("offset outside the ranges");
    return false;
  };
  for (const auto& e : table.entries()) {
    if (e.spec.shared_copy()) continue;
    INFO(e.name);
    CHECK(decays_at(e.offset) == (e.spec.cols != 0 && e.spec.trained()));
  }
  for (const auto& r : dsx::decay_ranges(table, true))
    for (const auto& e : table.entries())
      if (e.offset >= r.begin && e.offset < r.end) CHECK(r.decay == e.spec.trained());
}

TEST_CASE("clip scale brings the norm to the maximum", "[unit]") {
  using opt = dsx::adamw<dsx::transformer<dsx::presets::tiny_v3, dsx::precision::f32, dsx::backend::host>>;
  CHECK(opt::clip_scale(0.5, 1.0) == 1.0);
  CHECK(opt::clip_scale(4.0, 1.0) == 0.25);
}

TEST_CASE("AdamW steps fit a fixed batch and leave the routing bias alone", "[unit]") {
  dsx::backend::host be;
  dsx::transformer<dsx::presets::tiny_v3, dsx::precision::f32, dsx::backend::host> model(be, 2, 16);
  dsx::init_weights(model, 42);
  dsx::adamw opt(model);
  std::vector<std::int32_t> tokens(32);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 7 + 3) % 96);
  const auto* bias = model.params().find("model.layers.1.mlp.gate.e_score_correction_bias");
  REQUIRE(bias != nullptr);
  const auto bias_before = model.get_param(*bias);
  double first = 0, last = 0;
  for (int s = 0; s < 30; ++s) {
    model.zero_grad();
    const double loss = model.forward(tokens, 2, 16);
    model.backward();
    const double norm = opt.grad_norm();
    REQUIRE(std::isfinite(norm));
    opt.step(3e-3, decltype(opt)::clip_scale(norm, 1.0));
    if (s == 0) first = loss;
    last = loss;
  }
  CHECK(first == Approx(std::log(96.0)).epsilon(0.05));  // near-uniform predictions at init
  CHECK(last < 0.5 * first);
  CHECK(model.get_param(*bias) == bias_before);
  CHECK(opt.steps() == 30);
}
