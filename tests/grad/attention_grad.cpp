// Causal attention primitives of the host backend (backend/host/attention.hpp): forward against a direct
// evaluation of the definition, backward against finite differences.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "dsx/backend/host/all.hpp"
#include "support/gradcheck.hpp"

using dsx::test::check_gradient;
using dsx::test::random_vector;

namespace {
constexpr double scale = 0.7;

// A short case checked element by element, and a long one (rows of up to 150 keys) checked on a sample.
struct shape {
  std::int64_t batch, seq, heads, qk_dim, v_dim;
  std::int64_t at(std::int64_t b, std::int64_t t, std::int64_t h, std::int64_t dim) const { return ((b * seq + t) * heads + h) * dim; }
};
constexpr shape shapes[] = {{2, 5, 2, 3, 4}, {1, 150, 2, 5, 3}};

bool all_finite(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}
}  // namespace

TEST_CASE("attention_forward: equals softmax over positions <= own, and its log-sum-exp", "[grad]") {
  dsx::backend::host be;
  for (const shape& sh : shapes) {
    const auto [batch, seq, heads, qk_dim, v_dim] = sh;
    INFO("seq " << seq);
    const auto q = random_vector(batch * seq * heads * qk_dim, 11);
    const auto k = random_vector(batch * seq * heads * qk_dim, 12);
    const auto v = random_vector(batch * seq * heads * v_dim, 13);
    std::vector<double> o(v.size()), lse(batch * heads * seq);
    dsx::backend::attention_forward(be, o.data(), lse.data(), q.data(), k.data(), v.data(), batch, seq, heads, qk_dim,
                                    v_dim, scale);

    double max_err = 0;
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t i = 0; i < seq; ++i) {
          // Unnormalised weights exp(scale · q·k) of the visible keys, summed without max subtraction.
          std::vector<double> e(std::size_t(i + 1));
          double z = 0;
          for (std::int64_t j = 0; j <= i; ++j) {
            double s = 0;
            for (std::int64_t d = 0; d < qk_dim; ++d) s += q[sh.at(b, i, h, qk_dim) + d] * k[sh.at(b, j, h, qk_dim) + d];
            z += e[j] = std::exp(scale * s);
          }
          max_err = std::max(max_err, std::abs(lse[(b * heads + h) * seq + i] - std::log(z)));
          for (std::int64_t d = 0; d < v_dim; ++d) {
            double ref = 0;
            for (std::int64_t j = 0; j <= i; ++j) ref += e[j] / z * v[sh.at(b, j, h, v_dim) + d];
            max_err = std::max(max_err, std::abs(o[sh.at(b, i, h, v_dim) + d] - ref));
          }
        }
    CHECK(max_err < 1e-13);
  }
}

TEST_CASE("attention_backward: finite-difference gradients of q, k and v", "[grad]") {
  dsx::backend::host be;
  for (const shape& sh : shapes) {
    const auto [batch, seq, heads, qk_dim, v_dim] = sh;
    INFO("seq " << seq);
    auto q = random_vector(batch * seq * heads * qk_dim, 21);
    auto k = random_vector(batch * seq * heads * qk_dim, 22);
    auto v = random_vector(batch * seq * heads * v_dim, 23);
    const auto r = random_vector(v.size(), 24);
    std::vector<double> o(v.size()), lse(batch * heads * seq);
    auto loss = [&] {
      dsx::backend::attention_forward(be, o.data(), lse.data(), q.data(), k.data(), v.data(), batch, seq, heads, qk_dim,
                                      v_dim, scale);
      return dsx::test::dot(o.data(), r.data(), o.size());
    };
    loss();
    // Gradients are written (=): start them from NaN so that any element left unwritten fails.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::vector<double> dq(q.size(), nan), dk(k.size(), nan), dv(v.size(), nan);
    dsx::backend::attention_backward(be, dq.data(), dk.data(), dv.data(), r.data(), q.data(), k.data(), v.data(),
                                     o.data(), lse.data(), batch, seq, heads, qk_dim, v_dim, scale);
    CHECK((all_finite(dq) && all_finite(dk) && all_finite(dv)));
    // Every element of the short case; 100 spread over each tensor of the long one, whose loss sums 900
    // terms: its central differences carry more round-off, so relative errors are taken against at least
    // 1e-2 there (require_gradient's floor; support/gradcheck.hpp explains it).
    const std::size_t checks = seq > 64 ? 100 : std::numeric_limits<std::size_t>::max();
    const double floor = seq > 64 ? 1e-2 : 1e-7;
    for (auto rep : {check_gradient("q", q.data(), dq.data(), q.size(), loss, checks, 1e-6, floor),
                     check_gradient("k", k.data(), dk.data(), k.size(), loss, checks, 1e-6, floor),
                     check_gradient("v", v.data(), dv.data(), v.size(), loss, checks, 1e-6, floor)}) {
      INFO(rep.name << " max rel error " << rep.max_rel_error << " over " << rep.checked);
      CHECK(rep.checked > 0);
      CHECK(rep.max_rel_error < 1e-6);
    }
  }
}
