// dsx::transformer — the DeepSeek-V2/V3 decoder stack for one configuration, precision policy and
// backend, composed from the layers:
//
//   h₀ = embed(tokens)
//   for l in layers:  u = h + MLA(attn_norm(h));  h = u + FFN(ffn_norm(u))     (FFN = SwiGLU or MoE)
//   logits = head(norm(h));  loss = mean next-token cross-entropy
//
// With C.mtp_depth = D > 0, D multi-token-prediction modules (layers/mtp.hpp) follow the main model in
// training: module k takes h^{k−1} (h^0 = the main model's last hidden state before the final norm) and
// the tokens shifted by k, and predicts the token k + 1 ahead. The loss is
// L = L_main + (λ / D) Σ_k L_MTP^k, each term a mean over the positions that have a target; λ is set at
// run time (set_mtp_weight). Inference (forward without loss, generate_greedy) never runs the modules.
//
// Load balancing (DeepSeek-V3 report §2.1.2; formulas in layers/router.hpp). With a balance weight α > 0
// (set_balance_weight; 0 by default) every MoE layer, the MTP blocks' included, adds its complementary
// sequence-wise balance loss to the training loss: L = L_main + (λ / D) Σ_k L_MTP^k + Σ_{MoE layers} L_Bal,
// each L_Bal over all batch · seq positions its layer routes (an MTP block's too, those without a target
// included: they are routed like the others).
// The auxiliary-loss-free routing bias moves by update_routing_bias(γ), b_i += γ · sign(mean load − load_i),
// from the expert loads that every forward with loss adds up per MoE layer: a training step calls
// reset_expert_load(), runs its micro-batches, then update_routing_bias (γ = 0.001 in the report).
// expert_loads and max_load_ratio report the accumulated loads.
//
// The configuration is a template argument, so an invalid one fails to compile and every count is a
// constant; batch and sequence length are run-time values bounded by the sizes given at construction,
// from which one activation arena is planned. Parameters and gradients are two flat buffers laid out by
// model/params.hpp. All tensor memory belongs to the backend; the host only sees tokens, losses and
// whatever it explicitly downloads.
//
// With precision_policy::fp8_linear (precision::fp8_v3) every Linear of the layers and MTP modules runs
// its forward and both backward GEMMs in FP8 block scaling (layers/linear.hpp), from one workspace in the
// activation arena sized for the largest Linear; the embedding, the head and the routers do not.
//
// The layer stack runs over a range of layers (`stack`, from config/parallel.hpp's stage_layers) so that
// a pipeline stage later owns a sub-range; this version runs the single-rank layout: one stage holding
// every layer, all experts local.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dsx/config/checks.hpp"
#include "dsx/config/counts.hpp"
#include "dsx/config/precision.hpp"
#include "dsx/core/arena.hpp"
#include "dsx/core/error.hpp"
#include "dsx/layers/block.hpp"
#include "dsx/layers/mtp.hpp"
#include "dsx/layers/rope.hpp"
#include "dsx/model/params.hpp"

namespace dsx {

template <model_config C, precision_policy P, class Backend>
class transformer {
  static_assert(validate(C), "dsx::transformer: invalid model_config");
  static_assert(P.param == P.activation && P.param == P.grad,
                "dsx::transformer: this version keeps weights, activations and gradients in one storage type "
                "(precision::f64, f32, bf16_uniform or bf16_master; the optimizer may keep an f32 master copy)");
  static_assert(!P.fp8_linear || P.param == dtype::f32 || P.param == dtype::bf16,
                "dsx::transformer: FP8 Linears (precision_policy::fp8_linear) quantise from f32 or bf16 storage");

 public:
  using backend_type = Backend;
  using T = storage_t<P.param>;
  using A = accum_t<T>;
  static constexpr model_config config = C;
  static constexpr precision_policy precision = P;
  // The decoder layers this object runs: all of them in the single-rank layout.
  static constexpr layer_range stack = stage_layers(C.layers, single_rank.pipeline, 0);
  static_assert(stack.first == 0 && stack.last == C.layers, "the single-rank layout runs every layer");

  // Plans memory for up to `max_batch` sequences of up to `max_seq` tokens.
  transformer(Backend& be, std::int64_t max_batch, std::int64_t max_seq)
      : be_(be), table_(C), max_batch_(max_batch), max_seq_(max_seq) {
    require(max_batch > 0 && max_seq > 0, "transformer: batch and sequence length must be positive");
    require(max_seq <= C.max_positions, "transformer: sequence length " + std::to_string(max_seq) +
                                            " exceeds max_positions " + std::to_string(C.max_positions));
    params_ = arena<Backend>(be_, std::size_t(table_.size()) * sizeof(T));
    grads_ = arena<Backend>(be_, std::size_t(table_.size()) * sizeof(T));
    be_.fill_zero(params_.data(), params_.bytes());
    zero_grad();
    upload_rope_table();
    plan_activations();
    for (int l = 0; l < C.layers + C.mtp_depth; ++l)
      if (C.is_moe_layer(l)) moe_layers_.push_back(l);
    load_mem_ = arena<Backend>(be_, moe_layers_.size() * std::size_t(C.moe.routed) * sizeof(std::int64_t));
    load_ = reinterpret_cast<std::int64_t*>(load_mem_.data());
    reset_expert_load();
  }

  const param_table& params() const { return table_; }
  T* param_data() { return reinterpret_cast<T*>(params_.data()); }
  T* grad_data() { return reinterpret_cast<T*>(grads_.data()); }
  Backend& backend() { return be_; }
  std::int64_t max_batch() const { return max_batch_; }
  std::int64_t max_seq() const { return max_seq_; }

  void zero_grad() { be_.fill_zero(grads_.data(), grads_.bytes()); }

  // Copies one tensor (host memory, numel elements of T) into the parameter buffer.
  void set_param(const param_table::entry& e, std::span<const T> host_values) {
    require(std::int64_t(host_values.size()) == e.spec.numel(),
            "transformer: tensor " + e.name + " expects " + std::to_string(e.spec.numel()) + " values, got " +
                std::to_string(host_values.size()));
    be_.upload(param_data() + e.offset, host_values.data(), host_values.size() * sizeof(T));
  }
  std::vector<T> get_param(const param_table::entry& e) { return download(param_data() + e.offset, e.spec.numel()); }
  std::vector<T> get_grad(const param_table::entry& e) { return download(grad_data() + e.offset, e.spec.numel()); }

  // Forward pass over `batch` rows of `seq` tokens (host memory, row-major). With `with_loss`, returns
  // the mean cross-entropy of predicting token t+1 at position t (batch·(seq−1) positions), plus with MTP
  // (λ / D) Σ_k of module k's mean cross-entropy of predicting token t+k+1 (batch·(seq−k−1) positions; the
  // sequences need at least D + 2 tokens), and keeps what backward() needs; otherwise returns 0 and only
  // the main model's logits are computed. With a balance weight α > 0 the loss includes every MoE layer's
  // balance loss; a forward with loss adds the step's expert loads (see reset_expert_load).
  double forward(std::span<const std::int32_t> tokens, std::int64_t batch, std::int64_t seq, bool with_loss = true) {
    check_tokens(tokens, batch, seq);
    have_loss_ = false;
    have_graph_ = false;
    if constexpr (C.mtp_depth > 0)
      require(!with_loss || seq >= C.mtp_depth + 2,
              "transformer: the MTP loss of depth " + std::to_string(C.mtp_depth) + " needs sequences of at least " +
                  std::to_string(C.mtp_depth + 2) + " tokens, got " + std::to_string(seq));
    batch_ = batch;
    seq_ = seq;
    for (int l : moe_layers_) {
      moe_layer(l).set_sequences(batch, seq);
      // Only a loss includes the balance term: backward_logits / backward_hidden after a forward without
      // loss must not add its gradient.
      moe_layer(l).set_balance_weight(with_loss ? balance_weight_ : 0.0);
    }
    const std::int64_t n = batch * seq, d = C.hidden;
    be_.upload(tokens_, tokens.data(), std::size_t(n) * sizeof(std::int32_t));
    embedding_forward(be_, res_[0], param(param_kind::embed), tokens_, n, d);  // (N, d)
    for (int l = stack.first; l < stack.last; ++l)
      blocks_[std::size_t(l)].forward(be_, weights(l), res_[l], res_[l + 1], batch, seq, cos_, sin_, scratch_);
    final_forward(n);
    have_graph_ = true;
    if (!with_loss) return 0.0;
    upload_shifted(tokens, 1, targets_);
    const std::int64_t counted = batch * (seq - 1);
    require(counted > 0, "transformer: a loss needs sequences of at least 2 tokens");
    cross_entropy(be_, row_loss_, dlogits_, logits_, targets_, n, std::int64_t(C.vocab), 1.0 / double(counted));
    lm_loss_ = sum_of(row_loss_, n) / double(counted);
    double loss = lm_loss_;
    if constexpr (C.mtp_depth > 0) {
      // Module k reads ids shifted by k and targets shifted by k + 1: shifted_[k], shifted_[k + 1].
      for (int j = 2; j <= C.mtp_depth + 1; ++j) upload_shifted(tokens, j, shifted_[std::size_t(j)]);
      const double weight = mtp_weight_ / double(C.mtp_depth);
      for (int k = 1; k <= C.mtp_depth; ++k) {
        auto& m = mtp_[std::size_t(k - 1)];
        m.forward(be_, mtp_weights_of(k), mtp_input(k), shifted_[std::size_t(k)], shifted_[std::size_t(k + 1)],
                  mtp_h_[std::size_t(k - 1)], batch, seq, weight, cos_, sin_, scratch_);
        mtp_losses_[std::size_t(k - 1)] = sum_of(m.row_losses(), n) / double(m.counted(batch, seq));
        loss += weight * mtp_losses_[std::size_t(k - 1)];
      }
    }
    balance_loss_ = 0;
    for (std::size_t i = 0; i < moe_layers_.size(); ++i) {
      const auto& m = moe_layer(moe_layers_[i]);
      moe_expert_load_add(be_, load_ + i * C.moe.routed, m.expert_offsets(), C.moe.routed);
      balance_loss_ += m.balance_loss(be_);
    }
    loss += balance_loss_;
    have_loss_ = true;
    return loss;
  }

  // The parts of the last forward(with_loss = true)'s loss: the main model's mean cross-entropy, and
  // module k's (index k − 1) for k = 1..D.
  double last_lm_loss() const { return lm_loss_; }
  std::vector<double> last_mtp_losses() const { return mtp_losses_; }
  // λ, the weight of the MTP losses (the report uses 0.3, then 0.1); takes effect at the next forward.
  void set_mtp_weight(double lambda) {
    require(std::isfinite(lambda) && lambda >= 0,
            "transformer: the MTP loss weight must be finite and non-negative, got " + std::to_string(lambda));
    mtp_weight_ = lambda;
  }
  double mtp_weight() const { return mtp_weight_; }

  // α, the weight of every MoE layer's sequence-wise balance loss (the report uses 0.0001; 0, the default,
  // turns it off); takes effect at the next forward.
  void set_balance_weight(double alpha) {
    require(std::isfinite(alpha) && alpha >= 0,
            "transformer: the balance loss weight must be finite and non-negative, got " + std::to_string(alpha));
    for (int l : moe_layers_) moe_layer(l).set_balance_weight(alpha);
    balance_weight_ = alpha;
  }
  double balance_weight() const { return balance_weight_; }
  // The sum of the MoE layers' balance losses in the last forward(with_loss = true)'s loss.
  double last_balance_loss() const { return balance_loss_; }

  // The decoder layers with an MoE FFN, main stack then MTP blocks (layers .. layers + mtp_depth − 1).
  const std::vector<int>& moe_layers() const { return moe_layers_; }
  // Clears the expert loads accumulated by the forwards with loss.
  void reset_expert_load() { be_.fill_zero(load_mem_.data(), load_mem_.bytes()); }
  // Tokens that selected each routed expert of MoE layer `layer` (E), summed over the forwards with loss
  // since the last reset_expert_load().
  std::vector<std::int64_t> expert_loads(int layer) {
    return download(load_ + load_index(layer) * C.moe.routed, C.moe.routed);
  }
  // max_i load_i / mean_i load_i of MoE layer `layer`'s accumulated loads (1 is perfect balance, E the
  // worst); the loads must hold at least one token.
  double max_load_ratio(int layer) {
    const auto load = expert_loads(layer);
    std::int64_t total = 0, max = 0;
    for (std::int64_t v : load) {
      total += v;
      max = std::max(max, v);
    }
    require(total > 0, "transformer: MoE layer " + std::to_string(layer) +
                           " has routed no token since reset_expert_load(); run a forward with loss first");
    return double(max) * double(C.moe.routed) / double(total);
  }
  // The largest max_load_ratio(layer) over the MoE layers.
  double max_load_ratio() {
    require(!moe_layers_.empty(), "transformer: the model has no MoE layer (model_config.moe.routed is 0)");
    double worst = 0;
    for (int l : moe_layers_) worst = std::max(worst, max_load_ratio(l));
    return worst;
  }
  // The auxiliary-loss-free step: every MoE layer's routing bias (e_score_correction_bias, in the
  // parameter buffer) moves by b_i += γ · sign(mean load − load_i), from the loads accumulated since the
  // last reset_expert_load(). An expert exactly at the mean does not move; without loads nothing moves.
  void update_routing_bias(double gamma) {
    static_assert(C.moe.bias, "dsx::transformer::update_routing_bias: the configuration has no routing bias "
                              "(model_config.moe.bias is false)");
    require(std::isfinite(gamma) && gamma >= 0,
            "transformer: the routing bias update speed gamma must be finite and non-negative, got " +
                std::to_string(gamma));
    for (std::size_t i = 0; i < moe_layers_.size(); ++i)
      moe_routing_bias_update(be_, param_data() + table_.offset(param_kind::router_bias, moe_layers_[i]),
                              load_ + i * C.moe.routed, C.moe.routed, gamma);
  }

  // Accumulates d(loss)/d(parameters) of the last forward(with_loss = true) into the gradient buffer.
  void backward() {
    require(have_loss_, "transformer: backward() needs a forward() with loss first");
    head_backward();
    backward_stack(true);
  }

  // Post-training objectives that are not the mean next-token cross-entropy (GRPO, DPO, distillation)
  // take the logits of a forward (without loss when a balance weight α > 0 is set, else either) and give
  // back d(objective)/d(logits) of the same shape, (batch, seq, vocab) in host memory: backward_logits
  // accumulates the parameter gradients of that objective. The MTP modules and the balance loss take no part.
  void backward_logits(std::span<const T> dlogits) {
    require(have_graph_, "transformer: backward_logits() needs a forward() first");
    require(!have_loss_ || balance_weight_ == 0,
            "transformer: backward_logits() after a forward with loss would add the balance loss's gradient; "
            "run forward(tokens, batch, seq, false)");
    require(std::int64_t(dlogits.size()) == batch_ * seq_ * C.vocab,
            "transformer: backward_logits expects " + std::to_string(batch_ * seq_ * C.vocab) + " values, got " +
                std::to_string(dlogits.size()));
    be_.upload(dlogits_, dlogits.data(), dlogits.size() * sizeof(T));
    head_backward();
    backward_stack(false);
  }

  // The final hidden states of the last forward (after the final norm, before the head): (batch, seq,
  // hidden). A reward model's scalar head reads them.
  std::vector<T> hidden() { return download(xf_, batch_ * seq_ * C.hidden); }

  // Accumulates the parameter gradients of an objective of the final hidden states, given
  // d(objective)/d(hidden()) in host memory, (batch, seq, hidden). The head takes no part.
  void backward_hidden(std::span<const T> dhidden) {
    require(have_graph_, "transformer: backward_hidden() needs a forward() first");
    require(!have_loss_ || balance_weight_ == 0,
            "transformer: backward_hidden() after a forward with loss would add the balance loss's gradient; "
            "run forward(tokens, batch, seq, false)");
    require(std::int64_t(dhidden.size()) == batch_ * seq_ * C.hidden,
            "transformer: backward_hidden expects " + std::to_string(batch_ * seq_ * C.hidden) + " values, got " +
                std::to_string(dhidden.size()));
    be_.upload(dxn_, dhidden.data(), dhidden.size() * sizeof(T));
    backward_stack(false);
  }

 private:
  // d logits → d xf (in dxn_) and the head's gradient.
  void head_backward() {
    const std::int64_t n = batch_ * seq_, d = C.hidden;
    // head: logits = xf · W_headᵀ
    gemm(be_, true, false, C.vocab, d, n, 1.0, dlogits_, C.vocab, xf_, d, 1.0, grad(param_kind::head), d);
    gemm(be_, false, false, n, d, C.vocab, 1.0, dlogits_, C.vocab, param(param_kind::head), d, 0.0, dxn_, d);
  }

  // d xf (in dxn_) → every gradient below the head: final norm, MTP modules (with `mtp`), blocks, embedding.
  void backward_stack(bool mtp) {
    const std::int64_t n = batch_ * seq_, d = C.hidden;
    rmsnorm_backward(be_, dres_, d, grad(param_kind::final_norm), dxn_, d, res_[C.layers], d,
                     param(param_kind::final_norm), rstd_f_, n, d, false);
    // MTP modules from the deepest: module k's d h^{k−1} goes to module k − 1's output gradient, module
    // 1's is added to the main model's last hidden-state gradient.
    for (int k = mtp ? C.mtp_depth : 0; k >= 1; --k) {
      T* dh = mtp_grad_[std::size_t(k) % mtp_grad_.size()];
      T* dh_prev = k == 1 ? dres_ : mtp_grad_[std::size_t(k - 1) % mtp_grad_.size()];
      mtp_[std::size_t(k - 1)].backward(be_, mtp_weights_of(k), mtp_grads_of(k), mtp_input(k), shifted_[std::size_t(k)],
                                         mtp_h_[std::size_t(k - 1)], dh, k < C.mtp_depth, dh_prev, k == 1, batch_,
                                         seq_, cos_, sin_, scratch_);
    }
    for (int l = stack.last - 1; l >= stack.first; --l)
      blocks_[std::size_t(l)].backward(be_, weights(l), grads(l), res_[l], dres_, batch_, seq_, cos_, sin_, scratch_);
    embedding_backward(be_, grad(param_kind::embed), dres_, tokens_, n, d);
    have_loss_ = false;
    have_graph_ = false;
  }

 public:

  // Logits of the last forward: (batch, seq, vocab).
  std::vector<T> logits() { return download(logits_, batch_ * seq_ * C.vocab); }

  // Routed experts chosen in MoE layer `layer` by the last forward: (batch·seq, top_k), as the layer
  // produced them. Layers layers .. layers + mtp_depth − 1 are the MTP modules' blocks (after a forward
  // with loss).
  std::vector<std::int32_t> routed_experts(int layer) {
    const auto& m = moe_layer(layer);
    std::vector<std::int32_t> out(std::size_t(batch_ * seq_ * C.moe.top_k));
    be_.download(out.data(), m.topk_indices(), out.size() * sizeof(std::int32_t));
    return out;
  }

  // Decoding through the latent KV cache: prefills `prompt_len` tokens of each of `batch` rows, then
  // appends one token per row per step, at most `max_new` steps. After the prefill and after every step,
  // `next(logits, tokens)` receives the logits of each row's last position, (batch, vocab) in host
  // memory, writes each row's next token into `tokens` (batch) and returns false to stop early (a
  // sampler stops when every row has met a stop token). Returns the steps taken. The activations of a
  // training forward are overwritten.
  template <class Next>
  std::int64_t generate(std::span<const std::int32_t> prompt, std::int64_t batch, std::int64_t prompt_len,
                        std::int64_t max_new, Next&& next) {
    const std::int64_t cap = prompt_len + max_new;
    require(batch <= max_batch_ && cap <= max_seq_,
            "generate: batch " + std::to_string(batch) + " × length " + std::to_string(cap) +
                " exceeds the planned " + std::to_string(max_batch_) + " × " + std::to_string(max_seq_));
    check_tokens(prompt, batch, prompt_len);
    have_loss_ = have_graph_ = false;
    const std::int64_t d = C.hidden, lat = C.mla.kv_lora, rope = C.mla.rope;
    arena<Backend> cache_mem(be_, std::size_t(C.layers * batch * cap * (lat + rope)) * sizeof(T));
    std::vector<mla_cache<T>> caches;
    for (int l = 0; l < C.layers; ++l) {
      T* base = reinterpret_cast<T*>(cache_mem.data()) + l * batch * cap * (lat + rope);
      caches.push_back(mla_cache<T>{base, base + batch * cap * lat, cap});
    }
    std::vector<std::int32_t> step(prompt.begin(), prompt.end());
    std::vector<T> last(std::size_t(batch * C.vocab));
    std::int64_t pos = 0, len = prompt_len, taken = 0;
    for (;;) {
      const std::int64_t n = batch * len;
      be_.upload(tokens_, step.data(), std::size_t(n) * sizeof(std::int32_t));
      embedding_forward(be_, res_[0], param(param_kind::embed), tokens_, n, d);
      for (int l : moe_layers_)
        if (l < C.layers) moe_layer(l).set_sequences(batch, len);
      for (int l = stack.first; l < stack.last; ++l)
        blocks_[std::size_t(l)].decode(be_, weights(l), res_[l], res_[l + 1], batch, len, pos, caches[std::size_t(l)],
                                       cos_, sin_, scratch_);
      final_forward(n);
      for (std::int64_t b = 0; b < batch; ++b)  // the last position of row b
        be_.download(last.data() + b * C.vocab, logits_ + ((b + 1) * len - 1) * C.vocab, std::size_t(C.vocab) * sizeof(T));
      step.assign(std::size_t(batch), 0);
      if (taken == max_new || !next(std::span<const T>(last), std::span<std::int32_t>(step))) break;
      if (++taken == max_new) break;  // the last token needs no forward
      pos += len;
      len = 1;
    }
    return taken;
  }

  // Greedy decoding: `new_tokens` argmax tokens after each row's prompt. Returns (batch, new_tokens).
  std::vector<std::int32_t> generate_greedy(std::span<const std::int32_t> prompt, std::int64_t batch,
                                            std::int64_t prompt_len, std::int64_t new_tokens) {
    std::vector<std::int32_t> out(std::size_t(batch * new_tokens));
    std::int64_t i = 0;
    generate(prompt, batch, prompt_len, new_tokens, [&](std::span<const T> logits, std::span<std::int32_t> tokens) {
      for (std::int64_t b = 0; b < batch; ++b) {
        const T* row = logits.data() + b * C.vocab;
        tokens[std::size_t(b)] = std::int32_t(
            std::max_element(row, row + C.vocab, [](T x, T y) { return convert<A>(x) < convert<A>(y); }) - row);
        out[std::size_t(b * new_tokens + i)] = tokens[std::size_t(b)];
      }
      ++i;
      return true;
    });
    return out;
  }

 private:
  const T* param(param_kind k, int layer = -1, int expert = -1) const {
    return reinterpret_cast<const T*>(params_.data()) + table_.offset(k, layer, expert);
  }
  T* grad(param_kind k, int layer = -1, int expert = -1) { return grad_data() + table_.offset(k, layer, expert); }
  block_weights<T> weights(int l) const { return layer_views(table_, reinterpret_cast<const T*>(params_.data()), l); }
  block_grads<T> grads(int l) { return layer_views(table_, grad_data(), l); }
  // Module k (1..D) is decoder layer layers + k − 1; its embedding and head resolve to the main model's.
  mtp_weights<T> mtp_weights_of(int k) const {
    const int l = C.layers + k - 1;
    return {param(param_kind::mtp_embed, l), param(param_kind::mtp_enorm, l), param(param_kind::mtp_hnorm, l),
            param(param_kind::mtp_eh_proj, l), weights(l), param(param_kind::mtp_head_norm, l),
            param(param_kind::mtp_head, l)};
  }
  mtp_grads<T> mtp_grads_of(int k) {
    const int l = C.layers + k - 1;
    return {grad(param_kind::mtp_embed, l), grad(param_kind::mtp_enorm, l), grad(param_kind::mtp_hnorm, l),
            grad(param_kind::mtp_eh_proj, l), grads(l), grad(param_kind::mtp_head_norm, l),
            grad(param_kind::mtp_head, l)};
  }
  // The MoE layer of decoder layer `layer` (main stack or MTP block).
  moe<T, P.fp8_linear>& moe_layer(int layer) {
    require(layer >= 0 && layer < C.layers + C.mtp_depth,
            "transformer: layer " + std::to_string(layer) + " is outside 0.." +
                std::to_string(C.layers + C.mtp_depth - 1));
    require(C.is_moe_layer(layer), "transformer: layer " + std::to_string(layer) + " is not an MoE layer");
    moe<T, P.fp8_linear>* m = layer < C.layers ? blocks_[std::size_t(layer)].sparse() : mtp_[std::size_t(layer - C.layers)].sparse();
    return *m;
  }
  // Row of MoE layer `layer` in the load accumulator.
  std::size_t load_index(int layer) {
    moe_layer(layer);  // checks the layer
    return std::size_t(std::find(moe_layers_.begin(), moe_layers_.end(), layer) - moe_layers_.begin());
  }

  // h^{k−1}: the main model's last hidden state (before the final norm) for k = 1.
  const T* mtp_input(int k) const { return k == 1 ? res_[std::size_t(C.layers)] : mtp_h_[std::size_t(k - 2)]; }

  // dst (batch·seq) = the tokens shifted left by `shift` within each row, −1 where none.
  void upload_shifted(std::span<const std::int32_t> tokens, std::int64_t shift, std::int32_t* dst) {
    std::vector<std::int32_t> ids(std::size_t(batch_ * seq_), -1);
    for (std::int64_t b = 0; b < batch_; ++b)
      for (std::int64_t t = 0; t + shift < seq_; ++t)
        ids[std::size_t(b * seq_ + t)] = tokens[std::size_t(b * seq_ + t + shift)];
    be_.upload(dst, ids.data(), ids.size() * sizeof(std::int32_t));
  }
  double sum_of(const A* values, std::int64_t n) {
    const auto host = download(values, n);
    double sum = 0;
    for (A v : host) sum += double(v);
    return sum;
  }

  void check_tokens(std::span<const std::int32_t> tokens, std::int64_t batch, std::int64_t seq) const {
    require(batch > 0 && seq > 0 && batch <= max_batch_ && seq <= max_seq_,
            "transformer: batch " + std::to_string(batch) + " × seq " + std::to_string(seq) +
                " is outside the planned 1.." + std::to_string(max_batch_) + " × 1.." + std::to_string(max_seq_));
    require(std::int64_t(tokens.size()) == batch * seq,
            "transformer: expected " + std::to_string(batch * seq) + " token ids, got " + std::to_string(tokens.size()));
    for (std::size_t i = 0; i < tokens.size(); ++i)
      require(tokens[i] >= 0 && tokens[i] < C.vocab, "transformer: token id " + std::to_string(tokens[i]) +
                                                         " at position " + std::to_string(i) +
                                                         " is outside the vocabulary [0, " + std::to_string(C.vocab) + ")");
  }

  template <class U>
  std::vector<U> download(const U* src, std::int64_t count) {
    std::vector<U> out(static_cast<std::size_t>(count));
    be_.download(out.data(), src, out.size() * sizeof(U));
    return out;
  }

  void upload_rope_table() {
    const auto table = make_rope_table<A>(C, int(max_seq_));
    rope_mem_ = arena<Backend>(be_, 2 * table.cos.size() * sizeof(A));
    cos_ = reinterpret_cast<A*>(rope_mem_.data());
    sin_ = cos_ + table.cos.size();
    be_.upload(cos_, table.cos.data(), table.cos.size() * sizeof(A));
    be_.upload(sin_, table.sin.data(), table.sin.size() * sizeof(A));
  }

  void plan_activations() {
    const std::int64_t n = max_batch_ * max_seq_, d = C.hidden, v = C.vocab;
    arena_plan plan;
    std::vector<std::size_t> res_slots;
    for (int l = 0; l <= C.layers; ++l) res_slots.push_back(plan.reserve<T>(n * d, "residual"));
    std::size_t scratch = 0;
    blocks_.reserve(std::size_t(C.layers));
    for (int l = 0; l < C.layers; ++l) {
      blocks_.emplace_back(C, l);
      blocks_.back().plan(plan, max_batch_, max_seq_);
      scratch = std::max(scratch, blocks_.back().scratch_bytes(max_batch_, max_seq_));
    }
    // MTP: each module's output h^k, the ids shifted by 2..D+1, and the output gradients of two
    // consecutive modules (only one with D = 1).
    std::vector<std::size_t> mtp_h_slots, shifted_slots, mtp_grad_slots;
    mtp_.reserve(std::size_t(C.mtp_depth));
    for (int k = 1; k <= C.mtp_depth; ++k) {
      mtp_.emplace_back(C, k);
      mtp_.back().plan(plan, max_batch_, max_seq_);
      scratch = std::max(scratch, mtp_.back().scratch_bytes(max_batch_, max_seq_));
      mtp_h_slots.push_back(plan.reserve<T>(n * d, "mtp.hidden"));
      shifted_slots.push_back(plan.reserve<std::int32_t>(n, "mtp.targets"));
    }
    for (int i = 0; i < std::min(C.mtp_depth, 2); ++i) mtp_grad_slots.push_back(plan.reserve<T>(n * d, "mtp.dhidden"));
    const auto xf = plan.reserve<T>(n * d, "final_norm"), rstd_f = plan.reserve<A>(n, "final_rstd");
    const auto logits = plan.reserve<T>(n * v, "logits"), dlogits = plan.reserve<T>(n * v, "dlogits");
    const auto row_loss = plan.reserve<A>(n, "row_loss");
    const auto tokens = plan.reserve<std::int32_t>(n, "tokens"), targets = plan.reserve<std::int32_t>(n, "targets");
    const auto dres = plan.reserve<T>(n * d, "dres"), dxn = plan.reserve<T>(n * d, "dxn");
    const auto scratch_slot = plan.reserve<std::byte>(std::int64_t(scratch), "scratch");
    // The FP8 Linears' quantised operands, sized for the largest Linear (layers/linear.hpp).
    fp8_workspace_size fp8_size;
    std::size_t fp8_qa = 0, fp8_sa = 0, fp8_qb = 0, fp8_sb = 0;
    if constexpr (P.fp8_linear) {
      for (const auto& b : blocks_) b.fp8_workspace_need(fp8_size, n);
      for (const auto& m : mtp_) m.fp8_workspace_need(fp8_size, n);
      fp8_qa = plan.reserve<fp8_e4m3>(fp8_size.elems, "fp8.a");
      fp8_sa = plan.reserve<float>(fp8_size.scales, "fp8.a_scales");
      fp8_qb = plan.reserve<fp8_e4m3>(fp8_size.elems, "fp8.b");
      fp8_sb = plan.reserve<float>(fp8_size.scales, "fp8.b_scales");
    }

    acts_ = arena<Backend>(be_, plan.bytes());
    for (auto s : res_slots) res_.push_back(acts_.template at<T>(plan, s));
    for (auto& b : blocks_) b.bind(acts_.data(), plan);
    xf_ = acts_.template at<T>(plan, xf);
    rstd_f_ = acts_.template at<A>(plan, rstd_f);
    logits_ = acts_.template at<T>(plan, logits);
    dlogits_ = acts_.template at<T>(plan, dlogits);
    row_loss_ = acts_.template at<A>(plan, row_loss);
    tokens_ = acts_.template at<std::int32_t>(plan, tokens);
    targets_ = acts_.template at<std::int32_t>(plan, targets);
    dres_ = acts_.template at<T>(plan, dres);
    dxn_ = acts_.template at<T>(plan, dxn);
    scratch_ = acts_.template at<std::byte>(plan, scratch_slot);
    for (auto& m : mtp_) m.bind(acts_.data(), plan);
    for (auto s : mtp_h_slots) mtp_h_.push_back(acts_.template at<T>(plan, s));
    shifted_ = {tokens_, targets_};
    for (auto s : shifted_slots) shifted_.push_back(acts_.template at<std::int32_t>(plan, s));
    for (auto s : mtp_grad_slots) mtp_grad_.push_back(acts_.template at<T>(plan, s));
    if constexpr (P.fp8_linear) {
      const fp8_workspace ws{acts_.template at<fp8_e4m3>(plan, fp8_qa), acts_.template at<float>(plan, fp8_sa),
                             acts_.template at<fp8_e4m3>(plan, fp8_qb), acts_.template at<float>(plan, fp8_sb),
                             fp8_size.elems, fp8_size.scales};
      for (auto& b : blocks_) b.use_fp8_workspace(ws);
      for (auto& m : mtp_) m.use_fp8_workspace(ws);
    }
  }

  void final_forward(std::int64_t n) {
    const std::int64_t d = C.hidden;
    rmsnorm_forward(be_, xf_, d, rstd_f_, res_[C.layers], d, param(param_kind::final_norm), n, d, C.rms_eps);
    gemm(be_, false, true, n, C.vocab, d, 1.0, xf_, d, param(param_kind::head), d, 0.0, logits_, C.vocab);  // (N, V)
  }

  Backend& be_;
  param_table table_;
  std::int64_t max_batch_, max_seq_;
  std::int64_t batch_ = 0, seq_ = 0;
  bool have_loss_ = false;   // the last forward kept a loss that backward() can differentiate
  bool have_graph_ = false;  // the last forward's activations are intact for a backward
  double lm_loss_ = 0, mtp_weight_ = 0.3, balance_weight_ = 0, balance_loss_ = 0;
  std::vector<double> mtp_losses_ = std::vector<double>(std::size_t(C.mtp_depth), 0.0);
  arena<Backend> params_, grads_, rope_mem_, acts_, load_mem_;
  A* cos_ = nullptr;
  A* sin_ = nullptr;
  std::vector<decoder_block<T, P.fp8_linear>> blocks_;
  std::vector<T*> res_;  // residual stream at the input of each layer, and after the last: (N, d) each
  T* xf_ = nullptr;      // (N, d) final norm output
  A* rstd_f_ = nullptr;
  T* logits_ = nullptr;  // (N, V)
  T* dlogits_ = nullptr;
  A* row_loss_ = nullptr;
  std::int32_t* tokens_ = nullptr;
  std::int32_t* targets_ = nullptr;
  T* dres_ = nullptr;    // (N, d) gradient of the residual stream
  T* dxn_ = nullptr;     // (N, d) gradient at a norm's output
  std::byte* scratch_ = nullptr;
  std::vector<mtp_module<T, P.fp8_linear>> mtp_;          // module k at index k − 1
  std::vector<T*> mtp_h_;                    // (N, d) h^k of module k at index k − 1
  std::vector<std::int32_t*> shifted_;       // (N) tokens shifted by j at index j = 0..D+1, −1 where none
  std::vector<T*> mtp_grad_;                 // (N, d) output gradients of modules k and k − 1
  std::vector<int> moe_layers_;              // decoder layers with an MoE FFN, MTP blocks included
  std::int64_t* load_ = nullptr;             // (moe_layers_, E) expert loads since reset_expert_load()
};

}  // namespace dsx
