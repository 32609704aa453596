// No routed experts, yet layers after the dense ones: rejected by dsx::validate(model_config).
// expect: "dense_layers", "must equal layers when moe.routed is 0 (no MoE layers)"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.moe.routed = 0;  // dense_layers = 1 of 3 layers
  return c;
}();

DSX_CHECK_CONFIG(cfg);
