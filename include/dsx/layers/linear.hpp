// The three GEMMs of a Linear y = x · Wᵀ, W (out, in) in PyTorch's layout, every operand packed row-major:
//   fprop  y  (tokens, out)  = x · Wᵀ
//   dgrad  dx (tokens, in)   = dy · W        (or += with beta 1)
//   wgrad  dW (out, in)     += dyᵀ · x
// either in the storage precision (one GEMM each) or, with Fp8, as DeepSeek-V3 trains (§3.3.1-3.3.2):
// each GEMM's two inputs are quantised to E4M3 just before it, products are accumulated in f32 with the
// per-128 promotion of gemm_fp8 (backend fp8 headers), and the result is stored in T. The tiling follows
// the reduction dimension of each GEMM:
//   fprop  x per 1×128 tile along in,              W per 128×128 block
//   dgrad  dy per 1×128 tile along out,            W per 128×128 block (the same blocks, transposed)
//   wgrad  dy and x per 128×1 tile along tokens    (1×128 tiles of dyᵀ and xᵀ)
// The quantised copies go to an fp8_workspace the model plans once for its largest Linear
// (fp8_workspace_size); layers hold a linear_gemm and hand it the workspace before the first call.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "dsx/core/error.hpp"
#include "dsx/core/fp8_block.hpp"
#include "dsx/core/numeric.hpp"

namespace dsx {

// Backend memory for the quantised A operand (qa, sa) and B operand (qb, sb) of one FP8 GEMM.
struct fp8_workspace {
  fp8_e4m3* qa = nullptr;
  float* sa = nullptr;
  fp8_e4m3* qb = nullptr;
  float* sb = nullptr;
  std::int64_t elems = 0;   // capacity of qa and of qb
  std::int64_t scales = 0;  // capacity of sa and of sb
};

// The capacities an fp8_workspace needs for a set of Linears, grown by add() for each.
struct fp8_workspace_size {
  std::int64_t elems = 0, scales = 0;

  // A Linear (out, in) applied to `tokens` rows. Its six GEMM inputs are x (tokens, in) and W (out, in)
  // forward, dy (tokens, out) and Wᵀ (in, out) in dgrad, dyᵀ (out, tokens) and xᵀ (in, tokens) in
  // wgrad; r · ⌈c/128⌉ scales of an (r, c) operand bound its 128×128 blocks too.
  void add(std::int64_t tokens, std::int64_t out, std::int64_t in) {
    const std::int64_t shapes[6][2] = {{tokens, in}, {out, in}, {tokens, out}, {in, out}, {out, tokens}, {in, tokens}};
    for (const auto& s : shapes) {
      elems = std::max(elems, s[0] * s[1]);
      scales = std::max(scales, s[0] * fp8_block::blocks(s[1]));
    }
  }
};

template <bool Fp8>
class linear_gemm {
 public:
  // The workspace of the FP8 form (ignored by the other): memory owned by the caller, alive while this is
  // used; the descriptor is copied.
  void use(const fp8_workspace& ws) { ws_ = ws; }

  template <class Backend, class T>
  void fprop(Backend& be, std::int64_t tokens, std::int64_t out, std::int64_t in, const T* x, const T* w, T* y) const {
    if constexpr (!Fp8) {
      gemm(be, false, true, tokens, out, in, 1.0, x, in, w, in, 0.0, y, out);
    } else {
      const fp8_workspace& ws = workspace("forward", tokens, out, in);
      quantize_act_1x128(be, ws.qa, ws.sa, x, tokens, in, false);
      quantize_weight_128x128(be, ws.qb, ws.sb, w, out, in, false);
      gemm_fp8(be, tokens, out, in, ws.qa, ws.sa, ws.qb, ws.sb, fp8_block::scaling::block_128x128, 0.0f, y);
    }
  }

  // beta is 0 (dx =) or 1 (dx +=).
  template <class Backend, class T>
  void dgrad(Backend& be, std::int64_t tokens, std::int64_t out, std::int64_t in, const T* dy, const T* w, double beta,
             T* dx) const {
    if constexpr (!Fp8) {
      gemm(be, false, false, tokens, in, out, 1.0, dy, out, w, in, beta, dx, in);
    } else {
      const fp8_workspace& ws = workspace("input gradient", tokens, out, in);
      quantize_act_1x128(be, ws.qa, ws.sa, dy, tokens, out, false);
      quantize_weight_128x128_transposed(be, ws.qb, ws.sb, w, out, in, false);
      gemm_fp8(be, tokens, in, out, ws.qa, ws.sa, ws.qb, ws.sb, fp8_block::scaling::block_128x128, float(beta), dx);
    }
  }

  template <class Backend, class T>
  void wgrad(Backend& be, std::int64_t tokens, std::int64_t out, std::int64_t in, const T* dy, const T* x,
             T* dw) const {
    if constexpr (!Fp8) {
      gemm(be, true, false, out, in, tokens, 1.0, dy, out, x, in, 1.0, dw, in);
    } else {
      const fp8_workspace& ws = workspace("weight gradient", tokens, out, in);
      quantize_act_1x128_transposed(be, ws.qa, ws.sa, dy, tokens, out, false);  // dyᵀ (out, tokens)
      quantize_act_1x128_transposed(be, ws.qb, ws.sb, x, tokens, in, false);    // xᵀ (in, tokens)
      gemm_fp8(be, out, in, tokens, ws.qa, ws.sa, ws.qb, ws.sb, fp8_block::scaling::tile_1x128, 1.0f, dw);
    }
  }

 private:
  const fp8_workspace& workspace(const char* gemm_name, std::int64_t tokens, std::int64_t out, std::int64_t in) const {
    const auto shape = [&] {
      return std::string(gemm_name) + " GEMM of a Linear (" + std::to_string(out) + ", " + std::to_string(in) +
             ") over " + std::to_string(tokens) + " tokens";
    };
    require(ws_.qa && ws_.sa && ws_.qb && ws_.sb,
            "FP8 linear: no workspace was given to the layer before the " + shape());
    fp8_workspace_size need;
    need.add(tokens, out, in);
    require(need.elems <= ws_.elems && need.scales <= ws_.scales,
            "FP8 linear: the " + shape() + " needs " + std::to_string(need.elems) + " quantised values and " +
                std::to_string(need.scales) + " scales per operand; the workspace holds " +
                std::to_string(ws_.elems) + " and " + std::to_string(ws_.scales));
    return ws_;
  }

  fp8_workspace ws_{};
};

}  // namespace dsx
