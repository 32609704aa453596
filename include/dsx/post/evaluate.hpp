// Evaluation on held-out verifiable tasks (post/tasks.hpp, test split): pass@1 and cons@k from k samples
// per problem, the format rate, the Nim win rate against a perfect opponent, and sample traces.
//
//   pass@1  = mean over problems of (correct samples / k)            (R1 §3: pass@1 = (1/k) Σ p_i)
//   cons@k  = mean over problems of [the majority answer is correct] (self-consistency: the k answers vote;
//             an answer is the final line of the answer part, what verify reads, so that responses which
//             reason differently but answer the same agree, and countdown expressions of the same numbers
//             and value are one answer (answer_key in post/tasks.hpp); a tie goes to the answer the model
//             is surest of, the one with the highest mean per-token log-probability over its samples, and
//             without those numbers to the answer seen first)
//   format  = fraction of samples in the <think>…</think> answer format
// Sampling defaults follow R1's evaluation (temperature 0.6, top-p 0.95).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dsx/post/chat.hpp"
#include "dsx/post/report.hpp"
#include "dsx/post/sampling.hpp"
#include "dsx/post/tasks.hpp"

namespace dsx::post {

struct eval_options {
  std::int64_t problems = 24;  // test problems per task
  int k = 4;                   // samples per problem
  sampling_options sampling{.temperature = 0.6, .top_p = 0.95, .top_k = 0, .max_new = 96, .stop = {}};
  std::int64_t nim_games = 16; // games from test positions (0: none)
  int traces = 2;              // sample responses kept per task
  std::uint64_t seed = 1;      // problem seed of the test split and sampling seed
};

// The response text of a completion: its tokens decoded with special tokens kept (the think tags are
// special tokens of the recipe's tokenizer), the stop token dropped.
inline std::string response_text(const chat_template& chat, std::span<const std::int32_t> ids, bool stopped) {
  const std::span<const std::int32_t> body = stopped && !ids.empty() ? ids.first(ids.size() - 1) : ids;
  return chat.tokenizer().decode(body, false);
}

// The verdicts of k responses to one problem and what they add up to: the correct and formatted counts,
// and whether the majority answer (see the top of this file) is correct. `confidence`, empty or one per
// response: the response's mean per-token log-probability, which breaks ties between answers. No
// responses, or a confidence count that differs from theirs: a dsx::error.
struct problem_score {
  std::vector<verdict> verdicts;
  int correct = 0, formatted = 0;
  bool consensus = false;
};

inline problem_score score_responses(const task_problem& p, std::span<const std::string> responses,
                                     std::span<const double> confidence = {}) {
  require(!responses.empty(), "score_responses: expected at least one response to '" + p.question + "', found none");
  require(confidence.empty() || confidence.size() == responses.size(),
          "score_responses: expected " + std::to_string(responses.size()) + " confidences (one per response), found " +
              std::to_string(confidence.size()));
  struct vote {
    std::string answer;
    int count = 0;
    double confidence = 0;  // summed over the answer's samples
    bool correct = false;
  };
  problem_score out;
  std::vector<vote> votes;  // first-seen order
  for (std::size_t i = 0; i < responses.size(); ++i) {
    verdict v = verify(p, responses[i]);
    out.correct += v.correct;
    out.formatted += v.formatted;
    const std::string answer = answer_key(p, task_detail::final_line(v.answer));
    auto it = std::find_if(votes.begin(), votes.end(), [&](const vote& e) { return e.answer == answer; });
    if (it == votes.end()) it = votes.insert(votes.end(), vote{answer, 0, 0, v.correct});
    ++it->count;
    it->confidence += confidence.empty() ? 0.0 : confidence[i];
    out.verdicts.push_back(std::move(v));
  }
  // max_element keeps the first of equals, so without confidences a tie goes to the answer seen first.
  const auto best = std::max_element(votes.begin(), votes.end(), [](const vote& a, const vote& b) {
    return a.count != b.count ? a.count < b.count : a.confidence / a.count < b.confidence / b.count;
  });
  out.consensus = best->correct;
  return out;
}

// The mean per-token log-probability of a completion (0 for an empty one).
inline double mean_logprob(const completion& c) {
  double sum = 0;
  for (const double l : c.logprobs) sum += l;
  return c.logprobs.empty() ? 0.0 : sum / double(c.logprobs.size());
}

// Scores `model` on `tasks`; the result's name, model, seconds and metrics are left to the caller.
template <class Model>
stage_report evaluate(Model& model, const chat_template& chat, std::span<const task_kind> tasks, eval_options o) {
  if (o.sampling.stop.empty()) o.sampling.stop = {chat.eos()};
  if (o.sampling.vocab_limit == 0) o.sampling.vocab_limit = chat.tokenizer().vocab_size();
  stage_report out;
  out.k = o.k;
  std::uint64_t stream = 0;
  for (const task_kind kind : tasks) {
    task_score score{std::string(task_name(kind)), 0, 0, 0, o.problems};
    for (std::int64_t i = 0; i < o.problems; ++i) {
      const task_problem p = make_problem(kind, split::test, std::uint64_t(i), o.seed);
      const auto prompt = chat.prompt(p.question);
      const auto samples = sample(model, prompt, o.k, o.sampling, o.seed, stream++);
      std::vector<std::string> texts;
      std::vector<double> confidence;
      for (const completion& c : samples) {
        texts.push_back(response_text(chat, c.ids, c.stopped));
        confidence.push_back(mean_logprob(c));
      }
      const problem_score ps = score_responses(p, texts, confidence);
      for (const verdict& v : ps.verdicts)
        if (std::count_if(out.samples.begin(), out.samples.end(), [&](const sample_trace& s) { return s.task == score.task; }) < o.traces)
          out.samples.push_back({score.task, p.question, v.thinking, v.answer, p.answer, v.formatted, v.correct});
      score.pass_at_1 += double(ps.correct) / o.k / double(o.problems);
      score.format_rate += double(ps.formatted) / o.k / double(o.problems);
      score.cons_at_k += ps.consensus ? 1.0 / double(o.problems) : 0.0;
    }
    out.pass_at_1 += score.pass_at_1 / double(tasks.size());
    out.cons_at_k += score.cons_at_k / double(tasks.size());
    out.format_rate += score.format_rate / double(tasks.size());
    out.tasks.push_back(score);
  }
  if (o.nim_games > 0) {
    sampling_options one = o.sampling;
    int won = 0;
    for (std::int64_t g = 0; g < o.nim_games; ++g) {
      const task_problem start = make_problem(task_kind::nim, split::test, std::uint64_t(g), o.seed + 1);
      won += play_nim(start.numbers, [&](const std::string& question) {
               const auto c = sample(model, chat.prompt(question), 1, one, o.seed, stream++);
               return response_text(chat, c[0].ids, c[0].stopped);
             }).won;
    }
    out.nim_win_rate = double(won) / double(o.nim_games);
  }
  return out;
}

}  // namespace dsx::post
