// A YaRN factor that would shrink the context: rejected by dsx::validate(model_config).
// expect: "rope.yarn.factor", "must be at least 1 (1 = no YaRN)"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.rope.yarn.factor = 0.5;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
