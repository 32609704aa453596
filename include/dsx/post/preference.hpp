// Preference alignment on (prompt, chosen, rejected) pairs: a Bradley–Terry reward model (a scalar head on
// the trunk's last hidden state, as HF's AutoModelForSequenceClassification) and DPO against a frozen
// reference (Rafailov et al. 2023). Losses: losses.hpp (bradley_terry, dpo).
//
// A pair becomes two rows of a token_rows batch (policy.hpp): prompt + chosen and prompt + rejected, the
// completion tokens scored. With a chat template the prompt is chat.prompt(question) and a completion is
// the encoded response followed by EOS, so that prompt + completion is chat.render(question, response).
// A step's batch is laid out as its `n` chosen rows, then its `n` rejected rows in the same pair order.
//
// Both trainers take each step's pairs from a per-epoch shuffle (sft.hpp's epoch_rows, over pairs), so a
// resumed run reads the same pairs, and run two passes over the batch: scores or log-probabilities of
// every row first (the loss couples a pair's two rows, which need not share a micro-batch of the model's
// planned batch), then the backward micro-batch by micro-batch. The second pass recomputes the forward.
//
// Reward-model files in OUT, beside the trunk's OUT/checkpoint (io/checkpoint.hpp):
//   score.safetensors            the head: "score.weight" (1, hidden) and "score.bias" (1) in the trunk's
//                                storage type; metadata "step": the trainer step it belongs to
//   score_optimizer.safetensors  the head's AdamW: "m", "v" (hidden + 1, weight then bias, in the moment
//                                type), "step" (I64 scalar: updates applied); metadata "step" likewise
// A save renames each file to score[_optimizer].prev.safetensors before writing the new one, and the head
// files are written before the trunk's checkpoint: at any crash point a file of the step of the checkpoint
// that find_checkpoint() returns exists, and a resume loads that one.
// DPO keeps the reference in OUT/reference (an HF model folder), written when a run starts afresh.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"
#include "dsx/core/rng.hpp"
#include "dsx/io/safetensors.hpp"
#include "dsx/model/load.hpp"
#include "dsx/optim/schedule.hpp"
#include "dsx/post/chat.hpp"
#include "dsx/post/losses.hpp"
#include "dsx/post/policy.hpp"
#include "dsx/post/sft.hpp"

namespace dsx::post {

// One preference pair as token ids: the prompt, then each completion as it follows the prompt.
struct token_pair {
  std::vector<std::int32_t> prompt, chosen, rejected;
  bool operator==(const token_pair&) const = default;
};

// The pairs as chat: prompt = chat.prompt(pair.prompt), completion = encode(response) + EOS. Text that does
// not encode is a dsx::error naming the pair and the field.
inline std::vector<token_pair> tokenize_pairs(const chat_template& chat, std::span<const preference_pair> pairs) {
  std::vector<token_pair> out;
  out.reserve(pairs.size());
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    const auto field = [&](const char* name, auto&& encode) -> std::vector<std::int32_t> {
      try {
        return encode();
      } catch (const error& e) {
        throw error("tokenize_pairs: pair " + std::to_string(i) + ": field '" + name + "': " + e.what());
      }
    };
    const auto completion = [&](const std::string& text) {
      std::vector<std::int32_t> ids = chat.tokenizer().encode(text);
      ids.push_back(chat.eos());
      return ids;
    };
    const preference_pair& p = pairs[i];
    out.push_back({field("prompt", [&] { return chat.prompt(p.prompt); }),
                   field("chosen", [&] { return completion(p.chosen); }),
                   field("rejected", [&] { return completion(p.rejected); })});
  }
  return out;
}

// Every pair has a prompt and two non-empty completions, and both rows fit the model's planned length.
template <class Model>
void check_pairs(const Model& model, std::span<const token_pair> pairs, const std::string& who) {
  require(!pairs.empty(), who + ": no preference pairs");
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    const token_pair& p = pairs[i];
    const std::string what = who + ": pair " + std::to_string(i);
    require(!p.prompt.empty() && !p.chosen.empty() && !p.rejected.empty(),
            what + " has an empty prompt, chosen or rejected completion");
    const std::size_t longest = p.prompt.size() + std::max(p.chosen.size(), p.rejected.size());
    require(std::int64_t(longest) <= model.max_seq(), what + " needs rows of " + std::to_string(longest) +
                                                          " tokens, more than the model's planned length " +
                                                          std::to_string(model.max_seq()));
  }
}

// The rows of pairs `picked`: their chosen rows, then their rejected rows, right-padded with `pad`.
inline token_rows pair_rows(std::span<const token_pair> pairs, std::span<const std::int64_t> picked, std::int32_t pad) {
  std::vector<std::vector<std::int32_t>> prompts, completions;
  for (const bool chosen : {true, false})
    for (const std::int64_t k : picked) {
      const token_pair& p = pairs[std::size_t(k)];
      prompts.push_back(p.prompt);
      completions.push_back(chosen ? p.chosen : p.rejected);
    }
  return completion_rows(prompts, completions, pad);
}

namespace preference_detail {

// `file` with ".prev" before its extension: the copy a save keeps of the previous state.
inline std::filesystem::path previous(const std::filesystem::path& file) {
  return file.parent_path() / (file.stem().string() + ".prev" + file.extension().string());
}

// Writes `w` to `file` (atomically) with metadata "step", after renaming an existing `file` to previous(file).
inline void rotate_write(safetensors::writer w, const std::filesystem::path& file, std::int64_t step) {
  w.set_metadata("step", std::to_string(step));
  if (std::filesystem::exists(file)) std::filesystem::rename(file, previous(file));
  w.write(file);
}

// `file` or previous(file), whichever holds metadata "step" == `step`.
inline std::filesystem::path find_step(const std::filesystem::path& file, std::int64_t step) {
  std::string found;
  for (const auto& candidate : {file, previous(file)}) {
    if (!std::filesystem::is_regular_file(candidate)) continue;
    const safetensors::reader r(candidate);
    const auto it = r.metadata().find("step");
    const std::string has = it == r.metadata().end() ? std::string("none") : it->second;
    if (has == std::to_string(step)) return candidate;
    found += "\n  " + candidate.string() + ": step " + has;
  }
  throw error("reward model: no " + file.filename().string() + " of step " + std::to_string(step) +
              " (the step of the trunk's checkpoint) in " + file.parent_path().string() +
              (found.empty() ? std::string(" (none there)") : ", found:" + found));
}

}  // namespace preference_detail

// A reward model: the transformer `Model` as trunk and a scalar head on its final hidden state (after the
// final norm) at the last completion token of a row: score = w · h + b. The head lives in host memory in
// the trunk's storage type; its gradient is accumulated in f64.
template <class Model>
class reward_model {
 public:
  using T = typename Model::T;
  static constexpr std::int64_t hidden = Model::config.hidden;

  // The head starts at w ~ N(0, init_std²) (counter-based draws of `seed`) and b = 0.
  explicit reward_model(Model& trunk, std::uint64_t seed = 0, double init_std = 0.02)
      : trunk_(trunk), head_(std::size_t(hidden + 1), T(0)), grad_(std::size_t(hidden + 1), 0.0) {
    require(std::isfinite(init_std) && init_std >= 0, "reward_model: init_std must be finite and >= 0");
    for (std::int64_t j = 0; j < hidden; ++j) head_[std::size_t(j)] = convert<T>(init_std * random_normal(seed, 0, std::uint64_t(j)));
  }

  Model& trunk() { return trunk_; }
  // w (hidden values) then b.
  std::span<T> head() { return head_; }
  std::span<const double> head_grad() const { return grad_; }

  // The position of each row's last completion token: its last scored position + 1.
  static std::vector<std::int64_t> score_positions(const token_rows& r) {
    std::vector<std::int64_t> out(std::size_t(r.rows), -1);
    for (std::int64_t i = 0; i < r.rows * r.seq; ++i)
      if (r.scored[std::size_t(i)]) out[std::size_t(i / r.seq)] = i % r.seq + 1;
    for (std::int64_t row = 0; row < r.rows; ++row)
      require(out[std::size_t(row)] >= 0, "reward_model: row " + std::to_string(row) + " has no completion token to score");
    return out;
  }

  // The score of every row.
  std::vector<double> scores(const token_rows& r) {
    std::vector<double> out;
    out.reserve(std::size_t(r.rows));
    for_each_micro(r, [&](std::int64_t, std::int64_t n, std::span<const T> h, std::span<const std::int64_t> at) {
      for (std::int64_t i = 0; i < n; ++i) out.push_back(score_at(h, (i * r.seq + at[std::size_t(i)]) * hidden));
    });
    return out;
  }

  // The score of `completion` after `prompt` (a GRPO reward source).
  double score(std::span<const std::int32_t> prompt, std::span<const std::int32_t> completion) {
    const std::vector<std::vector<std::int32_t>> p{{prompt.begin(), prompt.end()}}, c{{completion.begin(), completion.end()}};
    return scores(completion_rows(p, c, 0))[0];
  }

  // Accumulates d(objective)/d(head) and d(objective)/d(trunk parameters) given d(objective)/d(score) of
  // every row. Returns the scores (of the weights the gradient is taken at).
  std::vector<double> backward(const token_rows& r, std::span<const double> dscore) {
    require(std::int64_t(dscore.size()) == r.rows, "reward_model::backward: needs one score gradient per row, got " +
                                                       std::to_string(dscore.size()) + " for " + std::to_string(r.rows) + " rows");
    std::vector<double> out;
    out.reserve(std::size_t(r.rows));
    std::vector<T> dh;
    for_each_micro(r, [&](std::int64_t first, std::int64_t n, std::span<const T> h, std::span<const std::int64_t> at) {
      dh.assign(h.size(), T(0));
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t o = (i * r.seq + at[std::size_t(i)]) * hidden;
        const double ds = dscore[std::size_t(first + i)];
        out.push_back(score_at(h, o));
        for (std::int64_t j = 0; j < hidden; ++j) {
          grad_[std::size_t(j)] += ds * convert<double>(h[std::size_t(o + j)]);
          dh[std::size_t(o + j)] = convert<T>(ds * convert<double>(head_[std::size_t(j)]));
        }
        grad_[std::size_t(hidden)] += ds;
      }
      trunk_.backward_hidden(dh);
    });
    return out;
  }

  void zero_grad() {
    trunk_.zero_grad();
    zero_head_grad();
  }
  void zero_head_grad() { std::fill(grad_.begin(), grad_.end(), 0.0); }

  // The head under HF's sequence-classification names, "format": "pt" in the metadata.
  safetensors::writer head_tensors() const {
    safetensors::writer w;
    w.set_metadata("format", "pt");
    w.add<T>("score.weight", std::span<const T>(head_).first(std::size_t(hidden)), {1, hidden});
    w.add<T>("score.bias", std::span<const T>(head_).last(1), {1});
    return w;
  }
  void save(const std::filesystem::path& file) const { head_tensors().write(file); }

  // Reads score.weight (1, hidden) and score.bias (1), converted to T; checks both before changing the head.
  void load(const std::filesystem::path& file) {
    const safetensors::reader r(file);
    const auto tensor = [&](const char* name, std::vector<std::int64_t> shape) -> const safetensors::tensor_info& {
      const safetensors::tensor_info& t = r.at(name);
      require(t.shape == shape, file.string() + ": tensor '" + name + "': expected shape " + safetensors::shape_string(shape) +
                                    ", found " + safetensors::shape_string(t.shape));
      return t;
    };
    const auto& w = tensor("score.weight", {1, hidden});
    const auto& b = tensor("score.bias", {1});
    r.read_into(w, head_.data());
    r.read_into(b, head_.data() + hidden);
  }

 private:
  // Runs the trunk on each micro-batch of rows [first, first + n): f(first, n, hidden states (n, seq,
  // hidden), score positions of the n rows).
  template <class F>
  void for_each_micro(const token_rows& r, F&& f) {
    check_fits(trunk_, r);
    const std::vector<std::int64_t> at = score_positions(r);
    for (std::int64_t first = 0; first < r.rows; first += trunk_.max_batch()) {
      const std::int64_t n = std::min(trunk_.max_batch(), r.rows - first);
      trunk_.forward(std::span<const std::int32_t>(r.ids.data() + first * r.seq, std::size_t(n * r.seq)), n, r.seq, false);
      const std::vector<T> h = trunk_.hidden();
      f(first, n, std::span<const T>(h), std::span<const std::int64_t>(at).subspan(std::size_t(first), std::size_t(n)));
    }
  }

  double score_at(std::span<const T> h, std::int64_t offset) const {
    double s = convert<double>(head_[std::size_t(hidden)]);
    for (std::int64_t j = 0; j < hidden; ++j) s += convert<double>(head_[std::size_t(j)]) * convert<double>(h[std::size_t(offset + j)]);
    return s;
  }

  Model& trunk_;
  std::vector<T> head_;
  std::vector<double> grad_;
};

// AdamW over the reward head's hidden + 1 values with backend/host/adamw.hpp's update: the weight decays
// like a matrix, the bias never.
template <class T, class M>
class head_adamw {
 public:
  explicit head_adamw(std::int64_t hidden, adamw_options o = {})
      : options_(o), m_(std::size_t(hidden + 1), M(0)), v_(std::size_t(hidden + 1), M(0)),
        ranges_{{0, hidden, true}, {hidden, hidden + 1, false}} {}

  // One update at `lr` of `params` with gradients `grad` multiplied by `grad_scale`.
  void step(std::span<T> params, std::span<const double> grad, double lr, double grad_scale) {
    require(params.size() == m_.size() && grad.size() == m_.size(), "head_adamw: the head has a different size");
    std::vector<T> g(grad.size());
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = convert<T>(grad[i]);
    const backend::adamw_params p{lr, options_.beta1, options_.beta2, options_.eps, options_.weight_decay, ++steps_, grad_scale};
    backend::host be;
    backend::adamw_update(be, params.data(), g.data(), m_.data(), v_.data(), std::int64_t(m_.size()), p, ranges_.data(),
                          std::int64_t(ranges_.size()));
  }

  std::int64_t steps() const { return steps_; }

  safetensors::writer tensors() const {
    safetensors::writer w;
    w.add<std::int64_t>("step", std::span<const std::int64_t>(&steps_, 1), {});
    w.add<M>("m", m_, {std::int64_t(m_.size())});
    w.add<M>("v", v_, {std::int64_t(v_.size())});
    return w;
  }

  // Reads what tensors() wrote; dtypes and shapes must match exactly (an exact resume).
  void load(const std::filesystem::path& file) {
    const safetensors::reader r(file);
    const auto tensor = [&](const char* name, dtype type, std::vector<std::int64_t> shape) -> const safetensors::tensor_info& {
      const safetensors::tensor_info& t = r.at(name);
      require(t.type == type && t.shape == shape,
              file.string() + ": tensor '" + name + "': expected " + std::string(safetensors_name(type)) + " " +
                  safetensors::shape_string(shape) + ", found " + std::string(safetensors_name(t.type)) + " " +
                  safetensors::shape_string(t.shape));
      return t;
    };
    const std::int64_t n = std::int64_t(m_.size());
    const auto& s = tensor("step", dtype::i64, {});
    const auto& m = tensor("m", safetensors::dtype_of<M>(), {n});
    const auto& v = tensor("v", safetensors::dtype_of<M>(), {n});
    r.read_into(s, &steps_);
    std::memcpy(m_.data(), r.bytes(m).data(), m_.size() * sizeof(M));
    std::memcpy(v_.data(), r.bytes(v).data(), v_.size() * sizeof(M));
  }

 private:
  adamw_options options_;
  std::vector<M> m_, v_;
  std::vector<backend::decay_range> ranges_;
  std::int64_t steps_ = 0;
};

// The options of the two trainers. Defaults: TRL's RewardTrainer (lr 1e-4) and DPOTrainer (lr 1e-6,
// β = 0.1), constant learning rates.
struct preference_options {
  std::int64_t steps = 100;
  std::int64_t batch = 8;  // pairs per step
  lr_schedule lr{.peak = 1e-4, .final = 1e-4, .warmup = 0, .constant = 0, .decay = 0};
  adamw_options adamw{.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0, .decay_vectors = false};
  double clip = 1.0;  // global gradient norm (the reward model: trunk and head together)
  std::uint64_t seed = 0;
  std::int64_t checkpoint_every = 0;  // 0: at the end only
  std::filesystem::path out;

  void check(const std::string& who) const {
    require(steps >= 0 && batch > 0, who + ": steps must be >= 0 and batch positive");
    lr.check();
    require(clip >= 0, who + ": clip must be >= 0");
    require(checkpoint_every >= 0, who + ": checkpoint_every must be >= 0");
  }
  nlohmann::json arithmetic() const {
    return {{"batch", batch},
            {"lr", {{"peak", lr.peak}, {"final", lr.final}, {"warmup", lr.warmup}, {"constant", lr.constant}, {"decay", lr.decay}}},
            {"clip", clip},
            {"seed", seed}};
  }
};

struct reward_options : preference_options {
  void check() const { preference_options::check("reward"); }
};

struct dpo_options : preference_options {
  double beta = 0.1;
  dpo_options() { lr = {.peak = 1e-6, .final = 1e-6, .warmup = 0, .constant = 0, .decay = 0}; }

  void check() const {
    preference_options::check("dpo");
    require(std::isfinite(beta) && beta > 0, "dpo: beta must be positive, found " + std::to_string(beta));
  }
  nlohmann::json arithmetic() const {
    nlohmann::json j = preference_options::arithmetic();
    j["beta"] = beta;
    return j;
  }
};

// Bradley–Terry training of a reward model. Metrics per step: loss, accuracy, margin (mean r_c − r_r),
// lr, grad_norm (trunk and head together, before clipping), seconds.
template <class Model>
class reward_trainer {
 public:
  using T = typename Model::T;
  using M = storage_t<Model::precision.moment>;

  // `pad` pads rows (never scored).
  reward_trainer(reward_model<Model>& model, std::vector<token_pair> pairs, reward_options options, std::int32_t pad)
      : model_(model), pairs_(std::move(pairs)), options_((options.check(), std::move(options))), pad_(pad),
        run_(model.trunk(), options_.out, options_.adamw, options_.arithmetic(), options_.seed),
        head_optimizer_(reward_model<Model>::hidden, options_.adamw) {
    check_pairs(model.trunk(), pairs_, "reward");
  }

  // Trains until options.steps are done, resuming from OUT when it holds a checkpoint. Returns the
  // metrics of the steps it ran.
  std::vector<nlohmann::json> run(const std::string& title) {
    if (run_.open()) load_head();
    progress_bar bar(options_.steps);
    std::vector<nlohmann::json> lines;
    while (run_.state().step < options_.steps) {
      lines.push_back(step());
      bar.update(run_.state().step, "loss " + std::to_string(lines.back()["loss"].get<double>()) + "  accuracy " +
                                        std::to_string(lines.back()["accuracy"].get<double>()));
    }
    bar.finish();
    save();
    plot(title);
    return lines;
  }

  // The fraction of `pairs` whose chosen completion scores above the rejected one.
  double evaluate_pairs(std::span<const token_pair> pairs) {
    check_pairs(model_.trunk(), pairs, "reward: evaluate_pairs");
    std::vector<std::int64_t> picked(pairs.size());
    std::iota(picked.begin(), picked.end(), std::int64_t{0});
    const std::vector<double> s = model_.scores(pair_rows(pairs, picked, pad_));
    const std::size_t n = pairs.size();
    std::size_t right = 0;
    for (std::size_t i = 0; i < n; ++i) right += s[i] > s[n + i];
    return double(right) / double(n);
  }

  double score(std::span<const std::int32_t> prompt, std::span<const std::int32_t> completion) {
    return model_.score(prompt, completion);
  }

  void plot(const std::string& title) {
    const metric_panel panels[] = {{"Bradley–Terry loss", false, {"loss"}},
                                                      {"pair accuracy", false, {"accuracy"}},
                                                      {"margin r_chosen − r_rejected", false, {"margin"}},
                                                      {"learning rate", false, {"lr"}},
                                                      {"gradient norm (before clipping)", true, {"grad_norm"}}};
    plot_metrics(run_.metrics_path(), run_.out() / "metrics.svg", title, panels);
  }

  stage_run<Model>& stage() { return run_; }

 private:
  std::filesystem::path head_file() const { return options_.out / "score.safetensors"; }
  std::filesystem::path head_optimizer_file() const { return options_.out / "score_optimizer.safetensors"; }

  void save() {
    const std::int64_t s = run_.state().step;
    preference_detail::rotate_write(model_.head_tensors(), head_file(), s);
    preference_detail::rotate_write(head_optimizer_.tensors(), head_optimizer_file(), s);
    run_.save();
  }

  void load_head() {
    const std::int64_t s = run_.state().step;
    const std::filesystem::path weights_file = preference_detail::find_step(head_file(), s);
    const std::filesystem::path optimizer_file = preference_detail::find_step(head_optimizer_file(), s);
    head_optimizer_.load(optimizer_file);
    require(head_optimizer_.steps() == run_.state().updates,
            optimizer_file.string() + ": tensor 'step' is " + std::to_string(head_optimizer_.steps()) +
                " but the trunk's checkpoint counts " + std::to_string(run_.state().updates) + " updates");
    model_.load(weights_file);
  }

  // One update of trunk and head, clipped by their joint gradient norm; the head steps only when the
  // trunk does (a non-finite gradient skips both). Returns the joint norm before clipping.
  double update(double lr) {
    Model& trunk = model_.trunk();
    const double trunk_squares = sum_squares(trunk.backend(), trunk.grad_data(), trunk.params().size());
    double head_squares = 0;
    for (double g : model_.head_grad()) head_squares += g * g;
    const double norm = std::sqrt(trunk_squares + head_squares);
    const double scale = adamw<Model>::clip_scale(norm, options_.clip);
    // stage_run clips by the trunk's own norm: the threshold (trunk norm) · scale applies the joint factor.
    const std::int64_t before = run_.state().updates;
    run_.update(lr, scale < 1 ? std::sqrt(trunk_squares) * scale : 0.0);
    if (run_.state().updates > before) head_optimizer_.step(model_.head(), model_.head_grad(), lr, scale);
    model_.zero_head_grad();
    return norm;
  }

  nlohmann::json step() {
    const auto t0 = std::chrono::steady_clock::now();
    const auto picked = epoch_rows(std::int64_t(pairs_.size()), options_.batch, run_.state().step, options_.seed);
    const token_rows rows = pair_rows(pairs_, picked, pad_);
    const std::size_t n = picked.size();
    model_.zero_grad();
    const std::vector<double> s = model_.scores(rows);
    const pair_loss bt = bradley_terry(std::span(s).first(n), std::span(s).last(n));
    std::vector<double> dscore = bt.dchosen;
    dscore.insert(dscore.end(), bt.drejected.begin(), bt.drejected.end());
    model_.backward(rows, dscore);
    const double lr = options_.lr.at(run_.state().updates);
    const double norm = update(lr);
    for (std::uint8_t f : rows.scored) run_.state().tokens += f;
    nlohmann::json line = {{"loss", bt.loss}, {"accuracy", bt.accuracy}, {"margin", bt.margin}, {"lr", lr}, {"grad_norm", norm},
                           {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
    run_.finish_step(line, 0);
    if (options_.checkpoint_every > 0 && run_.state().step % options_.checkpoint_every == 0) save();
    line["step"] = run_.state().step;
    return line;
  }

  reward_model<Model>& model_;
  std::vector<token_pair> pairs_;
  reward_options options_;
  std::int32_t pad_;
  stage_run<Model> run_;
  head_adamw<T, M> head_optimizer_;
};

// DPO of `policy` against a frozen `reference` (a second model of the same type, set to the policy's
// starting weights). π and ref are log-probabilities summed over a completion's tokens. Metrics per step:
// loss, reward_accuracy (pairs with a positive margin), margin, chosen_reward and rejected_reward (mean
// β·(π − ref) of the chosen and of the rejected completions), lr, grad_norm, seconds.
template <class Model>
class dpo_trainer {
 public:
  dpo_trainer(Model& policy, Model& reference, std::vector<token_pair> pairs, dpo_options options, std::int32_t pad)
      : policy_(policy), reference_(reference), pairs_(std::move(pairs)), options_((options.check(), std::move(options))),
        pad_(pad), run_(policy, options_.out, options_.adamw, options_.arithmetic(), options_.seed) {
    check_pairs(policy, pairs_, "dpo");
    require(&policy != &reference, "dpo: the reference must be a second model, not the policy itself");
    require(reference.max_seq() >= policy.max_seq(), "dpo: the reference model's planned length " +
                                                         std::to_string(reference.max_seq()) + " is shorter than the policy's " +
                                                         std::to_string(policy.max_seq()));
  }

  std::vector<nlohmann::json> run(const std::string& title) {
    open_with_reference(run_, policy_, reference_, reference_dir());
    progress_bar bar(options_.steps);
    std::vector<nlohmann::json> lines;
    while (run_.state().step < options_.steps) {
      lines.push_back(step());
      bar.update(run_.state().step, "loss " + std::to_string(lines.back()["loss"].get<double>()) + "  reward accuracy " +
                                        std::to_string(lines.back()["reward_accuracy"].get<double>()));
    }
    bar.finish();
    run_.save();
    plot(title);
    return lines;
  }

  void plot(const std::string& title) {
    const metric_panel panels[] = {{"DPO loss", false, {"loss"}},
                                                      {"implicit rewards β·(π − ref)", false, {"chosen_reward", "rejected_reward", "margin"}},
                                                      {"reward accuracy", false, {"reward_accuracy"}},
                                                      {"learning rate", false, {"lr"}},
                                                      {"gradient norm (before clipping)", true, {"grad_norm"}}};
    plot_metrics(run_.metrics_path(), run_.out() / "metrics.svg", title, panels);
  }

  stage_run<Model>& stage() { return run_; }

 private:
  std::filesystem::path reference_dir() const { return options_.out / "reference"; }

  nlohmann::json step() {
    const auto t0 = std::chrono::steady_clock::now();
    const auto picked = epoch_rows(std::int64_t(pairs_.size()), options_.batch, run_.state().step, options_.seed);
    const token_rows rows = pair_rows(pairs_, picked, pad_);
    const std::size_t n = picked.size();
    const std::vector<double> pi = row_sums(rows_logprobs(policy_, rows), rows);
    const std::vector<double> ref = row_sums(rows_logprobs(reference_, rows), rows);
    const auto first = [&](const std::vector<double>& v) { return std::span(v).first(n); };
    const auto last = [&](const std::vector<double>& v) { return std::span(v).last(n); };
    const pair_loss d = dpo(first(pi), last(pi), first(ref), last(ref), options_.beta);
    double chosen_reward = 0, rejected_reward = 0;
    for (std::size_t i = 0; i < n; ++i) {
      chosen_reward += options_.beta * (pi[i] - ref[i]) / double(n);
      rejected_reward += options_.beta * (pi[n + i] - ref[n + i]) / double(n);
    }
    // d(loss)/d(logp) of a scored position is d(loss)/d(its row's sum).
    policy_.zero_grad();
    rows_backward(policy_, rows, [&](std::int64_t first_row, std::int64_t count, std::span<const double>) {
      std::vector<double> dlogp(std::size_t(count * rows.seq), 0.0);
      for (std::int64_t r = 0; r < count; ++r) {
        const std::size_t row = std::size_t(first_row + r);
        const double g = row < n ? d.dchosen[row] : d.drejected[row - n];
        for (std::int64_t t = 0; t < rows.seq; ++t)
          if (rows.scored[std::size_t(std::int64_t(row) * rows.seq + t)]) dlogp[std::size_t(r * rows.seq + t)] = g;
      }
      return dlogp;
    });
    const double lr = options_.lr.at(run_.state().updates);
    const double norm = run_.update(lr, options_.clip);
    for (std::uint8_t f : rows.scored) run_.state().tokens += f;
    nlohmann::json line = {{"loss", d.loss}, {"reward_accuracy", d.accuracy}, {"margin", d.margin},
                           {"chosen_reward", chosen_reward}, {"rejected_reward", rejected_reward}, {"lr", lr},
                           {"grad_norm", norm},
                           {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
    run_.finish_step(line, options_.checkpoint_every);
    line["step"] = run_.state().step;
    return line;
  }

  Model& policy_;
  Model& reference_;
  std::vector<token_pair> pairs_;
  dpo_options options_;
  std::int32_t pad_;
  stage_run<Model> run_;
};

}  // namespace dsx::post
