// Routed experts without an expert FFN width: rejected by dsx::validate(model_config).
// expect: "moe.inter", "must be positive when there are routed experts"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.moe.inter = 0;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
