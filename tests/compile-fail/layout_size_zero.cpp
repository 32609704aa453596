// A parallel layout with no data-parallel ranks: rejected by the layout rules of dsx::validate.
// expect: "parallel", "every parallel size must be at least 1"
#include "base_config.hpp"

constexpr dsx::parallel_layout layout{.data = 0};

DSX_CHECK_LAYOUT(dsx::test::base_config, layout);
