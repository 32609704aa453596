// Learning-rate and batch-size schedules of DeepSeek-V3 pre-training (report §4.2): linear warm-up from
// 0 to the peak, a constant phase, a cosine decay to the final rate, then the final rate; the batch size
// ramps linearly from a start to a final size over the first tokens. All lengths are in optimizer steps
// (learning rate) or tokens (batch), configurable.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "dsx/core/error.hpp"

namespace dsx {

struct lr_schedule {
  double peak = 2.2e-4;          // V3: 2.2e-4
  double final = 2.2e-5;         // V3: cosine down to 2.2e-5
  std::int64_t warmup = 2000;    // V3: 2K steps
  std::int64_t constant = 0;     // steps at the peak after warm-up
  std::int64_t decay = 0;        // steps of cosine decay; after them the rate stays at `final`

  void check() const {
    require(peak >= 0 && final >= 0 && std::isfinite(peak) && std::isfinite(final),
            "lr schedule: peak and final learning rates must be finite and >= 0");
    require(warmup >= 0 && constant >= 0 && decay >= 0, "lr schedule: warmup, constant and decay steps must be >= 0");
  }

  // Learning rate of optimizer step `step` (0-based).
  double at(std::int64_t step) const {
    if (step < warmup) return peak * double(step + 1) / double(warmup);
    step -= warmup;
    if (step < constant) return peak;
    step -= constant;
    if (step < decay) return final + (peak - final) * 0.5 * (1.0 + std::cos(std::numbers::pi * double(step) / double(decay)));
    return final;
  }
};

struct batch_ramp {
  std::int64_t start = 0;         // sequences per step at the beginning (0: no ramp)
  std::int64_t target = 0;        // sequences per step after the ramp
  std::int64_t ramp_tokens = 0;   // tokens over which the size grows linearly

  std::int64_t at(std::int64_t tokens_seen) const {
    if (start <= 0 || ramp_tokens <= 0 || tokens_seen >= ramp_tokens) return target;
    const double f = double(tokens_seen) / double(ramp_tokens);
    return std::clamp<std::int64_t>(std::int64_t(double(start) + f * double(target - start)), 1, target);
  }
};

}  // namespace dsx
