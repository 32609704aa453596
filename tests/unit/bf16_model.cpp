// The whole model in bf16 (precision::bf16_uniform: bf16 weights, activations and gradients, f32
// accumulation) against the same model in f64 on the host backend. A dense configuration (no MoE) keeps
// routing decisions out of the comparison: bf16 rounding (2⁻⁸ relative) flips experts whose margins are
// smaller than that, which would change a token's output by design.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/transformer.hpp"

namespace {

constexpr dsx::model_config dense{
    .vocab = 64, .hidden = 32, .layers = 2, .dense_layers = 2, .dense_inter = 48,
    .mla = {.heads = 2, .q_lora = 16, .kv_lora = 12, .nope = 8, .rope = 4, .v = 8},
    .rms_eps = 1e-6, .max_positions = 32};

template <dsx::precision_policy P>
using model_t = dsx::transformer<dense, P, dsx::backend::host>;

template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = dsx::convert<double>(v[i]);
  return out;
}

double rel(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) num = std::max(num, std::abs(a[i] - b[i])), den = std::max(den, std::abs(b[i]));
  return num / den;
}

}  // namespace

TEST_CASE("bf16 model: logits, loss and gradients track the f64 model within bf16 rounding", "[unit]") {
  dsx::backend::host be;
  model_t<dsx::precision::f64> ref(be, 2, 12);
  model_t<dsx::precision::bf16_uniform> low(be, 2, 12);
  dsx::init_weights(ref, 3, 0.1);
  // The same weights, rounded to bf16, in both models (so only arithmetic differs).
  for (const auto& e : ref.params().entries()) {
    if (e.spec.shared_copy()) continue;
    std::vector<dsx::bf16> w;
    for (double v : ref.get_param(e)) w.push_back(dsx::bf16(float(v)));
    low.set_param(e, w);
    ref.set_param(e, widen(w));
  }
  std::vector<std::int32_t> tokens(24);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 13 + 5) % dense.vocab);
  const double loss_ref = ref.forward(tokens, 2, 12);
  const double loss_low = low.forward(tokens, 2, 12);
  ref.backward();
  low.backward();
  CHECK(std::abs(loss_low - loss_ref) / loss_ref < 1e-2);
  CHECK(rel(widen(low.logits()), widen(ref.logits())) < 2e-2);  // measured 7.2e-3
  // Gradients pass through every layer in bf16: bf16 roundings (2⁻⁸ each) compound (measured worst 1.5e-2).
  for (const auto& e : ref.params().entries()) {
    if (!e.spec.trained() || e.spec.shared_copy()) continue;
    INFO(e.name);
    CHECK(rel(widen(low.get_grad(e)), widen(ref.get_grad(e))) < 5e-2);
  }
  // Greedy decoding through the latent cache runs in bf16 too.
  const std::vector<std::int32_t> prompt(tokens.begin(), tokens.begin() + 4);
  CHECK(low.generate_greedy(prompt, 1, 4, 3).size() == 3);
}
