// One planned allocation for a set of buffers (llm.c's fill_in_activation_sizes): callers declare
// every buffer with its element count, the plan assigns aligned offsets, and a single allocation of
// the backend's memory backs them all. Nothing is allocated per step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dsx/core/error.hpp"

namespace dsx {

class arena_plan {
 public:
  static constexpr std::size_t alignment = 256;  // cache lines on the host, 256-byte GPU transactions

  // Reserves `count` elements of `T`; returns a slot to resolve once the arena exists.
  template <class T>
  std::size_t reserve(std::int64_t count, std::string name = {}) {
    require(count >= 0, "arena: negative size for buffer '" + name + "'");
    const std::size_t offset = (bytes_ + alignment - 1) / alignment * alignment;
    slots_.push_back({offset, std::size_t(count) * sizeof(T), std::move(name)});
    bytes_ = offset + std::size_t(count) * sizeof(T);
    return slots_.size() - 1;
  }
  std::size_t bytes() const { return bytes_; }
  std::size_t offset(std::size_t slot) const { return slots_.at(slot).offset; }
  std::size_t slot_bytes(std::size_t slot) const { return slots_.at(slot).bytes; }
  const std::string& name(std::size_t slot) const { return slots_.at(slot).name; }
  std::size_t size() const { return slots_.size(); }

 private:
  struct slot_info {
    std::size_t offset, bytes;
    std::string name;
  };
  std::vector<slot_info> slots_;
  std::size_t bytes_ = 0;
};

// Memory from a backend, released by it. `Backend` provides allocate_bytes / free_bytes.
template <class Backend>
class arena {
 public:
  arena() = default;
  arena(Backend& be, std::size_t bytes) : be_(&be), bytes_(bytes), base_(static_cast<std::byte*>(be.allocate_bytes(bytes))) {}
  arena(const arena&) = delete;
  arena& operator=(const arena&) = delete;
  arena(arena&& o) noexcept { swap(o); }
  arena& operator=(arena&& o) noexcept { swap(o); return *this; }
  ~arena() { if (base_) be_->free_bytes(base_); }

  template <class T>
  T* at(const arena_plan& plan, std::size_t slot) const { return reinterpret_cast<T*>(base_ + plan.offset(slot)); }
  std::byte* data() const { return base_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void swap(arena& o) noexcept { std::swap(be_, o.be_); std::swap(bytes_, o.bytes_); std::swap(base_, o.base_); }
  Backend* be_ = nullptr;
  std::size_t bytes_ = 0;
  std::byte* base_ = nullptr;
};

}  // namespace dsx
