// Causal attention and MLA's latent-cache decoding on the GPU, with host's signatures and contracts
// (backend/host/attention.hpp): attention_forward, attention_backward (attention_backward.cuh),
// mla_decode_attention, mla_expand_kv, mla_expand_kv_backward and mla_cache_append.
//
// attention_forward is a fused flash-attention kernel: a block owns a tile of query rows of one
// (batch, head), stages tiles of 32 keys and values in shared memory, keeps the running max and sum of
// every row (online softmax) and the output in registers, skips the key tiles that the causal mask
// hides entirely, and writes o and lse. The (seq × seq) scores never reach device memory. The tiling
// and the tile products are in attention_tile.cuh.
//
// mla_decode_attention is the same kernel on a different problem: the rows of a block are
// (new token, head) pairs of one sequence, the key is the cached [c_KV | k_pe] of a position and the
// value its c_KV (the first kv_lora columns of the key tile already in shared memory), so every cache
// tile that a block loads serves all its heads. With few blocks (small batch, long cache) the cache is
// split into ranges that separate blocks attend over; each writes its rows' partial output and lse in
// f32/f64 and a second kernel merges the ranges in a fixed order, so the result does not depend on
// scheduling.
//
// Bytes mla_decode_attention moves from device memory, per call (the bandwidth its benchmark counts):
//   cache     batch · (start_pos + new_tokens) · (kv_lora + rope) · sizeof(T), read once per block of
//             rows: ⌈new_tokens · heads / rows_per_block⌉ times per sequence (rows_per_block = 16 at
//             kv_lora 512, 32 at 256, 64 up to 128), the repeats served by L2 when those blocks run
//             together
//   queries   batch · new_tokens · heads · (kv_lora + rope) · sizeof(T)
//   output    batch · new_tokens · heads · kv_lora · sizeof(T)
//   splits    when the cache is split into S ranges: S · batch · new_tokens · heads · (kv_lora + 1)
//             accumulator values written and read back once
// The ideal is the cache term; at DeepSeek-V3 size (kv_lora 512, rope 64, bf16) 1152 bytes per cached
// position and sequence.
//
// Numerics: scores, softmax and accumulation in accum_t<T> (f32 for bf16); exp and log are the
// accurate library functions. Work is divided by sizes only, never by the device, and every sum runs
// in a fixed order: results are bitwise reproducible from run to run.
//
// Two implementations. bf16 takes tensor cores where the shapes allow: training attention in
// attention_mma.cuh (qk ≤ 256, v ≤ 128), decoding in mla_decode_mma.cuh (kv_lora 64 to 512); the
// kernels in this file and attention_tile.cuh are CUDA-core (SIMT) code that serves f32, f64 and the
// other shapes, and is the tensor-core kernels' fallback.
//
// Measured on one H100 SXM (CUDA 13.0, bf16, 2026-11-23; benchmarks/results): training attention at
// qk 192 / v 128, batch 1 × 16 heads × seq 4096: forward 0.45 ms on tensor cores (189 TFLOP/s of causal
// attention) against 4.6 ms for the CUDA-core kernel; backward 1.65 ms (136 TFLOP/s) against 23.4 ms.
// Decode, kv_lora 512 / rope 64, 128 heads, batch 64, 4096 cached positions: 0.315 ms (1017 GB/s,
// 34 % of copy bandwidth; 232 TFLOP/s) against 6.2 ms for the CUDA-core kernel.
//
// The CUDA-core decode is bound by shared-memory reads and arithmetic: it does 2 · heads · (2 ·
// kv_lora + rope) / ((kv_lora + rope) · sizeof(T)) flops per cache byte, 242 at 128 heads in bf16, so
// only tensor cores approach memory bandwidth there (as FlashMLA does with wgmma).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "dsx/backend/cuda/attention_mma.cuh"
#include "dsx/backend/cuda/attention_tile.cuh"
#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/backend/cuda/mla_decode_mma.cuh"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

// Shared memory of attention_forward_kernel in elements of A: query tile, key tile, value tile (unless
// the values are the key's leading columns) and the probability tile.
template <class A>
std::size_t attn_forward_smem(int rows, int qk_dim, int v_dim, bool v_from_k) {
  const std::size_t sq = std::size_t(attn_smem_stride<A>(qk_dim));
  const std::size_t sv = v_from_k ? 0 : std::size_t(attn_smem_stride<A>(v_dim));
  const std::size_t sp = std::size_t(attn_smem_stride<A>(attn_cols));
  return (std::size_t(rows) * sq + attn_cols * sq + attn_cols * sv + std::size_t(rows) * sp) * sizeof(A);
}

// Rows per block of attention_forward_kernel for value width bucket DV.
template <class A, int DV>
inline constexpr int attn_forward_rows = attn_warps * 4 * attn_rows_per_lane<A>(DV);
static_assert(attn_forward_rows<float, 128> == 64 && attn_forward_rows<float, 512> == 16);

template <class T, int DV>
__global__ void __launch_bounds__(attn_threads, 1) attention_forward_kernel(const attn_forward_params<T> p) {
  using A = accum_t<T>;
  constexpr int V = attn_vec<A>, R = attn_rows_per_lane<A>(DV), K = DV / (8 * V);
  constexpr int WR = 4 * R, BR = attn_warps * WR;
  static_assert(K * 8 * V == DV, "the value bucket must be a whole number of 16-byte chunks per lane");
  extern __shared__ __align__(16) unsigned char attn_smem[];

  const int qk_dim = p.q0.dim + p.q1.dim, qk_pad = attn_padded<A>(qk_dim);
  const int sq = attn_smem_stride<A>(qk_dim), sp = attn_smem_stride<A>(attn_cols);
  const int sv = p.v_from_k ? sq : attn_smem_stride<A>(p.v_dim);
  A* q_s = reinterpret_cast<A*>(attn_smem);  // (BR, sq)
  A* k_s = q_s + BR * sq;                     // (32, sq)
  A* v_s = p.v_from_k ? k_s : k_s + attn_cols * sq;  // (32, sv)
  A* p_s = (p.v_from_k ? k_s : v_s) + attn_cols * (p.v_from_k ? sq : sv);  // (BR, sp)

  // Blocks in order of decreasing work: the last row tiles of every group first.
  const std::int64_t row_tiles = (p.rows + BR - 1) / BR;
  const std::int64_t tile = row_tiles - 1 - std::int64_t(blockIdx.x) / p.groups;
  const std::int64_t g = std::int64_t(blockIdx.x) % p.groups;
  const std::int64_t b = g / p.group_heads, h = g % p.group_heads;
  const std::int64_t row0 = tile * BR;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, c = lane % 8;
  const int my_row = warp * WR + lane / 8 * R;  // the lane's first row within the tile

  auto limit = [&](std::int64_t r) {
    const std::int64_t l = p.limit_base + r / p.limit_div;
    return l < p.keys - 1 ? l : p.keys - 1;
  };
  const std::int64_t block_end = limit((row0 + BR < p.rows ? row0 + BR : p.rows) - 1) + 1;
  const std::int64_t kbeg = std::int64_t(blockIdx.y) * p.split_keys;
  const std::int64_t kend = kbeg + p.split_keys < block_end ? kbeg + p.split_keys : block_end;
  const std::int64_t warp_first = row0 + warp * WR;
  const std::int64_t warp_last = (warp_first + WR < p.rows ? warp_first + WR : p.rows) - 1;
  const std::int64_t warp_limit = warp_first < p.rows ? limit(warp_last) : -1;  // the warp's last visible key
  std::int64_t lim[R];
#pragma unroll
  for (int i = 0; i < R; ++i) lim[i] = row0 + my_row + i < p.rows ? limit(row0 + my_row + i) : -1;

  attn_zero_cols(q_s, sq, BR, qk_dim, qk_pad);
  attn_zero_cols(k_s, sq, attn_cols, qk_dim, qk_pad);
  if (!p.v_from_k) attn_zero_cols(v_s, sv, attn_cols, p.v_dim, attn_padded<A>(p.v_dim));
  attn_load_rows(q_s, sq, 0, BR, row0, p.rows, p.q0, b, h);
  attn_load_rows(q_s, sq, p.q0.dim, BR, row0, p.rows, p.q1, b, h);

  online_softmax<A> sm[R];
  A acc[R][K][V];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
      for (int u = 0; u < V; ++u) acc[i][k][u] = A(0);

  for (std::int64_t k0 = kbeg; k0 < kend; k0 += attn_cols) {
    __syncthreads();  // the previous tile's readers are done
    attn_load_rows(k_s, sq, 0, attn_cols, k0, kend, p.k0, b, h);
    attn_load_rows(k_s, sq, p.k0.dim, attn_cols, k0, kend, p.k1, b, h);
    if (!p.v_from_k) attn_load_rows(v_s, sv, 0, attn_cols, k0, kend, p.v, b, h);
    __syncthreads();
    if (k0 > warp_limit) continue;  // every row of this warp is before the tile (causal)

    A s[R][4];
    tile_nt(s, q_s + my_row * sq, sq, k_s, sq, qk_pad);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      A tile_max = A(-INFINITY);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const std::int64_t key = k0 + c + 8 * j;
        s[i][j] = key <= lim[i] && key < kend ? s[i][j] * p.scale : A(-INFINITY);
        tile_max = s[i][j] > tile_max ? s[i][j] : tile_max;
      }
      const A alpha = sm[i].update(group_max(tile_max));
#pragma unroll
      for (int k = 0; k < K; ++k)
#pragma unroll
        for (int u = 0; u < V; ++u) acc[i][k][u] *= alpha;
      const A e = sm[i].exponent();
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const A pr = exp(s[i][j] - e);
        sm[i].l += pr;
        p_s[(my_row + i) * sp + c + 8 * j] = pr;
      }
    }
    __syncwarp();
    tile_nn(acc, p_s + my_row * sp, sp, v_s, sv, p.v_dim);
  }

  A l[R];
#pragma unroll
  for (int i = 0; i < R; ++i) l[i] = group_sum(sm[i].l);  // every lane takes part in the shuffles
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const std::int64_t r = row0 + my_row + i;
    if (r >= p.rows) continue;
    if (p.splits == 1) {
      T* out = p.o + b * p.o_batch + h * p.o_head + r * p.o_row;
#pragma unroll
      for (int k = 0; k < K; ++k)
#pragma unroll
        for (int u = 0; u < V; ++u) {
          const int col = (c + 8 * k) * V + u;
          if (col < p.v_dim) out[col] = T(acc[i][k][u] / l[i]);
        }
      if (p.lse && c == 0) p.lse[b * p.lse_batch + h * p.lse_head + r] = sm[i].m + log(l[i]);
    } else {
      // A range with no visible key for this row leaves l = 0: weight zero in the merge, no NaN.
      const std::int64_t part = (std::int64_t(blockIdx.y) * p.groups + g) * p.rows + r;
      A* out = p.part_o + part * p.v_dim;
#pragma unroll
      for (int k = 0; k < K; ++k)
#pragma unroll
        for (int u = 0; u < V; ++u) {
          const int col = (c + 8 * k) * V + u;
          if (col < p.v_dim) out[col] = l[i] > A(0) ? acc[i][k][u] / l[i] : A(0);
        }
      if (c == 0) p.part_lse[part] = l[i] > A(0) ? sm[i].m + log(l[i]) : A(-INFINITY);
    }
  }
}

// Merges the key ranges of a split launch: o = Σ_z w_z o_z / Σ_z w_z with w_z = exp(lse_z − max lse),
// z in order; lse = max + log Σ w_z. One thread per output element (rows have few elements and there are
// many ranges, so a warp per row would leave the GPU nearly idle); the row's weights are recomputed by
// each of its threads from part_lse, which stays in L1.
template <class T>
__global__ void attention_combine_kernel(const attn_forward_params<T> p) {
  using A = accum_t<T>;
  const std::int64_t total = p.groups * p.rows;  // rows of all groups
  for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total * p.v_dim;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t w = e / p.v_dim, col = e % p.v_dim;
    const std::int64_t g = w / p.rows, r = w % p.rows, b = g / p.group_heads, h = g % p.group_heads;
    A mx = A(-INFINITY);
    for (int z = 0; z < p.splits; ++z) {
      const A v = p.part_lse[z * total + w];
      mx = v > mx ? v : mx;
    }
    A sum = 0, acc = 0;
#pragma unroll 4
    for (int z = 0; z < p.splits; ++z) {
      const A wz = exp(p.part_lse[z * total + w] - mx);
      sum += wz;
      acc += wz * p.part_o[(z * total + w) * p.v_dim + col];
    }
    p.o[b * p.o_batch + h * p.o_head + r * p.o_row + col] = T(acc / sum);
    if (p.lse && col == 0) p.lse[b * p.lse_batch + h * p.lse_head + r] = mx + log(sum);
  }
}

// Blocks of a decode launch before splitting the keys: enough to give each of the 132 SMs of an H100 or
// H200 about two. A constant, not the device's count, so that the split (and the rounding) is the same
// on every GPU.
inline constexpr std::int64_t attn_target_blocks = 256;
// Fewest key tiles (of 32) per range: a range shorter than 128 keys costs more in the merge than it saves.
inline constexpr std::int64_t attn_min_split_tiles = 4;
static_assert(attn_min_split_tiles * attn_cols == 128);

template <class T, int DV>
void attn_launch_forward(cuda& be, attn_forward_params<T> p, bool allow_split, const char* what) {
  using A = accum_t<T>;
  constexpr int BR = attn_forward_rows<A, DV>;
  const std::int64_t blocks = attn_blocks(p.groups, p.rows, BR, what);
  const std::int64_t key_tiles = (p.keys + attn_cols - 1) / attn_cols;
  const auto split = allow_split ? attn_key_split(blocks, key_tiles, attn_target_blocks, attn_min_split_tiles)
                                 : std::pair<std::int64_t, std::int64_t>{1, key_tiles};
  const std::int64_t splits = split.first, tiles_per_split = split.second;
  p.splits = int(splits);
  p.split_keys = tiles_per_split * attn_cols;
  if (splits > 1) {
    // One allocation for both partial arrays; the outputs (v_dim values per row) first, 256-aligned.
    const std::size_t part_rows = std::size_t(splits * p.groups * p.rows);
    const std::size_t o_bytes = (part_rows * std::size_t(p.v_dim) * sizeof(A) + 255) / 256 * 256;
    auto* base = static_cast<unsigned char*>(be.scratch(o_bytes + part_rows * sizeof(A)));
    p.part_o = reinterpret_cast<A*>(base);
    p.part_lse = reinterpret_cast<A*>(base + o_bytes);
  }
  const std::size_t smem = attn_forward_smem<A>(BR, p.q0.dim + p.q1.dim, p.v_dim, p.v_from_k);
  attn_prepare_smem(be, attention_forward_kernel<T, DV>, smem, what);
  attention_forward_kernel<T, DV><<<dim3(unsigned(blocks), unsigned(splits)), attn_threads, smem, be.stream()>>>(p);
  DSX_CUDA_CHECK_LAUNCH("attention_forward_kernel");
  if (splits > 1) {
    constexpr unsigned threads = 256;
    attention_combine_kernel<T><<<grid_for(p.groups * p.rows * p.v_dim, threads), threads, 0, be.stream()>>>(p);
    DSX_CUDA_CHECK_LAUNCH("attention_combine_kernel");
  }
}

// Checks shared by the primitives: sizes must not be negative (zero means nothing to do).
inline void attn_require_non_negative(const char* what,
                                      std::initializer_list<std::pair<const char*, std::int64_t>> sizes) {
  for (const auto& [name, value] : sizes)
    require(value >= 0, std::string(what) + ": " + name + " must not be negative, got " + std::to_string(value));
}

// The gathers move W elements at a time (16 bytes when every row start and width allows it, else 1):
// one thread per W-element chunk of an output row, so the index arithmetic is paid once per chunk.
// Row r = t · heads + h of k is [kv[r, 0 .. nope) | k_pe[t]], of v kv[r, nope ..).
template <class T, int W>
__global__ void mla_expand_kv_kernel(T* k, T* v, const T* kv, const T* k_pe, std::int64_t pe_stride,
                                     std::int64_t rows, std::int64_t heads, std::int64_t nope, std::int64_t rope,
                                     std::int64_t v_dim) {
  const std::int64_t qk = nope + rope, kv_row = nope + v_dim, per_row = (qk + v_dim) / W;
  for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * per_row;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t row = e / per_row, d = e % per_row * W;
    if (d < nope)
      store<W>(k + row * qk + d, load<W>(kv + row * kv_row + d));
    else if (d < qk)
      store<W>(k + row * qk + d, load<W>(k_pe + row / heads * pe_stride + d - nope));
    else
      store<W>(v + row * v_dim + d - qk, load<W>(kv + row * kv_row + nope + d - qk));
  }
}

// Row r of dkv is [dk[r, 0 .. nope) | dv[r]]; d_pe[t] is the sum over heads of dk[t · heads + h, nope ..),
// added in head order in accum_t<T> as the host does (so the bits agree).
template <class T, int W>
__global__ void mla_expand_kv_backward_kernel(T* dkv, T* d_pe, std::int64_t pe_stride, const T* dk, const T* dv,
                                              std::int64_t tokens, std::int64_t heads, std::int64_t nope,
                                              std::int64_t rope, std::int64_t v_dim) {
  using A = accum_t<T>;
  const std::int64_t qk = nope + rope, kv_row = nope + v_dim, per_row = kv_row / W;
  const std::int64_t copies = tokens * heads * per_row, total = copies + tokens * (rope / W);
  for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    if (e < copies) {
      const std::int64_t row = e / per_row, d = e % per_row * W;
      store<W>(dkv + row * kv_row + d, d < nope ? load<W>(dk + row * qk + d) : load<W>(dv + row * v_dim + d - nope));
    } else {
      const std::int64_t f = e - copies, t = f / (rope / W), d = f % (rope / W) * W;
      A s[W] = {};
      for (std::int64_t h = 0; h < heads; ++h) {
        const auto x = load<W>(dk + (t * heads + h) * qk + nope + d);
#pragma unroll
        for (int u = 0; u < W; ++u) s[u] += A(x.v[u]);
      }
      pack<T, W> out;
#pragma unroll
      for (int u = 0; u < W; ++u) out.v[u] = T(s[u]);
      store<W>(d_pe + t * pe_stride + d, out);
    }
  }
}

// Calls f(integral_constant<W>) with W = vec_width<T> when every pointer is 16-byte aligned and every
// width and stride a multiple of it, else with W = 1.
template <class T, class F>
void mla_gather_width(std::initializer_list<const void*> ptrs, std::initializer_list<std::int64_t> sizes, F&& f) {
  constexpr int w = vec_width<T>;
  bool vec = true;
  for (const void* ptr : ptrs) vec = vec && reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0;
  for (std::int64_t n : sizes) vec = vec && n % w == 0;
  if (vec)
    f(std::integral_constant<int, w>{});
  else
    f(std::integral_constant<int, 1>{});
}

template <class T>
__global__ void mla_cache_append_kernel(T* cache_c_kv, T* cache_k_pe, std::int64_t cap, const T* c_kv,
                                        std::int64_t c_stride, const T* k_pe, std::int64_t pe_stride,
                                        std::int64_t batch, std::int64_t new_tokens, std::int64_t start_pos,
                                        std::int64_t kv_lora, std::int64_t rope) {
  const std::int64_t width = kv_lora + rope, total = batch * new_tokens * width;
  for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t row = e / width, d = e % width;
    const std::int64_t dst = row / new_tokens * cap + start_pos + row % new_tokens;
    if (d < kv_lora)
      cache_c_kv[dst * kv_lora + d] = c_kv[row * c_stride + d];
    else
      cache_k_pe[dst * rope + d - kv_lora] = k_pe[row * pe_stride + d - kv_lora];
  }
}

}  // namespace cuda_detail

// q, k: (batch, seq, heads, qk_dim); v: (batch, seq, heads, v_dim) → o: (batch, seq, heads, v_dim) (=),
// lse: (batch, heads, seq) (=). Head dimensions up to 256.
template <class T>
void attention_forward(cuda& be, T* o, accum_t<T>* lse, const T* q, const T* k, const T* v, std::int64_t batch,
                       std::int64_t seq, std::int64_t heads, std::int64_t qk_dim, std::int64_t v_dim, double scale) {
  using namespace cuda_detail;
  attn_require_non_negative("cuda attention_forward", {{"batch", batch}, {"seq", seq}, {"heads", heads}});
  require(qk_dim > 0 && v_dim > 0, "cuda attention_forward: qk_dim and v_dim must be positive, got " +
                                       std::to_string(qk_dim) + " and " + std::to_string(v_dim));
  require(qk_dim <= 256, "cuda attention_forward: qk_dim = " + std::to_string(qk_dim) +
                             " exceeds the largest head dimension compiled (256)");
  if (batch == 0 || seq == 0 || heads == 0) return;
  attn_forward_params<T> p;
  const std::int64_t qk_row = heads * qk_dim, v_row = heads * v_dim;
  p.q0 = make_attn_rows(q, seq * qk_row, qk_dim, qk_row, qk_dim);
  p.k0 = make_attn_rows(k, seq * qk_row, qk_dim, qk_row, qk_dim);
  p.v = make_attn_rows(v, seq * v_row, v_dim, v_row, v_dim);
  p.v_dim = int(v_dim);
  p.o = o;
  p.o_batch = seq * v_row;
  p.o_head = v_dim;
  p.o_row = v_row;
  p.lse = lse;
  p.lse_batch = heads * seq;
  p.lse_head = seq;
  p.groups = batch * heads;
  p.group_heads = heads;
  p.rows = seq;
  p.keys = seq;
  p.scale = accum_t<T>(scale);
  if constexpr (std::is_same_v<T, bf16>) {
    const int bucket = attn_mma_qk_bucket(qk_dim, v_dim);
    if (bucket && attn_mma_rows_ok(p.q0) && attn_mma_rows_ok(p.k0) && attn_mma_rows_ok(p.v) &&
        reinterpret_cast<std::uintptr_t>(o) % 4 == 0) {
      attn_mma_dispatch(bucket, [&](auto qk, auto dv) {
        attn_mma_launch_forward<decltype(qk)::value, decltype(dv)::value>(be, p);
      });
      return;
    }
  }
  attn_dispatch_dim<64, 128, 256>(v_dim, "cuda attention_forward: v_dim", [&](auto bucket) {
    attn_launch_forward<T, decltype(bucket)::value>(be, p, false, "cuda attention_forward");
  });
}

// MLA's per-head keys and values from the up-projected latent; see backend/host/attention.hpp.
// kv: (tokens, heads, nope + v_dim); k_pe: (tokens, rope) at row stride pe_stride
// → k: (tokens, heads, nope + rope) (=), v: (tokens, heads, v_dim) (=).
template <class T>
void mla_expand_kv(cuda& be, T* k, T* v, const T* kv, const T* k_pe, std::int64_t pe_stride, std::int64_t tokens,
                   std::int64_t heads, std::int64_t nope, std::int64_t rope, std::int64_t v_dim) {
  using namespace cuda_detail;
  attn_require_non_negative("cuda mla_expand_kv", {{"tokens", tokens}, {"heads", heads}, {"nope", nope},
                                                   {"rope", rope}, {"v_dim", v_dim}});
  require(pe_stride >= rope, "cuda mla_expand_kv: pe_stride " + std::to_string(pe_stride) +
                                 " is less than rope " + std::to_string(rope));
  const std::int64_t total = tokens * heads * (nope + rope + v_dim);
  if (total == 0) return;
  constexpr unsigned threads = 256;
  mla_gather_width<T>({k, v, kv, k_pe}, {nope, rope, v_dim, pe_stride}, [&](auto width) {
    constexpr int W = decltype(width)::value;
    mla_expand_kv_kernel<T, W><<<grid_for(total / W, threads), threads, 0, be.stream()>>>(
        k, v, kv, k_pe, pe_stride, tokens * heads, heads, nope, rope, v_dim);
    DSX_CUDA_CHECK_LAUNCH("mla_expand_kv_kernel");
  });
}

// Adjoint of mla_expand_kv: dkv: (tokens, heads, nope + v_dim) (=); d_pe: (tokens, rope) at row stride
// pe_stride (=), the sum over heads of dk's rope part, added in head order as the host does.
template <class T>
void mla_expand_kv_backward(cuda& be, T* dkv, T* d_pe, std::int64_t pe_stride, const T* dk, const T* dv,
                            std::int64_t tokens, std::int64_t heads, std::int64_t nope, std::int64_t rope,
                            std::int64_t v_dim) {
  using namespace cuda_detail;
  attn_require_non_negative("cuda mla_expand_kv_backward", {{"tokens", tokens}, {"heads", heads}, {"nope", nope},
                                                            {"rope", rope}, {"v_dim", v_dim}});
  require(pe_stride >= rope, "cuda mla_expand_kv_backward: pe_stride " + std::to_string(pe_stride) +
                                 " is less than rope " + std::to_string(rope));
  const std::int64_t total = tokens * heads * (nope + v_dim) + tokens * rope;
  if (total == 0) return;
  constexpr unsigned threads = 256;
  mla_gather_width<T>({dkv, d_pe, dk, dv}, {nope, rope, v_dim, pe_stride}, [&](auto width) {
    constexpr int W = decltype(width)::value;
    mla_expand_kv_backward_kernel<T, W><<<grid_for(total / W, threads), threads, 0, be.stream()>>>(
        dkv, d_pe, pe_stride, dk, dv, tokens, heads, nope, rope, v_dim);
    DSX_CUDA_CHECK_LAUNCH("mla_expand_kv_backward_kernel");
  });
}

// Writes the new tokens' latent entries into the cache at positions start_pos .. start_pos + new_tokens − 1
// of every sequence. c_kv: (batch · new_tokens, kv_lora) at row stride c_stride; k_pe: (batch ·
// new_tokens, rope) at row stride pe_stride; cache_c_kv: (batch, cap, kv_lora), cache_k_pe: (batch, cap, rope).
template <class T>
void mla_cache_append(cuda& be, T* cache_c_kv, T* cache_k_pe, std::int64_t cap, const T* c_kv, std::int64_t c_stride,
                      const T* k_pe, std::int64_t pe_stride, std::int64_t batch, std::int64_t new_tokens,
                      std::int64_t start_pos, std::int64_t kv_lora, std::int64_t rope) {
  using namespace cuda_detail;
  attn_require_non_negative("cuda mla_cache_append", {{"batch", batch}, {"new_tokens", new_tokens},
                                                      {"start_pos", start_pos}, {"kv_lora", kv_lora}, {"rope", rope}});
  require(start_pos + new_tokens <= cap, "cuda mla_cache_append: positions " + std::to_string(start_pos) + ".." +
                                             std::to_string(start_pos + new_tokens - 1) + " do not fit the cache of " +
                                             std::to_string(cap) + " positions");
  require(c_stride >= kv_lora && pe_stride >= rope,
          "cuda mla_cache_append: row strides c_stride " + std::to_string(c_stride) + " and pe_stride " +
              std::to_string(pe_stride) + " must be at least kv_lora " + std::to_string(kv_lora) + " and rope " +
              std::to_string(rope));
  const std::int64_t total = batch * new_tokens * (kv_lora + rope);
  if (total == 0) return;
  constexpr unsigned threads = 256;
  mla_cache_append_kernel<T><<<grid_for(total, threads), threads, 0, be.stream()>>>(
      cache_c_kv, cache_k_pe, cap, c_kv, c_stride, k_pe, pe_stride, batch, new_tokens, start_pos, kv_lora, rope);
  DSX_CUDA_CHECK_LAUNCH("mla_cache_append_kernel");
}

// Absorbed MLA attention of new tokens over the latent cache; see backend/host/attention.hpp.
// q_lat: (batch, new_tokens, heads, kv_lora); q_pe: (batch, new_tokens, heads, rope);
// cache_c_kv: (batch, cap, kv_lora), cache_k_pe: (batch, cap, rope) holding positions 0 .. start_pos +
// new_tokens − 1 → o_lat: (batch, new_tokens, heads, kv_lora) (=). kv_lora up to 512.
template <class T>
void mla_decode_attention(cuda& be, T* o_lat, const T* q_lat, const T* q_pe, const T* cache_c_kv,
                          const T* cache_k_pe, std::int64_t batch, std::int64_t new_tokens, std::int64_t heads,
                          std::int64_t kv_lora, std::int64_t rope, std::int64_t cap, std::int64_t start_pos,
                          double scale) {
  using namespace cuda_detail;
  attn_require_non_negative("cuda mla_decode_attention", {{"batch", batch}, {"new_tokens", new_tokens},
                                                          {"heads", heads}, {"rope", rope}, {"start_pos", start_pos}});
  require(kv_lora > 0, "cuda mla_decode_attention: kv_lora must be positive, got " + std::to_string(kv_lora));
  require(start_pos + new_tokens <= cap, "cuda mla_decode_attention: positions " + std::to_string(start_pos) +
                                             ".." + std::to_string(start_pos + new_tokens - 1) +
                                             " do not fit the cache of " + std::to_string(cap) + " positions");
  if (batch == 0 || new_tokens == 0 || heads == 0) return;
  if constexpr (std::is_same_v<T, bf16>)
    if (mla_decode_mma_supported(be, kv_lora, rope, o_lat, q_lat, q_pe, cache_c_kv, cache_k_pe)) {
      mla_decode_mma(be, o_lat, q_lat, q_pe, cache_c_kv, cache_k_pe, batch, new_tokens, heads, kv_lora, rope, cap,
                     start_pos, scale);
      return;
    }
  attn_forward_params<T> p;
  const std::int64_t rows = new_tokens * heads;  // row r of sequence b: new token r / heads, head r % heads
  p.q0 = make_attn_rows(q_lat, rows * kv_lora, 0, kv_lora, kv_lora);
  p.q1 = make_attn_rows(q_pe, rows * rope, 0, rope, rope);
  p.k0 = make_attn_rows(cache_c_kv, cap * kv_lora, 0, kv_lora, kv_lora);
  p.k1 = make_attn_rows(cache_k_pe, cap * rope, 0, rope, rope);
  p.v_from_k = true;
  p.v_dim = int(kv_lora);
  p.o = o_lat;
  p.o_batch = rows * kv_lora;
  p.o_row = kv_lora;
  p.groups = batch;
  p.group_heads = 1;
  p.rows = rows;
  p.keys = start_pos + new_tokens;
  p.limit_base = start_pos;
  p.limit_div = heads;
  p.scale = accum_t<T>(scale);
  attn_dispatch_dim<64, 128, 256, 512>(kv_lora, "cuda mla_decode_attention: kv_lora", [&](auto bucket) {
    attn_launch_forward<T, decltype(bucket)::value>(be, p, true, "cuda mla_decode_attention");
  });
}

}  // namespace dsx::backend

#include "dsx/backend/cuda/attention_backward.cuh"
