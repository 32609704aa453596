// The parameter table: every tensor of the model at an offset in one flat buffer, in the order of
// config/param_spec.hpp. Gradients live in a second buffer with the same offsets, so the optimizer and
// gradient clipping see two contiguous arrays. MTP copies of the embedding and head (V3 checkpoints store
// them again under the MTP layer) resolve to the main model's tensors and take no storage.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "dsx/config/param_spec.hpp"
#include "dsx/core/error.hpp"

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

}  // namespace dsx
