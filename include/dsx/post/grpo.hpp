// Group Relative Policy Optimization (DeepSeekMath §4.1; DeepSeek-R1 §2.2.1) with rule or model rewards.
//
// One step:
//   1. rollout: for each of `prompts` prompts (prompt k = step · prompts + i of the prompt source), G
//      completions sampled from the current policy (post/sampling.hpp; stream k, so a resumed run draws
//      the same samples);
//   2. rewards per completion from the reward function, advantages per group (losses.hpp:
//      (r − mean)/std, or r − mean for Dr. GRPO); groups with equal rewards carry no signal and are
//      counted (`zero_variance_groups`); a step where every group is such is not an update;
//   3. logp_old (the policy before the update) and, with β > 0, logp_ref of the frozen reference;
//   4. `iterations` (μ) optimisation steps on the rollout batch against logp_old: the clipped surrogate
//      with ε_low / ε_high and the k3 KL to the reference, aggregated per token, per sequence or over
//      G·L_max (grpo_loss); gradient clipping, AdamW.
// The reference is the policy the stage starts from; with `reference_reset` > 0 it becomes the current
// policy every that many steps (R1-Zero: every 400 steps), after a checkpoint of that step. It is kept
// in OUT/reference (an HF model folder) so that a resumed run compares against the same weights.
// Metrics per step: reward, accuracy, format_rate, language, kl, clip_fraction, response_length,
// zero_variance_groups, loss, lr, grad_norm, seconds.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "dsx/model/load.hpp"
#include "dsx/optim/schedule.hpp"
#include "dsx/post/losses.hpp"
#include "dsx/post/policy.hpp"
#include "dsx/post/sampling.hpp"

namespace dsx::post {

struct grpo_options {
  std::int64_t steps = 50;
  std::int64_t prompts = 8;          // prompts per step
  std::int64_t group = 8;            // G: completions per prompt
  std::int64_t iterations = 1;       // μ: optimisation steps per rollout batch
  bool scale_std = true;             // false: Dr. GRPO advantages (no division by the std)
  grpo_loss_options loss{};          // ε_low, ε_high, β, aggregation
  sampling_options sampling{};       // rollout temperature (R1: 1), top-p, top-k, max_new, stop tokens
  lr_schedule lr{.peak = 1e-4, .final = 1e-4, .warmup = 0, .constant = 0, .decay = 0};
  adamw_options adamw{.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0, .decay_vectors = false};
  double clip = 1.0;
  std::int64_t reference_reset = 0;  // steps between reference resets (0: never)
  std::uint64_t seed = 0;
  std::int64_t checkpoint_every = 0;
  std::filesystem::path out;

  void check() const {
    require(steps >= 0 && prompts > 0 && iterations > 0, "grpo: steps >= 0, prompts > 0 and iterations > 0 needed");
    require(group >= 2, "grpo: the group size G must be at least 2, found " + std::to_string(group));
    require(reference_reset >= 0, "grpo: reference_reset must be >= 0");
    sampling.check();
    lr.check();
  }
  nlohmann::json arithmetic() const {
    const char* agg = loss.aggregation == grpo_aggregation::token ? "token" : loss.aggregation == grpo_aggregation::sequence ? "sequence" : "constant";
    return {{"prompts", prompts}, {"group", group}, {"iterations", iterations}, {"scale_std", scale_std},
            {"eps_low", loss.eps_low}, {"eps_high", loss.eps_high}, {"beta", loss.beta}, {"aggregation", agg},
            {"temperature", sampling.temperature}, {"top_p", sampling.top_p}, {"top_k", sampling.top_k},
            {"max_new", sampling.max_new}, {"stop", sampling.stop},
            {"lr", {{"peak", lr.peak}, {"final", lr.final}, {"warmup", lr.warmup}, {"constant", lr.constant}, {"decay", lr.decay}}},
            {"clip", clip}, {"reference_reset", reference_reset}, {"seed", seed}};
  }
};

// The score of one completion: the reward the advantages are computed from, and what it is made of
// (for the metrics).
struct scored_completion {
  double reward = 0;
  bool correct = false, formatted = false;
  double language = 0;
};

// Prompt k of the run (token ids) and the scorer of a completion of prompt k.
using prompt_source = std::function<std::vector<std::int32_t>(std::int64_t k)>;
using reward_function = std::function<scored_completion(std::int64_t k, std::span<const std::int32_t> completion)>;

template <class Model>
class grpo_trainer {
 public:
  // `policy` holds the starting weights; `reference` is a second model of the same type (its weights are
  // set here). `pad` pads rows (its positions are never scored).
  grpo_trainer(Model& policy, Model& reference, prompt_source prompts, reward_function reward, grpo_options options,
               std::int32_t pad)
      : policy_(policy), reference_(reference), prompts_(std::move(prompts)), reward_(std::move(reward)),
        options_((options.check(), std::move(options))), pad_(pad),
        run_(policy, options_.out, options_.adamw, options_.arithmetic(), options_.seed) {}

  std::vector<nlohmann::json> run(const std::string& title) {
    open_with_reference(run_, policy_, reference_, options_.out / "reference");
    progress_bar bar(options_.steps);
    std::vector<nlohmann::json> lines;
    while (run_.state().step < options_.steps) {
      lines.push_back(step());
      const auto& l = lines.back();
      bar.update(run_.state().step, "reward " + fmt(l["reward"]) + "  acc " + fmt(l["accuracy"]) + "  format " + fmt(l["format_rate"]));
    }
    bar.finish();
    run_.save();
    plot(title);
    return lines;
  }

 private:
  static std::string fmt(const nlohmann::json& v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.3f", v.is_number() ? v.get<double>() : 0.0);
    return b;
  }

  void plot(const std::string& title) {
    const metric_panel panels[] = {{"reward and rates", false, {"reward", "accuracy", "format_rate"}},
                                   {"KL to the reference", false, {"kl"}},
                                   {"response length (tokens)", false, {"response_length"}},
                                   {"clip fraction", false, {"clip_fraction"}}};
    plot_metrics(run_.metrics_path(), run_.out() / "metrics.svg", title, panels);
  }

  nlohmann::json step() {
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t s = run_.state().step, P = options_.prompts, G = options_.group;
    if (options_.reference_reset > 0 && s > 0 && s % options_.reference_reset == 0) {
      run_.save();  // a resume from an older checkpoint would meet the reference of a later step
      copy_weights(reference_, policy_);
      save_reference();
    }
    // 1–2. rollout and rewards
    std::vector<std::vector<std::int32_t>> prompts, completions;
    std::vector<double> rewards;
    double accuracy = 0, format = 0, language = 0, length = 0;
    for (std::int64_t i = 0; i < P; ++i) {
      const std::int64_t k = s * P + i;
      const std::vector<std::int32_t> prompt = prompts_(k);
      const auto samples = sample(policy_, prompt, G, options_.sampling, options_.seed, std::uint64_t(k));
      for (const completion& c : samples) {
        const scored_completion sc = reward_(k, c.ids);
        rewards.push_back(sc.reward);
        accuracy += sc.correct;
        format += sc.formatted;
        language += sc.language;
        length += double(c.ids.size());
        prompts.push_back(prompt);
        completions.push_back(c.ids);
      }
    }
    const double n = double(P * G);
    const advantages adv = group_advantages(rewards, G, options_.scale_std);
    const token_rows rows = completion_rows(prompts, completions, pad_);
    double mean_reward = 0;
    for (double r : rewards) mean_reward += r / n;

    nlohmann::json line = {{"reward", mean_reward}, {"accuracy", accuracy / n}, {"format_rate", format / n},
                           {"language", language / n}, {"response_length", length / n},
                           {"zero_variance_groups", adv.zero_variance_groups}};
    const double lr = options_.lr.at(run_.state().updates);
    line["lr"] = lr;
    if (adv.zero_variance_groups == P) {  // no signal: no update
      line.update({{"loss", 0.0}, {"kl", nullptr}, {"clip_fraction", 0.0}, {"grad_norm", 0.0}, {"updated", false}});
    } else {
      // 3. old and reference log-probabilities
      const std::vector<double> old_logp = rows_logprobs(policy_, rows);
      const std::vector<double> ref_logp = options_.loss.beta > 0 ? rows_logprobs(reference_, rows) : std::vector<double>{};
      std::int64_t total = 0;
      for (std::uint8_t f : rows.scored) total += f;
      grpo_loss_options lo = options_.loss;
      if (lo.aggregation == grpo_aggregation::constant && lo.max_length == 0) lo.max_length = options_.sampling.max_new;
      lo.batch_tokens = total;
      lo.batch_rows = rows.rows;
      // 4. μ optimisation steps
      double loss = 0, kl = 0, clipped = 0, norm = 0;
      for (std::int64_t it = 0; it < options_.iterations; ++it) {
        loss = kl = clipped = 0;
        rows_backward(policy_, rows, [&](std::int64_t first, std::int64_t count, std::span<const double> logp) {
          const std::size_t a = std::size_t(first * rows.seq), b = std::size_t((first + count) * rows.seq);
          const auto sl = [&](const std::vector<double>& v) { return std::span<const double>(v).subspan(a, b - a); };
          const grpo_loss_result r = grpo_loss(logp, sl(old_logp), lo.beta > 0 ? sl(ref_logp) : std::span<const double>{},
                                               std::span<const std::uint8_t>(rows.scored).subspan(a, b - a),
                                               std::span<const double>(adv.values).subspan(std::size_t(first), std::size_t(count)),
                                               rows.seq, lo);
          loss += r.loss;
          kl += r.kl;
          clipped += r.clip_fraction;
          return r.dlogp;
        });
        norm = run_.update(lr, options_.clip);
      }
      line.update({{"loss", loss}, {"kl", lo.beta > 0 ? nlohmann::json(kl) : nlohmann::json(nullptr)},
                   {"clip_fraction", clipped}, {"grad_norm", norm}, {"updated", true}});
    }
    run_.state().tokens += std::int64_t(length);
    line["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    run_.finish_step(line, options_.checkpoint_every);
    line["step"] = run_.state().step;
    return line;
  }

  void save_reference() { replace_weights(options_.out / "reference", reference_); }

  Model& policy_;
  Model& reference_;
  prompt_source prompts_;
  reward_function reward_;
  grpo_options options_;
  std::int32_t pad_;
  stage_run<Model> run_;
};

}  // namespace dsx::post
