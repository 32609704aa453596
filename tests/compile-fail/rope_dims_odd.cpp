// An odd number of RoPE dimensions (RoPE rotates pairs): rejected by dsx::validate(model_config).
// expect: "mla.rope", "must be positive and even (RoPE rotates interleaved pairs)"
#include "base_config.hpp"

constexpr dsx::model_config cfg = [] {
  auto c = dsx::test::base_config;
  c.mla.rope = 5;
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
