// Uses dsx through its umbrella header: prints the parameter count of the golden model and checks one
// host GEMM (CBLAS) against the sum it computes. Exit status 1 if the GEMM is wrong.
#include <cmath>
#include <cstdio>
#include <vector>

#include "dsx/dsx.hpp"

int main() {
  std::printf("params_total %lld\n", static_cast<long long>(dsx::params_total(dsx::presets::tiny_v3)));

  // C(m, n) = A(m, k) · B(n, k)ᵀ, the layout of y = x · Wᵀ.
  const int m = 3, n = 4, k = 5;
  std::vector<float> a(m * k), b(n * k), c(m * n, 0.0f);
  for (int i = 0; i < m * k; ++i) a[i] = 0.25f * float(i % 7) - 0.5f;
  for (int i = 0; i < n * k; ++i) b[i] = 0.125f * float(i % 5) + 0.1f;
  dsx::backend::host be;
  gemm(be, false, true, m, n, k, 1.0, a.data(), k, b.data(), k, 0.0, c.data(), n);
  double max_error = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double sum = 0;
      for (int p = 0; p < k; ++p) sum += double(a[i * k + p]) * double(b[j * k + p]);
      max_error = std::fmax(max_error, std::fabs(sum - double(c[i * n + j])));
    }
  std::printf("gemm max_abs_error %.3g\n", max_error);
  return max_error < 1e-5 ? 0 : 1;
}
