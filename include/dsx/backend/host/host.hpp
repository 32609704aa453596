// The host (CPU) backend: the reference implementation of every primitive the layers use. Each
// primitive is a free function whose first argument is the backend object, so layer code calls
// `rmsnorm_forward(be, ...)` and overload resolution picks this backend or the CUDA one
// (backend/cuda) without the layer code changing. Loops are OpenMP-parallel over independent rows;
// GEMMs go through CBLAS (OpenBLAS).
//
// Conventions shared by every backend:
//  - matrices are row-major; a Linear weight is (out, in) and y = x · Wᵀ;
//  - `T` is the storage type (double, float, bf16); arithmetic is in accum_t<T>;
//  - gradients of parameters accumulate (+=); gradients of activations are written (=) unless the
//    primitive takes an `accumulate` flag;
//  - sizes and strides are std::int64_t counts of elements.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "dsx/core/error.hpp"

namespace dsx::backend {

struct host {
  static constexpr bool is_device = false;

  void* allocate_bytes(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!p) throw error("host backend: out of memory allocating " + std::to_string(bytes) + " bytes");
    return p;
  }
  void free_bytes(void* p) { std::free(p); }
  // Copies between host memory and this backend's memory (the same memory here).
  void upload(void* dst, const void* src, std::size_t bytes) { if (bytes) std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, std::size_t bytes) { if (bytes) std::memcpy(dst, src, bytes); }
  void fill_zero(void* dst, std::size_t bytes) { if (bytes) std::memset(dst, 0, bytes); }
  void synchronize() {}
};

}  // namespace dsx::backend
