// A negative query compression rank: rejected by dsx::validate(model_config).
// expect: "mla.q_lora", "must be 0 (no query compression) or positive"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.mla.q_lora = -1;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
