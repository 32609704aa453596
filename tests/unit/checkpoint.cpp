// Checkpoints (io/checkpoint.hpp) on the host backend:
//  - a round trip restores every parameter (routing biases included), both AdamW moments, the optimizer
//    step and every trainer_state field exactly; the folder is an HF model folder (config.json parses back
//    to the configuration; model.safetensors holds the V3 names, the MTP copies equal to the main tensors);
//  - saving again keeps the previous checkpoint as checkpoint.prev; a stale checkpoint.tmp is replaced;
//    with only checkpoint.prev left (a crash between the renames) find_checkpoint falls back to it;
//  - missing, corrupt and inconsistent files are refused with errors naming the file and the problem,
//    before the model or the optimizer changes.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "dsx/backend/host/all.hpp"
#include "dsx/core/rng.hpp"
#include "dsx/io/checkpoint.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/transformer.hpp"
#include "support/model.hpp"

namespace fs = std::filesystem;
using dsx::param_kind;
using Catch::Contains;

namespace {

constexpr dsx::model_config tiny = dsx::test::tiny_mtp;
template <dsx::precision_policy P>
using model_t = dsx::transformer<tiny, P, dsx::backend::host>;
using f32_model = model_t<dsx::precision::f32>;

constexpr std::int64_t batch = 2, seq = 6;

std::vector<std::int32_t> tokens(std::uint64_t seed) {
  std::vector<std::int32_t> t(std::size_t(batch * seq));
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = std::int32_t(dsx::random_bits(seed, 0, i) % tiny.vocab);
  return t;
}

// A model and optimizer after two training steps with bias updates: moments, step and biases non-trivial.
struct trained {
  dsx::backend::host be;
  f32_model model{be, batch, seq};
  dsx::adamw<f32_model> opt{model};

  explicit trained(std::uint64_t seed) {
    dsx::init_weights(model, seed, 0.3);
    model.set_balance_weight(0.01);
    for (std::uint64_t s = 0; s < 2; ++s) {
      model.reset_expert_load();
      model.zero_grad();
      model.forward(tokens(seed + s), batch, seq);
      model.backward();
      opt.step(1e-2, decltype(opt)::clip_scale(opt.grad_norm(), 1.0));
      model.update_routing_bias(0.01);
    }
  }
  std::vector<float> params() { return {model.param_data(), model.param_data() + model.params().size()}; }
  std::vector<float> moments() { return {opt.m(), opt.m() + 2 * opt.size()}; }
};

dsx::trainer_state sample_state() {
  dsx::trainer_state s;
  s.step = 3;
  s.updates = 2;  // the optimizer's steps
  s.skipped = 1;
  s.consecutive_bad = 1;
  s.tokens = 12345;
  s.seed = 0xfedcba9876543210ull;
  s.loader = {.seed = 77, .epoch = 3, .position = 5, .sequences = 40, .sequence_length = 7, .shuffle = true};
  s.options = {{"batch", 4}, {"lr", {{"peak", 0.001}}}};
  return s;
}

fs::path fresh_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("dsx-checkpoint-test-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(p);
  return p;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_text(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

}  // namespace

TEST_CASE("checkpoint: a round trip restores weights, moments, step and trainer state exactly", "[unit]") {
  const fs::path out = fresh_dir("round-trip");
  trained a(1);
  const dsx::trainer_state s = sample_state();
  dsx::save_checkpoint(out, a.model, a.opt, s);
  const fs::path dir = out / "checkpoint";
  for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"})
    CHECK(fs::is_regular_file(dir / f));
  CHECK(!fs::exists(out / "checkpoint.tmp"));

  trained b(2);  // other weights, moments and biases
  REQUIRE(b.params() != a.params());
  const dsx::trainer_state t = dsx::load_checkpoint(dir, b.model, b.opt);
  CHECK(b.params() == a.params());
  CHECK(b.moments() == a.moments());
  CHECK(b.opt.steps() == 2);
  CHECK(t.step == s.step);
  CHECK(t.updates == s.updates);
  CHECK(t.skipped == s.skipped);
  CHECK(t.consecutive_bad == s.consecutive_bad);
  CHECK(t.tokens == s.tokens);
  CHECK(t.seed == s.seed);
  CHECK(t.loader == s.loader);
  CHECK(t.options == s.options);

  // An HF model folder: the configuration, the V3 tensor names, MTP copies equal to the main tensors.
  CHECK(dsx::config_differences(tiny, dsx::read_hf_config(dir / "config.json")).empty());
  const dsx::safetensors::reader weights(dir / "model.safetensors");
  CHECK(weights.read<float>("model.layers.1.mlp.gate.e_score_correction_bias") ==
        a.model.get_param(*a.model.params().find(param_kind::router_bias, 1)));
  CHECK(weights.read<float>("model.layers.2.embed_tokens.weight") == weights.read<float>("model.embed_tokens.weight"));
  CHECK(weights.read<float>("model.layers.2.shared_head.head.weight") == weights.read<float>("lm_head.weight"));
  fs::remove_all(out);
}

TEST_CASE("checkpoint: the previous one survives as checkpoint.prev; a lone .prev is found", "[unit]") {
  const fs::path out = fresh_dir("atomic");
  trained a(1);
  dsx::trainer_state s = sample_state();
  CHECK(!dsx::find_checkpoint(out).has_value());
  dsx::save_checkpoint(out, a.model, a.opt, s);
  // A stale temporary folder from a crashed save does not disturb the next one.
  fs::create_directories(out / "checkpoint.tmp");
  write_text(out / "checkpoint.tmp" / "trainer_state.json", "partial");
  s.step = 4;
  s.skipped = 2;
  dsx::save_checkpoint(out, a.model, a.opt, s);
  CHECK(!fs::exists(out / "checkpoint.tmp"));
  CHECK(dsx::read_trainer_state(out / "checkpoint").step == 4);
  CHECK(dsx::read_trainer_state(out / "checkpoint.prev").step == 3);

  // A crash between the two renames leaves checkpoint.prev (and a complete checkpoint.tmp) only.
  fs::rename(out / "checkpoint", out / "checkpoint.tmp");
  REQUIRE(dsx::find_checkpoint(out).has_value());
  CHECK(*dsx::find_checkpoint(out) == out / "checkpoint.prev");
  trained b(2);
  CHECK(dsx::load_checkpoint(*dsx::find_checkpoint(out), b.model, b.opt).step == 3);
  CHECK(b.params() == a.params());
  fs::remove_all(out);
}

TEST_CASE("checkpoint: missing, corrupt or inconsistent files are refused before anything changes", "[unit]") {
  const fs::path out = fresh_dir("corrupt");
  trained a(1);
  dsx::save_checkpoint(out, a.model, a.opt, sample_state());
  const fs::path dir = out / "checkpoint", saved = out / "saved";
  fs::copy(dir, saved, fs::copy_options::recursive);
  const auto restore = [&] {
    fs::remove_all(dir);
    fs::copy(saved, dir, fs::copy_options::recursive);
  };
  trained b(2);
  const auto params = b.params(), moments = b.moments();
  const auto refused = [&](const std::string& expected) {
    CHECK_THROWS_WITH(dsx::load_checkpoint(dir, b.model, b.opt), Contains(expected));
    CHECK(b.params() == params);
    CHECK(b.moments() == moments);
    CHECK(b.opt.steps() == 2);
    restore();
  };

  CHECK_THROWS_WITH(dsx::load_checkpoint(out / "nowhere", b.model, b.opt), Contains("is not a folder"));
  for (const char* f : {"trainer_state.json", "config.json", "model.safetensors", "optimizer.safetensors"}) {
    INFO(f);
    fs::remove(dir / f);
    refused(f);
  }

  const std::string state = read_text(dir / "trainer_state.json");
  write_text(dir / "trainer_state.json", state.substr(0, state.size() / 2));
  refused("trainer_state.json' is not valid JSON");
  auto j = dsx::checkpoint_detail::read_json(saved / "trainer_state.json");
  j["format"] = "other";
  write_text(dir / "trainer_state.json", j.dump());
  refused("field \"format\": expected \"dsx-checkpoint-1\"");
  j = dsx::checkpoint_detail::read_json(saved / "trainer_state.json");
  j.erase("tokens");
  write_text(dir / "trainer_state.json", j.dump());
  refused("missing field \"tokens\"");
  j = dsx::checkpoint_detail::read_json(saved / "trainer_state.json");
  j["skipped"] = -1;
  write_text(dir / "trainer_state.json", j.dump());
  refused("field \"skipped\" must be a non-negative integer, found -1");
  j = dsx::checkpoint_detail::read_json(saved / "trainer_state.json");
  j["step"] = 2;
  write_text(dir / "trainer_state.json", j.dump());
  refused("inconsistent counters: updates 2 + skipped 1 exceed step 2");
  j = dsx::checkpoint_detail::read_json(saved / "trainer_state.json");
  j["loader"].erase("epoch");
  write_text(dir / "trainer_state.json", j.dump());
  refused("field \"loader\": expected a loader state object with a field \"epoch\"");
  j = dsx::checkpoint_detail::read_json(saved / "trainer_state.json");
  j["updates"] = 8;
  j["step"] = 9;
  write_text(dir / "trainer_state.json", j.dump());
  refused("tensor 'step' is 2 but trainer_state.json counts 8 updates");

  auto config = dsx::checkpoint_detail::read_json(saved / "config.json");
  config["hidden_size"] = 16;
  write_text(dir / "config.json", config.dump());
  refused("hidden: expected 8, found 16");

  const std::string model = read_text(dir / "model.safetensors");
  write_text(dir / "model.safetensors", model.substr(0, model.size() - 4));
  refused("model.safetensors");

  // Moments of another length (another model) and of another dtype.
  {
    const dsx::safetensors::reader r(saved / "optimizer.safetensors");
    const std::int64_t n = a.opt.size(), step = 2;
    std::vector<float> short_m(static_cast<std::size_t>(n - 1));
    dsx::safetensors::writer w;
    w.add<std::int64_t>("step", std::span<const std::int64_t>(&step, 1), {});
    w.add<float>("m", short_m, {n - 1});
    w.add<float>("v", r.read<float>("v"), {n});
    w.write(dir / "optimizer.safetensors");
    refused("tensor 'm': expected F32 [" + std::to_string(n) + "], found F32 [" + std::to_string(n - 1) + "]");
    const std::vector<double> wide(static_cast<std::size_t>(n));
    dsx::safetensors::writer w2;
    w2.add<std::int64_t>("step", std::span<const std::int64_t>(&step, 1), {});
    w2.add<double>("m", wide, {n});
    w2.add<float>("v", r.read<float>("v"), {n});
    w2.write(dir / "optimizer.safetensors");
    refused("tensor 'm': expected F32 [" + std::to_string(n) + "], found F64");
  }

  // Another precision policy: refused, an exact resume needs the same storage types.
  {
    dsx::backend::host be;
    model_t<dsx::precision::f64> wide(be, batch, seq);
    dsx::adamw<model_t<dsx::precision::f64>> opt(wide);
    CHECK_THROWS_WITH(dsx::load_checkpoint(dir, wide, opt), Contains("parameters \"F32\" and moments \"F32\"") &&
                                                                Contains("this model uses F64 and F64"));
  }

  // The intact checkpoint still loads.
  CHECK(dsx::load_checkpoint(dir, b.model, b.opt).step == 3);
  CHECK(b.params() == a.params());
  fs::remove_all(out);
}
