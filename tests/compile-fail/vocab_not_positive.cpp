// An empty vocabulary: rejected by dsx::validate(model_config).
// expect: "vocab", "must be positive"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.vocab = 0;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
