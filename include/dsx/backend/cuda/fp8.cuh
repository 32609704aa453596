// FP8 block scaling on the GPU with the host's signatures and layouts (backend/host/fp8.hpp; the math in
// core/fp8_block.hpp, shared with the host so that quantised bytes and scales are identical):
//   quantize_act_1x128 / quantize_weight_128x128 / dequantize_act_1x128 / dequantize_weight_128x128, and
//   gemm_fp8_block: C (m, n) = A (m, k) · B (n, k)ᵀ, A 1×128-scaled activations, B 128×128-scaled weights.
//
// gemm_fp8_block runs through cuBLASLt's block scaling (cuBLAS ≥ 12.9, Hopper): in cuBLASLt's column-major
// terms Cᵀ (n, m) = op(B_lt = weights)ᵀ · activations with TRANSA = T, TRANSB = N (the "TN" layout FP8
// needs on Hopper: both operands K-contiguous, which the row-major (m, k) and (n, k) buffers are),
// A_SCALE_MODE = BLK128x128_32F for the weights and B_SCALE_MODE = VEC128_32F for the activations
// (cuBLASLt rejects 128×128 blocks on both operands). cuBLASLt wants the scales in its own layouts, so
// they are first copied into the backend's scratch: activation scales transposed to (ceil(k/128), m)
// ("N-major"), weight scales as (ceil(n/128), L4) rows with L4 = ceil(k/128) rounded up to 4, zero padded.
// cuBLASLt further requires m and n multiples of 4, 16-byte aligned operands and K rows (k multiple of 16)
// and C of type f32 or bf16. When any of that fails, or its heuristic offers no algorithm (another GPU,
// an older cuBLAS), the wgmma kernel of fp8_wgmma.cuh runs it on Hopper (builds with sm_90a code, k a
// multiple of 16, 16-byte aligned operands); anything else gets a plain kernel of the reference formula:
// per output element an f32 dot over each 128-wide K block, promoted and scaled into an f32
// accumulator, as the host does.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/backend/cuda/fp8_wgmma.cuh"
#include "dsx/core/fp8_block.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

// Which implementation gemm_fp8_block uses: cuBLASLt where it can, else the wgmma kernel where it can,
// else the plain kernel (automatic); or one of them by force (cublaslt and wgmma throw dsx::error where
// they cannot run the problem).
enum class fp8_gemm_impl { automatic, cublaslt, wgmma, kernel };

namespace cuda_detail {

__device__ __forceinline__ float block_max(float v, float* shared) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, warps = int(blockDim.x) / 32;
  __syncthreads();  // `shared` may still be read by the previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float m = 0.0f;
  for (int w = 0; w < warps; ++w) m = fmaxf(m, shared[w]);
  return m;
}

// One block of 128 threads per 1×128 tile (grid-stride over tiles); thread t owns column 128·b + t.
template <class T>
__global__ void quantize_act_kernel(fp8_e4m3* q, float* scales, const T* x, std::int64_t rows, std::int64_t cols,
                                    bool ue8m0) {
  __shared__ float shared[32];
  const std::int64_t nb = fp8_block::blocks(cols);
  for (std::int64_t tile = blockIdx.x; tile < rows * nb; tile += gridDim.x) {
    const std::int64_t r = tile / nb, c = tile % nb * fp8_block::block + threadIdx.x;
    const float v = c < cols ? convert<float>(x[r * cols + c]) : 0.0f;
    const float s = fp8_block::scale_of(block_max(fabsf(v), shared), ue8m0);
    if (threadIdx.x == 0) scales[tile] = s;
    if (c < cols) q[r * cols + c] = fp8_block::quantize(v, s);
  }
}

// One block of 256 threads per 128×128 block (grid-stride over blocks).
template <class T>
__global__ void quantize_weight_kernel(fp8_e4m3* q, float* scales, const T* w, std::int64_t rows, std::int64_t cols,
                                       bool ue8m0) {
  __shared__ float shared[32];
  const std::int64_t rb = fp8_block::blocks(rows), cb = fp8_block::blocks(cols);
  for (std::int64_t blk = blockIdx.x; blk < rb * cb; blk += gridDim.x) {
    const std::int64_t r0 = blk / cb * fp8_block::block, c0 = blk % cb * fp8_block::block;
    const std::int64_t h = rows - r0 < fp8_block::block ? rows - r0 : fp8_block::block;
    const std::int64_t wd = cols - c0 < fp8_block::block ? cols - c0 : fp8_block::block;
    float amax = 0.0f;
    for (std::int64_t e = threadIdx.x; e < h * wd; e += blockDim.x)
      amax = fmaxf(amax, fabsf(convert<float>(w[(r0 + e / wd) * cols + c0 + e % wd])));
    const float s = fp8_block::scale_of(block_max(amax, shared), ue8m0);
    if (threadIdx.x == 0) scales[blk] = s;
    for (std::int64_t e = threadIdx.x; e < h * wd; e += blockDim.x) {
      const std::int64_t at = (r0 + e / wd) * cols + c0 + e % wd;
      q[at] = fp8_block::quantize(convert<float>(w[at]), s);
    }
  }
}

// x = float(q) · scale, elementwise; `weight` picks the 128×128 (else 1×128) scale layout.
template <class T>
__global__ void dequantize_kernel(T* x, const fp8_e4m3* q, const float* scales, std::int64_t rows, std::int64_t cols,
                                  bool weight) {
  const std::int64_t cb = fp8_block::blocks(cols);
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < rows * cols;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t r = e / cols, c = e % cols;
    const float s = scales[(weight ? r / fp8_block::block : r) * cb + c / fp8_block::block];
    x[e] = convert<T>(fp8_block::dequantize(q[e], s));
  }
}

// The reference formula, one thread per output element (correct, not fast: the fallback).
template <class T>
__global__ void gemm_fp8_block_kernel(std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a,
                                      const float* a_scales, const fp8_e4m3* b, const float* b_scales, T* c) {
  const std::int64_t kb = fp8_block::blocks(k);
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < m * n;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t i = e / n, j = e % n;
    const fp8_e4m3* ar = a + i * k;
    const fp8_e4m3* br = b + j * k;
    float acc = 0.0f;
    for (std::int64_t blk = 0; blk < kb; ++blk) {
      const std::int64_t k0 = blk * fp8_block::block, k1 = k < k0 + fp8_block::block ? k : k0 + fp8_block::block;
      float dot = 0.0f;
      for (std::int64_t t = k0; t < k1; ++t) dot += float(ar[t]) * float(br[t]);
      acc += dot * a_scales[i * kb + blk] * b_scales[(j / fp8_block::block) * kb + blk];
    }
    c[e] = convert<T>(acc);
  }
}

// cuBLASLt's scale layouts from dsx's: at (kb, m) = a_s (m, kb)ᵀ; bt (nb, l4) = b_s (nb, kb), zero padded.
static __global__ void fp8_lt_scales_kernel(float* at, float* bt, const float* a_s, const float* b_s, std::int64_t m,
                                     std::int64_t nb, std::int64_t kb, std::int64_t l4) {
  const std::int64_t total = m * kb + nb * l4;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    if (e < m * kb) {
      const std::int64_t blk = e / m, i = e % m;
      at[e] = a_s[i * kb + blk];
    } else {
      const std::int64_t f = e - m * kb, j = f / l4, blk = f % l4;
      bt[f] = blk < kb ? b_s[j * kb + blk] : 0.0f;
    }
  }
}

template <class T>
void check_fp8_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "cuda FP8: storage type must be float or bf16");
}

}  // namespace cuda_detail

template <class T>
void quantize_act_1x128(cuda& be, fp8_e4m3* q, float* scales, const T* x, std::int64_t rows, std::int64_t cols,
                        bool ue8m0) {
  cuda_detail::check_fp8_type<T>();
  namespace fb = fp8_block;
  fb::require_matrix("quantize_act_1x128: activations", rows, cols);
  const std::int64_t tiles = rows * fb::blocks(cols);
  fb::require_pointer("quantize_act_1x128: activations x", x, rows * cols);
  fb::require_pointer("quantize_act_1x128: output q", q, rows * cols);
  fb::require_pointer("quantize_act_1x128: output scales", scales, tiles);
  if (tiles == 0) return;
  cuda_detail::quantize_act_kernel<<<cuda_detail::grid_for(tiles), unsigned(fb::block), 0, be.stream()>>>(
      q, scales, x, rows, cols, ue8m0);
  DSX_CUDA_CHECK_LAUNCH("quantize_act_kernel");
}

template <class T>
void quantize_weight_128x128(cuda& be, fp8_e4m3* q, float* scales, const T* w, std::int64_t rows, std::int64_t cols,
                             bool ue8m0) {
  cuda_detail::check_fp8_type<T>();
  namespace fb = fp8_block;
  fb::require_matrix("quantize_weight_128x128: weight", rows, cols);
  const std::int64_t nblocks = fb::blocks(rows) * fb::blocks(cols);
  fb::require_pointer("quantize_weight_128x128: weight w", w, rows * cols);
  fb::require_pointer("quantize_weight_128x128: output q", q, rows * cols);
  fb::require_pointer("quantize_weight_128x128: output scales", scales, nblocks);
  if (nblocks == 0) return;
  cuda_detail::quantize_weight_kernel<<<cuda_detail::grid_for(nblocks), 256, 0, be.stream()>>>(q, scales, w, rows,
                                                                                              cols, ue8m0);
  DSX_CUDA_CHECK_LAUNCH("quantize_weight_kernel");
}

template <class T>
void dequantize_act_1x128(cuda& be, T* x, const fp8_e4m3* q, const float* scales, std::int64_t rows, std::int64_t cols) {
  cuda_detail::check_fp8_type<T>();
  namespace fb = fp8_block;
  fb::require_matrix("dequantize_act_1x128: activations", rows, cols);
  fb::require_pointer("dequantize_act_1x128: q", q, rows * cols);
  fb::require_pointer("dequantize_act_1x128: scales", scales, rows * fb::blocks(cols));
  fb::require_pointer("dequantize_act_1x128: output x", x, rows * cols);
  if (rows * cols == 0) return;
  cuda_detail::dequantize_kernel<<<cuda_detail::grid_for(rows * cols, 256), 256, 0, be.stream()>>>(x, q, scales, rows,
                                                                                                  cols, false);
  DSX_CUDA_CHECK_LAUNCH("dequantize_kernel");
}

template <class T>
void dequantize_weight_128x128(cuda& be, T* w, const fp8_e4m3* q, const float* scales, std::int64_t rows,
                               std::int64_t cols) {
  cuda_detail::check_fp8_type<T>();
  namespace fb = fp8_block;
  fb::require_matrix("dequantize_weight_128x128: weight", rows, cols);
  fb::require_pointer("dequantize_weight_128x128: q", q, rows * cols);
  fb::require_pointer("dequantize_weight_128x128: scales", scales, fb::blocks(rows) * fb::blocks(cols));
  fb::require_pointer("dequantize_weight_128x128: output w", w, rows * cols);
  if (rows * cols == 0) return;
  cuda_detail::dequantize_kernel<<<cuda_detail::grid_for(rows * cols, 256), 256, 0, be.stream()>>>(w, q, scales, rows,
                                                                                                  cols, true);
  DSX_CUDA_CHECK_LAUNCH("dequantize_kernel");
}

// C (m, n) = A (m, k) · B (n, k)ᵀ (see the top of this file). Returns the implementation that ran.
template <class T>
fp8_gemm_impl gemm_fp8_block(cuda& be, std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a,
                             const float* a_scales, const fp8_e4m3* b, const float* b_scales, T* c,
                             fp8_gemm_impl impl = fp8_gemm_impl::automatic) {
  cuda_detail::check_fp8_type<T>();
  namespace fb = fp8_block;
  fb::require_matrix("gemm_fp8_block: A (m, k)", m, k);
  fb::require_matrix("gemm_fp8_block: B (n, k)", n, k);
  const std::int64_t kb = fb::blocks(k), nb = fb::blocks(n);
  fb::require_pointer("gemm_fp8_block: A", a, m * k);
  fb::require_pointer("gemm_fp8_block: A scales", a_scales, m * kb);
  fb::require_pointer("gemm_fp8_block: B", b, n * k);
  fb::require_pointer("gemm_fp8_block: B scales", b_scales, nb * kb);
  fb::require_pointer("gemm_fp8_block: C", c, m * n);
  if (m * n == 0) return impl == fp8_gemm_impl::automatic ? fp8_gemm_impl::kernel : impl;

  const auto aligned16 = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool lt_shape = k > 0 && m % 4 == 0 && n % 4 == 0 && k % 16 == 0 && aligned16(a) && aligned16(b) &&
                        aligned16(c) && (n * std::int64_t(sizeof(T))) % 16 == 0;
  if ((impl == fp8_gemm_impl::automatic || impl == fp8_gemm_impl::cublaslt) && lt_shape) {
    const std::int64_t l4 = (kb + 3) / 4 * 4;
    const std::size_t at_bytes = std::size_t(m * kb) * sizeof(float);
    const std::size_t at_padded = (at_bytes + 255) / 256 * 256;
    char* scratch = static_cast<char*>(be.scratch(at_padded + std::size_t(nb * l4) * sizeof(float)));
    float* at = reinterpret_cast<float*>(scratch);
    float* bt = reinterpret_cast<float*>(scratch + at_padded);

    cuda_detail::lt_problem p{};
    p.data = CUDA_R_8F_E4M3;
    p.compute = CUBLAS_COMPUTE_32F;
    p.scale = CUDA_R_32F;
    p.op_a = CUBLAS_OP_T;  // cuBLASLt's A: the weights, stored (k, n) column-major = B (n, k) row-major
    p.op_b = CUBLAS_OP_N;  // cuBLASLt's B: the activations, (k, m) column-major = A (m, k) row-major
    p.m = n;
    p.n = m;
    p.k = k;
    p.lda = k;
    p.ldb = k;
    p.ldc = n;
    p.batch = 1;
    p.align_a = cuda_detail::alignment_of(reinterpret_cast<std::uintptr_t>(b));
    p.align_b = cuda_detail::alignment_of(reinterpret_cast<std::uintptr_t>(a));
    p.align_c = cuda_detail::alignment_of(reinterpret_cast<std::uintptr_t>(c));
    p.fp8_block = true;
    p.out = std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
    p.scale_mode_a = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
    p.scale_mode_b = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    cuda_detail::fp8_lt_scales_kernel<<<cuda_detail::grid_for(m * kb + nb * l4, 256), 256, 0, be.stream()>>>(
        at, bt, a_scales, b_scales, m, nb, kb, l4);
    DSX_CUDA_CHECK_LAUNCH("fp8_lt_scales_kernel");
    if (be.matmul().run_scaled(p, b, bt, a, at, c, be.stream())) return fp8_gemm_impl::cublaslt;
  }
  require(impl != fp8_gemm_impl::cublaslt,
          "gemm_fp8_block: cuBLASLt block scaling cannot run m=" + std::to_string(m) + " n=" + std::to_string(n) +
              " k=" + std::to_string(k) +
              " (it needs m, n multiples of 4, k a positive multiple of 16, 16-byte aligned buffers, a Hopper GPU "
              "and cuBLAS >= 12.9)");
  if (impl == fp8_gemm_impl::automatic || impl == fp8_gemm_impl::wgmma) {
    const bool wgmma_shape = k > 0 && k % 16 == 0 && aligned16(a) && aligned16(b) &&
                             (m + cuda_detail::fp8_wgmma::tile - 1) / cuda_detail::fp8_wgmma::tile <= 65535;
    if (wgmma_shape && cuda_detail::fp8_wgmma_available(be)) {
      cuda_detail::gemm_fp8_wgmma(be, m, n, k, a, a_scales, b, b_scales, c);
      return fp8_gemm_impl::wgmma;
    }
    require(impl != fp8_gemm_impl::wgmma,
            "gemm_fp8_block: the wgmma kernel cannot run m=" + std::to_string(m) + " n=" + std::to_string(n) +
                " k=" + std::to_string(k) +
                " (it needs k a positive multiple of 16, 16-byte aligned A and B, at most 65535 row tiles of "
                "128, a compute capability 9.0 GPU and a build with sm_90a code)");
  }
  cuda_detail::gemm_fp8_block_kernel<<<cuda_detail::grid_for(m * n, 256), 256, 0, be.stream()>>>(m, n, k, a, a_scales,
                                                                                                 b, b_scales, c);
  DSX_CUDA_CHECK_LAUNCH("gemm_fp8_block_kernel");
  return fp8_gemm_impl::kernel;
}

}  // namespace dsx::backend
