// Error checks for the CUDA backend: every CUDA runtime call, every kernel launch and every cuBLASLt
// call is checked, and a failure throws dsx::error naming the source file, the line, the call and the
// CUDA (or cuBLAS) error. Kernel faults that surface asynchronously are reported by the next checked
// call on the stream (typically synchronize or a download).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "dsx/core/error.hpp"

namespace dsx::backend::cuda_detail {

[[noreturn]] inline void throw_failure(const char* what, const char* file, int line, const char* name,
                                       const char* message) {
  throw error(std::string(file) + ":" + std::to_string(line) + ": " + what + " failed: " + name + " (" + message +
              ")");
}

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // a recoverable error stays recorded otherwise and would be blamed on the next launch
    throw_failure(call, file, line, cudaGetErrorName(status), cudaGetErrorString(status));
  }
}

inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw_failure(call, file, line, cublasLtGetStatusName(status), cublasLtGetStatusString(status));
}

// After a `<<<...>>>` launch: a bad configuration (grid, block, shared memory) is reported at once by
// cudaGetLastError, under the kernel's name. A sticky fault of an earlier kernel (an illegal address)
// also surfaces here; its error name tells the two apart.
inline void check_launch(const char* kernel, const char* file, int line) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw_failure((std::string("launch of ") + kernel).c_str(), file, line, cudaGetErrorName(status),
                  cudaGetErrorString(status));
}

}  // namespace dsx::backend::cuda_detail

// DSX_CUDA_CHECK(cudaMemcpyAsync(...)); DSX_CUBLAS_CHECK(cublasLtMatmul(...));
// kernel<<<grid, block, 0, stream>>>(...); DSX_CUDA_CHECK_LAUNCH("kernel");
#define DSX_CUDA_CHECK(call) ::dsx::backend::cuda_detail::check_cuda((call), #call, __FILE__, __LINE__)
#define DSX_CUBLAS_CHECK(call) ::dsx::backend::cuda_detail::check_cublas((call), #call, __FILE__, __LINE__)
#define DSX_CUDA_CHECK_LAUNCH(kernel) ::dsx::backend::cuda_detail::check_launch((kernel), __FILE__, __LINE__)
