// Experts that do not split evenly over the expert-parallel ranks: rejected by the layout rules
// of dsx::validate.
// expect: "parallel.expert", "must divide moe.routed"
#include "base_config.hpp"

constexpr dsx::parallel_layout layout{.expert = 3};  // routed = 8

#if DSX_CHECK_VIA_TEMPLATE
template <dsx::model_config C, dsx::parallel_layout P>
struct model {
  static_assert(dsx::validate(C, P));
};
template struct model<dsx::test::base_config, layout>;
#else
static_assert(dsx::validate(dsx::test::base_config, layout));
#endif
