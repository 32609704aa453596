// HF config.json (DeepseekV2 / DeepseekV3) ⇄ dsx::model_config, plus the C++ text of a configuration
// (what generated per-model headers compile) and a field-by-field comparison.
//
// Mapping (HF key → model_config field):
//   vocab_size → vocab, hidden_size → hidden, num_hidden_layers → layers,
//   first_k_dense_replace → dense_layers, intermediate_size → dense_inter,
//   num_attention_heads → mla.heads, q_lora_rank (null = none) → mla.q_lora, kv_lora_rank → mla.kv_lora,
//   qk_nope_head_dim → mla.nope, qk_rope_head_dim → mla.rope, v_head_dim → mla.v,
//   n_routed_experts (null = dense model) → moe.routed, n_shared_experts → moe.shared,
//   num_experts_per_tok → moe.top_k, n_group → moe.groups, topk_group → moe.top_groups,
//   scoring_func → moe.score, norm_topk_prob → moe.norm_topk, routed_scaling_factor → moe.route_scale,
//   topk_method ("noaux_tc" = correction bias, "greedy" / "group_limited_greedy" = none) → moe.bias,
//   moe_intermediate_size → moe.inter, rope_theta → rope.theta, rope_scaling (null or YaRN) → rope.yarn,
//   rms_norm_eps → rms_eps, num_nextn_predict_layers → mtp_depth, max_position_embeddings → max_positions.
// The MoE keys are required when n_routed_experts > 0 and optional otherwise; n_group and topk_group
// may be null or absent (1: no group limit). Keys that would describe a model dsx does not build
// (another activation, tied embeddings, grouped KV heads, attention biases, MoE every other layer,
// non-interleaved RoPE) are refused when present.
#pragma once

#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/config/checks.hpp"
#include "dsx/config/model_config.hpp"
#include "dsx/config/reflect.hpp"
#include "dsx/core/error.hpp"

namespace dsx {

namespace detail::hf {

using json = nlohmann::json;

// The shortest decimal text that reads back as exactly `v`, always with a '.' or an exponent so that
// it is a floating literal in C++ and in JSON.
inline std::string exact_double(double v) {
  require(std::isfinite(v), "cannot print the non-finite value " + std::to_string(v) + " as a configuration value");
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

inline std::string found(const json& v) {
  std::string text = v.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return std::string(v.type_name()) + " " + text;
}

// Typed access to one JSON object, with messages "<source>: <prefix><key>: expected ..., found ...".
class fields {
 public:
  fields(const json& object, const std::string& source, std::string prefix = "")
      : obj_(object), source_(source), prefix_(std::move(prefix)) {}

  // nullptr when the key is absent.
  const json* get(const char* key) const {
    const auto it = obj_.find(key);
    return it == obj_.end() ? nullptr : &*it;
  }
  // nullptr when the key is absent or null.
  const json* value(const char* key) const {
    const json* v = get(key);
    return v && !v->is_null() ? v : nullptr;
  }
  [[noreturn]] void fail(const char* key, const std::string& what) const {
    throw error(source_ + ": " + prefix_ + key + ": " + what);
  }
  const json& required(const char* key, const char* type) const {
    const json* v = get(key);
    if (!v) fail(key, std::string("missing (required ") + type + ")");
    return *v;
  }

  int integer(const json& v, const char* key) const {
    if (!v.is_number_integer()) fail(key, "expected an integer, found " + found(v));
    if (v.is_number_unsigned() ? v.get<std::uint64_t>() > std::uint64_t(std::numeric_limits<int>::max())
                               : (v.get<std::int64_t>() < std::numeric_limits<int>::min() ||
                                  v.get<std::int64_t>() > std::numeric_limits<int>::max()))
      fail(key, "expected an integer that fits in 32 bits, found " + v.dump());
    return v.get<int>();
  }
  double number(const json& v, const char* key) const {
    if (!v.is_number()) fail(key, "expected a number, found " + found(v));
    return v.get<double>();
  }
  bool boolean(const json& v, const char* key) const {
    if (!v.is_boolean()) fail(key, "expected true or false, found " + found(v));
    return v.get<bool>();
  }
  std::string string(const json& v, const char* key) const {
    if (!v.is_string()) fail(key, "expected a string, found " + found(v));
    return v.get<std::string>();
  }

  int integer(const char* key) const { return integer(required(key, "integer"), key); }
  double number(const char* key) const { return number(required(key, "number"), key); }
  bool boolean(const char* key) const { return boolean(required(key, "true or false"), key); }
  std::string string(const char* key) const { return string(required(key, "string"), key); }

  // Required when `needed`; otherwise an absent key gives `fallback`.
  int integer(const char* key, bool needed, int fallback) const {
    const json* v = get(key);
    return v || needed ? integer(key) : fallback;
  }
  double number(const char* key, bool needed, double fallback) const {
    const json* v = get(key);
    return v || needed ? number(key) : fallback;
  }
  bool boolean(const char* key, bool needed, bool fallback) const {
    const json* v = get(key);
    return v || needed ? boolean(key) : fallback;
  }
  std::string string(const char* key, bool needed, const std::string& fallback) const {
    const json* v = get(key);
    return v || needed ? string(key) : fallback;
  }
  // null or absent gives `fallback`.
  int integer_or_null(const char* key, int fallback) const {
    const json* v = value(key);
    return v ? integer(*v, key) : fallback;
  }

 private:
  const json& obj_;
  const std::string& source_;
  std::string prefix_;
};

// The HF key a model_config field comes from, for messages about rule violations.
inline const char* hf_key(std::string_view field) {
  static constexpr std::pair<std::string_view, const char*> keys[] = {
      {"vocab", "vocab_size"},
      {"hidden", "hidden_size"},
      {"layers", "num_hidden_layers"},
      {"dense_layers", "first_k_dense_replace"},
      {"dense_inter", "intermediate_size"},
      {"max_positions", "max_position_embeddings"},
      {"rms_eps", "rms_norm_eps"},
      {"mtp_depth", "num_nextn_predict_layers"},
      {"mla.heads", "num_attention_heads"},
      {"mla.q_lora", "q_lora_rank"},
      {"mla.kv_lora", "kv_lora_rank"},
      {"mla.nope", "qk_nope_head_dim"},
      {"mla.rope", "qk_rope_head_dim"},
      {"mla.v", "v_head_dim"},
      {"rope.theta", "rope_theta"},
      {"rope.yarn.factor", "rope_scaling.factor"},
      {"rope.yarn.original_max_positions", "rope_scaling.original_max_position_embeddings"},
      {"rope.yarn.beta_fast", "rope_scaling.beta_fast"},
      {"rope.yarn.beta_slow", "rope_scaling.beta_slow"},
      {"rope.yarn.mscale", "rope_scaling.mscale"},
      {"moe.routed", "n_routed_experts"},
      {"moe.shared", "n_shared_experts"},
      {"moe.top_k", "num_experts_per_tok"},
      {"moe.groups", "n_group"},
      {"moe.top_groups", "topk_group"},
      {"moe.route_scale", "routed_scaling_factor"},
      {"moe.inter", "moe_intermediate_size"},
  };
  for (const auto& [f, k] : keys)
    if (f == field) return k;
  return nullptr;
}

inline yarn_config parse_yarn(const json& j, const std::string& source) {
  const fields f(j, source, "rope_scaling.");
  const json* type = f.get("type");
  const char* type_key = "type";
  if (!type) {
    type = f.get("rope_type");
    type_key = "rope_type";
  }
  if (!type) f.fail("type", "missing (expected \"yarn\", the only rope scaling DeepSeek models use)");
  const std::string name = f.string(*type, type_key);
  if (name != "yarn")
    f.fail(type_key, "expected \"yarn\" (the only rope scaling DeepSeek models use), found \"" + name + "\"");
  const yarn_config d{};
  return yarn_config{.factor = f.number("factor"),
                     .original_max_positions = f.integer("original_max_position_embeddings"),
                     .beta_fast = f.number("beta_fast", false, d.beta_fast),
                     .beta_slow = f.number("beta_slow", false, d.beta_slow),
                     .mscale = f.number("mscale", false, d.mscale),
                     .mscale_all_dim = f.number("mscale_all_dim", false, d.mscale_all_dim)};
}

}  // namespace detail::hf

// Maps an HF DeepseekV2/V3 config.json to a model_config and validates it (config/checks.hpp).
// `source` names the file in messages: "<source>: <key>: expected ..., found ...", and for a broken
// rule "<source>: <field> (<hf key>): <rule>".
inline model_config parse_hf_config(const nlohmann::json& j, const std::string& source) {
  using detail::hf::fields;
  if (!j.is_object()) throw error(source + ": expected a JSON object at the top level, found " + std::string(j.type_name()));
  const fields f(j, source);

  const std::string model_type = f.string("model_type");
  if (model_type != "deepseek_v2" && model_type != "deepseek_v3")
    f.fail("model_type", "expected \"deepseek_v2\" or \"deepseek_v3\", found \"" + model_type + "\"");
  if (f.get("hidden_act") && f.string("hidden_act") != "silu")
    f.fail("hidden_act", "expected \"silu\" (SwiGLU), found \"" + f.string("hidden_act") + "\"");
  if (f.get("tie_word_embeddings") && f.boolean("tie_word_embeddings"))
    f.fail("tie_word_embeddings", "expected false (DeepSeek models keep a separate lm_head), found true");
  if (f.get("attention_bias") && f.boolean("attention_bias"))
    f.fail("attention_bias", "expected false (MLA projections have no bias), found true");
  if (f.get("rope_interleave") && !f.boolean("rope_interleave"))
    f.fail("rope_interleave", "expected true (RoPE rotates interleaved pairs), found false");
  if (f.get("moe_layer_freq") && f.integer("moe_layer_freq") != 1)
    f.fail("moe_layer_freq", "expected 1 (every layer after the dense ones is MoE), found " +
                                 std::to_string(f.integer("moe_layer_freq")));

  model_config c;
  c.vocab = f.integer("vocab_size");
  c.hidden = f.integer("hidden_size");
  c.layers = f.integer("num_hidden_layers");
  c.dense_inter = f.integer("intermediate_size");

  c.mla.heads = f.integer("num_attention_heads");
  if (f.get("num_key_value_heads") && f.integer("num_key_value_heads") != c.mla.heads)
    f.fail("num_key_value_heads", "expected num_attention_heads (" + std::to_string(c.mla.heads) + "), found " +
                                      std::to_string(f.integer("num_key_value_heads")));
  c.mla.q_lora = f.integer_or_null("q_lora_rank", 0);
  c.mla.kv_lora = f.integer("kv_lora_rank");
  c.mla.nope = f.integer("qk_nope_head_dim");
  c.mla.rope = f.integer("qk_rope_head_dim");
  c.mla.v = f.integer("v_head_dim");

  c.moe.routed = f.integer_or_null("n_routed_experts", 0);
  const bool moe = c.moe.routed != 0;  // the MoE keys are required only for a model that has experts
  c.dense_layers = f.integer("first_k_dense_replace", moe, c.layers);
  const moe_config d{};
  if (moe) f.required("n_shared_experts", "integer or null");
  c.moe.shared = f.integer_or_null("n_shared_experts", 0);
  c.moe.top_k = f.integer("num_experts_per_tok", moe, d.top_k);
  c.moe.groups = f.integer_or_null("n_group", d.groups);
  c.moe.top_groups = f.integer_or_null("topk_group", d.top_groups);
  const std::string score = f.string("scoring_func", moe, "softmax");
  if (score == "softmax")
    c.moe.score = score_fn::softmax;
  else if (score == "sigmoid")
    c.moe.score = score_fn::sigmoid;
  else
    f.fail("scoring_func", "expected \"softmax\" or \"sigmoid\", found \"" + score + "\"");
  const std::string method = f.string("topk_method", moe, "greedy");
  if (method == "noaux_tc") {
    c.moe.bias = true;
  } else if (method == "group_limited_greedy") {
    c.moe.bias = false;
  } else if (method == "greedy") {
    // Plain top-k over all experts: the same routing as keeping every group.
    c.moe.bias = false;
    if (moe && c.moe.top_groups != c.moe.groups)
      f.fail("topk_method", "\"greedy\" ignores groups, but n_group " + std::to_string(c.moe.groups) + " / topk_group " +
                                std::to_string(c.moe.top_groups) + " limit them (use \"group_limited_greedy\")");
  } else {
    f.fail("topk_method", "expected \"noaux_tc\", \"greedy\" or \"group_limited_greedy\", found \"" + method + "\"");
  }
  c.moe.norm_topk = f.boolean("norm_topk_prob", moe, d.norm_topk);
  c.moe.route_scale = f.number("routed_scaling_factor", moe, d.route_scale);
  c.moe.inter = f.integer("moe_intermediate_size", moe, d.inter);

  c.rope.theta = f.number("rope_theta");
  if (const auto* scaling = f.value("rope_scaling")) {
    if (!scaling->is_object()) f.fail("rope_scaling", "expected null or an object, found " + detail::hf::found(*scaling));
    c.rope.yarn = detail::hf::parse_yarn(*scaling, source);
  }
  c.rms_eps = f.number("rms_norm_eps");
  c.mtp_depth = f.integer_or_null("num_nextn_predict_layers", 0);
  c.max_positions = f.integer("max_position_embeddings");

  try {
    validate(c);
  } catch (const config_error& e) {
    const char* key = detail::hf::hf_key(e.field);
    throw error(source + ": " + e.field + (key ? std::string(" (") + key + ")" : std::string()) + ": " + e.rule);
  }
  return c;
}

inline model_config read_hf_config(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw error("cannot open '" + p.string() + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const nlohmann::json::exception& e) {
    throw error(p.string() + ": not valid JSON: " + e.what());
  }
  return parse_hf_config(j, p.string());
}

// A DeepseekV3-style config.json of `c`; parse_hf_config(to_hf_config(c), ...) == c for every valid c.
inline nlohmann::json to_hf_config(const model_config& c) {
  using json = nlohmann::json;
  const auto nullable = [](int v) { return v == 0 ? json(nullptr) : json(v); };
  json j = {
      {"architectures", json::array({"DeepseekV3ForCausalLM"})},
      {"model_type", "deepseek_v3"},
      {"vocab_size", c.vocab},
      {"hidden_size", c.hidden},
      {"num_hidden_layers", c.layers},
      {"first_k_dense_replace", c.dense_layers},
      {"intermediate_size", c.dense_inter},
      {"num_attention_heads", c.mla.heads},
      {"num_key_value_heads", c.mla.heads},
      {"q_lora_rank", nullable(c.mla.q_lora)},
      {"kv_lora_rank", c.mla.kv_lora},
      {"qk_nope_head_dim", c.mla.nope},
      {"qk_rope_head_dim", c.mla.rope},
      {"v_head_dim", c.mla.v},
      {"n_routed_experts", nullable(c.moe.routed)},
      {"n_shared_experts", c.moe.shared},
      {"num_experts_per_tok", c.moe.top_k},
      {"n_group", c.moe.groups},
      {"topk_group", c.moe.top_groups},
      {"scoring_func", c.moe.score == score_fn::sigmoid ? "sigmoid" : "softmax"},
      {"topk_method", c.moe.bias ? "noaux_tc" : c.moe.top_groups < c.moe.groups ? "group_limited_greedy" : "greedy"},
      {"norm_topk_prob", c.moe.norm_topk},
      {"routed_scaling_factor", c.moe.route_scale},
      {"moe_intermediate_size", c.moe.inter},
      {"moe_layer_freq", 1},
      {"hidden_act", "silu"},
      {"rope_theta", c.rope.theta},
      {"rms_norm_eps", c.rms_eps},
      {"num_nextn_predict_layers", c.mtp_depth},
      {"max_position_embeddings", c.max_positions},
      {"tie_word_embeddings", false},
      {"attention_bias", false},
  };
  const yarn_config& y = c.rope.yarn;
  j["rope_scaling"] = y == yarn_config{} ? json(nullptr)
                                         : json{{"type", "yarn"},
                                                {"factor", y.factor},
                                                {"original_max_position_embeddings", y.original_max_positions},
                                                {"beta_fast", y.beta_fast},
                                                {"beta_slow", y.beta_slow},
                                                {"mscale", y.mscale},
                                                {"mscale_all_dim", y.mscale_all_dim}};
  return j;
}

namespace detail::hf {
// A leaf value as C++ source (to_cpp) and as text in messages (config_differences).
template <class V>
std::string value_text(const V& v, bool as_cpp) {
  if constexpr (std::is_same_v<V, bool>) return v ? "true" : "false";
  else if constexpr (std::is_same_v<V, double>) return std::isfinite(v) ? exact_double(v) : std::to_string(v);
  else if constexpr (std::is_same_v<V, score_fn>)
    return std::string(as_cpp ? "dsx::score_fn::" : "") + (v == score_fn::sigmoid ? "sigmoid" : "softmax");
  else return std::to_string(v);
}

template <class S>
std::string cpp_initializer(const S& s) {
  std::string out = "{";
  boost::hana::for_each(boost::hana::accessors<S>(), [&](auto pair) {
    const auto& value = boost::hana::second(pair)(s);
    using V = std::decay_t<decltype(value)>;
    if (out.size() > 1) out += ", ";
    out += std::string(".") + boost::hana::to<const char*>(boost::hana::first(pair)) + " = ";
    if constexpr (is_reflected_struct<V>) out += cpp_initializer(value);
    else out += value_text(value, true);
  });
  return out + "}";
}
}  // namespace detail::hf

// A C++ expression that constructs `c` with designated initialisers, every field spelled out in
// declaration order (config/reflect.hpp is the field list); doubles read back exactly.
inline std::string to_cpp(const model_config& c) { return "dsx::model_config" + detail::hf::cpp_initializer(c); }

// Every field where the configurations differ, as "moe.top_k: expected 2, found 4"; empty when equal.
inline std::vector<std::string> config_differences(const model_config& expected, const model_config& found) {
  std::vector<std::string> out;
  for_each_field_pair(expected, found, [&](const std::string& path, const auto& e, const auto& f) {
    if (!(e == f))
      out.push_back(path + ": expected " + detail::hf::value_text(e, false) + ", found " + detail::hf::value_text(f, false));
  });
  return out;
}

}  // namespace dsx
