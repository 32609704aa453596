// Section 4: one training step of the gpu_1b preset through dsx::transformer on the CUDA backend, with
// random weights (N(0, 0.02²) matrices, unit norm weights, zero routing bias) and random tokens: forward
// with the loss, backward, the global gradient norm, clipping to 1 and the dsx::adamw update (with
// precision::bf16_master: on the f32 master copy, rounded into the bf16 weights; it reads 2 + 16 and
// writes 2 + 12 bytes per parameter, 83 GB for 2.6 B parameters: about 30 ms at 3 TB/s).
//   tokens/s = batch · seq / median step time (host clock around the step, after synchronizing)
//   MFU = forward_flops(gpu_1b, seq).training() · batch · seq / step time / the measured bf16 ceiling,
//   i.e. 6 · (activated matmul parameters) · tokens + 3 · (causal attention FLOPs of the forward).
//
// Two precisions:
//   bf16 (the section "train"): precision::bf16_master: weights, activations and gradients stored in
//     bf16, f32 accumulation, f32 master weights and AdamW moments. (precision::bf16's f32 gradients are
//     not available to the transformer, which keeps weights and gradients in one storage type.)
//   f32 (the fallback "train-f32", run when the bf16 step fails): f32 storage throughout, GEMMs on the
//     tensor cores in TF32 (cuda_options::tf32).
// Both live in this translation unit, the only one of the program that includes the whole backend
// (all.cuh).

#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench.cuh"
#include "dsx/backend/cuda/all.cuh"
#include "dsx/config/counts.hpp"
#include "dsx/config/presets.hpp"
#include "dsx/model/transformer.hpp"
#include "dsx/optim/adamw.hpp"

namespace dsx::bench {

namespace {

constexpr model_config train_config = presets::gpu_1b;
constexpr double train_lr = 3e-4;  // any rate: the step's arithmetic does not depend on it

std::vector<std::string> train_plan_lines(const options& opt) {
  const auto f = forward_flops(train_config, opt.train_seq);
  const double tokens = double(opt.train_batch * opt.train_seq);
  return {
      strf("gpu_1b: %.3f B parameters, %.3f B activated per token; batch %lld × seq %lld = %.0f tokens",
           double(params_total(train_config)) / 1e9, double(params_activated(train_config)) / 1e9,
           (long long)opt.train_batch, (long long)opt.train_seq, tokens),
      strf("training FLOPs per step: %.1f TFLOP (matmul %.1f, attention %.1f)", double(f.training()) * tokens / 1e12,
           3.0 * double(f.matmul) * tokens / 1e12, 3.0 * double(f.attention) * tokens / 1e12),
      strf("1 warm-up step, then up to %d timed steps", opt.train_steps)};
}

template <precision_policy P>
void run_train(const section_context& ctx, bool tf32, const std::string& precision_label) {
  using model_t = transformer<train_config, P, cuda_backend>;
  using T = typename model_t::T;
  const auto& out = ctx.out;
  const auto& opt = ctx.opt;
  const std::int64_t batch = opt.train_batch, seq = opt.train_seq, tokens = batch * seq;
  cuda_backend be(backend::cuda_options{.device = opt.device, .tf32 = tf32});
  describe_device(ctx);
  out.text("train_precision", precision_label);

  const auto f = forward_flops(train_config, seq);
  const double step_flops = double(f.training()) * double(tokens);
  out.md(
      strf("`dsx::transformer<presets::gpu_1b, ...>` on the CUDA backend: %s. Forward with the "
           "cross-entropy loss, backward into the gradient buffer, gradient norm, clipping to 1 and the AdamW "
           "update (`dsx::adamw`, lr %.0e). Random weights (std 0.02, norm weights 1) and new random tokens every "
           "step.",
           precision_label.c_str(), train_lr));
  for (const auto& line : train_plan_lines(opt)) out.md("- " + line);

  std::size_t free0 = 0, total = 0;
  DSX_CUDA_CHECK(cudaMemGetInfo(&free0, &total));
  const auto built = clock_type::now();
  model_t model(be, batch, seq);
  adamw<model_t> optimizer(model);
  T* w = model.param_data();
  fill_normal(be, w, model.params().size(), 51, 0.0f, 0.02f);
  for (const auto& e : model.params().entries())
    if (e.spec.is_vector())
      fill_value(be, w + e.offset, e.spec.numel(), e.spec.kind == param_kind::router_bias ? 0.0f : 1.0f);
  // New random tokens for every step, as training reads new data: the same batch again would be learnt
  // within a few steps, and the routing (so the experts' row counts) would settle on it.
  std::vector<std::int32_t> ids(static_cast<std::size_t>(tokens));
  std::mt19937_64 rng(61);
  std::uniform_int_distribution<std::int32_t> pick(0, train_config.vocab - 1);
  const auto new_batch = [&] {
    for (auto& id : ids) id = pick(rng);
  };
  new_batch();
  be.synchronize();
  std::size_t free1 = 0;
  DSX_CUDA_CHECK(cudaMemGetInfo(&free1, &total));
  out.md(strf("- model and optimizer memory (weights, gradients, activation arena, master weights and moments as the "
              "policy has them; plan_memory: %s of state): %s; construction and initialisation %.1f s",
              gigabytes(double(plan_memory(train_config, P).total())).c_str(),
              gigabytes(double(free0 - free1)).c_str(),
              std::chrono::duration<double>(clock_type::now() - built).count()));

  auto seconds = [](clock_type::time_point a, clock_type::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  // The optimizer's part of a step: norm, clipping, update; returns the gradient norm.
  const auto update = [&] {
    const double norm = optimizer.grad_norm();
    optimizer.step(train_lr, adamw<model_t>::clip_scale(norm, 1.0));
    return norm;
  };
  // Warm-up: cuBLASLt plans, the backend's scratch growth, module loading.
  const auto w0 = clock_type::now();
  model.zero_grad();
  const double first_loss = model.forward(ids, batch, seq);
  model.backward();
  const double first_norm = update();
  be.synchronize();
  const double warm = seconds(w0, clock_type::now());
  out.md(strf("- warm-up step: %.2f s, loss %.4f (ln vocab = %.4f), gradient norm %.3g", warm, first_loss,
              std::log(double(train_config.vocab)), first_norm));
  out.log(strf("warm-up step %.2f s, loss %.4f", warm, first_loss));
  out.md("");
  out.md("| step | forward | backward | optimizer | step | tokens/s | TFLOP/s | MFU (of measured bf16 ceiling) | loss |");
  out.md("|---|---|---|---|---|---|---|---|---|");

  const double ceiling = ctx.ceil.bf16_tflops;
  std::vector<double> steps, forwards, backwards, updates;
  double last_loss = first_loss;
  for (int s = 0; s < opt.train_steps; ++s) {
    const double predicted = steps.empty() ? warm : median_of(steps);
    if (ctx.seconds_left() < 1.5 * predicted + 2) {
      out.md(strf("| %d more steps not run: out of time | | | | | | | | |", opt.train_steps - s));
      break;
    }
    model.zero_grad();
    new_batch();
    be.synchronize();
    const auto t0 = clock_type::now();
    last_loss = model.forward(ids, batch, seq);
    be.synchronize();
    const auto t1 = clock_type::now();
    model.backward();
    be.synchronize();
    const auto t2 = clock_type::now();
    update();  // synchronizes: the norm is a host value
    be.synchronize();
    const auto t3 = clock_type::now();
    forwards.push_back(seconds(t0, t1));
    backwards.push_back(seconds(t1, t2));
    updates.push_back(seconds(t2, t3));
    steps.push_back(seconds(t0, t3));
    const double tflops = step_flops / steps.back() / 1e12;
    out.md(strf("| %d | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.0f | %.0f | %s | %.4f |", s + 1,
                forwards.back() * 1e3, backwards.back() * 1e3, updates.back() * 1e3, steps.back() * 1e3,
                double(tokens) / steps.back(), tflops,
                ceiling > 0 ? strf("%.1f%%", 100 * tflops / ceiling).c_str() : "n/a", last_loss));
    out.log(strf("step %d: %.1f ms, %.0f tokens/s, %.0f TFLOP/s", s + 1, steps.back() * 1e3,
                 double(tokens) / steps.back(), tflops));
    // Running medians, so a section stopped at its time limit still reports its steps so far.
    const double med = median_of(steps);
    out.number("train_step_ms", med * 1e3);
    out.number("train_tokens_per_s", double(tokens) / med);
    out.number("train_tflops", step_flops / med / 1e12);
    if (ceiling > 0) out.number("train_mfu_pct", 100 * step_flops / med / 1e12 / ceiling);
  }
  require(!steps.empty(), "train: no timed step fits the time limit (warm-up took " + strf("%.1f", warm) + " s)");

  std::size_t free2 = 0;
  DSX_CUDA_CHECK(cudaMemGetInfo(&free2, &total));
  const std::int64_t bad = count_nonfinite(be, model.grad_data(), model.params().size());
  const bool ok = std::isfinite(first_loss) && std::isfinite(last_loss) && bad == 0;
  const double med = median_of(steps), tflops = step_flops / med / 1e12;
  out.md("");
  out.md(
      strf("**Median of %zu steps: %.1f ms (forward %.1f ms, backward %.1f ms, optimizer %.1f ms), %.0f tokens/s, "
           "%.0f TFLOP/s, MFU %s.** Gradients: %lld non-finite of %lld.",
           steps.size(), med * 1e3, median_of(forwards) * 1e3, median_of(backwards) * 1e3, median_of(updates) * 1e3,
           double(tokens) / med, tflops,
           ceiling > 0 ? strf("%.1f%% of the measured bf16 ceiling", 100 * tflops / ceiling).c_str() : "n/a",
           (long long)bad, (long long)model.params().size()));
  out.md(strf("Device memory in use after the timed steps (whole device): %s of %s.",
              gigabytes(double(total - free2)).c_str(), gigabytes(double(total)).c_str()));
  require(ok,
          strf("train: non-finite loss (%g, %g) or %lld non-finite gradients", first_loss, last_loss, (long long)bad));
}

}  // namespace

std::vector<std::string> describe_train_plan(const options& opt) { return train_plan_lines(opt); }

void run_train_bf16(const section_context& ctx) {
  run_train<dsx::precision::bf16_master>(
      ctx, false, "bf16 weights, activations and gradients, f32 accumulation, f32 master weights and AdamW moments");
}

void run_train_f32(const section_context& ctx) {
  run_train<precision::f32>(
      ctx, true, "f32 weights, activations, gradients and AdamW moments, TF32 tensor-core GEMMs (fallback)");
}

}  // namespace dsx::bench
