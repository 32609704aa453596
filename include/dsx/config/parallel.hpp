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

// Decoder layers [first, last) of one pipeline stage: consecutive slices, the first `layers % stages`
// stages one layer longer than the rest.
struct layer_range {
  int first = 0;
  int last = 0;
  constexpr int size() const { return last - first; }
};

constexpr layer_range stage_layers(int layers, int stages, int stage) {
  const int base = layers / stages, extra = layers % stages;
  const int first = stage * base + (stage < extra ? stage : extra);
  return {first, first + base + (stage < extra ? 1 : 0)};
}
static_assert(stage_layers(61, 16, 0).size() == 4 && stage_layers(61, 16, 12).first == 48 &&
              stage_layers(61, 16, 15).last == 61 && stage_layers(3, 1, 0).size() == 3);

}  // namespace dsx
