// Section 1: the two ceilings every other number is compared with, measured on this device.
//   copy:   cudaMemcpyAsync device → device of 1 GiB; bandwidth = bytes read + bytes written per second.
//   matmul: C = op(A)·op(B), m = n = k = 8192, bf16 in and out with f32 accumulation, through the
//           backend's gemm (cuBLASLt), all four transpose cases; the ceiling is the best of them.
// Inputs are random; each GEMM case is checked at a few elements against an f64 dot product first.
#include <cmath>
#include <cstdint>
#include <string>

#include "bench.cuh"
#include "dsx/backend/cuda/gemm.cuh"

namespace dsx::bench {

void run_ceilings(const section_context& ctx) {
  const auto& out = ctx.out;
  cuda_backend be(backend::cuda_options{.device = ctx.opt.device});
  describe_device(ctx);

  out.md(
      "Device-to-device copy (cudaMemcpyAsync) and an 8192³ bf16 GEMM through `gemm(cuda&, ...)` "
      "(cuBLASLt, f32 accumulation) on random data. Copy bandwidth counts bytes read plus bytes written.");
  out.md("");

  // --- copy bandwidth
  {
    const std::size_t bytes = std::size_t(1) << 30;  // 1 GiB each way
    device_memory src(be, bytes), dst(be, bytes);
    fill_normal(be, reinterpret_cast<float*>(src.data()), std::int64_t(bytes / 4), 11);
    fill_normal(be, reinterpret_cast<float*>(dst.data()), std::int64_t(bytes / 4), 12);
    const timing t = time_device(
        be,
        [&](std::int64_t) {
          DSX_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, be.stream()));
        },
        60, 5, 20, 0);
    be.synchronize();
    const double gbs = 2.0 * double(bytes) / (t.median_ms * 1e-3) / 1e9;
    out.number("copy_gbs", gbs);
    out.md("| measurement | size | median | spread (max−min)/median | result |");
    out.md("|---|---|---|---|---|");
    out.md(strf("| copy D2D, read + write | 2 × 1 GiB | %.3f ms | %.1f%% | **%.0f GB/s** |", t.median_ms,
                100 * t.spread(), gbs));
    out.log(strf("copy: %.0f GB/s", gbs));
  }

  // --- bf16 matmul ceiling: two operand sets of 128 MiB per matrix rotate, 768 MiB in all (≫ L2).
  {
    const std::int64_t s = 8192, elems = s * s;
    const int sets = 2;
    device_memory mem(be, std::size_t(3 * sets * elems) * sizeof(bf16));
    bf16* base = reinterpret_cast<bf16*>(mem.data());
    fill_normal(be, base, 3 * sets * elems, 21);
    auto a_of = [&](std::int64_t i) { return base + (3 * (i % sets) + 0) * elems; };
    auto b_of = [&](std::int64_t i) { return base + (3 * (i % sets) + 1) * elems; };
    auto c_of = [&](std::int64_t i) { return base + (3 * (i % sets) + 2) * elems; };
    const double flops = 2.0 * double(s) * double(s) * double(s);
    double best = 0;
    for (int tr = 0; tr < 4; ++tr) {
      const bool ta = tr & 2, tb = tr & 1;
      const char* name = tr == 0 ? "NN" : tr == 1 ? "NT (x·Wᵀ)" : tr == 2 ? "TN (dyᵀ·x)" : "TT";
      auto call = [&](std::int64_t i) { gemm(be, ta, tb, s, s, s, 1.0, a_of(i), s, b_of(i), s, 0.0, c_of(i), s); };
      std::string err;
      const bool ok = check_gemm_call(
          be, ta, tb, s, s, s, a_of(0), b_of(0), 0.0, c_of(0), [&] { call(0); }, &err);
      const timing t = time_device(be, call, 80, 5, 20);
      const double tflops = flops / (t.median_ms * 1e-3) / 1e12;
      if (ok) best = std::max(best, tflops);
      out.md(strf("| bf16 GEMM %s | 8192³ | %.3f ms | %.1f%% | %.0f TFLOP/s%s |", name, t.median_ms, 100 * t.spread(),
                  tflops, ok ? "" : strf(" (WRONG RESULT, error/tolerance %s: not used)", err.c_str()).c_str()));
      out.log(strf("gemm %s: %.0f TFLOP/s, check %s (error/tolerance %s)", name, tflops, ok ? "ok" : "FAILED",
                   err.c_str()));
    }
    require(best > 0, "ceilings: every bf16 GEMM case failed its check");
    out.number("bf16_tflops", best);
    out.md(strf("| **bf16 matmul ceiling** (best case) | | | | **%.0f TFLOP/s** |", best));
  }
}

}  // namespace dsx::bench
