// An HF model folder (config.json + safetensors weights) checked against the configuration a binary was
// compiled for, ready to load parameter by parameter:
//
//   const auto md = dsx::open_model_dir(dir, cfg);
//   dsx::for_each_param(cfg, [&](const dsx::param_spec& p) { md.read_param(p, params + offset_of(p)); });
//
// Weights come from `model.safetensors.index.json` (HF sharded checkpoints: its weight_map names the
// shard of every tensor), else from `model.safetensors`, else from every `*.safetensors` in the folder.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/config/param_spec.hpp"
#include "dsx/core/error.hpp"
#include "dsx/io/hf_config.hpp"
#include "dsx/io/safetensors.hpp"

namespace dsx {

// PyTorch shape of a parameter: (rows) for a vector, (rows, cols) for a matrix.
inline std::vector<std::int64_t> param_shape(const param_spec& p) {
  return p.is_vector() ? std::vector<std::int64_t>{p.rows} : std::vector<std::int64_t>{p.rows, p.cols};
}

struct model_dir {
  std::filesystem::path dir;
  model_config config;                                       // the compiled configuration (== config.json)
  std::vector<safetensors::reader> shards;                   // in file-name order
  std::map<std::string, std::size_t, std::less<>> shard_of;  // tensor name → index into shards

  // The tensor and (through `which`) the shard holding it; nullptr when no shard has it.
  const safetensors::tensor_info* find(std::string_view name, const safetensors::reader** which = nullptr) const {
    const auto it = shard_of.find(name);
    if (it == shard_of.end()) return nullptr;
    const safetensors::reader& r = shards[it->second];
    if (which) *which = &r;
    return r.find(name);
  }
  const safetensors::tensor_info& tensor(std::string_view name, const safetensors::reader** which = nullptr) const {
    const safetensors::tensor_info* t = find(name, which);
    if (!t) throw error(dir.string() + ": no safetensors file in the folder holds '" + std::string(name) + "'");
    return *t;
  }
  // The name a parameter is loaded from: its HF name, or for an MTP copy of the embedding or head that
  // the files leave out, the main model's tensor it copies.
  std::string source_name(const param_spec& p) const {
    std::string name = hf_name(p);
    if (p.shared_copy() && !find(name))
      name = hf_name(param_spec{p.kind == param_kind::mtp_embed ? param_kind::embed : param_kind::head});
    return name;
  }
  // Reads the parameter's p.numel() elements into dst, converted to T.
  template <safetensors::readable T>
  void read_param(const param_spec& p, T* dst) const {
    const safetensors::reader* r = nullptr;
    const safetensors::tensor_info& t = tensor(source_name(p), &r);
    r->read_into(t, dst);
  }
};

namespace detail {

// The weight_map of model.safetensors.index.json: tensor name → shard file name.
inline std::map<std::string, std::string> read_weight_map(const std::filesystem::path& index) {
  const std::string where = index.string();
  std::ifstream in(index, std::ios::binary);
  if (!in) throw error("cannot open '" + where + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const nlohmann::json::exception& e) {
    throw error(where + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw error(where + ": weight_map: expected an object mapping tensor names to shard files");
  std::map<std::string, std::string> map;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string())
      throw error(where + ": weight_map '" + name + "': expected a file name, found " + std::string(file.type_name()));
    const std::string f = file.get<std::string>();
    const std::filesystem::path fp(f);
    if (f.empty() || fp != fp.filename() || f == "." || f == "..")
      throw error(where + ": weight_map '" + name + "': expected a file name in the model folder, found '" + f + "'");
    map.emplace(name, f);
  }
  return map;
}

inline bool is_floating(dtype t) {
  return t == dtype::f64 || t == dtype::f32 || t == dtype::f16 || t == dtype::bf16;
}

}  // namespace detail

// Opens `dir` for the compiled configuration: config.json must equal `compiled` (every differing field
// is listed), and every parameter of for_each_param(compiled), except MTP copies of the embedding and
// head that a file may leave out, must exist with its PyTorch shape and a floating dtype (F64, F32, F16,
// BF16). The routing bias is a parameter exactly when the configuration has one. Tensors the model
// does not use are ignored. Throws dsx::error listing the problems.
inline model_dir open_model_dir(const std::filesystem::path& dir, const model_config& compiled) {
  namespace fs = std::filesystem;
  const std::string where = dir.string();
  if (!fs::is_directory(dir)) throw error(where + ": not a folder");

  const fs::path config_path = dir / "config.json";
  const model_config found = read_hf_config(config_path);
  if (const auto diffs = config_differences(compiled, found); !diffs.empty()) {
    std::string msg = config_path.string() + " does not match the compiled configuration:";
    for (const auto& d : diffs) msg += "\n  " + d;
    throw error(msg);
  }

  model_dir md{.dir = dir, .config = compiled, .shards = {}, .shard_of = {}};
  const fs::path index_path = dir / "model.safetensors.index.json";
  std::map<std::string, std::string> weight_map;
  std::vector<fs::path> files;
  if (fs::exists(index_path)) {
    weight_map = detail::read_weight_map(index_path);
    std::set<std::string> names;
    for (const auto& [tensor, file] : weight_map) names.insert(file);
    for (const auto& n : names) files.push_back(dir / n);
  } else if (fs::exists(dir / "model.safetensors")) {
    files.push_back(dir / "model.safetensors");
  } else {
    for (const auto& entry : fs::directory_iterator(dir))
      if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
    std::sort(files.begin(), files.end());
  }
  if (files.empty())
    throw error(where + ": no weights (expected model.safetensors, model.safetensors.index.json or *.safetensors)");

  for (const auto& f : files) {
    md.shards.emplace_back(f);
    const std::size_t s = md.shards.size() - 1;
    for (const auto& t : md.shards[s].tensors()) {
      const auto [it, fresh] = md.shard_of.emplace(t.name, s);
      if (!fresh)
        throw error(where + ": tensor '" + t.name + "' is in both " + md.shards[it->second].path().filename().string() +
                    " and " + f.filename().string());
    }
  }
  for (const auto& [tensor, file] : weight_map) {
    const auto it = md.shard_of.find(tensor);
    if (it == md.shard_of.end() || md.shards[it->second].path().filename() != file)
      throw error(index_path.string() + ": weight_map puts '" + tensor + "' in " + file + ", which does not hold it");
  }

  std::vector<std::string> problems;
  for_each_param(compiled, [&](const param_spec& p) {
    const std::string name = hf_name(p);
    const std::vector<std::int64_t> shape = param_shape(p);
    const safetensors::reader* r = nullptr;
    const safetensors::tensor_info* t = md.find(name, &r);
    if (!t) {
      if (!p.shared_copy())
        problems.push_back(name + ": missing (expected shape " + safetensors::shape_string(shape) + ")");
      return;
    }
    const std::string in = " in " + r->path().filename().string();
    if (t->shape != shape)
      problems.push_back(name + ": shape: expected " + safetensors::shape_string(shape) + ", found " +
                         safetensors::shape_string(t->shape) + in);
    if (!detail::is_floating(t->type))
      problems.push_back(name + ": dtype: expected F64, F32, F16 or BF16, found " +
                         std::string(safetensors_name(t->type)) + in);
  });
  if (!problems.empty()) {
    constexpr std::size_t shown = 20;
    std::string msg = where + ": " + std::to_string(problems.size()) +
                      " tensor problem(s) against the compiled configuration:";
    for (std::size_t i = 0; i < std::min(shown, problems.size()); ++i) msg += "\n  " + problems[i];
    if (problems.size() > shown) msg += "\n  ... and " + std::to_string(problems.size() - shown) + " more";
    throw error(msg);
  }
  return md;
}

}  // namespace dsx
