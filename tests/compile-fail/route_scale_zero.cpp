// Routed outputs scaled by zero: rejected by dsx::validate(model_config).
// expect: "moe.route_scale", "must be positive"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.moe.route_scale = 0.0;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
