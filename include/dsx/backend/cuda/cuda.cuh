// The CUDA backend object. Layer code is written once against the primitive free functions
// (`gemm(be, ...)`, `rmsnorm_forward(be, ...)`); given a `dsx::backend::cuda&` overload resolution picks
// the kernels in this folder, given a `host&` the reference loops in backend/host. The conventions of
// backend/host/host.hpp hold unchanged: row-major, storage type T with arithmetic in accum_t<T>,
// parameter gradients +=, activation gradients =, sizes as std::int64_t element counts. Pointers passed
// to the primitives are device pointers from allocate_bytes (or any device memory); host-side scalars
// stay host values.
//
// One object owns one CUDA stream, one cuBLASLt handle with its 32 MiB workspace and plan cache, and a
// scratch buffer for the primitives' temporaries. Every primitive enqueues its work on the stream and
// returns without waiting; results are visible to the host after download() or synchronize(). One
// object serves one host thread and one device.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "dsx/backend/cuda/check.cuh"
#include "dsx/backend/cuda/lt_matmul.cuh"
#include "dsx/core/error.hpp"

namespace dsx::backend {

struct cuda_options {
  int device = 0;
  // Lets cuBLASLt round f32 GEMM operands to TF32 on the tensor cores (about 8× the f32 rate on H100,
  // ~1e-3 relative error). Off by default: f32 results then match the host reference to ~1e-6.
  bool tf32 = false;
};

namespace cuda_detail {

inline int use_device(int device) {
  int count = 0;
  DSX_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    throw error("cuda backend: device " + std::to_string(device) + " requested, but " + std::to_string(count) +
                " CUDA device(s) are present");
  DSX_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

struct owned_stream {
  cudaStream_t stream = nullptr;
  owned_stream() { DSX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); }
  owned_stream(const owned_stream&) = delete;
  owned_stream& operator=(const owned_stream&) = delete;
  ~owned_stream() { cudaStreamDestroy(stream); }
};

}  // namespace cuda_detail

struct cuda {
  static constexpr bool is_device = true;
  // cuBLASLt workspace: Hopper's matmul kernels use up to 32 MiB (llm.c sizes it so for H100).
  static constexpr std::size_t gemm_workspace_bytes = std::size_t(32) << 20;
  static_assert(gemm_workspace_bytes == 33554432, "the cuBLASLt workspace is 32 MiB");

  explicit cuda(cuda_options options = {})
      : device_(cuda_detail::use_device(options.device)), matmul_(gemm_workspace_bytes), tf32_(options.tf32) {}
  cuda(const cuda&) = delete;
  cuda& operator=(const cuda&) = delete;
  ~cuda() {
    cudaStreamSynchronize(stream_.stream);
    cudaFree(scratch_);
  }

  // Memory interface, the same as host's.
  void* allocate_bytes(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, bytes);
    if (status != cudaSuccess)
      throw error("cuda backend: cudaMalloc of " + std::to_string(bytes) + " bytes on device " +
                  std::to_string(device_) + " failed: " + cudaGetErrorName(status) + " (" +
                  cudaGetErrorString(status) + ")");
    return p;
  }
  // Never throws (arenas free in destructors); an error pending on the device surfaces at the next
  // checked call.
  void free_bytes(void* p) noexcept { cudaFree(p); }
  // Copies between host memory and device memory. Both are complete when they return, as on the host
  // backend: `src` of an upload may be reused and `dst` of a download read at once.
  void upload(void* dst, const void* src, std::size_t bytes) {
    if (bytes == 0) return;
    DSX_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_.stream));
    DSX_CUDA_CHECK(cudaStreamSynchronize(stream_.stream));
  }
  void download(void* dst, const void* src, std::size_t bytes) {
    if (bytes == 0) return;
    DSX_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_.stream));
    DSX_CUDA_CHECK(cudaStreamSynchronize(stream_.stream));
  }
  // Enqueued on the stream, ordered with the kernels around it.
  void fill_zero(void* dst, std::size_t bytes) {
    if (bytes) DSX_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_.stream));
  }
  void synchronize() { DSX_CUDA_CHECK(cudaStreamSynchronize(stream_.stream)); }

  cudaStream_t stream() const { return stream_.stream; }
  int device() const { return device_; }
  bool tf32() const { return tf32_; }
  cuda_detail::lt_matmul& matmul() { return matmul_; }

  // Device memory of at least `bytes` for a primitive's temporaries. Valid for work enqueued on the
  // stream until the next call; growing it waits for the stream so in-flight kernels keep their memory.
  void* scratch(std::size_t bytes) {
    if (bytes > scratch_bytes_) {
      synchronize();
      cudaFree(scratch_);
      scratch_ = nullptr;
      scratch_bytes_ = 0;
      const std::size_t rounded = (bytes + (std::size_t(1) << 20) - 1) >> 20 << 20;  // whole MiB
      scratch_ = allocate_bytes(rounded);
      scratch_bytes_ = rounded;
    }
    return scratch_;
  }

 private:
  int device_;
  cuda_detail::owned_stream stream_;
  cuda_detail::lt_matmul matmul_;
  bool tf32_;
  void* scratch_ = nullptr;
  std::size_t scratch_bytes_ = 0;
};

}  // namespace dsx::backend
