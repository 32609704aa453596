// More pipeline stages than layers: rejected by the layout rules of dsx::validate.
// expect: "parallel.pipeline", "must not exceed the number of layers (every stage holds at least one)"
#include "base_config.hpp"

constexpr dsx::parallel_layout layout{.pipeline = 4};  // layers = 3, mtp_depth = 0

#if DSX_CHECK_VIA_TEMPLATE
template <dsx::model_config C, dsx::parallel_layout P>
struct model {
  static_assert(dsx::validate(C, P));
};
template struct model<dsx::test::base_config, layout>;
#else
static_assert(dsx::validate(dsx::test::base_config, layout));
#endif
