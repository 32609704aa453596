// Keeping more groups than there are: rejected by dsx::validate(model_config).
// expect: "moe.top_groups", "must be between 1 and moe.groups"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.moe.top_groups = 5;  // groups = 4
  return c;
}();

DSX_CHECK_CONFIG(cfg);
