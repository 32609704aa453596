// Rotary embedding on the GPU (backend/cuda/rope.cuh) against the host backend: the rope part sits inside
// larger head vectors (strided heads and tokens, the rest must stay untouched), several sequences in one
// batch, a position offset, and the inverse rotation, which must undo the forward one.
#include "gpu_test.cuh"

#include <cmath>

#include "dsx/backend/cuda/rope.cuh"
#include "dsx/backend/host/rope.hpp"

using namespace dsx::test::gpu;
using dsx::accum_t;
using dsx::bf16;
using dsx::backend::host;
namespace {

struct rope_case {
  std::int64_t tokens, heads, nope, rope, seq_len, pos_offset, token_pad;
};

// Odd head or token strides take the scalar path, even ones the pair-per-access path.
constexpr rope_case cases[] = {{1, 1, 0, 2, 1, 0, 3},       {7, 3, 5, 6, 7, 2, 3},     {40, 16, 128, 64, 10, 0, 3},
                               {40, 16, 128, 64, 10, 0, 0}, {257, 5, 9, 34, 100, 17, 1}, {33, 4, 128, 64, 33, 5, 2}};

template <class T>
void check_rope(cuda_backend& be, const rope_case& rc, std::uint64_t seed) {
  using R = ref_t<T>;
  using A = accum_t<T>;
  using RA = accum_t<R>;
  const std::int64_t head_stride = rc.nope + rc.rope, token_stride = rc.heads * head_stride + rc.token_pad;
  const std::int64_t half = rc.rope / 2, positions = rc.pos_offset + rc.seq_len;
  INFO("tokens=" << rc.tokens << " heads=" << rc.heads << " nope=" << rc.nope << " rope=" << rc.rope
                 << " seq_len=" << rc.seq_len << " pos_offset=" << rc.pos_offset << " token_stride=" << token_stride);
  // A table of the layers/rope.hpp form: cos/sin of position · frequency, frequencies θ^(−2j/d).
  std::vector<RA> cos_r(std::size_t(positions * half)), sin_r(cos_r.size());
  for (std::int64_t p = 0; p < positions; ++p)
    for (std::int64_t j = 0; j < half; ++j) {
      const double f = std::pow(10000.0, -2.0 * double(j) / double(rc.rope));
      cos_r[std::size_t(p * half + j)] = RA(std::cos(double(p) * f));
      sin_r[std::size_t(p * half + j)] = RA(std::sin(double(p) * f));
    }
  const auto cos_a = convert_all<A>(cos_r), sin_a = convert_all<A>(sin_r);
  const auto x = random_values<T>(std::size_t(rc.tokens * token_stride), seed);
  device_array<T> dx(be, x);
  device_array<A> dcos(be, cos_a), dsin(be, sin_a);
  host hb;
  for (const bool inverse : {false, true}) {
    INFO("inverse=" << inverse);
    dx.upload(x);
    // The rope part of each head follows its nope part.
    rope_apply(be, dx.get() + rc.nope, rc.tokens, rc.heads, token_stride, head_stride, rc.rope, rc.seq_len,
               rc.pos_offset, dcos.get(), dsin.get(), inverse);
    auto rx = convert_all<R>(x);
    const auto rcos = convert_all<RA>(cos_a), rsin = convert_all<RA>(sin_a);
    rope_apply(hb, rx.data() + rc.nope, rc.tokens, rc.heads, token_stride, head_stride, rc.rope, rc.seq_len,
               rc.pos_offset, rcos.data(), rsin.data(), inverse);
    const auto rotated = dx.download();
    check_close("x", rotated, rx, tolerance<T>);

    // Undo on the GPU: back to the input within rounding.
    rope_apply(be, dx.get() + rc.nope, rc.tokens, rc.heads, token_stride, head_stride, rc.rope, rc.seq_len,
               rc.pos_offset, dcos.get(), dsin.get(), !inverse);
    check_close("x after the inverse rotation", dx.download(), convert_all<R>(x), 2 * tolerance<T>);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("cuda rope_apply matches the host and its inverse undoes it", "[gpu]", float, double, bf16) {
  cuda_backend be;
  std::uint64_t seed = 1;
  for (const auto& rc : cases) check_rope<TestType>(be, rc, seed += 2);
}
