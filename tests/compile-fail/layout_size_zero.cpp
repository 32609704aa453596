// A parallel layout with no data-parallel ranks: rejected by the layout rules of dsx::validate.
// expect: "parallel", "every parallel size must be at least 1"
#include "base_config.hpp"

constexpr dsx::parallel_layout layout{.data = 0};

#if DSX_CHECK_VIA_TEMPLATE
template <dsx::model_config C, dsx::parallel_layout P>
struct model {
  static_assert(dsx::validate(C, P));
};
template struct model<dsx::test::base_config, layout>;
#else
static_assert(dsx::validate(dsx::test::base_config, layout));
#endif
