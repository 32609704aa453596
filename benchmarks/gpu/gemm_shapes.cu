// Section 2: bf16 GEMM throughput through `gemm(cuda&, ...)` on the Linear layers of DeepSeek-V3-671B
// and gpu_1b, for every pass of training:
//   forward  y (M, out)  = x (M, in) · W (out, in)ᵀ         gemm(false, true,  M,   out, in)
//   dgrad    dx (M, in)  = dy (M, out) · W (out, in)        gemm(false, false, M,   in,  out)
//   wgrad    dW (out, in) += dy (M, out)ᵀ · x (M, in)        gemm(true,  false, out, in,  M), beta = 1
// M is the batch's token count, except for a routed expert, which sees M · top_k / routed tokens on
// average. FLOPs = 2·m·n·k. Operands are random bf16; sets of operands rotate so that the bytes touched
// between two uses of one set exceed the L2 cache several times. Each case is checked at two elements of
// its first result against an f64 dot product.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bench.cuh"
#include "dsx/backend/cuda/fp8.cuh"
#include "dsx/backend/cuda/gemm.cuh"
#include "dsx/config/presets.hpp"

namespace dsx::bench {

namespace {

struct gemm_case {
  std::string model, linear, pass;
  std::int64_t tokens = 0;  // M of the batch (the expert rows differ)
  bool trans_a = false, trans_b = false;
  std::int64_t m = 0, n = 0, k = 0;
  double beta = 0;
  std::int64_t a_elems() const { return m * k; }
  std::int64_t b_elems() const { return k * n; }
  std::int64_t c_elems() const { return m * n; }
  double flops() const { return 2.0 * double(m) * double(n) * double(k); }
  // "Large model shapes" of the target: every dimension at least 4096.
  bool large() const { return std::min({m, n, k}) >= 4096; }
};

// The three GEMMs of a Linear (out, in) over `rows` tokens.
void add_linear(std::vector<gemm_case>& cases, const std::string& model, std::int64_t tokens, const std::string& linear,
                std::int64_t out, std::int64_t in, std::int64_t rows) {
  cases.push_back({model, linear, "forward", tokens, false, true, rows, out, in, 0.0});
  cases.push_back({model, linear, "dgrad", tokens, false, false, rows, in, out, 0.0});
  cases.push_back({model, linear, "wgrad", tokens, true, false, out, in, rows, 1.0});
}

void add_model(std::vector<gemm_case>& cases, const std::string& model, const model_config& c, std::int64_t tokens) {
  const std::int64_t d = c.hidden, h = c.mla.heads;
  const auto& a = c.mla;
  require(c.moe.routed > 0 && (tokens * c.moe.top_k) % c.moe.routed == 0,
          "gemm: " + std::to_string(tokens) + " tokens do not spread evenly over the " + model + " experts (" +
              std::to_string(tokens) + " · top_k " + std::to_string(c.moe.top_k) + " is not a multiple of " +
              std::to_string(c.moe.routed) + ")");
  const std::int64_t expert_rows = tokens * c.moe.top_k / c.moe.routed;
  add_linear(cases, model, tokens, "q_a", a.q_lora, d, tokens);
  add_linear(cases, model, tokens, "q_b", h * a.qk_head(), a.q_lora, tokens);
  add_linear(cases, model, tokens, "kv_a", a.kv_lora + a.rope, d, tokens);
  add_linear(cases, model, tokens, "kv_b", h * (a.nope + a.v), a.kv_lora, tokens);
  add_linear(cases, model, tokens, "o", d, h * a.v, tokens);
  add_linear(cases, model, tokens, "dense gate_up", 2 * std::int64_t(c.dense_inter), d, tokens);
  add_linear(cases, model, tokens, "dense down", d, c.dense_inter, tokens);
  add_linear(cases, model, tokens, "expert gate_up", 2 * std::int64_t(c.moe.inter), d, expert_rows);
  add_linear(cases, model, tokens, "expert down", d, c.moe.inter, expert_rows);
  add_linear(cases, model, tokens, "lm head", c.vocab, d, tokens);
}

std::vector<gemm_case> cases_of(const options& opt) {
  std::vector<gemm_case> cases;
  for (const std::int64_t tokens : opt.gemm_tokens) {
    add_model(cases, "V3-671B", presets::v3_671b, tokens);
    add_model(cases, "gpu_1b", presets::gpu_1b, tokens);
  }
  return cases;
}

std::string shape_of(const gemm_case& g) {
  return strf("%lld×%lld×%lld %s%s", (long long)g.m, (long long)g.n, (long long)g.k, g.trans_a ? "T" : "N",
              g.trans_b ? "T" : "N");
}

constexpr std::int64_t align_elems = 128;  // 256 bytes of bf16: every operand starts 256-byte aligned
std::int64_t aligned(std::int64_t elems) { return (elems + align_elems - 1) / align_elems * align_elems; }

// The "FP8 TFLOP/s" cell of a forward case: the case's first operand set quantised (activations 1×128,
// weights 128×128, E4M3) and C = A·Bᵀ timed through gemm_fp8_block on cuBLASLt's block scaling and on the
// wgmma kernel (fp8_wgmma.cuh). The dgrad and wgrad GEMMs would need re-tiled (transposed) quantisation:
// not measured. One operand set (no rotation), so small shapes may run from L2. A time of 0: not run;
// negative: the result failed its check (not timed, left out of the ratios, counted as wrong).
struct fp8_timing {
  std::string cell;
  double lt_ms = 0, wgmma_ms = 0;
};

fp8_timing time_fp8(cuda_backend& be, const gemm_case& g, const bf16* a, const bf16* b, bf16* c) {
  if (g.pass != "forward") return {"n/a"};
  const std::int64_t kb = fp8_block::blocks(g.k);
  device_memory qa(be, std::size_t(g.m * g.k)), qb(be, std::size_t(g.n * g.k));
  device_memory sa(be, std::size_t(g.m * kb) * sizeof(float)),
      sb(be, std::size_t(fp8_block::blocks(g.n) * kb) * sizeof(float));
  auto* qa_p = reinterpret_cast<fp8_e4m3*>(qa.data());
  auto* qb_p = reinterpret_cast<fp8_e4m3*>(qb.data());
  auto* sa_p = reinterpret_cast<float*>(sa.data());
  auto* sb_p = reinterpret_cast<float*>(sb.data());
  quantize_act_1x128(be, qa_p, sa_p, a, g.m, g.k, false);
  quantize_weight_128x128(be, qb_p, sb_p, b, g.n, g.k, false);
  // Two elements of C against the block formula in f64 on the downloaded quantised operands: within
  // 1e-3 of Σ|a·b| (tensor-core accumulation inside a 128-wide block) plus bf16 rounding of the result.
  const auto result_ok = [&] {
    const std::int64_t is[2] = {(g.m * 7) / 11, g.m - 1}, js[2] = {(g.n * 5) / 13, g.n - 1};
    for (int t = 0; t < 2; ++t) {
      const auto arow = download_strided(be, qa_p + is[t] * g.k, g.k, 1);
      const auto brow = download_strided(be, qb_p + js[t] * g.k, g.k, 1);
      const auto as = download_strided(be, sa_p + is[t] * kb, kb, 1);
      const auto bs = download_strided(be, sb_p + (js[t] / fp8_block::block) * kb, kb, 1);
      double ref = 0, abs_sum = 0;
      for (std::int64_t p = 0; p < g.k; ++p) {
        const double ab = arow[p] * brow[p] * as[p / fp8_block::block] * bs[p / fp8_block::block];
        ref += ab;
        abs_sum += std::abs(ab);
      }
      const double got = download_strided(be, c + is[t] * g.n + js[t], 1, 1)[0];
      if (!(std::abs(got - ref) <= 1e-3 * abs_sum + std::ldexp(std::abs(ref), -8) + 1e-6)) return false;
    }
    return true;
  };
  // Milliseconds of one implementation; 0 when it cannot run the case, −1 when its result is wrong.
  const auto time_impl = [&](backend::fp8_gemm_impl impl) {
    auto call = [&](std::int64_t) { gemm_fp8_block(be, g.m, g.n, g.k, qa_p, sa_p, qb_p, sb_p, c, impl); };
    try {
      call(0);
    } catch (const error&) {
      return 0.0;
    }
    if (!result_ok()) return -1.0;
    return time_device(be, call, 30, 3, 12).median_ms;
  };
  fp8_timing r;
  r.lt_ms = time_impl(backend::fp8_gemm_impl::cublaslt);
  r.wgmma_ms = time_impl(backend::fp8_gemm_impl::wgmma);
  const auto cell = [&](double ms) {
    return ms > 0 ? strf("%.0f", g.flops() / (ms * 1e-3) / 1e12) : std::string(ms < 0 ? "**WRONG**" : "–");
  };
  r.cell = cell(r.lt_ms) + " / " + cell(r.wgmma_ms);
  return r;
}

}  // namespace

std::vector<std::string> describe_gemm_plan(const options& opt) {
  std::vector<std::string> lines;
  for (const auto& g : cases_of(opt))
    lines.push_back(strf("%-8s M=%-6lld %-15s %-8s m×n×k %s, %.1f GFLOP%s", g.model.c_str(), (long long)g.tokens,
                         g.linear.c_str(), g.pass.c_str(), shape_of(g).c_str(), g.flops() / 1e9,
                         g.large() ? ", large" : ""));
  return lines;
}

void run_gemm(const section_context& ctx) {
  const auto& out = ctx.out;
  cuda_backend be(backend::cuda_options{.device = ctx.opt.device});
  describe_device(ctx);
  cudaDeviceProp prop{};
  DSX_CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx.opt.device));
  const double l2 = double(prop.l2CacheSize);
  const auto cases = cases_of(ctx.opt);

  // Two pools of random bf16: operands (A and B of every rotating set) and results (C). Sized for the
  // largest case; smaller cases rotate through more sets, up to 16, until a round touches ≥ 4 × L2.
  std::int64_t in_elems = 0, out_elems = 0;
  for (const auto& g : cases) {
    in_elems = std::max(in_elems, aligned(g.a_elems()) + aligned(g.b_elems()));
    out_elems = std::max(out_elems, aligned(g.c_elems()));
  }
  in_elems = std::max<std::int64_t>(in_elems, std::int64_t(6 * l2 / sizeof(bf16)));
  out_elems = std::max<std::int64_t>(out_elems, std::int64_t(2 * l2 / sizeof(bf16)));
  out.log(strf("pools: operands %s, results %s", gigabytes(double(in_elems) * 2).c_str(),
               gigabytes(double(out_elems) * 2).c_str()));
  device_memory in_pool(be, std::size_t(in_elems) * sizeof(bf16)), out_pool(be, std::size_t(out_elems) * sizeof(bf16));
  bf16* in = reinterpret_cast<bf16*>(in_pool.data());
  bf16* res = reinterpret_cast<bf16*>(out_pool.data());
  fill_normal(be, in, in_elems, 31);
  fill_normal(be, res, out_elems, 32);  // wgrad reads C (beta = 1): never zeros

  const double ceiling = ctx.ceil.bf16_tflops;
  out.md(
      "bf16 in and out, f32 accumulation, through `gemm(cuda&, ...)` (cuBLASLt). m×n×k with the row-major "
      "transposes of op(A), op(B). FP8 TFLOP/s: forward cases only, `gemm_fp8_block` (E4M3, activations "
      "1×128 and weights 128×128 f32 block scales) through cuBLASLt's block scaling / through the wgmma "
      "kernel (– where it does not run), on one operand set, bf16 out, two elements checked against the "
      "block formula in f64.");
  out.md(ceiling > 0 ? strf("Ratios are to the measured bf16 ceiling, %.0f TFLOP/s.", ceiling)
                     : std::string("The bf16 ceiling was not measured: no ratios."));
  out.md("");
  out.md(
      "| model | M | linear | pass | m×n×k | sets | time | spread | bf16 TFLOP/s | % ceiling | FP8 TFLOP/s | check |");
  out.md("|---|---|---|---|---|---|---|---|---|---|---|---|");

  double large_flops = 0, large_ms = 0, large_min = 0;
  // FP8 against bf16 on the same forward cases, per implementation (0 cuBLASLt, 1 wgmma): summed FP8 and
  // bf16 times of the cases where that implementation ran, all of them and the large ones.
  double fp8_ms[2] = {}, fp8_bf16_ms[2] = {}, fp8_large_ms[2] = {}, fp8_large_bf16_ms[2] = {};
  int large_count = 0, wrong = 0, done = 0;
  for (const auto& g : cases) {
    if (ctx.seconds_left() < 2) {
      out.md(strf("| %d cases not run: out of time | | | | | | | | | | | |", int(cases.size()) - done));
      break;
    }
    // A case that throws (no cuBLASLt algorithm, a CUDA error) is reported in its row; the next one runs.
    try {
      const std::int64_t ab = aligned(g.a_elems()) + aligned(g.b_elems()), c = aligned(g.c_elems());
      const double set_bytes = double(ab + c) * sizeof(bf16);
      const std::int64_t sets = std::max<std::int64_t>(
          1, std::min({std::int64_t(std::ceil(4 * l2 / set_bytes)), std::int64_t(16), in_elems / ab, out_elems / c}));
      const std::int64_t lda = g.trans_a ? g.m : g.k, ldb = g.trans_b ? g.k : g.n;
      auto a_of = [&](std::int64_t i) { return in + (i % sets) * ab; };
      auto b_of = [&](std::int64_t i) { return in + (i % sets) * ab + aligned(g.a_elems()); };
      auto c_of = [&](std::int64_t i) { return res + (i % sets) * c; };
      auto call = [&](std::int64_t i) {
        gemm(be, g.trans_a, g.trans_b, g.m, g.n, g.k, 1.0, a_of(i), lda, b_of(i), ldb, g.beta, c_of(i), g.n);
      };
      std::string check;
      const bool ok = check_gemm_call(
          be, g.trans_a, g.trans_b, g.m, g.n, g.k, a_of(0), b_of(0), g.beta, c_of(0), [&] { call(0); }, &check);
      const timing t = time_device(be, call, 30, 3, 12);
      const double tflops = g.flops() / (t.median_ms * 1e-3) / 1e12;
      wrong += ok ? 0 : 1;
      if (g.large() && ok) {
        large_flops += g.flops();
        large_ms += t.median_ms;
        large_min = large_count == 0 ? tflops : std::min(large_min, tflops);
        ++large_count;
      }
      const fp8_timing fp8 = time_fp8(be, g, a_of(0), b_of(0), c_of(0));
      wrong += (fp8.lt_ms < 0 ? 1 : 0) + (fp8.wgmma_ms < 0 ? 1 : 0);
      for (int i = 0; i < 2; ++i) {
        const double ms = i == 0 ? fp8.lt_ms : fp8.wgmma_ms;
        if (ms <= 0 || !ok) continue;
        fp8_ms[i] += ms;
        fp8_bf16_ms[i] += t.median_ms;
        if (g.large()) {
          fp8_large_ms[i] += ms;
          fp8_large_bf16_ms[i] += t.median_ms;
        }
      }
      out.md(strf("| %s | %lld | %s | %s | %s | %lld | %.1f µs | %.0f%% | %.0f%s | %s | %s | %s |",
                  g.model.c_str(), (long long)g.tokens, g.linear.c_str(), g.pass.c_str(), shape_of(g).c_str(),
                  (long long)sets, t.median_ms * 1e3, 100 * t.spread(), tflops, g.large() ? " (large)" : "",
                  ceiling > 0 ? strf("%.0f%%", 100 * tflops / ceiling).c_str() : "n/a", fp8.cell.c_str(),
                  ok ? strf("ok (%s)", check.c_str()).c_str() : strf("**WRONG** (%s)", check.c_str()).c_str()));
      out.log(strf("%s M=%lld %s %s: %.0f TFLOP/s%s", g.model.c_str(), (long long)g.tokens, g.linear.c_str(),
                   g.pass.c_str(), tflops, ok ? "" : " WRONG RESULT"));
    } catch (const std::exception& e) {
      ++wrong;
      out.md(strf("| %s | %lld | %s | %s | %s | | | | | | | **failed**: %s |", g.model.c_str(), (long long)g.tokens,
                  g.linear.c_str(), g.pass.c_str(), shape_of(g).c_str(), e.what()));
      out.log(strf("%s M=%lld %s %s: failed: %s", g.model.c_str(), (long long)g.tokens, g.linear.c_str(),
                   g.pass.c_str(), e.what()));
    }
    ++done;
  }
  out.md("");
  out.md(
      "`check`: the larger error/tolerance ratio of two elements of the first result against an f64 dot "
      "product (ok ≤ 1). `sets`: rotating operand sets. `spread`: (max − min) / median over the timed groups.");
  if (large_count > 0) {
    const double aggregate = large_flops / (large_ms * 1e-3) / 1e12;
    out.number("gemm_large_tflops", aggregate);
    out.number("gemm_large_min_tflops", large_min);
    out.md("");
    out.md(
        strf("Large shapes (every dimension ≥ 4096, %d cases): %.0f TFLOP/s over their summed time, slowest "
             "%.0f TFLOP/s.",
             large_count, aggregate, large_min));
  }
  out.md("");
  const char* fp8_names[2] = {"cuBLASLt block scaling", "the wgmma kernel"};
  const char* fp8_keys[2] = {"fp8_lt_speedup_large", "fp8_wgmma_speedup_large"};
  for (int i = 0; i < 2; ++i) {
    if (fp8_ms[i] <= 0) {
      out.md(strf("FP8 through %s: not run on any case.", fp8_names[i]));
      continue;
    }
    out.md(strf("FP8 through %s against bf16 on the same forward cases: %.2f× over all of them (summed bf16 "
                "time / summed FP8 time)%s.",
                fp8_names[i], fp8_bf16_ms[i] / fp8_ms[i],
                fp8_large_ms[i] > 0
                    ? strf(", %.2f× over the large ones", fp8_large_bf16_ms[i] / fp8_large_ms[i]).c_str()
                    : ""));
    if (fp8_large_ms[i] > 0) out.number(fp8_keys[i], fp8_large_bf16_ms[i] / fp8_large_ms[i]);
  }
  if (!be.matmul().last_refusal().empty()) {
    out.md("cuBLASLt refused block-scaled FP8, last answer: `" + be.matmul().last_refusal() + "`");
    out.text("fp8_refusal", be.matmul().last_refusal());
  }
  out.number("gemm_wrong", wrong);
  require(wrong == 0, strf("gemm: %d case(s) failed or gave wrong results (see the table)", wrong));
}

}  // namespace dsx::bench
