// The parameter list of a model, enumerated once from the configuration. Everything that needs the
// list walks it through `for_each_param`: the compile-time counts (config/counts.hpp), the
// parameter arena and its offsets (model/params.hpp), HF tensor names for loading and saving, and
// the optimizer. Shapes are PyTorch's: a Linear weight is (out, in).
#pragma once

#include <cstdint>
#include <string>

#include "dsx/config/model_config.hpp"

namespace dsx {

enum class param_kind : std::uint8_t {
  embed, final_norm, head,                                         // whole model
  attn_norm, q_proj, q_a_proj, q_a_norm, q_b_proj,                 // attention, per layer
  kv_a_proj, kv_a_norm, kv_b_proj, o_proj, ffn_norm,
  mlp_gate, mlp_up, mlp_down,                                      // dense SwiGLU FFN
  router, router_bias,                                             // MoE gate
  expert_gate, expert_up, expert_down,                             // routed expert e
  shared_gate, shared_up, shared_down,                             // shared experts (one SwiGLU)
  mtp_embed, mtp_enorm, mtp_hnorm, mtp_eh_proj, mtp_head_norm, mtp_head,  // MTP module extras
};

struct param_spec {
  param_kind kind;
  int layer = -1;         // decoder layer (MTP module k is layer `layers + k`), -1 for whole-model tensors
  int expert = -1;        // routed expert index, -1 otherwise
  std::int64_t rows = 0;  // first dimension
  std::int64_t cols = 0;  // second dimension; 0 for a vector
  constexpr std::int64_t numel() const { return cols ? rows * cols : rows; }
  constexpr bool is_vector() const { return cols == 0; }
  // Trained by gradient descent. The routing bias moves by the balancing rule instead.
  constexpr bool trained() const { return kind != param_kind::router_bias; }
  // Part of an MTP module (a layer at or past `layers`).
  constexpr bool mtp(const model_config& c) const { return layer >= c.layers; }
  // MTP copies of the embedding and head: the same tensors as the main model's, stored again under
  // the MTP layer's names by V3 checkpoints.
  constexpr bool shared_copy() const { return kind == param_kind::mtp_embed || kind == param_kind::mtp_head; }
  // Takes weight decay by default (matrices, not norms or biases).
  constexpr bool decays() const { return cols != 0; }
};

// Calls f(param_spec) for every tensor of one decoder layer (attention + FFN, with the MTP extras
// when `layer >= c.layers`).
template <class F>
constexpr void for_each_layer_param(const model_config& c, int layer, F&& f) {
  const std::int64_t d = c.hidden, h = c.mla.heads;
  const auto& a = c.mla;
  if (layer >= c.layers) {
    f(param_spec{param_kind::mtp_embed, layer, -1, c.vocab, d});
    f(param_spec{param_kind::mtp_enorm, layer, -1, d, 0});
    f(param_spec{param_kind::mtp_hnorm, layer, -1, d, 0});
    f(param_spec{param_kind::mtp_eh_proj, layer, -1, d, 2 * d});
  }
  f(param_spec{param_kind::attn_norm, layer, -1, d, 0});
  if (a.q_lora == 0) {
    f(param_spec{param_kind::q_proj, layer, -1, h * a.qk_head(), d});
  } else {
    f(param_spec{param_kind::q_a_proj, layer, -1, a.q_lora, d});
    f(param_spec{param_kind::q_a_norm, layer, -1, a.q_lora, 0});
    f(param_spec{param_kind::q_b_proj, layer, -1, h * a.qk_head(), a.q_lora});
  }
  f(param_spec{param_kind::kv_a_proj, layer, -1, a.kv_lora + a.rope, d});
  f(param_spec{param_kind::kv_a_norm, layer, -1, a.kv_lora, 0});
  f(param_spec{param_kind::kv_b_proj, layer, -1, h * (a.nope + a.v), a.kv_lora});
  f(param_spec{param_kind::o_proj, layer, -1, d, h * a.v});
  f(param_spec{param_kind::ffn_norm, layer, -1, d, 0});
  if (!c.is_moe_layer(layer)) {
    f(param_spec{param_kind::mlp_gate, layer, -1, c.dense_inter, d});
    f(param_spec{param_kind::mlp_up, layer, -1, c.dense_inter, d});
    f(param_spec{param_kind::mlp_down, layer, -1, d, c.dense_inter});
  } else {
    const auto& m = c.moe;
    f(param_spec{param_kind::router, layer, -1, m.routed, d});
    if (m.bias) f(param_spec{param_kind::router_bias, layer, -1, m.routed, 0});
    for (int e = 0; e < m.routed; ++e) {
      f(param_spec{param_kind::expert_gate, layer, e, m.inter, d});
      f(param_spec{param_kind::expert_up, layer, e, m.inter, d});
      f(param_spec{param_kind::expert_down, layer, e, d, m.inter});
    }
    if (m.shared > 0) {
      f(param_spec{param_kind::shared_gate, layer, -1, c.shared_inter(), d});
      f(param_spec{param_kind::shared_up, layer, -1, c.shared_inter(), d});
      f(param_spec{param_kind::shared_down, layer, -1, d, c.shared_inter()});
    }
  }
  if (layer >= c.layers) {
    f(param_spec{param_kind::mtp_head_norm, layer, -1, d, 0});
    f(param_spec{param_kind::mtp_head, layer, -1, c.vocab, d});
  }
}

// Calls f(param_spec) for every tensor of the model: embedding, decoder layers, final norm, head,
// then the MTP modules.
template <class F>
constexpr void for_each_param(const model_config& c, F&& f) {
  f(param_spec{param_kind::embed, -1, -1, c.vocab, c.hidden});
  for (int l = 0; l < c.layers; ++l) for_each_layer_param(c, l, f);
  f(param_spec{param_kind::final_norm, -1, -1, c.hidden, 0});
  f(param_spec{param_kind::head, -1, -1, c.vocab, c.hidden});
  for (int l = c.layers; l < c.layers + c.mtp_depth; ++l) for_each_layer_param(c, l, f);
}

// The HF (DeepseekV3ForCausalLM) name of a tensor, e.g. "model.layers.1.mlp.experts.3.up_proj.weight".
inline std::string hf_name(const param_spec& p) {
  const std::string layer = "model.layers." + std::to_string(p.layer) + ".";
  const std::string expert = layer + "mlp.experts." + std::to_string(p.expert) + ".";
  switch (p.kind) {
    case param_kind::embed: return "model.embed_tokens.weight";
    case param_kind::final_norm: return "model.norm.weight";
    case param_kind::head: return "lm_head.weight";
    case param_kind::attn_norm: return layer + "input_layernorm.weight";
    case param_kind::q_proj: return layer + "self_attn.q_proj.weight";
    case param_kind::q_a_proj: return layer + "self_attn.q_a_proj.weight";
    case param_kind::q_a_norm: return layer + "self_attn.q_a_layernorm.weight";
    case param_kind::q_b_proj: return layer + "self_attn.q_b_proj.weight";
    case param_kind::kv_a_proj: return layer + "self_attn.kv_a_proj_with_mqa.weight";
    case param_kind::kv_a_norm: return layer + "self_attn.kv_a_layernorm.weight";
    case param_kind::kv_b_proj: return layer + "self_attn.kv_b_proj.weight";
    case param_kind::o_proj: return layer + "self_attn.o_proj.weight";
    case param_kind::ffn_norm: return layer + "post_attention_layernorm.weight";
    case param_kind::mlp_gate: return layer + "mlp.gate_proj.weight";
    case param_kind::mlp_up: return layer + "mlp.up_proj.weight";
    case param_kind::mlp_down: return layer + "mlp.down_proj.weight";
    case param_kind::router: return layer + "mlp.gate.weight";
    case param_kind::router_bias: return layer + "mlp.gate.e_score_correction_bias";
    case param_kind::expert_gate: return expert + "gate_proj.weight";
    case param_kind::expert_up: return expert + "up_proj.weight";
    case param_kind::expert_down: return expert + "down_proj.weight";
    case param_kind::shared_gate: return layer + "mlp.shared_experts.gate_proj.weight";
    case param_kind::shared_up: return layer + "mlp.shared_experts.up_proj.weight";
    case param_kind::shared_down: return layer + "mlp.shared_experts.down_proj.weight";
    case param_kind::mtp_embed: return layer + "embed_tokens.weight";
    case param_kind::mtp_enorm: return layer + "enorm.weight";
    case param_kind::mtp_hnorm: return layer + "hnorm.weight";
    case param_kind::mtp_eh_proj: return layer + "eh_proj.weight";
    case param_kind::mtp_head_norm: return layer + "shared_head.norm.weight";
    case param_kind::mtp_head: return layer + "shared_head.head.weight";
  }
  return {};
}

}  // namespace dsx
