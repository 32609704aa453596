// Section 2b: the routed experts' GEMMs of one gpu_1b MoE layer, as training runs them: the six grouped
// calls of moe.cuh (forward gate_up and down, dgrad of both, wgrad of both) over the layer's
// tokens · top_k assignments sorted by expert, each call timed with the host synchronisation on the
// expert offsets that it makes. Two routings: balanced (every expert the same rows) and skewed (expert
// loads ∝ exp(0.5·z), z standard normal, a spread the bias balancing leaves early in training). The peer
// in the same run is one dense GEMM of the same total FLOPs (all rows against one expert's weights): what
// a grouped GEMM as efficient as a single large one would take. The layer total times the MoE layer count
// estimates the experts' share of a training step.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench.cuh"
#include "dsx/backend/cuda/gemm.cuh"
#include "dsx/backend/cuda/moe.cuh"
#include "dsx/config/presets.hpp"

namespace dsx::bench {

namespace {

constexpr auto cfg = presets::gpu_1b;
constexpr std::int64_t hidden = cfg.hidden, inter = cfg.moe.inter, experts = cfg.moe.routed;
constexpr std::int64_t tokens = 16384;  // the training section's batch: 8 × 2048
constexpr std::int64_t rows = tokens * cfg.moe.top_k;

// Rows per expert summing to `rows`: balanced, or ∝ exp(0.5·z) rounded by largest remainder.
std::vector<std::int64_t> loads_of(bool skewed) {
  std::vector<std::int64_t> load(static_cast<std::size_t>(experts), rows / experts);
  if (!skewed) return load;
  std::mt19937_64 rng(2026);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> w(static_cast<std::size_t>(experts));
  for (auto& v : w) v = std::exp(0.5 * normal(rng));
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  std::vector<std::pair<double, std::size_t>> rest;
  std::int64_t given = 0;
  for (std::size_t e = 0; e < w.size(); ++e) {
    const double exact = double(rows) * w[e] / total;
    load[e] = std::int64_t(exact);
    given += load[e];
    rest.push_back({exact - double(load[e]), e});
  }
  std::sort(rest.rbegin(), rest.rend());
  for (std::int64_t i = 0; i < rows - given; ++i) ++load[rest[std::size_t(i)].second];
  return load;
}

struct expert_gemm {
  const char* name;
  double flops;  // 2 · rows · n · k over all experts
};

}  // namespace

std::vector<std::string> describe_experts_plan() {
  std::vector<std::string> lines;
  for (const bool skewed : {false, true}) {
    const auto load = loads_of(skewed);
    lines.push_back(strf("%s routing: %lld assignments over %lld experts, rows per expert %lld to %lld; "
                         "gate_up %lld×%lld, down %lld×%lld weights; six grouped GEMMs and their dense peers",
                         skewed ? "skewed" : "balanced", (long long)rows, (long long)experts,
                         (long long)*std::min_element(load.begin(), load.end()),
                         (long long)*std::max_element(load.begin(), load.end()), (long long)(2 * inter),
                         (long long)hidden, (long long)hidden, (long long)inter));
  }
  return lines;
}

void run_experts(const section_context& ctx) {
  const auto& out = ctx.out;
  cuda_backend be(backend::cuda_options{.device = ctx.opt.device});
  describe_device(ctx);
  const double ceiling = ctx.ceil.bf16_tflops;

  // x (rows, H), gu (rows, 2I), h (rows, I), y (rows, H); weights W_gu (E, 2I, H), W_down (E, H, I) and
  // their gradients. The backward reuses the forward buffers as gradients of the same shapes (timing only).
  const std::int64_t x_n = rows * hidden, gu_n = rows * 2 * inter, h_n = rows * inter, y_n = rows * hidden;
  const std::int64_t wgu_n = experts * 2 * inter * hidden, wd_n = experts * hidden * inter;
  device_memory mem(be, std::size_t(x_n + gu_n + h_n + y_n + 2 * wgu_n + 2 * wd_n) * sizeof(bf16));
  bf16* x = reinterpret_cast<bf16*>(mem.data());
  bf16* gu = x + x_n;
  bf16* h = gu + gu_n;
  bf16* y = h + h_n;
  bf16* w_gu = y + y_n;
  bf16* dw_gu = w_gu + wgu_n;
  bf16* w_down = dw_gu + wgu_n;
  bf16* dw_down = w_down + wd_n;
  const std::int64_t all_n = x_n + gu_n + h_n + y_n + 2 * wgu_n + 2 * wd_n;
  device_memory off_mem(be, std::size_t(experts + 1) * sizeof(std::int32_t));
  auto* offsets = reinterpret_cast<std::int32_t*>(off_mem.data());

  const double f_gu = 2.0 * double(rows) * double(2 * inter) * double(hidden);
  const double f_down = 2.0 * double(rows) * double(hidden) * double(inter);
  const expert_gemm gemms[6] = {{"gate_up forward", f_gu}, {"down forward", f_down}, {"down dgrad", f_down},
                                {"gate_up dgrad", f_gu},   {"down wgrad", f_down},   {"gate_up wgrad", f_gu}};
  const auto grouped = [&](int which) {
    switch (which) {
      case 0: gemm_grouped(be, true, 2 * inter, hidden, x, w_gu, 2 * inter * hidden, gu, offsets, int(experts)); break;
      case 1: gemm_grouped(be, true, hidden, inter, h, w_down, hidden * inter, y, offsets, int(experts)); break;
      case 2: gemm_grouped(be, false, inter, hidden, y, w_down, hidden * inter, h, offsets, int(experts)); break;
      case 3: gemm_grouped(be, false, hidden, 2 * inter, gu, w_gu, 2 * inter * hidden, x, offsets, int(experts)); break;
      case 4: gemm_grouped_wgrad(be, hidden, inter, y, h, dw_down, hidden * inter, offsets, int(experts)); break;
      default: gemm_grouped_wgrad(be, 2 * inter, hidden, gu, x, dw_gu, 2 * inter * hidden, offsets, int(experts));
    }
  };
  // The peer: the same GEMM over all rows with expert 0's weights, one cuBLASLt call.
  const auto dense = [&](int which) {
    switch (which) {
      case 0: gemm(be, false, true, rows, 2 * inter, hidden, 1.0, x, hidden, w_gu, hidden, 0.0, gu, 2 * inter); break;
      case 1: gemm(be, false, true, rows, hidden, inter, 1.0, h, inter, w_down, inter, 0.0, y, hidden); break;
      case 2: gemm(be, false, false, rows, inter, hidden, 1.0, y, hidden, w_down, inter, 0.0, h, inter); break;
      case 3: gemm(be, false, false, rows, hidden, 2 * inter, 1.0, gu, 2 * inter, w_gu, hidden, 0.0, x, hidden); break;
      case 4: gemm(be, true, false, hidden, inter, rows, 1.0, y, hidden, h, inter, 1.0, dw_down, inter); break;
      default: gemm(be, true, false, 2 * inter, hidden, rows, 1.0, gu, 2 * inter, x, hidden, 1.0, dw_gu, hidden);
    }
  };

  out.md(strf("gpu_1b, one MoE layer: %lld tokens × top_k %d = %lld assignments over %lld routed experts (hidden "
              "%lld, expert inter %lld), bf16 through `gemm_grouped` / `gemm_grouped_wgrad` (one cuBLASLt call per "
              "expert after a host synchronisation on the offsets). `dense`: one GEMM of the same FLOPs. %s",
              (long long)tokens, cfg.moe.top_k, (long long)rows, (long long)experts, (long long)hidden,
              (long long)inter,
              ceiling > 0 ? strf("Ratios are to the measured bf16 ceiling, %.0f TFLOP/s.", ceiling).c_str() : ""));
  out.md("");
  out.md("| routing | GEMM | time | TFLOP/s | % ceiling | dense time | dense TFLOP/s | grouped / dense time |");
  out.md("|---|---|---|---|---|---|---|---|");
  int wrong = 0;
  std::vector<std::string> summary;
  for (const bool skewed : {false, true}) {
    // Fresh N(0, 0.25) data per routing: the chained calls (outputs of one are inputs of the next) grow it.
    fill_normal(be, x, all_n, skewed ? 52 : 51, 0.0f, 0.5f);
    const auto load = loads_of(skewed);
    std::vector<std::int32_t> off(std::size_t(experts) + 1, 0);
    for (std::size_t e = 0; e < load.size(); ++e) off[e + 1] = off[e] + std::int32_t(load[e]);
    be.upload(offsets, off.data(), off.size() * sizeof(std::int32_t));
    const char* routing = skewed ? "skewed" : "balanced";

    // The last expert's block of the forward gate_up against an f64 dot product.
    {
      const std::int64_t e = experts - 1, first = off[std::size_t(e)];
      std::string detail;
      const bool ok = check_gemm_call(be, false, true, load[std::size_t(e)], 2 * inter, hidden, x + first * hidden,
                                      w_gu + e * 2 * inter * hidden, 0.0, gu + first * 2 * inter,
                                      [&] { grouped(0); }, &detail);
      out.log(strf("%s: gate_up forward of expert %lld checked: %s", routing, (long long)e, detail.c_str()));
      if (!ok) {
        ++wrong;
        out.md(strf("| %s | gate_up forward | | | | | | **WRONG** (%s) |", routing, detail.c_str()));
      }
    }
    double layer_ms = 0, dense_ms = 0;
    for (int g = 0; g < 6; ++g) {
      if (ctx.seconds_left() < 2) {
        out.md(strf("| %s | out of time | | | | | | |", routing));
        break;
      }
      const timing t = time_device(be, [&](std::int64_t) { grouped(g); }, 30, 3, 10);
      const timing d = time_device(be, [&](std::int64_t) { dense(g); }, 30, 3, 10);
      const double tf = gemms[g].flops / (t.median_ms * 1e-3) / 1e12;
      layer_ms += t.median_ms;
      dense_ms += d.median_ms;
      out.md(strf("| %s | %s | %.1f µs | %.0f | %s | %.1f µs | %.0f | %.2f |", routing, gemms[g].name,
                  t.median_ms * 1e3, tf, ceiling > 0 ? strf("%.0f%%", 100 * tf / ceiling).c_str() : "n/a",
                  d.median_ms * 1e3, gemms[g].flops / (d.median_ms * 1e-3) / 1e12, t.median_ms / d.median_ms));
    }
    const int layers = cfg.moe_layers();
    out.md(strf("| %s | **layer total** | %.2f ms | | | %.2f ms | | %.2f |", routing, layer_ms, dense_ms,
                layer_ms / dense_ms));
    summary.push_back(strf("%s routing (rows per expert %lld to %lld): %.2f ms per layer, × %d MoE layers = %.1f ms "
                           "per training step; the dense peer %.1f ms.",
                           routing, (long long)*std::min_element(load.begin(), load.end()),
                           (long long)*std::max_element(load.begin(), load.end()), layer_ms, layers,
                           layer_ms * layers, dense_ms * layers));
    out.log(summary.back());
    out.number(std::string("experts_step_ms_") + routing, layer_ms * layers);
    out.number(std::string("experts_dense_step_ms_") + routing, dense_ms * layers);
  }
  out.md("");
  for (const auto& line : summary) out.md("- " + line);
  require(wrong == 0, strf("experts: %d check(s) failed (see the table)", wrong));
}

}  // namespace dsx::bench
