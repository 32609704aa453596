// Top-k larger than the experts of the kept groups: rejected by dsx::validate(model_config).
// expect: "moe.top_k", "must not exceed the experts in the kept groups (top_groups * routed / groups)"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.moe.top_groups = 1;  // keeps 1 group of 8 / 4 = 2 experts
  c.moe.top_k = 3;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
