// Supervised fine-tuning on rows of packed conversations (post/chat.hpp): the mean negative
// log-likelihood of the trained tokens (assistant turns and their EOS), or, for logit-level
// distillation, any objective of the logits given as a hook (post/distill.hpp).
//
// One step takes the next `batch` rows of a per-epoch shuffle (row order of epoch e: rows sorted by
// random_bits(seed, e, row)), so step s reads the same rows in a resumed run. The loss is normalised by
// the trained tokens of the whole step, so micro-batching (the model's planned batch) does not change it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "dsx/core/rng.hpp"
#include "dsx/optim/schedule.hpp"
#include "dsx/post/losses.hpp"
#include "dsx/post/policy.hpp"

namespace dsx::post {

struct sft_options {
  std::int64_t steps = 100;
  std::int64_t batch = 16;  // rows per step
  lr_schedule lr{.peak = 1e-3, .final = 1e-4, .warmup = 10, .constant = 0, .decay = 90};
  adamw_options adamw{.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0, .decay_vectors = false};
  double clip = 1.0;
  std::uint64_t seed = 0;
  std::int64_t checkpoint_every = 0;  // 0: at the end only
  std::filesystem::path out;

  void check() const {
    require(steps >= 0 && batch > 0, "sft: steps must be >= 0 and batch positive");
    lr.check();
    require(clip >= 0, "sft: clip must be >= 0");
  }
  nlohmann::json arithmetic() const {
    return {{"batch", batch},
            {"lr", {{"peak", lr.peak}, {"final", lr.final}, {"warmup", lr.warmup}, {"constant", lr.constant}, {"decay", lr.decay}}},
            {"clip", clip},
            {"seed", seed}};
  }
};

// The rows of step `step`: `batch` indices into `rows` rows, continuing over epochs of fresh shuffles.
inline std::vector<std::int64_t> epoch_rows(std::int64_t rows, std::int64_t batch, std::int64_t step, std::uint64_t seed) {
  std::vector<std::int64_t> out;
  std::vector<std::int64_t> order;
  std::int64_t epoch = -1;
  for (std::int64_t k = step * batch; k < (step + 1) * batch; ++k) {
    if (k / rows != epoch) {
      epoch = k / rows;
      order.resize(std::size_t(rows));
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
        return random_bits(seed, std::uint64_t(epoch), std::uint64_t(a)) < random_bits(seed, std::uint64_t(epoch), std::uint64_t(b));
      });
    }
    out.push_back(order[std::size_t(k % rows)]);
  }
  return out;
}

// An objective of the logits in place of the NLL: given a micro-batch's rows and logits and the scored
// positions of the whole step (the normaliser of a mean over the step), writes d(objective)/d(logits)
// and returns this micro-batch's part of the objective.
template <class T>
using logit_objective =
    std::function<double(const token_rows& rows, std::int64_t step_positions, std::span<const T> logits, std::span<T> dlogits)>;

template <class Model>
class sft_trainer {
 public:
  using T = typename Model::T;

  // `data`: packed rows (ids, trained flags per token as post/chat.hpp packs them).
  sft_trainer(Model& model, token_rows data, sft_options options, logit_objective<T> objective = {})
      : model_(model), data_(std::move(data)), options_((options.check(), std::move(options))),
        run_(model, options_.out, options_.adamw, options_.arithmetic(), options_.seed), objective_(std::move(objective)) {
    require(data_.rows > 0, "sft: no training rows");
    check_fits(model, data_);
  }

  // Trains until options.steps are done (resuming from OUT/checkpoint when there is one). Returns the
  // metrics of the steps it ran.
  std::vector<nlohmann::json> run(const std::string& title) {
    run_.open();
    progress_bar bar(options_.steps);
    std::vector<nlohmann::json> lines;
    while (run_.state().step < options_.steps) {
      lines.push_back(step());
      bar.update(run_.state().step, "loss " + std::to_string(lines.back()["loss"].get<double>()));
    }
    bar.finish();
    run_.save();
    plot(title);
    return lines;
  }

  void plot(const std::string& title) {
    plot_training_metrics(run_.metrics_path(), run_.out() / "metrics.svg", title);
  }

  stage_run<Model>& stage() { return run_; }

 private:
  nlohmann::json step() {
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t s = run_.state().step;
    const auto picked = epoch_rows(data_.rows, options_.batch, s, options_.seed);
    token_rows batch{std::int64_t(picked.size()), data_.seq, {}, {}};
    for (std::int64_t r : picked) {
      batch.ids.insert(batch.ids.end(), data_.ids.begin() + r * data_.seq, data_.ids.begin() + (r + 1) * data_.seq);
      batch.scored.insert(batch.scored.end(), data_.scored.begin() + r * data_.seq, data_.scored.begin() + (r + 1) * data_.seq);
    }
    std::int64_t counted = 0;
    for (std::uint8_t f : batch.scored) counted += f;
    double loss = 0;
    model_.zero_grad();
    std::vector<T> dlogits;
    for (std::int64_t first = 0; first < batch.rows; first += model_.max_batch()) {
      const std::int64_t n = std::min(model_.max_batch(), batch.rows - first);
      const token_rows micro = slice_rows(batch, first, n);
      model_.forward(micro.ids, n, micro.seq, false);
      const auto logits = model_.logits();
      dlogits.resize(logits.size());
      if (objective_) {
        loss += objective_(micro, counted, logits, dlogits);
      } else {
        const auto lp = token_logprobs<T>(logits, micro.ids, n, micro.seq, Model::config.vocab);
        std::vector<double> dlogp(lp.size());
        loss += masked_nll(lp, micro.scored, counted, dlogp);
        logprob_backward<T>(logits, micro.ids, n, micro.seq, Model::config.vocab, dlogp, dlogits);
      }
      model_.backward_logits(dlogits);
    }
    const double lr = options_.lr.at(run_.state().updates);
    const double norm = run_.update(lr, options_.clip);
    run_.state().tokens += counted;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::json line = {{"loss", loss}, {"lr", lr}, {"grad_norm", norm}, {"trained_tokens", counted},
                           {"tokens_per_s", double(batch.rows * batch.seq) / seconds}};
    run_.finish_step(line, options_.checkpoint_every);
    line["step"] = run_.state().step;
    return line;
  }

  Model& model_;
  token_rows data_;
  sft_options options_;
  stage_run<Model> run_;
  logit_objective<T> objective_;
};

}  // namespace dsx::post
