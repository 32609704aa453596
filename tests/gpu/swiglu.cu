// SwiGLU forward and backward on the GPU (backend/cuda/swiglu.cuh) against the host backend, for widths
// that take the vector path and widths that do not.
#include "gpu_test.cuh"

#include "dsx/backend/cuda/swiglu.cuh"
#include "dsx/backend/host/swiglu.hpp"

using namespace dsx::test::gpu;
using dsx::bf16;
using dsx::backend::host;
TEMPLATE_TEST_CASE("cuda swiglu forward and backward match the host", "[gpu]", float, double, bf16) {
  using T = TestType;
  using R = ref_t<T>;
  cuda_backend be;
  host hb;
  const std::int64_t shapes[][2] = {{1, 1}, {7, 3}, {33, 100}, {64, 704}, {300, 1409}, {1000, 2048}};
  std::uint64_t seed = 1;
  for (const auto& s : shapes) {
    const std::int64_t rows = s[0], inter = s[1];
    INFO("rows=" << rows << " inter=" << inter);
    // Gates spread over [-12, 12] so both tails of the sigmoid are exercised.
    const auto gu = random_values<T>(std::size_t(rows * 2 * inter), seed += 3, 4.0);
    const auto dh = random_values<T>(std::size_t(rows * inter), seed + 1);
    device_array<T> dgu_in(be, gu), ddh(be, dh), dh_out(be, nan_values<T>(dh.size())),
        ddgu(be, nan_values<T>(gu.size()));
    swiglu_forward(be, dh_out.get(), dgu_in.get(), rows, inter);
    swiglu_backward(be, ddgu.get(), ddh.get(), dgu_in.get(), rows, inter);

    const auto rgu = convert_all<R>(gu), rdh = convert_all<R>(dh);
    auto rh = nan_values<R>(dh.size()), rdgu = nan_values<R>(gu.size());
    swiglu_forward(hb, rh.data(), rgu.data(), rows, inter);
    swiglu_backward(hb, rdgu.data(), rdh.data(), rgu.data(), rows, inter);
    check_close("h", dh_out.download(), rh, tolerance<T>);
    check_close("dgu", ddgu.download(), rdgu, tolerance<T>);
  }
}
