// Finite-difference checks in f64 of the layers that are single primitives: RMSNorm (weight and input,
// with row strides, plain and accumulating), RoPE (with YaRN; backward is the inverse rotation), token
// embedding (repeated ids) and the output head with cross-entropy (ignored rows included).
#include <catch2/catch.hpp>

#include <vector>

#include "dsx/backend/host/all.hpp"
#include "dsx/layers/rope.hpp"
#include "support/gradcheck.hpp"

using dsx::test::dot;
using dsx::test::random_vector;
using dsx::test::require_gradient;

TEST_CASE("rmsnorm: gradients of x and w, strided rows, accumulate flag", "[grad]") {
  dsx::backend::host be;
  const std::int64_t rows = 5, dim = 7, xs = 9, ys = 8;  // strides wider than the row
  auto x = random_vector(std::size_t(rows * xs), 1);
  auto w = random_vector(std::size_t(dim), 2, 0.5);
  const auto r = random_vector(std::size_t(rows * ys), 3);
  std::vector<double> y(std::size_t(rows * ys), 0.0), rstd(static_cast<std::size_t>(rows));
  auto loss = [&] {
    dsx::backend::rmsnorm_forward(be, y.data(), ys, rstd.data(), x.data(), xs, w.data(), rows, dim, 1e-6);
    double l = 0;
    for (std::int64_t i = 0; i < rows; ++i) l += dot(y.data() + i * ys, r.data() + i * ys, std::size_t(dim));
    return l;
  };
  loss();
  std::vector<double> dx(x.size(), 0.0), dw(w.size(), 0.0);
  dsx::backend::rmsnorm_backward(be, dx.data(), xs, dw.data(), r.data(), ys, x.data(), xs, w.data(), rstd.data(), rows,
                                 dim, false);
  // The padding of each row is no input: its gradient must stay 0 and its value must not matter.
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = dim; j < xs; ++j) CHECK(dx[std::size_t(i * xs + j)] == 0.0);
  require_gradient("x", x.data(), dx.data(), x.size(), loss);
  require_gradient("w", w.data(), dw.data(), w.size(), loss);

  // accumulate = true adds the same gradient onto what dx holds.
  std::vector<double> dx2(x.size(), 1.0), dw2(w.size(), 0.0);
  dsx::backend::rmsnorm_backward(be, dx2.data(), xs, dw2.data(), r.data(), ys, x.data(), xs, w.data(), rstd.data(),
                                 rows, dim, true);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < dim; ++j)
      CHECK(dx2[std::size_t(i * xs + j)] == Approx(1.0 + dx[std::size_t(i * xs + j)]).epsilon(1e-14));
}

TEST_CASE("rope: the backward rotation is the gradient, with YaRN", "[grad]") {
  dsx::backend::host be;
  dsx::model_config c{};
  c.mla.rope = 8;
  c.rope = {.theta = 50.0, .yarn = {.factor = 4.0, .original_max_positions = 4, .beta_fast = 32.0, .beta_slow = 1.0,
                                    .mscale = 1.0, .mscale_all_dim = 0.5}};
  const std::int64_t seq = 6, tokens = 2 * seq, heads = 3, head_stride = 11, token_stride = heads * head_stride;
  const auto table = dsx::make_rope_table<double>(c, int(seq + 2));
  auto x = random_vector(std::size_t(tokens * token_stride), 4);
  const auto r = random_vector(x.size(), 5);
  std::vector<double> y(x.size());
  for (const std::int64_t offset : {std::int64_t(0), std::int64_t(2)}) {  // training positions, and a decode offset
    auto loss = [&] {
      y = x;
      dsx::backend::rope_apply(be, y.data(), tokens, heads, token_stride, head_stride, 8, seq, offset, table.cos.data(),
                               table.sin.data(), false);
      return dot(y.data(), r.data(), y.size());
    };
    // dL/dx: the inverse rotation of dL/dy = r, everywhere the rotation touches; identity elsewhere.
    std::vector<double> dx = r;
    dsx::backend::rope_apply(be, dx.data(), tokens, heads, token_stride, head_stride, 8, seq, offset, table.cos.data(),
                             table.sin.data(), true);
    require_gradient("x", x.data(), dx.data(), x.size(), loss);
  }
}

TEST_CASE("embedding: gradient of the table with repeated ids", "[grad]") {
  dsx::backend::host be;
  const std::int64_t vocab = 6, dim = 5, tokens = 9;
  const std::vector<std::int32_t> ids{3, 1, 3, 0, 5, 3, 1, 2, 0};
  auto table = random_vector(std::size_t(vocab * dim), 6);
  const auto r = random_vector(std::size_t(tokens * dim), 7);
  std::vector<double> out(r.size());
  auto loss = [&] {
    dsx::backend::embedding_forward(be, out.data(), table.data(), ids.data(), tokens, dim);
    return dot(out.data(), r.data(), out.size());
  };
  std::vector<double> dtable(table.size(), 0.0);
  dsx::backend::embedding_backward(be, dtable.data(), r.data(), ids.data(), tokens, dim);
  for (std::int64_t i = 0; i < dim; ++i) CHECK(dtable[std::size_t(4 * dim + i)] == 0.0);  // id 4 never appears
  require_gradient("table", table.data(), dtable.data(), table.size(), loss);
}

TEST_CASE("head + cross-entropy: gradients of hidden states and head weight, ignored rows", "[grad]") {
  dsx::backend::host be;
  const std::int64_t rows = 6, hidden = 5, vocab = 7;
  const std::vector<std::int32_t> targets{2, 0, -1, 6, 6, 1};  // row 2 is ignored
  auto h = random_vector(std::size_t(rows * hidden), 8);
  auto w = random_vector(std::size_t(vocab * hidden), 9, 0.7);
  std::vector<double> logits(std::size_t(rows * vocab)), dlogits(logits.size()), row_loss(static_cast<std::size_t>(rows));
  const double scale = 1.0 / 5.0;  // mean over the 5 counted rows
  auto loss = [&] {
    dsx::backend::gemm(be, false, true, rows, vocab, hidden, 1.0, h.data(), hidden, w.data(), hidden, 0.0, logits.data(),
                       vocab);
    dsx::backend::cross_entropy<double>(be, row_loss.data(), nullptr, logits.data(), targets.data(), rows, vocab, 0.0);
    double l = 0;
    for (double v : row_loss) l += v;
    return l * scale;
  };
  loss();
  CHECK(row_loss[2] == 0.0);
  dsx::backend::cross_entropy<double>(be, row_loss.data(), dlogits.data(), logits.data(), targets.data(), rows, vocab, scale);
  for (std::int64_t j = 0; j < vocab; ++j) CHECK(dlogits[std::size_t(2 * vocab + j)] == 0.0);
  std::vector<double> dh(h.size()), dw(w.size(), 0.0);
  dsx::backend::gemm(be, false, false, rows, hidden, vocab, 1.0, dlogits.data(), vocab, w.data(), hidden, 0.0, dh.data(),
                     hidden);
  dsx::backend::gemm(be, true, false, vocab, hidden, rows, 1.0, dlogits.data(), vocab, h.data(), hidden, 1.0, dw.data(),
                     hidden);
  require_gradient("hidden", h.data(), dh.data(), h.size(), loss);
  require_gradient("head", w.data(), dw.data(), w.size(), loss);
}
