// Expert groups of unequal size: rejected by dsx::validate(model_config).
// expect: "moe.groups", "must be positive and divide moe.routed"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.moe.groups = 3;  // routed = 8
  return c;
}();

DSX_CHECK_CONFIG(cfg);
