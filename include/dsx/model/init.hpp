// Initial weights for training from scratch: matrices ~ N(0, std²) (DeepSeek-V3 used std 0.006 at its
// width; small models train better near 0.02), RMSNorm weights 1, routing biases 0. Each tensor draws from
// its own counter stream (core/rng.hpp), so the result depends only on the seed and the configuration.
#pragma once

#include <cstdint>
#include <vector>

#include "dsx/core/rng.hpp"
#include "dsx/model/params.hpp"

namespace dsx {

template <class Model>
void init_weights(Model& model, std::uint64_t seed, double std = 0.02) {
  using T = typename Model::T;
  std::vector<T> values;
  std::uint64_t stream = 0;
  for (const auto& e : model.params().entries()) {
    ++stream;
    if (e.spec.shared_copy()) continue;
    values.resize(std::size_t(e.spec.numel()));
    const bool bias = e.spec.kind == param_kind::router_bias;
    for (std::size_t i = 0; i < values.size(); ++i)
      values[i] = bias ? T(0) : e.spec.is_vector() ? T(1) : T(std * random_normal(seed, stream, i));
    model.set_param(e, values);
  }
}

}  // namespace dsx
