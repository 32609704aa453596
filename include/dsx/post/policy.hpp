// What every post-training stage shares: token rows (prompt + completion, right-padded), their
// per-token log-probabilities under a model, the backward of an objective written in them, weight
// copies between models, and the run bookkeeping of a stage (optimizer, checkpoint, resume, metrics).
//
// Rows are right-padded: attention is causal, so padding after a sequence never changes the positions
// before it, and padded positions are simply not scored. Every function runs in micro-batches of the
// model's planned batch, so a stage's batch can exceed it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/io/checkpoint.hpp"
#include "dsx/model/load.hpp"
#include "dsx/optim/adamw.hpp"
#include "dsx/post/logprob.hpp"
#include "dsx/train/metrics.hpp"

namespace dsx::post {

// A batch of token rows and which positions are scored: position t is scored when token t + 1 of its
// row belongs to the part an objective trains on (the completion, the assistant turns).
struct token_rows {
  std::int64_t rows = 0, seq = 0;
  std::vector<std::int32_t> ids;     // rows × seq
  std::vector<std::uint8_t> scored;  // rows × seq
};

// prompt i followed by completion i, right-padded with `pad` to the longest; completion tokens are scored.
inline token_rows completion_rows(std::span<const std::vector<std::int32_t>> prompts,
                                  std::span<const std::vector<std::int32_t>> completions, std::int32_t pad) {
  require(prompts.size() == completions.size() && !prompts.empty(), "completion_rows: needs one completion per prompt");
  token_rows r;
  r.rows = std::int64_t(prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    require(!prompts[i].empty(), "completion_rows: prompt " + std::to_string(i) + " is empty");
    r.seq = std::max<std::int64_t>(r.seq, std::int64_t(prompts[i].size() + completions[i].size()));
  }
  r.ids.assign(std::size_t(r.rows * r.seq), pad);
  r.scored.assign(std::size_t(r.rows * r.seq), 0);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    std::int32_t* row = r.ids.data() + std::int64_t(i) * r.seq;
    std::copy(prompts[i].begin(), prompts[i].end(), row);
    std::copy(completions[i].begin(), completions[i].end(), row + prompts[i].size());
    for (std::size_t t = 0; t < completions[i].size(); ++t)
      r.scored[std::size_t(std::int64_t(i) * r.seq) + prompts[i].size() + t - 1] = 1;
  }
  return r;
}

// Rows [first, first + count) of `r`.
inline token_rows slice_rows(const token_rows& r, std::int64_t first, std::int64_t count) {
  token_rows s{count, r.seq, {}, {}};
  s.ids.assign(r.ids.begin() + first * r.seq, r.ids.begin() + (first + count) * r.seq);
  s.scored.assign(r.scored.begin() + first * r.seq, r.scored.begin() + (first + count) * r.seq);
  return s;
}

template <class Model>
void check_fits(const Model& model, const token_rows& r) {
  require(r.seq <= model.max_seq(), "post-training: rows of " + std::to_string(r.seq) +
                                        " tokens exceed the model's planned length " + std::to_string(model.max_seq()));
}

// logp of the next token at every position of every row, (rows, seq).
template <class Model>
std::vector<double> rows_logprobs(Model& model, const token_rows& r) {
  check_fits(model, r);
  std::vector<double> out;
  out.reserve(r.ids.size());
  for (std::int64_t first = 0; first < r.rows; first += model.max_batch()) {
    const std::int64_t n = std::min(model.max_batch(), r.rows - first);
    const std::span<const std::int32_t> ids(r.ids.data() + first * r.seq, std::size_t(n * r.seq));
    model.forward(ids, n, r.seq, false);
    const auto logits = model.logits();
    const auto lp = token_logprobs<typename Model::T>(logits, ids, n, r.seq, Model::config.vocab);
    out.insert(out.end(), lp.begin(), lp.end());
  }
  return out;
}

// Σ over scored positions of logp, per row: a completion's log-probability.
inline std::vector<double> row_sums(std::span<const double> logp, const token_rows& r) {
  std::vector<double> out(std::size_t(r.rows), 0.0);
  for (std::int64_t i = 0; i < r.rows * r.seq; ++i)
    if (r.scored[std::size_t(i)]) out[std::size_t(i / r.seq)] += logp[std::size_t(i)];
  return out;
}

// Accumulates the gradient of an objective of the log-probabilities: for each micro-batch of rows
// [first, first + n), `objective(first, n, logp)` receives their logp (n × seq) from the current
// weights and returns d(objective)/d logp of the same shape. Returns the logp of every row.
template <class Model, class Objective>
std::vector<double> rows_backward(Model& model, const token_rows& r, Objective&& objective) {
  using T = typename Model::T;
  check_fits(model, r);
  std::vector<double> all;
  all.reserve(r.ids.size());
  std::vector<T> dlogits;
  for (std::int64_t first = 0; first < r.rows; first += model.max_batch()) {
    const std::int64_t n = std::min(model.max_batch(), r.rows - first);
    const std::span<const std::int32_t> ids(r.ids.data() + first * r.seq, std::size_t(n * r.seq));
    model.forward(ids, n, r.seq, false);
    const auto logits = model.logits();
    const auto lp = token_logprobs<T>(logits, ids, n, r.seq, Model::config.vocab);
    const std::vector<double> dlogp = objective(first, n, std::span<const double>(lp));
    require(dlogp.size() == lp.size(), "rows_backward: the objective must give one gradient per position");
    dlogits.resize(logits.size());
    logprob_backward<T>(logits, ids, n, r.seq, Model::config.vocab, dlogp, dlogits);
    model.backward_logits(dlogits);
    all.insert(all.end(), lp.begin(), lp.end());
  }
  return all;
}

// dst's parameters = src's (models of the same configuration).
template <class Dst, class Src>
void copy_weights(Dst& dst, Src& src) {
  static_assert(Dst::config == Src::config, "copy_weights: the models have different configurations");
  for (const auto& e : src.params().entries()) {
    if (e.spec.shared_copy()) continue;
    const auto values = src.get_param(e);
    std::vector<typename Dst::T> converted(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) converted[i] = convert<typename Dst::T>(values[i]);
    dst.set_param(e, converted);
  }
}

// Writes `model` as the HF model folder `folder` (a frozen reference, say), through folder.tmp and a
// rename, so that a crash leaves the old folder or the new one.
template <class Model>
void replace_weights(const std::filesystem::path& folder, Model& model) {
  namespace fs = std::filesystem;
  fs::path tmp = folder;
  tmp += ".tmp";
  fs::remove_all(tmp);
  write_weights(tmp, model);
  fs::remove_all(folder);
  fs::rename(tmp, folder);
}

// The bookkeeping of one stage run in folder OUT: AdamW, OUT/checkpoint (io/checkpoint.hpp),
// OUT/metrics.jsonl, resume with a check that the options that change the arithmetic are the same.
template <class Model>
class stage_run {
 public:
  stage_run(Model& model, std::filesystem::path out, adamw_options adamw, nlohmann::json arithmetic, std::uint64_t seed)
      : model_(model), out_(std::move(out)), optimizer_(model, adamw) {
    require(!out_.empty(), "post-training: an output folder is needed");
    state_.seed = seed;
    state_.options = std::move(arithmetic);
    state_.options["adamw"] = {{"beta1", adamw.beta1}, {"beta2", adamw.beta2}, {"eps", adamw.eps},
                               {"weight_decay", adamw.weight_decay}, {"decay_vectors", adamw.decay_vectors}};
  }

  // Continues from OUT/checkpoint when there is one (returns true), else starts afresh (metrics emptied).
  bool open() {
    std::filesystem::create_directories(out_);
    const auto dir = find_checkpoint(out_);
    if (!dir) {
      metrics_.emplace(out_ / "metrics.jsonl", 0);
      return false;
    }
    const std::string differences = option_differences(read_trainer_state(*dir).options, state_.options);
    require(differences.empty(), "post-training: cannot resume from " + dir->string() +
                                     " with options that change the arithmetic:" + differences);
    state_ = load_checkpoint(*dir, model_, optimizer_);
    metrics_.emplace(out_ / "metrics.jsonl", state_.step);
    return true;
  }

  // The update of a step whose gradients are accumulated: clipped to `clip` (0: none), AdamW at `lr`.
  // A non-finite gradient skips it (gradients zeroed, counted); returns the norm before clipping.
  double update(double lr, double clip) {
    const double norm = optimizer_.grad_norm();
    if (!std::isfinite(norm)) {
      ++state_.skipped;
      ++state_.consecutive_bad;
      require(state_.consecutive_bad < 5, "post-training: 5 consecutive steps with a non-finite gradient in " +
                                              out_.string() + " (last good checkpoint: " +
                                              (find_checkpoint(out_) ? find_checkpoint(out_)->string() : std::string("none")) + ")");
    } else {
      optimizer_.step(lr, adamw<Model>::clip_scale(norm, clip));
      ++state_.updates;
      state_.consecutive_bad = 0;
    }
    model_.zero_grad();
    return norm;
  }

  // Ends a step: counts it, writes its metrics line (`step` added) and a checkpoint every `every` steps.
  void finish_step(nlohmann::json line, std::int64_t every) {
    state_.step += 1;
    line["step"] = state_.step;
    for (auto& [key, value] : line.items())
      if (value.is_number_float() && !std::isfinite(value.template get<double>())) value = nullptr;
    metrics_->write(line);
    if (every > 0 && state_.step % every == 0) save();
  }

  void save() { save_checkpoint(out_, model_, optimizer_, state_); }

  trainer_state& state() { return state_; }
  const std::filesystem::path& out() const { return out_; }
  std::filesystem::path metrics_path() const { return out_ / "metrics.jsonl"; }

 private:
  Model& model_;
  std::filesystem::path out_;
  adamw<Model> optimizer_;
  trainer_state state_;
  std::optional<metrics_writer> metrics_;
};

}  // namespace dsx::post

namespace dsx::post {

// Opens `run` (stage_run::open) and sets the frozen `reference` of a policy stage: on resume, from the
// folder `dir` the run started with; on a fresh start, the policy's weights, saved to `dir`.
template <class Model>
void open_with_reference(stage_run<Model>& run, Model& policy, Model& reference, const std::filesystem::path& dir) {
  if (run.open()) {
    load_weights(reference, dir);
  } else {
    copy_weights(reference, policy);
    replace_weights(dir, reference);
  }
}

}  // namespace dsx::post
