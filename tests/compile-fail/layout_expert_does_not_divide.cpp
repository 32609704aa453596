// Experts that do not split evenly over the expert-parallel ranks: rejected by the layout rules
// of dsx::validate.
// expect: "parallel.expert", "must divide moe.routed"
#include "base_config.hpp"

constexpr dsx::parallel_layout layout{.expert = 3};  // routed = 8

DSX_CHECK_LAYOUT(dsx::test::base_config, layout);
