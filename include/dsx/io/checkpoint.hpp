// Training checkpoints: everything a run needs to continue bit-identically, in one folder.
//
//   OUT/checkpoint/
//     config.json            to_hf_config(model config): with model.safetensors an HF model folder
//     model.safetensors      every parameter under its HF name, in the model's storage type; the routing
//                            biases are the e_score_correction_bias tensors. The MTP copies of the
//                            embedding and the head (model.layers.<L + k − 1>.embed_tokens.weight and
//                            .shared_head.head.weight) are written too, as DeepSeek-V3's checkpoints store
//                            them, so HF-style MTP loaders find them; loading ignores them (they are the
//                            main tensors).
//     optimizer.safetensors  AdamW: "m" and "v" (flat, the parameter buffer's order and length, in the
//                            moment type), "step" (I64 scalar: updates applied, AdamW's bias correction)
//                            and, for a policy with a master copy, "master" (F32, flat like m: the master
//                            weights, of which model.safetensors holds the rounding)
//     trainer_state.json     format, step, updates (the schedule position), tokens seen, seed, loader
//                            state, skipped steps, consecutive non-finite steps, the storage types
//                            (master_dtype "none" without a master copy; a checkpoint without the field
//                            predates master copies and has none; linear_dtype "F8_E4M3" when the
//                            Linears' GEMMs run in FP8, else param_dtype, which a checkpoint without the
//                            field implies), and the training options the run was started with
//
// Atomicity: the files are written into OUT/checkpoint.tmp (any stale one from a crash is removed
// first), each flushed to disk (write_file_atomic), then OUT/checkpoint becomes OUT/checkpoint.prev
// (replacing an older .prev), OUT/checkpoint.tmp becomes OUT/checkpoint, and OUT is flushed. A crash at
// any point leaves a complete checkpoint: OUT/checkpoint, or — between the two renames — only
// OUT/checkpoint.prev, which find_checkpoint() falls back to. The .prev folder (the checkpoint before the
// last) is kept.
//
// load_checkpoint validates everything before touching the model: the format tag, every field of
// trainer_state.json, config.json against the compiled configuration, every tensor's name, shape and
// exact dtype (an exact resume needs the same storage types), the moments' length and the step.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/data/loader.hpp"
#include "dsx/io/hf_config.hpp"
#include "dsx/io/model_dir.hpp"
#include "dsx/io/safetensors.hpp"
#include "dsx/optim/adamw.hpp"

namespace dsx {

inline constexpr const char* checkpoint_format = "dsx-checkpoint-1";

// Where a training run stands, besides the weights and the optimizer moments.
struct trainer_state {
  std::int64_t step = 0;             // training steps done (skipped ones and ones without an update included)
  std::int64_t updates = 0;          // optimizer updates applied: the LR schedule position
  std::int64_t tokens = 0;           // target tokens consumed
  std::uint64_t seed = 0;            // the run's seed (initialisation; the loader's shuffle seed is in `loader`)
  loader_state loader;               // the data position
  std::int64_t skipped = 0;          // steps skipped for a non-finite loss or gradient, in total
  std::int64_t consecutive_bad = 0;  // ... in a row up to `step`
  nlohmann::json options = nlohmann::json::object();  // the training options of the run (pretrain.hpp)
};

inline std::filesystem::path checkpoint_path(const std::filesystem::path& out) { return out / "checkpoint"; }

// The checkpoint folder to resume from in `out`: checkpoint/, or checkpoint.prev/ when a crash came
// between the two renames of save_checkpoint; nullopt when there is neither.
inline std::optional<std::filesystem::path> find_checkpoint(const std::filesystem::path& out) {
  namespace fs = std::filesystem;
  if (fs::is_directory(out / "checkpoint")) return out / "checkpoint";
  if (fs::is_directory(out / "checkpoint.prev")) return out / "checkpoint.prev";
  return std::nullopt;
}

namespace checkpoint_detail {

inline void write_text(const std::filesystem::path& p, const std::string& text) {
  const std::span<const std::byte> piece = std::as_bytes(std::span(text));
  write_file_atomic(p, std::span<const std::span<const std::byte>>(&piece, 1));
}

inline void sync_folder(const std::filesystem::path& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw error("cannot flush the folder '" + folder.string() + "': " + std::strerror(errno));
  const int synced = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (synced != 0) throw error("cannot flush the folder '" + folder.string() + "': " + std::strerror(err));
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw error("checkpoint: cannot open '" + p.string() + "' (missing file?)");
  try {
    return nlohmann::json::parse(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const nlohmann::json::exception& e) {
    throw error("checkpoint: '" + p.string() + "' is not valid JSON: " + e.what());
  }
}

inline const nlohmann::json& field(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end()) throw error(where + ": missing field \"" + key + "\"");
  return *it;
}

inline std::int64_t count_field(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json& v = field(j, key, where);
  if (!v.is_number_integer() || v.get<std::int64_t>() < 0)
    throw error(where + ": field \"" + key + "\" must be a non-negative integer, found " + v.dump());
  return v.get<std::int64_t>();
}

inline std::string dtype_name(dtype t) { return std::string(safetensors_name(t)); }

// trainer_state.json's "master_dtype": the master weights' type, "none" without a master copy.
template <class Model>
std::string master_dtype_name() {
  return adamw<Model>::has_master ? dtype_name(dtype::f32) : std::string("none");
}

// trainer_state.json's "linear_dtype": what the Linears' GEMMs take as inputs.
template <class Model>
std::string linear_dtype_name() {
  return Model::precision.fp8_linear ? dtype_name(dtype::fp8_e4m3) : dtype_name(Model::precision.param);
}

}  // namespace checkpoint_detail

// Writes `model` as an HF model folder: config.json and model.safetensors (every tensor under its HF
// name, in the model's storage type). `folder` is created; files in it are replaced.
template <class Model>
void write_weights(const std::filesystem::path& folder, Model& model) {
  using T = typename Model::T;
  std::filesystem::create_directories(folder);
  checkpoint_detail::write_text(folder / "config.json", to_hf_config(Model::config).dump(2) + "\n");
  safetensors::writer weights;
  weights.set_metadata("format", "pt");
  for (const auto& e : model.params().entries()) {
    const std::vector<T> values = model.get_param(e);
    weights.add<T>(e.name, values, param_shape(e.spec));
  }
  weights.write(folder / "model.safetensors");
}

// Writes the checkpoint of `model`, `optimizer` and `state` to out/checkpoint (see the top of the file).
template <class Model>
void save_checkpoint(const std::filesystem::path& out, Model& model, adamw<Model>& optimizer, const trainer_state& state) {
  namespace fs = std::filesystem;
  using T = typename Model::T;
  using M = typename adamw<Model>::M;
  fs::create_directories(out);
  const fs::path tmp = out / "checkpoint.tmp", dst = out / "checkpoint", prev = out / "checkpoint.prev";
  fs::remove_all(tmp);
  fs::create_directory(tmp);

  write_weights(tmp, model);

  const std::int64_t n = optimizer.size();
  std::vector<M> m(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n));
  model.backend().download(m.data(), optimizer.m(), m.size() * sizeof(M));
  model.backend().download(v.data(), optimizer.v(), v.size() * sizeof(M));
  safetensors::writer moments;
  const std::int64_t step = optimizer.steps();
  moments.add<std::int64_t>("step", std::span<const std::int64_t>(&step, 1), {});
  moments.add<M>("m", m, {n});
  moments.add<M>("v", v, {n});
  std::vector<float> master;
  if constexpr (adamw<Model>::has_master) {
    master.resize(static_cast<std::size_t>(n));
    model.backend().download(master.data(), optimizer.current_master(), master.size() * sizeof(float));
    moments.add<float>("master", master, {n});
  }
  moments.write(tmp / "optimizer.safetensors");

  const nlohmann::json j = {{"format", checkpoint_format},
                            {"step", state.step},
                            {"updates", state.updates},
                            {"tokens", state.tokens},
                            {"seed", state.seed},
                            {"loader", to_json(state.loader)},
                            {"skipped", state.skipped},
                            {"consecutive_bad", state.consecutive_bad},
                            {"param_dtype", checkpoint_detail::dtype_name(safetensors::dtype_of<T>())},
                            {"moment_dtype", checkpoint_detail::dtype_name(safetensors::dtype_of<M>())},
                            {"master_dtype", checkpoint_detail::master_dtype_name<Model>()},
                            {"linear_dtype", checkpoint_detail::linear_dtype_name<Model>()},
                            {"options", state.options}};
  checkpoint_detail::write_text(tmp / "trainer_state.json", j.dump(2) + "\n");
  checkpoint_detail::sync_folder(tmp);

  if (fs::exists(dst)) {
    fs::remove_all(prev);
    fs::rename(dst, prev);
  }
  fs::rename(tmp, dst);
  checkpoint_detail::sync_folder(out);
}

// The options of `now` that a checkpoint's saved options lack or hold with another value, one line each
// ("\n  key: checkpoint X, now Y"); empty when a run with `now` may resume from it.
inline std::string option_differences(const nlohmann::json& saved, const nlohmann::json& now) {
  std::string out;
  for (const auto& [key, value] : now.items())
    if (!saved.contains(key) || saved[key] != value)
      out += "\n  " + key + ": checkpoint " + (saved.contains(key) ? saved[key].dump() : "(none)") + ", now " + value.dump();
  return out;
}

// Reads trainer_state.json of checkpoint folder `dir`, validated (errors name the file and field).
inline trainer_state read_trainer_state(const std::filesystem::path& dir) {
  using checkpoint_detail::count_field;
  using checkpoint_detail::field;
  const std::filesystem::path p = dir / "trainer_state.json";
  const std::string where = p.string();
  const nlohmann::json j = checkpoint_detail::read_json(p);
  if (!j.is_object()) throw error(where + ": expected a JSON object, found " + std::string(j.type_name()));
  const nlohmann::json& format = field(j, "format", where);
  if (format != checkpoint_format)
    throw error(where + ": field \"format\": expected \"" + std::string(checkpoint_format) + "\", found " + format.dump());
  trainer_state s;
  s.step = count_field(j, "step", where);
  s.updates = count_field(j, "updates", where);
  s.tokens = count_field(j, "tokens", where);
  const nlohmann::json& seed = field(j, "seed", where);
  if (!seed.is_number_unsigned()) throw error(where + ": field \"seed\" must be an unsigned integer, found " + seed.dump());
  s.seed = seed.get<std::uint64_t>();
  s.loader = loader_state_from_json(field(j, "loader", where), where + ": field \"loader\"");
  s.skipped = count_field(j, "skipped", where);
  s.consecutive_bad = count_field(j, "consecutive_bad", where);
  s.options = field(j, "options", where);
  if (!s.options.is_object()) throw error(where + ": field \"options\" must be an object, found " + s.options.dump());
  // A step either updates, is skipped, or (a GRPO step whose groups all carry no signal) neither.
  if (s.updates + s.skipped > s.step)
    throw error(where + ": inconsistent counters: updates " + std::to_string(s.updates) + " + skipped " +
                std::to_string(s.skipped) + " exceed step " + std::to_string(s.step));
  if (s.consecutive_bad > s.skipped)
    throw error(where + ": inconsistent counters: consecutive_bad " + std::to_string(s.consecutive_bad) +
                " exceeds skipped " + std::to_string(s.skipped));
  return s;
}

// Loads checkpoint folder `dir` (out/checkpoint, see find_checkpoint) into `model` and `optimizer` and
// returns the trainer state. Everything is validated before the model or the optimizer changes.
template <class Model>
trainer_state load_checkpoint(const std::filesystem::path& dir, Model& model, adamw<Model>& optimizer) {
  namespace fs = std::filesystem;
  using T = typename Model::T;
  using M = typename adamw<Model>::M;
  if (!fs::is_directory(dir)) throw error("checkpoint: '" + dir.string() + "' is not a folder");
  for (const char* f : {"trainer_state.json", "config.json", "model.safetensors", "optimizer.safetensors"})
    if (!fs::is_regular_file(dir / f))
      throw error("checkpoint: '" + (dir / f).string() + "' is missing (an incomplete or foreign folder)");
  trainer_state state = read_trainer_state(dir);
  {
    const std::string where = (dir / "trainer_state.json").string();
    const nlohmann::json j = checkpoint_detail::read_json(dir / "trainer_state.json");
    const std::string want_p = checkpoint_detail::dtype_name(safetensors::dtype_of<T>());
    const std::string want_m = checkpoint_detail::dtype_name(safetensors::dtype_of<M>());
    if (checkpoint_detail::field(j, "param_dtype", where) != want_p || checkpoint_detail::field(j, "moment_dtype", where) != want_m)
      throw error(where + ": the checkpoint holds parameters " + j["param_dtype"].dump() + " and moments " +
                  j["moment_dtype"].dump() + ", this model uses " + want_p + " and " + want_m +
                  " (an exact resume needs the same precision policy)");
    const std::string want_master = checkpoint_detail::master_dtype_name<Model>();
    const nlohmann::json saved_master = j.contains("master_dtype") ? j["master_dtype"] : nlohmann::json("none");
    if (saved_master != want_master)
      throw error(where + ": field \"master_dtype\": the checkpoint's master weights are " + saved_master.dump() +
                  ", this model's precision policy keeps \"" + want_master +
                  "\" (an exact resume needs the same precision policy)");
    const std::string want_linear = checkpoint_detail::linear_dtype_name<Model>();
    const nlohmann::json saved_linear = j.contains("linear_dtype") ? j["linear_dtype"] : j["param_dtype"];
    if (saved_linear != want_linear)
      throw error(where + ": field \"linear_dtype\": the checkpoint was trained with Linear GEMMs in " +
                  saved_linear.dump() + ", this model's precision policy runs them in \"" + want_linear +
                  "\" (an exact resume needs the same precision policy)");
  }

  // Weights: config.json against the compiled configuration, every tensor present with its shape
  // (open_model_dir), then the exact dtype.
  const model_dir files = open_model_dir(dir, Model::config);
  if (files.shards.size() != 1 || files.shards[0].path().filename() != "model.safetensors")
    throw error("checkpoint: '" + dir.string() + "' must hold its weights in model.safetensors");
  const safetensors::reader& weights = files.shards[0];
  for (const auto& e : model.params().entries()) {
    if (e.spec.shared_copy()) continue;
    const safetensors::tensor_info& t = weights.at(e.name);
    if (t.type != safetensors::dtype_of<T>())
      throw error(weights.path().string() + ": tensor '" + e.name + "': expected dtype " +
                  checkpoint_detail::dtype_name(safetensors::dtype_of<T>()) + ", found " +
                  checkpoint_detail::dtype_name(t.type));
  }

  // Optimizer: step, then m and v of exactly the parameter buffer's length in the moment type.
  const safetensors::reader moments(dir / "optimizer.safetensors");
  const std::string where = moments.path().string();
  const auto tensor = [&](const char* name, dtype type, std::vector<std::int64_t> shape) -> const safetensors::tensor_info& {
    const safetensors::tensor_info* t = moments.find(name);
    if (!t) throw error(where + ": missing tensor '" + std::string(name) + "'");
    if (t->type != type || t->shape != shape)
      throw error(where + ": tensor '" + std::string(name) + "': expected " + checkpoint_detail::dtype_name(type) + " " +
                  safetensors::shape_string(shape) + ", found " + checkpoint_detail::dtype_name(t->type) + " " +
                  safetensors::shape_string(t->shape));
    return *t;
  };
  const std::int64_t n = optimizer.size();
  const auto& step_t = tensor("step", dtype::i64, {});
  const auto& m_t = tensor("m", safetensors::dtype_of<M>(), {n});
  const auto& v_t = tensor("v", safetensors::dtype_of<M>(), {n});
  std::int64_t step = 0;
  moments.read_into(step_t, &step);
  if (step != state.updates)
    throw error(where + ": tensor 'step' is " + std::to_string(step) + " but trainer_state.json counts " +
                std::to_string(state.updates) + " updates");
  const safetensors::tensor_info* master_t = nullptr;
  if constexpr (adamw<Model>::has_master) master_t = &tensor("master", dtype::f32, {n});

  // Everything checked: copy in.
  std::vector<T> values;
  for (const auto& e : model.params().entries()) {
    if (e.spec.shared_copy()) continue;
    values.resize(std::size_t(e.spec.numel()));
    weights.read_into(weights.at(e.name), values.data());
    model.set_param(e, values);
  }
  std::vector<M> host(static_cast<std::size_t>(n));
  std::memcpy(host.data(), moments.bytes(m_t).data(), host.size() * sizeof(M));
  model.backend().upload(optimizer.m(), host.data(), host.size() * sizeof(M));
  std::memcpy(host.data(), moments.bytes(v_t).data(), host.size() * sizeof(M));
  model.backend().upload(optimizer.v(), host.data(), host.size() * sizeof(M));
  if constexpr (adamw<Model>::has_master) {
    std::vector<float> master(static_cast<std::size_t>(n));
    std::memcpy(master.data(), moments.bytes(*master_t).data(), master.size() * sizeof(float));
    model.backend().upload(optimizer.master(), master.data(), master.size() * sizeof(float));
    optimizer.set_master_loaded();
  }
  optimizer.set_steps(step);
  return state;
}

}  // namespace dsx
