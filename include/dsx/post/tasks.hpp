// Verifiable reasoning tasks for the R1 recipe, their verifier and the rule rewards.
//
// Four tasks a tiny model can learn, each with an exact verifier (no learned reward model, as in R1):
//   addition   "What is 457 + 86?"                      -> "543"
//   sort42     "Sort 17, 3, 58 and put 42 in front."    -> "42, 3, 17, 58"
//   countdown  "Use 3, 7, 5 to make 26 with + - *."     -> "3*7+5" (any correct expression counts)
//   nim        "Nim piles 3 5 7. Your move?"            -> "take 1 from pile 1" (any winning move counts)
// Every problem carries a reference chain of thought in English. Texts are kept short: with a byte-level
// tokenizer that gives each digit its own token, a whole conversation stays under about 120 tokens.
//
// Determinism and splits: problem `index` of a split under `seed` is drawn from the counter-based RNG
// (core/rng.hpp) on a stream of its own, so any problem can be regenerated alone. A problem belongs to the
// test split when a fixed hash of its question (independent of the seed) falls in the test fifth; the
// generator draws candidates until one lands in the requested split, so the train and test splits of any
// seeds never share a question.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dsx/core/error.hpp"
#include "dsx/core/rng.hpp"
#include "dsx/data/tokenizer.hpp"  // tokenizer_detail::next_code_point (UTF-8)
#include "dsx/post/special_tokens.hpp"

namespace dsx::post {

enum class task_kind { addition, sort42, countdown, nim };
inline constexpr std::array<task_kind, 4> all_tasks{task_kind::addition, task_kind::sort42, task_kind::countdown,
                                                    task_kind::nim};

inline std::string_view task_name(task_kind kind) {
  switch (kind) {
    case task_kind::addition: return "addition";
    case task_kind::sort42: return "sort42";
    case task_kind::countdown: return "countdown";
    case task_kind::nim: return "nim";
  }
  throw error("task_name: task_kind value " + std::to_string(static_cast<int>(kind)) + " is not a task");
}

// The task named `name`; a dsx::error listing the valid names otherwise.
inline task_kind parse_task(std::string_view name) {
  std::string valid;
  for (const task_kind k : all_tasks) {
    if (task_name(k) == name) return k;
    valid += valid.empty() ? "" : ", ";
    valid += task_name(k);
  }
  throw error("unknown task '" + std::string(name) + "': expected one of " + valid);
}

enum class split { train, test };

struct task_problem {
  task_kind kind = task_kind::addition;
  split part = split::train;
  std::uint64_t index = 0;
  std::string question;      // the user message
  std::string answer;        // one canonical correct answer
  std::string reasoning;     // a reference chain of thought in English (one line)
  std::vector<int> numbers;  // addition: the operands; sort42: the list; countdown: the numbers; nim: the piles
  int target = 0;            // countdown's target (0 otherwise)
};

namespace task_detail {

// Draws from one stream of the counter-based RNG.
class draw {
 public:
  draw(std::uint64_t seed, std::uint64_t stream) : seed_(seed), stream_(stream) {}
  std::uint64_t bits() { return random_bits(seed_, stream_, index_++); }
  // Uniform in [lo, hi] (the modulo bias, below 2^-56 for these ranges, does not matter here).
  int between(int lo, int hi) { return lo + static_cast<int>(bits() % static_cast<std::uint64_t>(hi - lo + 1)); }
  double uniform() { return static_cast<double>(bits() >> 11) * 0x1.0p-53; }

 private:
  std::uint64_t seed_, stream_, index_ = 0;
};

inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// The last line of `s`, trimmed.
inline std::string_view final_line(std::string_view s) {
  s = trim(s);
  const std::size_t nl = s.rfind('\n');
  return trim(nl == std::string_view::npos ? s : s.substr(nl + 1));
}

// A decimal integer without sign or leading zeros, at most 9 digits.
inline std::optional<int> parse_int(std::string_view s) {
  if (s.empty() || s.size() > 9 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  int v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

// Separated list "a, b, c" (and "a and b" for the last one when `last_and`).
inline std::string join_numbers(const std::vector<int>& v, bool last_and) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) s += last_and && i + 1 == v.size() ? " and " : ", ";
    s += std::to_string(v[i]);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Words and scripts (the language-consistency reward).

enum class char_class { separator, letter_target, letter_other, other };

// Classifies the character at s[i] and advances i past it. Separators: white space, ASCII punctuation and
// symbols, control characters, and the non-ASCII space/punctuation/symbol blocks below. Target letters:
// ASCII letters. Every other non-ASCII character is a letter of another script; so are ill-formed bytes and
// U+FFFD (what a decoder makes of broken UTF-8), so that garbage never counts as English. ASCII digits
// are `other`: part of a word but not a letter.
inline char_class next_char(std::string_view s, std::size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {
    ++i;
    if ((b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z')) return char_class::letter_target;
    if (b >= '0' && b <= '9') return char_class::other;
    return char_class::separator;
  }
  const std::int32_t cp = tokenizer_detail::next_code_point(s, i);
  if (cp < 0) {
    ++i;
    return char_class::letter_other;
  }
  const auto in = [cp](std::int32_t lo, std::int32_t hi) { return cp >= lo && cp <= hi; };
  const bool separator = in(0x80, 0xBF) || cp == 0xD7 || cp == 0xF7 ||  // Latin-1 controls, punctuation, × ÷
                         in(0x2000, 0x206F) ||                          // general punctuation and spaces
                         in(0x20A0, 0x20CF) ||                          // currency symbols
                         in(0x2190, 0x2BFF) ||                          // arrows, mathematical operators, symbols
                         in(0x3000, 0x303F) ||                          // CJK symbols and punctuation
                         in(0xFE30, 0xFE4F) ||                          // CJK compatibility forms
                         in(0xFF00, 0xFF0F) || in(0xFF1A, 0xFF20) || in(0xFF3B, 0xFF40) ||
                         in(0xFF5B, 0xFF65);  // fullwidth punctuation
  return separator ? char_class::separator : char_class::letter_other;
}

// Calls word(begin, end, in_target_script) for each word of `s`: a maximal run of non-separator
// characters with at least one letter; it is in the target script when all its letters are ASCII.
template <class Word>
void for_each_word(std::string_view s, Word&& word) {
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t begin = i;
    std::size_t next = i;
    char_class c = next_char(s, next);
    bool letters = false, target = true;
    while (c != char_class::separator) {
      letters = letters || c == char_class::letter_target || c == char_class::letter_other;
      target = target && c != char_class::letter_other;
      i = next;
      if (i >= s.size()) break;
      c = next_char(s, next);
    }
    if (i == begin) i = next;  // a separator
    else if (letters) word(begin, i, target);
  }
}

// ---------------------------------------------------------------------------------------------------
// Countdown expressions.

// Integers, + - * and parentheses with the usual precedence, spaces between tokens; nothing else (no
// unary minus, no division). Values are int64 and an overflow rejects the expression.
class expression_parser {
 public:
  struct result {
    std::int64_t value;
    std::vector<int> numbers;  // the integers used, in order of appearance
  };
  static std::optional<result> parse(std::string_view text) {
    expression_parser p(text);
    const std::optional<std::int64_t> v = p.sum();
    p.skip_space();
    if (!v || p.i_ != text.size()) return std::nullopt;
    return result{*v, std::move(p.numbers_)};
  }

 private:
  static constexpr int max_depth = 32;
  explicit expression_parser(std::string_view s) : s_(s) {}

  void skip_space() {
    while (i_ < s_.size() && s_[i_] == ' ') ++i_;
  }
  bool accept(char c) {
    skip_space();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  std::optional<std::int64_t> sum() {
    std::optional<std::int64_t> v = product();
    while (v) {
      const bool plus = accept('+');
      if (!plus && !accept('-')) break;
      const std::optional<std::int64_t> rhs = product();
      if (!rhs) return std::nullopt;
      std::int64_t out = 0;
      if (plus ? __builtin_add_overflow(*v, *rhs, &out) : __builtin_sub_overflow(*v, *rhs, &out)) return std::nullopt;
      v = out;
    }
    return v;
  }
  std::optional<std::int64_t> product() {
    std::optional<std::int64_t> v = factor();
    while (v && accept('*')) {
      const std::optional<std::int64_t> rhs = factor();
      std::int64_t out = 0;
      if (!rhs || __builtin_mul_overflow(*v, *rhs, &out)) return std::nullopt;
      v = out;
    }
    return v;
  }
  std::optional<std::int64_t> factor() {
    if (accept('(')) {
      if (++depth_ > max_depth) return std::nullopt;
      const std::optional<std::int64_t> v = sum();
      --depth_;
      if (!v || !accept(')')) return std::nullopt;
      return v;
    }
    skip_space();
    const std::size_t begin = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    const std::optional<int> n = parse_int(s_.substr(begin, i_ - begin));
    if (!n) return std::nullopt;
    numbers_.push_back(*n);
    return *n;
  }

  std::string_view s_;
  std::size_t i_ = 0;
  int depth_ = 0;
  std::vector<int> numbers_;
};

// x o1 y o2 z over three numbers, grouped ((x o1 y) o2 z) or, with `right`, (x o1 (y o2 z)).
struct expression3 {
  int x, y, z;
  char o1, o2;
  bool right;

  static std::int64_t apply(std::int64_t a, char op, std::int64_t b) { return op == '+' ? a + b : op == '-' ? a - b : a * b; }
  std::int64_t value() const { return right ? apply(x, o1, apply(y, o2, z)) : apply(apply(x, o1, y), o2, z); }
  // The expression without parentheses when it reads the same value that way, else with them.
  std::string text() const {
    const std::string a = std::to_string(x), b = std::to_string(y), c = std::to_string(z);
    const std::string flat = a + o1 + b + o2 + c;
    if (expression_parser::parse(flat)->value == value()) return flat;
    return right ? a + o1 + "(" + b + o2 + c + ")" : "(" + a + o1 + b + ")" + o2 + c;
  }
  // A random expression over `n` (a random order, operators and grouping).
  static expression3 random(draw& r, const std::vector<int>& n) {
    static constexpr std::array<std::array<int, 3>, 6> orders{{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}};
    static constexpr std::array<char, 3> ops{'+', '-', '*'};
    const auto& o = orders[static_cast<std::size_t>(r.between(0, 5))];
    const char o1 = ops[static_cast<std::size_t>(r.between(0, 2))], o2 = ops[static_cast<std::size_t>(r.between(0, 2))];
    return {n[std::size_t(o[0])], n[std::size_t(o[1])], n[std::size_t(o[2])], o1, o2, r.between(0, 1) == 1};
  }
};

// ---------------------------------------------------------------------------------------------------
// Nim.

struct nim_move {
  int pile;  // 1-based
  int take;
};

inline int nim_sum(const std::vector<int>& piles) {
  int x = 0;
  for (const int p : piles) x ^= p;
  return x;
}

// The answer grammar: exactly "take K from pile P" (single spaces, K and P decimal without leading zeros).
inline std::optional<nim_move> parse_nim_move(std::string_view line) {
  constexpr std::string_view take = "take ", from = " from pile ";
  if (line.substr(0, take.size()) != take) return std::nullopt;
  line.remove_prefix(take.size());
  const std::size_t at = line.find(from);
  if (at == std::string_view::npos) return std::nullopt;
  const std::optional<int> k = parse_int(line.substr(0, at)), p = parse_int(line.substr(at + from.size()));
  if (!k || !p) return std::nullopt;
  return nim_move{*p, *k};
}

inline std::string nim_move_text(nim_move m) {
  return "take " + std::to_string(m.take) + " from pile " + std::to_string(m.pile);
}

inline bool nim_legal(const std::vector<int>& piles, nim_move m) {
  return m.pile >= 1 && m.pile <= static_cast<int>(piles.size()) && m.take >= 1 &&
         m.take <= piles[static_cast<std::size_t>(m.pile - 1)];
}

// The first pile (lowest index) whose reduction leaves nim-sum 0, or nullopt when the nim-sum is 0.
inline std::optional<nim_move> nim_winning_move(const std::vector<int>& piles) {
  const int x = nim_sum(piles);
  if (x == 0) return std::nullopt;
  for (std::size_t i = 0; i < piles.size(); ++i)
    if ((piles[i] ^ x) < piles[i]) return nim_move{static_cast<int>(i) + 1, piles[i] - (piles[i] ^ x)};
  throw error("nim_winning_move: no pile reduces the nim-sum (unreachable for non-negative piles)");
}

inline std::string nim_question(const std::vector<int>& piles) {
  std::string q = "Nim piles";
  for (const int p : piles) q += " " + std::to_string(p);
  return q + ". Your move?";
}

// ---------------------------------------------------------------------------------------------------
// Problem generators. Each builds one candidate from the draws of `r`.

inline task_problem addition_problem(draw& r) {
  const auto operand = [&r] { return r.between(0, 1) ? r.between(100, 999) : r.between(10, 99); };
  const int a = operand(), b = operand();
  task_problem p;
  p.question = "What is " + std::to_string(a) + " + " + std::to_string(b) + "?";
  p.answer = std::to_string(a + b);
  p.numbers = {a, b};
  // Column by column from the right: "7+6=13, write 3 carry 1. 4+1=5, write 5."
  int carry = 0;
  for (int x = a, y = b; x > 0 || y > 0; x /= 10, y /= 10) {
    std::vector<int> terms;
    if (x > 0) terms.push_back(x % 10);
    if (y > 0) terms.push_back(y % 10);
    if (carry) terms.push_back(carry);
    int s = 0;
    std::string step;
    for (const int t : terms) {
      step += (step.empty() ? "" : "+") + std::to_string(t);
      s += t;
    }
    if (terms.size() > 1) step += "=" + std::to_string(s);
    carry = s / 10;
    step += ", write " + std::to_string(s % 10) + (carry ? " carry 1." : ".");
    p.reasoning += (p.reasoning.empty() ? "" : " ") + step;
  }
  if (carry) p.reasoning += " Write the carry 1.";
  return p;
}

inline task_problem sort42_problem(draw& r) {
  const int count = r.between(3, 5);
  std::vector<int> list;
  while (static_cast<int>(list.size()) < count) {
    const int v = r.between(1, 99);
    if (v != 42 && std::find(list.begin(), list.end(), v) == list.end()) list.push_back(v);
  }
  std::vector<int> sorted = list;
  std::sort(sorted.begin(), sorted.end());
  task_problem p;
  p.question = "Sort " + join_numbers(list, false) + " and put 42 in front.";
  std::vector<int> answer{42};
  answer.insert(answer.end(), sorted.begin(), sorted.end());
  p.answer = join_numbers(answer, false);
  p.reasoning = "Smallest is " + std::to_string(sorted[0]) + ".";
  for (std::size_t i = 1; i < sorted.size(); ++i) p.reasoning += " Next is " + std::to_string(sorted[i]) + ".";
  p.reasoning += " Put 42 in front.";
  p.numbers = std::move(list);
  return p;
}

inline task_problem countdown_problem(draw& r) {
  std::vector<int> n{r.between(1, 12), r.between(1, 12), r.between(1, 12)};
  expression3 e = expression3::random(r, n);
  while (e.value() < 1 || e.value() > 150) e = expression3::random(r, n);
  task_problem p;
  p.target = static_cast<int>(e.value());
  p.question = "Use " + join_numbers(n, false) + " to make " + std::to_string(p.target) + " with + - *.";
  p.answer = e.text();
  // One or two wrong tries, then the right one. Some expression always misses the target (a+b+c and
  // a-b-c differ), so the loop ends.
  const int wrong = r.between(1, 2);
  for (int k = 0; k < wrong;) {
    const expression3 w = expression3::random(r, n);
    if (w.value() == p.target) continue;
    p.reasoning += w.text() + "=" + std::to_string(w.value()) + ", no. ";
    ++k;
  }
  p.reasoning += p.answer + "=" + std::to_string(p.target) + ", yes.";
  p.numbers = std::move(n);
  return p;
}

// The problem for a nim position with a non-zero nim-sum.
inline task_problem nim_problem(std::vector<int> piles) {
  const int x = nim_sum(piles);
  require(x != 0, "nim_problem: the position " + nim_question(piles) + " has nim-sum 0 (no winning move)");
  const nim_move m = *nim_winning_move(piles);
  task_problem p;
  p.question = nim_question(piles);
  p.answer = nim_move_text(m);
  // "3 xor 5 = 6. 6 xor 7 = 1. Nim-sum 1. Pile 1: 3 xor 1 = 2 < 3, take 1."
  int acc = piles[0];
  for (std::size_t i = 1; i < piles.size(); ++i) {
    p.reasoning += std::to_string(acc) + " xor " + std::to_string(piles[i]) + " = " + std::to_string(acc ^ piles[i]) + ". ";
    acc ^= piles[i];
  }
  p.reasoning += "Nim-sum " + std::to_string(x) + ".";
  for (int i = 1; i <= m.pile; ++i) {
    const int v = piles[static_cast<std::size_t>(i - 1)];
    p.reasoning += " Pile " + std::to_string(i) + ": " + std::to_string(v) + " xor " + std::to_string(x) + " = " +
                   std::to_string(v ^ x);
    p.reasoning += i < m.pile ? ", too big." : " < " + std::to_string(v) + ", take " + std::to_string(m.take) + ".";
  }
  p.numbers = std::move(piles);
  return p;
}

// 2 or 3 piles of 1..7 objects with a non-zero nim-sum (343 positions).
inline task_problem nim_random_problem(draw& r) {
  for (;;) {
    std::vector<int> piles(static_cast<std::size_t>(r.between(2, 3)));
    for (int& v : piles) v = r.between(1, 7);
    if (nim_sum(piles) != 0) return nim_problem(std::move(piles));
  }
}

// The split of a question: a fixed FNV-1a hash (then SplitMix64), one fifth to test.
inline split split_of(std::string_view question) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : question) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return splitmix64(h) % 5 == 0 ? split::test : split::train;
}

}  // namespace task_detail

// Problem `index` of a task's split under `seed`; see the top of this file. The stream of the draws is
// (index, kind, part); candidates are drawn until one falls in `part` (a fifth of the draws do for test,
// four fifths for train).
inline task_problem make_problem(task_kind kind, split part, std::uint64_t index, std::uint64_t seed) {
  namespace td = task_detail;
  (void)task_name(kind);  // refuses a value outside the enumeration
  td::draw r(seed, (index << 3) | (static_cast<std::uint64_t>(kind) << 1) | static_cast<std::uint64_t>(part));
  for (;;) {
    task_problem p;
    switch (kind) {
      case task_kind::addition: p = td::addition_problem(r); break;
      case task_kind::sort42: p = td::sort42_problem(r); break;
      case task_kind::countdown: p = td::countdown_problem(r); break;
      case task_kind::nim: p = td::nim_random_problem(r); break;
    }
    if (td::split_of(p.question) != part) continue;
    p.kind = kind;
    p.part = part;
    p.index = index;
    return p;
  }
}

// The R1 response format: "<think>\n{reasoning}\n</think>\n{answer}".
inline std::string r1_response(std::string_view reasoning, std::string_view answer) {
  std::string s;
  s.append(think_open).append("\n").append(reasoning).append("\n").append(think_close).append("\n").append(answer);
  return s;
}

// The untagged chain-of-thought form: "{reasoning}\n{answer}". verify scores it correct (its answer is the
// whole response, whose final line is the answer) and not formatted.
inline std::string untagged_response(std::string_view reasoning, std::string_view answer) {
  std::string s(reasoning);
  return s.append("\n").append(answer);
}

struct verdict {
  bool formatted = false;
  bool correct = false;
  double language = 0;
  std::string thinking;
  std::string answer;
};

// The fraction of the words of `reasoning` written in the target script (ASCII Latin): 1.0 when the trimmed
// text is non-empty but has no word (only digits and symbols), 0 when it is empty. Words and scripts are
// defined at task_detail::for_each_word.
inline double language_fraction(std::string_view reasoning) {
  if (task_detail::trim(reasoning).empty()) return 0;
  std::size_t words = 0, target = 0;
  task_detail::for_each_word(reasoning, [&](std::size_t, std::size_t, bool in_target) {
    ++words;
    target += in_target ? 1 : 0;
  });
  return words == 0 ? 1.0 : static_cast<double>(target) / static_cast<double>(words);
}

// The answer part of a response: the text after the last "</think>" if there is one, else the whole
// response; trimmed.
inline std::string_view answer_part(std::string_view response) {
  const std::size_t close = response.rfind(think_close);
  return task_detail::trim(close == std::string_view::npos ? response : response.substr(close + think_close.size()));
}

// Scores a response (the text generated after the assistant token, without EOS).
//   formatted: optional white space, "<think>", reasoning (possibly empty), "</think>", then a non-empty
//              answer; exactly one "<think>" and one "</think>".
//   answer:    answer_part(response). Correctness reads only the answer's final line, so an answer alone,
//              an R1 response "<think>\n..\n</think>\n{answer}" and the untagged form "{reasoning}\n{answer}"
//              (untagged_response) are all read the same way; the untagged one is correct but not formatted.
//   correct (on that final line):
//     addition   exactly the decimal sum (no sign, no leading zeros, nothing else);
//     sort42     split at commas and spaces (empty pieces ignored), every piece a decimal number, and the
//                numbers are 42 then the list in increasing order;
//     countdown  an expression of integers, + - * and parentheses (expression_parser) using exactly the
//                problem's numbers as a multiset and evaluating to the target;
//     nim        "take K from pile P" (1-based), a legal move that leaves nim-sum 0.
//   thinking:  the text between the tags, trimmed, when formatted (else empty);
//   language:  language_fraction(thinking).
// A problem whose numbers do not fit its task is a dsx::error.
inline verdict verify(const task_problem& problem, std::string_view response) {
  namespace td = task_detail;
  verdict v;
  v.answer = std::string(answer_part(response));

  const std::size_t open = response.find(think_open);
  const std::size_t close = response.find(think_close);
  if (open != std::string_view::npos && close != std::string_view::npos && open < close &&
      td::trim(response.substr(0, open)).empty() &&
      response.find(think_open, open + think_open.size()) == std::string_view::npos &&
      response.find(think_close, close + think_close.size()) == std::string_view::npos && !v.answer.empty()) {
    v.formatted = true;
    v.thinking = std::string(td::trim(response.substr(open + think_open.size(), close - open - think_open.size())));
    v.language = language_fraction(v.thinking);
  }

  const std::string_view line = td::final_line(v.answer);
  const std::vector<int>& n = problem.numbers;
  const auto need = [&](bool ok, const char* what) {
    require(ok, "verify: the " + std::string(task_name(problem.kind)) + " problem needs " + what + ", found " +
                    std::to_string(n.size()) + " numbers");
  };
  switch (problem.kind) {
    case task_kind::addition: {
      need(n.size() == 2, "2 numbers (the operands)");
      v.correct = td::parse_int(line) == n[0] + n[1];
      break;
    }
    case task_kind::sort42: {
      need(!n.empty(), "the list to sort");
      std::vector<int> expected = n;
      std::sort(expected.begin(), expected.end());
      expected.insert(expected.begin(), 42);
      std::vector<int> got;
      bool numeric = true;
      std::size_t i = 0;
      while (i < line.size() && numeric) {
        if (line[i] == ',' || line[i] == ' ') { ++i; continue; }
        const std::size_t end = std::min(line.find_first_of(", ", i), line.size());
        const std::optional<int> x = td::parse_int(line.substr(i, end - i));
        numeric = x.has_value();
        if (x) got.push_back(*x);
        i = end;
      }
      v.correct = numeric && got == expected;
      break;
    }
    case task_kind::countdown: {
      need(n.size() == 3, "3 numbers");
      std::optional<td::expression_parser::result> e = td::expression_parser::parse(line);
      if (!e) break;
      std::vector<int> want = n;
      std::sort(want.begin(), want.end());
      std::sort(e->numbers.begin(), e->numbers.end());
      v.correct = e->numbers == want && e->value == problem.target;
      break;
    }
    case task_kind::nim: {
      need(!n.empty(), "at least one pile");
      const std::optional<td::nim_move> m = td::parse_nim_move(line);
      if (!m || !td::nim_legal(n, *m)) break;
      std::vector<int> after = n;
      after[static_cast<std::size_t>(m->pile - 1)] -= m->take;
      v.correct = td::nim_sum(after) == 0;
      break;
    }
  }
  return v;
}

// The answer a response's final line gives, as votes compare answers (cons@k, post/evaluate.hpp): the line
// itself, except that countdown expressions using the same numbers (as a multiset) and reaching the same
// value are one answer whatever their order and parentheses ("3*7+5" and "5+7*3"), as math answers are
// compared after normalisation. verify() reads no more than this key, so two responses with the same key
// are both correct or both wrong.
inline std::string answer_key(const task_problem& problem, std::string_view line) {
  if (problem.kind == task_kind::countdown)
    if (std::optional<task_detail::expression_parser::result> e = task_detail::expression_parser::parse(line)) {
      std::sort(e->numbers.begin(), e->numbers.end());
      std::string key = "value " + std::to_string(e->value) + " from";
      for (const int x : e->numbers) key += " " + std::to_string(x);
      return key;
    }
  return std::string(line);
}

// R1's rule reward: accuracy·correct + format·formatted + language·language fraction.
struct reward_weights {
  double accuracy = 1.0, format = 1.0, language = 0.0;
};

inline double rule_reward(const verdict& v, const reward_weights& w) {
  return w.accuracy * (v.correct ? 1.0 : 0.0) + w.format * (v.formatted ? 1.0 : 0.0) + w.language * v.language;
}

// ---------------------------------------------------------------------------------------------------
// Nim as a game.

struct nim_game_result {
  bool won = false;      // the policy took the last object
  int moves = 0;         // legal moves played, by both sides
  bool illegal = false;  // the game ended on an unparseable or illegal move of the policy (a loss)
};

// Plays nim from `piles` (non-negative, at least one object), the policy first. Each turn the policy gets
// the nim_question of the non-empty piles in their order (an emptied pile leaves the question, as in the
// problems, which never hold one; pile P of the answer is the P-th pile listed) and answers with a
// response whose answer_part's final line is read as "take K from pile P"; an unparseable or illegal move
// loses. The opponent is perfect: it moves to nim-sum 0 when it can, else takes 1 from the
// largest pile (the first one on a tie). Whoever takes the last object wins, so from a position with a
// non-zero nim-sum a perfect policy always wins.
inline nim_game_result play_nim(std::vector<int> piles, const std::function<std::string(const std::string&)>& policy) {
  namespace td = task_detail;
  require(!piles.empty(), "play_nim: expected at least one pile, found none");
  for (const int p : piles) require(p >= 0, "play_nim: expected non-negative piles, found " + std::to_string(p));
  const auto empty = [&] { return std::all_of(piles.begin(), piles.end(), [](int p) { return p == 0; }); };
  require(!empty(), "play_nim: expected at least one object on the piles, found " + td::nim_question(piles));
  nim_game_result result;
  std::vector<std::size_t> listed;  // the indices of the non-empty piles, in order
  std::vector<int> shown;           // their sizes: the position the policy sees
  for (;;) {
    listed.clear();
    shown.clear();
    for (std::size_t i = 0; i < piles.size(); ++i)
      if (piles[i] > 0) {
        listed.push_back(i);
        shown.push_back(piles[i]);
      }
    const std::string response = policy(td::nim_question(shown));
    const std::optional<td::nim_move> m = td::parse_nim_move(td::final_line(answer_part(response)));
    if (!m || !td::nim_legal(shown, *m)) {
      result.illegal = true;
      return result;
    }
    piles[listed[static_cast<std::size_t>(m->pile - 1)]] -= m->take;
    ++result.moves;
    if (empty()) {
      result.won = true;
      return result;
    }
    const std::optional<td::nim_move> reply = td::nim_winning_move(piles);
    const auto largest = std::max_element(piles.begin(), piles.end());
    const td::nim_move o = reply ? *reply : td::nim_move{static_cast<int>(largest - piles.begin()) + 1, 1};
    piles[static_cast<std::size_t>(o.pile - 1)] -= o.take;
    ++result.moves;
    if (empty()) return result;
  }
}

}  // namespace dsx::post
