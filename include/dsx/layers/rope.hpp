// RoPE frequency tables with YaRN, and the attention softmax scale that YaRN changes.
//
// Facts (DeepSeek-V3 inference/model.py `precompute_freqs_cis`, HF `_compute_yarn_parameters`):
// base frequencies θ^(−2j/d) for pair j of d = rope dims; with YaRN, pairs below the correction range
// keep their frequency, pairs above it are divided by `factor`, and a linear ramp blends between;
// cos/sin are multiplied by get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim); the
// softmax scale (nope + rope)^−½ is multiplied by get_mscale(factor, mscale_all_dim)².
#pragma once

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "dsx/config/model_config.hpp"

namespace dsx {

// 0.1 · m · ln(s) + 1 for s > 1 (YaRN's attention temperature), 1 otherwise.
inline double yarn_get_mscale(double factor, double m) {
  return factor <= 1.0 || m == 0.0 ? 1.0 : 0.1 * m * std::log(factor) + 1.0;
}

inline double softmax_scale(const model_config& c) {
  double s = 1.0 / std::sqrt(double(c.mla.qk_head()));
  if (c.rope.yarn.active() && c.rope.yarn.mscale_all_dim != 0.0) {
    const double m = yarn_get_mscale(c.rope.yarn.factor, c.rope.yarn.mscale_all_dim);
    s *= m * m;
  }
  return s;
}

// Frequency of each rotated pair, YaRN applied when active.
inline std::vector<double> rope_frequencies(const model_config& c) {
  const int dim = c.mla.rope, half = dim / 2;
  const double base = c.rope.theta;
  std::vector<double> f(half);
  for (int j = 0; j < half; ++j) f[j] = 1.0 / std::pow(base, 2.0 * j / dim);
  const auto& y = c.rope.yarn;
  if (!y.active()) return f;
  auto correction_dim = [&](double rotations) {
    return dim * std::log(y.original_max_positions / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(correction_dim(y.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(y.beta_slow)), double(dim - 1));
  if (low == high) high += 0.001;
  for (int j = 0; j < half; ++j) {
    const double ramp = std::clamp((j - low) / (high - low), 0.0, 1.0);
    const double smooth = 1.0 - ramp;
    f[j] = f[j] / y.factor * (1.0 - smooth) + f[j] * smooth;
  }
  return f;
}

// cos and sin tables, (positions, rope / 2) each, in the accumulation type A.
template <class A>
struct rope_table {
  std::vector<A> cos, sin;
  int half = 0;
};

template <class A>
rope_table<A> make_rope_table(const model_config& c, int positions) {
  const auto f = rope_frequencies(c);
  const auto& y = c.rope.yarn;
  const double attention_factor =
      y.active() ? yarn_get_mscale(y.factor, y.mscale) / yarn_get_mscale(y.factor, y.mscale_all_dim) : 1.0;
  rope_table<A> t;
  t.half = int(f.size());
  t.cos.resize(std::size_t(positions) * f.size());
  t.sin.resize(t.cos.size());
  for (int p = 0; p < positions; ++p)
    for (int j = 0; j < t.half; ++j) {
      t.cos[std::size_t(p) * t.half + j] = A(std::cos(p * f[j]) * attention_factor);
      t.sin[std::size_t(p) * t.half + j] = A(std::sin(p * f[j]) * attention_factor);
    }
  return t;
}

}  // namespace dsx
