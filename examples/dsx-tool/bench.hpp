// `bench`: measured speed on this machine. `bench sgemm` measures the SGEMM peak that model-FLOP
// utilisation is reported against; `bench train` times full f32 training steps (forward, backward,
// gradient clipping, AdamW) of the compiled model on the host backend.
#pragma once

#include <cblas.h>
#include <fmt/core.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/config/counts.hpp"
#include "dsx/core/rng.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/transformer.hpp"
#include "dsx/optim/adamw.hpp"

namespace dsx::tool {

inline void set_threads(int threads) {
  if (threads <= 0) return;
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// GFLOP/s of a square f32 GEMM of size n through the host backend (the best of `reps` timings after one
// warm-up): the ceiling that MFU is measured against.
inline double measure_sgemm_gflops(std::int64_t n = 1024, int reps = 5) {
  backend::host be;
  std::vector<float> a(std::size_t(n * n)), b(a.size()), c(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    a[i] = float(random_normal(1, 1, i));
    b[i] = float(random_normal(1, 2, i));
  }
  double best = 0;
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    gemm(be, false, true, n, n, n, 1.0, a.data(), n, b.data(), n, 0.0, c.data(), n);
    const double s = seconds_since(t0);
    if (r > 0) best = std::max(best, 2.0 * double(n) * double(n) * double(n) / s / 1e9);
  }
  return best;
}

inline int bench_sgemm(int threads) {
  set_threads(threads);
  fmt::print("threads {}\n", omp_get_max_threads());
  fmt::print("sgemm_gflops {:.1f}\n", measure_sgemm_gflops());
  return 0;
}

template <model_config C>
int bench_train(std::int64_t batch, std::int64_t seq, int steps, int warmup, int threads) {
  set_threads(threads);
  backend::host be;
  transformer<C, precision::f32, backend::host> model(be, batch, seq);
  init_weights(model, 1234);
  adamw<decltype(model)> opt(model);
  std::vector<std::int32_t> tokens(std::size_t(batch * seq));
  std::vector<double> times;
  double loss = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t(random_bits(7, std::uint64_t(s), i) % C.vocab);
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grad();
    loss = model.forward(tokens, batch, seq);
    model.backward();
    const double norm = opt.grad_norm();
    opt.step(1e-3, decltype(opt)::clip_scale(norm, 1.0));
    if (s >= warmup) times.push_back(seconds_since(t0));
  }
  const double step_s = median(times);
  const double tokens_per_s = double(batch * seq) / step_s;
  const double flops = double(forward_flops(C, seq).training());
  const double peak = measure_sgemm_gflops();
  fmt::print("threads {}\n", omp_get_max_threads());
  fmt::print("batch {} seq {} steps {} (after {} warm-up)\n", batch, seq, steps, warmup);
  fmt::print("last_loss {:.4f}\n", loss);
  fmt::print("step_ms {:.2f}\n", step_s * 1e3);
  fmt::print("training_flops_per_token {}\n", std::int64_t(flops));
  fmt::print("sgemm_gflops {:.1f}\n", peak);
  fmt::print("achieved_gflops {:.1f}\n", flops * tokens_per_s / 1e9);
  fmt::print("mfu {:.3f}\n", flops * tokens_per_s / 1e9 / peak);
  fmt::print("tokens_per_s {:.1f}\n", tokens_per_s);
  return 0;
}

}  // namespace dsx::tool
