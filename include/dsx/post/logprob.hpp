// Per-token log-probabilities of a batch of sequences and the gradients of objectives written in them.
//
// Every post-training objective (SFT, DPO, GRPO, distillation) is a function of the log-probabilities
// the model gives the tokens of its sequences. The model computes logits (transformer::forward) and
// differentiates from d(objective)/d(logits) (transformer::backward_logits); this file converts between
// the two on the host:
//
//   logp(b, t) = log softmax(logits(b, t, :))[tokens(b, t + 1)]      for t < seq − 1 (0 at t = seq − 1)
//   d logp(b, t) / d logits(b, t, v) = [v = tokens(b, t + 1)] − softmax(logits(b, t, :))[v]
//
// Accumulation is in double whatever the logit type; rows are independent and run in parallel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::post {

namespace logprob_detail {

inline void check_shapes(std::size_t logits, std::size_t tokens, std::int64_t batch, std::int64_t seq, std::int64_t vocab) {
  require(batch > 0 && seq > 0 && vocab > 0, "logprob: batch, seq and vocab must be positive");
  require(std::int64_t(logits) == batch * seq * vocab && std::int64_t(tokens) == batch * seq,
          "logprob: expected " + std::to_string(batch * seq * vocab) + " logits and " + std::to_string(batch * seq) +
              " tokens, got " + std::to_string(logits) + " and " + std::to_string(tokens));
}

// max and log Σ exp(x − max) of one row, in double.
template <class T>
void row_lse(const T* row, std::int64_t vocab, double& max, double& lse) {
  max = -INFINITY;
  for (std::int64_t v = 0; v < vocab; ++v) max = std::max(max, convert<double>(row[v]));
  double sum = 0;
  for (std::int64_t v = 0; v < vocab; ++v) sum += std::exp(convert<double>(row[v]) - max);
  lse = std::log(sum);
}

}  // namespace logprob_detail

// logp(b, t) of the next token at every position, (batch, seq); the last position of each row is 0.
template <class T>
std::vector<double> token_logprobs(std::span<const T> logits, std::span<const std::int32_t> tokens, std::int64_t batch,
                                   std::int64_t seq, std::int64_t vocab) {
  logprob_detail::check_shapes(logits.size(), tokens.size(), batch, seq, vocab);
  std::vector<double> out(std::size_t(batch * seq), 0.0);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < batch * seq; ++r) {
    if (r % seq == seq - 1) continue;
    const T* row = logits.data() + r * vocab;
    double max, lse;
    logprob_detail::row_lse(row, vocab, max, lse);
    out[std::size_t(r)] = convert<double>(row[tokens[std::size_t(r + 1)]]) - max - lse;
  }
  return out;
}

// d(objective)/d(logits) from g(b, t) = d(objective)/d logp(b, t) (positions with g = 0, the last of each
// row included, get zero rows): dlogits(b, t, v) = g(b, t) · ([v = tokens(b, t + 1)] − p(b, t, v)).
template <class T>
void logprob_backward(std::span<const T> logits, std::span<const std::int32_t> tokens, std::int64_t batch,
                      std::int64_t seq, std::int64_t vocab, std::span<const double> dlogp, std::span<T> dlogits) {
  logprob_detail::check_shapes(logits.size(), tokens.size(), batch, seq, vocab);
  require(dlogp.size() == tokens.size() && dlogits.size() == logits.size(),
          "logprob_backward: dlogp must have one value per position and dlogits the shape of the logits");
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < batch * seq; ++r) {
    T* out = dlogits.data() + r * vocab;
    const double g = r % seq == seq - 1 ? 0.0 : dlogp[std::size_t(r)];
    if (g == 0) {
      std::fill(out, out + vocab, convert<T>(0.0));
      continue;
    }
    const T* row = logits.data() + r * vocab;
    double max, lse;
    logprob_detail::row_lse(row, vocab, max, lse);
    for (std::int64_t v = 0; v < vocab; ++v)
      out[v] = convert<T>(-g * std::exp(convert<double>(row[v]) - max - lse));
    const std::int32_t target = tokens[std::size_t(r + 1)];
    out[target] = convert<T>(convert<double>(out[target]) + g);
  }
}

// Logit-level distillation: Σ_(b,t) w(b, t) · τ² · KL(softmax(teacher / τ) ‖ softmax(student / τ)) over
// positions with w > 0 (Hinton et al.'s τ² keeps gradient sizes comparable across temperatures). Returns
// the objective and writes its gradient with respect to the student's logits:
//   dstudent(b, t, v) = w(b, t) · τ · (p_student(v) − p_teacher(v)).
template <class T, class U>
double distill_kl(std::span<const T> student, std::span<const U> teacher, std::span<const double> weight, std::int64_t rows,
                  std::int64_t vocab, double temperature, std::span<T> dstudent) {
  require(std::int64_t(student.size()) == rows * vocab && std::int64_t(teacher.size()) == rows * vocab &&
              std::int64_t(weight.size()) == rows && dstudent.size() == student.size(),
          "distill_kl: student and teacher logits must be (rows, vocab) with one weight per row");
  require(std::isfinite(temperature) && temperature > 0, "distill_kl: the temperature must be positive");
  double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (std::int64_t r = 0; r < rows; ++r) {
    T* out = dstudent.data() + r * vocab;
    const double w = weight[std::size_t(r)];
    if (w == 0) {
      std::fill(out, out + vocab, convert<T>(0.0));
      continue;
    }
    const T* s = student.data() + r * vocab;
    const U* t = teacher.data() + r * vocab;
    double smax = -INFINITY, tmax = -INFINITY;
    for (std::int64_t v = 0; v < vocab; ++v) {
      smax = std::max(smax, convert<double>(s[v]) / temperature);
      tmax = std::max(tmax, convert<double>(t[v]) / temperature);
    }
    double ssum = 0, tsum = 0;
    for (std::int64_t v = 0; v < vocab; ++v) {
      ssum += std::exp(convert<double>(s[v]) / temperature - smax);
      tsum += std::exp(convert<double>(t[v]) / temperature - tmax);
    }
    const double slse = smax + std::log(ssum), tlse = tmax + std::log(tsum);
    double kl = 0;
    for (std::int64_t v = 0; v < vocab; ++v) {
      const double ls = convert<double>(s[v]) / temperature - slse;
      const double lt = convert<double>(t[v]) / temperature - tlse;
      const double pt = std::exp(lt);
      if (pt > 0) kl += pt * (lt - ls);
      out[v] = convert<T>(w * temperature * (std::exp(ls) - pt));
    }
    total += w * temperature * temperature * kl;
  }
  return total;
}

}  // namespace dsx::post
