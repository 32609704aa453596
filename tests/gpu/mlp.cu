// The seam: the SwiGLU FFN layer (layers/mlp.hpp) is the same code on both backends. Its forward and
// backward run with a `cuda&` on device memory and with a `host&` on host memory from identical inputs,
// and the outputs, input gradients and accumulated (+=) parameter gradients must agree.
#include "gpu_test.cuh"

#include "dsx/backend/cuda/all.cuh"
#include "dsx/backend/host/all.hpp"
#include "dsx/core/arena.hpp"
#include "dsx/layers/mlp.hpp"

using namespace dsx::test::gpu;
using dsx::bf16;
using dsx::backend::host;
namespace {

template <class T>
void check_mlp(std::int64_t tokens, std::int64_t hidden, std::int64_t inter, std::uint64_t seed) {
  using R = ref_t<T>;
  INFO("tokens=" << tokens << " hidden=" << hidden << " inter=" << inter);
  const auto x = random_values<T>(std::size_t(tokens * hidden), seed);
  const auto w_gu = random_values<T>(std::size_t(2 * inter * hidden), seed + 1, 0.2);
  const auto w_down = random_values<T>(std::size_t(hidden * inter), seed + 2, 0.2);
  const auto dy = random_values<T>(std::size_t(tokens * hidden), seed + 3);
  // Gradients start non-zero: backward must add to them.
  const auto g_gu0 = random_values<T>(w_gu.size(), seed + 4, 0.1);
  const auto g_down0 = random_values<T>(w_down.size(), seed + 5, 0.1);

  // GPU: the layer's activations in an arena of device memory, scratch from the device too.
  cuda_backend be;
  dsx::mlp<T> layer(hidden, inter);
  dsx::arena_plan plan;
  layer.plan(plan, tokens);
  dsx::arena<cuda_backend> act(be, plan.bytes());
  layer.bind(act.data(), plan);
  device_array<std::byte> scratch(be, layer.scratch_bytes(tokens));
  device_array<T> dx_in(be, x), dwgu(be, w_gu), dwd(be, w_down), ddy(be, dy), dgu(be, g_gu0), dgd(be, g_down0);
  device_array<T> dy_out(be, nan_values<T>(x.size())), ddx(be, nan_values<T>(x.size()));
  layer.forward(be, {dwgu.get(), dwd.get()}, dx_in.get(), dy_out.get(), tokens);
  layer.backward(be, {dwgu.get(), dwd.get()}, {dgu.get(), dgd.get()}, dx_in.get(), ddy.get(), ddx.get(), tokens,
                 scratch.get());

  // Host: the same layer code on host memory.
  host hb;
  dsx::mlp<R> ref(hidden, inter);
  dsx::arena_plan ref_plan;
  ref.plan(ref_plan, tokens);
  dsx::arena<host> ref_act(hb, ref_plan.bytes());
  ref.bind(ref_act.data(), ref_plan);
  std::vector<std::byte> ref_scratch(ref.scratch_bytes(tokens));
  const auto rx = convert_all<R>(x), rwgu = convert_all<R>(w_gu), rwd = convert_all<R>(w_down), rdy = convert_all<R>(dy);
  auto rgu = convert_all<R>(g_gu0), rgd = convert_all<R>(g_down0);
  auto ry = nan_values<R>(x.size()), rdx = nan_values<R>(x.size());
  ref.forward(hb, {rwgu.data(), rwd.data()}, rx.data(), ry.data(), tokens);
  ref.backward(hb, {rwgu.data(), rwd.data()}, {rgu.data(), rgd.data()}, rx.data(), rdy.data(), rdx.data(), tokens,
               ref_scratch.data());

  check_close("y", dy_out.download(), ry, tolerance<T>);
  check_close("dx", ddx.download(), rdx, tolerance<T>);
  check_close("d gate_up", dgu.download(), rgu, tolerance<T>);
  check_close("d down", dgd.download(), rgd, tolerance<T>);
}

}  // namespace

TEMPLATE_TEST_CASE("mlp layer: forward and backward on cuda equal the host backend", "[gpu]", float, double, bf16) {
  check_mlp<TestType>(37, 72, 101, 1);    // odd widths: unaligned rows, scalar kernel paths
  check_mlp<TestType>(64, 128, 256, 11);  // aligned widths: vector paths
  check_mlp<TestType>(1, 16, 24, 21);     // one token
}
