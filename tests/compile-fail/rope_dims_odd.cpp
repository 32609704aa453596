// An odd number of RoPE dimensions (RoPE rotates pairs): rejected by dsx::validate(model_config).
// expect: "mla.rope", "must be positive and even (RoPE rotates interleaved pairs)"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.mla.rope = 5;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
