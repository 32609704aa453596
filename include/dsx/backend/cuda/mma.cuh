// Warp-level tensor-core building blocks (sm_80 and later, so sm_90 too): the bf16 m16n8k16 matrix
// product with f32 accumulation, the ldmatrix loads that fill its operand fragments from shared
// memory, and 16-byte asynchronous global-to-shared copies (cp.async) for double-buffered tiles.
//
// Fragment layouts of mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, with lane = 4·g + t
// (g = lane / 4 in 0..7, t = lane % 4); every register holds two consecutive bf16 (low half first):
//   A (16 × 16, row-major)  a[0]: (g, 2t..2t+1)  a[1]: (g+8, 2t..)  a[2]: (g, 2t+8..)  a[3]: (g+8, 2t+8..)
//   B (16 × 8, k × n)       b[0]: (k = 2t..2t+1, n = g)            b[1]: (k = 2t+8.., n = g)
//   C (16 × 8, f32)         c[0], c[1]: (g, 2t), (g, 2t+1)          c[2], c[3]: (g+8, 2t), (g+8, 2t+1)
// The C fragments of two neighbouring n-tiles (columns 0..7 and 8..15), rounded to bf16, are exactly
// the A fragment of the 16 × 16 block they form; flash attention uses this to feed P to P·V from
// registers.
//
// ldmatrix.x4 loads four 8 × 8 bf16 matrices: lane i gives the shared address of row i % 8 of matrix
// i / 8, and register j receives, for matrix j, the elements (row lane / 4, columns 2·(lane % 4) + 0, 1);
// with .trans it receives (rows 2·(lane % 4) + 0, 1, column lane / 4) instead. Row addresses must be
// 16-byte aligned.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsx::backend::cuda_detail {

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return std::uint32_t(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

// d += a · b on one 16 × 8 tile (bf16 operands, f32 accumulation).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                         std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to nearest-even bf16 in one register, `lo` in the low half.
__device__ __forceinline__ std::uint32_t pack_bf16(float lo, float hi) {
  std::uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// 16 bytes from global to shared memory without passing through registers; with `valid` false the
// destination is filled with zeros and the source is not read.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace dsx::backend::cuda_detail
