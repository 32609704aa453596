// FP8 block scaling on the GPU with the host's signatures and layouts (backend/host/fp8.hpp; the math in
// core/fp8_block.hpp, shared with the host so that quantised bytes and scales are identical):
//   quantize_act_1x128(_transposed) / quantize_weight_128x128(_transposed) / dequantize_act_1x128 /
//   dequantize_weight_128x128, and gemm_fp8: C (m, n) = A (m, k) · B (n, k)ᵀ (+ beta · C), A 1×128-scaled
//   activations, B 128×128-scaled weights or (weight gradients) 1×128-scaled; gemm_fp8_block is the
//   forward form (128×128 blocks, beta 0).
//
// gemm_fp8 runs through cuBLASLt's block scaling (cuBLAS ≥ 12.9, Hopper): in cuBLASLt's column-major
// terms Cᵀ (n, m) = op(B_lt = B)ᵀ · activations with TRANSA = T, TRANSB = N (the "TN" layout FP8
// needs on Hopper: both operands K-contiguous, which the row-major (m, k) and (n, k) buffers are),
// A_SCALE_MODE = BLK128x128_32F for weights (VEC128_32F for a 1×128-scaled B) and B_SCALE_MODE =
// VEC128_32F for the activations (cuBLASLt rejects 128×128 blocks on both operands). cuBLASLt wants the
// scales in its own layouts, so they are first copied into the backend's scratch: 1×128 scales
// transposed to (ceil(k/128), rows) ("N-major"), weight scales as (ceil(n/128), L4) rows with L4 =
// ceil(k/128) rounded up to 4, zero padded. (The 1×128 layout of cuBLASLt's A operand is the
// transposition used for its B, by the symmetry of the two; a GPU has not yet run that form.)
// cuBLASLt further requires m and n multiples of 4, 16-byte aligned operands and K rows (k multiple of 16)
// and C of type f32 or bf16. When any of that fails, or its heuristic offers no algorithm (another GPU,
// an older cuBLAS), the wgmma kernel of fp8_wgmma.cuh runs the forward form on Hopper (builds with sm_90a
// code, k a multiple of 16, 16-byte aligned operands); anything else gets a plain kernel of the reference
// formula: per output element an f32 dot over each 128-wide K block, promoted and scaled into an f32
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

// R = x (rows, cols), or xᵀ when `transposed`, quantised per 1×128 tile of R: one block of 128 threads
// per tile (grid-stride over tiles); thread t owns column 128·b + t of R. The transposed reads are
// strided (one element per row of x): correct, not tuned.
template <class T>
__global__ void quantize_act_kernel(fp8_e4m3* q, float* scales, const T* x, std::int64_t rows, std::int64_t cols,
                                    bool transposed, bool ue8m0) {
  __shared__ float shared[32];
  const std::int64_t r_rows = transposed ? cols : rows, r_cols = transposed ? rows : cols;
  const std::int64_t nb = fp8_block::blocks(r_cols);
  for (std::int64_t tile = blockIdx.x; tile < r_rows * nb; tile += gridDim.x) {
    const std::int64_t r = tile / nb, c = tile % nb * fp8_block::block + threadIdx.x;
    const float v = c < r_cols ? convert<float>(x[transposed ? c * cols + r : r * cols + c]) : 0.0f;
    const float s = fp8_block::scale_of(block_max(fabsf(v), shared), ue8m0);
    if (threadIdx.x == 0) scales[tile] = s;
    if (c < r_cols) q[r * r_cols + c] = fp8_block::quantize(v, s);
  }
}

// R = w (rows, cols), or wᵀ when `transposed`, quantised per 128×128 block of R: one block of 256
// threads per block (grid-stride over blocks).
template <class T>
__global__ void quantize_weight_kernel(fp8_e4m3* q, float* scales, const T* w, std::int64_t rows, std::int64_t cols,
                                       bool transposed, bool ue8m0) {
  __shared__ float shared[32];
  const std::int64_t r_rows = transposed ? cols : rows, r_cols = transposed ? rows : cols;
  const std::int64_t rb = fp8_block::blocks(r_rows), cb = fp8_block::blocks(r_cols);
  for (std::int64_t blk = blockIdx.x; blk < rb * cb; blk += gridDim.x) {
    const std::int64_t r0 = blk / cb * fp8_block::block, c0 = blk % cb * fp8_block::block;
    const std::int64_t h = r_rows - r0 < fp8_block::block ? r_rows - r0 : fp8_block::block;
    const std::int64_t wd = r_cols - c0 < fp8_block::block ? r_cols - c0 : fp8_block::block;
    const auto source = [&](std::int64_t e) {
      const std::int64_t r = r0 + e / wd, c = c0 + e % wd;
      return transposed ? c * cols + r : r * cols + c;
    };
    float amax = 0.0f;
    for (std::int64_t e = threadIdx.x; e < h * wd; e += blockDim.x) amax = fmaxf(amax, fabsf(convert<float>(w[source(e)])));
    const float s = fp8_block::scale_of(block_max(amax, shared), ue8m0);
    if (threadIdx.x == 0) scales[blk] = s;
    for (std::int64_t e = threadIdx.x; e < h * wd; e += blockDim.x)
      q[(r0 + e / wd) * r_cols + c0 + e % wd] = fp8_block::quantize(convert<float>(w[source(e)]), s);
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
__global__ void gemm_fp8_kernel(std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a,
                                const float* a_scales, const fp8_e4m3* b, const float* b_scales,
                                fp8_block::scaling b_mode, float beta, T* c) {
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
      acc += dot * a_scales[i * kb + blk] * b_scales[fp8_block::b_scale_index(b_mode, j, kb, blk)];
    }
    c[e] = convert<T>(beta == 0.0f ? acc : acc + beta * convert<float>(c[e]));
  }
}

// cuBLASLt's scale layouts from dsx's: at (kb, m) = a_s (m, kb)ᵀ; for B in 128×128 blocks bt (nb, l4) =
// b_s (nb, kb), zero padded, and for B in 1×128 tiles bt (kb, n) = b_s (n, kb)ᵀ (nb = n, l4 unused).
static __global__ void fp8_lt_scales_kernel(float* at, float* bt, const float* a_s, const float* b_s, std::int64_t m,
                                            std::int64_t nb, std::int64_t kb, std::int64_t l4, bool b_tiles) {
  const std::int64_t b_total = b_tiles ? nb * kb : nb * l4, total = m * kb + b_total;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    if (e < m * kb) {
      const std::int64_t blk = e / m, i = e % m;
      at[e] = a_s[i * kb + blk];
    } else if (b_tiles) {
      const std::int64_t f = e - m * kb, blk = f / nb, j = f % nb;
      bt[f] = b_s[j * kb + blk];
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

namespace cuda_detail {
// The four quantisations of the host's fp8.hpp: x or xᵀ per 1×128 tile (`weight` false) or w or wᵀ per
// 128×128 block (`weight` true); `what` names the public function in errors.
template <class T>
void quantize(cuda& be, const char* what, fp8_e4m3* q, float* scales, const T* x, std::int64_t rows,
              std::int64_t cols, bool weight, bool transposed, bool ue8m0) {
  check_fp8_type<T>();
  namespace fb = fp8_block;
  const std::int64_t count = fb::check_quantize(what, q, scales, x, rows, cols, weight, transposed);
  if (count == 0) return;
  if (weight) {
    quantize_weight_kernel<<<grid_for(count), 256, 0, be.stream()>>>(q, scales, x, rows, cols, transposed, ue8m0);
    DSX_CUDA_CHECK_LAUNCH("quantize_weight_kernel");
  } else {
    quantize_act_kernel<<<grid_for(count), unsigned(fb::block), 0, be.stream()>>>(q, scales, x, rows, cols,
                                                                                  transposed, ue8m0);
    DSX_CUDA_CHECK_LAUNCH("quantize_act_kernel");
  }
}
}  // namespace cuda_detail

template <class T>
void quantize_act_1x128(cuda& be, fp8_e4m3* q, float* scales, const T* x, std::int64_t rows, std::int64_t cols,
                        bool ue8m0) {
  cuda_detail::quantize(be, "quantize_act_1x128", q, scales, x, rows, cols, false, false, ue8m0);
}
template <class T>
void quantize_act_1x128_transposed(cuda& be, fp8_e4m3* q, float* scales, const T* x, std::int64_t rows,
                                   std::int64_t cols, bool ue8m0) {
  cuda_detail::quantize(be, "quantize_act_1x128_transposed", q, scales, x, rows, cols, false, true, ue8m0);
}
template <class T>
void quantize_weight_128x128(cuda& be, fp8_e4m3* q, float* scales, const T* w, std::int64_t rows, std::int64_t cols,
                             bool ue8m0) {
  cuda_detail::quantize(be, "quantize_weight_128x128", q, scales, w, rows, cols, true, false, ue8m0);
}
template <class T>
void quantize_weight_128x128_transposed(cuda& be, fp8_e4m3* q, float* scales, const T* w, std::int64_t rows,
                                        std::int64_t cols, bool ue8m0) {
  cuda_detail::quantize(be, "quantize_weight_128x128_transposed", q, scales, w, rows, cols, true, true, ue8m0);
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

// C (m, n) = A (m, k) · B (n, k)ᵀ + beta · C, B scaled as `b_mode` says (see the top of this file; with
// beta = 0 C is not read). Returns the implementation that ran. The wgmma kernel runs only the forward
// form (128×128-scaled B, beta 0).
template <class T>
fp8_gemm_impl gemm_fp8(cuda& be, std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a,
                       const float* a_scales, const fp8_e4m3* b, const float* b_scales, fp8_block::scaling b_mode,
                       float beta, T* c, fp8_gemm_impl impl = fp8_gemm_impl::automatic) {
  cuda_detail::check_fp8_type<T>();
  namespace fb = fp8_block;
  fb::require_matrix("gemm_fp8: A (m, k)", m, k);
  fb::require_matrix("gemm_fp8: B (n, k)", n, k);
  const bool b_tiles = b_mode == fb::scaling::tile_1x128;
  const std::int64_t kb = fb::blocks(k), nb = b_tiles ? n : fb::blocks(n);
  fb::require_pointer("gemm_fp8: A", a, m * k);
  fb::require_pointer("gemm_fp8: A scales", a_scales, m * kb);
  fb::require_pointer("gemm_fp8: B", b, n * k);
  fb::require_pointer("gemm_fp8: B scales", b_scales, fb::b_scale_count(b_mode, n, k));
  fb::require_pointer("gemm_fp8: C", c, m * n);
  const auto shape = [&] { return " m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k); };
  if (m * n == 0) return impl == fp8_gemm_impl::automatic ? fp8_gemm_impl::kernel : impl;

  const auto aligned16 = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool lt_shape = k > 0 && m % 4 == 0 && n % 4 == 0 && k % 16 == 0 && aligned16(a) && aligned16(b) &&
                        aligned16(c) && (n * std::int64_t(sizeof(T))) % 16 == 0;
  if ((impl == fp8_gemm_impl::automatic || impl == fp8_gemm_impl::cublaslt) && lt_shape) {
    const std::int64_t l4 = (kb + 3) / 4 * 4;
    const std::size_t at_bytes = std::size_t(m * kb) * sizeof(float);
    const std::size_t at_padded = (at_bytes + 255) / 256 * 256;
    const std::size_t bt_bytes = std::size_t(b_tiles ? nb * kb : nb * l4) * sizeof(float);
    char* scratch = static_cast<char*>(be.scratch(at_padded + bt_bytes));
    float* at = reinterpret_cast<float*>(scratch);
    float* bt = reinterpret_cast<float*>(scratch + at_padded);

    cuda_detail::lt_problem p{};
    p.data = CUDA_R_8F_E4M3;
    p.compute = CUBLAS_COMPUTE_32F;
    p.scale = CUDA_R_32F;
    p.op_a = CUBLAS_OP_T;  // cuBLASLt's A: the B operand, stored (k, n) column-major = B (n, k) row-major
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
    p.scale_mode_a = b_tiles ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
    p.scale_mode_b = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    cuda_detail::fp8_lt_scales_kernel<<<cuda_detail::grid_for(m * kb + std::int64_t(bt_bytes / sizeof(float)), 256),
                                        256, 0, be.stream()>>>(at, bt, a_scales, b_scales, m, nb, kb, l4, b_tiles);
    DSX_CUDA_CHECK_LAUNCH("fp8_lt_scales_kernel");
    if (be.matmul().run_scaled(p, b, bt, a, at, beta, c, be.stream())) return fp8_gemm_impl::cublaslt;
  }
  require(impl != fp8_gemm_impl::cublaslt,
          "gemm_fp8: cuBLASLt block scaling cannot run" + shape() +
              " (it needs m, n multiples of 4, k a positive multiple of 16, 16-byte aligned buffers, a Hopper GPU "
              "and cuBLAS >= 12.9)");
  if (impl == fp8_gemm_impl::automatic || impl == fp8_gemm_impl::wgmma) {
    const bool wgmma_shape = !b_tiles && beta == 0.0f && k > 0 && k % 16 == 0 && aligned16(a) && aligned16(b) &&
                             (m + cuda_detail::fp8_wgmma::tile - 1) / cuda_detail::fp8_wgmma::tile <= 65535;
    if (wgmma_shape && cuda_detail::fp8_wgmma_available(be)) {
      cuda_detail::gemm_fp8_wgmma(be, m, n, k, a, a_scales, b, b_scales, c);
      return fp8_gemm_impl::wgmma;
    }
    require(impl != fp8_gemm_impl::wgmma,
            "gemm_fp8: the wgmma kernel cannot run" + shape() +
                " (it needs B in 128x128 blocks, beta 0, k a positive multiple of 16, 16-byte aligned A and B, at "
                "most 65535 row tiles of 128, a compute capability 9.0 GPU and a build with sm_90a code)");
  }
  cuda_detail::gemm_fp8_kernel<<<cuda_detail::grid_for(m * n, 256), 256, 0, be.stream()>>>(
      m, n, k, a, a_scales, b, b_scales, b_mode, beta, c);
  DSX_CUDA_CHECK_LAUNCH("gemm_fp8_kernel");
  return fp8_gemm_impl::kernel;
}

// C (m, n) = A (m, k) · B (n, k)ᵀ from 1×128-scaled activations A and 128×128-scaled weights B.
template <class T>
fp8_gemm_impl gemm_fp8_block(cuda& be, std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a,
                             const float* a_scales, const fp8_e4m3* b, const float* b_scales, T* c,
                             fp8_gemm_impl impl = fp8_gemm_impl::automatic) {
  return gemm_fp8(be, m, n, k, a, a_scales, b, b_scales, fp8_block::scaling::block_128x128, 0.0f, c, impl);
}

}  // namespace dsx::backend
