// GEMMs on the GPU through cuBLASLt, with host's signatures and row-major semantics:
// C(m, n) = alpha · op(A) · op(B) + beta · C, op(A) (m, k), op(B) (k, n).
//
// cuBLASLt is column-major. A row-major (r, c) matrix with leading dimension ld is the column-major
// (c, r) matrix with the same ld, i.e. its transpose, so C = op(A)·op(B) row-major is
// Cᵀ = op(B)ᵀ·op(A)ᵀ column-major: cuBLASLt multiplies the B buffer (transposed iff trans_b) by the A
// buffer (transposed iff trans_a) into an (n, m) result, and no data moves.
//
// Types: f32 (f32 accumulation; TF32 tensor-core rounding only with cuda_options::tf32), f64, and bf16
// storage with f32 accumulation. beta = 0 never reads C (NaN in C is overwritten), as in BLAS. With bf16
// and beta ≠ 0, cuBLASLt's kernel rounded alpha·op(A)·op(B) to bf16 before adding beta·C (measured on an
// H100 with cuBLASLt 13.1 at gpu_1b's expert weight-gradient shape, 2048 × 512 × 384), so C += A·B can
// carry half an ulp of the product besides the sum's rounding; the host backend rounds once.
#pragma once

#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

template <class T>
struct gemm_types;
template <>
struct gemm_types<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F, scale = CUDA_R_32F;
  using scale_t = float;
};
template <>
struct gemm_types<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F, scale = CUDA_R_64F;
  static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_64F;
  using scale_t = double;
};
template <>
struct gemm_types<bf16> {
  static constexpr cudaDataType_t data = CUDA_R_16BF, scale = CUDA_R_32F;
  static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  using scale_t = float;
};

// C = beta · C over `batch` (rows, cols) blocks: the k = 0 case, which cuBLASLt does not take.
// beta = 0 writes exact zeros.
template <class T>
__global__ void scale_matrix_kernel(T* c, std::int64_t ldc, std::int64_t stride, std::int64_t rows, std::int64_t cols,
                                    std::int64_t batch, accum_t<T> beta) {
  using A = accum_t<T>;
  const std::int64_t total = batch * rows * cols;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t j = e % cols, i = e / cols % rows, b = e / (rows * cols);
    T& v = c[b * stride + i * ldc + j];
    v = beta == A(0) ? T(A(0)) : T(beta * A(v));
  }
}

// gemm_strided_batched; with `size_class` the GEMM belongs to a family whose sizes vary from call to call
// (the per-expert GEMMs of moe.cuh) and shares cuBLASLt plans by size class (lt_matmul::run).
template <class T>
void gemm_lt(cuda& be, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
             const T* a, std::int64_t lda, std::int64_t stride_a, const T* b, std::int64_t ldb, std::int64_t stride_b,
             double beta, T* c, std::int64_t ldc, std::int64_t stride_c, std::int64_t batch, bool size_class) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>,
                "cuda gemm: storage type must be double, float or bf16");
  using types = cuda_detail::gemm_types<T>;
  const auto dims = [&] {
    return " (m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
           " trans_a=" + std::to_string(trans_a) + " trans_b=" + std::to_string(trans_b) + ")";
  };
  require(m >= 0 && n >= 0 && k >= 0 && batch >= 0, "cuda gemm: negative size" + dims());
  if (m == 0 || n == 0 || batch == 0) return;
  require(ldc >= n, "cuda gemm: ldc = " + std::to_string(ldc) + " is less than n" + dims());
  if (batch == 1) stride_a = stride_b = stride_c = 0;  // unused; one cache entry per shape
  require(stride_a >= 0 && stride_b >= 0 && stride_c >= 0, "cuda gemm: negative batch stride" + dims());

  if (k == 0) {
    const unsigned threads = 256;
    cuda_detail::scale_matrix_kernel<<<cuda_detail::grid_for(batch * m * n, threads), threads, 0, be.stream()>>>(
        c, ldc, stride_c, m, n, batch, accum_t<T>(beta));
    DSX_CUDA_CHECK_LAUNCH("scale_matrix_kernel");
    return;
  }
  require(lda >= (trans_a ? m : k),
          "cuda gemm: lda = " + std::to_string(lda) + " is less than the row length of A" + dims());
  require(ldb >= (trans_b ? k : n),
          "cuda gemm: ldb = " + std::to_string(ldb) + " is less than the row length of B" + dims());

  const auto align = [&](const void* p, std::int64_t stride) {
    const std::uintptr_t stride_bytes = batch > 1 ? std::uintptr_t(stride) * sizeof(T) : 0;
    return cuda_detail::alignment_of(reinterpret_cast<std::uintptr_t>(p) | stride_bytes);
  };
  cuda_detail::lt_problem p{};
  p.data = types::data;
  p.scale = types::scale;
  if constexpr (std::is_same_v<T, float>)
    p.compute = be.tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  else
    p.compute = types::compute;
  // Column-major Cᵀ(n, m) = op(B)ᵀ(n, k) · op(A)ᵀ(k, m): cuBLASLt's A is our B and its B is our A.
  p.op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  p.op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  p.m = n;
  p.n = m;
  p.k = k;
  p.lda = ldb;
  p.ldb = lda;
  p.ldc = ldc;
  p.batch = batch;
  p.stride_a = stride_b;
  p.stride_b = stride_a;
  p.stride_c = stride_c;
  p.align_a = align(b, stride_b);
  p.align_b = align(a, stride_a);
  p.align_c = align(c, stride_c);
  const typename types::scale_t alpha_s(alpha), beta_s(beta);
  be.matmul().run(p, &alpha_s, b, a, &beta_s, c, be.stream(), size_class);
}

}  // namespace cuda_detail

// `batch` independent GEMMs whose operands are `stride_*` elements apart.
template <class T>
void gemm_strided_batched(cuda& be, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                          double alpha, const T* a, std::int64_t lda, std::int64_t stride_a, const T* b,
                          std::int64_t ldb, std::int64_t stride_b, double beta, T* c, std::int64_t ldc,
                          std::int64_t stride_c, std::int64_t batch) {
  cuda_detail::gemm_lt(be, trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                       stride_c, batch, false);
}

template <class T>
void gemm(cuda& be, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
          const T* a, std::int64_t lda, const T* b, std::int64_t ldb, double beta, T* c, std::int64_t ldc) {
  gemm_strided_batched(be, trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1);
}

}  // namespace dsx::backend
