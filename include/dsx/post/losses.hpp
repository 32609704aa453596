// The post-training objectives as functions of per-token log-probabilities (post/logprob.hpp turns
// their gradients into logit gradients). Each returns its value and d(value)/d(inputs); the trainers
// minimise the value. Formulas and defaults with sources: docs/post-training.md.
//
//   SFT    mean negative log-likelihood over the trained (assistant) tokens.
//   RM     Bradley–Terry: −log σ(r_chosen − r_rejected), mean over pairs.
//   DPO    −log σ(β · ((π_c − ref_c) − (π_r − ref_r))), π and ref = log-probabilities summed over the
//          completion tokens, mean over pairs (Rafailov et al. 2023).
//   GRPO   per token of completion i: ρ = exp(logp − logp_old),
//          l = −min(ρ·A_i, clip(ρ, 1 − ε_low, 1 + ε_high)·A_i) + β·k3,  k3 = e^(ref − logp) − (ref − logp) − 1
//          (DeepSeekMath Eq. 3–4), aggregated over tokens (DAPO), per sequence then over sequences
//          (DeepSeekMath's sample level), or over G·L_max (Dr. GRPO's constant).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dsx/core/error.hpp"

namespace dsx::post {

// log σ(x) and σ(x) without overflow.
inline double log_sigmoid(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
inline double sigmoid(double x) { return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x)); }

// SFT: −Σ logp / `count` over the scored positions (count: the scored positions of the whole step, so
// that micro-batches add up to the step's mean). Writes d(loss)/d logp and returns this part's loss.
inline double masked_nll(std::span<const double> logp, std::span<const std::uint8_t> scored, std::int64_t count,
                         std::span<double> dlogp) {
  require(scored.size() == logp.size() && dlogp.size() == logp.size(), "masked_nll: logp, flags and dlogp differ in size");
  require(count > 0, "masked_nll: the step has no trained token");
  double loss = 0;
  for (std::size_t i = 0; i < logp.size(); ++i) {
    dlogp[i] = scored[i] ? -1.0 / double(count) : 0.0;
    if (scored[i]) loss -= logp[i] / double(count);
  }
  return loss;
}

// A pairwise loss over scores of chosen and rejected completions: value (mean over pairs) and its
// gradients with respect to each pair's two scores.
struct pair_loss {
  double loss = 0;
  double accuracy = 0;  // fraction of pairs whose margin is positive
  double margin = 0;    // mean margin (the DPO margin includes β)
  std::vector<double> dchosen, drejected;
};

// Bradley–Terry reward-model loss on scalar rewards.
inline pair_loss bradley_terry(std::span<const double> chosen, std::span<const double> rejected) {
  require(chosen.size() == rejected.size() && !chosen.empty(), "bradley_terry: needs as many chosen as rejected rewards");
  const double n = double(chosen.size());
  pair_loss out;
  out.dchosen.resize(chosen.size());
  out.drejected.resize(chosen.size());
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    const double m = chosen[i] - rejected[i];
    out.loss -= log_sigmoid(m) / n;
    out.accuracy += (m > 0) / n;
    out.margin += m / n;
    out.dchosen[i] = -sigmoid(-m) / n;
    out.drejected[i] = sigmoid(-m) / n;
  }
  return out;
}

// DPO on summed completion log-probabilities of the policy and the frozen reference.
inline pair_loss dpo(std::span<const double> policy_chosen, std::span<const double> policy_rejected,
                     std::span<const double> ref_chosen, std::span<const double> ref_rejected, double beta) {
  const std::size_t n = policy_chosen.size();
  require(n > 0 && policy_rejected.size() == n && ref_chosen.size() == n && ref_rejected.size() == n,
          "dpo: needs one policy and one reference log-probability per chosen and rejected completion");
  require(std::isfinite(beta) && beta > 0, "dpo: beta must be positive, found " + std::to_string(beta));
  pair_loss out;
  out.dchosen.resize(n);
  out.drejected.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double m = beta * ((policy_chosen[i] - ref_chosen[i]) - (policy_rejected[i] - ref_rejected[i]));
    out.loss -= log_sigmoid(m) / double(n);
    out.accuracy += (m > 0) / double(n);
    out.margin += m / double(n);
    out.dchosen[i] = -beta * sigmoid(-m) / double(n);
    out.drejected[i] = beta * sigmoid(-m) / double(n);
  }
  return out;
}

// GRPO advantages of groups of `group` consecutive rewards: A = r − mean, divided by (std + 1e-4) with
// `scale` (the sample standard deviation, as TRL and verl compute it; Dr. GRPO drops the division). A
// group whose rewards are all equal has no signal: its advantages are 0 and it is counted.
struct advantages {
  std::vector<double> values;
  std::int64_t zero_variance_groups = 0;
};
inline advantages group_advantages(std::span<const double> rewards, std::int64_t group, bool scale) {
  require(group >= 2 && std::int64_t(rewards.size()) % group == 0,
          "group_advantages: " + std::to_string(rewards.size()) + " rewards do not form groups of " +
              std::to_string(group) + " (G must be at least 2)");
  advantages out;
  out.values.resize(rewards.size());
  for (std::size_t g0 = 0; g0 < rewards.size(); g0 += std::size_t(group)) {
    double mean = 0;
    for (std::int64_t i = 0; i < group; ++i) mean += rewards[g0 + std::size_t(i)] / double(group);
    double var = 0;
    bool equal = true;
    for (std::int64_t i = 0; i < group; ++i) {
      const double r = rewards[g0 + std::size_t(i)];
      var += (r - mean) * (r - mean) / double(group - 1);
      equal = equal && r == rewards[g0];
    }
    out.zero_variance_groups += equal;
    const double den = scale ? std::sqrt(var) + 1e-4 : 1.0;
    for (std::int64_t i = 0; i < group; ++i)
      out.values[g0 + std::size_t(i)] = equal ? 0.0 : (rewards[g0 + std::size_t(i)] - mean) / den;
  }
  return out;
}

enum class grpo_aggregation {
  token,     // Σ_i Σ_t l / Σ_i |o_i|                 (DAPO; TRL "dapo"/"bnpo", verl "token-mean")
  sequence,  // (1/N) Σ_i (1/|o_i|) Σ_t l              (DeepSeekMath Eq. 3; TRL "grpo")
  constant,  // Σ_i Σ_t l / (N · L_max)                 (Dr. GRPO)
};

struct grpo_loss_options {
  double eps_low = 0.2, eps_high = 0.2;  // clip range of the ratio
  double beta = 0.001;                   // KL weight (R1: 0.001; 0 skips the reference model)
  grpo_aggregation aggregation = grpo_aggregation::token;
  std::int64_t max_length = 0;           // L_max of the constant aggregation
  // The completion tokens and rows of the whole step when a call sees one micro-batch of it (0: this
  // call's own), so that the micro-batches' losses and statistics add up to the step's.
  std::int64_t batch_tokens = 0, batch_rows = 0;
};

struct grpo_loss_result {
  double loss = 0;
  double kl = 0;             // mean k3 over completion tokens
  double clip_fraction = 0;  // completion tokens whose ratio was clipped (the clipped term was the minimum)
  double ratio = 0;          // mean ratio over completion tokens
  std::vector<double> dlogp; // d(loss)/d logp per position
};

// The GRPO loss over N completions laid out as positions (one entry per position of a (rows, seq)
// batch): `mask` marks positions whose *next* token is a completion token (as in logprob.hpp, position
// t scores token t + 1), `row_advantage` gives each row's advantage, `logp`, `old_logp` and `ref_logp`
// (unused when β = 0) the log-probabilities of the next token.
inline grpo_loss_result grpo_loss(std::span<const double> logp, std::span<const double> old_logp,
                                  std::span<const double> ref_logp, std::span<const std::uint8_t> mask,
                                  std::span<const double> row_advantage, std::int64_t seq,
                                  const grpo_loss_options& o) {
  const std::size_t n = logp.size();
  require(seq > 0 && n % std::size_t(seq) == 0 && old_logp.size() == n && mask.size() == n &&
              (o.beta == 0 || ref_logp.size() == n) && row_advantage.size() == n / std::size_t(seq),
          "grpo_loss: logp, old_logp, ref_logp and mask must be (rows, seq), the advantages (rows)");
  require(o.eps_low >= 0 && o.eps_low < 1 && o.eps_high >= 0 && o.beta >= 0,
          "grpo_loss: needs 0 <= eps_low < 1, eps_high >= 0 and beta >= 0");
  require(o.aggregation != grpo_aggregation::constant || o.max_length > 0,
          "grpo_loss: the constant aggregation needs max_length > 0");
  const std::int64_t rows = std::int64_t(n) / seq;
  std::vector<std::int64_t> length(std::size_t(rows), 0);
  std::int64_t total = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t t = 0; t < seq; ++t) length[std::size_t(r)] += mask[std::size_t(r * seq + t)] != 0;
    total += length[std::size_t(r)];
  }
  grpo_loss_result out;
  out.dlogp.assign(n, 0.0);
  if (total == 0) return out;
  const double tokens = double(o.batch_tokens > 0 ? o.batch_tokens : total);
  const double sequences = double(o.batch_rows > 0 ? o.batch_rows : rows);
  std::int64_t clipped = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    if (length[std::size_t(r)] == 0) continue;
    const double weight = o.aggregation == grpo_aggregation::token    ? 1.0 / tokens
                          : o.aggregation == grpo_aggregation::sequence ? 1.0 / (sequences * double(length[std::size_t(r)]))
                                                                        : 1.0 / (sequences * double(o.max_length));
    const double a = row_advantage[std::size_t(r)];
    for (std::int64_t t = 0; t < seq; ++t) {
      const std::size_t i = std::size_t(r * seq + t);
      if (!mask[i]) continue;
      const double ratio = std::exp(logp[i] - old_logp[i]);
      const double bounded = std::clamp(ratio, 1 - o.eps_low, 1 + o.eps_high);
      const bool clip = bounded * a < ratio * a;  // the clipped term is the minimum: no gradient through ρ
      double l = -(clip ? bounded * a : ratio * a), g = clip ? 0.0 : -ratio * a;
      if (o.beta > 0) {
        const double x = ref_logp[i] - logp[i], ex = std::exp(x);
        const double k3 = ex - x - 1;
        l += o.beta * k3;
        g += o.beta * (1 - ex);
        out.kl += k3 / tokens;
      }
      out.loss += weight * l;
      out.dlogp[i] = weight * g;
      out.ratio += ratio / tokens;
      clipped += clip;
    }
  }
  out.clip_fraction = double(clipped) / tokens;
  return out;
}

}  // namespace dsx::post
