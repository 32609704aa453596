// Multi-head Latent Attention (DeepSeek-V2 §2.1, V3 §2.1.1), forward and backward for training and
// decoding through the latent KV cache.
//
// Per token x (the normalised block input, hidden):
//   query:  q = q_b_proj(RMSNorm_q(q_a_proj(x)))   (q_lora > 0)   or   q = q_proj(x)   (q_lora == 0)
//           q per head = [q_nope (nope) | q_pe (rope)], RoPE on q_pe
//   latent: [c (kv_lora) | k_pe (rope)] = kv_a_proj(x);  c_KV = RMSNorm_kv(c);  RoPE on k_pe, which is one
//           key shared by every head and is not normalised
//   keys and values: kv_b_proj(c_KV) per head = [K_nope (nope) | V (v)];  k = [K_nope | k_pe]
//   attention: causal softmax(softmax_scale · q·k) over the positions ≤ the token's own, times V
//   output: y = o_proj(o), o = (heads · v)
// Weights are PyTorch Linear layouts (out, in) under the names of config/param_spec.hpp.
//
// Two forms of the same attention:
//  - `forward` / `backward` (training, prefill of a full sequence) materialise per-head K and V and call
//    the flash-attention-style primitives attention_forward / attention_backward;
//  - `decode` caches only c_KV and the roped k_pe (kv_lora + rope values per token) and uses the
//    absorbed form: W_UK (the K_nope rows of kv_b_proj) is folded into the query, q_lat = q_nope · W_UK,
//    so scores are q_lat·c_KV + q_pe·k_pe; the attention output stays in the latent space and W_UV (the V
//    rows) is applied after it. Per-head K and V are never formed.
//
// Contract (layers/mlp.hpp): `plan` declares the activations kept for backward, `bind` resolves them,
// `scratch_bytes` / `decode_scratch_bytes` size the temporary memory the caller passes in. forward
// writes y (=); backward writes dx (=) and accumulates parameter gradients (+=). Only backend primitives
// touch tensor memory, so every backend runs this code. The projections run through linear_gemm<Fp8>
// (layers/linear.hpp; FP8 block scaling with Fp8, which needs use_fp8_workspace first); the attention
// core, and in decode the absorbed per-head products with kv_b_proj, stay in T.
//
// Positions: token t of each sequence is at position t in forward/backward; the i-th new token of a
// decode call is at start_pos + i. cos, sin: (positions, rope / 2) tables from layers/rope.hpp `make_rope_table`, covering every
// position used.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "dsx/config/checks.hpp"
#include "dsx/config/model_config.hpp"
#include "dsx/core/arena.hpp"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"
#include "dsx/layers/linear.hpp"
#include "dsx/layers/rope.hpp"

namespace dsx {

// Unused weights (q_proj when q_lora > 0; q_a_proj, q_a_norm, q_b_proj when q_lora == 0) are null.
template <class T>
struct mla_weights {
  const T* q_proj = nullptr;     // (heads · (nope + rope), hidden)
  const T* q_a_proj = nullptr;   // (q_lora, hidden)
  const T* q_a_norm = nullptr;   // (q_lora)
  const T* q_b_proj = nullptr;   // (heads · (nope + rope), q_lora)
  const T* kv_a_proj = nullptr;  // (kv_lora + rope, hidden): c rows, then k_pe rows
  const T* kv_a_norm = nullptr;  // (kv_lora)
  const T* kv_b_proj = nullptr;  // (heads · (nope + v), kv_lora): per head K_nope rows (W_UK), then V rows (W_UV)
  const T* o_proj = nullptr;     // (hidden, heads · v)
};

template <class T>
struct mla_grads {
  T* q_proj = nullptr;
  T* q_a_proj = nullptr;
  T* q_a_norm = nullptr;
  T* q_b_proj = nullptr;
  T* kv_a_proj = nullptr;
  T* kv_a_norm = nullptr;
  T* kv_b_proj = nullptr;
  T* o_proj = nullptr;
};

// The latent KV cache of one layer, a view over caller-owned memory: per sequence and position the
// normalised latent c_KV and the roped shared key k_pe.
template <class T>
struct mla_cache {
  T* c_kv = nullptr;     // (batch, cap, kv_lora)
  T* k_pe = nullptr;     // (batch, cap, rope)
  std::int64_t cap = 0;  // positions per sequence
};

namespace detail {
// Hands out consecutive arrays of a caller's scratch buffer, aligned like arena slots. With a null base
// it hands out null pointers and only counts bytes, so one carving function both sizes and splits it.
// The base must be aligned for the widest type taken (any allocation is).
class scratch_cursor {
 public:
  explicit scratch_cursor(std::byte* base) : base_(base) {}
  template <class U>
  U* take(std::int64_t count) {
    used_ = (used_ + arena_plan::alignment - 1) / arena_plan::alignment * arena_plan::alignment;
    U* p = base_ ? reinterpret_cast<U*>(base_ + used_) : nullptr;
    used_ += std::size_t(count) * sizeof(U);
    return p;
  }
  std::size_t bytes() const { return used_; }

 private:
  std::byte* base_;
  std::size_t used_ = 0;
};
}  // namespace detail

template <class T, bool Fp8 = false>
class mla {
  using A = accum_t<T>;

 public:
  explicit mla(const model_config& c)
      : hidden_(c.hidden), heads_(c.mla.heads), q_lora_(c.mla.q_lora), kv_lora_(c.mla.kv_lora), nope_(c.mla.nope),
        rope_(c.mla.rope), v_dim_(c.mla.v), eps_(c.rms_eps), scale_(softmax_scale(c)) {
    const std::string problem = check(c);
    require(problem.empty(), "mla: invalid model configuration: " + problem);
  }

  void plan(arena_plan& p, std::int64_t batch, std::int64_t seq) {
    require(batch > 0 && seq > 0, "mla.plan: batch and seq must be positive, got batch " + std::to_string(batch) +
                                      ", seq " + std::to_string(seq));
    tokens_ = batch * seq;
    if (q_lora_ > 0) {
      qa_slot_ = p.reserve<T>(tokens_ * q_lora_, "mla.q_a");
      qa_norm_slot_ = p.reserve<T>(tokens_ * q_lora_, "mla.q_a_norm");
      qa_rstd_slot_ = p.reserve<A>(tokens_, "mla.q_a_rstd");
    }
    q_slot_ = p.reserve<T>(tokens_ * heads_ * qk(), "mla.q");
    kva_slot_ = p.reserve<T>(tokens_ * latent(), "mla.kv_a");
    c_slot_ = p.reserve<T>(tokens_ * kv_lora_, "mla.c_kv");
    c_rstd_slot_ = p.reserve<A>(tokens_, "mla.c_kv_rstd");
    k_slot_ = p.reserve<T>(tokens_ * heads_ * qk(), "mla.k");
    v_slot_ = p.reserve<T>(tokens_ * heads_ * v_dim_, "mla.v");
    o_slot_ = p.reserve<T>(tokens_ * heads_ * v_dim_, "mla.o");
    lse_slot_ = p.reserve<A>(tokens_ * heads_, "mla.lse");
  }

  void bind(std::byte* base, const arena_plan& p) {
    auto at = [&](std::size_t slot) { return base + p.offset(slot); };
    if (q_lora_ > 0) {
      qa_ = reinterpret_cast<T*>(at(qa_slot_));
      qa_norm_ = reinterpret_cast<T*>(at(qa_norm_slot_));
      qa_rstd_ = reinterpret_cast<A*>(at(qa_rstd_slot_));
    }
    q_ = reinterpret_cast<T*>(at(q_slot_));
    kva_ = reinterpret_cast<T*>(at(kva_slot_));
    c_ = reinterpret_cast<T*>(at(c_slot_));
    c_rstd_ = reinterpret_cast<A*>(at(c_rstd_slot_));
    k_ = reinterpret_cast<T*>(at(k_slot_));
    v_ = reinterpret_cast<T*>(at(v_slot_));
    o_ = reinterpret_cast<T*>(at(o_slot_));
    lse_ = reinterpret_cast<A*>(at(lse_slot_));
  }

  // Scratch of forward and backward (the larger of the two).
  std::size_t scratch_bytes(std::int64_t batch, std::int64_t seq) const {
    const std::int64_t tokens = batch * seq;
    return std::max(carve_forward(nullptr, tokens).bytes, carve_backward(nullptr, tokens).bytes);
  }

  std::size_t decode_scratch_bytes(std::int64_t batch, std::int64_t new_tokens) const {
    return carve_decode(nullptr, batch * new_tokens).bytes;
  }

  void fp8_workspace_need(fp8_workspace_size& s, std::int64_t tokens) const {
    const std::int64_t hqk = heads_ * qk();
    if (q_lora_ > 0) {
      s.add(tokens, q_lora_, hidden_);
      s.add(tokens, hqk, q_lora_);
    } else {
      s.add(tokens, hqk, hidden_);
    }
    s.add(tokens, latent(), hidden_);
    s.add(tokens, heads_ * (nope_ + v_dim_), kv_lora_);
    s.add(tokens, hidden_, heads_ * v_dim_);
  }
  void use_fp8_workspace(const fp8_workspace& ws) { lin_.use(ws); }

  // x: (batch · seq, hidden), the normalised block input → y: (batch · seq, hidden) (=).
  template <class Backend>
  void forward(Backend& be, const mla_weights<T>& w, const T* x, T* y, std::int64_t batch, std::int64_t seq,
               const A* cos, const A* sin, std::byte* scratch) {
    check_size("mla.forward", batch, seq);
    check_weights("mla.forward", w);
    forward_batch_ = batch;
    forward_seq_ = seq;
    const std::int64_t tokens = batch * seq, hv = heads_ * v_dim_, hkv = heads_ * (nope_ + v_dim_);
    const auto s = carve_forward(scratch, tokens);

    project_query(be, w, x, tokens, seq, 0, cos, sin, q_, qa_, qa_norm_, qa_rstd_);  // (tokens, heads, nope + rope)
    project_latent(be, w, x, tokens, seq, 0, cos, sin, kva_, c_, c_rstd_);            // c_KV: (tokens, kv_lora)
    // Per-head keys and values from the latent: kv (tokens, heads, nope + v), then K and V.
    lin_.fprop(be, tokens, hkv, kv_lora_, c_, w.kv_b_proj, s.kv);
    mla_expand_kv(be, k_, v_, s.kv, kva_ + kv_lora_, latent(), tokens, heads_, nope_, rope_, v_dim_);
    attention_forward(be, o_, lse_, q_, k_, v_, batch, seq, heads_, qk(), v_dim_, scale_);   // (tokens, heads, v)
    lin_.fprop(be, tokens, hidden_, hv, o_, w.o_proj, y);                                    // (tokens, hidden)
  }

  // After forward on the same x: dy: (batch · seq, hidden) → dx: (batch · seq, hidden) (=); grads +=.
  template <class Backend>
  void backward(Backend& be, const mla_weights<T>& w, const mla_grads<T>& g, const T* x, const T* dy, T* dx,
                std::int64_t batch, std::int64_t seq, const A* cos, const A* sin, std::byte* scratch) {
    check_size("mla.backward", batch, seq);
    require(batch == forward_batch_ && seq == forward_seq_,
            "mla.backward: batch " + std::to_string(batch) + " × seq " + std::to_string(seq) +
                " differs from the last forward's " + std::to_string(forward_batch_) + " × " +
                std::to_string(forward_seq_));
    check_weights("mla.backward", w);
    check_grads(g);
    const std::int64_t tokens = batch * seq, hv = heads_ * v_dim_, hqk = heads_ * qk();
    const std::int64_t hkv = heads_ * (nope_ + v_dim_), lat = latent();
    const auto s = carve_backward(scratch, tokens);

    // Output projection and attention.
    lin_.wgrad(be, tokens, hidden_, hv, dy, o_, g.o_proj);            // dW_o += dyᵀ o
    lin_.dgrad(be, tokens, hidden_, hv, dy, w.o_proj, 0.0, s.d_o);    // dO = dy W_o
    attention_backward(be, s.dq, s.dk, s.dv, s.d_o, q_, k_, v_, o_, lse_, batch, seq, heads_, qk(), v_dim_, scale_);

    // Keys and values back to the latent: the K_nope and V rows of kv_b_proj, and the shared k_pe whose
    // gradient is the sum over heads. d[c | k_pe] is assembled in dkva: (tokens, kv_lora + rope).
    mla_expand_kv_backward(be, s.dkv, s.dkva + kv_lora_, lat, s.dk, s.dv, tokens, heads_, nope_, rope_, v_dim_);
    rope_apply(be, s.dkva + kv_lora_, tokens, 1, lat, 0, rope_, seq, 0, cos, sin, true);  // d k_pe before RoPE
    // dW_kvb += dkvᵀ c_KV;  d c_KV = dkv W_kvb
    lin_.wgrad(be, tokens, hkv, kv_lora_, s.dkv, c_, g.kv_b_proj);
    lin_.dgrad(be, tokens, hkv, kv_lora_, s.dkv, w.kv_b_proj, 0.0, s.dc);
    rmsnorm_backward(be, s.dkva, lat, g.kv_a_norm, s.dc, kv_lora_, kva_, lat, w.kv_a_norm, c_rstd_, tokens, kv_lora_,
                     false);  // d c into the first kv_lora columns of dkva
    // dW_kva += dkvaᵀ x;  dx = dkva W_kva
    lin_.wgrad(be, tokens, lat, hidden_, s.dkva, x, g.kv_a_proj);
    lin_.dgrad(be, tokens, lat, hidden_, s.dkva, w.kv_a_proj, 0.0, dx);

    // Query.
    rope_apply(be, s.dq + nope_, tokens, heads_, hqk, qk(), rope_, seq, 0, cos, sin, true);  // d q_pe before RoPE
    if (q_lora_ > 0) {
      // dW_qb += dqᵀ q_a_norm;  d q_a_norm = dq W_qb
      lin_.wgrad(be, tokens, hqk, q_lora_, s.dq, qa_norm_, g.q_b_proj);
      lin_.dgrad(be, tokens, hqk, q_lora_, s.dq, w.q_b_proj, 0.0, s.dqa_norm);
      rmsnorm_backward(be, s.dqa, q_lora_, g.q_a_norm, s.dqa_norm, q_lora_, qa_, q_lora_, w.q_a_norm, qa_rstd_,
                       tokens, q_lora_, false);  // (tokens, q_lora)
      // dW_qa += dqaᵀ x;  dx += dqa W_qa
      lin_.wgrad(be, tokens, q_lora_, hidden_, s.dqa, x, g.q_a_proj);
      lin_.dgrad(be, tokens, q_lora_, hidden_, s.dqa, w.q_a_proj, 1.0, dx);
    } else {
      // dW_q += dqᵀ x;  dx += dq W_q
      lin_.wgrad(be, tokens, hqk, hidden_, s.dq, x, g.q_proj);
      lin_.dgrad(be, tokens, hqk, hidden_, s.dq, w.q_proj, 1.0, dx);
    }
  }

  // Decodes new_tokens per sequence at positions start_pos .. start_pos + new_tokens − 1 (a prompt is
  // the chunk at start_pos 0): appends their c_KV and roped k_pe to the cache, then attends over cache
  // positions ≤ each token's own with the absorbed form. x: (batch · new_tokens, hidden), the normalised
  // block input → y: (batch · new_tokens, hidden) (=). Uses no planned activations.
  template <class Backend>
  void decode(Backend& be, const mla_weights<T>& w, const T* x, T* y, std::int64_t batch, std::int64_t new_tokens,
              std::int64_t start_pos, mla_cache<T>& cache, const A* cos, const A* sin, std::byte* scratch) const {
    require(batch > 0 && new_tokens > 0, "mla.decode: batch and new_tokens must be positive, got batch " +
                                             std::to_string(batch) + ", new_tokens " + std::to_string(new_tokens));
    require(start_pos >= 0 && start_pos + new_tokens <= cache.cap,
            "mla.decode: positions " + std::to_string(start_pos) + ".." + std::to_string(start_pos + new_tokens - 1) +
                " do not fit the cache of " + std::to_string(cache.cap) + " positions");
    require(cache.c_kv && cache.k_pe, "mla.decode: the cache's c_kv and k_pe must not be null");
    check_weights("mla.decode", w);
    const std::int64_t tokens = batch * new_tokens, hv = heads_ * v_dim_, hl = heads_ * kv_lora_;
    const std::int64_t head_block = (nope_ + v_dim_) * kv_lora_;  // elements of one head's block of kv_b_proj
    const auto s = carve_decode(scratch, tokens);

    project_query(be, w, x, tokens, new_tokens, start_pos, cos, sin, s.q, s.qa, s.qa_norm, s.qa_rstd);
    project_latent(be, w, x, tokens, new_tokens, start_pos, cos, sin, s.kva, s.c, s.c_rstd);
    mla_cache_append(be, cache.c_kv, cache.k_pe, cache.cap, s.c, kv_lora_, s.kva + kv_lora_, latent(), batch,
                     new_tokens, start_pos, kv_lora_, rope_);

    // Absorb W_UK (nope, kv_lora) of each head into its query: q_lat = q_nope · W_UK, (tokens, heads, kv_lora).
    gemm_strided_batched(be, false, false, tokens, kv_lora_, nope_, 1.0, s.q, heads_ * qk(), qk(), w.kv_b_proj,
                         kv_lora_, head_block, 0.0, s.q_lat, hl, kv_lora_, heads_);
    copy_rows(be, s.q_pe, rope_, s.q + nope_, qk(), tokens * heads_, rope_);  // (tokens, heads, rope)
    // o_lat: (tokens, heads, kv_lora), the attention output in the latent space.
    mla_decode_attention(be, s.o_lat, s.q_lat, s.q_pe, cache.c_kv, cache.k_pe, batch, new_tokens, heads_, kv_lora_,
                         rope_, cache.cap, start_pos, scale_);
    // Apply W_UV (v, kv_lora) of each head after attention: o = o_lat · W_UVᵀ, (tokens, heads, v).
    gemm_strided_batched(be, false, true, tokens, v_dim_, kv_lora_, 1.0, s.o_lat, hl, kv_lora_,
                         w.kv_b_proj + nope_ * kv_lora_, kv_lora_, head_block, 0.0, s.o, hv, v_dim_, heads_);
    lin_.fprop(be, tokens, hidden_, hv, s.o, w.o_proj, y);  // (tokens, hidden)
  }

 private:
  struct forward_scratch {
    T* kv;  // (tokens, heads, nope + v)
    std::size_t bytes;
  };
  struct backward_scratch {
    T *d_o, *dq, *dk, *dv, *dkv, *dkva, *dc, *dqa_norm, *dqa;
    std::size_t bytes;
  };
  struct decode_scratch {
    T *qa, *qa_norm;
    A* qa_rstd;
    T *q, *kva, *c;
    A* c_rstd;
    T *q_lat, *q_pe, *o_lat, *o;
    std::size_t bytes;
  };

  std::int64_t qk() const { return nope_ + rope_; }
  std::int64_t latent() const { return kv_lora_ + rope_; }  // width of kv_a_proj's output

  forward_scratch carve_forward(std::byte* base, std::int64_t tokens) const {
    detail::scratch_cursor c(base);
    forward_scratch s{};
    s.kv = c.take<T>(tokens * heads_ * (nope_ + v_dim_));
    s.bytes = c.bytes();
    return s;
  }
  backward_scratch carve_backward(std::byte* base, std::int64_t tokens) const {
    detail::scratch_cursor c(base);
    backward_scratch s{};
    s.d_o = c.take<T>(tokens * heads_ * v_dim_);            // (tokens, heads, v)
    s.dq = c.take<T>(tokens * heads_ * qk());               // (tokens, heads, nope + rope)
    s.dk = c.take<T>(tokens * heads_ * qk());               // (tokens, heads, nope + rope)
    s.dv = c.take<T>(tokens * heads_ * v_dim_);             // (tokens, heads, v)
    s.dkv = c.take<T>(tokens * heads_ * (nope_ + v_dim_));  // (tokens, heads, nope + v)
    s.dkva = c.take<T>(tokens * latent());                  // (tokens, kv_lora + rope)
    s.dc = c.take<T>(tokens * kv_lora_);                    // (tokens, kv_lora)
    s.dqa_norm = c.take<T>(tokens * q_lora_);               // (tokens, q_lora)
    s.dqa = c.take<T>(tokens * q_lora_);                    // (tokens, q_lora)
    s.bytes = c.bytes();
    return s;
  }
  decode_scratch carve_decode(std::byte* base, std::int64_t tokens) const {
    detail::scratch_cursor c(base);
    decode_scratch s{};
    s.qa = c.take<T>(tokens * q_lora_);                // (tokens, q_lora)
    s.qa_norm = c.take<T>(tokens * q_lora_);           // (tokens, q_lora)
    s.qa_rstd = c.take<A>(q_lora_ > 0 ? tokens : 0);   // (tokens)
    s.q = c.take<T>(tokens * heads_ * qk());           // (tokens, heads, nope + rope)
    s.kva = c.take<T>(tokens * latent());              // (tokens, kv_lora + rope)
    s.c = c.take<T>(tokens * kv_lora_);                // (tokens, kv_lora)
    s.c_rstd = c.take<A>(tokens);                      // (tokens)
    s.q_lat = c.take<T>(tokens * heads_ * kv_lora_);   // (tokens, heads, kv_lora)
    s.q_pe = c.take<T>(tokens * heads_ * rope_);       // (tokens, heads, rope)
    s.o_lat = c.take<T>(tokens * heads_ * kv_lora_);   // (tokens, heads, kv_lora)
    s.o = c.take<T>(tokens * heads_ * v_dim_);         // (tokens, heads, v)
    s.bytes = c.bytes();
    return s;
  }

  // q: (tokens, heads, nope + rope) (=), RoPE applied to q_pe; tokens are seq_len-long sequences starting
  // at position pos_offset. With q_lora > 0, qa, qa_norm: (tokens, q_lora) and qa_rstd: (tokens) receive
  // the intermediate values backward needs.
  template <class Backend>
  void project_query(Backend& be, const mla_weights<T>& w, const T* x, std::int64_t tokens, std::int64_t seq_len,
                     std::int64_t pos_offset, const A* cos, const A* sin, T* q, T* qa, T* qa_norm, A* qa_rstd) const {
    const std::int64_t hqk = heads_ * qk();
    if (q_lora_ > 0) {
      lin_.fprop(be, tokens, q_lora_, hidden_, x, w.q_a_proj, qa);
      rmsnorm_forward(be, qa_norm, q_lora_, qa_rstd, qa, q_lora_, w.q_a_norm, tokens, q_lora_, eps_);
      lin_.fprop(be, tokens, hqk, q_lora_, qa_norm, w.q_b_proj, q);
    } else {
      lin_.fprop(be, tokens, hqk, hidden_, x, w.q_proj, q);
    }
    rope_apply(be, q + nope_, tokens, heads_, hqk, qk(), rope_, seq_len, pos_offset, cos, sin, false);
  }

  // kva: (tokens, kv_lora + rope) (=) = [c | k_pe] with RoPE applied to k_pe in place; c_kv: (tokens,
  // kv_lora) (=) = RMSNorm_kv(c), c_rstd: (tokens) its saved statistics.
  template <class Backend>
  void project_latent(Backend& be, const mla_weights<T>& w, const T* x, std::int64_t tokens, std::int64_t seq_len,
                      std::int64_t pos_offset, const A* cos, const A* sin, T* kva, T* c_kv, A* c_rstd) const {
    const std::int64_t lat = latent();
    lin_.fprop(be, tokens, lat, hidden_, x, w.kv_a_proj, kva);
    rmsnorm_forward(be, c_kv, kv_lora_, c_rstd, kva, lat, w.kv_a_norm, tokens, kv_lora_, eps_);
    rope_apply(be, kva + kv_lora_, tokens, 1, lat, 0, rope_, seq_len, pos_offset, cos, sin, false);
  }

  void check_size(const char* where, std::int64_t batch, std::int64_t seq) const {
    require(batch > 0 && seq > 0 && batch * seq <= tokens_ && q_ != nullptr,
            std::string(where) + ": batch " + std::to_string(batch) + " × seq " + std::to_string(seq) +
                " must be positive and within the " + std::to_string(tokens_) + " tokens planned and bound");
  }
  void check_weights(const char* where, const mla_weights<T>& w) const {
    auto need = [&](const T* p, const char* name) {
      require(p != nullptr, std::string(where) + ": weight " + name + " is null but the configuration (q_lora " +
                                std::to_string(q_lora_) + ") uses it");
    };
    if (q_lora_ > 0) {
      need(w.q_a_proj, "q_a_proj");
      need(w.q_a_norm, "q_a_norm");
      need(w.q_b_proj, "q_b_proj");
    } else {
      need(w.q_proj, "q_proj");
    }
    need(w.kv_a_proj, "kv_a_proj");
    need(w.kv_a_norm, "kv_a_norm");
    need(w.kv_b_proj, "kv_b_proj");
    need(w.o_proj, "o_proj");
  }
  void check_grads(const mla_grads<T>& g) const {
    const mla_weights<T> as_weights{g.q_proj,    g.q_a_proj,  g.q_a_norm,  g.q_b_proj,
                                    g.kv_a_proj, g.kv_a_norm, g.kv_b_proj, g.o_proj};
    check_weights("mla.backward (gradients)", as_weights);
  }

  std::int64_t hidden_, heads_, q_lora_, kv_lora_, nope_, rope_, v_dim_;
  double eps_, scale_;
  std::int64_t tokens_ = 0;  // planned batch · seq
  std::int64_t forward_batch_ = 0, forward_seq_ = 0;  // shape of the activations the last forward saved
  std::size_t qa_slot_ = 0, qa_norm_slot_ = 0, qa_rstd_slot_ = 0, q_slot_ = 0, kva_slot_ = 0, c_slot_ = 0,
              c_rstd_slot_ = 0, k_slot_ = 0, v_slot_ = 0, o_slot_ = 0, lse_slot_ = 0;
  T *qa_ = nullptr, *qa_norm_ = nullptr, *q_ = nullptr, *kva_ = nullptr, *c_ = nullptr, *k_ = nullptr,
    *v_ = nullptr, *o_ = nullptr;
  A *qa_rstd_ = nullptr, *c_rstd_ = nullptr, *lse_ = nullptr;
  linear_gemm<Fp8> lin_;
};

}  // namespace dsx
