// The post-training subcommands (include/dsx/post): one per stage of the DeepSeek-R1 recipe, and
// `recipe`, which runs them all end to end. Every stage starts from an HF model folder (--init: a
// checkpoint folder of an earlier stage, or any folder with config.json + *.safetensors for this
// model), trains in --out (metrics.jsonl, metrics.svg, checkpoint/; rerunning continues from the
// checkpoint) and works on the host backend in f32.
//
//   sft               --init DIR --data FILE.jsonl --out DIR      {"messages"} or {"prompt","completion"}
//   reward-model      --init DIR --data FILE.jsonl --out DIR      {"prompt","chosen","rejected"}
//   dpo               --init DIR --data FILE.jsonl --out DIR      {"prompt","chosen","rejected"}
//   grpo              --init DIR --out DIR [--tasks ...]          rule rewards on the built-in tasks
//   rejection-sample  --init DIR --out FILE.jsonl [--tasks ...]   correct, well-formed samples as SFT data
//   distill           --teacher DIR --init DIR --data FILE.jsonl --out DIR   into dense_student(model)
//   evaluate          --init DIR [--tasks ...]                    pass@1, cons@k, format, Nim win rate
//   recipe            --out DIR [--recipe FILE.json] [--report PATH.json]
//
// Text goes through --tokenizer (an HF tokenizer.json holding the chat-format tokens; default: the
// recipe's tokenizer for this vocabulary, post/reasoning_data.hpp).
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench.hpp"
#include "dsx/post/recipe.hpp"

namespace dsx::tool {

struct post_args {
  std::string init, out, data, tokenizer, teacher, recipe_file, report, reward_model;
  std::vector<std::string> tasks;
  std::uint64_t seed = 1;
  int threads = 0;
  // optimisation
  std::int64_t steps = 100, batch = 16, row_tokens = 128;
  double lr = 1e-3;
  // preference
  double beta = 0.1;
  // RL and sampling
  std::int64_t prompts = 8, group = 8, iterations = 1, max_new = 96, samples = 4, problems = 24;
  int k = 4, top_k = 0;
  std::int64_t nim_games = 16;
  double temperature = 1.0, top_p = 1.0, eps_low = 0.2, eps_high = 0.28, kl_beta = 0.001;
  double eval_temperature = 1.0, eval_top_p = 1.0;  // `evaluate`'s sampling: the recipe's (R1's 0.6 and 0.95)
  std::string aggregation = "token";
  bool dr_grpo = false;
  double w_accuracy = 1, w_format = 1, w_language = 0, w_reward_model = 0.5;
  // distillation
  double logit_weight = 0.0, kl_temperature = 1.0;
};

inline std::vector<post::task_kind> parse_tasks(const std::vector<std::string>& names) {
  std::vector<post::task_kind> out;
  for (const std::string& n : names) out.push_back(post::parse_task(n));
  if (out.empty()) out.assign(post::all_tasks.begin(), post::all_tasks.end());
  return out;
}

// The subcommands and their flags; returns them so main() can tell which one ran.
struct post_commands {
  CLI::App *sft, *reward_model, *dpo, *grpo, *rejection, *distill, *evaluate, *recipe;
};

inline post_commands add_post_commands(CLI::App& app, post_args& a) {
  post_commands c{};
  c.sft = app.add_subcommand("sft", "supervised fine-tuning on chat JSONL (loss on assistant tokens, packed rows)");
  c.reward_model = app.add_subcommand("reward-model", "Bradley-Terry reward model on preference JSONL");
  c.dpo = app.add_subcommand("dpo", "direct preference optimisation against the frozen starting model");
  c.grpo = app.add_subcommand("grpo", "GRPO with rule rewards (accuracy, format, language) on the built-in tasks");
  c.rejection = app.add_subcommand("rejection-sample", "sample the built-in tasks, keep correct well-formed answers as SFT JSONL");
  c.distill = app.add_subcommand("distill", "train the dense student on teacher samples (and the teacher's logits)");
  c.evaluate = app.add_subcommand("evaluate", "pass@1, cons@k, format rate and Nim win rate on held-out problems");
  c.recipe = app.add_subcommand("recipe", "the whole R1 recipe end to end, with a report (JSON, table, HTML)");

  const auto common = [&](CLI::App* s, bool init) {
    if (init) s->add_option("--init", a.init, "HF model folder to start from (e.g. a stage's checkpoint/)")->required();
    s->add_option("--tokenizer", a.tokenizer, "tokenizer.json with the chat tokens (default: the recipe's tokenizer)");
    s->add_option("--seed", a.seed, "seed of sampling and data order")->capture_default_str();
    s->add_option("--threads", a.threads, "OpenMP and OpenBLAS threads (default: the environment's)");
  };
  const auto training = [&](CLI::App* s) {
    s->add_option("--out", a.out, "output folder: metrics.jsonl, metrics.svg, checkpoint/")->required();
    s->add_option("--steps", a.steps, "optimizer steps")->capture_default_str()->check(CLI::NonNegativeNumber);
    s->add_option("--batch", a.batch, "rows (or pairs) per step")->capture_default_str()->check(CLI::PositiveNumber);
    s->add_option("--lr", a.lr, "peak learning rate (warm-up 10%, cosine to 1/10)")->capture_default_str();
  };
  const auto sampling = [&](CLI::App* s, double& temperature, double& top_p) {
    s->add_option("--tasks", a.tasks, "tasks: addition sort42 countdown nim (default: all)");
    s->add_option("--temperature", temperature, "sampling temperature")->capture_default_str();
    s->add_option("--top-p", top_p, "nucleus sampling mass")->capture_default_str();
    s->add_option("--top-k", a.top_k, "keep the k most likely tokens (0: all)")->capture_default_str();
    s->add_option("--max-new", a.max_new, "tokens per completion at most")->capture_default_str();
  };
  for (auto* s : {c.sft, c.reward_model, c.dpo, c.distill}) {
    common(s, true);
    training(s);
    s->add_option("--data", a.data, "JSONL data")->required()->check(CLI::ExistingFile);
  }
  for (auto* s : {c.sft, c.distill}) s->add_option("--row-tokens", a.row_tokens, "tokens per packed row")->capture_default_str();
  c.dpo->add_option("--beta", a.beta, "DPO beta")->capture_default_str();
  c.distill->add_option("--teacher", a.teacher, "the teacher's HF model folder (this model's configuration)")->required();
  c.distill->add_option("--logit-weight", a.logit_weight, "weight of the KL to the teacher's logits (0: sequence-level only)")
      ->capture_default_str();
  c.distill->add_option("--kl-temperature", a.kl_temperature, "temperature of the logit KL")->capture_default_str();

  common(c.grpo, true);
  training(c.grpo);
  sampling(c.grpo, a.temperature, a.top_p);
  c.grpo->add_option("--prompts", a.prompts, "prompts per step")->capture_default_str();
  c.grpo->add_option("--group", a.group, "G: samples per prompt")->capture_default_str();
  c.grpo->add_option("--iterations", a.iterations, "mu: optimisation steps per rollout batch")->capture_default_str();
  c.grpo->add_option("--kl-beta", a.kl_beta, "KL weight to the reference (R1: 0.001)")->capture_default_str();
  c.grpo->add_option("--eps-low", a.eps_low, "lower clip range")->capture_default_str();
  c.grpo->add_option("--eps-high", a.eps_high, "upper clip range (DAPO: 0.28)")->capture_default_str();
  c.grpo->add_option("--aggregation", a.aggregation, "loss aggregation: token, sequence or constant")
      ->capture_default_str()->check(CLI::IsMember({"token", "sequence", "constant"}));
  c.grpo->add_flag("--dr-grpo", a.dr_grpo, "Dr. GRPO: advantages without the division by the std");
  c.grpo->add_option("--accuracy-weight", a.w_accuracy, "weight of the accuracy reward")->capture_default_str();
  c.grpo->add_option("--format-weight", a.w_format, "weight of the format reward")->capture_default_str();
  c.grpo->add_option("--language-weight", a.w_language, "weight of the language-consistency reward")->capture_default_str();
  c.grpo->add_option("--reward-model", a.reward_model, "a reward-model output folder whose score is added")
      ->check(CLI::ExistingDirectory);
  c.grpo->add_option("--reward-model-weight", a.w_reward_model, "weight of sigmoid(reward model score)")->capture_default_str();

  common(c.rejection, true);
  sampling(c.rejection, a.temperature, a.top_p);
  c.rejection->add_option("--out", a.out, "SFT JSONL to write")->required();
  c.rejection->add_option("--prompts", a.prompts, "train problems (over the tasks in turn)")->capture_default_str();
  c.rejection->add_option("--samples", a.samples, "samples per prompt")->capture_default_str();

  // evaluate's defaults are the recipe's evaluation, so that a stage checkpoint is measured as the report
  // measured it (the report's samples also use the recipe's seed + 1000 as --seed).
  const post::eval_options recipe_eval = post::eval_of(post::default_recipe());
  a.eval_temperature = recipe_eval.sampling.temperature;
  a.eval_top_p = recipe_eval.sampling.top_p;
  a.problems = recipe_eval.problems;
  a.k = recipe_eval.k;
  a.nim_games = recipe_eval.nim_games;
  common(c.evaluate, true);
  sampling(c.evaluate, a.eval_temperature, a.eval_top_p);
  c.evaluate->add_option("--problems", a.problems, "test problems per task")->capture_default_str();
  c.evaluate->add_option("--k", a.k, "samples per problem")->capture_default_str();
  c.evaluate->add_option("--nim-games", a.nim_games, "games against the perfect Nim player")->capture_default_str();

  c.recipe->add_option("--out", a.out, "output folder of the whole run (a rerun continues it)")->required();
  c.recipe->add_option("--recipe", a.recipe_file, "JSON overriding the default (toy) recipe")->check(CLI::ExistingFile);
  c.recipe->add_option("--report", a.report, "report path (default OUT/report.json; the HTML goes beside it)");
  c.recipe->add_option("--threads", a.threads, "OpenMP and OpenBLAS threads (default: the environment's)");
  return c;
}

// Runs the post-training subcommand that `commands` parsed, for the compiled model (post_run.cpp).
int run_post(const post_args& args, const post_commands& commands);

template <model_config C>
class post_tool {
 public:
  using model_t = transformer<C, precision::f32, backend::host>;
  using student_t = transformer<presets::dense_student(C), precision::f32, backend::host>;

  explicit post_tool(const post_args& a) : a_(a) { set_threads(a.threads); }

  int run(const post_commands& c) {
    if (*c.recipe) return recipe();
    tokenizer_ = std::make_unique<bpe_tokenizer>(a_.tokenizer.empty() ? post::reasoning_tokenizer(C.vocab)
                                                                       : bpe_tokenizer::load(a_.tokenizer));
    require(tokenizer_->vocab_size() <= C.vocab, "the tokenizer has " + std::to_string(tokenizer_->vocab_size()) +
                                                     " ids, more than the model's vocabulary of " + std::to_string(C.vocab));
    chat_ = std::make_unique<post::chat_template>(*tokenizer_);
    if (*c.sft) return sft();
    if (*c.reward_model) return reward_model();
    if (*c.dpo) return dpo();
    if (*c.grpo) return grpo();
    if (*c.rejection) return rejection();
    if (*c.distill) return distill();
    if (*c.evaluate) return evaluate();
    return 1;
  }

 private:
  template <class Model>
  std::unique_ptr<Model> load(const std::string& dir, std::int64_t batch) {
    auto m = std::make_unique<Model>(be_, batch, std::int64_t(Model::config.max_positions));
    load_weights(*m, dir);
    return m;
  }

  post::sft_options sft_options() const {
    return post::sft_of(a_.steps, a_.batch, a_.lr, a_.seed, a_.out);
  }

  post::token_rows chat_rows(const std::string& path) {
    std::vector<post::rendered_chat> chats;
    for (const auto& conv : post::read_sft_jsonl(path)) chats.push_back(chat_->render(conv));
    const post::packed_rows packed = post::pack_conversations(chats, a_.row_tokens, chat_->eos());
    if (packed.truncated > 0)
      fmt::print("note: {} conversations longer than --row-tokens {} were cut\n", packed.truncated, a_.row_tokens);
    return post::scored_rows(packed);
  }

  int sft() {
    auto model = load<model_t>(a_.init, a_.batch);
    post::sft_trainer<model_t> t(*model, chat_rows(a_.data), sft_options());
    t.run("SFT");
    return done();
  }

  int distill() {
    auto teacher = load<model_t>(a_.teacher, a_.batch);
    auto student = load<student_t>(a_.init, a_.batch);
    post::logit_objective<float> objective;
    const double alpha = a_.logit_weight, tau = a_.kl_temperature;
    if (alpha > 0)
      objective = [&](const post::token_rows& rows, std::int64_t positions, std::span<const float> logits, std::span<float> d) {
        teacher->forward(rows.ids, rows.rows, rows.seq, false);
        return post::distill_objective<float>(rows, positions, logits, teacher->logits(), alpha, tau, d);
      };
    post::sft_trainer<student_t> t(*student, chat_rows(a_.data), sft_options(), objective);
    t.run("distillation");
    return done();
  }

  post::reward_options reward_options() const {
    post::reward_options o;
    o.steps = a_.steps;
    o.batch = a_.batch;
    o.lr = post::warmup_cosine(a_.steps, a_.lr);
    o.seed = a_.seed;
    o.out = a_.out;
    return o;
  }

  int reward_model() {
    auto trunk = load<model_t>(a_.init, 2 * a_.batch);
    post::reward_model<model_t> rm(*trunk);
    const auto pairs = post::tokenize_pairs(*chat_, post::read_preference_jsonl(a_.data));
    post::reward_trainer<model_t> t(rm, pairs, reward_options(), chat_->eos());
    t.run("reward model");
    fmt::print("pair accuracy {:.1f}%\n", 100 * t.evaluate_pairs(pairs));
    return done();
  }

  int dpo() {
    auto policy = load<model_t>(a_.init, 2 * a_.batch);
    auto reference = load<model_t>(a_.init, 2 * a_.batch);
    post::dpo_options o;
    o.steps = a_.steps;
    o.batch = a_.batch;
    o.beta = a_.beta;
    o.lr = post::warmup_cosine(a_.steps, a_.lr);
    o.seed = a_.seed;
    o.out = a_.out;
    post::dpo_trainer<model_t> t(*policy, *reference, post::tokenize_pairs(*chat_, post::read_preference_jsonl(a_.data)), o,
                                 chat_->eos());
    t.run("DPO");
    return done();
  }

  post::sampling_options sampling() const {
    return {.temperature = a_.temperature, .top_p = a_.top_p, .top_k = a_.top_k, .max_new = a_.max_new, .stop = {chat_->eos()},
            .vocab_limit = tokenizer_->vocab_size()};
  }

  int grpo() {
    const auto tasks = parse_tasks(a_.tasks);
    auto policy = load<model_t>(a_.init, a_.prompts * a_.group);
    auto reference = load<model_t>(a_.init, a_.prompts * a_.group);
    std::unique_ptr<model_t> rm_trunk;
    std::unique_ptr<post::reward_model<model_t>> rm;
    if (!a_.reward_model.empty()) {
      rm_trunk = std::make_unique<model_t>(be_, 16, std::int64_t(C.max_positions));
      rm = post::load_reward_model(*rm_trunk, a_.reward_model);
    }
    const auto problem = [&](std::int64_t k) {
      return post::make_problem(tasks[std::size_t(k) % tasks.size()], post::split::train, std::uint64_t(k) / tasks.size(), a_.seed);
    };
    const post::reward_weights w{a_.w_accuracy, a_.w_format, a_.w_language};
    post::grpo_options o;
    o.steps = a_.steps;
    o.prompts = a_.prompts;
    o.group = a_.group;
    o.iterations = a_.iterations;
    o.scale_std = !a_.dr_grpo;
    o.loss = {.eps_low = a_.eps_low, .eps_high = a_.eps_high, .beta = a_.kl_beta,
              .aggregation = a_.aggregation == "token" ? post::grpo_aggregation::token
                             : a_.aggregation == "sequence" ? post::grpo_aggregation::sequence
                                                            : post::grpo_aggregation::constant};
    o.sampling = sampling();
    o.lr = {.peak = a_.lr, .final = a_.lr, .warmup = 0, .constant = 0, .decay = 0};
    o.seed = a_.seed;
    o.out = a_.out;
    const std::int32_t eos = chat_->eos();
    post::grpo_trainer<model_t> t(
        *policy, *reference, [&](std::int64_t k) { return chat_->prompt(problem(k).question); },
        [&](std::int64_t k, std::span<const std::int32_t> ids) {
          const post::task_problem p = problem(k);
          const post::verdict v = post::verify(p, post::response_text(*chat_, ids, !ids.empty() && ids.back() == eos));
          post::scored_completion sc{post::rule_reward(v, w), v.correct, v.formatted, v.language};
          if (rm) sc.reward += a_.w_reward_model * post::sigmoid(rm->score(chat_->prompt(p.question), ids));
          return sc;
        },
        o, eos);
    t.run("GRPO");
    return done();
  }

  int rejection() {
    const auto tasks = parse_tasks(a_.tasks);
    auto model = load<model_t>(a_.init, std::max<std::int64_t>(a_.samples, 1));
    const auto kept = post::rejection_sample(
        *model, *chat_,
        [&](std::int64_t k) {
          return post::make_problem(tasks[std::size_t(k) % tasks.size()], post::split::train, std::uint64_t(k) / tasks.size(), a_.seed);
        },
        a_.prompts, a_.samples, sampling(), a_.seed, nullptr);
    require(!kept.empty(), "rejection-sample: no sample was correct and well-formed; nothing written");
    std::vector<post::conversation> conversations;
    for (const post::qa& q : kept) conversations.push_back({{"user", q.question}, {"assistant", q.response}});
    post::write_sft_jsonl(a_.out, conversations);
    fmt::print("kept {} of {} samples ({} prompts) -> {}\n", kept.size(), a_.prompts * a_.samples, a_.prompts, a_.out);
    return 0;
  }

  int evaluate() {
    const auto tasks = parse_tasks(a_.tasks);
    auto model = load<model_t>(a_.init, a_.k);
    post::eval_options o{.problems = a_.problems, .k = a_.k,
                         .sampling = {.temperature = a_.eval_temperature, .top_p = a_.eval_top_p, .top_k = a_.top_k,
                                      .max_new = a_.max_new, .stop = {}},
                         .nim_games = a_.nim_games, .traces = 0, .seed = a_.seed};
    post::stage_report r = post::evaluate(*model, *chat_, tasks, o);
    r.name = std::filesystem::path(a_.init).filename().string();
    r.model = "model";
    fmt::print("{}", post::stage_table(std::span<const post::stage_report>(&r, 1)));
    return 0;
  }

  int recipe() {
    post::recipe<C, presets::dense_student(C)> r(post::load_recipe(a_.recipe_file), a_.out,
                                                 a_.report.empty() ? std::filesystem::path() : std::filesystem::path(a_.report));
    const auto stages = r.run();
    fmt::print("\n{}\ntotal {:.0f} s; report {} (+ .html)\n", post::stage_table(stages), r.total_seconds(), r.report_path().string());
    return 0;
  }

  int done() const {
    fmt::print("checkpoint {}\nmetrics {}\n", (std::filesystem::path(a_.out) / "checkpoint").string(),
               (std::filesystem::path(a_.out) / "metrics.jsonl").string());
    return 0;
  }

  const post_args& a_;
  backend::host be_;
  std::unique_ptr<bpe_tokenizer> tokenizer_;
  std::unique_ptr<post::chat_template> chat_;
};

}  // namespace dsx::tool
