// The data of the R1 recipe on the tasks of post/tasks.hpp: the pre-training corpus, the cold-start
// conversations and the tokenizer.
//
// reasoning_corpus() is what the base model is pre-trained on: one conversation per document, train-split
// problems only, the four tasks in turn. Responses come in three forms, so that the base model already
// holds what each later stage draws out:
//   R1 format   "<think>\n{reasoning}\n</think>\n{answer}"   (think_rate, rare: R1-Zero's RL must find it)
//   untagged    "{reasoning}\n{answer}"                      (cot_rate: correct for verify, not formatted)
//   answer      "{answer}"                                   (the rest)
// Like text written by people, the reasoning is not always careful: a share of it (shortcut_rate) follows
// the task's shortcut (shortcut() below), a plausible habit that is right only by luck, and its answer is
// the shortcut's. The base model thus holds both the careful method and the habit and picks one when it
// samples; rewarding correct answers teaches it to pick the careful one, which is what RL on a base model
// can do without new knowledge. A share of the reasoning (mixed_language_rate) mixes Chinese words into the
// English, the language mixing that R1's language-consistency reward removes.
//
// Determinism: document d depends only on (seed, d): its problem is make_problem(task d mod 4, train,
// d / 4, seed) and its form, shortcut and mixing come from the counter-based RNG on stream d.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsx/core/error.hpp"
#include "dsx/core/rng.hpp"
#include "dsx/data/tokenizer.hpp"
#include "dsx/post/special_tokens.hpp"
#include "dsx/post/tasks.hpp"

namespace dsx::post {

struct reasoning_corpus_options {
  std::uint64_t seed = 7;
  std::size_t documents = 20000;
  double think_rate = 0.08;           // responses in R1 format
  double cot_rate = 0.76;             // untagged responses: "{reasoning}\n{answer}"
  double shortcut_rate = 0.3;         // of the responses with reasoning: the task's shortcut instead
  double mixed_language_rate = 0.3;   // of the responses with reasoning: some words in Chinese
};

namespace reasoning_detail {

// English words of the reference reasoning and the Chinese that replaces them in mixed-language text.
inline constexpr std::array<std::pair<std::string_view, std::string_view>, 15> chinese{{
    {"write", "写"},  {"Write", "写"},   {"carry", "进位"}, {"Smallest", "最小"}, {"Next", "然后"},
    {"Put", "把"},    {"front", "前面"}, {"no", "不对"},   {"yes", "对"},       {"xor", "异或"},
    {"Pile", "堆"},   {"take", "取"},    {"big", "大"},     {"biggest", "最大"}, {"Guess", "猜"},
}};

inline const std::string_view* chinese_for(std::string_view word) {
  for (const auto& [en, zh] : chinese)
    if (en == word) return &zh;
  return nullptr;
}

// `reasoning` with each word of the table replaced by its Chinese with probability 1/2, and at least one
// replaced (the first one of the table in the text when the draws replaced none). Every task's reference
// reasoning has such a word.
inline std::string mix_language(std::string_view reasoning, task_detail::draw& r) {
  std::vector<std::pair<std::size_t, std::size_t>> eligible;
  task_detail::for_each_word(reasoning, [&](std::size_t begin, std::size_t end, bool) {
    if (chinese_for(reasoning.substr(begin, end - begin))) eligible.emplace_back(begin, end);
  });
  require(!eligible.empty(), "mix_language: the reasoning has no word to translate: " + std::string(reasoning));
  std::vector<bool> replace(eligible.size());
  bool any = false;
  for (std::size_t i = 0; i < eligible.size(); ++i) any = (replace[i] = r.between(0, 1) == 1) || any;
  if (!any) replace[0] = true;
  std::string out;
  std::size_t at = 0;
  for (std::size_t i = 0; i < eligible.size(); ++i) {
    if (!replace[i]) continue;
    const auto [begin, end] = eligible[i];
    out.append(reasoning.substr(at, begin - at)).append(*chinese_for(reasoning.substr(begin, end - begin)));
    at = end;
  }
  return out.append(reasoning.substr(at));
}

// The seed of the corpus's own draws (form, shortcut and mixing), apart from the problems' streams.
inline std::uint64_t corpus_seed(std::uint64_t seed) { return splitmix64(seed ^ 0x636f72707573ull); }

}  // namespace reasoning_detail

// A shortcut: reasoning and the answer it leads to, written as carefully as the reference but following a
// habit that skips the step the task turns on, so the answer is right only by luck:
//   addition   the columns added without carrying   "7+6=13, write 3. 4+1=5, write 5."   (right without carries)
//   sort42     42 put in front of the list as given  "Put 42 in front."                  (right if already sorted)
//   countdown  one expression, not checked          "Guess 3*7+5."                      (right by chance)
//   nim        a random take from the biggest pile   "Pile 2 is the biggest, take 3."    (right by chance)
// The random parts come from `r`.
struct solution {
  std::string reasoning, answer;
};

inline solution shortcut(const task_problem& p, task_detail::draw& r) {
  const std::vector<int>& n = p.numbers;
  solution s;
  switch (p.kind) {
    case task_kind::addition: {
      std::string digits;
      for (int x = n.at(0), y = n.at(1); x > 0 || y > 0; x /= 10, y /= 10) {
        std::string step;
        int sum = 0;
        for (const int t : {x > 0 ? x % 10 : -1, y > 0 ? y % 10 : -1}) {
          if (t < 0) continue;
          step += (step.empty() ? "" : "+") + std::to_string(t);
          sum += t;
        }
        if (x > 0 && y > 0) step += "=" + std::to_string(sum);
        s.reasoning += (s.reasoning.empty() ? "" : " ") + step + ", write " + std::to_string(sum % 10) + ".";
        digits.insert(digits.begin(), char('0' + sum % 10));
      }
      const std::size_t first = std::min(digits.find_first_not_of('0'), digits.size() - 1);
      s.answer = digits.substr(first);
      break;
    }
    case task_kind::sort42: {
      s.reasoning = "Put 42 in front.";
      std::vector<int> answer{42};
      answer.insert(answer.end(), n.begin(), n.end());
      s.answer = task_detail::join_numbers(answer, false);
      break;
    }
    case task_kind::countdown: {
      s.answer = task_detail::expression3::random(r, n).text();
      s.reasoning = "Guess " + s.answer + ".";
      break;
    }
    case task_kind::nim: {
      const auto biggest = std::max_element(n.begin(), n.end());
      const int pile = static_cast<int>(biggest - n.begin()) + 1;
      const int take = r.between(1, *biggest);
      s.reasoning = "Pile " + std::to_string(pile) + " is the biggest, take " + std::to_string(take) + ".";
      s.answer = task_detail::nim_move_text({pile, take});
      break;
    }
  }
  return s;
}

// Training documents, one conversation each: bos_token + user_token + question + assistant_token +
// response (no EOS: tokenization appends it). See the top of this file. The rates must lie in [0, 1] with
// think_rate + cot_rate <= 1, else a dsx::error naming the field.
inline std::vector<std::string> reasoning_corpus(const reasoning_corpus_options& options = {}) {
  namespace rd = reasoning_detail;
  const auto rate = [](double v, const char* field) {
    require(v >= 0 && v <= 1, std::string("reasoning_corpus: ") + field + " must lie in [0, 1], found " + std::to_string(v));
  };
  rate(options.think_rate, "think_rate");
  rate(options.cot_rate, "cot_rate");
  rate(options.shortcut_rate, "shortcut_rate");
  rate(options.mixed_language_rate, "mixed_language_rate");
  require(options.think_rate + options.cot_rate <= 1,
          "reasoning_corpus: think_rate + cot_rate must be at most 1, found " +
              std::to_string(options.think_rate + options.cot_rate));
  std::vector<std::string> docs;
  docs.reserve(options.documents);
  for (std::size_t d = 0; d < options.documents; ++d) {
    const task_problem p = make_problem(all_tasks[d % all_tasks.size()], split::train, d / all_tasks.size(), options.seed);
    task_detail::draw r(rd::corpus_seed(options.seed), d);
    const double form = r.uniform();
    std::string response;
    if (form < options.think_rate + options.cot_rate) {
      solution chain{p.reasoning, p.answer};
      if (r.uniform() < options.shortcut_rate) chain = shortcut(p, r);
      if (r.uniform() < options.mixed_language_rate) chain.reasoning = rd::mix_language(chain.reasoning, r);
      response = form < options.think_rate ? r1_response(chain.reasoning, chain.answer)
                                           : untagged_response(chain.reasoning, chain.answer);
    } else {
      response = p.answer;
    }
    std::string doc;
    doc.append(bos_token).append(user_token).append(p.question).append(assistant_token).append(response);
    docs.push_back(std::move(doc));
  }
  return docs;
}

struct qa {
  std::string question, response;
};

// Cold-start SFT data (R1 stage 1): problem i is make_problem(task i mod 4, train, i / 4, seed) with its
// English reference reasoning in R1 format, "<think>\n{reasoning}\n</think>\n{answer}".
inline std::vector<qa> cold_start_set(std::size_t count, std::uint64_t seed) {
  std::vector<qa> out;
  out.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    const task_problem p = make_problem(all_tasks[i % all_tasks.size()], split::train, i / all_tasks.size(), seed);
    out.push_back({p.question, r1_response(p.reasoning, p.answer)});
  }
  return out;
}

// The special tokens of the recipe's tokenizer, in id order (ids 0 to 5).
inline std::vector<std::string> reasoning_special_tokens() {
  return {std::string(bos_token),       std::string(eos_token),  std::string(user_token),
          std::string(assistant_token), std::string(think_open), std::string(think_close)};
}

// A byte-level BPE tokenizer for the recipe with vocab_size() <= vocab (vocab >= 6 + 256, else a
// dsx::error): ids 0-5 the special added tokens of reasoning_special_tokens(), then the 256 bytes, then
// the merges of bpe_tokenizer::train (DeepSeek-V3 pre-tokenizer) on reasoning_corpus() with the special
// token strings taken out, except every merge whose result holds an ASCII digit, so that each digit is
// one token (sums and comparisons are then made digit by digit). Digits are split from other characters
// by the pre-tokenizer, so no other merge depends on a dropped one. Training asks for 1100 more tokens
// than `vocab` (the most digit tokens there can be: 100 of two digits, 1000 of three) so that dropping
// them still leaves `vocab` when the corpus has that many merges; the default corpus runs out of pairs near
// 410 tokens, so a larger `vocab` gets that many. Byte-level: any UTF-8 text round-trips.
inline bpe_tokenizer reasoning_tokenizer(int vocab) {
  using json = nlohmann::json;
  const std::vector<std::string> specials = reasoning_special_tokens();
  const int base = static_cast<int>(specials.size()) + 256;
  require(vocab >= base, "reasoning_tokenizer: the vocabulary needs at least " + std::to_string(base) +
                             " ids (6 special tokens and 256 bytes), found " + std::to_string(vocab));
  std::vector<std::string> texts = reasoning_corpus();
  for (std::string& t : texts)
    for (const std::string& s : specials)
      for (std::size_t at = t.find(s); at != std::string::npos; at = t.find(s, at)) t.erase(at, s.size());
  constexpr int digit_tokens = 1100;
  const bpe_tokenizer full = bpe_tokenizer::train(texts, vocab + digit_tokens, specials, pretokenizer::deepseek_v3);

  json file = json::parse(full.to_json());
  json& model = file["model"];
  json kept = json::object();
  for (const auto& [token, id] : model["vocab"].items())
    if (id.get<int>() < base) kept[token] = id;
  json merges = json::array();
  for (const auto& [left, right] : full.merges()) {
    const std::string merged = left + right;
    if (merged.find_first_of("0123456789") != std::string::npos) continue;
    if (!kept.contains(merged)) {
      if (static_cast<int>(kept.size()) >= vocab) break;
      kept[merged] = static_cast<int>(kept.size());
    }
    merges.push_back(json::array({left, right}));
  }
  model["vocab"] = std::move(kept);
  model["merges"] = std::move(merges);
  return bpe_tokenizer::from_json(file.dump(), "reasoning_tokenizer(" + std::to_string(vocab) + ")");
}

}  // namespace dsx::post
