// The configuration every case starts from compiles in both forms and is dsx::presets::tiny_v3: the
// harness accepts a valid configuration, and each failing case fails because of its one change.
// expect: compiles
#include "base_config.hpp"
#include "dsx/config/presets.hpp"

static_assert(dsx::test::base_config == dsx::presets::tiny_v3);

#if DSX_CHECK_VIA_TEMPLATE
template <dsx::model_config C>
struct model {
  static_assert(dsx::validate(C));
};
template struct model<dsx::test::base_config>;
#else
static_assert(dsx::validate(dsx::test::base_config));
#endif
