// The pre-training loop (train/pretrain.hpp) on the host backend, with a tiny model that has MTP, MoE
// layers with routing biases and the balance loss:
//  - exact resume: 4 steps straight equal 2 steps + checkpoint + fresh objects + resume + 2 steps, bit for
//    bit (losses, gradient norms, weights, routing biases, moments), across the λ switch, and with the
//    batch ramp and the γ stop changing at and after the resume;
//  - the batch ramp: the step sizes follow the schedule and the steps read the loader's stream of
//    sequences in order (the loader cut into ramped micro-batches delivers the full batches' ids);
//  - the γ stop: from the stop on, a step no longer moves the routing biases;
//  - bad ramp and γ stop options are refused, naming the option;
//  - gradient accumulation: 2 micro-batches of 2 match 1 batch of 4 up to rounding;
//  - a non-finite loss skips the step (no update), is counted and logged; N in a row stop training with
//    the message naming the last good checkpoint, which stays loadable; a good step resets the count;
//  - metrics.jsonl holds the required keys per step; metrics.svg is well-formed XML with the curves;
//  - a resume with options that change the arithmetic is refused; a checkpoint from before the ramp and
//    the γ stop existed resumes with them off.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "dsx/backend/host/all.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/transformer.hpp"
#include "support/model.hpp"
#include "dsx/train/pretrain.hpp"

namespace fs = std::filesystem;
using dsx::param_kind;

namespace {

constexpr dsx::model_config tiny = dsx::test::tiny_mtp;
using model_t = dsx::transformer<tiny, dsx::precision::f32, dsx::backend::host>;
// bf16 weights, activations and gradients with the optimizer's f32 master copy.
using master_model_t = dsx::transformer<tiny, dsx::precision::bf16_master, dsx::backend::host>;

constexpr std::int64_t seq = 7;

// Documents of a repeating pattern with random lengths and offsets (ids 2..12; EOS = 1), so the loss
// has something to learn.
dsx::token_shard make_shard() {
  std::vector<std::int32_t> tokens;
  std::vector<std::int64_t> offsets{0};
  for (std::uint64_t d = 0; d < 40; ++d) {
    const int len = 3 + int(dsx::random_bits(5, d, 0) % 9), start = int(dsx::random_bits(5, d, 1) % 11);
    for (int i = 0; i < len; ++i) tokens.push_back(2 + (start + i) % 11);
    tokens.push_back(1);
    offsets.push_back(std::int64_t(tokens.size()));
  }
  return dsx::token_shard(tokens, offsets, dsx::shard_info{tiny.vocab, 1, "test", {"pattern"}}, "test shard");
}

dsx::pretrain_options base_options(const fs::path& out, std::int64_t steps) {
  dsx::pretrain_options o;
  o.steps = steps;
  o.batch = 4;
  o.micro_batches = 2;
  o.seq = seq;
  o.lr = {.peak = 3e-3, .final = 3e-4, .warmup = 2, .constant = 0, .decay = 4};
  o.mtp_switch_step = 2;  // λ changes between steps 2 and 3
  o.gamma = 0.01;         // large enough to move the biases visibly
  o.alpha = 0.01;
  o.seed = 11;
  o.checkpoint_every = 0;
  o.out = out;
  return o;
}

// A fresh model, loader and trainer, as a new process would build them.
template <class Model>
struct run_objects_of {
  dsx::backend::host be;
  Model model;
  dsx::packed_loader loader;
  dsx::pretrainer<Model> trainer;

  explicit run_objects_of(const dsx::pretrain_options& o)
      : model(be, o.batch / o.micro_batches, o.seq + 1),
        loader({make_shard()}, dsx::loader_options{.batch = o.batch / o.micro_batches, .sequence_length = o.seq, .seed = o.seed}),
        trainer(model, loader, o) {
    dsx::init_weights(model, o.seed, 0.3);
  }
};
using run_objects = run_objects_of<model_t>;

fs::path fresh_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("dsx-pretrain-test-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(p);
  return p;
}

// Values widened to double (exactly), so that bf16 buffers compare bit for bit too.
template <class T>
std::vector<double> widen(const T* x, std::int64_t n) {
  std::vector<double> out(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = dsx::convert<double>(x[i]);
  return out;
}

template <class Model>
std::vector<double> all_params(Model& m) { return widen(m.param_data(), m.params().size()); }
template <class Model>
std::vector<double> moments(dsx::pretrainer<Model>& t) {
  auto& opt = t.optimizer();
  return widen(opt.m(), 2 * opt.size());  // m then v, adjacent
}

template <class Model>
std::vector<double> routing_biases(Model& m) {
  std::vector<double> out;
  for (int l : m.moe_layers()) {
    const auto b = m.get_param(*m.params().find(param_kind::router_bias, l));
    const auto wide = widen(b.data(), std::int64_t(b.size()));
    out.insert(out.end(), wide.begin(), wide.end());
  }
  return out;
}

// Runs base_options (with `adjust` applied) for 4 steps straight and as 2 steps + checkpoint + fresh
// objects + resume + 2 steps, and checks that both give the same steps, weights, moments (and master
// weights), counters and metrics, bit for bit. Returns the straight run's steps.
template <class Model = model_t>
std::vector<dsx::step_result> check_exact_resume(const std::string& name,
                                                 const std::function<void(dsx::pretrain_options&)>& adjust) {
  const fs::path straight_dir = fresh_dir(name + "-straight"), resumed_dir = fresh_dir(name + "-resumed");
  const auto options = [&](const fs::path& out, std::int64_t steps) {
    dsx::pretrain_options o = base_options(out, steps);
    adjust(o);
    return o;
  };

  run_objects_of<Model> straight(options(straight_dir, 4));
  straight.trainer.start();
  const auto full = straight.trainer.run();
  REQUIRE(full.size() == 4);

  {
    run_objects_of<Model> first(options(resumed_dir, 2));
    first.trainer.start();
    REQUIRE(first.trainer.run().size() == 2);
  }
  run_objects_of<Model> second(options(resumed_dir, 4));  // fresh objects; init_weights is overwritten by the load
  second.trainer.resume();
  CHECK(second.trainer.state().step == 2);
  const auto rest = second.trainer.run();
  REQUIRE(rest.size() == 2);

  for (std::size_t i = 0; i < 2; ++i) {
    const auto& a = full[i + 2];
    const auto& b = rest[i];
    INFO("step " << a.step);
    CHECK(b.step == a.step);
    CHECK(b.batch == a.batch);
    CHECK(b.gamma == a.gamma);
    CHECK(b.loss == a.loss);
    CHECK(b.lm_loss == a.lm_loss);
    CHECK(b.mtp_loss == a.mtp_loss);
    CHECK(b.balance_loss == a.balance_loss);
    CHECK(b.grad_norm == a.grad_norm);
    CHECK(b.lr == a.lr);
    CHECK(b.mtp_weight == a.mtp_weight);
    CHECK(b.max_load_ratio == a.max_load_ratio);
  }
  CHECK(all_params(second.model) == all_params(straight.model));
  CHECK(moments(second.trainer) == moments(straight.trainer));
  if constexpr (dsx::adamw<Model>::has_master) {
    auto &a = straight.trainer.optimizer(), &b = second.trainer.optimizer();
    CHECK(widen(b.master(), b.size()) == widen(a.master(), a.size()));
  }
  CHECK(second.trainer.optimizer().steps() == 4);
  CHECK(second.trainer.state().tokens == straight.trainer.state().tokens);
  CHECK(second.trainer.state().loader == straight.trainer.state().loader);

  // The pieces the test is about are active: MTP and balance losses, the λ switch, moved biases.
  for (const auto& r : full) {
    CHECK(r.mtp_loss > 0);
    CHECK(r.balance_loss > 0);
    CHECK(r.mtp_weight == (r.step <= 2 ? 0.3 : 0.1));
    CHECK(!r.skipped);
  }
  for (int l : straight.model.moe_layers()) {
    bool moved = false;
    for (auto b : straight.model.get_param(*straight.model.params().find(param_kind::router_bias, l)))
      moved |= dsx::convert<float>(b) != 0;
    CHECK(moved);
  }

  // The resumed run's metrics.jsonl is the straight run's, steps 1..4 once each, timings aside.
  const auto a = dsx::read_metrics(straight_dir / "metrics.jsonl"), b = dsx::read_metrics(resumed_dir / "metrics.jsonl");
  REQUIRE(a.size() == 4);
  REQUIRE(b.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(b[i]["step"] == std::int64_t(i + 1));
    for (const char* key : {"loss", "lm_loss", "mtp_loss", "balance_loss", "lr", "grad_norm", "max_load_ratio", "batch",
                            "gamma", "tokens"})
      CHECK(b[i][key] == a[i][key]);
  }
  fs::remove_all(straight_dir);
  fs::remove_all(resumed_dir);
  return full;
}

}  // namespace

TEST_CASE("pretrain: 2 + 2 steps with a resume equal 4 steps bit for bit (MTP, balance loss, bias updates)", "[unit]") {
  for (const auto& r : check_exact_resume("plain", [](dsx::pretrain_options&) {})) {
    CHECK(r.batch == 4);
    CHECK(r.gamma == 0.01);
  }
}

TEST_CASE("pretrain: bf16 weights with f32 master weights resume bit for bit; the master is saved and kept", "[unit]") {
  // The same run as above with precision::bf16_master: bf16 model, AdamW on an f32 master copy.
  const auto full = check_exact_resume<master_model_t>("master", [](dsx::pretrain_options&) {});
  for (const auto& r : full) CHECK(std::isfinite(r.loss));
  CHECK(full.back().loss < full.front().loss);

  run_objects_of<master_model_t> r(base_options(fresh_dir("master-state"), 2));
  r.trainer.start();
  r.trainer.run();
  auto& opt = r.trainer.optimizer();
  const auto master = widen(opt.master(), opt.size()), params = all_params(r.model);
  std::int64_t finer = 0;  // master weights that bf16 cannot hold: the precision the master adds
  std::int64_t trained = 0;
  for (const auto& range : opt.ranges()) {
    if (!range.trained) continue;  // the routing bias: moved by its own rule, the master's entries unused
    for (std::int64_t i = range.begin; i < range.end; ++i) {
      const auto k = std::size_t(i);
      REQUIRE(params[k] == double(float(dsx::bf16(float(master[k])))));  // the model reads the master's rounding
      finer += master[k] != params[k];
      ++trained;
    }
  }
  CHECK(finer > trained / 2);

  {
    // A checkpoint written before any step holds the master taken from the initial weights, and a resume
    // from it starts from exactly those.
    const fs::path dir = fresh_dir("master-at-zero");
    {
      run_objects_of<master_model_t> none(base_options(dir, 0));
      none.trainer.start();
      none.trainer.run();  // no step; saves at the end
    }
    run_objects_of<master_model_t> later(base_options(dir, 1));
    later.trainer.resume();
    auto& o = later.trainer.optimizer();
    CHECK(widen(o.master(), o.size()) == all_params(later.model));
    fs::remove_all(dir);
  }

  // A checkpoint whose master weights do not match the policy is refused, naming the field.
  const fs::path state = *dsx::find_checkpoint(r.trainer.options().out) / "trainer_state.json";
  nlohmann::json j = nlohmann::json::parse(std::ifstream(state));
  CHECK(j["master_dtype"] == "F32");
  j["master_dtype"] = "none";
  std::ofstream(state) << j.dump(2);
  run_objects_of<master_model_t> again(base_options(r.trainer.options().out, 3));
  CHECK_THROWS_WITH(again.trainer.resume(), Catch::Contains("trainer_state.json") && Catch::Contains("master_dtype") &&
                                                Catch::Contains("F32"));
  fs::remove_all(r.trainer.options().out);
}

TEST_CASE("pretrain: the resume stays bit-exact with the batch ramp and the gamma stop", "[unit]") {
  // Tokens before steps 1..4: 0, 14, 28, 56. The ramp 2 -> 4 over 28 tokens gives 2, 2 (2 + 2·14/28 = 3,
  // rounded down to the 2 micro-batches), then 4 from step 3, the first one after the resume; γ stops
  // from 40 tokens on, at step 4.
  const auto full = check_exact_resume("ramp", [](dsx::pretrain_options& o) {
    o.batch_ramp_start = 2;
    o.batch_ramp_tokens = 28;
    o.gamma_stop_tokens = 40;
  });
  REQUIRE(full.size() == 4);
  const std::vector<std::int64_t> batches{2, 2, 4, 4};
  const std::vector<double> gammas{0.01, 0.01, 0.01, 0.0};
  for (std::size_t i = 0; i < 4; ++i) {
    INFO("step " << i + 1);
    CHECK(full[i].batch == batches[i]);
    CHECK(full[i].gamma == gammas[i]);
  }
}

TEST_CASE("pretrain: the batch ramps as scheduled and the steps read the loader's sequences in order", "[unit]") {
  const fs::path dir = fresh_dir("ramp-order"), plain_dir = fresh_dir("ramp-plain");
  auto o = base_options(dir, 6);
  o.batch = 8;
  o.batch_ramp_start = 2;
  o.batch_ramp_tokens = 100;
  // Tokens before each step: 0, 14, 28, 42, 70, 112; 2 + 6·t/100 = 2, 2.84, 3.68, 4.52, 6.2, then the
  // target 8 from 100 tokens on; rounded down to a multiple of the 2 micro-batches.
  const std::vector<std::int64_t> batches{2, 2, 2, 4, 6, 8};
  run_objects ramped(o);
  ramped.trainer.start();
  const auto steps = ramped.trainer.run();
  REQUIRE(steps.size() == 6);
  const auto lines = dsx::read_metrics(dir / "metrics.jsonl");
  REQUIRE(lines.size() == 6);
  std::int64_t sequences = 0;
  for (std::size_t i = 0; i < 6; ++i) {
    INFO("step " << i + 1);
    sequences += batches[i];
    CHECK(steps[i].batch == batches[i]);
    CHECK(lines[i]["batch"] == batches[i]);
    CHECK(lines[i]["tokens"] == sequences * seq);
  }
  CHECK(ramped.trainer.state().tokens == 24 * seq);

  // The 24 sequences the ramped steps read are the first 6 batches of 4 of a loader without ramp: the
  // trainer's loader stands where that one does, and the loader cut into the steps' micro-batches
  // (1, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4 sequences) delivers the same ids.
  const dsx::loader_options lo{.batch = 4, .sequence_length = seq, .seed = o.seed};
  dsx::packed_loader plain({make_shard()}, lo), cut({make_shard()}, lo);
  std::vector<std::int32_t> whole, pieces;
  for (int i = 0; i < 6; ++i) {
    const auto b = plain.next();
    whole.insert(whole.end(), b.begin(), b.end());
  }
  for (const std::int64_t n : batches)
    for (int micro = 0; micro < 2; ++micro) {
      std::vector<std::int32_t> ids(std::size_t(n / 2 * (seq + 1)));
      cut.next(ids, n / 2);
      pieces.insert(pieces.end(), ids.begin(), ids.end());
    }
  CHECK(pieces == whole);
  CHECK(cut.state() == plain.state());
  CHECK(ramped.trainer.state().loader == plain.state());
  std::vector<std::int32_t> five(std::size_t(5 * (seq + 1)));
  CHECK_THROWS_WITH(cut.next(five, 5), Catch::Contains("1..4 sequences") && Catch::Contains("asked for 5"));
  CHECK_THROWS_WITH(cut.next(five, 2), Catch::Contains("2 × 8"));

  // The ramp's first 3 steps (2 sequences each) are the steps of a run without ramp at batch 2.
  auto po = base_options(plain_dir, 3);
  po.batch = 2;
  run_objects fixed(po);
  fixed.trainer.start();
  const auto fixed_steps = fixed.trainer.run();
  REQUIRE(fixed_steps.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    INFO("step " << i + 1);
    CHECK(steps[i].loss == fixed_steps[i].loss);
    CHECK(steps[i].grad_norm == fixed_steps[i].grad_norm);
  }
  fs::remove_all(dir);
  fs::remove_all(plain_dir);
}

TEST_CASE("pretrain: from the gamma stop on, steps no longer move the routing biases", "[unit]") {
  const fs::path dir = fresh_dir("gamma-stop");
  auto o = base_options(dir, 100);
  o.gamma_stop_tokens = 2 * 4 * seq;  // reached after step 2
  run_objects r(o);
  r.trainer.start();
  for (int i = 0; i < 4; ++i) {
    INFO("step " << i + 1);
    const auto biases = routing_biases(r.model), params = all_params(r.model);
    const auto s = r.trainer.step();
    REQUIRE(!s.skipped);
    CHECK(all_params(r.model) != params);  // the step updated the weights
    if (i < 2) {
      CHECK(s.gamma == 0.01);
      CHECK(routing_biases(r.model) != biases);
    } else {
      CHECK(s.gamma == 0.0);
      CHECK(routing_biases(r.model) == biases);
    }
  }
  const auto lines = dsx::read_metrics(dir / "metrics.jsonl");
  REQUIRE(lines.size() == 4);
  CHECK(lines[1]["gamma"] == 0.01);
  CHECK(lines[2]["gamma"] == 0.0);
  fs::remove_all(dir);
}

TEST_CASE("pretrain: bad batch ramp and gamma stop options are refused, naming the option", "[unit]") {
  using Catch::Contains;
  const auto with = [](const std::function<void(dsx::pretrain_options&)>& adjust) {
    dsx::pretrain_options o = base_options("unused", 1);  // batch 4, 2 micro-batches
    adjust(o);
    return o;
  };
  CHECK_THROWS_WITH(with([](auto& o) { o.batch_ramp_start = 5; o.batch_ramp_tokens = 10; }).check(),
                    Contains("--batch-ramp-start (5) must be 0 (no ramp) or between --micro-batches (2) and --batch (4)"));
  CHECK_THROWS_WITH(with([](auto& o) { o.batch_ramp_start = 1; o.batch_ramp_tokens = 10; }).check(),
                    Contains("--batch-ramp-start (1)"));
  CHECK_THROWS_WITH(with([](auto& o) { o.batch_ramp_start = -2; o.batch_ramp_tokens = 10; }).check(),
                    Contains("--batch-ramp-start (-2)"));
  CHECK_THROWS_WITH(with([](auto& o) { o.batch_ramp_start = 2; }).check(),
                    Contains("--batch-ramp-tokens (0) must be positive with a --batch-ramp-start"));
  CHECK_THROWS_WITH(with([](auto& o) { o.batch_ramp_tokens = 50; }).check(),
                    Contains("--batch-ramp-tokens (50)") && Contains("--batch-ramp-start is 0"));
  CHECK_THROWS_WITH(with([](auto& o) { o.batch_ramp_start = 2; o.batch_ramp_tokens = -1; }).check(),
                    Contains("--batch-ramp-tokens (-1)"));
  CHECK_THROWS_WITH(with([](auto& o) { o.gamma_stop_tokens = -3; }).check(),
                    Contains("--gamma-stop-tokens must be >= 0"));
  CHECK_NOTHROW(with([](auto& o) {
                  o.batch_ramp_start = 2;
                  o.batch_ramp_tokens = 50;
                  o.gamma_stop_tokens = 10;
                }).check());
  CHECK_NOTHROW(with([](auto& o) { o.batch_ramp_start = 4; o.batch_ramp_tokens = 50; }).check());
}

TEST_CASE("pretrain: 2 micro-batches of 2 sequences give the step of one batch of 4", "[unit]") {
  const fs::path dir_a = fresh_dir("micro2"), dir_b = fresh_dir("micro1");
  auto oa = base_options(dir_a, 1), ob = base_options(dir_b, 1);
  ob.micro_batches = 1;
  run_objects a(oa), b(ob);
  a.trainer.start();
  b.trainer.start();
  const auto ra = a.trainer.step(), rb = b.trainer.step();
  CHECK(ra.loss == Approx(rb.loss).epsilon(1e-5));
  CHECK(ra.lm_loss == Approx(rb.lm_loss).epsilon(1e-5));
  CHECK(ra.grad_norm == Approx(rb.grad_norm).epsilon(1e-4));
  const auto pa = all_params(a.model), pb = all_params(b.model);
  double worst = 0;
  for (std::size_t i = 0; i < pa.size(); ++i) worst = std::max(worst, double(std::abs(pa[i] - pb[i])));
  CHECK(worst < 1e-5);  // an update moves a weight by up to lr = 1.5e-3
  fs::remove_all(dir_a);
  fs::remove_all(dir_b);
}

TEST_CASE("pretrain: non-finite steps are skipped, counted, logged; N in a row stop with the message", "[unit]") {
  const fs::path dir = fresh_dir("nan");
  auto o = base_options(dir, 100);
  o.max_bad_steps = 3;
  run_objects r(o);
  r.trainer.start();
  r.trainer.step();
  r.trainer.step();
  r.trainer.save();  // the last good checkpoint, after step 2

  // A NaN in the output head makes the loss and every gradient NaN.
  const auto& head = *r.model.params().find(param_kind::head);
  const std::vector<float> good_head = r.model.get_param(head);
  std::vector<float> poisoned = good_head;
  poisoned[5] = std::numeric_limits<float>::quiet_NaN();
  r.model.set_param(head, poisoned);
  const auto before = all_params(r.model);
  const auto moments_before = moments(r.trainer);

  for (int i = 0; i < 2; ++i) {
    const auto s = r.trainer.step();
    CHECK(s.skipped);
    CHECK(std::isnan(s.loss));
  }
  // Nothing moved: weights (the routing biases included), moments, the update count.
  const auto after = all_params(r.model);
  CHECK(std::memcmp(after.data(), before.data(), after.size() * sizeof(float)) == 0);
  CHECK(moments(r.trainer) == moments_before);
  CHECK(r.trainer.optimizer().steps() == 2);
  CHECK(r.trainer.state().skipped == 2);
  CHECK(r.trainer.state().consecutive_bad == 2);

  // A good step resets the count in a row, not the total.
  r.model.set_param(head, good_head);
  CHECK(!r.trainer.step().skipped);
  CHECK(r.trainer.state().consecutive_bad == 0);
  CHECK(r.trainer.state().skipped == 2);
  CHECK(r.trainer.optimizer().steps() == 3);

  // Three in a row stop training at step 8.
  r.model.set_param(head, poisoned);
  r.trainer.step();
  r.trainer.step();
  const std::string expected = "training stopped: 3 consecutive steps with non-finite loss or gradient (last at step 8); "
                               "last good checkpoint: " + (dir / "checkpoint").string();
  CHECK_THROWS_WITH(r.trainer.step(), expected);
  CHECK(r.trainer.state().skipped == 5);

  // Every step is in metrics.jsonl; the skipped ones say so, with null losses.
  const auto lines = dsx::read_metrics(dir / "metrics.jsonl");
  REQUIRE(lines.size() == 8);
  const std::vector<bool> skipped{false, false, true, true, false, true, true, true};
  const std::vector<std::int64_t> in_a_row{0, 0, 1, 2, 0, 1, 2, 3};
  for (std::size_t i = 0; i < lines.size(); ++i) {
    INFO("line " << i + 1);
    CHECK(lines[i]["skipped"] == bool(skipped[i]));
    CHECK(lines[i]["consecutive_bad"] == in_a_row[i]);
    CHECK(lines[i]["loss"].is_null() == skipped[i]);
  }
  CHECK(lines.back()["skipped_total"] == 5);

  // The last good checkpoint loads into fresh objects.
  run_objects fresh(o);
  fresh.trainer.resume();
  CHECK(fresh.trainer.state().step == 2);
  CHECK(fresh.trainer.state().skipped == 0);
  CHECK(!fresh.trainer.step().skipped);
  // metrics.jsonl dropped the lines after the checkpoint (steps 3..8 of the stopped run) before appending.
  const auto resumed = dsx::read_metrics(dir / "metrics.jsonl");
  REQUIRE(resumed.size() == 3);
  CHECK(resumed[1]["loss"] == lines[1]["loss"]);
  CHECK(resumed[2]["step"] == 3);
  CHECK(resumed[2]["skipped"] == false);
  fs::remove_all(dir);
}

namespace {

// A minimal XML well-formedness check: a prolog, then properly nested elements with quoted attributes,
// one root. Returns the element names in document order; throws std::runtime_error on a violation.
std::vector<std::string> parse_xml(const std::string& s) {
  std::vector<std::string> stack, names;
  std::size_t i = 0;
  const auto fail = [&](const std::string& what) { throw std::runtime_error(what + " at byte " + std::to_string(i)); };
  if (s.rfind("<?xml", 0) == 0) i = s.find("?>") + 2;
  bool root_done = false;
  while (i < s.size()) {
    if (s[i] != '<') {
      if (stack.empty() && !std::isspace(static_cast<unsigned char>(s[i]))) fail("text outside the root");
      if (s[i] == '&' && s.compare(i, 4, "&lt;") && s.compare(i, 4, "&gt;") && s.compare(i, 5, "&amp;") &&
          s.compare(i, 6, "&quot;"))
        fail("bad entity");
      ++i;
      continue;
    }
    const std::size_t end = s.find('>', i);
    if (end == std::string::npos) fail("unterminated tag");
    std::string tag = s.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) fail("mismatched </" + tag.substr(1) + ">");
      stack.pop_back();
      if (stack.empty()) root_done = true;
      continue;
    }
    const bool self_closing = tag.back() == '/';
    if (self_closing) tag.pop_back();
    const std::string name = tag.substr(0, tag.find_first_of(" \n\t"));
    if (name.empty()) fail("empty element name");
    if (stack.empty() && root_done) fail("second root element");
    int quotes = 0;
    for (char c : tag) quotes += c == '"';
    if (quotes % 2) fail("unbalanced quotes in <" + name + ">");
    names.push_back(name);
    if (self_closing) {
      if (stack.empty()) root_done = true;
    } else {
      stack.push_back(name);
    }
  }
  if (!stack.empty()) fail("unclosed <" + stack.back() + ">");
  if (names.empty()) fail("no element");
  return names;
}

}  // namespace

TEST_CASE("pretrain: non-finite router scores inside the model skip the step instead of stopping", "[unit]") {
  const fs::path dir = fresh_dir("router");
  auto o = base_options(dir, 100);
  run_objects r(o);
  r.trainer.start();
  r.trainer.step();
  // A NaN router weight makes the scores of MoE layer 1 non-finite: moe_route reports it as a
  // non_finite_error (the loss is never computed), which the trainer counts as a non-finite step.
  const auto& router = *r.model.params().find(param_kind::router, 1);
  const std::vector<float> good = r.model.get_param(router);
  std::vector<float> poisoned = good;
  poisoned[0] = std::numeric_limits<float>::quiet_NaN();
  r.model.set_param(router, poisoned);
  const auto s = r.trainer.step();
  CHECK(s.skipped);
  CHECK(r.trainer.state().skipped == 1);
  CHECK(r.trainer.optimizer().steps() == 1);
  r.model.set_param(router, good);
  CHECK(!r.trainer.step().skipped);
  fs::remove_all(dir);
}

TEST_CASE("pretrain: metrics.jsonl has the required keys; metrics.svg is well-formed with the curves", "[unit]") {
  const fs::path dir = fresh_dir("metrics");
  run_objects r(base_options(dir, 3));
  r.trainer.start();
  r.trainer.run();
  const auto lines = dsx::read_metrics(dir / "metrics.jsonl");
  REQUIRE(lines.size() == 3);
  for (const auto& j : lines)
    for (const char* key : {"step", "loss", "lm_loss", "mtp_loss", "balance_loss", "lr", "grad_norm", "tokens_per_s",
                            "max_load_ratio", "batch", "gamma"}) {
      INFO(key);
      REQUIRE(j.contains(key));
      CHECK(j[key].is_number());
    }
  CHECK(lines[2]["tokens"] == 3 * 4 * seq);
  CHECK(lines[2]["batch"] == 4);
  CHECK(lines[2]["gamma"] == 0.01);

  std::ifstream in(dir / "metrics.svg");
  REQUIRE(in);
  std::stringstream text;
  text << in.rdbuf();
  std::vector<std::string> names;
  REQUIRE_NOTHROW(names = parse_xml(text.str()));
  CHECK(names.front() == "svg");
  // One curve per series with data: loss, lm_loss, mtp_loss, balance_loss, lr, grad_norm, max_load_ratio.
  CHECK(std::count(names.begin(), names.end(), "polyline") == 7);
  CHECK_THROWS(parse_xml("<svg><g></svg></g>"));  // the checker itself rejects bad nesting
  CHECK_THROWS(parse_xml("<svg><g></g>"));
  fs::remove_all(dir);
}

TEST_CASE("pretrain: a resume with other arithmetic is refused, naming the options", "[unit]") {
  const fs::path dir = fresh_dir("options");
  {
    run_objects r(base_options(dir, 1));
    r.trainer.start();
    r.trainer.run();
  }
  auto o = base_options(dir, 2);
  o.lr.peak = 1e-2;
  o.gamma = 0.5;
  run_objects r(o);
  CHECK_THROWS_WITH(r.trainer.resume(), Catch::Contains("options that change the arithmetic") &&
                                            Catch::Contains("lr: checkpoint") && Catch::Contains("gamma: checkpoint 0.01, now 0.5"));
  auto scheduled = base_options(dir, 2);
  scheduled.batch_ramp_start = 2;
  scheduled.batch_ramp_tokens = 100;
  scheduled.gamma_stop_tokens = 50;
  run_objects other_schedules(scheduled);
  CHECK_THROWS_WITH(other_schedules.trainer.resume(), Catch::Contains("batch_ramp_start: checkpoint 0, now 2") &&
                                                          Catch::Contains("batch_ramp_tokens: checkpoint 0, now 100") &&
                                                          Catch::Contains("gamma_stop_tokens: checkpoint 0, now 50"));
  run_objects none(base_options(fresh_dir("empty"), 2));
  CHECK_THROWS_WITH(none.trainer.resume(), Catch::Contains("--resume: no checkpoint in"));
  fs::remove_all(dir);
}

TEST_CASE("pretrain: a checkpoint written before the batch ramp and the gamma stop existed resumes", "[unit]") {
  const fs::path dir = fresh_dir("older");
  {
    run_objects r(base_options(dir, 1));
    r.trainer.start();
    r.trainer.run();
  }
  // The trainer state as the older trainer wrote it: without the options added later.
  const fs::path state = *dsx::find_checkpoint(dir) / "trainer_state.json";
  nlohmann::json j = nlohmann::json::parse(std::ifstream(state));
  for (const char* key : {"batch_ramp_start", "batch_ramp_tokens", "gamma_stop_tokens"}) {
    REQUIRE(j["options"].contains(key));
    j["options"].erase(key);
  }
  REQUIRE(j["master_dtype"] == "none");  // nor the master weights' field: such a checkpoint has none
  j.erase("master_dtype");
  std::ofstream(state) << j.dump(2);
  {
    auto ramp = base_options(dir, 2);
    ramp.batch_ramp_start = 2;
    ramp.batch_ramp_tokens = 100;
    run_objects r(ramp);  // the missing options count as 0, which this run changes
    CHECK_THROWS_WITH(r.trainer.resume(), Catch::Contains("batch_ramp_start: checkpoint 0, now 2"));
  }
  run_objects r(base_options(dir, 2));
  r.trainer.resume();
  r.trainer.run();
  const nlohmann::json after = nlohmann::json::parse(std::ifstream(*dsx::find_checkpoint(dir) / "trainer_state.json"));
  CHECK(after["step"] == 2);
  CHECK(after["options"]["gamma_stop_tokens"] == 0);  // the new checkpoint names every option
  fs::remove_all(dir);
}
