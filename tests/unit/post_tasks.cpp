// The R1 recipe's tasks, verifier, rule rewards, nim game, corpus, cold-start set and tokenizer
// (post/tasks.hpp, post/reasoning_data.hpp).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "dsx/post/reasoning_data.hpp"
#include "dsx/post/tasks.hpp"
#include "support/files.hpp"

using Catch::Matchers::Contains;
using dsx::test::error_of;
using namespace dsx::post;

namespace {

task_problem crafted(task_kind kind, std::vector<int> numbers, int target = 0) {
  task_problem p;
  p.kind = kind;
  p.numbers = std::move(numbers);
  p.target = target;
  return p;
}

bool correct(const task_problem& p, const std::string& response) { return verify(p, response).correct; }

// The piles of a nim question "Nim piles 3 0 6. Your move?".
std::vector<int> piles_of(const std::string& question) {
  std::istringstream in(question.substr(std::string("Nim piles ").size()));
  std::vector<int> piles;
  for (int v; in >> v;) piles.push_back(v);
  return piles;
}

}  // namespace

TEST_CASE("task names round-trip and unknown names list the valid ones", "[post][tasks]") {
  for (const task_kind k : all_tasks) CHECK(parse_task(task_name(k)) == k);
  CHECK(task_name(task_kind::sort42) == "sort42");
  CHECK_THAT(error_of([] { parse_task("chess"); }), Contains("'chess'") && Contains("addition, sort42, countdown, nim"));
}

TEST_CASE("verify: the R1 format", "[post][tasks]") {
  const task_problem p = crafted(task_kind::addition, {457, 86});

  const verdict ok = verify(p, "<think>\n7+6=13, write 3 carry 1.\n</think>\n543");
  CHECK(ok.formatted);
  CHECK(ok.correct);
  CHECK(ok.thinking == "7+6=13, write 3 carry 1.");
  CHECK(ok.answer == "543");
  CHECK(ok.language == 1.0);

  CHECK(verify(p, " \n\t<think>x</think>543").formatted);  // white space before <think>
  const verdict empty_thinking = verify(p, "<think></think>543");
  CHECK(empty_thinking.formatted);
  CHECK(empty_thinking.thinking.empty());
  CHECK(empty_thinking.language == 0);

  struct bad_case {
    const char* response;
    bool correct;
    const char* answer;
  };
  const std::vector<bad_case> unformatted{
      {"543", true, "543"},                                     // no tags
      {"<think>\n7+6=13\n543", true, "<think>\n7+6=13\n543"},   // no </think>: the answer is everything
      {"7+6=13\n</think>\n543", true, "543"},                   // no <think>
      {"<think><think>x</think>543", true, "543"},              // two <think>
      {"<think>x</think>y</think>543", true, "543"},            // two </think>: the answer follows the last
      {"</think>x<think>543", false, "x<think>543"},            // wrong order
      {"<think>x</think>\n  \n", false, ""},                    // empty answer
      {"Sure. <think>x</think>543", true, "543"},               // text before <think>
  };
  for (const bad_case& c : unformatted) {
    INFO(c.response);
    const verdict v = verify(p, c.response);
    CHECK_FALSE(v.formatted);
    CHECK(v.correct == c.correct);
    CHECK(v.answer == c.answer);
    CHECK(v.thinking.empty());
    CHECK(v.language == 0);
  }

  // The corpus's untagged form is correct but not formatted.
  const verdict untagged = verify(p, untagged_response("7+6=13, write 3 carry 1.", "543"));
  CHECK(untagged.correct);
  CHECK_FALSE(untagged.formatted);
}

TEST_CASE("verify: addition answers", "[post][tasks]") {
  const task_problem p = crafted(task_kind::addition, {457, 86});
  CHECK(correct(p, "543"));
  CHECK(correct(p, "  543 \n"));
  CHECK(correct(p, "7+6=13\n543"));  // the final line is the answer
  for (const char* wrong : {"544", "0543", "+543", "543.", "5 43", "The sum is 543", "543\nmore", ""}) {
    INFO(wrong);
    CHECK_FALSE(correct(p, wrong));
  }
  CHECK_THAT(error_of([] { verify(crafted(task_kind::addition, {1}), "1"); }),
             Contains("addition problem needs 2 numbers") && Contains("found 1"));
}

TEST_CASE("verify: sort42 answers", "[post][tasks]") {
  const task_problem p = crafted(task_kind::sort42, {17, 3, 58});
  for (const char* right : {"42, 3, 17, 58", "42 3 17 58", "42,3,17,58", " 42 ,3 , 17,58 "}) {
    INFO(right);
    CHECK(correct(p, right));
  }
  for (const char* wrong : {"3, 17, 58", "42, 3, 58, 17", "42, 3, 17, 58, 99", "42, 3, 17, 58.", "42, 03, 17, 58",
                            "42, 3, 17", "42, three, 17, 58", "42, 3, 17, 58, 42"}) {
    INFO(wrong);
    CHECK_FALSE(correct(p, wrong));
  }
}

TEST_CASE("verify: countdown expressions", "[post][tasks]") {
  const task_problem p = crafted(task_kind::countdown, {3, 7, 5}, 26);
  for (const char* right : {"3*7+5", "5+7*3", " 3 * 7 + 5 ", "(3*7)+5", "((3)*(7))+5", "5+(3*7)"}) {
    INFO(right);
    CHECK(correct(p, right));
  }
  for (const char* wrong : {"3*(7+5)",      // value 36
                            "3*7+5+0",      // a number too many
                            "21+5",         // wrong multiset
                            "3*7+3",        // wrong multiset, right count
                            "3*7+5=26",     // not an expression
                            "3*7+", "3x7+5", "(3*7+5", "3*7)+5", "-3*7+5+52", "3*7 5", "3*07+5", "3*7/1+5", ""}) {
    INFO(wrong);
    CHECK_FALSE(correct(p, wrong));
  }
  // Parentheses change the value.
  const task_problem q = crafted(task_kind::countdown, {8, 2, 12}, 112);
  CHECK(correct(q, "(2+12)*8"));
  CHECK(correct(q, "8*(12+2)"));
  CHECK_FALSE(correct(q, "2+12*8"));
  // Overflow and deep nesting are rejected, not undefined.
  CHECK_FALSE(correct(q, "999999999*999999999*999999999*999999999"));
  CHECK_FALSE(correct(q, std::string(200, '(') + "2" + std::string(200, ')') + "+12*8"));
}

TEST_CASE("verify: nim moves", "[post][tasks]") {
  const task_problem p = crafted(task_kind::nim, {3, 5, 7});  // nim-sum 1: three winning moves
  for (const char* right : {"take 1 from pile 1", "take 1 from pile 2", "take 1 from pile 3"}) CHECK(correct(p, right));
  for (const char* wrong : {"take 2 from pile 1",   // legal, nim-sum stays non-zero
                            "take 4 from pile 1",   // more than the pile
                            "take 1 from pile 4", "take 0 from pile 1", "take 1 from pile 0", "Take 1 from pile 1",
                            "take 1 from pile 01", "take 1 from pile 1.", "pile 1 take 1", "take  1 from pile 1"}) {
    INFO(wrong);
    CHECK_FALSE(correct(p, wrong));
  }
}

TEST_CASE("language fraction and rule rewards", "[post][tasks]") {
  // Words: Write, carry, 进位, 写, then, x2, and (7+6=13 and 3 are no words): 5 of 7 in ASCII Latin.
  const std::string reasoning = "Write 3, carry 1. 进位 写 then x2 and 7+6=13.";
  CHECK(language_fraction(reasoning) == Approx(5.0 / 7.0));
  // A word mixing scripts is not in the target script; fullwidth punctuation separates words.
  CHECK(language_fraction("write进位 world，你好") == Approx(1.0 / 3.0));
  CHECK(language_fraction("abc \xff") == Approx(0.5));  // an ill-formed byte is never English
  CHECK(language_fraction("7+6=13, 3.") == 1.0);       // no word
  CHECK(language_fraction(" \n ") == 0);

  const task_problem p = crafted(task_kind::addition, {457, 86});
  const verdict mixed = verify(p, r1_response(reasoning, "543"));
  CHECK(mixed.formatted);
  CHECK(mixed.correct);
  CHECK(mixed.language == Approx(5.0 / 7.0));
  CHECK(rule_reward(mixed, {}) == 2.0);
  CHECK(rule_reward(mixed, {1.0, 1.0, 0.7}) == Approx(2.0 + 0.5));
  CHECK(rule_reward(verify(p, "543"), {0.5, 0.25, 1.0}) == 0.5);
  CHECK(rule_reward(verify(p, "<think>a</think>544"), {0.5, 0.25, 1.0}) == 1.25);
}

TEST_CASE("the reference reasoning and answer of every task verify", "[post][tasks]") {
  for (const task_kind k : all_tasks)
    for (const split part : {split::train, split::test})
      for (std::uint64_t i = 0; i < 100; ++i) {
        const task_problem p = make_problem(k, part, i, 11);
        INFO(p.question << " -> " << p.answer << " | " << p.reasoning);
        CHECK(p.kind == k);
        CHECK(p.part == part);
        CHECK(p.index == i);
        const verdict v = verify(p, r1_response(p.reasoning, p.answer));
        CHECK(v.formatted);
        CHECK(v.correct);
        CHECK(v.language == 1.0);
        CHECK(v.thinking == p.reasoning);
        CHECK(verify(p, p.answer).correct);
        CHECK(p.reasoning.find('\n') == std::string::npos);
      }
}

TEST_CASE("problems: ranges, disjoint splits, determinism", "[post][tasks]") {
  for (const task_kind k : all_tasks) {
    INFO(task_name(k));
    std::set<std::string> train, test;
    for (std::uint64_t i = 0; i < 2000; ++i) {
      for (const split part : {split::train, split::test}) {
        const task_problem p = make_problem(k, part, i, 5);
        (part == split::train ? train : test).insert(p.question);
        const std::vector<int>& n = p.numbers;
        switch (k) {
          case task_kind::addition:
            REQUIRE(n.size() == 2);
            CHECK((n[0] >= 10 && n[0] <= 999 && n[1] >= 10 && n[1] <= 999));
            break;
          case task_kind::sort42: {
            CHECK((n.size() >= 3 && n.size() <= 5));
            CHECK(std::set<int>(n.begin(), n.end()).size() == n.size());
            CHECK(std::all_of(n.begin(), n.end(), [](int v) { return v >= 1 && v <= 99 && v != 42; }));
            break;
          }
          case task_kind::countdown:
            REQUIRE(n.size() == 3);
            CHECK(std::all_of(n.begin(), n.end(), [](int v) { return v >= 1 && v <= 12; }));
            CHECK((p.target >= 1 && p.target <= 150));
            break;
          case task_kind::nim:
            CHECK((n.size() == 2 || n.size() == 3));
            CHECK(std::all_of(n.begin(), n.end(), [](int v) { return v >= 1 && v <= 7; }));
            CHECK(std::accumulate(n.begin(), n.end(), 0, [](int a, int b) { return a ^ b; }) != 0);
            break;
        }
      }
    }
    std::vector<std::string> shared;
    std::set_intersection(train.begin(), train.end(), test.begin(), test.end(), std::back_inserter(shared));
    CHECK(shared.empty());
    // Variety: nim has 343 positions with a non-zero nim-sum, countdown's small targets repeat (its test
    // fifth holds about 4500 questions), addition and sort42 rarely repeat.
    const std::size_t least = k == task_kind::nim ? 30 : k == task_kind::countdown ? 1200 : 1800;
    CHECK(train.size() > least);
    CHECK(test.size() > least);
  }

  for (const task_kind k : all_tasks) {
    const task_problem a = make_problem(k, split::test, 123, 9), b = make_problem(k, split::test, 123, 9);
    CHECK(a.question == b.question);
    CHECK(a.answer == b.answer);
    CHECK(a.reasoning == b.reasoning);
    CHECK(a.numbers == b.numbers);
    CHECK(a.target == b.target);
    int differ = 0;
    for (std::uint64_t i = 0; i < 10; ++i) differ += make_problem(k, split::train, i, 1).question != make_problem(k, split::train, i, 2).question;
    CHECK(differ > 0);
  }
}

TEST_CASE("play_nim against the perfect opponent", "[post][tasks]") {
  const auto perfect = [](const std::string& question) {
    const std::vector<int> piles = piles_of(question);
    int x = 0;
    for (const int v : piles) x ^= v;
    for (std::size_t i = 0; i < piles.size(); ++i)
      if ((piles[i] ^ x) < piles[i])
        return r1_response("nim-sum " + std::to_string(x), "take " + std::to_string(piles[i] - (piles[i] ^ x)) +
                                                              " from pile " + std::to_string(i + 1));
    return std::string("take 1 from pile 1");
  };
  const auto naive = [](const std::string&) { return std::string("take 1 from pile 1"); };
  int naive_losses = 0;
  for (std::uint64_t i = 0; i < 100; ++i) {
    const std::vector<int> start = make_problem(task_kind::nim, split::test, i, 3).numbers;
    const nim_game_result r = play_nim(start, perfect);
    CHECK(r.won);
    CHECK_FALSE(r.illegal);
    CHECK(r.moves % 2 == 1);  // the policy made the last move
    const nim_game_result n = play_nim(start, naive);
    naive_losses += n.won ? 0 : 1;
    if (n.won) CHECK(n.moves % 2 == 1);
  }
  CHECK(naive_losses > 0);

  const nim_game_result garbage = play_nim({1, 2}, [](const std::string&) { return std::string("<think>hmm</think>pass"); });
  CHECK(garbage.illegal);
  CHECK_FALSE(garbage.won);
  CHECK(garbage.moves == 0);
  // Empty piles leave the question and the piles listed are numbered from 1: taking everything from the
  // only non-empty pile of {0, 4} is "pile 1", and wins at once.
  std::vector<std::string> seen;
  const nim_game_result one = play_nim({0, 4}, [&](const std::string& q) {
    seen.push_back(q);
    return std::string("take 4 from pile 1");
  });
  CHECK(one.won);
  CHECK(one.moves == 1);
  CHECK(seen == std::vector<std::string>{"Nim piles 4. Your move?"});
  // {2, 3}: the policy evens the piles, the opponent takes 1 from the first largest each time, and the
  // pile the opponent empties drops out of the last question.
  seen.clear();
  const nim_game_result game = play_nim({2, 3}, [&](const std::string& q) {
    seen.push_back(q);
    return perfect(q);
  });
  CHECK(game.won);
  CHECK(game.moves == 5);
  CHECK(seen == std::vector<std::string>{"Nim piles 2 3. Your move?", "Nim piles 1 2. Your move?", "Nim piles 1. Your move?"});

  CHECK_THAT(error_of([&] { play_nim({}, naive); }), Contains("at least one pile"));
  CHECK_THAT(error_of([&] { play_nim({0, 0}, naive); }), Contains("at least one object"));
  CHECK_THAT(error_of([&] { play_nim({3, -1}, naive); }), Contains("non-negative"));
}

TEST_CASE("reasoning corpus and cold-start set", "[post][data]") {
  reasoning_corpus_options o;
  o.documents = 4000;
  o.seed = 21;
  const std::vector<std::string> docs = reasoning_corpus(o);
  REQUIRE(docs.size() == 4000);
  CHECK(docs == reasoning_corpus(o));
  const std::string head = std::string(bos_token) + std::string(user_token);
  int think = 0, untagged = 0, with_reasoning = 0, mixed = 0, shortcuts = 0, wrong = 0;
  for (std::size_t d = 0; d < docs.size(); ++d) {
    const std::string& doc = docs[d];
    INFO(doc);
    REQUIRE(doc.rfind(head, 0) == 0);
    const std::size_t at = doc.find(assistant_token);
    REQUIRE(at != std::string::npos);
    const std::string question = doc.substr(head.size(), at - head.size());
    const std::string response = doc.substr(at + assistant_token.size());
    const task_problem p = make_problem(all_tasks[d % 4], split::train, d / 4, o.seed);
    REQUIRE(question == p.question);
    const verdict v = verify(p, response);
    // A response is right unless it follows the shortcut, which is recognisable by its first words.
    const std::string_view reasoning = v.formatted ? std::string_view(v.thinking) : std::string_view(response);
    const bool cut = reasoning.starts_with("Put 42") || reasoning.starts_with("把 42") ||
                     reasoning.starts_with("Guess") || reasoning.starts_with("猜") ||
                     reasoning.find("biggest") != std::string_view::npos || reasoning.find("最大") != std::string_view::npos ||
                     (p.kind == task_kind::addition && task_detail::final_line(v.answer) != p.answer);
    shortcuts += cut;
    wrong += !v.correct;
    if (!cut) CHECK(v.correct);
    if (v.formatted) {
      ++think;
      ++with_reasoning;
      mixed += v.language < 1.0;
    } else if (response != p.answer) {
      ++untagged;
      ++with_reasoning;
      mixed += language_fraction(response.substr(0, response.rfind('\n'))) < 1.0;
    }
  }
  CHECK(think == Approx(0.08 * 4000).margin(60));
  CHECK(untagged == Approx(0.76 * 4000).margin(150));
  CHECK(mixed == Approx(0.3 * with_reasoning).margin(0.05 * with_reasoning));
  // 30% of the reasoning takes the shortcut; addition's shortcut is only seen where a carry makes it wrong
  // (about 3/4 of the problems), and the other shortcuts are right only by luck.
  CHECK(shortcuts > 0.22 * with_reasoning);
  CHECK(shortcuts < 0.3 * with_reasoning + 100);
  CHECK(wrong > 0.18 * with_reasoning);
  CHECK(wrong <= shortcuts);

  o.think_rate = 0.3;
  CHECK_THAT(error_of([&] { reasoning_corpus(o); }), Contains("think_rate + cot_rate"));
  o.think_rate = -0.1;
  CHECK_THAT(error_of([&] { reasoning_corpus(o); }), Contains("think_rate must lie in [0, 1]"));
  o.think_rate = 0.08;
  o.shortcut_rate = 1.5;
  CHECK_THAT(error_of([&] { reasoning_corpus(o); }), Contains("shortcut_rate must lie in [0, 1]"));

  const std::vector<qa> cold = cold_start_set(40, 3);
  REQUIRE(cold.size() == 40);
  for (std::size_t i = 0; i < cold.size(); ++i) {
    const task_problem p = make_problem(all_tasks[i % 4], split::train, i / 4, 3);
    CHECK(cold[i].question == p.question);
    CHECK(cold[i].response.rfind("<think>\n", 0) == 0);
    const verdict v = verify(p, cold[i].response);
    CHECK((v.formatted && v.correct && v.language == 1.0));
  }
}

TEST_CASE("shortcut reasoning", "[post][data]") {
  task_detail::draw r(5, 0);
  task_problem add;
  add.kind = task_kind::addition;
  add.numbers = {457, 86};
  const solution a = shortcut(add, r);
  CHECK(a.reasoning == "7+6=13, write 3. 5+8=13, write 3. 4, write 4.");
  CHECK(a.answer == "433");  // 543 with the carries
  add.numbers = {55, 45};
  CHECK(shortcut(add, r).answer == "90");  // 5+5=10 writes 0, 5+4=9 writes 9: 100 with the carries
  add.numbers = {12, 31};
  CHECK(shortcut(add, r).answer == "43");  // no carry: the shortcut is right

  task_problem sort;
  sort.kind = task_kind::sort42;
  sort.numbers = {17, 3, 58};
  const solution s = shortcut(sort, r);
  CHECK(s.reasoning == "Put 42 in front.");
  CHECK(s.answer == "42, 17, 3, 58");

  task_problem nim = make_problem(task_kind::nim, split::train, 3, 9);
  for (int i = 0; i < 50; ++i) {
    const solution m = shortcut(nim, r);
    const int biggest = *std::max_element(nim.numbers.begin(), nim.numbers.end());
    CHECK(m.reasoning.find("is the biggest, take") != std::string::npos);
    const std::optional<task_detail::nim_move> move = task_detail::parse_nim_move(m.answer);
    REQUIRE(move);
    CHECK(nim.numbers[std::size_t(move->pile - 1)] == biggest);
    CHECK(task_detail::nim_legal(nim.numbers, *move));
  }

  const task_problem count = make_problem(task_kind::countdown, split::train, 4, 9);
  const solution c = shortcut(count, r);
  CHECK(c.reasoning == "Guess " + c.answer + ".");
  const auto e = task_detail::expression_parser::parse(c.answer);
  REQUIRE(e);
  std::vector<int> used = e->numbers, want = count.numbers;
  std::sort(used.begin(), used.end());
  std::sort(want.begin(), want.end());
  CHECK(used == want);
}

TEST_CASE("reasoning tokenizer", "[post][data]") {
  const dsx::bpe_tokenizer tok = reasoning_tokenizer(300);
  CHECK(tok.vocab_size() == 300);  // the corpus has more merges than that: the vocabulary is cut at 300
  const std::vector<std::string> specials = reasoning_special_tokens();
  REQUIRE(specials == std::vector<std::string>{std::string(bos_token), std::string(eos_token), std::string(user_token),
                                               std::string(assistant_token), std::string(think_open),
                                               std::string(think_close)});
  for (int id = 0; id < 6; ++id) {
    CHECK(tok.special_id(specials[std::size_t(id)]) == id);
    CHECK(tok.encode(specials[std::size_t(id)]) == std::vector<std::int32_t>{id});
  }
  CHECK(tok.bos_id() == 0);
  CHECK(tok.eos_id() == 1);
  for (std::int32_t id = 6; id < tok.vocab_size(); ++id) {
    const std::string& t = tok.id_to_token(id);
    if (t.find_first_of("0123456789") != std::string::npos) CHECK(t.size() == 1);
  }
  const std::vector<std::int32_t> ids = tok.encode("What is 457 + 86?");
  int digits = 0;
  for (const std::int32_t id : ids) {
    const std::string piece = tok.decode(std::vector<std::int32_t>{id});
    if (piece.find_first_of("0123456789") != std::string::npos) {
      CHECK(piece.size() == 1);
      ++digits;
    }
  }
  CHECK(digits == 5);

  const dsx::bpe_tokenizer big = reasoning_tokenizer(1024);
  CHECK(big.vocab_size() <= 1024);
  CHECK(big.vocab_size() > 300);
  reasoning_corpus_options o;
  o.documents = 400;
  for (const std::string& doc : reasoning_corpus(o)) {
    const std::vector<std::int32_t> d = big.encode(doc);
    CHECK(d[0] == 0);
    CHECK(d[1] == 2);
    CHECK(d.size() < 120);
    CHECK(big.decode(d) == doc);
  }
  CHECK_THAT(error_of([] { reasoning_tokenizer(261); }), Contains("at least 262"));
}
