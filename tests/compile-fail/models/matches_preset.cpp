// The configuration generated from an HF config.json (the header DSX_MODEL_HEADER, written by
// examples/config-gen at configure time) equals the built-in preset DSX_PRESET. Compared field by field
// so that a mismatch names the field, then as a whole for any field added later.
// expect: compiles
#include DSX_MODEL_HEADER

constexpr const dsx::model_config& json = dsx_model::config;
constexpr const dsx::model_config& preset = DSX_PRESET;

static_assert(json.vocab == preset.vocab, "vocab_size");
static_assert(json.hidden == preset.hidden, "hidden_size");
static_assert(json.layers == preset.layers, "num_hidden_layers");
static_assert(json.dense_layers == preset.dense_layers, "first_k_dense_replace");
static_assert(json.dense_inter == preset.dense_inter, "intermediate_size");
static_assert(json.mla.heads == preset.mla.heads, "num_attention_heads");
static_assert(json.mla.q_lora == preset.mla.q_lora, "q_lora_rank");
static_assert(json.mla.kv_lora == preset.mla.kv_lora, "kv_lora_rank");
static_assert(json.mla.nope == preset.mla.nope, "qk_nope_head_dim");
static_assert(json.mla.rope == preset.mla.rope, "qk_rope_head_dim");
static_assert(json.mla.v == preset.mla.v, "v_head_dim");
static_assert(json.moe.routed == preset.moe.routed, "n_routed_experts");
static_assert(json.moe.shared == preset.moe.shared, "n_shared_experts");
static_assert(json.moe.top_k == preset.moe.top_k, "num_experts_per_tok");
static_assert(json.moe.groups == preset.moe.groups, "n_group");
static_assert(json.moe.top_groups == preset.moe.top_groups, "topk_group");
static_assert(json.moe.score == preset.moe.score, "scoring_func");
static_assert(json.moe.norm_topk == preset.moe.norm_topk, "norm_topk_prob");
static_assert(json.moe.route_scale == preset.moe.route_scale, "routed_scaling_factor");
static_assert(json.moe.bias == preset.moe.bias, "topk_method (noaux_tc = correction bias)");
static_assert(json.moe.inter == preset.moe.inter, "moe_intermediate_size");
static_assert(json.rope.theta == preset.rope.theta, "rope_theta");
static_assert(json.rope.yarn.factor == preset.rope.yarn.factor, "rope_scaling.factor");
static_assert(json.rope.yarn.original_max_positions == preset.rope.yarn.original_max_positions,
              "rope_scaling.original_max_position_embeddings");
static_assert(json.rope.yarn.beta_fast == preset.rope.yarn.beta_fast, "rope_scaling.beta_fast");
static_assert(json.rope.yarn.beta_slow == preset.rope.yarn.beta_slow, "rope_scaling.beta_slow");
static_assert(json.rope.yarn.mscale == preset.rope.yarn.mscale, "rope_scaling.mscale");
static_assert(json.rope.yarn.mscale_all_dim == preset.rope.yarn.mscale_all_dim,
              "rope_scaling.mscale_all_dim");
static_assert(json.rms_eps == preset.rms_eps, "rms_norm_eps");
static_assert(json.mtp_depth == preset.mtp_depth, "num_nextn_predict_layers");
static_assert(json.max_positions == preset.max_positions, "max_position_embeddings");
static_assert(json == preset, "the generated configuration differs from the preset");
