// A RoPE base that does not make frequencies decrease: rejected by dsx::validate(model_config).
// expect: "rope.theta", "must be greater than 1"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.rope.theta = 1.0;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
