// open_model_dir: the tiny-v3 folder passes and loads every parameter; copies with a missing tensor, a
// wrong shape or dtype, a differing config.json or a broken shard index fail with messages that name
// the tensor or field, the expected and the found; sharded folders and MTP shared copies work.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/config/counts.hpp"
#include "dsx/config/presets.hpp"
#include "dsx/io/model_dir.hpp"
#include "support/files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsx::safetensors::reader;
using dsx::safetensors::tensor_info;
using dsx::safetensors::writer;
using dsx::test::data_dir;
using dsx::test::error_of;
using dsx::test::temp_dir;

namespace {

fs::path tiny() { return data_dir() / "tiny-v3"; }

void write_config(const fs::path& dir, const dsx::model_config& c) {
  std::ofstream(dir / "config.json") << dsx::to_hf_config(c).dump(2);
}

// Copies tiny-v3's weights into `file`; `edit` may change a tensor's dtype/shape/bytes or drop it
// (return false).
using edit_fn = std::function<bool(tensor_info&, std::vector<std::byte>&)>;
void copy_weights(const fs::path& file, const edit_fn& edit = {}) {
  const reader src(tiny() / "model.safetensors");
  writer w;
  for (const auto& t : src.tensors()) {
    tensor_info info = t;
    const auto b = src.bytes(t);
    std::vector<std::byte> data(b.begin(), b.end());
    if (edit && !edit(info, data)) continue;
    w.add(info.name, info.type, info.shape, data);
  }
  w.write(file);
}

}  // namespace

TEST_CASE("the tiny-v3 folder matches presets::tiny_v3 and loads every parameter", "[io]") {
  const auto& cfg = dsx::presets::tiny_v3;
  const dsx::model_dir md = dsx::open_model_dir(tiny(), cfg);
  REQUIRE(md.shards.size() == 1);  // model.safetensors only: golden.safetensors is not a weight file
  CHECK(md.shards[0].path().filename() == "model.safetensors");
  CHECK(md.config == cfg);

  // Load the whole model into one flat buffer, parameter after parameter, in f64.
  std::vector<double> flat(std::size_t(dsx::params_total(cfg)));
  std::size_t offset = 0;
  dsx::for_each_param(cfg, [&](const dsx::param_spec& p) {
    md.read_param(p, flat.data() + offset);
    offset += std::size_t(p.numel());
  });
  REQUIRE(offset == flat.size());

  // The same values straight from the file, converted independently.
  const reader r(tiny() / "model.safetensors");
  offset = 0;
  bool same = true;
  dsx::for_each_param(cfg, [&](const dsx::param_spec& p) {
    const auto values = r.read<float>(dsx::hf_name(p));
    for (std::size_t i = 0; i < values.size(); ++i) same = same && flat[offset + i] == double(values[i]);
    offset += values.size();
  });
  CHECK(same);

  const reader* which = nullptr;
  const tensor_info& t = md.tensor("model.layers.1.mlp.gate.e_score_correction_bias", &which);
  CHECK(which == &md.shards[0]);
  CHECK(t.shape == std::vector<std::int64_t>{8});
  CHECK_THAT(error_of([&] { (void)md.tensor("model.layers.9.mlp.gate.weight"); }),
             Contains("tiny-v3") && Contains("model.layers.9.mlp.gate.weight"));
}

TEST_CASE("a model folder that does not match the compiled configuration is refused with every problem named", "[io]") {
  const auto& cfg = dsx::presets::tiny_v3;
  temp_dir tmp;
  const fs::path dir = tmp.path;
  fs::copy_file(tiny() / "config.json", dir / "config.json");

  SECTION("a tensor is missing") {
    copy_weights(dir / "model.safetensors", [](tensor_info& t, auto&) {
      return t.name != "model.layers.1.mlp.experts.3.up_proj.weight";
    });
    CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }),
               Contains(dir.string()) && Contains("1 tensor problem") &&
                   Contains("model.layers.1.mlp.experts.3.up_proj.weight: missing (expected shape [24, 48])"));
  }
  SECTION("the routing bias is missing while the configuration has one") {
    copy_weights(dir / "model.safetensors", [](tensor_info& t, auto&) {
      return t.name.find("e_score_correction_bias") == std::string::npos;
    });
    CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }),
               Contains("2 tensor problem") &&
                   Contains("model.layers.1.mlp.gate.e_score_correction_bias: missing (expected shape [8])") &&
                   Contains("model.layers.2.mlp.gate.e_score_correction_bias: missing"));
  }
  SECTION("a tensor has the wrong shape") {
    copy_weights(dir / "model.safetensors", [](tensor_info& t, auto&) {
      if (t.name == "model.layers.0.self_attn.q_a_proj.weight") t.shape = {48, 20};
      return true;
    });
    CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }),
               Contains("model.layers.0.self_attn.q_a_proj.weight: shape: expected [20, 48], found [48, 20] in model.safetensors"));
  }
  SECTION("a tensor has a non-floating dtype") {
    copy_weights(dir / "model.safetensors", [](tensor_info& t, auto&) {
      if (t.name == "model.norm.weight") t.type = dsx::dtype::i32;
      return true;
    });
    CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }),
               Contains("model.norm.weight: dtype: expected F64, F32, F16 or BF16, found I32"));
  }
  SECTION("config.json differs") {
    copy_weights(dir / "model.safetensors");
    dsx::model_config other = cfg;
    other.moe.top_k = 3;
    other.moe.route_scale = 2.0;
    write_config(dir, other);
    CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }),
               Contains((dir / "config.json").string() + " does not match the compiled configuration") &&
                   Contains("moe.top_k: expected 2, found 3") && Contains("moe.route_scale: expected 2.5, found 2.0"));
  }
  SECTION("config.json is missing or broken") {
    copy_weights(dir / "model.safetensors");
    fs::remove(dir / "config.json");
    CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }), Contains("config.json"));
    std::ofstream(dir / "config.json") << "{\"model_type\": \"deepseek_v3\"}";
    CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }),
               Contains("config.json: vocab_size: missing"));
  }
  SECTION("there are no weights") {
    CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }), Contains(dir.string()) && Contains("no weights"));
    CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir / "absent", cfg); }), Contains("not a folder"));
  }
}

TEST_CASE("a configuration without routing bias needs no bias tensors", "[io]") {
  dsx::model_config cfg = dsx::presets::tiny_v3;
  cfg.moe.bias = false;
  temp_dir tmp;
  write_config(tmp.path, cfg);
  copy_weights(tmp.path / "model.safetensors", [](tensor_info& t, auto&) {
    return t.name.find("e_score_correction_bias") == std::string::npos;
  });
  const dsx::model_dir md = dsx::open_model_dir(tmp.path, cfg);
  CHECK(md.find("model.layers.1.mlp.gate.e_score_correction_bias") == nullptr);
}

TEST_CASE("sharded folders are read through model.safetensors.index.json", "[io]") {
  const auto& cfg = dsx::presets::tiny_v3;
  temp_dir tmp;
  const fs::path dir = tmp.path;
  fs::copy_file(tiny() / "config.json", dir / "config.json");

  // Layers 0-1 in the first shard, everything else in the second.
  const reader src(tiny() / "model.safetensors");
  writer first, second;
  nlohmann::json map = nlohmann::json::object();
  for (const auto& t : src.tensors()) {
    const bool early = t.name.starts_with("model.layers.0.") || t.name.starts_with("model.layers.1.");
    (early ? first : second).add(t.name, t.type, t.shape, src.bytes(t));
    map[t.name] = early ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  first.write(dir / "model-00001-of-00002.safetensors");
  second.write(dir / "model-00002-of-00002.safetensors");
  const auto write_index = [&](const nlohmann::json& weight_map) {
    std::ofstream(dir / "model.safetensors.index.json")
        << nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump(2);
  };
  write_index(map);

  {
    const dsx::model_dir md = dsx::open_model_dir(dir, cfg);
    REQUIRE(md.shards.size() == 2);
    const reader* which = nullptr;
    const auto& t = md.tensor("model.layers.2.mlp.experts.5.down_proj.weight", &which);
    CHECK(which->path().filename() == "model-00002-of-00002.safetensors");
    std::vector<float> got(std::size_t(t.numel()));
    which->read_into(t, got.data());
    CHECK(got == src.read<float>("model.layers.2.mlp.experts.5.down_proj.weight"));
  }

  nlohmann::json wrong = map;
  wrong["model.norm.weight"] = "model-00001-of-00002.safetensors";
  write_index(wrong);
  CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }),
             Contains("model.safetensors.index.json: weight_map puts 'model.norm.weight' in model-00001-of-00002.safetensors"));

  nlohmann::json escape = map;
  escape["model.norm.weight"] = "../model.safetensors";
  write_index(escape);
  CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }),
             Contains("weight_map 'model.norm.weight': expected a file name in the model folder, found '../model.safetensors'"));

  // Without an index, every *.safetensors file is a shard; a tensor in two of them is an error.
  fs::remove(dir / "model.safetensors.index.json");
  CHECK(dsx::open_model_dir(dir, cfg).shards.size() == 2);
  writer extra;
  const std::vector<float> norm = src.read<float>("model.norm.weight");
  extra.add<float>("model.norm.weight", norm, {48});
  extra.write(dir / "model-extra.safetensors");
  CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(dir, cfg); }),
             Contains("'model.norm.weight' is in both model-00002-of-00002.safetensors and model-extra.safetensors"));
}

TEST_CASE("MTP copies of the embedding and head may be left out and load from the main model's", "[io]") {
  dsx::model_config cfg = dsx::presets::tiny_v3;
  cfg.mtp_depth = 1;
  temp_dir tmp;
  write_config(tmp.path, cfg);

  // tiny-v3's weights plus an MTP module of constant tensors, without its embedding and head copies.
  const reader src(tiny() / "model.safetensors");
  writer w;
  for (const auto& t : src.tensors()) w.add(t.name, t.type, t.shape, src.bytes(t));
  dsx::for_each_param(cfg, [&](const dsx::param_spec& p) {
    if (!p.mtp(cfg) || p.shared_copy()) return;
    const std::vector<float> values(std::size_t(p.numel()), 0.5f);
    w.add<float>(dsx::hf_name(p), values, dsx::param_shape(p));
  });
  w.write(tmp.path / "model.safetensors");

  const dsx::model_dir md = dsx::open_model_dir(tmp.path, cfg);
  int copies = 0;
  dsx::for_each_param(cfg, [&](const dsx::param_spec& p) {
    if (!p.shared_copy()) return;
    ++copies;
    const std::string main = p.kind == dsx::param_kind::mtp_embed ? "model.embed_tokens.weight" : "lm_head.weight";
    CHECK(md.source_name(p) == main);
    std::vector<float> got(std::size_t(p.numel()));
    md.read_param(p, got.data());
    CHECK(got == src.read<float>(main));
  });
  CHECK(copies == 2);

  // The main model's tiny-v3 configuration is not this folder's: one MTP layer apart.
  CHECK_THAT(error_of([&] { (void)dsx::open_model_dir(tmp.path, dsx::presets::tiny_v3); }),
             Contains("mtp_depth: expected 0, found 1"));
}
