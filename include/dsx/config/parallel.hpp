// The parallel layout a model is trained or served with. Validated against the model in
// config/checks.hpp; this version of dsx executes the single-rank layout, and the MoE layer and the
// layer stack are already shaped (dispatch → local experts → combine; a range of layers) so that
// expert and pipeline parallelism replace the dispatch and the range, not the layers.
#pragma once

namespace dsx {

struct parallel_layout {
  int data = 1;
  int expert = 1;
  int pipeline = 1;
  int tensor = 1;
  friend constexpr bool operator==(const parallel_layout&, const parallel_layout&) = default;
  constexpr int world() const { return data * expert * pipeline * tensor; }
};

inline constexpr parallel_layout single_rank{};
static_assert(single_rank.world() == 1);

}  // namespace dsx
