// dsx::model_config — a DeepSeek-V2/V3 model described as a value.
//
// The aggregate is structural (public members of literal types only), so a configuration can be a
// non-type template argument: `dsx::transformer<dsx::presets::tiny_v3, ...>` statically specialises the
// whole pipeline. Every field an HF DeepseekV2/V3 config.json carries has a counterpart here; the
// mapping lives in io/hf_config.hpp and the rules every value must satisfy in config/checks.hpp.
#pragma once

#include <cstdint>

namespace dsx {

// How router logits become affinities (`scoring_func`).
enum class score_fn : std::uint8_t { softmax, sigmoid };

// Multi-head Latent Attention shapes (DeepSeek-V2 §2.1). `q_lora == 0` means the query is a single
// projection (`q_proj`) instead of the low-rank `q_a_proj → q_a_layernorm → q_b_proj` path.
struct mla_config {
  int heads = 0;    // num_attention_heads
  int q_lora = 0;   // q_lora_rank (0 = none)
  int kv_lora = 0;  // kv_lora_rank: width of the cached latent c_KV
  int nope = 0;     // qk_nope_head_dim: per-head query/key dims without RoPE
  int rope = 0;     // qk_rope_head_dim: decoupled RoPE dims, one shared key per token
  int v = 0;        // v_head_dim
  constexpr int qk_head() const { return nope + rope; }
  friend constexpr bool operator==(const mla_config&, const mla_config&) = default;
};

// DeepSeekMoE: fine-grained routed experts plus always-on shared experts, group-limited routing.
struct moe_config {
  int routed = 0;                  // n_routed_experts (0 = the model has no MoE layers)
  int shared = 0;                  // n_shared_experts: one SwiGLU of width shared * inter
  int top_k = 0;                   // num_experts_per_tok
  int groups = 1;                  // n_group
  int top_groups = 1;              // topk_group
  score_fn score = score_fn::softmax;
  bool norm_topk = false;          // norm_topk_prob: renormalise the selected weights to sum to 1
  double route_scale = 1.0;        // routed_scaling_factor
  bool bias = false;               // e_score_correction_bias (topk_method "noaux_tc"): selection only
  int inter = 0;                   // moe_intermediate_size: width of one expert
  friend constexpr bool operator==(const moe_config&, const moe_config&) = default;
};

// YaRN context extension (`rope_scaling` with type "yarn"); factor 1 means plain RoPE.
struct yarn_config {
  double factor = 1.0;
  int original_max_positions = 0;  // original_max_position_embeddings
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;     // 0 = the softmax scale gets no mscale correction (HF semantics)
  constexpr bool active() const { return factor > 1.0; }
  friend constexpr bool operator==(const yarn_config&, const yarn_config&) = default;
};

struct rope_config {
  double theta = 10000.0;
  yarn_config yarn{};
  friend constexpr bool operator==(const rope_config&, const rope_config&) = default;
};

struct model_config {
  int vocab = 0;          // vocab_size
  int hidden = 0;         // hidden_size
  int layers = 0;         // num_hidden_layers (main model; MTP modules come after)
  int dense_layers = 0;   // first_k_dense_replace: leading layers with a dense SwiGLU FFN
  int dense_inter = 0;    // intermediate_size of the dense FFN
  mla_config mla{};
  moe_config moe{};
  rope_config rope{};
  double rms_eps = 1e-6;  // rms_norm_eps
  int mtp_depth = 0;      // num_nextn_predict_layers
  int max_positions = 0;  // max_position_embeddings
  friend constexpr bool operator==(const model_config&, const model_config&) = default;

  constexpr bool is_moe_layer(int layer) const { return moe.routed > 0 && layer >= dense_layers; }
  constexpr int moe_layers() const { return moe.routed > 0 ? layers - dense_layers : 0; }
  constexpr int shared_inter() const { return moe.shared * moe.inter; }
};

}  // namespace dsx
