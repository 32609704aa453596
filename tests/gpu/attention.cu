// The attention primitives on the GPU (backend/cuda/attention.cuh) against the host backend: the fused
// causal forward (o and lse), the flash-style backward (dq, dk, dv from o and lse), MLA's absorbed decode
// over the latent cache, and the three gathers around them. Shapes include a single token, lengths that
// are not multiples of the tiles (7, 129, 300), one to sixteen heads, head dimensions from 12 to 192/128,
// odd ones (scalar loads) and one above 128 for the values (the largest buckets). Outputs start as NaN,
// so an element a kernel does not write fails; every kernel runs twice and must give the same bits.
#include "gpu_test.cuh"

#include <cmath>

#include "dsx/backend/cuda/attention.cuh"
#include "dsx/backend/host/attention.hpp"

using namespace dsx::test::gpu;
using dsx::accum_t;
using dsx::bf16;
using dsx::backend::host;
namespace {

struct attention_case {
  std::int64_t batch, seq, heads, qk, v;
};

constexpr attention_case attention_cases[] = {
    {1, 1, 1, 12, 12},     // one token: the softmax over one key
    {2, 7, 3, 12, 12},     // less than a tile
    {1, 129, 3, 48, 32},   // a partial last tile of queries and keys
    {2, 300, 1, 48, 32},   // several tiles each way
    {1, 300, 3, 192, 128}, // MLA's per-head dims at DeepSeek-V3 size
    {1, 129, 16, 192, 128},
    {2, 37, 3, 13, 7},     // odd dims: rows are not 16-byte aligned, scalar loads
    {1, 65, 2, 64, 64},    // exactly the smallest bucket
    {1, 70, 2, 130, 200},  // values above 128: the largest buckets of every pass
};

template <class T>
void check_attention(cuda_backend& be, const attention_case& ac, std::uint64_t seed) {
  using R = ref_t<T>;
  using A = accum_t<T>;
  using RA = accum_t<R>;
  const auto [batch, seq, heads, qk, v_dim] = ac;
  INFO("batch=" << batch << " seq=" << seq << " heads=" << heads << " qk=" << qk << " v=" << v_dim);
  const std::size_t n_qk = std::size_t(batch * seq * heads * qk), n_v = std::size_t(batch * seq * heads * v_dim);
  const std::size_t n_lse = std::size_t(batch * heads * seq);
  const double scale = 1.0 / std::sqrt(double(qk));
  const auto q = random_values<T>(n_qk, seed), k = random_values<T>(n_qk, seed + 1);
  const auto v = random_values<T>(n_v, seed + 2), dout = random_values<T>(n_v, seed + 3);
  const auto rq = convert_all<R>(q), rk = convert_all<R>(k), rv = convert_all<R>(v), rdout = convert_all<R>(dout);
  host hb;

  // Forward.
  device_array<T> dq_in(be, q), dk_in(be, k), dv_in(be, v), ddout(be, dout);
  auto forward = [&] {
    device_array<T> o(be, nan_values<T>(n_v));
    device_array<A> lse(be, nan_values<A>(n_lse));
    attention_forward(be, o.get(), lse.get(), dq_in.get(), dk_in.get(), dv_in.get(), batch, seq, heads, qk, v_dim,
                      scale);
    return std::make_pair(o.download(), lse.download());
  };
  const auto [o, lse] = forward();
  auto ro = nan_values<R>(n_v);
  auto rlse = nan_values<RA>(n_lse);
  attention_forward(hb, ro.data(), rlse.data(), rq.data(), rk.data(), rv.data(), batch, seq, heads, qk, v_dim, scale);
  check_close("o", o, ro, tolerance<T>);
  check_close("lse", lse, rlse, tolerance<T>);
  const auto [o2, lse2] = forward();
  CHECK(same_bits(o, o2));
  CHECK(same_bits(lse, lse2));

  // Backward from the reference o and lse stored in the GPU's types; the host gets the same values.
  const auto o_t = convert_all<T>(ro);
  const auto lse_a = convert_all<A>(rlse);
  const auto ro_t = convert_all<R>(o_t);
  const auto rlse_a = convert_all<RA>(lse_a);
  device_array<T> do_in(be, o_t);
  device_array<A> dlse_in(be, lse_a);
  struct grads {
    std::vector<T> dq, dk, dv;
  };
  auto backward = [&] {
    device_array<T> dq(be, nan_values<T>(n_qk)), dk(be, nan_values<T>(n_qk)), dv(be, nan_values<T>(n_v));
    attention_backward(be, dq.get(), dk.get(), dv.get(), ddout.get(), dq_in.get(), dk_in.get(), dv_in.get(),
                       do_in.get(), dlse_in.get(), batch, seq, heads, qk, v_dim, scale);
    return grads{dq.download(), dk.download(), dv.download()};
  };
  const grads g = backward();
  auto rdq = nan_values<R>(n_qk), rdk = nan_values<R>(n_qk), rdv = nan_values<R>(n_v);
  attention_backward(hb, rdq.data(), rdk.data(), rdv.data(), rdout.data(), rq.data(), rk.data(), rv.data(),
                     ro_t.data(), rlse_a.data(), batch, seq, heads, qk, v_dim, scale);
  if (seq == 1) {
    // One key: P = 1 and dS = dO·v − dO·o = 0 exactly, so the true dq and dk vanish and both backends
    // return rounding residue of the two dot products; a relative comparison of residues means nothing.
    // The residue must stay below the tolerance times the size of the terms that cancel.
    auto max_abs = [](const auto& x) {
      double m = 0;
      for (const auto& e : x) m = std::max(m, std::abs(to_double(e)));
      return m;
    };
    const double terms = scale * max_abs(rdout) * max_abs(rv) * double(v_dim) * std::max(max_abs(rq), max_abs(rk));
    INFO("seq 1: max |dq| " << max_abs(convert_all<R>(g.dq)) << ", max |dk| " << max_abs(convert_all<R>(g.dk))
                            << ", cancelled terms " << terms);
    CHECK(max_abs(convert_all<R>(g.dq)) <= tolerance<T> * terms);
    CHECK(max_abs(convert_all<R>(g.dk)) <= tolerance<T> * terms);
  } else {
    check_close("dq", g.dq, rdq, tolerance<T>);
    check_close("dk", g.dk, rdk, tolerance<T>);
  }
  check_close("dv", g.dv, rdv, tolerance<T>);
  const grads g2 = backward();
  CHECK(same_bits(g.dq, g2.dq));
  CHECK(same_bits(g.dk, g2.dk));
  CHECK(same_bits(g.dv, g2.dv));
}

struct decode_case {
  std::int64_t batch, heads, kv_lora, rope, start_pos, new_tokens;
};

// Decoding one token or a chunk at start_pos: the first prefill chunk, single tokens after a prompt,
// chunks after a prompt, odd widths (scalar loads), and caches long enough to be split into several key
// ranges (one where the first rows of a chunk see nothing of the later ranges), up to DeepSeek-V3's
// kv_lora 512 / rope 64 with 16 and 128 heads. bf16 takes the tensor-core kernel (mla_decode_mma.cuh)
// at kv_lora 64, 128, 256 and 512; the last three cases are its edges: 65 rows (the second row block
// holds one) whose last positions fall in two key tiles, V3's shape over 701 positions in five key
// ranges, and no rope columns.
constexpr decode_case decode_cases[] = {
    {2, 3, 16, 4, 0, 5},      {2, 3, 16, 4, 5, 1},     {1, 3, 6, 4, 7, 4},      {3, 1, 32, 8, 40, 3},
    {1, 16, 64, 16, 290, 3},  {1, 1, 64, 16, 0, 300},  {1, 16, 512, 64, 1000, 2}, {1, 128, 512, 64, 300, 1},
    {2, 16, 128, 32, 129, 7}, {2, 5, 256, 32, 60, 13}, {3, 128, 512, 64, 700, 1}, {1, 3, 64, 0, 40, 30},
};

template <class T>
void check_decode(cuda_backend& be, const decode_case& dc, std::uint64_t seed) {
  using R = ref_t<T>;
  const auto [batch, heads, kv_lora, rope, start_pos, new_tokens] = dc;
  const std::int64_t end = start_pos + new_tokens, cap = end + 3;
  INFO("batch=" << batch << " heads=" << heads << " kv_lora=" << kv_lora << " rope=" << rope
                << " start_pos=" << start_pos << " new_tokens=" << new_tokens);
  const double scale = 1.0 / std::sqrt(double(kv_lora + rope));
  const std::size_t rows = std::size_t(batch * new_tokens * heads);
  const auto q_lat = random_values<T>(rows * kv_lora, seed), q_pe = random_values<T>(rows * rope, seed + 1);
  // Cache positions at and past `end` hold NaN: nothing may read them.
  auto c_kv = random_values<T>(std::size_t(batch * cap * kv_lora), seed + 2);
  auto k_pe = random_values<T>(std::size_t(batch * cap * rope), seed + 3);
  const T nan = nan_values<T>(1)[0];
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t t = end; t < cap; ++t) {
      std::fill_n(c_kv.begin() + (b * cap + t) * kv_lora, kv_lora, nan);
      std::fill_n(k_pe.begin() + (b * cap + t) * rope, rope, nan);
    }
  device_array<T> dq_lat(be, q_lat), dq_pe(be, q_pe), dc_kv(be, c_kv), dk_pe(be, k_pe);
  auto decode = [&] {
    device_array<T> o(be, nan_values<T>(rows * kv_lora));
    mla_decode_attention(be, o.get(), dq_lat.get(), dq_pe.get(), dc_kv.get(), dk_pe.get(), batch, new_tokens, heads,
                         kv_lora, rope, cap, start_pos, scale);
    return o.download();
  };
  const auto o = decode();
  host hb;
  const auto rq_lat = convert_all<R>(q_lat), rq_pe = convert_all<R>(q_pe), rc_kv = convert_all<R>(c_kv),
             rk_pe = convert_all<R>(k_pe);
  auto ro = nan_values<R>(rows * kv_lora);
  mla_decode_attention(hb, ro.data(), rq_lat.data(), rq_pe.data(), rc_kv.data(), rk_pe.data(), batch, new_tokens,
                       heads, kv_lora, rope, cap, start_pos, scale);
  check_close("o_lat", o, ro, tolerance<T>);
  CHECK(same_bits(o, decode()));
}

// The gathers are copies and one ordered sum: the GPU must give the host's bits in the same type.
template <class T>
void check_gathers(cuda_backend& be, std::int64_t tokens, std::int64_t heads, std::int64_t kv_lora, std::int64_t nope,
                   std::int64_t rope, std::int64_t v_dim, std::uint64_t seed) {
  INFO("tokens=" << tokens << " heads=" << heads << " kv_lora=" << kv_lora << " nope=" << nope << " rope=" << rope
                 << " v=" << v_dim);
  host hb;
  const std::int64_t lat = kv_lora + rope, qk = nope + rope, kv_row = nope + v_dim;
  const std::size_t n_k = std::size_t(tokens * heads * qk), n_v = std::size_t(tokens * heads * v_dim);

  // mla_expand_kv: k_pe is the tail of the (tokens, kv_lora + rope) latent, as in the layer.
  const auto kv = random_values<T>(std::size_t(tokens * heads * kv_row), seed);
  const auto latent = random_values<T>(std::size_t(tokens * lat), seed + 1);
  device_array<T> dkv_in(be, kv), dlat(be, latent), dk(be, nan_values<T>(n_k)), dv(be, nan_values<T>(n_v));
  mla_expand_kv(be, dk.get(), dv.get(), dkv_in.get(), dlat.get() + kv_lora, lat, tokens, heads, nope, rope, v_dim);
  auto rk = nan_values<T>(n_k), rv = nan_values<T>(n_v);
  mla_expand_kv(hb, rk.data(), rv.data(), kv.data(), latent.data() + kv_lora, lat, tokens, heads, nope, rope, v_dim);
  CHECK(same_bits(dk.download(), rk));
  CHECK(same_bits(dv.download(), rv));

  // mla_expand_kv_backward: d_pe into the tail of a latent-gradient buffer whose other columns stay NaN.
  const auto gk = random_values<T>(n_k, seed + 2), gv = random_values<T>(n_v, seed + 3);
  device_array<T> dgk(be, gk), dgv(be, gv), dgkv(be, nan_values<T>(std::size_t(tokens * heads * kv_row)));
  device_array<T> dglat(be, nan_values<T>(std::size_t(tokens * lat)));
  mla_expand_kv_backward(be, dgkv.get(), dglat.get() + kv_lora, lat, dgk.get(), dgv.get(), tokens, heads, nope, rope,
                         v_dim);
  auto rgkv = nan_values<T>(std::size_t(tokens * heads * kv_row)), rglat = nan_values<T>(std::size_t(tokens * lat));
  mla_expand_kv_backward(hb, rgkv.data(), rglat.data() + kv_lora, lat, gk.data(), gv.data(), tokens, heads, nope, rope,
                         v_dim);
  CHECK(same_bits(dgkv.download(), rgkv));
  CHECK(same_bits(dglat.download(), rglat));

  // mla_cache_append: tokens = batch · new_tokens rows of c_KV (row stride kv_lora + rope + 1) and k_pe
  // (the latent's tail) into a cache whose other positions must keep their values.
  const std::int64_t batch = tokens % 2 == 0 ? 2 : 1, new_tokens = tokens / batch, start_pos = 3;
  const std::int64_t cap = start_pos + new_tokens + 2, c_stride = kv_lora + rope + 1;
  const auto c_rows = random_values<T>(std::size_t(tokens * c_stride), seed + 4);
  const auto cache_c0 = random_values<T>(std::size_t(batch * cap * kv_lora), seed + 5);
  const auto cache_pe0 = random_values<T>(std::size_t(batch * cap * rope), seed + 6);
  device_array<T> dc_rows(be, c_rows), dcache_c(be, cache_c0), dcache_pe(be, cache_pe0);
  mla_cache_append(be, dcache_c.get(), dcache_pe.get(), cap, dc_rows.get(), c_stride, dlat.get() + kv_lora, lat, batch,
                   new_tokens, start_pos, kv_lora, rope);
  auto rcache_c = cache_c0, rcache_pe = cache_pe0;
  mla_cache_append(hb, rcache_c.data(), rcache_pe.data(), cap, c_rows.data(), c_stride, latent.data() + kv_lora, lat,
                   batch, new_tokens, start_pos, kv_lora, rope);
  CHECK(same_bits(dcache_c.download(), rcache_c));
  CHECK(same_bits(dcache_pe.download(), rcache_pe));
}

}  // namespace

TEMPLATE_TEST_CASE("cuda attention forward and backward match the host", "[gpu]", float, double, bf16) {
  cuda_backend be;
  std::uint64_t seed = 1;
  for (const auto& ac : attention_cases) check_attention<TestType>(be, ac, seed += 7);
}

TEMPLATE_TEST_CASE("cuda mla decode attention matches the host", "[gpu]", float, double, bf16) {
  cuda_backend be;
  std::uint64_t seed = 1000;
  for (const auto& dc : decode_cases) check_decode<TestType>(be, dc, seed += 7);
}

TEMPLATE_TEST_CASE("cuda mla gathers (expand, its backward, cache append) equal the host bitwise", "[gpu]", float,
                   double, bf16) {
  cuda_backend be;
  check_gathers<TestType>(be, 1, 1, 6, 4, 4, 5, 1);
  check_gathers<TestType>(be, 37, 3, 6, 5, 4, 7, 11);
  check_gathers<TestType>(be, 10, 16, 512, 128, 64, 128, 21);
}

TEST_CASE("cuda attention primitives reject what they cannot compute", "[gpu]") {
  cuda_backend be;
  device_array<float> buf(be, 1 << 16);
  device_array<float> lse(be, 1 << 10);
  float* p = buf.get();
  // Head dimensions past the largest compiled bucket.
  CHECK_THROWS_AS(attention_forward(be, p, lse.get(), p, p, p, 1, 4, 1, 257, 64, 1.0), dsx::error);
  CHECK_THROWS_AS(attention_forward(be, p, lse.get(), p, p, p, 1, 4, 1, 64, 300, 1.0), dsx::error);
  CHECK_THROWS_AS(attention_backward(be, p, p, p, p, p, p, p, p, lse.get(), 1, 4, 1, 64, 257, 1.0), dsx::error);
  CHECK_THROWS_AS(mla_decode_attention(be, p, p, p, p, p, 1, 1, 1, 600, 64, 8, 0, 1.0), dsx::error);
  // Negative sizes and positions outside the cache.
  CHECK_THROWS_AS(attention_forward(be, p, lse.get(), p, p, p, 1, -4, 1, 64, 64, 1.0), dsx::error);
  CHECK_THROWS_AS(mla_decode_attention(be, p, p, p, p, p, 1, 2, 1, 16, 4, 8, 7, 1.0), dsx::error);
  CHECK_THROWS_AS(mla_cache_append(be, p, p, 8, p, 16, p, 4, 1, 2, 7, 16, 4), dsx::error);
  CHECK_THROWS_AS(mla_expand_kv(be, p, p, p, p, 2, 4, 1, 4, 4, 4), dsx::error);  // pe_stride < rope
  // Zero work is no work.
  CHECK_NOTHROW(attention_forward(be, p, lse.get(), p, p, p, 0, 4, 1, 64, 64, 1.0));
  CHECK_NOTHROW(mla_decode_attention(be, p, p, p, p, p, 1, 0, 1, 16, 4, 8, 0, 1.0));
  be.synchronize();
}
