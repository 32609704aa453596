// FP8 block scaling on the host: the reference of DeepSeek-V3's act_quant / weight_dequant / fp8_gemm
// (core/fp8_block.hpp has the quantisation math and its contract). Layouts, all row-major:
//   activations x (rows, cols)  → q (rows, cols) E4M3, scales (rows, ceil(cols/128))           1×128 tiles
//   weights     w (rows, cols)  → q (rows, cols) E4M3, scales (ceil(rows/128), ceil(cols/128)) 128×128 blocks
// and the _transposed forms, which quantise xᵀ / wᵀ (the operands of a Linear's backward GEMMs).
// gemm_fp8 computes C (m, n) = A (m, k) · B (n, k)ᵀ (+ beta · C) as a Linear does (A activations, B
// weights, or in a weight gradient both activation-like, see fp8_block::scaling):
//   C[i, j] = Σ_kb ( Σ_{k in block kb} float(a[i, k]) · float(b[j, k]) ) · a_s[i, kb] · b_s(j, kb)
// with the inner dot in f32 and the promotion to f32 per block, as the GPU's kernels do (the host computes
// the same value by one f32 GEMM, see gemm_fp8), then stored as T; gemm_fp8_block is the forward form (B
// in 128×128 blocks, beta 0).
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/fp8_block.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace host_detail {
// Quantises R = x (rows, cols), or R = xᵀ when `transposed`, into q (R's shape) per 1×128 tile (`weight`
// false) or 128×128 block of R, one scale per tile or block, row-major; `what` names the public function.
template <class T>
void quantize(const char* what, fp8_e4m3* q, float* scales, const T* x, std::int64_t rows, std::int64_t cols,
              bool weight, bool transposed, bool ue8m0) {
  namespace fb = fp8_block;
  fb::check_quantize(what, q, scales, x, rows, cols, weight, transposed);
  const std::int64_t tile_rows = weight ? fb::block : 1;
  const std::int64_t r_rows = transposed ? cols : rows, r_cols = transposed ? rows : cols;
  const std::int64_t rb = (r_rows + tile_rows - 1) / tile_rows, cb = fb::blocks(r_cols);
  const auto at = [&](std::int64_t r, std::int64_t c) { return transposed ? c * cols + r : r * cols + c; };
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t i = 0; i < rb; ++i)
    for (std::int64_t j = 0; j < cb; ++j) {
      const std::int64_t r0 = i * tile_rows, r1 = std::min(r_rows, r0 + tile_rows);
      const std::int64_t c0 = j * fb::block, c1 = std::min(r_cols, c0 + fb::block);
      float amax = 0;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(convert<float>(x[at(r, c)])));
      const float s = fb::scale_of(amax, ue8m0);
      scales[i * cb + j] = s;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c) q[r * r_cols + c] = fb::quantize(convert<float>(x[at(r, c)]), s);
    }
}
}  // namespace host_detail

// q (rows, cols), scales (rows, ceil(cols/128)): x per 1×128 tile.
template <class T>
void quantize_act_1x128(host&, fp8_e4m3* q, float* scales, const T* x, std::int64_t rows, std::int64_t cols,
                        bool ue8m0) {
  host_detail::quantize("quantize_act_1x128", q, scales, x, rows, cols, false, false, ue8m0);
}
// q (cols, rows) = xᵀ per 1×128 tile of xᵀ, scales (cols, ceil(rows/128)): x per 128×1 tile, the tiling
// DeepSeek-V3 gives the operands of a weight-gradient GEMM, which reduces over x's rows (tokens).
template <class T>
void quantize_act_1x128_transposed(host&, fp8_e4m3* q, float* scales, const T* x, std::int64_t rows,
                                   std::int64_t cols, bool ue8m0) {
  host_detail::quantize("quantize_act_1x128_transposed", q, scales, x, rows, cols, false, true, ue8m0);
}
// q (rows, cols), scales (ceil(rows/128), ceil(cols/128)): w per 128×128 block.
template <class T>
void quantize_weight_128x128(host&, fp8_e4m3* q, float* scales, const T* w, std::int64_t rows, std::int64_t cols,
                             bool ue8m0) {
  host_detail::quantize("quantize_weight_128x128", q, scales, w, rows, cols, true, false, ue8m0);
}
// q (cols, rows) = wᵀ, scales (ceil(cols/128), ceil(rows/128)): the same blocks as quantize_weight_128x128
// (so the same values and scales), transposed: the B operand of the input-gradient GEMM dx = dy · W.
template <class T>
void quantize_weight_128x128_transposed(host&, fp8_e4m3* q, float* scales, const T* w, std::int64_t rows,
                                        std::int64_t cols, bool ue8m0) {
  host_detail::quantize("quantize_weight_128x128_transposed", q, scales, w, rows, cols, true, true, ue8m0);
}

template <class T>
void dequantize_act_1x128(host&, T* x, const fp8_e4m3* q, const float* scales, std::int64_t rows, std::int64_t cols) {
  namespace fb = fp8_block;
  fb::require_matrix("dequantize_act_1x128: activations", rows, cols);
  const std::int64_t nb = fb::blocks(cols);
  fb::require_pointer("dequantize_act_1x128: q", q, rows * cols);
  fb::require_pointer("dequantize_act_1x128: scales", scales, rows * nb);
  fb::require_pointer("dequantize_act_1x128: output x", x, rows * cols);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      x[r * cols + c] = convert<T>(fb::dequantize(q[r * cols + c], scales[r * nb + c / fb::block]));
}

template <class T>
void dequantize_weight_128x128(host&, T* w, const fp8_e4m3* q, const float* scales, std::int64_t rows,
                               std::int64_t cols) {
  namespace fb = fp8_block;
  fb::require_matrix("dequantize_weight_128x128: weight", rows, cols);
  const std::int64_t cb = fb::blocks(cols);
  fb::require_pointer("dequantize_weight_128x128: q", q, rows * cols);
  fb::require_pointer("dequantize_weight_128x128: scales", scales, fb::blocks(rows) * cb);
  fb::require_pointer("dequantize_weight_128x128: output w", w, rows * cols);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      w[r * cols + c] = convert<T>(fb::dequantize(q[r * cols + c], scales[(r / fb::block) * cb + c / fb::block]));
}

// C (m, n) = A (m, k) · B (n, k)ᵀ + beta · C from 1×128-scaled A and B scaled as `b_mode` says
// (core/fp8_block.hpp); with beta = 0, C is not read. Every scale multiplies one row of one 128-wide K
// block of one operand, so the formula at the top equals the GEMM of the dequantised operands; the host
// computes that as one f32 CBLAS GEMM of float(q) · s (one rounding per dequantised value, then f32
// sums in BLAS's order), within f32 rounding of the formula, and fast enough to train with.
template <class T>
void gemm_fp8(host&, std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a, const float* a_scales,
              const fp8_e4m3* b, const float* b_scales, fp8_block::scaling b_mode, float beta, T* c) {
  namespace fb = fp8_block;
  fb::require_matrix("gemm_fp8: A (m, k)", m, k);
  fb::require_matrix("gemm_fp8: B (n, k)", n, k);
  const std::int64_t kb = fb::blocks(k);
  fb::require_pointer("gemm_fp8: A", a, m * k);
  fb::require_pointer("gemm_fp8: A scales", a_scales, m * kb);
  fb::require_pointer("gemm_fp8: B", b, n * k);
  fb::require_pointer("gemm_fp8: B scales", b_scales, fb::b_scale_count(b_mode, n, k));
  fb::require_pointer("gemm_fp8: C", c, m * n);
  if (m == 0 || n == 0) return;
  // The calling thread's buffers, reached through pointers inside the OpenMP loops (a thread_local named
  // there would be each worker's own).
  thread_local std::vector<float> buffers[3];
  buffers[0].resize(std::size_t(m * k));
  buffers[1].resize(std::size_t(n * k));
  float* da = buffers[0].data();
  float* db = buffers[1].data();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t t = 0; t < k; ++t) da[i * k + t] = float(a[i * k + t]) * a_scales[i * kb + t / fb::block];
#pragma omp parallel for schedule(static)
  for (std::int64_t j = 0; j < n; ++j)
    for (std::int64_t t = 0; t < k; ++t)
      db[j * k + t] = float(b[j * k + t]) * b_scales[fb::b_scale_index(b_mode, j, kb, t / fb::block)];
  float* dc = nullptr;
  if constexpr (!std::is_same_v<T, float>) {
    buffers[2].resize(std::size_t(m * n));
    dc = buffers[2].data();
  }
  float* out = std::is_same_v<T, float> ? reinterpret_cast<float*>(c) : dc;
  // k = 0: BLAS leaves C alone when k is 0 and beta is 1, and scales it by beta otherwise; the sum is 0.
  const int ld = int(std::max<std::int64_t>(k, 1));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0f, da, ld, db, ld,
              std::is_same_v<T, float> ? beta : 0.0f, out, int(n));
  if constexpr (!std::is_same_v<T, float>) {
#pragma omp parallel for schedule(static)
    for (std::int64_t e = 0; e < m * n; ++e)
      c[e] = convert<T>(beta == 0.0f ? dc[e] : dc[e] + beta * convert<float>(c[e]));
  }
}

// C (m, n) = A (m, k) · B (n, k)ᵀ from 1×128-scaled activations A and 128×128-scaled weights B.
template <class T>
void gemm_fp8_block(host& be, std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a,
                    const float* a_scales, const fp8_e4m3* b, const float* b_scales, T* c) {
  gemm_fp8(be, m, n, k, a, a_scales, b, b_scales, fp8_block::scaling::block_128x128, 0.0f, c);
}

}  // namespace dsx::backend
