// DeepSeekMoE feed-forward: y = Σ_k w_k · expert_{i_k}(x) + shared(x) per token, with group-limited
// routing (layers/router.hpp), fine-grained SwiGLU experts and one always-on shared SwiGLU of width
// shared · inter (absent when moe.shared == 0). No capacity factor and no token dropping (DeepSeek-V3
// report §2.1.2).
//
// The routed path runs in four stages, each a member function, so that expert parallelism can replace
// dispatch and combine with all-to-alls without touching routing or the experts:
//   route:         logits = x · W_routerᵀ → scores, top-k indices and weights per token
//   dispatch:      stable sort of the (token, k) assignments by expert, gather of x rows into that order
//   local experts: per expert one GEMM pair over its contiguous segment (grouped GEMMs), SwiGLU between
//   combine:       y[t] += Σ_k w[t, k] · expert output of assignment (t, k)
//
// Contract (as layers/mlp.hpp): `plan` declares what backward needs in the activation arena, `bind`
// resolves it, `scratch_bytes` is temporary memory shared with other layers. forward writes y (=);
// backward writes dx (=) and accumulates parameter gradients (+=). The routing bias gets no gradient: it
// moves by the auxiliary-loss-free rule (the model applies it from the loads, see expert_load). Only
// backend primitives touch activation memory, so a CUDA backend runs this same code.
//
// Balance loss: with a weight α > 0 (set_balance_weight; 0, the default, turns it off) forward also
// computes the complementary sequence-wise balance loss of its routing (layers/router.hpp), which needs the
// sequence structure of the tokens (set_sequences(batch, seq), batch · seq = tokens, token t of sequence
// b at row b · seq + t); balance_loss() returns its value and backward adds its gradient, which flows
// through the affinities into the router weight and x, to the gradient of the caller's loss.
//
// Router logits are computed in the storage type T (the reference demo does the same in bf16); scores
// and routing weights are kept in accum_t<T>.
//
// The experts' and the shared expert's Linears run through linear_gemm<Fp8> (layers/linear.hpp); with
// Fp8 the routed experts run expert by expert over their segments, the offsets read back to the host once
// per pass. The router stays in T (DeepSeek-V3 keeps the gating module out of FP8).
//
// Parameter layout (config/param_spec.hpp): expert e's block starts at experts + e · 3 · inter · hidden
// and holds gate_up (2 · inter, hidden), gate_proj rows then up_proj rows, then down (hidden, inter).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dsx/config/checks.hpp"
#include "dsx/config/model_config.hpp"
#include "dsx/core/arena.hpp"
#include "dsx/core/error.hpp"
#include "dsx/core/numeric.hpp"
#include "dsx/layers/linear.hpp"
#include "dsx/layers/mlp.hpp"
#include "dsx/layers/router.hpp"

namespace dsx {

template <class T>
struct moe_weights {
  const T* router = nullptr;          // (E, hidden)
  const T* bias = nullptr;            // (E) e_score_correction_bias; required when moe.bias, ignored otherwise
  const T* experts = nullptr;         // E blocks of [gate_up (2·inter, hidden) | down (hidden, inter)]
  const T* shared_gate_up = nullptr;  // (2·shared·inter, hidden); required when moe.shared > 0
  const T* shared_down = nullptr;     // (hidden, shared·inter)
};

template <class T>
struct moe_grads {
  T* router = nullptr;          // (E, hidden)
  T* experts = nullptr;         // laid out as moe_weights::experts
  T* shared_gate_up = nullptr;  // (2·shared·inter, hidden)
  T* shared_down = nullptr;     // (hidden, shared·inter)
};

template <class T, bool Fp8 = false>
class moe {
 public:
  using A = accum_t<T>;

  explicit moe(const model_config& c)
      : route_(route_params_of(c.moe)), hidden_(c.hidden), inter_(c.moe.inter), shared_inter_(c.shared_inter()),
        shared_(c.hidden, c.shared_inter()) {
    const std::string problem = check(c);
    require(problem.empty(), "moe layer: invalid model_config: " + problem);
    require(c.moe.routed > 0, "moe layer: model_config.moe.routed is 0 (the model has no MoE layers)");
    require(c.moe.groups <= router_max_groups, "moe layer: model_config.moe.groups is " +
                                                   std::to_string(c.moe.groups) + ", at most " +
                                                   std::to_string(router_max_groups) + " are supported");
  }

  void plan(arena_plan& p, std::int64_t tokens) {
    tokens_ = tokens;
    const std::int64_t rows = tokens * route_.top_k, e = route_.experts;
    scores_slot_ = p.reserve<A>(tokens * e, "moe.scores");
    indices_slot_ = p.reserve<std::int32_t>(rows, "moe.topk_indices");
    weights_slot_ = p.reserve<A>(rows, "moe.topk_weights");
    perm_slot_ = p.reserve<std::int32_t>(rows, "moe.perm");
    inv_perm_slot_ = p.reserve<std::int32_t>(rows, "moe.inv_perm");
    offsets_slot_ = p.reserve<std::int32_t>(e + 1, "moe.expert_offsets");
    // The balance loss's coefficients and per-sequence losses, sized for the most sequences the tokens
    // can form (sequences of one token).
    coeff_slot_ = p.reserve<A>(tokens * e, "moe.balance_coefficients");
    balance_losses_slot_ = p.reserve<A>(tokens, "moe.balance_losses");
    gu_slot_ = p.reserve<T>(rows * 2 * inter_, "moe.experts.gate_up");
    h_slot_ = p.reserve<T>(rows * inter_, "moe.experts.h");
    eo_slot_ = p.reserve<T>(rows * hidden_, "moe.experts.out");
    if (shared_inter_ > 0) shared_.plan(p, tokens);
  }
  void bind(std::byte* base, const arena_plan& p) {
    scores_ = reinterpret_cast<A*>(base + p.offset(scores_slot_));
    indices_ = reinterpret_cast<std::int32_t*>(base + p.offset(indices_slot_));
    weights_ = reinterpret_cast<A*>(base + p.offset(weights_slot_));
    perm_ = reinterpret_cast<std::int32_t*>(base + p.offset(perm_slot_));
    inv_perm_ = reinterpret_cast<std::int32_t*>(base + p.offset(inv_perm_slot_));
    offsets_ = reinterpret_cast<std::int32_t*>(base + p.offset(offsets_slot_));
    coeff_ = reinterpret_cast<A*>(base + p.offset(coeff_slot_));
    balance_losses_ = reinterpret_cast<A*>(base + p.offset(balance_losses_slot_));
    gu_ = reinterpret_cast<T*>(base + p.offset(gu_slot_));
    h_ = reinterpret_cast<T*>(base + p.offset(h_slot_));
    eo_ = reinterpret_cast<T*>(base + p.offset(eo_slot_));
    if (shared_inter_ > 0) shared_.bind(base, p);
  }
  // The shared expert runs before the routed path in both directions, so the two share the scratch.
  std::size_t scratch_bytes(std::int64_t tokens) const {
    const std::size_t shared = shared_inter_ > 0 ? shared_.scratch_bytes(tokens) : 0;
    return std::max(layout(tokens).bytes, shared);
  }
  void fp8_workspace_need(fp8_workspace_size& s, std::int64_t tokens) const {
    const std::int64_t rows = tokens * route_.top_k;  // bounds every expert's segment
    s.add(rows, 2 * inter_, hidden_);
    s.add(rows, hidden_, inter_);
    if (shared_inter_ > 0) shared_.fp8_workspace_need(s, tokens);
  }
  void use_fp8_workspace(const fp8_workspace& ws) {
    lin_.use(ws);
    shared_.use_fp8_workspace(ws);
  }

  // Routing of the last forward: (tokens, top_k) expert ids, best first, in backend memory.
  const std::int32_t* topk_indices() const { return indices_; }
  // Expert order of the last forward: expert e received offsets[e + 1] − offsets[e] assignments (E + 1).
  const std::int32_t* expert_offsets() const { return offsets_; }

  // Tokens that selected each expert in the last forward (E), copied to the host.
  template <class Backend>
  std::vector<std::int64_t> expert_load(Backend& be) const {
    require(forward_tokens_ >= 0, "moe.expert_load: no forward has run yet");
    const std::vector<std::int32_t> offsets = host_offsets(be);
    std::vector<std::int64_t> load(std::size_t(route_.experts));
    for (std::size_t e = 0; e < load.size(); ++e) load[e] = offsets[e + 1] - offsets[e];
    return load;
  }

  // α, the weight of the sequence-wise balance loss (the report uses 0.0001); 0 turns the loss off.
  void set_balance_weight(double alpha) {
    require(std::isfinite(alpha) && alpha >= 0,
            "moe.set_balance_weight: alpha must be finite and non-negative, got " + std::to_string(alpha));
    balance_weight_ = alpha;
  }
  double balance_weight() const { return balance_weight_; }
  // The tokens of the next forward form `batch` sequences of `seq` tokens (read only by the balance loss).
  void set_sequences(std::int64_t batch, std::int64_t seq) {
    require(batch > 0 && seq > 0, "moe.set_sequences: batch and seq must be positive, got batch " +
                                      std::to_string(batch) + ", seq " + std::to_string(seq));
    batch_ = batch;
    seq_ = seq;
  }
  // The balance loss α · mean over sequences of Σ_i f_i P_i of the last forward, copied to the host; 0
  // when that forward ran with α = 0 or no tokens.
  template <class Backend>
  double balance_loss(Backend& be) const {
    if (balance_batch_ == 0) return 0.0;
    std::vector<A> losses(static_cast<std::size_t>(balance_batch_));
    be.download(losses.data(), balance_losses_, losses.size() * sizeof(A));
    double sum = 0;
    for (A l : losses) sum += double(l);
    return sum;
  }

  // x: (tokens, hidden), the normalised input → y: (tokens, hidden). tokens ≤ the planned count.
  template <class Backend>
  void forward(Backend& be, const moe_weights<T>& w, const T* x, T* y, std::int64_t tokens, std::byte* scratch) {
    check_call("forward", w, tokens);
    const bool balanced = balance_weight_ > 0 && tokens > 0;
    if (balanced && batch_ * seq_ != tokens)
      throw error("moe.forward: the balance loss needs the sequence structure of the " + std::to_string(tokens) +
                  " tokens; set_sequences gave batch " + std::to_string(batch_) + " × seq " + std::to_string(seq_));
    const scratch_layout s = layout(tokens);
    T* logits = at<T>(scratch, s.logits);  // (tokens, E)
    T* xs = at<T>(scratch, s.xs);          // (tokens·top_k, hidden)
    // The shared expert writes y and the routed path is combined onto it. (DeepSeek overlaps the shared
    // expert with the dispatch all-to-all; on one device the order is immaterial.)
    if (shared_inter_ > 0) shared_.forward(be, {w.shared_gate_up, w.shared_down}, x, y, tokens);
    balance_batch_ = 0;
    route(be, w, x, logits, tokens);
    if (balanced) {
      moe_balance_loss(be, route_, coeff_, balance_losses_, scores_, indices_, batch_, seq_, balance_weight_);
      balance_batch_ = batch_;
      balance_seq_ = seq_;
    }
    forward_tokens_ = tokens;
    dispatch(be, x, xs, tokens);
    local_experts(be, w.experts, xs, tokens);
    combine(be, y, tokens, shared_inter_ > 0);
  }

  // dy: (tokens, hidden) → dx: (tokens, hidden) (=); grads += . Uses the activations of the last forward,
  // which must have run on the same x. When that forward computed a balance loss, its gradient is added:
  // the result is the gradient of (Σ y · dy) + balance loss.
  template <class Backend>
  void backward(Backend& be, const moe_weights<T>& w, const moe_grads<T>& g, const T* x, const T* dy, T* dx,
                std::int64_t tokens, std::byte* scratch) {
    check_call("backward", w, tokens);
    require(g.router && g.experts && (shared_inter_ == 0 || (g.shared_gate_up && g.shared_down)),
            "moe.backward: a gradient tensor (router, experts or shared expert) is null");
    require(balance_batch_ == 0 || tokens == balance_batch_ * balance_seq_,
            "moe.backward: " + std::to_string(tokens) + " tokens, but the last forward computed a balance loss over " +
                std::to_string(balance_batch_ * balance_seq_));
    if (shared_inter_ > 0)
      shared_.backward(be, {w.shared_gate_up, w.shared_down}, {g.shared_gate_up, g.shared_down}, x, dy, dx, tokens,
                       scratch);
    const scratch_layout s = layout(tokens);
    T* dlogits = at<T>(scratch, s.logits);     // (tokens, E)
    T* xs = at<T>(scratch, s.xs);              // (tokens·top_k, hidden)
    A* dweights = at<A>(scratch, s.dweights);  // (tokens, top_k)
    T* dio = at<T>(scratch, s.dio);            // (tokens·top_k, hidden): d expert outputs, then d expert inputs
    T* dh = at<T>(scratch, s.dh);              // (tokens·top_k, inter)
    T* dgu = at<T>(scratch, s.dgu);            // (tokens·top_k, 2·inter)
    combine_backward(be, dio, dweights, dy, tokens);
    gather(be, x, xs, tokens);  // the dispatched inputs are recomputed rather than kept
    local_experts_backward(be, w.experts, g.experts, xs, dio, dh, dgu, tokens);
    dispatch_backward(be, dx, dio, tokens, shared_inter_ > 0);
    route_backward(be, w, g, x, dweights, dlogits, dx, tokens);
  }

 private:
  // Byte offsets into the scratch memory of one call. Forward uses logits and xs; backward all of them,
  // with logits holding d logits and dio first the d expert outputs, then the d expert inputs.
  struct scratch_layout {
    std::size_t logits = 0, xs = 0, dweights = 0, dio = 0, dh = 0, dgu = 0, bytes = 0;
  };
  scratch_layout layout(std::int64_t tokens) const {
    const std::int64_t rows = tokens * route_.top_k;
    scratch_layout s;
    auto take = [&](std::int64_t count, std::size_t element) {
      const std::size_t offset = (s.bytes + arena_plan::alignment - 1) / arena_plan::alignment * arena_plan::alignment;
      s.bytes = offset + std::size_t(count) * element;
      return offset;
    };
    s.logits = take(tokens * route_.experts, sizeof(T));
    s.xs = take(rows * hidden_, sizeof(T));
    s.dweights = take(rows, sizeof(A));
    s.dio = take(rows * hidden_, sizeof(T));
    s.dh = take(rows * inter_, sizeof(T));
    s.dgu = take(rows * 2 * inter_, sizeof(T));
    return s;
  }
  template <class U>
  static U* at(std::byte* scratch, std::size_t offset) {
    return reinterpret_cast<U*>(scratch + offset);
  }

  void check_call(const char* what, const moe_weights<T>& w, std::int64_t tokens) const {
    auto fail = [&](const std::string& message) { throw error(std::string("moe.") + what + ": " + message); };
    if (tokens < 0 || tokens > tokens_)
      fail(std::to_string(tokens) + " tokens, the activations were planned for " + std::to_string(tokens_));
    if (!w.router || !w.experts) fail("weights.router or weights.experts is null");
    if (route_.bias && !w.bias) fail("model_config.moe.bias is set but weights.bias (e_score_correction_bias) is null");
    if (shared_inter_ > 0 && (!w.shared_gate_up || !w.shared_down))
      fail("model_config.moe.shared > 0 but the shared expert weights are null");
  }

  std::int64_t expert_stride() const { return 3 * inter_ * hidden_; }  // elements per expert block
  std::int64_t down_offset() const { return 2 * inter_ * hidden_; }    // down_proj within an expert block

  // logits = x · W_routerᵀ, then scores, indices and weights per token.
  template <class Backend>
  void route(Backend& be, const moe_weights<T>& w, const T* x, T* logits, std::int64_t tokens) {
    const int e = route_.experts;
    gemm(be, false, true, tokens, e, hidden_, 1.0, x, hidden_, w.router, hidden_, 0.0, logits, e);  // (tokens, E)
    moe_route(be, route_, scores_, indices_, weights_, logits, w.bias, tokens);
  }

  // The assignments in expert order, and the x rows gathered into that order.
  template <class Backend>
  void dispatch(Backend& be, const T* x, T* xs, std::int64_t tokens) {
    moe_sort_by_expert(be, perm_, inv_perm_, offsets_, indices_, tokens * route_.top_k, route_.experts);
    gather(be, x, xs, tokens);
  }
  template <class Backend>
  void gather(Backend& be, const T* x, T* xs, std::int64_t tokens) {
    moe_dispatch(be, xs, x, perm_, tokens * route_.top_k, route_.top_k, hidden_);  // (tokens·top_k, hidden)
  }

  // eo = down_e(silu(gate_e(xs)) · up_e(xs)) on each expert's segment of rows.
  template <class Backend>
  void local_experts(Backend& be, const T* experts, const T* xs, std::int64_t tokens) {
    const std::int64_t rows = tokens * route_.top_k, stride = expert_stride();
    const T* down = experts + down_offset();
    if constexpr (Fp8) {
      const auto segments = host_offsets(be);
      for_segments(segments, [&](int x, std::int64_t first, std::int64_t n) {
        lin_.fprop(be, n, 2 * inter_, hidden_, xs + first * hidden_, experts + x * stride, gu_ + first * 2 * inter_);
      });
      swiglu_forward(be, h_, gu_, rows, inter_);
      for_segments(segments, [&](int x, std::int64_t first, std::int64_t n) {
        lin_.fprop(be, n, hidden_, inter_, h_ + first * inter_, down + x * stride, eo_ + first * hidden_);
      });
    } else {
      const int e = route_.experts;
      gemm_grouped(be, true, 2 * inter_, hidden_, xs, experts, stride, gu_, offsets_, e);  // (rows, 2·inter)
      swiglu_forward(be, h_, gu_, rows, inter_);                                           // (rows, inter)
      gemm_grouped(be, true, hidden_, inter_, h_, down, stride, eo_, offsets_, e);         // (rows, hidden)
    }
  }

  // The expert offsets of the last forward (E + 1), read back to the host.
  template <class Backend>
  std::vector<std::int32_t> host_offsets(Backend& be) const {
    std::vector<std::int32_t> offsets(std::size_t(route_.experts + 1));
    be.download(offsets.data(), offsets_, offsets.size() * sizeof(std::int32_t));
    return offsets;
  }
  // f(expert, first row, rows) for every expert with rows.
  template <class F>
  void for_segments(const std::vector<std::int32_t>& offsets, F&& f) const {
    for (int x = 0; x < route_.experts; ++x)
      if (offsets[std::size_t(x) + 1] > offsets[std::size_t(x)])
        f(x, std::int64_t(offsets[std::size_t(x)]), std::int64_t(offsets[std::size_t(x) + 1] - offsets[std::size_t(x)]));
  }

  template <class Backend>
  void combine(Backend& be, T* y, std::int64_t tokens, bool accumulate) {
    moe_combine(be, y, eo_, weights_, inv_perm_, tokens, route_.top_k, hidden_, accumulate);
  }

  // deo (tokens·top_k, hidden) = d expert outputs; dweights (tokens, top_k).
  template <class Backend>
  void combine_backward(Backend& be, T* deo, A* dweights, const T* dy, std::int64_t tokens) {
    moe_combine_backward(be, deo, dweights, dy, eo_, weights_, inv_perm_, tokens, route_.top_k, hidden_);
  }

  // dio holds the d expert outputs on entry and the d expert inputs on return; expert gradients += .
  template <class Backend>
  void local_experts_backward(Backend& be, const T* experts, T* dexperts, const T* xs, T* dio, T* dh, T* dgu,
                              std::int64_t tokens) {
    const std::int64_t rows = tokens * route_.top_k, stride = expert_stride();
    const T* down = experts + down_offset();
    T* ddown = dexperts + down_offset();
    if constexpr (Fp8) {
      const auto segments = host_offsets(be);
      for_segments(segments, [&](int x, std::int64_t first, std::int64_t n) {
        const T* deo = dio + first * hidden_;
        lin_.wgrad(be, n, hidden_, inter_, deo, h_ + first * inter_, ddown + x * stride);
        lin_.dgrad(be, n, hidden_, inter_, deo, down + x * stride, 0.0, dh + first * inter_);
      });
      swiglu_backward(be, dgu, dh, gu_, rows, inter_);
      for_segments(segments, [&](int x, std::int64_t first, std::int64_t n) {
        const T* dgu_x = dgu + first * 2 * inter_;
        lin_.wgrad(be, n, 2 * inter_, hidden_, dgu_x, xs + first * hidden_, dexperts + x * stride);
        lin_.dgrad(be, n, 2 * inter_, hidden_, dgu_x, experts + x * stride, 0.0, dio + first * hidden_);
      });
    } else {
      const int e = route_.experts;
      gemm_grouped_wgrad(be, hidden_, inter_, dio, h_, ddown, stride, offsets_, e);          // dW_down += deoᵀ h
      gemm_grouped(be, false, inter_, hidden_, dio, down, stride, dh, offsets_, e);          // dh = deo · W_down
      swiglu_backward(be, dgu, dh, gu_, rows, inter_);                                       // (rows, 2·inter)
      gemm_grouped_wgrad(be, 2 * inter_, hidden_, dgu, xs, dexperts, stride, offsets_, e);   // dW_gu += dguᵀ xs
      gemm_grouped(be, false, hidden_, 2 * inter_, dgu, experts, stride, dio, offsets_, e);  // dxs = dgu · W_gu
    }
  }

  // dx (=, or += when accumulate) = Σ_k dxs of the token's assignments.
  template <class Backend>
  void dispatch_backward(Backend& be, T* dx, const T* dxs, std::int64_t tokens, bool accumulate) {
    moe_dispatch_backward(be, dx, dxs, inv_perm_, tokens, route_.top_k, hidden_, accumulate);
  }

  // d logits from d weights (and the balance loss); dW_router += dlogitsᵀ · x; dx += dlogits · W_router.
  template <class Backend>
  void route_backward(Backend& be, const moe_weights<T>& w, const moe_grads<T>& g, const T* x, const A* dweights,
                      T* dlogits, T* dx, std::int64_t tokens) {
    const int e = route_.experts;
    moe_route_backward(be, route_, dlogits, dweights, scores_, indices_, tokens);                      // (tokens, E)
    if (balance_batch_ > 0) moe_balance_backward(be, route_, dlogits, coeff_, scores_, balance_batch_, balance_seq_);
    gemm(be, true, false, e, hidden_, tokens, 1.0, dlogits, e, x, hidden_, 1.0, g.router, hidden_);    // (E, hidden)
    gemm(be, false, false, tokens, hidden_, e, 1.0, dlogits, e, w.router, hidden_, 1.0, dx, hidden_);  // (tokens, d)
  }

  route_params route_;
  std::int64_t hidden_ = 0, inter_ = 0, shared_inter_ = 0, tokens_ = 0;
  std::int64_t forward_tokens_ = -1;                  // tokens of the last forward, −1 before the first
  double balance_weight_ = 0;                         // α
  std::int64_t batch_ = 0, seq_ = 0;                  // from set_sequences
  std::int64_t balance_batch_ = 0, balance_seq_ = 0;  // the last forward's balance loss; batch 0 when none
  mlp<T, Fp8> shared_;
  linear_gemm<Fp8> lin_;
  std::size_t scores_slot_ = 0, indices_slot_ = 0, weights_slot_ = 0, perm_slot_ = 0, inv_perm_slot_ = 0,
              offsets_slot_ = 0, gu_slot_ = 0, h_slot_ = 0, eo_slot_ = 0, coeff_slot_ = 0, balance_losses_slot_ = 0;
  A* scores_ = nullptr;               // (tokens, E) affinities
  std::int32_t* indices_ = nullptr;   // (tokens, top_k)
  A* weights_ = nullptr;              // (tokens, top_k)
  std::int32_t* perm_ = nullptr;      // (tokens·top_k)
  std::int32_t* inv_perm_ = nullptr;  // (tokens·top_k)
  std::int32_t* offsets_ = nullptr;   // (E + 1)
  A* coeff_ = nullptr;                // (batch, E) balance-loss coefficients c of the last forward
  A* balance_losses_ = nullptr;       // (batch) balance loss per sequence of the last forward
  T* gu_ = nullptr;                   // (tokens·top_k, 2·inter), expert order
  T* h_ = nullptr;                    // (tokens·top_k, inter), expert order
  T* eo_ = nullptr;                   // (tokens·top_k, hidden) expert outputs, unweighted, expert order
};

}  // namespace dsx
