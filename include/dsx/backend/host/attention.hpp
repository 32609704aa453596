// Causal attention primitives of the host backend: the reference for the CUDA kernels.
//
//  - attention_forward / attention_backward: multi-head causal attention with the flash-attention
//    contract. Forward saves only lse = log Σ_j exp(scale · q·k_j) per query row; backward recomputes
//    the probabilities from it (P = exp(scale · q·k − lse)) with D = rowsum(dO ∘ O).
//  - mla_expand_kv / mla_expand_kv_backward: MLA's per-head keys and values for the training
//    ("naive") form, K = [K_nope | k_pe shared by all heads], V, and the adjoint of that gather.
//  - mla_cache_append / mla_decode_attention: MLA decoding over the latent cache (the "absorbed" form):
//    the cache holds, per token, the normalised latent c_KV (kv_lora) and the roped shared key k_pe
//    (rope), and every head attends to it with the query folded into the latent space.
//
// Token t of a sequence attends to the tokens at positions ≤ its own. Arithmetic is in accum_t<T>;
// loops are OpenMP-parallel over (batch, head) pairs, which never write the same element.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "dsx/backend/host/host.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx::backend {

namespace detail {
// Dot product of two contiguous length-n vectors (storage types T and U), in A.
template <class A, class T, class U>
A dot(const T* a, const U* b, std::int64_t n) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (std::int64_t i = 0; i < n; ++i) s += A(a[i]) * A(b[i]);
  return s;
}

// The (rows, cols) block at src with row stride ld, copied to dst in A: row-major (dst[r · cols + c]) or,
// with transpose, column-major (dst[c · rows + r]). The attention loops run over these contiguous copies
// so that their innermost loops are unit-stride and vectorise.
template <class A, class T>
void pack(A* dst, const T* src, std::int64_t rows, std::int64_t cols, std::int64_t ld, bool transpose) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) dst[transpose ? c * rows + r : r * cols + c] = A(src[r * ld + c]);
}

// s[j] = Σ_d x[d] · mt[d · ld + j] for j < n: a vector times the first n columns of a column-major
// (d, ld) matrix, vectorised over j.
template <class A>
void row_times(A* s, const A* x, const A* mt, std::int64_t d_len, std::int64_t ld, std::int64_t n) {
  for (std::int64_t j = 0; j < n; ++j) s[j] = 0;
  for (std::int64_t d = 0; d < d_len; ++d) {
    const A xd = x[d];
    const A* m = mt + d * ld;
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) s[j] += xd * m[j];
  }
}

// y[d] += a · x[d] for d < n, in A.
template <class A, class T>
void axpy(A* y, A a, const T* x, std::int64_t n) {
#pragma omp simd
  for (std::int64_t d = 0; d < n; ++d) y[d] += a * A(x[d]);
}
}  // namespace detail

// q, k: (batch, seq, heads, qk_dim); v: (batch, seq, heads, v_dim) → o: (batch, seq, heads, v_dim) (=),
// lse: (batch, heads, seq) (=). o_i = Σ_{j ≤ i} softmax_j(scale · q_i·k_j) v_j.
template <class T>
void attention_forward(host&, T* o, accum_t<T>* lse, const T* q, const T* k, const T* v, std::int64_t batch,
                       std::int64_t seq, std::int64_t heads, std::int64_t qk_dim, std::int64_t v_dim, double scale) {
  using A = accum_t<T>;
  const std::int64_t qk_row = heads * qk_dim, v_row = heads * v_dim;  // elements between consecutive tokens
  const auto n = [](std::int64_t x) { return static_cast<std::size_t>(x); };
#pragma omp parallel
  {
    // One (batch, head) at a time: K transposed, V, the scaled query row, scores and the output row.
    std::vector<A> kt(n(qk_dim * seq)), vs(n(seq * v_dim)), qi(n(qk_dim)), p(n(seq)), acc(n(v_dim));
#pragma omp for schedule(static) collapse(2)
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < heads; ++h) {
        const T* qh = q + b * seq * qk_row + h * qk_dim;
        detail::pack(kt.data(), k + b * seq * qk_row + h * qk_dim, seq, qk_dim, qk_row, true);
        detail::pack(vs.data(), v + b * seq * v_row + h * v_dim, seq, v_dim, v_row, false);
        T* oh = o + b * seq * v_row + h * v_dim;
        A* lse_h = lse + (b * heads + h) * seq;
        for (std::int64_t i = 0; i < seq; ++i) {
          for (std::int64_t d = 0; d < qk_dim; ++d) qi[n(d)] = A(scale) * A(qh[i * qk_row + d]);
          detail::row_times(p.data(), qi.data(), kt.data(), qk_dim, seq, i + 1);
          A mx = -std::numeric_limits<A>::infinity();
          for (std::int64_t j = 0; j <= i; ++j) mx = p[n(j)] > mx ? p[n(j)] : mx;
          A sum = 0;
          for (std::int64_t j = 0; j <= i; ++j) sum += p[n(j)] = std::exp(p[n(j)] - mx);
          for (auto& a : acc) a = 0;
          for (std::int64_t j = 0; j <= i; ++j) detail::axpy(acc.data(), p[n(j)], vs.data() + j * v_dim, v_dim);
          for (std::int64_t d = 0; d < v_dim; ++d) oh[i * v_row + d] = T(acc[n(d)] / sum);
          lse_h[i] = mx + std::log(sum);
        }
      }
  }
}

// Gradients of attention_forward: dq, dk, dv (=) from dout (shape of o), the forward's inputs, its
// output o and its lse. With P_ij = exp(scale · q_i·k_j − lse_i), dP_ij = dO_i·v_j, D_i = dO_i·O_i and
// dS_ij = P_ij (dP_ij − D_i): dq_i = scale Σ_j dS_ij k_j, dk_j = scale Σ_i dS_ij q_i, dv_j = Σ_i P_ij dO_i.
template <class T>
void attention_backward(host&, T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* o,
                        const accum_t<T>* lse, std::int64_t batch, std::int64_t seq, std::int64_t heads,
                        std::int64_t qk_dim, std::int64_t v_dim, double scale) {
  using A = accum_t<T>;
  const std::int64_t qk_row = heads * qk_dim, v_row = heads * v_dim;
  const auto n = [](std::int64_t x) { return static_cast<std::size_t>(x); };
#pragma omp parallel
  {
    // Per (batch, head): K row-major (for dq) and transposed (for the scores), V transposed (for dP); dk
    // and dv gather contributions from every later query, so they accumulate here.
    std::vector<A> ks(n(seq * qk_dim)), kt(n(qk_dim * seq)), vt(n(v_dim * seq));
    std::vector<A> dk_acc(n(seq * qk_dim)), dv_acc(n(seq * v_dim));
    std::vector<A> qi(n(qk_dim)), doi(n(v_dim)), dq_acc(n(qk_dim)), p(n(seq)), ds(n(seq));
#pragma omp for schedule(static) collapse(2)
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < heads; ++h) {
        const std::int64_t qk_base = b * seq * qk_row + h * qk_dim, v_base = b * seq * v_row + h * v_dim;
        const T *qh = q + qk_base, *oh = o + v_base, *doh = dout + v_base;
        detail::pack(ks.data(), k + qk_base, seq, qk_dim, qk_row, false);
        detail::pack(kt.data(), k + qk_base, seq, qk_dim, qk_row, true);
        detail::pack(vt.data(), v + v_base, seq, v_dim, v_row, true);
        const A* lse_h = lse + (b * heads + h) * seq;
        for (auto& a : dk_acc) a = 0;
        for (auto& a : dv_acc) a = 0;
        for (std::int64_t i = 0; i < seq; ++i) {
          for (std::int64_t d = 0; d < qk_dim; ++d) qi[n(d)] = A(qh[i * qk_row + d]);
          for (std::int64_t d = 0; d < v_dim; ++d) doi[n(d)] = A(doh[i * v_row + d]);
          const A di = detail::dot<A>(doi.data(), oh + i * v_row, v_dim);
          detail::row_times(p.data(), qi.data(), kt.data(), qk_dim, seq, i + 1);
          detail::row_times(ds.data(), doi.data(), vt.data(), v_dim, seq, i + 1);
          for (std::int64_t j = 0; j <= i; ++j) {
            p[n(j)] = std::exp(A(scale) * p[n(j)] - lse_h[i]);
            ds[n(j)] = p[n(j)] * (ds[n(j)] - di);
          }
          for (auto& a : dq_acc) a = 0;
          for (std::int64_t j = 0; j <= i; ++j) {
            detail::axpy(dq_acc.data(), ds[n(j)], ks.data() + j * qk_dim, qk_dim);
            detail::axpy(dk_acc.data() + j * qk_dim, ds[n(j)], qi.data(), qk_dim);
            detail::axpy(dv_acc.data() + j * v_dim, p[n(j)], doi.data(), v_dim);
          }
          for (std::int64_t d = 0; d < qk_dim; ++d) dq[qk_base + i * qk_row + d] = T(A(scale) * dq_acc[n(d)]);
        }
        for (std::int64_t j = 0; j < seq; ++j) {
          for (std::int64_t d = 0; d < qk_dim; ++d) dk[qk_base + j * qk_row + d] = T(A(scale) * dk_acc[n(j * qk_dim + d)]);
          for (std::int64_t d = 0; d < v_dim; ++d) dv[v_base + j * v_row + d] = T(dv_acc[n(j * v_dim + d)]);
        }
      }
  }
}

// MLA's per-head keys and values from the up-projected latent (naive form):
// kv: (tokens, heads, nope + v_dim), per head [K_nope | V] (the row order of kv_b_proj);
// k_pe: (tokens, rope) at row stride pe_stride, the roped key shared by all heads;
// → k: (tokens, heads, nope + rope) = [K_nope | k_pe] (=), v: (tokens, heads, v_dim) (=).
template <class T>
void mla_expand_kv(host&, T* k, T* v, const T* kv, const T* k_pe, std::int64_t pe_stride, std::int64_t tokens,
                   std::int64_t heads, std::int64_t nope, std::int64_t rope, std::int64_t v_dim) {
  const std::int64_t qk_dim = nope + rope, kv_row = nope + v_dim;
#pragma omp parallel for schedule(static) collapse(2)
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t h = 0; h < heads; ++h) {
      const T* src = kv + (t * heads + h) * kv_row;
      T* kd = k + (t * heads + h) * qk_dim;
      T* vd = v + (t * heads + h) * v_dim;
      for (std::int64_t d = 0; d < nope; ++d) kd[d] = src[d];
      for (std::int64_t d = 0; d < rope; ++d) kd[nope + d] = k_pe[t * pe_stride + d];
      for (std::int64_t d = 0; d < v_dim; ++d) vd[d] = src[nope + d];
    }
}

// Adjoint of mla_expand_kv: dkv: (tokens, heads, nope + v_dim) (=) gathers the K_nope and V parts of
// dk: (tokens, heads, nope + rope) and dv: (tokens, heads, v_dim); d_pe: (tokens, rope) at row stride
// pe_stride (=) is the sum over heads of the rope part of dk (the key is shared).
template <class T>
void mla_expand_kv_backward(host&, T* dkv, T* d_pe, std::int64_t pe_stride, const T* dk, const T* dv,
                            std::int64_t tokens, std::int64_t heads, std::int64_t nope, std::int64_t rope,
                            std::int64_t v_dim) {
  using A = accum_t<T>;
  const std::int64_t qk_dim = nope + rope, kv_row = nope + v_dim;
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t h = 0; h < heads; ++h) {
      const T* dkh = dk + (t * heads + h) * qk_dim;
      const T* dvh = dv + (t * heads + h) * v_dim;
      T* dst = dkv + (t * heads + h) * kv_row;
      for (std::int64_t d = 0; d < nope; ++d) dst[d] = dkh[d];
      for (std::int64_t d = 0; d < v_dim; ++d) dst[nope + d] = dvh[d];
    }
    for (std::int64_t d = 0; d < rope; ++d) {
      A s = 0;
      for (std::int64_t h = 0; h < heads; ++h) s += A(dk[(t * heads + h) * qk_dim + nope + d]);
      d_pe[t * pe_stride + d] = T(s);
    }
  }
}

// Writes the new tokens' latent entries into the cache at positions start_pos .. start_pos + new_tokens − 1
// of every sequence. c_kv: (batch · new_tokens, kv_lora) at row stride c_stride, normalised;
// k_pe: (batch · new_tokens, rope) at row stride pe_stride, roped;
// cache_c_kv: (batch, cap, kv_lora), cache_k_pe: (batch, cap, rope).
template <class T>
void mla_cache_append(host&, T* cache_c_kv, T* cache_k_pe, std::int64_t cap, const T* c_kv, std::int64_t c_stride,
                      const T* k_pe, std::int64_t pe_stride, std::int64_t batch, std::int64_t new_tokens,
                      std::int64_t start_pos, std::int64_t kv_lora, std::int64_t rope) {
#pragma omp parallel for schedule(static) collapse(2)
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t s = 0; s < new_tokens; ++s) {
      const std::int64_t src = b * new_tokens + s, dst = b * cap + start_pos + s;
      for (std::int64_t d = 0; d < kv_lora; ++d) cache_c_kv[dst * kv_lora + d] = c_kv[src * c_stride + d];
      for (std::int64_t d = 0; d < rope; ++d) cache_k_pe[dst * rope + d] = k_pe[src * pe_stride + d];
    }
}

// Absorbed MLA attention of new tokens over the latent cache (the contract of FlashMLA's decode kernel,
// with the query and key split into their latent and rope parts).
//   q_lat: (batch, new_tokens, heads, kv_lora)  the query's nope part folded through W_UK of its head
//   q_pe:  (batch, new_tokens, heads, rope)     the query's roped part
//   cache_c_kv: (batch, cap, kv_lora), cache_k_pe: (batch, cap, rope), already holding positions
//          0 .. start_pos + new_tokens − 1 (append the new tokens first)
//   o_lat: (batch, new_tokens, heads, kv_lora) (=) = Σ_{t ≤ pos} p_t c_kv[t], the attention output in the
//          latent space (W_UV is applied by the caller),
// where new token s sits at pos = start_pos + s and p = softmax_t(scale · (q_lat·c_kv[t] + q_pe·k_pe[t])).
template <class T>
void mla_decode_attention(host&, T* o_lat, const T* q_lat, const T* q_pe, const T* cache_c_kv, const T* cache_k_pe,
                          std::int64_t batch, std::int64_t new_tokens, std::int64_t heads, std::int64_t kv_lora,
                          std::int64_t rope, std::int64_t cap, std::int64_t start_pos, double scale) {
  using A = accum_t<T>;
  const std::int64_t end = start_pos + new_tokens;  // cache positions in use after the append
#pragma omp parallel
  {
    std::vector<A> p(static_cast<std::size_t>(end)), acc(static_cast<std::size_t>(kv_lora));
#pragma omp for schedule(static) collapse(2)
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < heads; ++h) {
        const T* c_b = cache_c_kv + b * cap * kv_lora;
        const T* pe_b = cache_k_pe + b * cap * rope;
        for (std::int64_t s = 0; s < new_tokens; ++s) {
          const std::int64_t row = (b * new_tokens + s) * heads + h, last = start_pos + s;
          const T* ql = q_lat + row * kv_lora;
          const T* qr = q_pe + row * rope;
          A mx = -std::numeric_limits<A>::infinity();
          for (std::int64_t t = 0; t <= last; ++t) {
            p[t] = A(scale) * (detail::dot<A>(ql, c_b + t * kv_lora, kv_lora) + detail::dot<A>(qr, pe_b + t * rope, rope));
            mx = p[t] > mx ? p[t] : mx;
          }
          A sum = 0;
          for (std::int64_t t = 0; t <= last; ++t) sum += p[t] = std::exp(p[t] - mx);
          for (auto& a : acc) a = 0;
          for (std::int64_t t = 0; t <= last; ++t) detail::axpy(acc.data(), p[t], c_b + t * kv_lora, kv_lora);
          for (std::int64_t d = 0; d < kv_lora; ++d) o_lat[row * kv_lora + d] = T(acc[d] / sum);
        }
      }
  }
}

}  // namespace dsx::backend
