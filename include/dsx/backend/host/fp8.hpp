// FP8 block scaling on the host: the reference of DeepSeek-V3's act_quant / weight_dequant / fp8_gemm
// (core/fp8_block.hpp has the quantisation math and its contract). Layouts, all row-major:
//   activations x (rows, cols)  → q (rows, cols) E4M3, scales (rows, ceil(cols/128))           1×128 tiles
//   weights     w (rows, cols)  → q (rows, cols) E4M3, scales (ceil(rows/128), ceil(cols/128)) 128×128 blocks
// gemm_fp8_block computes C (m, n) = A (m, k) · B (n, k)ᵀ as a Linear does (A activations, B weights):
//   C[i, j] = Σ_kb ( Σ_{k in block kb} float(a[i, k]) · float(b[j, k]) ) · a_s[i, kb] · b_s[j / 128, kb]
// with the inner dot in f32, accumulated in f32 block after block in increasing kb, then stored as T.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/fp8_block.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

template <class T>
void quantize_act_1x128(host&, fp8_e4m3* q, float* scales, const T* x, std::int64_t rows, std::int64_t cols,
                        bool ue8m0) {
  namespace fb = fp8_block;
  fb::require_matrix("quantize_act_1x128: activations", rows, cols);
  const std::int64_t nb = fb::blocks(cols);
  fb::require_pointer("quantize_act_1x128: activations x", x, rows * cols);
  fb::require_pointer("quantize_act_1x128: output q", q, rows * cols);
  fb::require_pointer("quantize_act_1x128: output scales", scales, rows * nb);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t b = 0; b < nb; ++b) {
      const std::int64_t c0 = b * fb::block, c1 = std::min(cols, c0 + fb::block);
      float amax = 0;
      for (std::int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(convert<float>(x[r * cols + c])));
      const float s = fb::scale_of(amax, ue8m0);
      scales[r * nb + b] = s;
      for (std::int64_t c = c0; c < c1; ++c) q[r * cols + c] = fb::quantize(convert<float>(x[r * cols + c]), s);
    }
}

template <class T>
void quantize_weight_128x128(host&, fp8_e4m3* q, float* scales, const T* w, std::int64_t rows, std::int64_t cols,
                             bool ue8m0) {
  namespace fb = fp8_block;
  fb::require_matrix("quantize_weight_128x128: weight", rows, cols);
  const std::int64_t rb = fb::blocks(rows), cb = fb::blocks(cols);
  fb::require_pointer("quantize_weight_128x128: weight w", w, rows * cols);
  fb::require_pointer("quantize_weight_128x128: output q", q, rows * cols);
  fb::require_pointer("quantize_weight_128x128: output scales", scales, rb * cb);
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t i = 0; i < rb; ++i)
    for (std::int64_t j = 0; j < cb; ++j) {
      const std::int64_t r0 = i * fb::block, r1 = std::min(rows, r0 + fb::block);
      const std::int64_t c0 = j * fb::block, c1 = std::min(cols, c0 + fb::block);
      float amax = 0;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(convert<float>(w[r * cols + c])));
      const float s = fb::scale_of(amax, ue8m0);
      scales[i * cb + j] = s;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c) q[r * cols + c] = fb::quantize(convert<float>(w[r * cols + c]), s);
    }
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

// C (m, n) = A (m, k) · B (n, k)ᵀ from 1×128-scaled A and 128×128-scaled B (see the top of this file).
template <class T>
void gemm_fp8_block(host&, std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a, const float* a_scales,
                    const fp8_e4m3* b, const float* b_scales, T* c) {
  namespace fb = fp8_block;
  fb::require_matrix("gemm_fp8_block: A (m, k)", m, k);
  fb::require_matrix("gemm_fp8_block: B (n, k)", n, k);
  const std::int64_t kb = fb::blocks(k);
  fb::require_pointer("gemm_fp8_block: A", a, m * k);
  fb::require_pointer("gemm_fp8_block: A scales", a_scales, m * kb);
  fb::require_pointer("gemm_fp8_block: B", b, n * k);
  fb::require_pointer("gemm_fp8_block: B scales", b_scales, fb::blocks(n) * kb);
  fb::require_pointer("gemm_fp8_block: C", c, m * n);
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      const fp8_e4m3* ar = a + i * k;
      const fp8_e4m3* br = b + j * k;
      float acc = 0;
      for (std::int64_t blk = 0; blk < kb; ++blk) {
        const std::int64_t k0 = blk * fb::block, k1 = std::min(k, k0 + fb::block);
        float dot = 0;
        for (std::int64_t t = k0; t < k1; ++t) dot += float(ar[t]) * float(br[t]);
        acc += dot * a_scales[i * kb + blk] * b_scales[(j / fb::block) * kb + blk];
      }
      c[i * n + j] = convert<T>(acc);
    }
}

}  // namespace dsx::backend
