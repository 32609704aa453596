// The post-training stage trainers and the recipe's helpers on a small f32 host model:
//  - sft_trainer: the loss falls on memorisable rows; 3 steps + a fresh trainer and model resumed to 6
//    equal 6 steps straight (metrics and weights); epoch_rows' per-epoch shuffles; micro-batches of the
//    model's planned batch give the step of one batch;
//  - grpo_trainer: a reward for one token id rises; 3 + 3 steps with a resume equal 6 (metrics, weights,
//    the frozen reference), also from a checkpoint older than a reference reset; a constant reward gives
//    steps without an update whose checkpoint still loads;
//  - recipe helpers: load_recipe's merge and its errors, scored_rows, corpus_rows, sft_rows, warmup_cosine,
//    sft_of, distill_objective (the NLL at α = 0, finite differences at α = 0.5, τ = 2), response_text.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/transformer.hpp"
#include "dsx/post/recipe.hpp"
#include "support/files.hpp"
#include "support/model.hpp"

namespace fs = std::filesystem;
namespace post = dsx::post;
using Catch::Matchers::Contains;
using dsx::test::error_of;
using dsx::test::temp_dir;

namespace {

// Two layers (dense, then MoE with a routing bias), no MTP: the shape of the recipe's models, small.
constexpr dsx::model_config small{
    .vocab = 32, .hidden = 32, .layers = 2, .dense_layers = 1, .dense_inter = 64,
    .mla = {.heads = 2, .q_lora = 0, .kv_lora = 16, .nope = 8, .rope = 4, .v = 8},
    .moe = {.routed = 4, .shared = 1, .top_k = 2, .groups = 1, .top_groups = 1, .score = dsx::score_fn::sigmoid,
            .norm_topk = true, .route_scale = 1.0, .bias = true, .inter = 16},
    .rms_eps = 1e-6, .mtp_depth = 0, .max_positions = 48};
using model_t = dsx::transformer<small, dsx::precision::f32, dsx::backend::host>;

constexpr std::uint64_t init_seed = 17;
constexpr double init_std = 0.1;

// A model planned for `batch` rows of `seq` tokens with the weights of init_weights(init_seed).
struct host_model {
  dsx::backend::host be;
  model_t model;
  host_model(std::int64_t batch, std::int64_t seq) : model(be, batch, seq) { dsx::init_weights(model, init_seed, init_std); }
};

std::vector<float> weights(model_t& m) { return {m.param_data(), m.param_data() + m.params().size()}; }

// Metrics lines without the fields that measure time.
std::vector<nlohmann::json> untimed(std::vector<nlohmann::json> lines) {
  for (auto& l : lines) {
    l.erase("tokens_per_s");
    l.erase("seconds");
  }
  return lines;
}

double mean_of(const std::vector<nlohmann::json>& lines, const char* key, std::size_t first, std::size_t count) {
  double s = 0;
  for (std::size_t i = first; i < first + count; ++i) s += lines[i][key].get<double>();
  return s / double(count);
}

// ---- SFT ----

constexpr std::int64_t sft_seq = 12, sft_rows_count = 6;

// Row i: a prompt of 4 ids naming the row, then 8 answer ids that only that prompt determines. Positions
// 3..10 (those predicting the answer) are scored; the prompt and the last position are not.
post::token_rows memorisable_rows() {
  post::token_rows r{sft_rows_count, sft_seq, {}, {}};
  for (std::int32_t i = 0; i < sft_rows_count; ++i) {
    for (std::int32_t id : {1, 2 + i, 2 + i, 1}) r.ids.push_back(id);
    for (std::int32_t t = 0; t < 8; ++t) r.ids.push_back(10 + (3 * i + 5 * t) % 20);
    for (std::int64_t t = 0; t < sft_seq; ++t) r.scored.push_back(t >= 3 && t < 11);
  }
  return r;
}

post::sft_options sft_opts(const fs::path& out, std::int64_t steps, std::int64_t batch) {
  post::sft_options o;
  o.steps = steps;
  o.batch = batch;
  o.lr = {.peak = 1e-2, .final = 2e-3, .warmup = 2, .constant = 0, .decay = 4};
  o.clip = 1.0;
  o.seed = 3;
  o.out = out;
  return o;
}

// ---- GRPO ----

constexpr std::int32_t pad = 0, wanted = 7;
constexpr std::int64_t grpo_seq = 12;

std::vector<std::int32_t> prompt_of(std::int64_t k) { return {1, std::int32_t(2 + k % 5), 3}; }

// The fraction of completion tokens that are `wanted`; correct when more than half are.
post::scored_completion wanted_fraction(std::int64_t, std::span<const std::int32_t> completion) {
  double hits = 0;
  for (std::int32_t id : completion) hits += id == wanted;
  const double r = hits / double(completion.size());
  return {.reward = r, .correct = r > 0.5, .formatted = true, .language = 1.0};
}

post::grpo_options grpo_opts(const fs::path& out, std::int64_t steps, double lr) {
  post::grpo_options o;
  o.steps = steps;
  o.prompts = 4;
  o.group = 8;
  o.loss = {.eps_low = 0.2, .eps_high = 0.28, .beta = 0.01, .aggregation = post::grpo_aggregation::token};
  o.sampling = {.temperature = 1.0, .top_p = 1.0, .top_k = 0, .max_new = 6, .stop = {}};
  o.lr = {.peak = lr, .final = lr, .warmup = 0, .constant = 0, .decay = 0};
  o.seed = 5;
  o.out = out;
  return o;
}

// A policy and its reference, both planned for one group of rows.
struct grpo_models {
  host_model policy{8, grpo_seq}, reference{8, grpo_seq};
};

}  // namespace

TEST_CASE("sft_trainer: the loss falls on memorisable rows", "[unit]") {
  temp_dir dir;
  host_model m(3, sft_seq);
  auto o = sft_opts(dir / "out", 40, 3);
  o.lr = {.peak = 1e-2, .final = 1e-2, .warmup = 0, .constant = 0, .decay = 0};
  post::sft_trainer<model_t> trainer(m.model, memorisable_rows(), o);
  const auto lines = trainer.run("sft test");
  REQUIRE(lines.size() == 40);
  const double first = mean_of(lines, "loss", 0, 3), last = mean_of(lines, "loss", 37, 3);
  INFO("mean loss of the first 3 steps " << first << ", of the last 3 " << last);
  CHECK(lines[0]["loss"].get<double>() == Approx(std::log(32.0)).margin(0.3));  // near-uniform logits at the start
  CHECK(last < 0.1 * first);
  for (const auto& l : lines) CHECK(l["trained_tokens"] == 3 * 8);
  CHECK(fs::exists(dir / "out" / "checkpoint"));
  CHECK(fs::exists(dir / "out" / "metrics.svg"));
}

TEST_CASE("sft_trainer: 3 steps, fresh objects, resume to 6 equal 6 steps straight", "[unit]") {
  temp_dir dir;
  const post::token_rows rows = memorisable_rows();
  host_model straight(4, sft_seq);
  post::sft_trainer<model_t> full(straight.model, rows, sft_opts(dir / "straight", 6, 4));
  REQUIRE(full.run("straight").size() == 6);

  {
    host_model first(4, sft_seq);
    post::sft_trainer<model_t> t(first.model, rows, sft_opts(dir / "resumed", 3, 4));
    REQUIRE(t.run("first half").size() == 3);
  }
  host_model second(4, sft_seq);  // the start weights again: the checkpoint must replace them
  post::sft_trainer<model_t> t(second.model, rows, sft_opts(dir / "resumed", 6, 4));
  const auto rest = t.run("second half");
  REQUIRE(rest.size() == 3);
  CHECK(rest.front()["step"] == 4);

  const auto a = untimed(dsx::read_metrics(dir / "straight" / "metrics.jsonl"));
  const auto b = untimed(dsx::read_metrics(dir / "resumed" / "metrics.jsonl"));
  REQUIRE(a.size() == 6);
  CHECK(b == a);
  CHECK(a[0]["lr"] != a[3]["lr"]);  // the schedule position is part of what resumes
  CHECK((weights(second.model) == weights(straight.model)));
  CHECK(t.stage().state().updates == 6);
  CHECK(t.stage().state().tokens == full.stage().state().tokens);
}

TEST_CASE("epoch_rows: every row once per epoch, a new order each epoch, steps continue across epochs", "[unit]") {
  constexpr std::int64_t rows = 10, batch = 4, seed = 9;
  std::vector<std::int64_t> stream;  // steps 0..4: indices 0..19, epochs 0 and 1
  for (std::int64_t s = 0; s < 5; ++s) {
    const auto picked = post::epoch_rows(rows, batch, s, seed);
    REQUIRE(picked.size() == std::size_t(batch));
    stream.insert(stream.end(), picked.begin(), picked.end());
  }
  const std::vector<std::int64_t> epoch0(stream.begin(), stream.begin() + rows), epoch1(stream.begin() + rows, stream.end());
  std::vector<std::int64_t> all(rows);
  std::iota(all.begin(), all.end(), 0);
  for (const auto& e : {epoch0, epoch1}) {
    std::vector<std::int64_t> sorted = e;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == all);
  }
  CHECK(epoch0 != epoch1);
  CHECK(epoch0 != all);  // shuffled
  // The order depends on the row position in the stream only, not on the batch size.
  for (std::int64_t k = 0; k < 2 * rows; ++k) CHECK(post::epoch_rows(rows, 1, k, seed) == std::vector<std::int64_t>{stream[std::size_t(k)]});
  CHECK(post::epoch_rows(rows, 2 * rows, 0, seed) == stream);
  CHECK(post::epoch_rows(rows, batch, 0, seed + 1) != post::epoch_rows(rows, batch, 0, seed));
}

TEST_CASE("sft_trainer: micro-batches of the planned batch give the loss and gradient norm of one batch", "[unit]") {
  temp_dir dir;
  host_model whole(4, sft_seq), split(3, sft_seq);  // 4 rows per step: 1 micro-batch, or 3 + 1
  post::sft_trainer<model_t> a(whole.model, memorisable_rows(), sft_opts(dir / "whole", 1, 4));
  post::sft_trainer<model_t> b(split.model, memorisable_rows(), sft_opts(dir / "split", 1, 4));
  const auto la = a.run("whole"), lb = b.run("split");
  REQUIRE(la.size() == 1);
  REQUIRE(lb.size() == 1);
  CHECK(lb[0]["loss"].get<double>() == Approx(la[0]["loss"].get<double>()).epsilon(1e-5));
  CHECK(lb[0]["grad_norm"].get<double>() == Approx(la[0]["grad_norm"].get<double>()).epsilon(1e-5));
  CHECK(lb[0]["trained_tokens"] == la[0]["trained_tokens"]);
}

TEST_CASE("grpo_trainer: the mean reward for a wanted token rises", "[unit]") {
  temp_dir dir;
  grpo_models m;
  post::grpo_trainer<model_t> trainer(m.policy.model, m.reference.model, prompt_of, wanted_fraction,
                                      grpo_opts(dir / "out", 24, 5e-3), pad);
  const auto lines = trainer.run("grpo test");
  REQUIRE(lines.size() == 24);
  std::string rewards;
  for (const auto& l : lines) rewards += " " + l["reward"].dump();
  INFO("rewards per step:" << rewards);
  const double first = mean_of(lines, "reward", 0, 3), last = mean_of(lines, "reward", 21, 3);
  CHECK(lines[0]["reward"].get<double>() < 0.1);  // ≈ 1/32 from near-uniform logits
  CHECK(first < 0.15);
  CHECK(last > first + 0.3);
  CHECK(mean_of(lines, "accuracy", 21, 3) > mean_of(lines, "accuracy", 0, 3));
  for (const auto& l : lines) {
    CHECK(l["response_length"] == 6.0);  // no stop token: every completion runs to max_new
    CHECK(l["kl"].is_number() == l["updated"].get<bool>());  // no update without a group that carries signal
  }
}

TEST_CASE("grpo_trainer: 3 steps, fresh objects, resume to 6 equal 6 steps straight; the reference is the start", "[unit]") {
  temp_dir dir;
  grpo_models straight;
  const std::vector<float> start = weights(straight.policy.model);
  post::grpo_trainer<model_t> full(straight.policy.model, straight.reference.model, prompt_of, wanted_fraction,
                                   grpo_opts(dir / "straight", 6, 2e-2), pad);
  REQUIRE(full.run("straight").size() == 6);
  {
    grpo_models first;
    post::grpo_trainer<model_t> t(first.policy.model, first.reference.model, prompt_of, wanted_fraction,
                                  grpo_opts(dir / "resumed", 3, 2e-2), pad);
    REQUIRE(t.run("first half").size() == 3);
  }
  grpo_models second;
  post::grpo_trainer<model_t> t(second.policy.model, second.reference.model, prompt_of, wanted_fraction,
                                grpo_opts(dir / "resumed", 6, 2e-2), pad);
  REQUIRE(t.run("second half").size() == 3);

  const auto a = untimed(dsx::read_metrics(dir / "straight" / "metrics.jsonl"));
  const auto b = untimed(dsx::read_metrics(dir / "resumed" / "metrics.jsonl"));
  REQUIRE(a.size() == 6);
  CHECK(b == a);
  for (const auto& l : a) CHECK(l["updated"] == true);
  CHECK((weights(second.policy.model) == weights(straight.policy.model)));
  CHECK((weights(second.policy.model) != start));
  CHECK((weights(second.reference.model) == start));
  host_model saved(1, 1);
  dsx::load_weights(saved.model, dir / "resumed" / "reference");
  CHECK((weights(saved.model) == start));
}

TEST_CASE("grpo_trainer: a resume from the checkpoint before a reference reset uses that checkpoint's reference", "[unit]") {
  temp_dir dir;
  auto o = grpo_opts(dir / "straight", 6, 5e-3);
  o.reference_reset = 2;  // resets at the start of steps 3 and 5 (s = 2, 4), between checkpoints at 3 and 5
  o.checkpoint_every = 3;
  grpo_models straight;
  post::grpo_trainer<model_t> full(straight.policy.model, straight.reference.model, prompt_of, wanted_fraction, o, pad);
  REQUIRE(full.run("straight").size() == 6);

  o.out = dir / "resumed";
  o.steps = 5;
  {
    grpo_models first;
    post::grpo_trainer<model_t> t(first.policy.model, first.reference.model, prompt_of, wanted_fraction, o, pad);
    REQUIRE(t.run("interrupted").size() == 5);
  }
  // The run stops while writing the checkpoint of step 5, after moving the previous one aside: the
  // resume finds checkpoint.prev, older than the reference written at the reset of step 5.
  fs::remove_all(o.out / "checkpoint");
  REQUIRE(dsx::find_checkpoint(o.out) == o.out / "checkpoint.prev");
  o.steps = 6;
  grpo_models second;
  post::grpo_trainer<model_t> t(second.policy.model, second.reference.model, prompt_of, wanted_fraction, o, pad);
  t.run("resumed");
  const auto a = untimed(dsx::read_metrics(dir / "straight" / "metrics.jsonl"));
  const auto b = untimed(dsx::read_metrics(o.out / "metrics.jsonl"));
  REQUIRE(a.size() == 6);
  CHECK(b == a);
  CHECK((weights(second.policy.model) == weights(straight.policy.model)));
  CHECK((weights(second.reference.model) == weights(straight.reference.model)));
}

TEST_CASE("grpo_trainer: a constant reward leaves every group without signal and the weights unchanged", "[unit]") {
  temp_dir dir;
  grpo_models m;
  const std::vector<float> start = weights(m.policy.model);
  const auto constant = [](std::int64_t, std::span<const std::int32_t>) { return post::scored_completion{.reward = 0.5}; };
  const auto o = grpo_opts(dir / "out", 3, 2e-2);
  post::grpo_trainer<model_t> trainer(m.policy.model, m.reference.model, prompt_of, constant, o, pad);
  const auto lines = trainer.run("constant reward");
  REQUIRE(lines.size() == 3);
  for (const auto& l : lines) {
    CHECK(l["updated"] == false);
    CHECK(l["zero_variance_groups"] == o.prompts);
    CHECK(l["reward"] == 0.5);
    CHECK(l["grad_norm"] == 0.0);
    CHECK(l["kl"].is_null());
  }
  CHECK((weights(m.policy.model) == start));

  // The checkpoint counts 3 steps and no update, and loads.
  host_model fresh(8, grpo_seq);
  dsx::init_weights(fresh.model, init_seed + 1, init_std);
  dsx::adamw<model_t> optimizer(fresh.model, o.adamw);
  const dsx::trainer_state state = dsx::load_checkpoint(dir / "out" / "checkpoint", fresh.model, optimizer);
  CHECK(state.step == 3);
  CHECK(state.updates == 0);
  CHECK(optimizer.steps() == 0);
  CHECK((weights(fresh.model) == start));
}

TEST_CASE("load_recipe: a file overrides the fields it names; bad fields are errors naming the file and field", "[unit]") {
  temp_dir dir;
  CHECK(post::load_recipe({}) == post::default_recipe());

  const fs::path one = dir.write("one.json", R"({"grpo": {"steps": 7, "lr": 1}, "seed": 4})");
  nlohmann::json expected = post::default_recipe();
  expected["grpo"]["steps"] = 7;
  expected["grpo"]["lr"] = 1;  // an integer is a number for a real-valued field
  expected["seed"] = 4;
  const nlohmann::json r = post::load_recipe(one);
  CHECK(r == expected);
  CHECK(r["grpo"]["lr"].get<double>() == 1.0);
  CHECK(r["r1_zero"]["steps"] == post::default_recipe()["r1_zero"]["steps"]);  // siblings keep their defaults

  const auto error_for = [&](const std::string& name, const std::string& text) {
    const fs::path p = dir.write(name, text);
    return error_of([&] { post::load_recipe(p); });
  };
  const std::string file = (dir / "unknown.json").string();
  CHECK(error_for("unknown.json", R"({"grpo": {"stepz": 1}})") == file + ": unknown field 'grpo.stepz'");
  CHECK_THAT(error_for("kind.json", R"({"grpo": {"steps": "ten"}})"),
             Contains((dir / "kind.json").string()) && Contains("field 'grpo.steps': expected a number, found a string"));
  CHECK_THAT(error_for("float.json", R"({"grpo": {"steps": 2.5}})"),
             Contains((dir / "float.json").string()) && Contains("field 'grpo.steps': expected an integer, found 2.5"));
  CHECK_THAT(error_for("nested.json", R"({"cold_start": {"sft": {"batch": true}}})"),
             Contains("field 'cold_start.sft.batch': expected a number, found a boolean"));
  CHECK_THAT(error_for("section.json", R"({"grpo": 3})"),
             Contains((dir / "section.json").string()) && Contains("field 'grpo': expected an object, found a number"));
  CHECK_THAT(error_for("array.json", "[1, 2]"),
             Contains((dir / "array.json").string()) && Contains("the recipe: expected an object, found an array"));
  CHECK_THAT(error_for("broken.json", R"({"grpo": )"), Contains((dir / "broken.json").string()) && Contains("not valid JSON"));
  CHECK_THAT(error_of([&] { post::load_recipe(dir / "missing.json"); }), Contains("cannot read") && Contains("missing.json"));
}

TEST_CASE("warmup_cosine, sft_of and sft_steps: warm-up over 10% of the steps, cosine to peak / 10", "[unit]") {
  const dsx::lr_schedule s = post::warmup_cosine(100, 1e-3);
  CHECK(s.warmup == 10);
  CHECK(s.decay == 90);
  CHECK(s.at(0) == Approx(1e-4));
  CHECK(s.at(9) == Approx(1e-3));
  CHECK(s.at(10) == Approx(1e-3));
  CHECK(s.at(55) == Approx(5.5e-4));  // half way through the decay: the mean of peak and final
  CHECK(s.at(100) == Approx(1e-4));
  const dsx::lr_schedule tiny = post::warmup_cosine(5, 2e-3);  // at least one warm-up step
  CHECK(tiny.warmup == 1);
  CHECK(tiny.decay == 4);
  CHECK(tiny.at(0) == Approx(2e-3));
  CHECK(post::warmup_cosine(0, 1e-3).decay == 0);

  const post::sft_options o = post::sft_of(60, 16, 1e-3, 8, "out");
  CHECK(o.steps == 60);
  CHECK(o.batch == 16);
  CHECK(o.lr.peak == 1e-3);
  CHECK(o.lr.warmup == 6);
  const nlohmann::json section = {{"epochs", 2.5}, {"batch", 16}};
  CHECK(post::sft_steps(section, 100) == 16);  // ceil(2.5 · 100 / 16)
  CHECK(post::sft_steps(section, 1) == 1);
  CHECK(o.seed == 8);
  CHECK(o.out == fs::path("out"));
  CHECK_NOTHROW(o.check());
}

TEST_CASE("scored_rows: train flags move to the position before, never across rows", "[unit]") {
  post::packed_rows p;
  p.rows = 2;
  p.row_tokens = 5;
  p.ids = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  p.train = {0, 0, 1, 1, 1, /**/ 1, 1, 0, 1, 1};
  const post::token_rows r = post::scored_rows(p);
  CHECK(r.rows == 2);
  CHECK(r.seq == 5);
  CHECK(r.ids == p.ids);
  // Row 0's last position would predict row 1's first token, which it never sees: unscored.
  CHECK(r.scored == std::vector<std::uint8_t>{0, 1, 1, 1, 0, /**/ 1, 0, 1, 1, 0});
}

namespace {

const std::vector<std::string> chat_specials{std::string(post::bos_token),  std::string(post::eos_token),
                                             std::string(post::user_token), std::string(post::assistant_token),
                                             std::string(post::think_open), std::string(post::think_close)};

// A byte-level tokenizer without merges (one id per byte) with the chat's special tokens.
const dsx::bpe_tokenizer& byte_tokenizer() {
  static const dsx::bpe_tokenizer t = dsx::bpe_tokenizer::train(std::vector<std::string>{"some text"},
                                                                int(chat_specials.size()) + 256, chat_specials,
                                                                dsx::pretokenizer::deepseek_v3);
  return t;
}

}  // namespace

TEST_CASE("corpus_rows: documents with EOS packed into whole rows, the last position of each row unscored", "[unit]") {
  const dsx::bpe_tokenizer& tok = byte_tokenizer();
  const std::int32_t eos = *tok.eos_id();
  const std::vector<std::string> docs{"abcde", "xy", "hello world"};  // 6 + 3 + 12 = 21 tokens with EOS
  const post::token_rows r = post::corpus_rows(tok, docs, 4);
  CHECK(r.rows == 5);  // the 21st token does not fill a row
  CHECK(r.seq == 4);
  std::vector<std::int32_t> all;
  for (const auto& d : docs) {
    tok.encode_into(d, false, all);
    all.push_back(eos);
  }
  REQUIRE(all.size() == 21);
  CHECK(r.ids == std::vector<std::int32_t>(all.begin(), all.begin() + 20));
  CHECK(r.ids[5] == eos);
  for (std::size_t i = 0; i < r.scored.size(); ++i) CHECK(r.scored[i] == (i % 4 != 3));
}

TEST_CASE("sft_rows: positions that predict assistant tokens and their EOS are scored", "[unit]") {
  const post::chat_template chat(byte_tokenizer());
  const std::vector<post::qa> data{{"hi", "ok"}};
  const post::token_rows r = post::sft_rows(chat, data, 12);
  // BOS <User> h i <Assistant> o k EOS, then padding: positions 4, 5, 6 predict o, k, EOS.
  REQUIRE(r.rows == 1);
  CHECK(r.ids[4] == *byte_tokenizer().special_id(post::assistant_token));
  CHECK(r.ids[7] == chat.eos());
  CHECK(r.scored == std::vector<std::uint8_t>{0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0});
}

TEST_CASE("response_text: the stop token is dropped, special tokens are kept", "[unit]") {
  const post::chat_template chat(byte_tokenizer());
  std::vector<std::int32_t> ids = {*byte_tokenizer().special_id(post::think_open)};
  byte_tokenizer().encode_into("a</think>b", false, ids);
  ids.push_back(chat.eos());
  CHECK(post::response_text(chat, ids, true) == "<think>a</think>b");
  CHECK(post::response_text(chat, std::span(ids).first(ids.size() - 1), false) == "<think>a</think>b");
  CHECK(post::response_text(chat, std::vector<std::int32_t>{}, true).empty());
}

TEST_CASE("score_responses: correct and formatted counts; the vote reads the answers' final lines", "[unit]") {
  post::task_problem p;
  p.kind = post::task_kind::addition;
  p.question = "What is 457 + 86?";
  p.numbers = {457, 86};
  // Two responses reason differently but both answer 543: they agree and outvote the 433 seen first.
  const std::vector<std::string> agree = {"433", "7+6=13, write 3 carry 1.\n543", "<think>\nadd\n</think>\n543"};
  const post::problem_score a = post::score_responses(p, agree);
  CHECK(a.correct == 2);
  CHECK(a.formatted == 1);
  CHECK(a.consensus);
  REQUIRE(a.verdicts.size() == 3);
  CHECK((!a.verdicts[0].correct && a.verdicts[1].correct && a.verdicts[2].correct));
  // A tie goes to the answer seen first.
  const std::vector<std::string> tie = {"<think>\nx\n</think>\n433", "543", "433", "543"};
  const post::problem_score t = post::score_responses(p, tie);
  CHECK(t.correct == 2);
  CHECK(t.formatted == 1);
  CHECK(!t.consensus);
  CHECK(post::score_responses(p, std::vector<std::string>{"543", "433", "433", "543"}).consensus);
  // With confidences the tie goes to the answer of higher mean log-probability: 543 at (-0.1 - 0.3) / 2
  // against 433 at (-0.5 - 0.2) / 2; a count still outweighs any confidence.
  const std::vector<double> sure = {-0.5, -0.1, -0.2, -0.3};
  CHECK(post::score_responses(p, tie, sure).consensus);
  CHECK(!post::score_responses(p, tie, std::vector<double>{-0.1, -0.5, -0.2, -0.3}).consensus);
  CHECK(!post::score_responses(p, std::vector<std::string>{"433", "433", "543"}, std::vector<double>{-9, -9, 0}).consensus);
  CHECK_THAT(error_of([&] { post::score_responses(p, tie, std::vector<double>{-1}); }),
             Contains("expected 4 confidences (one per response), found 1"));
  CHECK_THAT(error_of([&] { post::score_responses(p, {}); }), Contains("at least one response to 'What is 457 + 86?'"));
  // Countdown: expressions from the same numbers with the same value are one answer. Two correct ones
  // written differently outvote a single wrong one that the model is surer of.
  post::task_problem cd;
  cd.kind = post::task_kind::countdown;
  cd.question = "Use 3, 7, 5 to make 26 with + - *.";
  cd.numbers = {3, 7, 5};
  cd.target = 26;
  const std::vector<std::string> forms = {"3*7*5", "3*7+5", "<think>\nx\n</think>\n5 + (7*3)"};
  const post::problem_score f = post::score_responses(cd, forms, std::vector<double>{-0.1, -0.9, -0.9});
  CHECK(f.correct == 2);
  CHECK(f.consensus);
  CHECK(post::answer_key(cd, "3*7+5") == post::answer_key(cd, "5 + (7*3)"));
  CHECK(post::answer_key(cd, "3*7+5") != post::answer_key(cd, "3*7+5+0"));  // other numbers
  CHECK(post::answer_key(cd, "3*7+5") != post::answer_key(cd, "3*7-5"));    // another value
  CHECK(post::answer_key(cd, "twenty-six") == "twenty-six");              // not an expression: the line
  CHECK(post::answer_key(p, "543") == "543");
  post::completion c;
  CHECK(post::mean_logprob(c) == 0.0);
  c.logprobs = {-1.0, -2.0, -3.0};
  CHECK(post::mean_logprob(c) == -2.0);
}

namespace {

// Two rows of 4 positions over a vocabulary of 5, some positions scored.
post::token_rows distill_rows() {
  return {2, 4, {1, 3, 0, 4, 2, 2, 1, 0}, {1, 0, 1, 0, /**/ 0, 1, 1, 0}};
}

}  // namespace

TEST_CASE("distill_objective: α = 0 is the masked NLL exactly", "[unit]") {
  constexpr std::int64_t vocab = 5, positions = 7;  // the step's scored positions: more than this micro-batch's 4
  const post::token_rows rows = distill_rows();
  const auto to_float = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  const std::vector<float> student = to_float(dsx::test::random_vector(40, 1, 2.0)), teacher = to_float(dsx::test::random_vector(40, 2, 2.0));
  std::vector<float> d(student.size(), 123.0f);
  const double loss = post::distill_objective<float>(rows, positions, student, teacher, 0.0, 2.0, d);

  const auto lp = post::token_logprobs<float>(student, rows.ids, rows.rows, rows.seq, vocab);
  std::vector<double> dlogp(lp.size());
  const double nll = post::masked_nll(lp, rows.scored, positions, dlogp);
  std::vector<float> expected(student.size());
  post::logprob_backward<float>(student, rows.ids, rows.rows, rows.seq, vocab, dlogp, expected);
  CHECK(loss == nll);
  CHECK(d == expected);
}

TEST_CASE("distill_objective: value and gradient at α = 0.5, τ = 2 (f64, finite differences)", "[unit]") {
  constexpr std::int64_t vocab = 5, positions = 7;
  constexpr double alpha = 0.5, tau = 2.0;
  const post::token_rows rows = distill_rows();
  std::vector<double> student = dsx::test::random_vector(40, 3, 2.0);
  const std::vector<double> teacher = dsx::test::random_vector(40, 4, 2.0);
  std::vector<double> d(student.size()), scratch(student.size());
  const double loss = post::distill_objective<double>(rows, positions, student, teacher, alpha, tau, d);

  // The value from its definition: Σ over scored positions of
  // ((1 − α) · −log p_student(next token) + α · τ² · KL(softmax(teacher/τ) ‖ softmax(student/τ))) / positions.
  const auto log_softmax = [&](const double* x, double scale) {
    std::vector<double> out(vocab);
    double z = 0;
    for (std::int64_t v = 0; v < vocab; ++v) z += std::exp(x[v] / scale);
    for (std::int64_t v = 0; v < vocab; ++v) out[std::size_t(v)] = x[v] / scale - std::log(z);
    return out;
  };
  double expected = 0;
  for (std::int64_t i = 0; i < rows.rows * rows.seq; ++i) {
    if (!rows.scored[std::size_t(i)]) continue;
    const double* s = student.data() + i * vocab;
    const double* t = teacher.data() + i * vocab;
    const auto ls = log_softmax(s, 1.0), lst = log_softmax(s, tau), ltt = log_softmax(t, tau);
    double kl = 0;
    for (std::size_t v = 0; v < std::size_t(vocab); ++v) kl += std::exp(ltt[v]) * (ltt[v] - lst[v]);
    expected += ((1 - alpha) * -ls[std::size_t(rows.ids[std::size_t(i + 1)])] + alpha * tau * tau * kl) / double(positions);
  }
  CHECK(loss == Approx(expected).epsilon(1e-12));

  dsx::test::require_gradient("student logits", student.data(), d.data(), student.size(), [&] {
    return post::distill_objective<double>(rows, positions, student, teacher, alpha, tau, scratch);
  });
  // Unscored positions get no gradient.
  for (std::int64_t i = 0; i < rows.rows * rows.seq; ++i)
    if (!rows.scored[std::size_t(i)])
      for (std::int64_t v = 0; v < vocab; ++v) CHECK(d[std::size_t(i * vocab + v)] == 0.0);
}
