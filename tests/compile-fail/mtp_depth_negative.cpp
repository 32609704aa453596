// A negative number of MTP modules: rejected by dsx::validate(model_config).
// expect: "mtp_depth", "must not be negative"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.mtp_depth = -1;
  return c;
}();

DSX_CHECK_CONFIG(cfg);
