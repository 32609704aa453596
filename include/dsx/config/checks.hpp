// The one validation of a model configuration, used at compile time by presets, generated configs and
// `dsx::transformer` (static_assert), and at run time on a loaded config.json.
//
// Each rule is a line `if (violated) throw config_error{"field", "rule"};`. In a constant expression a
// throw is not allowed, so the compiler stops there and prints that very line: the diagnostic names the
// field and the rule, and the note above it shows the offending configuration's values. At run time the
// same function throws `config_error`, which `check()` turns into a message.
#pragma once

#include <string>

#include "dsx/config/model_config.hpp"
#include "dsx/config/parallel.hpp"

namespace dsx {

struct config_error {
  const char* field;
  const char* rule;
};

// Throws config_error on the first rule the configuration breaks; returns true otherwise.
constexpr bool validate(const model_config& c) {
  if (c.vocab <= 0) throw config_error{"vocab", "must be positive"};
  if (c.hidden <= 0) throw config_error{"hidden", "must be positive"};
  if (c.layers <= 0) throw config_error{"layers", "must be positive"};
  if (c.dense_layers < 0 || c.dense_layers > c.layers) throw config_error{"dense_layers", "must be between 0 and layers"};
  if (c.dense_layers > 0 && c.dense_inter <= 0) throw config_error{"dense_inter", "must be positive when there are dense layers"};
  if (c.moe.routed == 0 && c.dense_layers != c.layers) throw config_error{"dense_layers", "must equal layers when moe.routed is 0 (no MoE layers)"};
  if (c.max_positions <= 0) throw config_error{"max_positions", "must be positive"};
  if (c.rms_eps <= 0) throw config_error{"rms_eps", "must be positive"};
  if (c.mtp_depth < 0) throw config_error{"mtp_depth", "must not be negative"};

  if (c.mla.heads <= 0) throw config_error{"mla.heads", "must be positive"};
  if (c.mla.q_lora < 0) throw config_error{"mla.q_lora", "must be 0 (no query compression) or positive"};
  if (c.mla.kv_lora <= 0) throw config_error{"mla.kv_lora", "must be positive"};
  if (c.mla.nope <= 0) throw config_error{"mla.nope", "must be positive"};
  if (c.mla.rope <= 0 || c.mla.rope % 2 != 0) throw config_error{"mla.rope", "must be positive and even (RoPE rotates interleaved pairs)"};
  if (c.mla.v <= 0) throw config_error{"mla.v", "must be positive"};

  if (c.rope.theta <= 1.0) throw config_error{"rope.theta", "must be greater than 1"};
  if (c.rope.yarn.factor < 1.0) throw config_error{"rope.yarn.factor", "must be at least 1 (1 = no YaRN)"};
  if (c.rope.yarn.active() && c.rope.yarn.original_max_positions <= 0) throw config_error{"rope.yarn.original_max_positions", "must be positive when YaRN is active"};
  if (c.rope.yarn.active() && !(c.rope.yarn.beta_fast > c.rope.yarn.beta_slow && c.rope.yarn.beta_slow > 0)) throw config_error{"rope.yarn.beta_fast", "must exceed rope.yarn.beta_slow, which must be positive"};
  if (c.rope.yarn.mscale < 0 || c.rope.yarn.mscale_all_dim < 0) throw config_error{"rope.yarn.mscale", "must not be negative"};

  if (c.moe.routed < 0) throw config_error{"moe.routed", "must not be negative"};
  if (c.moe.routed > 0) {
    if (c.moe.shared < 0) throw config_error{"moe.shared", "must not be negative"};
    if (c.moe.inter <= 0) throw config_error{"moe.inter", "must be positive when there are routed experts"};
    if (c.moe.top_k < 1 || c.moe.top_k > c.moe.routed) throw config_error{"moe.top_k", "must be between 1 and moe.routed"};
    if (c.moe.groups < 1 || c.moe.routed % c.moe.groups != 0) throw config_error{"moe.groups", "must be positive and divide moe.routed"};
    if (c.moe.top_groups < 1 || c.moe.top_groups > c.moe.groups) throw config_error{"moe.top_groups", "must be between 1 and moe.groups"};
    if (c.moe.top_k > c.moe.top_groups * (c.moe.routed / c.moe.groups)) throw config_error{"moe.top_k", "must not exceed the experts in the kept groups (top_groups * routed / groups)"};
    if (c.moe.bias && c.moe.groups > 1 && c.moe.routed / c.moe.groups < 2) throw config_error{"moe.groups", "must leave at least 2 experts per group when the correction bias scores groups by their top-2 sum"};
    if (!(c.moe.route_scale > 0)) throw config_error{"moe.route_scale", "must be positive"};
  }
  return true;
}

// The layout rules: a model must split evenly over the ranks it is given.
constexpr bool validate(const model_config& c, const parallel_layout& p) {
  validate(c);
  if (p.data < 1 || p.expert < 1 || p.pipeline < 1 || p.tensor < 1) throw config_error{"parallel", "every parallel size must be at least 1"};
  if (p.expert > 1 && (c.moe.routed == 0 || c.moe.routed % p.expert != 0)) throw config_error{"parallel.expert", "must divide moe.routed"};
  if (p.pipeline > c.layers + c.mtp_depth) throw config_error{"parallel.pipeline", "must not exceed the number of layers (every stage holds at least one)"};
  if (c.mla.heads % p.tensor != 0) throw config_error{"parallel.tensor", "must divide mla.heads"};
  return true;
}

// Run-time form: an empty string when valid, else "field: rule".
inline std::string check(const model_config& c, const parallel_layout& p = single_rank) {
  try {
    validate(c, p);
  } catch (const config_error& e) {
    return std::string(e.field) + ": " + e.rule;
  }
  return {};
}

}  // namespace dsx
