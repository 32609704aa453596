// The parameter table: every tensor of the model at an offset in one flat buffer, in the order of
// config/param_spec.hpp. Gradients live in a second buffer with the same offsets, so the optimizer and
// gradient clipping see two contiguous arrays. MTP copies of the embedding and head (V3 checkpoints store
// them again under the MTP layer) resolve to the main model's tensors and take no storage.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "dsx/config/param_spec.hpp"
#include "dsx/core/error.hpp"
#include "dsx/layers/block.hpp"

namespace dsx {

class param_table {
 public:
  struct entry {
    param_spec spec;
    std::string name;       // HF name
    std::int64_t offset;    // elements from the start of the flat buffer
  };

  explicit param_table(const model_config& c) {
    std::int64_t embed = 0, head = 0;
    for_each_param(c, [&](const param_spec& p) {
      std::int64_t offset = size_;
      if (p.kind == param_kind::mtp_embed) offset = embed;
      else if (p.kind == param_kind::mtp_head) offset = head;
      else size_ += p.numel();
      if (p.kind == param_kind::embed) embed = offset;
      if (p.kind == param_kind::head) head = offset;
      index_.emplace(key(p.kind, p.layer, p.expert), entries_.size());
      by_name_.emplace(hf_name(p), entries_.size());
      entries_.push_back({p, hf_name(p), offset});
    });
  }

  // Elements in the flat buffer.
  std::int64_t size() const { return size_; }
  const std::vector<entry>& entries() const { return entries_; }

  const entry* find(param_kind kind, int layer = -1, int expert = -1) const {
    auto it = index_.find(key(kind, layer, expert));
    return it == index_.end() ? nullptr : &entries_[it->second];
  }
  const entry* find(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &entries_[it->second];
  }
  // Offset of a tensor the configuration must have; a missing one is a programming error.
  std::int64_t offset(param_kind kind, int layer = -1, int expert = -1) const {
    const entry* e = find(kind, layer, expert);
    require(e != nullptr, "param_table: no tensor of kind " + std::to_string(int(kind)) + " in layer " +
                              std::to_string(layer) + " expert " + std::to_string(expert));
    return e->offset;
  }
  // Offset, or -1 when the configuration has no such tensor (e.g. q_proj with q-LoRA).
  std::int64_t offset_or_none(param_kind kind, int layer = -1, int expert = -1) const {
    const entry* e = find(kind, layer, expert);
    return e ? e->offset : -1;
  }

 private:
  static std::uint64_t key(param_kind kind, int layer, int expert) {
    return (std::uint64_t(kind) << 48) | (std::uint64_t(std::uint32_t(layer + 1) & 0xffffff) << 24) |
           std::uint64_t(std::uint32_t(expert + 1) & 0xffffff);
  }
  std::vector<entry> entries_;
  std::unordered_map<std::uint64_t, std::size_t> index_;
  std::unordered_map<std::string, std::size_t> by_name_;
  std::int64_t size_ = 0;
};

// Views of decoder layer `layer`'s weights (or gradients: P = T*) in a flat buffer laid out by `table`.
// Tensors the configuration does not have are null. gate_proj and up_proj are adjacent (param_spec
// order), so the SwiGLU views start at gate_proj; routed experts start at expert 0's gate_proj.
template <class P>
auto layer_views(const param_table& table, P base, int layer) {
  using T = std::remove_const_t<std::remove_pointer_t<P>>;
  auto at = [&](param_kind k, int expert = -1) -> P {
    const std::int64_t o = table.offset_or_none(k, layer, expert);
    return o < 0 ? nullptr : base + o;
  };
  std::conditional_t<std::is_const_v<std::remove_pointer_t<P>>, block_weights<T>, block_grads<T>> v;
  v.attn_norm = at(param_kind::attn_norm);
  v.attn = {at(param_kind::q_proj), at(param_kind::q_a_proj), at(param_kind::q_a_norm), at(param_kind::q_b_proj),
            at(param_kind::kv_a_proj), at(param_kind::kv_a_norm), at(param_kind::kv_b_proj), at(param_kind::o_proj)};
  v.ffn_norm = at(param_kind::ffn_norm);
  v.dense = {at(param_kind::mlp_gate), at(param_kind::mlp_down)};
  if constexpr (std::is_const_v<std::remove_pointer_t<P>>)
    v.sparse = {at(param_kind::router), at(param_kind::router_bias), at(param_kind::expert_gate, 0),
                at(param_kind::shared_gate), at(param_kind::shared_down)};
  else
    v.sparse = {at(param_kind::router), at(param_kind::expert_gate, 0), at(param_kind::shared_gate),
                at(param_kind::shared_down)};
  return v;
}

}  // namespace dsx
