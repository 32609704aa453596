// Building blocks of the attention kernels (attention.cuh, attention_backward.cuh, attention_mma.cuh,
// mla_decode_mma.cuh): the problem descriptions the kernels take, the warp tiling, the loaders that stage
// rows of a tensor in shared memory, the two tile products and the online-softmax update of the
// CUDA-core (SIMT) kernels, which run in the accumulation type A = accum_t<T>. The tensor-core kernels
// (attention_mma.cuh) take the same problem descriptions with their own tiling.
//
// Tiling. A block has 4 warps. It owns `rows` = 4 · 4 · R rows of an operand (queries in the forward,
// keys in the dK/dV pass) and walks the other operand in tiles of 32 rows (`cols`). A lane is
// (group g = lane / 8, column c = lane % 8); it owns R consecutive rows (warp · 4R + g · R + i) and, of
// the 32-wide score tile, the columns c + 8j (j < 4), so the 8 lanes of a group share rows and a row's
// max and sum need three shuffles. Accumulators (rows × head dim) are split the same way: lane c owns
// the 16-byte chunks c, c + 8, c + 16, ... of each of its rows, at most MAX / 8 values per row.
//
// Shared memory holds A values. A row of d values takes round_up(d · sizeof(A), 128) + 16 bytes, so
// rows start 16 bytes apart modulo 128: the 8 different rows that the lanes of a group read in one
// 16-byte access fall into different banks. Columns past d up to the next 16 bytes are zero, so the
// products run over whole 16-byte chunks.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend::cuda_detail {

inline constexpr int attn_warps = 4;
inline constexpr int attn_threads = 32 * attn_warps;
inline constexpr int attn_cols = 32;  // rows of the streamed operand per tile: 8 lanes × 4 columns
static_assert(attn_threads == 128 && attn_cols == 32, "the lane layout assumes 4 warps and 32-column tiles");

// A values per 16-byte shared-memory access.
template <class A>
inline constexpr int attn_vec = 16 / int(sizeof(A));
static_assert(attn_vec<float> == 4 && attn_vec<double> == 2);

// Rows per lane for accumulators `acc_cols` wide in total (several accumulators add up): the largest
// R in {4, 2, 1} that keeps them within 64 registers of 32 bits per lane (R · acc_cols / 8 values).
template <class A>
__host__ __device__ constexpr int attn_rows_per_lane(int acc_cols) {
  const int words_per_row = acc_cols / 8 * int(sizeof(A)) / 4;
  int r = 4;
  while (r > 1 && r * words_per_row > 64) r /= 2;
  return r;
}
static_assert(attn_rows_per_lane<float>(128) == 4 && attn_rows_per_lane<float>(256) == 2 &&
              attn_rows_per_lane<float>(512) == 1 && attn_rows_per_lane<double>(128) == 2);

// Elements of A between consecutive rows in shared memory for rows of `dim` values (see the header).
template <class A>
__host__ __device__ constexpr int attn_smem_stride(std::int64_t dim) {
  const std::int64_t bytes = (dim * std::int64_t(sizeof(A)) + 127) / 128 * 128 + 16;
  return int(bytes / std::int64_t(sizeof(A)));
}
static_assert(attn_smem_stride<float>(12) == 36 && attn_smem_stride<float>(192) == 196 &&
              attn_smem_stride<float>(32) == 36 && attn_smem_stride<double>(32) == 34);

// `dim` rounded up to whole 16-byte chunks of A: the extent the tile products run over.
template <class A>
__host__ __device__ constexpr int attn_padded(std::int64_t dim) {
  return int((dim + attn_vec<A> - 1) / attn_vec<A> * attn_vec<A>);
}

// Rows of one tensor as the kernels see them: in group g (b = g / group_heads, h = g % group_heads) row
// r, column d sits at ptr + b·batch_stride + h·head_stride + r·row_stride + d. `vec`: every row start is
// 16-byte aligned and dim is a multiple of 16 / sizeof(T), so rows move as 16-byte loads.
template <class T>
struct attn_rows {
  const T* ptr = nullptr;
  std::int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
  int dim = 0;
  bool vec = false;
};

template <class T>
attn_rows<T> make_attn_rows(const T* ptr, std::int64_t batch_stride, std::int64_t head_stride,
                            std::int64_t row_stride, std::int64_t dim) {
  constexpr std::int64_t w = vec_width<T>;
  attn_rows<T> r{ptr, batch_stride, head_stride, row_stride, int(dim), false};
  r.vec = reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0 && batch_stride % w == 0 && head_stride % w == 0 &&
          row_stride % w == 0 && dim % w == 0;
  return r;
}

// One attention problem for attention_forward_kernel. Groups are independent problems (a (batch, head)
// pair in the forward, a sequence in decoding); in group g, query row r attends to keys 0 ..
// min(limit_base + r / limit_div, keys − 1).
template <class T>
struct attn_forward_params {
  using A = accum_t<T>;
  attn_rows<T> q0, q1;  // query row = [q0 | q1] (q1.dim may be 0)
  attn_rows<T> k0, k1;  // key row = [k0 | k1], laid out like the query
  attn_rows<T> v;       // value rows, unless v_from_k: then the first v_dim columns of the key
  bool v_from_k = false;
  int v_dim = 0;
  T* o = nullptr;  // output row r of group g: o + b·o_batch + h·o_head + r·o_row
  std::int64_t o_batch = 0, o_head = 0, o_row = 0;
  A* lse = nullptr;  // may be null; row r of group g: lse + b·lse_batch + h·lse_head + r
  std::int64_t lse_batch = 0, lse_head = 0;
  std::int64_t groups = 0, group_heads = 1, rows = 0, keys = 0;
  std::int64_t limit_base = 0, limit_div = 1;
  // Key ranges: split z covers keys [z · split_keys, (z + 1) · split_keys). With splits > 1 blocks write
  // part_o: (splits, groups, rows, v_dim) and part_lse: (splits, groups, rows) instead of o and lse.
  int splits = 1;
  std::int64_t split_keys = 0;
  A* part_o = nullptr;
  A* part_lse = nullptr;
  A scale = A(0);
};

// The tensors of attention_backward in the forward layout: group g = b · heads + h, row = token.
template <class T>
struct attn_backward_params {
  using A = accum_t<T>;
  attn_rows<T> q, k, v, dout;
  const A* lse = nullptr;  // (batch, heads, seq)
  const A* dd = nullptr;   // D: (batch, heads, seq)
  T *dq = nullptr, *dk = nullptr, *dv = nullptr;  // like q, k, v
  std::int64_t groups = 0, heads = 0, seq = 0;
  int qk_dim = 0, v_dim = 0;
  A scale = A(0);
};

// Copies rows first .. first + tile_rows − 1 of `src` (group b, h) into dst[r · stride + col0 + d] as A,
// d < src.dim; rows at or past `end` become zeros. All threads of the block take part.
template <class T, class A>
__device__ __forceinline__ void attn_load_rows(A* dst, int stride, int col0, int tile_rows, std::int64_t first,
                                               std::int64_t end, const attn_rows<T>& src, std::int64_t b,
                                               std::int64_t h) {
  if (src.dim == 0) return;
  const T* base = src.ptr + b * src.batch_stride + h * src.head_stride;
  auto rows_loop = [&](auto width) {
    constexpr int w = decltype(width)::value;
    const int chunks = src.dim / w, items = tile_rows * chunks;
#pragma unroll 4
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
      const int r = it / chunks, d = it % chunks * w;
      A* out = dst + r * stride + col0 + d;
      if (first + r < end) {
        const auto x = load<w>(base + (first + r) * src.row_stride + d);
#pragma unroll
        for (int e = 0; e < w; ++e) out[e] = A(x.v[e]);
      } else {
#pragma unroll
        for (int e = 0; e < w; ++e) out[e] = A(0);
      }
    }
  };
  if (src.vec)
    rows_loop(std::integral_constant<int, vec_width<T>>{});
  else
    rows_loop(std::integral_constant<int, 1>{});
}

// Zeroes columns c0 .. c1 − 1 of `rows` rows (the padding the tile products read).
template <class A>
__device__ __forceinline__ void attn_zero_cols(A* dst, int stride, int rows, int c0, int c1) {
  const int n = c1 - c0;
  if (n <= 0) return;
  for (int it = threadIdx.x; it < rows * n; it += blockDim.x) dst[it / n * stride + c0 + it % n] = A(0);
}

template <class A>
__device__ __forceinline__ pack<A, attn_vec<A>> attn_lds(const A* p) {
  return *reinterpret_cast<const pack<A, attn_vec<A>>*>(p);
}

// s[i][j] = Σ_d x[i · x_stride + d] · y[(c + 8j) · y_stride + d] over d < dpad (a multiple of the vector
// width): the lane's R rows of x against its 4 columns of a 32-row tile y, both in shared memory.
template <int R, class A>
__device__ __forceinline__ void tile_nt(A (&s)[R][4], const A* x, int x_stride, const A* y, int y_stride, int dpad) {
  constexpr int V = attn_vec<A>;
  const int c = threadIdx.x % 8;
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) s[i][j] = A(0);
#pragma unroll 1
  for (int d = 0; d < dpad; d += V) {
    pack<A, V> xv[R], yv[4];
#pragma unroll
    for (int i = 0; i < R; ++i) xv[i] = attn_lds(x + i * x_stride + d);
#pragma unroll
    for (int j = 0; j < 4; ++j) yv[j] = attn_lds(y + (c + 8 * j) * y_stride + d);
#pragma unroll
    for (int e = 0; e < V; ++e)
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) s[i][j] += xv[i].v[e] * yv[j].v[e];
  }
}

// acc[i][k][·] += Σ_t p[i · p_stride + t] · v[t · v_stride + (c + 8k) · V + ·] over the 32 tile rows t:
// the lane's R rows of a (rows × 32) tile p against the 32-row tile v, for the lane's 16-byte chunks of
// v's columns below `width` (rounded up to whole chunks).
template <int R, int K, class A>
__device__ __forceinline__ void tile_nn(A (&acc)[R][K][attn_vec<A>], const A* p, int p_stride, const A* v,
                                        int v_stride, int width) {
  constexpr int V = attn_vec<A>;
  const int c = threadIdx.x % 8;
#pragma unroll 2
  for (int t0 = 0; t0 < attn_cols; t0 += V) {
    pack<A, V> pv[R];
#pragma unroll
    for (int i = 0; i < R; ++i) pv[i] = attn_lds(p + i * p_stride + t0);
#pragma unroll
    for (int e = 0; e < V; ++e)
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int col = (c + 8 * k) * V;
        if (col < width) {
          const auto vv = attn_lds(v + (t0 + e) * v_stride + col);
#pragma unroll
          for (int i = 0; i < R; ++i)
#pragma unroll
            for (int u = 0; u < V; ++u) acc[i][k][u] += pv[i].v[e] * vv.v[u];
        }
      }
  }
}

// Max and sum over the 8 lanes of a group (lanes that differ in their low three bits), in a fixed order.
template <class A>
__device__ __forceinline__ A group_max(A v) {
  for (int o = 1; o < 8; o *= 2) {
    const A u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  return v;
}
template <class A>
__device__ __forceinline__ A group_sum(A v) {
  for (int o = 1; o < 8; o *= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Online softmax (Milakov & Gimelshein): a row's running max m and its sum l of exp(s − m) over the
// scores seen so far. `update` folds in a tile whose max is `tile_max` and returns the factor that
// rescales what was accumulated against the old max; `exponent` is the max to subtract from the
// tile's scores. Masked scores are −inf. A row with nothing unmasked yet keeps m = −inf and
// subtracts 0 instead, so exp(−inf − (−inf)) never forms a NaN.
template <class A>
struct online_softmax {
  A m = A(-INFINITY), l = A(0);
  __device__ __forceinline__ A update(A tile_max) {
    const A m_new = tile_max > m ? tile_max : m;
    const A alpha = exp(m - safe(m_new));
    m = m_new;
    l *= alpha;
    return alpha;
  }
  __device__ __forceinline__ A exponent() const { return safe(m); }
  static __device__ __forceinline__ A safe(A x) { return x == A(-INFINITY) ? A(0) : x; }
};

// The opt-in shared-memory limit of the backend's device, and a kernel allowed to use `bytes` of it.
// A kernel needs the attribute only above the default 48 KB.
template <class Kernel>
void attn_prepare_smem(cuda& be, Kernel kernel, std::size_t bytes, const std::string& what) {
  int limit = 0;
  DSX_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, be.device()));
  require(bytes <= std::size_t(limit), what + " needs " + std::to_string(bytes) +
                                           " bytes of shared memory per block, the device allows " +
                                           std::to_string(limit));
  if (bytes > 48 * 1024)
    DSX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// Blocks of a launch over `groups` problems of `rows` rows, `per_block` rows to a block; dsx::error naming
// `what` when a launch's grid cannot hold them.
inline std::int64_t attn_blocks(std::int64_t groups, std::int64_t rows, std::int64_t per_block,
                                const std::string& what) {
  const std::int64_t blocks = groups * ((rows + per_block - 1) / per_block);
  require(blocks <= std::int64_t(0x7fffffff), what + ": " + std::to_string(blocks) + " blocks exceed a launch's grid");
  return blocks;
}

// How a decode launch cuts the cache into key ranges: with fewer than `target_blocks` blocks, ranges of
// whole tiles (at least `min_tiles` each) so that the blocks times the ranges reach the target. Returns
// {ranges, tiles per range}; the ranges depend on the sizes only, so results do not depend on the GPU.
inline std::pair<std::int64_t, std::int64_t> attn_key_split(std::int64_t blocks, std::int64_t key_tiles,
                                                            std::int64_t target_blocks, std::int64_t min_tiles) {
  std::int64_t splits = 1;
  if (blocks < target_blocks)
    splits = std::max<std::int64_t>(1, std::min((target_blocks + blocks - 1) / blocks, key_tiles / min_tiles));
  const std::int64_t per_split = (key_tiles + splits - 1) / splits;
  return {(key_tiles + per_split - 1) / per_split, per_split};
}

// Calls f(std::integral_constant<int, D>{}) for the first D of the list with D ≥ dim, and throws
// dsx::error naming `what` when dim exceeds them all.
template <int... Ds, class F>
void attn_dispatch_dim(std::int64_t dim, const std::string& what, F&& f) {
  bool done = false;
  ((!done && dim <= Ds ? (f(std::integral_constant<int, Ds>{}), done = true) : false), ...);
  if (!done) {
    std::string list;
    ((list += (list.empty() ? "" : ", ") + std::to_string(Ds)), ...);
    throw error(what + " = " + std::to_string(dim) + " exceeds the largest head dimension compiled (buckets " +
                list + ")");
  }
}

}  // namespace dsx::backend::cuda_detail
