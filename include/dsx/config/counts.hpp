// Sizes known before anything runs: parameter counts, FLOPs per token and the memory plan, all
// computed at compile time from the same parameter enumeration that lays out the weights.
#pragma once

#include <cstdint>

#include "dsx/config/param_spec.hpp"
#include "dsx/config/precision.hpp"

namespace dsx {

// Parameters of the main model (no MTP modules), the routing bias included.
constexpr std::int64_t params_total(const model_config& c) {
  std::int64_t n = 0;
  for_each_param(c, [&](const param_spec& p) { if (!p.mtp(c)) n += p.numel(); });
  return n;
}

// Parameters a token touches in the main model: all dense tensors, the embedding and the output head,
// the gate, the shared experts and top_k routed experts per MoE layer.
constexpr std::int64_t params_activated(const model_config& c) {
  std::int64_t n = 0;
  for_each_param(c, [&](const param_spec& p) {
    if (!p.mtp(c) && p.expert < c.moe.top_k) n += p.numel();
  });
  return n;
}

// Parameters unique to the MTP modules (their copies of the embedding and head not counted).
constexpr std::int64_t params_mtp(const model_config& c) {
  std::int64_t n = 0;
  for_each_param(c, [&](const param_spec& p) { if (p.mtp(c) && !p.shared_copy()) n += p.numel(); });
  return n;
}

// Parameters updated by the optimizer (main model and MTP modules, shared copies once).
constexpr std::int64_t params_trained(const model_config& c) {
  std::int64_t n = 0;
  for_each_param(c, [&](const param_spec& p) { if (p.trained() && !p.shared_copy()) n += p.numel(); });
  return n;
}

// Forward FLOPs of one token of the main model at sequence length `seq` under a causal mask:
// 2 per multiply-add of every activated matrix except the embedding lookup, plus attention scores
// and the weighted sum of values over the (seq + 1) / 2 positions a token sees on average.
struct flops_per_token {
  std::int64_t matmul = 0;
  std::int64_t attention = 0;
  constexpr std::int64_t forward() const { return matmul + attention; }
  constexpr std::int64_t training() const { return 3 * forward(); }  // forward + 2x for backward
};

constexpr flops_per_token forward_flops(const model_config& c, std::int64_t seq) {
  flops_per_token f;
  for_each_param(c, [&](const param_spec& p) {
    if (p.mtp(c) || p.is_vector() || p.kind == param_kind::embed || p.expert >= c.moe.top_k) return;
    f.matmul += 2 * p.numel();
  });
  const std::int64_t ctx2 = seq + 1;  // 2 * average attended positions
  f.attention = std::int64_t(c.layers) * c.mla.heads * (c.mla.qk_head() + c.mla.v) * ctx2;
  return f;
}

// Bytes of the state that lives for the whole of training, per precision policy.
struct memory_plan {
  std::int64_t weights = 0;    // parameters in the policy's storage type (MTP included)
  std::int64_t grads = 0;      // gradients of trained parameters
  std::int64_t master = 0;     // f32 master copy when the weights are stored narrower
  std::int64_t moments = 0;    // AdamW m and v
  constexpr std::int64_t total() const { return weights + grads + master + moments; }
};

constexpr memory_plan plan_memory(const model_config& c, const precision_policy& p) {
  std::int64_t stored = 0;
  for_each_param(c, [&](const param_spec& s) { if (!s.shared_copy()) stored += s.numel(); });
  const std::int64_t trained = params_trained(c);
  memory_plan m;
  m.weights = stored * std::int64_t(size_of(p.param));
  m.grads = trained * std::int64_t(size_of(p.grad));
  m.master = p.has_master_copy() ? trained * std::int64_t(size_of(p.master)) : 0;
  m.moments = 2 * trained * std::int64_t(size_of(p.moment));
  return m;
}

}  // namespace dsx
