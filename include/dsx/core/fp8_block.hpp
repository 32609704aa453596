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

}  // namespace dsx::fp8_block
