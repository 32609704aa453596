// Sampling completions through the latent KV cache (transformer::generate) for RL rollouts, rejection
// sampling and evaluation: temperature, top-k, top-p (nucleus), a token budget and stop tokens.
//
// Each drawn token also records its log-probability under the model's own distribution (temperature 1,
// no truncation), which is what GRPO's ratio and the KL estimate compare against. Randomness is
// counter-based (core/rng.hpp; see sample()), so a run resumes and reproduces exactly from
// (seed, stream) whatever the thread count and the chunking.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"
#include "dsx/core/rng.hpp"

namespace dsx::post {

struct sampling_options {
  double temperature = 1.0;  // 0: greedy
  double top_p = 1.0;        // keep the most likely tokens whose probabilities sum to at least top_p
  int top_k = 0;             // keep the k most likely tokens (0: all)
  std::int64_t max_new = 64; // tokens generated at most per completion
  std::vector<std::int32_t> stop;  // a completion ends with the first of these it draws (kept in its ids)
  std::int64_t vocab_limit = 0;    // draw only ids below this, for a tokenizer with fewer ids than the
                                   // model's vocabulary (the rest decode to no text); 0: every id

  void check() const {
    require(std::isfinite(temperature) && temperature >= 0, "sampling: temperature must be >= 0");
    require(top_p > 0 && top_p <= 1, "sampling: top_p must be in (0, 1]");
    require(top_k >= 0, "sampling: top_k must be >= 0");
    require(max_new > 0, "sampling: max_new must be positive");
    require(vocab_limit >= 0, "sampling: vocab_limit must be >= 0");
  }
};

struct completion {
  std::vector<std::int32_t> ids;   // generated tokens, the stop token included when one was drawn
  std::vector<double> logprobs;    // log p(token) under the model (temperature 1), one per id
  bool stopped = false;            // ended with a stop token (false: ran out of max_new)
};

// Draws a token from one row of logits; `u` is uniform in [0, 1). Returns the token and its
// temperature-1 log-probability. `order` is scratch of vocab ids.
template <class T>
std::int32_t draw_token(std::span<const T> logits, const sampling_options& o, double u, std::vector<std::int32_t>& order,
                        std::vector<double>& prob, double& logprob) {
  const std::int64_t full = std::int64_t(logits.size());
  double max = -INFINITY;
  for (const T& x : logits) max = std::max(max, convert<double>(x));
  double sum = 0;
  for (const T& x : logits) sum += std::exp(convert<double>(x) - max);
  const double lse = max + std::log(sum);
  // The drawable ids; the log-probability stays the one over the whole vocabulary.
  const std::int64_t vocab = o.vocab_limit > 0 ? std::min<std::int64_t>(o.vocab_limit, full) : full;
  std::int32_t token = 0;
  if (o.temperature == 0) {
    token = std::int32_t(std::max_element(logits.begin(), logits.begin() + vocab,
                                          [](const T& a, const T& b) { return convert<double>(a) < convert<double>(b); }) -
                         logits.begin());
  } else {
    order.resize(std::size_t(vocab));
    std::iota(order.begin(), order.end(), 0);
    // prob's second half holds the logits by id (the sort keys, read once from T), its first half the kept
    // probabilities by rank.
    prob.resize(std::size_t(2 * vocab));
    const double* key = prob.data() + vocab;
    for (std::int64_t v = 0; v < vocab; ++v) prob[std::size_t(vocab + v)] = convert<double>(logits[std::size_t(v)]);
    // Candidates in decreasing logit order (ties to the smaller id), cut by top-k.
    std::int64_t keep = o.top_k > 0 ? std::min<std::int64_t>(o.top_k, vocab) : vocab;
    const auto better = [&](std::int32_t a, std::int32_t b) { return key[a] > key[b] || (key[a] == key[b] && a < b); };
    if (keep < vocab) std::partial_sort(order.begin(), order.begin() + keep, order.end(), better);
    else if (o.top_p < 1) std::sort(order.begin(), order.end(), better);
    double total = 0;
    for (std::int64_t i = 0; i < keep; ++i) {
      prob[std::size_t(i)] = std::exp((key[order[std::size_t(i)]] - max) / o.temperature);
      total += prob[std::size_t(i)];
    }
    if (o.top_p < 1) {  // the smallest prefix whose mass reaches top_p
      double mass = 0;
      std::int64_t cut = 0;
      while (cut < keep && mass < o.top_p * total) mass += prob[std::size_t(cut++)];
      keep = cut;
      total = mass;
    }
    double target = u * total, acc = 0;
    token = order[std::size_t(keep - 1)];
    for (std::int64_t i = 0; i < keep; ++i) {
      acc += prob[std::size_t(i)];
      if (target < acc) {
        token = order[std::size_t(i)];
        break;
      }
    }
  }
  logprob = convert<double>(logits[std::size_t(token)]) - lse;
  return token;
}

// `n` completions of one prompt (every row reads the same prompt), decoded in chunks of at most the
// model's planned batch; completion i's token at step s uses random_uniform(seed, stream, s · n + i).
template <class Model>
std::vector<completion> sample(Model& model, std::span<const std::int32_t> prompt, std::int64_t n,
                               const sampling_options& o, std::uint64_t seed, std::uint64_t stream) {
  using T = typename Model::T;
  o.check();
  require(n > 0, "sample: needs at least one completion");
  require(!prompt.empty(), "sample: the prompt is empty");
  const std::int64_t prompt_len = std::int64_t(prompt.size());
  require(prompt_len + o.max_new <= model.max_seq(),
          "sample: prompt of " + std::to_string(prompt_len) + " tokens + max_new " + std::to_string(o.max_new) +
              " exceeds the model's planned length " + std::to_string(model.max_seq()));
  std::vector<completion> out(static_cast<std::size_t>(n));
  std::vector<std::int32_t> order;
  std::vector<double> prob;
  for (std::int64_t first = 0; first < n; first += model.max_batch()) {
    const std::int64_t rows = std::min(model.max_batch(), n - first);
    std::vector<std::int32_t> prompts;
    for (std::int64_t r = 0; r < rows; ++r) prompts.insert(prompts.end(), prompt.begin(), prompt.end());
    std::int64_t step = 0;
    model.generate(prompts, rows, prompt_len, o.max_new, [&](std::span<const T> logits, std::span<std::int32_t> next) {
      bool running = false;
      for (std::int64_t r = 0; r < rows; ++r) {
        completion& c = out[std::size_t(first + r)];
        if (c.stopped) {  // finished rows keep decoding their stop token, unread: the batch stays rectangular
          next[std::size_t(r)] = c.ids.back();
          continue;
        }
        double lp = 0;
        const double u = random_uniform(seed, stream, std::uint64_t(step * n + first + r));
        const std::int32_t token =
            draw_token(logits.subspan(std::size_t(r * Model::config.vocab), std::size_t(Model::config.vocab)), o, u, order, prob, lp);
        c.ids.push_back(token);
        c.logprobs.push_back(lp);
        c.stopped = std::find(o.stop.begin(), o.stop.end(), token) != o.stop.end();
        next[std::size_t(r)] = token;
        running = running || !c.stopped;
      }
      ++step;
      return running;
    });
  }
  return out;
}

}  // namespace dsx::post
