// Fused softmax cross-entropy on the GPU (backend/cuda/cross_entropy.cuh) against the host backend:
// vocabularies from 1 to DeepSeek-V3's 129280, ignored rows (negative targets), the mean's grad_scale,
// and the loss-only call (no dlogits).
#include "gpu_test.cuh"

#include <random>

#include "dsx/backend/cuda/cross_entropy.cuh"
#include "dsx/backend/host/cross_entropy.hpp"

using namespace dsx::test::gpu;
using dsx::accum_t;
using dsx::bf16;
using dsx::backend::host;
namespace {

struct ce_case {
  std::int64_t rows, vocab;
  double logit_scale;  // spread of the logits; large values test the max subtraction
};

constexpr ce_case cases[] = {{1, 1, 1.0},     {5, 7, 1.0},      {9, 4096, 3.0},  {17, 1000, 30.0},
                             {3, 129280, 2.0}, {2, 129279, 1.0}, {64, 4099, 1.0}};

template <class T>
void check_cross_entropy(cuda_backend& be, const ce_case& cc, std::uint64_t seed) {
  using R = ref_t<T>;
  using A = accum_t<T>;
  using RA = accum_t<R>;
  INFO("rows=" << cc.rows << " vocab=" << cc.vocab << " logit_scale=" << cc.logit_scale);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> pick(0, std::int32_t(cc.vocab - 1));
  std::vector<std::int32_t> targets(std::size_t(cc.rows));
  std::int64_t counted = 0;
  for (std::size_t r = 0; r < targets.size(); ++r) {
    targets[r] = r % 4 == 3 ? -1 : pick(rng);  // every fourth row ignored
    counted += targets[r] >= 0;
  }
  const double grad_scale = counted ? 1.0 / double(counted) : 1.0;
  const std::size_t size = std::size_t(cc.rows * cc.vocab);
  const auto logits = random_values<T>(size, seed + 1, cc.logit_scale);
  host hb;

  device_array<std::int32_t> dtargets(be, targets);
  device_array<T> dlogits_in(be, logits), ddlogits(be, nan_values<T>(size));
  device_array<A> dloss(be, nan_values<A>(std::size_t(cc.rows)));
  cross_entropy(be, dloss.get(), ddlogits.get(), dlogits_in.get(), dtargets.get(), cc.rows, cc.vocab, grad_scale);

  const auto rlogits = convert_all<R>(logits);
  auto rdlogits = nan_values<R>(size);
  std::vector<RA> rloss(std::size_t(cc.rows));
  cross_entropy(hb, rloss.data(), rdlogits.data(), rlogits.data(), targets.data(), cc.rows, cc.vocab, grad_scale);
  check_close("loss", dloss.download(), rloss, tolerance<T>);
  check_close("dlogits", ddlogits.download(), rdlogits, tolerance<T>);

  // Loss only: the same losses, no gradient buffer touched.
  device_array<A> dloss2(be, nan_values<A>(std::size_t(cc.rows)));
  cross_entropy(be, dloss2.get(), static_cast<T*>(nullptr), dlogits_in.get(), dtargets.get(), cc.rows, cc.vocab,
                grad_scale);
  check_close("loss without dlogits", dloss2.download(), rloss, tolerance<T>);
}

}  // namespace

TEMPLATE_TEST_CASE("cuda cross_entropy matches the host, large vocabularies and ignored rows included", "[gpu]", float,
                   double, bf16) {
  cuda_backend be;
  std::uint64_t seed = 1;
  for (const auto& cc : cases) check_cross_entropy<TestType>(be, cc, seed += 2);
}
