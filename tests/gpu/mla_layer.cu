// The seam for attention: the MLA layer (layers/mla.hpp) is the same code on both backends. Its training
// forward and backward (per-head K and V, flash-style attention) and its decoding through the latent
// cache (absorbed form, prompt chunk then single tokens and chunks) run with a `cuda&` on device memory
// and with a `host&` on host memory from identical inputs; outputs, the input gradient, the accumulated
// (+=) parameter gradients and the cache contents must agree. Two configurations, both with YaRN: one
// with a query LoRA and widths that allow 16-byte loads, one without and with odd widths.
#include "gpu_test.cuh"

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <string>

#include "dsx/backend/cuda/all.cuh"
#include "dsx/backend/host/all.hpp"
#include "dsx/core/arena.hpp"
#include "dsx/layers/mla.hpp"
#include "dsx/layers/rope.hpp"

using namespace dsx::test::gpu;
using dsx::accum_t;
using dsx::bf16;
using dsx::backend::host;
namespace {

dsx::model_config aligned_config() {
  dsx::model_config c{.vocab = 8, .hidden = 48, .layers = 1, .dense_layers = 1, .dense_inter = 8,
                      .mla = {.heads = 3, .q_lora = 24, .kv_lora = 32, .nope = 16, .rope = 8, .v = 16},
                      .rms_eps = 1e-6, .max_positions = 64};
  c.rope.yarn = {.factor = 4.0, .original_max_positions = 16, .beta_fast = 32.0, .beta_slow = 1.0, .mscale = 1.0,
                 .mscale_all_dim = 0.5};
  return c;
}

dsx::model_config odd_config() {
  dsx::model_config c{.vocab = 8, .hidden = 20, .layers = 1, .dense_layers = 1, .dense_inter = 8,
                      .mla = {.heads = 4, .q_lora = 0, .kv_lora = 6, .nope = 4, .rope = 4, .v = 5},
                      .rms_eps = 1e-6, .max_positions = 64};
  c.rope.yarn = {.factor = 4.0, .original_max_positions = 4, .beta_fast = 32.0, .beta_slow = 1.0, .mscale = 1.0,
                 .mscale_all_dim = 0.5};
  return c;
}

// The layer's eight tensors in one storage type, in mla_weights' order; the host and the GPU get the same
// values. Tensors the configuration does not use are empty.
enum tensor_id : std::size_t { q_proj, q_a_proj, q_a_norm, q_b_proj, kv_a_proj, kv_a_norm, kv_b_proj, o_proj };
constexpr const char* tensor_names[] = {"q_proj",    "q_a_proj",  "q_a_norm",  "q_b_proj",
                                        "kv_a_proj", "kv_a_norm", "kv_b_proj", "o_proj"};

template <class T>
using mla_tensors = std::array<std::vector<T>, 8>;

// Random weights (norm weights near 1), or with grad_scale > 0 random starting gradients of that scale
// (backward must add to them).
template <class T>
mla_tensors<T> random_tensors(const dsx::model_config& c, std::uint64_t seed, double grad_scale = 0) {
  const std::int64_t d = c.hidden, h = c.mla.heads, qk = c.mla.qk_head();
  mla_tensors<T> t;
  auto linear = [&](std::int64_t out, std::int64_t in) {
    return random_values<T>(std::size_t(out * in), ++seed, grad_scale > 0 ? grad_scale : 1.0 / std::sqrt(double(in)));
  };
  auto norm = [&](std::int64_t dim) {
    auto w = random_values<T>(std::size_t(dim), ++seed, grad_scale > 0 ? grad_scale : 0.2);
    if (grad_scale == 0)
      for (auto& x : w) x = from_double<T>(to_double(x) + 1.0);
    return w;
  };
  if (c.mla.q_lora > 0) {
    t[q_a_proj] = linear(c.mla.q_lora, d);
    t[q_a_norm] = norm(c.mla.q_lora);
    t[q_b_proj] = linear(h * qk, c.mla.q_lora);
  } else {
    t[q_proj] = linear(h * qk, d);
  }
  t[kv_a_proj] = linear(c.mla.kv_lora + c.mla.rope, d);
  t[kv_a_norm] = norm(c.mla.kv_lora);
  t[kv_b_proj] = linear(h * (c.mla.nope + c.mla.v), c.mla.kv_lora);
  t[o_proj] = linear(d, h * c.mla.v);
  return t;
}

template <class R, class T>
mla_tensors<R> convert_tensors(const mla_tensors<T>& t) {
  mla_tensors<R> r;
  for (std::size_t i = 0; i < t.size(); ++i) r[i] = convert_all<R>(t[i]);
  return r;
}

// Pointers into a tensor set (null for unused tensors), as weights or as gradients.
template <class T>
std::array<T*, 8> pointers(mla_tensors<T>& t) {
  std::array<T*, 8> p;
  for (std::size_t i = 0; i < t.size(); ++i) p[i] = t[i].empty() ? nullptr : t[i].data();
  return p;
}
template <class T>
dsx::mla_weights<T> as_weights(const std::array<T*, 8>& p) {
  return {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]};
}
template <class T>
dsx::mla_grads<T> as_grads(const std::array<T*, 8>& p) {
  return {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]};
}

// Device copies of a tensor set.
template <class T>
struct device_tensors {
  std::vector<std::unique_ptr<device_array<T>>> arrays;
  device_tensors(cuda_backend& be, const mla_tensors<T>& t) {
    for (const auto& v : t) arrays.push_back(std::make_unique<device_array<T>>(be, v));
  }
  std::array<T*, 8> pointers() const {
    std::array<T*, 8> p;
    for (std::size_t i = 0; i < p.size(); ++i) p[i] = arrays[i]->size() ? arrays[i]->get() : nullptr;
    return p;
  }
  mla_tensors<T> download() const {
    mla_tensors<T> t;
    for (std::size_t i = 0; i < t.size(); ++i) t[i] = arrays[i]->download();
    return t;
  }
};

template <class T>
void check_layer(const dsx::model_config& cfg, std::uint64_t seed) {
  using R = ref_t<T>;
  using A = accum_t<T>;
  using RA = accum_t<R>;
  INFO("hidden=" << cfg.hidden << " heads=" << cfg.mla.heads << " q_lora=" << cfg.mla.q_lora);
  const std::int64_t batch = 2, seq = 9, d = cfg.hidden, kv_lora = cfg.mla.kv_lora, rope = cfg.mla.rope;
  const std::int64_t cap = seq + 2;
  const std::size_t n_x = std::size_t(batch * seq * d);

  const auto w = random_tensors<T>(cfg, seed);
  const auto g0 = random_tensors<T>(cfg, seed + 100, 0.1);
  const auto x = random_values<T>(n_x, seed + 200), dy = random_values<T>(n_x, seed + 201);
  auto rw = convert_tensors<R>(w), rg = convert_tensors<R>(g0);
  const auto rx = convert_all<R>(x), rdy = convert_all<R>(dy);
  const auto table = dsx::make_rope_table<A>(cfg, int(cap));
  const auto rtable = dsx::make_rope_table<RA>(cfg, int(cap));

  // GPU: activations in an arena of device memory, weights, gradients, tables and scratch on the device.
  cuda_backend be;
  dsx::mla<T> layer(cfg);
  dsx::arena_plan plan;
  layer.plan(plan, batch, seq);
  dsx::arena<cuda_backend> act(be, plan.bytes());
  layer.bind(act.data(), plan);
  device_array<std::byte> scratch(be, layer.scratch_bytes(batch, seq));
  const device_tensors<T> dw(be, w), dg(be, g0);
  device_array<A> dcos(be, table.cos), dsin(be, table.sin);
  device_array<T> dx_in(be, x), ddy(be, dy), dy_out(be, nan_values<T>(n_x)), ddx(be, nan_values<T>(n_x));
  const auto w_dev = as_weights(dw.pointers());
  layer.forward(be, w_dev, dx_in.get(), dy_out.get(), batch, seq, dcos.get(), dsin.get(), scratch.get());
  layer.backward(be, w_dev, as_grads(dg.pointers()), dx_in.get(), ddy.get(), ddx.get(), batch, seq, dcos.get(),
                 dsin.get(), scratch.get());

  // Host: the same layer code in the reference type.
  host hb;
  dsx::mla<R> ref(cfg);
  dsx::arena_plan ref_plan;
  ref.plan(ref_plan, batch, seq);
  dsx::arena<host> ref_act(hb, ref_plan.bytes());
  ref.bind(ref_act.data(), ref_plan);
  std::vector<std::byte> ref_scratch(ref.scratch_bytes(batch, seq));
  auto ry = nan_values<R>(n_x), rdx = nan_values<R>(n_x);
  const auto w_ref = as_weights(pointers(rw));
  ref.forward(hb, w_ref, rx.data(), ry.data(), batch, seq, rtable.cos.data(), rtable.sin.data(), ref_scratch.data());
  ref.backward(hb, w_ref, as_grads(pointers(rg)), rx.data(), rdy.data(), rdx.data(), batch, seq, rtable.cos.data(),
               rtable.sin.data(), ref_scratch.data());

  check_close("forward y", dy_out.download(), ry, tolerance<T>);
  check_close("backward dx", ddx.download(), rdx, tolerance<T>);
  const auto g = dg.download();
  for (std::size_t i = 0; i < g.size(); ++i)
    check_close(std::string("gradient of ") + tensor_names[i], g[i], rg[i], tolerance<T>);

  // Decoding the same tokens: a prompt chunk, single tokens, a chunk. Caches start NaN on both sides, so
  // the final comparison also checks that nothing past the decoded positions was written.
  device_array<T> dcache_c(be, nan_values<T>(std::size_t(batch * cap * kv_lora)));
  device_array<T> dcache_pe(be, nan_values<T>(std::size_t(batch * cap * rope)));
  dsx::mla_cache<T> cache{dcache_c.get(), dcache_pe.get(), cap};
  auto rcache_c = nan_values<R>(std::size_t(batch * cap * kv_lora));
  auto rcache_pe = nan_values<R>(std::size_t(batch * cap * rope));
  dsx::mla_cache<R> rcache{rcache_c.data(), rcache_pe.data(), cap};
  std::int64_t start = 0;
  for (const std::int64_t n : {4, 1, 1, 3}) {
    INFO("decoding positions " << start << ".." << start + n - 1);
    std::vector<T> xs(std::size_t(batch * n * d));  // (batch, n, hidden)
    for (std::int64_t b = 0; b < batch; ++b)
      std::copy_n(x.begin() + (b * seq + start) * d, n * d, xs.begin() + b * n * d);
    const auto rxs = convert_all<R>(xs);
    device_array<T> dxs(be, xs), dys(be, nan_values<T>(xs.size()));
    device_array<std::byte> dscratch(be, layer.decode_scratch_bytes(batch, n));
    layer.decode(be, w_dev, dxs.get(), dys.get(), batch, n, start, cache, dcos.get(), dsin.get(),
                 dscratch.get());
    auto rys = nan_values<R>(xs.size());
    std::vector<std::byte> rscratch(ref.decode_scratch_bytes(batch, n));
    ref.decode(hb, w_ref, rxs.data(), rys.data(), batch, n, start, rcache, rtable.cos.data(),
               rtable.sin.data(), rscratch.data());
    check_close("decode y", dys.download(), rys, tolerance<T>);
    start += n;
  }
  check_close("cache c_kv", dcache_c.download(), rcache_c, tolerance<T>);
  check_close("cache k_pe", dcache_pe.download(), rcache_pe, tolerance<T>);
}

}  // namespace

TEMPLATE_TEST_CASE("mla layer: forward, backward and decode on cuda equal the host backend", "[gpu]", float, double,
                   bf16) {
  check_layer<TestType>(aligned_config(), 1);
  check_layer<TestType>(odd_config(), 31);
}
