// Host GEMMs through CBLAS. Row-major: C(m, n) = alpha · op(A) · op(B) + beta · C, where op(A) is
// (m, k) and op(B) is (k, n). bf16 operands are widened to f32 and the result rounded back.
#pragma once

#include <cblas.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace detail {
inline std::vector<float>& widen_scratch(int which) {
  thread_local std::vector<float> buffers[3];
  return buffers[which];
}
template <class T>
const float* widen(const T* x, std::int64_t rows, std::int64_t cols, std::int64_t ld, int which) {
  auto& buf = widen_scratch(which);
  buf.resize(std::size_t(rows * ld));
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) buf[std::size_t(i * ld + j)] = float(x[i * ld + j]);
  return buf.data();
}
}  // namespace detail

template <class T>
void gemm(host&, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
          const T* a, std::int64_t lda, const T* b, std::int64_t ldb, double beta, T* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, double>) {
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, float(alpha), a, lda, b, ldb, float(beta), c, ldc);
  } else {
    static_assert(std::is_same_v<T, bf16>, "host gemm: storage type must be double, float or bf16");
    const float* fa = detail::widen(a, trans_a ? k : m, trans_a ? m : k, lda, 0);
    const float* fb = detail::widen(b, trans_b ? n : k, trans_b ? k : n, ldb, 1);
    float* fc = const_cast<float*>(detail::widen(c, m, n, ldc, 2));
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, float(alpha), fa, lda, fb, ldb, float(beta), fc, ldc);
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = bf16(fc[i * ldc + j]);
  }
}

// `batch` independent GEMMs whose operands are `stride_*` elements apart.
template <class T>
void gemm_strided_batched(host& be, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                          double alpha, const T* a, std::int64_t lda, std::int64_t stride_a, const T* b,
                          std::int64_t ldb, std::int64_t stride_b, double beta, T* c, std::int64_t ldc,
                          std::int64_t stride_c, std::int64_t batch) {
  for (std::int64_t i = 0; i < batch; ++i)
    gemm(be, trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta, c + i * stride_c, ldc);
}

}  // namespace dsx::backend
