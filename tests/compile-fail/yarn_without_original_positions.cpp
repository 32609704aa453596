// YaRN without the original context length: rejected by dsx::validate(model_config).
// expect: "rope.yarn.original_max_positions", "must be positive when YaRN is active"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.rope.yarn.factor = 40.0;
  c.rope.yarn.original_max_positions = 0;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
