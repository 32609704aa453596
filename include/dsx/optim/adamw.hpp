// The AdamW optimizer of a transformer: moments in the precision policy's moment type, a decay mask
// derived from the parameter table (matrices decay; RMSNorm weights and the routing bias do not, by
// default), global-norm gradient clipping folded into the update pass.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "dsx/backend/host/adamw.hpp"
#include "dsx/config/precision.hpp"
#include "dsx/core/arena.hpp"
#include "dsx/model/params.hpp"

namespace dsx {

struct adamw_options {
  double beta1 = 0.9;  // DeepSeek-V3 pre-training (report §4.2)
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  bool decay_vectors = false;  // also decay RMSNorm weights (never the routing bias)
};

// Decay ranges over the flat parameter buffer, one per run of tensors with the same flag, in offset order.
inline std::vector<backend::decay_range> decay_ranges(const param_table& table, bool decay_vectors) {
  std::vector<backend::decay_range> out;
  for (const auto& e : table.entries()) {
    if (e.spec.shared_copy()) continue;
    const bool decay = e.spec.trained() && (e.spec.decays() || decay_vectors);
    const std::int64_t end = e.offset + e.spec.numel();
    if (!out.empty() && out.back().decay == decay && out.back().end == e.offset) out.back().end = end;
    else out.push_back({e.offset, end, decay});
  }
  return out;
}

template <class Model>
class adamw {
 public:
  using T = typename Model::T;
  using M = storage_t<Model::precision.moment>;
  using Backend = typename Model::backend_type;

  adamw(Model& model, adamw_options options = {})
      : model_(model), options_(options), n_(model.params().size()),
        ranges_(decay_ranges(model.params(), options.decay_vectors)),
        moments_(model.backend(), 2 * std::size_t(n_) * sizeof(M)) {
    model.backend().fill_zero(moments_.data(), moments_.bytes());
  }

  // √(Σ grad²) over all parameters; NaN or Inf when any gradient is not finite.
  double grad_norm() { return std::sqrt(sum_squares(model_.backend(), model_.grad_data(), n_)); }

  // One update with learning rate `lr`; gradients are first multiplied by `grad_scale` (clipping).
  void step(double lr, double grad_scale = 1.0) {
    backend::adamw_params p{lr, options_.beta1, options_.beta2, options_.eps, options_.weight_decay, ++steps_, grad_scale};
    adamw_update(model_.backend(), model_.param_data(), static_cast<const T*>(model_.grad_data()), m(), v(), n_, p,
                 ranges_.data(), std::int64_t(ranges_.size()));
  }

  // The factor that brings the gradient norm down to `max_norm` (1 when it is already below).
  static double clip_scale(double norm, double max_norm) { return max_norm > 0 && norm > max_norm ? max_norm / norm : 1.0; }

  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t s) { steps_ = s; }
  M* m() { return reinterpret_cast<M*>(moments_.data()); }
  M* v() { return m() + n_; }
  std::int64_t size() const { return n_; }
  const std::vector<backend::decay_range>& ranges() const { return ranges_; }

 private:
  Model& model_;
  adamw_options options_;
  std::int64_t n_;
  std::vector<backend::decay_range> ranges_;
  arena<Backend> moments_;
  std::int64_t steps_ = 0;
};

}  // namespace dsx
