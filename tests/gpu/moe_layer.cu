// The seam: the DeepSeekMoE layer (layers/moe.hpp) is the same code on both backends. Its forward and
// backward run with a `cuda&` on device memory and with a `host&` on host memory from identical inputs:
// the routing (expert ids and offsets) must be equal, the output, the input gradient, every accumulated
// (+=) parameter gradient and, where it is on, the sequence-wise balance loss close (gpu_test.cuh's
// tolerances, f32 against the host in f64).
// Token rows are drawn with routing margins (moe_routing.cuh) wide enough that the router logits'
// rounding differences (GEMM summation order; in bf16 a logit may round to its neighbour, 2^-8 relative)
// cannot change the selection.
#include "gpu_test.cuh"
#include "moe_routing.cuh"

#include "dsx/backend/cuda/all.cuh"
#include "dsx/backend/host/all.hpp"
#include "dsx/config/presets.hpp"
#include "dsx/core/arena.hpp"
#include "dsx/layers/moe.hpp"

using namespace dsx::test::gpu;
using Catch::Matchers::Contains;
using dsx::bf16;
using dsx::score_fn;
using dsx::backend::host;
namespace {

// A complete model configuration around an MoE block (the layer validates the whole configuration).
dsx::model_config layer_config(const dsx::moe_config& m, int hidden) {
  return {.vocab = 16, .hidden = hidden, .layers = 2, .dense_layers = 1, .dense_inter = 8,
          .mla = {.heads = 2, .q_lora = 0, .kv_lora = 4, .nope = 4, .rope = 2, .v = 4},
          .moe = m, .max_positions = 16};
}

// Small V3: sigmoid gate with the correction bias, groups scored by top-2 sums, normalised weights.
const dsx::model_config v3_like = layer_config({.routed = 16, .shared = 1, .top_k = 4, .groups = 4, .top_groups = 2,
                                                .score = score_fn::sigmoid, .norm_topk = true, .route_scale = 2.5,
                                                .bias = true, .inter = 32},
                                               64);
// Small V2: softmax gate, groups scored by their best expert, no bias, unnormalised scaled weights; odd
// widths take the kernels' scalar paths.
const dsx::model_config v2_like = layer_config({.routed = 24, .shared = 2, .top_k = 4, .groups = 4, .top_groups = 2,
                                                .score = score_fn::softmax, .norm_topk = false, .route_scale = 16.0,
                                                .bias = false, .inter = 20},
                                               40);

// The layer's inputs in T.
template <class T>
struct layer_inputs {
  std::vector<T> x, router, bias, experts, shared_gate_up, shared_down, dy;
  std::vector<T> g_router, g_experts, g_shared_gate_up, g_shared_down;  // initial gradients (backward adds)
};

// Random weights; x rows redrawn until each token's routing margin is at least `margin`.
template <class T>
layer_inputs<T> draw(const dsx::model_config& c, std::int64_t tokens, std::uint64_t seed, double margin) {
  const std::int64_t d = c.hidden, e = c.moe.routed, inter = c.moe.inter, si = c.shared_inter();
  layer_inputs<T> in;
  in.router = random_values<T>(std::size_t(e * d), seed, 1.5 / std::sqrt(double(d)));  // logits ~ N(0, 1.5²)
  in.bias = c.moe.bias ? random_values<T>(std::size_t(e), seed + 1, 0.1) : std::vector<T>{};
  in.experts = random_values<T>(std::size_t(e * 3 * inter * d), seed + 2, 0.15);
  in.shared_gate_up = random_values<T>(std::size_t(2 * si * d), seed + 3, 0.15);
  in.shared_down = random_values<T>(std::size_t(d * si), seed + 4, 0.15);
  in.dy = random_values<T>(std::size_t(tokens * d), seed + 5);
  in.g_router = random_values<T>(in.router.size(), seed + 6, 0.1);
  in.g_experts = random_values<T>(in.experts.size(), seed + 7, 0.1);
  in.g_shared_gate_up = random_values<T>(in.shared_gate_up.size(), seed + 8, 0.1);
  in.g_shared_down = random_values<T>(in.shared_down.size(), seed + 9, 0.1);

  const dsx::route_params p = dsx::route_params_of(c.moe);
  std::vector<double> bias(in.bias.size()), logits(static_cast<std::size_t>(e));
  for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = to_double(in.bias[i]);
  in.x.resize(std::size_t(tokens * d));
  std::uint64_t row_seed = seed + 100;
  for (std::int64_t t = 0; t < tokens; ++t)
    for (int attempt = 0;; ++attempt) {
      REQUIRE(attempt < 1000);
      const auto row = random_values<T>(std::size_t(d), ++row_seed);
      for (std::int64_t j = 0; j < e; ++j) {
        double sum = 0;
        for (std::int64_t i = 0; i < d; ++i) sum += to_double(row[std::size_t(i)]) * to_double(in.router[std::size_t(j * d + i)]);
        logits[std::size_t(j)] = sum;
      }
      if (routing_margin(p, logits.data(), p.bias ? bias.data() : nullptr) >= margin) {
        std::copy(row.begin(), row.end(), in.x.begin() + t * d);
        break;
      }
    }
  return in;
}

// Forward and backward of one layer on one backend; results in host vectors.
template <class U>
struct layer_outputs {
  std::vector<U> y, dx, g_router, g_experts, g_shared_gate_up, g_shared_down;
  std::vector<std::int32_t> indices, offsets;
  double balance_loss = 0;
};

// The sequence-wise balance loss: weight α (0: off) over `sequences` equal sequences of the tokens.
struct balance_setting {
  double alpha = 0;
  std::int64_t sequences = 1;
};

// Host memory for the host backend, device memory for cuda: the layer code is the same.
template <class U, class Backend>
layer_outputs<U> run_layer(Backend& be, const dsx::model_config& c, const layer_inputs<U>& in, std::int64_t tokens,
                           balance_setting balance = {}) {
  dsx::moe<U> layer(c);
  if (balance.alpha > 0) {
    layer.set_balance_weight(balance.alpha);
    layer.set_sequences(balance.sequences, tokens / balance.sequences);
  }
  dsx::arena_plan plan;
  layer.plan(plan, tokens);
  dsx::arena<Backend> activations(be, plan.bytes());
  layer.bind(activations.data(), plan);
  const std::size_t scratch_bytes = layer.scratch_bytes(tokens);
  auto* scratch = static_cast<std::byte*>(be.allocate_bytes(scratch_bytes));
  std::vector<void*> owned{scratch};
  // A copy of `v` in the backend's memory.
  auto put = [&](const std::vector<U>& v) {
    auto* p = static_cast<U*>(be.allocate_bytes(v.size() * sizeof(U)));
    be.upload(p, v.data(), v.size() * sizeof(U));
    owned.push_back(p);
    return p;
  };
  auto get = [&](const U* p, std::size_t n) {
    std::vector<U> v(n);
    be.download(v.data(), p, n * sizeof(U));
    return v;
  };
  const std::size_t values = std::size_t(tokens * c.hidden);
  U* x = put(in.x);
  U* y = put(nan_values<U>(values));
  U* dx = put(nan_values<U>(values));
  const dsx::moe_weights<U> w{put(in.router), in.bias.empty() ? nullptr : put(in.bias), put(in.experts),
                              put(in.shared_gate_up), put(in.shared_down)};
  const dsx::moe_grads<U> g{put(in.g_router), put(in.g_experts), put(in.g_shared_gate_up), put(in.g_shared_down)};
  layer_outputs<U> out;
  try {
    layer.forward(be, w, x, y, tokens, scratch);
    out.balance_loss = layer.balance_loss(be);
    layer.backward(be, w, g, x, put(in.dy), dx, tokens, scratch);
    out.y = get(y, values);
    out.dx = get(dx, values);
    out.g_router = get(g.router, in.g_router.size());
    out.g_experts = get(g.experts, in.g_experts.size());
    out.g_shared_gate_up = get(g.shared_gate_up, in.g_shared_gate_up.size());
    out.g_shared_down = get(g.shared_down, in.g_shared_down.size());
    out.indices.resize(std::size_t(tokens * c.moe.top_k));
    be.download(out.indices.data(), layer.topk_indices(), out.indices.size() * sizeof(std::int32_t));
    out.offsets.resize(std::size_t(c.moe.routed) + 1);
    be.download(out.offsets.data(), layer.expert_offsets(), out.offsets.size() * sizeof(std::int32_t));
  } catch (...) {
    for (void* p : owned) be.free_bytes(p);
    throw;
  }
  for (void* p : owned) be.free_bytes(p);
  return out;
}

template <class T>
void check_layer(const dsx::model_config& c, std::int64_t tokens, std::uint64_t seed, balance_setting balance = {}) {
  using R = ref_t<T>;
  INFO("experts=" << c.moe.routed << " top_k=" << c.moe.top_k << " hidden=" << c.hidden << " tokens=" << tokens
                  << " balance alpha=" << balance.alpha << " sequences=" << balance.sequences);
  const double margin = std::is_same_v<T, bf16> ? 3e-2 : 1e-4;
  const layer_inputs<T> in = draw<T>(c, tokens, seed, margin);
  const layer_inputs<R> rin{convert_all<R>(in.x),           convert_all<R>(in.router),
                            convert_all<R>(in.bias),        convert_all<R>(in.experts),
                            convert_all<R>(in.shared_gate_up), convert_all<R>(in.shared_down),
                            convert_all<R>(in.dy),          convert_all<R>(in.g_router),
                            convert_all<R>(in.g_experts),   convert_all<R>(in.g_shared_gate_up),
                            convert_all<R>(in.g_shared_down)};
  cuda_backend be;
  host hb;
  const layer_outputs<T> gpu = run_layer<T>(be, c, in, tokens, balance);
  const layer_outputs<R> ref = run_layer<R>(hb, c, rin, tokens, balance);
  CHECK(gpu.indices == ref.indices);
  CHECK(std::abs(gpu.balance_loss - ref.balance_loss) <= tolerance<T> * std::abs(ref.balance_loss));
  if (balance.alpha > 0) CHECK(ref.balance_loss > 0);
  CHECK(gpu.offsets == ref.offsets);
  check_close("y", gpu.y, ref.y, tolerance<T>);
  check_close("dx", gpu.dx, ref.dx, tolerance<T>);
  check_close("d router", gpu.g_router, ref.g_router, tolerance<T>);
  check_close("d experts", gpu.g_experts, ref.g_experts, tolerance<T>);
  check_close("d shared gate_up", gpu.g_shared_gate_up, ref.g_shared_gate_up, tolerance<T>);
  check_close("d shared down", gpu.g_shared_down, ref.g_shared_down, tolerance<T>);
}

}  // namespace

TEMPLATE_TEST_CASE("moe layer: forward and backward on cuda equal the host backend", "[gpu]", float, double, bf16) {
  check_layer<TestType>(v3_like, 50, 1);
  check_layer<TestType>(v2_like, 37, 2);
  check_layer<TestType>(dsx::presets::tiny_v3, 9, 3);
  check_layer<TestType>(dsx::presets::tiny_v3, 1, 4);
  // With the sequence-wise balance loss (a large α, so that its gradient is far above rounding).
  check_layer<TestType>(v3_like, 48, 5, {0.1, 4});
  check_layer<TestType>(v2_like, 36, 6, {0.1, 1});
}

TEST_CASE("moe layer on cuda: a non-finite router score fails the forward, as on the host", "[gpu]") {
  const std::int64_t tokens = 6;
  layer_inputs<float> in = draw<float>(v3_like, tokens, 5, 1e-4);
  in.x[2 * 64 + 7] = std::numeric_limits<float>::quiet_NaN();  // token 2
  host hb;
  CHECK_THROWS_WITH(run_layer<float>(hb, v3_like, in, tokens), Contains("non-finite router score"));
  cuda_backend be;
  CHECK_THROWS_WITH(run_layer<float>(be, v3_like, in, tokens),
                    Contains("non-finite router score") && Contains("assignment 8"));
}
