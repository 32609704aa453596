// Causal attention on tensor cores for bf16 (included by attention.cuh): the fused forward and the
// two-pass backward of attention.cuh / attention_backward.cuh with every tile product an
// mma.sync m16n8k16 (bf16 operands, f32 accumulation; mma.cuh). attention_forward and
// attention_backward take this path for bf16 when the head dimensions fit a bucket (qk ≤ 256,
// v ≤ 128) and every row is 16-byte aligned with a multiple of 8 values; otherwise the CUDA-core
// kernels run. Contracts are host's (backend/host/attention.hpp).
//
// Tiling. A block has 4 warps; a warp owns 16 rows of the block's operand (queries in the forward
// and the dQ pass, keys in the dK/dV pass) and holds their accumulators in mma C fragments. The
// other operand streams through shared memory in tiles (64 keys in the forward, 32 queries or keys
// in the backward), double-buffered: cp.async fills the next tile while the warps compute on this
// one. Rows in shared memory are bf16, the bucket's width plus 16 bytes of padding (rows start 16
// bytes apart modulo 128, so the 8 row addresses of an ldmatrix fall in different banks); columns
// past the tensor's width are zero-filled by the copies, so the products run over whole buckets.
//
// Numerics. Scores in f32, scaled by scale · log2 e so that exp2 gives the softmax; P (and dS) are
// rounded to bf16 as the operands of the second product, as flash attention does; row sums, lse, D
// and every accumulator stay f32. Work is divided by sizes only and every sum runs in a fixed order:
// the same bits on every run. No atomics: the backward computes dK, dV and dQ in separate passes
// that each recompute P (attention_backward.cuh says why).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "dsx/backend/cuda/attention_tile.cuh"
#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/backend/cuda/mma.cuh"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend::cuda_detail {

inline constexpr int mma_warps = 4;
inline constexpr int mma_threads = 32 * mma_warps;
inline constexpr int mma_rows = 16 * mma_warps;  // rows a block owns
inline constexpr float log2e = 1.4426950408889634f;

// (qk, v) buckets of the tensor-core kernels: the first that holds both dimensions, or 0 when none does.
inline int attn_mma_qk_bucket(std::int64_t qk_dim, std::int64_t v_dim) {
  if (v_dim > 128 || qk_dim > 256) return 0;
  if (qk_dim <= 64 && v_dim <= 64) return 64;
  if (qk_dim <= 128) return 128;
  return qk_dim <= 192 ? 192 : 256;
}
inline constexpr int attn_mma_v_bucket(int qk_bucket) { return qk_bucket == 64 ? 64 : 128; }

// True when the tensor-core kernels can run on these rows: 16-byte aligned, whole 16-byte chunks.
inline bool attn_mma_rows_ok(const attn_rows<bf16>& r) { return r.dim > 0 && r.vec; }

// Stages rows first .. first + tile_rows − 1 of `src` (group b, h), `width` columns (a multiple of 8,
// at least src.dim), in dst[r · stride + d] with cp.async; rows at or past `end` and columns past
// src.dim become zeros without reading memory. All threads of the block take part; the caller commits.
__device__ __forceinline__ void mma_load_tile(bf16* dst, int stride, int width, int tile_rows, std::int64_t first,
                                              std::int64_t end, const attn_rows<bf16>& src, std::int64_t b,
                                              std::int64_t h) {
  const bf16* base = src.ptr + b * src.batch_stride + h * src.head_stride;
  const int chunks = width / 8;
  for (int it = threadIdx.x; it < tile_rows * chunks; it += blockDim.x) {
    const int r = it / chunks, d = it % chunks * 8;
    const bool valid = first + r < end && d < src.dim;
    cp_async_16(dst + r * stride + d, valid ? base + (first + r) * src.row_stride + d : src.ptr, valid);
  }
}

template <int N>
__device__ __forceinline__ void mma_zero(float (&acc)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
}

// One step of a double-buffered walk over tiles: with `more`, `load_next` issues the next tile's copies
// into the other buffer and this waits for all but that group; on the last tile it waits for all. The
// barrier then makes the current tile visible to every warp.
template <class F>
__device__ __forceinline__ void mma_next_tile(bool more, F&& load_next) {
  if (more) {
    load_next();
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// The A fragment of the 16 × 16 block at (row r0, column c0) of a row-major bf16 tile in shared memory.
__device__ __forceinline__ void mma_frag_a(std::uint32_t (&a)[4], const bf16* tile, int stride, int r0, int c0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(a, tile + (r0 + lane % 16) * stride + c0 + lane / 16 * 8);
}

// B fragments of two n-tiles (n0 .. n0 + 15) at k-step k0 .. k0 + 15 from a tile stored [n][k]
// (row n, column k: keys against their head dimension): b[0], b[1] for n0, b[2], b[3] for n0 + 8.
__device__ __forceinline__ void mma_frag_b_nk(std::uint32_t (&b)[4], const bf16* tile, int stride, int n0, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(b, tile + (n0 + lane % 8 + lane / 16 * 8) * stride + k0 + lane / 8 % 2 * 8);
}

// The same from a tile stored [k][n] (row k: values of a key against their columns), transposed by
// ldmatrix.
__device__ __forceinline__ void mma_frag_b_kn(std::uint32_t (&b)[4], const bf16* tile, int stride, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(b, tile + (k0 + lane % 8 + lane / 8 % 2 * 8) * stride + n0 + lane / 16 * 8);
}

// acc[n] += a · B over the NT n-tiles for one k-step (rows k0 .. k0 + 15 of B): a is the bf16 A fragment
// of 16 rows, B a tile in shared memory stored [k][n] (KN: values of keys against their columns) or
// [n][k] (keys against their head dimension).
template <bool KN, int NT>
__device__ __forceinline__ void mma_step(float (&acc)[NT][4], const std::uint32_t (&a)[4], const bf16* tile,
                                         int stride, int k0) {
#pragma unroll
  for (int np = 0; np < NT / 2; ++np) {
    std::uint32_t b[4];
    if constexpr (KN)
      mma_frag_b_kn(b, tile, stride, k0, np * 16);
    else
      mma_frag_b_nk(b, tile, stride, np * 16, k0);
    mma_bf16(acc[2 * np], a, b[0], b[1]);
    mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
  }
}

// acc[n] += A · B over KS k-steps, A (16 × 16·KS) as bf16 A fragments in registers.
template <bool KN, int KS, int NT>
__device__ __forceinline__ void mma_acc(float (&acc)[NT][4], const std::uint32_t (&a)[KS][4], const bf16* tile,
                                        int stride) {
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) mma_step<KN>(acc, a[ks], tile, stride, ks * 16);
}

// s[n] = X · Yᵀ for 16 rows of X (row-major, at x_row) against NT · 8 rows of Y (stored [n][k]), over
// KS k-steps of 16, the A fragments read from shared memory per step: the score tile of a warp.
template <int KS, int NT>
__device__ __forceinline__ void mma_scores(float (&s)[NT][4], const bf16* x, int x_stride, int x_row, const bf16* y,
                                           int y_stride) {
  mma_zero(s);
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    std::uint32_t a[4];
    mma_frag_a(a, x, x_stride, x_row, ks * 16);
    mma_step<false>(s, a, y, y_stride, ks * 16);
  }
}

// The C fragments of a 16 × (16 · KS) tile as the bf16 A fragments of the next product.
template <int KS>
__device__ __forceinline__ void mma_c_to_a(std::uint32_t (&a)[KS][4], const float (&c)[2 * KS][4]) {
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    a[ks][0] = pack_bf16(c[2 * ks][0], c[2 * ks][1]);
    a[ks][1] = pack_bf16(c[2 * ks][2], c[2 * ks][3]);
    a[ks][2] = pack_bf16(c[2 * ks + 1][0], c[2 * ks + 1][1]);
    a[ks][3] = pack_bf16(c[2 * ks + 1][2], c[2 * ks + 1][3]);
  }
}

// Writes rows `row` (elements 0, 1 of every n-tile) and `row + 8` (elements 2, 3) of C fragments,
// times `mul`, as bf16 pairs: columns 8n + 2t, + 1 below `cols` (a multiple of 8).
template <int NT>
__device__ __forceinline__ void mma_store_rows(bf16* lo, bf16* hi, const float (&c)[NT][4], float mul_lo, float mul_hi,
                                               int cols) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int col = 8 * n + 2 * t;
    if (col >= cols) continue;
    if (lo) *reinterpret_cast<std::uint32_t*>(lo + col) = pack_bf16(c[n][0] * mul_lo, c[n][1] * mul_lo);
    if (hi) *reinterpret_cast<std::uint32_t*>(hi + col) = pack_bf16(c[n][2] * mul_hi, c[n][3] * mul_hi);
  }
}

// Max and sum over the 4 lanes of a quad (the lanes that share a C-fragment row), in a fixed order.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

inline constexpr int mma_fwd_cols = 64;  // keys per tile in the forward
inline constexpr int mma_bwd_cols = 32;  // queries (dK/dV pass) or keys (dQ pass) per tile in the backward

template <int QK, int DV>
constexpr std::size_t attn_mma_forward_smem() {
  return std::size_t(mma_rows * (QK + 8) + 2 * mma_fwd_cols * (QK + 8) + 2 * mma_fwd_cols * (DV + 8)) * 2;
}

// Forward for training: p as attention_forward builds it (q0, k0, v; q1, k1 empty; causal limit r; no
// splits). Group g = (b, h); block: 64 query rows, walking key tiles 0 .. its last visible key.
template <int QK, int DV>
__global__ void __launch_bounds__(mma_threads, 2) attention_forward_mma_kernel(const attn_forward_params<bf16> p) {
  constexpr int SQ = QK + 8, SV = DV + 8, KS = QK / 16, NV = DV / 8, BC = mma_fwd_cols, NS = BC / 8;
  extern __shared__ __align__(16) unsigned char attn_smem[];
  bf16* q_s = reinterpret_cast<bf16*>(attn_smem);  // (64, SQ)
  bf16* k_s = q_s + mma_rows * SQ;                  // 2 × (BC, SQ)
  bf16* v_s = k_s + 2 * BC * SQ;                    // 2 × (BC, SV)

  const std::int64_t row_tiles = (p.rows + mma_rows - 1) / mma_rows;
  const std::int64_t tile = row_tiles - 1 - std::int64_t(blockIdx.x) / p.groups;  // heaviest first
  const std::int64_t g = std::int64_t(blockIdx.x) % p.groups, b = g / p.group_heads, h = g % p.group_heads;
  const std::int64_t row0 = tile * mma_rows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
  auto limit = [&](std::int64_t r) {
    const std::int64_t l = p.limit_base + r / p.limit_div;
    return l < p.keys - 1 ? l : p.keys - 1;
  };
  const std::int64_t last_row = (row0 + mma_rows < p.rows ? row0 + mma_rows : p.rows) - 1;
  const std::int64_t key_end = limit(last_row) + 1;
  const int key_tiles = int((key_end + BC - 1) / BC);
  const std::int64_t wrow = row0 + warp * 16;                      // the warp's first row
  const std::int64_t r_lo = wrow + lane / 4, r_hi = r_lo + 8;     // the lane's two rows
  const std::int64_t lim_lo = r_lo < p.rows ? limit(r_lo) : -1, lim_hi = r_hi < p.rows ? limit(r_hi) : -1;
  const std::int64_t warp_min = wrow < p.rows ? limit(wrow) : -1;  // keys up to here: no mask
  const std::int64_t warp_max = wrow < p.rows ? limit(wrow + 15 < p.rows ? wrow + 15 : p.rows - 1) : -1;
  const float sl2 = p.scale * log2e;

  mma_load_tile(q_s, SQ, QK, mma_rows, row0, p.rows, p.q0, b, h);
  mma_load_tile(k_s, SQ, QK, BC, 0, key_end, p.k0, b, h);
  mma_load_tile(v_s, SV, DV, BC, 0, key_end, p.v, b, h);
  cp_async_commit();

  std::uint32_t qf[KS][4];
  float o[NV][4];
  mma_zero(o);
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;  // m in log2 units

  for (int j = 0; j < key_tiles; ++j) {
    const int buf = j % 2;
    mma_next_tile(j + 1 < key_tiles, [&] {  // then tile j (at j = 0 the queries too) is visible to all
      mma_load_tile(k_s + (buf ^ 1) * BC * SQ, SQ, QK, BC, std::int64_t(j + 1) * BC, key_end, p.k0, b, h);
      mma_load_tile(v_s + (buf ^ 1) * BC * SV, SV, DV, BC, std::int64_t(j + 1) * BC, key_end, p.v, b, h);
    });
    if (j == 0) {
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) mma_frag_a(qf[ks], q_s, SQ, warp * 16, ks * 16);
    }
    const std::int64_t k0 = std::int64_t(j) * BC;
    if (k0 <= warp_max) {
      const bf16* kt = k_s + buf * BC * SQ;
      float s[NS][4];
      mma_zero(s);
      mma_acc<false>(s, qf, kt, SQ);
      const bool mask = k0 + BC - 1 > warp_min;
      float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
      for (int n = 0; n < NS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const std::int64_t key = k0 + 8 * n + 2 * t + e % 2;
          float v = s[n][e] * sl2;
          if (mask && key > (e < 2 ? lim_lo : lim_hi)) v = -INFINITY;
          s[n][e] = v;
          if (e < 2)
            mx_lo = fmaxf(mx_lo, v);
          else
            mx_hi = fmaxf(mx_hi, v);
        }
      const float mn_lo = fmaxf(m_lo, quad_max(mx_lo)), mn_hi = fmaxf(m_hi, quad_max(mx_hi));
      // A row with nothing visible yet keeps m = −inf and subtracts 0: exp2(−inf) = 0, never a NaN.
      const float e_lo = mn_lo == -INFINITY ? 0.f : mn_lo, e_hi = mn_hi == -INFINITY ? 0.f : mn_hi;
      const float a_lo = exp2f(m_lo - e_lo), a_hi = exp2f(m_hi - e_hi);
      m_lo = mn_lo;
      m_hi = mn_hi;
      l_lo *= a_lo;
      l_hi *= a_hi;
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        o[n][0] *= a_lo;
        o[n][1] *= a_lo;
        o[n][2] *= a_hi;
        o[n][3] *= a_hi;
      }
#pragma unroll
      for (int n = 0; n < NS; ++n) {
        s[n][0] = exp2f(s[n][0] - e_lo);
        s[n][1] = exp2f(s[n][1] - e_lo);
        s[n][2] = exp2f(s[n][2] - e_hi);
        s[n][3] = exp2f(s[n][3] - e_hi);
        l_lo += s[n][0] + s[n][1];
        l_hi += s[n][2] + s[n][3];
      }
      std::uint32_t pf[NS / 2][4];
      mma_c_to_a(pf, s);
      mma_acc<true>(o, pf, v_s + buf * BC * SV, SV);
    }
    __syncthreads();  // every warp is done with buffer buf before iteration j + 1 refills it
  }

  l_lo = quad_sum(l_lo);
  l_hi = quad_sum(l_hi);
  const std::int64_t ob = b * p.o_batch + h * p.o_head;
  bf16* out_lo = r_lo < p.rows ? p.o + ob + r_lo * p.o_row : nullptr;
  bf16* out_hi = r_hi < p.rows ? p.o + ob + r_hi * p.o_row : nullptr;
  mma_store_rows(out_lo, out_hi, o, 1.f / l_lo, 1.f / l_hi, p.v_dim);
  if (p.lse && t == 0) {
    constexpr float ln2 = 0.6931471805599453f;
    float* lse = p.lse + b * p.lse_batch + h * p.lse_head;
    if (r_lo < p.rows) lse[r_lo] = m_lo * ln2 + logf(l_lo);
    if (r_hi < p.rows) lse[r_hi] = m_hi * ln2 + logf(l_hi);
  }
}

template <int QK, int DV>
void attn_mma_launch_forward(cuda& be, const attn_forward_params<bf16>& p) {
  const std::int64_t blocks = attn_blocks(p.groups, p.rows, mma_rows, "cuda attention_forward");
  constexpr std::size_t smem = attn_mma_forward_smem<QK, DV>();
  attn_prepare_smem(be, attention_forward_mma_kernel<QK, DV>, smem, "cuda attention_forward (tensor cores)");
  attention_forward_mma_kernel<QK, DV><<<unsigned(blocks), mma_threads, smem, be.stream()>>>(p);
  DSX_CUDA_CHECK_LAUNCH("attention_forward_mma_kernel");
}

// Shared memory of the backward passes: the block's 64 rows of two tensors (qk and v wide) and
// double-buffered 32-row tiles of the other two, plus lse and D of a query tile (dK/dV pass).
template <int QK, int DV>
constexpr std::size_t attn_mma_backward_smem() {
  return std::size_t(mma_rows * (QK + 8 + DV + 8) + 2 * mma_bwd_cols * (QK + 8 + DV + 8)) * 2 +
         2 * 2 * mma_bwd_cols * sizeof(float);
}

// dK and dV: block = 64 keys of group g (warp: 16 keys), walking the query tiles from its first key
// to the end. Per tile, transposed (keys × queries): Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, Pᵀ = exp(scale Sᵀ − lse),
// dSᵀ = Pᵀ ∘ (dPᵀ − D); dV += Pᵀ dO, dK += dSᵀ Q.
template <int QK, int DV>
__global__ void __launch_bounds__(mma_threads, 2) attention_backward_dkv_mma_kernel(const attn_backward_params<bf16> p) {
  constexpr int SQ = QK + 8, SV = DV + 8, BQ = mma_bwd_cols, NS = BQ / 8;
  extern __shared__ __align__(16) unsigned char attn_smem[];
  bf16* k_s = reinterpret_cast<bf16*>(attn_smem);  // (64, SQ)
  bf16* v_s = k_s + mma_rows * SQ;                  // (64, SV)
  bf16* q_s = v_s + mma_rows * SV;                  // 2 × (BQ, SQ)
  bf16* do_s = q_s + 2 * BQ * SQ;                   // 2 × (BQ, SV)
  float* lse_s = reinterpret_cast<float*>(do_s + 2 * BQ * SV);  // 2 × BQ, in log2 units
  float* dd_s = lse_s + 2 * BQ;                                 // 2 × BQ

  const std::int64_t tile = std::int64_t(blockIdx.x) / p.groups, g = std::int64_t(blockIdx.x) % p.groups;
  const std::int64_t b = g / p.heads, h = g % p.heads, key0 = tile * mma_rows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
  const std::int64_t wkey = key0 + warp * 16;                   // the warp's first key
  const std::int64_t c_lo = wkey + lane / 4, c_hi = c_lo + 8;  // the lane's two keys
  const float sl2 = p.scale * log2e;
  const float* lse = p.lse + g * p.seq;
  const float* dd = p.dd + g * p.seq;
  const int q_tiles = int((p.seq - key0 + BQ - 1) / BQ);  // query tiles key0, key0 + 32, ...

  auto load_queries = [&](int j, int buf) {
    const std::int64_t q0 = key0 + std::int64_t(j) * BQ;
    mma_load_tile(q_s + buf * BQ * SQ, SQ, QK, BQ, q0, p.seq, p.q, b, h);
    mma_load_tile(do_s + buf * BQ * SV, SV, DV, BQ, q0, p.seq, p.dout, b, h);
    if (threadIdx.x < BQ) {
      const std::int64_t qi = q0 + threadIdx.x;
      lse_s[buf * BQ + threadIdx.x] = qi < p.seq ? lse[qi] * log2e : 0.f;
      dd_s[buf * BQ + threadIdx.x] = qi < p.seq ? dd[qi] : 0.f;
    }
  };
  mma_load_tile(k_s, SQ, QK, mma_rows, key0, p.seq, p.k, b, h);
  mma_load_tile(v_s, SV, DV, mma_rows, key0, p.seq, p.v, b, h);
  load_queries(0, 0);
  cp_async_commit();

  float dk[QK / 8][4], dv[DV / 8][4];
  mma_zero(dk);
  mma_zero(dv);

  for (int j = 0; j < q_tiles; ++j) {
    const int buf = j % 2;
    mma_next_tile(j + 1 < q_tiles, [&] { load_queries(j + 1, buf ^ 1); });
    const std::int64_t q0 = key0 + std::int64_t(j) * BQ;
    if (wkey < p.seq && q0 + BQ - 1 >= wkey) {  // some query of the tile sees some key of the warp
      const bf16* qt = q_s + buf * BQ * SQ;
      const bf16* dot = do_s + buf * BQ * SV;
      float s[NS][4], dp[NS][4];
      mma_scores<QK / 16>(s, k_s, SQ, warp * 16, qt, SQ);
      mma_scores<DV / 16>(dp, v_s, SV, warp * 16, dot, SV);
      const bool mask = q0 < wkey + 15 || q0 + BQ > p.seq;
#pragma unroll
      for (int n = 0; n < NS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * n + 2 * t + e % 2;
          const std::int64_t qi = q0 + col, key = e < 2 ? c_lo : c_hi;
          const float pr = mask && (qi < key || qi >= p.seq) ? 0.f
                                                             : exp2f(s[n][e] * sl2 - lse_s[buf * BQ + col]);
          s[n][e] = pr;
          dp[n][e] = pr * (dp[n][e] - dd_s[buf * BQ + col]);
        }
      std::uint32_t pf[NS / 2][4], dsf[NS / 2][4];
      mma_c_to_a(pf, s);
      mma_c_to_a(dsf, dp);
      mma_acc<true>(dv, pf, dot, SV);
      mma_acc<true>(dk, dsf, qt, SQ);
    }
    __syncthreads();
  }

  bf16* dk_lo = c_lo < p.seq ? p.dk + b * p.k.batch_stride + h * p.k.head_stride + c_lo * p.k.row_stride : nullptr;
  bf16* dk_hi = c_hi < p.seq ? p.dk + b * p.k.batch_stride + h * p.k.head_stride + c_hi * p.k.row_stride : nullptr;
  bf16* dv_lo = c_lo < p.seq ? p.dv + b * p.v.batch_stride + h * p.v.head_stride + c_lo * p.v.row_stride : nullptr;
  bf16* dv_hi = c_hi < p.seq ? p.dv + b * p.v.batch_stride + h * p.v.head_stride + c_hi * p.v.row_stride : nullptr;
  mma_store_rows(dk_lo, dk_hi, dk, p.scale, p.scale, p.qk_dim);
  mma_store_rows(dv_lo, dv_hi, dv, 1.f, 1.f, p.v_dim);
}

// dQ: block = 64 queries of group g (warp: 16 queries), walking the key tiles up to its last query.
// Per tile: S = Q Kᵀ, dP = dO Vᵀ, P = exp(scale S − lse), dS = P ∘ (dP − D); dQ += dS K.
template <int QK, int DV>
__global__ void __launch_bounds__(mma_threads, 2) attention_backward_dq_mma_kernel(const attn_backward_params<bf16> p) {
  constexpr int SQ = QK + 8, SV = DV + 8, BK = mma_bwd_cols, NS = BK / 8;
  extern __shared__ __align__(16) unsigned char attn_smem[];
  bf16* q_s = reinterpret_cast<bf16*>(attn_smem);  // (64, SQ)
  bf16* do_s = q_s + mma_rows * SQ;                 // (64, SV)
  bf16* k_s = do_s + mma_rows * SV;                 // 2 × (BK, SQ)
  bf16* v_s = k_s + 2 * BK * SQ;                    // 2 × (BK, SV)

  const std::int64_t row_tiles = (p.seq + mma_rows - 1) / mma_rows;
  const std::int64_t tile = row_tiles - 1 - std::int64_t(blockIdx.x) / p.groups;  // heaviest first
  const std::int64_t g = std::int64_t(blockIdx.x) % p.groups, b = g / p.heads, h = g % p.heads;
  const std::int64_t row0 = tile * mma_rows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
  const std::int64_t wrow = row0 + warp * 16;
  const std::int64_t r_lo = wrow + lane / 4, r_hi = r_lo + 8;
  const std::int64_t key_end = row0 + mma_rows < p.seq ? row0 + mma_rows : p.seq;  // keys ≤ the last query
  const int key_tiles = int((key_end + BK - 1) / BK);
  const std::int64_t warp_max = wrow + 15 < p.seq ? wrow + 15 : p.seq - 1;  // the warp's last query
  const float sl2 = p.scale * log2e;
  const float lse_lo = r_lo < p.seq ? p.lse[g * p.seq + r_lo] * log2e : 0.f;
  const float lse_hi = r_hi < p.seq ? p.lse[g * p.seq + r_hi] * log2e : 0.f;
  const float dd_lo = r_lo < p.seq ? p.dd[g * p.seq + r_lo] : 0.f;
  const float dd_hi = r_hi < p.seq ? p.dd[g * p.seq + r_hi] : 0.f;

  mma_load_tile(q_s, SQ, QK, mma_rows, row0, p.seq, p.q, b, h);
  mma_load_tile(do_s, SV, DV, mma_rows, row0, p.seq, p.dout, b, h);
  mma_load_tile(k_s, SQ, QK, BK, 0, key_end, p.k, b, h);
  mma_load_tile(v_s, SV, DV, BK, 0, key_end, p.v, b, h);
  cp_async_commit();

  float dq[QK / 8][4];
  mma_zero(dq);

  for (int j = 0; j < key_tiles; ++j) {
    const int buf = j % 2;
    mma_next_tile(j + 1 < key_tiles, [&] {
      mma_load_tile(k_s + (buf ^ 1) * BK * SQ, SQ, QK, BK, std::int64_t(j + 1) * BK, key_end, p.k, b, h);
      mma_load_tile(v_s + (buf ^ 1) * BK * SV, SV, DV, BK, std::int64_t(j + 1) * BK, key_end, p.v, b, h);
    });
    const std::int64_t k0 = std::int64_t(j) * BK;
    if (wrow < p.seq && k0 <= warp_max) {
      const bf16* kt = k_s + buf * BK * SQ;
      float s[NS][4], dp[NS][4];
      mma_scores<QK / 16>(s, q_s, SQ, warp * 16, kt, SQ);
      mma_scores<DV / 16>(dp, do_s, SV, warp * 16, v_s + buf * BK * SV, SV);
      const bool mask = k0 + BK - 1 > wrow;
#pragma unroll
      for (int n = 0; n < NS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const std::int64_t key = k0 + 8 * n + 2 * t + e % 2, r = e < 2 ? r_lo : r_hi;
          const float pr = mask && key > r ? 0.f : exp2f(s[n][e] * sl2 - (e < 2 ? lse_lo : lse_hi));
          dp[n][e] = pr * (dp[n][e] - (e < 2 ? dd_lo : dd_hi));
        }
      std::uint32_t dsf[NS / 2][4];
      mma_c_to_a(dsf, dp);
      mma_acc<true>(dq, dsf, kt, SQ);
    }
    __syncthreads();
  }

  const std::int64_t qb = b * p.q.batch_stride + h * p.q.head_stride;
  mma_store_rows(r_lo < p.seq ? p.dq + qb + r_lo * p.q.row_stride : nullptr,
                 r_hi < p.seq ? p.dq + qb + r_hi * p.q.row_stride : nullptr, dq, p.scale, p.scale, p.qk_dim);
}

template <int QK, int DV>
void attn_mma_launch_backward(cuda& be, const attn_backward_params<bf16>& p) {
  const std::int64_t blocks = attn_blocks(p.groups, p.seq, mma_rows, "cuda attention_backward");
  constexpr std::size_t smem = attn_mma_backward_smem<QK, DV>();
  attn_prepare_smem(be, attention_backward_dkv_mma_kernel<QK, DV>, smem, "cuda attention_backward (dK, dV)");
  attention_backward_dkv_mma_kernel<QK, DV><<<unsigned(blocks), mma_threads, smem, be.stream()>>>(p);
  DSX_CUDA_CHECK_LAUNCH("attention_backward_dkv_mma_kernel");
  attn_prepare_smem(be, attention_backward_dq_mma_kernel<QK, DV>, smem, "cuda attention_backward (dQ)");
  attention_backward_dq_mma_kernel<QK, DV><<<unsigned(blocks), mma_threads, smem, be.stream()>>>(p);
  DSX_CUDA_CHECK_LAUNCH("attention_backward_dq_mma_kernel");
}

// Calls f(integral_constant<QK>, integral_constant<DV>) for the bucket of attn_mma_qk_bucket.
template <class F>
void attn_mma_dispatch(int qk_bucket, F&& f) {
  switch (qk_bucket) {
    case 64: f(std::integral_constant<int, 64>{}, std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}, std::integral_constant<int, 128>{}); break;
    case 192: f(std::integral_constant<int, 192>{}, std::integral_constant<int, 128>{}); break;
    default: f(std::integral_constant<int, 256>{}, std::integral_constant<int, 128>{}); break;
  }
}

}  // namespace dsx::backend::cuda_detail
