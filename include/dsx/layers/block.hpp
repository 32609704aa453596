// One pre-norm decoder block of DeepSeek-V2/V3:
//
//   u   = h + MLA(attn_norm(h))
//   out = u + FFN(ffn_norm(u))          FFN = SwiGLU (first dense_layers layers) or DeepSeekMoE
//
// Used for the main layer stack and for the block inside each MTP module. Contract as layers/mlp.hpp:
// plan/bind/scratch_bytes; forward writes `out` (=); backward turns d(loss)/d(out), given in `dh`, into
// d(loss)/d(h) in place and accumulates parameter gradients (+=). With Fp8 every Linear of the block runs
// in FP8 block scaling (layers/linear.hpp), from the workspace given to use_fp8_workspace.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>

#include "dsx/config/model_config.hpp"
#include "dsx/core/arena.hpp"
#include "dsx/layers/mla.hpp"
#include "dsx/layers/mlp.hpp"
#include "dsx/layers/moe.hpp"

namespace dsx {

template <class T>
struct block_weights {
  const T* attn_norm = nullptr;  // (hidden)
  mla_weights<T> attn;
  const T* ffn_norm = nullptr;   // (hidden)
  mlp_weights<T> dense;          // dense layers
  moe_weights<T> sparse;         // MoE layers
};

template <class T>
struct block_grads {
  T* attn_norm = nullptr;
  mla_grads<T> attn;
  T* ffn_norm = nullptr;
  mlp_grads<T> dense;
  moe_grads<T> sparse;
};

template <class T, bool Fp8 = false>
class decoder_block {
 public:
  using A = accum_t<T>;

  decoder_block(const model_config& c, int layer) : attn_(c), hidden_(c.hidden), eps_(c.rms_eps) {
    if (c.is_moe_layer(layer)) sparse_.emplace(c);
    else dense_.emplace(c.hidden, c.dense_inter);
  }

  void plan(arena_plan& p, std::int64_t batch, std::int64_t seq) {
    const std::int64_t n = batch * seq;
    attn_.plan(p, batch, seq);
    if (sparse_) sparse_->plan(p, n);
    else dense_->plan(p, n);
    slots_ = {p.reserve<T>(n * hidden_, "block.xn1"), p.reserve<A>(n, "block.rstd1"), p.reserve<T>(n * hidden_, "block.mid"),
              p.reserve<T>(n * hidden_, "block.xn2"), p.reserve<A>(n, "block.rstd2")};
  }
  void bind(std::byte* base, const arena_plan& p) {
    attn_.bind(base, p);
    if (sparse_) sparse_->bind(base, p);
    else dense_->bind(base, p);
    xn1_ = reinterpret_cast<T*>(base + p.offset(slots_.xn1));
    rstd1_ = reinterpret_cast<A*>(base + p.offset(slots_.rstd1));
    mid_ = reinterpret_cast<T*>(base + p.offset(slots_.mid));
    xn2_ = reinterpret_cast<T*>(base + p.offset(slots_.xn2));
    rstd2_ = reinterpret_cast<A*>(base + p.offset(slots_.rstd2));
  }
  // Two (N, hidden) buffers (a sublayer's output / a norm's input gradient) followed by the largest
  // sublayer scratch; decoding of up to batch × seq new tokens fits too.
  std::size_t scratch_bytes(std::int64_t batch, std::int64_t seq) const {
    const std::int64_t n = batch * seq;
    const std::size_t ffn = sparse_ ? sparse_->scratch_bytes(n) : dense_->scratch_bytes(n);
    const std::size_t own = align(std::size_t(2 * n * hidden_) * sizeof(T));
    return own + std::max({attn_.scratch_bytes(batch, seq), attn_.decode_scratch_bytes(batch, seq), ffn});
  }
  void fp8_workspace_need(fp8_workspace_size& s, std::int64_t tokens) const {
    attn_.fp8_workspace_need(s, tokens);
    if (sparse_) sparse_->fp8_workspace_need(s, tokens);
    else dense_->fp8_workspace_need(s, tokens);
  }
  void use_fp8_workspace(const fp8_workspace& ws) {
    attn_.use_fp8_workspace(ws);
    if (sparse_) sparse_->use_fp8_workspace(ws);
    else dense_->use_fp8_workspace(ws);
  }

  template <class Backend>
  void forward(Backend& be, const block_weights<T>& w, const T* h, T* out, std::int64_t batch, std::int64_t seq,
               const A* cos, const A* sin, std::byte* scratch) {
    const std::int64_t n = batch * seq, d = hidden_;
    T* tmp = reinterpret_cast<T*>(scratch);
    rmsnorm_forward(be, xn1_, d, rstd1_, h, d, w.attn_norm, n, d, eps_);
    attn_.forward(be, w.attn, xn1_, tmp, batch, seq, cos, sin, sub_scratch(scratch, n));
    residual(be, mid_, h, tmp, n);
    ffn_forward(be, w, mid_, out, n, scratch);
  }

  template <class Backend>
  void backward(Backend& be, const block_weights<T>& w, const block_grads<T>& g, const T* h, T* dh, std::int64_t batch,
                std::int64_t seq, const A* cos, const A* sin, std::byte* scratch) {
    const std::int64_t n = batch * seq, d = hidden_;
    T* dxn = reinterpret_cast<T*>(scratch) + n * d;
    std::byte* sub = sub_scratch(scratch, n);
    if (sparse_) sparse_->backward(be, w.sparse, g.sparse, xn2_, dh, dxn, n, sub);
    else dense_->backward(be, w.dense, g.dense, xn2_, dh, dxn, n, sub);
    rmsnorm_backward(be, dh, d, g.ffn_norm, dxn, d, mid_, d, w.ffn_norm, rstd2_, n, d, true);
    attn_.backward(be, w.attn, g.attn, xn1_, dh, dxn, batch, seq, cos, sin, sub);
    rmsnorm_backward(be, dh, d, g.attn_norm, dxn, d, h, d, w.attn_norm, rstd1_, n, d, true);
  }

  // Decoding `len` new tokens per row at position `pos`, appending to the block's latent cache.
  template <class Backend>
  void decode(Backend& be, const block_weights<T>& w, const T* h, T* out, std::int64_t batch, std::int64_t len,
              std::int64_t pos, mla_cache<T>& cache, const A* cos, const A* sin, std::byte* scratch) {
    const std::int64_t n = batch * len, d = hidden_;
    T* tmp = reinterpret_cast<T*>(scratch);
    rmsnorm_forward(be, xn1_, d, rstd1_, h, d, w.attn_norm, n, d, eps_);
    attn_.decode(be, w.attn, xn1_, tmp, batch, len, pos, cache, cos, sin, sub_scratch(scratch, n));
    residual(be, mid_, h, tmp, n);
    ffn_forward(be, w, mid_, out, n, scratch);
  }

  const moe<T, Fp8>* sparse() const { return sparse_ ? &*sparse_ : nullptr; }
  moe<T, Fp8>* sparse() { return sparse_ ? &*sparse_ : nullptr; }

 private:
  struct slot_ids { std::size_t xn1, rstd1, mid, xn2, rstd2; };

  static std::size_t align(std::size_t bytes) {
    return (bytes + arena_plan::alignment - 1) / arena_plan::alignment * arena_plan::alignment;
  }
  std::byte* sub_scratch(std::byte* scratch, std::int64_t n) const {
    return scratch + align(std::size_t(2 * n * hidden_) * sizeof(T));
  }

  // out = u + FFN(ffn_norm(u))
  template <class Backend>
  void ffn_forward(Backend& be, const block_weights<T>& w, const T* u, T* out, std::int64_t n, std::byte* scratch) {
    const std::int64_t d = hidden_;
    T* tmp = reinterpret_cast<T*>(scratch);
    rmsnorm_forward(be, xn2_, d, rstd2_, u, d, w.ffn_norm, n, d, eps_);
    if (sparse_) sparse_->forward(be, w.sparse, xn2_, tmp, n, sub_scratch(scratch, n));
    else dense_->forward(be, w.dense, xn2_, tmp, n);
    residual(be, out, u, tmp, n);
  }

  // out = a + b over (n, hidden)
  template <class Backend>
  void residual(Backend& be, T* out, const T* a, const T* b, std::int64_t n) {
    copy_rows(be, out, hidden_, a, hidden_, n, hidden_);
    add_into(be, out, b, n * hidden_);
  }

  mla<T, Fp8> attn_;
  std::optional<mlp<T, Fp8>> dense_;
  std::optional<moe<T, Fp8>> sparse_;
  std::int64_t hidden_;
  double eps_;
  slot_ids slots_{};
  T* xn1_ = nullptr;  // (N, d) attn_norm(h)
  A* rstd1_ = nullptr;
  T* mid_ = nullptr;  // (N, d) u = h + attention
  T* xn2_ = nullptr;  // (N, d) ffn_norm(u)
  A* rstd2_ = nullptr;
};

}  // namespace dsx
