// HF config.json ⇄ dsx::model_config: the tiny-v3 and real DeepSeek configs map to the presets, every
// preset survives a round trip, the test configs in tests/data/configs differ from tiny-v3 in exactly
// the feature they exercise, bad files name the file and the key, and to_cpp prints compilable text.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "dsx/config/presets.hpp"
#include "dsx/io/hf_config.hpp"
#include "support/files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsx::test::data_dir;
using dsx::test::error_of;
using nlohmann::json;

namespace {

json load(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

// The field names (before ": expected") that config_differences reports.
std::set<std::string> differing_fields(const dsx::model_config& a, const dsx::model_config& b) {
  std::set<std::string> fields;
  for (const auto& d : dsx::config_differences(a, b)) fields.insert(d.substr(0, d.find(':')));
  return fields;
}

}  // namespace

TEST_CASE("tiny-v3 config.json parses to presets::tiny_v3", "[io]") {
  const dsx::model_config c = dsx::read_hf_config(data_dir() / "tiny-v3" / "config.json");
  CHECK(dsx::config_differences(dsx::presets::tiny_v3, c).empty());
  CHECK(c == dsx::presets::tiny_v3);
}

TEST_CASE("the DeepSeek-V2-Lite, V2 and V3 config.json files parse to their presets", "[io]") {
  const std::pair<const char*, dsx::model_config> cases[] = {
      {"deepseek_v2_lite.json", dsx::presets::v2_lite},
      {"deepseek_v2.json", dsx::presets::v2_236b},
      {"deepseek_v3.json", dsx::presets::v3_671b},
  };
  for (const auto& [file, preset] : cases) {
    INFO(file);
    const dsx::model_config c = dsx::read_hf_config(data_dir() / "configs" / file);
    const auto diffs = dsx::config_differences(preset, c);
    for (const auto& d : diffs) UNSCOPED_INFO(d);
    CHECK(diffs.empty());
    CHECK(c == preset);
  }
}

TEST_CASE("every preset survives to_hf_config, JSON text and parse_hf_config", "[io]") {
  for (const auto& preset : {dsx::presets::tiny_v3, dsx::presets::bench_small, dsx::presets::v2_lite,
                             dsx::presets::v2_236b, dsx::presets::v3_671b}) {
    INFO(dsx::to_cpp(preset));
    const json j = dsx::to_hf_config(preset);
    CHECK(dsx::parse_hf_config(j, "in-memory") == preset);
    const dsx::model_config back = dsx::parse_hf_config(json::parse(j.dump(2)), "text");
    CHECK(dsx::config_differences(preset, back).empty());
    CHECK(back == preset);
  }
  // A dense model (no experts) and one without q-LoRA or YaRN also come back unchanged.
  dsx::model_config dense = dsx::presets::tiny_v3;
  dense.moe = {};
  dense.dense_layers = dense.layers;
  dense.mla.q_lora = 0;
  REQUIRE(dsx::check(dense).empty());
  const json j = dsx::to_hf_config(dense);
  CHECK(j["n_routed_experts"].is_null());
  CHECK(j["q_lora_rank"].is_null());
  CHECK(j["rope_scaling"].is_null());
  CHECK(dsx::parse_hf_config(json::parse(j.dump()), "dense") == dense);
}

TEST_CASE("the test configs differ from tiny-v3 in exactly the feature they exercise", "[io]") {
  const std::pair<const char*, std::set<std::string>> cases[] = {
      {"tiny_softmax_no_bias.json",
       {"moe.groups", "moe.top_groups", "moe.score", "moe.norm_topk", "moe.route_scale", "moe.bias"}},
      {"tiny_no_q_lora.json", {"mla.q_lora"}},
      {"tiny_two_shared.json", {"moe.shared"}},
      {"tiny_group_max.json", {"moe.score", "moe.norm_topk", "moe.route_scale", "moe.bias"}},
      {"tiny_yarn.json",
       {"rope.yarn.factor", "rope.yarn.original_max_positions", "rope.yarn.mscale", "rope.yarn.mscale_all_dim"}},
      {"tiny_two_dense.json", {"dense_layers"}},
      {"tiny_mtp.json", {"mtp_depth"}},
  };
  for (const auto& [file, fields] : cases) {
    INFO(file);
    const dsx::model_config c = dsx::read_hf_config(data_dir() / "configs" / file);
    CHECK(dsx::check(c).empty());
    CHECK(differing_fields(dsx::presets::tiny_v3, c) == fields);
    CHECK((c.hidden <= 64 && c.vocab <= 128));
    CHECK(dsx::parse_hf_config(dsx::to_hf_config(c), file) == c);
  }
  const dsx::model_config soft = dsx::read_hf_config(data_dir() / "configs" / "tiny_softmax_no_bias.json");
  CHECK((soft.moe.score == dsx::score_fn::softmax && !soft.moe.bias && soft.moe.groups == 1));
  const dsx::model_config grouped = dsx::read_hf_config(data_dir() / "configs" / "tiny_group_max.json");
  CHECK((!grouped.moe.bias && grouped.moe.groups == 4 && grouped.moe.top_groups == 2));
  const dsx::model_config yarn = dsx::read_hf_config(data_dir() / "configs" / "tiny_yarn.json");
  CHECK(yarn.rope.yarn.active());
  CHECK(yarn.rope.yarn == dsx::yarn_config{.factor = 4.0, .original_max_positions = 16, .beta_fast = 32.0,
                                           .beta_slow = 1.0, .mscale = 0.707, .mscale_all_dim = 0.707});
  CHECK(dsx::read_hf_config(data_dir() / "configs" / "tiny_no_q_lora.json").mla.q_lora == 0);
  CHECK(dsx::read_hf_config(data_dir() / "configs" / "tiny_two_shared.json").shared_inter() == 2 * soft.moe.inter);
  CHECK(dsx::read_hf_config(data_dir() / "configs" / "tiny_two_dense.json").moe_layers() == 1);
  CHECK(dsx::read_hf_config(data_dir() / "configs" / "tiny_mtp.json").mtp_depth == 1);
}

TEST_CASE("bad config.json contents name the file, the key, the expectation and the finding", "[io]") {
  const json base = load(data_dir() / "tiny-v3" / "config.json");
  const auto fails = [&](const char* what, auto&& edit, std::vector<std::string> parts) {
    INFO(what);
    json j = base;
    edit(j);
    const std::string msg = error_of([&] { (void)dsx::parse_hf_config(j, "bad/config.json"); });
    CHECK_THAT(msg, Contains("bad/config.json: "));
    for (const auto& p : parts) CHECK_THAT(msg, Contains(p));
  };
  fails("missing field", [](json& j) { j.erase("hidden_size"); }, {"hidden_size: missing (required integer)"});
  fails("wrong type", [](json& j) { j["hidden_size"] = "48"; }, {"hidden_size: expected an integer, found string \"48\""});
  fails("float for an integer", [](json& j) { j["num_attention_heads"] = 3.5; }, {"num_attention_heads: expected an integer"});
  fails("too large", [](json& j) { j["vocab_size"] = 1ll << 40; }, {"vocab_size: expected an integer that fits in 32 bits"});
  fails("wrong type of a number", [](json& j) { j["rms_norm_eps"] = true; }, {"rms_norm_eps: expected a number, found boolean"});
  fails("top_k above routed", [](json& j) { j["num_experts_per_tok"] = 9; },
        {"moe.top_k (num_experts_per_tok): must be between 1 and moe.routed"});
  fails("odd rope dims", [](json& j) { j["qk_rope_head_dim"] = 5; }, {"mla.rope (qk_rope_head_dim): must be positive and even"});
  fails("groups", [](json& j) { j["n_group"] = 3; }, {"moe.groups (n_group): must be positive and divide moe.routed"});
  fails("model type", [](json& j) { j["model_type"] = "llama"; },
        {"model_type: expected \"deepseek_v2\" or \"deepseek_v3\", found \"llama\""});
  fails("activation", [](json& j) { j["hidden_act"] = "gelu"; }, {"hidden_act: expected \"silu\"", "\"gelu\""});
  fails("tied embeddings", [](json& j) { j["tie_word_embeddings"] = true; }, {"tie_word_embeddings: expected false"});
  fails("grouped kv heads", [](json& j) { j["num_key_value_heads"] = 1; },
        {"num_key_value_heads: expected num_attention_heads (3), found 1"});
  fails("moe frequency", [](json& j) { j["moe_layer_freq"] = 2; }, {"moe_layer_freq: expected 1", "found 2"});
  fails("scoring", [](json& j) { j["scoring_func"] = "relu"; }, {"scoring_func: expected \"softmax\" or \"sigmoid\", found \"relu\""});
  fails("topk method", [](json& j) { j["topk_method"] = "random"; }, {"topk_method: expected", "found \"random\""});
  fails("greedy with limited groups", [](json& j) { j["topk_method"] = "greedy"; }, {"topk_method: \"greedy\" ignores groups"});
  fails("moe key of an MoE model", [](json& j) { j.erase("topk_method"); }, {"topk_method: missing (required string)"});
  fails("rope scaling type", [](json& j) { j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}}; },
        {"rope_scaling.type: expected \"yarn\"", "found \"linear\""});
  fails("rope scaling rope_type", [](json& j) { j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}}; },
        {"rope_scaling.rope_type: expected \"yarn\"", "found \"dynamic\""});
  fails("yarn without factor",
        [](json& j) { j["rope_scaling"] = {{"type", "yarn"}, {"original_max_position_embeddings", 16}}; },
        {"rope_scaling.factor: missing (required number)"});
  fails("yarn without original length", [](json& j) { j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}}; },
        {"rope_scaling.original_max_position_embeddings: missing"});
  fails("yarn rule", [](json& j) { j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 0}}; },
        {"rope.yarn.original_max_positions (rope_scaling.original_max_position_embeddings): must be positive"});
  fails("rope scaling type of value", [](json& j) { j["rope_scaling"] = "yarn"; }, {"rope_scaling: expected null or an object"});
  fails("not an object", [](json& j) { j = json::array(); }, {"expected a JSON object at the top level, found array"});

  const std::string unreadable = error_of([] { (void)dsx::read_hf_config("no/such/config.json"); });
  CHECK_THAT(unreadable, Contains("no/such/config.json"));
  const fs::path bad = fs::temp_directory_path() / ("dsx-io-bad-config-" + std::to_string(::getpid()) + ".json");
  std::ofstream(bad) << "{\"vocab_size\": 96,";
  const std::string not_json = error_of([&] { (void)dsx::read_hf_config(bad); });
  fs::remove(bad);
  CHECK_THAT(not_json, Contains(bad.filename().string()) && Contains("not valid JSON"));
}

TEST_CASE("keys that HF configs leave null or out take their documented meaning", "[io]") {
  json j = load(data_dir() / "tiny-v3" / "config.json");
  j.erase("num_nextn_predict_layers");
  j["n_group"] = nullptr;
  j["topk_group"] = nullptr;
  const dsx::model_config ungrouped = dsx::parse_hf_config(j, "nulls");
  CHECK(ungrouped.mtp_depth == 0);
  CHECK((ungrouped.moe.groups == 1 && ungrouped.moe.top_groups == 1));

  // No experts: the MoE keys may all be missing, and every layer is dense.
  json dense = load(data_dir() / "tiny-v3" / "config.json");
  for (const char* key : {"n_shared_experts", "num_experts_per_tok", "n_group", "topk_group", "scoring_func",
                          "topk_method", "norm_topk_prob", "routed_scaling_factor", "moe_intermediate_size",
                          "first_k_dense_replace"})
    dense.erase(key);
  dense["n_routed_experts"] = nullptr;
  const dsx::model_config d = dsx::parse_hf_config(dense, "dense");
  CHECK(d.moe.routed == 0);
  CHECK(d.dense_layers == d.layers);
  CHECK(d.moe_layers() == 0);
  dense.erase("n_routed_experts");
  CHECK(dsx::parse_hf_config(dense, "dense") == d);
}

TEST_CASE("config_differences lists every differing field with both values", "[io]") {
  const dsx::model_config a = dsx::presets::tiny_v3;
  CHECK(dsx::config_differences(a, a).empty());
  dsx::model_config b = a;
  b.moe.top_k = 4;
  b.moe.score = dsx::score_fn::softmax;
  b.rms_eps = 1e-5;
  b.rope.yarn.mscale_all_dim = 0.707;
  const std::vector<std::string> expected{"moe.top_k: expected 2, found 4", "moe.score: expected sigmoid, found softmax",
                                          "rope.yarn.mscale_all_dim: expected 0.0, found 0.707",
                                          "rms_eps: expected 1e-06, found 1e-05"};
  CHECK(dsx::config_differences(a, b) == expected);
}

// The text to_cpp prints for two presets, kept here as code too: the static_asserts prove the text
// compiles to the preset, the tests that to_cpp prints exactly that text.
#define DSX_TINY_V3_CPP                                                                                             \
  dsx::model_config{.vocab = 96, .hidden = 48, .layers = 3, .dense_layers = 1, .dense_inter = 80,                   \
                    .mla = {.heads = 3, .q_lora = 20, .kv_lora = 16, .nope = 8, .rope = 4, .v = 12},                \
                    .moe = {.routed = 8, .shared = 1, .top_k = 2, .groups = 4, .top_groups = 2,                     \
                            .score = dsx::score_fn::sigmoid, .norm_topk = true, .route_scale = 2.5, .bias = true,   \
                            .inter = 24},                                                                           \
                    .rope = {.theta = 10000.0, .yarn = {.factor = 1.0, .original_max_positions = 0,                 \
                                                        .beta_fast = 32.0, .beta_slow = 1.0, .mscale = 1.0,         \
                                                        .mscale_all_dim = 0.0}},                                    \
                    .rms_eps = 1e-06, .mtp_depth = 0, .max_positions = 64}
#define DSX_V2_LITE_CPP                                                                                             \
  dsx::model_config{.vocab = 102400, .hidden = 2048, .layers = 27, .dense_layers = 1, .dense_inter = 10944,         \
                    .mla = {.heads = 16, .q_lora = 0, .kv_lora = 512, .nope = 128, .rope = 64, .v = 128},           \
                    .moe = {.routed = 64, .shared = 2, .top_k = 6, .groups = 1, .top_groups = 1,                    \
                            .score = dsx::score_fn::softmax, .norm_topk = false, .route_scale = 1.0, .bias = false, \
                            .inter = 1408},                                                                         \
                    .rope = {.theta = 10000.0, .yarn = {.factor = 40.0, .original_max_positions = 4096,             \
                                                        .beta_fast = 32.0, .beta_slow = 1.0, .mscale = 0.707,       \
                                                        .mscale_all_dim = 0.707}},                                  \
                    .rms_eps = 1e-06, .mtp_depth = 0, .max_positions = 163840}
#define DSX_STRINGIZE_(...) #__VA_ARGS__
#define DSX_STRINGIZE(...) DSX_STRINGIZE_(__VA_ARGS__)
static_assert(DSX_TINY_V3_CPP == dsx::presets::tiny_v3);
static_assert(DSX_V2_LITE_CPP == dsx::presets::v2_lite);

TEST_CASE("to_cpp prints a designated-initialiser expression that compiles to the configuration", "[io]") {
  CHECK(dsx::to_cpp(dsx::presets::tiny_v3) == DSX_STRINGIZE(DSX_TINY_V3_CPP));
  CHECK(dsx::to_cpp(dsx::presets::v2_lite) == DSX_STRINGIZE(DSX_V2_LITE_CPP));
  // Doubles read back exactly, however many digits they need.
  dsx::model_config c = dsx::presets::tiny_v3;
  c.moe.route_scale = 0.1 + 0.2;
  const std::string text = dsx::to_cpp(c);
  const auto at = text.find(".route_scale = ") + 15;
  CHECK(std::stod(text.substr(at, text.find(',', at) - at)) == c.moe.route_scale);
}
