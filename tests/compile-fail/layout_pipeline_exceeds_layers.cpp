// More pipeline stages than layers: rejected by the layout rules of dsx::validate.
// expect: "parallel.pipeline", "must not exceed the number of layers (every stage holds at least one)"
#include "base_config.hpp"

constexpr dsx::parallel_layout layout{.pipeline = 4};  // layers = 3, mtp_depth = 0

DSX_CHECK_LAYOUT(dsx::test::base_config, layout);
