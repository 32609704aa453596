// An empty vocabulary: rejected by dsx::validate(model_config).
// expect: "vocab", "must be positive"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.vocab = 0;
  return c;
}();

#if DSX_CHECK_VIA_TEMPLATE
template <dsx::model_config C>
struct model {
  static_assert(dsx::validate(C));
};
template struct model<cfg>;
#else
static_assert(dsx::validate(cfg));
#endif
