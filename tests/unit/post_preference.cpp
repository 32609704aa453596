// Preference alignment (post/preference.hpp): the reward head's and the trunk's gradients by finite
// differences, a Bradley–Terry reward model and DPO learning a preference that a marker token decides, exact
// resume of both trainers, the tokenization of preference pairs as chat, and the errors on bad pairs.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dsx/post/preference.hpp"
#include "support/files.hpp"
#include "support/model.hpp"

namespace fs = std::filesystem;
namespace post = dsx::post;
using Catch::Matchers::Contains;
using dsx::test::error_of;
using dsx::test::temp_dir;

namespace {

constexpr dsx::model_config tiny = dsx::test::tiny_mtp;
using model64 = dsx::test::model_t<tiny>;
using model32 = dsx::transformer<tiny, dsx::precision::f32, dsx::backend::host>;

constexpr std::int32_t pad = 0, eos = 1, good = 11, bad = 12;
constexpr std::int64_t max_seq = 8;

// Pairs whose completions differ only in a marker before EOS: body + good + EOS is chosen over
// body + bad + EOS. Prompts and bodies are random ids 2..10 (prompts 2–4, bodies 1–2 tokens).
std::vector<post::token_pair> marker_pairs(std::size_t count, std::uint64_t seed) {
  std::vector<post::token_pair> out;
  for (std::uint64_t i = 0; i < count; ++i) {
    std::uint64_t k = 0;
    const auto id = [&] { return std::int32_t(2 + dsx::random_bits(seed, i, k++) % 9); };
    post::token_pair p;
    const std::uint64_t prompt_len = 2 + dsx::random_bits(seed, i, 100) % 3, body_len = 1 + dsx::random_bits(seed, i, 101) % 2;
    for (std::uint64_t t = 0; t < prompt_len; ++t) p.prompt.push_back(id());
    for (std::uint64_t t = 0; t < body_len; ++t) p.chosen.push_back(id());
    p.rejected = p.chosen;
    p.chosen.insert(p.chosen.end(), {good, eos});
    p.rejected.insert(p.rejected.end(), {bad, eos});
    out.push_back(std::move(p));
  }
  return out;
}

template <class Model>
std::vector<typename Model::T> all_params(Model& m) {
  std::vector<typename Model::T> out;
  for (const auto& e : m.params().entries()) {
    const auto v = m.get_param(e);
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

// A model of either precision with the f64 test initialisation of `seed`.
template <class Model>
struct host_model {
  dsx::backend::host be;
  Model model;
  host_model(std::int64_t batch, std::uint64_t seed) : model(be, batch, max_seq) {
    model64 init(be, 1, 1);
    dsx::test::init_params(init, seed);
    post::copy_weights(model, init);
  }
};

post::reward_options reward_opts(const fs::path& out, std::int64_t steps) {
  post::reward_options o;
  o.steps = steps;
  o.batch = 6;
  o.lr = {.peak = 1e-2, .final = 1e-2, .warmup = 0, .constant = 0, .decay = 0};
  o.clip = 1.0;
  o.seed = 5;
  o.checkpoint_every = 2;
  o.out = out;
  return o;
}

post::dpo_options dpo_opts(const fs::path& out, std::int64_t steps) {
  post::dpo_options o;
  o.steps = steps;
  o.batch = 6;
  o.lr = {.peak = 1e-2, .final = 1e-2, .warmup = 0, .constant = 0, .decay = 0};
  o.clip = 1.0;
  o.seed = 5;
  o.out = out;
  return o;
}

// The keys of a metrics line that do not depend on timing.
std::vector<nlohmann::json> without_time(std::vector<nlohmann::json> lines) {
  for (auto& l : lines) l.erase("seconds");
  return lines;
}

// (π_c − π_r) − (ref_c − ref_r) of each pair: how much more the policy prefers the chosen completion than
// the reference does.
template <class Model>
std::vector<double> preference_gain(Model& policy, Model& reference, const std::vector<post::token_pair>& pairs) {
  std::vector<std::int64_t> picked(pairs.size());
  std::iota(picked.begin(), picked.end(), std::int64_t{0});
  const post::token_rows rows = post::pair_rows(pairs, picked, pad);
  const auto pi = post::row_sums(post::rows_logprobs(policy, rows), rows);
  const auto ref = post::row_sums(post::rows_logprobs(reference, rows), rows);
  const std::size_t n = pairs.size();
  std::vector<double> gain(n);
  for (std::size_t i = 0; i < n; ++i) gain[i] = (pi[i] - ref[i]) - (pi[n + i] - ref[n + i]);
  return gain;
}

}  // namespace

TEST_CASE("reward model: head and trunk gradients of a pair loss by finite differences (f64)", "[unit]") {
  dsx::backend::host be;
  model64 trunk(be, 2, max_seq);  // 6 rows: three micro-batches
  dsx::test::init_params(trunk, 21);
  post::reward_model<model64> rm(trunk, 3, 0.5);
  const auto pairs = marker_pairs(3, 8);
  const post::token_rows rows = post::pair_rows(pairs, std::vector<std::int64_t>{0, 1, 2}, pad);
  // Bradley–Terry leaves the bias without gradient (it sees only differences): a linear term gives it one.
  const std::vector<double> c = dsx::test::random_vector(6, 4, 1.0);
  const auto objective = [&](const std::vector<double>& s, std::vector<double>* ds) {
    const post::pair_loss bt = post::bradley_terry(std::span(s).first(3), std::span(s).last(3));
    double l = bt.loss;
    for (std::size_t i = 0; i < 6; ++i) l += c[i] * s[i];
    if (ds) {
      *ds = bt.dchosen;
      ds->insert(ds->end(), bt.drejected.begin(), bt.drejected.end());
      for (std::size_t i = 0; i < 6; ++i) (*ds)[i] += c[i];
    }
    return l;
  };
  const auto loss = [&] { return objective(rm.scores(rows), nullptr); };

  std::vector<double> ds;
  const std::vector<double> s = rm.scores(rows);
  objective(s, &ds);
  rm.zero_grad();
  CHECK(rm.backward(rows, ds) == s);

  const std::vector<double> head_grad(rm.head_grad().begin(), rm.head_grad().end());
  dsx::test::require_gradient("score.weight", rm.head().data(), head_grad.data(), std::size_t(tiny.hidden), loss);
  dsx::test::require_gradient("score.bias", rm.head().data() + tiny.hidden, head_grad.data() + tiny.hidden, 1, loss);
  CHECK(std::abs(head_grad[std::size_t(tiny.hidden)] - (c[0] + c[1] + c[2] + c[3] + c[4] + c[5])) < 1e-12);

  int checked = 0;
  for (const auto& e : trunk.params().entries()) {
    const std::vector<double> g = trunk.get_grad(e);
    if (e.spec.kind == dsx::param_kind::head) CHECK(dsx::test::max_abs(g) == 0);  // the LM head takes no part
    const bool pick = e.spec.kind == dsx::param_kind::final_norm || e.spec.kind == dsx::param_kind::embed ||
                      (e.spec.kind == dsx::param_kind::kv_a_proj && e.spec.layer == 0);
    if (!pick) continue;
    ++checked;
    dsx::test::require_gradient(e.name, trunk.param_data() + e.offset, g.data(), std::size_t(e.spec.numel()), loss, 24);
  }
  CHECK(checked == 3);
}

TEST_CASE("reward model: scores read the last completion token, whatever the padding", "[unit]") {
  dsx::backend::host be;
  model64 trunk(be, 4, max_seq);
  dsx::test::init_params(trunk, 2);
  post::reward_model<model64> rm(trunk, 1, 0.3);
  const std::vector<std::vector<std::int32_t>> prompts{{2, 3, 4}, {5}}, completions{{6}, {7, 8, 9, 10}};
  const post::token_rows rows = post::completion_rows(prompts, completions, pad);
  REQUIRE(rows.seq == 5);
  CHECK(post::reward_model<model64>::score_positions(rows) == std::vector<std::int64_t>{3, 4});
  const std::vector<double> s = rm.scores(rows);
  CHECK(rm.score(prompts[0], completions[0]) == Approx(s[0]).margin(1e-12));  // alone: no padding after it
  CHECK(rm.score(prompts[1], completions[1]) == Approx(s[1]).margin(1e-12));
  rm.head().back() = 2.5;  // the bias adds to every score
  CHECK(rm.score(prompts[0], completions[0]) == Approx(s[0] + 2.5).margin(1e-12));

  post::token_rows unscored = rows;
  std::fill(unscored.scored.begin() + 5, unscored.scored.end(), std::uint8_t{0});
  CHECK_THAT(error_of([&] { rm.scores(unscored); }), Contains("row 1 has no completion token to score"));
  CHECK_THAT(error_of([&] { rm.backward(rows, std::vector<double>{1.0}); }), Contains("one score gradient per row, got 1 for 2 rows"));

  temp_dir dir;
  rm.save(dir / "score.safetensors");
  const dsx::safetensors::reader r(dir / "score.safetensors");
  CHECK(r.at("score.weight").shape == std::vector<std::int64_t>{1, tiny.hidden});
  CHECK(r.at("score.bias").shape == std::vector<std::int64_t>{1});
  post::reward_model<model64> other(trunk, 99);
  other.load(dir / "score.safetensors");
  CHECK(std::vector<double>(other.head().begin(), other.head().end()) == std::vector<double>(rm.head().begin(), rm.head().end()));

  dsx::safetensors::writer wrong;
  wrong.add<double>("score.weight", std::vector<double>(3, 0.0), {1, 3});
  wrong.add<double>("score.bias", std::vector<double>(1, 0.0), {1});
  wrong.write(dir / "wrong.safetensors");
  CHECK_THAT(error_of([&] { other.load(dir / "wrong.safetensors"); }),
             Contains("tensor 'score.weight': expected shape [1, 8], found [1, 3]"));
}

TEST_CASE("reward trainer: held-out accuracy on a marker preference goes to 1", "[unit]") {
  temp_dir dir;
  host_model<model64> h(4, 7);
  post::reward_model<model64> rm(h.model, 11);
  const auto train = marker_pairs(24, 1), held_out = marker_pairs(16, 2);
  post::reward_trainer<model64> trainer(rm, train, reward_opts(dir.path, 40), pad);
  const double before = trainer.evaluate_pairs(held_out);
  INFO("held-out accuracy before training: " << before);
  CHECK(before < 0.8);  // not solved by the initial weights
  const auto lines = trainer.run("reward model");
  REQUIRE(lines.size() == 40);
  CHECK(trainer.evaluate_pairs(held_out) == 1.0);
  for (const char* key : {"loss", "accuracy", "margin", "lr", "grad_norm", "seconds", "step"}) CHECK(lines.back().contains(key));
  CHECK(lines.front()["loss"].get<double>() > lines.back()["loss"].get<double>() + 0.3);
  CHECK(lines.back()["accuracy"].get<double>() == Approx(1.0));
  CHECK(lines.back()["margin"].get<double>() > 1.0);
  CHECK(dsx::read_metrics(dir / "metrics.jsonl").size() == 40);
  CHECK(fs::is_regular_file(dir / "metrics.svg"));
  CHECK(fs::is_directory(dir / "checkpoint"));
  const dsx::safetensors::reader head(dir / "score.safetensors");
  CHECK(head.metadata().at("step") == "40");
  CHECK(head.read<double>("score.bias") == std::vector<double>{rm.head().back()});
  // A GRPO-style reward: a held-out chosen completion scores above its rejected one.
  CHECK(trainer.score(held_out[0].prompt, held_out[0].chosen) > trainer.score(held_out[0].prompt, held_out[0].rejected));
}

TEST_CASE("reward trainer: 3 + 3 steps equal 6 steps exactly, also from the previous head files (f32)", "[unit]") {
  const auto pairs = marker_pairs(10, 3);
  temp_dir straight, resumed;
  host_model<model32> a(4, 7);
  post::reward_model<model32> rm_a(a.model, 11);
  const auto six = post::reward_trainer<model32>(rm_a, pairs, reward_opts(straight.path, 6), pad).run("straight");
  {
    host_model<model32> b(4, 7);
    post::reward_model<model32> rm_b(b.model, 11);
    post::reward_trainer<model32>(rm_b, pairs, reward_opts(resumed.path, 3), pad).run("first half");
    // A crash after the head of a later save was written, before its trunk checkpoint: the current head
    // files belong to step 99, the step-3 ones are the .prev copies.
    post::reward_model<model32> later(b.model, 12);
    post::preference_detail::rotate_write(later.head_tensors(), resumed / "score.safetensors", 99);
    post::preference_detail::rotate_write(post::head_adamw<float, float>(tiny.hidden).tensors(),
                                          resumed / "score_optimizer.safetensors", 99);
  }
  host_model<model32> c(4, 1234);  // other weights: everything must come from the files
  post::reward_model<model32> rm_c(c.model, 77);
  post::reward_trainer<model32>(rm_c, pairs, reward_opts(resumed.path, 6), pad).run("resumed");
  CHECK(without_time(dsx::read_metrics(resumed / "metrics.jsonl")) == without_time(dsx::read_metrics(straight / "metrics.jsonl")));
  CHECK(six.size() == 6);
  CHECK(all_params(c.model) == all_params(a.model));
  CHECK(std::vector<float>(rm_c.head().begin(), rm_c.head().end()) == std::vector<float>(rm_a.head().begin(), rm_a.head().end()));

  // Without head files of the checkpoint's step, a resume is refused.
  fs::remove(resumed / "score.safetensors");
  fs::remove(resumed / "score.prev.safetensors");
  post::reward_trainer<model32> more(rm_c, pairs, reward_opts(resumed.path, 8), pad);
  CHECK_THAT(error_of([&] { more.run("more"); }), Contains("no score.safetensors of step 6"));
}

TEST_CASE("dpo: the first loss is log 2 and training prefers the chosen completions more than the reference", "[unit]") {
  temp_dir dir;
  host_model<model64> policy(4, 7), reference(4, 500);  // the reference's own weights are replaced
  const std::vector<double> start = all_params(policy.model);
  const auto train = marker_pairs(24, 1), held_out = marker_pairs(16, 2);
  const auto lines = post::dpo_trainer<model64>(policy.model, reference.model, train, dpo_opts(dir.path, 30), pad).run("dpo");
  REQUIRE(lines.size() == 30);
  CHECK(lines[0]["loss"].get<double>() == Approx(std::log(2.0)).epsilon(1e-14));
  CHECK(lines[0]["margin"] == 0.0);
  CHECK(lines[0]["chosen_reward"] == 0.0);
  CHECK(lines[0]["rejected_reward"] == 0.0);
  CHECK(lines[0]["reward_accuracy"] == 0.0);
  for (const char* key : {"loss", "reward_accuracy", "margin", "chosen_reward", "rejected_reward", "lr", "grad_norm", "seconds"})
    CHECK(lines.back().contains(key));
  CHECK(lines.back()["margin"].get<double>() > 0);
  CHECK(lines.back()["reward_accuracy"].get<double>() == Approx(1.0));
  CHECK(lines.back()["loss"].get<double>() < std::log(2.0) - 0.1);
  CHECK(lines.back()["margin"].get<double>() ==
        Approx(lines.back()["chosen_reward"].get<double>() - lines.back()["rejected_reward"].get<double>()));

  CHECK(all_params(reference.model) == start);  // frozen at the policy's start
  host_model<model64> saved(4, 600);
  dsx::load_weights(saved.model, dir / "reference");
  CHECK(all_params(saved.model) == start);
  for (const double g : preference_gain(policy.model, reference.model, held_out)) CHECK(g > 0);
  CHECK(fs::is_regular_file(dir / "metrics.svg"));
}

TEST_CASE("dpo: 3 + 3 steps equal 6 steps exactly", "[unit]") {
  const auto pairs = marker_pairs(10, 3);
  temp_dir straight, resumed;
  host_model<model64> a(4, 7), a_ref(4, 7);
  post::dpo_trainer<model64>(a.model, a_ref.model, pairs, dpo_opts(straight.path, 6), pad).run("straight");
  {
    host_model<model64> b(4, 7), b_ref(4, 7);
    post::dpo_trainer<model64>(b.model, b_ref.model, pairs, dpo_opts(resumed.path, 3), pad).run("first half");
  }
  host_model<model64> c(4, 31), c_ref(4, 32);  // other weights: policy and reference come from OUT
  post::dpo_trainer<model64>(c.model, c_ref.model, pairs, dpo_opts(resumed.path, 6), pad).run("resumed");
  const auto m = without_time(dsx::read_metrics(resumed / "metrics.jsonl"));
  CHECK(m.size() == 6);
  CHECK(m == without_time(dsx::read_metrics(straight / "metrics.jsonl")));
  CHECK(all_params(c.model) == all_params(a.model));
  CHECK(all_params(c_ref.model) == all_params(a_ref.model));
}

TEST_CASE("preference pairs: chat tokenization and the errors on bad pairs", "[unit]") {
  const std::vector<std::string> specials{std::string(post::bos_token), std::string(post::eos_token),
                                          std::string(post::user_token), std::string(post::assistant_token)};
  const std::vector<std::string> texts{"abc"};
  const dsx::bpe_tokenizer t = dsx::bpe_tokenizer::train(texts, int(specials.size()) + 256, specials, dsx::pretokenizer::deepseek_v3);
  const post::chat_template chat(t);
  const std::vector<post::preference_pair> pairs{{"2+3?", "5", "6"}, {"hi", "hello", "go away"}};
  const auto tokens = post::tokenize_pairs(chat, pairs);
  REQUIRE(tokens.size() == 2);
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    CHECK(tokens[i].prompt == chat.prompt(pairs[i].prompt));
    std::vector<std::int32_t> row = tokens[i].prompt;
    row.insert(row.end(), tokens[i].chosen.begin(), tokens[i].chosen.end());
    CHECK(row == chat.render(pairs[i].prompt, pairs[i].chosen).ids);
    row = tokens[i].prompt;
    row.insert(row.end(), tokens[i].rejected.begin(), tokens[i].rejected.end());
    CHECK(row == chat.render(pairs[i].prompt, pairs[i].rejected).ids);
    CHECK(tokens[i].rejected.back() == chat.eos());
  }
  const std::vector<post::preference_pair> broken{{"a", "b", "c"}, {"a", "b", std::string("\xff", 1)}};
  CHECK_THAT(error_of([&] { post::tokenize_pairs(chat, broken); }), Contains("tokenize_pairs: pair 1: field 'rejected'"));

  temp_dir dir;
  host_model<model64> h(2, 1), r(2, 1);
  auto pairs_ok = marker_pairs(2, 1);
  auto too_long = pairs_ok;
  too_long[1].chosen.assign(8, 3);
  CHECK_THAT(error_of([&] { post::dpo_trainer<model64>(h.model, r.model, too_long, dpo_opts(dir.path, 1), pad); }),
             Contains("dpo: pair 1 needs rows of"));
  auto empty = pairs_ok;
  empty[0].rejected.clear();
  post::reward_model<model64> rm(h.model);
  CHECK_THAT(error_of([&] { post::reward_trainer<model64>(rm, empty, reward_opts(dir.path, 1), pad); }),
             Contains("reward: pair 0 has an empty prompt, chosen or rejected completion"));
  post::dpo_options o = dpo_opts(dir.path, 1);
  o.beta = 0;
  CHECK_THAT(error_of([&] { post::dpo_trainer<model64>(h.model, r.model, pairs_ok, o, pad); }), Contains("dpo: beta must be positive"));
}
