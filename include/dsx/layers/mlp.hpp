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
//  - The Linears' GEMMs run through a linear_gemm<Fp8> (layers/linear.hpp): in T, or with Fp8 in FP8 block
//    scaling; an Fp8 layer needs use_fp8_workspace, sized by fp8_workspace_size, before its first call.
#pragma once

#include <cstdint>

#include "dsx/core/arena.hpp"
#include "dsx/core/numeric.hpp"
#include "dsx/layers/linear.hpp"

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

template <class T, bool Fp8 = false>
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
  void fp8_workspace_need(fp8_workspace_size& s, std::int64_t tokens) const {
    s.add(tokens, 2 * inter_, hidden_);
    s.add(tokens, hidden_, inter_);
  }
  void use_fp8_workspace(const fp8_workspace& ws) { lin_.use(ws); }

  // x: (tokens, hidden) → y: (tokens, hidden). tokens ≤ the planned count.
  template <class Backend>
  void forward(Backend& be, const mlp_weights<T>& w, const T* x, T* y, std::int64_t tokens) {
    lin_.fprop(be, tokens, 2 * inter_, hidden_, x, w.gate_up, gu_);  // (tokens, 2·inter)
    swiglu_forward(be, h_, gu_, tokens, inter_);                      // (tokens, inter)
    lin_.fprop(be, tokens, hidden_, inter_, h_, w.down, y);           // (tokens, hidden)
  }

  // dy: (tokens, hidden) → dx: (tokens, hidden) (=); grads += .
  template <class Backend>
  void backward(Backend& be, const mlp_weights<T>& w, const mlp_grads<T>& g, const T* x, const T* dy, T* dx,
                std::int64_t tokens, std::byte* scratch) {
    T* dh = reinterpret_cast<T*>(scratch);  // (tokens, inter)
    T* dgu = dh + tokens * inter_;           // (tokens, 2·inter)
    lin_.wgrad(be, tokens, hidden_, inter_, dy, h_, g.down);            // dW_down += dyᵀ h
    lin_.dgrad(be, tokens, hidden_, inter_, dy, w.down, 0.0, dh);       // dh = dy W_down
    swiglu_backward(be, dgu, dh, gu_, tokens, inter_);
    lin_.wgrad(be, tokens, 2 * inter_, hidden_, dgu, x, g.gate_up);     // dW_gu += dguᵀ x
    lin_.dgrad(be, tokens, 2 * inter_, hidden_, dgu, w.gate_up, 0.0, dx);  // dx = dgu W_gu
  }

 private:
  std::int64_t hidden_ = 0, inter_ = 0, tokens_ = 0;
  std::size_t gu_slot_ = 0, h_slot_ = 0;
  T* gu_ = nullptr;
  T* h_ = nullptr;
  linear_gemm<Fp8> lin_;
};

}  // namespace dsx
