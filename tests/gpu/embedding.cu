// Embedding lookup and its backward on the GPU (backend/cuda/embedding.cuh). The backward adds each
// table row's tokens in token order with the host's rounding, so it must equal the host backend in the
// same type bit for bit, repeated ids included, and be reproducible run to run.
#include "gpu_test.cuh"

#include <random>

#include "dsx/backend/cuda/embedding.cuh"
#include "dsx/backend/host/embedding.hpp"

using namespace dsx::test::gpu;
using dsx::bf16;
using dsx::backend::host;
namespace {

struct embedding_case {
  std::int64_t vocab, tokens, dim;
  int hot_id;  // ≥ 0: half of the tokens take this id (a long run of repeats), -1: uniform ids
};

constexpr embedding_case cases[] = {{1, 1, 1, -1},         {11, 7, 3, -1},       {50, 300, 64, 3},
                                    {1000, 257, 67, -1},   {4099, 1024, 1000, 17}, {129280, 33, 64, -1},
                                    {50, 40, 7168, 5}};

template <class T>
void check_embedding(cuda_backend& be, const embedding_case& ec, std::uint64_t seed) {
  INFO("vocab=" << ec.vocab << " tokens=" << ec.tokens << " dim=" << ec.dim << " hot_id=" << ec.hot_id);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> pick(0, std::int32_t(ec.vocab - 1));
  std::vector<std::int32_t> ids(std::size_t(ec.tokens));
  for (std::size_t t = 0; t < ids.size(); ++t) ids[t] = ec.hot_id >= 0 && t % 2 == 0 ? ec.hot_id : pick(rng);
  const std::size_t table_size = std::size_t(ec.vocab * ec.dim), rows_size = std::size_t(ec.tokens * ec.dim);
  const auto table = random_values<T>(table_size, seed + 1);
  const auto dout = random_values<T>(rows_size, seed + 2);
  host hb;

  device_array<std::int32_t> dids(be, ids);
  device_array<T> dtable(be, table), dout_rows(be, nan_values<T>(rows_size));
  embedding_forward(be, dout_rows.get(), dtable.get(), dids.get(), ec.tokens, ec.dim);
  auto out = nan_values<T>(rows_size);
  embedding_forward(hb, out.data(), table.data(), ids.data(), ec.tokens, ec.dim);
  CHECK(same_bits(dout_rows.download(), out));

  // Backward into a random (not zero) gradient table: += must keep what is there.
  const auto dtable0 = random_values<T>(table_size, seed + 3);
  device_array<T> dgrad(be, dtable0), ddout(be, dout);
  embedding_backward(be, dgrad.get(), ddout.get(), dids.get(), ec.tokens, ec.dim);
  auto grad = dtable0;
  embedding_backward(hb, grad.data(), dout.data(), ids.data(), ec.tokens, ec.dim);
  const auto first = dgrad.download();
  CHECK(same_bits(first, grad));
  check_close("dtable", first, grad, tolerance<T>);  // says how far off when the bits differ

  dgrad.upload(dtable0);
  embedding_backward(be, dgrad.get(), ddout.get(), dids.get(), ec.tokens, ec.dim);
  CHECK(same_bits(dgrad.download(), first));
}

}  // namespace

TEMPLATE_TEST_CASE("cuda embedding forward and backward equal the host bit for bit", "[gpu]", float, double, bf16) {
  cuda_backend be;
  std::uint64_t seed = 1;
  for (const auto& ec : cases) check_embedding<TestType>(be, ec, seed += 4);
}
