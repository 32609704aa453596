// Precision policies: what each class of tensor is stored in. A policy is a structural value, so a
// model is specialised on it (`transformer<cfg, precision::bf16, ...>`).
#pragma once

#include "dsx/core/numeric.hpp"

namespace dsx {

struct precision_policy {
  dtype param;       // weights as the forward pass reads them
  dtype activation;  // activations kept for backward
  dtype accumulate;  // GEMM / reduction accumulators
  dtype grad;        // parameter gradients (accumulated over micro-batches)
  dtype master;      // optimizer's master copy of the weights (== param: no separate copy)
  dtype moment;      // AdamW first and second moments
  // Every Linear's three GEMMs (forward, input gradient, weight gradient) in FP8 with block scaling, as
  // DeepSeek-V3 trains (§3.3.1; layers/linear.hpp): inputs quantised to E4M3 per 1×128 tile (activations,
  // gradients) or 128×128 block (weights) just before each GEMM, f32 accumulation, output in `param`'s
  // type. The embedding, the output head, the MoE router, norms and the attention core keep `param`.
  bool fp8_linear = false;
  friend constexpr bool operator==(const precision_policy&, const precision_policy&) = default;

  constexpr bool has_master_copy() const { return master != param; }
};

namespace precision {
inline constexpr precision_policy f64{dtype::f64, dtype::f64, dtype::f64, dtype::f64, dtype::f64, dtype::f64};
inline constexpr precision_policy f32{dtype::f32, dtype::f32, dtype::f32, dtype::f32, dtype::f32, dtype::f32};
// bf16 storage, f32 accumulation, f32 master weights and gradients, f32 moments.
inline constexpr precision_policy bf16{dtype::bf16, dtype::bf16, dtype::f32, dtype::f32, dtype::f32, dtype::f32};
// DeepSeek-V3's recipe for the optimizer (§3.3): bf16 moments beside f32 master weights and grads.
inline constexpr precision_policy bf16_v3{dtype::bf16, dtype::bf16, dtype::f32, dtype::f32, dtype::f32, dtype::bf16};
// Everything the model computes with in bf16 (weights, activations, gradients), f32 accumulation, f32
// moments, no master copy: the policy dsx::transformer runs in bf16 today (it keeps weights, activations
// and gradients in one storage type).
inline constexpr precision_policy bf16_uniform{dtype::bf16, dtype::bf16, dtype::f32, dtype::bf16, dtype::bf16, dtype::f32};
// bf16_uniform's model with an f32 master copy of the weights beside f32 moments: the optimizer updates
// the master and the model reads its bf16 rounding, so updates below bf16's resolution accumulate. The
// bf16 policy a dsx::transformer trains with (gradients in bf16, unlike precision::bf16).
inline constexpr precision_policy bf16_master{dtype::bf16, dtype::bf16, dtype::f32, dtype::bf16, dtype::f32, dtype::f32};
// bf16_master with DeepSeek-V3's FP8 GEMMs for every Linear: the FP8 training recipe.
inline constexpr precision_policy fp8_v3{dtype::bf16, dtype::bf16, dtype::f32, dtype::bf16, dtype::f32, dtype::f32, true};
static_assert(!f32.has_master_copy() && bf16.has_master_copy() && !bf16_uniform.has_master_copy() &&
              bf16_master.has_master_copy());
static_assert(bf16.accumulate == dtype::f32 && bf16_v3.moment == dtype::bf16);
}  // namespace precision

template <dtype D> struct storage_of;
template <> struct storage_of<dtype::f64> { using type = double; };
template <> struct storage_of<dtype::f32> { using type = float; };
template <> struct storage_of<dtype::bf16> { using type = dsx::bf16; };
template <> struct storage_of<dtype::fp8_e4m3> { using type = dsx::fp8_e4m3; };
template <dtype D> using storage_t = typename storage_of<D>::type;

}  // namespace dsx
