// A token picking more experts than exist: rejected by dsx::validate(model_config).
// expect: "moe.top_k", "must be between 1 and moe.routed"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.moe.top_k = 9;  // routed = 8
  return c;
}();

DSX_CHECK_CONFIG(cfg);
