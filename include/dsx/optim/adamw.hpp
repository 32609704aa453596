// The AdamW optimizer of a transformer: moments in the precision policy's moment type, a decay mask
// derived from the parameter table (matrices decay; RMSNorm weights do not, by default; the routing bias
// is not trained at all), global-norm gradient clipping folded into the update pass.
//
// Policies with a master copy (precision::bf16_master) keep the weights in f32 here as well: each step
// updates the master and writes its rounding into the model's bf16 parameters. The master is taken from
// the parameters at the first step (so a caller may initialise or load weights after constructing the
// optimizer) or from a checkpoint (io/checkpoint.hpp, set_master_loaded). Parameters written directly
// between steps are overwritten by the master at the next step unless sync_master() follows; the
// routing bias, which is not trained, is exempt (the update leaves untrained elements alone).
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
    const bool trained = e.spec.trained(), decay = trained && (e.spec.decays() || decay_vectors);
    const std::int64_t end = e.offset + e.spec.numel();
    if (!out.empty() && out.back().decay == decay && out.back().trained == trained && out.back().end == e.offset)
      out.back().end = end;
    else
      out.push_back({e.offset, end, decay, trained});
  }
  return out;
}

template <class Model>
class adamw {
 public:
  using T = typename Model::T;
  using M = storage_t<Model::precision.moment>;
  using Backend = typename Model::backend_type;
  static constexpr bool has_master = Model::precision.has_master_copy();
  static_assert(!has_master || Model::precision.master == dtype::f32, "adamw: the master copy of the weights is f32");

  adamw(Model& model, adamw_options options = {})
      : model_(model), options_(options), n_(model.params().size()),
        ranges_(decay_ranges(model.params(), options.decay_vectors)),
        moments_(model.backend(), 2 * std::size_t(n_) * sizeof(M)),
        master_(model.backend(), has_master ? std::size_t(n_) * sizeof(float) : 0),
        ranges_mem_(model.backend(), ranges_.size() * sizeof(backend::decay_range)) {
    backend::check_decay_ranges(ranges_.data(), std::int64_t(ranges_.size()), n_);
    model.backend().upload(ranges_mem_.data(), ranges_.data(), ranges_mem_.bytes());
    model.backend().fill_zero(moments_.data(), moments_.bytes());
  }

  // √(Σ grad²) over all parameters; NaN or Inf when any gradient is not finite.
  double grad_norm() { return std::sqrt(sum_squares(model_.backend(), model_.grad_data(), n_)); }

  // One update with learning rate `lr`; gradients are first multiplied by `grad_scale` (clipping).
  void step(double lr, double grad_scale = 1.0) {
    backend::adamw_params p{lr, options_.beta1, options_.beta2, options_.eps, options_.weight_decay, ++steps_, grad_scale};
    if constexpr (has_master) {
      adamw_update_master(model_.backend(), current_master(), model_.param_data(), static_cast<const T*>(model_.grad_data()), m(),
                          v(), n_, p, device_ranges(), std::int64_t(ranges_.size()));
    } else {
      adamw_update(model_.backend(), model_.param_data(), static_cast<const T*>(model_.grad_data()), m(), v(), n_, p,
                   device_ranges(), std::int64_t(ranges_.size()));
    }
  }

  // Policies with a master copy: the master becomes the model's parameters, widened to f32 (what a
  // first step does by itself; call it after writing parameters between steps).
  void sync_master()
    requires has_master
  {
    convert_copy(model_.backend(), master(), static_cast<const T*>(model_.param_data()), n_);
    master_current_ = true;
  }
  // The master was written from a checkpoint: the next step uses it as it is.
  void set_master_loaded()
    requires has_master
  {
    master_current_ = true;
  }
  // The f32 master weights (backend memory, size() elements), laid out like the parameters; taken from
  // the parameters first if no step or checkpoint has set them yet (what a checkpoint saves).
  float* current_master()
    requires has_master
  {
    if (!master_current_) sync_master();
    return master();
  }
  // The master buffer as it is (before the first step: not yet the weights).
  float* master()
    requires has_master
  {
    return reinterpret_cast<float*>(master_.data());
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
  // The decay ranges in the backend's memory, where its update reads them.
  const backend::decay_range* device_ranges() { return reinterpret_cast<const backend::decay_range*>(ranges_mem_.data()); }

  Model& model_;
  adamw_options options_;
  std::int64_t n_;
  std::vector<backend::decay_range> ranges_;
  arena<Backend> moments_;
  arena<Backend> master_;         // empty without a master copy
  arena<Backend> ranges_mem_;     // ranges_, uploaded
  bool master_current_ = false;   // the master holds the weights (taken from the parameters or a checkpoint)
  std::int64_t steps_ = 0;
};

}  // namespace dsx
