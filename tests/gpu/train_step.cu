// Whole training steps on the GPU against the host backend: forward with the loss, backward, the global
// gradient norm (sum_squares), clipping and dsx::adamw (its decay ranges uploaded to the device; with
// precision::bf16_master the f32 master copy and its rounding into the bf16 weights), four steps from the
// same weights and tokens. A dense configuration keeps routing decisions, which bf16 rounding may flip
// by design, out of the comparison.
//
// What is compared: every step's loss and gradient norm, and after the steps the weights. The learning
// rate (1e-2) moves every weight by about 1e-2 per step, far above the backends' arithmetic differences,
// so a wrong update shows in the losses and in most weights; a weight whose gradient is near zero can
// take an update of the other sign on the other backend (AdamW's first steps move by lr · sign(g)), so the
// weights are compared by the fraction that agree. With precision::fp8_v3 both backends quantise to the
// same bytes, but a GEMM result that differs in its last bits can round to another E4M3 value in the next
// Linear, so more gradient signs near zero differ: 95 % of the weights must agree (not yet run on a GPU).
#include "gpu_test.cuh"

#include <cmath>
#include <vector>

#include "dsx/backend/cuda/all.cuh"
#include "dsx/backend/host/all.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/transformer.hpp"
#include "dsx/optim/adamw.hpp"

using namespace dsx::test::gpu;

namespace {

constexpr dsx::model_config dense{
    .vocab = 64, .hidden = 32, .layers = 2, .dense_layers = 2, .dense_inter = 48,
    .mla = {.heads = 2, .q_lora = 16, .kv_lora = 12, .nope = 8, .rope = 4, .v = 8},
    .rms_eps = 1e-6, .max_positions = 32};

constexpr std::int64_t batch = 2, seq = 12, steps = 4;
constexpr double lr = 1e-2, clip = 1.0;

struct trace {
  std::vector<double> loss, grad_norm;
  std::vector<double> params;
};

template <dsx::precision_policy P, class Backend>
trace train(Backend& be, const std::vector<std::int32_t>& tokens) {
  using model_t = dsx::transformer<dense, P, Backend>;
  model_t model(be, batch, seq);
  dsx::init_weights(model, 5, 0.1);  // the same weights on both backends (generated on the host)
  dsx::adamw<model_t> opt(model);
  trace t;
  for (std::int64_t s = 0; s < steps; ++s) {
    model.zero_grad();
    t.loss.push_back(model.forward(tokens, batch, seq));
    model.backward();
    const double norm = opt.grad_norm();
    t.grad_norm.push_back(norm);
    opt.step(lr, dsx::adamw<model_t>::clip_scale(norm, clip));
  }
  for (const auto& e : model.params().entries())
    if (!e.spec.shared_copy())
      for (const auto v : model.get_param(e)) t.params.push_back(dsx::convert<double>(v));
  return t;
}

template <dsx::precision_policy P>
void compare(double tol, double agree_fraction = 0.99) {
  std::vector<std::int32_t> tokens(std::size_t(batch * seq));
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 13 + 5) % dense.vocab);
  dsx::backend::host hb;
  cuda_backend be;
  const trace want = train<P>(hb, tokens), got = train<P>(be, tokens);
  for (std::int64_t s = 0; s < steps; ++s) {
    INFO("step " << s + 1);
    CHECK(got.loss[std::size_t(s)] == Approx(want.loss[std::size_t(s)]).epsilon(tol));
    CHECK(got.grad_norm[std::size_t(s)] == Approx(want.grad_norm[std::size_t(s)]).epsilon(tol));
  }
  CHECK(want.loss.back() < 0.99 * want.loss.front());  // the steps train
  REQUIRE(got.params.size() == want.params.size());
  std::size_t agree = 0;
  for (std::size_t i = 0; i < want.params.size(); ++i)
    agree += std::abs(got.params[i] - want.params[i]) <= 0.1 * lr + tol * std::abs(want.params[i]);
  INFO(agree << " of " << want.params.size() << " weights agree");
  CHECK(double(agree) >= agree_fraction * double(want.params.size()));
}

}  // namespace

TEST_CASE("training steps with AdamW on the GPU equal the host backend in f32", "[gpu]") {
  compare<dsx::precision::f32>(1e-4);
}

TEST_CASE("training steps with AdamW and f32 master weights on the GPU equal the host backend in bf16", "[gpu]") {
  compare<dsx::precision::bf16_master>(3e-2);
}

TEST_CASE("training steps with FP8 Linears (precision::fp8_v3) on the GPU track the host backend", "[gpu]") {
  compare<dsx::precision::fp8_v3>(3e-2, 0.95);
}
