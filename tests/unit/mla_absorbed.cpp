// Decoding through the latent cache (layers/mla.hpp `decode`, absorbed form) against the full-sequence
// forward (per-head K and V materialised): prefill a prompt, then continue one token or several at a
// time; every chunk's output must equal the forward's rows at the same positions.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/layers/mla.hpp"
#include "support/gradcheck.hpp"

using dsx::test::random_vector;

namespace {

dsx::model_config test_config(int q_lora, bool yarn) {
  dsx::model_config c{.vocab = 8, .hidden = 16, .layers = 1, .dense_layers = 1, .dense_inter = 8,
                      .mla = {.heads = 3, .q_lora = q_lora, .kv_lora = 6, .nope = 4, .rope = 4, .v = 5},
                      .rms_eps = 1e-6, .max_positions = 32};
  if (yarn) c.rope.yarn = {.factor = 4.0, .original_max_positions = 4, .beta_fast = 32.0, .beta_slow = 1.0,
                           .mscale = 1.0, .mscale_all_dim = 0.5};
  return c;
}

template <class T>
std::vector<T> converted(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Weights of one layer in storage type T, drawn in f64 so that every T sees the same model.
template <class T>
struct layer_weights {
  std::vector<T> q_proj, q_a_proj, q_a_norm, q_b_proj, kv_a_proj, kv_a_norm, kv_b_proj, o_proj;

  explicit layer_weights(const dsx::model_config& c) {
    const std::int64_t d = c.hidden, h = c.mla.heads, qk = c.mla.qk_head(), kv_lora = c.mla.kv_lora;
    std::uint64_t seed = 500;
    auto linear = [&](std::int64_t out, std::int64_t in) {
      return converted<T>(random_vector(out * in, ++seed, 1.0 / std::sqrt(double(in))));
    };
    auto norm = [&](std::int64_t dim) {
      auto w = random_vector(dim, ++seed, 0.2);
      for (auto& x : w) x += 1.0;
      return converted<T>(w);
    };
    if (c.mla.q_lora > 0) {
      q_a_proj = linear(c.mla.q_lora, d);
      q_a_norm = norm(c.mla.q_lora);
      q_b_proj = linear(h * qk, c.mla.q_lora);
    } else {
      q_proj = linear(h * qk, d);
    }
    kv_a_proj = linear(kv_lora + c.mla.rope, d);
    kv_a_norm = norm(kv_lora);
    kv_b_proj = linear(h * (c.mla.nope + c.mla.v), kv_lora);
    o_proj = linear(d, h * c.mla.v);
  }
  dsx::mla_weights<T> view() const {
    auto p = [](const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); };
    return {p(q_proj), p(q_a_proj), p(q_a_norm), p(q_b_proj), p(kv_a_proj), p(kv_a_norm), p(kv_b_proj), p(o_proj)};
  }
};

// Runs the full forward over `seq` tokens, then decodes the same tokens in `chunks` (sizes summing to
// seq) through a cache of `seq + 2` positions, and returns max |decode − forward| / max |forward|.
template <class T>
double decode_vs_forward(const dsx::model_config& cfg, const std::vector<std::int64_t>& chunks) {
  using A = dsx::accum_t<T>;
  dsx::backend::host be;
  const std::int64_t batch = 2, d = cfg.hidden, kv_lora = cfg.mla.kv_lora, rope = cfg.mla.rope;
  std::int64_t seq = 0;
  for (auto n : chunks) seq += n;
  const std::int64_t cap = seq + 2;
  const layer_weights<T> w(cfg);
  const auto x = converted<T>(random_vector(batch * seq * d, 7));  // (batch, seq, hidden)
  const auto table = dsx::make_rope_table<A>(cfg, int(cap));

  dsx::mla<T> layer(cfg);
  dsx::arena_plan plan;
  layer.plan(plan, batch, seq);
  dsx::arena<dsx::backend::host> act(be, plan.bytes());
  layer.bind(act.data(), plan);
  std::vector<std::byte> scratch(layer.scratch_bytes(batch, seq));
  std::vector<T> y_full(batch * seq * d);
  layer.forward(be, w.view(), x.data(), y_full.data(), batch, seq, table.cos.data(), table.sin.data(), scratch.data());

  // The cache is exactly kv_lora + rope values per position; NaN marks what decode has not written.
  const T nan = T(std::numeric_limits<float>::quiet_NaN());
  std::vector<T> c_kv(batch * cap * kv_lora, nan), k_pe(batch * cap * rope, nan);
  dsx::mla_cache<T> cache{c_kv.data(), k_pe.data(), cap};
  auto written = [&](std::int64_t b, std::int64_t pos) {
    bool c_all = true, c_none = true, pe_all = true, pe_none = true;
    for (std::int64_t i = 0; i < kv_lora; ++i) {
      const bool f = std::isfinite(double(c_kv[(b * cap + pos) * kv_lora + i]));
      c_all = c_all && f;
      c_none = c_none && !f;
    }
    for (std::int64_t i = 0; i < rope; ++i) {
      const bool f = std::isfinite(double(k_pe[(b * cap + pos) * rope + i]));
      pe_all = pe_all && f;
      pe_none = pe_none && !f;
    }
    return c_all && pe_all ? 1 : c_none && pe_none ? 0 : -1;  // -1: partly written
  };

  double max_diff = 0, max_ref = 0;
  std::int64_t start = 0;
  for (const std::int64_t n : chunks) {
    std::vector<T> xs(batch * n * d), ys(batch * n * d);  // (batch, n, hidden)
    for (std::int64_t b = 0; b < batch; ++b)
      std::copy_n(x.begin() + (b * seq + start) * d, n * d, xs.begin() + b * n * d);
    std::vector<std::byte> dscratch(layer.decode_scratch_bytes(batch, n));
    layer.decode(be, w.view(), xs.data(), ys.data(), batch, n, start, cache, table.cos.data(), table.sin.data(),
                 dscratch.data());
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t i = 0; i < n * d; ++i) {
        const double ref = double(y_full[(b * seq + start) * d + i]);
        max_diff = std::max(max_diff, std::abs(double(ys[b * n * d + i]) - ref));
        max_ref = std::max(max_ref, std::abs(ref));
      }
    start += n;
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t pos = 0; pos < cap; ++pos) {
        INFO("sequence " << b << ", cache position " << pos << ", after decoding up to " << start);
        REQUIRE(written(b, pos) == (pos < start ? 1 : 0));
      }
  }
  REQUIRE(max_ref > 0.1);
  return max_diff / max_ref;
}

}  // namespace

TEST_CASE("mla decode: one token at a time after a prompt equals the full forward (f64)", "[unit]") {
  for (int q_lora : {8, 0})
    for (bool yarn : {false, true}) {
      INFO("q_lora " << q_lora << ", yarn " << yarn);
      CHECK(decode_vs_forward<double>(test_config(q_lora, yarn), {3, 1, 1, 1, 1}) < 1e-12);
    }
}

TEST_CASE("mla decode: multi-token chunks equal the full forward (f64)", "[unit]") {
  for (int q_lora : {8, 0})
    for (bool yarn : {false, true}) {
      INFO("q_lora " << q_lora << ", yarn " << yarn);
      CHECK(decode_vs_forward<double>(test_config(q_lora, yarn), {2, 3, 1, 2}) < 1e-12);
      CHECK(decode_vs_forward<double>(test_config(q_lora, yarn), {7}) < 1e-12);  // the whole prompt at once
    }
}

TEST_CASE("mla decode: equals the full forward in f32", "[unit]") {
  for (int q_lora : {8, 0}) {
    INFO("q_lora " << q_lora);
    CHECK(decode_vs_forward<float>(test_config(q_lora, true), {3, 1, 2, 1}) < 1e-5);
  }
}

TEST_CASE("mla: bad sizes and positions are reported, not followed", "[unit]") {
  const auto cfg = test_config(8, false);
  dsx::backend::host be;
  dsx::mla<double> layer(cfg);
  const layer_weights<double> w(cfg);
  const auto table = dsx::make_rope_table<double>(cfg, 8);
  std::vector<double> x(2 * 4 * cfg.hidden), y(x.size());

  // Positions past the cache.
  std::vector<double> c_kv(2 * 4 * cfg.mla.kv_lora), k_pe(2 * 4 * cfg.mla.rope);
  dsx::mla_cache<double> cache{c_kv.data(), k_pe.data(), 4};
  std::vector<std::byte> dscratch(layer.decode_scratch_bytes(2, 2));
  CHECK_THROWS_AS(layer.decode(be, w.view(), x.data(), y.data(), 2, 2, 3, cache, table.cos.data(), table.sin.data(),
                               dscratch.data()),
                  dsx::error);
  // A missing weight of the configured query path.
  auto missing = w.view();
  missing.q_b_proj = nullptr;
  CHECK_THROWS_AS(layer.decode(be, missing, x.data(), y.data(), 2, 2, 0, cache, table.cos.data(), table.sin.data(),
                               dscratch.data()),
                  dsx::error);
  // More tokens than planned.
  dsx::arena_plan plan;
  layer.plan(plan, 2, 3);
  dsx::arena<dsx::backend::host> act(be, plan.bytes());
  layer.bind(act.data(), plan);
  std::vector<std::byte> scratch(layer.scratch_bytes(2, 4));
  CHECK_THROWS_AS(layer.forward(be, w.view(), x.data(), y.data(), 2, 4, table.cos.data(), table.sin.data(),
                                scratch.data()),
                  dsx::error);
  // An invalid configuration.
  auto bad = cfg;
  bad.mla.rope = 3;
  CHECK_THROWS_AS(dsx::mla<double>(bad), dsx::error);
}
