// AdamW on the GPU (backend/cuda/adamw.cuh) against the host backend in the same parameter and moment
// types, without and with the f32 master copy of bf16 parameters: three consecutive steps (bias
// corrections change, a gradient scale, a changing learning rate) over buffers whose decay ranges are
// short, empty, untrained or straddle the kernel's vectors, on aligned buffers (vector path) and on
// buffers one element off (scalar path). Both sides evaluate the same per-element
// function in the same arithmetic type, so only contraction into fused multiply-adds separates them.
#include "gpu_test.cuh"

#include <random>

#include "dsx/backend/cuda/adamw.cuh"
#include "dsx/backend/host/adamw.hpp"

using namespace dsx::test::gpu;
using Catch::Matchers::Contains;
using dsx::bf16;
using dsx::backend::adamw_params;
using dsx::backend::decay_range;
using dsx::backend::host;
namespace {

template <class P, class M>
struct optimizer_types {
  using param = P;
  using moment = M;
};
using f32_f32 = optimizer_types<float, float>;
using f32_bf16 = optimizer_types<float, bf16>;
using f64_f32 = optimizer_types<double, float>;
using bf16_f32 = optimizer_types<bf16, float>;
using bf16_bf16 = optimizer_types<bf16, bf16>;

// Ranges tiling [0, n): mostly 0 to 40 elements (many straddle a vector), some long, random flags.
std::vector<decay_range> draw_ranges(std::int64_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> short_len(0, 40), long_len(1000, 100000);
  std::bernoulli_distribution decay(0.6), long_range(0.05), trained(0.9);
  std::vector<decay_range> ranges;
  for (std::int64_t begin = 0; begin < n;) {
    const std::int64_t end = std::min(n, begin + (long_range(rng) ? long_len(rng) : short_len(rng)));
    ranges.push_back({begin, end, decay(rng), trained(rng)});
    begin = end;
  }
  return ranges;
}

// Three steps on both backends from the same state; with Master (T = bf16), through the f32 master copy.
template <class T, class M, bool Master = false>
void check_adamw(cuda_backend& be, std::int64_t n, std::int64_t offset, std::uint64_t seed) {
  INFO("n=" << n << " offset=" << offset << (Master ? " master copy" : ""));
  const std::size_t size = std::size_t(n + offset);
  auto master = random_values<float>(size, seed);  // used with Master: bf16 cannot hold it
  std::vector<T> p(size);
  for (std::size_t i = 0; i < size; ++i) p[i] = dsx::convert<T>(master[i]);
  auto m = random_values<M>(size, seed + 1, 0.01);
  auto v = random_values<M>(size, seed + 2, 1e-3);
  for (auto& x : v) x = from_double<M>(std::abs(to_double(x)));  // second moments are ≥ 0
  const auto ranges = draw_ranges(n, seed + 3);
  dsx::backend::check_decay_ranges(ranges.data(), std::int64_t(ranges.size()), n);
  device_array<float> dw(be, master);
  device_array<T> dp(be, p), dg(be, size);
  device_array<M> dm(be, m), dv(be, v);
  device_array<decay_range> dranges(be, ranges);
  host hb;
  for (std::int64_t step = 1; step <= 3; ++step) {
    INFO("step " << step);
    const auto g = random_values<T>(size, seed + 10 + std::uint64_t(step), 0.1);
    dg.upload(g);
    const adamw_params hp{.lr = 1e-2 / double(step),  // moves bf16 parameters too
                           .step = step, .grad_scale = step == 2 ? 0.5 : 1.0};
    const auto count = std::int64_t(ranges.size());
    if constexpr (Master) {
      adamw_update_master(be, dw.get() + offset, dp.get() + offset, dg.get() + offset, dm.get() + offset,
                          dv.get() + offset, n, hp, dranges.get(), count);
      adamw_update_master(hb, master.data() + offset, p.data() + offset, g.data() + offset, m.data() + offset,
                          v.data() + offset, n, hp, ranges.data(), count);
    } else {
      adamw_update(be, dp.get() + offset, dg.get() + offset, dm.get() + offset, dv.get() + offset, n, hp, dranges.get(),
                   count);
      adamw_update(hb, p.data() + offset, g.data() + offset, m.data() + offset, v.data() + offset, n, hp, ranges.data(),
                   count);
    }
    // bf16 moments: host and device may round the same moment to neighbouring bf16 values when their f32
    // arithmetic differs in the last bit (FMA contraction); such an element's next step then differs by up
    // to lr · 2⁻⁸ of its size, about 1e-5 of max |p| here (seen on an H100: 1.009e-5), so the updated
    // weights (the parameters, or the master with its parameters its rounding) get a bound above that.
    const double slack = std::is_same_v<M, dsx::bf16> ? 1e-4 : 0.0;
    if constexpr (Master) check_close("master", dw.download(), master, std::max(tolerance<float>, slack));
    check_close("params", dp.download(), p, Master ? tolerance<T> : std::max(tolerance<T>, slack));
    check_close("m", dm.download(), m, tolerance<M>);
    check_close("v", dv.download(), v, tolerance<M>);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("adamw on cuda equals the host backend", "[gpu]", f32_f32, f32_bf16, f64_f32, bf16_f32, bf16_bf16) {
  using T = typename TestType::param;
  using M = typename TestType::moment;
  cuda_backend be;
  std::uint64_t seed = 1;
  for (const std::int64_t n : {std::int64_t(1), std::int64_t(7), std::int64_t(1000), std::int64_t((1 << 20) + 3)})
    for (const std::int64_t offset : {std::int64_t(0), std::int64_t(1)}) check_adamw<T, M>(be, n, offset, seed += 100);
}

TEMPLATE_TEST_CASE("adamw with an f32 master copy on cuda equals the host backend", "[gpu]", float, bf16) {
  cuda_backend be;
  std::uint64_t seed = 7;
  for (const std::int64_t n : {std::int64_t(1), std::int64_t(7), std::int64_t(1000), std::int64_t((1 << 20) + 3)})
    for (const std::int64_t offset : {std::int64_t(0), std::int64_t(1)})
      check_adamw<bf16, TestType, true>(be, n, offset, seed += 100);
}

TEST_CASE("adamw on cuda rejects bad hyperparameters and a missing mask", "[gpu]") {
  cuda_backend be;
  device_array<float> p(be, std::size_t(8)), g(be, std::size_t(8)), m(be, std::size_t(8)), v(be, std::size_t(8));
  device_array<decay_range> ranges(be, std::vector<decay_range>{{0, 8, true}});
  adamw_params bad{.lr = 1e-3, .beta2 = 1.0};
  CHECK_THROWS_WITH(adamw_update(be, p.get(), g.get(), m.get(), v.get(), 8, bad, ranges.get(), 1), Contains("beta2"));
  bad = {.lr = 1e-3, .step = 0};
  CHECK_THROWS_WITH(adamw_update(be, p.get(), g.get(), m.get(), v.get(), 8, bad, ranges.get(), 1), Contains("step"));
  CHECK_THROWS_WITH(adamw_update(be, p.get(), g.get(), m.get(), v.get(), 8, adamw_params{.lr = 1e-3}, ranges.get(), 0),
                    Contains("no decay ranges"));
}
