// cuBLASLt GEMMs (backend/cuda/gemm.cuh) against the host backend's CBLAS GEMMs: every transpose pair,
// awkward sizes and padded leading dimensions, alpha/beta including beta = 1 accumulation, k = 0,
// strided batches, and the plan cache.
#include "gpu_test.cuh"

#include "dsx/backend/cuda/gemm.cuh"
#include "dsx/backend/host/gemm.hpp"

using namespace dsx::test::gpu;
using dsx::bf16;
using dsx::backend::host;
namespace {

struct gemm_case {
  bool trans_a, trans_b;
  std::int64_t m, n, k, pad, batch;
  double alpha, beta;
};

// Runs one (batched) GEMM on both backends from identical inputs; C starts as NaN when beta = 0 (it must
// be overwritten, padding must stay NaN) and random otherwise.
template <class T>
void check_gemm(cuda_backend& be, const gemm_case& g, std::uint64_t seed, double tol = tolerance<T>) {
  using R = ref_t<T>;
  const std::int64_t lda = (g.trans_a ? g.m : g.k) + g.pad, ldb = (g.trans_b ? g.k : g.n) + g.pad, ldc = g.n + g.pad;
  const std::int64_t a_rows = g.trans_a ? g.k : g.m, b_rows = g.trans_b ? g.n : g.k;
  // Batch strides leave a gap of 3 elements so batches are not simply one contiguous matrix.
  const std::int64_t sa = a_rows * lda + 3, sb = b_rows * ldb + 3, sc = g.m * ldc + 3;
  const auto a = random_values<T>(std::size_t((g.batch - 1) * sa + a_rows * lda), seed);
  const auto b = random_values<T>(std::size_t((g.batch - 1) * sb + b_rows * ldb), seed + 1);
  const std::size_t c_size = std::size_t((g.batch - 1) * sc + g.m * ldc);
  const auto c0 = g.beta == 0 ? nan_values<T>(c_size) : random_values<T>(c_size, seed + 2);

  device_array<T> da(be, a), db(be, b), dc(be, c0);
  if (g.batch == 1)
    gemm(be, g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, da.get(), lda, db.get(), ldb, g.beta, dc.get(), ldc);
  else
    gemm_strided_batched(be, g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, da.get(), lda, sa, db.get(), ldb, sb,
                         g.beta, dc.get(), ldc, sc, g.batch);

  host hb;
  auto ra = convert_all<R>(a), rb = convert_all<R>(b), rc = convert_all<R>(c0);
  gemm_strided_batched(hb, g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, ra.data(), lda, sa, rb.data(), ldb, sb, g.beta,
                       rc.data(), ldc, sc, g.batch);

  INFO("m=" << g.m << " n=" << g.n << " k=" << g.k << " trans_a=" << g.trans_a << " trans_b=" << g.trans_b
            << " pad=" << g.pad << " batch=" << g.batch << " alpha=" << g.alpha << " beta=" << g.beta);
  check_close("C", dc.download(), rc, tol);
}

}  // namespace

TEMPLATE_TEST_CASE("cuda gemm matches the host GEMM for every transpose pair and awkward sizes", "[gpu]", float,
                   double, bf16) {
  cuda_backend be;
  const std::int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 65, 17}, {129, 97, 257}, {250, 300, 130}};
  const double scalars[][2] = {{1.0, 0.0}, {0.5, 1.0}, {-1.5, 0.25}};
  std::uint64_t seed = 1;
  for (const auto& s : shapes)
    for (const bool ta : {false, true})
      for (const bool tb : {false, true})
        for (const auto& ab : scalars)
          for (const std::int64_t pad : {0, 3})
            check_gemm<TestType>(be, {ta, tb, s[0], s[1], s[2], pad, 1, ab[0], ab[1]}, seed += 3);
}

TEMPLATE_TEST_CASE("cuda gemm with k = 0 scales C by beta", "[gpu]", float, double, bf16) {
  cuda_backend be;
  check_gemm<TestType>(be, {false, true, 9, 13, 0, 1, 1, 1.0, 0.5}, 11);
  check_gemm<TestType>(be, {true, false, 9, 13, 0, 1, 1, 1.0, 0.0}, 12);
}

TEMPLATE_TEST_CASE("cuda gemm_strided_batched matches the host, including beta = 1 accumulation", "[gpu]", float,
                   double, bf16) {
  cuda_backend be;
  std::uint64_t seed = 100;
  for (const bool ta : {false, true})
    for (const bool tb : {false, true}) {
      check_gemm<TestType>(be, {ta, tb, 19, 24, 40, 0, 3, 1.0, 1.0}, seed += 3);
      check_gemm<TestType>(be, {ta, tb, 64, 48, 72, 2, 5, 0.75, 0.0}, seed += 3);
    }
}

TEST_CASE("cuda gemm caches one plan per problem and does not re-run the heuristic", "[gpu]") {
  cuda_backend be;
  auto& lt = be.matmul();
  check_gemm<float>(be, {false, true, 37, 41, 43, 0, 1, 1.0, 0.0}, 200);
  const std::size_t queries = lt.heuristic_queries(), plans = lt.cached_plans();
  CHECK(queries == 1);
  CHECK(plans == 1);
  for (int i = 0; i < 3; ++i) check_gemm<float>(be, {false, true, 37, 41, 43, 0, 1, 1.0, 1.0}, 201 + i);
  CHECK(lt.heuristic_queries() == queries);
  CHECK(lt.cached_plans() == plans);
  check_gemm<float>(be, {false, true, 37, 41, 44, 0, 1, 1.0, 0.0}, 210);  // another k: a new plan
  CHECK(lt.heuristic_queries() == queries + 1);
  CHECK(lt.cached_plans() == plans + 1);
}

TEST_CASE("cuda gemm with the TF32 option stays within TF32 rounding of the host", "[gpu]") {
  cuda_backend be(dsx::backend::cuda_options{.tf32 = true});
  CHECK(be.tf32());
  // TF32 keeps 10 mantissa bits: products carry ~2^-11 relative error, sums of 257 random terms ~1e-3.
  check_gemm<float>(be, {false, true, 129, 97, 257, 0, 1, 1.0, 0.0}, 300, 5e-3);
}

TEST_CASE("cuda gemm rejects leading dimensions shorter than a row", "[gpu]") {
  cuda_backend be;
  device_array<float> a(be, 64), b(be, 64), c(be, 64);
  CHECK_THROWS_WITH(gemm(be, false, false, 4, 4, 4, 1.0, a.get(), 3, b.get(), 4, 0.0, c.get(), 4),
                    Catch::Contains("lda = 3"));
  CHECK_THROWS_WITH(gemm(be, false, true, 4, 4, 4, 1.0, a.get(), 4, b.get(), 2, 0.0, c.get(), 4),
                    Catch::Contains("ldb = 2"));
  CHECK_THROWS_WITH(gemm(be, false, false, 4, 4, 4, 1.0, a.get(), 4, b.get(), 4, 0.0, c.get(), 1),
                    Catch::Contains("ldc = 1"));
}
