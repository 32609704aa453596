// SwiGLU feed-forward: y = down(silu(gate(x)) · up(x)). Used for the dense layers, the shared
// experts and (per expert) the routed experts.
//
// Contract (every layer in dsx follows it):
//  - `plan` declares the activations kept for backward in the model's activation arena; `bind` resolves
//    them once the arena exists; `scratch_bytes` is temporary memory a call may use and that the caller
//    shares between layers.
//  - forward writes its output (=). backward writes the input gradient (=) and accumulates parameter
//    gradients (+=).
//  - Weights are views into the parameter arena. gate_proj and up_proj of one FFN are adjacent there
//    (see config/param_spec.hpp), so `gate_up` is one (2·inter, hidden) matrix and one GEMM computes both.
#pragma once

#include <cstdint>

#include "dsx/core/arena.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx {

template <class T>
struct mlp_weights {
  const T* gate_up = nullptr;  // (2·inter, hidden): gate_proj rows then up_proj rows
  const T* down = nullptr;     // (hidden, inter)
};

template <class T>
struct mlp_grads {
  T* gate_up = nullptr;
  T* down = nullptr;
};

template <class T>
class mlp {
 public:
  mlp() = default;
  mlp(std::int64_t hidden, std::int64_t inter) : hidden_(hidden), inter_(inter) {}

  void plan(arena_plan& p, std::int64_t tokens) {
    tokens_ = tokens;
    gu_slot_ = p.reserve<T>(tokens * 2 * inter_, "mlp.gate_up");
    h_slot_ = p.reserve<T>(tokens * inter_, "mlp.h");
  }
  void bind(std::byte* base, const arena_plan& p) {
    gu_ = reinterpret_cast<T*>(base + p.offset(gu_slot_));
    h_ = reinterpret_cast<T*>(base + p.offset(h_slot_));
  }
  std::size_t scratch_bytes(std::int64_t tokens) const { return std::size_t(tokens * 3 * inter_) * sizeof(T); }

  // x: (tokens, hidden) → y: (tokens, hidden). tokens ≤ the planned count.
  template <class Backend>
  void forward(Backend& be, const mlp_weights<T>& w, const T* x, T* y, std::int64_t tokens) {
    gemm(be, false, true, tokens, 2 * inter_, hidden_, 1.0, x, hidden_, w.gate_up, hidden_, 0.0, gu_, 2 * inter_);  // (tokens, 2·inter)
    swiglu_forward(be, h_, gu_, tokens, inter_);                                                                      // (tokens, inter)
    gemm(be, false, true, tokens, hidden_, inter_, 1.0, h_, inter_, w.down, inter_, 0.0, y, hidden_);                // (tokens, hidden)
  }

  // dy: (tokens, hidden) → dx: (tokens, hidden) (=); grads += .
  template <class Backend>
  void backward(Backend& be, const mlp_weights<T>& w, const mlp_grads<T>& g, const T* x, const T* dy, T* dx,
                std::int64_t tokens, std::byte* scratch) {
    T* dh = reinterpret_cast<T*>(scratch);  // (tokens, inter)
    T* dgu = dh + tokens * inter_;           // (tokens, 2·inter)
    gemm(be, true, false, hidden_, inter_, tokens, 1.0, dy, hidden_, h_, inter_, 1.0, g.down, inter_);   // dW_down += dyᵀ h
    gemm(be, false, false, tokens, inter_, hidden_, 1.0, dy, hidden_, w.down, inter_, 0.0, dh, inter_);  // dh = dy W_down
    swiglu_backward(be, dgu, dh, gu_, tokens, inter_);
    gemm(be, true, false, 2 * inter_, hidden_, tokens, 1.0, dgu, 2 * inter_, x, hidden_, 1.0, g.gate_up, hidden_);  // dW_gu += dguᵀ x
    gemm(be, false, false, tokens, hidden_, 2 * inter_, 1.0, dgu, 2 * inter_, w.gate_up, hidden_, 0.0, dx, hidden_);  // dx = dgu W_gu
  }

 private:
  std::int64_t hidden_ = 0, inter_ = 0, tokens_ = 0;
  std::size_t gu_slot_ = 0, h_slot_ = 0;
  T* gu_ = nullptr;
  T* h_ = nullptr;
};

}  // namespace dsx
