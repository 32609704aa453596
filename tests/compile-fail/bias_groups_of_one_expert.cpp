// Groups scored by their top-2 sum with one expert per group: rejected by dsx::validate(model_config).
// expect: "moe.groups", "must leave at least 2 experts per group when the correction bias scores groups by their top-2 sum"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.moe.groups = 8;  // routed = 8, bias = true
  return c;
}();

DSX_CHECK_CONFIG(cfg);
