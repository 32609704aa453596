// One Multi-Token Prediction module (DeepSeek-V3 report §2.2). Module k (depth 1..mtp_depth) is decoder
// layer `layers + k − 1` of the parameter table. At position i of a sequence of length T:
//
//   h'_i  = eh_proj · [enorm(Emb(t_{i+k})) ; hnorm(h^{k−1}_i)]       concatenation order [embedding; hidden]
//   h^k   = Block_k(h')                                              an ordinary decoder block (layers/block.hpp)
//   loss  = cross-entropy of shared_head.head(shared_head.norm(h^k_i)) against t_{i+k+1}, for i + k + 1 < T
//
// Emb and the head are the main model's tensors (shared, so their gradients accumulate into the main
// model's). The released checkpoints and vLLM/SGLang concatenate [embedding; hidden], the reverse of the
// report's eq. 21; the weights decide, so this file follows them.
//
// h^0, the module-1 input, is the main model's last hidden state BEFORE its final norm (model.norm). The
// report calls it "the representation given by the main model" and leaves the norm open; we take the
// residual stream because hnorm is itself an RMSNorm (normalising twice would only fold model.norm's
// weight into hnorm's), because later modules likewise take the un-normalised block output h^{k−1}, and
// because it keeps module 1's input on the same footing as every other depth.
//
// Positions i with i + k ≥ T have no token t_{i+k}: their embedding row is zero and the ids there are
// never read (the transformer stores −1, which makes one shifted-id array serve as module k's input ids
// and module k − 1's targets). Those positions still run through the block; causal attention keeps them
// from influencing any position that has a target, and their cross-entropy targets are −1, so they add
// nothing to the loss or to any gradient.
//
// Contract (as layers/mlp.hpp): plan/bind/scratch_bytes; forward writes h^k (=) and the per-position loss;
// backward writes (or adds) d h^{k−1}, and accumulates every parameter gradient (+=), the shared embedding
// and head included. With Fp8 the block and eh_proj run in FP8 block scaling (layers/linear.hpp); the
// shared head stays in T, as the main model's does.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "dsx/config/model_config.hpp"
#include "dsx/core/arena.hpp"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"
#include "dsx/layers/block.hpp"
#include "dsx/layers/linear.hpp"

namespace dsx {

template <class T>
struct mtp_weights {
  const T* embed = nullptr;      // (vocab, hidden), the main model's embedding
  const T* enorm = nullptr;      // (hidden)
  const T* hnorm = nullptr;      // (hidden)
  const T* eh_proj = nullptr;    // (hidden, 2·hidden): input columns [0, hidden) embedding, [hidden, 2·hidden) hidden
  block_weights<T> block;        // decoder layer `layers + depth − 1`
  const T* head_norm = nullptr;  // (hidden) shared_head.norm
  const T* head = nullptr;       // (vocab, hidden), the main model's head
};

template <class T>
struct mtp_grads {
  T* embed = nullptr;
  T* enorm = nullptr;
  T* hnorm = nullptr;
  T* eh_proj = nullptr;
  block_grads<T> block;
  T* head_norm = nullptr;
  T* head = nullptr;
};

template <class T, bool Fp8 = false>
class mtp_module {
 public:
  using A = accum_t<T>;

  // depth: k in 1..c.mtp_depth.
  mtp_module(const model_config& c, int depth)
      : block_(c, c.layers + depth - 1), depth_(depth), hidden_(c.hidden), vocab_(c.vocab), eps_(c.rms_eps) {
    require(depth >= 1 && depth <= c.mtp_depth, "mtp: module depth " + std::to_string(depth) +
                                                    " is outside 1..model_config.mtp_depth (" +
                                                    std::to_string(c.mtp_depth) + ")");
  }

  int depth() const { return depth_; }

  void plan(arena_plan& p, std::int64_t batch, std::int64_t seq) {
    require(batch > 0 && seq > 0, "mtp.plan: batch and seq must be positive, got batch " + std::to_string(batch) +
                                      ", seq " + std::to_string(seq));
    tokens_ = batch * seq;
    const std::int64_t n = tokens_, d = hidden_;
    block_.plan(p, batch, seq);
    slots_ = {p.reserve<T>(n * d, "mtp.embedding"), p.reserve<A>(n, "mtp.enorm_rstd"),
              p.reserve<A>(n, "mtp.hnorm_rstd"),
              p.reserve<T>(n * 2 * d, "mtp.concat"), p.reserve<T>(n * d, "mtp.projected"),
              p.reserve<T>(n * d, "mtp.head_norm"), p.reserve<A>(n, "mtp.head_rstd"),
              p.reserve<T>(n * vocab_, "mtp.dlogits"), p.reserve<A>(n, "mtp.row_loss")};
  }
  void bind(std::byte* base, const arena_plan& p) {
    block_.bind(base, p);
    emb_ = reinterpret_cast<T*>(base + p.offset(slots_.emb));
    rstd_e_ = reinterpret_cast<A*>(base + p.offset(slots_.rstd_e));
    rstd_h_ = reinterpret_cast<A*>(base + p.offset(slots_.rstd_h));
    cat_ = reinterpret_cast<T*>(base + p.offset(slots_.cat));
    hp_ = reinterpret_cast<T*>(base + p.offset(slots_.hp));
    xn_ = reinterpret_cast<T*>(base + p.offset(slots_.xn));
    rstd_n_ = reinterpret_cast<A*>(base + p.offset(slots_.rstd_n));
    dlogits_ = reinterpret_cast<T*>(base + p.offset(slots_.dlogits));
    row_loss_ = reinterpret_cast<A*>(base + p.offset(slots_.row_loss));
  }
  // The block's scratch, or the logits (forward, after the block), or the module's own backward
  // temporaries (d head-norm output before the block's backward; d concat and d embedding after it).
  std::size_t scratch_bytes(std::int64_t batch, std::int64_t seq) const {
    const std::int64_t n = batch * seq;
    const std::size_t logits = std::size_t(n * vocab_) * sizeof(T);
    const std::size_t own = align(std::size_t(2 * n * hidden_) * sizeof(T)) + std::size_t(n * hidden_) * sizeof(T);
    return std::max({block_.scratch_bytes(batch, seq), logits, own});
  }

  void fp8_workspace_need(fp8_workspace_size& s, std::int64_t tokens) const {
    block_.fp8_workspace_need(s, tokens);
    s.add(tokens, hidden_, 2 * hidden_);
  }
  void use_fp8_workspace(const fp8_workspace& ws) {
    block_.use_fp8_workspace(ws);
    lin_.use(ws);
  }

  // Positions of `batch` sequences of length `seq` that have a target: i + depth + 1 < seq.
  std::int64_t counted(std::int64_t batch, std::int64_t seq) const {
    return batch * std::max<std::int64_t>(0, seq - depth_ - 1);
  }

  // h_prev: (N, d) h^{k−1}; ids: (N) t_{i+k}, read only where i + k < seq; targets: (N) t_{i+k+1} or −1
  // (ignored) → out: (N, d) h^k (=). The per-position losses land in row_losses() and the gradient of
  // `loss_weight` · mean(loss over the counted positions) w.r.t. the logits is kept for backward.
  template <class Backend>
  void forward(Backend& be, const mtp_weights<T>& w, const T* h_prev, const std::int32_t* ids,
               const std::int32_t* targets, T* out, std::int64_t batch, std::int64_t seq, double loss_weight,
               const A* cos, const A* sin, std::byte* scratch) {
    check_call("forward", w, batch, seq);
    const std::int64_t n = batch * seq, d = hidden_, valid = seq - depth_;
    for (std::int64_t b = 0; b < batch; ++b) {  // (valid, d) looked up, (depth, d) zero per sequence
      embedding_forward(be, emb_ + b * seq * d, w.embed, ids + b * seq, valid, d);
      be.fill_zero(emb_ + (b * seq + valid) * d, std::size_t(depth_ * d) * sizeof(T));
    }
    rmsnorm_forward(be, cat_, 2 * d, rstd_e_, emb_, d, w.enorm, n, d, eps_);        // (N, [0, d)) of (N, 2d)
    rmsnorm_forward(be, cat_ + d, 2 * d, rstd_h_, h_prev, d, w.hnorm, n, d, eps_);  // (N, [d, 2d)) of (N, 2d)
    lin_.fprop(be, n, d, 2 * d, cat_, w.eh_proj, hp_);  // (N, d)
    block_.forward(be, w.block, hp_, out, batch, seq, cos, sin, scratch);                 // (N, d)
    T* logits = reinterpret_cast<T*>(scratch);                                            // (N, V)
    rmsnorm_forward(be, xn_, d, rstd_n_, out, d, w.head_norm, n, d, eps_);
    gemm(be, false, true, n, vocab_, d, 1.0, xn_, d, w.head, d, 0.0, logits, vocab_);
    cross_entropy(be, row_loss_, dlogits_, logits, targets, n, vocab_, loss_weight / double(counted(batch, seq)));
    forward_batch_ = batch;
    forward_seq_ = seq;
  }

  // Loss per position of the last forward: (N), 0 where the target is −1. Backend memory.
  const A* row_losses() const { return row_loss_; }
  // The MoE layer of the module's block, or null for a dense block.
  const moe<T, Fp8>* sparse() const { return block_.sparse(); }
  moe<T, Fp8>* sparse() { return block_.sparse(); }

  // After forward on the same inputs. dh: (N, d) on entry d loss/d h^k from module k + 1 when
  // `dh_from_next` (otherwise its content is ignored); clobbered. dh_prev: (N, d) receives d loss/d h^{k−1},
  // written (=) or added (+=) with `accumulate_prev`; it must not alias dh. Parameter gradients +=.
  template <class Backend>
  void backward(Backend& be, const mtp_weights<T>& w, const mtp_grads<T>& g, const T* h_prev,
                const std::int32_t* ids, const T* out, T* dh, bool dh_from_next, T* dh_prev, bool accumulate_prev,
                std::int64_t batch, std::int64_t seq, const A* cos, const A* sin, std::byte* scratch) {
    check_call("backward", w, batch, seq);
    check_grads(g);
    require(batch == forward_batch_ && seq == forward_seq_,
            "mtp.backward: batch " + std::to_string(batch) + " × seq " + std::to_string(seq) +
                " differs from the last forward's " + std::to_string(forward_batch_) + " × " +
                std::to_string(forward_seq_));
    const std::int64_t n = batch * seq, d = hidden_, valid = seq - depth_;
    // Head: logits = xn · W_headᵀ, xn = head_norm(h^k).
    T* dxn = reinterpret_cast<T*>(scratch);  // (N, d)
    gemm(be, true, false, vocab_, d, n, 1.0, dlogits_, vocab_, xn_, d, 1.0, g.head, d);    // dW_head += dlogitsᵀ xn
    gemm(be, false, false, n, d, vocab_, 1.0, dlogits_, vocab_, w.head, d, 0.0, dxn, d);  // dxn = dlogits W_head
    rmsnorm_backward(be, dh, d, g.head_norm, dxn, d, out, d, w.head_norm, rstd_n_, n, d, dh_from_next);
    block_.backward(be, w.block, g.block, hp_, dh, batch, seq, cos, sin, scratch);  // dh ← d loss/d h'
    T* dcat = reinterpret_cast<T*>(scratch);                                       // (N, 2d)
    T* demb = reinterpret_cast<T*>(scratch + align(std::size_t(2 * n * d) * sizeof(T)));  // (N, d)
    lin_.wgrad(be, n, d, 2 * d, dh, cat_, g.eh_proj);        // dW_eh += dh'ᵀ cat
    lin_.dgrad(be, n, d, 2 * d, dh, w.eh_proj, 0.0, dcat);   // dcat = dh' W_eh
    rmsnorm_backward(be, demb, d, g.enorm, dcat, 2 * d, emb_, d, w.enorm, rstd_e_, n, d, false);
    rmsnorm_backward(be, dh_prev, d, g.hnorm, dcat + d, 2 * d, h_prev, d, w.hnorm, rstd_h_, n, d, accumulate_prev);
    for (std::int64_t b = 0; b < batch; ++b)  // the zero rows had no id and send nothing back
      embedding_backward(be, g.embed, demb + b * seq * d, ids + b * seq, valid, d);
  }

 private:
  struct slot_ids { std::size_t emb, rstd_e, rstd_h, cat, hp, xn, rstd_n, dlogits, row_loss; };

  static std::size_t align(std::size_t bytes) {
    return (bytes + arena_plan::alignment - 1) / arena_plan::alignment * arena_plan::alignment;
  }

  void check_call(const char* what, const mtp_weights<T>& w, std::int64_t batch, std::int64_t seq) const {
    const std::string where = std::string("mtp.") + what + " (depth " + std::to_string(depth_) + ")";
    require(batch > 0 && seq > 0 && batch * seq <= tokens_ && emb_ != nullptr,
            where + ": batch " + std::to_string(batch) + " × seq " + std::to_string(seq) +
                " must be positive and within the " + std::to_string(tokens_) + " tokens planned and bound");
    require(seq >= depth_ + 2, where + ": sequences of " + std::to_string(seq) + " tokens leave no position with a " +
                                   "target; depth " + std::to_string(depth_) + " needs at least " +
                                   std::to_string(depth_ + 2));
    require(w.embed && w.enorm && w.hnorm && w.eh_proj && w.head_norm && w.head,
            where + ": a weight (embed, enorm, hnorm, eh_proj, head_norm or head) is null");
  }
  void check_grads(const mtp_grads<T>& g) const {
    require(g.embed && g.enorm && g.hnorm && g.eh_proj && g.head_norm && g.head,
            "mtp.backward (depth " + std::to_string(depth_) +
                "): a gradient (embed, enorm, hnorm, eh_proj, head_norm or head) is null");
  }

  decoder_block<T, Fp8> block_;
  linear_gemm<Fp8> lin_;
  int depth_;
  std::int64_t hidden_, vocab_;
  double eps_;
  std::int64_t tokens_ = 0, forward_batch_ = 0, forward_seq_ = 0;
  slot_ids slots_{};
  T* emb_ = nullptr;      // (N, d) Emb(t_{i+k}), zero rows where i + k ≥ seq
  A* rstd_e_ = nullptr;   // (N)
  A* rstd_h_ = nullptr;   // (N)
  T* cat_ = nullptr;      // (N, 2d) [enorm(emb) ; hnorm(h^{k−1})]
  T* hp_ = nullptr;       // (N, d) h' = eh_proj · cat, the block's input
  T* xn_ = nullptr;       // (N, d) shared_head.norm(h^k)
  A* rstd_n_ = nullptr;   // (N)
  T* dlogits_ = nullptr;  // (N, V) d (weighted mean loss) / d logits
  A* row_loss_ = nullptr; // (N)
};

}  // namespace dsx
