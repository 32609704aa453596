// The DeepSeek-R1 recipe end to end, at any scale, on the verifiable tasks of post/tasks.hpp:
//
//   pretrain          the base model on the synthetic reasoning corpus (post/reasoning_data.hpp), with MTP
//                     and aux-loss-free balancing (train/pretrain.hpp)
//   r1-zero           GRPO straight from the base, rule rewards accuracy + format (R1-Zero)
//   cold-start-sft    the base fine-tuned on a few hundred chain-of-thought conversations (R1 stage 1)
//   grpo              reasoning RL from the cold start, rewards accuracy + format + language consistency
//   rejection-sft     N samples per train prompt from the RL model, the correct and well-formed kept and
//                     de-duplicated (data/rejection.jsonl), then the base fine-tuned on them (R1 stage 3)
//   reward-model      a Bradley–Terry reward model on pairs from the same sampling (correct and well-formed
//                     chosen over wrong or malformed), a reward source of the next stage
//   rl-all            the second RL stage from the rejection-sampling model: rule + language rewards and the
//                     reward model's score (R1 stage 4; temperature 0.7)
//   student-base      a small dense student pre-trained on the same corpus
//   distill-student   the student fine-tuned on the final teacher's filtered samples (sequence-level, as R1's
//                     distilled models were) plus, with logit_weight > 0, the KL to the teacher's distribution
//   baseline-student  the same student trained as long on the corpus alone: no teacher samples
//
// Every stage but reward-model is evaluated on held-out problems (post/evaluate.hpp) and appended to
// OUT/report.json, which is also the recipe's progress: a rerun skips the stages it lists and resumes an
// unfinished stage from its checkpoint (each stage trains in OUT/<stage>/, io/checkpoint.hpp). The
// recipe's options are a JSON file whose members override the defaults below (recipe_options::parse);
// a rerun with different options is refused.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "dsx/backend/host/all.hpp"
#include "dsx/data/loader.hpp"
#include "dsx/data/shards.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/load.hpp"
#include "dsx/model/transformer.hpp"
#include "dsx/post/chat.hpp"
#include "dsx/post/evaluate.hpp"
#include "dsx/post/grpo.hpp"
#include "dsx/post/preference.hpp"
#include "dsx/post/reasoning_data.hpp"
#include "dsx/post/report.hpp"
#include "dsx/post/sft.hpp"
#include "dsx/train/pretrain.hpp"

namespace dsx::post {

// The options of a recipe as JSON: the defaults are the toy demo (a 2-core machine, minutes).
inline nlohmann::json default_recipe() {
  using nlohmann::json;
  // 64 problems per task × 8 samples: twice the problems and samples of 32 × 4, which shrinks the standard
  // error of a pass@1 by √2 to 2, and a vote of 8 rarely ties where one of 4 often does. With 32 × 4 the
  // RL stages' cons@k and pass@1 (their samples mostly agree) differed by that noise, either way.
  const json eval = {{"problems", 64}, {"k", 8}, {"temperature", 0.6}, {"top_p", 0.95}, {"max_new", 96}, {"nim_games", 16}, {"traces", 2}};
  // RL samples at temperature 0.7: at 1.0 (R1's setting) a model this small writes mostly broken text, and
  // the updates then chase that noise instead of the answers.
  const auto rl = [](int steps, int prompts, double temperature, double lr, double language, double rm) {
    return json{{"steps", steps}, {"prompts", prompts}, {"group", 8}, {"iterations", 1}, {"temperature", temperature},
                {"max_new", 96}, {"lr", lr}, {"beta", 0.001}, {"eps_low", 0.2}, {"eps_high", 0.28},
                {"aggregation", "token"}, {"scale_std", true}, {"accuracy", 1.0}, {"format", 1.0},
                {"language", language}, {"reward_model", rm}};
  };
  const auto sft = [](double epochs, double lr) { return json{{"epochs", epochs}, {"batch", 16}, {"lr", lr}, {"row_tokens", 128}}; };
  return {{"seed", 1},
          {"stop_after", ""},  // the last stage to run ("": all)
          {"corpus", {{"documents", 20000}, {"think_rate", 0.08}, {"cot_rate", 0.76}, {"shortcut_rate", 0.3}, {"mixed_language_rate", 0.3}}},
          {"pretrain", {{"steps", 1400}, {"batch", 16}, {"seq", 127}, {"lr", 3e-3}, {"lr_final", 3e-4}, {"warmup", 30}}},
          {"eval", eval},
          {"r1_zero", rl(80, 8, 0.7, 1e-4, 0.0, 0.0)},
          {"cold_start", {{"samples", 300}, {"sft", sft(3, 3e-4)}}},
          {"grpo", rl(20, 16, 0.7, 5e-5, 1.0, 0.0)},
          {"rejection", {{"prompts", 256}, {"samples", 4}, {"temperature", 0.7}, {"sft", sft(6, 3e-4)}}},
          {"reward_model", {{"steps", 60}, {"batch", 16}, {"lr", 1e-3}, {"held_out", 0.2}}},
          {"rl_all", rl(20, 8, 0.7, 3e-5, 1.0, 0.5)},
          {"student", {{"pretrain_steps", 1400}}},
          {"distill", {{"prompts", 1024}, {"samples", 4}, {"temperature", 0.7}, {"logit_weight", 0.0},
                       {"kl_temperature", 1.0}, {"sft", sft(6, 3e-4)}}}};
}

namespace recipe_detail {

inline std::string kind(const nlohmann::json& j) {
  if (j.is_object()) return "an object";
  if (j.is_array()) return "an array";
  if (j.is_string()) return "a string";
  if (j.is_boolean()) return "a boolean";
  if (j.is_number()) return "a number";
  return "null";
}

// Overrides `base` with `user`, member by member: every member of `user` must exist in `base` with the
// same kind (objects merge recursively); errors name the file and the field path.
inline void merge(nlohmann::json& base, const nlohmann::json& user, const std::string& file, const std::string& path) {
  require(user.is_object(), file + ": " + (path.empty() ? std::string("the recipe") : "field '" + path + "'") +
                                ": expected an object, found " + kind(user));
  for (const auto& [key, value] : user.items()) {
    const std::string field = path.empty() ? key : path + "." + key;
    require(base.contains(key), file + ": unknown field '" + field + "'");
    nlohmann::json& b = base[key];
    if (b.is_object()) {
      merge(b, value, file, field);
      continue;
    }
    require(kind(b) == kind(value), file + ": field '" + field + "': expected " + kind(b) + ", found " + kind(value));
    require(!b.is_number_integer() || value.is_number_integer(),
            file + ": field '" + field + "': expected an integer, found " + value.dump());
    b = value;
  }
}

}  // namespace recipe_detail

// A recipe: the defaults overridden by a JSON file (empty path: the defaults).
inline nlohmann::json load_recipe(const std::filesystem::path& file) {
  nlohmann::json r = default_recipe();
  if (file.empty()) return r;
  std::ifstream in(file);
  require(bool(in), "recipe: cannot read '" + file.string() + "'");
  nlohmann::json user;
  try {
    user = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw error(file.string() + ": not valid JSON: " + e.what());
  }
  recipe_detail::merge(r, user, file.string(), "");
  return r;
}

// The tasks' prompt and reward plumbing shared by the RL stages and rejection sampling.
struct task_stream {
  std::uint64_t seed;
  std::uint64_t offset;  // problem index offset of this stage, so that stages see different prompts
  task_problem problem(std::int64_t k) const {
    const task_kind kind = all_tasks[std::size_t(k) % all_tasks.size()];
    return make_problem(kind, split::train, offset + std::uint64_t(k) / all_tasks.size(), seed);
  }
};

inline sampling_options rl_sampling(const nlohmann::json& s, const chat_template& chat) {
  return {.temperature = s["temperature"].get<double>(), .top_p = 1.0, .top_k = 0, .max_new = s["max_new"].get<std::int64_t>(),
          .stop = {chat.eos()}, .vocab_limit = chat.tokenizer().vocab_size()};
}

inline eval_options eval_of(const nlohmann::json& r) {
  const auto& e = r["eval"];
  return {.problems = e["problems"].get<std::int64_t>(), .k = e["k"].get<int>(),
          .sampling = {.temperature = e["temperature"].get<double>(), .top_p = e["top_p"].get<double>(), .top_k = 0,
                       .max_new = e["max_new"].get<std::int64_t>(), .stop = {}},
          .nim_games = e["nim_games"].get<std::int64_t>(), .traces = e["traces"].get<int>(), .seed = r["seed"].get<std::uint64_t>() + 1000};
}

// The fine-tuning schedule of the post-training stages: linear warm-up over the first 10% of `steps`,
// cosine decay to peak / 10.
inline lr_schedule warmup_cosine(std::int64_t steps, double peak) {
  const std::int64_t warmup = std::max<std::int64_t>(1, steps / 10);
  return {.peak = peak, .final = peak / 10, .warmup = warmup, .constant = 0, .decay = std::max<std::int64_t>(0, steps - warmup)};
}

// The options of a fine-tuning stage: `steps` of `batch` rows, warmup_cosine to `lr`, no weight decay.
inline sft_options sft_of(std::int64_t steps, std::int64_t batch, double lr, std::uint64_t seed, const std::filesystem::path& out) {
  return {.steps = steps, .batch = batch, .lr = warmup_cosine(steps, lr),
          .adamw = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0, .decay_vectors = false},
          .clip = 1.0, .seed = seed, .checkpoint_every = 0, .out = out};
}

// The steps of a recipe SFT section {"epochs", "batch", ...} over `rows` rows: epochs · rows / batch,
// rounded up, at least 1 (a data set of any size gets the same number of passes).
inline std::int64_t sft_steps(const nlohmann::json& s, std::int64_t rows) {
  const double steps = std::ceil(s["epochs"].get<double>() * double(rows) / double(s["batch"].get<std::int64_t>()));
  return std::max<std::int64_t>(1, std::int64_t(steps));
}

// Packed conversations as token rows: post/chat.hpp's per-token train flags shifted to the positions
// that predict them (policy.hpp's `scored`).
inline token_rows scored_rows(const packed_rows& packed) {
  token_rows r{packed.rows, packed.row_tokens, packed.ids, std::vector<std::uint8_t>(packed.train.size(), 0)};
  for (std::size_t i = 0; i + 1 < packed.train.size(); ++i)
    if ((i + 1) % std::size_t(packed.row_tokens) != 0) r.scored[i] = packed.train[i + 1];
  return r;
}

// SFT rows of single-turn conversations.
inline token_rows sft_rows(const chat_template& chat, std::span<const qa> data, std::int64_t row_tokens) {
  std::vector<rendered_chat> chats;
  for (const qa& d : data) chats.push_back(chat.render(d.question, d.response));
  return scored_rows(pack_conversations(chats, row_tokens, chat.eos()));
}

// Documents packed into rows of `row_tokens` tokens (EOS after each), every position scored: plain
// language modelling in the shape an sft_trainer takes.
inline token_rows corpus_rows(const bpe_tokenizer& tokenizer, std::span<const std::string> docs, std::int64_t row_tokens) {
  std::vector<std::int32_t> all;
  const std::int32_t eos = *tokenizer.eos_id();
  for (const std::string& d : docs) {
    tokenizer.encode_into(d, false, all);
    all.push_back(eos);
  }
  token_rows r{std::int64_t(all.size()) / row_tokens, row_tokens, {}, {}};
  r.ids.assign(all.begin(), all.begin() + r.rows * row_tokens);
  r.scored.assign(r.ids.size(), 1);
  for (std::int64_t i = 0; i < r.rows; ++i) r.scored[std::size_t((i + 1) * row_tokens - 1)] = 0;
  return r;
}

// Logit-level distillation mixed with the sequence-level NLL over one micro-batch:
//   (1 − α) · NLL of the row tokens + α · τ² · KL(teacher ‖ student) at the same positions,
// both means over the step's `step_positions` scored positions. Writes d/d(student logits).
template <class T>
double distill_objective(const token_rows& rows, std::int64_t step_positions, std::span<const T> student,
                         std::span<const T> teacher, double alpha, double tau, std::span<T> dstudent) {
  const std::int64_t vocab = std::int64_t(student.size()) / (rows.rows * rows.seq);
  const double norm = double(std::max<std::int64_t>(step_positions, 1));
  std::vector<double> w(rows.scored.size());
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = rows.scored[i] ? alpha / norm : 0.0;
  double loss = distill_kl<T, T>(student, teacher, w, rows.rows * rows.seq, vocab, tau, dstudent);
  const auto lp = token_logprobs<T>(student, rows.ids, rows.rows, rows.seq, vocab);
  std::vector<double> dlogp(lp.size());
  loss += (1 - alpha) * masked_nll(lp, rows.scored, step_positions, dlogp);
  for (double& g : dlogp) g *= 1 - alpha;
  std::vector<T> dnll(dstudent.size());
  logprob_backward<T>(student, rows.ids, rows.rows, rows.seq, vocab, dlogp, dnll);
  for (std::size_t i = 0; i < dnll.size(); ++i) dstudent[i] += dnll[i];
  return loss;
}

// The reward model trained in `dir` (reward_trainer's output folder): its trunk's checkpoint loaded into
// `trunk`, and its head.
template <class Model>
std::unique_ptr<reward_model<Model>> load_reward_model(Model& trunk, const std::filesystem::path& dir) {
  const auto checkpoint = find_checkpoint(dir);
  require(checkpoint.has_value(), "reward model: no checkpoint in '" + dir.string() + "'");
  load_weights(trunk, *checkpoint);
  auto rm = std::make_unique<reward_model<Model>>(trunk);
  rm->load(dir / "score.safetensors");
  return rm;
}

// The stages in order ("reward-model" is trained but not evaluated: it is no policy).
inline constexpr std::array<std::string_view, 10> stage_names{
    "pretrain", "r1-zero", "cold-start-sft", "grpo", "rejection-sft", "reward-model", "rl-all",
    "student-base", "distill-student", "baseline-student"};

// Rejection sampling (R1 §2.3.3): `n` samples of each of the problems 0 .. prompts − 1; a sample is kept
// when it ended with a stop token and is correct, well-formed and in one language; a response already
// kept for the same question is dropped. With `pairs`, each prompt with a kept and a rejected sample
// gives one (kept, rejected) preference pair. Sampling of problem k uses stream k under `seed`.
template <class Model>
std::vector<qa> rejection_sample(Model& model, const chat_template& chat, const std::function<task_problem(std::int64_t)>& problem,
                                 std::int64_t prompts, std::int64_t n, const sampling_options& so, std::uint64_t seed,
                                 std::vector<preference_pair>* pairs) {
  std::vector<qa> kept;
  std::set<std::pair<std::string, std::string>> seen;
  progress_bar bar(prompts);
  for (std::int64_t k = 0; k < prompts; ++k) {
    const task_problem p = problem(k);
    std::vector<std::string> good, bad;
    for (const completion& c : sample(model, chat.prompt(p.question), n, so, seed, std::uint64_t(k))) {
      const std::string text = response_text(chat, c.ids, c.stopped);
      const verdict v = verify(p, text);
      (v.correct && v.formatted && v.language == 1.0 && c.stopped ? good : bad).push_back(text);
    }
    for (const std::string& g : good)
      if (seen.insert({p.question, g}).second) kept.push_back({p.question, g});
    if (pairs && !good.empty() && !bad.empty()) pairs->push_back({p.question, good.front(), bad.front()});
    bar.update(k + 1, std::to_string(kept.size()) + " kept");
  }
  bar.finish();
  return kept;
}

// The recipe for teacher configuration C and student configuration S, on the host backend in f32.
template <model_config C, model_config S>
class recipe {
 public:
  using teacher_t = transformer<C, precision::f32, backend::host>;
  using student_t = transformer<S, precision::f32, backend::host>;
  static_assert(C.vocab == S.vocab, "recipe: the student needs the teacher's vocabulary");

  // `report`: where report.json goes (empty: OUT/report.json); the HTML page goes beside it.
  recipe(nlohmann::json options, std::filesystem::path out, std::filesystem::path report = {})
      : o_(std::move(options)), out_(std::move(out)), report_(report.empty() ? out_ / "report.json" : std::move(report)),
        seed_(o_["seed"].get<std::uint64_t>()) {}

  // Runs every stage not yet in OUT/report.json; returns the report's stages.
  std::vector<stage_report> run() {
    namespace fs = std::filesystem;
    const auto t0 = std::chrono::steady_clock::now();
    fs::create_directories(out_ / "data");
    if (report_.has_parent_path()) fs::create_directories(report_.parent_path());
    check_options();
    tokenizer_ = std::make_unique<bpe_tokenizer>(load_or_make_tokenizer());
    chat_ = std::make_unique<chat_template>(*tokenizer_);
    corpus_ = reasoning_corpus({.seed = seed_ + 7,
                                .documents = o_["corpus"]["documents"].get<std::size_t>(),
                                .think_rate = o_["corpus"]["think_rate"].get<double>(),
                                .cot_rate = o_["corpus"]["cot_rate"].get<double>(),
                                .shortcut_rate = o_["corpus"]["shortcut_rate"].get<double>(),
                                .mixed_language_rate = o_["corpus"]["mixed_language_rate"].get<double>()});
    if (fs::exists(report_path())) stages_ = read_report_json(report_path());
    seconds_before_ = previous_seconds();

    const std::string last = o_["stop_after"].get<std::string>();
    require(last.empty() || std::find(stage_names.begin(), stage_names.end(), last) != stage_names.end(),
            "recipe: field 'stop_after': \"" + last + "\" is not a stage name");
    bool go = true;
    const auto stage_if = [&](const char* name, const char* model, auto&& body) {
      if (!go) return;
      stage(name, model, body);
      go = last != name;
    };
    stage_if("pretrain", "teacher", [&](stage_report& r) { pretrain<teacher_t>(r, "pretrain", o_["pretrain"]["steps"].get<std::int64_t>()); });
    stage_if("r1-zero", "teacher", [&](stage_report& r) { rl(r, "r1-zero", "pretrain", o_["r1_zero"], 1); });
    stage_if("cold-start-sft", "teacher", [&](stage_report& r) { cold_start(r); });
    stage_if("grpo", "teacher", [&](stage_report& r) { rl(r, "grpo", "cold-start-sft", o_["grpo"], 2); });
    stage_if("rejection-sft", "teacher", [&](stage_report& r) { rejection_sft(r); });
    if (go && !reward_model_done()) train_reward_model();
    go = go && last != "reward-model";
    stage_if("rl-all", "teacher", [&](stage_report& r) { rl(r, "rl-all", "rejection-sft", o_["rl_all"], 3); });
    stage_if("student-base", "student", [&](stage_report& r) { pretrain<student_t>(r, "student-base", o_["student"]["pretrain_steps"].get<std::int64_t>()); });
    stage_if("distill-student", "student", [&](stage_report& r) { distill(r); });
    stage_if("baseline-student", "student", [&](stage_report& r) { baseline(r); });

    total_seconds_ = seconds_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    write();
    return stages_;
  }

  const std::filesystem::path& report_path() const { return report_; }
  double total_seconds() const { return total_seconds_; }

 private:
  // ----------------------------------------------------------------------------------------------
  // Bookkeeping.

  // A folder holds one run: its options are saved at the start, and a rerun must give the same ones
  // (stop_after aside: a run stopped early continues with another stop or none).
  void check_options() {
    const auto saved = out_ / "recipe.json";
    if (std::filesystem::exists(saved)) {
      nlohmann::json before = checkpoint_detail::read_json(saved), now = o_;
      before.erase("stop_after");
      now.erase("stop_after");
      require(before == now, "recipe: '" + out_.string() + "' holds a run with other options (" + saved.string() +
                                "); use another output folder or the same recipe");
    } else {
      checkpoint_detail::write_text(saved, o_.dump(2) + "\n");
    }
  }

  bpe_tokenizer load_or_make_tokenizer() {
    const auto path = out_ / "tokenizer.json";
    if (std::filesystem::exists(path)) return bpe_tokenizer::load(path);
    bpe_tokenizer t = reasoning_tokenizer(C.vocab);
    t.save(path);
    return t;
  }

  double previous_seconds() const {
    double s = 0;
    for (const auto& st : stages_) s += st.seconds;
    if (std::filesystem::exists(out_ / "reward_model" / "done.json"))
      s += checkpoint_detail::read_json(out_ / "reward_model" / "done.json")["seconds"].get<double>();
    return s;
  }

  bool done(const std::string& name) const {
    return std::any_of(stages_.begin(), stages_.end(), [&](const stage_report& s) { return s.name == name; });
  }

  // Runs stage `name` unless the report has it: train (filling metrics/curves), evaluate, append, write.
  template <class Body>
  void stage(const std::string& name, const std::string& model, Body&& body) {
    if (done(name)) {
      fmt::print("== {}: done (in {})\n", name, report_path().string());
      std::fflush(stdout);
      return;
    }
    fmt::print("== {}\n", name);
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    stage_report r;
    body(r);
    r.name = name;
    r.model = model;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("   {}: pass@1 {:.1f}%  cons@{} {:.1f}%  format {:.1f}%  ({:.0f} s)\n", name, 100 * r.pass_at_1, r.k,
               100 * r.cons_at_k, 100 * r.format_rate, r.seconds);
    std::fflush(stdout);
    stages_.push_back(std::move(r));
    write();
  }

  void write() {
    nlohmann::json extra = {{"total_seconds", total_seconds_ > 0 ? total_seconds_ : previous_seconds()},
                            {"teacher", to_hf_config(C)}, {"student", to_hf_config(S)}, {"recipe", o_}};
    const auto rm = out_ / "reward_model" / "done.json";
    if (std::filesystem::exists(rm)) extra["reward_model"] = checkpoint_detail::read_json(rm);
    write_report_json(report_path(), stages_, extra);
    auto html = report_path();
    write_report_html(html.replace_extension(".html"), stages_, extra);
  }

  template <class Model>
  std::unique_ptr<Model> make_model(std::int64_t batch) {
    return std::make_unique<Model>(be_, batch, std::int64_t(Model::config.max_positions));
  }

  template <class Model>
  void evaluate_into(stage_report& r, Model& model) {
    static constexpr std::array tasks = all_tasks;
    stage_report e = evaluate(model, *chat_, std::span<const task_kind>(tasks), eval_of(o_));
    e.metrics = r.metrics;
    e.curves = r.curves;
    r = std::move(e);
  }

  std::int64_t rl_rows() const {
    std::int64_t rows = 16;
    for (const char* s : {"r1_zero", "grpo", "rl_all"})
      rows = std::max(rows, o_[s]["prompts"].get<std::int64_t>() * o_[s]["group"].get<std::int64_t>());
    return std::min<std::int64_t>(rows, 64);
  }

  // ----------------------------------------------------------------------------------------------
  // Stages.

  template <class Model>
  void pretrain(stage_report& r, const std::string& name, std::int64_t steps) {
    const auto& p = o_["pretrain"];
    pretrain_options po;
    po.steps = steps;
    po.batch = p["batch"].get<std::int64_t>();
    po.seq = std::min<std::int64_t>(p["seq"].get<std::int64_t>(), Model::config.max_positions - 1);
    po.lr = {.peak = p["lr"].get<double>(), .final = p["lr_final"].get<double>(), .warmup = p["warmup"].get<std::int64_t>(),
             .constant = 0, .decay = std::max<std::int64_t>(0, steps - p["warmup"].get<std::int64_t>())};
    po.seed = seed_;
    po.out = out_ / name;
    po.mtp_switch_step = steps * 10 / 15;
    std::vector<token_shard> shards{tokenize_documents(corpus_, *tokenizer_, "reasoning corpus")};
    packed_loader loader(std::move(shards), {.batch = po.batch, .sequence_length = po.seq, .seed = seed_, .shuffle = true,
                                             .model_vocab = Model::config.vocab});
    auto model = make_model<Model>(po.batch);
    pretrainer<Model> trainer(*model, loader, po);
    if (find_checkpoint(po.out)) trainer.resume();
    else {
      init_weights(*model, seed_);
      trainer.start();
    }
    trainer.run();
    r.metrics = po.out / "metrics.jsonl";
    r.curves = {"lm_loss", "mtp_loss"};
    evaluate_into(r, *model);
  }

  std::filesystem::path weights_of(const std::string& stage) const {
    const auto dir = find_checkpoint(out_ / stage);
    require(dir.has_value(), "recipe: stage '" + stage + "' has no checkpoint in " + (out_ / stage).string());
    return *dir;
  }

  // GRPO from stage `from`'s weights with rule rewards (and the reward model's score when weighted).
  void rl(stage_report& r, const std::string& name, const std::string& from, const nlohmann::json& s, std::uint64_t index) {
    const std::int32_t eos = chat_->eos();
    auto policy = make_model<teacher_t>(rl_rows());
    auto reference = make_model<teacher_t>(rl_rows());
    load_weights(*policy, weights_of(from));
    const reward_weights w{s["accuracy"].get<double>(), s["format"].get<double>(), s["language"].get<double>()};
    const double rm_weight = s["reward_model"].get<double>();
    std::unique_ptr<teacher_t> rm_trunk;
    std::unique_ptr<reward_model<teacher_t>> rm;
    if (rm_weight > 0) {
      rm_trunk = make_model<teacher_t>(16);
      rm = load_reward_model(*rm_trunk, out_ / "reward_model");
    }
    const task_stream tasks{seed_, index * 1000000};
    const auto prompts = [&](std::int64_t k) { return chat_->prompt(tasks.problem(k).question); };
    const auto reward = [&](std::int64_t k, std::span<const std::int32_t> ids) {
      const bool stopped = !ids.empty() && ids.back() == eos;
      const task_problem p = tasks.problem(k);
      const verdict v = verify(p, response_text(*chat_, ids, stopped));
      scored_completion sc{rule_reward(v, w), v.correct, v.formatted, v.language};
      if (rm) sc.reward += rm_weight * sigmoid(rm->score(chat_->prompt(p.question), ids));
      return sc;
    };
    grpo_options g;
    g.steps = s["steps"].get<std::int64_t>();
    g.prompts = s["prompts"].get<std::int64_t>();
    g.group = s["group"].get<std::int64_t>();
    g.iterations = s["iterations"].get<std::int64_t>();
    g.scale_std = s["scale_std"].get<bool>();
    const std::string agg = s["aggregation"].get<std::string>();
    require(agg == "token" || agg == "sequence" || agg == "constant",
            "recipe: field '" + name + ".aggregation': expected \"token\", \"sequence\" or \"constant\", found \"" + agg + "\"");
    g.loss = {.eps_low = s["eps_low"].get<double>(), .eps_high = s["eps_high"].get<double>(), .beta = s["beta"].get<double>(),
              .aggregation = agg == "token" ? grpo_aggregation::token : agg == "sequence" ? grpo_aggregation::sequence : grpo_aggregation::constant};
    g.sampling = rl_sampling(s, *chat_);
    const double lr = s["lr"].get<double>();
    g.lr = {.peak = lr, .final = lr, .warmup = 0, .constant = 0, .decay = 0};
    g.seed = seed_ + index;
    g.out = out_ / name;
    grpo_trainer<teacher_t> trainer(*policy, *reference, prompts, reward, g, eos);
    trainer.run("GRPO: " + name);
    r.metrics = g.out / "metrics.jsonl";
    r.curves = {"reward", "accuracy", "format_rate", "kl", "response_length"};
    evaluate_into(r, *policy);
  }

  void cold_start(stage_report& r) {
    const auto& s = o_["cold_start"];
    const std::vector<qa> data = cold_start_set(s["samples"].get<std::size_t>(), seed_ + 11);
    write_conversations(out_ / "data" / "cold_start.jsonl", data);
    token_rows rows = sft_rows(*chat_, data, s["sft"]["row_tokens"].get<std::int64_t>());
    const std::int64_t steps = sft_steps(s["sft"], rows.rows);
    sft_stage<teacher_t>(r, "cold-start-sft", "pretrain", std::move(rows), s["sft"], steps);
  }

  void write_conversations(const std::filesystem::path& path, std::span<const qa> data) {
    std::vector<conversation> cs;
    for (const qa& d : data) cs.push_back({{"user", d.question}, {"assistant", d.response}});
    write_sft_jsonl(path, cs);
  }

  // Fine-tunes stage `from`'s weights on `rows` for `steps` (section `s`: batch, lr).
  template <class Model>
  void sft_stage(stage_report& r, const std::string& name, const std::string& from, token_rows rows, const nlohmann::json& s,
                 std::int64_t steps, logit_objective<float> objective = {}) {
    auto model = make_model<Model>(s["batch"].get<std::int64_t>());
    load_weights(*model, weights_of(from));
    const sft_options o = sft_of(steps, s["batch"].get<std::int64_t>(), s["lr"].get<double>(), seed_, out_ / name);
    sft_trainer<Model> trainer(*model, std::move(rows), o, std::move(objective));
    trainer.run("SFT: " + name);
    r.metrics = out_ / name / "metrics.jsonl";
    r.curves = {"loss"};
    evaluate_into(r, *model);
  }

  // The recipe's rejection sampling of the train problems of stage `index` (see post::rejection_sample).
  std::vector<qa> rejection_sample(teacher_t& model, std::int64_t prompts, std::int64_t n, double temperature, std::uint64_t index,
                                   std::vector<preference_pair>* pairs) {
    const task_stream tasks{seed_, index * 1000000};
    const sampling_options so{.temperature = temperature, .top_p = 1.0, .top_k = 0,
                              .max_new = o_["eval"]["max_new"].get<std::int64_t>(), .stop = {chat_->eos()},
                              .vocab_limit = chat_->tokenizer().vocab_size()};
    std::vector<qa> kept = post::rejection_sample(model, *chat_, [&](std::int64_t k) { return tasks.problem(k); }, prompts, n,
                                                  so, seed_ + index, pairs);
    require(!kept.empty(), "recipe: rejection sampling kept no sample (no correct, well-formed response)");
    return kept;
  }

  void rejection_sft(stage_report& r) {
    const auto& s = o_["rejection"];
    const auto data_path = out_ / "data" / "rejection.jsonl";
    const auto pairs_path = out_ / "data" / "preferences.jsonl";
    std::vector<qa> data;
    if (std::filesystem::exists(data_path) && std::filesystem::exists(pairs_path)) {
      data = read_qa(data_path);
    } else {
      auto model = make_model<teacher_t>(16);
      load_weights(*model, weights_of("grpo"));
      std::vector<preference_pair> pairs;
      data = rejection_sample(*model, s["prompts"].get<std::int64_t>(), s["samples"].get<std::int64_t>(),
                              s["temperature"].get<double>(), 4, &pairs);
      require(!pairs.empty(), "recipe: rejection sampling found no prompt with both a kept and a rejected sample");
      write_preference_jsonl(pairs_path, pairs);
      write_conversations(data_path, data);
    }
    fmt::print("   rejection sampling: {} samples kept\n", data.size());
    token_rows rows = sft_rows(*chat_, data, s["sft"]["row_tokens"].get<std::int64_t>());
    const std::int64_t steps = sft_steps(s["sft"], rows.rows);
    sft_stage<teacher_t>(r, "rejection-sft", "pretrain", std::move(rows), s["sft"], steps);
  }

  static std::vector<qa> read_qa(const std::filesystem::path& path) {
    std::vector<qa> out;
    for (const conversation& c : read_sft_jsonl(path)) {
      require(c.size() == 2 && c[0].role == "user" && c[1].role == "assistant",
              path.string() + ": expected single-turn conversations (user, assistant)");
      out.push_back({c[0].content, c[1].content});
    }
    return out;
  }

  bool reward_model_done() const { return std::filesystem::exists(out_ / "reward_model" / "done.json"); }

  void train_reward_model() {
    fmt::print("== reward-model\n");
    const auto t0 = std::chrono::steady_clock::now();
    const auto& s = o_["reward_model"];
    std::vector<preference_pair> pairs = read_preference_jsonl(out_ / "data" / "preferences.jsonl");
    const std::size_t held = std::min(pairs.size() - 1, std::size_t(std::llround(double(pairs.size()) * s["held_out"].get<double>())));
    const std::vector<preference_pair> test(pairs.end() - std::ptrdiff_t(held), pairs.end());
    pairs.resize(pairs.size() - held);
    auto trunk = make_model<teacher_t>(2 * s["batch"].get<std::int64_t>());
    load_weights(*trunk, weights_of("pretrain"));
    reward_model<teacher_t> rm(*trunk);
    reward_options ro;
    ro.steps = s["steps"].get<std::int64_t>();
    ro.batch = s["batch"].get<std::int64_t>();
    const double lr = s["lr"].get<double>();
    ro.lr = warmup_cosine(ro.steps, lr);
    ro.seed = seed_;
    ro.out = out_ / "reward_model";
    reward_trainer<teacher_t> trainer(rm, tokenize_pairs(*chat_, pairs), ro, chat_->eos());
    trainer.run("reward model");
    const double train_acc = trainer.evaluate_pairs(tokenize_pairs(*chat_, pairs));
    const double test_acc = test.empty() ? NAN : trainer.evaluate_pairs(tokenize_pairs(*chat_, test));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("   reward model: pair accuracy train {:.1f}%, held-out {:.1f}% ({} pairs)  ({:.0f} s)\n", 100 * train_acc,
               100 * test_acc, test.size(), seconds);
    checkpoint_detail::write_text(out_ / "reward_model" / "done.json",
                                  nlohmann::json{{"train_pairs", pairs.size()}, {"held_out_pairs", test.size()},
                                                 {"train_accuracy", train_acc},
                                                 {"held_out_accuracy", std::isfinite(test_acc) ? nlohmann::json(test_acc) : nlohmann::json(nullptr)},
                                                 {"seconds", seconds}}.dump(2) + "\n");
  }

  void distill(stage_report& r) {
    const auto& s = o_["distill"];
    const auto data_path = out_ / "data" / "distill.jsonl";
    auto teacher = make_model<teacher_t>(s["sft"]["batch"].get<std::int64_t>());
    load_weights(*teacher, weights_of("rl-all"));
    std::vector<qa> data;
    if (std::filesystem::exists(data_path)) data = read_qa(data_path);
    else {
      data = rejection_sample(*teacher, s["prompts"].get<std::int64_t>(), s["samples"].get<std::int64_t>(),
                              s["temperature"].get<double>(), 5, nullptr);
      write_conversations(data_path, data);
    }
    fmt::print("   distillation set: {} teacher samples\n", data.size());
    const double alpha = s["logit_weight"].get<double>(), tau = s["kl_temperature"].get<double>();
    logit_objective<float> objective;
    if (alpha > 0)
      objective = [&, alpha, tau](const token_rows& rows, std::int64_t step_positions, std::span<const float> logits,
                                  std::span<float> dlogits) {
        teacher->forward(rows.ids, rows.rows, rows.seq, false);
        return distill_objective<float>(rows, step_positions, logits, teacher->logits(), alpha, tau, dlogits);
      };
    token_rows rows = sft_rows(*chat_, data, s["sft"]["row_tokens"].get<std::int64_t>());
    const std::int64_t steps = sft_steps(s["sft"], rows.rows);
    sft_stage<student_t>(r, "distill-student", "student-base", std::move(rows), s["sft"], steps, objective);
  }

  // The student-base trained as long as the distilled student (same steps, batch and learning rate) on the
  // pre-training corpus: everything but the teacher's samples.
  void baseline(stage_report& r) {
    const auto& s = o_["distill"]["sft"];
    const std::int64_t row_tokens = s["row_tokens"].get<std::int64_t>();
    const std::int64_t steps = sft_steps(s, sft_rows(*chat_, read_qa(out_ / "data" / "distill.jsonl"), row_tokens).rows);
    sft_stage<student_t>(r, "baseline-student", "student-base", corpus_rows(*tokenizer_, corpus_, row_tokens), s, steps);
  }

  nlohmann::json o_;
  std::filesystem::path out_, report_;
  std::uint64_t seed_;
  backend::host be_;
  std::unique_ptr<bpe_tokenizer> tokenizer_;
  std::unique_ptr<chat_template> chat_;
  std::vector<std::string> corpus_;
  std::vector<stage_report> stages_;
  double seconds_before_ = 0, total_seconds_ = 0;
};

}  // namespace dsx::post
