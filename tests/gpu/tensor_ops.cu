// add_into, copy_rows and convert_copy on the GPU (backend/cuda/tensor_ops.cuh) against the host
// backend, aligned and misaligned buffers, padded strides whose padding must stay untouched.
#include "gpu_test.cuh"

#include "dsx/backend/cuda/tensor_ops.cuh"
#include "dsx/backend/host/tensor_ops.hpp"

using namespace dsx::test::gpu;
using dsx::bf16;
using dsx::backend::host;
TEMPLATE_TEST_CASE("cuda add_into matches the host", "[gpu]", float, double, bf16) {
  using T = TestType;
  using R = ref_t<T>;
  cuda_backend be;
  host hb;
  std::uint64_t seed = 1;
  for (const std::int64_t n : {1, 7, 1000, 4099, 1 << 20})
    for (const std::int64_t offset : {0, 1}) {  // offset 1: not 16-byte aligned, the scalar path
      INFO("n=" << n << " offset=" << offset);
      const auto y = random_values<T>(std::size_t(n + offset), seed += 2), x = random_values<T>(std::size_t(n + offset), seed + 1);
      device_array<T> dy(be, y), dx(be, x);
      add_into(be, dy.get() + offset, dx.get() + offset, n);
      auto ry = convert_all<R>(y);
      const auto rx = convert_all<R>(x);
      add_into(hb, ry.data() + offset, rx.data() + offset, n);
      check_close("y", dy.download(), ry, tolerance<T>);
    }
}

TEMPLATE_TEST_CASE("cuda copy_rows matches the host and leaves padding alone", "[gpu]", float, double, bf16) {
  using T = TestType;
  cuda_backend be;
  host hb;
  const std::int64_t shapes[][4] = {// rows, cols, x_stride, y_stride
                                    {1, 1, 1, 1}, {7, 3, 5, 4}, {33, 64, 64, 72}, {100, 1000, 1003, 1000}, {16, 7168, 7168, 7168}};
  std::uint64_t seed = 1;
  for (const auto& s : shapes) {
    const std::int64_t rows = s[0], cols = s[1], xs = s[2], ys = s[3];
    INFO("rows=" << rows << " cols=" << cols << " x_stride=" << xs << " y_stride=" << ys);
    const auto x = random_values<T>(std::size_t(rows * xs), seed += 2);
    device_array<T> dx(be, x), dy(be, nan_values<T>(std::size_t(rows * ys)));
    copy_rows(be, dy.get(), ys, dx.get(), xs, rows, cols);
    auto y = nan_values<T>(std::size_t(rows * ys));
    copy_rows(hb, y.data(), ys, x.data(), xs, rows, cols);
    const auto got = dy.download();
    check_close("y", got, y, 0.0);  // a copy is exact; NaN padding must stay NaN
  }
}

TEST_CASE("cuda convert_copy matches the host bit for bit, widening and rounding", "[gpu]") {
  cuda_backend be;
  host hb;
  for (const std::int64_t n : {1, 7, 1000, (1 << 20) + 3}) {
    INFO("n=" << n);
    const auto wide = random_values<float>(std::size_t(n), std::uint64_t(n));
    device_array<float> dwide(be, wide);
    device_array<bf16> dnarrow(be, std::size_t(n));
    convert_copy(be, dnarrow.get(), dwide.get(), n);  // f32 -> bf16: round to nearest even
    std::vector<bf16> narrow(static_cast<std::size_t>(n));
    convert_copy(hb, narrow.data(), wide.data(), n);
    check_close("bf16", dnarrow.download(), narrow, 0.0);
    device_array<float> dback(be, std::size_t(n));
    convert_copy(be, dback.get(), dnarrow.get(), n);  // bf16 -> f32: exact
    std::vector<float> back(static_cast<std::size_t>(n));
    convert_copy(hb, back.data(), narrow.data(), n);
    check_close("f32", dback.download(), back, 0.0);
  }
}

TEMPLATE_TEST_CASE("cuda sum_squares matches the host and propagates NaN", "[gpu]", float, double, bf16) {
  using T = TestType;
  cuda_backend be;
  host hb;
  for (const std::int64_t n : {1, 7, 1000, (1 << 20) + 3, 40'000'000}) {
    INFO("n=" << n);
    auto x = random_values<T>(std::size_t(n), std::uint64_t(n) + 5);
    device_array<T> dx(be, x);
    const double got = sum_squares(be, dx.get(), n), want = sum_squares(hb, x.data(), n);
    CHECK(got == Approx(want).epsilon(1e-12));  // both in f64; only the order of the additions differs
    CHECK(sum_squares(be, dx.get(), n) == got);  // deterministic
    x[std::size_t(n / 2)] = dsx::convert<T>(std::nan(""));
    dx.upload(x);
    CHECK(std::isnan(sum_squares(be, dx.get(), n)));
  }
}
