// Built-in model configurations. Each is validated where it is defined and its headline counts are
// pinned by static_asserts (sources: DeepSeek-V3 inference/configs, HF config.json files, and the
// counts in the V3 README_WEIGHTS; see docs/).
#pragma once

#include "dsx/config/checks.hpp"
#include "dsx/config/counts.hpp"

namespace dsx::presets {

// The golden reference model (shared/reference/tiny-v3/config.json).
inline constexpr model_config tiny_v3{
    .vocab = 96, .hidden = 48, .layers = 3, .dense_layers = 1, .dense_inter = 80,
    .mla = {.heads = 3, .q_lora = 20, .kv_lora = 16, .nope = 8, .rope = 4, .v = 12},
    .moe = {.routed = 8, .shared = 1, .top_k = 2, .groups = 4, .top_groups = 2, .score = score_fn::sigmoid,
            .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 24},
    .rope = {.theta = 10000.0},
    .rms_eps = 1e-6, .mtp_depth = 0, .max_positions = 64};
static_assert(validate(tiny_v3));

// The model performance is measured on (shared/bench/small/config.json).
inline constexpr model_config bench_small{
    .vocab = 4096, .hidden = 256, .layers = 4, .dense_layers = 1, .dense_inter = 704,
    .mla = {.heads = 4, .q_lora = 128, .kv_lora = 64, .nope = 32, .rope = 16, .v = 32},
    .moe = {.routed = 16, .shared = 1, .top_k = 4, .groups = 4, .top_groups = 2, .score = score_fn::sigmoid,
            .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 128},
    .rope = {.theta = 10000.0},
    .rms_eps = 1e-6, .mtp_depth = 0, .max_positions = 256};
static_assert(validate(bench_small));

// DeepSeek-V2-Lite (16B): no query compression, softmax gate without groups or bias.
inline constexpr model_config v2_lite{
    .vocab = 102400, .hidden = 2048, .layers = 27, .dense_layers = 1, .dense_inter = 10944,
    .mla = {.heads = 16, .q_lora = 0, .kv_lora = 512, .nope = 128, .rope = 64, .v = 128},
    .moe = {.routed = 64, .shared = 2, .top_k = 6, .groups = 1, .top_groups = 1, .score = score_fn::softmax,
            .norm_topk = false, .route_scale = 1.0, .bias = false, .inter = 1408},
    .rope = {.theta = 10000.0,
             .yarn = {.factor = 40.0, .original_max_positions = 4096, .beta_fast = 32.0, .beta_slow = 1.0,
                      .mscale = 0.707, .mscale_all_dim = 0.707}},
    .rms_eps = 1e-6, .mtp_depth = 0, .max_positions = 163840};
static_assert(validate(v2_lite));
static_assert(params_total(v2_lite) == 15'706'484'224);
static_assert(params_activated(v2_lite) == 2'661'150'208);

// DeepSeek-V2 (236B): 8 groups of which 3 are kept, scored by their best expert.
inline constexpr model_config v2_236b{
    .vocab = 102400, .hidden = 5120, .layers = 60, .dense_layers = 1, .dense_inter = 12288,
    .mla = {.heads = 128, .q_lora = 1536, .kv_lora = 512, .nope = 128, .rope = 64, .v = 128},
    .moe = {.routed = 160, .shared = 2, .top_k = 6, .groups = 8, .top_groups = 3, .score = score_fn::softmax,
            .norm_topk = false, .route_scale = 16.0, .bias = false, .inter = 1536},
    .rope = {.theta = 10000.0,
             .yarn = {.factor = 40.0, .original_max_positions = 4096, .beta_fast = 32.0, .beta_slow = 1.0,
                      .mscale = 0.707, .mscale_all_dim = 0.707}},
    .rms_eps = 1e-6, .mtp_depth = 0, .max_positions = 163840};
static_assert(validate(v2_236b));

// DeepSeek-V3 (671B; R1 has the same shape): sigmoid gate with correction bias, one MTP module.
inline constexpr model_config v3_671b{
    .vocab = 129280, .hidden = 7168, .layers = 61, .dense_layers = 3, .dense_inter = 18432,
    .mla = {.heads = 128, .q_lora = 1536, .kv_lora = 512, .nope = 128, .rope = 64, .v = 128},
    .moe = {.routed = 256, .shared = 1, .top_k = 8, .groups = 8, .top_groups = 4, .score = score_fn::sigmoid,
            .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 2048},
    .rope = {.theta = 10000.0,
             .yarn = {.factor = 40.0, .original_max_positions = 4096, .beta_fast = 32.0, .beta_slow = 1.0,
                      .mscale = 1.0, .mscale_all_dim = 1.0}},
    .rms_eps = 1e-6, .mtp_depth = 1, .max_positions = 163840};
static_assert(validate(v3_671b));
static_assert(validate(v3_671b, parallel_layout{.data = 16, .expert = 64, .pipeline = 16, .tensor = 1}));
static_assert(params_total(v3_671b) == 671'026'419'200);
static_assert(params_activated(v3_671b) == 37'552'297'472);

}  // namespace dsx::presets
