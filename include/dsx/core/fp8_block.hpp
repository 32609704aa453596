// FP8 block quantisation as DeepSeek-V3 uses it, written once for host and device (DSX_HD):
// activations per 1×128 tile (one scale per token per 128 channels), weights per 128×128 block, E4M3
// values, f32 scales. For a tile or block of values x:
//   amax = max(max |x|, 1e-4)                        (the clamp keeps all-zero tiles finite)
//   s    = amax / 448                                 (448 = largest finite E4M3)
//   s    = 2^ceil(log2 s)          only with ue8m0    (power-of-two scales, "UE8M0" format)
//   q    = fp8_e4m3(x / s)                            (round to nearest even, saturating)
// and dequantisation is x ≈ float(q) · s. A tile or block cut short by the edge of the tensor (cols or
// rows not a multiple of 128) takes its amax over the elements that exist, which is what zero padding
// to 128 gives. Every operation is one IEEE-rounded f32 step (division, not a reciprocal multiply), so
// host and device produce the same bytes.
#pragma once

#include <cstdint>
#include <string>

#include "dsx/core/error.hpp"
#include "dsx/core/macros.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::fp8_block {

inline constexpr std::int64_t block = 128;      // tile width, block side
inline constexpr float amax_floor = 1e-4f;      // lower clamp of amax
inline constexpr float fp8_max = fp8_e4m3::max_finite;

// Number of 128-wide blocks covering n elements.
DSX_HD std::int64_t blocks(std::int64_t n) { return (n + block - 1) / block; }

// The smallest power of two ≥ s, for a positive normal f32 s (what ceil(log2 s) gives exactly).
DSX_HD float round_up_pow2(float s) {
  const std::uint32_t u = detail::float_bits(s);
  if ((u & 0x007fffffu) == 0) return s;               // already a power of two
  return detail::bits_float((u & 0x7f800000u) + 0x00800000u);  // next binade, mantissa 0
}

// The scale of a tile or block whose largest magnitude is `amax`.
DSX_HD float scale_of(float amax, bool ue8m0) {
  const float s = (amax > amax_floor ? amax : amax_floor) / fp8_max;
  return ue8m0 ? round_up_pow2(s) : s;
}

// How the B operand of an FP8 GEMM C = A·Bᵀ is scaled (A is always scaled per 1×128 tile along k):
//  - block_128x128: one scale per 128×128 block, (ceil(n/128), ceil(k/128)) scales: weights;
//  - tile_1x128: one scale per row and 128-wide k tile, (n, ceil(k/128)) scales: activations and output
//    gradients, the operands of a weight-gradient GEMM (reduced over tokens).
enum class scaling { block_128x128, tile_1x128 };

// Index of B's scale for output column j and k block kb_index, with kb k blocks in all.
DSX_HD std::int64_t b_scale_index(scaling mode, std::int64_t j, std::int64_t kb, std::int64_t kb_index) {
  return (mode == scaling::block_128x128 ? j / block : j) * kb + kb_index;
}
// Number of B's scales for n rows of k.
DSX_HD std::int64_t b_scale_count(scaling mode, std::int64_t n, std::int64_t k) {
  return (mode == scaling::block_128x128 ? blocks(n) : n) * blocks(k);
}

DSX_HD fp8_e4m3 quantize(float x, float scale) { return fp8_e4m3(x / scale); }
DSX_HD float dequantize(fp8_e4m3 q, float scale) { return float(q) * scale; }

// Host-side argument checks shared by the backends: `what` names the primitive and the tensor.
inline void require_matrix(const std::string& what, std::int64_t rows, std::int64_t cols) {
  require(rows >= 0 && cols >= 0, what + ": sizes must be non-negative, found (" + std::to_string(rows) + ", " +
                                      std::to_string(cols) + ")");
}
inline void require_pointer(const std::string& what, const void* p, std::int64_t elems) {
  require(elems == 0 || p != nullptr, what + ": null pointer for " + std::to_string(elems) + " elements");
}

// The argument checks of the four quantisations, shared by the backends: x (rows, cols) into q and its
// scales per 1×128 tile (weight false) or 128×128 block (weight true) of R = x, or R = xᵀ when
// `transposed`; `what` names the public function. Returns the number of scales (tiles or blocks of R).
inline std::int64_t check_quantize(const std::string& what, const void* q, const float* scales, const void* x,
                                   std::int64_t rows, std::int64_t cols, bool weight, bool transposed) {
  require_matrix(what + (weight ? ": weight" : ": activations"), rows, cols);
  const std::int64_t r_rows = transposed ? cols : rows, r_cols = transposed ? rows : cols;
  const std::int64_t count = (weight ? blocks(r_rows) : r_rows) * blocks(r_cols);
  require_pointer(what + (weight ? ": weight w" : ": activations x"), x, rows * cols);
  require_pointer(what + ": output q", q, rows * cols);
  require_pointer(what + ": output scales", scales, count);
  return count;
}

}  // namespace dsx::fp8_block
