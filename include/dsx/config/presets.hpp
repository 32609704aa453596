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

// A DeepSeek-V3-shaped MoE that trains on one 80 GB GPU (the GPU benchmark's training model,
// benchmarks/gpu): V3's MLA head shapes, sigmoid routing with correction bias over 8 groups of which 4
// are kept, 64 fine-grained experts of width hidden / 4 (V3: 2048 / 7168) with 6 routed and 2 shared per
// token, and a dense FFN as wide as the activated experts together ((top_k + shared) · inter, as V3's
// 18432 = 9 · 2048). 2.58 B parameters in total, 0.57 B activated per token.
//
// Memory of training at batch × seq = 8 × 2048 (16384 tokens) with precision::bf16 (bf16 weights and
// activations, f32 master weights, gradients and AdamW moments):
//   state        2'581'530'304 parameters: 2 (bf16) + 4 (master) + 4 (grad) + 2 · 4 (moments) bytes each
//                = 46.47 GB (plan_memory below)
//   activations  the transformer's arena at 16384 tokens, bf16: 13 residual streams 0.87 GB, the dense
//                layer 1.03 GB, each of the 11 MoE layers 1.44 GB (per token and layer: MLA 12'864 values
//                (q_a and its norm 2 · 768, q 3072, kv_a 576, c_KV 512, k 3072, v 2048, o 2048), block
//                norms and mid 3 · 2048, routed expert inputs and outputs 6 · (3 · 512 + 2048), shared
//                expert 3 · 1024), logits and their gradient 2 · 16384 · 32768 · 2 = 2.15 GB, shared
//                scratch 1.24 GB: 21.28 GB
//   total        67.75 GB of 80 GB, leaving room for the cuBLASLt workspace and the allocator.
// Kept in f32 throughout (precision::f32, no master copy), the activations double to 42.48 GB and the
// state is 41.30 GB: 83.8 GB, which does not fit. With precision::bf16_master (the policy the
// transformer trains in: bf16 gradients, f32 master and moments, 2 + 2 + 4 + 8 bytes per parameter) the
// state is 41.30 GB and the total 62.58 GB.
inline constexpr model_config gpu_1b{
    .vocab = 32768, .hidden = 2048, .layers = 12, .dense_layers = 1, .dense_inter = 4096,
    .mla = {.heads = 16, .q_lora = 768, .kv_lora = 512, .nope = 128, .rope = 64, .v = 128},
    .moe = {.routed = 64, .shared = 2, .top_k = 6, .groups = 8, .top_groups = 4, .score = score_fn::sigmoid,
            .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 512},
    .rope = {.theta = 10000.0},
    .rms_eps = 1e-6, .mtp_depth = 0, .max_positions = 4096};
static_assert(validate(gpu_1b));
static_assert(gpu_1b.dense_inter == (gpu_1b.moe.top_k + gpu_1b.moe.shared) * gpu_1b.moe.inter);
static_assert(params_total(gpu_1b) == 2'581'530'304);
static_assert(params_activated(gpu_1b) == 574'555'840);
static_assert(plan_memory(gpu_1b, precision::bf16).total() == 46'467'534'208);
static_assert(plan_memory(gpu_1b, precision::f32).total() == 41'304'476'416);
static_assert(plan_memory(gpu_1b, precision::bf16_master).total() == 41'304'475'008);

// The toy teacher of the R1 recipe demo (post/recipe.hpp): a DeepSeek-V3-shaped MoE small enough to
// pre-train and post-train on two CPU cores in minutes — MLA with q-LoRA, 1 dense and 3 MoE layers of 8
// fine-grained experts (2 routed + 1 shared per token, sigmoid gate with correction bias), one MTP module.
// The vocabulary fits post/reasoning_data.hpp's tokenizer (6 special tokens, 256 bytes, merges).
inline constexpr model_config r1_toy{
    .vocab = 512, .hidden = 128, .layers = 4, .dense_layers = 1, .dense_inter = 256,
    .mla = {.heads = 4, .q_lora = 64, .kv_lora = 64, .nope = 16, .rope = 16, .v = 16},
    .moe = {.routed = 8, .shared = 1, .top_k = 2, .groups = 1, .top_groups = 1, .score = score_fn::sigmoid,
            .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 64},
    .rope = {.theta = 10000.0},
    .rms_eps = 1e-6, .mtp_depth = 1, .max_positions = 192};
static_assert(validate(r1_toy));

// The dense student a teacher is distilled into (R1 §2.4 distils into dense models): the teacher's
// vocabulary, head shapes, positions and RoPE; 3/4 of its width (a multiple of 8, at least 16), one
// layer fewer (at least 1), one head fewer (at least 1), every layer a dense SwiGLU as wide as the
// teacher's dense layers (or 2.5 × hidden without any), no query compression, no MoE, no MTP.
constexpr model_config dense_student(const model_config& t) {
  model_config s = t;
  s.hidden = t.hidden * 3 / 4 / 8 * 8 < 16 ? 16 : t.hidden * 3 / 4 / 8 * 8;
  s.layers = t.layers > 1 ? t.layers - 1 : 1;
  s.dense_layers = s.layers;
  s.dense_inter = t.dense_layers > 0 ? t.dense_inter : s.hidden * 5 / 2;
  s.mla.heads = t.mla.heads > 1 ? t.mla.heads - 1 : 1;
  s.mla.q_lora = 0;
  s.moe = {};
  s.mtp_depth = 0;
  return s;
}

// The recipe demo's student: hidden 96, 3 dense layers, 3 heads.
inline constexpr model_config r1_student = dense_student(r1_toy);
static_assert(validate(r1_student));
static_assert(r1_student.hidden == 96 && r1_student.layers == 3 && r1_student.moe_layers() == 0);

}  // namespace dsx::presets
