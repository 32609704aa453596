// A negative YaRN attention scale: rejected by dsx::validate(model_config).
// expect: "rope.yarn.mscale", "must not be negative"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.rope.yarn.mscale = -1.0;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
