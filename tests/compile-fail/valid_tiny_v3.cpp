// The configuration every case starts from compiles in both forms and is dsx::presets::tiny_v3: the
// harness accepts a valid configuration, and each failing case fails because of its one change.
// expect: compiles
#include "base_config.hpp"
#include "dsx/config/presets.hpp"

static_assert(dsx::test::base_config == dsx::presets::tiny_v3);

DSX_CHECK_CONFIG(dsx::test::base_config);
