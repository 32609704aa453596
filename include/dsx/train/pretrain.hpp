// Pre-training: the training loop of DeepSeek-V3 (report §4.2) over any model type and backend, built
// only on the model and optimizer APIs (model/transformer.hpp, optim/adamw.hpp), a packed_loader and the
// checkpoint and metrics files.
//
// One step:
//   reset the expert loads and the gradients; set λ (MTP weight: options.mtp_weight before step
//   options.mtp_switch_step, options.mtp_weight_late from it on) and α (balance weight);
//   take the step's batch n = options.batch_at(tokens trained so far) (the batch ramp, see
//   pretrain_options) and γ = options.gamma_at(tokens trained so far);
//   for each of the `micro_batches` loader batches of n / micro_batches sequences: forward with loss,
//   backward (gradients accumulate);
//   the step's gradient is the mean over the micro-batches: its norm is ‖Σ g‖ / micro, and AdamW is
//   given grad_scale = clip_scale / micro, which is the gradient of the loss scaled by 1/micro;
//   a non-finite loss (any micro-batch) or gradient norm skips the step: no update, no bias move, the
//   gradients are zeroed, the step is counted and logged; `max_bad_steps` in a row stop training with a
//   dsx::error naming the last good checkpoint;
//   otherwise: clip, AdamW at lr = options.lr.at(updates applied so far), and the routing biases move
//   by γ from the step's expert loads (configurations with a bias);
//   the tokens trained grow by n · seq; one line in OUT/metrics.jsonl.
// Checkpoints (io/checkpoint.hpp) go to OUT/checkpoint every `checkpoint_every` steps and at the end.
// The data a step reads does not depend on whether it is skipped, so a resumed run reads exactly what
// the uninterrupted one would. The batch ramp only changes how the loader's stream of sequences is cut
// into steps: the steps read the same sequences, in the same order, as without a ramp.
//
// Exact resume: the model's whole training state is its parameters (routing biases included), the
// AdamW moments and step, the loader position and the counters, all in the checkpoint; λ, the LR, the
// batch and γ are functions of the counters. resume() + run() therefore produces bit-identical losses,
// weights and moments to an uninterrupted run with the same options (tests/unit/pretrain.cpp). resume()
// refuses a checkpoint whose options differ in anything that changes the arithmetic.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/data/loader.hpp"
#include "dsx/io/checkpoint.hpp"
#include "dsx/optim/adamw.hpp"
#include "dsx/optim/schedule.hpp"
#include "dsx/train/metrics.hpp"

namespace dsx {

struct pretrain_options {
  std::int64_t steps = 0;               // train until this many steps are done
  std::int64_t batch = 8;               // sequences per step after the ramp: the most the model is planned for
  std::int64_t batch_ramp_start = 0;    // sequences per step at the start of the ramp (0: no ramp; V3: 3072)
  std::int64_t batch_ramp_tokens = 0;   // tokens over which the batch grows to `batch` (V3: 469B)
  std::int64_t micro_batches = 1;       // forwards per step (the step's batch / micro_batches sequences each)
  std::int64_t seq = 63;                // T: tokens predicted per sequence; the model reads T + 1
  lr_schedule lr{};                     // in optimizer updates
  adamw_options adamw{};                // β 0.9 / 0.95, weight decay 0.1 (V3)
  double clip = 1.0;                    // max global gradient norm (V3: 1.0; 0 turns clipping off)
  double mtp_weight = 0.3;              // λ before mtp_switch_step (V3: 0.3 for the first 10T tokens)
  double mtp_weight_late = 0.1;         // λ from mtp_switch_step on (V3: 0.1)
  std::int64_t mtp_switch_step = 0;     // 0: never switch
  double gamma = 0.001;                 // routing bias speed (V3: 0.001)
  std::int64_t gamma_stop_tokens = 0;   // γ is 0 from this many tokens trained on (0: never; V3: 14.3T)
  double alpha = 0.0001;                // sequence-wise balance loss weight (V3: 0.0001)
  std::uint64_t seed = 0;               // the run's seed (recorded; initialisation and shuffling use it)
  std::int64_t max_bad_steps = 5;       // consecutive non-finite steps that stop training
  std::int64_t checkpoint_every = 100;  // steps between checkpoints (0: only at the end)
  std::filesystem::path out;            // OUT: metrics.jsonl, metrics.svg, checkpoint/

  void check() const {
    require(steps >= 0, "pretrain: --steps must be >= 0, found " + std::to_string(steps));
    require(batch > 0 && micro_batches > 0 && batch % micro_batches == 0,
            "pretrain: --batch (" + std::to_string(batch) + ") must be a positive multiple of --micro-batches (" +
                std::to_string(micro_batches) + ")");
    require(seq > 0, "pretrain: --seq must be positive, found " + std::to_string(seq));
    require(batch_ramp_start == 0 || (batch_ramp_start >= micro_batches && batch_ramp_start <= batch),
            "pretrain: --batch-ramp-start (" + std::to_string(batch_ramp_start) +
                ") must be 0 (no ramp) or between --micro-batches (" + std::to_string(micro_batches) + ") and --batch (" +
                std::to_string(batch) + ")");
    require(batch_ramp_tokens >= 0 && (batch_ramp_tokens > 0) == (batch_ramp_start > 0),
            "pretrain: --batch-ramp-tokens (" + std::to_string(batch_ramp_tokens) +
                ") must be positive with a --batch-ramp-start and 0 without one (--batch-ramp-start is " +
                std::to_string(batch_ramp_start) + ")");
    lr.check();
    require(std::isfinite(clip) && clip >= 0, "pretrain: --clip must be finite and >= 0");
    require(std::isfinite(mtp_weight) && mtp_weight >= 0 && std::isfinite(mtp_weight_late) && mtp_weight_late >= 0,
            "pretrain: the MTP weights must be finite and >= 0");
    require(mtp_switch_step >= 0, "pretrain: --mtp-switch-step must be >= 0");
    require(std::isfinite(gamma) && gamma >= 0, "pretrain: --gamma must be finite and >= 0");
    require(gamma_stop_tokens >= 0,
            "pretrain: --gamma-stop-tokens must be >= 0 (0: never stop), found " + std::to_string(gamma_stop_tokens));
    require(std::isfinite(alpha) && alpha >= 0, "pretrain: --alpha must be finite and >= 0");
    require(max_bad_steps > 0, "pretrain: --max-bad-steps must be positive, found " + std::to_string(max_bad_steps));
    require(checkpoint_every >= 0, "pretrain: --checkpoint-every must be >= 0");
    require(!out.empty(), "pretrain: an output folder (--out) is needed");
  }

  // Sequences in a step that starts after `tokens_seen` tokens: the ramp's size (linear from
  // batch_ramp_start to batch over batch_ramp_tokens, optim/schedule.hpp) rounded down to a multiple of
  // micro_batches so that the micro-batches stay equal. The ramp never goes below batch_ramp_start,
  // which check() keeps >= micro_batches, so every micro-batch holds at least one sequence; without a
  // ramp it is `batch`.
  std::int64_t batch_at(std::int64_t tokens_seen) const {
    const batch_ramp ramp{.start = batch_ramp_start, .target = batch, .ramp_tokens = batch_ramp_tokens};
    return ramp.at(tokens_seen) / micro_batches * micro_batches;
  }

  // The routing bias speed of a step that starts after `tokens_seen` tokens.
  double gamma_at(std::int64_t tokens_seen) const {
    return gamma_stop_tokens > 0 && tokens_seen >= gamma_stop_tokens ? 0.0 : gamma;
  }

  // The arithmetic options added after the first checkpoints were written, each with the value that does
  // what the older trainer did. A checkpoint that lacks one resumes as if it held that value.
  static nlohmann::json arithmetic_added_later() {
    return {{"batch_ramp_start", 0}, {"batch_ramp_tokens", 0}, {"gamma_stop_tokens", 0}};
  }

  // The options that determine the arithmetic of a run (a resumed run must match them).
  nlohmann::json arithmetic() const {
    return {{"batch", batch},
            {"batch_ramp_start", batch_ramp_start},
            {"batch_ramp_tokens", batch_ramp_tokens},
            {"micro_batches", micro_batches},
            {"seq", seq},
            {"lr", {{"peak", lr.peak}, {"final", lr.final}, {"warmup", lr.warmup}, {"constant", lr.constant}, {"decay", lr.decay}}},
            {"adamw", {{"beta1", adamw.beta1}, {"beta2", adamw.beta2}, {"eps", adamw.eps},
                       {"weight_decay", adamw.weight_decay}, {"decay_vectors", adamw.decay_vectors}}},
            {"clip", clip},
            {"mtp_weight", mtp_weight},
            {"mtp_weight_late", mtp_weight_late},
            {"mtp_switch_step", mtp_switch_step},
            {"gamma", gamma},
            {"gamma_stop_tokens", gamma_stop_tokens},
            {"alpha", alpha},
            {"seed", seed}};
  }
};

// What one step measured. Losses are means over the micro-batches; mtp_loss is the mean of the MTP
// modules' cross-entropies (unweighted; 0 without MTP); grad_norm is before clipping. batch and gamma
// are the step's scheduled sequences and bias speed (a skipped step moves no bias).
struct step_result {
  std::int64_t step = 0;  // 1-based: steps done after this one
  bool skipped = false;
  std::int64_t batch = 0;
  double gamma = 0;
  double loss = 0, lm_loss = 0, mtp_loss = 0, balance_loss = 0;
  double lr = 0, mtp_weight = 0, grad_norm = 0, tokens_per_s = 0;
  std::optional<double> max_load_ratio;  // none without MoE layers
};

template <class Model>
class pretrainer {
 public:
  static constexpr model_config config = Model::config;

  // `loader` delivers batch / micro_batches sequences of seq tokens (rows of seq + 1), the largest
  // micro-batch; the model is planned for at least that batch and seq + 1 tokens. The caller
  // initialises the weights of a new run.
  pretrainer(Model& model, packed_loader& loader, pretrain_options options)
      : model_(model), loader_(loader), options_((options.check(), std::move(options))), optimizer_(model, options_.adamw) {
    const std::int64_t micro = options_.batch / options_.micro_batches;
    require(loader.batch() == micro && loader.sequence_length() == options_.seq,
            "pretrain: the loader delivers " + std::to_string(loader.batch()) + " × " + std::to_string(loader.sequence_length()) +
                " tokens, the options need " + std::to_string(micro) + " × " + std::to_string(options_.seq));
    require(model.max_batch() >= micro && model.max_seq() >= options_.seq + 1,
            "pretrain: the model is planned for " + std::to_string(model.max_batch()) + " × " + std::to_string(model.max_seq()) +
                " tokens, a micro-batch needs " + std::to_string(micro) + " × " + std::to_string(options_.seq + 1));
    if constexpr (config.mtp_depth > 0)
      require(options_.seq + 1 >= config.mtp_depth + 2, "pretrain: MTP depth " + std::to_string(config.mtp_depth) +
                                                            " needs --seq >= " + std::to_string(config.mtp_depth + 1));
    state_.seed = options_.seed;
    state_.loader = loader.state();
    state_.options = options_.arithmetic();
  }

  // Starts a new run in options.out (metrics.jsonl is emptied; an old checkpoint there is replaced at the
  // first save).
  void start() {
    std::filesystem::create_directories(options_.out);
    metrics_.emplace(options_.out / "metrics.jsonl", 0);
  }

  // Continues the run in options.out from its checkpoint: weights, moments, counters and data position.
  void resume() {
    const auto dir = find_checkpoint(options_.out);
    require(dir.has_value(), "pretrain: --resume: no checkpoint in '" + options_.out.string() +
                                 "' (expected " + checkpoint_path(options_.out).string() + ")");
    nlohmann::json saved = read_trainer_state(*dir).options;
    const nlohmann::json added_later = pretrain_options::arithmetic_added_later();
    for (const auto& [key, value] : added_later.items())
      if (!saved.contains(key)) saved[key] = value;
    const std::string differences = option_differences(saved, options_.arithmetic());
    require(differences.empty(), "pretrain: --resume from " + dir->string() +
                                     " with options that change the arithmetic:" + differences);
    state_ = load_checkpoint(*dir, model_, optimizer_);
    state_.options = options_.arithmetic();  // the next checkpoint names every option
    loader_.seek(state_.loader);
    metrics_.emplace(options_.out / "metrics.jsonl", state_.step);
  }

  // One training step (see the top of the file).
  step_result step() {
    require(metrics_.has_value(), "pretrain: call start() or resume() before step()");
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t micro = options_.micro_batches, len = options_.seq + 1;
    step_result r;
    r.batch = options_.batch_at(state_.tokens);
    r.gamma = options_.gamma_at(state_.tokens);
    const std::int64_t rows = r.batch / micro;
    r.mtp_weight = options_.mtp_switch_step > 0 && state_.step >= options_.mtp_switch_step ? options_.mtp_weight_late
                                                                                            : options_.mtp_weight;
    r.lr = options_.lr.at(state_.updates);
    model_.reset_expert_load();
    model_.zero_grad();
    model_.set_mtp_weight(r.mtp_weight);
    model_.set_balance_weight(options_.alpha);
    tokens_.resize(std::size_t(rows * len));
    bool diverged = false;  // values inside the model became non-finite (e.g. router scores)
    for (std::int64_t i = 0; i < micro; ++i) {
      loader_.next(tokens_, rows);  // read even when the step is already lost: a resumed run reads the same batches
      if (diverged) continue;
      try {
        r.loss += model_.forward(tokens_, rows, len);
        r.lm_loss += model_.last_lm_loss();
        if constexpr (config.mtp_depth > 0) {
          double sum = 0;
          for (double l : model_.last_mtp_losses()) sum += l;
          r.mtp_loss += sum / config.mtp_depth;
        }
        r.balance_loss += model_.last_balance_loss();
        model_.backward();
      } catch (const non_finite_error&) {
        diverged = true;
        r.loss = std::numeric_limits<double>::quiet_NaN();
      }
    }
    r.loss /= double(micro);
    r.lm_loss /= double(micro);
    r.mtp_loss /= double(micro);
    r.balance_loss /= double(micro);
    r.grad_norm = optimizer_.grad_norm() / double(micro);
    if (!diverged && !model_.moe_layers().empty()) r.max_load_ratio = model_.max_load_ratio();

    r.skipped = !std::isfinite(r.loss) || !std::isfinite(r.grad_norm);
    if (r.skipped) {
      model_.zero_grad();
      ++state_.skipped;
      ++state_.consecutive_bad;
    } else {
      optimizer_.step(r.lr, adamw<Model>::clip_scale(r.grad_norm, options_.clip) / double(micro));
      if constexpr (config.moe.bias) model_.update_routing_bias(r.gamma);
      ++state_.updates;
      state_.consecutive_bad = 0;
    }
    state_.tokens += r.batch * options_.seq;
    state_.step += 1;
    state_.loader = loader_.state();
    r.step = state_.step;
    r.tokens_per_s = double(r.batch * options_.seq) /
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    write_metrics(r);
    if (state_.consecutive_bad >= options_.max_bad_steps) {
      const auto last = find_checkpoint(options_.out);
      throw error("training stopped: " + std::to_string(state_.consecutive_bad) +
                  " consecutive steps with non-finite loss or gradient (last at step " + std::to_string(state_.step) +
                  "); last good checkpoint: " + (last ? last->string() : std::string("none written yet")));
    }
    return r;
  }

  // Steps until options.steps are done, with checkpoints every checkpoint_every steps and at the end,
  // then the plot OUT/metrics.svg. Returns the steps it ran.
  std::vector<step_result> run() {
    progress_bar bar(options_.steps);
    std::vector<step_result> done;
    while (state_.step < options_.steps) {
      const step_result r = step();
      done.push_back(r);
      bar.update(r.step, progress_text(r));
      if (options_.checkpoint_every > 0 && r.step % options_.checkpoint_every == 0 && r.step < options_.steps) save();
    }
    bar.finish();
    save();
    plot_training_metrics(options_.out / "metrics.jsonl", options_.out / "metrics.svg",
                          "pre-training (" + std::to_string(state_.step) + " steps)");
    return done;
  }

  // Writes OUT/checkpoint now.
  void save() { save_checkpoint(options_.out, model_, optimizer_, state_); }

  const trainer_state& state() const { return state_; }
  adamw<Model>& optimizer() { return optimizer_; }
  const pretrain_options& options() const { return options_; }

 private:
  void write_metrics(const step_result& r) {
    const auto number = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    nlohmann::json j = {{"step", r.step},
                        {"loss", number(r.loss)},
                        {"lm_loss", number(r.lm_loss)},
                        {"mtp_loss", number(r.mtp_loss)},
                        {"balance_loss", number(r.balance_loss)},
                        {"lr", r.lr},
                        {"grad_norm", number(r.grad_norm)},
                        {"tokens_per_s", number(r.tokens_per_s)},
                        {"max_load_ratio", r.max_load_ratio ? number(*r.max_load_ratio) : nlohmann::json(nullptr)},
                        {"mtp_weight", r.mtp_weight},
                        {"batch", r.batch},
                        {"gamma", r.gamma},
                        {"tokens", state_.tokens},
                        {"skipped", r.skipped},
                        {"skipped_total", state_.skipped},
                        {"consecutive_bad", state_.consecutive_bad}};
    metrics_->write(j);
  }

  static std::string progress_text(const step_result& r) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "loss %.4f  lr %.3g  %.0f tok/s%s", r.loss, r.lr, r.tokens_per_s,
                  r.skipped ? "  (skipped: non-finite)" : "");
    return buf;
  }

  Model& model_;
  packed_loader& loader_;
  pretrain_options options_;
  adamw<Model> optimizer_;
  trainer_state state_;
  std::optional<metrics_writer> metrics_;
  std::vector<std::int32_t> tokens_;
};

}  // namespace dsx
