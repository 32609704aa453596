// YaRN with beta_fast below beta_slow: rejected by dsx::validate(model_config).
// expect: "rope.yarn.beta_fast", "must exceed rope.yarn.beta_slow, which must be positive"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.rope.yarn.factor = 40.0;
  c.rope.yarn.original_max_positions = 4096;
  c.rope.yarn.beta_fast = 1.0;
  c.rope.yarn.beta_slow = 32.0;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
