// A layout that splits the base configuration evenly (8 experts over 8 ranks, 3 layers over 3 stages,
// 3 heads over 3 ranks) compiles in both forms.
// expect: compiles
#include "base_config.hpp"

constexpr dsx::parallel_layout layout{.data = 2, .expert = 8, .pipeline = 3, .tensor = 3};

DSX_CHECK_LAYOUT(dsx::test::base_config, layout);
