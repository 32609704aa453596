// Scalar value types: dtype tags, f16, bf16 and fp8 (E4M3) storage types with exact
// round-to-nearest-even conversions, written once for host and device.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "dsx/core/macros.hpp"

namespace dsx {

// Element types. The values after u8 exist so that safetensors files holding them can be read;
// `boolean` is one byte, 0 or 1. New values go at the end (the numbering is shared).
enum class dtype : std::uint8_t { f64, f32, f16, bf16, fp8_e4m3, i64, i32, u8, i16, i8, boolean, fp8_e5m2 };

constexpr std::size_t size_of(dtype t) {
  switch (t) {
    case dtype::f64: case dtype::i64: return 8;
    case dtype::f32: case dtype::i32: return 4;
    case dtype::f16: case dtype::bf16: case dtype::i16: return 2;
    case dtype::fp8_e4m3: case dtype::u8: case dtype::i8: case dtype::boolean: case dtype::fp8_e5m2: return 1;
  }
  return 0;
}

// Names as safetensors writes them.
constexpr std::string_view safetensors_name(dtype t) {
  switch (t) {
    case dtype::f64: return "F64";
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::fp8_e4m3: return "F8_E4M3";
    case dtype::i64: return "I64";
    case dtype::i32: return "I32";
    case dtype::u8: return "U8";
    case dtype::i16: return "I16";
    case dtype::i8: return "I8";
    case dtype::boolean: return "BOOL";
    case dtype::fp8_e5m2: return "F8_E5M2";
  }
  return "?";
}
static_assert(size_of(dtype::bf16) == 2 && size_of(dtype::fp8_e4m3) == 1 && size_of(dtype::i16) == 2);
static_assert(safetensors_name(dtype::fp8_e5m2) == "F8_E5M2");

namespace detail {
DSX_HD std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
DSX_HD float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace detail

// bfloat16 storage: the top 16 bits of an IEEE float, rounded to nearest even; NaN stays NaN.
struct bf16 {
  std::uint16_t bits = 0;
  bf16() = default;
  DSX_HD explicit bf16(float f) : bits(from_float(f)) {}
  DSX_HD explicit operator float() const { return detail::bits_float(std::uint32_t(bits) << 16); }
  DSX_HD static std::uint16_t from_float(float f) {
    std::uint32_t u = detail::float_bits(f);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return std::uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return std::uint16_t(u >> 16);
  }
};
static_assert(sizeof(bf16) == 2);

// IEEE 754 binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits; max finite 65504, subnormals
// down to 2^-24. From float: round to nearest even, overflow to ±inf, NaN stays NaN (quiet).
struct f16 {
  std::uint16_t bits = 0;
  f16() = default;
  DSX_HD explicit f16(float f) : bits(from_float(f)) {}
  DSX_HD explicit operator float() const {
    const std::uint32_t sign = std::uint32_t(bits & 0x8000u) << 16;
    const std::uint32_t exp = (bits >> 10) & 0x1fu;
    const std::uint32_t man = bits & 0x3ffu;
    if (exp == 0x1f) return detail::bits_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
      const float v = float(man) * 5.9604644775390625e-8f;
      return sign ? -v : v;
    }
    return detail::bits_float(sign | ((exp + 112u) << 23) | (man << 13));  // rebias 15 -> 127
  }
  DSX_HD static std::uint16_t from_float(float f) {
    const std::uint32_t u = detail::float_bits(f);
    const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return std::uint16_t(sign | 0x7e00u);    // NaN
    if (a >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);   // >= 65520 (the tie above 65504) -> inf
    if (a >= 0x38800000u) {                                       // normal in f16: >= 2^-14
      std::uint32_t m = a - (112u << 23);                         // rebias 127 -> 15
      m += 0xfffu + ((m >> 13) & 1u);                             // round the 13 dropped bits to even
      return std::uint16_t(sign | (m >> 13));
    }
    // Subnormal (or zero): adding 0.5 puts the value in [0.5, 1), whose float ulp is 2^-24, the f16
    // subnormal step, so the FPU's round-to-nearest-even leaves round(|f| / 2^-24) in the low bits
    // (1024 = the smallest normal when it rounds up).
    const float shifted = detail::bits_float(a) + 0.5f;
    return std::uint16_t(sign | (detail::float_bits(shifted) - 0x3f000000u));
  }
};
static_assert(sizeof(f16) == 2);

// float8 E4M3 ("e4m3fn": no infinities, one NaN pattern per sign, max finite 448) as DeepSeek-V3
// stores weights and quantises activations. Conversion saturates to ±448, rounds to nearest even.
struct fp8_e4m3 {
  std::uint8_t bits = 0;
  static constexpr float max_finite = 448.0f;
  fp8_e4m3() = default;
  DSX_HD explicit fp8_e4m3(float f) : bits(from_float(f)) {}
  DSX_HD explicit operator float() const {
    const std::uint32_t sign = (bits & 0x80u) << 24;
    const int exp = (bits >> 3) & 0xf;
    const int man = bits & 0x7;
    if (exp == 0xf && man == 0x7) return detail::bits_float(sign | 0x7fc00000u);
    float v = exp == 0 ? std::ldexp(float(man), -9) : std::ldexp(float(8 + man), exp - 10);
    return sign ? -v : v;
  }
  DSX_HD static std::uint8_t from_float(float f) {
    const std::uint32_t u = detail::float_bits(f);
    const std::uint8_t sign = std::uint8_t((u >> 24) & 0x80u);
    float a = std::fabs(f);
    if (a != a) return std::uint8_t(sign | 0x7f);
    if (a >= max_finite) return std::uint8_t(sign | 0x7e);
    // Smallest normal is 2^-6; subnormals step by 2^-9. Round the magnitude to the grid of its binade.
    int e;
    std::frexp(a, &e);                       // a = m * 2^e, m in [0.5, 1)
    int exp_field = e - 1 + 7;               // biased exponent of a
    float step = exp_field <= 0 ? std::ldexp(1.0f, -9) : std::ldexp(1.0f, e - 1 - 3);
    float q = std::nearbyint(a / step) * step;  // round half to even (default rounding mode)
    if (q >= max_finite) return std::uint8_t(sign | 0x7e);
    if (q == 0.0f) return sign;
    std::frexp(q, &e);
    exp_field = e - 1 + 7;
    if (exp_field <= 0) return std::uint8_t(sign | std::uint8_t(q / std::ldexp(1.0f, -9)));
    const int man = int(q / std::ldexp(1.0f, e - 1 - 3)) - 8;
    return std::uint8_t(sign | (exp_field << 3) | man);
  }
};
static_assert(sizeof(fp8_e4m3) == 1);

// Conversion used by every primitive that reads storage and computes in `To`.
template <class To, class From>
DSX_HD To convert(From x) {
  if constexpr (std::is_same_v<From, bf16> || std::is_same_v<From, f16> || std::is_same_v<From, fp8_e4m3>)
    return To(float(x));
  else if constexpr (std::is_same_v<To, bf16> || std::is_same_v<To, f16> || std::is_same_v<To, fp8_e4m3>)
    return To(float(x));
  else
    return To(x);
}

// Accumulation type of a storage type: f32 for the 16- and 8-bit formats.
template <class T> struct accum { using type = T; };
template <> struct accum<bf16> { using type = float; };
template <> struct accum<f16> { using type = float; };
template <> struct accum<fp8_e4m3> { using type = float; };
template <class T> using accum_t = typename accum<T>::type;

}  // namespace dsx
