// RMSNorm without epsilon: rejected by dsx::validate(model_config).
// expect: "rms_eps", "must be positive"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.rms_eps = 0.0;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
