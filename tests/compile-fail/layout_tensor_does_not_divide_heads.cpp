// Attention heads that do not split over the tensor-parallel ranks: rejected by the layout rules
// of dsx::validate.
// expect: "parallel.tensor", "must divide mla.heads"
#include "base_config.hpp"

constexpr dsx::parallel_layout layout{.tensor = 2};  // heads = 3

DSX_CHECK_LAYOUT(dsx::test::base_config, layout);
