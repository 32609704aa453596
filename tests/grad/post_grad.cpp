// The model-level pieces of post-training on a small float64 MoE model (host backend):
//  - backward_logits and backward_hidden against finite differences of Σ G · logits and Σ H · hidden;
//  - backward_logits fed the cross-entropy's logit gradient equals backward() of forward(with_loss);
//  - rows_backward with a GRPO objective in micro-batches against finite differences of the GRPO loss;
//  - sample(): greedy equals generate_greedy, stop tokens, reproducibility per (seed, stream) and per
//    chunking, and the recorded log-probabilities equal the training forward's (teacher forcing).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/model/transformer.hpp"
#include "dsx/post/logprob.hpp"
#include "dsx/post/losses.hpp"
#include "dsx/post/policy.hpp"
#include "dsx/post/sampling.hpp"
#include "support/gradcheck.hpp"
#include "support/model.hpp"

using dsx::param_kind;
using dsx::test::check_gradient;
using dsx::test::grad_report;
using dsx::test::init_params;
using dsx::test::random_tokens;
using dsx::test::random_vector;
using dsx::test::routing;

namespace {

// Dense layer then MoE layer (V3 gate with groups and bias, q-LoRA), no MTP: backward() then
// differentiates exactly the main cross-entropy.
constexpr dsx::model_config small{
    .vocab = 13, .hidden = 8, .layers = 2, .dense_layers = 1, .dense_inter = 8,
    .mla = {.heads = 2, .q_lora = 6, .kv_lora = 4, .nope = 4, .rope = 2, .v = 4},
    .moe = {.routed = 4, .shared = 1, .top_k = 2, .groups = 2, .top_groups = 1, .score = dsx::score_fn::sigmoid,
            .norm_topk = true, .route_scale = 2.5, .bias = true, .inter = 4},
    .rms_eps = 1e-6, .mtp_depth = 0, .max_positions = 16};
using model = dsx::test::model_t<small>;

// The tensors checked: embedding, head, final norm and a sample over both layers (attention, dense FFN,
// router, two experts, shared expert).
bool sampled(const dsx::param_spec& s) {
  switch (s.kind) {
    case param_kind::embed: case param_kind::head: case param_kind::final_norm: case param_kind::q_b_proj:
    case param_kind::kv_a_proj: case param_kind::kv_b_proj: case param_kind::o_proj: case param_kind::mlp_down:
    case param_kind::router: case param_kind::shared_down:
      return true;
    case param_kind::expert_gate: case param_kind::expert_down: return s.expert <= 1;
    default: return false;
  }
}

// Central differences of `objective` (which runs a forward) against `grads` on 8 elements of every sampled
// tensor; `expect_zero` kinds must have an exactly zero gradient instead. Counts the evaluations whose
// routing left that of the base forward (finite differences would be meaningless there).
void require_model_gradient(model& m, const std::vector<double>& grads, const std::function<double()>& objective,
                            const std::vector<std::vector<std::int32_t>>& base_routing,
                            param_kind expect_zero = param_kind::router_bias) {
  int flips = 0, checked = 0;
  const auto loss = [&] {
    const double l = objective();
    flips += routing(m) != base_routing;
    return l;
  };
  for (const auto& e : m.params().entries()) {
    if (!sampled(e.spec)) continue;
    INFO(e.name);
    if (e.spec.kind == expect_zero) {
      const auto g = m.get_grad(e);
      CHECK(std::all_of(g.begin(), g.end(), [](double x) { return x == 0.0; }));
      continue;
    }
    const grad_report rep = check_gradient(e.name, m.param_data() + e.offset, grads.data() + e.offset,
                                           std::size_t(e.spec.numel()), loss, 8, 1e-6, 1e-2);
    INFO("max relative error " << rep.max_rel_error << " over " << rep.checked << " elements");
    CHECK(rep.max_rel_error < 1e-6);
    ++checked;
  }
  CHECK(checked >= 10);
  CHECK(flips == 0);
}

std::vector<double> gradients(model& m) { return {m.grad_data(), m.grad_data() + m.params().size()}; }

constexpr std::int64_t batch = 2, seq = 8;

}  // namespace

TEST_CASE("post grad: backward_logits against finite differences of sum G logits", "[grad][post]") {
  dsx::backend::host be;
  model m(be, batch, seq);
  init_params(m, 101);
  const auto tokens = random_tokens(std::size_t(batch * seq), small.vocab, 102);
  const auto g = random_vector(std::size_t(batch * seq * small.vocab), 103);
  m.zero_grad();
  m.forward(tokens, batch, seq, false);
  const auto base = routing(m);
  m.backward_logits(g);
  require_model_gradient(m, gradients(m), [&] {
    m.forward(tokens, batch, seq, false);
    const auto logits = m.logits();
    return dsx::test::dot(logits.data(), g.data(), g.size());
  }, base);
  // The objective's last forward left a graph: a wrong size is reported, the graph is used once.
  CHECK_THROWS_WITH(m.backward_logits(std::span<const double>(g).first(5)), Catch::Contains("expects 208 values, got 5"));
  m.backward_logits(g);
  CHECK_THROWS_WITH(m.backward_logits(g), Catch::Contains("needs a forward() first"));
}

TEST_CASE("post grad: backward_logits of the cross-entropy's gradient equals backward()", "[grad][post]") {
  dsx::backend::host be;
  model m(be, batch, seq);
  init_params(m, 201);
  const auto tokens = random_tokens(std::size_t(batch * seq), small.vocab, 202);
  m.zero_grad();
  m.forward(tokens, batch, seq);
  m.backward();
  const auto reference = gradients(m);

  // The mean cross-entropy is −Σ logp / (batch (seq − 1)): d/d logp = −1 / counted at every scored position.
  m.zero_grad();
  m.forward(tokens, batch, seq, false);
  const auto logits = m.logits();
  const std::vector<double> dlogp(tokens.size(), -1.0 / double(batch * (seq - 1)));
  std::vector<double> dlogits(logits.size());
  dsx::post::logprob_backward<double>(logits, tokens, batch, seq, small.vocab, dlogp, dlogits);
  m.backward_logits(dlogits);
  const auto mine = gradients(m);
  CHECK(dsx::test::max_abs(reference) > 1e-3);
  CHECK(dsx::test::max_abs_diff(mine, reference) < 1e-13);
}

TEST_CASE("post grad: backward_logits leaves out the balance loss", "[grad][post]") {
  dsx::backend::host be;
  model m(be, batch, seq);
  init_params(m, 301);
  const auto tokens = random_tokens(std::size_t(batch * seq), small.vocab, 302);
  const auto g = random_vector(std::size_t(batch * seq * small.vocab), 303);
  const auto run = [&](double alpha) {
    m.set_balance_weight(alpha);
    m.zero_grad();
    m.forward(tokens, batch, seq, false);
    m.backward_logits(g);
    return gradients(m);
  };
  const auto without = run(0.0), with = run(0.5);
  CHECK(dsx::test::max_abs(without) > 1e-3);
  CHECK(dsx::test::max_abs_diff(without, with) == 0.0);
  // After a forward with loss the balance term is part of the graph: refused rather than mixed in.
  m.forward(tokens, batch, seq);
  CHECK_THROWS_WITH(m.backward_logits(g), Catch::Contains("would add the balance loss's gradient"));
  CHECK_THROWS_WITH(m.backward_hidden(std::vector<double>(std::size_t(batch * seq * small.hidden))),
                    Catch::Contains("would add the balance loss's gradient"));
  m.set_balance_weight(0.0);
  m.forward(tokens, batch, seq);
  CHECK_NOTHROW(m.backward_logits(g));
}

TEST_CASE("post grad: hidden() and backward_hidden against finite differences of sum H hidden", "[grad][post]") {
  dsx::backend::host be;
  model m(be, batch, seq);
  init_params(m, 401);
  const auto tokens = random_tokens(std::size_t(batch * seq), small.vocab, 402);
  const auto h = random_vector(std::size_t(batch * seq * small.hidden), 403);
  m.zero_grad();
  m.forward(tokens, batch, seq, false);
  const auto base = routing(m);
  REQUIRE(m.hidden().size() == h.size());
  m.backward_hidden(h);
  require_model_gradient(m, gradients(m), [&] {
    m.forward(tokens, batch, seq, false);
    const auto hidden = m.hidden();
    return dsx::test::dot(hidden.data(), h.data(), h.size());
  }, base, param_kind::head);
  CHECK_THROWS_WITH(m.backward_hidden(std::span<const double>(h).first(5)), Catch::Contains("expects 128 values, got 5"));
  m.backward_hidden(h);
  CHECK_THROWS_WITH(m.backward_hidden(h), Catch::Contains("needs a forward() first"));
}

TEST_CASE("post grad: rows_backward with a GRPO objective in micro-batches against finite differences",
          "[grad][post]") {
  dsx::backend::host be;
  model m(be, 2, 12);  // 3 rows: micro-batches of 2 and 1
  init_params(m, 501);
  const std::vector<std::vector<std::int32_t>> prompts{{1, 5, 7}, {2, 2, 9, 4}, {11, 3}},
      completions{{6, 0, 12, 3}, {8, 1}, {4, 4, 10, 2, 7}};
  const auto rows = dsx::post::completion_rows(prompts, completions, 0);
  REQUIRE(rows.seq == 7);
  const std::size_t n = rows.ids.size();
  const auto start = dsx::post::rows_logprobs(m, rows);
  // Old policy slightly off the current one (ratios within e^±0.05, far from the clip range), the
  // reference further away; only the scored positions matter.
  const auto noise = random_vector(n, 502, 0.02), far = random_vector(n, 503, 0.3);
  std::vector<double> old(n), ref(n);
  for (std::size_t i = 0; i < n; ++i) {
    old[i] = start[i] - std::clamp(noise[i], -0.05, 0.05);
    ref[i] = start[i] + far[i];
  }
  const std::vector<double> advantage{0.9, -0.6, 0.3};
  std::int64_t scored = 0;
  for (auto s : rows.scored) scored += s;
  REQUIRE(scored == 11);

  for (auto aggregation : {dsx::post::grpo_aggregation::token, dsx::post::grpo_aggregation::sequence}) {
    INFO("aggregation " << int(aggregation));
    dsx::post::grpo_loss_options whole;
    whole.beta = 0.04;
    whole.aggregation = aggregation;
    dsx::post::grpo_loss_options part = whole;
    part.batch_tokens = scored;
    part.batch_rows = rows.rows;
    double parts_loss = 0, parts_clip = 0;
    m.zero_grad();
    const auto lp = dsx::post::rows_backward(m, rows, [&](std::int64_t first, std::int64_t count, std::span<const double> logp) {
      const auto at = [&](const std::vector<double>& v) {
        return std::span<const double>(v).subspan(std::size_t(first * rows.seq), std::size_t(count * rows.seq));
      };
      const auto r = dsx::post::grpo_loss(logp, at(old), at(ref),
                                          std::span<const std::uint8_t>(rows.scored).subspan(std::size_t(first * rows.seq),
                                                                                              std::size_t(count * rows.seq)),
                                          std::span<const double>(advantage).subspan(std::size_t(first), std::size_t(count)),
                                          rows.seq, part);
      parts_loss += r.loss;
      parts_clip += r.clip_fraction;
      return r.dlogp;
    });
    CHECK(dsx::test::max_abs_diff(lp, start) < 1e-14);
    const auto objective = [&] {
      return dsx::post::grpo_loss(dsx::post::rows_logprobs(m, rows), old, ref, rows.scored, advantage, rows.seq, whole).loss;
    };
    CHECK(parts_loss == Approx(objective()).epsilon(1e-13));
    CHECK(parts_clip == 0.0);
    const auto grads = gradients(m);
    int checked = 0;
    for (const auto& e : m.params().entries()) {
      if (!sampled(e.spec)) continue;
      const grad_report rep = check_gradient(e.name, m.param_data() + e.offset, grads.data() + e.offset,
                                             std::size_t(e.spec.numel()), objective, 6, 1e-6, 1e-2);
      INFO(rep.name << ": max relative error " << rep.max_rel_error << " over " << rep.checked << " elements");
      CHECK(rep.max_rel_error < 1e-6);
      ++checked;
    }
    CHECK(checked >= 10);
  }
}

namespace {

// Row i: `prompt` followed by completion i (completion tokens scored).
dsx::post::token_rows teacher_rows(const std::vector<std::int32_t>& prompt, const std::vector<dsx::post::completion>& cs) {
  std::vector<std::vector<std::int32_t>> prompts(cs.size(), prompt), ids;
  for (const auto& c : cs) ids.push_back(c.ids);
  return dsx::post::completion_rows(prompts, ids, 0);
}

}  // namespace

TEST_CASE("post grad: sample() through the latent cache", "[grad][post]") {
  dsx::backend::host be;
  model m(be, 2, 16);
  init_params(m, 601);
  const std::vector<std::int32_t> prompt{3, 7, 1, 12};
  const std::int64_t n = 3;  // more completions than the planned batch: two chunks

  SECTION("temperature 0 is generate_greedy") {
    const auto greedy = m.generate_greedy(prompt, 1, 4, 8);
    const auto cs = dsx::post::sample(m, prompt, n, {.temperature = 0, .max_new = 8}, 1, 0);
    for (const auto& c : cs) {
      CHECK(c.ids == greedy);
      CHECK_FALSE(c.stopped);
      CHECK(c.logprobs.size() == 8);
    }
    // A stop token ends the completion at its first occurrence, the token kept.
    const std::int32_t stop = greedy[3];
    const auto end = std::find(greedy.begin(), greedy.end(), stop) + 1;
    const auto stopped = dsx::post::sample(m, prompt, n, {.temperature = 0, .max_new = 8, .stop = {stop}}, 1, 0);
    for (const auto& c : stopped) {
      CHECK(c.stopped);
      CHECK(c.ids == std::vector<std::int32_t>(greedy.begin(), end));
      CHECK(c.logprobs == std::vector<double>(cs[0].logprobs.begin(), cs[0].logprobs.begin() + (end - greedy.begin())));
    }
  }

  SECTION("stop tokens, reproducibility and teacher forcing at temperature 1") {
    const dsx::post::sampling_options o{.max_new = 10, .stop = {0, 1, 2, 3, 4}};
    const auto cs = dsx::post::sample(m, prompt, n, o, 7, 2);
    int stopped = 0;
    for (const auto& c : cs) {
      REQUIRE(!c.ids.empty());
      REQUIRE(c.logprobs.size() == c.ids.size());
      const auto is_stop = [&](std::int32_t t) { return std::find(o.stop.begin(), o.stop.end(), t) != o.stop.end(); };
      // Only the last token may be a stop token; it is one exactly when the completion stopped.
      CHECK(std::none_of(c.ids.begin(), c.ids.end() - 1, is_stop));
      CHECK(c.stopped == is_stop(c.ids.back()));
      if (!c.stopped) CHECK(c.ids.size() == 10);
      stopped += c.stopped;
    }
    CHECK(stopped > 0);

    const auto again = dsx::post::sample(m, prompt, n, o, 7, 2);
    const auto other = dsx::post::sample(m, prompt, n, o, 7, 3);
    bool differs = false;
    for (std::size_t i = 0; i < cs.size(); ++i) {
      CHECK(again[i].ids == cs[i].ids);
      CHECK(again[i].logprobs == cs[i].logprobs);
      differs = differs || other[i].ids != cs[i].ids;
    }
    CHECK(differs);

    // The draws depend on (seed, stream, step, completion) only: a model planned for all rows at once
    // (one chunk) draws the same completions.
    model wide(be, 4, 16);
    dsx::post::copy_weights(wide, m);
    const auto one_chunk = dsx::post::sample(wide, prompt, n, o, 7, 2);
    for (std::size_t i = 0; i < cs.size(); ++i) {
      CHECK(one_chunk[i].ids == cs[i].ids);
      for (std::size_t t = 0; t < cs[i].ids.size(); ++t)
        CHECK(one_chunk[i].logprobs[t] == Approx(cs[i].logprobs[t]).epsilon(1e-12));
    }

    // The decode's log-probabilities are the training forward's at the completion positions.
    const auto rows = teacher_rows(prompt, cs);
    const auto lp = dsx::post::rows_logprobs(m, rows);
    for (std::int64_t r = 0; r < rows.rows; ++r) {
      std::size_t k = 0;
      for (std::int64_t t = 0; t < rows.seq; ++t) {
        const std::size_t i = std::size_t(r * rows.seq + t);
        if (!rows.scored[i]) continue;
        INFO("completion " << r << " token " << k);
        CHECK(std::abs(lp[i] - cs[std::size_t(r)].logprobs[k]) < 1e-9);
        ++k;
      }
      CHECK(k == cs[std::size_t(r)].ids.size());
    }
  }

  SECTION("bad requests") {
    CHECK_THROWS_WITH(dsx::post::sample(m, prompt, n, {.max_new = 13}, 1, 0),
                      Catch::Contains("prompt of 4 tokens + max_new 13") && Catch::Contains("planned length 16"));
    CHECK_THROWS_WITH(dsx::post::sample(m, std::vector<std::int32_t>{}, n, {}, 1, 0), Catch::Contains("prompt is empty"));
    CHECK_THROWS_WITH(dsx::post::sample(m, prompt, 0, {}, 1, 0), Catch::Contains("at least one completion"));
  }
}
