// The MoE primitives on the GPU (backend/cuda/moe.cuh) against the host backend (backend/host/moe.hpp) on
// random inputs: routing (groups scored by top-2 sums with the bias, or by their best expert with
// softmax), its backward, the stable sort by expert (empty experts included), dispatch, combine and their
// backwards, and the grouped GEMMs. Expert ids, the permutation and the offsets must be exactly equal;
// pure copies and sums in a fixed order must be bit-identical to the host in the same type; values are
// compared with gpu_test.cuh's tolerances (f32 against the host in f64). Outputs start as NaN (or a
// poison id) so an element a kernel fails to write fails the comparison. Errors the host throws at once
// (non-finite router scores, expert ids out of range) must surface from the GPU path too.
#include "gpu_test.cuh"
#include "moe_routing.cuh"

#include <random>

#include "dsx/backend/cuda/moe.cuh"
#include "dsx/backend/host/moe.hpp"

using namespace dsx::test::gpu;
using Catch::Matchers::Contains;
using dsx::bf16;
using dsx::route_params;
using dsx::score_fn;
using dsx::backend::host;
namespace {

constexpr std::int32_t poison_id = std::numeric_limits<std::int32_t>::min();

// Random logits (tokens, E) in T, each token redrawn until its routing margin (moe_routing.cuh) is at
// least 1e-5 relative: 20× and more the rounding difference between the backends' scores.
template <class T>
std::vector<T> draw_logits(const route_params& p, std::int64_t tokens, const std::vector<T>& bias, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<T> logits(std::size_t(tokens * p.experts));
  std::vector<double> row(std::size_t(p.experts)), b(bias.size());
  for (std::size_t e = 0; e < bias.size(); ++e) b[e] = to_double(bias[e]);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int attempt = 0;; ++attempt) {
      REQUIRE(attempt < 1000);
      for (int e = 0; e < p.experts; ++e) {
        const T v = from_double<T>(dist(rng));
        logits[std::size_t(t * p.experts + e)] = v;
        row[std::size_t(e)] = to_double(v);
      }
      if (routing_margin(p, row.data(), p.bias ? b.data() : nullptr) >= 1e-5) break;
    }
  }
  return logits;
}

// (assignments) expert ids in [0, E): uniform, or only every `stride`-th expert (the others stay empty),
// or a `hot` expert taking every other assignment.
std::vector<std::int32_t> draw_ids(std::int64_t assignments, int experts, std::uint64_t seed, int stride = 1,
                                   int hot = -1) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> pick(0, (experts - 1) / stride);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(assignments));
  for (std::size_t a = 0; a < ids.size(); ++a) ids[a] = hot >= 0 && a % 2 == 0 ? hot : pick(rng) * stride;
  return ids;
}

struct sorted {
  std::vector<std::int32_t> perm, inv_perm, offsets;
};
sorted host_sort(const std::vector<std::int32_t>& ids, int experts) {
  host hb;
  sorted s{std::vector<std::int32_t>(ids.size()), std::vector<std::int32_t>(ids.size()),
           std::vector<std::int32_t>(std::size_t(experts) + 1)};
  moe_sort_by_expert(hb, s.perm.data(), s.inv_perm.data(), s.offsets.data(), ids.data(), std::int64_t(ids.size()),
                     experts);
  return s;
}

// ---- routing ----

struct route_case {
  std::int64_t tokens;
  route_params p;  // experts, top_k, groups, top_groups, score, bias, norm, scale
};

constexpr route_case route_cases[] = {
    {1, {8, 1, 1, 1, score_fn::softmax, false, false, 1.0}},
    {7, {16, 2, 4, 2, score_fn::sigmoid, true, true, 2.5}},     // tiny V3
    {1000, {64, 8, 8, 3, score_fn::softmax, false, false, 16.0}},  // V2: groups scored by their best expert
    {1000, {16, 2, 1, 1, score_fn::sigmoid, false, true, 1.0}},
    {4096, {64, 1, 8, 3, score_fn::softmax, false, true, 1.0}},
    {4096, {256, 8, 8, 4, score_fn::sigmoid, true, true, 2.5}},  // V3
    {7, {256, 8, 8, 4, score_fn::sigmoid, true, true, 2.5}},
};

template <class T>
void check_route(cuda_backend& be, const route_case& rc, std::uint64_t seed) {
  using R = ref_t<T>;
  using A = dsx::accum_t<T>;
  using RA = dsx::accum_t<R>;
  const route_params& p = rc.p;
  const std::int64_t tokens = rc.tokens, assignments = tokens * p.top_k;
  INFO("tokens=" << tokens << " E=" << p.experts << " top_k=" << p.top_k << " groups=" << p.groups << "/"
                 << p.top_groups << " bias=" << p.bias << " softmax=" << (p.score == score_fn::softmax));
  const auto bias = p.bias ? random_values<T>(std::size_t(p.experts), seed, 0.1) : std::vector<T>{};
  const auto logits = draw_logits<T>(p, tokens, bias, seed + 1);

  device_array<T> dlogits(be, logits), dbias(be, bias);
  device_array<A> dscores(be, nan_values<A>(std::size_t(tokens * p.experts)));
  device_array<A> dweights(be, nan_values<A>(std::size_t(assignments)));
  device_array<std::int32_t> dindices(be, std::vector<std::int32_t>(std::size_t(assignments), poison_id));
  moe_route(be, p, dscores.get(), dindices.get(), dweights.get(), dlogits.get(), p.bias ? dbias.get() : nullptr,
            tokens);

  host hb;
  const auto rlogits = convert_all<R>(logits), rbias = convert_all<R>(bias);
  std::vector<RA> scores(static_cast<std::size_t>(tokens * p.experts)), weights(static_cast<std::size_t>(assignments));
  std::vector<std::int32_t> indices(static_cast<std::size_t>(assignments));
  moe_route(hb, p, scores.data(), indices.data(), weights.data(), rlogits.data(), p.bias ? rbias.data() : nullptr,
            tokens);

  const auto gpu_indices = dindices.download();
  CHECK(gpu_indices == indices);
  const auto gpu_scores = dscores.download();
  check_close("scores", gpu_scores, scores, tolerance<T>);
  check_close("weights", dweights.download(), weights, tolerance<T>);

  // Backward from the GPU forward's scores and indices (the same on both sides) and random dweights.
  const auto dw = random_values<A>(std::size_t(assignments), seed + 2);
  device_array<A> ddw(be, dw);
  device_array<T> ddlogits(be, nan_values<T>(logits.size()));
  moe_route_backward(be, p, ddlogits.get(), ddw.get(), dscores.get(), dindices.get(), tokens);
  const auto rdw = convert_all<RA>(dw), rscores = convert_all<RA>(gpu_scores);
  auto rdlogits = nan_values<R>(logits.size());
  moe_route_backward(hb, p, rdlogits.data(), rdw.data(), rscores.data(), gpu_indices.data(), tokens);
  check_close("dlogits", ddlogits.download(), rdlogits, tolerance<T>);
}

}  // namespace

TEMPLATE_TEST_CASE("moe_route and its backward on cuda equal the host backend", "[gpu]", float, double, bf16) {
  cuda_backend be;
  std::uint64_t seed = 100;
  for (const auto& rc : route_cases) check_route<TestType>(be, rc, seed += 10);
}

TEST_CASE("moe_route on cuda rejects what the host rejects", "[gpu]") {
  cuda_backend be;
  host hb;
  const route_params p{16, 2, 4, 2, score_fn::sigmoid, true, true, 2.5};
  const std::int64_t tokens = 7;
  const auto bias = random_values<float>(16, 1, 0.1);
  auto logits = draw_logits<float>(p, tokens, bias, 2);
  device_array<float> dlogits(be, logits), dbias(be, bias), dscores(be, std::size_t(tokens * 16)),
      dweights(be, std::size_t(tokens * 2));
  device_array<std::int32_t> dindices(be, std::size_t(tokens * 2));
  std::vector<float> scores(static_cast<std::size_t>(tokens * 16)), weights(static_cast<std::size_t>(tokens * 2));
  std::vector<std::int32_t> indices(static_cast<std::size_t>(tokens * 2));

  SECTION("a missing bias and invalid groups throw at once") {
    CHECK_THROWS_WITH(moe_route(be, p, dscores.get(), dindices.get(), dweights.get(), dlogits.get(),
                                static_cast<const float*>(nullptr), tokens),
                      Contains("no bias tensor"));
    route_params bad = p;
    bad.groups = 3;  // does not divide 16
    CHECK_THROWS_WITH(moe_route(be, bad, dscores.get(), dindices.get(), dweights.get(), dlogits.get(), dbias.get(),
                                tokens),
                      Contains("groups that divide the experts"));
    bad = p;
    bad.top_k = 9;  // more than the 2 kept groups of 4 hold
    CHECK_THROWS_WITH(moe_route(be, bad, dscores.get(), dindices.get(), dweights.get(), dlogits.get(), dbias.get(),
                                tokens),
                      Contains("top_k 9"));
  }

  SECTION("a non-finite router score is reported by the first grouped GEMM") {
    logits[3 * 16 + 5] = std::numeric_limits<float>::quiet_NaN();  // token 3
    CHECK_THROWS_WITH(moe_route(hb, p, scores.data(), indices.data(), weights.data(), logits.data(), bias.data(),
                                tokens),
                      Contains("token 3"));
    dlogits.upload(logits);
    moe_route(be, p, dscores.get(), dindices.get(), dweights.get(), dlogits.get(), dbias.get(), tokens);
    const auto ids = dindices.download();
    for (std::int64_t a = 0; a < tokens * 2; ++a) {
      INFO("assignment " << a);
      if (a / 2 == 3)
        CHECK(ids[std::size_t(a)] == -1);
      else
        CHECK((ids[std::size_t(a)] >= 0 && ids[std::size_t(a)] < 16));
    }
    device_array<std::int32_t> perm(be, std::size_t(tokens * 2)), inv_perm(be, std::size_t(tokens * 2)),
        offsets(be, std::size_t(17));
    moe_sort_by_expert(be, perm.get(), inv_perm.get(), offsets.get(), dindices.get(), tokens * 2, 16);
    device_array<float> a(be, random_values<float>(std::size_t(tokens * 2 * 8), 3)),
        b(be, random_values<float>(std::size_t(16 * 8 * 4), 4)), c(be, std::size_t(tokens * 2 * 4));
    CHECK_THROWS_WITH(gemm_grouped(be, true, 4, 8, a.get(), b.get(), 32, c.get(), offsets.get(), 16),
                      Contains("assignment 6") && Contains("expert id -1") && Contains("non-finite router score"));

    // An infinite bias makes every token's selection non-finite.
    auto inf_bias = bias;
    inf_bias[0] = std::numeric_limits<float>::infinity();
    dlogits.upload(draw_logits<float>(p, tokens, bias, 2));
    dbias.upload(inf_bias);
    moe_route(be, p, dscores.get(), dindices.get(), dweights.get(), dlogits.get(), dbias.get(), tokens);
    CHECK(dindices.download() == std::vector<std::int32_t>(std::size_t(tokens * 2), -1));
  }
}

namespace {

// ---- sort by expert ----

struct sort_case {
  std::int64_t assignments;
  int experts, stride, hot;  // see draw_ids
};

constexpr sort_case sort_cases[] = {
    {1, 8, 1, -1},     {7, 16, 1, -1},    {1000, 64, 3, -1},     {2000, 48, 1, -1},  // 48: not a power of two
    {8000, 16, 1, 7},  {100, 1, 1, -1},   {4096 * 8, 256, 1, -1}, {4096 * 8, 256, 4, 255},
    {4096 * 2, 2, 1, -1}, {7 * 8, 256, 1, -1},  // more experts than assignments: most are empty
};

}  // namespace

TEST_CASE("moe_sort_by_expert on cuda equals the host's stable counting sort", "[gpu]") {
  cuda_backend be;
  std::uint64_t seed = 500;
  for (const auto& sc : sort_cases) {
    INFO("assignments=" << sc.assignments << " E=" << sc.experts << " stride=" << sc.stride << " hot=" << sc.hot);
    const auto ids = draw_ids(sc.assignments, sc.experts, ++seed, sc.stride, sc.hot);
    const sorted ref = host_sort(ids, sc.experts);
    const std::size_t n = ids.size();
    device_array<std::int32_t> dids(be, ids), perm(be, std::vector<std::int32_t>(n, poison_id)),
        inv_perm(be, std::vector<std::int32_t>(n, poison_id)),
        offsets(be, std::vector<std::int32_t>(std::size_t(sc.experts) + 1, poison_id));
    moe_sort_by_expert(be, perm.get(), inv_perm.get(), offsets.get(), dids.get(), sc.assignments, sc.experts);
    CHECK(perm.download() == ref.perm);
    CHECK(inv_perm.download() == ref.inv_perm);
    CHECK(offsets.download() == ref.offsets);
    // Again into the same buffers (the scratch is reused): the same result.
    moe_sort_by_expert(be, perm.get(), inv_perm.get(), offsets.get(), dids.get(), sc.assignments, sc.experts);
    CHECK(perm.download() == ref.perm);
  }
}

TEST_CASE("moe_sort_by_expert on cuda: edge cases and bad ids", "[gpu]") {
  cuda_backend be;
  device_array<std::int32_t> perm(be, std::size_t(64)), inv_perm(be, std::size_t(64)), offsets(be, std::size_t(9));
  device_array<float> a(be, random_values<float>(64 * 4, 1)), b(be, random_values<float>(8 * 4 * 4, 2)),
      c(be, std::size_t(64 * 4));

  SECTION("no assignments: all offsets are zero") {
    offsets.upload(std::vector<std::int32_t>(9, poison_id));
    moe_sort_by_expert(be, perm.get(), inv_perm.get(), offsets.get(), perm.get(), 0, 8);
    CHECK(offsets.download() == std::vector<std::int32_t>(9, 0));
  }
  SECTION("more assignments than int32 holds throw before touching memory") {
    CHECK_THROWS_WITH(moe_sort_by_expert(be, nullptr, nullptr, nullptr, nullptr, std::int64_t(1) << 31, 8),
                      Contains("overflow the int32 permutation"));
  }
  SECTION("an id outside [0, E) is reported by the next grouped GEMM, naming the assignment and the id") {
    for (const std::int32_t bad : {8, -3, 1 << 20}) {
      INFO("bad id " << bad);
      auto ids = draw_ids(64, 8, 7);
      ids[5] = bad;
      ids[40] = bad;
      std::vector<std::int32_t> hp(64), hi(64), ho(9);
      host hb;
      CHECK_THROWS_WITH(moe_sort_by_expert(hb, hp.data(), hi.data(), ho.data(), ids.data(), 64, 8),
                        Contains("assignment 5"));
      device_array<std::int32_t> dids(be, ids);
      moe_sort_by_expert(be, perm.get(), inv_perm.get(), offsets.get(), dids.get(), 64, 8);
      const std::string id = "expert id " + std::to_string(bad);
      CHECK_THROWS_WITH(gemm_grouped(be, true, 4, 4, a.get(), b.get(), 16, c.get(), offsets.get(), 8),
                        Contains("assignment 5") && Contains(id));
      CHECK_THROWS_WITH(gemm_grouped_wgrad(be, 4, 4, a.get(), a.get(), c.get(), 16, offsets.get(), 8),
                        Contains("assignment 5") && Contains(id));
    }
    // The backend stays usable: a valid sort and GEMM afterwards.
    device_array<std::int32_t> dids(be, draw_ids(64, 8, 8));
    moe_sort_by_expert(be, perm.get(), inv_perm.get(), offsets.get(), dids.get(), 64, 8);
    CHECK_NOTHROW(gemm_grouped(be, true, 4, 4, a.get(), b.get(), 16, c.get(), offsets.get(), 8));
  }
  SECTION("offsets that do not rise from 0 are rejected") {
    offsets.upload({0, 4, 9, 8, 20, 30, 40, 50, 64});
    CHECK_THROWS_WITH(gemm_grouped(be, true, 4, 4, a.get(), b.get(), 16, c.get(), offsets.get(), 8),
                      Contains("must not decrease"));
    offsets.upload({2, 4, 9, 10, 20, 30, 40, 50, 64});
    CHECK_THROWS_WITH(gemm_grouped(be, true, 4, 4, a.get(), b.get(), 16, c.get(), offsets.get(), 8),
                      Contains("expected 0"));
  }
}

namespace {

// ---- dispatch and combine ----

struct rows_case {
  std::int64_t tokens;
  int top_k, experts;
  std::int64_t hidden;
};

constexpr rows_case rows_cases[] = {
    {1, 1, 8, 64},   {7, 2, 16, 7168},  {1000, 8, 64, 67},  // 67: unaligned rows, scalar paths
    {4096, 8, 256, 128}, {1000, 2, 16, 1}, {4096, 1, 8, 40},
};

template <class T>
void check_rows(cuda_backend& be, const rows_case& rc, std::uint64_t seed) {
  using R = ref_t<T>;
  using A = dsx::accum_t<T>;
  using RA = dsx::accum_t<R>;
  const std::int64_t tokens = rc.tokens, assignments = tokens * rc.top_k, hidden = rc.hidden;
  const std::size_t token_values = std::size_t(tokens * hidden), row_values = std::size_t(assignments * hidden);
  INFO("tokens=" << tokens << " top_k=" << rc.top_k << " E=" << rc.experts << " hidden=" << hidden);
  const sorted s = host_sort(draw_ids(assignments, rc.experts, seed), rc.experts);
  device_array<std::int32_t> perm(be, s.perm), inv_perm(be, s.inv_perm);
  host hb;

  // Dispatch: a pure copy, bit-identical.
  const auto x = random_values<T>(token_values, seed + 1);
  device_array<T> dx(be, x), dxs(be, nan_values<T>(row_values));
  moe_dispatch(be, dxs.get(), dx.get(), perm.get(), assignments, rc.top_k, hidden);
  auto xs = nan_values<T>(row_values);
  moe_dispatch(hb, xs.data(), x.data(), s.perm.data(), assignments, rc.top_k, hidden);
  CHECK(same_bits(dxs.download(), xs));

  // Dispatch backward: sums in k order with the host's rounding, bit-identical in the same type.
  const auto grad_rows = random_values<T>(row_values, seed + 2);
  const auto dx0 = random_values<T>(token_values, seed + 3);
  device_array<T> dgrad_rows(be, grad_rows), ddx(be, nan_values<T>(token_values));
  for (const bool accumulate : {false, true}) {
    INFO("accumulate=" << accumulate);
    if (accumulate) ddx.upload(dx0);
    moe_dispatch_backward(be, ddx.get(), dgrad_rows.get(), inv_perm.get(), tokens, rc.top_k, hidden, accumulate);
    auto ref = accumulate ? dx0 : nan_values<T>(token_values);
    moe_dispatch_backward(hb, ref.data(), grad_rows.data(), s.inv_perm.data(), tokens, rc.top_k, hidden, accumulate);
    CHECK(same_bits(ddx.download(), ref));
  }

  // Combine: weighted sums (the GPU may fuse multiply-adds), against the host in R; deterministic.
  const auto eo = random_values<T>(row_values, seed + 4);
  const auto w = random_values<A>(std::size_t(assignments), seed + 5);
  const auto y0 = random_values<T>(token_values, seed + 6);
  const auto reo = convert_all<R>(eo);
  const auto rw = convert_all<RA>(w);
  device_array<T> deo(be, eo), dy(be, nan_values<T>(token_values));
  device_array<A> dw(be, w);
  for (const bool accumulate : {false, true}) {
    INFO("accumulate=" << accumulate);
    if (accumulate) dy.upload(y0);
    moe_combine(be, dy.get(), deo.get(), dw.get(), inv_perm.get(), tokens, rc.top_k, hidden, accumulate);
    const auto first = dy.download();
    auto ref = accumulate ? convert_all<R>(y0) : nan_values<R>(token_values);
    moe_combine(hb, ref.data(), reo.data(), rw.data(), s.inv_perm.data(), tokens, rc.top_k, hidden, accumulate);
    check_close("y", first, ref, tolerance<T>);
    if (accumulate) dy.upload(y0);
    moe_combine(be, dy.get(), deo.get(), dw.get(), inv_perm.get(), tokens, rc.top_k, hidden, accumulate);
    CHECK(same_bits(dy.download(), first));
  }

  // Combine backward: deo = w · dy is one rounding, bit-identical in the same type; dweights are dot
  // products, against the host in R.
  const auto gy = random_values<T>(token_values, seed + 7);
  device_array<T> dgy(be, gy), ddeo(be, nan_values<T>(row_values));
  device_array<A> ddw(be, nan_values<A>(std::size_t(assignments)));
  moe_combine_backward(be, ddeo.get(), ddw.get(), dgy.get(), deo.get(), dw.get(), inv_perm.get(), tokens, rc.top_k,
                       hidden);
  auto ref_deo = nan_values<T>(row_values);
  auto unused_dw = nan_values<A>(std::size_t(assignments));  // compared against the host in R below
  moe_combine_backward(hb, ref_deo.data(), unused_dw.data(), gy.data(), eo.data(), w.data(), s.inv_perm.data(), tokens,
                       rc.top_k, hidden);
  CHECK(same_bits(ddeo.download(), ref_deo));
  auto rdeo = nan_values<R>(row_values);
  auto rdw = nan_values<RA>(std::size_t(assignments));
  const auto rgy = convert_all<R>(gy);
  moe_combine_backward(hb, rdeo.data(), rdw.data(), rgy.data(), reo.data(), rw.data(), s.inv_perm.data(), tokens,
                       rc.top_k, hidden);
  const auto first_dw = ddw.download();
  check_close("dweights", first_dw, rdw, tolerance<T>);
  moe_combine_backward(be, ddeo.get(), ddw.get(), dgy.get(), deo.get(), dw.get(), inv_perm.get(), tokens, rc.top_k,
                       hidden);
  CHECK(same_bits(ddw.download(), first_dw));
}

}  // namespace

TEMPLATE_TEST_CASE("moe dispatch, combine and their backwards on cuda equal the host backend", "[gpu]", float, double,
                   bf16) {
  cuda_backend be;
  std::uint64_t seed = 900;
  for (const auto& rc : rows_cases) check_rows<TestType>(be, rc, seed += 10);
}

namespace {

// ---- grouped GEMMs ----

struct grouped_case {
  std::int64_t rows;
  int experts, stride;  // ids drawn from every stride-th expert: the others are empty
  std::int64_t n, k;
};

constexpr grouped_case grouped_cases[] = {
    {1, 8, 1, 16, 16},    {14, 8, 3, 24, 40},     {300, 16, 1, 33, 17},  // odd sizes: unaligned operands
    {2000, 64, 1, 96, 64}, {4096, 256, 4, 64, 48},
};

template <class T>
void check_grouped(cuda_backend& be, const grouped_case& gc, std::uint64_t seed) {
  using R = ref_t<T>;
  const std::int64_t rows = gc.rows, n = gc.n, k = gc.k, e = gc.experts;
  INFO("rows=" << rows << " E=" << e << " stride=" << gc.stride << " n=" << n << " k=" << k);
  const sorted s = host_sort(draw_ids(rows, gc.experts, seed, gc.stride), gc.experts);
  device_array<std::int32_t> offsets(be, s.offsets);
  host hb;

  const auto a = random_values<T>(std::size_t(rows * k), seed + 1);
  const auto b = random_values<T>(std::size_t(e * n * k), seed + 2, 0.5);
  const auto ra = convert_all<R>(a), rb = convert_all<R>(b);
  device_array<T> da(be, a), db(be, b), dc(be, nan_values<T>(std::size_t(rows * n)));
  for (const bool trans_b : {true, false}) {
    INFO("trans_b=" << trans_b);
    gemm_grouped(be, trans_b, n, k, da.get(), db.get(), n * k, dc.get(), offsets.get(), gc.experts);
    auto rc = nan_values<R>(std::size_t(rows * n));
    gemm_grouped(hb, trans_b, n, k, ra.data(), rb.data(), n * k, rc.data(), s.offsets.data(), gc.experts);
    check_close("c", dc.download(), rc, tolerance<T>);
  }

  // c_e += a[rows]ᵀ · b[rows] with a: (rows, k) as the m side and b: (rows, n); empty experts keep c_e.
  const auto bn = random_values<T>(std::size_t(rows * n), seed + 3);
  const auto c0 = random_values<T>(std::size_t(e * k * n), seed + 4);
  device_array<T> dbn(be, bn), dcw(be, c0);
  gemm_grouped_wgrad(be, k, n, da.get(), dbn.get(), dcw.get(), k * n, offsets.get(), gc.experts);
  auto rcw = convert_all<R>(c0);
  const auto rbn = convert_all<R>(bn);
  gemm_grouped_wgrad(hb, k, n, ra.data(), rbn.data(), rcw.data(), k * n, s.offsets.data(), gc.experts);
  const auto cw = dcw.download();
  check_close("c_e", cw, rcw, tolerance<T>);
  for (int x = 0; x < gc.experts; ++x)
    if (s.offsets[std::size_t(x) + 1] == s.offsets[std::size_t(x)]) {
      INFO("empty expert " << x);
      const auto first = cw.begin() + std::ptrdiff_t(x * k * n), expected = c0.begin() + std::ptrdiff_t(x * k * n);
      CHECK(same_bits(std::vector<T>(first, first + k * n), std::vector<T>(expected, expected + k * n)));
    }
}

}  // namespace

TEMPLATE_TEST_CASE("gemm_grouped and gemm_grouped_wgrad on cuda equal the host backend", "[gpu]", float, double,
                   bf16) {
  cuda_backend be;
  std::uint64_t seed = 1300;
  for (const auto& gc : grouped_cases) check_grouped<TestType>(be, gc, seed += 10);
}

TEST_CASE("gemm_grouped shares cuBLASLt plans by size class: new row counts need no heuristic query", "[gpu]") {
  cuda_backend be;
  auto& lt = be.matmul();
  // Two routings of 2000 rows over 64 experts (about 31 rows each, all in the classes 16..32 and 32..64
  // after the first): the second brings new row counts, answered from the classes of the first.
  const grouped_case gc{2000, 64, 1, 96, 64};
  check_grouped<bf16>(be, gc, 1500);
  const std::size_t queries = lt.heuristic_queries(), reuses = lt.class_reuses(), plans = lt.cached_plans();
  CHECK(reuses > 0);  // the first routing already has several row counts per class
  check_grouped<bf16>(be, gc, 1600);  // checks the results against the host again
  INFO("queries " << queries << " → " << lt.heuristic_queries() << ", plans " << plans << " → " << lt.cached_plans()
                  << ", class reuses " << reuses << " → " << lt.class_reuses());
  CHECK(lt.cached_plans() > plans);                                    // new row counts came
  CHECK(lt.heuristic_queries() - queries < lt.cached_plans() - plans);  // most of them without a query
}

namespace {

// ---- load balancing ----

struct balance_case {
  std::int64_t batch, seq;
  route_params p;
};

constexpr balance_case balance_cases[] = {
    {1, 1, {8, 1, 1, 1, score_fn::softmax, false, false, 1.0}},
    {2, 7, {16, 2, 4, 2, score_fn::sigmoid, true, true, 2.5}},
    {4, 1000, {64, 8, 8, 3, score_fn::softmax, false, false, 16.0}},
    {1, 4096, {256, 8, 8, 4, score_fn::sigmoid, true, true, 2.5}},
    {16, 256, {256, 8, 8, 4, score_fn::sigmoid, true, true, 2.5}},
};

template <class T>
void check_balance(cuda_backend& be, const balance_case& bc, std::uint64_t seed) {
  using R = ref_t<T>;
  using A = dsx::accum_t<T>;
  using RA = dsx::accum_t<R>;
  const route_params& p = bc.p;
  const std::int64_t tokens = bc.batch * bc.seq, e = p.experts;
  const double alpha = 1e-4;  // the report's α
  INFO("batch=" << bc.batch << " seq=" << bc.seq << " E=" << e << " top_k=" << p.top_k);
  // Affinities as the gate computes them (in f64, stored in A), and random selections.
  const auto logits = random_values<double>(std::size_t(tokens * e), seed);
  std::vector<A> scores(logits.size());
  std::vector<double> row(static_cast<std::size_t>(e));
  for (std::int64_t t = 0; t < tokens; ++t) {
    dsx::router_scores(p, row.data(), logits.data() + t * e);
    for (std::int64_t j = 0; j < e; ++j) scores[std::size_t(t * e + j)] = A(row[std::size_t(j)]);
  }
  const auto ids = draw_ids(tokens * p.top_k, p.experts, seed + 1);
  device_array<A> dscores(be, scores), dcoeff(be, nan_values<A>(std::size_t(bc.batch * e))),
      dlosses(be, nan_values<A>(std::size_t(bc.batch)));
  device_array<std::int32_t> dids(be, ids);
  moe_balance_loss(be, p, dcoeff.get(), dlosses.get(), dscores.get(), dids.get(), bc.batch, bc.seq, alpha);

  host hb;
  const auto rscores = convert_all<RA>(scores);
  auto rcoeff = nan_values<RA>(std::size_t(bc.batch * e));
  auto rlosses = nan_values<RA>(std::size_t(bc.batch));
  moe_balance_loss(hb, p, rcoeff.data(), rlosses.data(), rscores.data(), ids.data(), bc.batch, bc.seq, alpha);
  const auto coeff = dcoeff.download();
  check_close("coeff", coeff, rcoeff, tolerance<T>);
  const auto losses = dlosses.download();
  check_close("losses", losses, rlosses, tolerance<T>);
  moe_balance_loss(be, p, dcoeff.get(), dlosses.get(), dscores.get(), dids.get(), bc.batch, bc.seq, alpha);
  CHECK(same_bits(dlosses.download(), losses));

  // Backward into random (not zero) logit gradients, from the GPU's coefficients on both sides.
  const auto dl0 = random_values<T>(std::size_t(tokens * e), seed + 2, 1e-4);
  device_array<T> ddl(be, dl0);
  moe_balance_backward(be, p, ddl.get(), dcoeff.get(), dscores.get(), bc.batch, bc.seq);
  auto rdl = convert_all<R>(dl0);
  const auto rc = convert_all<RA>(coeff);
  moe_balance_backward(hb, p, rdl.data(), rc.data(), rscores.data(), bc.batch, bc.seq);
  check_close("dlogits", ddl.download(), rdl, tolerance<T>);
}

}  // namespace

TEMPLATE_TEST_CASE("moe balance loss and its backward on cuda equal the host backend", "[gpu]", float, double, bf16) {
  cuda_backend be;
  std::uint64_t seed = 1700;
  for (const auto& bc : balance_cases) check_balance<TestType>(be, bc, seed += 10);
}

TEMPLATE_TEST_CASE("moe expert loads and the routing bias update on cuda equal the host backend", "[gpu]", float,
                   double, bf16) {
  using T = TestType;
  cuda_backend be;
  host hb;
  std::uint64_t seed = 2100;
  for (const int experts : {1, 8, 256, 300}) {
    INFO("E=" << experts);
    const sorted s = host_sort(draw_ids(4096, experts, ++seed, experts > 8 ? 3 : 1), experts);
    std::vector<std::int64_t> load(static_cast<std::size_t>(experts));
    std::mt19937_64 rng(++seed);
    for (auto& l : load) l = std::int64_t(rng() % 1000);
    device_array<std::int64_t> dload(be, load);
    device_array<std::int32_t> offsets(be, s.offsets);
    moe_expert_load_add(be, dload.get(), offsets.get(), experts);
    moe_expert_load_add(hb, load.data(), s.offsets.data(), experts);
    CHECK(dload.download() == load);

    const auto bias = random_values<T>(std::size_t(experts), ++seed, 0.1);
    for (const bool balanced : {false, true}) {
      INFO("every load at the mean: " << balanced);
      if (balanced) {
        load.assign(load.size(), 17);  // no expert moves
        dload.upload(load);
      }
      device_array<T> dbias(be, bias);
      moe_routing_bias_update(be, dbias.get(), dload.get(), experts, 1e-3);
      auto ref = bias;
      moe_routing_bias_update(hb, ref.data(), load.data(), experts, 1e-3);
      const auto got = dbias.download();
      CHECK(same_bits(got, ref));
      if (balanced) CHECK(same_bits(got, bias));
    }
  }
}

TEST_CASE("moe load balancing on cuda rejects what the host rejects", "[gpu]") {
  cuda_backend be;
  const route_params p{8, 2, 1, 1, score_fn::sigmoid, false, true, 1.0};
  device_array<float> coeff(be, std::size_t(8)), losses(be, std::size_t(1)), scores(be, std::size_t(8));
  device_array<std::int32_t> ids(be, std::size_t(2));
  CHECK_THROWS_WITH(moe_balance_loss(be, p, coeff.get(), losses.get(), scores.get(), ids.get(), 0, 1, 1e-4),
                    Contains("at least one sequence"));
  CHECK_THROWS_WITH(moe_balance_loss(be, p, coeff.get(), losses.get(), scores.get(), ids.get(), 1, 1,
                                     std::numeric_limits<double>::quiet_NaN()),
                    Contains("alpha"));
  device_array<std::int64_t> load(be, std::size_t(8));
  CHECK_THROWS_WITH(moe_routing_bias_update(be, coeff.get(), load.get(), 8, -1.0), Contains("gamma"));
}
