// RMSNorm forward and backward on the GPU (backend/cuda/rmsnorm.cuh) against the host backend: awkward
// widths (vector tails), padded row strides (the scalar path), many rows (several dw row blocks), the
// accumulate flag, dw accumulation (+=), and bitwise-reproducible dw.
#include "gpu_test.cuh"

#include "dsx/backend/cuda/rmsnorm.cuh"
#include "dsx/backend/host/rmsnorm.hpp"

using namespace dsx::test::gpu;
using dsx::accum_t;
using dsx::bf16;
using dsx::backend::host;
namespace {

struct norm_case {
  std::int64_t rows, dim, pad;  // row stride = dim + pad
  double eps = 1e-6;
};

// Shapes: one element, one long row, odd widths, widths with a vector tail, aligned model widths, and
// enough rows for several row blocks in dw's first pass. With dim = 1, dx = rstd·dy·w·eps / (x² + eps)
// is the difference of two nearly equal terms unless eps is comparable to x², so that case uses eps = 0.5
// to compare arithmetic rather than cancellation.
constexpr norm_case cases[] = {{1, 1, 0, 0.5},  {1, 7168, 0},   {7, 3, 0},     {33, 67, 1},
                               {300, 1000, 0},  {300, 1000, 5}, {129, 4099, 0}, {64, 7168, 0},
                               {2000, 64, 0},   {10000, 96, 3}};

template <class T>
void check_rmsnorm(cuda_backend& be, const norm_case& nc, std::uint64_t seed) {
  using R = ref_t<T>;
  using A = accum_t<T>;
  using RA = accum_t<R>;
  const std::int64_t rows = nc.rows, dim = nc.dim, stride = dim + nc.pad;
  const std::size_t size = std::size_t(rows * stride);
  const double eps = nc.eps;
  INFO("rows=" << rows << " dim=" << dim << " stride=" << stride << " eps=" << eps);
  const auto x = random_values<T>(size, seed);
  const auto w = random_values<T>(std::size_t(dim), seed + 1, 0.5);
  host hb;

  // Forward.
  device_array<T> dx_in(be, x), dw_in(be, w), dy_out(be, nan_values<T>(size));
  device_array<A> drstd(be, nan_values<A>(std::size_t(rows)));
  rmsnorm_forward(be, dy_out.get(), stride, drstd.get(), dx_in.get(), stride, dw_in.get(), rows, dim, eps);
  auto rx = convert_all<R>(x), rw = convert_all<R>(w);
  auto ry = nan_values<R>(size);
  std::vector<RA> rrstd(static_cast<std::size_t>(rows));
  rmsnorm_forward(hb, ry.data(), stride, rrstd.data(), rx.data(), stride, rw.data(), rows, dim, eps);
  check_close("y", dy_out.download(), ry, tolerance<T>);
  check_close("rstd", drstd.download(), rrstd, tolerance<T>);

  // Backward from the reference rstd (in the GPU's accumulation type), both accumulate modes.
  const auto dy = random_values<T>(size, seed + 2);
  const auto rstd = convert_all<A>(rrstd);
  const auto dw0 = random_values<T>(std::size_t(dim), seed + 3);
  for (const bool accumulate : {false, true}) {
    INFO("accumulate=" << accumulate);
    const auto dx0 = accumulate ? random_values<T>(size, seed + 4) : nan_values<T>(size);
    device_array<T> ddy(be, dy), ddx(be, dx0), ddw(be, dw0);
    device_array<A> dr(be, rstd);
    rmsnorm_backward(be, ddx.get(), stride, ddw.get(), ddy.get(), stride, dx_in.get(), stride, dw_in.get(), dr.get(),
                     rows, dim, accumulate);
    auto rdx = convert_all<R>(dx0), rdw = convert_all<R>(dw0);
    const auto rdy = convert_all<R>(dy);
    const auto rr = convert_all<RA>(rstd);
    rmsnorm_backward(hb, rdx.data(), stride, rdw.data(), rdy.data(), stride, rx.data(), stride, rw.data(), rr.data(),
                     rows, dim, accumulate);
    check_close("dx", ddx.download(), rdx, tolerance<T>);
    const auto dw_first = ddw.download();
    check_close("dw", dw_first, rdw, tolerance<T>);

    // The same backward again from the same dw: bit-identical (no atomics, fixed reduction order).
    ddw.upload(dw0);
    rmsnorm_backward(be, ddx.get(), stride, ddw.get(), ddy.get(), stride, dx_in.get(), stride, dw_in.get(), dr.get(),
                     rows, dim, false);
    CHECK(same_bits(ddw.download(), dw_first));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("cuda rmsnorm forward and backward match the host", "[gpu]", float, double, bf16) {
  cuda_backend be;
  std::uint64_t seed = 1;
  for (const auto& nc : cases) check_rmsnorm<TestType>(be, nc, seed += 5);
}
