// Counter-based random numbers (SplitMix64 on a (seed, stream, index) counter): any element of any
// stream can be drawn independently, so initialisation, sampling and data shuffling are reproducible
// whatever the thread count or the order of calls, and a run resumes exactly from (seed, step).
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

#include "dsx/core/macros.hpp"

namespace dsx {

DSX_HD std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The 64 random bits at `index` of stream `stream` under `seed`.
DSX_HD std::uint64_t random_bits(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  return splitmix64(splitmix64(seed ^ splitmix64(stream)) + index);
}

// Uniform in [0, 1) with 53 random bits.
DSX_HD double random_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  return double(random_bits(seed, stream, index) >> 11) * 0x1.0p-53;
}

// Standard normal by Box–Muller on two counter draws (2·index and 2·index + 1).
DSX_HD double random_normal(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  const double u1 = 1.0 - random_uniform(seed, stream, 2 * index);  // (0, 1]
  const double u2 = random_uniform(seed, stream, 2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

}  // namespace dsx
