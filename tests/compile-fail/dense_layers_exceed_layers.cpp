// More leading dense layers than layers: rejected by dsx::validate(model_config).
// expect: "dense_layers", "must be between 0 and layers"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.dense_layers = 4;  // layers = 3
  return c;
}();

DSX_CHECK_CONFIG(cfg);
