// The post-training math on the host (post/losses.hpp, post/logprob.hpp, post/sampling.hpp's draw_token):
// every value against numbers computed here from the written formulas, every gradient against the hand
// formula and against central differences of the returned value.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <vector>

#include "dsx/post/logprob.hpp"
#include "dsx/post/losses.hpp"
#include "dsx/post/sampling.hpp"
#include "support/gradcheck.hpp"

using dsx::post::grpo_aggregation;
using dsx::post::grpo_loss_options;
using dsx::test::random_vector;
using dsx::test::require_gradient;

namespace {

using bytes = std::vector<std::uint8_t>;
using doubles = std::vector<double>;

// softmax(x / temperature), straight from the definition (the inputs are small: no max shift needed).
doubles softmax(const doubles& x, double temperature = 1.0) {
  doubles p(x.size());
  double sum = 0;
  for (std::size_t i = 0; i < x.size(); ++i) sum += p[i] = std::exp(x[i] / temperature);
  for (double& v : p) v /= sum;
  return p;
}

}  // namespace

TEST_CASE("post losses: masked_nll averages over the step's scored tokens", "[post]") {
  const doubles logp{-1.0, -2.0, -0.5, -3.0};
  const bytes scored{1, 0, 1, 1};
  doubles d(4);
  // The step has 5 scored tokens, this micro-batch 3 of them: (1 + 0.5 + 3) / 5.
  CHECK(dsx::post::masked_nll(logp, scored, 5, d) == Approx(0.9).epsilon(1e-15));
  CHECK(d == doubles{-0.2, 0.0, -0.2, -0.2});
  CHECK_THROWS_WITH(dsx::post::masked_nll(logp, scored, 0, d), Catch::Contains("no trained token"));
  doubles short_d(3);
  CHECK_THROWS_WITH(dsx::post::masked_nll(logp, scored, 5, short_d), Catch::Contains("differ in size"));
}

TEST_CASE("post losses: log_sigmoid and sigmoid stay finite and accurate at large |x|", "[post]") {
  for (double x : {-3.0, -0.3, 0.0, 0.3, 3.0}) {
    CHECK(dsx::post::sigmoid(x) == Approx(1 / (1 + std::exp(-x))).epsilon(1e-14));
    CHECK(dsx::post::log_sigmoid(x) == Approx(-std::log(1 + std::exp(-x))).epsilon(1e-14));
  }
  CHECK(dsx::post::log_sigmoid(-800.0) == -800.0);  // exp(800) overflows a naive evaluation
  CHECK(dsx::post::log_sigmoid(800.0) == 0.0);
  CHECK(dsx::post::log_sigmoid(-40.0) == Approx(-40.0 - std::exp(-40.0)).epsilon(1e-15));
  CHECK(dsx::post::log_sigmoid(40.0) == Approx(-std::exp(-40.0)).epsilon(1e-12));  // not rounded to 0
  CHECK(dsx::post::sigmoid(-800.0) == 0.0);
  CHECK(dsx::post::sigmoid(800.0) == 1.0);
  CHECK(dsx::post::sigmoid(-40.0) == Approx(std::exp(-40.0)).epsilon(1e-12));
}

TEST_CASE("post losses: Bradley-Terry value, accuracy, margin and gradients", "[post]") {
  const doubles chosen{1.0, 0.2}, rejected{0.5, 0.7};  // margins 0.5 and −0.5
  const auto r = dsx::post::bradley_terry(chosen, rejected);
  CHECK(r.loss == Approx((std::log(1 + std::exp(-0.5)) + std::log(1 + std::exp(0.5))) / 2).epsilon(1e-14));
  CHECK(r.accuracy == 0.5);
  CHECK(r.margin == Approx(0.0).margin(1e-15));
  CHECK(r.dchosen[0] == Approx(-0.5 / (1 + std::exp(0.5))).epsilon(1e-14));
  CHECK(r.dchosen[1] == Approx(-0.5 / (1 + std::exp(-0.5))).epsilon(1e-14));
  CHECK(r.drejected[0] == Approx(0.5 / (1 + std::exp(0.5))).epsilon(1e-14));
  CHECK(r.drejected[1] == Approx(0.5 / (1 + std::exp(-0.5))).epsilon(1e-14));
  CHECK_THROWS_WITH(dsx::post::bradley_terry(chosen, doubles{1.0}), Catch::Contains("as many chosen as rejected"));
  CHECK_THROWS(dsx::post::bradley_terry(doubles{}, doubles{}));
}

TEST_CASE("post losses: DPO on two pairs with beta 0.1", "[post]") {
  doubles pc{-10.0, -20.0}, pr{-12.0, -18.0};
  const doubles rc{-11.0, -19.0}, rr{-11.5, -19.5};
  const double beta = 0.1;
  // m = β((π_c − ref_c) − (π_r − ref_r)): 0.1 · (1 − (−0.5)) = 0.15 and 0.1 · (−1 − 1.5) = −0.25.
  const double m0 = 0.15, m1 = -0.25;
  const auto r = dsx::post::dpo(pc, pr, rc, rr, beta);
  CHECK(r.loss == Approx((std::log(1 + std::exp(-m0)) + std::log(1 + std::exp(-m1))) / 2).epsilon(1e-13));
  CHECK(r.accuracy == 0.5);
  CHECK(r.margin == Approx((m0 + m1) / 2).epsilon(1e-12));
  // d/dπ_c of −log σ(m) / n = −β σ(−m) / n = −β / (n (1 + e^m)); d/dπ_r is its negation.
  CHECK(r.dchosen[0] == Approx(-beta / (2 * (1 + std::exp(m0)))).epsilon(1e-12));
  CHECK(r.dchosen[1] == Approx(-beta / (2 * (1 + std::exp(m1)))).epsilon(1e-12));
  CHECK(r.drejected[0] == Approx(beta / (2 * (1 + std::exp(m0)))).epsilon(1e-12));
  CHECK(r.drejected[1] == Approx(beta / (2 * (1 + std::exp(m1)))).epsilon(1e-12));

  const auto loss = [&] { return dsx::post::dpo(pc, pr, rc, rr, beta).loss; };
  require_gradient("dpo d/d policy_chosen", pc.data(), r.dchosen.data(), pc.size(), loss);
  require_gradient("dpo d/d policy_rejected", pr.data(), r.drejected.data(), pr.size(), loss);

  CHECK_THROWS_WITH(dsx::post::dpo(pc, pr, rc, rr, 0.0), Catch::Contains("beta must be positive"));
  CHECK_THROWS_WITH(dsx::post::dpo(pc, pr, rc, doubles{1.0}, beta), Catch::Contains("one policy and one reference"));
}

TEST_CASE("post losses: DPO stays finite for huge margins", "[post]") {
  const auto r = dsx::post::dpo(doubles{0.0}, doubles{-1e5}, doubles{0.0}, doubles{0.0}, 1.0);
  CHECK(r.loss == Approx(0.0).margin(1e-300));
  CHECK(r.dchosen[0] == 0.0);
  const auto w = dsx::post::dpo(doubles{-1e5}, doubles{0.0}, doubles{0.0}, doubles{0.0}, 1.0);
  CHECK(w.loss == 1e5);
  CHECK(w.dchosen[0] == -1.0);
  CHECK(w.accuracy == 0.0);
}

TEST_CASE("post losses: group advantages, scaled and Dr. GRPO, zero-variance groups", "[post]") {
  const doubles rewards{1, 0, 0, 1, 0.5, 0.5, 0.5, 0.5, 2, 0, 1, 3};
  // Group means 0.5, 0.5, 1.5; sample variances 1/3, 0, 5/3.
  const doubles centred{0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 0.5, -1.5, -0.5, 1.5};
  const double s0 = std::sqrt(1.0 / 3) + 1e-4, s2 = std::sqrt(5.0 / 3) + 1e-4;
  const auto scaled = dsx::post::group_advantages(rewards, 4, true);
  CHECK(scaled.zero_variance_groups == 1);
  for (std::size_t i = 0; i < rewards.size(); ++i) {
    INFO("reward " << i);
    const double den = i < 4 ? s0 : i < 8 ? 1.0 : s2;
    CHECK(scaled.values[i] == Approx(centred[i] / den).epsilon(1e-14).margin(1e-300));
  }
  const auto dr = dsx::post::group_advantages(rewards, 4, false);
  CHECK(dr.zero_variance_groups == 1);
  for (std::size_t i = 0; i < rewards.size(); ++i) CHECK(dr.values[i] == Approx(centred[i]).margin(1e-15));

  const auto all_equal = dsx::post::group_advantages(doubles{3, 3, -1, -1}, 2, true);
  CHECK(all_equal.zero_variance_groups == 2);
  CHECK(all_equal.values == doubles{0, 0, 0, 0});

  CHECK_THROWS_WITH(dsx::post::group_advantages(doubles{1, 2, 3}, 2, true),
                    Catch::Contains("3 rewards do not form groups of 2"));
  CHECK_THROWS_WITH(dsx::post::group_advantages(doubles{1, 2}, 1, true), Catch::Contains("at least 2"));
  CHECK_THROWS(dsx::post::group_advantages(doubles{1, 2}, 0, false));
}

namespace {

// One token's GRPO term from DeepSeekMath Eq. 3–4, written independently of losses.hpp:
// l = −min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high) A) + β k3 and its derivative with respect to logp.
struct grpo_term {
  double loss, grad, ratio, k3;
  bool clipped;
};
grpo_term reference_term(double logp, double old, double ref, double a, double eps_low, double eps_high, double beta) {
  const double rho = std::exp(logp - old);
  const double bounded = std::min(std::max(rho, 1 - eps_low), 1 + eps_high);
  const double surrogate = rho * a, clipped = bounded * a;
  const double k3 = std::exp(ref - logp) - (ref - logp) - 1;
  // When the clipped term is the strict minimum it is constant in logp; otherwise d(ρA)/d logp = ρA.
  const bool clip = clipped < surrogate;
  return {-std::min(surrogate, clipped) + beta * k3, (clip ? 0.0 : -rho * a) + beta * (1 - std::exp(ref - logp)), rho,
          k3, clip};
}

// Two rows of 4 positions: row 0 scores positions 1, 2, row 1 positions 1, 2, 3 (5 completion tokens).
struct grpo_case {
  doubles logp{0.0, -1.2, -0.7, 0.0, 0.0, -2.0, -0.3, -1.5};
  doubles old{0.0, -1.25, -0.62, 0.0, 0.0, -1.9, -0.35, -1.45};
  doubles ref{0.0, -1.0, -0.9, 0.0, 0.0, -2.2, -0.2, -1.6};
  bytes mask{0, 1, 1, 0, 0, 1, 1, 1};
  doubles advantage{0.8, -0.5};
  static constexpr std::int64_t seq = 4;
};

// The loss, statistics and gradient the aggregation gives `c` (row r's tokens weighted by weight[r]).
struct grpo_expected {
  double loss = 0, kl = 0, ratio = 0, clip_fraction = 0;
  doubles dlogp;
};
grpo_expected reference_loss(const grpo_case& c, const grpo_loss_options& o, const doubles& weight) {
  grpo_expected e;
  e.dlogp.assign(c.logp.size(), 0.0);
  double tokens = 0;
  for (auto m : c.mask) tokens += m;
  for (std::size_t i = 0; i < c.logp.size(); ++i) {
    if (!c.mask[i]) continue;
    const std::size_t r = i / std::size_t(c.seq);
    const auto t = reference_term(c.logp[i], c.old[i], c.ref[i], c.advantage[r], o.eps_low, o.eps_high, o.beta);
    e.loss += weight[r] * t.loss;
    e.dlogp[i] = weight[r] * t.grad;
    if (o.beta > 0) e.kl += t.k3 / tokens;  // β = 0 reads no reference log-probabilities
    e.ratio += t.ratio / tokens;
    e.clip_fraction += t.clipped / tokens;
  }
  return e;
}

void check_result(const dsx::post::grpo_loss_result& got, const grpo_expected& want) {
  CHECK(got.loss == Approx(want.loss).epsilon(1e-13));
  CHECK(got.kl == Approx(want.kl).epsilon(1e-13));
  CHECK(got.ratio == Approx(want.ratio).epsilon(1e-13));
  CHECK(got.clip_fraction == Approx(want.clip_fraction).epsilon(1e-15));
  REQUIRE(got.dlogp.size() == want.dlogp.size());
  for (std::size_t i = 0; i < want.dlogp.size(); ++i) {
    INFO("position " << i);
    CHECK(got.dlogp[i] == Approx(want.dlogp[i]).epsilon(1e-13).margin(1e-300));
  }
}

dsx::post::grpo_loss_result run(const grpo_case& c, const grpo_loss_options& o) {
  return dsx::post::grpo_loss(c.logp, c.old, c.ref, c.mask, c.advantage, c.seq, o);
}

}  // namespace

TEST_CASE("post losses: GRPO loss, KL and gradient for the three aggregations", "[post]") {
  const grpo_case c;
  grpo_loss_options o;
  o.beta = 0.04;
  o.max_length = 6;
  SECTION("token: every completion token weighs 1 / 5") {
    o.aggregation = grpo_aggregation::token;
    check_result(run(c, o), reference_loss(c, o, {1.0 / 5, 1.0 / 5}));
  }
  SECTION("sequence: 1 / (N |o_i|)") {
    o.aggregation = grpo_aggregation::sequence;
    check_result(run(c, o), reference_loss(c, o, {1.0 / (2 * 2), 1.0 / (2 * 3)}));
  }
  SECTION("constant: 1 / (N L_max)") {
    o.aggregation = grpo_aggregation::constant;
    check_result(run(c, o), reference_loss(c, o, {1.0 / (2 * 6), 1.0 / (2 * 6)}));
  }
  const auto r = run(c, o);
  CHECK(r.clip_fraction == 0.0);  // every ratio of this case lies inside [0.8, 1.2]
  CHECK(r.dlogp[0] == 0.0);
  CHECK(r.dlogp[3] == 0.0);
  CHECK(r.dlogp[4] == 0.0);
}

TEST_CASE("post losses: GRPO clipping stops the surrogate's gradient only on the clipped side", "[post]") {
  grpo_case c;
  // Row 0 (A = 0.8 > 0): ρ = e^0.3 > 1 + ε_high is clipped; ρ = e^−0.5 < 1 − ε_low is not (min is ρA).
  // Row 1 (A = −0.5 < 0): ρ = e^−0.4 < 1 − ε_low is clipped; ρ = e^0.4 > 1 + ε_high is not; ρ = 1.
  c.logp = {0.0, -1.0, -1.0, 0.0, 0.0, -1.0, -1.0, -1.0};
  c.old = {0.0, -1.3, -0.5, 0.0, 0.0, -0.6, -1.4, -1.0};
  grpo_loss_options o;
  o.beta = 0;
  o.eps_low = 0.2;
  o.eps_high = 0.28;
  const auto r = run(c, o);
  CHECK(r.clip_fraction == Approx(2.0 / 5).epsilon(1e-15));
  CHECK(r.dlogp[1] == 0.0);
  CHECK(r.dlogp[5] == 0.0);
  CHECK(r.dlogp[2] == Approx(-std::exp(-0.5) * 0.8 / 5).epsilon(1e-14));
  CHECK(r.dlogp[6] == Approx(std::exp(0.4) * 0.5 / 5).epsilon(1e-14));
  CHECK(r.dlogp[7] == Approx(0.5 / 5).epsilon(1e-14));
  // The clipped tokens still count in the value, at the bound.
  const double expected = (-1.28 * 0.8 - std::exp(-0.5) * 0.8 + 0.8 * 0.5 + std::exp(0.4) * 0.5 + 0.5) / 5;
  CHECK(r.loss == Approx(expected).epsilon(1e-14));
  check_result(r, reference_loss(c, o, {1.0 / 5, 1.0 / 5}));
  // With β > 0 a clipped token keeps the KL term's gradient.
  c.ref = doubles(8, -0.8);
  o.beta = 0.1;
  const auto k = run(c, o);
  CHECK(k.dlogp[1] == Approx(0.1 * (1 - std::exp(0.2)) / 5).epsilon(1e-14));
  check_result(k, reference_loss(c, o, {1.0 / 5, 1.0 / 5}));
}

TEST_CASE("post losses: GRPO on-policy, the value is −mean A but the gradient is −A per token", "[post]") {
  grpo_case c;
  c.old = c.logp;
  grpo_loss_options o;
  o.beta = 0;
  SECTION("token") {
    const auto r = run(c, o);
    CHECK(r.loss == Approx(-(2 * 0.8 + 3 * -0.5) / 5).epsilon(1e-14));
    CHECK(r.ratio == Approx(1.0).epsilon(1e-15));
    CHECK(r.kl == 0.0);
    CHECK(r.dlogp[1] == Approx(-0.8 / 5).epsilon(1e-15));
    CHECK(r.dlogp[2] == Approx(-0.8 / 5).epsilon(1e-15));
    CHECK(r.dlogp[7] == Approx(0.5 / 5).epsilon(1e-15));
  }
  SECTION("sequence") {
    o.aggregation = grpo_aggregation::sequence;
    const auto r = run(c, o);
    CHECK(r.loss == Approx(-(0.8 - 0.5) / 2).epsilon(1e-14));
    CHECK(r.dlogp[1] == Approx(-0.8 / 4).epsilon(1e-15));
    CHECK(r.dlogp[6] == Approx(0.5 / 6).epsilon(1e-15));
  }
}

TEST_CASE("post losses: GRPO micro-batches with the step's counts add up to the whole batch", "[post]") {
  const grpo_case c;
  for (auto aggregation : {grpo_aggregation::token, grpo_aggregation::sequence, grpo_aggregation::constant}) {
    INFO("aggregation " << int(aggregation));
    grpo_loss_options o;
    o.beta = 0.04;
    o.max_length = 6;
    o.aggregation = aggregation;
    const auto whole = run(c, o);
    o.batch_tokens = 5;
    o.batch_rows = 2;
    const auto part = [&](std::size_t row) {
      const auto at = [&](const doubles& v) { return std::span<const double>(v).subspan(row * 4, 4); };
      return dsx::post::grpo_loss(at(c.logp), at(c.old), at(c.ref), std::span<const std::uint8_t>(c.mask).subspan(row * 4, 4),
                                  std::span<const double>(c.advantage).subspan(row, 1), c.seq, o);
    };
    const auto a = part(0), b = part(1);
    CHECK(a.loss + b.loss == Approx(whole.loss).epsilon(1e-14));
    CHECK(a.kl + b.kl == Approx(whole.kl).epsilon(1e-14));
    CHECK(a.ratio + b.ratio == Approx(whole.ratio).epsilon(1e-14));
    CHECK(a.clip_fraction + b.clip_fraction == Approx(whole.clip_fraction).margin(1e-15));
    for (std::size_t i = 0; i < 4; ++i) {
      CHECK(a.dlogp[i] == Approx(whole.dlogp[i]).epsilon(1e-14));
      CHECK(b.dlogp[i] == Approx(whole.dlogp[i + 4]).epsilon(1e-14));
    }
  }
}

TEST_CASE("post losses: GRPO gradient against finite differences, random inputs", "[post]") {
  const std::int64_t rows = 3, seq = 7;
  const std::size_t n = std::size_t(rows * seq);
  doubles logp = random_vector(n, 1, 1.0);
  for (double& x : logp) x = -std::abs(x) - 0.1;
  // logp − old is either inside ±0.1 or beyond ±0.4, away from the clip edges log 0.8 and log 1.2.
  const doubles noise = random_vector(n, 2, 0.05), far = random_vector(n, 3, 1.0);
  doubles old(n), ref(n);
  const doubles ref_noise = random_vector(n, 4, 0.3);
  bytes mask(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double delta = i % 3 == 0 ? (far[i] > 0 ? 0.5 : -0.5) : std::clamp(noise[i], -0.1, 0.1);
    old[i] = logp[i] - delta;
    ref[i] = logp[i] + ref_noise[i];
    mask[i] = i % std::size_t(seq) >= 2 && i % 5 != 0;
  }
  const doubles advantage{1.1, -0.7, 0.4};
  for (auto aggregation : {grpo_aggregation::token, grpo_aggregation::sequence, grpo_aggregation::constant}) {
    INFO("aggregation " << int(aggregation));
    grpo_loss_options o;
    o.beta = 0.05;
    o.max_length = seq;
    o.aggregation = aggregation;
    const auto r = dsx::post::grpo_loss(logp, old, ref, mask, advantage, seq, o);
    CHECK(r.clip_fraction > 0);
    require_gradient("grpo dlogp", logp.data(), r.dlogp.data(), n,
                     [&] { return dsx::post::grpo_loss(logp, old, ref, mask, advantage, seq, o).loss; });
  }
}

TEST_CASE("post losses: GRPO input checks and an empty completion set", "[post]") {
  const grpo_case c;
  grpo_loss_options o;
  CHECK_THROWS_WITH(dsx::post::grpo_loss(c.logp, c.old, c.ref, c.mask, doubles{1.0}, c.seq, o),
                    Catch::Contains("the advantages (rows)"));
  CHECK_THROWS_WITH(dsx::post::grpo_loss(c.logp, c.old, doubles{}, c.mask, c.advantage, c.seq, o),
                    Catch::Contains("must be (rows, seq)"));
  o.eps_low = 1.0;
  CHECK_THROWS_WITH(run(c, o), Catch::Contains("eps_low < 1"));
  o.eps_low = 0.2;
  o.aggregation = grpo_aggregation::constant;
  CHECK_THROWS_WITH(run(c, o), Catch::Contains("needs max_length > 0"));
  // β = 0 needs no reference log-probabilities.
  o = {};
  o.beta = 0;
  CHECK_NOTHROW(dsx::post::grpo_loss(c.logp, c.old, doubles{}, c.mask, c.advantage, c.seq, o));
  grpo_case none = c;
  none.mask.assign(8, 0);
  const auto r = run(none, {});
  CHECK(r.loss == 0.0);
  CHECK(r.dlogp == doubles(8, 0.0));
}

TEST_CASE("post logprob: next-token log-probabilities and their backward on a hand example", "[post]") {
  // One row of 3 tokens, vocab 3: position 0 scores token 0, position 1 token 1, position 2 nothing.
  const std::vector<std::int32_t> tokens{2, 0, 1};
  const doubles logits{1.0, 2.0, 0.5, 0.0, -1.0, 3.0, 0.2, 0.1, 0.0};
  const auto lp = dsx::post::token_logprobs<double>(logits, tokens, 1, 3, 3);
  const double lse0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(0.5));
  const double lse1 = std::log(std::exp(0.0) + std::exp(-1.0) + std::exp(3.0));
  CHECK(lp[0] == Approx(1.0 - lse0).epsilon(1e-14));
  CHECK(lp[1] == Approx(-1.0 - lse1).epsilon(1e-14));
  CHECK(lp[2] == 0.0);

  const doubles g{0.7, -1.3, 5.0};  // the last position's g is ignored: it scores no token
  doubles dl(9);
  dsx::post::logprob_backward<double>(logits, tokens, 1, 3, 3, g, dl);
  const doubles p0 = softmax({1.0, 2.0, 0.5}), p1 = softmax({0.0, -1.0, 3.0});
  const doubles expected{0.7 * (1 - p0[0]), -0.7 * p0[1], -0.7 * p0[2], 1.3 * p1[0], -1.3 * (1 - p1[1]), 1.3 * p1[2],
                         0, 0, 0};
  for (std::size_t i = 0; i < 9; ++i) CHECK(dl[i] == Approx(expected[i]).epsilon(1e-14).margin(1e-300));

  CHECK_THROWS_WITH(dsx::post::token_logprobs<double>(logits, tokens, 1, 3, 4), Catch::Contains("expected 12 logits"));
}

TEST_CASE("post logprob: backward against finite differences of sum g logp", "[post]") {
  const std::int64_t batch = 2, seq = 5, vocab = 7;
  doubles logits = random_vector(std::size_t(batch * seq * vocab), 11, 2.0);
  const std::vector<std::int32_t> tokens{3, 0, 6, 6, 2, 1, 4, 5, 0, 3};
  const doubles g = random_vector(std::size_t(batch * seq), 12, 1.0);
  doubles dl(logits.size());
  dsx::post::logprob_backward<double>(logits, tokens, batch, seq, vocab, g, dl);
  require_gradient("dlogits", logits.data(), dl.data(), logits.size(), [&] {
    const auto lp = dsx::post::token_logprobs<double>(logits, tokens, batch, seq, vocab);
    return dsx::test::dot(lp.data(), g.data(), lp.size());
  });
  // float logits give the same values to float precision (accumulation is in double).
  const std::vector<float> f(logits.begin(), logits.end());
  const auto lpf = dsx::post::token_logprobs<float>(f, tokens, batch, seq, vocab);
  const auto lpd = dsx::post::token_logprobs<double>(logits, tokens, batch, seq, vocab);
  for (std::size_t i = 0; i < lpd.size(); ++i) CHECK(lpf[i] == Approx(lpd[i]).epsilon(1e-5).margin(1e-5));
}

TEST_CASE("post logprob: distillation KL at temperatures 1 and 2", "[post]") {
  const std::int64_t rows = 3, vocab = 4;
  doubles student = random_vector(std::size_t(rows * vocab), 21, 1.5);
  const doubles teacher = random_vector(std::size_t(rows * vocab), 22, 1.5);
  const doubles weight{0.7, 0.0, 1.3};
  for (double tau : {1.0, 2.0}) {
    INFO("temperature " << tau);
    doubles d(student.size());
    const double value = dsx::post::distill_kl<double, double>(student, teacher, weight, rows, vocab, tau, d);
    double expected = 0;
    for (std::int64_t r = 0; r < rows; ++r) {
      const doubles s(student.begin() + r * vocab, student.begin() + (r + 1) * vocab);
      const doubles t(teacher.begin() + r * vocab, teacher.begin() + (r + 1) * vocab);
      const doubles ps = softmax(s, tau), pt = softmax(t, tau);
      double kl = 0;
      for (std::size_t v = 0; v < ps.size(); ++v) kl += pt[v] * std::log(pt[v] / ps[v]);
      expected += weight[std::size_t(r)] * tau * tau * kl;
      for (std::size_t v = 0; v < ps.size(); ++v)
        CHECK(d[std::size_t(r * vocab) + v] ==
              Approx(weight[std::size_t(r)] * tau * (ps[v] - pt[v])).epsilon(1e-12).margin(1e-300));
    }
    CHECK(value == Approx(expected).epsilon(1e-12));
    require_gradient("dstudent", student.data(), d.data(), student.size(), [&] {
      doubles scratch(student.size());
      return dsx::post::distill_kl<double, double>(student, teacher, weight, rows, vocab, tau, scratch);
    });
  }
  doubles d(student.size());
  CHECK_THROWS_WITH((dsx::post::distill_kl<double, double>(student, teacher, weight, rows, vocab, 0.0, d)),
                    Catch::Contains("temperature must be positive"));
}

namespace {

// Frequencies of the tokens draw_token returns for u = (i + 0.5) / points, i = 0 .. points − 1.
doubles sweep(const doubles& logits, const dsx::post::sampling_options& o, int points) {
  std::vector<std::int32_t> order;
  doubles prob, counts(logits.size(), 0.0);
  for (int i = 0; i < points; ++i) {
    double lp = 0;
    const auto t = dsx::post::draw_token<double>(logits, o, (i + 0.5) / points, order, prob, lp);
    counts[std::size_t(t)] += 1.0 / points;
  }
  return counts;
}

}  // namespace

TEST_CASE("post sampling: draw_token's greedy cases, frequencies and log-probability", "[post]") {
  const doubles logits{0.3, 2.0, -1.0, 1.5};
  const doubles p1 = softmax(logits);  // 0.099, 0.544, 0.027, 0.330
  std::vector<std::int32_t> order;
  doubles prob;
  const auto draw = [&](const dsx::post::sampling_options& o, double u) {
    double lp = 0;
    const auto t = dsx::post::draw_token<double>(logits, o, u, order, prob, lp);
    // The recorded log-probability is the model's: temperature 1, no truncation.
    CHECK(lp == Approx(std::log(p1[std::size_t(t)])).epsilon(1e-14));
    return t;
  };
  for (double u : {0.0, 0.3, 0.999999}) {
    CHECK(draw({.temperature = 0}, u) == 1);
    CHECK(draw({.top_k = 1}, u) == 1);
    CHECK(draw({.top_p = 1e-9}, u) == 1);
    CHECK(draw({.temperature = 0.7, .top_p = 1e-9, .top_k = 3}, u) == 1);
  }
  // Equal maxima: greedy takes the smaller id.
  double lp = 0;
  CHECK(dsx::post::draw_token<double>(doubles{0.0, 1.0, 1.0}, {.temperature = 0}, 0.5, order, prob, lp) == 1);

  // On a grid of `points` values of u each token's share is its probability to within 1 / points.
  const int points = 100000;
  const double tol = 1.0 / points;
  SECTION("temperature 1") {
    const auto f = sweep(logits, {}, points);
    for (std::size_t v = 0; v < 4; ++v) CHECK(std::abs(f[v] - p1[v]) <= tol);
  }
  SECTION("temperature 0.5") {
    const doubles p = softmax(logits, 0.5);
    const auto f = sweep(logits, {.temperature = 0.5}, points);
    for (std::size_t v = 0; v < 4; ++v) CHECK(std::abs(f[v] - p[v]) <= tol);
  }
  SECTION("top_k 2 renormalises over the two most likely tokens") {
    const auto f = sweep(logits, {.top_k = 2}, points);
    CHECK(std::abs(f[1] - p1[1] / (p1[1] + p1[3])) <= tol);
    CHECK(std::abs(f[3] - p1[3] / (p1[1] + p1[3])) <= tol);
    CHECK(f[0] == 0.0);
    CHECK(f[2] == 0.0);
  }
  SECTION("top_p 0.7 keeps the smallest prefix reaching 0.7: tokens 1 and 3") {
    REQUIRE(p1[1] < 0.7);
    REQUIRE(p1[1] + p1[3] >= 0.7);
    const auto f = sweep(logits, {.top_p = 0.7}, points);
    CHECK(std::abs(f[1] - p1[1] / (p1[1] + p1[3])) <= tol);
    CHECK(f[0] + f[2] == 0.0);
  }
  SECTION("top_p over a wide vocabulary: the nucleus of 300 nearly equal tokens") {
    // The nucleus holds most of the 300 ids, far from the few-token cases above. Reference: a full sort.
    doubles wide(300);
    for (std::size_t v = 0; v < wide.size(); ++v) wide[v] = 0.01 * double((v * 37) % 300);
    const doubles p = softmax(wide, 0.8);
    std::vector<std::size_t> ids(wide.size());
    std::iota(ids.begin(), ids.end(), std::size_t(0));
    std::sort(ids.begin(), ids.end(), [&](std::size_t a, std::size_t b) { return wide[a] > wide[b]; });
    double mass = 0;
    std::size_t cut = 0;
    while (mass < 0.9) mass += p[ids[cut++]];
    REQUIRE(cut > 128);
    doubles expected(wide.size(), 0.0);
    for (std::size_t i = 0; i < cut; ++i) expected[ids[i]] = p[ids[i]] / mass;
    const auto f = sweep(wide, {.temperature = 0.8, .top_p = 0.9}, points);
    for (std::size_t v = 0; v < wide.size(); ++v) CHECK(std::abs(f[v] - expected[v]) <= tol);
  }
  SECTION("option checks") {
    CHECK_THROWS_WITH(dsx::post::sampling_options{.temperature = -1}.check(), Catch::Contains("temperature"));
    CHECK_THROWS_WITH(dsx::post::sampling_options{.top_p = 0}.check(), Catch::Contains("top_p"));
    CHECK_THROWS_WITH(dsx::post::sampling_options{.top_k = -1}.check(), Catch::Contains("top_k"));
    CHECK_THROWS_WITH(dsx::post::sampling_options{.max_new = 0}.check(), Catch::Contains("max_new"));
  }
}
