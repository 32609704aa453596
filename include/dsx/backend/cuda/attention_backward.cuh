// attention_backward on the GPU (included by attention.cuh): flash-attention's backward with host's
// contract (backend/host/attention.hpp). With P_ij = exp(scale · q_i·k_j − lse_i), dP_ij = dO_i·v_j,
// D_i = dO_i·O_i and dS_ij = P_ij (dP_ij − D_i):
//   dq_i = scale Σ_j dS_ij k_j,   dk_j = scale Σ_i dS_ij q_i,   dv_j = Σ_i P_ij dO_i.
//
// Three passes, none of which materialises P in device memory:
//  1. D = rowsum(dO ∘ O), one warp per row, into the backend's scratch: (batch, heads, seq).
//  2. dK, dV: a block owns a tile of keys of one (batch, head), holds their K and V rows in shared memory
//     and dK, dV in registers, and walks the query tiles at or after its first key (the causal mask),
//     recomputing P and dS from q, k, lse and D.
//  3. dQ: a block owns a tile of queries, holds Q and dO in shared memory and dQ in registers, and walks
//     the key tiles up to its last query, recomputing P and dS the same way.
// Every output element is written by one thread after a fixed sequence of additions: no atomics, the
// same bits on every run. Pass 3 recomputes the scores that pass 2 already formed (flash-attention 2
// adds dQ with atomics instead); that is the price of determinism here.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "dsx/backend/cuda/attention_mma.cuh"
#include "dsx/backend/cuda/attention_tile.cuh"
#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace cuda_detail {

// D[(b · heads + h) · seq + i] = Σ_d dO[b, i, h, d] · O[b, i, h, d]; one warp per row.
template <class T>
__global__ void attention_row_dot_kernel(accum_t<T>* dd, const T* dout, const T* o, std::int64_t batch,
                                         std::int64_t seq, std::int64_t heads, std::int64_t v_dim) {
  using A = accum_t<T>;
  const std::int64_t rows = batch * seq * heads, warps = std::int64_t(gridDim.x) * blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  for (std::int64_t w = (std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < rows; w += warps) {
    A s = 0;
    for (std::int64_t d = lane; d < v_dim; d += 32) s += A(dout[w * v_dim + d]) * A(o[w * v_dim + d]);
    s = warp_sum(s);
    const std::int64_t h = w % heads, i = w / heads % seq, b = w / (heads * seq);
    if (lane == 0) dd[(b * heads + h) * seq + i] = s;
  }
}

// Rows per block of the two passes, from the widths of their register accumulators.
template <class A, int QK>
inline constexpr int attn_dq_rows = attn_warps * 4 * attn_rows_per_lane<A>(QK);
template <class A, int QK, int DV>
inline constexpr int attn_dkv_rows = attn_warps * 4 * attn_rows_per_lane<A>(QK + DV);
static_assert(attn_dq_rows<float, 128> == 64 && attn_dkv_rows<float, 256, 128> == 16);

// Shared memory (bytes) of the dK/dV pass: K and V of the block's keys, Q and dO of a query tile,
// P and dS tiles, lse and D of the query tile.
template <class A>
std::size_t attn_dkv_smem(int rows, int qk_dim, int v_dim) {
  const std::size_t sq = attn_smem_stride<A>(qk_dim), sv = attn_smem_stride<A>(v_dim),
                    sp = attn_smem_stride<A>(attn_cols);
  return ((rows + attn_cols) * (sq + sv) + 2 * rows * sp + 2 * attn_cols) * sizeof(A);
}

// Shared memory (bytes) of the dQ pass: Q and dO of the block's queries, K and V of a key tile, dS.
template <class A>
std::size_t attn_dq_smem(int rows, int qk_dim, int v_dim) {
  const std::size_t sq = attn_smem_stride<A>(qk_dim), sv = attn_smem_stride<A>(v_dim),
                    sp = attn_smem_stride<A>(attn_cols);
  return ((rows + attn_cols) * (sq + sv) + rows * sp) * sizeof(A);
}

template <class T, int QK, int DV>
__global__ void __launch_bounds__(attn_threads, 1) attention_backward_dkv_kernel(const attn_backward_params<T> p) {
  using A = accum_t<T>;
  constexpr int V = attn_vec<A>, R = attn_rows_per_lane<A>(QK + DV), KQ = QK / (8 * V), KV = DV / (8 * V);
  constexpr int WR = 4 * R, BR = attn_warps * WR;
  static_assert(KQ * 8 * V == QK && KV * 8 * V == DV);
  extern __shared__ __align__(16) unsigned char attn_smem[];

  const int qk_pad = attn_padded<A>(p.qk_dim), v_pad = attn_padded<A>(p.v_dim);
  const int sq = attn_smem_stride<A>(p.qk_dim), sv = attn_smem_stride<A>(p.v_dim), sp = attn_smem_stride<A>(attn_cols);
  A* k_s = reinterpret_cast<A*>(attn_smem);  // (BR, sq)
  A* v_s = k_s + BR * sq;                     // (BR, sv)
  A* q_s = v_s + BR * sv;                     // (32, sq)
  A* do_s = q_s + attn_cols * sq;             // (32, sv)
  A* p_s = do_s + attn_cols * sv;             // (BR, sp)
  A* ds_s = p_s + BR * sp;                    // (BR, sp)
  A* lse_s = ds_s + BR * sp;                  // (32)
  A* dd_s = lse_s + attn_cols;                // (32)

  // Blocks in order of decreasing work: the first key tiles (seen by the most queries) first.
  const std::int64_t tile = std::int64_t(blockIdx.x) / p.groups, g = std::int64_t(blockIdx.x) % p.groups;
  const std::int64_t b = g / p.heads, h = g % p.heads;
  const std::int64_t key0 = tile * BR;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, c = lane % 8;
  const int my_row = warp * WR + lane / 8 * R;
  const std::int64_t warp_first = key0 + warp * WR;  // the warp's first key

  attn_zero_cols(k_s, sq, BR, p.qk_dim, qk_pad);
  attn_zero_cols(v_s, sv, BR, p.v_dim, v_pad);
  attn_zero_cols(q_s, sq, attn_cols, p.qk_dim, qk_pad);
  attn_zero_cols(do_s, sv, attn_cols, p.v_dim, v_pad);
  attn_load_rows(k_s, sq, 0, BR, key0, p.seq, p.k, b, h);
  attn_load_rows(v_s, sv, 0, BR, key0, p.seq, p.v, b, h);
  const A* lse = p.lse + g * p.seq;
  const A* dd = p.dd + g * p.seq;

  A dk[R][KQ][V], dv[R][KV][V];
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int k = 0; k < KQ; ++k)
#pragma unroll
      for (int u = 0; u < V; ++u) dk[i][k][u] = A(0);
#pragma unroll
    for (int k = 0; k < KV; ++k)
#pragma unroll
      for (int u = 0; u < V; ++u) dv[i][k][u] = A(0);
  }

  for (std::int64_t q0 = key0; q0 < p.seq; q0 += attn_cols) {
    __syncthreads();  // the previous tile's readers are done
    attn_load_rows(q_s, sq, 0, attn_cols, q0, p.seq, p.q, b, h);
    attn_load_rows(do_s, sv, 0, attn_cols, q0, p.seq, p.dout, b, h);
    if (threadIdx.x < attn_cols) {
      const std::int64_t qi = q0 + threadIdx.x;
      lse_s[threadIdx.x] = qi < p.seq ? lse[qi] : A(0);
      dd_s[threadIdx.x] = qi < p.seq ? dd[qi] : A(0);
    }
    __syncthreads();
    if (warp_first >= p.seq || warp_first > q0 + attn_cols - 1) continue;  // no visible (query, key) pair

    A s[R][4], dp[R][4];
    tile_nt(s, k_s + my_row * sq, sq, q_s, sq, qk_pad);     // S transposed: (keys, queries)
    tile_nt(dp, v_s + my_row * sv, sv, do_s, sv, v_pad);    // dP transposed
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const std::int64_t key = key0 + my_row + i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int t = c + 8 * j;
        const std::int64_t qi = q0 + t;
        const A pr = qi >= key && qi < p.seq ? exp(s[i][j] * p.scale - lse_s[t]) : A(0);
        p_s[(my_row + i) * sp + t] = pr;
        ds_s[(my_row + i) * sp + t] = pr * (dp[i][j] - dd_s[t]);
      }
    }
    __syncwarp();
    tile_nn(dv, p_s + my_row * sp, sp, do_s, sv, p.v_dim);   // dV += Pᵀ dO
    tile_nn(dk, ds_s + my_row * sp, sp, q_s, sq, p.qk_dim);  // dK += dSᵀ Q (scaled at the end)
  }

#pragma unroll
  for (int i = 0; i < R; ++i) {
    const std::int64_t key = key0 + my_row + i;
    if (key >= p.seq) continue;
    T* dk_row = p.dk + b * p.k.batch_stride + h * p.k.head_stride + key * p.k.row_stride;
    T* dv_row = p.dv + b * p.v.batch_stride + h * p.v.head_stride + key * p.v.row_stride;
#pragma unroll
    for (int k = 0; k < KQ; ++k)
#pragma unroll
      for (int u = 0; u < V; ++u) {
        const int col = (c + 8 * k) * V + u;
        if (col < p.qk_dim) dk_row[col] = T(p.scale * dk[i][k][u]);
      }
#pragma unroll
    for (int k = 0; k < KV; ++k)
#pragma unroll
      for (int u = 0; u < V; ++u) {
        const int col = (c + 8 * k) * V + u;
        if (col < p.v_dim) dv_row[col] = T(dv[i][k][u]);
      }
  }
}

template <class T, int QK>
__global__ void __launch_bounds__(attn_threads, 1) attention_backward_dq_kernel(const attn_backward_params<T> p) {
  using A = accum_t<T>;
  constexpr int V = attn_vec<A>, R = attn_rows_per_lane<A>(QK), K = QK / (8 * V);
  constexpr int WR = 4 * R, BR = attn_warps * WR;
  static_assert(K * 8 * V == QK);
  extern __shared__ __align__(16) unsigned char attn_smem[];

  const int qk_pad = attn_padded<A>(p.qk_dim), v_pad = attn_padded<A>(p.v_dim);
  const int sq = attn_smem_stride<A>(p.qk_dim), sv = attn_smem_stride<A>(p.v_dim), sp = attn_smem_stride<A>(attn_cols);
  A* q_s = reinterpret_cast<A*>(attn_smem);  // (BR, sq)
  A* do_s = q_s + BR * sq;                    // (BR, sv)
  A* k_s = do_s + BR * sv;                    // (32, sq)
  A* v_s = k_s + attn_cols * sq;              // (32, sv)
  A* ds_s = v_s + attn_cols * sv;             // (BR, sp)

  // Blocks in order of decreasing work: the last query tiles first.
  const std::int64_t row_tiles = (p.seq + BR - 1) / BR;
  const std::int64_t tile = row_tiles - 1 - std::int64_t(blockIdx.x) / p.groups;
  const std::int64_t g = std::int64_t(blockIdx.x) % p.groups, b = g / p.heads, h = g % p.heads;
  const std::int64_t row0 = tile * BR;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, c = lane % 8;
  const int my_row = warp * WR + lane / 8 * R;
  const std::int64_t block_end = row0 + BR < p.seq ? row0 + BR : p.seq;  // keys ≤ the last query
  const std::int64_t warp_last = (row0 + warp * WR + WR < p.seq ? row0 + warp * WR + WR : p.seq) - 1;

  attn_zero_cols(q_s, sq, BR, p.qk_dim, qk_pad);
  attn_zero_cols(do_s, sv, BR, p.v_dim, v_pad);
  attn_zero_cols(k_s, sq, attn_cols, p.qk_dim, qk_pad);
  attn_zero_cols(v_s, sv, attn_cols, p.v_dim, v_pad);
  attn_load_rows(q_s, sq, 0, BR, row0, p.seq, p.q, b, h);
  attn_load_rows(do_s, sv, 0, BR, row0, p.seq, p.dout, b, h);

  A lse[R], dd[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const std::int64_t r = row0 + my_row + i;
    lse[i] = r < p.seq ? p.lse[g * p.seq + r] : A(0);
    dd[i] = r < p.seq ? p.dd[g * p.seq + r] : A(0);
  }
  A acc[R][K][V];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
      for (int u = 0; u < V; ++u) acc[i][k][u] = A(0);

  for (std::int64_t k0 = 0; k0 < block_end; k0 += attn_cols) {
    __syncthreads();
    attn_load_rows(k_s, sq, 0, attn_cols, k0, block_end, p.k, b, h);
    attn_load_rows(v_s, sv, 0, attn_cols, k0, block_end, p.v, b, h);
    __syncthreads();
    if (k0 > warp_last) continue;  // every query of this warp is before the tile

    A s[R][4], dp[R][4];
    tile_nt(s, q_s + my_row * sq, sq, k_s, sq, qk_pad);
    tile_nt(dp, do_s + my_row * sv, sv, v_s, sv, v_pad);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const std::int64_t r = row0 + my_row + i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const std::int64_t key = k0 + c + 8 * j;
        const A pr = key <= r && r < p.seq ? exp(s[i][j] * p.scale - lse[i]) : A(0);
        ds_s[(my_row + i) * sp + c + 8 * j] = pr * (dp[i][j] - dd[i]);
      }
    }
    __syncwarp();
    tile_nn(acc, ds_s + my_row * sp, sp, k_s, sq, p.qk_dim);  // dQ += dS K (scaled at the end)
  }

#pragma unroll
  for (int i = 0; i < R; ++i) {
    const std::int64_t r = row0 + my_row + i;
    if (r >= p.seq) continue;
    T* out = p.dq + b * p.q.batch_stride + h * p.q.head_stride + r * p.q.row_stride;
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
      for (int u = 0; u < V; ++u) {
        const int col = (c + 8 * k) * V + u;
        if (col < p.qk_dim) out[col] = T(p.scale * acc[i][k][u]);
      }
  }
}

template <class T, int QK, int DV>
void attn_launch_dkv(cuda& be, const attn_backward_params<T>& p) {
  using A = accum_t<T>;
  constexpr int BR = attn_dkv_rows<A, QK, DV>;
  const std::int64_t blocks = attn_blocks(p.groups, p.seq, BR, "cuda attention_backward");
  const std::size_t smem = attn_dkv_smem<A>(BR, p.qk_dim, p.v_dim);
  attn_prepare_smem(be, attention_backward_dkv_kernel<T, QK, DV>, smem, "cuda attention_backward (dK, dV)");
  attention_backward_dkv_kernel<T, QK, DV><<<unsigned(blocks), attn_threads, smem, be.stream()>>>(p);
  DSX_CUDA_CHECK_LAUNCH("attention_backward_dkv_kernel");
}

template <class T, int QK>
void attn_launch_dq(cuda& be, const attn_backward_params<T>& p) {
  using A = accum_t<T>;
  constexpr int BR = attn_dq_rows<A, QK>;
  const std::int64_t blocks = attn_blocks(p.groups, p.seq, BR, "cuda attention_backward");
  const std::size_t smem = attn_dq_smem<A>(BR, p.qk_dim, p.v_dim);
  attn_prepare_smem(be, attention_backward_dq_kernel<T, QK>, smem, "cuda attention_backward (dQ)");
  attention_backward_dq_kernel<T, QK><<<unsigned(blocks), attn_threads, smem, be.stream()>>>(p);
  DSX_CUDA_CHECK_LAUNCH("attention_backward_dq_kernel");
}

}  // namespace cuda_detail

// Gradients of attention_forward: dq, dk, dv (=) from dout (shape of o), the forward's inputs, its output o
// and its lse; see backend/host/attention.hpp. Uses the backend's scratch for D (batch · heads · seq
// values of accum_t<T>). Head dimensions up to 256.
template <class T>
void attention_backward(cuda& be, T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* o,
                        const accum_t<T>* lse, std::int64_t batch, std::int64_t seq, std::int64_t heads,
                        std::int64_t qk_dim, std::int64_t v_dim, double scale) {
  using namespace cuda_detail;
  using A = accum_t<T>;
  attn_require_non_negative("cuda attention_backward", {{"batch", batch}, {"seq", seq}, {"heads", heads}});
  require(qk_dim > 0 && v_dim > 0, "cuda attention_backward: qk_dim and v_dim must be positive, got " +
                                       std::to_string(qk_dim) + " and " + std::to_string(v_dim));
  require(qk_dim <= 256 && v_dim <= 256, "cuda attention_backward: qk_dim = " + std::to_string(qk_dim) +
                                             " and v_dim = " + std::to_string(v_dim) +
                                             " must not exceed the largest head dimension compiled (256)");
  if (batch == 0 || seq == 0 || heads == 0) return;

  attn_backward_params<T> p;
  const std::int64_t qk_row = heads * qk_dim, v_row = heads * v_dim;
  p.q = make_attn_rows(q, seq * qk_row, qk_dim, qk_row, qk_dim);
  p.k = make_attn_rows(k, seq * qk_row, qk_dim, qk_row, qk_dim);
  p.v = make_attn_rows(v, seq * v_row, v_dim, v_row, v_dim);
  p.dout = make_attn_rows(dout, seq * v_row, v_dim, v_row, v_dim);
  p.lse = lse;
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  p.groups = batch * heads;
  p.heads = heads;
  p.seq = seq;
  p.qk_dim = int(qk_dim);
  p.v_dim = int(v_dim);
  p.scale = A(scale);

  auto* dd = static_cast<A*>(be.scratch(std::size_t(batch * heads * seq) * sizeof(A)));
  p.dd = dd;
  constexpr unsigned threads = 256;
  attention_row_dot_kernel<T><<<grid_for(batch * seq * heads, threads / 32), threads, 0, be.stream()>>>(
      dd, dout, o, batch, seq, heads, v_dim);
  DSX_CUDA_CHECK_LAUNCH("attention_row_dot_kernel");

  if constexpr (std::is_same_v<T, bf16>) {
    const int bucket = attn_mma_qk_bucket(qk_dim, v_dim);
    auto aligned4 = [](const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 4 == 0; };
    if (bucket && attn_mma_rows_ok(p.q) && attn_mma_rows_ok(p.k) && attn_mma_rows_ok(p.v) &&
        attn_mma_rows_ok(p.dout) && aligned4(dq) && aligned4(dk) && aligned4(dv)) {
      attn_mma_dispatch(bucket, [&](auto qk, auto dvb) {
        attn_mma_launch_backward<decltype(qk)::value, decltype(dvb)::value>(be, p);
      });
      return;
    }
  }
  // dK, dV: (qk, v) buckets; the first that holds both dimensions.
  if (qk_dim <= 64 && v_dim <= 64)
    attn_launch_dkv<T, 64, 64>(be, p);
  else if (qk_dim <= 128 && v_dim <= 128)
    attn_launch_dkv<T, 128, 128>(be, p);
  else if (v_dim <= 128)
    attn_launch_dkv<T, 256, 128>(be, p);
  else
    attn_launch_dkv<T, 256, 256>(be, p);
  attn_dispatch_dim<64, 128, 256>(qk_dim, "cuda attention_backward: qk_dim",
                                  [&](auto bucket) { attn_launch_dq<T, decltype(bucket)::value>(be, p); });
}

}  // namespace dsx::backend
