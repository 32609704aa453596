// A valid configuration, the shape of dsx::presets::tiny_v3, that each compile-fail case breaks in one
// field. It is spelled out rather than taken from presets.hpp because that header evaluates the counts
// of the large presets at compile time (about 1.4 s per compilation here, against 0.3 s for checks.hpp
// alone); valid_tiny_v3.cpp proves it equal to the preset.
#pragma once

#include "dsx/config/checks.hpp"

namespace dsx::test {

inline constexpr model_config base_config{
    .vocab = 96, .hidden = 48, .layers = 3, .dense_layers = 1, .dense_inter = 80,
    .mla = {.heads = 3, .q_lora = 20, .kv_lora = 16, .nope = 8, .rope = 4, .v = 12},
    .moe = {.routed = 8, .shared = 1, .top_k = 2, .groups = 4, .top_groups = 2, .score = score_fn::sigmoid,
            .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 24},
    .rope = {.theta = 10000.0},
    .rms_eps = 1e-6, .mtp_depth = 0, .max_positions = 64};

#if DSX_CHECK_VIA_TEMPLATE
template <model_config C>
struct checked_config {
  static_assert(validate(C));
};
template <model_config C, parallel_layout P>
struct checked_layout {
  static_assert(validate(C, P));
};
#endif

}  // namespace dsx::test

// How a case checks its configuration, or its configuration with a parallel layout, in the two forms
// tests/CMakeLists.txt compiles it in: with static_assert(dsx::validate(...)) (DSX_CHECK_VIA_TEMPLATE=0),
// or through a template that takes them as non-type template arguments (DSX_CHECK_VIA_TEMPLATE=1).
#if DSX_CHECK_VIA_TEMPLATE
#define DSX_CHECK_CONFIG(cfg) template struct dsx::test::checked_config<cfg>
#define DSX_CHECK_LAYOUT(cfg, layout) template struct dsx::test::checked_layout<cfg, layout>
#else
#define DSX_CHECK_CONFIG(cfg) static_assert(dsx::validate(cfg))
#define DSX_CHECK_LAYOUT(cfg, layout) static_assert(dsx::validate(cfg, layout))
#endif
