// DeepSeek-V3's FP8 training recipe in the model (precision::fp8_v3, layers/linear.hpp) on the host backend:
//  - linear_gemm<true>'s three GEMMs equal f64 GEMMs of the quantised-then-dequantised operands, tiled as
//    the recipe says (so the host emulates exactly what an FP8 GPU GEMM computes), and stay within FP8's
//    rounding of the unquantised GEMMs;
//  - a whole model in fp8_v3 tracks the same model in bf16_master (the FP8 GEMMs' error, not a bug,
//    separates them), its gradients point the same way, and AdamW trains it as far as bf16 in a few steps.
// The configurations have dimensions above 128 so that several 1×128 tiles and 128×128 blocks, and cut
// ones, are exercised. A checkpoint records that its Linears ran in FP8, and a resume in another policy
// is refused.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/io/checkpoint.hpp"
#include "dsx/layers/linear.hpp"
#include "dsx/model/init.hpp"
#include "dsx/model/transformer.hpp"
#include "dsx/optim/adamw.hpp"

using dsx::backend::host;
namespace fb = dsx::fp8_block;

namespace {

std::vector<float> random_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> exponent(-3.0f, 3.0f);
  std::vector<float> v(std::size_t(rows * cols));
  for (auto& x : v) x = normal(rng) * std::exp2(exponent(rng));
  return v;
}

// x (rows, cols) → xᵀ (cols, rows).
std::vector<float> transpose(const std::vector<float>& x, std::int64_t rows, std::int64_t cols) {
  std::vector<float> t(x.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) t[std::size_t(c * rows + r)] = x[std::size_t(r * cols + c)];
  return t;
}

// What the recipe's FP8 GEMM sees of an operand: R quantised and dequantised, per 1×128 tile or 128×128 block.
std::vector<double> fp8_view(host& be, const std::vector<float>& r, std::int64_t rows, std::int64_t cols, bool weight) {
  std::vector<dsx::fp8_e4m3> q(r.size());
  std::vector<float> s(std::size_t((weight ? fb::blocks(rows) : rows) * fb::blocks(cols)));
  std::vector<float> back(r.size());
  if (weight) {
    dsx::backend::quantize_weight_128x128(be, q.data(), s.data(), r.data(), rows, cols, false);
    dsx::backend::dequantize_weight_128x128(be, back.data(), q.data(), s.data(), rows, cols);
  } else {
    dsx::backend::quantize_act_1x128(be, q.data(), s.data(), r.data(), rows, cols, false);
    dsx::backend::dequantize_act_1x128(be, back.data(), q.data(), s.data(), rows, cols);
  }
  return {back.begin(), back.end()};
}
std::vector<double> exact(const std::vector<float>& r) { return {r.begin(), r.end()}; }

// C (m, n) = A (m, k) · B (n, k)ᵀ in f64, and the largest Σ|ab| of an element (the scale of its errors).
std::vector<double> gemm_nt(const std::vector<double>& a, const std::vector<double>& b, std::int64_t m, std::int64_t n,
                            std::int64_t k, double& scale) {
  std::vector<double> c(std::size_t(m * n));
  scale = 0;
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = 0, abs_sum = 0;
      for (std::int64_t t = 0; t < k; ++t) {
        sum += a[std::size_t(i * k + t)] * b[std::size_t(j * k + t)];
        abs_sum += std::abs(a[std::size_t(i * k + t)] * b[std::size_t(j * k + t)]);
      }
      c[std::size_t(i * n + j)] = sum;
      scale = std::max(scale, abs_sum);
    }
  return c;
}

// max |got − want| / scale.
double error_over(const std::vector<float>& got, const std::vector<double>& want, double scale) {
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
  return worst / scale;
}

}  // namespace

TEST_CASE("FP8 linear: forward, input and weight gradients are the GEMMs of the recipe's quantised operands",
          "[unit]") {
  host be;
  const std::int64_t tokens = 200, out = 260, in = 300;
  const auto x = random_matrix(tokens, in, 1), w = random_matrix(out, in, 2), dy = random_matrix(tokens, out, 3);
  dsx::fp8_workspace_size size;
  size.add(tokens, out, in);
  std::vector<dsx::fp8_e4m3> qa(std::size_t(size.elems)), qb(std::size_t(size.elems));
  std::vector<float> sa(std::size_t(size.scales)), sb(std::size_t(size.scales));
  dsx::linear_gemm<true> lin;
  lin.use({qa.data(), sa.data(), qb.data(), sb.data(), size.elems, size.scales});
  const auto xt = transpose(x, tokens, in), wt = transpose(w, out, in), dyt = transpose(dy, tokens, out);
  double scale = 0, exact_scale = 0;

  SECTION("forward: x per 1×128 tile along in, W per 128×128 block") {
    std::vector<float> y(std::size_t(tokens * out));
    lin.fprop(be, tokens, out, in, x.data(), w.data(), y.data());
    const auto want = gemm_nt(fp8_view(be, x, tokens, in, false), fp8_view(be, w, out, in, true), tokens, out, in, scale);
    CHECK(error_over(y, want, scale) < 1e-6);
    const auto unquantised = gemm_nt(exact(x), exact(w), tokens, out, in, exact_scale);
    CHECK(error_over(y, unquantised, exact_scale) < 4e-2);
  }
  SECTION("input gradient: dy per 1×128 tile along out, W's blocks transposed; beta 1 adds") {
    std::vector<float> dx(std::size_t(tokens * in), 0.5f);
    lin.dgrad(be, tokens, out, in, dy.data(), w.data(), 1.0, dx.data());
    // Wᵀ's 128×128 blocks are W's, so quantising Wᵀ as a weight gives the same values and scales.
    auto want = gemm_nt(fp8_view(be, dy, tokens, out, false), fp8_view(be, wt, in, out, true), tokens, in, out, scale);
    for (auto& v : want) v += 0.5;
    CHECK(error_over(dx, want, scale) < 1e-6);
    lin.dgrad(be, tokens, out, in, dy.data(), w.data(), 0.0, dx.data());
    for (auto& v : want) v -= 0.5;
    CHECK(error_over(dx, want, scale) < 1e-6);
    const auto unquantised = gemm_nt(exact(dy), exact(wt), tokens, in, out, exact_scale);
    CHECK(error_over(dx, unquantised, exact_scale) < 4e-2);
  }
  SECTION("weight gradient: dy and x per 128×1 tile along tokens, accumulated") {
    std::vector<float> dw(std::size_t(out * in), -0.25f);
    lin.wgrad(be, tokens, out, in, dy.data(), x.data(), dw.data());
    auto want = gemm_nt(fp8_view(be, dyt, out, tokens, false), fp8_view(be, xt, in, tokens, false), out, in, tokens, scale);
    for (auto& v : want) v -= 0.25;
    CHECK(error_over(dw, want, scale) < 1e-6);
    auto unquantised = gemm_nt(exact(dyt), exact(xt), out, in, tokens, exact_scale);
    for (auto& v : unquantised) v -= 0.25;
    CHECK(error_over(dw, unquantised, exact_scale) < 4e-2);
  }
  SECTION("a workspace too small, or none, is an error naming the GEMM") {
    dsx::linear_gemm<true> small;
    std::vector<float> y(std::size_t(tokens * out));
    CHECK_THROWS_WITH(small.fprop(be, tokens, out, in, x.data(), w.data(), y.data()),
                      Catch::Contains("no workspace") && Catch::Contains("forward GEMM of a Linear (260, 300)"));
    small.use({qa.data(), sa.data(), qb.data(), sb.data(), size.elems / 2, size.scales});
    CHECK_THROWS_WITH(small.wgrad(be, tokens, out, in, dy.data(), x.data(), y.data()),
                      Catch::Contains("weight gradient GEMM") && Catch::Contains("the workspace holds"));
  }
}

namespace {

// One dense and one MoE layer (with a shared expert), MTP depth 1; hidden, q_lora, the MoE experts'
// widths and eh_proj's input cross 128.
constexpr dsx::model_config fp8_cfg{
    .vocab = 96, .hidden = 144, .layers = 2, .dense_layers = 1, .dense_inter = 200,
    .mla = {.heads = 2, .q_lora = 136, .kv_lora = 64, .nope = 16, .rope = 8, .v = 16},
    .moe = {.routed = 4, .shared = 1, .top_k = 2, .groups = 1, .top_groups = 1, .score = dsx::score_fn::sigmoid,
            .norm_topk = true, .route_scale = 1.0, .bias = true, .inter = 160},
    .rope = {.theta = 10000.0},
    .rms_eps = 1e-6, .mtp_depth = 1, .max_positions = 64};

template <dsx::precision_policy P>
using model_t = dsx::transformer<fp8_cfg, P, host>;

std::vector<double> all_grads(auto& model) {
  std::vector<double> g;
  for (const auto& e : model.params().entries()) {
    if (!e.spec.trained() || e.spec.shared_copy()) continue;
    for (auto v : model.get_grad(e)) g.push_back(dsx::convert<double>(v));
  }
  return g;
}
double cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) ab += a[i] * b[i], aa += a[i] * a[i], bb += b[i] * b[i];
  return ab / std::sqrt(aa * bb);
}

std::vector<std::int32_t> sample_tokens(std::int64_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
  for (auto& v : ids) v = std::int32_t(rng() % fp8_cfg.vocab);
  return ids;
}

}  // namespace

TEST_CASE("FP8 model (precision::fp8_v3): loss and gradients track the bf16 model, and it trains as far",
          "[unit]") {
  host be;
  const std::int64_t batch = 2, seq = 24;
  model_t<dsx::precision::bf16_master> ref(be, batch, seq);
  model_t<dsx::precision::fp8_v3> fp8(be, batch, seq);
  dsx::init_weights(ref, 11, 0.05);
  for (const auto& e : ref.params().entries())
    if (!e.spec.shared_copy()) fp8.set_param(e, ref.get_param(e));
  const auto tokens = sample_tokens(batch * seq, 5);

  const double loss_ref = ref.forward(tokens, batch, seq), loss_fp8 = fp8.forward(tokens, batch, seq);
  ref.backward();
  fp8.backward();
  INFO("loss bf16 " << loss_ref << ", fp8 " << loss_fp8);
  CHECK(std::abs(loss_fp8 - loss_ref) / loss_ref < 1e-2);
  // E4M3 keeps 3 mantissa bits against bf16's 7, so every GEMM input moves by up to 2⁻⁴ of itself and
  // the gradients differ by more than the bf16 model's from f64 (1.5e-2 there): measured cosine 0.984
  // over all gradients, at least 0.966 for a tensor outside the routed experts and routers, and 0.89 to
  // 0.98 inside them, where noise flips some top-k choices (2026-11-23, this configuration and seed).
  const double cos_all = cosine(all_grads(fp8), all_grads(ref));
  INFO("cosine of all gradients " << cos_all);
  CHECK(cos_all > 0.97);
  for (const auto& e : ref.params().entries()) {
    if (!e.spec.trained() || e.spec.shared_copy()) continue;
    const bool routed = e.name.find(".experts.") != std::string::npos || e.name.find(".mlp.gate.") != std::string::npos;
    std::vector<double> a, b;
    for (auto v : fp8.get_grad(e)) a.push_back(dsx::convert<double>(v));
    for (auto v : ref.get_grad(e)) b.push_back(dsx::convert<double>(v));
    INFO(e.name);
    CHECK(cosine(a, b) > (routed ? 0.85 : 0.95));
  }

  // Five AdamW steps on one batch: both models fit it, the FP8 one as far as the bf16 one (measured: 6.21
  // → 0.620 against 6.20 → 0.599).
  dsx::adamw opt_ref(ref);
  dsx::adamw opt_fp8(fp8);
  double last_ref = 0, last_fp8 = 0;
  for (int step = 0; step < 5; ++step) {
    ref.zero_grad();
    fp8.zero_grad();
    last_ref = ref.forward(tokens, batch, seq);
    last_fp8 = fp8.forward(tokens, batch, seq);
    ref.backward();
    fp8.backward();
    opt_ref.step(3e-3);
    opt_fp8.step(3e-3);
  }
  INFO("after 5 steps: bf16 " << last_ref << ", fp8 " << last_fp8);
  CHECK(last_fp8 < 0.2 * loss_fp8);
  CHECK(std::abs(last_fp8 - last_ref) < 0.05 * (loss_ref - last_ref));
  // Checkpoints: "linear_dtype" tells an FP8 run from a bf16 one, whose storage types are the same.
  namespace fs = std::filesystem;
  const fs::path out = fs::temp_directory_path() / ("dsx-fp8-checkpoint-" + std::to_string(::getpid()));
  fs::remove_all(out);
  dsx::trainer_state state;
  state.step = state.updates = 5;
  dsx::save_checkpoint(out / "fp8", fp8, opt_fp8, state);
  dsx::save_checkpoint(out / "bf16", ref, opt_ref, state);
  CHECK_NOTHROW(dsx::load_checkpoint(out / "fp8" / "checkpoint", fp8, opt_fp8));
  CHECK_THROWS_WITH(dsx::load_checkpoint(out / "bf16" / "checkpoint", fp8, opt_fp8),
                    Catch::Contains("linear_dtype") && Catch::Contains("\"BF16\"") && Catch::Contains("F8_E4M3"));
  CHECK_THROWS_WITH(dsx::load_checkpoint(out / "fp8" / "checkpoint", ref, opt_ref), Catch::Contains("linear_dtype"));
  fs::remove_all(out);

  // Decoding runs the Linears in FP8 too.
  const std::vector<std::int32_t> prompt(tokens.begin(), tokens.begin() + 4);
  CHECK(fp8.generate_greedy(prompt, 1, 4, 3).size() == 3);
}
