// Dense layers without a dense FFN width: rejected by dsx::validate(model_config).
// expect: "dense_inter", "must be positive when there are dense layers"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.dense_inter = 0;  // dense_layers = 1
  return c;
}();

DSX_CHECK_CONFIG(cfg);
