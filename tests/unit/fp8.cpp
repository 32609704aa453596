// FP8 block scaling on the host backend (backend/host/fp8.hpp, core/fp8_block.hpp): the quantisation
// against hand-computed values (DeepSeek-V3's act_quant: amax 3.0 → scale 3/448, UE8M0 → 2^-7), edge
// tiles and blocks, round-trip error bounds of E4M3, the block GEMM against f64 GEMMs of the dequantised
// and of the unquantised operands, and bad arguments.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "dsx/backend/host/fp8.hpp"
#include "dsx/core/error.hpp"

using dsx::bf16;
using dsx::fp8_e4m3;
using dsx::backend::host;
namespace fb = dsx::fp8_block;

namespace {

// n values from N(0, 1) times a per-element magnitude drawn log-uniformly from [2^-4, 2^4], so that tiles
// see a spread of exponents.
std::vector<float> random_values(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> exponent(-4.0f, 4.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng) * std::exp2(exponent(rng));
  return v;
}

// C (m, n) = A (m, k) · B (n, k)ᵀ in f64, and Σ |a||b| per element (the scale of rounding errors).
void gemm_f64(std::int64_t m, std::int64_t n, std::int64_t k, const std::vector<double>& a,
              const std::vector<double>& b, std::vector<double>& c, std::vector<double>& abs_c) {
  c.assign(std::size_t(m * n), 0.0);
  abs_c.assign(std::size_t(m * n), 0.0);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0, as = 0;
      for (std::int64_t t = 0; t < k; ++t) {
        s += a[i * k + t] * b[j * k + t];
        as += std::abs(a[i * k + t] * b[j * k + t]);
      }
      c[i * n + j] = s;
      abs_c[i * n + j] = as;
    }
}

}  // namespace

TEST_CASE("act_quant scales: amax 3.0 gives 3/448, UE8M0 gives 2^-7", "[unit]") {
  host be;
  // One row of 128 channels whose largest magnitude is 3.0 (negative, to exercise |x|).
  std::vector<float> x(128, 0.5f);
  x[17] = -3.0f;
  x[90] = 1.0f;
  std::vector<fp8_e4m3> q(128);
  float s = 0;
  quantize_act_1x128(be, q.data(), &s, x.data(), 1, 128, false);
  CHECK(s == 3.0f / 448.0f);
  CHECK(s == Approx(0.0066964).epsilon(1e-4));
  CHECK(float(q[17]) == -448.0f);  // the amax element lands on the largest finite E4M3
  // 0.5 / (3/448) = 74.67 → E4M3 step 8 in [64, 128): 72; 1.0 → 149.33, step 16 in [128, 256): 144.
  CHECK(float(q[0]) == 72.0f);
  CHECK(float(q[90]) == 144.0f);

  quantize_act_1x128(be, q.data(), &s, x.data(), 1, 128, true);
  CHECK(s == 0.0078125f);  // 3/448 = 2^-7.06 → 2^-7
  CHECK(float(q[17]) == -384.0f);  // 3 · 2^7, exact
  CHECK(float(q[0]) == 64.0f);
  CHECK(float(q[90]) == 128.0f);
}

TEST_CASE("act_quant clamps amax at 1e-4 and handles a partial last tile", "[unit]") {
  host be;
  const std::int64_t rows = 2, cols = 200;  // tiles of 128 and 72 channels
  std::vector<float> x(std::size_t(rows * cols), 0.0f);
  // Row 0: tile 0 all zero (clamped), tile 1 amax 7 at its last element. Row 1: amax 0.25 in tile 0, and a
  // value just past the tile boundary (column 128) with amax 2.
  x[199] = 7.0f;
  x[cols + 5] = -0.25f;
  x[cols + 128] = 2.0f;
  std::vector<fp8_e4m3> q(x.size());
  std::vector<float> s(std::size_t(rows * fb::blocks(cols)));
  REQUIRE(s.size() == 4);
  quantize_act_1x128(be, q.data(), s.data(), x.data(), rows, cols, false);
  CHECK(s[0] == 1e-4f / 448.0f);
  CHECK(s[1] == 7.0f / 448.0f);
  CHECK(s[2] == 0.25f / 448.0f);
  CHECK(s[3] == 2.0f / 448.0f);
  CHECK(float(q[199]) == 448.0f);
  CHECK(float(q[cols + 5]) == -448.0f);
  CHECK(float(q[cols + 128]) == 448.0f);
  for (std::int64_t c = 0; c < 128; ++c) CHECK(q[c].bits == 0);
}

TEST_CASE("weight quantisation: one scale per 128×128 block, edge blocks from their own elements", "[unit]") {
  host be;
  const std::int64_t rows = 130, cols = 260;  // 2 × 3 blocks; the last row and column blocks are partial
  std::vector<float> w(std::size_t(rows * cols), 0.01f);
  const float block_max[2][3] = {{1.5f, -3.0f, 0.75f}, {6.0f, 0.125f, -40.0f}};
  const std::int64_t where[2][3][2] = {{{5, 7}, {127, 255}, {64, 259}}, {{128, 0}, {129, 128}, {129, 259}}};
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) w[where[i][j][0] * cols + where[i][j][1]] = block_max[i][j];
  std::vector<fp8_e4m3> q(w.size());
  std::vector<float> s(6);
  for (bool ue8m0 : {false, true}) {
    quantize_weight_128x128(be, q.data(), s.data(), w.data(), rows, cols, ue8m0);
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) {
        const float plain = std::abs(block_max[i][j]) / 448.0f;
        const float expected = ue8m0 ? std::exp2(std::ceil(std::log2(plain))) : plain;
        INFO("block (" << i << ", " << j << ") ue8m0 " << ue8m0);
        CHECK(s[i * 3 + j] == expected);
        const std::int64_t at = where[i][j][0] * cols + where[i][j][1];
        CHECK(float(q[at]) == float(fp8_e4m3(block_max[i][j] / expected)));
      }
    std::vector<float> back(w.size());
    dequantize_weight_128x128(be, back.data(), q.data(), s.data(), rows, cols);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c)
        REQUIRE(back[r * cols + c] == float(q[r * cols + c]) * s[(r / 128) * 3 + c / 128]);
  }
}

TEST_CASE("UE8M0 scales are the next power of two at or above amax/448", "[unit]") {
  for (float s : {1e-4f / 448.0f, 0.0078125f, 0.0066964f, 1.0f, 1.5f, 3.0f / 448.0f, 1000.0f}) {
    const float p = fb::round_up_pow2(s);
    int e = 0;
    CHECK(std::frexp(p, &e) == 0.5f);  // a power of two
    CHECK(p >= s);
    CHECK(p < 2 * s);
    CHECK(p == std::exp2(std::ceil(std::log2(double(s)))));
  }
}

TEST_CASE("FP8 round trip: relative error ≤ 2^-4 in E4M3's normal range", "[unit]") {
  host be;
  const std::int64_t rows = 9, cols = 300;
  const auto x = random_values(std::size_t(rows * cols), 11);
  for (bool ue8m0 : {false, true}) {
    std::vector<fp8_e4m3> qa(x.size()), qw(x.size());
    std::vector<float> sa(std::size_t(rows * fb::blocks(cols))), sw(std::size_t(fb::blocks(rows) * fb::blocks(cols)));
    quantize_act_1x128(be, qa.data(), sa.data(), x.data(), rows, cols, ue8m0);
    quantize_weight_128x128(be, qw.data(), sw.data(), x.data(), rows, cols, ue8m0);
    std::vector<float> xa(x.size()), xw(x.size());
    dequantize_act_1x128(be, xa.data(), qa.data(), sa.data(), rows, cols);
    dequantize_weight_128x128(be, xw.data(), qw.data(), sw.data(), rows, cols);
    double worst_normal = 0;
    std::int64_t normal = 0;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) {
        const std::size_t i = std::size_t(r * cols + c);
        const float s_a = sa[std::size_t(r * fb::blocks(cols) + c / 128)];
        const float s_w = sw[std::size_t((r / 128) * fb::blocks(cols) + c / 128)];
        for (auto [back, s] : {std::pair{xa[i], s_a}, std::pair{xw[i], s_w}}) {
          const double err = std::abs(double(back) - double(x[i]));
          // |x|/s ≤ 448 always (s ≥ amax/448); E4M3 normals start at 2^-6 with 3 mantissa bits, so rounding
          // is within half an ulp: 2^-4 relative. Below 2^-6 the grid is 2^-9 · s: error ≤ 2^-10 · s.
          if (std::abs(x[i]) / s >= 0x1p-6f) {
            ++normal;
            worst_normal = std::max(worst_normal, err / std::abs(double(x[i])));
            REQUIRE(err <= 0x1p-4 * std::abs(double(x[i])));
          } else {
            REQUIRE(err <= 0x1p-10 * double(s));
          }
        }
      }
    INFO("ue8m0 " << ue8m0 << ": worst relative error " << worst_normal << " over " << normal << " values");
    CHECK(normal > rows * cols);  // most values are in the normal range
    CHECK(worst_normal > 0x1p-6);  // the bound is exercised, not vacuous
  }
}

TEST_CASE("quantisation of bf16 and f64 inputs equals that of their f32 values", "[unit]") {
  host be;
  const std::int64_t rows = 3, cols = 130;
  const auto x = random_values(std::size_t(rows * cols), 5);
  std::vector<bf16> xb(x.size());
  std::vector<float> xf(x.size());
  std::vector<double> xd(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    xb[i] = bf16(x[i]);
    xf[i] = float(xb[i]);
    xd[i] = double(xf[i]);
  }
  const std::size_t ns = std::size_t(rows * fb::blocks(cols));
  std::vector<fp8_e4m3> q1(x.size()), q2(x.size()), q3(x.size());
  std::vector<float> s1(ns), s2(ns), s3(ns);
  quantize_act_1x128(be, q1.data(), s1.data(), xf.data(), rows, cols, false);
  quantize_act_1x128(be, q2.data(), s2.data(), xb.data(), rows, cols, false);
  quantize_act_1x128(be, q3.data(), s3.data(), xd.data(), rows, cols, false);
  CHECK(s1 == s2);
  CHECK(s1 == s3);
  for (std::size_t i = 0; i < x.size(); ++i) {
    REQUIRE(q1[i].bits == q2[i].bits);
    REQUIRE(q1[i].bits == q3[i].bits);
  }
}

TEST_CASE("gemm_fp8_block equals the f64 GEMM of the dequantised operands and approximates the unquantised one",
          "[unit]") {
  host be;
  // Partial blocks along n (200 = 128 + 72) and k (300 = 2·128 + 44).
  const std::int64_t m = 37, n = 200, k = 300, kb = fb::blocks(k);
  const auto a = random_values(std::size_t(m * k), 21);
  const auto b = random_values(std::size_t(n * k), 22);
  for (bool ue8m0 : {false, true}) {
    std::vector<fp8_e4m3> qa(a.size()), qb(b.size());
    std::vector<float> sa(std::size_t(m * kb)), sb(std::size_t(fb::blocks(n) * kb));
    quantize_act_1x128(be, qa.data(), sa.data(), a.data(), m, k, ue8m0);
    quantize_weight_128x128(be, qb.data(), sb.data(), b.data(), n, k, ue8m0);
    std::vector<float> c(std::size_t(m * n));
    gemm_fp8_block(be, m, n, k, qa.data(), sa.data(), qb.data(), sb.data(), c.data());

    // The dequantised operands exactly (float(q) · s in f64), and dequantize's f32 products next to them.
    std::vector<double> da(a.size()), db(b.size());
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t t = 0; t < k; ++t)
        da[i * k + t] = double(float(qa[i * k + t])) * double(sa[i * kb + t / 128]);
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t t = 0; t < k; ++t)
        db[j * k + t] = double(float(qb[j * k + t])) * double(sb[(j / 128) * kb + t / 128]);
    std::vector<float> fa(a.size()), fbw(b.size());
    dequantize_act_1x128(be, fa.data(), qa.data(), sa.data(), m, k);
    dequantize_weight_128x128(be, fbw.data(), qb.data(), sb.data(), n, k);
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(fa[i] == float(da[i]));
    for (std::size_t i = 0; i < b.size(); ++i) REQUIRE(fbw[i] == float(db[i]));
    std::vector<double> ref, abs_ref;
    gemm_f64(m, n, k, da, db, ref, abs_ref);
    // Same math in f32: each element's error is f32 summation rounding, ≤ ~k·2^-24·Σ|ab| in the worst case and
    // about √k·2^-24·Σ|ab| in practice.
    double worst = 0;
    for (std::size_t i = 0; i < c.size(); ++i) worst = std::max(worst, std::abs(c[i] - ref[i]) / abs_ref[i]);
    INFO("ue8m0 " << ue8m0 << ": max |C - C_deq| / Σ|ab| = " << worst);
    CHECK(worst <= 1e-6);

    // Against the unquantised operands: each operand is within 2^-4 relative (normal range) plus 2^-10·s
    // absolute, so |ΔC| ≤ (2·2^-4 + 2^-8)·Σ|ab| + subnormal terms; in practice the error is a few percent
    // in the relative L2 sense.
    std::vector<double> a64(a.begin(), a.end()), b64(b.begin(), b.end()), exact, abs_exact;
    gemm_f64(m, n, k, a64, b64, exact, abs_exact);
    double diff2 = 0, ref2 = 0, worst_bound = 0;
    for (std::size_t i = 0; i < c.size(); ++i) {
      const double d = std::abs(double(c[i]) - exact[i]);
      diff2 += d * d;
      ref2 += exact[i] * exact[i];
      worst_bound = std::max(worst_bound, d / abs_exact[i]);
    }
    const double rel_l2 = std::sqrt(diff2 / ref2);
    INFO("vs unquantised: relative L2 " << rel_l2 << ", max |ΔC| / Σ|ab| " << worst_bound);
    CHECK(rel_l2 <= 0.05);
    CHECK(rel_l2 >= 1e-3);  // FP8 really rounded the operands
    CHECK(worst_bound <= 2 * 0x1p-4 + 0x1p-8);
  }
}

TEST_CASE("gemm_fp8_block: k = 0 writes zeros, bf16 output rounds the f32 result", "[unit]") {
  host be;
  std::vector<float> c(6, 5.0f);
  gemm_fp8_block<float>(be, 2, 3, 0, nullptr, nullptr, nullptr, nullptr, c.data());
  for (float v : c) CHECK(v == 0.0f);

  const std::int64_t m = 4, n = 8, k = 256;
  const auto a = random_values(std::size_t(m * k), 31);
  const auto b = random_values(std::size_t(n * k), 32);
  std::vector<fp8_e4m3> qa(a.size()), qb(b.size());
  std::vector<float> sa(std::size_t(m * 2)), sb(2);
  quantize_act_1x128(be, qa.data(), sa.data(), a.data(), m, k, false);
  quantize_weight_128x128(be, qb.data(), sb.data(), b.data(), n, k, false);
  std::vector<float> cf(std::size_t(m * n));
  std::vector<bf16> cb(cf.size());
  gemm_fp8_block(be, m, n, k, qa.data(), sa.data(), qb.data(), sb.data(), cf.data());
  gemm_fp8_block(be, m, n, k, qa.data(), sa.data(), qb.data(), sb.data(), cb.data());
  for (std::size_t i = 0; i < cf.size(); ++i) CHECK(cb[i].bits == bf16(cf[i]).bits);
}

TEST_CASE("FP8 primitives reject bad sizes and missing buffers", "[unit]") {
  host be;
  std::vector<float> x(256, 1.0f), s(4);
  std::vector<fp8_e4m3> q(256);
  CHECK_THROWS_AS(quantize_act_1x128(be, q.data(), s.data(), x.data(), -1, 128, false), dsx::error);
  CHECK_THROWS_AS(quantize_act_1x128(be, q.data(), s.data(), x.data(), 2, -5, false), dsx::error);
  CHECK_THROWS_AS(quantize_act_1x128(be, q.data(), static_cast<float*>(nullptr), x.data(), 2, 128, false), dsx::error);
  CHECK_THROWS_AS(quantize_weight_128x128(be, q.data(), s.data(), x.data(), 2, -1, true), dsx::error);
  CHECK_THROWS_AS(quantize_weight_128x128(be, static_cast<fp8_e4m3*>(nullptr), s.data(), x.data(), 2, 128, true),
                  dsx::error);
  CHECK_THROWS_AS(dequantize_act_1x128(be, x.data(), q.data(), s.data(), -2, 128), dsx::error);
  CHECK_THROWS_AS(dequantize_weight_128x128(be, x.data(), static_cast<const fp8_e4m3*>(nullptr), s.data(), 2, 128),
                  dsx::error);
  CHECK_THROWS_AS(gemm_fp8_block(be, -1, 2, 128, q.data(), s.data(), q.data(), s.data(), x.data()), dsx::error);
  CHECK_THROWS_AS(gemm_fp8_block(be, 1, 2, -128, q.data(), s.data(), q.data(), s.data(), x.data()), dsx::error);
  CHECK_THROWS_AS(gemm_fp8_block(be, 1, 2, 128, q.data(), static_cast<const float*>(nullptr), q.data(), s.data(),
                                 x.data()),
                  dsx::error);
  try {
    quantize_act_1x128(be, q.data(), s.data(), x.data(), 2, -5, false);
  } catch (const dsx::error& e) {
    CHECK(std::string(e.what()).find("(2, -5)") != std::string::npos);
  }
  // Empty tensors are fine and touch nothing.
  CHECK_NOTHROW(quantize_act_1x128(be, static_cast<fp8_e4m3*>(nullptr), static_cast<float*>(nullptr),
                                   static_cast<const float*>(nullptr), 0, 128, false));
}

TEST_CASE("transposed quantisation equals quantising the explicit transpose, byte for byte", "[unit]") {
  host be;
  const std::int64_t rows = 300, cols = 200;
  const auto x = random_values(std::size_t(rows * cols), 21);
  std::vector<float> xt(x.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) xt[std::size_t(c * rows + r)] = x[std::size_t(r * cols + c)];
  for (bool weight : {false, true}) {
    INFO((weight ? "128x128 blocks" : "1x128 tiles"));
    const std::size_t scales = std::size_t(weight ? fb::blocks(cols) * fb::blocks(rows) : cols * fb::blocks(rows));
    std::vector<fp8_e4m3> q(x.size()), q_ref(x.size());
    std::vector<float> s(scales), s_ref(scales);
    if (weight) {
      quantize_weight_128x128_transposed(be, q.data(), s.data(), x.data(), rows, cols, false);
      quantize_weight_128x128(be, q_ref.data(), s_ref.data(), xt.data(), cols, rows, false);
    } else {
      quantize_act_1x128_transposed(be, q.data(), s.data(), x.data(), rows, cols, false);
      quantize_act_1x128(be, q_ref.data(), s_ref.data(), xt.data(), cols, rows, false);
    }
    CHECK(s == s_ref);
    bool same = true;
    for (std::size_t i = 0; i < q.size(); ++i) same = same && q[i].bits == q_ref[i].bits;
    CHECK(same);
  }
}

TEST_CASE("gemm_fp8: B in 1×128 tiles, and beta 1 adds to C", "[unit]") {
  host be;
  const std::int64_t m = 70, n = 150, k = 260, kb = fb::blocks(k);
  const auto a = random_values(std::size_t(m * k), 31), b = random_values(std::size_t(n * k), 32);
  std::vector<fp8_e4m3> qa(a.size()), qb(b.size());
  std::vector<float> sa(std::size_t(m * kb)), sb(std::size_t(n * kb));
  quantize_act_1x128(be, qa.data(), sa.data(), a.data(), m, k, false);
  quantize_act_1x128(be, qb.data(), sb.data(), b.data(), n, k, false);
  std::vector<float> c(std::size_t(m * n), 2.0f);
  gemm_fp8(be, m, n, k, qa.data(), sa.data(), qb.data(), sb.data(), fb::scaling::tile_1x128, 1.0f, c.data());
  double worst = 0, scale = 0;
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double want = 2.0, abs_sum = 0;
      for (std::int64_t t = 0; t < k; ++t) {
        const double ab = double(float(qa[std::size_t(i * k + t)])) * sa[std::size_t(i * kb + t / 128)] *
                          double(float(qb[std::size_t(j * k + t)])) * sb[std::size_t(j * kb + t / 128)];
        want += ab;
        abs_sum += std::abs(ab);
      }
      worst = std::max(worst, std::abs(double(c[std::size_t(i * n + j)]) - want));
      scale = std::max(scale, abs_sum);
    }
  CHECK(worst / scale < 1e-6);
  CHECK_THROWS_AS(gemm_fp8(be, m, n, k, qa.data(), sa.data(), qb.data(), static_cast<const float*>(nullptr),
                           fb::scaling::tile_1x128, 0.0f, c.data()),
                  dsx::error);
}
