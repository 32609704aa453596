// Section 3: MLA decoding bandwidth. `mla_decode_attention(cuda&, ...)` at DeepSeek-V3's shapes (kv_lora
// 512, rope 64, bf16) appends one new token to sequences holding `cache` positions (start_pos = cache − 1)
// and attends over all of them in the absorbed form, with all 128 heads on one GPU (data-parallel
// attention, V3's serving layout) and with 16 (one GPU's share under 8-way tensor parallelism).
//   bytes = the latent cache read once, batch · cache · (kv_lora + rope) · 2
//         + the queries, batch · heads · (kv_lora + rope) · 2, + the output, batch · heads · kv_lora · 2
//   GB/s = bytes / time, compared with the measured copy bandwidth.
// Every cached byte meets 2 · heads · (2 · kv_lora + rope) / (2 · (kv_lora + rope)) FLOPs: 242 per byte at
// 128 heads, just under the ridge of an H100's roofline at the measured ceilings (784 TFLOP/s over
// 2995 GB/s: 262 per byte), so 80 % of the copy bandwidth there means running the products at 74 % of
// the bf16 matmul ceiling; 16 heads (30 per byte) are bound by memory alone. The `roofline` column is
// max(bytes / copy bandwidth, FLOPs / bf16 matmul ceiling) over the time taken.
// The output is poisoned with NaN before the first call and must come back finite everywhere; two rows
// are compared with an f64 reference computed here from the same inputs.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "bench.cuh"
#include "dsx/backend/cuda/attention.cuh"
#include "dsx/config/presets.hpp"
#include "dsx/layers/rope.hpp"

namespace dsx::bench {

namespace {

constexpr auto v3 = presets::v3_671b;
constexpr std::int64_t lat = v3.mla.kv_lora, rope = v3.mla.rope;
static_assert(v3.mla.heads == 128 && lat == 512 && rope == 64);

struct decode_case {
  std::int64_t batch, cache, heads;
};
constexpr decode_case decode_cases[] = {{64, 4096, 128},  {64, 8192, 128}, {128, 4096, 128},
                                        {128, 8192, 128}, {64, 8192, 16},  {128, 8192, 16}};

double bytes_of(const decode_case& c) {
  return 2.0 * double(c.batch) *
         (double(c.cache) * (lat + rope) + double(c.heads) * (lat + rope) + double(c.heads) * lat);
}
// Scores (q_lat·c + q_pe·k_pe) and the weighted sum of c, per cached position and head.
double flops_of(const decode_case& c) {
  return 2.0 * double(c.batch) * double(c.cache) * double(c.heads) * (2 * lat + rope);
}

// max |o − ref| / max |ref| over row (b, h) of the output, reference in f64 from the downloaded inputs.
double row_error(cuda_backend& be, const bf16* o, const bf16* q_lat, const bf16* q_pe, const bf16* c_kv,
                 const bf16* k_pe, std::int64_t cache, std::int64_t heads, std::int64_t b, std::int64_t h,
                 double scale) {
  const std::int64_t row = b * heads + h;  // new_tokens = 1
  const auto ql = download_strided(be, q_lat + row * lat, lat, 1);
  const auto qr = download_strided(be, q_pe + row * rope, rope, 1);
  const auto c = download_strided(be, c_kv + b * cache * lat, cache * lat, 1);
  const auto pe = download_strided(be, k_pe + b * cache * rope, cache * rope, 1);
  const auto got = download_strided(be, o + row * lat, lat, 1);
  std::vector<double> p(std::size_t(cache), 0.0), ref(std::size_t(lat), 0.0);
  double mx = -std::numeric_limits<double>::infinity(), sum = 0;
  for (std::int64_t t = 0; t < cache; ++t) {
    double s = 0;
    for (std::int64_t d = 0; d < lat; ++d) s += ql[d] * c[t * lat + d];
    for (std::int64_t d = 0; d < rope; ++d) s += qr[d] * pe[t * rope + d];
    p[t] = scale * s;
    mx = std::max(mx, p[t]);
  }
  for (auto& v : p) sum += v = std::exp(v - mx);
  for (std::int64_t t = 0; t < cache; ++t)
    for (std::int64_t d = 0; d < lat; ++d) ref[d] += p[t] / sum * c[t * lat + d];
  double err = 0, top = 0;
  for (std::int64_t d = 0; d < lat; ++d) {
    err = std::max(err, std::isfinite(got[d]) ? std::abs(got[d] - ref[d]) : INFINITY);
    top = std::max(top, std::abs(ref[d]));
  }
  return err / top;
}

}  // namespace

std::vector<std::string> describe_decode_plan() {
  std::vector<std::string> lines;
  for (const auto& c : decode_cases)
    lines.push_back(strf("batch %lld, cache %lld positions, heads %lld, kv_lora %lld, rope %lld: %s per call",
                         (long long)c.batch, (long long)c.cache, (long long)c.heads, (long long)lat, (long long)rope,
                         gigabytes(bytes_of(c)).c_str()));
  return lines;
}

void run_decode(const section_context& ctx) {
  const auto& out = ctx.out;
  cuda_backend be(backend::cuda_options{.device = ctx.opt.device});
  describe_device(ctx);
  const double scale = softmax_scale(v3);
  const double copy = ctx.ceil.copy_gbs;

  // Buffers for the largest case; smaller ones use their leading part (cap = cache: sequences packed).
  std::int64_t max_cache_elems = 0, max_rows = 0;
  for (const auto& c : decode_cases) {
    max_cache_elems = std::max(max_cache_elems, c.batch * c.cache);
    max_rows = std::max(max_rows, c.batch * c.heads);
  }
  device_memory c_mem(be, std::size_t(max_cache_elems * lat) * 2), pe_mem(be, std::size_t(max_cache_elems * rope) * 2);
  device_memory ql_mem(be, std::size_t(max_rows * lat) * 2), qr_mem(be, std::size_t(max_rows * rope) * 2);
  device_memory o_mem(be, std::size_t(max_rows * lat) * 2);
  auto* c_kv = reinterpret_cast<bf16*>(c_mem.data());    // (batch, cache, kv_lora)
  auto* k_pe = reinterpret_cast<bf16*>(pe_mem.data());   // (batch, cache, rope)
  auto* q_lat = reinterpret_cast<bf16*>(ql_mem.data());  // (batch, 1, heads, kv_lora)
  auto* q_pe = reinterpret_cast<bf16*>(qr_mem.data());   // (batch, 1, heads, rope)
  auto* o = reinterpret_cast<bf16*>(o_mem.data());       // (batch, 1, heads, kv_lora)
  // N(0, 1) everywhere: the scaled scores (V3's softmax scale with its YaRN factor, 0.135) then have a
  // standard deviation of about 3, so the softmax weights are far from uniform without collapsing.
  fill_normal(be, c_kv, max_cache_elems * lat, 41);
  fill_normal(be, k_pe, max_cache_elems * rope, 42);
  fill_normal(be, q_lat, max_rows * lat, 43);
  fill_normal(be, q_pe, max_rows * rope, 44);

  out.md(
      strf("`mla_decode_attention(cuda&, ...)`, bf16, kv_lora %lld, rope %lld, one new token per sequence; "
           "128 heads (V3 with data-parallel attention) and 16 (one GPU of 8-way tensor parallelism). Bytes: "
           "latent cache read once + queries + output. %s",
           (long long)lat, (long long)rope,
           copy > 0 ? strf("Measured copy bandwidth: %.0f GB/s.", copy).c_str() : "Copy bandwidth not measured."));
  out.md("");
  const double matmul = ctx.ceil.bf16_tflops;
  out.md("| heads | batch | cache | bytes | time | spread | GB/s | % of copy | TFLOP/s | roofline | check |");
  out.md("|---|---|---|---|---|---|---|---|---|---|---|");
  double worst_pct = INFINITY, worst_roofline = INFINITY;
  int wrong = 0;
  for (const auto& c : decode_cases) {
    if (ctx.seconds_left() < 2) {
      out.md("| out of time | | | | | | | | | | |");
      break;
    }
    try {
      const std::int64_t rows = c.batch * c.heads;
      auto call = [&](std::int64_t) {
        mla_decode_attention(be, o, q_lat, q_pe, c_kv, k_pe, c.batch, std::int64_t(1), c.heads, lat, rope, c.cache,
                             c.cache - 1, scale);
      };
      fill_value(be, o, rows * lat, NAN);
      call(0);
      const std::int64_t unwritten = count_nonfinite(be, o, rows * lat);
      const double err =
          std::max(row_error(be, o, q_lat, q_pe, c_kv, k_pe, c.cache, c.heads, 0, 0, scale),
                   row_error(be, o, q_lat, q_pe, c_kv, k_pe, c.cache, c.heads, c.batch - 1, c.heads - 1, scale));
      const bool ok = unwritten == 0 && err <= 2e-2;
      wrong += ok ? 0 : 1;
      const timing t = time_device(be, call, 60, 3, 15);
      const double gbs = bytes_of(c) / (t.median_ms * 1e-3) / 1e9;
      const double tflops = flops_of(c) / (t.median_ms * 1e-3) / 1e12;
      const double bound_ms = copy > 0 && matmul > 0
                                  ? std::max(bytes_of(c) / (copy * 1e9), flops_of(c) / (matmul * 1e12)) * 1e3
                                  : 0.0;
      if (ok && copy > 0) worst_pct = std::min(worst_pct, 100 * gbs / copy);
      if (ok && bound_ms > 0) worst_roofline = std::min(worst_roofline, 100 * bound_ms / t.median_ms);
      out.md(strf("| %lld | %lld | %lld | %s | %.3f ms | %.0f%% | %.0f | %s | %.1f | %s | %s |", (long long)c.heads,
                  (long long)c.batch, (long long)c.cache, gigabytes(bytes_of(c)).c_str(), t.median_ms,
                  100 * t.spread(), gbs, copy > 0 ? strf("%.0f%%", 100 * gbs / copy).c_str() : "n/a", tflops,
                  bound_ms > 0 ? strf("%.0f%%", 100 * bound_ms / t.median_ms).c_str() : "n/a",
                  ok ? strf("ok (%.1e)", err).c_str()
                     : strf("**WRONG** (error %.1e, %lld non-finite)", err, (long long)unwritten).c_str()));
      out.log(strf("heads %lld batch %lld cache %lld: %.0f GB/s, %.1f TFLOP/s, check %s", (long long)c.heads,
                   (long long)c.batch, (long long)c.cache, gbs, tflops, ok ? "ok" : "FAILED"));
    } catch (const std::exception& e) {
      ++wrong;
      out.md(strf("| %lld | %lld | %lld | %s | | | | | | | **failed**: %s |", (long long)c.heads, (long long)c.batch,
                  (long long)c.cache, gigabytes(bytes_of(c)).c_str(), e.what()));
      out.log(strf("heads %lld batch %lld cache %lld: failed: %s", (long long)c.heads, (long long)c.batch,
                   (long long)c.cache, e.what()));
    }
  }
  out.md("");
  out.md(
      "`check`: every output element written and finite, and max |o − ref| / max |ref| ≤ 2e-2 on two rows "
      "against an f64 reference. `TFLOP/s`: 2 · heads · (2 · kv_lora + rope) per cached position and sequence. "
      "`roofline`: max(bytes / copy bandwidth, FLOPs / measured bf16 matmul ceiling) / time.");
  if (std::isfinite(worst_pct)) out.number("decode_min_pct", worst_pct);
  if (std::isfinite(worst_roofline)) out.number("decode_min_roofline_pct", worst_roofline);
  require(wrong == 0, strf("decode: %d case(s) failed or gave wrong results (see the table)", wrong));
}

}  // namespace dsx::bench
