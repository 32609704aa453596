// The FP8 block-scaled GEMM C (m, n) = A (m, k) · B (n, k)ᵀ on Hopper's warpgroup tensor cores (wgmma,
// sm_90a): gemm_fp8_block's kernel where cuBLASLt does not run the problem. A: activations with 1×128
// f32 scales a_s (m, ceil(k/128)); B: weights with 128×128 f32 scales b_s (ceil(n/128), ceil(k/128)); the
// layouts and the formula are backend/host/fp8.hpp's:
//   C[i, j] = Σ_blk (Σ_{t in blk} A[i, t] · B[j, t]) · a_s[i, blk] · b_s[j / 128, blk].
//
// One block of 256 threads (two warpgroups) computes a 128 × 128 tile of C; warpgroup w owns rows
// 64·w..64·w+63. The K loop steps one scale block (128) at a time: four m64n128k32 wgmmas sum the block
// into `part` in the tensor cores' own accumulation, and the block is then promoted into the f32
// accumulator with its two scales, as DeepSeek-V3 §3.3.2 prescribes (promotion at most every 128 K
// elements). Operand tiles come from global memory through a 4-stage cp.async pipeline (all 256 threads
// load); each stage holds a 128 × 128-byte tile of A and one of B in the 128-byte swizzled K-major layout
// that the wgmma descriptors describe: the 16-byte chunk c of row r sits at chunk c ^ (r % 8) of the row,
// rows 128 bytes apart, 8-row groups 1024 bytes apart, every tile 1024-byte aligned. Rows and K columns
// outside the matrices are zero-filled, so partial tiles and a partial last K block need no other care;
// k must be a multiple of 16 (whole 16-byte chunks, 16-byte aligned rows).
//
// Compiled only for sm_90a (the `a` architecture is what allows wgmma); other targets get an empty body
// and fp8_wgmma_available says no, so the dispatcher never launches it there.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/backend/cuda/mma.cuh"
#include "dsx/core/numeric.hpp"

namespace dsx::backend::cuda_detail {

namespace fp8_wgmma {
constexpr int tile = 128;                       // rows of A and of B per block, and K per stage (one scale block)
constexpr int stages = 4;                       // cp.async pipeline depth
constexpr int threads = 256;                    // two warpgroups
constexpr int tile_bytes = tile * tile;         // one E4M3 operand tile
constexpr int stage_bytes = 2 * tile_bytes;     // A and B
constexpr int smem_bytes = stages * stage_bytes + 1024;  // + room to align the first tile to 1024 bytes
}  // namespace fp8_wgmma

// The shared-memory matrix descriptor of a K-major operand in the 128-byte swizzle: start address,
// leading byte offset (unused by swizzled K-major layouts: 1), stride byte offset 1024 (from one 8-row
// group to the next), base offset 0 (tiles are 1024-byte aligned), swizzle mode 1 (128 bytes).
__device__ __forceinline__ std::uint64_t wgmma_desc_k_major_sw128(std::uint32_t smem_address) {
  return std::uint64_t((smem_address & 0x3FFFF) >> 4) | (std::uint64_t(1) << 16) |
         (std::uint64_t(1024 >> 4) << 32) | (std::uint64_t(1) << 62);
}

// Orders this thread's generic-proxy writes to shared memory (its completed cp.async copies) before
// the async proxy's reads (the wgmma operand fetches) that follow a barrier.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads or writes of an accumulator register across wgmma's
// asynchronous window (the register is touched by the tensor cores between arrive and wait).
__device__ __forceinline__ void wgmma_fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// d (= or +=) a · b for one 64 × 128 × 32 step of a warpgroup: E4M3 operands from shared memory
// (descriptors), f32 accumulators in the wgmma m64n128 register layout. accumulate = false overwrites d.
__device__ __forceinline__ void wgmma_m64n128k32_e4m3(float (&d)[64], std::uint64_t desc_a, std::uint64_t desc_b,
                                                      bool accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
      "%0, %1, %2, %3, %4, %5, %6, %7,"
      "%8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23,"
      "%24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39,"
      "%40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55,"
      "%56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));
}

template <class T>
__global__ void __launch_bounds__(fp8_wgmma::threads, 1)
    gemm_fp8_wgmma_kernel(std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a, const float* a_scales,
                          const fp8_e4m3* b, const float* b_scales, T* c) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  namespace w = fp8_wgmma;
  extern __shared__ __align__(16) unsigned char fp8_wgmma_smem[];
  const std::uint32_t raw = smem_addr(fp8_wgmma_smem);
  unsigned char* smem = fp8_wgmma_smem + (((raw + 1023u) & ~1023u) - raw);

  const std::int64_t kb = (k + w::tile - 1) / w::tile;
  const std::int64_t m0 = std::int64_t(blockIdx.y) * w::tile, n0 = std::int64_t(blockIdx.x) * w::tile;
  const int tid = int(threadIdx.x), wg = tid / 128, warp = tid % 128 / 32, lane = tid % 32;

  // K block `blk` into stage blk % stages (nothing past the last block); one commit group per call either
  // way, so that the group count stays uniform. 2 tiles × 128 rows × 8 chunks, 8 per thread; eight
  // neighbouring threads read one row's 128 bytes.
  const auto load = [&](std::int64_t blk) {
    if (blk < kb) {
      unsigned char* stage = smem + (blk % w::stages) * w::stage_bytes;
      const std::int64_t k0 = blk * w::tile;
      for (int i = tid; i < 2 * w::tile * 8; i += w::threads) {
        const int which = i / (w::tile * 8), r = i / 8 % w::tile, chunk = i % 8;
        const std::int64_t row = (which == 0 ? m0 : n0) + r, col = k0 + chunk * 16;
        const bool valid = row < (which == 0 ? m : n) && col < k;
        const fp8_e4m3* src = which == 0 ? a : b;
        cp_async_16(stage + which * w::tile_bytes + r * 128 + ((chunk ^ (r & 7)) * 16),
                    valid ? src + row * k + col : src, valid);
      }
    }
    cp_async_commit();
  };

  float acc[64], part[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = part[i] = 0.0f;

#pragma unroll
  for (int s = 0; s < w::stages - 1; ++s) load(s);

  // This thread's rows of the wgmma accumulator layout: row0 and row0 + 8; columns 8·j + 2·(lane % 4) + 0, 1.
  const std::int64_t row0 = m0 + wg * 64 + warp * 16 + lane / 4, row1 = row0 + 8;
  const float* b_scale_row = b_scales + (n0 / w::tile) * kb;

  for (std::int64_t blk = 0; blk < kb; ++blk) {
    cp_async_wait<w::stages - 2>();  // this thread's copies of block blk have landed
    fence_proxy_async_shared();
    __syncthreads();  // everyone's copies of block blk are visible; everyone is done with block blk - 1
    load(blk + w::stages - 1);  // into the stage block blk - 1 used

    const unsigned char* stage = smem + (blk % w::stages) * w::stage_bytes;
    const std::uint32_t a_tile = smem_addr(stage + wg * 64 * 128), b_tile = smem_addr(stage + w::tile_bytes);
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma_fence_operand(part[i]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < w::tile / 32; ++kk)
      wgmma_m64n128k32_e4m3(part, wgmma_desc_k_major_sw128(a_tile + kk * 32),
                            wgmma_desc_k_major_sw128(b_tile + kk * 32), kk > 0);
    wgmma_commit();
    // The scales load while the tensor cores work.
    const float sb = b_scale_row[blk];
    const float s0 = row0 < m ? a_scales[row0 * kb + blk] * sb : 0.0f;
    const float s1 = row1 < m ? a_scales[row1 * kb + blk] * sb : 0.0f;
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma_fence_operand(part[i]);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      acc[4 * j + 0] += part[4 * j + 0] * s0;
      acc[4 * j + 1] += part[4 * j + 1] * s0;
      acc[4 * j + 2] += part[4 * j + 2] * s1;
      acc[4 * j + 3] += part[4 * j + 3] * s1;
    }
  }
  cp_async_wait<0>();  // the empty trailing groups

#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const std::int64_t col = n0 + 8 * j + 2 * (lane % 4);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const std::int64_t row = h == 0 ? row0 : row1;
      if (row >= m) continue;
      if (col < n) c[row * n + col] = convert<T>(acc[4 * j + 2 * h]);
      if (col + 1 < n) c[row * n + col + 1] = convert<T>(acc[4 * j + 2 * h + 1]);
    }
  }
#else
  (void)m, (void)n, (void)k, (void)a, (void)a_scales, (void)b, (void)b_scales, (void)c;
#endif
}

// 1 when the device code of this build was compiled for sm_90a (the wgmma kernel above has a body).
// static: a non-template kernel defined in a header, one copy per translation unit.
static __global__ void fp8_wgmma_probe_kernel(int* out) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

// Whether gemm_fp8_wgmma can run on the backend's device: the device is compute capability 9.0 and this
// binary carries sm_90a code for it. Probed once per device (a one-integer kernel) and remembered.
inline bool fp8_wgmma_available(cuda& be) {
  static std::mutex lock;
  static std::map<int, bool> known;
  const std::lock_guard<std::mutex> guard(lock);
  if (const auto it = known.find(be.device()); it != known.end()) return it->second;
  cudaDeviceProp prop{};
  DSX_CUDA_CHECK(cudaGetDeviceProperties(&prop, be.device()));
  bool available = false;
  if (prop.major == 9 && prop.minor == 0) {
    int* flag = nullptr;
    DSX_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    int value = 0;
    fp8_wgmma_probe_kernel<<<1, 1, 0, be.stream()>>>(flag);
    // No image for this device (a build without sm_90 code) is an answer, not a failure.
    const cudaError_t launched = cudaGetLastError();
    if (launched == cudaSuccess) {
      const cudaError_t copied = cudaMemcpyAsync(&value, flag, sizeof(int), cudaMemcpyDeviceToHost, be.stream());
      const cudaError_t synced = cudaStreamSynchronize(be.stream());
      cudaFree(flag);
      check_cuda(copied, "cudaMemcpyAsync(wgmma probe)", __FILE__, __LINE__);
      check_cuda(synced, "cudaStreamSynchronize(wgmma probe)", __FILE__, __LINE__);
    } else {
      cudaFree(flag);
    }
    available = value == 1;
  }
  known.emplace(be.device(), available);
  return available;
}

// Enqueues the kernel; the caller has checked fp8_wgmma_available, k % 16 == 0, k > 0 and 16-byte
// aligned A and B.
template <class T>
void gemm_fp8_wgmma(cuda& be, std::int64_t m, std::int64_t n, std::int64_t k, const fp8_e4m3* a, const float* a_scales,
                    const fp8_e4m3* b, const float* b_scales, T* c) {
  namespace w = fp8_wgmma;
  // Every launch: the attribute belongs to the current device, and setting it costs no device work.
  DSX_CUDA_CHECK(cudaFuncSetAttribute(gemm_fp8_wgmma_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      w::smem_bytes));
  const dim3 grid(unsigned((n + w::tile - 1) / w::tile), unsigned((m + w::tile - 1) / w::tile));
  gemm_fp8_wgmma_kernel<T><<<grid, w::threads, w::smem_bytes, be.stream()>>>(m, n, k, a, a_scales, b, b_scales, c);
  DSX_CUDA_CHECK_LAUNCH("gemm_fp8_wgmma_kernel");
}

}  // namespace dsx::backend::cuda_detail
