// MLA's absorbed decoding over the latent cache on tensor cores, for bf16 (included by attention.cuh):
// mla_decode_attention's contract (backend/host/attention.hpp) with both products, S = Q·Kᵀ and
// O = P·V, as mma.sync m16n8k16 on bf16 operands with f32 accumulation (mma.cuh). Taken when
// kv_lora is 64, 128, 256 or 512, rope is a multiple of 16 (0 included), every row start is 16-byte
// aligned and the tiles fit the device's shared memory; otherwise the CUDA-core kernel runs.
//
// Problem. The rows of sequence b are its (new token, head) pairs, row r = new token r / heads, head
// r % heads, query [q_lat | q_pe]; it attends to cache positions 0 .. start_pos + r / heads, key
// [c_KV | k_pe] of the position, value its c_KV: the first kv_lora columns of the key.
//
// Tiling. A block has 8 warps and owns 64 rows of one sequence (rows past the end are zeros and are
// not written) and one range of its cache positions, walked in tiles of 32. Shared memory holds the
// query tile (64 rows), three stages of key tiles that cp.async fills two tiles ahead, the bf16 P
// tile (64 × 32), 16 KB of partial scores and per-row f32 slots: 204.5 KB at kv_lora 512 / rope 64.
// Query and key rows are kv_lora + rope bf16 plus 16 bytes, an odd multiple of 16 bytes, so the 8 row
// addresses of an ldmatrix fall in different banks.
//   S:  warp w computes rows 16·(w % 4) .. + 15 against all 32 keys of the tile over every other
//       16-column step (w / 4 picks which): per step one ldmatrix of Q, two of K and four mma; the
//       first mla_mma_q_regs steps of Q stay in registers for the whole kernel. The two warps of a
//       row block add their partial scores through shared memory (the same sum, bit for bit, in
//       both), so both keep the same running max m; each writes exp2(S − m) of its half of the keys
//       to the P tile as bf16 and sums them into its half of the row sum l.
//   PV: warp w owns rows 32·(w / 4) .. + 31 and columns kv_lora / 4 · (w % 4) .. of O (kv_lora / 4
//       f32 registers per thread, 128 at kv_lora 512): per 16 keys two ldmatrix of P, then per 16
//       columns one transposed ldmatrix of V and four mma. The rescale of O when a row's max grows is
//       skipped for a warp whose rows all kept theirs (a multiplication by 1).
// Per tile two block barriers: after the partial scores (every warp is then past the previous tile,
// so its stage is free and the tile after next is issued into it) and after P (the next tile, waited
// for, is then visible to all).
//
// Why so. With mma.sync the bound is shared-memory bandwidth (an ldmatrix.x4 is 512 bytes, 4 cycles
// of an SM's 128 bytes a cycle), not the tensor cores. At kv_lora 512 / rope 64 a tile costs 1088 mma
// and 528 ldmatrix.x4 (per warp 46 in S, 20 in PV) plus 36 KB of copies and 32 KB of partial scores;
// splitting S by keys instead (16 keys × all columns per warp) would take 72 ldmatrix.x4 per warp in
// S, and 16-row PV warps over 256 columns 34 in PV. 8 Q steps in registers is the most that fits
// beside O without spilling (255 registers).
//
// Splits. 64-row blocks of all sequences number batch · ⌈rows / 64⌉; with fewer than
// mla_mma_target_blocks the cache is cut into ranges of whole tiles (at least mla_mma_min_split_tiles),
// each block writes its rows' O / l and m + log2 l in f32, and a second kernel merges the ranges in
// range order. A range and its count depend on the sizes only, so results are the same bits on
// every run and every GPU.
//
// Bytes moved per call:
//   cache    batch · (start_pos + new_tokens) · (kv_lora + rope) · 2 from device memory, read by the
//            ⌈rows / 64⌉ row blocks of a sequence, which run side by side (the repeats hit L2)
//   queries  batch · rows · (kv_lora + rope) · 2, output batch · rows · kv_lora · 2
//   splits   S ranges: S · batch · rows · (kv_lora + 1) · 4 written and read back once
//
// Numerics. Scores in f32 scaled by scale · log2 e so that exp2 gives the softmax; P rounded to bf16
// as the operand of P·V, and l summed from the rounded values, so that O / l weighs with exactly the
// P used; O, m and l in f32. Work is divided by sizes only; every sum runs in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "dsx/backend/cuda/attention_tile.cuh"
#include "dsx/backend/cuda/common.cuh"
#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/backend/cuda/mma.cuh"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend::cuda_detail {

inline constexpr int mla_mma_threads = 256;  // 8 warps
inline constexpr int mla_mma_rows = 64;      // rows a block owns
inline constexpr int mla_mma_keys = 32;      // cache positions per tile
inline constexpr int mla_mma_stages = 3;     // key tiles in shared memory
inline constexpr int mla_mma_p_stride = 80;  // bytes per row of the P tile: 32 bf16 + 16
// 64-row blocks before the cache is split: about one per SM of an H100 (132), the kernel running one
// block per SM. A constant, so that the split is the same on every GPU.
inline constexpr std::int64_t mla_mma_target_blocks = 128;
// Fewest tiles per range: a shorter range costs more in the merge than it saves.
inline constexpr std::int64_t mla_mma_min_split_tiles = 4;

// Q fragments (16 rows × 16 columns) an S warp keeps in registers for the whole kernel, of its
// KV / 32 steps in the c_KV columns; the others, and the rope columns, are read from shared memory
// for every tile. All of them below kv_lora 512; there, as many as fit beside O without spilling
// (ptxas -v: 255 registers at 8, spills from 10).
template <int KV>
inline constexpr int mla_mma_q_regs = KV == 512 ? 8 : KV / 32;

struct mla_mma_params {
  const bf16* q_lat;  // (batch, rows, kv_lora)
  const bf16* q_pe;   // (batch, rows, rope)
  const bf16* c_kv;   // (batch, cap, kv_lora)
  const bf16* k_pe;   // (batch, cap, rope)
  bf16* o;            // (batch, rows, kv_lora), written when splits == 1
  float* part_o;      // (splits, batch, rows, kv_lora): O / l of a range, when splits > 1
  float* part_lse;    // (splits, batch, rows): m + log2 l of a range (−inf when it saw no key)
  std::int64_t batch, rows, heads, cap, start_pos, split_keys;
  int rope, splits;
  float scale_log2;  // scale · log2 e
};

// Bytes of one row of the query and key tiles in shared memory.
inline int mla_mma_row_bytes(std::int64_t kv_lora, std::int64_t rope) { return int(2 * (kv_lora + rope) + 16); }

// Bytes of the partial-score exchange: 8 warps × 16 rows × 32 keys in f32.
inline constexpr int mla_mma_xch_bytes = 8 * 16 * mla_mma_keys * 4;

// Dynamic shared memory of mla_decode_mma_kernel: query tile, key stages, P tile, partial scores, then
// the f32 row slots (alpha, l of each key half, m; 64 rows each).
inline std::size_t mla_mma_smem(std::int64_t kv_lora, std::int64_t rope) {
  const std::size_t sb = std::size_t(mla_mma_row_bytes(kv_lora, rope));
  return (mla_mma_rows + mla_mma_stages * mla_mma_keys) * sb + mla_mma_rows * mla_mma_p_stride + mla_mma_xch_bytes +
         4 * mla_mma_rows * sizeof(float);
}

template <int KV>
__global__ void __launch_bounds__(mla_mma_threads, 1) mla_decode_mma_kernel(const mla_mma_params p) {
  constexpr int CK = KV / 8;              // 16-byte chunks of c_KV per row
  constexpr int NT = KV / 32;             // 8-column n-tiles of O per PV warp
  constexpr int QS = KV / 32;             // steps of an S warp in the c_KV columns
  constexpr int QR = mla_mma_q_regs<KV>;  // of which held in registers
  constexpr int P = mla_mma_p_stride;
  static_assert(KV % 64 == 0 && mla_mma_threads % CK == 0 && mla_mma_keys % (mla_mma_threads / CK) == 0 && QR <= QS);
  extern __shared__ __align__(16) unsigned char mla_smem[];

  const int rope = p.rope, sb = 2 * (KV + rope) + 16, nk = (KV + rope) / 16, rc = rope / 8;
  unsigned char* q_s = mla_smem;                                  // (64, sb)
  unsigned char* k_s = q_s + mla_mma_rows * sb;                   // stages × (32, sb)
  unsigned char* p_s = k_s + mla_mma_stages * mla_mma_keys * sb;  // (64, P): bf16
  float4* xch = reinterpret_cast<float4*>(p_s + mla_mma_rows * P);  // [warp][n-tile][lane]
  float* alpha_s = reinterpret_cast<float*>(p_s + mla_mma_rows * P + mla_mma_xch_bytes);  // [64]
  float* l_s = alpha_s + mla_mma_rows;                            // [2][64]
  float* m_s = l_s + 2 * mla_mma_rows;                            // [64]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const std::int64_t row_tiles = (p.rows + mla_mma_rows - 1) / mla_mma_rows;
  const std::int64_t b = std::int64_t(blockIdx.x) / row_tiles;
  const std::int64_t row0 = std::int64_t(blockIdx.x) % row_tiles * mla_mma_rows;
  const int z = int(blockIdx.y);

  // Keys this block needs: its range, cut at the last key its last row sees.
  const std::int64_t last_row = (row0 + mla_mma_rows < p.rows ? row0 + mla_mma_rows : p.rows) - 1;
  const std::int64_t kbeg = std::int64_t(z) * p.split_keys;
  const std::int64_t block_end = p.start_pos + last_row / p.heads + 1;
  const std::int64_t kend = kbeg + p.split_keys < block_end ? kbeg + p.split_keys : block_end;
  const int tiles = kend > kbeg ? int((kend - kbeg + mla_mma_keys - 1) / mla_mma_keys) : 0;

  // A thread's share of a tile copy: 16-byte chunk cc of the c_KV rows cr + u · CR (u < 32 / CR), and
  // the rope chunks (rj, rcc), (rj, rcc) + 256 chunks, ... of the tile's 32 · rope / 8.
  constexpr int CR = mla_mma_threads / CK;  // c_KV rows per pass of the block
  const int cc = tid % CK, cr = tid / CK;
  const bf16* c_src = p.c_kv + (b * p.cap + cr) * KV + 8 * cc;
  const bf16* pe_src = p.k_pe + b * p.cap * rope;
  const int rj = rc > 0 ? tid / rc : mla_mma_keys, rcc = rc > 0 ? tid % rc : 0;
  const int rdj = rc > 0 ? mla_mma_threads / rc : 0, rdc = rc > 0 ? mla_mma_threads % rc : 0;
  // Tile i into stage i % 3 as one cp.async group (an empty group past the last tile, so that the
  // count of groups in flight stays the same); positions at or past kend become zeros.
  auto load_tile = [&](int i) {
    if (i < tiles) {
      const std::int64_t k0 = kbeg + std::int64_t(i) * mla_mma_keys;
      const int n = kend - k0 < mla_mma_keys ? int(kend - k0) : mla_mma_keys;  // positions in the range
      unsigned char* dst = k_s + (i % mla_mma_stages) * mla_mma_keys * sb;
      const bf16* src = c_src + k0 * KV;
#pragma unroll
      for (int u = 0; u < mla_mma_keys / CR; ++u) {
        const bool ok = cr + u * CR < n;
        cp_async_16(dst + (cr + u * CR) * sb + 16 * cc, ok ? src + u * CR * KV : c_src, ok);
      }
      for (int j = rj, c = rcc; j < mla_mma_keys;) {
        const bool ok = j < n;
        cp_async_16(dst + j * sb + 2 * KV + 16 * c, ok ? pe_src + (k0 + j) * rope + 8 * c : pe_src, ok);
        c += rdc;
        j += rdj;
        if (c >= rc) {
          c -= rc;
          ++j;
        }
      }
    }
    cp_async_commit();
  };

  {  // The query tile joins the first tile's group.
    const bf16* q_lat = p.q_lat + (b * p.rows + row0) * KV;
    const bf16* q_pe = p.q_pe + (b * p.rows + row0) * rope;
#pragma unroll
    for (int it = tid; it < mla_mma_rows * CK; it += mla_mma_threads) {
      const int j = it / CK, c = it % CK;
      const bool ok = row0 + j < p.rows;
      cp_async_16(q_s + j * sb + 16 * c, ok ? q_lat + std::int64_t(j) * KV + 8 * c : p.q_lat, ok);
    }
    for (int it = tid; it < mla_mma_rows * rc; it += mla_mma_threads) {
      const int j = it / rc, c = it % rc;
      const bool ok = row0 + j < p.rows;
      cp_async_16(q_s + j * sb + 2 * KV + 16 * c, ok ? q_pe + std::int64_t(j) * rope + 8 * c : p.q_pe, ok);
    }
  }
  load_tile(0);
  load_tile(1);

  // S role: rows srow + g and srow + g + 8 against keys 8·n + 2t (+1) (n < 4) of each tile, over the
  // column steps ks = 2j + dh; P and l for keys 16·dh .. + 15.
  const int srow = 16 * (warp % 4), dh = warp / 4;
  // PV role: rows prow + 16·mt + g (+8), columns pcol + 8·n + 2t (+1).
  const int prow = 32 * (warp / 4), pcol = KV / 4 * (warp % 4);
  std::int64_t lim[2];  // last key each S row sees; −1 past the end
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const std::int64_t r = row0 + srow + g + 8 * h;
    lim[h] = r < p.rows ? p.start_pos + r / p.heads : -1;
  }
  // ldmatrix row addresses. A (16 rows × 16 columns): lane → row lane % 16, column 8·(lane / 16); K as
  // B (16 keys × 16 columns): key lane % 8 + 8·(lane / 16), column 8·(lane / 8 % 2); V as transposed
  // B (16 keys × 16 columns): key lane % 16, column 8·(lane / 16). Step j of an S warp is 64·j bytes on.
  const unsigned char* q_addr = q_s + (srow + lane % 16) * sb + 16 * (lane / 16) + 32 * dh;
  const int k_off = (lane % 8 + 8 * (lane / 16)) * sb + 16 * (lane / 8 % 2) + 32 * dh;
  const unsigned char* p_addr = p_s + (prow + lane % 16) * P + 16 * (lane / 16);
  const int v_off = (lane % 16) * sb + 2 * pcol + 16 * (lane / 16);

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float o[2][NT][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][n][e] = 0.f;

  cp_async_wait<1>();  // the query tile and tile 0
  __syncthreads();
  std::uint32_t qf[QR > 0 ? QR : 1][4];
#pragma unroll
  for (int j = 0; j < QR; ++j) ldmatrix_x4(qf[j], q_addr + 64 * j);

  for (int i = 0; i < tiles; ++i) {
    const unsigned char* kt = k_s + (i % mla_mma_stages) * mla_mma_keys * sb;
    // This warp's half of the column steps of S, for all 32 keys.
    float s[4][4] = {};
    auto step = [&](const std::uint32_t (&a)[4], int j) {
      std::uint32_t k0f[4], k1f[4];
      ldmatrix_x4(k0f, kt + k_off + 64 * j);
      ldmatrix_x4(k1f, kt + k_off + 16 * sb + 64 * j);
      mma_bf16(s[0], a, k0f[0], k0f[1]);
      mma_bf16(s[1], a, k0f[2], k0f[3]);
      mma_bf16(s[2], a, k1f[0], k1f[1]);
      mma_bf16(s[3], a, k1f[2], k1f[3]);
    };
#pragma unroll
    for (int j = 0; j < QR; ++j) step(qf[j], j);
#pragma unroll
    for (int j = QR; j < QS; ++j) {
      std::uint32_t a[4];
      ldmatrix_x4(a, q_addr + 64 * j);
      step(a, j);
    }
#pragma unroll 2
    for (int j = QS; 2 * j + dh < nk; ++j) {  // the rope columns
      std::uint32_t a[4];
      ldmatrix_x4(a, q_addr + 64 * j);
      step(a, j);
    }
#pragma unroll
    for (int n = 0; n < 4; ++n) xch[(warp * 4 + n) * 32 + lane] = make_float4(s[n][0], s[n][1], s[n][2], s[n][3]);
    __syncthreads();  // B1: partial scores posted; every warp is past tile i − 1, so its stage is free
    load_tile(i + 2);

    // The other half's columns (the sum is the same bits in both warps of a row block), the mask (keys
    // past a row's last or past the range), the scale, and the softmax of this tile.
    const std::int64_t k0 = kbeg + std::int64_t(i) * mla_mma_keys;
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const float4 x = xch[(((warp + 4) % 8) * 4 + n) * 32 + lane];
      s[n][0] += x.x;
      s[n][1] += x.y;
      s[n][2] += x.z;
      s[n][3] += x.w;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = srow + g + 8 * h;
      // The last visible key of the tile relative to k0, clamped to −1 .. 31.
      const std::int64_t last = (lim[h] < kend - 1 ? lim[h] : kend - 1) - k0;
      const int vis = last < 0 ? -1 : last > mla_mma_keys - 1 ? mla_mma_keys - 1 : int(last);
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[n][2 * h + e];
          v = 8 * n + 2 * t + e <= vis ? v * p.scale_log2 : -INFINITY;
          mx = fmaxf(mx, v);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[h], mx);
      const float base = m_new == -INFINITY ? 0.f : m_new;  // no key seen yet: exp2(−inf − 0) = 0
      const float alpha = exp2f(m[h] - base);
      m[h] = m_new;
      l[h] *= alpha;
      if (dh == 0 && t == 0) alpha_s[row] = alpha;
#pragma unroll
      for (int n2 = 0; n2 < 2; ++n2) {
        const float v0 = dh ? s[2 + n2][2 * h] : s[n2][2 * h], v1 = dh ? s[2 + n2][2 * h + 1] : s[n2][2 * h + 1];
        const std::uint32_t pr = pack_bf16(exp2f(v0 - base), exp2f(v1 - base));
        l[h] += __uint_as_float(pr << 16) + __uint_as_float(pr & 0xffff0000u);
        *reinterpret_cast<std::uint32_t*>(p_s + row * P + 2 * (16 * dh + 8 * n2 + 2 * t)) = pr;
      }
    }
    cp_async_wait<1>();  // tile i + 1
    __syncthreads();     // B2: P and alpha posted, tile i + 1 visible

    float al[2][2];
    bool rescale = false;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        al[mt][h] = alpha_s[prow + 16 * mt + g + 8 * h];
        rescale |= al[mt][h] != 1.f;
      }
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[mt][n][e] *= al[mt][e / 2];
    }
#pragma unroll
    for (int ks = 0; ks < mla_mma_keys / 16; ++ks) {
      std::uint32_t pa[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) ldmatrix_x4(pa[mt], p_addr + 16 * mt * P + 32 * ks);
#pragma unroll
      for (int n = 0; n < NT; n += 2) {
        std::uint32_t vb[4];
        ldmatrix_x4_trans(vb, kt + v_off + 16 * ks * sb + 16 * n);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma_bf16(o[mt][n], pa[mt], vb[0], vb[1]);
          mma_bf16(o[mt][n + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
  }

  // l of the two key halves, then O / l from the PV warps.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    if (t == 0) {
      l_s[dh * mla_mma_rows + srow + g + 8 * h] = l[h];
      if (dh == 0) m_s[srow + g + 8 * h] = m[h];
    }
  }
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = prow + 16 * mt + g + 8 * h;
      const std::int64_t r = row0 + row;
      if (r >= p.rows) continue;
      const float lr = l_s[row] + l_s[mla_mma_rows + row];
      const float inv = lr > 0.f ? 1.f / lr : 0.f;  // a range with no visible key: O = 0, weight 0
      if (p.splits == 1) {
        bf16* out = p.o + (b * p.rows + r) * KV + pcol + 2 * t;
#pragma unroll
        for (int n = 0; n < NT; ++n)
          *reinterpret_cast<std::uint32_t*>(out + 8 * n) =
              pack_bf16(o[mt][n][2 * h] * inv, o[mt][n][2 * h + 1] * inv);
      } else {
        const std::int64_t part = (std::int64_t(z) * p.batch + b) * p.rows + r;
        float* out = p.part_o + part * KV + pcol + 2 * t;
#pragma unroll
        for (int n = 0; n < NT; ++n)
          *reinterpret_cast<float2*>(out + 8 * n) = make_float2(o[mt][n][2 * h] * inv, o[mt][n][2 * h + 1] * inv);
        if (warp % 4 == 0 && t == 0) p.part_lse[part] = lr > 0.f ? m_s[row] + log2f(lr) : -INFINITY;
      }
    }
}

// o = Σ_z w_z · part_o_z / Σ_z w_z over the ranges z in order, w_z = exp2(lse_z − max_z lse_z): one
// thread per 8 columns of a row, rows = batch · rows of the decode. Range 0 holds key 0, which every
// row sees, so the max is finite.
template <int KV>
__global__ void mla_decode_mma_merge_kernel(bf16* o, const float* part_o, const float* part_lse, std::int64_t rows,
                                            int splits) {
  constexpr int chunks = KV / 8;
  for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * chunks;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t row = e / chunks;
    const int col = int(e % chunks) * 8;
    float mx = -INFINITY;
    for (int z = 0; z < splits; ++z) mx = fmaxf(mx, part_lse[z * rows + row]);
    float sum = 0.f, acc[8] = {};
    for (int z = 0; z < splits; ++z) {
      const float w = exp2f(part_lse[z * rows + row] - mx);
      sum += w;
      const float* src = part_o + (z * rows + row) * KV + col;
      const float4 x = *reinterpret_cast<const float4*>(src), y = *reinterpret_cast<const float4*>(src + 4);
      const float v[8] = {x.x, x.y, x.z, x.w, y.x, y.y, y.z, y.w};
#pragma unroll
      for (int u = 0; u < 8; ++u) acc[u] += w * v[u];
    }
    uint4 out;
    const float inv = 1.f / sum;
    out.x = pack_bf16(acc[0] * inv, acc[1] * inv);
    out.y = pack_bf16(acc[2] * inv, acc[3] * inv);
    out.z = pack_bf16(acc[4] * inv, acc[5] * inv);
    out.w = pack_bf16(acc[6] * inv, acc[7] * inv);
    *reinterpret_cast<uint4*>(o + row * KV + col) = out;
  }
}

// Whether mla_decode_mma takes these operands (see the header); the pointers are those of
// mla_decode_attention.
inline bool mla_decode_mma_supported(cuda& be, std::int64_t kv_lora, std::int64_t rope, const bf16* o_lat,
                                     const bf16* q_lat, const bf16* q_pe, const bf16* cache_c_kv,
                                     const bf16* cache_k_pe) {
  if (kv_lora != 64 && kv_lora != 128 && kv_lora != 256 && kv_lora != 512) return false;
  if (rope < 0 || rope % 16 != 0) return false;
  auto aligned = [](const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
  if (!aligned(o_lat) || !aligned(q_lat) || !aligned(cache_c_kv)) return false;
  if (rope > 0 && (!aligned(q_pe) || !aligned(cache_k_pe))) return false;
  int limit = 0;
  DSX_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, be.device()));
  return mla_mma_smem(kv_lora, rope) <= std::size_t(limit);
}

// mla_decode_attention on tensor cores; the caller has checked the sizes and mla_decode_mma_supported.
inline void mla_decode_mma(cuda& be, bf16* o_lat, const bf16* q_lat, const bf16* q_pe, const bf16* cache_c_kv,
                           const bf16* cache_k_pe, std::int64_t batch, std::int64_t new_tokens, std::int64_t heads,
                           std::int64_t kv_lora, std::int64_t rope, std::int64_t cap, std::int64_t start_pos,
                           double scale) {
  mla_mma_params p{};
  p.q_lat = q_lat;
  p.q_pe = q_pe;
  p.c_kv = cache_c_kv;
  p.k_pe = cache_k_pe;
  p.o = o_lat;
  p.batch = batch;
  p.rows = new_tokens * heads;
  p.heads = heads;
  p.cap = cap;
  p.start_pos = start_pos;
  p.rope = int(rope);
  p.scale_log2 = float(scale * 1.4426950408889634);
  const std::int64_t blocks = attn_blocks(batch, p.rows, mla_mma_rows, "cuda mla_decode_attention");
  const std::int64_t key_tiles = (start_pos + new_tokens + mla_mma_keys - 1) / mla_mma_keys;
  const auto split = attn_key_split(blocks, key_tiles, mla_mma_target_blocks, mla_mma_min_split_tiles);
  const std::int64_t splits = split.first, tiles_per_split = split.second;
  p.splits = int(splits);
  p.split_keys = tiles_per_split * mla_mma_keys;
  const std::size_t part_rows = std::size_t(splits * batch * p.rows);
  if (splits > 1) {
    const std::size_t o_bytes = (part_rows * std::size_t(kv_lora) * sizeof(float) + 255) / 256 * 256;
    auto* base = static_cast<unsigned char*>(be.scratch(o_bytes + part_rows * sizeof(float)));
    p.part_o = reinterpret_cast<float*>(base);
    p.part_lse = reinterpret_cast<float*>(base + o_bytes);
  }
  const std::size_t smem = mla_mma_smem(kv_lora, rope);
  auto launch = [&](auto width) {
    constexpr int KV = decltype(width)::value;
    attn_prepare_smem(be, mla_decode_mma_kernel<KV>, smem, "cuda mla_decode_attention");
    mla_decode_mma_kernel<KV><<<dim3(unsigned(blocks), unsigned(splits)), mla_mma_threads, smem, be.stream()>>>(p);
    DSX_CUDA_CHECK_LAUNCH("mla_decode_mma_kernel");
    if (splits > 1) {
      constexpr unsigned threads = 256;
      const std::int64_t rows = batch * p.rows;
      mla_decode_mma_merge_kernel<KV><<<grid_for(rows * (KV / 8), threads), threads, 0, be.stream()>>>(
          o_lat, p.part_o, p.part_lse, rows, p.splits);
      DSX_CUDA_CHECK_LAUNCH("mla_decode_mma_merge_kernel");
    }
  };
  switch (kv_lora) {
    case 64: launch(std::integral_constant<int, 64>{}); break;
    case 128: launch(std::integral_constant<int, 128>{}); break;
    case 256: launch(std::integral_constant<int, 256>{}); break;
    case 512: launch(std::integral_constant<int, 512>{}); break;
    default: throw error("cuda mla_decode_attention: no tensor-core kernel for kv_lora " + std::to_string(kv_lora));
  }
}

}  // namespace dsx::backend::cuda_detail
